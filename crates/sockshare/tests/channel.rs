//! `Channel` between real processes, and `duplicate_many` redeemed socket by socket.
//!
//! The child processes are this test binary again, running one test by name with
//! `CHANNEL_CHILD` set; those tests do nothing when it is not set.
// Channel exists on Linux only (tests/windows.rs covers the Windows backend).
#![cfg(target_os = "linux")]

mod nofile;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sockshare::{Channel, ErrorKind};

/// How long a step may take before the test calls it hung: far beyond any real run.
const DEADLINE: Duration = Duration::from_secs(30);

/// A channel whose other end is held by a child process running `test`.
fn pair_with_child(test: &str) -> (Channel, std::process::Child) {
    let (mine, theirs) = Channel::pair().unwrap();
    (mine, hand_to_child(theirs, test, None))
}

/// Hands `end` to a child process running `test`, with `expect` in `CHANNEL_EXPECT`.
fn hand_to_child(
    end: impl Into<OwnedFd>,
    test: &str,
    expect: Option<SocketAddr>,
) -> std::process::Child {
    let fd = end.into();
    // The child inherits exactly this end: clear close-on-exec for the spawn.
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::empty()).unwrap();
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("CHANNEL_CHILD", fd.as_raw_fd().to_string());
    if let Some(addr) = expect {
        command.env("CHANNEL_EXPECT", addr.to_string());
    }
    command.spawn().unwrap()
}

/// Runs `f` on a thread of its own and fails the test if it has not returned by the
/// deadline (a hang would otherwise stop the whole test run).
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()));
    rx.recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("{what} did not return within {DEADLINE:?}"))
}

/// Waits until thread `tid` of this process sleeps in the kernel.
fn wait_until_asleep(tid: i32) {
    let started = Instant::now();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        // The state is the first field after the command name's closing parenthesis.
        if stat
            .rsplit(')')
            .next()
            .unwrap()
            .trim_start()
            .starts_with('S')
        {
            return;
        }
        assert!(started.elapsed() < DEADLINE, "thread {tid} never blocked");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The end this process inherited, when it runs as a child.
fn inherited_end() -> Option<Channel> {
    let fd: i32 = std::env::var("CHANNEL_CHILD").ok()?.parse().ok()?;
    // SAFETY: the parent cleared close-on-exec on this descriptor for us alone and named
    // it in CHANNEL_CHILD; nothing else in this process owns it.
    Some(Channel::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Receives a socket, checking that its info was made for this process.
fn recv_here(channel: &Channel) -> sockshare::SharedSocket {
    let (info, shared) = channel.recv().unwrap();
    assert_eq!(info.target_pid(), std::process::id());
    shared
}

/// Connects to `addr` and expects the greeting of `child_serves_the_listener_it_receives`.
fn expect_hello(addr: SocketAddr) {
    let mut client = TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut got = [0u8; 5];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
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
    expect_hello(addr);

    // The child sends a UDP socket back: the info is made for this process.
    let udp = UdpSocket::try_from(recv_here(&mine)).unwrap();
    assert!(udp.local_addr().unwrap().ip().is_loopback());
    assert!(child.wait().unwrap().success());
}

#[test]
fn child_serves_the_listener_it_receives() {
    let _serial = serial();
    let Some(channel) = inherited_end() else {
        return;
    };
    let listener = TcpListener::try_from(recv_here(&channel)).unwrap();
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

    // So do those queued right before and behind a damaged record, in the same batch.
    sender.send(&udp).unwrap();
    rustix::net::sendmsg(
        &sender,
        &[std::io::IoSlice::new(&[0u8; 644])],
        &mut control,
        rustix::net::SendFlags::empty(),
    )
    .unwrap();
    sender.send(&udp).unwrap();
    assert!(receiver.recv().unwrap().0.kind().is_udp());
    assert_eq!(receiver.recv().unwrap_err().kind(), ErrorKind::Invalid);
    assert!(receiver.recv().unwrap().0.kind().is_udp());
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
    let mut fillers = nofile::fill_descriptor_table(64);
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

#[test]
fn a_thread_blocked_in_recv_does_not_stop_another_threads_send() {
    let _serial = serial();
    let (mine, theirs) = Channel::pair().unwrap();
    // Given away, and taken up by the child only later: until then nothing can arrive.
    let theirs = OwnedFd::from(theirs);
    let mine = Arc::new(mine);
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let receiver = {
        let mine = mine.clone();
        std::thread::spawn(move || {
            tid_tx
                .send(rustix::thread::gettid().as_raw_nonzero().get())
                .unwrap();
            mine.recv()
        })
    };
    // The first send of this end comes while the receiving thread waits.
    wait_until_asleep(tid_rx.recv().unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = {
        let mine = mine.clone();
        within("a send while another thread waits in recv", move || {
            mine.send(&listener)
        })
    };
    sent.unwrap();

    // The child takes the end up, serves the listener and sends a socket back, which the
    // waiting thread receives.
    let mut child = hand_to_child(theirs, "child_serves_the_listener_it_receives", None);
    expect_hello(addr);
    let (info, _shared) = within("the receiving thread", move || receiver.join().unwrap()).unwrap();
    assert_eq!(info.target_pid(), std::process::id());
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_socket_sent_after_the_end_moved_on_reaches_its_new_holder() {
    let _serial = serial();
    let (mine, mut child) = pair_with_child("child_takes_one_socket_and_hands_the_end_on");
    let first = UdpSocket::bind("127.0.0.1:0").unwrap();
    mine.send(&first).unwrap();
    // The child has handed its end to a grandchild and exited: this end has not read a
    // word from the new holder, and sends to it all the same.
    assert!(child.wait().unwrap().success());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    mine.send(&listener).unwrap();
    drop(listener); // the grandchild holds the only descriptor now
    expect_hello(addr);
    // The grandchild sends a socket back: the info is made for this process.
    let (info, _shared) = within("the grandchild's socket", move || mine.recv()).unwrap();
    assert_eq!(info.target_pid(), std::process::id());
}

#[test]
// The grandchild is left unwaited for on purpose: the test knows the end has moved on when
// this process exits, which it does at once (init then reaps the grandchild).
#[allow(clippy::zombie_processes)]
fn child_takes_one_socket_and_hands_the_end_on() {
    let _serial = serial();
    let Some(channel) = inherited_end() else {
        return;
    };
    UdpSocket::try_from(recv_here(&channel)).unwrap();
    hand_to_child(channel, "child_serves_the_listener_it_receives", None);
}

#[test]
fn sockets_left_queued_by_recv_go_to_the_ends_next_holder() {
    let _serial = serial();
    let (mine, theirs) = Channel::pair().unwrap();
    let first = UdpSocket::bind("127.0.0.1:0").unwrap();
    let second = UdpSocket::bind("127.0.0.1:0").unwrap();
    mine.send(&first).unwrap();
    mine.send(&second).unwrap();
    // Both are queued before this process receives once: one recv may see both.
    let got = UdpSocket::try_from(recv_here(&theirs)).unwrap();
    assert_eq!(got.local_addr().unwrap(), first.local_addr().unwrap());
    let mut child = hand_to_child(
        theirs,
        "child_receives_the_expected_socket",
        Some(second.local_addr().unwrap()),
    );
    // With this end closed, a child that finds the queue empty fails instead of waiting.
    drop(mine);
    assert!(child.wait().unwrap().success());
}

#[test]
fn child_receives_the_expected_socket() {
    let _serial = serial();
    let Some(channel) = inherited_end() else {
        return;
    };
    let expected: SocketAddr = std::env::var("CHANNEL_EXPECT").unwrap().parse().unwrap();
    let udp = UdpSocket::try_from(recv_here(&channel)).unwrap();
    assert_eq!(udp.local_addr().unwrap(), expected);
}

#[test]
fn sockets_sent_by_a_peer_that_closed_with_sockets_unreceived_are_received() {
    let _serial = serial();
    let (mine, theirs) = Channel::pair().unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    mine.send(&udp).unwrap(); // never received: Linux resets the connection for it
    theirs.send(&udp).unwrap();
    drop(theirs);
    let got = UdpSocket::try_from(recv_here(&mine)).unwrap();
    assert_eq!(got.local_addr().unwrap(), udp.local_addr().unwrap());
    assert_eq!(mine.recv().unwrap_err().kind(), ErrorKind::NetDown);
}

#[test]
fn a_send_to_a_full_queue_fails_with_no_buffer_space_and_leaves_nothing_queued() {
    let _serial = serial();
    // (A process without CAP_SYS_RESOURCE may meet its limit of descriptors in flight
    // first, RLIMIT_NOFILE; that fails with WSAENOBUFS too.)
    let (sender, receiver) = Channel::pair().unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (sender, udp, sent, err) = within("sending to a peer that receives nothing", move || {
        let mut sent = 0;
        loop {
            match sender.send(&udp) {
                Ok(()) => sent += 1,
                Err(e) => return (sender, udp, sent, e),
            }
        }
    });
    assert_eq!(err.kind(), ErrorKind::NoBufferSpace, "{err}");
    assert!(sent > 0);
    udp.local_addr().unwrap();
    // Exactly the sockets of the sends that succeeded are queued.
    drop(sender);
    for _ in 0..sent {
        let (info, _shared) = receiver.recv().unwrap();
        assert!(info.kind().is_udp());
    }
    assert_eq!(receiver.recv().unwrap_err().kind(), ErrorKind::NetDown);
}
