//! The connection process: everything here runs after `fork()`, in a child of a multi-threaded
//! main process, so it keeps to async-signal-safe work on data prepared before the fork (the
//! [`Plan`]): raw system calls through `sys` only, no allocation, no locks, no resolver, and it
//! leaves with `_exit`. See docs/design.md, "Rules after fork()".
//!
//! This is the seed's `OffloadConnection` (docs/design.md): the connection process connects inward
//! and forks once more; from then on it pumps client→server and its child pumps server→client ([`directions`],
//! each with a [`pump`]). It waits for its pump child, so its own exit marks the end of the
//! connection and carries the [`Outcome`] to the main process in its exit status; it also writes
//! the connection's log line.

mod directions;
mod outcome;
mod pump;

pub(crate) use outcome::{Outcome, OutcomeCounts};

use crate::handoff::plan::{Plan, Targets};
use crate::log::Line;
use crate::sys;
use crate::target::Target;
use directions::Shared;
use nix::errno::Errno;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

/// The client socket's descriptor number in a connection process.
const CLIENT_FD: RawFd = 3;

/// Where a connection process starts, on its launch pad's stack (`handoff::hand_off`).
pub(crate) extern "C" fn entry(plan: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `plan` points at the plan `hand_off` loaded into the launch pad just before the
    // fork; this process has its own copy of the pad, which nothing else writes.
    connection_process(unsafe { &*(plan as *const Plan) })
}

/// Gives a child the signal state it needs: default dispositions for the signals the main process
/// handles (their handlers write to a descriptor the child is about to close, and a reused
/// descriptor number would receive those bytes), and an empty mask. SIGPIPE stays ignored (Rust's
/// runtime ignores it at start), so a write to a closed peer is an `EPIPE` error.
fn reset_signals() {
    for &sig in crate::signals::HANDLED_SIGNALS.iter() {
        sys::set_signal(sig, libc::SIG_DFL);
    }
    sys::unblock_all_signals();
}

/// Turns on TCP keepalive: probes after `idle` seconds of silence, then every `idle / 4` seconds
/// (at least 1); four unanswered probes end the connection with an error, which resets the other
/// side.
fn set_keepalive(fd: RawFd, idle: u32) {
    let idle = idle.min(i32::MAX as u32) as libc::c_int;
    let _ = sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    let _ = sys::setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle);
    let _ = sys::setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, (idle / 4).max(1));
    let _ = sys::setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 4);
}

fn connection_process(plan: &Plan) -> ! {
    if let Some(ticket) = &plan.ticket
        && let Err(e) = ticket.leave_shared_table()
    {
        // Still on the main process's table: change no descriptor in it, reset the client (the
        // main process's close then sends the RST), log and go.
        sys::set_abortive_close(plan.client);
        plan.log_unconnected(Outcome::ForkFailed, e);
        sys::exit(Outcome::ForkFailed.exit_status())
    }
    reset_signals();
    // Its own process group: a terminal's Ctrl-C for the main process does not cut connections,
    // and `kill -- -PID` ends one connection's two processes.
    sys::own_process_group();
    sys::set_process_name(c"portfwd-conn");

    // Keep only the client socket (moved to fd 3) and stderr (the log). The main process made sure
    // descriptors 0-2 are open, so the client socket (in the hand-off slot) is not among them.
    if plan.client != CLIENT_FD {
        let _ = sys::dup2(plan.client, CLIENT_FD);
    }
    sys::close_from(CLIENT_FD + 1);
    sys::close(0);
    sys::close(1);
    let client = CLIENT_FD;
    let _ = sys::setsockopt_int(client, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);

    let mut line = plan.line_start();

    let (server, target) = match connect_any(&plan.targets, plan.connect_timeout_ms) {
        Ok(found) => found,
        Err(e) => {
            sys::set_abortive_close(client);
            line.key("target").push(plan.first_target_label());
            finish(&mut line, plan, 0, 0, Outcome::ConnectFailed, Some(e))
        }
    };
    line.key("target").push(target.label().as_bytes());
    let _ = sys::setsockopt_int(server, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
    if plan.keepalive_secs > 0 {
        set_keepalive(client, plan.keepalive_secs);
        set_keepalive(server, plan.keepalive_secs);
    }
    // Each socket sends one direction: the kernel paces what it sends (the fq qdisc, or TCP's own
    // pacing, which loopback gets too), and the pumps keep splicing. Where the kernel refuses the
    // option, that direction's pump paces itself (`pump::Pace`).
    let paced = |fd| {
        let rate = plan.max_rate.min(u64::from(u32::MAX - 1)) as u32 as libc::c_int;
        let kernel = sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_MAX_PACING_RATE, rate);
        if kernel.is_ok() { 0 } else { plan.max_rate }
    };
    let (pace_c2s, pace_s2c) = match plan.max_rate {
        0 => (0, 0),
        _ => (paced(server), paced(client)),
    };
    if plan.idle_timeout_ms > 0 {
        // Blocked reads and writes wake after the idle time to check both directions' activity.
        let t = plan.idle_timeout_ms.div_ceil(1000) as libc::time_t;
        sys::set_recv_timeout(client, t);
        sys::set_recv_timeout(server, t);
        sys::set_send_timeout(client, t);
    }

    let shared = match sys::SharedPage::<Shared>::map() {
        Ok(page) => page.get(),
        Err(e) => {
            directions::reset_both(client, server);
            finish(&mut line, plan, 0, 0, Outcome::ForkFailed, Some(e))
        }
    };

    // The pump child's exit interrupts a blocking call here (no SA_RESTART), so this process looks
    // at `shared.aborted` at once; see `directions::server_to_client`.
    sys::set_signal(libc::SIGCHLD, on_sigchld as *const () as libc::sighandler_t);

    let now = sys::monotonic_ms();
    shared.last_c2s.store(now, Ordering::SeqCst);
    shared.last_s2c.store(now, Ordering::SeqCst);

    // SAFETY: this process has a single thread; the child runs `server_to_client` and exits.
    match unsafe { sys::fork() } {
        Ok(0) => directions::server_to_client(client, server, shared, plan.idle_timeout_ms, pace_s2c),
        Ok(pid) => directions::client_to_server(client, server, pid, shared, &mut line, plan, pace_c2s),
        Err(e) => {
            directions::reset_both(client, server);
            finish(&mut line, plan, 0, 0, Outcome::ForkFailed, Some(e))
        }
    }
}

extern "C" fn on_sigchld(_: libc::c_int) {}

/// Tries each address in turn, within `timeout_ms` in all. Returns the blocking socket.
fn connect_any(targets: &Targets, timeout_ms: u64) -> Result<(RawFd, &Target), Errno> {
    let deadline = sys::monotonic_ms() + timeout_ms;
    let mut last = Errno::EHOSTUNREACH;
    for target in targets.iter() {
        let family = if target.addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let fd = sys::tcp_socket(family)?;
        match connect_one(fd, target, deadline) {
            Ok(()) => {
                sys::set_nonblocking(fd, false)?;
                return Ok((fd, target));
            }
            Err(e) => {
                sys::close(fd);
                last = e;
            }
        }
    }
    Err(last)
}

fn connect_one(fd: RawFd, target: &Target, deadline: u64) -> Result<(), Errno> {
    match sys::connect(fd, &target.addr) {
        Ok(()) => return Ok(()),
        Err(Errno::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    loop {
        let left = deadline.saturating_sub(sys::monotonic_ms());
        if left == 0 {
            return Err(Errno::ETIMEDOUT);
        }
        match sys::poll_one(fd, libc::POLLOUT, left.min(i32::MAX as u64) as libc::c_int) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => break,
            Err(e) => return Err(e),
        }
    }
    match sys::take_socket_error(fd)? {
        0 => Ok(()),
        e => Err(Errno::from_raw(e)),
    }
}

/// Writes the connection's log line and exits with the outcome as status. Exiting closes the
/// sockets: a FIN already sent, or a RST where an abortive close was armed.
fn finish(line: &mut Line, plan: &Plan, c2s: u64, s2c: u64, outcome: Outcome, error: Option<Errno>) -> ! {
    // The sockets first (their FIN or armed RST goes now): the log line may wait for a slow reader.
    sys::close_from(CLIENT_FD);
    plan.log_end(line, c2s, s2c, outcome, error);
    sys::exit(outcome.exit_status())
}
