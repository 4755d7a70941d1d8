//! The worker's side of `sockshare serve --dispatch`: one process accepts, workers serve.
//!
//! Serve accepts each connection and hands it to one worker over a channel the worker
//! inherited, with a sequence number, in one of two forms: an
//! info that [`duplicate`](crate::duplicate) made for the worker's pid, which the worker
//! redeems from its session (what a C worker does with `WSASocketA`), or, for a worker
//! that asked for it in its ledger (as [`Worker`] does), the descriptor itself in the
//! same message, one message per connection instead of two. Either way the worker
//! records in its [`Ledger`], a page of memory it shares with serve, that it has *taken*
//! that connection (serve then drops its own reference), and later that it is *done*
//! with one (serve's load count). Serve hands each new connection to the worker with the
//! fewest connections handed and not done; a worker with too many not yet taken gets
//! none until it catches up, and the connections a worker dies without taking go to
//! another worker.
//!
//! [`Worker`] does all of that: [`Worker::accept`] returns the next connection, and the
//! [`Connection`] counts itself done when dropped.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! use std::io::{Read, Write};
//!
//! let worker = sockshare::dispatch::Worker::from_env()?;
//! worker.notify_ready()?; // READY=1 on NOTIFY_SOCKET, as serve waits for
//! while let Some((mut conn, peer)) = worker.accept_tcp()? {
//!     let mut request = [0u8; 512];
//!     let n = conn.read(&mut request)?;
//!     conn.write_all(format!("{n} bytes from {peer}\n").as_bytes())?;
//! } // dropped: serve counts it done
//! // The channel ended: serve wants this worker to finish and exit.
//! # Ok(()) }
//! ```
//!
//! # The protocol, for programs in other languages
//!
//! The channel is a `SOCK_SEQPACKET` Unix socket at the descriptor in
//! `SOCKSHARE_DISPATCH_FD`; the ledger is a memory file at the descriptor in
//! `SOCKSHARE_DISPATCH_LEDGER_FD`, to map shared, read-write, [`LEDGER_SIZE`] bytes (its
//! layout is in [`Ledger`]'s module: `u64 taken` at 0, `u64 done` at 8, `u64 asks` at
//! 16);
//! `SOCKSHARE_DISPATCH_NAMES` names the dispatched listeners, `:`-separated, in the
//! order of their indices. All integers are in the machine's byte order (serve and worker
//! run on one machine).
//!
//! - Serve to worker, one record per connection, in the form the ledger asks for (its
//!   `asks` word at 16; a worker that leaves it zero gets info records only): an info
//!   record of [`HAND_SIZE`] bytes, `u64` sequence number (1, 2, ... per worker), `u32`
//!   listener index, `u32` zero, then the 372-byte `WSAPROTOCOL_INFOA` to give
//!   `WSASocketA` (or [`ProtocolInfo::from_bytes`]); or a descriptor record, those first
//!   [`HEADER_SIZE`] bytes alone with the connection attached (`SCM_RIGHTS`).
//! - The worker takes records one at a time: it receives one, redeems the info (or takes
//!   the descriptor), stores the record's sequence number in `taken` (an atomic store,
//!   release order), and only then receives the next one or does any I/O on the
//!   connection. A worker that dies before the store has done nothing with the
//!   connection, so serve hands it to another worker without it ever being served twice;
//!   serve closes its own descriptor of every connection up to `taken`.
//! - When it has finished a connection (shut it down and closed it), the worker adds one
//!   to `done` (atomic add, release order): serve's count of its load.
//! - The end of the channel (a read of 0 bytes) means: finish what you hold and exit.
//! - [`Worker`] takes a record only from the process that made the channel (serve), by
//!   the credentials the kernel attaches to it, and peeks before it consumes, so a full
//!   descriptor table leaves the connection queued (`EMFILE`) rather than lost; an info
//!   whose redeem finds the table full (`WSAEMFILE`: the socket stays in the session) is
//!   kept and redeemed first at the next call. (A C worker may call `WSASocketA` on the
//!   info again before it reads another record, or, as `examples/c/dispatch_worker.c`
//!   does, exit without recording it taken: serve gives it to another worker.)
//!
//! The worker never writes to the channel; serve reads the ledger when it hands out
//! connections and when a worker exits, at least every few milliseconds while it holds
//! connections not yet taken.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rustix::io::Errno;

use crate::info::INFO_A_SIZE;
use crate::sys::batch::Batch;
use crate::{ErrorKind, ProtocolInfo, Session, SocketKind};

mod connection;
mod ledger;
mod record;
#[cfg(feature = "tokio")]
mod tokio_worker;
pub use connection::{Connection, Stream};
pub use ledger::{Ledger, LEDGER_SIZE};
use record::Carried;
pub use record::{Hand, HAND_SIZE, HEADER_SIZE};

/// The variable that gives the channel's descriptor.
pub const FD_VAR: &str = "SOCKSHARE_DISPATCH_FD";
/// The variable that gives the ledger's descriptor.
pub const LEDGER_VAR: &str = "SOCKSHARE_DISPATCH_LEDGER_FD";
/// The variable that names the dispatched listeners, `:`-separated.
pub const NAMES_VAR: &str = "SOCKSHARE_DISPATCH_NAMES";
/// What a worker's connections share: the channel and the ledger.
#[derive(Debug)]
struct Shared {
    channel: OwnedFd,
    ledger: Ledger,
    /// The pid of the process that made the channel, serve: the one sender taken (see
    /// `record`).
    serve: u32,
    /// Held from receiving a record to recording it taken, so records are taken in order
    /// even when several threads accept (the ledger's first rule).
    order: Mutex<Rx>,
}

/// What the order lock guards: what receiving a record and taking its connection use.
struct Rx {
    batch: Batch,
    kinds: Kinds,
    /// An info record already off the channel whose redeem found no free descriptor
    /// (`EMFILE`): its socket waits in the session, and the next accept redeems it before
    /// it receives anything else, so it keeps its place in the order.
    held: Option<(Hand, Box<[u8; INFO_A_SIZE]>)>,
}

impl std::fmt::Debug for Rx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The peek buffers are scratch space.
        f.debug_struct("Rx")
            .field("kinds", &self.kinds)
            .finish_non_exhaustive()
    }
}

/// The kind of each dispatched listener's connections, once one has come: every
/// connection of a listener is of the same kind, so a descriptor record costs no
/// `getsockopt` after the first.
#[derive(Debug)]
struct Kinds(Vec<Option<SocketKind>>);

impl Kinds {
    /// The kind of `fd`, a connection of listener `listener`.
    fn of(&mut self, listener: u32, fd: BorrowedFd<'_>) -> io::Result<SocketKind> {
        let known = self.0.get_mut(listener as usize);
        if let Some(Some(kind)) = known {
            return Ok(*kind);
        }
        let kind = crate::sys::socket_kind(fd).map_err(io::Error::from)?;
        // Unnamed indices are not kept: a record cannot make this grow.
        if let Some(slot) = known {
            *slot = Some(kind);
        }
        Ok(kind)
    }
}

impl Shared {
    /// One connection done: serve's load count moves on.
    fn finished(&self) {
        self.ledger.add_done();
    }

    /// The next record: the held one, or one from the channel, waiting for it if the
    /// channel blocks; `None` at its end. Called with `order` held.
    fn receive(&self, rx: &mut Rx) -> io::Result<Option<(Hand, Carried)>> {
        match rx.held.take() {
            Some((hand, info)) => Ok(Some((hand, Carried::Info(info)))),
            None => record::receive(self.channel.as_fd(), self.serve, &mut rx.batch),
        }
    }

    fn lock_order(&self) -> MutexGuard<'_, Rx> {
        self.order.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The descriptor that variable `var` names, checked borrowed with `is_right` (so a wrong
/// number, one something else owns or none, is refused without being closed or
/// changed); `what` describes the right kind in the error.
fn inherited(var: &str, what: &str, is_right: impl Fn(BorrowedFd<'_>) -> bool) -> io::Result<i32> {
    let value = std::env::var(var).map_err(|_| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{var} is not set: not a worker of `sockshare serve --dispatch`"),
        )
    })?;
    let raw: i32 = value.parse().ok().filter(|&raw| raw >= 0).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{var}={value} is not a descriptor"),
        )
    })?;
    // SAFETY: the borrow lives for the check only; a closed number makes it fail with
    // EBADF, and nothing is closed or kept.
    if !is_right(unsafe { BorrowedFd::borrow_raw(raw) }) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{var}={raw} is not {what}"),
        ));
    }
    Ok(raw)
}

/// Owns descriptor `raw`, checked by `inherited`, made close-on-exec.
fn take_inherited(raw: i32) -> io::Result<OwnedFd> {
    // SAFETY: serve passed this open descriptor to this process for the worker, which is
    // the one taking it (`from_env` removes the variables first, so nothing takes it
    // twice).
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
    Ok(fd)
}

/// A worker of `sockshare serve --dispatch`: its session and its channel to serve.
#[derive(Debug)]
pub struct Worker {
    session: Session,
    shared: Arc<Shared>,
    names: Vec<String>,
}

impl Worker {
    /// The worker serve started this process as: takes the channel named by
    /// `SOCKSHARE_DISPATCH_FD` and maps the ledger named by `SOCKSHARE_DISPATCH_LEDGER_FD`
    /// (the channel made close-on-exec, the ledger's descriptor closed, the variables
    /// removed, so a program this one starts takes neither), and starts the process's
    /// session.
    ///
    /// # Errors
    ///
    /// `NotFound` when a variable is unset (not started by `serve --dispatch`),
    /// `InvalidInput` when one names no channel or no ledger (both are left as they
    /// were), or the session's error.
    pub fn from_env() -> io::Result<Worker> {
        // Both checked before either is taken: a wrong one leaves both untouched.
        let channel = inherited(FD_VAR, "an open SOCK_SEQPACKET socket", |fd| {
            rustix::net::sockopt::socket_type(fd) == Ok(rustix::net::SocketType::SEQPACKET)
        })?;
        let ledger = inherited(LEDGER_VAR, "a dispatch ledger", Ledger::is_ledger)?;
        let names = std::env::var(NAMES_VAR).unwrap_or_default();
        std::env::remove_var(FD_VAR);
        std::env::remove_var(LEDGER_VAR);
        std::env::remove_var(NAMES_VAR);
        let channel = take_inherited(channel)?;
        let ledger = Ledger::map(take_inherited(ledger)?)?;
        // Every record is checked against the sender's credentials (see `record`).
        rustix::net::sockopt::set_socket_passcred(&channel, true)?;
        let serve = rustix::net::sockopt::socket_peercred(&channel)?.pid;
        // Records are peeked, then consumed (see `record`).
        crate::sys::batch::set_peek_off(channel.as_fd(), 0)?;
        let session = Session::new().map_err(io::Error::from)?;
        ledger.ask_for_descriptors();
        let names: Vec<String> = names
            .split(':')
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        Ok(Worker {
            session,
            shared: Arc::new(Shared {
                channel,
                ledger,
                serve: serve.as_raw_nonzero().get() as u32,
                order: Mutex::new(Rx {
                    batch: record::buffers(),
                    kinds: Kinds(vec![None; names.len()]),
                    held: None,
                }),
            }),
            names,
        })
    }

    /// Tells serve this worker is ready: [`notify`]`("READY=1")`.
    ///
    /// # Errors
    ///
    /// `NOTIFY_SOCKET` unset or unusable.
    pub fn notify_ready(&self) -> io::Result<()> {
        notify("READY=1")
    }

    /// The names of the dispatched listeners, by index (`--listen NAME=...`).
    #[must_use]
    pub fn listener_names(&self) -> &[String] {
        &self.names
    }

    /// Waits for the next connection and takes it. `Ok(None)` once serve has ended the
    /// channel: finish the connections in hand and exit. Several threads may call it at
    /// once; each connection goes to one of them.
    ///
    /// # Errors
    ///
    /// - `EMFILE` (raw OS error) when this process has no free descriptor for the
    ///   connection: it stays queued, and a later call takes it;
    /// - `PermissionDenied` for a record from a process other than serve, `InvalidData`
    ///   for a damaged one (either is gone, whatever it carried closed, and the next
    ///   call goes on with the next record);
    /// - an info this worker's session refuses, or the channel's error.
    pub fn accept(&self) -> io::Result<Option<Connection<Stream>>> {
        let mut rx = self.shared.lock_order();
        let received = self.shared.receive(&mut rx)?;
        self.take(&mut rx, received)
    }

    /// Takes the connection a record hands over (`None` for the channel's end), and
    /// records it taken. Called with `order` held (`rx` is what it guards).
    fn take(
        &self,
        rx: &mut Rx,
        received: Option<(Hand, Carried)>,
    ) -> io::Result<Option<Connection<Stream>>> {
        let Some((hand, carried)) = received else {
            return Ok(None);
        };
        let (fd, kind) = match carried {
            Carried::Info(bytes) => {
                let info = ProtocolInfo::from_bytes(&bytes[..]).map_err(io::Error::from)?;
                match self.session.redeem(&info) {
                    Ok(socket) => {
                        let kind = socket.kind();
                        (socket.into_owned_fd(), kind)
                    }
                    Err(e) if e.kind() == ErrorKind::TooManyDescriptors => {
                        // The info stays valid: kept for the next call, as a descriptor
                        // record stays queued.
                        rx.held = Some((hand, bytes));
                        return Err(Errno::MFILE.into());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Carried::Descriptor(fd) => {
                let kind = rx.kinds.of(hand.listener, fd.as_fd());
                (fd, kind?)
            }
        };
        // Before the caller can do any I/O on it (see the module docs). A connection
        // refused below is closed here: taken and done, so serve closes its copy too.
        self.shared.ledger.set_taken(hand.seq);
        let stream = if kind.is_tcp() {
            Stream::Tcp(TcpStream::from(fd))
        } else if kind.is_unix() && kind.is_stream() {
            Stream::Unix(UnixStream::from(fd))
        } else {
            self.shared.finished();
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "serve handed a socket that is neither TCP nor a Unix stream",
            ));
        };
        Ok(Some(Connection {
            stream,
            listener: hand.listener as usize,
            shared: self.shared.clone(),
        }))
    }

    /// [`accept`](Self::accept) for TCP: the connection and its peer's address. Fails
    /// with `InvalidData` on a Unix connection (use `accept` when serve dispatches both).
    ///
    /// # Errors
    ///
    /// As `accept`, and `peer_addr`'s.
    pub fn accept_tcp(&self) -> io::Result<Option<(Connection<TcpStream>, SocketAddr)>> {
        let Some(conn) = self.accept()? else {
            return Ok(None);
        };
        let conn = conn.map(|stream| match stream {
            Stream::Tcp(tcp) => Ok(tcp),
            Stream::Unix(unix) => {
                // Ended for the client at once, as a dropped connection is.
                let _ = rustix::net::shutdown(&unix, rustix::net::Shutdown::Both);
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a Unix connection, not TCP",
                ))
            }
        })?;
        let peer = conn.peer_addr()?;
        Ok(Some((conn, peer)))
    }
}

impl AsFd for Worker {
    /// The channel, for a poll loop: readable when a connection (or the end) is waiting.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.shared.channel.as_fd()
    }
}

/// Sends `state` (lines of `KEY=VALUE`) to the service manager, as sd_notify(3) does:
/// one datagram to the Unix socket named by `NOTIFY_SOCKET` (a path, or `@` and an
/// abstract name). Serve reads `READY=1` and `STATUS=...` from its workers.
///
/// # Errors
///
/// `NotFound` when `NOTIFY_SOCKET` is unset; the errors of `sendto`.
pub fn notify(state: &str) -> io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let name = std::env::var("NOTIFY_SOCKET")
        .map_err(|_| io::Error::new(io::ErrorKind::NotFound, "NOTIFY_SOCKET is not set"))?;
    let addr = match name.strip_prefix('@') {
        Some(abstract_name) => std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?,
        None => std::os::unix::net::SocketAddr::from_pathname(&name)?,
    };
    std::os::unix::net::UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(feature = "tokio")]
pub use tokio_worker::{AsyncStream, AsyncWorker};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::info::INFO_A_SIZE;

    #[test]
    fn headers_round_trip_and_a_nonzero_reserved_word_is_refused() {
        let hand = Hand {
            seq: 7,
            listener: 2,
        };
        assert_eq!(Hand::from_header(&hand.header()), Some(hand));
        assert_eq!(
            Hand::from_header(&hand.with_info(&[9; INFO_A_SIZE])),
            Some(hand)
        );
        assert_eq!(Hand::from_header(&hand.header()[..HEADER_SIZE - 1]), None);
        let mut reserved = hand.header();
        reserved[13] = 1;
        assert_eq!(Hand::from_header(&reserved), None);
    }
}
