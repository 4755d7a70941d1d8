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
use rustix::net::{SendFlags, SocketFlags};

use super::batch::{self, Batch, Meta};
use super::pending::{Altered, Table};
use super::wire::{self, Verdict};
use super::Info;
use super::{
    endpoint_address, keeper_address, lock, os_error, peer_cred, seqpacket_socket, start_time,
    ENDPOINT_NAMES, KEEPER_NAMES,
};
use crate::error::{Error, ErrorKind, Result};
use crate::options::{Policy, SessionOptions, DEFAULT_CAPACITY};

mod drain;
mod endpoint;
mod fork;

use endpoint::serve;
pub(super) use fork::{abandon_inherited, after_fork, before_fork};

/// How often a session out of descriptors retries receiving.
const RETRY: Duration = Duration::from_millis(20);
/// How long the session's thread lets pushes gather after draining.
const COALESCE: Duration = Duration::from_micros(200);
/// How recently a redeem must have run for the thread to leave draining to redeems.
const ACTIVE: Duration = Duration::from_millis(1);
/// How often the thread, once it has left draining to redeems and stopped watching the
/// connections, looks whether redeems still run.
const QUIET: Duration = Duration::from_millis(10);
/// What the thread watches on a source connection: records, and its end.
const CONN_EVENTS: epoll::EventFlags = epoll::EventFlags::IN
    .union(epoll::EventFlags::RDHUP)
    .union(epoll::EventFlags::ET);
/// Records a seek peeks at once: few, since each installs copies of its descriptors.
const SEEK_RECORDS: usize = 8;
/// The most tokens seeks remember (16 bytes each); past it they start over.
const SEEN_MAX: usize = 1 << 16;
/// How long a redeem that misses waits for keepers to forward what they hold.
const KEEPER_WAIT: Duration = Duration::from_millis(100);
/// How long the session waits for a keeper that took its connection to answer. Longer
/// than a forward: a keeper for this process exists (it holds the name), and one just
/// forked may not have run yet on a loaded machine; giving up would fail a redeem of a
/// socket that is there.
const KEEPER_ANSWER: Duration = Duration::from_secs(1);
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

    pub(crate) fn redeem(&self, info: &Info) -> Result<OwnedFd> {
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
        if let Some(fd) = inner.find_queued(token, kind)? {
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
                if let Some(fd) = inner.find_queued(token, kind)? {
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
