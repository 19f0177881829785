//! Where log lines go, and why writing one never waits: descriptor 2 is the log in both processes
//! (stderr as given, `--log-file`, or a syslog socket put in its place), and every line leaves in
//! one system call that does not block. When the reader is not ready (a pipe nobody drains, a
//! syslog daemon under pressure) the line is dropped and counted in a page shared with every
//! connection process ([`dropped`], the `log_dropped=` of the stats line): a stalled log must never
//! stop the main process, nor keep a connection process (and its slot) alive after its work.
//!
//! How "does not block" is had without changing what others share (`O_NONBLOCK` belongs to the
//! open file description, which the shell or a container runtime may hold too):
//!
//! * a socket (journald's stdout, the syslog socket): `send(MSG_DONTWAIT)`, per call, nothing set;
//! * a pipe, FIFO or terminal: reopened through `/proc/self/fd/2`, which makes a new open file
//!   description of the same pipe or device, with `O_NONBLOCK` on ours only. A line is shorter
//!   than `PIPE_BUF`, so a pipe takes it whole or not at all. Where that reopening fails (no
//!   `/proc`, a FIFO with no reader yet), `O_NONBLOCK` is set on the shared description and a line
//!   says so at start-up;
//! * a regular file (`--log-file`, opened by us): writes do not wait for a reader.
//!
//! Set up by the main process before it forks; read (never changed) by connection processes.

use crate::log_format::{self, Format, Out};
use crate::sys::{self, SharedPage, SharedZeroed};
use nix::errno::Errno;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicPtr, AtomicU8, AtomicU64, Ordering};

/// How a line is written to descriptor 2.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    /// `write(2)`: a regular file, or a pipe or terminal opened non-blocking by us.
    Write = 0,
    /// `send(MSG_DONTWAIT)`: a socket.
    Send = 1,
    /// `send(MSG_DONTWAIT)` on a connected syslog datagram socket, with a syslog header.
    Syslog = 2,
}

static KIND: AtomicU8 = AtomicU8::new(Kind::Write as u8);
static FORMAT: AtomicU8 = AtomicU8::new(Format::Logfmt as u8);
/// The local time's offset from UTC in seconds, for the syslog header (found by the main process,
/// which may read the time zone; children only read this).
static UTC_OFFSET: AtomicI64 = AtomicI64::new(0);
/// Lines dropped, in a page shared with every connection process (null until [`init`]).
static SHARED: AtomicPtr<Counters> = AtomicPtr::new(std::ptr::null_mut());
/// Lines dropped before [`init`] (the main process's only).
static DROPPED_EARLY: AtomicU64 = AtomicU64::new(0);
/// The main process: only it reconnects a syslog socket that went away.
static MAIN_PID: AtomicI32 = AtomicI32::new(0);
/// The syslog socket's path, for reconnecting (main process only).
static SYSLOG_PATH: OnceLock<PathBuf> = OnceLock::new();

/// The log's counters shared by every process.
#[repr(C)]
#[derive(Default)]
struct Counters {
    dropped: AtomicU64,
}

// SAFETY: one atomic, valid when zero.
unsafe impl SharedZeroed for Counters {}

/// The environment variable that names another syslog socket than `/dev/log`. For tests (a fake
/// syslog in a temporary directory); not a setting for production.
pub(crate) const SYSLOG_SOCKET_ENV: &str = "PORTFWD_SYSLOG_SOCKET";

/// The syslog socket: `$PORTFWD_SYSLOG_SOCKET` if set (for testing), else `/dev/log`.
pub(crate) fn syslog_socket() -> PathBuf {
    std::env::var_os(SYSLOG_SOCKET_ENV).map_or_else(|| PathBuf::from("/dev/log"), PathBuf::from)
}

/// Where the log goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Destination {
    /// Descriptor 2 as portfwd was given it.
    Stderr,
    /// `--log-file PATH` (or `-d`'s default file): appended to, reopened on `SIGUSR2`/`SIGHUP`.
    File(PathBuf),
    /// A syslog datagram socket (`--syslog`, or `-d`'s default when the socket is there).
    Syslog(PathBuf),
}

impl Destination {
    /// For the operator: `syslog (/dev/log)`, a file's path, or `stderr`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Destination::Stderr => "stderr".to_string(),
            Destination::File(path) => path.display().to_string(),
            Destination::Syslog(path) => format!("syslog ({})", path.display()),
        }
    }
}

/// Maps the shared counters and sets the format. Main process, before anything is forked.
pub(crate) fn init(format: Format) -> io::Result<()> {
    MAIN_PID.store(sys::getpid(), Ordering::Relaxed);
    FORMAT.store(format as u8, Ordering::Relaxed);
    if SHARED.load(Ordering::Acquire).is_null() {
        let page = SharedPage::<Counters>::map()?;
        SHARED.store(std::ptr::from_ref(page.get()).cast_mut(), Ordering::Release);
    }
    Ok(())
}

/// Points descriptor 2 at `dest`, in a way that never blocks a write (see the module's text).
/// Returns a note for the log when it had to change what others share. Main process: at start-up
/// before anything is forked, and on `SIGUSR2`/`SIGHUP` to reopen (a rotated file, a restarted
/// syslog daemon).
pub(crate) fn open(dest: &Destination) -> io::Result<Option<String>> {
    refresh_utc_offset();
    match dest {
        Destination::Stderr => stderr_nonblocking(),
        Destination::File(path) => {
            crate::daemon::redirect_stderr(path)?;
            KIND.store(Kind::Write as u8, Ordering::Relaxed);
            Ok(None)
        }
        Destination::Syslog(path) => {
            connect_syslog(path)?;
            let _ = SYSLOG_PATH.set(path.clone());
            Ok(None)
        }
    }
}

/// Whether a syslog daemon takes datagrams at `path`.
pub(crate) fn syslog_listens(path: &Path) -> bool {
    std::os::unix::net::UnixDatagram::unbound().is_ok_and(|s| s.connect(path).is_ok())
}

fn connect_syslog(path: &Path) -> io::Result<()> {
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    socket.connect(path)?;
    // Descriptor 2 becomes the socket (without close-on-exec, so connection processes keep it).
    nix::unistd::dup2_stderr(&socket)?;
    KIND.store(Kind::Syslog as u8, Ordering::Relaxed);
    Ok(())
}

/// Stderr as given: a socket is sent to with `MSG_DONTWAIT`; a pipe, FIFO or terminal is reopened
/// non-blocking (a description of our own); a file stays as it is.
fn stderr_nonblocking() -> io::Result<Option<String>> {
    let stat = nix::sys::stat::fstat(std::io::stderr())?;
    let kind = stat.st_mode & libc::S_IFMT;
    if kind == libc::S_IFSOCK {
        KIND.store(Kind::Send as u8, Ordering::Relaxed);
        return Ok(None);
    }
    KIND.store(Kind::Write as u8, Ordering::Relaxed);
    if kind != libc::S_IFIFO && kind != libc::S_IFCHR {
        return Ok(None);
    }
    use std::os::unix::fs::OpenOptionsExt;
    let reopened = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open("/proc/self/fd/2");
    match reopened {
        Ok(file) => {
            nix::unistd::dup2_stderr(&file)?;
            if kind == libc::S_IFIFO {
                // Room for a burst of lines (a pipe holds 64 KiB by default; this asks for the
                // unprivileged maximum, 1 MiB by default); failing is harmless.
                // SAFETY: fcntl on descriptor 2, which is open; no pointer is passed.
                unsafe { libc::fcntl(2, libc::F_SETPIPE_SZ, 1 << 20) };
            }
            Ok(None)
        }
        Err(e) => {
            sys::set_nonblocking(std::io::stderr().as_raw_fd(), true).map_err(io::Error::from)?;
            Ok(Some(format!(
                "event=log-nonblocking-shared reason={} note=\"stderr could not be reopened; O_NONBLOCK set on the description portfwd shares with its parent\"",
                crate::log::Quoted(e)
            )))
        }
    }
}

/// Finds the local time's offset from UTC (main process: `localtime_r` may read the time zone
/// file). Daylight saving changes are taken at the next reopen.
fn refresh_utc_offset() {
    // SAFETY: `time(NULL)` and `localtime_r` with live pointers to a local time_t and tm.
    let offset = unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            0
        } else {
            tm.tm_gmtoff
        }
    };
    UTC_OFFSET.store(offset, Ordering::Relaxed);
}

/// Renders one line's body and writes it in one system call that does not wait; a line that
/// cannot go now is dropped and counted. Async-signal-safe: no allocation, no lock.
pub(crate) fn emit(body: &[u8]) {
    let kind = match KIND.load(Ordering::Relaxed) {
        1 => Kind::Send,
        2 => Kind::Syslog,
        _ => Kind::Write,
    };
    let format = if FORMAT.load(Ordering::Relaxed) == Format::Json as u8 {
        Format::Json
    } else {
        Format::Logfmt
    };
    let syslog = (kind == Kind::Syslog).then(|| UTC_OFFSET.load(Ordering::Relaxed));
    let mut out = Out::new();
    log_format::render(&mut out, body, format, syslog, sys::realtime_ms(), sys::getpid());
    if deliver(kind, out.as_bytes()).is_err() {
        count_dropped();
    }
}

/// How long a connection process waits for a slow log reader before it drops its line: long
/// enough for a burst (thousands of connections ending at once through a pipe a reader is
/// emptying) to get through, short enough that a stalled reader holds no process for long. The
/// main process never waits: it drops at once.
const CHILD_WAIT_MS: u64 = 1000;

fn deliver(kind: Kind, bytes: &[u8]) -> Result<(), Errno> {
    let mut reconnected = false;
    let mut interrupted = 0;
    let main = sys::getpid() == MAIN_PID.load(Ordering::Relaxed);
    let mut deadline: Option<u64> = None;
    loop {
        let sent = match kind {
            Kind::Write => sys::write(2, bytes),
            Kind::Send | Kind::Syslog => sys::send_nowait(2, bytes),
        };
        match sent {
            // A pipe takes a line shorter than PIPE_BUF whole or not at all; a datagram is whole.
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) if interrupted < 3 => interrupted += 1,
            // The reader is behind: a connection process waits a little for room.
            Err(Errno::EAGAIN) if !main => {
                let now = sys::monotonic_ms();
                let until = *deadline.get_or_insert(now + CHILD_WAIT_MS);
                if now >= until {
                    return Err(Errno::EAGAIN);
                }
                let _ = sys::poll_one(2, libc::POLLOUT, (until - now) as libc::c_int);
            }
            // The syslog daemon restarted: the main process connects again, once per line.
            Err(Errno::ECONNREFUSED | Errno::ENOTCONN | Errno::ECONNRESET)
                if kind == Kind::Syslog && !reconnected && sys::getpid() == MAIN_PID.load(Ordering::Relaxed) =>
            {
                reconnected = true;
                match SYSLOG_PATH.get().map(|p| connect_syslog(p)) {
                    Some(Ok(())) => {}
                    _ => return Err(Errno::ENOTCONN),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

fn count_dropped() {
    let shared = SHARED.load(Ordering::Acquire);
    if shared.is_null() {
        DROPPED_EARLY.fetch_add(1, Ordering::Relaxed);
    } else {
        // SAFETY: a pointer to the page `init` mapped, which is never unmapped.
        unsafe { &*shared }.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Log lines dropped so far by every process (the reader was not ready, or the log was gone):
/// the stats line's `log_dropped=`, and the counter behind `portfwd_log_lines_dropped_total`.
pub(crate) fn dropped() -> u64 {
    let shared = SHARED.load(Ordering::Acquire);
    let early = DROPPED_EARLY.load(Ordering::Relaxed);
    if shared.is_null() {
        early
    } else {
        // SAFETY: as in `count_dropped`.
        early + unsafe { &*shared }.dropped.load(Ordering::Relaxed)
    }
}
