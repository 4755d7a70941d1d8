//! The Linux backend.
//!
//! A target's session owns an abstract-namespace Unix `SOCK_SEQPACKET` listener named
//! `sockshare/v2/<pid>.<start time>.<i>` and one thread that serves it ([`target`]). A
//! source's `duplicate` connects to it once per target, makes sure the process behind
//! it is the live process it was asked for (below), and is admitted or refused by the
//! session's policy; it then pushes each socket with `SCM_RIGHTS` together with a random
//! single-use secret ([`source`]). When `sendmsg` returns, the socket is in the target's
//! receive queue: the kernel holds it for the target, so the source may close or exit at
//! once. The session's thread drains the queue into a table of pending sockets keyed by
//! the token derived from the secret ([`wire::token_of`]); `redeem` takes the entry out.
//!
//! Why this shape:
//! - **Who is behind a name (S19).** A name is only a name: anyone may bind it, and a
//!   listener may be handed to another process. So the source checks three things, each
//!   by the kernel's word: `SO_PEERCRED` (the listener was made by pid P, as this process
//!   numbers pids, so a listener in another pid namespace is refused); where the kernel
//!   has `SO_PEERPIDFD` (Linux 6.5), that the listener's maker is still alive, so not a
//!   dead process whose pid P was reused; and, on every kernel, the credentials the kernel
//!   attaches to the session's answer (`SO_PASSCRED`: the sender's pid, which a process
//!   without `CAP_SYS_ADMIN` cannot forge), so the process that accepted the connection,
//!   and will receive what is pushed on it, is P itself and not a process P or a dead
//!   P's heir handed the listener to.
//! - **Squatting (S19, S25).** The name holds the target's start time (clock ticks since
//!   boot, from `/proc/<pid>/stat`), so nobody can bind it before the process exists,
//!   and it changes when the pid is reused. A squatter who binds the name of a live
//!   process before its session starts only pushes it to the next of
//!   [`ENDPOINT_NAMES`] indices; sources try them in turn and skip impostors.
//! - Abstract names live in the network namespace, so a target in another one is not
//!   found.
//! - A descriptor that does not fit in the receiver's table is closed by the kernel
//!   during `recvmsg`; the session therefore peeks (which installs copies and leaves the
//!   message queued) and consumes only once the copies are safely installed.
//! - **Fork (S15, S24).** A child must not hold its parent's pending sockets, redeem its
//!   infos, or reuse its secrets: [`fork`] says how, and gives the lock order of every
//!   process-wide lock of the project.

pub(crate) mod batch;
mod channel;
mod fork;
mod info;
mod keeper;
mod pending;
mod raw;
mod source;
mod target;
mod wire;

#[cfg(feature = "fuzzing")]
pub(crate) use wire::fuzzing;

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustix::io::Errno;

use crate::error::{Error, ErrorKind, Result};
use crate::layout::SocketKind;

pub(crate) use channel::Channel;
use fork::install_fork_handlers;
pub(crate) use fork::{current_pid, wipe_on_fork_page};
pub(crate) use info::Info;
pub(crate) use source::{disconnect_all, duplicate, duplicate_many, probe};
pub(crate) use target::Session;

/// Locks `m`. A panic while holding one of the backend's mutexes leaves its data as it
/// was (every update is a single insert, remove or flag), so poisoning is ignored.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
    unsafe {
        raw::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    }?;
    Ok(cred)
}

/// A new nonblocking, close-on-exec Unix `SOCK_SEQPACKET` socket: what sessions, keepers
/// and sources listen and connect with.
pub(super) fn seqpacket_socket() -> std::result::Result<OwnedFd, Errno> {
    rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
        None,
    )
}

/// How many names a session may bind: it takes the first one free.
pub(super) const ENDPOINT_NAMES: u32 = 16;

/// The abstract socket name of the session of process `pid` started at `start` (see
/// [`start_time`]), under `suffix`: an index below [`ENDPOINT_NAMES`], or, when
/// squatters hold all of those, `r` and a random number (see [`discover_endpoint`]).
pub(super) fn endpoint_address(
    pid: u32,
    start: u64,
    suffix: impl std::fmt::Display,
) -> io::Result<rustix::net::SocketAddrUnix> {
    rustix::net::SocketAddrUnix::new_abstract_name(
        format!("{}{suffix}", endpoint_prefix(pid, start)).as_bytes(),
    )
    .map_err(Into::into)
}

/// How many keepers (one per source process) may wait for one target at once.
pub(super) const KEEPER_NAMES: u32 = 16;

/// The abstract name number `index` of a keeper holding sockets for process `pid`
/// started at `start` (see `keeper`).
pub(super) fn keeper_address(
    pid: u32,
    start: u64,
    index: u32,
) -> io::Result<rustix::net::SocketAddrUnix> {
    rustix::net::SocketAddrUnix::new_abstract_name(
        format!("sockshare/v2/keep/{pid}.{start}.{index}").as_bytes(),
    )
    .map_err(Into::into)
}

fn endpoint_prefix(pid: u32, start: u64) -> String {
    format!("sockshare/v2/{pid}.{start}.")
}

/// The name suffixes of session endpoints that process `pid` (started at `start`)
/// listens on itself, found from its descriptors (`/proc/<pid>/fd`, readable by its own
/// user and root, the sources the default policy admits) and the kernel's table of Unix
/// sockets (`/proc/net/unix`): how a source finds a session that squatters pushed off
/// every indexed name. Empty when either cannot be read.
pub(super) fn discover_endpoint(pid: u32, start: u64) -> Vec<String> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: Vec<String> = fds
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_str()?;
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return Vec::new();
    };
    let prefix = format!("@{}", endpoint_prefix(pid, start));
    // Lines: "Num RefCount Protocol Flags Type St Inode Path"; abstract paths start '@'.
    table
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let (inode, path) = (words.get(6)?, words.get(7)?);
            let suffix = path.strip_prefix(&prefix)?;
            inodes.iter().any(|i| i == inode).then(|| suffix.to_owned())
        })
        .collect()
}

/// When process `pid` (this one for `None`) started, in clock ticks since boot: field
/// 22 of `/proc/<pid>/stat` (proc_pid_stat(5)). Fails when the process does not exist.
pub(super) fn start_time(pid: Option<u32>) -> io::Result<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path)?;
    // The command name, field 2, is in parentheses and may hold anything, parentheses
    // and spaces included: count fields after its last ')'. Field 22 is the 20th there.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19)?.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc stat"))
}

/// Whether the process that made the peer of `fd` (a listener's maker, for a connected
/// socket) is still alive, from `SO_PEERPIDFD` (Linux 6.5); `None` where the kernel does
/// not tell.
pub(super) fn peer_alive(fd: BorrowedFd<'_>) -> Option<bool> {
    // The option's number where the kernel takes it from asm-generic; the architectures
    // that number it otherwise (alpha, mips, parisc, sparc) go without the check.
    const SO_PEERPIDFD: Option<libc::c_int> = if cfg!(any(
        target_arch = "x86",
        target_arch = "x86_64",
        target_arch = "arm",
        target_arch = "aarch64",
        target_arch = "riscv64",
        target_arch = "powerpc64",
        target_arch = "s390x",
        target_arch = "loongarch64"
    )) {
        Some(77)
    } else {
        None
    };
    let option = SO_PEERPIDFD?;
    let mut pidfd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `pidfd` is a writable int of `len` bytes; `fd` is open for the call.
    let rc = unsafe {
        raw::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&mut pidfd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if let Err(e) = rc {
        // ESRCH: the maker is gone (kernels that cannot name a dead process). Anything
        // else (ENOPROTOOPT before 6.5): no answer.
        return (e == Errno::SRCH).then_some(false);
    }
    // SAFETY: on success the kernel installed a new pidfd for us alone.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // A pidfd polls readable once its process has exited (pidfd_open(2)).
    Some(!wait_ready(&pidfd, rustix::event::PollFlags::IN, Duration::ZERO).unwrap_or(true))
}

/// The pid in the `SCM_CREDENTIALS` of a record received on `fd` (which has
/// `SO_PASSCRED`), with its bytes; waits at most `timeout`. `Ok(None)` on timeout. The pid
/// is 0 when the sender is in a pid namespace this process cannot see.
pub(super) fn recv_with_sender(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    timeout: Duration,
) -> std::result::Result<Option<(usize, Option<u32>)>, Errno> {
    if !wait_ready(&fd, rustix::event::PollFlags::IN, timeout)? {
        return Ok(None);
    }
    let mut control = [0u64; 8];
    let mut pid = None;
    let (n, _) = raw::recv_one(fd.as_raw_fd(), buf, &mut control, libc::MSG_DONTWAIT, |c| {
        match (c.level, c.ty) {
            (libc::SOL_SOCKET, libc::SCM_CREDENTIALS) => {
                pid = c.items::<libc::ucred>().next().map(|cred| cred.pid as u32);
            }
            (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                for raw in c.items::<RawFd>() {
                    // SAFETY: the kernel installed this descriptor for this process just
                    // now; nobody should send any here, so it is closed.
                    drop(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
            _ => {}
        }
    })?;
    Ok(Some((n, pid)))
}

/// Waits until `fd` is ready for `events`, for at most `timeout`. `Ok(false)` on timeout.
pub(super) fn wait_ready(
    fd: &impl AsFd,
    events: rustix::event::PollFlags,
    timeout: std::time::Duration,
) -> std::result::Result<bool, Errno> {
    let deadline = Instant::now() + timeout;
    let mut fds = [rustix::event::PollFd::new(fd, events)];
    loop {
        // What is left of the wait, so a signal does not restart it whole.
        let left = deadline.saturating_duration_since(Instant::now());
        let left = rustix::event::Timespec::try_from(left).unwrap_or(rustix::event::Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        match rustix::event::poll(&mut fds, Some(&left)) {
            Ok(n) => return Ok(n > 0),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}
