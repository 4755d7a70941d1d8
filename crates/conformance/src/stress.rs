//! The two roles of the stress test (tests/stress.rs), run inside `peer` processes by the
//! commands `stress-target NAME` and `stress-source CONFIG`.
//!
//! A target serves requests on a Unix datagram socket bound to the abstract name NAME,
//! which survives its restarts (a restarted target binds it again, under a new pid). A
//! request names an info in hex; the target redeems it (twice when asked, to prove the
//! second use fails), reads the 8-byte nonce the source queued on the socket, and echoes
//! it with its own pid through that socket, so the source proves the socket reached the
//! process it was made for and carried data intact.
//!
//! Requests: `pid`; `redeem SEQ once|twice|refuse HEX`; `stop`. Answers: `pid PID`,
//! `done SEQ PID FIRST SECOND` (outcomes: `ok`, a Winsock name, or `-`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::time::{Duration, Instant};

use sockshare::{ErrorKind, ProtocolInfo, Session, SharedSocket};

use crate::{info_from_hex, io_error, outcome, to_hex};

/// How long a target waits for a nonce that was queued before the request was sent: only
/// a broken handoff takes this long.
const DATA_WAIT: Duration = Duration::from_secs(20);
/// How long a source waits for a live target's answer before giving up with a failure:
/// only a hung target takes this long.
const ANSWER_LIMIT: Duration = Duration::from_secs(120);

fn abstract_addr(name: &str) -> Result<UnixAddr, String> {
    UnixAddr::from_abstract_name(name.as_bytes()).map_err(io_error)
}

/// `stress-target NAME`: serves until `stop`, then replies with its counts.
pub fn target(session: &Session, name: &str) -> Result<String, String> {
    let sock = UnixDatagram::bind_addr(&abstract_addr(name)?).map_err(io_error)?;
    let me = std::process::id();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = sock.recv_from(&mut buf).map_err(io_error)?;
        let request = String::from_utf8_lossy(&buf[..n]).into_owned();
        let w: Vec<&str> = request.split_whitespace().collect();
        let answer = match w.as_slice() {
            ["stop"] => break,
            ["pid"] => format!("pid {me}"),
            ["redeem", seq, mode, hex] => {
                let (first, second) = redeem_and_echo(session, mode, hex, me);
                *counts.entry(format!("{mode}-{first}")).or_default() += 1;
                format!("done {seq} {me} {first} {second}")
            }
            _ => "bad-request".to_owned(),
        };
        // A source that gave up (its target was restarted under it) may be gone.
        let _ = sock.send_to_addr(answer.as_bytes(), &from);
    }
    let pending = session.pending();
    let counts: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Ok(format!("pending={pending} {}", counts.join(" ")))
}

/// Redeems the info (and again when `mode` is `twice`); on success echoes the nonce.
fn redeem_and_echo(session: &Session, mode: &str, hex: &str, me: u32) -> (String, String) {
    let Ok(info) = info_from_hex(hex) else {
        return ("bad-info".into(), "-".into());
    };
    let first = session.redeem(&info);
    let second = if mode == "twice" {
        outcome(&session.redeem(&info))
    } else {
        "-".to_owned()
    };
    let first_outcome = outcome(&first);
    if let Ok(socket) = first {
        if let Err(e) = echo(socket, me) {
            return (format!("echo-failed:{e}"), second);
        }
    }
    (first_outcome, second)
}

fn echo(socket: SharedSocket, me: u32) -> std::io::Result<()> {
    let mut nonce = [0u8; 8];
    if socket.kind().is_tcp() {
        let mut s = TcpStream::try_from(socket)?;
        s.set_read_timeout(Some(DATA_WAIT))?;
        s.read_exact(&mut nonce)?;
        s.write_all(&reply(nonce, me))
    } else {
        let s = UdpSocket::try_from(socket)?;
        s.set_read_timeout(Some(DATA_WAIT))?;
        let (_, from) = s.recv_from(&mut nonce)?;
        s.send_to(&reply(nonce, me), from).map(drop)
    }
}

fn reply(nonce: [u8; 8], pid: u32) -> [u8; 12] {
    let mut r = [0u8; 12];
    r[..8].copy_from_slice(&nonce);
    r[8..].copy_from_slice(&pid.to_le_bytes());
    r
}

/// Settings of one source process, from `key=value` words joined by `,`.
struct Config {
    run: String,
    targets: usize,
    threads: usize,
    handoffs: usize,
    seed: u64,
}

impl Config {
    fn parse(s: &str) -> Result<Config, String> {
        let mut c = Config {
            run: String::new(),
            targets: 4,
            threads: 4,
            handoffs: 100,
            seed: 1,
        };
        for kv in s.split(',') {
            let (k, v) = kv.split_once('=').ok_or("io config is key=value,...")?;
            let n = || v.parse::<u64>().map_err(|_| format!("io bad {k}"));
            match k {
                "run" => c.run = v.to_owned(),
                "targets" => c.targets = n()? as usize,
                "threads" => c.threads = n()? as usize,
                "handoffs" => c.handoffs = n()? as usize,
                "seed" => c.seed = n()?,
                _ => return Err(format!("io unknown setting {k}")),
            }
        }
        Ok(c)
    }
}

/// The abstract name target `k` of run `run` serves on.
pub fn target_name(run: &str, k: usize) -> String {
    format!("sockshare-stress/{run}/t{k}")
}

/// `stress-source CONFIG`: `threads` threads share `handoffs` handoffs; replies with the
/// summed counts of every outcome, or the first failure.
pub fn source(config: &str) -> Result<String, String> {
    let c = Config::parse(config)?;
    let per_thread = c.handoffs.div_ceil(c.threads.max(1));
    let threads: Vec<_> = (0..c.threads)
        .map(|t| {
            let names: Vec<String> = (0..c.targets).map(|k| target_name(&c.run, k)).collect();
            let reply_name = format!("sockshare-stress/{}/s{}-{t}", c.run, std::process::id());
            let seed = c.seed.wrapping_mul(1_000_003).wrapping_add(t as u64 + 1);
            std::thread::spawn(move || {
                let mut worker = Worker::new(names, &reply_name, seed)?;
                for _ in 0..per_thread {
                    worker.handoff()?;
                }
                Ok::<_, String>(worker.counts)
            })
        })
        .collect();
    let mut total: BTreeMap<&'static str, usize> = BTreeMap::new();
    for t in threads {
        let counts = t.join().map_err(|_| "io a source thread panicked")??;
        for (k, v) in counts {
            *total.entry(k).or_default() += v;
        }
    }
    let words: Vec<String> = total.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Ok(words.join(" "))
}

/// A small deterministic generator (xorshift64*), so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.next().is_multiple_of(one_in)
    }
}

/// The socket being handed off, and what the source keeps to check it.
enum Shared {
    Tcp {
        ours: Option<TcpStream>,
        peer: TcpStream,
    },
    Udp {
        ours: Option<UdpSocket>,
        peer: UdpSocket,
    },
}

struct Worker {
    names: Vec<String>,
    /// Last known pid of each target.
    pids: Vec<Option<u32>>,
    sock: UnixDatagram,
    listener: TcpListener,
    rng: Rng,
    seq: u64,
    counts: BTreeMap<&'static str, usize>,
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

impl Worker {
    fn new(names: Vec<String>, reply_name: &str, seed: u64) -> Result<Worker, String> {
        let sock = UnixDatagram::bind_addr(&abstract_addr(reply_name)?).map_err(io_error)?;
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .map_err(io_error)?;
        Ok(Worker {
            pids: vec![None; names.len()],
            names,
            sock,
            listener: TcpListener::bind("127.0.0.1:0").map_err(io_error)?,
            rng: Rng(seed | 1),
            seq: 0,
            counts: BTreeMap::new(),
        })
    }

    fn count(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    fn send(&self, k: usize, request: &str) -> bool {
        abstract_addr(&self.names[k])
            .and_then(|a| {
                self.sock
                    .send_to_addr(request.as_bytes(), &a)
                    .map_err(|e| e.to_string())
            })
            .is_ok()
    }

    /// The current pid of target `k`, waiting while it is being restarted.
    fn pid_of(&mut self, k: usize) -> Result<u32, String> {
        if let Some(pid) = self.pids[k] {
            return Ok(pid);
        }
        let start = Instant::now();
        while start.elapsed() < ANSWER_LIMIT {
            if self.send(k, "pid") {
                let mut buf = [0u8; 64];
                if let Ok(n) = self.sock.recv(&mut buf) {
                    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if let Some(pid) = answer.strip_prefix("pid ").and_then(|p| p.parse().ok()) {
                        self.pids[k] = Some(pid);
                        return Ok(pid);
                    }
                    continue; // a late answer to an abandoned request
                }
            } else {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Err(format!("io target {k} did not come back"))
    }

    /// Sends `redeem` to target `k` and waits for its answer: `None` when the target died
    /// before answering.
    fn redeem(
        &mut self,
        k: usize,
        mode: &str,
        info: &ProtocolInfo,
    ) -> Result<Option<Vec<String>>, String> {
        self.seq += 1;
        let seq = self.seq;
        let pid = self.pid_of(k)?;
        let request = format!("redeem {seq} {mode} {}", to_hex(&info.to_bytes_w()));
        if !self.send(k, &request) {
            self.pids[k] = None;
            return Ok(None);
        }
        let start = Instant::now();
        let mut buf = [0u8; 256];
        loop {
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let words: Vec<String> = answer.split_whitespace().map(String::from).collect();
                    if words.len() == 5 && words[0] == "done" && words[1] == seq.to_string() {
                        return Ok(Some(words[2..].to_vec()));
                    }
                }
                Err(_) if !alive(pid) => {
                    self.pids[k] = None;
                    return Ok(None);
                }
                Err(_) if start.elapsed() > ANSWER_LIMIT => {
                    return Err(format!("io target {k} (pid {pid}) alive but silent"))
                }
                Err(_) => {}
            }
        }
    }

    /// One handoff with its random faults; `Err` on any broken promise.
    fn handoff(&mut self) -> Result<(), String> {
        let k = self.rng.below(self.names.len());
        let tcp = self.rng.chance(2);
        let early_close = self.rng.chance(2);
        let twice = self.rng.chance(4);
        let wrong = (self.names.len() > 1 && self.rng.chance(4))
            .then(|| (k + 1 + self.rng.below(self.names.len() - 1)) % self.names.len());
        let nonce = self.rng.next().to_le_bytes();
        let mut shared = self.make(tcp).map_err(io_error)?;
        let (pid, info) = loop {
            let pid = self.pid_of(k)?;
            let r = match &shared {
                Shared::Tcp { ours, .. } => sockshare::duplicate(ours.as_ref().unwrap(), pid),
                Shared::Udp { ours, .. } => sockshare::duplicate(ours.as_ref().unwrap(), pid),
            };
            match r {
                Ok(info) => break (pid, info),
                // The target was killed: find its next incarnation.
                Err(e) if e.kind() == ErrorKind::Invalid => {
                    self.count("refused-dup-target-gone");
                    self.pids[k] = None;
                }
                Err(e) => return Err(format!("io duplicate for target {k}: {e}")),
            }
        };
        // Queue the nonce before the target can redeem, so it never waits for it.
        match &mut shared {
            Shared::Tcp { peer, ours } => {
                peer.write_all(&nonce).map_err(io_error)?;
                if early_close {
                    *ours = None;
                }
            }
            Shared::Udp { peer, ours } => {
                let to = ours.as_ref().unwrap().local_addr().map_err(io_error)?;
                peer.send_to(&nonce, to).map_err(io_error)?;
                if early_close {
                    *ours = None;
                }
            }
        }
        if let Some(w) = wrong {
            match self.redeem(w, "refuse", &info)? {
                Some(a) if a[1] == "WSAEINVAL" => self.count("refused-wrong-process"),
                Some(a) => return Err(format!("io target {w} (not the one) answered {a:?}")),
                None => self.count("wrong-process-target-killed"),
            }
        }
        let mode = if twice { "twice" } else { "once" };
        match self.redeem(k, mode, &info)? {
            Some(a) if a[1] == "ok" => {
                if a[0] != pid.to_string() {
                    return Err(format!("io info for {pid} redeemed by {}", a[0]));
                }
                self.check_echo(&mut shared, nonce, pid)?;
                self.count(if tcp { "handoffs-tcp" } else { "handoffs-udp" });
                if twice {
                    if a[2] != "WSAEINVAL" {
                        return Err(format!("io second use gave {}", a[2]));
                    }
                    self.count("refused-second-use");
                }
            }
            // The target was restarted between duplicate and redeem: the info was made for
            // its previous incarnation.
            Some(a) if a[1] == "WSAEINVAL" && a[0] != pid.to_string() => {
                self.count("refused-stale-after-restart");
                self.pids[k] = None;
            }
            Some(a) => return Err(format!("io target {k} (pid {pid}) answered {a:?}")),
            None => {
                self.count("target-killed-in-flight");
                if let (Shared::Tcp { peer, ours: None }, true) = (&mut shared, tcp) {
                    // Only the dead target held the socket: the peer must see the end.
                    self.check_released(peer, nonce, pid)?;
                    self.count("released-by-killed-target");
                }
            }
        }
        Ok(())
    }

    fn make(&self, tcp: bool) -> std::io::Result<Shared> {
        let local: SocketAddr = "127.0.0.1:0".parse().expect("address");
        Ok(if tcp {
            let ours = TcpStream::connect(self.listener.local_addr()?)?;
            let (peer, _) = self.listener.accept()?;
            peer.set_read_timeout(Some(DATA_WAIT))?;
            Shared::Tcp {
                ours: Some(ours),
                peer,
            }
        } else {
            let peer = UdpSocket::bind(local)?;
            peer.set_read_timeout(Some(DATA_WAIT))?;
            Shared::Udp {
                ours: Some(UdpSocket::bind(local)?),
                peer,
            }
        })
    }

    fn check_echo(&self, shared: &mut Shared, nonce: [u8; 8], pid: u32) -> Result<(), String> {
        let mut got = [0u8; 12];
        match shared {
            Shared::Tcp { peer, .. } => peer.read_exact(&mut got),
            Shared::Udp { peer, .. } => peer.recv(&mut got).map(drop),
        }
        .map_err(|e| format!("io no echo from {pid}: {e}"))?;
        if got != reply(nonce, pid) {
            return Err(format!("io echo {got:?} is not the nonce from {pid}"));
        }
        Ok(())
    }

    /// After the target died holding the only other reference: an echo (it redeemed
    /// before dying) and then EOF, or the end at once: EOF, or a reset when the socket was
    /// closed with our nonce unread in it.
    fn check_released(&self, peer: &mut TcpStream, nonce: [u8; 8], pid: u32) -> Result<(), String> {
        let mut got = Vec::new();
        match peer.read_to_end(&mut got) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && got.is_empty() => {}
            Err(e) => {
                return Err(format!(
                    "io the killed target's socket was not released: {e}"
                ))
            }
        }
        if !got.is_empty() && got != reply(nonce, pid) {
            return Err(format!("io {got:?} from a killed target"));
        }
        Ok(())
    }
}
