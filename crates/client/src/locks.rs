//! Leases, locks with fencing tokens, and leader election: the SDK side of
//! `cohort.coord.v1.{Leases, Locks, Election}`.
//!
//! ```no_run
//! # async fn demo(client: cohort_client::Client) -> Result<(), cohort_client::Error> {
//! use std::time::Duration;
//! use cohort_client::{CasWrite, LockOptions};
//! // Hold a lock; its lease is kept alive in the background.
//! let guard = client.locks().acquire("default", "reports", LockOptions {
//!     ttl: Duration::from_secs(10),
//!     wait: Some(Duration::from_secs(5)),
//! }).await?;
//! // Write under it: the key refuses the write once a newer holder of the
//! // lock has written, even if this process was paused past its lease.
//! let cas = client.cas();
//! let current = cas.get("default", "report").await?;
//! cas.put_with("default", "report", "done", current.version, CasWrite {
//!     fence: Some(guard.fence()),
//!     ..CasWrite::default()
//! }).await?;
//! guard.release().await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use bytes::Bytes;
use cohort_proto::coord::v1 as pb;
use cohort_proto::coord::v1::election_client::ElectionClient;
use cohort_proto::coord::v1::leases_client::LeasesClient;
use cohort_proto::coord::v1::locks_client::LocksClient;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::Error;

/// A TTL in milliseconds on the wire, where 0 would mean the default.
fn ttl_ms(ttl: Duration) -> Result<u64, Error> {
    if ttl.is_zero() {
        return Err(Error::Status(tonic::Status::invalid_argument("a lease's TTL must be above 0")));
    }
    Ok(ttl.as_millis().max(1) as u64)
}
use crate::cas::Fence;

/// How to hold a lock or lead an election.
#[derive(Debug, Clone, Copy)]
pub struct LockOptions {
    /// The lease's TTL (at most 5 minutes).
    pub ttl: Duration,
    /// How long to wait for a held lock (`None`: fail at once).
    pub wait: Option<Duration>,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions { ttl: Duration::from_secs(30), wait: None }
    }
}

/// Leases, locks and elections over one connection.
#[derive(Debug, Clone)]
pub struct Locks {
    leases: LeasesClient<Channel>,
    locks: LocksClient<Channel>,
    election: ElectionClient<Channel>,
}

/// Keeps a lease alive until stopped; reports when it is lost.
#[derive(Debug)]
struct KeepAlive {
    lost: watch::Receiver<Option<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl KeepAlive {
    /// Renews `lease` every third of its TTL.
    fn start(mut leases: LeasesClient<Channel>, tenant: String, lease: u64, ttl: Duration) -> KeepAlive {
        let (tell, lost) = watch::channel(None);
        let task = tokio::spawn(async move {
            let every = (ttl / 3).max(Duration::from_millis(10));
            loop {
                tokio::time::sleep(every).await;
                let request = pb::LeaseKeepAliveRequest { tenant: tenant.clone(), lease };
                match leases.keep_alive(request).await {
                    Ok(_) => {}
                    // Expired or revoked: the lock is gone.
                    Err(status) if status.code() == tonic::Code::NotFound => {
                        let _ = tell.send(Some(format!("lease {lease} was lost: {}", status.message())));
                        return;
                    }
                    // Unreachable for a moment: try again, the TTL allows it.
                    Err(status) => tracing::debug!(%status, lease, "lease keep-alive failed; retrying"),
                }
            }
        });
        KeepAlive { lost, task }
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A held lock. Its lease is kept alive until the guard is released or
/// dropped (dropping stops the keep-alive; the lock then ends with its
/// lease, or at once with [`LockGuard::release`]).
#[derive(Debug)]
pub struct LockGuard {
    locks: Locks,
    tenant: String,
    name: String,
    token: u64,
    lease: u64,
    keep_alive: KeepAlive,
}

impl LockGuard {
    /// The fencing token of this grant.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The lease the lock is held under.
    pub fn lease(&self) -> u64 {
        self.lease
    }

    /// The fence to write under.
    pub fn fence(&self) -> Fence {
        Fence { lock: self.name.clone(), token: self.token }
    }

    /// Why the lock was lost, once it has been (its lease expired).
    pub fn lost(&self) -> Option<String> {
        self.keep_alive.lost.borrow().clone()
    }

    /// Waits until the lock is lost; returns why.
    pub async fn until_lost(&mut self) -> String {
        match self.keep_alive.lost.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => "the keep-alive stopped".into(),
        }
    }

    /// Releases the lock (the next waiter gets it) and ends its lease.
    pub async fn release(self) -> Result<(), Error> {
        self.keep_alive.task.abort();
        let request =
            pb::LockReleaseRequest { tenant: self.tenant.clone(), name: self.name.clone(), lease: self.lease };
        self.locks.locks.clone().release(request).await?;
        let revoke = pb::LeaseRevokeRequest { tenant: self.tenant.clone(), lease: self.lease };
        self.locks.leases.clone().revoke(revoke).await?;
        Ok(())
    }
}

/// A won election. The lease is kept alive until resigned or dropped.
#[derive(Debug)]
pub struct Leadership {
    locks: Locks,
    tenant: String,
    name: String,
    generation: u64,
    lease: u64,
    keep_alive: KeepAlive,
}

impl Leadership {
    /// This leadership's generation: a fencing token of the election's name.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The fence to write under.
    pub fn fence(&self) -> Fence {
        Fence { lock: self.name.clone(), token: self.generation }
    }

    /// Waits until leadership is lost (the lease expired); returns why.
    pub async fn until_lost(&mut self) -> String {
        match self.keep_alive.lost.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => "the keep-alive stopped".into(),
        }
    }

    /// Replaces the leader's value.
    pub async fn proclaim(&self, value: impl Into<Bytes>) -> Result<(), Error> {
        let request = pb::ProclaimRequest {
            tenant: self.tenant.clone(),
            name: self.name.clone(),
            lease: self.lease,
            value: value.into(),
        };
        self.locks.election.clone().proclaim(request).await?;
        Ok(())
    }

    /// Steps down and ends the lease.
    pub async fn resign(self) -> Result<(), Error> {
        self.keep_alive.task.abort();
        let request = pb::ResignRequest { tenant: self.tenant.clone(), name: self.name.clone(), lease: self.lease };
        self.locks.election.clone().resign(request).await?;
        let revoke = pb::LeaseRevokeRequest { tenant: self.tenant.clone(), lease: self.lease };
        self.locks.leases.clone().revoke(revoke).await?;
        Ok(())
    }
}

/// Who leads an election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// What the leader proclaimed.
    pub value: Bytes,
    /// Its generation.
    pub generation: u64,
}

fn leader_from(response: pb::LeaderResponse) -> Option<Leader> {
    response.found.then(|| Leader { value: response.value, generation: response.generation })
}

impl Locks {
    pub(crate) fn new(channel: Channel) -> Self {
        Locks {
            leases: LeasesClient::new(channel.clone()),
            locks: LocksClient::new(channel.clone()),
            election: ElectionClient::new(channel),
        }
    }

    /// Grants a lease of `ttl`; returns its id.
    pub async fn grant_lease(&self, tenant: &str, ttl: Duration) -> Result<u64, Error> {
        let request = pb::LeaseGrantRequest { tenant: tenant.to_string(), ttl_ms: ttl_ms(ttl)? };
        Ok(self.leases.clone().grant(request).await?.into_inner().lease)
    }

    /// Renews a lease; returns its TTL.
    pub async fn keep_alive(&self, tenant: &str, lease: u64) -> Result<Duration, Error> {
        let request = pb::LeaseKeepAliveRequest { tenant: tenant.to_string(), lease };
        Ok(Duration::from_millis(self.leases.clone().keep_alive(request).await?.into_inner().ttl_ms))
    }

    /// Ends a lease at once.
    pub async fn revoke_lease(&self, tenant: &str, lease: u64) -> Result<(), Error> {
        self.leases.clone().revoke(pb::LeaseRevokeRequest { tenant: tenant.to_string(), lease }).await?;
        Ok(())
    }

    /// Acquires lock `name` under a new lease, kept alive from before the
    /// wait (so a wait longer than the TTL is fine) until the guard is
    /// released or dropped.
    pub async fn acquire(&self, tenant: &str, name: &str, options: LockOptions) -> Result<LockGuard, Error> {
        let (lease, keep_alive) = self.kept_lease(tenant, options.ttl).await?;
        match self.acquire_once(tenant, name, lease, options).await {
            Ok(granted) => Ok(LockGuard {
                locks: self.clone(),
                tenant: tenant.to_string(),
                name: name.to_string(),
                token: granted.token,
                lease,
                keep_alive,
            }),
            Err(error) => {
                drop(keep_alive);
                let _ = self.revoke_lease(tenant, lease).await;
                Err(error)
            }
        }
    }

    /// A new lease of `ttl`, kept alive until the returned handle drops.
    async fn kept_lease(&self, tenant: &str, ttl: Duration) -> Result<(u64, KeepAlive), Error> {
        let lease = self.grant_lease(tenant, ttl).await?;
        Ok((lease, KeepAlive::start(self.leases.clone(), tenant.to_string(), lease, ttl)))
    }

    /// One `Acquire` call, under `lease` (0: a new one); nothing is kept
    /// alive.
    pub async fn acquire_once(
        &self,
        tenant: &str,
        name: &str,
        lease: u64,
        options: LockOptions,
    ) -> Result<pb::LockAcquireResponse, Error> {
        let request = pb::LockAcquireRequest {
            tenant: tenant.to_string(),
            name: name.to_string(),
            lease,
            ttl_ms: ttl_ms(options.ttl)?,
            wait_ms: options.wait.map_or(0, |w| w.as_millis().max(1) as u64),
        };
        Ok(self.locks.clone().acquire(request).await?.into_inner())
    }

    /// Releases lock `name` held under `lease`.
    pub async fn release(&self, tenant: &str, name: &str, lease: u64) -> Result<(), Error> {
        let request = pb::LockReleaseRequest { tenant: tenant.to_string(), name: name.to_string(), lease };
        self.locks.clone().release(request).await?;
        Ok(())
    }

    /// Keeps the lease of lock `name`'s holder alive; returns its TTL.
    pub async fn renew(&self, tenant: &str, name: &str, lease: u64) -> Result<Duration, Error> {
        let request = pb::LockRenewRequest { tenant: tenant.to_string(), name: name.to_string(), lease };
        Ok(Duration::from_millis(self.locks.clone().renew(request).await?.into_inner().ttl_ms))
    }

    /// Campaigns in election `name` until elected (waiting at most
    /// `options.wait`, or 5 minutes), proclaiming `value`; the lease is kept
    /// alive while waiting and while leading.
    pub async fn campaign(
        &self,
        tenant: &str,
        name: &str,
        value: impl Into<Bytes>,
        options: LockOptions,
    ) -> Result<Leadership, Error> {
        let (lease, keep_alive) = self.kept_lease(tenant, options.ttl).await?;
        let request = pb::CampaignRequest {
            tenant: tenant.to_string(),
            name: name.to_string(),
            value: value.into(),
            lease,
            ttl_ms: 0,
            wait_ms: options.wait.map_or(0, |w| w.as_millis().max(1) as u64),
        };
        match self.election.clone().campaign(request).await {
            Ok(won) => Ok(Leadership {
                locks: self.clone(),
                tenant: tenant.to_string(),
                name: name.to_string(),
                generation: won.into_inner().generation,
                lease,
                keep_alive,
            }),
            Err(status) => {
                drop(keep_alive);
                let _ = self.revoke_lease(tenant, lease).await;
                Err(status.into())
            }
        }
    }

    /// Who leads election `name` now.
    pub async fn leader(&self, tenant: &str, name: &str) -> Result<Option<Leader>, Error> {
        let request = pb::LeaderRequest { tenant: tenant.to_string(), name: name.to_string() };
        Ok(leader_from(self.election.clone().leader(request).await?.into_inner()))
    }

    /// The leader now, then every change: `None` while nobody leads.
    pub async fn observe(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<impl tokio_stream::Stream<Item = Result<Option<Leader>, Error>> + use<>, Error> {
        let request = pb::LeaderRequest { tenant: tenant.to_string(), name: name.to_string() };
        let stream = self.election.clone().observe(request).await?.into_inner();
        Ok(tokio_stream::StreamExt::map(stream, |item| item.map(leader_from).map_err(Error::from)))
    }
}
