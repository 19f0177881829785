//! `setup.config`: one mapping per line, in the seed's form `7005 -> 192.168.0.1:8005`, with an
//! optional bind address (`127.0.0.1:7005`, `[::]:7005`), host names as targets, several targets
//! separated by `, ` (`7005 -> 10.0.0.1:8005, 10.0.0.2:8005`), `#` comments and per-line options
//! (`dispatch=accept`, see `options`). A line may map a range of ports: `7000-7099 ->
//! host:8000-8099` port by port, or `7000-7099 -> host:8000` many to one; it becomes one mapping
//! per listen port, each with the line's number.
//!
//! Every error of the file is reported at once as `FILE:LINE:COL: message`, and nothing starts.
//! Words of the file that a message echoes are cut and escaped (see [`shown::shown`]).

mod line;
mod overlap;
#[cfg(test)]
mod properties;
mod read;
mod resolve;
mod shown;
#[cfg(test)]
pub(crate) mod tests;

pub use resolve::{Resolved, resolve};

use crate::options::Options;
use crate::target;
use line::parse_line;
use overlap::Taken;
use read::read;
use shown::{escaped, shown_path};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

/// The largest file read: far above any real one (100,000 mappings take about 3 MiB), and a bound
/// on memory when the path names something huge.
pub const MAX_FILE_BYTES: usize = 16 << 20;

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

/// Parses a whole file's text. `defaults` are the options a line starts from (the command line's).
/// Lines with the same listen address are the routes of one listener, checked together (see
/// `grouping`). Does not resolve host names; see [`resolve()`].
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
