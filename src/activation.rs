//! systemd socket activation: listeners passed by the service manager instead of bound here
//! (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`; sd_listen_fds(3)). Main process, at start-up,
//! while it has one thread.
//!
//! The passed sockets are descriptors 3 and up. They are moved above those numbers at once, so
//! that the hand-off slots reserved next get the lowest numbers (a connection process copies the
//! descriptor table only up to its slot; see `handoff::fork_fds`): connection processes then never
//! get a listener. They are made non-blocking and close-on-exec, like the listeners portfwd opens,
//! and the event loop registers them the same way. Each is claimed by the mapping whose listen
//! address is its local address; a mapping with none binds as usual, and a passed socket no
//! mapping claims stops start-up. The `LISTEN_*` variables are removed from the environment.

use crate::listener;
use socket2::Socket;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;

/// One passed listener.
pub(crate) struct Passed {
    pub(crate) local: SocketAddr,
    /// Its `LISTEN_FDNAMES` entry (systemd's default is the socket unit's name).
    pub(crate) name: String,
    socket: Option<Socket>,
}

/// The listeners the service manager passed, until the mappings claim them.
#[derive(Default)]
pub(crate) struct Activation {
    passed: Vec<Passed>,
}

impl Activation {
    /// Takes the sockets passed to this process, if any, and clears the `LISTEN_*` variables.
    /// Call first thing, while the process has a single thread and before it opens anything.
    pub(crate) fn take() -> Result<Activation, String> {
        let var = |name: &str| std::env::var(name).ok();
        let (pid, fds, names) = (var("LISTEN_PID"), var("LISTEN_FDS"), var("LISTEN_FDNAMES"));
        for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            // SAFETY: start-up, before any other thread exists (the accept pool comes later), so
            // nothing reads the environment meanwhile.
            unsafe { std::env::remove_var(name) };
        }
        let (Some(pid), Some(fds)) = (pid, fds) else {
            return Ok(Activation::default());
        };
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return Ok(Activation::default()); // meant for another process (a parent that exec'd us)
        }
        let count: RawFd = fds
            .parse()
            .ok()
            .filter(|&n| (0..=4096).contains(&n))
            .ok_or_else(|| format!("LISTEN_FDS: '{fds}' is not a number of descriptors"))?;
        let names: Vec<&str> = names.as_deref().map_or(Vec::new(), |n| n.split(':').collect());
        let mut passed = Vec::new();
        for i in 0..count {
            let fd = FIRST_FD + i;
            let name = names.get(i as usize).copied().unwrap_or("unknown").to_string();
            let socket =
                adopt(fd, FIRST_FD + count).map_err(|e| format!("socket activation: descriptor {fd} ({name}): {e}"))?;
            let local = listener::local_addr(&socket)
                .map_err(|e| format!("socket activation: descriptor {fd} ({name}): {e}"))?;
            passed.push(Passed {
                local,
                name,
                socket: Some(socket),
            });
        }
        Ok(Activation { passed })
    }

    /// The passed listener on exactly `bind`, if there is one.
    pub(crate) fn claim(&mut self, bind: SocketAddr) -> Option<Socket> {
        self.passed.iter_mut().find(|p| p.local == bind)?.socket.take()
    }

    /// Passed listeners no mapping claimed.
    pub(crate) fn unclaimed(&self) -> impl Iterator<Item = &Passed> {
        self.passed.iter().filter(|p| p.socket.is_some())
    }

    /// How many listeners were passed.
    pub(crate) fn len(&self) -> usize {
        self.passed.len()
    }
}

/// Checks that `fd` is a listening TCP socket, and moves it to the lowest free number at or above
/// `above` (non-blocking, close-on-exec).
fn adopt(fd: RawFd, above: RawFd) -> Result<Socket, String> {
    // SAFETY: F_DUPFD_CLOEXEC only makes a new descriptor for `fd` (or fails if it is not open).
    let moved = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above) };
    if moved < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: `moved` was just made and nothing else owns it; `fd` is ours (passed to us) and is
    // closed once, here.
    let socket = unsafe {
        libc::close(fd);
        Socket::from_raw_fd(moved)
    };
    let listening = socket.r#type().ok() == Some(socket2::Type::STREAM)
        && socket.is_listener().unwrap_or(false)
        && socket.local_addr().ok().and_then(|a| a.as_socket()).is_some();
    if !listening {
        return Err("not a listening TCP socket".to_string());
    }
    socket.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(socket)
}
