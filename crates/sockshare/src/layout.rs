//! The byte layout of `WSAPROTOCOL_INFOA/W` and the kinds of socket an info describes:
//! what the portable [`ProtocolInfo`](crate::ProtocolInfo) and every backend share. A
//! leaf: it imports nothing of the crate but its errors. `info.rs` makes its public items
//! public as `sockshare::info`.

use crate::error::{Error, ErrorKind};

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
pub(crate) fn af_inet() -> i32 {
    socket2::Domain::IPV4.into()
}
pub(crate) fn af_inet6() -> i32 {
    socket2::Domain::IPV6.into()
}
pub(crate) fn af_unix() -> i32 {
    socket2::Domain::UNIX.into()
}
pub(crate) fn sock_stream() -> i32 {
    socket2::Type::STREAM.into()
}
pub(crate) fn sock_dgram() -> i32 {
    socket2::Type::DGRAM.into()
}

impl SocketKind {
    /// A kind from raw `AF_*`, `SOCK_*` and protocol numbers.
    #[must_use]
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

pub(crate) fn invalid(message: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::Invalid, message)
}

/// The fields of an info that mean the same in every representation, as the portable
/// getters of [`ProtocolInfo`](crate::ProtocolInfo) read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) service_flags1: u32,
    pub(crate) provider_flags: u32,
    pub(crate) catalog_entry_id: u32,
    pub(crate) chain_len: i32,
    pub(crate) version: i32,
    pub(crate) kind: SocketKind,
    pub(crate) min_sockaddr: i32,
    pub(crate) max_sockaddr: i32,
    pub(crate) message_size: u32,
}

impl Header {
    /// The header of info bytes in either form (the fields before `szProtocol` are the
    /// same in both).
    #[cfg(windows)]
    pub(crate) fn read(b: &[u8]) -> Header {
        Header {
            service_flags1: get_u32(b, offset::SERVICE_FLAGS1),
            provider_flags: get_u32(b, offset::PROVIDER_FLAGS),
            catalog_entry_id: get_u32(b, offset::CATALOG_ENTRY_ID),
            chain_len: get_i32(b, offset::PROTOCOL_CHAIN),
            version: get_i32(b, offset::VERSION),
            kind: SocketKind::new(
                get_i32(b, offset::ADDRESS_FAMILY),
                get_i32(b, offset::SOCKET_TYPE),
                get_i32(b, offset::PROTOCOL),
            ),
            min_sockaddr: get_i32(b, offset::MIN_SOCKADDR),
            max_sockaddr: get_i32(b, offset::MAX_SOCKADDR),
            message_size: get_u32(b, offset::MESSAGE_SIZE),
        }
    }
}
