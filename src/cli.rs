//! The command line: the seed's `server port hostname host-port`, plus options.

use crate::target::parse_port;
use clap::{Parser, ValueEnum};
use std::time::Duration;

/// When a waiting client socket is handed to a connection process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
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

#[derive(Parser, Debug)]
#[command(
    name = "portfwd",
    version,
    about = "Forward TCP connections from a local port to HOSTNAME:HOST_PORT, one process per connection.",
    after_help = "Each connection is handed to its own process when the client first sends (--dispatch data),\n\
                  or at once (--dispatch accept, for protocols where the server speaks first: SMTP, FTP,\n\
                  POP3, MySQL, VNC). A FIN is passed on as a FIN, a reset as a reset. One log line per\n\
                  finished connection goes to stderr."
)]
pub struct Cli {
    /// Port to listen on (1-65535).
    #[arg(value_name = "PORT", value_parser = parse_port)]
    pub port: u16,

    /// Inward host: a name, an IPv4 address, or an IPv6 address (brackets optional).
    #[arg(value_name = "HOSTNAME")]
    pub hostname: String,

    /// Inward port (1-65535).
    #[arg(value_name = "HOST_PORT", value_parser = parse_port)]
    pub host_port: u16,

    /// Address to listen on [default: every interface, IPv6 and IPv4].
    #[arg(short, long, value_name = "ADDR")]
    pub bind: Option<String>,

    /// Threads that accept in parallel on a burst [default: the number of CPUs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub accept_threads: Option<u16>,

    /// When to hand a connection to its process: on the client's first data, or at once.
    #[arg(long, value_enum, default_value_t = Dispatch::Data, value_name = "WHEN")]
    pub dispatch: Dispatch,

    /// Seconds to wait for the inward connection before resetting the client.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_secs)]
    pub connect_timeout: Duration,

    /// Log more: start-up details and connections closed before they were handed off.
    #[arg(short, long)]
    pub verbose: bool,
}

/// Parses a positive number of seconds, fractions allowed (`0.5`).
pub fn parse_secs(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 86_400.0 * 365.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "invalid duration '{text}': expected a number of seconds greater than 0"
        )),
    }
}

/// Turns a clap error into the one line we print: clap's own text without usage and tips.
pub fn one_line_error(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let first: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let joined = first.join(" ");
    let msg = joined.strip_prefix("error: ").unwrap_or(&joined);
    format!("portfwd: {msg} (see 'portfwd --help')")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, String> {
        Cli::try_parse_from(std::iter::once("portfwd").chain(args.iter().copied())).map_err(|e| one_line_error(&e))
    }

    #[test]
    fn seed_form() {
        let cli = parse(&["7005", "127.0.0.1", "8005"]).unwrap();
        assert_eq!(
            (cli.port, cli.hostname.as_str(), cli.host_port),
            (7005, "127.0.0.1", 8005)
        );
        assert_eq!(cli.dispatch, Dispatch::Data);
        assert_eq!(cli.connect_timeout, Duration::from_secs(5));
    }

    #[test]
    fn errors_are_one_line() {
        for args in [
            &["0", "h", "1"][..],
            &["70000", "h", "1"],
            &["x", "h", "1"],
            &["1", "h"],
            &["1", "h", "2", "--dispatch", "later"],
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
}
