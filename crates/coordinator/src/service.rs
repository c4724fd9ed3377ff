//! The public `KeyValue` gRPC service.
//!
//! This is the only place where wire types meet domain types: requests are
//! validated while they are converted, and [`KvError`] becomes a gRPC status
//! exactly once, on the way out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_proto::internal::v1 as internal;
use cohort_proto::v1 as pb;
use cohort_proto::v1::key_value_server::KeyValue;
use cohort_ring::{CausalContext, Consistency, Fence};
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::config::IdempotencyFallback;
use crate::error::KvError;
use crate::kv::{ReadOutcome, WriteLimits, WriteOutcome};
use crate::metadata::{MetadataError, Tenant};
use crate::server::Coordinator;
use crate::validate;
use cohort_idempotency::{Claim, Fingerprint};

/// Seconds since the Unix epoch.
fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// How often a request waits on a twin still in flight before looking again.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(20);

/// The public key-value service.
#[derive(Clone)]
pub struct KvService {
    coordinator: Arc<Coordinator>,
}

impl KvService {
    /// The service over `coordinator`.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        KvService { coordinator }
    }
}

pub(crate) fn metadata_error(error: MetadataError) -> KvError {
    match error {
        MetadataError::TenantNotFound(id) => KvError::TenantNotFound(id),
        MetadataError::TenantExists(id) => KvError::AlreadyExists(format!("tenant {id:?} already exists")),
        conflict @ MetadataError::VersionConflict { .. } => KvError::FailedPrecondition(conflict.to_string()),
        error @ (MetadataError::Fenced { .. }
        | MetadataError::RingConflict { .. }
        | MetadataError::MigrationRunning { .. }
        | MetadataError::MigrationEnded { .. }) => KvError::FailedPrecondition(error.to_string()),
        missing @ MetadataError::MigrationNotFound(_) => KvError::NotFound(missing.to_string()),
        MetadataError::Unavailable(reason) => KvError::DependencyUnavailable(reason),
    }
}

/// The consistency level a request asked for; `None` means the tenant default.
fn level_from(consistency: Option<pb::Consistency>) -> Result<Option<Consistency>, KvError> {
    use pb::consistency::Kind;
    let Some(kind) = consistency.and_then(|c| c.kind) else { return Ok(None) };
    match kind {
        Kind::Level(level) => match pb::Level::try_from(level) {
            Ok(pb::Level::Unspecified) => Ok(None),
            Ok(pb::Level::One) => Ok(Some(Consistency::One)),
            Ok(pb::Level::Quorum) => Ok(Some(Consistency::Quorum)),
            Ok(pb::Level::All) => Ok(Some(Consistency::All)),
            Err(_) => Err(KvError::InvalidArgument(format!("unknown consistency level {level}"))),
        },
        Kind::Replicas(count) => u8::try_from(count)
            .ok()
            .filter(|c| *c >= 1)
            .map(|c| Some(Consistency::Count(c)))
            .ok_or_else(|| KvError::InvalidArgument(format!("consistency of {count} replicas is not 1..=7"))),
    }
}

fn record(op: &'static str, started: Instant, result: &Result<impl Sized, KvError>) {
    let status = match result {
        Ok(_) => "ok",
        Err(error) => error.label(),
    };
    metrics::counter!("cohort_requests_total", "op" => op, "status" => status).increment(1);
    metrics::histogram!("cohort_request_duration_seconds", "op" => op).record(started.elapsed().as_secs_f64());
    if let Err(KvError::Unavailable { .. }) = result {
        metrics::counter!("cohort_quorum_failures_total", "op" => op).increment(1);
    }
}

/// A write as the KeyValue service receives it, before validation.
struct WriteInput {
    op: &'static str,
    tenant: String,
    key: Bytes,
    value: Option<Bytes>,
    context: Bytes,
    consistency: Option<pb::Consistency>,
    idempotency_key: String,
    fence: Option<Fence>,
}

fn fingerprint(input: &WriteInput, level: Option<Consistency>) -> Fingerprint {
    let mut hash = Sha256::new();
    for part in [input.op.as_bytes(), input.tenant.as_bytes(), &input.key, &input.context] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    match &input.value {
        Some(value) => {
            hash.update([1]);
            hash.update((value.len() as u64).to_be_bytes());
            hash.update(value);
        }
        None => hash.update([0]),
    }
    hash.update(level.map(|l| l.to_string()).unwrap_or_default().as_bytes());
    // After everything else, so an unfenced write hashes as it always did.
    if let Some(fence) = &input.fence {
        hash.update([2]);
        hash.update((fence.lock.len() as u64).to_be_bytes());
        hash.update(fence.lock.as_bytes());
        hash.update(fence.token.to_be_bytes());
    }
    hash.finalize().into()
}

fn write_receipt(outcome: &WriteOutcome) -> pb::Receipt {
    pb::Receipt {
        replicas: outcome
            .acked
            .iter()
            .map(|id| {
                let role =
                    if outcome.fallbacks.contains(id) { pb::ReplicaRole::Fallback } else { pb::ReplicaRole::Primary };
                pb::ReplicaAck { node_id: id.clone(), role: role.into() }
            })
            .collect(),
        required: outcome.required.into(),
        replication: outcome.replication.into(),
        read_repair: false,
        siblings: outcome.siblings,
        hint_stored: outcome.hinted,
    }
}

/// The write id replicas record for an idempotent write: a digest of the
/// claim (tenant, idempotency key) and of the request itself.
fn write_id(tenant: &str, idempotency_key: &str, fingerprint: &Fingerprint) -> Bytes {
    let mut hash = Sha256::new();
    for part in [b"cohort-write".as_slice(), tenant.as_bytes(), idempotency_key.as_bytes(), fingerprint] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    Bytes::copy_from_slice(&hash.finalize())
}

/// A token naming one attempt at a claimed write.
fn attempt_owner() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl KvService {
    /// The clock inside a write's context, after checking its size and seal.
    async fn open_context(&self, input: &WriteInput) -> Result<CausalContext, KvError> {
        let limit = self.coordinator.config.limits.max_context_bytes;
        if input.context.len() > limit {
            return Err(KvError::InvalidArgument(format!(
                "causal context is {} bytes; the limit is {limit} bytes",
                input.context.len()
            )));
        }
        self.coordinator
            .contexts
            .open(&input.context, &input.tenant, &input.key)
            .await
            .map_err(|e| KvError::InvalidArgument(format!("causal context is invalid: {e}")))
    }

    async fn write(&self, input: WriteInput) -> Result<pb::PutResponse, KvError> {
        let c = &self.coordinator;
        let limits = &c.config.limits;
        validate::tenant_id(&input.tenant)?;
        validate::key(&input.key, limits)?;
        if let Some(value) = &input.value {
            validate::value(value, limits)?;
        }
        validate::idempotency_key(&input.idempotency_key, limits)?;
        let level = level_from(input.consistency)?;
        let context = self.open_context(&input).await?;
        if input.value.is_none() && context.is_empty() {
            return Err(KvError::InvalidArgument(
                "a delete needs the context of a read: without one it would delete nothing; \
                 read the key and delete with the context the read returned (the SDK's and CLI's delete do this)"
                    .into(),
            ));
        }
        let tenant = c.tenants.get(&input.tenant).await?;
        tenant.replication.write_quorum(level).map_err(|e| KvError::InvalidArgument(e.to_string()))?;
        if let Some(fence) = &input.fence {
            crate::coord::check_fence(&self.coordinator, &tenant.id, fence).await?;
        }

        if input.idempotency_key.is_empty() {
            return self.execute(&tenant, &input, &context, level, None).await;
        }
        let fingerprint = fingerprint(&input, level);
        let (tenant_id, idem) = (input.tenant.clone(), input.idempotency_key.clone());
        let ttl = c.config.idempotency.ttl;
        let owner = attempt_owner();
        let deadline = Instant::now() + c.config.request_timeout;
        let settle = loop {
            let claim = match c.idempotency.claim(&tenant_id, &idem, &fingerprint, &owner, ttl).await {
                Ok(claim) => claim,
                Err(error) => match c.config.idempotency.unavailable {
                    IdempotencyFallback::Reject => {
                        return Err(KvError::DependencyUnavailable(format!(
                            "{error}; writes with an idempotency key are refused until it is back"
                        )));
                    }
                    IdempotencyFallback::Proceed => {
                        tracing::warn!(%error, "idempotency store unreachable; writing without deduplication");
                        metrics::counter!("cohort_idempotency_bypassed_total").increment(1);
                        return self.execute(&tenant, &input, &context, level, None).await;
                    }
                },
            };
            match claim {
                Claim::Claimed { settle } => break settle,
                Claim::Done(stored) => {
                    metrics::counter!("cohort_idempotent_replays_total").increment(1);
                    let mut response = pb::PutResponse::decode(stored.as_slice())
                        .map_err(|e| KvError::Internal(format!("stored idempotent response unreadable: {e}")))?;
                    response.duplicate = true;
                    return Ok(response);
                }
                Claim::Conflict => {
                    return Err(KvError::FailedPrecondition(format!(
                        "idempotency key {idem:?} was already used with a different request"
                    )));
                }
                Claim::InFlight if Instant::now() < deadline => tokio::time::sleep(IN_FLIGHT_POLL).await,
                Claim::InFlight => {
                    return Err(KvError::DeadlineExceeded(format!(
                        "a request with idempotency key {idem:?} is still in flight"
                    )));
                }
            }
        };
        let expires_at = now_secs() + c.config.idempotency.ttl.as_secs();
        let write = internal::WriteTag { id: write_id(&tenant_id, &idem, &fingerprint), expires_at };
        let result = if settle {
            // An earlier attempt may have applied: find its version first.
            metrics::counter!("cohort_idempotent_settles_total").increment(1);
            match c.engine.settle_write(&tenant, input.key.clone(), level, &write).await {
                Ok(Some(outcome)) => Ok(self.response(&input, &context, &outcome)),
                Ok(None) => self.execute(&tenant, &input, &context, level, Some(write)).await,
                Err(error) => Err(error),
            }
        } else {
            self.execute(&tenant, &input, &context, level, Some(write)).await
        };
        let ended = match &result {
            Ok(response) => {
                c.idempotency.complete(&tenant_id, &idem, &fingerprint, &owner, &response.encode_to_vec(), ttl).await
            }
            // The version may exist on some replica: keep the claim, so that
            // a retry settles it rather than writing it again.
            Err(error) if error.maybe_applied() => {
                c.idempotency.mark_unknown(&tenant_id, &idem, &fingerprint, &owner, ttl).await
            }
            Err(_) => c.idempotency.release(&tenant_id, &idem, &fingerprint, &owner).await,
        };
        if let Err(error) = ended {
            // The claim lapses by itself and a retry then settles it.
            tracing::warn!(%error, "could not record the end of an idempotent write");
        }
        result
    }

    /// The answer to a write: the context it returns covers what the
    /// write's own context covered plus the write itself — never a sibling
    /// the writer did not see.
    fn response(&self, input: &WriteInput, context: &CausalContext, outcome: &WriteOutcome) -> pb::PutResponse {
        let mut covered = context.clone();
        covered.add(&outcome.dot);
        pb::PutResponse {
            context: self.coordinator.contexts.seal(&covered, &input.tenant, &input.key),
            receipt: Some(write_receipt(outcome)),
            duplicate: false,
        }
    }

    async fn execute(
        &self,
        tenant: &Tenant,
        input: &WriteInput,
        context: &CausalContext,
        level: Option<Consistency>,
        write: Option<internal::WriteTag>,
    ) -> Result<pb::PutResponse, KvError> {
        let limits = WriteLimits {
            max_siblings: tenant.max_siblings,
            max_state_bytes: self.coordinator.config.limits.max_state_bytes,
        };
        let outcome = self
            .coordinator
            .engine
            .write(tenant, input.key.clone(), input.value.clone(), input.fence.as_ref(), context, level, limits, write)
            .await?;
        Ok(self.response(input, context, &outcome))
    }

    async fn read(&self, request: pb::GetRequest) -> Result<pb::GetResponse, KvError> {
        let c = &self.coordinator;
        validate::tenant_id(&request.tenant)?;
        validate::key(&request.key, &c.config.limits)?;
        let level = level_from(request.consistency)?;
        let tenant = c.tenants.get(&request.tenant).await?;
        let ReadOutcome { state, answered, required, replication, repair } =
            c.engine.read(&tenant, request.key.clone(), level).await?;
        // Every live sibling, equal bytes included: a reader resolving them
        // sees exactly what the key holds.
        let siblings: Vec<Bytes> = state.values().cloned().collect();
        metrics::histogram!("cohort_siblings_seen").record(siblings.len() as f64);
        Ok(pb::GetResponse {
            found: !siblings.is_empty(),
            context: c.contexts.seal(state.clock(), &request.tenant, &request.key),
            receipt: Some(pb::Receipt {
                replicas: answered
                    .into_iter()
                    .map(|node_id| pb::ReplicaAck { node_id, role: pb::ReplicaRole::Primary.into() })
                    .collect(),
                required: required.into(),
                replication: replication.into(),
                read_repair: repair,
                siblings: state.siblings().len() as u32,
                hint_stored: false,
            }),
            siblings,
        })
    }
}

#[tonic::async_trait]
impl KeyValue for KvService {
    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let started = Instant::now();
        let r = request.into_inner();
        let input = WriteInput {
            op: "put",
            tenant: r.tenant,
            key: r.key,
            value: Some(r.value),
            context: r.context,
            consistency: r.consistency,
            idempotency_key: r.idempotency_key,
            fence: r.fence.map(|f| Fence { lock: f.lock, token: f.token }),
        };
        let result = self.write(input).await;
        record("put", started, &result);
        Ok(Response::new(result?))
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let started = Instant::now();
        let result = self.read(request.into_inner()).await;
        record("get", started, &result);
        Ok(Response::new(result?))
    }

    async fn delete(&self, request: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let started = Instant::now();
        let r = request.into_inner();
        let input = WriteInput {
            op: "delete",
            tenant: r.tenant,
            key: r.key,
            value: None,
            context: r.context,
            consistency: r.consistency,
            idempotency_key: r.idempotency_key,
            fence: r.fence.map(|f| Fence { lock: f.lock, token: f.token }),
        };
        let result = self.write(input).await;
        record("delete", started, &result);
        let response = result?;
        Ok(Response::new(pb::DeleteResponse {
            context: response.context,
            receipt: response.receipt,
            duplicate: response.duplicate,
        }))
    }
}

pub(crate) fn finish<T>(op: &'static str, started: Instant, result: Result<T, KvError>) -> Result<Response<T>, Status> {
    record(op, started, &result);
    Ok(Response::new(result?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_conversion_rejects_nonsense() {
        use pb::consistency::Kind;
        let with = |kind| Some(pb::Consistency { kind: Some(kind) });
        assert_eq!(level_from(None), Ok(None));
        assert_eq!(level_from(with(Kind::Level(pb::Level::Quorum.into()))), Ok(Some(Consistency::Quorum)));
        assert_eq!(level_from(with(Kind::Replicas(2))), Ok(Some(Consistency::Count(2))));
        assert!(level_from(with(Kind::Level(42))).is_err());
        assert!(level_from(with(Kind::Replicas(0))).is_err());
        assert!(level_from(with(Kind::Replicas(300))).is_err());
    }
}
