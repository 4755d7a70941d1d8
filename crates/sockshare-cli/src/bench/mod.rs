//! `sockshare bench` (being built).

/// Options of `sockshare bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// A short run of every scenario, for smoke checks.
    #[arg(long)]
    quick: bool,
}

pub fn run(args: &BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    let _ = args.quick;
    Err("the benchmarks are not built yet".into())
}
