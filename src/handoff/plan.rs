//! The [`Plan`] a connection process runs on: everything it needs, prepared by the main process
//! before the fork as plain `Copy` data (no heap, no references but into shared pages), so that it
//! can be copied whole into the launch pad the child starts from. Built in the main process, read
//! in the connection process after fork; the connection's log line is completed from it on either
//! side (by the child, or by the main process when the fork failed).

use crate::backends::report::Report;
use crate::conn::Outcome;
use crate::handoff::bytes::ByteRecord;
use crate::handoff::fork_fds::Ticket;
use crate::log::Line;
use crate::proxy_protocol::Header;
use crate::sys::{self, SharedPage, SharedZeroed};
use crate::target::Target;
use nix::errno::Errno;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::atomic::AtomicU64;

/// The longest route name a log line shows whole.
pub(crate) const ROUTE_SHOWN: usize = 64;

/// Inward addresses a plan holds at most (all backends together).
pub(crate) const PLAN_ADDRS: usize = 32;

/// One inward address to try, and the backend (its index in the mapping) it belongs to.
#[derive(Clone, Copy)]
pub(crate) struct Attempt {
    pub(crate) backend: u8,
    pub(crate) target: Target,
}

/// Inward addresses, tried in order, by value: the connection's backend order, decided by the
/// main process (balance, health), each backend's addresses together.
#[derive(Clone, Copy)]
pub(crate) struct Targets([Option<Attempt>; PLAN_ADDRS]);

impl Targets {
    /// The first [`PLAN_ADDRS`] of `attempts`.
    pub(crate) fn new(attempts: impl IntoIterator<Item = Attempt>) -> Targets {
        let mut slots = [None; PLAN_ADDRS];
        for (slot, attempt) in slots.iter_mut().zip(attempts) {
            *slot = Some(attempt);
        }
        Targets(slots)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Attempt> {
        self.0.iter().flatten()
    }
}

/// What a connection process needs, prepared by the main process before it forks.
#[derive(Clone, Copy)]
pub(crate) struct Plan {
    /// The client socket's descriptor number in the child: its hand-off slot, set by `hand_off`
    /// (the main process's own descriptor for it stays with the caller, who closes it after the
    /// fork).
    pub(crate) client: RawFd,
    /// How the child leaves the main process's descriptor table; set by `hand_off`.
    pub(crate) ticket: Option<Ticket>,
    pub(crate) targets: Targets,
    pub(crate) connect_timeout_ms: u64,
    /// `client=... listen=...`: the middle of the connection's log line.
    pub(crate) line: Line,
    /// `CLOCK_MONOTONIC` ms when the client was accepted, for the logged duration.
    pub(crate) accepted_ms: u64,
    /// Close the connection after this long without a byte either way (0: never).
    pub(crate) idle_timeout_ms: u64,
    /// TCP keepalive idle seconds on both legs (0: off).
    pub(crate) keepalive_secs: u32,
    /// Process-wide byte counters, shared with the main process.
    pub(crate) totals: SharedPage<Totals>,
    /// Where this connection's own counts go when it ends, for its listener's metrics (`None`
    /// when every record was lent).
    pub(crate) bytes: Option<&'static ByteRecord>,
    /// Bytes per second at most, each direction (0: no cap).
    pub(crate) max_rate: u64,
    /// Where to say which backends failed and which one was used (`None`: no word was free).
    pub(crate) report: Option<Report>,
    /// The PROXY protocol header to send the backend before any client byte.
    pub(crate) proxy_header: Option<Header>,
    /// The local address inward connections are made from.
    pub(crate) source: Option<IpAddr>,
}

/// Byte counters in a `MAP_SHARED` page made by the main process before any fork: each connection
/// process adds its totals when it ends, and the main process reads them for the stats line.
#[repr(C)]
#[derive(Default)]
pub(crate) struct Totals {
    pub(crate) c2s: AtomicU64,
    pub(crate) s2c: AtomicU64,
}

// SAFETY: two atomics, valid when zero.
unsafe impl SharedZeroed for Totals {}

impl Plan {
    /// Formats the middle of a connection's log line (`client=... listen=... [via=...]
    /// [route=...]`: `via`, the sender of the PROXY header that carried the client's address), in
    /// the parent. A route's name is cut to [`ROUTE_SHOWN`] bytes (a `prefix:` can be long), so
    /// that the rest of the line always fits.
    pub(crate) fn describe(
        peer: &std::net::SocketAddr,
        listen_port: u16,
        via: Option<std::net::SocketAddr>,
        route: Option<&str>,
    ) -> Line {
        let mut line = Line::new();
        let _ = write!(line, "client={peer} listen={listen_port}");
        if let Some(proxy) = via {
            let _ = write!(line, " via={proxy}");
        }
        if let Some(name) = route {
            // Names are ASCII (`Condition`'s Display escapes everything else).
            let cut = &name.as_bytes()[..name.len().min(ROUTE_SHOWN)];
            line.key("route").push(cut);
            if cut.len() < name.len() {
                line.push("…".as_bytes());
            }
        }
        line
    }

    /// A connection's log line up to its target: `client=... listen=...`. It is stamped when it
    /// is written, at the connection's end (`ms=` keeps the duration), so lines of all processes
    /// are in time order.
    pub(crate) fn line_start(&self) -> Line {
        self.line
    }

    /// The target named in the log line of a connection that never reached one.
    pub(crate) fn first_target_label(&self) -> &[u8] {
        self.targets.iter().next().map_or("-", |a| a.target.label()).as_bytes()
    }

    /// Completes and writes a connection's log line:
    /// `ts=END portfwd[PID]: client=ADDR listen=PORT target=ADDR c2s=N s2c=N ms=N outcome=WORD
    /// [error=ERRNO]`.
    /// Async-signal-safe: no allocation, one `write(2)`.
    pub(crate) fn log_end(&self, line: &mut Line, c2s: u64, s2c: u64, outcome: Outcome, error: Option<Errno>) {
        line.key("c2s").num(c2s).key("s2c").num(s2c);
        line.key("ms").num(sys::monotonic_ms().saturating_sub(self.accepted_ms));
        line.key("outcome").push(outcome.name().as_bytes());
        if let Some(e) = error {
            // Errno's Debug is its symbolic name; formatting into the fixed buffer does not allocate.
            let _ = write!(line.key("error"), "{e:?}");
        }
        line.emit();
    }

    /// Logs a connection that never reached a target (its process or its fork failed).
    pub(crate) fn log_unconnected(&self, outcome: Outcome, error: Errno) {
        let mut line = self.line_start();
        line.key("target").push(self.first_target_label());
        self.log_end(&mut line, 0, 0, outcome, Some(error));
    }
}
