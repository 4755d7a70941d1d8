//! Regression, found by the `session_endpoint` fuzz target: a source that sends an empty
//! record followed by one carrying descriptors made the session leak those descriptors.
//! One peek of a batch installs copies of every peeked record's descriptors; the session
//! took the empty record for the end of the stream and never closed the copies of the
//! records after it. Empty records are dropped now (a valid record is never empty),
//! their descriptors closed, and the connection stays.

// Linux: these drive the Linux backend's endpoint and its system calls directly.
#![cfg(target_os = "linux")]

mod common;
use common::endpoint_name;

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;

use rustix::net::{
    AddressFamily, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix,
    SocketType,
};

fn count_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() - 1)
}

#[test]
fn records_after_an_empty_one_leave_no_descriptor_behind() {
    let (carried, _other) = UnixDatagram::pair().unwrap();
    let before = count_fds();
    let session = sockshare::Session::new().unwrap();
    let name = endpoint_name(session.pid());
    for _ in 0..50 {
        let conn = rustix::net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).unwrap();
        let addr = SocketAddrUnix::new_abstract_name(name.as_bytes()).unwrap();
        rustix::net::connect(&conn, &addr).unwrap();
        let mut verdict = [0u8; 16];
        rustix::net::recv(&conn, &mut verdict, RecvFlags::empty()).unwrap();
        assert_eq!(verdict[6], 1, "the session admits this process");
        let copies = [carried.as_fd(); 3];
        for fds in [&copies[..0], &copies[..]] {
            let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(3))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !fds.is_empty() {
                assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
            }
            // The session may have dropped the connection after the first already.
            let _ = rustix::net::sendmsg(
                &conn,
                &[IoSlice::new(&[])],
                &mut control,
                SendFlags::NOSIGNAL,
            );
        }
    }
    drop(session);
    assert_eq!(count_fds(), before, "the session leaked descriptors");
}
