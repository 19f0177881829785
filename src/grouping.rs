//! Lines of a configuration with the same listen address are one listener; its lines are its
//! routes, tried in file order (`when=` says what each matches, see `route`).
//!
//! The settings of the listener as a whole (dispatch, caps, the first-byte timeout, access rules,
//! and whether and from whom a PROXY header comes first: it is read before any route is chosen)
//! may be written on any of its lines but must not disagree; once checked, every line carries
//! them, so any line of a listener speaks for it. Per-route settings (the targets with their
//! balance, health, PROXY header sent and source address; timeouts, keepalive) stay with their
//! line. Main process (start-up and reload).

use crate::config::{Error, Mapping};
use crate::options::{Dispatch, Options, secs};
use crate::route::{self, Condition};
use std::collections::HashMap;
use std::net::SocketAddr;

/// The keys that belong to a listener rather than to one of its routes. `allow` and `deny` are
/// one setting, the list of rules, in order.
const LISTENER_KEYS: [&[&str]; 7] = [
    &["dispatch"],
    &["max_connections"],
    &["max_per_source"],
    &["first_byte_timeout"],
    &["allow", "deny"],
    &["accept_proxy"],
    &["proxy_from"],
];

/// Items grouped by listen address, in the order each address first appears, each group in its
/// items' order.
pub fn group<T>(items: Vec<T>, bind: impl Fn(&T) -> SocketAddr) -> Vec<Vec<T>> {
    let mut groups: Vec<Vec<T>> = Vec::new();
    let mut index: HashMap<SocketAddr, usize> = HashMap::new();
    for item in items {
        let at = *index.entry(bind(&item)).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[at].push(item);
    }
    groups
}

/// Does a listener with these lines route on what clients send (rather than hand every client to
/// its one target, as a single line without `when=` does)?
pub fn routed(lines: &[&Mapping]) -> bool {
    lines.len() > 1 || lines.iter().any(|m| m.given("when").is_some())
}

/// Checks the lines of each listener together, and gives every line its listener's settings.
/// Errors are located at the word that is wrong.
pub fn check(mappings: &mut [Mapping]) -> Vec<Error> {
    let mut errors = Vec::new();
    let lines: Vec<usize> = (0..mappings.len()).collect();
    for indices in group(lines, |&i| mappings[i].bind) {
        errors.extend(check_listener(mappings, &indices));
    }
    errors.sort_by_key(|e| (e.line, e.col));
    errors
}

fn check_listener(mappings: &mut [Mapping], indices: &[usize]) -> Vec<Error> {
    let mut errors = Vec::new();
    for keys in LISTENER_KEYS {
        let givers: Vec<usize> = indices
            .iter()
            .copied()
            .filter(|&i| keys.iter().any(|k| mappings[i].given(k).is_some()))
            .collect();
        let Some(&first) = givers.first() else {
            continue;
        };
        let value = shown_value(keys, &mappings[first].options);
        for &i in &givers[1..] {
            let other = shown_value(keys, &mappings[i].options);
            if other != value {
                let col = keys.iter().filter_map(|k| mappings[i].given(k)).min().unwrap_or(0);
                let message = format!(
                    "'{other}' disagrees with line {} ('{value}'): a listener's lines must agree on its {}",
                    mappings[first].line,
                    keys.join("/")
                );
                errors.push(mappings[i].error_at(col, message));
            }
        }
        let from = mappings[first].options.clone();
        for &i in indices {
            copy(keys, &from, &mut mappings[i].options);
        }
    }
    if !errors.is_empty() {
        return errors;
    }
    let lines: Vec<&Mapping> = indices.iter().map(|&i| &mappings[i]).collect();
    // Checked once the listener's lines agree: accept_proxy= and proxy_from= may be on different
    // lines of it.
    if let Err(message) = lines[0].options.check() {
        let m = lines
            .iter()
            .find(|m| m.given("accept_proxy").is_some())
            .unwrap_or(&lines[0]);
        return vec![m.error_at(m.given("accept_proxy").unwrap_or(0), message)];
    }
    if !routed(&lines) {
        return errors;
    }
    let when_col = |m: &Mapping| m.given("when").unwrap_or(0);
    if lines[0].options.dispatch == Dispatch::Accept {
        let m = lines
            .iter()
            .find(|m| m.given("when").is_some())
            .unwrap_or_else(|| &lines[1]);
        let message = "routes (when=, or several lines on one address) need dispatch=data: with \
                       dispatch=accept a client is handed off before it says anything"
            .to_string();
        return vec![m.error_at(when_col(m), message)];
    }
    let conditions: Vec<Condition> = lines.iter().map(|m| m.options.when.clone()).collect();
    if let Err((j, message)) = route::check_routes(&conditions) {
        let m = lines[j];
        let message = if m.given("when").is_none() {
            format!(
                "{} is already used by line {} ({}): further lines on one address are routes, \
                 and this one (no when=, so when=any) can never be chosen",
                m.bind, lines[0].line, lines[0].bind
            )
        } else {
            message
        };
        errors.push(m.error_at(when_col(m), message));
    }
    if let Some((i, after)) = route::timeout_route(&conditions)
        && let Some(limit) = lines[i].options.first_byte_timeout
        && after >= limit
    {
        let m = lines[i];
        let message = format!(
            "'when={}' can never be chosen: first_byte_timeout={} closes a silent client first",
            conditions[i],
            secs(limit)
        );
        errors.push(m.error_at(when_col(m), message));
    }
    errors
}

/// A listener-wide setting as the file writes it, for messages and comparison.
fn shown_value(keys: &[&str], o: &Options) -> String {
    match keys[0] {
        "dispatch" => format!("dispatch={}", o.dispatch.name()),
        "max_connections" => format!("max_connections={}", o.max_connections),
        "max_per_source" => format!(
            "max_per_source={}",
            o.max_per_source.map_or("off".into(), |n| n.to_string())
        ),
        "first_byte_timeout" => format!("first_byte_timeout={}", o.first_byte_timeout.map_or("off".into(), secs)),
        "accept_proxy" => format!("accept_proxy={}", if o.accept_proxy { "on" } else { "off" }),
        "proxy_from" => o
            .proxy_from
            .iter()
            .map(|r| format!("proxy_from={}/{}", r.net, r.prefix))
            .collect::<Vec<_>>()
            .join(" "),
        _ => o.rules.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
    }
}

/// Copies one listener-wide setting.
fn copy(keys: &[&str], from: &Options, to: &mut Options) {
    match keys[0] {
        "dispatch" => to.dispatch = from.dispatch,
        "max_connections" => to.max_connections = from.max_connections,
        "max_per_source" => to.max_per_source = from.max_per_source,
        "first_byte_timeout" => to.first_byte_timeout = from.first_byte_timeout,
        "accept_proxy" => to.accept_proxy = from.accept_proxy,
        "proxy_from" => to.proxy_from = from.proxy_from.clone(),
        _ => to.rules = from.rules.clone(),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::errs;
    use crate::config::{Mapping, parse};
    use crate::options::Options;

    /// The canonical lines, printed against this host's defaults as --check-config does.
    fn lines(text: &str) -> Vec<String> {
        parse(text, &Options::for_this_host())
            .unwrap()
            .iter()
            .map(Mapping::canonical)
            .collect()
    }

    #[test]
    fn lines_on_one_address_are_routes_in_file_order() {
        let text = "443 -> 127.0.0.1:22 when=ssh\n\
                    8 -> 127.0.0.1:8\n\
                    443 -> 127.0.0.1:8443 when=tls:*.example.com\n\
                    443 -> 127.0.0.1:2525 when=timeout:3\n\
                    443 -> 127.0.0.1:80\n";
        // Printed against this host's defaults, as --check-config does.
        let m = parse(text, &Options::for_this_host()).unwrap();
        let groups = super::group(m, |m| m.bind);
        let shown: Vec<Vec<String>> = groups
            .iter()
            .map(|g| g.iter().map(Mapping::canonical).collect())
            .collect();
        assert_eq!(
            shown,
            [
                vec![
                    "[::]:443 -> 127.0.0.1:22 when=ssh",
                    "[::]:443 -> 127.0.0.1:8443 when=tls:*.example.com",
                    "[::]:443 -> 127.0.0.1:2525 when=timeout:3",
                    "[::]:443 -> 127.0.0.1:80",
                ],
                vec!["[::]:8 -> 127.0.0.1:8"],
            ]
        );
        assert!(super::routed(&groups[0].iter().collect::<Vec<_>>()));
        assert!(!super::routed(&groups[1].iter().collect::<Vec<_>>()));
    }

    #[test]
    fn listener_settings_on_any_line_apply_to_all() {
        let got = lines("443 -> h:22 when=ssh connect_timeout=2\n443 -> h:80 max_connections=7 allow=127.0.0.0/8\n");
        assert_eq!(
            got,
            [
                "[::]:443 -> h:22 connect_timeout=2 max_connections=7 allow=127.0.0.0/8 when=ssh",
                "[::]:443 -> h:80 max_connections=7 allow=127.0.0.0/8",
            ]
        );
        // Saying the same thing twice is fine.
        assert_eq!(
            lines("443 -> h:22 when=ssh max_connections=7\n443 -> h:80 max_connections=7\n").len(),
            2
        );
    }

    #[test]
    fn the_proxy_header_is_the_listeners_and_each_route_has_its_backends() {
        // accept_proxy= and proxy_from= on different lines of one listener: checked together,
        // carried by every line; backends, balance, proxy_protocol and source stay per route.
        let got = lines(
            "443 -> h:22, h:23 when=ssh accept_proxy=on balance=roundrobin\n\
             443 -> h:80 proxy_from=10.0.0.0/8 proxy_protocol=v2 source=127.0.0.1\n",
        );
        assert_eq!(
            got,
            [
                "[::]:443 -> h:22, h:23 when=ssh balance=roundrobin accept_proxy=on proxy_from=10.0.0.0/8",
                "[::]:443 -> h:80 proxy_protocol=v2 accept_proxy=on proxy_from=10.0.0.0/8 source=127.0.0.1",
            ]
        );
        assert_eq!(
            errs("443 -> h:22 when=ssh accept_proxy=on proxy_from=10.0.0.0/8\n443 -> h:80 accept_proxy=off\n"),
            [
                "2:13: 'accept_proxy=off' disagrees with line 1 ('accept_proxy=on'): a listener's lines must agree on its accept_proxy"
            ]
        );
        assert_eq!(
            errs("443 -> h:22 when=ssh proxy_from=10.0.0.1 accept_proxy=on\n443 -> h:80 proxy_from=10.0.0.2\n"),
            [
                "2:13: 'proxy_from=10.0.0.2/32' disagrees with line 1 ('proxy_from=10.0.0.1/32'): a listener's lines must agree on its proxy_from"
            ]
        );
        assert_eq!(
            errs("443 -> h:22 when=ssh\n443 -> h:80 accept_proxy=on\n"),
            ["2:13: accept_proxy=on needs proxy_from=CIDR (who may send the PROXY header)"]
        );
    }

    #[test]
    fn every_routing_error_is_located() {
        assert_eq!(
            errs("443 -> h:22 when=ssh max_connections=5\n443 -> h:80 idle_timeout=1 max_connections=7\n"),
            [
                "2:28: 'max_connections=7' disagrees with line 1 ('max_connections=5'): a listener's lines must agree on its max_connections"
            ]
        );
        assert_eq!(
            errs("443 -> h:22 when=ssh allow=::1\n443 -> h:80 deny=::1\n"),
            [
                "2:13: 'deny=::1/128' disagrees with line 1 ('allow=::1/128'): a listener's lines must agree on its allow/deny"
            ]
        );
        assert_eq!(
            errs("443 -> h:22 when=ssh dispatch=accept\n"),
            [
                "1:13: routes (when=, or several lines on one address) need dispatch=data: with dispatch=accept a client is handed off before it says anything"
            ]
        );
        assert_eq!(
            errs("443 -> h:22 when=tls\n443 -> h:23 when=tls:a.example\n"),
            ["2:13: 'when=tls:a.example' can never be chosen: 'when=tls' comes before it"]
        );
        assert_eq!(
            errs("443 -> h:22\n 443 -> h:23\n"),
            [
                "2:2: [::]:443 is already used by line 1 ([::]:443): further lines on one address are routes, and this one (no when=, so when=any) can never be chosen"
            ]
        );
        assert_eq!(
            errs("443 -> h:22 when=ssh\n443 -> h:25 when=timeout:60\n"),
            ["2:13: 'when=timeout:60' can never be chosen: first_byte_timeout=60 closes a silent client first"]
        );
        assert!(
            parse(
                "443 -> h:22 when=ssh first_byte_timeout=off\n443 -> h:25 when=timeout:600\n",
                &Options::default()
            )
            .is_ok()
        );
        assert_eq!(
            errs("443 -> h:22 when=timeout:1\n443 -> h:25 when=timeout:2\n"),
            ["2:13: a listener can have only one 'when=timeout:' route"]
        );
        // Different listen addresses that overlap are still an error, whatever their when=.
        assert_eq!(
            errs("127.0.0.1:443 -> h:22 when=ssh\n443 -> h:80 when=tls\n"),
            ["2:1: [::]:443 is already used by line 1 (127.0.0.1:443)"]
        );
    }
}
