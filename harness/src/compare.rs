//! The comparison suite: one set of scenarios, run against any forwarder binary with the seed's
//! CLI (`PROG PORT HOSTNAME HOST_PORT`): portfwd, the C reference and any other. Each run gives
//! typed results, an [`Obs`] per scenario and binary, which `portfwd-compare` prints side by
//! side and the comparison tests assert on.
//!
//! Everything runs on 127.0.0.0/8. Backends are threads of the calling process; each forwarder
//! runs in its own process group and is killed as a group.

use crate::backend::Backend;
use crate::launch::{Fwd, Kind, Launch, Spec};
use crate::net::{End, connect_from, free_port, ms, read_exact_within, read_to_end_within};
use crate::pattern::{fnv64, pattern};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

/// The scenarios, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScenarioId {
    HttpTwoMappings,
    SeedCase2,
    Echo1Mib,
    Echo100Concurrent,
    ClientHalfClose,
    ServerClosesFirst,
    BackendDown,
    BackendReset,
    Short200,
    ServerSpeaksFirst,
    ServerSpeaksFirstAccept,
}

impl ScenarioId {
    pub fn scenario(self) -> &'static Scenario {
        SCENARIOS
            .iter()
            .find(|s| s.id == self)
            .expect("every id has a scenario")
    }

    /// The scenario's name on the command line and in machine-readable output.
    pub fn name(self) -> &'static str {
        self.scenario().name
    }

    pub fn from_name(name: &str) -> Option<ScenarioId> {
        SCENARIOS.iter().find(|s| s.name == name).map(|s| s.id)
    }
}

/// What one binary did in one scenario.
#[derive(Clone, Debug, Default)]
pub struct Obs {
    /// What happened, for people.
    pub text: String,
    /// Matches portfwd's documented behaviour.
    pub ok: bool,
    /// The scenario does not apply to this binary.
    pub na: bool,
    /// FNV-1a of the bytes the clients (and backends) received, to compare binaries.
    pub digest: Option<u64>,
    pub bytes_ok: Option<bool>,
    /// The client saw EOF (the backend's FIN passed on).
    pub client_eof: Option<bool>,
    /// The backend saw EOF (the client's FIN passed on).
    pub backend_eof: Option<bool>,
    /// The client's connection was closed (EOF or reset).
    pub client_closed: Option<bool>,
    /// The client saw a reset.
    pub client_reset: Option<bool>,
    /// The forwarder was still running afterwards.
    pub alive: Option<bool>,
    /// A server-speaks-first banner arrived before the client sent anything.
    pub banner_first: Option<bool>,
    /// What was left after a run of short connections.
    pub leftovers: Option<Leftovers>,
}

/// What a run of short connections left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leftovers {
    pub echoed: usize,
    pub zombies: usize,
    /// Live processes of the forwarder besides its main process.
    pub processes: usize,
    /// Change in the main process's open descriptors.
    pub fd_delta: i64,
    /// Backend connections still open.
    pub backend_open: usize,
}

impl Obs {
    fn new(ok: bool, text: impl Into<String>) -> Obs {
        Obs {
            text: text.into(),
            ok,
            ..Obs::default()
        }
    }
    fn na(text: &str) -> Obs {
        Obs {
            text: text.into(),
            ok: true,
            na: true,
            ..Obs::default()
        }
    }
    fn err(text: impl Into<String>) -> Obs {
        Obs::new(false, format!("setup error: {}", text.into()))
    }

    fn digest(mut self, d: u64) -> Obs {
        self.digest = Some(d);
        self
    }
    fn bytes_ok(mut self, v: bool) -> Obs {
        self.bytes_ok = Some(v);
        self
    }
    fn client_eof(mut self, v: bool) -> Obs {
        self.client_eof = Some(v);
        self
    }
    fn backend_eof(mut self, v: bool) -> Obs {
        self.backend_eof = Some(v);
        self
    }
    fn client_closed(mut self, v: bool) -> Obs {
        self.client_closed = Some(v);
        self
    }
    fn client_reset(mut self, v: bool) -> Obs {
        self.client_reset = Some(v);
        self
    }
    fn alive(mut self, v: bool) -> Obs {
        self.alive = Some(v);
        self
    }
    fn banner_first(mut self, v: bool) -> Obs {
        self.banner_first = Some(v);
        self
    }
    fn leftovers(mut self, l: Leftovers) -> Obs {
        self.leftovers = Some(l);
        self
    }

    /// The measured values as `key=value` pairs (machine-readable output).
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let flags = [
            ("bytes_ok", self.bytes_ok),
            ("client_eof", self.client_eof),
            ("backend_eof", self.backend_eof),
            ("client_closed", self.client_closed),
            ("client_reset", self.client_reset),
            ("alive", self.alive),
            ("banner_first", self.banner_first),
        ];
        for (k, v) in flags {
            if let Some(v) = v {
                out.push((k, v.to_string()));
            }
        }
        if let Some(l) = self.leftovers {
            out.push(("echoed", l.echoed.to_string()));
            out.push(("zombies", l.zombies.to_string()));
            out.push(("leftover", l.processes.to_string()));
            out.push(("fd_delta", l.fd_delta.to_string()));
            out.push(("backend_open", l.backend_open.to_string()));
        }
        if let Some(d) = self.digest {
            out.push(("digest", format!("{d:016x}")));
        }
        out
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
    fn through(&self, handler: Handler) -> Result<(Backend, Fwd, TcpStream), Obs> {
        let (b, f) = self.fronted(handler)?;
        let c = connect(f.port).map_err(|e| Obs::err(format!("connect: {e}")))?;
        Ok((b, f, c))
    }

    /// A backend running `handler` on 127.0.0.1 and the forwarder in front of it.
    fn fronted(&self, handler: Handler) -> Result<(Backend, Fwd), Obs> {
        let b = backend(lo(0), handler).map_err(|e| Obs::err(e.to_string()))?;
        let f = self.launch(Ipv4Addr::LOCALHOST, b.port).start().map_err(Obs::err)?;
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

pub struct Scenario {
    pub id: ScenarioId,
    pub name: &'static str,
    pub title: &'static str,
    /// What portfwd is documented to do.
    pub expect: &'static str,
    run: fn(&Ctx) -> Obs,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        id: ScenarioId::HttpTwoMappings,
        name: "http_two_mappings",
        title: "HTTP through two mappings to two backends",
        expect: "requests and responses byte-identical on both mappings",
        run: sc_http_two_mappings,
    },
    Scenario {
        id: ScenarioId::SeedCase2,
        name: "seed_case2",
        title: "Seed case 2: 127.0.0.44 -> 127.0.0.41:8005/8006 -> 127.0.0.52:8008 / 127.0.0.53:8009, FIN order",
        expect: "bytes identical; backend's FIN reaches the client, client's FIN reaches the backend",
        run: sc_seed_case2,
    },
    Scenario {
        id: ScenarioId::Echo1Mib,
        name: "echo_1mib",
        title: "1 MiB echo integrity",
        expect: "1 MiB echoed back identical",
        run: sc_echo_1mib,
    },
    Scenario {
        id: ScenarioId::Echo100Concurrent,
        name: "echo_100_concurrent",
        title: "100 concurrent echo clients, 10 round trips each",
        expect: "all 1000 round trips identical",
        run: sc_echo_100,
    },
    Scenario {
        id: ScenarioId::ClientHalfClose,
        name: "client_half_close",
        title: "Client half-close (shutdown write), backend answers after EOF",
        expect: "backend sees EOF, client gets the answer and then EOF",
        run: sc_half_close,
    },
    Scenario {
        id: ScenarioId::ServerClosesFirst,
        name: "server_closes_first",
        title: "Server closes first: when does the client see EOF?",
        expect: "client sees EOF right after the backend closes",
        run: sc_server_closes_first,
    },
    Scenario {
        id: ScenarioId::BackendDown,
        name: "backend_down",
        title: "Backend down (nothing listening)",
        expect: "client connection closed promptly; forwarder keeps running",
        run: sc_backend_down,
    },
    Scenario {
        id: ScenarioId::BackendReset,
        name: "backend_reset",
        title: "Backend resets mid-stream (1000 B, then RST)",
        expect: "client gets the 1000 B, then a reset",
        run: sc_backend_reset,
    },
    Scenario {
        id: ScenarioId::Short200,
        name: "short_200",
        title: "200 short connections, then zombies / leftover processes / main's fds",
        expect: "all echoed; 0 zombies, 0 leftover processes, main fds unchanged, no backend connection left",
        run: sc_short_200,
    },
    Scenario {
        id: ScenarioId::ServerSpeaksFirst,
        name: "server_speaks_first",
        title: "Server-speaks-first backend (banner), default dispatch",
        expect: "like the seed: banner held until the client sends (documented; use --dispatch accept)",
        run: sc_speaks_first_default,
    },
    Scenario {
        id: ScenarioId::ServerSpeaksFirstAccept,
        name: "server_speaks_first_accept",
        title: "Server-speaks-first backend with accept-time dispatch",
        expect: "banner delivered without the client sending, then echo works",
        run: sc_speaks_first_accept,
    },
];

/// One scenario's results, one [`Obs`] per binary (in the order of the specs).
pub struct Row {
    pub scenario: &'static Scenario,
    pub cells: Vec<Obs>,
}

/// The results of a run.
pub struct Report {
    pub specs: Vec<Spec>,
    pub rows: Vec<Row>,
}

impl Report {
    /// What the first binary of `kind` did in scenario `id`.
    pub fn get(&self, id: ScenarioId, kind: Kind) -> Option<&Obs> {
        let col = self.specs.iter().position(|s| s.kind == kind)?;
        self.rows.iter().find(|r| r.scenario.id == id).map(|r| &r.cells[col])
    }

    /// Whether every portfwd column matched the documented behaviour.
    pub fn portfwd_ok(&self) -> bool {
        self.rows.iter().all(|r| {
            r.cells
                .iter()
                .zip(&self.specs)
                .all(|(o, s)| s.kind != Kind::Portfwd || o.ok)
        })
    }
}

/// Runs the scenarios `only` (all when empty) against every spec, one binary at a time; `wait` is
/// how long to wait for something that may never happen (EOF, a banner). `progress` hears of each
/// result as it comes, with the time it took.
/// The progress line both the tool and the tests print as each scenario ends.
pub fn print_progress(sc: &Scenario, spec: &Spec, obs: &Obs, took: Duration) {
    eprintln!(
        "[{:>6.1}s] {:28} {:12} {}",
        took.as_secs_f64(),
        sc.name,
        spec.label,
        obs.text
    );
}

pub fn run(
    specs: Vec<Spec>,
    only: &[ScenarioId],
    wait: Duration,
    mut progress: impl FnMut(&Scenario, &Spec, &Obs, Duration),
) -> Report {
    let mut rows = Vec::new();
    for sc in SCENARIOS.iter().filter(|s| only.is_empty() || only.contains(&s.id)) {
        let mut cells = Vec::new();
        for spec in &specs {
            let t0 = Instant::now();
            let obs = (sc.run)(&Ctx { spec, wait });
            progress(sc, spec, &obs, t0.elapsed());
            cells.push(obs);
        }
        rows.push(Row { scenario: sc, cells });
    }
    Report { specs, rows }
}

// ---------------------------------------------------------------- backends

type Handler = Arc<dyn Fn(TcpStream) + Send + Sync>;

/// A backend on `addr` running `handler`.
fn backend(addr: SocketAddrV4, handler: Handler) -> io::Result<Backend> {
    Backend::bind(SocketAddr::V4(addr), move |s| handler(s))
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
    TcpStream::connect_timeout(&SocketAddr::V4(lo(port)), Duration::from_secs(5))
}

// ---------------------------------------------------------------- scenarios

fn sc_http_two_mappings(cx: &Ctx) -> Obs {
    let (tx, rx) = channel();
    let backends: Vec<(&'static str, Backend)> = match ["A", "B"]
        .into_iter()
        .map(|n| backend(lo(0), http_handler(n, None, cx.wait, tx.clone())).map(|b| (n, b)))
        .collect()
    {
        Ok(v) => v,
        Err(e) => return Obs::err(e.to_string()),
    };
    let mut fwds = Vec::new();
    for (_, b) in &backends {
        match cx.launch(Ipv4Addr::LOCALHOST, b.port).start() {
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
    Obs::new(ok, parts.join("; ")).digest(digest).bytes_ok(ok)
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
    for (name, port, addr) in map {
        match backend(
            addr,
            http_handler(name, Some(Duration::from_millis(200)), cx.wait, tx.clone()),
        ) {
            Ok(b) => keep.push(b),
            Err(e) => return Obs::err(format!("backend {addr}: {e}")),
        }
        let mut l = cx.launch(*addr.ip(), addr.port());
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
        let mut c = match connect_from(IpAddr::V4(client_ip), SocketAddr::from((fwd_ip, port))) {
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
        .digest(digest)
        .bytes_ok(bytes_ok)
        .client_eof(eof_to_client)
        .backend_eof(fin_to_backend)
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
    Obs::new(ok, text).digest(fnv64(0, &got)).bytes_ok(ok)
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
    Obs::new(ok, text).digest(digest).bytes_ok(ok)
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
        .backend_eof(backend.0)
        .client_eof(end.is_eof())
        .digest(fnv64(0, &reply))
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
        .client_eof(end.is_eof())
        .digest(fnv64(0, &reply))
}

fn sc_backend_down(cx: &Ctx) -> Obs {
    let dead = free_port();
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
    .client_closed(end.is_closed())
    .alive(alive)
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
    .bytes_ok(bytes_ok)
    .client_reset(end.is_reset())
    .digest(fnv64(0, &got))
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
    let me = std::process::id();
    let measure = || {
        let procs = f.procs();
        let zombies = procs.iter().filter(|p| p.state == 'Z' && p.ppid != me).count();
        let live = procs.iter().filter(|p| p.state != 'Z' && p.pid != f.pid()).count();
        let fds = f.fd_count().unwrap_or(0) as i64 - base_fds as i64;
        (zombies, live, fds, b.open())
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
    .leftovers(Leftovers {
        echoed: good,
        zombies,
        processes: live,
        fd_delta: fds,
        backend_open: open,
    })
    .digest(digest)
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
    let b = match backend(lo(0), banner_handler()) {
        Ok(b) => b,
        Err(e) => return (false, false, format!("setup error: {e}"), 0),
    };
    let mut l = cx.launch(Ipv4Addr::LOCALHOST, b.port);
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
        .banner_first(banner_first)
        .bytes_ok(after_ok)
        .digest(digest)
}

fn sc_speaks_first_accept(cx: &Ctx) -> Obs {
    if cx.spec.accept_args.is_none() {
        return Obs::na("n/a (no accept-time dispatch option)");
    }
    let (banner_first, after_ok, text, digest) = speaks_first(cx, true);
    Obs::new(banner_first && after_ok, text)
        .banner_first(banner_first)
        .bytes_ok(after_ok)
        .digest(digest)
}
