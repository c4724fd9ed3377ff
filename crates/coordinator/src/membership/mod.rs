//! Membership changes: nodes joining, leaving and removed as dead, without
//! losing a write.
//!
//! - [`plan`]: the next ring version's nodes and what a change moves (pure).
//! - [`mover`]: the leader's worker that fences the nodes, copies the moving
//!   ranges, retires the old version and cleans up, checkpointing every
//!   range in metadata.
//!
//! The admin service proposes a change (one metadata transaction appends
//! the ring version and records the migration); the mover carries it out.

pub mod mover;
pub mod plan;

pub use mover::{Mover, percent};
pub use plan::{Change, PlanError};
