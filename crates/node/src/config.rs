//! Storage node settings.

use std::path::PathBuf;
use std::time::Duration;

use cohort_ring::valid_node_id;
use serde::{Deserialize, Serialize};

/// When a write counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `fdatasync` the journal (batched by group commit) before acknowledging:
    /// survives power loss.
    #[default]
    Fsync,
    /// Hand the journal to the operating system (batched) before
    /// acknowledging: survives a process crash, not an OS crash.
    Flush,
}

/// Everything a storage node needs to start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeConfig {
    /// Stable node id; must match the id registered with the coordinators.
    pub id: String,
    /// Directory holding the node's keyspace; created when missing.
    pub data_dir: PathBuf,
    /// When a write counts as durable.
    #[serde(default)]
    pub durability: Durability,
    /// How long the coordinating replica waits for another replica.
    #[serde(default = "default_peer_timeout", with = "humantime_serde")]
    pub peer_timeout: Duration,
}

fn default_peer_timeout() -> Duration {
    Duration::from_secs(2)
}

impl NodeConfig {
    /// A configuration with defaults for everything but id and directory.
    pub fn new(id: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            id: id.into(),
            data_dir: data_dir.into(),
            durability: Durability::default(),
            peer_timeout: default_peer_timeout(),
        }
    }

    /// Checks the settings once, quoting the values it rejects.
    pub fn validate(&self) -> Result<(), String> {
        if !valid_node_id(&self.id) {
            return Err(format!("node id {:?} is invalid: expected 1-64 characters from [A-Za-z0-9_.-]", self.id));
        }
        if self.peer_timeout.is_zero() {
            return Err("peer_timeout must be positive".into());
        }
        Ok(())
    }
}
