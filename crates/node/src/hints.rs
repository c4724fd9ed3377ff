//! Hinted handoff: delivering the hints a node keeps for peers that missed
//! writes it coordinated.
//!
//! The `hint-delivery` worker sweeps the pending hint records every second,
//! taking those at least a second old (a younger one belongs to a write
//! whose own replication is still settling it) through the store's
//! in-memory index of keys with a record. For each it sends the key's current local state to every peer the record
//! names with a `Merge` (a DVV merge, so delivering twice, late or out of
//! order changes nothing), and settles the record: removed once every peer
//! holds the state, narrowed to those that did not answer otherwise. A peer
//! that does not answer is tried again at the next sweep; so a replica that was down
//! or cut off receives every write it missed within about a second of
//! answering again, without any client reading those keys.
//!
//! A hint is never dropped silently: only one whose delivery the peer
//! refuses as malformed (it never will take it) is dropped, with a warning
//! and `cohort_node_hints_dropped_total`. A hint that waits longer than
//! `hints.max_age`, or any undelivered one while more than
//! `hints.max_pending` are kept, is *escalated*: its record is replaced, in
//! one batch, by a marker of its key's hash-tree leaf, which the leader's
//! probe collects and its anti-entropy syncs among every replica of the
//! range (`cohort_node_hints_escalated_total`).
//!
//! The same worker hands off the states this node holds as a *fallback*
//! (a sloppy quorum counted it for a replica believed down; see the store's
//! `stage_handoff`): each is merged into the replica it is held for and
//! removed, unless a write reached it meanwhile. A handoff is never dropped
//! undelivered; while one is held, the node reports its range to the
//! leader (through `info`), which reaps no tombstone there.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cohort_proto::internal::v1::MergeRequest;
use cohort_transport::{PeerPool, ReplicaFailure, within};
use cohort_worker::{Step, Worker};
use futures::StreamExt;
use tokio::time::Interval;

use crate::config::HintsConfig;
use crate::store::{Handoff, Hint, Store};

/// Hints read per sweep.
const SWEEP_LIMIT: usize = 4096;
/// Hint records delivered at once.
const IN_FLIGHT: usize = 32;

/// The node's hint-delivery worker.
pub struct HintDelivery {
    store: Arc<Store>,
    peers: Arc<PeerPool>,
    timeout: Duration,
    tick: Interval,
    /// The sweep interval, also the age below which a record is left to
    /// the write that staged it.
    every: Duration,
    bounds: HintsConfig,
    /// When this worker first saw each undelivered record.
    first_seen: HashMap<(String, Vec<u8>, u64), Instant>,
}

impl HintDelivery {
    /// Delivers `store`'s hints through `peers`, each call bounded by
    /// `timeout`, sweeping every `every`, escalating past `bounds`.
    pub fn new(
        store: Arc<Store>,
        peers: Arc<PeerPool>,
        timeout: Duration,
        every: Duration,
        bounds: HintsConfig,
    ) -> Self {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        HintDelivery { store, peers, timeout, tick, every, bounds, first_seen: HashMap::new() }
    }

    /// Hands the states this node holds as a fallback to their replicas.
    /// Returns how many wait for a replica that did not answer.
    async fn deliver_handoffs(&self) -> Result<usize, String> {
        let store = self.store.clone();
        let held = tokio::task::spawn_blocking(move || store.pending_handoffs(SWEEP_LIMIT))
            .await
            .map_err(|e| format!("the handoff sweep task failed: {e}"))?
            .map_err(|e| format!("reading handoffs: {e}"))?;
        metrics::gauge!("cohort_node_handoffs_pending").set(held.len() as f64);
        let (store, peers, timeout) = (self.store.clone(), self.peers.clone(), self.timeout);
        let unreachable = Unreachable::default();
        let mut results = futures::stream::iter(held)
            .map(move |handoff| hand_off(store.clone(), peers.clone(), timeout, unreachable.clone(), handoff))
            .buffer_unordered(IN_FLIGHT);
        let mut waiting = 0;
        while let Some((handoff, delivered)) = results.next().await {
            if !delivered {
                waiting += 1;
                continue;
            }
            // Not removed if a write reached it meanwhile: the next sweep.
            if self.store.settle_handoff(&handoff).map_err(|e| format!("settling a handoff: {e}"))? {
                metrics::counter!("cohort_node_handoffs_delivered_total").increment(1);
            }
        }
        Ok(waiting)
    }

    /// Escalates `hint` to anti-entropy: its peers in `left` get the key's
    /// range synced by the leader instead.
    fn escalate(&self, hint: &Hint, reason: &'static str) -> Result<(), String> {
        if self.store.escalate_hint(hint).map_err(|e| format!("escalating a hint: {e}"))? {
            tracing::warn!(tenant = %hint.tenant, reason, "hint escalated to anti-entropy");
            metrics::counter!("cohort_node_hints_escalated_total", "reason" => reason).increment(1);
        }
        Ok(())
    }
}

/// Peers found unreachable during one sweep: the rest of the sweep does not
/// try them again, so a dead peer costs a few timeouts per sweep, not one
/// per hint, and never holds up the others.
type Unreachable = Arc<Mutex<HashSet<String>>>;

/// What became of one hint record's delivery.
struct Delivery {
    hint: Hint,
    /// Peers not reached (or not tried, being unreachable this sweep).
    left: Vec<(String, String)>,
    /// A peer refused it as routed by a ring it has moved past: the key may
    /// have other replicas now, which only anti-entropy knows.
    ring_moved: bool,
}

/// Delivers one hint record to each of its peers.
async fn deliver(
    store: Arc<Store>,
    peers: Arc<PeerPool>,
    timeout: Duration,
    unreachable: Unreachable,
    hint: Hint,
) -> Delivery {
    let state = match store.read_encoded_state(&hint.tenant, &hint.key) {
        Ok(state) => state,
        Err(_) => return Delivery { left: hint.peers.clone(), hint, ring_moved: false },
    };
    if state.is_empty() {
        // Dropped here since (its range moved away): nothing to hand off.
        return Delivery { hint, left: Vec::new(), ring_moved: false };
    }
    let mut left = Vec::new();
    let mut ring_moved = false;
    // Routed as the write was: a peer whose fence has passed that ring
    // refuses it instead of taking a key it may no longer replicate.
    let ring_version = if hint.ring_version > 0 { hint.ring_version } else { store.fence() };
    for (peer, address) in &hint.peers {
        if unreachable.lock().unwrap_or_else(|p| p.into_inner()).contains(peer) {
            left.push((peer.clone(), address.clone()));
            continue;
        }
        let request = MergeRequest {
            tenant: hint.tenant.clone(),
            key: hint.key.clone().into(),
            state: state.clone(),
            ring_version,
            ..Default::default()
        };
        let result = match peers.node(address) {
            Ok(client) => within(timeout, client.merge(request)).await.map(drop),
            Err(status) => Err(ReplicaFailure::NotSent(status.message().to_string())),
        };
        match result {
            Ok(()) => {}
            Err(ReplicaFailure::Refused { code: tonic::Code::InvalidArgument, message }) => {
                tracing::warn!(%peer, %message, "peer refuses a hinted state as malformed; hint dropped");
                metrics::counter!("cohort_node_hints_dropped_total", "reason" => "refused").increment(1);
            }
            Err(ReplicaFailure::Refused { code: tonic::Code::Aborted, .. }) => {
                ring_moved = true;
                left.push((peer.clone(), address.clone()));
            }
            // Down, cut off or behind on the ring fence: next sweep.
            Err(_) => {
                unreachable.lock().unwrap_or_else(|p| p.into_inner()).insert(peer.clone());
                left.push((peer.clone(), address.clone()));
            }
        }
    }
    Delivery { hint, left, ring_moved }
}

/// Merges one held state into the replica it is held for; returns whether
/// the replica holds it now. Routed first by the ring its writes were; a
/// replica that has moved past that ring (a membership change began since)
/// is asked again under this node's own fence, the newest ring it knows: a
/// handoff is never dropped undelivered, since it may be one of the W
/// copies of a write.
async fn hand_off(
    store: Arc<Store>,
    peers: Arc<PeerPool>,
    timeout: Duration,
    unreachable: Unreachable,
    handoff: Handoff,
) -> (Handoff, bool) {
    if unreachable.lock().unwrap_or_else(|p| p.into_inner()).contains(&handoff.owner) {
        return (handoff, false);
    }
    let Ok(client) = peers.node(&handoff.address) else { return (handoff, false) };
    let mut ring_version = handoff.ring_version;
    for _ in 0..2 {
        let request = MergeRequest {
            tenant: handoff.tenant.clone(),
            key: handoff.key.clone().into(),
            state: handoff.state.clone(),
            ring_version,
            ..Default::default()
        };
        match within(timeout, client.merge(request)).await {
            Ok(_) => return (handoff, true),
            Err(ReplicaFailure::Refused { code: tonic::Code::Aborted, .. }) if ring_version < store.fence() => {
                ring_version = store.fence();
            }
            Err(_) => break,
        }
    }
    unreachable.lock().unwrap_or_else(|p| p.into_inner()).insert(handoff.owner.clone());
    (handoff, false)
}

#[tonic::async_trait]
impl Worker for HintDelivery {
    fn name(&self) -> &'static str {
        "hint-delivery"
    }

    async fn work(&mut self) -> Result<Step, String> {
        let handoffs_waiting = self.deliver_handoffs().await?;
        if handoffs_waiting > 0 {
            tracing::debug!(handoffs_waiting, "handoffs wait for unreachable replicas");
        }
        let (store, every) = (self.store.clone(), self.every);
        // A record younger than a sweep interval belongs to a write whose
        // own replication is still settling it.
        let pending = tokio::task::spawn_blocking(move || store.pending_hints(SWEEP_LIMIT, every))
            .await
            .map_err(|e| format!("the hint sweep task failed: {e}"))?
            .map_err(|e| format!("reading hints: {e}"))?;
        let kept = self.store.hints_pending().map_err(|e| format!("counting hints: {e}"))?;
        metrics::gauge!("cohort_node_hints_pending").set(kept as f64);
        if pending.is_empty() {
            return Ok(Step::Idle);
        }
        let swept = pending.len();
        let over_quota = kept > self.bounds.max_pending;
        let mut seen_now = HashMap::with_capacity(pending.len());
        let (store, peers, timeout) = (self.store.clone(), self.peers.clone(), self.timeout);
        let unreachable = Unreachable::default();
        let mut results = futures::stream::iter(pending)
            .map(move |hint| deliver(store.clone(), peers.clone(), timeout, unreachable.clone(), hint))
            .buffer_unordered(IN_FLIGHT);
        let (mut delivered, mut waiting) = (0u64, 0usize);
        while let Some(Delivery { hint, left, ring_moved }) = results.next().await {
            delivered += (hint.peers.len() - left.len()) as u64;
            if ring_moved {
                self.escalate(&hint, "ring_changed")?;
                continue;
            }
            if !left.is_empty() {
                let id = (hint.tenant.clone(), hint.key.clone(), hint.seq);
                let since = self.first_seen.get(&id).copied().unwrap_or_else(Instant::now);
                if over_quota || since.elapsed() >= self.bounds.max_age {
                    self.escalate(&hint, if over_quota { "quota" } else { "age" })?;
                    continue;
                }
                seen_now.insert(id, since);
            }
            waiting += left.len();
            let left: Vec<(&str, &str)> = left.iter().map(|(p, a)| (p.as_str(), a.as_str())).collect();
            self.store
                .settle_hints(&hint.tenant, &hint.key, hint.seq, &left)
                .map_err(|e| format!("settling a delivered hint: {e}"))?;
        }
        // Only records still waiting are remembered.
        if swept < SWEEP_LIMIT {
            self.first_seen = seen_now;
        } else {
            self.first_seen.extend(seen_now);
        }
        metrics::counter!("cohort_node_hints_delivered_total").increment(delivered);
        if delivered > 0 {
            tracing::info!(delivered, "delivered hints");
        }
        if waiting > 0 {
            // Expected while a peer is down: not a failure of this worker.
            tracing::debug!(waiting, "hints wait for unreachable peers");
            return Ok(Step::Idle);
        }
        // More may be waiting beyond this sweep's limit.
        Ok(if swept == SWEEP_LIMIT { Step::Busy } else { Step::Idle })
    }

    async fn wait_for_work(&mut self) {
        self.tick.tick().await;
    }
}
