//! Coordinator settings, loaded by the `cohort` binary (defaults, then a TOML
//! file, then `COHORT_*` environment variables, then flags).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// When read repair runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadRepairMode {
    /// After answering the client, in a background task.
    #[default]
    Background,
    /// Before answering: the read waits for every replica (up to the request
    /// timeout) and for the repairs it sends.
    Sync,
}

/// Limits on client input.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Largest key, in bytes.
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
    /// Longest idempotency key, in bytes.
    pub max_idempotency_key_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_key_bytes: 1024, max_value_bytes: 1024 * 1024, max_idempotency_key_bytes: 128 }
    }
}

/// Everything a coordinator needs to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CoordinatorConfig {
    /// This coordinator's id, shown in cluster status and logs.
    pub id: String,
    /// Address of the public gRPC API.
    pub listen: String,
    /// Address of the HTTP endpoint with `/metrics` and health; empty to disable.
    pub metrics_listen: String,
    /// Directory for the embedded metadata and idempotency stores.
    pub data_dir: PathBuf,
    /// Milliseconds a client request may take end to end.
    pub request_timeout_ms: u64,
    /// Milliseconds to wait for one storage node on one call.
    pub node_timeout_ms: u64,
    /// When read repair runs.
    pub read_repair: ReadRepairMode,
    /// Milliseconds a cached tenant is served before it is read again.
    pub tenant_cache_ttl_ms: u64,
    /// Milliseconds between checks of the ring version in metadata.
    pub ring_refresh_ms: u64,
    /// Seconds an idempotency record is kept.
    pub idempotency_ttl_secs: u64,
    /// Input limits.
    pub limits: Limits,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            id: "coordinator-1".into(),
            listen: "127.0.0.1:7070".into(),
            metrics_listen: "127.0.0.1:9090".into(),
            data_dir: PathBuf::from("cohort-data/coordinator"),
            request_timeout_ms: 5_000,
            node_timeout_ms: 2_000,
            read_repair: ReadRepairMode::Background,
            tenant_cache_ttl_ms: 5_000,
            ring_refresh_ms: 5_000,
            idempotency_ttl_secs: 24 * 60 * 60,
            limits: Limits::default(),
        }
    }
}

impl CoordinatorConfig {
    /// Checks the settings once, quoting the values it rejects.
    pub fn validate(&self) -> Result<(), String> {
        if self.id.is_empty() {
            return Err("id must not be empty".into());
        }
        for (name, value) in [
            ("request_timeout_ms", self.request_timeout_ms),
            ("node_timeout_ms", self.node_timeout_ms),
            ("ring_refresh_ms", self.ring_refresh_ms),
            ("idempotency_ttl_secs", self.idempotency_ttl_secs),
        ] {
            if value == 0 {
                return Err(format!("{name} must be positive, got 0"));
            }
        }
        if self.node_timeout_ms > self.request_timeout_ms {
            return Err(format!(
                "node_timeout_ms ({}) must not exceed request_timeout_ms ({})",
                self.node_timeout_ms, self.request_timeout_ms
            ));
        }
        let l = &self.limits;
        if l.max_key_bytes == 0 || l.max_key_bytes > 64 * 1024 {
            return Err(format!("limits.max_key_bytes must be 1..=65536, got {}", l.max_key_bytes));
        }
        if l.max_value_bytes == 0 || l.max_value_bytes > 16 * 1024 * 1024 {
            return Err(format!("limits.max_value_bytes must be 1..=16777216, got {}", l.max_value_bytes));
        }
        Ok(())
    }
}
