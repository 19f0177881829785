//! The live view `portfwd --status PIDFILE` prints: on `SIGUSR1` the main process writes what it
//! knows of its mappings and live connections to a file beside the pid file (`PIDFILE.status`),
//! replaced whole by a rename, so a reader never sees half of one. Written only when asked, in one
//! small write: the loop never waits on a reader. Main process.
//!
//! Bytes are not in it: a connection's counters live in its own processes until it ends (then in
//! its log line and the `bytes_*` totals of the stats line).

use super::EventLoop;
use crate::log::{Line, Quoted};
use crate::{log, sys};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Numbers each view, so `--status` can tell the one it asked for from an older one.
static SNAPSHOT: AtomicU64 = AtomicU64::new(0);

impl EventLoop {
    /// Writes the live view, if there is a pid file to write it beside.
    pub(super) fn write_live_view(&self) {
        let Some(path) = &self.settings.status_file else {
            return;
        };
        if let Err(e) = replace(path, self.live_view().as_bytes()) {
            log!(
                "event=status-write-failed path={} error={}",
                Quoted(path.display()),
                Quoted(e)
            );
        }
    }

    /// `event=status ...`, then a `mapping` line per listener, then a `connection` line per live
    /// connection (oldest first): connection processes (`state=forwarding`, with their pid) and
    /// clients waiting for their first byte (`state=waiting`).
    fn live_view(&self) -> String {
        let snapshot = SNAPSHOT.fetch_add(1, Ordering::Relaxed) + 1;
        let mut ts = Line::new();
        ts.timestamp(sys::realtime_ms());
        let mut text = format!(
            "event=status snapshot={snapshot} ts={} pid={} live={} waiting={} log_dropped={}\n",
            String::from_utf8_lossy(ts.as_bytes()),
            std::process::id(),
            self.children.len(),
            self.waiting.len(),
            crate::log_sink::dropped()
        );
        for line in self.mapping_lines("mapping") {
            text.push_str(&line);
            text.push('\n');
        }
        let now = sys::monotonic_ms();
        let forwarding = self.children.iter().map(|(pid, c)| (c, Some(*pid)));
        let waiting = self.waiting.iter().map(|(_, c)| (c, None));
        let mut conns: Vec<_> = forwarding.chain(waiting).collect();
        conns.sort_by_key(|(c, _)| c.accepted_ms);
        for (conn, pid) in conns {
            let local = self.services.get(conn.slot).and_then(Option::as_ref).map(|s| s.local);
            let _ = write!(
                text,
                "event=connection client={} listen={} target={} state={}",
                conn.peer,
                local.map_or_else(|| conn.routes.listener().bind.to_string(), |l| l.to_string()),
                Quoted(conn.route().mapping.target_label()),
                if pid.is_some() { "forwarding" } else { "waiting" }
            );
            if let Some(pid) = pid {
                let _ = write!(text, " pid={pid}");
            }
            let _ = writeln!(text, " age_ms={}", now.saturating_sub(conn.accepted_ms));
        }
        text
    }
}

/// Writes `bytes` to a temporary file beside `path` and renames it into place.
fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
