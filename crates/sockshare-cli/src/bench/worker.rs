//! The child processes of `sockshare bench`: one source or one target of a measured run.
//!
//! A child gets its ends of every link by inheritance (descriptor numbers on its command
//! line) and talks to the orchestrator by lines: it says `ready` once set up, waits for
//! `warm`, then (targets) says `warmed` when every warm-up handoff arrived or (sources)
//! waits for `go` before the measured handoffs, so no warm-up work overlaps the figure.
//! The measuring side ends with `result FIRST_NS LAST_NS COUNT SAMPLE...` (CLOCK_MONOTONIC,
//! comparable across processes) and the redeem target with `mem BYTES_PER_PENDING` first.

use std::fs::File;
use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::UdpSocket;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use sockshare::{ProtocolInfo, Session, INFO_W_SIZE};

use super::{Mode, Role, Variant, WorkerSpec};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Every variant carries this many payload bytes beside the descriptor: the size of a
/// `WSAPROTOCOL_INFOW`, which is what sockshare sends.
pub const PAYLOAD: usize = INFO_W_SIZE;
/// Stream mode reports one sample per this many handoffs (per-handoff time of the chunk).
pub const CHUNK: u64 = 1024;
/// Redeem mode pushes and redeems infos in waves of this many.
pub const WAVE: usize = 1000;
/// Sockets a redeem target holds beside its standing pending ones, at most: a wave
/// pending and a wave redeemed.
const IN_FLIGHT: usize = 2 * WAVE;
/// Descriptors a redeem target needs beside its standing pending sockets: those in
/// flight, and room for everything else it opens.
pub const HEADROOM: u64 = IN_FLIGHT as u64 + 1024;
/// The kernel carries at most this many descriptors in one message.
pub const BATCH: usize = 253;

/// Nanoseconds on CLOCK_MONOTONIC, the same clock in every process of the machine.
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// One link as this process sees it: the descriptors it inherited and the peer's details.
#[derive(Debug, Default, Clone)]
pub struct LinkSpec {
    /// The data descriptor: socket or pipe end (absent for `naive` sources).
    pub data: Option<RawFd>,
    /// The acknowledgement pipe end (target writes, source reads).
    pub ack: Option<RawFd>,
    /// Abstract socket name of the `naive` listener.
    pub name: Option<String>,
    /// The target's pid (sources of sockshare variants).
    pub pid: Option<u32>,
}

impl LinkSpec {
    pub fn encode(&self) -> String {
        let mut parts = Vec::new();
        if let Some(d) = self.data {
            parts.push(format!("d={d}"));
        }
        if let Some(a) = self.ack {
            parts.push(format!("a={a}"));
        }
        if let Some(n) = &self.name {
            parts.push(format!("n={n}"));
        }
        if let Some(p) = self.pid {
            parts.push(format!("p={p}"));
        }
        parts.join(",")
    }

    pub fn decode(s: &str) -> Result<LinkSpec> {
        let mut link = LinkSpec::default();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or("malformed link")?;
            match k {
                "d" => link.data = Some(v.parse()?),
                "a" => link.ack = Some(v.parse()?),
                "n" => link.name = Some(v.to_owned()),
                "p" => link.pid = Some(v.parse()?),
                _ => return Err(format!("unknown link key {k}").into()),
            }
        }
        Ok(link)
    }
}

/// Takes ownership of an inherited descriptor named on the command line.
fn inherited(fd: Option<RawFd>, what: &str) -> Result<OwnedFd> {
    let fd = fd.ok_or_else(|| format!("the link has no {what} descriptor"))?;
    // SAFETY: the orchestrator opened this descriptor for this process alone, cleared its
    // close-on-exec flag for this spawn and named it on our command line; nothing else in
    // this process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Writes one control line (either direction).
pub fn say_line(to: &mut impl Write, line: &str) -> Result<()> {
    writeln!(to, "{line}")?;
    Ok(to.flush()?)
}

/// Reads the next control line, which must start with `word`; returns its other words.
/// `who` names the other side in errors.
pub fn expect_line(from: &mut impl BufRead, word: &str, who: &str) -> Result<Vec<String>> {
    let mut line = String::new();
    if from.read_line(&mut line)? == 0 {
        return Err(format!("{who} hung up before `{word}`").into());
    }
    let mut parts = line.split_whitespace().map(str::to_owned);
    match parts.next() {
        Some(w) if w == word => Ok(parts.collect()),
        other => Err(format!("expected `{word}` from {who}, got {other:?}").into()),
    }
}

/// Line-based control channel to the orchestrator (stdin/stdout).
struct Control {
    input: BufReader<std::io::Stdin>,
}

impl Control {
    fn new() -> Control {
        Control {
            input: BufReader::new(std::io::stdin()),
        }
    }

    fn say(&self, line: &str) -> Result<()> {
        say_line(&mut std::io::stdout().lock(), line)
    }

    fn expect(&mut self, word: &str) -> Result<Vec<String>> {
        expect_line(&mut self.input, word, "the orchestrator")
    }
}

pub fn run(spec: &WorkerSpec) -> Result<()> {
    raise_nofile(spec.nofile)?;
    match spec.role {
        Role::Source => source(spec),
        Role::Target => target(spec),
    }
}

/// Raises RLIMIT_NOFILE (soft and hard; root may exceed the inherited hard limit).
fn raise_nofile(want: u64) -> Result<()> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let cur = getrlimit(Resource::Nofile);
    if cur.current.is_some_and(|c| c >= want) {
        return Ok(());
    }
    let hard = cur.maximum.map_or(want, |m| m.max(want));
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(want),
            maximum: Some(hard),
        },
    )
    .map_err(|e| format!("raising RLIMIT_NOFILE to {want}: {e}"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Sources

/// The sending half of one link.
enum Sender {
    Raw {
        sock: OwnedFd,
        payload: [u8; PAYLOAD],
    },
    Pidfd {
        pipe: File,
        payload: [u8; PAYLOAD],
    },
    Naive {
        addr: SocketAddr,
        payload: [u8; PAYLOAD],
    },
    Pipe {
        pipe: File,
        pid: u32,
    },
    Channel {
        channel: sockshare::Channel,
    },
    Batch {
        pipe: File,
        pid: u32,
        bytes: Vec<u8>,
    },
    CApi {
        pipe: File,
        pid: u32,
    },
}

impl Sender {
    fn open(variant: Variant, link: &LinkSpec) -> Result<Sender> {
        let pid = || link.pid.ok_or("the link names no target pid");
        Ok(match variant {
            Variant::Raw => Sender::Raw {
                sock: inherited(link.data, "data")?,
                payload: [7; PAYLOAD],
            },
            Variant::Pidfd => Sender::Pidfd {
                pipe: File::from(inherited(link.data, "data")?),
                payload: [7; PAYLOAD],
            },
            Variant::Naive => Sender::Naive {
                addr: SocketAddr::from_abstract_name(
                    link.name.as_deref().ok_or("the link names no listener")?,
                )?,
                payload: [7; PAYLOAD],
            },
            Variant::Pipe => Sender::Pipe {
                pipe: File::from(inherited(link.data, "data")?),
                pid: pid()?,
            },
            Variant::Channel => Sender::Channel {
                channel: sockshare::Channel::from(inherited(link.data, "data")?),
            },
            Variant::Batch => Sender::Batch {
                pipe: File::from(inherited(link.data, "data")?),
                pid: pid()?,
                bytes: Vec::with_capacity(BATCH * PAYLOAD),
            },
            Variant::CApi => {
                c_api::startup()?;
                Sender::CApi {
                    pipe: File::from(inherited(link.data, "data")?),
                    pid: pid()?,
                }
            }
        })
    }

    /// How many handoffs one `handoff` call makes.
    fn per_call(&self) -> u64 {
        match self {
            Sender::Batch { .. } => BATCH as u64,
            _ => 1,
        }
    }

    /// Hands `sock` to the target (the target closes its copy).
    fn handoff(&mut self, sock: BorrowedFd<'_>) -> Result<()> {
        match self {
            Sender::Raw {
                sock: link,
                payload,
            } => send_with_fd(link.as_fd(), payload, sock),
            Sender::Pidfd { pipe, payload } => {
                // The target pulls this descriptor number, which stays open all run.
                payload[..4]
                    .copy_from_slice(&(rustix::fd::AsRawFd::as_raw_fd(&sock)).to_le_bytes());
                pipe.write_all(payload)?;
                Ok(())
            }
            Sender::Naive { addr, payload } => {
                let conn = UnixStream::connect_addr(addr)?;
                send_with_fd(conn.as_fd(), payload, sock)
            }
            Sender::Pipe { pipe, pid } => {
                let info = while_full(|| sockshare::duplicate(sock, *pid))?;
                pipe.write_all(&info.to_bytes_w())?;
                Ok(())
            }
            Sender::Channel { channel } => Ok(while_full(|| channel.send(sock))?),
            Sender::CApi { pipe, pid } => {
                let info = loop {
                    // WSAENOBUFS: as for `while_full`.
                    if let Some(info) = c_api::duplicate(sock, *pid)? {
                        break info;
                    }
                    std::thread::yield_now();
                };
                pipe.write_all(&info)?;
                Ok(())
            }
            Sender::Batch { pipe, pid, bytes } => {
                let socks = [sock; BATCH];
                let infos = while_full(|| sockshare::duplicate_many(&socks, *pid))?;
                bytes.clear();
                for info in &infos {
                    bytes.extend_from_slice(&info.to_bytes_w());
                }
                pipe.write_all(bytes)?;
                Ok(())
            }
        }
    }
}

/// Retries a duplicate (or a channel's send) while the target's queue is full
/// (`WSAENOBUFS`): the target is behind, and a source that streams sockets waits for it,
/// as a program would.
fn while_full<T>(mut duplicate: impl FnMut() -> sockshare::Result<T>) -> sockshare::Result<T> {
    loop {
        match duplicate() {
            Err(e) if e.kind() == sockshare::ErrorKind::NoBufferSpace => std::thread::yield_now(),
            result => return result,
        }
    }
}

/// One `sendmsg` of `payload` with `fd` attached; the rest of a short send follows plainly.
fn send_with_fd(link: BorrowedFd<'_>, payload: &[u8], fd: BorrowedFd<'_>) -> Result<()> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    control.push(SendAncillaryMessage::ScmRights(&fds));
    let sent = loop {
        match rustix::net::sendmsg(
            link,
            &[IoSlice::new(payload)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(n) => break n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut rest = &payload[sent..];
    while !rest.is_empty() {
        let n = rustix::net::send(link, rest, SendFlags::NOSIGNAL)?;
        rest = &rest[n..];
    }
    Ok(())
}

fn source(spec: &WorkerSpec) -> Result<()> {
    let mut control = Control::new();
    let mut senders = spec
        .links
        .iter()
        .map(|l| Sender::open(spec.variant, l))
        .collect::<Result<Vec<_>>>()?;
    let mut acks = spec
        .links
        .iter()
        .map(|l| inherited(l.ack, "ack").map(File::from))
        .collect::<Result<Vec<_>>>()?;
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    control.say("ready")?;
    control.expect("warm")?;
    match spec.mode {
        Mode::Stream => {
            // Round-robin over the links (one link unless one source feeds many targets).
            let per_call = senders[0].per_call();
            let run = |senders: &mut Vec<Sender>, count: u64| -> Result<()> {
                for _ in 0..count / per_call {
                    for s in senders.iter_mut() {
                        s.handoff(socket.as_fd())?;
                    }
                }
                Ok(())
            };
            run(&mut senders, spec.warmup)?;
            control.expect("go")?;
            run(&mut senders, spec.count)?;
            // Wait until every target is done with our handoffs before dropping the links:
            // pidfd targets pull from this process.
            for ack in &mut acks {
                let mut byte = [0u8; 1];
                ack.read_exact(&mut byte)?;
            }
            control.say("done")?;
        }
        Mode::RoundTrip => {
            let (sender, ack) = (&mut senders[0], &mut acks[0]);
            let mut byte = [0u8; 1];
            for _ in 0..spec.warmup {
                sender.handoff(socket.as_fd())?;
                ack.read_exact(&mut byte)?;
            }
            control.expect("go")?;
            let mut samples = Vec::with_capacity(spec.count as usize);
            let first = now_ns();
            for _ in 0..spec.count {
                let t = now_ns();
                sender.handoff(socket.as_fd())?;
                ack.read_exact(&mut byte)?;
                samples.push(now_ns() - t);
            }
            let last = now_ns();
            report(&control, first, last, spec.count, &samples)?;
        }
        Mode::Redeem => {
            control.expect("go")?;
            let Sender::Pipe { pipe, pid } = &mut senders[0] else {
                return Err("redeem mode runs the pipe variant only".into());
            };
            // The infos of the standing pending sockets are never sent: nobody redeems them.
            for _ in 0..spec.pending {
                sockshare::duplicate(&socket, *pid)?;
            }
            let mut bytes = Vec::with_capacity(WAVE * PAYLOAD);
            let waves = (spec.warmup + spec.count) / WAVE as u64;
            let mut byte = [0u8; 1];
            for _ in 0..waves {
                bytes.clear();
                for _ in 0..WAVE {
                    bytes.extend_from_slice(&sockshare::duplicate(&socket, *pid)?.to_bytes_w());
                }
                pipe.write_all(&bytes)?;
                acks[0].read_exact(&mut byte)?;
            }
            control.say("done")?;
        }
    }
    Ok(())
}

fn report(control: &Control, first: u64, last: u64, count: u64, samples: &[u64]) -> Result<()> {
    let mut line = format!("result {first} {last} {count}");
    for s in samples {
        line.push(' ');
        line.push_str(&s.to_string());
    }
    control.say(&line)
}

// ---------------------------------------------------------------------------------------
// Targets

/// The receiving half of one link.
enum Receiver {
    Raw {
        sock: OwnedFd,
    },
    Pidfd {
        pipe: BufReader<File>,
        pidfd: Option<OwnedFd>,
    },
    Naive {
        listener: UnixListener,
    },
    Pipe {
        pipe: BufReader<File>,
        session: Session,
    },
    Channel {
        channel: sockshare::Channel,
    },
    CApi {
        pipe: BufReader<File>,
    },
}

impl Receiver {
    fn open(variant: Variant, link: &LinkSpec) -> Result<Receiver> {
        let data = inherited(link.data, "data")?;
        Ok(match variant {
            Variant::Raw => Receiver::Raw { sock: data },
            Variant::Pidfd => Receiver::Pidfd {
                pipe: BufReader::with_capacity(1 << 16, File::from(data)),
                pidfd: None,
            },
            Variant::Naive => Receiver::Naive {
                listener: UnixListener::from(data),
            },
            Variant::Pipe | Variant::Batch => Receiver::Pipe {
                pipe: BufReader::with_capacity(1 << 16, File::from(data)),
                // Joins the session `target` started (with its capacity) before any link.
                session: Session::new()?,
            },
            Variant::Channel => Receiver::Channel {
                channel: sockshare::Channel::from(data),
            },
            Variant::CApi => Receiver::CApi {
                pipe: BufReader::with_capacity(1 << 16, File::from(data)),
            },
        })
    }

    /// Takes one handoff and closes the descriptor it gave this process.
    fn receive(&mut self) -> Result<()> {
        let fd = match self {
            Receiver::CApi { pipe } => return c_api::create_and_close(pipe),
            other => other.take()?,
        };
        drop(fd);
        Ok(())
    }

    fn take(&mut self) -> Result<OwnedFd> {
        let mut payload = [0u8; PAYLOAD];
        match self {
            Receiver::Raw { sock } => recv_with_fd(sock.as_fd(), &mut payload),
            Receiver::Pidfd { pipe, pidfd } => {
                pipe.read_exact(&mut payload)?;
                let pidfd = pidfd.as_ref().ok_or("no pidfd")?;
                let num = i32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
                Ok(rustix::process::pidfd_getfd(
                    pidfd,
                    num,
                    rustix::process::PidfdGetfdFlags::empty(),
                )?)
            }
            Receiver::Naive { listener } => {
                let (conn, _) = listener.accept()?;
                recv_with_fd(conn.as_fd(), &mut payload)
            }
            Receiver::Pipe { pipe, session } => {
                pipe.read_exact(&mut payload)?;
                let info = ProtocolInfo::from_bytes(&payload)?;
                Ok(session.redeem(&info)?.into_owned_fd())
            }
            Receiver::Channel { channel } => Ok(channel.recv()?.1.into_owned_fd()),
            Receiver::CApi { .. } => Err("the C interface closes with closesocket".into()),
        }
    }
}

/// The C interface's path, called as a C program calls libws2_32.
mod c_api {
    use std::io::Read;
    use std::os::fd::{AsRawFd, BorrowedFd};

    use ws2_32::{
        closesocket, WSADuplicateSocketA, WSAGetLastError, WSASocketA, WSAStartup,
        FROM_PROTOCOL_INFO, INVALID_SOCKET, SOCKET, WSADATA, WSAENOBUFS, WSAPROTOCOL_INFOA,
        WSA_FLAG_NO_HANDLE_INHERIT, WSA_FLAG_OVERLAPPED,
    };

    use super::Result;

    const INFO_A: usize = std::mem::size_of::<WSAPROTOCOL_INFOA>();

    fn failed(call: &str) -> Box<dyn std::error::Error> {
        format!("{call} failed with Winsock error {}", WSAGetLastError()).into()
    }

    /// `WSAStartup(2.2)`, once per process (the process exits without `WSACleanup`).
    pub(super) fn startup() -> Result<()> {
        // SAFETY: WSADATA is plain data, all-zero valid; WSAStartup writes into it.
        let mut data: WSADATA = unsafe { std::mem::zeroed() };
        // SAFETY: `data` is a valid, writable WSADATA for the call.
        match unsafe { WSAStartup(0x0202, &mut data) } {
            0 => Ok(()),
            code => Err(format!("WSAStartup failed with {code}").into()),
        }
    }

    /// `WSADuplicateSocketA`: the 372 bytes of the info made for `pid`, or `None` while
    /// the target's queue is full (`WSAENOBUFS`).
    pub(super) fn duplicate(sock: BorrowedFd<'_>, pid: u32) -> Result<Option<[u8; INFO_A]>> {
        // SAFETY: WSAPROTOCOL_INFOA is plain data, all-zero valid.
        let mut info: WSAPROTOCOL_INFOA = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is writable for a WSAPROTOCOL_INFOA; `sock` is open for the call.
        if unsafe { WSADuplicateSocketA(sock.as_raw_fd() as SOCKET, pid, &mut info) } != 0 {
            if WSAGetLastError() == WSAENOBUFS {
                return Ok(None);
            }
            return Err(failed("WSADuplicateSocketA"));
        }
        // SAFETY: WSAPROTOCOL_INFOA is INFO_A bytes of plain data without padding.
        Ok(Some(unsafe {
            std::mem::transmute::<WSAPROTOCOL_INFOA, [u8; INFO_A]>(info)
        }))
    }

    /// Reads one info, `WSASocketA(FROM_PROTOCOL_INFO, ...)`, then `closesocket`.
    pub(super) fn create_and_close(pipe: &mut impl Read) -> Result<()> {
        let mut bytes = [0u8; INFO_A];
        pipe.read_exact(&mut bytes)?;
        // SAFETY: any INFO_A bytes are a valid WSAPROTOCOL_INFOA (plain data, no padding).
        let info = unsafe { std::mem::transmute::<[u8; INFO_A], WSAPROTOCOL_INFOA>(bytes) };
        let flags = WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT;
        let (f, p) = (FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO);
        // SAFETY: `info` is a readable, initialised WSAPROTOCOL_INFOA for the call.
        let s = unsafe { WSASocketA(f, f, p, &info, 0, flags) };
        if s == INVALID_SOCKET {
            return Err(failed("WSASocketA"));
        }
        if closesocket(s) != 0 {
            return Err(failed("closesocket"));
        }
        Ok(())
    }
}

/// Receives `payload.len()` bytes and the one descriptor sent with them.
fn recv_with_fd(sock: BorrowedFd<'_>, payload: &mut [u8]) -> Result<OwnedFd> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(payload)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(m) => break m.bytes,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if got == 0 {
        return Err("the source hung up".into());
    }
    let mut fd = None;
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = msg {
            fd = fds.next();
        }
    }
    let mut at = got;
    while at < payload.len() {
        let (n, _) = rustix::net::recv(sock, &mut payload[at..], RecvFlags::empty())?;
        if n == 0 {
            return Err("the source hung up mid-handoff".into());
        }
        at += n;
    }
    Ok(fd.ok_or("a handoff came without its descriptor")?)
}

/// What one target thread measured on its link.
#[derive(Default)]
struct Measured {
    first: u64,
    last: u64,
    samples: Vec<u64>,
}

fn target(spec: &WorkerSpec) -> Result<()> {
    let mut control = Control::new();
    let session = match spec.variant {
        Variant::Pipe | Variant::Batch => Some(if spec.mode == Mode::Redeem {
            Session::builder()
                .capacity(spec.pending as usize + IN_FLIGHT)
                .start()?
        } else {
            Session::new()?
        }),
        // The C program's WSAStartup starts the session its sources push to.
        Variant::CApi => {
            c_api::startup()?;
            None
        }
        _ => None,
    };
    let mut receivers = spec
        .links
        .iter()
        .map(|l| Receiver::open(spec.variant, l))
        .collect::<Result<Vec<_>>>()?;
    let acks = spec
        .links
        .iter()
        .map(|l| inherited(l.ack, "ack").map(File::from))
        .collect::<Result<Vec<_>>>()?;
    control.say("ready")?;
    let sources = control.expect("warm")?;
    for (r, pid) in receivers.iter_mut().zip(&sources) {
        if let Receiver::Pidfd { pidfd, .. } = r {
            let pid = rustix::process::Pid::from_raw(pid.parse()?).ok_or("pid 0")?;
            *pidfd = Some(rustix::process::pidfd_open(
                pid,
                rustix::process::PidfdFlags::empty(),
            )?);
        }
    }
    match spec.mode {
        Mode::Stream => stream_target(spec, &control, receivers, acks),
        Mode::RoundTrip => {
            let (r, mut ack) = (&mut receivers[0], &acks[0]);
            for _ in 0..spec.warmup {
                r.receive()?;
                ack.write_all(&[1])?;
            }
            control.say("warmed")?;
            for _ in 0..spec.count {
                r.receive()?;
                ack.write_all(&[1])?;
            }
            Ok(())
        }
        Mode::Redeem => {
            // `redeem_target` says "warmed" once it has its memory baseline: the source
            // starts pushing on the answer to it.
            redeem_target(
                spec,
                &control,
                session.as_ref().ok_or("no session")?,
                receivers,
                acks,
            )
        }
    }
}

/// Each link gets a thread; the figure spans from the first measured handoff on any link
/// to the last one on all of them.
fn stream_target(
    spec: &WorkerSpec,
    control: &Control,
    receivers: Vec<Receiver>,
    acks: Vec<File>,
) -> Result<()> {
    let warmed = std::sync::Barrier::new(receivers.len() + 1);
    let results = std::thread::scope(|scope| {
        let threads: Vec<_> = receivers
            .into_iter()
            .zip(acks)
            .map(|(mut r, mut ack)| {
                let warmed = &warmed;
                scope.spawn(move || -> std::result::Result<Measured, String> {
                    let mut run = || -> Result<Measured> {
                        for _ in 0..spec.warmup {
                            r.receive()?;
                        }
                        warmed.wait();
                        let mut m = Measured {
                            samples: Vec::with_capacity((spec.count / CHUNK + 1) as usize),
                            ..Measured::default()
                        };
                        let mut mark = 0;
                        for i in 0..spec.count {
                            r.receive()?;
                            let t = now_ns();
                            if i == 0 {
                                m.first = t;
                                mark = t;
                            } else if i % CHUNK == 0 {
                                m.samples.push((t - mark) / CHUNK);
                                mark = t;
                            }
                            m.last = t;
                        }
                        ack.write_all(&[1])?;
                        Ok(m)
                    };
                    run().map_err(|e| e.to_string())
                })
            })
            .collect();
        warmed.wait();
        let said = control.say("warmed");
        let results: Vec<_> = threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err("a receiver panicked".into()))
            })
            .collect();
        said.map(|()| results)
    })?;
    let mut all = Measured {
        first: u64::MAX,
        ..Measured::default()
    };
    let mut count = 0;
    for m in results {
        let m = m?;
        // The first measured handoff took time too: count it from the link's start.
        all.first = all.first.min(m.first);
        all.last = all.last.max(m.last);
        count += spec.count.saturating_sub(1);
        all.samples.extend(m.samples);
    }
    report(control, all.first, all.last, count, &all.samples)
}

fn redeem_target(
    spec: &WorkerSpec,
    control: &Control,
    session: &Session,
    mut receivers: Vec<Receiver>,
    mut acks: Vec<File>,
) -> Result<()> {
    let Receiver::Pipe { pipe, .. } = &mut receivers[0] else {
        return Err("redeem mode runs the pipe variant only".into());
    };
    let wait_pending = |n: usize| {
        while session.pending() < n {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    };
    let before = rss_bytes()?;
    control.say("warmed")?;
    wait_pending(spec.pending as usize);
    let after = rss_bytes()?;
    let per = after.saturating_sub(before) as f64 / spec.pending.max(1) as f64;
    control.say(&format!("mem {per:.1}"))?;

    let waves = (spec.warmup + spec.count) / WAVE as u64;
    let warm_waves = spec.warmup / WAVE as u64;
    let mut samples = Vec::with_capacity(spec.count as usize);
    let mut infos = Vec::with_capacity(WAVE);
    let mut redeemed = Vec::with_capacity(WAVE);
    let mut payload = [0u8; PAYLOAD];
    let mut busy = 0;
    for wave in 0..waves {
        infos.clear();
        for _ in 0..WAVE {
            pipe.read_exact(&mut payload)?;
            infos.push(ProtocolInfo::from_bytes(&payload)?);
        }
        // Time only the table lookups: every socket of the wave is in the table first.
        wait_pending(spec.pending as usize + WAVE);
        for info in &infos {
            let t = now_ns();
            let s = session.redeem(info)?;
            let dt = now_ns() - t;
            redeemed.push(s);
            if wave >= warm_waves {
                samples.push(dt);
                busy += dt;
            }
        }
        redeemed.clear();
        acks[0].write_all(&[1])?;
    }
    // ops/s of the redeem calls themselves, not of the waiting between waves.
    report(control, 0, busy, samples.len() as u64, &samples)
}

/// This process's resident set size.
fn rss_bytes() -> Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .ok_or("malformed /proc/self/statm")?
        .parse()?;
    Ok(pages * rustix::param::page_size() as u64)
}
