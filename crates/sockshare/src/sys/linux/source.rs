//! The source side: one connection per target process, kept for later duplicates, and the
//! push of a socket with its secret.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::event::PollFlags;
use rustix::io::Errno;
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

use super::wire::{self, Entry, Verdict};
use super::Info;
use super::{
    discover_endpoint, endpoint_address, lock, os_error, peer_alive, peer_cred, recv_with_sender,
    start_time, wait_ready, ENDPOINT_NAMES,
};
use crate::error::{Error, ErrorKind, Result};
use crate::layout::SocketKind;

/// How long a new connection may wait for the target's session to answer; a target that
/// does not (stopped, or too busy) gets a keeper instead (see `keeper`).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a push may wait for room in a full queue before reporting WSAENOBUFS.
const FULL_QUEUE_WAIT: Duration = Duration::from_millis(100);

/// Connections to targets' sessions, by target pid.
type Links = Option<HashMap<u32, Link>>;

/// A connection to a target's session, or the link to a keeper for a target that had none.
struct Link {
    fd: Arc<OwnedFd>,
    keeper: bool,
}
static LINKS: Mutex<Links> = Mutex::new(None);

pub(crate) fn duplicate(fd: BorrowedFd<'_>, target_pid: u32) -> Result<Info> {
    let kind = super::socket_kind(fd)?;
    let mut infos = Vec::with_capacity(1);
    push_chunk::<1>(&[fd], &[kind], target_pid, &mut infos)?;
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
) -> Result<Vec<Info>> {
    let mut infos = Vec::with_capacity(fds.len());
    for (fds, kinds) in fds.chunks(wire::MAX_FDS).zip(kinds.chunks(wire::MAX_FDS)) {
        push_chunk::<{ wire::MAX_FDS }>(fds, kinds, target_pid, &mut infos)?;
    }
    Ok(infos)
}

/// Pushes up to `N` (at most `wire::MAX_FDS`) sockets in one record and appends their
/// infos to `infos`, in order, once the record is in the target's queue. `N` sizes the
/// buffers: a single `duplicate` does not zero room for 253 entries on every handoff.
fn push_chunk<const N: usize>(
    fds: &[BorrowedFd<'_>],
    kinds: &[SocketKind],
    target_pid: u32,
    infos: &mut Vec<Info>,
) -> Result<()> {
    check_target(target_pid)?;
    let mut retried = false;
    let mut entries = [Entry { secret: 0, kind: 0 }; N];
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
            infos.push(Info::for_share(kind, target_pid, token));
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
    // The common single socket in a small buffer; a batch's room is zeroed only for a batch.
    let mut one = [0u8; wire::HEADER_LEN + wire::ENTRY_LEN];
    let mut many;
    let record: &mut [u8] = if entries.len() == 1 {
        &mut one
    } else {
        many = [0u8; wire::MAX_PUSH_LEN];
        &mut many
    };
    let len = wire::push(entries, record);
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

/// The connection to `pid`'s session (or to a keeper for it), and whether it was made by
/// this call.
fn link_to(pid: u32) -> Result<(Arc<OwnedFd>, bool)> {
    let cached = lock(&LINKS)
        .as_ref()
        .and_then(|m| m.get(&pid))
        .map(|l| (l.fd.clone(), l.keeper));
    if let Some((fd, keeper)) = cached {
        // A keeper's link turns readable once the target has arrived (or the keeper has
        // ended): then the session itself takes the next sockets.
        if !keeper || !wait_ready(&*fd, PollFlags::IN, Duration::ZERO).unwrap_or(true) {
            return Ok((fd, false));
        }
        forget_link(pid, &fd);
    }
    // Connect without the lock: the handshake waits for the target.
    let (fd, keeper) = match connect(pid)? {
        Some(session) => (session, false),
        None => {
            let (start, pidfd) = may_share(pid)?;
            (super::keeper::spawn(pid, start, pidfd)?, true)
        }
    };
    Ok((cache_link(pid, fd, keeper), true))
}

/// Keeps a new link to `pid`'s session (or keeper) for the next duplicates.
fn cache_link(pid: u32, fd: OwnedFd, keeper: bool) -> Arc<OwnedFd> {
    let fd = Arc::new(fd);
    let mut links = lock(&LINKS);
    let map = links.get_or_insert_with(HashMap::new);
    // Targets come and go: each new connection also closes those whose target has ended,
    // so a long-lived source does not collect dead ones.
    map.retain(|_, l| !wait_ready(&*l.fd, PollFlags::empty(), Duration::ZERO).unwrap_or(true));
    map.insert(
        pid,
        Link {
            fd: fd.clone(),
            keeper,
        },
    );
    fd
}

/// Whether this process may share with process `pid` before it has a session, by the
/// default rule (its user, or root): its start time and a pidfd naming it, or `Invalid`.
fn may_share(pid: u32) -> Result<(u64, OwnedFd)> {
    let gone = |e: Errno| no_such_process(pid).with_source(e.into());
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid as i32).ok_or_else(|| gone(Errno::SRCH))?,
        rustix::process::PidfdFlags::empty(),
    )
    .map_err(|e| match e {
        Errno::SRCH => gone(e),
        e => os_error("opening a pidfd for the target", e),
    })?;
    // Read with the pidfd open: if the process still lives after the reads, they were
    // of the process the pidfd names, not of one that reused its pid meanwhile.
    let start = start_time(Some(pid)).map_err(|e| no_such_process(pid).with_source(e))?;
    let uid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(2)?.parse::<u32>().ok()
        });
    // A process in another network namespace could never reach a keeper here (its names
    // are abstract, so per namespace), nor one in another pid namespace (it names its
    // keepers by its own pid, which is not the one this process knows): neither is a
    // process this one can share with (S16).
    let ns = |p: &str, kind: &str| {
        std::fs::metadata(format!("/proc/{p}/ns/{kind}"))
            .map(|m| m.ino())
            .ok()
    };
    let target = pid.to_string();
    let same_ns = ["net", "pid"]
        .iter()
        .all(|kind| ns(&target, kind) == ns("self", kind));
    if wait_ready(&pidfd, PollFlags::IN, Duration::ZERO).unwrap_or(true) || !same_ns {
        return Err(no_such_process(pid));
    }
    let me = rustix::process::geteuid().as_raw();
    match uid {
        Some(uid) if me == 0 || me == uid => Ok((start, pidfd)),
        Some(uid) => Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "process {pid} runs as uid {uid} and has no sockshare session: until it \
                 starts one, only its user or root may share with it (this process runs as \
                 uid {me})"
            ),
        )),
        None => Err(no_such_process(pid)),
    }
}

/// Checks that `target_pid` would accept a duplicate from this process without pushing
/// anything: its session admits this process, or it has none (or does not answer) and
/// this process may share with it (its user, or root). Leaves a session's connection
/// cached for the next `duplicate`; starts no keeper.
pub(crate) fn probe(target_pid: u32) -> Result<()> {
    check_target(target_pid)?;
    let cached = lock(&LINKS)
        .as_ref()
        .and_then(|m| m.get(&target_pid))
        .map(|l| l.fd.clone());
    // A cached connection may have outlived the target's session or keeper (it then
    // polls as readable or hung up, since a live session never writes after its answer).
    if let Some(fd) = cached {
        if !wait_ready(&*fd, PollFlags::IN, Duration::ZERO).unwrap_or(true) {
            return Ok(());
        }
        forget_link(target_pid, &fd);
    }
    match connect(target_pid)? {
        Some(session) => {
            cache_link(target_pid, session, false);
            Ok(())
        }
        // No keeper for a probe: only whether one could be started.
        None => may_share(target_pid).map(drop),
    }
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
        if map.get(&pid).is_some_and(|l| Arc::ptr_eq(&l.fd, link)) {
            map.remove(&pid);
        }
    }
}

/// Connects to `pid`'s session: to the first of its names whose endpoint is that live
/// process (see the module docs of `linux`), and returns the admitted connection;
/// `None` when the process has no session that answers in time.
fn connect(pid: u32) -> Result<Option<OwnedFd>> {
    // The start time names the process, not just its pid: a reused pid has another.
    let start = start_time(Some(pid)).map_err(|e| match e.raw_os_error() {
        // No such process (or one this process may not see).
        Some(libc::ENOENT | libc::ESRCH) | None => no_such_process(pid).with_source(e),
        Some(_) => os_error("reading the target's start time in /proc", e),
    })?;
    let mut busy = None;
    let indexed = (0..ENDPOINT_NAMES).map(|i| i.to_string());
    // Only when every indexed name failed: where squatters hold them all, the session
    // took a random name, which its own descriptors reveal.
    let discovered = std::iter::once(()).flat_map(|()| discover_endpoint(pid, start));
    for suffix in indexed.chain(discovered) {
        match attempt(pid, start, &suffix)? {
            Attempt::Admitted(sock) => return Ok(Some(sock)),
            Attempt::Silent => return Ok(None),
            Attempt::Absent => {}
            Attempt::Impostor => {}
            Attempt::Busy(e) => busy = Some(e),
        }
    }
    match busy {
        Some(e) => Err(Error::new(
            ErrorKind::NoBufferSpace,
            format!("process {pid}'s session has too many connections waiting"),
        )
        .with_source(e.into())),
        // Impostors were skipped: what they hold is not the target's.
        None => Ok(None),
    }
}

fn no_such_process(pid: u32) -> Error {
    Error::new(
        ErrorKind::Invalid,
        format!(
            "process {pid} cannot be reached from here: it does not exist, or runs in \
             another pid namespace (or, with a session, in another network namespace)"
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
    /// The target's session took the connection but did not answer in time (stopped,
    /// or busy).
    Silent,
}

fn attempt(pid: u32, start: u64, suffix: &str) -> Result<Attempt> {
    // Nonblocking: a listener that never accepts (a squatter's) must not hold the source.
    let sock = super::seqpacket_socket()
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
        Ok(None) => return Ok(Attempt::Silent),
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
            unsafe { super::raw::close(link.fd.as_raw_fd()) };
        }
        std::mem::forget(map);
    }
}
