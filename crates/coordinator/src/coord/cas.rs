//! The public `Cas` service: linearizable compare-and-set over
//! [`crate::registers`], on the keys of the `Cas` space
//! (`cohort_recipes::keys`).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use cohort_paxos::{Change, Outcome, Register};
use cohort_proto::coord::v1 as pb;
use cohort_proto::coord::v1::cas_server::Cas;
use tonic::{Request, Response, Status};

use crate::coord::check_fence;
use crate::error::KvError;
use crate::server::Coordinator;
use crate::validate;
use cohort_paxos::Fence;
use cohort_recipes::keys::{self, Space};

/// Response metadata of a failed condition: the key's current version.
pub const CURRENT_VERSION_HEADER: &str = "cohort-current-version";
/// Longest write id a client may give.
const MAX_WRITE_ID_BYTES: usize = 64;

/// The public compare-and-set service.
#[derive(Clone)]
pub struct CasService {
    coordinator: Arc<Coordinator>,
}

impl CasService {
    /// The service over `coordinator`.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        CasService { coordinator }
    }

    async fn run(&self, tenant: &str, key: Bytes, change: Change, write: Bytes) -> Result<Done, Failed> {
        let c = &self.coordinator;
        validate::tenant_id(tenant)?;
        validate::key(&key, &c.config.limits)?;
        if let Change::Put { value, .. } = &change {
            validate::value(value, &c.config.limits)?;
        }
        if write.len() > MAX_WRITE_ID_BYTES {
            return Err(KvError::InvalidArgument(format!(
                "write id is {} bytes; the limit is {MAX_WRITE_ID_BYTES} bytes",
                write.len()
            ))
            .into());
        }
        // Without an id from the client, one for this request: its own
        // internal retries then still recognise it.
        let write = if write.is_empty() && change.writes() {
            Bytes::copy_from_slice(&rand::random::<[u8; 16]>())
        } else {
            write
        };
        let tenant = c.tenants.get(tenant).await?;
        let (expected, fence) = match &change {
            Change::Put { expect, fence, .. } | Change::Delete { expect, fence } => (*expect, fence.clone()),
            Change::Read => (0, None),
        };
        if let Some(fence) = &fence {
            check_fence(&self.coordinator, tenant.id.as_str(), fence).await?;
        }
        let key = keys::key(Space::Cas, &key);
        match c.registers.run(&tenant, key, change, write).await? {
            Outcome::Read(register) => Ok(Done::Read(register)),
            Outcome::Applied(version) => Ok(Done::Applied(version)),
            Outcome::Mismatch(current) => Err(Failed::Mismatch { expected, current }),
            Outcome::Fenced(seen) => {
                let token = fence.map_or(0, |f| f.token);
                Err(KvError::FailedPrecondition(format!(
                    "fenced: token {token} < {seen}, the highest this key has seen for its lock; a newer holder has written"
                ))
                .into())
            }
            Outcome::Unknown => Err(KvError::WriteOutcomeUnknown(
                "the write may or may not have applied: some replica may have accepted it and no quorum answered; \
                 retry with the same write id to settle it"
                    .into(),
            )
            .into()),
            Outcome::Contended => Err(KvError::Contended(
                "lost to concurrent operations on the key on every attempt; nothing was applied".into(),
            )
            .into()),
            Outcome::Unavailable => Err(KvError::unavailable(
                "linearizable operation",
                0,
                0,
                &["no quorum of the key's replicas answered in time; nothing was applied".into()],
            )
            .into()),
        }
    }
}

/// How an operation succeeded.
#[derive(Debug)]
enum Done {
    Read(Register),
    /// A write, and the version it made.
    Applied(u64),
}

impl Done {
    fn register(self) -> Register {
        match self {
            Done::Read(register) => register,
            Done::Applied(version) => Register { version, ..Register::default() },
        }
    }

    fn version(&self) -> u64 {
        match self {
            Done::Read(register) => register.version,
            Done::Applied(version) => *version,
        }
    }
}

/// Why an operation failed.
#[derive(Debug)]
enum Failed {
    /// The expected version was not the key's.
    Mismatch {
        expected: u64,
        current: Register,
    },
    Other(KvError),
}

impl From<KvError> for Failed {
    fn from(error: KvError) -> Self {
        Failed::Other(error)
    }
}

impl Failed {
    fn label(&self) -> &'static str {
        match self {
            Failed::Mismatch { .. } => "version_mismatch",
            Failed::Other(error) => error.label(),
        }
    }
}

impl From<Failed> for Status {
    fn from(failed: Failed) -> Status {
        match failed {
            Failed::Other(error) => error.into(),
            Failed::Mismatch { expected, current } => {
                let state = if current.exists() {
                    "holds a value"
                } else if current.version == 0 {
                    "was never written"
                } else {
                    "is deleted"
                };
                let mut status = Status::failed_precondition(format!(
                    "version mismatch: expected version {expected}, the key is at version {} and {state}",
                    current.version
                ));
                status.metadata_mut().insert(CURRENT_VERSION_HEADER, current.version.into());
                status
            }
        }
    }
}

fn fence_from(fence: Option<pb::Fence>) -> Option<Fence> {
    fence.map(|f| Fence { lock: f.lock, token: f.token })
}

fn record<T>(op: &'static str, started: Instant, result: &Result<T, Failed>) {
    let status = match result {
        Ok(_) => "ok",
        Err(failed) => failed.label(),
    };
    metrics::counter!("cohort_cas_requests_total", "op" => op, "status" => status).increment(1);
    metrics::histogram!("cohort_cas_request_duration_seconds", "op" => op).record(started.elapsed().as_secs_f64());
}

#[tonic::async_trait]
impl Cas for CasService {
    async fn get(&self, request: Request<pb::CasGetRequest>) -> Result<Response<pb::CasGetResponse>, Status> {
        let started = Instant::now();
        let r = request.into_inner();
        let result = self.run(&r.tenant, r.key, Change::Read, Bytes::new()).await;
        record("get", started, &result);
        let register = result?.register();
        Ok(Response::new(pb::CasGetResponse {
            found: register.exists(),
            value: register.value.unwrap_or_default(),
            version: register.version,
        }))
    }

    async fn put(&self, request: Request<pb::CasPutRequest>) -> Result<Response<pb::CasPutResponse>, Status> {
        let started = Instant::now();
        let r = request.into_inner();
        let change = Change::Put { expect: r.expect_version, value: r.value, fence: fence_from(r.fence) };
        let result = self.run(&r.tenant, r.key, change, r.write_id).await;
        record("put", started, &result);
        Ok(Response::new(pb::CasPutResponse { version: result?.version() }))
    }

    async fn delete(&self, request: Request<pb::CasDeleteRequest>) -> Result<Response<pb::CasDeleteResponse>, Status> {
        let started = Instant::now();
        let r = request.into_inner();
        let change = Change::Delete { expect: r.expect_version, fence: fence_from(r.fence) };
        let result = self.run(&r.tenant, r.key, change, r.write_id).await;
        record("delete", started, &result);
        Ok(Response::new(pb::CasDeleteResponse { version: result?.version() }))
    }
}
