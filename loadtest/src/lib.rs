//! Cohort's load and verification harness, as a library: the recorded
//! workload shared by `cohort-loadtest verify` and the fault scenarios of the
//! test suite.

pub mod workload;
