//! Passive health of one backend, from what connection processes report: `max_fails` failed
//! connects within `fail_timeout` mark it down for `fail_timeout`; then it is tried again, and
//! the first success brings it back (a failure marks it down again at once). nginx's rule. Main
//! process; pure bookkeeping on times the caller passes in (`CLOCK_MONOTONIC` ms).

/// What a report changed, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// Marked down after this many failures in the window.
    Down(u32),
    /// Tried again after its down time, and failed again.
    DownAgain,
    /// A connect succeeded after it was down.
    Up,
}

/// How a backend looks to the balancer and in the stats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Up,
    /// Skipped while another backend is up.
    Down,
    /// Its down time is over: tried again, not yet seen to work.
    Retrying,
}

impl State {
    pub(crate) fn name(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::Retrying => "retrying",
        }
    }
}

#[derive(Default, Debug)]
pub(crate) struct Health {
    /// Failures in the current window, and when the window started.
    fails: u32,
    window_start: u64,
    /// While marked down: until when (past that, it is retrying).
    down_until: Option<u64>,
    /// Counters for the stats: connections it served, connects that failed, times marked down.
    pub(crate) served: u64,
    pub(crate) failures: u64,
    pub(crate) downs: u64,
}

impl Health {
    pub(crate) fn state(&self, now: u64) -> State {
        match self.down_until {
            None => State::Up,
            Some(t) if now < t => State::Down,
            Some(_) => State::Retrying,
        }
    }

    /// Whether a connection may try it while other backends are up.
    pub(crate) fn usable(&self, now: u64) -> bool {
        self.state(now) != State::Down
    }

    /// A connect to it failed. `max_fails` 0: counted, never marked down.
    pub(crate) fn failed(&mut self, now: u64, max_fails: u32, fail_timeout_ms: u64) -> Option<Change> {
        self.failures += 1;
        if max_fails == 0 {
            return None;
        }
        if let Some(until) = self.down_until {
            // Down or retrying: it stays down, for a full fail_timeout from now.
            self.down_until = Some(now + fail_timeout_ms);
            return (now >= until).then(|| {
                self.downs += 1;
                Change::DownAgain
            });
        }
        if self.fails == 0 || now.saturating_sub(self.window_start) > fail_timeout_ms {
            self.fails = 0;
            self.window_start = now;
        }
        self.fails += 1;
        if self.fails < max_fails {
            return None;
        }
        self.down_until = Some(now + fail_timeout_ms);
        self.downs += 1;
        Some(Change::Down(std::mem::take(&mut self.fails)))
    }

    /// A connection reached it.
    pub(crate) fn succeeded(&mut self) -> Option<Change> {
        self.served += 1;
        self.fails = 0;
        self.down_until.take().map(|_| Change::Up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_fails_within_the_window_mark_it_down_for_fail_timeout() {
        let mut h = Health::default();
        assert_eq!(h.failed(1_000, 3, 10_000), None);
        assert_eq!(h.failed(2_000, 3, 10_000), None);
        // The window started at 1 s; a failure at 12 s starts a new one.
        assert_eq!(h.failed(12_000, 3, 10_000), None);
        assert_eq!(h.failed(13_000, 3, 10_000), None);
        assert_eq!(h.state(13_000), State::Up);
        assert_eq!(h.failed(14_000, 3, 10_000), Some(Change::Down(3)));
        assert_eq!(h.state(14_000), State::Down);
        assert!(!h.usable(23_999));
        assert_eq!(h.state(24_000), State::Retrying);
        assert!(h.usable(24_000));
        // Retried and failed: down again at once, for a full fail_timeout.
        assert_eq!(h.failed(25_000, 3, 10_000), Some(Change::DownAgain));
        assert_eq!(h.state(34_999), State::Down);
        // A connection that started before and reached it: back up.
        assert_eq!(h.succeeded(), Some(Change::Up));
        assert_eq!(h.state(35_000), State::Up);
        assert_eq!(h.succeeded(), None);
        assert_eq!((h.served, h.failures, h.downs), (2, 6, 2));
    }

    #[test]
    fn a_success_clears_the_count_and_zero_never_marks_down() {
        let mut h = Health::default();
        assert_eq!(h.failed(0, 2, 10_000), None);
        assert_eq!(h.succeeded(), None);
        assert_eq!(h.failed(1, 2, 10_000), None, "the count started again");
        let mut never = Health::default();
        for t in 0..100 {
            assert_eq!(never.failed(t, 0, 10_000), None);
        }
        assert_eq!(never.state(100), State::Up);
        // Defaults (nginx's): one failure is enough.
        assert_eq!(Health::default().failed(0, 1, 10_000), Some(Change::Down(1)));
    }
}
