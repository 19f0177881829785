//! The listening socket: socket2 for the options the seed sets (address reuse) and those it should
//! have (non-blocking for the edge-triggered accept loop, close-on-exec, dual-stack by default).
//! Main process.

use socket2::{Domain, Socket, Type};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

/// Backlog asked of `listen(2)`; the kernel caps it at `net.core.somaxconn` (4096 by default).
/// Clients beyond what the accept loop keeps up with wait here, not in our memory.
pub const BACKLOG: i32 = 4096;

/// Where to listen when `--bind` is not given: every interface, IPv6 and IPv4 through one
/// dual-stack socket, or IPv4 alone on hosts without IPv6.
pub fn any_address(port: u16) -> SocketAddr {
    SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)
}

/// Opens a non-blocking listener on `addr`. An unspecified IPv6 address is dual-stack; if the host
/// has no IPv6 at all, it falls back to IPv4's unspecified address. With `reuseport`, the socket
/// has `SO_REUSEPORT`: other sockets with it (other portfwd processes of the same user) may bind
/// the same address, and the kernel spreads new connections among them.
pub fn open(addr: SocketAddr, reuseport: bool) -> io::Result<Socket> {
    match try_open(addr, reuseport) {
        Err(e) if addr.ip() == Ipv6Addr::UNSPECIFIED && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            try_open(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port()), reuseport)
        }
        other => other,
    }
}

fn try_open(addr: SocketAddr, reuseport: bool) -> io::Result<Socket> {
    // socket2 creates the socket close-on-exec.
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    if reuseport {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket)
}

/// The address a listener actually has (with the kernel's port if 0 was asked for).
pub fn local_addr(socket: &Socket) -> io::Result<SocketAddr> {
    socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "listener has no IP address"))
}
