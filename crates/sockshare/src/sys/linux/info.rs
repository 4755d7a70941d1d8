//! The Linux representation of a protocol info: the fields of sockshare's own provider,
//! and the single-use token and integrity tag in the provider's reserved words (the
//! layout is in `info.rs`). The portable `ProtocolInfo` wraps it.

use std::borrow::Cow;

use crate::error::{Error, Result};
use crate::layout::{
    af_inet, af_inet6, af_unix, get_i32, get_u32, invalid, offset, pfl, put, sock_dgram,
    sock_stream, xp1, Header, SocketKind, BASE_PROTOCOL, INFO_A_SIZE, INFO_W_SIZE, PROVIDER_ID,
    WSAPROTOCOL_LEN,
};

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

fn sock_seqpacket() -> i32 {
    socket2::Type::SEQPACKET.into()
}

fn service_flags(kind: SocketKind) -> u32 {
    use xp1::*;
    let connected = GUARANTEED_DELIVERY | GUARANTEED_ORDER | GRACEFUL_CLOSE;
    IFS_HANDLES
        | if kind.is_tcp() {
            connected | EXPEDITED_DATA
        } else if kind.is_udp() {
            SUPPORT_MULTIPOINT | SUPPORT_BROADCAST | MESSAGE_ORIENTED | CONNECTIONLESS
        } else if kind.is_unix() && kind.socket_type() == sock_stream() {
            connected
        } else if kind.is_unix() && kind.socket_type() == sock_dgram() {
            MESSAGE_ORIENTED | CONNECTIONLESS | GUARANTEED_DELIVERY | GUARANTEED_ORDER
        } else if kind.is_unix() && kind.socket_type() == sock_seqpacket() {
            connected | MESSAGE_ORIENTED
        } else {
            0
        }
}

fn sockaddr_sizes(kind: SocketKind) -> (i32, i32) {
    if kind.family() == af_inet() {
        (16, 16)
    } else if kind.family() == af_inet6() {
        (28, 28)
    } else if kind.family() == af_unix() {
        (2, 110)
    } else {
        (0, 0)
    }
}

fn catalog_entry_id(kind: SocketKind) -> u32 {
    // Stable small ids per (family, type), in the range Windows uses for base providers.
    1000 + (kind.family() as u32 & 0xff) * 16 + (kind.socket_type() as u32 & 0xf)
}

/// The provider's name: a static string for every common kind, so making and parsing
/// an info allocates nothing on the handoff path.
fn provider_name(kind: SocketKind) -> Cow<'static, str> {
    let v6 = usize::from(kind.family() == af_inet6());
    let index = if kind.is_tcp() {
        v6
    } else if kind.is_udp() {
        2 + v6
    } else if kind.is_unix() && kind.socket_type() == sock_stream() {
        4
    } else if kind.is_unix() && kind.socket_type() == sock_dgram() {
        5
    } else if kind.is_unix() && kind.socket_type() == sock_seqpacket() {
        6
    } else {
        return Cow::Owned(format!(
            "sockshare [AF {} TYPE {}]",
            kind.family(),
            kind.socket_type()
        ));
    };
    Cow::Borrowed(KNOWN_NAMES[index])
}

/// A protocol info as sockshare's provider makes it. Only the sharing state and the kind
/// are kept: every other field, and the integrity tag, is a function of them, written
/// when the info is serialised, and `from_bytes` refuses bytes whose fields differ from
/// what they would be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Info {
    target_pid: u32,
    token: u64,
    kind: SocketKind,
    /// `provider_name(kind)`, kept so it can be lent as a `&str`.
    name: Cow<'static, str>,
}

impl Info {
    /// A fresh info for a socket of `kind` shared with `target_pid` under `token`.
    pub(crate) fn for_share(kind: SocketKind, target_pid: u32, token: u64) -> Info {
        Info {
            target_pid,
            token,
            kind,
            name: provider_name(kind),
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
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Info> {
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
        // The CRC over the bytes up to the name's end (what follows the name carries
        // nothing): it catches damage.
        if tag_of_bytes(bytes, &name) != get_u32(bytes, offset::PROVIDER_RESERVED) {
            return Err(invalid(
                "this protocol info is damaged or was altered (integrity check failed)",
            ));
        }
        // The CRC catches damage, not forgery: anyone can mend it. Every field but the
        // sharing state is what `duplicate` writes for the info's kind, so a field changed
        // with the CRC mended is refused here, and the kind itself is checked against the
        // one the source pushed when the info is redeemed.
        let info = Info::for_share(
            SocketKind::new(
                get_i32(bytes, offset::ADDRESS_FAMILY),
                get_i32(bytes, offset::SOCKET_TYPE),
                get_i32(bytes, offset::PROTOCOL),
            ),
            get_u32(bytes, offset::SERVICE_FLAGS2),
            u64::from(get_u32(bytes, offset::SERVICE_FLAGS3))
                | u64::from(get_u32(bytes, offset::SERVICE_FLAGS4)) << 32,
        );
        let mut made = [0u8; offset::SZ_PROTOCOL];
        info.write_fixed(&mut made);
        let tag = offset::PROVIDER_RESERVED..offset::PROVIDER_RESERVED + 4;
        if bytes[..tag.start] != made[..tag.start]
            || bytes[tag.end..offset::SZ_PROTOCOL] != made[tag.end..]
            || name != info.name
        {
            return Err(invalid(
                "this protocol info was altered: its fields are not those sockshare makes \
                 for its socket kind",
            ));
        }
        Ok(info)
    }

    /// The info in the `WSAPROTOCOL_INFOW` layout (628 bytes, UTF-16 `szProtocol`).
    #[must_use]
    pub(crate) fn to_bytes_w(&self) -> [u8; INFO_W_SIZE] {
        let mut b = [0u8; INFO_W_SIZE];
        self.write_fixed(&mut b);
        for (i, unit) in self.name.encode_utf16().enumerate() {
            let at = offset::SZ_PROTOCOL + 2 * i;
            b[at..at + 2].copy_from_slice(&unit.to_le_bytes());
        }
        let tag = tag_of(&mut b);
        put(&mut b, offset::PROVIDER_RESERVED, tag);
        b
    }

    /// The info in the `WSAPROTOCOL_INFOA` layout (372 bytes, 8-bit `szProtocol`).
    #[must_use]
    pub(crate) fn to_bytes_a(&self) -> [u8; INFO_A_SIZE] {
        let mut b = [0u8; INFO_A_SIZE];
        self.write_fixed(&mut b);
        let name = self.name.as_bytes();
        b[offset::SZ_PROTOCOL..offset::SZ_PROTOCOL + name.len()].copy_from_slice(name);
        // The W form's tag: the A and W forms of one info carry the same.
        let tag = tag_of_bytes(&b, &self.name);
        put(&mut b, offset::PROVIDER_RESERVED, tag);
        b
    }

    /// The fields before `szProtocol` (the tag left 0), as sockshare's provider writes
    /// them for this info's kind.
    fn write_fixed(&self, b: &mut [u8]) {
        let h = self.header();
        put(b, offset::SERVICE_FLAGS1, h.service_flags1);
        put(b, offset::SERVICE_FLAGS2, self.target_pid);
        put(b, offset::SERVICE_FLAGS3, self.token as u32);
        put(b, offset::SERVICE_FLAGS4, (self.token >> 32) as u32);
        put(b, offset::PROVIDER_FLAGS, h.provider_flags);
        b[offset::PROVIDER_ID..offset::PROVIDER_ID + 16].copy_from_slice(&PROVIDER_ID);
        put(b, offset::CATALOG_ENTRY_ID, h.catalog_entry_id);
        // A base protocol: its chain entries, the protocol offset and the security
        // scheme stay 0.
        put(b, offset::PROTOCOL_CHAIN, h.chain_len as u32);
        put(b, offset::VERSION, h.version as u32);
        put(b, offset::ADDRESS_FAMILY, h.kind.family() as u32);
        put(b, offset::MAX_SOCKADDR, h.max_sockaddr as u32);
        put(b, offset::MIN_SOCKADDR, h.min_sockaddr as u32);
        put(b, offset::SOCKET_TYPE, h.kind.socket_type() as u32);
        put(b, offset::PROTOCOL, h.kind.protocol() as u32);
        put(b, offset::NETWORK_BYTE_ORDER, u32::from(h.kind.is_unix()));
        put(b, offset::MESSAGE_SIZE, h.message_size);
    }

    /// The process the info was made for (`dwServiceFlags2`).
    pub(crate) fn target_pid(&self) -> u32 {
        self.target_pid
    }

    /// Family, type and protocol of the shared socket.
    pub(crate) fn kind(&self) -> SocketKind {
        self.kind
    }

    /// The fields every representation has, as sockshare's provider writes them for the
    /// info's kind.
    pub(crate) fn header(&self) -> Header {
        let (min_sockaddr, max_sockaddr) = sockaddr_sizes(self.kind);
        Header {
            service_flags1: service_flags(self.kind),
            provider_flags: pfl::MATCHES_PROTOCOL_ZERO,
            catalog_entry_id: catalog_entry_id(self.kind),
            chain_len: BASE_PROTOCOL,
            version: 2,
            kind: self.kind,
            min_sockaddr,
            max_sockaddr,
            message_size: if self.kind.is_udp() {
                TCP_UDP_MESSAGE_SIZE
            } else {
                0
            },
        }
    }

    /// `szProtocol`: the provider's name for the protocol.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The single-use token naming the pending socket in the target's session.
    pub(crate) fn token(&self) -> u64 {
        self.token
    }
}

/// The integrity tag of well-formed info bytes (either form) whose name is `name`: that
/// of their W form, whatever follows the name counted as zeros (it carries nothing), which
/// for the A form is its own bytes with the name widened.
fn tag_of_bytes(bytes: &[u8], name: &str) -> u32 {
    if let Ok(mut w) = <[u8; INFO_W_SIZE]>::try_from(bytes) {
        w[offset::SZ_PROTOCOL + 2 * name.len()..].fill(0);
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
fn tag_of(w: &mut [u8; INFO_W_SIZE]) -> u32 {
    w[offset::PROVIDER_RESERVED..offset::PROVIDER_RESERVED + 4].fill(0);
    crc32fast::hash(w)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn tcp4() -> SocketKind {
        SocketKind::new(af_inet(), sock_stream(), 6)
    }

    #[test]
    fn fields_sit_at_windows_offsets() {
        let info = Info::for_share(tcp4(), 4242, 0x1122_3344_5566_7788);
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
            assert_eq!(get_u32(b, 112), tag_of(&mut info.to_bytes_w()));
        }
        let w = info.to_bytes_w();
        assert_eq!(&w[116..120], &[b's', 0, b'o', 0]);
        assert_eq!(&info.to_bytes_a()[116..118], b"so");
    }

    #[test]
    fn udp_ipv6_and_unix_fields() {
        // Through the portable getters, which read the Linux representation's header.
        let udp6 = crate::ProtocolInfo(Info::for_share(
            SocketKind::new(af_inet6(), sock_dgram(), 17),
            1,
            2,
        ));
        assert_eq!(udp6.service_flags(), 0x20609);
        assert_eq!(udp6.message_size(), 0xffbb);
        assert_eq!(udp6.address_family(), 10);
        assert_eq!(udp6.sockaddr_range(), (28, 28));
        assert_eq!(udp6.protocol_name(), "sockshare [UDP/IPv6]");
        let unix = crate::ProtocolInfo(Info::for_share(
            SocketKind::new(af_unix(), sock_stream(), 0),
            1,
            2,
        ));
        assert_eq!(unix.protocol_name(), "sockshare [UNIX STREAM]");
        assert_eq!(unix.sockaddr_range(), (2, 110));
    }

    #[test]
    fn a_and_w_forms_round_trip_to_the_same_info() {
        let info = Info::for_share(tcp4(), 77, u64::MAX - 5);
        assert_eq!(Info::from_bytes(&info.to_bytes_w()).unwrap(), info);
        assert_eq!(Info::from_bytes(&info.to_bytes_a()).unwrap(), info);
    }

    #[test]
    fn every_single_byte_change_is_detected() {
        let info = Info::for_share(tcp4(), 77, 99);
        let forms = [
            (info.to_bytes_w().to_vec(), 2),
            (info.to_bytes_a().to_vec(), 1),
        ];
        for (bytes, width) in forms {
            for at in 0..bytes.len() {
                let mut bad = bytes.clone();
                bad[at] ^= 0x01;
                let parsed = Info::from_bytes(&bad);
                // Past the name's terminator the bytes carry nothing: a change there is
                // harmless.
                let name_end = offset::SZ_PROTOCOL + width * (info.name().len() + 1);
                let meaningful = at < name_end;
                assert_eq!(parsed.is_err(), meaningful, "byte {at} of {}", bytes.len());
            }
        }
    }

    #[test]
    fn a_field_changed_with_its_crc_mended_is_refused() {
        let info = Info::for_share(tcp4(), 77, 99);
        // Anyone can recompute a CRC: rewrite fields, then mend the tag.
        let forge = |edit: &dyn Fn(&mut [u8; INFO_W_SIZE])| {
            let mut w = info.to_bytes_w();
            edit(&mut w);
            let tag = tag_of(&mut w);
            put(&mut w, offset::PROVIDER_RESERVED, tag);
            Info::from_bytes(&w)
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
        let info = Info::for_share(tcp4(), 4242, 0xfeed);
        let w = info.to_bytes_w();
        assert_eq!(Info::from_bytes(&w).unwrap(), info);
        // Both forms carry the W form's tag.
        assert_eq!(
            get_u32(&info.to_bytes_a(), offset::PROVIDER_RESERVED),
            get_u32(&w, offset::PROVIDER_RESERVED)
        );
        // Bytes after the name carry nothing: with garbage there the info parses the same
        // (through the canonical check, not the fast one).
        let mut noisy = w;
        noisy[INFO_W_SIZE - 1] = 0x7f;
        assert_eq!(Info::from_bytes(&noisy).unwrap(), info);
        let mut noisy_a = info.to_bytes_a();
        noisy_a[INFO_A_SIZE - 1] = 0x7f;
        assert_eq!(Info::from_bytes(&noisy_a).unwrap(), info);
    }

    #[test]
    fn bad_lengths_and_names_are_refused() {
        for n in [0, 1, 371, 373, 627, 629, 4096] {
            let e = Info::from_bytes(&vec![0u8; n]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid);
        }
        let mut a = Info::for_share(tcp4(), 1, 1).to_bytes_a();
        a[offset::SZ_PROTOCOL..].fill(b'x');
        assert!(Info::from_bytes(&a).is_err());
    }
}
