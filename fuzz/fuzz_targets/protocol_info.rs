//! `ProtocolInfo::from_bytes` on untrusted bytes: it never panics, and whatever it accepts
//! round-trips through both forms and carries no byte it ignored.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockshare::{ProtocolInfo, INFO_A_SIZE, INFO_W_SIZE};

/// `szProtocol`'s offset: bytes before it are all fields.
const SZ_PROTOCOL: usize = sockshare::info::offset::SZ_PROTOCOL;

fuzz_target!(|data: &[u8]| {
    // Any length, as a caller may pass.
    check(data);
    // The two sizes that parse, whatever length the fuzzer chose: the first byte picks
    // the form, the rest fills it.
    if let Some((&form, rest)) = data.split_first() {
        let size = if form & 1 == 0 { INFO_W_SIZE } else { INFO_A_SIZE };
        let mut bytes = rest.to_vec();
        bytes.resize(size, 0);
        check(&bytes);
    }
});

fn check(bytes: &[u8]) {
    let Ok(info) = ProtocolInfo::from_bytes(bytes) else {
        return;
    };
    let w = info.to_bytes_w();
    let a = info.to_bytes_a();
    assert_eq!(ProtocolInfo::from_bytes(&w).ok(), Some(info.clone()), "W form");
    assert_eq!(ProtocolInfo::from_bytes(&a).ok(), Some(info.clone()), "A form");
    // Every byte up to the name's terminator is meaningful: re-encoding reproduces it.
    let name = info.protocol_name().len();
    let (canonical, used): (&[u8], usize) = if bytes.len() == INFO_W_SIZE {
        (&w, SZ_PROTOCOL + 2 * (name + 1))
    } else {
        (&a, SZ_PROTOCOL + name + 1)
    };
    assert_eq!(&bytes[..used], &canonical[..used], "a field was ignored");
    // The accessors hold for any accepted info.
    let kind = info.kind();
    let _ = (kind.domain(), kind.ty(), kind.is_tcp(), kind.is_udp());
    let _ = (info.sockaddr_range(), info.service_flags(), info.target_pid());
}
