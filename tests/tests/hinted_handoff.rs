//! Hinted handoff (guarantee 3): a replica that missed writes while it was
//! down holds every one of them shortly after it returns, without any client
//! reading those keys, because the replica that coordinated each write kept
//! a durable hint for it.

use std::time::Duration;

use cohort_coordinator::ReadRepairMode;
use cohort_tests::{TENANT, TestCluster, eventually, values_of};

const KEYS: usize = 100;

/// Writes `KEYS` keys while node `down` is stopped; checks each receipt
/// says a hint was stored.
async fn write_while_down(cluster: &TestCluster) -> Vec<(String, String)> {
    let client = cluster.client().await;
    let mut written = Vec::new();
    for i in 0..KEYS {
        let (key, value) = (format!("h{i}"), format!("v{i}"));
        let result = client.put(TENANT, key.clone(), value.clone()).await.expect("a quorum write with one node down");
        let receipt = result.receipt.expect("a receipt");
        assert!(receipt.hint_stored, "key {key}: one replica missed the write, so a hint was stored");
        written.push((key, value));
    }
    written
}

/// Waits until node `index` holds every written value, reading it directly.
async fn handed_off(cluster: &TestCluster, index: usize, written: &[(String, String)]) {
    for (key, value) in written {
        eventually(&format!("node {} holds {key}", index + 1), Duration::from_secs(30), || async {
            values_of(&cluster.replica_state(index, key).await) == [value.clone()]
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_missed_writes_holds_them_soon_after_it_returns_without_reads() {
    // No read repair could help: no client reads at all.
    let mut cluster = TestCluster::start_with(3, ReadRepairMode::Background).await;
    cluster.stop_node(2).await;
    let written = write_while_down(&cluster).await;
    cluster.restart_node(2).await.expect("restart");
    handed_off(&cluster, 2, &written).await;
    // The returned replica alone (the others stopped) serves what it missed.
    cluster.stop_node(0).await;
    cluster.stop_node(1).await;
    for (key, value) in &written {
        assert_eq!(values_of(&cluster.replica_state(2, key).await), [value.as_str()], "{key} on node 3 alone");
    }
    cluster.shutdown().await;
}

/// The hints are durable: the nodes that hold them restart before the
/// missing replica returns, and it still receives every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_survive_a_restart_of_the_nodes_that_hold_them() {
    let mut cluster = TestCluster::start_with(3, ReadRepairMode::Background).await;
    cluster.stop_node(2).await;
    let written = write_while_down(&cluster).await;
    cluster.restart_node(0).await.expect("restart node 1");
    cluster.restart_node(1).await.expect("restart node 2");
    cluster.restart_node(2).await.expect("restart node 3");
    handed_off(&cluster, 2, &written).await;
    cluster.shutdown().await;
}

/// A hint follows the ring: a replica whose fence has moved past the ring
/// the write was routed by (a membership change began while it was away)
/// is not handed the write — it may no longer replicate the key — and the
/// hint is escalated to anti-entropy, which knows the current ring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_for_a_replica_that_moved_past_its_ring_is_escalated_not_delivered() {
    let mut cluster = TestCluster::start_with(3, ReadRepairMode::Background).await;
    cluster.stop_node(2).await;
    let written = write_while_down(&cluster).await;
    // While away, node 3 learns of a newer ring (as the leader's fence at
    // the start of a migration would tell it).
    let store = cohort_node::Store::open(&cluster.node_dir(2), "node-3", cohort_node::Durability::Flush)
        .expect("open the stopped node's directory");
    store.raise_fence(u64::MAX / 2).await.expect("fence");
    store.close().await;
    cluster.restart_node(2).await.expect("restart");
    for index in 0..2 {
        let holder = cluster.node_store(index).expect("running");
        eventually(&format!("node {} settles its hints", index + 1), Duration::from_secs(30), || {
            let holder = holder.clone();
            async move { holder.pending_hints(1000, Duration::ZERO).expect("hints").is_empty() }
        })
        .await;
    }
    for (key, _) in &written {
        assert!(cluster.replica_state(2, key).await.is_empty(), "{key} was not handed to node 3");
    }
    // Escalated, not dropped: the leader's probe collected the ranges.
    let coordinator = cluster.coordinator.coordinator.clone();
    eventually("the leader queued the escalated ranges", Duration::from_secs(15), || {
        let coordinator = coordinator.clone();
        async move { coordinator.repair.escalated() > 0 }
    })
    .await;
    cluster.shutdown().await;
}
