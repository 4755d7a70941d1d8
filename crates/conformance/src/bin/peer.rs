//! A scripted sockshare process for the cross-process tests: it reads one command a line
//! on stdin and answers one line on stdout, `ok ...` or `err <WSANAME|io> <message>`.
//! Sockets it holds live in numbered slots. See `conformance::Peer` for the driver.

use std::io::{BufRead, Read, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use conformance::{
    accepted_reply, count_fds, endpoint_names, from_hex, info_from_hex, io_error, outcome, to_hex,
    wsa_error,
};
use socket2::{Domain, SockAddr, Socket, Type};
use sockshare::{Policy, Session, SocketKind};

type Reply = Result<String, String>;

#[derive(Default)]
struct Peer {
    session: Option<Session>,
    slots: Vec<Option<Socket>>,
    filler: Vec<OwnedFd>,
    /// Connections to sessions' endpoints held open by `flood-connect`.
    flood: Vec<OwnedFd>,
    /// A hostile listener posing as a session (`fake-session`).
    fake: Option<FakeSession>,
    /// Admitted connections to sessions' endpoints that this peer speaks on by hand
    /// (`raw-connect`, `push-seq`), by number.
    raw: Vec<Option<OwnedFd>>,
}

fn main() {
    let mut peer = Peer::default();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"exit") {
            std::process::exit(0);
        }
        let reply = match peer.run(&words) {
            Ok(s) if s.is_empty() => "ok".to_owned(),
            Ok(s) => format!("ok {s}"),
            Err(e) => format!("err {e}"),
        };
        let _ = writeln!(out, "{reply}");
        let _ = out.flush();
    }
}

fn arg<'a>(words: &[&'a str], i: usize) -> Result<&'a str, String> {
    words
        .get(i)
        .copied()
        .ok_or_else(|| format!("io missing argument {i}"))
}

fn num<T: std::str::FromStr>(words: &[&str], i: usize) -> Result<T, String> {
    arg(words, i)?
        .parse()
        .map_err(|_| format!("io argument {i} is not a number"))
}

impl Peer {
    fn put(&mut self, s: Socket) -> usize {
        self.slots.push(Some(s));
        self.slots.len() - 1
    }

    fn slot(&self, words: &[&str], i: usize) -> Result<&Socket, String> {
        let n: usize = num(words, i)?;
        self.slots
            .get(n)
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("io no socket in slot {n}"))
    }

    fn session(&self) -> Result<&Session, String> {
        self.session
            .as_ref()
            .ok_or_else(|| "io no session in this peer".to_owned())
    }

    fn run(&mut self, w: &[&str]) -> Reply {
        match *w.first().ok_or("io empty command")? {
            "session" => {
                let mut b = Session::builder();
                for opt in &w[1..] {
                    if let Some(n) = opt.strip_prefix("capacity=") {
                        b = b.capacity(n.parse().map_err(|_| "io bad capacity")?);
                    } else if *opt == "any" {
                        b = b.policy(Policy::AnyUser);
                    } else if let Some(list) = opt.strip_prefix("uids=") {
                        let uids = list.split(',').filter_map(|u| u.parse().ok()).collect();
                        b = b.policy(Policy::AllowUids(uids));
                    }
                }
                let s = b.start().map_err(wsa_error)?;
                let pid = s.pid();
                self.session = Some(s);
                Ok(pid.to_string())
            }
            "end" => {
                self.session = None;
                Ok(String::new())
            }
            "pid" => Ok(std::process::id().to_string()),
            "close-all" => {
                self.slots.clear();
                self.filler.clear();
                self.flood.clear();
                self.fake = None;
                self.raw.clear();
                Ok(String::new())
            }
            "disconnect" => {
                sockshare::disconnect_all();
                Ok(String::new())
            }
            "pending" => Ok(self.session()?.pending().to_string()),
            "capacity" => Ok(self.session()?.capacity().to_string()),
            "fds" => Ok(count_fds().to_string()),
            "tcp-listen" | "udp-bind" | "tcp-connect" | "tcp-unbound" | "udp-unbound" => {
                let tcp = w[0].starts_with("tcp");
                let ty = if tcp { Type::STREAM } else { Type::DGRAM };
                let addr: SocketAddr = arg(w, 1)
                    .unwrap_or("127.0.0.1:0")
                    .parse()
                    .map_err(|_| "io bad address")?;
                let s = Socket::new(Domain::for_address(addr), ty, None).map_err(io_error)?;
                match w[0] {
                    "tcp-listen" => {
                        s.bind(&addr.into()).map_err(io_error)?;
                        s.listen(16).map_err(io_error)?;
                    }
                    "udp-bind" => s.bind(&addr.into()).map_err(io_error)?,
                    "tcp-connect" => s.connect(&addr.into()).map_err(io_error)?,
                    _ => {}
                }
                let local = s.local_addr().ok().and_then(|a| a.as_socket());
                let slot = self.put(s);
                Ok(match local {
                    Some(a) if !w[0].ends_with("unbound") => format!("{slot} {a}"),
                    _ => slot.to_string(),
                })
            }
            "unix-pair" => {
                let ty = if arg(w, 1) == Ok("dgram") {
                    Type::DGRAM
                } else {
                    Type::STREAM
                };
                let (a, b) = Socket::pair(Domain::UNIX, ty, None).map_err(io_error)?;
                let a = self.put(a);
                let b = self.put(b);
                Ok(format!("{a} {b}"))
            }
            "unix-listen" | "unix-connect" => {
                let path = SockAddr::unix(arg(w, 1)?).map_err(io_error)?;
                let s = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(io_error)?;
                if w[0] == "unix-listen" {
                    let _ = std::fs::remove_file(arg(w, 1)?);
                    s.bind(&path).map_err(io_error)?;
                    s.listen(16).map_err(io_error)?;
                } else {
                    s.connect(&path).map_err(io_error)?;
                }
                Ok(self.put(s).to_string())
            }
            "accept" => {
                let s = self.slot(w, 1)?;
                s.set_read_timeout(Some(Duration::from_secs(10))).ok();
                let (conn, _) = s.accept().map_err(io_error)?;
                Ok(self.put(conn).to_string())
            }
            "dup" | "dup-a" => {
                let pid: u32 = num(w, 2)?;
                let info = sockshare::duplicate(self.slot(w, 1)?, pid).map_err(wsa_error)?;
                Ok(if w[0] == "dup" {
                    to_hex(&info.to_bytes_w())
                } else {
                    to_hex(&info.to_bytes_a())
                })
            }
            "redeem" => {
                let info = info_from_hex(arg(w, 1)?)?;
                let shared = self.session()?.redeem(&info).map_err(wsa_error)?;
                let kind = shared.kind();
                let slot = self.put(Socket::from(shared));
                Ok(format!(
                    "{slot} {} {} {}",
                    kind.family(),
                    kind.socket_type(),
                    kind.protocol()
                ))
            }
            "send" => {
                let text = arg(w, 2)?;
                self.slot(w, 1)?.send(text.as_bytes()).map_err(io_error)?;
                Ok(String::new())
            }
            "sendto" => {
                let addr: SocketAddr = arg(w, 2)?.parse().map_err(|_| "io bad address")?;
                let text = arg(w, 3)?;
                self.slot(w, 1)?
                    .send_to(text.as_bytes(), &addr.into())
                    .map_err(io_error)?;
                Ok(String::new())
            }
            "recv" => {
                let mut s = self.slot(w, 1)?;
                s.set_read_timeout(Some(Duration::from_secs(10))).ok();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).map_err(io_error)?;
                Ok(if n == 0 {
                    "<eof>".to_owned()
                } else {
                    String::from_utf8_lossy(&buf[..n]).into_owned()
                })
            }
            "recvfrom" => {
                let s = self.slot(w, 1)?;
                s.set_read_timeout(Some(Duration::from_secs(10))).ok();
                let mut buf = [MaybeUninit::<u8>::uninit(); 1024];
                let (n, from) = s.recv_from(&mut buf).map_err(io_error)?;
                // SAFETY: recv_from initialised the first `n` bytes.
                let data: Vec<u8> = buf[..n]
                    .iter()
                    .map(|b| unsafe { b.assume_init() })
                    .collect();
                let from = from.as_socket().map_or("?".to_owned(), |a| a.to_string());
                Ok(format!("{from} {}", String::from_utf8_lossy(&data)))
            }
            "close" => {
                let n: usize = num(w, 1)?;
                let s = self.slots.get_mut(n).and_then(Option::take);
                s.map(|_| String::new())
                    .ok_or_else(|| format!("io no socket in slot {n}"))
            }
            "getopt" => {
                let s = self.slot(w, 1)?;
                match arg(w, 2)? {
                    "rcvbuf" => Ok(s.recv_buffer_size().map_err(io_error)?.to_string()),
                    "nonblocking" => Ok(s.nonblocking().map_err(io_error)?.to_string()),
                    "cloexec" => {
                        let flags = rustix::io::fcntl_getfd(s).map_err(|e| io_error(e.into()))?;
                        Ok(flags.contains(rustix::io::FdFlags::CLOEXEC).to_string())
                    }
                    o => Err(format!("io unknown option {o}")),
                }
            }
            "setopt" => {
                let s = self.slot(w, 1)?;
                match arg(w, 2)? {
                    "rcvbuf" => s.set_recv_buffer_size(num(w, 3)?).map_err(io_error)?,
                    "nonblocking" => s.set_nonblocking(arg(w, 3)? == "true").map_err(io_error)?,
                    o => return Err(format!("io unknown option {o}")),
                }
                Ok(String::new())
            }
            "nofile" => {
                let n: u64 = num(w, 1)?;
                let old = rustix::process::getrlimit(rustix::process::Resource::Nofile);
                rustix::process::setrlimit(
                    rustix::process::Resource::Nofile,
                    rustix::process::Rlimit {
                        current: Some(n),
                        maximum: old.maximum,
                    },
                )
                .map_err(|e| io_error(e.into()))?;
                Ok(String::new())
            }
            "fill-fds" => {
                // Take every free descriptor, so the next one a call needs fails with EMFILE.
                loop {
                    match rustix::io::dup(std::io::stdin().as_fd()) {
                        Ok(fd) => self.filler.push(fd),
                        Err(rustix::io::Errno::MFILE) => break,
                        Err(e) => return Err(io_error(e.into())),
                    }
                }
                Ok(self.filler.len().to_string())
            }
            "free-fds" => {
                let n: usize = num(w, 1)?;
                let keep = self.filler.len().saturating_sub(n);
                self.filler.truncate(keep);
                Ok(String::new())
            }
            "fork" => self.fork(w),
            "raw-push" => self.raw_push(w),
            "flood-connect" => self.flood_connect(w),
            "flood-burst" => self.flood_burst(w),
            "garbage" => self.garbage(w),
            "squat" => self.squat(w),
            "send-fds" => self.send_fds(w),
            "recv-fds" => self.recv_fds(w),
            "fake-session" => self.fake_session(w),
            "fake-report" => fake_report(self.fake.as_ref()),
            "xfork" => self.xfork(w),
            "reap" => reap(w),
            "keeper-probe" => keeper_probe(w),
            "whoami" => Ok(format!(
                "uid={} euid={}",
                rustix::process::getuid().as_raw(),
                rustix::process::geteuid().as_raw()
            )),
            "raw-connect" => self.raw_connect(w),
            "substitute" => self.substitute(w),
            "push-seq" => self.push_seq(w),
            "local" => self.local(w),
            "dup-flood" => self.dup_flood(w),
            "redeem-timed" => self.redeem_timed(w),
            "sleep" => sleep(w),
            "session-redeem" => self.session_redeem(w),
            "stress-target" => conformance::stress::target(self.session()?, arg(w, 1)?),
            "stress-source" => conformance::stress::source(arg(w, 1)?),
            other => Err(format!("io unknown command {other}")),
        }
    }

    /// `fork redeem HEX`: a forked child tries to redeem with the inherited session, then
    /// with a session of its own; `fork hold SECS`: a forked child sleeps, holding whatever
    /// it inherited. Replies with what the child reports, or its pid.
    fn fork(&mut self, w: &[&str]) -> Reply {
        let (read, write) = rustix::pipe::pipe().map_err(|e| io_error(e.into()))?;
        // SAFETY: the child runs only async-signal-safe-enough code of this single-threaded
        // program plus sockshare's own post-fork path (the thing under test), then _exits.
        match unsafe { libc::fork() } {
            -1 => Err(io_error(std::io::Error::last_os_error())),
            0 => {
                drop(read);
                let report = self.in_child(w);
                let _ = rustix::io::write(&write, report.as_bytes());
                // SAFETY: leaving the child without running the parent's exit handlers.
                unsafe { libc::_exit(0) }
            }
            child => {
                drop(write);
                if arg(w, 1)? == "hold" {
                    return Ok(child.to_string());
                }
                let mut report = String::new();
                std::fs::File::from(read)
                    .read_to_string(&mut report)
                    .map_err(io_error)?;
                let mut status = 0;
                // SAFETY: reaping our own child.
                unsafe { libc::waitpid(child, &mut status, 0) };
                Ok(report)
            }
        }
    }

    fn in_child(&mut self, w: &[&str]) -> String {
        match w.get(1) {
            Some(&"hold") => {
                let secs: u64 = num(w, 2).unwrap_or(5);
                std::thread::sleep(Duration::from_secs(secs));
                String::new()
            }
            Some(&"redeem") => {
                let Some(Ok(info)) = w.get(2).map(|h| info_from_hex(h)) else {
                    return "bad-info".into();
                };
                let inherited = match self.session() {
                    Ok(s) => outcome(&s.redeem(&info)),
                    Err(_) => "no-session".to_owned(),
                };
                let own = match Session::new() {
                    Ok(s) => format!("own-session {} {}", s.pid(), outcome(&s.redeem(&info))),
                    Err(e) => format!("own-session-failed {}", e.kind().name()),
                };
                format!("{inherited} {own} fds={}", count_fds())
            }
            _ => "unknown".into(),
        }
    }

    /// `raw-push PID SLOT`: speaks the wire protocol by hand, pushing the socket in SLOT
    /// before reading the session's verdict, as a hostile source would. Replies with the
    /// verdict byte.
    fn raw_push(&mut self, w: &[&str]) -> Reply {
        let pid: u32 = num(w, 1)?;
        let fd = self.slot(w, 2)?.as_fd();
        let sock = endpoint(pid).map_err(io_error)?;
        match send_record(&sock, &craft::early_push(), &[fd]) {
            Ok(()) => {}
            // The session refused and closed before our push went out.
            Err(rustix::io::Errno::PIPE | rustix::io::Errno::CONNRESET) => {
                return Ok("reset".into())
            }
            Err(e) => return Err(io_error(e.into())),
        }
        // A session that refuses closes the connection with our push unread, which the
        // kernel reports as a reset rather than the verdict.
        Ok(verdict(&sock).into())
    }

    /// `flood-connect PID N`: opens N connections to PID's session and holds those it
    /// admits (until `close-all`), never sending anything. Replies with the verdicts'
    /// counts: `accepted=A busy=B refused=R failed=F`; stops at the first connection the
    /// session does not answer.
    fn flood_connect(&mut self, w: &[&str]) -> Reply {
        let pid: u32 = num(w, 1)?;
        let n: usize = num(w, 2)?;
        let mut counts = [0usize; 4];
        for _ in 0..n {
            let Ok(sock) = endpoint(pid) else {
                counts[3] += 1;
                continue;
            };
            match verdict(&sock) {
                "accepted" => {
                    counts[0] += 1;
                    self.flood.push(sock);
                }
                "busy" => counts[1] += 1,
                "refused" | "reset" => counts[2] += 1,
                // No verdict within the receive timeout: the session has stalled, and
                // so would every further connection.
                _ => {
                    counts[3] += 1;
                    break;
                }
            }
        }
        let [a, b, r, f] = counts;
        Ok(format!("accepted={a} busy={b} refused={r} failed={f}"))
    }

    /// `flood-burst PID N`: opens N connections to PID's session as fast as it can,
    /// reading no verdict until all are open, so they pile up in the endpoint's backlog
    /// (`flood-connect` waits for each verdict: one waits there at a time). Then reads the
    /// verdicts and closes them all. Replies as `flood-connect`.
    fn flood_burst(&mut self, w: &[&str]) -> Reply {
        let pid: u32 = num(w, 1)?;
        let n: usize = num(w, 2)?;
        let mut counts = [0usize; 4];
        let mut open = Vec::with_capacity(n);
        for _ in 0..n {
            match endpoint(pid) {
                Ok(sock) => open.push(sock),
                Err(_) => counts[3] += 1,
            }
        }
        for sock in &open {
            let i = match verdict(sock) {
                "accepted" => 0,
                "busy" => 1,
                "refused" | "reset" => 2,
                _ => 3,
            };
            counts[i] += 1;
        }
        let [a, b, r, f] = counts;
        Ok(format!("accepted={a} busy={b} refused={r} failed={f}"))
    }

    /// `garbage PID KIND N SLOT`: N times, connects to PID's session and sends one
    /// malformed message of KIND (see `malformed`) carrying copies of the socket in SLOT,
    /// then closes. Replies `sent=S refused=R`: messages the kernel took, and connections
    /// the session refused before anything could be sent.
    fn garbage(&mut self, w: &[&str]) -> Reply {
        let pid: u32 = num(w, 1)?;
        let kind = arg(w, 2)?;
        let n: usize = num(w, 3)?;
        let fd = self.slot(w, 4)?.as_fd();
        let (mut sent, mut refused) = (0, 0);
        for i in 0..n {
            let sock = endpoint(pid).map_err(io_error)?;
            // `early`: the message goes out before the verdict is read.
            if kind != "early" && verdict(&sock) != "accepted" {
                refused += 1;
                continue;
            }
            let (record, fds) =
                craft::malformed(kind, i as u64).ok_or("io unknown garbage kind")?;
            if kind == "silent" {
                continue;
            }
            let copies = vec![fd; fds];
            match send_record(&sock, &record, &copies) {
                Ok(()) => sent += 1,
                // The kernel refuses more than 253 descriptors in one message.
                Err(rustix::io::Errno::INVAL) if fds > 253 => {}
                Err(rustix::io::Errno::PIPE | rustix::io::Errno::CONNRESET) => refused += 1,
                Err(e) => return Err(io_error(e.into())),
            }
        }
        Ok(format!("sent={sent} refused={refused}"))
    }

    /// The raw connection numbered by argument `i`.
    fn raw(&self, w: &[&str], i: usize) -> Result<&OwnedFd, String> {
        let n: usize = num(w, i)?;
        self.raw
            .get(n)
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("io no raw connection {n}"))
    }

    /// `raw-connect PID`: connects to PID's session by hand and keeps the connection if
    /// the session admits it, to push on later (`substitute`). Replies with its number;
    /// fails with `io verdict V` otherwise. Connecting early fixes the order in which the
    /// session serves this connection among others (it gets the lowest free slot).
    fn raw_connect(&mut self, w: &[&str]) -> Reply {
        let pid: u32 = num(w, 1)?;
        let sock = endpoint(pid).map_err(io_error)?;
        match verdict(&sock) {
            "accepted" => {
                self.raw.push(Some(sock));
                Ok((self.raw.len() - 1).to_string())
            }
            v => Err(format!("io verdict {v}")),
        }
    }

    /// `substitute CONN HEX SLOT`: the substitution attack (S20). Copies everything that
    /// can be read from the info HEX, seen in transit, into a push of its own that carries
    /// the socket in SLOT instead, and sends it on raw connection CONN.
    fn substitute(&mut self, w: &[&str]) -> Reply {
        let sock = self.raw(w, 1)?;
        let info = from_hex(arg(w, 2)?).ok_or("io bad hex")?;
        let entry = craft::lift(&info).ok_or("io not a protocol info")?;
        let fd = self.slot(w, 3)?.as_fd();
        send_record(sock, &craft::craft_push(&[entry]), &[fd]).map_err(|e| io_error(e.into()))?;
        Ok(String::new())
    }

    /// `push-seq PID ITEM...`: connects to PID's session by hand, reads its verdict, then
    /// sends one record per ITEM on that one connection: a slot number is a well-formed
    /// push of that socket, made by hand with its info (`craft::handoff`); `empty` is a
    /// zero-length record with no descriptor, `long` one longer than any push, `pause`
    /// a wait of 100 ms. Keeps the connection open (until
    /// `close-all`) and replies with the infos of the pushes, in order, in hex.
    fn push_seq(&mut self, w: &[&str]) -> Reply {
        let pid: u32 = num(w, 1)?;
        let sock = endpoint(pid).map_err(io_error)?;
        match verdict(&sock) {
            "accepted" => {}
            v => return Err(format!("io verdict {v}")),
        }
        let mut infos = Vec::new();
        for (i, item) in w.iter().enumerate().skip(2) {
            let sent = if *item == "empty" {
                send_record(&sock, &craft::empty_record(), &[])
            } else if *item == "long" {
                send_record(&sock, &craft::long_record(), &[])
            } else if *item == "pause" {
                // Lets the session read what came so far on its own.
                std::thread::sleep(Duration::from_millis(100));
                Ok(())
            } else {
                let s = self.slot(w, i)?;
                let (entry, info) = craft::handoff(kind_of(s)?, pid);
                infos.push(to_hex(&info));
                send_record(&sock, &craft::craft_push(&[entry]), &[s.as_fd()])
            };
            sent.map_err(|e| io_error(e.into()))?;
        }
        self.raw.push(Some(sock));
        Ok(infos.join(" "))
    }

    /// `local SLOT`: the local address of the socket in SLOT.
    fn local(&mut self, w: &[&str]) -> Reply {
        let addr = self.slot(w, 1)?.local_addr().map_err(io_error)?;
        addr.as_socket()
            .map(|a| a.to_string())
            .ok_or_else(|| "io not an inet socket".to_owned())
    }

    /// `dup-flood PID`: duplicates fresh UDP sockets (bound on loopback, closed here at
    /// once) for PID until its queue is full (WSAENOBUFS). Replies with the infos of those
    /// it took, in hex, in order.
    fn dup_flood(&mut self, w: &[&str]) -> Reply {
        let pid: u32 = num(w, 1)?;
        let mut infos = Vec::new();
        loop {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, None).map_err(io_error)?;
            let any: SocketAddr = "127.0.0.1:0".parse().map_err(|_| "io bad address")?;
            s.bind(&any.into()).map_err(io_error)?;
            match sockshare::duplicate(&s, pid) {
                Ok(info) => infos.push(to_hex(&info.to_bytes_w())),
                Err(e) if e.kind() == sockshare::ErrorKind::NoBufferSpace => break,
                Err(e) => return Err(wsa_error(e)),
            }
            if infos.len() >= 10_000 {
                return Err("io the queue never filled".into());
            }
        }
        Ok(infos.join(" "))
    }

    /// `redeem-timed HEX`: as `redeem`, and how long the library's redeem took in this
    /// process (no pipe in the measure). Replies `SLOT MICROS`.
    fn redeem_timed(&mut self, w: &[&str]) -> Reply {
        let info = info_from_hex(arg(w, 1)?)?;
        let session = self.session()?;
        let start = Instant::now();
        let shared = session.redeem(&info);
        let took = start.elapsed().as_micros();
        let slot = self.put(Socket::from(shared.map_err(wsa_error)?));
        Ok(format!("{slot} {took}"))
    }
}

/// The commands of a target that is not ready when a socket is shared with it (S18,
/// tests/late_targets.rs).
impl Peer {
    /// `session-redeem HEX`: starts a session and redeems the info HEX with it at once,
    /// with nothing in between: a program that calls `WSAStartup` only once it holds the
    /// info, right before `WSASocket`. Replies as `redeem`. Fails if a session runs
    /// already, so a test cannot take one path for the other.
    fn session_redeem(&mut self, w: &[&str]) -> Reply {
        if self.session.is_some() {
            return Err("io a session runs already".into());
        }
        let hex = arg(w, 1)?;
        // A malformed info starts no session.
        info_from_hex(hex)?;
        self.session = Some(Session::new().map_err(wsa_error)?);
        self.run(&["redeem", hex])
    }
}

/// `sleep MS`: waits MS milliseconds. Queued before another command without waiting for
/// the answer, it delays that command while the test goes on (a session that starts while
/// a source is sharing with the process).
fn sleep(w: &[&str]) -> Reply {
    let ms: u64 = num(w, 1)?;
    std::thread::sleep(Duration::from_millis(ms));
    Ok(String::new())
}

/// Family, type and protocol of a socket, as `duplicate` reads them.
fn kind_of(s: &Socket) -> Result<SocketKind, String> {
    let family = s.domain().map_err(io_error)?;
    let ty = s.r#type().map_err(io_error)?;
    let protocol = s.protocol().map_err(io_error)?.map_or(0, i32::from);
    Ok(SocketKind::new(family.into(), ty.into(), protocol))
}

// =====================================================================================
// HAND-MADE WIRE RECORDS. Every byte of the session's push protocol that this peer
// writes itself comes from this module (the library's `duplicate` writes the genuine
// ones): adapt it here, alone, when the push format changes.
// =====================================================================================

/// The records a hostile or hand-rolled source sends. Today's format (sys/linux/wire.rs):
/// a 16-byte header `magic "SSHR", version 2 u16, PUSH 0x10 u16, count u32, 0 u32`, then
/// per socket `secret u64, kind u32, 0 u32`, with one descriptor per entry; the info
/// names the socket by `token_of(secret)`, and `kind` packs family, type and protocol.
mod craft {
    use conformance::forge;
    use sockshare::{SocketKind, INFO_W_SIZE};

    /// What a push says about one of its sockets.
    #[derive(Debug, Clone, Copy)]
    pub struct Entry {
        /// The secret the info's token derives from.
        pub secret: u64,
        /// Family, type and protocol of the socket.
        pub kind: SocketKind,
    }

    /// The entry an attacker makes of an info it sees in transit (628 or 372 bytes),
    /// copying everything it can read there: the token (in place of the secret it cannot
    /// know) and the kind. `None` if too short.
    pub fn lift(info: &[u8]) -> Option<Entry> {
        use sockshare::info::offset;
        if info.len() < offset::SZ_PROTOCOL {
            return None;
        }
        let word = |at| forge::get_u32(info, at) as i32;
        Some(Entry {
            secret: forge::token(info),
            kind: SocketKind::new(
                word(offset::ADDRESS_FAMILY),
                word(offset::SOCKET_TYPE),
                word(offset::PROTOCOL),
            ),
        })
    }

    /// A push record naming `entries`, to be sent with as many descriptors, in order.
    pub fn craft_push(entries: &[Entry]) -> Vec<u8> {
        let mut r = header(0x10, entries.len() as u32);
        for e in entries {
            let k = e.kind;
            let packed = (k.family() as u32 & 0xff)
                | (k.socket_type() as u32 & 0xff) << 8
                | (k.protocol() as u32 & 0xffff) << 16;
            r.extend_from_slice(&e.secret.to_le_bytes());
            r.extend_from_slice(&packed.to_le_bytes());
            r.extend_from_slice(&[0u8; 4]);
        }
        r
    }

    /// A well-formed handoff made by hand, as `duplicate` would for a socket of `kind`
    /// and the target `pid`: the entry to push and the info the target will redeem.
    pub fn handoff(kind: SocketKind, pid: u32) -> (Entry, [u8; INFO_W_SIZE]) {
        let mut secret = [0u8; 8];
        rustix::rand::getrandom(&mut secret, rustix::rand::GetRandomFlags::empty())
            .expect("getrandom");
        let secret = u64::from_le_bytes(secret);
        let info = forge::info_w(kind, pid, forge::token_of(secret));
        (Entry { secret, kind }, info)
    }

    /// A zero-length record, sent with no descriptor.
    pub fn empty_record() -> Vec<u8> {
        Vec::new()
    }

    /// A record longer than any push (16 KiB of a valid push's header repeated), sent with
    /// no descriptor: a receiver that reads it in part must not take the rest for records.
    pub fn long_record() -> Vec<u8> {
        header(0x10, 1).repeat(1024)
    }

    /// The push `raw-push` sends before reading the verdict: one entry of junk.
    pub fn early_push() -> Vec<u8> {
        let junk = Entry {
            secret: 0x0707_0707_0707_0707,
            kind: udp4(),
        };
        craft_push(&[junk])
    }

    fn udp4() -> SocketKind {
        SocketKind::new(
            socket2::Domain::IPV4.into(),
            socket2::Type::DGRAM.into(),
            17,
        )
    }

    /// A malformed message of `kind` and how many descriptors go with it; `seed` varies its
    /// token. Each breaks the push format one way.
    pub fn malformed(kind: &str, seed: u64) -> Option<(Vec<u8>, usize)> {
        let entry = |secret: u64| Entry {
            secret,
            kind: udp4(),
        };
        let token = 0x5eed_0000_0000_0000 | seed;
        let push1 = || craft_push(&[entry(token)]);
        Some(match kind {
            "magic" => {
                let mut r = push1();
                r[0] = b'X';
                (r, 1)
            }
            "version" => {
                let mut r = push1();
                r[4] = 9;
                (r, 1)
            }
            // The count says two entries, one follows.
            "count" => {
                let mut r = push1();
                r[8] = 2;
                (r, 1)
            }
            // A count past what one message can carry.
            "huge-count" => {
                let mut r = push1();
                r[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
                (r, 1)
            }
            "fds-only" | "zero" => (Vec::new(), usize::from(kind == "fds-only")),
            "no-fds" => (push1(), 0),
            "fewer-fds" => (craft_push(&[0, 1, 2].map(|i| entry(token + i))), 2),
            "more-fds" => (push1(), 3),
            "too-many-fds" => (push1(), 254),
            "half" => (push1()[..24].to_vec(), 1),
            "junk" => ((0..4096u32).map(|i| (i * 31 + 7) as u8).collect(), 3),
            "dup-token" => (craft_push(&[entry(token), entry(token)]), 2),
            "early" | "silent" => (push1(), 1),
            _ => return None,
        })
    }

    /// The 16-byte header of a record: magic, version 2, `kind`, `word`.
    fn header(kind: u16, word: u32) -> Vec<u8> {
        let mut h = b"SSHR".to_vec();
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&kind.to_le_bytes());
        h.extend_from_slice(&word.to_le_bytes());
        h.extend_from_slice(&[0u8; 4]);
        h
    }
}

/// A raw connection to `pid`'s session endpoint.
fn endpoint(pid: u32) -> std::io::Result<OwnedFd> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    // Whichever of the session's names answers first.
    let mut connected = Err(rustix::io::Errno::CONNREFUSED);
    for name in endpoint_names(pid) {
        let addr = SocketAddrUnix::new_abstract_name(&name)?;
        connected = rustix::net::connect(&sock, &addr);
        if connected.is_ok() {
            break;
        }
    }
    connected?;
    rustix::net::sockopt::set_socket_timeout(
        &sock,
        rustix::net::sockopt::Timeout::Recv,
        Some(Duration::from_secs(10)),
    )?;
    Ok(sock)
}

/// Sends one record with `fds` attached.
fn send_record(
    sock: &OwnedFd,
    record: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Result<(), rustix::io::Errno> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(rustix::io::Errno::NOBUFS);
    }
    rustix::net::sendmsg(
        sock,
        &[std::io::IoSlice::new(record)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .map(drop)
}

/// The session's verdict on a connection, by name.
fn verdict(sock: &OwnedFd) -> &'static str {
    let mut verdict = [0u8; 16];
    match rustix::net::recv(sock, &mut verdict, rustix::net::RecvFlags::empty()) {
        Ok((16, _)) => match verdict[6] {
            1 => "accepted",
            2 => "refused",
            3 => "busy",
            _ => "garbled",
        },
        Ok(_) => "garbled",
        Err(rustix::io::Errno::CONNRESET) => "reset",
        Err(_) => "garbled",
    }
}

/// The hostile and forking commands of the identity attacks (tests/attacks_identity.rs).
impl Peer {
    /// `squat PID`: binds and listens on every session name of PID (see
    /// `conformance::endpoint_names`) before PID can, as another user may; `squat PID keep
    /// N`: on the first N names of keepers for PID instead. The listeners never accept.
    /// Replies with their slots, one per name.
    fn squat(&mut self, w: &[&str]) -> Reply {
        let pid: u32 = num(w, 1)?;
        let mut slots = Vec::new();
        let names = match w.get(2) {
            Some(&"keep") => {
                let mut names = conformance::keeper_names(pid);
                names.truncate(num(w, 3)?);
                names
            }
            _ => endpoint_names(pid),
        };
        for name in names {
            let (listener, addr) = seqpacket_for(&name)?;
            rustix::net::bind(&listener, &addr).map_err(|e| io_error(e.into()))?;
            rustix::net::listen(&listener, 128).map_err(|e| io_error(e.into()))?;
            slots.push(self.put(Socket::from(listener)).to_string());
        }
        Ok(slots.join(" "))
    }

    /// `send-fds CONN SLOT...`: sends the sockets in SLOTs over the connected Unix socket
    /// in CONN (one byte, `SCM_RIGHTS`): how a process hands its listener to a helper.
    fn send_fds(&mut self, w: &[&str]) -> Reply {
        let conn = self.slot(w, 1)?;
        let fds = (2..w.len())
            .map(|i| self.slot(w, i).map(AsFd::as_fd))
            .collect::<Result<Vec<_>, _>>()?;
        let conn = rustix::io::dup(conn).map_err(|e| io_error(e.into()))?;
        send_record(&conn, b"x", &fds).map_err(|e| io_error(e.into()))?;
        Ok(String::new())
    }

    /// `recv-fds CONN`: receives one message with descriptors on the Unix socket in CONN
    /// (waiting up to 10 s) and keeps them. Replies with their slots.
    fn recv_fds(&mut self, w: &[&str]) -> Reply {
        let conn = self.slot(w, 1)?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io_error)?;
        let conn = rustix::io::dup(conn).map_err(|e| io_error(e.into()))?;
        let (_, fds) = recv_with_fds(&conn, rustix::net::RecvFlags::empty())
            .map_err(|e| io_error(e.into()))?;
        let slots: Vec<String> = fds
            .into_iter()
            .map(|fd| self.put(Socket::from(fd)).to_string())
            .collect();
        Ok(slots.join(" "))
    }

    /// `fake-session SLOT...`: takes the listeners in SLOTs (squatted or handed over) and
    /// serves them like a session from a thread of its own: accepts every connection,
    /// answers "accepted" as a real session does, and keeps whatever is pushed. See
    /// `fake-report`; `close-all` stops it and closes everything it holds.
    fn fake_session(&mut self, w: &[&str]) -> Reply {
        if self.fake.is_some() {
            return Err("io a fake session runs already".into());
        }
        let mut listeners = Vec::new();
        for i in 1..w.len() {
            let n: usize = num(w, i)?;
            let s = self
                .slots
                .get_mut(n)
                .and_then(Option::take)
                .ok_or_else(|| format!("io no socket in slot {n}"))?;
            s.set_nonblocking(true).map_err(io_error)?;
            listeners.push(OwnedFd::from(s));
        }
        self.fake = Some(FakeSession::start(listeners).map_err(|e| io_error(e.into()))?);
        Ok(String::new())
    }

    /// `xfork HOW ACTION ...`: like `fork`, but the child is made without running the
    /// `pthread_atfork` handlers: HOW is `_Fork` (glibc's) or `clone` (the raw system
    /// call); or `fork`, with them, as the tests' control. ACTION in the child: `redeem HEX` (with the inherited session; reports the
    /// outcome and the child's descriptor count), `dup SLOT PID` (reports the info's hex or
    /// `err WSANAME`), or `hold SECS` (makes one call into sockshare, as any use of it in
    /// the child would, then sleeps holding what it still holds; the reply, once that call
    /// returned, is its pid, for `reap`). The child dies with this peer. A child that does not report
    /// within 10 s is killed, and the reply is `hung`.
    fn xfork(&mut self, w: &[&str]) -> Reply {
        let how = arg(w, 1)?;
        let action = arg(w, 2)?;
        let (read, write) = rustix::pipe::pipe().map_err(|e| io_error(e.into()))?;
        let parent = rustix::process::getpid();
        let child = fork_by(how)?;
        if child == 0 {
            // A child of a killed peer must not live on holding the peer's descriptors.
            // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number touches no memory.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            if rustix::process::getppid() != Some(parent) {
                // SAFETY: leaving the child at once; the parent ended before the prctl.
                unsafe { libc::_exit(1) }
            }
            drop(read);
            if action == "hold" {
                // The first call into sockshare is where a child made without the fork
                // handlers can notice it is new and let go of what it inherited; nothing
                // can do that before. Tell the parent once it is done.
                sockshare::current_pid();
                let _ = rustix::io::write(&write, b"held");
            }
            let report = self.in_unhandled_child(action, w);
            let _ = rustix::io::write(&write, report.as_bytes());
            // SAFETY: leaving the child without running the parent's exit handlers or
            // destructors, which belong to the parent's state.
            unsafe { libc::_exit(0) }
        }
        drop(write);
        if action == "hold" {
            let mut held = [0u8; 4];
            return match rustix::io::read(&read, &mut held) {
                Ok(4) => Ok(child.to_string()),
                _ => Err("io the held child did not start".into()),
            };
        }
        let report = read_report(read, Duration::from_secs(10));
        let report = match report {
            Some(r) => r,
            None => {
                // SAFETY: killing our own child, which has not reported.
                unsafe { libc::kill(child, libc::SIGKILL) };
                "hung".to_owned()
            }
        };
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(child, &mut status, 0) };
        Ok(report)
    }

    /// What an `xfork` child does and reports.
    fn in_unhandled_child(&mut self, action: &str, w: &[&str]) -> String {
        match action {
            "hold" => {
                std::thread::sleep(Duration::from_secs(num(w, 3).unwrap_or(5)));
                String::new()
            }
            "redeem" => {
                let info = match arg(w, 3).and_then(info_from_hex) {
                    Ok(info) => info,
                    Err(e) => return format!("bad-info {e}"),
                };
                let inherited = match self.session() {
                    Ok(s) => outcome(&s.redeem(&info)),
                    Err(_) => "no-session".to_owned(),
                };
                format!("{inherited} fds={}", count_fds())
            }
            "dup" => {
                let dup = || -> Reply {
                    let pid: u32 = num(w, 4)?;
                    let info = sockshare::duplicate(self.slot(w, 3)?, pid).map_err(wsa_error)?;
                    Ok(to_hex(&info.to_bytes_w()))
                };
                dup().unwrap_or_else(|e| format!("err {e}"))
            }
            other => format!("unknown {other}"),
        }
    }
}

/// Forks the calling process by `how`: `_Fork` and `clone` skip the `pthread_atfork`
/// handlers, `fork` (the control) runs them. Returns the child's pid in the parent and 0
/// in the child.
fn fork_by(how: &str) -> Result<libc::pid_t, String> {
    extern "C" {
        /// glibc >= 2.34: fork without the atfork handlers (POSIX.1-2024 `_Fork`).
        fn _Fork() -> libc::pid_t;
    }
    let pid = match how {
        // SAFETY: the child runs only this peer's own code and sockshare's calls (the
        // code under test); the test arranges that no other thread holds a lock then.
        "_Fork" => unsafe { _Fork() },
        "clone" => {
            // SAFETY: as above. Flags SIGCHLD with no new stack is a plain fork done by
            // the kernel alone: the child gets a copy of this thread, its stack included.
            let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
            pid as libc::pid_t
        }
        // SAFETY: as above; glibc's fork runs sockshare's handlers around it.
        "fork" => unsafe { libc::fork() },
        other => return Err(format!("io unknown fork {other}")),
    };
    if pid == -1 {
        return Err(io_error(std::io::Error::last_os_error()));
    }
    Ok(pid)
}

/// Reads a child's report from `read` until the child closes it, for at most `limit`;
/// `None` if it does not close it in time.
fn read_report(read: OwnedFd, limit: Duration) -> Option<String> {
    let deadline = Instant::now() + limit;
    let mut bytes = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = rustix::event::Timespec::try_from(left).ok()?;
        let mut fds = [rustix::event::PollFd::new(
            &read,
            rustix::event::PollFlags::IN,
        )];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return None,
        }
        let mut buf = [0u8; 4096];
        match rustix::io::read(&read, &mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&bytes).into_owned()),
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return None,
        }
    }
}

/// `reap PID`: kills this peer's child PID (an `xfork hold` child) and waits for it.
fn reap(w: &[&str]) -> Reply {
    let pid: libc::pid_t = num(w, 1)?;
    // SAFETY: signalling and reaping a child of this process, which only it can reap, so
    // the pid cannot have been reused before the waitpid.
    let reaped = unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0)
    };
    if reaped != pid {
        return Err(io_error(std::io::Error::last_os_error()));
    }
    Ok(String::new())
}

/// A listener posing as a session: a thread accepts and answers, the shared state keeps
/// the connections and whatever descriptors arrive on them.
struct FakeSession {
    shared: Arc<Mutex<Fake>>,
    /// Written to stop the thread.
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Fake {
    listeners: Vec<OwnedFd>,
    conns: Vec<OwnedFd>,
    /// Descriptors received from sources: each is a socket stolen from them.
    received: Vec<OwnedFd>,
}

impl FakeSession {
    fn start(listeners: Vec<OwnedFd>) -> Result<FakeSession, rustix::io::Errno> {
        use rustix::event::{eventfd, EventfdFlags};
        let stop = eventfd(0, EventfdFlags::CLOEXEC)?;
        let woken = rustix::io::dup(&stop)?;
        let shared = Arc::new(Mutex::new(Fake {
            listeners,
            ..Fake::default()
        }));
        let serving = shared.clone();
        let thread = std::thread::spawn(move || fake_serve(&serving, &woken));
        Ok(FakeSession {
            shared,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for FakeSession {
    fn drop(&mut self) {
        let _ = rustix::io::write(&self.stop, &1u64.to_ne_bytes());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The fake session's thread: waits on the listeners and the stop eventfd, and accepts.
fn fake_serve(shared: &Mutex<Fake>, stop: &OwnedFd) {
    use rustix::event::{poll, PollFd, PollFlags};
    let listeners: Vec<OwnedFd> = {
        let fake = shared.lock().unwrap_or_else(|e| e.into_inner());
        let copies = fake.listeners.iter().map(rustix::io::dup).collect();
        match copies {
            Ok(copies) => copies,
            Err(_) => return,
        }
    };
    loop {
        let mut fds: Vec<PollFd<'_>> = std::iter::once(stop)
            .chain(&listeners)
            .map(|fd| PollFd::new(fd, PollFlags::IN))
            .collect();
        match poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => return,
        }
        if !fds[0].revents().is_empty() {
            return;
        }
        fake_accept(&mut shared.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// Accepts every waiting connection and answers it as an admitting session would. The
/// connection is kept before the answer goes out, so once a source's `duplicate` returns,
/// `fake-report` sees its connection.
fn fake_accept(fake: &mut Fake) {
    use rustix::net::{SendFlags, SocketFlags};
    let Fake {
        listeners, conns, ..
    } = fake;
    for listener in listeners.iter() {
        while let Ok(conn) =
            rustix::net::accept_with(listener, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK)
        {
            let _ = rustix::net::send(&conn, &accepted_reply(), SendFlags::NOSIGNAL);
            conns.push(conn);
        }
    }
}

/// `fake-report`: accepts what waits, receives everything queued on the fake session's
/// connections, and replies `conns=C fds=F`: connections it answered, and descriptors
/// sources delivered to it (all of them so far).
fn fake_report(fake: Option<&FakeSession>) -> Reply {
    let fake = fake.ok_or("io no fake session")?;
    let mut fake = fake.shared.lock().unwrap_or_else(|e| e.into_inner());
    fake_accept(&mut fake);
    let Fake {
        conns, received, ..
    } = &mut *fake;
    for conn in conns.iter() {
        while let Ok((n, fds)) = recv_with_fds(conn, rustix::net::RecvFlags::DONTWAIT) {
            if n == 0 && fds.is_empty() {
                break;
            }
            received.extend(fds);
        }
    }
    Ok(format!("conns={} fds={}", conns.len(), received.len()))
}

/// Receives one message and the descriptors that came with it (close-on-exec).
fn recv_with_fds(
    sock: &OwnedFd,
    flags: rustix::net::RecvFlags,
) -> Result<(usize, Vec<OwnedFd>), rustix::io::Errno> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut bytes = [0u8; 4096];
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(253))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        sock,
        &mut [std::io::IoSliceMut::new(&mut bytes)],
        &mut control,
        flags | RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(got) = m {
            fds.extend(got);
        }
    }
    Ok((msg.bytes, fds))
}

/// A new `SOCK_SEQPACKET` Unix socket and the abstract address `name`, to bind or
/// connect to (the names of sessions and keepers).
fn seqpacket_for(
    name: &[u8],
) -> Result<(std::os::fd::OwnedFd, rustix::net::SocketAddrUnix), String> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| io_error(e.into()))?;
    let addr = SocketAddrUnix::new_abstract_name(name).map_err(|e| io_error(e.into()))?;
    Ok((sock, addr))
}

/// `keeper-probe PID`: connects to every keeper name of PID, as a process that is not PID,
/// and reads what each sends within 300 ms. Replies `keepers=K bytes=B fds=F`: how many
/// keepers accepted the connection and what they sent.
fn keeper_probe(w: &[&str]) -> Reply {
    use rustix::net::RecvFlags;
    let pid: u32 = num(w, 1)?;
    let (mut keepers, mut bytes, mut fds) = (0, 0, 0);
    for name in conformance::keeper_names(pid) {
        let (sock, addr) = seqpacket_for(&name)?;
        if rustix::net::connect(&sock, &addr).is_err() {
            continue;
        }
        keepers += 1;
        let deadline = Instant::now() + Duration::from_millis(300);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut poll = [rustix::event::PollFd::new(
                &sock,
                rustix::event::PollFlags::IN,
            )];
            let timeout = rustix::event::Timespec::try_from(left).map_err(|_| "io time")?;
            if left.is_zero() || rustix::event::poll(&mut poll, Some(&timeout)).unwrap_or(0) == 0 {
                break;
            }
            match recv_with_fds(&sock, RecvFlags::DONTWAIT) {
                Ok((0, got)) if got.is_empty() => break,
                Ok((n, got)) => {
                    bytes += n;
                    fds += got.len();
                }
                Err(_) => break,
            }
        }
    }
    Ok(format!("keepers={keepers} bytes={bytes} fds={fds}"))
}
