//! The Paxos acceptor of the linearizable key space: the node's side of
//! `Prepare` and `Accept`. The rules are `cohort_paxos::AcceptorState`'s;
//! this module applies them to the stored record under the key's lock and
//! answers only once a changed record is durable.

use cohort_paxos::wire;
use cohort_proto::internal::v1::{AcceptRequest, AcceptResponse, PrepareRequest, PrepareResponse};
use tonic::Status;

use crate::store::{Store, StoreError};

/// Largest register value an acceptor takes (the coordinators enforce the
/// tenant's own limit, which is lower).
const MAX_REGISTER_BYTES: usize = 4 * 1024 * 1024;
/// Most fences a register keeps (distinct locks that fenced its writes).
const MAX_FENCES: usize = 1024;
/// Longest lock name of a fence.
const MAX_LOCK_NAME_BYTES: usize = 1024;
/// Largest write id an acceptor takes.
const MAX_WRITE_ID_BYTES: usize = 64;

/// Promises the request's ballot unless a higher one was promised; a peek
/// only reports what was accepted last.
pub async fn prepare(store: &Store, request: PrepareRequest) -> Result<PrepareResponse, StoreError> {
    if request.peek {
        let accepted = store.acceptor_step(&request.tenant, &request.key, request.ring_version, |state| {
            (state.accepted.clone(), false)
        })?;
        return Ok(wire::prepare_answer_to_pb(&cohort_paxos::PrepareAnswer::Promised(accepted)));
    }
    let ballot = wire::ballot_from_pb(request.ballot.as_ref());
    let (answer, changed) = store.acceptor_step(&request.tenant, &request.key, request.ring_version, |state| {
        let (answer, changed) = state.prepare(ballot);
        ((answer, changed), changed)
    })?;
    if changed {
        store.durable().await?;
    }
    Ok(wire::prepare_answer_to_pb(&answer))
}

/// Checks an accept's register before anything is stored.
pub fn check_accept(request: &AcceptRequest) -> Result<(), Status> {
    let Some(register) = &request.register else {
        return Err(Status::invalid_argument("an accept carries a register"));
    };
    if register.value.as_ref().is_some_and(|v| v.len() > MAX_REGISTER_BYTES) {
        return Err(Status::invalid_argument(format!("a register value is at most {MAX_REGISTER_BYTES} bytes")));
    }
    if register.recent.len() > cohort_paxos::register::RECENT_WRITES {
        return Err(Status::invalid_argument(format!(
            "a register remembers at most {} writes",
            cohort_paxos::register::RECENT_WRITES
        )));
    }
    if register.fences.len() > MAX_FENCES
        || register.fences.iter().any(|f| f.lock.is_empty() || f.lock.len() > MAX_LOCK_NAME_BYTES)
    {
        return Err(Status::invalid_argument(format!(
            "a register keeps at most {MAX_FENCES} fences, each naming a lock of 1..={MAX_LOCK_NAME_BYTES} bytes"
        )));
    }
    if register.recent.iter().any(|w| w.id.len() > MAX_WRITE_ID_BYTES) {
        return Err(Status::invalid_argument(format!("a write id is at most {MAX_WRITE_ID_BYTES} bytes")));
    }
    Ok(())
}

/// Accepts the request's register unless a higher ballot was promised.
pub async fn accept(store: &Store, request: AcceptRequest) -> Result<AcceptResponse, StoreError> {
    let ballot = wire::ballot_from_pb(request.ballot.as_ref());
    let register = wire::register_from_pb(request.register);
    let (answer, changed) = store.acceptor_step(&request.tenant, &request.key, request.ring_version, |state| {
        let (answer, changed) = state.accept(ballot, register);
        ((answer, changed), changed)
    })?;
    if changed {
        store.durable().await?;
    }
    Ok(wire::accept_answer_to_pb(&answer))
}
