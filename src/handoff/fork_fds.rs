//! What of the main process's descriptor table a connection process gets. Runs in the main
//! process, except [`Ticket::leave_shared_table`], the connection process's first act after fork.
//!
//! `fork()` copies the whole table, and a connection process needs two entries of it: the client
//! socket and stderr (the log). With `--dispatch data` every client still waiting for its first
//! byte is in that table, so each fork took a reference on every one of those sockets and the child
//! then dropped them all again: two walks over every open file per connection, a fork cost that
//! grew with the number of waiting clients (`bench/fdfork.c`; see docs/benchmarks.md).
//!
//! So a connection process is forked with `CLONE_FILES`: it starts on the main process's own
//! table, and its first system call leaves it for a private one that holds only the lowest
//! descriptors, up to its [`HandoffSlots`] slot, a low descriptor number the main process reserved
//! and put the client socket in just before the fork (the kernel copies at most the first 64
//! entries then, whatever the size of the table). Then it says so: a word in a shared page, and an
//! eventfd the main process watches in its epoll set.
//!
//! The one rule while a child shares the table: nothing may change the child's slot until the
//! child has left. The main process has several slots and uses a slot again only once its child
//! has left, so it does not wait for the child to be scheduled; everything else in the table may
//! change meanwhile (what the child copies besides its slot, it closes at once). When the child
//! has left, the main process puts a placeholder (`/dev/null`) back in the slot, which drops its
//! own reference to the client socket; the slot is never free, so no accepted socket takes it.

use crate::sys::{self, SharedPage, SharedZeroed};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Slots: connection processes that may share the table at once before the main process has to
/// wait for one of them to leave. Each costs a descriptor of the main process.
const SLOTS: usize = 8;

/// How long the main process waits at a time when every slot is taken, before it checks whether
/// the children holding them are still alive.
const WAIT_SLICE_MS: u8 = 20;

/// The word a connection process sets when it has left the shared table, in a `MAP_SHARED` page
/// every child inherits: the ticket's number, or its complement when leaving failed.
#[repr(C)]
pub(crate) struct Gate {
    left: AtomicU32,
}

// SAFETY: one atomic, valid when zero.
unsafe impl SharedZeroed for Gate {}

/// What a connection process needs to leave the main process's table: plain data, part of its
/// plan.
#[derive(Clone, Copy)]
pub(crate) struct Ticket {
    /// The slot's descriptor number: the child keeps descriptors up to this one.
    pub(crate) slot: RawFd,
    notify: RawFd,
    gate: &'static Gate,
    number: u32,
}

impl Ticket {
    /// The hand-off eventfd's number (below the slot, so the child's private table has it too):
    /// a connection process writes it again when it sends its health report.
    pub(crate) fn notify_fd(&self) -> RawFd {
        self.notify
    }

    /// The connection process's first act: a private descriptor table with the descriptors up to
    /// its slot only, then word to the main process. Runs in the connection process, after fork:
    /// async-signal-safe, three system calls. On an error (no memory for a new table) the child is still on the main process's table: it must
    /// not close or open anything, only reset the client and exit.
    pub(crate) fn leave_shared_table(&self) -> sys::SysResult<()> {
        let left = sys::leave_shared_fd_table(self.slot + 1);
        let word = if left.is_ok() { self.number } else { !self.number };
        self.gate.left.store(word, Ordering::SeqCst);
        // The eventfd is below the slot, so the private table has it too (closed with the rest).
        let _ = sys::write(self.notify, &1u64.to_ne_bytes());
        left
    }
}

/// A child that was handed a slot and may not have left the table yet.
struct Pending {
    child: libc::pid_t,
    number: u32,
}

struct Slot {
    fd: OwnedFd,
    gate: &'static Gate,
    pending: Option<Pending>,
}

/// The main process's side: the reserved slots, the placeholder and the eventfd.
pub(crate) struct HandoffSlots {
    notify: EventFd,
    placeholder: OwnedFd,
    slots: Vec<Slot>,
    issued: u32,
}

impl HandoffSlots {
    /// Takes the lowest free descriptor numbers: the eventfd, the placeholder and the slots. Call
    /// it before the main loop accepts anything, so that the numbers stay low.
    pub(crate) fn reserve() -> io::Result<HandoffSlots> {
        let notify = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        let placeholder = open_null()?;
        let gates = SharedPage::<[Gate; SLOTS]>::map()?.get();
        let slots = gates
            .iter()
            .map(|gate| {
                Ok(Slot {
                    fd: open_null()?,
                    gate,
                    pending: None,
                })
            })
            .collect::<io::Result<Vec<Slot>>>()?;
        Ok(HandoffSlots {
            notify,
            placeholder,
            slots,
            issued: 0,
        })
    }

    /// The eventfd that becomes readable when a child has left the table (for the epoll set).
    pub(crate) fn notify_fd(&self) -> BorrowedFd<'_> {
        self.notify.as_fd()
    }

    /// Puts `client` in a free slot (the caller keeps its own descriptor and closes it as before)
    /// and returns the slot's index and the ticket for the child forked next. Waits for a child
    /// to leave when every slot is taken.
    pub(crate) fn load(&mut self, client: BorrowedFd<'_>) -> Result<(usize, Ticket), Errno> {
        let index = self.free_slot();
        let slot = &mut self.slots[index];
        // One atomic step: the slot's number is never free for another thread to take.
        nix::unistd::dup3(client, &mut slot.fd, OFlag::O_CLOEXEC)?;
        let slot = &self.slots[index];
        self.issued = self.issued.wrapping_add(1).max(1);
        slot.gate.left.store(0, Ordering::SeqCst);
        let ticket = Ticket {
            slot: slot.fd.as_raw_fd(),
            notify: self.notify.as_raw_fd(),
            gate: slot.gate,
            number: self.issued,
        };
        Ok((index, ticket))
    }

    /// After the fork of the child for slot `index`: `None` when the fork failed.
    pub(crate) fn forked(&mut self, index: usize, child: Option<libc::pid_t>) {
        match child {
            Some(child) => {
                self.slots[index].pending = Some(Pending {
                    child,
                    number: self.issued,
                })
            }
            None => self.empty(index, false),
        }
    }

    /// Empties the slots whose children have left the table (the eventfd said so).
    pub(crate) fn reclaim(&mut self) {
        // Resets the counter (EAGAIN when it is already zero, which is fine).
        let _ = self.notify.read();
        for index in 0..self.slots.len() {
            if self.has_left(index) {
                self.empty(index, false);
            }
        }
    }

    /// A child was reaped: if it died before it left the table (killed at birth), the slot holds
    /// the client's last descriptor, and the client is reset.
    pub(crate) fn child_ended(&mut self, pid: libc::pid_t) {
        if let Some(index) = self
            .slots
            .iter()
            .position(|s| s.pending.as_ref().is_some_and(|p| p.child == pid))
        {
            let reset = !self.has_left(index);
            self.empty(index, reset);
        }
    }

    fn has_left(&self, index: usize) -> bool {
        let slot = &self.slots[index];
        slot.pending.as_ref().is_some_and(|p| {
            let word = slot.gate.left.load(Ordering::SeqCst);
            word == p.number || word == !p.number
        })
    }

    /// Puts the placeholder back in slot `index`, closing the main process's reference to the
    /// client (after arming a reset on it when `reset`).
    fn empty(&mut self, index: usize, reset: bool) {
        let slot = &mut self.slots[index];
        if reset {
            let _ = socket2::SockRef::from(&slot.fd).set_linger(Some(Duration::ZERO));
        }
        // dup3 onto a number that is open cannot fail for lack of descriptors; were it to fail,
        // the slot would keep the client's socket open until its next use replaces it.
        let _ = nix::unistd::dup3(&self.placeholder, &mut slot.fd, OFlag::O_CLOEXEC);
        slot.pending = None;
    }

    /// A slot with no child in it, waiting for one to leave when there is none.
    fn free_slot(&mut self) -> usize {
        loop {
            if let Some(i) = self.slots.iter().position(|s| s.pending.is_none()) {
                return i;
            }
            self.reclaim();
            if let Some(i) = self.slots.iter().position(|s| s.pending.is_none()) {
                return i;
            }
            // Children that died before they left (not yet reaped: the loop reaps later).
            for index in 0..self.slots.len() {
                let exited = self.slots[index]
                    .pending
                    .as_ref()
                    .is_some_and(|p| child_has_exited(p.child));
                // Its word, if it left, was stored before it exited: has_left sees it now.
                if exited {
                    let reset = !self.has_left(index);
                    self.empty(index, reset);
                }
            }
            if self.slots.iter().all(|s| s.pending.is_some()) {
                let mut fds = [PollFd::new(self.notify.as_fd(), PollFlags::POLLIN)];
                let _ = nix::poll::poll(&mut fds, PollTimeout::from(WAIT_SLICE_MS));
            }
        }
    }
}

/// Whether child `pid` has exited (and is waiting to be reaped): `waitid(WNOWAIT)` leaves it for
/// the ordinary reaping. An error (no such child) counts as exited.
fn child_has_exited(pid: libc::pid_t) -> bool {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    !matches!(
        nix::sys::wait::waitid(Id::Pid(Pid::from_raw(pid)), flags),
        Ok(WaitStatus::StillAlive)
    )
}

/// `/dev/null`, read-write, close-on-exec.
fn open_null() -> io::Result<OwnedFd> {
    let file = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
    Ok(file.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::fork_memory::LaunchPad;
    use std::time::{Duration, Instant};

    /// The read end of the pipe the test's children wait on before they leave the table (set
    /// before they are forked; they share the parent's table, so its closing the write end is
    /// their signal).
    static GATE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

    /// The child of the test: waits for the gate, leaves the table, and exits 0 only if its slot
    /// holds a socket and the descriptor above its slot (the test's other socket) is not in its
    /// table.
    extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` points at the ticket in this process's copy of the launch pad.
        let ticket = unsafe { &*(arg as *const Ticket) };
        let mut byte = 0u8;
        // SAFETY: read into a local byte, fstat into a local stat buffer (async-signal-safe).
        unsafe {
            // Blocks until the test closes the write end (EOF); -1 (no gate) returns at once.
            libc::read(GATE.load(Ordering::SeqCst), (&raw mut byte).cast(), 1);
            if ticket.leave_shared_table().is_err() {
                sys::exit(2);
            }
            let mut st: libc::stat = std::mem::zeroed();
            let socket = libc::fstat(ticket.slot, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK;
            let above_closed = libc::fcntl(ticket.slot + 1, libc::F_GETFD) == -1;
            sys::exit(if socket && above_closed { 0 } else { 1 })
        }
    }

    /// A child that never gets to leave the table.
    extern "C" fn sleeper(_: *mut libc::c_void) -> libc::c_int {
        let nap = libc::timespec { tv_sec: 30, tv_nsec: 0 };
        // SAFETY: nanosleep on a local timespec (async-signal-safe).
        unsafe { libc::nanosleep(&nap, std::ptr::null_mut()) };
        sys::exit(0)
    }

    /// Whether a reset is armed on the socket (SO_LINGER on, timeout 0).
    fn reset_armed(socket: &impl AsFd) -> bool {
        socket2::SockRef::from(socket).linger().ok().flatten() == Some(Duration::ZERO)
    }

    fn target(fd: RawFd) -> String {
        std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    #[test]
    fn a_slot_is_used_again_only_after_its_child_has_left() {
        let mut slots = HandoffSlots::reserve().unwrap();
        let mut pad = LaunchPad::<Ticket>::new().unwrap();
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (gate, opener) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        GATE.store(gate.as_raw_fd(), Ordering::SeqCst);
        let mut children = Vec::new();
        let fork_child = |slots: &mut HandoffSlots, pad: &mut LaunchPad<Ticket>, index, ticket| {
            let arg = pad.load(ticket) as *const Ticket as *mut libc::c_void;
            // SAFETY: the child runs `child` on the pad's stack, makes raw syscalls and exits.
            let pid = unsafe { sys::fork_onto(pad.stack_top(), child, arg, true) }.unwrap();
            slots.forked(index, Some(pid));
            pid
        };
        for _ in 0..SLOTS {
            let (index, ticket) = slots.load(a.as_fd()).unwrap();
            assert!(target(ticket.slot).starts_with("socket:"), "{}", target(ticket.slot));
            children.push(fork_child(&mut slots, &mut pad, index, ticket));
        }
        // Every slot is taken by a child that cannot leave before the gate opens: one more load
        // must wait for that. Another thread opens the gate a little later and notes when.
        let opened = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let at = Instant::now();
            drop(opener);
            at
        });
        let (index, ticket) = slots.load(a.as_fd()).unwrap();
        let loaded = Instant::now();
        let opened = opened.join().unwrap();
        assert!(loaded >= opened, "a slot was loaded again before its child could leave");
        children.push(fork_child(&mut slots, &mut pad, index, ticket));
        for pid in children {
            let status = sys::wait_for(pid).unwrap();
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "status {status:#x}"
            );
            slots.child_ended(pid);
        }
        for slot in &slots.slots {
            assert!(slot.pending.is_none());
            assert_eq!(target(slot.fd.as_raw_fd()), "/dev/null");
        }
        assert!(!reset_armed(&a), "children that took the client leave it as it is");
    }

    #[test]
    fn a_child_killed_before_it_left_gets_its_client_reset() {
        let mut slots = HandoffSlots::reserve().unwrap();
        let mut pad = LaunchPad::<Ticket>::new().unwrap();
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (index, ticket) = slots.load(a.as_fd()).unwrap();
        let arg = pad.load(ticket) as *const Ticket as *mut libc::c_void;
        // SAFETY: the child runs `sleeper` on the pad's stack and makes raw syscalls only.
        let pid = unsafe { sys::fork_onto(pad.stack_top(), sleeper, arg, true) }.unwrap();
        slots.forked(index, Some(pid));
        slots.reclaim();
        assert!(
            slots.slots[index].pending.is_some(),
            "the slot stays taken while its child lives"
        );
        sys::kill(pid, libc::SIGKILL);
        let status = sys::wait_for(pid).unwrap();
        assert!(libc::WIFSIGNALED(status));
        slots.child_ended(pid);
        assert!(slots.slots[index].pending.is_none());
        assert_eq!(target(ticket.slot), "/dev/null");
        assert!(reset_armed(&a), "the client of a child that never took it is reset");
    }
}
