//! Comparison with the course's original C server (the C reference, built by the harness) and the
//! seed's two test cases, through the harness's comparison suite and load test.
//!
//! The suite runs once (both servers, every scenario) and the tests below read its typed results:
//! portfwd's documented behaviour, identical bytes from both servers wherever both are meant to
//! work, and — so the harness is known to see leaks and hangs at all — the reference's documented
//! defects.
//!
//! Why a test binary of its own, with its own `main` (`harness = false` in Cargo.toml):
//! * the load test's worker and echo-backend processes are this program run again with `--role`
//!   (a process can hold only so many sockets), which only a `main` of our own can answer;
//! * this process must be the reaper of what the C reference leaks by design (it never reaps
//!   its children), and being a subreaper is process-wide: it would change where the daemons and
//!   orphans of the integration tests go, which those tests check.

use harness::compare::{self, Obs, Report, ScenarioId, ScenarioId::*};
use harness::launch::{Kind, Spec};
use harness::{procs, reference, serial};
use libtest_mimic::{Arguments, Trial};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

const PORTFWD: &str = env!("CARGO_BIN_EXE_portfwd");

fn main() -> ExitCode {
    harness::load::serve_role();
    procs::set_subreaper();
    let tests: [(&str, fn()); 8] = [
        (
            "portfwd_behaves_as_documented_in_every_scenario",
            portfwd_behaves_as_documented_in_every_scenario,
        ),
        (
            "both_servers_deliver_identical_bytes_where_both_work",
            both_servers_deliver_identical_bytes_where_both_work,
        ),
        (
            "seed_case2_requests_responses_and_fin_sequence",
            seed_case2_requests_responses_and_fin_sequence,
        ),
        (
            "portfwd_half_close_reset_and_eof_are_passed_on",
            portfwd_half_close_reset_and_eof_are_passed_on,
        ),
        (
            "portfwd_leaks_nothing_after_200_short_connections",
            portfwd_leaks_nothing_after_200_short_connections,
        ),
        (
            "server_speaks_first_needs_accept_dispatch",
            server_speaks_first_needs_accept_dispatch,
        ),
        ("harness_sees_the_reference_defects", harness_sees_the_reference_defects),
        ("load_1000_clients_through_portfwd", load_1000_clients_through_portfwd),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, test)| {
            Trial::test(name, move || {
                test();
                Ok(())
            })
        })
        .collect();
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}

/// Runs the whole suite once, both servers, every scenario.
fn suite() -> &'static Report {
    static REPORT: OnceLock<Report> = OnceLock::new();
    REPORT.get_or_init(|| {
        // Heavy runs (the suite, the load test) take turns: the machine has 2 cores and hang
        // detection works with time-outs.
        let _turn = serial();
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("reference/server");
        let reference = reference::build(&out).expect("build the C reference with cc -fopenmp");
        let specs = vec![Spec::reference(reference), Spec::portfwd(PORTFWD.into())];
        compare::run(specs, &[], Duration::from_millis(2500), compare::print_progress)
    })
}

fn get(id: ScenarioId, kind: Kind) -> &'static Obs {
    suite()
        .get(id, kind)
        .unwrap_or_else(|| panic!("no result for {} / {kind:?}", id.name()))
}

/// The digest of what `kind` delivered in `id`; every scenario asked for has one.
fn digest(id: ScenarioId, kind: Kind) -> u64 {
    get(id, kind)
        .digest
        .unwrap_or_else(|| panic!("no digest for {} / {kind:?}", id.name()))
}

fn portfwd_behaves_as_documented_in_every_scenario() {
    let failed: Vec<&str> = compare::SCENARIOS
        .iter()
        .filter(|s| !get(s.id, Kind::Portfwd).ok)
        .map(|s| s.name)
        .collect();
    assert!(failed.is_empty(), "portfwd not as documented in: {failed:?}");
}

fn both_servers_deliver_identical_bytes_where_both_work() {
    for s in [
        HttpTwoMappings,
        SeedCase2,
        Echo1Mib,
        Echo100Concurrent,
        Short200,
        ServerSpeaksFirst,
    ] {
        assert_eq!(
            digest(s, Kind::Portfwd),
            digest(s, Kind::Reference),
            "{}: bytes differ",
            s.name()
        );
    }
    for s in [HttpTwoMappings, SeedCase2, Echo1Mib, Echo100Concurrent] {
        assert_eq!(
            get(s, Kind::Reference).bytes_ok,
            Some(true),
            "{}: reference bytes",
            s.name()
        );
        assert_eq!(
            get(s, Kind::Portfwd).bytes_ok,
            Some(true),
            "{}: portfwd bytes",
            s.name()
        );
    }
}

fn seed_case2_requests_responses_and_fin_sequence() {
    // Two backends on 127.0.0.52:8008 / 127.0.0.53:8009 behind 127.0.0.41:8005/8006, client on
    // 127.0.0.44: bytes identical, and the backend's FIN reaches the client.
    let p = get(SeedCase2, Kind::Portfwd);
    assert_eq!(p.bytes_ok, Some(true));
    assert_eq!(p.client_eof, Some(true));
    assert_eq!(p.backend_eof, Some(true));
    // The seed's Figure 4: the original holds the server's FIN (the client never sees EOF), but
    // passes the client's FIN on once the client closes.
    let r = get(SeedCase2, Kind::Reference);
    assert_eq!(r.client_eof, Some(false));
    assert_eq!(r.backend_eof, Some(true));
}

fn portfwd_half_close_reset_and_eof_are_passed_on() {
    let p = |id| get(id, Kind::Portfwd);
    assert_eq!(p(ClientHalfClose).backend_eof, Some(true));
    assert_eq!(p(ClientHalfClose).client_eof, Some(true));
    assert_eq!(p(ServerClosesFirst).client_eof, Some(true));
    assert_eq!(p(BackendReset).client_reset, Some(true));
    assert_eq!(p(BackendReset).bytes_ok, Some(true));
    assert_eq!(p(BackendDown).client_closed, Some(true));
    assert_eq!(p(BackendDown).alive, Some(true));
}

fn portfwd_leaks_nothing_after_200_short_connections() {
    let l = get(Short200, Kind::Portfwd).leftovers.expect("short_200 leftovers");
    assert_eq!(l.echoed, 200);
    assert_eq!(l.zombies, 0);
    assert_eq!(l.processes, 0);
    assert_eq!(l.fd_delta, 0);
    assert_eq!(l.backend_open, 0);
}

fn server_speaks_first_needs_accept_dispatch() {
    assert_eq!(get(ServerSpeaksFirst, Kind::Portfwd).banner_first, Some(false));
    assert_eq!(get(ServerSpeaksFirst, Kind::Portfwd).bytes_ok, Some(true));
    assert_eq!(get(ServerSpeaksFirstAccept, Kind::Portfwd).banner_first, Some(true));
    assert_eq!(get(ServerSpeaksFirstAccept, Kind::Portfwd).bytes_ok, Some(true));
}

/// The harness must see the original's documented defects, or its clean portfwd results would
/// mean nothing.
fn harness_sees_the_reference_defects() {
    let l = get(Short200, Kind::Reference).leftovers.expect("short_200 leftovers");
    assert_eq!(l.echoed, 200);
    assert!(l.zombies >= 150, "reference zombies: {}", l.zombies);
    assert!(l.processes >= 150, "reference leftover processes: {}", l.processes);
    assert!(l.fd_delta >= 150, "reference main fds: {}", l.fd_delta);
    let r = |id| get(id, Kind::Reference);
    assert_eq!(r(ClientHalfClose).backend_eof, Some(false));
    assert_eq!(r(ServerClosesFirst).client_eof, Some(false));
    assert_eq!(r(BackendDown).client_closed, Some(false));
    assert_eq!(r(BackendReset).client_reset, Some(false));
    assert!(r(ServerSpeaksFirstAccept).na);
}

/// The seed's case 1 at CI size: 1,000 echo clients ramped every 2 ms, 10 µs between requests,
/// held 2 s.
fn load_1000_clients_through_portfwd() {
    let _turn = serial();
    let args = harness::load::Args {
        forwarder: Some(PORTFWD.into()),
        label: "portfwd".into(),
        clients: 1000,
        hold_secs: 2,
        max_secs: 120,
        ..harness::load::Args::defaults()
    };
    let s = harness::load::run(&args).unwrap_or_else(|e| panic!("load run failed: {e}"));
    eprintln!("{}", s.kv_line());
    assert!(!s.cut_short);
    assert_eq!(s.clients, 1000);
    assert_eq!(s.held, 1000, "connections held at the end");
    assert_eq!(s.served, 1000, "connections that got replies");
    assert_eq!(s.never_answered, 0);
    assert_eq!(s.errors, 0);
    assert!(s.answered >= 2000, "requests answered: {}", s.answered);
}
