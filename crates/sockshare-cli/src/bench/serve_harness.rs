//! What the serve benchmarks share: a free loopback port, a `sockshare serve` started and
//! stopped under the harness, which is its service manager (it reads serve's `READY=1`).

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Serve's timeouts in the run: generous, so only a stuck process reaches them.
pub(super) const READY_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// A loopback port free for TCP and UDP, below the ephemeral range: a client's connection
/// can then never take it as its own local port while a naive restart has it unbound.
pub(super) fn free_port() -> Result<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (first, last) = (10_000u16.min(low / 2), low.saturating_sub(1));
    let span = u32::from(last - first) + 1;
    let start = std::process::id() * 7919 % span;
    for i in 0..span.min(2000) {
        let port = first + ((start + i * 97) % span) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
            && UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
        {
            return Ok(port);
        }
    }
    Err(format!("no free loopback port below {low}").into())
}

/// The socket serve sends its own `READY=1` to: the harness is its service manager.
pub(super) struct Notify {
    socket: UnixDatagram,
    name: String,
}

impl Notify {
    pub(super) fn bind() -> Result<Notify> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("sockshare-bench-reload/{}/{nanos:08x}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name)?;
        let socket = UnixDatagram::bind_addr(&addr)?;
        socket.set_nonblocking(true)?;
        Ok(Notify {
            socket,
            name: format!("@{name}"),
        })
    }

    /// Reads every queued message (serve blocks on a full queue, so the harness reads
    /// them all); whether one said `READY=1`.
    pub(super) fn drain(&self) -> bool {
        let mut ready = false;
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            ready |= buf[..n].split(|&b| b == b'\n').any(|l| l == b"READY=1");
        }
        ready
    }
}

/// A running `sockshare serve`; killed if dropped while still running.
pub(super) struct Serve {
    pub(super) child: Child,
}

impl Serve {
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn exited(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Waits until serve says `READY=1` (its first generation took over).
    pub(super) fn wait_ready(&mut self, notify: &Notify, within: Duration) -> Result<()> {
        poll_until(within, "serve not ready", || {
            if notify.drain() {
                return Ok(Some(()));
            }
            match self.exited()? {
                Some(status) => Err(format!("serve exited ({status}) before it was ready").into()),
                None => Ok(None),
            }
        })
    }

    /// SIGTERM, then waits for serve to exit (its workers drain first).
    pub(super) fn stop(&mut self, within: Duration) -> Result<ExitStatus> {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid() as i32) {
            // Not reaped yet, so the pid is still serve's.
            rustix::process::kill_process(pid, Signal::TERM)?;
        }
        poll_until(within, "serve did not stop", || self.exited())
    }
}

/// Calls `look` every 2 ms until it has an answer or `within` has passed (then the error
/// says `what` within how long).
fn poll_until<T>(
    within: Duration,
    what: &str,
    mut look: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(answer) = look()? {
            return Ok(answer);
        }
        if Instant::now() >= deadline {
            return Err(format!("{what} within {} s", within.as_secs()).into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Everything a run needs to start a serve.
pub(super) struct Harness {
    pub(super) exe: PathBuf,
    pub(super) listen: String,
    pub(super) workers: u32,
    /// Options given to every serve besides those above (`--dispatch`).
    pub(super) extra: Vec<String>,
    pub(super) notify: Notify,
    pub(super) log: File,
}

impl Harness {
    /// Starts `sockshare serve` on the run's port with `worker` as its command, and waits
    /// for its first generation.
    pub(super) fn start_serve(&self, worker: &[OsString]) -> Result<Serve> {
        self.notify.drain();
        let mut command = Command::new(&self.exe);
        command
            .arg("serve")
            .arg("--listen")
            .arg(&self.listen)
            .arg("--workers")
            .arg(self.workers.to_string())
            .arg("--ready-timeout")
            .arg(READY_TIMEOUT.as_secs().to_string())
            .arg("--drain-timeout")
            .arg(DRAIN_TIMEOUT.as_secs().to_string())
            .args(&self.extra)
            .arg("--")
            .args(worker)
            .env("NOTIFY_SOCKET", &self.notify.name)
            .env_remove("FDSTORE")
            .env_remove("LISTEN_PID")
            .stdin(Stdio::null())
            .stdout(self.log.try_clone()?)
            .stderr(self.log.try_clone()?);
        // SAFETY: the closure makes one system call (prctl), which is async-signal-safe,
        // and touches no memory of the parent's.
        unsafe {
            command.pre_exec(|| {
                // A harness that dies takes its serve along (and serve its workers).
                rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
                    .map_err(io::Error::from)
            });
        }
        let mut serve = Serve {
            child: command.spawn()?,
        };
        serve.wait_ready(&self.notify, READY_TIMEOUT + Duration::from_secs(5))?;
        Ok(serve)
    }
}
