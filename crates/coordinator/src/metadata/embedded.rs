//! Metadata in one JSON file, rewritten atomically on every change.
//!
//! Each change is written to a temporary file, synced, renamed over the old
//! file and the directory synced, and only then applied in memory — so what a
//! caller was told succeeded survives a crash, and a failed write changes
//! nothing. Leader-only writes check the lease under the same lock, so they
//! are fenced by its generation as in PostgreSQL.
//!
//! Format 2 keeps the ring history (every ring version with its nodes, and
//! the oldest live one), the membership migrations and their copy
//! checkpoints. A format 1 file (one ring version number, bumped on every
//! node change, and only active nodes) is upgraded on load: its active nodes
//! become the one live ring version, numbered as the file's ring version
//! (at least 1).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cohort_ring::{ContextKey, NodeSpec, ReplicationConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tonic::async_trait;

use super::{
    Checkpoint, DEFAULT_MAX_SIBLINGS, Lease, MetadataError, MetadataStore, Migration, MigrationKind, MigrationPhase,
    MigrationState, NodeHealth, NodeProbe, NodeRecord, NodeState, RingChange, RingHistory, RingStep, RingVersion,
    Tenant, TenantSettings,
};

/// Current file format; format 1 (before ring versions) is upgraded on load.
const FORMAT: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TenantRow {
    id: String,
    replication: u32,
    read_quorum: u32,
    write_quorum: u32,
    #[serde(default = "default_max_siblings")]
    max_siblings: u32,
    #[serde(default)]
    sloppy_quorum: bool,
    version: u64,
}

fn default_max_siblings() -> u32 {
    DEFAULT_MAX_SIBLINGS
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ContextKeyRow {
    id: u32,
    /// 32 bytes, hex.
    secret: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LeaseRow {
    holder: Option<String>,
    generation: u64,
    /// Milliseconds since the Unix epoch.
    expires_at_ms: u64,
}

/// A ring version's node, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SpecRow {
    id: String,
    zone: Option<String>,
    vnodes: u32,
}

impl From<&NodeSpec> for SpecRow {
    fn from(spec: &NodeSpec) -> Self {
        SpecRow { id: spec.id.clone(), zone: spec.zone.clone(), vnodes: spec.vnodes }
    }
}

impl From<&SpecRow> for NodeSpec {
    fn from(row: &SpecRow) -> Self {
        NodeSpec { id: row.id.clone(), zone: row.zone.clone(), vnodes: row.vnodes }
    }
}

/// A ring version's nodes as stored: ordered by id.
fn spec_rows(nodes: &[NodeSpec]) -> Vec<SpecRow> {
    let mut rows: Vec<SpecRow> = nodes.iter().map(SpecRow::from).collect();
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    rows
}

/// A migration as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MigrationRow {
    id: u64,
    kind: MigrationKind,
    node_id: String,
    state: MigrationState,
    phase: MigrationPhase,
    from_version: u64,
    to_version: u64,
    ranges_total: u64,
    ranges_done: u64,
    keys_total: u64,
    keys_copied: u64,
    bytes_copied: u64,
    error: Option<String>,
    cancel_requested: bool,
    created_at_ms: u64,
    updated_at_ms: u64,
}

impl From<&Migration> for MigrationRow {
    fn from(m: &Migration) -> Self {
        MigrationRow {
            id: m.id,
            kind: m.kind,
            node_id: m.node_id.clone(),
            state: m.state,
            phase: m.phase,
            from_version: m.from_version,
            to_version: m.to_version,
            ranges_total: m.ranges_total,
            ranges_done: m.ranges_done,
            keys_total: m.keys_total,
            keys_copied: m.keys_copied,
            bytes_copied: m.bytes_copied,
            error: m.error.clone(),
            cancel_requested: m.cancel_requested,
            created_at_ms: m.created_at_ms,
            updated_at_ms: m.updated_at_ms,
        }
    }
}

impl From<&MigrationRow> for Migration {
    fn from(row: &MigrationRow) -> Self {
        Migration {
            id: row.id,
            kind: row.kind,
            node_id: row.node_id.clone(),
            state: row.state,
            phase: row.phase,
            from_version: row.from_version,
            to_version: row.to_version,
            ranges_total: row.ranges_total,
            ranges_done: row.ranges_done,
            keys_total: row.keys_total,
            keys_copied: row.keys_copied,
            bytes_copied: row.bytes_copied,
            error: row.error.clone(),
            cancel_requested: row.cancel_requested,
            created_at_ms: row.created_at_ms,
            updated_at_ms: row.updated_at_ms,
        }
    }
}

/// A copy checkpoint as stored, keyed by its range start.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointRow {
    range_end: u64,
    keys_copied: u64,
    done: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    format: u32,
    /// Format 1's ring version (bumped on every node change): read only to
    /// number the ring version synthesised when such a file is upgraded.
    #[serde(default, rename = "ring_version", skip_serializing)]
    legacy_ring_version: u64,
    tenants: BTreeMap<String, TenantRow>,
    nodes: BTreeMap<String, NodeRecord>,
    #[serde(default)]
    lease: LeaseRow,
    #[serde(default)]
    context_keys: Vec<ContextKeyRow>,
    /// Every ring version, by number (JSON object keys are its decimal
    /// form); the live ones are `oldest_live..=` the newest.
    #[serde(default)]
    ring_versions: BTreeMap<u64, Vec<SpecRow>>,
    /// The oldest live ring version (0 before the first).
    #[serde(default)]
    oldest_live: u64,
    /// The topology stamp.
    #[serde(default)]
    stamp: u64,
    /// Membership migrations, by id.
    #[serde(default)]
    migrations: BTreeMap<u64, MigrationRow>,
    /// Copy checkpoints, by migration id, then range start.
    #[serde(default)]
    checkpoints: BTreeMap<u64, BTreeMap<u64, CheckpointRow>>,
    /// The leader's last probe of each node, by node id. Kept in memory
    /// only: it is re-probed within seconds of a restart, and writing it to
    /// the file would cost a sync every probe round.
    #[serde(skip)]
    health: BTreeMap<String, NodeHealth>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl State {
    /// Upgrades a format 1 state: its active nodes become the one live ring
    /// version, numbered as its ring version (at least 1).
    fn upgrade_from_1(&mut self) {
        if self.ring_versions.is_empty() {
            let active: Vec<SpecRow> = self
                .nodes
                .values()
                .filter(|node| node.state == NodeState::Active)
                .map(|node| SpecRow::from(&node.spec()))
                .collect();
            if !active.is_empty() {
                let version = self.legacy_ring_version.max(1);
                self.ring_versions.insert(version, active);
                self.oldest_live = version;
            }
        }
        // The stamp never moves backwards past what pollers saw as the ring
        // version.
        self.stamp = self.stamp.max(self.legacy_ring_version);
        self.legacy_ring_version = 0;
        self.format = FORMAT;
    }

    /// The newest ring version's number (0 before the first).
    fn current(&self) -> u64 {
        self.ring_versions.keys().next_back().copied().unwrap_or(0)
    }

    fn history(&self) -> RingHistory {
        let live = self
            .ring_versions
            .range(self.oldest_live..)
            .map(|(&version, nodes)| RingVersion { version, nodes: nodes.iter().map(NodeSpec::from).collect() })
            .collect();
        RingHistory { live }
    }

    /// Refuses a leader-only write unless the lease is live at exactly
    /// `generation`.
    fn fence(&self, generation: u64) -> Result<(), MetadataError> {
        let lease = &self.lease;
        if lease.generation != generation || lease.holder.is_none() || now_ms() >= lease.expires_at_ms {
            return Err(MetadataError::Fenced { generation, current: lease.generation });
        }
        Ok(())
    }

    /// Writes a leader's view of a migration: state, phase, progress and
    /// error; a stored cancel request is kept.
    fn write_migration(&mut self, m: &Migration) -> Result<(), MetadataError> {
        let row = self.migrations.get_mut(&m.id).ok_or(MetadataError::MigrationNotFound(m.id))?;
        row.state = m.state;
        row.phase = m.phase;
        row.ranges_total = m.ranges_total;
        row.ranges_done = m.ranges_done;
        row.keys_total = m.keys_total;
        row.keys_copied = m.keys_copied;
        row.bytes_copied = m.bytes_copied;
        row.error = m.error.clone();
        row.cancel_requested |= m.cancel_requested;
        row.updated_at_ms = now_ms();
        Ok(())
    }
}

/// The embedded, file-backed metadata store.
pub struct EmbeddedMetadata {
    path: PathBuf,
    /// A tokio mutex: held across the file write so changes apply in order.
    state: Mutex<State>,
}

fn row_to_tenant(row: &TenantRow) -> Result<Tenant, MetadataError> {
    let replication = ReplicationConfig::new(row.replication, row.read_quorum, row.write_quorum)
        .map_err(|e| MetadataError::Unavailable(format!("stored tenant {:?} is invalid: {e}", row.id)))?;
    Ok(Tenant {
        id: row.id.clone(),
        replication,
        max_siblings: row.max_siblings,
        sloppy_quorum: row.sloppy_quorum,
        version: row.version,
    })
}

fn tenant_to_row(tenant: &Tenant) -> TenantRow {
    TenantRow {
        id: tenant.id.clone(),
        replication: tenant.replication.n().into(),
        read_quorum: tenant.replication.r().into(),
        write_quorum: tenant.replication.w().into(),
        max_siblings: tenant.max_siblings,
        sloppy_quorum: tenant.sloppy_quorum,
        version: tenant.version,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn row_to_key(row: &ContextKeyRow) -> Result<ContextKey, MetadataError> {
    let bad = || MetadataError::Unavailable(format!("stored context key {} is unreadable", row.id));
    if row.secret.len() != 64 {
        return Err(bad());
    }
    let mut secret = [0u8; 32];
    for (i, byte) in secret.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&row.secret[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(ContextKey { id: row.id, secret })
}

impl EmbeddedMetadata {
    /// Opens the store in `dir` (file `metadata.json`), creating it if needed.
    pub fn open(dir: &Path) -> Result<Self, MetadataError> {
        std::fs::create_dir_all(dir).map_err(|e| MetadataError::Unavailable(format!("{}: {e}", dir.display())))?;
        let path = dir.join("metadata.json");
        let state = match std::fs::read(&path) {
            Ok(bytes) => {
                let mut state: State = serde_json::from_slice(&bytes)
                    .map_err(|e| MetadataError::Unavailable(format!("{} is unreadable: {e}", path.display())))?;
                match state.format {
                    FORMAT => {}
                    1 => {
                        state.upgrade_from_1();
                        Self::persist(&path, &state)?;
                    }
                    other => {
                        return Err(MetadataError::Unavailable(format!(
                            "{} has format {other}, this build reads 1 and {FORMAT}",
                            path.display(),
                        )));
                    }
                }
                state
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State { format: FORMAT, ..State::default() },
            Err(e) => return Err(MetadataError::Unavailable(format!("{}: {e}", path.display()))),
        };
        Ok(EmbeddedMetadata { path, state: Mutex::new(state) })
    }

    /// Writes `state` durably in place of the current file at `path`.
    fn persist(path: &Path, state: &State) -> Result<(), MetadataError> {
        let fail = |e: std::io::Error| MetadataError::Unavailable(format!("writing {}: {e}", path.display()));
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| MetadataError::Unavailable(e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&tmp).map_err(fail)?;
        file.write_all(&bytes).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, path).map_err(fail)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(fail)?;
        }
        Ok(())
    }

    /// Applies `change` to a copy of the state, persists it, then installs it.
    async fn change<T>(&self, change: impl FnOnce(&mut State) -> Result<T, MetadataError>) -> Result<T, MetadataError> {
        let mut guard = self.state.lock().await;
        let mut next = guard.clone();
        let out = change(&mut next)?;
        // On a blocking thread, so that any runtime (current-thread ones
        // included) can drive it.
        let (path, to_write) = (self.path.clone(), next.clone());
        tokio::task::spawn_blocking(move || Self::persist(&path, &to_write))
            .await
            .map_err(|e| MetadataError::Unavailable(format!("metadata write task failed: {e}")))??;
        *guard = next;
        Ok(out)
    }
}

#[async_trait]
impl MetadataStore for EmbeddedMetadata {
    async fn create_tenant(&self, id: &str, settings: TenantSettings) -> Result<Tenant, MetadataError> {
        self.change(|state| {
            if state.tenants.contains_key(id) {
                return Err(MetadataError::TenantExists(id.to_string()));
            }
            let tenant = settings.tenant(id, 1);
            state.tenants.insert(id.to_string(), tenant_to_row(&tenant));
            Ok(tenant)
        })
        .await
    }

    async fn get_tenant(&self, id: &str) -> Result<Tenant, MetadataError> {
        let state = self.state.lock().await;
        state.tenants.get(id).map(row_to_tenant).unwrap_or_else(|| Err(MetadataError::TenantNotFound(id.to_string())))
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>, MetadataError> {
        self.state.lock().await.tenants.values().map(row_to_tenant).collect()
    }

    async fn update_tenant(
        &self,
        id: &str,
        expected_version: u64,
        settings: TenantSettings,
    ) -> Result<Tenant, MetadataError> {
        self.change(|state| {
            let row = state.tenants.get_mut(id).ok_or_else(|| MetadataError::TenantNotFound(id.to_string()))?;
            if row.version != expected_version {
                return Err(MetadataError::VersionConflict {
                    id: id.to_string(),
                    expected: expected_version,
                    actual: row.version,
                });
            }
            let tenant = settings.tenant(id, row.version + 1);
            *row = tenant_to_row(&tenant);
            Ok(tenant)
        })
        .await
    }

    async fn upsert_node(&self, node: NodeRecord) -> Result<NodeRecord, MetadataError> {
        self.change(|state| {
            if state.nodes.get(&node.id) != Some(&node) {
                state.nodes.insert(node.id.clone(), node.clone());
                state.stamp += 1;
            }
            Ok(node)
        })
        .await
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, MetadataError> {
        Ok(self.state.lock().await.nodes.values().cloned().collect())
    }

    async fn ring_version(&self) -> Result<u64, MetadataError> {
        Ok(self.state.lock().await.current())
    }

    async fn topology_stamp(&self) -> Result<u64, MetadataError> {
        Ok(self.state.lock().await.stamp)
    }

    async fn ring_history(&self) -> Result<RingHistory, MetadataError> {
        Ok(self.state.lock().await.history())
    }

    async fn ring_at(&self, version: u64) -> Result<Option<RingVersion>, MetadataError> {
        let state = self.state.lock().await;
        Ok(state
            .ring_versions
            .get(&version)
            .map(|nodes| RingVersion { version, nodes: nodes.iter().map(NodeSpec::from).collect() }))
    }

    async fn propose_ring_change(&self, change: RingChange) -> Result<(u64, Option<Migration>), MetadataError> {
        self.change(|state| {
            if let Some(running) = state.migrations.values().find(|m| m.state.is_running()) {
                return Err(MetadataError::MigrationRunning {
                    id: running.id,
                    kind: running.kind.as_str(),
                    node: running.node_id.clone(),
                    state: running.state.as_str(),
                });
            }
            let current = state.current();
            if current != change.expected_version {
                return Err(MetadataError::RingConflict { expected: change.expected_version, current });
            }
            let version = current + 1;
            state.ring_versions.insert(version, spec_rows(&change.nodes));
            for record in change.records {
                state.nodes.insert(record.id.clone(), record);
            }
            state.stamp += 1;
            let Some((kind, node_id)) = change.migration else {
                state.oldest_live = version;
                return Ok((version, None));
            };
            let now = now_ms();
            let migration = Migration {
                id: state.migrations.keys().next_back().map_or(1, |id| id + 1),
                kind,
                node_id,
                state: MigrationState::Pending,
                phase: MigrationPhase::DualWrite,
                from_version: current,
                to_version: version,
                ranges_total: 0,
                ranges_done: 0,
                keys_total: 0,
                keys_copied: 0,
                bytes_copied: 0,
                error: None,
                cancel_requested: false,
                created_at_ms: now,
                updated_at_ms: now,
            };
            state.migrations.insert(migration.id, MigrationRow::from(&migration));
            Ok((version, Some(migration)))
        })
        .await
    }

    async fn migrations(&self) -> Result<Vec<Migration>, MetadataError> {
        Ok(self.state.lock().await.migrations.values().rev().map(Migration::from).collect())
    }

    async fn migration(&self, id: u64) -> Result<Migration, MetadataError> {
        self.state.lock().await.migrations.get(&id).map(Migration::from).ok_or(MetadataError::MigrationNotFound(id))
    }

    async fn request_cancel(&self, id: u64) -> Result<Migration, MetadataError> {
        self.change(|state| {
            let row = state.migrations.get_mut(&id).ok_or(MetadataError::MigrationNotFound(id))?;
            if !row.state.is_running() {
                return Err(MetadataError::MigrationEnded { id, state: row.state.as_str() });
            }
            row.cancel_requested = true;
            row.updated_at_ms = now_ms();
            Ok(Migration::from(&*row))
        })
        .await
    }

    async fn update_migration(&self, generation: u64, migration: &Migration) -> Result<(), MetadataError> {
        self.change(|state| {
            state.fence(generation)?;
            state.write_migration(migration)
        })
        .await
    }

    async fn step_ring(&self, generation: u64, migration: &Migration, step: RingStep) -> Result<(), MetadataError> {
        self.change(|state| {
            state.fence(generation)?;
            let oldest = state.oldest_live;
            if let Some(nodes) = &step.append {
                let version = state.current() + 1;
                state.ring_versions.insert(version, spec_rows(nodes));
            }
            let current = state.current();
            if !(oldest..=current).contains(&step.oldest_live) {
                return Err(MetadataError::Unavailable(format!(
                    "ring step refused: oldest live version {} is outside the live versions {oldest}..={current}",
                    step.oldest_live
                )));
            }
            state.oldest_live = step.oldest_live;
            for (id, node_state) in &step.node_states {
                if let Some(node) = state.nodes.get_mut(id) {
                    node.state = *node_state;
                }
            }
            state.write_migration(migration)?;
            state.stamp += 1;
            Ok(())
        })
        .await
    }

    async fn checkpoints(&self, migration: u64) -> Result<Vec<Checkpoint>, MetadataError> {
        let state = self.state.lock().await;
        let Some(rows) = state.checkpoints.get(&migration) else { return Ok(Vec::new()) };
        Ok(rows
            .iter()
            .map(|(&range_start, row)| Checkpoint {
                range_start,
                range_end: row.range_end,
                keys_copied: row.keys_copied,
                done: row.done,
            })
            .collect())
    }

    async fn save_checkpoints(
        &self,
        generation: u64,
        migration: u64,
        checkpoints: &[Checkpoint],
    ) -> Result<(), MetadataError> {
        self.change(|state| {
            state.fence(generation)?;
            if !state.migrations.contains_key(&migration) {
                return Err(MetadataError::MigrationNotFound(migration));
            }
            let rows = state.checkpoints.entry(migration).or_default();
            for checkpoint in checkpoints {
                let row = CheckpointRow {
                    range_end: checkpoint.range_end,
                    keys_copied: checkpoint.keys_copied,
                    done: checkpoint.done,
                };
                rows.insert(checkpoint.range_start, row);
            }
            Ok(())
        })
        .await
    }

    async fn acquire_lease(&self, holder: &str, ttl: Duration) -> Result<Option<u64>, MetadataError> {
        self.change(|state| {
            let now = now_ms();
            let lease = &mut state.lease;
            let mine = lease.holder.as_deref() == Some(holder);
            let live = now < lease.expires_at_ms;
            if live && !mine && lease.holder.is_some() {
                return Ok(None);
            }
            if !(mine && live) {
                lease.generation += 1;
            }
            lease.holder = Some(holder.to_string());
            lease.expires_at_ms = now + ttl.as_millis() as u64;
            Ok(Some(lease.generation))
        })
        .await
    }

    async fn release_lease(&self, holder: &str) -> Result<(), MetadataError> {
        self.change(|state| {
            if state.lease.holder.as_deref() == Some(holder) {
                state.lease.expires_at_ms = 0;
            }
            Ok(())
        })
        .await
    }

    async fn context_keys(&self) -> Result<Vec<ContextKey>, MetadataError> {
        {
            let state = self.state.lock().await;
            if !state.context_keys.is_empty() {
                return state.context_keys.iter().map(row_to_key).collect();
            }
        }
        self.change(|state| {
            if state.context_keys.is_empty() {
                state.context_keys.push(ContextKeyRow { id: 1, secret: hex(&rand::random::<[u8; 32]>()) });
            }
            state.context_keys.iter().map(row_to_key).collect()
        })
        .await
    }

    async fn rotate_context_key(&self) -> Result<ContextKey, MetadataError> {
        self.change(|state| {
            let id = state.context_keys.iter().map(|k| k.id).max().unwrap_or(0) + 1;
            let row = ContextKeyRow { id, secret: hex(&rand::random::<[u8; 32]>()) };
            let key = row_to_key(&row)?;
            state.context_keys.push(row);
            Ok(key)
        })
        .await
    }

    async fn current_lease(&self) -> Result<Option<Lease>, MetadataError> {
        let state = self.state.lock().await;
        Ok(state.lease.holder.as_ref().map(|holder| Lease {
            holder: holder.clone(),
            generation: state.lease.generation,
            live: now_ms() < state.lease.expires_at_ms,
        }))
    }

    async fn record_node_health(&self, generation: u64, probes: &[NodeProbe]) -> Result<(), MetadataError> {
        // Checked under the same lock as every lease change, so no takeover
        // can slip between the check and the write; in memory only (see
        // `State::health`).
        let mut state = self.state.lock().await;
        state.fence(generation)?;
        let checked_at_ms = now_ms();
        for probe in probes {
            if state.nodes.contains_key(&probe.node) {
                let health = NodeHealth { node: probe.node.clone(), up: probe.up, checked_at_ms, generation };
                state.health.insert(probe.node.clone(), health);
            }
        }
        Ok(())
    }

    async fn node_health(&self) -> Result<Vec<NodeHealth>, MetadataError> {
        Ok(self.state.lock().await.health.values().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// F14: a current-thread runtime (plain `#[tokio::test]`, or an
    /// embedding application's) must be able to change metadata.
    #[tokio::test]
    async fn passes_the_contract_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedMetadata::open(dir.path()).unwrap();
        super::super::contract::run(&store).await;
        let tenants = store.list_tenants().await.unwrap();
        let version = store.ring_version().await.unwrap();
        let history = store.ring_history().await.unwrap();
        let (nodes, stamp) = (store.list_nodes().await.unwrap(), store.topology_stamp().await.unwrap());
        let migrations = store.migrations().await.unwrap();
        let checkpoints = store.checkpoints(1).await.unwrap();
        drop(store);
        let reopened = EmbeddedMetadata::open(dir.path()).unwrap();
        assert_eq!(reopened.list_tenants().await.unwrap(), tenants);
        assert_eq!(reopened.ring_version().await.unwrap(), version);
        assert_eq!(reopened.ring_history().await.unwrap(), history);
        assert_eq!(reopened.list_nodes().await.unwrap(), nodes);
        assert_eq!(reopened.topology_stamp().await.unwrap(), stamp);
        assert_eq!(reopened.migrations().await.unwrap(), migrations);
        assert_eq!(reopened.checkpoints(1).await.unwrap(), checkpoints);
        assert!(!checkpoints.is_empty() && !migrations.is_empty(), "the contract left some to reload");
    }

    /// A file written before ring versions existed (format 1: one ring
    /// version number bumped on every node change, active nodes only).
    const FORMAT_1: &str = r#"{
        "format": 1,
        "ring_version": 7,
        "tenants": {
            "alpha": {"id": "alpha", "replication": 3, "read_quorum": 2, "write_quorum": 2, "max_siblings": 50, "version": 2}
        },
        "nodes": {
            "n1": {"id": "n1", "address": "127.0.0.1:1", "zone": null, "vnodes": 64, "state": "active"},
            "n2": {"id": "n2", "address": "127.0.0.1:2", "zone": "z2", "vnodes": 150, "state": "active"}
        },
        "lease": {"holder": "c1", "generation": 3, "expires_at_ms": 0},
        "context_keys": [{"id": 1, "secret": "0101010101010101010101010101010101010101010101010101010101010101"}]
    }"#;

    #[tokio::test]
    async fn a_format_1_file_loads_with_one_synthesised_live_version() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("metadata.json"), FORMAT_1).unwrap();
        let store = EmbeddedMetadata::open(dir.path()).unwrap();
        let n1 = NodeSpec { id: "n1".into(), zone: None, vnodes: 64 };
        let n2 = NodeSpec { id: "n2".into(), zone: Some("z2".into()), vnodes: 150 };
        let history = RingHistory { live: vec![RingVersion { version: 7, nodes: vec![n1.clone(), n2.clone()] }] };
        assert_eq!(store.ring_history().await.unwrap(), history, "the active nodes are the one live version");
        assert_eq!(store.ring_version().await.unwrap(), 7, "numbered as the file's ring version");
        assert!(store.topology_stamp().await.unwrap() >= 7, "the stamp does not move backwards");
        let nodes: Vec<_> = store.list_nodes().await.unwrap().into_iter().map(|n| (n.id, n.state)).collect();
        assert_eq!(nodes, [("n1".into(), NodeState::Active), ("n2".into(), NodeState::Active)]);
        assert_eq!(store.get_tenant("alpha").await.unwrap().max_siblings, 50);
        assert_eq!(store.context_keys().await.unwrap()[0].secret, [1; 32]);
        assert_eq!(store.current_lease().await.unwrap().map(|l| (l.holder, l.generation)), Some(("c1".into(), 3)));
        assert!(store.migrations().await.unwrap().is_empty());

        // The upgrade was written: the file now has format 2 and reopens so.
        drop(store);
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("metadata.json")).unwrap()).unwrap();
        assert_eq!(written["format"], FORMAT);
        let store = EmbeddedMetadata::open(dir.path()).unwrap();
        assert_eq!(store.ring_history().await.unwrap(), history);

        // And the ring changes on from there.
        let change = RingChange { expected_version: 7, nodes: vec![n1], records: vec![], migration: None };
        assert_eq!(store.propose_ring_change(change).await.unwrap(), (8, None));
    }

    #[tokio::test]
    async fn a_format_1_file_without_a_bumped_version_or_nodes_upgrades_too() {
        // Nodes but ring version 0: the synthesised version is 1.
        let dir = tempfile::tempdir().unwrap();
        let file = FORMAT_1.replace(r#""ring_version": 7"#, r#""ring_version": 0"#);
        std::fs::write(dir.path().join("metadata.json"), file).unwrap();
        let store = EmbeddedMetadata::open(dir.path()).unwrap();
        let history = store.ring_history().await.unwrap();
        assert_eq!(history.live.iter().map(|v| (v.version, v.nodes.len())).collect::<Vec<_>>(), [(1, 2)]);

        // No nodes: no ring version at all.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("metadata.json"), br#"{"format":1,"ring_version":4,"tenants":{},"nodes":{}}"#)
            .unwrap();
        let store = EmbeddedMetadata::open(dir.path()).unwrap();
        assert_eq!(store.ring_history().await.unwrap(), RingHistory::default());
        assert_eq!(store.ring_version().await.unwrap(), 0);
    }

    #[test]
    fn unknown_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("metadata.json"), br#"{"format":99,"ring_version":0,"tenants":{},"nodes":{}}"#)
            .unwrap();
        assert!(matches!(EmbeddedMetadata::open(dir.path()), Err(MetadataError::Unavailable(_))));
    }
}
