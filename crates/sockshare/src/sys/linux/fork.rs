//! Fork handling for the whole backend, in one place.
//!
//! A child must not hold its parent's pending sockets (the peer
//! would never see EOF), redeem its infos, or reuse its random secrets. `pthread_atfork`
//! handlers close the inherited session in the child. The handlers lock the backend's
//! mutexes before the fork and release them after it in both processes. These are std's
//! futex mutexes: releasing one in the child is one atomic store (and at most a wake-up
//! nobody waits for). A child made without the handlers (glibc's `_Fork`, a raw
//! `clone`) is noticed by a page the kernel zeroes in every child (`MADV_WIPEONFORK`)
//! that holds this process's pid: the first call into sockshare in such a child reads
//! 0, and closes what it inherited before anything else. Until that call the child
//! holds the inherited descriptors (nothing can close them for it).
//!
//! Lock order, for every thread and the fork handlers, over every process-wide lock of
//! the project:
//!
//! 1. the C library's state lock (`crates/ws2_32`), when a call comes through it;
//! 2. `target::REGISTRY`;
//! 3. a session's `door`;
//! 4. that session's `inner`.
//!
//! `source::LINKS` is taken with none of 2 to 4 held. The fork handlers take 2, 3, 4 in
//! that order, then `LINKS`, and release them in the reverse order.
//!
//! Each part's own state is let go of by hooks in that part: `target::before_fork`,
//! `after_fork` and `abandon_inherited` (the session), `source::before_fork`,
//! `after_fork` and `forget_inherited` (the connections to targets). Keepers run in
//! processes of their own, made with a raw `clone` that runs no handler and starts a
//! fresh program state (`keeper.rs`), so they hold none of these locks.
//!
//! The C library (`crates/ws2_32`) keeps its own process-wide lock, the `Mutex` of its
//! state. It takes no fork handler: its state hangs from a page the kernel zeroes in every
//! child (`MADV_WIPEONFORK`), so a child finds none and makes its own, never touching the
//! parent's lock, which a thread the child does not have may have held at the fork.
//! Sockshare never calls into the C library, so its lock can only come first.

use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};
use std::sync::Once;

use super::{raw, source, target};

/// The pid-holding page (see the module docs), mapped once the fork handlers are in.
static MARK: AtomicPtr<AtomicU32> = AtomicPtr::new(std::ptr::null_mut());

/// The id of the calling process. Costs one load where the kernel zeroes the mark page
/// in children (`MADV_WIPEONFORK`, Linux 4.14), a system call elsewhere.
pub(crate) fn current_pid() -> u32 {
    // SAFETY: a non-null MARK points into a page mapped once and never unmapped.
    match unsafe { MARK.load(Ordering::Acquire).as_ref() } {
        Some(mark) => match mark.load(Ordering::Relaxed) {
            0 => adopt_new_process(mark),
            pid => pid,
        },
        None => getpid(),
    }
}

/// In a child that the fork handlers did not run in: closes what it inherited of its
/// parent's sessions and connections, as the child handler would have, then marks the
/// page with the child's pid. A lock that another thread of the parent held at the fork
/// stays held in the child; the state behind it is then left alone (sockshare stays
/// unusable in that child, which POSIX allows nothing of anyway).
fn adopt_new_process(mark: &AtomicU32) -> u32 {
    let pid = getpid();
    source::forget_inherited();
    target::abandon_inherited();
    mark.store(pid, Ordering::Relaxed);
    pid
}

fn getpid() -> u32 {
    rustix::process::getpid().as_raw_nonzero().get() as u32
}

/// Installs the fork handlers and the mark page once per process (see the module docs).
pub(in crate::sys::linux) fn install_fork_handlers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The handlers only lock, unlock and close descriptors.
        let rc = raw::pthread_atfork(before_fork, after_fork_parent, after_fork_child);
        // pthread_atfork fails only with ENOMEM; without the handlers the mark page is
        // what notices a child, so it is mapped either way.
        debug_assert_eq!(rc, 0);
        if let Some(mark) = map_mark() {
            mark.store(getpid(), Ordering::Relaxed);
            MARK.store((mark as *const AtomicU32).cast_mut(), Ordering::Release);
        }
    });
}

/// Maps the page the kernel zeroes in every child; `None` where it cannot (before Linux
/// 4.14), and `current_pid` then asks the kernel every time.
fn map_mark() -> Option<&'static AtomicU32> {
    let page = rustix::param::page_size();
    let addr = wipe_on_fork_page(page)?;
    // SAFETY: the page is zeroed, aligned, writable, never unmapped, and only ever
    // accessed through this atomic.
    Some(unsafe { &*addr.cast::<AtomicU32>() })
}

/// Maps `len` bytes (a whole number of pages) of private memory that the kernel fills
/// with zeros in every child process (`MADV_WIPEONFORK`), whether or not fork handlers
/// ran; `None` where it cannot (out of memory, before Linux 4.14). Never unmapped. The
/// core's pid mark lives in one, and so does the C library's state.
pub(crate) fn wipe_on_fork_page(len: usize) -> Option<*mut std::ffi::c_void> {
    let addr = raw::map_anonymous(len)?;
    // SAFETY: `addr` is the mapping just made; the advice only changes what a child sees.
    if unsafe { raw::madvise(addr, len, libc::MADV_WIPEONFORK) }.is_err() {
        // SAFETY: unmapping the mapping made above, which nothing refers to.
        unsafe { raw::munmap(addr, len) };
        return None;
    }
    Some(addr)
}

extern "C" fn before_fork() {
    target::before_fork();
    source::before_fork();
}

extern "C" fn after_fork_parent() {
    source::after_fork(false);
    target::after_fork(false);
}

extern "C" fn after_fork_child() {
    // SAFETY: as in `current_pid`.
    if let Some(mark) = unsafe { MARK.load(Ordering::Acquire).as_ref() } {
        mark.store(getpid(), Ordering::Relaxed);
    }
    source::after_fork(true);
    target::after_fork(true);
}
