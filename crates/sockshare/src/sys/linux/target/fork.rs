//! The target's part of fork handling (the handlers and the lock order are in
//! `sys/linux/mod.rs`): holding the session's locks across a fork, and in the child
//! letting go of what the parent's session owns.

use super::*;

/// The guards `before_fork` takes, held until `after_fork` (both run in the forking
/// thread). Fields drop in order: `inner` and `door` borrow from the endpoint that
/// `registry` keeps.
struct Held {
    inner: Option<MutexGuard<'static, Inner>>,
    door: Option<MutexGuard<'static, Door>>,
    registry: MutexGuard<'static, Registry>,
}

thread_local! {
    static HELD: RefCell<Option<Held>> = const { RefCell::new(None) };
}

/// Extends a guard on the registry's endpoint to `'static`.
///
/// # Safety
/// The registry must be locked, and the guard dropped before the registry's guard: the
/// locked registry keeps the endpoint alive.
unsafe fn extend<T>(guard: MutexGuard<'_, T>) -> MutexGuard<'static, T> {
    // SAFETY: per this function's contract.
    unsafe { std::mem::transmute::<MutexGuard<'_, T>, MutexGuard<'static, T>>(guard) }
}

pub(in crate::sys::linux) fn before_fork() {
    let registry = lock(&REGISTRY);
    let (door, inner) = match registry.endpoint.as_ref() {
        // SAFETY: the guards borrow the endpoint that the locked registry holds, and
        // `Held` drops them before the registry's guard.
        Some(ep) => unsafe { (Some(extend(lock(&ep.door))), Some(extend(lock(&ep.inner)))) },
        None => (None, None),
    };
    HELD.with(|h| {
        *h.borrow_mut() = Some(Held {
            inner,
            door,
            registry,
        })
    });
}

pub(in crate::sys::linux) fn after_fork(child: bool) {
    let Some(Held {
        mut inner,
        mut door,
        mut registry,
    }) = HELD.with(|h| h.borrow_mut().take())
    else {
        return;
    };
    if child {
        if let (Some(door), Some(inner)) = (door.as_mut(), inner.as_mut()) {
            abandon(&mut registry, door, inner);
        }
    }
    // Before the registry's guard: they borrow the endpoint the registry keeps.
    drop(inner);
    drop(door);
    drop(registry);
}

/// In a child the fork handlers did not run in: `after_fork`'s work, with the locks
/// taken now. A lock that a thread the child does not have held at the fork stays held;
/// the child then leaves that state alone.
pub(in crate::sys::linux) fn abandon_inherited() {
    let mut registry = match REGISTRY.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
        Err(TryLockError::WouldBlock) => return,
    };
    let Some(ep) = registry.endpoint.clone() else {
        return;
    };
    if let (Ok(mut door), Ok(mut inner)) = (ep.door.try_lock(), ep.inner.try_lock()) {
        abandon(&mut registry, &mut door, &mut inner);
    };
}

/// In a forked child: closes every inherited descriptor of the parent's session and
/// forgets the session, without freeing memory (only async-signal-safe work here).
fn abandon(registry: &mut Registry, door: &mut Door, inner: &mut Inner) {
    inner.closed = true;
    let Some(ep) = registry.endpoint.as_ref() else {
        return;
    };
    let fds = door
        .listener
        .iter()
        .chain(door.reserve.iter())
        .chain(inner.conns.iter().flatten().map(|c| &c.fd))
        .chain(inner.pending.values())
        .chain([&ep.epoll, &ep.wake]);
    for fd in fds {
        // SAFETY: the descriptor was inherited from the parent; the endpoint holding the
        // OwnedFd is leaked below, so it is never closed again.
        unsafe { super::super::raw::close(fd.as_raw_fd()) };
    }
    // The session belongs to the parent: leak the child's copy (its descriptors are
    // closed above, and the leak keeps them from being closed twice), thread included.
    std::mem::forget(registry.endpoint.take());
    std::mem::forget(registry.thread.take());
    registry.refs = 0;
}
