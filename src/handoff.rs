//! Connection hand-off: the seed's `fork()` + `OffloadConnection`.
//!
//! The main process calls [`hand_off`] for a socket that became active. It forks a *connection
//! process*, which connects inward and forks once more; from then on the connection process pumps
//! client→server and its child pumps server→client (see `pump`). The connection process waits for
//! its pump child, so its own exit marks the end of the connection and carries the outcome to the
//! main process in its exit status; it also writes the connection's log line.
//!
//! Everything a child needs is prepared before `fork()` ([`Plan`]): the main process has accept
//! threads, so after the fork a child makes only raw syscalls (`sys`) on that data and leaves with
//! `_exit`. It never allocates, locks, resolves names or returns into the caller's stack frames.
//! The plan is plain data copied into a [`LaunchPad`], and the child starts on the pad's stack:
//! it does not get the main process's heap or stack at all (see `fork_memory`).

use crate::fork_fds::{HandoffSlots, Ticket};
use crate::fork_memory::LaunchPad;
use crate::log::Line;
use crate::pump::{self, End};
use crate::sys;
use crate::target::{MAX_TARGETS, Target};
use nix::errno::Errno;
use std::fmt::Write as _;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

/// How a connection ended; the connection process's exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Outcome {
    /// Both directions ended with a FIN.
    Closed = 0,
    /// One side aborted (or failed) and both sides were reset.
    Reset = 1,
    /// No inward address accepted the connection in time; the client was reset.
    ConnectFailed = 2,
    /// A fork failed; the client (and the server, if connected) was reset.
    ForkFailed = 3,
    /// No byte moved either way for the idle timeout; both sides got a FIN.
    IdleTimeout = 4,
}

/// How many outcomes there are (for counters indexed by `Outcome as usize`).
pub const OUTCOMES: usize = 5;

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Closed => "closed",
            Outcome::Reset => "reset",
            Outcome::ConnectFailed => "connect-failed",
            Outcome::ForkFailed => "fork-failed",
            Outcome::IdleTimeout => "idle-timeout",
        }
    }

    /// The outcome a connection process reported through its wait status.
    pub fn from_wait_status(status: libc::c_int) -> Outcome {
        match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
            Some(0) => Outcome::Closed,
            Some(2) => Outcome::ConnectFailed,
            Some(3) => Outcome::ForkFailed,
            Some(4) => Outcome::IdleTimeout,
            _ => Outcome::Reset,
        }
    }
}

/// Inward addresses, tried in order, by value.
#[derive(Clone, Copy)]
pub struct Targets([Option<Target>; MAX_TARGETS]);

impl Targets {
    pub fn new(targets: &[Target]) -> Targets {
        let mut slots = [None; MAX_TARGETS];
        for (slot, target) in slots.iter_mut().zip(targets) {
            *slot = Some(*target);
        }
        Targets(slots)
    }

    fn iter(&self) -> impl Iterator<Item = &Target> {
        self.0.iter().flatten()
    }
}

/// What a connection process needs, prepared by the main process before it forks. Plain data, so
/// that it can be copied whole into the launch pad the child starts from.
#[derive(Clone, Copy)]
pub struct Plan {
    /// The accepted client socket (blocking). Owned by the caller, who closes it after the fork;
    /// [`hand_off`] puts it in the hand-off slot, and the child knows it by the slot's number.
    pub client: RawFd,
    /// How the child leaves the main process's descriptor table; set by [`hand_off`].
    pub ticket: Option<Ticket>,
    pub targets: Targets,
    pub connect_timeout_ms: u64,
    /// `ts=... portfwd[PID]: client=... listen=...`: the start of the connection's log line.
    pub line: Line,
    /// `CLOCK_MONOTONIC` ms when the client was accepted, for the logged duration.
    pub accepted_ms: u64,
    /// Close the connection after this long without a byte either way (0: never).
    pub idle_timeout_ms: u64,
    /// TCP keepalive idle seconds on both legs (0: off).
    pub keepalive_secs: u32,
    /// Process-wide byte counters, shared with the main process.
    pub totals: &'static Totals,
}

/// Byte counters in a `MAP_SHARED` page made by the main process before any fork: each connection
/// process adds its totals when it ends, and the main process reads them for the stats line.
#[repr(C)]
#[derive(Default)]
pub struct Totals {
    pub c2s: AtomicU64,
    pub s2c: AtomicU64,
}

impl Totals {
    /// Maps the shared page. Call once, before the first fork.
    pub fn map() -> std::io::Result<&'static Totals> {
        let page = sys::shared_page();
        if page.is_null() {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh zero-filled page, aligned and larger than `Totals` (two atomics, valid
        // when zero); it is never unmapped, so the reference may be 'static.
        Ok(unsafe { &*(page as *const Totals) })
    }
}

impl Plan {
    /// A connection's log line up to its target: `ts=... portfwd[PID]: client=... listen=...`.
    fn line_start(&self) -> Line {
        let mut line = Line::stamped();
        line.push(b" ").push(self.line.as_bytes());
        line
    }

    /// The target named in the log line of a connection that never reached one.
    fn first_target_label(&self) -> &[u8] {
        self.targets.iter().next().map_or("-", Target::label).as_bytes()
    }

    /// Formats the start of a connection's log line (`client=... listen=...`), in the parent.
    pub fn describe(peer: &std::net::SocketAddr, listen_port: u16) -> Line {
        let mut line = Line::new();
        let _ = write!(line, "client={peer} listen={listen_port}");
        line
    }
}

/// Forks the connection process for `plan`, which starts on `pad`'s stack with its own copy of
/// the plan, and on the main process's descriptor table until it has taken the client socket from
/// its slot in `slots` (see `fork_fds`). In the parent, returns the child's pid; the caller then closes its
/// copy of the client socket. On a fork failure, returns the error; the caller resets the client.
/// Signals are blocked across the fork so that no handler of the main process (signal-hook's
/// self-pipe writer) ever runs in the child.
pub fn hand_off(pad: &mut LaunchPad<Plan>, slots: &mut HandoffSlots, mut plan: Plan) -> Result<libc::pid_t, Errno> {
    let (index, ticket) = slots.load(plan.client)?;
    plan.ticket = Some(ticket);
    plan.client = ticket.slot;
    let plan: *const Plan = pad.load(plan);
    let old = sys::block_all_signals();
    // SAFETY: the child runs `child_entry` on the pad's stack, below the plan just loaded there;
    // it only makes async-signal-safe calls on that plan and leaves through `_exit`. Its first
    // system call leaves the shared descriptor table, and until it has, its slot stays as it is
    // (`slots` hands that slot out again only after).
    let forked = unsafe { sys::fork_onto(pad.stack_top(), child_entry, plan as *mut libc::c_void, true) };
    restore_signals(&old);
    slots.forked(index, forked.ok());
    forked
}

extern "C" fn child_entry(plan: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `plan` points at the plan `hand_off` loaded into the launch pad just before the
    // fork; this process has its own copy of the pad, which nothing else writes.
    connection_process(unsafe { &*(plan as *const Plan) })
}

fn restore_signals(old: &libc::sigset_t) {
    // SAFETY: `old` is the mask saved by `sys::block_all_signals`.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
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

/// The client socket's descriptor number in a connection process.
const CLIENT_FD: RawFd = 3;

/// State the two pumps of one connection share through one `MAP_SHARED` page.
#[repr(C)]
struct Shared {
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
    last_c2s: AtomicU64,
    last_s2c: AtomicU64,
}

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
fn reset_both(client: RawFd, server: RawFd) {
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
        let mut line = plan.line_start();
        line.key("target").push(plan.first_target_label());
        finish(&mut line, plan, 0, 0, Outcome::ForkFailed, Some(e))
    }
    reset_signals();
    // Its own process group: a terminal's Ctrl-C for the main process does not cut connections,
    // and `kill -- -PID` ends one connection's two processes.
    // SAFETY: setpgid on ourselves is async-signal-safe.
    unsafe { libc::setpgid(0, 0) };
    sys::set_process_name(b"portfwd-conn\0");

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
    if plan.idle_timeout_ms > 0 {
        // Blocked reads and writes wake after the idle time to check both directions' activity.
        let t = plan.idle_timeout_ms.div_ceil(1000) as libc::time_t;
        sys::set_recv_timeout(client, t);
        sys::set_recv_timeout(server, t);
        sys::set_send_timeout(client, t);
    }

    let page = sys::shared_page();
    if page.is_null() {
        reset_both(client, server);
        finish(&mut line, plan, 0, 0, Outcome::ForkFailed, Some(Errno::last()))
    }
    // SAFETY: the page is fresh, zero-filled, page-aligned and large enough for `Shared`, whose
    // fields are atomics (valid when zero). It stays mapped until this process and its child exit.
    let shared: &Shared = unsafe { &*(page as *const Shared) };

    // The pump child's exit interrupts a blocking call here (no SA_RESTART), so this process looks
    // at `shared.aborted` at once; see `pump_server_to_client`.
    sys::set_signal(libc::SIGCHLD, on_sigchld as *const () as libc::sighandler_t);

    let now = sys::monotonic_ms();
    shared.last_c2s.store(now, Ordering::SeqCst);
    shared.last_s2c.store(now, Ordering::SeqCst);

    // SAFETY: this process has a single thread; the child runs `pump_server_to_client` and exits.
    match unsafe { sys::fork() } {
        Ok(0) => pump_server_to_client(client, server, shared, plan.idle_timeout_ms),
        Ok(pid) => pump_client_to_server(client, server, pid, shared, &mut line, plan),
        Err(e) => {
            reset_both(client, server);
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

/// The pump child: server→client. On EOF it passes the FIN on; on an error it resets both sockets,
/// tells its parent through `shared.aborted`, wakes the parent's read of the client with
/// `shutdown(SHUT_RD)`, and exits (its exit also interrupts the parent with SIGCHLD).
fn pump_server_to_client(client: RawFd, server: RawFd, shared: &Shared, idle_ms: u64) -> ! {
    sys::set_process_name(b"portfwd-s2c\0");
    sys::close(2); // the connection process writes the log line
    let stop = || shared.should_stop(idle_ms, client, server);
    let end = pump::run(server, client, &shared.s2c, &shared.last_s2c, &stop);
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
fn pump_client_to_server(
    client: RawFd,
    server: RawFd,
    child: libc::pid_t,
    shared: &Shared,
    line: &mut Line,
    plan: &Plan,
) -> ! {
    sys::set_process_name(b"portfwd-c2s\0");
    // A write blocked on a server that does not read wakes now and then to see whether the other
    // direction aborted (a SIGCHLD can slip in just before the write blocks).
    sys::set_send_timeout(server, 1);
    let c2s = AtomicU64::new(0);
    let aborted = || shared.aborted.load(Ordering::SeqCst) != 0;
    let stop = || shared.should_stop(plan.idle_timeout_ms, client, server);
    let end = pump::run(client, server, &c2s, &shared.last_c2s, &stop);
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
    finish(line, plan, c2s, s2c, outcome, error)
}

/// Writes the connection's log line and exits with the outcome as status. Exiting closes the
/// sockets: a FIN already sent, or a RST where an abortive close was armed.
fn finish(line: &mut Line, plan: &Plan, c2s: u64, s2c: u64, outcome: Outcome, error: Option<Errno>) -> ! {
    emit_line(line, plan, c2s, s2c, outcome, error);
    sys::exit(outcome as i32)
}

/// Completes and writes a connection's log line:
/// `... client=ADDR listen=PORT target=ADDR c2s=N s2c=N ms=N outcome=WORD [error=ERRNO]`.
fn emit_line(line: &mut Line, plan: &Plan, c2s: u64, s2c: u64, outcome: Outcome, error: Option<Errno>) {
    line.key("c2s").num(c2s).key("s2c").num(s2c);
    line.key("ms").num(sys::monotonic_ms().saturating_sub(plan.accepted_ms));
    line.key("outcome").push(outcome.name().as_bytes());
    if let Some(e) = error {
        // Errno's Debug is its symbolic name; formatting into the fixed buffer does not allocate.
        let _ = write!(line.key("error"), "{e:?}");
    }
    line.emit();
}

/// Logs, from the main process, a connection whose fork failed (the caller resets the client).
pub fn log_fork_failed(plan: &Plan, error: Errno) {
    let mut line = plan.line_start();
    line.key("target").push(plan.first_target_label());
    emit_line(&mut line, plan, 0, 0, Outcome::ForkFailed, Some(error));
}

/// Resets a client the main process could not hand off: its copy is the only one.
pub fn reset(client: &impl AsRawFd) {
    sys::set_abortive_close(client.as_raw_fd());
}
