//! A read round asks every replica, answers once R have answered, and
//! counts a replica that stays silent as timed out once, when the round's
//! deadline passes.

use cohort_client::{Consistency, ReadOptions};
use cohort_coordinator::ReadRepairMode;
use cohort_tests::proxy::{Fault, FaultProxy};
use cohort_tests::{TENANT, TestCluster, strings, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_replica_times_out_at_the_rounds_deadline_while_the_others_answer() {
    let mut cluster = TestCluster::start_with_config(3, test_config(ReadRepairMode::Background)).await;
    let proxy = FaultProxy::start(cluster.node_address(2).expect("node runs")).await;
    cluster.route_node_through(2, proxy.address().to_string()).await.expect("route node 3 through a proxy");
    let client = cluster.client().await;
    client.put(TENANT, "k", "v").await.expect("write");
    proxy.set(Fault::Blackhole);

    let read = client.get(TENANT, "k").await.expect("a quorum read answers from the two others");
    assert_eq!(strings(&read.siblings), ["v"]);
    let answered: Vec<String> =
        read.receipt.expect("receipt").replicas.into_iter().map(|replica| replica.node_id).collect();
    assert_eq!(answered.len(), 2, "answered: {answered:?}");
    assert!(!answered.contains(&"node-3".to_string()), "answered: {answered:?}");

    let all = ReadOptions { consistency: Some(Consistency::All) };
    let error = client.get_with(TENANT, "k", all).await.expect_err("node 3 is silent");
    assert_eq!(error.code(), Some(tonic::Code::Unavailable), "{error}");
    let message = error.to_string();
    assert!(message.contains("got 2 of 3 replicas needed"), "{message}");
    assert!(message.contains("node-3: no answer within 2000 ms"), "{message}");
    assert_eq!(message.matches("node-3").count(), 1, "node 3 is reported once: {message}");

    proxy.set(Fault::None);
    cluster.shutdown().await;
}
