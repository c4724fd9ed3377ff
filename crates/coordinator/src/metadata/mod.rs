//! Cluster metadata: tenants, storage nodes, the ring version, the leader
//! lease and what the leader records about the nodes.
//!
//! [`MetadataStore`] is the contract; [`embedded::EmbeddedMetadata`] keeps it
//! in one JSON file for the dev cluster and single-coordinator setups, and
//! [`postgres::PostgresMetadata`] in PostgreSQL, shared by any number of
//! coordinators.
//! Every implementation must pass the shared behaviour suite in
//! [`contract`].

pub mod contract;
pub mod embedded;
pub mod postgres;

use std::time::Duration;

use cohort_ring::{ContextKey, NodeSpec, ReplicationConfig};
use serde::{Deserialize, Serialize};
use tonic::async_trait;

/// Siblings a key may have unless the tenant says otherwise (Riak's
/// `siblings_max` default).
pub const DEFAULT_MAX_SIBLINGS: u32 = 100;
/// The highest sibling cap a tenant may set.
pub const MAX_MAX_SIBLINGS: u32 = 10_000;

/// A tenant: its replication settings and optimistic-locking version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// The tenant id.
    pub id: String,
    /// N, R and W.
    pub replication: ReplicationConfig,
    /// Most siblings a key may have; a write that would add one more is
    /// refused until the key is resolved.
    pub max_siblings: u32,
    /// Starts at 1; every update bumps it.
    pub version: u64,
}

/// A registered storage node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Stable node id.
    pub id: String,
    /// `host:port` of its Storage gRPC API.
    pub address: String,
    /// Failure zone, if zones are used.
    pub zone: Option<String>,
    /// Virtual nodes on the ring.
    pub vnodes: u32,
    /// Lifecycle state; `active` nodes are on the ring.
    pub state: NodeState,
}

impl NodeRecord {
    /// The ring's view of this node.
    pub fn spec(&self) -> NodeSpec {
        NodeSpec { id: self.id.clone(), zone: self.zone.clone(), vnodes: self.vnodes }
    }
}

/// Lifecycle of a storage node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// On the ring, serving its ranges.
    Active,
}

impl NodeState {
    /// The state's name as shown to operators.
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeState::Active => "active",
        }
    }
}

/// Why a metadata operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// No such tenant.
    #[error("tenant {0:?} not found")]
    TenantNotFound(String),
    /// The tenant exists already.
    #[error("tenant {0:?} already exists")]
    TenantExists(String),
    /// Optimistic locking failed.
    #[error("tenant {id:?} is at version {actual}, not the expected {expected}")]
    VersionConflict {
        /// The tenant.
        id: String,
        /// The version the caller expected.
        expected: u64,
        /// The version stored.
        actual: u64,
    },
    /// A leader-only write carried a generation that no longer holds a live
    /// leader lease: its writer was deposed (or its lease lapsed) and must
    /// stop. Nothing was written.
    #[error("leader generation {generation} is fenced off: the lease is at generation {current} or has lapsed")]
    Fenced {
        /// The generation the writer led under.
        generation: u64,
        /// The lease's generation when the write was refused.
        current: u64,
    },
    /// The store could not be read or written.
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
}

/// The leader lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The coordinator holding (or last holding) the lease.
    pub holder: String,
    /// Increases every time the lease changes hands or lapses; the fencing
    /// token of leader-only work.
    pub generation: u64,
    /// Whether the lease had not expired when it was read.
    pub live: bool,
}

/// One probe of a storage node by the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeProbe {
    /// The node's id.
    pub node: String,
    /// Whether it answered within the node timeout.
    pub up: bool,
}

/// A node's reachability as last recorded by a leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHealth {
    /// The node's id.
    pub node: String,
    /// Whether it answered the last probe.
    pub up: bool,
    /// When the probe was recorded, in milliseconds since the Unix epoch on
    /// the store's clock.
    pub checked_at_ms: u64,
    /// The leader generation that recorded it.
    pub generation: u64,
}

/// A change made through any coordinator, announced to the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataChange {
    /// The node set changed; rebuild the ring.
    Ring,
    /// A tenant changed; drop it from caches.
    Tenant(String),
}

/// Where tenants, nodes, the ring version, the leader lease and the
/// leader's record of node health live.
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// Creates a tenant at version 1.
    async fn create_tenant(
        &self,
        id: &str,
        replication: ReplicationConfig,
        max_siblings: u32,
    ) -> Result<Tenant, MetadataError>;
    /// Reads a tenant.
    async fn get_tenant(&self, id: &str) -> Result<Tenant, MetadataError>;
    /// Lists every tenant, ordered by id.
    async fn list_tenants(&self) -> Result<Vec<Tenant>, MetadataError>;
    /// Replaces a tenant's settings if it is still at `expected_version`;
    /// bumps the version.
    async fn update_tenant(
        &self,
        id: &str,
        expected_version: u64,
        replication: ReplicationConfig,
        max_siblings: u32,
    ) -> Result<Tenant, MetadataError>;
    /// Registers a node or replaces the record with the same id; bumps the
    /// ring version when placement (zone, vnodes, state) or address changed.
    async fn upsert_node(&self, node: NodeRecord) -> Result<NodeRecord, MetadataError>;
    /// Lists every node, ordered by id.
    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, MetadataError>;
    /// The ring version: changes whenever the node set changes.
    async fn ring_version(&self) -> Result<u64, MetadataError>;

    /// Takes or renews the leader lease for `holder` for `ttl`. Returns the
    /// generation when `holder` holds the lease afterwards, `None` when
    /// another holder's lease is still live. The generation stays the same
    /// while one holder renews in time and increases otherwise.
    async fn acquire_lease(&self, holder: &str, ttl: Duration) -> Result<Option<u64>, MetadataError>;
    /// Gives the lease up at once if `holder` has it, so another coordinator
    /// can take over without waiting for it to expire.
    async fn release_lease(&self, holder: &str) -> Result<(), MetadataError>;
    /// The lease as stored, if anyone ever held it.
    async fn current_lease(&self) -> Result<Option<Lease>, MetadataError>;

    /// The secrets that seal causal contexts, oldest first; the first one is
    /// created (once, whoever asks first) when there is none.
    async fn context_keys(&self) -> Result<Vec<ContextKey>, MetadataError>;
    /// Adds a new secret, which seals from now on; older ones still open
    /// the tokens they sealed. Returns the new key.
    async fn rotate_context_key(&self) -> Result<ContextKey, MetadataError>;
    /// Records the leader's probes of storage nodes, fenced by `generation`:
    /// the write applies, atomically with the check, only while the lease is
    /// live at exactly that generation; otherwise it changes nothing and
    /// fails with [`MetadataError::Fenced`]. Probes of unregistered nodes are
    /// ignored.
    async fn record_node_health(&self, generation: u64, probes: &[NodeProbe]) -> Result<(), MetadataError>;
    /// The last recorded health of every node that has one, ordered by id.
    async fn node_health(&self) -> Result<Vec<NodeHealth>, MetadataError>;

    /// Changes made by other coordinators, when the store can announce them
    /// (PostgreSQL LISTEN/NOTIFY). `None` means: poll.
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<MetadataChange>> {
        None
    }
}
