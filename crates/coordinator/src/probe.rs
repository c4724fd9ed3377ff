//! A leader-only job: probe every storage node and export whether it answers
//! (`cohort_storage_node_up{node}`), the signal behind the "storage node
//! unavailable" alert. Only the leader runs it, so each node is probed once
//! per interval however many coordinators there are.

use std::sync::Arc;
use std::time::Duration;

use cohort_node::peers::PeerPool;
use cohort_proto::v1::InfoRequest;

use crate::topology::Topology;

/// Probes every node of the current ring every `interval` until aborted.
pub async fn run(topology: Arc<Topology>, peers: Arc<PeerPool>, interval: Duration, timeout: Duration) {
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
            }
        });
        futures::future::join_all(probes).await;
    }
}
