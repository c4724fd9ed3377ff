//! `cohort-loadtest verify`: record a workload's history against any
//! endpoint and audit it with the checkers of `cohort-checker`.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use cohort_client::{Client, RetryPolicy};
use cohort_loadtest::locking::{self, FencedStore, LockWorkload};
use cohort_loadtest::registers::{self, CasRecorder, CasWorkload};
use cohort_loadtest::workload::{self, Recorder, Workload};

/// Flags of `verify`.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Coordinator endpoints; clients are spread over them.
    #[arg(long, default_value = "http://127.0.0.1:7070", value_delimiter = ',')]
    endpoint: Vec<String>,
    /// Tenant to write into (use a scratch tenant: keys are overwritten).
    #[arg(long, default_value = "default")]
    tenant: String,
    /// How long to run, e.g. 30s or 2m; the run also ends after
    /// --operations per client.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Operations per client at most.
    #[arg(long, default_value_t = 1_000_000)]
    operations: u32,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: u32,
    /// Distinct keys; few keys mean many conflicts.
    #[arg(long, default_value_t = 20)]
    keys: u32,
    /// Seeds the workload (keys, actions), so a run can be repeated.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Each client owns its keys and chains read → write with context, so
    /// causality is checked on every key.
    #[arg(long)]
    chains: bool,
    /// Write the recorded history here, as JSON lines (kv only).
    #[arg(long)]
    history: Option<std::path::PathBuf>,
    /// What to record: `kv` (puts, gets and deletes with contexts, audited
    /// for lost writes, phantoms, resurrections and causality), `cas`
    /// (compare-and-set on the linearizable key space, checked for
    /// linearizability key by key) or `lock` (turns under one lock with
    /// fenced writes, some stalling past their lease; --operations is the
    /// turns per client).
    #[arg(long, value_enum, default_value_t = VerifyWorkload::Kv)]
    workload: VerifyWorkload,
    /// The lease TTL of `--workload lock` (a stalled turn sleeps past it).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    lock_ttl: Duration,
    /// Where `--workload lock` writes its protected key: a compare-and-set
    /// key (`cas put --fence`) or a key-value key (`kv put --fence`).
    #[arg(long, value_enum, default_value_t = FencedStore::Cas)]
    lock_store: FencedStore,
}

/// What `verify` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyWorkload {
    /// The key-value workload.
    Kv,
    /// Compare-and-set.
    Cas,
    /// Locks: workers take turns under one lock and write a key with their
    /// fencing token, some stalling past their lease first; checked that
    /// tokens follow real time and that no stale write was accepted.
    Lock,
}

/// Parses `500ms`, `30s`, `2m` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.find(|c: char| c.is_ascii_alphabetic()).map_or((text, "s"), |i| text.split_at(i));
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 30s"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {text:?}; use ms, s, m or h")),
    };
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!("{text:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Runs the workload, audits the history, prints the verdict.
pub async fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let mut clients = Vec::new();
    for endpoint in &args.endpoint {
        let client = Client::connect(endpoint.clone()).await?;
        clients.push(client.with_retry(RetryPolicy { max_attempts: 1, ..Default::default() }));
    }
    match args.workload {
        VerifyWorkload::Cas => return run_cas(&args, &clients).await,
        VerifyWorkload::Lock => return run_lock(&args, &clients).await,
        VerifyWorkload::Kv => {}
    }
    let workload = Workload {
        seed: args.seed,
        clients: args.clients,
        keys: args.keys,
        ops_per_client: args.operations,
        blind_only: false,
        chains: args.chains,
    };
    let recorder = Recorder::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = workload::start(workload, &args.tenant, &clients, &recorder, &stop);
    run_for(args.duration, tasks, &stop, || recorder.completed(), "auditing").await?;
    let history = recorder.history();
    if let Some(path) = &args.history {
        history.write_json_lines(std::io::BufWriter::new(std::fs::File::create(path)?))?;
    }
    let final_state = workload::read_final_state(&clients[0], &args.tenant, &history)
        .await
        .map_err(|e| anyhow::anyhow!("final read at ALL failed (heal every fault before the run ends): {e}"))?;
    let verdict = cohort_checker::audit(&history, &final_state, None);
    println!("{verdict}");
    if verdict.is_ok() { Ok(()) } else { anyhow::bail!("the history violates Cohort's guarantees") }
}

/// Lets the workload's `tasks` run for `duration` at most (or until they
/// end), showing progress each second, then stops them and waits for them.
async fn run_for(
    duration: Duration,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: &AtomicBool,
    completed: impl Fn() -> u64,
    next: &str,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while started.elapsed() < duration && !tasks.iter().all(|t| t.is_finished()) {
        tick.tick().await;
        eprint!("\r{} operations, {:.0}s", completed(), started.elapsed().as_secs_f64());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    eprintln!("\r{} operations in {:.1}s; {next}", completed(), started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs the lock workload and checks its grants and fenced writes.
async fn run_lock(args: &VerifyArgs, clients: &[Client]) -> anyhow::Result<()> {
    let workload = LockWorkload {
        clients: args.clients,
        rounds: args.operations.min(1000),
        ttl: args.lock_ttl,
        stall_every: 3,
        store: args.lock_store,
    };
    let run = format!("{:08x}", rand::random::<u32>());
    eprintln!("{} workers, {} turns each, lease {}ms", workload.clients, workload.rounds, workload.ttl.as_millis());
    let verdict =
        locking::run(workload, &args.tenant, &format!("verify-{run}"), &format!("verify-{run}"), clients).await?;
    println!("{verdict}");
    if verdict.is_ok() { Ok(()) } else { anyhow::bail!("fencing failed") }
}

/// Runs the compare-and-set workload and checks it for linearizability.
async fn run_cas(args: &VerifyArgs, clients: &[Client]) -> anyhow::Result<()> {
    let workload =
        CasWorkload { seed: args.seed, clients: args.clients, keys: args.keys, ops_per_client: args.operations };
    let recorder = CasRecorder::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = registers::start(workload, &args.tenant, clients, &recorder, &stop);
    run_for(args.duration, tasks, &stop, || recorder.completed(), "checking").await?;
    let verdict = recorder.check();
    println!("{verdict}");
    if verdict.is_ok() { Ok(()) } else { anyhow::bail!("the history is not linearizable") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("3 days").is_err());
    }
}
