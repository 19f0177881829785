//! The integration tests: the real `portfwd` binary, started as a user starts it, against real
//! peers on loopback. One test binary, a module per concern; the helpers come from the `harness`
//! crate through `util`.
//!
//! Tests that load the whole machine, or measure what such load would disturb, take turns through
//! `serial()`; a test that cannot run here says `SKIP: <test>: <reason>` and returns.

mod util;

mod backends;
mod cli;
mod forwarding;
mod lifecycle;
mod limits;
mod logging;
mod operations;
mod proxy;
mod real_peers;
mod routing;
mod scripts;
