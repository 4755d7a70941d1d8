//! What a worker takes: the [`Connection`], which counts itself done when dropped, and
//! the [`Stream`] it holds.

use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use super::Shared;

/// A dispatched connection: TCP or Unix stream.
#[derive(Debug)]
pub enum Stream {
    /// From a `tcp:` listener.
    Tcp(TcpStream),
    /// From a `unix:` listener.
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

/// A connection a worker took: use it as the stream it holds (it derefs to it and reads
/// and writes through it). Dropping it ends the connection (`shutdown(SHUT_RDWR)`, then
/// `close`) and tells serve the worker is done with one connection, which is how serve
/// knows its load.
///
/// The shutdown is why the client sees the end at once: serve keeps its own descriptor of
/// a connection until it has read in the ledger that the worker took it, which may be after the
/// worker has finished; a `close` alone would leave the connection open until then, and
/// the client, not the server, would end it.
#[derive(Debug)]
pub struct Connection<S: AsFd> {
    pub(super) stream: S,
    pub(super) listener: usize,
    pub(super) shared: Arc<Shared>,
}

impl<S: AsFd> Connection<S> {
    /// The index of the listener it came from (see [`Worker::listener_names`](super::Worker::listener_names)).
    #[must_use]
    pub fn listener(&self) -> usize {
        self.listener
    }

    /// The same connection as another stream type. One whose conversion fails is gone
    /// (`convert` had the stream), and counted done like any other.
    pub(super) fn map<T: AsFd>(
        self,
        convert: impl FnOnce(S) -> io::Result<T>,
    ) -> io::Result<Connection<T>> {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped (ManuallyDrop), so each field is read out once
        // and owned here alone.
        let (stream, shared) =
            unsafe { (std::ptr::read(&this.stream), std::ptr::read(&this.shared)) };
        match convert(stream) {
            Ok(stream) => Ok(Connection {
                stream,
                listener: this.listener,
                shared,
            }),
            Err(e) => {
                shared.finished();
                Err(e)
            }
        }
    }
}

impl<S: AsFd> Drop for Connection<S> {
    fn drop(&mut self) {
        // Counted before the client can see the end: a client that waits for it and
        // connects again finds this worker's load already down.
        self.shared.finished();
        // Fails only when the connection is already reset or ended: nothing to do then.
        let _ = rustix::net::shutdown(self.stream.as_fd(), rustix::net::Shutdown::Both);
    }
}

impl<S: AsFd> Deref for Connection<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.stream
    }
}

impl<S: AsFd> DerefMut for Connection<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.stream
    }
}

impl<S: AsFd + Read> Read for Connection<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl<S: AsFd + Write> Write for Connection<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.stream.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

impl<S: AsFd> AsFd for Connection<S> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}
