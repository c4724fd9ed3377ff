//! A recorded lock workload, shared by `cohort-loadtest verify --workload
//! lock` and the test suite: workers take turns under one lock, each
//! writing a protected key with its fencing token — a compare-and-set key,
//! or a key-value key (`FencedStore`); some turns stall past the lease
//! before writing, as a paused process would, and write anyway. Every grant
//! and every write the key accepted is recorded; the verdict checks that
//! tokens follow real time, that no write was accepted with a stale token
//! and, for a key-value key, that no value written under an older token
//! survives in the key once all writes are done.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cohort_checker::{
    FencedWrite, Grant, StaleWrite, TimedWrite, check_fencing, check_fencing_in_time, check_grant_order,
};
use cohort_client::{CasWrite, Client, Consistency, Fence, LockOptions, ReadOptions, WriteOptions};
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
    /// Where the protected key lives.
    pub store: FencedStore,
}

/// The key space of the key a lock workload protects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FencedStore {
    /// A compare-and-set key: each turn reads it and writes at its version.
    #[default]
    Cas,
    /// A key-value key: each turn writes it blind, at quorum.
    Kv,
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
    /// Key-value writes accepted though a higher token's write had been
    /// acknowledged before they were invoked: must be none.
    pub stale_in_time: Vec<(TimedWrite, TimedWrite)>,
    /// Key-value values left in the key at the end that were written under
    /// a lower token than the highest accepted: must be none.
    pub stale_survivors: Vec<String>,
    /// Grants whose tokens contradict real time: must be none.
    pub misordered: Vec<(Grant, Grant)>,
}

impl LockVerdict {
    /// Whether every check held.
    pub fn is_ok(&self) -> bool {
        self.stale.is_empty()
            && self.stale_in_time.is_empty()
            && self.stale_survivors.is_empty()
            && self.misordered.is_empty()
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
            self.stale.len() + self.stale_in_time.len(),
            self.misordered.len()
        )?;
        for stale in &self.stale {
            write!(f, "\n  stale write: {stale:?}")?;
        }
        for (write, after) in &self.stale_in_time {
            write!(f, "\n  stale write: {write:?}, invoked after {after:?} was acknowledged")?;
        }
        for value in &self.stale_survivors {
            write!(f, "\n  value of an older token survived: {value}")?;
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
    let accepted_kv = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for worker in 0..workload.clients {
        let client = clients[worker as usize % clients.len()].clone();
        let (grants, accepted, accepted_kv) = (grants.clone(), accepted.clone(), accepted_kv.clone());
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
                let fence = Some(Fence { lock: name.clone(), token });
                let value = format!("w{worker}-{round}-t{token}");
                let written = match workload.store {
                    FencedStore::Cas => {
                        let read = cas.get(&tenant, key.clone()).await?;
                        let write = CasWrite { fence, ..CasWrite::default() };
                        match cas.put_with(&tenant, key.clone(), value, read.version, write).await {
                            Ok(version) => {
                                accepted.lock().await.push(FencedWrite { version, token });
                                Ok(())
                            }
                            Err(error) => Err(error),
                        }
                    }
                    FencedStore::Kv => {
                        let invoked_ns = start.elapsed().as_nanos() as u64;
                        let options =
                            WriteOptions { fence, consistency: Some(Consistency::Quorum), ..WriteOptions::default() };
                        match client.put_with(&tenant, key.clone(), value, options).await {
                            Ok(_) => {
                                let completed_ns = start.elapsed().as_nanos() as u64;
                                accepted_kv.lock().await.push(TimedWrite { invoked_ns, completed_ns, token });
                                Ok(())
                            }
                            Err(error) => Err(error),
                        }
                    }
                };
                match written {
                    Ok(()) => {}
                    Err(error) if error.code() == Some(tonic::Code::FailedPrecondition) => refused += 1,
                    // The write may or may not have applied: not checked.
                    Err(error)
                        if matches!(error.code(), Some(tonic::Code::DeadlineExceeded | tonic::Code::Unavailable)) =>
                    {
                        unknown += 1
                    }
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
    let accepted_kv = accepted_kv.lock().await.clone();
    verdict.grants = grants.len();
    verdict.accepted = accepted.len() + accepted_kv.len();
    verdict.stale = check_fencing(&accepted);
    verdict.stale_in_time = check_fencing_in_time(&accepted_kv);
    verdict.misordered = check_grant_order(&grants);
    if workload.store == FencedStore::Kv {
        // Every value still in the key was written under the highest token
        // the key accepted: the replicas dropped every older holder's value.
        let highest = accepted_kv.iter().map(|w| w.token).max().unwrap_or(0);
        let read =
            clients[0].get_with(tenant, key.to_string(), ReadOptions { consistency: Some(Consistency::All) }).await?;
        for value in &read.siblings {
            let text = String::from_utf8_lossy(value).into_owned();
            let token: u64 = text.rsplit_once("-t").and_then(|(_, t)| t.parse().ok()).unwrap_or(0);
            if token < highest {
                verdict.stale_survivors.push(text);
            }
        }
    }
    Ok(verdict)
}
