//! `portfwd --status PIDFILE`: asks the portfwd whose pid file it is for its live view (`SIGUSR1`,
//! which makes it write `PIDFILE.status`; see `event_loop::live_view`) and prints it. A command of
//! its own, in its own process: it never touches the running forwarder but by that signal.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where a forwarder with pid file `pid_file` writes its live view: `PIDFILE.status`.
pub(crate) fn snapshot_path(pid_file: &Path) -> PathBuf {
    let mut path = pid_file.as_os_str().to_owned();
    path.push(".status");
    PathBuf::from(path)
}

/// The `snapshot=N` of a live view's first line.
fn snapshot_of(text: &str) -> Option<u64> {
    let first = text.lines().next()?;
    first.split(' ').find_map(|w| w.strip_prefix("snapshot=")?.parse().ok())
}

/// Signals the forwarder, waits (at most 5 s) for a new view and prints it.
pub(crate) fn show(pid_file: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(pid_file).map_err(|e| format!("--status {}: {e}", pid_file.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| format!("--status {}: not a pid file", pid_file.display()))?;
    let path = snapshot_path(pid_file);
    let before = std::fs::read_to_string(&path).ok().and_then(|t| snapshot_of(&t));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGUSR1)
        .map_err(|e| format!("--status: cannot signal pid {pid} (from {}): {e}", pid_file.display()))?;
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(view) = std::fs::read_to_string(&path)
            && snapshot_of(&view).is_some_and(|s| Some(s) != before)
        {
            use std::io::Write as _;
            let _ = std::io::stdout().write_all(view.as_bytes());
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(format!(
                "--status: pid {pid} wrote no live view to {} within 5 s (is it portfwd, started with this --pid-file?)",
                path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_sits_beside_the_pid_file_and_is_numbered() {
        assert_eq!(snapshot_path(Path::new("/run/p.pid")), Path::new("/run/p.pid.status"));
        assert_eq!(snapshot_of("event=status snapshot=12 ts=x\nevent=mapping"), Some(12));
        assert_eq!(snapshot_of(""), None);
    }
}
