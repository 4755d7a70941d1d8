//! The platform's I/O-safety types under one name each, so the portable core is written
//! once: a socket is a descriptor (`AsFd`/`BorrowedFd`/`OwnedFd`) on Unix and a `SOCKET`
//! (`AsSocket`/`BorrowedSocket`/`OwnedSocket`) on Windows.
//!
//! The public signatures that use these names show the platform's own std trait in the
//! documentation, so users on either OS write what they would write for std.

#[cfg(unix)]
pub(crate) use std::os::fd::{AsFd as AsSock, BorrowedFd as BorrowedSock, OwnedFd as OwnedSock};

#[cfg(windows)]
pub(crate) use std::os::windows::io::{
    AsSocket as AsSock, BorrowedSocket as BorrowedSock, OwnedSocket as OwnedSock,
};

/// Borrows the platform socket of anything that has one (`as_fd` or `as_socket`).
pub(crate) fn borrow<S: AsSock + ?Sized>(socket: &S) -> BorrowedSock<'_> {
    #[cfg(unix)]
    return socket.as_fd();
    #[cfg(windows)]
    return socket.as_socket();
}
