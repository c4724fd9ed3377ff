//! A coordinated write, once started, reaches every replica it was sent to,
//! even when its caller stops waiting for it (the write's outcome is then
//! unknown to the caller, but it must not be left half-replicated).

use std::time::Duration;

use bytes::Bytes;
use cohort_proto::internal::v1::storage_client::StorageClient;
use cohort_proto::internal::v1::{CoordinateRequest, Peer};
use cohort_tests::proxy::{Fault, FaultProxy};
use cohort_tests::{TENANT, TestCluster, eventually, values_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_caller_gave_up_still_reaches_every_replica() {
    let cluster = TestCluster::start().await;
    // The coordinating replica reaches its peers through slow links, so its
    // sends are still under way (its pipelines not even open) when the
    // caller gives up.
    let mut peers = Vec::new();
    let mut proxies = Vec::new();
    for index in [1, 2] {
        let proxy = FaultProxy::start(cluster.node_address(index).expect("node runs")).await;
        proxy.set(Fault::Delay(Duration::from_millis(300)));
        peers.push(Peer {
            id: format!("node-{}", index + 1),
            address: proxy.address().to_string(),
            ..Default::default()
        });
        proxies.push(proxy);
    }
    let coordinating = cluster.node_address(0).expect("node runs");
    let mut node = StorageClient::connect(format!("http://{coordinating}")).await.expect("connect to node-1");
    let mut request = tonic::Request::new(CoordinateRequest {
        tenant: TENANT.into(),
        key: Bytes::from_static(b"half-sent"),
        context: Bytes::new(),
        value: Some(Bytes::from_static(b"v")),
        peers,
        write_quorum: 3,
        timeout_ms: 10_000,
        ..Default::default()
    });
    // The deadline travels as grpc-timeout: the node drops the call when it
    // passes, long before the peers can have answered.
    request.set_timeout(Duration::from_millis(50));
    let status = node.coordinate(request).await.expect_err("the caller gives up first");
    assert!(
        matches!(status.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled),
        "unexpected status {status:?}"
    );
    eventually("every replica holds the write", Duration::from_secs(10), || async {
        let states = cluster.replica_states("half-sent").await;
        states.len() == 3 && states.iter().all(|state| values_of(state) == ["v"])
    })
    .await;
    drop(proxies);
    cluster.shutdown().await;
}
