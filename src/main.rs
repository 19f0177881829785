use portfwd::cli::{self, Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    portfwd::ensure_std_fds();
    portfwd::lean_malloc();
    portfwd::builtin_name_services();
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
            eprintln!("{}", e.text());
            ExitCode::from(2)
        }
    }
}
