//! What a test needs of its surroundings: waiting (always bounded), temporary directories,
//! helper processes killed by pid, the descriptor limit, taking turns with other heavy tests,
//! and the one way to skip with a reason.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Polls `cond` every 10 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Waits (bounded) for a child; kills it on timeout. Returns its exit code (128 for a signal),
/// `None` on timeout.
pub fn wait_child(child: &mut Child, limit: Duration) -> Option<i32> {
    let mut code = None;
    let done = wait_until(limit, || match child.try_wait().unwrap() {
        Some(st) => {
            code = Some(st.code().unwrap_or(128));
            true
        }
        None => false,
    });
    if !done {
        let _ = child.kill();
        let _ = child.wait();
    }
    code
}

/// A helper process a test started; killed by pid and reaped when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fresh temporary directory named for `tag`, removed with everything in it when dropped.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("portfwd-{tag}-"))
            .tempdir()
            .expect("create a temporary directory");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

/// The name of the running test (libtest names each test's thread after it).
fn test_name() -> String {
    thread::current().name().unwrap_or("?").to_string()
}

/// Says that a test (or a part of it) does not run here, and why: `SKIP: <test>: <reason>`.
/// The caller returns (or leaves the part out) right after. Written straight to stderr, past the
/// test harness's capture of `eprintln!`, so that a skip shows in every run.
pub fn skip(reason: impl std::fmt::Display) {
    let _ = writeln!(io::stderr(), "SKIP: {}: {reason}", test_name());
}

/// Tests that load the whole machine (floods, thousands of connections or processes) or measure
/// what such load would disturb (CPU use, context switches, rates) take turns: the guard holds
/// the turn. A test that panicked while holding it does not block the others.
pub fn serial() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes room for `needed` open descriptors in this process (and in the forwarders it starts,
/// which inherit the limit): raises the soft `RLIMIT_NOFILE` to the hard limit if it is lower
/// than `needed`. Returns the reason to skip when even the hard limit is too low.
pub fn need_descriptors(needed: u64) -> Result<(), String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!("getrlimit(RLIMIT_NOFILE): {}", io::Error::last_os_error()));
    }
    if lim.rlim_cur >= needed {
        return Ok(());
    }
    if lim.rlim_max < needed {
        return Err(format!(
            "needs {needed} open descriptors, but the hard limit (ulimit -Hn) is {}",
            lim.rlim_max
        ));
    }
    let raised = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we own; lowering nothing, raising the soft limit up to
    // the hard one needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(format!("setrlimit(RLIMIT_NOFILE): {}", io::Error::last_os_error()));
    }
    Ok(())
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `promtool check metrics` (Debian package prometheus) on a scrape's text: `None` when promtool
/// is not installed; otherwise `Err` with what it printed unless it exited 0 and printed nothing
/// (it prints lint findings and still exits 0 for some).
pub fn promtool_check(text: &str) -> Option<Result<(), String>> {
    let promtool = "/usr/bin/promtool";
    if !Path::new(promtool).exists() {
        return None;
    }
    let mut check = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(if out.status.success() && printed.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {printed}", out.status))
    })
}
