//! The `[idempotency]` section of a coordinator's settings.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which store keeps idempotency records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdempotencyBackend {
    /// Redis at `idempotency.url`, shared by every coordinator.
    Redis,
    /// A fjall keyspace under the coordinator's data directory: one
    /// coordinator only.
    Embedded,
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

/// The `[idempotency]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// Which store; there is no default: a coordinator names its backend
    /// (the dev cluster chooses `embedded`).
    pub backend: Option<IdempotencyBackend>,
    /// Redis URL, for the `redis` backend only.
    pub url: String,
    /// Prefix of every Redis key Cohort writes.
    pub prefix: String,
    /// How long a record is kept.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How long an in-flight claim lasts if its coordinator dies before
    /// finishing the write; must exceed the request timeout. A retry after
    /// the claim lapsed treats the first attempt's outcome as unknown and
    /// looks for its version before writing.
    #[serde(with = "humantime_serde")]
    pub in_flight: Duration,
    /// What to do with idempotent writes when the store is down.
    pub unavailable: IdempotencyFallback,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        IdempotencyConfig {
            backend: None,
            url: String::new(),
            prefix: "cohort:idem:".into(),
            ttl: Duration::from_secs(24 * 60 * 60),
            in_flight: Duration::from_secs(60),
            unavailable: IdempotencyFallback::Reject,
        }
    }
}

impl IdempotencyConfig {
    /// Checks that the backend and the URL agree.
    pub fn validate(&self) -> Result<(), String> {
        match (self.backend, self.url.is_empty()) {
            (Some(IdempotencyBackend::Redis), true) => {
                Err("idempotency.backend is \"redis\" but idempotency.url is empty".into())
            }
            (Some(IdempotencyBackend::Embedded), false) => {
                Err("idempotency.url is set but idempotency.backend is \"embedded\": choose \"redis\" to use it".into())
            }
            _ => Ok(()),
        }
    }
}
