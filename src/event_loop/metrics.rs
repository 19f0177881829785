//! The loop's side of `--metrics`: the endpoint's sockets in the epoll set (the listener
//! level-triggered, each scrape client for what it waits for next), and what the loop records
//! through each listener's handle. Main process; see `metrics` for the families.

use super::token::Token;
use super::{Conn, EventLoop, Routes};
use crate::backends::report::Reported;
use crate::conn::Outcome;
use crate::event_loop::admission::Refusal;
use crate::log;
use crate::metrics::{Interest, ListenerMetrics, Metrics, MetricsServer, RefuseReason};
use crate::sys;
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// The registry and the endpoint, when `--metrics` was given.
pub(crate) struct Observer {
    pub(super) metrics: Metrics,
    server: MetricsServer,
    /// Descriptors the server accepted or closed in one call, reused from call to call.
    fds: Vec<RawFd>,
    /// `log_sink::dropped()` at the last scrape.
    dropped_seen: u64,
}

impl Observer {
    /// Puts the endpoint's listener in the epoll set: level-triggered, so a backlog the server
    /// left (at its client cap, or out of descriptors) is offered again on the next wait.
    pub(super) fn new(server: MetricsServer, epoll: &Epoll) -> io::Result<Observer> {
        epoll.add(
            server.listener_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, Token::MetricsListener.encode()),
        )?;
        Ok(Observer {
            metrics: Metrics::new(),
            server,
            fds: Vec::new(),
            dropped_seen: 0,
        })
    }

    /// The series of a listener on `local`, as the log names it.
    pub(super) fn listener(&self, local: SocketAddr) -> ListenerMetrics {
        self.metrics.listener(&local.to_string())
    }

    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.server.next_deadline()
    }
}

impl From<Refusal> for RefuseReason {
    fn from(r: Refusal) -> RefuseReason {
        match r {
            Refusal::AccessDenied => RefuseReason::AccessDenied,
            Refusal::MaxPerSource => RefuseReason::MaxPerSource,
        }
    }
}

impl EventLoop {
    /// Scrape clients are waiting to be accepted.
    pub(super) fn on_metrics_listener(&mut self) {
        let Some(o) = self.observer.as_mut() else {
            return;
        };
        o.fds.clear();
        o.server.on_listener_ready(sys::monotonic_ms(), &mut o.fds);
        for &fd in &o.fds {
            let added = match o.server.client_fd(fd) {
                Some(client) => self.epoll.add(
                    client,
                    EpollEvent::new(EpollFlags::EPOLLIN, Token::MetricsClient(fd).encode()),
                ),
                None => continue,
            };
            if let Err(e) = added {
                log!("metrics: cannot watch a scrape client: {e}");
                o.server.close_client(fd);
            }
        }
    }

    /// A scrape client can be read from or written to: the gauges are brought up to date, then
    /// the server reads the request and writes what fits of the response.
    pub(super) fn on_metrics_client(&mut self, fd: RawFd) {
        self.update_gauges();
        let Some(o) = self.observer.as_mut() else {
            return;
        };
        match o.server.on_client_ready(fd, &o.metrics, sys::monotonic_ms()) {
            Interest::Read | Interest::Closed => {} // a closed descriptor left the epoll set with it
            Interest::Write => {
                if let Some(client) = o.server.client_fd(fd) {
                    let event = EpollEvent::new(EpollFlags::EPOLLOUT, Token::MetricsClient(fd).encode());
                    if self.epoll.modify(client, &mut { event }).is_err() {
                        o.server.close_client(fd);
                    }
                }
            }
        }
    }

    /// Closes scrape clients past their deadline.
    pub(super) fn expire_metrics_clients(&mut self, now: u64) {
        if let Some(o) = self.observer.as_mut() {
            o.fds.clear();
            o.server.expire(now, &mut o.fds);
        }
    }

    /// `portfwd_live_connections` and `portfwd_waiting_sockets` of each listener, as of now.
    fn update_gauges(&mut self) {
        let Some(o) = &mut self.observer else {
            return;
        };
        // Lines dropped by any process since the last scrape (a counter in a shared page).
        let dropped = crate::log_sink::dropped();
        o.metrics.log_dropped(dropped.saturating_sub(o.dropped_seen));
        o.dropped_seen = dropped;
        let mut waiting = vec![0usize; self.services.len()];
        for (_, conn) in self.waiting.iter() {
            waiting[conn.slot] += 1;
        }
        for (service, waiting) in self.services.iter().zip(waiting) {
            if let Some(s) = service
                && let Some(m) = &s.metrics
            {
                m.set_live(s.live.count());
                m.set_waiting(waiting);
            }
        }
    }

    /// A connection ended (its process was reaped, or it never got one): its listener's series,
    /// under its route's name on a routed listener (`no-route` has none).
    pub(super) fn record_end(&self, conn: &Conn, outcome: Outcome, c2s: u64, s2c: u64) {
        if let Some(m) = self.listener_metrics(conn.slot) {
            let ms = sys::monotonic_ms().saturating_sub(conn.accepted_ms);
            match conn.routes.name(conn.chosen) {
                Some(name) if outcome != Outcome::NoRoute => m.route(&name).connection_ended(outcome, c2s, s2c, ms),
                _ => m.connection_ended(outcome, c2s, s2c, ms),
            }
        }
    }

    /// A connection process reported its backends: each backend's `portfwd_backend_up`, and a
    /// failure for each one it could not connect to.
    pub(super) fn record_backends(&self, routes: &Routes, chosen: usize, reported: Reported) {
        let bind = routes.listener().bind;
        let Some(m) = self
            .services
            .iter()
            .flatten()
            .find(|s| s.routes.listener().bind == bind)
        else {
            return;
        };
        let Some(m) = &m.metrics else {
            return;
        };
        let route = match routes.name(chosen) {
            Some(name) => m.route(&name),
            None => m.default_route().clone(),
        };
        let now = sys::monotonic_ms();
        for (i, (label, up)) in routes.list[chosen].backends.states(now).enumerate() {
            let backend = route.backend(label, up);
            if reported.failed & (1 << i) != 0 {
                backend.failure();
            }
        }
    }

    /// The main process could not fork a connection's process.
    pub(super) fn record_fork_failure(&self, conn: &Conn) {
        if let Some(o) = &self.observer {
            o.metrics.fork_failed();
        }
        self.record_end(conn, Outcome::ForkFailed, 0, 0);
    }

    /// A listener's series, if metrics are on and the listener is still open.
    pub(super) fn listener_metrics(&self, slot: usize) -> Option<&ListenerMetrics> {
        self.services.get(slot)?.as_ref()?.metrics.as_ref()
    }
}
