//! The sd_notify(3) protocol, both ways: the socket workers send `READY=1` to (serve's
//! own `NOTIFY_SOCKET` for them), and serve's messages to its own service manager.
//!
//! A message is one datagram of `KEY=VALUE` lines on a Unix datagram socket; the name in
//! `NOTIFY_SOCKET` is a path, or an abstract name written with a leading `@`. The kernel
//! tells the receiver who sent each one (`SO_PASSCRED`), which is how serve knows which
//! worker is ready: a message from a process that is not one of its workers is ignored.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

/// The largest message serve reads; longer ones are cut (systemd reads 4096 bytes too).
const MESSAGE_MAX: usize = 4096;

/// The socket workers notify, bound to a random abstract name so no other process can
/// hold the name first.
pub struct NotifySocket {
    fd: OwnedFd,
    /// The value of `NOTIFY_SOCKET` for workers.
    pub name: String,
}

/// One message: who sent it and its `KEY=VALUE` pairs.
pub struct Message {
    pub pid: u32,
    pub pairs: Vec<(String, String)>,
}

impl Message {
    /// Whether the message says `KEY=VALUE`.
    pub fn says(&self, key: &str, value: &str) -> bool {
        self.pairs.iter().any(|(k, v)| k == key && v == value)
    }

    /// The value of `KEY`, if the message has one.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl NotifySocket {
    /// Binds a datagram socket at `@sockshare-serve/<pid>/<random>`, with `SO_PASSCRED`.
    ///
    /// # Errors
    ///
    /// The errors of `socket`, `bind` or `setsockopt`.
    pub fn bind() -> io::Result<NotifySocket> {
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        rustix::net::sockopt::set_socket_passcred(&fd, true)?;
        let mut random = [0u8; 8];
        rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())?;
        let name = format!(
            "sockshare-serve/{}/{:016x}",
            std::process::id(),
            u64::from_ne_bytes(random)
        );
        rustix::net::bind(&fd, &SocketAddrUnix::new_abstract_name(name.as_bytes())?)?;
        Ok(NotifySocket {
            fd,
            name: format!("@{name}"),
        })
    }

    /// The next queued message, or `None` when none is. Descriptors a worker attaches
    /// (`FDSTORE=1`: serve keeps no store for its workers) are closed.
    ///
    /// # Errors
    ///
    /// The errors of `recvmsg` other than `EAGAIN`.
    pub fn receive(&self) -> io::Result<Option<Message>> {
        let mut bytes = [0u8; MESSAGE_MAX];
        let mut space =
            [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmCredentials(1), ScmRights(16))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = loop {
            match rustix::net::recvmsg(
                &self.fd,
                &mut [io::IoSliceMut::new(&mut bytes)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
            ) {
                Ok(got) => break got,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        };
        let mut pid = None;
        for message in control.drain() {
            match message {
                RecvAncillaryMessage::ScmCredentials(creds) => {
                    pid = Some(creds.pid.as_raw_nonzero().get() as u32);
                }
                // Dropped, so closed.
                RecvAncillaryMessage::ScmRights(fds) => fds.for_each(drop),
                _ => {}
            }
        }
        let Some(pid) = pid else {
            // Without credentials the sender is unknown: nothing to act on.
            return Ok(Some(Message {
                pid: 0,
                pairs: Vec::new(),
            }));
        };
        let text = String::from_utf8_lossy(&bytes[..got.bytes]);
        let pairs = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Ok(Some(Message { pid, pairs }))
    }
}

impl AsFd for NotifySocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Serve's own service manager, when it has one: the `NOTIFY_SOCKET` serve was started
/// with, and whether the unit keeps descriptors for it (`FDSTORE`, set by systemd 254 and
/// later when `FileDescriptorStoreMax=` is above 0).
pub struct Manager {
    fd: OwnedFd,
    addr: SocketAddrUnix,
    pub fd_store: bool,
}

impl Manager {
    /// The manager named by `NOTIFY_SOCKET`, if any. The variables are removed from the
    /// environment: they are serve's, not its workers'.
    ///
    /// # Errors
    ///
    /// A `NOTIFY_SOCKET` that is not an absolute path or an `@` name, or a socket that
    /// cannot be made.
    pub fn from_env() -> io::Result<Option<Manager>> {
        let name = std::env::var_os("NOTIFY_SOCKET");
        let fd_store = std::env::var("FDSTORE")
            .ok()
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n > 0);
        for var in ["NOTIFY_SOCKET", "FDSTORE"] {
            // SAFETY: serve reads its environment before it starts any thread.
            unsafe { std::env::remove_var(var) };
        }
        let Some(name) = name else { return Ok(None) };
        use std::os::unix::ffi::OsStrExt;
        let bytes = name.as_bytes();
        let addr = match bytes.first() {
            Some(b'@') => SocketAddrUnix::new_abstract_name(&bytes[1..])?,
            Some(b'/') => SocketAddrUnix::new(bytes)?,
            _ => {
                return Err(io::Error::other(format!(
                    "NOTIFY_SOCKET={name:?} is neither an absolute path nor an @ name"
                )))
            }
        };
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            None,
        )?;
        Ok(Some(Manager { fd, addr, fd_store }))
    }

    /// Sends `state` (lines of `KEY=VALUE`), with `fds` attached.
    ///
    /// # Errors
    ///
    /// The errors of `sendmsg`.
    pub fn send(&self, state: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let mut space =
            vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::other("too many descriptors for one message"));
        }
        rustix::net::sendmsg_addr(
            &self.fd,
            &self.addr,
            &[io::IoSlice::new(state.as_bytes())],
            &mut control,
            SendFlags::NOSIGNAL,
        )?;
        Ok(())
    }
}

/// `MONOTONIC_USEC=` for `RELOADING=1`: CLOCK_MONOTONIC now, in microseconds.
pub fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}
