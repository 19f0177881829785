//! portfwd: a TCP port forwarder built the Unix way, one process per connection.
//!
//! The library is the binary's inside; its one door is [`run`] (with [`cli`] to parse the command
//! line and the two start-up helpers `main` calls first). docs/design.md maps every module, and
//! says which run in the main process and which in a connection process after `fork()`.
//!
//! Main process: [`cli`], `config`, `options`, `target`, `listener`, `daemon`, `privileges`,
//! `app`, `event_loop`, `accept_pool`, `access`, `signals`, `handoff` (its side of the fork).
//! Connection process, after fork: `conn`. Both: `log`, `sys`, `handoff::plan`.

mod accept_pool;
mod access;
mod app;
pub mod cli;
mod config;
mod conn;
mod daemon;
mod event_loop;
mod handoff;
mod listener;
mod log;
mod options;
mod privileges;
mod signals;
mod sys;
mod target;

pub use app::{StartError, ensure_std_fds, lean_malloc, run};
