//! The tokio side: a worker whose `accept` is a future, and connections that are tokio
//! streams.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Connection, Shared, Worker};

/// The channel as tokio's reactor sees it; the descriptor stays owned by `Shared`.
struct Channel(Arc<Shared>);

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.0.channel.as_raw_fd()
    }
}

/// A dispatched connection as a tokio stream.
#[derive(Debug)]
pub enum AsyncStream {
    /// From a `tcp:` listener.
    Tcp(tokio::net::TcpStream),
    /// From a `unix:` listener.
    Unix(tokio::net::UnixStream),
}

impl AsFd for AsyncStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            AsyncStream::Tcp(s) => s.as_fd(),
            AsyncStream::Unix(s) => s.as_fd(),
        }
    }
}

/// [`Worker`] for tokio: [`AsyncWorker::accept`] waits without blocking a thread.
pub struct AsyncWorker {
    worker: Worker,
    channel: AsyncFd<Channel>,
}

impl Worker {
    /// The same worker for tokio. Call it inside a runtime.
    ///
    /// # Errors
    ///
    /// Registering the channel with tokio's reactor failed.
    pub fn into_async(self) -> io::Result<AsyncWorker> {
        rustix::io::ioctl_fionbio(&self.shared.channel, true)?;
        // SAFETY: the channel's descriptor is owned by `Shared`, which the Arc inside
        // `Channel` keeps alive, unchanged and open for as long as the AsyncFd lives
        // (the worker's connections hold the Arc too, and nothing closes it early).
        let channel = unsafe {
            AsyncFd::register_with_interest(
                Channel(self.shared.clone()),
                tokio::io::Interest::READABLE,
            )
        }
        .map_err(io::Error::from)?;
        Ok(AsyncWorker {
            worker: self,
            channel,
        })
    }
}

impl AsyncWorker {
    /// Waits for the next connection and takes it; `Ok(None)` once serve has ended the
    /// channel. As [`Worker::accept`], with a tokio stream.
    ///
    /// # Errors
    ///
    /// As [`Worker::accept`].
    pub async fn accept(&self) -> io::Result<Option<Connection<AsyncStream>>> {
        let shared = &self.worker.shared;
        loop {
            let mut ready = self.channel.readable().await?;
            // Not held across an await: the receive and the take happen at once, or
            // the guard is dropped before waiting again. A record held for want of a
            // descriptor is received first; the channel stays ready for it, as only a
            // receive that would block (so held nothing) clears the readiness.
            let mut rx = shared.lock_order();
            match ready.try_io(|c| c.get_ref().0.receive(&mut rx)) {
                Ok(received) => return self.finish(&mut rx, received?),
                Err(_would_block) => continue,
            }
        }
    }

    /// Takes the connection of a record, as a tokio stream.
    fn finish(
        &self,
        rx: &mut super::Rx,
        received: Option<(super::Hand, super::Carried)>,
    ) -> io::Result<Option<Connection<AsyncStream>>> {
        let Some(conn) = self.worker.take(rx, received)? else {
            return Ok(None);
        };
        conn.map(|stream| {
            Ok(match stream {
                super::Stream::Tcp(s) => {
                    s.set_nonblocking(true)?;
                    AsyncStream::Tcp(tokio::net::TcpStream::from_std(s)?)
                }
                super::Stream::Unix(s) => {
                    s.set_nonblocking(true)?;
                    AsyncStream::Unix(tokio::net::UnixStream::from_std(s)?)
                }
            })
        })
        .map(Some)
    }

    /// Tells serve this worker is ready, as [`Worker::notify_ready`].
    ///
    /// # Errors
    ///
    /// `NOTIFY_SOCKET` unset or unusable.
    pub fn notify_ready(&self) -> io::Result<()> {
        self.worker.notify_ready()
    }

    /// The names of the dispatched listeners, by index, as
    /// [`Worker::listener_names`]. (The blocking [`Worker::accept`] is not offered
    /// here: the channel is nonblocking once tokio has it.)
    #[must_use]
    pub fn listener_names(&self) -> &[String] {
        self.worker.listener_names()
    }
}

impl AsyncRead for AsyncStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AsyncStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            AsyncStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for AsyncStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AsyncStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            AsyncStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AsyncStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            AsyncStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AsyncStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            AsyncStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl<S: AsFd + AsyncRead + Unpin> AsyncRead for Connection<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl<S: AsFd + AsyncWrite + Unpin> AsyncWrite for Connection<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
