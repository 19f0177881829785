//! The log: a reader that stalls never stops the forwarder (lines are dropped and counted), lines
//! are stamped when written (in time order), syslog, JSON, `SIGUSR2` reopening, and the live view
//! of `--status`.

use crate::util::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Everything readable now from a non-blocking pipe.
fn read_available(reader: &mut std::fs::File, into: &mut String) {
    let mut buf = [0u8; 65536];
    while let Ok(n) = reader.read(&mut buf) {
        if n == 0 {
            break;
        }
        into.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

fn set_nonblocking(fd: i32) {
    // SAFETY: fcntl on a descriptor this test owns.
    unsafe { libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK) };
}

/// Kills a child the test started, by pid, with the processes it forked.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let kids = descendants(self.0.id());
        let _ = self.0.kill();
        let _ = self.0.wait();
        for pid in kids {
            // SAFETY: processes this test's forwarder forked.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

#[test]
fn a_log_pipe_nobody_reads_stops_nothing_and_the_dropped_lines_are_counted() {
    let backend = Backend::start(echo);
    let (reader, writer) = std::io::pipe().unwrap();
    // One page: the pipe is full after a few lines.
    // SAFETY: fcntl on a pipe this test made.
    unsafe { libc::fcntl(writer.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    let port = free_port();
    let child = Command::new(BIN)
        .args(["-v", "--max-connections", "2", "--bind", "127.0.0.1"])
        .args([port.to_string(), "127.0.0.1".into(), backend.port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(OwnedFd::from(writer.try_clone().unwrap()))
        .spawn()
        .unwrap();
    let fwd = Killed(child);
    let pid = fwd.0.id();
    let mut reader = std::fs::File::from(OwnedFd::from(reader));
    set_nonblocking(reader.as_raw_fd());
    let mut log = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            read_available(&mut reader, &mut log);
            log.contains("event=listening")
        }),
        "{log}"
    );
    // Fill the pipe through a description of the test's own (non-blocking), so the forwarder's
    // own way of writing is what is tested, and read no more.
    let mut filler = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags_nonblocking()
        .open(format!("/proc/self/fd/{}", writer.as_raw_fd()))
        .unwrap();
    while filler.write(b"filler line\n").is_ok() {}

    // More connections than the cap of 2: each must end (its process gone, its slot free) though
    // its log line cannot be written, or the third would wait in the backlog forever.
    for i in 0..6 {
        let msg = format!("ping {i}");
        assert_eq!(
            exchange(port, msg.as_bytes()).unwrap_or_else(|e| panic!("connection {i}: {e}")),
            msg.as_bytes()
        );
    }
    assert!(
        wait_until(Duration::from_secs(10), || descendants(pid).is_empty()),
        "connection processes left: {:?}",
        descendants(pid)
    );
    // SAFETY: the forwarder this test started.
    unsafe { libc::kill(pid as i32, libc::SIGUSR1) }; // its stats line is dropped too
    assert_eq!(exchange(port, b"still accepting").unwrap(), b"still accepting");

    // Drained, the log works again, and the stats line counts what was dropped.
    let mut rest = String::new();
    read_available(&mut reader, &mut rest);
    let mut stats = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            // SAFETY: as above.
            unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
            read_available(&mut reader, &mut rest);
            stats = rest
                .lines()
                .find(|l| l.contains("event=stats live="))
                .map(str::to_string);
            stats.is_some()
        }),
        "{rest}"
    );
    let stats = stats.unwrap();
    assert!(field(&stats, "log_dropped") >= 6, "{stats}");
}

/// `OpenOptions` with `O_NONBLOCK`.
trait Nonblocking {
    fn custom_flags_nonblocking(&mut self) -> &mut Self;
}

impl Nonblocking for std::fs::OpenOptions {
    fn custom_flags_nonblocking(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK)
    }
}

/// The `ts=` of a log line (ISO 8601 in UTC, so they compare as text).
fn ts(line: &str) -> &str {
    line.split(' ')
        .find_map(|w| w.strip_prefix("ts="))
        .unwrap_or_else(|| panic!("no ts in {line}"))
}

#[test]
fn a_connection_line_is_stamped_at_its_end_in_time_order() {
    let backend = Backend::start(echo);
    let fwd = Forwarder::start(BIN, &["--bind", "127.0.0.1"], "127.0.0.1", backend.port);
    let mut c = fwd.connect();
    round_trip(&mut c, b"held");
    // A line written while the connection is open...
    let stats = fwd.stats();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let _ = c.read_to_end(&mut Vec::new());
    assert!(fwd.wait_log_count("outcome=closed", 1, Duration::from_secs(5)));
    let log = fwd.log_text();
    let line = log.lines().find(|l| l.contains("outcome=closed")).unwrap();
    // ... comes before the connection's own line, in the log and in time.
    assert!(ts(&stats) <= ts(line), "{stats}\n{line}");
    let at = |needle: &str| log.find(needle).unwrap();
    assert!(at("event=stats live=") < at("outcome=closed"), "{log}");
    assert!(field(line, "ms") > 0, "{line}");
}

#[test]
fn every_line_is_logfmt_and_json_has_the_same_keys() {
    let backend = Backend::start(echo);
    let fwd = Forwarder::start(
        BIN,
        &["-v", "--bind", "127.0.0.1", "--first-byte-timeout", "1"],
        "127.0.0.1",
        backend.port,
    );
    assert_eq!(exchange(fwd.port, b"x").unwrap(), b"x");
    let silent = fwd.connect();
    assert!(fwd.wait_log_count("event=first-byte-timeout", 1, Duration::from_secs(5)));
    drop(silent);
    let _ = fwd.stats();
    for line in fwd.log.lock().unwrap().iter() {
        let (_, body) = line.split_once("]: ").unwrap_or_else(|| panic!("{line}"));
        assert!(body.split(' ').next().unwrap().contains('='), "not key=value: {line}");
        // Each word outside quotes is key=value.
        let mut quoted = false;
        for word in body.split(' ') {
            if !quoted {
                assert!(word.contains('='), "not key=value: {word:?} in {line}");
            }
            quoted ^= word.matches('"').count() - word.matches("\\\"").count() == 1;
        }
    }

    let json = Forwarder::start(
        BIN,
        &["--log-format", "json", "--bind", "127.0.0.1"],
        "127.0.0.1",
        backend.port,
    );
    assert_eq!(exchange(json.port, b"xy").unwrap(), b"xy");
    assert!(json.wait_log_count("\"outcome\":\"closed\"", 1, Duration::from_secs(5)));
    let log = json.log_text();
    for line in log.lines() {
        assert!(line.starts_with("{\"ts\":\"") && line.ends_with('}'), "{line}");
    }
    let line = log.lines().find(|l| l.contains("\"outcome\"")).unwrap();
    assert!(
        line.contains("\"c2s\":2,\"s2c\":2,") && line.contains(&format!("\"listen\":{}", json.port)),
        "{line}"
    );
    assert!(log.contains("\"event\":\"listening\""), "{log}");
}

#[test]
fn a_daemon_logs_to_syslog_by_default_and_says_so() {
    let backend = Backend::start(echo);
    let dir = TempDir::new("syslog");
    let socket_path = dir.join("log.sock");
    let syslog = UnixDatagram::bind(&socket_path).unwrap();
    syslog.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let pid_file = dir.join("p.pid");
    let port = free_port();
    let out = Command::new(BIN)
        .env("PORTFWD_SYSLOG_SOCKET", &socket_path)
        .args(["--daemonize", "--bind", "127.0.0.1", "--pid-file"])
        .arg(&pid_file)
        .args([port.to_string(), "127.0.0.1".into(), backend.port.to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{err}");
    let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    let _guard = Daemon(pid);
    assert_eq!(
        err.trim_end(),
        format!(
            "portfwd: running in the background as pid {pid}; log: syslog ({})",
            socket_path.display()
        )
    );
    assert_eq!(exchange(port, b"to syslog").unwrap(), b"to syslog");
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while !got.iter().any(|d: &String| d.contains("outcome=closed")) {
        let n = syslog.recv(&mut buf).unwrap_or_else(|e| panic!("{e}; got {got:?}"));
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    // RFC 3164 as syslog(3) writes it: <PRI>Mmm dd hh:mm:ss TAG[PID]: MSG, one datagram a line.
    let header = |d: &str| -> (u32, String) {
        let rest = d.strip_prefix("<30>").unwrap_or_else(|| panic!("{d}"));
        let (time, rest) = rest.split_at(15);
        assert_eq!(time.as_bytes()[3], b' ', "{d}");
        assert_eq!(&time[6..7], " ", "{d}");
        assert_eq!(time.matches(':').count(), 2, "{d}");
        let rest = rest.strip_prefix(" portfwd[").unwrap_or_else(|| panic!("{d}"));
        let (pid, msg) = rest.split_once("]: ").unwrap();
        assert!(!msg.ends_with('\n'), "{d:?}");
        (pid.parse().unwrap(), msg.to_string())
    };
    let listening = got
        .iter()
        .find(|d| d.contains("event=listening"))
        .expect("start-up line");
    let (from, msg) = header(listening);
    assert_eq!(from, pid);
    assert!(
        msg.starts_with("ts=") && msg.contains(&format!("listen=127.0.0.1:{port}")),
        "{msg}"
    );
    let closed = got.iter().find(|d| d.contains("outcome=closed")).unwrap();
    let (from, msg) = header(closed);
    assert_ne!(from, pid, "written by the connection process");
    assert!(msg.contains("client=127.0.0.1:"), "{msg}");
    // SAFETY: the daemon this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(wait_until(Duration::from_secs(5), || !alive(pid)));
}

/// Kills a daemon the test started, by pid.
struct Daemon(u32);

impl Drop for Daemon {
    fn drop(&mut self) {
        if alive(self.0) {
            // SAFETY: a daemon this test started (its pid came from our pid file).
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}

#[test]
fn sigusr2_reopens_the_log_without_applying_config_edits() {
    let backend = Backend::start(echo);
    let dir = TempDir::new("usr2");
    let (config, log) = (dir.join("p.config"), dir.join("p.log"));
    let (kept, added) = (free_port(), free_port());
    std::fs::write(&config, format!("127.0.0.1:{kept} -> 127.0.0.1:{}\n", backend.port)).unwrap();
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("--log-file")
        .arg(&log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let fwd = Killed(child);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(5), || read().contains("event=listening")));
    std::fs::write(
        &config,
        format!(
            "127.0.0.1:{kept} -> 127.0.0.1:{0}\n127.0.0.1:{added} -> 127.0.0.1:{0}\n",
            backend.port
        ),
    )
    .unwrap();
    std::fs::rename(&log, dir.join("p.log.1")).unwrap();
    // SAFETY: the forwarder this test started.
    unsafe { libc::kill(fwd.0.id() as i32, libc::SIGUSR2) };
    assert!(wait_until(Duration::from_secs(5), || read().contains("event=log-reopened")));
    assert_eq!(exchange(kept, b"rotated").unwrap(), b"rotated");
    assert!(wait_until(Duration::from_secs(5), || read().contains("outcome=closed")));
    assert!(refused(added), "the edit is not applied by SIGUSR2");
    assert!(!read().contains("event=reload"), "{}", read());
    // SIGHUP applies it (and reopens too).
    // SAFETY: as above.
    unsafe { libc::kill(fwd.0.id() as i32, libc::SIGHUP) };
    assert!(wait_until(Duration::from_secs(5), || read().contains("event=reload-done added=1")));
    assert_eq!(exchange(added, b"now").unwrap(), b"now");
}

#[test]
fn status_shows_live_connections_and_each_mapping() {
    let backend = Backend::start(echo);
    let dir = TempDir::new("status");
    let pid_file = dir.join("p.pid");
    let fwd = Forwarder::start(
        BIN,
        &["--bind", "127.0.0.1", "--pid-file", pid_file.to_str().unwrap()],
        "127.0.0.1",
        backend.port,
    );
    assert!(wait_until(Duration::from_secs(5), || pid_file.exists()));
    let mut forwarding = fwd.connect();
    round_trip(&mut forwarding, b"open");
    let waiting: TcpStream = fwd.connect();
    assert!(wait_until(Duration::from_secs(5), || field(&fwd.stats(), "waiting") == 1));
    let out = Command::new(BIN).arg("--status").arg(&pid_file).output().unwrap();
    let view = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{view}{}", String::from_utf8_lossy(&out.stderr));
    let first = view.lines().next().unwrap();
    assert!(first.starts_with("event=status snapshot="), "{view}");
    assert_eq!((field(first, "live"), field(first, "waiting")), (1, 1), "{view}");
    let mapping = format!(
        "event=mapping listen=127.0.0.1:{} target=127.0.0.1:{} live=1 waiting=1 accepted=2",
        fwd.port, backend.port
    );
    assert!(view.contains(&mapping), "{view}");
    let conn_pid = *procs::children(fwd.pid()).first().expect("a connection process");
    let forwarding_line = format!(
        "client={} listen=127.0.0.1:{} target=127.0.0.1:{} state=forwarding pid={conn_pid} age_ms=",
        forwarding.local_addr().unwrap(),
        fwd.port,
        backend.port
    );
    assert!(view.contains(&forwarding_line), "{view}");
    let waiting_line = format!("client={} listen=127.0.0.1:{}", waiting.local_addr().unwrap(), fwd.port);
    assert!(
        view.lines()
            .any(|l| l.contains(&waiting_line) && l.contains("state=waiting")),
        "{view}"
    );
    // The stats lines have the same figures, one line per mapping after the process's.
    let mapping_stats = format!("event=stats-mapping listen=127.0.0.1:{} ", fwd.port);
    assert!(
        fwd.wait_log_count(&mapping_stats, 1, Duration::from_secs(5)),
        "{}",
        fwd.log_text()
    );
    // A second --status gets a new view.
    let again = Command::new(BIN).arg("--status").arg(&pid_file).output().unwrap();
    let again = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(field(again.lines().next().unwrap(), "snapshot") > field(first, "snapshot"));
}
