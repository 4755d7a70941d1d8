//! `sockshare bench-reload`: what clients see while a server restarts, again and again.
//!
//! C client threads each open a new connection per request (connect, one line out, the
//! answer line back, close; with `--udp`, a new socket sends one datagram and waits for the
//! answer) while the harness restarts the server R times, I seconds after each other
//! (from one restart's end to the next one's start), on a loopback port. A request either gets `hello from pid P generation G` (counted per generation) or
//! fails, counted by kind: refused, reset, timeout (with `--udp`, a lost datagram), short
//! (an empty or cut answer), other. After a failure a client pauses 1 ms, so failures count
//! roughly the milliseconds each client found no server, not how fast a loop can fail.
//!
//! The server is `sockshare hello` under `sockshare serve`, restarted one of three ways
//! (`--mode`):
//!
//! - `serve`: one serve for the whole run, reloaded with `sockshare reload --pid` (its
//!   exit status and reason recorded);
//! - `naive`: the whole serve stopped with SIGTERM and a new one started, which binds the
//!   port anew, the way a server restarts without serve; connections in the gap are
//!   refused, which shows that the harness sees failures. Each serve starts at generation
//!   1, so the worker runs under `env SOCKSHARE_GENERATION=N` to number the restarts;
//! - `broken`: one serve whose every new generation exits at once (the worker is a
//!   script, swapped from `exec sockshare hello` to `exit 1` once the first generation
//!   serves): every reload fails and is rolled back.
//!
//! A benchmark, not a test: the figures depend on the machine and what else runs on it.
//! The exit status says whether the harness ran (serve started, reloaded, stopped), never
//! whether requests failed. Each step is bounded (connect and answer timeouts, serve's
//! ready timeout, a stop deadline), so the run is too.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::report::json_str;
use super::serve_harness::{free_port, Harness, Notify, Serve, DRAIN_TIMEOUT};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Options of `sockshare bench-reload`.
#[derive(clap::Args)]
pub struct ReloadArgs {
    /// How the server is restarted: `serve` (sockshare reload), `naive` (stop serve, start
    /// a new one that binds anew), `broken` (reloads to a worker that exits at once).
    #[arg(long, value_enum, default_value = "serve")]
    mode: Mode,
    /// Datagrams instead of connections: each client sends one and waits for the answer.
    #[arg(long)]
    udp: bool,
    /// Client threads, each one request at a time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    clients: u32,
    /// Restarts in the run.
    #[arg(long, default_value_t = 100)]
    reloads: u32,
    /// Seconds from the end of one restart to the start of the next.
    #[arg(long, default_value = "0.3", value_name = "SECS", value_parser = crate::seconds)]
    interval: Duration,
    /// Workers per generation (`sockshare serve --workers`).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    workers: u32,
    /// Seconds a client waits to connect and for its answer before counting a timeout
    /// (default 2; 0.2 with `--udp`, where a timeout is a lost datagram).
    #[arg(long, value_name = "SECS", value_parser = crate::seconds)]
    timeout: Option<Duration>,
    /// A smoke run for CI: 5 reloads 0.2 s apart, serve mode.
    #[arg(long, conflicts_with_all = ["mode", "reloads", "interval"])]
    quick: bool,
    /// The figures as JSON: on stdout instead of the table, or in FILE.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    json: Option<PathBuf>,
    /// Keep serve's log (every generation started, ready, drained) in FILE.
    #[arg(long, value_name = "FILE")]
    serve_log: Option<PathBuf>,
    /// Print every failed request on stderr, with its time since the load started.
    #[arg(long)]
    verbose: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Serve,
    Naive,
    Broken,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Serve => "serve",
            Mode::Naive => "naive",
            Mode::Broken => "broken",
        }
    }
}

const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// A client's pause after a failed request.
const FAILURE_PAUSE: Duration = Duration::from_millis(1);

/// How a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Refused,
    Reset,
    Timeout,
    Short,
    Other,
}

const KINDS: [Kind; 5] = [
    Kind::Refused,
    Kind::Reset,
    Kind::Timeout,
    Kind::Short,
    Kind::Other,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Refused => "refused",
            Kind::Reset => "reset",
            Kind::Timeout => "timeout",
            Kind::Short => "short",
            Kind::Other => "other",
        }
    }

    fn of(e: &io::Error) -> Kind {
        match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => Kind::Refused,
            Some(libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED) => Kind::Reset,
            _ if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
            {
                Kind::Timeout
            }
            _ => Kind::Other,
        }
    }
}

type Failure = (Kind, String);

fn failed(e: &io::Error, step: &str) -> Failure {
    (Kind::of(e), format!("{step}: {e}"))
}

/// The generation in an answer, `hello from pid P generation G`.
fn generation(answer: &str) -> Option<u64> {
    let mut words = answer.split_whitespace();
    words.find(|&w| w == "generation")?;
    words.next()?.parse().ok()
}

fn answered(answer: &[u8]) -> std::result::Result<u64, Failure> {
    let text = String::from_utf8_lossy(answer);
    if !text.ends_with('\n') {
        return Err((Kind::Short, format!("cut or empty answer {text:?}")));
    }
    generation(&text).ok_or_else(|| (Kind::Other, format!("unexpected answer {text:?}")))
}

/// One request on a new connection.
fn tcp_request(to: SocketAddr, timeout: Duration) -> std::result::Result<u64, Failure> {
    let stream = TcpStream::connect_timeout(&to, timeout).map_err(|e| failed(&e, "connect"))?;
    let setup = |s: &TcpStream| {
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))
    };
    setup(&stream).map_err(|e| failed(&e, "setsockopt"))?;
    (&stream)
        .write_all(b"hello\n")
        .map_err(|e| failed(&e, "write"))?;
    let mut answer = Vec::new();
    BufReader::new(&stream)
        .read_until(b'\n', &mut answer)
        .map_err(|e| failed(&e, "read"))?;
    answered(&answer)
}

/// One datagram from a new socket, and its answer.
fn udp_request(to: SocketAddr, timeout: Duration) -> std::result::Result<u64, Failure> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| failed(&e, "bind"))?;
    socket.connect(to).map_err(|e| failed(&e, "connect"))?;
    socket
        .set_read_timeout(Some(timeout))
        .map_err(|e| failed(&e, "setsockopt"))?;
    socket.send(b"hello\n").map_err(|e| failed(&e, "send"))?;
    let mut buf = [0u8; 512];
    let got = socket.recv(&mut buf).map_err(|e| failed(&e, "recv"))?;
    answered(&buf[..got])
}

/// What one client saw; the clients' tallies add up to the run's.
#[derive(Default)]
struct Tally {
    ok: u64,
    failed: [u64; 5],
    /// The first failure of each kind, as an example.
    examples: [Option<String>; 5],
    per_generation: BTreeMap<u64, u64>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        for i in 0..KINDS.len() {
            self.failed[i] += other.failed[i];
            if self.examples[i].is_none() {
                self.examples[i] = other.examples[i].clone();
            }
        }
        for (g, n) in other.per_generation {
            *self.per_generation.entry(g).or_default() += n;
        }
    }

    fn failures(&self) -> u64 {
        self.failed.iter().sum()
    }
}

/// Counters the progress lines read while the clients run.
#[derive(Default)]
struct Live {
    requests: AtomicU64,
    failed: AtomicU64,
}

#[derive(Clone, Copy)]
struct Load {
    to: SocketAddr,
    udp: bool,
    timeout: Duration,
    started: Instant,
    verbose: bool,
}

fn client(load: Load, stop: &AtomicBool, live: &Live) -> Tally {
    let mut tally = Tally::default();
    while !stop.load(Ordering::Relaxed) {
        let outcome = if load.udp {
            udp_request(load.to, load.timeout)
        } else {
            tcp_request(load.to, load.timeout)
        };
        live.requests.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(g) => {
                tally.ok += 1;
                *tally.per_generation.entry(g).or_default() += 1;
            }
            Err((kind, what)) => {
                live.failed.fetch_add(1, Ordering::Relaxed);
                let i = KINDS.iter().position(|&k| k == kind).unwrap_or(4);
                tally.failed[i] += 1;
                if load.verbose {
                    eprintln!(
                        "bench-reload: {:.3} s: {}: {what}",
                        load.started.elapsed().as_secs_f64(),
                        kind.name()
                    );
                }
                tally.examples[i].get_or_insert(what);
                std::thread::sleep(FAILURE_PAUSE);
            }
        }
    }
    tally
}

impl Harness {
    /// `sockshare reload --pid`: `Ok` when the new generation took over, else the reason
    /// it printed.
    fn reload(&self, serve: &Serve) -> Result<std::result::Result<(), String>> {
        let out = Command::new(&self.exe)
            .arg("reload")
            .arg("--pid")
            .arg(serve.pid().to_string())
            .arg("--timeout")
            .arg(RELOAD_TIMEOUT.as_secs().to_string())
            .stdin(Stdio::null())
            .output()?;
        if out.status.success() {
            return Ok(Ok(()));
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let why = stderr.trim().trim_start_matches("sockshare: ").to_owned();
        Ok(Err(format!("{} ({why})", out.status)))
    }
}

/// The broken mode's worker: a script swapped, once the first generation serves, to one
/// that exits at once.
fn write_script(path: &Path, body: &str) -> Result<()> {
    // Written aside and renamed over: a worker starting meanwhile reads one or the other.
    let aside = path.with_extension("new");
    std::fs::write(&aside, format!("#!/bin/sh\n{body}\n"))?;
    std::fs::rename(&aside, path)?;
    Ok(())
}

/// A shell word for `path`.
fn quoted(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', r"'\''"))
}

/// The figures of one run.
struct Summary {
    mode: Mode,
    udp: bool,
    clients: u32,
    workers: u32,
    interval: f64,
    reloads: u32,
    reloads_ok: u32,
    reload_failure: Option<String>,
    /// Each restart's duration: `sockshare reload` until it returned, or for `naive` the
    /// SIGTERM until the new serve was ready.
    reload_times: Vec<Duration>,
    seconds: f64,
    tally: Tally,
}

impl Summary {
    fn proto(&self) -> &'static str {
        if self.udp {
            "udp"
        } else {
            "tcp"
        }
    }

    fn requests(&self) -> u64 {
        self.tally.ok + self.tally.failures()
    }

    /// Generations that served during the load: the first and each one a reload brought.
    fn generations_served(&self) -> u64 {
        1 + u64::from(self.reloads_ok)
    }

    fn answers_min_max(&self) -> (u64, u64) {
        let counts = self.tally.per_generation.values();
        (
            counts.clone().copied().min().unwrap_or(0),
            counts.copied().max().unwrap_or(0),
        )
    }

    /// The median and the longest restart, in milliseconds.
    fn reload_ms(&self) -> (f64, f64) {
        let mut ms: Vec<f64> = self
            .reload_times
            .iter()
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        ms.sort_by(f64::total_cmp);
        match ms.last() {
            Some(&max) => (ms[ms.len() / 2], max),
            None => (0.0, 0.0),
        }
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let t = &self.tally;
        let (min, max) = self.answers_min_max();
        let _ = writeln!(
            out,
            "sockshare bench-reload ({} over {}: {} clients, {} workers, {} restarts {} s apart; \
             {} cores, loopback)\n",
            self.mode.name(),
            self.proto(),
            self.clients,
            self.workers,
            self.reloads,
            self.interval,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
        let _ = writeln!(
            out,
            "| mode | proto | reloads ok | reloads failed | requests | ok | refused | reset | \
             timeout | short | other | generations answered | min/gen | max/gen |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} of {} | {min} | {max} |\n",
            self.mode.name(),
            self.proto(),
            self.reloads_ok,
            self.reloads - self.reloads_ok,
            self.requests(),
            t.ok,
            t.failed[0],
            t.failed[1],
            t.failed[2],
            t.failed[3],
            t.failed[4],
            t.per_generation.len(),
            self.generations_served(),
        );
        let (p50, longest) = self.reload_ms();
        let restart = match self.mode {
            Mode::Naive => "restart (SIGTERM to the new serve ready)",
            _ => "reload (`sockshare reload` until it returned)",
        };
        let _ = writeln!(
            out,
            "{:.1} s of load, {:.0} requests/s; {restart}: median {p50:.1} ms, longest {longest:.1} ms",
            self.seconds,
            self.requests() as f64 / self.seconds,
        );
        if let Some(why) = &self.reload_failure {
            let _ = writeln!(out, "a failed reload: {why}");
        }
        for (kind, example) in KINDS.iter().zip(&t.examples) {
            if let Some(e) = example {
                let _ = writeln!(out, "a {} request: {e}", kind.name());
            }
        }
        out
    }

    fn json(&self) -> String {
        let t = &self.tally;
        let (min, max) = self.answers_min_max();
        let (p50, longest) = self.reload_ms();
        let failed: Vec<String> = KINDS
            .iter()
            .zip(t.failed)
            .map(|(k, n)| format!("\"{}\": {n}", k.name()))
            .collect();
        let examples: Vec<String> = KINDS
            .iter()
            .zip(&t.examples)
            .filter_map(|(k, e)| Some(format!("\"{}\": {}", k.name(), json_str(e.as_ref()?))))
            .collect();
        let per_generation: Vec<String> = t
            .per_generation
            .iter()
            .map(|(g, n)| format!("\"{g}\": {n}"))
            .collect();
        format!(
            "{{\"mode\": \"{}\", \"proto\": \"{}\", \"clients\": {}, \"workers\": {}, \
             \"interval_s\": {}, \"reloads\": {}, \"reloads_ok\": {}, \"reloads_failed\": {}, \
             \"reload_failure_example\": {}, \"reload_ms_median\": {p50:.1}, \
             \"reload_ms_max\": {longest:.1}, \"seconds\": {:.3}, \"requests\": {}, \"ok\": {}, \
             \"failed\": {{{}}}, \"failure_examples\": {{{}}}, \"generations_served\": {}, \
             \"generations_answered\": {}, \"answers_per_generation_min\": {min}, \
             \"answers_per_generation_max\": {max}, \"answers_per_generation\": {{{}}}}}\n",
            self.mode.name(),
            self.proto(),
            self.clients,
            self.workers,
            self.interval,
            self.reloads,
            self.reloads_ok,
            self.reloads - self.reloads_ok,
            self.reload_failure
                .as_deref()
                .map_or("null".into(), json_str),
            self.seconds,
            self.requests(),
            t.ok,
            failed.join(", "),
            examples.join(", "),
            self.generations_served(),
            t.per_generation.len(),
            per_generation.join(", "),
        )
    }
}

/// Runs the benchmark and prints its figures.
///
/// # Errors
///
/// The harness broke: no free port, serve did not start or stop, a reload could not be
/// asked for. Failed requests and reloads are figures, not errors.
pub fn run(args: &ReloadArgs) -> Result<()> {
    let (reloads, interval) = if args.quick {
        (5, Duration::from_millis(200))
    } else {
        (args.reloads, args.interval)
    };
    let timeout = args.timeout.unwrap_or(if args.udp {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(2)
    });
    if timeout.is_zero() {
        return Err("--timeout: 0 is not a positive number of seconds".into());
    }
    let dir = std::env::temp_dir().join(format!("sockshare-bench-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let log_path = args
        .serve_log
        .clone()
        .unwrap_or_else(|| dir.join("serve.log"));
    let outcome = measure(args, reloads, interval, timeout, &dir, &log_path);
    if outcome.is_err() {
        // The end of serve's log says why, also where the file is gone with the machine (CI).
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        for line in &lines[lines.len().saturating_sub(10)..] {
            eprintln!("  {line}");
        }
        eprintln!("bench-reload: serve's log is in {}", log_path.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let summary = outcome?;
    match args.json.as_deref() {
        Some(p) if p == Path::new("-") => print!("{}", summary.json()),
        Some(p) => {
            std::fs::write(p, summary.json())?;
            print!("{}", summary.table());
            eprintln!("wrote {}", p.display());
        }
        None => print!("{}", summary.table()),
    }
    Ok(())
}

fn measure(
    args: &ReloadArgs,
    reloads: u32,
    interval: Duration,
    timeout: Duration,
    dir: &Path,
    log_path: &Path,
) -> Result<Summary> {
    let mode = if args.quick { Mode::Serve } else { args.mode };
    let exe = std::env::current_exe()?;
    let port = free_port()?;
    let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let harness = Harness {
        listen: format!("{}:{to}", if args.udp { "udp" } else { "tcp" }),
        workers: args.workers,
        extra: Vec::new(),
        notify: Notify::bind()?,
        log: File::create(log_path)?,
        exe,
    };
    let hello = |generation: Option<u32>| -> Vec<OsString> {
        let mut command: Vec<OsString> = Vec::new();
        if let Some(g) = generation {
            command.extend(["env".into(), format!("SOCKSHARE_GENERATION={g}").into()]);
        }
        command.extend([harness.exe.clone().into(), "hello".into()]);
        command
    };
    let script = dir.join("worker.sh");
    let mut serve = match mode {
        Mode::Serve => harness.start_serve(&hello(None))?,
        Mode::Naive => harness.start_serve(&hello(Some(1)))?,
        Mode::Broken => {
            write_script(&script, &format!("exec {} hello", quoted(&harness.exe)))?;
            let serve = harness.start_serve(&["sh".into(), script.clone().into()])?;
            write_script(&script, "exit 1")?;
            serve
        }
    };
    let stop = AtomicBool::new(false);
    let live = Live::default();
    let load = Load {
        to,
        udp: args.udp,
        timeout,
        started: Instant::now(),
        verbose: args.verbose,
    };
    let mut summary = Summary {
        mode,
        udp: args.udp,
        clients: args.clients,
        workers: args.workers,
        interval: interval.as_secs_f64(),
        reloads,
        reloads_ok: 0,
        reload_failure: None,
        reload_times: Vec::new(),
        seconds: 0.0,
        tally: Tally::default(),
    };
    let driven = std::thread::scope(|s| {
        let clients: Vec<_> = (0..args.clients)
            .map(|_| s.spawn(|| client(load, &stop, &live)))
            .collect();
        let mut drive = || -> Result<()> {
            for i in 1..=reloads {
                // I seconds after the last restart returned, not on a fixed schedule: a
                // slow restart would otherwise shorten the next generation's turn, down to
                // nothing when the clients were meanwhile waiting out their timeouts.
                std::thread::sleep(interval);
                harness.notify.drain();
                if let Some(status) = serve.exited()? {
                    return Err(format!("serve exited ({status}) during the run").into());
                }
                let began = Instant::now();
                let outcome = match mode {
                    Mode::Serve | Mode::Broken => harness.reload(&serve)?,
                    Mode::Naive => {
                        let status = serve.stop(DRAIN_TIMEOUT + Duration::from_secs(5))?;
                        if !status.success() {
                            return Err(format!("serve stopped with {status}").into());
                        }
                        serve = harness.start_serve(&hello(Some(i + 1)))?;
                        Ok(())
                    }
                };
                summary.reload_times.push(began.elapsed());
                match outcome {
                    Ok(()) => summary.reloads_ok += 1,
                    Err(why) => {
                        summary.reload_failure.get_or_insert(why);
                    }
                }
                if i % 10 == 0 {
                    eprintln!(
                        "bench-reload {}: {i}/{reloads} restarts ({} ok), {} requests, {} \
                         failed, {:.1} s",
                        mode.name(),
                        summary.reloads_ok,
                        live.requests.load(Ordering::Relaxed),
                        live.failed.load(Ordering::Relaxed),
                        load.started.elapsed().as_secs_f64()
                    );
                }
            }
            // The last generation serves a while too.
            std::thread::sleep(interval);
            Ok(())
        };
        let driven = drive();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            match c.join() {
                Ok(tally) => summary.tally.add(tally),
                Err(_) => return Err("a client thread panicked".into()),
            }
        }
        summary.seconds = load.started.elapsed().as_secs_f64();
        driven
    });
    driven?;
    let status = serve.stop(DRAIN_TIMEOUT + Duration::from_secs(5))?;
    if !status.success() {
        return Err(format!("serve stopped with {status}").into());
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_generation_of_an_answer() {
        assert_eq!(generation("hello from pid 12 generation 34\n"), Some(34));
        assert_eq!(answered(b"hello from pid 12 generation 7\n"), Ok(7));
        assert_eq!(answered(b"").unwrap_err().0, Kind::Short);
        assert_eq!(
            answered(b"hello from pid 12 gener").unwrap_err().0,
            Kind::Short
        );
        assert_eq!(answered(b"nonsense\n").unwrap_err().0, Kind::Other);
    }

    #[test]
    fn sorts_errors_by_kind() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(Kind::of(&os(libc::ECONNREFUSED)), Kind::Refused);
        assert_eq!(Kind::of(&os(libc::ECONNRESET)), Kind::Reset);
        assert_eq!(Kind::of(&os(libc::EPIPE)), Kind::Reset);
        assert_eq!(Kind::of(&os(libc::EAGAIN)), Kind::Timeout);
        assert_eq!(Kind::of(&os(libc::ETIMEDOUT)), Kind::Timeout);
        assert_eq!(Kind::of(&os(libc::EMFILE)), Kind::Other);
    }
}
