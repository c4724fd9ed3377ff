//! Guarantee 7 (bad input never panics a process): every internal message
//! decoder, and the node's handling of whatever decodes, answers arbitrary
//! bytes with an error — never a panic or an unbounded allocation. Bytes
//! are tried bare and behind each real format byte, so they reach past the
//! first check.

#![allow(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cohort_node::StorageNode;
use cohort_node::{Durability, Store};
use cohort_proto::internal::v1::pipeline_request::Op;
use cohort_proto::internal::v1::{
    AcceptRequest, AcceptResponse, Ballot, CoordinateRequest, CoordinateResponse, Dot, FenceToken, Handoff,
    MergeRequest, PipelineRequest, PipelineResponse, PrepareRequest, PrepareResponse, PurgeRequest, ReadRequest,
    ReadResponse, RecentWrite, Register, WriteTag,
};
use cohort_transport::PeerPool;
use cohort_transport::StorageHandler;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use prost::Message;
use tonic::Code;

fn acceptable(result: Result<(), tonic::Status>) -> Result<(), TestCaseError> {
    if let Err(status) = result {
        prop_assert!(
            matches!(status.code(), Code::InvalidArgument | Code::FailedPrecondition),
            "unexpected status for bad input: {status:?}"
        );
    }
    Ok(())
}

#[test]
fn arbitrary_bytes_never_panic_a_node() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(runtime.block_on(async { Store::open(dir.path(), "n1", Durability::Flush) }).unwrap());
    let peers = Arc::new(PeerPool::new(Duration::from_millis(100)));
    let service = StorageNode::new("n1", store, peers, Duration::from_millis(100));
    let mut runner = TestRunner::new(Config::with_cases(512));
    let input = (vec(any::<u8>(), 0..200), 0u8..4, vec(any::<u8>(), 0..80));
    runner
        .run(&input, |(raw, format, id)| {
            let mut bytes = if format == 0 { Vec::new() } else { vec![format] };
            bytes.extend_from_slice(&raw);
            let bytes = Bytes::from(bytes);
            // Every internal message, decoded from the raw bytes.
            let _ = PipelineRequest::decode(bytes.clone());
            let _ = PipelineResponse::decode(bytes.clone());
            let _ = CoordinateResponse::decode(bytes.clone());
            let _ = ReadResponse::decode(bytes.clone());
            let _ = PrepareResponse::decode(bytes.clone());
            let _ = AcceptResponse::decode(bytes.clone());
            runtime.block_on(async {
                let tag = (!id.is_empty()).then(|| WriteTag { id: Bytes::from(id.clone()), expires_at: u64::MAX });
                let merge = MergeRequest {
                    tenant: "t".into(),
                    key: Bytes::from_static(b"k"),
                    state: bytes.clone(),
                    write: tag.clone(),
                    write_dot: Some(Dot {
                        actor: String::from_utf8_lossy(&id).into_owned(),
                        counter: raw.len() as u64,
                    }),
                    ring_version: 0,
                    // Odd lengths take the fallback's path.
                    handoff: (raw.len() % 2 == 1)
                        .then(|| Handoff { node_id: "n3".into(), address: "127.0.0.1:1".into() }),
                };
                acceptable(service.merge(merge).await.map(drop))?;
                let purge = PurgeRequest {
                    tenant: "t".into(),
                    key: Bytes::from_static(b"k"),
                    state: bytes.clone(),
                    ring_version: 0,
                };
                acceptable(service.purge(purge).await.map(drop))?;
                let coordinate = CoordinateRequest {
                    tenant: "t".into(),
                    key: Bytes::from_static(b"k"),
                    context: bytes.clone(),
                    value: Some(Bytes::from_static(b"v")),
                    write_quorum: 1,
                    max_siblings: 3,
                    write: tag,
                    ..Default::default()
                };
                acceptable(service.coordinate(coordinate).await.map(drop))?;
                let read = ReadRequest {
                    tenant: "t".into(),
                    key: Bytes::from_static(b"k"),
                    write_id: Bytes::from(id.clone()),
                    ring_version: 0,
                };
                acceptable(service.read(read).await.map(drop))?;
                // Paxos requests with arbitrary ballots and registers.
                let ballot = Some(Ballot { round: raw.len() as u64, proposer: id.len() as u64 });
                let prepare = PrepareRequest {
                    tenant: "t".into(),
                    key: Bytes::from_static(b"k"),
                    ballot,
                    ring_version: 0,
                    peek: format == 1,
                };
                acceptable(service.prepare(prepare).await.map(drop))?;
                let register = Register {
                    version: raw.len() as u64,
                    value: (format % 2 == 0).then(|| bytes.clone()),
                    recent: vec![RecentWrite { id: Bytes::from(id.clone()), version: 1 }],
                    fences: vec![FenceToken {
                        lock: String::from_utf8_lossy(&id).into_owned(),
                        token: raw.len() as u64,
                    }],
                };
                let accept = AcceptRequest {
                    tenant: "t".into(),
                    key: Bytes::from_static(b"k"),
                    ballot,
                    register: (format != 3).then_some(register),
                    ring_version: 0,
                };
                acceptable(service.accept(accept).await.map(drop))?;
                // Whatever decodes as a pipelined request, run as sent.
                if let Ok(PipelineRequest { op: Some(op), .. }) = PipelineRequest::decode(bytes) {
                    let result = match op {
                        Op::Read(r) => service.read(r).await.map(drop),
                        Op::Merge(m) => service.merge(m).await.map(drop),
                        // A decoded coordinate may name peers: send it to none.
                        Op::Coordinate(c) => {
                            let c = CoordinateRequest { peers: Vec::new(), write_quorum: 1, ..c };
                            service.coordinate(c).await.map(drop)
                        }
                        Op::Prepare(p) => service.prepare(p).await.map(drop),
                        Op::Accept(a) => service.accept(a).await.map(drop),
                    };
                    acceptable(result)?;
                }
                Ok(())
            })
        })
        .unwrap();
}
