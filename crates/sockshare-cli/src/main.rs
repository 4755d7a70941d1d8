//! `sockshare`: the specification's scenario between two real processes (`demo`) and the
//! benchmarks (`bench`, Linux only: they measure Linux's own kernel mechanisms beside the
//! library).

#[cfg(target_os = "linux")]
mod bench;
mod demo;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Demo(args) => demo::source(&args),
        Command::DemoTarget { late } => demo::target(late),
        #[cfg(target_os = "linux")]
        Command::Bench(args) => bench::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sockshare: {e}");
            ExitCode::FAILURE
        }
    }
}
