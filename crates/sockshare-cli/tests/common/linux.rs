//! Process helpers of the Linux-only tests (serve, dispatch, the C dispatch worker).

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::process::{Child, ChildStderr, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A port free on 127.0.0.1 for TCP and UDP, and no other test's of this run. It is below
/// the ephemeral range: a port from there (what binding port 0 gives) may have become a
/// client connection's own by the time serve binds it (EADDRINUSE).
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or(32768);
    let (base, span) = (10_000, ephemeral.saturating_sub(10_000).max(1000));
    // Runs of the tests side by side start at different places.
    let start = std::process::id() as usize * 7919;
    for _ in 0..span {
        let port = (base + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port below {ephemeral}");
}

/// Waits for a child, up to `within`.
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            return Some(status);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `signal` to `pid`; whether it was sent (`false` for a process already gone).
/// Never signals a process group: pid 0 and numbers past `pid_t` are refused.
pub fn signal(pid: u32, signal: libc::c_int) -> bool {
    match libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) on a positive pid and a signal number only sends a signal.
        Ok(pid) if pid > 0 => unsafe { libc::kill(pid, signal) == 0 },
        _ => false,
    }
}

/// What a child writes to its stderr, read line by line by a thread of its own until
/// every writer (the child and whatever inherited the pipe) is gone.
pub struct StderrLog {
    text: Arc<Mutex<String>>,
    reader: JoinHandle<()>,
}

impl StderrLog {
    pub fn capture(stderr: ChildStderr) -> StderrLog {
        let text = Arc::new(Mutex::new(String::new()));
        let sink = text.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut text = sink.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&line);
                text.push('\n');
            }
        });
        StderrLog { text, reader }
    }

    /// Everything read so far.
    pub fn text(&self) -> String {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the pipe reached its end (every writer closed it).
    pub fn is_finished(&self) -> bool {
        self.reader.is_finished()
    }

    /// Waits until the text has `needle`; returns the text. Fails once the text is
    /// complete (every writer gone) without it, or after `limit`. Completeness, not the
    /// child's exit, ends the wait: the child's last lines may still be in the pipe when
    /// it has exited.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> String {
        let end = Instant::now() + limit;
        loop {
            // Asked before the text is read, so a finished log is read whole.
            let complete = self.is_finished();
            let text = self.text();
            if text.contains(needle) {
                return text;
            }
            assert!(
                !complete,
                "no {needle:?} in the log, which is complete (its writers exited):\n{text}"
            );
            assert!(
                Instant::now() < end,
                "no {needle:?} in the log within {limit:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
