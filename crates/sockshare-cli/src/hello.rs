//! `sockshare hello`: a small socket-activated server to try `sockshare serve` with, and
//! the worker its tests and reload benchmark run.
//!
//! It takes its sockets the way any socket-activated server does, with the `listenfd`
//! crate (sd_listen_fds(3): `LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`), says `READY=1`
//! on `NOTIFY_SOCKET` (sd_notify(3)), and answers every connection, and every datagram,
//! with one line: `hello from pid PID generation G`. On SIGTERM or SIGINT it stops
//! accepting, finishes the connection in hand, and exits 0. Under `serve --dispatch` it
//! takes its connections from serve with `sockshare::dispatch::Worker` instead, and
//! stops when serve ends its channel.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Options of `sockshare hello`.
#[derive(clap::Args)]
pub struct HelloArgs {
    /// Seconds to wait before saying READY=1.
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    ready_delay: f64,
    /// Never say READY=1 (a release that never becomes ready).
    #[arg(long)]
    no_ready: bool,
    /// Milliseconds to wait before each answer (so a drain has something to finish).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    answer_delay: u64,
    /// Ignore SIGTERM (a worker that never drains: serve kills it at the deadline).
    #[arg(long)]
    ignore_term: bool,
}

enum Socket {
    Tcp(TcpListener),
    Unix(UnixListener),
    Udp(UdpSocket),
}

/// Runs the server until SIGTERM or SIGINT.
///
/// # Errors
///
/// No sockets in the environment, or one of a kind it does not serve.
pub fn run(args: &HelloArgs) -> Result<()> {
    // Blocked before any thread starts, so every thread inherits the mask and the main
    // thread alone takes the signals with sigwait.
    let stop_signals = block_signals(args.ignore_term)?;
    let mut fds = listenfd::ListenFd::from_env();
    // Under `serve --dispatch`, connections come one by one from serve.
    let worker = match std::env::var_os(sockshare::dispatch::FD_VAR) {
        Some(_) => Some(sockshare::dispatch::Worker::from_env()?),
        None => None,
    };
    if fds.len() == 0 && worker.is_none() {
        return Err("no sockets: start it under `sockshare serve` (LISTEN_FDS is not set)".into());
    }
    let mut sockets = Vec::new();
    // Nonblocking, once: each thread waits in poll, and the accept after a wake-up may find
    // nothing (another worker took the client).
    for i in 0..fds.len() {
        let socket = if let Ok(Some(l)) = fds.take_tcp_listener(i) {
            let _ = l.set_nonblocking(true);
            Socket::Tcp(l)
        } else if let Ok(Some(l)) = fds.take_unix_listener(i) {
            let _ = l.set_nonblocking(true);
            Socket::Unix(l)
        } else if let Ok(Some(s)) = fds.take_udp_socket(i) {
            let _ = s.set_nonblocking(true);
            Socket::Udp(s)
        } else {
            return Err(format!("socket {i} is not a TCP, Unix stream or UDP socket").into());
        };
        sockets.push(socket);
    }
    let generation = std::env::var("SOCKSHARE_GENERATION").unwrap_or_else(|_| "?".into());
    let answer = format!(
        "hello from pid {} generation {generation}\n",
        std::process::id()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let delay = Duration::from_millis(args.answer_delay);
    let threads: Vec<_> = sockets
        .into_iter()
        .map(|socket| {
            let (stop, answer) = (stop.clone(), answer.clone());
            std::thread::spawn(move || serve(&socket, &stop, answer.as_bytes(), delay))
        })
        .collect();
    std::thread::sleep(Duration::try_from_secs_f64(args.ready_delay).unwrap_or_default());
    // Without NOTIFY_SOCKET (not under serve) there is no one to tell.
    if !args.no_ready && std::env::var_os("NOTIFY_SOCKET").is_some() {
        sockshare::dispatch::notify("READY=1\nSTATUS=answering")?;
    }
    match worker {
        // Serve ends the channel to stop a dispatch worker.
        Some(worker) => serve_dispatched(&worker, answer.as_bytes(), delay)?,
        None => wait_for(&stop_signals),
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// Accepts (or receives) until `stop`, answering each client once.
fn serve(socket: &Socket, stop: &AtomicBool, answer: &[u8], delay: Duration) {
    while !stop.load(Ordering::Relaxed) {
        if !readable(socket) {
            continue;
        }
        std::thread::sleep(delay);
        // Several workers share the socket: another may have taken the client first.
        match socket {
            Socket::Tcp(l) => {
                if let Ok((s, _)) = l.accept() {
                    reply(s, answer);
                }
            }
            Socket::Unix(l) => {
                if let Ok((s, _)) = l.accept() {
                    reply(s, answer);
                }
            }
            Socket::Udp(s) => {
                let mut buf = [0u8; 1500];
                if let Ok((_, from)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(answer, from);
                }
            }
        }
    }
}

/// Answers each connection serve hands this worker, until serve ends the channel.
fn serve_dispatched(
    worker: &sockshare::dispatch::Worker,
    answer: &[u8],
    delay: Duration,
) -> Result<()> {
    while let Some(conn) = worker.accept()? {
        std::thread::sleep(delay);
        reply(conn, answer);
    }
    Ok(())
}

/// Waits up to 50 ms for a client: the stop flag is looked at between waits.
fn readable(socket: &Socket) -> bool {
    let fd = match socket {
        Socket::Tcp(l) => l.as_fd(),
        Socket::Unix(l) => l.as_fd(),
        Socket::Udp(s) => s.as_fd(),
    };
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let wait = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 50_000_000,
    };
    rustix::event::poll(&mut fds, Some(&wait)).is_ok_and(|n| n > 0)
}

/// Reads the client's request line (or its end), then answers.
fn reply(mut stream: impl Read + Write, answer: &[u8]) {
    let mut line = String::new();
    let _ = BufReader::new(&mut stream).read_line(&mut line);
    let _ = stream.write_all(answer);
}

/// Blocks SIGTERM (unless ignored) and SIGINT, returning the set `wait_for` takes.
fn block_signals(ignore_term: bool) -> Result<libc::sigset_t> {
    if ignore_term {
        // SAFETY: sets SIGTERM's disposition to ignored; no handler runs.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
        Ok(crate::serve::block_signals(&[libc::SIGINT])?)
    } else {
        Ok(crate::serve::block_signals(&[libc::SIGINT, libc::SIGTERM])?)
    }
}

fn wait_for(set: &libc::sigset_t) {
    let mut signal = 0;
    // SAFETY: `set` is an initialised sigset_t and `signal` a writable int.
    while unsafe { libc::sigwait(set, &mut signal) } != 0 {}
}
