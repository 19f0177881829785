//! Running portfwd for real: `--check-config`, `--config` with many mappings in one process,
//! `--daemonize` with pid and log files, and the signals (TERM, QUIT, HUP, USR1).

use crate::util::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn check_config_prints_canonical_mappings() {
    let dir = TempDir::new("check-ok");
    let file = dir.join("ok.config");
    write(
        &file,
        "# two\n7005 -> 127.0.0.1:8005\n127.0.0.1:7006 -> localhost:8006 dispatch=accept idle_timeout=30\n",
    );
    let out = Command::new(BIN).arg("--check-config").arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "[::]:7005 -> 127.0.0.1:8005\n127.0.0.1:7006 -> localhost:8006 dispatch=accept idle_timeout=30\n"
    );
    let shipped = Command::new(BIN)
        .args(["--check-config", concat!(env!("CARGO_MANIFEST_DIR"), "/setup.config")])
        .output()
        .unwrap();
    assert!(shipped.status.success());
    assert_eq!(
        String::from_utf8_lossy(&shipped.stdout),
        "127.0.0.1:7005 -> 127.0.0.1:8005\n127.0.0.1:7006 -> 127.0.0.1:8006\n"
    );
}

#[test]
fn check_config_reports_every_error_located_and_exits_2() {
    let dir = TempDir::new("check-bad");
    let file = dir.join("bad.config");
    write(
        &file,
        "7005 -> 127.0.0.1:8005\nnonsense\n7005 -> 127.0.0.1:9\n  7007 -> h:1 colour=red\n7008 -> no-such-host.invalid:80\n",
    );
    let out = Command::new(BIN).arg("--check-config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let f = file.display();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].starts_with(&format!("portfwd: {f}:2:1: expected 'PORT -> HOST:PORT'")),
        "{err}"
    );
    assert!(
        lines[1].starts_with(&format!("portfwd: {f}:3:1: [::]:7005 is already used by line 1")),
        "{err}"
    );
    assert!(
        lines[2].starts_with(&format!("portfwd: {f}:4:15: unknown option 'colour'")),
        "{err}"
    );
    // Resolution is checked once the file parses.
    write(&file, "7005 -> 127.0.0.1:8005\n7008 ->  no-such-host.invalid:80\n");
    let out = Command::new(BIN).arg("--check-config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "portfwd: {f}:2:10: cannot resolve host 'no-such-host.invalid'"
        )),
        "{err}"
    );
    // A missing file is one line too.
    let out = Command::new(BIN)
        .args(["--check-config", "/nonexistent/portfwd.config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

#[test]
fn one_process_serves_every_mapping_of_a_config() {
    let a = Backend::start(|mut s| {
        let _ = s.write_all(b"A:");
        echo(s)
    });
    let b = Backend::start(|mut s| {
        let _ = s.write_all(b"B:");
        echo(s)
    });
    let dir = TempDir::new("config-two");
    let file = dir.join("two.config");
    let (p1, p2) = (free_port(), free_port());
    write(
        &file,
        &format!(
            "127.0.0.1:{p1} -> 127.0.0.1:{}\n127.0.0.1:{p2} -> 127.0.0.1:{} dispatch=accept\n",
            a.port, b.port
        ),
    );
    let fwd = Forwarder::spawn(BIN, &["--config".into(), file.display().to_string()], p1).expect("start");
    assert!(
        fwd.wait_log_count("event=listening", 2, Duration::from_secs(5)),
        "{}",
        fwd.log_text()
    );
    assert_eq!(exchange(p1, b"one").unwrap(), b"A:one");
    assert_eq!(exchange(p2, b"two").unwrap(), b"B:two");
    assert!(fwd.wait_log_count("outcome=closed", 2, Duration::from_secs(5)));
}

/// Runs `portfwd --daemonize ...`; returns (exit status, stderr, pid from the pid file).
fn daemonize(args: &[String], pid_file: &Path) -> (Option<i32>, String, Option<u32>) {
    let out = Command::new(BIN)
        .arg("--daemonize")
        .arg("--pid-file")
        .arg(pid_file)
        .args(args)
        .output()
        .unwrap();
    let pid = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        pid,
    )
}

/// Kills a daemon the test started, by pid, and waits for it to go.
struct Daemon(u32);

impl Drop for Daemon {
    fn drop(&mut self) {
        if alive(self.0) {
            // SAFETY: a daemon this test started (its pid came from our pid file).
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill on a pid this test started.
    unsafe { libc::kill(pid as i32, sig) };
}

#[test]
fn daemon_returns_once_listening_and_cleans_up_on_sigterm() {
    let backend = Backend::start(echo);
    let dir = TempDir::new("daemon");
    let (pid_file, log_file) = (dir.join("p.pid"), dir.join("p.log"));
    let port = free_port();
    let args: Vec<String> = ["--log-file", log_file.to_str().unwrap(), "--bind", "127.0.0.1"]
        .iter()
        .map(|s| s.to_string())
        .chain([port.to_string(), "127.0.0.1".into(), backend.port.to_string()])
        .collect();
    let (code, err, pid) = daemonize(&args, &pid_file);
    assert_eq!(code, Some(0), "{err}");
    let pid = pid.expect("pid file written");
    let _guard = Daemon(pid);
    // Listening already: no waiting needed.
    assert_eq!(exchange(port, b"now").unwrap(), b"now");
    let daemon = stat(pid).unwrap();
    assert_eq!(daemon.comm, "portfwd");
    assert_ne!(
        daemon.ppid,
        std::process::id(),
        "detached: reparented to init (or a subreaper)"
    );
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(), Path::new("/"));
    for fd in [0, 1] {
        assert_eq!(
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap(),
            Path::new("/dev/null")
        );
    }
    assert!(wait_until(Duration::from_secs(5), || std::fs::read_to_string(
        &log_file
    )
    .unwrap()
    .contains("outcome=closed")));
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(
        log.contains(&format!("event=listening listen=127.0.0.1:{port}")),
        "{log}"
    );
    assert!(log.contains(&format!("pid={pid}")), "{log}");
    // A second daemon on the same port fails loudly, in the foreground.
    let (code, err, _) = daemonize(&args, &dir.join("second.pid"));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("Address already in use") && err.lines().count() == 1,
        "{err}"
    );
    assert!(!dir.join("second.pid").exists());
    // SIGTERM: the port is free at once, the pid file goes.
    signal(pid, libc::SIGTERM);
    assert!(wait_until(Duration::from_secs(5), || !alive(pid)));
    assert!(refused(port));
    assert!(!pid_file.exists(), "pid file removed on a clean exit");
}

#[test]
fn daemon_start_up_errors_reach_the_terminal() {
    let dir = TempDir::new("daemon-err");
    let (code, err, pid) = daemonize(
        &[
            "--log-file".into(),
            "/nonexistent-dir/x.log".into(),
            "7005".into(),
            "127.0.0.1".into(),
            "1".into(),
        ],
        &dir.join("x.pid"),
    );
    assert_eq!(code, Some(2));
    assert!(err.starts_with("portfwd: --log-file /nonexistent-dir/x.log"), "{err}");
    assert!(pid.is_none());
    let (code, err, _) = daemonize(&["--config".into(), "/nonexistent/p.config".into()], &dir.join("y.pid"));
    assert_eq!(code, Some(2));
    assert!(err.contains("/nonexistent/p.config"), "{err}");
}

/// Starts a transfer that takes a while: the backend sends `len` bytes slowly after the client
/// sends "go". Returns the client's thread, which yields (bytes, sha256, how it ended).
fn slow_download(port: u16) -> thread::JoinHandle<(usize, bool)> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"go").unwrap();
    thread::spawn(move || {
        let (got, end) = read_to_end_or_err(&mut c);
        (got.len(), end.is_ok())
    })
}

fn slow_backend(chunks: usize) -> Backend {
    Backend::start(move |mut s| {
        let mut go = [0u8; 2];
        if s.read_exact(&mut go).is_err() {
            return;
        }
        for _ in 0..chunks {
            if s.write_all(&[b'x'; 10_000]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    })
}

#[test]
fn sigterm_frees_the_port_at_once_and_lets_connections_finish() {
    let backend = slow_backend(15);
    let mut fwd = Forwarder::start(BIN, &["--bind", "127.0.0.1"], "127.0.0.1", backend.port);
    let download = slow_download(fwd.port);
    assert!(wait_until(Duration::from_secs(5), || fwd.descendants().len() == 2));
    fwd.signal(libc::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(5), || !fwd.alive()),
        "main process exits"
    );
    assert!(refused(fwd.port), "port free at once");
    let (len, clean) = download.join().unwrap();
    assert_eq!(len, 150_000, "the established connection completed");
    assert!(clean);
}

#[test]
fn drain_timeout_ends_connections_still_open() {
    let backend = slow_backend(200); // 20 s of data, far past the drain timeout
    let mut fwd = Forwarder::start(
        BIN,
        &["--bind", "127.0.0.1", "--drain-timeout", "1"],
        "127.0.0.1",
        backend.port,
    );
    let download = slow_download(fwd.port);
    assert!(wait_until(Duration::from_secs(5), || fwd.descendants().len() == 2));
    let start = Instant::now();
    fwd.signal(libc::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(2), || refused(fwd.port)),
        "listener closed at once"
    );
    assert!(fwd.alive(), "main process waits for the drain");
    assert!(wait_until(Duration::from_secs(10), || !fwd.alive()));
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    let (len, _) = download.join().unwrap();
    assert!(len < 2_000_000, "cut short");
    assert!(fwd.descendants().is_empty());
    assert!(
        fwd.log_text().contains("event=ending-connections live=1"),
        "{}",
        fwd.log_text()
    );
}

#[test]
fn sigquit_ends_everything_now() {
    let backend = slow_backend(200);
    let mut fwd = Forwarder::start(BIN, &["--bind", "127.0.0.1"], "127.0.0.1", backend.port);
    let download = slow_download(fwd.port);
    assert!(wait_until(Duration::from_secs(5), || fwd.descendants().len() == 2));
    let pids = fwd.descendants();
    fwd.signal(libc::SIGQUIT);
    assert!(wait_until(Duration::from_secs(5), || !fwd.alive()));
    assert!(pids.iter().all(|p| !alive(*p)), "connection processes ended");
    let (len, _) = download.join().unwrap();
    assert!(len < 2_000_000);
}

#[test]
fn sigusr1_logs_stats() {
    let backend = Backend::start(echo);
    let fwd = Forwarder::start(BIN, &[], "127.0.0.1", backend.port);
    for _ in 0..3 {
        assert_eq!(exchange(fwd.port, b"12345").unwrap(), b"12345");
    }
    assert!(fwd.wait_log_count("outcome=closed", 3, Duration::from_secs(5)));
    // The log line is written before the process exits; wait for the main process to reap it.
    assert!(wait_until(Duration::from_secs(5), || fwd.descendants().is_empty()));
    let want = "stats live=0 waiting=0 accepted=3 refused=0 closed=3 reset=0";
    assert!(
        wait_until(Duration::from_secs(5), || {
            fwd.signal(libc::SIGUSR1);
            thread::sleep(Duration::from_millis(100));
            fwd.log_text().contains(want)
        }),
        "{}",
        fwd.log_text()
    );
    assert!(
        fwd.log_text().contains("bytes_c2s=15 bytes_s2c=15"),
        "{}",
        fwd.log_text()
    );
}

#[test]
fn processes_are_named_for_ps() {
    let backend = Backend::start(echo);
    let fwd = Forwarder::start(BIN, &[], "127.0.0.1", backend.port);
    let mut c = fwd.connect();
    c.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    c.read_exact(&mut b).unwrap();
    assert!(wait_until(Duration::from_secs(5), || fwd.descendants().len() == 2));
    assert_eq!(stat(fwd.pid()).unwrap().comm, "portfwd");
    let mut names: Vec<String> = fwd.descendants().into_iter().map(|p| stat(p).unwrap().comm).collect();
    names.sort();
    assert_eq!(names, ["portfwd-c2s", "portfwd-s2c"]);
    // Each connection is a process group of its own, led by its connection process.
    for pid in fwd.descendants() {
        // SAFETY: getpgid only reads another process's group id.
        let pgid = unsafe { libc::getpgid(pid as i32) };
        let p = stat(pid).unwrap();
        let leader = if p.comm == "portfwd-c2s" { pid } else { p.ppid };
        assert_eq!(pgid as u32, leader);
    }
}

#[test]
fn sighup_reload_adds_removes_and_keeps_mappings_while_a_transfer_runs() {
    let slow = slow_backend(15);
    let echo_backend = Backend::start(echo);
    let dir = TempDir::new("reload");
    let file = dir.join("r.config");
    let (kept, removed, added) = (free_port(), free_port(), free_port());
    write(
        &file,
        &format!(
            "127.0.0.1:{kept} -> 127.0.0.1:{}\n127.0.0.1:{removed} -> 127.0.0.1:{}\n",
            slow.port, echo_backend.port
        ),
    );
    let fwd = Forwarder::spawn(BIN, &["--config".into(), file.display().to_string()], kept).expect("start");
    assert!(fwd.wait_log_count("event=listening", 2, Duration::from_secs(5)));
    let download = slow_download(kept);
    assert!(wait_until(Duration::from_secs(5), || fwd.descendants().len() == 2));

    // Clients keep connecting to the kept port through the reload: none may be refused.
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let prober = thread::spawn(move || {
        let mut attempts = 0;
        while stop_rx.try_recv().is_err() && attempts < 500 {
            if TcpStream::connect(("127.0.0.1", kept)).is_err() {
                return Err(attempts);
            }
            attempts += 1;
            thread::sleep(Duration::from_millis(5));
        }
        Ok(attempts)
    });
    write(
        &file,
        &format!(
            "127.0.0.1:{kept} -> 127.0.0.1:{}\n127.0.0.1:{added} -> 127.0.0.1:{}\n",
            slow.port, echo_backend.port
        ),
    );
    fwd.signal(libc::SIGHUP);
    assert!(
        fwd.wait_log_count("event=reload-done added=1 removed=1 kept=1", 1, Duration::from_secs(5)),
        "{}",
        fwd.log_text()
    );
    assert_eq!(exchange(added, b"new").unwrap(), b"new");
    assert!(refused(removed), "removed mapping's port is closed");
    thread::sleep(Duration::from_millis(200));
    stop_tx.send(()).unwrap();
    let probes = prober.join().unwrap();
    assert!(
        probes.is_ok(),
        "a connection to the kept port was refused during the reload: {probes:?}"
    );
    let (len, clean) = download.join().unwrap();
    assert_eq!((len, clean), (150_000, true), "transfer across the reload completed");

    // An invalid file is rejected as a whole, with its errors logged.
    write(
        &file,
        &format!("127.0.0.1:{kept} -> 127.0.0.1:{}\nbroken line\n", slow.port),
    );
    fwd.signal(libc::SIGHUP);
    assert!(
        fwd.wait_log_count("event=reload-rejected", 2, Duration::from_secs(5)),
        "{}",
        fwd.log_text()
    );
    assert!(
        fwd.log_text().contains(":2:1: expected 'PORT -> HOST:PORT'"),
        "{}",
        fwd.log_text()
    );
    assert_eq!(exchange(added, b"still").unwrap(), b"still", "old mappings stay");
}

#[test]
fn sighup_reopens_the_log_file() {
    let backend = Backend::start(echo);
    let dir = TempDir::new("logrotate");
    let log = dir.join("f.log");
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["--log-file", log.to_str().unwrap(), "--bind", "127.0.0.1"])
        .args([port.to_string(), "127.0.0.1".into(), backend.port.to_string()])
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || std::fs::read_to_string(&log)
        .is_ok_and(|l| l.contains("listening"))));
    std::fs::rename(&log, dir.join("f.log.1")).unwrap();
    signal(child.id(), libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(5), || log.exists()));
    assert_eq!(exchange(port, b"rotated").unwrap(), b"rotated");
    assert!(wait_until(Duration::from_secs(5), || std::fs::read_to_string(&log)
        .unwrap()
        .contains("outcome=closed")));
    let _ = child.kill();
    let _ = child.wait();
}
