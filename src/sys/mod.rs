//! Thin wrappers over the raw system calls a forked child makes: the only door to libc after
//! `fork()`. Runs in both processes (the main process uses a few of them too, such as
//! [`monotonic_ms`], where both sides must read the same clock).
//!
//! Everything here is callable in a forked child of a multi-threaded process: each function is a
//! single syscall (or a fixed, short sequence of them) on data prepared by the caller, with no
//! allocation, no locks and no formatting. Errors come back as [`Errno`] values read from the
//! thread's `errno`, which is itself async-signal-safe. Each `unsafe` block says why it is sound.
//!
//! The main process prefers `nix` and `socket2` where they have a safe call; what stays here for
//! it is what they do not offer (the fork onto a launch pad, `MADV_DONTFORK`, shared pages).

mod memory;
mod socket;

pub(crate) use memory::{
    SharedArray, SharedPage, SharedZeroed, exclude_from_children, map_with_guard, page_size, program_break, trim_heap,
};
pub(crate) use socket::{
    TCP_CLOSE, TCP_CLOSE_WAIT, bind, connect, peek, peek_waiting, pipe, poll_one, recv_queued, send_nowait,
    set_abortive_close, set_nonblocking, set_recv_timeout, set_send_timeout, setsockopt_int, shutdown, splice,
    take_socket_error, tcp_socket, tcp_state,
};

use nix::errno::Errno;
use std::os::fd::RawFd;

/// Result of a raw syscall: the non-negative return value or the errno it set.
pub(crate) type SysResult<T> = Result<T, Errno>;

fn check(ret: libc::c_int) -> SysResult<libc::c_int> {
    if ret < 0 { Err(Errno::last()) } else { Ok(ret) }
}

fn check_size(ret: libc::ssize_t) -> SysResult<usize> {
    if ret < 0 { Err(Errno::last()) } else { Ok(ret as usize) }
}

/// `close(2)`. Errors are ignored: on Linux the descriptor is released even when close reports one.
pub(crate) fn close(fd: RawFd) {
    // SAFETY: closing a descriptor number has no memory-safety preconditions; callers own `fd`.
    unsafe { libc::close(fd) };
}

/// `dup2(2)`.
pub(crate) fn dup2(from: RawFd, to: RawFd) -> SysResult<RawFd> {
    // SAFETY: plain syscall on integers.
    check(unsafe { libc::dup2(from, to) })
}

/// Closes every descriptor numbered `first` or above. Uses `close_range(2)` (Linux 5.9+) and falls
/// back to closing one by one up to the soft `RLIMIT_NOFILE` on older kernels.
pub(crate) fn close_from(first: RawFd) {
    // SAFETY: close_range takes integers only; it cannot fault.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first as libc::c_uint, libc::c_uint::MAX, 0) };
    if ret == 0 {
        return;
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur.min(1 << 20) as RawFd
    } else {
        1024
    };
    for fd in first..max {
        close(fd);
    }
}

/// Leaves a descriptor table shared with the parent (`CLONE_FILES`) for a private one that holds
/// only descriptors below `first`: `close_range(first, ~0, CLOSE_RANGE_UNSHARE)`, with which the
/// kernel copies just the first slots of the table (at most 64 here) instead of all of them. On
/// kernels without it (before 5.9), `unshare(CLONE_FILES)` copies the whole table and the rest is
/// then closed: slower, same result.
pub(crate) fn leave_shared_fd_table(first: RawFd) -> SysResult<()> {
    // SAFETY: close_range takes integers only; it cannot fault.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_UNSHARE,
        )
    };
    if ret == 0 {
        return Ok(());
    }
    // SAFETY: unshare with CLONE_FILES only replaces this task's descriptor table by a copy.
    check(unsafe { libc::unshare(libc::CLONE_FILES) })?;
    close_from(first);
    Ok(())
}

/// `write(2)` of the whole buffer, retrying on short writes and `EINTR` (a PROXY header sent to a
/// backend before any client byte).
pub(crate) fn write_all(fd: RawFd, mut buf: &[u8]) -> SysResult<()> {
    while !buf.is_empty() {
        match write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `read(2)` once.
pub(crate) fn read(fd: RawFd, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: `buf` is a live, writable slice of `buf.len()` bytes.
    check_size(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// `write(2)` once.
pub(crate) fn write(fd: RawFd, buf: &[u8]) -> SysResult<usize> {
    // SAFETY: `buf` is a live slice; the kernel reads at most `buf.len()` bytes.
    check_size(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) })
}

/// `CLOCK_MONOTONIC` in milliseconds.
pub(crate) fn monotonic_ms() -> u64 {
    clock_ms(libc::CLOCK_MONOTONIC)
}

/// Sleeps `ms` milliseconds (`nanosleep(2)`, async-signal-safe), or less when a signal comes.
pub(crate) fn sleep_ms(ms: u64) {
    if ms == 0 {
        return;
    }
    let ts = libc::timespec {
        tv_sec: (ms / 1000).min(libc::time_t::MAX as u64) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a live timespec; no remainder is asked for.
    unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
}

/// `CLOCK_REALTIME` in milliseconds since the epoch.
pub(crate) fn realtime_ms() -> u64 {
    clock_ms(libc::CLOCK_REALTIME)
}

fn clock_ms(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a live timespec; clock_gettime is async-signal-safe.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// `getpid(2)`.
pub(crate) fn getpid() -> libc::pid_t {
    // SAFETY: getpid is async-signal-safe and cannot fail.
    unsafe { libc::getpid() }
}

/// `setpgid(0, 0)`: the calling process leads a process group of its own. Errors are ignored (the
/// only one possible here, `EPERM` for a session leader, leaves the process where it was).
pub(crate) fn own_process_group() {
    // SAFETY: setpgid on ourselves takes integers only and is async-signal-safe.
    unsafe { libc::setpgid(0, 0) };
}

/// Sets a signal's disposition to a plain handler, `SIG_DFL` or `SIG_IGN`, with an empty mask and
/// no `SA_RESTART`, so that a blocking syscall interrupted by it returns `EINTR`.
pub(crate) fn set_signal(sig: libc::c_int, handler: libc::sighandler_t) {
    // SAFETY: a zeroed sigaction is a valid value; we fill the handler and an empty mask, and pass
    // live pointers. sigaction is async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

/// Empties the signal mask of the calling thread.
pub(crate) fn unblock_all_signals() {
    // SAFETY: `set` is a live sigset_t initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// `_exit(2)`: leaves without running destructors or atexit handlers, as a forked child must.
pub(crate) fn exit(code: libc::c_int) -> ! {
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// `waitpid(2)` on one child, retrying on `EINTR`; returns the raw wait status.
pub(crate) fn wait_for(pid: libc::pid_t) -> SysResult<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a live int for the kernel to fill.
        match check(unsafe { libc::waitpid(pid, &mut status, 0) }) {
            Ok(_) => return Ok(status),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Collects one exited child, if there is one: `waitpid(-1, WNOHANG)`. Returns its pid and raw wait
/// status. The main process's reaper calls it in a loop. (nix's `waitpid` turns the status of a
/// child killed by a signal it has no name for, such as `SIGRTMIN`, into `EINVAL` after reaping
/// it, which would lose the child's pid; the raw status keeps every case.)
pub(crate) fn reap_one() -> Option<(libc::pid_t, libc::c_int)> {
    let mut status = 0;
    // SAFETY: `status` is a live int for the kernel to fill; WNOHANG makes this non-blocking.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    (pid > 0).then_some((pid, status))
}

/// `kill(2)`.
pub(crate) fn kill(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: plain syscall on integers.
    unsafe { libc::kill(pid, sig) };
}

/// Names the calling thread (and so the process, for `ps`), truncated by the kernel to 15 bytes.
pub(crate) fn set_process_name(name: &std::ffi::CStr) {
    // SAFETY: `name` is a NUL-terminated buffer that outlives the call.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

/// The fork system call itself (`clone` with only `SIGCHLD`, which is what `fork(2)` asks of the
/// kernel). Returns 0 in the child and the child's pid in the parent.
///
/// glibc's `fork()` wrapper also runs the `pthread_atfork` machinery: it takes and re-initialises
/// the allocator's and stdio's locks and updates its thread bookkeeping, in the parent and in the
/// child. Those writes land on libc's data pages, so after every fork both processes take private
/// copies of them, and every connection process would carry a dozen extra pages for state it never
/// uses. Our children never allocate, lock or use stdio, so they need none of it.
///
/// # Safety
/// The child may only make async-signal-safe calls on data prepared before the call (this
/// module's functions), never allocate, lock, or use thread-specific libc state (its thread
/// descriptor still names the parent's thread), and must leave through [`exit`].
pub(crate) unsafe fn fork() -> SysResult<libc::pid_t> {
    // SAFETY: delegated to the caller, see above. With no CLONE_VM and a null stack pointer, the
    // child gets a copy-on-write copy of the address space and continues on its copy of this stack.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as libc::c_ulong,
            0 as libc::c_ulong,
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret as libc::pid_t)
    }
}

/// Forks a child that starts in `entry(arg)` on a stack of its own (`stack_top`, the high end of a
/// mapping every child inherits), instead of continuing on the caller's stack: glibc's `clone()`
/// with only `SIGCHLD`, which like [`fork`] runs no `pthread_atfork` handlers. The main process
/// excludes its own stack from its children (`handoff::fork_memory`), so they must not run on it.
/// With `share_fd_table` (`CLONE_FILES`), the child starts on the caller's descriptor table
/// instead of a copy of it (see `handoff::fork_fds`). Returns the child's pid in the parent; the
/// child never returns here.
///
/// # Safety
/// As for [`fork`], and: `stack_top` is 16-byte aligned, with enough writable memory below it for
/// `entry`; `entry` must not return (it leaves through [`exit`]); `arg` stays valid in the child's
/// copy of the address space, i.e. it points into memory the child inherits. With
/// `share_fd_table`, the child's first system call must leave the shared table
/// ([`leave_shared_fd_table`]), and the caller must not change the descriptors the child keeps
/// until it has.
pub(crate) unsafe fn fork_onto(
    stack_top: *mut u8,
    entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
    share_fd_table: bool,
) -> SysResult<libc::pid_t> {
    let flags = if share_fd_table {
        libc::SIGCHLD | libc::CLONE_FILES
    } else {
        libc::SIGCHLD
    };
    // SAFETY: delegated to the caller, see above. Without CLONE_VM the child gets a copy-on-write
    // copy of the address space and glibc's wrapper switches it to `stack_top` before `entry`.
    check(unsafe { libc::clone(entry, stack_top.cast(), flags, arg) })
}
