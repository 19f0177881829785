//! Accepting in parallel, where the seed used OpenMP (docs/design.md): on a listener event, every
//! thread of a small pool accepts until the queue is empty (`EAGAIN`), and the main thread gets
//! the accepted sockets back.
//!
//! `rayon::ThreadPool::broadcast` runs the loop once on each thread and returns only when all are
//! done, so the pool is idle whenever the main thread forks.
//!
//! A burst is what the pool is for. Waking it costs more than an accept: each of its threads is
//! woken, and rayon's idle threads spin and yield for a while before they sleep again, which for
//! clients arriving one after the other cost more CPU than the main thread's own work (see
//! docs/benchmarks.md). So the main thread accepts the first [`LEAD`] sockets itself, and wakes
//! the pool only when the queue still had more: a lone client costs two `accept4` calls and no
//! wake-up.
//!
//! Runs in the main process (the main thread and the pool's threads); children never use it.

use socket2::{SockAddr, Socket};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Sockets the main thread accepts itself before it wakes the pool.
const LEAD: usize = 2;

pub(crate) struct AcceptPool {
    pool: rayon::ThreadPool,
}

/// What one burst of accepts produced.
pub(crate) struct Burst {
    /// Accepted sockets, non-blocking and close-on-exec, with their peers.
    pub(crate) accepted: Vec<(Socket, SocketAddr)>,
    /// True when the loop stopped at `EAGAIN`: the edge-triggered listener will signal again.
    /// False when it stopped early (the budget ran out, or an error such as `EMFILE`): the caller
    /// must come back to this listener itself.
    pub(crate) drained: bool,
    /// The first error other than `EAGAIN`, `EINTR` or `ECONNABORTED`.
    pub(crate) error: Option<io::Error>,
}

impl AcceptPool {
    pub(crate) fn new(threads: usize) -> io::Result<AcceptPool> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("portfwd-acc{i}"))
            // Accepting needs little stack; a small one keeps the main process (which every fork
            // copies the page tables of) small.
            .stack_size(128 * 1024)
            .start_handler(|_| {
                // Signals are the main thread's: delivered to an accept thread, a SIGCHLD would
                // wake it (and run the self-pipe handler there) for nothing.
                let _ = nix::sys::signal::pthread_sigmask(
                    nix::sys::signal::SigmaskHow::SIG_SETMASK,
                    Some(&nix::sys::signal::SigSet::all()),
                    None,
                );
                crate::handoff::fork_memory::exclude_thread_memory(true)
            })
            .build()
            .map_err(io::Error::other)?;
        Ok(AcceptPool { pool })
    }

    /// Accepts until `EAGAIN`, an error, or `budget` sockets: the first [`LEAD`] on the calling
    /// thread, the rest, if the queue holds more, in parallel on the pool.
    pub(crate) fn accept_burst(&self, listener: &Socket, budget: usize) -> Burst {
        let lead = budget.min(LEAD);
        let (first, mut first_stop) = accept_until_empty(listener, &AtomicUsize::new(lead));
        let mut rest = Vec::new();
        if matches!(first_stop, Stop::Budget) && budget > lead {
            // The queue may hold more: a burst. The lead's own budget running out is not the
            // caller's.
            first_stop = Stop::Empty;
            let left = AtomicUsize::new(budget - lead);
            rest = self.pool.broadcast(|_| accept_until_empty(listener, &left));
        }
        let mut burst = Burst {
            accepted: Vec::new(),
            drained: true,
            error: None,
        };
        for (accepted, stop) in std::iter::once((first, first_stop)).chain(rest) {
            burst.accepted.extend(accepted);
            match stop {
                Stop::Empty => {}
                Stop::Budget => burst.drained = false,
                Stop::Error(e) => {
                    burst.drained = false;
                    burst.error.get_or_insert(e);
                }
            }
        }
        burst
    }
}

enum Stop {
    Empty,
    Budget,
    Error(io::Error),
}

fn accept_until_empty(listener: &Socket, left: &AtomicUsize) -> (Vec<(Socket, SocketAddr)>, Stop) {
    let mut got = Vec::new();
    loop {
        if left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_err()
        {
            return (got, Stop::Budget);
        }
        match listener.accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) {
            Ok((socket, peer)) => got.push((socket, peer_addr(&peer))),
            Err(e) => {
                left.fetch_add(1, Ordering::SeqCst);
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return (got, Stop::Empty),
                    // A client that gave up before we accepted it, or a signal: go on.
                    Some(libc::ECONNABORTED | libc::EINTR) => {}
                    _ => return (got, Stop::Error(e)),
                }
            }
        }
    }
}

fn peer_addr(addr: &SockAddr) -> SocketAddr {
    addr.as_socket().unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
}
