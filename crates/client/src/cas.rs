//! Linearizable compare-and-set: the SDK side of `cohort.coord.v1.Cas`.
//!
//! ```no_run
//! # async fn demo(client: cohort_client::Client) -> Result<(), cohort_client::Error> {
//! let cas = client.cas();
//! // Create a key that must not exist yet (version 0), then change it only
//! // if nobody else did in between.
//! let v1 = cas.put("default", "config", "a", 0).await?;
//! let v2 = cas.put("default", "config", "b", v1).await?;
//! // A counter, incremented however many writers race: the closure runs
//! // again on the current value whenever another writer got there first.
//! cas.update_linearizable("default", "counter", |old| {
//!     let n: u64 = old.and_then(|v| std::str::from_utf8(v).ok()?.parse().ok()).unwrap_or(0);
//!     Some((n + 1).to_string().into())
//! }).await?;
//! # let _ = v2; Ok(()) }
//! ```
//!
//! The keys are a key space of their own in each tenant: `cas.put("k")`
//! and `client.put("k")` name two different keys. Every key has a version,
//! 0 until it is first written and one more with every change; a delete
//! keeps the version (recreating a deleted key names it).

use bytes::Bytes;
use cohort_proto::coord::v1 as pb;
use cohort_proto::coord::v1::cas_client::CasClient;
use tonic::transport::Channel;

use crate::Error;

/// A linearizable read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasValue {
    /// The value; `None` when never written or deleted.
    pub value: Option<Bytes>,
    /// The key's version.
    pub version: u64,
}

/// A lock's fencing token, to write under: the key refuses the write once
/// it has seen a higher token of the same lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The lock's name.
    pub lock: String,
    /// The token its grant returned.
    pub token: u64,
}

impl Fence {
    pub(crate) fn into_pb(self) -> pb::Fence {
        pb::Fence { lock: self.lock, token: self.token }
    }
}

impl std::str::FromStr for Fence {
    type Err = String;

    /// Parses `NAME:TOKEN`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (lock, token) = text.rsplit_once(':').ok_or_else(|| format!("{text:?} is not NAME:TOKEN"))?;
        let token = token.parse().map_err(|_| format!("{token:?} is not a token (a positive number)"))?;
        if lock.is_empty() {
            return Err("a fence names its lock: NAME:TOKEN".into());
        }
        Ok(Fence { lock: lock.to_string(), token })
    }
}

/// Options of a conditional write.
#[derive(Debug, Clone, Default)]
pub struct CasWrite {
    /// The write's id (`None`: a fresh one); a resend with the same id is
    /// never applied twice.
    pub write_id: Option<Bytes>,
    /// Write under a lock.
    pub fence: Option<Fence>,
}

/// Compare-and-set on a tenant's linearizable keys.
#[derive(Debug, Clone)]
pub struct Cas {
    client: CasClient<Channel>,
}

/// Attempts [`Cas::update_linearizable`] makes before it gives up.
const UPDATE_ATTEMPTS: u32 = 64;

/// A fresh write id: a retry of one write sends the same id, so it is never
/// applied twice.
fn write_id() -> Bytes {
    Bytes::copy_from_slice(uuid::Uuid::new_v4().as_bytes())
}

/// Whether the server said a write may or may not have applied.
fn outcome_unknown(status: &tonic::Status) -> bool {
    status.metadata().get("cohort-outcome").is_some_and(|v| v == "unknown")
}

impl Cas {
    pub(crate) fn new(channel: Channel) -> Self {
        Cas { client: CasClient::new(channel) }
    }

    /// Reads `key` linearizably.
    pub async fn get(&self, tenant: &str, key: impl Into<Bytes>) -> Result<CasValue, Error> {
        let request = pb::CasGetRequest { tenant: tenant.to_string(), key: key.into() };
        let r = self.client.clone().get(request).await?.into_inner();
        Ok(CasValue { value: r.found.then_some(r.value), version: r.version })
    }

    /// Writes `value` if `key` is at version `expect` (0: never written).
    /// Returns the new version; [`Error::VersionMismatch`] carries the
    /// current one.
    pub async fn put(
        &self,
        tenant: &str,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        expect: u64,
    ) -> Result<u64, Error> {
        self.put_with_id(tenant, key.into(), value.into(), expect, write_id()).await
    }

    /// [`Cas::put`] with the caller's write id: resending a write whose
    /// outcome was unknown with the same id settles it without applying it
    /// twice.
    pub async fn put_with_id(
        &self,
        tenant: &str,
        key: Bytes,
        value: Bytes,
        expect: u64,
        write_id: Bytes,
    ) -> Result<u64, Error> {
        let options = CasWrite { write_id: Some(write_id), fence: None };
        self.put_with(tenant, key, value, expect, options).await
    }

    /// [`Cas::put`] with options: a write id, a fence.
    pub async fn put_with(
        &self,
        tenant: &str,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        expect: u64,
        options: CasWrite,
    ) -> Result<u64, Error> {
        let request = pb::CasPutRequest {
            tenant: tenant.to_string(),
            key: key.into(),
            value: value.into(),
            expect_version: expect,
            write_id: options.write_id.unwrap_or_else(write_id),
            fence: options.fence.map(Fence::into_pb),
        };
        Ok(self.client.clone().put(request).await.map_err(Error::from_cas)?.into_inner().version)
    }

    /// Deletes `key`'s value if it is at version `expect`. Returns the new
    /// version.
    pub async fn delete(&self, tenant: &str, key: impl Into<Bytes>, expect: u64) -> Result<u64, Error> {
        self.delete_with(tenant, key, expect, CasWrite::default()).await
    }

    /// [`Cas::delete`] with options: a write id, a fence.
    pub async fn delete_with(
        &self,
        tenant: &str,
        key: impl Into<Bytes>,
        expect: u64,
        options: CasWrite,
    ) -> Result<u64, Error> {
        let request = pb::CasDeleteRequest {
            tenant: tenant.to_string(),
            key: key.into(),
            expect_version: expect,
            write_id: options.write_id.unwrap_or_else(write_id),
            fence: options.fence.map(Fence::into_pb),
        };
        Ok(self.client.clone().delete(request).await.map_err(Error::from_cas)?.into_inner().version)
    }

    /// Read-modify-write, linearizable: reads the key, calls `change` with
    /// its value (`None`: absent) and writes what it returns at the version
    /// read, again and again until no other writer got there first.
    /// `change` returning `None` leaves the key alone. A write whose
    /// outcome was unknown is resent with the same id until it settles; if
    /// another writer changed the key meanwhile, whether it applied can no
    /// longer be known and the unknown-outcome error is returned: the
    /// change is never applied twice. Returns the key's version after the
    /// write (or as read, when nothing was written).
    pub async fn update_linearizable(
        &self,
        tenant: &str,
        key: impl Into<Bytes>,
        mut change: impl FnMut(Option<&Bytes>) -> Option<Bytes>,
    ) -> Result<u64, Error> {
        let key = key.into();
        for _ in 0..UPDATE_ATTEMPTS {
            let current = self.get(tenant, key.clone()).await?;
            let Some(value) = change(current.value.as_ref()) else { return Ok(current.version) };
            let id = write_id();
            let mut unknown: Option<tonic::Status> = None;
            loop {
                match self.put_with_id(tenant, key.clone(), value.clone(), current.version, id.clone()).await {
                    Ok(version) => return Ok(version),
                    // Someone else's write won; if ours may have applied
                    // before it, nobody can tell any more: say so rather
                    // than apply the change a second time.
                    Err(Error::VersionMismatch { .. }) => match unknown {
                        Some(status) => return Err(Error::Status(status)),
                        None => break,
                    },
                    // Unknown: resend as is; the resend finds the write if
                    // it applied and the key has not changed since.
                    Err(Error::Status(status)) if outcome_unknown(&status) => unknown = Some(status),
                    // Contended: nothing applied; the same write may go again.
                    Err(Error::Status(status)) if status.code() == tonic::Code::Aborted => {}
                    Err(error) => return Err(error),
                }
            }
        }
        Err(Error::Status(tonic::Status::aborted(format!(
            "update_linearizable: other writers changed the key first {UPDATE_ATTEMPTS} times in a row"
        ))))
    }
}
