//! [`Channel`]: sockshare's own IPC, carrying a socket and its protocol info in one message.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::error::Result;
use crate::info::ProtocolInfo;
use crate::socket::SharedSocket;
use crate::sys;

/// One end of a connection that carries sockets between two processes, each with the
/// protocol info made for the receiving process, in one message. Linux only.
///
/// Where [`duplicate`](crate::duplicate) leaves the info to travel by the caller's IPC,
/// a channel is that IPC: no session is needed, and a handoff costs one message. The
/// guarantees are those of a session: the info is made for the process holding the
/// other end; [`recv`](Channel::recv) refuses (with `WSAEINVAL`, closing what came) a
/// sender that is neither of this process's user nor root, and an info made for another
/// process; and a receiver out of descriptors gets `WSAEMFILE` with the socket still
/// queued, never lost.
///
/// Make a pair with [`Channel::pair`] and hand one end to another process as a
/// descriptor ([`OwnedFd::from`]); that process takes it up with
/// [`Channel::from`]`(fd)`, which tells the other end who holds it now (the kernel
/// vouches for the pid). Hand an end over before the other end first sends: a sender
/// learns its peer's process once.
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
    /// Fails with `WSAENOBUFS` or `WSAEMFILE` when the kernel cannot make the pair.
    pub fn pair() -> Result<(Channel, Channel)> {
        let (a, b) = sys::Channel::pair()?;
        Ok((Channel { inner: a }, Channel { inner: b }))
    }

    /// Takes up an end handed to this process (from [`pair`](Channel::pair) in another
    /// process, by inheritance or `SCM_RIGHTS`) and tells the other end that this process
    /// holds it now.
    ///
    /// Fails with `WSAENETDOWN` when the other end is closed, `WSAENOTSOCK` when `fd` is
    /// not a socket.
    pub fn adopt(fd: OwnedFd) -> Result<Channel> {
        let (inner, set_up) = sys::Channel::adopt(fd);
        set_up?;
        Ok(Channel { inner })
    }

    /// Sends a descriptor for `socket`, with the info made for the process holding the
    /// other end. When it returns, the socket is in the channel: the caller may close it.
    ///
    /// Waits (at most 10 s) for the other end to be taken up if it was handed to another
    /// process. Errors: `WSAENOTSOCK` when `socket` is not a socket; `WSAENETDOWN` when the
    /// other end is closed or nobody took it up; `WSAENOBUFS` when the kernel refuses
    /// more descriptors in flight.
    pub fn send(&self, socket: impl AsFd) -> Result<()> {
        let fd = socket.as_fd();
        let kind = sys::socket_kind(fd)?;
        self.inner.send(fd, kind)
    }

    /// Receives the next socket and its info, waiting for one.
    ///
    /// Errors: `WSAEINVAL` when what came is refused (sender not allowed by the default
    /// policy, info made for another process, damaged record; what it carried is closed,
    /// and the next `recv` goes on with the next message); `WSAEMFILE` when this process is
    /// out of descriptors (the socket stays queued: receive again once descriptors are
    /// free); `WSAENETDOWN` when the other end is closed.
    pub fn recv(&self) -> Result<(ProtocolInfo, SharedSocket)> {
        let (info, fd) = self.inner.recv()?;
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

/// Takes up an end handed to this process, as [`Channel::adopt`] does; a failure (the
/// other end is closed, `fd` is not a socket) is reported by the first `send` or `recv`.
impl From<OwnedFd> for Channel {
    fn from(fd: OwnedFd) -> Channel {
        Channel {
            inner: sys::Channel::adopt(fd).0,
        }
    }
}

/// Gives the end away, to hand it to another process: the other end waits for the new
/// holder's [`Channel::adopt`] before it sends again.
impl From<Channel> for OwnedFd {
    fn from(c: Channel) -> OwnedFd {
        c.inner.into_fd()
    }
}
