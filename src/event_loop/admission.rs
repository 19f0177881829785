//! Who may come in, and how many: the access rules, the per-source limit and the connection caps
//! (one per listener, one for the process). Main process.
//!
//! A connection counts from its accept until its process is reaped (or it is dropped before):
//! while it waits for its first byte, and while its connection process lives.

use crate::access::{self, Rule};
use crate::options::Options;
use std::collections::HashMap;
use std::net::IpAddr;

/// Why a client was refused at once: the word after `reason=` in its log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    AccessDenied,
    MaxPerSource,
}

impl Refusal {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Refusal::AccessDenied => "access-denied",
            Refusal::MaxPerSource => "max-per-source",
        }
    }
}

/// One listener's live connections, in all and by source address.
#[derive(Default)]
pub(crate) struct Live {
    count: usize,
    per_source: HashMap<IpAddr, usize>,
}

impl Live {
    pub(crate) fn count(&self) -> usize {
        self.count
    }
}

/// The process-wide count and cap, and the command line's access rules.
pub(crate) struct Admission {
    total: usize,
    max_total: usize,
    global_rules: Vec<Rule>,
}

impl Admission {
    pub(crate) fn new(max_total: usize, global_rules: Vec<Rule>) -> Admission {
        Admission {
            total: 0,
            max_total,
            global_rules,
        }
    }

    /// Live connections of the whole process.
    pub(crate) fn total(&self) -> usize {
        self.total
    }

    pub(crate) fn max_total(&self) -> usize {
        self.max_total
    }

    /// How many more clients a listener with `here` live connections and cap `cap` may accept now.
    pub(crate) fn budget(&self, here: &Live, cap: usize) -> usize {
        cap.saturating_sub(here.count)
            .min(self.max_total.saturating_sub(self.total))
    }

    /// Whether such a listener has room for one more.
    pub(crate) fn has_room(&self, here: &Live, cap: usize) -> bool {
        here.count < cap && self.total < self.max_total
    }

    /// Whether a client from `peer` may come in through a listener with `options`: its access
    /// rules (then the global ones), then its per-source limit.
    pub(crate) fn check(&self, here: &Live, options: &Options, peer: IpAddr) -> Result<(), Refusal> {
        let ip = peer.to_canonical();
        if !access::permits(&options.rules, &self.global_rules, ip) {
            return Err(Refusal::AccessDenied);
        }
        if options
            .max_per_source
            .is_some_and(|max| here.per_source.get(&ip).copied().unwrap_or(0) >= max)
        {
            return Err(Refusal::MaxPerSource);
        }
        Ok(())
    }

    /// Counts a client that came in.
    pub(crate) fn enter(&mut self, here: &mut Live, peer: IpAddr) {
        here.count += 1;
        self.total += 1;
        *here.per_source.entry(peer.to_canonical()).or_insert(0) += 1;
    }

    /// A connection is over (or never started). `here` is `None` when its listener is gone.
    pub(crate) fn leave(&mut self, here: Option<&mut Live>, peer: IpAddr) {
        self.total -= 1;
        let Some(here) = here else {
            return;
        };
        here.count -= 1;
        let ip = peer.to_canonical();
        if let Some(n) = here.per_source.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                here.per_source.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::RuleKind;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_budget_is_the_smaller_of_both_caps() {
        let mut admission = Admission::new(3, Vec::new());
        let (mut a, mut b) = (Live::default(), Live::default());
        assert_eq!(admission.budget(&a, 2), 2);
        admission.enter(&mut a, ip("127.0.0.1"));
        assert_eq!(admission.budget(&a, 2), 1);
        admission.enter(&mut b, ip("127.0.0.2"));
        admission.enter(&mut b, ip("127.0.0.2"));
        assert_eq!(admission.total(), 3);
        assert_eq!(admission.budget(&a, 2), 0, "the process-wide cap is reached");
        assert!(!admission.has_room(&a, 2));
        admission.leave(Some(&mut b), ip("127.0.0.2"));
        assert!(admission.has_room(&a, 2));
        assert_eq!(admission.budget(&b, 1), 0, "b's own cap");
        admission.leave(None, ip("127.0.0.2"));
        assert_eq!(
            (admission.total(), b.count()),
            (1, 1),
            "b's listener was gone: only the total"
        );
    }

    #[test]
    fn access_rules_come_before_the_per_source_limit() {
        let deny = Rule::parse(RuleKind::Deny, "10.0.0.0/8").unwrap();
        let mut admission = Admission::new(100, vec![deny]);
        let options = Options {
            max_per_source: Some(2),
            ..Options::default()
        };
        let mut here = Live::default();
        assert_eq!(
            admission.check(&here, &options, ip("10.1.2.3")),
            Err(Refusal::AccessDenied)
        );
        let client = ip("::ffff:127.0.0.1");
        for _ in 0..2 {
            assert_eq!(admission.check(&here, &options, client), Ok(()));
            admission.enter(&mut here, client);
        }
        assert_eq!(
            admission.check(&here, &options, ip("127.0.0.1")),
            Err(Refusal::MaxPerSource),
            "a mapped address counts as the IPv4 one"
        );
        admission.leave(Some(&mut here), ip("127.0.0.1"));
        assert_eq!(admission.check(&here, &options, client), Ok(()));
        assert_eq!(Refusal::MaxPerSource.name(), "max-per-source");
    }
}
