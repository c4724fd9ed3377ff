//! The coordinator's view of the cluster: the live ring versions and the
//! node addresses, swapped whole when the metadata's topology stamp moves.
//!
//! While a membership change moves data, two ring versions are live. A key
//! then has one preference list per version: a write needs its quorum in
//! each, and a read asks each for its quorum and merges the answers, so
//! neither depends on how far the copy has got. [`ReplicaPlan`] carries the
//! union of the lists and the sets the quorums are counted in.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use cohort_ring::{Ring, token_for};

use crate::metadata::{MetadataError, MetadataStore, NodeRecord, RingHistory};

/// A replica of a key: node id and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// Node id.
    pub id: String,
    /// `host:port` of the node's Storage API.
    pub address: String,
}

/// One live ring version.
#[derive(Debug)]
pub struct LiveRing {
    /// Its number.
    pub version: u64,
    /// Its ring.
    pub ring: Ring,
}

/// Where one key's replicas are under every live ring version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaPlan {
    /// Every replica of any live version, each once: the newest version's
    /// list first, then the nodes only older versions have.
    pub replicas: Vec<Replica>,
    /// Per live version (oldest first), the ids of its preference list.
    pub sets: Vec<Vec<String>>,
    /// The newest live version: what requests are routed by.
    pub ring_version: u64,
}

impl ReplicaPlan {
    /// The smallest preference list of any live version: fewer members than
    /// a quorum needs means the quorum cannot be met.
    pub fn smallest_set(&self) -> usize {
        self.sets.iter().map(Vec::len).min().unwrap_or(0)
    }

    /// Whether more than one ring version places this key.
    pub fn is_moving(&self) -> bool {
        self.sets.len() > 1
    }
}

/// An immutable snapshot of placement.
#[derive(Debug)]
pub struct Placement {
    /// The live ring versions, oldest first; empty before the first node.
    pub live: Vec<LiveRing>,
    addresses: HashMap<String, String>,
    /// The metadata topology stamp this snapshot was built from.
    pub stamp: u64,
}

impl Placement {
    /// A placement over the given history and node records.
    pub fn new(history: RingHistory, nodes: Vec<NodeRecord>, stamp: u64) -> Result<Placement, MetadataError> {
        let live = history
            .live
            .into_iter()
            .map(|version| {
                let ring = Ring::new(version.nodes).map_err(|e| {
                    MetadataError::Unavailable(format!("ring version {} is not a valid ring: {e}", version.version))
                })?;
                Ok(LiveRing { version: version.version, ring })
            })
            .collect::<Result<Vec<_>, MetadataError>>()?;
        let addresses = nodes.into_iter().map(|n| (n.id, n.address)).collect();
        Ok(Placement { live, addresses, stamp })
    }

    /// The newest live version's number (0 before the first).
    pub fn ring_version(&self) -> u64 {
        self.live.last().map_or(0, |r| r.version)
    }

    /// Whether no live version has any node.
    pub fn is_empty(&self) -> bool {
        self.live.iter().all(|r| r.ring.is_empty())
    }

    /// Every node of any live version, each once, ordered by id.
    pub fn nodes(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.live.iter().flat_map(|r| r.ring.nodes().iter().map(|n| n.id.as_str())).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The replicas of `(tenant, key)` for replication factor `n` under
    /// every live version.
    pub fn replicas(&self, tenant: &str, key: &[u8], n: usize) -> ReplicaPlan {
        let token = token_for(tenant, key);
        let sets: Vec<Vec<String>> = self
            .live
            .iter()
            .map(|r| r.ring.preference_list(token, n).into_iter().map(|node| node.id.clone()).collect())
            .collect();
        let mut replicas: Vec<Replica> = Vec::new();
        for set in sets.iter().rev() {
            for id in set {
                if !replicas.iter().any(|r| &r.id == id)
                    && let Some(address) = self.addresses.get(id)
                {
                    replicas.push(Replica { id: id.clone(), address: address.clone() });
                }
            }
        }
        ReplicaPlan { replicas, sets, ring_version: self.ring_version() }
    }

    /// The address of node `id`, if it is registered.
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
    let stamp = metadata.topology_stamp().await?;
    let history = metadata.ring_history().await?;
    let nodes = metadata.list_nodes().await?;
    Placement::new(history, nodes, stamp)
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

    /// Rebuilds the placement if the topology stamp moved; returns whether it did.
    pub async fn refresh(&self) -> Result<bool, MetadataError> {
        let stamp = self.metadata.topology_stamp().await?;
        if stamp == self.current().stamp {
            return Ok(false);
        }
        let placement = Arc::new(build(self.metadata.as_ref()).await?);
        let versions: Vec<u64> = placement.live.iter().map(|r| r.version).collect();
        tracing::info!(?versions, nodes = placement.nodes().len(), "ring refreshed");
        metrics::gauge!("cohort_ring_version").set(placement.ring_version() as f64);
        metrics::gauge!("cohort_ring_live_versions").set(placement.live.len() as f64);
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        // Two refreshes may race: the newer snapshot stays.
        if placement.stamp >= current.stamp {
            *current = placement;
        }
        Ok(true)
    }
}
