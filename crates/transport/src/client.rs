//! Clients of storage nodes, shared by coordinators and nodes.
//!
//! Every call to a node on the replica path — read, merge, coordinate,
//! prepare, accept — travels on one long-lived pipeline connection per node
//! ([`crate::framed`]), tagged with an id; answers come back on the same
//! connection in completion order. A message costs four bytes of framing,
//! where a unary gRPC call costs a new HTTP/2 stream with headers, and
//! concurrent operations to one node share buffers and system calls. If the
//! connection breaks, every call waiting on it fails with `Unavailable` and
//! the next call opens a new one. The rarer calls (info, fence, scans,
//! repair) are unary gRPC calls to the same port.
//!
//! A pool may share an [`InProcessNodes`] directory: calls to a node that is
//! served by this very process (as in `cohort dev`) then run the node's
//! handler directly.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cohort_proto::internal::v1::pipeline_request::Op;
use cohort_proto::internal::v1::pipeline_response::Result as Answer;
use cohort_proto::internal::v1::storage_client::StorageClient;
use cohort_proto::internal::v1::{
    AcceptRequest, AcceptResponse, CoordinateRequest, CoordinateResponse, DigestRequest, DigestResponse,
    DropRangeRequest, DropRangeResponse, FenceRequest, FenceResponse, InfoRequest, InfoResponse, MergeRequest,
    MergeResponse, PipelineRequest, PipelineResponse, PrepareRequest, PrepareResponse, PurgeRequest, PurgeResponse,
    ReadRequest, ReadResponse, ScanRequest, ScanResponse, TombstonesRequest, TombstonesResponse,
};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use crate::directory::InProcessNodes;
use crate::framed::{self, BACKLOG_BYTES, FrameReader, FrameSender, PREFACE, SendError, SharedStream};
use crate::handler;
use crate::limits::{CONNECTION_WINDOW_BYTES, MAX_MESSAGE_BYTES, STREAM_WINDOW_BYTES};

/// Lazily connected clients to storage nodes, keyed by address.
#[derive(Debug)]
pub struct PeerPool {
    /// A std mutex: held only to look up or insert, never across an await.
    nodes: Mutex<HashMap<String, NodeClient>>,
    connect_timeout: Duration,
    in_process: Option<Arc<InProcessNodes>>,
}

impl PeerPool {
    /// An empty pool whose connections give up after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Self {
        PeerPool { nodes: Mutex::new(HashMap::new()), connect_timeout, in_process: None }
    }

    /// Like [`PeerPool::new`], calling the nodes in `in_process` directly.
    pub fn with_in_process(connect_timeout: Duration, in_process: Arc<InProcessNodes>) -> Self {
        PeerPool { in_process: Some(in_process), ..PeerPool::new(connect_timeout) }
    }

    /// Whether the node at `address` is served by this process (and is
    /// called without the network).
    pub fn is_in_process(&self, address: &str) -> bool {
        self.in_process.as_ref().is_some_and(|nodes| nodes.contains(address))
    }

    /// The client for `address` (`host:port`), created on first use.
    pub fn node(&self, address: &str) -> Result<NodeClient, Status> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(node) = nodes.get(address) {
            return Ok(node.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| Status::invalid_argument(format!("bad node address {address:?}: {e}")))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let raw = StorageClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let node = NodeClient {
            raw,
            session: Arc::default(),
            opening: Arc::default(),
            address: address.into(),
            connect_timeout: self.connect_timeout,
            in_process: self.in_process.clone(),
        };
        nodes.insert(address.to_string(), node.clone());
        Ok(node)
    }
}

/// A client of one storage node.
///
/// [`NodeClient::read`], [`NodeClient::merge`] and [`NodeClient::coordinate`]
/// send their request when they are called, not when their future is first
/// polled: a fan-out that builds one future per replica has sent to every
/// replica before it waits on any. Dropping the future stops waiting; it does
/// not recall the request.
#[derive(Debug, Clone)]
pub struct NodeClient {
    raw: StorageClient<Channel>,
    /// The open pipeline, if any. A std lock, held only to clone or swap the
    /// handle: the common call finds an open session without waiting.
    session: Arc<RwLock<Option<Arc<Session>>>>,
    /// Held while a new pipeline opens (which awaits the node), so that
    /// concurrent callers share one connection.
    opening: Arc<tokio::sync::Mutex<()>>,
    /// `host:port` of the node.
    address: Arc<str>,
    /// How long opening a pipeline connection may take.
    connect_timeout: Duration,
    /// Where to look for the node in this process before using the network.
    in_process: Option<Arc<InProcessNodes>>,
}

/// Why a call to a node failed, and whether the node may have acted on it.
#[derive(Debug, Clone)]
pub enum NodeError {
    /// The request never left this process (no connection): the node did
    /// nothing.
    NotSent(Status),
    /// The node answered with this error: it refused the operation.
    Rejected(Status),
    /// The request was sent but no answer came (the connection broke): the node
    /// may or may not have acted on it.
    Lost(Status),
}

impl NodeError {
    /// The status, whatever the case.
    pub fn status(&self) -> &Status {
        match self {
            NodeError::NotSent(s) | NodeError::Rejected(s) | NodeError::Lost(s) => s,
        }
    }

    /// Whether the node certainly did not act on the request.
    pub fn certainly_not_applied(&self) -> bool {
        matches!(self, NodeError::NotSent(_) | NodeError::Rejected(_))
    }
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.status();
        write!(f, "{:?}: {}", status.code(), status.message())
    }
}

impl From<NodeError> for Status {
    fn from(error: NodeError) -> Status {
        match error {
            NodeError::NotSent(s) | NodeError::Rejected(s) | NodeError::Lost(s) => s,
        }
    }
}

/// One open pipeline connection and the calls waiting on it.
struct Session {
    requests: Arc<FrameSender>,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Result<Answer, NodeError>>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("closed", &self.closed).finish_non_exhaustive()
    }
}

impl Session {
    /// Fails every waiting call; the session is not used again. `ended`
    /// says the node closed the connection in order: it stops taking
    /// requests and answers every one it took before ending, so a call still
    /// waiting then was never acted on. Otherwise the connection broke and a
    /// waiting call may or may not have been.
    fn close(&self, reason: &str, ended: bool) {
        self.closed.store(true, Ordering::Release);
        self.requests.close();
        let waiting: Vec<_> = self.waiting.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        for (_, reply) in waiting {
            let status = Status::unavailable(reason.to_string());
            let _ = reply.send(Err(if ended { NodeError::NotSent(status) } else { NodeError::Lost(status) }));
        }
    }
}

impl Drop for Session {
    /// No call can use the session any more: the client's side of the
    /// connection ends, and the node then ends its own.
    fn drop(&mut self) {
        self.requests.close();
    }
}

/// A call's entry in its session's waiting table, removed when the caller
/// stops waiting (answered, timed out, dropped).
struct Registration {
    session: Arc<Session>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.session.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

type Reply = Result<Answer, NodeError>;

/// One operation started by [`NodeClient::call`], as a future of its answer.
enum Call {
    /// Sent on a session: waits for the answer.
    Sent { answer: oneshot::Receiver<Reply>, _registration: Registration },
    /// Opening a session, or running on a handler in this process.
    Slow(std::pin::Pin<Box<dyn Future<Output = Reply> + Send>>),
    /// Refused before it was sent.
    Failed(Option<NodeError>),
}

impl Call {
    /// Registers the operation on `session` and sends it.
    fn send(session: Arc<Session>, op: Op) -> Call {
        let id = session.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        let alone = {
            let mut waiting = session.waiting.lock().unwrap_or_else(|p| p.into_inner());
            waiting.insert(id, reply);
            waiting.len() == 1
        };
        let registration = Registration { session, id };
        let request = PipelineRequest { id, op: Some(op) };
        // The only call in flight is written at once; among many, the
        // flusher batches them.
        match registration.session.requests.send(&request, alone) {
            Ok(()) => Call::Sent { answer, _registration: registration },
            Err(SendError::Backlogged) => Call::Failed(Some(NodeError::NotSent(Status::unavailable(format!(
                "more than {BACKLOG_BYTES} bytes wait to be sent to the node"
            ))))),
            Err(SendError::Closed) => Call::Failed(Some(closed(&registration.session))),
        }
    }
}

/// Closes a session that no longer sends; the request was not sent.
fn closed(session: &Session) -> NodeError {
    session.close("pipeline to node closed", false);
    NodeError::NotSent(Status::unavailable("pipeline to node closed"))
}

impl Future for Call {
    type Output = Reply;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Reply> {
        match &mut *self {
            Call::Sent { answer, .. } => std::pin::Pin::new(answer).poll(cx).map(|answer| {
                answer.unwrap_or_else(|_| Err(NodeError::Lost(Status::unavailable("pipeline to node closed"))))
            }),
            Call::Slow(future) => future.as_mut().poll(cx),
            Call::Failed(error) => {
                std::task::Poll::Ready(Err(error.take().expect("a call is not polled after it ended")))
            }
        }
    }
}

/// A unary call's error: `Unavailable` may mean the call never reached the
/// node; anything else is the node's answer.
fn unary_error(status: Status) -> NodeError {
    if status.code() == tonic::Code::Unavailable { NodeError::Lost(status) } else { NodeError::Rejected(status) }
}

fn unexpected(what: &str) -> NodeError {
    NodeError::Rejected(Status::internal(format!("node answered a {what} with another kind of result")))
}

impl NodeClient {
    /// The unary client, for calls that are not pipelined.
    pub fn raw(&self) -> StorageClient<Channel> {
        self.raw.clone()
    }

    /// Asks the node who it is (a unary call, or a direct one in-process).
    pub async fn info(&self) -> Result<InfoResponse, NodeError> {
        self.info_with(InfoRequest::default()).await
    }

    /// [`NodeClient::info`] with the request's options.
    pub async fn info_with(&self, request: InfoRequest) -> Result<InfoResponse, NodeError> {
        if let Some(node) = self.in_process.as_ref().and_then(|nodes| nodes.get(&self.address)) {
            return node.handler.info(request).await.map_err(NodeError::Rejected);
        }
        match self.raw.clone().info(request).await {
            Ok(response) => Ok(response.into_inner()),
            // No answer at all: the call may not have reached the node; an
            // info call changes nothing either way.
            Err(status) if status.code() == tonic::Code::Unavailable => Err(NodeError::NotSent(status)),
            Err(status) => Err(NodeError::Rejected(status)),
        }
    }

    /// Raises the node's ring fence (a unary call, or a direct one
    /// in-process). Idempotent.
    pub async fn fence(&self, request: FenceRequest) -> Result<FenceResponse, NodeError> {
        if let Some(node) = self.local() {
            return node.handler.fence(request).await.map_err(NodeError::Rejected);
        }
        self.raw.clone().fence(request).await.map(tonic::Response::into_inner).map_err(unary_error)
    }

    /// A page of a token range's keys on the node, or their count.
    pub async fn scan(&self, request: ScanRequest) -> Result<ScanResponse, NodeError> {
        if let Some(node) = self.local() {
            return node.handler.scan(request).await.map_err(NodeError::Rejected);
        }
        self.raw.clone().scan(request).await.map(tonic::Response::into_inner).map_err(unary_error)
    }

    /// Deletes some tenants' keys in a token range on the node. Idempotent.
    pub async fn drop_range(&self, request: DropRangeRequest) -> Result<DropRangeResponse, NodeError> {
        if let Some(node) = self.local() {
            return node.handler.drop_range(request).await.map_err(NodeError::Rejected);
        }
        self.raw.clone().drop_range(request).await.map(tonic::Response::into_inner).map_err(unary_error)
    }

    /// A tenant's anti-entropy hashes of a token range on the node.
    pub async fn digest(&self, request: DigestRequest) -> Result<DigestResponse, NodeError> {
        if let Some(node) = self.local() {
            return node.handler.digest(request).await.map_err(NodeError::Rejected);
        }
        self.raw.clone().digest(request).await.map(tonic::Response::into_inner).map_err(unary_error)
    }

    /// A tenant's keys in a range that hold only old tombstones.
    pub async fn tombstones(&self, request: TombstonesRequest) -> Result<TombstonesResponse, NodeError> {
        if let Some(node) = self.local() {
            return node.handler.tombstones(request).await.map_err(NodeError::Rejected);
        }
        self.raw.clone().tombstones(request).await.map(tonic::Response::into_inner).map_err(unary_error)
    }

    /// Deletes a key on the node if it still holds exactly the given
    /// tombstones.
    pub async fn purge(&self, request: PurgeRequest) -> Result<PurgeResponse, NodeError> {
        if let Some(node) = self.local() {
            return node.handler.purge(request).await.map_err(NodeError::Rejected);
        }
        self.raw.clone().purge(request).await.map(tonic::Response::into_inner).map_err(unary_error)
    }

    fn local(&self) -> Option<crate::directory::LocalNode> {
        self.in_process.as_ref().and_then(|nodes| nodes.get(&self.address))
    }

    /// Reads a key's local state on the node.
    pub fn read(&self, request: ReadRequest) -> impl Future<Output = Result<ReadResponse, NodeError>> + Send + use<> {
        let call = self.call(Op::Read(request));
        async move {
            match call.await? {
                Answer::Read(response) => Ok(response),
                _ => Err(unexpected("read")),
            }
        }
    }

    /// Merges a state into the node's and waits until it is durable.
    pub fn merge(
        &self,
        request: MergeRequest,
    ) -> impl Future<Output = Result<MergeResponse, NodeError>> + Send + use<> {
        let call = self.call(Op::Merge(request));
        async move {
            match call.await? {
                Answer::Merge(response) => Ok(response),
                _ => Err(unexpected("merge")),
            }
        }
    }

    /// Asks the node to coordinate a write as the key's coordinating replica.
    /// The error says whether the node may have applied it.
    pub fn coordinate(
        &self,
        request: CoordinateRequest,
    ) -> impl Future<Output = Result<CoordinateResponse, NodeError>> + Send + use<> {
        let call = self.call(Op::Coordinate(request));
        async move {
            match call.await? {
                Answer::Coordinate(response) => Ok(response),
                _ => Err(unexpected("coordinate")),
            }
        }
    }

    /// Paxos phase 1 on one of the node's linearizable keys.
    pub fn prepare(
        &self,
        request: PrepareRequest,
    ) -> impl Future<Output = Result<PrepareResponse, NodeError>> + Send + use<> {
        let call = self.call(Op::Prepare(request));
        async move {
            match call.await? {
                Answer::Prepare(response) => Ok(response),
                _ => Err(unexpected("prepare")),
            }
        }
    }

    /// Paxos phase 2 on one of the node's linearizable keys.
    pub fn accept(
        &self,
        request: AcceptRequest,
    ) -> impl Future<Output = Result<AcceptResponse, NodeError>> + Send + use<> {
        let call = self.call(Op::Accept(request));
        async move {
            match call.await? {
                Answer::Accept(response) => Ok(response),
                _ => Err(unexpected("accept")),
            }
        }
    }

    /// Starts one operation: in-process, or on the node's pipeline. In the
    /// common case — a session open — the request is written (or queued
    /// behind a full socket) before this returns, and the call is a few
    /// words waiting for its answer; only the rare paths (opening a session,
    /// a handler in this process) allocate a future of their own.
    fn call(&self, op: Op) -> Call {
        if let Some(node) = self.local() {
            // As a pipelined call would be: refused as never acted on once
            // the node is shutting down.
            if *node.stopping.borrow() {
                return Call::Failed(Some(NodeError::NotSent(Status::unavailable("storage node is shutting down"))));
            }
            let answer = |answer: Answer| match answer {
                Answer::Error(error) => Err(NodeError::Rejected(Status::new(error.code.into(), error.message))),
                answer => Ok(answer),
            };
            // A read answers without waiting: it runs in the caller's own
            // task. An operation that waits gets a task of its own, as the
            // node's endpoint gives it: it runs to its end even if the
            // caller stops waiting, and a replica's journal sync (which
            // holds its thread) never delays the other replicas' calls.
            if matches!(op, Op::Read(_)) {
                return Call::Slow(Box::pin(async move { answer(handler::run(&*node.handler, Some(op)).await) }));
            }
            let task = tokio::spawn(async move { handler::run(&*node.handler, Some(op)).await });
            return Call::Slow(Box::pin(async move {
                match task.await {
                    Ok(reply) => answer(reply),
                    Err(error) => Err(NodeError::Lost(Status::internal(format!("in-process call failed: {error}")))),
                }
            }));
        }
        // A message the connection cannot carry would end it, failing every
        // other call on it: refuse it alone, before it is sent. (The id and
        // the operation's framing take at most 16 bytes more.)
        let size = op.encoded_len() + 16;
        if size > MAX_MESSAGE_BYTES - 1024 {
            return Call::Failed(Some(NodeError::NotSent(Status::resource_exhausted(format!(
                "the request takes {size} bytes, more than one message carries ({MAX_MESSAGE_BYTES})"
            )))));
        }
        match self.open_session() {
            Some(session) => Call::send(session, op),
            None => {
                let client = self.clone();
                Call::Slow(Box::pin(async move {
                    let session = client.session().await.map_err(NodeError::NotSent)?;
                    Call::send(session, op).await
                }))
            }
        }
    }

    /// The open session, if any.
    fn open_session(&self) -> Option<Arc<Session>> {
        let current = self.session.read().unwrap_or_else(|p| p.into_inner());
        current.as_ref().filter(|session| !session.closed.load(Ordering::Acquire)).cloned()
    }

    /// The open session, or a new one.
    async fn session(&self) -> Result<Arc<Session>, Status> {
        if let Some(session) = self.open_session() {
            return Ok(session);
        }
        let _opening = self.opening.lock().await;
        // Another caller may have opened one while this one waited.
        if let Some(session) = self.open_session() {
            return Ok(session);
        }
        let connect = TcpStream::connect(&*self.address);
        let stream = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| Status::unavailable(format!("connecting to node {} timed out", self.address)))?
            .map_err(|e| Status::unavailable(format!("cannot connect to node {}: {e}", self.address)))?;
        framed::prepare(&stream);
        let stream = Arc::new(stream);
        let requests = FrameSender::new(stream.clone(), Some(PREFACE));
        let session = Arc::new(Session {
            requests: requests.clone(),
            waiting: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&session);
        tokio::spawn(async move {
            if let (Err(error), Some(session)) = (framed::flush(requests).await, weak.upgrade()) {
                session.close(&format!("pipeline to node failed: {error}"), false);
            }
        });
        tokio::spawn(dispatch(FrameReader::new(SharedStream(stream)), Arc::downgrade(&session)));
        *self.session.write().unwrap_or_else(|p| p.into_inner()) = Some(session.clone());
        Ok(session)
    }
}

/// Hands each answer to the call waiting for it; closes the session (and
/// with it the client's side of the connection) when the connection ends or
/// fails.
async fn dispatch(mut inbound: FrameReader<SharedStream>, session: std::sync::Weak<Session>) {
    loop {
        let message = inbound.next::<PipelineResponse>().await;
        let Some(session) = session.upgrade() else { return };
        match message {
            Ok(Some(PipelineResponse { id, result })) => {
                let reply = session.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                if let Some(reply) = reply {
                    let result = match result {
                        Some(Answer::Error(error)) => {
                            Err(NodeError::Rejected(Status::new(error.code.into(), error.message)))
                        }
                        Some(answer) => Ok(answer),
                        None => Err(NodeError::Lost(Status::internal("node sent an empty pipeline answer"))),
                    };
                    let _ = reply.send(result);
                }
            }
            Ok(None) => {
                session.close("node closed the pipeline", true);
                return;
            }
            Err(error) => {
                session.close(&format!("pipeline to node failed: {error}"), false);
                return;
            }
        }
    }
}
