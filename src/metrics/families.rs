//! The registry and its families, and the handles the event loop records through.
//!
//! Every series a listener, route or backend has is created when its handle is made, so a scrape
//! shows them at 0 from the start (`rate()` needs the first sample) and recording an event is an
//! atomic add on a handle the caller keeps: no label set built, no map looked up, no allocation.

use super::process::ProcessCollector;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};

/// How a connection ended: the `outcome` label of `portfwd_connections_total` is the log's word
/// for it, and its series are the outcome table's (`conn/outcome.rs`), in the table's order.
pub(crate) use crate::conn::Outcome;

/// Why a client was turned away at once: the `reason` label of `portfwd_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefuseReason {
    /// A connection cap (`max_connections`) was reached.
    Cap,
    /// `max_per_source` live connections from the client's address.
    MaxPerSource,
    /// An access rule denied the client.
    AccessDenied,
    /// The client's PROXY protocol header was malformed.
    BadProxyHeader,
}

impl RefuseReason {
    pub const ALL: [RefuseReason; 4] = [
        RefuseReason::Cap,
        RefuseReason::MaxPerSource,
        RefuseReason::AccessDenied,
        RefuseReason::BadProxyHeader,
    ];

    /// The label value; the same words as the log's `reason=`.
    pub fn name(self) -> &'static str {
        match self {
            RefuseReason::Cap => "cap",
            RefuseReason::MaxPerSource => "max-per-source",
            RefuseReason::AccessDenied => "access-denied",
            RefuseReason::BadProxyHeader => "bad-proxy-header",
        }
    }
}

impl EncodeLabelValue for RefuseReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.name(), encoder)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Direction {
    C2s,
    S2c,
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let name = match self {
            Direction::C2s => "c2s",
            Direction::S2c => "s2c",
        };
        EncodeLabelValue::encode(&name, encoder)
    }
}

// Label sets. Strings are `Arc<str>`, shared by every series of a listener, route or backend.

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ListenLabels {
    listen: Arc<str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusedLabels {
    listen: Arc<str>,
    reason: RefuseReason,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    listen: Arc<str>,
    route: Arc<str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    listen: Arc<str>,
    route: Arc<str>,
    /// [`Outcome::name`].
    outcome: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BytesLabels {
    listen: Arc<str>,
    route: Arc<str>,
    direction: Direction,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BackendLabels {
    listen: Arc<str>,
    route: Arc<str>,
    backend: Arc<str>,
}

/// Upper bounds of `portfwd_connection_duration_seconds`, 1 ms to 1 h.
pub const DURATION_BUCKETS: [f64; 20] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The routes and backends that have series, to find them again in `remove_listener` (the
/// crate's families cannot list their label sets).
#[derive(Default)]
struct Made {
    routes: Vec<(Arc<str>, Arc<str>)>,
    backends: Vec<BackendLabels>,
}

#[derive(Clone)]
struct Families {
    made: Arc<Mutex<Made>>,
    connections: Family<OutcomeLabels, Counter>,
    bytes: Family<BytesLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
    live: Family<ListenLabels, Gauge>,
    waiting: Family<ListenLabels, Gauge>,
    refused: Family<RefusedLabels, Counter>,
    backend_up: Family<BackendLabels, Gauge>,
    backend_failures: Family<BackendLabels, Counter>,
}

/// The main process's metrics: the registry, and the families the handles record into.
pub struct Metrics {
    registry: Registry,
    families: Families,
    fork_failures: Counter,
    log_lines_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let families = Families {
            made: Arc::default(),
            connections: Family::default(),
            bytes: Family::default(),
            duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            live: Family::default(),
            waiting: Family::default(),
            refused: Family::default(),
            backend_up: Family::default(),
            backend_failures: Family::default(),
        };
        let fork_failures = Counter::default();
        let log_lines_dropped = Counter::default();
        let mut r = Registry::default();
        let f = &families;
        // The crate adds `_total` to counters and a full stop to each help text.
        r.register(
            "portfwd_connections",
            "Connections ended, by outcome (counted when the connection ends)",
            f.connections.clone(),
        );
        r.register(
            "portfwd_bytes",
            "Bytes delivered client to server (c2s) and server to client (s2c), counted when the connection ends",
            f.bytes.clone(),
        );
        r.register(
            "portfwd_connection_duration_seconds",
            "Time from accepting a connection to its end",
            f.duration.clone(),
        );
        r.register(
            "portfwd_live_connections",
            "Sockets waiting for their first byte plus connection processes",
            f.live.clone(),
        );
        r.register(
            "portfwd_waiting_sockets",
            "Accepted sockets waiting in the main process for their first byte",
            f.waiting.clone(),
        );
        r.register(
            "portfwd_refused",
            "Clients turned away at once, by reason",
            f.refused.clone(),
        );
        r.register(
            "portfwd_backend_up",
            "1 if the backend is taken as reachable, 0 if not",
            f.backend_up.clone(),
        );
        r.register(
            "portfwd_backend_failures",
            "Failed attempts to connect to the backend",
            f.backend_failures.clone(),
        );
        r.register(
            "portfwd_fork_failures",
            "Connection processes the main process could not fork",
            fork_failures.clone(),
        );
        r.register(
            "portfwd_log_lines_dropped",
            "Log lines not written (throttled or failed writes)",
            log_lines_dropped.clone(),
        );
        r.register_collector(Box::new(ProcessCollector::new()));
        Metrics {
            registry: r,
            families,
            fork_failures,
            log_lines_dropped,
        }
    }

    /// The handle of a listener, `listen` as the log names it (`ADDR:PORT`), with the series of
    /// its default route (`route=""`). Makes its series (at 0) the first time; a second call for
    /// the same `listen` returns a handle to the same series.
    pub fn listener(&self, listen: &str) -> ListenerMetrics {
        let listen: Arc<str> = listen.into();
        let f = &self.families;
        let refused = RefuseReason::ALL.map(|reason| {
            f.refused.get_or_create_owned(&RefusedLabels {
                listen: listen.clone(),
                reason,
            })
        });
        let labels = ListenLabels { listen: listen.clone() };
        ListenerMetrics {
            live: f.live.get_or_create_owned(&labels),
            waiting: f.waiting.get_or_create_owned(&labels),
            refused,
            default_route: RouteMetrics::new(f.clone(), listen.clone(), "".into()),
            listen,
            families: f.clone(),
        }
    }

    /// Drops every series of `listen` (a listener closed by a reload), so that the registry does
    /// not grow with the listeners a process ever had. Handles still held keep counting, unseen.
    pub fn remove_listener(&self, listen: &str) {
        let f = &self.families;
        let mut made = f.made.lock().unwrap_or_else(|e| e.into_inner());
        for (l, route) in made.routes.iter().filter(|(l, _)| &**l == listen) {
            for outcome in Outcome::ALL {
                let (listen, route, outcome) = (l.clone(), route.clone(), outcome.name());
                f.connections.remove(&OutcomeLabels { listen, route, outcome });
            }
            for direction in [Direction::C2s, Direction::S2c] {
                let (listen, route) = (l.clone(), route.clone());
                f.bytes.remove(&BytesLabels {
                    listen,
                    route,
                    direction,
                });
            }
            let (listen, route) = (l.clone(), route.clone());
            f.duration.remove(&RouteLabels { listen, route });
        }
        for labels in made.backends.iter().filter(|b| &*b.listen == listen) {
            f.backend_up.remove(labels);
            f.backend_failures.remove(labels);
        }
        made.routes.retain(|(l, _)| &**l != listen);
        made.backends.retain(|b| &*b.listen != listen);
        let listen: Arc<str> = listen.into();
        for reason in RefuseReason::ALL {
            let listen = listen.clone();
            f.refused.remove(&RefusedLabels { listen, reason });
        }
        let labels = ListenLabels { listen };
        f.live.remove(&labels);
        f.waiting.remove(&labels);
    }

    /// The main process could not fork a connection process. (Record the connection's end with
    /// [`Outcome::ForkFailed`] on its listener as well.)
    pub fn fork_failed(&self) {
        self.fork_failures.inc();
    }

    /// `n` log lines were not written.
    pub fn log_dropped(&self, n: u64) {
        self.log_lines_dropped.inc_by(n);
    }

    /// Appends the Prometheus text format (version 0.0.4, [`CONTENT_TYPE`]) of every family and
    /// of the `process_*` metrics to `out`.
    pub fn render(&self, out: &mut String) {
        // Writing into a String cannot fail; an error would be the crate's bug.
        prometheus_text::encode(out, &self.registry).expect("encoding into a String");
    }
}

/// The `Content-Type` of what [`Metrics::render`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// One listener's series. Cheap to clone; every method is an atomic operation.
#[derive(Clone)]
pub struct ListenerMetrics {
    listen: Arc<str>,
    live: Gauge,
    waiting: Gauge,
    refused: [Counter; RefuseReason::ALL.len()],
    default_route: RouteMetrics,
    families: Families,
}

impl ListenerMetrics {
    /// A connection of the default route ended. See [`RouteMetrics::connection_ended`].
    pub fn connection_ended(&self, outcome: Outcome, c2s: u64, s2c: u64, duration_ms: u64) {
        self.default_route.connection_ended(outcome, c2s, s2c, duration_ms);
    }

    /// A client was turned away at once.
    pub fn refused(&self, reason: RefuseReason) {
        let i = RefuseReason::ALL.iter().position(|&r| r == reason);
        self.refused[i.expect("every reason is in ALL")].inc();
    }

    /// Live connections of the listener: waiting sockets plus connection processes.
    pub fn set_live(&self, n: usize) {
        self.live.set(gauge_value(n));
    }

    /// Sockets of the listener waiting for their first byte.
    pub fn set_waiting(&self, n: usize) {
        self.waiting.set(gauge_value(n));
    }

    /// The default route's handle.
    pub fn default_route(&self) -> &RouteMetrics {
        &self.default_route
    }

    /// The handle of a named route of this listener (made, with its series at 0, the first time).
    pub fn route(&self, route: &str) -> RouteMetrics {
        RouteMetrics::new(self.families.clone(), self.listen.clone(), route.into())
    }

    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "wired by the routing, backends and logging work; registered and empty until then"
        )
    )]
    /// A backend of the default route. See [`RouteMetrics::backend`].
    pub fn backend(&self, backend: &str, up: bool) -> BackendMetrics {
        self.default_route.backend(backend, up)
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One route's series: how its connections ended, their bytes and durations.
#[derive(Clone)]
pub struct RouteMetrics {
    listen: Arc<str>,
    route: Arc<str>,
    connections: [Counter; Outcome::ALL.len()],
    c2s: Counter,
    s2c: Counter,
    duration: Histogram,
    families: Families,
}

impl RouteMetrics {
    fn new(families: Families, listen: Arc<str>, route: Arc<str>) -> RouteMetrics {
        let f = &families;
        let connections = Outcome::ALL.map(|outcome| {
            f.connections.get_or_create_owned(&OutcomeLabels {
                listen: listen.clone(),
                route: route.clone(),
                outcome: outcome.name(),
            })
        });
        let bytes = |direction| {
            f.bytes.get_or_create_owned(&BytesLabels {
                listen: listen.clone(),
                route: route.clone(),
                direction,
            })
        };
        let (c2s, s2c) = (bytes(Direction::C2s), bytes(Direction::S2c));
        let duration = f.duration.get_or_create_owned(&RouteLabels {
            listen: listen.clone(),
            route: route.clone(),
        });
        let mut made = f.made.lock().unwrap_or_else(|e| e.into_inner());
        if !made.routes.iter().any(|(l, r)| *l == listen && *r == route) {
            made.routes.push((listen.clone(), route.clone()));
        }
        drop(made);
        RouteMetrics {
            listen,
            route,
            connections,
            c2s,
            s2c,
            duration,
            families,
        }
    }

    /// A connection ended: its outcome, the bytes delivered each way and its duration since it
    /// was accepted. Bytes are counted here, at the end, because only then does the main process
    /// learn them: a long connection's bytes show up when it closes.
    pub fn connection_ended(&self, outcome: Outcome, c2s: u64, s2c: u64, duration_ms: u64) {
        // The table's position (its test checks that `as usize` is that).
        self.connections[outcome as usize].inc();
        self.c2s.inc_by(c2s);
        self.s2c.inc_by(s2c);
        self.duration.observe(duration_ms as f64 / 1000.0);
    }

    /// The handle of one of the route's backends (`backend` as the log names a target,
    /// `ADDR:PORT`), its `portfwd_backend_up` set to `up`.
    pub fn backend(&self, backend: &str, up: bool) -> BackendMetrics {
        let labels = BackendLabels {
            listen: self.listen.clone(),
            route: self.route.clone(),
            backend: backend.into(),
        };
        let mut made = self.families.made.lock().unwrap_or_else(|e| e.into_inner());
        if !made.backends.contains(&labels) {
            made.backends.push(labels.clone());
        }
        drop(made);
        let metrics = BackendMetrics {
            up: self.families.backend_up.get_or_create_owned(&labels),
            failures: self.families.backend_failures.get_or_create_owned(&labels),
        };
        metrics.set_up(up);
        metrics
    }
}

/// One backend's series.
#[derive(Clone)]
pub struct BackendMetrics {
    up: Gauge,
    failures: Counter,
}

impl BackendMetrics {
    pub fn set_up(&self, up: bool) {
        self.up.set(i64::from(up));
    }

    /// A connection to the backend failed.
    pub fn failure(&self) {
        self.failures.inc();
    }
}
