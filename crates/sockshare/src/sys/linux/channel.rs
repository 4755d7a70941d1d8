//! The channel backend: a connected Unix `SOCK_SEQPACKET` pair whose records carry a
//! socket and its protocol info together.
//!
//! Records (little-endian): `magic "SSHC" u32, version u16, kind u16, 0 u64`, then for
//! `SOCKET` the 628-byte `WSAPROTOCOL_INFOW` with exactly one descriptor attached.
//! - `HELLO`: "this end is now held by the process whose credentials came with me";
//! - `MOVED`: "this end is leaving its process" (sent by `into_fd`), so the peer forgets
//!   the owner it knew and waits for the next `HELLO`;
//! - `SOCKET`: one socket and the info made for the receiver.
//!
//! Why announcements: `SO_PEERCRED` names whoever *created* the pair (or connected), not
//! the process that holds the other end after it was handed to a child, so the sender
//! learns its peer's pid from the credentials the kernel attaches to the peer's `HELLO`
//! (`SO_PASSCRED`; a non-root process cannot forge them).
//!
//! Receiving follows the session's rule: a record is peeked (the kernel installs copies of
//! its descriptors and keeps it queued) and consumed only when every copy is installed, so
//! a full descriptor table never destroys a socket. Peeks and consumes are batched: with
//! `SO_PEEK_OFF` each peek moves past the record before it, so one `recvmmsg` peeks many
//! records and one more consumes them.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::event::PollFlags;
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use super::batch::{self, set_peek_off, Batch, Meta};
use super::{lock, os_error, wait_ready};
use crate::error::{Error, ErrorKind, Result};
use crate::info::{ProtocolInfo, SocketKind, INFO_W_SIZE};
use crate::session::Policy;

const MAGIC: u32 = u32::from_le_bytes(*b"SSHC");
const VERSION: u16 = 1;
const HEADER_LEN: usize = 16;
const RECORD_LEN: usize = HEADER_LEN + INFO_W_SIZE;

const HELLO: u16 = 1;
const MOVED: u16 = 2;
const SOCKET: u16 = 3;

/// Records one `recvmmsg` peeks at most.
const BATCH: usize = batch::MAX_RECORDS;
/// Descriptors a peek makes room for: one is valid, more reveal a broken peer.
const MAX_FDS: usize = 4;
/// How long `send` waits for the peer to announce itself.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

fn header(kind: u16) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..6].copy_from_slice(&VERSION.to_le_bytes());
    h[6..8].copy_from_slice(&kind.to_le_bytes());
    h
}

fn record_kind(b: &[u8]) -> Option<u16> {
    if b.len() < HEADER_LEN || b[0..4] != MAGIC.to_le_bytes() || b[4..6] != VERSION.to_le_bytes() {
        return None;
    }
    Some(u16::from_le_bytes([b[6], b[7]]))
}

/// One end of a channel.
pub(crate) struct Channel {
    fd: OwnedFd,
    /// The pid of the process holding the other end, once announced (0: not yet).
    peer: AtomicU32,
    rx: Mutex<Rx>,
}

/// The receiving side's buffers, reused for every batch.
struct Rx {
    /// Records already peeked, checked and consumed, in order, waiting for `recv`.
    ready: VecDeque<Result<(ProtocolInfo, OwnedFd)>>,
    batch: Batch,
}

/// What one record peeked from the queue turned out to be.
enum Peeked {
    Hello(u32),
    Moved,
    Socket(Result<(ProtocolInfo, OwnedFd)>),
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
        // As for a session's connections: room for about a thousand sockets in flight.
        for end in [&a, &b] {
            let _ = rustix::net::sockopt::set_socket_send_buffer_size(end, 1 << 20);
        }
        let (a, a_set_up) = Channel::adopt(a);
        let (b, b_set_up) = Channel::adopt(b);
        a_set_up.and(b_set_up)?;
        Ok((a, b))
    }

    /// Takes an end (made by `pair` here or in another process) and announces this
    /// process as its holder. The channel comes back whatever happens; so does the first
    /// failure (a closed peer, a descriptor that is no socket), which callers that do not
    /// report it at once leave for the first `send` or `recv` to meet.
    pub(crate) fn adopt(fd: OwnedFd) -> (Channel, Result<()>) {
        let set_up = rustix::net::sockopt::set_socket_passcred(&fd, true)
            .map_err(|e| os_error("asking for the peer's credentials", e))
            .and_then(|()| {
                set_peek_off(fd.as_fd(), 0)
                    .map_err(|e| os_error("setting the channel's peek offset", e))
            });
        let channel = Channel {
            fd,
            peer: AtomicU32::new(0),
            rx: Mutex::new(Rx {
                ready: VecDeque::new(),
                batch: Batch::new(BATCH, RECORD_LEN, MAX_FDS, true),
            }),
        };
        let announced = channel.announce(HELLO);
        (channel, set_up.and(announced))
    }

    /// Gives the end away (to hand it to another process): the peer waits for its next
    /// holder's announcement. Sockets already taken from the queue but not yet returned
    /// by `recv` are closed.
    pub(crate) fn into_fd(self) -> OwnedFd {
        // A failure means the peer is gone: nobody is left to tell.
        let _ = self.announce(MOVED);
        self.fd
    }

    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn announce(&self, kind: u16) -> Result<()> {
        rustix::net::send(&self.fd, &header(kind), SendFlags::NOSIGNAL)
            .map_err(|e| disconnected("announcing this end to its peer", e))?;
        Ok(())
    }

    pub(crate) fn send(&self, fd: BorrowedFd<'_>, kind: SocketKind) -> Result<()> {
        let peer = match self.peer.load(Ordering::Acquire) {
            0 => self.resolve_peer()?,
            pid => pid,
        };
        let (_, info) = ProtocolInfo::for_share_w(kind, peer, super::source::next_secret()?);
        let mut record = [0u8; RECORD_LEN];
        record[..HEADER_LEN].copy_from_slice(&header(SOCKET));
        record[HEADER_LEN..].copy_from_slice(&info);
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
                Err(Errno::INTR) => {}
                Err(e @ (Errno::TOOMANYREFS | Errno::NOBUFS | Errno::NOMEM)) => {
                    return Err(os_error("sending the socket over the channel", e))
                }
                Err(e) => return Err(disconnected("sending the socket over the channel", e)),
            }
        }
    }

    /// Reads the peer's announcements (they come before any socket it sends) until one
    /// names the process holding the other end now.
    fn resolve_peer(&self) -> Result<u32> {
        let mut rx = lock(&self.rx);
        let deadline = Instant::now() + HELLO_TIMEOUT;
        loop {
            let batch = self.receive_batch(&mut rx, false, false)?;
            let (full, mut blocked) = (batch.len() == BATCH, false);
            for peeked in batch {
                match peeked {
                    Peeked::Hello(pid) => self.peer.store(pid, Ordering::Release),
                    Peeked::Moved => self.peer.store(0, Ordering::Release),
                    Peeked::Socket(_) | Peeked::NoRoom => blocked = true,
                }
            }
            let peer = self.peer.load(Ordering::Acquire);
            if peer != 0 && (blocked || !full) {
                return Ok(peer);
            }
            if blocked {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    "the channel's peer sent a socket before announcing its process, so no \
                     info can be made for it: receive first",
                ));
            }
            if full {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let ready = wait_ready(&self.fd, PollFlags::IN, left)
                .map_err(|e| os_error("waiting for the channel's peer", e))?;
            if !ready {
                return Err(Error::new(
                    ErrorKind::NetDown,
                    format!(
                        "no process took up the channel's other end within {} s (build a \
                         Channel from it there)",
                        HELLO_TIMEOUT.as_secs()
                    ),
                ));
            }
        }
    }

    pub(crate) fn recv(&self) -> Result<(ProtocolInfo, OwnedFd)> {
        let mut rx = lock(&self.rx);
        loop {
            if let Some(item) = rx.ready.pop_front() {
                return item;
            }
            for peeked in self.receive_batch(&mut rx, true, true)? {
                match peeked {
                    Peeked::Hello(pid) => self.peer.store(pid, Ordering::Release),
                    Peeked::Moved => self.peer.store(0, Ordering::Release),
                    Peeked::Socket(item) => rx.ready.push_back(item),
                    Peeked::NoRoom if rx.ready.is_empty() => {
                        return Err(Error::new(
                            ErrorKind::TooManyDescriptors,
                            "this process has no free descriptor for the socket the \
                             channel carries; it stays queued: close a descriptor (or \
                             raise RLIMIT_NOFILE) and receive again",
                        ));
                    }
                    Peeked::NoRoom => {}
                }
            }
        }
    }

    /// Peeks up to `BATCH` records (blocking for the first when `wait`), then consumes
    /// those whose descriptors were all installed, in order. Stops at the first record
    /// that did not fit, and, unless `take_sockets`, at the first socket (left queued).
    fn receive_batch(&self, rx: &mut Rx, wait: bool, take_sockets: bool) -> Result<Vec<Peeked>> {
        let metas = rx
            .batch
            .peek(self.fd.as_fd(), wait)
            .map_err(|e| disconnected("receiving from the channel", e))?;
        let peeked = metas.len();
        let me = super::current_pid();
        let my_uid = rustix::process::geteuid().as_raw();
        let mut out = Vec::with_capacity(peeked);
        let mut consume = 0;
        for meta in metas {
            let record = classify(rx.batch.record(&meta), meta, me, my_uid);
            let stop = match record {
                Peeked::NoRoom => true,
                Peeked::Socket(_) => !take_sockets,
                _ => false,
            };
            out.push(record);
            if stop {
                break;
            }
            consume += 1;
        }
        batch::consume(self.fd.as_fd(), consume, peeked)
            .map_err(|e| disconnected("consuming records from the channel", e))?;
        Ok(out)
    }
}

fn classify(bytes: &[u8], meta: Meta, me: u32, my_uid: u32) -> Peeked {
    let invalid = |why: &str| {
        Peeked::Socket(Err(Error::new(
            ErrorKind::Invalid,
            format!("the channel refused a record: {why}; whatever it carried is closed"),
        )))
    };
    let kind = record_kind(bytes);
    if meta.truncated && meta.fds.is_empty() && kind == Some(SOCKET) {
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
    match kind {
        Some(HELLO) if bytes.len() == HEADER_LEN && meta.fds.is_empty() => match meta.pid {
            Some(pid) => Peeked::Hello(pid),
            None => invalid("the peer's announcement names no process visible here"),
        },
        Some(MOVED) if bytes.len() == HEADER_LEN && meta.fds.is_empty() => Peeked::Moved,
        Some(SOCKET) if bytes.len() == RECORD_LEN && meta.fds.len() == 1 => {
            let info = match ProtocolInfo::from_bytes(&bytes[HEADER_LEN..]) {
                Ok(info) => info,
                Err(e) => return Peeked::Socket(Err(e)),
            };
            if info.target_pid() != me {
                return invalid(&format!(
                    "its info was made for process {}, not for this process ({me})",
                    info.target_pid()
                ));
            }
            match meta.fds.into_iter().next() {
                Some(fd) => Peeked::Socket(Ok((info, fd))),
                None => invalid("it carried no socket"),
            }
        }
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
