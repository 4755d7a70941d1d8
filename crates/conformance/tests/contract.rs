//! The rows S1–S17 of docs/semantics.md, each with real processes and real sockets. The
//! test process plays one role (source or target) and `peer` processes play the others;
//! every test checks every process's descriptor count at the end.
//!
//! S4, S5, S13 and S14's flags are about the C interface's arguments; their tests live
//! with it (crates/ws2_32). The Rust API makes S5 a type error (no `Session`, no redeem).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::time::{Duration, Instant};

use conformance::{
    assert_eof, assert_still_open, descendant, from_hex, hex_w, info_from_hex, tcp_pair, to_hex,
    Peer, PeerCommand, Scene,
};
use sockshare::{duplicate, ErrorKind, Policy, ProtocolInfo, Session};

const PEER: &str = env!("CARGO_BIN_EXE_peer");
const NOBODY: u32 = 65534;

fn peer() -> Peer {
    PeerCommand::new(PEER).spawn()
}

/// A scene with one peer that has started a session.
fn target_scene() -> (Scene, Peer) {
    let scene = Scene::new();
    let mut target = peer();
    target.ok("session");
    (scene, target)
}

/// Redeems `info` in `target`; returns the slot and the reported kind words.
fn redeem_in(target: &mut Peer, info: &ProtocolInfo) -> (String, Vec<i32>) {
    let reply = target.ok(&format!("redeem {}", hex_w(info)));
    let mut words = reply.split_whitespace();
    let slot = words.next().expect("slot").to_owned();
    (slot, words.map(|w| w.parse().expect("kind")).collect())
}

fn kind_words(info: &ProtocolInfo) -> Vec<i32> {
    vec![info.address_family(), info.socket_type(), info.protocol()]
}

fn read_text(mut s: impl Read) -> String {
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).expect("read");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn expect_kind<T: std::fmt::Debug>(r: sockshare::Result<T>, kind: ErrorKind) -> sockshare::Error {
    match r {
        Ok(v) => panic!("expected {}, got Ok({v:?})", kind.name()),
        Err(e) => {
            assert_eq!(e.kind(), kind, "{e}");
            e
        }
    }
}

#[test]
fn s1_tcp_listeners_ipv4_and_ipv6() {
    let (_scene, mut target) = target_scene();
    for addr in ["127.0.0.1:0", "[::1]:0"] {
        let listener = TcpListener::bind(addr).unwrap();
        let at = listener.local_addr().unwrap();
        let info = duplicate(&listener, target.pid).unwrap();
        assert_eq!(info.address_family(), if at.is_ipv4() { 2 } else { 10 });
        drop(listener);
        let (slot, kind) = redeem_in(&mut target, &info);
        assert_eq!(kind, kind_words(&info));
        let mut client = TcpStream::connect(at).unwrap();
        let conn = target.ok(&format!("accept {slot}"));
        target.ok(&format!("send {conn} hello-{}", at.port()));
        assert_eq!(read_text(&mut client), format!("hello-{}", at.port()));
        // S14: the target's own descriptor does not leak into programs it executes.
        assert_eq!(target.ok(&format!("getopt {slot} cloexec")), "true");
    }
    target.finish();
}

#[test]
fn s1_connected_tcp_stream_both_ways() {
    let (_scene, mut target) = target_scene();
    let (slot, mut server) = redeemed_connection(&mut target);
    target.ok(&format!("send {slot} ping"));
    assert_eq!(read_text(&mut server), "ping");
    server.write_all(b"pong").unwrap();
    assert_eq!(target.ok(&format!("recv {slot}")), "pong");
    target.finish();
}

#[test]
fn s1_udp_ipv4_and_ipv6() {
    let (_scene, mut target) = target_scene();
    for addr in ["127.0.0.1:0", "[::1]:0"] {
        let socket = UdpSocket::bind(addr).unwrap();
        let at = socket.local_addr().unwrap();
        let info = duplicate(&socket, target.pid).unwrap();
        assert_eq!(info.service_flags(), 0x20609);
        drop(socket);
        let (slot, kind) = redeem_in(&mut target, &info);
        assert_eq!(kind, kind_words(&info));
        let client = UdpSocket::bind(if at.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        })
        .unwrap();
        client.send_to(b"datagram", at).unwrap();
        let got = target.ok(&format!("recvfrom {slot}"));
        assert_eq!(got, format!("{} datagram", client.local_addr().unwrap()));
    }
    target.finish();
}

#[test]
fn s1_unbound_sockets_are_shared_before_bind() {
    let (_scene, mut target) = target_scene();
    let ours = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let info = duplicate(&ours, target.pid).unwrap();
    let (slot, _) = redeem_in(&mut target, &info);
    // Binding and listening through our descriptor is seen through the target's.
    ours.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    ours.listen(4).unwrap();
    let at = ours.local_addr().unwrap().as_socket().unwrap();
    let mut client = TcpStream::connect(at).unwrap();
    let conn = target.ok(&format!("accept {slot}"));
    target.ok(&format!("send {conn} bound-later"));
    assert_eq!(read_text(&mut client), "bound-later");

    let udp = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None).unwrap();
    let info = duplicate(&udp, target.pid).unwrap();
    let (_, kind) = redeem_in(&mut target, &info);
    assert_eq!(kind, vec![10, 2, 17]);
    target.finish();
}

#[test]
fn s1_unix_domain_stream_listener_and_datagram() {
    let (_scene, mut target) = target_scene();

    let (a, mut b) = UnixStream::pair().unwrap();
    let info = duplicate(&a, target.pid).unwrap();
    assert_eq!(info.protocol_name(), "sockshare [UNIX STREAM]");
    drop(a);
    let (slot, _) = redeem_in(&mut target, &info);
    target.ok(&format!("send {slot} over-unix"));
    assert_eq!(read_text(&mut b), "over-unix");

    let path = std::env::temp_dir().join(format!("sockshare-s1-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let info = duplicate(&listener, target.pid).unwrap();
    drop(listener);
    let (slot, _) = redeem_in(&mut target, &info);
    let mut client = UnixStream::connect(&path).unwrap();
    let conn = target.ok(&format!("accept {slot}"));
    target.ok(&format!("send {conn} via-path"));
    assert_eq!(read_text(&mut client), "via-path");
    std::fs::remove_file(&path).unwrap();

    let (c, d) = UnixDatagram::pair().unwrap();
    let info = duplicate(&c, target.pid).unwrap();
    drop(c);
    let (slot, _) = redeem_in(&mut target, &info);
    d.send(b"dgram").unwrap();
    assert_eq!(target.ok(&format!("recv {slot}")), "dgram");
    target.finish();
}

#[test]
fn s1_rust_target_takes_from_another_source_process_in_both_forms() {
    let _scene = Scene::new();
    let session = Session::new().unwrap();
    let mut source = peer();
    for form in ["dup", "dup-a"] {
        let reply = source.ok("tcp-listen 127.0.0.1:0");
        let (slot, at) = reply.split_once(' ').unwrap();
        let bytes = from_hex(&source.ok(&format!("{form} {slot} {}", session.pid()))).unwrap();
        assert_eq!(bytes.len(), if form == "dup" { 628 } else { 372 });
        source.ok(&format!("close {slot}"));
        let info = ProtocolInfo::from_bytes(&bytes).unwrap();
        let listener = TcpListener::try_from(session.redeem(&info).unwrap()).unwrap();
        assert_eq!(listener.local_addr().unwrap().to_string(), at);
        let client = TcpStream::connect(at).unwrap();
        let (served, _) = listener.accept().unwrap();
        assert_eq!(served.peer_addr().unwrap(), client.local_addr().unwrap());
    }
    source.finish();
}

#[test]
fn s2_non_sockets_fail_with_wsaenotsock_before_the_pid_is_checked() {
    let _scene = Scene::new();
    let file = std::fs::File::open("/dev/null").unwrap();
    let (pipe_r, pipe_w) = rustix::pipe::pipe().unwrap();
    let me = sockshare::current_pid();
    for pid in [me, 0, u32::MAX] {
        expect_kind(duplicate(&file, pid), ErrorKind::NotSocket);
        expect_kind(duplicate(&pipe_r, pid), ErrorKind::NotSocket);
        expect_kind(duplicate(&pipe_w, pid), ErrorKind::NotSocket);
    }
}

#[test]
fn s3_pids_that_name_no_process_fail_with_wsaeinval() {
    let _scene = Scene::new();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    // A process that ran and ended: its pid is free.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    // A live process without a session is no longer refused (S18, tests/late_targets.rs).
    for pid in [0, gone_pid, i32::MAX as u32 + 1] {
        let e = expect_kind(duplicate(&socket, pid), ErrorKind::Invalid);
        assert!(!e.message().is_empty());
    }
    // An info made for a session that ended is refused by the next session.
    let mut idle = peer();
    idle.ok("session");
    let info = duplicate(&socket, idle.pid).unwrap();
    idle.ok("end");
    idle.ok("session");
    idle.fails_with(&format!("redeem {}", hex_w(&info)), "WSAEINVAL");
    idle.finish();
}

#[test]
fn s6_infos_are_single_use_bound_to_the_target_and_checked() {
    let _scene = Scene::new();
    let mut target = peer();
    let mut other = peer();
    target.ok("session");
    other.ok("session");
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let info = duplicate(&socket, target.pid).unwrap();
    // The session's thread moves the pushed socket into the table (a descriptor of the
    // target) on its own time: count only once it has.
    target.wait_pending(1);
    let target_fds = target.fds();
    let other_fds = other.fds();

    // Another process cannot use it.
    other.fails_with(&format!("redeem {}", hex_w(&info)), "WSAEINVAL");
    // Forged and damaged infos are refused, in both forms.
    let forged = to_hex(&[0x5au8; 628]);
    target.fails_with(&format!("redeem {forged}"), "WSAEINVAL");
    let mut damaged = info.to_bytes_a();
    damaged[92] ^= 0x40;
    target.fails_with(&format!("redeem {}", to_hex(&damaged)), "WSAEINVAL");
    // An altered field with a recomputed integrity check is not what sockshare makes for
    // the info's kind, nor what the source pushed.
    let mut altered = info.to_bytes_w();
    altered[88] = 1; // iSocketType: SOCK_STREAM
    altered[112..116].fill(0);
    let crc = crc32fast::hash(&altered);
    altered[112..116].copy_from_slice(&crc.to_le_bytes());
    assert!(
        ProtocolInfo::from_bytes(&altered).is_err(),
        "a field changed with its CRC mended must not parse"
    );
    target.fails_with(&format!("redeem {}", to_hex(&altered)), "WSAEINVAL");
    // A guessed token with the right integrity check names no pending socket.
    let mut guessed = info.to_bytes_w();
    guessed[8] ^= 1;
    guessed[112..116].fill(0);
    let crc = crc32fast::hash(&guessed);
    guessed[112..116].copy_from_slice(&crc.to_le_bytes());
    target.fails_with(&format!("redeem {}", to_hex(&guessed)), "WSAEINVAL");
    assert_eq!(
        target.fds(),
        target_fds,
        "a refused redeem created a descriptor"
    );
    assert_eq!(
        other.fds(),
        other_fds,
        "a refused redeem created a descriptor"
    );

    // The genuine info works once.
    let (slot, _) = redeem_in(&mut target, &info);
    target.fails_with(&format!("redeem {}", hex_w(&info)), "WSAEINVAL");
    target.ok(&format!("close {slot}"));
    assert_eq!(
        target.fds(),
        target_fds - 1,
        "the redeemed socket left the table"
    );
    target.finish();
    other.finish();
}

#[test]
fn s7_source_may_close_or_exit_right_after_duplicate() {
    let _scene = Scene::new();
    let session = Session::new().unwrap();
    for ending in ["exit", "kill"] {
        let mut source = peer();
        let reply = source.ok("tcp-listen 127.0.0.1:0");
        let (slot, at) = reply.split_once(' ').unwrap();
        let info = info_from_hex(&source.ok(&format!("dup {slot} {}", session.pid()))).unwrap();
        if ending == "exit" {
            source.exit();
        } else {
            source.kill();
        }
        let listener = TcpListener::try_from(session.redeem(&info).unwrap()).unwrap();
        let mut client = TcpStream::connect(at).unwrap();
        let (mut served, _) = listener.accept().unwrap();
        served.write_all(ending.as_bytes()).unwrap();
        assert_eq!(read_text(&mut client), ending);
    }
}

#[test]
fn s8_options_and_nonblocking_mode_are_shared_both_ways() {
    let (_scene, mut target) = target_scene();
    let (stream, _server) = tcp_pair();
    let ours = socket2::SockRef::from(&stream);
    let info = duplicate(&stream, target.pid).unwrap();
    let (slot, _) = redeem_in(&mut target, &info);

    ours.set_recv_buffer_size(65536).unwrap();
    let seen: usize = target.ok(&format!("getopt {slot} rcvbuf")).parse().unwrap();
    assert_eq!(seen, ours.recv_buffer_size().unwrap());
    target.ok(&format!("setopt {slot} rcvbuf 32768"));
    let seen: usize = target.ok(&format!("getopt {slot} rcvbuf")).parse().unwrap();
    assert_eq!(ours.recv_buffer_size().unwrap(), seen);
    assert_ne!(seen, 0);

    ours.set_nonblocking(true).unwrap();
    assert_eq!(target.ok(&format!("getopt {slot} nonblocking")), "true");
    target.ok(&format!("setopt {slot} nonblocking false"));
    assert!(!ours.nonblocking().unwrap());
    target.finish();
}

#[test]
fn s9_closing_one_descriptor_leaves_the_other_and_the_last_close_ends_the_socket() {
    let (_scene, mut target) = target_scene();
    let (client, mut server) = tcp_pair();
    let info = duplicate(&client, target.pid).unwrap();
    let (slot, _) = redeem_in(&mut target, &info);
    drop(client);
    // Our close did not end the connection: no EOF, and it still carries data.
    server.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    let e = server.read(&mut buf).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    server.set_nonblocking(false).unwrap();
    server.write_all(b"still-open").unwrap();
    assert_eq!(target.ok(&format!("recv {slot}")), "still-open");
    target.ok(&format!("send {slot} reply"));
    assert_eq!(read_text(&mut server), "reply");
    // The target's close is the last: the peer sees EOF.
    target.ok(&format!("close {slot}"));
    server
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(server.read(&mut buf).unwrap(), 0);
    target.finish();
}

#[test]
fn s10_a_target_out_of_descriptors_gets_wsaemfile_and_loses_nothing() {
    let (_scene, mut target) = target_scene();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = listener.local_addr().unwrap();
    let before = target.fds();
    target.ok(&format!("nofile {}", before + 16));
    let filled: usize = target.ok("fill-fds").parse().unwrap();
    assert!(filled >= 1);
    let info = duplicate(&listener, target.pid).unwrap();
    drop(listener); // only the pending reference keeps the socket now
    target.fails_with(&format!("redeem {}", hex_w(&info)), "WSAEMFILE");
    target.fails_with(&format!("redeem {}", hex_w(&info)), "WSAEMFILE");
    target.ok("free-fds 1");
    let (slot, _) = redeem_in(&mut target, &info);
    let mut client = TcpStream::connect(at).unwrap();
    target.ok("free-fds 1");
    let conn = target.ok(&format!("accept {slot}"));
    target.ok(&format!("send {conn} survived"));
    assert_eq!(read_text(&mut client), "survived");
    target.ok("nofile 4096");
    target.finish();
}

#[test]
fn s11_a_full_queue_gives_wsaenobufs_and_leaks_nothing() {
    let _scene = Scene::new();
    let mut target = peer();
    target.ok("session capacity=4");
    let mut infos = Vec::new();
    let mut refused = None;
    for _ in 0..20_000 {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        match duplicate(&socket, target.pid) {
            Ok(info) => infos.push(info),
            Err(e) => {
                refused = Some((e, socket));
                break;
            }
        }
    }
    let (err, socket) = refused.expect("the queue never filled");
    assert_eq!(err.kind(), ErrorKind::NoBufferSpace, "{err}");
    assert!(infos.len() >= 4, "only {} accepted", infos.len());
    // The refused socket is still ours and whole.
    socket.send_to(b"x", socket.local_addr().unwrap()).unwrap();
    drop(socket);
    assert_eq!(target.ok("pending"), "4");
    // Every accepted info is still good, including those the kernel queued past capacity.
    for info in &infos {
        let (slot, _) = redeem_in(&mut target, info);
        target.ok(&format!("close {slot}"));
    }
    assert_eq!(target.ok("pending"), "0");
    // And there is room again.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let info = duplicate(&socket, target.pid).unwrap();
    redeem_in(&mut target, &info);
    target.finish();
}

/// With the default capacity, sockets pending for one source never take the descriptors
/// that another source's socket needs to be received: the flooding source is held back
/// (S11) and every info, the flood's included, redeems without WSAEMFILE (S10).
#[test]
fn s11_the_default_capacity_leaves_descriptors_for_other_sources() {
    let _scene = Scene::new();
    let mut target = peer();
    target.ok("nofile 256");
    target.ok("session");
    assert_eq!(target.ok("capacity"), "128");
    let before = target.fds();
    // This process floods until the session holds it back.
    let mut flood = Vec::new();
    let refused = loop {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        match duplicate(&socket, target.pid) {
            Ok(info) => flood.push(info),
            Err(e) => break e,
        }
        assert!(flood.len() < 10_000, "the flood was never held back");
    };
    assert_eq!(refused.kind(), ErrorKind::NoBufferSpace, "{refused}");
    assert!(flood.len() > 256, "only {} queued", flood.len());
    // A socket from another source process, behind the whole flood.
    let mut source = peer();
    let reply = source.ok("tcp-listen 127.0.0.1:0");
    let (slot, at) = reply.split_once(' ').unwrap();
    let info = info_from_hex(&source.ok(&format!("dup {slot} {}", target.pid))).unwrap();
    source.ok(&format!("close {slot}"));
    let (listener, _) = redeem_in(&mut target, &info);
    let _client = TcpStream::connect(at).unwrap();
    let conn = target.ok(&format!("accept {listener}"));
    target.ok(&format!("close {conn}"));
    target.ok(&format!("close {listener}"));
    for info in &flood {
        let (slot, _) = redeem_in(&mut target, info);
        target.ok(&format!("close {slot}"));
    }
    assert_eq!(target.ok("pending"), "0");
    // Once both sources let go, the session holds nothing of theirs.
    source.finish();
    sockshare::disconnect_all();
    target.wait_fds(before, "the target kept descriptors");
    target.finish();
}

/// Thousands of pending sockets, more than the session keeps in its table of recent
/// arrivals, each redeem as itself in any order, and once.
#[test]
fn s6_each_of_thousands_pending_redeems_as_itself_in_any_order() {
    const N: usize = 3000;
    let _scene = Scene::new();
    let mut target = peer();
    target.ok("nofile 8192");
    target.ok("session capacity=4000");
    let mut pushed = Vec::with_capacity(N);
    for _ in 0..N {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let info = duplicate(&socket, target.pid).unwrap();
        pushed.push((info, socket.local_addr().unwrap()));
    }
    target.wait_pending(N);
    // Oldest last, newest first, and the middle from both ends at once.
    let mut order: Vec<usize> = (N / 2..N).rev().collect();
    let (mut lo, mut hi) = (0, N / 2 - 1);
    while lo <= hi {
        order.push(hi);
        if lo != hi {
            order.push(lo);
        }
        lo += 1;
        hi -= 1;
    }
    order.rotate_left(N / 3);
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let to = receiver.local_addr().unwrap();
    let mut buf = [0u8; 16];
    for &i in &order {
        let (info, addr) = &pushed[i];
        let (slot, _) = redeem_in(&mut target, info);
        target.ok(&format!("sendto {slot} {to} {i}"));
        let (n, from) = receiver.recv_from(&mut buf).unwrap();
        assert_eq!((from, &buf[..n]), (*addr, i.to_string().as_bytes()));
        target.ok(&format!("close {slot}"));
        target.fails_with(&format!("redeem {}", hex_w(info)), "WSAEINVAL");
    }
    assert_eq!(order.len(), N);
    assert_eq!(target.ok("pending"), "0");
    target.finish();
}

/// A connected pair whose client end is pending in `target` (and closed here): returns
/// the server end, which sees EOF only when the pending reference is released.
fn pending_connection(target: &mut Peer) -> (TcpStream, ProtocolInfo) {
    let (client, server) = tcp_pair();
    let info = duplicate(&client, target.pid).unwrap();
    drop(client);
    server
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (server, info)
}

/// A connected pair whose client end was handed to `target` (and closed here): the slot
/// it is in there, and the server end here.
fn redeemed_connection(target: &mut Peer) -> (String, TcpStream) {
    let (server, info) = pending_connection(target);
    let (slot, _) = redeem_in(target, &info);
    (slot, server)
}

#[test]
fn s12_a_target_that_ends_or_dies_without_redeeming_releases_its_sockets() {
    let (_scene, mut target) = target_scene();
    let (server, _) = pending_connection(&mut target);
    assert_still_open(&server);
    target.ok("end");
    assert_eof(&server);
    target.finish();

    for ending in ["exit", "kill"] {
        let mut target = peer();
        target.ok("session");
        let (server, _) = pending_connection(&mut target);
        assert_still_open(&server);
        if ending == "exit" {
            target.exit();
        } else {
            target.kill();
        }
        assert_eof(&server);
    }
}

#[test]
fn s15_a_forked_child_is_another_process() {
    let (_scene, mut target) = target_scene();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let info = duplicate(&socket, target.pid).unwrap();
    let report = target.ok(&format!("fork redeem {}", hex_w(&info)));
    let words: Vec<&str> = report.split_whitespace().collect();
    // The inherited session refuses the parent's info; the child starts its own session,
    // which refuses it too.
    assert_eq!(words[0], "WSAEINVAL", "{report}");
    assert_eq!(words[1], "own-session", "{report}");
    assert_ne!(words[2], target.pid.to_string(), "{report}");
    assert_eq!(words[3], "WSAEINVAL", "{report}");
    // The parent still can.
    redeem_in(&mut target, &info);

    // A child that lives on holds none of the parent's pending sockets.
    let (server, _) = pending_connection(&mut target);
    let child: i32 = target.ok("fork hold 20").parse().unwrap();
    target.ok("end");
    assert_eof(&server);
    // SAFETY: killing the peer's child, which this test made it start.
    unsafe { libc::kill(child, libc::SIGKILL) };
    target.finish();
}

#[test]
fn s16_other_network_or_pid_namespaces_get_a_clean_wsaeinval() {
    let _scene = Scene::new();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();

    // Another network namespace: its session's name is not visible from here.
    let mut netns = PeerCommand::wrapped(&["unshare", "--net"], PEER).spawn();
    let outside = descendant(netns.child_pid());
    netns.ok("session");
    expect_kind(duplicate(&socket, outside), ErrorKind::Invalid);
    netns.finish();

    // Another pid namespace (same network namespace): the peer's session is named by its
    // own pid, which here is some other process's pid or none; never delivered.
    let mut pidns = PeerCommand::wrapped(&["unshare", "--pid", "--fork"], PEER).spawn();
    let outside = descendant(pidns.child_pid());
    assert_ne!(
        pidns.pid, outside,
        "the peer should see itself with another pid"
    );
    pidns.ok("session");
    expect_kind(duplicate(&socket, outside), ErrorKind::Invalid);
    expect_kind(duplicate(&socket, pidns.pid), ErrorKind::Invalid);
    // And from inside out: this process is invisible there.
    let session = Session::new().unwrap();
    let slot = pidns.ok("udp-bind 127.0.0.1:0");
    let slot = slot.split_whitespace().next().unwrap();
    pidns.fails_with(&format!("dup {slot} {}", session.pid()), "WSAEINVAL");
    drop(session);
    pidns.finish();
}

#[test]
fn s17_the_policy_decides_who_may_push_and_refused_pushes_are_closed() {
    let _scene = Scene::new();
    // Root target, default policy: a source running as nobody is refused.
    let session = Session::new().unwrap();
    let mut nobody = PeerCommand::new(PEER).as_user(NOBODY, NOBODY).spawn();
    let slot = nobody.ok("udp-bind 127.0.0.1:0");
    let slot = slot.split_whitespace().next().unwrap().to_owned();
    nobody.fails_with(&format!("dup {slot} {}", session.pid()), "WSAEINVAL");

    // A hostile source pushing before the verdict: refused, and what it sent is closed.
    let pair = nobody.ok("unix-pair");
    let (a, b) = pair.split_once(' ').unwrap();
    let verdict = nobody.ok(&format!("raw-push {} {a}", session.pid()));
    assert!(verdict == "refused" || verdict == "reset", "{verdict}");
    nobody.ok(&format!("close {a}"));
    assert_eq!(nobody.ok(&format!("recv {b}")), "<eof>");
    assert_eq!(session.pending(), 0);
    drop(session);

    // A policy naming nobody's uid admits it.
    let session = Session::builder()
        .policy(Policy::AllowUids(vec![NOBODY]))
        .start()
        .unwrap();
    let info = info_from_hex(&nobody.ok(&format!("dup {slot} {}", session.pid()))).unwrap();
    UdpSocket::try_from(session.redeem(&info).unwrap()).unwrap();
    drop(session);

    // Root may push to any user's session (as with PROCESS_DUP_HANDLE).
    let pid = nobody.ok("session");
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let info = duplicate(&socket, pid.parse().unwrap()).unwrap();
    redeem_in(&mut nobody, &info);
    nobody.finish();
}

#[test]
fn s1_redeemed_sockets_convert_into_tokio_types() {
    let _scene = Scene::new();
    let session = Session::new().unwrap();
    let mut source = peer();
    let reply = source.ok("tcp-listen 127.0.0.1:0");
    let (slot, at) = reply.split_once(' ').unwrap();
    let info = info_from_hex(&source.ok(&format!("dup {slot} {}", session.pid()))).unwrap();
    let udp = source.ok("udp-bind 127.0.0.1:0");
    let udp_slot = udp.split_whitespace().next().unwrap();
    let udp_info = info_from_hex(&source.ok(&format!("dup {udp_slot} {}", session.pid()))).unwrap();
    let shared = session.redeem(&info).unwrap();
    let shared_udp = session.redeem(&udp_info).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    runtime.block_on(async {
        use tokio::io::AsyncWriteExt;
        // The wrong kind is refused without losing the socket.
        let shared_udp = match shared_udp.into_tokio_tcp_listener() {
            Ok(_) => panic!("a UDP socket became a TCP listener"),
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
                let mismatch = e
                    .into_inner()
                    .unwrap()
                    .downcast::<sockshare::KindMismatch>()
                    .unwrap();
                mismatch.into_socket()
            }
        };
        shared_udp.into_tokio_udp_socket().unwrap();
        let listener = shared.into_tokio_tcp_listener().unwrap();
        let client = std::thread::spawn({
            let at = at.to_owned();
            move || read_text(TcpStream::connect(at).unwrap())
        });
        let (mut conn, _) = listener.accept().await.unwrap();
        conn.write_all(b"async").await.unwrap();
        drop(conn);
        assert_eq!(client.join().unwrap(), "async");
    });
    drop(runtime);
    source.finish();
}

/// Descriptors of a program this process runs: a shell listing its own.
fn fds_of_exec_child() -> usize {
    let out = std::process::Command::new("sh")
        .args(["-c", "ls /proc/self/fd | wc -l"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn s14_programs_a_target_runs_inherit_nothing_of_the_session() {
    let _scene = Scene::new();
    let alone = fds_of_exec_child();
    let session = Session::new().unwrap();
    let mut source = peer();
    let slot = source.ok("udp-bind 127.0.0.1:0");
    let slot = slot.split_whitespace().next().unwrap();
    let pending = info_from_hex(&source.ok(&format!("dup {slot} {}", session.pid()))).unwrap();
    source.ok(&format!("dup {slot} {}", session.pid()));
    let redeemed = session.redeem(&pending).unwrap();
    // Session endpoint, its spare, a source connection, one pending and one redeemed
    // socket: none of them reaches the child.
    assert_eq!(fds_of_exec_child(), alone);
    drop(redeemed);
    drop(session);
    source.finish();
}

/// One genuine handoff from this process to `target`: a connected TCP socket, redeemed
/// there, carrying `text` back to us.
fn genuine_handoff(target: &mut Peer, text: &str) {
    let (slot, mut server) = redeemed_connection(target);
    target.ok(&format!("send {slot} {text}"));
    assert_eq!(read_text(&mut server), text);
    target.ok(&format!("close {slot}"));
}

/// Growth of a target's resident memory tolerated across a flood: the allocator keeps
/// some freed memory, but nothing the flood sends may accumulate.
const RSS_BOUND_KIB: usize = 8 * 1024;

/// Runs `flood` in the flooding peer while this thread makes `rounds` genuine handoffs
/// to `target`; returns the flood's report.
fn during_flood(
    target: &mut Peer,
    flooder: &mut Peer,
    rounds: usize,
    flood: impl FnOnce(&mut Peer) -> Vec<String> + Send,
) -> Vec<String> {
    std::thread::scope(|s| {
        let flooding = s.spawn(|| flood(flooder));
        for i in 0..rounds {
            genuine_handoff(target, &format!("genuine-{i}"));
        }
        flooding.join().expect("the flood's thread")
    })
}

#[test]
fn s17_another_user_cannot_push_use_others_infos_or_wear_down_a_session() {
    let (_scene, mut target) = target_scene();
    let mut hostile = PeerCommand::new(PEER).as_user(NOBODY, NOBODY).spawn();
    hostile.ok("session");
    genuine_handoff(&mut target, "warm-up");
    let (target_fds, target_rss) = (target.fds(), target.rss_kib());

    // An info made for the target is useless to another user's process, and trying does
    // not consume it.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let info = duplicate(&socket, target.pid).unwrap();
    let hostile_fds = hostile.fds();
    hostile.fails_with(&format!("redeem {}", hex_w(&info)), "WSAEINVAL");
    assert_eq!(
        hostile.fds(),
        hostile_fds,
        "a refused redeem made a descriptor"
    );
    let (slot, _) = redeem_in(&mut target, &info);
    target.ok(&format!("close {slot}"));

    // Pushes (by the library, and by hand before the verdict) and a flood of connections,
    // while genuine handoffs go on; every descriptor the hostile process sent comes back
    // closed: the other end of its pair sees EOF.
    let udp = hostile.ok("udp-bind 127.0.0.1:0");
    let udp = udp.split_whitespace().next().unwrap().to_owned();
    let pair = hostile.ok("unix-pair");
    let (a, b) = pair.split_once(' ').unwrap();
    let pid = target.pid;
    let report = during_flood(&mut target, &mut hostile, 40, |h| {
        let dup = h.fails_with(&format!("dup {udp} {pid}"), "WSAEINVAL");
        vec![
            dup,
            h.ok(&format!("garbage {pid} early 500 {a}")),
            h.ok(&format!("flood-connect {pid} 2000")),
        ]
    });
    println!("another user's flood: {report:?}");
    assert!(report[1].starts_with("sent="), "{report:?}");
    assert_eq!(report[2], "accepted=0 busy=0 refused=2000 failed=0");
    hostile.ok(&format!("close {a}"));
    assert_eq!(hostile.ok(&format!("recv {b}")), "<eof>");

    assert_eq!(target.ok("pending"), "0");
    assert_eq!(
        target.fds(),
        target_fds,
        "the target holds a descriptor too many"
    );
    let grown = target.rss_kib().saturating_sub(target_rss);
    assert!(grown < RSS_BOUND_KIB, "the target grew by {grown} KiB");
    target.finish();
    hostile.finish();
}

#[test]
fn s17_garbage_from_an_admitted_source_is_dropped_while_genuine_handoffs_go_on() {
    let scene = Scene::new();
    let mut target = peer();
    target.ok(&format!("session uids={NOBODY}"));
    // Descriptors as many systems give by default: the connection limit must leave room.
    target.ok("nofile 1024");
    let mut flooder = PeerCommand::new(PEER).as_user(NOBODY, NOBODY).spawn();
    flooder.ok("nofile 4096");
    genuine_handoff(&mut target, "warm-up");
    let (target_fds, target_rss) = (target.fds(), target.rss_kib());

    let pair = flooder.ok("unix-pair");
    let (a, b) = pair.split_once(' ').unwrap();
    let kinds = [
        "magic",
        "version",
        "count",
        "huge-count",
        "fds-only",
        "zero",
        "no-fds",
        "fewer-fds",
        "more-fds",
        "too-many-fds",
        "half",
        "junk",
        "dup-token",
        "early",
        "silent",
    ];
    let pid = target.pid;
    let report = during_flood(&mut target, &mut flooder, 40, |f| {
        let garbage =
            kinds.map(|k| format!("{k}: {}", f.ok(&format!("garbage {pid} {k} 200 {a}"))));
        garbage.to_vec()
    });
    println!("an admitted source's garbage: {report:?}");
    for line in &report {
        assert!(line.contains("refused=0"), "{report:?}");
    }
    // The garbage named tokens; none of them became a pending socket but the one
    // well-formed push among them: `dup-token`'s first entry (a source may push; the
    // repeated token's socket is closed).
    assert_eq!(target.ok("pending"), "200");
    target.ok("end");
    target.ok(&format!("session uids={NOBODY}"));
    flooder.ok(&format!("close {a}"));
    assert_eq!(flooder.ok(&format!("recv {b}")), "<eof>");

    // A flood of idle connections past the session's limit of 1024: the excess is told
    // "busy", genuine handoffs on an existing connection go on, and a new source is
    // refused cleanly (WSAENOBUFS) until the flood ends.
    genuine_handoff(&mut target, "before-connections");
    let pid = target.pid;
    let report = during_flood(&mut target, &mut flooder, 20, |f| {
        vec![f.ok(&format!("flood-connect {pid} 1100"))]
    });
    println!("an admitted source's idle connections: {report:?}");
    let counts: Vec<usize> = report[0]
        .split_whitespace()
        .map(|kv| kv.split_once('=').unwrap().1.parse().unwrap())
        .collect();
    assert_eq!(counts[0] + counts[1], 1100, "{report:?}");
    assert!(counts[1] > 0, "no connection was refused: {report:?}");
    let mut newcomer = peer();
    let slot = newcomer.ok("udp-bind 127.0.0.1:0");
    let slot = slot.split_whitespace().next().unwrap().to_owned();
    newcomer.fails_with(&format!("dup {slot} {pid}"), "WSAENOBUFS");
    flooder.ok("close-all");
    // The session learns of the closed connections from its own thread: wait for it.
    let mut info = None;
    for _ in 0..1000 {
        match newcomer.cmd(&format!("dup {slot} {pid}")) {
            Ok(hex) => {
                info = Some(hex);
                break;
            }
            Err(e) if e.starts_with("WSAENOBUFS") => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("{e}"),
        }
    }
    let info = info_from_hex(&info.expect("room again")).unwrap();
    let (slot, _) = redeem_in(&mut target, &info);
    target.ok(&format!("close {slot}"));

    flooder.ok("close-all");
    sockshare::disconnect_all();
    newcomer.ok("disconnect");
    // Give the session's thread the closed connections before counting.
    genuine_handoff(&mut target, "after");
    target.wait_fds(
        target_fds,
        "the target holds descriptors of closed connections",
    );
    let grown = target.rss_kib().saturating_sub(target_rss);
    assert!(grown < RSS_BOUND_KIB, "the target grew by {grown} KiB");
    target.ok("nofile 4096");
    newcomer.finish();
    flooder.finish();
    target.finish();
    drop(scene);
}

/// A peer whose pid is `pid` (see `conformance::peer_with_pid`).
fn peer_with_pid(pid: u32) -> Peer {
    conformance::peer_with_pid(pid, || PeerCommand::new(PEER))
}

#[test]
fn s6_a_new_process_with_a_dead_targets_pid_cannot_use_its_infos() {
    let (_scene, mut old) = target_scene();
    let (server, info) = pending_connection(&mut old);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_info = duplicate(&socket, old.pid).unwrap();
    let pid = old.pid;
    old.kill();
    // The dead target's pending sockets are released with it.
    assert_eof(&server);

    let mut new = peer_with_pid(pid);
    new.ok("session");
    let fds = new.fds();
    for stale in [&info, &udp_info] {
        assert_eq!(stale.target_pid(), new.pid, "same pid, another process");
        new.fails_with(&format!("redeem {}", hex_w(stale)), "WSAEINVAL");
    }
    assert_eq!(new.fds(), fds, "a refused redeem made a descriptor");
    // Our cached connection led to the dead session; duplicate reaches the new one.
    let info = duplicate(&socket, pid).unwrap();
    let (slot, _) = redeem_in(&mut new, &info);
    new.ok(&format!("close {slot}"));
    new.finish();
}

#[test]
fn s10_a_source_out_of_descriptors_gets_wsaemfile_and_keeps_its_socket() {
    let (_scene, mut target) = target_scene();
    let mut source = peer();
    let listener = source.ok("tcp-listen 127.0.0.1:0");
    let (slot, at) = listener.split_once(' ').unwrap();
    let before = source.fds();
    source.ok(&format!("nofile {}", before + 8));
    source.ok("fill-fds");
    // No connection to the target yet: duplicate needs a descriptor for it.
    source.fails_with(&format!("dup {slot} {}", target.pid), "WSAEMFILE");
    assert_eq!(
        target.ok("pending"),
        "0",
        "a failed duplicate left something behind"
    );
    source.ok("free-fds 1");
    let first = source.ok(&format!("dup {slot} {}", target.pid));
    // With the connection made, duplicate needs no descriptor: out of them again, it works.
    source.ok("fill-fds");
    let second = source.ok(&format!("dup {slot} {}", target.pid));
    for hex in [first, second] {
        let info = info_from_hex(&hex).unwrap();
        let (shared, _) = redeem_in(&mut target, &info);
        let mut client = TcpStream::connect(at).unwrap();
        let conn = target.ok(&format!("accept {shared}"));
        target.ok(&format!("send {conn} intact"));
        assert_eq!(read_text(&mut client), "intact");
    }
    // The source's own descriptor is intact too.
    source.ok("free-fds 4");
    let mut client = TcpStream::connect(at).unwrap();
    let conn = source.ok(&format!("accept {slot}"));
    source.ok(&format!("send {conn} still-ours"));
    assert_eq!(read_text(&mut client), "still-ours");
    source.ok("nofile 4096");
    source.finish();
    target.finish();
}

/// While this process redeems, its session's thread leaves the sources' connections to the
/// redeems (which drain them on a miss) and stops watching them, so a push costs no
/// wake-up of the thread. Once the redeems stop, the thread drains what came meanwhile
/// into the table, where `pending` counts it, without any further redeem.
#[test]
fn sockets_pushed_while_the_target_redeems_reach_its_table_once_it_stops() {
    let _scene = Scene::new();
    let session = Session::new().unwrap();
    let mut source = peer();
    let reply = source.ok("udp-bind 127.0.0.1:0");
    let slot = reply.split_whitespace().next().unwrap().to_owned();
    let dup = |source: &mut Peer| {
        info_from_hex(&source.ok(&format!("dup {slot} {}", session.pid()))).unwrap()
    };
    // Pushes that follow redeems within a millisecond: the thread goes quiet.
    for _ in 0..8 {
        let info = dup(&mut source);
        drop(session.redeem(&info).unwrap());
    }
    for _ in 0..3 {
        dup(&mut source);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while session.pending() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        session.pending(),
        3,
        "the pushes made while redeeming, drained"
    );
    source.ok(&format!("close {slot}"));
    source.finish();
}
