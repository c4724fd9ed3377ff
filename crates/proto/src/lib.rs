//! Generated protobuf messages and gRPC stubs for Cohort.
//!
//! The `.proto` sources live in `proto/` at the repository root:
//! `cohort/v1` holds the public APIs (key-value, admin) that clients use,
//! `cohort/coord/v1` the public coordination API (compare-and-set),
//! `cohort/internal/v1` the storage API between coordinators and nodes,
//! compiled only with the `internal` feature. Nothing but generated code
//! belongs here: conversions between these wire types and domain types live
//! next to the services that use them.

#![allow(missing_docs, clippy::all)]

/// `cohort.v1`: the public key-value and admin APIs.
pub mod v1 {
    tonic::include_proto!("cohort.v1");
}

/// The public coordination APIs.
pub mod coord {
    /// `cohort.coord.v1`: linearizable compare-and-set.
    pub mod v1 {
        tonic::include_proto!("cohort.coord.v1");
    }
}

/// The internal APIs, between coordinators and storage nodes.
#[cfg(feature = "internal")]
pub mod internal {
    /// `cohort.internal.v1`: the storage API.
    pub mod v1 {
        tonic::include_proto!("cohort.internal.v1");
    }
}
