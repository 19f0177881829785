//! The overlap check of listen addresses: one lookup per line, however many lines came before.

use super::Mapping;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

/// The listen addresses of the lines kept so far, for the overlap check in one lookup per line:
/// equal addresses overlap, `[::]` (dual-stack) overlaps every address on its port, `0.0.0.0`
/// every IPv4 address on its port. Values are indices of mappings, so the smallest is the
/// earliest line.
#[derive(Default)]
pub(super) struct Taken {
    exact: HashMap<(IpAddr, u16), usize>,
    ports: HashMap<u16, PortUse>,
}

/// The earliest line of each kind on one port.
#[derive(Default)]
struct PortUse {
    any: Option<usize>,
    any_ipv4: Option<usize>,
    ipv4_wildcard: Option<usize>,
    ipv6_wildcard: Option<usize>,
}

impl Taken {
    /// The earliest kept line that `bind` overlaps.
    pub(super) fn overlapped(&self, bind: SocketAddr) -> Option<usize> {
        let exact = self.exact.get(&(bind.ip(), bind.port())).copied();
        let Some(port) = self.ports.get(&bind.port()) else {
            return exact;
        };
        let ip = bind.ip();
        let candidates = match (ip.is_ipv4(), ip.is_unspecified()) {
            (false, true) => [port.any, None, None],
            (true, true) => [port.any_ipv4, port.ipv6_wildcard, None],
            (true, false) => [exact, port.ipv4_wildcard, port.ipv6_wildcard],
            (false, false) => [exact, port.ipv6_wildcard, None],
        };
        candidates.into_iter().flatten().min()
    }

    /// Takes back what [`Taken::insert`] recorded for the mappings from index `from` on (a line
    /// that turned out to overlap): entries pointing at them are dropped.
    pub(super) fn remove(&mut self, bind: SocketAddr, from: usize) {
        if self.exact.get(&(bind.ip(), bind.port())).is_some_and(|&i| i >= from) {
            self.exact.remove(&(bind.ip(), bind.port()));
        }
        if let Some(port) = self.ports.get_mut(&bind.port()) {
            for kind in [
                &mut port.any,
                &mut port.any_ipv4,
                &mut port.ipv4_wildcard,
                &mut port.ipv6_wildcard,
            ] {
                if kind.is_some_and(|i| i >= from) {
                    *kind = None;
                }
            }
        }
    }

    pub(super) fn insert(&mut self, bind: SocketAddr, index: usize) {
        self.exact.entry((bind.ip(), bind.port())).or_insert(index);
        let port = self.ports.entry(bind.port()).or_default();
        port.any.get_or_insert(index);
        let ip = bind.ip();
        if ip.is_ipv4() {
            port.any_ipv4.get_or_insert(index);
        }
        if ip.is_unspecified() {
            let wildcard = if ip.is_ipv4() {
                &mut port.ipv4_wildcard
            } else {
                &mut port.ipv6_wildcard
            };
            wildcard.get_or_insert(index);
        }
    }
}

impl Mapping {
    /// Two listeners on these addresses could not both bind: the rule [`Taken`] applies in one
    /// lookup, kept as its specification.
    #[cfg(test)]
    pub(super) fn overlaps(&self, other: &Mapping) -> bool {
        self.bind.port() == other.bind.port()
            && (self.bind.ip() == other.bind.ip()
                || self.bind.ip().is_unspecified() && (self.bind.is_ipv6() || other.bind.is_ipv4())
                || other.bind.ip().is_unspecified() && (other.bind.is_ipv6() || self.bind.is_ipv4()))
    }
}
