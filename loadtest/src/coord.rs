//! `cohort-loadtest coord`: the coordination primitives under load, against
//! Cohort or etcd, one operation kind per run, closed loop:
//!
//! - `cas`: a conditional write at the version the worker last wrote (each
//!   worker owns its key: uncontended). etcd: a txn comparing the key's
//!   `mod_revision`, then a put.
//! - `contended`: every worker on one key: read it, write it at the version
//!   read; throughput counts the writes that won, latency each attempt.
//! - `lock`: acquire and release a lock of the worker's own, under a lease
//!   granted once per worker. etcd: its `concurrency` lock and unlock.
//! - `put`: a plain write (Cohort: a quorum put carrying the context of the
//!   worker's previous one, so it replaces it), the yardstick for the CAS
//!   latency target.
//!
//! Each run prints one JSON line; `--summarise FILE` turns a file of them
//! into a Markdown table of medians per target, operation and concurrency.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use cohort_client::{Client, Error, LockOptions, RetryPolicy, WriteOptions};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::target::{Scheme, TargetSpec};
use crate::verify::parse_duration;

/// Flags of `coord`.
#[derive(clap::Args)]
pub struct CoordArgs {
    /// `cohort://HOST:PORT` or `etcd://HOST:PORT[,HOST:PORT…]`.
    #[arg(long, required_unless_present = "summarise")]
    target: Option<TargetSpec>,
    /// What to measure: cas, contended, lock or put.
    #[arg(long, value_enum, default_value_t = CoordOp::Cas)]
    op: CoordOp,
    /// Concurrent workers (closed loop).
    #[arg(long, default_value_t = 1)]
    in_flight: u32,
    /// How long to measure, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// How long to run first without measuring.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Cohort tenant.
    #[arg(long, default_value = "default")]
    tenant: String,
    /// A label for the system in the output (default: the scheme).
    #[arg(long)]
    label: Option<String>,
    /// Instead of running, summarise a file of this command's JSON lines.
    #[arg(long)]
    summarise: Option<std::path::PathBuf>,
}

/// The operation a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CoordOp {
    /// Uncontended compare-and-set.
    Cas,
    /// Compare-and-set, every worker on one key.
    Contended,
    /// Lock acquire and release.
    Lock,
    /// A plain write.
    Put,
}

/// One run's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoordResult {
    /// The system's label.
    pub label: String,
    /// What was measured.
    pub op: CoordOp,
    /// Concurrent workers.
    pub in_flight: u32,
    /// Operations that succeeded per second (for `contended`, writes that won).
    pub ops_per_sec: f64,
    /// Latency of one operation (one attempt, for `contended`), microseconds.
    pub p50_us: u64,
    /// 99th percentile, microseconds.
    pub p99_us: u64,
    /// Operations that failed with an error.
    pub errors: u64,
}

/// A connected system (one per worker, cloned once: the size of a
/// variant does not matter here).
#[derive(Clone)]
#[allow(clippy::large_enum_variant)]
enum System {
    Cohort {
        client: Client,
        tenant: String,
    },
    #[cfg(feature = "etcd")]
    Etcd(etcd_client::Client),
}

/// What one worker keeps between operations.
#[derive(Default)]
struct Worker {
    /// The version (Cohort) or mod revision (etcd) of its key, as it last wrote it.
    version: u64,
    /// Its lease, for `lock`.
    lease: u64,
    /// The context its last put returned (Cohort): each put replaces the
    /// previous one instead of piling up siblings.
    context: cohort_client::Context,
}

impl System {
    async fn connect(spec: &TargetSpec, tenant: &str) -> anyhow::Result<System> {
        match spec.scheme {
            Scheme::Cohort => {
                let client = Client::connect(format!("http://{}", spec.endpoints[0]))
                    .await?
                    .with_retry(RetryPolicy { max_attempts: 1, ..Default::default() });
                Ok(System::Cohort { client, tenant: tenant.to_string() })
            }
            #[cfg(feature = "etcd")]
            Scheme::Etcd => {
                let client = etcd_client::Client::connect(&spec.endpoints, None)
                    .await
                    .with_context(|| format!("cannot connect to etcd at {}", spec.endpoints.join(",")))?;
                Ok(System::Etcd(client))
            }
            _ => anyhow::bail!(
                "coord measures cohort:// or etcd:// (etcd needs a build with --features etcd), not {}",
                spec.scheme_name()
            ),
        }
    }

    /// Prepares worker `id` for `op`.
    async fn prepare(&self, op: CoordOp, id: u32, run: &str) -> anyhow::Result<Worker> {
        let mut worker = Worker::default();
        match (self, op) {
            (System::Cohort { client, tenant }, CoordOp::Cas) => {
                worker.version = client.cas().get(tenant, key(run, id)).await?.version;
            }
            (System::Cohort { client, tenant }, CoordOp::Lock) => {
                worker.lease = client.locks().grant_lease(tenant, Duration::from_secs(300)).await?;
            }
            #[cfg(feature = "etcd")]
            (System::Etcd(etcd), CoordOp::Cas) => {
                let found = etcd.kv_client().get(key(run, id).to_vec(), None).await?;
                worker.version = found.kvs().first().map_or(0, |kv| kv.mod_revision() as u64);
            }
            #[cfg(feature = "etcd")]
            (System::Etcd(etcd), CoordOp::Lock) => {
                worker.lease = etcd.lease_client().grant(300, None).await?.id() as u64;
            }
            _ => {}
        }
        Ok(worker)
    }

    /// One operation; `Ok(false)` when it lost (a contended write).
    async fn once(&self, op: CoordOp, id: u32, run: &str, worker: &mut Worker) -> anyhow::Result<bool> {
        let value = Bytes::from_static(b"0123456789abcdef0123456789abcdef");
        match self {
            System::Cohort { client, tenant } => match op {
                CoordOp::Cas => {
                    worker.version = client.cas().put(tenant, key(run, id), value, worker.version).await?;
                    Ok(true)
                }
                CoordOp::Contended => {
                    let cas = client.cas();
                    let read = cas.get(tenant, contended_key(run)).await?;
                    match cas.put(tenant, contended_key(run), value, read.version).await {
                        Ok(_) => Ok(true),
                        Err(Error::VersionMismatch { .. }) => Ok(false),
                        Err(error) => Err(error.into()),
                    }
                }
                CoordOp::Lock => {
                    let locks = client.locks();
                    let name = lock_name(run, id);
                    let options = LockOptions { ttl: Duration::from_secs(300), wait: None };
                    locks.acquire_once(tenant, &name, worker.lease, options).await?;
                    locks.release(tenant, &name, worker.lease).await?;
                    Ok(true)
                }
                CoordOp::Put => {
                    let options = WriteOptions { context: worker.context.clone(), ..WriteOptions::default() };
                    worker.context = client.put_with(tenant, key(run, id), value, options).await?.context;
                    Ok(true)
                }
            },
            #[cfg(feature = "etcd")]
            System::Etcd(etcd) => {
                use etcd_client::{Compare, CompareOp, LockOptions, Txn, TxnOp};
                match op {
                    CoordOp::Cas => {
                        let k = key(run, id).to_vec();
                        let txn = Txn::new()
                            .when(vec![Compare::mod_revision(k.clone(), CompareOp::Equal, worker.version as i64)])
                            .and_then(vec![TxnOp::put(k, value.to_vec(), None)]);
                        let answer = etcd.kv_client().txn(txn).await?;
                        anyhow::ensure!(answer.succeeded(), "an uncontended txn failed its comparison");
                        worker.version = answer.header().map_or(0, |h| h.revision() as u64);
                        Ok(true)
                    }
                    CoordOp::Contended => {
                        let k = contended_key(run).to_vec();
                        let found = etcd.kv_client().get(k.clone(), None).await?;
                        let revision = found.kvs().first().map_or(0, |kv| kv.mod_revision());
                        let txn = Txn::new()
                            .when(vec![Compare::mod_revision(k.clone(), CompareOp::Equal, revision)])
                            .and_then(vec![TxnOp::put(k, value.to_vec(), None)]);
                        Ok(etcd.kv_client().txn(txn).await?.succeeded())
                    }
                    CoordOp::Lock => {
                        let mut locks = etcd.lock_client();
                        let options = LockOptions::new().with_lease(worker.lease as i64);
                        let held = locks.lock(lock_name(run, id), Some(options)).await?;
                        locks.unlock(held.key().to_vec()).await?;
                        Ok(true)
                    }
                    CoordOp::Put => {
                        etcd.kv_client().put(key(run, id).to_vec(), value.to_vec(), None).await?;
                        Ok(true)
                    }
                }
            }
        }
    }
}

fn key(run: &str, id: u32) -> Bytes {
    Bytes::from(format!("coord-{run}-{id}"))
}

fn contended_key(run: &str) -> Bytes {
    Bytes::from(format!("coord-{run}-contended"))
}

fn lock_name(run: &str, id: u32) -> String {
    format!("coord-{run}-lock-{id}")
}

/// Runs `coord`.
pub async fn run(args: CoordArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.summarise {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        print!("{}", summarise(&text)?);
        return Ok(());
    }
    let spec = args.target.as_ref().context("--target is required")?;
    let system = System::connect(spec, &args.tenant).await?;
    // Keys of this run only: versions start where the worker finds them.
    let run = format!("{:08x}", rand::random::<u32>());
    let mut workers = Vec::new();
    for id in 0..args.in_flight.max(1) {
        workers.push(system.prepare(args.op, id, &run).await?);
    }
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (id, mut worker) in workers.into_iter().enumerate() {
        let (system, run, measuring, stop, op) =
            (system.clone(), run.clone(), measuring.clone(), stop.clone(), args.op);
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let (mut won, mut errors) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let result = system.once(op, id as u32, &run, &mut worker).await;
                if !measuring.load(Ordering::Relaxed) {
                    continue;
                }
                let _ = latency.record(started.elapsed().as_micros().max(1) as u64);
                match result {
                    Ok(true) => won += 1,
                    Ok(false) => {}
                    Err(_) => errors += 1,
                }
            }
            (latency, won, errors)
        }));
    }
    tokio::time::sleep(args.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(args.duration).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let (mut won, mut errors) = (0u64, 0u64);
    for task in tasks {
        let (histogram, w, e) = task.await?;
        latency.add(histogram)?;
        won += w;
        errors += e;
    }
    let result = CoordResult {
        label: args.label.clone().unwrap_or_else(|| spec.scheme_name().to_string()),
        op: args.op,
        in_flight: args.in_flight,
        ops_per_sec: won as f64 / elapsed.as_secs_f64(),
        p50_us: latency.value_at_quantile(0.5),
        p99_us: latency.value_at_quantile(0.99),
        errors,
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

/// A Markdown table of the medians of each (label, op, in-flight) group.
pub fn summarise(lines: &str) -> anyhow::Result<String> {
    let mut groups: BTreeMap<(String, String, u32), Vec<CoordResult>> = BTreeMap::new();
    for line in lines.lines().filter(|l| l.trim_start().starts_with('{')) {
        let result: CoordResult = serde_json::from_str(line).with_context(|| format!("not a result: {line}"))?;
        let op = serde_json::to_value(result.op)?.as_str().unwrap_or_default().to_string();
        groups.entry((op, result.label.clone(), result.in_flight)).or_default().push(result);
    }
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let mut out = String::from("| operation | system | in flight | runs | ops/s | p50 µs | p99 µs | errors |\n");
    out.push_str("|---|---|--:|--:|--:|--:|--:|--:|\n");
    for ((op, label, in_flight), runs) in &groups {
        out.push_str(&format!(
            "| {op} | {label} | {in_flight} | {} | {:.0} | {:.0} | {:.0} | {} |\n",
            runs.len(),
            median(runs.iter().map(|r| r.ops_per_sec).collect()),
            median(runs.iter().map(|r| r.p50_us as f64).collect()),
            median(runs.iter().map(|r| r.p99_us as f64).collect()),
            runs.iter().map(|r| r.errors).sum::<u64>(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_takes_medians_per_group() {
        let lines = [
            r#"{"label":"cohort","op":"cas","in_flight":1,"ops_per_sec":100.0,"p50_us":900,"p99_us":2000,"errors":0}"#,
            r#"{"label":"cohort","op":"cas","in_flight":1,"ops_per_sec":300.0,"p50_us":700,"p99_us":1000,"errors":1}"#,
            r#"{"label":"cohort","op":"cas","in_flight":1,"ops_per_sec":200.0,"p50_us":800,"p99_us":3000,"errors":0}"#,
            r#"{"label":"etcd","op":"lock","in_flight":16,"ops_per_sec":50.0,"p50_us":10,"p99_us":20,"errors":0}"#,
        ]
        .join("\n");
        let table = summarise(&lines).unwrap();
        assert!(table.contains("| cas | cohort | 1 | 3 | 200 | 800 | 2000 | 1 |"), "{table}");
        assert!(table.contains("| lock | etcd | 16 | 1 | 50 | 10 | 20 | 0 |"), "{table}");
    }
}
