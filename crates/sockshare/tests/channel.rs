//! `Channel` between real processes, and `duplicate_many` redeemed socket by socket.
//!
//! The child processes are this test binary again, running one test by name with
//! `CHANNEL_CHILD` set; those tests do nothing when it is not set.
// Channel exists on Linux only (tests/windows.rs covers the Windows backend).
#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;

use sockshare::{Channel, ErrorKind};

/// A channel whose other end is held by a child process running `test`.
fn pair_with_child(test: &str) -> (Channel, std::process::Child) {
    let (mine, theirs) = Channel::pair().unwrap();
    let fd = OwnedFd::from(theirs);
    // The child inherits exactly this end: clear close-on-exec for the spawn.
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::empty()).unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("CHANNEL_CHILD", fd.as_raw_fd().to_string())
        .spawn()
        .unwrap();
    (mine, child)
}

/// The end this process inherited, when it runs as a child.
fn inherited_end() -> Option<Channel> {
    let fd: i32 = std::env::var("CHANNEL_CHILD").ok()?.parse().ok()?;
    // SAFETY: the parent cleared close-on-exec on this descriptor for us alone and named
    // it in CHANNEL_CHILD; nothing else in this process owns it.
    Some(Channel::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Tests that count this process's descriptors run one at a time: the others open and
/// close descriptors on their threads.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_child_gets_a_working_listener_and_sends_a_socket_back() {
    let _serial = serial();
    let (mine, mut child) = pair_with_child("child_serves_the_listener_it_receives");

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    mine.send(&listener).unwrap();
    drop(listener); // the child holds the only descriptor now
    let mut client = TcpStream::connect(addr).unwrap();
    let mut got = [0u8; 5];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");

    // The child sends a UDP socket back: the info is made for this process.
    let (info, shared) = mine.recv().unwrap();
    assert_eq!(info.target_pid(), std::process::id());
    let udp = UdpSocket::try_from(shared).unwrap();
    assert!(udp.local_addr().unwrap().ip().is_loopback());
    assert!(child.wait().unwrap().success());
}

#[test]
fn child_serves_the_listener_it_receives() {
    let _serial = serial();
    let Some(channel) = inherited_end() else {
        return;
    };
    let (info, shared) = channel.recv().unwrap();
    assert_eq!(info.target_pid(), std::process::id());
    let listener = TcpListener::try_from(shared).unwrap();
    let (mut served, _) = listener.accept().unwrap();
    served.write_all(b"hello").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    channel.send(&udp).unwrap();
}

#[test]
fn a_damaged_record_is_refused_and_closed_and_the_channel_goes_on() {
    let _serial = serial();
    let (a, b) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let receiver = Channel::adopt(a).unwrap();
    let before = fd_count();
    // A record that is no channel record, with a socket attached.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let fds = [std::os::fd::AsFd::as_fd(&udp)];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds));
    rustix::net::sendmsg(
        &b,
        &[std::io::IoSlice::new(&[0u8; 644])],
        &mut control,
        rustix::net::SendFlags::empty(),
    )
    .unwrap();
    let err = receiver.recv().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert_eq!(fd_count(), before + 1, "only the UDP socket itself is open");

    // A well-formed send afterwards arrives.
    let sender = Channel::from(b);
    sender.send(&udp).unwrap();
    let (info, _shared) = receiver.recv().unwrap();
    assert!(info.kind().is_udp());
}

#[test]
fn a_full_descriptor_table_keeps_the_socket_queued() {
    let _serial = serial();
    // RLIMIT_NOFILE is per process: lower it in a child of its own.
    let (mine, mut child) = pair_with_child("child_out_of_descriptors_receives_later");
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    mine.send(&udp).unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn child_out_of_descriptors_receives_later() {
    let _serial = serial();
    let Some(channel) = inherited_end() else {
        return;
    };
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let old = getrlimit(Resource::Nofile);
    let mut fillers = Vec::new();
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(64),
            maximum: old.maximum,
        },
    )
    .unwrap();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        fillers.push(f);
    }
    let err = channel.recv().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooManyDescriptors);
    fillers.pop();
    let (info, shared) = channel.recv().unwrap();
    assert!(info.kind().is_udp());
    UdpSocket::try_from(shared).unwrap();
}

#[test]
fn duplicate_many_crosses_a_message_boundary_and_each_info_redeems_once() {
    let _serial = serial();
    let session = sockshare::Session::new().unwrap();
    // 300 sockets: two push records (253 + 47).
    let sockets: Vec<UdpSocket> = (0..300)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let infos = sockshare::duplicate_many(&sockets, session.pid()).unwrap();
    assert_eq!(infos.len(), sockets.len());
    for (info, original) in infos.iter().zip(&sockets) {
        let shared = UdpSocket::try_from(session.redeem(info).unwrap()).unwrap();
        assert_eq!(shared.local_addr().unwrap(), original.local_addr().unwrap());
        assert_eq!(
            session.redeem(info).unwrap_err().kind(),
            ErrorKind::Invalid,
            "single use"
        );
    }
    let file = std::fs::File::open("/dev/null").unwrap();
    let err = sockshare::duplicate_many(&[file], session.pid()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotSocket);
}
