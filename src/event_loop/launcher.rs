//! Launching connection processes: the launch pad, the hand-off slots, the memory the children do
//! not get, and the back-off after a fork fails. Main process; what runs after the fork is `conn`.
//!
//! During a back-off, clients that need a process are reset at once, without trying to fork, and
//! counted and logged as fork-failed (with the error of the fork that failed): a queue of clients
//! at the process limit learns it in one go instead of one or two per back-off.

use super::Conn;
use crate::conn::Outcome;
use crate::handoff::bytes::{ByteRecord, ByteRecords, RecordId};
use crate::handoff::fork_fds::HandoffSlots;
use crate::handoff::fork_memory::{Exclusions, LaunchPad};
use crate::handoff::plan::{Plan, Targets, Totals};
use crate::handoff::{self, hand_off};
use crate::log;
use crate::log::Throttle;
use crate::sys::{self, SharedPage};
use nix::errno::Errno;
use socket2::Socket;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

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
}

impl Launcher {
    /// Call on the main thread, before the first accept, with the slots reserved before any
    /// listener was opened (so that their numbers stay low; see `fork_fds`). `max_connections`
    /// live connections each get a byte record. From here on the main process forks only
    /// through [`Launcher::launch`].
    pub(crate) fn new(slots: HandoffSlots, max_connections: usize) -> io::Result<Launcher> {
        Ok(Launcher {
            totals: SharedPage::map()?,
            records: ByteRecords::new(max_connections)?,
            pad: LaunchPad::new()?,
            slots,
            exclusions: Exclusions::start(),
            backoff: Backoff::new(),
            backoff_log: Throttle::new(BACKOFF_RESETS_LOGGED_PER_SEC),
        })
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
    /// caller gives it back with [`Launcher::bytes_of`] at reap). On failure the client is reset,
    /// the failure logged, and forking pauses for [`BACKOFF_MS`].
    pub(crate) fn launch(&mut self, socket: &Socket, conn: &Conn) -> Result<(libc::pid_t, Option<RecordId>), Errno> {
        let lent = self.records.lend();
        let plan = self.plan(socket, conn, lent.map(|(_, record)| record));
        self.exclusions.refresh();
        let id = lent.map(|(id, _)| id);
        match hand_off(&mut self.pad, &mut self.slots, socket, plan) {
            Ok(pid) => Ok((pid, id)),
            Err(e) => {
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
            self.plan(socket, conn, None)
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

    /// What the connection process of `conn` needs, as plain data.
    fn plan(&self, socket: &Socket, conn: &Conn, bytes: Option<&'static ByteRecord>) -> Plan {
        let route = conn.route();
        let options = &route.mapping.options;
        let name = conn.routes.name(conn.chosen);
        Plan {
            client: socket.as_raw_fd(),
            ticket: None,
            targets: Targets::new(&route.targets),
            connect_timeout_ms: options.connect_timeout.as_millis().max(1) as u64,
            line: Plan::describe(&conn.peer, route.mapping.bind.port(), name.as_deref()),
            accepted_ms: conn.accepted_ms,
            idle_timeout_ms: options.idle_timeout.map_or(0, |t| t.as_millis().max(1) as u64),
            keepalive_secs: options.keepalive.map_or(0, |t| t.as_secs().max(1) as u32),
            totals: self.totals,
            bytes,
            max_rate: options.max_rate.unwrap_or(0),
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
