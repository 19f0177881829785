//! Comparison with the course's original C server (tests/reference/server.c)
//! and the seed's two test cases, through the `portfwd-compare` and
//! `portfwd-load` binaries (which run each forwarder in its own process group
//! and reap what it leaves behind).
//!
//! The suite runs once (both servers, every scenario) and the tests below read
//! its measured results: portfwd's documented behaviour, identical bytes from
//! both servers wherever both are meant to work, and — so the harness is known
//! to see leaks and hangs at all — the reference's documented defects.

#[path = "../src/bin/fwdkit/mod.rs"]
mod fwdkit;

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// Heavy runs (the suite, the load test) take turns: the machine has 2 cores
/// and hang detection works with time-outs.
static HEAVY: Mutex<()> = Mutex::new(());

type Results = HashMap<(String, String), HashMap<String, String>>;

fn reference_binary() -> String {
    let root = fwdkit::manifest_dir();
    let out = fwdkit::default_reference_path(&root);
    fwdkit::build_reference(&root, &out).expect("build the C reference with cc -fopenmp");
    out.to_string_lossy().into_owned()
}

/// Runs the whole suite once; (scenario, kind) -> fields.
fn suite() -> &'static Results {
    static RESULTS: OnceLock<Result<Results, String>> = OnceLock::new();
    let r = RESULTS.get_or_init(|| {
        let _turn = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
        let out = Command::new(env!("CARGO_BIN_EXE_portfwd-compare"))
            .args(["--format", "both", "--wait-ms", "2500", "--reference"])
            .arg(reference_binary())
            .arg("--portfwd")
            .arg(env!("CARGO_BIN_EXE_portfwd"))
            .output()
            .expect("run portfwd-compare");
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let mut results = Results::new();
        for line in stdout.lines().filter(|l| l.starts_with("RESULT ")) {
            let fields: HashMap<String, String> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
                .collect();
            results.insert((fields["scenario"].clone(), fields["kind"].clone()), fields);
        }
        if results.is_empty() {
            return Err(format!("portfwd-compare printed no results ({})", out.status));
        }
        Ok(results)
    });
    r.as_ref().unwrap_or_else(|e| panic!("{e}"))
}

fn get<'a>(scenario: &str, kind: &str) -> &'a HashMap<String, String> {
    suite()
        .get(&(scenario.to_string(), kind.to_string()))
        .unwrap_or_else(|| panic!("no result for {scenario} / {kind}"))
}

fn field<'a>(scenario: &str, kind: &str, key: &str) -> &'a str {
    get(scenario, kind)
        .get(key)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("no {key} for {scenario} / {kind}"))
}

const ALL: &[&str] = &[
    "http_two_mappings",
    "seed_case2",
    "echo_1mib",
    "echo_100_concurrent",
    "client_half_close",
    "server_closes_first",
    "backend_down",
    "backend_reset",
    "short_200",
    "server_speaks_first",
    "server_speaks_first_accept",
];

#[test]
fn portfwd_behaves_as_documented_in_every_scenario() {
    let failed: Vec<&str> = ALL
        .iter()
        .copied()
        .filter(|s| field(s, "portfwd", "ok") != "true")
        .collect();
    assert!(failed.is_empty(), "portfwd not as documented in: {failed:?}");
}

#[test]
fn both_servers_deliver_identical_bytes_where_both_work() {
    for s in [
        "http_two_mappings",
        "seed_case2",
        "echo_1mib",
        "echo_100_concurrent",
        "short_200",
        "server_speaks_first",
    ] {
        assert_eq!(
            field(s, "portfwd", "digest"),
            field(s, "reference", "digest"),
            "{s}: bytes differ"
        );
    }
    for s in ["http_two_mappings", "seed_case2", "echo_1mib", "echo_100_concurrent"] {
        assert_eq!(field(s, "reference", "bytes_ok"), "true", "{s}: reference bytes");
        assert_eq!(field(s, "portfwd", "bytes_ok"), "true", "{s}: portfwd bytes");
    }
}

#[test]
fn seed_case2_requests_responses_and_fin_sequence() {
    // Two backends on 127.0.0.52:8008 / 127.0.0.53:8009 behind 127.0.0.41:8005/8006,
    // client on 127.0.0.44: bytes identical, and the backend's FIN reaches the client.
    assert_eq!(field("seed_case2", "portfwd", "bytes_ok"), "true");
    assert_eq!(field("seed_case2", "portfwd", "client_eof"), "true");
    assert_eq!(field("seed_case2", "portfwd", "backend_eof"), "true");
    // The seed's Figure 4: the original holds the server's FIN (the client
    // never sees EOF), but passes the client's FIN on once the client closes.
    assert_eq!(field("seed_case2", "reference", "client_eof"), "false");
    assert_eq!(field("seed_case2", "reference", "backend_eof"), "true");
}

#[test]
fn portfwd_half_close_reset_and_eof_are_passed_on() {
    assert_eq!(field("client_half_close", "portfwd", "backend_eof"), "true");
    assert_eq!(field("client_half_close", "portfwd", "client_eof"), "true");
    assert_eq!(field("server_closes_first", "portfwd", "client_eof"), "true");
    assert_eq!(field("backend_reset", "portfwd", "client_reset"), "true");
    assert_eq!(field("backend_reset", "portfwd", "bytes_ok"), "true");
    assert_eq!(field("backend_down", "portfwd", "client_closed"), "true");
    assert_eq!(field("backend_down", "portfwd", "alive"), "true");
}

#[test]
fn portfwd_leaks_nothing_after_200_short_connections() {
    assert_eq!(field("short_200", "portfwd", "echoed"), "200");
    assert_eq!(field("short_200", "portfwd", "zombies"), "0");
    assert_eq!(field("short_200", "portfwd", "leftover"), "0");
    assert_eq!(field("short_200", "portfwd", "fd_delta"), "0");
    assert_eq!(field("short_200", "portfwd", "backend_open"), "0");
}

#[test]
fn server_speaks_first_needs_accept_dispatch() {
    assert_eq!(field("server_speaks_first", "portfwd", "banner_first"), "false");
    assert_eq!(field("server_speaks_first", "portfwd", "bytes_ok"), "true");
    assert_eq!(field("server_speaks_first_accept", "portfwd", "banner_first"), "true");
    assert_eq!(field("server_speaks_first_accept", "portfwd", "bytes_ok"), "true");
}

/// The harness must see the original's documented defects, or its clean
/// portfwd results would mean nothing.
#[test]
fn harness_sees_the_reference_defects() {
    let n = |k: &str| field("short_200", "reference", k).parse::<i64>().expect(k);
    assert_eq!(n("echoed"), 200);
    assert!(n("zombies") >= 150, "reference zombies: {}", n("zombies"));
    assert!(n("leftover") >= 150, "reference leftover processes: {}", n("leftover"));
    assert!(n("fd_delta") >= 150, "reference main fds: {}", n("fd_delta"));
    assert_eq!(field("client_half_close", "reference", "backend_eof"), "false");
    assert_eq!(field("server_closes_first", "reference", "client_eof"), "false");
    assert_eq!(field("backend_down", "reference", "client_closed"), "false");
    assert_eq!(field("backend_reset", "reference", "client_reset"), "false");
    assert_eq!(field("server_speaks_first_accept", "reference", "na"), "true");
}

/// The seed's case 1 at CI size: 1,000 echo clients ramped every 2 ms,
/// 10 µs between requests, held 2 s.
#[test]
fn load_1000_clients_through_portfwd() {
    let _turn = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(env!("CARGO_BIN_EXE_portfwd-load"))
        .args([
            "--clients",
            "1000",
            "--hold-secs",
            "2",
            "--max-secs",
            "120",
            "--kv",
            "--label",
            "portfwd",
        ])
        .arg("--forwarder")
        .arg(env!("CARGO_BIN_EXE_portfwd"))
        .output()
        .expect("run portfwd-load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "portfwd-load failed");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("SUMMARY "))
        .expect("SUMMARY line");
    let f: HashMap<&str, &str> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let n = |k: &str| f[k].parse::<u64>().expect(k);
    assert_eq!(f["cut_short"], "false");
    assert_eq!(n("clients"), 1000);
    assert_eq!(n("held"), 1000, "connections held at the end");
    assert_eq!(n("served"), 1000, "connections that got replies");
    assert_eq!(n("never_answered"), 0);
    assert_eq!(n("errors"), 0);
    assert!(n("answered") >= 2000, "requests answered: {}", n("answered"));
}
