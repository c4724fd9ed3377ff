//! The Cohort coordinator.
//!
//! A coordinator holds no data of its own. For every request it looks up the
//! tenant, finds the key's preference list on the ring, and drives the
//! replicas: writes go through a coordinating replica that issues the new
//! version and replicates it; reads ask all N replicas, answer after R, merge
//! the siblings and repair replicas that differ.
//!
//! - [`config`]: the coordinator's settings, in sections.
//! - [`error`]: [`KvError`], the coordinator's one error type, shaped for
//!   clients.
//! - [`validate`]: input limits and identifier rules, checked before anything
//!   is stored.
//! - [`metadata`]: the metadata store contract (tenants, nodes, ring history
//!   and migrations, leader lease, node health) and its embedded and
//!   PostgreSQL implementations.
//! - [`contexts`]: sealing the causal contexts handed to clients, and
//!   opening the ones they send back.
//! - [`topology`]: the current ring and node addresses, refreshed from metadata.
//! - [`tenants`]: the tenant cache.
//! - [`kv`]: the quorum write and read paths, and read repair.
//! - [`service`] and [`admin`]: the public gRPC services (`KeyValue`,
//!   `Admin`); conversion between wire and domain types happens only there.
//! - [`registers`]: linearizable operations — the driver of the pure
//!   Paxos proposer (`cohort-paxos`) over the transport, with a majority of
//!   the key's replicas in every live ring version as electorate;
//!   [`coord`]: the public `Cas` gRPC service over it.
//! - [`server`]: wiring — serve on a bound listener until shutdown.
//! - [`membership`]: planning ring changes and the leader's worker that
//!   moves data for them (join, leave, remove dead).
//! - [`repair`]: anti-entropy — the leader's exchanges of hash-tree digests
//!   between the replicas of every range, the sync of the keys that differ,
//!   and the reaping of tombstones every replica holds.
//! - [`leader`]: leader election over the metadata lease, whose generation
//!   fences the leader's jobs; [`probe`]: the leader's node reachability
//!   probe, recorded in metadata under that fence.
//!
//! Background loops run on the `cohort-worker` runner, whose statuses the
//! admin API shows. Storage nodes are reached only through `cohort-transport`
//! (`PeerPool`, `within`, `Liveness`); idempotency records live in
//! `cohort-idempotency`.
//!
//! **Architecture invariants:** the coordinator never issues a dot or keeps
//! a clock of its own; versions are created only by storage nodes. It never
//! depends on `cohort-node` or on a storage engine.

pub mod admin;
pub mod config;
pub mod contexts;
pub mod coord;
pub mod error;
pub mod kv;
pub mod leader;
pub mod membership;
pub mod metadata;
pub mod probe;
pub mod registers;
pub mod repair;
pub mod server;
pub mod service;
pub mod tenants;
pub mod topology;
pub mod validate;

pub use config::{CoordinatorConfig, IdempotencyFallback, ReadRepairMode};
pub use error::KvError;
pub use server::{Coordinator, Readiness, serve};
