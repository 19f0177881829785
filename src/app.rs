//! Start-up: from the parsed command line to a running event loop. Every check that can fail on bad
//! input happens here, before anything listens, and comes back as one line of text.

use crate::cli::Cli;
use crate::event_loop::{EventLoop, Service};
use crate::listener;
use crate::log;
use crate::signals::Signals;
use crate::target;
use std::net::SocketAddr;

/// A start-up failure: printed as `portfwd: MESSAGE`, exit status 2.
#[derive(Debug)]
pub struct StartError(pub String);

impl<T: Into<String>> From<T> for StartError {
    fn from(msg: T) -> Self {
        StartError(msg.into())
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

fn bind_address(cli: &Cli) -> Result<SocketAddr, StartError> {
    match &cli.bind {
        None => Ok(listener::any_address(cli.port)),
        Some(addr) => {
            let found = target::resolve(addr, cli.port).map_err(|e| format!("--bind: {e}"))?;
            Ok(found[0])
        }
    }
}

/// Resolves, binds, and runs the forwarder until it is told to stop.
pub fn run(cli: Cli) -> Result<(), StartError> {
    let targets = target::resolve_targets(&cli.hostname, cli.host_port)?;
    let bind = bind_address(&cli)?;
    let socket = listener::open(bind).map_err(|e| format!("cannot listen on {bind}: {e}"))?;
    let local = listener::local_addr(&socket).map_err(|e| e.to_string())?;
    let service = Service {
        listener: socket,
        local,
        targets,
        dispatch: cli.dispatch,
        connect_timeout_ms: cli.connect_timeout.as_millis().max(1) as u64,
    };
    let signals = Signals::install().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let threads = cli.accept_threads.map_or_else(num_cpus, usize::from);
    let labels: Vec<&str> = service.targets.iter().map(|t| t.label.as_str()).collect();
    log!(
        "listening on {} -> {} ({}) dispatch={} pid={}",
        service.local,
        cli.hostname,
        labels.join(","),
        cli.dispatch.name(),
        std::process::id()
    );
    if cli.verbose {
        log!(
            "accept_threads={threads} connect_timeout_ms={}",
            service.connect_timeout_ms
        );
    }
    let mut event_loop = EventLoop::new(vec![service], threads, signals, cli.verbose)
        .map_err(|e| format!("cannot start the event loop: {e}"))?;
    event_loop
        .run()
        .map_err(|e| StartError(format!("event loop failed: {e}")))
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
