//! portfwd started as a user starts it, with its log lines captured; killed by pid on drop.

use crate::env::wait_until;
use crate::net::{free_port, local, retry_ports};
use crate::procs::descendants;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// A running forwarder.
pub struct Forwarder {
    pub child: Child,
    pub port: u16,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Forwarder {
    /// Starts `BIN ARGS... PORT HOST HOST_PORT` on a fresh port and waits for its start-up line.
    pub fn start(bin: &str, extra: &[&str], host: &str, host_port: u16) -> Forwarder {
        Forwarder::start_command(|| Command::new(bin), extra, host, host_port)
    }

    /// Like `start`, from a command `make` prepares (another uid, resource limits, a wrapper).
    pub fn start_command(make: impl Fn() -> Command, extra: &[&str], host: &str, host_port: u16) -> Forwarder {
        retry_ports(|| {
            let port = free_port();
            let mut cmd = make();
            cmd.args(extra)
                .args([port.to_string(), host.to_string(), host_port.to_string()]);
            Forwarder::spawn_command(cmd, port)
        })
        .unwrap_or_else(|e| panic!("portfwd did not start: {e}"))
    }

    /// Spawns `BIN` with exactly `args`; waits for its start-up line (`event=listening`, in logfmt or
    /// JSON). Err carries the log on failure.
    pub fn spawn(bin: &str, args: &[String], port: u16) -> Result<Forwarder, String> {
        let mut cmd = Command::new(bin);
        cmd.args(args);
        Forwarder::spawn_command(cmd, port)
    }

    /// Like `spawn`, for a prepared command.
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
        let listening = |f: &Forwarder| {
            let log = f.log_text();
            log.contains("event=listening") || log.contains("\"event\":\"listening\"")
        };
        let ok = wait_until(Duration::from_secs(10), || {
            listening(&f) || f.child.try_wait().unwrap().is_some()
        });
        if ok && listening(&f) {
            Ok(f)
        } else {
            let _ = f.child.kill();
            let _ = f.child.wait();
            // Give the reader thread the last lines (bounded).
            wait_until(Duration::from_millis(200), || !f.log_text().is_empty());
            Err(f.log_text())
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> SocketAddr {
        local(self.port)
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr()).expect("connect to forwarder");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// How many log lines contain `needle`.
    pub fn count_lines(&self, needle: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits until `n` log lines contain `needle`.
    pub fn wait_log_count(&self, needle: &str, n: usize, limit: Duration) -> bool {
        wait_until(limit, || self.count_lines(needle) >= n)
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

    /// Sends SIGUSR1 and returns the stats line it produced.
    pub fn stats(&self) -> String {
        let marker = "event=stats live=";
        let before = self.count_lines(marker);
        self.signal(libc::SIGUSR1);
        assert!(
            self.wait_log_count(marker, before + 1, Duration::from_secs(5)),
            "no stats line after SIGUSR1:\n{}",
            self.log_text()
        );
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(marker)).nth(before).unwrap().clone()
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

/// The number after `key=` in a log line.
pub fn field(line: &str, key: &str) -> u64 {
    let pat = format!(" {key}=");
    let at = line.find(&pat).unwrap_or_else(|| panic!("no {key} in {line}")) + pat.len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}
