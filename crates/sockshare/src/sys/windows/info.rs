//! [`ProtocolInfo`] on Windows: the native `WSAPROTOCOL_INFOW`, unchanged, with sockshare's
//! envelope in the unused tail of `szProtocol`.
//!
//! Why an envelope, and why there: Windows' provider fills every field of the info with
//! its own state (Microsoft's provider id, the duplicated handle and its bookkeeping in
//! the service-flag and reserved words; Wine puts the handle in `dwServiceFlags3` and a
//! magic number in `dwServiceFlags4`), and its `WSASocketW` reads them back, so sockshare
//! must not touch any of them. Nor does the native info name the process it was made
//! for, or anything that is unique to one `WSADuplicateSocketW` call (handle values are
//! recycled). The one place no provider reads is `szProtocol` after its terminating NUL:
//! the last 24 bytes of it (both forms) carry
//!
//! | offset in W / A form | field |
//! |---------------------:|-------|
//! | 604 / 348 | magic `"sSW1"` (0x3157_5373): made by sockshare's `duplicate` |
//! | 608 / 352 | the target process id (the `dwProcessId` of `WSADuplicateSocketW`) |
//! | 612 / 356 | a random 64-bit token, unique to this duplication |
//! | 620 / 364 | the integrity tag: CRC-32 of the W form with this word zeroed |
//! | 624 / 368 | zero |
//!
//! A C program can still hand these bytes to `WSASocketW` unchanged. `from_bytes`
//! accepts only infos with a valid envelope (as on Linux, where it insists on sockshare's
//! provider): the pid makes target binding checkable, the token single use, the CRC
//! damage detection. The bytes of `szProtocol` between the name's NUL and the envelope
//! are kept zero, so the A and W forms of one info are the same info.

use std::fmt;

use crate::error::Result;
use crate::layout::{
    get_u32, invalid, offset, put, Header, SocketKind, INFO_A_SIZE, INFO_W_SIZE, MAX_PROTOCOL_CHAIN,
};

/// Bytes of sockshare's envelope at the end of `szProtocol`.
const ENVELOPE_LEN: usize = 24;
const MAGIC: u32 = 0x3157_5373; // "sSW1" in memory order
const ENV_MAGIC: usize = 0;
const ENV_PID: usize = 4;
const ENV_TOKEN: usize = 8;
const ENV_TAG: usize = 16;
const ENV_ZERO: usize = 20;

/// Where the envelope starts in a form of `len` bytes.
const fn envelope_at(len: usize) -> usize {
    len - ENVELOPE_LEN
}

/// Longest provider name (in characters, without NUL) both forms can carry beside the
/// envelope: the A form's name area is the smaller.
const MAX_NAME: usize = envelope_at(INFO_A_SIZE) - offset::SZ_PROTOCOL - 1;

/// The characters of a `szProtocol` area as UTF-16 units: little-endian pairs in the W
/// form (`wide`), one byte each in the A form.
fn name_units(area: &[u8], wide: bool) -> impl Iterator<Item = u16> + '_ {
    area.chunks_exact(if wide { 2 } else { 1 }).map(move |c| {
        if wide {
            u16::from_le_bytes([c[0], c[1]])
        } else {
            u16::from(c[0])
        }
    })
}

/// Writes `units` into the W form's `szProtocol`, from its start.
fn put_name_w(native: &mut [u8; INFO_W_SIZE], units: impl Iterator<Item = u16>) {
    for (i, unit) in units.enumerate() {
        let at = offset::SZ_PROTOCOL + 2 * i;
        native[at..at + 2].copy_from_slice(&unit.to_le_bytes());
    }
}

/// The name `units` spell, an unpaired surrogate becoming U+FFFD (as
/// `String::from_utf16_lossy`).
fn name_string(units: impl Iterator<Item = u16>) -> String {
    char::decode_utf16(units)
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect()
}

/// A protocol info on Windows: the native info `WSADuplicateSocketW` wrote, every field
/// unchanged, plus sockshare's envelope (target pid, single-use token, integrity tag)
/// after the provider name's NUL in `szProtocol`. The portable `ProtocolInfo` wraps it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Info {
    /// The W form as the provider wrote it, `szProtocol` zeroed after the name's NUL.
    native: [u8; INFO_W_SIZE],
    name: String,
    target_pid: u32,
    token: u64,
}

impl Info {
    /// Wraps the info `WSADuplicateSocketW` wrote for `target_pid`.
    pub(crate) fn wrap(mut native: [u8; INFO_W_SIZE], target_pid: u32, token: u64) -> Result<Info> {
        let area = &native[offset::SZ_PROTOCOL..];
        let len = name_units(area, true)
            .position(|u| u == 0)
            .unwrap_or(area.len() / 2);
        if len > MAX_NAME {
            return Err(crate::Error::new(
                crate::ErrorKind::NetDown,
                format!(
                    "the provider's protocol name is {len} characters long; sockshare needs \
                     it to be at most {MAX_NAME} to carry its envelope beside it"
                ),
            ));
        }
        let name = name_string(name_units(area, true).take(len));
        native[offset::SZ_PROTOCOL + 2 * len..].fill(0);
        Ok(Info {
            native,
            name,
            target_pid,
            token,
        })
    }

    /// Parses an info from untrusted bytes: 628 bytes are the W form, 372 the A form.
    ///
    /// Fails with [`ErrorKind::Invalid`](crate::ErrorKind::Invalid) when the length is
    /// neither, the info was not made by sockshare's `duplicate` (no envelope), or the
    /// integrity check does not match. Passing the check means only that the bytes were
    /// not damaged: whether the info is for this process and still unused is decided when
    /// it is redeemed.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Info> {
        let wide = match bytes.len() {
            INFO_W_SIZE => true,
            INFO_A_SIZE => false,
            n => {
                return Err(invalid(format!(
                    "a protocol info is {INFO_W_SIZE} bytes (WSAPROTOCOL_INFOW) or \
                     {INFO_A_SIZE} bytes (WSAPROTOCOL_INFOA), not {n}"
                )))
            }
        };
        let env = &bytes[envelope_at(bytes.len())..];
        if get_u32(env, ENV_MAGIC) != MAGIC || get_u32(env, ENV_ZERO) != 0 {
            return Err(invalid(
                "this protocol info was not made by sockshare's duplicate (no sockshare \
                 envelope after the provider name)",
            ));
        }
        let name_area = &bytes[offset::SZ_PROTOCOL..envelope_at(bytes.len())];
        let units = || name_units(name_area, wide);
        let len = units()
            .position(|u| u == 0)
            .filter(|&len| len <= MAX_NAME)
            .ok_or_else(|| invalid("the protocol name (szProtocol) of this info is too long"))?;
        if units().skip(len).any(|u| u != 0) {
            return Err(invalid(
                "this protocol info is damaged or was altered (bytes after the protocol name)",
            ));
        }
        let mut native = [0u8; INFO_W_SIZE];
        native[..offset::SZ_PROTOCOL].copy_from_slice(&bytes[..offset::SZ_PROTOCOL]);
        put_name_w(&mut native, units().take(len));
        let info = Info {
            native,
            name: name_string(units().take(len)),
            target_pid: get_u32(env, ENV_PID),
            token: u64::from(get_u32(env, ENV_TOKEN))
                | u64::from(get_u32(env, ENV_TOKEN + 4)) << 32,
        };
        if info.compute_tag() != get_u32(env, ENV_TAG) {
            return Err(invalid(
                "this protocol info is damaged or was altered (integrity check failed)",
            ));
        }
        Ok(info)
    }

    /// The info in the `WSAPROTOCOL_INFOW` layout (628 bytes, UTF-16 `szProtocol`): the
    /// native info with sockshare's envelope after the name.
    #[must_use]
    pub(crate) fn to_bytes_w(&self) -> [u8; INFO_W_SIZE] {
        self.w_form(self.compute_tag())
    }

    /// The info in the `WSAPROTOCOL_INFOA` layout (372 bytes, 8-bit `szProtocol`; a
    /// character outside ASCII becomes `?`, and such an info does not parse back).
    #[must_use]
    pub(crate) fn to_bytes_a(&self) -> [u8; INFO_A_SIZE] {
        let mut b = [0u8; INFO_A_SIZE];
        b[..offset::SZ_PROTOCOL].copy_from_slice(&self.native[..offset::SZ_PROTOCOL]);
        for (i, c) in self.name.chars().enumerate() {
            b[offset::SZ_PROTOCOL + i] = if c.is_ascii() && c != '\0' {
                c as u8
            } else {
                b'?'
            };
        }
        let tag = self.compute_tag();
        let env = &mut b[envelope_at(INFO_A_SIZE)..];
        self.write_envelope(env, tag);
        b
    }

    fn write_envelope(&self, env: &mut [u8], tag: u32) {
        put(env, ENV_MAGIC, MAGIC);
        put(env, ENV_PID, self.target_pid);
        put(env, ENV_TOKEN, self.token as u32);
        put(env, ENV_TOKEN + 4, (self.token >> 32) as u32);
        put(env, ENV_TAG, tag);
        put(env, ENV_ZERO, 0);
    }

    /// The W form, its envelope carrying `tag`.
    fn w_form(&self, tag: u32) -> [u8; INFO_W_SIZE] {
        let mut b = self.native;
        self.write_envelope(&mut b[envelope_at(INFO_W_SIZE)..], tag);
        b
    }

    /// The integrity tag: CRC-32 of the W form with the tag's word zeroed (the A and W
    /// forms share it).
    fn compute_tag(&self) -> u32 {
        crc32fast::hash(&self.w_form(0))
    }

    /// The native info, as `WSASocketW` takes it.
    pub(crate) fn native(&self) -> &[u8; INFO_W_SIZE] {
        &self.native
    }

    /// The single-use token sockshare's envelope carries.
    pub(crate) fn token(&self) -> u64 {
        self.token
    }

    /// The process the info was made for (the `dwProcessId` given to
    /// `WSADuplicateSocketW`, kept in sockshare's envelope).
    pub(crate) fn target_pid(&self) -> u32 {
        self.target_pid
    }

    /// Family, type and protocol of the shared socket.
    pub(crate) fn kind(&self) -> SocketKind {
        self.header().kind
    }

    /// The fields every representation has, read from the native info.
    pub(crate) fn header(&self) -> Header {
        Header::read(&self.native)
    }

    /// `szProtocol`: the provider's name for the protocol.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

/// Windows only API.
impl crate::info::ProtocolInfo {
    /// The native `WSAPROTOCOL_INFOW` bytes exactly as `WSADuplicateSocketW` wrote them
    /// (without sockshare's envelope; `szProtocol` zero after the name), which is what
    /// `WSASocketW(FROM_PROTOCOL_INFO)` receives.
    #[cfg_attr(docsrs, doc(cfg(windows)))]
    #[must_use]
    pub fn native_w(&self) -> &[u8; INFO_W_SIZE] {
        &self.0.native
    }

    /// `ProviderId`: the GUID of the Windows provider that made the info, in memory
    /// order.
    #[cfg_attr(docsrs, doc(cfg(windows)))]
    #[must_use]
    pub fn provider_id(&self) -> [u8; 16] {
        let mut id = [0u8; 16];
        id.copy_from_slice(&self.0.native[offset::PROVIDER_ID..offset::PROVIDER_ID + 16]);
        id
    }
}

impl fmt::Debug for Info {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let chain: Vec<u32> = (0..MAX_PROTOCOL_CHAIN)
            .map(|i| get_u32(&self.native, offset::PROTOCOL_CHAIN + 4 + 4 * i))
            .collect();
        let header = self.header();
        f.debug_struct("ProtocolInfo")
            .field("target_pid", &self.target_pid)
            .field("kind", &header.kind)
            .field("name", &self.name)
            .field(
                "service_flags",
                &format_args!("{:#x}", header.service_flags1),
            )
            .field(
                "provider_id",
                &&self.native[offset::PROVIDER_ID..offset::PROVIDER_ID + 16],
            )
            .field("catalog_entry_id", &header.catalog_entry_id)
            .field("chain", &(header.chain_len, chain))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn sample() -> Info {
        let mut native = [0u8; INFO_W_SIZE];
        put(&mut native, offset::SERVICE_FLAGS1, 0x20066);
        put(&mut native, offset::SERVICE_FLAGS3, 0x1234); // a provider's handle value
        put(&mut native, offset::SERVICE_FLAGS4, 0xff00_ff00);
        put(&mut native, offset::ADDRESS_FAMILY, 2);
        put(&mut native, offset::SOCKET_TYPE, 1);
        put(&mut native, offset::PROTOCOL, 6);
        put(&mut native, offset::PROVIDER_RESERVED, 0xdead_beef);
        put_name_w(&mut native, "MSAFD Tcpip [TCP/IP]".encode_utf16());
        Info::wrap(native, 4242, 0x0102_0304_0506_0708).unwrap()
    }

    #[test]
    fn native_fields_are_carried_unchanged_in_both_forms() {
        let info = sample();
        let w = info.to_bytes_w();
        assert_eq!(&w[..604], &info.native()[..604]);
        assert_eq!(get_u32(&w, offset::SERVICE_FLAGS3), 0x1234);
        assert_eq!(get_u32(&w, offset::PROVIDER_RESERVED), 0xdead_beef);
        assert_eq!(get_u32(&w, 608), 4242);
        let back = Info::from_bytes(&w).unwrap();
        assert_eq!(back, info);
        let a = info.to_bytes_a();
        assert_eq!(&a[..offset::SZ_PROTOCOL], &w[..offset::SZ_PROTOCOL]);
        assert_eq!(&a[116..136], b"MSAFD Tcpip [TCP/IP]");
        assert_eq!(Info::from_bytes(&a).unwrap(), info);
        assert_eq!(info.name(), "MSAFD Tcpip [TCP/IP]");
        assert!(info.kind().is_tcp());
        assert_eq!(info.target_pid(), 4242);
    }

    #[test]
    fn every_single_byte_change_is_detected() {
        let w = sample().to_bytes_w();
        for at in 0..INFO_W_SIZE {
            let mut bad = w;
            bad[at] ^= 0x01;
            assert_eq!(
                Info::from_bytes(&bad).unwrap_err().kind(),
                ErrorKind::Invalid,
                "byte {at}"
            );
        }
        let a = sample().to_bytes_a();
        for at in 0..INFO_A_SIZE {
            let mut bad = a;
            bad[at] ^= 0x01;
            assert!(Info::from_bytes(&bad).is_err(), "A byte {at}");
        }
    }

    #[test]
    fn infos_without_envelope_are_refused() {
        let native = *sample().native();
        assert!(Info::from_bytes(&native).is_err());
        assert!(Info::from_bytes(&[0u8; INFO_A_SIZE]).is_err());
        assert!(Info::from_bytes(&[0u8; 5]).is_err());
    }
}
