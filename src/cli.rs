//! The command line: the seed's `server port hostname host-port`, or a configuration file, plus
//! options. Per-mapping options use the same parsers as `setup.config` keys (see `options`).

use crate::access::{Rule, RuleKind};
use crate::options::{self, Dispatch, Options};
use crate::target::parse_port;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "portfwd",
    version,
    override_usage = "portfwd [OPTIONS] PORT HOSTNAME HOST_PORT\n       portfwd [OPTIONS] PORT HOST:PORT\n       portfwd [OPTIONS] --config FILE\n       portfwd --check-config FILE",
    about = "Forward TCP connections from a local port to HOSTNAME:HOST_PORT, one process per connection.",
    after_help = "Each connection is handed to its own process when the client first sends (--dispatch data),\n\
                  or at once (--dispatch accept, for protocols where the server speaks first: SMTP, FTP,\n\
                  POP3, MySQL, VNC). A FIN is passed on as a FIN, a reset as a reset. One log line per\n\
                  finished connection goes to stderr (or --log-file).\n\n\
                  Signals: TERM/INT stop accepting (connections finish, or end after --drain-timeout);\n\
                  QUIT ends everything now; HUP reloads --config and reopens the log; USR2 only reopens the\n\
                  log (for logrotate); USR1 logs stats (and, with --pid-file, writes what --status shows)."
)]
pub struct Cli {
    /// Port to listen on (1-65535).
    #[arg(value_name = "PORT", value_parser = parse_port, required_unless_present_any = ["config", "check_config", "completions", "man", "status"])]
    pub port: Option<u16>,

    /// Inward host: a name, an IPv4 address, or an IPv6 address (brackets optional).
    #[arg(value_name = "HOSTNAME", required_unless_present_any = ["config", "check_config", "completions", "man", "status"])]
    pub hostname: Option<String>,

    /// Inward port (1-65535). May be left out when HOSTNAME is written `HOST:PORT` (`[::1]:PORT`
    /// for IPv6).
    #[arg(value_name = "HOST_PORT", value_parser = parse_port)]
    pub host_port: Option<u16>,

    /// Run every mapping of FILE (lines like `7005 -> 127.0.0.1:8005`) in this one process.
    #[arg(short, long, value_name = "FILE", conflicts_with_all = ["port", "check_config"])]
    pub config: Option<PathBuf>,

    /// Validate FILE, print its mappings, and exit (0 if valid, 2 if not).
    #[arg(long, value_name = "FILE", conflicts_with = "port")]
    pub check_config: Option<PathBuf>,

    /// Address to listen on [default: every interface, IPv6 and IPv4]. With --config, each line
    /// says its own.
    #[arg(short, long, value_name = "ADDR", conflicts_with = "config")]
    pub bind: Option<String>,

    /// When to hand a connection to its process: on the client's first data, or at once [default: data].
    #[arg(long, value_enum, value_name = "WHEN")]
    pub dispatch: Option<Dispatch>,

    /// Seconds to wait for the inward connection before resetting the client [default: 5].
    #[arg(long, value_name = "SECS", value_parser = checked(options::parse_secs))]
    pub connect_timeout: Option<String>,

    /// Live connections of the whole process at most (and of each config line, unless the line sets
    /// its own); further clients wait in the backlog [default: a quarter of the smallest of
    /// kernel.pid_max, kernel.threads-max and ulimit -u, at most 10000; logged at start-up].
    #[arg(long, value_name = "N", value_parser = checked(options::parse_count))]
    pub max_connections: Option<String>,

    /// Live connections from one client address at most, or `off` [default: 256].
    #[arg(long, value_name = "N", value_parser = checked(options::parse_count_or_off))]
    pub max_per_source: Option<String>,

    /// With --dispatch data, close clients that send nothing for SECS, or `off` [default: 60].
    #[arg(long, value_name = "SECS", value_parser = checked(options::parse_secs_or_off))]
    pub first_byte_timeout: Option<String>,

    /// Close connections with no byte either way for SECS, or `off` [default: 600].
    #[arg(long, value_name = "SECS", value_parser = checked(options::parse_secs_or_off))]
    pub idle_timeout: Option<String>,

    /// TCP keepalive on both legs: probes after SECS of silence, or `off` (or `0`) [default: 60].
    #[arg(long, value_name = "SECS", value_parser = checked(options::parse_keepalive))]
    pub keepalive: Option<String>,

    /// Let clients from CIDR in (repeatable; with any allow rule, others are refused).
    #[arg(long, value_name = "CIDR", value_parser = checked(|s| Rule::parse(RuleKind::Allow, s)))]
    pub allow: Vec<String>,

    /// Refuse clients from CIDR (repeatable). Rules are checked in order; the first match wins.
    #[arg(long, value_name = "CIDR", value_parser = checked(|s| Rule::parse(RuleKind::Deny, s)))]
    pub deny: Vec<String>,

    /// Another inward target HOST:PORT (`[ADDR]:PORT` for IPv6), tried after HOSTNAME HOST_PORT
    /// (repeatable; see --balance).
    #[arg(long = "backend", value_name = "HOST:PORT", conflicts_with = "config", value_parser = checked(parse_host_port))]
    pub backends: Vec<String>,

    /// Which backend a connection tries first: in the order given (failover), the next one for
    /// each connection, or by a hash of the client's address [default: first].
    #[arg(long, value_name = "HOW", value_parser = ["first", "roundrobin", "source"])]
    pub balance: Option<String>,

    /// Failed connects within --fail-timeout that mark a backend down, or 0 for never [default: 1].
    #[arg(long, value_name = "N", value_parser = checked(options::parse_max_fails))]
    pub max_fails: Option<String>,

    /// The window in which failures count, and how long a backend then stays down [default: 10].
    #[arg(long, value_name = "SECS", value_parser = checked(options::parse_secs))]
    pub fail_timeout: Option<String>,

    /// Send a PROXY protocol header (v1 text or v2 binary) to the backend before any client byte.
    #[arg(long, value_name = "VERSION", value_parser = ["v1", "v2", "off"])]
    pub proxy_protocol: Option<String>,

    /// Expect a PROXY protocol header (v1 or v2) first on each client connection; its address is
    /// the client's from then on. Needs --proxy-from.
    #[arg(long)]
    pub accept_proxy: bool,

    /// Who may send that header: a load balancer's address or range (repeatable).
    #[arg(long, value_name = "CIDR", value_parser = checked(|s| Rule::parse(RuleKind::Allow, s)))]
    pub proxy_from: Vec<String>,

    /// Make inward connections from this local address.
    #[arg(long, value_name = "ADDR", value_parser = checked(options::parse_source))]
    pub source: Option<String>,

    /// Threads that accept in parallel on a burst [default: the number of CPUs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub accept_threads: Option<u16>,

    /// Detach and run in the background; returns once listening.
    #[arg(short, long)]
    pub daemonize: bool,

    /// Write the main process's pid to PATH (atomically, once listening; removed on exit).
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,

    /// Append log lines to PATH instead of stderr (reopened on SIGUSR2 and SIGHUP).
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    /// After SIGTERM/SIGINT, end connections still open after SECS [default: let them finish].
    #[arg(long, value_name = "SECS", value_parser = checked(options::parse_secs))]
    pub drain_timeout: Option<String>,

    /// After binding, switch to USER (and GROUP, or USER's primary group) before accepting.
    #[arg(short, long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,

    /// Log more: start-up details and clients closed before they were handed off.
    #[arg(short, long)]
    pub verbose: bool,

    /// Print a completion script for SHELL on stdout and exit.
    #[arg(long, value_name = "SHELL", help_heading = "Packaging", exclusive = true)]
    pub completions: Option<clap_complete::Shell>,

    /// Print the manual page (roff) on stdout and exit.
    #[arg(long, help_heading = "Packaging", exclusive = true)]
    pub man: bool,

    /// Access rules in command-line order (filled from --allow/--deny after parsing).
    #[arg(skip)]
    pub rules: Vec<Rule>,

    /// Send log lines to syslog (/dev/log, one datagram each) instead of stderr. With --daemonize
    /// and no --log-file this is the default when /dev/log is there.
    #[arg(long, conflicts_with = "log_file")]
    pub syslog: bool,

    /// Log lines as logfmt (`ts=... portfwd[PID]: key=value ...`) or as one JSON object each,
    /// with the same keys [default: logfmt].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<crate::log_format::Format>,

    /// Print the live connections and each mapping's figures of the portfwd whose pid file is
    /// PIDFILE (it must run with --pid-file), and exit.
    #[arg(long, value_name = "PIDFILE", exclusive = true)]
    pub status: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (from the main process).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,

    /// SO_REUSEPORT on every listener: several portfwd processes share a port and the kernel
    /// spreads connections among them (`reuseport=on` on one config line).
    #[arg(long)]
    pub reuseport: bool,

    /// Cap each direction of each connection at RATE bytes per second (K, M, G: 10^3, 10^6,
    /// 10^9), or `off` [default: off].
    #[arg(long, value_name = "RATE", value_parser = checked(options::parse_rate_or_off))]
    pub max_rate: Option<String>,

    /// Re-resolve each named backend every SECS (in the main process, off the event loop), or
    /// `off` [default: off: names are resolved once].
    #[arg(long, value_name = "SECS", value_parser = checked(options::parse_secs_or_off))]
    pub resolve: Option<String>,
}

/// The two forms of the command line, shown after an argument error so a user who swapped or
/// left out an argument sees what was expected.
const EXPECTED: &str = "expected: portfwd [OPTIONS] PORT HOSTNAME HOST_PORT, or portfwd [OPTIONS] --config FILE";

/// Wraps a parser so that clap validates with it but keeps the text (applied later through
/// `Options::set`, the same path a config line takes).
fn checked<T>(
    parse: impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static,
) -> impl clap::builder::TypedValueParser<Value = String> {
    move |s: &str| parse(s).map(|_| s.to_string())
}

impl Cli {
    /// Parses the process's arguments.
    pub fn parse_args() -> Result<Cli, clap::Error> {
        Cli::parse_from_iter(std::env::args_os())
    }

    pub fn parse_from_iter<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Cli::command().try_get_matches_from(args)?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        cli.rules = ordered_rules(&matches);
        cli.split_target()?;
        Ok(cli)
    }

    /// Accepts the socat-style target `HOST:PORT` (or `[ADDR]:PORT`) in place of `HOSTNAME
    /// HOST_PORT`, where it cannot be read two ways: a bare IPv6 address has colons of its own, so
    /// it needs brackets to carry a port.
    fn split_target(&mut self) -> Result<(), clap::Error> {
        if self.host_port.is_some() || self.port.is_none() {
            return Ok(());
        }
        let missing = |detail: &str| {
            Cli::command().error(
                clap::error::ErrorKind::MissingRequiredArgument,
                format!("the following required arguments were not provided: <HOST_PORT>{detail}"),
            )
        };
        let Some(host) = self.hostname.as_deref() else {
            return Err(missing(""));
        };
        let (name, port) = match host.rsplit_once(':') {
            Some((name, port)) if name.starts_with('[') && name.ends_with(']') => (name, port),
            Some((name, port)) if !name.contains(':') && !name.is_empty() => (name, port),
            Some(_) => return Err(missing(" (an IPv6 target with its port is written [ADDR]:PORT)")),
            None => return Err(missing("")),
        };
        let port = parse_port(port).map_err(|e| {
            Cli::command().error(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value '{host}' for 'HOST:PORT': {e}"),
            )
        })?;
        self.hostname = Some(name.to_string());
        self.host_port = Some(port);
        Ok(())
    }

    /// The options every mapping starts from: the defaults, then these flags.
    pub fn options(&self) -> Options {
        let mut o = Options::for_this_host();
        if let Some(d) = self.dispatch {
            o.dispatch = d;
        }
        let flags = [
            ("connect_timeout", &self.connect_timeout),
            ("max_connections", &self.max_connections),
            ("max_per_source", &self.max_per_source),
            ("first_byte_timeout", &self.first_byte_timeout),
            ("idle_timeout", &self.idle_timeout),
            ("keepalive", &self.keepalive),
            ("max_rate", &self.max_rate),
            ("balance", &self.balance),
            ("max_fails", &self.max_fails),
            ("fail_timeout", &self.fail_timeout),
            ("proxy_protocol", &self.proxy_protocol),
            ("source", &self.source),
            ("resolve", &self.resolve),
        ];
        for (key, value) in flags {
            if let Some(v) = value {
                o.set(key, v).expect("validated by clap");
            }
        }
        o.reuseport |= self.reuseport;
        o.accept_proxy = self.accept_proxy;
        for cidr in &self.proxy_from {
            o.set("proxy_from", cidr).expect("validated by clap");
        }
        o
    }

    /// The targets of the command line's mapping: HOSTNAME HOST_PORT, then each --backend.
    pub fn targets(&self) -> Option<Vec<(String, u16)>> {
        let first = (self.hostname.clone()?, self.host_port?);
        let more = self
            .backends
            .iter()
            .map(|b| parse_host_port(b).expect("validated by clap"));
        Some(std::iter::once(first).chain(more).collect())
    }
}

/// `HOST:PORT` or `[ADDR]:PORT`: a host and a port.
fn parse_host_port(text: &str) -> Result<(String, u16), String> {
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) if h.starts_with('[') && h.ends_with(']') => (crate::target::unbracket(h), p),
        Some((h, p)) if !h.contains(':') && !h.is_empty() => (h, p),
        _ => return Err(format!("expected HOST:PORT ([ADDR]:PORT for IPv6), found '{text}'")),
    };
    Ok((host.to_string(), parse_port(port)?))
}

/// --allow and --deny in the order they were given.
fn ordered_rules(m: &ArgMatches) -> Vec<Rule> {
    let mut rules: Vec<(usize, Rule)> = Vec::new();
    for (id, kind) in [("allow", RuleKind::Allow), ("deny", RuleKind::Deny)] {
        if let (Some(values), Some(indices)) = (m.get_many::<String>(id), m.indices_of(id)) {
            for (v, i) in values.zip(indices) {
                rules.push((i, Rule::parse(kind, v).expect("validated by clap")));
            }
        }
    }
    rules.sort_by_key(|(i, _)| *i);
    rules.into_iter().map(|(_, r)| r).collect()
}

/// Turns a clap error into the one line we print: clap's own message, its "did you mean" tip if
/// it has one, and the expected form when a positional argument was wrong; never the usage block.
pub fn one_line_error(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let first: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let joined = first.join(" ");
    let mut msg = joined.strip_prefix("error: ").unwrap_or(&joined).to_string();
    // clap puts suggestions in a later paragraph: `tip: a similar argument exists: '--x'`.
    for tip in text.lines().filter_map(|l| l.trim().strip_prefix("tip: ")) {
        if let Some(similar) = tip.split_once("exists: ").map(|(_, s)| s) {
            msg.push_str(&format!("; did you mean {similar}?"));
        }
    }
    let positional = ["PORT", "HOSTNAME", "HOST_PORT", "HOST:PORT"].iter().any(|name| {
        ["'{}'", "'[{}]'", "<{}>"]
            .iter()
            .any(|form| msg.contains(&form.replace("{}", name)))
    });
    if positional {
        if let Some(bind) = misplaced_address(&msg) {
            msg.push_str(&format!(" (to listen on {bind} only, use --bind {bind})"));
        }
        msg.push_str(&format!("; {EXPECTED}"));
    }
    format!("portfwd: {msg} (see 'portfwd --help')")
}

/// `portfwd 127.0.0.1 7005 ...`: an address where the port was expected, most likely meant as
/// the address to listen on.
fn misplaced_address(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("invalid value '")?;
    let (value, rest) = rest.split_once('\'')?;
    let is_port_arg = rest.starts_with(" for 'PORT'") || rest.starts_with(" for '[PORT]'");
    let is_addr = crate::target::unbracket(value).parse::<std::net::IpAddr>().is_ok();
    (is_port_arg && is_addr).then_some(value)
}

/// `--completions SHELL` and `--man`: what to print instead of running, if either was given.
pub fn generated_text(cli: &Cli) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    if let Some(shell) = cli.completions {
        clap_complete::generate(shell, &mut Cli::command(), "portfwd", &mut out);
    } else if cli.man {
        clap_mangen::Man::new(Cli::command()).render(&mut out).ok()?;
    } else {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(args: &[&str]) -> Result<Cli, String> {
        Cli::parse_from_iter(std::iter::once("portfwd").chain(args.iter().copied())).map_err(|e| one_line_error(&e))
    }

    #[test]
    fn seed_form() {
        let cli = parse(&["7005", "127.0.0.1", "8005"]).unwrap();
        assert_eq!(
            (cli.port, cli.hostname.as_deref(), cli.host_port),
            (Some(7005), Some("127.0.0.1"), Some(8005))
        );
        assert_eq!(cli.options(), Options::for_this_host());
    }

    #[test]
    fn flags_become_options_and_rules_keep_their_order() {
        let cli = parse(&[
            "--deny",
            "10.0.0.1",
            "--idle-timeout",
            "30",
            "--allow",
            "10.0.0.0/8",
            "--dispatch",
            "accept",
            "1",
            "h",
            "2",
        ])
        .unwrap();
        let o = cli.options();
        assert_eq!(o.idle_timeout, Some(Duration::from_secs(30)));
        assert_eq!(o.dispatch, Dispatch::Accept);
        let rules: Vec<String> = cli.rules.iter().map(|r| r.to_string()).collect();
        assert_eq!(rules, ["deny=10.0.0.1/32", "allow=10.0.0.0/8"]);
    }

    #[test]
    fn config_forms() {
        assert!(parse(&["--config", "setup.config"]).is_ok());
        assert!(parse(&["--check-config", "setup.config"]).is_ok());
        assert!(parse(&["--config", "x", "1", "h", "2"]).is_err());
        assert!(parse(&["--config", "x", "--bind", "127.0.0.1"]).is_err());
    }

    #[test]
    fn errors_are_one_line() {
        for args in [
            &["0", "h", "1"][..],
            &["70000", "h", "1"],
            &["x", "h", "1"],
            &["1", "h"],
            &["1", "h", "2", "--dispatch", "later"],
            &["1", "h", "2", "--allow", "nonsense"],
        ] {
            let err = parse(args).unwrap_err();
            assert!(!err.contains('\n'), "{err}");
            assert!(err.starts_with("portfwd: "), "{err}");
        }
        assert!(parse(&["0", "h", "1"]).unwrap_err().contains("1 to 65535"));
        assert!(
            parse(&["1", "h", "2", "--connect-timeout", "0"])
                .unwrap_err()
                .contains("greater than 0")
        );
    }

    #[test]
    fn a_mistyped_flag_gets_a_suggestion() {
        let err = parse(&["--max-conections", "5", "1", "h", "2"]).unwrap_err();
        assert!(err.contains("did you mean '--max-connections'?"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn positional_mistakes_show_the_expected_form() {
        let err = parse(&["127.0.0.1", "25001", "25112"]).unwrap_err();
        assert!(err.contains("use --bind 127.0.0.1"), "{err}");
        assert!(
            err.contains("expected: portfwd [OPTIONS] PORT HOSTNAME HOST_PORT"),
            "{err}"
        );
        let err = parse(&["7005", "127.0.0.1"]).unwrap_err();
        assert!(err.contains("HOST_PORT") && err.contains("expected: "), "{err}");
        // Not a positional mistake: no usage hint.
        let err = parse(&["1", "h", "2", "--dispatch", "later"]).unwrap_err();
        assert!(!err.contains("expected: portfwd"), "{err}");
    }

    #[test]
    fn the_target_may_be_written_host_colon_port() {
        for (args, host, port) in [
            (&["7005", "127.0.0.1:8005"][..], "127.0.0.1", 8005),
            (&["7005", "db.internal:5432"], "db.internal", 5432),
            (&["7005", "[::1]:8005"], "[::1]", 8005),
            (&["7005", "::1", "8005"], "::1", 8005),
        ] {
            let cli = parse(args).unwrap();
            assert_eq!(
                (cli.hostname.as_deref(), cli.host_port),
                (Some(host), Some(port)),
                "{args:?}"
            );
        }
        // A bare IPv6 address cannot carry a port: its colons are its own.
        assert!(parse(&["7005", "::1:8005"]).unwrap_err().contains("[ADDR]:PORT"));
        assert!(parse(&["7005", "h:0"]).unwrap_err().contains("1 to 65535"));
        assert!(parse(&["7005", ":80"]).is_err());
    }

    #[test]
    fn completions_and_man_page_come_from_the_definition() {
        let cli = parse(&["--completions", "bash"]).unwrap();
        let text = String::from_utf8(generated_text(&cli).unwrap()).unwrap();
        assert!(text.contains("--max-connections") && text.contains("portfwd"), "{text}");
        let cli = parse(&["--man"]).unwrap();
        let text = String::from_utf8(generated_text(&cli).unwrap()).unwrap();
        assert!(text.starts_with(".ie") && text.contains("\\-\\-dispatch"), "{text}");
        assert!(generated_text(&parse(&["1", "h", "2"]).unwrap()).is_none());
        assert!(parse(&["--man", "1", "h", "2"]).is_err());
    }

    #[test]
    fn more_backends_and_their_options() {
        let cli = parse(&[
            "--backend",
            "10.0.0.2:8005",
            "7005",
            "10.0.0.1:8005",
            "--backend",
            "[::1]:9",
            "--balance",
            "source",
            "--proxy-protocol",
            "v2",
            "--accept-proxy",
            "--proxy-from",
            "10.0.0.0/8",
            "--source",
            "127.0.0.9",
        ])
        .unwrap();
        assert_eq!(
            cli.targets().unwrap(),
            [
                ("10.0.0.1".to_string(), 8005),
                ("10.0.0.2".to_string(), 8005),
                ("::1".to_string(), 9)
            ]
        );
        let o = cli.options();
        assert_eq!(
            o.diff(&Options::for_this_host()).join(" "),
            "balance=source proxy_protocol=v2 accept_proxy=on proxy_from=10.0.0.0/8 source=127.0.0.9"
        );
        assert!(
            parse(&["--backend", "::1:9", "1", "h", "2"])
                .unwrap_err()
                .contains("[ADDR]:PORT")
        );
        assert!(
            parse(&["--backend", "h:0", "1", "h", "2"])
                .unwrap_err()
                .contains("1 to 65535")
        );
        assert!(parse(&["--config", "x", "--backend", "h:1"]).is_err());
        assert!(parse(&["--balance", "random", "1", "h", "2"]).is_err());
    }
}
