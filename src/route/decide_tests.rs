//! Tests of [`decide`] and of the conditions' verdicts on whole streams, fed a byte at a time, and
//! property tests: no input panics, and answers never change once given.

use super::tls::tests::{hello, hello_message, records, sni_ext};
use super::*;
use proptest::prelude::*;

fn routes(whens: &[&str]) -> Vec<Condition> {
    whens.iter().map(|w| Condition::parse(w).unwrap()).collect()
}

/// The issue's example listener.
fn example() -> Vec<Condition> {
    routes(&[
        "ssh",
        "tls:*.example.com",
        "tls",
        "http:intranet.example.com",
        "http",
        "timeout:3",
    ])
}

/// Feeds `bytes` a byte at a time: every proper prefix must say `NeedMore`, the whole `want`.
fn fed(conditions: &[Condition], bytes: &[u8], want: Decision) {
    for n in 0..bytes.len() {
        assert_eq!(
            decide(conditions, &bytes[..n], false),
            Decision::NeedMore,
            "after {n} of {} bytes",
            bytes.len()
        );
    }
    assert_eq!(decide(conditions, bytes, false), want);
}

#[test]
fn the_issue_example_routes_each_protocol() {
    let r = example();
    fed(&r, b"SSH-", Decision::Route(0));
    assert_eq!(decide(&r, b"SSH-2.0-OpenSSH_9.6\r\n", false), Decision::Route(0));
    fed(&r, &captured::openssl_client_hello(), Decision::Route(1));
    fed(&r, &captured::curl_tls13_client_hello(), Decision::Route(1));
    fed(&r, &captured::openssl_two_record_client_hello(), Decision::Route(1));
    fed(&r, &hello("www.example.org"), Decision::Route(2));
    fed(&r, &hello("example.com"), Decision::Route(2));
    fed(&r, &records(&hello_message(&[], 4), 16384), Decision::Route(2));
    fed(
        &r,
        b"GET / HTTP/1.1\r\nHost: Intranet.Example.com:443\r\n\r\n",
        Decision::Route(3),
    );
    // `http` comes after `http:intranet...`, so it waits for the end of the headers too.
    fed(
        &r,
        b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
        Decision::Route(4),
    );
    fed(&r, b"GET / HTTP/1.0\r\n\r\n", Decision::Route(4));
    // Bytes that none of them can start: no route at once; `timeout:` is the timer's.
    assert_eq!(decide(&r, b"\0", false), Decision::NoMatch);
    assert_eq!(decide(&r, b"\x16\x03\x05", false), Decision::NoMatch);
    assert_eq!(decide(&r, b"EHLO x\r\n", false), Decision::NoMatch);
    assert_eq!(timeout_route(&r), Some((5, Duration::from_secs(3))));
}

#[test]
fn a_later_route_waits_for_every_earlier_one_to_fail() {
    let r = routes(&["ssh", "any"]);
    assert_eq!(decide(&r, b"", false), Decision::NeedMore);
    assert_eq!(decide(&r, b"S", false), Decision::NeedMore);
    assert_eq!(decide(&r, b"SSH", false), Decision::NeedMore);
    assert_eq!(decide(&r, b"SSH-", false), Decision::Route(0));
    assert_eq!(decide(&r, b"SSX", false), Decision::Route(1));
    assert_eq!(decide(&r, b"x", false), Decision::Route(1));
    // At EOF nothing more can make `ssh` match.
    assert_eq!(decide(&r, b"SSH", true), Decision::Route(1));
    assert_eq!(decide(&r, b"", true), Decision::Route(1));

    // A TLS route before `any` holds the decision until the ClientHello is whole.
    let r = routes(&["tls:a.example", "any"]);
    let bytes = hello("a.example");
    fed(&r, &bytes, Decision::Route(0));
    fed(&r, &hello("b.example"), Decision::Route(1));
    assert_eq!(decide(&r, &bytes[..100], true), Decision::Route(1));
    assert_eq!(decide(&r, b"G", false), Decision::Route(1));
}

#[test]
fn eof_and_empty_input() {
    assert_eq!(decide(&routes(&["any"]), b"", false), Decision::NeedMore);
    assert_eq!(decide(&routes(&["any"]), b"", true), Decision::Route(0));
    assert_eq!(decide(&routes(&["any"]), b"x", false), Decision::Route(0));
    assert_eq!(decide(&example(), b"", false), Decision::NeedMore);
    assert_eq!(decide(&example(), b"", true), Decision::NoMatch);
    assert_eq!(decide(&example(), b"GET / HTTP/1.1\r\n", true), Decision::Route(4));
    assert_eq!(decide(&routes(&["timeout:1"]), b"", false), Decision::NoMatch);
    assert_eq!(decide(&[], b"x", false), Decision::NoMatch);
}

#[test]
fn prefixes() {
    let r = routes(&[r"prefix:\x00\x01", "prefix:HELO", r"prefix:\\"]);
    fed(&r, b"\x00\x01", Decision::Route(0));
    assert_eq!(decide(&r, b"\x00\x01rest", false), Decision::Route(0));
    fed(&r, b"HELO", Decision::Route(1));
    assert_eq!(decide(&r, b"HEL", false), Decision::NeedMore);
    assert_eq!(decide(&r, b"HEL", true), Decision::NoMatch);
    assert_eq!(decide(&r, b"HELP", false), Decision::NoMatch);
    assert_eq!(decide(&r, b"\\", false), Decision::Route(2));
    assert_eq!(decide(&r, b"\x00\x02", false), Decision::NoMatch);
}

#[test]
fn ssh_banners() {
    let r = routes(&["ssh"]);
    for banner in [&b"SSH-2.0-OpenSSH_9.6p1 Debian-3\r\n"[..], b"SSH-1.99-x\r\n", b"SSH-"] {
        assert_eq!(decide(&r, banner, false), Decision::Route(0));
    }
    for other in [&b"ssh-2.0"[..], b"SSH_", b"xSSH-", b"\x16\x03\x01"] {
        assert_eq!(decide(&r, other, false), Decision::NoMatch, "{other:?}");
    }
}

#[test]
fn the_peek_limit_ends_waiting() {
    // A request line that never ends: `http` waits up to the limit, then fails, and the fallback
    // is taken.
    let mut bytes = b"GET /".to_vec();
    bytes.resize(PEEK_LIMIT, b'a');
    let r = routes(&["http", "any"]);
    assert_eq!(decide(&r, &bytes[..PEEK_LIMIT - 1], false), Decision::NeedMore);
    assert_eq!(decide(&r, &bytes, false), Decision::Route(1));
    bytes.extend_from_slice(b" HTTP/1.1\r\n\r\n");
    assert_eq!(
        decide(&r, &bytes, false),
        Decision::Route(1),
        "bytes past the limit are not looked at"
    );

    // Headers that do not fit.
    let mut req = b"GET / HTTP/1.1\r\nX: ".to_vec();
    req.resize(PEEK_LIMIT, b'v');
    let r = routes(&["http:a.example", "http"]);
    assert_eq!(decide(&r, &req[..PEEK_LIMIT - 1], false), Decision::NeedMore);
    assert_eq!(decide(&r, &req, false), Decision::Route(1));

    // A ClientHello as large as fits is read whole, in one record or two; one byte larger
    // cannot fit, which its handshake header already shows.
    let pad = |n: usize| hello_message(&[sni_ext(&["big.example"]), (21, vec![0; n])], 1);
    let base = pad(0).len();
    for (size, fragment) in [(PEEK_LIMIT - 5, 16384), (PEEK_LIMIT - 10, 8192)] {
        let fits = records(&pad(size - base), fragment);
        assert_eq!(fits.len(), PEEK_LIMIT);
        assert_eq!(sni(&fits).as_deref(), Some("big.example"));
        fed(&routes(&["tls:big.example"]), &fits, Decision::Route(0));
    }
    let too_big = records(&pad(PEEK_LIMIT - 5 - base + 1), 16384);
    assert_eq!(decide(&routes(&["tls"]), &too_big[..8], false), Decision::NeedMore);
    assert_eq!(decide(&routes(&["tls"]), &too_big[..9], false), Decision::NoMatch);
}

#[test]
fn sni_for_the_log() {
    assert_eq!(
        sni(&captured::openssl_client_hello()).as_deref(),
        Some("www.example.com")
    );
    assert_eq!(
        sni(&captured::curl_tls13_client_hello()).as_deref(),
        Some("intranet.example.com")
    );
    assert_eq!(
        sni(&captured::openssl_two_record_client_hello()).as_deref(),
        Some("split.example.com")
    );
    assert_eq!(sni(&hello("MiXed.Example")).as_deref(), Some("mixed.example"));
    assert_eq!(sni(&hello("a\"b")), None);
    assert_eq!(sni(b"GET / HTTP/1.1\r\n\r\n"), None);
    let bytes = captured::openssl_client_hello();
    assert_eq!(sni(&bytes[..bytes.len() - 1]), None);
}

#[test]
fn timeout_route_takes_the_shortest() {
    assert_eq!(timeout_route(&routes(&["ssh", "any"])), None);
    let r = routes(&["timeout:5", "ssh", "timeout:0.5", "timeout:0.5"]);
    assert_eq!(timeout_route(&r), Some((2, Duration::from_millis(500))));
}

#[test]
fn routes_that_can_never_be_chosen() {
    assert_eq!(check_routes(&example()), Ok(()));
    assert_eq!(check_routes(&routes(&["timeout:1", "any"])), Ok(()));
    assert_eq!(check_routes(&routes(&["any", "timeout:1"])), Ok(()));
    assert_eq!(check_routes(&routes(&["tls:a.b", "tls"])), Ok(()));
    assert_eq!(check_routes(&routes(&["prefix:SSH-2", "ssh"])), Ok(()));
    for (whens, at, want) in [
        (
            &["any", "ssh"][..],
            1,
            "'when=ssh' can never be chosen: 'when=any' comes before it",
        ),
        (
            &["tls", "tls:a.b"],
            1,
            "'when=tls:a.b' can never be chosen: 'when=tls' comes before it",
        ),
        (&["http", "ssh", "http:a.b"], 2, "'when=http' comes before it"),
        (&["ssh", "ssh"], 1, "'when=ssh' comes before it"),
        (&["ssh", "prefix:SSH-2"], 1, "'when=ssh' comes before it"),
        (&["prefix:SS", "ssh"], 1, "'when=prefix:SS' comes before it"),
        (&["prefix:ab", "prefix:abc"], 1, "can never be chosen"),
        (&["timeout:1", "ssh", "timeout:2"], 2, "only one 'when=timeout:' route"),
    ] {
        let (i, err) = check_routes(&routes(whens)).unwrap_err();
        assert_eq!(i, at, "{whens:?}");
        assert!(err.contains(want), "{whens:?}: {err}");
    }
}

fn condition() -> impl Strategy<Value = Condition> {
    let pattern = prop::sample::select(vec!["a.example", "*.example", "www.example.com", "*.example.com"]);
    prop_oneof![
        Just(Condition::Any),
        Just(Condition::Ssh),
        Just(Condition::Tls(None)),
        Just(Condition::Http(None)),
        pattern
            .clone()
            .prop_map(|p| Condition::Tls(Some(HostPattern::parse(p).unwrap()))),
        pattern.prop_map(|p| Condition::Http(Some(HostPattern::parse(p).unwrap()))),
        prop::collection::vec(any::<u8>(), 1..4).prop_map(Condition::Prefix),
        prop::sample::select(vec![&b"GET"[..], b"\x16\x03", b"SSH-2.0"]).prop_map(|p| Condition::Prefix(p.to_vec())),
        Just(Condition::Timeout(Duration::from_secs(1))),
    ]
}

/// Streams near the ones the matchers read (so that mutations reach deep into their parsers),
/// and arbitrary bytes.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let seeds = vec![
        captured::openssl_client_hello(),
        captured::curl_tls13_client_hello(),
        captured::openssl_two_record_client_hello(),
        hello("a.example"),
        records(
            &hello_message(&[sni_ext(&["www.example.com"]), (21, vec![0; 30])], 3),
            7,
        ),
        b"GET / HTTP/1.1\r\nHost: a.example:80\r\nAccept: */*\r\n\r\n".to_vec(),
        b"GET http://www.example.com/ HTTP/1.0\nHost: [::1]\n\n".to_vec(),
        b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(),
    ];
    let mutated = (
        prop::sample::select(seeds),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(mut bytes, edits, cut)| {
            for (at, b) in edits {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            let keep = cut.index(bytes.len() + 1);
            bytes.truncate(keep.max(bytes.len() * 3 / 4));
            bytes
        });
    prop_oneof![mutated, prop::collection::vec(any::<u8>(), 0..200)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn answers_never_change_once_given(conditions in prop::collection::vec(condition(), 0..6), bytes in stream()) {
        let mut settled: Option<(usize, Decision)> = None;
        let mut verdicts: Vec<Option<Verdict>> = vec![None; conditions.len()];
        for n in 0..=bytes.len() {
            let prefix = &bytes[..n];
            let d = decide(&conditions, prefix, false);
            if let Some((at, first)) = settled {
                prop_assert_eq!(d, first, "decided at {} bytes, changed at {}", at, n);
            } else if d != Decision::NeedMore {
                settled = Some((n, d));
            }
            for (c, seen) in conditions.iter().zip(verdicts.iter_mut()) {
                let v = c.verdict(prefix, false);
                if let Some(first) = *seen {
                    prop_assert_eq!(v, first, "{} changed its verdict at {} bytes", c, n);
                } else if v != Verdict::NeedMore {
                    *seen = Some(v);
                }
                // At EOF nothing is left undecided.
                prop_assert_ne!(c.verdict(prefix, true), Verdict::NeedMore);
            }
            prop_assert_ne!(decide(&conditions, prefix, true), Decision::NeedMore);
            let _ = sni(prefix);
        }
    }

    #[test]
    fn matchers_take_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let _ = tls::client_hello(&bytes, PEEK_LIMIT);
        let _ = http::request(&bytes);
        let _ = sni(&bytes);
        for c in example() {
            let _ = c.verdict(&bytes, false);
            let _ = c.verdict(&bytes, true);
        }
    }

    #[test]
    fn parse_takes_any_text_and_display_parses_back(text in ".{0,20}", kind in prop::sample::select(vec!["", "tls:", "http:", "prefix:", "timeout:"])) {
        let text = format!("{kind}{text}");
        if let Ok(c) = Condition::parse(&text) {
            prop_assert_eq!(Condition::parse(&c.to_string()), Ok(c));
        }
    }
}
