//! A connection's two directions and how they end together, after fork: the connection process
//! pumps client→server ([`client_to_server`]) while its child pumps server→client
//! ([`server_to_client`]); they share one `MAP_SHARED` page ([`Shared`]). A FIN is passed on as a
//! FIN, an error or reset on either side as a reset of both (docs/design.md, "How an end travels
//! between the two pumps").

use super::pump::{self, End};
use super::{Outcome, finish};
use crate::handoff::plan::Plan;
use crate::log::Line;
use crate::sys::{self, SharedZeroed};
use nix::errno::Errno;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

/// State the two pumps of one connection share through one `MAP_SHARED` page.
#[repr(C)]
pub(super) struct Shared {
    /// Set by the server→client pump when it saw an abort and has reset both sockets.
    aborted: AtomicU32,
    /// Bytes the server→client pump delivered.
    s2c: AtomicU64,
    /// The errno that made the server→client pump abort, for the log line.
    s2c_error: AtomicI32,
    /// Set by either pump when the connection went idle and both sockets were shut down.
    idle: AtomicU32,
    /// Set by a pump just before it passes a FIN on (c2s: to the server; s2c: to the client).
    c2s_fin: AtomicU32,
    s2c_fin: AtomicU32,
    /// `CLOCK_MONOTONIC` ms of the last byte each way, for the idle timeout.
    pub(super) last_c2s: AtomicU64,
    pub(super) last_s2c: AtomicU64,
}

// SAFETY: every field is an atomic, valid when zero.
unsafe impl SharedZeroed for Shared {}

impl Shared {
    /// What both pumps ask when a blocking call returns early: has the other pump aborted, or has
    /// the connection been idle for `idle_ms`? The pump that finds it idle shuts both sockets down
    /// (a FIN each way, and every blocked call of the other pump returns).
    fn should_stop(&self, idle_ms: u64, client: RawFd, server: RawFd) -> bool {
        if self.aborted.load(Ordering::SeqCst) != 0 || self.idle.load(Ordering::SeqCst) != 0 {
            return true;
        }
        if idle_ms == 0 {
            return false;
        }
        let last = self
            .last_c2s
            .load(Ordering::SeqCst)
            .max(self.last_s2c.load(Ordering::SeqCst));
        if sys::monotonic_ms().saturating_sub(last) < idle_ms {
            return false;
        }
        self.idle.store(1, Ordering::SeqCst);
        let _ = sys::shutdown(client, libc::SHUT_RDWR);
        let _ = sys::shutdown(server, libc::SHUT_RDWR);
        true
    }
}

/// Whether an end-of-file just read from `fd` was really a reset. A socket reports an error once:
/// when the other pump's write to the same socket took the RST's error first, a read afterwards
/// sees only end-of-file. A FIN leaves the connection in CLOSE_WAIT (or TIME_WAIT or CLOSING when
/// we had sent ours first); it is in CLOSE after a FIN only once our own FIN went out and was
/// acknowledged, and the other pump raises `our_fin` before it sends that FIN.
fn eof_was_reset(fd: RawFd, our_fin: &AtomicU32) -> bool {
    sys::tcp_state(fd) == Some(sys::TCP_CLOSE) && our_fin.load(Ordering::SeqCst) == 0
}

/// Arms both sockets to send a RST on their last close.
pub(super) fn reset_both(client: RawFd, server: RawFd) {
    sys::set_abortive_close(client);
    sys::set_abortive_close(server);
}

/// Ends a connection as an abort: both sockets reset on their last close, the pump child killed
/// and reaped (its copies close with it).
fn abort_both(client: RawFd, server: RawFd, child: libc::pid_t) {
    reset_both(client, server);
    sys::kill(child, libc::SIGKILL);
    let _ = sys::wait_for(child);
}

/// The pump child: server→client. On EOF it passes the FIN on; on an error it resets both sockets,
/// tells its parent through `shared.aborted`, wakes the parent's read of the client with
/// `shutdown(SHUT_RD)`, and exits (its exit also interrupts the parent with SIGCHLD).
/// `pace`: bytes per second this pump keeps to itself (0: none; the kernel paces, or no cap).
pub(super) fn server_to_client(client: RawFd, server: RawFd, shared: &Shared, idle_ms: u64, pace: u64) -> ! {
    sys::set_process_name(c"portfwd-s2c");
    sys::close(2); // the connection process writes the log line
    let stop = || shared.should_stop(idle_ms, client, server);
    let end = pump::run(server, client, &shared.s2c, &shared.last_s2c, pace, &stop);
    let error = match end {
        _ if shared.idle.load(Ordering::SeqCst) != 0 => sys::exit(0),
        End::Eof if !eof_was_reset(server, &shared.c2s_fin) => {
            shared.s2c_fin.store(1, Ordering::SeqCst);
            match sys::shutdown(client, libc::SHUT_WR) {
                Ok(()) => sys::exit(0),
                Err(e) => e,
            }
        }
        End::Eof => Errno::ECONNRESET,
        End::ReadFailed(e) | End::WriteFailed(e) => e,
        End::Stopped => Errno::ECANCELED,
    };
    shared.s2c_error.store(error as i32, Ordering::SeqCst);
    reset_both(client, server);
    shared.aborted.store(1, Ordering::SeqCst);
    let _ = sys::shutdown(client, libc::SHUT_RD);
    sys::exit(1)
}

/// The connection process's own pump: client→server, then waits for the pump child and logs.
pub(super) fn client_to_server(
    client: RawFd,
    server: RawFd,
    child: libc::pid_t,
    shared: &Shared,
    line: &mut Line,
    plan: &Plan,
    pace: u64,
) -> ! {
    sys::set_process_name(c"portfwd-c2s");
    // A write blocked on a server that does not read wakes now and then to see whether the other
    // direction aborted (a SIGCHLD can slip in just before the write blocks).
    sys::set_send_timeout(server, 1);
    let c2s = AtomicU64::new(0);
    let aborted = || shared.aborted.load(Ordering::SeqCst) != 0;
    let stop = || shared.should_stop(plan.idle_timeout_ms, client, server);
    let end = pump::run(client, server, &c2s, &shared.last_c2s, pace, &stop);
    let mut error = None;
    let outcome = match end {
        _ if shared.idle.load(Ordering::SeqCst) != 0 => {
            let _ = sys::wait_for(child);
            Outcome::IdleTimeout
        }
        End::Eof if !aborted() && !eof_was_reset(client, &shared.s2c_fin) => {
            shared.c2s_fin.store(1, Ordering::SeqCst);
            match sys::shutdown(server, libc::SHUT_WR) {
                Ok(()) => {
                    // Our direction is done; the other flows until the server ends it (or aborts).
                    let _ = sys::wait_for(child);
                    if aborted() {
                        error = Some(Errno::from_raw(shared.s2c_error.load(Ordering::SeqCst)));
                        Outcome::Reset
                    } else {
                        Outcome::Closed
                    }
                }
                Err(e) => {
                    error = Some(e);
                    abort_both(client, server, child);
                    Outcome::Reset
                }
            }
        }
        End::Eof if !aborted() => {
            // The client reset, and the other pump's write took the error.
            error = Some(Errno::ECONNRESET);
            abort_both(client, server, child);
            Outcome::Reset
        }
        End::Eof | End::Stopped => {
            let _ = sys::wait_for(child);
            error = Some(Errno::from_raw(shared.s2c_error.load(Ordering::SeqCst)));
            Outcome::Reset
        }
        End::ReadFailed(e) | End::WriteFailed(e) => {
            error = Some(e);
            abort_both(client, server, child);
            Outcome::Reset
        }
    };
    let (c2s, s2c) = (c2s.load(Ordering::Relaxed), shared.s2c.load(Ordering::SeqCst));
    plan.totals.c2s.fetch_add(c2s, Ordering::Relaxed);
    plan.totals.s2c.fetch_add(s2c, Ordering::Relaxed);
    if let Some(record) = plan.bytes {
        record.store(c2s, s2c);
    }
    finish(line, plan, c2s, s2c, outcome, error)
}
