//! The source side: one connection per target process, kept for later duplicates, and the
//! push of a socket with its token.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::event::PollFlags;
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use super::wire::{self, Entry, Verdict};
use super::{endpoint_address, lock, os_error, peer_cred, wait_ready};
use crate::error::{Error, ErrorKind, Result};
use crate::info::{ProtocolInfo, SocketKind};

/// How long a new connection may wait for the target's session to answer.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a push may wait for room in a full queue before reporting WSAENOBUFS.
const FULL_QUEUE_WAIT: Duration = Duration::from_millis(100);

/// Connections to targets' sessions, by target pid.
type Links = Option<HashMap<u32, Arc<OwnedFd>>>;
static LINKS: Mutex<Links> = Mutex::new(None);

/// Bumped in every forked child, so it draws tokens of its own, never its parent's.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

pub(crate) fn duplicate(fd: BorrowedFd<'_>, target_pid: u32) -> Result<ProtocolInfo> {
    let kind = super::socket_kind(fd)?;
    let mut infos = Vec::with_capacity(1);
    push_chunk(&[fd], &[kind], target_pid, &mut infos)?;
    infos
        .pop()
        .ok_or_else(|| Error::new(ErrorKind::NetDown, "the push produced no info"))
}

/// Duplicates many sockets for one target: one push record (one `sendmsg`) per
/// `wire::MAX_FDS` sockets, each record all-or-nothing.
pub(crate) fn duplicate_many(
    fds: &[BorrowedFd<'_>],
    kinds: &[SocketKind],
    target_pid: u32,
) -> Result<Vec<ProtocolInfo>> {
    let mut infos = Vec::with_capacity(fds.len());
    for (fds, kinds) in fds.chunks(wire::MAX_FDS).zip(kinds.chunks(wire::MAX_FDS)) {
        push_chunk(fds, kinds, target_pid, &mut infos)?;
    }
    Ok(infos)
}

/// Pushes up to `wire::MAX_FDS` sockets in one record and appends their infos to `infos`,
/// in order, once the record is in the target's queue.
fn push_chunk(
    fds: &[BorrowedFd<'_>],
    kinds: &[SocketKind],
    target_pid: u32,
    infos: &mut Vec<ProtocolInfo>,
) -> Result<()> {
    check_target(target_pid)?;
    let mut retried = false;
    let mut entries = [Entry { token: 0, tag: 0 }; wire::MAX_FDS];
    let before = infos.len();
    loop {
        let (link, fresh) = link_to(target_pid)?;
        infos.truncate(before);
        for (entry, &kind) in entries.iter_mut().zip(kinds) {
            let info = ProtocolInfo::for_share(kind, target_pid, next_token()?);
            *entry = Entry {
                token: info.token(),
                tag: info.tag(),
            };
            infos.push(info);
        }
        match push(&link, &entries[..fds.len()], fds) {
            Ok(()) => return Ok(()),
            // The cached connection outlived the target's session: connect once more, to
            // whatever session the pid has now.
            Err(e) if is_disconnect(e) && !fresh && !retried => {
                forget_link(target_pid, &link);
                retried = true;
            }
            Err(e) if is_disconnect(e) => {
                forget_link(target_pid, &link);
                return Err(Error::new(
                    ErrorKind::Invalid,
                    format!("process {target_pid} ended its sockshare session"),
                )
                .with_source(e.into()));
            }
            Err(e @ (Errno::AGAIN | Errno::TOOMANYREFS | Errno::NOBUFS | Errno::NOMEM)) => {
                return Err(Error::new(
                    ErrorKind::NoBufferSpace,
                    format!(
                        "process {target_pid}'s queue of unredeemed sockets is full: \
                         let it redeem some, then duplicate again"
                    ),
                )
                .with_source(e.into()))
            }
            Err(e) => return Err(os_error("sending the socket to the target", e)),
        }
    }
}

fn is_disconnect(e: Errno) -> bool {
    matches!(
        e,
        Errno::PIPE | Errno::CONNRESET | Errno::NOTCONN | Errno::CONNREFUSED
    )
}

/// Sends one push record with its descriptors, waiting a little for room in a full queue.
fn push(link: &OwnedFd, entries: &[Entry], fds: &[BorrowedFd<'_>]) -> Result<(), Errno> {
    let mut record = [0u8; wire::MAX_PUSH_LEN];
    let len = wire::push(entries, &mut record);
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(wire::MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(Errno::NOBUFS);
    }
    let iov = [IoSlice::new(&record[..len])];
    let mut deadline = None;
    loop {
        match rustix::net::sendmsg(
            link,
            &iov,
            &mut control,
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        ) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => {
                let deadline = *deadline.get_or_insert_with(|| Instant::now() + FULL_QUEUE_WAIT);
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || !wait_ready(link, PollFlags::OUT, left)? {
                    return Err(Errno::AGAIN);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The connection to `pid`'s session, and whether it was made by this call.
fn link_to(pid: u32) -> Result<(Arc<OwnedFd>, bool)> {
    if let Some(link) = lock(&LINKS).as_ref().and_then(|m| m.get(&pid)) {
        return Ok((link.clone(), false));
    }
    // Connect without the lock: the handshake waits for the target.
    let link = Arc::new(connect(pid)?);
    let mut links = lock(&LINKS);
    let map = links.get_or_insert_with(HashMap::new);
    // Targets come and go: each new connection also closes those whose target has ended,
    // so a long-lived source does not collect dead ones.
    map.retain(|_, l| !wait_ready(&**l, PollFlags::empty(), Duration::ZERO).unwrap_or(true));
    map.insert(pid, link.clone());
    Ok((link, true))
}

/// Checks that `target_pid` would accept a duplicate from this process (it exists, has a
/// session, and its policy admits this process) without pushing anything. Leaves the
/// connection cached for the next `duplicate`.
pub(crate) fn probe(target_pid: u32) -> Result<()> {
    check_target(target_pid)?;
    let (link, fresh) = link_to(target_pid)?;
    // A cached connection may have outlived the target's session (it then polls as
    // readable or hung up, since a live session never writes after its answer).
    if !fresh && wait_ready(&*link, PollFlags::IN, Duration::ZERO).unwrap_or(true) {
        forget_link(target_pid, &link);
        link_to(target_pid)?;
    }
    Ok(())
}

/// Refuses what cannot be a process id, and readies the fork handlers a source needs
/// before its first connection.
fn check_target(target_pid: u32) -> Result<()> {
    if target_pid == 0 || target_pid > i32::MAX as u32 {
        return Err(Error::new(
            ErrorKind::Invalid,
            format!("{target_pid} is not a process id"),
        ));
    }
    super::install_fork_handlers();
    Ok(())
}

/// Closes every cached connection to targets' sessions.
pub(crate) fn disconnect_all() {
    if let Some(map) = lock(&LINKS).as_mut() {
        map.clear();
    }
}

fn forget_link(pid: u32, link: &Arc<OwnedFd>) {
    if let Some(map) = lock(&LINKS).as_mut() {
        if map.get(&pid).is_some_and(|l| Arc::ptr_eq(l, link)) {
            map.remove(&pid);
        }
    }
}

fn connect(pid: u32) -> Result<OwnedFd> {
    let no_session = |e: Option<Errno>| {
        let err = Error::new(
            ErrorKind::Invalid,
            format!(
                "process {pid} has no sockshare session reachable from here: it does not \
                 exist, has not started a Session (WSAStartup), or runs in another network \
                 or pid namespace"
            ),
        );
        match e {
            Some(e) => err.with_source(e.into()),
            None => err,
        }
    };
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| os_error("creating a socket to reach the target", e))?;
    let timeout = Some(HANDSHAKE_TIMEOUT);
    use rustix::net::sockopt::{set_socket_timeout, Timeout};
    set_socket_timeout(&sock, Timeout::Send, timeout)
        .and_then(|()| set_socket_timeout(&sock, Timeout::Recv, timeout))
        .map_err(|e| os_error("configuring the connection to the target", e))?;
    let addr = endpoint_address(pid).map_err(|e| os_error("naming the target", e))?;
    match restarting(|| rustix::net::connect(&sock, &addr)) {
        Ok(()) => {}
        Err(e @ (Errno::CONNREFUSED | Errno::NOENT)) => return Err(no_session(Some(e))),
        Err(e @ Errno::AGAIN) => {
            return Err(Error::new(
                ErrorKind::NoBufferSpace,
                format!("process {pid}'s session has too many connections waiting"),
            )
            .with_source(e.into()))
        }
        Err(e) => return Err(os_error("connecting to the target's session", e)),
    }
    // The name is only a name: make sure the session behind it is the process we were
    // asked for (a listener in another pid namespace shows up as another pid, or 0).
    let cred =
        peer_cred(sock.as_fd()).map_err(|e| os_error("reading the target's credentials", e))?;
    if cred.pid as u32 != pid {
        return Err(no_session(None));
    }
    let mut buf = [0u8; wire::HEADER_LEN + 1];
    let received =
        restarting(|| rustix::net::recv(&sock, &mut buf, rustix::net::RecvFlags::empty()));
    let verdict = match received {
        Ok((got, _)) => wire::parse_reply(&buf[..got]),
        Err(Errno::AGAIN) => {
            return Err(Error::new(
                ErrorKind::NetDown,
                format!(
                    "process {pid}'s session did not answer within {} s (is it stopped?)",
                    HANDSHAKE_TIMEOUT.as_secs()
                ),
            ))
        }
        // The target ended (or died) between our connect and its answer.
        Err(e) if is_disconnect(e) => return Err(no_session(Some(e))),
        Err(e) => return Err(os_error("waiting for the target's answer", e)),
    };
    match verdict {
        Some(Verdict::Accepted) => Ok(sock),
        Some(Verdict::Refused) => Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "process {pid}'s session policy refuses sockets from this process (uid {}): \
                 run as the target's user or as root, or widen the target's Policy",
                rustix::process::geteuid().as_raw()
            ),
        )),
        Some(Verdict::Busy) => Err(Error::new(
            ErrorKind::NoBufferSpace,
            format!("process {pid}'s session has no room for another source connection"),
        )),
        None => Err(no_session(None)),
    }
}

/// Runs `call` again when a signal handler interrupted it. On a socket with a timeout,
/// as the handshake's, the kernel restarts no call after a handler, even under
/// SA_RESTART (signal(7)): without this, any signal a program handles could fail
/// `duplicate` with WSAENETDOWN.
fn restarting<T>(mut call: impl FnMut() -> Result<T, Errno>) -> Result<T, Errno> {
    loop {
        match call() {
            Err(Errno::INTR) => {}
            r => return r,
        }
    }
}

use std::os::fd::AsFd;

thread_local! {
    static TOKENS: RefCell<(u64, Vec<u64>)> = const { RefCell::new((0, Vec::new())) };
}

/// A fresh random token. Drawn from a per-thread pool refilled by `getrandom`, so the
/// hot path makes no system call for it.
pub(super) fn next_token() -> Result<u64> {
    TOKENS.with_borrow_mut(|(generation, pool)| {
        let now = FORK_GENERATION.load(Ordering::Relaxed);
        if *generation != now {
            pool.clear();
            *generation = now;
        }
        if let Some(t) = pool.pop() {
            return Ok(t);
        }
        let mut bytes = [0u8; 8 * 256];
        let mut filled = 0;
        while filled < bytes.len() {
            match rustix::rand::getrandom(
                &mut bytes[filled..],
                rustix::rand::GetRandomFlags::empty(),
            ) {
                Ok(n) => filled += n,
                Err(Errno::INTR) => {}
                Err(e) => return Err(os_error("drawing a random token", e)),
            }
        }
        let mut words = bytes.chunks_exact(8).map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            u64::from_le_bytes(w)
        });
        let first = words.next().unwrap_or_default();
        pool.extend(words);
        Ok(first)
    })
}

thread_local! {
    /// LINKS's guard from `before_fork` to `after_fork`, which run in the forking thread.
    static HELD: RefCell<Option<MutexGuard<'static, Links>>> = const { RefCell::new(None) };
}

pub(super) fn before_fork() {
    let guard = lock(&LINKS);
    HELD.with(|h| *h.borrow_mut() = Some(guard));
}

pub(super) fn after_fork(child: bool) {
    if child {
        FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
    }
    drop(HELD.with(|h| h.borrow_mut().take()));
}
