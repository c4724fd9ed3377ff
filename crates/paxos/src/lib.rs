//! The pure core of Cohort's linearizable registers.
//!
//! Every key of a tenant's linearizable key space is a *register*: a value
//! (or none), a version that grows by one with every change, and the id of
//! the write that made it. Its replicas agree on each change by a round of
//! single-decree Paxos in the style of CASPaxos: the proposer gathers
//! promises from a quorum, takes the register accepted under the highest
//! ballot, applies the operation to it, and has a quorum accept the result.
//! The accepted state *is* the register, so there is no separate commit
//! step, and an acceptor's state is one small record per key.
//!
//! - [`ballot`]: [`Ballot`], unique across proposers and ordered.
//! - [`register`]: [`Register`], the operations on it ([`Change`]) and what
//!   applying one decides.
//! - [`acceptor`]: [`AcceptorState`], its prepare and accept rules and its
//!   storage encoding.
//! - [`proposer`]: [`Proposer`], a sans-I/O engine: the driver feeds it
//!   answers and failures, it emits [`Command`]s (send these, wait, finish).
//! - `wire` (feature `wire`): conversions to and from the internal API's
//!   messages, shared by the storage node and the coordinator.
//!
//! Nothing here does I/O or reads a clock: the driver passes the time in.
//! **Invariant:** a proposer answers only what a quorum of every replica set
//! it was given has accepted, or what every member of such a quorum
//! reported accepted under the same ballot.

pub mod acceptor;
pub mod ballot;
pub mod proposer;
pub mod register;
#[cfg(feature = "wire")]
pub mod wire;

pub use acceptor::{AcceptAnswer, AcceptorState, PrepareAnswer};
pub use ballot::Ballot;
pub use proposer::{Command, Failure, Outcome, Proposer, Step};
pub use register::{Change, Fence, RecentWrite, Register};

/// A record that could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("corrupt paxos record: {0}")]
pub struct DecodeError(pub &'static str);
