//! Generated protobuf messages and gRPC stubs for Cohort.
//!
//! The `.proto` sources live in `proto/cohort/v1` at the repository root.
//! Nothing but generated code belongs here: conversions between these wire
//! types and domain types live next to the services that use them.

#![allow(missing_docs, clippy::all)]

/// `cohort.v1`: the public key-value and admin APIs and the internal storage API.
pub mod v1 {
    tonic::include_proto!("cohort.v1");
}
