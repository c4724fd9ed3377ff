//! A node's listener over a stand-in handler: framed pipelines and gRPC on
//! one port, and the in-order close that tells a client which calls were
//! never acted on.

#![allow(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cohort_proto::internal::v1::*;
use cohort_transport::{NodeError, PeerPool, StorageEndpoint, StorageHandler, listen};
use tokio::sync::{Notify, watch};
use tonic::Status;

/// Answers reads with the key it was asked; a merge waits for `gate`, after
/// telling `merging` it started.
#[derive(Default)]
struct Stand {
    merging: Notify,
    gate: Notify,
}

#[tonic::async_trait]
impl StorageHandler for Stand {
    async fn read(&self, request: ReadRequest) -> Result<ReadResponse, Status> {
        Ok(ReadResponse { state: request.key, ..Default::default() })
    }
    async fn merge(&self, _: MergeRequest) -> Result<MergeResponse, Status> {
        self.merging.notify_one();
        self.gate.notified().await;
        Ok(MergeResponse::default())
    }
    async fn coordinate(&self, _: CoordinateRequest) -> Result<CoordinateResponse, Status> {
        Err(Status::unimplemented("coordinate"))
    }
    async fn info(&self, _: InfoRequest) -> Result<InfoResponse, Status> {
        Ok(InfoResponse { node_id: "stand".into(), ..Default::default() })
    }
    async fn fence(&self, _: FenceRequest) -> Result<FenceResponse, Status> {
        Err(Status::unimplemented("fence"))
    }
    async fn scan(&self, _: ScanRequest) -> Result<ScanResponse, Status> {
        Err(Status::unimplemented("scan"))
    }
    async fn drop_range(&self, _: DropRangeRequest) -> Result<DropRangeResponse, Status> {
        Err(Status::unimplemented("drop_range"))
    }
    async fn digest(&self, _: DigestRequest) -> Result<DigestResponse, Status> {
        Err(Status::unimplemented("digest"))
    }
    async fn tombstones(&self, _: TombstonesRequest) -> Result<TombstonesResponse, Status> {
        Err(Status::unimplemented("tombstones"))
    }
    async fn purge(&self, _: PurgeRequest) -> Result<PurgeResponse, Status> {
        Err(Status::unimplemented("purge"))
    }
    async fn prepare(&self, _: PrepareRequest) -> Result<PrepareResponse, Status> {
        Err(Status::unimplemented("prepare"))
    }
    async fn accept(&self, _: AcceptRequest) -> Result<AcceptResponse, Status> {
        Err(Status::unimplemented("accept"))
    }
}

/// A listener on an ephemeral port serving `handler`: its address, the
/// switch that stops it, and the task that ends when both sides have.
async fn serve(handler: Arc<Stand>) -> (String, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (stop, stopping) = watch::channel(false);
    let (grpc, pipelines) = listen(listener, handler.clone(), stopping.clone());
    let mut shutdown = stopping.clone();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(StorageEndpoint::new(handler).into_server())
            .serve_with_incoming_shutdown(grpc, async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            })
            .await
            .unwrap();
        pipelines.closed().await;
    });
    (address, stop, server)
}

fn read(key: &'static str) -> ReadRequest {
    ReadRequest { tenant: "t".into(), key: Bytes::from_static(key.as_bytes()), ..Default::default() }
}

async fn in_time<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future).await.expect("answered in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_port_serves_framed_pipelines_and_grpc_calls() {
    let (address, stop, server) = serve(Arc::new(Stand::default())).await;
    let node = PeerPool::new(Duration::from_secs(2)).node(&address).unwrap();
    // Pipelined calls, many in flight at once, each answered to its caller.
    let keys: Vec<String> = (0..200).map(|i| format!("key-{i}")).collect();
    let calls = keys
        .iter()
        .map(|key| node.read(ReadRequest { tenant: "t".into(), key: Bytes::from(key.clone()), ..Default::default() }));
    let answers = in_time(futures::future::join_all(calls)).await;
    for (key, answer) in keys.iter().zip(answers) {
        assert_eq!(answer.expect("read").state, key.as_bytes());
    }
    // A unary gRPC call on the same port.
    assert_eq!(in_time(node.info()).await.expect("info").node_id, "stand");
    let _ = stop.send(true);
    in_time(server).await.unwrap();
}

/// A stopping node answers every operation it took before it ends its side;
/// a call it never took fails as not sent, so the caller knows it was never
/// acted on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_answers_what_it_took_and_refuses_the_rest_as_not_sent() {
    let stand = Arc::new(Stand::default());
    let (address, stop, server) = serve(stand.clone()).await;
    let node = PeerPool::new(Duration::from_secs(2)).node(&address).unwrap();
    assert!(in_time(node.read(read("open"))).await.is_ok());

    let merge = node.merge(MergeRequest::default());
    let merge = tokio::spawn(merge);
    in_time(stand.merging.notified()).await;
    let _ = stop.send(true);
    // Sent after the node stopped taking requests.
    let late = node.read(read("late"));
    stand.gate.notify_one();
    assert!(in_time(merge).await.unwrap().is_ok(), "the merge the node took is answered");
    match in_time(late).await {
        Err(NodeError::NotSent(status)) => assert_eq!(status.code(), tonic::Code::Unavailable),
        other => panic!("a call the stopping node never took must fail as not sent, got {other:?}"),
    }
    in_time(server).await.unwrap();
}

/// A connection that opens with neither the pipeline preface nor HTTP/2 is
/// closed, and the listener keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_with_a_bad_preface_is_closed_and_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (address, stop, server) = serve(Arc::new(Stand::default())).await;
    let mut bad = tokio::net::TcpStream::connect(&address).await.unwrap();
    bad.write_all(b"\0not-cohort").await.unwrap();
    let mut rest = Vec::new();
    let closed = in_time(bad.read_to_end(&mut rest)).await;
    assert!(closed.is_err() || rest.is_empty(), "the node closes the connection without answering");
    let node = PeerPool::new(Duration::from_secs(2)).node(&address).unwrap();
    assert_eq!(in_time(node.read(read("k"))).await.expect("read").state, "k".as_bytes());
    let _ = stop.send(true);
    in_time(server).await.unwrap();
}

/// An answer given in place leaves at once, even when a request that arrived
/// with it is still waiting (its answer must not hold the first one back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_given_at_once_is_not_held_back_by_a_waiting_neighbour() {
    use bytes::BytesMut;
    use cohort_proto::internal::v1::pipeline_request::Op;
    use cohort_transport::framed::{FrameReader, PREFACE, encode_frame};
    use tokio::io::AsyncWriteExt;
    let stand = Arc::new(Stand::default());
    let (address, stop, server) = serve(stand.clone()).await;
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    // One write: the read, then a merge that waits for the gate.
    let mut wire = BytesMut::from(&PREFACE[..]);
    encode_frame(&PipelineRequest { id: 1, op: Some(Op::Read(read("first"))) }, &mut wire);
    encode_frame(&PipelineRequest { id: 2, op: Some(Op::Merge(MergeRequest::default())) }, &mut wire);
    stream.write_all(&wire).await.unwrap();
    let mut answers = FrameReader::new(stream);
    let first = in_time(answers.next::<PipelineResponse>()).await.unwrap().expect("an answer");
    assert_eq!(first.id, 1, "the read is answered while the merge still waits");
    stand.gate.notify_one();
    let second = in_time(answers.next::<PipelineResponse>()).await.unwrap().expect("an answer");
    assert_eq!(second.id, 2);
    drop(answers);
    let _ = stop.send(true);
    in_time(server).await.unwrap();
}

/// A connection that ends without the node's closing frame — a proxy or a
/// crash cut it — leaves the calls waiting on it lost, never "not sent": the
/// node may have acted on them, and a coordinator that took such a write
/// as never applied would apply it again through another replica (the fault
/// suite's flapping node then read one value twice in one answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_without_its_closing_frame_leaves_its_calls_lost() {
    use cohort_transport::framed::{FrameReader, PREFACE};
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let node = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut preface = [0u8; 8];
        stream.read_exact(&mut preface).await.unwrap();
        assert_eq!(&preface, PREFACE);
        let mut requests = FrameReader::new(stream);
        requests.next::<PipelineRequest>().await.unwrap().expect("the merge arrives");
        // Dropped here: the connection ends with no closing frame.
    });
    let client = PeerPool::new(Duration::from_secs(2)).node(&address).unwrap();
    match in_time(client.merge(MergeRequest::default())).await {
        Err(NodeError::Lost(status)) => assert_eq!(status.code(), tonic::Code::Unavailable),
        other => panic!("a call on a cut connection may have been applied: it is lost, got {other:?}"),
    }
    node.await.unwrap();
}
