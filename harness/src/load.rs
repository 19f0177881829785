//! The seed's Case 1 ("maximum active sockets") for any forwarder with the
//! seed's CLI: the engine of `portfwd-load` and of the comparison tests' load
//! test.
//!
//! Starts epoll echo backends and the forwarder (own process group) in front
//! of them, then ramps echo clients with the seed's parameters: one new client
//! every 2 ms, each sending a request, waiting for its reply, pausing 10 µs,
//! and so on. After the ramp it holds all clients for a while. Every report
//! interval it prints connections held, requests answered, errors and latency
//! percentiles. All sockets are on 127.0.0.0/8; the run is bounded in count
//! (`--clients`) and time (`--max-secs`).
//!
//! Processes: this coordinator, one echo backend process and one client
//! worker process per `--per-process` clients (a process cannot have more
//! descriptors than `ulimit -n`, and the hard limit may be out of reach), the
//! backends sharing one port through SO_REUSEPORT. Workers print TICK lines;
//! the coordinator merges them into the table. The worker and backend
//! processes are the calling program run again (`--role`): a program that
//! calls [`run`] must call [`serve_role`] first thing in `main`.

use crate::launch::{Launch, Spec};
use crate::procs::set_subreaper;
use clap::Parser;
use std::collections::{HashMap, VecDeque};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The load test's parameters: `portfwd-load`'s command line.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "portfwd-load",
    about = "Ramp echo clients through a forwarder with the seed's CLI (the seed's test case 1)",
    after_help = "Example (CI size): portfwd-load --forwarder target/debug/portfwd --clients 1000\n\
                  Full mode (the seed's 20,000): see scripts/load-test.sh --full."
)]
pub struct Args {
    /// Forwarder binary taking `[ARGS] PORT HOSTNAME HOST_PORT`.
    #[arg(long)]
    pub forwarder: Option<PathBuf>,
    /// Extra argument placed before the seed's positional arguments (repeatable).
    #[arg(long = "forwarder-arg", allow_hyphen_values = true)]
    pub forwarder_args: Vec<String>,
    /// Name shown in the report.
    #[arg(long, default_value = "forwarder")]
    pub label: String,
    /// Number of clients to ramp up to.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Delay between client spawns, µs (seed: 0.002 s).
    #[arg(long, default_value_t = 2000)]
    pub spawn_interval_us: u64,
    /// Delay between a reply and the client's next request, µs (seed: 10000 ns).
    #[arg(long, default_value_t = 10)]
    pub request_interval_us: u64,
    /// Seconds to hold all clients after the ramp.
    #[arg(long, default_value_t = 3)]
    pub hold_secs: u64,
    /// Report interval, ms (default: a tenth of the ramp, within 200..=2000).
    #[arg(long)]
    pub report_ms: Option<u64>,
    /// Client source addresses, comma separated (default: one 127.0.1.x per 10,000 clients).
    #[arg(long, value_delimiter = ',')]
    pub sources: Vec<Ipv4Addr>,
    /// Request size in bytes.
    #[arg(long, default_value_t = 32)]
    pub msg_size: usize,
    /// Hard bound on the whole run, seconds.
    #[arg(long, default_value_t = 300)]
    pub max_secs: u64,
    /// A client waiting longer than this for a reply counts as stalled, ms.
    #[arg(long, default_value_t = 1000)]
    pub stall_ms: u64,
    /// Clients per worker process, and connections per echo backend process.
    #[arg(long, default_value_t = 12_000)]
    pub per_process: usize,
    /// Also print one machine-readable SUMMARY line.
    #[arg(long)]
    pub kv: bool,
    /// Internal: `backend` or `worker`.
    #[arg(long, hide = true)]
    pub role: Option<String>,
    /// Internal: backend port to share (0: pick) / forwarder port for a worker.
    #[arg(long, hide = true, default_value_t = 0)]
    pub port: u16,
    #[arg(long, hide = true, default_value_t = 0)]
    pub worker_index: usize,
    #[arg(long, hide = true, default_value_t = 1)]
    pub workers: usize,
    #[arg(long, hide = true, default_value_t = 0)]
    pub start_unix_ms: u64,
}

impl Args {
    /// The defaults: the command line with no options.
    pub fn defaults() -> Args {
        Args::parse_from(["portfwd-load"])
    }

    fn report_every(&self) -> Duration {
        let ramp_ms = self.clients as u64 * self.spawn_interval_us / 1000;
        Duration::from_millis(self.report_ms.unwrap_or((ramp_ms / 10).clamp(200, 2000)).max(50))
    }
}

// ---------------------------------------------------------------- epoll

struct Epoll(RawFd);

impl Epoll {
    fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(Epoll(fd))
        }
    }
    fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: valid epoll fd and event.
        if unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    /// Wait with a nanosecond timeout (epoll_pwait2), so a 10 µs pause is 10 µs.
    fn wait(&self, events: &mut [libc::epoll_event], timeout: Duration) -> usize {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: the events buffer and the timespec outlive the call.
        let n = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait2,
                self.0,
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                &ts as *const libc::timespec,
                std::ptr::null::<libc::sigset_t>(),
                0usize,
            )
        };
        if n < 0 { 0 } else { n as usize }
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: our fd.
        unsafe { libc::close(self.0) };
    }
}

fn close(fd: RawFd) {
    // SAFETY: fd owned by the caller's bookkeeping.
    unsafe { libc::close(fd) };
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn raise_nofile(want: u64) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    if r.rlim_cur >= want {
        return r.rlim_cur;
    }
    let new = libc::rlimit {
        rlim_cur: want,
        rlim_max: r.rlim_max.max(want),
    };
    // SAFETY: valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
        return want;
    }
    let new = libc::rlimit {
        rlim_cur: r.rlim_max,
        rlim_max: r.rlim_max,
    };
    // SAFETY: valid pointer.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) };
    r.rlim_max
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The Instant corresponding to a wall-clock time in ms since the epoch.
fn instant_at(unix: u64) -> Instant {
    let now_u = unix_ms();
    let now = Instant::now();
    if unix >= now_u {
        now + Duration::from_millis(unix - now_u)
    } else {
        now - Duration::from_millis(now_u - unix)
    }
}

// ---------------------------------------------------------------- backend role

/// Edge-triggered epoll echo server on 127.0.0.1:`port` (SO_REUSEPORT, so
/// several backend processes share one port). Prints `PORT n`, then runs until
/// its standard input closes.
fn backend_main(port: u16) -> io::Result<()> {
    raise_nofile(u64::MAX >> 1);
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    let one: libc::c_int = 1;
    // SAFETY: valid socket and option.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    sock.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).into())?;
    sock.listen(4096)?;
    sock.set_nonblocking(true)?;
    let listener: std::net::TcpListener = sock.into();
    let port = listener.local_addr()?.port();
    println!("PORT {port}");
    io::stdout().flush()?;
    let ep = Epoll::new()?;
    ep.add(listener.as_raw_fd(), libc::EPOLLIN as u32, u64::MAX)?;
    ep.add(0, libc::EPOLLIN as u32, u64::MAX - 1)?;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut pending: HashMap<RawFd, Vec<u8>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = ep.wait(&mut events, Duration::from_secs(1));
        for ev in &events[..n] {
            let (bits, tok) = (ev.events, ev.u64);
            if tok == u64::MAX - 1 {
                return Ok(()); // coordinator gone (stdin readable = EOF)
            }
            if tok == u64::MAX {
                while let Ok((s, _)) = listener.accept() {
                    let _ = s.set_nonblocking(true);
                    let _ = s.set_nodelay(true);
                    let fd = s.into_raw_fd();
                    let flags = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLET | libc::EPOLLRDHUP) as u32;
                    if ep.add(fd, flags, fd as u64).is_err() {
                        close(fd);
                    }
                }
                continue;
            }
            let fd = tok as RawFd;
            let mut dead = bits & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
            if let Some(p) = pending.get_mut(&fd)
                && !p.is_empty()
            {
                // SAFETY: valid buffer.
                let w = unsafe { libc::write(fd, p.as_ptr().cast(), p.len()) };
                if w > 0 {
                    p.drain(..w as usize);
                } else if errno() != libc::EAGAIN {
                    dead = true;
                }
            }
            while !dead && pending.get(&fd).is_none_or(|p| p.is_empty()) {
                // SAFETY: valid buffer.
                let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if r == 0 {
                    dead = true;
                } else if r < 0 {
                    if errno() != libc::EAGAIN {
                        dead = true;
                    }
                    break;
                } else {
                    let r = r as usize;
                    // SAFETY: valid buffer.
                    let w = unsafe { libc::write(fd, buf.as_ptr().cast(), r) };
                    let w = if w < 0 { 0 } else { w as usize };
                    if w < r {
                        pending.entry(fd).or_default().extend_from_slice(&buf[w..r]);
                    }
                }
            }
            if dead {
                pending.remove(&fd);
                close(fd);
            }
        }
    }
}

// ---------------------------------------------------------------- worker role

#[derive(Clone, Copy, PartialEq)]
enum St {
    Connecting,
    Idle,
    Waiting,
    Dead,
}

struct Client {
    id: usize,
    fd: RawFd,
    st: St,
    since: Instant,
    seq: u64,
    got: usize,
    answered: u64,
}

#[derive(Default, Clone, Copy, Debug)]
struct Errors {
    connect: usize,
    reset: usize,
    eof: usize,
    mismatch: usize,
    other: usize,
}

impl Errors {
    fn total(&self) -> usize {
        self.connect + self.reset + self.eof + self.mismatch + self.other
    }
    fn add(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.reset += o.reset;
        self.eof += o.eof;
        self.mismatch += o.mismatch;
        self.other += o.other;
    }
    fn describe(&self) -> String {
        format!(
            "connect {} / reset {} / eof {} / mismatch {} / other {}",
            self.connect, self.reset, self.eof, self.mismatch, self.other
        )
    }
}

fn message(id: usize, seq: u64, size: usize) -> Vec<u8> {
    let mut m = format!("{id:08x} {seq:016x} ").into_bytes();
    m.resize(size.max(2), b'.');
    *m.last_mut().expect("non-empty") = b'\n';
    m
}

fn new_client(src: Ipv4Addr, dst: SocketAddrV4) -> io::Result<RawFd> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    if src != Ipv4Addr::LOCALHOST {
        let one: libc::c_int = 1;
        // SAFETY: valid socket and option.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        s.bind(&SocketAddr::V4(SocketAddrV4::new(src, 0)).into())?;
    }
    match s.connect(&SocketAddr::V4(dst).into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(s.into_raw_fd())
}

/// A borrowed raw fd, for socket2::SockRef.
struct Fd(RawFd);
impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}
impl std::os::fd::AsFd for Fd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: the fd stays open while the SockRef is used.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.0) }
    }
}

fn sources(a: &Args) -> Vec<Ipv4Addr> {
    if !a.sources.is_empty() {
        return a.sources.clone();
    }
    let k = a.clients.div_ceil(10_000);
    if k <= 1 {
        vec![Ipv4Addr::LOCALHOST]
    } else {
        (1..=k as u8).map(|i| Ipv4Addr::new(127, 0, 1, i)).collect()
    }
}

/// Runs this worker's share of the clients (ids `index, index+workers, ...`)
/// on the global spawn schedule, printing a TICK line per report interval and
/// FIRSTERR/END lines at the end.
fn worker_main(a: &Args) {
    raise_nofile(u64::MAX >> 1);
    let out = io::stdout();
    let mut out = out.lock();
    let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, a.port);
    let srcs = sources(a);
    let start = instant_at(a.start_unix_ms);
    let spawn_iv = Duration::from_micros(a.spawn_interval_us);
    let req_iv = Duration::from_micros(a.request_interval_us);
    let stall = Duration::from_millis(a.stall_ms);
    let tick = a.report_every();
    let ramp_end = start + spawn_iv * a.clients as u32;
    let end = ramp_end + Duration::from_secs(a.hold_secs);
    let hard_end = start + Duration::from_secs(a.max_secs);
    let mine: Vec<usize> = (a.worker_index..a.clients).step_by(a.workers.max(1)).collect();
    let ep = Epoll::new().expect("epoll");
    let mut clients: Vec<Client> = Vec::with_capacity(mine.len());
    let mut queue: VecDeque<(Instant, usize)> = VecDeque::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 4096];
    let mut buf = vec![0u8; 65536];
    let mut errors = Errors::default();
    let mut lat: Vec<u32> = Vec::new();
    let mut answered: u64 = 0;
    let mut first_error: Option<String> = None;
    let mut k = 1u64;
    let spawn_at = |j: usize| start + spawn_iv * mine[j] as u32;

    let send = |c: &mut Client, size: usize| -> bool {
        let m = message(c.id, c.seq, size);
        // SAFETY: valid buffer; MSG_NOSIGNAL so a dead peer is an error, not SIGPIPE.
        let w = unsafe { libc::send(c.fd, m.as_ptr().cast(), m.len(), libc::MSG_NOSIGNAL) };
        c.st = St::Waiting;
        c.since = Instant::now();
        c.got = 0;
        w == m.len() as isize
    };

    loop {
        let now = Instant::now();
        // report ticks (the last one at `end`, or at the hard bound)
        let tick_at = (start + tick * k as u32).min(end);
        if now >= tick_at || now >= hard_end {
            let held = clients
                .iter()
                .filter(|c| matches!(c.st, St::Idle | St::Waiting))
                .count();
            let stalled = clients
                .iter()
                .filter(|c| c.st == St::Waiting && now - c.since > stall)
                .count();
            let never = clients.iter().filter(|c| c.st != St::Dead && c.answered == 0).count();
            let served = clients.iter().filter(|c| c.st != St::Dead && c.answered > 0).count();
            let mut line = format!(
                "TICK {k} {} {held} {answered} {} {} {} {} {} {stalled} {never} {served} |",
                clients.len(),
                errors.connect,
                errors.reset,
                errors.eof,
                errors.mismatch,
                errors.other
            );
            for l in &lat {
                line += &format!(" {l}");
            }
            lat.clear();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
            k += 1;
            if now >= end || now >= hard_end {
                break;
            }
            continue;
        }
        // spawn due clients
        while clients.len() < mine.len() && now >= spawn_at(clients.len()) {
            let id = mine[clients.len()];
            let idx = clients.len();
            match new_client(srcs[id % srcs.len()], dst) {
                Ok(fd) => {
                    let flags = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLET | libc::EPOLLRDHUP) as u32;
                    let _ = ep.add(fd, flags, idx as u64);
                    clients.push(Client {
                        id,
                        fd,
                        st: St::Connecting,
                        since: now,
                        seq: 0,
                        got: 0,
                        answered: 0,
                    });
                }
                Err(e) => {
                    errors.connect += 1;
                    first_error.get_or_insert_with(|| format!("connect: {e}"));
                    clients.push(Client {
                        id,
                        fd: -1,
                        st: St::Dead,
                        since: now,
                        seq: 0,
                        got: 0,
                        answered: 0,
                    });
                }
            }
        }
        // due requests
        while let Some(&(t, i)) = queue.front() {
            if t > now {
                break;
            }
            queue.pop_front();
            let c = &mut clients[i];
            if c.st == St::Idle && !send(c, a.msg_size) {
                errors.other += 1;
                first_error.get_or_insert_with(|| format!("send: {}", io::Error::last_os_error()));
                c.st = St::Dead;
                close(c.fd);
            }
        }
        let mut due = tick_at.min(hard_end);
        if clients.len() < mine.len() {
            due = due.min(spawn_at(clients.len()));
        }
        if let Some(&(t, _)) = queue.front() {
            due = due.min(t);
        }
        let n = ep.wait(&mut events, due.saturating_duration_since(Instant::now()));
        for ev in &events[..n] {
            let (bits, i) = (ev.events, ev.u64 as usize);
            let c = &mut clients[i];
            if c.st == St::Dead {
                continue;
            }
            if c.st == St::Connecting {
                if bits & (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32 == 0 {
                    continue;
                }
                let fd = Fd(c.fd);
                let sock = socket2::SockRef::from(&fd);
                match sock.take_error() {
                    Ok(None) if bits & libc::EPOLLERR as u32 == 0 => {
                        if !send(c, a.msg_size) {
                            errors.other += 1;
                            c.st = St::Dead;
                            close(c.fd);
                        }
                    }
                    r => {
                        errors.connect += 1;
                        first_error.get_or_insert_with(|| format!("connect: {r:?}"));
                        c.st = St::Dead;
                        close(c.fd);
                    }
                }
                continue;
            }
            loop {
                // SAFETY: valid buffer.
                let r = unsafe { libc::read(c.fd, buf.as_mut_ptr().cast(), buf.len()) };
                if r > 0 {
                    let r = r as usize;
                    let expect = message(c.id, c.seq, a.msg_size);
                    if c.st != St::Waiting || c.got + r > expect.len() || buf[..r] != expect[c.got..c.got + r] {
                        errors.mismatch += 1;
                        first_error.get_or_insert_with(|| "reply bytes differ".into());
                        c.st = St::Dead;
                        close(c.fd);
                        break;
                    }
                    c.got += r;
                    if c.got == expect.len() {
                        lat.push(c.since.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        answered += 1;
                        c.answered += 1;
                        c.seq += 1;
                        c.st = St::Idle;
                        queue.push_back((Instant::now() + req_iv, i));
                    }
                    continue;
                }
                let e = errno();
                if r < 0 && e == libc::EAGAIN {
                    break;
                }
                if r == 0 {
                    errors.eof += 1;
                    first_error.get_or_insert_with(|| "EOF from forwarder".into());
                } else if e == libc::ECONNRESET {
                    errors.reset += 1;
                    first_error.get_or_insert_with(|| "connection reset".into());
                } else {
                    errors.other += 1;
                    first_error.get_or_insert_with(|| format!("read: {}", io::Error::from_raw_os_error(e)));
                }
                c.st = St::Dead;
                close(c.fd);
                break;
            }
        }
    }
    if let Some(e) = first_error {
        let _ = writeln!(out, "FIRSTERR {e}");
    }
    let _ = writeln!(out, "END {}", u8::from(Instant::now() >= hard_end && hard_end < end));
    let _ = out.flush();
    for c in &clients {
        if c.st != St::Dead {
            close(c.fd);
        }
    }
}

// ---------------------------------------------------------------- coordinator

#[derive(Default, Clone)]
struct Tick {
    spawned: usize,
    held: usize,
    answered: u64,
    errors: Errors,
    stalled: usize,
    never: usize,
    served: usize,
    lat: Vec<u32>,
}

fn parse_tick(line: &str) -> Option<(u64, Tick)> {
    let (head, lat) = line.split_once('|')?;
    let v: Vec<u64> = head
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() != 12 {
        return None;
    }
    let errors = Errors {
        connect: v[4] as usize,
        reset: v[5] as usize,
        eof: v[6] as usize,
        mismatch: v[7] as usize,
        other: v[8] as usize,
    };
    let lat = lat.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    Some((
        v[0],
        Tick {
            spawned: v[1] as usize,
            held: v[2] as usize,
            answered: v[3],
            errors,
            stalled: v[9] as usize,
            never: v[10] as usize,
            served: v[11] as usize,
            lat,
        },
    ))
}

/// Percentiles (0..=100) of `v`, which is sorted in place.
fn percentiles(v: &mut [u32], ps: &[f64]) -> Vec<u32> {
    v.sort_unstable();
    ps.iter()
        .map(|p| {
            if v.is_empty() {
                0
            } else {
                let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
                v[i.min(v.len() - 1)]
            }
        })
        .collect()
}

/// A worker or backend process of this run: killed and reaped when dropped (a backend also
/// exits when its standard input closes).
struct RoleProc(Child);

impl Drop for RoleProc {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_self(args: &[String]) -> io::Result<RoleProc> {
    Command::new(std::env::current_exe()?)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map(RoleProc)
}

/// If this program was started as a worker or backend of a load run (`--role ...`), does that
/// job and exits; otherwise returns at once.
pub fn serve_role() {
    let mut argv = std::env::args();
    if argv.nth(1).as_deref() != Some("--role") {
        return;
    }
    let a = Args::parse();
    match a.role.as_deref() {
        Some("backend") => {
            if let Err(e) = backend_main(a.port) {
                eprintln!("portfwd-load: backend: {e}");
                std::process::exit(2);
            }
        }
        Some("worker") => worker_main(&a),
        r => {
            eprintln!("portfwd-load: unknown role {r:?}");
            std::process::exit(2);
        }
    }
    std::process::exit(0);
}

/// How a load run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub label: String,
    /// Clients started.
    pub clients: usize,
    /// Connections held at the end.
    pub held: usize,
    /// Connections that had at least one reply by the end.
    pub served: usize,
    pub peak_held: usize,
    pub never_answered: usize,
    /// Requests answered.
    pub answered: u64,
    pub errors: usize,
    pub connect_errors: usize,
    pub resets: usize,
    pub eofs: usize,
    pub mismatches: usize,
    pub p50_us: u32,
    pub p99_us: u32,
    /// The forwarder was still running at the end.
    pub alive: bool,
    /// The run hit `--max-secs` before it was over.
    pub cut_short: bool,
}

impl Summary {
    /// The machine-readable `SUMMARY k=v ...` line.
    pub fn kv_line(&self) -> String {
        format!(
            "SUMMARY label={} clients={} held={} served={} peak_held={} never_answered={} answered={} errors={} connect_errors={} resets={} eofs={} mismatches={} p50_us={} p99_us={} alive={} cut_short={}",
            self.label.replace(' ', "_"),
            self.clients,
            self.held,
            self.served,
            self.peak_held,
            self.never_answered,
            self.answered,
            self.errors,
            self.connect_errors,
            self.resets,
            self.eofs,
            self.mismatches,
            self.p50_us,
            self.p99_us,
            self.alive,
            self.cut_short
        )
    }
}

/// Runs the load test `a` describes, printing its table on stdout as it goes, and returns the
/// summary. The caller must have called [`serve_role`] at the start of its `main`.
pub fn run(a: &Args) -> Result<Summary, String> {
    let Some(forwarder) = a.forwarder.clone() else {
        return Err("--forwarder PATH is required (see --help)".into());
    };
    if a.clients == 0 || a.msg_size < 26 || a.per_process == 0 {
        return Err("--clients and --per-process must be > 0 and --msg-size >= 26".into());
    }
    if !forwarder.is_file() {
        return Err(format!("forwarder not found: {}", forwarder.display()));
    }
    set_subreaper();
    let nofile = raise_nofile(a.per_process as u64 + 4096);
    let procs_needed = a.clients.div_ceil(a.per_process);

    // echo backends sharing one port
    let mut backends: Vec<RoleProc> = Vec::new();
    let mut bport = 0u16;
    for _ in 0..procs_needed {
        let mut b = spawn_self(&["--role".into(), "backend".into(), "--port".into(), bport.to_string()])
            .map_err(|e| format!("echo backend: {e}"))?;
        let mut line = String::new();
        let mut rd = BufReader::new(b.0.stdout.take().expect("piped"));
        let _ = rd.read_line(&mut line);
        backends.push(b);
        bport = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("echo backend did not start: {line:?}"))?;
    }

    let mut spec = Spec::parse_extra(&forwarder.to_string_lossy())?;
    spec.pre_args = a.forwarder_args.clone();
    spec.label = a.label.clone();
    let launch = Launch {
        spec: &spec,
        bind: None,
        host: "127.0.0.1".into(),
        host_port: bport,
        accept_dispatch: false,
        port: None,
    };
    let mut fwd = launch.start()?;
    let srcs = sources(a);
    eprintln!(
        "portfwd-load: {} on port {} -> echo 127.0.0.1:{bport} ({procs_needed} backend and worker processes); {} clients, spawn every {} µs, {} µs between requests, hold {} s, sources {:?}, nofile {nofile}",
        a.label, fwd.port, a.clients, a.spawn_interval_us, a.request_interval_us, a.hold_secs, srcs
    );

    // workers
    let start_unix = unix_ms() + 300;
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut workers = Vec::new();
    for w in 0..procs_needed {
        let mut args: Vec<String> = vec![
            "--role".into(),
            "worker".into(),
            "--port".into(),
            fwd.port.to_string(),
            "--worker-index".into(),
            w.to_string(),
            "--workers".into(),
            procs_needed.to_string(),
            "--start-unix-ms".into(),
            start_unix.to_string(),
            "--clients".into(),
            a.clients.to_string(),
            "--spawn-interval-us".into(),
            a.spawn_interval_us.to_string(),
            "--request-interval-us".into(),
            a.request_interval_us.to_string(),
            "--hold-secs".into(),
            a.hold_secs.to_string(),
            "--report-ms".into(),
            a.report_every().as_millis().to_string(),
            "--msg-size".into(),
            a.msg_size.to_string(),
            "--max-secs".into(),
            a.max_secs.to_string(),
            "--stall-ms".into(),
            a.stall_ms.to_string(),
        ];
        if !a.sources.is_empty() {
            args.push("--sources".into());
            args.push(a.sources.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(","));
        }
        let mut c = spawn_self(&args).map_err(|e| format!("worker: {e}"))?;
        let out = c.0.stdout.take().expect("piped");
        let tx = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send((w, line)).is_err() {
                    break;
                }
            }
            let _ = tx.send((w, "EOF".into()));
        });
        workers.push(c);
    }
    drop(tx);

    // merge
    let start = instant_at(start_unix);
    let tick = a.report_every();
    let ramp_end_s = (a.clients as u64 * a.spawn_interval_us) as f64 / 1e6;
    let mut pending: HashMap<u64, Vec<Option<Tick>>> = HashMap::new();
    let mut next_k = 1u64;
    let mut last: Vec<Tick> = vec![Tick::default(); procs_needed];
    let mut finished = vec![false; procs_needed];
    let mut first_error: Option<String> = None;
    let mut cut_short = false;
    let mut hold_lat: Vec<u32> = Vec::new();
    let mut peak_held = 0;
    let mut prev_answered = 0u64;
    let mut prev_t = 0.0f64;
    let deadline = Instant::now() + Duration::from_secs(a.max_secs + 60);
    println!("# {}", a.label);
    println!(
        "{:>7} {:>7} {:>7} {:>7} {:>10} {:>9} {:>6} {:>7} {:>8} {:>8} {:>8} {:>9} {:>6} {:>8}",
        "time_s",
        "clients",
        "held",
        "served",
        "answered",
        "req/s",
        "errors",
        "stalled",
        "p50_us",
        "p90_us",
        "p99_us",
        "max_us",
        "procs",
        "main_fds"
    );
    while finished.iter().any(|f| !f) {
        let Ok((w, line)) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
            cut_short = true;
            break;
        };
        if line == "EOF" || line.starts_with("END ") {
            if line == "END 1" {
                cut_short = true;
            }
            finished[w] = true;
        } else if let Some(e) = line.strip_prefix("FIRSTERR ") {
            first_error.get_or_insert_with(|| e.to_string());
        } else if let Some((k, t)) = parse_tick(&line) {
            pending.entry(k).or_insert_with(|| vec![None; procs_needed])[w] = Some(t);
        }
        // print every tick all workers have reported (or that finished workers never will)
        while let Some(slots) = pending.get(&next_k) {
            if !slots.iter().enumerate().all(|(i, s)| s.is_some() || finished[i]) {
                break;
            }
            let slots = pending.remove(&next_k).expect("present");
            let mut sum = Tick::default();
            for (i, s) in slots.into_iter().enumerate() {
                let t = s.unwrap_or_else(|| Tick {
                    lat: vec![],
                    ..last[i].clone()
                });
                sum.spawned += t.spawned;
                sum.held += t.held;
                sum.answered += t.answered;
                sum.errors.add(&t.errors);
                sum.stalled += t.stalled;
                sum.never += t.never;
                sum.served += t.served;
                sum.lat.extend_from_slice(&t.lat);
                last[i] = Tick { lat: vec![], ..t };
            }
            let t_s = start.elapsed().as_secs_f64().min((tick * next_k as u32).as_secs_f64());
            if t_s > ramp_end_s {
                hold_lat.extend_from_slice(&sum.lat);
            }
            let pct = percentiles(&mut sum.lat, &[50.0, 90.0, 99.0, 100.0]);
            let rate = (sum.answered - prev_answered) as f64 / (t_s - prev_t).max(1e-3);
            prev_answered = sum.answered;
            prev_t = t_s;
            peak_held = peak_held.max(sum.held);
            println!(
                "{:>7.1} {:>7} {:>7} {:>7} {:>10} {:>9.0} {:>6} {:>7} {:>8} {:>8} {:>8} {:>9} {:>6} {:>8}",
                t_s,
                sum.spawned,
                sum.held,
                sum.served,
                sum.answered,
                rate,
                sum.errors.total(),
                sum.stalled,
                pct[0],
                pct[1],
                pct[2],
                pct[3],
                fwd.procs().len(),
                fwd.fd_count().unwrap_or(0)
            );
            next_k += 1;
        }
    }
    let fin = last.iter().fold(Tick::default(), |mut s, t| {
        s.spawned += t.spawned;
        s.held += t.held;
        s.answered += t.answered;
        s.errors.add(&t.errors);
        s.never += t.never;
        s.served += t.served;
        s
    });
    let hp = percentiles(&mut hold_lat, &[50.0, 90.0, 99.0, 100.0]);
    let procs = fwd.procs().len();
    let alive = fwd.alive();
    println!(
        "summary: {}: clients {} held at end {} (peak {}), served at end {}, never answered {}, requests answered {}, errors {} ({}), hold-phase latency p50/p90/p99/max {}/{}/{}/{} µs, forwarder processes after the clients closed {}{}{}",
        a.label,
        fin.spawned,
        fin.held,
        peak_held,
        fin.served,
        fin.never,
        fin.answered,
        fin.errors.total(),
        fin.errors.describe(),
        hp[0],
        hp[1],
        hp[2],
        hp[3],
        procs,
        if alive { "" } else { ", forwarder EXITED" },
        if cut_short { " (cut short by --max-secs)" } else { "" }
    );
    if let Some(e) = &first_error {
        println!("first error: {e}");
    }
    let summary = Summary {
        label: a.label.clone(),
        clients: fin.spawned,
        held: fin.held,
        served: fin.served,
        peak_held,
        never_answered: fin.never,
        answered: fin.answered,
        errors: fin.errors.total(),
        connect_errors: fin.errors.connect,
        resets: fin.errors.reset,
        eofs: fin.errors.eof,
        mismatches: fin.errors.mismatch,
        p50_us: hp[0],
        p99_us: hp[2],
        alive,
        cut_short,
    };
    drop(workers);
    fwd.stop();
    drop(backends);
    Ok(summary)
}
