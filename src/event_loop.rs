//! The main process's event loop: the seed's `Event loop { ... }`, event for event.
//!
//! One epoll set holds the listeners (edge-triggered, `EPOLLEXCLUSIVE`), the accepted sockets that
//! wait for their first byte, and the signal self-pipe. The loop never blocks anywhere but in
//! `epoll_wait`, and it is the only thread that forks.

use crate::accept_pool::AcceptPool;
use crate::cli::Dispatch;
use crate::handoff::{self, Outcome, Plan};
use crate::log;
use crate::signals::{Signal, Signals};
use crate::sys;
use crate::target::Target;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use socket2::Socket;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, RawFd};

/// One forwarded port: a listener and where its connections go.
pub struct Service {
    pub listener: Socket,
    pub local: SocketAddr,
    pub targets: Vec<Target>,
    pub dispatch: Dispatch,
    pub connect_timeout_ms: u64,
}

/// An accepted socket waiting in the epoll set for its first byte.
struct Waiting {
    socket: Socket,
    peer: SocketAddr,
    service: usize,
    accepted_ms: u64,
}

/// Counters for the statistics line.
#[derive(Default, Debug)]
pub struct Stats {
    pub accepted: u64,
    pub closed_waiting: u64,
    pub outcomes: [u64; 4],
}

// epoll tokens: a waiting socket's token is its descriptor (non-negative, below 2^31).
const TOKEN_SIGNALS: u64 = u64::MAX;
const TOKEN_LISTENER: u64 = 1 << 40;
/// How long to wait before trying a listener again after an accept error such as `EMFILE`.
const ACCEPT_RETRY_MS: u16 = 100;

pub struct EventLoop {
    epoll: Epoll,
    services: Vec<Service>,
    /// Listeners whose last burst stopped before `EAGAIN`: no new edge will come for them.
    unfinished: Vec<usize>,
    waiting: HashMap<RawFd, Waiting>,
    /// Live connection processes.
    children: HashMap<libc::pid_t, usize>,
    pool: AcceptPool,
    signals: Signals,
    verbose: bool,
    pub stats: Stats,
}

impl EventLoop {
    /// The seed's "Monitoring setup": the epoll set with each listener and the signal pipe in it.
    pub fn new(services: Vec<Service>, accept_threads: usize, signals: Signals, verbose: bool) -> io::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let listen_flags = EpollFlags::EPOLLIN
            | EpollFlags::EPOLLERR
            | EpollFlags::EPOLLHUP
            | EpollFlags::EPOLLET
            | EpollFlags::EPOLLEXCLUSIVE;
        for (i, service) in services.iter().enumerate() {
            epoll.add(
                service.listener.as_fd(),
                EpollEvent::new(listen_flags, TOKEN_LISTENER + i as u64),
            )?;
        }
        epoll.add(signals.fd(), EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_SIGNALS))?;
        let pool = AcceptPool::new(accept_threads)?;
        Ok(EventLoop {
            epoll,
            services,
            unfinished: Vec::new(),
            waiting: HashMap::new(),
            children: HashMap::new(),
            pool,
            signals,
            verbose,
            stats: Stats::default(),
        })
    }

    /// Runs until SIGTERM or SIGINT. Established connections live on in their own processes.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = vec![EpollEvent::empty(); 256];
        loop {
            let timeout = if self.unfinished.is_empty() {
                EpollTimeout::NONE
            } else {
                EpollTimeout::from(ACCEPT_RETRY_MS)
            };
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            for event in &events[..n] {
                let (token, flags) = (event.data(), event.events());
                if token == TOKEN_SIGNALS {
                    if self.on_signals() {
                        return Ok(());
                    }
                } else if token >= TOKEN_LISTENER {
                    self.on_listener((token - TOKEN_LISTENER) as usize, flags);
                } else {
                    self.on_waiting(token as RawFd, flags);
                }
            }
            if n == 0 {
                for i in std::mem::take(&mut self.unfinished) {
                    self.accept_burst(i);
                }
            }
        }
    }

    /// "if new event's fd == fd_server": accept in parallel until EAGAIN.
    fn on_listener(&mut self, i: usize, flags: EpollFlags) {
        if flags.intersects(EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP) {
            let err = self.services[i].listener.take_error().ok().flatten();
            log!(
                "listener {} reported {:?}: {}",
                self.services[i].local,
                flags,
                err.map_or_else(|| "-".into(), |e| e.to_string())
            );
        }
        self.accept_burst(i);
    }

    fn accept_burst(&mut self, i: usize) {
        let burst = self.pool.accept_burst(&self.services[i].listener, usize::MAX);
        if let Some(e) = &burst.error {
            log!(
                "accept on {} failed: {e}; retrying in {ACCEPT_RETRY_MS} ms",
                self.services[i].local
            );
        }
        if !burst.drained && !self.unfinished.contains(&i) {
            self.unfinished.push(i);
        }
        let now = sys::monotonic_ms();
        for (socket, peer) in burst.accepted {
            self.stats.accepted += 1;
            let waiting = Waiting {
                socket,
                peer,
                service: i,
                accepted_ms: now,
            };
            match self.services[i].dispatch {
                Dispatch::Accept => self.dispatch(waiting),
                Dispatch::Data => self.wait_for_data(waiting),
            }
        }
    }

    /// "Add the new socket descriptor to the epoll loop".
    fn wait_for_data(&mut self, waiting: Waiting) {
        let fd = waiting.socket.as_raw_fd();
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLET;
        match self
            .epoll
            .add(waiting.socket.as_fd(), EpollEvent::new(flags, fd as u64))
        {
            Ok(()) => {
                self.waiting.insert(fd, waiting);
            }
            Err(e) => log!("client={} cannot wait for data: {e}", waiting.peer),
        }
    }

    /// An event on a waiting socket: HUP/ERR close it; anything else means it became active.
    fn on_waiting(&mut self, fd: RawFd, flags: EpollFlags) {
        let Some(waiting) = self.waiting.remove(&fd) else {
            return;
        };
        let _ = self.epoll.delete(waiting.socket.as_fd());
        if flags.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
            self.stats.closed_waiting += 1;
            if self.verbose {
                log!(
                    "client={} listen={} closed before sending",
                    waiting.peer,
                    self.services[waiting.service].local.port()
                );
            }
            return; // dropping the socket closes it
        }
        self.dispatch(waiting);
    }

    /// "Reset the event trigger fd to blocking mode, and remove it from epoll; fork".
    fn dispatch(&mut self, waiting: Waiting) {
        let service = &self.services[waiting.service];
        let _ = waiting.socket.set_nonblocking(false);
        let plan = Plan::new(
            waiting.socket.as_raw_fd(),
            &waiting.peer,
            service.local.port(),
            &service.targets,
            service.connect_timeout_ms,
            waiting.accepted_ms,
        );
        match handoff::hand_off(&plan) {
            Ok(pid) => {
                self.children.insert(pid, waiting.service);
            }
            Err(e) => {
                handoff::reset(&waiting.socket);
                handoff::log_fork_failed(&plan, e);
                self.stats.outcomes[Outcome::ForkFailed as usize] += 1;
            }
        }
        // `waiting.socket` drops here: the main process closes its copy of the client socket.
    }

    /// Returns true when the loop should stop.
    fn on_signals(&mut self) -> bool {
        let mut stop = false;
        for signal in self.signals.pending() {
            match signal {
                Signal::Child => self.reap(),
                Signal::Terminate => stop = true,
                Signal::Reload | Signal::Stats => self.log_stats(),
            }
        }
        if stop {
            log!(
                "stopping: listeners closed; {} connection(s) continue in their own processes",
                self.children.len()
            );
        }
        stop
    }

    /// Collects every exited child, so none stays a zombie.
    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: `status` is a live int; WNOHANG makes this non-blocking.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if self.children.remove(&pid).is_some() {
                self.stats.outcomes[Outcome::from_wait_status(status) as usize] += 1;
            }
        }
    }

    fn log_stats(&self) {
        let o = &self.stats.outcomes;
        log!(
            "stats live={} waiting={} accepted={} closed={} reset={} connect_failed={} fork_failed={} closed_before_data={}",
            self.children.len(),
            self.waiting.len(),
            self.stats.accepted,
            o[0],
            o[1],
            o[2],
            o[3],
            self.stats.closed_waiting
        );
    }
}
