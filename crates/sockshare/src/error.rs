//! One error type for every sockshare call, whose kinds map 1:1 to Winsock error codes.

use std::borrow::Cow;
use std::fmt;
use std::io;

/// The Winsock error a sockshare call failed with.
///
/// Every kind carries the number Windows gives it ([`ErrorKind::code`]) and its
/// Winsock name ([`ErrorKind::name`]), so the C interface and the Rust API report
/// the same thing.
///
/// ```
/// use sockshare::ErrorKind;
/// assert_eq!(ErrorKind::Invalid.code(), 10022);
/// assert_eq!(ErrorKind::from_code(10038), Some(ErrorKind::NotSocket));
/// assert_eq!(ErrorKind::NotSocket.name(), "WSAENOTSOCK");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// `WSAEFAULT` (10014): a pointer argument is not valid (C interface only).
    Fault,
    /// `WSAEINVAL` (10022): an argument is not valid: the target process does not exist,
    /// has no session or refuses this process, or a protocol info is forged, damaged,
    /// already used or made for another process.
    Invalid,
    /// `WSAEMFILE` (10024): the process has no free descriptor. Nothing is lost: a pending
    /// socket stays pending, and the same call works once descriptors are freed.
    TooManyDescriptors,
    /// `WSAEINPROGRESS` (10036): never returned on Linux (there are no blocking
    /// Windows Sockets 1.1 calls); present so every Winsock code has a kind.
    InProgress,
    /// `WSAENOTSOCK` (10038): the descriptor is not an open socket.
    NotSocket,
    /// `WSAENETDOWN` (10050): the sharing machinery failed: the target's session did
    /// not answer its handshake in time, or an unexpected kernel error occurred.
    NetDown,
    /// `WSAENOBUFS` (10055): the target's queue of unredeemed infos is full, or the
    /// kernel refused to carry more descriptors in flight.
    NoBufferSpace,
    /// `WSASYSNOTREADY` (10091): the session endpoint could not be created.
    SystemNotReady,
    /// `WSAVERNOTSUPPORTED` (10092): the requested Winsock version is not supported.
    VersionNotSupported,
    /// `WSANOTINITIALISED` (10093): no session is active in this process.
    NotInitialised,
}

impl ErrorKind {
    /// Every kind, in code order.
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::Fault,
        ErrorKind::Invalid,
        ErrorKind::TooManyDescriptors,
        ErrorKind::InProgress,
        ErrorKind::NotSocket,
        ErrorKind::NetDown,
        ErrorKind::NoBufferSpace,
        ErrorKind::SystemNotReady,
        ErrorKind::VersionNotSupported,
        ErrorKind::NotInitialised,
    ];

    /// The Winsock error number, as `WSAGetLastError` returns it on Windows.
    #[must_use]
    pub const fn code(self) -> i32 {
        match self {
            ErrorKind::Fault => 10014,
            ErrorKind::Invalid => 10022,
            ErrorKind::TooManyDescriptors => 10024,
            ErrorKind::InProgress => 10036,
            ErrorKind::NotSocket => 10038,
            ErrorKind::NetDown => 10050,
            ErrorKind::NoBufferSpace => 10055,
            ErrorKind::SystemNotReady => 10091,
            ErrorKind::VersionNotSupported => 10092,
            ErrorKind::NotInitialised => 10093,
        }
    }

    /// The Winsock name of the code, such as `"WSAEINVAL"`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            ErrorKind::Fault => "WSAEFAULT",
            ErrorKind::Invalid => "WSAEINVAL",
            ErrorKind::TooManyDescriptors => "WSAEMFILE",
            ErrorKind::InProgress => "WSAEINPROGRESS",
            ErrorKind::NotSocket => "WSAENOTSOCK",
            ErrorKind::NetDown => "WSAENETDOWN",
            ErrorKind::NoBufferSpace => "WSAENOBUFS",
            ErrorKind::SystemNotReady => "WSASYSNOTREADY",
            ErrorKind::VersionNotSupported => "WSAVERNOTSUPPORTED",
            ErrorKind::NotInitialised => "WSANOTINITIALISED",
        }
    }

    /// The kind with this Winsock number, if sockshare has one.
    #[must_use]
    pub fn from_code(code: i32) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.code() == code)
    }

    fn io_kind(self) -> io::ErrorKind {
        match self {
            ErrorKind::Fault | ErrorKind::Invalid | ErrorKind::NotSocket => {
                io::ErrorKind::InvalidInput
            }
            ErrorKind::TooManyDescriptors | ErrorKind::NoBufferSpace => io::ErrorKind::OutOfMemory,
            ErrorKind::InProgress => io::ErrorKind::WouldBlock,
            ErrorKind::NetDown | ErrorKind::SystemNotReady => io::ErrorKind::NotConnected,
            ErrorKind::VersionNotSupported => io::ErrorKind::Unsupported,
            ErrorKind::NotInitialised => io::ErrorKind::NotConnected,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

/// A failed sockshare call: a Winsock [`ErrorKind`], a message that says what to do,
/// and the operating-system error behind it, if any.
///
/// Converts into [`std::io::Error`] (the `sockshare::Error` stays reachable through
/// [`std::io::Error::get_ref`]), so `?` works in functions returning `io::Result`.
///
/// ```
/// use sockshare::{Error, ErrorKind};
/// let e = Error::new(ErrorKind::Invalid, "protocol info already used");
/// assert_eq!(e.kind(), ErrorKind::Invalid);
/// assert_eq!(e.to_string(), "WSAEINVAL (10022): protocol info already used");
/// let io: std::io::Error = e.into();
/// assert_eq!(io.kind(), std::io::ErrorKind::InvalidInput);
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    #[source]
    source: Option<io::Error>,
}

impl Error {
    /// An error of `kind` with a message for a person.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Error {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the operating-system error behind this one.
    #[must_use]
    pub fn with_source(mut self, source: io::Error) -> Error {
        self.source = Some(source);
        self
    }

    /// The Winsock kind of the error.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The Winsock error number (`WSAGetLastError`).
    #[must_use]
    pub fn code(&self) -> i32 {
        self.kind.code()
    }

    /// The message, without the kind.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The operating-system error behind this one, if any.
    #[must_use]
    pub fn os_error(&self) -> Option<&io::Error> {
        self.source.as_ref()
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        io::Error::new(e.kind.io_kind(), e)
    }
}

/// The result of a sockshare call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_windows_numbers_and_round_trip() {
        let expected = [
            10014, 10022, 10024, 10036, 10038, 10050, 10055, 10091, 10092, 10093,
        ];
        for (kind, code) in ErrorKind::ALL.into_iter().zip(expected) {
            assert_eq!(kind.code(), code, "{kind:?}");
            assert_eq!(ErrorKind::from_code(code), Some(kind));
            assert!(kind.name().starts_with("WSA"));
        }
        assert_eq!(ErrorKind::from_code(0), None);
    }

    #[test]
    fn io_error_keeps_the_sockshare_error() {
        let e = Error::new(ErrorKind::TooManyDescriptors, "free a descriptor")
            .with_source(io::Error::from_raw_os_error(24));
        let io: io::Error = e.into();
        let inner = io.get_ref().unwrap().downcast_ref::<Error>().unwrap();
        assert_eq!(inner.kind(), ErrorKind::TooManyDescriptors);
        assert_eq!(inner.os_error().unwrap().raw_os_error(), Some(24));
    }
}
