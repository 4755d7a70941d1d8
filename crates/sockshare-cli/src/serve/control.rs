//! The control socket: how `sockshare reload --pid PID` asks a running serve for a reload
//! and learns how it ended.
//!
//! The socket is a Unix stream listener at the abstract name `sockshare-serve/<pid>/control`.
//! The client sends the line `reload`; serve answers with one line when the reload has
//! ended, `ok ...` or `failed: ...`, and closes. Both ends check who the other is: serve
//! answers only its own user and root (`SO_PEERCRED`), and the client talks only to the
//! pid it was given, so a process that took the name first learns nothing and decides
//! nothing. Serve's loop never waits for a client: it watches the clients that have not
//! sent their line yet with its other descriptors, and gives each `REQUEST_WAIT`.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::{Duration, Instant};

/// The abstract name of serve `pid`'s control socket.
fn name(pid: u32) -> String {
    format!("sockshare-serve/{pid}/control")
}

/// How long serve waits for a client's request line once it has connected.
const REQUEST_WAIT: Duration = Duration::from_millis(200);
/// The longest request line: a client cannot make serve read on.
const REQUEST_MAX: usize = 64;

/// Serve's end: the listener, and the clients that have connected and not yet sent
/// their request. Serve's loop never waits for a client: it watches them with its other
/// descriptors and reads what has come.
pub struct ControlSocket {
    listener: UnixListener,
    waiting: Vec<Waiting>,
}

/// A client allowed to ask, whose request line has not all come yet.
struct Waiting {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

/// A request from a client allowed to make it.
pub enum Request {
    /// `reload`: the stream gets the outcome.
    Reload(UnixStream),
}

/// What a client's stream has given so far.
enum Got {
    /// More may come.
    Partial,
    /// A whole line (or the client's end), to act on.
    Line(String),
}

impl ControlSocket {
    /// Listens at this process's name.
    ///
    /// # Errors
    ///
    /// `EADDRINUSE` when another process holds the name.
    pub fn bind() -> io::Result<ControlSocket> {
        let addr = SocketAddr::from_abstract_name(name(std::process::id()))?;
        let listener = UnixListener::bind_addr(&addr)?;
        listener.set_nonblocking(true)?;
        Ok(ControlSocket {
            listener,
            waiting: Vec::new(),
        })
    }

    /// What serve's loop waits on for this socket: the listener, and each client whose
    /// request has not come yet.
    pub fn watch(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        std::iter::once(self.listener.as_fd()).chain(self.waiting.iter().map(|w| w.stream.as_fd()))
    }

    /// When a waiting client's time runs out, if any client waits.
    pub fn deadline(&self) -> Option<Instant> {
        self.waiting.iter().map(|w| w.deadline).min()
    }

    /// The requests that have come, without waiting: accepts the clients waiting on the
    /// listener when it is in `ready` (raw descriptor numbers), reads what the clients in
    /// `ready` have sent, and closes those whose time ran out by `now`. A client of
    /// another user, one that sends something else, and one that sends nothing in
    /// `REQUEST_WAIT` are told so and closed.
    pub fn requests(&mut self, ready: &[i32], now: Instant) -> Vec<Request> {
        if ready.contains(&self.listener.as_raw_fd()) {
            self.accept_all(now);
        }
        let mut requests = Vec::new();
        let mut i = 0;
        while i < self.waiting.len() {
            let w = &mut self.waiting[i];
            let got = if ready.contains(&w.stream.as_raw_fd()) {
                w.read()
            } else {
                Got::Partial
            };
            match got {
                Got::Partial if now < w.deadline => i += 1,
                Got::Partial => {
                    let mut w = self.waiting.swap_remove(i);
                    let _ = writeln!(
                        w.stream,
                        "failed: no request within {} ms",
                        REQUEST_WAIT.as_millis()
                    );
                }
                Got::Line(line) => {
                    let mut w = self.waiting.swap_remove(i);
                    match line.trim() {
                        "reload" => requests.push(Request::Reload(w.stream)),
                        other => {
                            let _ = writeln!(w.stream, "failed: unknown request {other:?}");
                        }
                    }
                }
            }
        }
        requests
    }

    fn accept_all(&mut self, now: Instant) {
        while let Ok((mut stream, _)) = self.listener.accept() {
            let me = rustix::process::geteuid();
            let allowed = rustix::net::sockopt::socket_peercred(&stream)
                .is_ok_and(|c| c.uid == me || c.uid.is_root());
            if !allowed {
                let _ = stream.write_all(b"failed: permission denied\n");
                continue;
            }
            // Accepted sockets do not inherit the listener's O_NONBLOCK.
            if stream.set_nonblocking(true).is_ok() {
                self.waiting.push(Waiting {
                    stream,
                    line: Vec::new(),
                    deadline: now + REQUEST_WAIT,
                });
            }
        }
    }
}

impl Waiting {
    /// Reads what has come, without waiting.
    fn read(&mut self) -> Got {
        let mut buf = [0u8; REQUEST_MAX];
        let room = REQUEST_MAX - self.line.len();
        match io::Read::read(&mut self.stream, &mut buf[..room]) {
            Ok(n) => {
                self.line.extend_from_slice(&buf[..n]);
                // The line ends at a newline, or where the client stopped or the room did.
                let ended = n == 0 || self.line.len() == REQUEST_MAX;
                let end = self.line.iter().position(|&b| b == b'\n');
                match end.or(ended.then_some(self.line.len())) {
                    Some(end) => Got::Line(String::from_utf8_lossy(&self.line[..end]).into_owned()),
                    None => Got::Partial,
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Got::Partial,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Got::Partial,
            Err(_) => Got::Line(String::new()),
        }
    }
}

/// Tells a waiting client how its reload ended.
pub fn answer(mut stream: UnixStream, outcome: &Result<String, String>) {
    let line = match outcome {
        Ok(what) => format!("ok {what}\n"),
        Err(why) => format!("failed: {why}\n"),
    };
    // A client that gave up is no error of serve's.
    let _ = stream.write_all(line.as_bytes());
}

/// `sockshare reload --pid PID`: asks serve `pid` for a reload and waits for its outcome.
///
/// # Errors
///
/// No serve at that pid, a socket held by another process, a failed reload (the reason
/// serve gave), or no answer within `timeout`.
pub fn reload(pid: u32, timeout: Duration) -> Result<String, String> {
    let addr = SocketAddr::from_abstract_name(name(pid)).map_err(|e| e.to_string())?;
    let stream = UnixStream::connect_addr(&addr)
        .map_err(|e| format!("no sockshare serve with pid {pid} ({e})"))?;
    let peer = rustix::net::sockopt::socket_peercred(&stream).map_err(|e| e.to_string())?;
    if peer.pid.as_raw_nonzero().get() as u32 != pid {
        return Err(format!(
            "the control socket of pid {pid} is held by pid {}",
            peer.pid.as_raw_nonzero()
        ));
    }
    ask(stream, timeout)
}

/// Sends the request on a connection to serve and reads its one-line answer.
///
/// Serve may answer and close before the request is written (it refuses a client of
/// another user on sight), so a failed write is no answer yet: the refusal is still
/// waiting to be read, and is what the user must see.
fn ask(mut stream: UnixStream, timeout: Duration) -> Result<String, String> {
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let sent = stream.write_all(b"reload\n");
    let mut line = String::new();
    match BufReader::new(&stream).read_line(&mut line) {
        Ok(0) => Err(match sent {
            Err(e) => format!("serve closed the connection before the request was sent ({e})"),
            Ok(()) => "serve closed the connection without an answer".into(),
        }),
        Ok(_) => match line.trim_end().strip_prefix("ok ") {
            Some(what) => Ok(what.to_owned()),
            None => Err(line
                .trim_end()
                .strip_prefix("failed: ")
                .unwrap_or(line.trim_end())
                .to_owned()),
        },
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(format!("no answer within {} s", timeout.as_secs_f64()))
        }
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A control socket on a name of this test's own, and a way to connect to it.
    fn control(test: &str) -> (ControlSocket, impl Fn() -> UnixStream) {
        let name = format!("sockshare-test/{}/{test}", std::process::id());
        let addr = SocketAddr::from_abstract_name(&name).unwrap();
        let listener = UnixListener::bind_addr(&addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let control = ControlSocket {
            listener,
            waiting: Vec::new(),
        };
        (control, move || UnixStream::connect_addr(&addr).unwrap())
    }

    /// Every descriptor it watches, as if poll had found them all readable.
    fn all(control: &ControlSocket) -> Vec<i32> {
        control.watch().map(|fd| fd.as_raw_fd()).collect()
    }

    /// What `stream` has been sent so far, without waiting: `None` when nothing.
    fn answer(stream: &UnixStream) -> Option<String> {
        stream.set_nonblocking(true).unwrap();
        let mut line = String::new();
        match BufReader::new(stream).read_line(&mut line) {
            Ok(_) => Some(line),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("{e}"),
        }
    }

    /// A client that connects and says nothing holds up neither serve nor another
    /// client, and may still ask later (serve used to wait for its line, up to 200 ms,
    /// in its loop, then refuse it).
    #[test]
    fn a_silent_client_holds_up_no_one_and_may_still_ask() {
        let (mut control, connect) = control("silent");
        let silent = connect();
        let mut asking = connect();
        asking.write_all(b"reload\n").unwrap();
        let now = Instant::now();
        let mut got = control.requests(&all(&control), now);
        got.extend(control.requests(&all(&control), now));
        assert_eq!(got.len(), 1, "the asking client's request");
        assert_eq!(
            answer(&silent),
            None,
            "the silent one is neither answered nor closed"
        );
        (&silent).write_all(b"rel").unwrap();
        assert!(
            control.requests(&all(&control), now).is_empty(),
            "half a line"
        );
        (&silent).write_all(b"oad\n").unwrap();
        assert_eq!(control.requests(&all(&control), now).len(), 1);
        assert_eq!(control.deadline(), None, "no one waits");
    }

    /// A client that sends no whole request within the wait, or too long a line, is told
    /// so and closed.
    #[test]
    fn a_client_without_a_request_in_time_or_with_too_long_a_line_is_refused() {
        let (mut control, connect) = control("refused");
        let silent = connect();
        let long = connect();
        let now = Instant::now();
        assert!(control.requests(&all(&control), now).is_empty());
        (&long).write_all(&[b'x'; REQUEST_MAX + 1]).unwrap();
        assert!(control.requests(&all(&control), now).is_empty());
        let refusal = answer(&long).expect("an answer");
        assert!(refusal.starts_with("failed: unknown request"), "{refusal}");
        assert_eq!(control.deadline(), Some(now + REQUEST_WAIT));
        assert!(control.requests(&[], now + REQUEST_WAIT).is_empty());
        assert_eq!(
            answer(&silent).as_deref(),
            Some("failed: no request within 200 ms\n")
        );
        assert_eq!(answer(&silent).as_deref(), Some(""), "then closed");
    }

    /// The race CI met: serve refused the client and closed before the client wrote its
    /// request, so the write failed with `EPIPE`. The client must still report the refusal.
    #[test]
    fn a_refusal_written_before_the_request_is_reported() {
        let (ours, serve) = UnixStream::pair().unwrap();
        (&serve).write_all(b"failed: permission denied\n").unwrap();
        drop(serve);
        let why = ask(ours, Duration::from_secs(5)).expect_err("a refusal");
        assert_eq!(why, "permission denied");
    }

    #[test]
    fn a_close_without_an_answer_says_so() {
        let (ours, serve) = UnixStream::pair().unwrap();
        drop(serve);
        let why = ask(ours, Duration::from_secs(5)).expect_err("no answer");
        assert!(why.contains("before the request was sent"), "{why}");
    }
}
