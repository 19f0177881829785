//! Each connection's byte counts, for the main process to attribute to the listener the
//! connection came in on (`portfwd_bytes_total{listen=...}`).
//!
//! The main process sees only process-wide totals otherwise (`plan::Totals`). So before it forks a
//! connection process it lends that connection a [`ByteRecord`] in one shared mapping; the
//! connection process stores its two counts there as it ends (two stores, no system call, nothing
//! on the data path), and the main process reads the record when it reaps the process, then
//! lends it again. A connection process killed by a signal leaves its record at zero, as it
//! leaves the totals. Main process, but [`ByteRecord::store`], which the connection process calls.

use crate::sys::{SharedArray, SharedZeroed, SysResult};
use std::sync::atomic::{AtomicU64, Ordering};

/// One connection's bytes delivered each way, filled when it ends.
#[repr(C)]
pub(crate) struct ByteRecord {
    c2s: AtomicU64,
    s2c: AtomicU64,
}

// SAFETY: two atomics, valid when zero.
unsafe impl SharedZeroed for ByteRecord {}

impl ByteRecord {
    /// In the connection process, as it ends. Async-signal-safe: two atomic stores.
    pub(crate) fn store(&self, c2s: u64, s2c: u64) {
        self.c2s.store(c2s, Ordering::Relaxed);
        self.s2c.store(s2c, Ordering::Release);
    }
}

/// Which record a connection has; the main process keeps it with the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordId(u32);

/// The records, and which of them are free. Main process.
pub(crate) struct ByteRecords {
    records: SharedArray<ByteRecord>,
    free: Vec<u32>,
}

impl ByteRecords {
    /// Room for `capacity` connections at once: the process's connection cap, so that every live
    /// connection has one (beyond it, [`ByteRecords::lend`] says `None`).
    pub(crate) fn new(capacity: usize) -> SysResult<ByteRecords> {
        let capacity = capacity.clamp(1, u32::MAX as usize);
        let records = SharedArray::map(capacity)?;
        // Lent lowest first (popped from the end), so the pages touched stay few.
        let free = (0..records.len() as u32).rev().collect();
        Ok(ByteRecords { records, free })
    }

    /// A zeroed record for a connection about to be forked.
    pub(crate) fn lend(&mut self) -> Option<(RecordId, &'static ByteRecord)> {
        let index = self.free.pop()?;
        Some((RecordId(index), self.records.get(index as usize)))
    }

    /// The counts a connection stored (zero if it stored none), and its record back.
    pub(crate) fn give_back(&mut self, id: RecordId) -> (u64, u64) {
        let record = self.records.get(id.0 as usize);
        let s2c = record.s2c.swap(0, Ordering::Acquire);
        let c2s = record.c2s.swap(0, Ordering::Relaxed);
        self.free.push(id.0);
        (c2s, s2c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store happens in a connection process in real use (the integration tests check the
    /// bytes of real connections per listener); here, in-process: a fork from a test thread would
    /// copy the other tests' descriptor tables and disturb their timing.
    #[test]
    fn records_are_lent_filled_read_back_and_lent_again_zeroed() {
        let mut records = ByteRecords::new(2).unwrap();
        let (a, record) = records.lend().unwrap();
        let (b, _) = records.lend().unwrap();
        assert!(records.lend().is_none(), "two at most");
        record.store(1234, 5678);
        assert_eq!(records.give_back(a), (1234, 5678));
        assert_eq!(records.give_back(b), (0, 0), "a record nobody filled reads zero");
        let (_, again) = records.lend().unwrap();
        assert_eq!(again.c2s.load(Ordering::Relaxed), 0);
        assert_eq!(again.s2c.load(Ordering::Relaxed), 0);
    }
}
