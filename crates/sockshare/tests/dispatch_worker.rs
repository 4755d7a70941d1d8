//! `sockshare::dispatch::Worker` against this test playing serve's part of the channel
//! protocol with real sockets: records in, the ledger read, the end of the channel.
//! (Serve itself, with real worker processes, is tested in crates/sockshare-cli.)

#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;

use rustix::net::{AddressFamily, SocketFlags, SocketType};
use sockshare::dispatch::{Hand, Ledger, Worker, FD_VAR, HAND_SIZE, LEDGER_VAR, NAMES_VAR};

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

/// Serve's ends, with the worker made from the others through the environment, as a
/// worker process would be.
fn worker() -> (Worker, Serve) {
    let _env = env_lock();
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
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
    let (channel, _serve) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
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

/// Hands `socket` the way serve does: duplicated for this process, the record sent.
fn send_hand(serve: &Serve, seq: u64, index: u32, socket: impl std::os::fd::AsFd) {
    let info = sockshare::duplicate(socket.as_fd(), std::process::id()).unwrap();
    let record = Hand {
        seq,
        listener: index,
        info: info.to_bytes_a(),
    };
    serve.send(&record.to_bytes()).unwrap();
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
        let mut clients = Vec::new();
        for seq in 1..=RECORDS {
            clients.push(hand_from(&serve, seq, seq as u32, &listener).0);
        }
        rustix::net::shutdown(&serve.channel, rustix::net::Shutdown::Write).unwrap();
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

/// `accept_tcp` handed a Unix connection refuses it: the client sees the end, and the
/// connection counts as done.
#[test]
fn accept_tcp_ends_a_unix_connection_and_counts_it_done() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (worker, serve) = worker();
    let (mut client, served) = std::os::unix::net::UnixStream::pair().unwrap();
    send_hand(&serve, 1, 0, served);
    let err = worker.accept_tcp().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert_eq!(serve.ledger(), (1, 1));
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    let _client = hand(&serve, 2, &listener);
    let _conn = worker.accept().unwrap().expect("a connection");
    assert_eq!(serve.ledger(), (2, 1));
}

#[test]
fn a_damaged_record_is_refused_not_taken() {
    let (worker, serve) = worker();

    serve.send(&[0u8; HAND_SIZE - 1]).unwrap();
    let err = worker.accept().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert_eq!(serve.ledger(), (0, 0), "nothing taken");
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
