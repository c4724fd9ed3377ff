//! The quorum write and read paths, and read repair.
//!
//! **Write.** The coordinator sends the write to the first replica of the
//! key's preference list (the *coordinating replica*), naming the others as
//! peers. That node issues the new version from its own state, makes it
//! durable and sends it to the peers in parallel, and answers once W
//! replicas hold it. If the coordinating replica certainly did not act on
//! the request (it could not be reached, or refused it), the next one in the
//! list takes the role. If it may have acted (no answer in time, a broken
//! connection), the write fails as outcome-unknown (`DeadlineExceeded`)
//! rather than being applied a second time under another dot; the replica
//! is then passed over as coordinator for a few node timeouts.
//!
//! **Read.** The coordinator asks all N replicas, answers after R of them,
//! and merges their sibling sets. Every replica whose state differs from the
//! merged one is sent the merged state (read repair): in the background by
//! default, or before answering when configured.
//!
//! **Settling an unknown outcome.** A write with an idempotency key carries
//! a write id, which every replica that stages or merges it records with
//! the write's dot. When an earlier attempt's outcome is unknown,
//! [`KvEngine::settle_write`] asks every replica for that record: a replica
//! that has it means the version exists, and it is replicated again (same
//! dot) instead of issued anew; when every replica answers that it has none,
//! the write never happened and may run.
//!
//! Whether enough replicas answered is decided by a pure
//! [`QuorumTally`], and what to repair by the pure functions
//! [`merge_answers`] and [`Answers`]; the async code gathers answers
//! and carries the decisions out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_proto::internal::v1::{
    CoordinateRequest, Dot as PbDot, FenceToken, MergeRequest, Peer, ReadRequest, ReplicaSet, WriteTag,
};
use cohort_ring::{Actor, CausalContext, Consistency, Dot, Fence, QuorumTally, SiblingSet, Verdict};
use cohort_transport::{Liveness, PeerPool, ReplicaFailure, within};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::oneshot;

use crate::config::{CoordinatorConfig, ReadRepairMode};
use crate::error::KvError;
use crate::metadata::Tenant;
use crate::topology::{Replica, ReplicaPlan, Topology};

/// The result of an acknowledged write.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    /// The write's dot.
    pub dot: Dot,
    /// Siblings (tombstones included) the key had after the write on the
    /// replica that issued it.
    pub siblings: u32,
    /// Replicas that acknowledged durably before the answer.
    pub acked: Vec<String>,
    /// Replicas the write needed.
    pub required: u8,
    /// The tenant's replication factor.
    pub replication: u8,
    /// Some replica had not acknowledged when the write was answered: the
    /// coordinating replica keeps a hint for it and hands the write off
    /// when it answers (or a fallback does, under a sloppy quorum).
    pub hinted: bool,
    /// Of `acked`, the fallback nodes that hold the write for a replica
    /// believed down (sloppy quorum only).
    pub fallbacks: Vec<String>,
}

/// The result of a successful read.
#[derive(Debug, Clone)]
pub struct ReadOutcome {
    /// The merge of the states the answering replicas returned.
    pub state: SiblingSet,
    /// Replicas whose answers were merged.
    pub answered: Vec<String>,
    /// Replicas the read needed.
    pub required: u8,
    /// The tenant's replication factor.
    pub replication: u8,
    /// Whether some replica differed from the merged state and is (or was)
    /// being repaired.
    pub repair: bool,
}

/// How long (in node timeouts) a replica that failed a call stays
/// suspected: passed over as coordinating replica.
const SUSPECT_TIMEOUTS: u32 = 5;

/// Drives replicas for key-value requests.
pub struct KvEngine {
    topology: Arc<Topology>,
    peers: Arc<PeerPool>,
    /// Which replicas are believed down: recently failed ones are passed
    /// over as coordinating replica.
    liveness: Arc<Liveness>,
    node_timeout: Duration,
    request_timeout: Duration,
    read_repair: ReadRepairMode,
}

/// The merge of every answered state.
pub fn merge_answers<'a>(answers: impl IntoIterator<Item = &'a SiblingSet>) -> SiblingSet {
    answers.into_iter().fold(SiblingSet::new(), |mut merged, state| {
        merged.sync(state);
        merged
    })
}

/// The states the replicas of one read answered. Each distinct encoding is
/// decoded once: replicas in step, the common case, answer the same bytes
/// (the encoding is canonical), and their one state is then the merge and
/// nothing is stale, with no merging or comparing.
#[derive(Debug, Default)]
pub struct Answers {
    /// The distinct states answered, with their encodings.
    states: Vec<(Bytes, SiblingSet)>,
    /// Each replica that answered, and the index of its state.
    replicas: Vec<(Replica, usize)>,
}

impl Answers {
    /// Records `replica`'s answer (an encoded state; empty when the key was
    /// never written there); an unreadable state is refused.
    pub fn add(&mut self, replica: &Replica, encoded: Bytes) -> Result<(), String> {
        let index = match self.states.iter().position(|(bytes, _)| *bytes == encoded) {
            Some(index) => index,
            None => {
                let state = decode_state(&encoded)?;
                self.states.push((encoded, state));
                self.states.len() - 1
            }
        };
        self.replicas.push((replica.clone(), index));
        Ok(())
    }

    /// The merge of every answered state.
    pub fn merged(&self) -> SiblingSet {
        match self.states.as_slice() {
            [(_, only)] => only.clone(),
            states => merge_answers(states.iter().map(|(_, state)| state)),
        }
    }

    /// The replicas whose answered state differs from `merged`.
    pub fn stale(&self, merged: &SiblingSet) -> Vec<&Replica> {
        if self.states.len() <= 1 {
            return Vec::new();
        }
        let stale: Vec<bool> = self.states.iter().map(|(_, state)| state != merged).collect();
        self.replicas.iter().filter(|(_, index)| stale[*index]).map(|(replica, _)| replica).collect()
    }
}

/// A replica's answer: no bytes means the key was never written there.
fn decode_state(bytes: &[u8]) -> Result<SiblingSet, String> {
    if bytes.is_empty() {
        return Ok(SiblingSet::new());
    }
    SiblingSet::decode(bytes).map_err(|e| format!("unreadable state: {e}"))
}

fn invalid(e: impl std::fmt::Display) -> KvError {
    KvError::InvalidArgument(e.to_string())
}

fn dot_from_pb(dot: Option<&PbDot>) -> Option<Dot> {
    dot.filter(|d| !d.actor.is_empty() && d.counter > 0)
        .map(|d| Dot { actor: Actor::new(d.actor.clone()), counter: d.counter })
}

fn dot_to_pb(dot: &Dot) -> PbDot {
    PbDot { actor: dot.actor.0.clone(), counter: dot.counter }
}

/// Sends `request` to the node at `address`; whether it merged (and made
/// durable) the state within `timeout`.
fn merge_within(
    peers: &PeerPool,
    address: &str,
    request: MergeRequest,
    timeout: Duration,
) -> impl std::future::Future<Output = bool> + use<> {
    let client = peers.node(address);
    async move {
        match client {
            Ok(client) => within(timeout, client.merge(request)).await.is_ok(),
            Err(_) => false,
        }
    }
}

/// The order in which `replicas` (a preference list) are asked to
/// coordinate a write: the first healthy replica served in this process,
/// then the other healthy ones in list order, then the suspected ones.
pub fn coordinator_order(
    replicas: &[Replica],
    suspect: impl Fn(&Replica) -> bool,
    in_process: impl Fn(&Replica) -> bool,
) -> Vec<usize> {
    let (mut healthy, doubtful): (Vec<usize>, Vec<usize>) = (0..replicas.len()).partition(|&i| !suspect(&replicas[i]));
    if let Some(local) = healthy.iter().position(|&i| in_process(&replicas[i])) {
        let first = healthy.remove(local);
        healthy.insert(0, first);
    }
    healthy.extend(doubtful);
    healthy
}

/// A tally that needs `needed` successes in the preference list of every
/// live ring version.
pub fn write_tally(plan: &ReplicaPlan, needed: usize) -> QuorumTally {
    QuorumTally::over_sets(plan.sets.iter().map(|set| (set.clone(), needed)))
}

/// Limits the coordinating replica enforces on a new version.
#[derive(Debug, Clone, Copy)]
pub struct WriteLimits {
    /// The tenant's sibling cap.
    pub max_siblings: u32,
    /// The cluster's state size cap.
    pub max_state_bytes: u64,
}

impl KvEngine {
    /// An engine over the given topology and node clients, sharing the
    /// process's liveness view.
    pub fn new(
        topology: Arc<Topology>,
        peers: Arc<PeerPool>,
        liveness: Arc<Liveness>,
        config: &CoordinatorConfig,
    ) -> Self {
        KvEngine {
            topology,
            peers,
            liveness,
            node_timeout: config.node_timeout,
            request_timeout: config.request_timeout,
            read_repair: config.read_repair,
        }
    }

    /// Under a sloppy quorum: for each replica of `plan` believed down, the
    /// next node after the key's preference list that is not, to hold the
    /// write for it. `(replica id, stand-in)`; empty while a membership
    /// change keeps two ring versions live.
    fn stand_ins(&self, placement: &crate::topology::Placement, tenant: &Tenant, key: &[u8]) -> Vec<(String, Replica)> {
        let [live] = placement.live.as_slice() else { return Vec::new() };
        let n = usize::from(tenant.replication.n());
        let token = cohort_ring::token_for(&tenant.id, key);
        let mut spare = live
            .ring
            .fallback_list(token, n)
            .into_iter()
            .filter(|node| !self.liveness.is_suspect(&node.id))
            .filter_map(|node| placement.address(&node.id).map(|a| Replica { id: node.id.clone(), address: a.into() }));
        live.ring
            .preference_list(token, n)
            .into_iter()
            .filter(|node| self.liveness.is_suspect(&node.id))
            .map_while(|node| spare.next().map(|stand_in| (node.id.clone(), stand_in)))
            .collect()
    }

    /// Writes `value` (a tombstone when `None`) under `key`, replacing what
    /// `context` covers, and waits for the write quorum. With a `write` tag
    /// the replicas record the write's id, and a coordinating replica that
    /// already has it replicates the version it issued instead of a new one.
    /// With a `fence`, a replica that has seen a higher token of its lock
    /// refuses the write, and a write that misses its quorum for that reason
    /// fails with the replica's `fenced: …` precondition.
    #[allow(clippy::too_many_arguments)]
    pub async fn write(
        &self,
        tenant: &Tenant,
        key: Bytes,
        value: Option<Bytes>,
        fence: Option<&Fence>,
        context: &CausalContext,
        level: Option<Consistency>,
        limits: WriteLimits,
        write: Option<WriteTag>,
    ) -> Result<WriteOutcome, KvError> {
        let context = Bytes::from(context.encode());
        let fence = fence.map(|f| FenceToken { lock: f.lock.clone(), token: f.token });
        let attempt = || {
            self.write_once(tenant, key.clone(), value.clone(), fence.clone(), &context, level, limits, write.clone())
        };
        self.routed_again_if_stale(attempt).await
    }

    /// Runs `attempt`; if a node refused it as routed by a stale ring, the
    /// ring is refreshed and the attempt runs once more.
    async fn routed_again_if_stale<T, F, Fut>(&self, attempt: F) -> Result<T, KvError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, KvError>>,
    {
        match attempt().await {
            Err(KvError::StaleRing(reason)) => {
                tracing::debug!(%reason, "request routed by a stale ring; refreshing and routing again");
                metrics::counter!("cohort_stale_ring_retries_total").increment(1);
                self.topology.refresh().await.map_err(|e| KvError::DependencyUnavailable(e.to_string()))?;
                attempt().await
            }
            other => other,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_once(
        &self,
        tenant: &Tenant,
        key: Bytes,
        value: Option<Bytes>,
        fence: Option<FenceToken>,
        context: &Bytes,
        level: Option<Consistency>,
        limits: WriteLimits,
        write: Option<WriteTag>,
    ) -> Result<WriteOutcome, KvError> {
        let replication = tenant.replication.n();
        let required = tenant.replication.write_quorum(level).map_err(invalid)?;
        let placement = self.topology.current();
        let plan = placement.replicas(&tenant.id, &key, replication.into());
        let stand_ins = if tenant.sloppy_quorum { self.stand_ins(&placement, tenant, &key) } else { Vec::new() };
        let stand_in = |id: &str| stand_ins.iter().find(|(x, _)| x == id).map(|(_, f)| f);
        if plan.smallest_set() < required.into() {
            return Err(KvError::unavailable(
                "write",
                0,
                required.into(),
                &[format!("only {} storage nodes are on the ring", plan.smallest_set())],
            ));
        }
        let replicas = &plan.replicas;
        // The sets the quorum is counted in: every live version's list, a
        // stand-in in place of the replica it holds the write for.
        let counted: Vec<Vec<String>> = plan
            .sets
            .iter()
            .map(|set| set.iter().map(|id| stand_in(id).map_or_else(|| id.clone(), |f| f.id.clone())).collect())
            .collect();
        let sets: Vec<ReplicaSet> = match plan.is_moving() || !stand_ins.is_empty() {
            true => {
                counted.iter().map(|members| ReplicaSet { members: members.clone(), needed: required.into() }).collect()
            }
            false => Vec::new(),
        };
        let deadline = Instant::now() + self.request_timeout;
        let mut reasons = Vec::new();
        for index in self.coordinator_order(replicas) {
            let coordinator = &replicas[index];
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            if stand_in(&coordinator.id).is_some() {
                // Believed down, and its stand-in holds the write for it.
                continue;
            }
            let peers = replicas
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != index)
                .map(|(_, r)| match stand_in(&r.id) {
                    Some(f) => Peer {
                        id: f.id.clone(),
                        address: f.address.clone(),
                        hinted_for: r.id.clone(),
                        hinted_for_address: r.address.clone(),
                    },
                    None => Peer { id: r.id.clone(), address: r.address.clone(), ..Default::default() },
                })
                .collect();
            let request = CoordinateRequest {
                tenant: tenant.id.clone(),
                key: key.clone(),
                context: context.clone(),
                value: value.clone(),
                peers,
                write_quorum: required.into(),
                timeout_ms: self.node_timeout.as_millis() as u32,
                max_siblings: limits.max_siblings,
                max_state_bytes: limits.max_state_bytes,
                write: write.clone(),
                ring_version: plan.ring_version,
                sets: sets.clone(),
                fence: fence.clone(),
            };
            let client = match self.peers.node(&coordinator.address) {
                Ok(client) => client,
                // Nothing was sent: the next replica may coordinate.
                Err(status) => {
                    reasons.push(format!("{}: {}", coordinator.id, status.message()));
                    continue;
                }
            };
            // The coordinating replica itself waits up to node_timeout for peers.
            let attempt = remaining.min(self.node_timeout * 2);
            match within(attempt, client.coordinate(request)).await {
                Ok(response) => {
                    let dot = dot_from_pb(response.dot.as_ref()).ok_or_else(|| {
                        KvError::Internal(format!("node {} answered a write without its dot", coordinator.id))
                    })?;
                    let mut tally = QuorumTally::over_sets(counted.iter().map(|set| (set.clone(), required.into())));
                    response.acked.iter().for_each(|id| tally.succeeded(id));
                    response.failures.iter().for_each(|f| tally.failed(&f.node_id));
                    if tally.verdict() == Verdict::Reached {
                        let acked = tally.successes();
                        let fallbacks: Vec<String> =
                            acked.iter().filter(|id| stand_ins.iter().any(|(_, f)| &f.id == *id)).cloned().collect();
                        metrics::counter!("cohort_fallback_acks_total").increment(fallbacks.len() as u64);
                        return Ok(WriteOutcome {
                            dot,
                            siblings: response.siblings,
                            hinted: acked.len() < replicas.len() || !fallbacks.is_empty(),
                            acked,
                            required,
                            replication,
                            fallbacks,
                        });
                    }
                    // A replica that has seen a newer holder's token refused
                    // it: the write will not survive the replicas' syncing.
                    if let Some(fenced) =
                        response.failures.iter().find(|f| f.code == tonic::Code::FailedPrecondition as i32)
                    {
                        return Err(KvError::FailedPrecondition(format!(
                            "{} (replica {})",
                            fenced.reason, fenced.node_id
                        )));
                    }
                    for failure in &response.failures {
                        self.suspect(&failure.node_id);
                    }
                    let reasons: Vec<String> =
                        response.failures.iter().map(|f| format!("{}: {}", f.node_id, f.reason)).collect();
                    // The coordinating replica issued the version: whatever
                    // else failed, some replica may hold it.
                    let (got, needed) = tally.shortfall();
                    return Err(KvError::unavailable("write", got, needed, &reasons).applied_somewhere());
                }
                // The request was wrong, or the key refuses it (sibling
                // cap): no replica will take it, and none stored anything.
                Err(ReplicaFailure::Refused { code: tonic::Code::InvalidArgument, message }) => {
                    return Err(KvError::InvalidArgument(message));
                }
                Err(ReplicaFailure::Refused { code: tonic::Code::FailedPrecondition, message }) => {
                    return Err(KvError::FailedPrecondition(message));
                }
                // Routed by a ring the node no longer takes: nothing was
                // applied; the caller refreshes the ring and routes again.
                Err(ReplicaFailure::Refused { code: tonic::Code::Aborted, message }) => {
                    return Err(KvError::StaleRing(format!("{}: {message}", coordinator.id)));
                }
                // The node may have applied the write. Asking another replica
                // would apply it a second time under another dot, and a value
                // its writer later replaced could then come back: the outcome
                // is unknown and the client decides.
                Err(failure) if failure.may_have_acted() => {
                    self.suspect(&coordinator.id);
                    return Err(KvError::WriteOutcomeUnknown(format!(
                        "write outcome unknown: coordinating replica {}: {failure}; the write may have been applied",
                        coordinator.id
                    )));
                }
                // The node certainly did nothing: the next replica may
                // coordinate instead.
                Err(failure) => {
                    self.suspect(&coordinator.id);
                    reasons.push(format!("{}: {failure}", coordinator.id));
                }
            }
        }
        Err(KvError::unavailable("write", 0, required.into(), &reasons))
    }

    /// Settles an idempotent write whose earlier attempt may have applied.
    ///
    /// Asks every replica whether it recorded `write`. If one did, the
    /// version exists: the merge of the answers is sent to every replica
    /// (each records the write too) and the write succeeds once W hold it
    /// durably — with the dot the first attempt issued. If every replica
    /// answered without a record, the write never happened: `Ok(None)`, and
    /// the caller runs it. Otherwise the outcome is still unknown.
    pub async fn settle_write(
        &self,
        tenant: &Tenant,
        key: Bytes,
        level: Option<Consistency>,
        write: &WriteTag,
    ) -> Result<Option<WriteOutcome>, KvError> {
        let replication = tenant.replication.n();
        let required = tenant.replication.write_quorum(level).map_err(invalid)?;
        let plan = self.topology.current().replicas(&tenant.id, &key, replication.into());
        let replicas = &plan.replicas;
        let unknown = |why: String| {
            KvError::WriteOutcomeUnknown(format!(
                "the outcome of this write's first attempt is still unknown: {why}; retry with the same idempotency key"
            ))
        };
        let lookups = replicas.iter().map(|replica| {
            let request = ReadRequest {
                tenant: tenant.id.clone(),
                key: key.clone(),
                write_id: write.id.clone(),
                ring_version: plan.ring_version,
            };
            let client = self.peers.node(&replica.address);
            let timeout = self.node_timeout;
            async move {
                let client = client.map_err(|s| format!("{}: {}", replica.id, s.message()))?;
                let response =
                    within(timeout, client.read(request)).await.map_err(|f| format!("{}: {f}", replica.id))?;
                Ok((decode_state(&response.state)?, dot_from_pb(response.write_dot.as_ref())))
            }
        });
        let answers = futures::future::join_all(lookups).await;
        let mut merged = SiblingSet::new();
        let mut recorded = None;
        let mut missing = Vec::new();
        for answer in answers {
            match answer {
                Ok((state, dot)) => {
                    merged.sync(&state);
                    recorded = recorded.or(dot);
                }
                Err(reason) => missing.push(reason),
            }
        }
        let Some(dot) = recorded else {
            if missing.is_empty() && plan.sets.iter().all(|set| set.len() == usize::from(replication)) {
                return Ok(None);
            }
            return Err(unknown(format!("no replica that answered holds it, and {}", missing.join("; "))));
        };
        let encoded = Bytes::from(merged.encode());
        let sends = replicas.iter().map(|replica| {
            let request = MergeRequest {
                tenant: tenant.id.clone(),
                key: key.clone(),
                state: encoded.clone(),
                write: Some(write.clone()),
                write_dot: Some(dot_to_pb(&dot)),
                ring_version: plan.ring_version,
                handoff: None,
            };
            merge_within(&self.peers, &replica.address, request, self.node_timeout)
        });
        let mut tally = write_tally(&plan, required.into());
        for (replica, sent) in replicas.iter().zip(futures::future::join_all(sends).await) {
            if sent { tally.succeeded(&replica.id) } else { tally.failed(&replica.id) }
        }
        metrics::counter!("cohort_writes_settled_total").increment(1);
        if tally.verdict() != Verdict::Reached {
            let (got, needed) = tally.shortfall();
            return Err(KvError::unavailable("write", got, needed, &missing).applied_somewhere());
        }
        let acked = tally.successes();
        Ok(Some(WriteOutcome {
            dot,
            siblings: merged.siblings().len() as u32,
            acked,
            required,
            replication,
            hinted: false,
            fallbacks: Vec::new(),
        }))
    }

    fn suspect(&self, node: &str) {
        self.liveness.suspect(node, self.node_timeout * SUSPECT_TIMEOUTS);
    }

    /// The order in which replicas are asked to coordinate a write: the
    /// preference list, with the first replica this process serves moved to
    /// the front (no network on the write's first hop, as Dynamo's
    /// coordinators pick a local replica) and recently failed replicas to
    /// the end. Where every replica is served here (the dev cluster) or none
    /// is, the preference list's own order stands.
    fn coordinator_order(&self, replicas: &[Replica]) -> Vec<usize> {
        coordinator_order(replicas, |r| self.liveness.is_suspect(&r.id), |r| self.peers.is_in_process(&r.address))
    }

    /// Reads `key` from the replicas and merges what R of them hold.
    pub async fn read(&self, tenant: &Tenant, key: Bytes, level: Option<Consistency>) -> Result<ReadOutcome, KvError> {
        self.routed_again_if_stale(|| self.read_once(tenant, key.clone(), level)).await
    }

    async fn read_once(&self, tenant: &Tenant, key: Bytes, level: Option<Consistency>) -> Result<ReadOutcome, KvError> {
        let replication = tenant.replication.n();
        let required = tenant.replication.read_quorum(level).map_err(invalid)?;
        let plan = self.topology.current().replicas(&tenant.id, &key, replication.into());
        if plan.smallest_set() < required.into() {
            return Err(KvError::unavailable(
                "read",
                0,
                required.into(),
                &[format!("only {} storage nodes are on the ring", plan.smallest_set())],
            ));
        }
        let (reply, answer) = oneshot::channel();
        let round = ReadRound {
            tenant: tenant.id.clone(),
            key,
            plan,
            required: required.into(),
            replication,
            peers: self.peers.clone(),
            node_timeout: self.node_timeout,
            mode: self.read_repair,
            liveness: self.liveness.clone(),
        };
        answered_then_detached(round.run(reply), answer)
            .await
            .map_err(|_| KvError::Internal("read task ended without an answer".into()))?
    }
}

/// Runs `work` in the caller's task until `answer` arrives, and whatever is
/// left of it then (waiting for slower replicas, repairing) on a task of its
/// own; all of what is left, too, if the caller stops waiting first. A read
/// whose replicas answer at once (in-process, as in `cohort dev`) thus costs
/// no task and no wake-up of another thread, and one over the network is
/// answered without a hand-off between tasks.
async fn answered_then_detached<T, W>(work: W, mut answer: oneshot::Receiver<T>) -> Result<T, oneshot::error::RecvError>
where
    W: std::future::Future<Output = ()> + Send + 'static,
{
    /// The unfinished work, moved to a task of its own when dropped.
    struct Detached<W: std::future::Future<Output = ()> + Send + 'static>(Option<std::pin::Pin<Box<W>>>);
    impl<W: std::future::Future<Output = ()> + Send + 'static> Drop for Detached<W> {
        fn drop(&mut self) {
            // Without a runtime (the process is shutting down) the rest is
            // dropped; the replicas it would have repaired are healed by
            // anti-entropy.
            if let (Some(rest), Ok(runtime)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
                runtime.spawn(rest);
            }
        }
    }
    let mut work = Detached(Some(Box::pin(work)));
    std::future::poll_fn(|cx| {
        if let Some(running) = work.0.as_mut()
            && running.as_mut().poll(cx).is_ready()
        {
            work.0 = None;
        }
        std::pin::Pin::new(&mut answer).poll(cx)
    })
    .await
}

/// One read: asks every replica, answers after `required`, then repairs.
struct ReadRound {
    tenant: String,
    key: Bytes,
    plan: ReplicaPlan,
    required: usize,
    replication: u8,
    peers: Arc<PeerPool>,
    node_timeout: Duration,
    mode: ReadRepairMode,
    liveness: Arc<Liveness>,
}

type Reply = oneshot::Sender<Result<ReadOutcome, KvError>>;

impl ReadRound {
    async fn run(self, reply: Reply) {
        let mut reply = Some(reply);
        // One deadline for the round, not one timer per replica: a replica
        // still silent when it passes has timed out.
        let deadline = tokio::time::sleep(self.node_timeout);
        tokio::pin!(deadline);
        let mut pending: FuturesUnordered<_> = self
            .plan
            .replicas
            .iter()
            .enumerate()
            .map(|(index, replica)| {
                let call = self.peers.node(&replica.address).map(|client| {
                    client.read(ReadRequest {
                        tenant: self.tenant.clone(),
                        key: self.key.clone(),
                        ring_version: self.plan.ring_version,
                        ..Default::default()
                    })
                });
                async move {
                    let result = match call {
                        Err(status) => Err(ReplicaFailure::NotSent(status.message().to_string())),
                        Ok(call) => call.await.map(|response| response.state).map_err(ReplicaFailure::from),
                    };
                    (index, result)
                }
            })
            .collect();

        let mut tally = QuorumTally::over_sets(self.plan.sets.iter().map(|set| (set.clone(), self.required)));
        let mut answers = Answers::default();
        let mut failures: Vec<String> = Vec::new();
        let mut silent = vec![true; self.plan.replicas.len()];
        let mut stale_ring = false;
        loop {
            let (index, result) = tokio::select! {
                biased;
                next = pending.next() => match next {
                    Some(next) => next,
                    None => break,
                },
                () = &mut deadline => {
                    let late = silent.iter().position(|&silent| silent).expect("a replica is still pending");
                    (late, Err(ReplicaFailure::TimedOut(self.node_timeout)))
                }
            };
            if !std::mem::replace(&mut silent[index], false) {
                // Already counted as timed out: an answer after the deadline.
                continue;
            }
            let replica = &self.plan.replicas[index];
            let result = result.and_then(|state| {
                answers
                    .add(replica, state)
                    .map_err(|reason| ReplicaFailure::Refused { code: tonic::Code::DataLoss, message: reason })
            });
            match result {
                Ok(()) => tally.succeeded(&replica.id),
                Err(ReplicaFailure::Refused { code: tonic::Code::Aborted, message }) => {
                    tally.failed(&replica.id);
                    stale_ring = true;
                    failures.push(format!("{}: {message}", replica.id));
                }
                Err(failure) => {
                    tally.failed(&replica.id);
                    self.liveness.suspect(&replica.id, self.node_timeout * SUSPECT_TIMEOUTS);
                    failures.push(format!("{}: {failure}", replica.id));
                }
            }
            // Answer as soon as R replicas have; a failure waits for every
            // replica (each bounded by the node timeout), so that it reports
            // exactly how many answered.
            if self.mode == ReadRepairMode::Background
                && tally.verdict() == Verdict::Reached
                && let Some(reply) = reply.take()
            {
                let _ = reply.send(Ok(self.outcome(&answers)));
            }
            if !silent.contains(&true) {
                break;
            }
        }
        drop(pending);

        let merged = answers.merged();
        let stale = answers.stale(&merged);
        let repaired = !stale.is_empty();
        if repaired {
            self.repair(&stale, &merged).await;
        }
        if let Some(reply) = reply.take() {
            let result = if tally.verdict() == Verdict::Reached {
                let mut outcome = self.outcome(&answers);
                outcome.repair = repaired;
                Ok(outcome)
            } else if stale_ring {
                Err(KvError::StaleRing(failures.join("; ")))
            } else {
                let (got, needed) = tally.shortfall();
                Err(KvError::unavailable("read", got, needed, &failures))
            };
            let _ = reply.send(result);
        }
    }

    fn outcome(&self, answers: &Answers) -> ReadOutcome {
        let state = answers.merged();
        let repair = !answers.stale(&state).is_empty();
        ReadOutcome {
            answered: answers.replicas.iter().map(|(r, _)| r.id.clone()).collect(),
            state,
            required: self.required as u8,
            replication: self.replication,
            repair,
        }
    }

    /// Sends `merged` to every stale replica and waits for their answers.
    async fn repair(&self, stale: &[&Replica], merged: &SiblingSet) {
        let encoded = Bytes::from(merged.encode());
        let sends = stale.iter().map(|replica| {
            let request = MergeRequest {
                tenant: self.tenant.clone(),
                key: self.key.clone(),
                state: encoded.clone(),
                ring_version: self.plan.ring_version,
                ..Default::default()
            };
            let sent = merge_within(&self.peers, &replica.address, request, self.node_timeout);
            async move {
                let ok = sent.await;
                if !ok {
                    tracing::debug!(node = %replica.id, "read repair failed");
                }
                metrics::counter!("cohort_read_repairs_total", "result" => if ok { "ok" } else { "failed" })
                    .increment(1);
            }
        });
        futures::future::join_all(sends).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_ring::{Actor, CausalContext};

    /// Work that answers, then waits for `go` before it records `done`.
    fn answers_then_waits(
        go: oneshot::Receiver<()>,
        done: oneshot::Sender<()>,
    ) -> (impl std::future::Future<Output = ()> + Send + 'static, oneshot::Receiver<u32>) {
        let (reply, answer) = oneshot::channel();
        let work = async move {
            let _ = reply.send(7);
            let _ = go.await;
            let _ = done.send(());
        };
        (work, answer)
    }

    #[tokio::test]
    async fn a_read_answers_in_place_and_what_is_left_finishes_on_its_own() {
        let (go, wait) = oneshot::channel();
        let (finished, done) = oneshot::channel();
        let (work, answer) = answers_then_waits(wait, finished);
        assert_eq!(answered_then_detached(work, answer).await.unwrap(), 7);
        go.send(()).unwrap();
        done.await.expect("the rest of the work ran to its end after the answer");
    }

    #[tokio::test]
    async fn a_read_its_caller_abandons_still_finishes() {
        let (go, wait) = oneshot::channel();
        let (finished, done) = oneshot::channel();
        let (reply, answer) = oneshot::channel::<u32>();
        let work = async move {
            let _ = wait.await;
            let _ = reply.send(7);
            let _ = finished.send(());
        };
        let mut caller = Box::pin(answered_then_detached(work, answer));
        assert!(futures::poll!(caller.as_mut()).is_pending());
        drop(caller);
        go.send(()).unwrap();
        done.await.expect("the abandoned work ran to its end");
    }

    fn replica(id: &str) -> Replica {
        Replica { id: id.into(), address: format!("{id}:1") }
    }

    #[test]
    fn the_coordinating_replica_is_local_when_one_is_and_never_a_suspect_first() {
        let list = [replica("a"), replica("b"), replica("c")];
        let none = |_: &Replica| false;
        let is = |id: &'static str| move |r: &Replica| r.id == id;
        assert_eq!(coordinator_order(&list, none, none), [0, 1, 2], "no local replica: the list's order");
        assert_eq!(coordinator_order(&list, none, |_| true), [0, 1, 2], "all local (dev): the list's order");
        assert_eq!(coordinator_order(&list, none, is("c")), [2, 0, 1], "the local replica first");
        assert_eq!(coordinator_order(&list, is("a"), none), [1, 2, 0], "a suspect last");
        assert_eq!(coordinator_order(&list, is("c"), is("c")), [0, 1, 2], "a suspected local replica is not preferred");
    }

    fn encoded(state: &SiblingSet) -> Bytes {
        Bytes::from(state.encode())
    }

    #[test]
    fn stale_replicas_are_those_that_differ_from_the_merge() {
        let mut newer = SiblingSet::new();
        newer.update(&CausalContext::new(), &Actor::new("n1.1"), Some(Bytes::from_static(b"v"))).unwrap();
        let mut answers = Answers::default();
        answers.add(&replica("a"), encoded(&newer)).unwrap();
        answers.add(&replica("b"), Bytes::new()).unwrap();
        answers.add(&replica("c"), encoded(&newer)).unwrap();
        assert_eq!(answers.states.len(), 2, "equal answers are decoded once");
        let merged = answers.merged();
        assert_eq!(merged, newer);
        let stale: Vec<_> = answers.stale(&merged).into_iter().map(|r| r.id.clone()).collect();
        assert_eq!(stale, ["b"]);
    }

    #[test]
    fn replicas_in_step_are_one_state_and_none_is_stale() {
        let mut state = SiblingSet::new();
        state.update(&CausalContext::new(), &Actor::new("n1.1"), Some(Bytes::from_static(b"v"))).unwrap();
        let mut answers = Answers::default();
        for id in ["a", "b", "c"] {
            answers.add(&replica(id), encoded(&state)).unwrap();
        }
        assert_eq!(answers.states.len(), 1);
        assert_eq!(answers.merged(), state);
        assert!(answers.stale(&state).is_empty());
    }

    #[test]
    fn an_unreadable_answer_is_refused_and_not_counted() {
        let mut answers = Answers::default();
        let error = answers.add(&replica("a"), Bytes::from_static(&[0xff, 1, 2])).unwrap_err();
        assert!(error.starts_with("unreadable state"), "{error}");
        assert!(answers.replicas.is_empty());
    }

    #[test]
    fn concurrent_answers_merge_into_siblings() {
        let mut left = SiblingSet::new();
        left.update(&CausalContext::new(), &Actor::new("n1.1"), Some(Bytes::from_static(b"l"))).unwrap();
        let mut right = SiblingSet::new();
        right.update(&CausalContext::new(), &Actor::new("n2.1"), Some(Bytes::from_static(b"r"))).unwrap();
        let mut answers = Answers::default();
        answers.add(&replica("a"), encoded(&left)).unwrap();
        answers.add(&replica("b"), encoded(&right)).unwrap();
        let merged = answers.merged();
        assert_eq!(merged.values().count(), 2);
        assert_eq!(answers.stale(&merged).len(), 2);
    }
}
