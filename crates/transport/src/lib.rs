//! Calls between Cohort processes.
//!
//! The transport owns everything about reaching a storage node, and nothing
//! about what a node does with a request:
//!
//! - [`handler`]: the [`StorageHandler`] trait a storage node implements;
//!   the transport calls it, the node never calls the transport back to
//!   answer.
//! - [`endpoint`]: a node's listener, which serves framed pipeline
//!   connections and hands the others to the internal `Storage` gRPC
//!   service over a handler; the listener settings.
//! - [`framed`]: the pipeline's wire, length-prefixed protobuf frames on a
//!   TCP connection, written by the sending task on a quiet connection and
//!   in batches on a busy one.
//! - [`client`]: [`PeerPool`] and [`NodeClient`], one long-lived pipeline
//!   connection per node, and [`NodeError`] (not sent, refused, lost).
//! - [`directory`]: [`InProcessNodes`], the handlers served by this process,
//!   called without the network.
//! - [`fanout`]: calls under a deadline, classified once as a typed
//!   [`ReplicaFailure`].
//! - [`liveness`]: the one per-process view of which replicas are believed
//!   down, shared by the read and write paths and the probe.
//! - [`limits`]: message and flow-control limits of the internal API.
//!
//! **Architecture invariant:** this crate knows the internal wire types and
//! nothing of storage, rings or tenants; it depends only on `cohort-proto`.

pub mod client;
pub mod directory;
pub mod endpoint;
pub mod fanout;
pub mod framed;
pub mod handler;
pub mod limits;
pub mod liveness;

pub use client::{NodeClient, NodeError, PeerPool};
pub use directory::InProcessNodes;
pub use endpoint::{GrpcConnections, PipelineConnections, StorageEndpoint, incoming, listen};
pub use fanout::{ReplicaFailure, within};
pub use handler::StorageHandler;
pub use liveness::Liveness;
