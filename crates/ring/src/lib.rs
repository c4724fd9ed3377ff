//! Pure placement and versioning logic for Cohort.
//!
//! This crate decides *where* a key lives and *how* its versions relate, and
//! nothing else: it performs no I/O, spawns no tasks and knows nothing of
//! tokio, files or sockets, so every decision it makes can be tested alone.
//!
//! - [`token`]: the 64-bit ring position of a `(tenant, key)` pair.
//! - [`ring`]: the consistent-hash ring with virtual nodes, preference and
//!   fallback lists.
//! - [`quorum`]: consistency levels and the arithmetic that turns them into
//!   replica counts.
//! - [`movement`]: which token ranges change owners between two rings.
//! - [`merkle`]: the shape of the anti-entropy hash trees (leaves, digest
//!   segments, what a key contributes).
//! - [`tally`]: whether the answers an operation got reach its quorum, over
//!   one replica set or several at once.
//! - [`dvv`]: dotted version vectors — sibling sets, their merge (sync) and
//!   the clock encoding nodes exchange.
//! - [`context`]: the causal context as clients hold it — bound to its key
//!   and sealed with a cluster secret.
//!
//! **Architecture invariant:** this crate never depends on an async runtime or
//! touches the network or the disk.

pub mod context;
pub mod dvv;
pub mod merkle;
pub mod movement;
pub mod quorum;
pub mod ring;
pub mod tally;
pub mod token;

pub use context::{ContextKey, TokenError};
pub use dvv::{
    Actor, CausalContext, DecodeError, Dot, DotsExhausted, Fence, Fenced, Sibling, SiblingSet, UpdateError,
    VersionVector,
};
pub use movement::{MovingRange, RangeOwners, TokenRange, moving_ranges};
pub use quorum::{Consistency, QuorumError, ReplicationConfig};
pub use ring::{NodeId, NodeSpec, Ring, RingError, valid_node_id};
pub use tally::{QuorumTally, Verdict};
pub use token::{Token, token_for};
