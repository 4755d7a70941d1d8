//! A real session endpoint fed fuzzed records with descriptors attached, as a source that
//! the policy admits could send them: whatever arrives, the session neither panics nor
//! hangs, a genuine handoff made afterwards still works, and once the session ends this
//! process holds exactly the descriptors it held before (nothing sent was leaked).
#![no_main]

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::net::UdpSocket;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
    SocketAddrUnix, SocketFlags, SocketType,
};
use sockshare::fuzzing::{endpoint_name, parse_reply, push, MAX_FDS};
use sockshare::{ProtocolInfo, Session};

#[derive(Arbitrary, Debug)]
enum Message {
    /// Any bytes.
    Raw { fds: u8, bytes: Vec<u8> },
    /// A well-formed push, then damaged: `cut` bytes cut off the end, `extra` appended,
    /// the count word replaced by `count` when given.
    Push {
        fds: u8,
        entries: Vec<(u64, u32)>,
        cut: u8,
        extra: Vec<u8>,
        count: Option<u32>,
    },
    /// The source stops writing (the session sees the end of the stream).
    ShutdownWrite,
}

/// How many descriptors a message carries: usually a few, sometimes the most the kernel
/// allows (253) or one more (which the kernel refuses).
fn fd_count(n: u8) -> usize {
    match n {
        255 => MAX_FDS,
        254 => MAX_FDS + 1,
        n => usize::from(n % 8),
    }
}

fn count_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() - 1)
}

/// The socket whose copies the fuzzed messages carry, kept for the whole run.
fn carried() -> BorrowedFd<'static> {
    static PAIR: OnceLock<(UnixDatagram, UnixDatagram)> = OnceLock::new();
    PAIR.get_or_init(|| UnixDatagram::pair().expect("socketpair"))
        .0
        .as_fd()
}

fn connect(pid: u32) -> OwnedFd {
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socket");
    let name = endpoint_name(pid).expect("the session's name");
    let addr = SocketAddrUnix::new_abstract_name(&name).expect("address");
    rustix::net::connect(&sock, &addr).expect("connect to the session");
    let mut verdict = [0u8; 17];
    let (n, _) = rustix::net::recv(&sock, &mut verdict, RecvFlags::empty()).expect("verdict");
    assert_eq!(parse_reply(&verdict[..n]), Some(1), "the session refused root");
    sock
}

/// Sends one message; `false` once the connection can take no more.
fn send(conn: &OwnedFd, message: &Message) -> bool {
    let (fds, bytes) = match message {
        Message::Raw { fds, bytes } => (fd_count(*fds), bytes.clone()),
        Message::Push {
            fds,
            entries,
            cut,
            extra,
            count,
        } => {
            let entries = &entries[..entries.len().min(MAX_FDS)];
            let mut bytes = if entries.is_empty() {
                Vec::new()
            } else {
                push(entries)
            };
            if let (Some(count), true) = (count, bytes.len() >= 12) {
                bytes[8..12].copy_from_slice(&count.to_le_bytes());
            }
            bytes.truncate(bytes.len().saturating_sub(usize::from(*cut)));
            bytes.extend_from_slice(extra);
            (fd_count(*fds), bytes)
        }
        Message::ShutdownWrite => {
            let _ = rustix::net::shutdown(conn, rustix::net::Shutdown::Write);
            return false;
        }
    };
    let copies = vec![carried(); fds];
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS + 1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if fds > 0 {
        assert!(control.push(SendAncillaryMessage::ScmRights(&copies)));
    }
    match rustix::net::sendmsg(
        conn,
        &[IoSlice::new(&bytes)],
        &mut control,
        SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
    ) {
        Ok(_) => true,
        // Too many descriptors, or too big a record: the kernel refused it, go on.
        Err(Errno::INVAL | Errno::MSGSIZE | Errno::NOBUFS) => true,
        // The session dropped the connection, or its queue is full.
        Err(_) => false,
    }
}

/// Inode of a descriptor, to check a redeemed socket is the one shared.
fn inode(fd: impl AsFd) -> u64 {
    rustix::fs::fstat(fd).expect("fstat").st_ino
}

fuzz_target!(|messages: Vec<Message>| {
    carried();
    let before = count_fds();
    {
        let session = Session::builder()
            .capacity(64 * 1024)
            .start()
            .expect("session");
        let conn = connect(session.pid());
        for message in messages.iter().take(16) {
            if !send(&conn, message) {
                break;
            }
        }
        // A genuine handoff still works after whatever came before.
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let bytes = sockshare::duplicate(&socket, session.pid())
            .expect("duplicate after fuzzed records")
            .to_bytes_w();
        let info = ProtocolInfo::from_bytes(&bytes).expect("parse");
        let redeemed = session.redeem(&info).expect("redeem after fuzzed records");
        assert_eq!(inode(&redeemed), inode(&socket), "another socket came out");
        assert!(session.redeem(&info).is_err(), "redeemed twice");
    }
    sockshare::disconnect_all();
    assert_eq!(count_fds(), before, "descriptors leaked");
});
