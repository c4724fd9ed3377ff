//! The serving side of a storage node: its listener ([`listen`]), which
//! serves framed pipeline connections itself and hands every other
//! connection to the gRPC server; the internal `Storage` gRPC service over a
//! [`StorageHandler`]; and the listener settings every server uses.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use cohort_proto::internal::v1::pipeline_response::Result as Answer;
use cohort_proto::internal::v1::storage_server::{Storage, StorageServer};
use cohort_proto::internal::v1::{
    AcceptRequest, AcceptResponse, CoordinateRequest, CoordinateResponse, DigestRequest, DigestResponse,
    DropRangeRequest, DropRangeResponse, FenceRequest, FenceResponse, InfoRequest, InfoResponse, MergeRequest,
    MergeResponse, PipelineError, PipelineRequest, PipelineResponse, PrepareRequest, PrepareResponse, PurgeRequest,
    PurgeResponse, ReadRequest, ReadResponse, ScanRequest, ScanResponse, TombstonesRequest, TombstonesResponse,
};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::framed::{self, FrameReader, FrameSender, PREFACE, SharedStream};
use crate::handler::{self, StorageHandler};
use crate::limits::MAX_MESSAGE_BYTES;

/// The largest answer a pipeline carries: an answer that would not fit in
/// one message becomes an error for its own operation, so that it never
/// breaks the stream every other operation to this node shares.
pub const MAX_ANSWER_BYTES: usize = MAX_MESSAGE_BYTES - 64 * 1024;

/// The pipeline message carrying `answer` to operation `id`: an answer that
/// would not fit in one message becomes that operation's error.
fn answer_message(id: u64, answer: Answer) -> PipelineResponse {
    let mut response = PipelineResponse { id, result: Some(answer) };
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
    response
}

/// The `Storage` gRPC service over a handler: the unary calls (the
/// pipelined ones travel on the connections [`listen`] serves).
pub struct StorageEndpoint<H> {
    handler: Arc<H>,
}

impl<H: StorageHandler> StorageEndpoint<H> {
    /// The service for `handler`.
    pub fn new(handler: Arc<H>) -> Self {
        StorageEndpoint { handler }
    }

    /// The tonic server for this service, with the message limits of the
    /// internal API.
    pub fn into_server(self) -> StorageServer<Self> {
        StorageServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// Runs every operation `requests` brings on `handler` and sends each
/// answer with `answers`, until the requests end or `stopping` turns true.
///
/// An operation that completes without waiting (a read, or one refused at
/// once) is answered right here, by this task. One that waits (a write
/// waiting for its sync and its peers) moves to a task of its own, which
/// answers it, so it never holds up the others; each holds a clone of
/// `in_flight` until it has answered.
async fn serve_operations<H: StorageHandler, R: AsyncRead + Unpin>(
    handler: Arc<H>,
    requests: &mut FrameReader<R>,
    answers: &Arc<FrameSender>,
    in_flight: mpsc::Sender<()>,
    mut stopping: watch::Receiver<bool>,
) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        // Stopping is checked first: a request that arrives once it is true
        // is never taken.
        let request = tokio::select! {
            biased;
            _ = stopping.wait_for(|stop| *stop) => break,
            request = requests.next::<PipelineRequest>() => request,
        };
        let PipelineRequest { id, op } = match request {
            Ok(Some(request)) => request,
            Ok(None) => break,
            Err(error) => {
                tracing::debug!(%error, "pipeline connection failed");
                break;
            }
        };
        let handler = handler.clone();
        let mut operation = Box::pin(async move { handler::run(&*handler, op).await });
        // A waiting operation's answer is written by its task when it is
        // the only one open on the connection; among many, the flusher
        // batches them.
        open.fetch_add(1, Ordering::AcqRel);
        // Polled once here; a pending operation continues on its task.
        let first = std::future::poll_fn(|cx| Poll::Ready(operation.as_mut().poll(cx))).await;
        match first {
            Poll::Ready(answer) => {
                let queued = answers.queue(&answer_message(id, answer));
                open.fetch_sub(1, Ordering::AcqRel);
                if queued.is_err() {
                    // The client stopped reading or the connection failed.
                    break;
                }
            }
            Poll::Pending => {
                let (answers, in_flight, open) = (answers.clone(), in_flight.clone(), open.clone());
                tokio::spawn(async move {
                    let answer = operation.await;
                    let _ = answers.send(&answer_message(id, answer), open.load(Ordering::Acquire) == 1);
                    open.fetch_sub(1, Ordering::AcqRel);
                    drop(in_flight);
                });
            }
        }
        // Answers to requests that arrived together leave together: once the
        // requests read so far are all taken, this task writes the answers
        // it gave in one call.
        if !requests.has_frame() && answers.send_queued().is_err() {
            break;
        }
    }
}

/// The connections a node's listener accepted that are not framed
/// pipelines, for the gRPC server.
pub type GrpcConnections = ReceiverStream<std::io::Result<TcpStream>>;

/// The framed pipeline connections a node serves; [`PipelineConnections::closed`]
/// waits until all of them have ended.
pub struct PipelineConnections {
    open: mpsc::Receiver<()>,
}

impl PipelineConnections {
    /// Waits until the listener has stopped and every framed connection has
    /// answered what it took and ended.
    pub async fn closed(mut self) {
        while self.open.recv().await.is_some() {}
    }
}

/// How long a stopping node waits for a client to end its side of a
/// framed connection after the node ended its own.
const LINGER: Duration = Duration::from_secs(2);
/// How long a new connection may take to send its first byte.
const FIRST_BYTE_WITHIN: Duration = Duration::from_secs(10);

/// Serves a storage node's listener: connections that open with
/// [`PREFACE`] are framed pipelines, served here on `handler`; every other
/// connection goes to the gRPC server through the returned stream. Stops
/// accepting when `stopping` turns true; framed connections then stop taking
/// requests and end once their operations have answered.
pub fn listen<H: StorageHandler>(
    listener: TcpListener,
    handler: Arc<H>,
    stopping: watch::Receiver<bool>,
) -> (GrpcConnections, PipelineConnections) {
    let (grpc, grpc_connections) = mpsc::channel(64);
    let (open, all_closed) = mpsc::channel::<()>(1);
    tokio::spawn(async move {
        let mut stop = stopping.clone();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.wait_for(|stop| *stop) => break,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors, or a connection reset before it
                    // was accepted: the next accept may succeed.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            framed::prepare(&stream);
            let (grpc, handler, stopping, open) = (grpc.clone(), handler.clone(), stopping.clone(), open.clone());
            tokio::spawn(async move {
                let mut stop = stopping.clone();
                let kind = tokio::select! {
                    kind = tokio::time::timeout(FIRST_BYTE_WITHIN, opens_pipeline(&stream)) => kind,
                    _ = stop.wait_for(|stop| *stop) => return,
                };
                match kind {
                    Ok(Ok(true)) => serve_pipeline_connection(stream, handler, stopping).await,
                    Ok(Ok(false)) => {
                        let _ = grpc.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%error, "a connection ended before it was served"),
                    Err(_) => tracing::debug!("a connection sent nothing; closed"),
                }
                drop(open);
            });
        }
    });
    (ReceiverStream::new(grpc_connections), PipelineConnections { open: all_closed })
}

/// Whether a new connection is a framed pipeline: its first byte is
/// [`PREFACE`]'s, which no HTTP/2 client sends. The rest of the preface is
/// read (and so consumed) only then; a gRPC connection is left unread.
async fn opens_pipeline(stream: &TcpStream) -> std::io::Result<bool> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(first[0] == PREFACE[0])
}

/// Serves one framed pipeline connection until the client ends it or the
/// node stops.
async fn serve_pipeline_connection<H: StorageHandler>(
    mut stream: TcpStream,
    handler: Arc<H>,
    stopping: watch::Receiver<bool>,
) {
    let mut preface = [0u8; PREFACE.len()];
    match stream.read_exact(&mut preface).await {
        Ok(_) if &preface == PREFACE => {}
        Ok(_) => return tracing::debug!("a connection sent an unknown preface; closed"),
        Err(error) => return tracing::debug!(%error, "a connection ended inside its preface"),
    }
    let stream = Arc::new(stream);
    let answers = FrameSender::new(stream.clone(), None);
    let flusher = tokio::spawn(framed::flush(answers.clone()));
    let mut requests = FrameReader::new(SharedStream(stream));
    let (in_flight, mut all_answered) = mpsc::channel::<()>(1);
    serve_operations(handler, &mut requests, &answers, in_flight, stopping).await;
    // Every operation taken answers before the node ends its side; the
    // client then ends its own, and the connection closes without
    // discarding an answer the client has not read yet.
    while all_answered.recv().await.is_some() {}
    answers.close();
    if let Ok(Ok(())) = flusher.await {
        let _ = tokio::time::timeout(LINGER, requests.discard_until_end()).await;
    }
}

#[tonic::async_trait]
impl<H: StorageHandler> Storage for StorageEndpoint<H> {
    async fn coordinate(&self, request: Request<CoordinateRequest>) -> Result<Response<CoordinateResponse>, Status> {
        self.handler.coordinate(request.into_inner()).await.map(Response::new)
    }

    async fn merge(&self, request: Request<MergeRequest>) -> Result<Response<MergeResponse>, Status> {
        self.handler.merge(request.into_inner()).await.map(Response::new)
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        self.handler.read(request.into_inner()).await.map(Response::new)
    }

    async fn info(&self, request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        self.handler.info(request.into_inner()).await.map(Response::new)
    }

    async fn fence(&self, request: Request<FenceRequest>) -> Result<Response<FenceResponse>, Status> {
        self.handler.fence(request.into_inner()).await.map(Response::new)
    }

    async fn scan(&self, request: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        self.handler.scan(request.into_inner()).await.map(Response::new)
    }

    async fn drop_range(&self, request: Request<DropRangeRequest>) -> Result<Response<DropRangeResponse>, Status> {
        self.handler.drop_range(request.into_inner()).await.map(Response::new)
    }

    async fn digest(&self, request: Request<DigestRequest>) -> Result<Response<DigestResponse>, Status> {
        self.handler.digest(request.into_inner()).await.map(Response::new)
    }

    async fn tombstones(&self, request: Request<TombstonesRequest>) -> Result<Response<TombstonesResponse>, Status> {
        self.handler.tombstones(request.into_inner()).await.map(Response::new)
    }

    async fn purge(&self, request: Request<PurgeRequest>) -> Result<Response<PurgeResponse>, Status> {
        self.handler.purge(request.into_inner()).await.map(Response::new)
    }

    async fn prepare(&self, request: Request<PrepareRequest>) -> Result<Response<PrepareResponse>, Status> {
        self.handler.prepare(request.into_inner()).await.map(Response::new)
    }

    async fn accept(&self, request: Request<AcceptRequest>) -> Result<Response<AcceptResponse>, Status> {
        self.handler.accept(request.into_inner()).await.map(Response::new)
    }
}

/// Accepted connections with Nagle's algorithm off: small gRPC frames must
/// not wait for a delayed ACK (about 40 ms on Linux).
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}
