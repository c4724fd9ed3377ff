//! Coordinator settings, loaded by the `cohort` binary (defaults, then a TOML
//! file, then `COHORT_*` environment variables, then flags).

use std::path::PathBuf;
use std::time::Duration;

pub use cohort_idempotency::{IdempotencyBackend, IdempotencyConfig, IdempotencyFallback};
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
#[serde(default, deny_unknown_fields)]
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

/// Which metadata store holds tenants, nodes, the ring version and the
/// leader lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetadataBackend {
    /// PostgreSQL at `metadata.url`, shared by every coordinator.
    Postgres,
    /// A file under `data_dir`: one coordinator only.
    Embedded,
}

/// The `[metadata]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetadataConfig {
    /// Which store; there is no default: a coordinator names its backend
    /// (the dev cluster chooses `embedded`).
    pub backend: Option<MetadataBackend>,
    /// PostgreSQL URL, for the `postgres` backend only.
    pub url: String,
    /// Schema holding Cohort's tables.
    pub schema: String,
    /// Connections in the PostgreSQL pool.
    pub pool_size: usize,
    /// How long a cached tenant is served before it is read again.
    #[serde(with = "humantime_serde")]
    pub tenant_cache_ttl: Duration,
    /// How often the ring version is checked.
    #[serde(with = "humantime_serde")]
    pub ring_refresh: Duration,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig {
            backend: None,
            url: String::new(),
            schema: "cohort".into(),
            pool_size: 8,
            tenant_cache_ttl: Duration::from_secs(5),
            ring_refresh: Duration::from_secs(5),
        }
    }
}

/// The `[leader]` section: the election among coordinators and the jobs
/// only the leader runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaderConfig {
    /// How long a lease lasts; renewed every third of it.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Time between the leader's reachability probes of the nodes.
    #[serde(with = "humantime_serde")]
    pub node_probe: Duration,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        LeaderConfig { lease: Duration::from_secs(10), node_probe: Duration::from_secs(2) }
    }
}

/// How the leader moves data when the ring changes (`[membership]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MembershipConfig {
    /// Most bytes of sibling sets a migration copies per second (0: no
    /// limit). Copies share the nodes with client traffic.
    pub copy_bytes_per_sec: u64,
    /// Keys per page of a range copy: each page is read from a source and
    /// merged into its new owners before the next is read.
    pub copy_page_keys: u32,
    /// How long a migration step that failed (a node unreachable) waits
    /// before it is tried again.
    #[serde(with = "humantime_serde")]
    pub retry: Duration,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig { copy_bytes_per_sec: 32 * 1024 * 1024, copy_page_keys: 256, retry: Duration::from_secs(1) }
    }
}

/// Anti-entropy and tombstone garbage collection, run by the leader
/// (`[repair]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepairConfig {
    /// Whether the leader compares replicas in the background. Forced
    /// repairs (`cohort admin repair`) work either way.
    pub enabled: bool,
    /// How long one round — every tenant's every token range compared once —
    /// is spread over. Exchanges are paced evenly over it, with jitter.
    #[serde(with = "humantime_serde")]
    pub round: Duration,
    /// Most bytes per second an exchange may read and send (0: no limit).
    pub bytes_per_sec: u64,
    /// An exchange that takes longer than this doubles the pause before the
    /// next one (up to 64 times), until one fits again.
    #[serde(with = "humantime_serde")]
    pub exchange_budget: Duration,
    /// Whether converged ranges have their old tombstones reaped.
    pub gc: bool,
    /// How long a key must have held nothing but tombstones before it may
    /// be reaped — and then only once every replica holds exactly them.
    #[serde(with = "humantime_serde")]
    pub gc_grace: Duration,
}

impl Default for RepairConfig {
    fn default() -> Self {
        RepairConfig {
            enabled: true,
            round: Duration::from_secs(600),
            bytes_per_sec: 8 * 1024 * 1024,
            exchange_budget: Duration::from_secs(10),
            gc: true,
            gc_grace: Duration::from_secs(3600),
        }
    }
}

/// Versioned configuration (`[configuration]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigurationConfig {
    /// How many of a tenant's latest configuration revisions stay readable
    /// by watchers; a watch from an older one is refused as compacted.
    pub retained_revisions: u64,
    /// How many versions of each key `config history` and `config get
    /// --version` keep.
    pub history_per_key: usize,
    /// Most configuration keys with a value per tenant.
    pub max_keys: usize,
    /// Changes a coordinator buffers for its slowest watcher of a tenant; a
    /// watcher further behind is cancelled (`ResourceExhausted`).
    pub watch_buffer: usize,
}

impl Default for ConfigurationConfig {
    fn default() -> Self {
        ConfigurationConfig { retained_revisions: 10_000, history_per_key: 16, max_keys: 10_000, watch_buffer: 1024 }
    }
}

impl ConfigurationConfig {
    /// The journal bounds these settings give.
    pub fn journal_limits(&self) -> cohort_recipes::journal::JournalLimits {
        cohort_recipes::journal::JournalLimits {
            retained_revisions: self.retained_revisions.max(1),
            history_per_key: self.history_per_key.max(1),
            max_keys: self.max_keys,
            ..cohort_recipes::journal::JournalLimits::default()
        }
    }
}

/// The service registry (`[registry]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// How often the leader judges every instance (lease lapsed? checks?).
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// How often an instance's active check runs.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// How long one check may take before it counts as failed.
    #[serde(with = "humantime_serde")]
    pub check_timeout: Duration,
    /// Passing checks in a row that make a critical instance passing.
    pub passing_after: u32,
    /// Failing checks in a row that make a passing instance critical.
    pub critical_after: u32,
    /// An instance's lease TTL when it registers without one.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// How long an instance may stay critical before it is removed, when it
    /// registers without saying: this many TTLs.
    pub deregister_after_ttls: u32,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            sweep_interval: Duration::from_secs(1),
            check_interval: Duration::from_secs(5),
            check_timeout: Duration::from_secs(2),
            passing_after: 2,
            critical_after: 3,
            default_ttl: Duration::from_secs(30),
            deregister_after_ttls: 2,
        }
    }
}

impl RegistryConfig {
    /// The registration bounds these settings give.
    pub fn limits(&self) -> cohort_recipes::registry::RegistryLimits {
        cohort_recipes::registry::RegistryLimits {
            default_ttl: self.default_ttl,
            deregister_after_ttls: self.deregister_after_ttls.max(1),
            ..cohort_recipes::registry::RegistryLimits::default()
        }
    }
}

/// Everything a coordinator needs to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// This coordinator's id, shown in cluster status and logs.
    pub id: String,
    /// Address of the public gRPC API.
    pub listen: String,
    /// Address of the HTTP endpoint with `/metrics` and health; empty to disable.
    pub metrics_listen: String,
    /// Directory for the embedded metadata and idempotency stores.
    pub data_dir: PathBuf,
    /// How long a client request may take end to end.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long to wait for one storage node on one call.
    #[serde(with = "humantime_serde")]
    pub node_timeout: Duration,
    /// When read repair runs.
    pub read_repair: ReadRepairMode,
    /// The metadata store.
    pub metadata: MetadataConfig,
    /// The idempotency store.
    pub idempotency: IdempotencyConfig,
    /// Leader election and leader-only jobs.
    pub leader: LeaderConfig,
    /// Data movement on membership changes.
    pub membership: MembershipConfig,
    /// Anti-entropy and tombstone garbage collection.
    pub repair: RepairConfig,
    /// Versioned configuration.
    pub configuration: ConfigurationConfig,
    /// The service registry.
    pub registry: RegistryConfig,
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
            request_timeout: Duration::from_secs(5),
            node_timeout: Duration::from_secs(2),
            read_repair: ReadRepairMode::Background,
            metadata: MetadataConfig::default(),
            idempotency: IdempotencyConfig::default(),
            leader: LeaderConfig::default(),
            membership: MembershipConfig::default(),
            repair: RepairConfig::default(),
            configuration: ConfigurationConfig::default(),
            registry: RegistryConfig::default(),
            limits: Limits::default(),
        }
    }
}

impl CoordinatorConfig {
    /// The settings with both stores embedded under `data_dir`, as the dev
    /// cluster and the in-process clusters run.
    pub fn embedded(self) -> Self {
        let mut config = self;
        config.metadata.backend = Some(MetadataBackend::Embedded);
        config.idempotency.backend = Some(IdempotencyBackend::Embedded);
        config
    }

    /// Checks the settings once, quoting the values it rejects. The stores
    /// need not be chosen here (an in-process cluster is handed its stores);
    /// [`CoordinatorConfig::validate_backends`] checks that they are.
    pub fn validate(&self) -> Result<(), String> {
        if self.id.is_empty() {
            return Err("id must not be empty".into());
        }
        for (name, value) in [
            ("request_timeout", self.request_timeout),
            ("node_timeout", self.node_timeout),
            ("metadata.ring_refresh", self.metadata.ring_refresh),
            ("idempotency.ttl", self.idempotency.ttl),
            ("idempotency.in_flight", self.idempotency.in_flight),
            ("leader.lease", self.leader.lease),
            ("leader.node_probe", self.leader.node_probe),
            ("repair.round", self.repair.round),
            ("repair.exchange_budget", self.repair.exchange_budget),
        ] {
            if value.is_zero() {
                return Err(format!("{name} must be positive, got 0s"));
            }
        }
        if self.metadata.pool_size == 0 {
            return Err("metadata.pool_size must be positive, got 0".into());
        }
        if self.node_timeout > self.request_timeout {
            return Err(format!(
                "node_timeout ({}) must not exceed request_timeout ({})",
                show(self.node_timeout),
                show(self.request_timeout)
            ));
        }
        if self.idempotency.in_flight <= self.request_timeout {
            return Err(format!(
                "idempotency.in_flight ({}) must exceed request_timeout ({}): a claim must outlive the request that holds it",
                show(self.idempotency.in_flight),
                show(self.request_timeout)
            ));
        }
        if self.leader.lease < Duration::from_millis(300) {
            return Err(format!("leader.lease must be at least 300ms, got {}", show(self.leader.lease)));
        }
        if !crate::metadata::postgres::valid_schema(&self.metadata.schema) {
            return Err(format!("metadata.schema {:?} must be a lowercase identifier", self.metadata.schema));
        }
        match (self.metadata.backend, self.metadata.url.is_empty()) {
            (Some(MetadataBackend::Postgres), true) => {
                return Err("metadata.backend is \"postgres\" but metadata.url is empty".into());
            }
            (Some(MetadataBackend::Embedded), false) => {
                return Err(
                    "metadata.url is set but metadata.backend is \"embedded\": choose \"postgres\" to use it".into()
                );
            }
            _ => {}
        }
        self.idempotency.validate()?;
        if !(1..=1024).contains(&self.membership.copy_page_keys) {
            return Err(format!("membership.copy_page_keys {} is not 1..=1024", self.membership.copy_page_keys));
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

    /// [`CoordinatorConfig::validate`], and both stores chosen: what a
    /// coordinator process that opens its own stores needs.
    pub fn validate_backends(&self) -> Result<(), String> {
        self.validate()?;
        if self.metadata.backend.is_none() {
            return Err("choose a metadata store: metadata.backend = \"postgres\" (with metadata.url; shared by several coordinators) or \"embedded\" (under data_dir; one coordinator), or --postgres-url / --metadata-backend".into());
        }
        if self.idempotency.backend.is_none() {
            return Err("choose an idempotency store: idempotency.backend = \"redis\" (with idempotency.url; shared by several coordinators) or \"embedded\" (under data_dir; one coordinator), or --redis-url / --idempotency-backend".into());
        }
        Ok(())
    }
}

/// A duration as settings write it ("5s").
fn show(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
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
        let mut config = CoordinatorConfig::default();
        config.idempotency.in_flight = Duration::from_secs(5);
        let error = config.validate().unwrap_err();
        assert!(error.contains("idempotency.in_flight (5s) must exceed request_timeout (5s)"), "{error}");
    }

    #[test]
    fn a_store_is_a_choice_never_implied_by_an_empty_url() {
        let unchosen = CoordinatorConfig::default();
        let error = unchosen.validate_backends().unwrap_err();
        assert!(error.contains("choose a metadata store"), "{error}");
        let mut postgres = CoordinatorConfig::default().embedded();
        postgres.metadata.backend = Some(MetadataBackend::Postgres);
        assert!(postgres.validate().unwrap_err().contains("metadata.url is empty"));
        let mut stray = CoordinatorConfig::default().embedded();
        stray.idempotency.url = "redis://cache:6379".into();
        assert!(stray.validate().unwrap_err().contains("idempotency.backend is \"embedded\""));
        CoordinatorConfig::default().embedded().validate_backends().unwrap();
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
