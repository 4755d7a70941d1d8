//! Attacks on who a session is (docs/semantics.md, rows S19 identity, S23 user namespaces,
//! S24 fork, S25 squatting), each staged with real processes. Every test asserts the secure
//! behaviour; several fail against the library as it stands, by design: they are the
//! proof that the fixes work. Hostile processes run as another user (uid 65534) where the
//! attack allows it. The names a session is reached by come from
//! `conformance::endpoint_names` alone, so a change of naming scheme is one edit there.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use conformance::{hex_w, info_from_hex, peer_with_pid, Peer, PeerCommand, Scene};
use sockshare::{duplicate, ErrorKind, ProtocolInfo};

const PEER: &str = env!("CARGO_BIN_EXE_peer");
const NOBODY: u32 = 65534;
/// A user with no process of its own and no mapping in the namespaces the tests make.
const STRANGER: u32 = 1234;

fn peer() -> Peer {
    PeerCommand::new(PEER).spawn()
}

fn peer_as(uid: u32) -> Peer {
    PeerCommand::new(PEER).as_user(uid, uid).spawn()
}

/// The slot of a reply `SLOT ADDR` (or `SLOT`).
fn first_word(reply: &str) -> String {
    reply.split_whitespace().next().expect("a slot").to_owned()
}

/// A duplicate's outcome in words, for failure messages.
fn describe(r: &sockshare::Result<ProtocolInfo>) -> String {
    match r {
        Ok(info) => format!("Ok (an info for pid {})", info.target_pid()),
        Err(e) => format!("{} ({})", e.kind().name(), e.message()),
    }
}

fn is_invalid(r: &sockshare::Result<ProtocolInfo>) -> bool {
    matches!(r, Err(e) if e.kind() == ErrorKind::Invalid)
}

/// A peer's command answer in words, for failure messages.
fn describe_reply(r: &Result<String, String>) -> String {
    match r {
        Ok(s) if s.len() > 40 => "ok (an info)".to_owned(),
        Ok(s) => format!("ok {s}"),
        Err(e) => format!("err {e}"),
    }
}

/// Checks that `info` (for a TCP listener of ours at `at`, now closed here) redeems in
/// `target` as that very listener: a connection to `at` is accepted through it.
fn redeems_as_listener(target: &mut Peer, info: &ProtocolInfo, at: SocketAddr) {
    let reply = target.ok(&format!("redeem {}", hex_w(info)));
    let slot = first_word(&reply);
    let mut client = TcpStream::connect(at).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let conn = target.ok(&format!("accept {slot}"));
    target.ok(&format!("send {conn} genuine"));
    let mut buf = [0u8; 16];
    let n = client.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"genuine");
    target.ok(&format!("close {conn}"));
    target.ok(&format!("close {slot}"));
}

/// A fake session's report: how many descriptors sources delivered to it.
fn stolen(report: &str) -> usize {
    report
        .rsplit_once("fds=")
        .and_then(|(_, n)| n.parse().ok())
        .expect("a fake-report answer")
}

/// S19, staged: a process of uid 65534 holding pid P binds and listens on P's session
/// name(s), hands the listeners to a helper (uid 65534 too) over a Unix socket with
/// `SCM_RIGHTS`, and exits, freeing P. The helper serves them as a fake session. Returns
/// P and the helper. A listener keeps the credentials of the process that called
/// `listen`, so a connection to it reports pid P whoever has P now.
fn stolen_listener() -> (u32, Peer) {
    let (maker, helper) = handed_listener();
    let p = maker.pid;
    // Exited and reaped: P is free for the next process.
    maker.exit();
    (p, helper)
}

/// The staging of [`stolen_listener`] up to the maker's exit: returns the maker (pid P,
/// alive, its listeners still open but never accepted on) and the helper serving them.
fn handed_listener() -> (Peer, Peer) {
    let mut squatter = peer_as(NOBODY);
    let p = squatter.pid;
    let listeners = squatter.ok(&format!("squat {p}"));
    let mut helper = peer_as(NOBODY);
    let path =
        std::env::temp_dir().join(format!("sockshare-attack-{}-{p}.sock", std::process::id()));
    let path = path.display();
    let meeting = helper.ok(&format!("unix-listen {path}"));
    let out = squatter.ok(&format!("unix-connect {path}"));
    let into = helper.ok(&format!("accept {meeting}"));
    let _ = std::fs::remove_file(path.to_string());
    squatter.ok(&format!("send-fds {out} {listeners}"));
    let handed = helper.ok(&format!("recv-fds {into}"));
    assert_eq!(
        handed.split_whitespace().count(),
        listeners.split_whitespace().count(),
        "staging: the helper did not receive every listener"
    );
    helper.ok(&format!("close {meeting}"));
    helper.ok(&format!("close {into}"));
    helper.ok(&format!("fake-session {handed}"));
    (squatter, helper)
}

#[test]
fn s19_pid_reuse_a_handed_over_listener_never_receives_for_a_pid_without_session() {
    let _scene = Scene::new();
    let (p, mut helper) = stolen_listener();
    let mut new = peer_with_pid(p, || PeerCommand::new(PEER));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = listener.local_addr().unwrap();
    // Root may share with the new process before it has a session (S18): the socket
    // waits for it, never for the helper.
    let dup = duplicate(&listener, p);
    let report = helper.ok("fake-report");
    assert!(
        stolen(&report) == 0,
        "pid {p} now belongs to a root process with no session; root's duplicate of a TCP \
         listener for pid {p}: {}. The uid-65534 helper holding the listener bound by pid \
         {p}'s previous owner reports {report} (expected fds=0)",
        describe(&dup)
    );
    let info = dup.expect("root may share with a live root process without a session");
    drop(listener);
    new.ok("session");
    redeems_as_listener(&mut new, &info, at);
    assert_eq!(
        stolen(&helper.ok("fake-report")),
        0,
        "the helper got a socket"
    );
    new.finish();
    helper.finish();
}

#[test]
fn s19_pid_reuse_a_handed_over_listener_neither_blocks_nor_intercepts_the_new_session() {
    let _scene = Scene::new();
    let (p, mut helper) = stolen_listener();
    let mut new = peer_with_pid(p, || PeerCommand::new(PEER));
    let started = new.cmd("session");
    assert!(
        started.is_ok(),
        "the new root process with pid {p} could not start its session while a uid-65534 \
         helper holds the listener that pid {p}'s previous owner bound: {}",
        describe_reply(&started)
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = listener.local_addr().unwrap();
    let dup = duplicate(&listener, p);
    let report = helper.ok("fake-report");
    assert!(
        dup.is_ok() && stolen(&report) == 0,
        "root's duplicate for the new pid {p}: {}; the helper reports {report} (expected \
         fds=0)",
        describe(&dup)
    );
    drop(listener);
    redeems_as_listener(&mut new, &dup.unwrap(), at);
    new.finish();
    helper.finish();
}

/// The listener's maker P is alive (so `SO_PEERCRED` and `SO_PEERPIDFD` both name the
/// live P), but the process that accepts and answers is the helper P handed it to: only
/// the credentials on the answer (`SCM_CREDENTIALS`) tell them apart.
#[test]
fn s19_a_listener_handed_over_by_its_living_maker_never_receives_for_it() {
    let _scene = Scene::new();
    let (maker, mut helper) = handed_listener();
    let p = maker.pid;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    // P has no session: root's duplicate may wait for one (S18), or be refused; never
    // may the helper receive the socket.
    let dup = duplicate(&listener, p);
    let report = helper.ok("fake-report");
    assert_eq!(
        stolen(&report),
        0,
        "the uid-65534 helper answering on the listener that live pid {p} bound and handed \
         it received root's socket ({report}); the duplicate gave {}",
        describe(&dup)
    );
    if let Err(e) = &dup {
        assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    }
    maker.finish();
    helper.finish();
}

#[test]
fn s25_a_squatted_name_does_not_stop_a_session_or_receive_its_sockets() {
    let _scene = Scene::new();
    let mut target = peer();
    let mut squatter = peer_as(NOBODY);
    // Before the target starts its session, another user takes its name(s).
    let squatted = squatter.ok(&format!("squat {}", target.pid));
    let started = target.cmd("session");
    assert!(
        started.is_ok(),
        "process {} could not start a session: uid 65534 (pid {}) listens on its session \
         name(s) first: {}",
        target.pid,
        squatter.pid,
        describe_reply(&started)
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = listener.local_addr().unwrap();
    let info = duplicate(&listener, target.pid).unwrap();
    drop(listener);
    redeems_as_listener(&mut target, &info, at);
    // Whatever reached the squatter's listeners (connections wait in their backlog):
    // accept it now and count what it carried.
    squatter.ok(&format!("fake-session {squatted}"));
    let report = squatter.ok("fake-report");
    assert_eq!(
        stolen(&report),
        0,
        "the squatter received sockets: {report}"
    );
    target.finish();
    squatter.finish();
}

#[test]
fn s25_a_squatter_posing_as_a_session_never_gets_a_socket() {
    let _scene = Scene::new();
    let mut target = peer();
    let mut squatter = peer_as(NOBODY);
    let squatted = squatter.ok(&format!("squat {}", target.pid));
    squatter.ok(&format!("fake-session {squatted}"));
    // The target may or may not get its session: either way a source reaches it or
    // learns it cannot, never the squatter.
    let started = target.cmd("session");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = listener.local_addr().unwrap();
    let dup = duplicate(&listener, target.pid);
    let report = squatter.ok("fake-report");
    assert_eq!(
        stolen(&report),
        0,
        "a uid-65534 squatter answering on process {}'s session name(s) received root's \
         socket ({report}); the duplicate gave {}, the target's session start {}",
        target.pid,
        describe(&dup),
        describe_reply(&started)
    );
    match dup {
        Ok(info) => {
            drop(listener);
            assert!(started.is_ok(), "an info for a target without a session");
            redeems_as_listener(&mut target, &info, at);
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::Invalid, "{e}"),
    }
    println!(
        "target's session: {}; duplicate: ok or WSAEINVAL",
        describe_reply(&started)
    );
    target.finish();
    squatter.finish();
}

/// A peer in a user namespace of its own, made by `unshare` run as `uid` with `options`.
fn in_user_namespace(uid: u32, options: &[&str]) -> Peer {
    let mut wrapper = vec!["unshare", "--user"];
    wrapper.extend_from_slice(options);
    PeerCommand::wrapped(&wrapper, PEER)
        .as_user(uid, uid)
        .spawn()
}

#[test]
fn s23_a_source_unmapped_in_the_targets_user_namespace_is_not_its_user() {
    let _scene = Scene::new();
    // Targets of root and of uid 65534, each in a user namespace without a uid map: its
    // own uid shows there as the overflow uid 65534, and so does every outside uid.
    for (owner, name) in [(0, "root"), (NOBODY, "uid 65534")] {
        let mut target = in_user_namespace(owner, &[]);
        assert_eq!(
            target.ok("whoami"),
            "uid=65534 euid=65534",
            "staging: an unmapped uid inside"
        );
        target.ok("session");
        let mut stranger = peer_as(STRANGER);
        let slot = first_word(&stranger.ok("udp-bind 127.0.0.1:0"));
        let dup = stranger.cmd(&format!("dup {slot} {}", target.pid));
        assert!(
            matches!(&dup, Err(e) if e.starts_with("WSAEINVAL")),
            "a source of uid {STRANGER} (unmapped in the namespace, so seen there as 65534) \
             duplicated for a default-policy (SameUser) target of {name} in its own user \
             namespace: {}; expected WSAEINVAL",
            describe_reply(&dup)
        );
        stranger.finish();
        target.finish();
    }
}

#[test]
fn s23_root_unmapped_in_the_targets_user_namespace_is_not_its_user() {
    let _scene = Scene::new();
    let mut target = in_user_namespace(NOBODY, &[]);
    assert_eq!(target.ok("whoami"), "uid=65534 euid=65534");
    target.ok("session");
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dup = duplicate(&socket, target.pid);
    assert!(
        is_invalid(&dup),
        "root, unmapped in the user namespace of a default-policy target of uid 65534 (so \
         seen there as 65534, the target's own uid), duplicated for it: {}; expected \
         WSAEINVAL",
        describe(&dup)
    );
    target.finish();
}

#[test]
fn s23_a_mapped_source_of_the_targets_user_still_reaches_it() {
    let _scene = Scene::new();
    // Root, mapped as root (0 -> 0): root's sockets reach it, an unmapped stranger's not.
    let mut target = in_user_namespace(0, &["--map-root-user"]);
    assert_eq!(target.ok("whoami"), "uid=0 euid=0", "staging");
    target.ok("session");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = listener.local_addr().unwrap();
    let info = duplicate(&listener, target.pid).unwrap();
    drop(listener);
    redeems_as_listener(&mut target, &info, at);
    let mut stranger = peer_as(STRANGER);
    let slot = first_word(&stranger.ok("udp-bind 127.0.0.1:0"));
    stranger.fails_with(&format!("dup {slot} {}", target.pid), "WSAEINVAL");
    stranger.finish();
    target.finish();

    // uid 65534 mapped as itself (65534 -> 65534): a source of uid 65534 outside is the
    // target's user.
    let mut target = in_user_namespace(NOBODY, &["--map-current-user"]);
    assert_eq!(target.ok("whoami"), "uid=65534 euid=65534", "staging");
    target.ok("session");
    let mut source = peer_as(NOBODY);
    let reply = source.ok("tcp-listen 127.0.0.1:0");
    let (slot, at) = reply.split_once(' ').unwrap();
    let info = info_from_hex(&source.ok(&format!("dup {slot} {}", target.pid))).unwrap();
    source.ok(&format!("close {slot}"));
    redeems_as_listener(&mut target, &info, at.parse().unwrap());
    source.finish();
    target.finish();
}

/// Kills a peer's `xfork hold` child if the test ends before the peer reaps it.
struct HeldChild(i32);

impl Drop for HeldChild {
    fn drop(&mut self) {
        if self.0 > 0 {
            // SAFETY: signalling a process this test made a peer start; the peer has not
            // reaped it (the field is zeroed once it has), so the pid is still its.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
}

/// S24 (a): a child a target forks with `how` (skipping the fork handlers) cannot redeem
/// the parent's info with the session it inherited; the parent still can.
fn fork_child_of_a_target_redeems(how: &str) {
    let _scene = Scene::new();
    let mut target = peer();
    target.ok("session");
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let info = duplicate(&socket, target.pid).unwrap();
    // The session's thread is idle once it has the socket: it holds no lock at the fork.
    target.wait_pending(1);
    let report = target.ok(&format!("xfork {how} redeem {}", hex_w(&info)));
    assert!(
        report.starts_with("WSAEINVAL") || report.starts_with("WSANOTINITIALISED"),
        "a child made by {how} (no fork handlers) of the target redeemed the parent's info \
         with the inherited session: {report} (expected WSAEINVAL or WSANOTINITIALISED)"
    );
    let reply = target.ok(&format!("redeem {}", hex_w(&info)));
    target.ok(&format!("close {}", first_word(&reply)));
    target.finish();
}

/// S24 (a): a child a target forks with `how` (skipping the fork handlers) keeps none of
/// the parent's pending sockets once it has called into sockshare (nothing can close
/// them before: Linux has no close-on-fork): once the parent's session lets go of a
/// pending connection, its peer sees EOF while the child lives.
fn fork_child_of_a_target_holds(how: &str) {
    let _scene = Scene::new();
    let mut target = peer();
    target.ok("session");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    duplicate(&client, target.pid).unwrap();
    drop(client);
    // The session's thread is idle once it has the socket: it holds no lock at the fork.
    target.wait_pending(1);
    let mut child = HeldChild(target.ok(&format!("xfork {how} hold 30")).parse().unwrap());
    target.ok("end");
    // A deadline only to stop waiting: the parent's close of the last reference sends
    // the FIN before `end` answers.
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let read = server.read(&mut [0u8; 8]);
    target.ok(&format!("reap {}", child.0));
    child.0 = 0;
    assert!(
        matches!(read, Ok(0)),
        "after the target ended its session, the peer of a connection pending there saw \
         {read:?} instead of EOF while the target's {how} child (no fork handlers) lived: \
         the child keeps copies of the pending sockets"
    );
    target.finish();
}

#[test]
fn s24_a_target_child_made_by_glibc_fork_without_handlers_cannot_redeem() {
    fork_child_of_a_target_redeems("_Fork");
}

#[test]
fn s24_a_target_child_made_by_the_raw_clone_syscall_cannot_redeem() {
    fork_child_of_a_target_redeems("clone");
}

/// The control: with glibc's `fork` the handlers run, and the child gets nothing.
#[test]
fn s24_control_a_target_child_made_by_fork_with_handlers_cannot_redeem() {
    fork_child_of_a_target_redeems("fork");
}

#[test]
fn s24_a_target_child_made_by_glibc_fork_without_handlers_holds_no_pending_socket() {
    fork_child_of_a_target_holds("_Fork");
}

#[test]
fn s24_a_target_child_made_by_the_raw_clone_syscall_holds_no_pending_socket() {
    fork_child_of_a_target_holds("clone");
}

/// S24 (b): a single-threaded source that forks with `how` (skipping the fork handlers);
/// parent and child each duplicate a socket of their own for one target, 20 times. Each
/// info must redeem as its own socket.
fn forking_source(how: &str) {
    const FORKS: usize = 20;
    let _scene = Scene::new();
    let mut target = peer();
    target.ok("session");
    let mut source = peer();
    // A first duplicate before any fork: the source's connection and token pool exist.
    let warm = first_word(&source.ok("udp-bind 127.0.0.1:0"));
    let info = info_from_hex(&source.ok(&format!("dup {warm} {}", target.pid))).unwrap();
    let reply = target.ok(&format!("redeem {}", hex_w(&info)));
    target.ok(&format!("close {}", first_word(&reply)));
    source.ok(&format!("close {warm}"));

    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let to = receiver.local_addr().unwrap();
    let mut failures = Vec::new();
    for i in 0..FORKS {
        let parent = source.ok("udp-bind 127.0.0.1:0");
        let child = source.ok("udp-bind 127.0.0.1:0");
        let (p_slot, p_addr) = parent.split_once(' ').unwrap();
        let (c_slot, c_addr) = child.split_once(' ').unwrap();
        // The child duplicates first (the parent waits for it), then the parent.
        let c_hex = source.ok(&format!("xfork {how} dup {c_slot} {}", target.pid));
        let p_hex = source.ok(&format!("dup {p_slot} {}", target.pid));
        if c_hex == p_hex {
            failures.push(format!("fork {i}: parent and child made the same info"));
        }
        for (who, hex, addr) in [("parent", &p_hex, p_addr), ("child", &c_hex, c_addr)] {
            let Ok(info) = info_from_hex(hex) else {
                failures.push(format!("fork {i}: the {who}'s duplicate failed: {hex}"));
                continue;
            };
            match target.cmd(&format!("redeem {}", hex_w(&info))) {
                Ok(reply) => {
                    // Which socket came out: the one sending from the source's address.
                    let slot = first_word(&reply);
                    target.ok(&format!("sendto {slot} {to} {who}-{i}"));
                    let mut buf = [0u8; 64];
                    let (_, from) = receiver.recv_from(&mut buf).unwrap();
                    if from.to_string() != addr {
                        failures.push(format!(
                            "fork {i}: the {who}'s info redeemed as the socket at {from}, \
                             not its own at {addr}"
                        ));
                    }
                    target.ok(&format!("close {slot}"));
                }
                Err(e) => failures.push(format!("fork {i}: the {who}'s info: {e}")),
            }
        }
        source.ok(&format!("close {p_slot}"));
        source.ok(&format!("close {c_slot}"));
    }
    assert!(
        failures.is_empty(),
        "a single-threaded source forking with {how} (no fork handlers): {} failures in \
         {FORKS} forks: {failures:#?}",
        failures.len()
    );
    source.finish();
    target.finish();
}

#[test]
fn s24_control_a_target_child_made_by_fork_with_handlers_holds_no_pending_socket() {
    fork_child_of_a_target_holds("fork");
}

#[test]
fn s24_control_a_source_forking_with_fork_with_handlers_delivers_each_socket() {
    forking_source("fork");
}

#[test]
fn s24_a_source_forking_with_glibc_fork_without_handlers_delivers_each_socket() {
    forking_source("_Fork");
}

#[test]
fn s24_a_source_forking_with_the_raw_clone_syscall_delivers_each_socket() {
    forking_source("clone");
}
