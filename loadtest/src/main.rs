//! `cohort-loadtest`: drive a Cohort cluster and measure it (`run`), or
//! record a workload's history and audit it (`verify`).
//!
//! Closed loop: `--concurrency` workers each keep one operation in flight.
//! Latency is measured per operation with HdrHistogram (microseconds).
//!
//! Updates carry the latest context seen for their key (from any worker's
//! read or write), as an application overwriting a value would: a blind
//! write never replaces anything, so blind updates would pile up siblings.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use cohort_client::{Client, Consistency, Context, ReadOptions, RetryPolicy, WriteOptions};
use hdrhistogram::Histogram;
use serde_json::json;

/// Load and verification harness for Cohort clusters.
#[derive(Parser)]
#[command(name = "cohort-loadtest", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Closed-loop put/get load; prints throughput and latency percentiles.
    Run(Args),
    /// Run a recorded workload with unique values for a while, then audit
    /// the history: no acknowledged write lost, no phantom value, no
    /// resurrected delete, causal chains intact. Inject faults into the
    /// cluster meanwhile (kill a node, cut a link) to see whether Cohort
    /// keeps its promises. Exits non-zero on any violation.
    Verify(verify::VerifyArgs),
}

/// Flags of `run`.
#[derive(clap::Args)]
struct Args {
    /// Coordinator endpoint.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    endpoint: String,
    /// Tenant to write into.
    #[arg(long, default_value = "default")]
    tenant: String,
    /// Distinct keys; operations pick keys uniformly at random.
    #[arg(long, default_value_t = 1000)]
    records: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Operations in flight at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Total operations (the load phase that writes every record first is
    /// not counted).
    #[arg(long, default_value_t = 2000)]
    operations: u64,
    /// Fraction of operations that are reads, 0.0..=1.0.
    #[arg(long, default_value_t = 0.5)]
    read_fraction: f64,
    /// Consistency level for reads and writes (default: the tenant's R and W).
    #[arg(long)]
    consistency: Option<Consistency>,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone)]
struct Stats {
    reads: Histogram<u64>,
    writes: Histogram<u64>,
    errors: u64,
}

impl Stats {
    fn new() -> Self {
        let histogram = || Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
        Stats { reads: histogram(), writes: histogram(), errors: 0 }
    }
}

fn key_of(index: u64) -> Bytes {
    Bytes::from(format!("user{index:012}"))
}

mod verify;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(args).await,
        Command::Verify(args) => verify::run(args).await,
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!((0.0..=1.0).contains(&args.read_fraction), "--read-fraction must be within 0..=1");
    anyhow::ensure!(args.concurrency > 0 && args.records > 0, "--concurrency and --records must be positive");
    let client =
        Client::connect(args.endpoint.clone()).await?.with_retry(RetryPolicy { max_attempts: 1, ..Default::default() });
    let value = Bytes::from(vec![b'x'; args.value_size]);
    let write_options = WriteOptions { consistency: args.consistency, ..Default::default() };
    let read_options = ReadOptions { consistency: args.consistency };

    let contexts: Arc<Mutex<HashMap<u64, Context>>> = Arc::default();
    for index in 0..args.records {
        let written = client.put_with(&args.tenant, key_of(index), value.clone(), write_options.clone()).await?;
        contexts.lock().expect("context map").insert(index, written.context);
    }

    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (client, issued, value, contexts) = (client.clone(), issued.clone(), value.clone(), contexts.clone());
        let (tenant, write_options, read_options) = (args.tenant.clone(), write_options.clone(), read_options.clone());
        let (operations, records, read_fraction) = (args.operations, args.records, args.read_fraction);
        workers.push(tokio::spawn(async move {
            let mut stats = Stats::new();
            while issued.fetch_add(1, Ordering::Relaxed) < operations {
                let index = rand::random_range(0..records);
                let key = key_of(index);
                let read = rand::random::<f64>() < read_fraction;
                let begin = Instant::now();
                let context = if read {
                    client.get_with(&tenant, key, read_options.clone()).await.map(|r| r.context)
                } else {
                    let context = contexts.lock().expect("context map").get(&index).cloned().unwrap_or_default();
                    let options = WriteOptions { context, ..write_options.clone() };
                    client.put_with(&tenant, key, value.clone(), options).await.map(|w| w.context)
                };
                let ok = context.is_ok();
                if let Ok(context) = context {
                    contexts.lock().expect("context map").insert(index, context);
                }
                let micros = begin.elapsed().as_micros().max(1) as u64;
                match (ok, read) {
                    (false, _) => stats.errors += 1,
                    (true, true) => stats.reads.saturating_record(micros),
                    (true, false) => stats.writes.saturating_record(micros),
                }
            }
            stats
        }));
    }
    let mut total = Stats::new();
    for worker in workers {
        let stats = worker.await?;
        total.reads.add(&stats.reads)?;
        total.writes.add(&stats.writes)?;
        total.errors += stats.errors;
    }
    report(&args, &total, started.elapsed());
    Ok(())
}

fn summary(h: &Histogram<u64>) -> serde_json::Value {
    json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.50),
        "p95_us": h.value_at_quantile(0.95),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
    })
}

fn report(args: &Args, stats: &Stats, elapsed: Duration) {
    let done = stats.reads.len() + stats.writes.len();
    let ops_per_sec = done as f64 / elapsed.as_secs_f64();
    if args.json {
        let out = json!({
            "endpoint": args.endpoint,
            "concurrency": args.concurrency,
            "ops_per_sec": ops_per_sec,
            "errors": stats.errors,
            "operations": { "read": summary(&stats.reads), "update": summary(&stats.writes) },
        });
        println!("{out}");
        return;
    }
    println!("{done} operations in {:.2}s: {ops_per_sec:.0} ops/s, {} errors", elapsed.as_secs_f64(), stats.errors);
    for (name, h) in [("read", &stats.reads), ("update", &stats.writes)] {
        if h.is_empty() {
            continue;
        }
        println!(
            "{name:>6}: n={} p50={}us p95={}us p99={}us p99.9={}us max={}us",
            h.len(),
            h.value_at_quantile(0.50),
            h.value_at_quantile(0.95),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        );
    }
}
