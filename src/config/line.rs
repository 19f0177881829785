//! One line of the file: its listen address, its targets and its options, each located by column.

use super::shown::{echoing, shown};
use super::{Backend, MAX_BACKENDS, Mapping};
use crate::options::Options;
use crate::target::{self, parse_port};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Splits a string into whitespace-separated words with their 1-based columns.
fn words(text: &str, base: usize) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push((base + s, &text[s..i]));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((base + s, &text[s..]));
    }
    out
}

/// A word of a line and its column.
type Word<'a> = (usize, &'a str);

/// A target as written: its host, its port or range of ports, and its column.
struct TargetWord {
    host: String,
    ports: Ports,
    col: usize,
}

/// The targets of a line, and the words after them.
type Targets<'a> = (Vec<TargetWord>, &'a [Word<'a>]);

/// A line's mappings: none for a blank or comment line, one per listen port of a range.
type LineResult = Result<Vec<Mapping>, (usize, String)>;

pub(super) fn parse_line(raw: &str, defaults: &Options) -> LineResult {
    let text = raw.split('#').next().unwrap_or("");
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let first_col = text.len() - text.trim_start().len() + 1;
    let Some(arrow) = text.find("->") else {
        return Err((
            first_col,
            "expected 'PORT -> HOST:PORT' (or 'ADDRESS:PORT -> HOST:PORT')".into(),
        ));
    };
    let left = words(&text[..arrow], 1);
    let (bind_col, (ip, listen)) = match left.as_slice() {
        [(col, word)] => (*col, parse_bind(word).map_err(|m| (*col, m))?),
        [] => return Err((first_col, "missing listen port before '->'".into())),
        [_, (col, word), ..] => return Err((*col, format!("unexpected '{}' before '->'", shown(word)))),
    };
    let right = words(&text[arrow + 2..], arrow + 3);
    if right.is_empty() {
        return Err((arrow + 1, "missing 'HOST:PORT' after '->'".into()));
    }
    let (targets, rest) = parse_targets(&right)?;
    // Each target's ports: one (every listen port goes there) or as many as the listen ports.
    let mut steps = Vec::with_capacity(targets.len());
    for t in &targets {
        steps.push(match (listen.len(), t.ports.len()) {
            (_, 1) => 0,
            (a, b) if a == b => 1,
            (1, b) => {
                return Err((
                    t.col,
                    format!("a range of {b} target ports needs a range of {b} listen ports"),
                ));
            }
            (a, b) => {
                return Err((
                    t.col,
                    format!("port ranges of different lengths: {a} listen ports, {b} target ports"),
                ));
            }
        });
    }
    let mut options = defaults.clone();
    options.rules.clear();
    // A line that names who may send a PROXY header names all of them.
    if rest.iter().any(|(_, w)| w.starts_with("proxy_from=")) {
        options.proxy_from.clear();
    }
    let mut given = Vec::new();
    for &(col, word) in rest {
        let Some((key, value)) = word.split_once('=') else {
            return Err((col, format!("expected key=value, found '{}'", shown(word))));
        };
        echoing(echoing(options.set(key, value), key), value).map_err(|m| (col, m))?;
        given.push((key.to_string(), col));
    }
    let mapping = |i: u16| Mapping {
        bind: SocketAddr::new(ip, listen.first + i),
        backends: targets
            .iter()
            .zip(&steps)
            .map(|(t, step)| Backend {
                host: t.host.clone(),
                port: t.ports.first + i * step,
                col: t.col,
            })
            .collect(),
        options: options.clone(),
        line: 0,
        bind_col,
        given: given.clone(),
    };
    Ok((0..listen.len()).map(mapping).collect())
}

/// The targets after `->`: words ending in `,` are followed by another target. Returns them and
/// the words after the last one (the options).
fn parse_targets<'a>(right: &'a [Word<'a>]) -> Result<Targets<'a>, (usize, String)> {
    let mut targets = Vec::new();
    let mut i = 0;
    loop {
        let Some(&(col, word)) = right.get(i) else {
            let (col, last) = right[i - 1];
            return Err((col + last.len(), "missing 'HOST:PORT' after ','".into()));
        };
        let (target, more) = match word.strip_suffix(',') {
            Some(t) => (t, true),
            None => (word, false),
        };
        if target.contains(',') {
            return Err((
                col,
                format!("targets are separated by ', ' (a comma and a space): '{}'", shown(word)),
            ));
        }
        if target.contains('=') {
            return Err((col, format!("expected HOST:PORT after ',', found '{}'", shown(word))));
        }
        let (host, ports) = parse_target(target).map_err(|m| (col, m))?;
        if targets.len() == MAX_BACKENDS {
            return Err((col, format!("more than {MAX_BACKENDS} targets")));
        }
        targets.push(TargetWord { host, ports, col });
        i += 1;
        if !more {
            return Ok((targets, &right[i..]));
        }
    }
}

/// `PORT` or `FIRST-LAST` (both included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ports {
    first: u16,
    last: u16,
}

impl Ports {
    fn len(self) -> u16 {
        self.last - self.first + 1
    }
}

fn parse_ports(word: &str) -> Result<Ports, String> {
    let Some((first, last)) = word.split_once('-') else {
        let port = echoing(parse_port(word), word)?;
        return Ok(Ports {
            first: port,
            last: port,
        });
    };
    let (first, last) = (echoing(parse_port(first), first)?, echoing(parse_port(last), last)?);
    if first > last {
        return Err(format!(
            "invalid port range '{}': the first port is above the last",
            shown(word)
        ));
    }
    Ok(Ports { first, last })
}

/// `PORT`, `IPV4:PORT` or `[IPV6]:PORT`; each `PORT` may be a range `FIRST-LAST`.
fn parse_bind(word: &str) -> Result<(IpAddr, Ports), String> {
    let Some((addr, port)) = word.rsplit_once(':') else {
        return Ok((Ipv6Addr::UNSPECIFIED.into(), parse_ports(word)?));
    };
    let ports = parse_ports(port)?;
    let ip: IpAddr = if let Some(v6) = addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')) {
        v6.parse::<Ipv6Addr>()
            .map_err(|_| format!("invalid IPv6 address '{}'", shown(v6)))?
            .into()
    } else if addr.contains(':') {
        let fixed = shown(&format!("[{addr}]:{port}"));
        return Err(format!("IPv6 listen address needs brackets: '{fixed}'"));
    } else {
        addr.parse::<Ipv4Addr>()
            .map_err(|_| format!("invalid listen address '{}': expected an IP address", shown(addr)))?
            .into()
    };
    Ok((ip, ports))
}

/// `HOST:PORT` or `[IPV6]:PORT`; `PORT` may be a range `FIRST-LAST`.
fn parse_target(word: &str) -> Result<(String, Ports), String> {
    let Some((host, port)) = word.rsplit_once(':') else {
        return Err(format!("expected HOST:PORT after '->', found '{}'", shown(word)));
    };
    if host.is_empty() {
        return Err(format!("missing host in '{}'", shown(word)));
    }
    let bare = target::unbracket(host);
    if bare == host && host.contains(':') {
        let fixed = shown(&format!("[{host}]:{port}"));
        return Err(format!("IPv6 target needs brackets: '{fixed}'"));
    }
    Ok((bare.to_string(), parse_ports(port)?))
}
