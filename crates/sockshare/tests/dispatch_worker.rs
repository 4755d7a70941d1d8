//! `sockshare::dispatch::Worker` against this test playing serve's part of the channel
//! protocol with real sockets: records in, the ledger read, the end of the channel.
//! (Serve itself, with real worker processes, is tested in crates/sockshare-cli.)

#![cfg(target_os = "linux")]

mod nofile;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;

use rustix::net::{AddressFamily, SocketFlags, SocketType};
use sockshare::dispatch::{
    Hand, Ledger, Worker, FD_VAR, HAND_SIZE, HEADER_SIZE, LEDGER_VAR, NAMES_VAR,
};

/// Serve's ends of a worker's channel and ledger.
struct Serve {
    channel: UnixDatagram,
    ledger: Ledger,
}

impl Serve {
    fn send(&self, record: &[u8]) -> std::io::Result<usize> {
        self.channel.send(record)
    }

    /// What the worker recorded: (taken, done).
    fn ledger(&self) -> (u64, u64) {
        (self.ledger.taken(), self.ledger.done())
    }
}

/// A channel as serve makes it: serve's end, and the worker's, which asks for every
/// record's credentials before the worker starts.
fn channel_pair() -> (OwnedFd, OwnedFd) {
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    rustix::net::sockopt::set_socket_passcred(&theirs, true).unwrap();
    (ours, theirs)
}

/// Serve's ends, with the worker made from the others through the environment, as a
/// worker process would be.
fn worker() -> (Worker, Serve) {
    let _env = env_lock();
    let (ours, theirs) = channel_pair();
    let (ledger, ledger_fd) = Ledger::create().unwrap();
    std::env::set_var(FD_VAR, theirs.as_raw_fd().to_string());
    std::env::set_var(LEDGER_VAR, ledger_fd.as_raw_fd().to_string());
    std::env::set_var(NAMES_VAR, "web:admin");
    // from_env owns the descriptors from here.
    std::mem::forget((theirs, ledger_fd));
    let worker = Worker::from_env().unwrap();
    assert!(
        std::env::var_os(FD_VAR).is_none() && std::env::var_os(LEDGER_VAR).is_none(),
        "the variables stay for children"
    );
    // SOCK_SEQPACKET records read and write like datagrams on a connected socket.
    let channel = UnixDatagram::from(ours);
    (worker, Serve { channel, ledger })
}

/// The tests of this file run on parallel threads; the variables are process-wide.
fn env_lock() -> std::sync::MutexGuard<'static, ()> {
    static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ENV.lock().unwrap_or_else(|p| p.into_inner())
}

/// A variable naming a descriptor that is not a channel, or not a ledger (here a file
/// this test owns), is refused, and both descriptors are left as they were: open, and
/// still their owners'.
#[test]
fn a_wrong_descriptor_in_a_variable_is_refused_and_both_are_left_open() {
    let _env = env_lock();
    let file = std::fs::File::open("/dev/null").unwrap();
    let (_serve, channel) = channel_pair();
    let (_ledger, ledger_fd) = Ledger::create().unwrap();
    for (channel_var, ledger_var) in [
        (file.as_raw_fd(), ledger_fd.as_raw_fd()),
        (channel.as_raw_fd(), file.as_raw_fd()),
    ] {
        std::env::set_var(FD_VAR, channel_var.to_string());
        std::env::set_var(LEDGER_VAR, ledger_var.to_string());
        let err = Worker::from_env().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
        for fd in [file.as_raw_fd(), channel.as_raw_fd(), ledger_fd.as_raw_fd()] {
            // SAFETY: all three are owned by this test and open until it ends.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            let flags = rustix::io::fcntl_getfd(fd).expect("every descriptor still open");
            assert!(
                flags.contains(rustix::io::FdFlags::CLOEXEC),
                "flags unchanged"
            );
        }
    }
    std::env::remove_var(FD_VAR);
    std::env::remove_var(LEDGER_VAR);
}

/// Hands `socket` the way serve does, in both forms by turns, as serve may once the
/// worker has asked for descriptors: an odd `seq` as an info record (duplicated for this
/// process), an even one as a descriptor record.
fn send_hand(serve: &Serve, seq: u64, index: u32, socket: impl std::os::fd::AsFd) {
    let hand = Hand {
        seq,
        listener: index,
    };
    let info =
        (seq % 2 == 1).then(|| sockshare::duplicate(socket.as_fd(), std::process::id()).unwrap());
    // Serve never waits for room; a test that runs ahead of the worker does.
    loop {
        let sent = match &info {
            Some(info) => hand.send_info(serve.channel.as_fd(), &info.to_bytes_a()),
            None => hand.send_descriptor(serve.channel.as_fd(), socket.as_fd()),
        };
        match sent {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            sent => return sent.unwrap(),
        }
    }
}

/// A TCP connection handed from listener index `index`. Returns the client's end, and
/// serve's own descriptor, which serve keeps until the ledger shows the connection taken.
fn hand_from(
    serve: &Serve,
    seq: u64,
    index: u32,
    listener: &TcpListener,
) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (conn, _) = listener.accept().unwrap();
    send_hand(serve, seq, index, &conn);
    (client, conn)
}

/// [`hand_from`] listener 1, serve's descriptor closed at once.
fn hand(serve: &Serve, seq: u64, listener: &TcpListener) -> TcpStream {
    hand_from(serve, seq, 1, listener).0
}

#[test]
fn a_worker_takes_records_in_the_ledger_and_stops_at_the_end_of_the_channel() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (worker, serve) = worker();
    assert_eq!(worker.listener_names(), ["web", "admin"]);
    assert!(
        serve.ledger.asks_for_descriptors(),
        "a Rust worker takes descriptor records"
    );

    let mut client = hand(&serve, 7, &listener);
    let mut conn = worker.accept().unwrap().expect("a connection");
    assert_eq!(conn.listener(), 1);
    // Taken is recorded before the worker could do anything with it.
    assert_eq!(serve.ledger(), (7, 0));
    conn.write_all(b"pong").unwrap();
    drop(conn);
    assert_eq!(serve.ledger(), (7, 1), "done as soon as it is dropped");
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"pong");

    // A worker waiting for a record; accept_tcp gives the peer too.
    let client = std::thread::scope(|scope| {
        let waiting = scope.spawn(|| worker.accept_tcp().unwrap().expect("a connection"));
        std::thread::sleep(std::time::Duration::from_millis(50));
        let client = hand(&serve, 8, &listener);
        let (conn, peer) = waiting.join().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        assert_eq!(serve.ledger(), (8, 1));
        drop(conn);
        client
    });
    drop(client);
    let _clients = [hand(&serve, 9, &listener), hand(&serve, 10, &listener)];
    let nine = worker.accept().unwrap().expect("a connection");
    assert_eq!(serve.ledger(), (9, 2));
    let ten = worker.accept().unwrap().expect("a connection");
    assert_eq!(serve.ledger(), (10, 2));
    drop((nine, ten));
    assert_eq!(serve.ledger(), (10, 4));

    rustix::net::shutdown(&serve.channel, rustix::net::Shutdown::Write).unwrap();
    assert!(
        worker.accept().unwrap().is_none(),
        "the end of the channel ends accept"
    );
}

/// Threads accepting at once take the records in order: when the channel ends, every
/// connection was taken once and the ledger shows the last record, never an earlier one
/// stored late (which would let serve think a connection taken that a worker could still
/// die holding unrecorded, or the reverse).
#[test]
fn threads_accepting_at_once_take_every_record_once_in_order() {
    const RECORDS: u64 = 1000;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (worker, serve) = worker();
    let taken = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                while let Some(conn) = worker.accept().unwrap() {
                    // Each record carries its own sequence number as its listener index.
                    // Recorded before accept returned, and never moved back since: a
                    // thread storing an earlier record's number late would show here.
                    let seq = conn.listener() as u64;
                    let recorded = serve.ledger().0;
                    assert!(recorded >= seq, "record {seq} taken, ledger at {recorded}");
                    taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    drop(conn);
                }
            });
        }
        let sent = std::panic::catch_unwind(|| {
            (1..=RECORDS)
                .map(|seq| hand_from(&serve, seq, seq as u32, &listener).0)
                .collect::<Vec<_>>()
        });
        // Whatever happened, the channel ends, so the threads do too.
        rustix::net::shutdown(&serve.channel, rustix::net::Shutdown::Write).unwrap();
        let _clients = sent.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    });
    assert_eq!(taken.into_inner(), RECORDS);
    assert_eq!(serve.ledger(), (RECORDS, RECORDS));
}

/// Serve keeps its descriptor of a connection until it reads the ledger, which may be
/// after the worker is done: dropping the connection still ends it for the client at
/// once.
#[test]
fn the_client_sees_the_end_when_the_worker_drops_the_connection_while_serve_holds_it() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (worker, serve) = worker();
    let (mut client, serves_copy) = hand_from(&serve, 1, 1, &listener);
    let mut conn = worker.accept().unwrap().expect("a connection");
    conn.write_all(b"pong").unwrap();
    drop(conn);
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    client
        .read_to_end(&mut got)
        .expect("the end of the connection, not a timeout");
    assert_eq!(got, b"pong");
    drop(serves_copy);
}

/// `accept_tcp` handed a Unix connection, in either form, refuses it: the client sees
/// the end, and the connection counts as done.
#[test]
fn accept_tcp_ends_a_unix_connection_and_counts_it_done() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (worker, serve) = worker();
    for seq in [1, 2] {
        let (mut client, served) = std::os::unix::net::UnixStream::pair().unwrap();
        send_hand(&serve, seq, 0, served);
        let err = worker.accept_tcp().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        assert_eq!(serve.ledger(), (seq, seq));
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }

    let _client = hand(&serve, 3, &listener);
    let _conn = worker.accept().unwrap().expect("a connection");
    assert_eq!(serve.ledger(), (3, 2));
}

/// Records of neither form are refused, not taken, and what they carried is closed.
#[test]
fn a_damaged_record_is_refused_not_taken() {
    let (worker, serve) = worker();
    let hand = Hand {
        seq: 1,
        listener: 0,
    };
    let mut reserved = hand.header();
    reserved[15] = 1;
    let info_size = hand.with_info(&[0; HAND_SIZE - HEADER_SIZE]);
    for record in [&info_size[..HAND_SIZE - 1], &hand.header(), &reserved] {
        serve.send(record).unwrap();
        let err = worker.accept().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    }
    // An info record with a descriptor attached: the descriptor is closed.
    let (mut client, served) = std::os::unix::net::UnixStream::pair().unwrap();
    send_with(&serve, &info_size, served);
    let err = worker.accept().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert_eq!(client.read(&mut [0; 1]).unwrap(), 0, "closed, not kept");
    assert_eq!(serve.ledger(), (0, 0), "nothing taken");
}

/// Sends `bytes` with `fd` attached.
fn send_with(serve: &Serve, bytes: &[u8], fd: impl AsFd) {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd.as_fd()];
    control.push(SendAncillaryMessage::ScmRights(&fds));
    let sent = rustix::net::sendmsg(
        &serve.channel,
        &[std::io::IoSlice::new(bytes)],
        &mut control,
        SendFlags::empty(),
    );
    assert_eq!(sent.unwrap(), bytes.len());
}

#[cfg(feature = "tokio")]
#[test]
fn the_tokio_worker_takes_connections_as_tokio_streams() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    rt.block_on(async {
        let (worker, serve) = worker();
        let worker = worker.into_async().unwrap();
        assert_eq!(worker.listener_names(), ["web", "admin"]);
        let mut client = hand(&serve, 1, &listener);
        client.write_all(b"ping").unwrap();
        let mut conn = worker.accept().await.unwrap().expect("a connection");
        assert_eq!(serve.ledger(), (1, 0));
        let mut got = [0u8; 4];
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        conn.write_all(b"pong").await.unwrap();
        drop(conn);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).unwrap();
        assert_eq!(
            answer, b"pong",
            "the end too, as soon as the worker dropped it"
        );
        assert_eq!(serve.ledger(), (1, 1));
        let _clients = [hand(&serve, 2, &listener), hand(&serve, 3, &listener)];
        let two = worker.accept().await.unwrap().expect("a connection");
        assert_eq!(serve.ledger(), (2, 1));
        let three = worker.accept().await.unwrap().expect("a connection");
        assert_eq!(serve.ledger(), (3, 1));
        drop((two, three));
        assert_eq!(serve.ledger(), (3, 3));
        // The end of the channel, while the worker waits, ends accept.
        let (ended, ()) = tokio::join!(worker.accept(), async {
            tokio::task::yield_now().await;
            rustix::net::shutdown(&serve.channel, rustix::net::Shutdown::Write).unwrap();
        });
        assert!(ended.unwrap().is_none());
    });
}

/// Tests that start a child process run one at a time: a descriptor left inheritable for
/// one child must not leak into another test's child.
fn spawn_lock() -> std::sync::MutexGuard<'static, ()> {
    static SPAWN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SPAWN.lock().unwrap_or_else(|p| p.into_inner())
}

/// The variable that tells a child which part to play, and with which descriptors.
const CHILD_VAR: &str = "DISPATCH_WORKER_CHILD";

/// Starts this test binary again as a child running test `test`, to play `part` with
/// `fds` (inherited as duplicates without close-on-exec, closed here once it has
/// started; their numbers in `CHILD_VAR`) and `vars`. Waits for it, at most 20 s, and
/// says whether it passed.
fn run_child(
    test: &str,
    part: &str,
    fds: &[std::os::fd::BorrowedFd<'_>],
    vars: &[(&str, String)],
) -> bool {
    let child = spawn_child(test, part, fds, vars, std::process::Stdio::inherit());
    wait_child(child, test)
}

/// Starts the child [`run_child`] waits for, its stdout as given.
fn spawn_child(
    test: &str,
    part: &str,
    fds: &[std::os::fd::BorrowedFd<'_>],
    vars: &[(&str, String)],
    stdout: std::process::Stdio,
) -> std::process::Child {
    let _spawn = spawn_lock();
    let inherited: Vec<_> = fds.iter().map(|fd| rustix::io::dup(fd).unwrap()).collect();
    let numbers: Vec<String> = inherited
        .iter()
        .map(|fd| fd.as_raw_fd().to_string())
        .collect();
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, format!("{part}:{}", numbers.join(",")));
    for (var, value) in vars {
        command.env(var, value);
    }
    let child = command.stdout(stdout).spawn().unwrap();
    drop(inherited);
    child
}

/// Waits for a child of [`spawn_child`], at most 20 s, and says whether it passed.
fn wait_child(mut child: std::process::Child, test: &str) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child {test} still running after 20 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The descriptor numbers a child was given, in order; `None` when this process is not
/// that child (`part` names the part).
fn child_fds(part: &str) -> Option<Vec<i32>> {
    let value = std::env::var(CHILD_VAR).ok()?;
    let fds = value.strip_prefix(part)?.strip_prefix(':')?;
    Some(fds.split(',').map(|n| n.parse().unwrap()).collect())
}

/// Only serve, the process that made the channel, may hand a worker a connection: a
/// record from any other process that holds serve's end (here a child of this test,
/// playing a process that got hold of it) is refused, what it carried is closed, and
/// nothing is taken. Serve's own records still are.
#[test]
fn a_record_from_a_process_other_than_serve_is_refused_and_closed() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (worker, serve) = worker();
    let (mut client, served) = std::os::unix::net::UnixStream::pair().unwrap();
    let passed = run_child(
        "child_sends_a_connection_on_serves_end",
        "intruder",
        &[serve.channel.as_fd(), served.as_fd()],
        &[],
    );
    assert!(passed, "the child could send on serve's end");
    drop(served);
    let err = worker.accept().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    assert_eq!(client.read(&mut [0; 1]).unwrap(), 0, "closed, not kept");
    assert_eq!(serve.ledger(), (0, 0), "nothing taken");

    let _client = hand(&serve, 2, &listener);
    let _conn = worker.accept().unwrap().expect("serve's record");
    assert_eq!(serve.ledger(), (2, 0));
}

#[test]
fn child_sends_a_connection_on_serves_end() {
    let Some(fds) = child_fds("intruder") else {
        return;
    };
    // SAFETY: the parent left these two open for this process and named them.
    let (channel, conn) = unsafe {
        (
            std::os::fd::BorrowedFd::borrow_raw(fds[0]),
            std::os::fd::BorrowedFd::borrow_raw(fds[1]),
        )
    };
    let hand = Hand {
        seq: 1,
        listener: 0,
    };
    hand.send_descriptor(channel, conn).unwrap();
}

/// A worker out of descriptors gets `EMFILE`, and the connection waits: it takes it once
/// a descriptor is free, never loses it or takes the next one first. Both forms: an info
/// record (redeemed after it left the channel: the worker keeps it) and a descriptor
/// record (left queued). (`RLIMIT_NOFILE` is per process: the worker is a child, and the
/// info is duplicated for its pid once its table is full.)
#[test]
fn a_worker_out_of_descriptors_takes_the_connection_later() {
    let parts = [
        "worker",
        #[cfg(feature = "tokio")]
        "tokio-worker",
    ];
    for part in parts {
        out_of_descriptors(part);
    }
}

/// The parent's side of [`a_worker_out_of_descriptors_takes_the_connection_later`], with
/// a child playing `part`.
fn out_of_descriptors(part: &str) {
    use std::io::BufRead;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (ours, theirs) = channel_pair();
    let (ledger, ledger_fd) = Ledger::create().unwrap();
    let serve = Serve {
        channel: UnixDatagram::from(ours),
        ledger,
    };
    let test = "child_worker_out_of_descriptors";
    let mut child = spawn_child(
        test,
        part,
        &[theirs.as_fd(), ledger_fd.as_fd()],
        &[],
        std::process::Stdio::piped(),
    );
    let mut said = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        // The harness's "test NAME ... " may start the line.
        said.any(|line| line.is_ok_and(|l| l.ends_with("table full"))),
        "the {part} child did not fill its table"
    );
    // Each connection answered before the next is sent: the worker retries on an empty
    // channel, with the connection it could not take in hand only.
    for seq in [1, 2] {
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (conn, _) = listener.accept().unwrap();
        let hand = Hand { seq, listener: 0 };
        if seq == 1 {
            let info = sockshare::duplicate(&conn, child.id()).unwrap();
            hand.send_info(serve.channel.as_fd(), &info.to_bytes_a())
        } else {
            hand.send_descriptor(serve.channel.as_fd(), conn.as_fd())
        }
        .unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut got = String::new();
        client.read_to_string(&mut got).unwrap();
        assert_eq!(got, format!("pong {seq}"), "{part}");
    }
    assert!(wait_child(child, test), "the {part} child failed");
    assert_eq!(serve.ledger(), (2, 2), "{part}");
}

#[test]
fn child_worker_out_of_descriptors() {
    if let Some(fds) = child_fds("worker") {
        let worker = worker_in_child(&fds);
        takes_each_connection_once_a_descriptor_is_free(|| worker.accept());
    }
    #[cfg(feature = "tokio")]
    if let Some(fds) = child_fds("tokio-worker") {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _entered = rt.enter();
        let worker = worker_in_child(&fds).into_async().unwrap();
        takes_each_connection_once_a_descriptor_is_free(|| rt.block_on(worker.accept()));
    }
}

/// The worker a child was given the channel and ledger of.
fn worker_in_child(fds: &[i32]) -> Worker {
    std::env::set_var(FD_VAR, fds[0].to_string());
    std::env::set_var(LEDGER_VAR, fds[1].to_string());
    Worker::from_env().unwrap()
}

/// The child's side: fills its table, says so, then takes two connections with
/// `accept`, each first refused with `EMFILE`, then taken once a descriptor is free.
fn takes_each_connection_once_a_descriptor_is_free<C: std::os::fd::AsFd>(
    mut accept: impl FnMut() -> std::io::Result<Option<C>>,
) {
    let mut fillers = nofile::fill_descriptor_table(64);
    // Past the test harness's capture of `println!`.
    std::io::stdout().write_all(b"table full\n").unwrap();
    std::io::stdout().flush().unwrap();
    // Each connection kept, so its descriptor is not free for the next one.
    let mut kept = Vec::new();
    for seq in [1, 2] {
        let err = accept().err().expect("EMFILE");
        assert_eq!(err.raw_os_error(), Some(libc::EMFILE), "{err}");
        fillers.pop();
        let conn = accept().unwrap().expect("the connection, still waiting");
        let pong = format!("pong {seq}");
        assert_eq!(rustix::io::write(conn.as_fd(), pong.as_bytes()), Ok(6));
        rustix::net::shutdown(conn.as_fd(), rustix::net::Shutdown::Write).unwrap();
        kept.push(conn);
    }
}
