//! Prometheus metrics of the main process, served at `GET /metrics` (`--metrics ADDR:PORT`).
//!
//! **Main process only.** The registry allocates and takes locks (the crate's families are maps
//! behind a lock), which a forked child must never do. Connection processes therefore record
//! nothing here: whatever the main process learns about a connection — that it was accepted,
//! refused, handed over, that its process exited with an outcome after so many milliseconds —
//! the main process records itself, in its loop, through the handles of [`families`].
//!
//! **What is counted when.** `portfwd_connections_total`, `portfwd_bytes_total` and
//! `portfwd_connection_duration_seconds` are recorded when a connection *ends*
//! ([`RouteMetrics::connection_ended`]): that is when the main process learns how it ended and
//! how many bytes it moved, so a long transfer's bytes appear at once when it closes, not as they
//! flow. The gauges (`portfwd_live_connections`, `portfwd_waiting_sockets`,
//! `portfwd_backend_up`) are set by the loop when they change. Refusals, backend failures, fork
//! failures and dropped log lines are counted as they happen. Every series of a listener (each
//! outcome, reason and direction) exists at 0 from the moment [`Metrics::listener`] makes its
//! handle. Labels: `listen="ADDR:PORT"` everywhere but the process-wide counters; `route` (empty
//! for a listener's one route today) on the connection and backend families; `backend` on the
//! backend families. An empty label is the same as no label to Prometheus, so named routes can
//! come later without changing any family.
//!
//! **Crates.** The registry and its encoding are the official `prometheus-client` crate; its
//! Prometheus text format encoder (version 0.0.4, `text/plain; version=0.0.4; charset=utf-8`)
//! is what the server sends, which `promtool check metrics` accepts and Prometheus scrapes.
//! The `process_*` metrics are hand-written ([`process`]): no well-kept crate provides them for
//! `prometheus-client`. The HTTP side ([`http`], [`server`]) is hand-written too: an HTTP crate
//! would bring its own runtime or threads, and the endpoint must live in the main loop's epoll
//! set without ever blocking it.
//!
//! **Cost of a scrape.** Rendering walks the series, whose number is bounded by the listeners,
//! routes and backends that exist, not by the connections seen; the rendered text is kept in a
//! buffer reused from scrape to scrape.
//!
//! Wiring, for the event loop: make one [`Metrics`] and, for `--metrics`, one [`MetricsServer`];
//! put [`MetricsServer::listener_fd`] in the epoll set (`EPOLLIN`), and on its readiness call
//! [`MetricsServer::on_listener_ready`] and add each accepted descriptor
//! ([`MetricsServer::client_fd`]) for `EPOLLIN`; on a client's readiness call
//! [`MetricsServer::on_client_ready`] and switch it to `EPOLLOUT` on [`Interest::Write`] (or
//! forget it on [`Interest::Closed`]); include [`MetricsServer::next_deadline`] in the epoll
//! timeout and call [`MetricsServer::expire`] when it passes. Keep a [`ListenerMetrics`] next
//! to each listener (from [`Metrics::listener`], with the `ADDR:PORT` the log uses) and record
//! through it.

pub(crate) mod families;
pub(crate) mod http;
pub(crate) mod process;
pub(crate) mod server;

pub(crate) use families::{ListenerMetrics, Metrics, RefuseReason};
pub(crate) use server::{Interest, MetricsServer};

#[cfg(test)]
mod tests;
