//! portfwd: a TCP port forwarder built the Unix way, one process per connection.
//!
//! Module map, in the order a connection meets them: [`cli`], [`config`] and [`options`] read the
//! command line and `setup.config`; [`target`] resolves inward addresses; [`listener`] opens the
//! ports; [`daemon`] and [`privileges`] detach and drop root; [`event_loop`] is the main loop, with
//! [`accept_pool`] accepting in parallel, [`access`] deciding who may come in and [`signals`]
//! reaping children; [`handoff`] forks a connection's processes (with [`fork_memory`] and [`fork_fds`] deciding what
//! of the main process they get) and [`pump`] moves its bytes.
//! [`log`] and [`sys`] serve them all; [`app`] wires start-up together.

pub mod accept_pool;
pub mod access;
pub mod app;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod event_loop;
pub mod fork_fds;
pub mod fork_memory;
pub mod handoff;
pub mod listener;
pub mod log;
pub mod options;
pub mod privileges;
pub mod proxy_protocol;
pub mod pump;
pub mod signals;
pub mod sys;
pub mod target;
