//! The Winsock types and constants, laid out as Windows' `winsock2.h` lays them out.
//!
//! `include/winsock2.h` declares the same things for C; the test `header_matches_rust`
//! compiles a C program that asserts every constant in [`CONSTANTS`] and every size and
//! offset in [`LAYOUTS`] against the header, so the two cannot drift apart.

#![allow(non_camel_case_types, non_snake_case)]

use std::mem::{offset_of, size_of};

use sockshare::info::{offset, MAX_PROTOCOL_CHAIN as CHAIN, WSAPROTOCOL_LEN as PROTO_LEN};

/// `SOCKET`: an unsigned pointer-sized integer; on Linux it holds the file descriptor.
pub type SOCKET = usize;
/// `WORD`: 16 bits.
pub type WORD = u16;
/// `DWORD`: 32 bits (Windows' `unsigned long`, which is 32 bits there).
pub type DWORD = u32;
/// `WCHAR`: a UTF-16 code unit, 16 bits on every platform (not `wchar_t`).
pub type WCHAR = u16;
/// `GROUP`: a socket group id; only 0 (no group) is supported.
pub type GROUP = u32;

/// `GUID`, 16 bytes (`Data1` is Windows' 32-bit `unsigned long`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GUID {
    /// First 32 bits.
    pub Data1: u32,
    /// Next 16 bits.
    pub Data2: u16,
    /// Next 16 bits.
    pub Data3: u16,
    /// Last 8 bytes.
    pub Data4: [u8; 8],
}

/// `WSAPROTOCOLCHAIN`, 32 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WSAPROTOCOLCHAIN {
    /// `BASE_PROTOCOL` (1) for a base protocol, `LAYERED_PROTOCOL` (0) for a layer.
    pub ChainLen: i32,
    /// Catalog ids of the chain.
    pub ChainEntries: [DWORD; CHAIN],
}

macro_rules! protocol_info {
    ($(#[$doc:meta])* $name:ident, $char:ty) => {
        $(#[$doc])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy)]
        pub struct $name {
            /// `XP1_*` flags.
            pub dwServiceFlags1: DWORD,
            /// Reserved (sockshare: the target process id).
            pub dwServiceFlags2: DWORD,
            /// Reserved (sockshare: the single-use token, low half).
            pub dwServiceFlags3: DWORD,
            /// Reserved (sockshare: the single-use token, high half).
            pub dwServiceFlags4: DWORD,
            /// `PFL_*` flags.
            pub dwProviderFlags: DWORD,
            /// The provider's GUID.
            pub ProviderId: GUID,
            /// The catalog entry of the protocol.
            pub dwCatalogEntryId: DWORD,
            /// The protocol chain.
            pub ProtocolChain: WSAPROTOCOLCHAIN,
            /// Protocol version (2).
            pub iVersion: i32,
            /// `AF_*`, with this platform's numbers.
            pub iAddressFamily: i32,
            /// Largest sockaddr length.
            pub iMaxSockAddr: i32,
            /// Smallest sockaddr length.
            pub iMinSockAddr: i32,
            /// `SOCK_*`.
            pub iSocketType: i32,
            /// `IPPROTO_*`.
            pub iProtocol: i32,
            /// Protocol number range (0).
            pub iProtocolMaxOffset: i32,
            /// `BIGENDIAN` (0) or `LITTLEENDIAN` (1).
            pub iNetworkByteOrder: i32,
            /// `SECURITY_PROTOCOL_NONE` (0).
            pub iSecurityScheme: i32,
            /// Largest message size.
            pub dwMessageSize: DWORD,
            /// Reserved for the provider (sockshare: the integrity check).
            pub dwProviderReserved: DWORD,
            /// The provider's name for the protocol, NUL-terminated.
            pub szProtocol: [$char; PROTO_LEN + 1],
        }
    };
}

protocol_info!(
    /// `WSAPROTOCOL_INFOA`, 372 bytes.
    WSAPROTOCOL_INFOA,
    u8
);
protocol_info!(
    /// `WSAPROTOCOL_INFOW`, 628 bytes (`WCHAR` is 16 bits).
    WSAPROTOCOL_INFOW,
    WCHAR
);

/// `WSADESCRIPTION_LEN`.
pub const DESCRIPTION_LEN: usize = 256;
/// `WSASYS_STATUS_LEN`.
pub const SYS_STATUS_LEN: usize = 128;

/// `WSADATA` in Windows' 64-bit layout: on Win64 the shorts and the pointer come before
/// the two strings (408 bytes with a 64-bit pointer).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WSADATA {
    /// The version the caller should use (`MAKEWORD(major, minor)`).
    pub wVersion: WORD,
    /// The highest version this library supports (2.2).
    pub wHighVersion: WORD,
    /// Ignored from version 2 on (0).
    pub iMaxSockets: u16,
    /// Ignored from version 2 on (0).
    pub iMaxUdpDg: u16,
    /// Ignored from version 2 on (NULL).
    pub lpVendorInfo: *mut std::ffi::c_char,
    /// A description of the implementation, NUL-terminated.
    pub szDescription: [std::ffi::c_char; DESCRIPTION_LEN + 1],
    /// Status text, NUL-terminated.
    pub szSystemStatus: [std::ffi::c_char; SYS_STATUS_LEN + 1],
}

// The Rust definitions sit exactly where sockshare's info layout says (and where Windows
// puts them); the header asserts the same numbers in C.
const _: () = {
    assert!(size_of::<GUID>() == 16);
    assert!(size_of::<WSAPROTOCOLCHAIN>() == 32);
    assert!(size_of::<WSAPROTOCOL_INFOA>() == sockshare::INFO_A_SIZE);
    assert!(size_of::<WSAPROTOCOL_INFOW>() == sockshare::INFO_W_SIZE);
    macro_rules! at {
        ($field:ident, $off:expr) => {
            assert!(offset_of!(WSAPROTOCOL_INFOA, $field) == $off);
            assert!(offset_of!(WSAPROTOCOL_INFOW, $field) == $off);
        };
    }
    at!(dwServiceFlags1, offset::SERVICE_FLAGS1);
    at!(dwServiceFlags2, offset::SERVICE_FLAGS2);
    at!(dwServiceFlags3, offset::SERVICE_FLAGS3);
    at!(dwServiceFlags4, offset::SERVICE_FLAGS4);
    at!(dwProviderFlags, offset::PROVIDER_FLAGS);
    at!(ProviderId, offset::PROVIDER_ID);
    at!(dwCatalogEntryId, offset::CATALOG_ENTRY_ID);
    at!(ProtocolChain, offset::PROTOCOL_CHAIN);
    at!(iVersion, offset::VERSION);
    at!(iAddressFamily, offset::ADDRESS_FAMILY);
    at!(iMaxSockAddr, offset::MAX_SOCKADDR);
    at!(iMinSockAddr, offset::MIN_SOCKADDR);
    at!(iSocketType, offset::SOCKET_TYPE);
    at!(iProtocol, offset::PROTOCOL);
    at!(iProtocolMaxOffset, offset::PROTOCOL_MAX_OFFSET);
    at!(iNetworkByteOrder, offset::NETWORK_BYTE_ORDER);
    at!(iSecurityScheme, offset::SECURITY_SCHEME);
    at!(dwMessageSize, offset::MESSAGE_SIZE);
    at!(dwProviderReserved, offset::PROVIDER_RESERVED);
    at!(szProtocol, offset::SZ_PROTOCOL);
    assert!(offset_of!(WSADATA, wVersion) == 0);
    assert!(offset_of!(WSADATA, wHighVersion) == 2);
    assert!(offset_of!(WSADATA, iMaxSockets) == 4);
    assert!(offset_of!(WSADATA, iMaxUdpDg) == 6);
    assert!(offset_of!(WSADATA, lpVendorInfo) == 8);
    assert!(offset_of!(WSADATA, szDescription) == 8 + size_of::<usize>());
    assert!(offset_of!(WSADATA, szSystemStatus) == 8 + size_of::<usize>() + 257);
    #[cfg(target_pointer_width = "64")]
    assert!(size_of::<WSADATA>() == 408);
};

/// One struct's size and field offsets, as the header must have them.
#[derive(Debug)]
pub struct Layout {
    /// The C type name.
    pub name: &'static str,
    /// `sizeof`.
    pub size: usize,
    /// `(field, offsetof)`.
    pub fields: &'static [(&'static str, usize)],
}

macro_rules! layout {
    ($ty:ident { $($field:ident),* $(,)? }) => {
        Layout {
            name: stringify!($ty),
            size: size_of::<$ty>(),
            fields: &[$((stringify!($field), offset_of!($ty, $field))),*],
        }
    };
}

macro_rules! info_layout {
    ($ty:ident) => {
        layout!($ty {
            dwServiceFlags1,
            dwServiceFlags2,
            dwServiceFlags3,
            dwServiceFlags4,
            dwProviderFlags,
            ProviderId,
            dwCatalogEntryId,
            ProtocolChain,
            iVersion,
            iAddressFamily,
            iMaxSockAddr,
            iMinSockAddr,
            iSocketType,
            iProtocol,
            iProtocolMaxOffset,
            iNetworkByteOrder,
            iSecurityScheme,
            dwMessageSize,
            dwProviderReserved,
            szProtocol,
        })
    };
}

/// Every struct of the header with its Rust layout, for the test that checks the header.
pub const LAYOUTS: &[Layout] = &[
    layout!(GUID {
        Data1,
        Data2,
        Data3,
        Data4
    }),
    layout!(WSAPROTOCOLCHAIN {
        ChainLen,
        ChainEntries
    }),
    info_layout!(WSAPROTOCOL_INFOA),
    info_layout!(WSAPROTOCOL_INFOW),
    layout!(WSADATA {
        wVersion,
        wHighVersion,
        iMaxSockets,
        iMaxUdpDg,
        lpVendorInfo,
        szDescription,
        szSystemStatus,
    }),
];

macro_rules! constants {
    ($($(#[$doc:meta])* $name:ident: $ty:ty = $value:expr;)*) => {
        $($(#[$doc])* pub const $name: $ty = $value;)*

        /// Every constant of the header with its value, for the test that checks the header.
        pub const CONSTANTS: &[(&str, i64)] = &[$((stringify!($name), $value as i64)),*];
    };
}

use sockshare::info::{pfl, xp1};
// The codes of the errors sockshare reports come from it, so the two cannot disagree.
use sockshare::ErrorKind as K;

constants! {
    /// `INVALID_SOCKET`: what `WSASocket` returns on failure.
    INVALID_SOCKET: SOCKET = !0;
    /// `SOCKET_ERROR`: what the other functions return on failure.
    SOCKET_ERROR: i32 = -1;
    /// `FROM_PROTOCOL_INFO`: take af, type or protocol from the info.
    FROM_PROTOCOL_INFO: i32 = -1;
    /// `WSAPROTOCOL_LEN`.
    WSAPROTOCOL_LEN: usize = PROTO_LEN;
    /// `MAX_PROTOCOL_CHAIN`.
    MAX_PROTOCOL_CHAIN: usize = CHAIN;
    /// `BASE_PROTOCOL`.
    BASE_PROTOCOL: i32 = sockshare::info::BASE_PROTOCOL;
    /// `LAYERED_PROTOCOL`.
    LAYERED_PROTOCOL: i32 = 0;
    /// `WSADESCRIPTION_LEN`.
    WSADESCRIPTION_LEN: usize = DESCRIPTION_LEN;
    /// `WSASYS_STATUS_LEN`.
    WSASYS_STATUS_LEN: usize = SYS_STATUS_LEN;
    /// `BIGENDIAN`.
    BIGENDIAN: i32 = 0;
    /// `LITTLEENDIAN`.
    LITTLEENDIAN: i32 = 1;
    /// `SECURITY_PROTOCOL_NONE`.
    SECURITY_PROTOCOL_NONE: i32 = 0;
    /// `SD_RECEIVE`: `shutdown`'s `how`, Linux's `SHUT_RD`.
    SD_RECEIVE: i32 = libc::SHUT_RD;
    /// `SD_SEND`: `shutdown`'s `how`, Linux's `SHUT_WR`.
    SD_SEND: i32 = libc::SHUT_WR;
    /// `SD_BOTH`: `shutdown`'s `how`, Linux's `SHUT_RDWR`.
    SD_BOTH: i32 = libc::SHUT_RDWR;

    /// `WSA_FLAG_OVERLAPPED`: accepted, no effect on Linux (every descriptor can be
    /// used with any I/O model).
    WSA_FLAG_OVERLAPPED: DWORD = 0x01;
    /// `WSA_FLAG_MULTIPOINT_C_ROOT`: not supported (`WSAEINVAL`).
    WSA_FLAG_MULTIPOINT_C_ROOT: DWORD = 0x02;
    /// `WSA_FLAG_MULTIPOINT_C_LEAF`: not supported (`WSAEINVAL`).
    WSA_FLAG_MULTIPOINT_C_LEAF: DWORD = 0x04;
    /// `WSA_FLAG_MULTIPOINT_D_ROOT`: not supported (`WSAEINVAL`).
    WSA_FLAG_MULTIPOINT_D_ROOT: DWORD = 0x08;
    /// `WSA_FLAG_MULTIPOINT_D_LEAF`: not supported (`WSAEINVAL`).
    WSA_FLAG_MULTIPOINT_D_LEAF: DWORD = 0x10;
    /// `WSA_FLAG_ACCESS_SYSTEM_SECURITY`: not supported (`WSAEINVAL`).
    WSA_FLAG_ACCESS_SYSTEM_SECURITY: DWORD = 0x40;
    /// `WSA_FLAG_NO_HANDLE_INHERIT`: the descriptor is close-on-exec.
    WSA_FLAG_NO_HANDLE_INHERIT: DWORD = 0x80;
    /// `WSA_FLAG_REGISTERED_IO`: not supported (`WSAEINVAL`).
    WSA_FLAG_REGISTERED_IO: DWORD = 0x100;

    /// `XP1_CONNECTIONLESS`.
    XP1_CONNECTIONLESS: DWORD = xp1::CONNECTIONLESS;
    /// `XP1_GUARANTEED_DELIVERY`.
    XP1_GUARANTEED_DELIVERY: DWORD = xp1::GUARANTEED_DELIVERY;
    /// `XP1_GUARANTEED_ORDER`.
    XP1_GUARANTEED_ORDER: DWORD = xp1::GUARANTEED_ORDER;
    /// `XP1_MESSAGE_ORIENTED`.
    XP1_MESSAGE_ORIENTED: DWORD = xp1::MESSAGE_ORIENTED;
    /// `XP1_PSEUDO_STREAM`.
    XP1_PSEUDO_STREAM: DWORD = xp1::PSEUDO_STREAM;
    /// `XP1_GRACEFUL_CLOSE`.
    XP1_GRACEFUL_CLOSE: DWORD = xp1::GRACEFUL_CLOSE;
    /// `XP1_EXPEDITED_DATA`.
    XP1_EXPEDITED_DATA: DWORD = xp1::EXPEDITED_DATA;
    /// `XP1_CONNECT_DATA`.
    XP1_CONNECT_DATA: DWORD = xp1::CONNECT_DATA;
    /// `XP1_DISCONNECT_DATA`.
    XP1_DISCONNECT_DATA: DWORD = xp1::DISCONNECT_DATA;
    /// `XP1_SUPPORT_BROADCAST`.
    XP1_SUPPORT_BROADCAST: DWORD = xp1::SUPPORT_BROADCAST;
    /// `XP1_SUPPORT_MULTIPOINT`.
    XP1_SUPPORT_MULTIPOINT: DWORD = xp1::SUPPORT_MULTIPOINT;
    /// `XP1_MULTIPOINT_CONTROL_PLANE`.
    XP1_MULTIPOINT_CONTROL_PLANE: DWORD = xp1::MULTIPOINT_CONTROL_PLANE;
    /// `XP1_MULTIPOINT_DATA_PLANE`.
    XP1_MULTIPOINT_DATA_PLANE: DWORD = xp1::MULTIPOINT_DATA_PLANE;
    /// `XP1_QOS_SUPPORTED`.
    XP1_QOS_SUPPORTED: DWORD = xp1::QOS_SUPPORTED;
    /// `XP1_INTERRUPT`.
    XP1_INTERRUPT: DWORD = xp1::INTERRUPT;
    /// `XP1_UNI_SEND`.
    XP1_UNI_SEND: DWORD = xp1::UNI_SEND;
    /// `XP1_UNI_RECV`.
    XP1_UNI_RECV: DWORD = xp1::UNI_RECV;
    /// `XP1_IFS_HANDLES`.
    XP1_IFS_HANDLES: DWORD = xp1::IFS_HANDLES;
    /// `XP1_PARTIAL_MESSAGE`.
    XP1_PARTIAL_MESSAGE: DWORD = xp1::PARTIAL_MESSAGE;
    /// `XP1_SAN_SUPPORT_SDP`.
    XP1_SAN_SUPPORT_SDP: DWORD = xp1::SAN_SUPPORT_SDP;

    /// `PFL_MULTIPLE_PROTO_ENTRIES`.
    PFL_MULTIPLE_PROTO_ENTRIES: DWORD = pfl::MULTIPLE_PROTO_ENTRIES;
    /// `PFL_RECOMMENDED_PROTO_ENTRY`.
    PFL_RECOMMENDED_PROTO_ENTRY: DWORD = pfl::RECOMMENDED_PROTO_ENTRY;
    /// `PFL_HIDDEN`.
    PFL_HIDDEN: DWORD = pfl::HIDDEN;
    /// `PFL_MATCHES_PROTOCOL_ZERO`.
    PFL_MATCHES_PROTOCOL_ZERO: DWORD = pfl::MATCHES_PROTOCOL_ZERO;
    /// `PFL_NETWORKDIRECT_PROVIDER`.
    PFL_NETWORKDIRECT_PROVIDER: DWORD = pfl::NETWORKDIRECT_PROVIDER;

    /// `WSABASEERR`.
    WSABASEERR: i32 = 10000;
    /// `WSAEINTR`.
    WSAEINTR: i32 = 10004;
    /// `WSAEBADF`.
    WSAEBADF: i32 = 10009;
    /// `WSAEACCES`.
    WSAEACCES: i32 = 10013;
    /// `WSAEFAULT`.
    WSAEFAULT: i32 = K::Fault.code();
    /// `WSAEINVAL`.
    WSAEINVAL: i32 = K::Invalid.code();
    /// `WSAEMFILE`.
    WSAEMFILE: i32 = K::TooManyDescriptors.code();
    /// `WSAEWOULDBLOCK`.
    WSAEWOULDBLOCK: i32 = 10035;
    /// `WSAEINPROGRESS`.
    WSAEINPROGRESS: i32 = K::InProgress.code();
    /// `WSAEALREADY`.
    WSAEALREADY: i32 = 10037;
    /// `WSAENOTSOCK`.
    WSAENOTSOCK: i32 = K::NotSocket.code();
    /// `WSAEDESTADDRREQ`.
    WSAEDESTADDRREQ: i32 = 10039;
    /// `WSAEMSGSIZE`.
    WSAEMSGSIZE: i32 = 10040;
    /// `WSAEPROTOTYPE`.
    WSAEPROTOTYPE: i32 = 10041;
    /// `WSAENOPROTOOPT`.
    WSAENOPROTOOPT: i32 = 10042;
    /// `WSAEPROTONOSUPPORT`.
    WSAEPROTONOSUPPORT: i32 = 10043;
    /// `WSAESOCKTNOSUPPORT`.
    WSAESOCKTNOSUPPORT: i32 = 10044;
    /// `WSAEOPNOTSUPP`.
    WSAEOPNOTSUPP: i32 = 10045;
    /// `WSAEPFNOSUPPORT`.
    WSAEPFNOSUPPORT: i32 = 10046;
    /// `WSAEAFNOSUPPORT`.
    WSAEAFNOSUPPORT: i32 = 10047;
    /// `WSAEADDRINUSE`.
    WSAEADDRINUSE: i32 = 10048;
    /// `WSAEADDRNOTAVAIL`.
    WSAEADDRNOTAVAIL: i32 = 10049;
    /// `WSAENETDOWN`.
    WSAENETDOWN: i32 = K::NetDown.code();
    /// `WSAENETUNREACH`.
    WSAENETUNREACH: i32 = 10051;
    /// `WSAENETRESET`.
    WSAENETRESET: i32 = 10052;
    /// `WSAECONNABORTED`.
    WSAECONNABORTED: i32 = 10053;
    /// `WSAECONNRESET`.
    WSAECONNRESET: i32 = 10054;
    /// `WSAENOBUFS`.
    WSAENOBUFS: i32 = K::NoBufferSpace.code();
    /// `WSAEISCONN`.
    WSAEISCONN: i32 = 10056;
    /// `WSAENOTCONN`.
    WSAENOTCONN: i32 = 10057;
    /// `WSAESHUTDOWN`.
    WSAESHUTDOWN: i32 = 10058;
    /// `WSAETOOMANYREFS`.
    WSAETOOMANYREFS: i32 = 10059;
    /// `WSAETIMEDOUT`.
    WSAETIMEDOUT: i32 = 10060;
    /// `WSAECONNREFUSED`.
    WSAECONNREFUSED: i32 = 10061;
    /// `WSAELOOP`.
    WSAELOOP: i32 = 10062;
    /// `WSAENAMETOOLONG`.
    WSAENAMETOOLONG: i32 = 10063;
    /// `WSAEHOSTDOWN`.
    WSAEHOSTDOWN: i32 = 10064;
    /// `WSAEHOSTUNREACH`.
    WSAEHOSTUNREACH: i32 = 10065;
    /// `WSAENOTEMPTY`.
    WSAENOTEMPTY: i32 = 10066;
    /// `WSAEPROCLIM`.
    WSAEPROCLIM: i32 = 10067;
    /// `WSAEUSERS`.
    WSAEUSERS: i32 = 10068;
    /// `WSAEDQUOT`.
    WSAEDQUOT: i32 = 10069;
    /// `WSAESTALE`.
    WSAESTALE: i32 = 10070;
    /// `WSAEREMOTE`.
    WSAEREMOTE: i32 = 10071;
    /// `WSASYSNOTREADY`.
    WSASYSNOTREADY: i32 = K::SystemNotReady.code();
    /// `WSAVERNOTSUPPORTED`.
    WSAVERNOTSUPPORTED: i32 = K::VersionNotSupported.code();
    /// `WSANOTINITIALISED`.
    WSANOTINITIALISED: i32 = K::NotInitialised.code();
    /// `WSAEDISCON`.
    WSAEDISCON: i32 = 10101;
    /// `WSAENOMORE`.
    WSAENOMORE: i32 = 10102;
    /// `WSAECANCELLED`.
    WSAECANCELLED: i32 = 10103;
    /// `WSAEINVALIDPROCTABLE`.
    WSAEINVALIDPROCTABLE: i32 = 10104;
    /// `WSAEINVALIDPROVIDER`.
    WSAEINVALIDPROVIDER: i32 = 10105;
    /// `WSAEPROVIDERFAILEDINIT`.
    WSAEPROVIDERFAILEDINIT: i32 = 10106;
    /// `WSASYSCALLFAILURE`.
    WSASYSCALLFAILURE: i32 = 10107;
    /// `WSASERVICE_NOT_FOUND`.
    WSASERVICE_NOT_FOUND: i32 = 10108;
    /// `WSATYPE_NOT_FOUND`.
    WSATYPE_NOT_FOUND: i32 = 10109;
    /// `WSA_E_NO_MORE`.
    WSA_E_NO_MORE: i32 = 10110;
    /// `WSA_E_CANCELLED`.
    WSA_E_CANCELLED: i32 = 10111;
    /// `WSAEREFUSED`.
    WSAEREFUSED: i32 = 10112;
    /// `WSAHOST_NOT_FOUND`.
    WSAHOST_NOT_FOUND: i32 = 11001;
    /// `WSATRY_AGAIN`.
    WSATRY_AGAIN: i32 = 11002;
    /// `WSANO_RECOVERY`.
    WSANO_RECOVERY: i32 = 11003;
    /// `WSANO_DATA`.
    WSANO_DATA: i32 = 11004;
}

/// `FIONBIO` as Windows numbers it (`_IOW('f', 126, u_long)`); `ioctlsocket` accepts it
/// beside Linux's own `FIONBIO`, which is what the header gives C programs.
pub const WINDOWS_FIONBIO: u32 = 0x8004_667e;
/// `FIONREAD` as Windows numbers it (`_IOR('f', 127, u_long)`).
pub const WINDOWS_FIONREAD: u32 = 0x4004_667f;
