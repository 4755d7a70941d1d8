//! `sockshare::dispatch::Worker` against this test playing serve's part of the channel
//! protocol with real sockets: records in, reports out, the end of the channel. (Serve
//! itself, with real worker processes, is tested in crates/sockshare-cli.)

#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;

use rustix::net::{AddressFamily, SocketFlags, SocketType};
use sockshare::dispatch::{Hand, Report, Worker, FD_VAR, HAND_SIZE, NAMES_VAR, REPORT_SIZE};

/// Serve's end of a worker's channel, with the worker made from the other end through the
/// environment, as a worker process would be.
fn worker() -> (Worker, UnixDatagram) {
    let _env = env_lock();
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    std::env::set_var(FD_VAR, theirs.as_raw_fd().to_string());
    std::env::set_var(NAMES_VAR, "web:admin");
    // from_env owns the descriptor from here.
    std::mem::forget(theirs);
    let worker = Worker::from_env().unwrap();
    assert!(
        std::env::var_os(FD_VAR).is_none(),
        "the variable stays for children"
    );
    // SOCK_SEQPACKET records read and write like datagrams on a connected socket.
    (worker, UnixDatagram::from(ours))
}

/// The tests of this file run on parallel threads; the variables are process-wide.
fn env_lock() -> std::sync::MutexGuard<'static, ()> {
    static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ENV.lock().unwrap_or_else(|p| p.into_inner())
}

/// A variable naming a descriptor that is not a channel (here a file this test owns) is
/// refused, and the descriptor is left as it was: open, and still the file's.
#[test]
fn a_wrong_descriptor_in_the_variable_is_refused_and_left_open() {
    let _env = env_lock();
    let file = std::fs::File::open("/dev/null").unwrap();
    std::env::set_var(FD_VAR, file.as_raw_fd().to_string());
    let err = Worker::from_env().unwrap_err();
    std::env::remove_var(FD_VAR);
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    let flags = rustix::io::fcntl_getfd(&file).expect("the file's descriptor still open");
    assert!(
        flags.contains(rustix::io::FdFlags::CLOEXEC),
        "flags unchanged"
    );
}

/// A TCP connection handed the way serve hands it: duplicated for this process, the
/// record sent. Returns the client's end, and serve's own descriptor, which serve keeps
/// until the worker reports the connection taken.
fn hand_kept(serve: &UnixDatagram, seq: u64, listener: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (conn, _) = listener.accept().unwrap();
    let info = sockshare::duplicate(&conn, std::process::id()).unwrap();
    let record = Hand {
        seq,
        listener: 1,
        info: info.to_bytes_a(),
    };
    serve.send(&record.to_bytes()).unwrap();
    (client, conn)
}

/// [`hand_kept`], serve's descriptor closed at once.
fn hand(serve: &UnixDatagram, seq: u64, listener: &TcpListener) -> TcpStream {
    hand_kept(serve, seq, listener).0
}

fn report(serve: &UnixDatagram) -> Report {
    let mut bytes = [0u8; REPORT_SIZE + 1];
    let n = serve.recv(&mut bytes).unwrap();
    Report::from_bytes(&bytes[..n]).expect("a report of the wrong size")
}

#[test]
fn a_worker_takes_reports_and_stops_at_the_end_of_the_channel() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (worker, serve) = worker();
    assert_eq!(worker.listener_names(), ["web", "admin"]);

    let mut client = hand(&serve, 7, &listener);
    let mut conn = worker.accept().unwrap().expect("a connection");
    assert_eq!(conn.listener(), 1);
    // Taken is reported before the worker could do anything with it.
    assert_eq!(report(&serve), Report { taken: 7, done: 0 });
    conn.write_all(b"pong").unwrap();
    drop(conn);
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"pong");

    // One connection done and none queued: the worker waits without a report, and the
    // done count rides on the next "taken" one (had it sent one alone, that would be the
    // next report read). accept_tcp gives the peer too.
    let client = std::thread::scope(|scope| {
        let waiting = scope.spawn(|| worker.accept_tcp().unwrap().expect("a connection"));
        std::thread::sleep(std::time::Duration::from_millis(50));
        let client = hand(&serve, 8, &listener);
        let (conn, peer) = waiting.join().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        assert_eq!(report(&serve), Report { taken: 8, done: 1 });
        drop(conn);
        client
    });
    drop(client);
    let _clients = [hand(&serve, 9, &listener), hand(&serve, 10, &listener)];
    let nine = worker.accept().unwrap().expect("a connection");
    assert_eq!(report(&serve), Report { taken: 9, done: 2 });
    let ten = worker.accept().unwrap().expect("a connection");
    assert_eq!(report(&serve), Report { taken: 10, done: 2 });
    drop((nine, ten));

    // Two done since the last report, nothing queued: the worker reports them before it
    // waits (serve's count of its load is never more than one behind).
    std::thread::scope(|scope| {
        let waiting = scope.spawn(|| worker.accept().unwrap().is_none());
        assert_eq!(report(&serve), Report { taken: 0, done: 4 });
        rustix::net::shutdown(&serve, rustix::net::Shutdown::Write).unwrap();
        assert!(
            waiting.join().unwrap(),
            "the end of the channel ends accept"
        );
    });
}

/// Serve keeps its descriptor of a connection until it reads the "taken" report, which
/// may be after the worker is done: dropping the connection still ends it for the client
/// at once.
#[test]
fn the_client_sees_the_end_when_the_worker_drops_the_connection_while_serve_holds_it() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (worker, serve) = worker();
    let (mut client, serves_copy) = hand_kept(&serve, 1, &listener);
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
/// connection counts as done (the next report says so).
#[test]
fn accept_tcp_ends_a_unix_connection_and_counts_it_done() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (worker, serve) = worker();
    let (mut client, served) = std::os::unix::net::UnixStream::pair().unwrap();
    let info = sockshare::duplicate(&served, std::process::id()).unwrap();
    drop(served);
    let record = Hand {
        seq: 1,
        listener: 0,
        info: info.to_bytes_a(),
    };
    serve.send(&record.to_bytes()).unwrap();
    let err = worker.accept_tcp().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert_eq!(report(&serve), Report { taken: 1, done: 0 });
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    let _client = hand(&serve, 2, &listener);
    let _conn = worker.accept().unwrap().expect("a connection");
    assert_eq!(report(&serve), Report { taken: 2, done: 1 });
}

#[test]
fn a_damaged_record_is_refused_not_taken() {
    let (worker, serve) = worker();

    serve.send(&[0u8; HAND_SIZE - 1]).unwrap();
    let err = worker.accept().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
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
        let mut client = hand(&serve, 1, &listener);
        client.write_all(b"ping").unwrap();
        let mut conn = worker.accept().await.unwrap().expect("a connection");
        assert_eq!(report(&serve), Report { taken: 1, done: 0 });
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
        // One done: it rides on the next "taken" report.
        let _clients = [hand(&serve, 2, &listener), hand(&serve, 3, &listener)];
        let two = worker.accept().await.unwrap().expect("a connection");
        assert_eq!(report(&serve), Report { taken: 2, done: 1 });
        let three = worker.accept().await.unwrap().expect("a connection");
        assert_eq!(report(&serve), Report { taken: 3, done: 1 });
        drop((two, three));
        // Two done and nothing queued: the done count goes out before the worker waits;
        // then the end of the channel ends accept.
        let serve = std::sync::Arc::new(serve);
        let ends = serve.clone();
        let (ended, done) = tokio::join!(worker.accept(), async move {
            let done = tokio::task::spawn_blocking(move || report(&ends))
                .await
                .unwrap();
            rustix::net::shutdown(&*serve, rustix::net::Shutdown::Write).unwrap();
            done
        });
        assert_eq!(done, Report { taken: 0, done: 3 });
        assert!(ended.unwrap().is_none());
    });
}
