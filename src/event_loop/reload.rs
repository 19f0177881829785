//! `SIGHUP`: reopen the log, re-read the configuration and apply it, old listeners against new
//! mappings; `SIGUSR2`: reopen the log only (what logrotate needs, without applying configuration
//! edits not meant to be live yet). Main process.
//!
//! The file is read and parsed at once; its targets are resolved by the resolver thread, and the
//! loop serves the current mappings until the answer comes (a DNS server that does not answer
//! costs the reload glibc's retry time, not every client that time). A `SIGHUP` while a reload
//! waits for its names supersedes it: the newest file is the one applied (once the lookup in
//! progress is over: `getaddrinfo` cannot be interrupted), the older answer is dropped.
//!
//! New listeners are opened, removed ones closed, unchanged ones kept (no connection refused
//! meanwhile). All or nothing: a file with errors, a target that does not resolve, or a listener
//! that cannot be opened, leaves every mapping as it was. Connections in flight keep the route
//! they started with, and a client still waiting on a routed listener keeps the route set it was
//! accepted with (it is decided against those routes, and its timeouts are theirs); new clients
//! get the new routes.

use super::{EventLoop, Route, Routes, Service};
use crate::config::{self, Mapping};
use crate::log::Quoted;
use crate::log_sink::{self, Destination};
use crate::resolver::{Answer, Kind, Request};
use crate::{grouping, listener, log};
use socket2::Socket;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::rc::Rc;

/// What a new configuration does to the listeners: the slots it keeps (with their new `R`), the
/// entries it adds, and the slots it removes.
#[derive(Debug, PartialEq)]
pub(crate) struct Changes<R> {
    pub(crate) kept: Vec<(usize, R)>,
    pub(crate) added: Vec<R>,
    pub(crate) removed: Vec<usize>,
}

/// Compares the listening addresses by slot (`None`: a closed slot) with the new entries.
pub(crate) fn compare<R>(current: &[Option<SocketAddr>], new: Vec<(SocketAddr, R)>) -> Changes<R> {
    let mut changes = Changes {
        kept: Vec::new(),
        added: Vec::new(),
        removed: Vec::new(),
    };
    let mut listed = vec![false; current.len()];
    for (bind, entry) in new {
        match current.iter().position(|c| *c == Some(bind)) {
            Some(slot) => {
                listed[slot] = true;
                changes.kept.push((slot, entry));
            }
            None => changes.added.push(entry),
        }
    }
    changes.removed = (0..current.len())
        .filter(|&slot| !listed[slot] && current[slot].is_some())
        .collect();
    changes
}

impl EventLoop {
    /// Reopens the log file (a rotated one is created anew) or reconnects the syslog socket; stderr
    /// as given is left as it is.
    pub(super) fn reopen_log(&mut self) {
        let dest = &self.settings.log_to;
        if *dest == Destination::Stderr {
            return;
        }
        match log_sink::open(dest) {
            Ok(_) => log!("event=log-reopened log={}", Quoted(dest.describe())),
            Err(e) => log!(
                "event=log-reopen-failed log={} error={}",
                Quoted(dest.describe()),
                Quoted(e)
            ),
        }
    }

    pub(super) fn reload(&mut self) {
        self.reopen_log();
        let Some((path, base)) = &self.settings.config else {
            log!("event=reload-skipped reason=no-config note=\"started without --config\"");
            return;
        };
        if self.reload_pending.take().is_some() {
            log!("event=reload-superseded note=\"by a newer SIGHUP; the newest file is the one applied\"");
        }
        self.reloads += 1;
        let mappings = match config::load_unresolved(path, base) {
            Ok(found) => found,
            Err(errors) => return self.reject(&errors),
        };
        // Names (not address literals) may keep the reload waiting for DNS: say so.
        let names = mappings
            .iter()
            .flat_map(|m| &m.backends)
            .filter(|b| crate::target::unbracket(&b.host).parse::<std::net::IpAddr>().is_err())
            .count();
        if names > 0 {
            log!("event=reload-resolving names={names} note=\"the current mappings serve meanwhile\"");
        }
        let request = Request {
            id: self.reloads,
            kind: Kind::Reload,
            mappings,
        };
        match self.resolver.as_ref().map(|r| r.ask(request)) {
            Some(Ok(())) => self.reload_pending = Some(self.reloads),
            Some(Err(e)) => self.reject(&format!("cannot resolve the targets: {e}")),
            None => self.reject("cannot resolve the targets: no resolver"),
        }
    }

    /// The resolver answered: applies the newest reload's answer (older ones were superseded), and
    /// the new addresses of refreshed backends.
    pub(super) fn on_resolved(&mut self) {
        let answers = self.resolver.as_ref().map(|r| r.answers()).unwrap_or_default();
        for answer in answers {
            if answer.kind == Kind::Refresh {
                self.on_refreshed(answer);
            } else if self.reload_pending == Some(answer.id) && self.draining.is_none() {
                self.reload_pending = None;
                self.apply(answer);
            }
        }
    }

    /// Logs why a reload was rejected, one line each, then what goes on being served.
    fn reject(&self, errors: &str) {
        for line in errors.lines() {
            log!("event=reload-rejected error={}", Quoted(line));
        }
        self.log_kept();
    }

    fn apply(&mut self, answer: Answer) {
        let Some((path, _)) = &self.settings.config else {
            return;
        };
        let path = path.clone();
        let mappings: Vec<Mapping> = answer.mappings;
        let resolved = match answer.targets {
            Ok(resolved) => resolved,
            Err(errors) => return self.reject(&config::located(&path, &errors)),
        };
        let current: Vec<Option<SocketAddr>> = self
            .services
            .iter()
            .map(|s| s.as_ref().map(|s| s.routes.listener().bind))
            .collect();
        let routes = mappings
            .into_iter()
            .zip(resolved)
            .map(|(mapping, resolved)| Route::new(mapping, resolved));
        let listeners = grouping::group(routes.collect(), |r| r.mapping.bind)
            .into_iter()
            .map(|list| (list[0].mapping.bind, Routes::new(list)));
        let changes = compare(&current, listeners.collect());
        // Open what is new before changing anything.
        let mut opened: Vec<(Routes, Socket)> = Vec::new();
        for routes in changes.added {
            let m = routes.listener();
            match listener::open(m.bind, m.options.reuseport) {
                Ok(socket) => opened.push((routes, socket)),
                Err(e) => {
                    let m = routes.listener();
                    let error = m.bind_error(format!("cannot listen on {}: {e}", m.bind));
                    return self.reject(&error.located(&path));
                }
            }
        }
        let kept = changes.kept.len();
        for (slot, mut routes) in changes.kept {
            // New connections take the new targets, routes and options; those in flight (and
            // those still waiting) keep theirs. The backends still listed keep their health.
            let service = self.services[slot].as_mut().expect("compared as open");
            routes.carry_over(&service.routes);
            service.routes = Rc::new(routes);
        }
        let removed = changes.removed.len();
        for slot in changes.removed {
            if let Some(service) = self.services[slot].take() {
                let _ = self.epoll.delete(service.listener.as_fd());
                if let Some(o) = &self.observer {
                    o.metrics.remove_listener(&service.local.to_string());
                }
                log!(
                    "event=reload-closed listen={} target={}",
                    service.local,
                    Quoted(service.routes.listener().target_label())
                );
            }
        }
        let added = opened.len();
        for (routes, socket) in opened {
            let label = routes.listener().target_label();
            match Service::new(socket, routes).and_then(|s| self.add_service(s)) {
                Ok(()) => log!(
                    "event=reload-listening listen={} target={}",
                    self.services.last().unwrap().as_ref().unwrap().local,
                    Quoted(label)
                ),
                Err(e) => log!("event=reload-add-failed target={} error={}", Quoted(label), Quoted(e)),
            }
        }
        // The new routes' names were just resolved: their next refresh is `resolve=` from now.
        self.schedule_refreshes();
        log!("event=reload-done added={added} removed={removed} kept={kept}");
    }

    /// The last line of a rejected reload: what goes on being served.
    fn log_kept(&self) {
        log!(
            "event=reload-rejected kept={} note=\"keeping the current mappings\"",
            self.services.iter().flatten().count()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn kept_added_and_removed_listeners() {
        let current = [Some(addr(1)), None, Some(addr(2)), Some(addr(3))];
        let new = vec![(addr(3), "three"), (addr(4), "four"), (addr(1), "one")];
        assert_eq!(
            compare(&current, new),
            Changes {
                kept: vec![(3, "three"), (0, "one")],
                added: vec!["four"],
                removed: vec![2],
            }
        );
        let closed_slot_is_not_reused = compare(&[None], vec![(addr(1), ())]);
        assert_eq!(closed_slot_is_not_reused.added.len(), 1);
        assert!(closed_slot_is_not_reused.removed.is_empty());
    }
}
