//! The session endpoint's records (push, from sources; reply, from targets) on untrusted
//! bytes: parsing never panics, and what parses re-encodes to the same meaning.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockshare::fuzzing::{parse_push, parse_reply, push, reply, MAX_FDS};

/// Header bytes that carry meaning (magic, version, kind); the rest is the count word
/// (push) or unused.
const MEANINGFUL_HEADER: usize = 8;

fuzz_target!(|data: &[u8]| {
    if let Some(entries) = parse_push(data) {
        assert!(!entries.is_empty() && entries.len() <= MAX_FDS);
        let again = push(&entries);
        assert_eq!(again.len(), data.len());
        assert_eq!(parse_push(&again), Some(entries.clone()));
        // Only the reserved words (header 12..16, each entry's last 4 bytes) may differ.
        assert_eq!(&again[..12], &data[..12]);
        for (i, (a, b)) in again[16..]
            .chunks_exact(16)
            .zip(data[16..].chunks_exact(16))
            .enumerate()
        {
            assert_eq!(&a[..12], &b[..12], "entry {i}");
        }
        // A push is never mistaken for a reply.
        assert_eq!(parse_reply(data), None);
    }
    if let Some(v) = parse_reply(data) {
        let again = reply(v).expect("a parsed verdict re-encodes");
        assert_eq!(&again[..MEANINGFUL_HEADER], &data[..MEANINGFUL_HEADER]);
        assert_eq!(parse_reply(&again), Some(v));
    }
});
