//! Idempotency records: a retried write returns the first response instead
//! of applying again.
//!
//! A request carrying an idempotency key first *claims* `(tenant, key)`
//! atomically, bound to a fingerprint (SHA-256) of the request. While the
//! claim is in flight, a retry with the same fingerprint waits; a request
//! with a different fingerprint is rejected. When the first attempt
//! completes, its response is recorded for the TTL; when it fails, the claim
//! is released so that a retry may try again.
//!
//! Two stores: [`embedded::EmbeddedIdempotency`] keeps claims in the process
//! and responses in a local fjall keyspace, for a single coordinator;
//! [`redis::RedisIdempotency`] keeps both in Redis, shared by every
//! coordinator that uses the same server. [`contract::run`] is the behaviour
//! both must show.

pub mod contract;
pub mod embedded;
pub mod redis;

use std::time::Duration;

use tonic::async_trait;

/// A SHA-256 digest of everything that makes a request what it is.
pub type Fingerprint = [u8; 32];

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nobody had the key: the caller owns it and must complete or release it.
    Claimed,
    /// The same request is in flight elsewhere.
    InFlight,
    /// The same request completed; here is its encoded response.
    Done(Vec<u8>),
    /// The key was used for a different request.
    Conflict,
}

/// Why the idempotency store failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdempotencyError {
    /// The store could not be reached or written.
    #[error("idempotency store unavailable: {0}")]
    Unavailable(String),
}

/// Where idempotency records live.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Atomically claims `(tenant, key)` for the request with `fingerprint`,
    /// or reports who holds it.
    async fn claim(&self, tenant: &str, key: &str, fingerprint: &Fingerprint) -> Result<Claim, IdempotencyError>;
    /// Records the response of the claimed request for `ttl`.
    async fn complete(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &Fingerprint,
        response: &[u8],
        ttl: Duration,
    ) -> Result<(), IdempotencyError>;
    /// Gives up a claim after a failed attempt, so that a retry may run.
    async fn release(&self, tenant: &str, key: &str, fingerprint: &Fingerprint) -> Result<(), IdempotencyError>;
}
