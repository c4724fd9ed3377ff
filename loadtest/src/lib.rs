//! Cohort's load and verification harness, as a library: the recorded
//! workloads shared by `cohort-loadtest verify` and the fault scenarios of the
//! test suite (key-value in `workload`, compare-and-set in `registers`,
//! locks with fencing in `locking`), the YCSB key and operation generators of `cohort-loadtest run`,
//! and the no-op gRPC service of `cohort-loadtest noop-server`.

pub mod generator;
pub mod locking;
pub mod registers;
pub mod workload;

/// `cohort.loadtest.v1`: a gRPC service that does nothing (`proto/noop.proto`).
#[allow(missing_docs, clippy::all)]
pub mod noop {
    tonic::include_proto!("cohort.loadtest.v1");
}
