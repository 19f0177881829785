//! Signals, the self-pipe way: signal-hook's handlers only set a flag and write a byte to a socket
//! pair whose read end sits in the main epoll set, so the event loop handles every signal (reaping
//! children included) in ordinary code, between two `epoll_wait` calls. Runs in the main process;
//! a connection process only reads [`HANDLED_SIGNALS`], to put their dispositions back.

use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The signals the main process acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signal {
    /// A child exited: reap.
    Child,
    /// SIGTERM or SIGINT: stop accepting; let connections finish (within the drain timeout).
    Terminate,
    /// SIGQUIT: stop accepting and end every connection now.
    Quit,
    /// SIGHUP: reopen the log and reload the configuration.
    Reload,
    /// SIGUSR1: log statistics (and write the live view for `--status`).
    Stats,
    /// SIGUSR2: reopen the log only (log rotation without applying configuration edits).
    Reopen,
}

const HANDLED: [(libc::c_int, Signal); 7] = [
    (SIGCHLD, Signal::Child),
    (SIGTERM, Signal::Terminate),
    (SIGINT, Signal::Terminate),
    (SIGQUIT, Signal::Quit),
    (SIGHUP, Signal::Reload),
    (SIGUSR1, Signal::Stats),
    (SIGUSR2, Signal::Reopen),
];

/// The signal numbers whose dispositions [`Signals::install`] changes.
pub(crate) const HANDLED_SIGNALS: [libc::c_int; 7] = [SIGCHLD, SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2];

pub(crate) struct Signals {
    wake: UnixStream,
    flags: Vec<(Arc<AtomicBool>, Signal)>,
}

impl Signals {
    /// Installs the handlers. Must run before any child is forked.
    pub(crate) fn install() -> io::Result<Signals> {
        let (wake, write) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        let mut flags = Vec::new();
        debug_assert!(HANDLED.iter().zip(HANDLED_SIGNALS).all(|((a, _), b)| *a == b));
        for (sig, what) in HANDLED {
            let flag = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(sig, Arc::clone(&flag))?;
            signal_hook::low_level::pipe::register(sig, write.try_clone()?)?;
            flags.push((flag, what));
        }
        Ok(Signals { wake, flags })
    }

    /// The descriptor to watch for readability.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Empties the wake-up socket and returns each signal seen since the last call, once.
    pub(crate) fn pending(&mut self) -> Vec<Signal> {
        let mut buf = [0u8; 64];
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
        let mut seen = Vec::new();
        for (flag, what) in &self.flags {
            if flag.swap(false, Ordering::SeqCst) && !seen.contains(what) {
                seen.push(*what);
            }
        }
        seen
    }
}
