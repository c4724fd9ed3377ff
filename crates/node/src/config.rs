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

/// Bounds on the hints a node keeps for peers that missed writes
/// (`[hints]`). A hint past either bound is *escalated*: dropped, with its
/// key's token range handed to the leader's anti-entropy, which syncs that
/// range among all its replicas as soon as they all answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HintsConfig {
    /// How long a hint may wait for its peer (counted from when this
    /// process first tried to deliver it).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Most hint records the node keeps; those past it are escalated.
    pub max_pending: u64,
}

impl Default for HintsConfig {
    fn default() -> Self {
        HintsConfig { max_age: Duration::from_secs(3 * 3600), max_pending: 1_000_000 }
    }
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
    /// Bounds on pending hints.
    #[serde(default)]
    pub hints: HintsConfig,
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
            hints: HintsConfig::default(),
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
        if self.hints.max_age.is_zero() || self.hints.max_pending == 0 {
            return Err("hints.max_age and hints.max_pending must be positive".into());
        }
        Ok(())
    }
}
