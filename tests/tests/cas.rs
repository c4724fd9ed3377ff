//! Guarantee 8 for compare-and-set: operations on the linearizable key
//! space are linearizable under crashed, frozen and flapping replicas and
//! with two coordinators proposing at once (every history checked by
//! `cohort_checker::check_register`); a counter incremented by concurrent
//! CAS loops while a replica is frozen ends at exactly its successful
//! increments; bad input changes nothing.
//!
//! The seed derives the workload and the fault schedule; CI runs two seeds
//! per scenario. To replay one or soak many:
//!
//! ```sh
//! COHORT_FAULT_SEED=7 cargo test -p cohort-tests --test cas -- frozen
//! COHORT_FAULT_SEEDS=1-100 cargo test --release -p cohort-tests --test cas
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cohort_client::{Client, Error};
use cohort_coordinator::{CoordinatorConfig, ReadRepairMode};
use cohort_loadtest::registers::{self, CasRecorder, CasWorkload};
use cohort_tests::proxy::{Fault, FaultProxy};
use cohort_tests::{TENANT, TestCluster, client_for, eventually, on_both_transports, test_config};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;

on_both_transports!(versions_grow_by_one_and_conditions_hold, the_two_key_spaces_never_mix, bad_input_changes_nothing);

async fn versions_grow_by_one_and_conditions_hold(cluster: TestCluster) {
    let cas = cluster.client().await.cas();
    let absent = cas.get(TENANT, "k").await.unwrap();
    assert_eq!((absent.value, absent.version), (None, 0));
    assert_eq!(cas.put(TENANT, "k", "a", 0).await.unwrap(), 1);
    // A second create, or a write at a stale version, fails and names the
    // current version.
    match cas.put(TENANT, "k", "b", 0).await {
        Err(Error::VersionMismatch { current, message }) => {
            assert_eq!(current, 1);
            assert!(message.contains("at version 1"), "{message}");
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    assert_eq!(cas.put(TENANT, "k", "b", 1).await.unwrap(), 2);
    let read = cas.get(TENANT, "k").await.unwrap();
    assert_eq!((read.value, read.version), (Some(Bytes::from("b")), 2));
    // A delete keeps the version; recreating the key names it.
    assert!(matches!(cas.delete(TENANT, "k", 1).await, Err(Error::VersionMismatch { current: 2, .. })));
    assert_eq!(cas.delete(TENANT, "k", 2).await.unwrap(), 3);
    assert!(matches!(cas.delete(TENANT, "k", 3).await, Err(Error::VersionMismatch { current: 3, .. })));
    assert_eq!(cas.get(TENANT, "k").await.unwrap(), cohort_client::CasValue { value: None, version: 3 });
    assert!(matches!(cas.put(TENANT, "k", "c", 0).await, Err(Error::VersionMismatch { current: 3, .. })));
    assert_eq!(cas.put(TENANT, "k", "c", 3).await.unwrap(), 4);
    // A retry of a write (same id) is answered as applied, not applied
    // again, even after another write.
    let id = Bytes::from_static(b"retry-me");
    assert_eq!(cas.put_with_id(TENANT, "k".into(), "d".into(), 4, id.clone()).await.unwrap(), 5);
    assert_eq!(cas.put(TENANT, "k", "e", 5).await.unwrap(), 6);
    assert_eq!(cas.put_with_id(TENANT, "k".into(), "d".into(), 4, id).await.unwrap(), 5);
    assert_eq!(cas.get(TENANT, "k").await.unwrap().version, 6);
    cluster.shutdown().await;
}

async fn the_two_key_spaces_never_mix(cluster: TestCluster) {
    let client = cluster.client().await;
    client.put(TENANT, "shared", "kv-value").await.unwrap();
    let cas = client.cas();
    assert_eq!(cas.get(TENANT, "shared").await.unwrap().version, 0, "kv's key is not cas's");
    cas.put(TENANT, "shared", "cas-value", 0).await.unwrap();
    let kv = client.get(TENANT, "shared").await.unwrap();
    assert_eq!(kv.siblings, vec![Bytes::from("kv-value")]);
    assert_eq!(cas.get(TENANT, "shared").await.unwrap().value, Some(Bytes::from("cas-value")));
    cluster.shutdown().await;
}

async fn bad_input_changes_nothing(cluster: TestCluster) {
    let cas = cluster.client().await.cas();
    let code = |result: Result<u64, Error>| result.unwrap_err().code();
    assert_eq!(code(cas.put(TENANT, "", "v", 0).await), Some(Code::InvalidArgument));
    assert_eq!(code(cas.put(TENANT, vec![b'k'; 100_000], "v", 0).await), Some(Code::InvalidArgument));
    assert_eq!(code(cas.put(TENANT, "k", vec![0u8; 20 * 1024 * 1024], 0).await), Some(Code::InvalidArgument));
    let long_id = Bytes::from(vec![b'i'; 65]);
    assert_eq!(code(cas.put_with_id(TENANT, "k".into(), "v".into(), 0, long_id).await), Some(Code::InvalidArgument));
    assert_eq!(code(cas.put("no-such-tenant", "k", "v", 0).await), Some(Code::NotFound));
    assert_eq!(code(cas.put("Bad Tenant", "k", "v", 0).await), Some(Code::InvalidArgument));
    assert_eq!(code(cas.delete(TENANT, "", 0).await), Some(Code::InvalidArgument));
    assert_eq!(cas.get(TENANT, "").await.unwrap_err().code(), Some(Code::InvalidArgument));
    assert_eq!(cas.get(TENANT, "k").await.unwrap().version, 0, "nothing was stored");
    cluster.shutdown().await;
}

fn seeds() -> Vec<u64> {
    cohort_loadtest::workload::fault_seeds()
}

fn fault_config() -> CoordinatorConfig {
    CoordinatorConfig {
        node_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_secs(3),
        ..test_config(ReadRepairMode::Background)
    }
}

/// Three nodes behind fault proxies, two coordinators.
struct Env {
    cluster: TestCluster,
    proxies: Vec<FaultProxy>,
    second: cohort_cluster::LocalCoordinator,
    clients: Vec<Client>,
}

impl Env {
    async fn start() -> Env {
        let mut cluster = TestCluster::start_with_config(3, fault_config()).await;
        let mut proxies = Vec::new();
        for index in 0..3 {
            let proxy = FaultProxy::start(cluster.node_address(index).expect("node runs")).await;
            cluster.route_node_through(index, proxy.address().to_string()).await.expect("route through proxy");
            proxies.push(proxy);
        }
        let second = cluster.add_coordinator().await.expect("second coordinator");
        let clients = vec![cluster.client().await, client_for(&second.endpoint()).await];
        Env { cluster, proxies, second, clients }
    }

    async fn shutdown(self) {
        for proxy in &self.proxies {
            proxy.set(Fault::None);
        }
        self.second.stop().await;
        self.cluster.shutdown().await;
    }
}

/// A fault on one node for the middle of a run.
#[derive(Clone, Copy, Debug)]
enum Window {
    /// The node's process stops, then restarts on its data directory.
    Crash,
    /// The node's links go silent (a paused process, a partition), then heal.
    Freeze,
    /// The node's links are cut and restored every few operations.
    Flap,
}

async fn linearizable_through(scenario: &'static str, window: Window) {
    for seed in seeds() {
        let _replay = cohort_loadtest::workload::Replay { target: "-p cohort-tests --test cas", scenario, seed };
        let mut env = Env::start().await;
        let mut rng = StdRng::seed_from_u64(seed ^ 0xca5);
        let workload = CasWorkload { seed, clients: 4, keys: 3, ops_per_client: 40 };
        let total = u64::from(workload.clients * workload.ops_per_client);
        let recorder = CasRecorder::default();
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = registers::start(workload, TENANT, &env.clients, &recorder, &stop);
        let victim = rng.random_range(0..3);
        let progress = |fraction: f64| {
            let recorder = recorder.clone();
            let target = (total as f64 * fraction) as u64;
            async move {
                eventually("the workload to progress", Duration::from_secs(120), || {
                    let done = recorder.completed() >= target;
                    async move { done }
                })
                .await
            }
        };
        progress(0.2).await;
        match window {
            Window::Crash => env.cluster.stop_node(victim).await,
            Window::Freeze => env.proxies[victim].set(Fault::Blackhole),
            Window::Flap => {
                for step in 0..6 {
                    let fault = if step % 2 == 0 { Fault::Reset } else { Fault::None };
                    env.proxies[victim].set(fault);
                    progress(0.2 + 0.1 * f64::from(step + 1)).await;
                }
            }
        }
        progress(0.8).await;
        match window {
            Window::Crash => env.cluster.restart_node(victim).await.expect("restart"),
            Window::Freeze | Window::Flap => env.proxies[victim].set(Fault::None),
        }
        for task in tasks {
            task.await.expect("client task");
        }
        let verdict = recorder.check();
        println!("{scenario} seed {seed} ({window:?} node {victim}): {verdict}");
        assert!(verdict.is_ok(), "{verdict}");
        assert!(verdict.operations as u64 > total / 2, "too few operations answered: {verdict}");
        env.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_with_a_crashed_replica() {
    linearizable_through("linearizable_with_a_crashed_replica", Window::Crash).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_with_a_frozen_replica() {
    linearizable_through("linearizable_with_a_frozen_replica", Window::Freeze).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_with_a_flapping_replica() {
    linearizable_through("linearizable_with_a_flapping_replica", Window::Flap).await;
}

/// Concurrent read-modify-write loops through two coordinators, with one
/// replica frozen for the whole run: the counter ends at exactly the
/// number of increments acknowledged (writes of unknown outcome, if any,
/// are counted apart and bound the difference).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_under_concurrent_cas_loops_with_a_frozen_replica_counts_exactly() {
    let env = Env::start().await;
    env.proxies[1].set(Fault::Blackhole);
    let (done, unknown) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut loops = Vec::new();
    for worker in 0..6 {
        let cas = env.clients[worker % 2].cas();
        let (done, unknown) = (done.clone(), unknown.clone());
        loops.push(tokio::spawn(async move {
            for _ in 0..8 {
                let result = cas
                    .update_linearizable(TENANT, "counter", |old| {
                        let n: u64 = old.map_or(0, |v| std::str::from_utf8(v).unwrap().parse().unwrap());
                        Some(Bytes::from((n + 1).to_string()))
                    })
                    .await;
                match result {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(error) => {
                        assert_eq!(
                            error.code(),
                            Some(Code::DeadlineExceeded),
                            "only an unknown outcome may fail: {error}"
                        );
                        unknown.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    for task in loops {
        task.await.expect("loop");
    }
    let cas = env.clients[0].cas();
    let read = cas.get(TENANT, "counter").await.unwrap();
    let value: u64 = std::str::from_utf8(&read.value.expect("counted")).unwrap().parse().unwrap();
    let (done, unknown) = (done.load(Ordering::Relaxed), unknown.load(Ordering::Relaxed));
    println!("counter {value}: {done} increments acknowledged, {unknown} of unknown outcome");
    assert!(done > 0);
    assert!(value >= done && value <= done + unknown, "counter {value}, acknowledged {done}, unknown {unknown}");
    if unknown == 0 {
        assert_eq!(value, done);
    }
    // Every increment that applied is one version: nothing else wrote.
    assert_eq!(read.version, value);
    env.shutdown().await;
}

/// A register's state lives only on the acceptors that took part in its
/// rounds. Written while one replica was down (so on two of three), then
/// moved by a join and a leave, every key must still read back: the
/// migration settles each register on a majority of its new replicas
/// before the old ring retires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_keys_written_before_a_join_and_a_leave_are_still_there() {
    use cohort_proto::v1 as admin_pb;
    let mut config = fault_config();
    config.membership.retry = Duration::from_millis(100);
    config.membership.copy_page_keys = 8;
    let mut cluster = TestCluster::start_with_config(3, config).await;
    let cas = cluster.client().await.cas();
    cluster.stop_node(0).await;
    let keys: Vec<String> = (0..150).map(|i| format!("reg-{i}")).collect();
    for key in &keys {
        assert_eq!(cas.put(TENANT, key.clone(), format!("v-{key}"), 0).await.expect("written on two of three"), 1);
    }
    cluster.restart_node(0).await.expect("restart");
    let mut admin = cohort_proto::v1::admin_client::AdminClient::connect(cluster.endpoint()).await.expect("admin");
    let ended = |id: u64, admin: cohort_proto::v1::admin_client::AdminClient<tonic::transport::Channel>| async move {
        let state = Arc::new(std::sync::Mutex::new(String::new()));
        eventually(&format!("migration {id} ends"), Duration::from_secs(120), || {
            let (mut admin, state) = (admin.clone(), state.clone());
            async move {
                let m = admin.get_migration(admin_pb::GetMigrationRequest { id }).await.expect("get").into_inner();
                *state.lock().unwrap() = m.state.clone();
                !matches!(m.state.as_str(), "pending" | "in_progress")
            }
        })
        .await;
        state.lock().unwrap().clone()
    };
    let index = cluster.start_extra_node().await.expect("a fourth node");
    let address = cluster.node_address(index).expect("runs").to_string();
    let join = admin_pb::AddNodeRequest { id: "node-4".into(), address, zone: None, vnodes: None, dry_run: false };
    let migration = admin.add_node(join).await.expect("join").into_inner().migration.expect("a join migrates");
    assert_eq!(ended(migration.id, admin.clone()).await, "completed");
    let leave = admin_pb::RemoveNodeRequest { id: "node-2".into(), dead: false, dry_run: false };
    let migration = admin.remove_node(leave).await.expect("leave").into_inner().migration.expect("a leave migrates");
    assert_eq!(ended(migration.id, admin.clone()).await, "completed");
    let mut lost = Vec::new();
    for key in &keys {
        let read = cas.get(TENANT, key.clone()).await.expect("read");
        if read.version != 1 || read.value != Some(Bytes::from(format!("v-{key}"))) {
            lost.push((key.clone(), read));
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} registers lost or changed: {:?}",
        lost.len(),
        keys.len(),
        &lost[..lost.len().min(5)]
    );
    cluster.shutdown().await;
}

/// The recorded compare-and-set workload runs while a node joins: the
/// electorate spans both rings while the migration runs, and the history
/// stays linearizable through the cutover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_through_a_join_mid_run() {
    use cohort_proto::v1 as admin_pb;
    for seed in seeds() {
        let _replay = cohort_loadtest::workload::Replay {
            target: "-p cohort-tests --test cas",
            scenario: "linearizable_through_a_join_mid_run",
            seed,
        };
        let mut config = fault_config();
        config.membership.retry = Duration::from_millis(100);
        config.membership.copy_page_keys = 8;
        let mut cluster = TestCluster::start_with_config(3, config).await;
        let clients = vec![cluster.client().await];
        let workload = CasWorkload { seed, clients: 4, keys: 6, ops_per_client: 60 };
        let total = u64::from(workload.clients * workload.ops_per_client);
        let recorder = CasRecorder::default();
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = registers::start(workload, TENANT, &clients, &recorder, &stop);
        let progressed = recorder.clone();
        eventually("a third of the workload", Duration::from_secs(120), || {
            let done = progressed.completed() >= total / 3;
            async move { done }
        })
        .await;
        let index = cluster.start_extra_node().await.expect("a fourth node");
        let address = cluster.node_address(index).expect("runs").to_string();
        let mut admin = admin_pb::admin_client::AdminClient::connect(cluster.endpoint()).await.expect("admin");
        let join = admin_pb::AddNodeRequest { id: "node-4".into(), address, zone: None, vnodes: None, dry_run: false };
        let id = admin.add_node(join).await.expect("join").into_inner().migration.expect("a join migrates").id;
        eventually("the join completes", Duration::from_secs(120), || {
            let mut admin = admin.clone();
            async move {
                let m = admin.get_migration(admin_pb::GetMigrationRequest { id }).await.expect("get").into_inner();
                assert!(matches!(m.state.as_str(), "pending" | "in_progress" | "completed"), "{m:?}");
                m.state == "completed"
            }
        })
        .await;
        for task in tasks {
            task.await.expect("client task");
        }
        let verdict = recorder.check();
        println!("seed {seed}: {verdict}");
        assert!(verdict.is_ok(), "{verdict}");
        assert!(verdict.operations as u64 > total / 2, "too few operations answered: {verdict}");
        cluster.shutdown().await;
    }
}
