//! Drivers for the cross-process tests of the sockshare contract (docs/semantics.md).
//!
//! A test runs in one process and drives one or more `peer` processes (src/bin/peer.rs)
//! through pipes: each is a real process with its own descriptor table and pid, acting as
//! source, target or bystander. Every test checks the descriptor counts of every process
//! involved before and after, so a leak anywhere fails it.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use sockshare::{ProtocolInfo, SharedSocket};

pub mod stress;

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of a hex string, or `None` if it is not hex.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The protocol info in hex text `s`; a failure as a peer answers it (`io bad hex`, or
/// the Winsock name of what `ProtocolInfo::from_bytes` refused).
pub fn info_from_hex(s: &str) -> Result<ProtocolInfo, String> {
    let bytes = from_hex(s).ok_or("io bad hex")?;
    ProtocolInfo::from_bytes(&bytes).map_err(wsa_error)
}

/// A sockshare failure as a peer answers it: `WSANAME message`.
pub fn wsa_error(e: sockshare::Error) -> String {
    format!("{} {}", e.kind().name(), e.message())
}

/// An I/O failure as a peer answers it: `io message`.
pub fn io_error(e: std::io::Error) -> String {
    format!("io {e}")
}

/// How a redeem ended, as a peer reports it: `ok` or the Winsock error's name.
pub fn outcome(r: &sockshare::Result<SharedSocket>) -> String {
    match r {
        Ok(_) => "ok".to_owned(),
        Err(e) => e.kind().name().to_owned(),
    }
}

/// Open descriptors of this process.
pub fn count_fds() -> usize {
    // The directory handle read_dir holds is one of the entries.
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() - 1)
}

/// The resident memory of process `pid` in KiB (`VmRSS` in /proc/PID/status), 0 if gone.
pub fn rss_kib(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Tests share this process's descriptor table and its sharing session, so they run one
/// at a time: each holds this lock for its whole run.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A scripted peer process.
pub struct Peer {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
    /// The peer's pid, as it sees itself (through a pid-namespace wrapper, not ours).
    pub pid: u32,
    /// The peer's descriptor count right after it started.
    baseline: usize,
}

/// How to start a peer.
pub struct PeerCommand {
    command: Command,
}

impl PeerCommand {
    /// A peer run directly.
    pub fn new(exe: &str) -> PeerCommand {
        PeerCommand {
            command: Command::new(exe),
        }
    }

    /// A peer run through a wrapper, such as `unshare -n`.
    pub fn wrapped(wrapper: &[&str], exe: &str) -> PeerCommand {
        let mut command = Command::new(wrapper[0]);
        command.args(&wrapper[1..]).arg(exe);
        PeerCommand { command }
    }

    /// Runs the peer as another user (the tests run as root).
    pub fn as_user(mut self, uid: u32, gid: u32) -> PeerCommand {
        use std::os::unix::process::CommandExt;
        self.command.uid(uid).gid(gid);
        self
    }

    /// Starts the peer.
    pub fn spawn(mut self) -> Peer {
        let mut child = self
            .command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the peer process");
        let to = child.stdin.take().expect("peer stdin");
        let from = BufReader::new(child.stdout.take().expect("peer stdout"));
        let mut peer = Peer {
            pid: child.id(),
            child,
            to,
            from,
            baseline: 0,
        };
        // Through a wrapper the child is the wrapper; ask the peer who it is.
        peer.pid = peer.ok("pid").parse().expect("peer pid");
        peer.baseline = peer.fds();
        peer
    }
}

impl Peer {
    /// Sends one command; `Ok(rest)` for `ok rest`, `Err(rest)` for `err rest`.
    pub fn cmd(&mut self, line: &str) -> Result<String, String> {
        self.start(line);
        self.answer(line)
    }

    /// Sends one command without waiting for its answer (a long-running one), for
    /// [`answer`](Self::answer) to collect.
    pub fn start(&mut self, line: &str) {
        writeln!(self.to, "{line}").expect("write to peer");
        self.to.flush().expect("flush to peer");
    }

    /// Waits for the answer to the command `line` sent by [`start`](Self::start).
    pub fn answer(&mut self, line: &str) -> Result<String, String> {
        let mut reply = String::new();
        self.from.read_line(&mut reply).expect("read from peer");
        let reply = reply.trim_end();
        if let Some(rest) = reply.strip_prefix("ok") {
            Ok(rest.trim_start().to_owned())
        } else if let Some(rest) = reply.strip_prefix("err ") {
            Err(rest.to_owned())
        } else {
            panic!("peer {} answered {reply:?} to {line:?}", self.pid)
        }
    }

    /// Sends a command that must succeed.
    pub fn ok(&mut self, line: &str) -> String {
        match self.cmd(line) {
            Ok(s) => s,
            Err(e) => panic!("peer {}: {line:?} failed: {e}", self.pid),
        }
    }

    /// Sends a command that must fail with the Winsock error `name`.
    pub fn fails_with(&mut self, line: &str, name: &str) -> String {
        match self.cmd(line) {
            Ok(s) => panic!(
                "peer {}: {line:?} succeeded ({s}), expected {name}",
                self.pid
            ),
            Err(e) => {
                assert!(
                    e.starts_with(name),
                    "peer {}: {line:?} failed with {e}, expected {name}",
                    self.pid
                );
                e
            }
        }
    }

    /// The peer's count of open descriptors.
    pub fn fds(&mut self) -> usize {
        self.ok("fds").parse().expect("fd count")
    }

    /// The resident memory of the process this one started, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> usize {
        rss_kib(self.child.id())
    }

    /// The pid of the process this one started (the peer, or its wrapper).
    pub fn child_pid(&self) -> u32 {
        self.child.id()
    }

    /// Closes what the test made the peer hold, ends its session and its connections to
    /// targets, and checks it is back to the descriptors it started with: anything the
    /// library kept is a leak.
    pub fn finish(mut self) {
        self.ok("close-all");
        self.ok("end");
        self.ok("disconnect");
        let now = self.fds();
        assert_eq!(
            now, self.baseline,
            "peer {} leaked descriptors: {} at start, {now} at the end",
            self.pid, self.baseline
        );
        self.exit();
    }

    /// Ends the peer and waits for it.
    pub fn exit(mut self) {
        let _ = writeln!(self.to, "exit");
        let _ = self.to.flush();
        let _ = self.child.wait();
    }

    /// Kills the peer (SIGKILL) and waits for it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the attack tests (tests/attacks_records.rs) ask of a target peer.
impl Peer {
    /// How many pushed sockets wait in the peer's session table.
    pub fn pending(&mut self) -> usize {
        self.ok("pending").parse().expect("pending count")
    }

    /// Waits until the peer's session holds at least `n` pushed sockets in its table: its
    /// thread moves them from the kernel's queue on its own time. Panics if it never does.
    pub fn wait_pending(&mut self, n: usize) {
        for _ in 0..1000 {
            if self.pending() >= n {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!(
            "peer {}: the session never held {n} pushed sockets",
            self.pid
        );
    }

    /// The peer's count of open descriptors, read from outside (/proc/PID/fd, as root):
    /// right even when the peer is out of descriptors, where its own count (`fds`) cannot
    /// open the directory. Counts the same as `fds`.
    pub fn fds_outside(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map_or(0, |d| d.count())
    }

    /// Waits until the peer holds `n` descriptors (its session's thread lets go of closed
    /// connections on its own time); panics with `what` if it never does.
    pub fn wait_fds(&mut self, n: usize, what: &str) {
        let mut now = self.fds();
        for _ in 0..1000 {
            if now == n {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            now = self.fds();
        }
        panic!("peer {}: {what}: {now} descriptors, expected {n}", self.pid);
    }
}

/// Protocol infos made or altered by hand, byte for byte, as an attacker would: the
/// `WSAPROTOCOL_INFOW` layout that `sockshare::info` documents (offsets from
/// `sockshare::info::offset`), with the integrity tag in `dwProviderReserved`. Only the
/// W form (628 bytes); the attack tests need no other.
///
/// The layout is Windows' and stays; what names a pending socket inside it may not, so
/// the wire side of every attack (what a hand-made push says) lives apart, in the
/// `craft` module of src/bin/peer.rs.
pub mod forge {
    use sockshare::info::{offset, pfl, xp1, INFO_W_SIZE, PROVIDER_ID};
    use sockshare::SocketKind;

    /// The little-endian `u32` at `at`.
    pub fn get_u32(w: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(w[at..at + 4].try_into().expect("4 bytes"))
    }

    /// Writes `v` little-endian at `at`.
    pub fn put_u32(w: &mut [u8], at: usize, v: u32) {
        w[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// The token an info carries for a socket pushed with `secret`: the first 8 bytes of
    /// SHA-256 over a domain label and the secret (sys/linux/wire.rs `token_of`), written
    /// again here so the tests check the library against the protocol, not itself.
    pub fn token_of(secret: u64) -> u64 {
        use sha2::{Digest, Sha256};
        let digest = Sha256::new()
            .chain_update(b"sockshare/v2 token\0")
            .chain_update(secret.to_le_bytes())
            .finalize();
        u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
    }

    /// The single-use token an info carries (`dwServiceFlags3`, `dwServiceFlags4`): what
    /// anyone who sees the info in transit can read.
    pub fn token(w: &[u8]) -> u64 {
        u64::from(get_u32(w, offset::SERVICE_FLAGS3))
            | u64::from(get_u32(w, offset::SERVICE_FLAGS4)) << 32
    }

    /// Writes the token.
    pub fn put_token(w: &mut [u8], token: u64) {
        put_u32(w, offset::SERVICE_FLAGS3, token as u32);
        put_u32(w, offset::SERVICE_FLAGS4, (token >> 32) as u32);
    }

    /// The integrity tag the info carries (`dwProviderReserved`).
    pub fn tag(w: &[u8]) -> u32 {
        get_u32(w, offset::PROVIDER_RESERVED)
    }

    /// The tag the library computes for a W form: its CRC-32 with the tag's own field
    /// zeroed (`tag_of` in info.rs).
    pub fn tag_of(w: &[u8]) -> u32 {
        let mut bytes = w.to_vec();
        bytes[offset::PROVIDER_RESERVED..offset::PROVIDER_RESERVED + 4].fill(0);
        crc32fast::hash(&bytes)
    }

    /// Recomputes and writes the tag over the info as it now is: the check then passes,
    /// with a tag that differs from the one the source sent beside the socket.
    pub fn reseal(w: &mut [u8]) {
        let tag = tag_of(w);
        put_u32(w, offset::PROVIDER_RESERVED, tag);
    }

    /// Makes the info's CRC equal `tag` by choosing the 4 bytes at `at` (a field the
    /// library carries but gives no meaning, such as a `ProtocolChain` entry), and writes
    /// `tag` as the info's tag. CRC-32 is affine over GF(2): flipping a bit of the
    /// message flips a fixed set of bits of the CRC whatever the rest is, so 32 free bits
    /// solve for any CRC (any 32 consecutive bits are independent for CRC-32).
    pub fn force_tag(w: &mut [u8], at: usize, tag: u32) {
        put_u32(w, at, 0);
        let base = tag_of(w);
        // An xor basis of the bits' effects, by highest bit: (effect, bits chosen).
        let mut basis: [Option<(u32, u32)>; 32] = [None; 32];
        for bit in 0..32 {
            put_u32(w, at, 1 << bit);
            let (mut effect, mut chosen) = (tag_of(w) ^ base, 1u32 << bit);
            while effect != 0 {
                let top = 31 - effect.leading_zeros() as usize;
                match basis[top] {
                    Some((e, c)) => {
                        effect ^= e;
                        chosen ^= c;
                    }
                    None => {
                        basis[top] = Some((effect, chosen));
                        break;
                    }
                }
            }
        }
        let (mut want, mut x) = (tag ^ base, 0u32);
        while want != 0 {
            let top = 31 - want.leading_zeros() as usize;
            let (e, c) = basis[top].expect("32 consecutive bits force any CRC-32");
            want ^= e;
            x ^= c;
        }
        put_u32(w, at, x);
        put_u32(w, offset::PROVIDER_RESERVED, tag);
        assert_eq!(tag_of(w), tag, "the forced CRC");
    }

    /// `szProtocol` for `kind`, as the library names it.
    fn provider_name(kind: SocketKind) -> String {
        let v6 = if kind.family() == i32::from(socket2::Domain::IPV6) {
            "v6"
        } else {
            ""
        };
        let name = if kind.is_tcp() {
            format!("TCP/IP{v6}")
        } else if kind.is_udp() {
            format!("UDP/IP{v6}")
        } else if kind.is_unix() && kind.is_stream() {
            "UNIX STREAM".into()
        } else if kind.is_unix() && kind.is_datagram() {
            "UNIX DGRAM".into()
        } else if kind.is_unix() && kind.ty() == socket2::Type::SEQPACKET {
            "UNIX SEQPACKET".into()
        } else {
            return format!(
                "sockshare [AF {} TYPE {}]",
                kind.family(),
                kind.socket_type()
            );
        };
        format!("sockshare [{name}]")
    }

    /// The W form the library's `duplicate` makes for a socket of `kind` shared with
    /// `pid` under `token`, tag included: every field written by hand, so an attacker
    /// (or a test) can make one for any token.
    pub fn info_w(kind: SocketKind, pid: u32, token: u64) -> [u8; INFO_W_SIZE] {
        use xp1::*;
        let connected = GUARANTEED_DELIVERY | GUARANTEED_ORDER | GRACEFUL_CLOSE;
        let unix = kind.is_unix();
        let flags = IFS_HANDLES
            | if kind.is_tcp() {
                connected | EXPEDITED_DATA
            } else if kind.is_udp() {
                SUPPORT_MULTIPOINT | SUPPORT_BROADCAST | MESSAGE_ORIENTED | CONNECTIONLESS
            } else if unix && kind.is_stream() {
                connected
            } else if unix && kind.is_datagram() {
                MESSAGE_ORIENTED | CONNECTIONLESS | GUARANTEED_DELIVERY | GUARANTEED_ORDER
            } else if unix && kind.ty() == socket2::Type::SEQPACKET {
                connected | MESSAGE_ORIENTED
            } else {
                0
            };
        let (min, max) = match kind.domain() {
            socket2::Domain::IPV4 => (16, 16),
            socket2::Domain::IPV6 => (28, 28),
            socket2::Domain::UNIX => (2, 110),
            _ => (0, 0),
        };
        let mut w = [0u8; INFO_W_SIZE];
        put_u32(&mut w, offset::SERVICE_FLAGS1, flags);
        put_u32(&mut w, offset::SERVICE_FLAGS2, pid);
        put_token(&mut w, token);
        put_u32(&mut w, offset::PROVIDER_FLAGS, pfl::MATCHES_PROTOCOL_ZERO);
        w[offset::PROVIDER_ID..offset::PROVIDER_ID + 16].copy_from_slice(&PROVIDER_ID);
        let catalog = 1000 + (kind.family() as u32 & 0xff) * 16 + (kind.socket_type() as u32 & 0xf);
        put_u32(&mut w, offset::CATALOG_ENTRY_ID, catalog);
        put_u32(&mut w, offset::PROTOCOL_CHAIN, 1); // BASE_PROTOCOL
        put_u32(&mut w, offset::VERSION, 2);
        put_u32(&mut w, offset::ADDRESS_FAMILY, kind.family() as u32);
        put_u32(&mut w, offset::MAX_SOCKADDR, max);
        put_u32(&mut w, offset::MIN_SOCKADDR, min);
        put_u32(&mut w, offset::SOCKET_TYPE, kind.socket_type() as u32);
        put_u32(&mut w, offset::PROTOCOL, kind.protocol() as u32);
        put_u32(&mut w, offset::NETWORK_BYTE_ORDER, u32::from(unix));
        let message_size = if kind.is_udp() { 0xffbb } else { 0 };
        put_u32(&mut w, offset::MESSAGE_SIZE, message_size);
        for (i, unit) in provider_name(kind).encode_utf16().enumerate() {
            let at = offset::SZ_PROTOCOL + 2 * i;
            w[at..at + 2].copy_from_slice(&unit.to_le_bytes());
        }
        reseal(&mut w);
        w
    }
}

/// The abstract socket names (without the leading NUL) under which process `pid` would
/// serve its session, every one of them: hostile peers squat or connect to each, so this
/// is the one place that knows the naming scheme. Today's library binds the single name
/// `sockshare/v1/<pid>`. A scheme keyed by the process's start time as well (such as
/// `sockshare/v2/<pid>.<starttime>.<i>` for `i` in `0..16`, with [`start_time`]) is one
/// edit here; the names are then those of the process that has `pid` when this is called.
pub fn endpoint_names(pid: u32) -> Vec<Vec<u8>> {
    let Some(start) = start_time(pid) else {
        return Vec::new();
    };
    (0..16)
        .map(|i| format!("sockshare/v2/{pid}.{start}.{i}").into_bytes())
        .collect()
}

/// An info's W form in hex, as peers take it.
pub fn hex_w(info: &ProtocolInfo) -> String {
    to_hex(&info.to_bytes_w())
}

/// Asserts that the connection `server` is the far end of is still open: nothing to
/// read, and no end of file.
pub fn assert_still_open(server: &std::net::TcpStream) {
    use std::io::Read;
    server.set_nonblocking(true).expect("nonblocking");
    let e = (&*server)
        .read(&mut [0u8; 8])
        .expect_err("no data and no EOF");
    assert_eq!(
        e.kind(),
        std::io::ErrorKind::WouldBlock,
        "the connection ended while a process could still hold its other end"
    );
    server.set_nonblocking(false).expect("blocking");
}

/// Asserts that `server` sees end of file (within its read timeout): every reference to
/// the other end of the connection is gone.
pub fn assert_eof(mut server: &std::net::TcpStream) {
    use std::io::Read;
    match server.read(&mut [0u8; 8]) {
        Ok(0) => {}
        other => panic!("expected EOF, the shared socket is still held somewhere: {other:?}"),
    }
}

/// A connected TCP pair on loopback: (client, server), the server reading with a 10 s
/// deadline so a test that waits for data cannot hang.
pub fn tcp_pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind on loopback");
    let client =
        std::net::TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    server
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("read timeout");
    (client, server)
}

/// The innermost descendant of process `pid` (a peer under its `unshare` wrappers).
pub fn descendant(pid: u32) -> u32 {
    let mut pid = pid;
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        match children
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
        {
            Some(child) => pid = child,
            None => return pid,
        }
    }
}

/// The abstract names of the keepers that may hold sockets for process `pid` before it
/// has a session (`sockshare/v2/keep/<pid>.<start>.<i>`, `i` in `0..16`).
pub fn keeper_names(pid: u32) -> Vec<Vec<u8>> {
    let Some(start) = start_time(pid) else {
        return Vec::new();
    };
    (0..16)
        .map(|i| format!("sockshare/v2/keep/{pid}.{start}.{i}").into_bytes())
        .collect()
}

/// The start time of process `pid` in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`), which tells two processes that had the same pid apart; `None` if
/// there is no such process.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or parentheses:
    // count fields from the last `)`, which is followed by field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The 16-byte handshake reply a session sends a source it admits (wire.rs: magic, version
/// 2, verdict 1 "accepted", zeros); a fake session answers with it.
pub fn accepted_reply() -> [u8; 16] {
    let mut r = [0u8; 16];
    r[..4].copy_from_slice(b"SSHR");
    r[4..6].copy_from_slice(&2u16.to_le_bytes());
    r[6..8].copy_from_slice(&1u16.to_le_bytes());
    r
}

/// A peer whose pid is `pid`, started by `make`: as root, sets the kernel's last-allocated
/// pid just below it before each start (`ns_last_pid`), retrying while other processes take
/// the number.
pub fn peer_with_pid(pid: u32, make: impl Fn() -> PeerCommand) -> Peer {
    for _ in 0..1000 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("set ns_last_pid (the tests run as root)");
        let p = make().spawn();
        if p.pid == pid {
            return p;
        }
        p.exit();
    }
    panic!("could not start a process with pid {pid}");
}

/// One test's run: serialises tests and checks this process's descriptors at the end
/// (unless the test already failed).
pub struct Scene {
    fds: usize,
    _lock: MutexGuard<'static, ()>,
}

impl Scene {
    /// Takes the tests' lock, drops cached connections and counts descriptors.
    pub fn new() -> Scene {
        let lock = serial();
        // A test that failed left its connections cached; start from none.
        sockshare::disconnect_all();
        Scene {
            fds: count_fds(),
            _lock: lock,
        }
    }
}

impl Default for Scene {
    fn default() -> Scene {
        Scene::new()
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        sockshare::disconnect_all();
        let now = count_fds();
        if now != self.fds {
            let open: Vec<String> = std::fs::read_dir("/proc/self/fd")
                .map(|d| {
                    d.flatten()
                        .map(|e| format!("{:?}", std::fs::read_link(e.path()).unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default();
            panic!(
                "the test process leaked descriptors: {} before, {now} after; open: {open:?}",
                self.fds
            );
        }
    }
}

/// The README's Rust example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
