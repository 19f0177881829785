//! portfwd-load: the seed's Case 1 ("maximum active sockets") for any
//! forwarder with the seed's CLI.
//!
//! Starts an epoll echo backend (a thread of this process) and the forwarder
//! (own process group) in front of it, then ramps echo clients with the seed's
//! parameters: one new client every 2 ms, each sending a request, waiting for
//! its reply, pausing 10 µs, and so on. After the ramp it holds all clients
//! for a while. Every `--report-every` clients (and every second while
//! holding) it prints connections held, requests answered, errors and latency
//! percentiles. All sockets are on 127.0.0.0/8; the run is bounded in count
//! (`--clients`) and time (`--max-secs`).

#[path = "fwdkit/mod.rs"]
mod fwdkit;

use clap::Parser;
use fwdkit::{Launch, Spec, percentiles};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "portfwd-load",
    about = "Ramp echo clients through a forwarder with the seed's CLI (the seed's test case 1)",
    after_help = "Example (CI size): portfwd-load --forwarder target/debug/portfwd --clients 1000\n\
                  Full mode (the seed's 20,000): see scripts/load-test.sh --full."
)]
struct Args {
    /// Forwarder binary taking `[ARGS] PORT HOSTNAME HOST_PORT`.
    #[arg(long)]
    forwarder: PathBuf,
    /// Extra argument placed before the seed's positional arguments (repeatable).
    #[arg(long = "forwarder-arg", allow_hyphen_values = true)]
    forwarder_args: Vec<String>,
    /// Name shown in the report.
    #[arg(long, default_value = "forwarder")]
    label: String,
    /// Number of clients to ramp up to.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Delay between client spawns, µs (seed: 0.002 s).
    #[arg(long, default_value_t = 2000)]
    spawn_interval_us: u64,
    /// Delay between a reply and the client's next request, µs (seed: 10000 ns).
    #[arg(long, default_value_t = 10)]
    request_interval_us: u64,
    /// Seconds to hold all clients after the ramp.
    #[arg(long, default_value_t = 3)]
    hold_secs: u64,
    /// Print a report row every N clients spawned (default: clients/10).
    #[arg(long)]
    report_every: Option<usize>,
    /// Client source addresses, comma separated (default: one 127.0.1.x per 10,000 clients).
    #[arg(long, value_delimiter = ',')]
    sources: Vec<Ipv4Addr>,
    /// Request size in bytes.
    #[arg(long, default_value_t = 32)]
    msg_size: usize,
    /// Hard bound on the whole run, seconds.
    #[arg(long, default_value_t = 300)]
    max_secs: u64,
    /// A client waiting longer than this for a reply counts as stalled, ms.
    #[arg(long, default_value_t = 1000)]
    stall_ms: u64,
    /// Also print one machine-readable SUMMARY line.
    #[arg(long)]
    kv: bool,
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
    fn wait(&self, events: &mut [libc::epoll_event], timeout: Option<Duration>) -> usize {
        let ts = timeout.map(|d| libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        });
        let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: the events buffer and the timespec outlive the call.
        let n = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait2,
                self.0,
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                tsp,
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

// ---------------------------------------------------------------- backend

/// Edge-triggered epoll echo server; returns its port. Runs until `stop`.
fn start_echo_backend(stop: Arc<AtomicBool>, open: Arc<AtomicUsize>) -> io::Result<(u16, thread::JoinHandle<()>)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let ep = Epoll::new()?;
    ep.add(listener.as_raw_fd(), libc::EPOLLIN as u32, u64::MAX)?;
    let h = thread::spawn(move || {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let mut pending: HashMap<RawFd, Vec<u8>> = HashMap::new();
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            let n = ep.wait(&mut events, Some(Duration::from_millis(100)));
            for ev in &events[..n] {
                let (bits, tok) = (ev.events, ev.u64);
                if tok == u64::MAX {
                    while let Ok((s, _)) = listener.accept() {
                        let _ = s.set_nonblocking(true);
                        let _ = s.set_nodelay(true);
                        let fd = s.into_raw_fd();
                        let flags = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLET | libc::EPOLLRDHUP) as u32;
                        if ep.add(fd, flags, fd as u64).is_ok() {
                            open.fetch_add(1, Ordering::Relaxed);
                        } else {
                            close(fd);
                        }
                    }
                    continue;
                }
                let fd = tok as RawFd;
                let mut dead = bits & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
                // flush what is pending, then read and echo until EAGAIN
                if let Some(p) = pending.get_mut(&fd) {
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
                    open.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    });
    Ok((port, h))
}

// ---------------------------------------------------------------- clients

#[derive(Clone, Copy, PartialEq)]
enum St {
    Connecting,
    Idle,
    Waiting,
    Dead,
}

struct Client {
    fd: RawFd,
    st: St,
    since: Instant,
    seq: u64,
    got: usize,
    answered: u64,
}

#[derive(Default, Clone, Copy)]
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

struct Row {
    elapsed: f64,
    spawned: usize,
    held: usize,
    answered: u64,
    rate: f64,
    errors: usize,
    stalled: usize,
    pct: Vec<u32>,
    procs: usize,
    main_fds: usize,
}

fn print_header(label: &str) {
    println!("# {label}");
    println!(
        "{:>7} {:>7} {:>7} {:>10} {:>9} {:>6} {:>7} {:>8} {:>8} {:>8} {:>9} {:>6} {:>8}",
        "time_s",
        "clients",
        "held",
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
}

fn print_row(r: &Row) {
    println!(
        "{:>7.1} {:>7} {:>7} {:>10} {:>9.0} {:>6} {:>7} {:>8} {:>8} {:>8} {:>9} {:>6} {:>8}",
        r.elapsed,
        r.spawned,
        r.held,
        r.answered,
        r.rate,
        r.errors,
        r.stalled,
        r.pct[0],
        r.pct[1],
        r.pct[2],
        r.pct[3],
        r.procs,
        r.main_fds
    );
}

fn main() {
    let a = Args::parse();
    if a.clients == 0 || a.msg_size < 26 {
        eprintln!("portfwd-load: --clients must be > 0 and --msg-size >= 26");
        std::process::exit(2);
    }
    if !a.forwarder.is_file() {
        eprintln!("portfwd-load: forwarder not found: {}", a.forwarder.display());
        std::process::exit(2);
    }
    fwdkit::set_subreaper();
    let want_fds = (a.clients as u64) * 2 + 4096;
    let nofile = raise_nofile(want_fds);
    if nofile < want_fds {
        eprintln!("portfwd-load: warning: RLIMIT_NOFILE is {nofile}, {want_fds} wanted (raise `ulimit -n`)");
    }
    let sources: Vec<Ipv4Addr> = if a.sources.is_empty() {
        let k = a.clients.div_ceil(10_000);
        if k <= 1 {
            vec![Ipv4Addr::LOCALHOST]
        } else {
            (1..=k as u8).map(|i| Ipv4Addr::new(127, 0, 1, i)).collect()
        }
    } else {
        a.sources.clone()
    };

    let stop = Arc::new(AtomicBool::new(false));
    let backend_open = Arc::new(AtomicUsize::new(0));
    let (bport, backend) = match start_echo_backend(stop.clone(), backend_open.clone()) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("portfwd-load: echo backend: {e}");
            std::process::exit(2);
        }
    };
    let mut spec = Spec::parse_extra(&a.forwarder.to_string_lossy()).expect("path");
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
    let mut fwd = match launch.start() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("portfwd-load: {e}");
            std::process::exit(2);
        }
    };
    let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, fwd.port);
    eprintln!(
        "portfwd-load: {} on port {} -> echo 127.0.0.1:{bport}; {} clients, spawn every {} µs, {} µs between requests, hold {} s, sources {:?}, nofile {nofile}",
        a.label, fwd.port, a.clients, a.spawn_interval_us, a.request_interval_us, a.hold_secs, sources
    );

    let ep = Epoll::new().expect("epoll");
    let spawn_iv = Duration::from_micros(a.spawn_interval_us);
    let req_iv = Duration::from_micros(a.request_interval_us);
    let stall = Duration::from_millis(a.stall_ms);
    let report_every = a.report_every.unwrap_or((a.clients / 10).max(1));
    let start = Instant::now();
    let hard_end = start + Duration::from_secs(a.max_secs);
    let mut clients: Vec<Client> = Vec::with_capacity(a.clients);
    let mut queue: VecDeque<(Instant, usize)> = VecDeque::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 4096];
    let mut buf = vec![0u8; 65536];
    let mut errors = Errors::default();
    let mut lat: Vec<u32> = Vec::new();
    let mut all_hold_lat: Vec<u32> = Vec::new();
    let mut answered: u64 = 0;
    let mut last_report = (start, 0u64);
    let mut next_spawn = start;
    let mut ramp_done_at: Option<Instant> = None;
    let mut next_hold_report = None;
    let mut rows: Vec<Row> = Vec::new();
    let mut peak_held = 0usize;
    let mut first_error: Option<String> = None;
    let mut cut_short = false;
    print_header(&a.label);

    // send the next request of client i
    let send = |c: &mut Client, i: usize, size: usize| -> bool {
        let m = message(i, c.seq, size);
        // SAFETY: valid buffer; MSG_NOSIGNAL so a dead peer is an error, not SIGPIPE.
        let w = unsafe { libc::send(c.fd, m.as_ptr().cast(), m.len(), libc::MSG_NOSIGNAL) };
        c.st = St::Waiting;
        c.since = Instant::now();
        c.got = 0;
        w == m.len() as isize
    };

    loop {
        let now = Instant::now();
        if now >= hard_end {
            cut_short = true;
            break;
        }
        // spawn due clients
        while clients.len() < a.clients && now >= next_spawn {
            let i = clients.len();
            let src = sources[i % sources.len()];
            match new_client(src, dst) {
                Ok(fd) => {
                    let flags = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLET | libc::EPOLLRDHUP) as u32;
                    let _ = ep.add(fd, flags, i as u64);
                    clients.push(Client {
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
                        fd: -1,
                        st: St::Dead,
                        since: now,
                        seq: 0,
                        got: 0,
                        answered: 0,
                    });
                }
            }
            next_spawn += spawn_iv;
            if clients.len().is_multiple_of(report_every) || clients.len() == a.clients {
                let row = make_row(
                    &clients,
                    &mut lat,
                    &mut last_report,
                    answered,
                    &errors,
                    stall,
                    start,
                    &fwd,
                );
                peak_held = peak_held.max(row.held);
                print_row(&row);
                rows.push(row);
            }
        }
        if clients.len() == a.clients && ramp_done_at.is_none() {
            ramp_done_at = Some(now);
            next_hold_report = Some(now + Duration::from_secs(1));
        }
        if let Some(t) = next_hold_report
            && now >= t
        {
            all_hold_lat.extend_from_slice(&lat);
            let row = make_row(
                &clients,
                &mut lat,
                &mut last_report,
                answered,
                &errors,
                stall,
                start,
                &fwd,
            );
            peak_held = peak_held.max(row.held);
            print_row(&row);
            rows.push(row);
            next_hold_report = Some(t + Duration::from_secs(1));
            if now >= ramp_done_at.expect("set") + Duration::from_secs(a.hold_secs) {
                break;
            }
        }
        // due requests
        while let Some(&(t, i)) = queue.front() {
            if t > now {
                break;
            }
            queue.pop_front();
            let c = &mut clients[i];
            if c.st == St::Idle && !send(c, i, a.msg_size) {
                errors.other += 1;
                first_error.get_or_insert_with(|| format!("send: {}", io::Error::last_os_error()));
                c.st = St::Dead;
                close(c.fd);
            }
        }
        // wait for events until the next due time
        let mut due = next_spawn.min(next_hold_report.unwrap_or(hard_end));
        if clients.len() == a.clients {
            due = next_hold_report.unwrap_or(hard_end);
        }
        if let Some(&(t, _)) = queue.front() {
            due = due.min(t);
        }
        let timeout = due.saturating_duration_since(Instant::now());
        let n = ep.wait(&mut events, Some(timeout));
        for ev in &events[..n] {
            let (bits, i) = (ev.events, ev.u64 as usize);
            let c = &mut clients[i];
            if c.st == St::Dead {
                continue;
            }
            if c.st == St::Connecting {
                if bits & libc::EPOLLOUT as u32 == 0 && bits & (libc::EPOLLERR | libc::EPOLLHUP) as u32 == 0 {
                    continue;
                }
                let fd = Fd(c.fd);
                let sock = socket2::SockRef::from(&fd);
                match sock.take_error() {
                    Ok(None) if bits & libc::EPOLLERR as u32 == 0 => {
                        if !send(c, i, a.msg_size) {
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
            // read what is there (edge-triggered: until EAGAIN)
            loop {
                // SAFETY: valid buffer.
                let r = unsafe { libc::read(c.fd, buf.as_mut_ptr().cast(), buf.len()) };
                if r > 0 {
                    let r = r as usize;
                    let expect = message(i, c.seq, a.msg_size);
                    if c.st != St::Waiting || c.got + r > expect.len() || buf[..r] != expect[c.got..c.got + r] {
                        errors.mismatch += 1;
                        first_error.get_or_insert_with(|| "reply bytes differ".into());
                        c.st = St::Dead;
                        close(c.fd);
                        break;
                    }
                    c.got += r;
                    if c.got == expect.len() {
                        let us = c.since.elapsed().as_micros().min(u32::MAX as u128) as u32;
                        lat.push(us);
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
    all_hold_lat.extend_from_slice(&lat);

    // summary
    let held_now = clients
        .iter()
        .filter(|c| matches!(c.st, St::Idle | St::Waiting))
        .count();
    let never = clients.iter().filter(|c| c.st != St::Dead && c.answered == 0).count();
    let hold_pct = percentiles(&mut all_hold_lat, &[50.0, 90.0, 99.0, 100.0]);
    let procs = fwd.procs().len();
    println!(
        "summary: {}: clients {} held at end {} (peak {}), never answered {}, requests answered {}, errors {} ({}), hold-phase latency p50/p90/p99/max {}/{}/{}/{} µs, forwarder processes {}{}",
        a.label,
        clients.len(),
        held_now,
        peak_held,
        never,
        answered,
        errors.total(),
        errors.describe(),
        hold_pct[0],
        hold_pct[1],
        hold_pct[2],
        hold_pct[3],
        procs,
        if cut_short { " (cut short by --max-secs)" } else { "" }
    );
    if let Some(e) = &first_error {
        println!("first error: {e}");
    }
    if a.kv {
        println!(
            "SUMMARY label={} clients={} held={} peak_held={} never_answered={} answered={} errors={} connect_errors={} resets={} eofs={} mismatches={} p50_us={} p99_us={} cut_short={}",
            a.label.replace(' ', "_"),
            clients.len(),
            held_now,
            peak_held,
            never,
            answered,
            errors.total(),
            errors.connect,
            errors.reset,
            errors.eof,
            errors.mismatch,
            hold_pct[0],
            hold_pct[2],
            cut_short
        );
    }
    for c in &clients {
        if c.st != St::Dead {
            close(c.fd);
        }
    }
    fwd.stop();
    stop.store(true, Ordering::Relaxed);
    let _ = backend.join();
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

#[allow(clippy::too_many_arguments)]
fn make_row(
    clients: &[Client],
    lat: &mut Vec<u32>,
    last: &mut (Instant, u64),
    answered: u64,
    errors: &Errors,
    stall: Duration,
    start: Instant,
    fwd: &fwdkit::Fwd,
) -> Row {
    let now = Instant::now();
    let held = clients
        .iter()
        .filter(|c| matches!(c.st, St::Idle | St::Waiting))
        .count();
    let stalled = clients
        .iter()
        .filter(|c| c.st == St::Waiting && now - c.since > stall)
        .count();
    let pct = percentiles(lat, &[50.0, 90.0, 99.0, 100.0]);
    lat.clear();
    let dt = (now - last.0).as_secs_f64().max(1e-6);
    let rate = (answered - last.1) as f64 / dt;
    *last = (now, answered);
    Row {
        elapsed: (now - start).as_secs_f64(),
        spawned: clients.len(),
        held,
        answered,
        rate,
        errors: errors.total(),
        stalled,
        pct,
        procs: fwd.procs().len(),
        main_fds: fwd.fd_count().unwrap_or(0),
    }
}
