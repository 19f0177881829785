//! Waiting clients of a routed listener (`when=`): each time more bytes arrive, peek at all of
//! them (`MSG_PEEK`: they stay queued for the connection process, so the backend gets every byte)
//! and let `route::decide` pick a route; a silent client gets the timeout route when it is due.
//! Main process.
//!
//! The socket stays in the epoll set, edge-triggered, until the decision: an event comes only for
//! new bytes or the client's FIN (`EPOLLRDHUP`), so a client that stalls half-way costs nothing
//! until its first-byte timeout. One buffer of `route::PEEK_LIMIT` bytes serves every client, and
//! the decision (which reads from the start) is made again only when the peek saw more bytes.

use super::{Conn, EventLoop};
use crate::conn::Outcome;
use crate::log;
use crate::route::{self, Decision};
use crate::sys;
use nix::errno::Errno;
use socket2::Socket;
use std::io::Read;
use std::os::fd::{AsFd, RawFd};

impl Conn {
    /// When the loop must look at this waiting client again: its first-byte timeout, or (while it
    /// has sent nothing, once a PROXY header it had to send was read) its listener's timeout
    /// route, whichever comes first.
    pub(super) fn deadline(&self) -> Option<u64> {
        let first_byte = self
            .routes
            .listener()
            .options
            .first_byte_timeout
            .map(|t| self.accepted_ms + t.as_millis() as u64);
        let timeout_route = self
            .routes
            .timeout
            .filter(|_| self.seen == 0 && !self.awaiting_header)
            .map(|(_, ms)| self.accepted_ms + ms);
        first_byte.into_iter().chain(timeout_route).min()
    }
}

impl EventLoop {
    /// New bytes (or the FIN, `eof`) from a waiting client of a routed listener.
    pub(super) fn on_routed_active(&mut self, fd: RawFd, eof: bool) {
        let Some((_, conn)) = self.waiting.get_mut(fd) else {
            return;
        };
        let n = match sys::peek_waiting(fd, &mut self.peek_buf) {
            Ok(n) => n,
            // Nothing queued after all: wait for the next event.
            Err(Errno::EAGAIN) => return,
            // Reset by the client: as a hang-up.
            Err(_) => return self.close_waiting(fd),
        };
        let eof = eof || n == 0;
        if n == conn.seen && !eof {
            return;
        }
        conn.seen = n;
        match route::decide(&conn.routes.conditions, &self.peek_buf[..n], eof) {
            Decision::NeedMore => {}
            Decision::Route(i) => self.take_route(fd, i),
            // Gone before it said anything: as any client that hangs up while waiting.
            Decision::NoMatch if n == 0 => self.close_waiting(fd),
            Decision::NoMatch => self.no_route(fd, n),
        }
    }

    /// A waiting client of a routed listener reached its deadline (taken out of the waiting set,
    /// still in the epoll set). Gives back what the caller must close as a first-byte timeout;
    /// takes the timeout route, or waits on, otherwise.
    pub(super) fn on_routed_deadline(
        &mut self,
        fd: RawFd,
        socket: Socket,
        conn: Conn,
        now: u64,
    ) -> Option<(Socket, Conn)> {
        let first_byte_due = conn
            .routes
            .listener()
            .options
            .first_byte_timeout
            .is_some_and(|t| conn.accepted_ms + t.as_millis() as u64 <= now);
        if !conn.routes.routed || first_byte_due {
            return Some((socket, conn));
        }
        let timeout_route = conn
            .routes
            .timeout
            .filter(|&(_, ms)| conn.seen == 0 && conn.accepted_ms + ms <= now);
        let deadline = conn.deadline();
        self.waiting.insert(fd, (socket, conn), deadline);
        if let Some((i, _)) = timeout_route {
            match sys::peek_waiting(fd, &mut self.peek_buf[..1]) {
                // Silent for the whole time: a server-first protocol.
                Err(Errno::EAGAIN) => self.take_route(fd, i),
                // Bytes (or the FIN) came in just now: they decide, as on an event.
                _ => self.on_routed_active(fd, false),
            }
        }
        None
    }

    /// Hands a waiting client to route `i` of the routes it was accepted with.
    fn take_route(&mut self, fd: RawFd, i: usize) {
        let Some((socket, mut conn)) = self.waiting.remove(fd) else {
            return;
        };
        let _ = self.epoll.delete(socket.as_fd());
        conn.chosen = i;
        if let Some(name) = conn.routes.name(i) {
            self.stats.count_route(conn.routes.listener().bind.port(), &name);
        }
        self.dispatch(socket, conn);
    }

    /// No route can match what the client sent (`n` bytes peeked): close it, logged and counted
    /// as `no-route`. What it sent is read out first, so that the close is a FIN rather than the
    /// reset a socket closed with unread bytes sends.
    fn no_route(&mut self, fd: RawFd, n: usize) {
        let Some((socket, conn)) = self.waiting.remove(fd) else {
            return;
        };
        let _ = self.epoll.delete(socket.as_fd());
        let sni = route::sni(&self.peek_buf[..n]);
        let _ = (&socket).read(&mut self.peek_buf);
        self.stats.outcomes.add(Outcome::NoRoute);
        log!(
            "client={} listen={} bytes={n}{} ms={} outcome={}",
            conn.peer,
            conn.routes.listener().bind.port(),
            sni.map_or_else(String::new, |s| format!(" sni={s}")),
            sys::monotonic_ms().saturating_sub(conn.accepted_ms),
            Outcome::NoRoute.name()
        );
        self.release(&conn);
        // Dropping the socket closes it.
    }
}
