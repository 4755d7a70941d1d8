//! The backend contract: what every OS backend provides to the portable core.
//!
//! The portable API (`duplicate`, [`Session`](crate::Session), [`ProtocolInfo`](crate::ProtocolInfo),
//! [`SharedSocket`](crate::SharedSocket)) makes exactly one call into the backend per public
//! operation. A backend provides:
//!
//! - `struct Info`: this OS's representation of a protocol info, which the public
//!   `ProtocolInfo` wraps: `from_bytes` (both forms, untrusted), `to_bytes_w`, `to_bytes_a`,
//!   `target_pid`, `kind`, `header` (the fields every representation has, from which the
//!   public getters are written once) and `name`. OS-only methods of `ProtocolInfo` live in
//!   an `impl` block in the backend, marked as such in the docs.
//! - `fn socket_kind(fd) -> Result<SocketKind>`: family, type and protocol of an open socket;
//!   `ErrorKind::NotSocket` for anything else (a file, a closed descriptor).
//! - `fn duplicate(fd, target_pid) -> Result<Info>`: `NotSocket` first, as
//!   `socket_kind` (the backend reads the kind itself: Windows' `WSADuplicateSocketW`
//!   does, and a second look would cost the handoff a system call); when it returns `Ok`, the
//!   target's session holds its own reference to the socket (the caller may close `fd` or exit
//!   at once), and the returned info names that reference, for that process only, once.
//!   `Invalid` when the process does not exist or refuses the caller (a target without a
//!   session is shared with through a keeper on Linux, natively on Windows); `NoBufferSpace` when the target's queue of unredeemed infos is full. On any
//!   error nothing reached the target: the caller still owns its socket.
//! - `struct Session`: a handle on this process's sharing session, refcounted like
//!   `WSAStartup`/`WSACleanup`:
//!   - `Session::start(Option<&SessionOptions>) -> Result<Session>`: starts this process's
//!     session, or joins the running one (`None`: whatever runs; `Some` must match it);
//!   - `redeem(&Info) -> Result<OwnedFd>`: the descriptor (close-on-exec), once per info;
//!     `Invalid` for a used, foreign or altered info (no descriptor is created);
//!     `TooManyDescriptors` when the process is out of descriptors (the info stays valid);
//!   - `pid()`, `pending()`, `options()`, `capacity()` (the capacity in force);
//!   - dropping the last handle ends the session and closes every pending socket.
//! - `fn current_pid() -> u32`.
//! - `fn disconnect_all()`: closes whatever a source keeps open to reach targets (the next
//!   `duplicate` reopens it).
//! - `fn duplicate_many(fds, kinds, target_pid) -> Result<Vec<Info>>`: `duplicate`
//!   for many sockets, in as few kernel messages as the OS allows; each message is
//!   all-or-nothing, and on an error the infos of earlier messages are not returned (their
//!   sockets stay pending until the target's session ends).
//! - `struct Channel`: one end of a connected pair that carries sockets, each received with
//!   the info made for the receiving process: `pair()`,
//!   `adopt(OwnedFd) -> (Channel, Result<()>)` (this process now holds the end; the
//!   channel comes back even when taking it up failed, with that failure), `into_fd()`, `as_fd()`, `send(fd, kind)`,
//!   `recv() -> (Info, OwnedFd)`; `recv` checks the sender against the default
//!   policy (`Invalid`), and never loses a socket to a full descriptor table
//!   (`TooManyDescriptors`, the socket stays queued).
//! - `fn probe(target_pid) -> Result<()>`: the target checks of `duplicate` (`Invalid` as
//!   there), without pushing anything.
//!
//! Descriptors are the platform's I/O-safety types, named once in `crate::os`: `BorrowedFd`
//! and `OwnedFd` on Unix, `BorrowedSocket` and `OwnedSocket` on Windows.
//!
//! The Linux backend lives in `linux`; the Windows backend, `windows`, is the native
//! `WSADuplicateSocketW`/`WSASocketW` with sockshare's checks around it (its module docs
//! say which rows of docs/semantics.md Windows itself keeps and which sockshare adds).
//! Items only one OS has (a `Channel`, `batch`, `fuzzing`) are `cfg`'d to it. macOS comes later
//! behind this same contract.
//! Every other system gets `shell`, whose operations all fail with "unsupported" (mio's
//! idea), so the portable core compiles everywhere.

#[cfg(all(target_os = "linux", not(sockshare_shell)))]
mod linux;
#[cfg(all(target_os = "linux", not(sockshare_shell), feature = "fuzzing"))]
pub(crate) use linux::fuzzing;
// Linux only, for `crate::dispatch` (a Linux-only module): the loss-free receiving of
// descriptor records that the session endpoint and the channel use.
#[cfg(all(target_os = "linux", not(sockshare_shell)))]
pub(crate) use linux::batch;
#[cfg(all(target_os = "linux", not(sockshare_shell)))]
pub(crate) use linux::{
    current_pid, disconnect_all, duplicate, duplicate_many, probe, socket_kind, wipe_on_fork_page,
    Channel, Info, Session,
};

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use windows::{
    current_pid, disconnect_all, duplicate, duplicate_many, probe, socket_kind, Info, Session,
};

// Elsewhere (and on Linux with `--cfg sockshare_shell`, how CI type-checks it): every
// operation fails with "unsupported".
#[cfg(any(sockshare_shell, not(any(target_os = "linux", windows))))]
mod shell;
#[cfg(any(sockshare_shell, not(any(target_os = "linux", windows))))]
pub(crate) use shell::{
    current_pid, disconnect_all, duplicate, duplicate_many, probe, socket_kind, Info, Session,
};
