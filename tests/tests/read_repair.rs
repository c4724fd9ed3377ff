//! Guarantee 3, read-repair part: a replica that missed a
//! write is healed by a read, checked by reading that replica directly.

use std::time::Duration;

use cohort_client::{Consistency, ReadOptions, WriteOptions};
use cohort_coordinator::ReadRepairMode;
use cohort_tests::{TENANT, TestCluster, eventually, strings, values_of};

/// Writes `key` while node 3 is down, so node 3 comes back stale.
async fn make_stale_replica(cluster: &mut TestCluster, key: &str, value: &str) {
    cluster.stop_node(2).await;
    cluster
        .client()
        .await
        .put(TENANT, key.to_string(), value.to_string())
        .await
        .expect("quorum write with one node down");
    cluster.restart_node(2).await.expect("node 3 restarts");
    assert!(cluster.replica_state(2, key).await.is_empty(), "node 3 missed the write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_read_repair_heals_a_stale_replica() {
    let mut cluster = TestCluster::start_with(3, ReadRepairMode::Background).await;
    make_stale_replica(&mut cluster, "k", "v").await;
    let client = cluster.client().await;
    let all = ReadOptions { consistency: Some(Consistency::All) };
    let read = client.get_with(TENANT, "k", all).await.expect("read");
    assert_eq!(strings(&read.siblings), ["v"]);
    assert!(read.receipt.expect("receipt").read_repair, "the receipt reports the repair");
    eventually("node 3 holds the repaired value", Duration::from_secs(10), || async {
        values_of(&cluster.replica_state(2, "k").await) == ["v"]
    })
    .await;
    // Healed replicas are identical, not merely holding the same value.
    let states = cluster.replica_states("k").await;
    assert!(states.windows(2).all(|w| w[0] == w[1]), "replicas differ: {states:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_read_repair_heals_before_answering() {
    let mut cluster = TestCluster::start_with(3, ReadRepairMode::Sync).await;
    make_stale_replica(&mut cluster, "k", "v").await;
    let client = cluster.client().await;
    let read = client.get(TENANT, "k").await.expect("quorum read");
    assert_eq!(strings(&read.siblings), ["v"]);
    assert!(read.receipt.expect("receipt").read_repair);
    // No waiting: the repair finished before the answer.
    assert_eq!(values_of(&cluster.replica_state(2, "k").await), ["v"]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_carries_deletes_and_keeps_unseen_siblings() {
    let mut cluster = TestCluster::start_with(3, ReadRepairMode::Sync).await;
    let client = cluster.client().await;
    client.put(TENANT, "k", "old").await.expect("write");
    let read = client.get(TENANT, "k").await.expect("read");
    // Node 3 misses the delete.
    cluster.stop_node(2).await;
    let options = WriteOptions { context: read.context, ..Default::default() };
    client.delete_with(TENANT, "k", options).await.expect("delete with one node down");
    cluster.restart_node(2).await.expect("restart");
    assert_eq!(values_of(&cluster.replica_state(2, "k").await), ["old"], "node 3 is stale");
    let read = client.get_with(TENANT, "k", ReadOptions { consistency: Some(Consistency::All) }).await.expect("read");
    assert!(!read.found(), "the delete wins over the stale replica: {:?}", read.siblings);
    assert!(values_of(&cluster.replica_state(2, "k").await).is_empty(), "repair deleted the stale value");
    cluster.shutdown().await;
}
