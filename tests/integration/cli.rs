//! The command line as a user meets it: help, version, and one clear line with exit status 2 for
//! each kind of bad input, with nothing left listening.

use crate::util::*;
use std::io::Write;
use std::net::{Ipv6Addr, SocketAddr, TcpListener};
use std::process::{Command, Output, Stdio};

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run portfwd")
}

/// Asserts exit status 2 and exactly one line on stderr that contains `needle`; returns the line.
fn fails_with(args: &[&str], needle: &str) -> String {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?} printed more than one line: {err}");
    assert!(err.starts_with("portfwd: "), "{err}");
    assert!(err.contains(needle), "{args:?}: expected '{needle}' in: {err}");
    assert!(out.stdout.is_empty());
    err.into_owned()
}

#[test]
fn help_and_version() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "PORT",
        "HOSTNAME",
        "HOST_PORT",
        "--bind",
        "--accept-threads",
        "--dispatch",
        "--connect-timeout",
        "--verbose",
    ] {
        assert!(help.contains(word), "--help lacks {word}");
    }
    let out = run(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("portfwd {}", env!("CARGO_PKG_VERSION"))));
}

#[test]
fn bad_ports_and_arguments() {
    fails_with(&["0", "127.0.0.1", "80"], "1 to 65535");
    fails_with(&["65536", "127.0.0.1", "80"], "1 to 65535");
    fails_with(&["http", "127.0.0.1", "80"], "not a number");
    fails_with(&["7000", "127.0.0.1", "0"], "1 to 65535");
    fails_with(&["7000", "127.0.0.1", "99999"], "1 to 65535");
    fails_with(&["7000", "127.0.0.1"], "HOST_PORT");
    fails_with(&[], "PORT");
    fails_with(&["7000", "127.0.0.1", "80", "--dispatch", "sometimes"], "sometimes");
    fails_with(
        &["7000", "127.0.0.1", "80", "--connect-timeout", "0"],
        "--connect-timeout",
    );
    fails_with(
        &["7000", "127.0.0.1", "80", "--accept-threads", "0"],
        "--accept-threads",
    );
    fails_with(&["7000", "127.0.0.1", "80", "--no-such-flag"], "--no-such-flag");
}

#[test]
fn unknown_host() {
    fails_with(
        &["7000", "no-such-host.invalid", "80"],
        "cannot resolve host 'no-such-host.invalid'",
    );
    fails_with(&["--bind", "no-such-host.invalid", "7000", "127.0.0.1", "80"], "--bind");
}

#[test]
fn address_in_use_leaves_nothing_behind() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    fails_with(
        &["--bind", "127.0.0.1", &port, "127.0.0.1", "80"],
        "Address already in use",
    );
    // `fails_with` waited for the process to exit, so nothing of it is left listening; and the bad
    // start-up did not disturb the port's owner.
    let mut c = std::net::TcpStream::connect(taken.local_addr().unwrap()).unwrap();
    let (mut accepted, _) = taken.accept().unwrap();
    use std::io::{Read, Write};
    c.write_all(b"still mine").unwrap();
    let mut buf = [0u8; 10];
    accepted.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still mine");
}

#[test]
fn no_permission_to_bind_a_privileged_port() {
    let start: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .map_or(1024, |s| s.trim().parse().unwrap_or(1024));
    let root = is_root();
    if start == 0 || (!root && Command::new("setpriv").arg("--version").output().is_err()) {
        return skip("every port is unprivileged here");
    }
    let mut cmd = if root {
        // Drop to nobody, as an unprivileged user would run it.
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
        c
    } else {
        Command::new(BIN)
    };
    let out = cmd
        .args(["--bind", "127.0.0.1", "1", "127.0.0.1", "80"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("Permission denied"), "{err}");
}

#[test]
fn start_up_line_names_the_mapping_and_pid() {
    let backend = Backend::start(echo);
    let fwd = Forwarder::start(BIN, &["--bind", "127.0.0.1"], "localhost", backend.port);
    let log = fwd.log_text();
    let expect = format!(
        "event=listening listen=127.0.0.1:{} target=localhost:{} addrs=",
        fwd.port, backend.port
    );
    assert!(log.contains(&expect), "{log}");
    assert!(log.contains(&format!("pid={}", fwd.pid())), "{log}");
    assert!(log.contains(&format!("127.0.0.1:{}", backend.port)), "{log}");
}

#[test]
fn a_misspelt_option_and_a_misplaced_address_get_a_hint() {
    fails_with(
        &["--max-conections", "5", "7000", "127.0.0.1", "80"],
        "did you mean '--max-connections'?",
    );
    let err = fails_with(&["127.0.0.1", "25001", "25112"], "use --bind 127.0.0.1");
    assert!(
        err.contains("expected: portfwd [OPTIONS] PORT HOSTNAME HOST_PORT"),
        "{err}"
    );
}

/// Starts `portfwd --bind 127.0.0.1 PORT TARGET` on a fresh port, TARGET in the HOST:PORT form.
fn start_with_target(target: &str) -> Forwarder {
    retry_ports(|| {
        let port = free_port();
        let args = ["--bind", "127.0.0.1", &port.to_string(), target].map(String::from);
        Forwarder::spawn(BIN, &args, port)
    })
    .unwrap_or_else(|e| panic!("portfwd with target {target} did not start: {e}"))
}

#[test]
fn host_colon_port_target_forwards() {
    let backend = Backend::start(echo);
    let fwd = start_with_target(&format!("127.0.0.1:{}", backend.port));
    let mut s = fwd.connect();
    round_trip(&mut s, b"through 127.0.0.1:PORT");

    if !ipv6_loopback() {
        return skip("the [::1]:PORT target: no IPv6 loopback here");
    }
    let v6 = Backend::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, 0)), echo).unwrap();
    let fwd = start_with_target(&format!("[::1]:{}", v6.port));
    let mut s = fwd.connect();
    round_trip(&mut s, b"through [::1]:PORT");
}

#[test]
fn man_page_and_completions() {
    let out = run(&["--man"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(man.lines().any(|l| l.starts_with(".TH portfwd 1")), "{man}");

    let out = run(&["--completions", "bash"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("complete -F"), "{script}");
    // bash -n reads the script from stdin and only parses it.
    let mut bash = Command::new("bash")
        .arg("-n")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bash");
    bash.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let checked = bash.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "bash rejects the completion script: {}",
        String::from_utf8_lossy(&checked.stderr)
    );

    // --man prints the page and nothing else: it takes no other argument.
    fails_with(&["--man", "1", "h", "2"], "--man");
}
