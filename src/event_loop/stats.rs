//! The counters behind the `stats` lines (`SIGUSR1`): one for the process, then one per mapping.
//! Main process; the byte totals come from the page the connection processes add to, the count
//! of dropped log lines from the log's own shared page.

use super::EventLoop;
use crate::conn::OutcomeCounts;
use crate::log;
use crate::log::Quoted;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

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

    /// `event=stats live=N waiting=N accepted=N refused=N closed=N reset=N ... bytes_s2c=N
    /// log_dropped=N route:PORT:WHEN=N...`.
    pub(crate) fn line(&self, live: usize, waiting: usize, bytes_c2s: u64, bytes_s2c: u64, log_dropped: u64) -> String {
        let mut line = format!("event=stats live={live} waiting={waiting}");
        self.counters(&mut line);
        let _ = write!(
            line,
            " bytes_c2s={bytes_c2s} bytes_s2c={bytes_s2c} log_dropped={log_dropped}"
        );
        for ((port, when), n) in &self.routes {
            let _ = write!(line, " route:{port}:{when}={n}");
        }
        line
    }

    /// ` accepted=N refused=N OUTCOME=N... closed_before_data=N first_byte_timeouts=N`.
    pub(crate) fn counters(&self, line: &mut String) {
        let _ = write!(line, " accepted={} refused={}", self.accepted, self.refused);
        for (outcome, n) in self.outcomes.iter() {
            let _ = write!(line, " {}={n}", outcome.stat_name());
        }
        let _ = write!(
            line,
            " closed_before_data={} first_byte_timeouts={}",
            self.closed_waiting, self.first_byte_timeouts
        );
    }
}

impl EventLoop {
    /// Counts into the process's figures and into those of listener `slot` (if it is still
    /// there: a reload may have closed it).
    pub(super) fn tally(&mut self, slot: usize, count: impl Fn(&mut Stats)) {
        count(&mut self.stats);
        if let Some(service) = self.services.get_mut(slot).and_then(Option::as_mut) {
            count(&mut service.stats);
        }
    }

    /// The process's `stats` line, then one `stats-mapping` line per listener:
    /// `event=stats-mapping listen=ADDR target=HOST:PORT live=N waiting=N accepted=N ...` (`live`:
    /// connection processes, `waiting`: clients waiting for their first byte), each followed by
    /// one `stats-backend` line per backend of each of its routes (see `backends`).
    pub(super) fn log_stats(&self) {
        let totals = self.launcher.totals();
        log!(
            "{}",
            self.stats.line(
                self.children.len(),
                self.waiting.len(),
                totals.c2s.load(Ordering::Relaxed),
                totals.s2c.load(Ordering::Relaxed),
                crate::log_sink::dropped(),
            )
        );
        let now = crate::sys::monotonic_ms();
        let open = self.services.iter().flatten();
        for (line, service) in self.mapping_lines("stats-mapping").into_iter().zip(open) {
            log!("{line}");
            // Its backends, route by route: their health and what they served.
            let routes = &service.routes;
            for (i, route) in routes.list.iter().enumerate() {
                let name = routes.name(i);
                for line in route.backends.stats_lines(service.local, name.as_deref(), now) {
                    log!("{line}");
                }
            }
        }
    }

    /// One line per listener: `event=EVENT listen=ADDR target=HOST:PORT live=N waiting=N
    /// accepted=N ...`.
    pub(super) fn mapping_lines(&self, event: &str) -> Vec<String> {
        let mut lines = Vec::new();
        for (slot, service) in self.services.iter().enumerate() {
            let Some(service) = service else { continue };
            let live = self.children.values().filter(|c| c.slot == slot).count();
            let waiting = self.waiting.iter().filter(|(_, c)| c.slot == slot).count();
            let mut line = format!(
                "event={event} listen={} target={} live={live} waiting={waiting}",
                service.local,
                Quoted(service.routes.listener().target_label())
            );
            service.stats.counters(&mut line);
            lines.push(line);
        }
        lines
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
            stats.line(4, 5, 6, 7, 8),
            "event=stats live=4 waiting=5 accepted=9 refused=1 closed=1 reset=0 idle_timeout=1 connect_failed=0 \
             fork_failed=1 no_route=1 closed_before_data=2 first_byte_timeouts=3 bytes_c2s=6 bytes_s2c=7 \
             log_dropped=8 route:443:ssh=2 route:443:tls:*.example.com=1"
        );
    }
}
