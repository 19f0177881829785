//! portfwd-compare: the comparison suite (`harness::compare`) run against portfwd, the C
//! reference and any extra binary with the seed's CLI. Prints what each observed side by side,
//! and exits 0 when portfwd behaves as documented.

use clap::Parser;
use harness::compare::{self, Obs, Report, SCENARIOS, ScenarioId};
use harness::launch::{Kind, Spec};
use harness::{procs, reference};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "portfwd-compare",
    about = "Run the comparison scenario suite against portfwd, the C reference and other forwarders with the seed's CLI",
    after_help = "EXTRA binaries are given as [LABEL=]PATH[,ARG...]; the ARGs go before the seed's \
                  three positional arguments (PORT HOSTNAME HOST_PORT). Extra binaries are assumed \
                  to bind every address (like the seed), so seed_case2 connects to 127.0.0.41 on them."
)]
struct Args {
    /// Build the C reference into PATH (unless it is built from the current source already),
    /// print PATH, and exit.
    #[arg(long, value_name = "PATH")]
    build_reference: Option<PathBuf>,
    /// portfwd binary (default: `portfwd` next to this program).
    #[arg(long)]
    portfwd: Option<PathBuf>,
    /// C reference binary (default: build it into reference/server in this program's target
    /// directory).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Leave out the C reference column.
    #[arg(long)]
    no_reference: bool,
    /// Leave out the portfwd column (e.g. to try the suite on other binaries only).
    #[arg(long)]
    no_portfwd: bool,
    /// Run only these scenarios (comma separated ids; see --list).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// List the scenarios and what portfwd is documented to do, then exit.
    #[arg(long)]
    list: bool,
    /// How long to wait for something that may never happen (EOF, a banner), in ms.
    #[arg(long, default_value_t = 2000)]
    wait_ms: u64,
    /// Output: `table` (Markdown), `kv` (one machine-readable line per result), or `both`.
    #[arg(long, default_value = "table")]
    format: String,
    /// Extra forwarder binaries: [LABEL=]PATH[,ARG...]
    extra: Vec<String>,
}

fn die(msg: impl std::fmt::Display) -> ! {
    eprintln!("portfwd-compare: {msg}");
    std::process::exit(2);
}

fn main() {
    let args = Args::parse();
    let exe = std::env::current_exe().ok();
    if let Some(out) = &args.build_reference {
        match reference::build(out) {
            Ok(p) => println!("{}", p.display()),
            Err(e) => die(e),
        }
        return;
    }
    if args.list {
        for s in SCENARIOS {
            println!("{:28} {}\n{:28} portfwd: {}", s.name, s.title, "", s.expect);
        }
        return;
    }
    if !matches!(args.format.as_str(), "table" | "kv" | "both") {
        die("--format must be table, kv or both");
    }
    let only: Vec<ScenarioId> = args
        .only
        .iter()
        .map(|o| ScenarioId::from_name(o).unwrap_or_else(|| die(format!("unknown scenario {o:?} (see --list)"))))
        .collect();
    procs::set_subreaper();

    let mut specs = Vec::new();
    if !args.no_reference {
        let path = match &args.reference {
            Some(p) => p.clone(),
            None => reference::build(&reference::default_path(exe.as_deref())).unwrap_or_else(|e| die(e)),
        };
        specs.push(Spec::reference(path));
    }
    if !args.no_portfwd {
        let path = args.portfwd.clone().unwrap_or_else(|| {
            exe.as_deref()
                .and_then(|p| p.parent().map(|d| d.join("portfwd")))
                .unwrap_or_default()
        });
        specs.push(Spec::portfwd(path));
    }
    for e in &args.extra {
        specs.push(Spec::parse_extra(e).unwrap_or_else(|err| die(err)));
    }
    for s in &specs {
        if !s.path.is_file() {
            die(format!("{} binary not found: {}", s.label, s.path.display()));
        }
    }

    let report = compare::run(
        specs,
        &only,
        Duration::from_millis(args.wait_ms),
        compare::print_progress,
    );
    if args.format != "table" {
        print_kv(&report);
    }
    if args.format != "kv" {
        print_table(&report);
    }
    let ok = report.portfwd_ok();
    if !args.no_portfwd {
        println!(
            "\nportfwd {} as documented",
            if ok { "behaves" } else { "DOES NOT behave" }
        );
    }
    std::process::exit(if ok { 0 } else { 1 });
}

fn kind_name(k: Kind, i: usize) -> String {
    match k {
        Kind::Reference => "reference".into(),
        Kind::Portfwd => "portfwd".into(),
        Kind::Other => format!("extra{i}"),
    }
}

/// One `RESULT scenario=... kind=... ok=... na=... k=v...` line per result.
fn print_kv(report: &Report) {
    for row in &report.rows {
        for (i, (spec, obs)) in report.specs.iter().zip(&row.cells).enumerate() {
            let mut line = format!(
                "RESULT scenario={} kind={} ok={} na={}",
                row.scenario.name,
                kind_name(spec.kind, i),
                obs.ok,
                obs.na
            );
            for (k, v) in obs.fields() {
                line += &format!(" {k}={v}");
            }
            println!("{line}");
        }
    }
}

fn mark(kind: Kind, o: &Obs) -> &'static str {
    match (kind, o.na) {
        (_, true) => "",
        (Kind::Portfwd, _) if o.ok => "✓ ",
        (Kind::Portfwd, _) => "✗ UNEXPECTED: ",
        _ => "",
    }
}

fn print_table(report: &Report) {
    let mut head = String::from("| Scenario |");
    let mut sep = String::from("|---|");
    for s in &report.specs {
        head += &format!(" {} |", s.label);
        sep += "---|";
    }
    println!("{head}\n{sep}");
    for row in &report.rows {
        let mut line = format!("| {} (`{}`) |", row.scenario.title, row.scenario.name);
        for (s, o) in report.specs.iter().zip(&row.cells) {
            line += &format!(" {}{} |", mark(s.kind, o), o.text.replace('|', "/"));
        }
        println!("{line}");
    }
    println!("\n✓ = portfwd did what it is documented to do. Documented portfwd behaviour per scenario:");
    for row in &report.rows {
        println!("- `{}`: {}", row.scenario.name, row.scenario.expect);
    }
}
