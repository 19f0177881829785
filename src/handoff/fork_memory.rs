//! What of the main process's memory a connection process gets. Runs in the main process (and
//! its accept threads, for their own stacks), before it forks.
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
pub(crate) struct LaunchPad<T: Copy> {
    stack_top: *mut u8,
    _plan: PhantomData<T>,
}

impl<T: Copy> LaunchPad<T> {
    pub(crate) fn new() -> io::Result<Self> {
        let plan_bytes = std::mem::size_of::<T>().next_multiple_of(sys::page_size());
        let base = sys::map_with_guard(STACK + plan_bytes)?.as_ptr();
        Ok(LaunchPad {
            // SAFETY: STACK bytes into a mapping of STACK + plan_bytes bytes; page-aligned.
            stack_top: unsafe { base.add(STACK) },
            _plan: PhantomData,
        })
    }

    /// Puts `plan` at the top of the pad and returns it there: the copy a child forked next sees.
    pub(crate) fn load(&mut self, plan: T) -> &T {
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
    pub(crate) fn stack_top(&self) -> *mut u8 {
        self.stack_top
    }
}

/// Keeps the calling thread's own memory out of children forked later: its alternate signal stack
/// (Rust's runtime gives every thread one, for its stack-overflow message) and, with `with_stack`
/// (threads other than the main one), its stack; each with the guard page below it. Children run
/// on a launch pad and never on these, so they need neither the pages nor the mappings (a child
/// that faults so hard that Rust's handler would want its alternate stack dies of it either way).
/// Best effort, like [`Exclusions`]. Safe only because children are forked with the raw system
/// call: glibc's `fork()` wrapper walks every thread's descriptor, which lives in its stack.
pub(crate) fn exclude_thread_memory(with_stack: bool) {
    if let Some(maps) = Mappings::read() {
        exclude_thread_regions(&maps, with_stack);
    }
}

fn exclude_thread_regions(maps: &Mappings, with_stack: bool) {
    let mut regions = Vec::new();
    // SAFETY: a zeroed stack_t is a valid value (null pointer, zero size and flags).
    let mut alt: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigaltstack with a null new stack only reads the current one into `alt`.
    if unsafe { libc::sigaltstack(std::ptr::null(), &mut alt) } == 0 && alt.ss_flags & libc::SS_DISABLE == 0 {
        regions.push(alt.ss_sp as usize);
    }
    if with_stack {
        // SAFETY: pthread_getattr_np fills `attr` for the calling thread; pthread_attr_getstack
        // reads it; the attr is destroyed after use.
        unsafe {
            let mut attr: libc::pthread_attr_t = std::mem::zeroed();
            if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) == 0 {
                let mut addr: *mut libc::c_void = std::ptr::null_mut();
                let mut size: libc::size_t = 0;
                if libc::pthread_attr_getstack(&attr, &mut addr, &mut size) == 0 {
                    regions.push(addr as usize);
                }
                libc::pthread_attr_destroy(&mut attr);
            }
        }
    }
    for addr in regions {
        if let Some(m) = maps.containing(addr) {
            let _ = sys::exclude_from_children(m.start, m.end);
            if let Some(guard) = maps.ending_at(m.start).filter(|g| g.perms.starts_with("---")) {
                let _ = sys::exclude_from_children(guard.start, guard.end);
            }
        }
    }
}

/// One line of /proc/self/maps.
struct Mapping {
    start: usize,
    end: usize,
    perms: String,
    name: String,
}

struct Mappings(Vec<Mapping>);

impl Mappings {
    fn read() -> Option<Mappings> {
        let text = std::fs::read_to_string("/proc/self/maps").ok()?;
        let parse = |line: &str| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let perms = fields.next()?.to_string();
            let name = fields.nth(3).unwrap_or("").to_string();
            Some(Mapping {
                start: usize::from_str_radix(start, 16).ok()?,
                end: usize::from_str_radix(end, 16).ok()?,
                perms,
                name,
            })
        };
        Some(Mappings(text.lines().filter_map(parse).collect()))
    }

    fn containing(&self, addr: usize) -> Option<&Mapping> {
        self.0.iter().find(|m| m.start <= addr && addr < m.end)
    }

    fn ending_at(&self, addr: usize) -> Option<&Mapping> {
        self.0.iter().find(|m| m.end == addr)
    }

    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Mapping> {
        self.0.iter().filter(move |m| m.name == name)
    }
}

/// Bytes above the thread pointer that a child still needs: glibc's thread descriptor
/// (`struct pthread`, about 2.3 KiB; its last field is the rseq area the kernel writes on every
/// return to user space).
const THREAD_DESCRIPTOR: usize = 4096;

/// Where the main thread's static TLS block and thread descriptor end, when they lie in the heap
/// `[start, end)`; else `start`. A statically linked glibc allocates them with `sbrk` at start-up,
/// at the bottom of the heap, and every child runs on them (errno, the stack guard, the rseq area
/// the kernel writes as the child first returns to user space: without them it dies of `SIGSEGV`
/// in its first instruction). A dynamically linked one maps them elsewhere.
fn thread_block_end(start: usize, end: usize) -> usize {
    // glibc's pthread_t is the address of the thread descriptor, which the thread pointer
    // (%fs on x86-64) points at; the static TLS block is just below it.
    // SAFETY: pthread_self has no preconditions.
    let tp = unsafe { libc::pthread_self() } as usize;
    if (start..end).contains(&tp) {
        (tp + THREAD_DESCRIPTOR).next_multiple_of(sys::page_size()).min(end)
    } else {
        start
    }
}

/// The parts of the main process's memory that children do not get: its heap (as it grows) and
/// the main thread's stack. Best effort: where `madvise` fails, children simply get a copy as
/// before. After [`Exclusions::start`], the main process may fork only onto a [`LaunchPad`]
/// (`sys::fork_onto`), never continue a child on its own stack.
pub(crate) struct Exclusions {
    /// End of the part of the heap already excluded.
    heap_done: usize,
}

impl Exclusions {
    /// Excludes the main thread's stack, its alternate signal stack and the heap as it is now
    /// (but for the main thread's TLS block when that is in the heap). Call on the main thread.
    pub(crate) fn start() -> Exclusions {
        let mut heap_done = sys::program_break();
        if let Some(maps) = Mappings::read() {
            for m in maps.named("[stack]") {
                let _ = sys::exclude_from_children(m.start, m.end);
            }
            for m in maps.named("[heap]") {
                let start = m.start.max(thread_block_end(m.start, m.end));
                if sys::exclude_from_children(start, m.end).is_ok() {
                    heap_done = heap_done.max(m.end);
                }
            }
            exclude_thread_regions(&maps, false);
        }
        Exclusions { heap_done }
    }

    /// Excludes heap that `malloc` added (with `brk`) since the last call. Cheap when nothing
    /// changed: one read of the current break. Call before each fork.
    pub(crate) fn refresh(&mut self) {
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
