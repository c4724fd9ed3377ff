//! Seeded fault scenarios on real processes (guarantees 1–4):
//! three `cohort node` processes (durability `fsync`) and a
//! `cohort coordinator` serve a tenant with N = 3 while clients run the
//! recorded workload of `cohort_loadtest::workload`, and a fault schedule
//! freezes a node with SIGSTOP/SIGCONT, kills a node with SIGKILL while
//! writes (and so group commits) are in flight and restarts it on the same
//! data directory and port, or kills and restarts the coordinator. Then every
//! key is read at `all` (synchronous read repair), every replica is read
//! directly, and the history is audited: no acknowledged write lost, no
//! phantom, no resurrection, and every replica identical. The same kills
//! under the compare-and-set workload must leave every key's history
//! linearizable (guarantee 8).
//!
//! The seed derives the workload and the fault schedule. To replay one seed
//! or soak many:
//!
//! ```sh
//! COHORT_FAULT_SEED=7 cargo test -p cohort-cli --test process_faults -- paused_node_process
//! COHORT_FAULT_SEEDS=1-50 cargo test -p cohort-cli --test process_faults
//! ```

#![allow(missing_docs)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_checker::{FinalState, History, ReplicaState, ReplicaStates, Summary, Verdict};
use cohort_client::{Client, Consistency, ReadOptions, ReadResult, RetryPolicy};
use cohort_loadtest::workload::{Recorder, Workload, start};
use cohort_proto::internal::v1::ReadRequest;
use cohort_proto::internal::v1::storage_client::StorageClient;
use cohort_ring::SiblingSet;
use common::{Coordinator, DEADLINE, Proc, admin, node_id, try_start_coordinator, try_start_node};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

const TENANT: &str = "app";
const NODES: usize = 3;
/// Bound on waiting for the workload to reach a point of the schedule.
const WORKLOAD_DEADLINE: Duration = Duration::from_secs(120);

/// The coordinator's settings: short timeouts so that a frozen or dead node
/// costs little time, and synchronous read repair so that the final reads at
/// `all` leave every replica repaired.
const COORDINATOR_TOML: &str = r#"
node_timeout = "300ms"
request_timeout = "3s"
read_repair = "sync"

[metadata]
backend = "embedded"
ring_refresh = "200ms"

[idempotency]
backend = "embedded"
"#;

fn seeds() -> Vec<u64> {
    cohort_loadtest::workload::fault_seeds()
}

fn replay(scenario: &'static str, seed: u64) -> cohort_loadtest::workload::Replay {
    cohort_loadtest::workload::Replay { target: "-p cohort-cli --test process_faults", scenario, seed }
}

/// Runs blocking process management (spawning, waiting for a line, reaping,
/// CLI commands) without stalling the runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Three node processes and a coordinator process. Field order matters: the
/// processes are dropped (killed) before the directory they write to is
/// removed.
struct Cluster {
    nodes: Vec<Option<Proc>>,
    /// Each node's current Storage API address (`host:port`).
    addresses: Vec<String>,
    coordinator: Option<Coordinator>,
    /// `host:port` of the coordinator's public API, kept across restarts.
    coordinator_listen: String,
    config: PathBuf,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts three nodes and a coordinator, registers the nodes and creates
    /// the tenant (N = 3, R = W = 2).
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        let config = dir.path().join("coordinator.toml");
        std::fs::write(&config, COORDINATOR_TOML).expect("write the coordinator's configuration");
        let mut nodes = Vec::new();
        let mut addresses = Vec::new();
        for index in 0..NODES {
            let (proc, address) = try_start_node(&node_id(index), &Self::node_dir(dir.path(), index), "127.0.0.1:0")
                .unwrap_or_else(|why| panic!("{why}"));
            nodes.push(Some(proc));
            addresses.push(address);
        }
        let mut cluster =
            Cluster { nodes, addresses, coordinator: None, coordinator_listen: "127.0.0.1:0".into(), config, dir };
        let coordinator = cluster.spawn_coordinator().unwrap_or_else(|why| panic!("{why}"));
        cluster.coordinator_listen = coordinator.endpoint.trim_start_matches("http://").to_string();
        cluster.coordinator = Some(coordinator);
        let endpoint = cluster.endpoint();
        for (index, address) in cluster.addresses.iter().enumerate() {
            admin(&endpoint, &["node", "add", "--wait", "--id", &node_id(index), "--address", address]);
        }
        admin(&endpoint, &["tenant", "create", TENANT, "--replication", "3"]);
        cluster
    }

    fn node_dir(dir: &Path, index: usize) -> PathBuf {
        dir.join(node_id(index))
    }

    fn spawn_coordinator(&self) -> Result<Coordinator, String> {
        let config = self.config.to_str().expect("UTF-8 path");
        try_start_coordinator(
            &self.dir.path().join("coordinator"),
            &self.coordinator_listen,
            &["--config", config],
            &[],
        )
    }

    /// `http://host:port` of the coordinator's public API.
    fn endpoint(&self) -> String {
        format!("http://{}", self.coordinator_listen)
    }

    fn node(&self, index: usize) -> &Proc {
        self.nodes[index].as_ref().expect("the node runs")
    }

    /// Kills node `index` with SIGKILL, as a crash would, and reaps it.
    fn kill_node(&mut self, index: usize) {
        self.nodes[index].take().expect("the node runs").kill();
    }

    /// Starts node `index` again on its data directory, on the port it had
    /// when it can be bound again; otherwise on a new port, re-registered
    /// with `admin node add`. Returns whether it kept its port.
    fn restart_node(&mut self, index: usize) -> bool {
        assert!(self.nodes[index].is_none(), "node {index} is still running");
        let (id, dir) = (node_id(index), Self::node_dir(self.dir.path(), index));
        match try_start_node(&id, &dir, &self.addresses[index]) {
            Ok((proc, address)) => {
                assert_eq!(address, self.addresses[index], "{id} restarted on another address");
                self.nodes[index] = Some(proc);
                true
            }
            Err(why) => {
                eprintln!("{id} could not restart on {}: {why}; restarting on a new port", self.addresses[index]);
                let (proc, address) = try_start_node(&id, &dir, "127.0.0.1:0").unwrap_or_else(|why| panic!("{why}"));
                self.nodes[index] = Some(proc);
                admin(&self.endpoint(), &["node", "add", "--id", &id, "--address", &address]);
                self.addresses[index] = address;
                false
            }
        }
    }

    /// Kills the coordinator with SIGKILL and reaps it.
    fn kill_coordinator(&mut self) {
        self.coordinator.take().expect("the coordinator runs").proc.kill();
    }

    /// Starts the coordinator again on its data directory and port, polling
    /// until the port can be bound again.
    fn restart_coordinator(&mut self) {
        assert!(self.coordinator.is_none(), "the coordinator is still running");
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.spawn_coordinator() {
                Ok(coordinator) => {
                    assert_eq!(coordinator.endpoint, self.endpoint(), "the coordinator restarted on another port");
                    self.coordinator = Some(coordinator);
                    return;
                }
                Err(why) if Instant::now() < deadline => eprintln!("coordinator restart failed, retrying: {why}"),
                Err(why) => panic!("the coordinator did not restart within {DEADLINE:?}: {why}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A client of the coordinator without retries: every failure is recorded.
async fn client_for(endpoint: &str) -> Client {
    Client::connect(endpoint)
        .await
        .expect("connect to the coordinator")
        .with_retry(RetryPolicy { max_attempts: 1, ..RetryPolicy::default() })
}

fn workload(seed: u64) -> Workload {
    Workload { seed, clients: 4, keys: 5, ops_per_client: 40, blind_only: false, chains: false }
}

fn total_ops(workload: &Workload) -> u64 {
    u64::from(workload.clients * workload.ops_per_client)
}

/// Waits until `fraction` of `total` operations have completed.
async fn at(recorder: &Recorder, total: u64, fraction: f64) -> u64 {
    let target = (total as f64 * fraction) as u64;
    recorder.wait_for(target, WORKLOAD_DEADLINE).await;
    recorder.completed()
}

async fn join(clients: Vec<JoinHandle<()>>) {
    for client in clients {
        client.await.expect("client task");
    }
}

fn strings(values: &[Bytes]) -> Vec<String> {
    let mut values: Vec<String> = values.iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect();
    values.sort();
    values
}

fn values_of(state: &SiblingSet) -> Vec<String> {
    let mut values: Vec<String> = state.values().map(|v| String::from_utf8_lossy(v).into_owned()).collect();
    values.sort();
    values
}

async fn storage_client(address: &str) -> StorageClient<Channel> {
    StorageClient::connect(format!("http://{address}")).await.unwrap_or_else(|e| panic!("connect to {address}: {e}"))
}

/// One replica's own state of `key`, read through the internal Storage API.
async fn replica_state(storage: &mut StorageClient<Channel>, key: &str) -> SiblingSet {
    // Inspection, not routing: past any ring fence.
    let request = ReadRequest {
        tenant: TENANT.into(),
        key: Bytes::copy_from_slice(key.as_bytes()),
        ring_version: u64::MAX,
        ..Default::default()
    };
    let state = storage.read(request).await.expect("replica read").into_inner().state;
    if state.is_empty() { SiblingSet::new() } else { SiblingSet::decode(&state).expect("decodable state") }
}

/// Reads `key` at `all`, polling (up to [`DEADLINE`]) while a replica is not
/// reachable yet, e.g. a node that just restarted.
async fn read_all(client: &Client, key: &str) -> ReadResult {
    let all = ReadOptions { consistency: Some(Consistency::All) };
    let deadline = Instant::now() + DEADLINE;
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    loop {
        poll.tick().await;
        match client.get_with(TENANT, key.to_string(), all.clone()).await {
            Ok(read) => return read,
            Err(error) if Instant::now() < deadline => {
                eprintln!("final read of {key:?} at ALL failed, retrying: {error}")
            }
            Err(error) => panic!("final read of {key:?} at ALL still fails after {DEADLINE:?}: {error}"),
        }
    }
}

/// After faults healed: reads every key of `history` at `all` (the
/// coordinator runs with synchronous read repair, so these reads repair every
/// replica), reads every replica directly, and audits the history. Writes
/// abandoned by timeouts (or held by a frozen process) may still land late,
/// so the passes repeat until two in a row see the same replica states (at
/// most five).
async fn final_audit(cluster: &Cluster, client: &Client, history: &History) -> Verdict {
    let keys: BTreeSet<String> = history.ops().iter().map(|op| op.key.clone()).collect();
    let mut storages = Vec::new();
    for address in &cluster.addresses {
        storages.push(storage_client(address).await);
    }
    let mut previous: Option<ReplicaStates> = None;
    let mut final_state = FinalState::new();
    let mut replicas = ReplicaStates::new();
    for _pass in 0..5 {
        final_state = FinalState::new();
        replicas = ReplicaStates::new();
        for key in &keys {
            let read = read_all(client, key).await;
            final_state.insert(key.clone(), strings(&read.siblings));
            let mut states = Vec::new();
            for (index, storage) in storages.iter_mut().enumerate() {
                let state = replica_state(storage, key).await;
                states.push(ReplicaState::from((node_id(index), values_of(&state), state.encode())));
            }
            replicas.insert(key.clone(), states);
        }
        if previous.as_ref().is_some_and(|p| cohort_checker::same_replica_states(p, &replicas)) {
            break;
        }
        previous = Some(replicas.clone());
    }
    cohort_checker::audit(history, &final_state, Some(&replicas))
}

/// Audits `history` on `cluster` and asserts a clean verdict with at least
/// one acknowledged write.
async fn audit(scenario: &str, seed: u64, cluster: &Cluster, history: &History) -> Summary {
    let client = client_for(&cluster.endpoint()).await;
    let verdict = final_audit(cluster, &client, history).await;
    println!("{scenario} seed {seed}: {}", verdict.summary());
    assert!(verdict.is_ok(), "{verdict}");
    assert!(verdict.summary().acknowledged_writes > 0, "the workload acknowledged nothing: {}", verdict.summary());
    verdict.summary()
}

/// Polls (up to [`DEADLINE`]) until the kernel reports `proc` as stopped by
/// a signal, or as no longer stopped. Only on Linux, where `/proc` tells.
async fn wait_until_stopped(proc: &Proc, stopped: bool) {
    let stat = format!("/proc/{}/stat", proc.pid());
    let deadline = Instant::now() + DEADLINE;
    let mut poll = tokio::time::interval(Duration::from_millis(5));
    loop {
        poll.tick().await;
        let Ok(text) = std::fs::read_to_string(&stat) else { return };
        // "pid (comm) S ...": the state follows the command name.
        let state = text.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
        if matches!(state, Some('T')) == stopped {
            return;
        }
        assert!(Instant::now() < deadline, "{stat}: state {state:?} after {DEADLINE:?}, expected stopped: {stopped}");
    }
}

/// SIGSTOP freezes one node's process for the middle of the run: its
/// connections stay open but nothing answers, so requests to it time out
/// rather than fail. SIGCONT lets it work through what queued up meanwhile,
/// including writes whose clients gave up long ago.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_node_process() {
    const SCENARIO: &str = "paused_node_process";
    for seed in seeds() {
        let _replay = replay(SCENARIO, seed);
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let cluster = blocking(Cluster::start);
        let client = client_for(&cluster.endpoint()).await;
        let (workload, recorder, stop) = (workload(seed), Recorder::default(), Arc::new(AtomicBool::new(false)));
        let total = total_ops(&workload);
        let clients = start(workload, TENANT, &[client], &recorder, &stop);

        let victim = rng.random_range(0..NODES);
        let pause_at = rng.random_range(0.1..0.4);
        let resume_at = pause_at + rng.random_range(0.15..0.4);
        let paused = at(&recorder, total, pause_at).await;
        cluster.node(victim).signal("STOP");
        wait_until_stopped(cluster.node(victim), true).await;
        let pause_time = Instant::now();
        let resumed = at(&recorder, total, resume_at).await;
        cluster.node(victim).signal("CONT");
        wait_until_stopped(cluster.node(victim), false).await;
        println!(
            "{SCENARIO} seed {seed}: {} stopped from op {paused} to op {resumed} of {total} ({:?})",
            node_id(victim),
            pause_time.elapsed()
        );

        join(clients).await;
        audit(SCENARIO, seed, &cluster, &recorder.history()).await;
        blocking(|| drop(cluster));
    }
}

/// One write of the probe writers, which run beside the workload to learn
/// which replicas acknowledged what (the workload does not keep receipts).
struct Probe {
    key: String,
    value: String,
    /// Node ids the write's receipt names as having acknowledged it.
    replicas: Vec<String>,
    /// When the acknowledgement reached the test.
    completed: Instant,
}

/// Blind writes of unique values to fresh keys (`probe-…`, outside the
/// workload's keys) until `stop`; returns the acknowledged ones.
async fn probe_writer(client: Client, seed: u64, writer: u32, stop: Arc<AtomicBool>) -> Vec<Probe> {
    let mut acked = Vec::new();
    let mut n = 0u32;
    while !stop.load(Ordering::SeqCst) {
        let key = format!("probe-s{seed}-w{writer}-{n}");
        let value = format!("probe-value-s{seed}-w{writer}-{n}");
        n += 1;
        if let Ok(written) = client.put(TENANT, key.clone(), value.clone()).await {
            let completed = Instant::now();
            let replicas = written.receipt.map(|r| r.replicas).unwrap_or_default();
            let replicas = replicas.into_iter().map(|r| r.node_id).collect();
            acked.push(Probe { key, value, replicas, completed });
        }
    }
    acked
}

/// SIGKILL of a node while writes are continuously in flight, so that group
/// commits are in progress on it, then a restart on the same data directory
/// (and port). Every write the killed node acknowledged before it died must be
/// in its own store when it comes back, before anything could repair it: an
/// acknowledgement means the group commit covering the write completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_killed_mid_group_commit() {
    const SCENARIO: &str = "node_killed_mid_group_commit";
    for seed in seeds() {
        let _replay = replay(SCENARIO, seed);
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let mut cluster = blocking(Cluster::start);
        let client = client_for(&cluster.endpoint()).await;
        let (workload, recorder, stop) = (workload(seed), Recorder::default(), Arc::new(AtomicBool::new(false)));
        let total = total_ops(&workload);
        let clients = start(workload, TENANT, std::slice::from_ref(&client), &recorder, &stop);
        let stop_probes = Arc::new(AtomicBool::new(false));
        let probes: Vec<_> = (0..3)
            .map(|writer| tokio::spawn(probe_writer(client.clone(), seed, writer, stop_probes.clone())))
            .collect();

        let victim = rng.random_range(0..NODES);
        let kill_at = rng.random_range(0.2..0.5);
        let restart_at = kill_at + rng.random_range(0.05..0.25);
        let killed = at(&recorder, total, kill_at).await;
        let kill_time = Instant::now();
        blocking(|| cluster.kill_node(victim));
        stop_probes.store(true, Ordering::SeqCst);
        let mut probed = Vec::new();
        for probe in probes {
            probed.extend(probe.await.expect("probe writer"));
        }
        let restarted = at(&recorder, total, restart_at).await;
        let same_port = blocking(|| cluster.restart_node(victim));
        let victim_id = node_id(victim);
        println!(
            "{SCENARIO} seed {seed}: {victim_id} killed at op {killed}, restarted at op {restarted} of {total} \
             ({} port)",
            if same_port { "same" } else { "new" }
        );

        // The victim's own state, read before any read repair: nobody reads
        // the probe keys, and no write touches them again.
        let before_kill: Vec<&Probe> =
            probed.iter().filter(|p| p.completed < kill_time && p.replicas.contains(&victim_id)).collect();
        assert!(!before_kill.is_empty(), "{victim_id} acknowledged no probe write before it was killed");
        let mut storage = storage_client(&cluster.addresses[victim]).await;
        let mut lost = Vec::new();
        for probe in &before_kill {
            let state = replica_state(&mut storage, &probe.key).await;
            if !state.values().any(|v| v == probe.value.as_bytes()) {
                lost.push(format!("{} (acked by {:?}): node holds {:?}", probe.key, probe.replicas, values_of(&state)));
            }
        }
        assert!(
            lost.is_empty(),
            "{victim_id} lost {} of the {} writes it acknowledged before SIGKILL:\n{}",
            lost.len(),
            before_kill.len(),
            lost.join("\n")
        );
        println!(
            "{SCENARIO} seed {seed}: {} probe writes acknowledged, {} by {victim_id} before the kill, all kept",
            probed.len(),
            before_kill.len()
        );

        join(clients).await;
        audit(SCENARIO, seed, &cluster, &recorder.history()).await;
        blocking(|| drop(cluster));
    }
}

/// SIGKILL of the coordinator mid-workload (requests in flight become
/// unknown outcomes), then a restart on the same data directory (embedded
/// metadata) and port. The clients keep their channels, which reconnect
/// lazily, and a second workload phase on the same history shows the
/// restarted coordinator serving them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_and_restarted() {
    const SCENARIO: &str = "coordinator_killed_and_restarted";
    for seed in seeds() {
        let _replay = replay(SCENARIO, seed);
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let mut cluster = blocking(Cluster::start);
        let client = client_for(&cluster.endpoint()).await;
        let (recorder, stop) = (Recorder::default(), Arc::new(AtomicBool::new(false)));
        let first = workload(seed);
        let total = total_ops(&first);
        let clients = start(first, TENANT, std::slice::from_ref(&client), &recorder, &stop);

        let kill_at = rng.random_range(0.2..0.8);
        let killed = at(&recorder, total, kill_at).await;
        blocking(|| cluster.kill_coordinator());
        blocking(|| cluster.restart_coordinator());
        join(clients).await;
        let phase_one = recorder.history().len();

        // The second phase's values carry another seed, so every written
        // value stays unique across the whole history.
        let second = workload(seed + (1 << 32));
        let clients = start(second, TENANT, std::slice::from_ref(&client), &recorder, &stop);
        join(clients).await;
        let history = recorder.history();
        let acked_after = history.ops()[phase_one..].iter().filter(|op| op.is_ok()).count();
        println!(
            "{SCENARIO} seed {seed}: coordinator killed at op {killed} of {total}; {acked_after} of {} operations \
             acknowledged after the restart",
            history.len() - phase_one
        );
        assert!(acked_after > 0, "the restarted coordinator acknowledged nothing through the old client");

        audit(SCENARIO, seed, &cluster, &history).await;
        blocking(|| drop(cluster));
    }
}

/// Compare-and-set on real processes: the recorded CAS workload runs while a
/// node is killed with SIGKILL (accepts and their syncs in flight) and
/// restarted on its directory, then the coordinator is killed and
/// restarted; every key's history must be linearizable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_linearizable_through_killed_node_and_coordinator() {
    use cohort_loadtest::registers::{self, CasRecorder, CasWorkload};
    const SCENARIO: &str = "cas_linearizable_through_killed_node_and_coordinator";
    for seed in seeds() {
        let _replay = replay(SCENARIO, seed);
        let mut rng = StdRng::seed_from_u64(seed ^ 0xca5);
        let mut cluster = blocking(Cluster::start);
        let client = client_for(&cluster.endpoint()).await;
        let workload = CasWorkload { seed, clients: 4, keys: 4, ops_per_client: 80 };
        let total = u64::from(workload.clients * workload.ops_per_client);
        let (recorder, stop) = (CasRecorder::default(), Arc::new(AtomicBool::new(false)));
        let clients = registers::start(workload, TENANT, std::slice::from_ref(&client), &recorder, &stop);
        let reached = |fraction: f64| {
            let recorder = recorder.clone();
            async move {
                let target = (total as f64 * fraction) as u64;
                let deadline = Instant::now() + WORKLOAD_DEADLINE;
                let mut poll = tokio::time::interval(Duration::from_millis(10));
                while recorder.completed() < target {
                    assert!(Instant::now() < deadline, "the workload stalled before {target} operations");
                    poll.tick().await;
                }
            }
        };
        let victim = rng.random_range(0..NODES);
        reached(0.2).await;
        blocking(|| cluster.kill_node(victim));
        reached(0.4).await;
        blocking(|| cluster.restart_node(victim));
        reached(0.6).await;
        blocking(|| cluster.kill_coordinator());
        blocking(|| cluster.restart_coordinator());
        join(clients).await;
        let verdict = recorder.check();
        println!("{SCENARIO} seed {seed}: node {victim} killed and restarted, coordinator too: {verdict}");
        assert!(verdict.is_ok(), "{verdict}");
        assert!(verdict.operations as u64 > total / 2, "too few operations answered: {verdict}");
        blocking(|| drop(cluster));
    }
}

/// Guarantee 10 on real processes: a configuration watcher, resumed by the
/// SDK across the coordinator killed with SIGKILL and restarted, sees
/// exactly the committed history from its start revision — no gap, no
/// duplicate — while writers race, and every acknowledged write is in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_watch_resumes_across_a_killed_coordinator() {
    use cohort_client::config::{ConfigWrite, WatchEvent};
    use tokio_stream::StreamExt;
    const SCENARIO: &str = "config_watch_resumes_across_a_killed_coordinator";
    for seed in seeds() {
        let _replay = replay(SCENARIO, seed);
        let mut cluster = blocking(Cluster::start);
        let client = client_for(&cluster.endpoint()).await;
        let config = client.config();
        let start = config.put(TENANT, "p/seed", "0", ConfigWrite::default()).await.unwrap().revision;
        let mut watch = config.watch(TENANT, "p/", start + 1);
        let acknowledged = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (done, finished) = (Arc::new(AtomicBool::new(false)), Arc::new(std::sync::atomic::AtomicUsize::new(0)));
        let mut writers = Vec::new();
        for writer in 0..3u64 {
            let (config, acknowledged, done, finished) =
                (client.config(), acknowledged.clone(), done.clone(), finished.clone());
            writers.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let (key, value) = (format!("p/{}", (writer + i) % 4), format!("{seed}-{writer}-{i}"));
                    if let Ok(written) = config.put(TENANT, &key, value.clone(), ConfigWrite::default()).await {
                        acknowledged.lock().unwrap().push((written.revision, key, value));
                        finished.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            }));
        }
        let reached = |count: usize| {
            let finished = finished.clone();
            async move {
                let deadline = Instant::now() + WORKLOAD_DEADLINE;
                let mut poll = tokio::time::interval(Duration::from_millis(10));
                while finished.load(Ordering::Relaxed) < count {
                    assert!(Instant::now() < deadline, "the writers stalled before {count} writes");
                    poll.tick().await;
                }
            }
        };
        reached(20).await;
        blocking(|| cluster.kill_coordinator());
        blocking(|| cluster.restart_coordinator());
        let after = finished.load(Ordering::Relaxed);
        reached(after + 20).await;
        done.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.await.unwrap();
        }
        let last = config.put(TENANT, "p/last", "end", ConfigWrite::default()).await.unwrap().revision;
        let mut seen = Vec::new();
        while seen.last().is_none_or(|(revision, _, _)| *revision < last) {
            let event = tokio::time::timeout(Duration::from_secs(60), watch.next())
                .await
                .expect("the watch delivers")
                .expect("the watch goes on")
                .expect("the SDK resumes the watch instead of failing");
            if let WatchEvent::Change(change) = event {
                let value = String::from_utf8(change.value.unwrap().to_vec()).unwrap();
                seen.push((change.revision, change.key, value));
            }
        }
        let revisions: Vec<u64> = seen.iter().map(|(r, _, _)| *r).collect();
        assert_eq!(revisions, (start + 1..=last).collect::<Vec<_>>(), "seed {seed}: no gap, no duplicate");
        for write in acknowledged.lock().unwrap().iter() {
            assert!(seen.contains(write), "seed {seed}: acknowledged {write:?} not delivered");
        }
        // The committed history, read afresh from the journal, is the same.
        let mut fresh = config.watch(TENANT, "p/", start + 1);
        let mut history = Vec::new();
        while history.last().is_none_or(|(revision, _, _)| *revision < last) {
            if let WatchEvent::Change(change) = fresh.next().await.unwrap().unwrap() {
                history.push((change.revision, change.key, String::from_utf8(change.value.unwrap().to_vec()).unwrap()));
            }
        }
        assert_eq!(seen, history, "seed {seed}");
        println!("{SCENARIO} seed {seed}: {} changes watched across the restart", seen.len());
        blocking(|| drop(cluster));
    }
}
