//! Membership changes (guarantee 7): nodes join, leave and are removed as
//! dead while clients write, and no acknowledged write is lost.
//!
//! Each scenario preloads keys before the change (so the copy has data to
//! move), runs the recorded fault workload during it, and then checks that
//! every preloaded key reads back at quorum and at `all`, and that the
//! workload's history passes the checkers with every replica of the new
//! ring identical.

use std::time::Duration;

use cohort_client::{Client, Consistency, ReadOptions};
use cohort_coordinator::{CoordinatorConfig, ReadRepairMode};
use cohort_proto::v1 as pb;
use cohort_proto::v1::admin_client::AdminClient;
use cohort_tests::audit::{self, Recorder, Workload};
use cohort_tests::{TENANT, TestCluster, client_for, eventually, strings, test_config};
use tonic::Code;
use tonic::transport::Channel;

/// Keys written before each change.
const PRELOADED: usize = 300;

fn config() -> CoordinatorConfig {
    let mut config = CoordinatorConfig {
        node_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(3),
        ..test_config(ReadRepairMode::Sync)
    };
    config.membership.retry = Duration::from_millis(100);
    // Small pages, so a range takes several.
    config.membership.copy_page_keys = 8;
    config
}

fn workload(seed: u64) -> Workload {
    Workload { seed, clients: 3, keys: 5, ops_per_client: 60, blind_only: false, chains: false }
}

async fn admin(endpoint: &str) -> AdminClient<Channel> {
    AdminClient::connect(endpoint.to_string()).await.expect("connect to the admin API")
}

async fn preload(client: &Client, range: std::ops::Range<usize>) -> Vec<(String, String)> {
    let mut written = Vec::new();
    for i in range {
        let (key, value) = (format!("pre-{i}"), format!("v{i}"));
        client.put(TENANT, key.clone(), value.clone()).await.expect("preload write");
        written.push((key, value));
    }
    written
}

/// Preloads keys with node `stale` down for the second half, so that node
/// misses them: the copy must take them from the other old owners.
async fn preload_with_a_stale_replica(
    cluster: &mut TestCluster,
    client: &Client,
    stale: usize,
) -> Vec<(String, String)> {
    let mut written = preload(client, 0..PRELOADED / 2).await;
    cluster.stop_node(stale).await;
    written.extend(preload(client, PRELOADED / 2..PRELOADED).await);
    cluster.restart_node(stale).await.expect("restart");
    written
}

/// Before any read could repair them: every preloaded key is held by a
/// write quorum (2) of its replicas in the new ring.
async fn check_on_new_owners(cluster: &TestCluster, written: &[(String, String)]) {
    for (key, value) in written {
        let owners = cluster.replica_indices(key).await;
        assert_eq!(owners.len(), 3, "key {key}: one live ring of three replicas");
        let mut holders = 0;
        for index in owners {
            if cohort_tests::values_of(&cluster.replica_state(index, key).await).contains(value) {
                holders += 1;
            }
        }
        assert!(holders >= 2, "key {key}: only {holders} of its new replicas hold {value}");
    }
}

/// Every preloaded key reads back its value at quorum and at `all`.
async fn check_preloaded(client: &Client, written: &[(String, String)]) {
    let all = ReadOptions { consistency: Some(Consistency::All) };
    for (key, value) in written {
        let read = client.get(TENANT, key.clone()).await.expect("quorum read");
        assert_eq!(strings(&read.siblings), [value.as_str()], "key {key} at quorum");
        let read = client.get_with(TENANT, key.clone(), all.clone()).await.expect("read at all");
        assert_eq!(strings(&read.siblings), [value.as_str()], "key {key} at all");
    }
}

/// Waits until migration `id` ends; returns it.
async fn ended(admin: &mut AdminClient<Channel>, id: u64) -> pb::Migration {
    let last = std::sync::Arc::new(std::sync::Mutex::new(None));
    eventually(&format!("migration {id} ends"), Duration::from_secs(120), || {
        let (mut admin, last) = (admin.clone(), last.clone());
        async move {
            let m = admin.get_migration(pb::GetMigrationRequest { id }).await.expect("get migration").into_inner();
            let done = !matches!(m.state.as_str(), "pending" | "in_progress");
            *last.lock().unwrap() = Some(m);
            done
        }
    })
    .await;
    last.lock().unwrap().take().expect("polled at least once")
}

fn add(id: &str, address: String) -> pb::AddNodeRequest {
    pb::AddNodeRequest { id: id.into(), address, zone: None, vnodes: None, dry_run: false }
}

fn node_state(nodes: &[pb::StorageNode], id: &str) -> String {
    nodes.iter().find(|n| n.id == id).map(|n| n.state.clone()).unwrap_or_default()
}

/// Runs the workload on `cluster`, applying `change` once a third of it has
/// completed, and audits when both are done.
async fn under_load<F, Fut>(cluster: &TestCluster, seed: u64, change: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let workload = workload(seed);
    let clients = vec![cluster.client().await];
    let recorder = Recorder::default();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks = audit::start(workload, TENANT, &clients, &recorder, &stop);
    let total = u64::from(workload.clients * workload.ops_per_client);
    recorder.wait_for(total / 3, Duration::from_secs(60)).await;
    change().await;
    for task in tasks {
        task.await.expect("client task");
    }
    let history = recorder.history();
    let verdict = audit::final_audit(cluster, &clients[0], &history).await;
    println!("seed {seed}: {}", verdict.summary());
    assert!(verdict.is_ok(), "{verdict}");
    assert!(verdict.summary().acknowledged_writes > 0, "nothing acknowledged: {}", verdict.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_under_concurrent_writes_loses_nothing() {
    let mut cluster = TestCluster::start_with_config(3, config()).await;
    let client = cluster.client().await;
    let written = preload_with_a_stale_replica(&mut cluster, &client, 0).await;
    let index = cluster.start_extra_node().await.expect("fourth node");
    let address = cluster.node_address(index).expect("runs").to_string();
    let mut admin = admin(&cluster.endpoint()).await;

    let plan = admin.add_node(pb::AddNodeRequest { dry_run: true, ..add("node-4", address.clone()) }).await;
    let plan = plan.expect("dry run").into_inner();
    assert!(plan.migration.is_none(), "a dry run starts nothing");
    let plan = plan.plan.expect("a plan");
    let gains = plan.nodes.iter().find(|n| n.id == "node-4").expect("node-4 gains");
    assert!(gains.ranges_gained > 0 && gains.keys_gained > 0 && gains.ranges_lost == 0, "{plan:?}");
    let status = admin.cluster_status(pb::ClusterStatusRequest {}).await.expect("status").into_inner();
    assert_eq!(status.ring_versions.len(), 1, "the dry run changed nothing");

    let mut started = None;
    under_load(&cluster, 11, || async {
        let answer = admin.add_node(add("node-4", address.clone())).await.expect("join").into_inner();
        let migration = answer.migration.expect("a join migrates");
        assert_eq!((migration.kind.as_str(), migration.state.as_str()), ("join", "pending"));
        let done = ended(&mut admin.clone(), migration.id).await;
        started = Some(done);
    })
    .await;
    let done = started.expect("the change ran");
    assert_eq!(done.state, "completed", "{done:?}");
    assert!(done.ranges_done == done.ranges_total && done.ranges_total > 0, "{done:?}");
    assert!(done.keys_copied > 0 && done.percent == 100.0, "{done:?}");
    check_on_new_owners(&cluster, &written).await;
    check_preloaded(&client, &written).await;

    let status = admin.cluster_status(pb::ClusterStatusRequest {}).await.expect("status").into_inner();
    assert_eq!(status.ring_versions.len(), 1, "the old version is retired");
    assert_eq!(status.ring_versions[0].nodes.len(), 4);
    assert_eq!(node_state(&status.nodes, "node-4"), "active");
    assert!(status.migrations.is_empty());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_under_concurrent_writes_loses_nothing_and_empties_the_node() {
    let mut cluster = TestCluster::start_with_config(4, config()).await;
    let client = cluster.client().await;
    let written = preload_with_a_stale_replica(&mut cluster, &client, 3).await;
    let mut admin = admin(&cluster.endpoint()).await;
    let mut result = None;
    under_load(&cluster, 12, || async {
        let request = pb::RemoveNodeRequest { id: "node-2".into(), dead: false, dry_run: false };
        let answer = admin.remove_node(request).await.expect("leave").into_inner();
        let migration = answer.migration.expect("a leave migrates");
        assert_eq!(migration.kind, "leave");
        result = Some(ended(&mut admin.clone(), migration.id).await);
    })
    .await;
    assert_eq!(result.expect("ran").state, "completed");
    check_on_new_owners(&cluster, &written).await;
    check_preloaded(&client, &written).await;
    let nodes = admin.list_nodes(pb::ListNodesRequest {}).await.expect("list").into_inner().nodes;
    assert_eq!(node_state(&nodes, "node-2"), "removed");
    let store = cluster.node_store(1).expect("node-2 still runs");
    assert_eq!(store.count(0, u64::MAX).expect("count").0, 0, "a node that left holds nothing");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_removed_and_its_replicas_rebuilt_from_the_others() {
    let mut cluster = TestCluster::start_with_config(4, config()).await;
    let client = cluster.client().await;
    let written = preload_with_a_stale_replica(&mut cluster, &client, 0).await;
    cluster.stop_node(2).await;
    let mut admin = admin(&cluster.endpoint()).await;
    let mut result = None;
    under_load(&cluster, 13, || async {
        let request = pb::RemoveNodeRequest { id: "node-3".into(), dead: true, dry_run: false };
        let answer = admin.remove_node(request).await.expect("remove dead").into_inner();
        let migration = answer.migration.expect("a removal migrates");
        assert_eq!(migration.kind, "remove_dead");
        result = Some(ended(&mut admin.clone(), migration.id).await);
    })
    .await;
    let done = result.expect("ran");
    assert_eq!(done.state, "completed", "{done:?}");
    check_on_new_owners(&cluster, &written).await;
    check_preloaded(&client, &written).await;
    let nodes = admin.list_nodes(pb::ListNodesRequest {}).await.expect("list").into_inner().nodes;
    assert_eq!(node_state(&nodes, "node-3"), "removed");
    // Writes while node-3 was down left hints for it; once it is removed,
    // no node keeps (or keeps retrying) them.
    for index in [0, 1, 3] {
        let hints = cluster.node_store(index).expect("runs").pending_hints(10_000, Duration::ZERO).expect("hints");
        assert!(hints.iter().all(|h| h.peers.iter().all(|(p, _)| p != "node-3")), "node-{} {hints:?}", index + 1);
    }
    cluster.shutdown().await;
}

/// Two operators add a node at the same moment: exactly one change applies;
/// the other is refused, naming what runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_racing_ring_changes_exactly_one_wins() {
    let mut cluster = TestCluster::start_with_config(3, config()).await;
    let (four, five) = (cluster.start_extra_node().await.unwrap(), cluster.start_extra_node().await.unwrap());
    let (a4, a5) = (cluster.node_address(four).unwrap().to_string(), cluster.node_address(five).unwrap().to_string());
    let second = cluster.add_coordinator().await.expect("second coordinator");
    let (mut first_admin, mut second_admin) = (admin(&cluster.endpoint()).await, admin(&second.endpoint()).await);
    let (one, two) = tokio::join!(first_admin.add_node(add("node-4", a4)), second_admin.add_node(add("node-5", a5)));
    let results = [one, two];
    let won: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let lost: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!((won.len(), lost.len()), (1, 1), "{results:?}");
    assert_eq!(lost[0].code(), Code::FailedPrecondition, "{}", lost[0].message());
    let message = lost[0].message();
    assert!(message.contains("one change runs at a time") || message.contains("plan the change again"), "{message}");
    let status = first_admin.cluster_status(pb::ClusterStatusRequest {}).await.expect("status").into_inner();
    assert_eq!(status.ring_versions.len(), 2, "one change is live: {status:?}");
    let id = won[0].get_ref().migration.as_ref().expect("a migration").id;
    assert_eq!(ended(&mut first_admin, id).await.state, "completed");
    second.stop().await;
    cluster.shutdown().await;
}

/// A coordinator that has not seen a ring change (its refresh is an hour
/// away, and the embedded store announces nothing) routes by the old ring:
/// the nodes refuse it, it refreshes, and its write lands where the new
/// ring says, readable through the other coordinator at `all`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_with_a_stale_ring_is_refused_and_routes_again() {
    let mut stale_config = config();
    stale_config.metadata.ring_refresh = Duration::from_secs(3600);
    let mut cluster = TestCluster::start_with_config(3, stale_config).await;
    // The first coordinator leads (and so runs the migration and refreshes
    // its own ring); the second never refreshes by itself.
    cluster.coordinator.coordinator.wait_for_leadership(|s| s.leader).await;
    let stale = cluster.add_coordinator().await.expect("second coordinator");
    let before = stale.coordinator.topology.current().ring_version();
    let index = cluster.start_extra_node().await.unwrap();
    let address = cluster.node_address(index).unwrap().to_string();
    let mut admin = admin(&cluster.endpoint()).await;
    let migration = admin.add_node(add("node-4", address)).await.expect("join").into_inner().migration.unwrap();
    assert_eq!(ended(&mut admin, migration.id).await.state, "completed");
    assert_eq!(stale.coordinator.topology.current().ring_version(), before, "the second coordinator is stale");

    let writer = client_for(&stale.endpoint()).await;
    for i in 0..20 {
        writer.put(TENANT, format!("late-{i}"), "v").await.expect("a write through the stale coordinator");
    }
    assert!(stale.coordinator.topology.current().ring_version() > before, "it refreshed when refused");
    let reader = cluster.client().await;
    let all = ReadOptions { consistency: Some(Consistency::All) };
    for i in 0..20 {
        let read = reader.get_with(TENANT, format!("late-{i}"), all.clone()).await.expect("read at all");
        assert_eq!(strings(&read.siblings), ["v"]);
    }
    stale.stop().await;
    cluster.shutdown().await;
}

/// A join cancelled mid-copy: the ring goes back to its three nodes, the
/// joining node drops what it got, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_join_puts_the_ring_back_and_loses_nothing() {
    let mut slow = config();
    // About 20 entries per second: the copy is still running when cancelled.
    slow.membership.copy_bytes_per_sec = 2_000;
    let mut cluster = TestCluster::start_with_config(3, slow).await;
    let client = cluster.client().await;
    let written = preload(&client, 0..PRELOADED).await;
    let index = cluster.start_extra_node().await.unwrap();
    let address = cluster.node_address(index).unwrap().to_string();
    let mut admin = admin(&cluster.endpoint()).await;
    let migration = admin.add_node(add("node-4", address)).await.expect("join").into_inner().migration.unwrap();
    eventually("the copy gets going", Duration::from_secs(60), || {
        let mut admin = admin.clone();
        async move {
            let m = admin.get_migration(pb::GetMigrationRequest { id: migration.id }).await.unwrap().into_inner();
            m.phase == "data_copy" && m.keys_copied > 0
        }
    })
    .await;
    let cancelled = admin.cancel_migration(pb::CancelMigrationRequest { id: migration.id }).await.expect("cancel");
    assert!(cancelled.into_inner().cancel_requested);
    let done = ended(&mut admin, migration.id).await;
    assert_eq!(done.state, "cancelled", "{done:?}");
    let again = admin.cancel_migration(pb::CancelMigrationRequest { id: migration.id }).await;
    assert_eq!(again.expect_err("already ended").code(), Code::FailedPrecondition);

    let status = admin.cluster_status(pb::ClusterStatusRequest {}).await.expect("status").into_inner();
    assert_eq!(status.ring_versions.len(), 1);
    let ids: Vec<&str> = status.ring_versions[0].nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["node-1", "node-2", "node-3"], "back to the old nodes");
    assert_eq!(node_state(&status.nodes, "node-4"), "removed");
    let store = cluster.node_store(index).expect("node-4 runs");
    assert_eq!(store.count(0, u64::MAX).expect("count").0, 0, "the copy was dropped");
    check_preloaded(&client, &written).await;
    cluster.shutdown().await;
}

/// Bad membership requests are refused and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_membership_requests_are_refused_and_change_nothing() {
    let cluster = TestCluster::start_with_config(3, config()).await;
    let mut admin = admin(&cluster.endpoint()).await;
    let remove = |id: &str| pb::RemoveNodeRequest { id: id.into(), dead: false, dry_run: false };
    let status = admin.remove_node(remove("nobody")).await.expect_err("unknown node");
    assert_eq!(status.code(), Code::NotFound, "{}", status.message());
    // The default tenant keeps three replicas: three nodes cannot shrink.
    let status = admin.remove_node(remove("node-1")).await.expect_err("too few nodes");
    assert_eq!(status.code(), Code::FailedPrecondition, "{}", status.message());
    assert!(status.message().contains("fewer than tenant"), "{}", status.message());
    let status = admin.get_migration(pb::GetMigrationRequest { id: 42 }).await.expect_err("no such migration");
    assert_eq!(status.code(), Code::NotFound);
    let status = admin.cancel_migration(pb::CancelMigrationRequest { id: 42 }).await.expect_err("no such migration");
    assert_eq!(status.code(), Code::NotFound);
    let all = admin.list_migrations(pb::ListMigrationsRequest {}).await.expect("list").into_inner();
    assert!(all.migrations.is_empty());
    let status = admin.cluster_status(pb::ClusterStatusRequest {}).await.expect("status").into_inner();
    assert_eq!(status.ring_versions.len(), 1);
    assert!(status.nodes.iter().all(|n| n.state == "active"), "{status:?}");
    cluster.shutdown().await;
}

/// A node that already holds keys (left from an earlier membership) cannot
/// join: its old data may predate tombstones the ring has since reaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_holding_keys_from_before_cannot_join() {
    let mut cluster = TestCluster::start_with_config(3, config()).await;
    let index = cluster.start_extra_node().await.expect("a fourth node");
    let store = cluster.node_store(index).expect("running");
    let empty = cohort_ring::CausalContext::new();
    let limits = cohort_node::store::WriteLimits::default();
    store.stage_update(TENANT, b"left-over", &empty, Some("old".into()), limits, None, 0).expect("stage");
    store.durable().await.expect("durable");
    let id = cohort_cluster::node_id(index);
    let address = cluster.node_address(index).expect("runs").to_string();
    let mut admin = admin(&cluster.endpoint()).await;
    let status = admin.add_node(add(&id, address)).await.expect_err("a node with data");
    assert_eq!(status.code(), Code::FailedPrecondition, "{}", status.message());
    assert!(status.message().contains("holds 1 keys from before"), "{}", status.message());
    let status = admin.cluster_status(pb::ClusterStatusRequest {}).await.expect("status").into_inner();
    assert_eq!(status.ring_versions.len(), 1, "{status:?}");
    assert!(!status.ring_versions[0].nodes.iter().any(|n| n.id == id), "not on the ring: {status:?}");
    assert!(status.migrations.is_empty(), "{status:?}");
    cluster.shutdown().await;
}

/// The whole cluster replaced node by node under writes: three joins, then
/// three drains of the original nodes, one change at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_cluster_replaced_node_by_node_loses_nothing() {
    let mut cluster = TestCluster::start_with_config(3, config()).await;
    let client = cluster.client().await;
    let written = preload(&client, 0..PRELOADED).await;
    let mut admin = admin(&cluster.endpoint()).await;
    let mut fresh = Vec::new();
    for _ in 0..3 {
        let index = cluster.start_extra_node().await.expect("a new node");
        fresh.push((index, cluster.node_address(index).expect("runs").to_string()));
    }
    let mut ends = Vec::new();
    under_load(&cluster, 14, || async {
        for (index, address) in &fresh {
            let id = cohort_cluster::node_id(*index);
            let answer = admin.add_node(add(&id, address.clone())).await.expect("join").into_inner();
            ends.push(ended(&mut admin.clone(), answer.migration.expect("a join").id).await);
        }
        for old in ["node-1", "node-2", "node-3"] {
            let request = pb::RemoveNodeRequest { id: old.into(), dead: false, dry_run: false };
            let answer = admin.remove_node(request).await.expect("drain").into_inner();
            ends.push(ended(&mut admin.clone(), answer.migration.expect("a leave").id).await);
        }
    })
    .await;
    assert!(ends.iter().all(|m| m.state == "completed"), "{ends:?}");
    check_on_new_owners(&cluster, &written).await;
    check_preloaded(&client, &written).await;
    let status = admin.cluster_status(pb::ClusterStatusRequest {}).await.expect("status").into_inner();
    let ids: Vec<&str> = status.ring_versions[0].nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["node-4", "node-5", "node-6"]);
    for index in 0..3 {
        let store = cluster.node_store(index).expect("still runs");
        assert_eq!(store.count(0, u64::MAX).expect("count").0, 0, "node-{} holds nothing", index + 1);
    }
    cluster.shutdown().await;
}
