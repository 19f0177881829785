//! The counters behind the `stats` line (`SIGUSR1`). Main process; the byte totals come from the
//! page the connection processes add to.

use crate::conn::OutcomeCounts;
use std::fmt::Write as _;

#[derive(Default, Debug)]
pub(crate) struct Stats {
    pub(crate) accepted: u64,
    pub(crate) refused: u64,
    /// Clients that hung up before sending their first byte.
    pub(crate) closed_waiting: u64,
    pub(crate) first_byte_timeouts: u64,
    /// Connection processes reaped (and forks that failed, and clients no route matched), by
    /// outcome.
    pub(crate) outcomes: OutcomeCounts,
    /// Clients handed to each route of a routed listener, by listen port and `when=`, in the order
    /// routes were first taken (kept across reloads, like every counter here).
    routes: Vec<((u16, String), u64)>,
}

impl Stats {
    /// One more client for the route `when` of the listener on `port`.
    pub(crate) fn count_route(&mut self, port: u16, when: &str) {
        match self.routes.iter_mut().find(|((p, w), _)| *p == port && w == when) {
            Some((_, n)) => *n += 1,
            None => self.routes.push(((port, when.to_string()), 1)),
        }
    }

    /// `stats live=N waiting=N accepted=N refused=N closed=N reset=N ... bytes_s2c=N`.
    pub(crate) fn line(&self, live: usize, waiting: usize, bytes_c2s: u64, bytes_s2c: u64) -> String {
        let mut line = format!(
            "stats live={live} waiting={waiting} accepted={} refused={}",
            self.accepted, self.refused
        );
        for (outcome, n) in self.outcomes.iter() {
            let _ = write!(line, " {}={n}", outcome.stat_name());
        }
        let _ = write!(
            line,
            " closed_before_data={} first_byte_timeouts={} bytes_c2s={bytes_c2s} bytes_s2c={bytes_s2c}",
            self.closed_waiting, self.first_byte_timeouts
        );
        for ((port, when), n) in &self.routes {
            let _ = write!(line, " route:{port}:{when}={n}");
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::Outcome;

    #[test]
    fn the_stats_line_names_every_counter() {
        let mut stats = Stats {
            accepted: 9,
            refused: 1,
            closed_waiting: 2,
            first_byte_timeouts: 3,
            ..Stats::default()
        };
        stats.outcomes.add(Outcome::Closed);
        stats.outcomes.add(Outcome::IdleTimeout);
        stats.outcomes.add(Outcome::ForkFailed);
        stats.outcomes.add(Outcome::NoRoute);
        stats.count_route(443, "ssh");
        stats.count_route(443, "tls:*.example.com");
        stats.count_route(443, "ssh");
        assert_eq!(
            stats.line(4, 5, 6, 7),
            "stats live=4 waiting=5 accepted=9 refused=1 closed=1 reset=0 idle_timeout=1 connect_failed=0 \
             fork_failed=1 no_route=1 closed_before_data=2 first_byte_timeouts=3 bytes_c2s=6 bytes_s2c=7 \
             route:443:ssh=2 route:443:tls:*.example.com=1"
        );
    }
}
