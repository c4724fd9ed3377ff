//! The coordinator's view of the cluster: the ring built from the registered
//! nodes and their addresses, swapped whole when the ring version changes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use cohort_ring::{Ring, token_for};

use crate::metadata::{MetadataError, MetadataStore, NodeState};

/// A replica of a key: node id and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// Node id.
    pub id: String,
    /// `host:port` of the node's Storage API.
    pub address: String,
}

/// An immutable snapshot of placement.
#[derive(Debug)]
pub struct Placement {
    /// The ring of active nodes.
    pub ring: Ring,
    addresses: HashMap<String, String>,
    /// The metadata ring version this snapshot was built from.
    pub version: u64,
}

impl Placement {
    /// The preference list of `(tenant, key)` for replication factor `n`.
    pub fn replicas(&self, tenant: &str, key: &[u8], n: usize) -> Vec<Replica> {
        self.ring
            .preference_list(token_for(tenant, key), n)
            .into_iter()
            .map(|node| Replica { id: node.id.clone(), address: self.addresses[&node.id].clone() })
            .collect()
    }

    /// The address of node `id`, if it is on the ring.
    pub fn address(&self, id: &str) -> Option<&str> {
        self.addresses.get(id).map(String::as_str)
    }
}

/// The current placement, refreshed from metadata.
pub struct Topology {
    metadata: Arc<dyn MetadataStore>,
    /// A std lock: readers clone the `Arc` and release it at once.
    current: RwLock<Arc<Placement>>,
}

async fn build(metadata: &dyn MetadataStore) -> Result<Placement, MetadataError> {
    let version = metadata.ring_version().await?;
    let nodes = metadata.list_nodes().await?;
    let active: Vec<_> = nodes.into_iter().filter(|n| n.state == NodeState::Active).collect();
    let ring = Ring::new(active.iter().map(|n| n.spec()).collect())
        .map_err(|e| MetadataError::Unavailable(format!("registered nodes do not form a ring: {e}")))?;
    let addresses = active.into_iter().map(|n| (n.id, n.address)).collect();
    Ok(Placement { ring, addresses, version })
}

impl Topology {
    /// Loads the current placement.
    pub async fn load(metadata: Arc<dyn MetadataStore>) -> Result<Self, MetadataError> {
        let placement = build(metadata.as_ref()).await?;
        Ok(Topology { metadata, current: RwLock::new(Arc::new(placement)) })
    }

    /// The placement in force.
    pub fn current(&self) -> Arc<Placement> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Rebuilds the placement if the ring version moved; returns whether it did.
    pub async fn refresh(&self) -> Result<bool, MetadataError> {
        let version = self.metadata.ring_version().await?;
        if version == self.current().version {
            return Ok(false);
        }
        let placement = Arc::new(build(self.metadata.as_ref()).await?);
        tracing::info!(ring_version = placement.version, nodes = placement.ring.nodes().len(), "ring refreshed");
        metrics::gauge!("cohort_ring_version").set(placement.version as f64);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = placement;
        Ok(true)
    }
}
