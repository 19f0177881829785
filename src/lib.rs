//! portfwd: a TCP port forwarder built the Unix way, one process per connection.
//!
//! The library is the binary's inside; its one door is [`run`] (with [`cli`] to parse the command
//! line and the three start-up helpers `main` calls first). docs/design.md maps every module, and
//! says which run in the main process and which in a connection process after `fork()`.
//!
//! Main process: [`cli`], `config`, `options`, `grouping`, `target`, `listener`, `daemon`,
//! `privileges`, `app`, `event_loop`, `accept_pool`, `access`, `route`, `signals`, `status`,
//! `handoff` (its side of the fork). Connection process, after fork: `conn`. Both: `log`,
//! `log_format`, `log_sink`, `sys`, `handoff::plan`.

mod accept_pool;
mod access;
mod activation;
mod app;
mod backends;
pub mod cli;
mod config;
mod conn;
mod daemon;
mod event_loop;
mod grouping;
mod handoff;
mod listener;
mod log;
mod log_format;
mod log_sink;
mod metrics;
mod options;
mod privileges;
mod proxy_protocol;
mod resolver;
mod route;
mod signals;
mod status;
mod sys;
mod target;

pub use app::{StartError, builtin_name_services, ensure_std_fds, lean_malloc, run};

/// docs/design.md is the one map of the code: its module table must name every source file of
/// the product, and nothing that is gone.
#[cfg(test)]
mod design_doc {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    fn root() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    fn read(path: &str) -> String {
        std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The paths in the first column of the table under `## Modules`.
    fn listed() -> BTreeSet<String> {
        let doc = read("docs/design.md");
        let section = doc
            .split("\n## ")
            .find(|s| s.starts_with("Modules"))
            .expect("a Modules section");
        section
            .lines()
            .filter_map(|line| {
                line.strip_prefix("| `")?
                    .split_once('`')
                    .map(|(path, _)| path.to_string())
            })
            .collect()
    }

    /// Every `.rs` file under src/ but the extra binaries of src/bin/ (tools, not the product).
    fn sources(dir: &Path, found: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path: PathBuf = entry.unwrap().path();
            let relative = path.strip_prefix(root()).unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if relative != "src/bin" {
                    sources(&path, found);
                }
            } else if relative.ends_with(".rs") {
                found.insert(relative);
            }
        }
    }

    #[test]
    fn the_module_table_lists_every_source_file_and_only_those() {
        let listed = listed();
        let mut files = BTreeSet::new();
        sources(&root().join("src"), &mut files);
        let missing: Vec<_> = files.difference(&listed).collect();
        let gone: Vec<_> = listed.difference(&files).collect();
        assert!(missing.is_empty(), "not in docs/design.md's module table: {missing:?}");
        assert!(
            gone.is_empty(),
            "in docs/design.md's module table but not in src/: {gone:?}"
        );
    }

    #[test]
    fn the_docs_list_every_outcome() {
        let design = read("docs/design.md");
        let readme = read("README.md");
        for outcome in crate::conn::Outcome::ALL {
            let status = match outcome.exit_code() {
                Some(code) => format!("{code} {}", outcome.name()),
                None => format!("{} (main process, no exit status)", outcome.name()),
            };
            assert!(
                design.contains(&status),
                "docs/design.md does not list exit status {status}"
            );
            let word = format!("`{}`", outcome.name());
            assert!(readme.contains(&word), "README.md's outcome list lacks {word}");
        }
    }
}
