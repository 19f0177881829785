use portfwd::cli::{self, Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    portfwd::ensure_std_fds();
    portfwd::lean_malloc();
    let cli = match Cli::parse_args() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{}", cli::one_line_error(&e));
            return ExitCode::from(2);
        }
    };
    if let Some(text) = cli::generated_text(&cli) {
        use std::io::Write;
        return match std::io::stdout().write_all(&text) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("portfwd: cannot write to stdout: {e}");
                ExitCode::from(2)
            }
        };
    }
    match portfwd::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!: stderr may be the log by now, non-blocking, and a full pipe must not
            // turn this exit into a panic.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "{}", e.text());
            ExitCode::from(2)
        }
    }
}
