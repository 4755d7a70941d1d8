//! The portable API: a target's [`Session`] and a source's [`duplicate`].

use crate::error::Result;
use crate::info::ProtocolInfo;
use crate::options::{Policy, SessionOptions};
use crate::os::{self, AsSock};
use crate::socket::SharedSocket;
use crate::sys;

/// Checks that an info made for `target_pid` is redeemed by that process (`me`).
fn check_made_for(target_pid: u32, me: u32) -> Result<()> {
    if target_pid != me {
        return Err(crate::Error::new(
            crate::ErrorKind::Invalid,
            format!(
                "this protocol info was made for process {target_pid}, not for this process ({me})"
            ),
        ));
    }
    Ok(())
}

/// Settings for a [`Session`] that differ from the defaults.
///
/// ```
/// # fn main() -> sockshare::Result<()> {
/// use sockshare::{Policy, Session};
/// let session = Session::builder()
///     .policy(Policy::AllowUids(vec![33]))
///     .capacity(64)
///     .start()?;
/// assert_eq!(session.capacity(), 64);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct SessionBuilder {
    options: SessionOptions,
}

impl SessionBuilder {
    /// Which sources may push sockets (default [`Policy::SameUser`]).
    #[must_use]
    pub fn policy(mut self, policy: Policy) -> SessionBuilder {
        self.options.policy = policy;
        self
    }

    /// How many unredeemed sockets the session holds before sources get `WSAENOBUFS`
    /// (default [`DEFAULT_CAPACITY`](crate::DEFAULT_CAPACITY), bounded by the descriptor limit; at least 1). A few
    /// hundred more can wait in the kernel's queue beyond it. A capacity set here is kept
    /// whatever the descriptor limit: size `RLIMIT_NOFILE` for it.
    #[must_use]
    pub fn capacity(mut self, capacity: usize) -> SessionBuilder {
        self.options.capacity = Some(capacity.max(1));
        self
    }

    /// Starts the session. If one is already active in this process, joins it when its
    /// settings are the same.
    ///
    /// # Errors
    ///
    /// `WSAEINVAL` when a session with other settings is active; `WSASYSNOTREADY` when the
    /// session endpoint cannot be created.
    pub fn start(self) -> Result<Session> {
        Ok(Session {
            inner: sys::Session::start(Some(&self.options))?,
        })
    }
}

/// This process's sharing session: while one is alive, sources may [`duplicate`] sockets
/// for this process and it can [`redeem`](Session::redeem) their protocol infos.
///
/// Sessions are refcounted per process, like `WSAStartup`/`WSACleanup`: every
/// `Session::new()` joins the active session, and dropping the last handle ends it,
/// closing every socket still pending for this process. A session runs one thread, which
/// admits sources (checking their credentials against the [`Policy`]) and moves the
/// sockets they push into the session's table.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::net::TcpListener;
/// // Target: start a session and tell the source its pid (here, ourselves).
/// let session = sockshare::Session::new()?;
/// let pid = session.pid();
///
/// // Source: duplicate a socket for the target and close its own descriptor.
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let addr = listener.local_addr()?;
/// let info = sockshare::duplicate(&listener, pid)?;
/// drop(listener);
/// let bytes = info.to_bytes_w(); // 628 bytes, for any IPC
///
/// // Target: turn the info into its own descriptor, once.
/// let info = sockshare::ProtocolInfo::from_bytes(&bytes)?;
/// let listener = TcpListener::try_from(session.redeem(&info)?)?;
/// assert_eq!(listener.local_addr()?, addr);
/// assert!(session.redeem(&info).is_err()); // single use
/// # Ok(()) }
/// ```
pub struct Session {
    inner: sys::Session,
}

impl Session {
    /// Starts (or joins) this process's session with the default settings.
    ///
    /// # Errors
    ///
    /// `WSASYSNOTREADY` when the session endpoint cannot be created.
    #[doc(alias = "WSAStartup")]
    pub fn new() -> Result<Session> {
        Ok(Session {
            inner: sys::Session::start(None)?,
        })
    }

    /// Settings for a session that differ from the defaults.
    #[must_use]
    pub fn builder() -> SessionBuilder {
        SessionBuilder::default()
    }

    /// The id of this process: what a source passes to [`duplicate`].
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.inner.pid()
    }

    /// The session's capacity of unredeemed sockets: the one set with
    /// [`SessionBuilder::capacity`], or the default as sized when the session started.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    /// The session's policy.
    #[must_use]
    pub fn policy(&self) -> &Policy {
        &self.inner.options().policy
    }

    /// How many pushed sockets wait in the session's table (sockets still in the kernel's
    /// queue are not counted). Always 0 on Windows, where the system duplicates the handle
    /// straight into this process and no table exists.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.inner.pending()
    }

    /// Creates this process's descriptor for the socket an info names (`WSASocket` with
    /// `FROM_PROTOCOL_INFO`). Each info works once, and only in the process it was made
    /// for. The descriptor is close-on-exec (on Windows: not inheritable, and created with
    /// `WSA_FLAG_OVERLAPPED`, so it works with IOCP and tokio).
    ///
    /// # Errors
    ///
    /// `WSAEINVAL` for an info that is used, forged, altered, made for another process, or
    /// whose session ended (no descriptor is created); `WSAEMFILE` when this process is
    /// out of descriptors (the info stays valid: redeem it again once descriptors are
    /// free); `WSANOTINITIALISED` in a forked child holding its parent's session.
    #[doc(alias = "WSASocket", alias = "WSASocketW", alias = "WSASocketA")]
    #[doc(alias = "FROM_PROTOCOL_INFO")]
    pub fn redeem(&self, info: &ProtocolInfo) -> Result<SharedSocket> {
        // The calling process, not the session's: in a forked child they differ.
        check_made_for(info.target_pid(), sys::current_pid())?;
        let fd = self.inner.redeem(&info.0)?;
        Ok(SharedSocket::new(fd, info.kind()))
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("pid", &self.pid())
            .field("capacity", &self.capacity())
            .field("policy", self.policy())
            .finish()
    }
}

/// Duplicates `socket` for the process `target_pid` (`WSADuplicateSocket`): returns the
/// protocol info that process turns into its own descriptor with [`Session::redeem`].
///
/// When this returns, the target holds its own reference to the socket (or, on Linux, a
/// keeper process holds it for a target that has not started its session yet or does not
/// answer, until it does): the caller may close `socket` or exit at once and the socket
/// stays alive for the target. The source needs no session of its own, and the target
/// needs none yet (it redeems once it starts one).
///
/// `socket` is anything that lends its socket: `impl AsFd` on Unix, `impl AsSocket` on
/// Windows (std's, socket2's and tokio's sockets, or a `SharedSocket`). On Windows this is
/// the native `WSADuplicateSocketW`.
///
/// # Errors
///
/// Checked in Windows' order: `WSAENOTSOCK` when `socket` is not an open socket;
/// `WSAEINVAL` when `target_pid` does not exist, is in another pid or network namespace,
/// or refuses this process (its session's policy; without a session, the default rule:
/// its user, or root); `WSAENOBUFS` when the target's
/// queue of unredeemed sockets is full. On error nothing reached the target.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
/// let err = sockshare::duplicate(&socket, 0).unwrap_err();
/// assert_eq!(err.kind(), sockshare::ErrorKind::Invalid);
/// # Ok(()) }
/// ```
#[doc(alias = "WSADuplicateSocket", alias = "WSADuplicateSocketW")]
#[doc(alias = "WSADuplicateSocketA")]
pub fn duplicate(socket: impl AsSock, target_pid: u32) -> Result<ProtocolInfo> {
    sys::duplicate(os::borrow(&socket), target_pid).map(ProtocolInfo)
}

/// [`duplicate`] for many sockets at once: the infos come back in the order of `sockets`.
///
/// The sockets travel up to 253 per kernel message (the most `SCM_RIGHTS` carries), so
/// a batch costs far less per socket than one `duplicate` each. Each message is
/// all-or-nothing.
///
/// # Errors
///
/// Those of [`duplicate`]; `WSAENOTSOCK` is checked for every socket before anything is
/// sent. If an error happens after some messages were
/// delivered (more than 253 sockets), their infos are not returned and those sockets
/// stay pending in the target until its session ends.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::net::UdpSocket;
/// let session = sockshare::Session::new()?; // target
/// let sockets = [UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?];
/// let infos = sockshare::duplicate_many(&sockets, session.pid())?; // source
/// assert_eq!(infos.len(), 2);
/// for (info, original) in infos.iter().zip(&sockets) {
///     let shared = UdpSocket::try_from(session.redeem(info)?)?;
///     assert_eq!(shared.local_addr()?, original.local_addr()?);
/// }
/// # Ok(()) }
/// ```
pub fn duplicate_many<S: AsSock>(sockets: &[S], target_pid: u32) -> Result<Vec<ProtocolInfo>> {
    let fds: Vec<_> = sockets.iter().map(os::borrow).collect();
    let kinds = fds
        .iter()
        .map(|&fd| sys::socket_kind(fd))
        .collect::<Result<Vec<_>>>()?;
    let infos = sys::duplicate_many(&fds, &kinds, target_pid)?;
    Ok(infos.into_iter().map(ProtocolInfo).collect())
}

/// The id of the calling process, as [`duplicate`] expects it.
#[doc(alias = "GetCurrentProcessId")]
pub fn current_pid() -> u32 {
    sys::current_pid()
}

/// Closes the connections this process keeps to targets' sessions (one per target it
/// duplicated for; a connection whose target has ended is closed when the next one
/// opens). The next [`duplicate`] reconnects. Useful before counting descriptors, or in a
/// long-lived source after a burst of short-lived targets.
///
/// ```
/// sockshare::disconnect_all();
/// ```
pub fn disconnect_all() {
    sys::disconnect_all()
}

/// Checks, without sharing anything, that [`duplicate`] could reach `target_pid`: the
/// process exists, and its session's policy admits this process (or, without a session,
/// this process runs as its user or as root).
///
/// # Errors
///
/// `WSAEINVAL` where `duplicate` would. The C interface uses it to report a bad pid before
/// a NULL info pointer, in Windows' order, without leaving a socket pending in the target.
///
/// ```
/// let err = sockshare::probe_target(0).unwrap_err();
/// assert_eq!(err.kind(), sockshare::ErrorKind::Invalid);
/// ```
pub fn probe_target(target_pid: u32) -> Result<()> {
    sys::probe(target_pid)
}
