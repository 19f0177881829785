//! Memory system calls around the fork: the launch pad's mapping, `MADV_DONTFORK`, and pages
//! shared between processes. Mapping a shared page is async-signal-safe (a connection process
//! maps one for its two pumps); the rest runs in the main process before it forks.

use super::{SysResult, check};
use nix::errno::Errno;
use std::marker::PhantomData;
use std::ptr::NonNull;

/// The smallest page size Linux has: a [`SharedPage`] holds at most this much.
const MIN_PAGE: usize = 4096;

/// Maps `len` bytes of private, zero-filled memory with an inaccessible guard page below it.
/// Returns the start of the usable part (just above the guard).
pub(crate) fn map_with_guard(len: usize) -> SysResult<NonNull<u8>> {
    let page = page_size();
    // SAFETY: a new anonymous mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len + page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    // SAFETY: the first page of the mapping just made; nothing refers to it yet.
    if unsafe { libc::mprotect(p, page, libc::PROT_NONE) } != 0 {
        let e = Errno::last();
        // SAFETY: unmapping the mapping made above, which nothing refers to.
        unsafe { libc::munmap(p, len + page) };
        return Err(e);
    }
    // SAFETY: `page` bytes into a mapping of `len + page` bytes, so in bounds and not null.
    Ok(unsafe { NonNull::new_unchecked(p.cast::<u8>().add(page)) })
}

/// `madvise(MADV_DONTFORK)` on the pages covering `[start, end)`: children forked afterwards do not
/// get them at all (not even copy-on-write). Contents are not changed.
pub(crate) fn exclude_from_children(start: usize, end: usize) -> SysResult<()> {
    // Only whole pages inside the range: rounding the start down could take in the end of a
    // neighbouring mapping (the initial break may share a page with static data).
    let page = page_size();
    let (start, end) = (start.next_multiple_of(page), end.next_multiple_of(page));
    if end <= start {
        return Ok(());
    }
    // SAFETY: madvise with MADV_DONTFORK only changes how fork treats the range; it fails (and we
    // report it) if part of the range is not mapped.
    check(unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTFORK) }).map(drop)
}

/// The current end of the heap that `malloc` grows with `brk(2)` (glibc's cached value: no syscall).
pub(crate) fn program_break() -> usize {
    // SAFETY: sbrk(0) only reads the current break.
    unsafe { libc::sbrk(0) as usize }
}

pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// Types that may live in a page shared between processes.
///
/// # Safety
/// All-zero bytes must be a valid value of the type, and every part of it that any process changes
/// after the page is shared must be an atomic (processes see each other's writes only through
/// those).
pub(crate) unsafe trait SharedZeroed: Sync {}

// SAFETY: an array of such values is such a value.
unsafe impl<T: SharedZeroed, const N: usize> SharedZeroed for [T; N] {}

/// A `T` in one anonymous `MAP_SHARED` page: the process that maps it and every child it forks
/// afterwards see the same `T`. The page is never unmapped (it goes with the process), so the
/// value lives as long as the process: a `SharedPage` is a `'static` reference, `Copy` as plain
/// data in a connection's plan.
pub(crate) struct SharedPage<T: 'static> {
    value: &'static T,
    _owned: PhantomData<T>,
}

impl<T> Clone for SharedPage<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SharedPage<T> {}

impl<T: SharedZeroed> SharedPage<T> {
    /// Maps a fresh, zero-filled page holding a `T`.
    pub(crate) fn map() -> SysResult<SharedPage<T>> {
        const {
            assert!(std::mem::size_of::<T>() <= MIN_PAGE && std::mem::align_of::<T>() <= MIN_PAGE);
        }
        // SAFETY: an anonymous shared mapping of one page; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MIN_PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        // SAFETY: the page is fresh, zero-filled and page-aligned, and holds a `T` (checked above
        // at compile time); all-zero is a valid `T` (`SharedZeroed`). It is never unmapped, so
        // the reference may be 'static; `T: Sync` makes sharing it sound.
        let value = unsafe { &*p.cast::<T>() };
        Ok(SharedPage {
            value,
            _owned: PhantomData,
        })
    }

    /// The shared value, for as long as the process lives.
    pub(crate) fn get(self) -> &'static T {
        self.value
    }
}

impl<T> std::ops::Deref for SharedPage<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.value
    }
}

/// `len` values of `T` in an anonymous `MAP_SHARED` mapping of as many pages as they need: like
/// [`SharedPage`] (zero-filled, never unmapped, seen by every child forked afterwards), for more
/// than a page holds.
pub(crate) fn map_shared_slice<T: SharedZeroed>(len: usize) -> SysResult<&'static [T]> {
    const {
        assert!(std::mem::align_of::<T>() <= MIN_PAGE);
    }
    let bytes = (len.max(1) * std::mem::size_of::<T>()).next_multiple_of(page_size());
    // SAFETY: an anonymous shared mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    // SAFETY: the mapping is fresh, zero-filled, page-aligned and holds `len` values of `T`, for
    // which all-zero is valid (`SharedZeroed`); it is never unmapped, so 'static holds, and
    // `T: Sync` makes sharing it sound.
    Ok(unsafe { std::slice::from_raw_parts(p.cast::<T>(), len) })
}
