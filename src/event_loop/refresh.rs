//! `resolve=SECS`: the named backends of a route are resolved again every SECS, by the resolver
//! thread (the loop never blocks on DNS, a connection process never resolves). New addresses are
//! taken by the connections that start next; those in flight keep theirs. A failed lookup is
//! logged and the old addresses kept. Main process.
//!
//! Only names are re-resolved: an address literal never changes, so a route whose backends are
//! all literals is never asked about. Each route has one request in flight at most, and the next
//! is due SECS after its answer. A reload replaces the routes: the schedule is made anew, and
//! answers about routes no longer current match no entry and are dropped.

use super::{EventLoop, Routes};
use crate::config::{Backend, Mapping};
use crate::log;
use crate::log::Quoted;
use crate::options::Options;
use crate::resolver::{Answer, Kind, Request};
use crate::sys;
use std::rc::{Rc, Weak};

/// When each entry (a route, for the loop) is to be refreshed next, and which request for it is
/// in flight.
pub(crate) struct Schedule<K> {
    entries: Vec<Entry<K>>,
    /// The last request number given; never reused, so an answer to a request of a replaced
    /// entry matches nothing.
    last_id: u64,
}

struct Entry<K> {
    key: K,
    every_ms: u64,
    due_at: u64,
    /// The request in flight, if any.
    asked: Option<u64>,
}

impl<K: Clone> Schedule<K> {
    pub(crate) fn new() -> Schedule<K> {
        Schedule {
            entries: Vec::new(),
            last_id: 0,
        }
    }

    /// Replaces every entry: each `(key, every_ms)` is due `every_ms` after `now` (its names were
    /// just resolved). Requests in flight for the old entries are forgotten.
    pub(crate) fn replace(&mut self, list: impl IntoIterator<Item = (K, u64)>, now: u64) {
        self.entries = list
            .into_iter()
            .map(|(key, every_ms)| Entry {
                key,
                every_ms,
                due_at: now + every_ms,
                asked: None,
            })
            .collect();
    }

    /// The nearest time an entry is due (one with a request in flight waits for its answer).
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        let idle = self.entries.iter().filter(|e| e.asked.is_none());
        idle.map(|e| e.due_at).min()
    }

    /// The entries due at `now` and not in flight, each with a new request number (now in flight).
    pub(crate) fn due(&mut self, now: u64) -> Vec<(u64, K)> {
        let mut out = Vec::new();
        for e in &mut self.entries {
            if e.asked.is_none() && e.due_at <= now {
                self.last_id += 1;
                e.asked = Some(self.last_id);
                out.push((self.last_id, e.key.clone()));
            }
        }
        out
    }

    /// Request `id` was answered (or could not be sent): its entry is due again `every_ms` after
    /// `now`. `None`: no current entry asked it.
    pub(crate) fn answered(&mut self, id: u64, now: u64) -> Option<K> {
        let e = self.entries.iter_mut().find(|e| e.asked == Some(id))?;
        e.asked = None;
        e.due_at = now + e.every_ms;
        Some(e.key.clone())
    }
}

/// A route of the loop: its listener's slot, its route set (as it was when scheduled) and its
/// index there.
pub(super) type RouteKey = (usize, Weak<Routes>, usize);

/// The backends of `mapping` that are names, by index.
fn named(mapping: &Mapping) -> Vec<usize> {
    let is_name = |b: &Backend| crate::target::unbracket(&b.host).parse::<std::net::IpAddr>().is_err();
    (0..mapping.backends.len())
        .filter(|&i| is_name(&mapping.backends[i]))
        .collect()
}

impl EventLoop {
    /// Whether any route of `services` has `resolve=` and a name to resolve (the resolver thread
    /// is started for them).
    pub(super) fn wants_refresh(routes: &[&Routes]) -> bool {
        let refreshed = |m: &Mapping| m.options.resolve.is_some() && !named(m).is_empty();
        routes.iter().flat_map(|r| &r.list).any(|r| refreshed(&r.mapping))
    }

    /// Makes the schedule anew from the current routes (at start-up and after a reload).
    pub(super) fn schedule_refreshes(&mut self) {
        let mut list = Vec::new();
        for (slot, service) in self.services.iter().enumerate() {
            let Some(service) = service else { continue };
            for (i, route) in service.routes.list.iter().enumerate() {
                let m = &route.mapping;
                if let Some(every) = m.options.resolve
                    && !named(m).is_empty()
                {
                    let key = (slot, Rc::downgrade(&service.routes), i);
                    list.push((key, (every.as_millis() as u64).max(1)));
                }
            }
        }
        self.refresh.replace(list, sys::monotonic_ms());
    }

    /// The nearest refresh due (none while draining: listeners are closed).
    pub(super) fn refresh_deadline(&self) -> Option<u64> {
        if self.draining.is_some() || self.resolver.is_none() {
            return None;
        }
        self.refresh.next_deadline()
    }

    /// Asks the resolver about each route due: one mapping per named backend.
    pub(super) fn send_refreshes(&mut self, now: u64) {
        if self.refresh_deadline().is_none_or(|t| t > now) {
            return;
        }
        for (id, (_, routes, i)) in self.refresh.due(now) {
            let Some(routes) = routes.upgrade() else {
                continue;
            };
            let m = &routes.list[i].mapping;
            let mappings = named(m)
                .into_iter()
                // Only the name matters: no `source=` check, no port range.
                .map(|b| Mapping::new(m.bind, vec![m.backends[b].clone()], Options::default()))
                .collect();
            let request = Request {
                id,
                kind: Kind::Refresh,
                mappings,
            };
            if let Some(Err(e)) = self.resolver.as_ref().map(|r| r.ask(request)) {
                log!("event=backend-resolve-failed listen={} error={}", m.bind, Quoted(e));
                self.refresh.answered(id, now);
            }
        }
    }

    /// A refresh answer: the new addresses of each named backend of the route asked about, if it
    /// is still current.
    pub(super) fn on_refreshed(&mut self, answer: Answer) {
        let Some((slot, routes, i)) = self.refresh.answered(answer.id, sys::monotonic_ms()) else {
            return;
        };
        let Some(routes) = routes.upgrade() else {
            return;
        };
        let current = self.services.get(slot).and_then(Option::as_ref);
        if !current.is_some_and(|s| Rc::ptr_eq(&s.routes, &routes)) {
            return;
        }
        let route = &routes.list[i];
        let name = routes.name(i);
        let listen = route.mapping.bind;
        for (b, result) in named(&route.mapping).into_iter().zip(answer.each) {
            match result {
                Ok(mut resolved) => {
                    let addrs = resolved.pop().unwrap_or_default();
                    route.backends.resolved(b, addrs, listen, name.as_deref());
                }
                Err(errors) => {
                    let error: Vec<String> = errors.into_iter().map(|e| e.message).collect();
                    route
                        .backends
                        .resolve_failed(b, &error.join("; "), listen, name.as_deref());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_entry_has_one_request_in_flight_and_is_due_again_after_its_answer() {
        let mut s = Schedule::new();
        assert_eq!(s.next_deadline(), None);
        s.replace([("a", 500), ("b", 2_000)], 1_000);
        assert_eq!(s.next_deadline(), Some(1_500));
        assert!(s.due(1_499).is_empty());
        assert_eq!(s.due(1_500), [(1, "a")]);
        // "a" waits for its answer: not asked again, and not a deadline.
        assert_eq!(s.next_deadline(), Some(3_000));
        assert!(s.due(2_000).is_empty());
        assert_eq!(s.due(3_000), [(2, "b")]);
        assert_eq!(s.next_deadline(), None);
        assert_eq!(s.answered(1, 3_100), Some("a"));
        assert_eq!(s.answered(1, 3_100), None, "answered once");
        assert_eq!(s.next_deadline(), Some(3_600));
        assert_eq!(s.due(3_600), [(3, "a")]);
        // A reload replaces the entries: answers to the old requests match nothing.
        s.replace([("c", 100)], 4_000);
        assert_eq!(s.answered(2, 4_000), None);
        assert_eq!(s.answered(3, 4_000), None);
        assert_eq!(s.next_deadline(), Some(4_100));
        assert_eq!(s.due(4_100), [(4, "c")]);
    }
}
