//! A membership change on the production shape (guarantee 7): three
//! `cohort node` processes (durability `fsync`) and two `cohort coordinator`
//! processes over PostgreSQL and Redis. A fourth node joins while clients
//! write; the leading coordinator is killed with SIGKILL in the middle of
//! the copy and started again; the other coordinator takes the lease and
//! resumes the copy from its checkpoints. Afterwards every preloaded key is
//! on a write quorum of its new replicas (read from the nodes directly,
//! before any client read could repair them); then the first node drains
//! and they are on a quorum of the remaining three, the drained node
//! holding nothing; every key reads back at quorum and at `all`, and the
//! workload's history passes the checkers.
//!
//! Needs PostgreSQL and Redis (`COHORT_TEST_POSTGRES_URL`,
//! `COHORT_TEST_REDIS_URL`; the defaults are the local ones) and fails
//! loudly when they are unreachable. It uses a schema and key prefix of its
//! own and drops the schema at the end.

#![allow(missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_client::{Client, Consistency, ReadOptions, RetryPolicy};
use cohort_loadtest::workload::{Recorder, Workload, start};
use cohort_proto::internal::v1::storage_client::StorageClient;
use cohort_proto::internal::v1::{ReadRequest, ScanRequest};
use cohort_proto::v1 as pb;
use cohort_proto::v1::admin_client::AdminClient;
use cohort_ring::{NodeSpec, Ring, SiblingSet, token_for};
use common::{Proc, admin, node_id, try_start_node};
use tonic::transport::Channel;

const TENANT: &str = "app";
const PRELOADED: usize = 1500;

fn postgres_url() -> String {
    std::env::var("COHORT_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn redis_url() -> String {
    std::env::var("COHORT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The coordinators' settings: shared stores under this test's schema and
/// prefix, a short lease (so the survivor takes over quickly), and a copy
/// slow enough to be caught in the middle.
fn coordinator_toml(schema: &str) -> String {
    format!(
        r#"
node_timeout = "500ms"
request_timeout = "3s"
read_repair = "sync"

[metadata]
backend = "postgres"
url = "{postgres}"
schema = "{schema}"
ring_refresh = "200ms"

[idempotency]
backend = "redis"
url = "{redis}"
prefix = "{schema}:"

[leader]
lease = "2s"

[membership]
copy_bytes_per_sec = 6000
copy_page_keys = 16
retry = "200ms"
"#,
        postgres = postgres_url(),
        redis = redis_url(),
    )
}

/// Starts coordinator `id` with `config`, its API on `listen`.
fn start_coordinator(id: &str, dir: &Path, config: &Path, listen: &str) -> (Proc, String) {
    let args = [
        "coordinator",
        "--id",
        id,
        "--listen",
        listen,
        "--metrics-listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.to_str().expect("UTF-8 path"),
        "--config",
        config.to_str().expect("UTF-8 path"),
    ];
    let mut proc = Proc::spawn(&format!("cohort coordinator {id}"), &args, &[]);
    let address = proc.wait_for_line(&format!("cohort coordinator {id} listening on ")).trim().to_string();
    (proc, address)
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

async fn client_for(endpoint: &str) -> Client {
    Client::connect(endpoint)
        .await
        .expect("connect to the coordinator")
        .with_retry(RetryPolicy { max_attempts: 1, ..RetryPolicy::default() })
}

async fn migration(admin: &mut AdminClient<tonic::transport::Channel>, id: u64) -> pb::Migration {
    admin.get_migration(pb::GetMigrationRequest { id }).await.expect("get migration").into_inner()
}

/// Polls `check` every 100 ms until it holds, for at most `limit`.
async fn until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        if check().await {
            return;
        }
        assert!(started.elapsed() < limit, "timed out after {limit:?} waiting for: {what}");
    }
}

async fn drop_schema(schema: &str) {
    let (client, connection) =
        tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls).await.expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await.expect("drop the test schema");
}

/// Every key of `written` is held by at least two of its three replicas on
/// the ring of nodes `on` (indices), read from the nodes directly.
async fn on_a_write_quorum(storage: &mut [StorageClient<Channel>], on: &[usize], written: &[(String, String)]) {
    let ring = Ring::new(on.iter().map(|&i| NodeSpec::new(node_id(i))).collect()).expect("ring");
    for (key, value) in written {
        let mut holders = 0;
        for owner in ring.preference_list(token_for(TENANT, key.as_bytes()), 3) {
            let index: usize = owner.id.trim_start_matches("node-").parse::<usize>().expect("node-<n>") - 1;
            // Inspection, not routing: past any ring fence.
            let request = ReadRequest {
                tenant: TENANT.into(),
                key: Bytes::from(key.clone()),
                ring_version: u64::MAX,
                ..Default::default()
            };
            let state = storage[index].read(request).await.expect("replica read").into_inner().state;
            let state = if state.is_empty() { SiblingSet::new() } else { SiblingSet::decode(&state).expect("decodes") };
            if state.values().any(|v| v == value.as_bytes()) {
                holders += 1;
            }
        }
        assert!(holders >= 2, "key {key}: only {holders} of its replicas on nodes {on:?} hold {value}");
    }
}

fn node_dir(dir: &Path, index: usize) -> PathBuf {
    dir.join(node_id(index))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_survives_its_leader_killed_mid_copy_then_a_node_drains() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let schema = format!("procjoin_{}_{nanos}", std::process::id());
    let config = dir.path().join("coordinator.toml");
    std::fs::write(&config, coordinator_toml(&schema)).expect("write the configuration");

    let mut nodes = Vec::new();
    let mut addresses = Vec::new();
    for index in 0..4 {
        let (proc, address) = try_start_node(&node_id(index), &node_dir(dir.path(), index), "127.0.0.1:0")
            .unwrap_or_else(|w| panic!("{w}"));
        nodes.push(proc);
        addresses.push(address);
    }
    let (first, first_address) = blocking(|| start_coordinator("c1", &dir.path().join("c1"), &config, "127.0.0.1:0"));
    let mut coordinators = vec![Some(first), None];
    let mut listen = [first_address.clone(), String::new()];
    let endpoint = |address: &str| format!("http://{address}");
    blocking(|| {
        for (index, address) in addresses.iter().take(3).enumerate() {
            admin(&endpoint(&first_address), &["node", "add", "--wait", "--id", &node_id(index), "--address", address]);
        }
        admin(&endpoint(&first_address), &["tenant", "create", TENANT, "--replication", "3"]);
    });
    let (second, second_address) = blocking(|| start_coordinator("c2", &dir.path().join("c2"), &config, "127.0.0.1:0"));
    coordinators[1] = Some(second);
    listen[1] = second_address.clone();

    let writer = client_for(&endpoint(&first_address)).await;
    let mut written = Vec::new();
    for i in 0..PRELOADED {
        let (key, value) = (format!("pre-{i}"), format!("v{i}"));
        writer.put(TENANT, key.clone(), value.clone()).await.expect("preload write");
        written.push((key, value));
    }

    // The workload runs through the second coordinator (the first will be
    // killed); the join goes through the first.
    let workload = Workload { seed: 21, clients: 3, keys: 5, ops_per_client: 80, blind_only: false, chains: false };
    let clients = vec![client_for(&endpoint(&second_address)).await];
    let recorder = Recorder::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = start(workload, TENANT, &clients, &recorder, &stop);

    let mut admin_api = AdminClient::connect(endpoint(&first_address)).await.expect("admin API");
    let join = pb::AddNodeRequest { id: node_id(3), address: addresses[3].clone(), ..Default::default() };
    let started = admin_api.add_node(join).await.expect("join").into_inner();
    let id = started.migration.expect("a join migrates").id;
    let mut survivor = AdminClient::connect(endpoint(&second_address)).await.expect("admin API");
    until("the copy is under way", Duration::from_secs(60), || {
        let mut survivor = survivor.clone();
        async move { migration(&mut survivor, id).await.ranges_done >= 1 }
    })
    .await;
    let status = survivor.cluster_status(pb::ClusterStatusRequest {}).await.expect("status").into_inner();
    let leader = status.leader.expect("a leader");
    let victim = if leader.id == "c1" { 0 } else { 1 };
    let before = migration(&mut survivor, id).await;
    assert!(before.state == "in_progress" && before.ranges_done < before.ranges_total, "mid-copy: {before:?}");
    blocking(|| coordinators[victim].take().expect("runs").kill());
    let (restarted, _) = blocking(|| {
        start_coordinator(
            &format!("c{}", victim + 1),
            &dir.path().join(format!("c{}", victim + 1)),
            &config,
            &listen[victim],
        )
    });
    coordinators[victim] = Some(restarted);

    let mut watcher = AdminClient::connect(endpoint(&listen[1 - victim])).await.expect("admin API");
    until("the migration completes after the takeover", Duration::from_secs(240), || {
        let mut watcher = watcher.clone();
        async move { !matches!(migration(&mut watcher, id).await.state.as_str(), "pending" | "in_progress") }
    })
    .await;
    let done = migration(&mut watcher, id).await;
    assert_eq!(done.state, "completed", "{done:?}");
    let after = watcher.cluster_status(pb::ClusterStatusRequest {}).await.expect("status").into_inner();
    let generation = after.leader.expect("a leader").generation;
    assert!(generation > leader.generation, "another leadership finished it: {generation} > {}", leader.generation);
    println!(
        "killed leader {} at {}/{} ranges; finished under generation {generation}",
        leader.id, before.ranges_done, before.ranges_total
    );
    assert!(done.ranges_done >= before.ranges_done, "the copy resumed, it did not start over: {before:?} {done:?}");
    for task in tasks {
        task.await.expect("client task");
    }

    // Every preloaded key on a write quorum of its new replicas, read from
    // the nodes before any client read.
    let mut storage = Vec::new();
    for address in &addresses {
        storage.push(StorageClient::connect(format!("http://{address}")).await.expect("connect to a node"));
    }
    on_a_write_quorum(&mut storage, &[0, 1, 2, 3], &written).await;

    // Then node-1 drains (through the coordinator that was not killed), and
    // the keys are on a quorum of nodes 2-4; node-1 holds nothing.
    let survivor_endpoint = endpoint(&listen[1 - victim]);
    blocking(|| admin(&survivor_endpoint, &["node", "remove", "--wait", "--id", &node_id(0)]));
    on_a_write_quorum(&mut storage, &[1, 2, 3], &written).await;
    let count = ScanRequest { start: 0, end: u64::MAX, count_only: true, ..Default::default() };
    let left = storage[0].scan(count).await.expect("count node-1's keys").into_inner().keys;
    assert_eq!(left, 0, "a drained node holds nothing");

    let all = ReadOptions { consistency: Some(Consistency::All) };
    for (key, value) in &written {
        let read = writer.get(TENANT, key.clone()).await.expect("quorum read");
        assert_eq!(read.siblings, [Bytes::from(value.clone())], "key {key} at quorum");
        let read = writer.get_with(TENANT, key.clone(), all.clone()).await.expect("read at all");
        assert_eq!(read.siblings, [Bytes::from(value.clone())], "key {key} at all");
    }

    // The workload's history: every acknowledged write is in the final
    // state read at `all`.
    let history = recorder.history();
    let mut final_state = cohort_checker::FinalState::new();
    let keys: std::collections::BTreeSet<String> = history.ops().iter().map(|op| op.key.clone()).collect();
    for key in keys {
        let read = writer.get_with(TENANT, key.clone(), all.clone()).await.expect("final read at all");
        let mut values: Vec<String> = read.siblings.iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect();
        values.sort();
        final_state.insert(key, values);
    }
    let verdict = cohort_checker::audit(&history, &final_state, None);
    println!("{}", verdict.summary());
    assert!(verdict.is_ok(), "{verdict}");
    assert!(verdict.summary().acknowledged_writes > 0, "{}", verdict.summary());

    drop(coordinators);
    drop(nodes);
    drop_schema(&schema).await;
}
