//! Calls to replicas under a deadline, and why one failed.
//!
//! Every call the coordinator makes to a replica goes through [`within`],
//! which bounds it by the node timeout and classifies a failure once, as a
//! typed [`ReplicaFailure`]: whether the request never left, was refused
//! (with its status code), or got no answer — the distinction that decides
//! whether a write may have been applied.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use cohort_node::peers::NodeError;
use tonic::Code;

/// Why a call to one replica failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaFailure {
    /// The request never left this process (no connection): the replica
    /// did nothing.
    NotSent(String),
    /// The replica answered with an error: it refused the operation.
    Refused {
        /// The status code it answered with.
        code: Code,
        /// Its message.
        message: String,
    },
    /// The request left but the connection broke before an answer: the
    /// replica may have acted on it.
    Lost(String),
    /// No answer came within the deadline: the replica may have acted on it.
    TimedOut(Duration),
}

impl ReplicaFailure {
    /// Whether the replica may have acted on the request.
    pub fn may_have_acted(&self) -> bool {
        matches!(self, ReplicaFailure::Lost(_) | ReplicaFailure::TimedOut(_))
    }
}

impl From<NodeError> for ReplicaFailure {
    fn from(error: NodeError) -> Self {
        match error {
            NodeError::NotSent(status) => ReplicaFailure::NotSent(status.message().to_string()),
            NodeError::Rejected(status) => {
                ReplicaFailure::Refused { code: status.code(), message: status.message().to_string() }
            }
            NodeError::Lost(status) => ReplicaFailure::Lost(status.message().to_string()),
        }
    }
}

impl fmt::Display for ReplicaFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicaFailure::NotSent(why) => write!(f, "not sent: {why}"),
            ReplicaFailure::Refused { code, message } => write!(f, "{code:?}: {message}"),
            ReplicaFailure::Lost(why) => write!(f, "connection lost before an answer: {why}"),
            ReplicaFailure::TimedOut(deadline) => write!(f, "no answer within {} ms", deadline.as_millis()),
        }
    }
}

/// Runs `call` for at most `deadline`.
pub async fn within<T>(
    deadline: Duration,
    call: impl Future<Output = Result<T, NodeError>>,
) -> Result<T, ReplicaFailure> {
    match tokio::time::timeout(deadline, call).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(error)) => Err(error.into()),
        Err(_) => Err(ReplicaFailure::TimedOut(deadline)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failures_are_classified_once() {
        let refused = within(Duration::from_secs(1), async {
            Err::<(), _>(NodeError::Rejected(tonic::Status::invalid_argument("bad")))
        });
        assert_eq!(refused.await, Err(ReplicaFailure::Refused { code: Code::InvalidArgument, message: "bad".into() }));
        let lost =
            within(Duration::from_secs(1), async { Err::<(), _>(NodeError::Lost(tonic::Status::unavailable("eof"))) });
        assert!(lost.await.unwrap_err().may_have_acted());
        let not_sent = within(Duration::from_secs(1), async {
            Err::<(), _>(NodeError::NotSent(tonic::Status::unavailable("no")))
        });
        assert!(!not_sent.await.unwrap_err().may_have_acted());
        let slow = within(Duration::from_millis(1), std::future::pending::<Result<(), NodeError>>());
        let failure = slow.await.unwrap_err();
        assert!(failure.may_have_acted());
        assert_eq!(failure.to_string(), "no answer within 1 ms");
    }
}
