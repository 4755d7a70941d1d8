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

// The constructors of sockshare's own provider fields below serve the Unix
// representation; on Windows the native provider fills the info.
#![cfg_attr(windows, allow(dead_code))]

use std::borrow::Cow;

use crate::error::{Error, ErrorKind, Result};

/// Size of `WSAPROTOCOL_INFOW` in bytes.
pub const INFO_W_SIZE: usize = 628;
/// Size of `WSAPROTOCOL_INFOA` in bytes.
pub const INFO_A_SIZE: usize = 372;
/// `WSAPROTOCOL_LEN`: characters in `szProtocol`, less its terminator.
pub const WSAPROTOCOL_LEN: usize = 255;
/// `MAX_PROTOCOL_CHAIN`: entries in a protocol chain.
pub const MAX_PROTOCOL_CHAIN: usize = 7;
/// `BASE_PROTOCOL`: the `ChainLen` of a base protocol.
pub const BASE_PROTOCOL: i32 = 1;

/// Byte offsets of the fields of `WSAPROTOCOL_INFOA/W` (identical up to `szProtocol`).
pub mod offset {
    /// `dwServiceFlags1`.
    pub const SERVICE_FLAGS1: usize = 0;
    /// `dwServiceFlags2`.
    pub const SERVICE_FLAGS2: usize = 4;
    /// `dwServiceFlags3`.
    pub const SERVICE_FLAGS3: usize = 8;
    /// `dwServiceFlags4`.
    pub const SERVICE_FLAGS4: usize = 12;
    /// `dwProviderFlags`.
    pub const PROVIDER_FLAGS: usize = 16;
    /// `ProviderId` (a 16-byte GUID).
    pub const PROVIDER_ID: usize = 20;
    /// `dwCatalogEntryId`.
    pub const CATALOG_ENTRY_ID: usize = 36;
    /// `ProtocolChain` (`ChainLen`, then 7 `ChainEntries`).
    pub const PROTOCOL_CHAIN: usize = 40;
    /// `iVersion`.
    pub const VERSION: usize = 72;
    /// `iAddressFamily`.
    pub const ADDRESS_FAMILY: usize = 76;
    /// `iMaxSockAddr`.
    pub const MAX_SOCKADDR: usize = 80;
    /// `iMinSockAddr`.
    pub const MIN_SOCKADDR: usize = 84;
    /// `iSocketType`.
    pub const SOCKET_TYPE: usize = 88;
    /// `iProtocol`.
    pub const PROTOCOL: usize = 92;
    /// `iProtocolMaxOffset`.
    pub const PROTOCOL_MAX_OFFSET: usize = 96;
    /// `iNetworkByteOrder`.
    pub const NETWORK_BYTE_ORDER: usize = 100;
    /// `iSecurityScheme`.
    pub const SECURITY_SCHEME: usize = 104;
    /// `dwMessageSize`.
    pub const MESSAGE_SIZE: usize = 108;
    /// `dwProviderReserved`.
    pub const PROVIDER_RESERVED: usize = 112;
    /// `szProtocol`.
    pub const SZ_PROTOCOL: usize = 116;
}

/// `XP1_*` service flags (the values of Windows' `winsock2.h`).
pub mod xp1 {
    /// `XP1_CONNECTIONLESS`.
    pub const CONNECTIONLESS: u32 = 0x0000_0001;
    /// `XP1_GUARANTEED_DELIVERY`.
    pub const GUARANTEED_DELIVERY: u32 = 0x0000_0002;
    /// `XP1_GUARANTEED_ORDER`.
    pub const GUARANTEED_ORDER: u32 = 0x0000_0004;
    /// `XP1_MESSAGE_ORIENTED`.
    pub const MESSAGE_ORIENTED: u32 = 0x0000_0008;
    /// `XP1_PSEUDO_STREAM`.
    pub const PSEUDO_STREAM: u32 = 0x0000_0010;
    /// `XP1_GRACEFUL_CLOSE`.
    pub const GRACEFUL_CLOSE: u32 = 0x0000_0020;
    /// `XP1_EXPEDITED_DATA`.
    pub const EXPEDITED_DATA: u32 = 0x0000_0040;
    /// `XP1_CONNECT_DATA`.
    pub const CONNECT_DATA: u32 = 0x0000_0080;
    /// `XP1_DISCONNECT_DATA`.
    pub const DISCONNECT_DATA: u32 = 0x0000_0100;
    /// `XP1_SUPPORT_BROADCAST`.
    pub const SUPPORT_BROADCAST: u32 = 0x0000_0200;
    /// `XP1_SUPPORT_MULTIPOINT`.
    pub const SUPPORT_MULTIPOINT: u32 = 0x0000_0400;
    /// `XP1_MULTIPOINT_CONTROL_PLANE`.
    pub const MULTIPOINT_CONTROL_PLANE: u32 = 0x0000_0800;
    /// `XP1_MULTIPOINT_DATA_PLANE`.
    pub const MULTIPOINT_DATA_PLANE: u32 = 0x0000_1000;
    /// `XP1_QOS_SUPPORTED`.
    pub const QOS_SUPPORTED: u32 = 0x0000_2000;
    /// `XP1_INTERRUPT`.
    pub const INTERRUPT: u32 = 0x0000_4000;
    /// `XP1_UNI_SEND`.
    pub const UNI_SEND: u32 = 0x0000_8000;
    /// `XP1_UNI_RECV`.
    pub const UNI_RECV: u32 = 0x0001_0000;
    /// `XP1_IFS_HANDLES`.
    pub const IFS_HANDLES: u32 = 0x0002_0000;
    /// `XP1_PARTIAL_MESSAGE`.
    pub const PARTIAL_MESSAGE: u32 = 0x0004_0000;
    /// `XP1_SAN_SUPPORT_SDP`.
    pub const SAN_SUPPORT_SDP: u32 = 0x0008_0000;
}

/// `PFL_*` provider flags (the values of Windows' `winsock2.h`).
pub mod pfl {
    /// `PFL_MULTIPLE_PROTO_ENTRIES`.
    pub const MULTIPLE_PROTO_ENTRIES: u32 = 0x0000_0001;
    /// `PFL_RECOMMENDED_PROTO_ENTRY`.
    pub const RECOMMENDED_PROTO_ENTRY: u32 = 0x0000_0002;
    /// `PFL_HIDDEN`.
    pub const HIDDEN: u32 = 0x0000_0004;
    /// `PFL_MATCHES_PROTOCOL_ZERO`.
    pub const MATCHES_PROTOCOL_ZERO: u32 = 0x0000_0008;
    /// `PFL_NETWORKDIRECT_PROVIDER`.
    pub const NETWORKDIRECT_PROVIDER: u32 = 0x0000_0010;
}

/// sockshare's provider GUID, {8f0e6c52-53a4-4d1b-9c7e-5f6b0a3d2e71}, in memory order.
pub const PROVIDER_ID: [u8; 16] = [
    0x52, 0x6c, 0x0e, 0x8f, 0xa4, 0x53, 0x1b, 0x4d, 0x9c, 0x7e, 0x5f, 0x6b, 0x0a, 0x3d, 0x2e, 0x71,
];

const TCP_UDP_MESSAGE_SIZE: u32 = 0xffbb;

/// `szProtocol` of sockshare's infos for the common kinds.
const KNOWN_NAMES: [&str; 7] = [
    "sockshare [TCP/IP]",
    "sockshare [TCP/IPv6]",
    "sockshare [UDP/IP]",
    "sockshare [UDP/IPv6]",
    "sockshare [UNIX STREAM]",
    "sockshare [UNIX DGRAM]",
    "sockshare [UNIX SEQPACKET]",
];

/// What kind of socket a descriptor is: address family, type and protocol, with this
/// platform's constants.
///
/// ```
/// // AF_INET, SOCK_STREAM, IPPROTO_TCP on Linux:
/// let kind = sockshare::SocketKind::new(2, 1, 6);
/// assert!(kind.is_tcp());
/// assert_eq!(kind.domain(), socket2::Domain::IPV4);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketKind {
    family: i32,
    ty: i32,
    protocol: i32,
}

// This platform's constants, through socket2 so the portable core has no libc.
fn af_inet() -> i32 {
    socket2::Domain::IPV4.into()
}
fn af_inet6() -> i32 {
    socket2::Domain::IPV6.into()
}
fn af_unix() -> i32 {
    socket2::Domain::UNIX.into()
}
fn sock_stream() -> i32 {
    socket2::Type::STREAM.into()
}
fn sock_dgram() -> i32 {
    socket2::Type::DGRAM.into()
}
fn sock_seqpacket() -> i32 {
    socket2::Type::SEQPACKET.into()
}

impl SocketKind {
    /// A kind from raw `AF_*`, `SOCK_*` and protocol numbers.
    pub const fn new(family: i32, ty: i32, protocol: i32) -> SocketKind {
        SocketKind {
            family,
            ty,
            protocol,
        }
    }

    /// The address family (`AF_INET`, `AF_INET6`, `AF_UNIX`, ...).
    #[must_use]
    pub fn family(&self) -> i32 {
        self.family
    }

    /// The socket type (`SOCK_STREAM`, `SOCK_DGRAM`, ...).
    #[must_use]
    pub fn socket_type(&self) -> i32 {
        self.ty
    }

    /// The protocol (`IPPROTO_TCP`, `IPPROTO_UDP`, 0 for Unix-domain sockets).
    #[must_use]
    pub fn protocol(&self) -> i32 {
        self.protocol
    }

    /// The family as a socket2 [`Domain`](socket2::Domain).
    #[must_use]
    pub fn domain(&self) -> socket2::Domain {
        socket2::Domain::from(self.family)
    }

    /// The type as a socket2 [`Type`](socket2::Type).
    #[must_use]
    pub fn ty(&self) -> socket2::Type {
        socket2::Type::from(self.ty)
    }

    /// An IPv4 or IPv6 socket.
    #[must_use]
    pub fn is_inet(&self) -> bool {
        self.family == af_inet() || self.family == af_inet6()
    }

    /// A Unix-domain socket.
    #[must_use]
    pub fn is_unix(&self) -> bool {
        self.family == af_unix()
    }

    /// A TCP socket (IPv4 or IPv6).
    #[must_use]
    pub fn is_tcp(&self) -> bool {
        self.is_inet() && self.ty == sock_stream()
    }

    /// A UDP socket (IPv4 or IPv6).
    #[must_use]
    pub fn is_udp(&self) -> bool {
        self.is_inet() && self.ty == sock_dgram()
    }

    /// Whether the type is `SOCK_STREAM`.
    #[must_use]
    pub fn is_stream(&self) -> bool {
        self.ty == sock_stream()
    }

    /// Whether the type is `SOCK_DGRAM`.
    #[must_use]
    pub fn is_datagram(&self) -> bool {
        self.ty == sock_dgram()
    }

    fn service_flags(&self) -> u32 {
        use xp1::*;
        let connected = GUARANTEED_DELIVERY | GUARANTEED_ORDER | GRACEFUL_CLOSE;
        IFS_HANDLES
            | if self.is_tcp() {
                connected | EXPEDITED_DATA
            } else if self.is_udp() {
                SUPPORT_MULTIPOINT | SUPPORT_BROADCAST | MESSAGE_ORIENTED | CONNECTIONLESS
            } else if self.is_unix() && self.ty == sock_stream() {
                connected
            } else if self.is_unix() && self.ty == sock_dgram() {
                MESSAGE_ORIENTED | CONNECTIONLESS | GUARANTEED_DELIVERY | GUARANTEED_ORDER
            } else if self.is_unix() && self.ty == sock_seqpacket() {
                connected | MESSAGE_ORIENTED
            } else {
                0
            }
    }

    fn sockaddr_sizes(&self) -> (i32, i32) {
        if self.family == af_inet() {
            (16, 16)
        } else if self.family == af_inet6() {
            (28, 28)
        } else if self.family == af_unix() {
            (2, 110)
        } else {
            (0, 0)
        }
    }

    fn catalog_entry_id(&self) -> u32 {
        // Stable small ids per (family, type), in the range Windows uses for base providers.
        1000 + (self.family as u32 & 0xff) * 16 + (self.ty as u32 & 0xf)
    }

    /// The provider's name: a static string for every common kind, so making and parsing
    /// an info allocates nothing on the handoff path.
    fn provider_name(&self) -> Cow<'static, str> {
        let v6 = usize::from(self.family == af_inet6());
        let index = if self.is_tcp() {
            v6
        } else if self.is_udp() {
            2 + v6
        } else if self.is_unix() && self.ty == sock_stream() {
            4
        } else if self.is_unix() && self.ty == sock_dgram() {
            5
        } else if self.is_unix() && self.ty == sock_seqpacket() {
            6
        } else {
            return Cow::Owned(format!("sockshare [AF {} TYPE {}]", self.family, self.ty));
        };
        Cow::Borrowed(KNOWN_NAMES[index])
    }
}

/// A protocol info: what a source's `duplicate` returns and a target turns into its own
/// descriptor, once. It is plain bytes in the `WSAPROTOCOL_INFOW` layout
/// ([`to_bytes_w`](Self::to_bytes_w)) or the `WSAPROTOCOL_INFOA` layout
/// ([`to_bytes_a`](Self::to_bytes_a)); send either by any IPC and parse it with
/// [`from_bytes`](Self::from_bytes), which accepts both and never panics.
///
/// ```
/// use sockshare::ProtocolInfo;
/// // Untrusted bytes are checked, not trusted:
/// let err = ProtocolInfo::from_bytes(&[0u8; 628]).unwrap_err();
/// assert_eq!(err.kind(), sockshare::ErrorKind::Invalid);
/// assert!(ProtocolInfo::from_bytes(b"short").is_err());
/// ```
#[doc(alias = "WSAPROTOCOL_INFOW", alias = "WSAPROTOCOL_INFOA")]
#[cfg(not(windows))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolInfo {
    service_flags1: u32,
    target_pid: u32,
    token: u64,
    provider_flags: u32,
    catalog_entry_id: u32,
    chain_len: i32,
    chain_entries: [u32; MAX_PROTOCOL_CHAIN],
    version: i32,
    kind: SocketKind,
    max_sockaddr: i32,
    min_sockaddr: i32,
    protocol_max_offset: i32,
    network_byte_order: i32,
    security_scheme: i32,
    message_size: u32,
    tag: u32,
    name: Cow<'static, str>,
}

pub(crate) fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(word)
}

pub(crate) fn get_i32(b: &[u8], at: usize) -> i32 {
    get_u32(b, at) as i32
}

pub(crate) fn put(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// The Windows representation: the native `WSAPROTOCOL_INFOW` with sockshare's checks.
#[cfg(windows)]
pub use crate::sys::ProtocolInfo;

#[cfg(not(windows))]
impl ProtocolInfo {
    /// A fresh info for a socket of `kind` shared with `target_pid` under `token`.
    pub(crate) fn for_share(kind: SocketKind, target_pid: u32, token: u64) -> ProtocolInfo {
        ProtocolInfo::for_share_w(kind, target_pid, token).0
    }

    /// [`for_share`](Self::for_share) and its W form, serialised once (the handoff path
    /// needs both).
    pub(crate) fn for_share_w(
        kind: SocketKind,
        target_pid: u32,
        token: u64,
    ) -> (ProtocolInfo, [u8; INFO_W_SIZE]) {
        let mut info = ProtocolInfo::unsigned(kind, target_pid, token);
        let mut w = info.to_bytes_w();
        info.tag = tag_of(&mut w);
        put(&mut w, offset::PROVIDER_RESERVED, info.tag);
        (info, w)
    }

    /// The info's fields, before the integrity check (tag 0).
    fn unsigned(kind: SocketKind, target_pid: u32, token: u64) -> ProtocolInfo {
        let (min_sockaddr, max_sockaddr) = kind.sockaddr_sizes();
        ProtocolInfo {
            service_flags1: kind.service_flags(),
            target_pid,
            token,
            provider_flags: pfl::MATCHES_PROTOCOL_ZERO,
            catalog_entry_id: kind.catalog_entry_id(),
            chain_len: BASE_PROTOCOL,
            chain_entries: [0; MAX_PROTOCOL_CHAIN],
            version: 2,
            kind,
            max_sockaddr,
            min_sockaddr,
            protocol_max_offset: 0,
            network_byte_order: if kind.is_unix() { 1 } else { 0 },
            security_scheme: 0,
            message_size: if kind.is_udp() {
                TCP_UDP_MESSAGE_SIZE
            } else {
                0
            },
            tag: 0,
            name: kind.provider_name(),
        }
    }

    /// Parses an info from untrusted bytes: 628 bytes are the W form, 372 the A form.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Invalid`] when the length is neither, the provider is not sockshare,
    /// the name is not text, the integrity check does not match, or any field differs from
    /// what `duplicate` writes for the info's socket kind (a forged info whose CRC was
    /// mended). Passing these checks means only that the bytes are well formed: whether
    /// the socket is still pending, of this kind, and for this process, is decided when it
    /// is redeemed.
    pub fn from_bytes(bytes: &[u8]) -> Result<ProtocolInfo> {
        let name = match bytes.len() {
            INFO_W_SIZE => {
                let units = bytes[offset::SZ_PROTOCOL..]
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]));
                collect_name(units)?
            }
            INFO_A_SIZE => collect_name(bytes[offset::SZ_PROTOCOL..].iter().map(|&b| b as u16))?,
            n => {
                return Err(invalid(format!(
                    "a protocol info is {INFO_W_SIZE} bytes (WSAPROTOCOL_INFOW) or \
                     {INFO_A_SIZE} bytes (WSAPROTOCOL_INFOA), not {n}"
                )))
            }
        };
        if bytes[offset::PROVIDER_ID..offset::PROVIDER_ID + 16] != PROVIDER_ID {
            return Err(invalid(
                "this protocol info was not made by sockshare's duplicate (unknown provider id)",
            ));
        }
        let mut chain_entries = [0u32; MAX_PROTOCOL_CHAIN];
        for (i, e) in chain_entries.iter_mut().enumerate() {
            *e = get_u32(bytes, offset::PROTOCOL_CHAIN + 4 + 4 * i);
        }
        let info = ProtocolInfo {
            service_flags1: get_u32(bytes, offset::SERVICE_FLAGS1),
            target_pid: get_u32(bytes, offset::SERVICE_FLAGS2),
            token: u64::from(get_u32(bytes, offset::SERVICE_FLAGS3))
                | u64::from(get_u32(bytes, offset::SERVICE_FLAGS4)) << 32,
            provider_flags: get_u32(bytes, offset::PROVIDER_FLAGS),
            catalog_entry_id: get_u32(bytes, offset::CATALOG_ENTRY_ID),
            chain_len: get_i32(bytes, offset::PROTOCOL_CHAIN),
            chain_entries,
            version: get_i32(bytes, offset::VERSION),
            kind: SocketKind::new(
                get_i32(bytes, offset::ADDRESS_FAMILY),
                get_i32(bytes, offset::SOCKET_TYPE),
                get_i32(bytes, offset::PROTOCOL),
            ),
            max_sockaddr: get_i32(bytes, offset::MAX_SOCKADDR),
            min_sockaddr: get_i32(bytes, offset::MIN_SOCKADDR),
            protocol_max_offset: get_i32(bytes, offset::PROTOCOL_MAX_OFFSET),
            network_byte_order: get_i32(bytes, offset::NETWORK_BYTE_ORDER),
            security_scheme: get_i32(bytes, offset::SECURITY_SCHEME),
            message_size: get_u32(bytes, offset::MESSAGE_SIZE),
            tag: get_u32(bytes, offset::PROVIDER_RESERVED),
            name,
        };
        // An info with zeros after its name is, in its W form, byte for byte what
        // serialising it gives (every other byte is read as a field, and the name is ASCII,
        // so an A form's widens to its UTF-16): check the CRC on those bytes, and
        // serialise again only for anything else.
        let width = if bytes.len() == INFO_W_SIZE { 2 } else { 1 };
        let name_end = offset::SZ_PROTOCOL + width * (info.name.len() + 1);
        // Compared with zeros by memcmp, which is vector code: a byte-at-a-time loop cost
        // more than the CRC itself.
        static ZEROS: [u8; INFO_W_SIZE] = [0; INFO_W_SIZE];
        let fast = bytes[name_end..] == ZEROS[name_end..bytes.len()]
            && tag_of_bytes(bytes, &info.name) == info.tag;
        if !fast && info.compute_tag() != info.tag {
            return Err(invalid(
                "this protocol info is damaged or was altered (integrity check failed)",
            ));
        }
        // The CRC catches damage, not forgery: anyone can mend it. Every field but the
        // sharing state is what `duplicate` writes for the info's kind, so a field changed
        // with the CRC mended is refused here, and the kind itself is checked against the
        // one the source pushed when the info is redeemed.
        let made = ProtocolInfo {
            tag: info.tag,
            ..ProtocolInfo::unsigned(info.kind, info.target_pid, info.token)
        };
        if info != made {
            return Err(invalid(
                "this protocol info was altered: its fields are not those sockshare makes \
                 for its socket kind",
            ));
        }
        Ok(info)
    }

    /// The info in the `WSAPROTOCOL_INFOW` layout (628 bytes, UTF-16 `szProtocol`).
    #[must_use]
    #[doc(alias = "WSAPROTOCOL_INFOW")]
    pub fn to_bytes_w(&self) -> [u8; INFO_W_SIZE] {
        let mut b = [0u8; INFO_W_SIZE];
        self.write_fixed(&mut b);
        for (i, unit) in self.name.encode_utf16().enumerate() {
            let at = offset::SZ_PROTOCOL + 2 * i;
            b[at..at + 2].copy_from_slice(&unit.to_le_bytes());
        }
        b
    }

    /// The info in the `WSAPROTOCOL_INFOA` layout (372 bytes, 8-bit `szProtocol`).
    #[must_use]
    #[doc(alias = "WSAPROTOCOL_INFOA")]
    pub fn to_bytes_a(&self) -> [u8; INFO_A_SIZE] {
        let mut b = [0u8; INFO_A_SIZE];
        self.write_fixed(&mut b);
        let name = self.name.as_bytes();
        b[offset::SZ_PROTOCOL..offset::SZ_PROTOCOL + name.len()].copy_from_slice(name);
        b
    }

    fn write_fixed(&self, b: &mut [u8]) {
        put(b, offset::SERVICE_FLAGS1, self.service_flags1);
        put(b, offset::SERVICE_FLAGS2, self.target_pid);
        put(b, offset::SERVICE_FLAGS3, self.token as u32);
        put(b, offset::SERVICE_FLAGS4, (self.token >> 32) as u32);
        put(b, offset::PROVIDER_FLAGS, self.provider_flags);
        b[offset::PROVIDER_ID..offset::PROVIDER_ID + 16].copy_from_slice(&PROVIDER_ID);
        put(b, offset::CATALOG_ENTRY_ID, self.catalog_entry_id);
        put(b, offset::PROTOCOL_CHAIN, self.chain_len as u32);
        for (i, e) in self.chain_entries.iter().enumerate() {
            put(b, offset::PROTOCOL_CHAIN + 4 + 4 * i, *e);
        }
        put(b, offset::VERSION, self.version as u32);
        put(b, offset::ADDRESS_FAMILY, self.kind.family as u32);
        put(b, offset::MAX_SOCKADDR, self.max_sockaddr as u32);
        put(b, offset::MIN_SOCKADDR, self.min_sockaddr as u32);
        put(b, offset::SOCKET_TYPE, self.kind.ty as u32);
        put(b, offset::PROTOCOL, self.kind.protocol as u32);
        put(
            b,
            offset::PROTOCOL_MAX_OFFSET,
            self.protocol_max_offset as u32,
        );
        put(
            b,
            offset::NETWORK_BYTE_ORDER,
            self.network_byte_order as u32,
        );
        put(b, offset::SECURITY_SCHEME, self.security_scheme as u32);
        put(b, offset::MESSAGE_SIZE, self.message_size);
        put(b, offset::PROVIDER_RESERVED, self.tag);
    }

    /// CRC-32 over the W form with the tag zeroed: the A and W forms of one info share it.
    fn compute_tag(&self) -> u32 {
        tag_of(&mut self.to_bytes_w())
    }

    /// The process the info was made for (`dwServiceFlags2`).
    #[must_use]
    pub fn target_pid(&self) -> u32 {
        self.target_pid
    }

    /// Family, type and protocol of the shared socket.
    #[must_use]
    pub fn kind(&self) -> SocketKind {
        self.kind
    }

    /// `iAddressFamily`.
    #[must_use]
    pub fn address_family(&self) -> i32 {
        self.kind.family
    }

    /// `iSocketType`.
    #[must_use]
    pub fn socket_type(&self) -> i32 {
        self.kind.ty
    }

    /// `iProtocol`.
    #[must_use]
    pub fn protocol(&self) -> i32 {
        self.kind.protocol
    }

    /// `dwServiceFlags1`: the `XP1_*` flags.
    #[must_use]
    pub fn service_flags(&self) -> u32 {
        self.service_flags1
    }

    /// `dwProviderFlags`: the `PFL_*` flags.
    #[must_use]
    pub fn provider_flags(&self) -> u32 {
        self.provider_flags
    }

    /// `dwCatalogEntryId`.
    #[must_use]
    pub fn catalog_entry_id(&self) -> u32 {
        self.catalog_entry_id
    }

    /// `ProtocolChain.ChainLen`.
    #[must_use]
    pub fn chain_len(&self) -> i32 {
        self.chain_len
    }

    /// `iVersion`.
    #[must_use]
    pub fn version(&self) -> i32 {
        self.version
    }

    /// `iMinSockAddr` and `iMaxSockAddr`.
    #[must_use]
    pub fn sockaddr_range(&self) -> (i32, i32) {
        (self.min_sockaddr, self.max_sockaddr)
    }

    /// `dwMessageSize`.
    #[must_use]
    pub fn message_size(&self) -> u32 {
        self.message_size
    }

    /// `szProtocol`: the provider's name for the protocol.
    #[must_use]
    pub fn protocol_name(&self) -> &str {
        &self.name
    }

    /// The single-use token naming the pending socket in the target's session.
    pub(crate) fn token(&self) -> u64 {
        self.token
    }
}

/// The integrity tag of well-formed info bytes (either form) whose name is `name` and
/// whose bytes after it are zero: that of their W form, which for the A form is its own
/// bytes with the name widened.
#[cfg(not(windows))]
fn tag_of_bytes(bytes: &[u8], name: &str) -> u32 {
    if let Ok(mut w) = <[u8; INFO_W_SIZE]>::try_from(bytes) {
        return tag_of(&mut w);
    }
    let mut w = [0u8; INFO_W_SIZE];
    w[..offset::SZ_PROTOCOL].copy_from_slice(&bytes[..offset::SZ_PROTOCOL]);
    for (i, c) in name.bytes().enumerate() {
        w[offset::SZ_PROTOCOL + 2 * i] = c;
    }
    tag_of(&mut w)
}

/// The integrity tag of a W form: its CRC-32 with the tag's own field zeroed (in `w`,
/// borrowed rather than copied).
#[cfg(not(windows))]
fn tag_of(w: &mut [u8; INFO_W_SIZE]) -> u32 {
    w[offset::PROVIDER_RESERVED..offset::PROVIDER_RESERVED + 4].fill(0);
    crc32fast::hash(w)
}

pub(crate) fn invalid(message: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::Invalid, message)
}

/// Reads a NUL-terminated ASCII name from `szProtocol`'s 256 characters.
fn collect_name(units: impl Iterator<Item = u16>) -> Result<Cow<'static, str>> {
    let mut name = [0u8; WSAPROTOCOL_LEN + 1];
    for (i, unit) in units.enumerate() {
        match unit {
            0 => {
                let name = std::str::from_utf8(&name[..i]).map_err(|_| foreign_name())?;
                // sockshare's own names are static; keep those without allocating.
                return Ok(KNOWN_NAMES
                    .iter()
                    .find(|known| **known == name)
                    .map_or_else(
                        || Cow::Owned(name.to_owned()),
                        |known| Cow::Borrowed(*known),
                    ));
            }
            0x20..=0x7e if i < name.len() => name[i] = unit as u8,
            _ => return Err(foreign_name()),
        }
    }
    Err(invalid(
        "the protocol name (szProtocol) of this info has no terminating NUL",
    ))
}

fn foreign_name() -> Error {
    invalid("the protocol name (szProtocol) of this info is not sockshare's")
}

#[cfg(all(test, not(windows)))]
mod tests {
    use super::*;

    fn tcp4() -> SocketKind {
        SocketKind::new(af_inet(), sock_stream(), 6)
    }

    #[test]
    fn fields_sit_at_windows_offsets() {
        let info = ProtocolInfo::for_share(tcp4(), 4242, 0x1122_3344_5566_7788);
        for b in [&info.to_bytes_w()[..], &info.to_bytes_a()[..]] {
            assert_eq!(get_u32(b, 0), 0x20066);
            assert_eq!(get_u32(b, 4), 4242);
            assert_eq!(get_u32(b, 8), 0x5566_7788);
            assert_eq!(get_u32(b, 12), 0x1122_3344);
            assert_eq!(&b[20..36], &PROVIDER_ID);
            assert_eq!(get_i32(b, 40), 1);
            assert_eq!(get_i32(b, 72), 2);
            assert_eq!(get_i32(b, 76), 2);
            assert_eq!((get_i32(b, 80), get_i32(b, 84)), (16, 16));
            assert_eq!((get_i32(b, 88), get_i32(b, 92)), (1, 6));
            assert_eq!(get_u32(b, 108), 0);
            assert_eq!(get_u32(b, 112), info.tag);
        }
        let w = info.to_bytes_w();
        assert_eq!(&w[116..120], &[b's', 0, b'o', 0]);
        assert_eq!(&info.to_bytes_a()[116..118], b"so");
    }

    #[test]
    fn udp_ipv6_and_unix_fields() {
        let udp6 = ProtocolInfo::for_share(SocketKind::new(af_inet6(), sock_dgram(), 17), 1, 2);
        assert_eq!(udp6.service_flags(), 0x20609);
        assert_eq!(udp6.message_size(), 0xffbb);
        assert_eq!(udp6.address_family(), 10);
        assert_eq!(udp6.sockaddr_range(), (28, 28));
        assert_eq!(udp6.protocol_name(), "sockshare [UDP/IPv6]");
        let unix = ProtocolInfo::for_share(SocketKind::new(af_unix(), sock_stream(), 0), 1, 2);
        assert_eq!(unix.protocol_name(), "sockshare [UNIX STREAM]");
        assert_eq!(unix.sockaddr_range(), (2, 110));
    }

    #[test]
    fn a_and_w_forms_round_trip_to_the_same_info() {
        let info = ProtocolInfo::for_share(tcp4(), 77, u64::MAX - 5);
        assert_eq!(ProtocolInfo::from_bytes(&info.to_bytes_w()).unwrap(), info);
        assert_eq!(ProtocolInfo::from_bytes(&info.to_bytes_a()).unwrap(), info);
    }

    #[test]
    fn every_single_byte_change_is_detected() {
        let info = ProtocolInfo::for_share(tcp4(), 77, 99);
        let forms = [
            (info.to_bytes_w().to_vec(), 2),
            (info.to_bytes_a().to_vec(), 1),
        ];
        for (bytes, width) in forms {
            for at in 0..bytes.len() {
                let mut bad = bytes.clone();
                bad[at] ^= 0x01;
                let parsed = ProtocolInfo::from_bytes(&bad);
                // Past the name's terminator the bytes carry nothing: a change there is
                // harmless.
                let name_end = offset::SZ_PROTOCOL + width * (info.protocol_name().len() + 1);
                let meaningful = at < name_end;
                assert_eq!(parsed.is_err(), meaningful, "byte {at} of {}", bytes.len());
            }
        }
    }

    #[test]
    fn a_field_changed_with_its_crc_mended_is_refused() {
        let info = ProtocolInfo::for_share(tcp4(), 77, 99);
        // Anyone can recompute a CRC: rewrite fields, then mend the tag.
        let forge = |edit: &dyn Fn(&mut [u8; INFO_W_SIZE])| {
            let mut w = info.to_bytes_w();
            edit(&mut w);
            let tag = tag_of(&mut w);
            put(&mut w, offset::PROVIDER_RESERVED, tag);
            ProtocolInfo::from_bytes(&w)
        };
        assert!(forge(&|_| {}).is_ok(), "the unaltered info must parse");
        // TCP rewritten to UDP with every derived field left as it was.
        let to_udp = |w: &mut [u8; INFO_W_SIZE]| {
            put(w, offset::SOCKET_TYPE, sock_dgram() as u32);
            put(w, offset::PROTOCOL, 17);
        };
        assert!(forge(&to_udp).is_err());
        // A field nothing reads, used to steer the CRC.
        assert!(forge(&|w| put(w, offset::PROTOCOL_CHAIN + 4, 0xdead_beef)).is_err());
        assert!(forge(&|w| put(w, offset::SECURITY_SCHEME, 1)).is_err());
    }

    #[test]
    fn the_handoff_path_serialises_the_same_bytes() {
        let (info, w) = ProtocolInfo::for_share_w(tcp4(), 4242, 0xfeed);
        assert_eq!(info, ProtocolInfo::for_share(tcp4(), 4242, 0xfeed));
        assert_eq!(w, info.to_bytes_w());
        assert_eq!(ProtocolInfo::from_bytes(&w).unwrap(), info);
        // Bytes after the name carry nothing: with garbage there the info parses the same
        // (through the canonical check, not the fast one).
        let mut noisy = w;
        noisy[INFO_W_SIZE - 1] = 0x7f;
        assert_eq!(ProtocolInfo::from_bytes(&noisy).unwrap(), info);
        let mut noisy_a = info.to_bytes_a();
        noisy_a[INFO_A_SIZE - 1] = 0x7f;
        assert_eq!(ProtocolInfo::from_bytes(&noisy_a).unwrap(), info);
    }

    #[test]
    fn bad_lengths_and_names_are_refused() {
        for n in [0, 1, 371, 373, 627, 629, 4096] {
            let e = ProtocolInfo::from_bytes(&vec![0u8; n]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid);
        }
        let mut a = ProtocolInfo::for_share(tcp4(), 1, 1).to_bytes_a();
        a[offset::SZ_PROTOCOL..].fill(b'x');
        assert!(ProtocolInfo::from_bytes(&a).is_err());
    }
}
