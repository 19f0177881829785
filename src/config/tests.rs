//! The parser, resolution and file reading on examples, each error with its line and column.

use super::read::read_capped;
use super::*;

/// Every error `parse` finds in `text`, as `LINE:COL: message` (also used by `grouping`'s tests).
pub(crate) fn errs(text: &str) -> Vec<String> {
    parse(text, &Options::default())
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn the_seeds_lines_and_the_extensions() {
    let text = "# comment\n\n7005 -> 192.168.0.1:8005\n   7006->192.168.0.2:8006   # trailing\n\
                127.0.0.1:7007 -> localhost:8007 dispatch=accept\n[::]:7008 -> [::1]:8008 allow=::1 deny=::/0\n";
    // Printed against this host's defaults, as --check-config does (its connection cap is the
    // host's).
    let m = parse(text, &Options::for_this_host()).unwrap();
    assert_eq!(m.len(), 4);
    assert_eq!(m[0].canonical(), "[::]:7005 -> 192.168.0.1:8005");
    assert_eq!(m[0].line, 3);
    assert_eq!(m[1].canonical(), "[::]:7006 -> 192.168.0.2:8006");
    assert_eq!(m[2].canonical(), "127.0.0.1:7007 -> localhost:8007 dispatch=accept");
    assert_eq!(m[3].canonical(), "[::]:7008 -> [::1]:8008 allow=::1/128 deny=::/0");
    // Canonical lines parse back to the same mappings.
    let again = parse(
        &m.iter().map(Mapping::canonical).collect::<Vec<_>>().join("\n"),
        &Options::for_this_host(),
    );
    let again = again.unwrap();
    for (a, b) in m.iter().zip(&again) {
        assert_eq!((a.bind, &a.backends, &a.options), (b.bind, &b.backends, &b.options));
    }
}

#[test]
fn several_targets_and_their_options() {
    let text = "7005 -> 10.0.0.1:8005, 10.0.0.2:8005, db.internal:8005 balance=roundrobin\n\
                7006 -> [::1]:1,  127.0.0.1:2 accept_proxy=on proxy_from=10.0.0.0/8 proxy_protocol=v1\n";
    // Printed against this host's defaults, as --check-config does.
    let m = parse(text, &Options::for_this_host()).unwrap();
    assert_eq!(
        m[0].canonical(),
        "[::]:7005 -> 10.0.0.1:8005, 10.0.0.2:8005, db.internal:8005 balance=roundrobin"
    );
    assert_eq!(m[0].backends.len(), 3);
    assert_eq!(
        m[1].canonical(),
        "[::]:7006 -> [::1]:1, 127.0.0.1:2 proxy_protocol=v1 accept_proxy=on proxy_from=10.0.0.0/8"
    );
    // Each target that does not resolve is located at its own column.
    let m = parse("7 -> localhost:1, no-such-host.invalid:2", &Options::default()).unwrap();
    let e = resolve(&m).unwrap_err();
    assert_eq!((e.len(), e[0].line, e[0].col), (1, 1, 19));
    assert_eq!(errs("7 -> a:1,"), ["1:10: missing 'HOST:PORT' after ','"]);
    assert_eq!(
        errs("7 -> a:1,b:2"),
        ["1:6: targets are separated by ', ' (a comma and a space): 'a:1,b:2'"]
    );
    assert_eq!(
        errs("7 -> a:1, dispatch=accept"),
        ["1:11: expected HOST:PORT after ',', found 'dispatch=accept'"]
    );
    assert_eq!(errs("7 -> a:1, b"), ["1:11: expected HOST:PORT after '->', found 'b'"]);
    let many: Vec<String> = (1..=17).map(|p| format!("h:{p}")).collect();
    assert_eq!(
        errs(&format!("7 -> {}", many.join(", "))),
        [format!("1:{}: more than 16 targets", 6 + 5 * 9 + 6 * 7)]
    );
    assert_eq!(
        errs("7 -> a:1 dispatch=accept accept_proxy=on"),
        ["1:26: accept_proxy=on needs proxy_from=CIDR (who may send the PROXY header)"]
    );
    // A line's proxy_from replaces the command line's; without one it inherits them.
    let mut base = Options::default();
    base.set("proxy_from", "10.0.0.1").unwrap();
    let m = parse("7 -> a:1 accept_proxy=on\n8 -> a:1 proxy_from=10.0.0.2", &base).unwrap();
    assert_eq!(m[0].options.proxy_from, base.proxy_from);
    assert_eq!(m[1].options.proxy_from.len(), 1);
    assert_ne!(m[1].options.proxy_from, base.proxy_from);
}

#[test]
fn every_error_kind_with_line_and_column() {
    assert_eq!(
        errs("7005 192.168.0.1:8005"),
        ["1:1: expected 'PORT -> HOST:PORT' (or 'ADDRESS:PORT -> HOST:PORT')"]
    );
    assert_eq!(errs("  0 -> h:1"), ["1:3: invalid port '0': must be from 1 to 65535"]);
    assert_eq!(
        errs("1 -> h:99999"),
        ["1:6: invalid port '99999': must be from 1 to 65535"]
    );
    assert_eq!(errs("1 -> h"), ["1:6: expected HOST:PORT after '->', found 'h'"]);
    assert_eq!(errs("1 ->"), ["1:3: missing 'HOST:PORT' after '->'"]);
    assert_eq!(errs(" -> h:1"), ["1:2: missing listen port before '->'"]);
    assert_eq!(
        errs("1 -> h:1 colour=red"),
        [
            "1:10: unknown option 'colour' (known: dispatch, connect_timeout, max_connections, max_per_source, first_byte_timeout, idle_timeout, keepalive, allow, deny, when, reuseport, max_rate, balance, max_fails, fail_timeout, proxy_protocol, accept_proxy, proxy_from, source, resolve)"
        ]
    );
    assert_eq!(
        errs("1 -> h:1 dispatch"),
        ["1:10: expected key=value, found 'dispatch'"]
    );
    assert_eq!(
        errs("1 -> h:1 dispatch=later"),
        ["1:10: invalid dispatch 'later': expected 'data' or 'accept'"]
    );
    assert_eq!(
        errs("1.2.3:7 -> h:1"),
        ["1:1: invalid listen address '1.2.3': expected an IP address"]
    );
    assert_eq!(
        errs("::1:7 -> h:1"),
        ["1:1: IPv6 listen address needs brackets: '[::1]:7'"]
    );
    assert_eq!(errs("7 -> ::1:8"), ["1:6: IPv6 target needs brackets: '[::1]:8'"]);
    assert_eq!(errs("x y -> h:1"), ["1:3: unexpected 'y' before '->'"]);
    assert_eq!(
        errs("7005 -> a:1\n7005 -> b:2"),
        [
            "2:1: [::]:7005 is already used by line 1 ([::]:7005): further lines on one address are routes, \
             and this one (no when=, so when=any) can never be chosen"
        ]
    );
    // An any-address listener overlaps a specific one on the same port, and vice versa.
    assert_eq!(errs("127.0.0.1:7 -> a:1\n7 -> b:2").len(), 1);
    assert_eq!(errs("0.0.0.0:7 -> a:1\n127.0.0.1:7 -> b:2").len(), 1);
    assert!(parse("0.0.0.0:7 -> a:1\n[::1]:7 -> b:2", &Options::default()).is_ok());
    assert!(parse("127.0.0.1:7 -> a:1\n127.0.0.2:7 -> b:2", &Options::default()).is_ok());
    // All errors at once.
    assert_eq!(errs("bad\n7 -> h:1\nworse\n0 -> h:1").len(), 3);
}

#[test]
fn port_ranges_map_port_by_port_or_many_to_one() {
    let lines = |text: &str| -> Vec<String> {
        // Printed against this host's defaults, as --check-config does.
        let m = parse(text, &Options::for_this_host()).unwrap();
        m.iter().map(|m| format!("{} {}", m.line, m.canonical())).collect()
    };
    assert_eq!(
        lines("# ranges\n7000-7002 -> h:8000-8002 idle_timeout=5"),
        [
            "2 [::]:7000 -> h:8000 idle_timeout=5",
            "2 [::]:7001 -> h:8001 idle_timeout=5",
            "2 [::]:7002 -> h:8002 idle_timeout=5"
        ]
    );
    assert_eq!(
        lines("127.0.0.1:7000-7001 -> [::1]:8000"),
        ["1 127.0.0.1:7000 -> [::1]:8000", "1 127.0.0.1:7001 -> [::1]:8000"]
    );
    assert_eq!(lines("[::1]:7-7 -> h:9-9"), ["1 [::1]:7 -> h:9"]);
    assert_eq!(parse("1-65535 -> h:1", &Options::default()).unwrap().len(), 65535);
}

#[test]
fn bad_port_ranges_are_located() {
    assert_eq!(
        errs("7000-7099 -> h:8000-8049"),
        ["1:14: port ranges of different lengths: 100 listen ports, 50 target ports"]
    );
    assert_eq!(
        errs("7000 -> h:8000-8001"),
        ["1:9: a range of 2 target ports needs a range of 2 listen ports"]
    );
    assert_eq!(
        errs("  127.0.0.1:7099-7000 -> h:1"),
        ["1:3: invalid port range '7099-7000': the first port is above the last"]
    );
    assert_eq!(
        errs("7 -> h:9-8"),
        ["1:6: invalid port range '9-8': the first port is above the last"]
    );
    assert_eq!(errs("7-x -> h:1"), ["1:1: invalid port 'x': not a number"]);
    assert_eq!(errs("0-3 -> h:1"), ["1:1: invalid port '0': must be from 1 to 65535"]);
    assert_eq!(errs("7-8-9 -> h:1"), ["1:1: invalid port '8-9': not a number"]);
    // Overlaps with other lines: one error for the line, at its first port that overlaps.
    assert_eq!(
        errs("7050 -> a:1\n\n  7000-7099 -> b:2"),
        ["3:3: [::]:7050 is already used by line 1 ([::]:7050)"]
    );
    assert_eq!(
        errs("127.0.0.1:7000-7099 -> a:1\n0.0.0.0:7099 -> b:2"),
        ["2:1: 0.0.0.0:7099 is already used by line 1 (127.0.0.1:7099)"]
    );
    // A line refused for an overlap is not kept: later lines are checked against the others.
    assert_eq!(
        errs("7005 -> a:1\n7000-7010 -> b:2\n7001 -> c:3\n7005 -> d:4"),
        [
            "2:1: [::]:7005 is already used by line 1 ([::]:7005)",
            // Two single-port lines on one address are routes of one listener (see grouping).
            "4:1: [::]:7005 is already used by line 1 ([::]:7005): further lines on one address are \
             routes, and this one (no when=, so when=any) can never be chosen"
        ]
    );
    assert!(
        parse(
            "127.0.0.1:7000-7099 -> a:1\n127.0.0.2:7000-7099 -> a:1",
            &Options::default()
        )
        .is_ok()
    );
}

#[test]
fn a_range_resolves_its_host_once_and_reports_it_once() {
    let m = parse(
        "7000-7002 -> localhost:8000-8002\n9-10 -> no-such-host.invalid:1",
        &Options::default(),
    )
    .unwrap();
    let e = resolve(&m).unwrap_err();
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!((e[0].line, e[0].col), (2, 9));
    let t = resolve(&m[..3]).unwrap();
    // One target each: its addresses' ports.
    let ports: Vec<Vec<u16>> = t.iter().map(|t| t[0].iter().map(|t| t.addr.port()).collect()).collect();
    assert!(
        ports
            .iter()
            .zip(8000..)
            .all(|(p, want)| !p.is_empty() && p.iter().all(|&p| p == want)),
        "{ports:?}"
    );
    assert_eq!(t[0].len(), t[2].len());
}

#[test]
fn targets_that_do_not_resolve_are_located() {
    let m = parse("7 -> localhost:1\n8 ->   no-such-host.invalid:2", &Options::default()).unwrap();
    let e = resolve(&m).unwrap_err();
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].line, e[0].col), (2, 8));
    assert!(e[0].message.contains("no-such-host.invalid"));
}

/// A fresh directory for one test's files (removed again by the test when it passes).
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("portfwd-config-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The start of a message that may be huge (for assertion output).
fn head(text: &str) -> String {
    text.chars().take(300).collect()
}

fn load_err(path: &std::path::Path) -> String {
    load(path.to_str().unwrap(), &Options::default()).unwrap_err()
}

#[test]
fn invalid_utf8_is_located_at_its_first_bad_byte() {
    let dir = scratch("utf8");
    let file = dir.join("latin1.config");
    std::fs::write(&file, b"7005 -> 127.0.0.1:8005\n7006 -> caf\xe9:80 # \xff\n").unwrap();
    let f = file.display();
    assert_eq!(
        load_err(&file),
        format!("{f}:2:12: invalid UTF-8 (byte \\xe9): the file must be UTF-8 text")
    );
    // A bad byte first on line 1, and a truncated sequence at the very end.
    std::fs::write(&file, b"\x80").unwrap();
    assert!(load_err(&file).starts_with(&format!("{f}:1:1: invalid UTF-8 (byte \\x80)")));
    std::fs::write(&file, b"1 -> h:1\n\n  \xe2\x82").unwrap();
    assert!(load_err(&file).starts_with(&format!("{f}:3:3: invalid UTF-8 (byte \\xe2)")));
    // Columns of line 1 count from after a byte order mark.
    std::fs::write(&file, b"\xef\xbb\xbf12\xff").unwrap();
    assert!(load_err(&file).starts_with(&format!("{f}:1:3: invalid UTF-8 (byte \\xff)")));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_leading_byte_order_mark_is_ignored() {
    let m = parse("\u{feff}7005 -> 127.0.0.1:8005\n", &Options::for_this_host()).unwrap();
    assert_eq!(m[0].canonical(), "[::]:7005 -> 127.0.0.1:8005");
    // Columns of line 1 count from after the mark, as an editor shows them.
    assert_eq!(
        errs("\u{feff}  0 -> h:1"),
        ["1:3: invalid port '0': must be from 1 to 65535"]
    );
    // Anywhere else it is not whitespace: it is shown, escaped, in the message.
    assert_eq!(
        errs("1 -> h:1\n\u{feff}2 -> h:1"),
        ["2:1: invalid port '\\u{feff}2': not a number"]
    );
}

#[test]
fn echoed_words_are_cut_and_escaped() {
    // Far longer than what is shown (the report's was 10 MB; nothing here depends on the size).
    let long = "x".repeat(100_000);
    for text in [
        format!("1 -> h:1 dispatch={long}"),
        format!("1 -> h:1 {long}=1"),
        format!("1 -> h:1 {long}"),
        format!("1 -> h:1 allow={long}"),
        format!("1 -> h:1 keepalive={long}"),
        format!("1 -> {long}"),
        format!("1 -> h:{long}"),
        format!("1 -> {long}:{long}"),
        format!("{long} -> h:1"),
        format!("1.2.3.4:{long} -> h:1"),
        format!("{long}:1 -> h:1"),
        format!("[{long}]:1 -> h:1"),
        format!("{long}:{long} -> h:1"),
        format!("x {long} -> h:1"),
    ] {
        let e = errs(&text);
        assert_eq!(e.len(), 1, "{}", head(&e[0]));
        assert!(
            e[0].len() < 400 && e[0].contains(&format!("{}…", "x".repeat(64))),
            "{}",
            head(&e[0])
        );
    }
    assert_eq!(
        errs("1 -> h:1 dispatch=a\x00b\x1b[31m\x7f\u{9b}\u{202e}"),
        ["1:10: invalid dispatch 'a\\x00b\\x1b[31m\\x7f\\u{9b}\\u{202e}': expected 'data' or 'accept'"]
    );
    assert_eq!(errs("\x01 -> h:1"), ["1:1: invalid port '\\x01': not a number"]);
    // Exactly 64 characters are shown whole.
    let word = "y".repeat(64);
    assert_eq!(
        errs(&format!("1 -> h:1 dispatch={word}")),
        [format!("1:10: invalid dispatch '{word}': expected 'data' or 'accept'")]
    );
    // A host that does not resolve is echoed the same way.
    let m = parse(&format!("1 -> a\x07{long}:1"), &Options::default()).unwrap();
    let e = resolve(&m).unwrap_err();
    assert!(
        e[0].message
            .starts_with(&format!("cannot resolve host 'a\\x07{}…'", "x".repeat(62))),
        "{}",
        head(&e[0].message)
    );
}

#[test]
fn only_regular_files_are_read() {
    let dir = scratch("special");
    let fifo = dir.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // Before the fix the open blocked until a writer came: wait a bounded time, then unblock it.
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.to_str().unwrap().to_string();
    let reader = std::thread::spawn(move || tx.send(load(&path, &Options::default())).unwrap());
    let got = rx.recv_timeout(std::time::Duration::from_secs(10));
    if got.is_err() {
        drop(std::fs::OpenOptions::new().write(true).open(&fifo));
    }
    reader.join().unwrap();
    let f = fifo.display();
    assert_eq!(
        got.expect("a FIFO blocked the read").unwrap_err(),
        format!("{f}: not a regular file (a FIFO)")
    );
    assert_eq!(
        load_err(&dir),
        format!("{}: not a regular file (a directory)", dir.display())
    );
    assert_eq!(
        load_err("/dev/zero".as_ref()),
        "/dev/zero: not a regular file (a character device)"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_file_name_that_is_not_utf8_is_opened() {
    use std::os::unix::ffi::OsStrExt;
    let dir = scratch("name");
    let file = dir.join(std::ffi::OsStr::from_bytes(b"caf\xe9.config"));
    std::fs::write(&file, "7005 -> 127.0.0.1:8005\n").unwrap();
    assert_eq!(load(&file, &Options::default()).unwrap().0.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn files_over_the_size_cap_are_refused() {
    let dir = scratch("cap");
    let file = dir.join("big.config");
    assert_eq!(MAX_FILE_BYTES, 16 << 20, "the documented cap");
    // A sparse file: refused by its size, nothing read.
    std::fs::File::create(&file)
        .unwrap()
        .set_len(MAX_FILE_BYTES as u64 + 1)
        .unwrap();
    let big = format!(
        "{}: larger than 16 MiB, the limit for a configuration file",
        file.display()
    );
    assert_eq!(load_err(&file), big);
    // The cap at a small scale: exactly the cap is read, one byte more is not.
    let line = "7005 -> 127.0.0.1:8005\n";
    std::fs::write(&file, line).unwrap();
    assert_eq!(read_capped(&file, line.len()).unwrap(), line);
    let over = format!(
        "{}: larger than {} bytes, the limit for a configuration file",
        file.display(),
        line.len() - 1
    );
    assert_eq!(read_capped(&file, line.len() - 1).unwrap_err(), over);
    // A file whose size says nothing (procfs: 0) is cut by what is read.
    let maps = std::path::Path::new("/proc/self/maps");
    assert_eq!(std::fs::metadata(maps).unwrap().len(), 0);
    assert!(
        read_capped(maps, 16)
            .unwrap_err()
            .ends_with("larger than 16 bytes, the limit for a configuration file")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_hundred_thousand_mappings_parse_and_check() {
    // Distinct listen addresses on every port (127.0.X.1 for X = 0, 1), then a line that
    // overlaps the very first one: the only error, so every line was parsed and checked.
    let mut text: String = (0..100_000)
        .map(|i| format!("127.0.{}.1:{} -> 127.0.0.1:80\n", i / 60_000, 1 + i % 60_000))
        .collect();
    text.push_str("0.0.0.0:1 -> 127.0.0.1:80\n");
    assert_eq!(
        errs(&text),
        ["100001:1: 0.0.0.0:1 is already used by line 1 (127.0.0.1:1)"]
    );
}

#[test]
fn a_listen_address_error_is_located_at_its_column() {
    // What a reload reports when a new line's port cannot be bound.
    let m = parse("7 -> h:1\n  127.0.0.1:8 -> h:1", &Options::default()).unwrap();
    let e = m[1].bind_error("cannot listen on 127.0.0.1:8: Address in use".into());
    assert_eq!(
        e.located("/etc/p\n.config"),
        "/etc/p\\x0a.config:2:3: cannot listen on 127.0.0.1:8: Address in use"
    );
}

#[test]
fn the_shipped_setup_config_is_valid() {
    let text = include_str!("../../setup.config");
    let m = parse(text, &Options::for_this_host()).unwrap();
    let lines: Vec<String> = m.iter().map(Mapping::canonical).collect();
    assert_eq!(
        lines,
        ["127.0.0.1:7005 -> 127.0.0.1:8005", "127.0.0.1:7006 -> 127.0.0.1:8006"]
    );
}
