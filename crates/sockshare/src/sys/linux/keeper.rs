//! Keepers: sharing with a process that has no session yet, or does not answer (S18).
//!
//! Windows places a duplicated handle in the target at once, whatever the target is
//! doing. Here a socket needs a holder until the target's session can take it, and the
//! holder must outlive the source (which may exit, or be killed, as soon as `duplicate`
//! returns). So the source's library starts a *keeper*: a small process, forked from the
//! source, that holds the sockets pushed for one target until that target takes them.
//!
//! The protocol, every state and failure:
//! - **Start** (source, in `duplicate`, when no session of the target answers within
//!   [`super::source`]'s handshake time): the source checks that the target is a live
//!   process it may share with (its user, or root; a pidfd names it from then on),
//!   creates a socket pair (its *link* to the keeper) and a listener bound to
//!   `sockshare/v2/keep/<pid>.<start>.<i>` (the first free of 16 indices), and forks the
//!   keeper, which inherits the pidfd, the listener and its end of the link. Nothing is
//!   allocated and no lock is taken in the child: it makes system calls only, so a
//!   multithreaded source is safe. The fork goes through an intermediate process made
//!   with no exit signal and reaped at once, so the source's own `wait()` and `SIGCHLD`
//!   never see either; the keeper is reparented to init (or the nearest subreaper).
//! - **Keeping** (keeper): a new session of its own (`setsid`: no terminal signals),
//!   default signal handlers, every other inherited descriptor closed, process name
//!   `sockshare-keep`. The source pushes records (the session's push format, secrets
//!   and kinds with the sockets) on the link; they wait in the link's queue, held by the
//!   kernel for the keeper, until a target connection exists. If the link's queue is
//!   full, the source gets `WSAENOBUFS` as from a full session.
//! - **Delivery**: the target's session connects to its keeper names when it starts and
//!   when a redeem misses. The keeper accepts a connection only from the process its
//!   pidfd names (`SO_PEERCRED` gives pid P while the pidfd says P is alive, so not a
//!   process that reuses P's number), answers it as a session answers a source (so the
//!   session keeps only connections of keepers that are its own), tells the source that
//!   the target is here (one byte on the link, so the source's next `duplicate` goes to
//!   the session directly), and forwards every queued record on that connection. The
//!   session admits the keeper by its policy, as any source (the keeper runs as the
//!   source's user).
//! - **End**: the keeper exits when the target exits (its pidfd is readable: the sockets
//!   it still holds close with it, so their peers see EOF); or once it has forwarded
//!   everything and the link is done: the source closed its end, or the link stayed idle
//!   for [`IDLE`] after the target arrived, when the keeper shuts its reading side (a
//!   source pushing at that moment gets `EPIPE`, and connects to the session instead)
//!   and forwards what was queued before.
//! - A target that never starts a session keeps its keeper as long as it lives: the
//!   sockets are its own until it exits.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use rustix::event::PollFlags;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use super::{keeper_address, os_error, peer_cred, raw, KEEPER_NAMES};
use crate::error::{Error, ErrorKind, Result};

/// How long a keeper whose target has arrived waits for more from the source.
const IDLE: Duration = Duration::from_secs(1);
/// The byte that tells the source its target has arrived.
const ARRIVED: u8 = b'T';
/// The name the keeper shows in `/proc/<pid>/comm` (and `ps`).
const NAME: &[u8] = b"sockshare-keep\0";

/// The source's end of a link to a new keeper for process `pid`, which started at
/// `start` and which `pidfd` names.
pub(super) fn spawn(pid: u32, start: u64, pidfd: OwnedFd) -> Result<OwnedFd> {
    let (link, kept) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| os_error("creating the link to a keeper", e))?;
    // Room for about a thousand sockets in flight, as for a session's connections.
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(&link, 1 << 20);
    let listener = listen(pid, start)?;
    // Everything the keeper needs exists now: the child only makes system calls.
    let fds = [listener.as_raw_fd(), kept.as_raw_fd(), pidfd.as_raw_fd()];
    // SAFETY: a raw clone without CLONE_VM is a fork that runs no atfork handler. The
    // child makes only system calls (async-signal-safe) and leaves with `_exit`, or
    // clones the keeper, which does the same; no lock, no allocation, no destructor.
    let middle =
        unsafe { raw::clone_process(0) }.map_err(|e| os_error("starting a keeper process", e))?;
    match middle {
        0 => {
            // SAFETY: as above; the keeper's exit signal is SIGCHLD, which init (its
            // parent once this process exits) reaps.
            if unsafe { raw::clone_process(libc::SIGCHLD) } == Ok(0) {
                keep(fds, pid);
            }
            // The intermediate process leaves at once, running nothing of the parent's.
            raw::exit_now(0)
        }
        // Reaped at once: it has no exit signal, so only this `__WCLONE` wait sees it.
        middle => raw::wait_clone(middle as libc::pid_t),
    }
    drop((listener, kept, pidfd));
    Ok(link)
}

/// Binds the first free keeper name of `pid` and listens on it.
fn listen(pid: u32, start: u64) -> Result<OwnedFd> {
    let listener =
        super::seqpacket_socket().map_err(|e| os_error("creating a keeper's listener", e))?;
    for index in 0..KEEPER_NAMES {
        let addr = keeper_address(pid, start, index).map_err(|e| os_error("naming a keeper", e))?;
        match rustix::net::bind(&listener, &addr) {
            Ok(()) => {
                rustix::net::listen(&listener, 8)
                    .map_err(|e| os_error("listening as a keeper", e))?;
                return Ok(listener);
            }
            Err(Errno::ADDRINUSE) => {}
            Err(e) => return Err(os_error("binding a keeper's name", e)),
        }
    }
    Err(Error::new(
        ErrorKind::NoBufferSpace,
        format!(
            "process {pid} has no session yet, and all {KEEPER_NAMES} names for sockets \
             waiting for it are held by other processes"
        ),
    ))
}

/// Whether the keeper's pidfd says its target has exited.
fn exited(pidfd: BorrowedFd<'_>) -> bool {
    super::wait_ready(&pidfd, PollFlags::IN, Duration::ZERO).unwrap_or(true)
}

/// The keeper process's whole life (see the module docs). `fds` are its listener, its
/// end of the link and the target's pidfd. Never returns.
fn keep(fds: [RawFd; 3], pid: u32) -> ! {
    prepare(&fds);
    // SAFETY: the three descriptors were inherited open, and nothing else owns them in
    // this process: `prepare` closed every other descriptor, and this process never
    // returns into the code that owned them.
    let (listener, link, pidfd) = unsafe {
        (
            OwnedFd::from_raw_fd(fds[0]),
            OwnedFd::from_raw_fd(fds[1]),
            OwnedFd::from_raw_fd(fds[2]),
        )
    };
    let mut keeper = Keeper {
        pid,
        link: Some(link),
        target: None,
        record: [0u8; super::wire::MAX_PUSH_LEN],
        in_hand: None,
        idle_since: None,
    };
    loop {
        let step = keeper.step(&listener, &pidfd);
        if step.is_break() {
            break;
        }
    }
    // The kernel closes the keeper's descriptors, and with them every socket it holds.
    raw::exit_now(0)
}

/// Makes the forked child a process of its own: a new session (no terminal's signals),
/// default signal handlers and an empty mask, a name, and no descriptor but `keep`.
fn prepare(keep: &[RawFd; 3]) {
    raw::become_daemon(NAME);
    let mut sorted = *keep;
    sorted.sort_unstable();
    let mut from = 0u32;
    for fd in sorted {
        // SAFETY: the numbers between the kept ones are inherited and unused here: nothing
        // in this fresh process owns them.
        if fd as u32 > from {
            unsafe { raw::close_range(from, fd as u32 - 1) };
        }
        from = fd as u32 + 1;
    }
    // SAFETY: as above, for every number above the kept ones.
    unsafe { raw::close_range(from, u32::MAX) };
}

/// A record taken from the link, with its sockets, not yet forwarded.
struct InHand {
    len: usize,
    fds: [RawFd; super::wire::MAX_FDS],
    count: usize,
}

struct Keeper {
    pid: u32,
    /// `None` once the source's records are all forwarded and it is done.
    link: Option<OwnedFd>,
    /// The target's connection, once it came.
    target: Option<OwnedFd>,
    record: [u8; super::wire::MAX_PUSH_LEN],
    in_hand: Option<InHand>,
    /// Since when the link has had nothing to forward, the target being here.
    idle_since: Option<std::time::Instant>,
}

impl Keeper {
    /// One wait and what follows it; `Break` when the keeper is done.
    fn step(&mut self, listener: &OwnedFd, pidfd: &OwnedFd) -> std::ops::ControlFlow<()> {
        use std::ops::ControlFlow::{Break, Continue};
        if exited(pidfd.as_fd()) {
            return Break(());
        }
        if self.link.is_none() && self.in_hand.is_none() {
            return Break(());
        }
        let forwarding = self.target.is_some();
        let want_link = forwarding && self.in_hand.is_none();
        let want_out = forwarding && self.in_hand.is_some();
        // A descriptor left out is -1, which poll skips: a hung-up link or target that is
        // not waited on must not wake the keeper (poll reports a hang-up whatever is
        // asked).
        let entry = |fd: Option<&OwnedFd>, wanted: bool, events: libc::c_short| libc::pollfd {
            fd: fd.filter(|_| wanted).map_or(-1, |f| f.as_raw_fd()),
            events,
            revents: 0,
        };
        let mut fds = [
            entry(Some(pidfd), true, libc::POLLIN),
            entry(Some(listener), true, libc::POLLIN),
            entry(self.link.as_ref(), want_link, libc::POLLIN),
            entry(self.target.as_ref(), want_out, libc::POLLOUT),
        ];
        // While idle, wake to see whether the link has been idle long enough.
        let timeout = if self.idle_since.is_some() { 100 } else { -1 };
        // SAFETY: `fds` is a live array of pollfd of the length given.
        let polled = unsafe { raw::poll(fds.as_mut_ptr(), fds.len() as _, timeout) };
        if polled.is_err_and(|e| e != Errno::INTR) {
            return Break(());
        }
        if fds[1].revents & libc::POLLIN != 0 {
            self.accept(listener, pidfd);
        }
        if self.target.is_some() && self.in_hand.is_some() {
            self.forward();
        }
        if self.target.is_some() && self.in_hand.is_none() {
            self.take_from_link();
        }
        Continue(())
    }

    /// Accepts the target's connection, if it is the target's.
    fn accept(&mut self, listener: &OwnedFd, pidfd: &OwnedFd) {
        while let Ok(conn) =
            rustix::net::accept_with(listener, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK)
        {
            // The connecting process was pid P, and P is still the process the pidfd
            // names: nobody else (a process reusing P's number included).
            let genuine = peer_cred(conn.as_fd()).is_ok_and(|c| c.pid as u32 == self.pid)
                && !exited(pidfd.as_fd());
            // The answer tells the session this keeper is its own (a refused one is
            // closed unanswered), so the session keeps no connection it must not.
            let answered = genuine
                && rustix::net::send(
                    &conn,
                    &super::wire::reply(super::wire::Verdict::Accepted),
                    rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
                )
                .is_ok();
            if answered {
                // The newest connection of the target's wins (its session may have
                // ended and started again); what went on the old one stays its.
                self.target = Some(conn);
                if let Some(link) = &self.link {
                    let _ = rustix::net::send(
                        link,
                        &[ARRIVED],
                        rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
                    );
                }
            }
        }
    }

    /// Sends the record in hand to the target; on success, closes this copy of its
    /// sockets. A target connection that fails is dropped; the record waits for the next.
    fn forward(&mut self) {
        let (Some(target), Some(hand)) = (&self.target, &self.in_hand) else {
            return;
        };
        match send_record(
            target.as_fd(),
            &self.record[..hand.len],
            &hand.fds[..hand.count],
        ) {
            Ok(()) => {
                for &fd in &hand.fds[..hand.count] {
                    // SAFETY: the keeper's copy of a socket now queued for the target.
                    unsafe { raw::close(fd) };
                }
                self.in_hand = None;
            }
            Err(Errno::AGAIN | Errno::INTR) => {}
            Err(_) => self.target = None,
        }
    }

    /// Takes the next record from the link (nonblocking); notes the link's end.
    fn take_from_link(&mut self) {
        let Some(link) = &self.link else {
            return;
        };
        let mut hand = InHand {
            len: 0,
            fds: [-1; super::wire::MAX_FDS],
            count: 0,
        };
        match recv_record(link.as_fd(), &mut self.record, &mut hand) {
            Ok(true) => {
                self.idle_since = None;
                if hand.len > 0 && hand.len <= self.record.len() {
                    self.in_hand = Some(hand);
                } else {
                    for &fd in &hand.fds[..hand.count] {
                        // SAFETY: descriptors of a record no session would take.
                        unsafe { raw::close(fd) };
                    }
                }
            }
            // The source closed its end and everything queued is forwarded.
            Ok(false) | Err(Errno::CONNRESET | Errno::PIPE) => self.link = None,
            Err(Errno::AGAIN) => {
                let since = *self.idle_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= IDLE {
                    // Done with the source: a push that races this gets EPIPE, and
                    // what was queued before is still read (then the end).
                    let _ = rustix::net::shutdown(link, rustix::net::Shutdown::Read);
                    self.idle_since = None;
                }
            }
            Err(_) => self.link = None,
        }
    }
}

/// Control-buffer room for the most descriptors a record carries, in `u64`s so it is
/// aligned for `cmsghdr`.
const CONTROL_WORDS: usize = (super::wire::MAX_FDS * 4 + 64) / 8;

/// Sends `bytes` with `fds` attached, without waiting (`sendmsg`, `SCM_RIGHTS`).
fn send_record(
    conn: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[RawFd],
) -> std::result::Result<(), Errno> {
    let mut control = [0u64; CONTROL_WORDS];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header, filled in below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let data_len = std::mem::size_of_val(fds) as u32;
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(data_len) } as _;
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: the control buffer is large enough for one SCM_RIGHTS cmsg carrying
        // `fds` (CONTROL_WORDS covers MAX_FDS); the header and data are written inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(data_len) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(c).cast::<RawFd>(),
                fds.len(),
            );
        }
    }
    // SAFETY: every pointer in `msg` points into buffers alive for the call.
    unsafe {
        raw::sendmsg(
            conn.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    }
    .map(drop)
}

/// Receives one record into `record` and `hand`, without waiting. `Ok(false)` at the
/// end of the stream.
fn recv_record(
    link: BorrowedFd<'_>,
    record: &mut [u8; super::wire::MAX_PUSH_LEN],
    hand: &mut InHand,
) -> std::result::Result<bool, Errno> {
    let mut control = [0u64; CONTROL_WORDS];
    let (n, flags) = raw::recv_one(
        link.as_raw_fd(),
        record,
        &mut control,
        libc::MSG_DONTWAIT,
        |c| {
            if (c.level, c.ty) != (libc::SOL_SOCKET, libc::SCM_RIGHTS) {
                return;
            }
            for fd in c.items::<RawFd>() {
                if hand.count < hand.fds.len() {
                    hand.fds[hand.count] = fd;
                    hand.count += 1;
                } else {
                    // SAFETY: installed for this process by the receive; no record keeps it.
                    unsafe { raw::close(fd) };
                }
            }
        },
    )?;
    hand.len = n;
    // A record carrying more than the buffer was cut: `len` past the buffer marks it.
    if flags & libc::MSG_TRUNC != 0 {
        hand.len = record.len() + 1;
    }
    Ok(n > 0 || hand.count > 0)
}
