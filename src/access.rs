//! Access rules: `allow=CIDR` and `deny=CIDR`, evaluated in order, first match wins. A client no
//! rule matches is allowed when there is no `allow` rule at all, and refused when there is one
//! (listing who may come in means everyone else may not). A mapping's own rules come before the
//! command line's global ones. Main process.

use std::fmt;
use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleKind {
    Allow,
    Deny,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub kind: RuleKind,
    pub net: IpAddr,
    pub prefix: u8,
}

impl Rule {
    /// Parses `ADDR/PREFIX` or a single `ADDR` (IPv4 or IPv6, brackets allowed).
    pub fn parse(kind: RuleKind, text: &str) -> Result<Rule, String> {
        let bad = |why: &str| format!("invalid address range '{text}': {why}");
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr = crate::target::unbracket(addr);
        let net: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(bad(&format!("prefix must be 0 to {max}"))),
            },
        };
        // An IPv4-mapped range (`::ffff:10.0.0.0/104`) means those IPv4 clients: clients are
        // matched by their canonical address, so keep the rule in IPv4 form or it never matches.
        if let IpAddr::V6(v6) = net
            && let Some(v4) = v6.to_ipv4_mapped()
            && prefix >= 96
        {
            return Ok(Rule {
                kind,
                net: v4.into(),
                prefix: prefix - 96,
            });
        }
        Ok(Rule { kind, net, prefix })
    }

    pub fn matches(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (whole, rest) = ((bits / 8) as usize, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || (a[whole] ^ b[whole]) >> (8 - rest) == 0
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            RuleKind::Allow => "allow",
            RuleKind::Deny => "deny",
        };
        write!(f, "{kind}={}/{}", self.net, self.prefix)
    }
}

/// Whether `ip` may connect, given a mapping's rules and the global ones.
pub fn permits(mapping: &[Rule], global: &[Rule], ip: IpAddr) -> bool {
    let mut any_allow = false;
    for rule in mapping.iter().chain(global) {
        if rule.matches(ip) {
            return rule.kind == RuleKind::Allow;
        }
        any_allow |= rule.kind == RuleKind::Allow;
    }
    !any_allow
}

/// A warning for rules that look meant for both address families but match one, on a listener
/// that takes IPv4 clients (an IPv4 address, or `[::]`, which is dual-stack): a block list with
/// `deny=::/0` but not `deny=0.0.0.0/0` (every IPv4 client comes in), or allow rules that are all
/// IPv6 (every IPv4 client is refused). IPv4 clients of a dual-stack listener are matched as IPv4
/// (`::ffff:a.b.c.d` is `a.b.c.d`), so `::/0` never covers them. `None` when nothing looks wrong.
pub fn family_warning(rules: &[Rule], takes_ipv4: bool) -> Option<String> {
    if !takes_ipv4 {
        return None;
    }
    let every_v6 = rules
        .iter()
        .find(|r| r.prefix == 0 && r.net.is_ipv6() && r.kind == RuleKind::Deny);
    let every_v4 = rules.iter().any(|r| r.prefix == 0 && r.net.is_ipv4());
    let mut allows = rules.iter().filter(|r| r.kind == RuleKind::Allow).peekable();
    let block_list = allows.peek().is_none();
    if let Some(rule) = every_v6
        && !every_v4
        && block_list
    {
        return Some(format!(
            "{rule} matches IPv6 clients only; IPv4 clients (of a dual-stack listener too) are not \
             matched by it and come in: add deny=0.0.0.0/0 if they are meant"
        ));
    }
    if !block_list && allows.all(|r| r.net.is_ipv6()) {
        return Some(
            "every allow rule is an IPv6 range: every IPv4 client is refused (IPv6 ranges never \
             match them, not even on a dual-stack listener)"
                .to_string(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(kind: RuleKind, s: &str) -> Rule {
        Rule::parse(kind, s).unwrap()
    }

    #[test]
    fn cidr_matching_v4_v6_and_mapped() {
        let lan = r(RuleKind::Allow, "10.1.0.0/16");
        assert!(lan.matches("10.1.200.3".parse().unwrap()));
        assert!(!lan.matches("10.2.0.1".parse().unwrap()));
        assert!(
            lan.matches("::ffff:10.1.0.9".parse().unwrap()),
            "v4-mapped clients of a dual-stack listener"
        );
        let odd = r(RuleKind::Allow, "192.168.1.128/25");
        assert!(odd.matches("192.168.1.200".parse().unwrap()));
        assert!(!odd.matches("192.168.1.127".parse().unwrap()));
        let v6 = r(RuleKind::Deny, "[fd00::]/8");
        assert!(v6.matches("fd12::1".parse().unwrap()));
        assert!(!v6.matches("fe80::1".parse().unwrap()));
        assert!(!v6.matches("10.0.0.1".parse().unwrap()));
        assert!(r(RuleKind::Allow, "0.0.0.0/0").matches("1.2.3.4".parse().unwrap()));
        assert!(r(RuleKind::Allow, "::1").matches("::1".parse().unwrap()));
        let mapped = r(RuleKind::Deny, "::ffff:10.0.0.0/104");
        assert!(mapped.matches("10.9.8.7".parse().unwrap()));
        assert!(mapped.matches("::ffff:10.9.8.7".parse().unwrap()));
        assert!(!mapped.matches("11.0.0.1".parse().unwrap()));
        assert_eq!(mapped.to_string(), "deny=10.0.0.0/8");
        assert!(Rule::parse(RuleKind::Allow, "1.2.3.4/33").is_err());
        assert!(Rule::parse(RuleKind::Allow, "::/129").is_err());
        assert!(Rule::parse(RuleKind::Allow, "example.com").is_err());
    }

    #[test]
    fn first_match_wins_and_allow_rules_close_the_default() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(permits(&[], &[], ip("1.2.3.4")));
        let deny_one = [r(RuleKind::Deny, "1.2.3.4")];
        assert!(!permits(&deny_one, &[], ip("1.2.3.4")));
        assert!(permits(&deny_one, &[], ip("1.2.3.5")));
        let local_only = [r(RuleKind::Allow, "127.0.0.0/8"), r(RuleKind::Allow, "::1")];
        assert!(permits(&[], &local_only, ip("127.0.0.2")));
        assert!(!permits(&[], &local_only, ip("10.0.0.1")));
        // The mapping's rules come first.
        let except = [r(RuleKind::Deny, "127.0.0.9")];
        assert!(!permits(&except, &local_only, ip("127.0.0.9")));
        assert!(permits(&except, &local_only, ip("127.0.0.8")));
    }

    #[test]
    fn rules_for_one_family_that_look_meant_for_both_are_warned_about() {
        let rules = |list: &[(RuleKind, &str)]| list.iter().map(|&(k, t)| r(k, t)).collect::<Vec<_>>();
        let deny_v6 = rules(&[(RuleKind::Deny, "::/0")]);
        let warning = family_warning(&deny_v6, true).unwrap();
        assert!(warning.starts_with("deny=::/0 matches IPv6 clients only"), "{warning}");
        assert!(warning.contains("add deny=0.0.0.0/0"), "{warning}");
        assert_eq!(family_warning(&deny_v6, false), None, "an IPv6-only listener");
        let both = rules(&[(RuleKind::Deny, "::/0"), (RuleKind::Deny, "0.0.0.0/0")]);
        assert_eq!(family_warning(&both, true), None);
        let allow_v6 = rules(&[(RuleKind::Allow, "fd00::/8"), (RuleKind::Allow, "::1")]);
        assert!(
            family_warning(&allow_v6, true)
                .unwrap()
                .contains("every IPv4 client is refused")
        );
        let mixed = rules(&[(RuleKind::Allow, "fd00::/8"), (RuleKind::Allow, "10.0.0.0/8")]);
        assert_eq!(family_warning(&mixed, true), None);
        let allow_list = rules(&[(RuleKind::Allow, "10.0.0.0/8"), (RuleKind::Deny, "::/0")]);
        assert_eq!(
            family_warning(&allow_list, true),
            None,
            "IPv4 clients: the allow list decides"
        );
        let allow_every_v6 = rules(&[(RuleKind::Allow, "::/0")]);
        assert!(
            family_warning(&allow_every_v6, true)
                .unwrap()
                .contains("every IPv4 client is refused")
        );
        assert_eq!(family_warning(&rules(&[(RuleKind::Deny, "10.0.0.0/8")]), true), None);
        assert_eq!(family_warning(&[], true), None);
    }
}
