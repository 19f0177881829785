//! portfwd's harness: what the comparison and load tools and the integration tests share.
//!
//! [`reference`](mod@reference) builds the C reference of the seed's server; [`launch`] runs any forwarder with
//! the seed's CLI in a process group of its own, and [`compare`] and [`load`] are the comparison
//! suite and the seed's load test on top of it. [`forwarder`] starts portfwd as a user would;
//! [`backend`], [`net`] and [`pattern`] are the other end of the wire and the bytes on it;
//! [`procs`] reads processes from /proc; [`env`](mod@env) holds waiting, temporary directories, the
//! descriptor limit, taking turns and skipping.

pub mod backend;
pub mod compare;
pub mod env;
pub mod forwarder;
pub mod launch;
pub mod load;
pub mod net;
pub mod pattern;
pub mod procs;
pub mod reference;

pub use backend::Backend;
pub use env::{KillOnDrop, TempDir, is_root, need_descriptors, promtool_check, serial, skip, wait_child, wait_until};
pub use forwarder::{Forwarder, field};
pub use net::{
    abort, assert_reset, connect_from, echo, echo_check, exchange, free_port, ipv6_loopback, listen, local, port_taken,
    read_outcome, read_to_end_or_err, refused, retry_ports, round_trip, round_trip_to,
};
pub use pattern::{pattern_hash, read_hash, send_pattern};
pub use procs::{alive, descendants, fd_targets, stat};
