//! `cohort-loadtest run`: YCSB core workloads against Cohort, etcd or the
//! no-op server, in a closed loop (`--concurrency` operations always in
//! flight) or an open loop (`--rate`: operations scheduled at fixed
//! intervals, latency measured from each one's scheduled start, or from
//! its send when that was earlier).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use cohort_client::Consistency;
use cohort_loadtest::generator::{KeyChooser, KeySpace, OpKind, OpMix, ScrambledZipfian, SkewedLatest};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::report::{self, RunInfo, Stats};
use crate::target::{OpError, Target, TargetOptions, TargetSpec};
use crate::verify::parse_duration;

/// Why `--workload e` is refused.
const NO_SCANS: &str = "YCSB workload E (short range scans) is not offered: Cohort hash-partitions keys over its \
                        ring, so it keeps no key order and has no range-scan API to measure (emulating a scan with \
                        point reads would measure something else)";

/// A YCSB core workload, or `custom`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoreWorkload {
    /// 50% read, 50% update.
    A,
    /// 95% read, 5% update.
    B,
    /// 100% read.
    C,
    /// 95% read (latest records), 5% insert.
    D,
    /// 50% read, 50% read-modify-write.
    F,
    /// The --*-proportion flags.
    Custom,
}

fn parse_workload(text: &str) -> Result<CoreWorkload, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "a" => Ok(CoreWorkload::A),
        "b" => Ok(CoreWorkload::B),
        "c" => Ok(CoreWorkload::C),
        "d" => Ok(CoreWorkload::D),
        "f" => Ok(CoreWorkload::F),
        "custom" => Ok(CoreWorkload::Custom),
        "e" => Err(NO_SCANS.into()),
        other => Err(format!("unknown workload {other:?}; expected a, b, c, d, f or custom")),
    }
}

impl CoreWorkload {
    fn name(self) -> &'static str {
        match self {
            CoreWorkload::A => "a",
            CoreWorkload::B => "b",
            CoreWorkload::C => "c",
            CoreWorkload::D => "d",
            CoreWorkload::F => "f",
            CoreWorkload::Custom => "custom",
        }
    }

    /// The operation mix; `None` for custom.
    fn mix(self) -> Option<OpMix> {
        let mix = |read, update, insert, rmw| Some(OpMix { read, update, insert, rmw });
        match self {
            CoreWorkload::A => mix(0.5, 0.5, 0.0, 0.0),
            CoreWorkload::B => mix(0.95, 0.05, 0.0, 0.0),
            CoreWorkload::C => mix(1.0, 0.0, 0.0, 0.0),
            CoreWorkload::D => mix(0.95, 0.0, 0.05, 0.0),
            CoreWorkload::F => mix(0.5, 0.0, 0.0, 0.5),
            CoreWorkload::Custom => None,
        }
    }

    fn default_distribution(self) -> Distribution {
        match self {
            CoreWorkload::D => Distribution::Latest,
            _ => Distribution::Zipfian,
        }
    }
}

/// How operations pick records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Distribution {
    /// YCSB's scrambled Zipfian (constant 0.99): a few hot records, spread
    /// over the key space.
    Zipfian,
    /// Every record equally likely.
    Uniform,
    /// Skewed toward the most recently inserted records.
    Latest,
}

impl Distribution {
    fn name(self) -> &'static str {
        match self {
            Distribution::Zipfian => "zipfian",
            Distribution::Uniform => "uniform",
            Distribution::Latest => "latest",
        }
    }
}

/// Flags of `run`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("length").required(true).args(["duration", "operations"])))]
pub struct RunArgs {
    /// What to load: cohort://HOST:PORT (a coordinator), etcd://HOST:PORT[,HOST:PORT…] (etcd v3; needs a build
    /// with --features etcd) or noop://HOST:PORT (a `cohort-loadtest noop-server`: the transport's ceiling).
    #[arg(long)]
    target: TargetSpec,
    /// YCSB core workload: a (50% read, 50% update), b (95% read, 5% update), c (100% read), d (95% read of
    /// the latest records, 5% insert), f (50% read, 50% read-modify-write), or custom (the --*-proportion
    /// flags). Workload e (short range scans) is not offered: Cohort hash-partitions keys, so there are no
    /// range scans to measure.
    #[arg(long, value_parser = parse_workload)]
    workload: CoreWorkload,
    /// Records loaded before the run (keys user000000000000…).
    #[arg(long, default_value_t = 1000)]
    records: u64,
    /// Records are keyed PREFIX000000000000…: a fresh prefix gives a run records of its own (Cohort keeps
    /// the loads of earlier runs as siblings of blind writes, since the load phase writes without a context).
    #[arg(long, default_value = "user")]
    key_prefix: String,
    /// The records are there already (an earlier run with the same --records and --key-prefix loaded them):
    /// skip the load phase.
    #[arg(long)]
    skip_load: bool,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// How operations pick records [default: latest for workload d, zipfian otherwise].
    #[arg(long, value_enum)]
    distribution: Option<Distribution>,
    /// Operations in flight at most (closed loop: always).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Open loop: start this many operations per second on a fixed schedule, measuring each one's latency
    /// from its scheduled start (so queueing shows); without it, a closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// How long to measure, e.g. 30s or 2m (after the warmup).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// How many operations to measure (after the warmup).
    #[arg(long)]
    operations: Option<u64>,
    /// Run the workload this long first without recording it, e.g. 5s.
    #[arg(long, default_value = "0s", value_parser = parse_warmup)]
    warmup: Duration,
    /// Consistency level of reads and writes: one, quorum, all (or a number of replicas) [default: the
    /// tenant's R and W]. etcd: `one` makes reads serializable; otherwise they are linearizable.
    #[arg(long)]
    consistency: Option<Consistency>,
    /// Write the figures to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Draw a latency-percentile plot to FILE.svg.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Name of the system under test in the JSON, for `cohort-loadtest report` [default: the target's scheme].
    #[arg(long)]
    label: Option<String>,
    /// Cohort tenant to write into (keys user… are overwritten).
    #[arg(long, default_value = "default")]
    tenant: String,
    /// Custom workload: weight of reads.
    #[arg(long)]
    read_proportion: Option<f64>,
    /// Custom workload: weight of updates (overwrites with the latest context seen).
    #[arg(long)]
    update_proportion: Option<f64>,
    /// Custom workload: weight of inserts of new records.
    #[arg(long)]
    insert_proportion: Option<f64>,
    /// Custom workload: weight of read-modify-writes.
    #[arg(long)]
    rmw_proportion: Option<f64>,
}

fn parse_warmup(text: &str) -> Result<Duration, String> {
    match text.trim().trim_end_matches(|c: char| c.is_ascii_alphabetic()).parse::<f64>() {
        Ok(0.0) => Ok(Duration::ZERO),
        _ => parse_duration(text),
    }
}

/// How much is measured.
#[derive(Debug, Clone, Copy)]
enum Length {
    /// Operations started before `measure_from + duration`.
    Duration(Duration),
    /// This many operations.
    Operations(u64),
}

impl RunArgs {
    fn mix(&self) -> anyhow::Result<OpMix> {
        let flags = [self.read_proportion, self.update_proportion, self.insert_proportion, self.rmw_proportion];
        let mix = match self.workload.mix() {
            Some(mix) => {
                anyhow::ensure!(
                    flags.iter().all(Option::is_none),
                    "--read/update/insert/rmw-proportion are for --workload custom only"
                );
                mix
            }
            None => {
                anyhow::ensure!(
                    flags.iter().any(Option::is_some),
                    "--workload custom needs at least one of --read-proportion, --update-proportion, \
                     --insert-proportion, --rmw-proportion"
                );
                let [read, update, insert, rmw] = flags.map(|p| p.unwrap_or(0.0));
                OpMix { read, update, insert, rmw }
            }
        };
        mix.validate().map_err(anyhow::Error::msg)?;
        Ok(mix)
    }

    fn length(&self) -> Length {
        match (self.duration, self.operations) {
            (Some(duration), _) => Length::Duration(duration),
            (None, Some(operations)) => Length::Operations(operations),
            (None, None) => unreachable!("clap requires --duration or --operations"),
        }
    }
}

/// Picks each operation's kind and record.
#[derive(Clone)]
struct OpGenerator {
    mix: OpMix,
    keys: KeyChooser,
    space: Arc<KeySpace>,
    rng: SmallRng,
}

impl OpGenerator {
    /// A copy with its own random stream.
    fn fork(&self) -> Self {
        OpGenerator { rng: SmallRng::from_rng(&mut rand::rng()), ..self.clone() }
    }

    fn next(&mut self) -> (OpKind, u64) {
        let kind = self.mix.choose(&mut self.rng);
        let index = match kind {
            OpKind::Insert => self.space.allocate(),
            _ => self.keys.sample(&mut self.rng, self.space.limit()),
        };
        (kind, index)
    }
}

/// What every phase needs.
struct Ctx {
    target: Arc<Target>,
    space: Arc<KeySpace>,
    concurrency: usize,
    warmup: Duration,
    length: Length,
    /// Measured operations completed, for the progress line.
    done: Arc<AtomicU64>,
}

/// An operation still unanswered after this long counts as failed
/// (`Timeout`), so a stalled target cannot hang the run.
const OP_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs one operation, giving up after [`OP_TIMEOUT`].
async fn execute_timed(target: &Target, kind: OpKind, index: u64) -> Result<(), OpError> {
    match tokio::time::timeout(OP_TIMEOUT, target.execute(kind, index)).await {
        Ok(result) => result,
        Err(_) => Err(OpError { code: "Timeout".into(), message: format!("no answer within {OP_TIMEOUT:?}") }),
    }
}

/// Runs one operation of the run phase; an insert's index is acknowledged
/// either way.
async fn execute_on(target: &Target, space: &KeySpace, kind: OpKind, index: u64) -> Result<(), OpError> {
    let result = execute_timed(target, kind, index).await;
    if kind == OpKind::Insert {
        space.acknowledge(index);
    }
    result
}

/// Runs `run`.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mix = args.mix()?;
    anyhow::ensure!(args.records > 0, "--records must be positive");
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be positive");
    anyhow::ensure!(args.concurrency <= 1 << 20, "--concurrency is too large (at most 1048576)");
    if let Some(rate) = args.rate {
        anyhow::ensure!(rate.is_finite() && rate > 0.0, "--rate must be a positive number of operations per second");
    }
    if let Length::Operations(0) = args.length() {
        anyhow::bail!("--operations must be positive");
    }
    let distribution = args.distribution.unwrap_or_else(|| args.workload.default_distribution());

    anyhow::ensure!(!args.key_prefix.is_empty(), "--key-prefix must not be empty");
    let options = TargetOptions {
        tenant: args.tenant.clone(),
        consistency: args.consistency,
        value_size: args.value_size,
        key_prefix: args.key_prefix.clone(),
    };
    let target = Target::connect(&args.target, &options).await?;
    let space = Arc::new(KeySpace::new(args.records));
    let ctx = Ctx {
        target: target.clone(),
        space: space.clone(),
        concurrency: args.concurrency,
        warmup: args.warmup,
        length: args.length(),
        done: Arc::default(),
    };
    if target.needs_load() && !args.skip_load {
        load(&ctx, args.records).await?;
    }

    let keys = match distribution {
        Distribution::Uniform => KeyChooser::Uniform,
        Distribution::Zipfian => KeyChooser::Zipfian(ScrambledZipfian::default()),
        Distribution::Latest => KeyChooser::Latest(SkewedLatest::new(args.records)),
    };
    let generator = OpGenerator { mix, keys, space, rng: SmallRng::from_rng(&mut rand::rng()) };
    let progress = Progress::start(&ctx);
    let (stats, elapsed) = match args.rate {
        None => closed_loop(&ctx, &generator).await?,
        Some(rate) => open_loop(&ctx, generator, rate).await?,
    };
    progress.finish();

    let info = RunInfo {
        target: args.target.to_string(),
        workload: args.workload.name().into(),
        distribution: distribution.name().into(),
        proportions: json!({ "read": mix.read, "update": mix.update, "insert": mix.insert, "rmw": mix.rmw }),
        records: args.records,
        value_size: args.value_size,
        concurrency: args.concurrency,
        rate: args.rate,
        warmup: args.warmup,
        consistency: args.consistency.map(|c| format!("{c:?}").to_lowercase()),
        tenant: args.tenant.clone(),
        label: args.label.clone().unwrap_or_else(|| args.target.scheme_name().into()),
    };
    print!("{}", report::to_text(&info, &stats, elapsed));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report::to_json(&info, &stats, elapsed))?;
        std::fs::write(path, text + "\n").map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        report::plot(path, &info, &stats)?;
    }
    Ok(())
}

/// The load phase: inserts records `0..records`, `concurrency` at a time.
async fn load(ctx: &Ctx, records: u64) -> anyhow::Result<()> {
    let bar = ProgressBar::new(records).with_message("load").with_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} records, {per_sec}, eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..(ctx.concurrency as u64).min(records) {
        let (target, next, bar) = (ctx.target.clone(), next.clone(), bar.clone());
        tasks.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= records {
                    return Ok(());
                }
                if let Err(error) = execute_timed(&target, OpKind::Insert, index).await {
                    let key = String::from_utf8_lossy(&target.key(index)).into_owned();
                    anyhow::bail!("loading record {key} failed: {}: {}", error.code, error.message);
                }
                bar.inc(1);
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    bar.finish_and_clear();
    eprintln!("loaded {records} records in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `concurrency` tasks, each with one operation in flight.
async fn closed_loop(ctx: &Ctx, generator: &OpGenerator) -> anyhow::Result<(Stats, Duration)> {
    let measure_from = Instant::now() + ctx.warmup;
    let end = match ctx.length {
        Length::Duration(duration) => Some(measure_from + duration),
        Length::Operations(_) => None,
    };
    let issued = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..ctx.concurrency {
        let (target, space, done, issued) = (ctx.target.clone(), ctx.space.clone(), ctx.done.clone(), issued.clone());
        let mut generator = generator.fork();
        let length = ctx.length;
        workers.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            loop {
                let begin = Instant::now();
                let measured = begin >= measure_from;
                if measured {
                    let more = match (length, end) {
                        (Length::Operations(n), _) => issued.fetch_add(1, Ordering::Relaxed) < n,
                        (Length::Duration(_), Some(end)) => begin < end,
                        (Length::Duration(_), None) => unreachable!("a duration has an end"),
                    };
                    if !more {
                        return stats;
                    }
                }
                let (kind, index) = generator.next();
                let result = execute_on(&target, &space, kind, index).await;
                if measured {
                    stats.record(target.report_name(kind), result, begin.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let mut total = Stats::default();
    for worker in workers {
        total.merge(&worker.await?);
    }
    Ok((total, measure_from.elapsed()))
}

/// How far ahead of its scheduled start the open loop may send an
/// operation. The scheduling thread sleeps until an operation's start, then
/// sends it and every later one due within this window, so that it wakes at
/// most a thousand times a second whatever the rate. Waking once per
/// operation cost the client about 110 µs of CPU per operation on two
/// shared cores, twice a closed loop's, and took that CPU from the server
/// under test.
const RELEASE_AHEAD: Duration = Duration::from_millis(1);

/// How long the scheduling thread sleeps before sending the operation
/// scheduled at `intended`: nothing when it is due within
/// [`RELEASE_AHEAD`], else until its start.
fn wait_before(intended: Instant, now: Instant) -> Option<Duration> {
    (intended > now + RELEASE_AHEAD).then(|| intended - now)
}

/// The latency of an open-loop operation: from its scheduled start when it
/// was sent late (waiting for a slot, or the harness's own lag, counts), from
/// its send when it was sent early in a batch (never less than the target
/// took).
fn open_loop_latency(intended: Instant, sent: Instant, finished: Instant) -> Duration {
    finished - intended.min(sent)
}

/// Operations scheduled at `rate` per second from a dedicated thread (its
/// sleeps are precise to tens of µs; tokio's timer has 1 ms granularity),
/// each sent as soon as one of the `concurrency` slots is free, in batches
/// of those due within [`RELEASE_AHEAD`]. Latency is measured from the
/// scheduled start (or the send, if earlier), so waiting for a slot counts.
async fn open_loop(ctx: &Ctx, mut generator: OpGenerator, rate: f64) -> anyhow::Result<(Stats, Duration)> {
    let slots = Arc::new(Semaphore::new(ctx.concurrency));
    let stats = Arc::new(Mutex::new(Stats::default()));
    let runtime = tokio::runtime::Handle::current();
    let t0 = Instant::now();
    let measure_from = t0 + ctx.warmup;
    let scheduler = {
        let (slots, stats, length) = (slots.clone(), stats.clone(), ctx.length);
        let (target, space, done) = (ctx.target.clone(), ctx.space.clone(), ctx.done.clone());
        tokio::task::spawn_blocking(move || {
            let mut measured_started = 0u64;
            for i in 0u64.. {
                let intended = t0 + Duration::from_secs_f64(i as f64 / rate);
                let measured = intended >= measure_from;
                if measured {
                    let more = match length {
                        Length::Duration(duration) => intended < measure_from + duration,
                        Length::Operations(n) => measured_started < n,
                    };
                    if !more {
                        break;
                    }
                    measured_started += 1;
                }
                if let Some(wait) = wait_before(intended, Instant::now()) {
                    std::thread::sleep(wait);
                }
                let slot = runtime.block_on(slots.clone().acquire_owned()).expect("slots stay open");
                let (kind, index) = generator.next();
                let (target, space, stats, done) = (target.clone(), space.clone(), stats.clone(), done.clone());
                runtime.spawn(async move {
                    let sent = Instant::now();
                    let result = execute_on(&target, &space, kind, index).await;
                    let finished = Instant::now();
                    if measured {
                        let mut stats = stats.lock().expect("stats lock");
                        stats.record(target.report_name(kind), result, open_loop_latency(intended, sent, finished));
                        stats.record_start_delay(sent.saturating_duration_since(intended));
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    // Only now: the run ends when every slot is back.
                    drop(slot);
                });
            }
        })
    };
    scheduler.await?;
    // Every slot back: every operation has finished.
    let _all = slots.acquire_many(ctx.concurrency as u32).await?;
    let elapsed = measure_from.elapsed();
    let stats = stats.lock().expect("stats lock").clone();
    Ok((stats, elapsed))
}

/// A progress line on stderr (hidden when stderr is not a terminal).
struct Progress {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(ctx: &Ctx) -> Self {
        let bar = ProgressBar::new_spinner()
            .with_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
        let (line, done) = (bar.clone(), ctx.done.clone());
        let (warmup, length, started) = (ctx.warmup, ctx.length, Instant::now());
        let ticker = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let elapsed = started.elapsed();
                let message = if elapsed < warmup {
                    format!("warmup {:.0}s of {:.0}s", elapsed.as_secs_f64(), warmup.as_secs_f64())
                } else {
                    let measured = (elapsed - warmup).as_secs_f64();
                    let count = done.load(Ordering::Relaxed);
                    match length {
                        Length::Duration(d) => format!("{count} ops, {measured:.0}s of {:.0}s", d.as_secs_f64()),
                        Length::Operations(n) => format!("{count} of {n} ops, {measured:.0}s"),
                    }
                };
                line.set_message(message);
                line.tick();
            }
        });
        Progress { bar, ticker }
    }

    fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_e_is_refused_with_the_reason() {
        let error = parse_workload("e").expect_err("no scans");
        assert!(error.contains("range scan"), "{error}");
        assert_eq!(parse_workload("F"), Ok(CoreWorkload::F));
        assert!(parse_workload("g").is_err());
    }

    #[test]
    fn the_open_loop_sleeps_only_for_operations_beyond_its_release_window() {
        let now = Instant::now();
        assert_eq!(wait_before(now, now), None, "due now: sent at once");
        assert_eq!(wait_before(now - Duration::from_millis(5), now), None, "late: sent at once");
        assert_eq!(wait_before(now + RELEASE_AHEAD, now), None, "due within the window: sent with the batch");
        let later = now + RELEASE_AHEAD + Duration::from_micros(1);
        assert_eq!(wait_before(later, now), Some(later - now), "beyond it: sleep until its start");
    }

    #[test]
    fn open_loop_latency_counts_lateness_and_never_less_than_the_target_took() {
        let intended = Instant::now();
        let ms = Duration::from_millis;
        // Sent 3 ms late, answered 2 ms after: the client waited 5 ms.
        assert_eq!(open_loop_latency(intended, intended + ms(3), intended + ms(5)), ms(5));
        // Sent 1 ms early in a batch, answered 2 ms after its send.
        assert_eq!(open_loop_latency(intended + ms(1), intended, intended + ms(2)), ms(2));
    }

    #[test]
    fn warmup_may_be_zero() {
        assert_eq!(parse_warmup("0"), Ok(Duration::ZERO));
        assert_eq!(parse_warmup("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_warmup("5s"), Ok(Duration::from_secs(5)));
        assert!(parse_warmup("soon").is_err());
    }
}
