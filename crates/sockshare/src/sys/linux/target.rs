//! The target side: the session endpoint, its serving thread, and the table of pending
//! sockets.
//!
//! Who touches what: the session's thread alone accepts and admits sources, under the
//! `door` lock, and takes `inner` (the table and the connections) only to add an admitted
//! connection or to drain. A redeem takes `inner` alone. So a flood of connections, which
//! the thread must refuse one by one, never holds up a redeem (S25).
//!
//! Capacity (S22): the table never holds more than the session's capacity. What does not
//! fit stays in the kernel's queues (sources soon get `WSAENOBUFS`). A redeem whose
//! socket waits there, behind others, *seeks* it: it peeks the queues record by record
//! without consuming them, takes its own socket's copy, and leaves a tombstone on the
//! connection, so that when the record is drained later that socket is closed instead of
//! being pending a second time. A redeem of an info that is used, foreign or forged finds
//! nothing and costs no descriptor.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SendFlags, SocketFlags, SocketType};

use super::batch::{self, Batch, Meta};
use super::pending::{Altered, Table};
use super::wire::{self, Verdict};
use super::{
    endpoint_address, keeper_address, lock, os_error, peer_cred, start_time, ENDPOINT_NAMES,
    KEEPER_NAMES,
};
use crate::error::{Error, ErrorKind, Result};
use crate::info::ProtocolInfo;
use crate::options::{Policy, SessionOptions, DEFAULT_CAPACITY};

/// How often a session out of descriptors retries receiving.
const RETRY: Duration = Duration::from_millis(20);
/// How long the session's thread lets pushes gather after draining.
const COALESCE: Duration = Duration::from_micros(200);
/// How recently a redeem must have run for the thread to leave draining to redeems.
const ACTIVE: Duration = Duration::from_millis(1);
/// Records a seek peeks at once: few, since each installs copies of its descriptors.
const SEEK_RECORDS: usize = 8;
/// The most tokens seeks remember (16 bytes each); past it they start over.
const SEEN_MAX: usize = 1 << 16;
/// How long a redeem that misses waits for keepers to forward what they hold.
const KEEPER_WAIT: Duration = Duration::from_millis(100);
/// Source connections one session serves at once; more get a "busy" answer.
const MAX_CONNECTIONS: usize = 1024;

/// How many source connections the session admits now: `MAX_CONNECTIONS`, but no more
/// than a quarter of the descriptor limit. Each connection holds a descriptor of this
/// process; without the bound, one admitted source opening idle connections could take
/// every descriptor, and no pushed socket could be received any more.
fn connection_limit() -> usize {
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    nofile.map_or(MAX_CONNECTIONS, |n| {
        (n / 4).clamp(1, MAX_CONNECTIONS as u64) as usize
    })
}

/// The default capacity: `DEFAULT_CAPACITY`, but no more than half the descriptor limit.
/// A table that may fill every descriptor leaves the process none to redeem with: it
/// would be stuck with sockets whose infos it cannot use (and the one it needs queued).
fn default_capacity() -> usize {
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    nofile.map_or(DEFAULT_CAPACITY, |n| {
        (n / 2).clamp(1, DEFAULT_CAPACITY as u64) as usize
    })
}

/// The uid that stands for "not mapped here" in this user namespace, if it is not a
/// mapped uid itself: the kernel shows a peer whose uid has no mapping in this namespace
/// as the overflow uid (user_namespaces(7)), which must never pass for the target's user
/// or any listed one (S23).
fn unmapped_uid() -> Option<u32> {
    let overflow: u32 = std::fs::read_to_string("/proc/sys/kernel/overflowuid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65534);
    let map = std::fs::read_to_string("/proc/self/uid_map").ok()?;
    let mapped = map.lines().any(|line| {
        let mut words = line.split_whitespace().map(|w| w.parse::<u64>().ok());
        match (words.next(), words.next(), words.next()) {
            (Some(Some(inside)), Some(Some(_)), Some(Some(count))) => {
                (inside..inside + count).contains(&u64::from(overflow))
            }
            _ => false,
        }
    });
    (!mapped).then_some(overflow)
}

const LISTENER_KEY: u64 = 0;
const WAKE_KEY: u64 = 1;
const CONN_BASE: u64 = 2;

/// This process's session, refcounted like WSAStartup/WSACleanup.
struct Registry {
    refs: usize,
    endpoint: Option<Arc<Endpoint>>,
    thread: Option<JoinHandle<()>>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    refs: 0,
    endpoint: None,
    thread: None,
});

struct Endpoint {
    pid: u32,
    /// This process's start time, which names its session and its keepers.
    start: u64,
    options: SessionOptions,
    /// See [`unmapped_uid`].
    unmapped_uid: Option<u32>,
    epoll: OwnedFd,
    wake: OwnedFd,
    stopping: AtomicBool,
    door: Mutex<Door>,
    inner: Mutex<Inner>,
}

/// What admitting sources needs; only the session's thread uses it while the session runs.
struct Door {
    listener: Option<OwnedFd>,
    /// A spare descriptor, closed to make room for accepting a source when the process is
    /// out of descriptors: the source then gets its info, and the socket waits in the
    /// kernel's queue until the target can receive it (S10), instead of timing out.
    reserve: Option<OwnedFd>,
    /// Accepting failed for want of descriptors; the thread retries on a timer.
    out_of_fds: bool,
}

/// One admitted source connection.
struct Conn {
    fd: OwnedFd,
    /// A connection this session made to a keeper (see `keeper`), not a source's.
    from_keeper: bool,
    /// Tokens of sockets a redeem took from this connection's queue before the session
    /// drained them (see the module docs): their records still hold them.
    tombstones: Vec<u64>,
}

struct Inner {
    /// Set when the session ended or this is a forked child's stale copy.
    closed: bool,
    /// Source connections; the slot index plus `CONN_BASE` is the epoll key.
    conns: Vec<Option<Conn>>,
    live_conns: usize,
    pending: Table<OwnedFd>,
    /// The most sockets `pending` holds.
    capacity: usize,
    /// Draining stopped because the process is out of descriptors; the thread retries.
    out_of_fds: bool,
    /// When this process last redeemed.
    last_redeem: Option<Instant>,
    /// Buffers for receiving pushes, many records per system call.
    batch: Batch,
    /// Buffers for seeking, one record at a time (made on first use).
    seek: Option<Batch>,
    /// Moves the first connection a drain visits (see `drain_rounds`).
    turn: usize,
    /// Tokens seeks have seen queued, by connection slot: where a seek looks first (a
    /// stale entry only costs a look in the wrong place).
    seen: HashMap<u64, usize>,
}

/// A handle on this process's session.
pub(crate) struct Session {
    endpoint: Arc<Endpoint>,
}

impl Session {
    /// Starts the session, or joins the running one. `options` of `None` joins whatever
    /// runs (or starts one with the defaults); `Some` must match a running session's.
    pub(crate) fn start(options: Option<&SessionOptions>) -> Result<Session> {
        super::install_fork_handlers();
        // Before the registry's lock: in a child made without fork handlers this closes
        // the inherited session, which takes that lock.
        let pid = super::current_pid();
        let mut reg = lock(&REGISTRY);
        if let Some(ep) = reg.endpoint.clone() {
            ep.options.check_join(options)?;
            reg.refs += 1;
            return Ok(Session { endpoint: ep });
        }
        let endpoint = Arc::new(Endpoint::bind(pid, options.cloned().unwrap_or_default())?);
        let serving = endpoint.clone();
        let thread = std::thread::Builder::new()
            .name("sockshare-session".into())
            .spawn(move || serve(&serving))
            .map_err(|e| {
                Error::new(
                    ErrorKind::SystemNotReady,
                    format!("could not start the session's thread: {e}"),
                )
                .with_source(e)
            })?;
        reg.endpoint = Some(endpoint.clone());
        reg.thread = Some(thread);
        reg.refs = 1;
        // Sockets shared with this process before it had a session wait in keepers.
        endpoint.pull_keepers();
        Ok(Session { endpoint })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.endpoint.pid
    }

    pub(crate) fn pending(&self) -> usize {
        lock(&self.endpoint.inner).pending.len()
    }

    pub(crate) fn options(&self) -> &SessionOptions {
        &self.endpoint.options
    }

    pub(crate) fn capacity(&self) -> usize {
        lock(&self.endpoint.inner).capacity
    }

    pub(crate) fn redeem(&self, info: &ProtocolInfo) -> Result<OwnedFd> {
        let ep = &*self.endpoint;
        let token = info.token();
        let kind = wire::pack_kind(info.kind()).ok_or_else(nothing_pending)?;
        let mut inner = lock(&ep.inner);
        if inner.closed {
            return Err(not_initialised());
        }
        inner.last_redeem = Some(Instant::now());
        if let Some(fd) = inner.take(token, kind)? {
            return Ok(fd);
        }
        // The socket was pushed before the info was made, so if it is genuine it is queued
        // on a connection the thread has not drained yet, or behind a full table.
        inner.drain_all(Some(token));
        if let Some(fd) = inner.take(token, kind)? {
            return Ok(fd);
        }
        if let Some(fd) = inner.seek(token, kind)? {
            return Ok(fd);
        }
        // Shared before this process had a session, or while it did not answer: a
        // keeper holds it. Ask the keepers, and give those connected a moment to forward.
        let connected = inner.conns.iter().flatten().any(|c| c.from_keeper);
        drop(inner);
        if ep.pull_keepers() || connected {
            let deadline = Instant::now() + KEEPER_WAIT;
            loop {
                let mut inner = lock(&ep.inner);
                inner.drain_all(Some(token));
                if let Some(fd) = inner.take(token, kind)? {
                    return Ok(fd);
                }
                if let Some(fd) = inner.seek(token, kind)? {
                    return Ok(fd);
                }
                let keepers = inner.conns.iter().flatten().any(|c| c.from_keeper);
                if !keepers || Instant::now() >= deadline {
                    break;
                }
                drop(inner);
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let inner = lock(&ep.inner);
        if inner.out_of_fds {
            return Err(Error::new(
                ErrorKind::TooManyDescriptors,
                "this process has no free descriptor to receive the socket; it stays \
                 pending: close a descriptor (or raise RLIMIT_NOFILE) and redeem again",
            ));
        }
        Err(nothing_pending())
    }
}

fn nothing_pending() -> Error {
    Error::new(
        ErrorKind::Invalid,
        "no socket is pending for this protocol info: it was already used, the session \
         it was made for has ended, or it was made in another session",
    )
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut reg = lock(&REGISTRY);
        // A handle the forked child inherited belongs to no live session here.
        if !reg
            .endpoint
            .as_ref()
            .is_some_and(|ep| Arc::ptr_eq(ep, &self.endpoint))
        {
            return;
        }
        reg.refs -= 1;
        if reg.refs > 0 {
            return;
        }
        // Keep the registry locked until the name is released, so a new session started
        // meanwhile cannot find it still bound.
        let thread = reg.thread.take();
        reg.endpoint = None;
        let ep = &self.endpoint;
        ep.stopping.store(true, Ordering::Release);
        let _ = rustix::io::write(&ep.wake, &1u64.to_ne_bytes());
        if let Some(t) = thread {
            let _ = t.join();
        }
        let mut door = lock(&ep.door);
        door.listener = None;
        door.reserve = None;
        let mut inner = lock(&ep.inner);
        inner.closed = true;
        inner.conns.clear();
        inner.pending.clear();
        drop(inner);
        drop(door);
        drop(reg);
    }
}

fn not_initialised() -> Error {
    Error::new(
        ErrorKind::NotInitialised,
        "the session has ended (or belongs to the parent of this forked process): \
         start one with Session::new()",
    )
}

impl Endpoint {
    fn bind(pid: u32, options: SessionOptions) -> Result<Endpoint> {
        let not_ready = |what: &str, e: Errno| {
            let mut err = os_error(what, e);
            if err.kind() == ErrorKind::NetDown {
                err = Error::new(ErrorKind::SystemNotReady, err.message().to_owned())
                    .with_source(e.into());
            }
            err
        };
        let start = start_time(None).map_err(|e| {
            Error::new(
                ErrorKind::SystemNotReady,
                "cannot read this process's start time in /proc/self/stat, which names \
                 the session (is /proc mounted?)",
            )
            .with_source(e)
        })?;
        let listener = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .map_err(|e| not_ready("creating the session endpoint", e))?;
        // The first free indexed name; where squatters hold them all, a random one, which
        // sources find from this process's descriptors (`discover_endpoint`).
        let mut random = [0u8; 8];
        let _ = rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty());
        let last = format!("r{:016x}", u64::from_le_bytes(random));
        let suffixes = (0..ENDPOINT_NAMES).map(|i| i.to_string()).chain([last]);
        let mut bound = Err(Errno::ADDRINUSE);
        for suffix in suffixes {
            let addr = endpoint_address(pid, start, &suffix)
                .map_err(|e| os_error("naming the session", e))?;
            bound = rustix::net::bind(&listener, &addr);
            if bound != Err(Errno::ADDRINUSE) {
                break;
            }
        }
        bound.map_err(|e| {
            if e == Errno::ADDRINUSE {
                Error::new(
                    ErrorKind::SystemNotReady,
                    format!(
                        "other processes hold every session name of this process \
                         (sockshare/v2/{pid}.{start}.*, in this network namespace)"
                    ),
                )
                .with_source(e.into())
            } else {
                not_ready("binding the session endpoint", e)
            }
        })?;
        rustix::net::listen(&listener, 128)
            .map_err(|e| not_ready("listening on the session endpoint", e))?;
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)
            .map_err(|e| not_ready("creating the session's epoll", e))?;
        let wake = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .map_err(|e| not_ready("creating the session's eventfd", e))?;
        let edge = epoll::EventFlags::IN | epoll::EventFlags::ET;
        epoll::add(
            &epoll,
            &listener,
            epoll::EventData::new_u64(LISTENER_KEY),
            edge,
        )
        .and_then(|()| epoll::add(&epoll, &wake, epoll::EventData::new_u64(WAKE_KEY), edge))
        .map_err(|e| not_ready("watching the session endpoint", e))?;
        let reserve = rustix::io::fcntl_dupfd_cloexec(&wake, 0).ok();
        let capacity = options.capacity.unwrap_or_else(default_capacity);
        Ok(Endpoint {
            pid,
            start,
            options,
            unmapped_uid: unmapped_uid(),
            epoll,
            wake,
            stopping: AtomicBool::new(false),
            door: Mutex::new(Door {
                listener: Some(listener),
                reserve,
                out_of_fds: false,
            }),
            inner: Mutex::new(Inner {
                closed: false,
                conns: Vec::new(),
                live_conns: 0,
                pending: Table::new(),
                capacity,
                out_of_fds: false,
                last_redeem: None,
                batch: Batch::new(batch::MAX_RECORDS, wire::MAX_PUSH_LEN, wire::MAX_FDS, false),
                seek: None,
                turn: 0,
                seen: HashMap::new(),
            }),
        })
    }

    /// Whether the thread must retry on a timer: descriptors ran out, so no event will
    /// say when accepting or receiving (or taking back the spare) can succeed.
    fn starved(&self) -> bool {
        let door = lock(&self.door);
        let door_starved = door.out_of_fds || (door.reserve.is_none() && door.listener.is_some());
        drop(door);
        door_starved || lock(&self.inner).out_of_fds
    }

    /// Accepts every waiting connection and answers it. Only admitted connections take
    /// `inner`, briefly.
    fn accept_all(&self) {
        loop {
            let mut door = lock(&self.door);
            let Some(listener) = &door.listener else {
                return;
            };
            let conn = match rustix::net::accept_with(
                listener,
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            ) {
                Ok(conn) => conn,
                Err(Errno::INTR | Errno::CONNABORTED) => continue,
                Err(Errno::MFILE | Errno::NFILE) if door.reserve.is_some() => {
                    door.reserve = None;
                    continue;
                }
                Err(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM) => {
                    door.out_of_fds = true;
                    return;
                }
                Err(_) => return,
            };
            door.out_of_fds = false;
            drop(door);
            self.admit(conn);
        }
    }

    /// The session's verdict on a source: its policy, on the kernel's credentials.
    fn verdict(&self, conn: BorrowedFd<'_>) -> Verdict {
        let target_uid = rustix::process::geteuid().as_raw();
        let admitted = peer_cred(conn).is_ok_and(|cred| {
            // A uid the kernel could not map into this namespace is nobody's (S23).
            let unmapped = Some(cred.uid) == self.unmapped_uid;
            (!unmapped || self.options.policy == Policy::AnyUser)
                && self.options.policy.allows(cred.uid, target_uid)
        });
        if !admitted {
            return Verdict::Refused;
        }
        // A stale count moves the limit by a connection at most; refused sources, above,
        // never take the lock.
        let live_conns = lock(&self.inner).live_conns;
        // Receiving peeks a batch at a time, stepping with SO_PEEK_OFF.
        if live_conns >= connection_limit() || batch::set_peek_off(conn, 0).is_err() {
            Verdict::Busy
        } else {
            Verdict::Accepted
        }
    }

    fn admit(&self, conn: OwnedFd) {
        let verdict = self.verdict(conn.as_fd());
        let answer = |conn: BorrowedFd<'_>| {
            rustix::net::send(
                conn,
                &wire::reply(verdict),
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            )
            .is_ok()
        };
        if verdict != Verdict::Accepted {
            answer(conn.as_fd());
            return; // dropping `conn` closes it and anything it sent
        }
        // Answered only once the connection is in the table's list: the source pushes as
        // soon as it reads the answer, and a redeem of what it pushed must find it there.
        self.add_conn(conn, false, answer);
    }

    /// Adds a connection whose records the session drains, once `ready` (given the
    /// connection, with `inner` locked) says yes.
    fn add_conn(
        &self,
        conn: OwnedFd,
        from_keeper: bool,
        ready: impl FnOnce(BorrowedFd<'_>) -> bool,
    ) {
        let mut inner = lock(&self.inner);
        let slot = match inner.conns.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                inner.conns.push(None);
                inner.conns.len() - 1
            }
        };
        let watched = epoll::add(
            &self.epoll,
            &conn,
            epoll::EventData::new_u64(CONN_BASE + slot as u64),
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP | epoll::EventFlags::ET,
        );
        if watched.is_err() || !ready(conn.as_fd()) {
            return;
        }
        inner.conns[slot] = Some(Conn {
            fd: conn,
            from_keeper,
            tombstones: Vec::new(),
        });
        inner.live_conns += 1;
        // Data may have arrived before the watch began: edge-triggered epoll would not
        // report it.
        inner.drain_rounds(1, |_| slot, None);
    }

    /// Connects to every keeper holding sockets for this process (see `keeper`) whose
    /// user the policy admits; the keepers then forward them on these connections.
    /// Returns whether there was any.
    fn pull_keepers(&self) -> bool {
        let mut any = false;
        for index in 0..KEEPER_NAMES {
            let Ok(addr) = keeper_address(self.pid, self.start, index) else {
                continue;
            };
            let Ok(conn) = rustix::net::socket_with(
                AddressFamily::UNIX,
                SocketType::SEQPACKET,
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
                None,
            ) else {
                return any;
            };
            if rustix::net::connect(&conn, &addr).is_err() {
                continue;
            }
            // The keeper is a source like any other: the policy decides on its user (first,
            // so a listener of a user it refuses costs no wait); and it answers only the
            // process it keeps sockets for (see `keeper`).
            if self.verdict(conn.as_fd()) != Verdict::Accepted {
                continue;
            }
            let mut answer = [0u8; wire::HEADER_LEN + 1];
            let answered = matches!(
                super::recv_with_sender(conn.as_fd(), &mut answer, KEEPER_WAIT),
                Ok(Some((n, _))) if wire::parse_reply(&answer[..n]) == Some(Verdict::Accepted)
            );
            if answered {
                self.add_conn(conn, true, |_| true);
                any = true;
            }
        }
        any
    }

    /// Takes the spare descriptor back once receiving no longer lacks descriptors:
    /// pending sockets come first, the spare only from what they leave.
    fn retake_reserve(&self) {
        let mut door = lock(&self.door);
        if door.reserve.is_none() {
            door.reserve = door
                .listener
                .as_ref()
                .and_then(|l| rustix::io::fcntl_dupfd_cloexec(l, 0).ok());
        }
    }
}

/// The session's thread: admits sources and drains their pushes into the table.
fn serve(ep: &Endpoint) {
    let mut events = Vec::with_capacity(64);
    // Connections with data this thread has not drained yet.
    let mut ready: Vec<usize> = Vec::with_capacity(64);
    loop {
        let starved = ep.starved();
        let timeout = if starved {
            Some(RETRY)
        } else if !ready.is_empty() {
            Some(ACTIVE)
        } else {
            None
        };
        let timeout = timeout.map(|t| rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: t.as_nanos() as _,
        });
        events.clear();
        match epoll::wait(
            &ep.epoll,
            rustix::buffer::spare_capacity(&mut events),
            timeout.as_ref(),
        ) {
            Ok(_) | Err(Errno::INTR) => {}
            // epoll_wait fails only on a bad descriptor or buffer, which this thread owns;
            // if it ever did, redeems still drain inline, and the thread keeps trying
            // rather than leave sources unanswered.
            Err(_) => std::thread::sleep(RETRY),
        }
        if ep.stopping.load(Ordering::Acquire) {
            return;
        }
        let mut accept = starved;
        for ev in &events {
            match ev.data.u64() {
                LISTENER_KEY => accept = true,
                WAKE_KEY => {}
                key => {
                    let slot = (key - CONN_BASE) as usize;
                    if !ready.contains(&slot) {
                        ready.push(slot);
                    }
                }
            }
        }
        if accept {
            ep.accept_all();
        }
        let mut inner = lock(&ep.inner);
        // While this process redeems, its redeems drain inline on a miss: the thread
        // stays out of their way (it would take a core and the table's lock from them)
        // and looks again once they pause. Otherwise it drains, then lets the next pushes
        // gather a while. Either way it then sleeps: every push is a new edge of epoll,
        // and waking for each would cost a wake-up and a turn at the lock per push.
        let deferred = !ready.is_empty() && inner.redeemed_recently();
        let drain = !ready.is_empty() && !deferred;
        if starved {
            inner.drain_all(None);
        } else if drain {
            inner.drain_rounds(ready.len(), |k| ready[k], None);
        }
        let retake = starved && !inner.out_of_fds;
        drop(inner);
        if retake {
            ep.retake_reserve();
        }
        if starved || drain {
            ready.clear();
        }
        if drain {
            std::thread::sleep(COALESCE);
        } else if deferred {
            std::thread::sleep(ACTIVE);
        }
    }
}

impl Inner {
    fn take(&mut self, token: u64, kind: u32) -> Result<Option<OwnedFd>> {
        self.pending.take(token, kind).map_err(|Altered| altered())
    }

    /// Drains every connection, up to capacity; for a redeem (`until`), stops once that
    /// token has arrived.
    fn drain_all(&mut self, until: Option<u64>) {
        self.out_of_fds = false;
        let n = self.conns.len();
        self.drain_rounds(n, |k| k, until);
    }

    /// Drains the `count` connections `slot_at(0..count)` names, a batch from each in
    /// turn, until none has more, the table is full, descriptors run out, or `until` has
    /// arrived; returns whether it did. Turns, and a first turn that moves on each call,
    /// share the table among sources, so the socket a target will ask for next (the
    /// oldest of each source, for a program that takes them in order) is in the table
    /// rather than behind others in a queue, where only a seek finds it.
    fn drain_rounds(
        &mut self,
        count: usize,
        slot_at: impl Fn(usize) -> usize,
        until: Option<u64>,
    ) -> bool {
        if count == 0 {
            return false;
        }
        let first = self.turn % count;
        self.turn = self.turn.wrapping_add(1);
        loop {
            let mut more = false;
            for k in 0..count {
                match self.drain(slot_at((first + k) % count), until) {
                    Visit::Found => return true,
                    Visit::More => more = true,
                    Visit::Idle => {}
                }
                if self.out_of_fds {
                    return false;
                }
            }
            if !more {
                return false;
            }
        }
    }

    fn redeemed_recently(&self) -> bool {
        self.last_redeem.is_some_and(|t| t.elapsed() < ACTIVE)
    }

    /// Moves one batch of the records queued on connection `slot` into the table, up to
    /// what fits in the capacity (the rest waits in the queue), and says what it found.
    fn drain(&mut self, slot: usize, until: Option<u64>) -> Visit {
        // Out of its slot while draining, so the table can be filled meanwhile.
        let Some(mut conn) = self.conns.get_mut(slot).and_then(Option::take) else {
            return Visit::Idle;
        };
        let (keep, visit) = self.drain_conn(&mut conn, until);
        if keep {
            self.conns[slot] = Some(conn);
        } else {
            self.live_conns -= 1; // dropping `conn` closes it and whatever it still queues
        }
        visit
    }

    /// `drain` on one connection: returns whether to keep the connection, and what the
    /// batch found.
    fn drain_conn(&mut self, conn: &mut Conn, until: Option<u64>) -> (bool, Visit) {
        let mut found = false;
        {
            // A full table peeks nothing (the copies would only be closed again), unless
            // records a redeem took sockets from wait at the head: taking those adds
            // nothing to the table, and frees the source's queue.
            if self.pending.len() >= self.capacity && conn.tombstones.is_empty() {
                return (true, Visit::Idle);
            }
            let records = match self.batch.peek(conn.fd.as_fd(), false) {
                Ok(records) if records.is_empty() => return (true, Visit::Idle),
                Ok(records) => records,
                Err(_) => return (false, Visit::Idle),
            };
            let peeked = records.len();
            let (mut taken, mut full) = (0, false);
            for (i, meta) in records.into_iter().enumerate() {
                // A record longer than any push was peeked in part, and the peek offset
                // moved past that part only: what the batch peeked after it is the rest
                // of the same record. So the batch ends there; first in it, the record is
                // dropped whole (a consume takes a record whole).
                if meta.len > wire::MAX_PUSH_LEN {
                    taken += usize::from(i == 0);
                    break;
                }
                let record = match push_record(self.batch.record(&meta), meta) {
                    Record::Sockets(sockets) => sockets,
                    // A record that breaks the protocol is dropped (its descriptors close
                    // with it); the source's records after it are still its own.
                    Record::Broken => {
                        taken += 1;
                        continue;
                    }
                    // Copies of the records after it close with the iterator; they stay
                    // queued and the next peek starts over at this one.
                    Record::NoRoom => {
                        self.out_of_fds |= i == 0;
                        break;
                    }
                };
                let arriving = record
                    .iter()
                    .filter(|(token, _, _)| !conn.tombstones.contains(token))
                    .count();
                if self.pending.len() + arriving > self.capacity {
                    full = true;
                    break;
                }
                found |= self.insert(conn, record, until);
                taken += 1;
            }
            if batch::consume(conn.fd.as_fd(), taken, peeked).is_err() {
                return (false, if found { Visit::Found } else { Visit::Idle });
            }
            let visit = if found {
                Visit::Found
            } else if self.out_of_fds || full {
                Visit::Idle
            } else {
                Visit::More
            };
            (true, visit)
        }
    }

    /// Puts received sockets in the table (or closes those a redeem took already);
    /// returns whether `until` was among them.
    fn insert(&mut self, conn: &mut Conn, sockets: Vec<Pushed>, until: Option<u64>) -> bool {
        let mut found = false;
        for (token, kind, fd) in sockets {
            if let Some(i) = conn.tombstones.iter().position(|&t| t == token) {
                conn.tombstones.swap_remove(i);
                continue; // `fd` closes: the redeem holds its own copy
            }
            found |= Some(token) == until;
            if !self.seen.is_empty() {
                self.seen.remove(&token);
            }
            // A socket whose token is live already is closed here (see `Table::insert`).
            drop(self.pending.insert(token, kind, fd));
        }
        found
    }

    /// Looks for `token` in the connections' queues without consuming anything, and
    /// takes a copy of its socket (see the module docs).
    fn seek(&mut self, token: u64, kind: u32) -> Result<Option<OwnedFd>> {
        if self
            .conns
            .iter()
            .flatten()
            .any(|c| c.tombstones.contains(&token))
        {
            return Ok(None); // taken already by an earlier seek
        }
        let batch = self.seek.get_or_insert_with(|| {
            Batch::new(SEEK_RECORDS, wire::MAX_PUSH_LEN, wire::MAX_FDS, false)
        });
        if self.seen.len() > SEEN_MAX {
            self.seen.clear();
        }
        // Where an earlier seek saw the token first, then every connection.
        let hint = self.seen.get(&token).copied();
        let slots = hint
            .into_iter()
            .chain((0..self.conns.len()).filter(|&slot| Some(slot) != hint));
        for slot in slots {
            let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            let found = seek_conn(batch, conn.fd.as_fd(), (token, kind), slot, &mut self.seen);
            // Back to the head, where the drains expect the peek offset.
            let _ = batch::set_peek_off(conn.fd.as_fd(), 0);
            match found {
                Sought::Found(fd) => {
                    self.seen.remove(&token);
                    conn.tombstones.push(token);
                    return Ok(Some(fd));
                }
                Sought::Altered => return Err(altered()),
                Sought::NoRoom => self.out_of_fds = true,
                Sought::NotHere => {}
            }
        }
        Ok(None)
    }
}

/// What a batch from one connection's queue found.
enum Visit {
    /// The token a redeem looks for arrived.
    Found,
    /// A batch was taken; more may be queued.
    More,
    /// Nothing more to take now: the queue is empty or dropped, the table is full, or
    /// descriptors ran out.
    Idle,
}

fn altered() -> Error {
    Error::new(
        ErrorKind::Invalid,
        "this protocol info was altered after duplicate (its socket kind is not the one the \
         source pushed)",
    )
}

/// What seeking one connection's queue found.
enum Sought {
    Found(OwnedFd),
    /// The token is there, for a socket of another kind.
    Altered,
    /// The token is there, but its descriptor did not fit in this process's table.
    NoRoom,
    NotHere,
}

/// Peeks through one connection's queue for `sought` (token and packed kind), a few
/// records at a time, noting in `seen` where every token it passes is (`slot`).
fn seek_conn(
    batch: &mut Batch,
    conn: BorrowedFd<'_>,
    (token, kind): (u64, u32),
    slot: usize,
    seen: &mut HashMap<u64, usize>,
) -> Sought {
    loop {
        let records = match batch.peek(conn, false) {
            Ok(records) if !records.is_empty() => records,
            _ => return Sought::NotHere,
        };
        // Every token of the batch is noted, those after the one sought included: a
        // program that takes a source's sockets in order asks for them next, and its
        // next seeks then start on this connection.
        let mut sought = Sought::NotHere;
        for meta in records {
            let Some(entries) = wire::parse_push(batch.record(&meta)) else {
                continue;
            };
            let complete = meta.fds.len() == entries.len();
            let mut here = None;
            for (i, entry) in entries.enumerate() {
                let t = wire::token_of(entry.secret);
                seen.insert(t, slot);
                if t == token && here.is_none() {
                    here = Some((i, entry.kind));
                }
            }
            if let (Some((i, pushed_kind)), Sought::NotHere) = (here, &sought) {
                sought = if pushed_kind != kind {
                    Sought::Altered
                } else if !complete {
                    Sought::NoRoom
                } else {
                    // The other copies close with `meta`; their records stay queued.
                    meta.fds
                        .into_iter()
                        .nth(i)
                        .map_or(Sought::NotHere, Sought::Found)
                };
            }
        }
        if !matches!(sought, Sought::NotHere) {
            return sought;
        }
    }
}

/// A socket received in a push: its token, packed kind and descriptor.
type Pushed = (u64, u32, OwnedFd);

/// What one peeked push record turned out to be.
enum Record {
    Sockets(Vec<Pushed>),
    /// Its descriptors did not all fit in this process's table: leave it queued.
    NoRoom,
    /// A record that breaks the protocol: it is consumed, and its descriptors closed.
    Broken,
}

fn push_record(bytes: &[u8], meta: Meta) -> Record {
    let Some(entries) = wire::parse_push(bytes) else {
        return Record::Broken;
    };
    if meta.fds.len() < entries.len() && meta.truncated {
        return Record::NoRoom;
    }
    if meta.fds.len() != entries.len() {
        return Record::Broken;
    }
    Record::Sockets(
        entries
            .zip(meta.fds)
            .map(|(e, fd)| (wire::token_of(e.secret), e.kind, fd))
            .collect(),
    )
}

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

pub(super) fn before_fork() {
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

pub(super) fn after_fork(child: bool) {
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
pub(super) fn abandon_inherited() {
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
        unsafe { libc::close(fd.as_raw_fd()) };
    }
    // The session belongs to the parent: leak the child's copy (its descriptors are
    // closed above, and the leak keeps them from being closed twice), thread included.
    std::mem::forget(registry.endpoint.take());
    std::mem::forget(registry.thread.take());
    registry.refs = 0;
}
