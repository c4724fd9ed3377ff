//! Calls to replicas under a deadline, and why one failed.
//!
//! Every call a coordinator or a coordinating replica makes to a replica
//! goes through [`within`], which bounds it by a deadline and classifies a
//! failure once, as a typed [`ReplicaFailure`]: whether the request never
//! left, was refused (with its status code), or got no answer — the
//! distinction that decides whether a write may have been applied.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use cohort_proto::internal::v1::{FailureKind, PeerFailure};
use tonic::Code;

use crate::client::NodeError;

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

impl ReplicaFailure {
    /// The failure as a coordinating replica reports it for `node_id`.
    pub fn to_pb(&self, node_id: &str) -> PeerFailure {
        let (kind, code, timeout_ms) = match self {
            ReplicaFailure::NotSent(_) => (FailureKind::NotSent, 0, 0),
            ReplicaFailure::Refused { code, .. } => (FailureKind::Refused, *code as i32, 0),
            ReplicaFailure::Lost(_) => (FailureKind::Lost, 0, 0),
            ReplicaFailure::TimedOut(deadline) => {
                (FailureKind::TimedOut, 0, deadline.as_millis().min(u32::MAX.into()) as u32)
            }
        };
        let reason = match self {
            ReplicaFailure::NotSent(why) | ReplicaFailure::Lost(why) => why.clone(),
            ReplicaFailure::Refused { message, .. } => message.clone(),
            ReplicaFailure::TimedOut(_) => String::new(),
        };
        PeerFailure { node_id: node_id.to_string(), reason, kind: kind as i32, code, timeout_ms }
    }

    /// A reported failure. An unknown kind counts as lost: nothing is
    /// assumed about whether the replica acted.
    pub fn from_pb(failure: &PeerFailure) -> Self {
        let why = failure.reason.clone();
        match FailureKind::try_from(failure.kind).unwrap_or(FailureKind::Unspecified) {
            FailureKind::NotSent => ReplicaFailure::NotSent(why),
            FailureKind::Refused => ReplicaFailure::Refused { code: Code::from(failure.code), message: why },
            FailureKind::TimedOut => ReplicaFailure::TimedOut(Duration::from_millis(failure.timeout_ms.into())),
            FailureKind::Lost | FailureKind::Unspecified => ReplicaFailure::Lost(why),
        }
    }
}

/// Runs `call` for at most `deadline`.
pub fn within<T, F>(deadline: Duration, call: F) -> impl Future<Output = Result<T, ReplicaFailure>> + use<T, F>
where
    F: Future<Output = Result<T, NodeError>>,
{
    // Built here, not inside the async block, so that the future holds the
    // call once (inside the timeout) rather than twice.
    let timed = tokio::time::timeout(deadline, call);
    async move {
        match timed.await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(ReplicaFailure::TimedOut(deadline)),
        }
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

    #[test]
    fn a_reported_failure_keeps_its_kind_across_the_wire() {
        let failures = [
            ReplicaFailure::NotSent("no route".into()),
            ReplicaFailure::Refused { code: Code::FailedPrecondition, message: "cap".into() },
            ReplicaFailure::Lost("eof".into()),
            ReplicaFailure::TimedOut(Duration::from_millis(250)),
        ];
        for failure in failures {
            let reported = failure.to_pb("n2");
            assert_eq!(reported.node_id, "n2");
            assert_eq!(ReplicaFailure::from_pb(&reported), failure);
        }
        let unknown = PeerFailure { node_id: "n2".into(), reason: "?".into(), kind: 99, ..Default::default() };
        assert!(ReplicaFailure::from_pb(&unknown).may_have_acted(), "an unknown kind assumes nothing");
    }
}
