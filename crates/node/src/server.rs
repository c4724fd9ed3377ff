//! Running a storage node: open the store, serve gRPC until shutdown.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use cohort_proto::internal::v1::storage_server::StorageServer;
use cohort_transport::limits::{CONNECTION_WINDOW_BYTES, STREAM_WINDOW_BYTES};
use cohort_transport::{InProcessNodes, PeerPool, StorageEndpoint, StorageHandler, listen};
use cohort_worker::{Periodic, Step, Worker, WorkerStatuses, Workers};

use crate::hints::HintDelivery;
use tokio::net::TcpListener;
use tonic::async_trait;

use crate::config::NodeConfig;
use crate::handler::StorageNode;
use crate::store::{Store, StoreError};

/// How often expired write records are purged (the first time as the node
/// starts).
const WRITE_RECORD_PURGE_EVERY: Duration = Duration::from_secs(600);

/// How often the store's health is checked for the gRPC health service.
const HEALTH_WATCH_EVERY: Duration = Duration::from_millis(500);

/// How often pending hints are swept and delivered.
const HINT_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How long stopping workers may take at shutdown.
const WORKER_EXIT_DEADLINE: Duration = Duration::from_secs(5);

fn interval(period: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Reports the node not serving (to the gRPC health service) once its
/// store is poisoned, then finishes.
struct HealthWatch {
    store: Arc<Store>,
    health: tonic_health::server::HealthReporter,
    tick: tokio::time::Interval,
}

#[async_trait]
impl Worker for HealthWatch {
    fn name(&self) -> &'static str {
        "health-watch"
    }

    async fn work(&mut self) -> Result<Step, String> {
        if !self.store.is_poisoned() {
            return Ok(Step::Idle);
        }
        self.health.set_not_serving::<StorageServer<StorageEndpoint<StorageNode>>>().await;
        self.health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        Ok(Step::Done)
    }

    async fn wait_for_work(&mut self) {
        self.tick.tick().await;
    }
}

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration was rejected.
    #[error("invalid node configuration: {0}")]
    Config(String),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// What a running node exposes to the process that embeds it.
#[derive(Clone)]
pub struct NodeHandle {
    /// Weak, so that holding a handle never keeps a stopped node's store
    /// (and its directory lock) alive.
    store: Weak<Store>,
}

impl NodeHandle {
    /// The node's store while the node runs, for inspection and fault
    /// injection in tests and tools.
    pub fn store(&self) -> Option<Arc<Store>> {
        self.store.upgrade()
    }
}

/// Serves a storage node on `listener` until `shutdown` completes, then
/// closes the store. `on_ready` receives a handle once the store is open.
pub async fn serve(
    config: NodeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(NodeHandle),
) -> Result<(), ServeError> {
    serve_with(config, listener, shutdown, on_ready, None).await
}

/// Like [`serve`]; with `in_process`, the node is also reachable through
/// that directory under its listening address while it serves, and calls
/// its peers through it too.
pub async fn serve_with(
    config: NodeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(NodeHandle),
    in_process: Option<Arc<InProcessNodes>>,
) -> Result<(), ServeError> {
    config.validate().map_err(ServeError::Config)?;
    let store = Arc::new(Store::open(&config.data_dir, &config.id, config.durability)?);
    let peer_timeout = config.peer_timeout;
    let peers = Arc::new(match &in_process {
        Some(nodes) => PeerPool::with_in_process(peer_timeout, nodes.clone()),
        None => PeerPool::new(peer_timeout),
    });
    let (stop_pipelines, stopping) = tokio::sync::watch::channel(false);
    let node = Arc::new(StorageNode::new(&config.id, store.clone(), peers.clone(), peer_timeout));
    let local_address = listener.local_addr().ok();
    let registered = match (&in_process, local_address) {
        (Some(nodes), Some(address)) => {
            let address = address.to_string();
            nodes.register(&address, node.clone() as Arc<dyn StorageHandler>, stopping.clone());
            Some((nodes.clone(), address))
        }
        _ => None,
    };
    let shutdown = async move {
        shutdown.await;
        let _ = stop_pipelines.send(true);
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<StorageServer<StorageEndpoint<StorageNode>>>().await;
    let mut workers = Workers::new(WorkerStatuses::default());
    workers.spawn(HealthWatch { store: store.clone(), health, tick: interval(HEALTH_WATCH_EVERY) });
    workers.spawn(HintDelivery::new(store.clone(), peers, peer_timeout, HINT_SWEEP_EVERY, config.hints.clone()));
    let purging = store.clone();
    workers.spawn(Periodic::new("write-record-purge", WRITE_RECORD_PURGE_EVERY, move || {
        let store = purging.clone();
        async move {
            match tokio::task::spawn_blocking(move || store.purge_write_records()).await {
                Ok(Ok(purged)) => {
                    tracing::debug!(purged, "purged expired write records");
                    Ok(())
                }
                Ok(Err(error)) => Err(format!("purging expired write records failed: {error}")),
                Err(error) => Err(format!("the write-record purge task failed: {error}")),
            }
        }
    }));

    on_ready(NodeHandle { store: Arc::downgrade(&store) });
    // Framed pipeline connections are served by the transport itself; the
    // rest go to the gRPC server.
    let (grpc_connections, pipelines) = listen(listener, node.clone(), stopping.clone());
    tracing::info!(node = %config.id, actor = %store.actor(), address = ?local_address, "storage node serving");
    let result = tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .add_service(health_service)
        .add_service(StorageEndpoint::new(node).into_server())
        .serve_with_incoming_shutdown(grpc_connections, shutdown)
        .await;
    pipelines.closed().await;
    workers.shutdown(WORKER_EXIT_DEADLINE).await;
    if let Some((nodes, address)) = registered {
        nodes.unregister(&address);
    }
    // Background replication tasks may still hold the store briefly; close it
    // when this was the last handle so the directory can be reopened.
    match Arc::try_unwrap(store) {
        Ok(store) => store.close().await,
        Err(store) => drop(store),
    }
    tracing::info!(node = %config.id, "storage node stopped");
    result.map_err(ServeError::from)
}
