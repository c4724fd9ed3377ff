//! The public coordination services (`cohort.coord.v1`): compare-and-set
//! ([`cas`]), leases, locks and election ([`recipes`], over
//! `cohort-recipes`), versioned configuration with watch ([`config`]) and
//! the service registry ([`registry`]), all on the linearizable registers of
//! [`crate::registers`]; [`watch`] serves the watches of both, and [`view`]
//! the registry's discovery from memory.
//!
//! As in [`crate::service`], requests are validated while they are
//! converted, nothing is stored for a bad one, and errors become a gRPC
//! status once, on the way out.

pub mod cas;
pub mod config;
pub mod recipes;
pub mod registry;
pub mod view;
pub mod watch;

use std::sync::Arc;

use bytes::Bytes;
use cohort_paxos::{Change, Fence, Outcome};
use cohort_recipes::RecipeError;
use tonic::Status;

use crate::error::KvError;
use crate::server::Coordinator;

pub use cas::CasService;
pub use config::ConfigService;
pub use recipes::{ElectionService, LeaseService, LockService};
pub use registry::RegistryService;

/// The coordinator's registers, as the recipes see them: by tenant id.
pub struct TenantRegisters {
    coordinator: Arc<Coordinator>,
}

impl TenantRegisters {
    /// The registers of `coordinator`.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        TenantRegisters { coordinator }
    }
}

#[tonic::async_trait]
impl cohort_recipes::Registers for TenantRegisters {
    async fn run(&self, tenant: &str, key: Bytes, change: Change, write: Bytes) -> Result<Outcome, RecipeError> {
        let c = &self.coordinator;
        let tenant = c.tenants.get(tenant).await.map_err(kv_to_recipe)?;
        c.registers.run(&tenant, key, change, write).await.map_err(kv_to_recipe)
    }
}

fn kv_to_recipe(error: KvError) -> RecipeError {
    match error {
        KvError::InvalidArgument(message) => RecipeError::InvalidArgument(message),
        KvError::TenantNotFound(_) | KvError::NotFound(_) => RecipeError::NotFound(error.to_string()),
        error if error.maybe_applied() => RecipeError::OutcomeUnknown(error.to_string()),
        error => RecipeError::Registers(error.to_string()),
    }
}

/// A fence must name a lock that exists and a token it issued: an unknown
/// lock is `NotFound`, a token above the lock's last grant (or 0)
/// `InvalidArgument`. Whether the token is still the newest is for the
/// key's replicas to judge, atomically with the write.
pub async fn check_fence(coordinator: &Arc<Coordinator>, tenant: &str, fence: &Fence) -> Result<(), KvError> {
    let limits = cohort_recipes::Limits::default();
    cohort_recipes::lock::check_name(&fence.lock, &limits).map_err(recipe_error)?;
    let registers = TenantRegisters::new(coordinator.clone());
    let bound = cohort_recipes::lock::issued_bound(&registers, tenant, &fence.lock).await.map_err(recipe_error)?;
    if bound == 0 {
        return Err(KvError::NotFound(format!("fence names lock {:?}, which does not exist", fence.lock)));
    }
    if fence.token == 0 || fence.token > bound {
        return Err(KvError::InvalidArgument(format!(
            "fence token {} was never issued by lock {:?}",
            fence.token, fence.lock
        )));
    }
    Ok(())
}

/// Checks a tenant id as a coordination request names it.
pub(crate) fn check_tenant(id: &str) -> Result<(), Status> {
    crate::validate::tenant_id(id).map_err(Status::from)
}

/// A recipe's error as the coordinator's.
pub fn recipe_error(error: RecipeError) -> KvError {
    match error {
        RecipeError::InvalidArgument(message) => KvError::InvalidArgument(message),
        RecipeError::NotFound(message) => KvError::NotFound(message),
        RecipeError::FailedPrecondition(message) => KvError::FailedPrecondition(message),
        RecipeError::ResourceExhausted(message) => KvError::ResourceExhausted(message),
        RecipeError::DeadlineExceeded(message) => KvError::DeadlineExceeded(message),
        RecipeError::OutcomeUnknown(message) => KvError::WriteOutcomeUnknown(message),
        RecipeError::Registers(message) => KvError::DependencyUnavailable(message),
    }
}

/// A recipe's error as a gRPC status.
pub fn recipe_status(error: RecipeError) -> Status {
    recipe_error(error).into()
}
