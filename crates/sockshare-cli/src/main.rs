//! `sockshare`: the specification's scenario between two real processes (`demo`), the
//! benchmarks (`bench`, Linux only: they measure Linux's own kernel mechanisms beside the
//! library), and zero-downtime restarts for any socket-activated server (`serve`,
//! `reload`, and `hello`, a server to try them with; Linux only: systemd's conventions).

#[cfg(target_os = "linux")]
mod bench;
mod demo;
#[cfg(target_os = "linux")]
mod hello;
#[cfg(target_os = "linux")]
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A `SECS` option's value: a non-negative number of seconds, fractions allowed; the
/// parser of every such option, so a bad value is refused where options are read.
#[cfg(target_os = "linux")]
fn seconds(text: &str) -> Result<std::time::Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("{text:?} is not a number of seconds"))
}

#[derive(Parser)]
#[command(
    name = "sockshare",
    version,
    about = "Share a live socket between processes, the way WSADuplicateSocket does"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the specification's 10-step scenario between this process (the source) and a
    /// second one (the target), printing each step with its process id.
    Demo(demo::DemoArgs),
    /// The target half of `demo`, started by it (the info arrives on stdin).
    #[command(hide = true)]
    DemoTarget {
        /// Start the session only once the info has arrived.
        #[arg(long)]
        late: bool,
    },
    /// Measure handoffs beside the raw kernel mechanisms, in one run.
    #[cfg(target_os = "linux")]
    Bench(bench::BenchArgs),
    /// Restart a server again and again under load (`sockshare serve` reloads, a naive
    /// restart, broken reloads) and count what clients saw: answers and failures.
    #[cfg(target_os = "linux")]
    BenchReload(bench::reload::ReloadArgs),
    /// Compare `serve --dispatch` with SO_REUSEPORT and one shared listener: connections
    /// per second, latency, each worker's share, a stalled worker, a killed one.
    #[cfg(target_os = "linux")]
    BenchDispatch(bench::dispatch::DispatchArgs),
    /// Keep a server's sockets and run generations of its workers on them: reload on
    /// SIGHUP or `sockshare reload` without refusing a connection (sd_listen_fds(3) and
    /// sd_notify(3) conventions).
    #[cfg(target_os = "linux")]
    Serve(serve::ServeArgs),
    /// Ask a running `sockshare serve` for a reload; exits 0 once the new generation has
    /// taken over, 1 with the reason when it failed and the old one goes on serving.
    #[cfg(target_os = "linux")]
    Reload {
        /// The pid of `sockshare serve`.
        #[arg(long)]
        pid: u32,
        /// Seconds to wait for the outcome.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// A small socket-activated server that answers every connection with its pid and
    /// generation: try `sockshare serve` with it.
    #[cfg(target_os = "linux")]
    Hello(hello::HelloArgs),
    /// Serve's trampoline into a worker (sets LISTEN_PID, drops privileges, executes).
    #[cfg(target_os = "linux")]
    #[command(hide = true)]
    ServeExec {
        #[arg(long)]
        parent: u32,
        #[arg(long)]
        user: Option<String>,
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Demo(args) => demo::source(&args),
        Command::DemoTarget { late } => demo::target(late),
        #[cfg(target_os = "linux")]
        Command::Bench(args) => bench::run(&args),
        #[cfg(target_os = "linux")]
        Command::BenchReload(args) => bench::reload::run(&args),
        #[cfg(target_os = "linux")]
        Command::BenchDispatch(args) => bench::dispatch::run(&args),
        #[cfg(target_os = "linux")]
        Command::Serve(args) => serve::run(args),
        #[cfg(target_os = "linux")]
        Command::Reload { pid, timeout } => {
            serve::reload(pid, std::time::Duration::from_secs(timeout))
                .map(|what| println!("{what}"))
                .map_err(Into::into)
        }
        #[cfg(target_os = "linux")]
        Command::Hello(args) => hello::run(&args),
        #[cfg(target_os = "linux")]
        Command::ServeExec {
            parent,
            user,
            command,
        } => {
            let why = serve::exec(parent, user.as_deref(), &command);
            eprintln!("sockshare serve-exec: {why}");
            return ExitCode::from(127);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sockshare: {e}");
            ExitCode::FAILURE
        }
    }
}
