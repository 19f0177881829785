//! Connection hand-off, the main process's side of the seed's `fork()`: it forks the connection
//! process (see `conn`, which is everything that runs after the fork) with a plan prepared
//! beforehand. Runs in the main process; its submodules also hold the few pieces both sides touch
//! ([`plan::Plan`] and the hand-off slot's [`fork_fds::Ticket`]).
//!
//! The main process has accept threads, so after the fork a child makes only raw syscalls (`sys`)
//! on prepared data and leaves with `_exit`; it never allocates, locks, resolves names or returns
//! into the caller's stack frames. The plan is plain data copied into a
//! [`fork_memory::LaunchPad`], and the child starts on the pad's stack: it does not get the main
//! process's heap or stack at all ([`fork_memory`]), and it starts on the main process's
//! descriptor table only until it has taken its client socket ([`fork_fds`]). See docs/design.md,
//! "Rules after fork()".

pub(crate) mod bytes;
pub(crate) mod fork_fds;
pub(crate) mod fork_memory;
pub(crate) mod plan;

use crate::sys;
use fork_fds::HandoffSlots;
use fork_memory::LaunchPad;
use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
use plan::Plan;
use socket2::Socket;
use std::os::fd::AsFd;
use std::time::Duration;

/// Forks the connection process for `client` and `plan`, which starts on `pad`'s stack with its own copy of
/// the plan, and on the main process's descriptor table until it has taken the client socket from
/// its slot in `slots`. In the parent, returns the child's pid; the caller then closes its copy of
/// the client socket. On a fork failure, returns the error; the caller resets the client.
/// Signals are blocked across the fork so that no handler of the main process (signal-hook's
/// self-pipe writer) ever runs in the child.
pub(crate) fn hand_off(
    pad: &mut LaunchPad<Plan>,
    slots: &mut HandoffSlots,
    client: &Socket,
    mut plan: Plan,
) -> Result<libc::pid_t, Errno> {
    let (index, ticket) = slots.load(client.as_fd())?;
    plan.ticket = Some(ticket);
    plan.client = ticket.slot;
    let plan: *const Plan = pad.load(plan);
    let mut old = SigSet::empty();
    // Cannot fail with a valid `how` and live sets.
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), Some(&mut old));
    // SAFETY: the child runs `conn::entry` on the pad's stack, below the plan just loaded there;
    // it only makes async-signal-safe calls on that plan and leaves through `_exit`. Its first
    // system call leaves the shared descriptor table, and until it has, its slot stays as it is
    // (`slots` hands that slot out again only after).
    let forked = unsafe { sys::fork_onto(pad.stack_top(), crate::conn::entry, plan as *mut libc::c_void, true) };
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    slots.forked(index, forked.ok());
    forked
}

/// Resets a client the main process could not hand off (or refused): its copy is the only one,
/// so closing it sends the RST.
pub(crate) fn reset(client: &Socket) {
    let _ = client.set_linger(Some(Duration::ZERO));
}
