//! The records that travel on a session's endpoint (Unix `SOCK_SEQPACKET`, so each record
//! arrives whole or not at all). All integers are little-endian.
//!
//! - reply, target to source, once after `accept`: `magic u32, version u16, verdict u16,
//!   0 u64` (16 bytes). The verdict tells the source at once whether the session's policy
//!   admits it, so a refused source gets `WSAEINVAL` from `duplicate`, not a silent drop.
//! - push, source to target: `magic u32, version u16, PUSH u16, count u32, 0 u32`, then
//!   `count` entries of `secret u64, kind u32, 0 u32`, with exactly `count` descriptors
//!   attached (`SCM_RIGHTS`), entry `i` naming descriptor `i`.
//!
//! Why a secret and not the token: the info, which travels by any IPC, carries the token
//! [`token_of`]`(secret)`; the secret travels only on the source's own connection. A
//! process that reads an info in transit, and that the session admits, cannot push a
//! socket of its own under that token (S20): it would need a preimage of a 64-bit
//! SHA-256 truncation. `kind` is the socket's family, type and protocol as the source
//! read them from the kernel ([`pack_kind`]), so an info rewritten to another kind, with
//! its CRC mended, no longer matches what was pushed (S21).

use crate::layout::SocketKind;

pub(super) const MAGIC: u32 = u32::from_le_bytes(*b"SSHR");
pub(super) const VERSION: u16 = 2;
pub(super) const HEADER_LEN: usize = 16;
pub(super) const ENTRY_LEN: usize = 16;
/// The kernel carries at most this many descriptors in one message (`SCM_MAX_FD`).
pub(super) const MAX_FDS: usize = 253;
/// The longest valid push record.
pub(super) const MAX_PUSH_LEN: usize = HEADER_LEN + ENTRY_LEN * MAX_FDS;

const PUSH: u16 = 0x10;

/// The target's answer to a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Accepted = 1,
    Refused = 2,
    Busy = 3,
}

/// One socket named in a push: the secret its token derives from, and its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    pub secret: u64,
    pub kind: u32,
}

/// The token an info carries for a socket pushed with `secret`: the first 8 bytes of
/// SHA-256 over a domain label and the secret. One-way, so the token names the socket
/// without letting its reader push under it.
pub(super) fn token_of(secret: u64) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"sockshare/v2 token\0")
        .chain_update(secret.to_le_bytes())
        .finalize();
    let mut token = [0u8; 8];
    token.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(token)
}

/// A socket's family, type and protocol in one word (8, 8 and 16 bits), as pushes carry
/// them and the table keeps them; `None` for values no socket of this kernel has.
pub(super) fn pack_kind(kind: SocketKind) -> Option<u32> {
    let family = u8::try_from(kind.family()).ok()?;
    let ty = u8::try_from(kind.socket_type()).ok()?;
    let protocol = u16::try_from(kind.protocol()).ok()?;
    Some(u32::from(family) | u32::from(ty) << 8 | u32::from(protocol) << 16)
}

fn header(kind: u16, word: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..6].copy_from_slice(&VERSION.to_le_bytes());
    h[6..8].copy_from_slice(&kind.to_le_bytes());
    h[8..12].copy_from_slice(&word.to_le_bytes());
    h
}

fn read_header(b: &[u8]) -> Option<(u16, u32)> {
    if b.len() < HEADER_LEN || b[0..4] != MAGIC.to_le_bytes() || b[4..6] != VERSION.to_le_bytes() {
        return None;
    }
    let kind = u16::from_le_bytes([b[6], b[7]]);
    let word = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    Some((kind, word))
}

pub(super) fn reply(verdict: Verdict) -> [u8; HEADER_LEN] {
    header(verdict as u16, 0)
}

pub(super) fn parse_reply(b: &[u8]) -> Option<Verdict> {
    match read_header(b)? {
        (1, _) if b.len() == HEADER_LEN => Some(Verdict::Accepted),
        (2, _) if b.len() == HEADER_LEN => Some(Verdict::Refused),
        (3, _) if b.len() == HEADER_LEN => Some(Verdict::Busy),
        _ => None,
    }
}

/// Writes a push record for `entries` into `out` (at least `HEADER_LEN + ENTRY_LEN` bytes
/// per entry) and returns its length.
pub(super) fn push(entries: &[Entry], out: &mut [u8]) -> usize {
    debug_assert!(!entries.is_empty() && entries.len() <= MAX_FDS);
    debug_assert!(out.len() >= HEADER_LEN + entries.len() * ENTRY_LEN);
    out[..HEADER_LEN].copy_from_slice(&header(PUSH, entries.len() as u32));
    for (i, e) in entries.iter().enumerate() {
        let at = HEADER_LEN + i * ENTRY_LEN;
        out[at..at + 8].copy_from_slice(&e.secret.to_le_bytes());
        out[at + 8..at + 12].copy_from_slice(&e.kind.to_le_bytes());
        out[at + 12..at + 16].fill(0);
    }
    HEADER_LEN + entries.len() * ENTRY_LEN
}

/// Parses a push record from untrusted bytes: `None` unless it is well formed.
pub(super) fn parse_push(b: &[u8]) -> Option<impl ExactSizeIterator<Item = Entry> + '_> {
    let (kind, count) = read_header(b)?;
    let count = count as usize;
    if kind != PUSH || count == 0 || count > MAX_FDS || b.len() != HEADER_LEN + count * ENTRY_LEN {
        return None;
    }
    Some(b[HEADER_LEN..].chunks_exact(ENTRY_LEN).map(|c| {
        let mut secret = [0u8; 8];
        secret.copy_from_slice(&c[..8]);
        Entry {
            secret: u64::from_le_bytes(secret),
            kind: u32::from_le_bytes([c[8], c[9], c[10], c[11]]),
        }
    }))
}

/// The record codecs with plain types, for the fuzz targets (feature `fuzzing`).
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing {
    /// The most descriptors (and entries) one push carries.
    pub const MAX_FDS: usize = super::MAX_FDS;
    /// The longest valid push record.
    pub const MAX_PUSH_LEN: usize = super::MAX_PUSH_LEN;

    /// `parse_push`, its entries as `(secret, kind)`.
    pub fn parse_push(b: &[u8]) -> Option<Vec<(u64, u32)>> {
        Some(super::parse_push(b)?.map(|e| (e.secret, e.kind)).collect())
    }

    /// `push`: the record naming `entries` (1 to `MAX_FDS` of them).
    pub fn push(entries: &[(u64, u32)]) -> Vec<u8> {
        let entries: Vec<super::Entry> = entries
            .iter()
            .map(|&(secret, kind)| super::Entry { secret, kind })
            .collect();
        let mut out = [0u8; MAX_PUSH_LEN];
        let n = super::push(&entries, &mut out);
        out[..n].to_vec()
    }

    /// The first name of the session endpoint of process `pid` (the one it binds when no
    /// other process holds it), without the abstract namespace's leading NUL.
    pub fn endpoint_name(pid: u32) -> Option<Vec<u8>> {
        let start = super::super::start_time(Some(pid)).ok()?;
        let addr = super::super::endpoint_address(pid, start, 0).ok()?;
        Some(addr.abstract_name()?.to_vec())
    }

    /// `parse_reply`, the verdict as its wire number (1 accepted, 2 refused, 3 busy).
    pub fn parse_reply(b: &[u8]) -> Option<u16> {
        super::parse_reply(b).map(|v| v as u16)
    }

    /// `reply` for the verdict numbered `v` (1 to 3).
    pub fn reply(v: u16) -> Option<[u8; 16]> {
        use super::Verdict::*;
        let verdict = [Accepted, Refused, Busy]
            .into_iter()
            .find(|x| *x as u16 == v)?;
        Some(super::reply(verdict))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_round_trips_and_rejects_damage() {
        let entries = [
            Entry { secret: 1, kind: 2 },
            Entry {
                secret: u64::MAX,
                kind: 7,
            },
        ];
        let mut buf = [0u8; MAX_PUSH_LEN];
        let n = push(&entries, &mut buf);
        assert_eq!(n, 48);
        let parsed: Vec<Entry> = parse_push(&buf[..n]).unwrap().collect();
        assert_eq!(parsed, entries);
        assert!(parse_push(&buf[..n - 1]).is_none());
        assert!(parse_push(&buf[..n + 1]).is_none());
        let mut bad = buf;
        bad[0] ^= 1;
        assert!(parse_push(&bad[..n]).is_none());
        assert!(parse_push(&[]).is_none());
    }

    #[test]
    fn tokens_are_one_way_and_kinds_pack_losslessly() {
        assert_ne!(token_of(1), token_of(2));
        assert_ne!(token_of(7), 7);
        assert_eq!(token_of(7), token_of(7));
        let tcp = SocketKind::new(libc::AF_INET6, libc::SOCK_STREAM, libc::IPPROTO_TCP);
        let udp = SocketKind::new(libc::AF_INET6, libc::SOCK_DGRAM, libc::IPPROTO_UDP);
        assert_ne!(pack_kind(tcp), pack_kind(udp));
        assert_eq!(pack_kind(SocketKind::new(-1, 1, 0)), None);
        assert_eq!(pack_kind(SocketKind::new(2, 1, 70_000)), None);
    }

    #[test]
    fn replies_round_trip() {
        for v in [Verdict::Accepted, Verdict::Refused, Verdict::Busy] {
            assert_eq!(parse_reply(&reply(v)), Some(v));
        }
        assert_eq!(parse_reply(&[0u8; 16]), None);
    }
}
