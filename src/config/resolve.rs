//! A mapping's targets resolved into addresses, at start-up (a reload resolves them on the
//! resolver thread).

use super::shown::{echoing, escaped};
use super::{Backend, Error, Mapping};
use crate::target::{self, Target};
use std::net::SocketAddr;

/// A mapping's targets resolved: one list of addresses for each target, in the order written.
pub type Resolved = Vec<Vec<Target>>;

/// Resolves every mapping's targets; returns them in order, or every failure, located.
pub fn resolve(mappings: &[Mapping]) -> Result<Vec<Resolved>, Vec<Error>> {
    let mut out: Vec<Resolved> = Vec::new();
    let mut errors = Vec::new();
    // The mappings of one line (a port range) share their host: resolved once, for the first;
    // a host that fails is reported once for its line.
    let mut previous: Option<(usize, &Mapping)> = None;
    let mut failed_line = None;
    for m in mappings {
        if m.line != 0 && failed_line == Some(m.line) {
            continue;
        }
        // The other ports of a range: its targets' addresses, moved to this port's target ports.
        if let Some((i, p)) = previous
            && m.line != 0
            && p.line == m.line
        {
            let moved: Resolved = out[i]
                .iter()
                .zip(&m.backends)
                .map(|(addrs, b): (&Vec<Target>, &Backend)| {
                    addrs
                        .iter()
                        .map(|t| Target::new(SocketAddr::new(t.addr.ip(), b.port)))
                        .collect()
                })
                .collect();
            out.push(moved);
            continue;
        }
        let before = errors.len();
        if let Some(source) = m.options.source
            && let Err(message) = target::check_source(source)
        {
            errors.push(Error {
                line: m.line,
                col: m.bind_col,
                message,
            });
        }
        let mut resolved = Vec::new();
        for b in &m.backends {
            match echoing(target::resolve_targets(&b.host, b.port), &b.host) {
                Ok(t) => resolved.push(t),
                Err(message) => errors.push(Error {
                    line: m.line,
                    col: b.col,
                    message: escaped(&message),
                }),
            }
        }
        if errors.len() > before {
            failed_line = Some(m.line);
        } else {
            previous = Some((out.len(), m));
        }
        out.push(resolved);
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}
