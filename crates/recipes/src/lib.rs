//! Coordination recipes on linearizable registers: leases, locks with
//! fencing tokens, and leader election.
//!
//! Everything here is a sequence of compare-and-set operations on
//! registers ([`Registers`], which the coordinator implements over Paxos),
//! so it is as linearizable as they are, survives the loss of any
//! coordinator (no state lives in one), and is tested against an in-memory
//! register store ([`memory`]).
//!
//! - [`keys`]: where each recipe keeps its registers, apart from the keys
//!   clients name with compare-and-set.
//! - [`lease`]: leases with a TTL, judged by the serving coordinator's
//!   clock, kept alive only by their holder.
//! - [`lock`]: locks held under a lease, FIFO waiters, and fencing tokens:
//!   the register's version at the grant, so strictly increasing per lock
//!   across restarts and failover. Elections are locks whose holder
//!   proclaims a value; the token is the generation.
//!
//! - [`journal`]: journaled maps — keys with versions, every change
//!   numbered by a per-map revision, and a journal of changes readable from
//!   any retained revision (configuration, and its watch).
//! - [`registry`]: the service registry — instances bound to leases, health
//!   judged with hysteresis, on a journaled map of its own.
//!
//! Fencing itself is a rule of the registers (`cohort_paxos::register`): a
//! write carrying a lock's token is refused by the key it writes once that
//! key has seen a higher token of the same lock, atomically with the write.
//!
//! **Invariant:** a lock is granted only to a lease that is live at the
//! moment of the grant, and only by a compare-and-set on the version the
//! granter read, so two grants can never both succeed.

pub mod journal;
pub mod keys;
pub mod lease;
pub mod lock;
pub mod memory;
pub mod registry;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
pub use cohort_paxos::{Change, Outcome, Register};

/// Linearizable registers of one tenant, as the coordinator provides them.
#[async_trait::async_trait]
pub trait Registers: Send + Sync {
    /// Applies `change` to register `key` of `tenant` with write id `write`.
    async fn run(&self, tenant: &str, key: Bytes, change: Change, write: Bytes) -> Result<Outcome, RecipeError>;
}

/// The clock leases are judged by.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
}

/// Why a recipe failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipeError {
    /// Bad input; nothing changed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The lease or lock does not exist (or the lease expired).
    #[error("{0}")]
    NotFound(String),
    /// The caller does not hold what it names, or a fence refused a write.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Too many waiters.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A wait ended without a grant.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A write of unknown outcome, or the registers failed.
    #[error("{0}")]
    Registers(String),
    /// A write may or may not have applied.
    #[error("{0}")]
    OutcomeUnknown(String),
}

/// Bounds the recipes enforce.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A lease's TTL when none is given.
    pub default_ttl: Duration,
    /// The longest TTL.
    pub max_ttl: Duration,
    /// The longest wait for a lock.
    pub max_wait: Duration,
    /// Most waiters per lock.
    pub max_waiters: usize,
    /// Longest lock or election name, in bytes.
    pub max_name_bytes: usize,
    /// Longest proclaimed value, in bytes.
    pub max_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            default_ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(300),
            max_wait: Duration::from_secs(300),
            max_waiters: 1000,
            max_name_bytes: 256,
            max_value_bytes: 64 * 1024,
        }
    }
}

/// Reads register `key` linearizably.
pub(crate) async fn read(registers: &dyn Registers, tenant: &str, key: &Bytes) -> Result<Register, RecipeError> {
    match registers.run(tenant, key.clone(), Change::Read, Bytes::new()).await? {
        Outcome::Read(register) => Ok(register),
        other => Err(RecipeError::Registers(format!("unexpected outcome of a read: {other:?}"))),
    }
}

/// What a conditional write came to.
pub(crate) enum Written {
    /// Applied; the version it made.
    Applied(u64),
    /// Someone else changed the register first.
    Lost,
    /// It may or may not have applied: read the register again and decide.
    Unknown,
}

/// Writes `value` (a delete when `None`) at version `expect`.
pub(crate) async fn write(
    registers: &dyn Registers,
    tenant: &str,
    key: &Bytes,
    expect: u64,
    value: Option<Bytes>,
) -> Result<Written, RecipeError> {
    let change = match value {
        Some(value) => Change::Put { expect, value, fence: None },
        None => Change::Delete { expect, fence: None },
    };
    let id = Bytes::copy_from_slice(&rand::random::<[u8; 16]>());
    // A write of unknown outcome is resent under its id: it is recognised
    // if it applied. If that still cannot be told, the caller reads the
    // register again and decides from what is there.
    let mut unknown = false;
    for _ in 0..8 {
        match registers.run(tenant, key.clone(), change.clone(), id.clone()).await {
            Ok(Outcome::Applied(version)) => return Ok(Written::Applied(version)),
            Ok(Outcome::Mismatch(_) | Outcome::Unavailable) if unknown => return Ok(Written::Unknown),
            Ok(Outcome::Mismatch(_)) => return Ok(Written::Lost),
            Ok(Outcome::Unknown) | Err(RecipeError::OutcomeUnknown(_)) => unknown = true,
            Ok(Outcome::Contended) => {}
            Ok(Outcome::Unavailable) => {
                return Err(RecipeError::Registers(
                    "no quorum of the key's replicas answered; nothing was applied".into(),
                ));
            }
            Ok(other) => return Err(RecipeError::Registers(format!("unexpected outcome of a write: {other:?}"))),
            Err(error) => return Err(error),
        }
    }
    if unknown { Ok(Written::Unknown) } else { Err(RecipeError::Registers("a write lost every attempt".into())) }
}
