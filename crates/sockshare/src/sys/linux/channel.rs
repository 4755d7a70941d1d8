//! The channel backend: a connected Unix `SOCK_SEQPACKET` pair whose records each carry
//! one socket.
//!
//! A record (little-endian): `magic "SSHC" u32, version u16, 0 u16, family i32, type i32,
//! protocol i32, 0 u32` (24 bytes), with exactly one descriptor attached (`SCM_RIGHTS`)
//! and the sender's credentials (`SCM_CREDENTIALS`: every end asks for them, and the
//! kernel attaches them to what an end that asks sends, as to what it receives).
//!
//! # Who a socket is for
//!
//! **A socket in the channel belongs to whichever process holds the receiving end when it
//! is received; that process makes the info, for itself.** The record names no process.
//!
//! Why: the kernel delivers a record to whoever holds the end when it is read, whatever the
//! record says. A sender could name that process only from what the holder announced, and
//! an announcement of a move crosses the queue while the sender's sockets cross it the
//! other way, so a sender can always have named the previous holder; a receiver that then
//! refused the record would only close a socket that had already arrived. Naming the
//! receiver in the record therefore protected nothing, while the receiver is the one
//! process that knows its own pid. What does guard the channel stays: only a holder of
//! the end can read its queue (the kernel's rule), and every record is checked against
//! the default policy by its credentials, which a non-root sender cannot forge.
//!
//! Every state of the other end, as `send` meets it:
//! - held by a process: the socket is queued, in order; that process's `recv` takes it;
//! - given away (`into_fd`) and not taken up yet, or travelling to another process: the
//!   socket is queued all the same, and the next holder's `recv` takes it;
//! - its queue full (a holder that does not receive, or receives more slowly than the
//!   sender sends): `send` waits for room at most `FULL_QUEUE_WAIT` (100 ms, as
//!   `duplicate` waits for a full session queue: the kernel's `SO_SNDTIMEO`, set on every
//!   end), then fails with `WSAENOBUFS`, and nothing was queued;
//! - closed (its last descriptor): `send` fails (`WSAENETDOWN`) and nothing was queued.
//!   Sockets queued before the end closed are closed with it by the kernel, as those
//!   queued to an end that is given away and then closed without being taken up: closing
//!   an end is how its holder refuses what is in it.
//!
//! And as `recv` meets a record:
//! - well formed, from an allowed sender, its descriptor installed here: the socket, with
//!   an info made for this process;
//! - its descriptor does not fit in this process's table: `WSAEMFILE`, and the record
//!   stays queued (see below);
//! - without credentials, from a user the default policy refuses, or not well formed:
//!   `WSAEINVAL`, whatever it carried is closed, and the next `recv` goes on after it;
//! - none, and the other end closed: `WSAENETDOWN`.
//!
//! Threads: `send` takes no lock and reads nothing, so a thread waiting in `recv` (which
//! holds the receiving side's lock while it waits for a record) never holds up another
//! thread's `send`, nor a `send` (which waits at most `FULL_QUEUE_WAIT`) a `recv`. Two
//! threads in `recv` take records one after the other.
//!
//! Receiving follows the session's rule: a record is peeked (the kernel installs copies of
//! its descriptors and keeps it queued), so a full descriptor table never destroys a
//! socket. Peeks are batched: with `SO_PEEK_OFF` each peek moves past the record before
//! it, so one `recvmmsg` peeks many records.
//!
//! **A record leaves the kernel's queue only once `recv` has handed it out** (the socket,
//! or the error that refused it): the records `recv` handed out are consumed together
//! just before the next peek, so a batch still costs two system calls. The sockets of a
//! batch that `recv` has not handed out yet are copies of records still queued: giving
//! the end away (`into_fd`) consumes what was handed out and closes those copies, and the
//! next holder receives the records themselves (its `adopt` moves the peek offset back to
//! the head of the queue). Nothing a peek took is lost with the end.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use super::batch::{self, set_peek_off, Batch, Meta};
use super::Info;
use super::{lock, os_error};
use crate::error::{Error, ErrorKind, Result};
use crate::layout::SocketKind;
use crate::options::Policy;

const MAGIC: u32 = u32::from_le_bytes(*b"SSHC");
/// Version 1 records carried an info made by the sender, and the announcements of the
/// holders it was made from.
const VERSION: u16 = 2;
const RECORD_LEN: usize = 24;

/// Records one `recvmmsg` peeks at most.
const BATCH: usize = batch::MAX_RECORDS;
/// Descriptors a peek makes room for: one is valid, more reveal a broken peer.
const MAX_FDS: usize = 4;
/// How long `send` waits for room in a full queue before `WSAENOBUFS`: the wait of
/// `duplicate` for a full session queue, so both ways of sharing fail alike.
const FULL_QUEUE_WAIT: Duration = Duration::from_millis(100);

fn record(kind: SocketKind) -> [u8; RECORD_LEN] {
    let mut r = [0u8; RECORD_LEN];
    r[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    r[4..6].copy_from_slice(&VERSION.to_le_bytes());
    r[8..12].copy_from_slice(&kind.family().to_le_bytes());
    r[12..16].copy_from_slice(&kind.socket_type().to_le_bytes());
    r[16..20].copy_from_slice(&kind.protocol().to_le_bytes());
    r
}

/// The kind a record names: `None` unless it is well formed.
fn parse_record(b: &[u8]) -> Option<SocketKind> {
    let word = |at: usize| i32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let well_formed = b.len() == RECORD_LEN
        && b[0..4] == MAGIC.to_le_bytes()
        && b[4..6] == VERSION.to_le_bytes()
        && b[6..8] == [0, 0]
        && b[20..24] == [0; 4];
    well_formed.then(|| SocketKind::new(word(8), word(12), word(16)))
}

/// One end of a channel.
pub(crate) struct Channel {
    fd: OwnedFd,
    rx: Mutex<Rx>,
}

/// The receiving side's state, and its buffers reused for every batch.
struct Rx {
    /// Records peeked and checked, in order, waiting for `recv`; still queued in the
    /// kernel, behind the `handed` ones.
    peeked: VecDeque<Result<(SocketKind, OwnedFd)>>,
    /// Records at the head of the kernel's queue that `recv` has handed out.
    handed: usize,
    batch: Batch,
}

impl Rx {
    /// Takes the records `recv` has handed out off the kernel's queue (the peek offset
    /// moves back by as much, to the first record not handed out).
    fn consume_handed(&mut self, fd: BorrowedFd<'_>) -> Result<()> {
        if self.handed > 0 {
            batch::consume(fd, self.handed, self.handed)
                .map_err(|e| disconnected("consuming records from the channel", e))?;
            self.handed = 0;
        }
        Ok(())
    }
}

/// What one record peeked from the queue turned out to be.
enum Peeked {
    Socket(Result<(SocketKind, OwnedFd)>),
    /// Its descriptor did not fit in this process's table: leave it queued.
    NoRoom,
}

impl Channel {
    pub(crate) fn pair() -> Result<(Channel, Channel)> {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| os_error("creating the channel's socket pair", e))?;
        // As for a session's connections: room for about 2,700 sockets in flight.
        for end in [&a, &b] {
            let _ = rustix::net::sockopt::set_socket_send_buffer_size(end, 1 << 20);
        }
        let (a, a_set_up) = Channel::adopt(a);
        let (b, b_set_up) = Channel::adopt(b);
        a_set_up.and(b_set_up)?;
        Ok((a, b))
    }

    /// Takes an end (made by `pair` here or in another process). The channel comes back
    /// whatever happens; so does the failure to set it up (a descriptor that is no
    /// socket), which callers that do not report it at once leave for the first `send` or
    /// `recv` to meet.
    pub(crate) fn adopt(fd: OwnedFd) -> (Channel, Result<()>) {
        use rustix::net::sockopt::{set_socket_passcred, set_socket_timeout, Timeout};
        // Every info `recv` makes names this process: with the fork handlers in place its
        // pid is kept (and renewed in a forked child), not asked of the kernel each time.
        super::install_fork_handlers();
        let set_up = set_socket_passcred(&fd, true)
            .map_err(|e| os_error("asking for the peer's credentials", e))
            .and_then(|()| {
                set_peek_off(fd.as_fd(), 0)
                    .map_err(|e| os_error("setting the channel's peek offset", e))
            })
            .and_then(|()| {
                set_socket_timeout(&fd, Timeout::Send, Some(FULL_QUEUE_WAIT))
                    .map_err(|e| os_error("bounding the channel's wait for room", e))
            });
        let channel = Channel {
            fd,
            rx: Mutex::new(Rx {
                peeked: VecDeque::new(),
                handed: 0,
                batch: Batch::new(BATCH, RECORD_LEN, MAX_FDS, true),
            }),
        };
        (channel, set_up)
    }

    /// Gives the end away (to hand it to another process), with every record `recv` has
    /// not handed out still queued in it (see the module docs).
    pub(crate) fn into_fd(self) -> OwnedFd {
        // Only a queue that lost its records fails this; the next holder would then receive
        // the handed-out ones again: twice, never lost.
        let _ = lock(&self.rx).consume_handed(self.fd.as_fd());
        self.fd
    }

    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub(crate) fn send(&self, fd: BorrowedFd<'_>, kind: SocketKind) -> Result<()> {
        let record = record(kind);
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let fds = [fd];
        control.push(SendAncillaryMessage::ScmRights(&fds));
        loop {
            match rustix::net::sendmsg(
                &self.fd,
                &[IoSlice::new(&record)],
                &mut control,
                SendFlags::NOSIGNAL,
            ) {
                Ok(_) => return Ok(()),
                // A signal handler ran while waiting for room: wait once more.
                Err(Errno::INTR) => {}
                Err(e @ Errno::AGAIN) => {
                    return Err(Error::new(
                        ErrorKind::NoBufferSpace,
                        format!(
                            "the channel's queue stayed full for {} ms (its other end receives \
                             more slowly, or not at all): let it receive, then send again",
                            FULL_QUEUE_WAIT.as_millis()
                        ),
                    )
                    .with_source(e.into()))
                }
                Err(e @ (Errno::TOOMANYREFS | Errno::NOBUFS | Errno::NOMEM)) => {
                    return Err(os_error("sending the socket over the channel", e))
                }
                Err(e) => return Err(disconnected("sending the socket over the channel", e)),
            }
        }
    }

    pub(crate) fn recv(&self) -> Result<(Info, OwnedFd)> {
        let mut rx = lock(&self.rx);
        loop {
            match rx.peeked.pop_front() {
                Some(Ok((kind, fd))) => match super::source::next_secret() {
                    Ok(token) => {
                        rx.handed += 1;
                        let info = Info::for_share(kind, super::current_pid(), token);
                        return Ok((info, fd));
                    }
                    // Keep the socket for the next `recv`, as when descriptors run out.
                    Err(e) => {
                        rx.peeked.push_front(Ok((kind, fd)));
                        return Err(e);
                    }
                },
                Some(Err(e)) => {
                    rx.handed += 1;
                    return Err(e);
                }
                None => {}
            }
            if !self.receive_batch(&mut rx)? {
                return Err(Error::new(
                    ErrorKind::TooManyDescriptors,
                    "this process has no free descriptor for the socket the channel \
                     carries; it stays queued: close a descriptor (or raise \
                     RLIMIT_NOFILE) and receive again",
                ));
            }
        }
    }

    /// Consumes what `recv` handed out, then peeks up to `BATCH` records (blocking for the
    /// first) and keeps them in `rx.peeked`, in order, up to the first record whose
    /// descriptor did not fit (left queued for the next peek). `Ok(false)` when that was
    /// the first.
    fn receive_batch(&self, rx: &mut Rx) -> Result<bool> {
        rx.consume_handed(self.fd.as_fd())?;
        let metas = rx
            .batch
            .peek(self.fd.as_fd(), true)
            .map_err(|e| disconnected("receiving from the channel", e))?;
        let peeked = metas.len();
        let my_uid = rustix::process::geteuid().as_raw();
        let mut kept_len = 0;
        for (i, meta) in metas.into_iter().enumerate() {
            // A record longer than the buffer was peeked in part, and the peek offset moved
            // past that part only (what the batch peeked after it is the same record
            // again), so the batch ends before it. First in the batch, it is refused at
            // once: its length is unknown, so the offset could not step past it later.
            if meta.len > RECORD_LEN {
                if i > 0 {
                    break;
                }
                drop(meta); // closes whatever it carried
                batch::consume(self.fd.as_fd(), 1, peeked)
                    .map_err(|e| disconnected("consuming records from the channel", e))?;
                return Err(refused("it is longer than any channel record"));
            }
            let len = meta.len;
            match classify(rx.batch.record(&meta), meta, my_uid) {
                Peeked::Socket(item) => rx.peeked.push_back(item),
                Peeked::NoRoom => break,
            }
            kept_len += len;
        }
        if rx.peeked.len() < peeked {
            // The next peek starts at the first record not kept.
            set_peek_off(self.fd.as_fd(), kept_len as i32)
                .map_err(|e| os_error("setting the channel's peek offset", e))?;
        }
        Ok(!rx.peeked.is_empty())
    }
}

/// The error for a record `recv` refuses.
fn refused(why: &str) -> Error {
    Error::new(
        ErrorKind::Invalid,
        format!("the channel refused a record: {why}; whatever it carried is closed"),
    )
}

fn classify(bytes: &[u8], meta: Meta, my_uid: u32) -> Peeked {
    let invalid = |why: &str| Peeked::Socket(Err(refused(why)));
    let kind = parse_record(bytes);
    if meta.truncated && meta.fds.is_empty() && kind.is_some() {
        return Peeked::NoRoom;
    }
    let Some(uid) = meta.uid else {
        return invalid("it came without the sender's credentials");
    };
    if !Policy::SameUser.allows(uid, my_uid) {
        return invalid(&format!(
            "the sender runs as uid {uid}, which may not share sockets with uid {my_uid}"
        ));
    }
    match (kind, <[OwnedFd; 1]>::try_from(meta.fds)) {
        (Some(kind), Ok([fd])) => Peeked::Socket(Ok((kind, fd))),
        _ => invalid("it is not a well-formed sockshare channel record"),
    }
}

fn disconnected(what: &str, e: Errno) -> Error {
    match e {
        Errno::PIPE | Errno::CONNRESET | Errno::NOTCONN => Error::new(
            ErrorKind::NetDown,
            format!("{what}: the channel's other end was closed"),
        )
        .with_source(e.into()),
        e => os_error(what, e),
    }
}
