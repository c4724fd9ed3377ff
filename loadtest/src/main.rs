//! `cohort-loadtest`: drive a Cohort cluster (or etcd, or a no-op gRPC
//! server) with YCSB workloads and measure it (`run`), serve the no-op
//! service (`noop-server`), summarise runs (`report`), measure the machine's floor under a quorum put
//! (`floor`), record a workload's history and audit it (`verify`), or
//! measure the coordination primitives (`coord`).

use clap::{Parser, Subcommand};

mod coord;
mod floor;
mod noop_server;
mod report;
mod run;
mod summary;
mod target;
mod verify;

/// mimalloc: the servers and the harness allocate per request, and glibc's
/// malloc showed up as a sixth of a loaded node's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load and verification harness for Cohort clusters.
#[derive(Parser)]
#[command(name = "cohort-loadtest", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load records, then run a YCSB workload (a, b, c, d, f or custom) in a closed loop or, with --rate, an
    /// open loop; prints throughput and latency percentiles per operation type, optionally as JSON and an
    /// SVG latency plot.
    Run(Box<run::RunArgs>),
    /// Summarise a directory of `run --json` reports (as `compare.sh` writes them) into a Markdown report
    /// with medians, ratios to etcd and to the no-op ceiling, the performance targets, and a latency plot.
    Report(summary::ReportArgs),
    /// Measure the physical floor of a quorum put on this machine: two loopback TCP round trips and one
    /// fdatasync of an appended 128 B record, each the median of --samples, with no Cohort code involved.
    Floor(floor::FloorArgs),
    /// Serve a gRPC call that does nothing, for `run --target noop://ADDR`: the transport's ceiling.
    NoopServer(noop_server::NoopServerArgs),
    /// Run a recorded workload with unique values for a while, then audit
    /// the history: no acknowledged write lost, no phantom value, no
    /// resurrected delete, causal chains intact. Inject faults into the
    /// cluster meanwhile (kill a node, cut a link) to see whether Cohort
    /// keeps its promises. Exits non-zero on any violation.
    Verify(verify::VerifyArgs),
    /// Measure the coordination primitives against Cohort or etcd: uncontended compare-and-set, compare-and-set
    /// with every worker on one key, lock acquire+release cycles, or a plain write; one JSON line per run, and
    /// `--summarise FILE` for a table of medians.
    Coord(coord::CoordArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run::run(*args).await,
        Command::Report(args) => summary::run(args),
        Command::Floor(args) => tokio::task::spawn_blocking(move || floor::run(args)).await?,
        Command::NoopServer(args) => noop_server::run(args).await,
        Command::Verify(args) => verify::run(args).await,
        Command::Coord(args) => coord::run(args).await,
    }
}
