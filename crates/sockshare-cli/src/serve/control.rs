//! The control socket: how `sockshare reload --pid PID` asks a running serve for a reload
//! and learns how it ended.
//!
//! The socket is a Unix stream listener at the abstract name `sockshare-serve/<pid>/control`.
//! The client sends the line `reload`; serve answers with one line when the reload has
//! ended, `ok ...` or `failed: ...`, and closes. Both ends check who the other is: serve
//! answers only its own user and root (`SO_PEERCRED`), and the client talks only to the
//! pid it was given, so a process that took the name first learns nothing and decides
//! nothing.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::Duration;

/// The abstract name of serve `pid`'s control socket.
fn name(pid: u32) -> String {
    format!("sockshare-serve/{pid}/control")
}

/// How long serve waits for a client's request line once it has connected.
const REQUEST_WAIT: Duration = Duration::from_millis(200);

/// Serve's end.
pub struct ControlSocket {
    listener: UnixListener,
}

/// A request from a client allowed to make it.
pub enum Request {
    /// `reload`: the stream gets the outcome.
    Reload(UnixStream),
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
        Ok(ControlSocket { listener })
    }

    /// The next request of a client of this user or root, or `None` when none is waiting.
    /// A client of another user, or one that sends something else, is told so and closed.
    pub fn next(&self) -> Option<Request> {
        loop {
            let (mut stream, _) = self.listener.accept().ok()?;
            let me = rustix::process::geteuid();
            let allowed = rustix::net::sockopt::socket_peercred(&stream)
                .is_ok_and(|c| c.uid == me || c.uid.is_root());
            if !allowed {
                let _ = stream.write_all(b"failed: permission denied\n");
                continue;
            }
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(REQUEST_WAIT));
            let mut line = String::new();
            // At most one short line: a client cannot make serve read on.
            let _ = io::Read::take(BufReader::new(&stream), 64).read_line(&mut line);
            match line.trim() {
                "reload" => return Some(Request::Reload(stream)),
                other => {
                    let _ = writeln!(stream, "failed: unknown request {other:?}");
                }
            }
        }
    }
}

impl AsFd for ControlSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
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
