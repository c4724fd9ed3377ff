//! A leader-only job: probe every storage node, export whether it answers
//! (`cohort_storage_node_up{node}`, the signal behind the "storage node
//! unavailable" alert), and record it in the metadata store, where `cohort
//! admin cluster status` reads it. Only the leader runs it, so each node is
//! probed once per interval however many coordinators there are.
//!
//! Each round's record is written under the generation the job was started
//! with, and the store refuses it once that generation no longer holds a live
//! lease: a deposed leader — even one that has not noticed yet — cannot
//! overwrite what its successor recorded. Refused, the job ends.

use std::sync::Arc;
use std::time::Duration;

use cohort_node::peers::PeerPool;
use cohort_proto::internal::v1::InfoRequest;

use crate::metadata::{MetadataError, MetadataStore, NodeProbe};
use crate::topology::Topology;

/// What the probe job needs.
pub struct Probe {
    /// The ring whose nodes are probed.
    pub topology: Arc<Topology>,
    /// Clients of the nodes.
    pub peers: Arc<PeerPool>,
    /// Where each round is recorded.
    pub metadata: Arc<dyn MetadataStore>,
    /// The leader generation that fences the records.
    pub generation: u64,
    /// Time between rounds.
    pub interval: Duration,
    /// How long a node has to answer.
    pub timeout: Duration,
}

/// Probes every node of the current ring every `interval` until aborted, or
/// until the store refuses a record because `generation` was deposed.
pub async fn run(probe: Probe) {
    let Probe { topology, peers, metadata, generation, interval, timeout } = probe;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let placement = topology.current();
        let probes = placement.ring.nodes().iter().map(|node| {
            let client = placement.address(&node.id).map(|address| peers.node(address));
            async move {
                let up = match client {
                    Some(Ok(client)) => {
                        matches!(tokio::time::timeout(timeout, client.raw().info(InfoRequest {})).await, Ok(Ok(_)))
                    }
                    _ => false,
                };
                metrics::gauge!("cohort_storage_node_up", "node" => node.id.clone()).set(if up { 1.0 } else { 0.0 });
                NodeProbe { node: node.id.clone(), up }
            }
        });
        let round = futures::future::join_all(probes).await;
        match metadata.record_node_health(generation, &round).await {
            Ok(()) => {}
            Err(fenced @ MetadataError::Fenced { .. }) => {
                tracing::warn!(%fenced, "node health refused: this coordinator no longer leads; probe stopped");
                return;
            }
            Err(error) => tracing::debug!(%error, "could not record node health"),
        }
    }
}
