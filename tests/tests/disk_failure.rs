//! A node whose disk fails (its journal sync returns an I/O error) stops
//! acknowledging writes and reports itself unhealthy; it never acknowledges
//! a write it could not make durable, and the cluster keeps every
//! acknowledged write through the other replicas (invariant 1).

use std::time::Duration;

use bytes::Bytes;
use cohort_proto::internal::v1::storage_client::StorageClient;
use cohort_proto::internal::v1::{CoordinateRequest, ReadRequest};
use cohort_tests::{TENANT, TestCluster, eventually, strings, values_of};
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
    let storage = HealthCheckRequest { service: "cohort.internal.v1.Storage".into() };
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

/// F11: a node whose sync failed kept serving the write it could not make
/// durable, and read repair copied it to healthy replicas. Now it answers
/// no read, and repair never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_node_serves_no_reads_and_feeds_no_repair() {
    let cluster = TestCluster::start_with(3, cohort_coordinator::ReadRepairMode::Sync).await;
    let client = cluster.client().await;
    client.put(TENANT, "k", "v1").await.expect("write");
    // The write's third replica may still be syncing it: the disk fails only
    // after every replica has, so that the ghost below is what poisons node 1.
    eventually("every replica holds v1", Duration::from_secs(10), || async {
        let states = cluster.replica_states("k").await;
        states.len() == 3 && states.iter().all(|state| values_of(state) == ["v1"])
    })
    .await;
    cluster.node_store(0).expect("node 1 runs").inject_disk_failure();

    // Node 1 stages a version its disk then fails to sync.
    let address = cluster.node_address(0).expect("node 1 address");
    let mut node = StorageClient::connect(format!("http://{address}")).await.expect("connect to node 1");
    let ghost = CoordinateRequest {
        tenant: TENANT.into(),
        key: Bytes::from_static(b"k"),
        value: Some(Bytes::from_static(b"ghost")),
        write_quorum: 1,
        ..Default::default()
    };
    let answer = node.coordinate(ghost).await.expect("answered").into_inner();
    assert!(answer.acked.is_empty(), "the failed sync is not acknowledged: {answer:?}");

    let read = ReadRequest { tenant: TENANT.into(), key: Bytes::from_static(b"k"), ..Default::default() };
    let status = node.read(read).await.expect_err("a poisoned node serves no read");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{}", status.message());

    let answer = client.get(TENANT, "k").await.expect("a quorum of healthy replicas");
    assert_eq!(strings(&answer.siblings), ["v1"]);
    let answered: Vec<_> = answer.receipt.expect("receipt").replicas.into_iter().map(|r| r.node_id).collect();
    assert!(!answered.contains(&"node-1".to_string()), "{answered:?}");
    for index in [1, 2] {
        assert_eq!(values_of(&cluster.replica_state(index, "k").await), ["v1"], "repair spread nothing from node 1");
    }
    cluster.shutdown().await;
}
