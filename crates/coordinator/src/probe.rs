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
//!
//! Each probe also collects the token ranges a node escalated to
//! anti-entropy (hints it gave up on) and queues them in the
//! [`RepairLedger`], whose worker syncs them first, and the ranges where the
//! node holds sloppy-quorum handoffs, where no tombstone may be reaped. It
//! tells the nodes which escalated ranges have been synced since; a node
//! keeps its markers until then, so neither a lost answer nor a change of
//! leader loses one.

use std::sync::Arc;
use std::time::Duration;

use cohort_proto::internal::v1::{EscalatedRange, InfoRequest};
use cohort_ring::TokenRange;
use cohort_transport::{Liveness, PeerPool, within};
use tonic::async_trait;

use crate::metadata::{MetadataError, MetadataStore, NodeProbe};
use crate::repair::RepairLedger;
use crate::topology::Topology;
use cohort_worker::{Step, Worker};

/// The probe job, a [`Worker`]: one round of probes per step.
pub struct Probe {
    /// The ring whose nodes are probed.
    pub topology: Arc<Topology>,
    /// Clients of the nodes.
    pub peers: Arc<PeerPool>,
    /// The process's liveness view: a node that does not answer a probe is
    /// suspected until the next round.
    pub liveness: Arc<Liveness>,
    /// Where each round is recorded.
    pub metadata: Arc<dyn MetadataStore>,
    /// The leader generation that fences the records.
    pub generation: u64,
    /// Time between rounds.
    pub interval: Duration,
    /// How long a node has to answer.
    pub timeout: Duration,
    /// When the next round is due (made on the first wait).
    pub tick: Option<tokio::time::Interval>,
    /// Where escalated ranges are queued for anti-entropy.
    pub repair: Arc<RepairLedger>,
}

#[async_trait]
impl Worker for Probe {
    fn name(&self) -> &'static str {
        "node-probe"
    }

    /// Probes every node of the current ring and records the round; done
    /// once the store refuses a record because `generation` was deposed.
    async fn work(&mut self) -> Result<Step, String> {
        let placement = self.topology.current();
        let (timeout, interval) = (self.timeout, self.interval);
        let synced = self.repair.synced();
        let told: Vec<EscalatedRange> = synced
            .iter()
            .map(|(tenant, range)| EscalatedRange { tenant: tenant.clone(), start: range.start, end: range.end })
            .collect();
        let probes = placement.nodes().into_iter().map(|node| {
            let client = placement.address(node).map(|address| self.peers.node(address));
            let (liveness, repair, told) = (&self.liveness, &self.repair, told.clone());
            async move {
                let asked = InfoRequest { report: true, synced: told };
                let up = match client {
                    Some(Ok(client)) => match within(timeout, client.info_with(asked)).await {
                        Ok(info) => {
                            for range in info.escalations {
                                let tokens = TokenRange { start: range.start, end: range.end };
                                repair.escalate(range.tenant, tokens);
                            }
                            let held = info
                                .handoffs
                                .into_iter()
                                .map(|r| (r.tenant, TokenRange { start: r.start, end: r.end }));
                            repair.set_handoffs(node, held.collect());
                            true
                        }
                        Err(_) => false,
                    },
                    _ => false,
                };
                if !up {
                    liveness.suspect(node, interval + timeout);
                }
                metrics::gauge!("cohort_storage_node_up", "node" => node.to_string()).set(if up { 1.0 } else { 0.0 });
                NodeProbe { node: node.to_string(), up }
            }
        });
        let round = futures::future::join_all(probes).await;
        // Every node that answered dropped those markers; one that did not
        // reports them again later, and they are synced once more.
        self.repair.told(&synced);
        match self.metadata.record_node_health(self.generation, &round).await {
            Ok(()) => Ok(Step::Idle),
            Err(fenced @ MetadataError::Fenced { .. }) => {
                tracing::warn!(%fenced, "node health refused: this coordinator no longer leads; probe stopped");
                Ok(Step::Done)
            }
            Err(error) => Err(format!("could not record node health: {error}")),
        }
    }

    async fn wait_for_work(&mut self) {
        let interval = self.interval;
        let tick = self.tick.get_or_insert_with(|| {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        tick.tick().await;
    }
}
