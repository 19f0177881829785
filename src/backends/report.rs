//! How a connection process tells the main process which backends it could not reach, and which
//! one it used: one 64-bit word per connection in a shared mapping, then a write to the hand-off
//! eventfd so the main process looks at once. The exit status cannot carry this (8 bits, and a
//! connection may live for hours after its failover), and a pipe could fill up; the word is
//! written once, before the pumps start, and read as soon as the eventfd says so.
//!
//! The main process hands out a word per connection before the fork (its index stays with the
//! connection) and takes it back when it has read the report, or when the connection process is
//! reaped without one (killed before it connected). Both processes: [`Report`] is the child's
//! plain-data side, [`Reports`] the main process's.

use crate::sys::{self, SharedZeroed};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};

/// Set when the word holds a report.
const DONE: u64 = 1 << 63;
/// Bits 32..40: the backend used, plus one (0: none).
const USED_SHIFT: u32 = 32;

/// One connection's report word.
#[repr(transparent)]
pub(crate) struct Word(AtomicU64);

// SAFETY: one atomic; zero means "no report yet".
unsafe impl SharedZeroed for Word {}

/// What a report says: the backend the connection reached (an index into the mapping's backends)
/// and the backends it tried and could not reach (bit i for backend i).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reported {
    pub(crate) used: Option<u8>,
    pub(crate) failed: u16,
}

/// The connection process's side, in its plan: where to write its report.
#[derive(Clone, Copy)]
pub(crate) struct Report {
    word: &'static Word,
}

impl Report {
    /// Writes the report and wakes the main process through `notify` (the hand-off eventfd).
    /// Async-signal-safe: one atomic store and one `write(2)`.
    pub(crate) fn send(&self, notify: RawFd, reported: Reported) {
        let used = reported.used.map_or(0, |u| u64::from(u) + 1);
        let word = DONE | used << USED_SHIFT | u64::from(reported.failed);
        self.word.0.store(word, Ordering::Release);
        let _ = sys::write(notify, &1u64.to_ne_bytes());
    }
}

fn decode(word: u64) -> Option<Reported> {
    (word & DONE != 0).then(|| Reported {
        used: match (word >> USED_SHIFT) as u8 {
            0 => None,
            u => Some(u - 1),
        },
        failed: word as u16,
    })
}

/// The main process's side: the words, and which are free.
pub(crate) struct Reports {
    words: sys::SharedArray<Word>,
    free: Vec<u32>,
}

impl Reports {
    /// Words for `capacity` connections at once (the process's connection cap: a connection
    /// beyond it has no report, and only its health goes uncounted).
    pub(crate) fn new(capacity: usize) -> sys::SysResult<Reports> {
        let capacity = capacity.clamp(1, 1 << 20);
        Ok(Reports {
            words: sys::SharedArray::map(capacity)?,
            free: (0..capacity as u32).rev().collect(),
        })
    }

    /// A cleared word for the next connection, and its index.
    pub(crate) fn issue(&mut self) -> Option<(u32, Report)> {
        let index = self.free.pop()?;
        let word = self.words.get(index as usize);
        word.0.store(0, Ordering::Relaxed);
        Some((index, Report { word }))
    }

    /// The report in word `index`, if its connection process wrote one.
    pub(crate) fn read(&self, index: u32) -> Option<Reported> {
        decode(self.words.get(index as usize).0.load(Ordering::Acquire))
    }

    /// Word `index` is free again (its report was read, or its process is gone).
    pub(crate) fn release(&mut self, index: u32) {
        self.free.push(index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_and_words_are_reused_cleared() {
        let mut reports = Reports::new(2).unwrap();
        let (a, report_a) = reports.issue().unwrap();
        let (b, _) = reports.issue().unwrap();
        assert!(reports.issue().is_none(), "two words");
        assert_eq!(reports.read(a), None);
        let (r, w) = nix::unistd::pipe().unwrap();
        use std::os::fd::AsRawFd;
        report_a.send(
            w.as_raw_fd(),
            Reported {
                used: Some(2),
                failed: 0b11,
            },
        );
        assert_eq!(
            reports.read(a),
            Some(Reported {
                used: Some(2),
                failed: 0b11
            })
        );
        let mut buf = [0u8; 8];
        assert_eq!(
            nix::unistd::read(&r, &mut buf).unwrap(),
            8,
            "the main process was woken"
        );
        reports.release(a);
        let (again, report) = reports.issue().unwrap();
        assert_eq!((again, reports.read(again)), (a, None), "cleared when issued again");
        report.send(
            w.as_raw_fd(),
            Reported {
                used: None,
                failed: 1 << 15,
            },
        );
        assert_eq!(
            reports.read(a),
            Some(Reported {
                used: None,
                failed: 1 << 15
            })
        );
        assert_eq!(reports.read(b), None);
    }
}
