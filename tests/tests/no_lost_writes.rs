//! Guarantee 1: no acknowledged write is lost. With R + W > N
//! and at most N − W replicas down, every acknowledged write is visible to a
//! later quorum read, including across node restarts. With more replicas
//! down, requests fail with Unavailable and say how many answered.

use cohort_client::{Consistency, ReadOptions, WriteOptions};
use cohort_tests::{TENANT, TestCluster, strings};
use tonic::Code;

async fn one_node_down_quorum_reads_and_writes_succeed(mut cluster: TestCluster) {
    let client = cluster.client().await;
    for i in 0..20 {
        client.put(TENANT, format!("before-{i}"), format!("v{i}")).await.expect("write with all nodes up");
    }
    cluster.stop_node(2).await;
    for i in 0..20 {
        let written = client.put(TENANT, format!("during-{i}"), format!("d{i}")).await.expect("quorum write");
        let receipt = written.receipt.expect("receipt");
        assert_eq!(receipt.required, 2);
        assert!(receipt.replicas.len() >= 2, "acknowledged by {:?}", receipt.replicas);
        assert!(receipt.replicas.iter().all(|r| r.node_id != "node-3"), "a stopped node cannot acknowledge");
    }
    for i in 0..20 {
        let read = client.get(TENANT, format!("before-{i}")).await.expect("quorum read");
        assert_eq!(strings(&read.siblings), [format!("v{i}")]);
        let read = client.get(TENANT, format!("during-{i}")).await.expect("quorum read");
        assert_eq!(strings(&read.siblings), [format!("d{i}")]);
    }
    cluster.shutdown().await;
}

async fn two_nodes_down_requests_fail_with_counts(mut cluster: TestCluster) {
    let client = cluster.client().await;
    client.put(TENANT, "k", "v").await.expect("write");
    cluster.stop_node(1).await;
    cluster.stop_node(2).await;

    let error = client.put(TENANT, "k2", "v").await.expect_err("write needs 2 of 3");
    assert_eq!(error.code(), Some(Code::Unavailable), "{error}");
    assert!(error.to_string().contains("got 1 of 2 replicas needed"), "{error}");

    let error = client.get(TENANT, "k").await.expect_err("read needs 2 of 3");
    assert_eq!(error.code(), Some(Code::Unavailable), "{error}");
    assert!(error.to_string().contains("got 1 of 2 replicas needed"), "{error}");

    // A level the remaining node can satisfy still works.
    let one = ReadOptions { consistency: Some(Consistency::One) };
    let read = client.get_with(TENANT, "k", one).await.expect("read at ONE");
    assert_eq!(strings(&read.siblings), ["v"]);
    let write_one = WriteOptions { consistency: Some(Consistency::One), ..WriteOptions::default() };
    client.put_with(TENANT, "k3", "v3", write_one).await.expect("write at ONE");
    cluster.shutdown().await;
}

async fn acknowledged_writes_survive_node_restarts(mut cluster: TestCluster) {
    let client = cluster.client().await;
    let mut acknowledged = Vec::new();
    for round in 0..3 {
        for i in 0..15 {
            let (key, value) = (format!("k{i}"), format!("round{round}-{i}"));
            // Read-modify-write: each round replaces the previous value.
            let read = client.get(TENANT, key.clone()).await.expect("read");
            let options = WriteOptions { context: read.context, ..WriteOptions::default() };
            client.put_with(TENANT, key.clone(), value.clone(), options).await.expect("write");
            acknowledged.push((key, value));
        }
        cluster.restart_node(round).await.expect("node restarts on its data directory");
    }
    let all = ReadOptions { consistency: Some(Consistency::All) };
    for i in 0..15 {
        let read = client.get_with(TENANT, format!("k{i}"), all.clone()).await.expect("read at ALL");
        assert_eq!(strings(&read.siblings), [format!("round2-{i}")], "latest write of k{i}");
    }
    // Each restarted node kept what it acknowledged: its own state has the
    // round it held when it stopped, or later.
    for index in 0..3 {
        let state = cluster.replica_state(index, "k0").await;
        assert!(!state.is_empty(), "node {index} lost k0 across its restart");
    }
    cluster.shutdown().await;
}

async fn deleted_keys_stay_deleted_across_restarts(mut cluster: TestCluster) {
    let client = cluster.client().await;
    client.put(TENANT, "gone", "v").await.expect("write");
    let read = client.get(TENANT, "gone").await.expect("read");
    client
        .delete_with(TENANT, "gone", WriteOptions { context: read.context, ..WriteOptions::default() })
        .await
        .expect("delete");
    assert!(!client.get(TENANT, "gone").await.expect("read").found());
    for index in 0..3 {
        cluster.restart_node(index).await.expect("restart");
    }
    let all = ReadOptions { consistency: Some(Consistency::All) };
    let read = client.get_with(TENANT, "gone", all).await.expect("read at ALL");
    assert!(!read.found(), "deleted key came back: {:?}", read.siblings);
    cluster.shutdown().await;
}

/// F2: a node whose data directory was wiped and restarted under its id
/// issued dots its peers had already seen for keys it had written before;
/// they dropped its new blind writes and acknowledged them anyway (9 of 80
/// lost). A wiped directory is now a new actor.
async fn blind_writes_after_a_wipe_are_all_kept(mut cluster: TestCluster) {
    let client = cluster.client().await;
    for i in 0..40 {
        client.put(TENANT, format!("k{i}"), "before").await.expect("write");
    }
    cluster.wipe_node(0).await.expect("wipe node 1 and start it again");
    for i in 0..40 {
        client.put(TENANT, format!("k{i}"), "after").await.expect("blind write after the wipe");
    }
    for i in 0..40 {
        let read = client.get(TENANT, format!("k{i}")).await.expect("quorum read");
        assert_eq!(strings(&read.siblings), ["after", "before"], "key k{i}");
    }
    cluster.shutdown().await;
}

cohort_tests::on_both_transports!(
    blind_writes_after_a_wipe_are_all_kept,
    one_node_down_quorum_reads_and_writes_succeed,
    two_nodes_down_requests_fail_with_counts,
    acknowledged_writes_survive_node_restarts,
    deleted_keys_stay_deleted_across_restarts,
);
