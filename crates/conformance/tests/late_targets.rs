//! docs/semantics.md, S18: sharing with a target that is not ready. `duplicate` succeeds
//! for any live process the source may share with (it runs as the target's user, or as
//! root) whether or not that process has started its session, and when it is stopped or
//! slow to answer; the target redeems the info once it starts its session, at any later time, with
//! the same single use and target binding as a ready target. The source may close its
//! socket, exit or be killed at once. A target that exits without redeeming releases the
//! socket and leaves nothing behind: no helper process (a "keeper", named
//! `sockshare-keep`), no descriptor.
//!
//! Windows programs rely on this: CPython's `socket.share(pid)` tests share with a child
//! they have just started, and PostgreSQL's postmaster duplicates sockets for a backend it
//! created suspended, then resumes it.
//!
//! The targets redeem right after starting their session, with no wait and no retry: on
//! Windows the handle is in the target when `WSADuplicateSocket` returns, so `WSASocket`
//! works at once.

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use conformance::{
    assert_eof, assert_still_open, descendant, hex_w, info_from_hex, tcp_pair, Peer, PeerCommand,
    Scene,
};
use sockshare::{duplicate, ProtocolInfo};

const PEER: &str = env!("CARGO_BIN_EXE_peer");
const NOBODY: u32 = 65534;
/// A uid that is neither root nor nobody, for a source of a third user.
const OTHER_USER: u32 = 1234;
/// The process name (`/proc/PID/comm`) of the helper that holds sockets for targets that
/// are not ready.
const KEEPER: &str = "sockshare-keep";
/// A hang guard for a `duplicate` aimed at a stopped target, not a timing requirement:
/// the contract's cost is about 0.1 s; the library's handshake timeout is 5 s, which this
/// catches.
const HANG_GUARD: Duration = Duration::from_secs(3);

fn peer() -> Peer {
    PeerCommand::new(PEER).spawn()
}

fn peer_as(uid: u32) -> Peer {
    PeerCommand::new(PEER).as_user(uid, uid).spawn()
}

/// One test's run: the conformance `Scene` (serialised, descriptors of this process
/// checked), and at the end no keeper of this test left. Declare it first, so every peer
/// is gone when it checks.
struct Late {
    _scene: Scene,
}

impl Late {
    fn new() -> Late {
        let scene = Scene::new();
        become_subreaper();
        Late { _scene: scene }
    }
}

impl Drop for Late {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            wait_no_keepers("at the end of the test, with every target gone");
        }
    }
}

/// Makes this process a child subreaper: a keeper that outlives the process that forked
/// it (or that double-forks) is then reparented to this process rather than to init, so
/// this test's keepers are exactly the keepers among its descendants, whatever other
/// sockshare programs run on the machine.
fn become_subreaper() {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER and an integer flag touches no memory.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    assert_eq!(r, 0, "PR_SET_CHILD_SUBREAPER");
}

/// The live (not zombie) processes named `sockshare-keep` that descend from this process.
fn keepers() -> Vec<u32> {
    // pid -> (name, state, parent)
    let mut procs: HashMap<u32, (String, String, u32)> = HashMap::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The name is in parentheses and may hold anything: fields resume after the last.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let mut rest = stat[close + 1..].split_whitespace();
        let state = rest.next().unwrap_or("?").to_owned();
        let ppid = rest.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        procs.insert(pid, (stat[open + 1..close].to_owned(), state, ppid));
    }
    let me = std::process::id();
    let descends = |mut pid: u32| {
        for _ in 0..64 {
            match procs.get(&pid) {
                Some(&(_, _, ppid)) if ppid == me => return true,
                Some(&(_, _, ppid)) if ppid > 1 => pid = ppid,
                _ => return false,
            }
        }
        false
    };
    procs
        .iter()
        .filter(|(_, (name, state, _))| name == KEEPER && state != "Z" && state != "X")
        .map(|(pid, _)| *pid)
        .filter(|pid| descends(*pid))
        .collect()
}

/// Waits up to 5 s for this test's keepers to end (a keeper notices its target's death on
/// its own time); panics with what they still hold if they do not.
fn wait_no_keepers(when: &str) {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let left = keepers();
        if left.is_empty() {
            return;
        }
        if Instant::now() > end {
            let held: Vec<String> = left
                .iter()
                .map(|pid| {
                    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
                        .map(|d| {
                            d.flatten()
                                .filter_map(|e| std::fs::read_link(e.path()).ok())
                                .map(|l| l.display().to_string())
                                .collect()
                        })
                        .unwrap_or_default();
                    format!("{pid} holding {fds:?}")
                })
                .collect();
            panic!("{when}: keepers left after 5 s: {held:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `sig` to a peer this test started.
fn signal(target: &Peer, sig: libc::c_int) {
    // SAFETY: kill with a pid and a signal number touches no memory; the pid is a peer
    // this test started and has not reaped (its `Peer` is alive), so it is not reused.
    let r = unsafe { libc::kill(target.pid as libc::pid_t, sig) };
    assert_eq!(r, 0, "kill({}, {sig})", target.pid);
}

/// The state letter of process `pid` (field 3 of /proc/PID/stat).
fn state_of(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Stops `target` (SIGSTOP) and waits until the kernel reports it stopped.
fn stop(target: &Peer) {
    signal(target, libc::SIGSTOP);
    for _ in 0..500 {
        if state_of(target.pid) == Some('T') {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("peer {} never stopped", target.pid);
}

fn resume(target: &Peer) {
    signal(target, libc::SIGCONT);
}

/// `duplicate` on a thread of its own, so a hang fails the test instead of blocking it:
/// the outcome and how long the call took.
fn timed_duplicate(socket: &impl AsFd, pid: u32) -> (sockshare::Result<ProtocolInfo>, Duration) {
    let fd = socket.as_fd().try_clone_to_owned().expect("dup the socket");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let start = Instant::now();
        let result = duplicate(&fd, pid);
        let took = start.elapsed();
        // Closed before reporting, so the test's descriptor count does not race it.
        drop(fd);
        let _ = tx.send((result, took));
    });
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("duplicate for {pid} did not return within 30 s"))
}

/// Redeems `info` in `target` (its session started); returns the slot.
fn redeem(target: &mut Peer, info: &ProtocolInfo) -> String {
    redeem_hex(target, &hex_w(info))
}

fn redeem_hex(target: &mut Peer, hex: &str) -> String {
    let reply = target.ok(&format!("redeem {hex}"));
    reply.split_whitespace().next().expect("slot").to_owned()
}

/// A client connects to `at`; `target` accepts through the listener in `slot` and sends
/// `text`, which the client reads.
fn serve(target: &mut Peer, slot: &str, at: SocketAddr, text: &str) {
    let mut client = TcpStream::connect(at).expect("connect to the shared listener");
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let conn = target.ok(&format!("accept {slot}"));
    target.ok(&format!("send {conn} {text}"));
    let mut buf = [0u8; 256];
    let n = client
        .read(&mut buf)
        .expect("read from the shared listener");
    assert_eq!(String::from_utf8_lossy(&buf[..n]), text);
    target.ok(&format!("close {conn}"));
}

/// A listener on loopback and its address.
fn loopback_listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = l.local_addr().unwrap();
    (l, at)
}

#[test]
fn s18_a_child_without_a_session_redeems_once_it_starts_one() {
    let _late = Late::new();
    let mut target = peer();
    let (listener, at) = loopback_listener();
    let info = duplicate(&listener, target.pid)
        .expect("duplicate for a live child that has not started its session");
    drop(listener);
    target.ok("session");
    let slot = redeem(&mut target, &info);
    serve(&mut target, &slot, at, "late-hello");
    target.fails_with(&format!("redeem {}", hex_w(&info)), "WSAEINVAL");
    target.finish();
}

#[test]
fn s18_a_child_whose_session_starts_while_the_source_shares() {
    let _late = Late::new();
    // The session starts before, during and after the short wait a source may give a
    // target that does not answer.
    for delay in [0, 50, 150] {
        let mut target = peer();
        let (listener, at) = loopback_listener();
        // Queued: the peer sleeps, then starts its session, while this test shares.
        target.start(&format!("sleep {delay}"));
        target.start("session");
        let info = duplicate(&listener, target.pid).unwrap_or_else(|e| {
            panic!("duplicate for a child starting its session in {delay} ms: {e}")
        });
        drop(listener);
        target.answer("sleep").expect("sleep");
        target.answer("session").expect("session");
        let slot = redeem(&mut target, &info);
        serve(&mut target, &slot, at, &format!("after-{delay}-ms"));
        target.finish();
    }
}

#[test]
fn s18_a_child_that_starts_its_session_only_to_redeem() {
    let _late = Late::new();
    let mut target = peer();
    let (listener, at) = loopback_listener();
    let info = duplicate(&listener, target.pid)
        .expect("duplicate for a child that starts its session only once it has the info");
    drop(listener);
    // WSAStartup right before WSASocket(FROM_PROTOCOL_INFO), nothing in between.
    let reply = target.ok(&format!("session-redeem {}", hex_w(&info)));
    let slot = reply.split_whitespace().next().expect("slot").to_owned();
    serve(&mut target, &slot, at, "startup-then-socket");
    target.finish();
}

#[test]
fn s18_a_stopped_child_without_a_session_costs_the_source_no_hang() {
    let _late = Late::new();
    let mut target = peer();
    let (listener, at) = loopback_listener();
    stop(&target);
    let (result, took) = timed_duplicate(&listener, target.pid);
    println!("duplicate for a stopped child without a session took {took:?}");
    let info = result.expect("duplicate for a stopped child without a session");
    assert!(
        took < HANG_GUARD,
        "duplicate for a stopped child hung for {took:?}"
    );
    drop(listener);
    resume(&target);
    target.ok("session");
    let slot = redeem(&mut target, &info);
    serve(&mut target, &slot, at, "resumed");
    target.finish();
}

#[test]
fn s18_a_stopped_child_with_a_session_costs_the_source_no_hang() {
    let _late = Late::new();
    let mut target = peer();
    target.ok("session");
    let (listener, at) = loopback_listener();
    stop(&target);
    let (result, took) = timed_duplicate(&listener, target.pid);
    println!("duplicate for a stopped child with a session took {took:?}");
    let info = result.expect("duplicate for a stopped child with a session");
    assert!(
        took < HANG_GUARD,
        "duplicate for a stopped child hung for {took:?}"
    );
    drop(listener);
    resume(&target);
    let slot = redeem(&mut target, &info);
    serve(&mut target, &slot, at, "resumed-session");
    target.finish();
}

#[test]
fn s18_a_source_killed_right_after_sharing_with_an_unready_target() {
    let _late = Late::new();
    for kind in ["udp", "tcp"] {
        let mut target = peer();
        let mut source = peer();
        let made = source.ok(if kind == "udp" {
            "udp-bind 127.0.0.1:0"
        } else {
            "tcp-listen 127.0.0.1:0"
        });
        let (slot, at) = made.split_once(' ').unwrap();
        let at: SocketAddr = at.parse().unwrap();
        let hex = source.ok(&format!("dup {slot} {}", target.pid));
        // At once: whatever the source's library does after duplicate returns, it does
        // not get to do it.
        source.kill();
        info_from_hex(&hex).expect("a well-formed info");
        target.ok("session");
        let shared = redeem_hex(&mut target, &hex);
        assert_eq!(target.ok(&format!("local {shared}")), at.to_string());
        if kind == "udp" {
            let client = UdpSocket::bind("127.0.0.1:0").unwrap();
            client.send_to(b"orphaned", at).unwrap();
            let got = target.ok(&format!("recvfrom {shared}"));
            assert_eq!(got, format!("{} orphaned", client.local_addr().unwrap()));
        } else {
            serve(&mut target, &shared, at, "orphaned");
        }
        target.finish();
    }
}

#[test]
fn s18_a_target_that_ends_without_redeeming_releases_the_socket_and_leaves_nothing() {
    let _late = Late::new();
    for ending in ["exit", "kill", "kill-stopped-with-session"] {
        let mut target = peer();
        if ending == "kill-stopped-with-session" {
            target.ok("session");
            stop(&target);
        }
        let (client, server) = tcp_pair();
        let (result, took) = timed_duplicate(&client, target.pid);
        println!("{ending}: duplicate took {took:?}");
        result.unwrap_or_else(|e| panic!("{ending}: duplicate for an unready target: {e}"));
        drop(client);
        assert_still_open(&server);
        if ending == "exit" {
            target.exit();
        } else {
            target.kill();
        }
        assert_eof(&server);
        wait_no_keepers(ending);
    }
}

#[test]
fn s18_a_source_peer_keeps_nothing_once_its_unready_target_dies() {
    let _late = Late::new();
    let (listener, at) = loopback_listener();
    let mut source = peer();
    let made = source.ok(&format!("tcp-connect {at}"));
    let slot = made.split_whitespace().next().unwrap().to_owned();
    let (server, _) = listener.accept().unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let target = peer();
    source.ok(&format!("dup {slot} {}", target.pid));
    source.ok(&format!("close {slot}"));
    assert_still_open(&server);
    target.kill();
    assert_eof(&server);
    wait_no_keepers("after the target died");
    // Back to the descriptors it started with, its connections dropped.
    source.finish();
}

#[test]
fn s18_sixteen_unready_targets_each_redeem_their_own_socket() {
    let _late = Late::new();
    let mut targets: Vec<Peer> = (0..16).map(|_| peer()).collect();
    let start = Instant::now();
    let shared: Vec<(ProtocolInfo, SocketAddr)> = targets
        .iter()
        .map(|t| {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            let at = socket.local_addr().unwrap();
            let info = duplicate(&socket, t.pid)
                .unwrap_or_else(|e| panic!("duplicate for unready target {}: {e}", t.pid));
            (info, at)
        })
        .collect();
    println!(
        "16 duplicates for unready targets took {:?}",
        start.elapsed()
    );
    for t in &mut targets {
        t.ok("session");
    }
    for (t, (info, at)) in targets.iter_mut().zip(&shared) {
        let slot = redeem(t, info);
        assert_eq!(t.ok(&format!("local {slot}")), at.to_string());
    }
    for t in targets {
        t.finish();
    }
}

#[test]
fn s18_a_new_process_with_a_dead_unready_targets_pid_gets_nothing() {
    let _late = Late::new();
    let old = peer();
    let pid = old.pid;
    let (client, server) = tcp_pair();
    let info = duplicate(&client, pid).expect("duplicate for an unready target");
    drop(client);
    assert_still_open(&server);
    old.kill();
    // Another process takes the pid at once and starts a session, before any keeper may
    // have noticed the death: a keeper that knows its target by pid alone delivers here.
    let mut new = conformance::peer_with_pid(pid, || PeerCommand::new(PEER));
    new.ok("session");
    let fds = new.fds();
    new.fails_with(&format!("redeem {}", hex_w(&info)), "WSAEINVAL");
    // Released with the process it was for, not held for its pid.
    assert_eof(&server);
    new.fails_with(&format!("redeem {}", hex_w(&info)), "WSAEINVAL");
    assert_eq!(new.fds(), fds, "a refused redeem made a descriptor");
    wait_no_keepers("after the target died");
    new.finish();
}

#[test]
fn s18_another_user_cannot_share_with_an_unready_target() {
    let _late = Late::new();
    let mut target = peer();
    let mut nobody = peer_as(NOBODY);
    let made = nobody.ok("udp-bind 127.0.0.1:0");
    let slot = made.split_whitespace().next().unwrap().to_owned();
    let dup = format!("dup {slot} {}", target.pid);
    // Not started.
    nobody.fails_with(&dup, "WSAEINVAL");
    // Stopped with a session: refused as well, not handed to a keeper, and soon.
    target.ok("session");
    stop(&target);
    let start = Instant::now();
    let refused = nobody.cmd(&dup);
    let took = start.elapsed();
    println!("a refused duplicate for a stopped target took {took:?}");
    resume(&target);
    match refused {
        Err(e) => assert!(e.starts_with("WSAEINVAL"), "expected WSAEINVAL, got {e}"),
        Ok(info) => panic!("another user shared with a stopped target: {info}"),
    }
    assert!(took < HANG_GUARD, "the refusal hung for {took:?}");
    assert_eq!(target.ok("pending"), "0", "something reached the target");
    nobody.finish();
    target.finish();
}

#[test]
fn s18_an_unready_target_of_another_user_takes_from_root_and_its_own_user() {
    let _late = Late::new();
    let mut target = peer_as(NOBODY);
    // A third user may not.
    let mut other = peer_as(OTHER_USER);
    let made = other.ok("udp-bind 127.0.0.1:0");
    let slot = made.split_whitespace().next().unwrap().to_owned();
    other.fails_with(&format!("dup {slot} {}", target.pid), "WSAEINVAL");
    other.finish();
    // Root may.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let root_at = socket.local_addr().unwrap();
    let root_info = duplicate(&socket, target.pid)
        .expect("root duplicating for an unready target of another user");
    drop(socket);
    // The target's own user may.
    let mut same = peer_as(NOBODY);
    let made = same.ok("udp-bind 127.0.0.1:0");
    let (slot, same_at) = made.split_once(' ').unwrap();
    let same_hex = same.ok(&format!("dup {slot} {}", target.pid));
    let same_at = same_at.to_owned();
    same.exit();
    target.ok("session");
    let got = redeem(&mut target, &root_info);
    assert_eq!(target.ok(&format!("local {got}")), root_at.to_string());
    let got = redeem_hex(&mut target, &same_hex);
    assert_eq!(target.ok(&format!("local {got}")), same_at);
    target.finish();
}

#[test]
fn s18_infos_for_unready_targets_are_single_use_and_bound_to_the_target() {
    let _late = Late::new();
    let mut target = peer();
    let mut other = peer();
    other.ok("session");
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let at = socket.local_addr().unwrap();
    let info = duplicate(&socket, target.pid).expect("duplicate for an unready target");
    drop(socket);
    let redeem_line = format!("redeem {}", hex_w(&info));
    // Another process, before and after the target is ready.
    other.fails_with(&redeem_line, "WSAEINVAL");
    target.ok("session");
    other.fails_with(&redeem_line, "WSAEINVAL");
    // The target, once.
    let slot = redeem(&mut target, &info);
    assert_eq!(target.ok(&format!("local {slot}")), at.to_string());
    target.fails_with(&redeem_line, "WSAEINVAL");
    other.fails_with(&redeem_line, "WSAEINVAL");
    target.finish();
    other.finish();
}

#[test]
fn s18_pids_that_cannot_become_targets_still_get_wsaeinval() {
    let _late = Late::new();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    // A process that ran and ended: its pid is free.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    // Processes in another network or pid namespace, without a session: their session
    // could never be reached from here (S16), so nothing may wait for one.
    let netns = PeerCommand::wrapped(&["unshare", "--net"], PEER).spawn();
    let pidns = PeerCommand::wrapped(&["unshare", "--pid", "--fork"], PEER).spawn();
    for pid in [
        0,
        gone_pid,
        i32::MAX as u32 + 1,
        u32::MAX,
        descendant(netns.child_pid()),
        descendant(pidns.child_pid()),
    ] {
        let (result, took) = timed_duplicate(&socket, pid);
        match result {
            Err(e) => assert_eq!(e.kind(), sockshare::ErrorKind::Invalid, "pid {pid}: {e}"),
            Ok(_) => panic!("pid {pid}: duplicate succeeded, expected WSAEINVAL"),
        }
        assert!(
            took < HANG_GUARD,
            "pid {pid}: the refusal hung for {took:?}"
        );
    }
    netns.finish();
    pidns.finish();
}

#[test]
fn s18_keeper_names_held_by_another_user_neither_stop_nor_divert_the_handoff() {
    let _late = Late::new();
    let mut target = peer();
    let mut squatter = peer_as(NOBODY);
    // Another user holds all keeper names but the last; its listeners never answer.
    squatter.ok(&format!("squat {} keep 15", target.pid));
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let at = socket.local_addr().unwrap();
    let info = duplicate(&socket, target.pid).expect("one keeper name is still free");
    drop(socket);
    // The session asks every keeper name; the squatter's are refused by its policy.
    target.ok("session");
    let slot = redeem(&mut target, &info);
    assert_eq!(target.ok(&format!("local {slot}")), at.to_string());
    target.ok(&format!("close {slot}"));
    // With every name held, the source is told, and keeps its socket.
    let late = peer();
    squatter.ok(&format!("squat {} keep 16", late.pid));
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let err = duplicate(&socket, late.pid).expect_err("no keeper name is free");
    assert_eq!(err.kind(), sockshare::ErrorKind::NoBufferSpace, "{err}");
    late.finish();
    squatter.finish();
    target.finish();
}

#[test]
fn s18_a_keeper_holds_only_what_it_needs_in_a_session_of_its_own() {
    let _late = Late::new();
    let target = peer();
    let (client, _server) = tcp_pair();
    // This test process has many descriptors open (cargo's pipes, the pair above): the
    // keeper forked from it must keep none of them.
    let info = duplicate(&client, target.pid).expect("duplicate for an unready target");
    // The keeper names itself first thing, but may not have run yet.
    let mut found = keepers();
    for _ in 0..200 {
        if !found.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        found = keepers();
    }
    assert_eq!(found.len(), 1, "one keeper for one target: {found:?}");
    let keeper = found[0];
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{keeper}/fd"))
        .unwrap()
        .flatten()
        .map(|e| format!("{:?}", std::fs::read_link(e.path()).unwrap_or_default()))
        .collect();
    // Its listener, its end of the link to the source, and the target's pidfd.
    assert_eq!(fds.len(), 3, "the keeper holds {fds:?}");
    assert!(fds.iter().any(|f| f.contains("pidfd")), "{fds:?}");
    let status = std::fs::read_to_string(format!("/proc/{keeper}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    // No handler of the source's and no blocked signal came along (but glibc's own for
    // its reserved signals 32 and 33, which sigaction does not let a program change).
    let glibc = (1u64 << 31) | (1u64 << 32);
    let caught = u64::from_str_radix(&field("SigCgt:"), 16).unwrap();
    assert_eq!(caught & !glibc, 0, "{status}");
    assert_eq!(
        u64::from_str_radix(&field("SigBlk:"), 16),
        Ok(0),
        "{status}"
    );
    // A session of its own: the terminal's signals do not reach it.
    let stat = std::fs::read_to_string(format!("/proc/{keeper}/stat")).unwrap();
    let session: u32 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(session, keeper, "the keeper leads its own session");
    drop((client, info));
    target.finish();
}

#[test]
fn s18_a_keeper_answers_no_process_but_its_target() {
    let _late = Late::new();
    let mut target = peer();
    let mut intruder = peer();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let at = socket.local_addr().unwrap();
    let info = duplicate(&socket, target.pid).expect("duplicate for an unready target");
    drop(socket);
    // Another process of the same user connects to the keeper, as only the target should.
    let report = intruder.ok(&format!("keeper-probe {}", target.pid));
    assert!(
        report.starts_with("keepers=1 ") && report.ends_with(" bytes=0 fds=0"),
        "a process that is not the target got from the keeper: {report}"
    );
    // The socket still waits for its target.
    target.ok("session");
    let slot = redeem(&mut target, &info);
    assert_eq!(target.ok(&format!("local {slot}")), at.to_string());
    intruder.finish();
    target.finish();
}
