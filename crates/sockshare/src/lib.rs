//! Share a live socket between processes the way Windows' `WSADuplicateSocket` does.
//!
//! A **target** process starts a [`Session`] and tells a **source** its process id by any
//! IPC. The source calls [`duplicate`] with a socket and that pid and gets a
//! [`ProtocolInfo`]: 628 plain bytes (`WSAPROTOCOL_INFOW`; 372 in the A form) to send by
//! any IPC. From that moment the target holds a reference to the socket: the source may
//! close its descriptor or exit. The target turns the info into its own descriptor with
//! [`Session::redeem`], once; the info works for no other process.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::io::{Read, Write};
//! use std::net::{TcpListener, TcpStream};
//!
//! let session = sockshare::Session::new()?; // target
//! let listener = TcpListener::bind("127.0.0.1:0")?; // source
//! let addr = listener.local_addr()?;
//! let bytes = sockshare::duplicate(&listener, session.pid())?.to_bytes_w();
//! drop(listener); // the source may close at once
//!
//! let info = sockshare::ProtocolInfo::from_bytes(&bytes)?; // target
//! let listener = TcpListener::try_from(session.redeem(&info)?)?;
//! let mut client = TcpStream::connect(addr)?;
//! let (mut served, _) = listener.accept()?;
//! served.write_all(b"hello")?;
//! let mut got = [0u8; 5];
//! client.read_exact(&mut got)?;
//! assert_eq!(&got, b"hello");
//! # Ok(()) }
//! ```
//!
//! Layout of the crate: the portable API is in `session.rs` ([`Session`], [`duplicate`]),
//! `info.rs` ([`ProtocolInfo`] and its byte layout), `socket.rs` ([`SharedSocket`] and its
//! conversions) and `error.rs` ([`Error`]); everything OS-specific is behind the contract
//! written in `sys/mod.rs`, with the Linux backend in `sys/linux/` and the Windows backend
//! (the native `WSADuplicateSocketW`) in `sys/windows/`.
//!
//! The portable API is the same on both: sockets are lent as `impl AsFd` on Unix and
//! `impl AsSocket` on Windows, and a [`SharedSocket`] converts into `OwnedFd` or
//! `OwnedSocket`. Items only one OS has are marked in their docs.

#![warn(missing_docs)]
// docs.rs (nightly) marks each OS-only item with the OS it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]
// The shell backend (systems without one) uses none of the helpers the real backends
// share (byte layout accessors, session option checks).
#![cfg_attr(
    any(sockshare_shell, not(any(target_os = "linux", windows))),
    allow(dead_code)
)]

// A Channel is Linux's SCM_RIGHTS; Windows has no socket-carrying IPC to build it on.
#[cfg(all(target_os = "linux", not(sockshare_shell)))]
mod channel;
#[cfg(all(target_os = "linux", not(sockshare_shell)))]
#[cfg_attr(docsrs, doc(cfg(target_os = "linux")))]
pub mod dispatch;
mod error;
pub mod info;
mod layout;
mod options;
mod os;
mod session;
mod socket;
mod sys;

/// Maps one page of private memory that the kernel fills with zeros in every child
/// process (`MADV_WIPEONFORK`), however it was forked; `None` where it cannot (before
/// Linux 4.14). The C library (`crates/ws2_32`) keeps its state behind one, as the core
/// keeps its pid mark. Not a stable API.
#[cfg(all(target_os = "linux", not(sockshare_shell)))]
#[doc(hidden)]
#[must_use]
pub fn wipe_on_fork_page() -> Option<std::ptr::NonNull<u8>> {
    sys::wipe_on_fork_page(rustix::param::page_size())
        .and_then(|p| std::ptr::NonNull::new(p.cast()))
}

/// The parsers of untrusted bytes that are otherwise private, for the fuzz targets in
/// `fuzz/` (feature `fuzzing`). Not a stable API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::sys::fuzzing::*;
}

#[cfg(all(target_os = "linux", not(sockshare_shell)))]
#[cfg_attr(docsrs, doc(cfg(target_os = "linux")))]
pub use channel::Channel;
pub use error::{Error, ErrorKind, Result};
pub use info::{ProtocolInfo, SocketKind, INFO_A_SIZE, INFO_W_SIZE};
pub use options::{Policy, DEFAULT_CAPACITY};
pub use session::{
    current_pid, disconnect_all, duplicate, duplicate_many, probe_target, Session, SessionBuilder,
};
pub use socket::{KindMismatch, SharedSocket};
