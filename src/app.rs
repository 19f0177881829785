//! Start-up: from the parsed command line to a running event loop. Every check that can fail on bad
//! input happens before anything accepts, and comes back as text for one exit with status 2.
//!
//! Order matters: resolve and bind (in the foreground, so errors reach the terminal), then detach
//! (`--daemonize`, while there is still a single thread), then the log file, the pid file, the
//! privilege drop, the signal handlers and the accept threads. Main process.

use crate::backends::Backends;
use crate::cli::Cli;
use crate::config::{self, Backend, Mapping, Resolved};
use crate::daemon::{self, PidFile, Ready};
use crate::event_loop::{EventLoop, Route, Service, Settings};
use crate::listener;
use crate::log;
use crate::options::{self, Options};
use crate::privileges::Identity;
use crate::signals::Signals;
use crate::target;
use std::net::SocketAddr;
use std::path::PathBuf;

/// A start-up failure; exit status 2.
#[derive(Debug)]
pub enum StartError {
    /// Printed as `portfwd: MESSAGE`.
    Plain(String),
    /// One or more located lines (`FILE:LINE:COL: message`), each printed as `portfwd: LINE`.
    Located(String),
}

impl From<String> for StartError {
    fn from(msg: String) -> Self {
        StartError::Plain(msg)
    }
}

impl StartError {
    pub fn text(&self) -> String {
        match self {
            StartError::Plain(m) => format!("portfwd: {m}"),
            // Each `FILE:LINE:COL: message` line gets the program's name too, like every other
            // error it prints.
            StartError::Located(m) => m
                .lines()
                .map(|l| format!("portfwd: {l}"))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// Makes sure descriptors 0, 1 and 2 are open (on /dev/null if they were closed), so no socket is
/// ever given one of those numbers and mistaken for a standard stream.
pub fn ensure_std_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries a descriptor number.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            // SAFETY: open of a constant C string; the returned fd is the lowest free one (`fd`).
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}

/// One malloc arena for every thread, growing only by `brk`. The accept threads allocate little,
/// and each extra arena is a 64 MiB reservation whose page tables and dirty pages every forked
/// connection process would otherwise copy; the brk heap is kept out of them altogether.
pub fn lean_malloc() {
    // SAFETY: mallopt only sets allocator parameters; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        // Large blocks from the brk heap too, not from mappings of their own: the heap is kept
        // out of connection processes as it grows (fork_memory::Exclusions), other mappings not.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
    }
}

/// `--check-config FILE`: prints each mapping as a canonical line.
pub fn check_config(path: &std::path::Path, base: &Options) -> Result<(), StartError> {
    let (mappings, _) = config::load(path, base).map_err(StartError::Located)?;
    for m in &mappings {
        println!("{}", m.canonical());
    }
    Ok(())
}

/// The mappings to serve, from `--config` or from the positional arguments, with their targets.
fn mappings(cli: &Cli, base: &Options) -> Result<(Vec<Mapping>, Vec<Resolved>), StartError> {
    if let Some(path) = &cli.config {
        return config::load(path, base).map_err(StartError::Located);
    }
    let (port, targets) = match (cli.port, cli.targets()) {
        (Some(p), Some(t)) => (p, t),
        _ => return Err("PORT HOSTNAME HOST_PORT or --config FILE is needed".to_string().into()),
    };
    if targets.len() > config::MAX_BACKENDS {
        return Err(format!("more than {} targets", config::MAX_BACKENDS).into());
    }
    base.check()?;
    if let Some(source) = base.source {
        target::check_source(source)?;
    }
    let bind: SocketAddr = match &cli.bind {
        None => listener::any_address(port),
        Some(addr) => target::resolve(addr, port).map_err(|e| format!("--bind: {e}"))?[0],
    };
    let resolved = targets
        .iter()
        .map(|(host, port)| target::resolve_targets(host, *port))
        .collect::<Result<Resolved, String>>()?;
    let backends = targets.into_iter().map(|(h, p)| Backend::new(h, p)).collect();
    Ok((vec![Mapping::new(bind, backends, base.clone())], vec![resolved]))
}

/// Makes a path absolute against the current directory (the daemon changes to `/`).
fn absolute(path: &Option<PathBuf>) -> Result<Option<PathBuf>, StartError> {
    path.as_ref()
        .map(|p| std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()).into()))
        .transpose()
}

/// Resolves, binds, and runs the forwarder until it is told to stop.
pub fn run(cli: Cli) -> Result<(), StartError> {
    let base = cli.options();
    if let Some(path) = &cli.check_config {
        return check_config(path, &base);
    }
    let config_path = absolute(&cli.config)?;
    let log_file = absolute(&cli.log_file)?;
    let pid_path = absolute(&cli.pid_file)?;
    let identity = cli.user.as_deref().map(Identity::lookup).transpose()?;
    let drain_timeout_ms = cli
        .drain_timeout
        .as_deref()
        .map(|s| options::parse_secs(s).map(|d| d.as_millis() as u64))
        .transpose()?;

    let (mappings, resolved) = mappings(&cli, &base)?;
    let mut services = Vec::new();
    for (mapping, resolved) in mappings.into_iter().zip(resolved) {
        let socket = listener::open(mapping.bind).map_err(|e| {
            let message = format!("cannot listen on {}: {e}", mapping.bind);
            match &cli.config {
                // From a file: say which line, like every other error in it.
                Some(path) => StartError::Located(mapping.bind_error(message).located(path)),
                None => StartError::Plain(message),
            }
        })?;
        let backends = Backends::new(&mapping, resolved);
        services.push(Service::new(socket, Route { mapping, backends }).map_err(|e| e.to_string())?);
    }
    if let Some(path) = &log_file {
        // Open it now, while errors still reach the terminal; it becomes stderr below.
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| format!("--log-file {}: {e}", path.display()))?;
    }

    let ready = if cli.daemonize {
        Some(daemon::detach(log_file.is_some()).map_err(|e| format!("cannot daemonize: {e}"))?)
    } else {
        None
    };
    let settings = Settings {
        accept_threads: cli.accept_threads.map_or_else(num_cpus, usize::from),
        max_connections: base.max_connections,
        verbose: cli.verbose,
        drain_timeout_ms,
        global_rules: cli.rules.clone(),
        config: config_path.map(|p| (p, base)),
        log_file,
    };
    match serve(services, settings, pid_path, identity, ready) {
        Ok(()) => Ok(()),
        Err((msg, Some(ready))) => {
            ready.fail(&format!("portfwd: {msg}"));
            Err(StartError::Plain(msg))
        }
        Err((msg, None)) => Err(StartError::Plain(msg)),
    }
}

type ServeError = (String, Option<Ready>);

/// The part of start-up that may run in the daemon: failures before `ready.ok()` are sent back to
/// the launching process.
fn serve(
    services: Vec<Service>,
    settings: Settings,
    pid_path: Option<PathBuf>,
    identity: Option<Identity>,
    ready: Option<Ready>,
) -> Result<(), ServeError> {
    macro_rules! fail {
        ($($arg:tt)*) => { return Err((format!($($arg)*), ready)) };
    }
    if let Some(path) = &settings.log_file
        && let Err(e) = daemon::redirect_stderr(path)
    {
        fail!("--log-file {}: {e}", path.display());
    }
    let pid_file = match pid_path.as_deref().map(PidFile::write).transpose() {
        Ok(p) => p,
        Err(e) => fail!("--pid-file {}: {e}", pid_path.unwrap().display()),
    };
    if let Some(id) = &identity
        && let Err(e) = id.switch()
    {
        fail!("{e}");
    }
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => fail!("cannot install signal handlers: {e}"),
    };
    for s in &services {
        let targets: Vec<String> = s
            .route
            .backends
            .iter()
            .map(|b| {
                let labels: Vec<&str> = b.addrs.iter().map(|t| t.label()).collect();
                format!("{} ({})", b.host, labels.join(","))
            })
            .collect();
        log!(
            "listening on {} -> {} dispatch={} pid={}",
            s.local,
            targets.join(", "),
            s.route.mapping.options.dispatch.name(),
            std::process::id()
        );
    }
    if settings.verbose {
        log!(
            "accept_threads={} user={}",
            settings.accept_threads,
            identity.as_ref().map_or("-", |i| i.name.as_str())
        );
    }
    let mut event_loop = match EventLoop::new(services, signals, settings) {
        Ok(l) => l,
        Err(e) => fail!("cannot start the event loop: {e}"),
    };
    if let Some(r) = ready {
        r.ok();
    }
    let result = event_loop.run();
    drop(pid_file);
    result.map_err(|e| (format!("event loop failed: {e}"), None))
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
