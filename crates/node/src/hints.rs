//! Hinted handoff: delivering the hints a node keeps for peers that missed
//! writes it coordinated.
//!
//! The `hint-delivery` worker sweeps the pending hints every second. For
//! each peer it sends the current local state of every hinted key with a
//! `Merge` (a DVV merge, so delivering twice, late or out of order changes
//! nothing), and clears the hint once the peer holds it. A peer that does
//! not answer is skipped until the next sweep; so a replica that was down
//! or cut off receives every write it missed within about a second of
//! answering again, without any client reading those keys.
//!
//! A hint is never dropped silently: only one whose delivery the peer
//! refuses as malformed (it never will take it) is dropped, with a warning
//! and `cohort_node_hints_dropped_total`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cohort_proto::internal::v1::MergeRequest;
use cohort_transport::{PeerPool, ReplicaFailure, within};
use cohort_worker::{Step, Worker};
use futures::StreamExt;
use tokio::time::Interval;

use crate::store::{Hint, Store};

/// Hints read per sweep.
const SWEEP_LIMIT: usize = 4096;
/// Deliveries in flight to one peer.
const PER_PEER: usize = 32;

/// The node's hint-delivery worker.
pub struct HintDelivery {
    store: Arc<Store>,
    peers: Arc<PeerPool>,
    timeout: Duration,
    tick: Interval,
}

impl HintDelivery {
    /// Delivers `store`'s hints through `peers`, each call bounded by
    /// `timeout`, sweeping every `every`.
    pub fn new(store: Arc<Store>, peers: Arc<PeerPool>, timeout: Duration, every: Duration) -> Self {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        HintDelivery { store, peers, timeout, tick }
    }
}

/// Delivers one hint: whether it may be cleared, or why not.
async fn deliver(
    store: Arc<Store>,
    peers: Arc<PeerPool>,
    timeout: Duration,
    hint: Hint,
) -> (Hint, Result<(), ReplicaFailure>) {
    let state = match store.read_encoded_state(&hint.tenant, &hint.key) {
        Ok(state) => state,
        Err(e) => {
            let failure = ReplicaFailure::Refused { code: tonic::Code::Unavailable, message: e.to_string() };
            return (hint, Err(failure));
        }
    };
    if state.is_empty() {
        // Dropped here since (its range moved away): nothing to hand off.
        return (hint, Ok(()));
    }
    let client = match peers.node(&hint.address) {
        Ok(client) => client,
        Err(status) => return (hint, Err(ReplicaFailure::NotSent(status.message().to_string()))),
    };
    let request = MergeRequest {
        tenant: hint.tenant.clone(),
        key: hint.key.clone().into(),
        state,
        ring_version: store.fence(),
        ..Default::default()
    };
    let result = within(timeout, client.merge(request)).await.map(drop);
    (hint, result)
}

#[tonic::async_trait]
impl Worker for HintDelivery {
    fn name(&self) -> &'static str {
        "hint-delivery"
    }

    async fn work(&mut self) -> Result<Step, String> {
        let store = self.store.clone();
        let pending = tokio::task::spawn_blocking(move || store.pending_hints(SWEEP_LIMIT))
            .await
            .map_err(|e| format!("the hint sweep task failed: {e}"))?
            .map_err(|e| format!("reading hints: {e}"))?;
        metrics::gauge!("cohort_node_hints_pending").set(pending.len() as f64);
        if pending.is_empty() {
            return Ok(Step::Idle);
        }
        let swept = pending.len();
        let mut by_peer: BTreeMap<String, Vec<Hint>> = BTreeMap::new();
        for hint in pending {
            by_peer.entry(hint.peer.clone()).or_default().push(hint);
        }
        let (mut delivered, mut unreachable) = (0u64, Vec::new());
        let this = &*self;
        for (peer, hints) in by_peer {
            let (store, peers, timeout) = (this.store.clone(), this.peers.clone(), this.timeout);
            let mut results = futures::stream::iter(hints)
                .map(move |hint| deliver(store.clone(), peers.clone(), timeout, hint))
                .buffer_unordered(PER_PEER);
            while let Some((hint, result)) = results.next().await {
                match result {
                    Ok(()) => {
                        this.store
                            .clear_hint(&hint.peer, &hint.tenant, &hint.key, hint.seq)
                            .map_err(|e| format!("clearing a delivered hint: {e}"))?;
                        delivered += 1;
                    }
                    Err(ReplicaFailure::Refused { code: tonic::Code::InvalidArgument, message }) => {
                        tracing::warn!(%peer, %message, "peer refuses a hinted state as malformed; hint dropped");
                        metrics::counter!("cohort_node_hints_dropped_total", "reason" => "refused").increment(1);
                        this.store
                            .clear_hint(&hint.peer, &hint.tenant, &hint.key, hint.seq)
                            .map_err(|e| format!("clearing a refused hint: {e}"))?;
                    }
                    // Down, cut off or behind on the ring fence: next sweep.
                    Err(failure) => {
                        unreachable.push(format!("{peer}: {failure}"));
                        break;
                    }
                }
            }
        }
        metrics::counter!("cohort_node_hints_delivered_total").increment(delivered);
        if delivered > 0 {
            tracing::info!(delivered, "delivered hints");
        }
        if !unreachable.is_empty() {
            // Expected while a peer is down: not a failure of this worker.
            tracing::debug!(peers = %unreachable.join("; "), "hints wait for unreachable peers");
            return Ok(Step::Idle);
        }
        // More may be waiting beyond this sweep's limit.
        Ok(if swept == SWEEP_LIMIT { Step::Busy } else { Step::Idle })
    }

    async fn wait_for_work(&mut self) {
        self.tick.tick().await;
    }
}
