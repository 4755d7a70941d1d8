//! The target side: the session endpoint, its serving thread, and the table of pending
//! sockets.

use std::cell::RefCell;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SendFlags, SocketFlags, SocketType};

use super::batch::{self, Batch, Meta};
use super::pending::{Altered, Table};
use super::wire::{self, Verdict};
use super::{endpoint_address, lock, os_error, peer_cred};
use crate::error::{Error, ErrorKind, Result};
use crate::info::ProtocolInfo;
use crate::session::{SessionOptions, DEFAULT_CAPACITY};

/// How often a session out of descriptors retries receiving.
const RETRY: Duration = Duration::from_millis(20);
/// How long the session's thread lets pushes gather after draining.
const COALESCE: Duration = Duration::from_micros(200);
/// How recently a redeem must have run for the thread to leave draining to redeems.
const ACTIVE: Duration = Duration::from_millis(1);
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
    options: SessionOptions,
    epoll: OwnedFd,
    wake: OwnedFd,
    stopping: AtomicBool,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Set when the session ended or this is a forked child's stale copy.
    closed: bool,
    listener: Option<OwnedFd>,
    /// A spare descriptor, closed to make room for accepting a source when the process is
    /// out of descriptors: the source then gets its info, and the socket waits in the
    /// kernel's queue until the target can receive it (S10), instead of timing out.
    reserve: Option<OwnedFd>,
    /// Source connections; the slot index plus `CONN_BASE` is the epoll key.
    conns: Vec<Option<OwnedFd>>,
    live_conns: usize,
    pending: Table<OwnedFd>,
    /// The most sockets `pending` takes in before sources are held back.
    capacity: usize,
    /// Draining stopped because the process is out of descriptors; the thread retries.
    out_of_fds: bool,
    /// When this process last redeemed.
    last_redeem: Option<Instant>,
    /// Buffers for receiving pushes, many records per system call.
    batch: Batch,
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
        let mut reg = lock(&REGISTRY);
        if let Some(ep) = reg.endpoint.clone() {
            ep.options.check_join(options)?;
            reg.refs += 1;
            return Ok(Session { endpoint: ep });
        }
        let endpoint = Arc::new(Endpoint::bind(options.cloned().unwrap_or_default())?);
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
        // The calling process, not the session's: in a forked child they differ.
        let me = super::current_pid();
        crate::session::check_made_for(info.target_pid(), me)?;
        let mut inner = lock(&ep.inner);
        if inner.closed {
            return Err(not_initialised());
        }
        inner.last_redeem = Some(Instant::now());
        if let Some(fd) = inner.take(info)? {
            return Ok(fd);
        }
        // The socket was pushed before the info was made, so if it is genuine it is queued
        // on a connection the thread has not drained yet.
        inner.drain_all(Some(info.token()));
        if let Some(fd) = inner.take(info)? {
            return Ok(fd);
        }
        if inner.out_of_fds {
            return Err(Error::new(
                ErrorKind::TooManyDescriptors,
                "this process has no free descriptor to receive the socket; it stays \
                 pending: close a descriptor (or raise RLIMIT_NOFILE) and redeem again",
            ));
        }
        Err(Error::new(
            ErrorKind::Invalid,
            "no socket is pending for this protocol info: it was already used, the session \
             it was made for has ended, or it was made in another session",
        ))
    }
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
        let mut inner = lock(&ep.inner);
        inner.closed = true;
        inner.listener = None;
        inner.reserve = None;
        inner.conns.clear();
        inner.pending.clear();
        drop(inner);
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
    fn bind(options: SessionOptions) -> Result<Endpoint> {
        let pid = super::current_pid();
        let not_ready = |what: &str, e: Errno| {
            let mut err = os_error(what, e);
            if err.kind() == ErrorKind::NetDown {
                err = Error::new(ErrorKind::SystemNotReady, err.message().to_owned())
                    .with_source(e.into());
            }
            err
        };
        let listener = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .map_err(|e| not_ready("creating the session endpoint", e))?;
        let addr = endpoint_address(pid).map_err(|e| os_error("naming the session", e))?;
        rustix::net::bind(&listener, &addr).map_err(|e| {
            if e == Errno::ADDRINUSE {
                Error::new(
                    ErrorKind::SystemNotReady,
                    format!(
                        "another process holds the session name of pid {pid} \
                         (sockshare/v1/{pid} in this network namespace)"
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
            options,
            epoll,
            wake,
            stopping: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                closed: false,
                listener: Some(listener),
                reserve,
                conns: Vec::new(),
                live_conns: 0,
                pending: Table::new(),
                capacity,
                out_of_fds: false,
                last_redeem: None,
                batch: Batch::new(batch::MAX_RECORDS, wire::MAX_PUSH_LEN, wire::MAX_FDS, false),
            }),
        })
    }
}

/// The session's thread: admits sources and drains their pushes into the table.
fn serve(ep: &Endpoint) {
    let mut events = Vec::with_capacity(64);
    // Connections with data this thread has not drained yet.
    let mut ready: Vec<usize> = Vec::with_capacity(64);
    loop {
        let starved = lock(&ep.inner).starved();
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
            Err(_) => return,
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
        let mut inner = lock(&ep.inner);
        if accept {
            inner.accept_all(ep);
        }
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
            for &slot in &ready {
                inner.drain(slot, None);
            }
        }
        drop(inner);
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
    fn take(&mut self, info: &ProtocolInfo) -> Result<Option<OwnedFd>> {
        self.pending
            .take(info.token(), info.tag())
            .map_err(|Altered| {
                Error::new(
                    ErrorKind::Invalid,
                    "this protocol info was altered after duplicate (its fields do not match \
                 the ones the source sent)",
                )
            })
    }

    fn accept_all(&mut self, ep: &Endpoint) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match rustix::net::accept_with(listener, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK) {
                Ok(conn) => self.admit(ep, conn),
                Err(Errno::INTR | Errno::CONNABORTED) => {}
                Err(Errno::MFILE | Errno::NFILE) if self.reserve.is_some() => {
                    self.reserve = None;
                }
                Err(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM) => {
                    self.out_of_fds = true;
                    return;
                }
                Err(_) => return,
            }
        }
    }

    fn admit(&mut self, ep: &Endpoint, conn: OwnedFd) {
        let target_uid = rustix::process::geteuid().as_raw();
        let verdict = match peer_cred(conn.as_fd()) {
            Ok(cred) if ep.options.policy.allows(cred.uid, target_uid) => {
                // Receiving peeks a batch at a time, stepping with SO_PEEK_OFF.
                if self.live_conns >= connection_limit()
                    || batch::set_peek_off(conn.as_fd(), 0).is_err()
                {
                    Verdict::Busy
                } else {
                    Verdict::Accepted
                }
            }
            _ => Verdict::Refused,
        };
        let answered = rustix::net::send(
            &conn,
            &wire::reply(verdict),
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        )
        .is_ok();
        if verdict != Verdict::Accepted || !answered {
            return; // dropping `conn` closes it and anything it sent
        }
        let slot = match self.conns.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        let watched = epoll::add(
            &ep.epoll,
            &conn,
            epoll::EventData::new_u64(CONN_BASE + slot as u64),
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP | epoll::EventFlags::ET,
        );
        if watched.is_ok() {
            self.conns[slot] = Some(conn);
            self.live_conns += 1;
            // Data may have arrived before the watch began: edge-triggered epoll would not
            // report it.
            self.drain(slot, None);
        }
    }

    /// Drains every connection up to capacity; or, for a redeem (`until`), takes a batch
    /// from each connection in turn, past capacity, until that token has arrived. A
    /// redeem's socket is near the head of its source's queue, so it is found without
    /// filling the table with other sources' sockets, and with no system call to find the
    /// queues empty. Whatever it leaves is drained by the thread, which an edge of epoll
    /// woke for it.
    fn drain_all(&mut self, until: Option<u64>) {
        self.out_of_fds = false;
        loop {
            let mut more = false;
            for slot in 0..self.conns.len() {
                match self.drain(slot, until) {
                    Visit::Found => return,
                    Visit::More => more = true,
                    Visit::Idle => {}
                }
                if self.out_of_fds {
                    break;
                }
            }
            if !more || self.out_of_fds {
                break;
            }
        }
        // Pending sockets come first: the spare is taken back only from what they leave.
        if !self.out_of_fds && self.reserve.is_none() {
            self.reserve = self
                .listener
                .as_ref()
                .and_then(|l| rustix::io::fcntl_dupfd_cloexec(l, 0).ok());
        }
    }

    fn redeemed_recently(&self) -> bool {
        self.last_redeem.is_some_and(|t| t.elapsed() < ACTIVE)
    }

    /// Whether the thread must retry on a timer: descriptors ran out, so no event will
    /// say when receiving (or taking back the spare) can succeed.
    fn starved(&self) -> bool {
        self.out_of_fds || (self.reserve.is_none() && self.listener.is_some())
    }

    /// Moves the sockets queued on connection `slot` into the table, a batch of records
    /// per peek: without `until`, until the queue is empty, the table is at capacity or
    /// descriptors run out; with it, one batch, past capacity.
    fn drain(&mut self, slot: usize, until: Option<u64>) -> Visit {
        // Out of its slot while draining, so the table can be filled meanwhile.
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::take) else {
            return Visit::Idle;
        };
        let (keep, visit) = self.drain_conn(conn.as_fd(), until);
        if keep {
            self.conns[slot] = Some(conn);
        } else {
            self.live_conns -= 1; // dropping `conn` closes it and whatever it still queues
        }
        visit
    }

    /// `drain` on one connection: returns whether to keep the connection, and what the
    /// visit found.
    fn drain_conn(&mut self, conn: BorrowedFd<'_>, until: Option<u64>) -> (bool, Visit) {
        let forced = until.is_some();
        let mut found = false;
        let idle = |found: bool| if found { Visit::Found } else { Visit::Idle };
        loop {
            // At capacity the rest stays in the kernel's queue (sources soon get
            // WSAENOBUFS) until a redeem that needs one of its records drains it.
            if !forced && self.pending.len() >= self.capacity {
                return (true, Visit::Idle);
            }
            let records = match self.batch.peek(conn, false) {
                Ok(records) if records.is_empty() => return (true, idle(found)),
                Ok(records) => records,
                Err(_) => return (false, idle(found)),
            };
            let peeked = records.len();
            let (mut taken, mut no_room) = (0, false);
            for (i, meta) in records.into_iter().enumerate() {
                match push_record(self.batch.record(i, &meta), meta) {
                    Record::Sockets(sockets) => {
                        found |= self.insert(sockets, until);
                        taken += 1;
                    }
                    // Copies of the records after it close with the iterator; they stay
                    // queued and the next peek starts over at this one.
                    Record::NoRoom => {
                        no_room = i == 0;
                        break;
                    }
                    Record::Broken => return (false, idle(found)),
                }
                // A peeked record is taken whole-batch even past `until`: its copies are
                // installed already, and putting them back costs more than keeping them.
                if !forced && self.pending.len() >= self.capacity {
                    break;
                }
            }
            if batch::consume(conn, taken, peeked).is_err() {
                return (false, idle(found));
            }
            if no_room {
                self.out_of_fds = true;
                return (true, idle(found));
            }
            if found {
                return (true, Visit::Found);
            }
            if forced {
                return (true, Visit::More);
            }
        }
    }

    /// Puts received sockets in the table; returns whether `until` was among them.
    fn insert(&mut self, sockets: Vec<(wire::Entry, OwnedFd)>, until: Option<u64>) -> bool {
        let mut found = false;
        for (entry, fd) in sockets {
            found |= Some(entry.token) == until;
            // A socket whose token is live already is closed here (see `Table::insert`).
            drop(self.pending.insert(entry.token, entry.tag, fd));
        }
        found
    }
}

/// What a visit to one connection's queue found.
enum Visit {
    /// The token a redeem looks for arrived.
    Found,
    /// A redeem's one batch was taken; more may be queued.
    More,
    /// Nothing more to take now: the queue is empty or dropped, the table is at capacity,
    /// or descriptors ran out.
    Idle,
}

/// What one peeked push record turned out to be.
enum Record {
    Sockets(Vec<(wire::Entry, OwnedFd)>),
    /// Its descriptors did not all fit in this process's table: leave it queued.
    NoRoom,
    /// A record that breaks the protocol: drop the connection (the kernel closes whatever
    /// it still queues).
    Broken,
}

fn push_record(bytes: &[u8], meta: Meta) -> Record {
    if meta.len == 0 || meta.len > wire::MAX_PUSH_LEN {
        return Record::Broken;
    }
    let Some(entries) = wire::parse_push(bytes) else {
        return Record::Broken;
    };
    if meta.fds.len() < entries.len() && meta.truncated {
        return Record::NoRoom;
    }
    if meta.fds.len() != entries.len() {
        return Record::Broken;
    }
    Record::Sockets(entries.zip(meta.fds).collect())
}

/// The guards `before_fork` takes, held until `after_fork` (both run in the forking
/// thread). Fields drop in order: `inner` borrows from the endpoint that `registry` keeps.
struct Held {
    inner: Option<MutexGuard<'static, Inner>>,
    registry: MutexGuard<'static, Registry>,
}

thread_local! {
    static HELD: RefCell<Option<Held>> = const { RefCell::new(None) };
}

pub(super) fn before_fork() {
    let registry = lock(&REGISTRY);
    let inner = registry.endpoint.as_ref().map(|ep| {
        let guard = lock(&ep.inner);
        // SAFETY: the guard borrows the endpoint that the locked registry holds. The
        // registry cannot let it go while locked, and `Held` drops this guard before the
        // registry's guard; the 'static lifetime never outlives that.
        unsafe { std::mem::transmute::<MutexGuard<'_, Inner>, MutexGuard<'static, Inner>>(guard) }
    });
    HELD.with(|h| *h.borrow_mut() = Some(Held { inner, registry }));
}

pub(super) fn after_fork(child: bool) {
    let Some(Held {
        mut inner,
        mut registry,
    }) = HELD.with(|h| h.borrow_mut().take())
    else {
        return;
    };
    if child {
        if let (Some(inner), Some(ep)) = (inner.as_mut(), registry.endpoint.as_ref()) {
            inner.abandon();
            for fd in [&ep.epoll, &ep.wake] {
                // SAFETY: closing a descriptor the child inherited; the endpoint is leaked
                // below, so no OwnedFd will close the number again.
                unsafe { libc::close(fd.as_raw_fd()) };
            }
        }
    }
    // Before the registry's guard: it borrows the endpoint the registry keeps.
    drop(inner);
    if child {
        // The session belongs to the parent: leak the child's copy (its descriptors are
        // closed above, and the leak keeps them from being closed twice), thread included.
        std::mem::forget(registry.endpoint.take());
        std::mem::forget(registry.thread.take());
        registry.refs = 0;
    }
    drop(registry);
}

impl Inner {
    /// In a forked child: close every inherited descriptor of the parent's session, without
    /// freeing memory (only async-signal-safe work here).
    fn abandon(&mut self) {
        self.closed = true;
        let fds = self
            .listener
            .iter()
            .chain(self.reserve.iter())
            .chain(self.conns.iter().flatten())
            .chain(self.pending.values());
        for fd in fds {
            // SAFETY: the descriptor was inherited from the parent; the endpoint holding
            // the OwnedFd is leaked by `after_fork`, so it is never closed again.
            unsafe { libc::close(fd.as_raw_fd()) };
        }
    }
}
