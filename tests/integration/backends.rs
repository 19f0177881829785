//! Several backends per mapping: failover, balancing, passive health and the source address,
//! against real backends on loopback.

use crate::util::*;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A backend handler that reads the client's first byte, answers `name` and closes.
fn named(name: &'static str) -> impl Fn(TcpStream) + Send + Sync + 'static {
    move |mut s: TcpStream| {
        let mut b = [0u8; 1];
        if s.read_exact(&mut b).is_ok() {
            let _ = s.write_all(name.as_bytes());
        }
    }
}

/// One connection through the forwarder (from `from`, or 127.0.0.1): a byte out, the answer back.
fn ask(fwd: &Forwarder, from: Option<IpAddr>) -> String {
    let mut s = match from {
        Some(ip) => connect_from(ip, fwd.addr()).expect("connect"),
        None => fwd.connect(),
    };
    s.write_all(b"x").unwrap();
    let (got, end) = read_to_end_or_err(&mut s);
    assert!(end.is_ok(), "{end:?}\n{}", fwd.log_text());
    String::from_utf8(got).unwrap()
}

fn at(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

#[test]
fn failover_with_the_first_backend_down_serves_every_client() {
    let dead = free_port(); // nothing listens there: refused
    let b = Backend::start(named("B"));
    let fwd = Forwarder::start(BIN, &["--backend", &at(b.port)], "127.0.0.1", dead);
    for i in 0..20 {
        assert_eq!(ask(&fwd, None), "B", "client {i}\n{}", fwd.log_text());
    }
    let failed_over = format!("target={} failed={}/ECONNREFUSED", at(b.port), at(dead));
    assert!(
        fwd.wait_log_count(&failed_over, 1, Duration::from_secs(5)),
        "{}",
        fwd.log_text()
    );
    assert!(
        fwd.wait_log_count(
            &format!("listen=[::]:{} backend={}", fwd.port, at(dead)),
            1,
            Duration::from_secs(5)
        ),
        "{}",
        fwd.log_text()
    );
    // Marked down by the first failure (max_fails=1): the other 19 went straight to B.
    assert_eq!(
        fwd.count_lines(&format!("failed={}", at(dead))),
        1,
        "{}",
        fwd.log_text()
    );
    assert!(
        fwd.wait_log_count("outcome=closed", 20, Duration::from_secs(5)),
        "{}",
        fwd.log_text()
    );
}

#[test]
fn every_backend_failing_resets_the_client_and_logs_each_error() {
    let (d1, d2) = (free_port(), free_port());
    let fwd = Forwarder::start(BIN, &["--backend", &at(d2)], "127.0.0.1", d1);
    let mut s = fwd.connect();
    s.write_all(b"x").unwrap();
    assert_reset(&mut s, "every backend refused");
    let line = format!(
        "target={} failed={}/ECONNREFUSED,{}/ECONNREFUSED c2s=0 s2c=0",
        at(d1),
        at(d1),
        at(d2)
    );
    assert!(
        fwd.wait_log_count(&line, 1, Duration::from_secs(5)),
        "{}",
        fwd.log_text()
    );
    assert!(fwd.log_text().contains("outcome=connect-failed error=ECONNREFUSED"));
}

#[test]
fn a_backend_that_times_out_is_left_for_the_next_within_connect_timeout() {
    // A listener that never accepts, its queue full: further SYNs are dropped, connects time out.
    let stuck = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    stuck.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into()).unwrap();
    stuck.listen(0).unwrap();
    let stuck_port = stuck.local_addr().unwrap().as_socket().unwrap().port();
    let fillers: Vec<_> = (0..3)
        .filter_map(|_| TcpStream::connect_timeout(&local(stuck_port), Duration::from_millis(300)).ok())
        .collect();
    assert!(!fillers.is_empty());
    let b = Backend::start(named("B"));
    let fwd = Forwarder::start(
        BIN,
        &["--connect-timeout", "0.5", "--backend", &at(b.port)],
        "127.0.0.1",
        stuck_port,
    );
    let started = Instant::now();
    assert_eq!(ask(&fwd, None), "B");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let line = format!("failed={}/ETIMEDOUT", at(stuck_port));
    assert!(
        fwd.wait_log_count(&line, 1, Duration::from_secs(5)),
        "{}",
        fwd.log_text()
    );
}

/// Backends answering "A", "B" and "C", and a forwarder to the three with `--balance balance`.
fn three_backends(balance: &str) -> ([Backend; 3], Forwarder) {
    let backends = [
        Backend::start(named("A")),
        Backend::start(named("B")),
        Backend::start(named("C")),
    ];
    let more: Vec<String> = backends[1..].iter().map(|b| at(b.port)).collect();
    let fwd = Forwarder::start(
        BIN,
        &["--balance", balance, "--backend", &more[0], "--backend", &more[1]],
        "127.0.0.1",
        backends[0].port,
    );
    (backends, fwd)
}

#[test]
fn round_robin_gives_each_backend_an_even_share() {
    let (_backends, fwd) = three_backends("roundrobin");
    let mut counts = std::collections::HashMap::new();
    for _ in 0..100 {
        *counts.entry(ask(&fwd, None)).or_insert(0) += 1;
    }
    for name in ["A", "B", "C"] {
        let n = counts.get(name).copied().unwrap_or(0);
        assert!((33..=34).contains(&n), "{counts:?}");
    }
}

#[test]
fn source_hash_keeps_each_client_address_on_one_backend() {
    let (_backends, fwd) = three_backends("source");
    let mut used = std::collections::HashSet::new();
    // Clients on 127.0.0.2-127.0.0.41 look like 40 hosts.
    for host in 2..=41u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, host));
        let first = ask(&fwd, Some(ip));
        for _ in 0..3 {
            assert_eq!(ask(&fwd, Some(ip)), first, "client {ip} moved");
        }
        used.insert(first);
    }
    assert_eq!(used.len(), 3, "40 addresses spread over every backend: {used:?}");
}

#[test]
fn the_backend_marked_down_is_the_one_that_failed_whatever_the_order() {
    // Round robin tries the second backend first every other connection: its failure must be
    // counted against it, not against the first one in the plan's order.
    let a = Backend::start(named("A"));
    let dead = free_port();
    let fwd = Forwarder::start(
        BIN,
        &["--balance", "roundrobin", "--backend", &at(dead)],
        "127.0.0.1",
        a.port,
    );
    for _ in 0..6 {
        assert_eq!(ask(&fwd, None), "A");
    }
    let down = format!("event=backend-down listen=[::]:{} backend={} ", fwd.port, at(dead));
    assert!(
        fwd.wait_log_count(&down, 1, Duration::from_secs(5)),
        "{}",
        fwd.log_text()
    );
    assert_eq!(
        // No health line of any kind (down, still down, up) names A.
        fwd.count_lines(&format!("listen=[::]:{} backend={}", fwd.port, at(a.port))),
        0,
        "{}",
        fwd.log_text()
    );
    let stats = format!("backend={} state=up served=6 failed=0", at(a.port));
    fwd.stats();
    assert!(
        fwd.wait_log_count(&stats, 1, Duration::from_secs(5)),
        "{}",
        fwd.log_text()
    );
}

#[test]
fn a_killed_backend_goes_down_is_skipped_and_comes_back() {
    let a = Backend::start(named("A"));
    let a_port = a.port;
    let b = Backend::start(named("B"));
    let fwd = Forwarder::start(
        BIN,
        &[
            "--balance",
            "roundrobin",
            "--fail-timeout",
            "3",
            "--backend",
            &at(b.port),
        ],
        "127.0.0.1",
        a_port,
    );
    assert_eq!(ask(&fwd, None), "A");
    assert_eq!(ask(&fwd, None), "B");
    drop(a); // A's listener closes: connects to it are refused
    let down = format!("event=backend-down listen=[::]:{} backend={} ", fwd.port, at(a_port));
    let started = Instant::now();
    while fwd.count_lines(&down) == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "{}", fwd.log_text());
        // Every client is served all the same: by B.
        assert_eq!(ask(&fwd, None), "B");
    }
    let marked = Instant::now();
    assert!(
        fwd.log_text()
            .contains(&format!("backend={} failures=1 within_s=3 skipped_s=3", at(a_port))),
        "{}",
        fwd.log_text()
    );
    let stats = fwd.stats();
    assert!(stats.contains("live="), "{stats}");
    let health = |state: &str| {
        format!(
            "event=stats-backend listen=[::]:{} backend={} state={state}",
            fwd.port,
            at(a_port)
        )
    };
    assert!(
        fwd.wait_log_count(&health("down"), 1, Duration::from_secs(5)),
        "{}",
        fwd.log_text()
    );
    // A is back at once, but skipped until its fail_timeout is over.
    let a = Backend::bind(local(a_port), named("A")).expect("A listens again on its port");
    let mut skipped = 0;
    while marked.elapsed() < Duration::from_millis(2_500) {
        assert_eq!(ask(&fwd, None), "B", "A is skipped while it is marked down");
        skipped += 1;
    }
    assert!(skipped > 0);
    // Then it is tried again, serves, and is up again.
    assert!(
        wait_until(Duration::from_secs(15), || ask(&fwd, None) == "A"),
        "{}",
        fwd.log_text()
    );
    assert!(
        fwd.wait_log_count(
            &format!("event=backend-up listen=[::]:{} backend={}", fwd.port, at(a_port)),
            1,
            Duration::from_secs(5)
        ),
        "{}",
        fwd.log_text()
    );
    fwd.stats();
    assert!(
        fwd.wait_log_count(&health("up"), 1, Duration::from_secs(5)),
        "{}",
        fwd.log_text()
    );
    drop(a);
}

#[test]
fn inward_connections_come_from_the_source_address() {
    let peer = Backend::start(|mut s: TcpStream| {
        let mut b = [0u8; 1];
        if s.read_exact(&mut b).is_ok() {
            let _ = s.write_all(s.peer_addr().unwrap().ip().to_string().as_bytes());
        }
    });
    let fwd = Forwarder::start(BIN, &["--source", "127.0.0.9"], "127.0.0.1", peer.port);
    assert_eq!(ask(&fwd, None), "127.0.0.9");
    // Unchanged without it.
    let plain = Forwarder::start(BIN, &[], "127.0.0.1", peer.port);
    assert_eq!(ask(&plain, None), "127.0.0.1");
}

/// Moves the calling thread (and what it starts from now on) to network and mount namespaces of
/// its own, loopback up, with `hosts` bind-mounted on /etc/hosts: names resolve from that file,
/// never from a DNS server. `Err` says why that cannot be done here.
fn isolate_with_hosts(hosts: &std::path::Path) -> Result<(), String> {
    if !is_root() {
        return Err("needs root for network and mount namespaces of its own".into());
    }
    let c = |p: &std::path::Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let (root, from, to) = (
        c(std::path::Path::new("/")),
        c(hosts),
        c(std::path::Path::new("/etc/hosts")),
    );
    // SAFETY: unshare and mount change only this thread's namespaces and the mounts of its new
    // mount namespace; every string is a live NUL-terminated CString.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS) != 0 {
            return Err(format!("unshare: {}", std::io::Error::last_os_error()));
        }
        let private = libc::MS_REC | libc::MS_PRIVATE;
        let null = std::ptr::null();
        if libc::mount(null, root.as_ptr(), null, private, std::ptr::null()) != 0 {
            return Err(format!("making / private: {}", std::io::Error::last_os_error()));
        }
        if libc::mount(from.as_ptr(), to.as_ptr(), null, libc::MS_BIND, std::ptr::null()) != 0 {
            return Err(format!("bind-mounting /etc/hosts: {}", std::io::Error::last_os_error()));
        }
    }
    let up = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
    if !up.is_ok_and(|s| s.success()) {
        return Err("`ip link set lo up` failed (iproute2 missing?)".into());
    }
    Ok(())
}

/// Rewrites the hosts file in place with text of the same length: the bind mount holds its inode,
/// and a reader never sees it truncated (one write at offset 0).
fn rewrite_hosts(hosts: &std::path::Path, text: &str) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(hosts).unwrap();
    assert_eq!(file.metadata().unwrap().len(), text.len() as u64, "same length");
    file.write_all_at(text.as_bytes(), 0).unwrap();
}

#[test]
fn a_named_backend_is_resolved_again_and_the_next_connection_takes_its_new_address() {
    let dir = TempDir::new("resolve");
    let hosts = dir.join("hosts");
    let text = |ip: &str, name: &str| format!("127.0.0.1 localhost\n{ip} {name}.portfwd.test\n");
    std::fs::write(&hosts, text("127.0.0.2", "backend")).unwrap();
    if let Err(why) = isolate_with_hosts(&hosts) {
        return skip(why);
    }
    // The same port on two addresses: the name says which one is reached.
    let two = Backend::bind("127.0.0.2:0".parse().unwrap(), named("two")).expect("bind 127.0.0.2");
    let b = two.port;
    let three = Backend::bind(SocketAddr::from(([127, 0, 0, 3], b)), named("three")).expect("bind 127.0.0.3");
    let name = format!("backend.portfwd.test:{b}");
    // The flag (no configuration file: the resolver thread is started for it) and the config key.
    let by_flag = Forwarder::start(
        BIN,
        &["--bind", "127.0.0.1", "--resolve", "0.5"],
        "backend.portfwd.test",
        b,
    );
    let file = dir.join("resolve.config");
    let by_key = retry_ports(|| {
        let port = free_port();
        std::fs::write(&file, format!("127.0.0.1:{port} -> {name} resolve=0.5\n")).unwrap();
        Forwarder::spawn(BIN, &["--config".into(), file.display().to_string()], port)
    })
    .expect("start with --config");
    for fwd in [&by_flag, &by_key] {
        assert_eq!(ask(fwd, None), "two", "{}", fwd.log_text());
    }

    // The name moves: each forwarder says so, and its next connection goes to the new address.
    rewrite_hosts(&hosts, &text("127.0.0.3", "backend"));
    for fwd in [&by_flag, &by_key] {
        let resolved = format!(
            "event=backend-resolved listen=127.0.0.1:{} backend={name} addrs=127.0.0.3:{b}",
            fwd.port
        );
        assert!(
            fwd.wait_log_count(&resolved, 1, Duration::from_secs(10)),
            "{}",
            fwd.log_text()
        );
        assert_eq!(ask(fwd, None), "three", "{}", fwd.log_text());
        assert_eq!(fwd.count_lines("event=backend-resolved"), 1, "{}", fwd.log_text());
    }

    // The name is gone: the failure is logged and the last addresses kept.
    rewrite_hosts(&hosts, &text("127.0.0.2", "nothing"));
    for fwd in [&by_flag, &by_key] {
        let failed = format!(
            "event=backend-resolve-failed listen=127.0.0.1:{} backend={name} error=",
            fwd.port
        );
        assert!(
            fwd.wait_log_count(&failed, 1, Duration::from_secs(10)),
            "{}",
            fwd.log_text()
        );
        assert_eq!(ask(fwd, None), "three", "{}", fwd.log_text());
    }
    drop(three);
    drop(two);
}
