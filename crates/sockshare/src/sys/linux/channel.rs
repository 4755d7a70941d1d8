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
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustix::event::PollFlags;
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use super::{os_error, wait_ready};
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
const BATCH: usize = 32;
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
    bytes: Box<[[u8; RECORD_LEN + 1]; BATCH]>,
    control: Box<[[u64; CONTROL_WORDS]; BATCH]>,
}

const CONTROL_SPACE: usize = rustix::cmsg_space!(ScmRights(MAX_FDS), ScmCredentials(1));
const CONTROL_WORDS: usize = CONTROL_SPACE.div_ceil(8);

/// What one record peeked from the queue turned out to be.
enum Peeked {
    Hello(u32),
    Moved,
    Socket(Result<(ProtocolInfo, OwnedFd)>),
    /// Its descriptor did not fit in this process's table: leave it queued.
    NoRoom,
}

/// What a peek gave for one record, beside its bytes.
struct Meta {
    len: usize,
    fd: Option<OwnedFd>,
    fds: usize,
    uid: Option<u32>,
    pid: Option<u32>,
    truncated: bool,
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
        Ok((Channel::adopt(a, true)?, Channel::adopt(b, true)?))
    }

    /// Takes an end (made by `pair` here or in another process) and announces this
    /// process as its holder. Unless `strict`, a failure is left for the first `send` or
    /// `recv` to report (a closed peer, a descriptor that is no socket).
    pub(crate) fn adopt(fd: OwnedFd, strict: bool) -> Result<Channel> {
        let set_up = rustix::net::sockopt::set_socket_passcred(&fd, true)
            .map_err(|e| os_error("asking for the peer's credentials", e))
            .and_then(|()| set_peek_off(fd.as_fd(), 0));
        if strict {
            set_up?;
        }
        let channel = Channel {
            fd,
            peer: AtomicU32::new(0),
            rx: Mutex::new(Rx {
                ready: VecDeque::new(),
                bytes: Box::new([[0; RECORD_LEN + 1]; BATCH]),
                control: Box::new([[0; CONTROL_WORDS]; BATCH]),
            }),
        };
        let announced = channel.announce(HELLO);
        if strict {
            announced?;
        }
        Ok(channel)
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
        let info = ProtocolInfo::for_share(kind, peer, super::source::next_token()?);
        let mut record = [0u8; RECORD_LEN];
        record[..HEADER_LEN].copy_from_slice(&header(SOCKET));
        record[HEADER_LEN..].copy_from_slice(&info.to_bytes_w());
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
        let mut rx = self.rx.lock();
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
        let mut rx = self.rx.lock();
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
        let metas = peek_batch(self.fd.as_fd(), rx, wait)?;
        let peeked = metas.len();
        let me = super::current_pid();
        let my_uid = rustix::process::geteuid().as_raw();
        let mut out = Vec::with_capacity(peeked);
        let mut consume = 0;
        for (i, meta) in metas.into_iter().enumerate() {
            let record = classify(&rx.bytes[i][..meta.len], meta, me, my_uid);
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
        consume_records(self.fd.as_fd(), consume)?;
        if consume < peeked {
            // The peek offset moved past records that stay queued: start over at the head.
            set_peek_off(self.fd.as_fd(), 0)?;
        }
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
    if meta.truncated && meta.fds == 0 && kind == Some(SOCKET) {
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
        Some(HELLO) if bytes.len() == HEADER_LEN && meta.fds == 0 => match meta.pid {
            Some(pid) => Peeked::Hello(pid),
            None => invalid("the peer's announcement names no process visible here"),
        },
        Some(MOVED) if bytes.len() == HEADER_LEN && meta.fds == 0 => Peeked::Moved,
        Some(SOCKET) if bytes.len() == RECORD_LEN && meta.fds == 1 => {
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
            match meta.fd {
                Some(fd) => Peeked::Socket(Ok((info, fd))),
                None => invalid("it carried no socket"),
            }
        }
        _ => invalid("it is not a well-formed sockshare channel record"),
    }
}

/// Peeks up to `BATCH` records into `rx`'s buffers in one `recvmmsg`, each past the one
/// before it (`SO_PEEK_OFF`, which the last consume left at the head). Blocks for the
/// first record when `wait`; an empty `Vec` means nothing is queued.
fn peek_batch(fd: BorrowedFd<'_>, rx: &mut Rx, wait: bool) -> Result<Vec<Meta>> {
    let mut iovs: [libc::iovec; BATCH] = std::array::from_fn(|_| libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    });
    // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (i, m) in msgs.iter_mut().enumerate() {
        iovs[i] = libc::iovec {
            iov_base: rx.bytes[i].as_mut_ptr().cast(),
            iov_len: RECORD_LEN + 1,
        };
        m.msg_hdr.msg_iov = &mut iovs[i];
        m.msg_hdr.msg_iovlen = 1;
        m.msg_hdr.msg_control = rx.control[i].as_mut_ptr().cast();
        m.msg_hdr.msg_controllen = CONTROL_SPACE as _;
    }
    let flags = libc::MSG_PEEK
        | libc::MSG_CMSG_CLOEXEC
        | if wait {
            libc::MSG_WAITFORONE
        } else {
            libc::MSG_DONTWAIT
        };
    let n = loop {
        // SAFETY: every header's iovec and control buffer point into `rx`'s buffers, which
        // are exclusively borrowed for the call and outlive it.
        let n = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as _,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n >= 0 {
            break n as usize;
        }
        match Errno::from_io_error(&std::io::Error::last_os_error()) {
            Some(Errno::INTR) => continue,
            Some(Errno::AGAIN) if !wait => return Ok(Vec::new()),
            e => {
                return Err(disconnected(
                    "receiving from the channel",
                    e.unwrap_or(Errno::IO),
                ))
            }
        }
    };
    let mut out = Vec::with_capacity(n);
    for m in msgs.iter().take(n) {
        let len = m.msg_len as usize;
        let mut meta = Meta {
            len: len.min(RECORD_LEN + 1),
            fd: None,
            fds: 0,
            uid: None,
            pid: None,
            truncated: m.msg_hdr.msg_flags & libc::MSG_CTRUNC != 0,
        };
        // SAFETY: the kernel wrote `msg_controllen` bytes of well-formed cmsgs into this
        // header's control buffer; CMSG_FIRSTHDR/NXTHDR stay inside it, and reads of
        // their data are unaligned-safe.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&m.msg_hdr);
            while !c.is_null() {
                let data = libc::CMSG_DATA(c);
                let payload = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                match ((*c).cmsg_level, (*c).cmsg_type) {
                    (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                        for k in 0..payload / 4 {
                            let raw = std::ptr::read_unaligned(data.cast::<i32>().add(k));
                            // The kernel installed this descriptor for us alone; extra
                            // ones (a broken peer) close at once.
                            let fd = OwnedFd::from_raw_fd(raw);
                            meta.fds += 1;
                            if meta.fd.is_none() {
                                meta.fd = Some(fd);
                            }
                        }
                    }
                    (libc::SOL_SOCKET, libc::SCM_CREDENTIALS) => {
                        let cred = std::ptr::read_unaligned(data.cast::<libc::ucred>());
                        meta.uid = Some(cred.uid);
                        meta.pid = (cred.pid > 0).then_some(cred.pid as u32);
                    }
                    _ => {}
                }
                c = libc::CMSG_NXTHDR(&m.msg_hdr, c);
            }
        }
        if len == 0 && meta.fds == 0 && meta.uid.is_none() {
            // A zero-length read with nothing attached: the peer closed its end.
            if out.is_empty() {
                return Err(Error::new(
                    ErrorKind::NetDown,
                    "the channel's other end was closed",
                ));
            }
            break;
        }
        out.push(meta);
    }
    Ok(out)
}

/// Consumes `count` records from the head of the queue without taking their descriptors
/// (the kernel drops its references; the peeked copies are what we keep).
fn consume_records(fd: BorrowedFd<'_>, count: usize) -> Result<()> {
    if count == 0 {
        return Ok(());
    }
    // SAFETY: mmsghdr is plain data; all-zero is a valid empty header (no iov, no
    // control), so each record is consumed whole (seqpacket) and truncated to nothing.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let count = count.min(BATCH);
    let mut done = 0;
    while done < count {
        // SAFETY: `msgs[done..]` are empty headers (no iov, no control) owned by us.
        let n = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                msgs[done..].as_mut_ptr(),
                (count - done) as _,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n > 0 {
            done += n as usize;
            continue;
        }
        match Errno::from_io_error(&std::io::Error::last_os_error()) {
            Some(Errno::INTR) => {}
            e => {
                return Err(disconnected(
                    "consuming records from the channel",
                    e.unwrap_or(Errno::IO),
                ))
            }
        }
    }
    Ok(())
}

fn set_peek_off(fd: BorrowedFd<'_>, off: i32) -> Result<()> {
    // SAFETY: SO_PEEK_OFF takes an int; `off` lives for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEEK_OFF,
            (&off as *const i32).cast(),
            std::mem::size_of::<i32>() as _,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(os_error(
            "setting the channel's peek offset",
            std::io::Error::last_os_error(),
        ))
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
