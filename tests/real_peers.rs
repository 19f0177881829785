//! Real programs on both ends: curl against Python's HTTP server, an SMTP dialogue with Python's
//! smtpd (a server that speaks first), and a couple of thousand clients held open at once.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

/// A helper process started by a test, killed by pid when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Starts a Python server on a kernel-chosen port; returns it once it accepts connections.
fn python_server(args: &[&str], port: u16) -> Proc {
    let child = Command::new("python3")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let p = Proc(child);
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", port))
            .is_ok()),
        "python server on {port} did not come up"
    );
    p
}

#[test]
fn curl_through_the_forwarder_to_a_real_http_server() {
    if !have("curl") || !have("python3") {
        panic!("curl and python3 are needed (.ci/run installs them)");
    }
    let dir = std::env::temp_dir().join(format!("portfwd-http-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("blob.bin"), &body).unwrap();
    let port = free_port();
    let _http = python_server(
        &[
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            dir.to_str().unwrap(),
            &port.to_string(),
        ],
        port,
    );
    let fwd = Forwarder::start(&[], "127.0.0.1", port);
    let out = dir.join("got.bin");
    let status = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "20", "-o", out.to_str().unwrap()])
        .arg(format!("http://127.0.0.1:{}/blob.bin", fwd.port))
        .status()
        .unwrap();
    assert!(status.success());
    assert!(std::fs::read(&out).unwrap() == body);
    let missing = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20"])
        .arg(format!("http://[::1]:{}/missing", fwd.port))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&missing.stdout), "404");
    assert!(
        fwd.wait_log_count("outcome=closed", 2, Duration::from_secs(5)),
        "{}",
        fwd.log_text()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn smtp_dialogue_with_a_real_server_that_speaks_first() {
    let port = free_port();
    let _smtp = python_server(
        &[
            "-W",
            "ignore",
            "-m",
            "smtpd",
            "-n",
            "-c",
            "DebuggingServer",
            &format!("127.0.0.1:{port}"),
        ],
        port,
    );
    let fwd = Forwarder::start(&["--dispatch", "accept"], "127.0.0.1", port);
    let s = fwd.connect();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut line = String::new();
    if let Err(e) = r.read_line(&mut line) {
        thread::sleep(Duration::from_millis(200)); // let the connection's log line arrive
        panic!("banner: {e}; forwarder log:\n{}", fwd.log_text());
    }
    assert!(line.starts_with("220 "), "banner: {line}");
    let mut say = |cmd: &str, code: &str| {
        w.write_all(cmd.as_bytes()).unwrap();
        loop {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            assert!(l.starts_with(code), "{cmd:?} -> {l:?}");
            if l.as_bytes().get(3) == Some(&b' ') {
                break;
            }
        }
    };
    say("EHLO portfwd.test\r\n", "250");
    say("MAIL FROM:<a@portfwd.test>\r\n", "250");
    say("RCPT TO:<b@portfwd.test>\r\n", "250");
    say("DATA\r\n", "354");
    say("Subject: hi\r\n\r\nthrough the forwarder\r\n.\r\n", "250");
    say("QUIT\r\n", "221");
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap(); // the server's FIN, passed on
    // The connection ends when the client closes its side too.
    drop(w);
    drop(r);
    assert!(
        fwd.wait_log_count("outcome=closed", 1, Duration::from_secs(5)),
        "{}",
        fwd.log_text()
    );
}

#[test]
fn two_thousand_clients_held_open_at_once() {
    let n = 2000;
    let backend = Backend::start(echo);
    let fwd = Forwarder::start(&[], "127.0.0.1", backend.port);
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = TcpStream::connect(fwd.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c.write_all(format!("client {i:05}\n").as_bytes()).unwrap();
        clients.push(c);
    }
    // Every connection is live at the same time: two pumps each.
    assert!(
        wait_until(Duration::from_secs(60), || fwd.descendants().len() == 2 * n),
        "{} processes",
        fwd.descendants().len()
    );
    for (i, c) in clients.iter_mut().enumerate() {
        let mut buf = [0u8; 13];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, format!("client {i:05}\n").as_bytes());
        c.shutdown(Shutdown::Write).unwrap();
    }
    for c in clients.iter_mut() {
        assert!(read_to_end_or_err(c).0.is_empty());
    }
    drop(clients);
    assert!(fwd.wait_log_count("outcome=closed", n, Duration::from_secs(60)));
    assert!(
        wait_until(Duration::from_secs(30), || fwd.descendants().is_empty()),
        "processes left over"
    );
}
