//! The main process's event loop: the seed's `Event loop { ... }`, event for event.
//!
//! One epoll set holds the listeners (edge-triggered, `EPOLLEXCLUSIVE`), the accepted sockets that
//! wait for their first byte, and the signal self-pipe. The loop blocks nowhere but in
//! `epoll_wait`, whose timeout is the nearest deadline (a silent client's first-byte timeout, a
//! paused listener's retry, the drain deadline), and it is the only thread that forks.

use crate::accept_pool::AcceptPool;
use crate::access;
use crate::config::{self, Mapping};
use crate::fork_fds::HandoffSlots;
use crate::fork_memory::{Exclusions, LaunchPad};
use crate::handoff::{self, OUTCOMES, Outcome, Plan, Targets, Totals};
use crate::listener;
use crate::log;
use crate::options::{Dispatch, Options};
use crate::signals::{Signal, Signals};
use crate::sys;
use crate::target::Target;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use socket2::Socket;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;

/// Where one mapping's connections go, and how: shared by its listener, its waiting sockets and
/// its connection processes, so a reload can replace it without touching those in flight.
pub struct Route {
    pub mapping: Mapping,
    pub targets: Vec<Target>,
}

/// A listening port and its live connections.
pub struct Service {
    pub listener: Socket,
    pub local: SocketAddr,
    pub route: Rc<Route>,
    /// Waiting sockets and connection processes of this listener.
    live: usize,
    per_source: HashMap<IpAddr, usize>,
    /// The last accept burst stopped before `EAGAIN`: no new edge will come, so the loop must come
    /// back (when a slot frees up, or at `retry_at`).
    unfinished: bool,
    retry_at: Option<u64>,
    /// At a connection cap: logged once when it starts.
    capped: bool,
}

impl Service {
    pub fn new(listener: Socket, route: Route) -> io::Result<Service> {
        let local = listener::local_addr(&listener)?;
        Ok(Service {
            listener,
            local,
            route: Rc::new(route),
            live: 0,
            per_source: HashMap::new(),
            unfinished: false,
            retry_at: None,
            capped: false,
        })
    }
}

/// A connection the main process is responsible for: a socket waiting in the epoll set, or a
/// connection process.
struct Conn {
    slot: usize,
    route: Rc<Route>,
    peer: SocketAddr,
    accepted_ms: u64,
}

struct Waiting {
    socket: Socket,
    conn: Conn,
    deadline: Option<u64>,
}

/// Settings of the process as a whole (the command line's, not a mapping's).
pub struct Settings {
    pub accept_threads: usize,
    /// Live connections of the whole process at most (the command line's `--max-connections`);
    /// each mapping also has its own cap (`max_connections=` on its line, which defaults to this).
    pub max_connections: usize,
    pub verbose: bool,
    /// After SIGTERM/SIGINT, how long established connections may go on (`None`: as long as they
    /// like; the main process exits at once and leaves them to finish).
    pub drain_timeout_ms: Option<u64>,
    /// Access rules from the command line, after each mapping's own.
    pub global_rules: Vec<access::Rule>,
    /// The file SIGHUP re-reads, and the command line's options each line starts from.
    pub config: Option<(PathBuf, Options)>,
    /// The file SIGHUP reopens (for log rotation).
    pub log_file: Option<PathBuf>,
}

#[derive(Default, Debug)]
struct Stats {
    accepted: u64,
    refused: u64,
    closed_waiting: u64,
    first_byte_timeouts: u64,
    outcomes: [u64; OUTCOMES],
}

// epoll tokens: a waiting socket's token is its descriptor (non-negative, below 2^31).
const TOKEN_SIGNALS: u64 = u64::MAX;
const TOKEN_HANDOFF: u64 = u64::MAX - 1;
const TOKEN_LISTENER: u64 = 1 << 40;
/// How long accepting pauses after an accept error (EMFILE, ENOBUFS...) or a failed fork.
const BACKOFF_MS: u64 = 100;
/// Refused clients logged one by one each second at most; the rest are counted in one line.
const REFUSALS_LOGGED_PER_SEC: u32 = 20;

pub struct EventLoop {
    epoll: Epoll,
    /// Listeners by slot; a slot is never reused, so a token or a connection's slot stays valid.
    services: Vec<Option<Service>>,
    waiting: HashMap<RawFd, Waiting>,
    /// First-byte deadlines, earliest first: (deadline, fd). Stale entries are skipped.
    deadlines: BinaryHeap<Reverse<(u64, RawFd)>>,
    /// Live connection processes.
    children: HashMap<libc::pid_t, Conn>,
    /// Waiting sockets and connection processes of every listener, for the process-wide cap.
    live_total: usize,
    /// Sockets that became active while forking was failing; dispatched when the backoff ends.
    deferred: Vec<Waiting>,
    fork_backoff_until: u64,
    /// Out of descriptors: logged once when it starts and once when it ends.
    starved: bool,
    /// Set once SIGTERM/SIGINT/SIGQUIT arrived: the time after which connections are ended.
    draining: Option<u64>,
    pool: AcceptPool,
    signals: Signals,
    totals: &'static Totals,
    /// Where each connection process starts: its plan and its stack (see `fork_memory`).
    pad: LaunchPad<Plan>,
    /// The descriptor numbers client sockets are handed over in (see `fork_fds`).
    slots: HandoffSlots,
    /// The heap and stack the connection processes do not get.
    exclusions: Exclusions,
    settings: Settings,
    stats: Stats,
    refusals_log: log::Throttle,
}

impl EventLoop {
    /// The seed's "Monitoring setup": the epoll set with each listener and the signal pipe in it.
    pub fn new(services: Vec<Service>, signals: Signals, settings: Settings) -> io::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(signals.fd(), EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_SIGNALS))?;
        let mut this = EventLoop {
            epoll,
            services: Vec::new(),
            waiting: HashMap::new(),
            deadlines: BinaryHeap::new(),
            children: HashMap::new(),
            live_total: 0,
            deferred: Vec::new(),
            fork_backoff_until: 0,
            starved: false,
            draining: None,
            pool: AcceptPool::new(settings.accept_threads)?,
            signals,
            totals: Totals::map()?,
            pad: LaunchPad::new()?,
            // Before the first accept, so that the slots' numbers stay low.
            slots: HandoffSlots::reserve()?,
            // The accept threads exclude their own stacks as they start. From here on the main
            // process forks only through `handoff`.
            exclusions: Exclusions::start(),
            settings,
            stats: Stats::default(),
            refusals_log: log::Throttle::new(REFUSALS_LOGGED_PER_SEC),
        };
        let notify = EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_HANDOFF);
        this.epoll.add(this.slots.notify_fd(), notify)?;
        for service in services {
            this.add_service(service)?;
        }
        Ok(this)
    }

    fn add_service(&mut self, service: Service) -> io::Result<()> {
        let slot = self.services.len();
        let flags = EpollFlags::EPOLLIN
            | EpollFlags::EPOLLERR
            | EpollFlags::EPOLLHUP
            | EpollFlags::EPOLLET
            | EpollFlags::EPOLLEXCLUSIVE;
        self.epoll.add(
            service.listener.as_fd(),
            EpollEvent::new(flags, TOKEN_LISTENER + slot as u64),
        )?;
        self.services.push(Some(service));
        // Clients may already be queued (a reload, or a listener bound before daemonizing).
        self.accept_burst(slot);
        Ok(())
    }

    /// Runs until told to stop (and, with a drain timeout, until the connections are gone).
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = vec![EpollEvent::empty(); 256];
        loop {
            let timeout = self.next_timeout();
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            for event in &events[..n] {
                let (token, flags) = (event.data(), event.events());
                if token == TOKEN_SIGNALS {
                    self.on_signals();
                } else if token == TOKEN_HANDOFF {
                    // Connection processes left the shared descriptor table: free their slots.
                    self.slots.reclaim();
                } else if token >= TOKEN_LISTENER {
                    self.on_listener((token - TOKEN_LISTENER) as usize, flags);
                } else {
                    self.on_waiting(token as RawFd, flags);
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
        let mut next: Option<u64> = self.draining;
        let mut consider = |t: u64| next = Some(next.map_or(t, |n| n.min(t)));
        if let Some(Reverse((t, _))) = self.deadlines.peek() {
            consider(*t);
        }
        for service in self.services.iter().flatten() {
            if let Some(t) = service.retry_at {
                consider(t);
            }
        }
        if !self.deferred.is_empty() {
            consider(self.fork_backoff_until);
        }
        if let Some(t) = self.refusals_log.due_at() {
            consider(t);
        }
        match next {
            None => EpollTimeout::NONE,
            Some(t) => {
                EpollTimeout::try_from(t.saturating_sub(now).min(60_000) as i32 + 1).unwrap_or(EpollTimeout::NONE)
            }
        }
    }

    /// "if new event's fd == fd_server": accept in parallel until EAGAIN.
    fn on_listener(&mut self, slot: usize, flags: EpollFlags) {
        let Some(service) = self.services.get(slot).and_then(Option::as_ref) else {
            return;
        };
        if flags.intersects(EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP) {
            let err = service.listener.take_error().ok().flatten();
            log!(
                "listener {} reported {flags:?}: {}",
                service.local,
                err.map_or_else(|| "-".into(), |e| e.to_string())
            );
        }
        self.accept_burst(slot);
    }

    fn accept_burst(&mut self, slot: usize) {
        let now = sys::monotonic_ms();
        let Some(service) = self.services.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if now < self.fork_backoff_until || self.draining.is_some() {
            service.unfinished = true;
            service.retry_at = Some(self.fork_backoff_until.max(now + 1));
            return;
        }
        // At a cap, leave clients in the kernel's backlog: they are served as slots free up.
        let cap = service.route.mapping.options.max_connections;
        let budget = cap
            .saturating_sub(service.live)
            .min(self.settings.max_connections.saturating_sub(self.live_total));
        service.retry_at = None;
        service.unfinished = false;
        if budget == 0 {
            service.unfinished = true;
            if !service.capped {
                service.capped = true;
                let (live, total, max) = (service.live, self.live_total, self.settings.max_connections);
                log!(
                    "{}: at max_connections ({live} of {cap} here, {total} of {max} in all); \
                     new clients wait in the backlog",
                    service.local
                );
            }
            return;
        }
        service.capped = false;
        let burst = self.pool.accept_burst(&service.listener, budget);
        if !burst.drained {
            service.unfinished = true;
        }
        match &burst.error {
            Some(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) =>
            {
                service.retry_at = Some(now + BACKOFF_MS);
                if !self.starved {
                    self.starved = true;
                    log!(
                        "accept on {}: {e}; pausing accepts, retrying every {BACKOFF_MS} ms",
                        service.local
                    );
                }
            }
            Some(e) => {
                service.retry_at = Some(now + BACKOFF_MS);
                log!("accept on {} failed: {e}; retrying in {BACKOFF_MS} ms", service.local);
            }
            None if self.starved && !burst.accepted.is_empty() => {
                self.starved = false;
                log!("accepting again on {}", service.local);
            }
            None => {}
        }
        let route = Rc::clone(&service.route);
        for (socket, peer) in burst.accepted {
            self.admit(slot, &route, socket, peer, now);
        }
    }

    /// Applies the access rules and the per-source limit to a newly accepted client, then hands it
    /// off at once or puts it in the epoll set to wait for its first byte.
    fn admit(&mut self, slot: usize, route: &Rc<Route>, socket: Socket, peer: SocketAddr, now: u64) {
        self.stats.accepted += 1;
        let options = &route.mapping.options;
        let ip = peer.ip().to_canonical();
        let service = self.services[slot].as_mut().expect("accepting service exists");
        let refusal = if !access::permits(&options.rules, &self.settings.global_rules, ip) {
            Some("access-denied")
        } else if options
            .max_per_source
            .is_some_and(|max| service.per_source.get(&ip).copied().unwrap_or(0) >= max)
        {
            Some("max-per-source")
        } else {
            None
        };
        if let Some(reason) = refusal {
            self.stats.refused += 1;
            handoff::reset(&socket);
            let port = service.local.port();
            self.log_left_out_refusals(now);
            if self.refusals_log.admit(now) {
                log!("client={peer} listen={port} outcome=refused reason={reason}");
            }
            return;
        }
        service.live += 1;
        self.live_total += 1;
        *service.per_source.entry(ip).or_insert(0) += 1;
        let conn = Conn {
            slot,
            route: Rc::clone(route),
            peer,
            accepted_ms: now,
        };
        match options.dispatch {
            Dispatch::Accept => self.dispatch(socket, conn),
            Dispatch::Data => self.wait_for_data(socket, conn),
        }
    }

    /// "Add the new socket descriptor to the epoll loop".
    fn wait_for_data(&mut self, socket: Socket, conn: Conn) {
        let fd = socket.as_raw_fd();
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLET;
        if let Err(e) = self.epoll.add(socket.as_fd(), EpollEvent::new(flags, fd as u64)) {
            log!("client={} cannot wait for data: {e}", conn.peer);
            self.release(&conn);
            return;
        }
        let deadline = conn
            .route
            .mapping
            .options
            .first_byte_timeout
            .map(|t| conn.accepted_ms + t.as_millis() as u64);
        if let Some(d) = deadline {
            self.deadlines.push(Reverse((d, fd)));
        }
        self.waiting.insert(fd, Waiting { socket, conn, deadline });
    }

    /// An event on a waiting socket: HUP/ERR close it; anything else means it became active.
    fn on_waiting(&mut self, fd: RawFd, flags: EpollFlags) {
        let Some(waiting) = self.waiting.remove(&fd) else {
            return;
        };
        let _ = self.epoll.delete(waiting.socket.as_fd());
        if flags.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
            self.stats.closed_waiting += 1;
            if self.settings.verbose {
                log!("client={} closed before sending", waiting.conn.peer);
            }
            self.release(&waiting.conn);
            return; // dropping the socket closes it
        }
        self.dispatch(waiting.socket, waiting.conn);
    }

    /// "Reset the event trigger fd to blocking mode, and remove it from epoll; fork".
    fn dispatch(&mut self, socket: Socket, conn: Conn) {
        if sys::monotonic_ms() < self.fork_backoff_until {
            // A fork just failed: this client waits (out of the epoll set) until the pause ends.
            self.deferred.push(Waiting {
                socket,
                conn,
                deadline: None,
            });
            return;
        }
        let _ = socket.set_nonblocking(false);
        let route = &conn.route;
        let options = &route.mapping.options;
        let plan = Plan {
            client: socket.as_raw_fd(),
            ticket: None,
            targets: Targets::new(&route.targets),
            connect_timeout_ms: options.connect_timeout.as_millis().max(1) as u64,
            line: Plan::describe(&conn.peer, route.mapping.bind.port()),
            accepted_ms: conn.accepted_ms,
            idle_timeout_ms: options.idle_timeout.map_or(0, |t| t.as_millis().max(1) as u64),
            keepalive_secs: options.keepalive.map_or(0, |t| t.as_secs().max(1) as u32),
            totals: self.totals,
        };
        self.exclusions.refresh();
        match handoff::hand_off(&mut self.pad, &mut self.slots, plan) {
            Ok(pid) => {
                self.children.insert(pid, conn);
            }
            Err(e) => {
                handoff::reset(&socket);
                handoff::log_fork_failed(&plan, e);
                self.stats.outcomes[Outcome::ForkFailed as usize] += 1;
                self.release(&conn);
                // Processes or memory ran out: let the system breathe before the next fork.
                self.fork_backoff_until = sys::monotonic_ms() + BACKOFF_MS;
            }
        }
        // `socket` drops here: the main process closes its copy of the client socket.
    }

    /// A connection is over (or never started): free its slot under the limits.
    fn release(&mut self, conn: &Conn) {
        self.live_total -= 1;
        let Some(service) = self.services.get_mut(conn.slot).and_then(Option::as_mut) else {
            return;
        };
        service.live -= 1;
        let ip = conn.peer.ip().to_canonical();
        if let Some(n) = service.per_source.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                service.per_source.remove(&ip);
            }
        }
    }

    /// Once a second with more refusals than were logged is over: how many were not.
    fn log_left_out_refusals(&mut self, now: u64) {
        if let Some(n) = self.refusals_log.take_left_out(now) {
            log!(
                "outcome=refused for {n} more client(s) in the second before, not logged one by one \
                 (at most {REFUSALS_LOGGED_PER_SEC} a second)"
            );
        }
    }

    fn on_timers(&mut self) {
        let now = sys::monotonic_ms();
        self.log_left_out_refusals(now);
        // Silent clients past their first-byte timeout.
        while let Some(&Reverse((deadline, fd))) = self.deadlines.peek() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            if self.waiting.get(&fd).is_some_and(|w| w.deadline == Some(deadline)) {
                let waiting = self.waiting.remove(&fd).expect("checked above");
                let _ = self.epoll.delete(waiting.socket.as_fd());
                self.stats.first_byte_timeouts += 1;
                if self.settings.verbose {
                    log!(
                        "client={} closed: nothing sent within the first-byte timeout",
                        waiting.conn.peer
                    );
                }
                self.release(&waiting.conn);
            }
        }
        if now >= self.fork_backoff_until && !self.deferred.is_empty() {
            for w in std::mem::take(&mut self.deferred) {
                self.dispatch(w.socket, w.conn);
            }
        }
        // Listeners that stopped short: retry when due, or when the cap has room again.
        for slot in 0..self.services.len() {
            let due = match &self.services[slot] {
                Some(s) if s.unfinished => match s.retry_at {
                    Some(t) => t <= now,
                    None => {
                        s.live < s.route.mapping.options.max_connections
                            && self.live_total < self.settings.max_connections
                    }
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
                Signal::Stats => self.log_stats(),
            }
        }
    }

    /// Closes every listener and waiting socket. With a drain time, the loop goes on reaping
    /// until the connections end or the time is up; without, it returns at once.
    fn stop(&mut self, drain_ms: Option<u64>) {
        for service in self.services.iter_mut() {
            if let Some(s) = service.take() {
                let _ = self.epoll.delete(s.listener.as_fd());
            }
        }
        for (_, w) in self.waiting.drain() {
            let _ = self.epoll.delete(w.socket.as_fd());
        }
        self.deferred.clear();
        let now = sys::monotonic_ms();
        let deadline = match drain_ms {
            Some(ms) => now + ms,
            None => now, // with no children to wait for, the loop ends at once
        };
        let live = self.children.len();
        match drain_ms {
            None => {
                log!("stopping: listeners closed; {live} connection(s) go on in their own processes");
                self.children.clear(); // not ours to wait for
            }
            Some(0) => log!("stopping now: listeners closed; ending {live} connection(s)"),
            Some(ms) => log!("stopping: listeners closed; waiting up to {ms} ms for {live} connection(s)"),
        }
        self.draining = Some(self.draining.map_or(deadline, |d| d.min(deadline)));
    }

    /// Ends the connections still open: SIGTERM to each connection's process group (both of its
    /// processes), then, after a bounded wait, SIGKILL to any that remain.
    fn end_connections(&mut self) {
        if self.children.is_empty() {
            return;
        }
        log!("ending {} connection(s) still open", self.children.len());
        for &pid in self.children.keys() {
            sys::kill(-pid, libc::SIGTERM);
        }
        let until = sys::monotonic_ms() + 2000;
        while !self.children.is_empty() && sys::monotonic_ms() < until {
            let _ = self
                .epoll
                .wait(&mut [EpollEvent::empty(); 4], EpollTimeout::from(20u16));
            self.reap();
        }
        for &pid in self.children.keys() {
            sys::kill(-pid, libc::SIGKILL);
        }
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
            self.slots.child_ended(pid);
            if let Some(conn) = self.children.remove(&pid) {
                self.stats.outcomes[Outcome::from_wait_status(status) as usize] += 1;
                if libc::WIFSIGNALED(status) {
                    // It died before it could write its own line (a crash, the OOM killer, an
                    // operator's kill, or `end_connections`): say which connection it was.
                    let sig = libc::WTERMSIG(status);
                    let name = nix::sys::signal::Signal::try_from(sig)
                        .map_or_else(|_| format!("signal-{sig}"), |s| s.as_str().to_string());
                    log!(
                        "client={} listen={} outcome=reset error={name} (connection process killed)",
                        conn.peer,
                        conn.route.mapping.bind.port()
                    );
                }
                self.release(&conn);
            }
        }
    }

    /// SIGHUP: reopen the log file, re-read the configuration and apply it: new listeners opened,
    /// removed ones closed, unchanged ones kept (no connection refused meanwhile). All or nothing:
    /// a file with errors, or a listener that cannot be opened, leaves every mapping as it was.
    fn reload(&mut self) {
        if let Some(path) = &self.settings.log_file
            && let Err(e) = crate::daemon::redirect_stderr(path)
        {
            log!("cannot reopen log file {}: {e}", path.display());
        }
        let Some((path, base)) = &self.settings.config else {
            log!("SIGHUP: no configuration file to reload (started without --config)");
            return;
        };
        let path_text = path.display().to_string();
        let (mappings, targets) = match config::load(&path_text, base) {
            Ok(found) => found,
            Err(errors) => {
                for line in errors.lines() {
                    log!("reload rejected: {line}");
                }
                log!(
                    "reload rejected: keeping the {} current mapping(s)",
                    self.services.iter().flatten().count()
                );
                return;
            }
        };
        // Open what is new before changing anything.
        let mut kept_routes: Vec<(usize, Route)> = Vec::new();
        let mut opened: Vec<(Route, Socket)> = Vec::new();
        for (mapping, targets) in mappings.into_iter().zip(targets) {
            let route = Route { mapping, targets };
            if let Some(slot) = self.slot_of(route.mapping.bind) {
                kept_routes.push((slot, route));
                continue;
            }
            match listener::open(route.mapping.bind) {
                Ok(socket) => opened.push((route, socket)),
                Err(e) => {
                    let m = &route.mapping;
                    log!(
                        "reload rejected: {path_text}:{}: cannot listen on {}: {e}",
                        m.line,
                        m.bind
                    );
                    return;
                }
            }
        }
        let kept = kept_routes.len();
        let mut listed = vec![false; self.services.len()];
        for (slot, route) in kept_routes {
            // New connections take the new target and options; those in flight keep theirs.
            self.services[slot].as_mut().expect("slot_of found it").route = Rc::new(route);
            listed[slot] = true;
        }
        let mut removed = 0;
        for (entry, listed) in self.services.iter_mut().zip(listed) {
            if listed {
                continue;
            }
            if let Some(service) = entry.take() {
                let _ = self.epoll.delete(service.listener.as_fd());
                log!(
                    "reload: closed {} -> {}",
                    service.local,
                    service.route.mapping.target_label()
                );
                removed += 1;
            }
        }
        let added = opened.len();
        for (route, socket) in opened {
            let label = route.mapping.target_label();
            match Service::new(socket, route).and_then(|s| self.add_service(s)) {
                Ok(()) => log!(
                    "reload: listening on {} -> {label}",
                    self.services.last().unwrap().as_ref().unwrap().local
                ),
                Err(e) => log!("reload: cannot add a listener: {e}"),
            }
        }
        log!("reload done: {added} added, {removed} removed, {kept} kept");
    }

    fn slot_of(&self, bind: SocketAddr) -> Option<usize> {
        self.services
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.route.mapping.bind == bind))
    }

    fn log_stats(&self) {
        let o = &self.stats.outcomes;
        log!(
            "stats live={} waiting={} accepted={} refused={} closed={} reset={} idle_timeout={} connect_failed={} \
             fork_failed={} closed_before_data={} first_byte_timeouts={} bytes_c2s={} bytes_s2c={}",
            self.children.len(),
            self.waiting.len(),
            self.stats.accepted,
            self.stats.refused,
            o[Outcome::Closed as usize],
            o[Outcome::Reset as usize],
            o[Outcome::IdleTimeout as usize],
            o[Outcome::ConnectFailed as usize],
            o[Outcome::ForkFailed as usize],
            self.stats.closed_waiting,
            self.stats.first_byte_timeouts,
            self.totals.c2s.load(Ordering::Relaxed),
            self.totals.s2c.load(Ordering::Relaxed),
        );
    }
}
