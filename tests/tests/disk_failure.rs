//! A node whose disk fails (its journal sync returns an I/O error) stops
//! acknowledging writes and reports itself unhealthy; it never acknowledges
//! a write it could not make durable, and the cluster keeps every
//! acknowledged write through the other replicas (invariant 1).

use std::time::Duration;

use cohort_tests::{TENANT, TestCluster, eventually, strings};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_failing_disk_stops_acknowledging_and_reports_unhealthy() {
    let cluster = TestCluster::start().await;
    let client = cluster.client().await;
    for i in 0..10 {
        client.put(TENANT, format!("before-{i}"), "v").await.expect("write");
    }
    cluster.node_store(0).expect("node 1 runs").inject_disk_failure();

    for i in 0..30 {
        let written = client.put(TENANT, format!("after-{i}"), format!("a{i}")).await.expect("quorum without node 1");
        let acked: Vec<_> = written.receipt.expect("receipt").replicas.into_iter().map(|r| r.node_id).collect();
        assert!(!acked.contains(&"node-1".to_string()), "node 1 acknowledged after its disk failed: {acked:?}");
    }
    let store = cluster.node_store(0).expect("node 1 still runs");
    assert!(store.is_poisoned(), "the failed sync poisoned the store");

    let address = cluster.node_address(0).expect("node 1 address");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}")).expect("uri");
    let mut health = HealthClient::new(channel.connect().await.expect("connect to node 1"));
    eventually("node 1 reports NOT_SERVING", Duration::from_secs(10), || {
        let mut health = health.clone();
        async move {
            let request = HealthCheckRequest { service: String::new() };
            health.check(request).await.is_ok_and(|r| r.into_inner().status() == ServingStatus::NotServing)
        }
    })
    .await;
    let storage = HealthCheckRequest { service: "cohort.v1.Storage".into() };
    assert_eq!(health.check(storage).await.expect("check").into_inner().status(), ServingStatus::NotServing);

    for i in 0..30 {
        let read = client.get(TENANT, format!("after-{i}")).await.expect("read");
        assert_eq!(strings(&read.siblings), [format!("a{i}")]);
    }
    for i in 0..10 {
        assert_eq!(strings(&client.get(TENANT, format!("before-{i}")).await.expect("read").siblings), ["v"]);
    }
    cluster.shutdown().await;
}
