//! The pipelined client against a real node: answers reach their callers,
//! concurrent calls share one stream, and a stopped node fails calls fast.

#![allow(missing_docs)]

use std::time::Duration;

use bytes::Bytes;
use cohort_node::{Durability, NodeConfig, serve};
use cohort_proto::internal::v1::{CoordinateRequest, ReadRequest};
use cohort_transport::PeerPool;

/// A node serving on an ephemeral port: its address, the sender that stops
/// it, its task, and its handle once the store is open.
struct Running {
    address: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), cohort_node::server::ServeError>>,
    handle: cohort_node::NodeHandle,
}

async fn start_node(config: NodeConfig) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready, handle) = tokio::sync::oneshot::channel();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let server = tokio::spawn(serve(config, listener, shutdown, move |h| {
        let _ = ready.send(h);
    }));
    Running { address, stop, server, handle: handle.await.unwrap() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_calls_reach_a_node_and_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let Running { address, stop, server, .. } = start_node(NodeConfig::new("n1", dir.path())).await;
    let pool = PeerPool::new(Duration::from_secs(2));
    let node = pool.node(&address).unwrap();
    let read = |key: &'static str| ReadRequest {
        tenant: "t".into(),
        key: Bytes::from_static(key.as_bytes()),
        ..Default::default()
    };
    let first = tokio::time::timeout(Duration::from_secs(10), node.read(read("k"))).await.expect("answer in time");
    assert!(first.expect("read").state.is_empty());
    let write = CoordinateRequest {
        tenant: "t".into(),
        key: Bytes::from_static(b"k"),
        value: Some(Bytes::from_static(b"v")),
        write_quorum: 1,
        ..Default::default()
    };
    let written = tokio::time::timeout(Duration::from_secs(10), node.coordinate(write)).await.expect("in time");
    assert_eq!(written.expect("coordinate").acked, ["n1"]);
    let reads = (0..64).map(|_| node.read(read("k")));
    for answer in futures::future::join_all(reads).await {
        assert!(!answer.expect("read").state.is_empty());
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let error = tokio::time::timeout(Duration::from_secs(10), node.read(read("k"))).await.expect("fails in time");
    assert_eq!(error.expect_err("node stopped").status().code(), tonic::Code::Unavailable);
}

/// F6: one key's state too large for a message fails that read alone; the
/// shared pipeline, and every other operation on it, carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_answer_fails_alone_and_the_pipeline_survives() {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig { durability: Durability::Flush, ..NodeConfig::new("n1", dir.path()) };
    let Running { address, stop, server, handle } = start_node(config).await;
    let store = handle.store().unwrap();
    // A state of 70 siblings of 1 MiB, grown by merges (which no cap stops).
    let mut huge = cohort_ring::SiblingSet::new();
    for i in 0..70 {
        let actor = cohort_ring::Actor::new(format!("other-{i}.1.00"));
        huge.update(&cohort_ring::CausalContext::new(), &actor, Some(Bytes::from(vec![i as u8; 1 << 20]))).unwrap();
    }
    store.merge("t", b"huge", &huge, None, 0).await.unwrap();
    store.merge("t", b"small", &cohort_ring::SiblingSet::new(), None, 0).await.unwrap();
    drop(store);

    let pool = PeerPool::new(Duration::from_secs(2));
    let node = pool.node(&address).unwrap();
    let read = |key: &'static str| ReadRequest {
        tenant: "t".into(),
        key: Bytes::from_static(key.as_bytes()),
        ..Default::default()
    };
    let (big, small) = tokio::join!(node.read(read("huge")), node.read(read("small")));
    assert_eq!(big.expect_err("too large for one message").status().code(), tonic::Code::ResourceExhausted);
    small.expect("the other read on the same pipeline is answered");
    node.read(read("small")).await.expect("the pipeline still works");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
