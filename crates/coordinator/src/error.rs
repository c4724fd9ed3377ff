//! The coordinator's error type, shaped for its callers, and its one
//! translation to gRPC status codes.

use tonic::Status;

/// Response metadata set on a failed write that some replica may have
/// applied (`unknown`): retrying it blindly could apply it twice.
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
    },
    /// The request ran out of time.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A precondition failed: a stale version, or an idempotency key reused
    /// with a different request.
    #[error("{0}")]
    FailedPrecondition(String),
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
        KvError::Unavailable { what, got, needed, detail }
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            KvError::InvalidArgument(_) => "invalid_argument",
            KvError::TenantNotFound(_) | KvError::NotFound(_) => "not_found",
            KvError::AlreadyExists(_) => "already_exists",
            KvError::Unavailable { .. } | KvError::DependencyUnavailable(_) => "unavailable",
            KvError::DeadlineExceeded(_) => "deadline_exceeded",
            KvError::FailedPrecondition(_) => "failed_precondition",
            KvError::Internal(_) => "internal",
        }
    }
}

impl From<KvError> for Status {
    fn from(error: KvError) -> Status {
        let message = error.to_string();
        match error {
            KvError::InvalidArgument(_) => Status::invalid_argument(message),
            KvError::TenantNotFound(_) | KvError::NotFound(_) => Status::not_found(message),
            KvError::AlreadyExists(_) => Status::already_exists(message),
            KvError::Unavailable { what: "write", got, .. } if got > 0 => {
                // Some replica holds the write: a retry must not apply it again.
                let mut status = Status::unavailable(message);
                status.metadata_mut().insert(OUTCOME_HEADER, tonic::metadata::MetadataValue::from_static("unknown"));
                status
            }
            KvError::Unavailable { .. } | KvError::DependencyUnavailable(_) => Status::unavailable(message),
            KvError::DeadlineExceeded(_) => Status::deadline_exceeded(message),
            KvError::FailedPrecondition(_) => Status::failed_precondition(message),
            KvError::Internal(_) => Status::internal(message),
        }
    }
}
