//! Conversions between the pure types and the internal API's messages.

use cohort_proto::internal::v1 as pb;

use crate::acceptor::{AcceptAnswer, PrepareAnswer};
use crate::ballot::Ballot;
use crate::register::{Fence, RecentWrite, Register};

/// A ballot on the wire.
pub fn ballot_to_pb(ballot: Ballot) -> pb::Ballot {
    pb::Ballot { round: ballot.round, proposer: ballot.proposer }
}

/// A ballot from the wire (absent: [`Ballot::ZERO`]).
pub fn ballot_from_pb(ballot: Option<&pb::Ballot>) -> Ballot {
    ballot.map_or(Ballot::ZERO, |b| Ballot { round: b.round, proposer: b.proposer })
}

/// A register on the wire.
pub fn register_to_pb(register: &Register) -> pb::Register {
    pb::Register {
        version: register.version,
        value: register.value.clone(),
        recent: register.recent.iter().map(|w| pb::RecentWrite { id: w.id.clone(), version: w.version }).collect(),
        fences: register.fences.iter().map(|f| pb::FenceToken { lock: f.lock.clone(), token: f.token }).collect(),
    }
}

/// A register from the wire (absent: never written).
pub fn register_from_pb(register: Option<pb::Register>) -> Register {
    register.map_or_else(Register::default, |r| Register {
        version: r.version,
        value: r.value,
        recent: r.recent.into_iter().map(|w| RecentWrite { id: w.id, version: w.version }).collect(),
        fences: r.fences.into_iter().map(|f| Fence { lock: f.lock, token: f.token }).collect(),
    })
}

/// A prepare's answer on the wire.
pub fn prepare_answer_to_pb(answer: &PrepareAnswer) -> pb::PrepareResponse {
    match answer {
        PrepareAnswer::Refused(promised) => {
            pb::PrepareResponse { granted: false, promised: Some(ballot_to_pb(*promised)), ..Default::default() }
        }
        PrepareAnswer::Promised(accepted) => pb::PrepareResponse {
            granted: true,
            promised: None,
            accepted_ballot: accepted.as_ref().map(|(ballot, _)| ballot_to_pb(*ballot)),
            accepted: accepted.as_ref().map(|(_, register)| register_to_pb(register)),
        },
    }
}

/// A prepare's answer from the wire.
pub fn prepare_answer_from_pb(response: pb::PrepareResponse) -> PrepareAnswer {
    if !response.granted {
        return PrepareAnswer::Refused(ballot_from_pb(response.promised.as_ref()));
    }
    match response.accepted_ballot {
        None => PrepareAnswer::Promised(None),
        Some(ballot) => {
            PrepareAnswer::Promised(Some((ballot_from_pb(Some(&ballot)), register_from_pb(response.accepted))))
        }
    }
}

/// An accept's answer on the wire.
pub fn accept_answer_to_pb(answer: &AcceptAnswer) -> pb::AcceptResponse {
    match answer {
        AcceptAnswer::Accepted => pb::AcceptResponse { accepted: true, promised: None },
        AcceptAnswer::Refused(promised) => {
            pb::AcceptResponse { accepted: false, promised: Some(ballot_to_pb(*promised)) }
        }
    }
}

/// An accept's answer from the wire.
pub fn accept_answer_from_pb(response: pb::AcceptResponse) -> AcceptAnswer {
    if response.accepted {
        AcceptAnswer::Accepted
    } else {
        AcceptAnswer::Refused(ballot_from_pb(response.promised.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn answers_survive_the_wire() {
        let b = Ballot { round: 3, proposer: 4 };
        let recent = vec![RecentWrite { id: Bytes::from_static(b"w"), version: 2 }];
        let fences = vec![Fence { lock: "l".into(), token: 3 }];
        let r = Register { version: 2, value: Some(Bytes::from_static(b"v")), recent, fences };
        for answer in [PrepareAnswer::Refused(b), PrepareAnswer::Promised(None), PrepareAnswer::Promised(Some((b, r)))]
        {
            assert_eq!(prepare_answer_from_pb(prepare_answer_to_pb(&answer)), answer);
        }
        for answer in [AcceptAnswer::Accepted, AcceptAnswer::Refused(b)] {
            assert_eq!(accept_answer_from_pb(accept_answer_to_pb(&answer)), answer);
        }
    }
}
