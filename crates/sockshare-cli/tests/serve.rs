//! `sockshare serve` with real processes (issue 13): the environment its workers get, as
//! libsystemd and the `listenfd` crate read it; serve under socket activation and under a
//! service manager (a fake NOTIFY_SOCKET, the fd store); readiness, rollback, crash
//! restart, drain deadlines, privilege drop, a clean stop, and reloads under load.
//!
//! Every wait is bounded (a bug fails a test, never hangs it), and every process a test
//! starts is killed and reaped when the test ends, passed or failed ([`Serve`]'s drop).

#![cfg(target_os = "linux")]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, BufReader, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

mod common;
use common::{free_port, signal, wait_exit, StderrLog};

const BIN: &str = env!("CARGO_BIN_EXE_sockshare");
/// The longest any one wait may take before the test fails.
const LIMIT: Duration = Duration::from_secs(20);
const SOCKET_ACTIVATE: &str = "/usr/bin/systemd-socket-activate";

// ---------------------------------------------------------------------------------------
// Helpers: directories, serve as a child, clients, the service manager's end.

/// Under CI, a missing tool fails the test instead of skipping it.
fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips (returns `false` after saying so) or, under CI, fails.
fn require(present: bool, what: &str) -> bool {
    if !present {
        assert!(
            !under_ci(),
            "{what} is missing under CI=true: .ci/run installs it"
        );
        eprintln!("SKIPPED: {what} is missing (it is required when CI=true)");
    }
    present
}

/// A directory in the system's temporary directory (short paths, for Unix sockets),
/// removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sockshare-serve-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a temporary directory");
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A worker script serve runs as `/bin/sh PATH` (so replacing it never races an exec of
/// a file being written: ETXTBSY). Replaced whole, by rename.
fn write_script(path: &Path, body: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, format!("#!/bin/sh\n{body}\n")).expect("writing the script");
    std::fs::rename(&next, path).expect("replacing the script");
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Places `fds` in a child at the numbers given, and marks every other descriptor from 3
/// on close-on-exec, so the child starts with exactly 0, 1, 2 and these (not whatever the
/// test runner inherited). The parent's copies are returned, to keep until the spawn.
fn place_fds(cmd: &mut Command, fds: &[(BorrowedFd<'_>, i32)]) -> Vec<OwnedFd> {
    // Copies above every target, so placing one never overwrites another's source.
    let copies: Vec<OwnedFd> = fds
        .iter()
        .map(|(fd, _)| rustix::io::fcntl_dupfd_cloexec(fd, 100).expect("dup"))
        .collect();
    let moves: Vec<(i32, i32)> = copies
        .iter()
        .zip(fds)
        .map(|(copy, (_, to))| (copy.as_raw_fd(), *to))
        .collect();
    // SAFETY: between fork and exec the closure only makes system calls that are
    // async-signal-safe (close_range, dup2) on numbers of the child's own table; dup2's
    // copy has no FD_CLOEXEC, so it survives the exec.
    unsafe {
        cmd.pre_exec(move || {
            // Marks, not closes: the standard library's own close-on-exec pipe stays.
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            for &(from, to) in &moves {
                if libc::dup2(from, to) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    copies
}

/// Whether `pid` exists and is not a zombie.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// Every process below `root`, from /proc.
fn descendants(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the command's ")": state, then the parent's pid.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// The descriptors of `pid`: number and what it links to (`socket:[123]`, ...).
fn fds(pid: u32) -> BTreeMap<i32, String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("reading /proc/PID/fd")
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some((n, target.to_string_lossy().into_owned()))
        })
        .collect()
}

/// Runs a command to its end (killed, and the test failed, after `LIMIT`).
fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {shown}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(LIMIT) {
        Ok(out) => out.expect("waiting for a command"),
        Err(_) => {
            signal(pid, libc::SIGKILL);
            panic!("{shown} did not finish within {LIMIT:?}");
        }
    }
}

/// `sockshare reload --pid PID`: `Ok(stdout)` on exit 0, `Err(stderr)` on exit 1.
fn reload(pid: u32) -> Result<String, String> {
    let out = run(Command::new(BIN).args(["reload", "--pid", &pid.to_string(), "--timeout", "15"]));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match out.status.code() {
        Some(0) => Ok(stdout),
        Some(1) => Err(stderr),
        _ => panic!(
            "sockshare reload ended with {}: {stdout}{stderr}",
            out.status
        ),
    }
}

/// A running `sockshare serve` (or a program that executes it, keeping the pid) and its
/// log. Dropping it kills it and every process below it.
struct Serve {
    child: Child,
    log: StderrLog,
}

impl Serve {
    /// `sockshare serve ARGS -- WORKER...`
    fn start(args: &[&str], worker: &[&str]) -> Serve {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").args(args).arg("--").args(worker);
        Serve::spawn(cmd, &[])
    }

    /// Starts `cmd` with `fds` at the numbers given and nothing else above 2.
    fn spawn(mut cmd: Command, fds: &[(BorrowedFd<'_>, i32)]) -> Serve {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let copies = place_fds(&mut cmd, fds);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        drop(copies);
        let log = StderrLog::capture(child.stderr.take().expect("piped"));
        Serve { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        self.log.text()
    }

    /// Waits until the log has `needle`; returns the log.
    fn wait_log(&self, needle: &str) -> String {
        self.log.wait_for(needle, LIMIT)
    }

    /// The workers generation `n` started with, from the log.
    fn workers(&self, n: u64) -> Vec<u32> {
        let prefix = format!("generation {n}: started workers ");
        let log = self.wait_log(&prefix);
        let line = log.lines().find_map(|l| l.split_once(&prefix)).unwrap().1;
        line.split(',').map(|p| p.parse().expect("a pid")).collect()
    }

    /// SIGTERM, then waits for the exit; returns how long it took.
    fn stop(&mut self) -> (ExitStatus, Duration) {
        let asked = Instant::now();
        signal(self.pid(), libc::SIGTERM);
        let status = wait_exit(&mut self.child, LIMIT)
            .unwrap_or_else(|| panic!("serve did not exit within {LIMIT:?} of SIGTERM"));
        (status, asked.elapsed())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("serve's log:\n{}", self.log());
        }
        let below = descendants(self.pid());
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Workers that ignore the SIGTERM serve's death sends them.
        for pid in below {
            signal(pid, libc::SIGKILL);
        }
    }
}

/// Serve on a free TCP port (and `args`), its first generation ready.
fn serve_on_tcp(args: &[&str], worker: &[&str]) -> (Serve, u16) {
    let port = free_port();
    let listen = format!("tcp:127.0.0.1:{port}");
    let serve = Serve::start(&[&["--listen", &listen], args].concat(), worker);
    serve.wait_log("generation 1 ready");
    (serve, port)
}

/// [`serve_on_tcp`] with `args`, its workers `hello` started through a shell script that
/// the test may rewrite (`write_script`) before a reload. Keep the directory while serve
/// runs.
fn serve_hello_script(tag: &str, args: &[&str]) -> (TempDir, PathBuf, Serve, u16) {
    let dir = TempDir::new(tag);
    let script = dir.path("worker");
    write_script(&script, &format!("exec {BIN} hello"));
    let (serve, port) = serve_on_tcp(args, &["/bin/sh", script.to_str().unwrap()]);
    (dir, script, serve, port)
}

/// Sends a request line on `stream` and reads the one-line answer.
fn ask(mut stream: impl Read + Write) -> io::Result<String> {
    stream.write_all(b"hi\n")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    if line.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed without an answer",
        ));
    }
    Ok(line)
}

fn ask_tcp(port: u16) -> io::Result<String> {
    ask_tcp_after(port, Duration::ZERO)
}

/// Asks `pause` after connecting: a worker that accepted it holds the connection so long.
fn ask_tcp_after(port: u16, pause: Duration) -> io::Result<String> {
    let s = TcpStream::connect_timeout(&local(port), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    std::thread::sleep(pause);
    ask(s)
}

fn ask_unix(path: &Path) -> io::Result<String> {
    let s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    ask(s)
}

fn ask_abstract(name: &str) -> io::Result<String> {
    let s = UnixStream::connect_addr(&std::os::unix::net::SocketAddr::from_abstract_name(name)?)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    ask(s)
}

fn ask_udp(port: u16) -> io::Result<String> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.send_to(b"hi\n", local(port))?;
    let mut buf = [0u8; 256];
    let n = s.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// `hello from pid PID generation G` as (PID, G).
fn parse(line: &str) -> Option<(u32, u64)> {
    let rest = line.trim_end().strip_prefix("hello from pid ")?;
    let (pid, generation) = rest.split_once(" generation ")?;
    Some((pid.parse().ok()?, generation.parse().ok()?))
}

/// The (pid, generation) of an answer that must have come.
fn answer(what: &str, line: io::Result<String>) -> (u32, u64) {
    let line = line.unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
    parse(&line).unwrap_or_else(|| panic!("{what}: odd answer {line:?}"))
}

/// What clients saw: every answer (pid, generation), and every failure.
type Tally = (Vec<(u32, u64)>, Vec<String>);

/// Clients asking over TCP one request after the other, each on a new connection, each
/// request 10 ms after the connect: workers always have connections in hand.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Tally>>,
}

impl Load {
    fn start(port: u16, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let (mut answers, mut failures) = (Vec::new(), Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        match ask_tcp_after(port, Duration::from_millis(10)) {
                            Ok(line) => match parse(&line) {
                                Some(a) => answers.push(a),
                                None => failures.push(format!("odd answer {line:?}")),
                            },
                            Err(e) => failures.push(e.to_string()),
                        }
                    }
                    (answers, failures)
                })
            })
            .collect();
        Load { stop, threads }
    }

    /// Stops the clients and adds up what they saw.
    fn finish(mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let (mut answers, mut failures) = (Vec::new(), Vec::new());
        for t in std::mem::take(&mut self.threads) {
            let (a, f) = t.join().expect("a client thread panicked");
            answers.extend(a);
            failures.extend(f);
        }
        (answers, failures)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One sd_notify message as the service manager receives it.
struct Note {
    text: String,
    /// The sender's pid (SO_PASSCRED).
    sender: Option<u32>,
    fds: Vec<OwnedFd>,
}

impl Note {
    fn get(&self, key: &str) -> Option<&str> {
        self.text
            .lines()
            .find_map(|l| l.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
    }
}

/// A fake service manager's NOTIFY_SOCKET: a datagram socket at a path, with SO_PASSCRED.
fn manager_socket(path: &Path) -> UnixDatagram {
    let sock = UnixDatagram::bind(path).expect("binding the notify socket");
    rustix::net::sockopt::set_socket_passcred(&sock, true).expect("SO_PASSCRED");
    sock
}

/// The next message on `sock`; the test fails after `within`.
fn receive(sock: &UnixDatagram, within: Duration) -> Note {
    let mut ready = [PollFd::new(sock, PollFlags::IN)];
    let wait = Timespec::try_from(within).unwrap();
    let n = rustix::event::poll(&mut ready, Some(&wait)).expect("poll");
    assert!(n > 0, "no message on NOTIFY_SOCKET within {within:?}");
    let mut bytes = [0u8; 4096];
    let mut space =
        [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmCredentials(1), ScmRights(16))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        sock,
        &mut [IoSliceMut::new(&mut bytes)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .expect("recvmsg");
    let (mut sender, mut fds) = (None, Vec::new());
    for message in control.drain() {
        match message {
            RecvAncillaryMessage::ScmCredentials(c) => {
                sender = Some(c.pid.as_raw_nonzero().get() as u32);
            }
            RecvAncillaryMessage::ScmRights(received) => fds.extend(received),
            _ => {}
        }
    }
    Note {
        text: String::from_utf8_lossy(&bytes[..got.bytes]).into_owned(),
        sender,
        fds,
    }
}

fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

// ---------------------------------------------------------------------------------------
// The tests.

/// The C worker, built against libsystemd; `None` (skipped) when libsystemd-dev is missing
/// outside CI.
fn sd_worker(dir: &TempDir) -> Option<PathBuf> {
    let found = Command::new("pkg-config")
        .args(["--exists", "libsystemd"])
        .status()
        .is_ok_and(|s| s.success());
    if !require(found, "libsystemd-dev (pkg-config libsystemd)") {
        return None;
    }
    let flags = run(Command::new("pkg-config").args(["--cflags", "--libs", "libsystemd"]));
    let flags = String::from_utf8_lossy(&flags.stdout).into_owned();
    let exe = dir.path("sd_worker");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/sd_worker.c");
    let out = run(Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-D_GNU_SOURCE"])
        .arg(&source)
        .arg("-o")
        .arg(&exe)
        .args(flags.split_whitespace()));
    assert!(
        out.status.success(),
        "compiling {}:\n{}",
        source.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(exe)
}

/// Issue 13, 1: a worker that reads its sockets with libsystemd's own
/// sd_listen_fds_with_names (count, names, a listening TCP and a Unix socket: LISTEN_PID
/// must be its pid) and says READY=1 with sd_notify is counted ready, through a reload,
/// and answers.
#[test]
fn libsystemd_reads_the_workers_sockets_and_its_ready_counts() {
    let dir = TempDir::new("sd");
    let Some(worker) = sd_worker(&dir) else {
        return;
    };
    let port = free_port();
    let path = dir.path("sd.sock");
    let serve = Serve::start(
        &[
            "--listen",
            &format!("web=tcp:127.0.0.1:{port}"),
            "--listen",
            &format!("local=unix:{}", path.display()),
            "--workers",
            "2",
            "--ready-timeout",
            "10",
        ],
        &[
            worker.to_str().unwrap(),
            path.to_str().unwrap(),
            "web",
            "local",
        ],
    );
    serve.wait_log("generation 1 ready");
    let (pid, generation) = answer("generation 1", ask_tcp(port));
    assert_eq!(generation, 1);
    assert!(serve.workers(1).contains(&pid), "{pid} is no worker of 1");
    let what = reload(serve.pid()).expect("a reload to libsystemd workers");
    assert!(what.starts_with("generation 2 serving"), "{what}");
    // Generation 1 may take a client it accepted just before its SIGTERM.
    let end = Instant::now() + LIMIT;
    loop {
        let (pid, generation) = answer("after the reload", ask_tcp(port));
        if generation == 2 {
            assert!(serve.workers(2).contains(&pid), "{pid} is no worker of 2");
            break;
        }
        assert!(Instant::now() < end, "generation 2 never answered");
    }
}

/// Issue 13, 2: `sockshare hello` takes its sockets with the `listenfd` crate; under serve
/// it answers on TCP, UDP, a Unix path and an abstract Unix name at once.
#[test]
fn hello_answers_over_tcp_udp_and_unix_at_once() {
    let dir = TempDir::new("kinds");
    let (tcp, udp) = (free_port(), free_port());
    let path = dir.path("hello.sock");
    let name = format!("sockshare-serve-test/{}/{tcp}", std::process::id());
    let serve = Serve::start(
        &[
            "--listen",
            &format!("web=tcp:127.0.0.1:{tcp}"),
            "--listen",
            &format!("dns=udp:127.0.0.1:{udp}"),
            "--listen",
            &format!("local=unix:{}", path.display()),
            "--listen",
            &format!("unix:@{name}"),
            "--workers",
            "2",
        ],
        &[BIN, "hello"],
    );
    serve.wait_log("generation 1 ready");
    let workers = serve.workers(1);
    for (what, line) in [
        ("tcp", ask_tcp(tcp)),
        ("udp", ask_udp(udp)),
        ("unix path", ask_unix(&path)),
        ("abstract unix", ask_abstract(&name)),
    ] {
        let (pid, generation) = answer(what, line);
        assert_eq!(generation, 1, "{what}");
        assert!(workers.contains(&pid), "{what}: {pid} is no worker");
    }
}

/// Issue 13, 3: serve started by systemd-socket-activate takes the sockets it is given: the
/// named one for its `--listen` of that name (binding it again would fail: EADDRINUSE),
/// and passes an unmatched one on too.
#[test]
fn serve_takes_its_sockets_from_systemd_socket_activate() {
    if !require(Path::new(SOCKET_ACTIVATE).exists(), SOCKET_ACTIVATE) {
        return;
    }
    let (web, extra) = (free_port(), free_port());
    let mut cmd = Command::new(SOCKET_ACTIVATE);
    cmd.args([
        "-l",
        &format!("127.0.0.1:{web}"),
        "-l",
        &format!("127.0.0.1:{extra}"),
        "--fdname=web:extra",
        BIN,
        "serve",
        "--listen",
        &format!("web=tcp:127.0.0.1:{web}"),
        "--",
        BIN,
        "hello",
    ]);
    let serve = Serve::spawn(cmd, &[]);
    serve.wait_log(&format!("Listening on 127.0.0.1:{extra}"));
    // systemd-socket-activate executes serve (same pid) at the first connection.
    let (_, generation) = answer("web", ask_tcp(web));
    assert_eq!(generation, 1);
    let log = serve.wait_log("generation 1 ready");
    assert!(
        log.contains(&format!("tcp 127.0.0.1:{web} (inherited) as \"web\"")),
        "{log}"
    );
    assert!(
        log.contains(&format!("tcp 127.0.0.1:{extra} (inherited) as \"extra\"")),
        "{log}"
    );
    assert_eq!(answer("extra", ask_tcp(extra)).1, 1);
    reload(serve.pid()).expect("a reload under socket activation");
    let (pid, _) = answer("web after the reload", ask_tcp(web));
    let log = serve.log();
    assert!(
        !log.contains("cannot listen"),
        "serve tried to bind itself:\n{log}"
    );
    assert!(
        serve.workers(1).contains(&pid) || serve.workers(2).contains(&pid),
        "{pid} is no worker"
    );
}

/// Issue 13, 4: a reload to a generation that never says READY=1 (the timeout) or whose
/// worker exits at once fails with the reason, and the old generation goes on serving:
/// clients asking all along see no failure.
#[test]
fn a_broken_reload_rolls_back_and_no_client_notices() {
    let (_dir, script, serve, port) =
        serve_hello_script("rollback", &["--workers", "2", "--ready-timeout", "2"]);
    let old = serve.workers(1);
    let load = Load::start(port, 3);

    let fails_with = |n: u64, reasons: &[&str]| {
        let why = reload(serve.pid()).expect_err("a reload to broken workers");
        assert!(why.contains(&format!("generation {n} failed: ")), "{why}");
        assert!(reasons.iter().all(|r| why.contains(r)), "{why}");
        assert!(why.contains("generation 1 goes on serving"), "{why}");
        // The failed generation's workers (they have the sockets) may still take a client
        // while they stop; once they are gone, generation 1 answers.
        serve.wait_log(&format!("generation {n} is gone"));
        let (pid, generation) = answer("after the failed reload", ask_tcp(port));
        assert!(generation == 1 && old.contains(&pid), "{pid} {generation}");
    };
    write_script(&script, &format!("exec {BIN} hello --no-ready"));
    fails_with(2, &["not ready within 2 s"]);
    write_script(&script, "exit 3");
    fails_with(3, &["exited (status 3) before it was ready"]);

    let (answers, failures) = load.finish();
    assert!(failures.is_empty(), "clients failed: {failures:?}");
    assert!(!answers.is_empty());
    assert!(old.iter().all(|p| running(*p)), "generation 1 was stopped");
}

/// Issue 13, 5: a worker killed with SIGKILL is started again after the backoff; clients
/// that connect while none runs wait in the backlog and are answered by the new one.
#[test]
fn a_killed_worker_is_restarted_and_waiting_clients_are_answered() {
    let dir = TempDir::new("crash");
    let script = dir.path("worker");
    // The pause keeps the slot without a worker long enough to connect in that time.
    write_script(&script, &format!("sleep 1\nexec {BIN} hello"));
    let (serve, port) = serve_on_tcp(&[], &["/bin/sh", script.to_str().unwrap()]);
    let (first, _) = answer("before the crash", ask_tcp(port));
    signal(first, libc::SIGKILL);
    serve.wait_log(&format!(
        "worker {first} exited (signal 9); restarting it in 0.1 s"
    ));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                let asked = Instant::now();
                let s = TcpStream::connect_timeout(&local(port), Duration::from_secs(1))
                    .expect("connecting while no worker runs");
                let connected = asked.elapsed();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let line = ask(s);
                (connected, asked.elapsed(), line)
            })
        })
        .collect();
    for c in clients {
        let (connected, answered, line) = c.join().unwrap();
        let (pid, generation) = answer("after the crash", line);
        assert_eq!(generation, 1);
        assert_ne!(pid, first, "the killed worker answered");
        assert!(
            connected < Duration::from_millis(500),
            "connect took {connected:?}"
        );
        // It waited for the new worker (whose script pauses 1 s), started after the first
        // backoff (0.1 s).
        assert!(
            answered > Duration::from_millis(500) && answered < Duration::from_secs(4),
            "answered in {answered:?}"
        );
        let log = serve.log();
        assert!(
            log.contains(&format!(
                "worker {pid} started in place of the one that exited"
            )),
            "{log}"
        );
    }
}

/// Issue 13, 6a: an old worker that ignores SIGTERM gets SIGKILL at the drain deadline
/// (1 s after its generation was replaced), not before.
#[test]
fn an_old_worker_ignoring_sigterm_is_killed_at_the_drain_deadline() {
    let (serve, _) = serve_on_tcp(&["--drain-timeout", "1"], &[BIN, "hello", "--ignore-term"]);
    let old = serve.workers(1)[0];
    let asked = Instant::now();
    reload(serve.pid()).expect("a reload");
    let replaced = Instant::now();
    std::thread::sleep(Duration::from_millis(500).saturating_sub(asked.elapsed()));
    assert!(running(old), "killed before the drain deadline");
    let log = serve.wait_log(&format!("worker {old} exited (signal 9)"));
    let (from_ask, from_reply) = (asked.elapsed(), replaced.elapsed());
    assert!(
        log.contains(&format!(
            "generation 1: drain deadline passed, killing workers {old}"
        )),
        "{log}"
    );
    assert!(
        from_ask >= Duration::from_millis(950),
        "killed after {from_ask:?}"
    );
    assert!(
        from_reply < Duration::from_secs(3),
        "killed after {from_reply:?}"
    );
    assert!(!running(old));
}

/// Issue 13, 6b: a draining worker that handles SIGTERM finishes the connection it took
/// before the reload, and exits by itself, before the drain deadline.
#[test]
fn a_draining_worker_finishes_the_connection_in_hand() {
    let (serve, port) = serve_on_tcp(
        &["--drain-timeout", "10"],
        &[BIN, "hello", "--answer-delay", "1500"],
    );
    let old = serve.workers(1)[0];
    let client = std::thread::spawn(move || ask_tcp(port));
    // The worker has seen the client and waits 1.5 s before it answers.
    std::thread::sleep(Duration::from_millis(300));
    reload(serve.pid()).expect("a reload");
    let (pid, generation) = answer("the client in hand", client.join().unwrap());
    assert_eq!(
        (pid, generation),
        (old, 1),
        "not answered by the old worker"
    );
    serve.wait_log(&format!("worker {old} exited (status 0)"));
    assert!(!serve.log().contains("drain deadline passed"));
}

/// Whether `path` and every directory above it can be executed by any user.
fn everyone_can_run(path: &Path) -> bool {
    path.ancestors()
        .all(|p| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// The sockshare binary as any user can run it: the build's, or a copy in `dir`.
fn runnable_by_everyone(dir: &TempDir) -> PathBuf {
    if everyone_can_run(Path::new(BIN)) {
        return PathBuf::from(BIN);
    }
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path("sockshare");
    std::fs::copy(BIN, &copy).expect("copying the binary");
    copy
}

/// What a test that acts as `nobody` needs: its ids, and a copy of the binary it may run
/// (kept in `_dir`). `None`, after saying the test is skipped and why, unless this runs as
/// root.
struct Nobody {
    uid: u32,
    gid: u32,
    exe: PathBuf,
    _dir: TempDir,
}

fn nobody(tag: &str, needs: &str) -> Option<Nobody> {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: {needs} needs root");
        return None;
    }
    let (uid, gid) = passwd("nobody").expect("a user nobody");
    let dir = TempDir::new(tag);
    let exe = runnable_by_everyone(&dir);
    Some(Nobody {
        uid,
        gid,
        exe,
        _dir: dir,
    })
}

/// The uid and gid of `user`, from /etc/passwd.
fn passwd(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// The real, effective, saved and file-system ids of a `Uid:` or `Gid:` line.
fn ids(pid: u32, key: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix(key)).unwrap();
    line.split_whitespace()
        .map(|i| i.parse().unwrap())
        .collect()
}

/// Issue 13, 7: `--user nobody`: serve binds a port below 1024 as root, its workers run as
/// nobody (every uid and gid), and their READY=1 still counts.
#[test]
fn workers_run_as_the_user_given_and_their_ready_counts() {
    let Some(Nobody {
        uid,
        gid,
        exe,
        _dir,
    }) = nobody("user", "dropping privileges")
    else {
        return;
    };
    let low = std::iter::once(80)
        .chain(600..1024)
        .find(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok());
    let port = low.unwrap_or_else(|| {
        eprintln!("SKIPPED (part): no port below 1024 is free; using an unprivileged one");
        free_port()
    });
    let mut serve = Serve::start(
        &[
            "--listen",
            &format!("tcp:127.0.0.1:{port}"),
            "--user",
            "nobody",
            "--ready-timeout",
            "10",
        ],
        &[exe.to_str().unwrap(), "hello"],
    );
    serve.wait_log("generation 1: worker");
    serve.wait_log("generation 1 ready");
    let (pid, _) = answer("nobody's worker", ask_tcp(port));
    assert_eq!(ids(pid, "Uid:"), [uid; 4], "the worker's uids");
    assert_eq!(ids(pid, "Gid:"), [gid; 4], "the worker's gids");
    assert_eq!(ids(serve.pid(), "Uid:"), [0; 4], "serve itself stays root");
    let (status, _) = serve.stop();
    assert!(status.success(), "{status}");
}

/// Issue 13, 8: serve speaks sd_notify to its own manager: READY=1 with MAINPID once the
/// first generation is ready, RELOADING=1 with MONOTONIC_USEC when a reload starts,
/// READY=1 when it ends, STOPPING=1 on SIGTERM, in that order, sent by serve itself; its
/// workers notify serve, not the manager.
#[test]
fn serve_tells_its_manager_ready_reloading_ready_stopping_in_order() {
    let dir = TempDir::new("notify");
    let path = dir.path("notify");
    let manager = manager_socket(&path);
    let port = free_port();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", &format!("tcp:127.0.0.1:{port}")])
        .args(["--", BIN, "hello"])
        .env("NOTIFY_SOCKET", &path);
    let mut serve = Serve::spawn(cmd, &[]);
    let pid = serve.pid();
    let ready = receive(&manager, LIMIT);
    assert_eq!(ready.get("READY"), Some("1"), "{}", ready.text);
    assert_eq!(ready.get("MAINPID"), Some(pid.to_string().as_str()));
    let worker = serve.workers(1)[0];
    let environ = std::fs::read(format!("/proc/{worker}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    let theirs = environ
        .split('\0')
        .find_map(|v| v.strip_prefix("NOTIFY_SOCKET="))
        .expect("the worker's NOTIFY_SOCKET");
    assert!(theirs.starts_with("@sockshare-serve/"), "{theirs}");

    let before = monotonic_usec();
    reload(pid).expect("a reload");
    let after = monotonic_usec();
    let (status, _) = serve.stop();
    assert!(status.success(), "{status}");

    // Serve has exited: what it sent is queued.
    let notes: Vec<Note> = (0..3)
        .map(|_| receive(&manager, Duration::from_millis(100)))
        .collect();
    let order: Vec<&str> = std::iter::once(&ready)
        .chain(&notes)
        .map(|n| n.text.lines().next().unwrap_or(""))
        .collect();
    assert_eq!(
        order,
        ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"],
        "{:?}",
        notes.iter().map(|n| &n.text).collect::<Vec<_>>()
    );
    let usec: u64 = notes[0].get("MONOTONIC_USEC").unwrap().parse().unwrap();
    assert!((before..=after).contains(&usec), "{before} {usec} {after}");
    for n in std::iter::once(&ready).chain(&notes) {
        assert_eq!(n.sender, Some(pid), "{} not sent by serve", n.text);
    }
}

/// Issue 13, 9: the fd store round trip: with FDSTORE set, serve gives its manager each
/// listener with its name; a new serve started with those (sd_listen_fds-style, the test
/// still holding them, so a bind would fail) serves on them without binding.
#[test]
fn listeners_kept_in_the_fd_store_serve_the_next_serve() {
    let dir = TempDir::new("fdstore");
    let manager = manager_socket(&dir.path("notify"));
    let port = free_port();
    let path = dir.path("kept.sock");
    let listen = [
        "--listen".to_owned(),
        format!("web=tcp:127.0.0.1:{port}"),
        "--listen".to_owned(),
        format!("local=unix:{}", path.display()),
    ];
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .args(&listen)
        .args(["--", BIN, "hello"])
        .env("NOTIFY_SOCKET", dir.path("notify"))
        .env("FDSTORE", "16");
    let mut first = Serve::spawn(cmd, &[]);
    let mut store = Vec::new();
    for name in ["web", "local"] {
        let mut note = receive(&manager, LIMIT);
        assert_eq!(note.get("FDSTORE"), Some("1"), "{}", note.text);
        assert_eq!(note.get("FDNAME"), Some(name), "{}", note.text);
        assert_eq!(note.fds.len(), 1, "{}", note.text);
        store.push(note.fds.remove(0));
    }
    let web = socket2::SockRef::from(&store[0]).local_addr().unwrap();
    assert_eq!(web.as_socket(), Some(local(port)));
    assert_eq!(receive(&manager, LIMIT).get("READY"), Some("1"));
    let (status, _) = first.stop();
    assert!(status.success(), "{status}");
    assert!(path.exists(), "serve removed a socket file the store keeps");

    // LISTEN_PID must be the new serve's pid: a shell sets it to its own and executes.
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"export LISTEN_PID=$$; exec "$0" "$@""#)
        .arg(BIN)
        .arg("serve")
        .args(&listen)
        .args(["--", BIN, "hello"])
        .env("LISTEN_FDS", "2")
        .env("LISTEN_FDNAMES", "web:local");
    let second = Serve::spawn(cmd, &[(store[0].as_fd(), 3), (store[1].as_fd(), 4)]);
    let log = second.wait_log("generation 1 ready");
    assert!(log.contains("(inherited) as \"web\""), "{log}");
    assert!(log.contains("(inherited) as \"local\""), "{log}");
    let workers = second.workers(1);
    for (what, line) in [("tcp", ask_tcp(port)), ("unix", ask_unix(&path))] {
        let (pid, _) = answer(what, line);
        assert!(
            workers.contains(&pid),
            "{what}: {pid} is not the new serve's"
        );
    }
}

/// Issue 13, 10: serve holds only its listeners and a few descriptors of its own (signalfd,
/// notify and control sockets); workers get 0, 1, 2 and the listeners at 3 on, nothing
/// else serve had (a stray descriptor serve inherited); after SIGTERM serve exits 0
/// within the drain timeout, no worker is left, nothing holds the stray descriptor any
/// more, and the Unix socket file serve bound is gone.
#[test]
fn stop_leaves_no_process_socket_file_or_stray_descriptor() {
    let dir = TempDir::new("stop");
    let port = free_port();
    let path = dir.path("stop.sock");
    let (stray_read, stray_write) = rustix::pipe::pipe().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--listen",
        &format!("tcp:127.0.0.1:{port}"),
        "--listen",
        &format!("unix:{}", path.display()),
        "--workers",
        "2",
        "--drain-timeout",
        "5",
        "--",
        BIN,
        "hello",
    ]);
    let mut serve = Serve::spawn(cmd, &[(stray_write.as_fd(), 20)]);
    drop(stray_write);
    serve.wait_log("generation 1 ready");
    let workers = serve.workers(1);
    let own = fds(serve.pid());
    for &w in &workers {
        // The worker's own socket for READY=1 may still be closing.
        let end = Instant::now() + Duration::from_secs(2);
        let mut theirs = fds(w);
        while theirs.len() > 5 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
            theirs = fds(w);
        }
        assert_eq!(
            theirs.keys().copied().collect::<Vec<_>>(),
            [0, 1, 2, 3, 4],
            "worker {w}: {theirs:?}"
        );
        for fd in [3, 4] {
            assert!(theirs[&fd].starts_with("socket:"), "{theirs:?}");
            assert!(
                own.values().any(|t| *t == theirs[&fd]),
                "not serve's: {own:?}"
            );
        }
    }
    let mine: Vec<&String> = own
        .iter()
        .filter(|(n, _)| **n > 2 && **n != 20)
        .map(|(_, t)| t)
        .collect();
    let sockets = mine.iter().filter(|t| t.starts_with("socket:")).count();
    let signalfds = mine.iter().filter(|t| t.contains("signalfd")).count();
    assert_eq!(
        (mine.len(), sockets, signalfds),
        (5, 4, 1),
        "serve's descriptors: {own:?}"
    );

    let (status, took) = serve.stop();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(5), "stopped in {took:?}");
    for w in workers {
        assert!(
            !Path::new(&format!("/proc/{w}")).exists(),
            "worker {w} left"
        );
    }
    assert!(!path.exists(), "the socket file is left");
    // Nothing holds the stray descriptor's pipe open any more: the read end sees its end.
    let mut hup = [PollFd::new(&stray_read, PollFlags::IN)];
    let wait = Timespec::try_from(Duration::from_secs(2)).unwrap();
    assert_eq!(rustix::event::poll(&mut hup, Some(&wait)).unwrap(), 1);
    assert!(hup[0].revents().contains(PollFlags::HUP));
}

/// Issue 13, 11: ten reloads while clients ask without pause, each on a new connection:
/// not one fails, and answers come from more than one generation.
#[test]
fn ten_reloads_under_load_fail_no_client() {
    let (serve, port) = serve_on_tcp(&["--workers", "2"], &[BIN, "hello"]);
    let load = Load::start(port, 4);
    for n in 2..=11 {
        let what = reload(serve.pid()).unwrap_or_else(|e| panic!("reload {n}: {e}"));
        assert!(
            what.starts_with(&format!("generation {n} serving")),
            "{what}"
        );
    }
    let (answers, failures) = load.finish();
    assert!(failures.is_empty(), "clients failed: {failures:?}");
    let generations: BTreeSet<u64> = answers.iter().map(|a| a.1).collect();
    assert!(
        generations.len() > 1,
        "{} answers, all from {generations:?}",
        answers.len()
    );
}

/// `sockshare reload --pid` of a process that is not serve, or of no process, fails with a
/// reason.
#[test]
fn reload_of_a_process_that_is_not_serve_fails_clearly() {
    let me = std::process::id();
    let why = reload(me).expect_err("a reload of the test itself");
    assert!(
        why.contains(&format!("no sockshare serve with pid {me}")),
        "{why}"
    );
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let why = reload(gone.id()).expect_err("a reload of no process");
    assert!(why.contains("no sockshare serve with pid"), "{why}");
}

/// Issue 13: only serve's own workers' READY=1 counts, by the kernel's word on who sent it
/// (`SCM_CREDENTIALS`). A stranger that finds serve's notify socket (its abstract name is
/// in /proc/net/unix) and says READY=1 while a generation that never will is starting
/// does not make that generation take over: the reload fails at its timeout.
#[test]
fn ready_from_a_process_that_is_no_worker_does_not_count() {
    let (_dir, script, serve, port) = serve_hello_script("stranger", &["--ready-timeout", "2"]);
    write_script(&script, &format!("exec {BIN} hello --no-ready"));
    let prefix = format!("@sockshare-serve/{}/", serve.pid());
    let unix = std::fs::read_to_string("/proc/net/unix").unwrap();
    let name = unix
        .lines()
        .filter_map(|l| l.split_whitespace().nth(7))
        .find(|n| n.starts_with(&prefix) && !n.ends_with("/control"))
        .expect("serve's notify socket in /proc/net/unix")
        .trim_start_matches('@')
        .to_owned();
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
    let pid = serve.pid();
    let asked = std::thread::spawn(move || reload(pid));
    serve.wait_log("generation 2: started workers");
    let stranger = UnixDatagram::unbound().unwrap();
    while !asked.is_finished() {
        stranger.send_to_addr(b"READY=1", &addr).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let why = asked
        .join()
        .unwrap()
        .expect_err("a reload to workers that never notify");
    assert!(why.contains("not ready within 2 s"), "{why}");
    serve.wait_log("generation 2 is gone");
    let (_, generation) = answer("after the failed reload", ask_tcp(port));
    assert_eq!(generation, 1);
}

/// Issue 13, the control socket attacked from both ends. A client of another user is
/// refused (serve answers only its own user and root, by `SO_PEERCRED`) and no reload
/// happens; and a process that took the name of a pid's control socket first is not
/// taken for that pid's serve (the client checks the listener's pid).
#[test]
fn reload_is_refused_to_another_user_and_not_sent_to_a_squatter() {
    let Some(Nobody {
        uid,
        gid,
        exe,
        _dir,
    }) = nobody("control", "acting as another user")
    else {
        return;
    };
    let (serve, _) = serve_on_tcp(&[], &[BIN, "hello"]);
    let out = run(Command::new(&exe)
        .args([
            "reload",
            "--pid",
            &serve.pid().to_string(),
            "--timeout",
            "15",
        ])
        .uid(uid)
        .gid(gid));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(
        !serve.log().contains("reload asked for"),
        "nobody's request reached the supervisor:\n{}",
        serve.log()
    );

    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let name = format!("sockshare-serve/{}/control", sleeper.id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
    let _squatter = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    let why = reload(sleeper.id()).expect_err("a reload through a squatted name");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(
        why.contains(&format!("is held by pid {}", std::process::id())),
        "{why}"
    );
}

/// Issue 13: serve takes inherited sockets only when `LISTEN_PID` names serve itself, as
/// sd_listen_fds(3) does: variables meant for another process (here pid 1) are ignored,
/// with the socket at descriptor 3.
#[test]
fn sockets_of_another_pids_activation_are_not_taken() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--", BIN, "hello"])
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", "1");
    let mut serve = Serve::spawn(cmd, &[(listener.as_fd(), 3)]);
    let status = wait_exit(&mut serve.child, LIMIT).expect("serve exits");
    assert!(!status.success(), "{status}");
    serve.wait_log("nothing to serve");
}

/// Issue 13: a worker that cannot notify is declared ready explicitly, with
/// `--ready alive:SECS`, and only after that time: a reload to it succeeds no sooner.
#[test]
fn a_worker_that_cannot_notify_is_ready_once_alive_for_the_time_given() {
    let (serve, port) = serve_on_tcp(&["--ready", "alive:0.5"], &[BIN, "hello", "--no-ready"]);
    let asked = Instant::now();
    let outcome = reload(serve.pid()).expect("a reload to workers alive 0.5 s");
    assert!(outcome.contains("generation 2 serving"), "{outcome}");
    assert!(
        asked.elapsed() >= Duration::from_millis(500),
        "generation 2 counted ready after {:?}, before 0.5 s alive",
        asked.elapsed()
    );
    serve.wait_log("counted ready (alive 0.5 s)");
    let (_, generation) = answer("after the reload", ask_tcp(port));
    assert!(generation >= 1);
    // Without the option, a worker that never notifies never takes over.
    let broken = Serve::start(
        &[
            "--listen",
            &format!("tcp:127.0.0.1:{}", free_port()),
            "--ready-timeout",
            "1",
        ],
        &[BIN, "hello", "--no-ready"],
    );
    broken.wait_log("the first generation failed: not ready within 1 s");
}

/// Issue 13: reloads asked for while one is starting are queued and coalesced into one,
/// never lost: every asker gets the outcome of a reload that started after it asked.
#[test]
fn reloads_asked_for_during_a_reload_are_coalesced_not_lost() {
    let (serve, _port) = serve_on_tcp(&[], &[BIN, "hello", "--ready-delay", "0.5"]);
    let pid = serve.pid();
    let askers: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                // The first starts a reload; the others arrive while it starts.
                std::thread::sleep(Duration::from_millis(if i == 0 { 0 } else { 100 }));
                reload(pid)
            })
        })
        .collect();
    let outcomes: Vec<String> = askers
        .into_iter()
        .map(|a| a.join().unwrap().expect("every reload succeeds"))
        .collect();
    assert!(outcomes[0].contains("generation 2 serving"), "{outcomes:?}");
    // The three that came during generation 2's start share generation 3.
    for o in &outcomes[1..] {
        assert!(o.contains("generation 3 serving"), "{outcomes:?}");
    }
    let log = serve.wait_log("generation 3 ready");
    assert!(
        !log.contains("generation 4"),
        "the queued reloads were not coalesced:\n{log}"
    );
}
