//! One exchange: the replicas of one tenant's token range compare their
//! hash trees, the keys of the segments that differ are merged (DVV sync)
//! and sent to every replica that lacks the merge; then, on a range found
//! converged, tombstones every replica has held long enough are reaped.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_proto::internal::v1::{DigestRequest, MergeRequest, PurgeRequest, ScanRequest, TombstonesRequest};
use cohort_ring::merkle;
use cohort_ring::{SiblingSet, TokenRange};
use cohort_transport::{NodeClient, ReplicaFailure, within};
use futures::future::join_all;

use super::Target;
use crate::server::Coordinator;
use crate::topology::Replica;

/// Keys per scan page of a differing segment.
const PAGE_KEYS: u32 = 256;
/// How many node timeouts a replica that failed a digest stays suspected.
const SUSPECT_TIMEOUTS: u32 = 3;
/// Most tombstones one replica lists per range and exchange.
const TOMBSTONES_PER_EXCHANGE: u32 = 1024;

/// What one exchange did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExchangeReport {
    /// Digest segments compared.
    pub segments: u64,
    /// Segments whose hashes differed between replicas.
    pub differing_segments: u64,
    /// Keys read from the differing segments.
    pub keys_compared: u64,
    /// Keys sent to at least one replica that lacked their merged state.
    pub keys_repaired: u64,
    /// Bytes read and sent (digests, scanned states, merges).
    pub bytes: u64,
    /// Replicas that did not answer (the range is compared among the rest).
    pub unreachable: Vec<String>,
    /// Tombstones reaped on every replica.
    pub tombstones_reaped: u64,
    /// Whether garbage collection had to skip the range: a replica did not
    /// answer, or its trees differed.
    pub gc_blocked: bool,
}

/// How an exchange treats a replica the liveness view suspects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suspects {
    /// Left out at no cost (the periodic rounds: a replica just back is
    /// included once its suspicion lapses).
    Skip,
    /// Asked like any other (forced repairs, escalated ranges).
    Ask,
}

/// Runs one exchange of `target`'s replicas under ring version
/// `ring_version`, then its garbage collection when `gc_grace` is given.
pub async fn exchange(
    coordinator: &Coordinator,
    target: &Target,
    ring_version: u64,
    gc_grace: Option<Duration>,
    suspects: Suspects,
) -> ExchangeReport {
    let started = Instant::now();
    let mut report = ExchangeReport::default();
    let segments = merkle::segments(target.range);
    report.segments = segments.len() as u64;
    let timeout = coordinator.config.node_timeout * 4;

    let digests = join_all(target.replicas.iter().map(|replica| async move {
        let request = DigestRequest {
            tenant: target.tenant.clone(),
            start: target.range.start,
            end: target.range.end,
            ring_version,
        };
        // A replica believed down costs no timeout: it is left out (and
        // reaping in the range waits for it).
        if suspects == Suspects::Skip && coordinator.liveness.is_suspect(&replica.id) {
            return (replica, Err("believed down".to_string()));
        }
        let answer = match client(coordinator, replica) {
            Some(client) => within(timeout, client.digest(request)).await,
            None => Err(ReplicaFailure::NotSent("no client for its address".into())),
        };
        // Only a replica that did not answer is suspected (one that refused
        // is up).
        if let Err(ReplicaFailure::NotSent(_) | ReplicaFailure::TimedOut(_)) = &answer {
            coordinator.liveness.suspect(&replica.id, coordinator.config.node_timeout * SUSPECT_TIMEOUTS);
        }
        (replica, answer.map_err(|f| f.to_string()))
    }))
    .await;
    let mut answered: Vec<(&Replica, Vec<u64>)> = Vec::new();
    for (replica, answer) in digests {
        match answer {
            Ok(digest) if digest.segments.len() == segments.len() => answered.push((replica, digest.segments)),
            Ok(_) => report.unreachable.push(replica.id.clone()),
            Err(reason) => {
                tracing::debug!(node = %replica.id, %reason, "anti-entropy digest failed");
                report.unreachable.push(replica.id.clone());
            }
        }
    }
    report.bytes += (answered.len() * segments.len() * 8) as u64;
    if answered.len() < 2 {
        report.gc_blocked = true;
        finish(&report, started);
        return report;
    }

    let differing: Vec<usize> =
        (0..segments.len()).filter(|&i| answered.iter().any(|(_, hashes)| hashes[i] != answered[0].1[i])).collect();
    report.differing_segments = differing.len() as u64;
    for span in spans(&segments, &differing) {
        sync_span(coordinator, target, ring_version, &answered, span, &mut report).await;
    }

    if let Some(grace) = gc_grace {
        let handed_off = coordinator.repair.holds_handoffs(&target.tenant, target.range);
        if report.unreachable.is_empty() && differing.is_empty() && !handed_off {
            reap(coordinator, target, ring_version, grace, &mut report).await;
        } else {
            report.gc_blocked = true;
        }
    }
    finish(&report, started);
    report
}

fn finish(report: &ExchangeReport, started: Instant) {
    metrics::counter!("cohort_repair_exchanges_total").increment(1);
    metrics::counter!("cohort_repair_segments_differing_total").increment(report.differing_segments);
    metrics::counter!("cohort_repair_keys_repaired_total").increment(report.keys_repaired);
    metrics::counter!("cohort_repair_bytes_total").increment(report.bytes);
    metrics::counter!("cohort_gc_tombstones_reaped_total").increment(report.tombstones_reaped);
    metrics::histogram!("cohort_repair_exchange_seconds").record(started.elapsed().as_secs_f64());
}

fn client(coordinator: &Coordinator, replica: &Replica) -> Option<NodeClient> {
    coordinator.peers.node(&replica.address).ok()
}

/// Runs of adjacent differing segments, each as one token range.
fn spans(segments: &[TokenRange], differing: &[usize]) -> Vec<TokenRange> {
    let mut out: Vec<TokenRange> = Vec::new();
    let mut previous: Option<usize> = None;
    for &i in differing {
        match (previous, out.last_mut()) {
            (Some(p), Some(last)) if p + 1 == i => last.end = segments[i].end,
            _ => out.push(segments[i]),
        }
        previous = Some(i);
    }
    out
}

/// Reads `span` of the tenant on every answering replica, merges each key's
/// states and sends the merge to every replica whose state differs.
async fn sync_span(
    coordinator: &Coordinator,
    target: &Target,
    ring_version: u64,
    answered: &[(&Replica, Vec<u64>)],
    span: TokenRange,
    report: &mut ExchangeReport,
) {
    // Per key, each answering replica's state (None: the replica lacks it).
    let mut keys: BTreeMap<Bytes, Vec<Option<SiblingSet>>> = BTreeMap::new();
    let mut reachable = vec![true; answered.len()];
    for (index, (replica, _)) in answered.iter().enumerate() {
        let Some(client) = client(coordinator, replica) else {
            reachable[index] = false;
            continue;
        };
        let mut after = Bytes::new();
        loop {
            let request = ScanRequest {
                start: span.start,
                end: span.end,
                after: after.clone(),
                limit: PAGE_KEYS,
                count_only: false,
                tenant: target.tenant.clone(),
                acceptors: false,
            };
            let page = match within(coordinator.config.node_timeout * 4, client.scan(request)).await {
                Ok(page) => page,
                Err(failure) => {
                    tracing::debug!(node = %replica.id, %failure, "anti-entropy scan failed");
                    reachable[index] = false;
                    break;
                }
            };
            report.bytes += page.bytes;
            for entry in page.entries {
                match SiblingSet::decode(&entry.state) {
                    Ok(state) => {
                        keys.entry(entry.key).or_insert_with(|| vec![None; answered.len()])[index] = Some(state);
                    }
                    Err(error) => tracing::warn!(node = %replica.id, %error, "a replica holds an unreadable state"),
                }
            }
            if page.next.is_empty() {
                break;
            }
            after = page.next;
        }
    }
    report.keys_compared += keys.len() as u64;
    for (key, states) in keys {
        let mut merged = SiblingSet::new();
        for state in states.iter().flatten() {
            merged.sync(state);
        }
        let encoded = Bytes::from(merged.encode());
        let stale: Vec<usize> =
            (0..answered.len()).filter(|&i| reachable[i] && states[i].as_ref() != Some(&merged)).collect();
        if stale.is_empty() {
            continue;
        }
        report.keys_repaired += 1;
        let sends = stale.iter().map(|&i| {
            let request = MergeRequest {
                tenant: target.tenant.clone(),
                key: key.clone(),
                state: encoded.clone(),
                ring_version,
                ..Default::default()
            };
            let replica = answered[i].0;
            async move {
                let Some(client) = client(coordinator, replica) else { return };
                if let Err(failure) = within(coordinator.config.node_timeout, client.merge(request)).await {
                    tracing::debug!(node = %replica.id, %failure, "anti-entropy merge failed");
                }
            }
        });
        report.bytes += (encoded.len() * stale.len()) as u64;
        join_all(sends).await;
    }
}

/// Reaps the tombstones every replica of a converged range has held for
/// `grace`: a key is purged only where all of them list it with one and
/// the same state, and each replica purges it only if it still holds
/// exactly that state (a write since then keeps it).
async fn reap(
    coordinator: &Coordinator,
    target: &Target,
    ring_version: u64,
    grace: Duration,
    report: &mut ExchangeReport,
) {
    let timeout = coordinator.config.node_timeout * 4;
    let listings = join_all(target.replicas.iter().map(|replica| async move {
        let request = TombstonesRequest {
            tenant: target.tenant.clone(),
            start: target.range.start,
            end: target.range.end,
            grace_secs: grace.as_secs(),
            limit: TOMBSTONES_PER_EXCHANGE,
        };
        match client(coordinator, replica) {
            Some(client) => within(timeout, client.tombstones(request)).await.ok(),
            None => None,
        }
    }))
    .await;
    let Some(listings) = listings.into_iter().collect::<Option<Vec<_>>>() else {
        report.gc_blocked = true;
        return;
    };
    // A key is a candidate when every replica lists it with the same state.
    let mut candidates: BTreeMap<Bytes, (Bytes, usize)> = BTreeMap::new();
    for listing in &listings {
        for entry in &listing.entries {
            let seen = candidates.entry(entry.key.clone()).or_insert_with(|| (entry.state.clone(), 0));
            if seen.0 == entry.state {
                seen.1 += 1;
            }
        }
    }
    for (key, (state, count)) in candidates {
        if count != target.replicas.len() {
            continue;
        }
        let purges = target.replicas.iter().map(|replica| {
            let request =
                PurgeRequest { tenant: target.tenant.clone(), key: key.clone(), state: state.clone(), ring_version };
            async move {
                let client = client(coordinator, replica)?;
                within(coordinator.config.node_timeout, client.purge(request)).await.ok().map(|r| r.purged)
            }
        });
        let results = join_all(purges).await;
        if results.iter().all(|r| *r == Some(true)) {
            report.tombstones_reaped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_differing_segments_join_into_one_span() {
        let segments: Vec<TokenRange> = (0..6).map(|i| TokenRange { start: i * 10, end: i * 10 + 9 }).collect();
        assert_eq!(
            spans(&segments, &[0, 1, 3, 5]),
            vec![
                TokenRange { start: 0, end: 19 },
                TokenRange { start: 30, end: 39 },
                TokenRange { start: 50, end: 59 }
            ]
        );
        assert!(spans(&segments, &[]).is_empty());
    }
}
