//! Metadata in one JSON file, rewritten atomically on every change.
//!
//! Each change is written to a temporary file, synced, renamed over the old
//! file and the directory synced, and only then applied in memory — so what a
//! caller was told succeeded survives a crash, and a failed write changes
//! nothing. Leader-only writes check the lease under the same lock, so they
//! are fenced by its generation as in PostgreSQL.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cohort_ring::{ContextKey, ReplicationConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tonic::async_trait;

use super::{DEFAULT_MAX_SIBLINGS, Lease, MetadataError, MetadataStore, NodeHealth, NodeProbe, NodeRecord, Tenant};

/// Current file format; older formats, when there are any, are upgraded on load.
const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TenantRow {
    id: String,
    replication: u32,
    read_quorum: u32,
    write_quorum: u32,
    #[serde(default = "default_max_siblings")]
    max_siblings: u32,
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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    format: u32,
    ring_version: u64,
    tenants: BTreeMap<String, TenantRow>,
    nodes: BTreeMap<String, NodeRecord>,
    #[serde(default)]
    lease: LeaseRow,
    #[serde(default)]
    context_keys: Vec<ContextKeyRow>,
    /// The leader's last probe of each node, by node id. Kept in memory
    /// only: it is re-probed within seconds of a restart, and writing it to
    /// the file would cost a sync every probe round.
    #[serde(skip)]
    health: BTreeMap<String, NodeHealth>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
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
    Ok(Tenant { id: row.id.clone(), replication, max_siblings: row.max_siblings, version: row.version })
}

fn tenant_to_row(tenant: &Tenant) -> TenantRow {
    TenantRow {
        id: tenant.id.clone(),
        replication: tenant.replication.n().into(),
        read_quorum: tenant.replication.r().into(),
        write_quorum: tenant.replication.w().into(),
        max_siblings: tenant.max_siblings,
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
                let state: State = serde_json::from_slice(&bytes)
                    .map_err(|e| MetadataError::Unavailable(format!("{} is unreadable: {e}", path.display())))?;
                if state.format != FORMAT {
                    return Err(MetadataError::Unavailable(format!(
                        "{} has format {}, this build reads {FORMAT}",
                        path.display(),
                        state.format
                    )));
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
    async fn create_tenant(
        &self,
        id: &str,
        replication: ReplicationConfig,
        max_siblings: u32,
    ) -> Result<Tenant, MetadataError> {
        self.change(|state| {
            if state.tenants.contains_key(id) {
                return Err(MetadataError::TenantExists(id.to_string()));
            }
            let tenant = Tenant { id: id.to_string(), replication, max_siblings, version: 1 };
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
        replication: ReplicationConfig,
        max_siblings: u32,
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
            let tenant = Tenant { id: id.to_string(), replication, max_siblings, version: row.version + 1 };
            *row = tenant_to_row(&tenant);
            Ok(tenant)
        })
        .await
    }

    async fn upsert_node(&self, node: NodeRecord) -> Result<NodeRecord, MetadataError> {
        self.change(|state| {
            if state.nodes.get(&node.id) != Some(&node) {
                state.nodes.insert(node.id.clone(), node.clone());
                state.ring_version += 1;
            }
            Ok(node)
        })
        .await
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, MetadataError> {
        Ok(self.state.lock().await.nodes.values().cloned().collect())
    }

    async fn ring_version(&self) -> Result<u64, MetadataError> {
        Ok(self.state.lock().await.ring_version)
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
        let lease = &state.lease;
        if lease.generation != generation || lease.holder.is_none() || now_ms() >= lease.expires_at_ms {
            return Err(MetadataError::Fenced { generation, current: lease.generation });
        }
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
        drop(store);
        let reopened = EmbeddedMetadata::open(dir.path()).unwrap();
        assert_eq!(reopened.list_tenants().await.unwrap(), tenants);
        assert_eq!(reopened.ring_version().await.unwrap(), version);
    }

    #[test]
    fn unknown_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("metadata.json"), br#"{"format":99,"ring_version":0,"tenants":{},"nodes":{}}"#)
            .unwrap();
        assert!(matches!(EmbeddedMetadata::open(dir.path()), Err(MetadataError::Unavailable(_))));
    }
}
