//! The backend for systems sockshare does not support yet (mio's `shell` idea): every item
//! of the contract exists, so the portable core compiles everywhere, and every operation
//! fails with [`ErrorKind::NetDown`] saying so. Nothing of it can be made: `Info` and
//! `Session` hold an uninhabited value, so their methods need no body.
//!
//! CI type-checks it on Linux with `RUSTFLAGS="--cfg sockshare_shell"`, which puts it in
//! place of the Linux backend.

use std::convert::Infallible;
use std::fmt;

use crate::error::{Error, ErrorKind, Result};
use crate::layout::{Header, SocketKind, INFO_A_SIZE, INFO_W_SIZE};
use crate::options::SessionOptions;
use crate::os::{BorrowedSock, OwnedSock};

fn unsupported() -> Error {
    Error::new(
        ErrorKind::NetDown,
        "sockshare has no backend for this operating system yet (Linux and Windows only)",
    )
}

/// No info exists on this system: `from_bytes` refuses every one.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Info(Infallible);

impl Info {
    pub(crate) fn from_bytes(_bytes: &[u8]) -> Result<Info> {
        Err(unsupported())
    }

    pub(crate) fn to_bytes_w(&self) -> [u8; INFO_W_SIZE] {
        match self.0 {}
    }

    pub(crate) fn to_bytes_a(&self) -> [u8; INFO_A_SIZE] {
        match self.0 {}
    }

    pub(crate) fn target_pid(&self) -> u32 {
        match self.0 {}
    }

    pub(crate) fn kind(&self) -> SocketKind {
        match self.0 {}
    }

    pub(crate) fn header(&self) -> Header {
        match self.0 {}
    }

    pub(crate) fn name(&self) -> &str {
        match self.0 {}
    }
}

impl fmt::Debug for Info {
    fn fmt(&self, _f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {}
    }
}

/// No session can start on this system.
pub(crate) struct Session(Infallible);

impl Session {
    pub(crate) fn start(_options: Option<&SessionOptions>) -> Result<Session> {
        Err(unsupported())
    }

    pub(crate) fn pid(&self) -> u32 {
        match self.0 {}
    }

    pub(crate) fn pending(&self) -> usize {
        match self.0 {}
    }

    pub(crate) fn options(&self) -> &SessionOptions {
        match self.0 {}
    }

    pub(crate) fn capacity(&self) -> usize {
        match self.0 {}
    }

    pub(crate) fn redeem(&self, _info: &Info) -> Result<OwnedSock> {
        match self.0 {}
    }
}

pub(crate) fn socket_kind(_fd: BorrowedSock<'_>) -> Result<SocketKind> {
    Err(unsupported())
}

pub(crate) fn duplicate(_fd: BorrowedSock<'_>, _target_pid: u32) -> Result<Info> {
    Err(unsupported())
}

pub(crate) fn duplicate_many(
    _fds: &[BorrowedSock<'_>],
    _kinds: &[SocketKind],
    _target_pid: u32,
) -> Result<Vec<Info>> {
    Err(unsupported())
}

pub(crate) fn probe(_target_pid: u32) -> Result<()> {
    Err(unsupported())
}

pub(crate) fn current_pid() -> u32 {
    std::process::id()
}

pub(crate) fn disconnect_all() {}
