//! A mapping's backends at run time: their addresses, their passive health and the balancer's
//! state. Main process: for each connection it decides, before the fork, the order in which the
//! backends are tried ([`balance`]) and puts their addresses in the plan; it keeps each backend's
//! [`health`] from what connection processes [`report`].
//!
//! A connection tries the backends in its order, each with its own `connect_timeout` (all of a
//! backend's addresses within it), and the client sees an error only when every one failed.

pub(crate) mod balance;
pub(crate) mod health;
pub(crate) mod report;

use crate::config::{Mapping, Resolved};
use crate::handoff::plan::{Attempt, PLAN_ADDRS, Targets};
use crate::log;
use crate::log::Quoted;
use crate::options::Options;
use crate::target::{MAX_TARGETS, Target};
use balance::Order;
use health::{Change, Health, State};
use report::Reported;
use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

/// One backend: its name as written, its addresses (resolved at start-up or reload, and again
/// every `resolve=` seconds for a name), its health.
pub(crate) struct Backend {
    /// `HOST:PORT` as written (IPv6 in brackets).
    pub(crate) label: String,
    /// Replaced in place by a re-resolution: the connections that start next take the new ones
    /// (those in flight have theirs in their plan).
    pub(crate) addrs: RefCell<Vec<Target>>,
    /// Shared with the same backend of the mapping before and after a reload, so reports from
    /// connections that started under the old configuration still count.
    health: Rc<RefCell<Health>>,
}

/// The backends of one mapping, in the order written.
pub(crate) struct Backends {
    list: Vec<Backend>,
    /// The round-robin counter.
    next: Cell<usize>,
}

impl Backends {
    pub(crate) fn new(mapping: &Mapping, resolved: Resolved) -> Backends {
        let list = mapping
            .backends
            .iter()
            .zip(resolved)
            .map(|(b, addrs)| Backend {
                label: b.label(),
                addrs: RefCell::new(addrs),
                health: Rc::default(),
            })
            .collect();
        Backends {
            list,
            next: Cell::new(0),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Backend> {
        self.list.iter()
    }

    /// Keeps the health and the round-robin position of `old` (the same mapping before a reload)
    /// for the backends that are still listed.
    pub(crate) fn carry_over(&mut self, old: &Backends) {
        self.next.set(old.next.get());
        for b in &mut self.list {
            if let Some(o) = old.list.iter().find(|o| o.label == b.label) {
                b.health = Rc::clone(&o.health);
            }
        }
    }

    /// The order in which one connection from `client` tries the backends.
    pub(crate) fn order(&self, options: &Options, client: IpAddr, now: u64) -> Order {
        let mut next = self.next.get();
        let order = balance::order(options.balance, self.list.len(), &mut next, client, |i| {
            self.list[i].health.borrow().usable(now)
        });
        self.next.set(next);
        order
    }

    /// The addresses a connection tries, in `order`: each backend's first ones, as many as the
    /// plan holds with every backend in it (16 for a single backend, at least 2 each).
    pub(crate) fn attempts(&self, order: &Order) -> Targets {
        let n = order.as_slice().len().max(1);
        let each = (PLAN_ADDRS / n).clamp(1, MAX_TARGETS);
        let mut attempts = Vec::with_capacity(PLAN_ADDRS);
        for &i in order.as_slice() {
            let addrs = self.list[usize::from(i)].addrs.borrow();
            attempts.extend(addrs.iter().take(each).map(|&target| Attempt { backend: i, target }));
        }
        Targets::new(attempts)
    }

    /// Takes the new addresses of backend `i` (a re-resolution of its name), if they are not the
    /// same set as before (a DNS server that rotates its answers changes nothing); says whether
    /// they changed. In the log: `event=backend-resolved listen=ADDR [route=WHEN]
    /// backend=HOST:PORT addrs=A,B`.
    pub(crate) fn resolved(&self, i: usize, new: Vec<Target>, listen: SocketAddr, route: Option<&str>) -> bool {
        let Some(b) = self.list.get(i) else {
            return false;
        };
        let set = |t: &[Target]| {
            let mut a: Vec<SocketAddr> = t.iter().map(|t| t.addr).collect();
            a.sort_unstable();
            a
        };
        if new.is_empty() || set(&b.addrs.borrow()) == set(&new) {
            return false;
        }
        let labels: Vec<&str> = new.iter().map(Target::label).collect();
        log!(
            "event=backend-resolved {} addrs={}",
            Where(listen, route, &b.label),
            labels.join(",")
        );
        *b.addrs.borrow_mut() = new;
        true
    }

    /// A re-resolution of backend `i` failed: logged, and its addresses are kept.
    pub(crate) fn resolve_failed(&self, i: usize, error: &str, listen: SocketAddr, route: Option<&str>) {
        if let Some(b) = self.list.get(i) {
            log!(
                "event=backend-resolve-failed {} error={} note=\"keeping the old addresses\"",
                Where(listen, route, &b.label),
                Quoted(error)
            );
        }
    }

    /// Counts a connection process's report, and logs a backend going down or coming back:
    /// `event=backend-down listen=ADDR [route=WHEN] backend=HOST:PORT failures=N within_s=S
    /// skipped_s=S`, `event=backend-still-down ...`, `event=backend-up ...` (`route`: the route
    /// of a routed listener these backends serve).
    pub(crate) fn apply(
        &self,
        reported: Reported,
        options: &Options,
        listen: SocketAddr,
        route: Option<&str>,
        now: u64,
    ) {
        let fail_timeout_ms = options.fail_timeout.as_millis() as u64;
        let secs = crate::options::secs(options.fail_timeout);
        for (i, b) in self.list.iter().enumerate() {
            let change = if reported.failed & (1 << i) != 0 {
                b.health.borrow_mut().failed(now, options.max_fails, fail_timeout_ms)
            } else if reported.used == Some(i as u8) {
                b.health.borrow_mut().succeeded()
            } else {
                None
            };
            let at = Where(listen, route, &b.label);
            match change {
                Some(Change::Down(n)) => log!(
                    "event=backend-down {at} failures={n} within_s={secs} skipped_s={secs} \
                     note=\"skipped while another backend is up\""
                ),
                Some(Change::DownAgain) => {
                    log!("event=backend-still-down {at} skipped_s={secs} note=\"tried again and failed\"")
                }
                Some(Change::Up) => log!("event=backend-up {at}"),
                None => {}
            }
        }
    }

    /// Each backend's label and whether it is taken now (up, or retrying after its down time):
    /// `portfwd_backend_up`.
    pub(crate) fn states(&self, now: u64) -> impl Iterator<Item = (&str, bool)> + '_ {
        self.list
            .iter()
            .map(move |b| (b.label.as_str(), b.health.borrow().state(now) != State::Down))
    }

    /// One line per backend for `SIGUSR1`, after its listener's `stats-mapping` line:
    /// `event=stats-backend listen=ADDR [route=WHEN] backend=HOST:PORT state=up|down|retrying
    /// served=N failed=N downs=N`.
    pub(crate) fn stats_lines(&self, listen: SocketAddr, route: Option<&str>, now: u64) -> Vec<String> {
        self.list
            .iter()
            .map(|b| {
                let h = b.health.borrow();
                format!(
                    "event=stats-backend {} state={} served={} failed={} downs={}",
                    Where(listen, route, &b.label),
                    h.state(now).name(),
                    h.served,
                    h.failures,
                    h.downs
                )
            })
            .collect()
    }
}

/// `listen=ADDR [route=WHEN] backend=HOST:PORT`, the fields that name a backend in the log.
struct Where<'a>(SocketAddr, Option<&'a str>, &'a str);

impl std::fmt::Display for Where<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "listen={}", self.0)?;
        if let Some(route) = self.1 {
            write!(f, " route={}", Quoted(route))?;
        }
        write!(f, " backend={}", Quoted(self.2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self};

    fn backends(line: &str) -> (Backends, Options) {
        let m = config::parse(line, &Options::default()).unwrap().remove(0);
        let resolved = config::resolve(std::slice::from_ref(&m)).unwrap().remove(0);
        (Backends::new(&m, resolved), m.options)
    }

    fn tried(targets: &Targets) -> Vec<(u8, String)> {
        targets
            .iter()
            .map(|a| (a.backend, a.target.label().to_string()))
            .collect()
    }

    #[test]
    fn a_down_backend_is_left_out_until_its_time_is_over() {
        let (b, o) = backends("7 -> 127.0.0.1:1, 127.0.0.2:2, [::1]:3 fail_timeout=5");
        let client: IpAddr = "127.0.0.1".parse().unwrap();
        let all = b.attempts(&b.order(&o, client, 0));
        assert_eq!(
            tried(&all),
            [
                (0, "127.0.0.1:1".into()),
                (1, "127.0.0.2:2".into()),
                (2, "[::1]:3".into())
            ]
        );
        let listen: SocketAddr = "[::]:7".parse().unwrap();
        b.apply(
            Reported {
                used: Some(1),
                failed: 0b01,
            },
            &o,
            listen,
            None,
            1_000,
        );
        assert_eq!(b.order(&o, client, 1_000).as_slice(), [1, 2]);
        assert_eq!(b.order(&o, client, 5_999).as_slice(), [1, 2]);
        assert_eq!(b.order(&o, client, 6_000).as_slice(), [0, 1, 2], "tried again");
        let stats = b.stats_lines(listen, None, 2_000);
        assert_eq!(
            stats[0],
            "event=stats-backend listen=[::]:7 backend=127.0.0.1:1 state=down served=0 failed=1 downs=1"
        );
        assert!(stats[1].ends_with("backend=127.0.0.2:2 state=up served=1 failed=0 downs=0"));
        b.apply(
            Reported {
                used: Some(0),
                failed: 0,
            },
            &o,
            listen,
            None,
            7_000,
        );
        assert!(b.stats_lines(listen, None, 7_000)[0].contains("state=up served=1"));
        // Health survives a reload for the backends still listed.
        let (mut again, _) = backends("7 -> 127.0.0.2:2, 127.0.0.1:1");
        again.carry_over(&b);
        // A connection of the old configuration reports after the reload: it counts.
        b.apply(
            Reported {
                used: None,
                failed: 0b01,
            },
            &o,
            listen,
            None,
            8_000,
        );
        assert!(again.stats_lines(listen, None, 8_000)[1].contains("backend=127.0.0.1:1 state=down"));
    }

    #[test]
    fn new_addresses_are_taken_only_when_the_set_changed() {
        let (b, o) = backends("7 -> 127.0.0.1:1, 127.0.0.2:2");
        let listen: SocketAddr = "127.0.0.1:7".parse().unwrap();
        let t = |a: &str| Target::new(a.parse().unwrap());
        let client: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(!b.resolved(1, vec![t("127.0.0.2:2")], listen, None), "the same");
        assert!(!b.resolved(1, Vec::new(), listen, None), "nothing is not an answer");
        assert!(b.resolved(1, vec![t("127.0.0.3:2"), t("127.0.0.4:2")], listen, None));
        assert!(
            !b.resolved(1, vec![t("127.0.0.4:2"), t("127.0.0.3:2")], listen, None),
            "rotated"
        );
        assert_eq!(
            tried(&b.attempts(&b.order(&o, client, 0))),
            [
                (0, "127.0.0.1:1".into()),
                (1, "127.0.0.3:2".into()),
                (1, "127.0.0.4:2".into())
            ]
        );
    }

    #[test]
    fn the_plan_holds_every_backend() {
        let many: Vec<String> = (1..=16).map(|p| format!("127.0.0.1:{p}")).collect();
        let (b, o) = backends(&format!("7 -> {}", many.join(", ")));
        let t = b.attempts(&b.order(&o, "127.0.0.1".parse().unwrap(), 0));
        assert_eq!(t.iter().count(), 16);
        assert_eq!(t.iter().last().unwrap().backend, 15);
    }
}
