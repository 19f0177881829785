//! Launching connection processes: the launch pad, the hand-off slots, the memory the children do
//! not get, and the back-off after a fork fails. Main process; what runs after the fork is `conn`.
//!
//! During a back-off, clients that need a process are reset at once, without trying to fork, and
//! counted and logged as fork-failed (with the error of the fork that failed): a queue of clients
//! at the process limit learns it in one go instead of one or two per back-off.

use super::{Conn, Routes};
use crate::backends::report::{Report, Reported, Reports};
use crate::conn::Outcome;
use crate::handoff::bytes::{ByteRecord, ByteRecords, RecordId};
use crate::handoff::fork_fds::HandoffSlots;
use crate::handoff::fork_memory::{Exclusions, LaunchPad};
use crate::handoff::plan::{Plan, Totals};
use crate::handoff::{self, hand_off};
use crate::log;
use crate::log::Throttle;
use crate::proxy_protocol::Header;
use crate::sys::{self, SharedPage};
use nix::errno::Errno;
use socket2::Socket;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::rc::Rc;

/// How long forking pauses after a failed fork: processes or memory ran out, so let the system
/// breathe before the next one.
pub(crate) const BACKOFF_MS: u64 = 100;

/// Clients reset during a back-off logged one by one each second at most; the rest are counted.
const BACKOFF_RESETS_LOGGED_PER_SEC: u32 = 20;

pub(crate) struct Launcher {
    /// Process-wide byte counters the connection processes add to.
    totals: SharedPage<Totals>,
    /// Each live connection's own counts, read at reap.
    records: ByteRecords,
    /// Where each connection process starts: its plan and its stack.
    pad: LaunchPad<Plan>,
    /// The descriptor numbers client sockets are handed over in.
    slots: HandoffSlots,
    /// The heap and stack the connection processes do not get.
    exclusions: Exclusions,
    /// The pause after a failed fork.
    pub(crate) backoff: Backoff,
    /// Log lines of clients reset during a back-off.
    backoff_log: Throttle,
    /// The words connection processes report their backends in.
    reports: Reports,
    /// Words handed out and not read yet: the word, the connection process that writes it (a
    /// word read is free again at once, so its index alone may already name another
    /// connection's), and the route whose backends it reports on (its routes, and which one).
    unread: Vec<(u32, libc::pid_t, Rc<Routes>, usize)>,
}

impl Launcher {
    /// Call on the main thread, before the first accept, with the slots reserved before any
    /// listener was opened (so that their numbers stay low; see `fork_fds`). `max_connections`
    /// live connections each get a byte record and a report word. From here on the main process
    /// forks only through [`Launcher::launch`].
    pub(crate) fn new(slots: HandoffSlots, max_connections: usize) -> io::Result<Launcher> {
        Ok(Launcher {
            totals: SharedPage::map()?,
            records: ByteRecords::new(max_connections)?,
            pad: LaunchPad::new()?,
            slots,
            exclusions: Exclusions::start(),
            backoff: Backoff::new(),
            backoff_log: Throttle::new(BACKOFF_RESETS_LOGGED_PER_SEC),
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

    /// The bytes a reaped connection process stored in its record, and the record back.
    pub(crate) fn bytes_of(&mut self, record: Option<RecordId>) -> (u64, u64) {
        record.map_or((0, 0), |id| self.records.give_back(id))
    }

    /// Forks the connection process for `socket` (blocking now), which gets a byte record (the
    /// caller gives it back with [`Launcher::bytes_of`] at reap) and a word to report its
    /// backends in. On failure the client is reset, the failure logged, and forking pauses for
    /// [`BACKOFF_MS`].
    pub(crate) fn launch(&mut self, socket: &Socket, conn: &Conn) -> Result<(libc::pid_t, Option<RecordId>), Errno> {
        let lent = self.records.lend();
        let issued = self.reports.issue();
        let plan = self.plan(socket, conn, lent.map(|(_, record)| record), issued.map(|(_, r)| r));
        self.exclusions.refresh();
        let id = lent.map(|(id, _)| id);
        match hand_off(&mut self.pad, &mut self.slots, socket, plan) {
            Ok(pid) => {
                if let Some((index, _)) = issued {
                    self.unread.push((index, pid, Rc::clone(&conn.routes), conn.chosen));
                }
                Ok((pid, id))
            }
            Err(e) => {
                if let Some((index, _)) = issued {
                    self.reports.release(index);
                }
                self.bytes_of(id);
                handoff::reset(socket);
                plan.log_unconnected(Outcome::ForkFailed, e);
                self.backoff.pause(sys::monotonic_ms(), e);
                Err(e)
            }
        }
    }

    /// Resets a client that needs a process while forking is paused, without trying to fork: the
    /// fork that started the pause failed, and so would this one. Logged as that failure (at most
    /// [`BACKOFF_RESETS_LOGGED_PER_SEC`] lines a second, the rest counted).
    pub(crate) fn refuse_in_backoff(&mut self, socket: &Socket, conn: &Conn) {
        handoff::reset(socket);
        let now = sys::monotonic_ms();
        self.log_left_out(now);
        if self.backoff_log.admit(now) {
            self.plan(socket, conn, None, None)
                .log_unconnected(Outcome::ForkFailed, self.backoff.error);
        }
    }

    /// Once a second with more back-off resets than were logged is over: how many were not.
    pub(crate) fn log_left_out(&mut self, now: u64) {
        if let Some(n) = self.backoff_log.take_left_out(now) {
            log!(
                "event=fork-failures-not-logged outcome=fork-failed error={:?} count={n} \
                 max_per_second={BACKOFF_RESETS_LOGGED_PER_SEC} note=\"clients reset during fork back-offs\"",
                self.backoff.error
            );
        }
    }

    /// When the loop must wake to log a count of back-off resets, if it must.
    pub(crate) fn due_at(&self) -> Option<u64> {
        self.backoff_log.due_at()
    }

    /// What the connection process of `conn` needs, as plain data: the backends in this
    /// connection's order (balance and health), the PROXY header to send, where to count bytes
    /// and report backends.
    fn plan(&self, socket: &Socket, conn: &Conn, bytes: Option<&'static ByteRecord>, report: Option<Report>) -> Plan {
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
        Plan {
            client: socket.as_raw_fd(),
            ticket: None,
            targets: route.backends.attempts(&order),
            connect_timeout_ms: options.connect_timeout.as_millis().max(1) as u64,
            line: Plan::describe(&conn.peer, route.mapping.bind.port(), conn.via, name.as_deref()),
            accepted_ms: conn.accepted_ms,
            idle_timeout_ms: options.idle_timeout.map_or(0, |t| t.as_millis().max(1) as u64),
            keepalive_secs: options.keepalive.map_or(0, |t| t.as_secs().max(1) as u32),
            totals: self.totals,
            bytes,
            max_rate: options.max_rate.unwrap_or(0),
            report,
            proxy_header,
            source: options.source,
        }
    }
}

/// The pause after a failed fork, and that fork's error.
pub(crate) struct Backoff {
    until: u64,
    pub(crate) error: Errno,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff {
            until: 0,
            error: Errno::UnknownErrno,
        }
    }

    /// Pauses for [`BACKOFF_MS`] from `now`, after a fork failed with `error`.
    pub(crate) fn pause(&mut self, now: u64, error: Errno) {
        self.until = now + BACKOFF_MS;
        self.error = error;
    }

    pub(crate) fn paused(&self, now: u64) -> bool {
        now < self.until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_lasts_the_back_off_and_keeps_its_error() {
        let mut backoff = Backoff::new();
        assert!(!backoff.paused(0));
        backoff.pause(1_000, Errno::EAGAIN);
        assert!(backoff.paused(1_000 + BACKOFF_MS - 1));
        assert!(!backoff.paused(1_000 + BACKOFF_MS));
        assert_eq!(backoff.error, Errno::EAGAIN);
    }
}
