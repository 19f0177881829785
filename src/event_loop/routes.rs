//! A listener's routes: the lines of one listen address, in file order, each with its backends.

use crate::backends::Backends;
use crate::config::Mapping;
use crate::log::Quoted;
use crate::route::Condition;

/// Where one route's connections go, and how: one line of the configuration (its condition is
/// `mapping.options.when`, its per-route options are the line's) and its backends (their
/// resolved addresses, health and balancer state).
pub(crate) struct Route {
    pub(crate) mapping: Mapping,
    pub(crate) backends: Backends,
}

impl Route {
    pub(crate) fn new(mapping: Mapping, resolved: crate::config::Resolved) -> Route {
        let backends = Backends::new(&mapping, resolved);
        Route { mapping, backends }
    }
}

/// A listener's routes, in file order: shared by its listener, its waiting sockets and its
/// connection processes, so a reload can replace them without touching those in flight (a
/// waiting client keeps the route set it was accepted with).
pub(crate) struct Routes {
    /// At least one. Listener-wide options agree on every line (see `grouping`), so the first
    /// line speaks for the listener.
    pub(crate) list: Vec<Route>,
    /// Each route's `when=`, for `route::decide`.
    pub(super) conditions: Vec<Condition>,
    /// Whether clients are routed by what they send; if not, the one route takes every client
    /// on its first byte, as a plain listener always did.
    pub(super) routed: bool,
    /// The route a silent client gets, and after how many ms.
    pub(super) timeout: Option<(usize, u64)>,
}

impl Routes {
    /// `list` holds the lines of one listen address, in file order (at least one).
    pub(crate) fn new(list: Vec<Route>) -> Routes {
        let lines: Vec<&Mapping> = list.iter().map(|r| &r.mapping).collect();
        let routed = crate::grouping::routed(&lines);
        let conditions: Vec<Condition> = list.iter().map(|r| r.mapping.options.when.clone()).collect();
        let timeout = crate::route::timeout_route(&conditions).map(|(i, d)| (i, d.as_millis() as u64));
        Routes {
            list,
            conditions,
            routed,
            timeout,
        }
    }

    /// Keeps the health and balancer state of `old` (the same listener before a reload): each
    /// route takes those of the old route with the same `when=`.
    pub(crate) fn carry_over(&mut self, old: &Routes) {
        for route in &mut self.list {
            let when = &route.mapping.options.when;
            if let Some(o) = old.list.iter().find(|o| o.mapping.options.when == *when) {
                route.backends.carry_over(&o.backends);
            }
        }
    }

    /// The listener's own settings (address, dispatch, caps, access rules, PROXY header
    /// accepted): its first line's.
    pub(crate) fn listener(&self) -> &Mapping {
        &self.list[0].mapping
    }

    /// Route `i`'s name for the log and the stats line (`tls:*.example.com`), if the listener
    /// is routed.
    pub(crate) fn name(&self, i: usize) -> Option<String> {
        self.routed.then(|| self.conditions[i].to_string())
    }

    /// `target="HOST:PORT" addrs=ADDR,...` (several backends: `target="HOST:PORT, HOST:PORT"`,
    /// the addresses of all of them in that order), or for a routed listener `routes="when=WHEN -> HOST:PORT (ADDR,...); ..."`.
    pub(crate) fn describe(&self) -> String {
        let addrs = |r: &Route| {
            let all = r.backends.iter().flat_map(|b| {
                let addrs: Vec<String> = b.addrs.borrow().iter().map(|t| t.label().to_string()).collect();
                addrs
            });
            all.collect::<Vec<_>>().join(",")
        };
        if !self.routed {
            let r = &self.list[0];
            return format!("target={} addrs={}", Quoted(r.mapping.target_label()), addrs(r));
        }
        let routes: Vec<String> = self
            .list
            .iter()
            .map(|r| {
                format!(
                    "when={} -> {} ({})",
                    r.mapping.options.when,
                    r.mapping.target_label(),
                    addrs(r)
                )
            })
            .collect();
        format!("routes={}", Quoted(routes.join("; ")))
    }
}
