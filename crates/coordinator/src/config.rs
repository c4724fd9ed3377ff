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

/// What a write carrying an idempotency key does when the idempotency store
/// cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdempotencyFallback {
    /// Refuse the write with Unavailable: a retry can never apply twice.
    #[default]
    Reject,
    /// Apply the write without deduplication and count it
    /// (`cohort_idempotency_bypassed_total`): availability over exactly-once.
    Proceed,
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
    /// Largest causal context a write may carry, in bytes.
    pub max_context_bytes: usize,
    /// Largest encoded state (all siblings of a key) a write may grow a key
    /// to, in bytes; a write that resolves siblings is always accepted.
    pub max_state_bytes: u64,
}

/// The most `limits.max_state_bytes` may be: a key's state must fit in one
/// internal message (64 MiB) with room to spare.
pub const MAX_STATE_BYTES_LIMIT: u64 = 48 * 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 1024,
            max_value_bytes: 1024 * 1024,
            max_idempotency_key_bytes: 128,
            max_context_bytes: 64 * 1024,
            max_state_bytes: 32 * 1024 * 1024,
        }
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
    /// Milliseconds an in-flight idempotency claim lasts if its coordinator
    /// dies before finishing the write; must exceed `request_timeout_ms`.
    /// A retry after the claim lapsed treats the first attempt's outcome as
    /// unknown and looks for its version before writing.
    pub idempotency_in_flight_ms: u64,
    /// What to do with idempotent writes when the idempotency store is down.
    pub idempotency_unavailable: IdempotencyFallback,
    /// PostgreSQL URL of the shared metadata store; empty keeps metadata in
    /// an embedded store under `data_dir` (one coordinator only).
    pub postgres_url: String,
    /// Schema holding Cohort's tables.
    pub postgres_schema: String,
    /// Connections in the PostgreSQL pool.
    pub postgres_pool_size: usize,
    /// Redis URL of the shared idempotency store; empty keeps records in an
    /// embedded store under `data_dir` (one coordinator only).
    pub redis_url: String,
    /// Prefix of every Redis key Cohort writes.
    pub redis_prefix: String,
    /// Milliseconds a leader lease lasts; renewed every third of it.
    pub leader_lease_ms: u64,
    /// Milliseconds between the leader's reachability probes of nodes.
    pub node_probe_ms: u64,
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
            idempotency_in_flight_ms: 60_000,
            idempotency_unavailable: IdempotencyFallback::Reject,
            postgres_url: String::new(),
            postgres_schema: "cohort".into(),
            postgres_pool_size: 8,
            redis_url: String::new(),
            redis_prefix: "cohort:idem:".into(),
            leader_lease_ms: 10_000,
            node_probe_ms: 2_000,
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
            ("idempotency_in_flight_ms", self.idempotency_in_flight_ms),
            ("leader_lease_ms", self.leader_lease_ms),
            ("node_probe_ms", self.node_probe_ms),
            ("postgres_pool_size", self.postgres_pool_size as u64),
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
        if self.idempotency_in_flight_ms <= self.request_timeout_ms {
            return Err(format!(
                "idempotency_in_flight_ms ({}) must exceed request_timeout_ms ({}): a claim must outlive the request that holds it",
                self.idempotency_in_flight_ms, self.request_timeout_ms
            ));
        }
        if self.leader_lease_ms < 300 {
            return Err(format!("leader_lease_ms must be at least 300, got {}", self.leader_lease_ms));
        }
        if !crate::metadata::postgres::valid_schema(&self.postgres_schema) {
            return Err(format!("postgres_schema {:?} must be a lowercase identifier", self.postgres_schema));
        }
        let l = &self.limits;
        if l.max_key_bytes == 0 || l.max_key_bytes > 64 * 1024 {
            return Err(format!("limits.max_key_bytes must be 1..=65536, got {}", l.max_key_bytes));
        }
        if l.max_value_bytes == 0 || l.max_value_bytes > 16 * 1024 * 1024 {
            return Err(format!("limits.max_value_bytes must be 1..=16777216, got {}", l.max_value_bytes));
        }
        if l.max_context_bytes < 256 || l.max_context_bytes > 1024 * 1024 {
            return Err(format!("limits.max_context_bytes must be 256..=1048576, got {}", l.max_context_bytes));
        }
        if l.max_state_bytes < l.max_value_bytes as u64 * 2 || l.max_state_bytes > MAX_STATE_BYTES_LIMIT {
            return Err(format!(
                "limits.max_state_bytes must be at least twice limits.max_value_bytes ({}) and at most {MAX_STATE_BYTES_LIMIT}, got {}",
                l.max_value_bytes, l.max_state_bytes
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        CoordinatorConfig::default().validate().unwrap();
    }

    /// F12: a claim that lapses while its request still runs lets a retry
    /// run beside it.
    #[test]
    fn an_in_flight_timeout_within_the_request_timeout_is_refused() {
        let config = CoordinatorConfig { idempotency_in_flight_ms: 5_000, ..CoordinatorConfig::default() };
        let error = config.validate().unwrap_err();
        assert!(error.contains("idempotency_in_flight_ms (5000) must exceed request_timeout_ms (5000)"), "{error}");
    }

    #[test]
    fn limits_on_contexts_and_states_are_checked() {
        let small = Limits { max_context_bytes: 10, ..Limits::default() };
        assert!(CoordinatorConfig { limits: small, ..CoordinatorConfig::default() }.validate().is_err());
        let huge = Limits { max_state_bytes: MAX_STATE_BYTES_LIMIT + 1, ..Limits::default() };
        assert!(CoordinatorConfig { limits: huge, ..CoordinatorConfig::default() }.validate().is_err());
        let tight = Limits { max_state_bytes: 1024 * 1024, ..Limits::default() };
        let error = CoordinatorConfig { limits: tight, ..CoordinatorConfig::default() }.validate().unwrap_err();
        assert!(error.contains("twice limits.max_value_bytes"), "{error}");
    }
}
