//! Accepted sockets waiting in the epoll set for their first byte, and their first-byte deadlines.
//! Main process. The set keeps what the loop gives it (`T`: a socket and its connection), keyed by
//! descriptor; registering with epoll stays the loop's.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::os::fd::RawFd;

pub(crate) struct WaitingSet<T> {
    entries: HashMap<RawFd, (T, Option<u64>)>,
    /// Deadlines, earliest first: (deadline, fd). An entry whose descriptor has since left (or
    /// was reused with another deadline) is stale and skipped.
    deadlines: BinaryHeap<Reverse<(u64, RawFd)>>,
}

impl<T> WaitingSet<T> {
    pub(crate) fn new() -> Self {
        WaitingSet {
            entries: HashMap::new(),
            deadlines: BinaryHeap::new(),
        }
    }

    /// Adds the socket `fd`, to be given up at `deadline` (`CLOCK_MONOTONIC` ms) if still here.
    pub(crate) fn insert(&mut self, fd: RawFd, item: T, deadline: Option<u64>) {
        if let Some(d) = deadline {
            self.deadlines.push(Reverse((d, fd)));
        }
        self.entries.insert(fd, (item, deadline));
    }

    /// The socket `fd`, if it waits here.
    pub(crate) fn get(&self, fd: RawFd) -> Option<&T> {
        self.entries.get(&fd).map(|(item, _)| item)
    }

    /// Takes the socket `fd` out (it became active, or hung up).
    pub(crate) fn remove(&mut self, fd: RawFd) -> Option<T> {
        self.entries.remove(&fd).map(|(item, _)| item)
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
                return self.remove(fd).map(|item| (fd, item));
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
}
