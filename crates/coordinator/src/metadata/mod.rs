//! Cluster metadata: tenants, storage nodes, the ring history (its live
//! versions), membership migrations and their checkpoints, the leader lease
//! and what the leader records about the nodes.
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
    /// Whether a write may count acknowledgements of fallback nodes holding
    /// it for replicas believed down (a sloppy quorum).
    pub sloppy_quorum: bool,
    /// Starts at 1; every update bumps it.
    pub version: u64,
}

/// The settings of a tenant a create or an update writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantSettings {
    /// N, R and W.
    pub replication: ReplicationConfig,
    /// The sibling cap.
    pub max_siblings: u32,
    /// Whether fallback acknowledgements count toward W.
    pub sloppy_quorum: bool,
}

impl TenantSettings {
    /// Strict-quorum settings.
    pub fn new(replication: ReplicationConfig, max_siblings: u32) -> Self {
        TenantSettings { replication, max_siblings, sloppy_quorum: false }
    }

    /// The tenant `id` at `version` with these settings.
    pub fn tenant(&self, id: &str, version: u64) -> Tenant {
        Tenant {
            id: id.to_string(),
            replication: self.replication,
            max_siblings: self.max_siblings,
            sloppy_quorum: self.sloppy_quorum,
            version,
        }
    }
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
    /// In the newest ring version, receiving its ranges from their old
    /// owners; not yet in every live version.
    Joining,
    /// In every live ring version, serving its ranges.
    Active,
    /// Being drained: absent from the newest ring version, its ranges moving
    /// to their new owners.
    Leaving,
    /// In no live ring version; holds nothing the cluster needs.
    Removed,
}

impl NodeState {
    /// The state's name as shown to operators and stored.
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeState::Joining => "joining",
            NodeState::Active => "active",
            NodeState::Leaving => "leaving",
            NodeState::Removed => "removed",
        }
    }

    /// The state named `name`, as [`NodeState::as_str`] writes it.
    pub fn parse(name: &str) -> Option<NodeState> {
        [NodeState::Joining, NodeState::Active, NodeState::Leaving, NodeState::Removed]
            .into_iter()
            .find(|state| state.as_str() == name)
    }
}

/// One version of the ring: the nodes it places replicas on. Versions are
/// numbered from 1, each change appending the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingVersion {
    /// The version number.
    pub version: u64,
    /// Its nodes, ordered by id.
    pub nodes: Vec<NodeSpec>,
}

/// The ring versions in use: the oldest live one to the newest. More than
/// one while a membership change moves data: writes then need a quorum in
/// every live version, reads a quorum in each.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RingHistory {
    /// Live versions, oldest first; empty before the first node joined.
    pub live: Vec<RingVersion>,
}

impl RingHistory {
    /// The newest version's number (0 before the first).
    pub fn current(&self) -> u64 {
        self.live.last().map_or(0, |v| v.version)
    }
}

/// What a membership change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationKind {
    /// A node joins: it gains ranges, copied from their old owners.
    Join,
    /// A node drains: its ranges are copied to their new owners, then it
    /// holds nothing.
    Leave,
    /// A node gone for good is removed: its ranges are rebuilt on their new
    /// owners from the surviving replicas.
    RemoveDead,
}

impl MigrationKind {
    /// The kind's name as shown and stored.
    pub fn as_str(&self) -> &'static str {
        match self {
            MigrationKind::Join => "join",
            MigrationKind::Leave => "leave",
            MigrationKind::RemoveDead => "remove_dead",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<MigrationKind> {
        [MigrationKind::Join, MigrationKind::Leave, MigrationKind::RemoveDead]
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }
}

/// Where a migration stands as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationState {
    /// Recorded, not yet picked up by a leader.
    Pending,
    /// A leader is driving it.
    InProgress,
    /// Every range moved, the old version retired and cleaned up.
    Completed,
    /// Stopped by an error it cannot get past; `error` says which.
    Failed,
    /// Stopped at an operator's request; the ring is back where it was.
    Cancelled,
}

impl MigrationState {
    /// The state's name as shown and stored.
    pub fn as_str(&self) -> &'static str {
        match self {
            MigrationState::Pending => "pending",
            MigrationState::InProgress => "in_progress",
            MigrationState::Completed => "completed",
            MigrationState::Failed => "failed",
            MigrationState::Cancelled => "cancelled",
        }
    }

    /// The state named `name`.
    pub fn parse(name: &str) -> Option<MigrationState> {
        [
            MigrationState::Pending,
            MigrationState::InProgress,
            MigrationState::Completed,
            MigrationState::Failed,
            MigrationState::Cancelled,
        ]
        .into_iter()
        .find(|state| state.as_str() == name)
    }

    /// Whether the migration still runs (pending or in progress).
    pub fn is_running(&self) -> bool {
        matches!(self, MigrationState::Pending | MigrationState::InProgress)
    }
}

/// The step a migration is at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationPhase {
    /// Both versions are live; every node is being told to refuse requests
    /// routed by an older ring.
    DualWrite,
    /// The moving ranges are being copied to their new owners.
    DataCopy,
    /// Every range is copied; the old version is being retired.
    Cutover,
    /// The old version is retired; nodes drop the ranges they no longer own.
    Cleanup,
    /// Nothing is left to do.
    Done,
}

impl MigrationPhase {
    /// The phase's name as shown and stored.
    pub fn as_str(&self) -> &'static str {
        match self {
            MigrationPhase::DualWrite => "dual_write",
            MigrationPhase::DataCopy => "data_copy",
            MigrationPhase::Cutover => "cutover",
            MigrationPhase::Cleanup => "cleanup",
            MigrationPhase::Done => "done",
        }
    }

    /// The phase named `name`.
    pub fn parse(name: &str) -> Option<MigrationPhase> {
        [
            MigrationPhase::DualWrite,
            MigrationPhase::DataCopy,
            MigrationPhase::Cutover,
            MigrationPhase::Cleanup,
            MigrationPhase::Done,
        ]
        .into_iter()
        .find(|phase| phase.as_str() == name)
    }
}

/// A membership change: one ring version replacing another, and the data
/// moved between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// Increasing id, from 1.
    pub id: u64,
    /// What the change does.
    pub kind: MigrationKind,
    /// The node joining, leaving or removed.
    pub node_id: String,
    /// Where it stands.
    pub state: MigrationState,
    /// The step it is at.
    pub phase: MigrationPhase,
    /// The ring version it moves data from.
    pub from_version: u64,
    /// The ring version it moves data to.
    pub to_version: u64,
    /// Token ranges to copy, and how many are copied.
    pub ranges_total: u64,
    /// Ranges copied and checkpointed.
    pub ranges_done: u64,
    /// Keys to copy, as counted on the sources when the copy started.
    pub keys_total: u64,
    /// Keys copied so far.
    pub keys_copied: u64,
    /// Bytes of sibling sets copied so far.
    pub bytes_copied: u64,
    /// Why it failed, or what it last retried on.
    pub error: Option<String>,
    /// An operator asked to cancel it.
    pub cancel_requested: bool,
    /// When it was recorded, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// When it last changed, in milliseconds since the Unix epoch.
    pub updated_at_ms: u64,
}

/// Per token range progress of a migration's copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// First token of the range.
    pub range_start: u64,
    /// Last token of the range (inclusive).
    pub range_end: u64,
    /// Keys copied from it.
    pub keys_copied: u64,
    /// Whether every source of the range has been copied.
    pub done: bool,
}

/// A proposed ring change: the next ring version's nodes, built by the
/// caller from the version it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingChange {
    /// The newest version the caller planned from; the change applies only
    /// if it is still the newest.
    pub expected_version: u64,
    /// The new version's nodes.
    pub nodes: Vec<NodeSpec>,
    /// Node records to write with it (the joining node, new states).
    pub records: Vec<NodeRecord>,
    /// The migration that moves data to the new version. `None` only when
    /// no data can exist yet (the first nodes of an empty ring): the new
    /// version is then the only live one at once.
    pub migration: Option<(MigrationKind, String)>,
}

/// A leader's step of a running migration: the ring versions it retires or
/// appends and the node states it sets, all in one fenced write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingStep {
    /// A version to append (a cancelled migration's way back to the nodes it
    /// started from), given by its nodes.
    pub append: Option<Vec<NodeSpec>>,
    /// The new oldest live version (unchanged when equal to the current one).
    pub oldest_live: u64,
    /// Node states to set.
    pub node_states: Vec<(String, NodeState)>,
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
    /// A ring change was planned from an older ring version than the newest.
    #[error("the ring is at version {current}, not the expected {expected}: plan the change again")]
    RingConflict {
        /// The version the caller planned from.
        expected: u64,
        /// The newest version stored.
        current: u64,
    },
    /// Another membership change is still running; one runs at a time.
    #[error(
        "migration {id} ({kind} of node {node:?}) is still {state}; one change runs at a time: wait for it with `cohort admin migration wait {id}`, or cancel it"
    )]
    MigrationRunning {
        /// The running migration.
        id: u64,
        /// Its kind.
        kind: &'static str,
        /// Its node.
        node: String,
        /// Its state.
        state: &'static str,
    },
    /// No migration has this id.
    #[error("migration {0} not found")]
    MigrationNotFound(u64),
    /// The migration has ended and can no longer change.
    #[error("migration {id} has already ended ({state})")]
    MigrationEnded {
        /// The migration.
        id: u64,
        /// How it ended.
        state: &'static str,
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
    /// The ring history, the live versions, or a node's address or state
    /// changed; rebuild the placement.
    Ring,
    /// A migration changed (progress, phase, a cancel request).
    Migration(u64),
    /// A tenant changed; drop it from caches.
    Tenant(String),
}

/// Where tenants, nodes, the ring version, the leader lease and the
/// leader's record of node health live.
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// Creates a tenant at version 1.
    async fn create_tenant(&self, id: &str, settings: TenantSettings) -> Result<Tenant, MetadataError>;
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
        settings: TenantSettings,
    ) -> Result<Tenant, MetadataError>;
    /// Registers a node or replaces the record with the same id, without
    /// changing any ring version (a node moved to a new address); bumps the
    /// topology stamp when the record changed.
    async fn upsert_node(&self, node: NodeRecord) -> Result<NodeRecord, MetadataError>;
    /// Lists every node, ordered by id.
    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, MetadataError>;
    /// The newest ring version's number (0 before the first).
    async fn ring_version(&self) -> Result<u64, MetadataError>;
    /// A counter that moves whenever anything placement is built from
    /// changes: ring versions, the live range, node records. Cheap to poll.
    async fn topology_stamp(&self) -> Result<u64, MetadataError>;
    /// The live ring versions, oldest first.
    async fn ring_history(&self) -> Result<RingHistory, MetadataError>;
    /// Ring version `version`, live or retired; `None` if it never existed.
    /// (This default finds live versions only; stores keep every version
    /// and override it.)
    async fn ring_at(&self, version: u64) -> Result<Option<RingVersion>, MetadataError> {
        Ok(self.ring_history().await?.live.into_iter().find(|v| v.version == version))
    }
    /// Appends ring version `expected_version + 1` with `change.nodes` and
    /// writes `change.records`, atomically, and records the migration that
    /// moves data to it (state `pending`, phase `dual_write`). Refused
    /// with [`MetadataError::MigrationRunning`] while another migration
    /// runs, and with [`MetadataError::RingConflict`] when the newest
    /// version is no longer `expected_version`: of two racing changes
    /// exactly one applies. Without a migration the new version is at once
    /// the only live one.
    async fn propose_ring_change(&self, change: RingChange) -> Result<(u64, Option<Migration>), MetadataError>;
    /// Every migration, newest first.
    async fn migrations(&self) -> Result<Vec<Migration>, MetadataError>;
    /// One migration.
    async fn migration(&self, id: u64) -> Result<Migration, MetadataError>;
    /// Asks a running migration to stop; its leader undoes it. Refused with
    /// [`MetadataError::MigrationEnded`] once it ended.
    async fn request_cancel(&self, id: u64) -> Result<Migration, MetadataError>;
    /// A leader's write of a migration's phase, state, progress and error,
    /// fenced by `generation` like [`MetadataStore::record_node_health`].
    async fn update_migration(&self, generation: u64, migration: &Migration) -> Result<(), MetadataError>;
    /// A leader's step of `migration` (retiring or appending ring versions,
    /// node states) written together with the migration itself, fenced by
    /// `generation`.
    async fn step_ring(&self, generation: u64, migration: &Migration, step: RingStep) -> Result<(), MetadataError>;
    /// The copy checkpoints of a migration, ordered by range start.
    async fn checkpoints(&self, migration: u64) -> Result<Vec<Checkpoint>, MetadataError>;
    /// Writes (inserts or replaces by range start) checkpoints of a
    /// migration, fenced by `generation`.
    async fn save_checkpoints(
        &self,
        generation: u64,
        migration: u64,
        checkpoints: &[Checkpoint],
    ) -> Result<(), MetadataError>;

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
