//! Per-mapping options: the same keys on the command line (`--connect-timeout 5`) and after a
//! mapping in `setup.config` (`connect_timeout=5`). A line's keys override the command line's,
//! which override the defaults.

use crate::access::{Rule, RuleKind};
use crate::proxy_protocol::Version;
use crate::route::Condition;
use std::net::IpAddr;
use std::time::Duration;

/// When a waiting client socket is handed to a connection process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dispatch {
    /// When the client first sends (or half-closes): the seed's behaviour. Silent clients cost no
    /// process, but a server that speaks first (SMTP, FTP, POP3, MySQL, VNC) is never reached.
    Data,
    /// As soon as the connection is accepted: needed for server-speaks-first protocols.
    Accept,
}

impl Dispatch {
    pub fn name(self) -> &'static str {
        match self {
            Dispatch::Data => "data",
            Dispatch::Accept => "accept",
        }
    }
}

/// Which backend a connection tries first (then the others, in turn).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    /// The order written: the first backend that is up takes every connection (failover).
    First,
    /// Each connection starts at the next backend.
    RoundRobin,
    /// A hash of the client's address picks the backend (the same client, the same backend).
    Source,
}

impl Balance {
    pub fn name(self) -> &'static str {
        match self {
            Balance::First => "first",
            Balance::RoundRobin => "roundrobin",
            Balance::Source => "source",
        }
    }
}

/// The most `max_connections` is by default: on a host with room for more (see
/// [`default_max_connections`]), a larger cap is for the operator to choose.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);
/// A connection with no byte either way is closed after 10 minutes, as nginx's stream proxy
/// does (`proxy_timeout`): otherwise a client that sends one byte and nothing more holds two
/// processes for ever.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Live connections from one address: enough for a busy NAT or a host with a connection pool, and
/// 512 processes at most; to hold the default cap of a 32768-pid host one needs 32 addresses.
pub const DEFAULT_MAX_PER_SOURCE: usize = 256;
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(60);
/// The longest keepalive idle time the kernel takes (`MAX_TCP_KEEPIDLE`): `setsockopt` refuses a
/// longer one, and the socket would silently keep the system default (`tcp_keepalive_time`).
pub const MAX_KEEPALIVE_SECS: u64 = 32_767;
/// Passive health defaults, nginx's: one failure within 10 s marks a backend down for 10 s.
pub const DEFAULT_MAX_FAILS: u32 = 1;
pub const DEFAULT_FAIL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    pub dispatch: Dispatch,
    pub connect_timeout: Duration,
    /// Live connections of this mapping at most; accepting pauses at the cap.
    pub max_connections: usize,
    /// Live connections from one client address at most (`None`: no limit).
    pub max_per_source: Option<usize>,
    /// With `dispatch=data`, how long an accepted socket may stay silent (`None`: forever).
    pub first_byte_timeout: Option<Duration>,
    /// A connection with no byte either way for this long is closed (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// TCP keepalive idle time on both legs (`None`: keepalive off).
    pub keepalive: Option<Duration>,
    /// Access rules, first match wins (see `access`).
    pub rules: Vec<Rule>,
    /// What this line's route matches among the routes of its listener (`when=`, see `route`).
    pub when: Condition,
    /// `SO_REUSEPORT` on the listener: several processes share the port, the kernel spreads the
    /// connections among them.
    pub reuseport: bool,
    /// Bytes per second at most, each direction of each connection (`None`: no cap).
    pub max_rate: Option<u64>,
    /// Which backend a connection starts at.
    pub balance: Balance,
    /// Failed connects within `fail_timeout` that mark a backend down (0: never marked down).
    pub max_fails: u32,
    /// The window failures are counted in, and how long a backend stays down.
    pub fail_timeout: Duration,
    /// Send a PROXY protocol header of this version to the backend first (`None`: no header).
    pub proxy_protocol: Option<Version>,
    /// Expect a PROXY protocol header (v1 or v2) first on every client connection.
    pub accept_proxy: bool,
    /// Who may send that header (required with `accept_proxy`); stored as allow rules.
    pub proxy_from: Vec<Rule>,
    /// The local address inward connections are made from.
    pub source: Option<IpAddr>,
    /// Re-resolve the named backends this often, in the main process (`None`: resolved once, at
    /// start-up or reload).
    pub resolve: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dispatch: Dispatch::Data,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_per_source: Some(DEFAULT_MAX_PER_SOURCE),
            first_byte_timeout: Some(DEFAULT_FIRST_BYTE_TIMEOUT),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            keepalive: Some(DEFAULT_KEEPALIVE),
            rules: Vec::new(),
            when: Condition::Any,
            balance: Balance::First,
            max_fails: DEFAULT_MAX_FAILS,
            fail_timeout: DEFAULT_FAIL_TIMEOUT,
            proxy_protocol: None,
            accept_proxy: false,
            proxy_from: Vec::new(),
            source: None,
            reuseport: false,
            max_rate: None,
            resolve: None,
        }
    }
}

impl Options {
    /// The defaults on this host: [`Options::default`] with the connection cap read from the
    /// host's process limits ([`default_max_connections`]).
    pub fn for_this_host() -> Options {
        Options {
            max_connections: default_max_connections().0,
            ..Options::default()
        }
    }
}

/// The keys a `setup.config` line accepts, in the order `--check-config` prints them.
pub const KEYS: [&str; 20] = [
    "dispatch",
    "connect_timeout",
    "max_connections",
    "max_per_source",
    "first_byte_timeout",
    "idle_timeout",
    "keepalive",
    "allow",
    "deny",
    "when",
    "reuseport",
    "max_rate",
    "balance",
    "max_fails",
    "fail_timeout",
    "proxy_protocol",
    "accept_proxy",
    "proxy_from",
    "source",
    "resolve",
];

impl Options {
    /// Applies one `key=value`. `allow` and `deny` add a rule (they may repeat); the rest replace.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "dispatch" => {
                self.dispatch = match value {
                    "data" => Dispatch::Data,
                    "accept" => Dispatch::Accept,
                    _ => return Err(format!("invalid dispatch '{value}': expected 'data' or 'accept'")),
                }
            }
            "connect_timeout" => self.connect_timeout = parse_secs(value)?,
            "max_connections" => self.max_connections = parse_count(value)?,
            "max_per_source" => self.max_per_source = parse_count_or_off(value)?,
            "first_byte_timeout" => self.first_byte_timeout = parse_secs_or_off(value)?,
            "idle_timeout" => self.idle_timeout = parse_secs_or_off(value)?,
            "keepalive" => self.keepalive = parse_keepalive(value)?,
            "allow" => self.rules.push(Rule::parse(RuleKind::Allow, value)?),
            "deny" => self.rules.push(Rule::parse(RuleKind::Deny, value)?),
            "when" => self.when = Condition::parse(value)?,
            "reuseport" => self.reuseport = parse_on_off("reuseport", value)?,
            "max_rate" => self.max_rate = parse_rate_or_off(value)?,
            "balance" => self.balance = parse_balance(value)?,
            "max_fails" => self.max_fails = parse_max_fails(value)?,
            "fail_timeout" => self.fail_timeout = parse_secs(value)?,
            "proxy_protocol" => self.proxy_protocol = parse_proxy_version(value)?,
            "accept_proxy" => self.accept_proxy = parse_on_off("accept_proxy", value)?,
            "proxy_from" => self.proxy_from.push(Rule::parse(RuleKind::Allow, value)?),
            "source" => self.source = Some(parse_source(value)?),
            "resolve" => self.resolve = parse_secs_or_off(value)?,
            _ => return Err(format!("unknown option '{key}' (known: {})", KEYS.join(", "))),
        }
        Ok(())
    }

    /// The `key=value` pairs that differ from `base`, in canonical form and order.
    pub fn diff(&self, base: &Options) -> Vec<String> {
        let mut out = Vec::new();
        if self.dispatch != base.dispatch {
            out.push(format!("dispatch={}", self.dispatch.name()));
        }
        if self.connect_timeout != base.connect_timeout {
            out.push(format!("connect_timeout={}", secs(self.connect_timeout)));
        }
        if self.max_connections != base.max_connections {
            out.push(format!("max_connections={}", self.max_connections));
        }
        if self.max_per_source != base.max_per_source {
            out.push(format!(
                "max_per_source={}",
                self.max_per_source.map_or("off".into(), |n| n.to_string())
            ));
        }
        for (key, mine, theirs) in [
            ("first_byte_timeout", self.first_byte_timeout, base.first_byte_timeout),
            ("idle_timeout", self.idle_timeout, base.idle_timeout),
            ("keepalive", self.keepalive, base.keepalive),
        ] {
            if mine != theirs {
                out.push(format!("{key}={}", mine.map_or("off".into(), secs)));
            }
        }
        if self.rules != base.rules {
            out.extend(self.rules.iter().map(Rule::to_string));
        }
        if self.when != base.when {
            out.push(format!("when={}", self.when));
        }
        if self.reuseport != base.reuseport {
            out.push(format!("reuseport={}", if self.reuseport { "on" } else { "off" }));
        }
        if self.max_rate != base.max_rate {
            out.push(format!("max_rate={}", self.max_rate.map_or("off".into(), rate)));
        }
        if self.balance != base.balance {
            out.push(format!("balance={}", self.balance.name()));
        }
        if self.max_fails != base.max_fails {
            out.push(format!("max_fails={}", self.max_fails));
        }
        if self.fail_timeout != base.fail_timeout {
            out.push(format!("fail_timeout={}", secs(self.fail_timeout)));
        }
        if self.proxy_protocol != base.proxy_protocol {
            out.push(format!("proxy_protocol={}", proxy_version_name(self.proxy_protocol)));
        }
        if self.accept_proxy != base.accept_proxy {
            out.push(format!("accept_proxy={}", if self.accept_proxy { "on" } else { "off" }));
        }
        if self.proxy_from != base.proxy_from {
            out.extend(
                self.proxy_from
                    .iter()
                    .map(|r| format!("proxy_from={}/{}", r.net, r.prefix)),
            );
        }
        if self.source != base.source {
            out.push(format!(
                "source={}",
                self.source.map_or("off".into(), |a| a.to_string())
            ));
        }
        if self.resolve != base.resolve {
            out.push(format!("resolve={}", self.resolve.map_or("off".into(), secs)));
        }
        out
    }

    /// What no single key can check: `accept_proxy=on` needs at least one `proxy_from=`.
    pub fn check(&self) -> Result<(), String> {
        if self.accept_proxy && self.proxy_from.is_empty() {
            return Err("accept_proxy=on needs proxy_from=CIDR (who may send the PROXY header)".into());
        }
        Ok(())
    }
}

/// `first`, `roundrobin` or `source`.
pub fn parse_balance(text: &str) -> Result<Balance, String> {
    match text {
        "first" => Ok(Balance::First),
        "roundrobin" => Ok(Balance::RoundRobin),
        "source" => Ok(Balance::Source),
        _ => Err(format!(
            "invalid balance '{text}': expected 'first', 'roundrobin' or 'source'"
        )),
    }
}

/// A count of failures, `0` (or `off`) for no passive health at all.
pub fn parse_max_fails(text: &str) -> Result<u32, String> {
    if text == "off" {
        return Ok(0);
    }
    text.parse::<u32>()
        .map_err(|_| format!("invalid max_fails '{text}': expected a whole number (0: never mark down)"))
}

/// `v1`, `v2`, or `off`.
pub fn parse_proxy_version(text: &str) -> Result<Option<Version>, String> {
    match text {
        "v1" => Ok(Some(Version::V1)),
        "v2" => Ok(Some(Version::V2)),
        "off" => Ok(None),
        _ => Err(format!("invalid proxy_protocol '{text}': expected 'v1', 'v2' or 'off'")),
    }
}

fn proxy_version_name(version: Option<Version>) -> &'static str {
    match version {
        Some(Version::V1) => "v1",
        Some(Version::V2) => "v2",
        None => "off",
    }
}

/// An IP address (IPv6 with or without brackets) to make inward connections from.
pub fn parse_source(text: &str) -> Result<IpAddr, String> {
    crate::target::unbracket(text)
        .parse()
        .map_err(|_| format!("invalid source '{text}': expected an IP address"))
}

/// The default `max_connections` of this host, and why: a quarter of the fewest tasks it may run
/// (`kernel.pid_max`, `kernel.threads-max`, the soft `RLIMIT_NPROC`), so that two processes per
/// connection take at most half of them, and at most [`DEFAULT_MAX_CONNECTIONS`]. On a default
/// `pid_max` of 32768 that is 8192 connections, 16384 processes.
pub fn default_max_connections() -> (usize, String) {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let mut limits = vec![
        ("kernel.pid_max", read("/proc/sys/kernel/pid_max")),
        ("kernel.threads-max", read("/proc/sys/kernel/threads-max")),
    ];
    let mut nproc = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NPROC, &mut nproc) } == 0 && nproc.rlim_cur != libc::RLIM_INFINITY {
        limits.push(("ulimit -u", Some(nproc.rlim_cur)));
    }
    let known: Vec<(&str, u64)> = limits.into_iter().filter_map(|(k, v)| Some((k, v?))).collect();
    let Some(&(name, fewest)) = known.iter().min_by_key(|(_, v)| *v) else {
        return (
            DEFAULT_MAX_CONNECTIONS,
            format!("max_connections={DEFAULT_MAX_CONNECTIONS} reason=\"the process limits could not be read\""),
        );
    };
    let cap = ((fewest / 4) as usize).clamp(1, DEFAULT_MAX_CONNECTIONS);
    let why = if cap == DEFAULT_MAX_CONNECTIONS {
        format!("max_connections={cap} reason=\"at most {DEFAULT_MAX_CONNECTIONS} by default; {name} is {fewest}\"")
    } else {
        format!(
            "max_connections={cap} reason=\"a quarter of {name}={fewest}: two processes per connection take at most half\""
        )
    };
    (cap, why)
}

/// Formats seconds without a needless fraction: `5`, `0.25`.
pub fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s}")
    }
}

/// A positive number of seconds, fractions allowed (`0.5`), at most a year.
pub fn parse_secs(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 86_400.0 * 365.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "invalid duration '{text}': expected a number of seconds greater than 0"
        )),
    }
}

/// Seconds, or `off` / `0` for none.
pub fn parse_secs_or_off(text: &str) -> Result<Option<Duration>, String> {
    if text == "off" || text == "0" {
        Ok(None)
    } else {
        parse_secs(text).map(Some)
    }
}

/// A keepalive idle time: seconds up to [`MAX_KEEPALIVE_SECS`], or `off` / `0`.
pub fn parse_keepalive(text: &str) -> Result<Option<Duration>, String> {
    match parse_secs_or_off(text)? {
        Some(d) if d.as_secs_f64() > MAX_KEEPALIVE_SECS as f64 => Err(format!(
            "invalid keepalive '{text}': at most {MAX_KEEPALIVE_SECS} seconds (the kernel's limit)"
        )),
        other => Ok(other),
    }
}

/// A whole number of at least 1.
pub fn parse_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("invalid count '{text}': expected a whole number of at least 1")),
    }
}

/// A count, or `off` / `0` for no limit.
pub fn parse_count_or_off(text: &str) -> Result<Option<usize>, String> {
    if text == "off" || text == "0" {
        Ok(None)
    } else {
        parse_count(text).map(Some)
    }
}

/// `on` or `off`.
pub fn parse_on_off(key: &str, text: &str) -> Result<bool, String> {
    match text {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("invalid {key} '{text}': expected 'on' or 'off'")),
    }
}

/// Bytes per second: a whole number with an optional decimal suffix `K` (1000), `M` (10^6) or
/// `G` (10^9); at least 1 and below 2^32 × 1000 (what `SO_MAX_PACING_RATE` and the copy pacing
/// can express with room to spare).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.char_indices().last() {
        Some((i, 'K' | 'k')) => (&text[..i], 1_000),
        Some((i, 'M' | 'm')) => (&text[..i], 1_000_000),
        Some((i, 'G' | 'g')) => (&text[..i], 1_000_000_000),
        _ => (text, 1),
    };
    match digits.parse::<u64>().ok().and_then(|n| n.checked_mul(unit)) {
        Some(n) if (1..u64::from(u32::MAX) * 1000).contains(&n) => Ok(n),
        _ => Err(format!(
            "invalid rate '{text}': expected bytes per second, like 500K, 2M or 1G"
        )),
    }
}

/// A rate, or `off` / `0` for none.
pub fn parse_rate_or_off(text: &str) -> Result<Option<u64>, String> {
    if text == "off" || text == "0" {
        Ok(None)
    } else {
        parse_rate(text).map(Some)
    }
}

/// A rate as [`parse_rate`] reads it back, with the largest suffix that keeps it whole.
pub fn rate(n: u64) -> String {
    for (unit, suffix) in [(1_000_000_000, "G"), (1_000_000, "M"), (1_000, "K")] {
        if n.is_multiple_of(unit) {
            return format!("{}{suffix}", n / unit);
        }
    }
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_set_and_print_back() {
        let mut o = Options::default();
        for (k, v) in [
            ("dispatch", "accept"),
            ("connect_timeout", "0.5"),
            ("max_connections", "7"),
            ("max_per_source", "3"),
            ("first_byte_timeout", "off"),
            ("idle_timeout", "30"),
            ("keepalive", "0"),
            ("allow", "127.0.0.0/8"),
            ("deny", "::/0"),
            ("when", "tls:*.example.com"),
            ("reuseport", "on"),
            ("max_rate", "2500K"),
            ("balance", "source"),
            ("max_fails", "3"),
            ("fail_timeout", "2.5"),
            ("proxy_protocol", "v2"),
            ("accept_proxy", "on"),
            ("proxy_from", "10.0.0.0/8"),
            ("source", "[::1]"),
            ("resolve", "30"),
        ] {
            o.set(k, v).unwrap();
        }
        assert_eq!(
            o.diff(&Options::default()).join(" "),
            "dispatch=accept connect_timeout=0.5 max_connections=7 max_per_source=3 first_byte_timeout=off \
             idle_timeout=30 keepalive=off allow=127.0.0.0/8 deny=::/0 when=tls:*.example.com reuseport=on \
             max_rate=2500K balance=source max_fails=3 fail_timeout=2.5 proxy_protocol=v2 accept_proxy=on \
             proxy_from=10.0.0.0/8 source=::1 resolve=30"
        );
        assert!(Options::default().diff(&Options::default()).is_empty());
    }

    #[test]
    fn defaults_bound_what_one_client_can_hold() {
        let o = Options::default();
        assert_eq!(o.idle_timeout, Some(Duration::from_secs(600)));
        assert_eq!(o.max_per_source, Some(256));
        let (cap, why) = default_max_connections();
        assert!((1..=DEFAULT_MAX_CONNECTIONS).contains(&cap), "{cap}");
        assert!(why.starts_with(&format!("max_connections={cap} reason=\"")), "{why}");
        let pid_max: usize = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            2 * cap <= pid_max / 2,
            "{why}: two processes per connection above half of {pid_max}"
        );
    }

    #[test]
    fn bad_values_name_the_problem() {
        let mut o = Options::default();
        assert!(o.set("dispatch", "later").unwrap_err().contains("'later'"));
        assert!(o.set("connect_timeout", "-1").unwrap_err().contains("greater than 0"));
        assert!(o.set("max_connections", "0").unwrap_err().contains("at least 1"));
        assert!(o.set("colour", "blue").unwrap_err().contains("unknown option 'colour'"));
        assert!(o.set("allow", "10.0.0.0/33").is_err());
        assert!(o.set("keepalive", "40000").unwrap_err().contains("at most 32767"));
        assert!(o.set("keepalive", "32767").is_ok());
        assert!(o.set("when", "tls:").unwrap_err().starts_with("invalid when 'tls:'"));
        assert!(o.set("balance", "leastconn").unwrap_err().contains("'leastconn'"));
        assert!(o.set("max_fails", "-1").unwrap_err().contains("whole number"));
        assert!(o.set("proxy_protocol", "v3").unwrap_err().contains("'v1', 'v2'"));
        assert!(o.set("accept_proxy", "yes").unwrap_err().contains("'on' or 'off'"));
        assert!(o.set("source", "host.example").unwrap_err().contains("IP address"));
        assert!(o.set("proxy_from", "10.0.0.0/40").is_err());
        assert!(o.set("reuseport", "yes").unwrap_err().contains("'on' or 'off'"));
        assert!(o.set("resolve", "-5").unwrap_err().contains("greater than 0"));
        for bad in ["", "M", "-1M", "1.5M", "2T", "99999999999G"] {
            assert!(
                o.set("max_rate", bad).unwrap_err().contains("bytes per second"),
                "{bad}"
            );
        }
    }

    #[test]
    fn rates_read_with_their_suffix_and_print_back() {
        for (text, n, shown) in [
            ("1", 1, "1"),
            ("2M", 2_000_000, "2M"),
            ("2m", 2_000_000, "2M"),
            ("1500k", 1_500_000, "1500K"),
            ("1G", 1_000_000_000, "1G"),
            ("12345", 12_345, "12345"),
        ] {
            assert_eq!(parse_rate(text), Ok(n), "{text}");
            assert_eq!(rate(n), shown);
        }
        assert_eq!(parse_rate_or_off("off"), Ok(None));
        assert_eq!(parse_rate_or_off("0"), Ok(None));
    }

    #[test]
    fn accept_proxy_needs_proxy_from() {
        let mut o = Options::default();
        o.set("accept_proxy", "on").unwrap();
        assert!(o.check().unwrap_err().contains("proxy_from"));
        o.set("proxy_from", "127.0.0.1").unwrap();
        assert_eq!(o.check(), Ok(()));
    }
}
