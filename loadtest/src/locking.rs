//! A recorded lock workload, shared by `cohort-loadtest verify --workload
//! lock` and the test suite: workers take turns under one lock, each
//! writing a protected key (compare-and-set) with its fencing token; some
//! turns stall past the lease before writing, as a paused process would,
//! and write anyway. Every grant and every write the key accepted is
//! recorded; the verdict checks that tokens follow real time and that no
//! write was accepted with a stale token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cohort_checker::{FencedWrite, Grant, StaleWrite, check_fencing, check_grant_order};
use cohort_client::{CasWrite, Client, Fence, LockOptions};
use tokio::sync::Mutex;

/// What the workers of a lock workload do.
#[derive(Debug, Clone, Copy)]
pub struct LockWorkload {
    /// Concurrent workers.
    pub clients: u32,
    /// Turns per worker.
    pub rounds: u32,
    /// The lease's TTL; a stalled turn sleeps past it.
    pub ttl: Duration,
    /// Every how many turns a worker stalls (0: never).
    pub stall_every: u32,
}

/// What a lock workload found.
#[derive(Debug, Default)]
pub struct LockVerdict {
    /// Grants recorded.
    pub grants: usize,
    /// Fenced writes the key accepted.
    pub accepted: usize,
    /// Fenced writes refused (stale token or a version that moved).
    pub refused: u64,
    /// Fenced writes whose outcome stayed unknown (not checked).
    pub unknown: u64,
    /// Writes accepted with a stale token: must be none.
    pub stale: Vec<StaleWrite>,
    /// Grants whose tokens contradict real time: must be none.
    pub misordered: Vec<(Grant, Grant)>,
}

impl LockVerdict {
    /// Whether both checks held.
    pub fn is_ok(&self) -> bool {
        self.stale.is_empty() && self.misordered.is_empty()
    }
}

impl std::fmt::Display for LockVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} grants, {} fenced writes accepted, {} refused, {} of unknown outcome; {} accepted with a stale token, \
             {} grants out of order",
            self.grants,
            self.accepted,
            self.refused,
            self.unknown,
            self.stale.len(),
            self.misordered.len()
        )?;
        for stale in &self.stale {
            write!(f, "\n  stale write: {stale:?}")?;
        }
        for pair in &self.misordered {
            write!(f, "\n  grants out of order: {pair:?}")?;
        }
        Ok(())
    }
}

/// Runs `workload` on lock `name` and key `key` of `tenant`, workers spread
/// over `clients`; fails on an error the workload does not expect.
pub async fn run(
    workload: LockWorkload,
    tenant: &str,
    name: &str,
    key: &str,
    clients: &[Client],
) -> anyhow::Result<LockVerdict> {
    let start = Instant::now();
    let grants = Arc::new(Mutex::new(Vec::new()));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for worker in 0..workload.clients {
        let client = clients[worker as usize % clients.len()].clone();
        let (grants, accepted) = (grants.clone(), accepted.clone());
        let (tenant, name, key) = (tenant.to_string(), name.to_string(), key.to_string());
        workers.push(tokio::spawn(async move {
            let (locks, cas) = (client.locks(), client.cas());
            let (mut refused, mut unknown) = (0u64, 0u64);
            for round in 0..workload.rounds {
                let invoked_ns = start.elapsed().as_nanos() as u64;
                let options = LockOptions { ttl: workload.ttl, wait: Some(Duration::from_secs(60)) };
                let guard = locks.acquire(&tenant, &name, options).await?;
                let completed_ns = start.elapsed().as_nanos() as u64;
                let (token, lease) = (guard.token(), guard.lease());
                grants.lock().await.push(Grant { invoked_ns, completed_ns, token });
                // A stalled turn stops keeping its lease alive, as a paused
                // process would, and writes anyway afterwards.
                let stall = workload.stall_every > 0 && (worker + round) % workload.stall_every == 0;
                let guard = if stall {
                    drop(guard);
                    tokio::time::sleep(workload.ttl + Duration::from_millis(100)).await;
                    None
                } else {
                    Some(guard)
                };
                let read = cas.get(&tenant, key.clone()).await?;
                let write = CasWrite { fence: Some(Fence { lock: name.clone(), token }), ..CasWrite::default() };
                match cas.put_with(&tenant, key.clone(), format!("w{worker}-{round}"), read.version, write).await {
                    Ok(version) => accepted.lock().await.push(FencedWrite { version, token }),
                    Err(error) if error.code() == Some(tonic::Code::FailedPrecondition) => refused += 1,
                    Err(error) if error.code() == Some(tonic::Code::DeadlineExceeded) => unknown += 1,
                    Err(error) => return Err(anyhow::Error::from(error)),
                }
                match guard {
                    Some(guard) => guard.release().await?,
                    // Its lease is gone: the lock is free or another's
                    // already; a release changes nothing either way.
                    None => drop(locks.release(&tenant, &name, lease).await),
                }
            }
            Ok::<_, anyhow::Error>((refused, unknown))
        }));
    }
    let mut verdict = LockVerdict::default();
    for worker in workers {
        let (refused, unknown) = worker.await??;
        verdict.refused += refused;
        verdict.unknown += unknown;
    }
    let (grants, accepted) = (grants.lock().await.clone(), accepted.lock().await.clone());
    verdict.grants = grants.len();
    verdict.accepted = accepted.len();
    verdict.stale = check_fencing(&accepted);
    verdict.misordered = check_grant_order(&grants);
    Ok(verdict)
}
