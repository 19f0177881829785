//! A listener's event: accepting a burst, and what becomes of each accepted client (refused,
//! handed off at once, or put in the epoll set to wait for its first byte); the seed's listener
//! branch (docs/design.md, "The event loop, against the seed"). Main process.

use super::launcher::BACKOFF_MS;
use super::token::Token;
use super::{Conn, EventLoop, Route, Service};
use crate::access;
use crate::handoff;
use crate::log;
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
    pub(super) fn add_service(&mut self, service: Service) -> io::Result<()> {
        let slot = self.services.len();
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
                "listener {} reported {flags:?}: {}",
                service.local,
                err.map_or_else(|| "-".into(), |e| e.to_string())
            );
        }
        self.accept_burst(slot);
    }

    pub(super) fn accept_burst(&mut self, slot: usize) {
        let now = crate::sys::monotonic_ms();
        let Some(service) = self.services.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let backoff = &self.launcher.backoff;
        if backoff.paused(now) || self.draining.is_some() {
            service.unfinished = true;
            service.retry_at = Some(backoff.until().max(now + 1));
            return;
        }
        // At a cap, leave clients in the kernel's backlog: they are served as slots free up.
        let cap = service.route.mapping.options.max_connections;
        let budget = self.admission.budget(&service.live, cap);
        service.retry_at = None;
        service.unfinished = false;
        if budget == 0 {
            service.unfinished = true;
            if !service.capped {
                service.capped = true;
                let (live, total, max) = (service.live.count(), self.admission.total(), self.admission.max_total());
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
        let service = self.services[slot].as_mut().expect("accepting service exists");
        // Behind a load balancer the sender is checked against proxy_from only: access rules and
        // the per-source limit apply to the client its header names (`proxy_accept`).
        let verdict = if options.accept_proxy {
            let sender_ok = access::permits(&options.proxy_from, &[], peer.ip());
            sender_ok.then_some(()).ok_or("proxy-not-allowed")
        } else {
            self.admission
                .check(&service.live, options, peer.ip())
                .map_err(|r| r.name())
        };
        if let Err(reason) = verdict {
            self.stats.refused += 1;
            handoff::reset(&socket);
            let port = service.local.port();
            self.log_left_out_refusals(now);
            if self.refusals_log.admit(now) {
                log!("client={peer} listen={port} outcome=refused reason={reason}");
            }
            return;
        }
        self.admission.enter(&mut service.live, peer.ip());
        let conn = Conn {
            slot,
            route: Rc::clone(route),
            peer,
            accepted_ms: now,
            awaiting_header: options.accept_proxy,
            via: None,
            destination: None,
        };
        match options.dispatch {
            Dispatch::Accept if !conn.awaiting_header => self.dispatch(socket, conn),
            _ => self.wait_for_data(socket, conn),
        }
    }

    /// Puts an accepted socket in the epoll set until its first byte (or its first-byte timeout).
    pub(super) fn wait_for_data(&mut self, socket: Socket, conn: Conn) {
        let fd = socket.as_raw_fd();
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLET;
        if let Err(e) = self
            .epoll
            .add(socket.as_fd(), EpollEvent::new(flags, Token::Waiting(fd).encode()))
        {
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
        self.waiting.insert(fd, (socket, conn), deadline);
    }

    /// Once a second with more refusals than were logged is over: how many were not.
    pub(super) fn log_left_out_refusals(&mut self, now: u64) {
        if let Some(n) = self.refusals_log.take_left_out(now) {
            log!(
                "outcome=refused for {n} more client(s) in the second before, not logged one by one \
                 (at most {REFUSALS_LOGGED_PER_SEC} a second)"
            );
        }
    }
}
