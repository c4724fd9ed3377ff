//! Anti-entropy and tombstone garbage collection (guarantees 3 and 4):
//! replicas converge without any client reading the keys, a converged idle
//! cluster repairs nothing, and reaping a tombstone never lets a deleted
//! value back nor swallows a later write.

use std::time::Duration;

use cohort_client::{Consistency, ReadOptions};
use cohort_coordinator::{CoordinatorConfig, ReadRepairMode};
use cohort_node::{Durability, HintsConfig, Store};
use cohort_proto::v1 as pb;
use cohort_proto::v1::admin_client::AdminClient;
use cohort_tests::{TENANT, TestCluster, eventually, strings, test_config, values_of};
use tonic::transport::Channel;

const KEYS: usize = 60;

/// Anti-entropy on, reaping with no grace, and no read repair: only
/// anti-entropy can heal anything here.
fn config(periodic: bool) -> CoordinatorConfig {
    let mut config = test_config(ReadRepairMode::Background);
    config.repair.enabled = periodic;
    config.repair.round = Duration::from_secs(2);
    config.repair.gc_grace = Duration::ZERO;
    config
}

async fn admin(cluster: &TestCluster) -> AdminClient<Channel> {
    AdminClient::connect(cluster.endpoint()).await.expect("connect to the admin API")
}

async fn repair_node(cluster: &TestCluster, index: usize) -> pb::RepairResponse {
    let request = pb::RepairRequest {
        scope: Some(pb::repair_request::Scope::Node(format!("node-{}", index + 1))),
        tenant: "".into(),
    };
    admin(cluster).await.repair(request).await.expect("forced repair").into_inner()
}

async fn write_keys(cluster: &TestCluster) -> Vec<(String, String)> {
    let client = cluster.client().await;
    let mut written = Vec::new();
    for i in 0..KEYS {
        let (key, value) = (format!("ae-{i}"), format!("v{i}"));
        client.put(TENANT, key.clone(), value.clone()).await.expect("write");
        written.push((key, value));
    }
    written
}

/// Waits until every replica of every key holds its value (writes finish
/// replicating in the background after W acknowledged).
async fn replicated(cluster: &TestCluster, written: &[(String, String)]) {
    for (key, value) in written {
        for index in cluster.replica_indices(key).await {
            eventually(&format!("node {} holds {key}", index + 1), Duration::from_secs(10), || async move {
                values_of(&cluster.replica_state(index, key).await) == [value.clone()]
            })
            .await;
        }
    }
}

/// Stops node `index`, deletes `keys` from its data directory by hand, and
/// starts it again.
async fn remove_by_hand(cluster: &mut TestCluster, index: usize, keys: &[String]) {
    cluster.stop_node(index).await;
    let store = Store::open(&cluster.node_dir(index), &format!("node-{}", index + 1), Durability::Flush)
        .expect("open the stopped node's directory");
    for key in keys {
        assert!(store.remove_key(TENANT, key.as_bytes()).await.expect("remove"), "{key} was on node {}", index + 1);
    }
    store.close().await;
    cluster.restart_node(index).await.expect("restart");
}

/// The keys of `written` that node `index` replicates.
async fn replicated_on(cluster: &TestCluster, index: usize, written: &[(String, String)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (key, value) in written {
        if cluster.replica_indices(key).await.contains(&index) {
            out.push((key.clone(), value.clone()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_removed_by_hand_from_a_stopped_node_come_back_with_a_forced_repair() {
    let mut cluster = TestCluster::start_with_config(3, config(false)).await;
    let written = write_keys(&cluster).await;
    replicated(&cluster, &written).await;
    let lost: Vec<(String, String)> = replicated_on(&cluster, 2, &written).await.into_iter().take(20).collect();
    let keys: Vec<String> = lost.iter().map(|(k, _)| k.clone()).collect();
    remove_by_hand(&mut cluster, 2, &keys).await;
    for key in &keys {
        assert!(cluster.replica_state(2, key).await.is_empty(), "{key} is gone from node 3");
    }
    let report = repair_node(&cluster, 2).await;
    assert_eq!(report.keys_repaired, keys.len() as u64, "{report:?}");
    assert!(report.unreachable.is_empty(), "{report:?}");
    for (key, value) in &lost {
        assert_eq!(values_of(&cluster.replica_state(2, key).await), [value.as_str()], "{key} is back on node 3");
    }
    // Converged now: the next pass finds nothing to do.
    let again = repair_node(&cluster, 2).await;
    assert_eq!((again.differing_segments, again.keys_repaired), (0, 0), "{again:?}");
    // The status names the node and what was repaired in its ranges.
    let status = admin(&cluster).await.repair_status(pb::RepairStatusRequest {}).await.unwrap().into_inner();
    let node = status.nodes.iter().find(|n| n.id == "node-3").expect("node-3 in the status");
    assert_eq!(node.keys_repaired, keys.len() as u64);
    assert!(node.last_exchange_ms > 0, "every range of node-3 was exchanged: {node:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_removed_by_hand_come_back_by_the_leaders_rounds_without_reads() {
    let mut cluster = TestCluster::start_with_config(3, config(true)).await;
    let written = write_keys(&cluster).await;
    replicated(&cluster, &written).await;
    let lost: Vec<(String, String)> = replicated_on(&cluster, 0, &written).await.into_iter().take(10).collect();
    let keys: Vec<String> = lost.iter().map(|(k, _)| k.clone()).collect();
    remove_by_hand(&mut cluster, 0, &keys).await;
    for (key, value) in &lost {
        eventually(&format!("{key} is back on node 1"), Duration::from_secs(60), || async {
            values_of(&cluster.replica_state(0, key).await) == [value.clone()]
        })
        .await;
    }
    let status = admin(&cluster).await.repair_status(pb::RepairStatusRequest {}).await.unwrap().into_inner();
    assert!(status.leader && status.state == "running", "{:?} {}", status.leader, status.state);
    assert!(status.round >= 1 && status.round_total > 0, "{status:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_converged_idle_cluster_repairs_nothing() {
    let cluster = TestCluster::start_with_config(3, config(false)).await;
    let written = write_keys(&cluster).await;
    replicated(&cluster, &written).await;
    for index in 0..3 {
        let report = repair_node(&cluster, index).await;
        assert!(report.ranges > 0);
        assert_eq!(report.differing_segments, 0, "node {}: {report:?}", index + 1);
        assert_eq!((report.keys_compared, report.keys_repaired), (0, 0), "node {}: {report:?}", index + 1);
    }
    cluster.shutdown().await;
}

async fn read_all(cluster: &TestCluster, key: &str) -> Vec<String> {
    let all = ReadOptions { consistency: Some(Consistency::All) };
    let read = cluster.client().await.get_with(TENANT, key.to_string(), all).await.expect("read at all");
    strings(&read.siblings)
}

/// Riak's doomstone scenario, and a replica down past the grace: write,
/// stop a replica, delete; garbage collection is blocked while the replica
/// is away; once it holds the tombstone the key is reaped everywhere; a
/// blind write afterwards survives and the deleted value never returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_are_reaped_only_once_every_replica_holds_them() {
    let mut cluster = TestCluster::start_with_config(3, config(false)).await;
    let client = cluster.client().await;
    let key = "doomed";
    client.put(TENANT, key.to_string(), "old".to_string()).await.expect("write");
    let replicas = cluster.replica_indices(key).await;
    let away = replicas[2];
    eventually("every replica holds the first value", Duration::from_secs(10), || async {
        let mut all = true;
        for &i in &replicas {
            all &= values_of(&cluster.replica_state(i, key).await) == ["old"];
        }
        all
    })
    .await;
    cluster.stop_node(away).await;
    client.delete(TENANT, key.to_string()).await.expect("delete with a quorum").expect("the key existed");
    let report = repair_node(&cluster, replicas[0]).await;
    assert_eq!(report.tombstones_reaped, 0, "a replica is away: {report:?}");
    let status = admin(&cluster).await.repair_status(pb::RepairStatusRequest {}).await.unwrap().into_inner();
    assert!(status.ranges.iter().any(|r| r.gc_blocked), "the away replica's ranges are blocked");
    for &i in &replicas[..2] {
        let state = cluster.replica_state(i, key).await;
        assert!(!state.is_empty() && !state.has_values(), "node {} keeps the tombstone", i + 1);
    }

    cluster.restart_node(away).await.expect("restart");
    // The hint brings the tombstone; the exchange then reaps it everywhere.
    eventually("the returned replica holds the tombstone", Duration::from_secs(30), || async {
        let state = cluster.replica_state(away, key).await;
        !state.is_empty() && !state.has_values()
    })
    .await;
    let report = repair_node(&cluster, away).await;
    assert_eq!(report.tombstones_reaped, 1, "{report:?}");
    for &i in &replicas {
        assert!(cluster.replica_state(i, key).await.is_empty(), "reaped on node {}", i + 1);
    }
    let count = pb::RepairRequest { scope: None, tenant: String::new() };
    assert!(admin(&cluster).await.repair(count).await.is_err(), "a repair names a node or a range");

    client.put(TENANT, key.to_string(), "new".to_string()).await.expect("blind write after the reap");
    repair_node(&cluster, away).await;
    assert_eq!(read_all(&cluster, key).await, ["new"], "the new value survives, the old one stays deleted");
    cluster.shutdown().await;
}

/// Reaping that reaches only some replicas (the last one stopped between
/// the listing and its purge): the replica that kept the tombstone must not
/// swallow a later blind write through a reaping replica, which would have
/// reissued a dot the tombstone covers had it started counting from zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_after_a_partial_reap_is_not_swallowed_by_a_remaining_tombstone() {
    let cluster = TestCluster::start_with_config(3, config(false)).await;
    let client = cluster.client().await;
    let key = "half-reaped";
    client.put(TENANT, key.to_string(), "old".to_string()).await.expect("write");
    client.delete(TENANT, key.to_string()).await.expect("delete").expect("the key existed");
    // In preference order: the first coordinates every write of the key.
    let placement = cluster.coordinator.coordinator.topology.current();
    let replicas: Vec<usize> = placement
        .replicas(TENANT, key.as_bytes(), 3)
        .replicas
        .iter()
        .map(|r| cohort_tests::node_index(&r.id))
        .collect();
    eventually("every replica holds the tombstone", Duration::from_secs(10), || async {
        let states = cluster.replica_states(key).await;
        states.iter().all(|s| !s.is_empty() && !s.has_values()) && states.windows(2).all(|w| w[0] == w[1])
    })
    .await;
    let tombstone = cluster.replica_state(replicas[0], key).await;
    // Purged on all but the last replica; the first, which issued the
    // deleted value's dot, issues the next write's.
    for &i in &replicas[..2] {
        let store = cluster.node_store(i).expect("node is running");
        assert!(store.purge(TENANT, key.as_bytes(), &tombstone, 0).await.expect("purge"));
    }
    client.put(TENANT, key.to_string(), "after".to_string()).await.expect("blind write");
    // Sync everything, then read every replica.
    repair_node(&cluster, replicas[2]).await;
    assert_eq!(read_all(&cluster, key).await, ["after"]);
    for &i in &replicas {
        assert_eq!(values_of(&cluster.replica_state(i, key).await), ["after"], "node {}", i + 1);
    }
    cluster.shutdown().await;
}

/// A hint that waits past its age bound is escalated: its record is
/// dropped and its range handed to the leader's anti-entropy, which syncs
/// it once the missing replica answers — with periodic rounds off and no
/// read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_past_their_age_are_escalated_to_anti_entropy_which_delivers_them() {
    let hints = HintsConfig { max_age: Duration::from_millis(300), ..HintsConfig::default() };
    let mut cluster = TestCluster::start_with_hints(config(false), hints).await;
    cluster.stop_node(2).await;
    let client = cluster.client().await;
    let mut written = Vec::new();
    for i in 0..30 {
        let (key, value) = (format!("esc-{i}"), format!("v{i}"));
        let receipt = client.put(TENANT, key.clone(), value.clone()).await.expect("write").receipt.expect("receipt");
        assert!(receipt.hint_stored, "{key}: node 3 missed it");
        written.push((key, value));
    }
    for index in 0..2 {
        let store = cluster.node_store(index).expect("running");
        eventually(&format!("node {} escalated its hints", index + 1), Duration::from_secs(30), || {
            let store = store.clone();
            async move { store.pending_hints(100, Duration::ZERO).expect("hints").is_empty() }
        })
        .await;
    }
    cluster.restart_node(2).await.expect("restart");
    for (key, value) in &written {
        eventually(&format!("{key} reaches node 3"), Duration::from_secs(30), || async {
            values_of(&cluster.replica_state(2, key).await) == [value.clone()]
        })
        .await;
    }
    // Once synced, the leader tells the nodes, which drop their markers.
    for index in 0..2 {
        let store = cluster.node_store(index).expect("running");
        eventually(&format!("node {} dropped its markers", index + 1), Duration::from_secs(30), || {
            let store = store.clone();
            async move { store.escalations(100).expect("markers").is_empty() }
        })
        .await;
    }
    cluster.shutdown().await;
}
