//! Idempotency records: a retried write returns the first response instead
//! of applying again.
//!
//! A request carrying an idempotency key first *claims* `(tenant, key)`
//! atomically, bound to a fingerprint (SHA-256) of the request and to an
//! *owner*, a token unique to this attempt. While the claim is in flight, a
//! retry with the same fingerprint waits; a request with a different
//! fingerprint is rejected. Then the owner, and only the owner, ends it:
//!
//! - [`complete`](IdempotencyStore::complete): the write succeeded; its
//!   response is kept for the TTL and replayed to every retry;
//! - [`release`](IdempotencyStore::release): the write certainly applied
//!   nowhere; a retry runs it afresh;
//! - [`mark_unknown`](IdempotencyStore::mark_unknown): the write may have
//!   applied. The record stays for the TTL, and the next claim gets
//!   [`Claim::Claimed`] with `settle` set: the new owner must first settle
//!   the earlier attempt (find the version it issued and replicate that)
//!   before it may write anything new.
//!
//! An in-flight claim whose owner neither ends it nor finishes within the
//! in-flight timeout lapses, and is then treated like an unknown outcome:
//! its owner may have died after its write reached a replica.
//!
//! - [`embedded`]: [`embedded::EmbeddedIdempotency`] keeps claims in the
//!   process and records in a local fjall keyspace, for a single
//!   coordinator;
//! - [`redis`]: [`redis::RedisIdempotency`] keeps both in Redis, shared by
//!   every coordinator that uses the same server;
//! - [`contract`]: the behaviour both must show ([`contract::run`]);
//! - [`config`]: the `[idempotency]` settings section, which names the
//!   store.

pub mod config;
pub mod contract;
pub mod embedded;
pub mod redis;

use std::time::Duration;

pub use config::{IdempotencyBackend, IdempotencyConfig, IdempotencyFallback};

use async_trait::async_trait;

/// A SHA-256 digest of everything that makes a request what it is.
pub type Fingerprint = [u8; 32];

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller owns the key now and must complete, release or mark it.
    /// `settle`: an earlier attempt's outcome is unknown (it was marked so,
    /// or its claim lapsed), so it may have applied and must be settled
    /// before writing.
    Claimed {
        /// Whether an earlier attempt must be settled first.
        settle: bool,
    },
    /// The same request is in flight elsewhere.
    InFlight,
    /// The same request completed; here is its encoded response.
    Done(Vec<u8>),
    /// The key was used for a different request.
    Conflict,
}

impl Claim {
    /// A claim of a key nobody held.
    pub const FRESH: Claim = Claim::Claimed { settle: false };
    /// A claim taken over from an attempt whose outcome is unknown.
    pub const SETTLE: Claim = Claim::Claimed { settle: true };
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
    /// Atomically claims `(tenant, key)` for the request with `fingerprint`
    /// on behalf of `owner`, or reports who holds it. Whatever the claim
    /// leaves behind is kept at most `ttl`.
    async fn claim(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &Fingerprint,
        owner: &str,
        ttl: Duration,
    ) -> Result<Claim, IdempotencyError>;
    /// Records the response of `owner`'s claimed request for `ttl`. If the
    /// claim lapsed and nobody took it, the response is recorded anyway; if
    /// another owner took it over, nothing changes (that owner settles the
    /// same write).
    async fn complete(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &Fingerprint,
        owner: &str,
        response: &[u8],
        ttl: Duration,
    ) -> Result<(), IdempotencyError>;
    /// Gives `owner`'s claim up after an attempt that certainly applied
    /// nowhere, so that a retry runs afresh. Does nothing to a claim that is
    /// not `owner`'s.
    async fn release(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &Fingerprint,
        owner: &str,
    ) -> Result<(), IdempotencyError>;
    /// Turns `owner`'s claim into an unknown outcome kept for `ttl`: the
    /// next claim must settle it. Does nothing to a claim that is not
    /// `owner`'s.
    async fn mark_unknown(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &Fingerprint,
        owner: &str,
        ttl: Duration,
    ) -> Result<(), IdempotencyError>;
    /// Deletes expired records, where the store does not expire them by
    /// itself; returns how many.
    async fn purge_expired(&self) -> Result<usize, IdempotencyError> {
        Ok(0)
    }
}
