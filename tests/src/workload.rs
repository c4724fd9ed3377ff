//! Seeded client workloads that record a history, and the audit that ends a
//! fault scenario.
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

use cohort_checker::{FinalState, History, OpKind, Outcome, ReplicaState, ReplicaStates, Verdict};
use cohort_client::{Client, Consistency, Context, ReadOptions, WriteOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{TENANT, TestCluster, values_of};

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

    /// Waits until `count` operations have completed (polling; bounded by
    /// `deadline` so a stalled workload fails the test instead of hanging).
    pub async fn wait_for(&self, count: u64, deadline: Duration) {
        crate::eventually(&format!("{count} operations completed"), deadline, || async { self.completed() >= count })
            .await;
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

/// Runs client `id` of `workload` against `client`, recording into `recorder`.
pub async fn run_client(id: u32, workload: Workload, client: Client, recorder: Recorder) {
    let mut rng = StdRng::seed_from_u64(workload.seed.wrapping_mul(1_000_003).wrapping_add(id.into()));
    let mut last_read: HashMap<String, (Vec<String>, Context)> = HashMap::new();
    for n in 0..workload.ops_per_client {
        let (key, roll) = if workload.chains {
            // Read, then write with that read's context, on the client's own key.
            (format!("c{id}-k{}", (n / 2) % workload.keys), if n % 2 == 0 { 0 } else { 70 })
        } else {
            (format!("k{}", rng.random_range(0..workload.keys)), rng.random_range(0..100))
        };
        let value = format!("s{}-c{id}-{n}", workload.seed);
        if roll < 40 {
            let handle = recorder.history.lock().expect("history").invoke(id, key.clone(), OpKind::Read);
            let outcome = match client.get(TENANT, key.clone()).await {
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
            let delete = !workload.blind_only && roll >= 88;
            let kind = if delete { OpKind::delete(replaces) } else { OpKind::put(value.clone(), replaces) };
            let handle = recorder.history.lock().expect("history").invoke(id, key.clone(), kind);
            let options = WriteOptions { context, ..Default::default() };
            let result = if delete {
                client.delete(TENANT, key.clone(), options).await
            } else {
                client.put_with(TENANT, key.clone(), value, options).await
            };
            let outcome = match result {
                Ok(_) => Outcome::ok(),
                Err(error) => outcome_of_error(&error),
            };
            recorder.history.lock().expect("history").complete(handle, outcome);
        }
        recorder.completed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Starts every client of `workload`, round-robin over `clients`.
pub fn start(workload: Workload, clients: &[Client], recorder: &Recorder) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workload.clients)
        .map(|id| {
            let client = clients[id as usize % clients.len()].clone();
            tokio::spawn(run_client(id, workload, client, recorder.clone()))
        })
        .collect()
}

/// After faults healed: reads every key at `all` (the cluster must run with
/// synchronous read repair, so these reads repair every replica), reads every
/// replica directly, and audits the history. Writes abandoned by timeouts
/// may still land late, so the passes repeat until two in a row see the same
/// replica states (at most five).
pub async fn final_audit(cluster: &TestCluster, client: &Client, history: &History) -> Verdict {
    let all = ReadOptions { consistency: Some(Consistency::All) };
    let mut previous: Option<ReplicaStates> = None;
    let mut final_state = FinalState::new();
    let mut replicas = ReplicaStates::new();
    let keys: std::collections::BTreeSet<String> = history.ops().iter().map(|op| op.key.clone()).collect();
    for _pass in 0..5 {
        final_state = FinalState::new();
        replicas = ReplicaStates::new();
        for key in &keys {
            let key = key.clone();
            let read =
                client.get_with(TENANT, key.clone(), all.clone()).await.expect("final read at ALL after healing");
            final_state.insert(key.clone(), strings(&read.siblings));
            let mut states = Vec::new();
            for index in 0..cluster.node_count() {
                let state = cluster.replica_state(index, &key).await;
                states.push(ReplicaState::from((format!("node-{}", index + 1), values_of(&state), state.encode())));
            }
            replicas.insert(key, states);
        }
        let settled = previous.as_ref().is_some_and(|p| same_states(p, &replicas));
        if settled {
            break;
        }
        previous = Some(replicas.clone());
    }
    cohort_checker::audit(history, &final_state, Some(&replicas))
}

fn same_states(a: &ReplicaStates, b: &ReplicaStates) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((ka, va), (kb, vb))| {
            ka == kb && va.len() == vb.len() && va.iter().zip(vb).all(|(x, y)| x.state == y.state)
        })
}
