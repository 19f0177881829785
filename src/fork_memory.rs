//! What of the main process's memory a connection process gets.
//!
//! `fork()` gives a child a copy-on-write copy of every private mapping of its parent. Each costs
//! page tables at the fork and at the exit, and every page the parent writes while a child still
//! shares it is copied, the old copy staying with the child for as long as it lives. A connection
//! process needs next to none of the main process's memory: it runs on a plan the main process
//! prepared and makes raw syscalls. So the main process
//!
//! - keeps its heap and its own stack out of every child (`MADV_DONTFORK`, [`Exclusions`]), and
//! - hands each child a [`LaunchPad`]: a small mapping that children do inherit, with the
//!   connection's plan at its top and the child's stack below it.
//!
//! Between two forks the main process then writes one shared page (the plan) instead of the heap
//! and stack pages its loop happens to touch; a held connection keeps fewer pages and page tables.

use crate::sys;
use std::io;
use std::marker::PhantomData;

/// Stack for a connection process and its pump child (a pump's deepest path needs a few KiB; the
/// pages it never touches cost nothing).
const STACK: usize = 256 * 1024;

/// A mapping every child inherits: `T` (the plan) at the top, a stack below it, a guard page below
/// that. The main process rewrites `T` before each fork; each child reads its own copy.
pub struct LaunchPad<T: Copy> {
    stack_top: *mut u8,
    _plan: PhantomData<T>,
}

impl<T: Copy> LaunchPad<T> {
    pub fn new() -> io::Result<Self> {
        let plan_bytes = std::mem::size_of::<T>().next_multiple_of(sys::page_size());
        let base = sys::map_with_guard(STACK + plan_bytes);
        if base.is_null() {
            return Err(io::Error::last_os_error());
        }
        Ok(LaunchPad {
            // SAFETY: STACK bytes into a mapping of STACK + plan_bytes bytes; page-aligned.
            stack_top: unsafe { base.add(STACK) },
            _plan: PhantomData,
        })
    }

    /// Puts `plan` at the top of the pad and returns it there: the copy a child forked next sees.
    pub fn load(&mut self, plan: T) -> &T {
        let slot = self.stack_top.cast::<T>();
        // SAFETY: `stack_top` is page-aligned (so aligned for T) with at least size_of::<T>()
        // writable bytes above it; `&mut self` means no reference to the previous plan is live,
        // and T: Copy has no destructor to run for the value overwritten.
        unsafe {
            slot.write(plan);
            &*slot
        }
    }

    /// The initial stack pointer of a child: just below the plan, 16-byte aligned.
    pub fn stack_top(&self) -> *mut u8 {
        self.stack_top
    }
}

/// The parts of the main process's memory that children do not get: its heap (as it grows) and
/// the main thread's stack. Best effort: where `madvise` fails, children simply get a copy as
/// before. After [`Exclusions::start`], the main process may fork only onto a [`LaunchPad`]
/// (`sys::fork_onto`), never continue a child on its own stack.
pub struct Exclusions {
    /// End of the part of the heap already excluded.
    heap_done: usize,
}

impl Exclusions {
    /// Excludes the main thread's stack and the heap as it is now. Call on the main thread.
    pub fn start() -> Exclusions {
        let mut heap_done = sys::program_break();
        if let Ok(maps) = std::fs::read_to_string("/proc/self/maps") {
            for line in maps.lines() {
                let region = line.split_whitespace().nth(5);
                if !matches!(region, Some("[heap]" | "[stack]")) {
                    continue;
                }
                let Some((start, end)) = line.split_whitespace().next().and_then(|r| r.split_once('-')) else {
                    continue;
                };
                let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else {
                    continue;
                };
                if sys::exclude_from_children(start, end).is_ok() && region == Some("[heap]") {
                    heap_done = heap_done.max(end);
                }
            }
        }
        Exclusions { heap_done }
    }

    /// Excludes heap that `malloc` added (with `brk`) since the last call. Cheap when nothing
    /// changed: one read of the current break. Call before each fork.
    pub fn refresh(&mut self) {
        let brk = sys::program_break().next_multiple_of(sys::page_size());
        if brk > self.heap_done {
            if sys::exclude_from_children(self.heap_done, brk).is_ok() {
                self.heap_done = brk;
            }
        } else {
            // The heap shrank: what grows back from here is a new mapping to exclude.
            self.heap_done = brk;
        }
    }
}
