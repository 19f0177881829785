//! Socket and pipe system calls of a connection process (after fork): connecting inward, moving
//! bytes, passing an end on; and the main process's peek at a waiting client.

use super::{SysResult, check, check_size};
use std::os::fd::RawFd;

/// `splice(2)` between two descriptors, no offsets (both are sockets or pipes).
pub(crate) fn splice(from: RawFd, to: RawFd, len: usize, flags: libc::c_uint) -> SysResult<usize> {
    // SAFETY: null offsets are allowed for pipes and sockets; no user memory is touched.
    check_size(unsafe { libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, flags) })
}

/// `recv(fd, 1 byte, MSG_PEEK)`: waits until a byte (or the end) is there, and leaves it queued.
/// Returns 1, or 0 at end-of-file.
pub(crate) fn peek(fd: RawFd) -> SysResult<usize> {
    let mut probe = [0u8; 1];
    // SAFETY: `probe` is a live one-byte buffer; MSG_PEEK leaves the byte in the socket.
    check_size(unsafe { libc::recv(fd, probe.as_mut_ptr().cast(), 1, libc::MSG_PEEK) })
}

/// `recv(fd, buf, MSG_DONTWAIT)`: takes at most `buf.len()` queued bytes off a socket.
pub(crate) fn recv_queued(fd: RawFd, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: `buf` is a live, writable slice of `buf.len()` bytes.
    check_size(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) })
}

/// `TCP_CLOSE_WAIT` of the kernel's TCP states: the peer's FIN is in, no more bytes will come.
pub(crate) const TCP_CLOSE_WAIT: u8 = 8;

/// `recv(MSG_PEEK | MSG_DONTWAIT)` into `buf`: what a waiting client has sent so far, left queued
/// for its connection process (the main process's look before routing). 0 at end-of-file,
/// `EAGAIN` when nothing is queued. (socket2's `peek` takes an uninitialised buffer, which the
/// caller would then have to assume initialised: this keeps that reasoning here.)
pub(crate) fn peek_waiting(fd: RawFd, buf: &mut [u8]) -> SysResult<usize> {
    let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT;
    // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes.
    check_size(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) })
}

/// `pipe2(O_CLOEXEC)`, then asks for `size` bytes of capacity; a refused resize (the per-user pipe
/// quota, `fs.pipe-max-size`) keeps the default size, which is still correct, only slower.
pub(crate) fn pipe(size: libc::c_int) -> SysResult<(RawFd, RawFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for the kernel to fill.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: fcntl on a descriptor we just created.
    unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, size) };
    Ok((fds[0], fds[1]))
}

/// `shutdown(2)`.
pub(crate) fn shutdown(fd: RawFd, how: libc::c_int) -> SysResult<()> {
    // SAFETY: plain syscall on integers.
    check(unsafe { libc::shutdown(fd, how) }).map(drop)
}

/// Sets an integer-valued socket option.
pub(crate) fn setsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> SysResult<()> {
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
pub(crate) fn take_socket_error(fd: RawFd) -> SysResult<libc::c_int> {
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
pub(crate) const TCP_CLOSE: u8 = 7;

/// The TCP state of a socket (`tcpi_state` of `TCP_INFO`), or `None` if it cannot be read.
pub(crate) fn tcp_state(fd: RawFd) -> Option<u8> {
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
pub(crate) fn set_abortive_close(fd: RawFd) {
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
pub(crate) fn set_send_timeout(fd: RawFd, secs: libc::time_t) {
    set_timeout(fd, libc::SO_SNDTIMEO, secs);
}

/// Sets a receive timeout, so a blocked read wakes up now and then to look at shared state.
pub(crate) fn set_recv_timeout(fd: RawFd, secs: libc::time_t) {
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
pub(crate) fn set_nonblocking(fd: RawFd, on: bool) -> SysResult<()> {
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
pub(crate) fn tcp_socket(family: libc::c_int) -> SysResult<RawFd> {
    // SAFETY: plain syscall on integers.
    check(unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) })
}

/// `connect(2)` to an address prepared before the fork (the `sockaddr` is built on the stack).
pub(crate) fn connect(fd: RawFd, addr: &std::net::SocketAddr) -> SysResult<()> {
    let addr = socket2::SockAddr::from(*addr);
    // SAFETY: `addr` is a live, initialised socket address of `addr.len()` bytes.
    check(unsafe { libc::connect(fd, addr.as_ptr().cast(), addr.len()) }).map(drop)
}

/// `bind(2)` to an address prepared before the fork (the `sockaddr` is built on the stack).
pub(crate) fn bind(fd: RawFd, addr: &std::net::SocketAddr) -> SysResult<()> {
    let addr = socket2::SockAddr::from(*addr);
    // SAFETY: `addr` is a live, initialised socket address of `addr.len()` bytes.
    check(unsafe { libc::bind(fd, addr.as_ptr().cast(), addr.len()) }).map(drop)
}

/// `poll(2)` on one descriptor; returns the revents, or 0 on timeout.
pub(crate) fn poll_one(fd: RawFd, events: libc::c_short, timeout_ms: libc::c_int) -> SysResult<libc::c_short> {
    let mut pfd = libc::pollfd { fd, events, revents: 0 };
    // SAFETY: `pfd` is one live pollfd.
    let n = check(unsafe { libc::poll(&mut pfd, 1, timeout_ms) })?;
    Ok(if n == 0 { 0 } else { pfd.revents })
}

/// `send(2)` with `MSG_DONTWAIT | MSG_NOSIGNAL`: never waits for the reader, whatever the
/// descriptor's own flags (which other holders of it share), and a gone reader is an `EPIPE`
/// error, not a signal.
pub(crate) fn send_nowait(fd: RawFd, buf: &[u8]) -> SysResult<usize> {
    // SAFETY: `buf` is a live slice; the kernel reads at most `buf.len()` bytes.
    check_size(unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    })
}
