//! Properties of the parser: no input makes it panic, what parses prints back, the linear overlap
//! check agrees with the pairwise rule.

use super::line::parse_line;
use super::shown::invisible;
use super::*;
use proptest::prelude::*;

/// Lines built from the pieces the grammar cares about, so that inputs get past the first
/// checks and reach every branch, mixed with arbitrary text.
fn line() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("->".to_string()),
        Just("-".to_string()),
        Just(":".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("#".to_string()),
        Just("=".to_string()),
        Just(" ".to_string()),
        Just("\t".to_string()),
        Just("::1".to_string()),
        Just("127.0.0.1".to_string()),
        Just("dispatch".to_string()),
        Just("allow".to_string()),
        Just("/".to_string()),
        "[0-9]{1,6}",
        "[a-z]{1,8}",
        any::<String>(),
        // Control characters and invisible ones, which `any::<String>()` never yields.
        "[\\x00-\\x08\\x0e-\\x1f\\x7f\\u{80}-\\u{84}\\u{86}-\\u{9f}\\u{200b}\\u{202e}\\u{feff}]{1,3}",
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|p| p.concat())
}

/// Listen addresses on a few ports: wildcards of both families, specific and IPv4-mapped ones.
fn bind() -> impl Strategy<Value = String> {
    let addr = prop::sample::select(vec![
        "",
        "0.0.0.0:",
        "127.0.0.1:",
        "127.0.0.2:",
        "[::]:",
        "[::1]:",
        "[::ffff:127.0.0.1]:",
        "[::ffff:0.0.0.0]:",
    ]);
    (addr, 1u16..=3).prop_map(|(a, p)| format!("{a}{p}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn the_overlap_check_is_the_pairwise_rule(binds in proptest::collection::vec(bind(), 0..12)) {
        // Reference: every line against each earlier line that was kept, naming the first that
        // overlaps (what the check did pairwise before it was made linear).
        // Lines on the very same address are one listener's routes: all but the first are
        // kept, and the first of them (each line here is `when=any`) is reported as one that
        // can never be chosen.
        let mut kept: Vec<Mapping> = Vec::new();
        let mut expected = Vec::new();
        let mut routed = Vec::new();
        for (i, b) in binds.iter().enumerate() {
            let mut m = parse_line(&format!("{b} -> h:1"), &Options::default()).unwrap().remove(0);
            m.line = i + 1;
            match kept.iter().find(|p| p.overlaps(&m)) {
                Some(p) if p.bind == m.bind => {
                    if !routed.contains(&m.bind) {
                        routed.push(m.bind);
                        expected.push(format!(
                            "{}:1: {} is already used by line {} ({}): further lines on one address are routes, \
                             and this one (no when=, so when=any) can never be chosen",
                            m.line, m.bind, p.line, p.bind
                        ));
                    }
                    kept.push(m);
                }
                Some(p) => expected.push(format!("{}:1: {} is already used by line {} ({})", m.line, m.bind, p.line, p.bind)),
                None => kept.push(m),
            }
        }
        let text: Vec<String> = binds.iter().map(|b| format!("{b} -> h:1")).collect();
        let got: Vec<String> = match parse(&text.join("\n"), &Options::default()) {
            Ok(m) => {
                prop_assert_eq!(m.len(), kept.len());
                Vec::new()
            }
            Err(e) => e.iter().map(Error::to_string).collect(),
        };
        prop_assert_eq!(got, expected);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn no_input_makes_the_parser_panic(lines in proptest::collection::vec(line(), 0..6)) {
        let text = lines.join("\n");
        match parse(&text, &Options::default()) {
            Ok(mappings) => {
                // Whatever parses prints back to a line that parses to the same mapping.
                for m in mappings {
                    let again = parse(&m.canonical(), &Options::default()).expect("canonical parses");
                    prop_assert_eq!((again[0].bind, &again[0].backends), (m.bind, &m.backends));
                }
            }
            Err(errors) => {
                for e in errors {
                    prop_assert!(e.line >= 1 && e.col >= 1, "{e}");
                    prop_assert!(!e.message.is_empty());
                    // Words are echoed escaped: nothing that a terminal would act on.
                    prop_assert!(!e.message.chars().any(|c| c.is_control() || invisible(c)), "{e:?}");
                }
            }
        }
    }
}
