//! `sockshare bench-dispatch`: one process accepting and handing connections to workers
//! (`serve --dispatch`), beside the two ways workers usually share a port, in one run.
//!
//! Three modes, each with W `sockshare hello` workers on one loopback port:
//!
//! - `dispatch`: `sockshare serve --dispatch`: serve accepts, each connection goes to the
//!   least loaded worker, which takes it with sockshare;
//! - `reuseport`: each worker its own listener on the port (`SO_REUSEPORT`): the kernel
//!   spreads connections by a hash of their addresses;
//! - `shared`: `sockshare serve` without dispatch: every worker accepts on one listener.
//!
//! C client threads each open a new connection per request (connect, one line out, the
//! answer line back, close) and time it from the start of `connect` to the answer. Three
//! scenarios per mode, modes interleaved repetition by repetition:
//!
//! - `steady`: connections per second, p50 and p99, and each worker's share (max/min);
//! - `stall`: one worker is stopped (SIGSTOP) for 2 s in the middle of the run: the
//!   requests that waited a second or more (behind it), and the p99;
//! - `kill`: one worker is stopped, then killed (SIGKILL) 0.5 s later, with connections
//!   handed to it or queued on its listener: the requests that failed.
//!
//! A benchmark, not a test: the figures depend on the machine and what else runs on it.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};
use socket2::{Domain, Socket, Type};

use super::report::{median_f, percentile};
use super::serve_harness::{free_port, Harness, Notify, Serve};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Options of `sockshare bench-dispatch`.
#[derive(clap::Args)]
pub struct DispatchArgs {
    /// Workers in every mode.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=64))]
    workers: u32,
    /// Client threads, each one request at a time.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    clients: u32,
    /// Seconds each measured run lasts (the stall run lasts at least 4).
    #[arg(long, default_value = "3", value_name = "SECS", value_parser = crate::seconds)]
    seconds: Duration,
    /// Repetitions of every mode and scenario; figures are medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    reps: u32,
    /// A smoke run for CI: 1 repetition of 0.5 s, steady and kill only.
    #[arg(long)]
    quick: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Dispatch,
    Reuseport,
    Shared,
}

const MODES: [Mode; 3] = [Mode::Dispatch, Mode::Reuseport, Mode::Shared];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Dispatch => "dispatch",
            Mode::Reuseport => "reuseport",
            Mode::Shared => "shared",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    Steady,
    Stall,
    Kill,
}

/// A client waiting this long or more was behind the stalled worker.
const WAITED: Duration = Duration::from_secs(1);
const STALL: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(10);

/// The workers of one mode, running; stopped and reaped when dropped.
enum Running {
    Serve(Serve),
    Own(Vec<Child>),
}

impl Drop for Running {
    fn drop(&mut self) {
        match self {
            // Its workers drain; a serve that does not stop is killed by Serve's own drop.
            Running::Serve(serve) => {
                let _ = serve.stop(Duration::from_secs(10));
            }
            Running::Own(children) => {
                for c in children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
    }
}

/// Starts `mode`'s workers on `to`.
fn start(
    mode: Mode,
    to: SocketAddr,
    args: &DispatchArgs,
    exe: &std::path::Path,
) -> Result<Running> {
    let hello: Vec<OsString> = vec![exe.into(), "hello".into()];
    match mode {
        Mode::Dispatch | Mode::Shared => {
            let harness = Harness {
                exe: exe.to_path_buf(),
                listen: format!("tcp:{to}"),
                workers: args.workers,
                extra: if mode == Mode::Dispatch {
                    vec!["--dispatch".into()]
                } else {
                    Vec::new()
                },
                notify: Notify::bind()?,
                log: File::create("/dev/null")?,
            };
            Ok(Running::Serve(harness.start_serve(&hello)?))
        }
        Mode::Reuseport => {
            let mut children = Vec::new();
            for _ in 0..args.workers {
                let listener = Socket::new(Domain::IPV4, Type::STREAM, None)?;
                listener.set_reuse_port(true)?;
                listener.set_reuse_address(true)?;
                listener.bind(&to.into())?;
                listener.listen(libc::SOMAXCONN)?;
                let fd = OwnedFd::from(listener);
                let raw = fd.as_raw_fd();
                let mut command = Command::new("sh");
                // sd_listen_fds(3) wants LISTEN_PID to be the worker's pid: the shell's,
                // which `exec` keeps.
                command
                    .args(["-c", "export LISTEN_PID=$$; exec \"$0\" hello"])
                    .arg(exe)
                    .env("LISTEN_FDS", "1")
                    .env_remove("NOTIFY_SOCKET")
                    .stdin(Stdio::null())
                    .stderr(Stdio::null());
                // SAFETY: dup2, fcntl and prctl are async-signal-safe and touch only this child's
                // descriptor table and settings.
                unsafe {
                    command.pre_exec(move || {
                        // dup2 onto itself would keep FD_CLOEXEC.
                        let placed = if raw == 3 {
                            libc::fcntl(3, libc::F_SETFD, 0)
                        } else {
                            libc::dup2(raw, 3)
                        };
                        if placed < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
                            .map_err(std::io::Error::from)
                    });
                }
                children.push(command.spawn()?);
            }
            Ok(Running::Own(children))
        }
    }
}

/// One request on a new connection: the answering pid and the time to its answer.
fn request(to: SocketAddr) -> std::result::Result<(u32, Duration), String> {
    let started = Instant::now();
    let stream = TcpStream::connect_timeout(&to, TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    (&stream)
        .write_all(b"hello\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    let took = started.elapsed();
    let mut words = line.split_whitespace();
    words.find(|&w| w == "pid");
    let pid = words
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("answer {line:?}"))?;
    Ok((pid, took))
}

/// What the clients of one run saw.
#[derive(Default)]
struct Seen {
    latencies: Vec<Duration>,
    by_pid: HashMap<u32, u64>,
    failed: u64,
    example: Option<String>,
    elapsed: Duration,
}

/// Runs the clients for `length`, calling `during` from the harness's thread meanwhile.
fn load(to: SocketAddr, clients: u32, length: Duration, during: impl FnOnce()) -> Seen {
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut mine = Seen::default();
                while !stop.load(Ordering::Relaxed) {
                    match request(to) {
                        Ok((pid, took)) => {
                            mine.latencies.push(took);
                            *mine.by_pid.entry(pid).or_default() += 1;
                        }
                        Err(e) => {
                            mine.failed += 1;
                            mine.example.get_or_insert(e);
                        }
                    }
                }
                let mut all = seen.lock().unwrap_or_else(|p| p.into_inner());
                all.latencies.extend(mine.latencies);
                for (pid, n) in mine.by_pid {
                    *all.by_pid.entry(pid).or_default() += n;
                }
                all.failed += mine.failed;
                if all.example.is_none() {
                    all.example = mine.example;
                }
            })
        })
        .collect();
    during();
    std::thread::sleep(length.saturating_sub(started.elapsed()));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let mut seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
    seen.elapsed = started.elapsed();
    seen.latencies.sort();
    seen
}

/// The figures of one run.
#[derive(Clone, Copy, Default)]
struct Figures {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    share: f64,
    waited: f64,
    failed: f64,
}

/// The `p` quantile of sorted latencies, in milliseconds; NaN for none.
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    percentile(sorted, p).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

/// Runs one scenario of one mode, from a fresh set of workers.
fn run_one(
    mode: Mode,
    scenario: Scenario,
    args: &DispatchArgs,
    exe: &std::path::Path,
    length: Duration,
) -> Result<(Figures, Option<String>)> {
    let to = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let running = start(mode, to, args, exe)?;
    // Every worker answering: warm up until all have been seen (bounded).
    let warm = Instant::now();
    let mut seen_pids = std::collections::HashSet::new();
    while seen_pids.len() < args.workers as usize && warm.elapsed() < Duration::from_secs(20) {
        if let Ok((pid, _)) = request(to) {
            seen_pids.insert(pid);
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let victim = *seen_pids.iter().min().ok_or("no worker ever answered")?;
    let signal = |s: Signal| {
        if let Some(pid) = Pid::from_raw(victim as i32) {
            let _ = rustix::process::kill_process(pid, s);
        }
    };
    let seen = match scenario {
        Scenario::Steady => load(to, args.clients, length, || {}),
        Scenario::Stall => load(to, args.clients, length.max(Duration::from_secs(4)), || {
            std::thread::sleep(Duration::from_secs(1));
            signal(Signal::STOP);
            std::thread::sleep(STALL);
            signal(Signal::CONT);
        }),
        Scenario::Kill => load(to, args.clients, length.max(Duration::from_secs(2)), || {
            std::thread::sleep(Duration::from_millis(300));
            signal(Signal::STOP);
            std::thread::sleep(Duration::from_millis(500));
            signal(Signal::KILL);
        }),
    };
    drop(running);
    let counts: Vec<u64> = seen.by_pid.values().copied().collect();
    let (max, min) = (
        counts.iter().max().copied().unwrap_or(0),
        counts.iter().min().copied().unwrap_or(0),
    );
    let figures = Figures {
        per_second: seen.latencies.len() as f64 / seen.elapsed.as_secs_f64(),
        p50_ms: percentile_ms(&seen.latencies, 0.50),
        p99_ms: percentile_ms(&seen.latencies, 0.99),
        share: if min == 0 || counts.len() < args.workers as usize {
            f64::INFINITY
        } else {
            max as f64 / min as f64
        },
        waited: seen.latencies.iter().filter(|&&l| l >= WAITED).count() as f64,
        failed: seen.failed as f64,
    };
    Ok((figures, seen.example))
}

/// Runs every mode and scenario and prints the table.
///
/// # Errors
///
/// The harness broke: no port, workers that never answered, serve that did not start.
pub fn run(args: &DispatchArgs) -> Result<()> {
    let exe = std::env::current_exe()?;
    let (reps, length) = if args.quick {
        (1, Duration::from_millis(500))
    } else {
        (args.reps, args.seconds)
    };
    let scenarios: &[Scenario] = if args.quick {
        &[Scenario::Steady, Scenario::Kill]
    } else {
        &[Scenario::Steady, Scenario::Stall, Scenario::Kill]
    };
    let mut all: HashMap<(usize, usize), Vec<Figures>> = HashMap::new();
    for rep in 0..reps {
        for (s, &scenario) in scenarios.iter().enumerate() {
            for (m, &mode) in MODES.iter().enumerate() {
                let (f, example) = run_one(mode, scenario, args, &exe, length)?;
                eprintln!(
                    "bench-dispatch: rep {}/{reps} {scenario:?} {}: {:.0}/s p99 {:.1} ms, {} failed{}",
                    rep + 1,
                    mode.name(),
                    f.per_second,
                    f.p99_ms,
                    f.failed,
                    example.map(|e| format!(" (e.g. {e})")).unwrap_or_default()
                );
                all.entry((s, m)).or_default().push(f);
            }
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} workers, {} clients, a new connection per request, medians of {reps}",
        args.workers, args.clients
    );
    let _ = writeln!(
        out,
        "{:<8} {:<10} {:>9} {:>8} {:>8} {:>9} {:>8} {:>7}",
        "scenario", "mode", "conn/s", "p50 ms", "p99 ms", "max/min", "waited", "failed"
    );
    for (s, scenario) in scenarios.iter().enumerate() {
        for (m, mode) in MODES.iter().enumerate() {
            let runs = &all[&(s, m)];
            let pick = |f: fn(&Figures) -> f64| median_f(runs.iter().map(f).collect());
            let _ = writeln!(
                out,
                "{:<8} {:<10} {:>9.0} {:>8.2} {:>8.2} {:>9.2} {:>8.0} {:>7.0}",
                format!("{scenario:?}").to_lowercase(),
                mode.name(),
                pick(|f| f.per_second),
                pick(|f| f.p50_ms),
                pick(|f| f.p99_ms),
                pick(|f| f.share),
                pick(|f| f.waited),
                pick(|f| f.failed),
            );
        }
        let ratio = |m: usize| median_f(all[&(s, m)].iter().map(|f| f.per_second).collect());
        let _ = writeln!(
            out,
            "{:<8} dispatch/reuseport {:.2}x, dispatch/shared {:.2}x",
            "",
            ratio(0) / ratio(1),
            ratio(0) / ratio(2)
        );
    }
    print!("{out}");
    Ok(())
}
