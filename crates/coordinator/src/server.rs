//! Wiring a coordinator: stores, caches, topology, engine, gRPC services.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cohort_node::peers::PeerPool;
use cohort_proto::v1::admin_server::AdminServer;
use cohort_proto::v1::key_value_server::KeyValueServer;
use tokio::net::TcpListener;

use crate::config::CoordinatorConfig;
use crate::idempotency::IdempotencyStore;
use crate::kv::KvEngine;
use crate::metadata::{MetadataError, MetadataStore};
use crate::service::{AdminService, KvService};
use crate::tenants::TenantCache;
use crate::topology::Topology;

/// Largest request the public API decodes. Above the value limit, so that an
/// oversize value gets a clear InvalidArgument rather than a transport error.
const MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;

/// A running coordinator's shared state.
pub struct Coordinator {
    /// Settings, validated.
    pub config: CoordinatorConfig,
    /// Tenants, nodes, ring version.
    pub metadata: Arc<dyn MetadataStore>,
    /// Idempotency records.
    pub idempotency: Arc<dyn IdempotencyStore>,
    /// Tenant cache over `metadata`.
    pub tenants: TenantCache,
    /// Current placement.
    pub topology: Arc<Topology>,
    /// The quorum read and write paths.
    pub engine: KvEngine,
}

impl Coordinator {
    /// Validates `config` and loads the topology from `metadata`.
    pub async fn new(
        config: CoordinatorConfig,
        metadata: Arc<dyn MetadataStore>,
        idempotency: Arc<dyn IdempotencyStore>,
    ) -> Result<Arc<Self>, MetadataError> {
        config.validate().map_err(|e| MetadataError::Unavailable(format!("invalid coordinator configuration: {e}")))?;
        let topology = Arc::new(Topology::load(metadata.clone()).await?);
        let peers = Arc::new(PeerPool::new(Duration::from_millis(config.node_timeout_ms)));
        let engine = KvEngine::new(topology.clone(), peers, &config);
        let tenants = TenantCache::new(metadata.clone(), Duration::from_millis(config.tenant_cache_ttl_ms));
        Ok(Arc::new(Coordinator { config, metadata, idempotency, tenants, topology, engine }))
    }

    /// Whether the coordinator can route requests (some node is on the ring).
    pub fn is_ready(&self) -> bool {
        !self.topology.current().ring.is_empty()
    }
}

/// Serves the public API of `coordinator` on `listener` until `shutdown`
/// completes. In-flight requests finish before it returns.
pub async fn serve(
    coordinator: Arc<Coordinator>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let refresher =
        coordinator.topology.clone().spawn_refresher(Duration::from_millis(coordinator.config.ring_refresh_ms));
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<KeyValueServer<KvService>>().await;
    health.set_serving::<AdminServer<AdminService>>().await;
    tracing::info!(id = %coordinator.config.id, address = ?listener.local_addr().ok(), "coordinator serving");
    let result = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(
            KeyValueServer::new(KvService::new(coordinator.clone())).max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(AdminServer::new(AdminService::new(coordinator.clone())))
        .serve_with_incoming_shutdown(cohort_node::server::incoming(listener), shutdown)
        .await;
    refresher.abort();
    tracing::info!(id = %coordinator.config.id, "coordinator stopped");
    result
}
