//! Records what clients of a Cohort cluster did and audits it against the
//! guarantees of ARCHITECTURE.md ("Guarantees the tests prove").
//!
//! A test drives a cluster, records every request in a [`History`], heals its
//! faults, lets repair run, reads every key at consistency `all` into a
//! [`FinalState`], optionally dumps every replica's copy of every key into
//! [`ReplicaStates`], and hands all of it to [`audit`] (or to the individual
//! checks). This crate is pure: no async runtime, no network, no disk — the
//! recorder and the checks can be tested alone.
//!
//! ```
//! use cohort_checker::{FinalState, History, OpKind, Outcome, audit};
//!
//! let mut history = History::new(); // share it behind a Mutex between clients
//! let put = history.invoke(1, "cart", OpKind::put("apple#1", vec![]));
//! history.complete(put, Outcome::ok());
//! let read = history.invoke(2, "cart", OpKind::Read);
//! history.complete(read, Outcome::read(vec!["apple#1".into()]));
//! // A write carrying the context of that read replaces what it returned.
//! let rmw = history.invoke(2, "cart", OpKind::put("apple,pear#2", vec!["apple#1".into()]));
//! history.complete(rmw, Outcome::Unknown); // e.g. Unavailable: it may have applied
//!
//! let final_state = FinalState::from([("cart".to_string(), vec!["apple,pear#2".to_string()])]);
//! let verdict = audit(&history, &final_state, None);
//! assert!(verdict.is_ok(), "{verdict}");
//! assert_eq!(verdict.summary().unknown_observed, 1);
//! ```
//!
//! Fenced writes have theirs, [`fencing`]: tokens never go down in the
//! order a key applied its writes. Linearizable keys (compare-and-set) have
//! their own checker,
//! [`linearizable`]: the Wing–Gong search with Lowe's memoisation over a
//! versioned register, [`check_register`].
//!
//! # Model
//!
//! - A [`Value`] is a string the recorder makes **unique per write** across
//!   the whole history, so a value names the write that produced it.
//!   [`check_history`] reports a value written twice.
//! - An [`Op`] is one request by one `client` on one `key`, with the time it
//!   was invoked and (if it ever came back) completed, on one clock.
//! - [`OpKind::Write`] is a put (`value: Some`) or a delete (`value: None`,
//!   a tombstone write). Its `replaces` lists the live siblings returned by
//!   the read whose causal context the write carried; empty for a blind
//!   write. [`OpKind::Read`] returns every live sibling.
//! - [`Outcome::Ok`] is an acknowledgement (for a read, with the siblings
//!   returned). [`Outcome::Failed`] means *definitely not applied*: refused
//!   before any replica saw it (`InvalidArgument`, `NotFound`,
//!   `FailedPrecondition`). [`Outcome::Unknown`] means *may or may not have
//!   applied*: a timeout, a connection error, an operation that never came
//!   back, and `Unavailable` — a write that got 1 of 2 acknowledgements did
//!   apply on one replica. Recorders must not classify `Unavailable` writes
//!   as failed.
//! - The [`FinalState`] holds, per key, the live values after faults healed
//!   and repair ran; a key missing from it counts as empty.
//! - [`ReplicaStates`] holds, per key, each replica's live values and its
//!   opaque encoded state, compared for byte equality.
//!
//! # What each check proves, and what it does not
//!
//! - [`check_history`]: the record itself is well formed (unique op ids and
//!   written values, completion after invocation, a completion time for every
//!   definite outcome). Its errors make the other verdicts unreliable.
//! - [`check_no_lost_writes`] (invariant 1): every acknowledged put's value
//!   is in the final state, unless another write that may have applied
//!   (acknowledged or unknown) listed it in `replaces`. Proves that no
//!   acknowledged write vanished *by the end* of the run. Does not prove that
//!   every quorum read *during* the run saw it, and it is lenient towards
//!   unknown writes: an unknown write that claims to replace a value excuses
//!   its absence even if that write never applied.
//! - [`check_no_resurrection`] (invariant 4): no value an acknowledged delete
//!   replaced is live in the final state. A value written concurrently with
//!   the delete (not in its `replaces`) may legitimately survive as a
//!   sibling. Proves nothing about unknown deletes, and nothing about the
//!   tombstone itself (tombstones are not live values).
//! - [`check_no_revived_siblings`] (invariant 2, "replaces exactly those"):
//!   the same for acknowledged puts — no sibling a put replaced is live in
//!   the final state.
//! - [`check_no_phantoms`]: every value returned by a successful read (and
//!   every final value) was written to that key by a write that is
//!   acknowledged or unknown (a failed write was never applied, so its value
//!   is a phantom), and not only by writes invoked after the read completed;
//!   a value listed twice in one answer (one write applied twice, e.g. a
//!   retry not deduplicated — invariant 5) is a phantom copy. Does not prove
//!   that an unknown write whose value was seen applied only once.
//! - [`check_causal_chains`] (invariant 2): on keys written by a single
//!   client, sequentially, each write carrying the context of a read that saw
//!   the previous write, the final state is exactly the last write's value
//!   (none after a final delete), and no read lying between two writes that
//!   sees the earlier one also returns older siblings. Keys that do not
//!   qualify (several writers, overlapping or uncertain operations, a write
//!   without a linking read or with another context, a stale linking read)
//!   are skipped and counted, not judged. Multi-writer keys are covered only
//!   by the other checks.
//! - [`check_convergence`] (invariant 3): all listed replicas of each key
//!   hold byte-equal encoded states. It only compares what it is given: a
//!   replica left out of the list is not checked.
//!
//! None of the checks judges **stale reads**: a read during the run that
//! misses a value acknowledged (or one that was superseded) before the read
//! was invoked is not reported. Dynamo-style stores legitimately return
//! stale answers at weak consistency levels, under sloppy quorums and while
//! repair lags, and the history does not record the consistency level used.
//! Nor is this a linearizability checker: Cohort does not promise
//! linearizability for plain key-value operations.

mod causal;
mod convergence;
pub mod fencing;
mod history;
pub mod linearizable;
mod lost;
mod phantom;
mod verdict;

pub use causal::{CausalReport, CausalViolation, CausalViolationKind, SkipReason, SkippedKey, check_causal_chains};
pub use convergence::{
    ConvergenceReport, DivergentKey, ReplicaState, ReplicaStates, ReplicaView, check_convergence, same_replica_states,
};
pub use fencing::{
    FencedWrite, Grant, StaleWrite, TimedWrite, check_fencing, check_fencing_in_time, check_grant_order,
};
pub use history::{
    FinalState, History, HistoryError, HistoryReport, JsonLinesError, Op, OpHandle, OpKind, Outcome, Value,
    check_history,
};
pub use linearizable::{NotLinearizable, RegisterCall, RegisterOp, RegisterReturn, RegisterState, check_register};
pub use lost::{
    LostWrite, LostWritesReport, Resurrection, ResurrectionReport, RevivedReport, check_no_lost_writes,
    check_no_resurrection, check_no_revived_siblings,
};
pub use phantom::{Phantom, PhantomCause, PhantomReport, PhantomSource, check_no_phantoms};
pub use verdict::{Summary, Verdict, audit};
