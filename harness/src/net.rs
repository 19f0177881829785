//! Sockets on loopback: the port picker, the port-retry loop, connecting from a chosen address,
//! round trips, refusal checks, and reads that are always bounded.

use crate::pattern::{read_hash, send_pattern};
use socket2::{Domain, SockRef, Socket, Type};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// A port the kernel just handed out, free on every address right now. Forwarders refuse port 0,
/// so a test asks the kernel for one this way (and retries with [`retry_ports`] if something
/// took it meanwhile).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port from the kernel: {e}"))
}

/// Whether an error (a forwarder's or a script's message) says that an address was taken.
pub fn port_taken(error: &str) -> bool {
    error.contains("in use")
}

/// Runs `attempt` (which picks its ports with [`free_port`]) until it does not fail with a port
/// taken meanwhile, at most 5 times. Returns the first other error, or the last one.
pub fn retry_ports<T>(mut attempt: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let mut last = String::new();
    for _ in 0..5 {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(e) if port_taken(&e) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(format!("ports taken 5 times in a row; last: {last}"))
}

/// A listener with a deep backlog (std's is 128), so a burst of inward connects is not dropped.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// Connects to `dst` from the address `src` (any port), like a client on another host would.
/// Reads time out after 10 s.
pub fn connect_from(src: IpAddr, dst: SocketAddr) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
    s.bind(&SocketAddr::new(src, 0).into())?;
    s.connect_timeout(&dst.into(), Duration::from_secs(5))?;
    let t: TcpStream = s.into();
    t.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(t)
}

/// Whether this machine has an IPv6 loopback (`::1`) to bind.
pub fn ipv6_loopback() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

/// 127.0.0.1:`port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Echoes everything back, then passes the client's FIN on.
pub fn echo(mut s: TcpStream) {
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

/// Writes `msg` and reads exactly as many bytes back, which must be `msg`.
pub fn round_trip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, msg);
}

/// Connects to 127.0.0.1:`port` and does a [`round_trip`]; returns the open connection.
pub fn round_trip_to(port: u16, msg: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(local(port)).unwrap_or_else(|e| panic!("connect :{port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    round_trip(&mut s, msg);
    s
}

/// Sends `msg` to 127.0.0.1:`port`, half-closes, returns everything read back.
pub fn exchange(port: u16, msg: &[u8]) -> io::Result<Vec<u8>> {
    let mut c = TcpStream::connect(local(port))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    c.write_all(msg)?;
    c.shutdown(Shutdown::Write)?;
    let mut out = Vec::new();
    c.read_to_end(&mut out)?;
    Ok(out)
}

/// Sends `len` pattern bytes through an echo path, half-closes, and checks that exactly the same
/// bytes come back.
pub fn echo_check(s: TcpStream, seed: u64, len: usize) -> io::Result<()> {
    let mut w = s.try_clone()?;
    let sender = thread::Builder::new().stack_size(256 * 1024).spawn(move || {
        let h = send_pattern(&mut w, seed, len)?;
        w.shutdown(Shutdown::Write)?;
        Ok::<_, io::Error>(h)
    })?;
    let (n, got) = read_hash(&mut &s)?;
    let sent = sender.join().expect("sender thread")?;
    if n == len && got == sent {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "sent {len} bytes, got {n} back, same bytes: {}",
            got == sent
        )))
    }
}

/// Whether 127.0.0.1:`port` refuses connections (nothing listens).
pub fn refused(port: u16) -> bool {
    matches!(TcpStream::connect(local(port)), Err(e) if e.kind() == ErrorKind::ConnectionRefused)
}

/// Aborts a socket: close with SO_LINGER 0, so the peer gets a RST.
pub fn abort(s: TcpStream) {
    SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
    drop(s);
}

/// Reads until EOF or error; returns what was read and how it ended.
pub fn read_to_end_or_err(s: &mut TcpStream) -> (Vec<u8>, io::Result<()>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, Ok(())),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return (out, Err(e)),
        }
    }
}

/// What a client sees when it reads: the kind of error, or `Ok(n)` for n bytes then EOF.
pub fn read_outcome(s: &mut TcpStream) -> Result<usize, ErrorKind> {
    let (data, end) = read_to_end_or_err(s);
    end.map(|()| data.len()).map_err(|e| e.kind())
}

/// Asserts that the forwarder reset this client at once (a refusal or a failed fork).
pub fn assert_reset(s: &mut TcpStream, what: &str) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(read_outcome(s), Err(ErrorKind::ConnectionReset), "{what}");
}

/// How a read side ended.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    Eof(Duration),
    Reset(Duration),
    Timeout,
    Error(String),
}

impl End {
    pub fn describe(&self) -> String {
        match self {
            End::Eof(d) => format!("EOF after {}", ms(*d)),
            End::Reset(d) => format!("RST after {}", ms(*d)),
            End::Timeout => "nothing (hangs)".into(),
            End::Error(e) => format!("error {e}"),
        }
    }
    pub fn is_eof(&self) -> bool {
        matches!(self, End::Eof(_))
    }
    pub fn is_reset(&self) -> bool {
        matches!(self, End::Reset(_))
    }
    pub fn is_closed(&self) -> bool {
        matches!(self, End::Eof(_) | End::Reset(_))
    }
}

/// A duration as people read it: `3.2 ms`, `250 ms`.
pub fn ms(d: Duration) -> String {
    let m = d.as_secs_f64() * 1000.0;
    if m < 10.0 {
        format!("{m:.1} ms")
    } else {
        format!("{m:.0} ms")
    }
}

fn end_of(e: &io::Error, start: Instant) -> Option<End> {
    match e.kind() {
        ErrorKind::Interrupted => None,
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Some(End::Timeout),
        ErrorKind::ConnectionReset => Some(End::Reset(start.elapsed())),
        _ => Some(End::Error(e.to_string())),
    }
}

/// Reads until EOF, reset, or `limit` bytes, or until `wait` passes with the stream still open.
/// Timing of the end is measured from the call.
pub fn read_to_end_within(s: &mut TcpStream, limit: usize, wait: Duration) -> (Vec<u8>, End) {
    let start = Instant::now();
    let deadline = start + wait;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return (buf, End::Timeout);
        }
        let _ = s.set_read_timeout(Some(deadline - now));
        match s.read(&mut chunk) {
            Ok(0) => return (buf, End::Eof(start.elapsed())),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() >= limit {
                    return (buf, End::Timeout);
                }
            }
            Err(e) => {
                if let Some(end) = end_of(&e, start) {
                    return (buf, end);
                }
            }
        }
    }
}

/// Reads exactly `n` bytes within `wait`; returns what arrived and how it ended if short.
pub fn read_exact_within(s: &mut TcpStream, n: usize, wait: Duration) -> (Vec<u8>, Option<End>) {
    let start = Instant::now();
    let deadline = start + wait;
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let now = Instant::now();
        if now >= deadline {
            buf.truncate(got);
            return (buf, Some(End::Timeout));
        }
        let _ = s.set_read_timeout(Some(deadline - now));
        match s.read(&mut buf[got..]) {
            Ok(0) => {
                buf.truncate(got);
                return (buf, Some(End::Eof(start.elapsed())));
            }
            Ok(k) => got += k,
            Err(e) => {
                if let Some(end) = end_of(&e, start) {
                    buf.truncate(got);
                    return (buf, Some(end));
                }
            }
        }
    }
    (buf, None)
}
