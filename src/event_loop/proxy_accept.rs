//! `accept_proxy=on`: the PROXY protocol header a load balancer puts first on each connection,
//! read by the main process while the socket waits in the epoll set (in both dispatch modes), so
//! that the address it carries is the client for everything decided before the fork: access
//! rules, the per-source limit, the balancer's source hash, the log line and a header sent on.
//! On a routed listener it is read before the route is chosen: the header is taken off the
//! socket, so the route matchers peek at the client's own bytes after it. Main process.
//!
//! The header is peeked (`MSG_PEEK`, never blocking) each time bytes arrive, until [`parse`]
//! says it is whole; then exactly its length is taken off the socket, and the client's own bytes
//! stay queued for the connection process. Everything else closes the connection with a log line:
//! a sender outside `proxy_from`, no header, a malformed, truncated or oversized one, a v2 LOCAL
//! command, a header without a TCP client address, or none within the first-byte timeout.

use super::admission::Live;
use super::{Conn, EventLoop};
use crate::handoff;
use crate::log::Quoted;
use crate::options::Dispatch;
use crate::proxy_protocol::{Command, DEFAULT_MAX_HEADER_LEN, Invalid, Parse, parse};
use crate::sys;
use socket2::Socket;
use std::net::SocketAddr;
use std::os::fd::{AsFd, RawFd};
use std::rc::Rc;

/// The buffer headers are peeked into: the longest header accepted, and one byte more.
pub(super) fn buffer() -> Vec<u8> {
    vec![0; DEFAULT_MAX_HEADER_LEN + 1]
}

/// Why a connection was closed before its header was read: the word after `problem=`, and the
/// codec's reason for a malformed one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Problem {
    /// The connection ended, or its first bytes are not a header.
    Missing,
    /// The connection ended within a header.
    Truncated,
    Malformed(Invalid),
    Oversized,
    /// A v2 LOCAL command: no client to speak for.
    Local,
    /// v1 UNKNOWN, or v2 with no TCP addresses.
    NoAddress,
    /// Nothing whole within the first-byte timeout.
    Timeout,
}

impl Problem {
    fn word(self) -> &'static str {
        match self {
            Problem::Missing => "missing",
            Problem::Truncated => "truncated",
            Problem::Malformed(_) => "malformed",
            Problem::Oversized => "oversized",
            Problem::Local => "local-command",
            Problem::NoAddress => "no-address",
            Problem::Timeout => "timeout",
        }
    }
}

/// What the bytes queued on a socket say.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Read {
    /// Not whole yet: wait for more.
    Wait,
    /// Read and taken off the socket; `more`: the client's own bytes are already queued.
    Done {
        source: SocketAddr,
        destination: SocketAddr,
        more: bool,
    },
    Refuse(Problem),
}

/// Peeks at what `fd` holds and, once it is a whole header, takes exactly the header off it.
pub(super) fn read(fd: RawFd, buf: &mut [u8]) -> Read {
    let n = match sys::peek_waiting(fd, buf) {
        Ok(0) => return Read::Refuse(Problem::Missing),
        Ok(n) => n,
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => return Read::Wait,
        Err(_) => return Read::Refuse(Problem::Truncated),
    };
    let (len, command, source, destination) = match parse(&buf[..n]) {
        Parse::Incomplete if sys::tcp_state(fd) == Some(sys::TCP_CLOSE_WAIT) => {
            return Read::Refuse(Problem::Truncated);
        }
        Parse::Incomplete => return Read::Wait,
        Parse::Invalid(Invalid::Signature) => return Read::Refuse(Problem::Missing),
        Parse::Invalid(Invalid::Oversized) => return Read::Refuse(Problem::Oversized),
        Parse::Invalid(why) => return Read::Refuse(Problem::Malformed(why)),
        Parse::Done {
            header_len,
            command,
            source,
            destination,
            ..
        } => (header_len, command, source, destination),
    };
    let (Command::Proxy, Some(source), Some(destination)) = (command, source, destination) else {
        return Read::Refuse(match command {
            Command::Local => Problem::Local,
            Command::Proxy => Problem::NoAddress,
        });
    };
    // The header is queued whole: one non-blocking recv of its length takes exactly it.
    let mut taken = 0;
    while taken < len {
        match sys::recv_queued(fd, &mut buf[taken..len]) {
            Ok(0) | Err(_) => return Read::Refuse(Problem::Truncated),
            Ok(k) => taken += k,
        }
    }
    Read::Done {
        source,
        destination,
        more: n > len,
    }
}

impl EventLoop {
    /// Bytes arrived on a socket still waiting for its PROXY header.
    pub(super) fn on_header_bytes(&mut self, fd: RawFd) {
        let result = read(fd, &mut self.header_buf);
        if result == Read::Wait {
            return;
        }
        let Some((socket, mut conn)) = self.waiting.remove(fd) else {
            return;
        };
        let _ = self.epoll.delete(socket.as_fd());
        let Read::Done {
            source,
            destination,
            more,
        } = result
        else {
            let problem = match result {
                Read::Refuse(problem) => problem,
                _ => Problem::Missing,
            };
            self.refuse_header(&socket, &conn, problem);
            self.release(&conn);
            return;
        };
        // From here on the carried address is the client: counted under it, checked by the rules.
        let proxy = conn.peer;
        conn.via = Some(proxy);
        conn.peer = source;
        conn.destination = Some(destination);
        conn.awaiting_header = false;
        let routes = Rc::clone(&conn.routes);
        let options = &routes.listener().options;
        let verdict = match self.services.get_mut(conn.slot).and_then(Option::as_mut) {
            Some(service) => {
                self.admission.leave(Some(&mut service.live), proxy.ip());
                let verdict = self.admission.check(&service.live, options, source.ip());
                if verdict.is_ok() {
                    self.admission.enter(&mut service.live, source.ip());
                }
                verdict
            }
            // Its listener was closed by a reload: the rules still apply; only the total counts.
            None => {
                let verdict = self.admission.check(&Live::default(), options, source.ip());
                if verdict.is_err() {
                    self.admission.leave(None, proxy.ip());
                }
                verdict
            }
        };
        if let Err(refusal) = verdict {
            self.tally(conn.slot, |s| s.refused += 1);
            handoff::reset(&socket);
            self.log_refusal(&conn, refusal.name(), "");
            return;
        }
        if routes.routed {
            // The route is chosen on what the client sends after the header (taken off the
            // socket, so the matchers see the client's own first bytes), as for any client.
            self.wait_for_data(socket, conn);
            if more {
                // Already queued: no new edge will say so.
                self.on_routed_active(fd, false);
            }
        } else if more || options.dispatch == Dispatch::Accept {
            self.dispatch(socket, conn);
        } else {
            self.wait_for_data(socket, conn);
        }
    }

    /// Closes a connection whose header was refused (`problem=`), with its log line.
    fn refuse_header(&mut self, socket: &Socket, conn: &Conn, problem: Problem) {
        self.tally(conn.slot, |s| s.refused += 1);
        handoff::reset(socket);
        let detail = match problem {
            Problem::Malformed(why) => format!(" detail={}", Quoted(why)),
            _ => String::new(),
        };
        self.log_refusal(conn, "proxy-header", &format!(" problem={}{detail}", problem.word()));
    }

    /// A waiting socket's first-byte timeout came while its header was still incomplete.
    pub(super) fn header_timed_out(&mut self, socket: &Socket, conn: &Conn) {
        self.refuse_header(socket, conn, Problem::Timeout);
    }

    /// `client=... listen=... outcome=refused reason=...`, throttled like every refusal.
    pub(super) fn log_refusal(&mut self, conn: &Conn, reason: &str, rest: &str) {
        let now = sys::monotonic_ms();
        self.log_left_out_refusals(now);
        if self.refusals_log.admit(now) {
            let via = conn.via.map_or(String::new(), |v| format!(" via={v}"));
            crate::log!(
                "client={} listen={}{via} outcome=refused reason={reason}{rest}",
                conn.peer,
                conn.routes.listener().bind.port()
            );
        }
    }
}
