//! The Linux backend.
//!
//! A target's session owns an abstract-namespace Unix `SOCK_SEQPACKET` listener named
//! `sockshare/v1/<pid>` and one thread that serves it ([`target`]). A source's
//! `duplicate` connects to it once per target (the session checks the source's
//! credentials against its policy and answers), then pushes each socket with
//! `SCM_RIGHTS` together with a random single-use token ([`source`]). When `sendmsg`
//! returns, the socket is in the target's receive queue: the kernel holds it for the
//! target, so the source may close or exit at once. The session's thread drains the
//! queue into a table of pending sockets keyed by token; `redeem` takes the entry out.
//!
//! Why this shape:
//! - abstract names live in the network namespace, so a target in another one is not
//!   found; `SO_PEERCRED` gives the listener's pid as the source sees it, so a listener
//!   in another pid namespace is refused: never delivery to the wrong process;
//! - a descriptor that does not fit in the receiver's table is closed by the kernel
//!   during `recvmsg`; the session therefore peeks (which installs copies and leaves the
//!   message queued) and consumes only once the copies are safely installed;
//! - fork: the child must not hold the parent's pending sockets (the peer would never see
//!   EOF) nor reuse its random tokens, so `pthread_atfork` handlers close them in the child.
//!   The handlers lock the backend's mutexes before the fork and release them after it in
//!   both processes. These are std's futex mutexes: releasing one in the child is one
//!   atomic store (and at most a wake-up nobody waits for). A lock with process-wide
//!   bookkeeping (parking_lot's table of parked threads) can be inherited mid-update from
//!   a thread the child does not have, and the child then hangs on it.

mod batch;
mod channel;
mod pending;
mod source;
mod target;
mod wire;

#[cfg(feature = "fuzzing")]
pub(crate) use wire::fuzzing;

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, Once, PoisonError};

use rustix::io::Errno;

use crate::error::{Error, ErrorKind, Result};
use crate::info::SocketKind;

pub(crate) use channel::Channel;
pub(crate) use source::{disconnect_all, duplicate, duplicate_many, probe};
pub(crate) use target::Session;

/// Locks `m`. A panic while holding one of the backend's mutexes leaves its data as it
/// was (every update is a single insert, remove or flag), so poisoning is ignored.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// This process's id, kept once the fork handlers are installed (the child's handler
/// renews it), so redeem's check costs no system call.
static PID: AtomicU32 = AtomicU32::new(0);

/// The id of the calling process.
pub(crate) fn current_pid() -> u32 {
    match PID.load(Ordering::Relaxed) {
        0 => getpid(),
        pid => pid,
    }
}

fn getpid() -> u32 {
    rustix::process::getpid().as_raw_nonzero().get() as u32
}

/// Family, type and protocol of an open socket (three `getsockopt`s, through socket2).
pub(crate) fn socket_kind(fd: BorrowedFd<'_>) -> Result<SocketKind> {
    let sock = socket2::SockRef::from(&fd);
    let not_socket = |e: io::Error| match e.raw_os_error() {
        Some(libc::ENOTSOCK) | Some(libc::EBADF) => Error::new(
            ErrorKind::NotSocket,
            format!("descriptor {} is not an open socket", fd.as_raw_fd()),
        )
        .with_source(e),
        _ => os_error("reading the socket's type", e),
    };
    let domain = sock.domain().map_err(not_socket)?;
    let protocol = sock.protocol().map_err(not_socket)?.map_or(0, i32::from);
    // TCP is only ever a stream and UDP a datagram socket: one system call fewer on the
    // handoff path for the common kinds.
    let ty = match protocol {
        libc::IPPROTO_TCP => libc::SOCK_STREAM,
        libc::IPPROTO_UDP => libc::SOCK_DGRAM,
        _ => sock.r#type().map_err(not_socket)?.into(),
    };
    Ok(SocketKind::new(domain.into(), ty, protocol))
}

/// The Winsock kind for an OS error met while doing `what`.
pub(super) fn os_error(what: &str, e: impl Into<io::Error>) -> Error {
    let e: io::Error = e.into();
    let kind = match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => ErrorKind::TooManyDescriptors,
        Some(libc::ENOBUFS) | Some(libc::ENOMEM) | Some(libc::ETOOMANYREFS) => {
            ErrorKind::NoBufferSpace
        }
        Some(libc::EBADF) | Some(libc::ENOTSOCK) => ErrorKind::NotSocket,
        _ => ErrorKind::NetDown,
    };
    Error::new(kind, format!("{what}: {e}")).with_source(e)
}

/// Credentials of the peer of a connected Unix socket, as this process sees them.
/// The pid is 0 when the peer is in a pid namespace this process cannot see.
pub(super) fn peer_cred(fd: BorrowedFd<'_>) -> std::result::Result<libc::ucred, Errno> {
    // rustix's UCred holds a non-zero Pid, which the kernel's 0 for an invisible peer
    // would violate; read the raw struct instead.
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a valid, writable `ucred` of `len` bytes and `fd` is open for the
    // duration of the call; the kernel writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cred)
    } else {
        Err(Errno::from_io_error(&io::Error::last_os_error()).unwrap_or(Errno::IO))
    }
}

/// The abstract socket name of `pid`'s session endpoint.
pub(super) fn endpoint_address(pid: u32) -> io::Result<rustix::net::SocketAddrUnix> {
    Ok(rustix::net::SocketAddrUnix::new_abstract_name(
        format!("sockshare/v1/{pid}").as_bytes(),
    )?)
}

/// Waits until `fd` is ready for `events`, for at most `timeout`. `Ok(false)` on timeout.
pub(super) fn wait_ready(
    fd: &impl AsFd,
    events: rustix::event::PollFlags,
    timeout: std::time::Duration,
) -> std::result::Result<bool, Errno> {
    let timeout = rustix::event::Timespec::try_from(timeout).unwrap_or(rustix::event::Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    });
    let mut fds = [rustix::event::PollFd::new(fd, events)];
    loop {
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(n) => return Ok(n > 0),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Installs the fork handlers once per process (see the module docs).
pub(super) fn install_fork_handlers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: the three handlers are `extern "C"` functions with no arguments that
        // live as long as the program; they only lock, unlock and close descriptors.
        let rc = unsafe {
            libc::pthread_atfork(
                Some(before_fork),
                Some(after_fork_parent),
                Some(after_fork_child),
            )
        };
        // pthread_atfork fails only with ENOMEM; without the handlers a forked child would
        // keep copies of pending sockets, which the tests of S15 would catch. The pid is
        // kept only when the child's handler will renew it.
        debug_assert_eq!(rc, 0);
        if rc == 0 {
            PID.store(getpid(), Ordering::Relaxed);
        }
    });
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
    PID.store(getpid(), Ordering::Relaxed);
    source::after_fork(true);
    target::after_fork(true);
}
