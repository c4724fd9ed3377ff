//! The public `Leases`, `Locks` and `Election` services, over
//! `cohort-recipes` on this coordinator's registers.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cohort_proto::coord::v1 as pb;
use cohort_proto::coord::v1::election_server::Election;
use cohort_proto::coord::v1::leases_server::Leases;
use cohort_proto::coord::v1::locks_server::Locks;
use cohort_recipes::lease::{self, Lease};
use cohort_recipes::lock;
use cohort_recipes::{Limits, RecipeError, SystemClock};
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::coord::{TenantRegisters, check_tenant as tenant, recipe_status};
use crate::server::Coordinator;

/// How often `Observe` looks at the leader.
const OBSERVE_EVERY: Duration = Duration::from_millis(100);

/// What the three services share.
#[derive(Clone)]
struct Recipes {
    registers: Arc<TenantRegisters>,
    limits: Limits,
    /// Turns true when the server starts shutting down.
    stopping: watch::Receiver<bool>,
}

impl Recipes {
    fn new(coordinator: Arc<Coordinator>, stopping: watch::Receiver<bool>) -> Self {
        Recipes { registers: Arc::new(TenantRegisters::new(coordinator)), limits: Limits::default(), stopping }
    }

    /// Runs `work` unless the server starts shutting down first.
    async fn unless_stopping<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, RecipeError>>,
    ) -> Result<T, RecipeError> {
        let mut stopping = self.stopping.clone();
        tokio::select! {
            result = work => result,
            () = stopped(&mut stopping) => {
                Err(RecipeError::Registers("the coordinator is shutting down; try another".into()))
            }
        }
    }

    fn ttl(ttl_ms: u64) -> Option<Duration> {
        (ttl_ms > 0).then(|| Duration::from_millis(ttl_ms))
    }

    /// `lease`, or a new one of `ttl_ms` when 0 (and whether it is new).
    async fn lease_for(&self, tenant: &str, lease: u64, ttl_ms: u64) -> Result<(Lease, bool), RecipeError> {
        if lease != 0 {
            let ttl = match lease::live(&*self.registers, &SystemClock, tenant, lease).await? {
                Some((state, _)) => Duration::from_millis(state.ttl_ms),
                None => {
                    return Err(RecipeError::NotFound(format!(
                        "lease {lease} not found: it expired, was revoked or never existed"
                    )));
                }
            };
            return Ok((Lease { id: lease, ttl }, false));
        }
        let granted = lease::grant(&*self.registers, &SystemClock, tenant, Self::ttl(ttl_ms), &self.limits).await?;
        Ok((granted, true))
    }

    /// Revokes a lease granted for a request that then failed.
    async fn drop_lease(&self, tenant: &str, lease: Lease, fresh: bool) {
        if fresh && let Err(error) = lease::revoke(&*self.registers, &SystemClock, tenant, lease.id).await {
            tracing::debug!(%error, lease = lease.id, "could not revoke the lease of a failed request; it expires");
        }
    }
}

/// Completes once `stopping` turns true; never, if its sender is gone.
/// Returns once `stopping` turns true (never, if its sender is gone).
pub(crate) async fn stopped(stopping: &mut watch::Receiver<bool>) {
    if stopping.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn record<T>(op: &'static str, started: Instant, result: &Result<T, RecipeError>) {
    let status = match result {
        Ok(_) => "ok",
        Err(error) => crate::coord::recipe_error(error.clone()).label(),
    };
    metrics::counter!("cohort_coord_requests_total", "op" => op, "status" => status).increment(1);
    metrics::histogram!("cohort_coord_request_duration_seconds", "op" => op).record(started.elapsed().as_secs_f64());
}

/// The public `Leases` service.
#[derive(Clone)]
pub struct LeaseService(Recipes);

impl LeaseService {
    /// The service over `coordinator`.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        LeaseService(Recipes::new(coordinator, watch::channel(false).1))
    }
}

#[tonic::async_trait]
impl Leases for LeaseService {
    async fn grant(&self, request: Request<pb::LeaseGrantRequest>) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let (started, r) = (Instant::now(), request.into_inner());
        tenant(&r.tenant)?;
        let result =
            lease::grant(&*self.0.registers, &SystemClock, &r.tenant, Recipes::ttl(r.ttl_ms), &self.0.limits).await;
        record("lease_grant", started, &result);
        let lease = result.map_err(recipe_status)?;
        Ok(Response::new(pb::LeaseGrantResponse { lease: lease.id, ttl_ms: lease.ttl.as_millis() as u64 }))
    }

    async fn keep_alive(
        &self,
        request: Request<pb::LeaseKeepAliveRequest>,
    ) -> Result<Response<pb::LeaseKeepAliveResponse>, Status> {
        let (started, r) = (Instant::now(), request.into_inner());
        tenant(&r.tenant)?;
        let result = lease::keep_alive(&*self.0.registers, &SystemClock, &r.tenant, r.lease).await;
        record("lease_keep_alive", started, &result);
        let lease = result.map_err(recipe_status)?;
        Ok(Response::new(pb::LeaseKeepAliveResponse { ttl_ms: lease.ttl.as_millis() as u64 }))
    }

    async fn revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let (started, r) = (Instant::now(), request.into_inner());
        tenant(&r.tenant)?;
        let result = lease::revoke(&*self.0.registers, &SystemClock, &r.tenant, r.lease).await;
        record("lease_revoke", started, &result);
        result.map_err(recipe_status)?;
        Ok(Response::new(pb::LeaseRevokeResponse {}))
    }
}

/// The public `Locks` service.
#[derive(Clone)]
pub struct LockService(Recipes);

impl LockService {
    /// The service over `coordinator`; waits end when `stopping` turns true.
    pub fn new(coordinator: Arc<Coordinator>, stopping: watch::Receiver<bool>) -> Self {
        LockService(Recipes::new(coordinator, stopping))
    }
}

#[tonic::async_trait]
impl Locks for LockService {
    async fn acquire(
        &self,
        request: Request<pb::LockAcquireRequest>,
    ) -> Result<Response<pb::LockAcquireResponse>, Status> {
        let (started, r) = (Instant::now(), request.into_inner());
        tenant(&r.tenant)?;
        let recipes = &self.0;
        let result = async {
            lock::check_name(&r.name, &recipes.limits)?;
            let wait = (r.wait_ms > 0).then(|| Duration::from_millis(r.wait_ms));
            let (lease, fresh) = recipes.lease_for(&r.tenant, r.lease, r.ttl_ms).await?;
            let granted = recipes
                .unless_stopping(lock::acquire(
                    &*recipes.registers,
                    &SystemClock,
                    &r.tenant,
                    &r.name,
                    lease.id,
                    wait,
                    &recipes.limits,
                ))
                .await;
            if granted.is_err() {
                recipes.drop_lease(&r.tenant, lease, fresh).await;
            }
            Ok::<_, RecipeError>((granted?, lease))
        }
        .await;
        record("lock_acquire", started, &result);
        let (grant, lease) = result.map_err(recipe_status)?;
        Ok(Response::new(pb::LockAcquireResponse {
            token: grant.token,
            lease: lease.id,
            ttl_ms: lease.ttl.as_millis() as u64,
        }))
    }

    async fn release(
        &self,
        request: Request<pb::LockReleaseRequest>,
    ) -> Result<Response<pb::LockReleaseResponse>, Status> {
        let (started, r) = (Instant::now(), request.into_inner());
        tenant(&r.tenant)?;
        let result = lock::release(&*self.0.registers, &SystemClock, &r.tenant, &r.name, r.lease, &self.0.limits).await;
        record("lock_release", started, &result);
        result.map_err(recipe_status)?;
        Ok(Response::new(pb::LockReleaseResponse {}))
    }

    async fn renew(&self, request: Request<pb::LockRenewRequest>) -> Result<Response<pb::LockRenewResponse>, Status> {
        let (started, r) = (Instant::now(), request.into_inner());
        tenant(&r.tenant)?;
        let result = lock::renew(&*self.0.registers, &SystemClock, &r.tenant, &r.name, r.lease, &self.0.limits).await;
        record("lock_renew", started, &result);
        let lease = result.map_err(recipe_status)?;
        Ok(Response::new(pb::LockRenewResponse { ttl_ms: lease.ttl.as_millis() as u64 }))
    }
}

/// The public `Election` service.
#[derive(Clone)]
pub struct ElectionService(Recipes);

impl ElectionService {
    /// The service over `coordinator`; campaigns and observers end when
    /// `stopping` turns true.
    pub fn new(coordinator: Arc<Coordinator>, stopping: watch::Receiver<bool>) -> Self {
        ElectionService(Recipes::new(coordinator, stopping))
    }
}

fn leader_response(leader: Option<lock::Leader>) -> pb::LeaderResponse {
    match leader {
        None => pb::LeaderResponse::default(),
        Some(leader) => pb::LeaderResponse {
            found: true,
            value: leader.value.unwrap_or_default().into(),
            generation: leader.holder.token,
        },
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<pb::LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(&self, request: Request<pb::CampaignRequest>) -> Result<Response<pb::CampaignResponse>, Status> {
        let (started, r) = (Instant::now(), request.into_inner());
        tenant(&r.tenant)?;
        let recipes = &self.0;
        let result = async {
            lock::check_name(&r.name, &recipes.limits)?;
            let wait = if r.wait_ms == 0 { recipes.limits.max_wait } else { Duration::from_millis(r.wait_ms) };
            let (lease, fresh) = recipes.lease_for(&r.tenant, r.lease, r.ttl_ms).await?;
            let elected = recipes
                .unless_stopping(async {
                    let limits = &recipes.limits;
                    let registers = &*recipes.registers;
                    let grant =
                        lock::acquire(registers, &SystemClock, &r.tenant, &r.name, lease.id, Some(wait), limits)
                            .await?;
                    lock::proclaim(registers, &SystemClock, &r.tenant, &r.name, lease.id, r.value.to_vec(), limits)
                        .await?;
                    Ok::<_, RecipeError>(grant)
                })
                .await;
            if elected.is_err() {
                recipes.drop_lease(&r.tenant, lease, fresh).await;
            }
            Ok::<_, RecipeError>((elected?, lease))
        }
        .await;
        record("campaign", started, &result);
        let (grant, lease) = result.map_err(recipe_status)?;
        Ok(Response::new(pb::CampaignResponse {
            generation: grant.token,
            lease: lease.id,
            ttl_ms: lease.ttl.as_millis() as u64,
        }))
    }

    async fn proclaim(&self, request: Request<pb::ProclaimRequest>) -> Result<Response<pb::ProclaimResponse>, Status> {
        let (started, r) = (Instant::now(), request.into_inner());
        tenant(&r.tenant)?;
        let recipes = &self.0;
        let result = lock::proclaim(
            &*recipes.registers,
            &SystemClock,
            &r.tenant,
            &r.name,
            r.lease,
            r.value.to_vec(),
            &recipes.limits,
        )
        .await;
        record("proclaim", started, &result);
        Ok(Response::new(pb::ProclaimResponse { generation: result.map_err(recipe_status)? }))
    }

    async fn leader(&self, request: Request<pb::LeaderRequest>) -> Result<Response<pb::LeaderResponse>, Status> {
        let (started, r) = (Instant::now(), request.into_inner());
        tenant(&r.tenant)?;
        let result = lock::leader(&*self.0.registers, &SystemClock, &r.tenant, &r.name, &self.0.limits).await;
        record("leader", started, &result);
        Ok(Response::new(leader_response(result.map_err(recipe_status)?)))
    }

    type ObserveStream = ObserveStream;

    async fn observe(&self, request: Request<pb::LeaderRequest>) -> Result<Response<Self::ObserveStream>, Status> {
        let r = request.into_inner();
        tenant(&r.tenant)?;
        lock::check_name(&r.name, &self.0.limits).map_err(recipe_status)?;
        let recipes = self.0.clone();
        let mut stopping = recipes.stopping.clone();
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut last: Option<pb::LeaderResponse> = None;
            loop {
                let now = lock::leader(&*recipes.registers, &SystemClock, &r.tenant, &r.name, &recipes.limits).await;
                match now {
                    Ok(leader) => {
                        let response = leader_response(leader);
                        if last.as_ref() != Some(&response) {
                            if sender.send(Ok(response.clone())).await.is_err() {
                                return;
                            }
                            last = Some(response);
                        }
                    }
                    // A failed look is not a change of leader: try again.
                    Err(error) => tracing::debug!(%error, "election observe: leader lookup failed"),
                }
                let stop = tokio::select! {
                    () = tokio::time::sleep(OBSERVE_EVERY) => false,
                    () = sender.closed() => return,
                    () = stopped(&mut stopping) => true,
                };
                if stop {
                    break;
                }
            }
            let _ = sender.send(Err(Status::unavailable("the coordinator is shutting down; observe another"))).await;
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }

    async fn resign(&self, request: Request<pb::ResignRequest>) -> Result<Response<pb::ResignResponse>, Status> {
        let (started, r) = (Instant::now(), request.into_inner());
        tenant(&r.tenant)?;
        let result = lock::release(&*self.0.registers, &SystemClock, &r.tenant, &r.name, r.lease, &self.0.limits).await;
        record("resign", started, &result);
        result.map_err(recipe_status)?;
        Ok(Response::new(pb::ResignResponse {}))
    }
}
