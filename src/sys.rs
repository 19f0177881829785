//! Thin wrappers over the raw syscalls the forwarder makes after `fork()`.
//!
//! Everything here is callable in a forked child of a multi-threaded process: each function is a
//! single syscall (or a fixed, short sequence of them) on data prepared by the caller, with no
//! allocation, no locks and no formatting. Errors come back as [`Errno`] values read from the
//! thread's `errno`, which is itself async-signal-safe.

use nix::errno::Errno;
use std::os::fd::RawFd;

/// Result of a raw syscall: the non-negative return value or the errno it set.
pub type SysResult<T> = Result<T, Errno>;

fn check(ret: libc::c_int) -> SysResult<libc::c_int> {
    if ret < 0 { Err(Errno::last()) } else { Ok(ret) }
}

fn check_size(ret: libc::ssize_t) -> SysResult<usize> {
    if ret < 0 { Err(Errno::last()) } else { Ok(ret as usize) }
}

/// `close(2)`. Errors are ignored: on Linux the descriptor is released even when close reports one.
pub fn close(fd: RawFd) {
    // SAFETY: closing a descriptor number has no memory-safety preconditions; callers own `fd`.
    unsafe { libc::close(fd) };
}

/// `dup2(2)`.
pub fn dup2(from: RawFd, to: RawFd) -> SysResult<RawFd> {
    // SAFETY: plain syscall on integers.
    check(unsafe { libc::dup2(from, to) })
}

/// `dup3(from, to, O_CLOEXEC)`: `to` now names `from`'s file; whatever `to` held is closed, in
/// one step (no moment at which `to` is free for another thread to take).
pub fn dup3_cloexec(from: RawFd, to: RawFd) -> SysResult<RawFd> {
    // SAFETY: plain syscall on integers.
    check(unsafe { libc::dup3(from, to, libc::O_CLOEXEC) })
}

/// Closes every descriptor numbered `first` or above. Uses `close_range(2)` (Linux 5.9+) and falls
/// back to closing one by one up to the soft `RLIMIT_NOFILE` on older kernels.
pub fn close_from(first: RawFd) {
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
pub fn leave_shared_fd_table(first: RawFd) -> SysResult<()> {
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

/// Whether child `pid` has exited (and is waiting to be reaped): `waitid(WNOWAIT)` leaves it for
/// the ordinary reaping.
pub fn child_has_exited(pid: libc::pid_t) -> bool {
    // SAFETY: `info` is a zeroed siginfo_t for the kernel to fill; WNOHANG makes this non-blocking
    // and WNOWAIT leaves the child's state in place.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let ret = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        ret != 0 || info.si_pid() == pid
    }
}

/// `write(2)` of the whole buffer, retrying on short writes and `EINTR`.
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> SysResult<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is a live slice; the kernel reads at most `buf.len()` bytes from it.
        match check_size(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) }) {
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `read(2)` once.
pub fn read(fd: RawFd, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: `buf` is a live, writable slice of `buf.len()` bytes.
    check_size(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// `write(2)` once.
pub fn write(fd: RawFd, buf: &[u8]) -> SysResult<usize> {
    // SAFETY: `buf` is a live slice; the kernel reads at most `buf.len()` bytes.
    check_size(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) })
}

/// `splice(2)` between two descriptors, no offsets (both are sockets or pipes).
pub fn splice(from: RawFd, to: RawFd, len: usize, flags: libc::c_uint) -> SysResult<usize> {
    // SAFETY: null offsets are allowed for pipes and sockets; no user memory is touched.
    check_size(unsafe { libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, flags) })
}

/// `pipe2(O_CLOEXEC)`, then asks for `size` bytes of capacity; a refused resize (the per-user pipe
/// quota, `fs.pipe-max-size`) keeps the default size, which is still correct, only slower.
pub fn pipe(size: libc::c_int) -> SysResult<(RawFd, RawFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for the kernel to fill.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: fcntl on a descriptor we just created.
    unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, size) };
    Ok((fds[0], fds[1]))
}

/// `shutdown(2)`.
pub fn shutdown(fd: RawFd, how: libc::c_int) -> SysResult<()> {
    // SAFETY: plain syscall on integers.
    check(unsafe { libc::shutdown(fd, how) }).map(drop)
}

/// Sets an integer-valued socket option.
pub fn setsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> SysResult<()> {
    // SAFETY: the option value points at a live c_int and its exact size is passed.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Reads `SO_ERROR`, clearing the socket's pending error.
pub fn take_socket_error(fd: RawFd) -> SysResult<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live and sized for an int option.
    check(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// `TCP_CLOSE` of the kernel's TCP states, as `tcp_state` reports them.
pub const TCP_CLOSE: u8 = 7;

/// The TCP state of a socket (`tcpi_state` of `TCP_INFO`), or `None` if it cannot be read.
pub fn tcp_state(fd: RawFd) -> Option<u8> {
    // SAFETY: a zeroed tcp_info is a valid value; the kernel fills at most `len` bytes of it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` are live and describe the buffer's size.
    let ret = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (ret == 0 && len >= 1).then_some(info.tcpi_state)
}

/// Arranges for the next `close` of the last reference to `fd` to send a TCP RST instead of a FIN:
/// `SO_LINGER` with a zero timeout. This is how an abort is passed on.
pub fn set_abortive_close(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is live and its exact size is passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// Sets a send timeout, so a blocked write wakes up now and then to look at shared state.
pub fn set_send_timeout(fd: RawFd, secs: libc::time_t) {
    set_timeout(fd, libc::SO_SNDTIMEO, secs);
}

/// Sets a receive timeout, so a blocked read wakes up now and then to look at shared state.
pub fn set_recv_timeout(fd: RawFd, secs: libc::time_t) {
    set_timeout(fd, libc::SO_RCVTIMEO, secs);
}

fn set_timeout(fd: RawFd, option: libc::c_int, secs: libc::time_t) {
    let tv = libc::timeval {
        tv_sec: secs,
        tv_usec: 0,
    };
    // SAFETY: `tv` is live and its exact size is passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
}

/// Switches `O_NONBLOCK` on or off.
pub fn set_nonblocking(fd: RawFd, on: bool) -> SysResult<()> {
    // SAFETY: fcntl F_GETFL/F_SETFL on an integer descriptor.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) }).map(drop)
}

/// `socket(2)` with `SOCK_CLOEXEC | SOCK_NONBLOCK`.
pub fn tcp_socket(family: libc::c_int) -> SysResult<RawFd> {
    // SAFETY: plain syscall on integers.
    check(unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) })
}

/// `connect(2)` to an address prepared before the fork (the `sockaddr` is built on the stack).
pub fn connect(fd: RawFd, addr: &std::net::SocketAddr) -> SysResult<()> {
    let addr = socket2::SockAddr::from(*addr);
    // SAFETY: `addr` is a live, initialised socket address of `addr.len()` bytes.
    check(unsafe { libc::connect(fd, addr.as_ptr().cast(), addr.len()) }).map(drop)
}

/// `poll(2)` on one descriptor; returns the revents, or 0 on timeout.
pub fn poll_one(fd: RawFd, events: libc::c_short, timeout_ms: libc::c_int) -> SysResult<libc::c_short> {
    let mut pfd = libc::pollfd { fd, events, revents: 0 };
    // SAFETY: `pfd` is one live pollfd.
    let n = check(unsafe { libc::poll(&mut pfd, 1, timeout_ms) })?;
    Ok(if n == 0 { 0 } else { pfd.revents })
}

/// `CLOCK_MONOTONIC` in milliseconds.
pub fn monotonic_ms() -> u64 {
    clock_ms(libc::CLOCK_MONOTONIC)
}

/// `CLOCK_REALTIME` in milliseconds since the epoch.
pub fn realtime_ms() -> u64 {
    clock_ms(libc::CLOCK_REALTIME)
}

fn clock_ms(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a live timespec; clock_gettime is async-signal-safe.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Sets a signal's disposition to a plain handler, `SIG_DFL` or `SIG_IGN`, with an empty mask and
/// no `SA_RESTART`, so that a blocking syscall interrupted by it returns `EINTR`.
pub fn set_signal(sig: libc::c_int, handler: libc::sighandler_t) {
    // SAFETY: a zeroed sigaction is a valid value; we fill the handler and an empty mask, and pass
    // live pointers. sigaction is async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

/// Blocks every signal in the calling thread; returns the mask it had.
pub fn block_all_signals() -> libc::sigset_t {
    // SAFETY: both sets are live sigset_t values initialised by sigfillset/pthread_sigmask.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        old
    }
}

/// Empties the signal mask of the calling thread.
pub fn unblock_all_signals() {
    // SAFETY: `set` is a live sigset_t initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
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
pub unsafe fn fork() -> SysResult<libc::pid_t> {
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
/// excludes its own stack from its children (`fork_memory`), so they must not run on it. With
/// `share_fd_table` (`CLONE_FILES`), the child starts on the caller's descriptor table instead of
/// a copy of it (see `fork_fds`). Returns the child's pid in the parent; the child never returns
/// here.
///
/// # Safety
/// As for [`fork`], and: `stack_top` is 16-byte aligned, with enough writable memory below it for
/// `entry`; `entry` must not return (it leaves through [`exit`]); `arg` stays valid in the child's
/// copy of the address space, i.e. it points into memory the child inherits. With
/// `share_fd_table`, the child's first system call must leave the shared table
/// ([`leave_shared_fd_table`]), and the caller must not change the descriptors the child keeps
/// until it has.
pub unsafe fn fork_onto(
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

/// Maps `len` bytes of private, zero-filled memory with an inaccessible guard page below it.
/// Returns the start of the usable part (just above the guard), or null on failure.
pub fn map_with_guard(len: usize) -> *mut u8 {
    let page = page_size();
    // SAFETY: a new anonymous mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len + page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return std::ptr::null_mut();
    }
    // SAFETY: the first page of the mapping just made; nothing refers to it yet.
    if unsafe { libc::mprotect(p, page, libc::PROT_NONE) } != 0 {
        // SAFETY: unmapping the mapping made above, which nothing refers to.
        unsafe { libc::munmap(p, len + page) };
        return std::ptr::null_mut();
    }
    // SAFETY: `page` bytes into a mapping of `len + page` bytes.
    unsafe { p.cast::<u8>().add(page) }
}

/// `madvise(MADV_DONTFORK)` on the pages covering `[start, end)`: children forked afterwards do not
/// get them at all (not even copy-on-write). Contents are not changed.
pub fn exclude_from_children(start: usize, end: usize) -> SysResult<()> {
    // Only whole pages inside the range: rounding the start down could take in the end of a
    // neighbouring mapping (the initial break may share a page with static data).
    let page = page_size();
    let (start, end) = (start.next_multiple_of(page), end.next_multiple_of(page));
    if end <= start {
        return Ok(());
    }
    // SAFETY: madvise with MADV_DONTFORK only changes how fork treats the range; it fails (and we
    // report it) if part of the range is not mapped.
    check(unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTFORK) }).map(drop)
}

/// The current end of the heap that `malloc` grows with `brk(2)` (glibc's cached value: no syscall).
pub fn program_break() -> usize {
    // SAFETY: sbrk(0) only reads the current break.
    unsafe { libc::sbrk(0) as usize }
}

pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// `_exit(2)`: leaves without running destructors or atexit handlers, as a forked child must.
pub fn exit(code: libc::c_int) -> ! {
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// `waitpid(2)` on one child, retrying on `EINTR`; returns the raw wait status.
pub fn wait_for(pid: libc::pid_t) -> SysResult<libc::c_int> {
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

/// `kill(2)`.
pub fn kill(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: plain syscall on integers.
    unsafe { libc::kill(pid, sig) };
}

/// Names the calling thread (and so the process, for `ps`), truncated by the kernel to 15 bytes.
/// `name` must end with a NUL byte.
pub fn set_process_name(name: &[u8]) {
    debug_assert_eq!(name.last(), Some(&0));
    // SAFETY: `name` is a NUL-terminated buffer that outlives the call.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

/// Maps one anonymous page shared with every child forked afterwards. Returns null on failure.
pub fn shared_page() -> *mut u8 {
    // SAFETY: an anonymous shared mapping of one page; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}
