//! [`Channel`]: sockshare's own IPC, carrying sockets between processes, each received with
//! its protocol info.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::error::Result;
use crate::info::ProtocolInfo;
use crate::socket::SharedSocket;
use crate::sys;

/// One end of a connection that carries sockets between two processes, each received
/// with the protocol info made for the receiving process. Linux only.
///
/// Where [`duplicate`](crate::duplicate) leaves the info to travel by the caller's IPC,
/// a channel is that IPC: no session is needed, and a handoff costs one message. The
/// guarantees are those of a session: the info names the process that receives the
/// socket; [`recv`](Channel::recv) refuses (with `WSAEINVAL`, closing what came) a
/// sender that is neither of this process's user nor root; and a receiver out of
/// descriptors gets `WSAEMFILE` with the socket still queued, never lost.
///
/// Make a pair with [`Channel::pair`] and hand one end to another process as a
/// descriptor ([`OwnedFd::from`]); that process takes it up with
/// [`Channel::from`]`(fd)`. A socket sent belongs to whichever process holds the other
/// end when it is received, so ends may be handed on at any time, with sockets in them:
/// none is lost on the way (see [`From<Channel> for OwnedFd`](#impl-From<Channel>-for-OwnedFd)).
///
/// Both directions may be used from two threads at once: a thread waiting in `recv`
/// does not hold up another thread's `send`, nor the reverse.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::net::{TcpListener, UdpSocket};
/// let (source, target) = sockshare::Channel::pair()?;
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// source.send(&listener)?;
/// drop(listener); // the socket travels on its own now
///
/// let (info, shared) = target.recv()?;
/// assert!(info.kind().is_tcp());
/// let listener = TcpListener::try_from(shared)?;
/// # let _ = listener.local_addr()?;
/// # let _ = UdpSocket::bind("127.0.0.1:0")?;
/// # Ok(()) }
/// ```
pub struct Channel {
    inner: sys::Channel,
}

impl Channel {
    /// A connected pair of ends, both held by this process until one is handed over.
    ///
    /// # Errors
    ///
    /// `WSAENOBUFS` or `WSAEMFILE` when the kernel cannot make the pair.
    pub fn pair() -> Result<(Channel, Channel)> {
        let (a, b) = sys::Channel::pair()?;
        Ok((Channel { inner: a }, Channel { inner: b }))
    }

    /// Takes up an end handed to this process (from [`pair`](Channel::pair) in another
    /// process, by inheritance or `SCM_RIGHTS`). Sockets sent to the end before are
    /// received here, even when the other end has been closed since.
    ///
    /// # Errors
    ///
    /// `WSAENOTSOCK` when `fd` is not a socket.
    pub fn adopt(fd: OwnedFd) -> Result<Channel> {
        let (inner, set_up) = sys::Channel::adopt(fd);
        set_up?;
        Ok(Channel { inner })
    }

    /// Sends a descriptor for `socket`, for the process that will hold the other end when
    /// it receives. When it returns, the socket is in the channel: the caller may close
    /// it. The other end need not be taken up yet.
    ///
    /// When the other end's queue is full, waits for room at most 100 ms (as
    /// [`duplicate`](crate::duplicate) does for a full session queue).
    ///
    /// # Errors
    ///
    /// Nothing was sent (the caller still owns its socket): `WSAENOTSOCK` when
    /// `socket` is not a socket; `WSAENETDOWN` when the other end is closed; `WSAENOBUFS`
    /// when the queue stayed full (the other end receives too slowly, or not at all: send
    /// again later) or the kernel refuses more descriptors in flight.
    pub fn send(&self, socket: impl AsFd) -> Result<()> {
        let fd = socket.as_fd();
        let kind = sys::socket_kind(fd)?;
        self.inner.send(fd, kind)
    }

    /// Receives the next socket and its info, waiting for one.
    ///
    /// # Errors
    ///
    /// `WSAEINVAL` when what came is refused (sender not allowed by the default
    /// policy, damaged record; what it carried is closed, and the next `recv` goes on
    /// with the next message); `WSAEMFILE` when this process is
    /// out of descriptors (the socket stays queued: receive again once descriptors are
    /// free); `WSAENETDOWN` when the other end is closed.
    pub fn recv(&self) -> Result<(ProtocolInfo, SharedSocket)> {
        let (info, fd) = self.inner.recv()?;
        let info = ProtocolInfo(info);
        let kind = info.kind();
        Ok((info, SharedSocket::new(fd, kind)))
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("fd", &std::os::fd::AsRawFd::as_raw_fd(&self.as_fd()))
            .finish()
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

/// Takes up an end handed to this process, as [`Channel::adopt`] does; a failure (`fd` is
/// not a socket) is reported by the first `send` or `recv`.
impl From<OwnedFd> for Channel {
    fn from(fd: OwnedFd) -> Channel {
        Channel {
            inner: sys::Channel::adopt(fd).0,
        }
    }
}

/// Gives the end away, to hand it to another process. Every socket that
/// [`recv`](Channel::recv) has not returned here stays in it, and the process that takes
/// it up next receives those and the ones the other end sends meanwhile. Closing the
/// descriptor instead closes them.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::net::UdpSocket;
/// use std::os::fd::OwnedFd;
/// let (a, b) = sockshare::Channel::pair()?;
/// let fd = OwnedFd::from(b); // say, for a worker to inherit
/// let udp = UdpSocket::bind("127.0.0.1:0")?;
/// a.send(&udp)?; // queued for whoever takes the end up
///
/// let b = sockshare::Channel::adopt(fd)?; // here the same process, for brevity
/// let (info, _shared) = b.recv()?;
/// assert_eq!(info.target_pid(), std::process::id());
/// # Ok(()) }
/// ```
impl From<Channel> for OwnedFd {
    fn from(c: Channel) -> OwnedFd {
        c.inner.into_fd()
    }
}
