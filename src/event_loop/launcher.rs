//! Launching connection processes: the launch pad, the hand-off slots, the memory the children do
//! not get, and the back-off after a fork fails. Main process; what runs after the fork is `conn`.

use super::{Conn, Routes};
use crate::backends::report::{Reported, Reports};
use crate::conn::Outcome;
use crate::handoff::fork_fds::HandoffSlots;
use crate::handoff::fork_memory::{Exclusions, LaunchPad};
use crate::handoff::plan::{Plan, Totals};
use crate::handoff::{self, hand_off};
use crate::proxy_protocol::Header;
use crate::sys::{self, SharedPage};
use nix::errno::Errno;
use socket2::Socket;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::rc::Rc;

/// How long forking (and accepting) pauses after a failed fork: processes or memory ran out, so
/// let the system breathe before the next one.
pub(crate) const BACKOFF_MS: u64 = 100;

pub(crate) struct Launcher {
    /// Process-wide byte counters the connection processes add to.
    totals: SharedPage<Totals>,
    /// Where each connection process starts: its plan and its stack.
    pad: LaunchPad<Plan>,
    /// The descriptor numbers client sockets are handed over in.
    slots: HandoffSlots,
    /// The heap and stack the connection processes do not get.
    exclusions: Exclusions,
    /// Sockets that became active while forking was paused, and when the pause ends.
    pub(crate) backoff: Backoff<(Socket, Conn)>,
    /// The words connection processes report their backends in.
    reports: Reports,
    /// Words handed out and not read yet: the word, the connection process that writes it (a
    /// word read is free again at once, so its index alone may already name another
    /// connection's), and the route whose backends it reports on (its routes, and which one).
    unread: Vec<(u32, libc::pid_t, Rc<Routes>, usize)>,
}

impl Launcher {
    /// Call on the main thread, before the first accept (so that the slots' numbers stay low).
    /// From here on the main process forks only through [`Launcher::launch`]. `max_connections`:
    /// the process's cap, the most connection processes that may report at once.
    pub(crate) fn new(max_connections: usize) -> io::Result<Launcher> {
        Ok(Launcher {
            totals: SharedPage::map()?,
            pad: LaunchPad::new()?,
            slots: HandoffSlots::reserve()?,
            exclusions: Exclusions::start(),
            backoff: Backoff::new(),
            reports: Reports::new(max_connections)?,
            unread: Vec::new(),
        })
    }

    /// The reports written since last time (the eventfd said so), each with its route.
    pub(crate) fn take_reports(&mut self) -> Vec<(Rc<Routes>, usize, Reported)> {
        let mut out = Vec::new();
        let reports = &mut self.reports;
        self.unread
            .retain(|(index, _, routes, chosen)| match reports.read(*index) {
                Some(reported) => {
                    out.push((Rc::clone(routes), *chosen, reported));
                    reports.release(*index);
                    false
                }
                None => true,
            });
        out
    }

    /// Connection process `pid` was reaped: its report if it wrote one that was not read yet;
    /// its word is free again either way.
    pub(crate) fn report_ended(&mut self, pid: libc::pid_t) -> Option<(Rc<Routes>, usize, Reported)> {
        let at = self.unread.iter().position(|(_, p, _, _)| *p == pid)?;
        let (index, _, routes, chosen) = self.unread.swap_remove(at);
        let reported = self.reports.read(index);
        self.reports.release(index);
        reported.map(|r| (routes, chosen, r))
    }

    pub(crate) fn totals(&self) -> &Totals {
        &self.totals
    }

    /// The eventfd that says connection processes left the shared descriptor table.
    pub(crate) fn notify_fd(&self) -> BorrowedFd<'_> {
        self.slots.notify_fd()
    }

    /// Frees the slots of the connection processes that took their client.
    pub(crate) fn reclaim(&mut self) {
        self.slots.reclaim();
    }

    /// A child was reaped: frees its slot (resetting a client it never took).
    pub(crate) fn child_ended(&mut self, pid: libc::pid_t) {
        self.slots.child_ended(pid);
    }

    /// Forks the connection process for `socket` (blocking now) and returns its pid. On failure
    /// the client is reset, the failure logged, and forking pauses for [`BACKOFF_MS`].
    pub(crate) fn launch(&mut self, socket: &Socket, conn: &Conn) -> Result<libc::pid_t, Errno> {
        let route = conn.route();
        let options = &route.mapping.options;
        let name = conn.routes.name(conn.chosen);
        let now = sys::monotonic_ms();
        let order = route.backends.order(options, conn.peer.ip(), now);
        // The header names the client and the address it connected to: as a PROXY header that
        // came in carried them, or this socket's own.
        let proxy_header = options.proxy_protocol.map(|version| {
            let local = || socket.local_addr().ok().and_then(|a| a.as_socket());
            match conn.destination.or_else(local) {
                Some(destination) => Header::new(version, conn.peer, destination),
                None => Header::unknown(version),
            }
        });
        let issued = self.reports.issue();
        let plan = Plan {
            client: socket.as_raw_fd(),
            ticket: None,
            targets: route.backends.attempts(&order),
            connect_timeout_ms: options.connect_timeout.as_millis().max(1) as u64,
            line: Plan::describe(&conn.peer, route.mapping.bind.port(), conn.via, name.as_deref()),
            accepted_ms: conn.accepted_ms,
            idle_timeout_ms: options.idle_timeout.map_or(0, |t| t.as_millis().max(1) as u64),
            keepalive_secs: options.keepalive.map_or(0, |t| t.as_secs().max(1) as u32),
            totals: self.totals,
            report: issued.map(|(_, report)| report),
            proxy_header,
            source: options.source,
        };
        self.exclusions.refresh();
        match hand_off(&mut self.pad, &mut self.slots, socket, plan) {
            Ok(pid) => {
                if let Some((index, _)) = issued {
                    self.unread.push((index, pid, Rc::clone(&conn.routes), conn.chosen));
                }
                Ok(pid)
            }
            Err(e) => {
                if let Some((index, _)) = issued {
                    self.reports.release(index);
                }
                handoff::reset(socket);
                plan.log_unconnected(Outcome::ForkFailed, e);
                self.backoff.pause(now);
                Err(e)
            }
        }
    }
}

/// A pause after a failure, and what waits for its end.
pub(crate) struct Backoff<T> {
    until: u64,
    deferred: Vec<T>,
}

impl<T> Backoff<T> {
    pub(crate) fn new() -> Self {
        Backoff {
            until: 0,
            deferred: Vec::new(),
        }
    }

    /// Pauses for [`BACKOFF_MS`] from `now`.
    pub(crate) fn pause(&mut self, now: u64) {
        self.until = now + BACKOFF_MS;
    }

    pub(crate) fn paused(&self, now: u64) -> bool {
        now < self.until
    }

    /// When the pause ends (in the past when there is none).
    pub(crate) fn until(&self) -> u64 {
        self.until
    }

    /// Keeps `item` until the pause is over.
    pub(crate) fn defer(&mut self, item: T) {
        self.deferred.push(item);
    }

    /// When the loop must wake for deferred items, if there are any.
    pub(crate) fn due_at(&self) -> Option<u64> {
        (!self.deferred.is_empty()).then_some(self.until)
    }

    /// The deferred items, once the pause is over.
    pub(crate) fn take_due(&mut self, now: u64) -> Vec<T> {
        if now >= self.until && !self.deferred.is_empty() {
            std::mem::take(&mut self.deferred)
        } else {
            Vec::new()
        }
    }

    pub(crate) fn clear(&mut self) {
        self.deferred.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferred_items_wait_for_the_end_of_the_pause() {
        let mut backoff = Backoff::new();
        assert!(!backoff.paused(0));
        assert_eq!(backoff.due_at(), None);
        backoff.pause(1_000);
        assert!(backoff.paused(1_000 + BACKOFF_MS - 1));
        assert!(!backoff.paused(1_000 + BACKOFF_MS));
        backoff.defer('a');
        backoff.defer('b');
        assert_eq!(backoff.due_at(), Some(1_000 + BACKOFF_MS));
        assert!(backoff.take_due(1_050).is_empty());
        assert_eq!(backoff.take_due(1_000 + BACKOFF_MS), ['a', 'b']);
        assert_eq!(backoff.due_at(), None);
        backoff.defer('c');
        backoff.clear();
        assert!(backoff.take_due(u64::MAX).is_empty());
    }
}
