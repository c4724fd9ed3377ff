//! The Cohort storage node.
//!
//! A storage node keeps, for every key it replicates, the key's sibling set
//! (see [`cohort_ring::dvv`]) in a fjall keyspace on local disk, and serves the
//! internal `Storage` gRPC API to coordinators and to the other nodes.
//!
//! - [`config`]: the node's settings.
//! - [`store`]: the durable sibling-set store.
//! - [`commit`]: group commit — one journal sync, run by the first writer
//!   that finds none running, covers every write staged before it.
//! - [`handler`]: [`StorageNode`], the node's handling of each internal
//!   operation, including the coordinating-replica write path that applies
//!   a new version and fans it out to the other replicas. It implements the
//!   transport's `StorageHandler`; the gRPC service, the pipelined stream
//!   and the clients of other nodes live in `cohort-transport`.
//! - [`acceptor`]: the Paxos acceptor of the linearizable key space
//!   (`Prepare`, `Accept`), its state one record per key in a keyspace of
//!   its own, durable before it answers.
//! - [`trees`]: the in-memory anti-entropy hash trees the store keeps in
//!   step with every change.
//! - [`hints`]: hinted handoff — the worker that delivers the hints the
//!   write path keeps for peers that did not acknowledge.
//! - [`server`]: wiring — open the store, start the node's workers, serve on
//!   a bound listener until a shutdown future completes.
//!
//! **Architecture invariant:** a node never issues a dot except from its own
//! durable state under the key's lock, and never acknowledges a write before
//! the group commit that covers it has completed.

pub mod acceptor;
pub mod commit;
pub mod config;
pub mod handler;
pub mod hints;
pub mod server;
pub mod store;
pub mod trees;

pub use config::{Durability, HintsConfig, NodeConfig};
pub use handler::StorageNode;
pub use server::{NodeHandle, serve, serve_with};
pub use store::{Store, StoreError};
