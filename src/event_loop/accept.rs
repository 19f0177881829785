//! A listener's event: accepting a burst, and what becomes of each accepted client (refused,
//! handed off at once, or put in the epoll set to wait for its first byte); the seed's listener
//! branch (docs/design.md, "The event loop, against the seed"). Main process.

use super::launcher::BACKOFF_MS;
use super::token::Token;
use super::{Conn, EventLoop, Routes, Service};
use crate::access;
use crate::handoff;
use crate::log;
use crate::metrics::RefuseReason;
use crate::options::Dispatch;
use nix::sys::epoll::{EpollEvent, EpollFlags};
use socket2::Socket;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::rc::Rc;

/// Refused clients logged one by one each second at most; the rest are counted in one line.
pub(super) const REFUSALS_LOGGED_PER_SEC: u32 = 20;

impl EventLoop {
    pub(super) fn add_service(&mut self, mut service: Service) -> io::Result<()> {
        let slot = self.services.len();
        service.metrics = self.observer.as_ref().map(|o| o.listener(service.local));
        let flags = EpollFlags::EPOLLIN
            | EpollFlags::EPOLLERR
            | EpollFlags::EPOLLHUP
            | EpollFlags::EPOLLET
            | EpollFlags::EPOLLEXCLUSIVE;
        self.epoll.add(
            service.listener.as_fd(),
            EpollEvent::new(flags, Token::Listener(slot).encode()),
        )?;
        self.services.push(Some(service));
        // Clients may already be queued (a reload, or a listener bound before daemonizing).
        self.accept_burst(slot);
        Ok(())
    }

    /// An event on a listener: accept until `EAGAIN`, in parallel when there is a burst.
    pub(super) fn on_listener(&mut self, slot: usize, flags: EpollFlags) {
        let Some(service) = self.services.get(slot).and_then(Option::as_ref) else {
            return;
        };
        if flags.intersects(EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP) {
            let err = service.listener.take_error().ok().flatten();
            log!(
                "event=listener-error listen={} flags={} error={}",
                service.local,
                log::Quoted(format!("{flags:?}")),
                log::Quoted(err.map_or_else(|| "-".into(), |e| e.to_string()))
            );
        }
        self.accept_burst(slot);
    }

    pub(super) fn accept_burst(&mut self, slot: usize) {
        let now = crate::sys::monotonic_ms();
        let Some(service) = self.services.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        // During a fork back-off accepting goes on: clients that need a process now are reset at
        // once (`dispatch`), so the backlog drains instead of waiting for the pause to end.
        if self.draining.is_some() {
            return;
        }
        // At a cap, leave clients in the kernel's backlog: they are served as slots free up.
        let cap = service.routes.listener().options.max_connections;
        let budget = self.admission.budget(&service.live, cap);
        service.retry_at = None;
        service.unfinished = false;
        if budget == 0 {
            service.unfinished = true;
            if !service.capped {
                service.capped = true;
                let (live, total, max) = (service.live.count(), self.admission.total(), self.admission.max_total());
                log!(
                    "event=at-max-connections listen={} live={live} max_connections={cap} total={total} \
                     max_total={max} note=\"new clients wait in the backlog\"",
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
                        "event=accept-paused listen={} error={} retry_ms={BACKOFF_MS}",
                        service.local,
                        log::Quoted(e)
                    );
                }
            }
            Some(e) => {
                service.retry_at = Some(now + BACKOFF_MS);
                log!(
                    "event=accept-failed listen={} error={} retry_ms={BACKOFF_MS}",
                    service.local,
                    log::Quoted(e)
                );
            }
            None if self.starved && !burst.accepted.is_empty() => {
                self.starved = false;
                log!("event=accept-resumed listen={}", service.local);
            }
            None => {}
        }
        let routes = Rc::clone(&service.routes);
        for (socket, peer) in burst.accepted {
            self.admit(slot, &routes, socket, peer, now);
        }
    }

    /// Applies the access rules and the per-source limit to a newly accepted client, then hands it
    /// off at once or puts it in the epoll set to wait for its first byte.
    fn admit(&mut self, slot: usize, routes: &Rc<Routes>, socket: Socket, peer: SocketAddr, now: u64) {
        self.tally(slot, |s| s.accepted += 1);
        let options = &routes.listener().options;
        let service = self.services[slot].as_ref().expect("accepting service exists");
        // Behind a load balancer the sender is checked against proxy_from only: access rules and
        // the per-source limit apply to the client its header names (`proxy_accept`).
        let verdict = if options.accept_proxy {
            let sender_ok = access::permits(&options.proxy_from, &[], peer.ip());
            sender_ok
                .then_some(())
                .ok_or((RefuseReason::AccessDenied, "proxy-not-allowed"))
        } else {
            self.admission
                .check(&service.live, options, peer.ip())
                .map_err(|r| (r.into(), r.name()))
        };
        if let Err((metric, reason)) = verdict {
            if let Some(m) = &service.metrics {
                m.refused(metric);
            }
            let port = service.local.port();
            self.tally(slot, |s| s.refused += 1);
            handoff::reset(&socket);
            self.log_left_out_refusals(now);
            if self.refusals_log.admit(now) {
                log!("client={peer} listen={port} outcome=refused reason={reason}");
            }
            return;
        }
        let service = self.services[slot].as_mut().expect("accepting service exists");
        self.admission.enter(&mut service.live, peer.ip());
        let conn = Conn {
            slot,
            routes: Rc::clone(routes),
            chosen: 0,
            seen: 0,
            peer,
            accepted_ms: now,
            bytes: None,
            awaiting_header: options.accept_proxy,
            via: None,
            destination: None,
        };
        match options.dispatch {
            Dispatch::Accept if !conn.awaiting_header => self.dispatch(socket, conn),
            _ => self.wait_for_data(socket, conn),
        }
    }

    /// Puts an accepted socket in the epoll set until its first byte (or its first-byte timeout;
    /// on a routed listener, until its bytes select a route, or its timeout route is due).
    /// Edge-triggered: an event comes for new bytes (or the FIN, flagged `EPOLLRDHUP`), so a
    /// client that sent part of what routing needs and stopped costs nothing while it waits.
    pub(super) fn wait_for_data(&mut self, socket: Socket, conn: Conn) {
        let fd = socket.as_raw_fd();
        let mut flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLET;
        if conn.routes.routed {
            flags |= EpollFlags::EPOLLRDHUP;
        }
        if let Err(e) = self
            .epoll
            .add(socket.as_fd(), EpollEvent::new(flags, Token::Waiting(fd).encode()))
        {
            log!(
                "client={} listen={} event=wait-failed error={}",
                conn.peer,
                conn.routes.listener().bind.port(),
                log::Quoted(e)
            );
            self.release(&conn);
            return;
        }
        let deadline = conn.deadline();
        self.waiting.insert(fd, (socket, conn), deadline);
    }

    /// Once a second with more refusals than were logged is over: how many were not.
    pub(super) fn log_left_out_refusals(&mut self, now: u64) {
        if let Some(n) = self.refusals_log.take_left_out(now) {
            log!(
                "event=refusals-not-logged outcome=refused count={n} max_per_second={REFUSALS_LOGGED_PER_SEC} \
                 note=\"refusals of the second before, past those logged one by one\""
            );
        }
    }
}
