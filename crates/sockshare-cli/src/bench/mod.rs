//! `sockshare bench`: every scenario of docs/benchmarks.md in one run, sockshare beside the
//! raw kernel mechanisms, measured by the same harness in the same process topology.
//!
//! This process only orchestrates. Each measured run starts fresh child processes (this
//! program again, in the hidden `--role source|target`), hands them their ends of the links
//! by inheritance, and lets them warm up before the measured handoffs (see `worker.rs`).
//! Variants of one scenario are interleaved repetition by repetition, so noise spreads
//! over baselines and library alike; each figure is the median of the repetitions.
//!
//! Variants (`report.rs` names them in the table and the JSON):
//! - `raw`: `SCM_RIGHTS` with the payload over a persistent Unix stream socketpair;
//! - `pidfd`: the payload (with the descriptor number) over a pipe, `pidfd_getfd` pull;
//! - `naive`: a new Unix connection per handoff;
//! - `pipe`: `sockshare::duplicate`, the info over a pipe, `Session::redeem`;
//! - `channel`: `sockshare::Channel` (socket and info in one message);
//! - `batch`: `sockshare::duplicate_many` of 253 sockets per call, infos over a pipe;
//! - `c-api`: the C interface (crates/ws2_32) as a C program calls it:
//!   `WSADuplicateSocketA`, the 372-byte `WSAPROTOCOL_INFOA` over a pipe, `WSASocketA`,
//!   `closesocket`.

pub mod dispatch;
pub mod reload;
mod report;
mod serve_harness;
mod worker;

use std::io::BufReader;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use rustix::io::FdFlags;

use report::{Figure, Row};
use worker::LinkSpec;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Options of `sockshare bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// A short run of every scenario (under a minute), for smoke checks.
    #[arg(long)]
    quick: bool,
    /// Also write the figures as a JSON array of objects to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Repetitions of every figure (the median is reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    reps: u32,
    /// Run only the figures whose `scenario/variant` contains this text (e.g. `round-trip`,
    /// `/channel`, `throughput/raw`).
    #[arg(long)]
    only: Option<String>,
    #[command(flatten)]
    worker: WorkerArgs,
}

/// The hidden arguments of a child process.
#[derive(clap::Args)]
struct WorkerArgs {
    #[arg(long, hide = true)]
    role: Option<Role>,
    #[arg(long, hide = true)]
    variant: Option<Variant>,
    #[arg(long, hide = true)]
    mode: Option<Mode>,
    /// `;`-separated links, each as `LinkSpec::encode` writes it.
    #[arg(long, hide = true, allow_hyphen_values = true)]
    links: Option<String>,
    #[arg(long, hide = true, default_value_t = 0)]
    count: u64,
    #[arg(long, hide = true, default_value_t = 0)]
    warmup: u64,
    #[arg(long, hide = true, default_value_t = 0)]
    pending: u64,
    #[arg(long, hide = true, default_value_t = 0)]
    nofile: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Role {
    Source,
    Target,
}

/// How the socket and its info (or the raw payload) travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Variant {
    Raw,
    Pidfd,
    Naive,
    Pipe,
    Channel,
    Batch,
    CApi,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Raw => "raw",
            Variant::Pidfd => "pidfd",
            Variant::Naive => "naive",
            Variant::Pipe => "pipe",
            Variant::Channel => "channel",
            Variant::Batch => "batch",
            Variant::CApi => "c-api",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// Pipelined handoffs; the targets measure.
    Stream,
    /// One handoff at a time, acknowledged; the source measures.
    RoundTrip,
    /// Redeem cost beside a standing number of pending infos; the target measures.
    Redeem,
}

/// Everything a child needs, parsed from its hidden arguments.
struct WorkerSpec {
    role: Role,
    variant: Variant,
    mode: Mode,
    links: Vec<LinkSpec>,
    count: u64,
    warmup: u64,
    pending: u64,
    nofile: u64,
}

/// One scenario of docs/benchmarks.md.
#[derive(Clone, Copy, Debug)]
enum Scenario {
    Stream { sources: usize, targets: usize },
    RoundTrip,
    Redeem { pending: u64 },
}

impl Scenario {
    fn name(self) -> String {
        match self {
            Scenario::Stream {
                sources: 1,
                targets: 1,
            } => "throughput".into(),
            Scenario::Stream {
                sources,
                targets: 1,
            } => format!("sources={sources}"),
            Scenario::Stream { targets, .. } => format!("targets={targets}"),
            Scenario::RoundTrip => "round-trip".into(),
            Scenario::Redeem { pending } => format!("redeem/pending={pending}"),
        }
    }
}

/// Handoff counts of one run.
#[derive(Clone, Copy)]
struct Sizes {
    count: u64,
    warmup: u64,
}

/// The scenarios and, for each, the variants measured side by side.
fn plan() -> Vec<(Scenario, Vec<Variant>)> {
    use Variant::*;
    let all = vec![Raw, Pidfd, Naive, Pipe, Channel, CApi];
    let mut plan = vec![
        (
            Scenario::Stream {
                sources: 1,
                targets: 1,
            },
            vec![Raw, Pidfd, Naive, Pipe, Channel, Batch, CApi],
        ),
        (Scenario::RoundTrip, all.clone()),
    ];
    for (sources, targets) in [(2, 1), (8, 1), (1, 8)] {
        plan.push((Scenario::Stream { sources, targets }, all.clone()));
    }
    // Each pending info holds a descriptor in the target: a hard RLIMIT_NOFILE below
    // 100,000 (without CAP_SYS_RESOURCE to raise it) caps the largest table measured.
    let most = max_pending();
    let mut sizes: Vec<u64> = [1, 1_000, 10_000, 100_000]
        .iter()
        .map(|&p: &u64| p.min(most))
        .collect();
    sizes.dedup();
    for pending in sizes {
        plan.push((Scenario::Redeem { pending }, vec![Pipe]));
    }
    plan
}

/// The RLIMIT_NOFILE a target can reach: the hard limit, unless this process may raise
/// it (CAP_SYS_RESOURCE), then the kernel's `nr_open`.
fn nofile_ceiling() -> u64 {
    use rustix::thread::{capabilities, CapabilitySet};
    let can_raise =
        capabilities(None).is_ok_and(|c| c.effective.contains(CapabilitySet::SYS_RESOURCE));
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    match rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum {
        Some(hard) if !can_raise => hard,
        _ => nr_open,
    }
}

/// The most pending infos a target can hold beside a wave being redeemed, in thousands.
fn max_pending() -> u64 {
    let room = nofile_ceiling().saturating_sub(worker::HEADROOM);
    (room / 1000 * 1000).max(1)
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if let Some(role) = args.worker.role {
        let w = &args.worker;
        let spec = WorkerSpec {
            role,
            variant: w.variant.ok_or("--variant is required")?,
            mode: w.mode.ok_or("--mode is required")?,
            links: w
                .links
                .as_deref()
                .unwrap_or("")
                .split(';')
                .map(LinkSpec::decode)
                .collect::<Result<_>>()?,
            count: w.count,
            warmup: w.warmup,
            pending: w.pending,
            nofile: w.nofile,
        };
        return worker::run(&spec);
    }
    orchestrate(args)
}

fn orchestrate(args: &BenchArgs) -> Result<()> {
    let sizes = if args.quick {
        Sizes {
            count: 20_000,
            warmup: 2_000,
        }
    } else {
        Sizes {
            count: 200_000,
            warmup: 20_000,
        }
    };
    // `--only` matches `scenario/variant`, so it picks scenarios, variants or one figure.
    let wanted = |s: Scenario, v: Variant| {
        let name = format!("{}/{}", s.name(), v.name());
        args.only.as_deref().map_or(true, |o| name.contains(o))
    };
    let plan: Vec<_> = plan()
        .into_iter()
        .map(|(s, vs)| {
            (
                s,
                vs.into_iter().filter(|&v| wanted(s, v)).collect::<Vec<_>>(),
            )
        })
        .filter(|(_, vs)| !vs.is_empty())
        .collect();
    let total: usize = plan.iter().map(|(_, v)| v.len()).sum::<usize>() * args.reps as usize;
    let started = std::time::Instant::now();
    let mut done = 0;
    let mut rows = Vec::new();
    for (scenario, variants) in &plan {
        let mut figures: Vec<Vec<Figure>> = vec![Vec::new(); variants.len()];
        for rep in 0..args.reps {
            for (i, &variant) in variants.iter().enumerate() {
                let figure = measure(*scenario, variant, sizes)
                    .map_err(|e| format!("{} / {}: {e}", scenario.name(), variant.name()))?;
                done += 1;
                eprintln!(
                    "[{done:>3}/{total} {:>5.1}s] {:<22} {:<8} rep {}: {:>10.0} ops/s, p50 {} ns",
                    started.elapsed().as_secs_f64(),
                    scenario.name(),
                    variant.name(),
                    rep + 1,
                    figure.ops_per_s,
                    figure.p50_ns
                );
                figures[i].push(figure);
            }
        }
        for (variant, figs) in variants.iter().zip(figures) {
            rows.push(Row::new(scenario.name(), variant.name(), &figs));
        }
    }
    report::fill_ratios(&mut rows);
    let mode = if args.quick { "quick" } else { "full" };
    report::print_table(&rows, mode, args.reps, sizes.count);
    if let Some(path) = &args.json {
        std::fs::write(path, report::json(&rows))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The ends of one link: what the source and the target get.
struct LinkEnds {
    source: (LinkSpec, Vec<OwnedFd>),
    target: (LinkSpec, Vec<OwnedFd>),
}

fn open_link(variant: Variant, serial: usize) -> Result<LinkEnds> {
    let cloexec = rustix::pipe::PipeFlags::CLOEXEC;
    let (ack_read, ack_write) = rustix::pipe::pipe_with(cloexec)?;
    let mut source = LinkSpec {
        ack: Some(ack_read.as_raw_fd()),
        ..LinkSpec::default()
    };
    let mut target = LinkSpec {
        ack: Some(ack_write.as_raw_fd()),
        ..LinkSpec::default()
    };
    let (s_data, t_data): (Option<OwnedFd>, OwnedFd) = match variant {
        Variant::Raw => {
            let (s, t) = rustix::net::socketpair(
                rustix::net::AddressFamily::UNIX,
                rustix::net::SocketType::STREAM,
                rustix::net::SocketFlags::CLOEXEC,
                None,
            )?;
            (Some(s), t)
        }
        Variant::Pidfd | Variant::Pipe | Variant::Batch | Variant::CApi => {
            let (r, w) = rustix::pipe::pipe_with(cloexec)?;
            // A batch's infos (253 x 628 bytes) overflow the default 64 KiB pipe, which
            // would make source and target take turns; a program moving infos in bulk
            // sizes its pipe, so the harness does (1 MiB, the unprivileged maximum).
            let _ = rustix::pipe::fcntl_setpipe_size(&w, 1 << 20);
            (Some(w), r)
        }
        Variant::Naive => {
            let name = format!("sockshare-bench/{}/{serial}", std::process::id());
            let listener = UnixListener::bind_addr(&SocketAddr::from_abstract_name(&name)?)?;
            source.name = Some(name);
            (None, OwnedFd::from(listener))
        }
        Variant::Channel => {
            let (s, t) = sockshare::Channel::pair()?;
            (Some(s.into()), t.into())
        }
    };
    source.data = s_data.as_ref().map(AsRawFd::as_raw_fd);
    target.data = Some(t_data.as_raw_fd());
    let mut source_fds = vec![ack_read];
    source_fds.extend(s_data);
    Ok(LinkEnds {
        source: (source, source_fds),
        target: (target, vec![ack_write, t_data]),
    })
}

/// A child process and its control lines.
struct Worker {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
}

impl Worker {
    fn spawn(args: &[String], fds: Vec<OwnedFd>) -> Result<Worker> {
        // This process is single-threaded, so no other spawn can inherit these meanwhile.
        for fd in &fds {
            rustix::io::fcntl_setfd(fd, FdFlags::empty())?;
        }
        let child = Command::new(std::env::current_exe()?)
            .arg("bench")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn();
        drop(fds); // the child has its copies; ours would hold pipes open
        let mut child = child?;
        let to = child.stdin.take().ok_or("no pipe to the child")?;
        let from = BufReader::new(child.stdout.take().ok_or("no pipe from the child")?);
        Ok(Worker { child, to, from })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn say(&mut self, line: &str) -> Result<()> {
        worker::say_line(&mut self.to, line)
    }

    /// The next line, which must start with `word`; its other words.
    fn expect(&mut self, word: &str) -> Result<Vec<String>> {
        let who = format!("a worker (pid {})", self.pid());
        worker::expect_line(&mut self.from, word, &who)
    }
}

/// Kills whatever children are left when a run fails.
struct Crew(Vec<Worker>);

impl Drop for Crew {
    fn drop(&mut self) {
        for w in &mut self.0 {
            if !matches!(w.child.try_wait(), Ok(Some(_))) {
                let _ = w.child.kill();
                let _ = w.child.wait();
            }
        }
    }
}

fn worker_args(
    role: Role,
    variant: Variant,
    mode: Mode,
    links: &[LinkSpec],
    sizes: Sizes,
    pending: u64,
) -> Vec<String> {
    let role = match role {
        Role::Source => "source",
        Role::Target => "target",
    };
    let mode = match mode {
        Mode::Stream => "stream",
        Mode::RoundTrip => "round-trip",
        Mode::Redeem => "redeem",
    };
    let links: Vec<String> = links.iter().map(LinkSpec::encode).collect();
    let nofile = (pending + worker::HEADROOM).max(4096).min(nofile_ceiling());
    [
        "--role",
        role,
        "--variant",
        variant.name(),
        "--mode",
        mode,
        "--links",
        &links.join(";"),
        "--count",
        &sizes.count.to_string(),
        "--warmup",
        &sizes.warmup.to_string(),
        "--pending",
        &pending.to_string(),
        "--nofile",
        &nofile.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Starts the processes of one side of every link: one process for all links when
/// `one_process`, else one per link. Returns the links of each process and the pid serving
/// each link. `peers` (the targets' pids, for sources) go into the links' specs.
fn spawn_side(
    role: Role,
    one_process: bool,
    ends: &mut [LinkEnds],
    crew: &mut Crew,
    peers: &[u32],
    args: impl Fn(&[LinkSpec]) -> Vec<String>,
) -> Result<(Vec<Vec<usize>>, Vec<u32>)> {
    let links = ends.len();
    let groups: Vec<Vec<usize>> = if one_process {
        vec![(0..links).collect()]
    } else {
        (0..links).map(|i| vec![i]).collect()
    };
    let mut pids = vec![0; links];
    for group in &groups {
        let mut specs = Vec::new();
        let mut fds = Vec::new();
        for &i in group {
            let (spec, owned) = match role {
                Role::Source => &mut ends[i].source,
                Role::Target => &mut ends[i].target,
            };
            specs.push(LinkSpec {
                pid: peers.get(i).copied(),
                ..spec.clone()
            });
            fds.append(owned);
        }
        let w = Worker::spawn(&args(&specs), fds)?;
        for &i in group {
            pids[i] = w.pid();
        }
        crew.0.push(w);
    }
    Ok((groups, pids))
}

/// One run of one variant of one scenario, in fresh processes.
fn measure(scenario: Scenario, variant: Variant, sizes: Sizes) -> Result<Figure> {
    let (sources, targets, mode, pending) = match scenario {
        Scenario::Stream { sources, targets } => (sources, targets, Mode::Stream, 0),
        Scenario::RoundTrip => (1, 1, Mode::RoundTrip, 0),
        Scenario::Redeem { pending } => (1, 1, Mode::Redeem, pending),
    };
    let links = sources.max(targets);
    // Every figure counts `sizes.count` handoffs in all; a batch moves 253 at a time.
    let unit = if variant == Variant::Batch {
        worker::BATCH as u64
    } else if mode == Mode::Redeem {
        worker::WAVE as u64
    } else {
        1
    };
    let round = |n: u64| (n / links as u64).div_ceil(unit).max(1) * unit;
    let per_link = Sizes {
        count: round(sizes.count),
        warmup: round(sizes.warmup),
    };
    let mut ends = (0..links)
        .map(|i| open_link(variant, i))
        .collect::<Result<Vec<_>>>()?;

    // Targets first: sockshare sources need their pids.
    let mut crew = Crew(Vec::new());
    let spawn = |role, one_process: bool, ends: &mut [LinkEnds], crew: &mut Crew, peers: &[u32]| {
        spawn_side(role, one_process, ends, crew, peers, |specs| {
            worker_args(role, variant, mode, specs, per_link, pending)
        })
    };
    let (target_groups, target_pid) = spawn(Role::Target, targets == 1, &mut ends, &mut crew, &[])?;
    let n_targets = crew.0.len();
    let (_, source_pid) = spawn(
        Role::Source,
        sources == 1,
        &mut ends,
        &mut crew,
        &target_pid,
    )?;
    drop(ends);

    for w in &mut crew.0 {
        w.expect("ready")?;
    }
    for (t, group) in crew.0[..n_targets].iter_mut().zip(&target_groups) {
        let pids: Vec<String> = group.iter().map(|&i| source_pid[i].to_string()).collect();
        t.say(&format!("warm {}", pids.join(" ")))?;
    }
    for s in &mut crew.0[n_targets..] {
        s.say("warm")?;
    }
    for t in &mut crew.0[..n_targets] {
        t.expect("warmed")?;
    }
    for s in &mut crew.0[n_targets..] {
        s.say("go")?;
    }

    // Sources first: a round-trip source's result is larger than a pipe holds.
    let mut results = Vec::new();
    let mut mem = None;
    for s in &mut crew.0[n_targets..] {
        match mode {
            Mode::RoundTrip => results.push(s.expect("result")?),
            _ => {
                s.expect("done")?;
            }
        }
    }
    for t in &mut crew.0[..n_targets] {
        match mode {
            Mode::RoundTrip => {}
            Mode::Redeem => {
                mem = Some(t.expect("mem")?[0].parse::<f64>()?);
                results.push(t.expect("result")?);
            }
            Mode::Stream => results.push(t.expect("result")?),
        }
    }
    for w in &mut crew.0 {
        let status = w.child.wait()?;
        if !status.success() {
            return Err(format!("a worker (pid {}) failed: {status}", w.pid()).into());
        }
    }
    let mut figure = Figure::from_results(&results)?;
    figure.bytes_per_pending = mem;
    Ok(figure)
}
