//! The gRPC side of a storage node: the internal `Storage` service over a
//! [`StorageHandler`], and the listener settings every server uses.

use std::sync::Arc;

use cohort_proto::internal::v1::pipeline_response::Result as Answer;
use cohort_proto::internal::v1::storage_server::{Storage, StorageServer};
use cohort_proto::internal::v1::{
    AcceptRequest, AcceptResponse, CoordinateRequest, CoordinateResponse, DigestRequest, DigestResponse,
    DropRangeRequest, DropRangeResponse, FenceRequest, FenceResponse, InfoRequest, InfoResponse, MergeRequest,
    MergeResponse, PipelineError, PipelineRequest, PipelineResponse, PrepareRequest, PrepareResponse, PurgeRequest,
    PurgeResponse, ReadRequest, ReadResponse, ScanRequest, ScanResponse, TombstonesRequest, TombstonesResponse,
};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

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

/// The `Storage` gRPC service over a handler.
pub struct StorageEndpoint<H> {
    handler: Arc<H>,
    /// Turns true when the server starts shutting down: open pipelines stop
    /// taking requests and end once their operations have answered, so
    /// graceful shutdown does not wait on streams that never end.
    stopping: watch::Receiver<bool>,
}

impl<H: StorageHandler> StorageEndpoint<H> {
    /// The service for `handler`; `stopping` turns true at shutdown.
    pub fn new(handler: Arc<H>, stopping: watch::Receiver<bool>) -> Self {
        StorageEndpoint { handler, stopping }
    }

    /// The tonic server for this service, with the message limits of the
    /// internal API.
    pub fn into_server(self) -> StorageServer<Self> {
        StorageServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl<H: StorageHandler> Storage for StorageEndpoint<H> {
    type PipelineStream = ReceiverStream<Result<PipelineResponse, Status>>;

    async fn pipeline(
        &self,
        request: Request<Streaming<PipelineRequest>>,
    ) -> Result<Response<Self::PipelineStream>, Status> {
        let mut inbound = request.into_inner();
        let (answers, stream) = mpsc::channel(4096);
        let handler = self.handler.clone();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            // An operation that completes without waiting (a read, or one
            // refused at once) is answered right here. One that waits (a
            // write waiting for its sync and its peers) moves to a task of
            // its own, so it never holds up the others. The answer stream
            // ends only after every operation taken has answered (each
            // holds a sender), which tells clients that a request still
            // unanswered then was never acted on.
            loop {
                let request = tokio::select! {
                    request = inbound.message() => request,
                    _ = stopping.wait_for(|stop| *stop) => break,
                };
                let Ok(Some(PipelineRequest { id, op })) = request else { break };
                let handler = handler.clone();
                let mut operation = Box::pin(async move { handler::run(&*handler, op).await });
                // Polled once here; a pending operation continues on its task.
                let first = std::future::poll_fn(|cx| std::task::Poll::Ready(operation.as_mut().poll(cx))).await;
                match first {
                    std::task::Poll::Ready(answer) => match answers.try_send(Ok(answer_message(id, answer))) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(message)) => {
                            // The stream is backed up: wait for room, which
                            // also stops taking requests meanwhile.
                            if answers.send(message).await.is_err() {
                                break;
                            }
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => break,
                    },
                    std::task::Poll::Pending => {
                        let answers = answers.clone();
                        tokio::spawn(async move {
                            let answer = operation.await;
                            let _ = answers.send(Ok(answer_message(id, answer))).await;
                        });
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }

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
