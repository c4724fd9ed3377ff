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
//! - `discover`: list the passing instances of a service of ten (Cohort:
//!   `Registry/List`; etcd: a range read of the ten keys under a prefix).
//! - `heartbeat`: renew the worker's own registration (Cohort: a registry
//!   heartbeat by lease id, as the SDK's keep-alive sends it; etcd: one
//!   lease keep-alive round trip).
//! - `watch`: `--in-flight` watchers on one prefix and one writer: each
//!   configuration put (etcd: a put under the prefix) is timed until every
//!   watcher has received it, and the next put follows; throughput is puts
//!   per second.
//!
//! Each run prints one JSON line; `--summarise FILE` turns a file of them
//! into a Markdown table of medians per target, operation and concurrency.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use cohort_client::config::{ConfigWrite, WatchEvent};
use cohort_client::registry::{Filter, Registration};
use cohort_client::{Client, Error, LockOptions, RetryPolicy, WriteOptions};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt;

use crate::target::{Scheme, TargetSpec};
use crate::verify::parse_duration;

/// Flags of `coord`.
#[derive(clap::Args)]
pub struct CoordArgs {
    /// `cohort://HOST:PORT` or `etcd://HOST:PORT[,HOST:PORT…]`.
    #[arg(long, required_unless_present = "summarise")]
    target: Option<TargetSpec>,
    /// What to measure: cas, contended, lock, put, discover, heartbeat or
    /// watch (then --in-flight is the number of watchers).
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
    /// Service discovery: list a service's instances.
    Discover,
    /// A registration's heartbeat (etcd: a lease keep-alive).
    Heartbeat,
    /// Watch fan-out: a put's delivery to every watcher.
    Watch,
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
    /// etcd's lease keep-alive channel, for `heartbeat`.
    #[cfg(feature = "etcd")]
    keeper: Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)>,
}

/// The service `discover` lists and how many instances it has.
const SERVICE_INSTANCES: u32 = 10;

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

    /// Sets up what every worker of `op` shares: the service `discover`
    /// lists.
    async fn setup(&self, op: CoordOp, run: &str) -> anyhow::Result<()> {
        if op != CoordOp::Discover {
            return Ok(());
        }
        for id in 0..SERVICE_INSTANCES {
            match self {
                System::Cohort { client, tenant } => {
                    let registration = Registration::new(&service(run), &format!("i{id}"), "10.0.0.1", 8000 + id);
                    client.registry().register(tenant, registration, Duration::from_secs(300)).await?;
                }
                #[cfg(feature = "etcd")]
                System::Etcd(etcd) => {
                    let value = format!("{{\"host\":\"10.0.0.1\",\"port\":{}}}", 8000 + id);
                    etcd.kv_client().put(format!("{}/i{id}", service(run)), value, None).await?;
                }
            }
        }
        Ok(())
    }

    /// Prepares worker `id` for `op`.
    async fn prepare(&self, op: CoordOp, id: u32, run: &str) -> anyhow::Result<Worker> {
        let mut worker = Worker::default();
        match (self, op) {
            (System::Cohort { client, tenant }, CoordOp::Heartbeat) => {
                let registration = Registration::new(&service(run), &format!("w{id}"), "10.0.0.1", 9000);
                worker.lease = client.registry().register(tenant, registration, Duration::from_secs(300)).await?.lease;
            }
            #[cfg(feature = "etcd")]
            (System::Etcd(etcd), CoordOp::Heartbeat) => {
                let lease = etcd.lease_client().grant(300, None).await?.id();
                worker.keeper = Some(etcd.lease_client().keep_alive(lease).await?);
            }
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
                CoordOp::Discover => {
                    let (found, _) = client.registry().list(tenant, &service(run), Filter::default()).await?;
                    anyhow::ensure!(found.len() == SERVICE_INSTANCES as usize, "found {} instances", found.len());
                    Ok(true)
                }
                CoordOp::Heartbeat => {
                    let registry = client.registry();
                    worker.lease =
                        registry.heartbeat_lease(tenant, &service(run), &format!("w{id}"), worker.lease).await?;
                    Ok(true)
                }
                CoordOp::Watch => anyhow::bail!("watch runs on its own (run_watch)"),
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
                    CoordOp::Discover => {
                        let options = etcd_client::GetOptions::new().with_prefix();
                        let found = etcd.kv_client().get(format!("{}/", service(run)), Some(options)).await?;
                        anyhow::ensure!(found.kvs().len() == SERVICE_INSTANCES as usize, "found {}", found.kvs().len());
                        Ok(true)
                    }
                    CoordOp::Heartbeat => {
                        let (keeper, answers) = worker.keeper.as_mut().context("no lease keeper")?;
                        keeper.keep_alive().await?;
                        answers.message().await?.context("the keep-alive stream ended")?;
                        Ok(true)
                    }
                    CoordOp::Watch => anyhow::bail!("watch runs on its own (run_watch)"),
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

fn service(run: &str) -> String {
    format!("coord-{run}-svc")
}

/// Watch fan-out: `watchers` watchers of one prefix; a writer puts, waits
/// until every watcher has the put, and puts again. Returns each put's
/// latency to its last watcher (microseconds) and the puts measured.
async fn run_watch(
    system: &System,
    watchers: u32,
    run: &str,
    args: &CoordArgs,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let prefix = format!("coord-{run}-watch/");
    let (delivered, mut all_delivered) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let mut tasks = Vec::new();
    for _ in 0..watchers.max(1) {
        let delivered = delivered.clone();
        match system {
            System::Cohort { client, tenant } => {
                let mut events = client.config().watch(tenant, &prefix, 0);
                // The first event is the watch's start marker: it is registered.
                events.next().await.context("the watch ended at once")??;
                tasks.push(tokio::spawn(async move {
                    while let Some(Ok(event)) = events.next().await {
                        if let WatchEvent::Change(change) = event {
                            let seq = std::str::from_utf8(change.value.as_deref().unwrap_or_default())
                                .ok()
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(0);
                            let _ = delivered.send(seq);
                        }
                    }
                }));
            }
            #[cfg(feature = "etcd")]
            System::Etcd(etcd) => {
                let options = etcd_client::WatchOptions::new().with_prefix();
                let mut watch = etcd.watch_client().watch(prefix.clone(), Some(options)).await?;
                watch.message().await?; // the watch's creation
                tasks.push(tokio::spawn(async move {
                    while let Ok(Some(answer)) = watch.message().await {
                        for event in answer.events() {
                            let seq = event
                                .kv()
                                .and_then(|kv| std::str::from_utf8(kv.value()).ok()?.parse().ok())
                                .unwrap_or(0);
                            let _ = delivered.send(seq);
                        }
                    }
                }));
            }
        }
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let started = Instant::now();
    let (mut seq, mut measured) = (0u64, 0u64);
    while started.elapsed() < args.warmup + args.duration {
        seq += 1;
        let put_at = Instant::now();
        match system {
            System::Cohort { client, tenant } => {
                client.config().put(tenant, &format!("{prefix}k"), seq.to_string(), ConfigWrite::default()).await?;
            }
            #[cfg(feature = "etcd")]
            System::Etcd(etcd) => {
                etcd.kv_client().put(format!("{prefix}k"), seq.to_string(), None).await?;
            }
        }
        let mut got = 0;
        while got < watchers.max(1) {
            let received = tokio::time::timeout(Duration::from_secs(30), all_delivered.recv())
                .await
                .context("a watcher went 30 s without a put")?
                .context("the watchers ended")?;
            if received == seq {
                got += 1;
            }
        }
        if put_at.duration_since(started) >= args.warmup {
            let _ = latency.record(put_at.elapsed().as_micros().max(1) as u64);
            measured += 1;
        }
    }
    for task in tasks {
        task.abort();
    }
    Ok((latency, measured))
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
    let label = args.label.clone().unwrap_or_else(|| spec.scheme_name().to_string());
    if args.op == CoordOp::Watch {
        let (latency, puts) = run_watch(&system, args.in_flight, &run, &args).await?;
        let result = CoordResult {
            label,
            op: args.op,
            in_flight: args.in_flight,
            ops_per_sec: puts as f64 / args.duration.as_secs_f64(),
            p50_us: latency.value_at_quantile(0.5),
            p99_us: latency.value_at_quantile(0.99),
            errors: 0,
        };
        println!("{}", serde_json::to_string(&result)?);
        return Ok(());
    }
    system.setup(args.op, &run).await?;
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
        label,
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
