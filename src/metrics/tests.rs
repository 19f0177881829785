//! The server on real sockets, driven by a small poll loop standing in for the event loop.

use super::families::Outcome;
use super::server::{CLIENT_TIMEOUT_MS, MAX_CLIENTS};
use super::*;
use nix::poll::{PollFd, PollFlags, poll};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::RawFd;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running server: a thread polling it the way the event loop will, with a clock the test can
/// move forward (to reach the client timeout without waiting for it).
struct Driver {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    skew_ms: Arc<AtomicU64>,
    /// The server's open clients, as of the driver's last turn.
    open: Arc<AtomicUsize>,
    thread: Option<JoinHandle<MetricsServer>>,
}

impl Driver {
    fn start(metrics: Arc<Metrics>) -> Driver {
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let skew_ms = Arc::new(AtomicU64::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (s, k, o) = (stop.clone(), skew_ms.clone(), open.clone());
        let thread = std::thread::spawn(move || drive(server, &metrics, &s, &k, &o));
        Driver {
            addr,
            stop,
            skew_ms,
            open,
            thread: Some(thread),
        }
    }

    fn advance(&self, ms: u64) {
        self.skew_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Waits (10 s at most) until the server has `n` clients open.
    fn wait_open(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.open.load(Ordering::SeqCst) != n {
            assert!(
                Instant::now() < deadline,
                "the server still has {} clients",
                self.open.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(1)); // pacing; the condition above is the wait
        }
    }

    /// Stops the loop and hands the server back.
    fn finish(mut self) -> MetricsServer {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The caller's side of the contract: poll the listener; poll each accepted client for what its
/// last handler asked; forget what the server closed.
fn drive(
    mut server: MetricsServer,
    metrics: &Metrics,
    stop: &AtomicBool,
    skew: &AtomicU64,
    open: &AtomicUsize,
) -> MetricsServer {
    let start = Instant::now();
    let now = || start.elapsed().as_millis() as u64 + skew.load(Ordering::SeqCst);
    let mut clients: Vec<(RawFd, Interest)> = Vec::new();
    let (mut accepted, mut closed) = (Vec::new(), Vec::new());
    while !stop.load(Ordering::SeqCst) {
        let (listener_ready, ready) = {
            let mut fds = vec![PollFd::new(server.listener_fd(), PollFlags::POLLIN)];
            for &(fd, interest) in &clients {
                let events = match interest {
                    Interest::Read => PollFlags::POLLIN,
                    Interest::Write => PollFlags::POLLOUT,
                    Interest::Closed => unreachable!("closed clients are forgotten"),
                };
                let fd = server.client_fd(fd).expect("the server closed a client silently");
                fds.push(PollFd::new(fd, events));
            }
            poll(&mut fds, 10u16).unwrap();
            let is_ready = |p: &PollFd| p.revents().is_some_and(|r| !r.is_empty());
            let ready: Vec<RawFd> = clients
                .iter()
                .zip(&fds[1..])
                .filter(|(_, p)| is_ready(p))
                .map(|(&(fd, _), _)| fd)
                .collect();
            (is_ready(&fds[0]), ready)
        };
        if listener_ready {
            server.on_listener_ready(now(), &mut accepted);
            clients.extend(accepted.drain(..).map(|fd| (fd, Interest::Read)));
        }
        for fd in ready {
            let interest = server.on_client_ready(fd, metrics, now());
            let at = clients.iter().position(|c| c.0 == fd).unwrap();
            match interest {
                Interest::Closed => drop(clients.swap_remove(at)),
                other => clients[at].1 = other,
            }
        }
        server.expire(now(), &mut closed);
        clients.retain(|c| !closed.contains(&c.0));
        closed.clear();
        assert_eq!(clients.len(), server.clients());
        open.store(clients.len(), Ordering::SeqCst);
    }
    server
}

struct Response {
    status: String,
    headers: String,
    body: String,
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads a whole response (the server closes after it).
fn read_response(mut s: TcpStream) -> Response {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    let length = format!("Content-Length: {}\r\n", body.len());
    assert!(format!("{headers}\r\n").contains(&length), "{headers}");
    Response {
        status: status.to_string(),
        headers: headers.to_string(),
        body: body.to_string(),
    }
}

fn request(addr: SocketAddr, req: &[u8]) -> Response {
    let mut s = connect(addr);
    s.write_all(req).unwrap();
    read_response(s)
}

fn scrape(addr: SocketAddr) -> Response {
    let r = request(addr, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, "HTTP/1.1 200 OK");
    r
}

/// The value of the sample whose line starts with `series` (name and labels, exactly).
fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{body}"))
        .parse()
        .unwrap()
}

const L: &str = "127.0.0.1:7005";

fn recorded() -> Arc<Metrics> {
    let m = Metrics::new();
    let l = m.listener(L);
    l.connection_ended(Outcome::Closed, 100, 1000, 3);
    l.connection_ended(Outcome::Closed, 20, 300, 4);
    l.connection_ended(Outcome::Reset, 5, 0, 2000);
    l.refused(RefuseReason::AccessDenied);
    l.refused(RefuseReason::AccessDenied);
    l.set_live(3);
    l.set_waiting(1);
    let b = l.backend("127.0.0.1:8005", true);
    b.failure();
    l.backend("127.0.0.1:8006", true).set_up(false);
    m.fork_failed();
    m.log_dropped(4);
    Arc::new(m)
}

#[test]
fn a_scrape_shows_what_was_recorded() {
    let d = Driver::start(recorded());
    let r = scrape(d.addr);
    assert!(
        r.headers
            .contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{}",
        r.headers
    );
    let b = &r.body;
    let on = |rest: &str| format!("{{listen=\"{L}\",{rest}}}");
    let conns = |o: &str| {
        sample(
            b,
            &format!(
                "portfwd_connections_total{}",
                on(&format!("route=\"\",outcome=\"{o}\""))
            ),
        )
    };
    assert_eq!(conns("closed"), 2.0);
    assert_eq!(conns("reset"), 1.0);
    // Every outcome of the table is there from the start.
    for o in Outcome::ALL
        .iter()
        .filter(|o| !matches!(o, Outcome::Closed | Outcome::Reset))
    {
        assert_eq!(conns(o.name()), 0.0, "{}", o.name());
    }
    let bytes = |d: &str| {
        sample(
            b,
            &format!("portfwd_bytes_total{}", on(&format!("route=\"\",direction=\"{d}\""))),
        )
    };
    assert_eq!((bytes("c2s"), bytes("s2c")), (125.0, 1300.0));
    let hist = |suffix: &str, le: &str| {
        let le = if le.is_empty() {
            String::new()
        } else {
            format!(",le=\"{le}\"")
        };
        let labels = format!("{{listen=\"{L}\",route=\"\"{le}}}");
        sample(b, &format!("portfwd_connection_duration_seconds{suffix}{labels}"))
    };
    assert_eq!(hist("_bucket", "0.001"), 0.0);
    assert_eq!(hist("_bucket", "0.005"), 2.0);
    assert_eq!(hist("_bucket", "1"), 2.0);
    assert_eq!(hist("_bucket", "2.5"), 3.0);
    assert_eq!(hist("_bucket", "3600"), 3.0);
    assert_eq!(hist("_bucket", "+Inf"), 3.0);
    assert_eq!(hist("_count", ""), 3.0);
    assert!((hist("_sum", "") - 2.007).abs() < 1e-9);
    let listen = format!("{{listen=\"{L}\"}}");
    assert_eq!(sample(b, &format!("portfwd_live_connections{listen}")), 3.0);
    assert_eq!(sample(b, &format!("portfwd_waiting_sockets{listen}")), 1.0);
    let refused = |r: &str| sample(b, &format!("portfwd_refused_total{}", on(&format!("reason=\"{r}\""))));
    assert_eq!((refused("access-denied"), refused("cap")), (2.0, 0.0));
    let backend = |name: &str, be: &str| sample(b, &format!("{name}{}", on(&format!("route=\"\",backend=\"{be}\""))));
    assert_eq!(backend("portfwd_backend_up", "127.0.0.1:8005"), 1.0);
    assert_eq!(backend("portfwd_backend_up", "127.0.0.1:8006"), 0.0);
    assert_eq!(backend("portfwd_backend_failures_total", "127.0.0.1:8005"), 1.0);
    assert_eq!(backend("portfwd_backend_failures_total", "127.0.0.1:8006"), 0.0);
    assert_eq!(sample(b, "portfwd_fork_failures_total"), 1.0);
    assert_eq!(sample(b, "portfwd_log_lines_dropped_total"), 4.0);

    // The process metrics are this process's.
    let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    assert_eq!(sample(b, "process_max_fds"), soft as f64);
    assert!(sample(b, "process_open_fds") >= 3.0);
    assert!(sample(b, "process_resident_memory_bytes") > 1e6);
    assert!(sample(b, "process_virtual_memory_bytes") >= sample(b, "process_resident_memory_bytes"));
    assert!(sample(b, "process_cpu_seconds_total") >= 0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let started = sample(b, "process_start_time_seconds");
    // Within the test binary's life (ticks are 10 ms; boot time is whole seconds).
    assert!(
        started <= now.as_secs_f64() + 1.0 && started > now.as_secs_f64() - 3600.0,
        "{started}"
    );
}

#[test]
fn a_second_scrape_sees_what_happened_in_between() {
    let metrics = Arc::new(Metrics::new());
    let l = metrics.listener(L);
    let d = Driver::start(metrics);
    let closed = format!("portfwd_connections_total{{listen=\"{L}\",route=\"\",outcome=\"closed\"}}");
    assert_eq!(sample(&scrape(d.addr).body, &closed), 0.0);
    l.connection_ended(Outcome::Closed, 1, 1, 1);
    assert_eq!(sample(&scrape(d.addr).body, &closed), 1.0);
}

#[test]
fn other_paths_methods_and_garbage_are_refused() {
    let d = Driver::start(recorded());
    let r = request(d.addr, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, "HTTP/1.1 404 Not Found");
    let r = request(d.addr, b"GET /metrics/x HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, "HTTP/1.1 404 Not Found");
    let r = request(d.addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(r.status, "HTTP/1.1 405 Method Not Allowed");
    assert!(r.headers.contains("Allow: GET"), "{}", r.headers);
    let r = request(d.addr, b"hello there\r\n\r\n");
    assert_eq!(r.status, "HTTP/1.1 400 Bad Request");
    assert!(!r.body.contains("portfwd_"), "no metrics with an error");
    // A head that never ends within 8 KiB: 400 as soon as it is too long, then closed.
    let mut s = connect(d.addr);
    let mut oversized = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
    oversized.resize(http::MAX_HEAD, b'a');
    s.write_all(&oversized).unwrap();
    assert_eq!(read_response(s).status, "HTTP/1.1 400 Bad Request");
    // A client that closes before its head is complete gets nothing and costs nothing.
    let mut s = connect(d.addr);
    s.write_all(b"GET /met").unwrap();
    drop(s);
    scrape(d.addr);
    let server = d.finish();
    assert_eq!(server.clients(), 0);
}

#[test]
fn many_clients_at_once_and_the_cap() {
    let d = Driver::start(recorded());
    // MAX_CLIENTS clients connect and hold their slot before any of them asks.
    let mut held: Vec<TcpStream> = (0..MAX_CLIENTS).map(|_| connect(d.addr)).collect();
    // One more is closed at once, without a response: it reads EOF (or a reset).
    let mut extra = connect(d.addr);
    let mut buf = [0u8; 64];
    assert!(
        matches!(extra.read(&mut buf), Ok(0) | Err(_)),
        "the extra client is closed"
    );
    // Then all of them ask at once and all get the whole response.
    for s in &mut held {
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    }
    let bodies: Vec<Response> = held.into_iter().map(read_response).collect();
    for r in &bodies {
        assert_eq!(r.status, "HTTP/1.1 200 OK");
        let s = format!("portfwd_refused_total{{listen=\"{L}\",reason=\"access-denied\"}}");
        assert_eq!(sample(&r.body, &s), 2.0);
    }
    // Slots free again once they are served.
    scrape(d.addr);
}

#[test]
fn silent_and_dribbling_clients_neither_block_nor_keep_their_slot() {
    let d = Driver::start(recorded());
    let silent = connect(d.addr);
    let mut dribbler = connect(d.addr);
    let head = b"GET /metrics HTTP/1.1\r\n\r\n";
    // A byte a second (the driver's clock moves a second per byte), with scrapes in between
    // served as if the two were not there.
    for (i, byte) in head[..10].iter().enumerate() {
        dribbler.write_all(&[*byte]).unwrap();
        d.advance(1000);
        if i % 3 == 0 {
            scrape(d.addr);
        }
    }
    // Ten seconds after they connected, both are closed although the dribbler kept sending.
    let mut buf = [0u8; 256];
    for mut s in [silent, dribbler] {
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(
            n,
            0,
            "closed without a response: {:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    scrape(d.addr);
    assert_eq!(d.finish().clients(), 0);
}

#[test]
fn a_client_that_never_reads_does_not_hold_up_others() {
    // Enough listeners for a response of over 10 MB: more than the socket buffers hold on
    // loopback (a send buffer grows to 4 MiB by default).
    let metrics = Metrics::new();
    for port in 0..4000 {
        metrics
            .listener(&format!("127.0.0.1:{}", 10000 + port))
            .connection_ended(Outcome::Closed, 1, 2, 3);
    }
    let d = Driver::start(Arc::new(metrics));
    let full = scrape(d.addr).body.len();
    assert!(full > 10_000_000, "response of {full} bytes");

    let stuck = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    stuck.set_recv_buffer_size(4096).unwrap();
    stuck.connect(&d.addr.into()).unwrap();
    let mut stuck: TcpStream = stuck.into();
    stuck.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    // While it holds its unread response, other scrapes get theirs whole (Content-Length
    // checked by read_response; the process_* values differ from scrape to scrape).
    for _ in 0..3 {
        let body = scrape(d.addr).body;
        assert!(body.contains("listen=\"127.0.0.1:13999\""));
        assert!(body.contains("process_start_time_seconds "));
    }
    // Past the timeout with no write progress, it is closed: it gets part of the response, then
    // the end of the stream (or a reset, as unread data was dropped).
    d.wait_open(1);
    d.advance(CLIENT_TIMEOUT_MS + 1);
    d.wait_open(0);
    stuck.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let _ = stuck.read_to_end(&mut got);
    assert!(got.len() < full / 2, "got {} of {full}", got.len());
    let server = d.finish();
    assert_eq!(server.clients(), 0);
}

#[test]
fn route_and_backend_series_can_be_added_and_a_listener_removed() {
    let m = Metrics::new();
    let l = m.listener(L);
    let web = l.route("web");
    web.connection_ended(Outcome::ConnectFailed, 0, 0, 1);
    web.backend("10.0.0.1:80", false).failure();
    let other = m.listener("127.0.0.1:7006");
    other.set_live(7);
    let mut out = String::new();
    m.render(&mut out);
    let s = format!("portfwd_connections_total{{listen=\"{L}\",route=\"web\",outcome=\"connect-failed\"}}");
    assert_eq!(sample(&out, &s), 1.0);
    let s = format!("portfwd_backend_failures_total{{listen=\"{L}\",route=\"web\",backend=\"10.0.0.1:80\"}}");
    assert_eq!(sample(&out, &s), 1.0);

    m.remove_listener(L);
    out.clear();
    m.render(&mut out);
    assert!(!out.contains(&format!("listen=\"{L}\"")), "{out}");
    assert_eq!(sample(&out, "portfwd_live_connections{listen=\"127.0.0.1:7006\"}"), 7.0);
    // Made again, it starts from 0.
    m.listener(L);
    out.clear();
    m.render(&mut out);
    let s = format!("portfwd_refused_total{{listen=\"{L}\",reason=\"cap\"}}");
    assert_eq!(sample(&out, &s), 0.0);
}

#[test]
fn promtool_accepts_a_scrape() {
    let d = Driver::start(recorded());
    let body = scrape(d.addr).body;
    match harness::env::promtool_check(&body) {
        None => harness::skip("/usr/bin/promtool not installed (Debian package prometheus)"),
        Some(verdict) => assert_eq!(verdict, Ok(()), "promtool found problems in\n{body}"),
    }
}

/// A real Prometheus scraping the server; run with `--ignored` (it takes a few seconds).
#[test]
#[ignore]
fn prometheus_scrapes_and_queries() {
    let prometheus = "/usr/bin/prometheus";
    if !std::path::Path::new(prometheus).exists() {
        println!("SKIP: {prometheus} not installed");
        return;
    }
    let d = Driver::start(recorded());
    let dir = std::env::temp_dir().join(format!("portfwd-metrics-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: portfwd\n    \
             static_configs:\n      - targets: ['{}']\n",
            d.addr
        ),
    )
    .unwrap();
    // A free port for its web interface (freed just before Prometheus binds it).
    let web = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .unwrap();
    let query = "portfwd_connections_total{outcome=\"closed\"}";
    let path = format!(
        "/api/v1/query?query={}",
        query
            .replace('{', "%7B")
            .replace('}', "%7D")
            .replace('"', "%22")
            .replace('=', "%3D")
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    let found = loop {
        if Instant::now() > deadline {
            break false;
        }
        if let Ok(mut s) = TcpStream::connect(web) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let req = format!("GET {path} HTTP/1.1\r\nHost: {web}\r\nConnection: close\r\n\r\n");
            if s.write_all(req.as_bytes()).is_ok() {
                let mut raw = String::new();
                let _ = s.read_to_string(&mut raw);
                last = raw;
                if last.contains("\"result\":[{") {
                    break true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(250)); // polling an external process's readiness
    };
    let _ = child.kill(); // the Prometheus this test started, by its pid
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    println!("prometheus answered: {}", last.rsplit("\r\n\r\n").next().unwrap_or(""));
    assert!(
        found,
        "no result from Prometheus within 60 s; last answer: {last}\nlog:\n{log}"
    );
    assert!(last.contains(&format!("\"listen\":\"{L}\"")), "{last}");
    assert!(last.contains(",\"2\"]"), "the value recorded (2): {last}");
}
