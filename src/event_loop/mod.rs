//! The main process's event loop: the seed's event loop, event for event (its pseudo code, and
//! where each step is here: docs/design.md, "The event loop, against the seed").
//!
//! One epoll set holds the listeners (edge-triggered, `EPOLLEXCLUSIVE`), the accepted sockets that
//! wait for their first byte, the signal self-pipe and the hand-off eventfd; each event says which
//! by its [`Token`]. The loop blocks nowhere but in `epoll_wait`, whose timeout is the nearest
//! deadline (a silent client's first-byte timeout, a paused listener's retry, the drain deadline,
//! a count of log lines left out), and it is the only thread that forks.
//!
//! Its concerns, each a small type: [`routes`] (a listener's lines and their backends),
//! [`admission`] (who may come in, and how many), [`waiting`] (sockets waiting for their first
//! byte), [`launcher`] (forking connection processes, with the back-off after a failure),
//! [`reload`] (old listeners against a new configuration) and [`stats`]. Accepting is in
//! [`accept`]. Runs in the main process only.

mod accept;
mod admission;
mod launcher;
mod live_view;
mod metrics;
mod proxy_accept;
mod refresh;
mod reload;
mod routes;
mod routing;
mod stats;
mod stop;
mod token;
mod waiting;

use crate::accept_pool::AcceptPool;
use crate::access;
use crate::backends::report::Reported;
use crate::conn::Outcome;
use crate::handoff::bytes::RecordId;
use crate::handoff::fork_fds::HandoffSlots;
use crate::listener;
use crate::log;
use crate::metrics::{ListenerMetrics, MetricsServer};
use crate::options::Options;
use crate::resolver::Resolver;
use crate::signals::{Signal, Signals};
use crate::sys;
use admission::{Admission, Live};
use launcher::Launcher;
use metrics::Observer;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use socket2::Socket;
use stats::Stats;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, RawFd};
use std::path::PathBuf;
use std::rc::Rc;
use token::Token;
use waiting::WaitingSet;

pub(crate) use routes::{Route, Routes};

/// A listening port and its live connections.
pub(crate) struct Service {
    pub(crate) listener: Socket,
    pub(crate) local: SocketAddr,
    pub(crate) routes: Rc<Routes>,
    /// Waiting sockets and connection processes of this listener.
    live: Live,
    /// The last accept burst stopped before `EAGAIN`: no new edge will come, so the loop must come
    /// back (when a slot frees up, or at `retry_at`).
    unfinished: bool,
    retry_at: Option<u64>,
    /// At a connection cap: logged once when it starts.
    capped: bool,
    /// This listener's share of the counters (the per-mapping lines of `SIGUSR1`).
    stats: Stats,
    /// Its series, with `--metrics`.
    metrics: Option<ListenerMetrics>,
}

impl Service {
    pub(crate) fn new(listener: Socket, routes: Routes) -> io::Result<Service> {
        let local = listener::local_addr(&listener)?;
        Ok(Service {
            listener,
            local,
            routes: Rc::new(routes),
            live: Live::default(),
            unfinished: false,
            retry_at: None,
            capped: false,
            stats: Stats::default(),
            metrics: None,
        })
    }
}

/// A connection the main process is responsible for: a socket waiting in the epoll set, or a
/// connection process.
pub(crate) struct Conn {
    /// Its listener's slot.
    slot: usize,
    routes: Rc<Routes>,
    /// The route taken (0 until a routed listener decides).
    chosen: usize,
    /// While waiting on a routed listener: how many bytes the last peek saw, so that the
    /// decision (which reads from the start) is made again only when more have come.
    seen: usize,
    /// The client: the peer of the socket, or the address its PROXY header carried.
    peer: SocketAddr,
    accepted_ms: u64,
    /// The byte record its process fills as it ends, once it has one.
    bytes: Option<RecordId>,
    /// With `accept_proxy=on`: the header is still to be read.
    awaiting_header: bool,
    /// The sender of the PROXY header (the load balancer), once it was read.
    via: Option<SocketAddr>,
    /// The address the client connected to, as the PROXY header carried it.
    destination: Option<SocketAddr>,
}

impl Conn {
    /// The route this connection takes.
    fn route(&self) -> &Route {
        &self.routes.list[self.chosen]
    }
}

/// Settings of the process as a whole (the command line's, not a mapping's).
pub(crate) struct Settings {
    pub(crate) accept_threads: usize,
    /// Live connections of the whole process at most (the command line's `--max-connections`);
    /// each mapping also has its own cap (`max_connections=` on its line, which defaults to this).
    pub(crate) max_connections: usize,
    pub(crate) verbose: bool,
    /// After SIGTERM/SIGINT, how long established connections may go on (`None`: as long as they
    /// like; the main process exits at once and leaves them to finish).
    pub(crate) drain_timeout_ms: Option<u64>,
    /// Access rules from the command line, after each mapping's own.
    pub(crate) global_rules: Vec<access::Rule>,
    /// The file SIGHUP re-reads, and the command line's options each line starts from.
    pub(crate) config: Option<(PathBuf, Options)>,
    /// Where the log goes; SIGUSR2 and SIGHUP reopen it (for log rotation).
    pub(crate) log_to: crate::log_sink::Destination,
    pub(crate) log_format: crate::log_format::Format,
    /// Where SIGUSR1 writes the live view `--status` shows (beside the pid file), if anywhere.
    pub(crate) status_file: Option<PathBuf>,
    /// Listeners passed by systemd (socket activation), for the start-up log.
    pub(crate) passed: usize,
}

pub(crate) struct EventLoop {
    epoll: Epoll,
    /// Listeners by slot; a slot is never reused, so a token or a connection's slot stays valid.
    services: Vec<Option<Service>>,
    waiting: WaitingSet<(Socket, Conn)>,
    /// Live connection processes.
    children: HashMap<libc::pid_t, Conn>,
    admission: Admission,
    launcher: Launcher,
    /// Out of descriptors: logged once when it starts and once when it ends.
    starved: bool,
    /// Set once SIGTERM/SIGINT/SIGQUIT arrived: the time after which connections are ended.
    draining: Option<u64>,
    pool: AcceptPool,
    signals: Signals,
    settings: Settings,
    stats: Stats,
    refusals_log: log::Throttle,
    /// The one buffer waiting clients of routed listeners are peeked into.
    peek_buf: Box<[u8]>,
    /// `--metrics`: the registry and its endpoint.
    observer: Option<Observer>,
    /// Resolves a reload's targets off the loop (only with a configuration file to reload).
    resolver: Option<Resolver>,
    /// Reloads asked for so far; the newest is the one whose answer is applied.
    reloads: u64,
    /// A reload is waiting for its targets: the newest one's number.
    reload_pending: Option<u64>,
    /// When the routes with `resolve=` have their names resolved again.
    refresh: refresh::Schedule<refresh::RouteKey>,
    /// Where PROXY headers are peeked into.
    header_buf: Vec<u8>,
}

impl EventLoop {
    /// The epoll set with the signal pipe, the hand-off eventfd, the metrics endpoint and each
    /// listener in it. `slots` were reserved before the listeners were opened.
    pub(crate) fn new(
        services: Vec<Service>,
        slots: HandoffSlots,
        metrics: Option<MetricsServer>,
        signals: Signals,
        settings: Settings,
    ) -> io::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(
            signals.fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, Token::Signals.encode()),
        )?;
        let pool = AcceptPool::new(settings.accept_threads)?;
        // The accept threads exclude their own stacks as they start.
        let launcher = Launcher::new(slots, settings.max_connections)?;
        let observer = metrics.map(|server| Observer::new(server, &epoll)).transpose()?;
        let routes: Vec<&Routes> = services.iter().map(|s| &*s.routes).collect();
        let wanted = settings.config.is_some() || Self::wants_refresh(&routes);
        let resolver = wanted.then(Resolver::start).transpose()?;
        let mut this = EventLoop {
            epoll,
            services: Vec::new(),
            waiting: WaitingSet::new(),
            children: HashMap::new(),
            admission: Admission::new(settings.max_connections, settings.global_rules.clone()),
            launcher,
            starved: false,
            draining: None,
            pool,
            signals,
            settings,
            stats: Stats::default(),
            refusals_log: log::Throttle::new(accept::REFUSALS_LOGGED_PER_SEC),
            peek_buf: vec![0; crate::route::PEEK_LIMIT].into_boxed_slice(),
            observer,
            resolver,
            reloads: 0,
            reload_pending: None,
            refresh: refresh::Schedule::new(),
            header_buf: proxy_accept::buffer(),
        };
        let notify = EpollEvent::new(EpollFlags::EPOLLIN, Token::Handoff.encode());
        this.epoll.add(this.launcher.notify_fd(), notify)?;
        if let Some(resolver) = &this.resolver {
            let answers = EpollEvent::new(EpollFlags::EPOLLIN, Token::Resolver.encode());
            this.epoll.add(resolver.notify_fd(), answers)?;
        }
        for service in services {
            this.add_service(service)?;
        }
        this.schedule_refreshes();
        Ok(this)
    }

    /// Runs until told to stop (and, with a drain timeout, until the connections are gone).
    pub(crate) fn run(&mut self) -> io::Result<()> {
        let mut events = vec![EpollEvent::empty(); 256];
        loop {
            let n = match self.epoll.wait(&mut events, self.next_timeout()) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            for event in &events[..n] {
                let flags = event.events();
                match Token::decode(event.data()) {
                    Token::Listener(slot) => self.on_listener(slot, flags),
                    Token::Waiting(fd) if flags.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) => {
                        self.close_waiting(fd)
                    }
                    Token::Waiting(fd) => self.on_active(fd, flags),
                    Token::Signals => self.on_signals(),
                    // Connection processes left the shared descriptor table (free their slots),
                    // or reported which backends they reached.
                    Token::Handoff => {
                        self.launcher.reclaim();
                        for (routes, chosen, reported) in self.launcher.take_reports() {
                            self.apply_report(&routes, chosen, reported);
                        }
                    }
                    Token::MetricsListener => self.on_metrics_listener(),
                    Token::MetricsClient(fd) => self.on_metrics_client(fd),
                    Token::Resolver => self.on_resolved(),
                }
            }
            self.on_timers();
            if let Some(deadline) = self.draining {
                if self.children.is_empty() {
                    return Ok(());
                }
                if sys::monotonic_ms() >= deadline {
                    self.end_connections();
                    return Ok(());
                }
            }
        }
    }

    fn next_timeout(&self) -> EpollTimeout {
        let now = sys::monotonic_ms();
        let retries = self.services.iter().flatten().filter_map(|s| s.retry_at);
        let next = [
            self.draining,
            self.waiting.next_deadline(),
            self.launcher.due_at(),
            self.refusals_log.due_at(),
            self.observer.as_ref().and_then(Observer::next_deadline),
            self.refresh_deadline(),
        ]
        .into_iter()
        .flatten()
        .chain(retries)
        .min();
        match next {
            None => EpollTimeout::NONE,
            Some(t) => {
                EpollTimeout::try_from(t.saturating_sub(now).min(60_000) as i32 + 1).unwrap_or(EpollTimeout::NONE)
            }
        }
    }

    /// A waiting socket hung up or failed before its first byte: close it.
    fn close_waiting(&mut self, fd: RawFd) {
        let Some((socket, conn)) = self.waiting.remove(fd) else {
            return;
        };
        let _ = self.epoll.delete(socket.as_fd());
        self.tally(conn.slot, |s| s.closed_waiting += 1);
        if self.settings.verbose {
            log!(
                "client={} listen={} event=closed-before-data",
                conn.peer,
                conn.routes.listener().bind.port()
            );
        }
        self.release(&conn);
        // Dropping the socket closes it.
    }

    /// A waiting socket became active (its first byte, or a FIN): out of the epoll set, hand off
    /// (after its PROXY header, see `proxy_accept`; on a routed listener: once its bytes select a
    /// route, see `routing`).
    fn on_active(&mut self, fd: RawFd, flags: EpollFlags) {
        if self.waiting.get(fd).is_some_and(|(_, conn)| conn.awaiting_header) {
            return self.on_header_bytes(fd);
        }
        if self.waiting.get_mut(fd).is_some_and(|(_, conn)| conn.routes.routed) {
            return self.on_routed_active(fd, flags.contains(EpollFlags::EPOLLRDHUP));
        }
        let Some((socket, conn)) = self.waiting.remove(fd) else {
            return;
        };
        let _ = self.epoll.delete(socket.as_fd());
        self.dispatch(socket, conn);
    }

    /// Hands an active client off: back to blocking, then the connection process is forked (or,
    /// during a fork back-off, the client is reset at once: the fork would fail too).
    fn dispatch(&mut self, socket: Socket, conn: Conn) {
        if self.launcher.backoff.paused(sys::monotonic_ms()) {
            self.launcher.refuse_in_backoff(&socket, &conn);
            self.stats.outcomes.add(Outcome::ForkFailed);
            self.release(&conn);
            return;
        }
        let _ = socket.set_nonblocking(false);
        match self.launcher.launch(&socket, &conn) {
            Ok((pid, bytes)) => {
                self.children.insert(pid, Conn { bytes, ..conn });
            }
            Err(_) => {
                // Reset and logged by the launcher.
                self.tally(conn.slot, |s| s.outcomes.add(Outcome::ForkFailed));
                self.record_fork_failure(&conn);
                self.release(&conn);
            }
        }
        // `socket` drops here: the main process closes its copy of the client socket.
    }

    /// A connection is over (or never started): free its place under the limits.
    fn release(&mut self, conn: &Conn) {
        let here = self
            .services
            .get_mut(conn.slot)
            .and_then(Option::as_mut)
            .map(|s| &mut s.live);
        self.admission.leave(here, conn.peer.ip());
    }

    fn on_timers(&mut self) {
        let now = sys::monotonic_ms();
        self.log_left_out_refusals(now);
        self.expire_metrics_clients(now);
        self.launcher.log_left_out(now);
        self.send_refreshes(now);
        // Silent clients past their first-byte timeout (or a routed listener's timeout route).
        while let Some((fd, (socket, conn))) = self.waiting.pop_expired(now) {
            if conn.awaiting_header {
                // A refusal (counted and logged as one), not a silent client.
                let _ = self.epoll.delete(socket.as_fd());
                self.header_timed_out(&socket, &conn);
                self.release(&conn);
                continue;
            }
            let Some((socket, conn)) = self.on_routed_deadline(fd, socket, conn, now) else {
                continue;
            };
            let _ = self.epoll.delete(socket.as_fd());
            self.tally(conn.slot, |s| s.first_byte_timeouts += 1);
            if self.settings.verbose && conn.seen > 0 {
                log!(
                    "client={} listen={} event=first-byte-timeout seen={} reason=no-route-chosen",
                    conn.peer,
                    conn.routes.listener().bind.port(),
                    conn.seen
                );
            } else if self.settings.verbose {
                log!(
                    "client={} listen={} event=first-byte-timeout",
                    conn.peer,
                    conn.routes.listener().bind.port()
                );
            }
            self.release(&conn);
        }
        // Listeners that stopped short: retry when due, or when the cap has room again.
        for slot in 0..self.services.len() {
            let due = match &self.services[slot] {
                Some(s) if s.unfinished => match s.retry_at {
                    Some(t) => t <= now,
                    None => self
                        .admission
                        .has_room(&s.live, s.routes.listener().options.max_connections),
                },
                _ => false,
            };
            if due {
                self.accept_burst(slot);
            }
        }
    }

    fn on_signals(&mut self) {
        for signal in self.signals.pending() {
            match signal {
                Signal::Child => self.reap(),
                Signal::Terminate => self.stop(self.settings.drain_timeout_ms),
                Signal::Quit => self.stop(Some(0)),
                Signal::Reload => self.reload(),
                Signal::Stats => {
                    self.log_stats();
                    self.write_live_view();
                }
                Signal::Reopen => self.reopen_log(),
            }
        }
    }

    /// Collects every exited child, so none stays a zombie.
    fn reap(&mut self) {
        while let Some((pid, status)) = sys::reap_one() {
            self.launcher.child_ended(pid);
            let Some(conn) = self.children.remove(&pid) else {
                continue;
            };
            // A report not read yet (its eventfd write still to come), or none: free its word.
            if let Some((routes, chosen, reported)) = self.launcher.report_ended(pid) {
                self.apply_report(&routes, chosen, reported);
            }
            let outcome = Outcome::from_wait_status(status);
            self.tally(conn.slot, |s| s.outcomes.add(outcome));
            let (c2s, s2c) = self.launcher.bytes_of(conn.bytes);
            self.record_end(&conn, outcome, c2s, s2c);
            if libc::WIFSIGNALED(status) {
                // It died before it could write its own line (a crash, the OOM killer, an
                // operator's kill, or `end_connections`): say which connection it was.
                let sig = libc::WTERMSIG(status);
                let name = nix::sys::signal::Signal::try_from(sig)
                    .map_or_else(|_| format!("signal-{sig}"), |s| s.as_str().to_string());
                log!(
                    "client={} listen={} ms={} outcome=reset error={name} reason=connection-process-killed",
                    conn.peer,
                    conn.routes.listener().bind.port(),
                    sys::monotonic_ms().saturating_sub(conn.accepted_ms)
                );
            }
            self.release(&conn);
        }
    }

    /// A connection process said which backends of its route it could not reach and which one
    /// it used.
    fn apply_report(&self, routes: &Routes, chosen: usize, reported: Reported) {
        let route = &routes.list[chosen];
        let name = routes.name(chosen);
        let now = sys::monotonic_ms();
        route.backends.apply(
            reported,
            &route.mapping.options,
            route.mapping.bind,
            name.as_deref(),
            now,
        );
        self.record_backends(routes, chosen, reported);
    }
}
