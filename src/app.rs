//! Start-up: from the parsed command line to a running event loop. Every check that can fail on bad
//! input happens before anything accepts, and comes back as text for one exit with status 2.
//!
//! Order matters: resolve and bind and choose the log (in the foreground, so errors reach the
//! terminal), then detach (`--daemonize`, while there is still a single thread), then the log
//! (descriptor 2, non-blocking, before anything is forked), the pid file, the
//! privilege drop, the signal handlers and the accept threads. Main process.

use crate::activation::Activation;
use crate::cli::Cli;
use crate::config::{self, Backend, Mapping, Resolved};
use crate::daemon::{self, PidFile, Ready};
use crate::event_loop::{EventLoop, Route, Routes, Service, Settings};
use crate::grouping;
use crate::handoff::fork_fds::HandoffSlots;
use crate::listener;
use crate::log;
use crate::log_sink::{self, Destination};
use crate::metrics::MetricsServer;
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

/// In a static build, only the name services glibc has built in: `files` for users and groups
/// (`--user`), `files dns` for host names. Any other source of `/etc/nsswitch.conf` (`systemd`,
/// `mdns4_minimal`, `myhostname`, …) is a module glibc would `dlopen`, and a static glibc that
/// loads one gets a second, shared libc with it: `--user` with a name or id not in /etc/passwd
/// (so that `systemd` was asked next) died of SIGSEGV. Call first, before any lookup.
pub fn builtin_name_services() {
    #[cfg(target_feature = "crt-static")]
    {
        unsafe extern "C" {
            // glibc, <nss.h>: use these sources for a database instead of nsswitch.conf's line.
            fn __nss_configure_lookup(db: *const libc::c_char, sources: *const libc::c_char) -> libc::c_int;
        }
        for (db, sources) in [(c"passwd", c"files"), (c"group", c"files"), (c"hosts", c"files dns")] {
            // SAFETY: two NUL-terminated strings; called before any thread or lookup exists.
            unsafe { __nss_configure_lookup(db.as_ptr(), sources.as_ptr()) };
        }
    }
}

/// `--check-config FILE`: prints each mapping as a canonical line, listener by listener (the
/// lines of a routed listener together, in the order its routes are tried).
pub fn check_config(path: &std::path::Path, base: &Options) -> Result<(), StartError> {
    let (mappings, _) = config::load(path, base).map_err(StartError::Located)?;
    for listener in grouping::group(mappings, |m| m.bind) {
        for m in &listener {
            println!("{}", m.canonical());
        }
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

/// Where a daemon logs when no `--log-file` says: this file, when there is no syslog socket.
pub const DEFAULT_LOG_FILE: &str = "/var/log/portfwd.log";

/// Where the log goes: `--syslog`, `--log-file`, or with `--daemonize` syslog when a syslog daemon
/// listens on /dev/log, else [`DEFAULT_LOG_FILE`]; otherwise stderr. Decided in the foreground, so
/// a destination that cannot be used is an error on the terminal.
fn log_destination(cli: &Cli, log_file: Option<PathBuf>) -> Result<Destination, StartError> {
    if cli.syslog {
        let socket = log_sink::syslog_socket();
        if !log_sink::syslog_listens(&socket) {
            return Err(format!("--syslog: no syslog daemon takes datagrams at {}", socket.display()).into());
        }
        return Ok(Destination::Syslog(socket));
    }
    let file = match log_file {
        Some(path) => path,
        None if cli.daemonize => {
            let socket = log_sink::syslog_socket();
            if log_sink::syslog_listens(&socket) {
                return Ok(Destination::Syslog(socket));
            }
            let path = PathBuf::from(DEFAULT_LOG_FILE);
            open_for_appending(&path).map_err(|e| {
                format!(
                    "--daemonize: no syslog daemon at {} and {DEFAULT_LOG_FILE} cannot be opened ({e}); \
                     pass --log-file PATH",
                    socket.display()
                )
            })?;
            return Ok(Destination::File(path));
        }
        None => return Ok(Destination::Stderr),
    };
    // Open it now, while errors still reach the terminal; it becomes stderr later.
    open_for_appending(&file).map_err(|e| format!("--log-file {}: {e}", file.display()))?;
    Ok(Destination::File(file))
}

fn open_for_appending(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().append(true).create(true).open(path)
}

/// Resolves, binds, and runs the forwarder until it is told to stop.
pub fn run(cli: Cli) -> Result<(), StartError> {
    let base = cli.options();
    if let Some(path) = &cli.check_config {
        return check_config(path, &base);
    }
    if let Some(pid_file) = &cli.status {
        return crate::status::show(pid_file).map_err(StartError::Plain);
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

    // Listeners passed by systemd first (they sit on descriptors 3 and up, and move away), then
    // the hand-off slots on the lowest numbers, then the listeners bound here: a connection
    // process copies the descriptor table only up to its slot, so it never gets a listener,
    // however many there are.
    let mut activation = Activation::take()?;
    let slots = HandoffSlots::reserve().map_err(|e| format!("cannot reserve hand-off descriptors: {e}"))?;
    let (mappings, resolved) = mappings(&cli, &base)?;
    let routes = mappings
        .into_iter()
        .zip(resolved)
        .map(|(mapping, resolved)| Route::new(mapping, resolved));
    let mut services = Vec::new();
    for list in grouping::group(routes.collect(), |r| r.mapping.bind) {
        let mapping = &list[0].mapping;
        let socket = match activation.claim(mapping.bind) {
            Some(socket) => socket,
            None => listener::open(mapping.bind, mapping.options.reuseport).map_err(|e| {
                let message = format!("cannot listen on {}: {e}", mapping.bind);
                match &cli.config {
                    // From a file: say which line, like every other error in it.
                    Some(path) => StartError::Located(mapping.bind_error(message).located(path)),
                    None => StartError::Plain(message),
                }
            })?,
        };
        services.push(Service::new(socket, Routes::new(list)).map_err(|e| e.to_string())?);
    }
    if let Some(p) = activation.unclaimed().next() {
        return Err(format!(
            "socket activation: the socket passed for {} ({}) matches no mapping's listen address",
            p.local, p.name
        )
        .into());
    }
    let metrics = cli
        .metrics
        .map(|addr| MetricsServer::bind(addr).map_err(|e| format!("--metrics {addr}: {e}")))
        .transpose()?;
    let log_to = log_destination(&cli, log_file)?;

    let ready = if cli.daemonize {
        Some(daemon::detach(&log_to.describe()).map_err(|e| format!("cannot daemonize: {e}"))?)
    } else {
        None
    };
    let limits = limits_line(&cli, &base);
    let settings = Settings {
        accept_threads: cli.accept_threads.map_or_else(num_cpus, usize::from),
        max_connections: base.max_connections,
        verbose: cli.verbose,
        drain_timeout_ms,
        global_rules: cli.rules.clone(),
        config: config_path.map(|p| (p, base)),
        log_to,
        log_format: cli.log_format.unwrap_or(crate::log_format::Format::Logfmt),
        status_file: pid_path.as_deref().map(crate::status::snapshot_path),
        passed: activation.len(),
    };
    let opened = Opened {
        services,
        slots,
        metrics,
        limits,
    };
    match serve(opened, settings, pid_path, identity, ready) {
        Ok(()) => Ok(()),
        Err((msg, Some(ready))) => {
            ready.fail(&format!("portfwd: {msg}"));
            Err(StartError::Plain(msg))
        }
        Err((msg, None)) => Err(StartError::Plain(msg)),
    }
}

type ServeError = (String, Option<Ready>);

/// What start-up prepared in the foreground for the loop: the listeners (each with its routes),
/// the hand-off slots, the metrics endpoint, and the start-up line of the limits.
struct Opened {
    services: Vec<Service>,
    slots: HandoffSlots,
    metrics: Option<MetricsServer>,
    limits: String,
}

/// The part of start-up that may run in the daemon: failures before `ready.ok()` are sent back to
/// the launching process.
fn serve(
    opened: Opened,
    settings: Settings,
    pid_path: Option<PathBuf>,
    identity: Option<Identity>,
    ready: Option<Ready>,
) -> Result<(), ServeError> {
    let Opened {
        services,
        slots,
        metrics,
        limits,
    } = opened;
    macro_rules! fail {
        ($($arg:tt)*) => { return Err((format!($($arg)*), ready)) };
    }
    if let Err(e) = log_sink::init(settings.log_format) {
        fail!("cannot set up the log: {e}");
    }
    let log_note = match log_sink::open(&settings.log_to) {
        Ok(note) => note,
        Err(e) => fail!("log {}: {e}", settings.log_to.describe()),
    };
    let pid_file = match pid_path.as_deref().map(PidFile::write).transpose() {
        Ok(p) => p,
        Err(e) => fail!("--pid-file {}: {e}", pid_path.unwrap().display()),
    };
    if let Some(id) = &identity {
        match id.switch() {
            Ok(None) => {}
            Ok(Some(warning)) => log!("event=warning warning={}", log::Quoted(warning)),
            Err(e) => fail!("{e}"),
        }
    }
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => fail!("cannot install signal handlers: {e}"),
    };
    if let Some(note) = log_note {
        log!("{note}");
    }
    for s in &services {
        log!(
            "event=listening listen={} {} dispatch={} pid={}",
            s.local,
            s.routes.describe(),
            s.routes.listener().options.dispatch.name(),
            std::process::id()
        );
    }
    for s in &services {
        let rules: Vec<_> = s
            .routes
            .listener()
            .options
            .rules
            .iter()
            .chain(&settings.global_rules)
            .copied()
            .collect();
        let takes_ipv4 = s.local.is_ipv4() || s.local.ip().is_unspecified();
        if let Some(warning) = crate::access::family_warning(&rules, takes_ipv4) {
            log!("event=warning listen={} warning={}", s.local, log::Quoted(warning));
        }
    }
    log!("{limits}");
    if settings.verbose {
        log!(
            "event=settings accept_threads={} user={} log={}",
            settings.accept_threads,
            log::Quoted(identity.as_ref().map_or("-", |i| i.name.as_str())),
            log::Quoted(settings.log_to.describe())
        );
    }
    if settings.passed > 0 {
        log!("event=socket-activation listeners={}", settings.passed);
    }
    if let Some(m) = &metrics
        && let Ok(addr) = m.local_addr()
    {
        log!("event=metrics url=http://{addr}/metrics");
    }
    let mut event_loop = match EventLoop::new(services, slots, metrics, signals, settings) {
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

/// The start-up line with the limits every mapping starts from (a line of the file may change
/// them), and how the connection cap was chosen when the command line did not say.
fn limits_line(cli: &Cli, base: &Options) -> String {
    let cap = match cli.max_connections {
        None => options::default_max_connections().1,
        Some(_) => format!("max_connections={}", base.max_connections),
    };
    let secs = |d: Option<std::time::Duration>| d.map_or("off".into(), options::secs);
    format!(
        "event=limits {cap} max_per_source={} idle_timeout={} first_byte_timeout={}",
        base.max_per_source.map_or("off".into(), |n| n.to_string()),
        secs(base.idle_timeout),
        secs(base.first_byte_timeout),
    )
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
