//! Seeded client workloads that record a history for the checkers in
//! `cohort-checker`: used by `cohort-loadtest verify` against any cluster and
//! by the fault scenarios of the test suite.
//!
//! Each client picks keys and actions from its own seeded generator: reads,
//! blind writes, read-modify-writes carrying the context of its last read of
//! the key, and deletes with that context. Every written value is unique
//! (`s{seed}-c{client}-{n}`), so every read traces back to one write. An
//! error the server returns before any replica could have applied the write
//! (invalid argument, not found, failed precondition) is recorded as
//! `Failed`; anything else — `Unavailable` after a partial write, timeouts —
//! as `Unknown`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cohort_checker::{History, OpKind, Outcome};
use cohort_client::{Client, Context, WriteOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What the clients of one scenario do.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Seeds every client's choices.
    pub seed: u64,
    /// Concurrent clients.
    pub clients: u32,
    /// Distinct keys (few, so that clients collide).
    pub keys: u32,
    /// Operations per client.
    pub ops_per_client: u32,
    /// Only blind writes (no contexts, no deletes) when true.
    pub blind_only: bool,
    /// Causal chains: each client owns its keys and alternates a read with a
    /// write carrying that read's context, so every key's history is one
    /// chain that must end with exactly one value.
    pub chains: bool,
}

/// The shared history and a count of completed operations, which fault
/// schedules use as their clock.
#[derive(Default, Clone)]
pub struct Recorder {
    history: Arc<Mutex<History>>,
    completed: Arc<AtomicU64>,
}

impl Recorder {
    /// Operations completed so far, by all clients.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Waits until `count` operations have completed, polling; panics after
    /// `deadline` so a stalled workload fails instead of hanging.
    pub async fn wait_for(&self, count: u64, deadline: Duration) {
        let start = std::time::Instant::now();
        let mut poll = tokio::time::interval(Duration::from_millis(10));
        while self.completed() < count {
            assert!(start.elapsed() < deadline, "{count} operations did not complete within {deadline:?}");
            poll.tick().await;
        }
    }

    /// The history recorded so far.
    pub fn history(&self) -> History {
        self.history.lock().expect("history lock").clone()
    }
}

fn outcome_of_error(error: &cohort_client::Error) -> Outcome {
    match error.code() {
        Some(tonic::Code::InvalidArgument | tonic::Code::NotFound | tonic::Code::FailedPrecondition) => Outcome::Failed,
        _ => Outcome::Unknown,
    }
}

fn strings(values: &[bytes::Bytes]) -> Vec<String> {
    values.iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect()
}

/// Runs client `id` of `workload` against `client` in `tenant`, recording
/// into `recorder`. Stops early when `stop` returns true.
pub async fn run_client(
    id: u32,
    workload: Workload,
    tenant: String,
    client: Client,
    recorder: Recorder,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(workload.seed.wrapping_mul(1_000_003).wrapping_add(id.into()));
    let mut last_read: HashMap<String, (Vec<String>, Context)> = HashMap::new();
    for n in 0..workload.ops_per_client {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let (key, roll) = if workload.chains {
            // Read, then write with that read's context, on the client's own key.
            (format!("c{id}-k{}", (n / 2) % workload.keys), if n % 2 == 0 { 0 } else { 70 })
        } else {
            (format!("k{}", rng.random_range(0..workload.keys)), rng.random_range(0..100))
        };
        let value = format!("s{}-c{id}-{n}", workload.seed);
        if roll < 40 {
            let handle = recorder.history.lock().expect("history").invoke(id, key.clone(), OpKind::Read);
            let outcome = match client.get(&tenant, key.clone()).await {
                Ok(read) => {
                    let values = strings(&read.siblings);
                    last_read.insert(key, (values.clone(), read.context));
                    Outcome::read(values)
                }
                Err(error) => outcome_of_error(&error),
            };
            recorder.history.lock().expect("history").complete(handle, outcome);
        } else {
            let seen = if workload.blind_only || roll < 60 { None } else { last_read.remove(&key) };
            let (replaces, context) = seen.unwrap_or_default();
            // A delete replaces what its context covers: one without a context would
            // be refused, so deletes only follow a read (or a write).
            let delete = !workload.blind_only && roll >= 88 && !context.is_empty();
            let kind =
                if delete { OpKind::delete(replaces.clone()) } else { OpKind::put(value.clone(), replaces.clone()) };
            let handle = recorder.history.lock().expect("history").invoke(id, key.clone(), kind);
            let options = WriteOptions { context, ..Default::default() };
            let result = if delete {
                client.delete_with(&tenant, key.clone(), options).await
            } else {
                client.put_with(&tenant, key.clone(), value.clone(), options).await
            };
            let outcome = match result {
                Ok(written) => {
                    // The context a write returns covers what it replaced and
                    // itself, nothing else: a later write may use it as it
                    // would a read's.
                    let mut covered = replaces;
                    if !delete {
                        covered.push(value);
                    }
                    last_read.insert(key, (covered, written.context));
                    Outcome::ok()
                }
                Err(error) => outcome_of_error(&error),
            };
            recorder.history.lock().expect("history").complete(handle, outcome);
        }
        recorder.completed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Starts every client of `workload` in `tenant`, round-robin over
/// `clients`; setting `stop` ends them early.
pub fn start(
    workload: Workload,
    tenant: &str,
    clients: &[Client],
    recorder: &Recorder,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workload.clients)
        .map(|id| {
            let client = clients[id as usize % clients.len()].clone();
            tokio::spawn(run_client(id, workload, tenant.to_string(), client, recorder.clone(), stop.clone()))
        })
        .collect()
}

/// Reads every key the history touched at consistency `all`: the final state
/// the checkers compare the history with.
pub async fn read_final_state(
    client: &Client,
    tenant: &str,
    history: &History,
) -> Result<cohort_checker::FinalState, cohort_client::Error> {
    let all = cohort_client::ReadOptions { consistency: Some(cohort_client::Consistency::All) };
    let keys: std::collections::BTreeSet<String> = history.ops().iter().map(|op| op.key.clone()).collect();
    let mut state = cohort_checker::FinalState::new();
    for key in keys {
        let read = client.get_with(tenant, key.clone(), all.clone()).await?;
        state.insert(key, strings(&read.siblings));
    }
    Ok(state)
}

/// Seeds for seeded fault scenarios: `COHORT_FAULT_SEED=N` replays one,
/// `COHORT_FAULT_SEEDS=A-B` soaks a range, otherwise the CI default (1 and 2).
pub fn fault_seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("COHORT_FAULT_SEED") {
        return vec![seed.parse().expect("COHORT_FAULT_SEED is a number")];
    }
    if let Ok(range) = std::env::var("COHORT_FAULT_SEEDS") {
        let (a, b) = range.split_once('-').expect("COHORT_FAULT_SEEDS is A-B");
        return (a.parse().expect("number")..=b.parse().expect("number")).collect();
    }
    vec![1, 2]
}

/// Prints the command that replays a scenario's seed if the scenario panics
/// while this guard lives.
pub struct Replay {
    /// `cargo test` arguments that select the test binary, e.g.
    /// `-p cohort-tests --test faults`.
    pub target: &'static str,
    /// The test's name.
    pub scenario: &'static str,
    /// The seed being run.
    pub seed: u64,
}

impl Drop for Replay {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("replay with: COHORT_FAULT_SEED={} cargo test {} -- {}", self.seed, self.target, self.scenario);
        }
    }
}
