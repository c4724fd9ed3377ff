//! The internal `Storage` gRPC service.
//!
//! The write path for a new version runs here, on the *coordinating replica*
//! (the first reachable node of the key's preference list): the node issues
//! the dot from its own state, appends it, and in parallel makes it durable
//! locally and sends the resulting sibling set to the other replicas. It
//! answers as soon as `write_quorum` replicas (itself included) hold the
//! version durably; the remaining sends finish in the background.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cohort_proto::internal::v1::pipeline_request::Op;
use cohort_proto::internal::v1::pipeline_response::Result as Answer;
use cohort_proto::internal::v1::storage_server::Storage;
use cohort_proto::internal::v1::{
    CoordinateRequest, CoordinateResponse, Dot as PbDot, InfoRequest, InfoResponse, MergeRequest, MergeResponse,
    PeerFailure, PipelineError, PipelineRequest, PipelineResponse, ReadRequest, ReadResponse, WriteTag as PbWriteTag,
};
use cohort_ring::{Actor, CausalContext, Dot, QuorumTally, SiblingSet, Verdict};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::peers::{MAX_MESSAGE_BYTES, NodeError, PeerPool};
use crate::store::{Store, StoreError, WriteLimits, WriteTag};

/// A replica's acknowledgement of a coordinated write: its id, and whether
/// it holds the version durably (or why not).
type Ack = (String, Result<(), String>);

/// The local sync and peer sends of one coordinated write. Dropped with
/// some still running, it hands them to a background task.
#[derive(Default)]
struct Replication(FuturesUnordered<BoxFuture<'static, Ack>>);

impl Drop for Replication {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let mut rest = std::mem::take(&mut self.0);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { while rest.next().await.is_some() {} });
            }
            // Only when the runtime itself is gone (process shutdown): the
            // peers that missed the version are healed by repair.
            Err(_) => tracing::warn!(pending = rest.len(), "replication abandoned at shutdown"),
        }
    }
}

/// Longest tenant id, which the storage key encoding relies on.
const MAX_TENANT_BYTES: usize = 63;

/// The storage node's gRPC service.
#[derive(Clone)]
pub struct StorageService {
    node_id: Arc<str>,
    store: Arc<Store>,
    peers: Arc<PeerPool>,
    peer_timeout: Duration,
    /// Turns true when the server starts shutting down: open pipelines stop
    /// taking requests and end once their operations have answered, so
    /// graceful shutdown does not wait on streams that never end.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl StorageService {
    /// A service over `store`, reaching other replicas through `peers`;
    /// `stopping` turns true when the server shuts down.
    pub fn new(
        node_id: &str,
        store: Arc<Store>,
        peers: Arc<PeerPool>,
        peer_timeout: Duration,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        StorageService { node_id: node_id.into(), store, peers, peer_timeout, stopping }
    }
}

fn status_from(error: StoreError) -> Status {
    match error {
        StoreError::Corrupt(e) => Status::data_loss(format!("stored state unreadable: {e}")),
        StoreError::ForgedContext { .. } | StoreError::DotsExhausted(_) => Status::invalid_argument(error.to_string()),
        StoreError::TooManySiblings { .. } | StoreError::StateTooLarge { .. } => {
            Status::failed_precondition(error.to_string())
        }
        StoreError::Poisoned | StoreError::Engine(_) | StoreError::Closed | StoreError::WrongNode { .. } => {
            Status::unavailable(error.to_string())
        }
    }
}

/// The largest answer a pipeline carries: an answer that would not fit in
/// one message becomes an error for its own operation, so that it never
/// breaks the stream every other operation to this node shares.
const MAX_ANSWER_BYTES: usize = MAX_MESSAGE_BYTES - 64 * 1024;

fn dot_to_pb(dot: &Dot) -> PbDot {
    PbDot { actor: dot.actor.0.clone(), counter: dot.counter }
}

/// A dot from the wire; `None` when absent or not a real dot.
pub(crate) fn dot_from_pb(dot: Option<&PbDot>) -> Option<Dot> {
    dot.filter(|d| !d.actor.is_empty() && d.counter > 0)
        .map(|d| Dot { actor: Actor::new(d.actor.clone()), counter: d.counter })
}

/// A write tag from the wire; `None` when absent.
fn tag_from_pb(tag: &Option<PbWriteTag>) -> Result<Option<WriteTag<'_>>, Status> {
    match tag {
        None => Ok(None),
        Some(tag) if tag.id.is_empty() || tag.id.len() > 64 => {
            Err(Status::invalid_argument("write id must be 1..=64 bytes"))
        }
        Some(tag) => Ok(Some(WriteTag { id: &tag.id, expires_at: tag.expires_at })),
    }
}

fn check_target(tenant: &str, key: &[u8]) -> Result<(), Status> {
    if tenant.is_empty() || tenant.len() > MAX_TENANT_BYTES {
        return Err(Status::invalid_argument(format!("tenant id must be 1..={MAX_TENANT_BYTES} bytes")));
    }
    if key.is_empty() {
        return Err(Status::invalid_argument("key must not be empty"));
    }
    Ok(())
}

impl StorageService {
    /// Runs one pipelined operation as its unary call would.
    async fn run(&self, op: Option<Op>) -> Answer {
        let result = match op {
            Some(Op::Read(request)) => self.read(Request::new(request)).await.map(|r| Answer::Read(r.into_inner())),
            Some(Op::Merge(request)) => self.merge(Request::new(request)).await.map(|r| Answer::Merge(r.into_inner())),
            Some(Op::Coordinate(request)) => {
                self.coordinate(Request::new(request)).await.map(|r| Answer::Coordinate(r.into_inner()))
            }
            None => Err(Status::invalid_argument("pipeline request without an operation")),
        };
        result.unwrap_or_else(|status| {
            Answer::Error(PipelineError { code: status.code() as i32, message: status.message().to_string() })
        })
    }

    /// Runs `op` for a caller in this process, as a pipelined call would:
    /// refused as never acted on once the node is shutting down.
    pub(crate) async fn call_in_process(&self, op: Op) -> Result<Answer, NodeError> {
        if *self.stopping.borrow() {
            return Err(NodeError::NotSent(Status::unavailable("storage node is shutting down")));
        }
        match self.run(Some(op)).await {
            Answer::Error(error) => Err(NodeError::Rejected(Status::new(error.code.into(), error.message))),
            answer => Ok(answer),
        }
    }
}

#[tonic::async_trait]
impl Storage for StorageService {
    type PipelineStream = ReceiverStream<Result<PipelineResponse, Status>>;

    async fn pipeline(
        &self,
        request: Request<Streaming<PipelineRequest>>,
    ) -> Result<Response<Self::PipelineStream>, Status> {
        let mut inbound = request.into_inner();
        let (answers, stream) = mpsc::channel(4096);
        let service = self.clone();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            // Each operation runs on its own task, so a slow one (a write
            // waiting for its peers) never holds up the others. The answer
            // stream ends only after every operation taken has answered
            // (each holds a sender), which tells clients that a request
            // still unanswered then was never acted on.
            loop {
                let request = tokio::select! {
                    request = inbound.message() => request,
                    _ = stopping.wait_for(|stop| *stop) => break,
                };
                let Ok(Some(PipelineRequest { id, op })) = request else { break };
                let (service, answers) = (service.clone(), answers.clone());
                tokio::spawn(async move {
                    let mut response = PipelineResponse { id, result: Some(service.run(op).await) };
                    if response.encoded_len() > MAX_ANSWER_BYTES {
                        let error = PipelineError {
                            code: tonic::Code::ResourceExhausted as i32,
                            message: format!(
                                "the answer takes {} bytes, more than one message carries ({MAX_ANSWER_BYTES}); resolve the key's siblings",
                                response.encoded_len()
                            ),
                        };
                        response.result = Some(Answer::Error(error));
                    }
                    let _ = answers.send(Ok(response)).await;
                });
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    async fn coordinate(&self, request: Request<CoordinateRequest>) -> Result<Response<CoordinateResponse>, Status> {
        let request = request.into_inner();
        check_target(&request.tenant, &request.key)?;
        let context = CausalContext::decode(&request.context)
            .map_err(|e| Status::invalid_argument(format!("causal context is invalid: {e}")))?;
        let needed = (request.write_quorum.max(1) as usize).min(request.peers.len() + 1);
        let timeout = match request.timeout_ms {
            0 => self.peer_timeout,
            ms => Duration::from_millis(ms.into()),
        };

        let limits = WriteLimits { max_siblings: request.max_siblings, max_state_bytes: request.max_state_bytes };
        let tag = tag_from_pb(&request.write)?;
        let staged = self
            .store
            .stage_update(&request.tenant, &request.key, &context, request.value, limits, tag)
            .map_err(status_from)?;
        let write_dot = dot_to_pb(&staged.dot);

        // The local sync and the sends to the peers run concurrently in one
        // future set. Whatever is still running when this call ends — the
        // quorum answered, or the caller gave up — finishes in a background
        // task: a replication once started always runs to its end.
        let replicas: Vec<String> =
            std::iter::once(self.node_id.to_string()).chain(request.peers.iter().map(|p| p.id.clone())).collect();
        let mut pending = Replication::default();
        {
            let store = self.store.clone();
            let id = self.node_id.to_string();
            pending.0.push(Box::pin(async move { (id, store.durable().await.map_err(|e| e.to_string())) }));
        }
        for peer in request.peers {
            let merge = MergeRequest {
                tenant: request.tenant.clone(),
                key: request.key.clone(),
                state: staged.encoded.clone(),
                write: request.write.clone(),
                write_dot: request.write.as_ref().map(|_| write_dot.clone()),
            };
            let client = self.peers.node(&peer.address);
            pending.0.push(Box::pin(async move {
                let result = match client {
                    Err(status) => Err(status.message().to_string()),
                    Ok(client) => match tokio::time::timeout(timeout, client.merge(merge)).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(error)) => Err(error.to_string()),
                        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
                    },
                };
                (peer.id, result)
            }));
        }

        // Answer once the quorum is reached. A write that cannot reach it
        // still waits for every replica (each bounded by the timeout), so
        // that the answer says exactly which ones hold it.
        let mut tally = QuorumTally::new(replicas, needed);
        let mut failures = Vec::new();
        while let Some((node_id, result)) = pending.0.next().await {
            match result {
                Ok(()) => tally.succeeded(&node_id),
                Err(reason) => {
                    tally.failed(&node_id);
                    failures.push(PeerFailure { node_id, reason });
                }
            }
            if tally.verdict() == Verdict::Reached {
                break;
            }
        }
        Ok(Response::new(CoordinateResponse {
            acked: tally.successes(),
            failures,
            dot: Some(write_dot),
            siblings: staged.siblings as u32,
            replayed: staged.replayed,
        }))
    }

    async fn merge(&self, request: Request<MergeRequest>) -> Result<Response<MergeResponse>, Status> {
        let request = request.into_inner();
        check_target(&request.tenant, &request.key)?;
        let incoming = SiblingSet::decode(&request.state)
            .map_err(|e| Status::invalid_argument(format!("sibling set is invalid: {e}")))?;
        let tag = tag_from_pb(&request.write)?;
        let dot = dot_from_pb(request.write_dot.as_ref());
        let write = match (tag, &dot) {
            (Some(tag), Some(dot)) => Some((tag, dot)),
            (None, _) => None,
            (Some(_), None) => return Err(Status::invalid_argument("a write tag needs the write's dot")),
        };
        self.store.merge(&request.tenant, &request.key, &incoming, write).await.map_err(status_from)?;
        Ok(Response::new(MergeResponse {}))
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        let request = request.into_inner();
        check_target(&request.tenant, &request.key)?;
        let state = self.store.read(&request.tenant, &request.key).map_err(status_from)?;
        let state = if state.is_empty() { Bytes::new() } else { Bytes::from(state.encode()) };
        let write_dot = match request.write_id.is_empty() {
            true => None,
            false => self.store.write_record(&request.write_id).map_err(status_from)?.as_ref().map(dot_to_pb),
        };
        Ok(Response::new(ReadResponse { state, write_dot }))
    }

    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(InfoResponse {
            node_id: self.node_id.to_string(),
            actor: self.store.actor().to_string(),
            incarnation: self.store.incarnation(),
        }))
    }
}
