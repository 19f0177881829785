//! Addresses: parsing ports and hosts, and resolving the inward target once, before any fork.
//!
//! A forked child may not call the resolver (it allocates and may lock), so every address a child
//! will connect to is resolved here at start-up and kept, with its log label, as plain data.
//! Main process; a connection process only reads a [`Target`] (its address and label) after fork.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// Room for a label: `[ffff:...:ffff%4294967295]:65535` is 62 bytes.
const LABEL_CAP: usize = 64;

/// One resolved inward address, ready for `connect(2)` in a child. Plain data (`Copy`, no heap):
/// a connection's plan carries its targets into the child by value.
#[derive(Clone, Copy)]
pub struct Target {
    pub addr: SocketAddr,
    label: [u8; LABEL_CAP],
    label_len: u8,
}

impl Target {
    pub fn new(addr: SocketAddr) -> Self {
        let mut target = Target {
            addr,
            label: [0; LABEL_CAP],
            label_len: 0,
        };
        let text = addr.to_string();
        let n = text.len().min(LABEL_CAP);
        target.label[..n].copy_from_slice(&text.as_bytes()[..n]);
        target.label_len = n as u8;
        target
    }

    /// `127.0.0.1:8005` or `[::1]:8005`, as written in log lines.
    pub fn label(&self) -> &str {
        std::str::from_utf8(&self.label[..self.label_len as usize]).unwrap_or("?")
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Parses a TCP port: a decimal number from 1 to 65535.
pub fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        Ok(_) => Err(format!("invalid port '{text}': must be from 1 to 65535")),
        Err(_) => Err(format!("invalid port '{text}': not a number")),
    }
}

/// Strips the brackets of an `[::1]`-style IPv6 literal; other text is returned as it is.
pub fn unbracket(host: &str) -> &str {
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// Resolves `host` (a name, an IPv4 literal or an IPv6 literal with or without brackets) with
/// `port` to every address it has, in the resolver's order, without duplicates.
pub fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let bare = unbracket(host);
    if bare.is_empty() {
        return Err("empty host name".to_string());
    }
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let found = (bare, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve host '{host}': {e}"))?;
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for a in found {
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    if addrs.is_empty() {
        return Err(format!("cannot resolve host '{host}': no addresses"));
    }
    Ok(addrs)
}

/// Addresses of one inward host that a connection tries at most (a connection's plan carries them
/// by value into its process): the resolver's first 16.
pub const MAX_TARGETS: usize = 16;

/// Resolves an inward target to the ready-to-connect list a child tries in turn (at most
/// [`MAX_TARGETS`] addresses).
pub fn resolve_targets(host: &str, port: u16) -> Result<Vec<Target>, String> {
    Ok(resolve(host, port)?
        .into_iter()
        .take(MAX_TARGETS)
        .map(Target::new)
        .collect())
}

/// Whether inward connections can be made from `source`: it must be an address of this host
/// (checked by binding a socket to it, any port), or every connect would fail.
pub fn check_source(source: IpAddr) -> Result<(), String> {
    let addr = SocketAddr::new(source, 0);
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)
        .map_err(|e| format!("source={source}: {e}"))?;
    socket
        .bind(&addr.into())
        .map_err(|e| format!("source={source}: cannot make connections from it: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(parse_port("1"), Ok(1));
        assert_eq!(parse_port("65535"), Ok(65535));
        assert!(parse_port("0").unwrap_err().contains("1 to 65535"));
        assert!(parse_port("65536").unwrap_err().contains("1 to 65535"));
        assert!(parse_port("http").unwrap_err().contains("not a number"));
        assert!(parse_port("-1").is_err());
    }

    #[test]
    fn literals_resolve_without_the_resolver() {
        assert_eq!(resolve("[::1]", 80).unwrap(), vec!["[::1]:80".parse().unwrap()]);
        assert_eq!(resolve("::1", 80).unwrap(), vec!["[::1]:80".parse().unwrap()]);
        assert_eq!(resolve("127.0.0.1", 8).unwrap(), vec!["127.0.0.1:8".parse().unwrap()]);
        assert!(resolve("", 8).is_err());
        assert!(resolve("no-such-host.invalid", 8).is_err());
    }

    #[test]
    fn a_source_address_must_be_local() {
        assert_eq!(check_source("127.0.0.9".parse().unwrap()), Ok(()));
        let e = check_source("192.0.2.1".parse().unwrap()).unwrap_err();
        assert!(
            e.starts_with("source=192.0.2.1: cannot make connections from it"),
            "{e}"
        );
    }
}
