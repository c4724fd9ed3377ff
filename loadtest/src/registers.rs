//! A recorded workload of linearizable operations (compare-and-set), shared
//! by `cohort-loadtest verify --workload cas` and the test suite: clients
//! read, conditionally write and delete a few keys, every operation is
//! recorded with its invocation and completion time, and each key's history
//! is checked for linearizability (`cohort_checker::check_register`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use cohort_checker::{NotLinearizable, RegisterCall, RegisterOp, RegisterReturn, RegisterState, check_register};
use cohort_client::{Client, Error};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What the clients of a linearizable workload do.
#[derive(Debug, Clone, Copy)]
pub struct CasWorkload {
    /// Seeds every client's choices.
    pub seed: u64,
    /// Concurrent clients.
    pub clients: u32,
    /// Distinct keys (few keys: much contention).
    pub keys: u32,
    /// Operations per client at most.
    pub ops_per_client: u32,
}

/// The history being recorded, per key, shared by the clients.
#[derive(Clone)]
pub struct CasRecorder {
    start: Instant,
    ops: Arc<Mutex<BTreeMap<String, Vec<RegisterOp>>>>,
    completed: Arc<AtomicU64>,
    unknown: Arc<AtomicU64>,
}

impl Default for CasRecorder {
    fn default() -> Self {
        CasRecorder { start: Instant::now(), ops: Arc::default(), completed: Arc::default(), unknown: Arc::default() }
    }
}

/// How a recorded history fared.
#[derive(Debug)]
pub struct CasVerdict {
    /// Operations recorded (answered, or of unknown outcome).
    pub operations: usize,
    /// Of them, writes whose outcome stayed unknown.
    pub unknown: u64,
    /// Keys whose history has no linearization.
    pub violations: Vec<(String, NotLinearizable)>,
}

impl CasVerdict {
    /// Whether every key's history is linearizable.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }
}

impl std::fmt::Display for CasVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} operations ({} of unknown outcome): ", self.operations, self.unknown)?;
        if self.violations.is_empty() {
            return write!(f, "linearizable");
        }
        for (key, violation) in &self.violations {
            write!(f, "\n  key {key}: {violation}")?;
        }
        Ok(())
    }
}

impl CasRecorder {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Operations answered so far.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Records one operation on `key`, invoked at `invoked` (from
    /// [`CasRecorder::invoke`]), with what came back. An operation that
    /// certainly did nothing (refused, or a read that failed) is left out.
    pub fn record(&self, key: &str, client: u32, invoked: u64, call: RegisterCall, ret: Option<RegisterReturn>) {
        let Some(ret) = ret else { return };
        let completed_ns = (ret != RegisterReturn::Unknown).then(|| self.now());
        if ret == RegisterReturn::Unknown {
            self.unknown.fetch_add(1, Ordering::Relaxed);
        }
        self.completed.fetch_add(1, Ordering::Relaxed);
        let op = RegisterOp { client, invoked_ns: invoked, completed_ns, call, ret };
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).entry(key.to_string()).or_default().push(op);
    }

    /// The time to invoke an operation at.
    pub fn invoke(&self) -> u64 {
        self.now()
    }

    /// Checks every key's history.
    pub fn check(&self) -> CasVerdict {
        let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let operations = ops.values().map(Vec::len).sum();
        let violations = ops
            .into_iter()
            .filter_map(|(key, history)| check_register(&history).err().map(|violation| (key, violation)))
            .collect();
        CasVerdict { operations, unknown: self.unknown.load(Ordering::Relaxed), violations }
    }
}

/// What a write's error says about its effect: `None` when it certainly did
/// nothing.
pub fn write_return(result: Result<u64, Error>) -> Option<RegisterReturn> {
    match result {
        Ok(version) => Some(RegisterReturn::Written { version }),
        Err(Error::VersionMismatch { current, .. }) => Some(RegisterReturn::Mismatch { current }),
        Err(Error::Status(status)) => {
            // Refused before anything was accepted: contended (every ballot
            // lost) or bad input. Anything else — a timeout, an outcome the
            // server calls unknown, a connection that broke mid-request —
            // may have applied.
            let nothing = matches!(
                status.code(),
                tonic::Code::Aborted
                    | tonic::Code::InvalidArgument
                    | tonic::Code::NotFound
                    | tonic::Code::FailedPrecondition
            );
            (!nothing).then_some(RegisterReturn::Unknown)
        }
        // The connection to the coordinator failed: it may have run it.
        Err(_) => Some(RegisterReturn::Unknown),
    }
}

/// Starts every client of `workload` in `tenant`, round-robin over
/// `clients`; setting `stop` ends them early.
pub fn start(
    workload: CasWorkload,
    tenant: &str,
    clients: &[Client],
    recorder: &CasRecorder,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workload.clients)
        .map(|id| {
            let client = clients[id as usize % clients.len()].clone();
            tokio::spawn(run_client(id, workload, tenant.to_string(), client, recorder.clone(), stop.clone()))
        })
        .collect()
}

async fn run_client(
    id: u32,
    workload: CasWorkload,
    tenant: String,
    client: Client,
    recorder: CasRecorder,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(workload.seed.wrapping_mul(1_000_003).wrapping_add(u64::from(id)));
    let cas = client.cas();
    // The version this client last saw of each key: its writes expect it.
    let mut known: HashMap<String, u64> = HashMap::new();
    for n in 0..workload.ops_per_client {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let key = format!("reg-{}", rng.random_range(0..workload.keys.max(1)));
        let expect = known.get(&key).copied().unwrap_or(0);
        let invoked = recorder.invoke();
        let (call, ret) = match rng.random_range(0..100) {
            0..40 => {
                let ret = cas.get(&tenant, key.clone()).await.ok().map(|read| {
                    known.insert(key.clone(), read.version);
                    RegisterReturn::Read(RegisterState {
                        version: read.version,
                        value: read.value.map(|v| String::from_utf8_lossy(&v).into_owned()),
                    })
                });
                (RegisterCall::Read, ret)
            }
            40..85 => {
                let value = format!("c{id}-{n}");
                let result = cas.put(&tenant, key.clone(), Bytes::from(value.clone()), expect).await;
                note(&mut known, &key, &result);
                (RegisterCall::Put { expect, value }, write_return(result))
            }
            _ => {
                let result = cas.delete(&tenant, key.clone(), expect).await;
                note(&mut known, &key, &result);
                (RegisterCall::Delete { expect }, write_return(result))
            }
        };
        recorder.record(&key, id, invoked, call, ret);
    }
}

/// Remembers the version a write's answer names.
fn note(known: &mut HashMap<String, u64>, key: &str, result: &Result<u64, Error>) {
    match result {
        Ok(version) | Err(Error::VersionMismatch { current: version, .. }) => {
            known.insert(key.to_string(), *version);
        }
        Err(_) => {}
    }
}
