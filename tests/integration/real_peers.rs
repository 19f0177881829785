//! Real programs on both ends: curl against Python's HTTP server, an SMTP dialogue with Python's
//! smtpd (a server that speaks first), and a couple of thousand clients held open at once.

use crate::util::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Starts a Python server that binds port 0 itself and prints the port the kernel gave it on its
/// first line of output (so no other test can take the port between choosing and binding it).
/// Returns the process and the port, once the server is listening.
fn python_server(script: &str) -> (KillOnDrop, u16) {
    let mut child = Command::new("python3")
        .args(["-u", "-W", "ignore", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let stdout = child.stdout.take().unwrap();
    let p = KillOnDrop(child);
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        // The first line is the port; the rest (smtpd prints each message) is read and dropped, so
        // the server never writes into a closed pipe.
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next().and_then(Result::ok).unwrap_or_default());
        lines.for_each(drop);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("python server did not come up");
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("python server said {line:?}"));
    (p, port)
}

#[test]
fn curl_through_the_forwarder_to_a_real_http_server() {
    if !have("curl") || !have("python3") {
        panic!("curl and python3 are needed (.ci/run installs them)");
    }
    let dir = TempDir::new("http");
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("blob.bin"), &body).unwrap();
    let script = format!(
        "import functools, http.server\n\
         h = functools.partial(http.server.SimpleHTTPRequestHandler, directory={dir:?})\n\
         s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), h)\n\
         print(s.server_address[1])\n\
         s.serve_forever()\n",
        dir = dir.path().to_str().unwrap()
    );
    let (_http, port) = python_server(&script);
    let fwd = Forwarder::start(BIN, &[], "127.0.0.1", port);
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
}

#[test]
fn smtp_dialogue_with_a_real_server_that_speaks_first() {
    let (_smtp, port) = python_server(
        "import asyncore, smtpd\n\
         s = smtpd.DebuggingServer(('127.0.0.1', 0), None)\n\
         print(s.socket.getsockname()[1])\n\
         asyncore.loop()\n",
    );
    let fwd = Forwarder::start(BIN, &["--dispatch", "accept"], "127.0.0.1", port);
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
    let _turn = serial();
    // Each client and its inward connection end here; the forwarder hands every one off.
    if let Err(why) = need_descriptors(2 * n as u64 + 300) {
        return skip(why);
    }
    let backend = Backend::start(echo);
    // All from 127.0.0.1: beyond the default max_per_source (256).
    let fwd = Forwarder::start(BIN, &["--max-per-source", "off"], "127.0.0.1", backend.port);
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
