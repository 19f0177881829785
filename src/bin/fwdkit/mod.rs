//! Shared helpers for the comparison tools (`portfwd-compare`, `portfwd-load`)
//! and `tests/compare.rs`: building the C reference, describing a forwarder
//! binary with the seed's CLI, starting it in its own process group, watching
//! its processes and descriptors through /proc, and stopping it whole.
//!
//! Included with `#[path = "fwdkit/mod.rs"] mod fwdkit;` so each user takes
//! only what it needs.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// The crate root as seen at compile time.
pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Build `tests/reference/server.c` into `out` with `cc -O2 -fopenmp`, unless
/// `out` is already newer than the source. Safe to call from several
/// processes at once (each compiles to its own temporary file, then renames).
pub fn build_reference(root: &Path, out: &Path) -> Result<PathBuf, String> {
    let src = root.join("tests/reference/server.c");
    let src_time = fs::metadata(&src)
        .and_then(|m| m.modified())
        .map_err(|e| format!("cannot read {}: {e}", src.display()))?;
    if let Ok(t) = fs::metadata(out).and_then(|m| m.modified())
        && t >= src_time
    {
        return Ok(out.to_path_buf());
    }
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let status = Command::new("cc")
        .args(["-O2", "-fopenmp", "-o"])
        .arg(&tmp)
        .arg(&src)
        .status()
        .map_err(|e| format!("cannot run cc: {e}"))?;
    if !status.success() {
        return Err(format!("cc -fopenmp failed on {} ({status})", src.display()));
    }
    fs::rename(&tmp, out).map_err(|e| format!("cannot rename to {}: {e}", out.display()))?;
    Ok(out.to_path_buf())
}

/// The default place of the reference binary: `<root>/target/reference/server`.
pub fn default_reference_path(root: &Path) -> PathBuf {
    root.join("target/reference/server")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Reference,
    Portfwd,
    Other,
}

/// A forwarder binary with the seed's CLI (`PROG [PRE_ARGS] PORT HOST HOST_PORT`).
#[derive(Clone, Debug)]
pub struct Spec {
    pub label: String,
    pub path: PathBuf,
    pub kind: Kind,
    /// Arguments placed before the seed's three positional arguments.
    pub pre_args: Vec<String>,
    /// Flag taking a listen address (portfwd: `--bind`); `None` means the
    /// binary binds every address, and clients connect to the wanted one.
    pub bind_flag: Option<String>,
    /// Arguments that make it hand a connection off at accept time, for
    /// server-speaks-first protocols (portfwd: `--dispatch accept`).
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

/// One process as seen in /proc/PID/stat.
#[derive(Clone, Copy, Debug)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    pub state: char,
}

pub fn scan_procs() -> Vec<ProcInfo> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) S ppid pgrp ..."; comm may contain spaces and parens.
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let mut f = stat[close + 1..].split_whitespace();
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let pgrp = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        out.push(ProcInfo { pid, ppid, pgrp, state });
    }
    out
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

/// Is some socket on this machine listening on TCP `port` (any address)?
pub fn listening(port: u16) -> bool {
    !listening_inodes(port).is_empty()
}

/// Is process `pid` itself listening on TCP `port`? (Another program that
/// happens to listen on the same port on another address does not count.)
pub fn listening_by(pid: i32, port: u16) -> bool {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return false;
    }
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    dir.flatten().any(|e| {
        fs::read_link(e.path())
            .ok()
            .and_then(|l| {
                l.to_str()
                    .and_then(|l| l.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string))
            })
            .is_some_and(|ino| inodes.contains(&ino))
    })
}

/// A port that is free on every address right now (the kernel picks it).
pub fn free_port() -> io::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    Ok(l.local_addr()?.port())
}

/// Make this process the reaper of orphaned descendants (forwarders that
/// never reap leave grandchildren behind when their parents die).
pub fn set_subreaper() {
    // SAFETY: plain prctl with integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

static LOG_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A running forwarder in its own process group.
pub struct Fwd {
    pub child: Child,
    pub pgid: i32,
    pub port: u16,
    pub label: String,
    pub log_path: PathBuf,
    stopped: bool,
}

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

    /// Start the forwarder and wait (bounded) until its port is listening.
    pub fn start(&self) -> Result<Fwd, String> {
        let tries = if self.port.is_some() { 1 } else { 3 };
        let mut last = String::new();
        for _ in 0..tries {
            let port = match self.port {
                Some(p) => p,
                None => free_port().map_err(|e| format!("no free port: {e}"))?,
            };
            match self.start_on(port) {
                Ok(f) => return Ok(f),
                Err(e) => last = e,
            }
        }
        Err(last)
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
        let pgid = child.id() as i32;
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
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if listening_by(fwd.pgid, port) {
                return Ok(fwd);
            }
            if let Ok(Some(status)) = fwd.child.try_wait() {
                let log = fwd.log();
                return Err(format!("{} exited at start ({status}): {}", fwd.label, log.trim()));
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not listen on port {port} within 5 s", fwd.label));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Main pids of the forwarders this process is running (so stopping one
/// never touches another).
static MAINS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// `root` and all its descendants by parent links, from one /proc scan.
pub fn descendants(root: i32, procs: &[ProcInfo]) -> Vec<ProcInfo> {
    let mut kids: HashMap<i32, Vec<usize>> = HashMap::new();
    for (i, p) in procs.iter().enumerate() {
        kids.entry(p.ppid).or_default().push(i);
    }
    let mut out: Vec<ProcInfo> = procs.iter().filter(|p| p.pid == root).copied().collect();
    let mut i = 0;
    while i < out.len() {
        if let Some(k) = kids.get(&out[i].pid) {
            out.extend(k.iter().map(|&j| procs[j]));
        }
        i += 1;
    }
    out
}

impl Fwd {
    pub fn pid(&self) -> i32 {
        self.pgid
    }

    /// The forwarder's processes: the main process, its descendants (found
    /// through parent links, whatever process group they moved to) and any
    /// other member of its process group. Orphans re-parented to us are not
    /// included (a real init would reap them).
    pub fn procs(&self) -> Vec<ProcInfo> {
        let all = scan_procs();
        let mut set = descendants(self.pgid, &all);
        let seen: HashSet<i32> = set.iter().map(|p| p.pid).collect();
        set.extend(
            all.iter()
                .filter(|p| p.pgrp == self.pgid && !seen.contains(&p.pid))
                .copied(),
        );
        set
    }

    /// Open descriptors of the main process.
    pub fn fd_count(&self) -> Option<usize> {
        fs::read_dir(format!("/proc/{}/fd", self.pgid)).ok().map(|d| d.count())
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Kill the main process, its descendants and every process group they
    /// are in (which finds those re-parented to us after their parent died),
    /// and reap what we can. The kill comes first, whatever the machine's
    /// load; only the sweep after it is bounded (30 s).
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let me = std::process::id() as i32;
        // SAFETY: plain getter.
        let mine = unsafe { libc::getpgrp() };
        let others: Vec<i32> = MAINS
            .lock()
            .map(|m| m.iter().copied().filter(|&p| p != self.pgid).collect())
            .unwrap_or_default();
        // 1. Snapshot the tree while the main process still links it.
        let tree = descendants(self.pgid, &scan_procs());
        let mut groups: HashSet<i32> = tree.iter().map(|p| p.pgrp).collect();
        groups.insert(self.pgid);
        groups.retain(|&g| g > 1 && g != mine && !others.contains(&g));
        // 2. Kill every group and every process of the tree.
        for &g in &groups {
            // SAFETY: a process group of a forwarder we started.
            unsafe { libc::kill(-g, libc::SIGKILL) };
        }
        for p in tree.iter().filter(|p| p.pid != me && !others.contains(&p.pid)) {
            // SAFETY: a process descending from a forwarder we started.
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
        // 3. Sweep: kill what is left of those groups, reap the zombies that
        //    were re-parented to us, until nothing is left (bounded).
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let mut busy = false;
            for p in scan_procs().iter().filter(|p| groups.contains(&p.pgrp) && p.pid != me) {
                if p.state != 'Z' {
                    busy = true;
                    // SAFETY: as above.
                    unsafe { libc::kill(p.pid, libc::SIGKILL) };
                } else if p.ppid == me {
                    busy = true;
                    let mut st = 0;
                    // SAFETY: reaping a zombie child of ours.
                    unsafe { libc::waitpid(p.pid, &mut st, libc::WNOHANG) };
                }
            }
            if !busy {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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

/// FNV-1a, 64 bit: a digest for "same bytes" comparisons across servers.
pub fn fnv64(h: u64, data: &[u8]) -> u64 {
    let mut h = if h == 0 { 0xcbf2_9ce4_8422_2325 } else { h };
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Deterministic filler bytes (xorshift), so runs are repeatable.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Percentiles (0..=100) of `v`, which is sorted in place.
pub fn percentiles(v: &mut [u32], ps: &[f64]) -> Vec<u32> {
    v.sort_unstable();
    ps.iter()
        .map(|p| {
            if v.is_empty() {
                0
            } else {
                let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
                v[i.min(v.len() - 1)]
            }
        })
        .collect()
}

/// How a read side ended.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    Eof(Duration),
    Reset(Duration),
    Timeout,
    Error(String),
}

impl End {
    pub fn describe(&self) -> String {
        match self {
            End::Eof(d) => format!("EOF after {}", ms(*d)),
            End::Reset(d) => format!("RST after {}", ms(*d)),
            End::Timeout => "nothing (hangs)".into(),
            End::Error(e) => format!("error {e}"),
        }
    }
    pub fn is_eof(&self) -> bool {
        matches!(self, End::Eof(_))
    }
    pub fn is_reset(&self) -> bool {
        matches!(self, End::Reset(_))
    }
    pub fn is_closed(&self) -> bool {
        matches!(self, End::Eof(_) | End::Reset(_))
    }
}

pub fn ms(d: Duration) -> String {
    let m = d.as_secs_f64() * 1000.0;
    if m < 10.0 {
        format!("{m:.1} ms")
    } else {
        format!("{m:.0} ms")
    }
}

/// Read until EOF, reset, or `limit` bytes, or until `wait` passes with the
/// stream still open. Timing of the end is measured from the call.
pub fn read_to_end_within(s: &mut TcpStream, limit: usize, wait: Duration) -> (Vec<u8>, End) {
    let start = Instant::now();
    let deadline = start + wait;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return (buf, End::Timeout);
        }
        let _ = s.set_read_timeout(Some(deadline - now));
        match s.read(&mut chunk) {
            Ok(0) => return (buf, End::Eof(start.elapsed())),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() >= limit {
                    return (buf, End::Timeout);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
                return (buf, End::Timeout);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return (buf, End::Reset(start.elapsed()));
            }
            Err(e) => return (buf, End::Error(e.to_string())),
        }
    }
}

/// Read exactly `n` bytes within `wait`; returns what arrived and how it ended
/// if short.
pub fn read_exact_within(s: &mut TcpStream, n: usize, wait: Duration) -> (Vec<u8>, Option<End>) {
    let start = Instant::now();
    let deadline = start + wait;
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let now = Instant::now();
        if now >= deadline {
            buf.truncate(got);
            return (buf, Some(End::Timeout));
        }
        let _ = s.set_read_timeout(Some(deadline - now));
        match s.read(&mut buf[got..]) {
            Ok(0) => {
                buf.truncate(got);
                return (buf, Some(End::Eof(start.elapsed())));
            }
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
                buf.truncate(got);
                return (buf, Some(End::Timeout));
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                buf.truncate(got);
                return (buf, Some(End::Reset(start.elapsed())));
            }
            Err(e) => {
                buf.truncate(got);
                return (buf, Some(End::Error(e.to_string())));
            }
        }
    }
    (buf, None)
}

/// Connect to `dst`, from `src` (port chosen by the kernel) if given.
pub fn connect_from(src: Option<Ipv4Addr>, dst: SocketAddrV4, timeout: Duration) -> io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    if let Some(ip) = src {
        sock.bind(&SocketAddr::V4(SocketAddrV4::new(ip, 0)).into())?;
    }
    sock.connect_timeout(&SocketAddr::V4(dst).into(), timeout)?;
    Ok(sock.into())
}

/// Modification time helper for scripts deciding whether to rebuild.
pub fn mtime(p: &Path) -> Option<SystemTime> {
    fs::metadata(p).and_then(|m| m.modified()).ok()
}
