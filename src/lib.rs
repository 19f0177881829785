//! portfwd: a TCP port forwarder built the Unix way, one process per connection.
//!
//! Module map, in the order a connection meets them: [`cli`] and [`target`] read the command line
//! and resolve the inward address; [`listener`] opens the port; [`event_loop`] is the main loop,
//! with [`accept_pool`] accepting in parallel and [`signals`] reaping children; [`handoff`] forks a
//! connection's processes and [`pump`] moves its bytes. [`log`] and [`sys`] serve them all.

pub mod accept_pool;
pub mod app;
pub mod cli;
pub mod event_loop;
pub mod handoff;
pub mod listener;
pub mod log;
pub mod pump;
pub mod signals;
pub mod sys;
pub mod target;
