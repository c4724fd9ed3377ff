//! `cohort-loadtest noop-server`: serves `cohort.loadtest.v1.Noop`, whose one
//! call returns at once, so `run --target noop://…` measures the ceiling of
//! the transport and of the harness itself.

use cohort_loadtest::noop::noop_server::{Noop, NoopServer};
use cohort_loadtest::noop::{NoopRequest, NoopResponse};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// Flags of `noop-server`.
#[derive(clap::Args)]
pub struct NoopServerArgs {
    /// Address to listen on (port 0 picks a free port; the address is
    /// printed either way).
    #[arg(long, default_value = "127.0.0.1:7090")]
    listen: String,
}

struct Service;

#[tonic::async_trait]
impl Noop for Service {
    async fn call(&self, _request: Request<NoopRequest>) -> Result<Response<NoopResponse>, Status> {
        Ok(Response::new(NoopResponse {}))
    }
}

/// Serves until interrupted (Ctrl-C).
pub async fn run(args: NoopServerArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    println!("noop server listening on {}", listener.local_addr()?);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    tonic::transport::Server::builder()
        .add_service(NoopServer::new(Service))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await?;
    Ok(())
}
