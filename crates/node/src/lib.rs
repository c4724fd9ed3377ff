//! The Cohort storage node.
//!
//! A storage node keeps, for every key it replicates, the key's sibling set
//! (see [`cohort_ring::dvv`]) in a fjall keyspace on local disk, and serves the
//! internal `Storage` gRPC API to coordinators and to the other nodes.
//!
//! - [`store`]: the durable sibling-set store with group commit.
//! - [`service`]: the gRPC service, including the coordinating-replica write
//!   path that applies a new version and fans it out to the other replicas.
//! - [`peers`]: a cache of gRPC channels to other nodes, shared with
//!   coordinators.
//! - [`server`]: wiring — open the store, serve on a bound listener until a
//!   shutdown future completes.
//!
//! **Architecture invariant:** a node never issues a dot except from its own
//! durable state under the key's lock, and never acknowledges a write before
//! the group commit that covers it has completed.

pub mod config;
pub mod peers;
pub mod server;
pub mod service;
pub mod store;

pub use config::{Durability, NodeConfig};
pub use peers::InProcessNodes;
pub use server::{NodeHandle, serve, serve_with};
pub use store::{Store, StoreError};
