//! Any forwarder binary with the seed's CLI (`PROG [PRE_ARGS] PORT HOST HOST_PORT`) — portfwd,
//! the C reference, others — started in a process group of its own, watched through /proc, and
//! stopped whole (the C reference leaks processes by design).

use crate::env::wait_until;
use crate::net::{free_port, retry_ports};
use crate::procs::{self, ProcInfo};
use std::collections::HashSet;
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Reference,
    Portfwd,
    Other,
}

/// A forwarder binary with the seed's CLI.
#[derive(Clone, Debug)]
pub struct Spec {
    pub label: String,
    pub path: PathBuf,
    pub kind: Kind,
    /// Arguments placed before the seed's three positional arguments.
    pub pre_args: Vec<String>,
    /// Flag taking a listen address (portfwd: `--bind`); `None` means the binary binds every
    /// address, and clients connect to the wanted one.
    pub bind_flag: Option<String>,
    /// Arguments that make it hand a connection off at accept time, for server-speaks-first
    /// protocols (portfwd: `--dispatch accept`).
    pub accept_args: Option<Vec<String>>,
}

impl Spec {
    pub fn reference(path: PathBuf) -> Spec {
        Spec {
            label: "C reference".into(),
            path,
            kind: Kind::Reference,
            pre_args: vec![],
            bind_flag: None,
            accept_args: None,
        }
    }

    pub fn portfwd(path: PathBuf) -> Spec {
        Spec {
            label: "portfwd".into(),
            path,
            kind: Kind::Portfwd,
            pre_args: vec![],
            bind_flag: Some("--bind".into()),
            accept_args: Some(vec!["--dispatch".into(), "accept".into()]),
        }
    }

    /// `[LABEL=]PATH[,ARG...]`: ARGs go before the seed's positional arguments.
    pub fn parse_extra(s: &str) -> Result<Spec, String> {
        let (label, rest) = match s.split_once('=') {
            Some((l, r)) if !l.contains('/') && !l.is_empty() => (Some(l.to_string()), r),
            _ => (None, s),
        };
        let mut parts = rest.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| format!("empty binary in {s:?}"))?;
        let path = PathBuf::from(path);
        let label = label.unwrap_or_else(|| {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| s.to_string())
        });
        Ok(Spec {
            label,
            path,
            kind: Kind::Other,
            pre_args: parts.map(str::to_string).collect(),
            bind_flag: None,
            accept_args: None,
        })
    }
}

/// Socket inodes listening on TCP `port` (any address) on this machine.
fn listening_inodes(port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(file) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            if let Some((_, p)) = f[1].rsplit_once(':')
                && u16::from_str_radix(p, 16).ok() == Some(port)
            {
                out.push(f[9].to_string());
            }
        }
    }
    out
}

/// Is process `pid` itself listening on TCP `port`? (Another program that happens to listen on
/// the same port on another address does not count.)
pub fn listening_by(pid: u32, port: u16) -> bool {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return false;
    }
    procs::fd_targets(pid).iter().any(|(_, t)| {
        t.strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
            .is_some_and(|ino| inodes.iter().any(|i| i == ino))
    })
}

static LOG_SEQ: AtomicUsize = AtomicUsize::new(0);

/// Main pids of the forwarders this process is running (so stopping one never touches another).
static MAINS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// How to start one forwarder.
pub struct Launch<'a> {
    pub spec: &'a Spec,
    pub bind: Option<Ipv4Addr>,
    pub host: String,
    pub host_port: u16,
    pub accept_dispatch: bool,
    /// Fixed listen port; `None` picks a free one (retried if taken).
    pub port: Option<u16>,
}

impl Launch<'_> {
    pub fn args(&self, port: u16) -> Vec<String> {
        let mut args = self.spec.pre_args.clone();
        if let (Some(flag), Some(addr)) = (&self.spec.bind_flag, self.bind) {
            args.push(flag.clone());
            args.push(addr.to_string());
        }
        if self.accept_dispatch
            && let Some(a) = &self.spec.accept_args
        {
            args.extend(a.iter().cloned());
        }
        args.push(port.to_string());
        args.push(self.host.clone());
        args.push(self.host_port.to_string());
        args
    }

    /// Starts the forwarder and waits (bounded) until its port is listening.
    pub fn start(&self) -> Result<Fwd, String> {
        match self.port {
            Some(p) => self.start_on(p),
            None => retry_ports(|| self.start_on(free_port())),
        }
    }

    fn start_on(&self, port: u16) -> Result<Fwd, String> {
        let n = LOG_SEQ.fetch_add(1, Ordering::Relaxed);
        let log_path = std::env::temp_dir().join(format!("portfwd-compare-{}-{n}.log", std::process::id()));
        let log = fs::File::create(&log_path).map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let child = Command::new(&self.spec.path)
            .args(self.args(port))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.spec.path.display()))?;
        let pgid = child.id();
        if let Ok(mut m) = MAINS.lock() {
            m.push(pgid);
        }
        let mut fwd = Fwd {
            child,
            pgid,
            port,
            label: self.spec.label.clone(),
            log_path,
            stopped: false,
        };
        let mut exited = None;
        let up = wait_until(Duration::from_secs(5), || {
            exited = fwd.child.try_wait().ok().flatten();
            exited.is_some() || listening_by(fwd.pgid, port)
        });
        match exited {
            Some(status) => Err(format!(
                "{} exited at start ({status}): {}",
                fwd.label,
                fwd.log().trim()
            )),
            None if up => Ok(fwd),
            None => Err(format!("{} did not listen on port {port} within 5 s", fwd.label)),
        }
    }
}

/// A running forwarder in its own process group.
pub struct Fwd {
    pub child: Child,
    pub pgid: u32,
    pub port: u16,
    pub label: String,
    pub log_path: PathBuf,
    stopped: bool,
}

impl Fwd {
    pub fn pid(&self) -> u32 {
        self.pgid
    }

    /// The forwarder's processes: the main process, its descendants (found through parent
    /// links, whatever process group they moved to) and any other member of its process group.
    /// Orphans re-parented to us are not included (a real init would reap them).
    pub fn procs(&self) -> Vec<ProcInfo> {
        let mut set: Vec<ProcInfo> = std::iter::once(self.pgid)
            .chain(procs::descendants(self.pgid))
            .filter_map(procs::stat)
            .collect();
        let seen: HashSet<u32> = set.iter().map(|p| p.pid).collect();
        set.extend(
            procs::scan()
                .into_iter()
                .filter(|p| p.pgrp == self.pgid && !seen.contains(&p.pid)),
        );
        set
    }

    /// Open descriptors of the main process.
    pub fn fd_count(&self) -> Option<usize> {
        procs::fd_count(self.pgid)
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Kills the main process, its descendants and every process group they are in (which finds
    /// those re-parented to us after their parent died), and reaps what we can. The kill comes
    /// first, whatever the machine's load; only the sweep after it is bounded (30 s).
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let me = std::process::id();
        // SAFETY: plain getter.
        let mine = unsafe { libc::getpgrp() } as u32;
        let others: Vec<u32> = MAINS
            .lock()
            .map(|m| m.iter().copied().filter(|&p| p != self.pgid).collect())
            .unwrap_or_default();
        // 1. Snapshot the tree while the main process still links it.
        let tree: Vec<ProcInfo> = std::iter::once(self.pgid)
            .chain(procs::descendants(self.pgid))
            .filter_map(procs::stat)
            .collect();
        let mut groups: HashSet<u32> = tree.iter().map(|p| p.pgrp).collect();
        groups.insert(self.pgid);
        groups.retain(|&g| g > 1 && g != mine && !others.contains(&g));
        // 2. Kill every group and every process of the tree.
        for &g in &groups {
            // SAFETY: a process group of a forwarder we started.
            unsafe { libc::kill(-(g as i32), libc::SIGKILL) };
        }
        for p in tree.iter().filter(|p| p.pid != me && !others.contains(&p.pid)) {
            // SAFETY: a process descending from a forwarder we started.
            unsafe { libc::kill(p.pid as i32, libc::SIGKILL) };
        }
        let _ = self.child.wait();
        // 3. Sweep: kill what is left of those groups, reap the zombies that were re-parented to
        //    us, until nothing is left (bounded).
        wait_until(Duration::from_secs(30), || {
            let mut busy = false;
            for p in procs::scan().iter().filter(|p| groups.contains(&p.pgrp) && p.pid != me) {
                if p.state != 'Z' {
                    busy = true;
                    // SAFETY: as above.
                    unsafe { libc::kill(p.pid as i32, libc::SIGKILL) };
                } else if p.ppid == me {
                    busy = true;
                    let mut st = 0;
                    // SAFETY: reaping a zombie child of ours.
                    unsafe { libc::waitpid(p.pid as i32, &mut st, libc::WNOHANG) };
                }
            }
            !busy
        });
        if let Ok(mut m) = MAINS.lock() {
            m.retain(|&p| p != self.pgid);
        }
        let _ = fs::remove_file(&self.log_path);
    }
}

impl Drop for Fwd {
    fn drop(&mut self) {
        self.stop();
    }
}
