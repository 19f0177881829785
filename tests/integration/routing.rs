//! One port, many protocols (`when=`): real OpenSSH, nginx (TLS, chosen by SNI), curl and HTTP by
//! Host, a server-first banner by `timeout:`, and the clients that match nothing, stall, or leave.

use crate::util::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

/// Whether every program is installed; if not, says which is missing (the caller skips).
fn missing(programs: &[&str]) -> Option<String> {
    let absent: Vec<&str> = programs.iter().copied().filter(|p| !Path::new(p).exists()).collect();
    (!absent.is_empty()).then(|| format!("{} not installed (.ci/run installs them)", absent.join(", ")))
}

/// Starts portfwd on a config whose lines `lines(port)` makes for its listen port.
fn start(dir: &TempDir, lines: impl Fn(u16) -> String, extra: &[&str]) -> Forwarder {
    let file = dir.join("routes.config");
    retry_ports(|| {
        let port = free_port();
        std::fs::write(&file, lines(port)).unwrap();
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend(["--config".into(), file.display().to_string()]);
        Forwarder::spawn(BIN, &args, port)
    })
    .unwrap_or_else(|e| panic!("portfwd did not start: {e}"))
}

/// Waits (bounded) until something accepts connections on 127.0.0.1:`port`.
fn wait_listening(port: u16, what: &str) {
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect(local(port)).is_ok()),
        "{what} did not listen on {port}"
    );
}

/// A backend that answers any HTTP request with `body` (and says nothing before the request).
fn http_backend(body: &'static str) -> Backend {
    Backend::start(move |mut s| {
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(reply.as_bytes());
    })
}

/// A backend that keeps every byte it receives, in order, and says `tag` first.
fn recording_backend(tag: &'static [u8]) -> (Backend, std::sync::mpsc::Receiver<Vec<u8>>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let b = Backend::start(move |mut s| {
        let _ = s.write_all(tag);
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let _ = tx.lock().unwrap().send(got);
    });
    (b, rx)
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An OpenSSH server of the test's own (its own host key and config), on a port of its own.
/// Returns it and its host key's public line.
fn sshd(dir: &TempDir) -> (KillOnDrop, u16, String) {
    std::fs::create_dir_all("/run/sshd").unwrap();
    let key = dir.join("host_ed25519");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(status.success());
    let public = std::fs::read_to_string(dir.join("host_ed25519.pub")).unwrap();
    let port = free_port();
    let cfg = dir.join("sshd_config");
    std::fs::write(
        &cfg,
        format!(
            "ListenAddress 127.0.0.1:{port}\nHostKey {}\nPidFile none\nUsePAM no\nStrictModes no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\n",
            key.display()
        ),
    )
    .unwrap();
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sshd");
    let sshd = KillOnDrop(child);
    wait_listening(port, "sshd");
    (sshd, port, public)
}

/// An nginx TLS server answering `body` with a self-signed certificate for `name` made by openssl.
fn nginx_tls(dir: &TempDir, name: &str, body: &str) -> (KillOnDrop, u16) {
    let root = dir.join(name);
    std::fs::create_dir_all(&root).unwrap();
    let (crt, key) = (root.join("cert.pem"), root.join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args(["-subj", &format!("/CN={name}"), "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "openssl req");
    let port = free_port();
    let r = root.display();
    let conf = format!(
        "worker_processes 1;\nmaster_process off;\npid {r}/nginx.pid;\nerror_log {r}/error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n access_log off;\n client_body_temp_path {r}/body;\n proxy_temp_path {r}/proxy;\n\
         fastcgi_temp_path {r}/fastcgi;\n uwsgi_temp_path {r}/uwsgi;\n scgi_temp_path {r}/scgi;\n\
         server {{\n  listen 127.0.0.1:{port} ssl;\n  ssl_certificate {};\n  ssl_certificate_key {};\n\
         location / {{ return 200 \"{body}\\n\"; }}\n }}\n}}\n",
        crt.display(),
        key.display()
    );
    std::fs::write(root.join("nginx.conf"), conf).unwrap();
    let child = Command::new("/usr/sbin/nginx")
        .arg("-p")
        .arg(&root)
        .arg("-c")
        .arg(root.join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let nginx = KillOnDrop(child);
    wait_listening(port, "nginx");
    (nginx, port)
}

#[test]
fn ssh_and_tls_by_server_name_share_one_port() {
    let needed = [
        "/usr/sbin/sshd",
        "/usr/bin/ssh-keygen",
        "/usr/bin/ssh-keyscan",
        "/usr/bin/ssh",
        "/usr/sbin/nginx",
        "/usr/bin/openssl",
        "/usr/bin/curl",
    ];
    if let Some(reason) = missing(&needed) {
        return skip(reason);
    }
    let dir = TempDir::new("route-ssh-tls");
    let (_sshd, ssh_port, host_key) = sshd(&dir);
    let (_a, a) = nginx_tls(&dir, "alpha.example.com", "alpha");
    let (_b, b) = nginx_tls(&dir, "beta.example.com", "beta");
    let (_c, c) = nginx_tls(&dir, "default.example.org", "default");
    let fwd = start(
        &dir,
        |p| {
            format!(
                "127.0.0.1:{p} -> 127.0.0.1:{ssh_port} when=ssh\n\
                 127.0.0.1:{p} -> 127.0.0.1:{a} when=tls:alpha.example.com\n\
                 127.0.0.1:{p} -> 127.0.0.1:{b} when=tls:*.example.com\n\
                 127.0.0.1:{p} -> 127.0.0.1:{c} when=tls\n\
                 127.0.0.1:{p} -> 127.0.0.1:{ssh_port} when=timeout:0.5\n"
            )
        },
        &[],
    );
    let port = fwd.port.to_string();
    // The real ssh client speaks first: the ssh route takes it to sshd, which asks it to
    // authenticate (it has no key, so it is refused there).
    let out = Command::new("ssh")
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "ConnectTimeout=10", "-p", &port, "nobody@127.0.0.1", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("Permission denied"),
        "ssh said {said:?}; {}",
        fwd.log_text()
    );
    assert!(
        fwd.wait_log_count(" route=ssh ", 1, Duration::from_secs(10)),
        "{}",
        fwd.log_text()
    );
    // ssh-keyscan waits for the server's banner before it sends its own (server first): the
    // timeout route takes it to sshd, and it gets the test's own host key.
    let out = Command::new("ssh-keyscan")
        .args(["-T", "10", "-t", "ed25519", "-p", &port, "127.0.0.1"])
        .output()
        .unwrap();
    let scanned = String::from_utf8_lossy(&out.stdout);
    let key = host_key.split_whitespace().nth(1).unwrap();
    assert!(
        scanned.contains(key),
        "ssh-keyscan said {scanned:?}; {}",
        fwd.log_text()
    );
    // Each TLS server is chosen by the name the client asks for, and answers with its body.
    for (name, body) in [
        ("alpha.example.com", "alpha"),
        ("beta.example.com", "beta"),
        ("gamma.example.com", "beta"),
        ("other.example.org", "default"),
    ] {
        let resolve = format!("{name}:{port}:127.0.0.1");
        let got = curl(&["-k", "--resolve", &resolve, &format!("https://{name}:{port}/")]);
        assert_eq!(got, format!("{body}\n"), "{name}");
    }
    // Six routed connections: ssh, ssh-keyscan (timeout) and the four TLS ones; each line is
    // written when its connection ends, so wait for all of them.
    assert!(
        fwd.wait_log_count(" route=", 6, Duration::from_secs(10)),
        "{}",
        fwd.log_text()
    );
    let log = fwd.log_text();
    for route in [
        "route=ssh ",
        "route=tls:alpha.example.com ",
        "route=tls:*.example.com ",
        "route=tls ",
    ] {
        assert!(log.contains(route), "no {route:?} in\n{log}");
    }
    let stats = fwd.stats();
    assert!(stats.contains(&format!(" route:{port}:tls:*.example.com=2")), "{stats}");
    assert!(stats.contains(&format!(" route:{port}:ssh=1")), "{stats}");
}

#[test]
fn http_by_host_and_a_server_first_banner_by_timeout() {
    if let Some(reason) = missing(&["/usr/bin/curl"]) {
        return skip(reason);
    }
    let intranet = http_backend("intranet");
    let web = http_backend("web");
    let banner = Backend::start(|mut s| {
        let _ = s.write_all(b"220 banner.test ESMTP\r\n");
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    let dir = TempDir::new("route-http");
    let fwd = start(
        &dir,
        |p| {
            format!(
                "127.0.0.1:{p} -> 127.0.0.1:{} when=http:intranet.example.com\n\
                 127.0.0.1:{p} -> 127.0.0.1:{} when=http\n\
                 127.0.0.1:{p} -> 127.0.0.1:{} when=timeout:0.3\n",
                intranet.port, web.port, banner.port
            )
        },
        &[],
    );
    let url = format!("http://127.0.0.1:{}/", fwd.port);
    assert_eq!(curl(&["-H", "Host: intranet.example.com:8080", &url]), "intranet");
    assert_eq!(curl(&["-H", "Host: www.example.com", &url]), "web");
    assert_eq!(curl(&[&url]), "web");
    // A client that says nothing meets the server that speaks first.
    let mut s = fwd.connect();
    let (got, _) = net::read_exact_within(&mut s, 23, Duration::from_secs(10));
    assert_eq!(got, b"220 banner.test ESMTP\r\n");
    drop(s);
    assert!(
        fwd.wait_log_count("route=timeout:0.3 ", 1, Duration::from_secs(10)),
        "{}",
        fwd.log_text()
    );
}

/// The first bytes a real TLS client sends (openssl s_client asking for `name`), captured on a
/// plain socket.
fn client_hello(name: &str) -> Option<Vec<u8>> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut client = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            name,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hello = vec![0u8; 5];
    s.read_exact(&mut hello).ok()?;
    let len = u16::from_be_bytes([hello[3], hello[4]]) as usize;
    hello.resize(5 + len, 0);
    s.read_exact(&mut hello[5..]).ok()?;
    let _ = client.kill();
    let _ = client.wait();
    Some(hello)
}

#[test]
fn a_client_hello_sent_one_byte_at_a_time_reaches_its_route_whole() {
    if let Some(reason) = missing(&["/usr/bin/openssl"]) {
        return skip(reason);
    }
    let hello = client_hello("one.example.com").expect("a ClientHello from openssl s_client");
    let (tls, got) = recording_backend(b"");
    let (other, _) = recording_backend(b"");
    let dir = TempDir::new("route-bytes");
    let fwd = start(
        &dir,
        |p| {
            format!(
                "127.0.0.1:{p} -> 127.0.0.1:{} when=ssh\n127.0.0.1:{p} -> 127.0.0.1:{} when=tls:one.example.com\n\
                 127.0.0.1:{p} -> 127.0.0.1:{} when=any\n",
                other.port, tls.port, other.port
            )
        },
        &[],
    );
    let mut s = fwd.connect();
    s.set_nodelay(true).unwrap();
    for b in &hello {
        s.write_all(&[*b]).unwrap();
        // Apart, so that most bytes come in segments (and epoll edges) of their own.
        thread::sleep(Duration::from_millis(1));
    }
    s.write_all(b"and after").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let received = got
        .recv_timeout(Duration::from_secs(10))
        .expect("the TLS route's backend");
    let mut expected = hello.clone();
    expected.extend_from_slice(b"and after");
    assert_eq!(received, expected, "the backend gets every byte, in order");
    assert!(fwd.wait_log_count("route=tls:one.example.com ", 1, Duration::from_secs(10)));
}

#[test]
fn clients_no_route_matches_are_closed_and_counted() {
    let (web, _) = recording_backend(b"");
    let dir = TempDir::new("route-none");
    let fwd = start(
        &dir,
        |p| {
            format!(
                "127.0.0.1:{p} -> 127.0.0.1:{} when=ssh\n127.0.0.1:{p} -> 127.0.0.1:{} when=http:web.example.com\n",
                web.port, web.port
            )
        },
        &[],
    );
    // Garbage: neither SSH nor HTTP from its first byte.
    let mut s = fwd.connect();
    s.write_all(b"\x00\x01garbage").unwrap();
    let (_, end) = net::read_to_end_within(&mut s, 1, Duration::from_secs(10));
    assert!(end.is_closed(), "{}", end.describe());
    // 16 KiB of an HTTP request whose header section never ends: no decision within the limit.
    let mut s = fwd.connect();
    let mut request = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
    request.resize(16 * 1024, b'a');
    s.write_all(&request).unwrap();
    let (_, end) = net::read_to_end_within(&mut s, 1, Duration::from_secs(10));
    assert!(end.is_closed(), "{}", end.describe());
    // A client that closes before any route matches (half an SSH banner, then its FIN).
    let mut s = fwd.connect();
    s.write_all(b"SS").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let (_, end) = net::read_to_end_within(&mut s, 1, Duration::from_secs(10));
    assert!(end.is_closed(), "{}", end.describe());
    assert!(
        fwd.wait_log_count("outcome=no-route", 3, Duration::from_secs(10)),
        "{}",
        fwd.log_text()
    );
    let log = fwd.log_text();
    assert!(log.contains(" bytes=9 "), "{log}");
    assert!(log.contains(&format!(" bytes={} ", 16 * 1024)), "{log}");
    assert!(log.contains(" bytes=2 "), "{log}");
    // One that leaves without a word is not a routing failure.
    drop(fwd.connect());
    assert!(wait_until(Duration::from_secs(10), || fwd
        .stats()
        .contains(" closed_before_data=1 ")));
    let stats = fwd.stats();
    assert!(stats.contains(" no_route=3 "), "{stats}");
    assert!(stats.contains(" live=0 waiting=0 "), "{stats}");
}

#[test]
fn a_stalled_partial_client_costs_no_cpu_until_its_first_byte_timeout() {
    let _turn = serial();
    let (ssh, _) = recording_backend(b"");
    let dir = TempDir::new("route-stall");
    let fwd = start(
        &dir,
        |p| {
            format!(
                "127.0.0.1:{p} -> 127.0.0.1:{} when=ssh first_byte_timeout=3\n127.0.0.1:{p} -> 127.0.0.1:{} when=tls\n",
                ssh.port, ssh.port
            )
        },
        &["--verbose"],
    );
    let mut s = fwd.connect();
    s.write_all(b"SS").unwrap();
    assert!(wait_until(Duration::from_secs(5), || fwd
        .stats()
        .contains(" waiting=1 ")));
    let before = harness::procs::cpu_ticks(fwd.pid());
    // A measurement window, not synchronisation: a main process that spun on the stalled client
    // would burn the whole second.
    thread::sleep(Duration::from_secs(1));
    let used = harness::procs::cpu_ticks(fwd.pid()) - before;
    let per_sec = harness::procs::clock_ticks_per_sec();
    assert!(
        used * 10 <= per_sec,
        "{used} of {per_sec} ticks in 1 s while one client stalled"
    );
    // The first-byte timeout bounds how long a route may take to be decided: then it is closed.
    let (_, end) = net::read_to_end_within(&mut s, 1, Duration::from_secs(10));
    assert!(end.is_closed(), "{}", end.describe());
    assert!(
        fwd.wait_log_count(
            "event=first-byte-timeout seen=2 reason=no-route-chosen",
            1,
            Duration::from_secs(5)
        ),
        "{}",
        fwd.log_text()
    );
    assert!(fwd.stats().contains(" first_byte_timeouts=1 "));
}

#[test]
fn a_reload_replaces_the_routes_and_a_waiting_client_keeps_its_own() {
    let (old_ssh, old_got) = recording_backend(b"old ");
    let (new_ssh, new_got) = recording_backend(b"new ");
    let (rest, _) = recording_backend(b"rest ");
    let dir = TempDir::new("route-reload");
    let lines = |ssh: u16| {
        move |p: u16| {
            format!(
                "127.0.0.1:{p} -> 127.0.0.1:{ssh} when=ssh\n127.0.0.1:{p} -> 127.0.0.1:{} when=any\n",
                rest.port
            )
        }
    };
    let fwd = start(&dir, lines(old_ssh.port), &[]);
    let mut waiting = fwd.connect();
    waiting.write_all(b"SS").unwrap();
    assert!(wait_until(Duration::from_secs(5), || fwd
        .stats()
        .contains(" waiting=1 ")));
    std::fs::write(dir.join("routes.config"), lines(new_ssh.port)(fwd.port)).unwrap();
    fwd.signal(libc::SIGHUP);
    assert!(
        fwd.wait_log_count("event=reload-done", 1, Duration::from_secs(5)),
        "{}",
        fwd.log_text()
    );
    // Accepted before the reload: decided against the routes it was accepted with.
    waiting.write_all(b"H-2.0-x\r\n").unwrap();
    waiting.shutdown(Shutdown::Write).unwrap();
    let (greeting, _) = net::read_exact_within(&mut waiting, 4, Duration::from_secs(10));
    assert_eq!(greeting, b"old ");
    assert_eq!(old_got.recv_timeout(Duration::from_secs(10)).unwrap(), b"SSH-2.0-x\r\n");
    // After it: the new routes.
    let mut fresh = fwd.connect();
    fresh.write_all(b"SSH-2.0-y\r\n").unwrap();
    fresh.shutdown(Shutdown::Write).unwrap();
    let (greeting, _) = net::read_exact_within(&mut fresh, 4, Duration::from_secs(10));
    assert_eq!(greeting, b"new ");
    assert_eq!(new_got.recv_timeout(Duration::from_secs(10)).unwrap(), b"SSH-2.0-y\r\n");
}

#[test]
fn check_config_prints_each_listener_with_its_routes_in_order() {
    let dir = TempDir::new("route-check");
    let file = dir.join("r.config");
    std::fs::write(
        &file,
        "443 -> 127.0.0.1:22 when=ssh max_connections=9\n8 -> 127.0.0.1:8\n443 -> 127.0.0.1:9443 when=tls\n",
    )
    .unwrap();
    let out = Command::new(BIN).arg("--check-config").arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "[::]:443 -> 127.0.0.1:22 max_connections=9 when=ssh\n\
         [::]:443 -> 127.0.0.1:9443 max_connections=9 when=tls\n\
         [::]:8 -> 127.0.0.1:8\n"
    );
    std::fs::write(&file, "443 -> 127.0.0.1:22 when=ssh dispatch=accept\n").unwrap();
    let out = Command::new(BIN).arg("--check-config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!("portfwd: {}:1:21: routes (when=", file.display())),
        "{err}"
    );
}
