//! The PROXY protocol: portfwd sending v1 and v2 headers to a real nginx, accepting haproxy's
//! v2 header in a chain haproxy → portfwd → nginx, and every kind of bad header refused while
//! the forwarder goes on. nginx and haproxy run with their own configuration in a temporary
//! directory, on ports picked by the kernel; the tests that need them skip when they are missing.

use crate::util::*;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const NGINX: &str = "/usr/sbin/nginx";
const HAPROXY: &str = "/usr/sbin/haproxy";

/// A server process of a test, with its port and its directory.
struct Server {
    _process: KillOnDrop,
    port: u16,
    dir: TempDir,
}

/// Starts `program` with a configuration made for a fresh port (retried when the port was taken
/// meanwhile); waits until the port accepts connections.
fn start_server(
    tag: &str,
    program: &str,
    config: impl Fn(u16, &Path) -> (String, Vec<String>),
) -> Result<Server, String> {
    retry_ports(|| {
        let dir = TempDir::new(tag);
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let port = free_port();
        let (text, args) = config(port, dir.path());
        std::fs::write(dir.join("server.conf"), text).unwrap();
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let child = Command::new(program)
            .args(&args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{program}: {e}"))?;
        let mut process = KillOnDrop(child);
        let up = wait_until(Duration::from_secs(10), || {
            TcpStream::connect(local(port)).is_ok() || process.0.try_wait().unwrap().is_some()
        });
        let text = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        if up && process.0.try_wait().unwrap().is_none() {
            return Ok(Server {
                _process: process,
                port,
                dir,
            });
        }
        Err(format!("{program} did not start: {text}"))
    })
}

/// nginx answering every HTTP request, on a `listen ... proxy_protocol` port, with the addresses
/// the PROXY header gave it.
fn nginx() -> Option<Server> {
    if !Path::new(NGINX).exists() {
        skip(format!("{NGINX} is not installed"));
        return None;
    }
    let server = start_server("nginx", NGINX, |port, dir| {
        let text = format!(
            "worker_processes 1;\n\
             master_process off;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path tmp/body; proxy_temp_path tmp/proxy; fastcgi_temp_path tmp/fastcgi;\n\
               uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;\n\
               server {{\n\
                 listen 127.0.0.1:{port} proxy_protocol;\n\
                 location / {{ return 200 \"client=$proxy_protocol_addr:$proxy_protocol_port \
                   destination=$proxy_protocol_server_addr:$proxy_protocol_server_port\\n\"; }}\n\
               }}\n\
             }}\n"
        );
        let args = [
            "-p",
            &format!("{}/", dir.display()),
            "-c",
            "server.conf",
            "-g",
            "daemon off; pid tmp/nginx.pid; error_log stderr;",
        ];
        (text, args.map(String::from).to_vec())
    });
    server.map_err(|e| panic!("{e}")).ok()
}

/// haproxy in TCP mode in front of 127.0.0.1:`to`, sending a v2 header.
fn haproxy(to: u16) -> Option<Server> {
    if !Path::new(HAPROXY).exists() {
        skip(format!("{HAPROXY} is not installed"));
        return None;
    }
    let server = start_server("haproxy", HAPROXY, |port, _| {
        let text = format!(
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
             backend be\n  server s1 127.0.0.1:{to} send-proxy-v2\n"
        );
        (text, ["-db", "-f", "server.conf"].map(String::from).to_vec())
    });
    server.map_err(|e| panic!("{e}")).ok()
}

/// An HTTP request from `from` to 127.0.0.1:`port`; the whole response.
fn http_get(from: IpAddr, port: u16) -> String {
    let mut s = connect_from(from, local(port)).expect("connect");
    s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let (body, end) = read_to_end_or_err(&mut s);
    assert!(end.is_ok(), "{end:?}");
    String::from_utf8_lossy(&body).into_owned()
}

#[test]
fn nginx_reads_the_client_address_from_portfwds_v1_and_v2_headers() {
    let Some(nginx) = nginx() else { return };
    for version in ["v1", "v2"] {
        let fwd = Forwarder::start(BIN, &["--proxy-protocol", version], "127.0.0.1", nginx.port);
        for host in [5u8, 6] {
            let client = IpAddr::V4(Ipv4Addr::new(127, 0, 0, host));
            let response = http_get(client, fwd.port);
            let expected = format!("client=127.0.0.{host}:");
            assert!(
                response.contains(&expected),
                "{version}: {response}\n{}",
                fwd.log_text()
            );
            let destination = format!("destination=127.0.0.1:{}\n", fwd.port);
            assert!(response.contains(&destination), "{version}: {response}");
        }
        // With dispatch=accept too: the header still goes first.
        let fwd = Forwarder::start(
            BIN,
            &["--proxy-protocol", version, "--dispatch", "accept"],
            "127.0.0.1",
            nginx.port,
        );
        let response = http_get(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 8)), fwd.port);
        assert!(response.contains("client=127.0.0.8:"), "{version}: {response}");
    }
    drop(nginx.dir);
}

#[test]
fn haproxy_to_portfwd_to_nginx_shows_the_original_client() {
    let Some(nginx) = nginx() else { return };
    let fwd = Forwarder::start(
        BIN,
        &["--accept-proxy", "--proxy-from", "127.0.0.1", "--proxy-protocol", "v1"],
        "127.0.0.1",
        nginx.port,
    );
    let Some(haproxy) = haproxy(fwd.port) else { return };
    let response = http_get(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7)), haproxy.port);
    assert!(response.contains("client=127.0.0.7:"), "{response}\n{}", fwd.log_text());
    // The destination haproxy's header carried (its own port), passed on as it came.
    let destination = format!("destination=127.0.0.1:{}\n", haproxy.port);
    assert!(response.contains(&destination), "{response}");
    assert!(
        fwd.wait_log_count("client=127.0.0.7:", 1, Duration::from_secs(5)),
        "{}",
        fwd.log_text()
    );
    let line = fwd
        .log_text()
        .lines()
        .find(|l| l.contains("client=127.0.0.7:"))
        .unwrap()
        .to_string();
    assert!(line.contains(" via=") && line.contains("outcome=closed"), "{line}");
}

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 PROXY header for a TCP/IPv4 client `src`:`sport` that connected to `dst`:`dport`.
fn v2_header(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h
}

/// Sends `bytes` (then a FIN when `fin`) and expects the forwarder to reset the connection and
/// log `expected`.
fn refused(fwd: &Forwarder, bytes: &[u8], fin: bool, expected: &str) {
    let before = fwd.count_lines(expected);
    let mut s = fwd.connect();
    // A client refused at once may see the reset already when it writes.
    let _ = s.write_all(bytes);
    if fin {
        let _ = s.shutdown(Shutdown::Write);
    }
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 64];
    let got = s.read(&mut buf);
    assert!(!matches!(got, Ok(n) if n > 0), "{expected}: data came back");
    assert!(
        fwd.wait_log_count(expected, before + 1, Duration::from_secs(10)),
        "{expected}\n{}",
        fwd.log_text()
    );
}

/// One good connection: a header for `client`, then data echoed back without the header.
fn served(fwd: &Forwarder, client: [u8; 4], sport: u16) {
    let mut s = fwd.connect();
    let mut bytes = v2_header(client, sport, [127, 0, 0, 1], fwd.port);
    bytes.extend_from_slice(b"hello");
    s.write_all(&bytes).unwrap();
    let mut got = [0u8; 5];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello", "the header is not passed on");
}

#[test]
fn bad_headers_of_every_kind_are_refused_and_the_forwarder_goes_on() {
    let backend = Backend::start(echo);
    let fwd = Forwarder::start(
        BIN,
        &[
            "--accept-proxy",
            "--proxy-from",
            "127.0.0.0/8",
            "--first-byte-timeout",
            "1",
        ],
        "127.0.0.1",
        backend.port,
    );
    let reason = "outcome=refused reason=proxy-header problem=";
    refused(&fwd, b"GET / HTTP/1.0\r\n\r\n", false, &format!("{reason}missing"));
    refused(&fwd, b"", true, &format!("{reason}missing"));
    refused(
        &fwd,
        b"PROXY TCP4 1.2.3.4 5.6.7.8 80 99999\r\n",
        false,
        &format!("{reason}malformed detail=\"malformed v1 port\""),
    );
    refused(&fwd, b"PROXY TCP4 1.2.3.4 ", true, &format!("{reason}truncated"));
    let mut oversized = V2_SIGNATURE.to_vec();
    oversized.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    refused(&fwd, &oversized, false, &format!("{reason}oversized"));
    let mut local = V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    refused(&fwd, &local, false, &format!("{reason}local-command"));
    refused(&fwd, b"PROXY UNKNOWN\r\n", false, &format!("{reason}no-address"));
    refused(&fwd, b"PROXY TCP4 1.2", false, &format!("{reason}timeout"));
    // And through it all, good ones are served, named by the address their header carried.
    served(&fwd, [10, 1, 2, 3], 4444);
    assert!(
        fwd.wait_log_count("client=10.1.2.3:4444 ", 1, Duration::from_secs(5)),
        "{}",
        fwd.log_text()
    );
    let line = fwd
        .log_text()
        .lines()
        .find(|l| l.contains("client=10.1.2.3:4444"))
        .unwrap()
        .to_string();
    assert!(line.contains(" via=") && line.contains("c2s=5 s2c=5"), "{line}");
}

#[test]
fn a_header_from_outside_proxy_from_is_refused() {
    let backend = Backend::start(echo);
    let fwd = Forwarder::start(
        BIN,
        &["--accept-proxy", "--proxy-from", "10.0.0.0/8"],
        "127.0.0.1",
        backend.port,
    );
    let header = v2_header([10, 1, 2, 3], 1, [127, 0, 0, 1], fwd.port);
    refused(&fwd, &header, false, "outcome=refused reason=proxy-not-allowed");
}

#[test]
fn access_rules_and_per_source_limits_apply_to_the_carried_address() {
    let backend = Backend::start(echo);
    let fwd = Forwarder::start(
        BIN,
        &[
            "--accept-proxy",
            "--proxy-from",
            "127.0.0.1",
            "--deny",
            "10.9.9.9",
            "--max-per-source",
            "1",
        ],
        "127.0.0.1",
        backend.port,
    );
    let denied = v2_header([10, 9, 9, 9], 1, [127, 0, 0, 1], fwd.port);
    refused(&fwd, &denied, false, "client=10.9.9.9:1 listen=");
    assert!(fwd.log_text().contains("reason=access-denied"), "{}", fwd.log_text());
    // One connection held open for 10.1.1.1: a second one from it is refused, others are not
    // (all of them come from 127.0.0.1, the proxy).
    let mut held = fwd.connect();
    let mut first = v2_header([10, 1, 1, 1], 1, [127, 0, 0, 1], fwd.port);
    first.extend_from_slice(b"ping");
    held.write_all(&first).unwrap();
    let mut got = [0u8; 4];
    held.read_exact(&mut got).unwrap();
    let second = v2_header([10, 1, 1, 1], 2, [127, 0, 0, 1], fwd.port);
    refused(&fwd, &second, false, "client=10.1.1.1:2 listen=");
    assert!(fwd.log_text().contains("reason=max-per-source"), "{}", fwd.log_text());
    served(&fwd, [10, 1, 1, 2], 3);
    drop(held);
}

#[test]
fn with_dispatch_accept_a_server_that_speaks_first_is_reached_after_the_header() {
    let backend = Backend::start(|mut s: TcpStream| {
        let _ = s.write_all(b"220 ready\r\n");
        echo(s);
    });
    let fwd = Forwarder::start(
        BIN,
        &["--accept-proxy", "--proxy-from", "127.0.0.1", "--dispatch", "accept"],
        "127.0.0.1",
        backend.port,
    );
    let mut s = fwd.connect();
    s.write_all(&v2_header([10, 2, 2, 2], 25, [127, 0, 0, 1], fwd.port))
        .unwrap();
    let mut greeting = [0u8; 11];
    s.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"220 ready\r\n");
    round_trip(&mut s, b"HELO x\r\n");
    drop(s);
    assert!(
        fwd.wait_log_count("client=10.2.2.2:25 ", 1, Duration::from_secs(5)),
        "{}",
        fwd.log_text()
    );
}

/// A backend that reads the client's bytes up to a newline, then answers `name` and closes.
fn answers(name: &'static str) -> Backend {
    Backend::start(move |mut s: TcpStream| {
        let mut b = [0u8; 1];
        while s.read_exact(&mut b).is_ok() && b[0] != b'\n' {}
        let _ = s.write_all(name.as_bytes());
    })
}

#[test]
fn on_a_routed_listener_the_header_comes_off_first_and_each_route_has_its_backends() {
    // Route ssh: a dead backend, then S (failover); route any: O. The header is read before the
    // route is chosen, so `prefix:SSH-` sees the client's own first bytes.
    let s = answers("S");
    let o = answers("O");
    let dead = free_port();
    let dir = TempDir::new("proxy-routes");
    let file = dir.join("routes.config");
    let fwd = retry_ports(|| {
        let port = free_port();
        let text = format!(
            "{port} -> 127.0.0.1:{dead}, 127.0.0.1:{} when=prefix:SSH- accept_proxy=on\n\
             {port} -> 127.0.0.1:{} proxy_from=127.0.0.0/8\n",
            s.port, o.port
        );
        std::fs::write(&file, text).unwrap();
        Forwarder::spawn(BIN, &["--config".into(), file.display().to_string()], port)
    })
    .unwrap_or_else(|e| panic!("portfwd did not start: {e}"));
    let ask = |client: [u8; 4], sport: u16, first: &[u8]| {
        let mut c = fwd.connect();
        let mut bytes = v2_header(client, sport, [127, 0, 0, 1], fwd.port);
        bytes.extend_from_slice(first);
        c.write_all(&bytes).unwrap();
        let (got, end) = read_to_end_or_err(&mut c);
        assert!(end.is_ok(), "{end:?}\n{}", fwd.log_text());
        String::from_utf8(got).unwrap()
    };
    assert_eq!(ask([10, 1, 2, 3], 4444, b"SSH-2.0-test\r\n"), "S");
    assert_eq!(ask([10, 1, 2, 4], 5555, b"GET / HTTP/1.0\r\n"), "O");
    assert_eq!(ask([10, 1, 2, 5], 6666, b"SSH-2.0-test\r\n"), "S");
    let line = |client: &str| {
        assert!(
            fwd.wait_log_count(client, 1, Duration::from_secs(10)),
            "{}",
            fwd.log_text()
        );
        fwd.log_text().lines().find(|l| l.contains(client)).unwrap().to_string()
    };
    let first = line("client=10.1.2.3:4444 ");
    assert!(
        first.contains(" via=[::ffff:127.0.0.1]:")
            && first.contains(" route=prefix:SSH- ")
            && first.contains(&format!(
                " target=127.0.0.1:{} failed=127.0.0.1:{dead}/ECONNREFUSED ",
                s.port
            )),
        "{first}"
    );
    let other = line("client=10.1.2.4:5555 ");
    assert!(
        other.contains(" route=any ") && other.contains(&format!(" target=127.0.0.1:{} ", o.port)),
        "{other}"
    );
    // The dead backend is the ssh route's, marked down after its first failure: the second ssh
    // client went straight to S.
    let down = format!(
        "event=backend-down listen=[::]:{} route=prefix:SSH- backend=127.0.0.1:{dead} failures=1 ",
        fwd.port
    );
    assert_eq!(fwd.count_lines(&down), 1, "{}", fwd.log_text());
    let third = line("client=10.1.2.5:6666 ");
    assert!(!third.contains(" failed="), "{third}");
    fwd.stats();
    for (route, port, served) in [("prefix:SSH-", s.port, 2), ("any", o.port, 1)] {
        let stats = format!(
            "event=stats-backend listen=[::]:{} route={route} backend=127.0.0.1:{port} state=up served={served} ",
            fwd.port
        );
        assert!(
            fwd.wait_log_count(&stats, 1, Duration::from_secs(5)),
            "{stats}\n{}",
            fwd.log_text()
        );
    }
}
