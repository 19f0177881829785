//! The `/metrics` endpoint as a few non-blocking sockets for the main loop's epoll set.
//!
//! The server never blocks and never waits: every handler does what the socket allows at once
//! and says what it waits for next ([`Interest`]). The caller owns the polling; the server owns
//! the sockets. A client has 10 s to send its request head (a client dribbling a byte a second
//! does not keep its slot), and then 10 s between any two writes that make progress (a client
//! that never reads its response is closed); at most 16 are served at once, and more are closed
//! as they are accepted, so the main process's descriptors stay bounded.

use super::families::{CONTENT_TYPE, Metrics};
use super::http::{self, MAX_HEAD};
use socket2::{Domain, Socket, Type};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

/// Scrape clients served at once; more are closed as they are accepted.
pub const MAX_CLIENTS: usize = 16;
/// How long a client may take to send its head, and may leave its response unread.
pub const CLIENT_TIMEOUT_MS: u64 = 10_000;

/// What a client's socket waits for after a handler: the caller polls it for reading (`EPOLLIN`)
/// or writing (`EPOLLOUT`), or forgets it (the server has closed it, which also took it out of
/// any epoll set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interest {
    Read,
    Write,
    Closed,
}

struct Client {
    stream: TcpStream,
    head: Vec<u8>,
    /// The whole response once the head is complete; `sent` bytes of it are written.
    out: Vec<u8>,
    sent: usize,
    /// When the client is closed unless it has progressed: the head's deadline while reading,
    /// the last progressing write's plus the timeout while writing.
    deadline_ms: u64,
}

pub struct MetricsServer {
    listener: TcpListener,
    /// At most `MAX_CLIENTS`, so a linear search is the fastest lookup.
    clients: Vec<Client>,
    /// The rendered metrics, kept between scrapes so its capacity is reused.
    body: String,
}

impl MetricsServer {
    /// Listens on `addr` (non-blocking, close-on-exec, `SO_REUSEADDR`).
    pub fn bind(addr: SocketAddr) -> io::Result<MetricsServer> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(false)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(64)?;
        socket.set_nonblocking(true)?;
        Ok(MetricsServer {
            listener: socket.into(),
            clients: Vec::with_capacity(MAX_CLIENTS),
            body: String::new(),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The listening socket, to poll for reading (level- or edge-triggered).
    pub fn listener_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// A client's socket, to add to the poll set once [`Self::on_listener_ready`] reported it.
    pub fn client_fd(&self, fd: RawFd) -> Option<BorrowedFd<'_>> {
        self.find(fd).map(|i| self.clients[i].stream.as_fd())
    }

    /// Clients open now.
    #[cfg(test)]
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// Accepts until the backlog is empty. New clients' descriptors are pushed onto `accepted`:
    /// poll each for reading. Clients beyond [`MAX_CLIENTS`] are closed at once.
    pub fn on_listener_ready(&mut self, now_ms: u64, accepted: &mut Vec<RawFd>) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.clients.len() >= MAX_CLIENTS || stream.set_nonblocking(true).is_err() {
                        continue; // dropped: closed
                    }
                    accepted.push(stream.as_raw_fd());
                    self.clients.push(Client {
                        stream,
                        head: Vec::new(),
                        out: Vec::new(),
                        sent: 0,
                        deadline_ms: now_ms + CLIENT_TIMEOUT_MS,
                    });
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionAborted => {}
                // WouldBlock: drained. Anything else (EMFILE...): nothing more to accept now;
                // the clients stay in the backlog until the next connection's readiness.
                Err(_) => break,
            }
        }
    }

    /// Serves the client on `fd` as far as its socket allows: reads its head, answers it once it
    /// is complete, writes what fits. `Closed` also for a descriptor that is not a client's.
    pub fn on_client_ready(&mut self, fd: RawFd, metrics: &Metrics, now_ms: u64) -> Interest {
        let Some(i) = self.find(fd) else {
            return Interest::Closed;
        };
        let interest = self.serve(i, metrics, now_ms);
        if interest == Interest::Closed {
            self.close(i);
        }
        interest
    }

    fn serve(&mut self, i: usize, metrics: &Metrics, now_ms: u64) -> Interest {
        if self.clients[i].out.is_empty() {
            match self.read_head(i) {
                Ok(Some(request)) => {
                    if request == http::Request::Metrics {
                        self.body.clear();
                        metrics.render(&mut self.body);
                    }
                    let client = &mut self.clients[i];
                    http::respond(&request, &self.body, CONTENT_TYPE, &mut client.out);
                    client.deadline_ms = now_ms + CLIENT_TIMEOUT_MS;
                }
                Ok(None) => return Interest::Read,
                Err(_) => return Interest::Closed,
            }
        }
        let client = &mut self.clients[i];
        while client.sent < client.out.len() {
            match client.stream.write(&client.out[client.sent..]) {
                Ok(n) => {
                    client.sent += n;
                    client.deadline_ms = now_ms + CLIENT_TIMEOUT_MS;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Interest::Write,
                Err(_) => return Interest::Closed,
            }
        }
        // All sent: a FIN after it, then the descriptor goes.
        let _ = client.stream.shutdown(Shutdown::Write);
        Interest::Closed
    }

    /// Reads what is there of the head: `Ok(None)` while incomplete, an error once the client
    /// cannot send a head any more (it closed or failed).
    fn read_head(&mut self, i: usize) -> io::Result<Option<http::Request>> {
        let client = &mut self.clients[i];
        let mut chunk = [0u8; 1024];
        loop {
            let room = (MAX_HEAD - client.head.len()).min(chunk.len());
            match client.stream.read(&mut chunk[..room]) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    client.head.extend_from_slice(&chunk[..n]);
                    if let Some(request) = http::parse(&client.head) {
                        return Ok(Some(request));
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Closes the clients whose deadline has passed; their descriptors are pushed onto `closed`.
    pub fn expire(&mut self, now_ms: u64, closed: &mut Vec<RawFd>) {
        let mut i = 0;
        while i < self.clients.len() {
            if self.clients[i].deadline_ms <= now_ms {
                closed.push(self.clients[i].stream.as_raw_fd());
                self.close(i);
            } else {
                i += 1;
            }
        }
    }

    /// The earliest client deadline: when [`Self::expire`] next has work.
    pub fn next_deadline(&self) -> Option<u64> {
        self.clients.iter().map(|c| c.deadline_ms).min()
    }

    /// Closes a client (for a caller that could not add it to its poll set).
    pub fn close_client(&mut self, fd: RawFd) {
        if let Some(i) = self.find(fd) {
            self.close(i);
        }
    }

    fn find(&self, fd: RawFd) -> Option<usize> {
        self.clients.iter().position(|c| c.stream.as_raw_fd() == fd)
    }

    fn close(&mut self, i: usize) {
        self.clients.swap_remove(i); // dropping the stream closes it
    }
}
