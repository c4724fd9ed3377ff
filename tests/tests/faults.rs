//! Seeded fault scenarios (guarantees 1–4): clients run a
//! recorded workload while a fault schedule crashes, freezes, partitions or
//! flaps storage nodes through fault-injecting proxies; then every fault is
//! healed, every key is read at `all` (repairing replicas), and the history
//! is audited: no acknowledged write lost, no phantom, no resurrection, and
//! every replica identical.
//!
//! The seed derives the workload and the fault schedule. CI runs a few seeds
//! per scenario; to replay one or soak many:
//!
//! ```sh
//! COHORT_FAULT_SEED=7 cargo test -p cohort-tests --test faults -- paused_replica
//! COHORT_FAULT_SEEDS=1-200 cargo test --release -p cohort-tests --test faults
//! ```

use std::time::Duration;

use cohort_client::Client;
use cohort_cluster::LocalCoordinator;
use cohort_coordinator::{CoordinatorConfig, ReadRepairMode};
use cohort_tests::audit::{self, Recorder, Workload};
use cohort_tests::proxy::{Fault, FaultProxy};
use cohort_tests::{TENANT, TestCluster, client_for, test_config};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn seeds() -> Vec<u64> {
    cohort_loadtest::workload::fault_seeds()
}

fn replay(scenario: &'static str, seed: u64) -> cohort_loadtest::workload::Replay {
    cohort_loadtest::workload::Replay { target: "-p cohort-tests --test faults", scenario, seed }
}

fn fault_config() -> CoordinatorConfig {
    CoordinatorConfig {
        node_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_secs(3),
        ..test_config(ReadRepairMode::Sync)
    }
}

/// A cluster whose nodes are all reached through fault proxies.
struct Env {
    cluster: TestCluster,
    proxies: Vec<FaultProxy>,
    extra: Option<LocalCoordinator>,
    clients: Vec<Client>,
    recorder: Recorder,
    workload: Workload,
    rng: StdRng,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Env {
    async fn start_workload(seed: u64, coordinators: usize, workload: Workload) -> Env {
        Self::start_configured(seed, coordinators, workload, fault_config()).await
    }

    async fn start_configured(seed: u64, coordinators: usize, workload: Workload, config: CoordinatorConfig) -> Env {
        let mut cluster = TestCluster::start_with_config(3, config).await;
        let mut proxies = Vec::new();
        for index in 0..3 {
            let proxy = FaultProxy::start(cluster.node_address(index).expect("node runs")).await;
            cluster.route_node_through(index, proxy.address().to_string()).await.expect("route through proxy");
            proxies.push(proxy);
        }
        let mut clients = vec![cluster.client().await];
        let mut extra = None;
        if coordinators > 1 {
            let second = cluster.add_coordinator().await.expect("second coordinator");
            clients.push(client_for(&second.endpoint()).await);
            extra = Some(second);
        }
        Env {
            cluster,
            proxies,
            extra,
            clients,
            recorder: Recorder::default(),
            workload,
            rng: StdRng::seed_from_u64(seed ^ 0x5eed),
            stop: Default::default(),
        }
    }

    fn total_ops(&self) -> u64 {
        u64::from(self.workload.clients * self.workload.ops_per_client)
    }

    /// Waits until `fraction` of the workload has completed.
    async fn at(&self, fraction: f64) {
        let target = (self.total_ops() as f64 * fraction) as u64;
        self.recorder.wait_for(target, Duration::from_secs(120)).await;
    }

    /// Heals every proxy, waits for the clients, audits, and shuts down.
    async fn finish(self, clients: Vec<tokio::task::JoinHandle<()>>) -> cohort_checker::Summary {
        for proxy in &self.proxies {
            proxy.set(Fault::None);
        }
        for client in clients {
            client.await.expect("client task");
        }
        let history = self.recorder.history();
        let verdict = audit::final_audit(&self.cluster, &self.clients[0], &history).await;
        println!("seed {}: {}", self.workload.seed, verdict.summary());
        assert!(verdict.is_ok(), "{verdict}");
        assert!(verdict.summary().acknowledged_writes > 0, "the workload acknowledged nothing: {}", verdict.summary());
        if let Some(second) = self.extra {
            second.stop().await;
        }
        self.cluster.shutdown().await;
        verdict.summary()
    }
}

/// A fault that holds one node for the middle of a run.
#[derive(Clone, Copy)]
enum Window {
    /// The node's process stops (connections refused), then restarts on
    /// its data directory.
    Crash,
    /// The node's links go silent (as a paused process's or a partition's),
    /// then heal.
    Freeze,
    /// The node stops, loses its data directory, and comes back under the
    /// same id and address with an empty one (a replaced disk), then runs
    /// on as a replica that repair fills.
    Wipe,
}

impl Env {
    fn start_clients(&self) -> Vec<tokio::task::JoinHandle<()>> {
        audit::start(self.workload, TENANT, &self.clients, &self.recorder, &self.stop)
    }

    async fn inject(&mut self, victim: usize, window: Window) {
        match window {
            Window::Crash => self.cluster.stop_node(victim).await,
            Window::Freeze => self.proxies[victim].set(Fault::Blackhole),
            Window::Wipe => self.cluster.wipe_node(victim).await.expect("wipe and restart"),
        }
    }

    async fn heal(&mut self, victim: usize, window: Window) {
        match window {
            Window::Crash => self.cluster.restart_node(victim).await.expect("restart"),
            Window::Freeze => self.proxies[victim].set(Fault::None),
            Window::Wipe => {}
        }
    }
}

/// Runs `workload(seed)` on every seed while `window` holds a seeded node
/// from `from` to `to` (fractions of the run), then audits.
async fn fault_window(
    scenario: &'static str,
    coordinators: usize,
    workload: impl Fn(u64) -> Workload,
    window: Window,
    (from, to): (f64, f64),
) -> Vec<cohort_checker::Summary> {
    let mut summaries = Vec::new();
    for seed in seeds() {
        let _replay = replay(scenario, seed);
        let mut env = Env::start_workload(seed, coordinators, workload(seed)).await;
        let clients = env.start_clients();
        let victim = env.rng.random_range(0..3);
        env.at(from).await;
        env.inject(victim, window).await;
        env.at(to).await;
        env.heal(victim, window).await;
        summaries.push(env.finish(clients).await);
    }
    summaries
}

fn mixed(seed: u64) -> Workload {
    Workload { seed, clients: 4, keys: 5, ops_per_client: 40, blind_only: false, chains: false }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_replica_under_quorum_writes() {
    fault_window("crashed_replica_under_quorum_writes", 1, mixed, Window::Crash, (0.25, 0.75)).await;
}

/// F2: a node whose data directory was wiped came back issuing the dots
/// it had issued before, and its peers dropped its new writes while
/// acknowledging them. A wiped node is now a new replica: nothing is lost,
/// and the final repair fills it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_replica_rejoins_under_its_id() {
    fault_window("wiped_replica_rejoins_under_its_id", 1, mixed, Window::Wipe, (0.4, 0.4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_replica() {
    fault_window("paused_replica", 1, mixed, Window::Freeze, (0.25, 0.75)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_from_one_node_then_two() {
    for seed in seeds() {
        let _replay = replay("partitioned_from_one_node_then_two", seed);
        partition_one_then_two(seed).await;
    }
}

/// Regression: with this seed, a write whose coordinating replica timed out
/// was re-sent to the next replica and stored under a second dot; the value,
/// later replaced through one dot, came back through the other ("revived").
/// Writes that may have applied are no longer re-sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_timed_out_write_applied_twice_revives_a_replaced_value() {
    let _replay = replay("regression_timed_out_write_applied_twice_revives_a_replaced_value", 26);
    partition_one_then_two(26).await;
}

/// Cuts one replica off at 20% of the run, a second at 50%, heals both at
/// 70%, and audits.
async fn partition_one_then_two(seed: u64) {
    {
        let mut env = Env::start_workload(seed, 1, mixed(seed)).await;
        let clients = env.start_clients();
        let first = env.rng.random_range(0..3);
        let second = (first + 1 + env.rng.random_range(0..2)) % 3;
        env.at(0.2).await;
        env.proxies[first].set(Fault::Blackhole);
        env.at(0.5).await;
        env.proxies[second].set(Fault::Blackhole);
        // With two of three replicas cut off, a quorum write must fail. A
        // write first sent to a cut-off replica has an unknown outcome
        // (DeadlineExceeded); once the coordinator suspects the cut-off
        // replicas, writes fail with Unavailable and say how many answered.
        let mut attempts = Vec::new();
        loop {
            let error = env.clients[0].put(TENANT, "probe", "p").await.expect_err("no write quorum");
            let code = error.code();
            attempts.push(error.to_string());
            if code == Some(tonic::Code::Unavailable) {
                assert!(error.to_string().contains("of 2 replicas needed"), "{error}");
                break;
            }
            assert_eq!(code, Some(tonic::Code::DeadlineExceeded), "{error}");
            assert!(attempts.len() < 4, "writes never failed with Unavailable: {attempts:?}");
        }
        env.at(0.7).await;
        env.proxies[first].set(Fault::None);
        env.proxies[second].set(Fault::None);
        env.finish(clients).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_node() {
    for seed in seeds() {
        let _replay = replay("flapping_node", seed);
        let mut env = Env::start_workload(seed, 1, mixed(seed)).await;
        let clients = env.start_clients();
        let victim = env.rng.random_range(0..3);
        for step in 1..8 {
            env.at(f64::from(step) / 9.0).await;
            let fault = if step % 2 == 1 { Fault::Reset } else { Fault::None };
            env.proxies[victim].set(fault);
        }
        env.finish(clients).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_blind_writes_through_two_coordinators_during_a_partition() {
    let blind = |seed| Workload { blind_only: true, ..mixed(seed) };
    let scenario = "concurrent_blind_writes_through_two_coordinators_during_a_partition";
    fault_window(scenario, 2, blind, Window::Freeze, (0.25, 0.75)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn causal_chains_survive_a_crashed_replica() {
    let chains = |seed| Workload { seed, clients: 3, keys: 2, ops_per_client: 40, blind_only: false, chains: true };
    let summaries = fault_window("causal_chains_survive_a_crashed_replica", 1, chains, Window::Crash, (0.3, 0.7)).await;
    for summary in summaries {
        assert!(summary.chains_checked > 0, "no key qualified as a causal chain: {summary}");
    }
}

/// A membership change in the middle of a fault: a seeded replica is cut off
/// (or crashes) at 20% of the run, a fourth node starts joining at 35%, the
/// fault heals at 60%. The copy waits for every old owner of a range, so it
/// resumes once the replica answers again; the join completes and the
/// audit runs on the new ring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_while_a_replica_is_cut_off_or_crashed() {
    use cohort_proto::v1 as pb;
    for seed in seeds() {
        let _replay = replay("a_join_while_a_replica_is_cut_off_or_crashed", seed);
        let mut env = Env::start_workload(seed, 1, mixed(seed)).await;
        let clients = env.start_clients();
        let victim = env.rng.random_range(0..3);
        let window = if env.rng.random_bool(0.5) { Window::Freeze } else { Window::Crash };
        env.at(0.2).await;
        env.inject(victim, window).await;
        env.at(0.35).await;
        let index = env.cluster.start_extra_node().await.expect("a fourth node");
        let address = env.cluster.node_address(index).expect("runs").to_string();
        let mut admin =
            cohort_proto::v1::admin_client::AdminClient::connect(env.cluster.endpoint()).await.expect("admin API");
        let request = pb::AddNodeRequest { id: "node-4".into(), address, ..Default::default() };
        let id = admin.add_node(request).await.expect("join").into_inner().migration.expect("a join").id;
        env.at(0.6).await;
        env.heal(victim, window).await;
        cohort_tests::eventually("the join ends", Duration::from_secs(120), || {
            let mut admin = admin.clone();
            async move {
                let m = admin.get_migration(pb::GetMigrationRequest { id }).await.expect("get").into_inner();
                !matches!(m.state.as_str(), "pending" | "in_progress")
            }
        })
        .await;
        let ended = admin.get_migration(pb::GetMigrationRequest { id }).await.expect("get").into_inner();
        assert_eq!(ended.state, "completed", "{ended:?}");
        env.finish(clients).await;
    }
}

/// Anti-entropy and tombstone reaping run all along (back-to-back passes
/// over every range, no grace: a tombstone is reaped as soon as every
/// replica holds exactly it) while a seeded replica crashes or is cut off
/// and clients keep writing and deleting: nothing acknowledged is lost, no
/// deleted value comes back, and the replicas end identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_reaped_all_along_while_a_replica_crashes_or_is_cut_off() {
    for seed in seeds() {
        let _replay = replay("tombstones_reaped_all_along_while_a_replica_crashes_or_is_cut_off", seed);
        let mut config = fault_config();
        config.repair.gc_grace = Duration::ZERO;
        // Many keys, so that deletes are not at once overwritten and their
        // tombstones live long enough to be reaped while writes go on.
        let workload = Workload { keys: 20, ops_per_client: 60, ..mixed(seed) };
        let mut env = Env::start_configured(seed, 1, workload, config).await;
        let clients = env.start_clients();
        let coordinator = env.cluster.coordinator.coordinator.clone();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The ranges of the workload's keys, over and over.
        let tokens: Vec<u64> = (0..20).map(|i| cohort_ring::token_for(TENANT, format!("k{i}").as_bytes())).collect();
        let reaper = tokio::spawn({
            let (coordinator, done) = (coordinator.clone(), done.clone());
            async move {
                let mut passes = 0u32;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let (version, targets) =
                        cohort_coordinator::repair::current_targets(&coordinator).await.expect("one ring");
                    let ours = targets.into_iter().filter(|t| tokens.iter().any(|&k| t.range.contains(k))).collect();
                    cohort_coordinator::repair::run_now(&coordinator, version, ours).await;
                    passes += 1;
                }
                passes
            }
        });
        let victim = env.rng.random_range(0..3);
        let window = if env.rng.random_bool(0.5) { Window::Freeze } else { Window::Crash };
        env.at(0.3).await;
        env.inject(victim, window).await;
        env.at(0.6).await;
        env.heal(victim, window).await;
        for client in clients {
            client.await.expect("client task");
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let passes = reaper.await.expect("reaper");
        // Two more passes with every replica up: the first syncs, the second
        // reaps whatever holds only tombstones — then none is left anywhere.
        for _ in 0..2 {
            let (version, targets) = cohort_coordinator::repair::current_targets(&coordinator).await.expect("one ring");
            cohort_coordinator::repair::run_now(&coordinator, version, targets).await;
        }
        let reaped: u64 = coordinator.repair.snapshot().ranges.iter().map(|r| r.tombstones_reaped).sum();
        println!("seed {seed}: {passes} passes, {reaped} tombstones reaped");
        for i in 0..20 {
            for replica in 0..3 {
                let state = env.cluster.replica_state(replica, &format!("k{i}")).await;
                assert!(state.is_empty() || state.has_values(), "k{i} on node {} keeps only tombstones", replica + 1);
            }
        }
        env.finish(Vec::new()).await;
    }
}
