//! The records serve sends a worker on its channel, in their two forms, and how each side
//! sends and receives them.
//!
//! Every record starts with the same 16 bytes, the [`Hand`]: `u64` sequence number, `u32`
//! listener index, `u32` zero (native byte order). Then, by what the worker's ledger asks
//! for (see [`Ledger::ask_for_descriptors`](super::Ledger::ask_for_descriptors)):
//!
//! - **an info record** ([`HAND_SIZE`] bytes, nothing attached): the header, then the
//!   372-byte `WSAPROTOCOL_INFOA` that `sockshare::duplicate` made for the worker's pid.
//!   The worker redeems it with `WSASocketA` (or [`Session::redeem`](crate::Session::redeem)),
//!   which takes the socket from the worker's session. Every worker can take these; serve
//!   sends them unless the worker asked for the other form.
//! - **a descriptor record** ([`HEADER_SIZE`] bytes): the header alone, with the
//!   connection's descriptor attached (`SCM_RIGHTS`). One message per connection instead
//!   of two (the push into the worker's session, then the record), for workers that asked
//!   for it: [`Worker`](super::Worker) does.
//!
//! A worker that asked for descriptors takes both forms, in any order (serve reads the
//! ledger's request at its next hand-out), so the request can never strand a connection.
//!
//! # Who may send a connection
//!
//! Only a holder of serve's end can write to the channel, and serve made the pair and
//! keeps its end to itself. On top of that, the worker checks every record's credentials
//! (`SCM_CREDENTIALS`, which the kernel fills in and a process that is not root cannot
//! forge) against the process that made the channel (`SO_PEERCRED`, read once when the
//! worker starts): a record from any other process is refused and what it carried is
//! closed. So a connection comes from serve alone, whichever form carries it.
//!
//! # Never lost on the worker's side
//!
//! A record is peeked first (the kernel installs a copy of its descriptor and keeps the
//! record queued), then consumed, with the loss-free receiving that sessions and
//! channels use (`sys::linux::batch`). A worker whose descriptor table is full gets `EMFILE`
//! with the record still queued; it takes it on a later call. An info record is off the
//! queue before its redeem can find the table full; the worker keeps it then, and redeems
//! it before it receives another. Serve keeps its own descriptor until the ledger shows
//! the connection taken, whatever happens on the way.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

use crate::info::INFO_A_SIZE;
use crate::sys::batch::{self, Batch};

/// The size of a record's header, and of a whole descriptor record.
pub const HEADER_SIZE: usize = 16;
/// The size of an info record: the header, then the `WSAPROTOCOL_INFOA`.
pub const HAND_SIZE: usize = HEADER_SIZE + INFO_A_SIZE;

/// Descriptors a peek makes room for: one is valid, more show a broken sender (and are
/// closed with the record).
const MAX_FDS: usize = 4;

/// Which connection a record hands over: the header every record starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hand {
    /// 1, 2, ... per worker.
    pub seq: u64,
    /// Which dispatched listener the connection came from.
    pub listener: u32,
}

/// What came with a record: the info to redeem, or the descriptor itself.
#[derive(Debug)]
pub(super) enum Carried {
    Info(Box<[u8; INFO_A_SIZE]>),
    Descriptor(OwnedFd),
}

impl Hand {
    /// The header's bytes: a whole descriptor record.
    #[must_use]
    pub fn header(&self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        out[..8].copy_from_slice(&self.seq.to_ne_bytes());
        out[8..12].copy_from_slice(&self.listener.to_ne_bytes());
        out
    }

    /// A whole info record: the header, then `info` (A form).
    #[must_use]
    pub fn with_info(&self, info: &[u8; INFO_A_SIZE]) -> [u8; HAND_SIZE] {
        let mut out = [0u8; HAND_SIZE];
        out[..HEADER_SIZE].copy_from_slice(&self.header());
        out[HEADER_SIZE..].copy_from_slice(info);
        out
    }

    /// The header a record starts with; `None` when it is shorter or its reserved word is
    /// not zero.
    #[must_use]
    pub fn from_header(bytes: &[u8]) -> Option<Hand> {
        let header = bytes.get(..HEADER_SIZE)?;
        (header[12..16] == [0; 4]).then(|| Hand {
            seq: u64::from_ne_bytes(header[..8].try_into().expect("8 bytes")),
            listener: u32::from_ne_bytes(header[8..12].try_into().expect("4 bytes")),
        })
    }

    /// Serve's side: sends a descriptor record carrying `conn` on `channel`, without
    /// waiting for room. When it returns `Ok`, the worker's queue holds the connection.
    ///
    /// # Errors
    ///
    /// `sendmsg(2)`'s: `EAGAIN` when the worker's queue is full, `EPIPE` when its end is
    /// closed. Nothing was queued then.
    pub fn send_descriptor(&self, channel: BorrowedFd<'_>, conn: BorrowedFd<'_>) -> io::Result<()> {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let fds = [conn];
        control.push(SendAncillaryMessage::ScmRights(&fds));
        rustix::net::sendmsg(
            channel,
            &[IoSlice::new(&self.header())],
            &mut control,
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        )?;
        Ok(())
    }

    /// Serve's side: sends an info record on `channel`, without waiting for room.
    ///
    /// # Errors
    ///
    /// As [`send_descriptor`](Self::send_descriptor).
    pub fn send_info(&self, channel: BorrowedFd<'_>, info: &[u8; INFO_A_SIZE]) -> io::Result<()> {
        rustix::net::send(
            channel,
            &self.with_info(info),
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        )?;
        Ok(())
    }
}

/// The peek buffers `receive` needs, made once per worker.
pub(super) fn buffers() -> Batch {
    Batch::new(1, HAND_SIZE, MAX_FDS, true)
}

/// The worker's side: the next record on `channel` (waiting for one if the channel
/// blocks), taken off the queue; `Ok(None)` at the channel's end. Takes records one at a
/// time, peeked with `batch` then consumed (the channel needs `SO_PEEK_OFF` at 0): the
/// caller holds the order lock.
///
/// # Errors
///
/// `EMFILE` (the record stays queued: nothing is lost), `PermissionDenied` for a sender
/// other than `serve` (a pid) and `InvalidData` for a record of neither form (each taken
/// off the queue, whatever it carried closed), `WouldBlock` on a nonblocking channel
/// with nothing queued, or the receive's error.
pub(super) fn receive(
    channel: BorrowedFd<'_>,
    serve: u32,
    batch: &mut Batch,
) -> io::Result<Option<(Hand, Carried)>> {
    let meta = match batch.peek(channel, true) {
        Ok(metas) => metas.into_iter().next().ok_or(Errno::AGAIN)?,
        Err(Errno::PIPE) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let len = meta.len;
    if len == HEADER_SIZE && meta.truncated && meta.fds.is_empty() {
        // Left queued for a later call, the peek offset back on it; the error says so by
        // its number.
        batch::consume(channel, 0, 1)?;
        return Err(Errno::MFILE.into());
    }
    batch::consume(channel, 1, 1)?;
    if meta.pid != Some(serve) {
        let who = meta
            .pid
            .map_or("a sender without credentials".to_owned(), |pid| {
                format!("process {pid}")
            });
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "a record from {who}, not from serve (process {serve}): refused, and what \
                 it carried closed"
            ),
        ));
    }
    let damaged = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a record of {len} bytes from serve, neither form"),
        )
    };
    let bytes = batch.record(&meta);
    let hand = Hand::from_header(bytes).ok_or_else(damaged)?;
    let carried = match (len, <[OwnedFd; 1]>::try_from(meta.fds)) {
        (HEADER_SIZE, Ok([fd])) => Carried::Descriptor(fd),
        (HAND_SIZE, Err(none)) if none.is_empty() => Carried::Info(Box::new(
            bytes[HEADER_SIZE..HAND_SIZE]
                .try_into()
                .expect("INFO_A_SIZE bytes"),
        )),
        _ => return Err(damaged()),
    };
    Ok(Some((hand, carried)))
}
