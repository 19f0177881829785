//! `SIGHUP`: reopen the log file, re-read the configuration and apply it, old listeners against
//! new mappings. Main process.
//!
//! New listeners are opened, removed ones closed, unchanged ones kept (no connection refused
//! meanwhile). All or nothing: a file with errors, or a listener that cannot be opened, leaves
//! every mapping as it was. Connections in flight keep the route they started with.

use super::{EventLoop, Route, Service};
use crate::backends::Backends;
use crate::{config, listener, log};
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
    pub(super) fn reload(&mut self) {
        if let Some(path) = &self.settings.log_file
            && let Err(e) = crate::daemon::redirect_stderr(path)
        {
            log!("cannot reopen log file {}: {e}", path.display());
        }
        let Some((path, base)) = &self.settings.config else {
            log!("SIGHUP: no configuration file to reload (started without --config)");
            return;
        };
        let (mappings, resolved) = match config::load(path, base) {
            Ok(found) => found,
            Err(errors) => {
                for line in errors.lines() {
                    log!("reload rejected: {line}");
                }
                self.log_kept();
                return;
            }
        };
        let current: Vec<Option<SocketAddr>> = self
            .services
            .iter()
            .map(|s| s.as_ref().map(|s| s.route.mapping.bind))
            .collect();
        let routes = mappings.into_iter().zip(resolved).map(|(mapping, resolved)| {
            let backends = Backends::new(&mapping, resolved);
            (mapping.bind, Route { mapping, backends })
        });
        let changes = compare(&current, routes.collect());
        // Open what is new before changing anything.
        let mut opened: Vec<(Route, Socket)> = Vec::new();
        for route in changes.added {
            match listener::open(route.mapping.bind) {
                Ok(socket) => opened.push((route, socket)),
                Err(e) => {
                    let m = &route.mapping;
                    let error = m.bind_error(format!("cannot listen on {}: {e}", m.bind));
                    log!("reload rejected: {}", error.located(path));
                    self.log_kept();
                    return;
                }
            }
        }
        let kept = changes.kept.len();
        for (slot, mut route) in changes.kept {
            // New connections take the new target and options; those in flight keep theirs.
            // The backends still listed keep their health.
            let service = self.services[slot].as_mut().expect("compared as open");
            route.backends.carry_over(&service.route.backends);
            service.route = Rc::new(route);
        }
        let removed = changes.removed.len();
        for slot in changes.removed {
            if let Some(service) = self.services[slot].take() {
                let _ = self.epoll.delete(service.listener.as_fd());
                log!(
                    "reload: closed {} -> {}",
                    service.local,
                    service.route.mapping.target_label()
                );
            }
        }
        let added = opened.len();
        for (route, socket) in opened {
            let label = route.mapping.target_label();
            match Service::new(socket, route).and_then(|s| self.add_service(s)) {
                Ok(()) => log!(
                    "reload: listening on {} -> {label}",
                    self.services.last().unwrap().as_ref().unwrap().local
                ),
                Err(e) => log!("reload: cannot add a listener: {e}"),
            }
        }
        log!("reload done: {added} added, {removed} removed, {kept} kept");
    }
    /// The last line of a rejected reload: what goes on being served.
    fn log_kept(&self) {
        log!(
            "reload rejected: keeping the {} current mapping(s)",
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
