//! The source side: one connection per target process, kept for later duplicates, and the
//! push of a socket with its secret.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::event::PollFlags;
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use super::wire::{self, Entry, Verdict};
use super::{
    discover_endpoint, endpoint_address, lock, os_error, peer_alive, peer_cred, recv_with_sender,
    start_time, wait_ready, ENDPOINT_NAMES,
};
use crate::error::{Error, ErrorKind, Result};
use crate::info::{ProtocolInfo, SocketKind};

/// How long a new connection may wait for the target's session to answer.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a push may wait for room in a full queue before reporting WSAENOBUFS.
const FULL_QUEUE_WAIT: Duration = Duration::from_millis(100);

/// Connections to targets' sessions, by target pid.
type Links = Option<HashMap<u32, Arc<OwnedFd>>>;
static LINKS: Mutex<Links> = Mutex::new(None);

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
    let mut entries = [Entry { secret: 0, kind: 0 }; wire::MAX_FDS];
    for (entry, &kind) in entries.iter_mut().zip(kinds) {
        entry.kind = wire::pack_kind(kind).ok_or_else(|| {
            Error::new(
                ErrorKind::Invalid,
                format!("sockshare cannot share a socket of this kind ({kind:?})"),
            )
        })?;
    }
    let before = infos.len();
    loop {
        let (link, fresh) = link_to(target_pid)?;
        infos.truncate(before);
        for (entry, &kind) in entries.iter_mut().zip(kinds) {
            entry.secret = next_secret()?;
            let token = wire::token_of(entry.secret);
            infos.push(ProtocolInfo::for_share(kind, target_pid, token));
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

/// Refuses what cannot be a process id, and readies the fork handling a source needs
/// before its first connection.
fn check_target(target_pid: u32) -> Result<()> {
    if target_pid == 0 || target_pid > i32::MAX as u32 {
        return Err(Error::new(
            ErrorKind::Invalid,
            format!("{target_pid} is not a process id"),
        ));
    }
    super::install_fork_handlers();
    // In a child made without fork handlers, this drops the parent's connections before
    // one of them is picked up below.
    super::current_pid();
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

/// Connects to `pid`'s session: to the first of its names whose endpoint is that live
/// process (see the module docs of `linux`), and returns the admitted connection.
fn connect(pid: u32) -> Result<OwnedFd> {
    // The start time names the process, not just its pid: a reused pid has another.
    let start = start_time(Some(pid)).map_err(|e| match e.raw_os_error() {
        // No such process (or one this process may not see).
        Some(libc::ENOENT | libc::ESRCH) | None => no_session(pid, false).with_source(e),
        Some(_) => os_error("reading the target's start time in /proc", e),
    })?;
    let (mut impostor, mut busy) = (false, None);
    let indexed = (0..ENDPOINT_NAMES).map(|i| i.to_string());
    // Only when every indexed name failed: where squatters hold them all, the session
    // took a random name, which its own descriptors reveal.
    let discovered = std::iter::once(()).flat_map(|()| discover_endpoint(pid, start));
    for suffix in indexed.chain(discovered) {
        match attempt(pid, start, &suffix)? {
            Attempt::Admitted(sock) => return Ok(sock),
            Attempt::Absent => {}
            Attempt::Impostor => impostor = true,
            Attempt::Busy(e) => busy = Some(e),
        }
    }
    Err(match busy {
        Some(e) => Error::new(
            ErrorKind::NoBufferSpace,
            format!("process {pid}'s session has too many connections waiting"),
        )
        .with_source(e.into()),
        None => no_session(pid, impostor),
    })
}

fn no_session(pid: u32, impostor: bool) -> Error {
    let squatted = if impostor {
        " (a name its session would use is held by another process, which was refused)"
    } else {
        ""
    };
    Error::new(
        ErrorKind::Invalid,
        format!(
            "process {pid} has no sockshare session reachable from here: it does not \
             exist, has not started a Session (WSAStartup), or runs in another network \
             or pid namespace{squatted}"
        ),
    )
}

/// What one of a target's names led to.
enum Attempt {
    Admitted(OwnedFd),
    /// Nobody listens there.
    Absent,
    /// Somebody does, but not the live process the source asked for.
    Impostor,
    /// The listener's queue of connections is full.
    Busy(Errno),
}

fn attempt(pid: u32, start: u64, suffix: &str) -> Result<Attempt> {
    // Nonblocking: a listener that never accepts (a squatter's) must not hold the source.
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| os_error("creating a socket to reach the target", e))?;
    // Before connecting, so the session's answer carries its sender's credentials.
    rustix::net::sockopt::set_socket_passcred(&sock, true)
        .map_err(|e| os_error("asking for the target's credentials", e))?;
    let addr =
        endpoint_address(pid, start, suffix).map_err(|e| os_error("naming the target", e))?;
    match rustix::net::connect(&sock, &addr) {
        Ok(()) => {}
        Err(Errno::CONNREFUSED | Errno::NOENT) => return Ok(Attempt::Absent),
        Err(e @ Errno::AGAIN) => return Ok(Attempt::Busy(e)),
        Err(e) => return Err(os_error("connecting to the target's session", e)),
    }
    // The listener was made by pid P as this process numbers pids (a listener in another
    // pid namespace shows up as another pid, or 0), and its maker still lives.
    let cred =
        peer_cred(sock.as_fd()).map_err(|e| os_error("reading the target's credentials", e))?;
    if cred.pid as u32 != pid || peer_alive(sock.as_fd()) == Some(false) {
        return Ok(Attempt::Impostor);
    }
    let mut buf = [0u8; wire::HEADER_LEN + 1];
    let (got, sender) = match recv_with_sender(sock.as_fd(), &mut buf, HANDSHAKE_TIMEOUT) {
        Ok(Some(answer)) => answer,
        Ok(None) => {
            return Err(Error::new(
                ErrorKind::NetDown,
                format!(
                    "process {pid}'s session did not answer within {} s (is it stopped?)",
                    HANDSHAKE_TIMEOUT.as_secs()
                ),
            ))
        }
        // The target ended (or died) between our connect and its answer.
        Err(e) if is_disconnect(e) => return Ok(Attempt::Absent),
        Err(e) => return Err(os_error("waiting for the target's answer", e)),
    };
    // Whoever answered holds the connection, and receives what is pushed on it: it must
    // be P itself, not a process P (or a dead P) handed the listener to.
    if sender != Some(pid) {
        return Ok(Attempt::Impostor);
    }
    match wire::parse_reply(&buf[..got]) {
        Some(Verdict::Accepted) => Ok(Attempt::Admitted(sock)),
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
        None => Ok(Attempt::Impostor),
    }
}

thread_local! {
    /// Random secrets drawn ahead, with the pid of the process that drew them.
    static SECRETS: RefCell<(u32, Vec<u64>)> = const { RefCell::new((0, Vec::new())) };
}

/// A fresh random secret. Drawn from a per-thread pool refilled by `getrandom`, so the
/// hot path makes no system call for it. The pool is for the process that drew it: a
/// forked child (with or without fork handlers) draws its own, never its parent's.
pub(super) fn next_secret() -> Result<u64> {
    let me = super::current_pid();
    SECRETS.with_borrow_mut(|(owner, pool)| {
        if *owner != me {
            pool.clear();
            *owner = me;
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
                Err(e) => return Err(os_error("drawing a random secret", e)),
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
    let held = HELD.with(|h| h.borrow_mut().take());
    if let (true, Some(mut links)) = (child, held) {
        close_inherited(&mut links);
    }
}

/// In a child the fork handlers did not run in: closes the parent's connections, unless
/// a thread the child does not have held them at the fork.
pub(super) fn forget_inherited() {
    if let Ok(mut links) = LINKS.try_lock() {
        close_inherited(&mut links);
    }
}

/// Closes a forked child's copies of its parent's connections (they carry the parent's
/// credentials; the child makes its own), without freeing memory: only
/// async-signal-safe work in a child.
fn close_inherited(links: &mut Links) {
    if let Some(map) = links.take() {
        for link in map.values() {
            // SAFETY: the child's copy of a descriptor the map owns; the map is leaked
            // below, so no OwnedFd closes the number again.
            unsafe { libc::close(link.as_raw_fd()) };
        }
        std::mem::forget(map);
    }
}
