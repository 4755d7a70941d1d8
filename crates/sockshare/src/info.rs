//! The protocol info: a `WSAPROTOCOL_INFOW` (628 bytes) or `WSAPROTOCOL_INFOA`
//! (372 bytes), byte for byte, with the sharing state in the provider's reserved fields.
//!
//! | offset | field | sockshare's use |
//! |-------:|-------|-----------------|
//! | 0 | `dwServiceFlags1` | `XP1_*` flags of the protocol |
//! | 4 | `dwServiceFlags2` | the target process id |
//! | 8 | `dwServiceFlags3` | low 32 bits of the single-use token |
//! | 12 | `dwServiceFlags4` | high 32 bits of the single-use token |
//! | 16 | `dwProviderFlags` | `PFL_MATCHES_PROTOCOL_ZERO` |
//! | 20 | `ProviderId` | sockshare's provider GUID |
//! | 36 | `dwCatalogEntryId` | one id per (family, type) |
//! | 40 | `ProtocolChain` | `ChainLen` 1 (a base protocol), entries 0 |
//! | 72 | `iVersion` | 2 |
//! | 76 | `iAddressFamily` | this platform's `AF_*` (`AF_INET6` is 10 on Linux) |
//! | 80, 84 | `iMaxSockAddr`, `iMinSockAddr` | sockaddr sizes of the family |
//! | 88, 92 | `iSocketType`, `iProtocol` | `SOCK_*`, `IPPROTO_*` |
//! | 96..112 | offset, byte order, security, `dwMessageSize` | as Windows' TCP/IP provider |
//! | 112 | `dwProviderReserved` | CRC-32 of every other field (the integrity check) |
//! | 116 | `szProtocol` | provider name: 256 `WCHAR`s (W form) or 256 bytes (A form) |
//!
//! The token is random and unguessable: it names one pending socket in the target's
//! session. The CRC detects damage; the target also compares it with the one the source
//! sent beside the socket, so an info whose fields were altered is refused even when the
//! CRC was recomputed.
//!
//! **On Windows** the info is the one the native `WSADuplicateSocketW` wrote: every field
//! above (service flags, provider id, reserved fields) is Windows' own, carried through
//! unchanged. sockshare's sharing state (target pid, a single-use nonce, a CRC-32 of the
//! whole info) rides in the last 24 bytes of `szProtocol`, after the provider name's
//! terminating NUL, where no provider looks; see `sys/windows/info.rs`.

use std::fmt;

use crate::error::Result;
use crate::sys;

pub use crate::layout::{
    offset, pfl, xp1, SocketKind, BASE_PROTOCOL, INFO_A_SIZE, INFO_W_SIZE, MAX_PROTOCOL_CHAIN,
    PROVIDER_ID, WSAPROTOCOL_LEN,
};

/// A protocol info: what a source's `duplicate` returns and a target turns into its own
/// descriptor, once. It is plain bytes in the `WSAPROTOCOL_INFOW` layout
/// ([`to_bytes_w`](Self::to_bytes_w)) or the `WSAPROTOCOL_INFOA` layout
/// ([`to_bytes_a`](Self::to_bytes_a)); send either by any IPC and parse it with
/// [`from_bytes`](Self::from_bytes), which accepts both and never panics.
///
/// On Windows it is the native info `WSADuplicateSocketW` wrote, every field unchanged
/// (`native_w`, Windows only), plus sockshare's envelope (target pid, single-use token,
/// integrity tag) after the provider name's NUL in `szProtocol`.
///
/// ```
/// use sockshare::ProtocolInfo;
/// // Untrusted bytes are checked, not trusted:
/// let err = ProtocolInfo::from_bytes(&[0u8; 628]).unwrap_err();
/// assert_eq!(err.kind(), sockshare::ErrorKind::Invalid);
/// assert!(ProtocolInfo::from_bytes(b"short").is_err());
/// ```
#[doc(alias = "WSAPROTOCOL_INFOW", alias = "WSAPROTOCOL_INFOA")]
#[derive(Clone, PartialEq, Eq)]
pub struct ProtocolInfo(pub(crate) sys::Info);

impl ProtocolInfo {
    /// Parses an info from untrusted bytes: 628 bytes are the W form, 372 the A form.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Invalid`](crate::ErrorKind::Invalid) when the length is neither, the
    /// info was not made by sockshare's `duplicate`, or its integrity check fails; on
    /// Linux also when any field differs from what `duplicate` writes for the info's
    /// socket kind (a forged info whose CRC was mended). Passing these checks means only
    /// that the bytes are well formed: whether the socket is still pending, of this kind,
    /// and for this process, is decided when it is redeemed.
    pub fn from_bytes(bytes: &[u8]) -> Result<ProtocolInfo> {
        sys::Info::from_bytes(bytes).map(ProtocolInfo)
    }

    /// The info in the `WSAPROTOCOL_INFOW` layout (628 bytes, UTF-16 `szProtocol`).
    #[must_use]
    #[doc(alias = "WSAPROTOCOL_INFOW")]
    pub fn to_bytes_w(&self) -> [u8; INFO_W_SIZE] {
        self.0.to_bytes_w()
    }

    /// The info in the `WSAPROTOCOL_INFOA` layout (372 bytes, 8-bit `szProtocol`).
    #[must_use]
    #[doc(alias = "WSAPROTOCOL_INFOA")]
    pub fn to_bytes_a(&self) -> [u8; INFO_A_SIZE] {
        self.0.to_bytes_a()
    }

    /// The process the info was made for.
    #[must_use]
    pub fn target_pid(&self) -> u32 {
        self.0.target_pid()
    }

    /// Family, type and protocol of the shared socket.
    #[must_use]
    pub fn kind(&self) -> SocketKind {
        self.0.kind()
    }

    /// `iAddressFamily`.
    #[must_use]
    pub fn address_family(&self) -> i32 {
        self.kind().family()
    }

    /// `iSocketType`.
    #[must_use]
    pub fn socket_type(&self) -> i32 {
        self.kind().socket_type()
    }

    /// `iProtocol`.
    #[must_use]
    pub fn protocol(&self) -> i32 {
        self.kind().protocol()
    }

    /// `dwServiceFlags1`: the `XP1_*` flags.
    #[must_use]
    pub fn service_flags(&self) -> u32 {
        self.0.header().service_flags1
    }

    /// `dwProviderFlags`: the `PFL_*` flags.
    #[must_use]
    pub fn provider_flags(&self) -> u32 {
        self.0.header().provider_flags
    }

    /// `dwCatalogEntryId`.
    #[must_use]
    pub fn catalog_entry_id(&self) -> u32 {
        self.0.header().catalog_entry_id
    }

    /// `ProtocolChain.ChainLen`.
    #[must_use]
    pub fn chain_len(&self) -> i32 {
        self.0.header().chain_len
    }

    /// `iVersion`.
    #[must_use]
    pub fn version(&self) -> i32 {
        self.0.header().version
    }

    /// `iMinSockAddr` and `iMaxSockAddr`.
    #[must_use]
    pub fn sockaddr_range(&self) -> (i32, i32) {
        let h = self.0.header();
        (h.min_sockaddr, h.max_sockaddr)
    }

    /// `dwMessageSize`.
    #[must_use]
    pub fn message_size(&self) -> u32 {
        self.0.header().message_size
    }

    /// `szProtocol`: the provider's name for the protocol.
    #[must_use]
    pub fn protocol_name(&self) -> &str {
        self.0.name()
    }
}

impl fmt::Debug for ProtocolInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}
