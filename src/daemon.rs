//! Daemon mode: detach from the terminal, write the pid file, send the log to a file.
//!
//! The launching command must not return before the daemon is listening, nor hide a start-up
//! error in /dev/null. So the listeners are bound first, in the foreground; then [`detach`] forks,
//! and the launching process waits on a pipe for the daemon's word: `ok PID`, after which it says
//! on the terminal which pid runs and where its log goes, or the error text, which it prints
//! before exiting non-zero. Main process, at start-up (and the log reopening of `SIGUSR2`/`SIGHUP`).

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The daemon's end of the readiness pipe.
pub struct Ready(fs::File);

impl Ready {
    /// Tells the launching process that start-up succeeded (and the daemon's pid); it exits 0.
    pub fn ok(mut self) {
        let _ = writeln!(self.0, "ok {}", std::process::id());
    }

    /// Tells the launching process what went wrong; it prints the text and exits 2.
    pub fn fail(mut self, message: &str) {
        let _ = self.0.write_all(message.as_bytes());
    }
}

/// Detaches: fork (the launching process waits for the word, says `portfwd: running in the
/// background as pid N; log: LOG` and exits), setsid, fork again (the daemon can never reacquire a
/// terminal), chdir to `/`, stdin, stdout and stderr to /dev/null (the caller then points
/// descriptor 2 at the log).
///
/// Must be called while the process has a single thread.
pub fn detach(log: &str) -> io::Result<Ready> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: single-threaded at this point (before the accept pool and signal handlers exist).
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => {
            drop(write);
            std::process::exit(wait_for_word(read, child, log));
        }
        nix::unistd::ForkResult::Child => {}
    }
    drop(read);
    nix::unistd::setsid()?;
    // SAFETY: still single-threaded.
    if let nix::unistd::ForkResult::Parent { .. } = unsafe { nix::unistd::fork() }? {
        // SAFETY: leave the middle process without running the parent's destructors twice.
        unsafe { libc::_exit(0) };
    }
    std::env::set_current_dir("/")?;
    let null = fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(&null)?;
    nix::unistd::dup2_stderr(&null)?;
    Ok(Ready(fs::File::from(write)))
}

/// In the launching process: what the daemon said decides the exit status.
fn wait_for_word(read: OwnedFd, middle: nix::unistd::Pid, log: &str) -> i32 {
    let mut word = String::new();
    let _ = fs::File::from(read).read_to_string(&mut word);
    let _ = nix::sys::wait::waitpid(middle, None);
    if let Some(pid) = word.strip_prefix("ok ").and_then(|w| w.strip_suffix('\n')) {
        // Stderr, not stdout: stdout stays for what a command prints as its result.
        let _ = writeln!(
            io::stderr(),
            "portfwd: running in the background as pid {pid}; log: {log}"
        );
        return 0;
    }
    match word.as_str() {
        "" => {
            eprintln!("portfwd: the daemon exited during start-up (see its log)");
            1
        }
        message => {
            eprintln!("{}", message.trim_end());
            2
        }
    }
}

/// Opens `path` for appending (creating it, mode 0640) and makes it the process's stderr, where
/// every log line goes. Called again on SIGUSR2 and SIGHUP, so a rotated log is reopened.
/// `O_NONBLOCK`: a FIFO given as the log file never blocks the open or a write (the description
/// is ours alone; a regular file ignores the flag).
pub fn redirect_stderr(path: &Path) -> io::Result<()> {
    let file = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    nix::unistd::dup2_stderr(&file)?;
    Ok(())
}

/// A pid file, written atomically (a temporary file renamed into place) and removed on drop if
/// it still names this process.
pub struct PidFile(PathBuf);

impl PidFile {
    pub fn write(path: &Path) -> io::Result<PidFile> {
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        writeln!(f, "{}", std::process::id())?;
        f.sync_all()?;
        fs::rename(&tmp, path).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let ours = fs::read_to_string(&self.0).is_ok_and(|s| s.trim() == std::process::id().to_string());
        if ours {
            let _ = fs::remove_file(&self.0);
        }
    }
}
