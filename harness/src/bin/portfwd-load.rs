//! portfwd-load: the seed's test case 1 ("maximum active sockets") against any forwarder with the
//! seed's CLI. See `harness::load`.

use clap::Parser;
use harness::load;

fn main() {
    load::serve_role();
    let a = load::Args::parse();
    match load::run(&a) {
        Ok(summary) => {
            if a.kv {
                println!("{}", summary.kv_line());
            }
        }
        Err(e) => {
            eprintln!("portfwd-load: {e}");
            std::process::exit(2);
        }
    }
}
