//! Launching connection processes: the launch pad, the hand-off slots, the memory the children do
//! not get, and the back-off after a fork fails. Main process; what runs after the fork is `conn`.

use super::Conn;
use crate::conn::Outcome;
use crate::handoff::bytes::{ByteRecords, RecordId};
use crate::handoff::fork_fds::HandoffSlots;
use crate::handoff::fork_memory::{Exclusions, LaunchPad};
use crate::handoff::plan::{Plan, Targets, Totals};
use crate::handoff::{self, hand_off};
use crate::sys::{self, SharedPage};
use nix::errno::Errno;
use socket2::Socket;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// How long forking (and accepting) pauses after a failed fork: processes or memory ran out, so
/// let the system breathe before the next one.
pub(crate) const BACKOFF_MS: u64 = 100;

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
    /// Sockets that became active while forking was paused, and when the pause ends.
    pub(crate) backoff: Backoff<(Socket, Conn)>,
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
        let route = conn.route();
        let options = &route.mapping.options;
        let name = conn.routes.name(conn.chosen);
        let plan = Plan {
            client: socket.as_raw_fd(),
            ticket: None,
            targets: Targets::new(&route.targets),
            connect_timeout_ms: options.connect_timeout.as_millis().max(1) as u64,
            line: Plan::describe(&conn.peer, route.mapping.bind.port(), name.as_deref()),
            accepted_ms: conn.accepted_ms,
            idle_timeout_ms: options.idle_timeout.map_or(0, |t| t.as_millis().max(1) as u64),
            keepalive_secs: options.keepalive.map_or(0, |t| t.as_secs().max(1) as u32),
            totals: self.totals,
            bytes: lent.map(|(_, record)| record),
            max_rate: options.max_rate.unwrap_or(0),
        };
        self.exclusions.refresh();
        let id = lent.map(|(id, _)| id);
        match hand_off(&mut self.pad, &mut self.slots, socket, plan) {
            Ok(pid) => Ok((pid, id)),
            Err(e) => {
                self.bytes_of(id);
                handoff::reset(socket);
                plan.log_unconnected(Outcome::ForkFailed, e);
                self.backoff.pause(sys::monotonic_ms());
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
