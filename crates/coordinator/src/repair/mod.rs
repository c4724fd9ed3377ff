//! Anti-entropy and tombstone garbage collection.
//!
//! Replicas that missed writes converge without any client reading the
//! keys: the leader's [`AntiEntropy`] worker walks every tenant's every
//! token range of the ring (a *round*, spread evenly over
//! `repair.round`), and for each runs an [`exchange`]: the range's
//! replicas send their hash-tree digests, the keys of the segments that
//! differ are merged and sent back to the replicas that lack the merge (both
//! directions at once: every replica ends with the union). A range found
//! converged then has its old tombstones reaped, only where every replica
//! holds exactly the same ones (see [`exchange::exchange`]).
//!
//! Ranges whose hints a node gave up on (escalated, see the node's `hints`
//! module) reach the worker through the leader's probe and are synced
//! before the round goes on, until an exchange reached every replica.
//!
//! Rounds pause while a membership change moves data (the migration's
//! copy already merges every old owner into the new ones, and reaping a
//! tombstone needs one ring). Every exchange is recorded in the
//! [`RepairLedger`], which `cohort admin repair status` shows; `cohort admin
//! repair node|range` runs exchanges at once, on the coordinator asked.

pub mod exchange;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cohort_ring::TokenRange;
use cohort_ring::movement::segments;
use cohort_worker::{Step, Worker};
use rand::Rng;

pub use exchange::{ExchangeReport, Suspects, exchange};

use crate::server::Coordinator;
use crate::topology::{Placement, Replica};

/// One unit of anti-entropy: a tenant's token range and its replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The tenant.
    pub tenant: String,
    /// The range: one arc of the ring, where every token has the same
    /// replicas.
    pub range: TokenRange,
    /// The range's preference list for the tenant's replication factor.
    pub replicas: Vec<Replica>,
}

/// Every tenant's every range with at least two replicas, in token order,
/// under the single live ring version; `None` while a membership change
/// keeps two versions live.
pub fn targets(placement: &Placement, tenants: &[(String, usize)]) -> Option<Vec<Target>> {
    let [live] = placement.live.as_slice() else {
        return if placement.live.is_empty() { Some(Vec::new()) } else { None };
    };
    let mut out = Vec::new();
    for range in segments(&live.ring, &live.ring) {
        for (tenant, n) in tenants {
            // A replica without a known address could not be asked: such a
            // range is left out rather than compared (and reaped) without it.
            let replicas: Option<Vec<Replica>> = live
                .ring
                .preference_list(range.end, *n)
                .into_iter()
                .map(|node| {
                    placement.address(&node.id).map(|address| Replica { id: node.id.clone(), address: address.into() })
                })
                .collect();
            if let Some(replicas) = replicas.filter(|r| r.len() >= 2) {
                out.push(Target { tenant: tenant.clone(), range, replicas });
            }
        }
    }
    Some(out)
}

/// The last exchange of one range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeRecord {
    /// The tenant.
    pub tenant: String,
    /// The range.
    pub range: TokenRange,
    /// Its replicas' ids.
    pub replicas: Vec<String>,
    /// When it was last exchanged, in milliseconds since the Unix epoch.
    pub last_exchange_ms: u64,
    /// Exchanges of the range recorded.
    pub exchanges: u64,
    /// Keys repaired by its last exchange.
    pub last_keys_repaired: u64,
    /// Keys repaired by all its exchanges.
    pub keys_repaired: u64,
    /// Segments that differed in its last exchange.
    pub differing_segments: u64,
    /// Replicas that did not answer its last exchange.
    pub unreachable: Vec<String>,
    /// Tombstones reaped in it.
    pub tombstones_reaped: u64,
    /// Whether its last exchange could not reap (a replica missing or
    /// differing).
    pub gc_blocked: bool,
}

/// How anti-entropy is doing, on this coordinator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairSnapshot {
    /// `running`, `suspended` (a membership change moves data), `disabled`
    /// or `stopped` (this coordinator does not lead).
    pub state: String,
    /// Rounds started since this coordinator began to lead.
    pub round: u64,
    /// When the current round started (milliseconds since the epoch).
    pub round_started_ms: u64,
    /// Ranges in the current round, and how many were exchanged.
    pub round_total: u64,
    /// Ranges of the current round already exchanged.
    pub round_done: u64,
    /// Every range's last exchange.
    pub ranges: Vec<RangeRecord>,
}

/// Exchange records, by tenant and range start, and the ranges escalated
/// to anti-entropy.
#[derive(Debug, Default)]
pub struct RepairLedger {
    inner: Mutex<RepairSnapshot>,
    ranges: Mutex<BTreeMap<(String, u64), RangeRecord>>,
    escalated: Mutex<Vec<(String, TokenRange)>>,
    /// Escalated ranges synced on every replica, until the probe has told
    /// the nodes (which then drop their markers).
    synced: Mutex<Vec<(String, TokenRange)>>,
    /// Per node, the ranges where it holds handoffs (as its last probe said).
    handoffs: Mutex<BTreeMap<String, Vec<(String, TokenRange)>>>,
    /// Wakes the worker when a range is escalated.
    wake: tokio::sync::Notify,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl RepairLedger {
    /// Records one exchange of `target`.
    pub fn record(&self, target: &Target, report: &ExchangeReport) {
        let mut ranges = self.ranges.lock().unwrap_or_else(|p| p.into_inner());
        let record = ranges.entry((target.tenant.clone(), target.range.start)).or_default();
        record.tenant = target.tenant.clone();
        record.range = target.range;
        record.replicas = target.replicas.iter().map(|r| r.id.clone()).collect();
        record.last_exchange_ms = now_ms();
        record.exchanges += 1;
        record.last_keys_repaired = report.keys_repaired;
        record.keys_repaired += report.keys_repaired;
        record.differing_segments = report.differing_segments;
        record.unreachable = report.unreachable.clone();
        record.tombstones_reaped += report.tombstones_reaped;
        record.gc_blocked = report.gc_blocked;
        let blocked = ranges.values().filter(|r| r.gc_blocked).count();
        metrics::gauge!("cohort_gc_blocked_ranges").set(blocked as f64);
    }

    /// Queues a tenant's token range whose hints a node gave up on: the
    /// worker syncs it before anything else, and keeps it queued until an
    /// exchange reached every replica.
    pub fn escalate(&self, tenant: String, range: TokenRange) {
        let synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        if synced.iter().any(|(t, r)| *t == tenant && *r == range) {
            // Synced already; the node has not heard yet.
            return;
        }
        drop(synced);
        let queued =
            self.escalated.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|(t, r)| *t == tenant && *r == range);
        if !queued {
            metrics::counter!("cohort_repair_escalations_total").increment(1);
            self.requeue(tenant, range);
            self.wake.notify_one();
        }
    }

    /// Records that an escalated range was synced on every replica.
    fn mark_synced(&self, tenant: String, range: TokenRange) {
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        if !synced.iter().any(|(t, r)| *t == tenant && *r == range) {
            synced.push((tenant, range));
        }
    }

    /// Escalated ranges synced since the nodes were last told.
    pub fn synced(&self) -> Vec<(String, TokenRange)> {
        self.synced.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forgets synced ranges the nodes have been told of.
    pub fn told(&self, ranges: &[(String, TokenRange)]) {
        self.synced.lock().unwrap_or_else(|p| p.into_inner()).retain(|entry| !ranges.contains(entry));
    }

    /// Queues a range again without waking the worker (its exchange
    /// missed a replica; it is retried shortly).
    fn requeue(&self, tenant: String, range: TokenRange) {
        let mut escalated = self.escalated.lock().unwrap_or_else(|p| p.into_inner());
        if !escalated.iter().any(|(t, r)| *t == tenant && *r == range) {
            escalated.push((tenant, range));
        }
    }

    fn take_escalated(&self) -> Vec<(String, TokenRange)> {
        std::mem::take(&mut *self.escalated.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Records the ranges where `node` holds handoffs for other replicas.
    pub fn set_handoffs(&self, node: &str, ranges: Vec<(String, TokenRange)>) {
        let mut handoffs = self.handoffs.lock().unwrap_or_else(|p| p.into_inner());
        if ranges.is_empty() {
            handoffs.remove(node);
        } else {
            handoffs.insert(node.to_string(), ranges);
        }
    }

    /// Whether some node holds a handoff in `range` of `tenant`: a replica
    /// may still lack a write there, so nothing there may be reaped.
    pub fn holds_handoffs(&self, tenant: &str, range: TokenRange) -> bool {
        let handoffs = self.handoffs.lock().unwrap_or_else(|p| p.into_inner());
        handoffs.values().flatten().any(|(t, r)| t == tenant && r.start <= range.end && range.start <= r.end)
    }

    /// Ranges escalated and not yet synced on every replica.
    pub fn escalated(&self) -> usize {
        self.escalated.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn set(&self, change: impl FnOnce(&mut RepairSnapshot)) {
        change(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The state, the round and every range's last exchange.
    pub fn snapshot(&self) -> RepairSnapshot {
        let mut out = self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if out.state.is_empty() {
            out.state = "stopped".into();
        }
        out.ranges = self.ranges.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        out
    }
}

/// The tenants and their replication factors.
async fn replication(coordinator: &Coordinator) -> Result<Vec<(String, usize)>, String> {
    let tenants = coordinator.metadata.list_tenants().await.map_err(|e| format!("listing tenants: {e}"))?;
    Ok(tenants.into_iter().map(|t| (t.id, usize::from(t.replication.n()))).collect())
}

/// The current targets and the ring version they were computed from (one
/// snapshot: an exchange routed by that version is refused by a node that
/// has moved past it), or why there are none to run.
pub async fn current_targets(coordinator: &Coordinator) -> Result<(u64, Vec<Target>), String> {
    let tenants = replication(coordinator).await?;
    let placement = coordinator.topology.current();
    let chosen = targets(&placement, &tenants)
        .ok_or_else(|| "a membership change is moving data; anti-entropy resumes once it ends".to_string())?;
    Ok((placement.ring_version(), chosen))
}

/// Exchanges every target, computed under `ring_version`, at once (a
/// forced repair), records them, and adds up their reports.
pub async fn run_now(coordinator: &Coordinator, ring_version: u64, chosen: Vec<Target>) -> ExchangeReport {
    let grace = coordinator.config.repair.gc.then_some(coordinator.config.repair.gc_grace);
    let mut total = ExchangeReport::default();
    for target in &chosen {
        let report = exchange(coordinator, target, ring_version, grace, Suspects::Ask).await;
        coordinator.repair.record(target, &report);
        add(&mut total, report);
    }
    total
}

fn add(total: &mut ExchangeReport, report: ExchangeReport) {
    total.segments += report.segments;
    total.differing_segments += report.differing_segments;
    total.keys_compared += report.keys_compared;
    total.keys_repaired += report.keys_repaired;
    total.bytes += report.bytes;
    total.tombstones_reaped += report.tombstones_reaped;
    total.gc_blocked |= report.gc_blocked;
    for node in report.unreachable {
        if !total.unreachable.contains(&node) {
            total.unreachable.push(node);
        }
    }
}

/// Most the pause between exchanges grows after overruns.
const MAX_BACKOFF: u32 = 64;
/// How soon an escalated range whose exchange missed a replica is tried
/// again.
const ESCALATION_RETRY: Duration = Duration::from_secs(1);
/// How soon a suspended round looks again whether the change ended.
const SUSPENDED_RETRY: Duration = Duration::from_secs(1);

/// The leader's anti-entropy worker: the ranges nodes escalated first,
/// then one exchange of the round whenever the round's pacing says one is
/// due, so a round takes about `repair.round`.
pub struct AntiEntropy {
    coordinator: Arc<Coordinator>,
    round: Vec<Target>,
    /// The ring version the round's targets were computed from.
    round_version: u64,
    next: usize,
    /// When the round's next exchange is due.
    due: Instant,
    /// The factor the pause is multiplied by after exchanges that overran
    /// their budget.
    backoff: u32,
}

impl AntiEntropy {
    /// A worker for `coordinator`'s leader.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        AntiEntropy { coordinator, round: Vec::new(), round_version: 0, next: 0, due: Instant::now(), backoff: 1 }
    }

    /// The pause between two exchanges of a round of `ranges`, jittered by
    /// up to half each way so that rounds never line up.
    fn paced(&self, ranges: usize) -> Duration {
        let even = self.coordinator.config.repair.round / ranges.max(1) as u32;
        even.mul_f64(rand::rng().random_range(0.5..1.5)) * self.backoff
    }

    /// Exchanges every range that overlaps an escalated one; a range whose
    /// exchange missed a replica (suspected ones are not waited for) stays
    /// queued.
    async fn sync_escalated(&self, escalated: Vec<(String, TokenRange)>) {
        let c = &self.coordinator;
        let (ring_version, targets) = match current_targets(c).await {
            Ok(current) => current,
            Err(_) => {
                for (tenant, range) in escalated {
                    c.repair.requeue(tenant, range);
                }
                return;
            }
        };
        for (tenant, range) in escalated {
            let mut complete = true;
            let overlapping = targets
                .iter()
                .filter(|t| t.tenant == tenant && t.range.start <= range.end && range.start <= t.range.end);
            for target in overlapping {
                let report = exchange(c, target, ring_version, None, Suspects::Skip).await;
                c.repair.record(target, &report);
                complete &= report.unreachable.is_empty();
            }
            if complete {
                c.repair.mark_synced(tenant, range);
            } else {
                c.repair.requeue(tenant, range);
            }
        }
    }

    /// One exchange of the round, starting the next round when this one is
    /// done; returns the pause until the next is due.
    async fn round_step(&mut self) -> Duration {
        let c = self.coordinator.clone();
        let config = &c.config.repair;
        if self.next >= self.round.len() {
            match current_targets(&c).await {
                Ok((version, round)) => {
                    self.round = round;
                    self.round_version = version;
                    self.next = 0;
                    let total = self.round.len() as u64;
                    c.repair.set(|s| {
                        s.state = "running".into();
                        s.round += 1;
                        s.round_started_ms = now_ms();
                        s.round_total = total;
                        s.round_done = 0;
                    });
                }
                Err(why) => {
                    c.repair.set(|s| s.state = "suspended".into());
                    tracing::debug!(%why, "anti-entropy suspended");
                    return SUSPENDED_RETRY;
                }
            }
            if self.round.is_empty() {
                return config.round;
            }
        }
        let placement = c.topology.current();
        if placement.live.len() > 1 || placement.ring_version() != self.round_version {
            // The ring changed mid-round: its targets are stale; start over
            // (once the change has ended).
            self.round.clear();
            c.repair.set(|s| s.state = "suspended".into());
            return SUSPENDED_RETRY;
        }
        let target = self.round[self.next].clone();
        self.next += 1;
        let started = Instant::now();
        let grace = config.gc.then_some(config.gc_grace);
        let report = exchange(&c, &target, self.round_version, grace, Suspects::Skip).await;
        c.repair.record(&target, &report);
        c.repair.set(|s| s.round_done += 1);
        let took = started.elapsed();
        self.backoff = if took > config.exchange_budget { (self.backoff * 2).min(MAX_BACKOFF) } else { 1 };
        // The byte budget: an exchange that moved b bytes is followed by at
        // least b / rate of quiet.
        let owed = match config.bytes_per_sec {
            0 => Duration::ZERO,
            rate => Duration::from_secs_f64(report.bytes as f64 / rate as f64).saturating_sub(took),
        };
        self.paced(self.round.len()).max(owed)
    }
}

impl Drop for AntiEntropy {
    fn drop(&mut self) {
        self.coordinator.repair.set(|s| s.state = "stopped".into());
    }
}

#[tonic::async_trait]
impl Worker for AntiEntropy {
    fn name(&self) -> &'static str {
        "anti-entropy"
    }

    async fn work(&mut self) -> Result<Step, String> {
        let escalated = self.coordinator.repair.take_escalated();
        if !escalated.is_empty() {
            self.sync_escalated(escalated).await;
        }
        if !self.coordinator.config.repair.enabled {
            self.coordinator.repair.set(|s| s.state = "disabled".into());
        } else if Instant::now() >= self.due {
            let pause = self.round_step().await;
            self.due = Instant::now() + pause;
        }
        Ok(Step::Idle)
    }

    async fn wait_for_work(&mut self) {
        let repair = &self.coordinator.repair;
        let mut until = match self.coordinator.config.repair.enabled {
            true => self.due,
            false => Instant::now() + Duration::from_secs(3600),
        };
        if repair.escalated() > 0 {
            until = until.min(Instant::now() + ESCALATION_RETRY);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(until.into()) => {}
            _ = repair.wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use cohort_ring::NodeSpec;

    use super::*;
    use crate::metadata::{NodeRecord, RingHistory, RingVersion};

    fn placement(live: Vec<Vec<&str>>) -> Placement {
        let history = RingHistory {
            live: live
                .iter()
                .enumerate()
                .map(|(i, ids)| RingVersion {
                    version: i as u64 + 1,
                    nodes: ids.iter().map(|id| NodeSpec::new(*id).with_vnodes(8)).collect(),
                })
                .collect(),
        };
        let ids: Vec<&str> = live.iter().flatten().copied().collect();
        let nodes = ids
            .iter()
            .map(|id| NodeRecord {
                id: id.to_string(),
                address: format!("{id}:1"),
                zone: None,
                vnodes: 8,
                state: crate::metadata::NodeState::Active,
            })
            .collect();
        Placement::new(history, nodes, 1).expect("a valid placement")
    }

    #[test]
    fn every_tenants_every_range_is_a_target_with_its_replicas() {
        let placement = placement(vec![vec!["a", "b", "c"]]);
        let tenants = vec![("three".to_string(), 3), ("one".to_string(), 1), ("two".to_string(), 2)];
        let targets = targets(&placement, &tenants).expect("one live version");
        let ring = &placement.live[0].ring;
        let ranges = segments(ring, ring);
        // N = 1 has nothing to compare.
        assert_eq!(targets.len(), ranges.len() * 2);
        for target in &targets {
            let n = if target.tenant == "three" { 3 } else { 2 };
            let expected: Vec<String> =
                ring.preference_list(target.range.start, n).into_iter().map(|node| node.id.clone()).collect();
            let got: Vec<String> = target.replicas.iter().map(|r| r.id.clone()).collect();
            assert_eq!(got, expected, "every token of a range has the same replicas");
        }
        let covered: u128 =
            targets.iter().filter(|t| t.tenant == "three").map(|t| u128::from(t.range.end - t.range.start) + 1).sum();
        assert_eq!(covered, u128::from(u64::MAX) + 1, "the ranges cover the token space once");
    }

    #[test]
    fn nothing_is_exchanged_while_two_ring_versions_are_live() {
        let placement = placement(vec![vec!["a", "b", "c"], vec!["a", "b", "c", "d"]]);
        assert_eq!(targets(&placement, &[("t".to_string(), 3)]), None);
    }
}
