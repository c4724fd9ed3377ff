//! The storage handler trait: what a storage node does with each internal
//! operation, independent of how the request reached it.
//!
//! The transport owns the trait and the node implements it, so the node's
//! request handling never imports the client that calls other nodes, and
//! the server that carries requests never imports the handling. The same
//! handler serves unary gRPC calls, pipelined operations
//! ([`crate::endpoint`]) and in-process calls ([`crate::directory`]).

use cohort_proto::internal::v1::pipeline_request::Op;
use cohort_proto::internal::v1::pipeline_response::Result as Answer;
use cohort_proto::internal::v1::{
    AcceptRequest, AcceptResponse, CoordinateRequest, CoordinateResponse, DigestRequest, DigestResponse,
    DropRangeRequest, DropRangeResponse, FenceRequest, FenceResponse, InfoRequest, InfoResponse, MergeRequest,
    MergeResponse, PipelineError, PrepareRequest, PrepareResponse, PurgeRequest, PurgeResponse, ReadRequest,
    ReadResponse, ScanRequest, ScanResponse, TombstonesRequest, TombstonesResponse,
};
use tonic::Status;

/// The internal operations a storage node serves.
#[tonic::async_trait]
pub trait StorageHandler: Send + Sync + 'static {
    /// Reads a key's local state (and, when asked, a write record).
    async fn read(&self, request: ReadRequest) -> Result<ReadResponse, Status>;
    /// Merges a state into the local one and answers once it is durable.
    async fn merge(&self, request: MergeRequest) -> Result<MergeResponse, Status>;
    /// Issues a new version as the key's coordinating replica and
    /// replicates it.
    async fn coordinate(&self, request: CoordinateRequest) -> Result<CoordinateResponse, Status>;
    /// Who the node is (and, when asked, the ranges it escalated).
    async fn info(&self, request: InfoRequest) -> Result<InfoResponse, Status>;
    /// Raises the node's ring fence.
    async fn fence(&self, request: FenceRequest) -> Result<FenceResponse, Status>;
    /// A page of a token range's keys (or their count).
    async fn scan(&self, request: ScanRequest) -> Result<ScanResponse, Status>;
    /// Deletes some tenants' keys in a token range.
    async fn drop_range(&self, request: DropRangeRequest) -> Result<DropRangeResponse, Status>;
    /// A tenant's anti-entropy hashes of a token range.
    async fn digest(&self, request: DigestRequest) -> Result<DigestResponse, Status>;
    /// A tenant's keys in a range that hold only old tombstones.
    async fn tombstones(&self, request: TombstonesRequest) -> Result<TombstonesResponse, Status>;
    /// Deletes a key whose state is still exactly the given tombstones.
    async fn purge(&self, request: PurgeRequest) -> Result<PurgeResponse, Status>;
    /// Paxos phase 1 on a linearizable key: promise a ballot, durably.
    async fn prepare(&self, request: PrepareRequest) -> Result<PrepareResponse, Status>;
    /// Paxos phase 2 on a linearizable key: accept a register, durably.
    async fn accept(&self, request: AcceptRequest) -> Result<AcceptResponse, Status>;
}

/// Runs one pipelined operation on `handler` as its unary call would; an
/// error becomes the operation's error answer.
pub async fn run(handler: &dyn StorageHandler, op: Option<Op>) -> Answer {
    let result = match op {
        Some(Op::Read(request)) => handler.read(request).await.map(Answer::Read),
        Some(Op::Merge(request)) => handler.merge(request).await.map(Answer::Merge),
        Some(Op::Coordinate(request)) => handler.coordinate(request).await.map(Answer::Coordinate),
        Some(Op::Prepare(request)) => handler.prepare(request).await.map(Answer::Prepare),
        Some(Op::Accept(request)) => handler.accept(request).await.map(Answer::Accept),
        None => Err(Status::invalid_argument("pipeline request without an operation")),
    };
    result.unwrap_or_else(|status| {
        Answer::Error(PipelineError { code: status.code() as i32, message: status.message().to_string() })
    })
}
