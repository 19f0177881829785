//! End-to-end tests of the launcher scripts: `scripts/port-forward.sh`, `scripts/stop-script.sh`
//! and `scripts/demo.sh`, run as a user runs them, against the real binary and real backends.
//!
//! Every test has its own temporary directory (config and run directory) and kernel-picked ports;
//! only the demo uses the fixed ports 7005/7006/8005/8006, and only when they are free. Every
//! wait is bounded. A guard kills (by pid) whatever daemon of the test is left, and each test
//! checks that nothing was left before the guard had to.

use crate::util::*;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const SCRIPT_LIMIT: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_secs(10);

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts").join(name)
}

/// What a script run printed and how it ended.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn all(&self) -> String {
        format!(
            "status {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// A temporary directory holding a test's config and run directory.
struct Sandbox {
    dir: PathBuf,
    run: PathBuf,
    /// Removed (after the processes are killed) when the sandbox is dropped.
    _tmp: TempDir,
}

impl Sandbox {
    fn new(tag: &str) -> Sandbox {
        let tmp = TempDir::new(&format!("scripts-{tag}"));
        let dir = tmp.path().canonicalize().unwrap();
        let run = dir.join("run");
        Sandbox { dir, run, _tmp: tmp }
    }

    /// Runs a script with `PORTFWD_BIN` set to the binary under test, in the sandbox directory.
    fn run(&self, name: &str, args: &[&str]) -> Out {
        self.spawn(name, args).finish()
    }

    /// Starts a script; output goes to files, not pipes: a daemon that kept a pipe open would
    /// hang the test.
    fn spawn(&self, name: &str, args: &[&str]) -> Running {
        self.spawn_in(name, args, &self.dir, &[])
    }

    /// Runs a script from the directory `cwd`, with the environment of `spawn` changed by `env`
    /// (a value of `None` removes that variable).
    fn run_in(&self, name: &str, args: &[&str], cwd: &Path, env: &[(&str, Option<&str>)]) -> Out {
        self.spawn_in(name, args, cwd, env).finish()
    }

    fn spawn_in(&self, name: &str, args: &[&str], cwd: &Path, env: &[(&str, Option<&str>)]) -> Running {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let n = RUNS.fetch_add(1, Ordering::SeqCst);
        let out_path = self.dir.join(format!("out.{n}"));
        let err_path = self.dir.join(format!("err.{n}"));
        let mut cmd = Command::new(script(name));
        cmd.args(args)
            .current_dir(cwd)
            .env("PORTFWD_BIN", BIN)
            .env_remove("PORTFWD_RUN_DIR");
        for (key, value) in env {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out_path).unwrap())
            .stderr(fs::File::create(&err_path).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
        Running {
            what: format!("{name} {args:?}"),
            child,
            out_path,
            err_path,
        }
    }

    fn launch(&self, config: &Path) -> Out {
        let run = self.run.to_str().unwrap();
        self.run("port-forward.sh", &["--run-dir", run, config.to_str().unwrap()])
    }

    fn stop(&self, extra: &[&str]) -> Out {
        let mut args = vec!["--run-dir", self.run.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.run("stop-script.sh", &args)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        fs::write(&path, text).unwrap();
        path
    }

    fn pid_file(&self, name: &str) -> PathBuf {
        self.run.join(format!("{name}.pid"))
    }

    fn pid_of(&self, name: &str) -> Option<u32> {
        fs::read_to_string(self.pid_file(name)).ok()?.trim().parse().ok()
    }

    fn log(&self, name: &str) -> String {
        fs::read_to_string(self.run.join(format!("{name}.log"))).unwrap_or_default()
    }

    fn pid_files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.run)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".pid"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Live processes of this test's daemons: main processes and connection processes (which are
    /// forks and carry the same command line, naming this sandbox: its run directory, or another
    /// one in it when a launcher picked the wrong one).
    fn processes(&self) -> Vec<(u32, String)> {
        let needle = self.dir.to_str().unwrap().to_string();
        let mut found: Vec<(u32, String)> = procs::scan()
            .into_iter()
            .filter(|p| p.state != 'Z' && p.comm.starts_with("portfwd") && cmdline(p.pid).contains(&needle))
            .map(|p| (p.pid, p.comm))
            .collect();
        found.sort();
        found
    }

    fn daemons(&self) -> Vec<u32> {
        self.processes()
            .into_iter()
            .filter(|(_, c)| c == "portfwd")
            .map(|(p, _)| p)
            .collect()
    }

    /// Asserts (within a bounded wait) that no process of this test is left.
    fn assert_nothing_left(&self) {
        let clean = wait_until(WAIT, || self.processes().is_empty());
        assert!(clean, "processes left behind: {:?}", self.processes());
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for (pid, _) in self.processes() {
            // SAFETY: a process whose command line names this test's private run directory: a
            // daemon (or connection process) the test launched.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// A script started by `Sandbox::spawn`.
struct Running {
    what: String,
    child: Child,
    out_path: PathBuf,
    err_path: PathBuf,
}

impl Running {
    /// Waits for the script (bounded) and returns what it printed.
    fn finish(self) -> Out {
        self.finish_within(SCRIPT_LIMIT)
    }

    /// Like `finish`, for a script that may take longer than `SCRIPT_LIMIT` (a release build).
    fn finish_within(mut self, limit: Duration) -> Out {
        let status = wait_child(&mut self.child, limit);
        let out = Out {
            code: status.unwrap_or(-1),
            stdout: fs::read_to_string(&self.out_path).unwrap_or_default(),
            stderr: fs::read_to_string(&self.err_path).unwrap_or_default(),
        };
        assert!(
            status.is_some(),
            "{} still running after {limit:?}:\n{}",
            self.what,
            out.all()
        );
        out
    }
}

/// The name the launcher gives a mapping listening on 127.0.0.1:PORT.
fn name(port: u16) -> String {
    format!("127.0.0.1_{port}")
}

/// Writes a config of `127.0.0.1:Pn -> 127.0.0.1:Bn` lines (the nth with `options[n]`) on fresh
/// ports and launches it; retries with other ports if one was taken meanwhile. Returns the ports.
fn launch(sb: &Sandbox, backends: &[u16], options: &[&str]) -> (Vec<u16>, PathBuf, Out) {
    launch_lines(
        sb,
        backends.len(),
        |ports| {
            let mut text = String::from("# written by the scripts tests\n\n");
            for (i, (p, b)) in ports.iter().zip(backends).enumerate() {
                let opt = options.get(i).copied().unwrap_or("");
                text += &format!("127.0.0.1:{p} -> 127.0.0.1:{b} {opt}\n");
            }
            text
        },
        &[],
    )
}

/// Picks `n` fresh ports, writes the config `text(ports)` and launches it with `extra` after `--`;
/// retries with other ports if one was taken meanwhile.
fn launch_lines(sb: &Sandbox, n: usize, text: impl Fn(&[u16]) -> String, extra: &[&str]) -> (Vec<u16>, PathBuf, Out) {
    retry_ports(|| {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let config = sb.write("setup.config", &text(&ports));
        let mut args = vec!["--run-dir", sb.run.to_str().unwrap(), config.to_str().unwrap()];
        if !extra.is_empty() {
            args.push("--");
            args.extend_from_slice(extra);
        }
        let out = sb.run("port-forward.sh", &args);
        if out.code != 0 && port_taken(&out.stderr) {
            sb.stop(&["--now"]);
            return Err(out.stderr);
        }
        Ok((ports, config, out))
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The connection processes (descendants) of a daemon.
fn connection_processes(daemon: u32) -> Vec<u32> {
    descendants(daemon).into_iter().filter(|&p| alive(p)).collect()
}

#[test]
fn launch_two_mappings_forward_refuse_a_second_launch_and_stop() {
    let sb = Sandbox::new("launch");
    let b1 = Backend::start(echo);
    let b2 = Backend::start(echo);
    let (ports, config, out) = launch(&sb, &[b1.port, b2.port], &["", "dispatch=accept"]);
    assert_eq!(out.code, 0, "{}", out.all());
    let (n1, n2) = (name(ports[0]), name(ports[1]));
    for n in [&n1, &n2] {
        assert!(out.stdout.contains(&format!("started {n}:")), "{}", out.all());
    }
    assert!(
        out.stdout.contains("2 started, 0 already running, 0 failed"),
        "{}",
        out.all()
    );

    // One daemon per mapping, named portfwd, each owning its pid file and config.
    let p1 = sb.pid_of(&n1).expect("pid file of the first mapping");
    let p2 = sb.pid_of(&n2).expect("pid file of the second mapping");
    assert_ne!(p1, p2);
    for (p, port) in [(p1, ports[0]), (p2, ports[1])] {
        assert_eq!(stat(p).expect("daemon is running").comm, "portfwd");
        assert!(cmdline(p).contains("--daemonize"), "{}", cmdline(p));
        let conf = fs::read_to_string(sb.run.join(format!("{}.conf", name(port)))).unwrap();
        assert!(conf.contains(&format!("127.0.0.1:{port} -> 127.0.0.1:")), "{conf}");
    }
    let conf2 = fs::read_to_string(sb.run.join(format!("{n2}.conf"))).unwrap();
    assert!(conf2.contains("dispatch=accept"), "{conf2}");
    let mut daemons = sb.daemons();
    daemons.sort();
    let mut expected = vec![p1, p2];
    expected.sort();
    assert_eq!(daemons, expected);
    assert!(sb.log(&n1).contains("event=listening"), "{}", sb.log(&n1));
    assert!(sb.log(&n2).contains("event=listening"), "{}", sb.log(&n2));

    // Forward through both.
    for port in &ports {
        let mut s = round_trip_to(*port, format!("hello through {port}").as_bytes());
        s.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }
    for n in [&n1, &n2] {
        assert!(
            wait_until(WAIT, || sb.log(n).contains("outcome=closed")),
            "no log line for the connection through {n}:\n{}",
            sb.log(n)
        );
    }

    // A second launch of the same file: refused, nothing doubled, nothing replaced.
    let again = sb.launch(&config);
    assert_eq!(again.code, 1, "{}", again.all());
    assert_eq!(
        again.stderr.matches("already running as pid").count(),
        2,
        "{}",
        again.all()
    );
    assert!(again.stderr.contains(&format!("pid {p1}")), "{}", again.all());
    assert_eq!((sb.pid_of(&n1), sb.pid_of(&n2)), (Some(p1), Some(p2)));
    let mut daemons = sb.daemons();
    daemons.sort();
    assert_eq!(daemons, expected, "a second launch must not start more daemons");
    round_trip_to(ports[0], b"still one daemon");

    // Stop: both exit, their pid files go, nothing listens any more.
    let stop = sb.stop(&[]);
    assert_eq!(stop.code, 0, "{}", stop.all());
    for (n, p) in [(&n1, p1), (&n2, p2)] {
        assert!(stop.stdout.contains(&format!("stopped {n} (pid {p}")), "{}", stop.all());
    }
    assert!(
        !stop.stdout.contains("left behind"),
        "portfwd must remove its own pid file:\n{}",
        stop.all()
    );
    assert!(!alive(p1) && !alive(p2));
    assert!(sb.pid_files().is_empty(), "{:?}", sb.pid_files());
    assert!(refused(ports[0]) && refused(ports[1]));
    sb.assert_nothing_left();

    // Stopping again: nothing to do, not an error.
    let stop = sb.stop(&[]);
    assert_eq!(stop.code, 0, "{}", stop.all());
    assert!(stop.stdout.contains("nothing to stop"), "{}", stop.all());
}

#[test]
fn stale_pid_files_are_reported_replaced_and_removed() {
    let sb = Sandbox::new("stale");
    let b = Backend::start(echo);
    fs::create_dir_all(&sb.run).unwrap();

    // A pid file per mapping before any launch: one names a process that is gone, the other a
    // live process that is not portfwd (which must never be signalled). Plus junk.
    let mut gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    let mut other = Command::new("sleep").arg("60").spawn().unwrap();
    let other_pid = other.id();

    let mut result = None;
    for _ in 0..5 {
        let ports = [free_port(), free_port()];
        fs::write(sb.pid_file(&name(ports[0])), format!("{gone_pid}\n")).unwrap();
        fs::write(sb.pid_file(&name(ports[1])), format!("{other_pid}\n")).unwrap();
        let config = sb.write(
            "setup.config",
            &format!(
                "127.0.0.1:{} -> 127.0.0.1:{b}\n127.0.0.1:{} -> 127.0.0.1:{b}\n",
                ports[0],
                ports[1],
                b = b.port
            ),
        );
        let out = sb.launch(&config);
        if out.code != 0 && out.stderr.contains("in use") {
            sb.stop(&["--now"]);
            continue;
        }
        result = Some((ports, config, out));
        break;
    }
    let (ports, config, out) = result.expect("free ports");
    let (n1, n2) = (name(ports[0]), name(ports[1]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stderr.contains(&format!("{n1}.pid (process {gone_pid} is gone)")),
        "{}",
        out.all()
    );
    assert!(
        out.stderr
            .contains(&format!("{n2}.pid (process {other_pid} is 'sleep', not portfwd)")),
        "{}",
        out.all()
    );
    let (p1, p2) = (sb.pid_of(&n1).unwrap(), sb.pid_of(&n2).unwrap());
    assert!(p1 != gone_pid && p2 != other_pid);
    assert_eq!(stat(p1).unwrap().comm, "portfwd");
    assert_eq!(stat(p2).unwrap().comm, "portfwd");
    round_trip_to(ports[0], b"one");
    round_trip_to(ports[1], b"two");

    // A daemon killed with SIGKILL leaves its pid file behind: the next launch restarts that
    // mapping (and refuses the one still running); the stop copes with a stale file too.
    // SAFETY: a daemon this test launched.
    unsafe { libc::kill(p1 as i32, libc::SIGKILL) };
    assert!(wait_until(WAIT, || !alive(p1)));
    assert!(wait_until(WAIT, || refused(ports[0])));
    let again = sb.launch(&config);
    assert_eq!(again.code, 1, "{}", again.all());
    assert!(
        again
            .stderr
            .contains(&format!("stale pid file {}", sb.pid_file(&n1).display())),
        "{}",
        again.all()
    );
    assert!(again.stdout.contains(&format!("started {n1}:")), "{}", again.all());
    assert!(again.stderr.contains(&format!("refused {n2}")), "{}", again.all());
    let p1b = sb.pid_of(&n1).unwrap();
    assert_ne!(p1b, p1);
    round_trip_to(ports[0], b"restarted");

    // SAFETY: the restarted daemon, launched by this test.
    unsafe { libc::kill(p1b as i32, libc::SIGKILL) };
    assert!(wait_until(WAIT, || !alive(p1b)));
    fs::write(sb.pid_file("leftover"), "not a pid\n").unwrap();
    let stop = sb.stop(&[]);
    assert_eq!(stop.code, 0, "{}", stop.all());
    assert!(
        stop.stdout
            .contains(&format!("stale pid file {}", sb.pid_file(&n1).display())),
        "{}",
        stop.all()
    );
    assert!(
        stop.stdout.contains("leftover.pid (not a pid: 'notapid')"),
        "{}",
        stop.all()
    );
    assert!(
        stop.stdout.contains(&format!("stopped {n2} (pid {p2}")),
        "{}",
        stop.all()
    );
    assert!(
        stop.stdout.contains("1 stopped, 2 stale pid file(s) removed"),
        "{}",
        stop.all()
    );
    assert!(sb.pid_files().is_empty(), "{:?}", sb.pid_files());

    // The unrelated process named by a stale pid file was never touched.
    assert!(
        alive(other_pid),
        "stop-script.sh or port-forward.sh signalled a process that is not theirs"
    );
    let _ = other.kill();
    let _ = other.wait();
    sb.assert_nothing_left();
}

/// Launches one mapping and opens a connection through it; returns (port, daemon pid, the open
/// connection, its connection processes).
fn one_mapping_with_a_connection(sb: &Sandbox, backend: u16) -> (u16, u32, TcpStream, Vec<u32>) {
    let (ports, _, out) = launch(sb, &[backend], &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    let port = ports[0];
    let daemon = sb.pid_of(&name(port)).unwrap();
    let conn = round_trip_to(port, b"before the stop");
    let mut procs = Vec::new();
    assert!(
        wait_until(WAIT, || {
            procs = connection_processes(daemon);
            procs.len() >= 2
        }),
        "the connection's processes (portfwd-c2s, portfwd-s2c) not found: {procs:?}"
    );
    (port, daemon, conn, procs)
}

#[test]
fn stop_without_now_leaves_established_connections_forwarding() {
    let sb = Sandbox::new("stop-term");
    let b = Backend::start(echo);
    let (port, daemon, mut conn, procs) = one_mapping_with_a_connection(&sb, b.port);

    let stop = sb.stop(&[]);
    assert_eq!(stop.code, 0, "{}", stop.all());
    assert!(
        stop.stdout
            .contains(&format!("stopped {} (pid {daemon}, SIGTERM)", name(port))),
        "{}",
        stop.all()
    );
    assert!(
        stop.stdout.contains("1 established connection(s) left running"),
        "{}",
        stop.all()
    );
    assert!(!alive(daemon));
    assert!(sb.pid_files().is_empty(), "{:?}", sb.pid_files());
    assert!(refused(port), "the listener must be closed after the stop");

    // The established connection still forwards, both ways, and ends cleanly.
    assert!(
        procs.iter().all(|&p| alive(p)),
        "connection processes ended by a plain stop"
    );
    round_trip(&mut conn, b"after the stop");
    conn.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert!(
        wait_until(WAIT, || procs.iter().all(|&p| !alive(p))),
        "connection processes still there after the connection closed"
    );
    sb.assert_nothing_left();
}

#[test]
fn stop_now_ends_established_connections() {
    let sb = Sandbox::new("stop-now");
    let b = Backend::start(echo);
    let (port, daemon, mut conn, procs) = one_mapping_with_a_connection(&sb, b.port);

    let stop = sb.stop(&["--now"]);
    assert_eq!(stop.code, 0, "{}", stop.all());
    assert!(
        stop.stdout
            .contains(&format!("stopped {} (pid {daemon}, SIGQUIT)", name(port))),
        "{}",
        stop.all()
    );
    assert!(
        !stop.stderr.contains("WARNING"),
        "portfwd left connections after SIGQUIT that the script had to kill:\n{}",
        stop.all()
    );
    assert!(!alive(daemon));
    assert!(
        procs.iter().all(|&p| !alive(p)),
        "connection processes alive after stop --now"
    );
    assert!(refused(port));

    // The client sees its connection end (EOF or reset), not a hang.
    let mut buf = [0u8; 64];
    let _ = conn.write_all(b"anyone there?");
    match conn.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("got {n} bytes through a connection that --now should have ended"),
        Err(e) => assert!(
            !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "connection still open after stop --now: {e}"
        ),
    }
    sb.assert_nothing_left();
}

#[test]
fn an_invalid_config_starts_nothing() {
    let sb = Sandbox::new("invalid");
    let good = free_port();
    let config = sb.write(
        "bad.config",
        &format!("# two bad lines\n127.0.0.1:{good} -> 127.0.0.1:9\n70000 -> 127.0.0.1:8005\n7005 => 127.0.0.1:8005\n"),
    );
    let out = sb.launch(&config);
    assert_eq!(out.code, 2, "{}", out.all());
    let file = config.to_str().unwrap();
    // Every error, as portfwd: FILE:LINE:COL: message.
    for line in [3, 4] {
        let prefix = format!("portfwd: {file}:{line}:");
        assert!(
            out.stderr.lines().any(|l| l.starts_with(&prefix)),
            "no error for line {line}:\n{}",
            out.all()
        );
    }
    assert!(out.stderr.contains("nothing started"), "{}", out.all());
    assert!(out.stdout.is_empty(), "{}", out.all());
    assert!(sb.pid_files().is_empty());
    assert!(sb.daemons().is_empty());

    // No mapping at all, a missing file, a missing binary: loud, status 2.
    let empty = sb.write("empty.config", "# nothing\n\n");
    let out = sb.launch(&empty);
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(out.stderr.contains("no mappings"), "{}", out.all());
    let out = sb.launch(&sb.dir.join("missing.config"));
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(out.stderr.contains("not found"), "{}", out.all());
    let status = Command::new(script("port-forward.sh"))
        .arg(&config)
        .env("PORTFWD_BIN", sb.dir.join("no-such-binary"))
        .current_dir(&sb.dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&status.stderr).contains("not an executable"));
    sb.assert_nothing_left();
}

#[test]
fn a_busy_port_fails_that_mapping_loudly_and_the_others_start() {
    let sb = Sandbox::new("busy");
    let b = Backend::start(echo);
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = holder.local_addr().unwrap().port();
    let free = free_port();
    let config = sb.write(
        "setup.config",
        &format!(
            "127.0.0.1:{busy} -> 127.0.0.1:{b}\n127.0.0.1:{free} -> 127.0.0.1:{b}\n",
            b = b.port
        ),
    );
    let out = sb.launch(&config);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.stderr.contains(&format!("FAILED {}", name(busy))), "{}", out.all());
    assert!(
        out.stderr.contains("portfwd: "),
        "portfwd's own error line is shown:\n{}",
        out.all()
    );
    assert!(
        out.stderr.contains("1 started, 0 already running, 1 failed"),
        "{}",
        out.all()
    );
    assert!(
        out.stdout.contains(&format!("started {}:", name(free))),
        "{}",
        out.all()
    );
    assert_eq!(sb.pid_files(), vec![format!("{}.pid", name(free))]);
    round_trip_to(free, b"the other mapping works");
    drop(holder);

    let stop = sb.stop(&[]);
    assert_eq!(stop.code, 0, "{}", stop.all());
    sb.assert_nothing_left();
}

#[test]
fn help_and_usage_errors() {
    let sb = Sandbox::new("help");
    for s in ["port-forward.sh", "stop-script.sh", "demo.sh"] {
        let out = sb.run(s, &["--help"]);
        assert_eq!(out.code, 0, "{}", out.all());
        assert!(out.stdout.starts_with("usage: scripts/"), "{}", out.all());
        let out = sb.run(s, &["--no-such-option"]);
        assert_ne!(out.code, 0, "{}", out.all());
        assert!(out.stderr.contains("--no-such-option"), "{}", out.all());
    }
    let out = sb.run("stop-script.sh", &["--timeout", "soon"]);
    assert_eq!(out.code, 2, "{}", out.all());
    let out = sb.run("port-forward.sh", &["--run-dir"]);
    assert_eq!(out.code, 2, "{}", out.all());
    // No run directory: nothing to stop, not an error.
    let out = sb.stop(&[]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("nothing to stop"), "{}", out.all());
}

/// Whether the demo's fixed ports are free on 127.0.0.1 (the shipped setup.config listens on
/// loopback only, towards backends on loopback).
fn demo_ports_busy() -> Vec<u16> {
    [7005u16, 7006, 8005, 8006]
        .into_iter()
        .filter(|port| TcpListener::bind(("127.0.0.1", *port)).is_err())
        .collect()
}

#[test]
fn demo_runs_end_to_end() {
    let busy = demo_ports_busy();
    if !busy.is_empty() {
        return skip(format!("the demo needs ports 7005, 7006, 8005, 8006; busy: {busy:?}"));
    }
    if Command::new("python3").arg("--version").output().is_err()
        || Command::new("curl").arg("--version").output().is_err()
    {
        return skip("the demo needs python3 and curl");
    }
    let sb = Sandbox::new("demo");

    // A busy port: the demo says which one and starts nothing.
    let holder = TcpListener::bind("127.0.0.1:8006").unwrap();
    let out = sb.run("demo.sh", &[]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stderr.contains("in use") && out.stderr.contains("8006"),
        "{}",
        out.all()
    );
    assert!(!out.stdout.contains("started"), "{}", out.all());
    drop(holder);

    let out = sb.run("demo.sh", &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    for needle in [
        "hello from the backend on 127.0.0.1:8005",
        "hello from the backend on 127.0.0.1:8006",
        "started 127.0.0.1_7005: 127.0.0.1:7005 -> 127.0.0.1:8005",
        "started 127.0.0.1_7006: 127.0.0.1:7006 -> 127.0.0.1:8006",
        "event=listening listen=127.0.0.1:7005",
        "portfwd-c2s",
        "portfwd-s2c",
        "HTTP/1.0 200",
        "event=listening",
        "outcome=closed",
        "stopped 127.0.0.1_7005",
        "stopped 127.0.0.1_7006",
    ] {
        assert!(
            out.stdout.contains(needle),
            "demo output lacks '{needle}':\n{}",
            out.all()
        );
    }
    // Everything the demo started is gone: its ports are free again.
    assert!(
        wait_until(WAIT, || demo_ports_busy().is_empty()),
        "ports still busy after the demo: {:?}",
        demo_ports_busy()
    );
}

/// A backend that answers every read with `B2:` and what it read.
fn tagged(mut s: TcpStream) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        let mut reply = b"B2:".to_vec();
        reply.extend_from_slice(&buf[..n]);
        if s.write_all(&reply).is_err() {
            return;
        }
    }
}

/// Sends `msg` through a new connection to 127.0.0.1:port and returns what comes back (bounded).
fn ask(port: u16, msg: &[u8]) -> Vec<u8> {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return Vec::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    if s.write_all(msg).is_err() {
        return Vec::new();
    }
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(n) => buf[..n].to_vec(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn every_interface_and_ipv6_names_and_a_reload_of_one_daemon() {
    let sb = Sandbox::new("names");
    let b1 = Backend::start(echo);
    let b2 = Backend::start(tagged);
    let ipv6 = ipv6_loopback();
    let (ports, config, out) = launch_lines(
        &sb,
        2,
        |p| {
            let mut text = format!("{} -> 127.0.0.1:{}\n", p[0], b1.port);
            if ipv6 {
                text += &format!("[::1]:{} -> 127.0.0.1:{}\n", p[1], b1.port);
            }
            text
        },
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.all());
    let any = format!("any_{}", ports[0]);
    assert!(
        out.stdout
            .contains(&format!("started {any}: [::]:{} -> 127.0.0.1:{}", ports[0], b1.port)),
        "{}",
        out.all()
    );
    if ipv6 {
        let v6 = format!("v6_--1_{}", ports[1]);
        assert!(
            out.stdout.contains(&format!("started {v6}: [::1]:{}", ports[1])),
            "{}",
            out.all()
        );
        let mut s = TcpStream::connect(("::1", ports[1])).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        round_trip(&mut s, b"over IPv6");
    } else {
        skip("the [::1] mapping: no IPv6 loopback here");
    }
    assert_eq!(ask(ports[0], b"ping"), b"ping");

    // Each daemon has its own config file: point the first at the other backend and reload it.
    let conf = sb.run.join(format!("{any}.conf"));
    let text = fs::read_to_string(&conf).unwrap();
    fs::write(
        &conf,
        text.replace(&format!(":{}\n", b1.port), &format!(":{}\n", b2.port)),
    )
    .unwrap();
    let pid = sb.pid_of(&any).unwrap();
    // SAFETY: a daemon this test launched.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    assert!(
        wait_until(WAIT, || ask(ports[0], b"ping") == b"B2:ping"),
        "the reload did not take: {}",
        sb.log(&any)
    );
    assert!(sb.log(&any).contains("event=reload-done"), "{}", sb.log(&any));
    assert_eq!(sb.pid_of(&any), Some(pid), "a reload keeps the daemon");

    // A relaunch of the original file says that the running daemon's mapping differs.
    let again = sb.launch(&config);
    assert_eq!(again.code, 1, "{}", again.all());
    assert!(again.stderr.contains("with a different mapping in"), "{}", again.all());

    let stop = sb.stop(&[]);
    assert_eq!(stop.code, 0, "{}", stop.all());
    sb.assert_nothing_left();
}

#[test]
fn options_after_double_dash_reach_the_daemons_and_stop_waits_for_the_drain() {
    let sb = Sandbox::new("drain");
    let b = Backend::start(echo);
    let (ports, _, out) = launch_lines(
        &sb,
        1,
        |p| format!("127.0.0.1:{} -> 127.0.0.1:{}\n", p[0], b.port),
        &["--drain-timeout", "1"],
    );
    assert_eq!(out.code, 0, "{}", out.all());
    let daemon = sb.pid_of(&name(ports[0])).unwrap();
    assert!(cmdline(daemon).contains("--drain-timeout 1"), "{}", cmdline(daemon));
    let mut conn = round_trip_to(ports[0], b"held across the stop");
    let mut procs = Vec::new();
    assert!(wait_until(WAIT, || {
        procs = connection_processes(daemon);
        procs.len() >= 2
    }));

    // SIGTERM with --drain-timeout 1: the daemon waits a second for the connection, then ends it.
    let start = Instant::now();
    let stop = sb.stop(&[]);
    assert_eq!(stop.code, 0, "{}", stop.all());
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "stopped before the drain timeout"
    );
    assert!(
        stop.stdout
            .contains(&format!("stopped {} (pid {daemon}, SIGTERM)", name(ports[0]))),
        "{}",
        stop.all()
    );
    assert!(!stop.stdout.contains("left running"), "{}", stop.all());
    assert!(
        procs.iter().all(|&p| !alive(p)),
        "connection processes alive after the drain timeout"
    );
    let mut buf = [0u8; 16];
    match conn.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("{n} bytes after the drain"),
        Err(e) => assert!(!matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "{e}"),
    }
    sb.assert_nothing_left();
}

#[test]
fn a_daemon_that_does_not_exit_in_time_is_reported_and_keeps_its_pid_file() {
    let sb = Sandbox::new("stuck");
    let b = Backend::start(echo);
    let (ports, _, out) = launch(&sb, &[b.port], &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    let n = name(ports[0]);
    let daemon = sb.pid_of(&n).unwrap();

    // A stopped process cannot act on SIGTERM: the stop must give up after --timeout, say so,
    // fail, and keep the pid file (the daemon is still there).
    // SAFETY: a daemon this test launched.
    unsafe { libc::kill(daemon as i32, libc::SIGSTOP) };
    assert!(wait_until(WAIT, || stat(daemon).is_some_and(|p| p.state == 'T')));
    let start = Instant::now();
    let stop = sb.stop(&["--timeout", "1"]);
    let took = start.elapsed();
    assert_eq!(stop.code, 1, "{}", stop.all());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(8),
        "took {took:?}"
    );
    assert!(
        stop.stderr
            .contains(&format!("{n} (pid {daemon}) did not exit within 1s of SIGTERM")),
        "{}",
        stop.all()
    );
    assert_eq!(sb.pid_of(&n), Some(daemon));

    // Once it runs again it acts on the pending SIGTERM and removes its own pid file.
    // SAFETY: as above.
    unsafe { libc::kill(daemon as i32, libc::SIGCONT) };
    assert!(
        wait_until(WAIT, || !alive(daemon)),
        "the daemon did not act on its pending SIGTERM"
    );
    assert!(
        wait_until(WAIT, || sb.pid_files().is_empty()),
        "portfwd did not remove its pid file on a clean exit: {:?}",
        sb.pid_files()
    );
    let stop = sb.stop(&[]);
    assert_eq!(stop.code, 0, "{}", stop.all());
    assert!(stop.stdout.contains("nothing to stop"), "{}", stop.all());
    sb.assert_nothing_left();
}

#[test]
fn two_launches_at_once_start_each_mapping_once() {
    let sb = Sandbox::new("race");
    let b = Backend::start(echo);
    let (ports, config, out) = launch(&sb, &[b.port, b.port], &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    let stop = sb.stop(&[]);
    assert_eq!(stop.code, 0, "{}", stop.all());

    // The same file, launched twice at the same moment: the run directory's lock serialises them,
    // so each mapping is started by one launch and refused by the other.
    let run = sb.run.to_str().unwrap().to_string();
    let args = ["--run-dir", run.as_str(), config.to_str().unwrap()];
    let first = sb.spawn("port-forward.sh", &args);
    let second = sb.spawn("port-forward.sh", &args);
    let (a, b2) = (first.finish(), second.finish());
    let both = format!("{}\n{}", a.all(), b2.all());
    assert_eq!(both.matches("started 127.0.0.1_").count(), 2, "{both}");
    assert_eq!(both.matches("already running as pid").count(), 2, "{both}");
    let mut codes = [a.code, b2.code];
    codes.sort();
    assert_eq!(codes, [0, 1], "{both}");
    assert_eq!(sb.daemons().len(), 2, "{:?}", sb.processes());
    round_trip_to(ports[0], b"once");
    round_trip_to(ports[1], b"twice");

    let stop = sb.stop(&["--now"]);
    assert_eq!(stop.code, 0, "{}", stop.all());
    assert!(stop.stdout.contains("2 stopped"), "{}", stop.all());
    sb.assert_nothing_left();
}

/// Writes `sb.dir/setup.config` with one mapping `127.0.0.1:P -> 127.0.0.1:BACKEND` on a fresh
/// port P and runs `port-forward.sh ARGS...` from `cwd` with `env` (ARGS name the config as the
/// test wants: relative, absolute, with or without --run-dir); retries with another port if one
/// was taken meanwhile. Returns P and what the launcher printed.
fn launch_one_in(sb: &Sandbox, backend: u16, args: &[&str], cwd: &Path, env: &[(&str, Option<&str>)]) -> (u16, Out) {
    retry_ports(|| {
        let port = free_port();
        sb.write("setup.config", &format!("127.0.0.1:{port} -> 127.0.0.1:{backend}\n"));
        let out = sb.run_in("port-forward.sh", args, cwd, env);
        if out.code != 0 && port_taken(&out.stderr) {
            sb.stop(&["--now"]);
            return Err(out.stderr);
        }
        Ok((port, out))
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn launcher_and_stop_agree_from_any_directory() {
    let sb = Sandbox::new("anydir");
    let b = Backend::start(echo);
    let elsewhere = sb.dir.join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();

    // No --run-dir, no PORTFWD_RUN_DIR (spawn removes it): the run directory is run/ beside the
    // config, not in the current directory.
    let (port, out) = launch_one_in(&sb, b.port, &["../setup.config"], &elsewhere, &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.contains(&format!("(run directory {})", sb.run.display())),
        "{}",
        out.all()
    );
    assert!(
        !elsewhere.join("run").exists(),
        "a run directory in the current directory"
    );
    let n = name(port);
    assert!(sb.pid_file(&n).is_file(), "{:?}\n{}", sb.pid_files(), out.all());
    let pid = sb.pid_of(&n).unwrap();
    let started = out
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("started {n}: 127.0.0.1:{port} -> 127.0.0.1:{}", b.port)))
        .unwrap_or_else(|| panic!("no started line for {n}:\n{}", out.all()));
    let log = started
        .split_once(&format!("(pid {pid}, log "))
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no '(pid {pid}, log PATH)' in: {started}"));
    assert!(Path::new(log).is_file(), "the log named in '{started}' does not exist");
    assert_eq!(Path::new(log), sb.run.join(format!("{n}.log")));
    round_trip_to(port, b"launched from elsewhere");

    // The stop, from /, with the config's absolute path: the same run directory.
    let config = sb.dir.join("setup.config");
    let stop = sb.run_in("stop-script.sh", &[config.to_str().unwrap()], Path::new("/"), &[]);
    assert_eq!(stop.code, 0, "{}", stop.all());
    assert!(
        stop.stdout.contains(&format!("stopped {n} (pid {pid}")),
        "{}",
        stop.all()
    );
    assert!(sb.pid_files().is_empty(), "{:?}", sb.pid_files());
    assert!(!alive(pid));
    sb.assert_nothing_left();

    let missing = sb.dir.join("missing.config");
    let out = sb.run_in("stop-script.sh", &[missing.to_str().unwrap()], Path::new("/"), &[]);
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(out.stderr.contains("not found"), "{}", out.all());
}

/// The `--status` line of the running daemon `name`.
fn status_line<'a>(out: &'a Out, name: &str) -> &'a str {
    out.stdout
        .lines()
        .find(|l| l.starts_with(&format!("running {name} (pid ")))
        .unwrap_or_else(|| panic!("no status line for {name}:\n{}", out.all()))
}

#[test]
fn status_shows_daemons_listeners_connections_and_stale_pid_files() {
    let sb = Sandbox::new("status");
    let b = Backend::start(echo);
    let (ports, config, out) = launch(&sb, &[b.port, b.port], &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    let (n1, n2) = (name(ports[0]), name(ports[1]));
    let (d1, d2) = (sb.pid_of(&n1).unwrap(), sb.pid_of(&n2).unwrap());
    let run = sb.run.to_str().unwrap();
    let status = || sb.run("port-forward.sh", &["--status", "--run-dir", run]);
    let check = |out: &Out, conns: [usize; 2]| {
        for ((n, d), (p, c)) in [(&n1, d1), (&n2, d2)].into_iter().zip(ports.iter().zip(conns)) {
            let line = status_line(out, n);
            for needle in [
                format!("running {n} (pid {d}): 127.0.0.1:{p} -> 127.0.0.1:{}", b.port),
                format!("listening on 127.0.0.1:{p};"),
                format!("; {c} live connection(s);"),
                format!("(from {})", config.display()),
            ] {
                assert!(line.contains(&needle), "'{needle}' not in: {line}\n{}", out.all());
            }
        }
    };

    let out = status();
    assert_eq!(out.code, 0, "{}", out.all());
    check(&out, [0, 0]);
    assert!(
        out.stdout
            .contains("2 running, 0 stale pid file(s), 0 live connection(s)"),
        "{}",
        out.all()
    );

    // Two connections through the first mapping, each past its first byte: handed off, each with
    // its two processes.
    let held: Vec<TcpStream> = (0..2).map(|_| round_trip_to(ports[0], b"held")).collect();
    assert!(
        wait_until(WAIT, || connection_processes(d1).len() >= 4),
        "connection processes: {:?}",
        connection_processes(d1)
    );
    let out = status();
    assert_eq!(out.code, 0, "{}", out.all());
    check(&out, [2, 0]);
    assert!(
        out.stdout
            .contains("2 running, 0 stale pid file(s), 2 live connection(s)"),
        "{}",
        out.all()
    );

    // From a subdirectory, with the config's relative path and the default run directory (run/
    // beside the config, the one launched into): the same report.
    let sub = sb.dir.join("sub");
    fs::create_dir(&sub).unwrap();
    let rel = sb.run_in("port-forward.sh", &["--status", "../setup.config"], &sub, &[]);
    assert_eq!(rel.code, 0, "{}", rel.all());
    assert_eq!(rel.stdout, out.stdout, "{}", rel.all());

    // A daemon killed with SIGKILL leaves its pid file: reported as stale, kept.
    // SAFETY: a daemon this test launched.
    unsafe { libc::kill(d2 as i32, libc::SIGKILL) };
    assert!(wait_until(WAIT, || !alive(d2)));
    let out = status();
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.stdout.contains(&format!("stale {n2}: ")), "{}", out.all());
    assert!(
        status_line(&out, &n1).contains("; 2 live connection(s);"),
        "{}",
        out.all()
    );
    assert!(
        out.stdout
            .contains("1 running, 1 stale pid file(s), 2 live connection(s)"),
        "{}",
        out.all()
    );
    assert!(sb.pid_file(&n2).is_file(), "--status must not remove a stale pid file");

    let stop = sb.stop(&["--now"]);
    assert_eq!(stop.code, 0, "{}", stop.all());
    drop(held);
    let out = status();
    assert_eq!(out.code, 3, "{}", out.all());
    assert!(out.stdout.contains("nothing running: no pid file in"), "{}", out.all());
    let none = sb.dir.join("none");
    let out = sb.run("port-forward.sh", &["--status", "--run-dir", none.to_str().unwrap()]);
    assert_eq!(out.code, 3, "{}", out.all());
    assert!(out.stdout.contains("no run directory"), "{}", out.all());
    let out = sb.run("port-forward.sh", &["--status", "--run-dir", run, "--", "--verbose"]);
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(out.stdout.is_empty(), "{}", out.all());
    sb.assert_nothing_left();
}

#[test]
fn binary_found_in_cargo_target_dir_and_errors_name_portfwd_bin() {
    let sb = Sandbox::new("bin");
    let b = Backend::start(echo);
    let tgt = sb.dir.join("tgt");
    let copy = tgt.join("release").join("portfwd");
    fs::create_dir_all(copy.parent().unwrap()).unwrap();
    fs::copy(BIN, &copy).unwrap();

    // No PORTFWD_BIN: the release binary of the target directory cargo reports, which honours
    // CARGO_TARGET_DIR (the repository's own target/ holds another portfwd).
    let run = sb.run.to_str().unwrap();
    let env = [("PORTFWD_BIN", None), ("CARGO_TARGET_DIR", tgt.to_str())];
    let (port, out) = launch_one_in(&sb, b.port, &["--run-dir", run, "setup.config"], &sb.dir, &env);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(!out.stderr.contains("building it"), "{}", out.all());
    let pid = sb.pid_of(&name(port)).unwrap();
    assert_eq!(fs::read_link(format!("/proc/{pid}/exe")).unwrap(), copy);
    round_trip_to(port, b"the copy forwards");
    let stop = sb.stop(&[]);
    assert_eq!(stop.code, 0, "{}", stop.all());
    sb.assert_nothing_left();

    // A PORTFWD_BIN that is not there: the error names the variable; nothing starts.
    let none = sb.dir.join("none");
    let env = [("PORTFWD_BIN", none.to_str())];
    let out = sb.run_in("port-forward.sh", &["--run-dir", run, "setup.config"], &sb.dir, &env);
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(out.stderr.contains("PORTFWD_BIN="), "{}", out.all());
    assert!(sb.pid_files().is_empty(), "{:?}", sb.pid_files());

    if Command::new("python3").arg("--version").output().is_err()
        || Command::new("curl").arg("--version").output().is_err()
    {
        return skip("the demo part: the demo needs python3 and curl");
    }
    let out = sb.run_in("demo.sh", &[], &sb.dir, &env);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.stderr.contains("PORTFWD_BIN="), "{}", out.all());
    assert!(!out.stdout.contains("started"), "{}", out.all());
    sb.assert_nothing_left();
}

/// `scripts/package-deb.sh` builds (`cargo build --release`) and packages with `cargo deb`: opt-in,
/// run only where cargo-deb is installed.
#[test]
fn package_deb_holds_the_binary_man_page_completions_and_unit() {
    let works = |cmd: &str, args: &[&str]| Command::new(cmd).args(args).output().is_ok_and(|o| o.status.success());
    if !works("cargo", &["deb", "--version"]) {
        return skip("cargo-deb is not installed (cargo install --locked cargo-deb)");
    }
    if !works("dpkg-deb", &["--version"]) {
        return skip("no dpkg-deb to list the package");
    }
    // A release build loads the machine: take turns with the other heavy tests.
    let _turn = serial();
    let sb = Sandbox::new("deb");
    // Its own target directory, beside the one this test was built in: the build neither waits
    // for nor replaces the binary under test, and later runs reuse what it built.
    let target = Path::new(BIN)
        .parent()
        .and_then(Path::parent)
        .expect("BIN is TARGET/PROFILE/portfwd")
        .join("package-deb-test");
    let env = [("CARGO_TARGET_DIR", target.to_str())];
    let out = sb
        .spawn_in("package-deb.sh", &[], &sb.dir, &env)
        .finish_within(Duration::from_secs(900));
    assert_eq!(out.code, 0, "{}", out.all());
    let deb = out.stdout.lines().last().unwrap_or("").trim();
    assert!(
        deb.ends_with(".deb") && Path::new(deb).is_file(),
        "the last line is not the .deb:\n{}",
        out.all()
    );
    assert!(
        Path::new(deb).starts_with(&target),
        "{deb} is not in {}",
        target.display()
    );
    let list = Command::new("dpkg-deb").arg("-c").arg(deb).output().unwrap();
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    let list = String::from_utf8_lossy(&list.stdout);
    let paths: Vec<&str> = list.lines().filter_map(|l| l.split_whitespace().last()).collect();
    for want in [
        "./usr/bin/portfwd",
        "./usr/share/man/man1/portfwd.1.gz",
        "./usr/share/bash-completion/completions/portfwd",
        "./usr/lib/systemd/system/portfwd.service",
    ] {
        assert!(paths.contains(&want), "{want} not in the package:\n{list}");
    }
    // The generated files are those of this source (not stale ones left in target/assets).
    let unpack = |path: &str, filter: &str| {
        let pipeline = format!("dpkg-deb --fsys-tarfile \"$1\" | tar -xOf - \"$2\" {filter}");
        let out = Command::new("sh")
            .args(["-c", &pipeline, "sh", deb, path])
            .output()
            .unwrap();
        assert!(out.status.success(), "{path}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    let printed = |arg: &[&str]| Command::new(BIN).args(arg).output().unwrap().stdout;
    assert!(
        unpack("./usr/share/man/man1/portfwd.1.gz", "| gzip -dc") == printed(&["--man"]),
        "the packaged manual page is not what portfwd --man prints"
    );
    assert!(
        unpack("./usr/share/bash-completion/completions/portfwd", "") == printed(&["--completions", "bash"]),
        "the packaged bash completion is not what portfwd --completions bash prints"
    );
}
