//! Wiring a coordinator: stores, caches, topology, engine, gRPC services.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cohort_proto::coord::v1::cas_server::CasServer;
use cohort_proto::coord::v1::config_server::ConfigServer;
use cohort_proto::coord::v1::election_server::ElectionServer;
use cohort_proto::coord::v1::leases_server::LeasesServer;
use cohort_proto::coord::v1::locks_server::LocksServer;
use cohort_proto::coord::v1::registry_server::RegistryServer;
use cohort_proto::v1::admin_server::AdminServer;
use cohort_proto::v1::key_value_server::KeyValueServer;
use cohort_transport::{InProcessNodes, Liveness, PeerPool};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};

use crate::admin::AdminService;
use crate::config::CoordinatorConfig;
use crate::contexts::ContextSeals;
use crate::coord::{CasService, ConfigService, ElectionService, LeaseService, LockService, RegistryService};
use crate::kv::KvEngine;
use crate::leader::{self, LeaderState};
use crate::metadata::{MetadataChange, MetadataError, MetadataStore};
use crate::registers::Registers;
use crate::service::KvService;
use crate::tenants::TenantCache;
use crate::topology::Topology;
use cohort_idempotency::IdempotencyStore;
use cohort_worker::{Periodic, Step, Worker, WorkerStatuses, Workers};

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
    /// Linearizable operations (Paxos among a key's replicas).
    pub registers: Registers,
    /// Clients of the storage nodes.
    pub peers: Arc<PeerPool>,
    /// Which storage nodes this process believes down.
    pub liveness: Arc<Liveness>,
    /// The keys that seal causal contexts.
    pub contexts: ContextSeals,
    /// How this coordinator's background workers are doing.
    pub workers: WorkerStatuses,
    /// Wakes the leader's membership worker: a change was proposed or a
    /// cancel requested.
    pub membership_wake: Arc<tokio::sync::Notify>,
    /// What anti-entropy exchanges found, range by range, and the ranges
    /// escalated to it.
    pub repair: Arc<crate::repair::RepairLedger>,
    leadership: watch::Sender<LeaderState>,
    metadata_up: AtomicBool,
}

/// Whether a coordinator can serve, for `/health/ready`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Everything it depends on answers.
    Ready,
    /// It serves key-value traffic from cached tenants and the last ring,
    /// but metadata is unreachable: admin changes fail.
    Degraded(String),
    /// It cannot route requests.
    NotReady(String),
}

impl Coordinator {
    /// Validates `config` and loads the topology from `metadata`.
    pub async fn new(
        config: CoordinatorConfig,
        metadata: Arc<dyn MetadataStore>,
        idempotency: Arc<dyn IdempotencyStore>,
    ) -> Result<Arc<Self>, MetadataError> {
        Self::with_in_process(config, metadata, idempotency, None).await
    }

    /// Like [`Coordinator::new`]; storage nodes found in `in_process` are
    /// called directly instead of over the network.
    pub async fn with_in_process(
        config: CoordinatorConfig,
        metadata: Arc<dyn MetadataStore>,
        idempotency: Arc<dyn IdempotencyStore>,
        in_process: Option<Arc<InProcessNodes>>,
    ) -> Result<Arc<Self>, MetadataError> {
        config.validate().map_err(|e| MetadataError::Unavailable(format!("invalid coordinator configuration: {e}")))?;
        let topology = Arc::new(Topology::load(metadata.clone()).await?);
        let contexts = ContextSeals::load(metadata.clone()).await?;
        let timeout = config.node_timeout;
        let peers = Arc::new(match in_process {
            Some(nodes) => PeerPool::with_in_process(timeout, nodes),
            None => PeerPool::new(timeout),
        });
        let liveness = Arc::new(Liveness::new());
        let engine = KvEngine::new(topology.clone(), peers.clone(), liveness.clone(), &config);
        let registers = Registers::new(
            topology.clone(),
            peers.clone(),
            liveness.clone(),
            config.node_timeout,
            config.request_timeout,
        );
        let tenants = TenantCache::new(metadata.clone(), config.metadata.tenant_cache_ttl);
        let (leadership, _) = watch::channel(LeaderState::default());
        Ok(Arc::new(Coordinator {
            config,
            metadata,
            idempotency,
            tenants,
            topology,
            engine,
            registers,
            peers,
            liveness,
            contexts,
            workers: WorkerStatuses::default(),
            membership_wake: Arc::new(tokio::sync::Notify::new()),
            repair: Arc::default(),
            leadership,
            metadata_up: AtomicBool::new(true),
        }))
    }

    /// Whether this coordinator leads, and under which generation.
    pub fn leadership(&self) -> LeaderState {
        *self.leadership.borrow()
    }

    /// Waits until this coordinator's leadership satisfies `condition`.
    pub async fn wait_for_leadership(&self, condition: impl Fn(&LeaderState) -> bool) -> LeaderState {
        let mut watch = self.leadership.subscribe();
        *watch.wait_for(|s| condition(s)).await.expect("the sender lives in self")
    }

    /// Whether the coordinator can serve.
    pub fn readiness(&self) -> Readiness {
        if self.topology.current().is_empty() {
            return Readiness::NotReady("no storage nodes are registered".into());
        }
        if !self.metadata_up.load(Ordering::Relaxed) {
            return Readiness::Degraded("metadata store unreachable; serving cached tenants and the last ring".into());
        }
        Readiness::Ready
    }

    /// Whether the coordinator can route requests (ready or degraded).
    pub fn is_ready(&self) -> bool {
        !matches!(self.readiness(), Readiness::NotReady(_))
    }

    fn set_metadata_up(&self, up: bool) {
        if self.metadata_up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!("metadata store reachable again");
            } else {
                tracing::warn!("metadata store unreachable; serving cached tenants and the last ring");
            }
        }
        metrics::gauge!("cohort_metadata_up").set(if up { 1.0 } else { 0.0 });
    }
}

/// One refresh of the ring and the context keys; tracks whether metadata
/// answers.
async fn refresh_ring(coordinator: &Coordinator) -> Result<(), String> {
    let refreshed = match coordinator.topology.refresh().await {
        Ok(_) => coordinator.contexts.reload().await,
        Err(error) => Err(error),
    };
    coordinator.set_metadata_up(refreshed.is_ok());
    refreshed.map_err(|error| error.to_string())
}

/// Applies changes announced by other coordinators, one per step.
struct ChangeFollower {
    coordinator: Arc<Coordinator>,
    changes: broadcast::Receiver<MetadataChange>,
}

#[tonic::async_trait]
impl Worker for ChangeFollower {
    fn name(&self) -> &'static str {
        "change-follower"
    }

    async fn work(&mut self) -> Result<Step, String> {
        let c = &self.coordinator;
        match self.changes.recv().await {
            Ok(MetadataChange::Tenant(id)) => c.tenants.invalidate(&id),
            Ok(MetadataChange::Migration(_)) => c.membership_wake.notify_one(),
            Ok(MetadataChange::Ring) => {
                c.membership_wake.notify_one();
                c.topology.refresh().await.map_err(|e| format!("ring refresh after a change notice: {e}"))?;
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                c.tenants.clear();
                c.topology.refresh().await.map_err(|e| format!("ring refresh after missed notices: {e}"))?;
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(Step::Done),
        }
        Ok(Step::Busy)
    }

    async fn wait_for_work(&mut self) {
        // After a failed refresh: the next notice (or the periodic refresh)
        // brings the ring up to date.
    }
}

/// How often expired idempotency records are purged.
const IDEMPOTENCY_PURGE_EVERY: Duration = Duration::from_secs(60);

/// How long stopping workers may take at shutdown.
const WORKER_EXIT_DEADLINE: Duration = Duration::from_secs(5);

/// The workers every coordinator runs.
fn start_workers(coordinator: &Arc<Coordinator>) -> Workers {
    let mut workers = Workers::new(coordinator.workers.clone());
    let c = coordinator.clone();
    workers.spawn(Periodic::new("ring-refresh", c.config.metadata.ring_refresh, move || {
        let c = c.clone();
        async move { refresh_ring(&c).await }
    }));
    let c = coordinator.clone();
    workers.spawn(Periodic::new("idempotency-purge", IDEMPOTENCY_PURGE_EVERY, move || {
        let c = c.clone();
        async move {
            match c.idempotency.purge_expired().await {
                Ok(0) => {}
                Ok(purged) => tracing::debug!(purged, "purged expired idempotency records"),
                Err(error) => return Err(error.to_string()),
            }
            Ok(())
        }
    }));
    if let Some(changes) = coordinator.metadata.changes() {
        workers.spawn(ChangeFollower { coordinator: coordinator.clone(), changes });
    }
    workers
}

/// The jobs only the leader runs, each given the generation it leads under:
/// their metadata writes are fenced by it.
fn leader_jobs(coordinator: &Arc<Coordinator>) -> leader::Jobs {
    let coordinator = coordinator.clone();
    Arc::new(move |generation| {
        let probe = crate::probe::Probe {
            topology: coordinator.topology.clone(),
            peers: coordinator.peers.clone(),
            liveness: coordinator.liveness.clone(),
            metadata: coordinator.metadata.clone(),
            generation,
            interval: coordinator.config.leader.node_probe,
            timeout: coordinator.config.node_timeout,
            tick: None,
            repair: coordinator.repair.clone(),
        };
        // The job's runner lives in its task: aborting the task (leadership
        // lost) drops the runner, which stops the workers.
        let mut workers = Workers::new(coordinator.workers.clone());
        workers.spawn(probe);
        workers.spawn(crate::membership::Mover::new(
            coordinator.clone(),
            generation,
            coordinator.membership_wake.clone(),
        ));
        workers.spawn(crate::repair::AntiEntropy::new(coordinator.clone()));
        workers.spawn(crate::coord::registry::HealthWorker::new(coordinator.clone()));
        vec![tokio::spawn(async move { workers.join().await })]
    })
}

/// Serves the public API of `coordinator` on `listener` until `shutdown`
/// completes. In-flight requests finish before it returns.
pub async fn serve(
    coordinator: Arc<Coordinator>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let mut workers = start_workers(&coordinator);
    workers.spawn(leader::Election::new(
        coordinator.metadata.clone(),
        leader::holder_for(&coordinator.config.id),
        coordinator.config.leader.lease,
        coordinator.leadership.clone(),
        leader_jobs(&coordinator),
    ));
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<KeyValueServer<KvService>>().await;
    health.set_serving::<AdminServer<AdminService>>().await;
    health.set_serving::<CasServer<CasService>>().await;
    health.set_serving::<LeasesServer<LeaseService>>().await;
    health.set_serving::<LocksServer<LockService>>().await;
    health.set_serving::<ElectionServer<ElectionService>>().await;
    health.set_serving::<ConfigServer<ConfigService>>().await;
    health.set_serving::<RegistryServer<RegistryService>>().await;
    tracing::info!(id = %coordinator.config.id, address = ?listener.local_addr().ok(), "coordinator serving");
    // Streams and waits that could outlast graceful shutdown (election
    // observers, lock waiters) end when it begins.
    let (stopping, stop) = watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stopping.send(true);
    };
    let result = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(
            KeyValueServer::new(KvService::new(coordinator.clone())).max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(AdminServer::new(AdminService::new(coordinator.clone())))
        .add_service(CasServer::new(CasService::new(coordinator.clone())).max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(LeasesServer::new(LeaseService::new(coordinator.clone())))
        .add_service(LocksServer::new(LockService::new(coordinator.clone(), stop.clone())))
        .add_service(ElectionServer::new(ElectionService::new(coordinator.clone(), stop.clone())))
        .add_service(
            ConfigServer::new(ConfigService::new(coordinator.clone(), stop.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(RegistryServer::new(RegistryService::new(coordinator.clone(), stop)))
        .serve_with_incoming_shutdown(cohort_transport::incoming(listener), shutdown)
        .await;
    // Stopping the election gives the lease up, so another coordinator
    // leads at once.
    workers.shutdown(WORKER_EXIT_DEADLINE).await;
    tracing::info!(id = %coordinator.config.id, "coordinator stopped");
    result
}
