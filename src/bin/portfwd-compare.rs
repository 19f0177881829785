//! portfwd-compare: one scenario suite, run against any forwarder binary with
//! the seed's CLI (`PROG PORT HOSTNAME HOST_PORT`): portfwd, the C reference
//! (tests/reference/server.c) and any extra binary given. Prints what each
//! observed side by side, and exits 0 when portfwd behaves as documented.
//!
//! Everything runs on 127.0.0.0/8. Backends are threads of this process;
//! each forwarder runs in its own process group and is killed as a group.

#[path = "fwdkit/mod.rs"]
mod fwdkit;

use clap::Parser;
use fwdkit::{End, Kind, Launch, Spec, fnv64, ms, pattern, read_exact_within, read_to_end_within};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Barrier};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "portfwd-compare",
    about = "Run the comparison scenario suite against portfwd, the C reference and other forwarders with the seed's CLI",
    after_help = "EXTRA binaries are given as [LABEL=]PATH[,ARG...]; the ARGs go before the seed's \
                  three positional arguments (PORT HOSTNAME HOST_PORT). Extra binaries are assumed \
                  to bind every address (like the seed), so seed_case2 connects to 127.0.0.41 on them."
)]
struct Args {
    /// portfwd binary (default: `portfwd` next to this program).
    #[arg(long)]
    portfwd: Option<PathBuf>,
    /// C reference binary (default: build tests/reference/server.c into target/reference/server).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Leave out the C reference column.
    #[arg(long)]
    no_reference: bool,
    /// Leave out the portfwd column (e.g. to try the suite on other binaries only).
    #[arg(long)]
    no_portfwd: bool,
    /// Run only these scenarios (comma separated ids; see --list).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// List the scenarios and what portfwd is documented to do, then exit.
    #[arg(long)]
    list: bool,
    /// How long to wait for something that may never happen (EOF, a banner), in ms.
    #[arg(long, default_value_t = 2000)]
    wait_ms: u64,
    /// Output: `table` (Markdown), `kv` (one machine-readable line per result), or `both`.
    #[arg(long, default_value = "table")]
    format: String,
    /// Extra forwarder binaries: [LABEL=]PATH[,ARG...]
    extra: Vec<String>,
}

/// What one binary did in one scenario.
#[derive(Clone, Debug)]
struct Obs {
    text: String,
    /// Matches portfwd's documented behaviour.
    ok: bool,
    /// The scenario does not apply to this binary.
    na: bool,
    fields: Vec<(String, String)>,
}

impl Obs {
    fn new(ok: bool, text: impl Into<String>) -> Obs {
        Obs {
            text: text.into(),
            ok,
            na: false,
            fields: vec![],
        }
    }
    fn na(text: &str) -> Obs {
        Obs {
            text: text.into(),
            ok: true,
            na: true,
            fields: vec![],
        }
    }
    fn err(text: impl Into<String>) -> Obs {
        Obs::new(false, format!("setup error: {}", text.into()))
    }
    fn field(mut self, k: &str, v: impl ToString) -> Obs {
        self.fields.push((k.into(), v.to_string()));
        self
    }
}

struct Ctx<'a> {
    spec: &'a Spec,
    wait: Duration,
}

impl Ctx<'_> {
    /// The usual set-up of a scenario: a backend running `handler` on 127.0.0.1, the forwarder in
    /// front of it, and a client connected to the forwarder. Keep the first two alive while the
    /// client is in use.
    fn through(&self, handler: Handler) -> Result<(Backend, fwdkit::Fwd, TcpStream), Obs> {
        let (b, f) = self.fronted(handler)?;
        let c = connect(f.port).map_err(|e| Obs::err(format!("connect: {e}")))?;
        Ok((b, f, c))
    }

    /// A backend running `handler` on 127.0.0.1 and the forwarder in front of it.
    fn fronted(&self, handler: Handler) -> Result<(Backend, fwdkit::Fwd), Obs> {
        let b = Backend::start(lo(0), handler).map_err(|e| Obs::err(e.to_string()))?;
        let f = self.launch(Ipv4Addr::LOCALHOST, b.port()).start().map_err(Obs::err)?;
        Ok((b, f))
    }

    fn launch(&self, host: Ipv4Addr, host_port: u16) -> Launch<'_> {
        Launch {
            spec: self.spec,
            bind: None,
            host: host.to_string(),
            host_port,
            accept_dispatch: false,
            port: None,
        }
    }
}

struct Scenario {
    id: &'static str,
    title: &'static str,
    expect: &'static str,
    run: fn(&Ctx) -> Obs,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        id: "http_two_mappings",
        title: "HTTP through two mappings to two backends",
        expect: "requests and responses byte-identical on both mappings",
        run: sc_http_two_mappings,
    },
    Scenario {
        id: "seed_case2",
        title: "Seed case 2: 127.0.0.44 -> 127.0.0.41:8005/8006 -> 127.0.0.52:8008 / 127.0.0.53:8009, FIN order",
        expect: "bytes identical; backend's FIN reaches the client, client's FIN reaches the backend",
        run: sc_seed_case2,
    },
    Scenario {
        id: "echo_1mib",
        title: "1 MiB echo integrity",
        expect: "1 MiB echoed back identical",
        run: sc_echo_1mib,
    },
    Scenario {
        id: "echo_100_concurrent",
        title: "100 concurrent echo clients, 10 round trips each",
        expect: "all 1000 round trips identical",
        run: sc_echo_100,
    },
    Scenario {
        id: "client_half_close",
        title: "Client half-close (shutdown write), backend answers after EOF",
        expect: "backend sees EOF, client gets the answer and then EOF",
        run: sc_half_close,
    },
    Scenario {
        id: "server_closes_first",
        title: "Server closes first: when does the client see EOF?",
        expect: "client sees EOF right after the backend closes",
        run: sc_server_closes_first,
    },
    Scenario {
        id: "backend_down",
        title: "Backend down (nothing listening)",
        expect: "client connection closed promptly; forwarder keeps running",
        run: sc_backend_down,
    },
    Scenario {
        id: "backend_reset",
        title: "Backend resets mid-stream (1000 B, then RST)",
        expect: "client gets the 1000 B, then a reset",
        run: sc_backend_reset,
    },
    Scenario {
        id: "short_200",
        title: "200 short connections, then zombies / leftover processes / main's fds",
        expect: "all echoed; 0 zombies, 0 leftover processes, main fds unchanged, no backend connection left",
        run: sc_short_200,
    },
    Scenario {
        id: "server_speaks_first",
        title: "Server-speaks-first backend (banner), default dispatch",
        expect: "like the seed: banner held until the client sends (documented; use --dispatch accept)",
        run: sc_speaks_first_default,
    },
    Scenario {
        id: "server_speaks_first_accept",
        title: "Server-speaks-first backend with accept-time dispatch",
        expect: "banner delivered without the client sending, then echo works",
        run: sc_speaks_first_accept,
    },
];

// ---------------------------------------------------------------- backends

type Handler = Arc<dyn Fn(TcpStream) + Send + Sync>;

/// A TCP server thread on 127.x with one thread per connection.
struct Backend {
    addr: SocketAddrV4,
    stop: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    fn start(addr: SocketAddrV4, handler: Handler) -> io::Result<Backend> {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        sock.set_reuse_address(true)?;
        sock.bind(&std::net::SocketAddr::V4(addr).into())?;
        sock.listen(1024)?;
        sock.set_nonblocking(true)?;
        let listener: std::net::TcpListener = sock.into();
        let addr = match listener.local_addr()? {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let (s2, o2) = (stop.clone(), open.clone());
        let thread = thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                let mut pfd = libc::pollfd {
                    fd: listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, bounded timeout.
                unsafe { libc::poll(&mut pfd, 1, 50) };
                while let Ok((stream, _)) = listener.accept() {
                    let _ = stream.set_nonblocking(false);
                    o2.fetch_add(1, Ordering::Relaxed);
                    let (h, o3) = (handler.clone(), o2.clone());
                    thread::spawn(move || {
                        h(stream);
                        o3.fetch_sub(1, Ordering::Relaxed);
                    });
                }
            }
        });
        Ok(Backend {
            addr,
            stop,
            open,
            thread: Some(thread),
        })
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lo(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
}

const BACKEND_IDLE: Duration = Duration::from_secs(30);

fn echo_handler() -> Handler {
    Arc::new(|mut s: TcpStream| {
        let _ = s.set_read_timeout(Some(BACKEND_IDLE));
        let mut buf = [0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    })
}

/// Read until the end of an HTTP header block (and Content-Length body).
fn read_http_message(s: &mut TcpStream, wait: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + wait;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(h) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..h]).to_ascii_lowercase();
            let cl = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= h + 4 + cl {
                return (buf, true);
            }
        }
        let now = Instant::now();
        if now >= deadline || buf.len() > 1 << 20 {
            return (buf, false);
        }
        let _ = s.set_read_timeout(Some(deadline - now));
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return (buf, false),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn http_response(name: &str) -> Vec<u8> {
    let body = format!("<html><body><h1>backend {name}</h1><p>served through the forwarder</p></body></html>\n");
    format!(
        "HTTP/1.1 200 OK\r\nServer: portfwd-compare\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn http_request(name: &str) -> Vec<u8> {
    format!(
        "GET /{name}/index.html HTTP/1.1\r\nHost: forwarder\r\nUser-Agent: portfwd-compare/1\r\nAccept: */*\r\n\r\n"
    )
    .into_bytes()
}

#[derive(Debug)]
enum Ev {
    /// Backend `name` got this request.
    Request(Vec<u8>),
    /// Backend sent its FIN (shutdown write) at this instant.
    FinSent(Instant),
    /// Backend read EOF at this instant / saw none within the wait.
    PeerEof(Instant),
    NoPeerEof(String),
    /// Half-close backend: bytes read and how the read ended.
    ReadDone(usize, End, Instant),
}

/// HTTP backend. `fin_after`: None = keep the connection until the client
/// closes; Some(d) = the seed's Figure 4: d after the response, shutdown(write)
/// (the server's FIN), then wait (bounded) for the client's FIN.
fn http_handler(name: &'static str, fin_after: Option<Duration>, wait: Duration, tx: Sender<Ev>) -> Handler {
    Arc::new(move |mut s: TcpStream| {
        let (req, _) = read_http_message(&mut s, BACKEND_IDLE);
        let _ = tx.send(Ev::Request(req));
        if s.write_all(&http_response(name)).is_err() {
            return;
        }
        match fin_after {
            None => {
                let _ = read_to_end_within(&mut s, usize::MAX, BACKEND_IDLE);
            }
            Some(d) => {
                thread::sleep(d);
                let _ = s.shutdown(Shutdown::Write);
                let _ = tx.send(Ev::FinSent(Instant::now()));
                let (_, end) = read_to_end_within(&mut s, usize::MAX, wait * 2 + Duration::from_secs(1));
                let _ = match end {
                    End::Eof(_) => tx.send(Ev::PeerEof(Instant::now())),
                    e => tx.send(Ev::NoPeerEof(e.describe())),
                };
            }
        }
    })
}

fn connect(port: u16) -> io::Result<TcpStream> {
    fwdkit::connect_from(None, lo(port), Duration::from_secs(5))
}

// ---------------------------------------------------------------- scenarios

fn sc_http_two_mappings(cx: &Ctx) -> Obs {
    let (tx, rx) = channel();
    let backends: Vec<(&'static str, Backend)> = match ["A", "B"]
        .into_iter()
        .map(|n| Backend::start(lo(0), http_handler(n, None, cx.wait, tx.clone())).map(|b| (n, b)))
        .collect()
    {
        Ok(v) => v,
        Err(e) => return Obs::err(e.to_string()),
    };
    let mut fwds = Vec::new();
    for (_, b) in &backends {
        match cx.launch(Ipv4Addr::LOCALHOST, b.port()).start() {
            Ok(f) => fwds.push(f),
            Err(e) => return Obs::err(e),
        }
    }
    let mut digest = 0;
    let mut ok = true;
    let mut parts = Vec::new();
    for ((name, _), f) in backends.iter().zip(&fwds) {
        let req = http_request(name);
        let t0 = Instant::now();
        let mut c = match connect(f.port) {
            Ok(c) => c,
            Err(e) => return Obs::err(format!("connect: {e}")),
        };
        let _ = c.write_all(&req);
        let (resp, complete) = read_http_message(&mut c, Duration::from_secs(5));
        let took = t0.elapsed();
        let seen = match rx.recv_timeout(Duration::from_secs(2)) {
            Ok(Ev::Request(r)) => r,
            _ => vec![],
        };
        let same = complete && resp == http_response(name) && seen == req;
        ok &= same;
        digest = fnv64(fnv64(digest, &seen), &resp);
        parts.push(if same {
            format!(
                "{name}: req {} B + resp {} B identical ({})",
                req.len(),
                resp.len(),
                ms(took)
            )
        } else {
            format!(
                "{name}: req seen {} of {} B, resp {} of {} B",
                seen.len(),
                req.len(),
                resp.len(),
                http_response(name).len()
            )
        });
    }
    Obs::new(ok, parts.join("; "))
        .field("digest", format!("{digest:016x}"))
        .field("bytes_ok", ok)
}

fn sc_seed_case2(cx: &Ctx) -> Obs {
    let fwd_ip = Ipv4Addr::new(127, 0, 0, 41);
    let client_ip = Ipv4Addr::new(127, 0, 0, 44);
    let map = [
        ("A", 8005u16, SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 52), 8008)),
        ("B", 8006u16, SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 53), 8009)),
    ];
    let (tx, rx) = channel();
    let mut keep = Vec::new();
    let mut fwds = Vec::new();
    for (name, port, backend) in map {
        match Backend::start(
            backend,
            http_handler(name, Some(Duration::from_millis(200)), cx.wait, tx.clone()),
        ) {
            Ok(b) => keep.push(b),
            Err(e) => return Obs::err(format!("backend {backend}: {e}")),
        }
        let mut l = cx.launch(*backend.ip(), backend.port());
        l.bind = Some(fwd_ip);
        l.port = Some(port);
        match l.start() {
            Ok(f) => fwds.push(f),
            Err(e) => return Obs::err(e),
        }
    }
    let mut digest = 0;
    let mut bytes_ok = true;
    let mut eof_to_client = true;
    let mut fin_to_backend = true;
    let mut parts = Vec::new();
    for (name, port, _) in map {
        let mut c = match fwdkit::connect_from(Some(client_ip), SocketAddrV4::new(fwd_ip, port), Duration::from_secs(5))
        {
            Ok(c) => c,
            Err(e) => return Obs::err(format!("connect from {client_ip} to {fwd_ip}:{port}: {e}")),
        };
        let req = http_request(name);
        let _ = c.write_all(&req);
        let (resp, complete) = read_http_message(&mut c, Duration::from_secs(5));
        let seen = match rx.recv_timeout(Duration::from_secs(2)) {
            Ok(Ev::Request(r)) => r,
            _ => vec![],
        };
        let same = complete && resp == http_response(name) && seen == req;
        bytes_ok &= same;
        digest = fnv64(fnv64(digest, &seen), &resp);
        // Backend sends FIN ~200 ms after the response: does the client see it?
        let (_, end) = read_to_end_within(&mut c, usize::MAX, Duration::from_millis(200) + cx.wait);
        let eof_at = Instant::now();
        let fin_at = match rx.recv_timeout(Duration::from_secs(2)) {
            Ok(Ev::FinSent(t)) => Some(t),
            _ => None,
        };
        let a = match (&end, fin_at) {
            (End::Eof(_), Some(t)) => format!("EOF +{}", ms(eof_at.saturating_duration_since(t))),
            (e, _) => e.describe(),
        };
        eof_to_client &= end.is_eof();
        // Now the client's FIN: does the backend see it?
        let cfin = Instant::now();
        let _ = c.shutdown(Shutdown::Write);
        let b = match rx.recv_timeout(cx.wait * 2 + Duration::from_secs(2)) {
            Ok(Ev::PeerEof(t)) => format!("EOF +{}", ms(t.saturating_duration_since(cfin))),
            Ok(Ev::NoPeerEof(e)) => {
                fin_to_backend = false;
                e
            }
            other => {
                fin_to_backend = false;
                format!("{other:?}")
            }
        };
        parts.push(format!(
            "{name}: {}; server FIN -> client: {a}; client FIN -> backend: {b}",
            if same {
                "bytes identical".to_string()
            } else {
                format!("BYTES DIFFER (resp {} B)", resp.len())
            }
        ));
    }
    Obs::new(bytes_ok && eof_to_client && fin_to_backend, parts.join(" | "))
        .field("digest", format!("{digest:016x}"))
        .field("bytes_ok", bytes_ok)
        .field("client_eof", eof_to_client)
        .field("backend_eof", fin_to_backend)
}

fn sc_echo_1mib(cx: &Ctx) -> Obs {
    let (_b, f) = match cx.fronted(echo_handler()) {
        Ok(set) => set,
        Err(obs) => return obs,
    };
    const N: usize = 1 << 20;
    let data = pattern(N, 0x5eed);
    let t0 = Instant::now();
    let mut c = match connect(f.port) {
        Ok(c) => c,
        Err(e) => return Obs::err(format!("connect: {e}")),
    };
    let mut w = c.try_clone().expect("clone");
    let _ = w.set_write_timeout(Some(Duration::from_secs(10)));
    let d2 = data.clone();
    let writer = thread::spawn(move || w.write_all(&d2).is_ok());
    let (got, end) = read_exact_within(&mut c, N, Duration::from_secs(10));
    let took = t0.elapsed();
    let _ = c.shutdown(Shutdown::Both);
    let _ = writer.join();
    let ok = got == data;
    let text = if ok {
        format!("{N} B echoed, identical ({})", ms(took))
    } else {
        format!(
            "{} of {N} B back, {}",
            got.len(),
            end.map(|e| e.describe()).unwrap_or_else(|| "DIFFERENT bytes".into())
        )
    };
    Obs::new(ok, text)
        .field("digest", format!("{:016x}", fnv64(0, &got)))
        .field("bytes_ok", ok)
}

fn sc_echo_100(cx: &Ctx) -> Obs {
    let (_b, f) = match cx.fronted(echo_handler()) {
        Ok(set) => set,
        Err(obs) => return obs,
    };
    const CLIENTS: usize = 100;
    const ROUNDS: usize = 10;
    let port = f.port;
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let barrier = barrier.clone();
            thread::spawn(move || -> (usize, u64, String) {
                let mut c = match connect(port) {
                    Ok(c) => c,
                    Err(e) => {
                        barrier.wait();
                        return (0, 0, format!("connect: {e}"));
                    }
                };
                barrier.wait();
                let mut good = 0;
                let mut h = 0;
                for r in 0..ROUNDS {
                    let msg = pattern(100, (i * ROUNDS + r) as u64 + 1);
                    if c.write_all(&msg).is_err() {
                        return (good, h, "write failed".into());
                    }
                    let (got, end) = read_exact_within(&mut c, 100, Duration::from_secs(10));
                    h = fnv64(h, &got);
                    if got != msg {
                        return (
                            good,
                            h,
                            end.map(|e| e.describe()).unwrap_or_else(|| "different bytes".into()),
                        );
                    }
                    good += 1;
                }
                (good, h, String::new())
            })
        })
        .collect();
    let mut digest = 0;
    let mut good = 0;
    let mut clients_ok = 0;
    let mut errors = Vec::new();
    for h in handles {
        let (g, d, e) = h.join().unwrap_or((0, 0, "panic".into()));
        good += g;
        digest = fnv64(digest, &d.to_le_bytes());
        if g == ROUNDS {
            clients_ok += 1;
        } else if errors.len() < 2 {
            errors.push(e);
        }
    }
    let took = t0.elapsed();
    let ok = good == CLIENTS * ROUNDS;
    let mut text = format!(
        "{clients_ok}/{CLIENTS} clients, {good}/{} round trips identical ({})",
        CLIENTS * ROUNDS,
        ms(took)
    );
    if !errors.is_empty() {
        text += &format!("; errors: {}", errors.join(", "));
    }
    Obs::new(ok, text)
        .field("digest", format!("{digest:016x}"))
        .field("bytes_ok", ok)
}

fn sc_half_close(cx: &Ctx) -> Obs {
    let (tx, rx) = channel();
    let wait = cx.wait;
    let handler: Handler = Arc::new(move |mut s: TcpStream| {
        let (got, end) = read_to_end_within(&mut s, usize::MAX, wait);
        let at = Instant::now();
        if end.is_eof() {
            let _ = s.write_all(format!("received {} bytes\n", got.len()).as_bytes());
        }
        let _ = tx.send(Ev::ReadDone(got.len(), end, at));
    });
    let (_b, _f, mut c) = match cx.through(handler) {
        Ok(set) => set,
        Err(obs) => return obs,
    };
    let _ = c.write_all(&pattern(1000, 7));
    let shut_at = Instant::now();
    let _ = c.shutdown(Shutdown::Write);
    let (reply, end) = read_to_end_within(&mut c, usize::MAX, cx.wait);
    let backend = match rx.recv_timeout(cx.wait + Duration::from_secs(2)) {
        Ok(Ev::ReadDone(n, End::Eof(_), at)) => (
            n == 1000,
            format!(
                "backend got {n} B + EOF (+{})",
                ms(at.saturating_duration_since(shut_at))
            ),
        ),
        Ok(Ev::ReadDone(n, e, _)) => (false, format!("backend got {n} B, {}", e.describe())),
        _ => (false, "backend reported nothing".into()),
    };
    let want = b"received 1000 bytes\n".to_vec();
    let client_ok = reply == want && end.is_eof();
    let client = if reply.is_empty() {
        format!("client got 0 B, {}", end.describe())
    } else {
        format!(
            "client got {} B reply{}, {}",
            reply.len(),
            if reply == want { "" } else { " (WRONG)" },
            end.describe()
        )
    };
    Obs::new(backend.0 && client_ok, format!("{}; {client}", backend.1))
        .field("backend_eof", backend.0)
        .field("client_eof", end.is_eof())
        .field("digest", format!("{:016x}", fnv64(0, &reply)))
}

fn sc_server_closes_first(cx: &Ctx) -> Obs {
    let handler: Handler = Arc::new(|mut s: TcpStream| {
        let _ = s.set_read_timeout(Some(BACKEND_IDLE));
        let mut buf = [0u8; 6];
        if s.read_exact(&mut buf).is_ok() {
            let _ = s.write_all(b"bye\n");
        }
        // dropping s closes: the server closes first
    });
    let (_b, _f, mut c) = match cx.through(handler) {
        Ok(set) => set,
        Err(obs) => return obs,
    };
    let _ = c.write_all(b"hello\n");
    let (reply, short) = read_exact_within(&mut c, 4, Duration::from_secs(5));
    if let Some(e) = short {
        return Obs::new(false, format!("reply {} of 4 B, {}", reply.len(), e.describe()));
    }
    let (extra, end) = read_to_end_within(&mut c, usize::MAX, cx.wait);
    let ok = reply == b"bye\n" && extra.is_empty() && end.is_eof();
    Obs::new(ok, format!("reply 4 B; then client sees {}", end.describe()))
        .field("client_eof", end.is_eof())
        .field("digest", format!("{:016x}", fnv64(0, &reply)))
}

fn sc_backend_down(cx: &Ctx) -> Obs {
    let dead = match fwdkit::free_port() {
        Ok(p) => p,
        Err(e) => return Obs::err(e.to_string()),
    };
    let mut f = match cx.launch(Ipv4Addr::LOCALHOST, dead).start() {
        Ok(f) => f,
        Err(e) => return Obs::err(e),
    };
    let mut c = match connect(f.port) {
        Ok(c) => c,
        Err(e) => {
            return Obs::new(false, format!("connect refused by the forwarder itself: {e}"));
        }
    };
    let _ = c.write_all(b"hello\n");
    let (got, end) = read_to_end_within(&mut c, usize::MAX, cx.wait);
    let alive = f.alive();
    let ok = got.is_empty() && end.is_closed() && alive;
    Obs::new(
        ok,
        format!(
            "client sees {}; forwarder {}",
            end.describe(),
            if alive { "still running" } else { "EXITED" }
        ),
    )
    .field("client_closed", end.is_closed())
    .field("alive", alive)
}

fn sc_backend_reset(cx: &Ctx) -> Obs {
    let (tx, rx) = channel::<Instant>();
    let handler: Handler = Arc::new(move |mut s: TcpStream| {
        let _ = s.set_read_timeout(Some(BACKEND_IDLE));
        let mut buf = [0u8; 6];
        if s.read_exact(&mut buf).is_err() {
            return;
        }
        let _ = s.write_all(&pattern(1000, 99));
        // Let the 1000 B get through before the reset (bounded pause).
        thread::sleep(Duration::from_millis(100));
        let sock = socket2::SockRef::from(&s);
        let _ = sock.set_linger(Some(Duration::ZERO));
        let _ = tx.send(Instant::now());
        drop(s); // close with linger 0: RST
    });
    let (_b, _f, mut c) = match cx.through(handler) {
        Ok(set) => set,
        Err(obs) => return obs,
    };
    let _ = c.write_all(b"hello\n");
    let (got, end) = read_to_end_within(&mut c, usize::MAX, Duration::from_millis(100) + cx.wait);
    let done = Instant::now();
    let rst_at = rx.recv_timeout(Duration::from_secs(2)).ok();
    let want = pattern(1000, 99);
    let bytes_ok = got == want;
    let how = match (&end, rst_at) {
        (End::Reset(_), Some(t)) => format!("RST +{}", ms(done.saturating_duration_since(t))),
        (End::Eof(_), Some(t)) => {
            format!("EOF (not RST) +{}", ms(done.saturating_duration_since(t)))
        }
        (e, _) => e.describe(),
    };
    Obs::new(
        bytes_ok && end.is_reset(),
        format!("client got {} B, then {how}", got.len()),
    )
    .field("bytes_ok", bytes_ok)
    .field("client_reset", end.is_reset())
    .field("digest", format!("{:016x}", fnv64(0, &got)))
}

fn sc_short_200(cx: &Ctx) -> Obs {
    let (b, f) = match cx.fronted(echo_handler()) {
        Ok(set) => set,
        Err(obs) => return obs,
    };
    let base_fds = f.fd_count().unwrap_or(0);
    let t0 = Instant::now();
    let mut good = 0;
    let mut digest = 0;
    for i in 0..200u64 {
        let Ok(mut c) = connect(f.port) else { continue };
        let msg = pattern(16, i + 1);
        if c.write_all(&msg).is_err() {
            continue;
        }
        let (got, _) = read_exact_within(&mut c, 16, Duration::from_secs(5));
        digest = fnv64(digest, &got);
        if got == msg {
            good += 1;
        }
    }
    let took = t0.elapsed();
    // Settle: wait (bounded) until nothing changes any more, or all is clean.
    let me = std::process::id() as i32;
    let measure = || {
        let procs = f.procs();
        let zombies = procs.iter().filter(|p| p.state == 'Z' && p.ppid != me).count();
        let live = procs.iter().filter(|p| p.state != 'Z' && p.pid != f.pid()).count();
        let fds = f.fd_count().unwrap_or(0) as i64 - base_fds as i64;
        (zombies, live, fds, b.open.load(Ordering::Relaxed))
    };
    let deadline = Instant::now() + cx.wait.max(Duration::from_secs(2));
    let mut last = measure();
    let mut stable_since = Instant::now();
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        let m = measure();
        if m == (0, 0, 0, 0) {
            last = m;
            break;
        }
        if m != last {
            last = m;
            stable_since = Instant::now();
        } else if stable_since.elapsed() > Duration::from_millis(500) {
            break;
        }
    }
    let (zombies, live, fds, open) = last;
    let ok = good == 200 && last == (0, 0, 0, 0);
    Obs::new(
        ok,
        format!(
            "{good}/200 echoed ({}); {zombies} zombies, {live} leftover processes, main fds {fds:+}, {open} backend conns left open",
            ms(took)
        ),
    )
    .field("echoed", good)
    .field("zombies", zombies)
    .field("leftover", live)
    .field("fd_delta", fds)
    .field("backend_open", open)
    .field("digest", format!("{digest:016x}"))
}

const BANNER: &[u8] = b"220 backend ready\r\n";

fn banner_handler() -> Handler {
    Arc::new(|mut s: TcpStream| {
        if s.write_all(BANNER).is_err() {
            return;
        }
        echo_handler()(s)
    })
}

/// Connect, wait for the banner without sending, then send and read the rest.
fn speaks_first(cx: &Ctx, accept: bool) -> (bool, bool, String, u64) {
    let b = match Backend::start(lo(0), banner_handler()) {
        Ok(b) => b,
        Err(e) => return (false, false, format!("setup error: {e}"), 0),
    };
    let mut l = cx.launch(Ipv4Addr::LOCALHOST, b.port());
    l.accept_dispatch = accept;
    let f = match l.start() {
        Ok(f) => f,
        Err(e) => return (false, false, format!("setup error: {e}"), 0),
    };
    let mut c = match connect(f.port) {
        Ok(c) => c,
        Err(e) => return (false, false, format!("connect: {e}"), 0),
    };
    let t0 = Instant::now();
    let (early, short) = read_exact_within(&mut c, BANNER.len(), cx.wait);
    let banner_first = short.is_none() && early == BANNER;
    let first = if banner_first {
        format!("banner after {} without sending", ms(t0.elapsed()))
    } else if early.is_empty() {
        format!("no banner in {} until the client sends", ms(cx.wait))
    } else {
        format!(
            "{} B of banner, {}",
            early.len(),
            short.map(|e| e.describe()).unwrap_or_default()
        )
    };
    let _ = c.write_all(b"ping\n");
    let mut want = BANNER[early.len().min(BANNER.len())..].to_vec();
    want.extend_from_slice(b"ping\n");
    let (rest, _) = read_exact_within(&mut c, want.len(), Duration::from_secs(5));
    let after_ok = rest == want;
    let mut all = early.clone();
    all.extend_from_slice(&rest);
    let text = format!(
        "{first}; then {}",
        if after_ok {
            "banner + echo OK"
        } else {
            "WRONG/MISSING bytes"
        }
    );
    (banner_first, after_ok, text, fnv64(0, &all))
}

fn sc_speaks_first_default(cx: &Ctx) -> Obs {
    let (banner_first, after_ok, text, digest) = speaks_first(cx, false);
    // Documented portfwd default (--dispatch data, like the seed): the banner
    // waits for the client's first bytes.
    Obs::new(!banner_first && after_ok, text)
        .field("banner_first", banner_first)
        .field("bytes_ok", after_ok)
        .field("digest", format!("{digest:016x}"))
}

fn sc_speaks_first_accept(cx: &Ctx) -> Obs {
    if cx.spec.accept_args.is_none() {
        return Obs::na("n/a (no accept-time dispatch option)");
    }
    let (banner_first, after_ok, text, digest) = speaks_first(cx, true);
    Obs::new(banner_first && after_ok, text)
        .field("banner_first", banner_first)
        .field("bytes_ok", after_ok)
        .field("digest", format!("{digest:016x}"))
}

// ---------------------------------------------------------------- main

fn kind_name(k: Kind, i: usize) -> String {
    match k {
        Kind::Reference => "reference".into(),
        Kind::Portfwd => "portfwd".into(),
        Kind::Other => format!("extra{i}"),
    }
}

fn main() {
    let args = Args::parse();
    if args.list {
        for s in SCENARIOS {
            println!("{:28} {}\n{:28} portfwd: {}", s.id, s.title, "", s.expect);
        }
        return;
    }
    if !matches!(args.format.as_str(), "table" | "kv" | "both") {
        eprintln!("portfwd-compare: --format must be table, kv or both");
        std::process::exit(2);
    }
    for o in &args.only {
        if !SCENARIOS.iter().any(|s| s.id == o) {
            eprintln!("portfwd-compare: unknown scenario {o:?} (see --list)");
            std::process::exit(2);
        }
    }
    fwdkit::set_subreaper();

    let mut specs = Vec::new();
    if !args.no_reference {
        let path = match &args.reference {
            Some(p) => p.clone(),
            None => {
                let root = fwdkit::manifest_dir();
                match fwdkit::build_reference(&root, &fwdkit::default_reference_path(&root)) {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("portfwd-compare: {e}");
                        std::process::exit(2);
                    }
                }
            }
        };
        specs.push(Spec::reference(path));
    }
    if !args.no_portfwd {
        let path = args.portfwd.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("portfwd")))
                .unwrap_or_default()
        });
        specs.push(Spec::portfwd(path));
    }
    for e in &args.extra {
        match Spec::parse_extra(e) {
            Ok(s) => specs.push(s),
            Err(err) => {
                eprintln!("portfwd-compare: {err}");
                std::process::exit(2);
            }
        }
    }
    for s in &specs {
        if !s.path.is_file() {
            eprintln!("portfwd-compare: {} binary not found: {}", s.label, s.path.display());
            std::process::exit(2);
        }
    }

    let wait = Duration::from_millis(args.wait_ms);
    let chosen: Vec<&Scenario> = SCENARIOS
        .iter()
        .filter(|s| args.only.is_empty() || args.only.iter().any(|o| o == s.id))
        .collect();
    let mut rows: Vec<(&Scenario, Vec<Obs>)> = Vec::new();
    let mut portfwd_ok = true;
    for sc in &chosen {
        let mut cells = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let t0 = Instant::now();
            let obs = (sc.run)(&Ctx { spec, wait });
            eprintln!(
                "[{:>6.1}s] {:28} {:12} {}",
                t0.elapsed().as_secs_f64(),
                sc.id,
                spec.label,
                obs.text
            );
            if spec.kind == Kind::Portfwd && !obs.ok {
                portfwd_ok = false;
            }
            if args.format != "table" {
                let mut line = format!(
                    "RESULT scenario={} kind={} ok={} na={}",
                    sc.id,
                    kind_name(spec.kind, i),
                    obs.ok,
                    obs.na
                );
                for (k, v) in &obs.fields {
                    line += &format!(" {k}={v}");
                }
                println!("{line}");
            }
            cells.push(obs);
        }
        rows.push((sc, cells));
    }
    if args.format != "kv" {
        print_table(&specs, &rows);
    }
    if !args.no_portfwd {
        println!(
            "\nportfwd {} as documented",
            if portfwd_ok { "behaves" } else { "DOES NOT behave" }
        );
    }
    std::process::exit(if portfwd_ok { 0 } else { 1 });
}

fn print_table(specs: &[Spec], rows: &[(&Scenario, Vec<Obs>)]) {
    let mut head = String::from("| Scenario |");
    let mut sep = String::from("|---|");
    for s in specs {
        head += &format!(" {} |", s.label);
        sep += "---|";
    }
    println!("{head}\n{sep}");
    for (sc, cells) in rows {
        let mut line = format!("| {} (`{}`) |", sc.title, sc.id);
        for (s, o) in specs.iter().zip(cells) {
            let mark = match (s.kind, o.na) {
                (_, true) => "",
                (Kind::Portfwd, _) if o.ok => "✓ ",
                (Kind::Portfwd, _) => "✗ UNEXPECTED: ",
                _ => "",
            };
            line += &format!(" {mark}{} |", o.text.replace('|', "/"));
        }
        println!("{line}");
    }
    println!("\n✓ = portfwd did what it is documented to do. Documented portfwd behaviour per scenario:");
    for (sc, _) in rows {
        println!("- `{}`: {}", sc.id, sc.expect);
    }
}
