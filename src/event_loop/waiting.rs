//! Accepted sockets waiting in the epoll set for their first byte, and their first-byte deadlines.
//! Main process. The set keeps what the loop gives it (`T`: a socket and its connection), keyed by
//! descriptor; registering with epoll stays the loop's.
//!
//! Its memory follows what waits now, not every client ever accepted: a socket that leaves early
//! leaves a stale deadline behind, and once stale ones outnumber the live ones the heap is rebuilt
//! from the live entries; tables far below their capacity are shrunk, and after a large shrink the
//! freed heap goes back to the system (a connect-and-reset flood at 30,000 clients a second with a
//! 600 s first-byte timeout would otherwise keep hundreds of MiB).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::os::fd::RawFd;

pub(crate) struct WaitingSet<T> {
    entries: HashMap<RawFd, (T, Option<u64>)>,
    /// Deadlines, earliest first: (deadline, fd). An entry whose descriptor has since left (or
    /// was reused with another deadline) is stale and skipped.
    deadlines: BinaryHeap<Reverse<(u64, RawFd)>>,
    /// Entries with a deadline: the live part of `deadlines`.
    timed: usize,
}

/// Stale deadlines tolerated beyond the live ones before the heap is rebuilt (so that a small set
/// is not rebuilt at every removal).
const SLACK: usize = 1024;

/// A table is shrunk when it uses less than a quarter of its capacity, and not below this many.
const MIN_CAPACITY: usize = 1024;

/// Freed bytes from which a shrink also hands the heap's free pages back to the system.
const TRIM_BYTES: usize = 1 << 20;

impl<T> WaitingSet<T> {
    pub(crate) fn new() -> Self {
        WaitingSet {
            entries: HashMap::new(),
            deadlines: BinaryHeap::new(),
            timed: 0,
        }
    }

    /// Adds the socket `fd`, to be given up at `deadline` (`CLOCK_MONOTONIC` ms) if still here.
    pub(crate) fn insert(&mut self, fd: RawFd, item: T, deadline: Option<u64>) {
        if let Some(d) = deadline {
            self.deadlines.push(Reverse((d, fd)));
            self.timed += 1;
        }
        if let Some((_, Some(_))) = self.entries.insert(fd, (item, deadline)) {
            // A descriptor still here cannot be accepted again; should it happen, count it once.
            self.timed -= 1;
        }
    }

    /// The socket `fd`, if it waits here.
    pub(crate) fn get(&self, fd: RawFd) -> Option<&T> {
        self.entries.get(&fd).map(|(item, _)| item)
    }

    /// Takes the socket `fd` out (it became active, or hung up).
    pub(crate) fn remove(&mut self, fd: RawFd) -> Option<T> {
        let item = self.take(fd)?;
        self.compact();
        Some(item)
    }

    fn take(&mut self, fd: RawFd) -> Option<T> {
        let (item, deadline) = self.entries.remove(&fd)?;
        if deadline.is_some() {
            self.timed -= 1;
        }
        Some(item)
    }

    /// Drops the stale deadlines once they outnumber the live ones (amortised: the rebuild costs
    /// the live ones, and comes after at least as many removals), and gives back the memory of
    /// tables far larger than what they hold.
    fn compact(&mut self) {
        let mut freed = 0;
        if self.deadlines.len() > 2 * self.timed + SLACK {
            let before = self.deadlines.capacity();
            self.deadlines = self
                .entries
                .iter()
                .filter_map(|(&fd, (_, d))| d.map(|d| Reverse((d, fd))))
                .collect();
            freed += before.saturating_sub(self.deadlines.capacity()) * size_of::<Reverse<(u64, RawFd)>>();
        }
        let capacity = self.entries.capacity();
        if capacity > MIN_CAPACITY && self.entries.len() < capacity / 4 {
            self.entries.shrink_to((self.entries.len() * 2).max(MIN_CAPACITY));
            freed += capacity.saturating_sub(self.entries.capacity()) * size_of::<(RawFd, (T, Option<u64>))>();
        }
        if freed >= TRIM_BYTES {
            // With one arena and no mmap for these sizes (app::lean_malloc), freed blocks in the
            // middle of the brk heap stay resident until trimmed.
            crate::sys::trim_heap();
        }
    }

    /// Deadlines held, stale ones included (for tests of the bound).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.deadlines.len()
    }

    /// The socket `fd`'s entry, left in place.
    pub(crate) fn get_mut(&mut self, fd: RawFd) -> Option<&mut T> {
        self.entries.get_mut(&fd).map(|(item, _)| item)
    }

    /// Takes out one socket whose deadline is at or before `now`, if there is one.
    pub(crate) fn pop_expired(&mut self, now: u64) -> Option<(RawFd, T)> {
        while let Some(&Reverse((deadline, fd))) = self.deadlines.peek() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            if self.entries.get(&fd).is_some_and(|(_, d)| *d == Some(deadline)) {
                return self.take(fd).map(|item| (fd, item));
            }
        }
        None
    }

    /// The earliest deadline still to come (possibly a stale one: waking for it is harmless).
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.deadlines.peek().map(|Reverse((t, _))| *t)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Every socket still waiting.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.entries.values().map(|(item, _)| item)
    }

    /// Takes every socket out.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.deadlines.clear();
        self.timed = 0;
        self.entries.drain().map(|(_, (item, _))| item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_expire_in_order_and_stale_ones_are_skipped() {
        let mut set = WaitingSet::new();
        set.insert(5, "five", Some(300));
        set.insert(6, "six", Some(100));
        set.insert(7, "seven", None);
        assert_eq!(set.next_deadline(), Some(100));
        assert_eq!(set.pop_expired(99), None);
        assert_eq!(set.pop_expired(100), Some((6, "six")));
        // 5 becomes active before its deadline; its descriptor number is reused with another.
        assert_eq!(set.remove(5), Some("five"));
        set.insert(5, "five again", Some(500));
        assert_eq!(set.pop_expired(400), None, "the old deadline of 5 is stale");
        assert_eq!(set.len(), 2);
        assert_eq!(set.pop_expired(500), Some((5, "five again")));
        assert_eq!(set.pop_expired(u64::MAX), None, "no deadline for 7");
        assert_eq!(set.drain().collect::<Vec<_>>(), ["seven"]);
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn deadlines_held_follow_the_live_sockets_not_every_socket_ever_added() {
        let mut set = WaitingSet::new();
        // A few stay and wait; a flood comes and goes (each socket leaves long before its deadline).
        for fd in 0..10 {
            set.insert(fd, fd, Some(1_000_000));
        }
        for i in 0..100_000 {
            set.insert(100, i, Some(1_000 + i as u64));
            assert_eq!(set.remove(100), Some(i));
        }
        assert!(set.held() <= 2 * 10 + SLACK + 1, "{} deadlines held", set.held());
        assert!(set.deadlines.capacity() <= 4 * (2 * 10 + SLACK + 1));
        assert_eq!(set.len(), 10);
        // The ten still expire, in order, once due; nothing else does.
        assert_eq!(set.pop_expired(999_999), None);
        let expired: Vec<_> = std::iter::from_fn(|| set.pop_expired(1_000_000))
            .map(|(fd, _)| fd)
            .collect();
        assert_eq!(expired.len(), 10);
        // A table that held many gives its room back when they are gone.
        for fd in 0..50_000 {
            set.insert(fd, fd, None);
        }
        for fd in 0..50_000 {
            set.remove(fd);
        }
        assert!(set.entries.capacity() <= 4 * MIN_CAPACITY, "{}", set.entries.capacity());
    }
}
