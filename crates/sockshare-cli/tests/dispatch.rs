//! `sockshare serve --dispatch` with real processes: `sockshare hello` workers take their
//! connections from serve through `sockshare::dispatch::Worker`.

#![cfg(target_os = "linux")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{free_port, signal, wait_exit};

const SOCKSHARE: &str = env!("CARGO_BIN_EXE_sockshare");

/// A running serve, stopped (SIGTERM, then SIGKILL) and reaped when dropped.
struct Serve {
    child: Child,
    addr: SocketAddr,
}

impl Serve {
    fn start(workers: u32, extra: &[&str]) -> Serve {
        Serve::start_with(workers, extra, &[])
    }

    /// With `hello` options for the workers.
    fn start_with(workers: u32, extra: &[&str], hello: &[&str]) -> Serve {
        let command: Vec<&str> = [SOCKSHARE, "hello"].iter().chain(hello).copied().collect();
        Serve::start_command(workers, extra, &command)
    }

    /// With `command` as the workers.
    fn start_command(workers: u32, extra: &[&str], command: &[&str]) -> Serve {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut child = Command::new(SOCKSHARE)
            .args(["serve", "--dispatch", "--workers", &workers.to_string()])
            .args(["--listen", &format!("web=tcp:{addr}")])
            .args(extra)
            .arg("--")
            .args(command)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "serve never listened on {addr}");
            assert!(child.try_wait().unwrap().is_none(), "serve exited at start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Serve { child, addr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `sockshare reload --pid`, which waits for the new generation to be ready.
    fn reload(&self) {
        let out = Command::new(SOCKSHARE)
            .args([
                "reload",
                "--pid",
                &self.pid().to_string(),
                "--timeout",
                "30",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "reload failed: {out:?}");
    }

    /// SIGTERM, and serve's exit status within 30 s.
    fn stop(mut self) -> std::process::ExitStatus {
        signal(self.pid(), libc::SIGTERM);
        wait_exit(&mut self.child, Duration::from_secs(30)).expect("serve did not stop")
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            signal(self.pid(), libc::SIGTERM);
            if wait_exit(&mut self.child, Duration::from_secs(10)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// One request on a new connection: the answering worker's pid and generation, or the
/// failure.
fn ask(addr: SocketAddr, wait: Duration) -> Result<(u32, u64), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(b"hi\n").map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    parse(&line)
}

/// "hello from pid P generation G" → (P, G).
fn parse(line: &str) -> Result<(u32, u64), String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["hello", "from", "pid", pid, "generation", g] => Ok((
            pid.parse().map_err(|_| line.to_owned())?,
            g.parse().map_err(|_| line.to_owned())?,
        )),
        _ => Err(format!("answer {line:?}")),
    }
}

/// A new connection with its request sent, the answer not read.
fn request(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"hi\n").unwrap();
    s
}

/// `n` connections, each with its request sent, answers not read.
fn requests(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n).map(|_| request(addr)).collect()
}

/// The pids that answered `n` sequential requests, with their counts. Each connection is
/// read to its end, which the worker makes after it counts the connection done: every
/// worker is at load 0 when the next one comes.
fn spread(addr: SocketAddr, n: usize) -> HashMap<u32, usize> {
    let mut by_pid = HashMap::new();
    for _ in 0..n {
        let mut s = request(addr);
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let (pid, _) = parse(&answer).unwrap();
        *by_pid.entry(pid).or_default() += 1;
    }
    by_pid
}

#[test]
fn connections_spread_evenly_over_the_workers() {
    let serve = Serve::start(4, &[]);
    let by_pid = spread(serve.addr, 200);
    assert_eq!(by_pid.len(), 4, "not every worker served: {by_pid:?}");
    let (max, min) = (
        by_pid.values().max().unwrap(),
        by_pid.values().min().unwrap(),
    );
    // One client at a time, each to the connection's end: every worker is at load 0
    // when the next one comes, so the choice is round-robin.
    assert!(max - min <= 2, "uneven: {by_pid:?}");
    assert!(serve.stop().success());
}

#[test]
fn a_stalled_worker_gets_at_most_its_queue_and_serves_it_when_resumed() {
    // Each answer takes 50 ms, so under a burst every worker has a load: without the
    // queue bound, the least loaded choice would soon pick the stalled one again.
    let serve = Serve::start_with(3, &["--dispatch-queue", "2"], &["--answer-delay", "50"]);
    let stalled = ask(serve.addr, Duration::from_secs(10)).unwrap().0;
    signal(stalled, libc::SIGSTOP);
    let burst = requests(serve.addr, 40);
    // 40 answers of 50 ms by two workers take about a second: 5 s is plenty for all but
    // those behind the stalled worker.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut waiting = Vec::new();
    for s in burst {
        let left = deadline.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(50))))
            .unwrap();
        let mut line = String::new();
        match BufReader::new(&s).read_line(&mut line) {
            Ok(n) if n > 0 => assert_ne!(parse(&line).unwrap().0, stalled),
            _ => waiting.push(s),
        }
    }
    signal(stalled, libc::SIGCONT);
    assert!(
        waiting.len() <= 2,
        "{} connections waited behind the stalled worker, its queue is 2",
        waiting.len()
    );
    // Nothing was lost: the stalled worker answers its share once it runs again.
    for mut s in waiting {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut rest = String::new();
        s.read_to_string(&mut rest).unwrap();
        assert_eq!(parse(&rest).unwrap().0, stalled);
    }
    assert!(serve.stop().success());
}

#[test]
fn connections_a_killed_worker_never_took_go_to_its_successor() {
    let serve = Serve::start(1, &["--dispatch-queue", "4"]);
    let first = ask(serve.addr, Duration::from_secs(10)).unwrap().0;
    signal(first, libc::SIGSTOP);
    // Handed to the stopped worker (its queue has room for all three), never taken.
    let clients = requests(serve.addr, 3);
    std::thread::sleep(Duration::from_millis(300));
    signal(first, libc::SIGKILL);
    for mut s in clients {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let (pid, _) = parse(&answer).unwrap();
        assert_ne!(pid, first, "answered by the killed worker");
    }
    assert!(serve.stop().success());
}

/// A hostile worker shrinks its ledger before it serves: serve reads that memory at every
/// hand-out, and a page cut off under its mapping would kill it with SIGBUS. The ledger is
/// sealed, so the truncation fails and serve, and the worker, go on.
#[test]
fn a_worker_cannot_cut_its_ledger_from_under_serve() {
    let script = r#"truncate -s 0 "/proc/self/fd/$SOCKSHARE_DISPATCH_LEDGER_FD"; exec "$0" hello"#;
    let serve = Serve::start_command(1, &[], &["sh", "-c", script, SOCKSHARE]);
    for _ in 0..5 {
        ask(serve.addr, Duration::from_secs(10)).expect("an answer after the truncation");
    }
    assert!(serve.stop().success(), "serve survived and stopped cleanly");
}

#[test]
fn reloads_under_dispatch_refuse_nothing_and_move_to_the_new_generation() {
    let serve = Serve::start(2, &[]);
    let addr = serve.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    seen.push(ask(addr, Duration::from_secs(10)));
                }
                seen
            })
        })
        .collect();
    for _ in 0..5 {
        serve.reload();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let results: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let generations: std::collections::HashSet<u64> =
        results.iter().map(|r| r.as_ref().unwrap().1).collect();
    assert!(
        generations.len() > 1,
        "only generations {generations:?} answered"
    );
    // New connections go to the serving generation only.
    assert_eq!(ask(addr, Duration::from_secs(10)).unwrap().1, 6);
    assert!(serve.stop().success());
}

#[test]
fn datagram_listeners_are_shared_whole_under_dispatch() {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let at = udp.local_addr().unwrap();
    drop(udp);
    let serve = Serve::start(2, &["--listen", &format!("dns=udp:{at}")]);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.send_to(b"hi", at).unwrap();
    let mut buf = [0u8; 128];
    let n = client.recv(&mut buf).unwrap();
    parse(std::str::from_utf8(&buf[..n]).unwrap()).unwrap();
    // And TCP still goes through dispatch.
    ask(serve.addr, Duration::from_secs(10)).unwrap();
    assert!(serve.stop().success());
}
