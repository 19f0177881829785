//! Operations at scale: port ranges, a thousand listeners, `--metrics` (scraped by promtool and a
//! real Prometheus), systemd socket activation, `--reuseport`, `max_rate`. The real binary, real
//! sockets on loopback, kernel-picked ports, bounded waits.

use crate::util::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `n` consecutive ports free on 127.0.0.1 just now, as listeners holding them (drop them to free
/// the ports for a forwarder; `retry_ports` covers the race). Scans up from a kernel-picked port,
/// past each port found taken (other tests hold some), at most 20,000 ports.
fn consecutive_ports(n: usize) -> Vec<TcpListener> {
    let mut first = u32::from(free_port());
    let mut scanned = 0;
    let mut held: Vec<TcpListener> = Vec::new();
    while held.len() < n && scanned < 20_000 {
        let port = first + held.len() as u32;
        scanned += 1;
        if port > 65_535 {
            first = 1024;
            held.clear();
            continue;
        }
        match TcpListener::bind(("127.0.0.1", port as u16)) {
            Ok(l) => held.push(l),
            Err(_) => {
                held.clear();
                first = port + 1;
            }
        }
    }
    assert_eq!(held.len(), n, "no {n} consecutive free ports");
    held
}

fn port_of(l: &TcpListener) -> u16 {
    l.local_addr().unwrap().port()
}

/// Starts `portfwd EXTRA... --config FILE`, FILE made by `config` from a fresh port of a listen
/// range of `n` ports (its first port), waiting for `n` listening lines.
fn start_range(dir: &TempDir, n: usize, extra: &[&str], config: impl Fn(u16) -> String) -> (Forwarder, u16) {
    let file = dir.join("setup.config");
    let (f, first) = retry_ports(|| {
        let first = port_of(&consecutive_ports(n)[0]);
        std::fs::write(&file, config(first)).unwrap();
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend(["--config".to_string(), file.display().to_string()]);
        Forwarder::spawn(BIN, &args, first).map(|f| (f, first))
    })
    .unwrap_or_else(|e| panic!("portfwd did not start: {e}"));
    assert!(
        f.wait_log_count("event=listening ", n, Duration::from_secs(30)),
        "{}",
        f.log_text()
    );
    (f, first)
}

#[test]
fn port_ranges_forward_port_by_port_and_many_to_one() {
    // Three backends on consecutive ports, each answering with its own port.
    let held = consecutive_ports(3);
    let backends: Vec<Backend> = held
        .into_iter()
        .map(|l| {
            let port = port_of(&l);
            Backend::from_listener(l, move |mut s| {
                // Read the client's byte first: closing with it unread would reset the client.
                let _ = s.read(&mut [0u8; 1]);
                let _ = s.write_all(port.to_string().as_bytes());
            })
        })
        .collect();
    let b0 = backends[0].port;
    let dir = TempDir::new("ranges");
    let (f, first) = start_range(&dir, 6, &[], |p| {
        format!(
            "127.0.0.1:{}-{} -> 127.0.0.1:{b0}-{}\n127.0.0.1:{}-{} -> 127.0.0.1:{b0}\n",
            p,
            p + 2,
            b0 + 2,
            p + 3,
            p + 5
        )
    });
    let answer = |port: u16| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"x").unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        got
    };
    for i in 0..3 {
        assert_eq!(answer(first + i), (b0 + i).to_string(), "port by port");
        assert_eq!(answer(first + 3 + i), b0.to_string(), "many to one");
    }
    // Each connection's log line names the port it came in on.
    for i in 0..6 {
        let needle = format!(" listen={} ", first + i);
        assert!(
            f.wait_log_count(&needle, 1, Duration::from_secs(10)),
            "{needle}: {}",
            f.log_text()
        );
    }
}

#[test]
fn bad_ranges_are_located_and_nothing_starts() {
    let dir = TempDir::new("bad-ranges");
    let file = dir.join("setup.config");
    for (text, expected) in [
        ("7100-7000 -> 127.0.0.1:8000\n", ":1:1: invalid port range '7100-7000'"),
        (
            "# x\n7000-7099 -> 127.0.0.1:8000-8009\n",
            ":2:14: port ranges of different lengths: 100 listen ports, 10 target ports",
        ),
        (
            "7050 -> 127.0.0.1:1\n 7000-7099 -> 127.0.0.1:2\n",
            ":2:2: [::]:7050 is already used by line 1",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = Command::new(BIN).arg("--config").arg(&file).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(&format!("{}{expected}", file.display())), "{err}");
    }
}

/// Descriptors of `pid` that are listening sockets (from /proc/net/tcp{,6}: state 0A).
fn listening_fds(pid: u32) -> usize {
    let mut listening = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" {
                listening.insert(format!("socket:[{}]", f[9]));
            }
        }
    }
    fd_targets(pid).iter().filter(|(_, t)| listening.contains(t)).count()
}

#[test]
fn a_thousand_listeners_and_no_connection_process_gets_one() {
    const N: usize = 1000;
    if let Err(reason) = need_descriptors(N as u64 + 200) {
        return skip(reason);
    }
    let _turn = serial();
    let backend = Backend::start(echo);
    let b = backend.port;
    let dir = TempDir::new("thousand");
    let file = dir.join("setup.config");
    // A thousand kernel-picked ports (the ephemeral range of a busy machine rarely has a thousand
    // consecutive ones free; ranges are tested above).
    let (mut f, ports) = retry_ports(|| {
        let mut ports = std::collections::BTreeSet::new();
        while ports.len() < N {
            ports.insert(free_port());
        }
        let ports: Vec<u16> = ports.into_iter().collect();
        let text: String = ports
            .iter()
            .map(|p| format!("127.0.0.1:{p} -> 127.0.0.1:{b}\n"))
            .collect();
        std::fs::write(&file, text).unwrap();
        let args = ["--config".to_string(), file.display().to_string()];
        Forwarder::spawn(BIN, &args, ports[0]).map(|f| (f, ports))
    })
    .unwrap_or_else(|e| panic!("portfwd did not start: {e}"));
    assert!(
        f.wait_log_count("event=listening ", N, Duration::from_secs(30)),
        "{}",
        f.log_text()
    );
    let first = ports[0];
    assert!(listening_fds(f.pid()) >= N, "the main process holds the listeners");
    // Connections on the first, a middle and the last listener; held open to look at their
    // processes.
    let mut held = Vec::new();
    for port in [first, ports[N / 2], ports[N - 1]] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        round_trip(&mut s, b"hello");
        held.push(s);
    }
    assert!(
        wait_until(Duration::from_secs(10), || f.descendants().len() >= 6),
        "{:?}",
        f.descendants()
    );
    for pid in f.descendants() {
        let fds = fd_targets(pid);
        assert_eq!(listening_fds(pid), 0, "pid {pid} has a listener: {fds:?}");
        assert!(fds.len() <= 8, "pid {pid} has {} descriptors: {fds:?}", fds.len());
    }
    drop(held);
    assert!(
        f.wait_log_count("outcome=closed", 3, Duration::from_secs(10)),
        "{}",
        f.log_text()
    );
    assert!(f.alive());
}

/// `GET path` over HTTP/1.0 to `addr`: the status line and the body.
fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.lines().next().unwrap_or("").to_string(), body.to_string())
}

/// The value of the sample `series` (name and labels, exactly as rendered).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// A forwarder with `--metrics` on a fresh port and the config `config(port, other)` wrote, for
/// two fresh ports (the first is waited on). Returns it, the metrics address and both ports.
fn start_config_with_metrics(dir: &TempDir, config: impl Fn(u16, u16) -> String) -> (Forwarder, SocketAddr, u16, u16) {
    let file = dir.join("setup.config");
    retry_ports(|| {
        let (p1, p2, m) = (free_port(), free_port(), free_port());
        std::fs::write(&file, config(p1, p2)).unwrap();
        let metrics = SocketAddr::from(([127, 0, 0, 1], m));
        let args = [
            "--metrics".to_string(),
            metrics.to_string(),
            "--config".to_string(),
            file.display().to_string(),
        ];
        Forwarder::spawn(BIN, &args, p1).map(|f| (f, metrics, p1, p2))
    })
    .unwrap_or_else(|e| panic!("portfwd did not start: {e}"))
}

/// A forwarder with `--metrics` and two listeners: the first to an echo backend, the second
/// denying 127.0.0.1.
fn start_with_metrics(dir: &TempDir, backend: u16) -> (Forwarder, SocketAddr, u16, u16) {
    start_config_with_metrics(dir, |p1, p2| {
        format!("127.0.0.1:{p1} -> 127.0.0.1:{backend}\n127.0.0.1:{p2} -> 127.0.0.1:{backend} deny=127.0.0.1\n")
    })
}

/// One connection of `len` bytes each way through `port`, then a refused one through `denied`;
/// waits until the forwarder has reaped the first.
fn traffic(f: &Forwarder, port: u16, denied: u16, len: usize) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let sent = pattern(len, 7);
    s.write_all(&sent).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert!(back == sent, "echo differs");
    let mut r = TcpStream::connect(("127.0.0.1", denied)).unwrap();
    r.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = r.read(&mut [0u8; 1]);
    assert!(
        f.wait_log_count("outcome=closed", 1, Duration::from_secs(10)),
        "{}",
        f.log_text()
    );
    assert!(
        f.wait_log_count("reason=access-denied", 1, Duration::from_secs(10)),
        "{}",
        f.log_text()
    );
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len).map(|i| (i as u64 * 31 + seed) as u8).collect()
}

#[test]
fn metrics_count_per_listener_and_promtool_accepts_them() {
    let backend = Backend::start(echo);
    let dir = TempDir::new("metrics");
    let (f, metrics, p1, p2) = start_with_metrics(&dir, backend.port);
    traffic(&f, p1, p2, 100_000);
    let l1 = format!("listen=\"127.0.0.1:{p1}\"");
    let l2 = format!("listen=\"127.0.0.1:{p2}\"");
    // The connection is counted once its process was reaped (its log line comes just before).
    let closed = format!("portfwd_connections_total{{{l1},route=\"\",outcome=\"closed\"}}");
    let mut body = String::new();
    let counted = wait_until(Duration::from_secs(10), || {
        let (status, b) = http_get(metrics, "/metrics");
        assert!(status.contains("200"), "{status}");
        body = b;
        sample(&body, &closed) == Some(1.0)
    });
    assert!(counted, "{body}");
    let bytes = |l: &str, d: &str| {
        sample(
            &body,
            &format!("portfwd_bytes_total{{{l},route=\"\",direction=\"{d}\"}}"),
        )
    };
    assert_eq!(bytes(&l1, "c2s"), Some(100_000.0), "{body}");
    assert_eq!(bytes(&l1, "s2c"), Some(100_000.0), "{body}");
    assert_eq!(bytes(&l2, "c2s"), Some(0.0), "{body}");
    let refused = |l: &str| sample(&body, &format!("portfwd_refused_total{{{l},reason=\"access-denied\"}}"));
    assert_eq!((refused(&l1), refused(&l2)), (Some(0.0), Some(1.0)), "{body}");
    let count = format!("portfwd_connection_duration_seconds_count{{{l1},route=\"\"}}");
    assert_eq!(sample(&body, &count), Some(1.0), "{body}");
    assert_eq!(
        sample(&body, &format!("portfwd_live_connections{{{l1}}}")),
        Some(0.0),
        "{body}"
    );
    assert_eq!(sample(&body, "portfwd_fork_failures_total"), Some(0.0), "{body}");
    assert!(body.contains("\nprocess_resident_memory_bytes "), "{body}");
    // The listener's one backend, as its connection process reported it.
    let up = format!(
        "portfwd_backend_up{{{l1},route=\"\",backend=\"127.0.0.1:{}\"}}",
        backend.port
    );
    assert_eq!(sample(&body, &up), Some(1.0), "{body}");
    assert_eq!(http_get(metrics, "/other").0.split(' ').nth(1), Some("404"));

    match promtool_check(&body) {
        None => skip("/usr/bin/promtool not installed (Debian package prometheus)"),
        Some(verdict) => assert_eq!(verdict, Ok(()), "promtool found problems in\n{body}"),
    }
}

/// A query string's value, percent-encoded.
fn encoded(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn prometheus_scrapes_portfwd_and_answers_a_query() {
    let prometheus = "/usr/bin/prometheus";
    if !std::path::Path::new(prometheus).exists() {
        return skip(format!("{prometheus} not installed (Debian package prometheus)"));
    }
    let backend = Backend::start(echo);
    let dir = TempDir::new("prometheus");
    let (f, metrics, p1, p2) = start_with_metrics(&dir, backend.port);
    traffic(&f, p1, p2, 4321);
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: portfwd\n    \
             static_configs:\n      - targets: ['{metrics}']\n"
        ),
    )
    .unwrap();
    let web = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child: Child = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .unwrap();
    let _prometheus = KillOnDrop(child);
    let query = format!("portfwd_bytes_total{{listen=\"127.0.0.1:{p1}\",direction=\"s2c\"}}");
    let path = format!("/api/v1/query?query={}", encoded(&query));
    let mut last = String::new();
    let answered = wait_until(Duration::from_secs(60), || {
        if TcpStream::connect(web).is_err() {
            return false; // not listening yet
        }
        let (_, body) = http_get(web, &path);
        last = body;
        last.contains("\"status\":\"success\"") && last.contains("\"4321\"")
    });
    let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    assert!(answered, "last answer: {last}\nprometheus log:\n{log}");
    assert!(last.contains("\"job\":\"portfwd\""), "{last}");
}

#[test]
fn two_instances_share_a_port_with_reuseport() {
    let backend = Backend::start(echo);
    let b = backend.port.to_string();
    let first = Forwarder::start(BIN, &["--reuseport", "--bind", "127.0.0.1"], "127.0.0.1", backend.port);
    let port = first.port.to_string();
    let args: Vec<String> = ["--reuseport", "--bind", "127.0.0.1", &port, "127.0.0.1", &b]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let second = Forwarder::spawn(BIN, &args, first.port).expect("a second instance on the same port");
    // Without it, the port is taken.
    let alone: Vec<String> = args[1..].to_vec();
    let refused = Forwarder::spawn(BIN, &alone, first.port)
        .err()
        .expect("refused without --reuseport");
    assert!(port_taken(&refused), "{refused}");
    const N: usize = 200;
    for i in 0..N {
        let mut s = TcpStream::connect(("127.0.0.1", first.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        round_trip(&mut s, format!("hello {i}").as_bytes());
    }
    let ended = || first.count_lines("outcome=closed") + second.count_lines("outcome=closed");
    assert!(
        wait_until(Duration::from_secs(20), || ended() >= N),
        "{} of {N}",
        ended()
    );
    let (a, b) = (
        first.count_lines("outcome=closed"),
        second.count_lines("outcome=closed"),
    );
    assert!(
        a > 0 && b > 0,
        "the kernel gave {a} and {b} connections to the two instances"
    );
}

#[test]
fn max_rate_caps_a_direction_and_delivers_every_byte() {
    const LEN: usize = 8 << 20;
    let _turn = serial();
    // The backend reads everything, then answers with the SHA-256 of what it read.
    let backend = Backend::start(|mut s| {
        if let Ok((_, hash)) = read_hash(&mut s) {
            let _ = s.write_all(&hash);
        }
    });
    let f = Forwarder::start(BIN, &["--max-rate", "2M"], "127.0.0.1", backend.port);
    let mut s = f.connect();
    let started = Instant::now();
    let sent = send_pattern(&mut s, 42, LEN).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = [0u8; 32];
    s.read_exact(&mut got).unwrap();
    let took = started.elapsed();
    assert_eq!(got, sent, "bytes differ");
    // 8 MiB at 2,000,000 bytes a second: 4.2 s; generous bounds for a shared machine.
    assert!(
        took >= Duration::from_millis(2500) && took <= Duration::from_secs(12),
        "took {took:?}"
    );
    assert!(
        f.wait_log_count("outcome=closed", 1, Duration::from_secs(10)),
        "{}",
        f.log_text()
    );
}

/// `systemd-socket-activate -l 127.0.0.1:PORT portfwd --config FILE`, its stderr in a file.
struct Activated {
    child: KillOnDrop,
    log: std::path::PathBuf,
}

impl Activated {
    fn start(dir: &TempDir, listen: u16, config: &str) -> Option<Activated> {
        let activate = "/usr/bin/systemd-socket-activate";
        if !std::path::Path::new(activate).exists() {
            skip(format!("{activate} not installed (Debian package systemd)"));
            return None;
        }
        let file = dir.join("setup.config");
        std::fs::write(&file, config).unwrap();
        let log = dir.join("portfwd.log");
        let child = Command::new(activate)
            .arg("-l")
            .arg(format!("127.0.0.1:{listen}"))
            .arg(BIN)
            .arg("--config")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Some(Activated {
            child: KillOnDrop(child),
            log,
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Connects once the launcher listens (it starts portfwd on the first connection).
    fn connect(&self, port: u16) -> TcpStream {
        // Not before the launcher says it listens: until then the port is anyone's (another test
        // may hold it a moment), and a connection there would never reach the launcher.
        let listening = format!("Listening on 127.0.0.1:{port} ");
        assert!(
            wait_until(Duration::from_secs(10), || self.log().contains(&listening)),
            "the launcher did not listen: {}",
            self.log()
        );
        let mut s = None;
        wait_until(Duration::from_secs(10), || {
            s = TcpStream::connect(("127.0.0.1", port)).ok();
            s.is_some()
        });
        let s = s.unwrap_or_else(|| panic!("nothing listens on {port}: {}", self.log()));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }
}

#[test]
fn systemd_socket_activation_passes_the_listener() {
    let backend = Backend::start(echo);
    let b = backend.port;
    let dir = TempDir::new("activation");
    let (passed, bound) = (free_port(), free_port());
    let config = format!("127.0.0.1:{passed} -> 127.0.0.1:{b}\n127.0.0.1:{bound} -> 127.0.0.1:{b}\n");
    let Some(a) = Activated::start(&dir, passed, &config) else {
        return;
    };
    // The first client, queued on the launcher's socket before portfwd existed, is served.
    let mut s = a.connect(passed);
    round_trip(&mut s, b"through systemd's socket");
    drop(s);
    let log = || a.log();
    assert!(
        wait_until(Duration::from_secs(10), || log()
            .contains("event=listening listen=127.0.0.1:")
            && log().matches("event=listening ").count() == 2),
        "{}",
        log()
    );
    assert!(log().contains("event=socket-activation listeners=1"), "{}", log());
    // The mapping with no passed socket bound its own.
    round_trip(&mut TcpStream::connect(("127.0.0.1", bound)).unwrap(), b"bound here");
    let pid = a.child.0.id();
    // The passed socket is the main process's (same pid: the launcher exec'd portfwd), and no
    // connection process holds it.
    assert!(listening_fds(pid) >= 2, "{:?}", fd_targets(pid));
    let mut held = a.connect(passed);
    round_trip(&mut held, b"again");
    assert!(wait_until(Duration::from_secs(10), || descendants(pid).len() >= 2));
    for child in descendants(pid) {
        assert_eq!(listening_fds(child), 0, "{:?}", fd_targets(child));
    }
    drop(held);
    assert!(alive(pid), "{}", log());
}

#[test]
fn a_passed_socket_no_mapping_claims_stops_start_up() {
    let dir = TempDir::new("activation-unclaimed");
    let (passed, other) = (free_port(), free_port());
    let config = format!("127.0.0.1:{other} -> 127.0.0.1:9\n");
    let Some(mut a) = Activated::start(&dir, passed, &config) else {
        return;
    };
    let _client = a.connect(passed);
    let status = wait_child(&mut a.child.0, Duration::from_secs(10));
    assert_eq!(status, Some(2), "{}", a.log());
    assert!(
        a.log().contains(&format!(
            "portfwd: socket activation: the socket passed for 127.0.0.1:{passed} "
        )),
        "{}",
        a.log()
    );
}

#[test]
fn metrics_name_the_route_a_connection_took_on_a_routed_listener() {
    let backend = Backend::start(echo);
    let dir = TempDir::new("metrics-routes");
    let b = backend.port;
    let (_forwarder, metrics, port, _) = start_config_with_metrics(&dir, |p, _| {
        format!("127.0.0.1:{p} -> 127.0.0.1:{b} when=prefix:PING\n127.0.0.1:{p} -> 127.0.0.1:{b} when=http\n")
    });
    for request in [&b"PING\n"[..], b"GET / HTTP/1.0\r\n\r\n", b"GET / HTTP/1.0\r\n\r\n"] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert_eq!(back, request, "echo differs");
    }
    let listen = format!("listen=\"127.0.0.1:{port}\"");
    let http = format!("portfwd_connections_total{{{listen},route=\"http\",outcome=\"closed\"}}");
    let ping = format!("portfwd_connections_total{{{listen},route=\"prefix:PING\",outcome=\"closed\"}}");
    let mut body = String::new();
    let counted = wait_until(Duration::from_secs(10), || {
        body = http_get(metrics, "/metrics").1;
        sample(&body, &http) == Some(2.0) && sample(&body, &ping) == Some(1.0)
    });
    assert!(counted, "{body}");
    assert_eq!(sample(&body, "portfwd_log_lines_dropped_total"), Some(0.0), "{body}");
}

#[test]
fn metrics_show_each_backends_state_and_failures() {
    let backend = Backend::start(echo);
    // A port nothing listens on: connecting to it is refused.
    let dead = free_port();
    let dir = TempDir::new("metrics-backends");
    let b = backend.port;
    let (_forwarder, metrics, port, _) = start_config_with_metrics(&dir, |p, _| {
        format!("127.0.0.1:{p} -> 127.0.0.1:{dead}, 127.0.0.1:{b}\n")
    });
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    round_trip(&mut s, b"failed over");
    let labels = |b: u16| format!("{{listen=\"127.0.0.1:{port}\",route=\"\",backend=\"127.0.0.1:{b}\"}}");
    let mut body = String::new();
    let reported = wait_until(Duration::from_secs(10), || {
        body = http_get(metrics, "/metrics").1;
        sample(&body, &format!("portfwd_backend_failures_total{}", labels(dead))) == Some(1.0)
    });
    assert!(reported, "{body}");
    assert_eq!(
        sample(&body, &format!("portfwd_backend_up{}", labels(dead))),
        Some(0.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, &format!("portfwd_backend_up{}", labels(backend.port))),
        Some(1.0),
        "{body}"
    );
}
