//! Limits, timeouts and access control under floods, faults and hostile
//! clients. The real binary, real sockets on loopback, kernel-picked ports, bounded waits.
//!
//! Tests that need root (a fork limit for another uid, `--user`) say why they skip otherwise.

use crate::util::*;
use socket2::SockRef;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const KIB: usize = 1 << 10;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

const V6_LOOPBACK: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// A duplicate, in this process, of descriptor `fd` of process `pid` (`pidfd_getfd(2)`, Linux 5.6;
/// needs ptrace rights over `pid`, which a test has over the forwarder it started as itself).
fn steal_fd(pid: u32, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscalls on integers; the returned descriptors are owned here.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0);
        if pidfd < 0 {
            return Err(io::Error::last_os_error());
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let dup = libc::syscall(libc::SYS_pidfd_getfd, std::os::fd::AsRawFd::as_raw_fd(&pidfd), fd, 0);
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(dup as i32))
    }
}

/// Starts `portfwd EXTRA... --config FILE` where FILE is `lines(ports)` for `n` fresh ports;
/// returns the forwarder (its `port` is the first) and the ports. Retries if a port was taken.
fn start_config(name: &str, n: usize, extra: &[&str], lines: impl Fn(&[u16]) -> String) -> (Forwarder, Vec<u16>) {
    let dir = TempDir::new(name);
    let file = dir.join("setup.config");
    let (f, ports) = retry_ports(|| {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        std::fs::write(&file, lines(&ports)).unwrap();
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend(["--config".to_string(), file.display().to_string()]);
        Forwarder::spawn(BIN, &args, ports[0]).map(|f| (f, ports))
    })
    .unwrap_or_else(|e| panic!("portfwd did not start: {e}"));
    assert!(
        f.wait_log_count("event=listening", n, Duration::from_secs(5)),
        "{}",
        f.log_text()
    );
    (f, ports)
}

/// Sets a resource limit (soft and hard) in a child between fork and exec.
fn limit_in_child(cmd: &mut Command, resource: libc::__rlimit_resource_t, value: u64) {
    // SAFETY: the closure runs in the forked child before exec and only calls setrlimit, which is
    // async-signal-safe, on a value it owns; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            if libc::setrlimit(resource, &lim) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `setpriv` to run the binary as `uid`:`uid` with no supplementary groups.
fn as_uid(uid: u32) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--clear-groups".into(),
        BIN.into(),
    ]);
    cmd
}

/// Counts the connections a backend accepted, and the most it held at once.
#[derive(Default)]
struct Tally {
    accepted: AtomicUsize,
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Tally {
    fn enter(&self) {
        self.accepted.fetch_add(1, Ordering::SeqCst);
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

fn counting_echo(tally: &Arc<Tally>) -> Backend {
    let t = Arc::clone(tally);
    Backend::start(move |s| {
        t.enter();
        echo(s);
        t.leave();
    })
}

/// Waits until the forwarder has no connection process left (all reaped, none stray).
fn wait_no_descendants(fwd: &Forwarder, limit: Duration) -> bool {
    wait_until(limit, || fwd.descendants().is_empty())
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

#[test]
fn flood_of_three_times_max_connections_is_served_in_full_never_above_the_cap() {
    flood("data");
}

#[test]
fn flood_with_dispatch_accept_is_served_in_full_never_above_the_cap() {
    flood("accept");
}

fn flood(dispatch: &str) {
    // Samples the forwarder's processes while it is flooded: no other heavy test meanwhile.
    let _turn = serial();
    const CAP: usize = 16;
    const CLIENTS: usize = 3 * CAP;
    let tally = Arc::new(Tally::default());
    let t = Arc::clone(&tally);
    // Each connection stays at the backend a while, so the cap is reached and clients queue.
    let backend = Backend::start(move |s| {
        t.enter();
        thread::sleep(Duration::from_millis(150));
        echo(s);
        t.leave();
    });
    let fwd = Forwarder::start(
        BIN,
        &["--max-connections", &CAP.to_string(), "--dispatch", dispatch],
        "127.0.0.1",
        backend.port,
    );
    let pid = fwd.pid();
    let addr = fwd.addr();
    let most_processes = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (most, done) = (Arc::clone(&most_processes), Arc::clone(&done));
        thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                most.fetch_max(descendants(pid).len(), Ordering::SeqCst);
                thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let clients: Vec<_> = (0..CLIENTS as u64)
        .map(|i| {
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let s = TcpStream::connect(addr)?;
                    s.set_read_timeout(Some(Duration::from_secs(30)))?;
                    echo_check(s, 1000 + i, 128 * KIB)
                })
                .unwrap()
        })
        .collect();
    let failures: Vec<String> = clients
        .into_iter()
        .enumerate()
        .filter_map(|(i, c)| c.join().unwrap().err().map(|e| format!("client {i}: {e}")))
        .collect();
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    assert!(failures.is_empty(), "{failures:?}\n{}", fwd.log_text());
    assert_eq!(tally.accepted.load(Ordering::SeqCst), CLIENTS);
    let max = tally.max.load(Ordering::SeqCst);
    println!(
        "flood ({dispatch}): {CLIENTS} clients, cap {CAP}: at most {max} at the backend at once, at most {} processes",
        most_processes.load(Ordering::SeqCst)
    );
    assert!(max <= CAP, "{max} connections at once with --max-connections {CAP}");
    let most = most_processes.load(Ordering::SeqCst);
    assert!(most <= 2 * CAP, "{most} processes with --max-connections {CAP}");
    assert!(fwd.wait_log_count("outcome=closed", CLIENTS, Duration::from_secs(10)));
}

#[test]
fn max_connections_counts_silent_clients_and_resumes_when_one_leaves() {
    // With `--dispatch data` a silent client holds a slot in the main process: at the cap, the
    // next client waits in the backlog (not refused), and is served once a slot frees up.
    let backend = Backend::start(echo);
    let (fwd, ports) = start_config("maxconn", 1, &[], |p| {
        format!("127.0.0.1:{} -> 127.0.0.1:{} max_connections=2\n", p[0], backend.port)
    });
    let addr = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let silent1 = TcpStream::connect(addr).unwrap();
    let _silent2 = TcpStream::connect(addr).unwrap();
    assert!(wait_until(Duration::from_secs(5), || field(&fwd.stats(), "waiting") == 2));
    // The third is in the kernel's backlog: connected, but nothing reaches the backend.
    let third = TcpStream::connect(addr).unwrap();
    third.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = third.try_clone().unwrap();
    w.write_all(b"queued").unwrap();
    w.shutdown(Shutdown::Write).unwrap();
    let line = fwd.stats();
    assert_eq!((field(&line, "waiting"), field(&line, "accepted")), (2, 2), "{line}");
    abort(silent1);
    let mut got = Vec::new();
    (&third).read_to_end(&mut got).unwrap();
    assert_eq!(got, b"queued");
    assert_eq!(field(&fwd.stats(), "accepted"), 3);
}

#[test]
fn the_command_line_cap_counts_every_mapping_of_the_process() {
    // `--max-connections 2` caps the whole process; each line may allow more for itself, but the
    // two mappings together still hold at most two, and the cap is logged once.
    let backend = Backend::start(echo);
    let (fwd, ports) = start_config("maxconn-total", 2, &["--max-connections", "2"], |p| {
        format!(
            "127.0.0.1:{} -> 127.0.0.1:{b} max_connections=5\n127.0.0.1:{} -> 127.0.0.1:{b} max_connections=5\n",
            p[0],
            p[1],
            b = backend.port
        )
    });
    let a = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let b = SocketAddr::from(([127, 0, 0, 1], ports[1]));
    let silent_a = TcpStream::connect(a).unwrap();
    let _silent_b = TcpStream::connect(b).unwrap();
    assert!(wait_until(Duration::from_secs(5), || field(&fwd.stats(), "waiting") == 2));
    let third = TcpStream::connect(b).unwrap();
    third.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = third.try_clone().unwrap();
    w.write_all(b"queued").unwrap();
    w.shutdown(Shutdown::Write).unwrap();
    assert!(
        fwd.wait_log_count(
            "live=1 max_connections=5 total=2 max_total=2",
            1,
            Duration::from_secs(5)
        ),
        "{}",
        fwd.log_text()
    );
    let line = fwd.stats();
    assert_eq!((field(&line, "waiting"), field(&line, "accepted")), (2, 2), "{line}");
    abort(silent_a);
    let mut got = Vec::new();
    (&third).read_to_end(&mut got).unwrap();
    assert_eq!(got, b"queued");
    assert_eq!(fwd.count_lines("event=at-max-connections"), 1, "{}", fwd.log_text());
}

#[test]
fn max_per_source_refuses_the_extra_connection_from_one_address_only() {
    let backend = Backend::start(echo);
    let fwd = Forwarder::start(BIN, &["--max-per-source", "2"], "127.0.0.1", backend.port);
    let a1 = connect_from(v4(2), fwd.addr()).unwrap();
    let _a2 = connect_from(v4(2), fwd.addr()).unwrap();
    assert!(wait_until(Duration::from_secs(5), || field(&fwd.stats(), "waiting") == 2));
    assert!(!served_from(v4(2), fwd.addr()), "third connection from 127.0.0.2");
    assert!(
        fwd.wait_log_count("outcome=refused reason=max-per-source", 1, Duration::from_secs(5)),
        "{}",
        fwd.log_text()
    );
    let refused = fwd.log_text();
    let refused = refused.lines().find(|l| l.contains("reason=max-per-source")).unwrap();
    assert!(refused.contains("127.0.0.2") && refused.contains(&format!("listen={}", fwd.port)));
    // Another address is not affected.
    echo_check(connect_from(v4(3), fwd.addr()).unwrap(), 1, 1000).unwrap();
    // When one of the two leaves, that address may come again.
    abort(a1);
    assert!(wait_until(Duration::from_secs(5), || field(&fwd.stats(), "waiting") == 1));
    echo_check(connect_from(v4(2), fwd.addr()).unwrap(), 2, 1000).unwrap();
    assert_eq!(fwd.count_lines("outcome=refused"), 1);
}

#[test]
fn a_flood_of_refused_clients_is_logged_twenty_lines_a_second_and_counted_in_full() {
    const FLOOD: u64 = 300;
    // A rate over wall-clock seconds: no other heavy test meanwhile.
    let _turn = serial();
    let backend = Backend::start(echo);
    let fwd = Forwarder::start(BIN, &["--deny", "127.0.0.3/32"], "127.0.0.1", backend.port);
    let started = Instant::now();
    for _ in 0..FLOOD {
        // Each is reset, maybe before connect returns: only the forwarder's count matters here.
        let _ = connect_from(v4(3), fwd.addr());
    }
    let spanned = started.elapsed().as_secs() + 1;
    assert!(wait_until(Duration::from_secs(10), || field(&fwd.stats(), "refused") == FLOOD));
    let one_by_one = || fwd.count_lines("outcome=refused reason=access-denied") as u64;
    let summed = || -> u64 {
        let lines = fwd.log.lock().unwrap().clone();
        lines
            .iter()
            .filter(|l| l.contains("event=refusals-not-logged outcome=refused"))
            .map(|l| field(l, "count"))
            .sum()
    };
    // The count of the last second's left-out lines comes once that second is over.
    assert!(
        wait_until(Duration::from_secs(5), || one_by_one() + summed() == FLOOD),
        "{} one by one + {} counted != {FLOOD}:\n{}",
        one_by_one(),
        summed(),
        fwd.log_text()
    );
    assert!(one_by_one() >= 20, "{}", one_by_one());
    assert!(
        one_by_one() <= 20 * (spanned + 1),
        "{} lines in {spanned} s",
        one_by_one()
    );
    // The forwarder serves everyone else as before.
    echo_check(connect_from(v4(1), fwd.addr()).unwrap(), 3, 1000).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Timeouts
// ---------------------------------------------------------------------------------------------

#[test]
fn slow_loris_two_thousand_silent_sockets_are_closed_after_the_first_byte_timeout() {
    const SILENT: usize = 2000;
    const TIMEOUT: Duration = Duration::from_secs(3);
    let _turn = serial();
    // The silent sockets and a few hundred more, here and in the forwarder (which inherits the
    // limit).
    if let Err(why) = need_descriptors(SILENT as u64 + 300) {
        return skip(why);
    }
    let backend = Backend::start(echo);
    let fwd = Forwarder::start(BIN, &["--first-byte-timeout", "3"], "127.0.0.1", backend.port);
    let baseline = procs::socket_fds(fwd.pid()).len();
    let start = Instant::now();
    let mut silent = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        silent.push(TcpStream::connect(fwd.addr()).unwrap());
    }
    // While they sit there, normal clients are served.
    for i in 0..20 {
        echo_check(fwd.connect(), 10 + i, 16 * KIB).unwrap();
    }
    // Not closed early: if the first one's timeout has not passed yet, it is still open.
    silent[0].set_nonblocking(true).unwrap();
    let early = silent[0].read(&mut [0u8; 1]);
    if start.elapsed() < TIMEOUT - Duration::from_millis(500) {
        assert_eq!(
            early.unwrap_err().kind(),
            ErrorKind::WouldBlock,
            "closed before the timeout"
        );
    }
    silent[0].set_nonblocking(false).unwrap();
    // After the timeout, the main process holds none of them.
    assert!(
        wait_until(TIMEOUT + Duration::from_secs(15), || procs::socket_fds(fwd.pid()).len()
            <= baseline),
        "main process still holds {} sockets",
        procs::socket_fds(fwd.pid()).len()
    );
    assert!(start.elapsed() >= TIMEOUT);
    for (i, s) in silent.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(read_outcome(s), Ok(0), "silent client {i} was not closed");
    }
    let line = fwd.stats();
    assert_eq!(field(&line, "first_byte_timeouts"), SILENT as u64, "{line}");
    assert_eq!(field(&line, "waiting"), 0, "{line}");
    // And service goes on.
    echo_check(fwd.connect(), 99, 64 * KIB).unwrap();
}

#[test]
fn first_byte_timeout_from_a_config_line_and_verbose_log() {
    let backend = Backend::start(echo);
    let (fwd, ports) = start_config("fbt", 1, &["-v"], |p| {
        format!(
            "127.0.0.1:{} -> 127.0.0.1:{} first_byte_timeout=0.5\n",
            p[0], backend.port
        )
    });
    let addr = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let mut silent = TcpStream::connect(addr).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(read_outcome(&mut silent), Ok(0));
    assert!(fwd.wait_log_count("event=first-byte-timeout", 1, Duration::from_secs(5)));
    // A client that speaks in time is served; `off` would keep silent ones forever (not waited for).
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    echo_check(s, 5, 1000).unwrap();
}

#[test]
fn idle_timeout_closes_a_silent_connection_but_not_one_with_one_way_traffic() {
    // The backend reads everything, answers with the byte count, and passes the FIN on.
    let backend = Backend::start(|mut s| {
        let mut n = 0usize;
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        let _ = s.write_all(n.to_string().as_bytes());
        let _ = s.shutdown(Shutdown::Write);
    });
    let (fwd, ports) = start_config("idle", 1, &[], |p| {
        format!(
            "127.0.0.1:{} -> 127.0.0.1:{} dispatch=accept idle_timeout=1\n",
            p[0], backend.port
        )
    });
    let addr = SocketAddr::from(([127, 0, 0, 1], ports[0]));

    // Silent both ways: closed with a FIN each way after about a second. The backend saw EOF
    // after 0 bytes and answered "0", which can no longer reach the client: shut down both ways.
    let start = Instant::now();
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    assert_eq!(read_outcome(&mut idle), Ok(0));
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    assert!(
        fwd.wait_log_count("outcome=idle-timeout", 1, Duration::from_secs(5)),
        "{}",
        fwd.log_text()
    );

    // One byte every 200 ms client→server for 2.5 s: never idle, although the server never sends.
    let mut busy = TcpStream::connect(addr).unwrap();
    busy.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let until = Instant::now() + Duration::from_millis(2500);
    let mut sent = 0;
    while Instant::now() < until {
        busy.write_all(b"x").unwrap();
        sent += 1;
        thread::sleep(Duration::from_millis(200));
    }
    busy.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    busy.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, sent.to_string());
    assert!(fwd.wait_log_count("outcome=closed", 1, Duration::from_secs(5)));
    assert_eq!(fwd.count_lines("outcome=idle-timeout"), 1, "{}", fwd.log_text());

    // Bytes first, then silence: idle from the last byte on (the pump is past its first read).
    let mut quiet = TcpStream::connect(addr).unwrap();
    quiet.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    quiet.write_all(b"abc").unwrap();
    let start = Instant::now();
    assert_eq!(read_outcome(&mut quiet), Ok(0));
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "closed after {:?}",
        start.elapsed()
    );
    assert!(
        fwd.wait_log_count("c2s=3 s2c=0", 1, Duration::from_secs(5)),
        "{}",
        fwd.log_text()
    );
    let log = fwd.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("c2s=3 s2c=0") && l.contains("outcome=idle-timeout"))
    );
    // Counted when the main process reaps it, which may come just after the line.
    assert!(wait_until(Duration::from_secs(5), || field(
        &fwd.stats(),
        "idle_timeout"
    ) == 2));
}

#[test]
fn keepalive_and_idle_socket_options_on_both_legs() {
    let backend = Backend::start(echo);
    let fwd = Forwarder::start(
        BIN,
        &["--keepalive", "20", "--idle-timeout", "3"],
        "127.0.0.1",
        backend.port,
    );
    let mut c = fwd.connect();
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).unwrap();
    let kids = fwd.descendants();
    assert_eq!(kids.len(), 2, "a connection and its pump");
    let mut legs = 0;
    for &pid in &kids {
        for fd in procs::socket_fds(pid) {
            let Ok(dup) = steal_fd(pid, fd) else {
                return skip("pidfd_getfd not permitted or not supported");
            };
            let s = SockRef::from(&dup);
            let (local, peer) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
            let (local, peer) = (local.as_socket().unwrap(), peer.as_socket().unwrap());
            let leg = if local.port() == fwd.port {
                "client leg"
            } else if peer.port() == backend.port {
                "server leg"
            } else {
                panic!("unexpected socket {local} -> {peer}");
            };
            assert!(s.keepalive().unwrap(), "{leg} of {pid}: SO_KEEPALIVE");
            assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(20), "{leg}");
            assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(5), "{leg}");
            assert_eq!(s.tcp_keepalive_retries().unwrap(), 4, "{leg}");
            assert_eq!(s.read_timeout().unwrap(), Some(Duration::from_secs(3)), "{leg}");
            legs += 1;
        }
    }
    assert_eq!(legs, 4, "two sockets in each of the two processes");
    // The kernel runs a keepalive timer on both legs (`ss -o`), where `ss` is installed.
    if let Ok(out) = Command::new("ss").args(["-tnoH", "state", "established"]).output() {
        let text = String::from_utf8_lossy(&out.stdout);
        let ours: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(&format!(":{} ", fwd.port)) || l.contains(&format!(":{} ", backend.port)))
            .collect();
        let with_timer = ours.iter().filter(|l| l.contains("timer:(keepalive")).count();
        assert!(with_timer >= 2, "keepalive timers in ss -o:\n{}", ours.join("\n"));
    }
    c.shutdown(Shutdown::Write).unwrap();
    let _ = read_outcome(&mut c);

    // Longer than the kernel takes (32767 s): refused at start, not silently replaced by the
    // system default of 7200 s.
    let out = Command::new(BIN)
        .args(["--keepalive", "40000", "1", "127.0.0.1", "2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("at most 32767"), "{err}");
    let dir = TempDir::new("ka-max");
    std::fs::write(dir.join("c"), "1 -> 127.0.0.1:2 keepalive=32768\n").unwrap();
    let out = Command::new(BIN)
        .arg("--check-config")
        .arg(dir.join("c"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most 32767"));

    // keepalive=off from a config line: no keepalive on either leg.
    let (off, ports) = start_config("ka-off", 1, &[], |p| {
        format!("127.0.0.1:{} -> 127.0.0.1:{} keepalive=off\n", p[0], backend.port)
    });
    let mut c = TcpStream::connect(("127.0.0.1", ports[0])).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"ping").unwrap();
    c.read_exact(&mut buf).unwrap();
    let kids = off.descendants();
    assert_eq!(kids.len(), 2);
    for &pid in &kids {
        for fd in procs::socket_fds(pid) {
            let dup = steal_fd(pid, fd).unwrap();
            assert!(
                !SockRef::from(&dup).keepalive().unwrap(),
                "keepalive=off, fd {fd} of {pid}"
            );
        }
    }
}

#[test]
fn keepalive_ends_a_connection_whose_peers_went_silent() {
    if !is_root() {
        return skip("needs root for a network namespace of its own");
    }
    // This test thread moves to a network namespace of its own, so that it can silence its
    // loopback without touching anyone else's: the backend, the forwarder and the client it
    // starts from here live there too.
    // SAFETY: unshare changes only the calling thread's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return skip(format!("unshare(CLONE_NEWNET): {}", io::Error::last_os_error()));
    }
    let ip = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !ip(&["link", "set", "lo", "up"]) {
        return skip("`ip link set lo up` failed (iproute2 missing?)");
    }
    let backend = Backend::start(echo);
    let fwd = Forwarder::start(BIN, &["--keepalive", "1"], "127.0.0.1", backend.port);
    let mut c = fwd.connect();
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).unwrap();
    // Both peers fall silent: from now on every packet on this namespace's loopback is lost, as
    // when a host dies or a cable is cut. Nothing tells the forwarder; only its keepalive
    // probes (after 1 s of silence, then 1 s apart, 4 unanswered) can find out.
    let silenced = Instant::now();
    assert!(ip(&["link", "set", "lo", "down"]));
    assert!(
        fwd.wait_log_count("outcome=reset", 1, Duration::from_secs(20)),
        "no reset logged:\n{}",
        fwd.log_text()
    );
    let took = silenced.elapsed();
    let log = fwd.log_text();
    assert!(log.contains("error=ETIMEDOUT"), "{log}");
    assert!(
        took >= Duration::from_secs(4),
        "ended after {took:?}, before the probes ran out"
    );
    assert!(
        wait_until(Duration::from_secs(5), || fwd.descendants().is_empty()),
        "left over: {:?}",
        fwd.descendants()
    );
}

// ---------------------------------------------------------------------------------------------
// Resource exhaustion
// ---------------------------------------------------------------------------------------------

#[test]
fn out_of_descriptors_pauses_without_spinning_and_recovers_by_itself() {
    const NOFILE: u64 = 32;
    const SILENT: usize = 60;
    // Measures the forwarder's CPU use: no other heavy test meanwhile.
    let _turn = serial();
    let backend = Backend::start(echo);
    let fwd = Forwarder::start_command(
        || {
            let mut cmd = Command::new(BIN);
            limit_in_child(&mut cmd, libc::RLIMIT_NOFILE, NOFILE);
            cmd
        },
        &["--first-byte-timeout", "off", "--accept-threads", "2"],
        "127.0.0.1",
        backend.port,
    );
    let silent: Vec<TcpStream> = (0..SILENT).map(|_| TcpStream::connect(fwd.addr()).unwrap()).collect();
    assert!(
        fwd.wait_log_count("event=accept-paused", 1, Duration::from_secs(10)),
        "{}",
        fwd.log_text()
    );
    // A client with data waits in the backlog meanwhile.
    let stuck = fwd.connect();
    let mut w = stuck.try_clone().unwrap();
    w.write_all(b"waited").unwrap();
    w.shutdown(Shutdown::Write).unwrap();

    // Stuck, but not busy: under 20% of one core over two seconds (a busy loop would use ~100%).
    let before = procs::cpu_ticks(fwd.pid());
    let t0 = Instant::now();
    thread::sleep(Duration::from_secs(2));
    let used = (procs::cpu_ticks(fwd.pid()) - before) as f64 / procs::clock_ticks_per_sec() as f64;
    let share = used / t0.elapsed().as_secs_f64();
    println!(
        "descriptor exhaustion: main process used {:.1}% of a core",
        share * 100.0
    );
    assert!(share < 0.2, "{:.0}% of a core while out of descriptors", share * 100.0);
    assert!(procs::socket_fds(fwd.pid()).len() as u64 <= NOFILE);

    // The silent clients leave; the one in the backlog is served, then new ones.
    for s in silent {
        abort(s);
    }
    let mut got = Vec::new();
    (&stuck).read_to_end(&mut got).unwrap();
    assert_eq!(got, b"waited");
    echo_check(fwd.connect(), 3, 64 * KIB).unwrap();
    assert!(fwd.wait_log_count("event=accept-resumed", 1, Duration::from_secs(5)));
    assert_eq!(
        fwd.count_lines("event=accept-paused"),
        1,
        "logged once:\n{}",
        fwd.log_text()
    );
    assert_eq!(fwd.count_lines("event=accept-resumed"), 1);
    let mut fwd = fwd;
    assert!(fwd.alive());
}

/// A process of `uid` that only takes up one of that uid's `RLIMIT_NPROC` slots. Killed (and
/// reaped, so that its slot is free again) on drop.
struct Sleeper;

impl Sleeper {
    fn start(uid: u32) -> KillOnDrop {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".into(),
            "sleep".into(),
            "120".into(),
        ]);
        let child = cmd.stdin(Stdio::null()).spawn().expect("spawn sleep");
        // It counts once setpriv has switched to the uid.
        let pid = child.id();
        assert!(wait_until(Duration::from_secs(5), || procs::status(pid, "Uid")
            .starts_with(&uid.to_string())));
        KillOnDrop(child)
    }
}

#[test]
fn fork_failures_reset_the_client_are_logged_and_service_resumes() {
    if !is_root() {
        return skip("needs root to run the forwarder as another uid with RLIMIT_NPROC");
    }
    // RLIMIT_NPROC counts every task of the real uid, so this uid must be used by nothing else.
    // The limit is set once at start (raising it later would need CAP_SYS_RESOURCE); sleepers of
    // the same uid fill the slots instead.
    const UID: u32 = 64999;
    let tally = Arc::new(Tally::default());
    let backend = counting_echo(&tally);
    // The main process and its one accept thread are 2 tasks; one connection is 2 more.
    let fwd = Forwarder::start_command(
        || {
            let mut cmd = as_uid(UID);
            limit_in_child(&mut cmd, libc::RLIMIT_NPROC, 4);
            cmd
        },
        &["--accept-threads", "1"],
        "127.0.0.1",
        backend.port,
    );
    assert_eq!(procs::status(fwd.pid(), "Uid"), format!("{UID} {UID} {UID} {UID}"));
    echo_check(fwd.connect(), 30, 32 * KIB).expect("served while there is room");
    assert!(wait_no_descendants(&fwd, Duration::from_secs(5)));

    // 1. Room for one process: the connection process connects, but cannot fork its pump. Both
    //    its sockets are reset and it logs the failure.
    let first = Sleeper::start(UID);
    let mut c = fwd.connect();
    c.write_all(b"no pump for me").unwrap();
    assert_reset(&mut c, "client whose pump could not be forked");
    assert!(
        fwd.wait_log_count("outcome=fork-failed", 1, Duration::from_secs(5)),
        "{}",
        fwd.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(5), || tally.accepted.load(Ordering::SeqCst) == 2),
        "the inward connection was made:\n{}",
        fwd.log_text()
    );

    // 2. No room at all: the main process cannot fork. The client is reset and nothing reaches
    //    the backend; the main process logs it and goes on.
    let second = Sleeper::start(UID);
    for i in 0..3 {
        let mut c = fwd.connect();
        c.write_all(b"no process for me").unwrap();
        assert_reset(&mut c, &format!("client {i} whose fork failed"));
    }
    assert!(
        fwd.wait_log_count("outcome=fork-failed", 4, Duration::from_secs(5)),
        "{}",
        fwd.log_text()
    );
    assert_eq!(
        fwd.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("error=EAGAIN"))
            .count(),
        4
    );
    assert_eq!(tally.accepted.load(Ordering::SeqCst), 2);

    // 3. The other processes of the uid end; service resumes by itself. (The limit leaves room
    //    for one connection: each must be reaped before the next, as a zombie still counts.)
    drop(first);
    drop(second);
    for i in 0..3 {
        echo_check(fwd.connect(), 40 + i, 32 * KIB).unwrap_or_else(|e| panic!("{e}\n{}", fwd.log_text()));
        assert!(wait_no_descendants(&fwd, Duration::from_secs(5)));
    }
    let line = fwd.stats();
    assert_eq!(field(&line, "fork_failed"), 4, "{line}");
    assert_eq!(field(&line, "closed"), 4, "{line}");
    let mut fwd = fwd;
    assert!(fwd.alive());
}

#[test]
fn backend_flapping_down_up_down_up_never_stops_the_forwarder() {
    let listener = listen(local(0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut backend = Some(Backend::from_listener(listener, echo));
    let fwd = Forwarder::start(BIN, &["--connect-timeout", "1"], "127.0.0.1", port);
    let served = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let wrong = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr = fwd.addr();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (served, failed, wrong, stop) = (
                Arc::clone(&served),
                Arc::clone(&failed),
                Arc::clone(&wrong),
                Arc::clone(&stop),
            );
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let mut s = TcpStream::connect(addr).expect("the forwarder keeps listening");
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let _ = s.write_all(b"ping");
                    let _ = s.shutdown(Shutdown::Write);
                    match read_to_end_or_err(&mut s) {
                        (data, Ok(())) if data == b"ping" => served.fetch_add(1, Ordering::SeqCst),
                        (_, Err(e)) if e.kind() == ErrorKind::ConnectionReset => failed.fetch_add(1, Ordering::SeqCst),
                        (data, end) => {
                            wrong.lock().unwrap().push(format!("{data:?} {end:?}"));
                            0
                        }
                    };
                }
            })
        })
        .collect();
    let progress = |counter: &AtomicUsize| {
        let start = counter.load(Ordering::SeqCst);
        wait_until(Duration::from_secs(10), || counter.load(Ordering::SeqCst) >= start + 5)
    };
    assert!(progress(&served), "up");
    drop(backend.take()); // down: the port refuses connections
    assert!(progress(&failed), "down");
    backend.replace(Backend::from_listener(listen(local(port)).unwrap(), echo));
    assert!(progress(&served), "up again");
    drop(backend.take());
    assert!(progress(&failed), "down again");
    backend.replace(Backend::from_listener(listen(local(port)).unwrap(), echo));
    assert!(progress(&served), "up at the end");
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    drop(backend);
    let wrong = wrong.lock().unwrap();
    let odd: Vec<String> = fwd
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| !l.contains("s2c=4 ") && l.contains("outcome="))
        .filter(|l| !l.contains("connect-failed"))
        .cloned()
        .collect();
    assert!(
        wrong.is_empty(),
        "clients neither served nor reset: {wrong:?}; unusual log lines: {odd:#?}"
    );
    let mut fwd = fwd;
    assert!(fwd.alive());
    assert!(fwd.log_text().contains("outcome=connect-failed error=ECONNREFUSED"));
    assert!(wait_no_descendants(&fwd, Duration::from_secs(10)), "stray processes");
    println!(
        "flapping: {} served, {} reset while the backend was down",
        served.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst)
    );
}

#[test]
fn a_connection_process_killed_by_a_signal_is_logged_and_the_forwarder_goes_on() {
    let backend = Backend::start(echo);
    let fwd = Forwarder::start(BIN, &[], "127.0.0.1", backend.port);
    let mut c = fwd.connect();
    c.write_all(b"ping").unwrap();
    c.read_exact(&mut [0u8; 4]).unwrap();
    let conn = procs::children(fwd.pid())[0];
    // SAFETY: kill on the process group of a connection this test's forwarder forked.
    unsafe { libc::kill(-(conn as i32), libc::SIGKILL) };
    let needle = "outcome=reset error=SIGKILL reason=connection-process-killed";
    assert!(
        fwd.wait_log_count(needle, 1, Duration::from_secs(5)),
        "{}",
        fwd.log_text()
    );
    let log = fwd.log_text();
    let line = log.lines().find(|l| l.contains(needle)).unwrap();
    let client = c.local_addr().unwrap().port();
    assert!(line.contains(&format!(":{client} listen={}", fwd.port)), "{line}");
    let _ = read_outcome(&mut c);
    assert!(wait_no_descendants(&fwd, Duration::from_secs(5)));
    echo_check(fwd.connect(), 8, 64 * KIB).unwrap();
    assert_eq!(field(&fwd.stats(), "reset"), 1);
    let mut fwd = fwd;
    assert!(fwd.alive());
}

// ---------------------------------------------------------------------------------------------
// Access control
// ---------------------------------------------------------------------------------------------

/// Whether a client from `src` is served through `dst` (echo), or reset at once (refused).
fn served_from(src: IpAddr, dst: SocketAddr) -> bool {
    let s = match connect_from(src, dst) {
        Ok(s) => s,
        // The reset can come before the connect call has returned.
        Err(e) if e.kind() == ErrorKind::ConnectionReset => return false,
        Err(e) => panic!("connect {src} -> {dst}: {e}"),
    };
    // Refused clients are reset before they send anything; do not write into a reset socket.
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    match s.peek(&mut [0u8; 1]) {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => return false,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("{src} -> {dst}: unexpected {other:?}"),
    }
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    echo_check(s, 7, 2000).unwrap_or_else(|e| panic!("{src} -> {dst}: {e}"));
    true
}

#[test]
fn allow_and_deny_rules_ipv4_and_ipv6_per_mapping_then_global() {
    let v6 = ipv6_loopback();
    if !v6 {
        skip("the IPv6 cases: ::1 is not available");
    }
    let tally = Arc::new(Tally::default());
    let backend = counting_echo(&tally);
    // Global: allow 127.0.0.0/30, deny ::1 (command-line order). Mapping rules come first.
    let (fwd, ports) = start_config("rules", 2, &["--allow", "127.0.0.0/30", "--deny", "::1"], |p| {
        format!(
            "[::]:{} -> 127.0.0.1:{b} allow=::1 deny=127.0.0.2\n[::]:{} -> 127.0.0.1:{b} deny=127.0.0.1\n",
            p[0],
            p[1],
            b = backend.port
        )
    });
    let on = |i: usize, ip: IpAddr| {
        let dst = if ip.is_ipv6() {
            SocketAddr::new(V6_LOOPBACK, ports[i])
        } else {
            SocketAddr::from(([127, 0, 0, 1], ports[i]))
        };
        served_from(ip, dst)
    };
    let mut expected_served = 0;
    let mut expected_refused = Vec::new();
    let mut check = |i: usize, ip: IpAddr, want: bool, why: &str| {
        if ip.is_ipv6() && !v6 {
            return;
        }
        assert_eq!(on(i, ip), want, "mapping {i}, client {ip}: {why}");
        if want {
            expected_served += 1;
        } else {
            expected_refused.push((ports[i], ip));
        }
    };
    check(0, v4(1), true, "global allow 127.0.0.0/30");
    check(0, v4(2), false, "mapping deny=127.0.0.2 before the global allow");
    check(0, v4(5), false, "no rule matches and allow rules exist: refused");
    check(0, V6_LOOPBACK, true, "mapping allow=::1 before the global deny ::1");
    check(1, v4(1), false, "mapping deny=127.0.0.1 before the global allow");
    check(1, v4(2), true, "global allow 127.0.0.0/30");
    check(1, v4(5), false, "no rule matches and allow rules exist: refused");
    check(1, V6_LOOPBACK, false, "global deny ::1");
    // Refused clients never reached the backend, and each was logged.
    assert_eq!(tally.accepted.load(Ordering::SeqCst), expected_served);
    let n = expected_refused.len();
    assert!(fwd.wait_log_count("reason=access-denied", n, Duration::from_secs(5)));
    let log = fwd.log_text();
    for (port, ip) in &expected_refused {
        let ip = ip.to_string();
        assert!(
            log.lines()
                .any(|l| l.contains(&ip) && l.contains(&format!("listen={port} outcome=refused reason=access-denied"))),
            "no refusal logged for {ip} on {port}:\n{log}"
        );
    }
    assert_eq!(field(&fwd.stats(), "refused"), n as u64);
    assert!(wait_no_descendants(&fwd, Duration::from_secs(5)));
}

#[test]
fn deny_rules_alone_leave_the_default_open() {
    let tally = Arc::new(Tally::default());
    let backend = counting_echo(&tally);
    // An IPv4-mapped IPv6 range stands for those IPv4 clients (of a dual-stack listener too).
    let fwd = Forwarder::start(
        BIN,
        &[
            "--deny",
            "127.0.0.3",
            "--deny",
            "::1/128",
            "--deny",
            "::ffff:127.0.0.6/128",
        ],
        "127.0.0.1",
        backend.port,
    );
    assert!(!served_from(v4(3), fwd.addr()));
    assert!(!served_from(v4(6), fwd.addr()));
    assert!(served_from(v4(4), fwd.addr()));
    assert!(served_from(v4(1), fwd.addr()));
    if ipv6_loopback() {
        assert!(!served_from(V6_LOOPBACK, SocketAddr::new(V6_LOOPBACK, fwd.port)));
    } else {
        skip("the IPv6 case: ::1 is not available");
    }
    assert_eq!(tally.accepted.load(Ordering::SeqCst), 2);
}

// ---------------------------------------------------------------------------------------------
// Privileges
// ---------------------------------------------------------------------------------------------

/// A port below 1024 free on 127.0.0.1 right now.
fn free_privileged_port() -> Option<u16> {
    (700..1024).rev().find(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
}

#[test]
fn user_drop_binds_a_privileged_port_then_no_process_runs_as_root() {
    if !is_root() {
        return skip("needs root");
    }
    const UID: u32 = 64998;
    let backend = Backend::start(echo);
    let fwd = retry_ports(|| {
        let port = free_privileged_port().expect("a free port below 1024");
        let args: Vec<String> = ["--user", "64998:64998", "--bind", "127.0.0.1"]
            .iter()
            .map(|s| s.to_string())
            .chain([port.to_string(), "127.0.0.1".into(), backend.port.to_string()])
            .collect();
        Forwarder::spawn(BIN, &args, port)
    })
    .unwrap_or_else(|e| panic!("portfwd did not start: {e}"));
    assert!(fwd.port < 1024);
    let mut c = fwd.connect();
    c.write_all(b"ping").unwrap();
    c.read_exact(&mut [0u8; 4]).unwrap();
    let kids = fwd.descendants();
    assert_eq!(kids.len(), 2);
    for pid in std::iter::once(fwd.pid()).chain(kids) {
        let who = format!("{:?} ({pid})", stat(pid).map(|s| s.comm));
        assert_eq!(procs::status(pid, "Uid"), format!("{UID} {UID} {UID} {UID}"), "{who}");
        assert_eq!(procs::status(pid, "Gid"), format!("{UID} {UID} {UID} {UID}"), "{who}");
        let groups = procs::status(pid, "Groups");
        assert!(groups.is_empty() || groups == UID.to_string(), "{who}: groups {groups}");
        assert_eq!(procs::status(pid, "CapEff"), "0000000000000000", "{who}");
        assert_eq!(procs::status(pid, "CapPrm"), "0000000000000000", "{who}");
    }
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_outcome(&mut c), Ok(0));
}

#[test]
fn user_that_cannot_be_switched_to_refuses_to_start() {
    let backend = Backend::start(echo);
    let port = free_port();
    let run = |mut cmd: Command| {
        let out = cmd
            .args([port.to_string(), "127.0.0.1".into(), backend.port.to_string()])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let mut cmd = Command::new(BIN);
    cmd.args(["--user", "no-such-user-portfwd"]);
    let (code, err) = run(cmd);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no such user 'no-such-user-portfwd'"), "{err}");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "nothing listens");
    if !is_root() {
        return skip("the failed-switch case: needs root to start as another uid");
    }
    // Not root: switching to root fails, and portfwd exits instead of running unswitched.
    let mut cmd = as_uid(64997);
    cmd.args(["--user", "0:0"]);
    let (code, err) = run(cmd);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--user") && err.contains("failed"), "{err}");
    assert!(!err.contains("event=listening"), "{err}");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "nothing listens");
}
