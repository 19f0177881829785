//! `setup.config`: one mapping per line, in the seed's form `7005 -> 192.168.0.1:8005`, with an
//! optional bind address (`127.0.0.1:7005`, `[::]:7005`), host names as targets, several targets
//! separated by `, ` (`7005 -> 10.0.0.1:8005, 10.0.0.2:8005`), `#` comments and per-line options
//! (`dispatch=accept`, see `options`). A line may map a range of ports: `7000-7099 ->
//! host:8000-8099` port by port, or `7000-7099 -> host:8000` many to one; it becomes one mapping
//! per listen port, each with the line's number.
//!
//! Every error of the file is reported at once as `FILE:LINE:COL: message`, and nothing starts.
//! Words of the file that a message echoes are cut and escaped (see [`shown`]).

use crate::options::Options;
use crate::target::{self, Target, parse_port};
use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The largest file read: far above any real one (100,000 mappings take about 3 MiB), and a bound
/// on memory when the path names something huge.
pub const MAX_FILE_BYTES: usize = 16 << 20;

/// How many characters of a word a message echoes; the rest is shown as `…`.
const SHOWN_CHARS: usize = 64;

/// The most targets one mapping may list (a connection's plan carries their order by value).
pub const MAX_BACKENDS: usize = 16;

/// One target of a mapping as written: a host (name or address, without brackets) and a port.
/// Two are equal when they name the same host and port, wherever they were written.
#[derive(Clone, Debug)]
pub struct Backend {
    pub host: String,
    pub port: u16,
    /// Column of the target, for resolution errors.
    col: usize,
}

impl PartialEq for Backend {
    fn eq(&self, other: &Backend) -> bool {
        (&self.host, self.port) == (&other.host, other.port)
    }
}

impl Backend {
    pub fn new(host: String, port: u16) -> Backend {
        Backend { host, port, col: 0 }
    }

    /// `HOST:PORT` with IPv6 literals in brackets.
    pub fn label(&self) -> String {
        let host = target::unbracket(&self.host);
        if host.contains(':') {
            format!("[{host}]:{}", self.port)
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// One line of the file, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Mapping {
    /// Where to listen; `[::]` (dual-stack, every interface) when the line names no address.
    pub bind: SocketAddr,
    /// The targets, in the order written (at least one, at most [`MAX_BACKENDS`]).
    pub backends: Vec<Backend>,
    pub options: Options,
    /// 1-based line number in its file (0 for a mapping from the command line).
    pub line: usize,
    /// Column of the listen address, for errors about it (overlaps, a port that cannot be bound).
    bind_col: usize,
    /// The keys of this line's `key=value` words with their columns, for the checks across the
    /// lines of one listener (see `grouping`).
    given: Vec<(String, usize)>,
}

impl Mapping {
    pub fn new(bind: SocketAddr, backends: Vec<Backend>, options: Options) -> Mapping {
        Mapping {
            bind,
            backends,
            options,
            line: 0,
            bind_col: 0,
            given: Vec::new(),
        }
    }

    /// Where this line gives `key=`, if it does (the first such word's column).
    pub fn given(&self, key: &str) -> Option<usize> {
        self.given.iter().find(|(k, _)| k == key).map(|&(_, col)| col)
    }

    /// A problem with this line at column `col` (0: at its listen address).
    pub fn error_at(&self, col: usize, message: String) -> Error {
        Error {
            line: self.line,
            col: if col == 0 { self.bind_col } else { col },
            message: escaped(&message),
        }
    }

    /// The targets as written, `HOST:PORT, HOST:PORT` (IPv6 literals in brackets).
    pub fn target_label(&self) -> String {
        self.backends.iter().map(Backend::label).collect::<Vec<_>>().join(", ")
    }

    /// The mapping as a config line that parses back to itself (options that differ from this
    /// host's defaults only).
    pub fn canonical(&self) -> String {
        let mut out = format!("{} -> {}", self.bind, self.target_label());
        for kv in self.options.diff(&Options::for_this_host()) {
            out.push(' ');
            out.push_str(&kv);
        }
        out
    }

    /// A problem with this mapping's listen address, located at its line and column: what a reload
    /// reports for a port that cannot be bound (`error.located(path)`).
    pub fn bind_error(&self, message: String) -> Error {
        Error {
            line: self.line,
            col: self.bind_col,
            message,
        }
    }

    /// Two listeners on these addresses could not both bind: the rule [`Taken`] applies in one
    /// lookup, kept as its specification.
    #[cfg(test)]
    fn overlaps(&self, other: &Mapping) -> bool {
        self.bind.port() == other.bind.port()
            && (self.bind.ip() == other.bind.ip()
                || self.bind.ip().is_unspecified() && (self.bind.is_ipv6() || other.bind.is_ipv4())
                || other.bind.ip().is_unspecified() && (other.bind.is_ipv6() || self.bind.is_ipv4()))
    }
}

/// One problem, located.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.col, self.message)
    }
}

impl Error {
    /// `FILE:LINE:COL: message`.
    pub fn located(&self, path: impl AsRef<Path>) -> String {
        format!("{}:{self}", shown_path(path.as_ref()))
    }
}

/// The listen addresses of the lines kept so far, for the overlap check in one lookup per line:
/// equal addresses overlap, `[::]` (dual-stack) overlaps every address on its port, `0.0.0.0`
/// every IPv4 address on its port. Values are indices of mappings, so the smallest is the
/// earliest line.
#[derive(Default)]
struct Taken {
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
    fn overlapped(&self, bind: SocketAddr) -> Option<usize> {
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
    fn remove(&mut self, bind: SocketAddr, from: usize) {
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

    fn insert(&mut self, bind: SocketAddr, index: usize) {
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

/// Parses a whole file's text. `defaults` are the options a line starts from (the command line's).
/// Lines with the same listen address are the routes of one listener, checked together (see
/// `grouping`). Does not resolve host names; see [`resolve`].
pub fn parse(text: &str, defaults: &Options) -> Result<Vec<Mapping>, Vec<Error>> {
    // A byte order mark is not part of line 1 (editors on Windows write one).
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut mappings: Vec<Mapping> = Vec::new();
    let mut taken = Taken::default();
    let mut range_lines = std::collections::HashSet::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        match parse_line(raw, defaults) {
            Ok(expanded) => {
                // A range overlapping another line is one error, at its first port that does.
                let first = mappings.len();
                let range = expanded.len() > 1;
                if range {
                    range_lines.insert(line);
                }
                for mut m in expanded {
                    m.line = line;
                    match taken.overlapped(m.bind).map(|i| &mappings[i]) {
                        // Routes share one listen address; a port of a range is never a route.
                        Some(prev) if prev.bind != m.bind || range || range_lines.contains(&prev.line) => {
                            let message = format!("{} is already used by line {} ({})", m.bind, prev.line, prev.bind);
                            errors.push(m.bind_error(message));
                            break;
                        }
                        // Another route of the same listener.
                        Some(_) => mappings.push(m),
                        None => {
                            taken.insert(m.bind, mappings.len());
                            mappings.push(m);
                        }
                    }
                }
                if errors.last().is_some_and(|e| e.line == line) {
                    // Keep the rest of the file's checks against the lines before, not this one.
                    for m in mappings.drain(first..) {
                        taken.remove(m.bind, first);
                    }
                }
            }
            Err((col, message)) => errors.push(Error {
                line,
                col,
                message: escaped(&message),
            }),
        }
    }
    errors.extend(crate::grouping::check(&mut mappings));
    errors.sort_by_key(|e| e.line);
    if errors.is_empty() { Ok(mappings) } else { Err(errors) }
}

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

/// Reads, parses and resolves a file. Errors come back as text, one `FILE:LINE:COL: message` per
/// line (or one `FILE: message` line for a file that cannot be read as text).
pub fn load(path: impl AsRef<Path>, defaults: &Options) -> Result<(Vec<Mapping>, Vec<Resolved>), String> {
    let path = path.as_ref();
    let mappings = load_unresolved(path, defaults)?;
    let targets = resolve(&mappings).map_err(|errs| located(path, &errs))?;
    Ok((mappings, targets))
}

/// Reads and parses a file, like [`load`] but without resolving the targets (a reload resolves
/// them off the event loop, see `resolver`).
pub fn load_unresolved(path: &Path, defaults: &Options) -> Result<Vec<Mapping>, String> {
    let text = read(path)?;
    let mappings = parse(&text, defaults).map_err(|errs| located(path, &errs))?;
    if mappings.is_empty() {
        return Err(format!(
            "{}: no mappings (expected lines like '7005 -> 127.0.0.1:8005')",
            shown_path(path)
        ));
    }
    Ok(mappings)
}

/// Errors of the file `path`, one `FILE:LINE:COL: message` a line.
pub fn located(path: &Path, errors: &[Error]) -> String {
    errors.iter().map(|e| e.located(path)).collect::<Vec<_>>().join("\n")
}

/// Reads a file as text: a regular file (a FIFO would block, a device never end) of at most
/// [`MAX_FILE_BYTES`], in UTF-8.
pub fn read(path: &Path) -> Result<String, String> {
    read_capped(path, MAX_FILE_BYTES)
}

fn read_capped(path: &Path, cap: usize) -> Result<String, String> {
    let name = shown_path(path);
    // Non-blocking, so that opening a FIFO does not wait for a writer; no effect on a regular file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("{name}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("{name}: {e}"))?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else {
            "a socket"
        };
        return Err(format!("{name}: not a regular file ({what})"));
    }
    let too_large = || {
        let limit = if cap.is_multiple_of(1 << 20) {
            format!("{} MiB", cap >> 20)
        } else {
            format!("{cap} bytes")
        };
        format!("{name}: larger than {limit}, the limit for a configuration file")
    };
    if meta.len() > cap as u64 {
        return Err(too_large());
    }
    // The size may be wrong (procfs says 0) or grow meanwhile: read one byte more than the cap.
    let mut bytes = Vec::new();
    file.take(cap as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{name}: {e}"))?;
    if bytes.len() > cap {
        return Err(too_large());
    }
    decode(bytes).map_err(|e| format!("{name}:{e}"))
}

/// The file's bytes as text, or where the first byte that is not UTF-8 is (columns count bytes,
/// as they do for every error, from after a byte order mark on line 1).
fn decode(bytes: Vec<u8>) -> Result<String, Error> {
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let bad = e.utf8_error().valid_up_to();
        let start = if bytes.starts_with(b"\xef\xbb\xbf") { 3 } else { 0 };
        let before = &bytes[start..bad];
        let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        Error {
            line: before.iter().filter(|&&b| b == b'\n').count() + 1,
            col: before.len() - line_start + 1,
            message: format!(
                "invalid UTF-8 (byte \\x{:02x}): the file must be UTF-8 text",
                bytes[bad]
            ),
        }
    })
}

/// A word of the file as a message echoes it: at most [`SHOWN_CHARS`] characters, then `…`, with
/// control and invisible characters escaped (`\x00`, `\u{feff}`), so that a message is one short
/// line that shows what the file holds.
pub fn shown(word: &str) -> String {
    let mut out = escaped(&word.chars().take(SHOWN_CHARS).collect::<String>());
    if word.chars().nth(SHOWN_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// `text` with control and invisible characters escaped.
fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_control() {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else if c.is_control() || invisible(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Format characters that show as nothing, or reorder the text around them (bidirectional
/// overrides): a word holding one looks like another word.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{ad}' | '\u{61c}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}')
}

/// The path as messages name it: whole, with control characters escaped.
fn shown_path(path: &Path) -> String {
    escaped(&path.display().to_string())
}

/// `result` with the word `arg`, which its message quotes as `'arg'`, shown cut and escaped
/// (for messages made elsewhere: ports, options, access rules, resolution).
fn echoing<T>(result: Result<T, String>, arg: &str) -> Result<T, String> {
    result.map_err(|message| {
        let short = shown(arg);
        if short == arg {
            message
        } else {
            message.replacen(&format!("'{arg}'"), &format!("'{short}'"), 1)
        }
    })
}

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

fn parse_line(raw: &str, defaults: &Options) -> LineResult {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(text: &str) -> Vec<String> {
        parse(text, &Options::default())
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn the_seeds_lines_and_the_extensions() {
        let text = "# comment\n\n7005 -> 192.168.0.1:8005\n   7006->192.168.0.2:8006   # trailing\n\
                    127.0.0.1:7007 -> localhost:8007 dispatch=accept\n[::]:7008 -> [::1]:8008 allow=::1 deny=::/0\n";
        // Printed against this host's defaults, as --check-config does (its connection cap is the
        // host's).
        let m = parse(text, &Options::for_this_host()).unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].canonical(), "[::]:7005 -> 192.168.0.1:8005");
        assert_eq!(m[0].line, 3);
        assert_eq!(m[1].canonical(), "[::]:7006 -> 192.168.0.2:8006");
        assert_eq!(m[2].canonical(), "127.0.0.1:7007 -> localhost:8007 dispatch=accept");
        assert_eq!(m[3].canonical(), "[::]:7008 -> [::1]:8008 allow=::1/128 deny=::/0");
        // Canonical lines parse back to the same mappings.
        let again = parse(
            &m.iter().map(Mapping::canonical).collect::<Vec<_>>().join("\n"),
            &Options::for_this_host(),
        );
        let again = again.unwrap();
        for (a, b) in m.iter().zip(&again) {
            assert_eq!((a.bind, &a.backends, &a.options), (b.bind, &b.backends, &b.options));
        }
    }

    #[test]
    fn several_targets_and_their_options() {
        let text = "7005 -> 10.0.0.1:8005, 10.0.0.2:8005, db.internal:8005 balance=roundrobin\n\
                    7006 -> [::1]:1,  127.0.0.1:2 accept_proxy=on proxy_from=10.0.0.0/8 proxy_protocol=v1\n";
        // Printed against this host's defaults, as --check-config does.
        let m = parse(text, &Options::for_this_host()).unwrap();
        assert_eq!(
            m[0].canonical(),
            "[::]:7005 -> 10.0.0.1:8005, 10.0.0.2:8005, db.internal:8005 balance=roundrobin"
        );
        assert_eq!(m[0].backends.len(), 3);
        assert_eq!(
            m[1].canonical(),
            "[::]:7006 -> [::1]:1, 127.0.0.1:2 proxy_protocol=v1 accept_proxy=on proxy_from=10.0.0.0/8"
        );
        // Each target that does not resolve is located at its own column.
        let m = parse("7 -> localhost:1, no-such-host.invalid:2", &Options::default()).unwrap();
        let e = resolve(&m).unwrap_err();
        assert_eq!((e.len(), e[0].line, e[0].col), (1, 1, 19));
        assert_eq!(errs("7 -> a:1,"), ["1:10: missing 'HOST:PORT' after ','"]);
        assert_eq!(
            errs("7 -> a:1,b:2"),
            ["1:6: targets are separated by ', ' (a comma and a space): 'a:1,b:2'"]
        );
        assert_eq!(
            errs("7 -> a:1, dispatch=accept"),
            ["1:11: expected HOST:PORT after ',', found 'dispatch=accept'"]
        );
        assert_eq!(errs("7 -> a:1, b"), ["1:11: expected HOST:PORT after '->', found 'b'"]);
        let many: Vec<String> = (1..=17).map(|p| format!("h:{p}")).collect();
        assert_eq!(
            errs(&format!("7 -> {}", many.join(", "))),
            [format!("1:{}: more than 16 targets", 6 + 5 * 9 + 6 * 7)]
        );
        assert_eq!(
            errs("7 -> a:1 dispatch=accept accept_proxy=on"),
            ["1:26: accept_proxy=on needs proxy_from=CIDR (who may send the PROXY header)"]
        );
        // A line's proxy_from replaces the command line's; without one it inherits them.
        let mut base = Options::default();
        base.set("proxy_from", "10.0.0.1").unwrap();
        let m = parse("7 -> a:1 accept_proxy=on\n8 -> a:1 proxy_from=10.0.0.2", &base).unwrap();
        assert_eq!(m[0].options.proxy_from, base.proxy_from);
        assert_eq!(m[1].options.proxy_from.len(), 1);
        assert_ne!(m[1].options.proxy_from, base.proxy_from);
    }

    #[test]
    fn every_error_kind_with_line_and_column() {
        assert_eq!(
            errs("7005 192.168.0.1:8005"),
            ["1:1: expected 'PORT -> HOST:PORT' (or 'ADDRESS:PORT -> HOST:PORT')"]
        );
        assert_eq!(errs("  0 -> h:1"), ["1:3: invalid port '0': must be from 1 to 65535"]);
        assert_eq!(
            errs("1 -> h:99999"),
            ["1:6: invalid port '99999': must be from 1 to 65535"]
        );
        assert_eq!(errs("1 -> h"), ["1:6: expected HOST:PORT after '->', found 'h'"]);
        assert_eq!(errs("1 ->"), ["1:3: missing 'HOST:PORT' after '->'"]);
        assert_eq!(errs(" -> h:1"), ["1:2: missing listen port before '->'"]);
        assert_eq!(
            errs("1 -> h:1 colour=red"),
            [
                "1:10: unknown option 'colour' (known: dispatch, connect_timeout, max_connections, max_per_source, first_byte_timeout, idle_timeout, keepalive, allow, deny, when, reuseport, max_rate, balance, max_fails, fail_timeout, proxy_protocol, accept_proxy, proxy_from, source, resolve)"
            ]
        );
        assert_eq!(
            errs("1 -> h:1 dispatch"),
            ["1:10: expected key=value, found 'dispatch'"]
        );
        assert_eq!(
            errs("1 -> h:1 dispatch=later"),
            ["1:10: invalid dispatch 'later': expected 'data' or 'accept'"]
        );
        assert_eq!(
            errs("1.2.3:7 -> h:1"),
            ["1:1: invalid listen address '1.2.3': expected an IP address"]
        );
        assert_eq!(
            errs("::1:7 -> h:1"),
            ["1:1: IPv6 listen address needs brackets: '[::1]:7'"]
        );
        assert_eq!(errs("7 -> ::1:8"), ["1:6: IPv6 target needs brackets: '[::1]:8'"]);
        assert_eq!(errs("x y -> h:1"), ["1:3: unexpected 'y' before '->'"]);
        assert_eq!(
            errs("7005 -> a:1\n7005 -> b:2"),
            [
                "2:1: [::]:7005 is already used by line 1 ([::]:7005): further lines on one address are routes, \
                 and this one (no when=, so when=any) can never be chosen"
            ]
        );
        // An any-address listener overlaps a specific one on the same port, and vice versa.
        assert_eq!(errs("127.0.0.1:7 -> a:1\n7 -> b:2").len(), 1);
        assert_eq!(errs("0.0.0.0:7 -> a:1\n127.0.0.1:7 -> b:2").len(), 1);
        assert!(parse("0.0.0.0:7 -> a:1\n[::1]:7 -> b:2", &Options::default()).is_ok());
        assert!(parse("127.0.0.1:7 -> a:1\n127.0.0.2:7 -> b:2", &Options::default()).is_ok());
        // All errors at once.
        assert_eq!(errs("bad\n7 -> h:1\nworse\n0 -> h:1").len(), 3);
    }

    #[test]
    fn port_ranges_map_port_by_port_or_many_to_one() {
        let lines = |text: &str| -> Vec<String> {
            // Printed against this host's defaults, as --check-config does.
            let m = parse(text, &Options::for_this_host()).unwrap();
            m.iter().map(|m| format!("{} {}", m.line, m.canonical())).collect()
        };
        assert_eq!(
            lines("# ranges\n7000-7002 -> h:8000-8002 idle_timeout=5"),
            [
                "2 [::]:7000 -> h:8000 idle_timeout=5",
                "2 [::]:7001 -> h:8001 idle_timeout=5",
                "2 [::]:7002 -> h:8002 idle_timeout=5"
            ]
        );
        assert_eq!(
            lines("127.0.0.1:7000-7001 -> [::1]:8000"),
            ["1 127.0.0.1:7000 -> [::1]:8000", "1 127.0.0.1:7001 -> [::1]:8000"]
        );
        assert_eq!(lines("[::1]:7-7 -> h:9-9"), ["1 [::1]:7 -> h:9"]);
        assert_eq!(parse("1-65535 -> h:1", &Options::default()).unwrap().len(), 65535);
    }

    #[test]
    fn bad_port_ranges_are_located() {
        assert_eq!(
            errs("7000-7099 -> h:8000-8049"),
            ["1:14: port ranges of different lengths: 100 listen ports, 50 target ports"]
        );
        assert_eq!(
            errs("7000 -> h:8000-8001"),
            ["1:9: a range of 2 target ports needs a range of 2 listen ports"]
        );
        assert_eq!(
            errs("  127.0.0.1:7099-7000 -> h:1"),
            ["1:3: invalid port range '7099-7000': the first port is above the last"]
        );
        assert_eq!(
            errs("7 -> h:9-8"),
            ["1:6: invalid port range '9-8': the first port is above the last"]
        );
        assert_eq!(errs("7-x -> h:1"), ["1:1: invalid port 'x': not a number"]);
        assert_eq!(errs("0-3 -> h:1"), ["1:1: invalid port '0': must be from 1 to 65535"]);
        assert_eq!(errs("7-8-9 -> h:1"), ["1:1: invalid port '8-9': not a number"]);
        // Overlaps with other lines: one error for the line, at its first port that overlaps.
        assert_eq!(
            errs("7050 -> a:1\n\n  7000-7099 -> b:2"),
            ["3:3: [::]:7050 is already used by line 1 ([::]:7050)"]
        );
        assert_eq!(
            errs("127.0.0.1:7000-7099 -> a:1\n0.0.0.0:7099 -> b:2"),
            ["2:1: 0.0.0.0:7099 is already used by line 1 (127.0.0.1:7099)"]
        );
        // A line refused for an overlap is not kept: later lines are checked against the others.
        assert_eq!(
            errs("7005 -> a:1\n7000-7010 -> b:2\n7001 -> c:3\n7005 -> d:4"),
            [
                "2:1: [::]:7005 is already used by line 1 ([::]:7005)",
                // Two single-port lines on one address are routes of one listener (see grouping).
                "4:1: [::]:7005 is already used by line 1 ([::]:7005): further lines on one address are \
                 routes, and this one (no when=, so when=any) can never be chosen"
            ]
        );
        assert!(
            parse(
                "127.0.0.1:7000-7099 -> a:1\n127.0.0.2:7000-7099 -> a:1",
                &Options::default()
            )
            .is_ok()
        );
    }

    #[test]
    fn a_range_resolves_its_host_once_and_reports_it_once() {
        let m = parse(
            "7000-7002 -> localhost:8000-8002\n9-10 -> no-such-host.invalid:1",
            &Options::default(),
        )
        .unwrap();
        let e = resolve(&m).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!((e[0].line, e[0].col), (2, 9));
        let t = resolve(&m[..3]).unwrap();
        // One target each: its addresses' ports.
        let ports: Vec<Vec<u16>> = t.iter().map(|t| t[0].iter().map(|t| t.addr.port()).collect()).collect();
        assert!(
            ports
                .iter()
                .zip(8000..)
                .all(|(p, want)| !p.is_empty() && p.iter().all(|&p| p == want)),
            "{ports:?}"
        );
        assert_eq!(t[0].len(), t[2].len());
    }

    #[test]
    fn targets_that_do_not_resolve_are_located() {
        let m = parse("7 -> localhost:1\n8 ->   no-such-host.invalid:2", &Options::default()).unwrap();
        let e = resolve(&m).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].line, e[0].col), (2, 8));
        assert!(e[0].message.contains("no-such-host.invalid"));
    }

    /// A fresh directory for one test's files (removed again by the test when it passes).
    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("portfwd-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The start of a message that may be huge (for assertion output).
    fn head(text: &str) -> String {
        text.chars().take(300).collect()
    }

    fn load_err(path: &std::path::Path) -> String {
        load(path.to_str().unwrap(), &Options::default()).unwrap_err()
    }

    #[test]
    fn invalid_utf8_is_located_at_its_first_bad_byte() {
        let dir = scratch("utf8");
        let file = dir.join("latin1.config");
        std::fs::write(&file, b"7005 -> 127.0.0.1:8005\n7006 -> caf\xe9:80 # \xff\n").unwrap();
        let f = file.display();
        assert_eq!(
            load_err(&file),
            format!("{f}:2:12: invalid UTF-8 (byte \\xe9): the file must be UTF-8 text")
        );
        // A bad byte first on line 1, and a truncated sequence at the very end.
        std::fs::write(&file, b"\x80").unwrap();
        assert!(load_err(&file).starts_with(&format!("{f}:1:1: invalid UTF-8 (byte \\x80)")));
        std::fs::write(&file, b"1 -> h:1\n\n  \xe2\x82").unwrap();
        assert!(load_err(&file).starts_with(&format!("{f}:3:3: invalid UTF-8 (byte \\xe2)")));
        // Columns of line 1 count from after a byte order mark.
        std::fs::write(&file, b"\xef\xbb\xbf12\xff").unwrap();
        assert!(load_err(&file).starts_with(&format!("{f}:1:3: invalid UTF-8 (byte \\xff)")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_leading_byte_order_mark_is_ignored() {
        let m = parse("\u{feff}7005 -> 127.0.0.1:8005\n", &Options::for_this_host()).unwrap();
        assert_eq!(m[0].canonical(), "[::]:7005 -> 127.0.0.1:8005");
        // Columns of line 1 count from after the mark, as an editor shows them.
        assert_eq!(
            errs("\u{feff}  0 -> h:1"),
            ["1:3: invalid port '0': must be from 1 to 65535"]
        );
        // Anywhere else it is not whitespace: it is shown, escaped, in the message.
        assert_eq!(
            errs("1 -> h:1\n\u{feff}2 -> h:1"),
            ["2:1: invalid port '\\u{feff}2': not a number"]
        );
    }

    #[test]
    fn echoed_words_are_cut_and_escaped() {
        // Far longer than what is shown (the report's was 10 MB; nothing here depends on the size).
        let long = "x".repeat(100_000);
        for text in [
            format!("1 -> h:1 dispatch={long}"),
            format!("1 -> h:1 {long}=1"),
            format!("1 -> h:1 {long}"),
            format!("1 -> h:1 allow={long}"),
            format!("1 -> h:1 keepalive={long}"),
            format!("1 -> {long}"),
            format!("1 -> h:{long}"),
            format!("1 -> {long}:{long}"),
            format!("{long} -> h:1"),
            format!("1.2.3.4:{long} -> h:1"),
            format!("{long}:1 -> h:1"),
            format!("[{long}]:1 -> h:1"),
            format!("{long}:{long} -> h:1"),
            format!("x {long} -> h:1"),
        ] {
            let e = errs(&text);
            assert_eq!(e.len(), 1, "{}", head(&e[0]));
            assert!(
                e[0].len() < 400 && e[0].contains(&format!("{}…", "x".repeat(64))),
                "{}",
                head(&e[0])
            );
        }
        assert_eq!(
            errs("1 -> h:1 dispatch=a\x00b\x1b[31m\x7f\u{9b}\u{202e}"),
            ["1:10: invalid dispatch 'a\\x00b\\x1b[31m\\x7f\\u{9b}\\u{202e}': expected 'data' or 'accept'"]
        );
        assert_eq!(errs("\x01 -> h:1"), ["1:1: invalid port '\\x01': not a number"]);
        // Exactly 64 characters are shown whole.
        let word = "y".repeat(64);
        assert_eq!(
            errs(&format!("1 -> h:1 dispatch={word}")),
            [format!("1:10: invalid dispatch '{word}': expected 'data' or 'accept'")]
        );
        // A host that does not resolve is echoed the same way.
        let m = parse(&format!("1 -> a\x07{long}:1"), &Options::default()).unwrap();
        let e = resolve(&m).unwrap_err();
        assert!(
            e[0].message
                .starts_with(&format!("cannot resolve host 'a\\x07{}…'", "x".repeat(62))),
            "{}",
            head(&e[0].message)
        );
    }

    #[test]
    fn only_regular_files_are_read() {
        let dir = scratch("special");
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Before the fix the open blocked until a writer came: wait a bounded time, then unblock it.
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.to_str().unwrap().to_string();
        let reader = std::thread::spawn(move || tx.send(load(&path, &Options::default())).unwrap());
        let got = rx.recv_timeout(std::time::Duration::from_secs(10));
        if got.is_err() {
            drop(std::fs::OpenOptions::new().write(true).open(&fifo));
        }
        reader.join().unwrap();
        let f = fifo.display();
        assert_eq!(
            got.expect("a FIFO blocked the read").unwrap_err(),
            format!("{f}: not a regular file (a FIFO)")
        );
        assert_eq!(
            load_err(&dir),
            format!("{}: not a regular file (a directory)", dir.display())
        );
        assert_eq!(
            load_err("/dev/zero".as_ref()),
            "/dev/zero: not a regular file (a character device)"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_name_that_is_not_utf8_is_opened() {
        use std::os::unix::ffi::OsStrExt;
        let dir = scratch("name");
        let file = dir.join(std::ffi::OsStr::from_bytes(b"caf\xe9.config"));
        std::fs::write(&file, "7005 -> 127.0.0.1:8005\n").unwrap();
        assert_eq!(load(&file, &Options::default()).unwrap().0.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_over_the_size_cap_are_refused() {
        let dir = scratch("cap");
        let file = dir.join("big.config");
        assert_eq!(MAX_FILE_BYTES, 16 << 20, "the documented cap");
        // A sparse file: refused by its size, nothing read.
        std::fs::File::create(&file)
            .unwrap()
            .set_len(MAX_FILE_BYTES as u64 + 1)
            .unwrap();
        let big = format!(
            "{}: larger than 16 MiB, the limit for a configuration file",
            file.display()
        );
        assert_eq!(load_err(&file), big);
        // The cap at a small scale: exactly the cap is read, one byte more is not.
        let line = "7005 -> 127.0.0.1:8005\n";
        std::fs::write(&file, line).unwrap();
        assert_eq!(read_capped(&file, line.len()).unwrap(), line);
        let over = format!(
            "{}: larger than {} bytes, the limit for a configuration file",
            file.display(),
            line.len() - 1
        );
        assert_eq!(read_capped(&file, line.len() - 1).unwrap_err(), over);
        // A file whose size says nothing (procfs: 0) is cut by what is read.
        let maps = std::path::Path::new("/proc/self/maps");
        assert_eq!(std::fs::metadata(maps).unwrap().len(), 0);
        assert!(
            read_capped(maps, 16)
                .unwrap_err()
                .ends_with("larger than 16 bytes, the limit for a configuration file")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_hundred_thousand_mappings_parse_and_check() {
        // Distinct listen addresses on every port (127.0.X.1 for X = 0, 1), then a line that
        // overlaps the very first one: the only error, so every line was parsed and checked.
        let mut text: String = (0..100_000)
            .map(|i| format!("127.0.{}.1:{} -> 127.0.0.1:80\n", i / 60_000, 1 + i % 60_000))
            .collect();
        text.push_str("0.0.0.0:1 -> 127.0.0.1:80\n");
        assert_eq!(
            errs(&text),
            ["100001:1: 0.0.0.0:1 is already used by line 1 (127.0.0.1:1)"]
        );
    }

    #[test]
    fn a_listen_address_error_is_located_at_its_column() {
        // What a reload reports when a new line's port cannot be bound.
        let m = parse("7 -> h:1\n  127.0.0.1:8 -> h:1", &Options::default()).unwrap();
        let e = m[1].bind_error("cannot listen on 127.0.0.1:8: Address in use".into());
        assert_eq!(
            e.located("/etc/p\n.config"),
            "/etc/p\\x0a.config:2:3: cannot listen on 127.0.0.1:8: Address in use"
        );
    }

    #[test]
    fn the_shipped_setup_config_is_valid() {
        let text = include_str!("../setup.config");
        let m = parse(text, &Options::for_this_host()).unwrap();
        let lines: Vec<String> = m.iter().map(Mapping::canonical).collect();
        assert_eq!(
            lines,
            ["127.0.0.1:7005 -> 127.0.0.1:8005", "127.0.0.1:7006 -> 127.0.0.1:8006"]
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Lines built from the pieces the grammar cares about, so that inputs get past the first
    /// checks and reach every branch, mixed with arbitrary text.
    fn line() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("->".to_string()),
            Just("-".to_string()),
            Just(":".to_string()),
            Just("[".to_string()),
            Just("]".to_string()),
            Just("#".to_string()),
            Just("=".to_string()),
            Just(" ".to_string()),
            Just("\t".to_string()),
            Just("::1".to_string()),
            Just("127.0.0.1".to_string()),
            Just("dispatch".to_string()),
            Just("allow".to_string()),
            Just("/".to_string()),
            "[0-9]{1,6}",
            "[a-z]{1,8}",
            any::<String>(),
            // Control characters and invisible ones, which `any::<String>()` never yields.
            "[\\x00-\\x08\\x0e-\\x1f\\x7f\\u{80}-\\u{84}\\u{86}-\\u{9f}\\u{200b}\\u{202e}\\u{feff}]{1,3}",
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|p| p.concat())
    }

    /// Listen addresses on a few ports: wildcards of both families, specific and IPv4-mapped ones.
    fn bind() -> impl Strategy<Value = String> {
        let addr = prop::sample::select(vec![
            "",
            "0.0.0.0:",
            "127.0.0.1:",
            "127.0.0.2:",
            "[::]:",
            "[::1]:",
            "[::ffff:127.0.0.1]:",
            "[::ffff:0.0.0.0]:",
        ]);
        (addr, 1u16..=3).prop_map(|(a, p)| format!("{a}{p}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn the_overlap_check_is_the_pairwise_rule(binds in proptest::collection::vec(bind(), 0..12)) {
            // Reference: every line against each earlier line that was kept, naming the first that
            // overlaps (what the check did pairwise before it was made linear).
            // Lines on the very same address are one listener's routes: all but the first are
            // kept, and the first of them (each line here is `when=any`) is reported as one that
            // can never be chosen.
            let mut kept: Vec<Mapping> = Vec::new();
            let mut expected = Vec::new();
            let mut routed = Vec::new();
            for (i, b) in binds.iter().enumerate() {
                let mut m = parse_line(&format!("{b} -> h:1"), &Options::default()).unwrap().remove(0);
                m.line = i + 1;
                match kept.iter().find(|p| p.overlaps(&m)) {
                    Some(p) if p.bind == m.bind => {
                        if !routed.contains(&m.bind) {
                            routed.push(m.bind);
                            expected.push(format!(
                                "{}:1: {} is already used by line {} ({}): further lines on one address are routes, \
                                 and this one (no when=, so when=any) can never be chosen",
                                m.line, m.bind, p.line, p.bind
                            ));
                        }
                        kept.push(m);
                    }
                    Some(p) => expected.push(format!("{}:1: {} is already used by line {} ({})", m.line, m.bind, p.line, p.bind)),
                    None => kept.push(m),
                }
            }
            let text: Vec<String> = binds.iter().map(|b| format!("{b} -> h:1")).collect();
            let got: Vec<String> = match parse(&text.join("\n"), &Options::default()) {
                Ok(m) => {
                    prop_assert_eq!(m.len(), kept.len());
                    Vec::new()
                }
                Err(e) => e.iter().map(Error::to_string).collect(),
            };
            prop_assert_eq!(got, expected);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        #[test]
        fn no_input_makes_the_parser_panic(lines in proptest::collection::vec(line(), 0..6)) {
            let text = lines.join("\n");
            match parse(&text, &Options::default()) {
                Ok(mappings) => {
                    // Whatever parses prints back to a line that parses to the same mapping.
                    for m in mappings {
                        let again = parse(&m.canonical(), &Options::default()).expect("canonical parses");
                        prop_assert_eq!((again[0].bind, &again[0].backends), (m.bind, &m.backends));
                    }
                }
                Err(errors) => {
                    for e in errors {
                        prop_assert!(e.line >= 1 && e.col >= 1, "{e}");
                        prop_assert!(!e.message.is_empty());
                        // Words are echoed escaped: nothing that a terminal would act on.
                        prop_assert!(!e.message.chars().any(|c| c.is_control() || invisible(c)), "{e:?}");
                    }
                }
            }
        }
    }
}
