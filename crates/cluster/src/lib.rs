//! An in-process cluster: storage nodes and coordinators on loopback ports,
//! speaking the same gRPC as separate processes do — or, with
//! [`LocalClusterOptions::in_process`], calling each other's handlers
//! directly (the nodes still listen, for clients outside the process).
//!
//! `cohort dev` runs one; the integration tests run many, stopping and
//! restarting nodes under them. This is the one library crate that knows
//! both the storage node and the coordinator. Everything lives under one data directory:
//! `metadata/`, `idempotency/` and `node-<i>/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use cohort_node::{Durability, NodeConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use cohort_coordinator::admin::DEFAULT_REPLICATION;
use cohort_coordinator::config::CoordinatorConfig;
use cohort_coordinator::metadata::embedded::EmbeddedMetadata;
use cohort_coordinator::metadata::{MetadataError, MetadataStore, NodeRecord, NodeState, RingChange};
use cohort_coordinator::server::{Coordinator, serve};
use cohort_idempotency::IdempotencyStore;
use cohort_idempotency::embedded::EmbeddedIdempotency;
use cohort_transport::InProcessNodes;

/// How to start a local cluster.
#[derive(Debug, Clone)]
pub struct LocalClusterOptions {
    /// Where all state lives.
    pub data_dir: PathBuf,
    /// Number of storage nodes.
    pub nodes: usize,
    /// Address of the coordinator's public API (port 0 for any free port).
    pub listen: SocketAddr,
    /// Node durability mode.
    pub durability: Durability,
    /// Bounds on the hints each node keeps.
    pub node_hints: cohort_node::HintsConfig,
    /// Coordinator settings; `listen`, `data_dir` are taken from above.
    pub coordinator: CoordinatorConfig,
    /// Tenant created (N = 3) on first start; `None` for none.
    pub default_tenant: Option<String>,
    /// Whether coordinators and nodes call the nodes of this process
    /// directly instead of over loopback gRPC (what `cohort dev` does). Off
    /// by default: tests that put a fault proxy in front of a node need the
    /// network path.
    pub in_process: bool,
}

impl LocalClusterOptions {
    /// Three nodes, a coordinator on an ephemeral port, a `default` tenant.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        LocalClusterOptions {
            data_dir: data_dir.into(),
            nodes: 3,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            durability: Durability::Fsync,
            node_hints: cohort_node::HintsConfig::default(),
            coordinator: CoordinatorConfig::default(),
            default_tenant: Some("default".into()),
            in_process: false,
        }
    }
}

/// Why a local cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    /// Binding a port failed.
    #[error("cannot bind {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// A store could not be opened.
    #[error("{0}")]
    Store(String),
    /// Metadata failed.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// A node failed to start.
    #[error("node {0} failed to start: {1}")]
    Node(String, String),
}

struct RunningNode {
    address: SocketAddr,
    handle: cohort_node::NodeHandle,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), cohort_node::server::ServeError>>,
}

/// A running coordinator inside a local cluster.
pub struct LocalCoordinator {
    /// Its shared state.
    pub coordinator: Arc<Coordinator>,
    /// Where its public API listens.
    pub address: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl LocalCoordinator {
    /// `http://host:port` of the public API.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Stops it gracefully: in-flight requests finish and it gives up the
    /// leader lease if it holds it.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }

    /// Stops it abruptly, as a crash would: connections drop and the leader
    /// lease is left to expire.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A cluster running inside this process.
pub struct LocalCluster {
    options: LocalClusterOptions,
    /// The shared metadata store.
    pub metadata: Arc<dyn MetadataStore>,
    /// The shared idempotency store.
    pub idempotency: Arc<dyn IdempotencyStore>,
    nodes: Vec<Option<RunningNode>>,
    /// Where each node listened last, so a restart binds the same port.
    listen: Vec<SocketAddr>,
    /// Addresses nodes are registered under instead of their own (a proxy).
    routes: Vec<Option<String>>,
    /// The nodes of this process, when calls to them skip the network.
    in_process: Option<Arc<InProcessNodes>>,
    /// The first coordinator.
    pub coordinator: LocalCoordinator,
}

/// The id of node number `index` (from 0): `node-1`, `node-2`, …
pub fn node_id(index: usize) -> String {
    format!("node-{}", index + 1)
}

async fn bind(address: SocketAddr) -> Result<TcpListener, LocalClusterError> {
    TcpListener::bind(address).await.map_err(|e| LocalClusterError::Bind(address, e))
}

async fn start_node(
    options: &LocalClusterOptions,
    index: usize,
    metadata: &dyn MetadataStore,
    listen: SocketAddr,
    registered: Option<&str>,
    in_process: Option<Arc<InProcessNodes>>,
) -> Result<RunningNode, LocalClusterError> {
    let id = node_id(index);
    let listener = bind(listen).await?;
    let address = listener.local_addr().map_err(|e| LocalClusterError::Node(id.clone(), e.to_string()))?;
    let mut config = NodeConfig::new(&id, options.data_dir.join(&id));
    config.durability = options.durability;
    config.hints = options.node_hints.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let (ready_tx, ready_rx) = oneshot::channel::<cohort_node::NodeHandle>();
    let task = tokio::spawn(cohort_node::serve_with(
        config,
        listener,
        async move {
            let _ = stopped.await;
        },
        move |handle| {
            let _ = ready_tx.send(handle);
        },
        in_process,
    ));
    let handle = match ready_rx.await {
        Ok(handle) => handle,
        Err(_) => {
            let reason = match task.await {
                Ok(Err(e)) => e.to_string(),
                other => format!("{other:?}"),
            };
            return Err(LocalClusterError::Node(id, reason));
        }
    };
    let registered = registered.map_or_else(|| address.to_string(), str::to_string);
    register(metadata, &id, registered).await?;
    Ok(RunningNode { address, handle, stop, task })
}

/// Records node `id` at `address`, keeping the zone, vnodes and state of a
/// node registered before. A new node is recorded as joining: it is on no
/// ring until the cluster bootstraps its ring or a join adds it.
async fn register(metadata: &dyn MetadataStore, id: &str, address: String) -> Result<(), LocalClusterError> {
    let known = metadata.list_nodes().await?.into_iter().find(|n| n.id == id);
    let record = match known {
        Some(node) => NodeRecord { address, ..node },
        None => NodeRecord { id: id.to_string(), address, zone: None, vnodes: 150, state: NodeState::Joining },
    };
    metadata.upsert_node(record).await?;
    Ok(())
}

/// Puts every registered node on the ring when there is no ring yet (a new
/// cluster); an existing ring is left as it is.
async fn bootstrap_ring(metadata: &dyn MetadataStore) -> Result<(), LocalClusterError> {
    if !metadata.ring_history().await?.live.is_empty() {
        return Ok(());
    }
    let nodes = metadata.list_nodes().await?;
    let change = RingChange {
        expected_version: 0,
        nodes: nodes.iter().map(NodeRecord::spec).collect(),
        records: nodes.into_iter().map(|n| NodeRecord { state: NodeState::Active, ..n }).collect(),
        migration: None,
    };
    metadata.propose_ring_change(change).await?;
    Ok(())
}

impl LocalCluster {
    /// Starts the nodes, registers them, creates the default tenant if it is
    /// missing, and starts one coordinator.
    pub async fn start(options: LocalClusterOptions) -> Result<Self, LocalClusterError> {
        let mut options = options;
        options.coordinator = options.coordinator.embedded();
        let metadata = Arc::new(EmbeddedMetadata::open(&options.data_dir.join("metadata"))?);
        let idempotency = Arc::new(
            EmbeddedIdempotency::open(&options.data_dir.join("idempotency"), options.coordinator.idempotency.in_flight)
                .map_err(|e| LocalClusterError::Store(e.to_string()))?,
        );
        Self::start_with_stores(options, metadata, idempotency).await
    }

    /// Like [`LocalCluster::start`], over the given (e.g. PostgreSQL and
    /// Redis) stores. (`start` chooses the embedded stores explicitly.)
    pub async fn start_with_stores(
        options: LocalClusterOptions,
        metadata: Arc<dyn MetadataStore>,
        idempotency: Arc<dyn IdempotencyStore>,
    ) -> Result<Self, LocalClusterError> {
        let mut nodes = Vec::with_capacity(options.nodes);
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let in_process = options.in_process.then(Arc::default);
        for index in 0..options.nodes {
            let node = start_node(&options, index, metadata.as_ref(), any_port, None, in_process.clone()).await?;
            nodes.push(Some(node));
        }
        bootstrap_ring(metadata.as_ref()).await?;
        let listen = nodes.iter().flatten().map(|n| n.address).collect();
        let routes = vec![None; options.nodes];
        if let Some(tenant) = &options.default_tenant {
            match metadata.get_tenant(tenant).await {
                Ok(_) => {}
                Err(MetadataError::TenantNotFound(_)) => {
                    let n = DEFAULT_REPLICATION.min(options.nodes.max(1) as u32);
                    let replication = cohort_ring::ReplicationConfig::majority(n)
                        .map_err(|e| LocalClusterError::Store(e.to_string()))?;
                    let settings = cohort_coordinator::metadata::TenantSettings::new(
                        replication,
                        cohort_coordinator::metadata::DEFAULT_MAX_SIBLINGS,
                    );
                    metadata.create_tenant(tenant, settings).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let coordinator =
            Self::launch_coordinator(&options, options.listen, &metadata, &idempotency, 1, in_process.clone()).await?;
        let cluster = LocalCluster { coordinator, options, metadata, idempotency, nodes, listen, routes, in_process };
        cluster.coordinator.coordinator.topology.refresh().await?;
        Ok(cluster)
    }

    async fn launch_coordinator(
        options: &LocalClusterOptions,
        listen: SocketAddr,
        metadata: &Arc<dyn MetadataStore>,
        idempotency: &Arc<dyn IdempotencyStore>,
        number: usize,
        in_process: Option<Arc<InProcessNodes>>,
    ) -> Result<LocalCoordinator, LocalClusterError> {
        let listener = bind(listen).await?;
        let address = listener.local_addr().map_err(|e| LocalClusterError::Bind(listen, e))?;
        let mut config = options.coordinator.clone();
        config.id = format!("coordinator-{number}");
        config.listen = address.to_string();
        config.data_dir = options.data_dir.clone();
        let coordinator =
            Coordinator::with_in_process(config, metadata.clone(), idempotency.clone(), in_process).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(coordinator.clone(), listener, async move {
            let _ = stopped.await;
        }));
        Ok(LocalCoordinator { coordinator, address, stop, task })
    }

    /// `http://host:port` of the first coordinator.
    pub fn endpoint(&self) -> String {
        self.coordinator.endpoint()
    }

    /// Starts another coordinator over the same metadata and idempotency
    /// stores, on an ephemeral port.
    pub async fn add_coordinator(&self) -> Result<LocalCoordinator, LocalClusterError> {
        self.add_coordinator_over(self.metadata.clone()).await
    }

    /// Starts another coordinator, on an ephemeral port, that reaches the
    /// cluster's metadata through `metadata` (e.g. its own connection to the
    /// same database, through a fault proxy).
    pub async fn add_coordinator_over(
        &self,
        metadata: Arc<dyn MetadataStore>,
    ) -> Result<LocalCoordinator, LocalClusterError> {
        let number = next_extra_coordinator();
        Self::launch_coordinator(
            &self.options,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            &metadata,
            &self.idempotency,
            number,
            self.in_process.clone(),
        )
        .await
    }

    /// The Storage API address of node `index`, if it is running.
    pub fn node_address(&self, index: usize) -> Option<SocketAddr> {
        self.nodes.get(index).and_then(|n| n.as_ref()).map(|n| n.address)
    }

    /// The store of node `index`, if it is running (for fault injection).
    pub fn node_store(&self, index: usize) -> Option<std::sync::Arc<cohort_node::Store>> {
        self.nodes.get(index).and_then(|n| n.as_ref()).and_then(|n| n.handle.store())
    }

    /// Number of nodes, running or stopped.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Starts one more storage node (id `node-<count + 1>`) on a free port
    /// and registers it, on no ring: add it with the admin API's `AddNode`
    /// (a join). Returns its index.
    pub async fn start_extra_node(&mut self) -> Result<usize, LocalClusterError> {
        let index = self.nodes.len();
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let node =
            start_node(&self.options, index, self.metadata.as_ref(), any_port, None, self.in_process.clone()).await?;
        self.listen.push(node.address);
        self.routes.push(None);
        self.nodes.push(Some(node));
        Ok(index)
    }

    /// Stops node `index` gracefully and waits until its store is closed.
    pub async fn stop_node(&mut self, index: usize) {
        if let Some(node) = self.nodes.get_mut(index).and_then(Option::take) {
            let _ = node.stop.send(());
            let _ = node.task.await;
        }
    }

    /// Starts node `index` again on its data directory and port.
    pub async fn restart_node(&mut self, index: usize) -> Result<(), LocalClusterError> {
        self.stop_node(index).await;
        let node = start_node(
            &self.options,
            index,
            self.metadata.as_ref(),
            self.listen[index],
            self.routes[index].as_deref(),
            self.in_process.clone(),
        )
        .await?;
        self.nodes[index] = Some(node);
        self.coordinator.coordinator.topology.refresh().await?;
        Ok(())
    }

    /// The data directory of node `index` (open it only while the node is
    /// stopped).
    pub fn node_dir(&self, index: usize) -> PathBuf {
        self.options.data_dir.join(node_id(index))
    }

    /// Stops node `index`, deletes its data directory and starts it again
    /// under the same id and port, as after a disk replacement: a new,
    /// empty replica that repair fills.
    pub async fn wipe_node(&mut self, index: usize) -> Result<(), LocalClusterError> {
        self.stop_node(index).await;
        let dir = self.node_dir(index);
        std::fs::remove_dir_all(&dir).map_err(|e| LocalClusterError::Store(format!("wipe {}: {e}", dir.display())))?;
        self.restart_node(index).await
    }

    /// Registers node `index` under `address` (e.g. a proxy in front of it)
    /// instead of its own, now and after restarts. Coordinators pick the
    /// change up from metadata; the first one at once.
    pub async fn route_node_through(&mut self, index: usize, address: String) -> Result<(), LocalClusterError> {
        register(self.metadata.as_ref(), &node_id(index), address.clone()).await?;
        self.routes[index] = Some(address);
        self.coordinator.coordinator.topology.refresh().await?;
        Ok(())
    }

    /// Stops every node and the first coordinator.
    pub async fn shutdown(mut self) {
        for index in 0..self.nodes.len() {
            self.stop_node(index).await;
        }
        self.coordinator.stop().await;
    }
}

/// Distinct numbers for extra coordinators' ids within one process.
fn next_extra_coordinator() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    2 + NEXT.fetch_add(1, Ordering::Relaxed)
}
