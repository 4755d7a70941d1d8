//! The C worker of `examples/c/dispatch_worker.c` under `sockshare serve --dispatch`:
//! built with `cc` against `winsock2.h` and the `libws2_32.so` cargo built for this
//! package, run as two workers; every connection is answered by one of them, both serve
//! some, and on SIGTERM serve ends their channels, they exit 0 and serve exits 0.
#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{free_port, signal, wait_exit, StderrLog};

// sockshare-cli depends on ws2_32 (on Linux), so cargo built the library beside this test.
#[path = "../../ws2_32/tests/linking/mod.rs"]
mod linking;

const CONNECTIONS: usize = 20;
const DEADLINE: Duration = Duration::from_secs(30);

fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Compiles the example as C99 with warnings as errors.
fn build_worker() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c-dispatch-worker");
    std::fs::create_dir_all(&dir).expect("creating the output directory");
    let exe = dir.join("dispatch_worker");
    let mut cc = Command::new("cc");
    cc.args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-g", "-I"])
        .arg(repo_dir().join("crates/ws2_32/include"))
        .arg(repo_dir().join("examples/c/dispatch_worker.c"))
        .arg("-o")
        .arg(&exe);
    linking::link_shared(&mut cc);
    let out = cc.output().expect("running cc");
    assert!(
        out.status.success(),
        "{cc:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// A running serve and what it logged; killed with its workers if the test fails.
struct Serve {
    child: Child,
    /// Serve's stderr (and its workers').
    log: StderrLog,
    workers: Vec<u32>,
}

impl Serve {
    fn start(port: u16, worker: &Path) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sockshare"))
            .args(["serve", "--dispatch", "--workers", "2", "--listen"])
            .arg(format!("tcp:127.0.0.1:{port}"))
            .args(["--ready-timeout", "20", "--drain-timeout", "20", "--"])
            .arg(worker)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting sockshare serve");
        let log = StderrLog::capture(child.stderr.take().expect("piped"));
        Serve {
            child,
            log,
            workers: Vec::new(),
        }
    }

    fn log(&self) -> String {
        self.log.text()
    }

    /// Waits until the log has `what`.
    fn wait_for_log(&self, what: &str) -> String {
        self.log.wait_for(what, DEADLINE)
    }

    /// Waits for serve to exit, and for the end of its stderr: its last lines are in the
    /// log then.
    fn wait(&mut self) -> ExitStatus {
        let end = Instant::now() + DEADLINE;
        let status = wait_exit(&mut self.child, DEADLINE)
            .unwrap_or_else(|| panic!("serve did not exit within {DEADLINE:?}:\n{}", self.log()));
        // A worker that outlived serve would hold stderr open: bounded too.
        while !self.log.is_finished() {
            assert!(
                Instant::now() < end,
                "serve exited ({status}) but its stderr stays open (a worker left?):\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        status
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Workers stop when serve dies (their parent-death signal); this is for one that
        // ignored it, or the test's failure on a worker that outlived serve.
        for &pid in &self.workers {
            if is_worker(pid) {
                assert!(signal(pid, libc::SIGKILL), "kill({pid}, SIGKILL)");
            }
        }
    }
}

/// Whether `pid` is (still) a dispatch_worker, not some later process with its number.
fn is_worker(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("dispatch_worker"))
}

#[test]
fn c_workers_answer_every_connection_and_exit_0_when_serve_stops() {
    let worker = build_worker();
    let port = free_port();
    let mut serve = Serve::start(port, &worker);
    let log = serve.wait_for_log("generation 1 ready");
    let started = log
        .lines()
        .find_map(|l| l.split("generation 1: started workers ").nth(1))
        .unwrap_or_else(|| panic!("no worker pids in the log:\n{log}"));
    serve.workers = started
        .split(',')
        .map(|p| p.trim().parse().expect("a worker pid"))
        .collect();
    assert_eq!(serve.workers.len(), 2, "{log}");

    // All connected and asking at once: serve queues what the workers have not taken.
    let mut clients: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|i| {
            let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            c.set_read_timeout(Some(DEADLINE)).expect("a read timeout");
            c.write_all(format!("request {i}\n").as_bytes())
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            c
        })
        .collect();
    let mut served = vec![0; serve.workers.len()];
    for (i, c) in clients.iter_mut().enumerate() {
        let mut answer = String::new();
        c.read_to_string(&mut answer)
            .unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", serve.log()));
        let pid: Option<u32> = answer
            .strip_prefix("c-worker pid ")
            .and_then(|rest| rest.strip_suffix('\n'))
            .and_then(|pid| pid.parse().ok());
        let at = pid
            .and_then(|pid| serve.workers.iter().position(|&w| w == pid))
            .unwrap_or_else(|| {
                panic!(
                    "connection {i}: {answer:?} is no answer of the workers {:?}:\n{}",
                    serve.workers,
                    serve.log()
                )
            });
        served[at] += 1;
    }
    assert!(
        served.iter().all(|&n| n > 0),
        "a worker served nothing: {served:?}\n{}",
        serve.log()
    );

    assert!(
        signal(serve.child.id(), libc::SIGTERM),
        "kill(serve, SIGTERM)"
    );
    let status = serve.wait();
    let log = serve.log();
    assert!(status.success(), "serve exited with {status}:\n{log}");
    for &pid in &serve.workers {
        assert!(
            log.contains(&format!("worker {pid} exited (status 0)")),
            "worker {pid} did not exit 0 on the channel's end:\n{log}"
        );
        assert!(!is_worker(pid), "worker {pid} outlived serve:\n{log}");
    }
}
