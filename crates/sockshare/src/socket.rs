//! The target's own descriptor for a shared socket, and its typed conversions.

use std::fmt;
#[cfg(unix)]
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
#[cfg(windows)]
use std::os::windows::io::{AsRawSocket, AsSocket, BorrowedSocket, OwnedSocket, RawSocket};

use crate::info::SocketKind;
use crate::os::OwnedSock;

/// A descriptor the target created from a protocol info: an independent handle to the
/// same socket the source holds (options, nonblocking mode and queued data are shared;
/// the socket closes when the last handle closes).
///
/// It is an `OwnedFd` on Unix and an `OwnedSocket` on Windows.
/// Convert it without `unsafe` into the type you expect. The conversions check the
/// socket's kind and hand the socket back on a mismatch, so it is never lost:
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::net::{TcpListener, UdpSocket};
/// # let session = sockshare::Session::new()?;
/// # let listener = TcpListener::bind("127.0.0.1:0")?;
/// # let info = sockshare::duplicate(&listener, std::process::id())?;
/// let shared = session.redeem(&info)?;
/// let shared = match UdpSocket::try_from(shared) {
///     Ok(_) => unreachable!("it is a TCP listener"),
///     Err(mismatch) => mismatch.into_socket(), // nothing lost
/// };
/// let listener = TcpListener::try_from(shared)?;
/// # drop(listener);
/// # Ok(()) }
/// ```
pub struct SharedSocket {
    fd: OwnedSock,
    kind: SocketKind,
}

impl SharedSocket {
    pub(crate) fn new(fd: OwnedSock, kind: SocketKind) -> SharedSocket {
        SharedSocket { fd, kind }
    }

    /// Family, type and protocol of the socket.
    #[must_use]
    pub fn kind(&self) -> SocketKind {
        self.kind
    }

    /// The descriptor, for use with any API that takes one (Unix only; on Windows see
    /// `into_owned_socket`).
    #[cfg(unix)]
    #[must_use]
    pub fn into_owned_fd(self) -> OwnedFd {
        self.fd
    }

    /// The socket handle, for use with any API that takes one (Windows only; on Unix see
    /// `into_owned_fd`).
    #[cfg(windows)]
    pub fn into_owned_socket(self) -> OwnedSocket {
        self.fd
    }
}

impl fmt::Debug for SharedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("SharedSocket");
        #[cfg(unix)]
        d.field("fd", &self.fd.as_raw_fd());
        #[cfg(windows)]
        d.field("socket", &self.fd.as_raw_socket());
        d.field("kind", &self.kind).finish()
    }
}

#[cfg(unix)]
impl AsFd for SharedSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(unix)]
impl AsRawFd for SharedSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(unix)]
impl From<SharedSocket> for OwnedFd {
    fn from(s: SharedSocket) -> OwnedFd {
        s.fd
    }
}

#[cfg(windows)]
impl AsSocket for SharedSocket {
    fn as_socket(&self) -> BorrowedSocket<'_> {
        self.fd.as_socket()
    }
}

#[cfg(windows)]
impl AsRawSocket for SharedSocket {
    fn as_raw_socket(&self) -> RawSocket {
        self.fd.as_raw_socket()
    }
}

#[cfg(windows)]
impl From<SharedSocket> for OwnedSocket {
    fn from(s: SharedSocket) -> OwnedSocket {
        s.fd
    }
}

impl From<SharedSocket> for socket2::Socket {
    fn from(s: SharedSocket) -> socket2::Socket {
        socket2::Socket::from(s.fd)
    }
}

/// A [`SharedSocket`] was converted into a type of another kind of socket. The socket
/// is inside: take it back with [`into_socket`](KindMismatch::into_socket).
#[derive(Debug, thiserror::Error)]
#[error("the shared socket is {kind:?}, which is not a {wanted}", kind = socket.kind)]
pub struct KindMismatch {
    socket: SharedSocket,
    wanted: &'static str,
}

impl KindMismatch {
    /// The socket that did not convert.
    #[must_use]
    pub fn into_socket(self) -> SharedSocket {
        self.socket
    }

    /// The type that was asked for.
    #[must_use]
    pub fn wanted(&self) -> &'static str {
        self.wanted
    }
}

impl From<KindMismatch> for std::io::Error {
    fn from(e: KindMismatch) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
    }
}

macro_rules! checked_conversion {
    ($($ty:path => $check:ident;)*) => {$(
        impl TryFrom<SharedSocket> for $ty {
            type Error = KindMismatch;

            fn try_from(s: SharedSocket) -> Result<$ty, KindMismatch> {
                if s.kind.$check() {
                    Ok(<$ty>::from(s.fd))
                } else {
                    Err(KindMismatch { socket: s, wanted: stringify!($ty) })
                }
            }
        }
    )*};
}

#[cfg(unix)]
impl SocketKind {
    fn is_unix_stream(&self) -> bool {
        self.is_unix() && self.is_stream()
    }

    fn is_unix_datagram(&self) -> bool {
        self.is_unix() && self.is_datagram()
    }
}

checked_conversion! {
    std::net::TcpListener => is_tcp;
    std::net::TcpStream => is_tcp;
    std::net::UdpSocket => is_udp;
}

// std has Unix-domain socket types on Unix only (Windows' AF_UNIX sockets convert into
// socket2::Socket or OwnedSocket).
#[cfg(unix)]
checked_conversion! {
    std::os::unix::net::UnixListener => is_unix_stream;
    std::os::unix::net::UnixStream => is_unix_stream;
    std::os::unix::net::UnixDatagram => is_unix_datagram;
}

#[cfg(feature = "tokio")]
mod tokio_conversions {
    use super::SharedSocket;
    use std::io;

    macro_rules! tokio_conversion {
        ($($name:ident: $std:path => $tokio:path;)*) => {$(
            #[doc = concat!("Converts into a [`", stringify!($tokio), "`], switching the shared ")]
            #[doc = "socket to nonblocking mode (which the other process sees too, as on Windows)."]
            #[doc = ""]
            #[doc = "Fails if the socket is of another kind: the `io::Error` wraps a"]
            #[doc = "[`KindMismatch`](crate::KindMismatch) that gives the socket back. Panics outside a"]
            #[doc = "tokio runtime, as tokio's `from_std` does."]
            pub fn $name(self) -> io::Result<$tokio> {
                let std = <$std>::try_from(self)?;
                std.set_nonblocking(true)?;
                <$tokio>::from_std(std)
            }
        )*};
    }

    impl SharedSocket {
        tokio_conversion! {
            into_tokio_tcp_listener: std::net::TcpListener => tokio::net::TcpListener;
            into_tokio_tcp_stream: std::net::TcpStream => tokio::net::TcpStream;
            into_tokio_udp_socket: std::net::UdpSocket => tokio::net::UdpSocket;
        }
    }

    #[cfg(unix)]
    impl SharedSocket {
        tokio_conversion! {
            into_tokio_unix_listener: std::os::unix::net::UnixListener => tokio::net::UnixListener;
            into_tokio_unix_stream: std::os::unix::net::UnixStream => tokio::net::UnixStream;
            into_tokio_unix_datagram: std::os::unix::net::UnixDatagram => tokio::net::UnixDatagram;
        }
    }
}
