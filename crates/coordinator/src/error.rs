//! The coordinator's error type, shaped for its callers, and its one
//! translation to gRPC status codes.

use tonic::Status;

/// Response metadata set on a failed write that some replica may have
/// applied (`unknown`): retrying it without its idempotency key could apply
/// it twice, so clients never retry such a write on their own.
pub const OUTCOME_HEADER: &str = "cohort-outcome";

/// Why a key-value or admin request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The request was wrong; nothing was stored.
    #[error("{0}")]
    InvalidArgument(String),
    /// The tenant does not exist.
    #[error("tenant {0:?} not found")]
    TenantNotFound(String),
    /// The named object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The object already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// Too few replicas answered.
    #[error("{what}: got {got} of {needed} replicas needed{detail}")]
    Unavailable {
        /// What could not be done ("write", "read").
        what: &'static str,
        /// Replicas that answered successfully.
        got: usize,
        /// Replicas the consistency level required.
        needed: usize,
        /// Reasons from the replicas that failed, prefixed with "; ".
        detail: String,
        /// Whether some replica may hold the write (a write whose
        /// coordinating replica issued its version, whatever came after).
        maybe_applied: bool,
    },
    /// A write that some replica may have applied got no definite answer.
    #[error("{0}")]
    WriteOutcomeUnknown(String),
    /// The request ran out of time.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A precondition failed: a stale version, or an idempotency key reused
    /// with a different request.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A storage node refused the request because it was routed by a ring
    /// older than the node's fence; nothing was applied. The coordinator
    /// refreshes its ring and routes the request again.
    #[error("{0}")]
    StaleRing(String),
    /// A bound was reached (too many waiters on a lock).
    #[error("{0}")]
    ResourceExhausted(String),
    /// A linearizable operation lost to concurrent ones on every attempt;
    /// nothing was applied, and a retry may succeed.
    #[error("{0}")]
    Contended(String),
    /// A dependency (metadata, idempotency store) is not reachable.
    #[error("{0}")]
    DependencyUnavailable(String),
    /// A bug or an unexpected failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl KvError {
    /// A quorum failure with the reasons given by the failed replicas.
    pub fn unavailable(what: &'static str, got: usize, needed: usize, reasons: &[String]) -> Self {
        let detail = if reasons.is_empty() { String::new() } else { format!("; {}", reasons.join("; ")) };
        KvError::Unavailable { what, got, needed, detail, maybe_applied: false }
    }

    /// The same failure, marked as a write some replica may hold.
    pub fn applied_somewhere(self) -> Self {
        match self {
            KvError::Unavailable { what, got, needed, detail, .. } => {
                KvError::Unavailable { what, got, needed, detail, maybe_applied: true }
            }
            other => other,
        }
    }

    /// Whether the failed request is a write some replica may have applied:
    /// its outcome is unknown, and only a retry under the same idempotency
    /// key can settle it without applying it twice.
    pub fn maybe_applied(&self) -> bool {
        matches!(self, KvError::WriteOutcomeUnknown(_) | KvError::Unavailable { maybe_applied: true, .. })
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            KvError::InvalidArgument(_) => "invalid_argument",
            KvError::TenantNotFound(_) | KvError::NotFound(_) => "not_found",
            KvError::AlreadyExists(_) => "already_exists",
            KvError::Unavailable { .. } | KvError::DependencyUnavailable(_) => "unavailable",
            KvError::StaleRing(_) => "stale_ring",
            KvError::DeadlineExceeded(_) => "deadline_exceeded",
            KvError::WriteOutcomeUnknown(_) => "outcome_unknown",
            KvError::FailedPrecondition(_) => "failed_precondition",
            KvError::Contended(_) => "contended",
            KvError::ResourceExhausted(_) => "resource_exhausted",
            KvError::Internal(_) => "internal",
        }
    }
}

impl From<KvError> for Status {
    fn from(error: KvError) -> Status {
        let message = error.to_string();
        let maybe_applied = error.maybe_applied();
        let mut status = match error {
            KvError::InvalidArgument(_) => Status::invalid_argument(message),
            KvError::TenantNotFound(_) | KvError::NotFound(_) => Status::not_found(message),
            KvError::AlreadyExists(_) => Status::already_exists(message),
            KvError::Unavailable { .. } | KvError::DependencyUnavailable(_) | KvError::StaleRing(_) => {
                Status::unavailable(message)
            }
            KvError::DeadlineExceeded(_) | KvError::WriteOutcomeUnknown(_) => Status::deadline_exceeded(message),
            KvError::FailedPrecondition(_) => Status::failed_precondition(message),
            KvError::Contended(_) => Status::aborted(message),
            KvError::ResourceExhausted(_) => Status::resource_exhausted(message),
            KvError::Internal(_) => Status::internal(message),
        };
        if maybe_applied {
            // Some replica may hold the write: a retry must not apply it again.
            status.metadata_mut().insert(OUTCOME_HEADER, tonic::metadata::MetadataValue::from_static("unknown"));
        }
        status
    }
}
