//! Shared helpers for the integration tests: the real `portfwd` binary, real backends on loopback,
//! and `/proc` inspection for leaks. Every wait is bounded.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_portfwd");

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

/// A port the kernel just handed out on 127.0.0.1 and that is free again. The forwarder refuses
/// port 0, so tests ask the kernel for one this way (and retry if something took it meanwhile).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running forwarder, started as a user would start it. Killed (by pid) on drop.
pub struct Forwarder {
    pub child: Child,
    pub port: u16,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Forwarder {
    /// Starts `portfwd ARGS... PORT HOST HOST_PORT` on a fresh port and waits for its start-up line.
    pub fn start(extra: &[&str], host: &str, host_port: u16) -> Forwarder {
        for _ in 0..5 {
            let port = free_port();
            let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            args.extend([port.to_string(), host.to_string(), host_port.to_string()]);
            match Forwarder::spawn(&args, port) {
                Ok(f) => return f,
                Err(e) if e.contains("in use") => continue,
                Err(e) => panic!("portfwd did not start: {e}"),
            }
        }
        panic!("no free port after 5 tries");
    }

    /// Spawns with exactly `args`; waits for "listening on". Err carries the log on failure.
    pub fn spawn(args: &[String], port: u16) -> Result<Forwarder, String> {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        Forwarder::spawn_command(cmd, port)
    }

    /// Like `spawn`, for a prepared command (another uid, resource limits, a wrapper).
    pub fn spawn_command(mut cmd: Command, port: u16) -> Result<Forwarder, String> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn portfwd");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut f = Forwarder { child, port, log };
        let ok = wait_until(Duration::from_secs(10), || {
            f.log_text().contains("listening on") || f.child.try_wait().unwrap().is_some()
        });
        if ok && f.log_text().contains("listening on") {
            Ok(f)
        } else {
            let _ = f.child.kill();
            let _ = f.child.wait();
            thread::sleep(Duration::from_millis(50)); // let the reader thread take the last lines
            Err(f.log_text())
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr()).expect("connect to forwarder");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until `n` log lines contain `needle`.
    pub fn wait_log_count(&self, needle: &str, n: usize, limit: Duration) -> bool {
        wait_until(limit, || {
            self.log.lock().unwrap().iter().filter(|l| l.contains(needle)).count() >= n
        })
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Processes descended from the forwarder (connection processes and pumps).
    pub fn descendants(&self) -> Vec<u32> {
        descendants(self.pid())
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill on the pid of a child we started.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let kids = self.descendants();
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in kids {
            // SAFETY: these are processes this test's forwarder forked.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// `(ppid, state, comm)` of a process, from /proc/PID/stat.
pub fn stat(pid: u32) -> Option<(u32, char, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let mut rest = text[close + 2..].split(' ');
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((ppid, state, comm))
}

/// Every process whose ancestry leads to `root` (not `root` itself).
pub fn descendants(root: u32) -> Vec<u32> {
    let mut all: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Some(pid) = entry.file_name().to_string_lossy().parse::<u32>().ok()
            && let Some((ppid, _, _)) = stat(pid)
        {
            all.push((pid, ppid));
        }
    }
    let mut found: HashSet<u32> = HashSet::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, ppid) in &all {
            if ppid == p && found.insert(pid) {
                frontier.push(pid);
            }
        }
    }
    found.into_iter().collect()
}

/// The targets of a process's open descriptors, as `readlink /proc/PID/fd/N` shows them.
pub fn fd_targets(pid: u32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            let n: i32 = e.file_name().to_string_lossy().parse().unwrap();
            if let Ok(t) = std::fs::read_link(e.path()) {
                out.push((n, t.to_string_lossy().into_owned()));
            }
        }
    }
    out.sort();
    out
}

/// A backend: a listener on 127.0.0.1 whose every connection runs `handler` in its own thread.
pub struct Backend {
    pub port: u16,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    pub fn start<F>(handler: F) -> Backend
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        Backend::start_on("127.0.0.1:0", handler)
    }

    pub fn start_on<F>(addr: &str, handler: F) -> Backend
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        Backend::from_listener(listen(addr), handler)
    }

    pub fn from_listener<F>(listener: TcpListener, handler: F) -> Backend
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let handler = Arc::new(handler);
        let thread = thread::spawn(move || {
            while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        let h = Arc::clone(&handler);
                        thread::Builder::new()
                            .stack_size(256 * 1024)
                            .spawn(move || h(s))
                            .unwrap();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(2)),
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Backend {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A listener with a deep backlog (std's is 128), so a burst of inward connects is not dropped.
pub fn listen(addr: &str) -> TcpListener {
    let addr: SocketAddr = addr.parse().expect("socket address");
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&addr.into()).expect("bind backend");
    s.listen(4096).unwrap();
    s.into()
}

/// Echoes everything back, then passes the client's FIN on.
pub fn echo(mut s: TcpStream) {
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

/// A deterministic byte stream (xorshift), so both ends can check what they got without storing it.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Pattern(seed | 1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// Writes `len` pattern bytes; returns their SHA-256.
pub fn send_pattern(w: &mut impl Write, seed: u64, len: usize) -> io::Result<[u8; 32]> {
    use sha2::{Digest, Sha256};
    let mut p = Pattern::new(seed);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        p.fill(&mut buf[..n]);
        h.update(&buf[..n]);
        w.write_all(&buf[..n])?;
        left -= n;
    }
    Ok(h.finalize().into())
}

/// Reads to EOF; returns (bytes, SHA-256).
pub fn read_hash(r: &mut impl Read) -> io::Result<(usize, [u8; 32])> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok((total, h.finalize().into()));
        }
        total += n;
        h.update(&buf[..n]);
    }
}

/// SHA-256 of `len` pattern bytes, computed without a socket.
pub fn pattern_hash(seed: u64, len: usize) -> [u8; 32] {
    send_pattern(&mut io::sink(), seed, len).unwrap()
}

/// Aborts a socket: close with SO_LINGER 0, so the peer gets a RST.
pub fn abort(s: TcpStream) {
    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
    drop(s);
}

/// Reads until EOF or error; returns what was read and how it ended.
pub fn read_to_end_or_err(s: &mut TcpStream) -> (Vec<u8>, io::Result<()>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, Ok(())),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return (out, Err(e)),
        }
    }
}
