//! Linearizable registers: the driver of `cohort_paxos::Proposer` over the
//! transport.
//!
//! A linearizable operation on a key runs one Paxos instance among the
//! key's replicas: the electorate is the key's preference list in every
//! live ring version (two while a migration moves the key), and a ballot
//! needs a majority of each. A write whose coordinator holds a promise for
//! the key (its last accepted proposal there also promised it the next
//! ballot) goes straight to the accept phase: one round trip. A read first *peeks* (asks what each replica
//! accepted, promising nothing, so no replica writes or syncs) and answers
//! at once when a majority agrees; otherwise it runs Paxos like a write. The protocol decisions are the proposer's;
//! this module sends what it commands, feeds it the answers and failures,
//! waits its back-offs (jittered, growing) and bounds the whole operation
//! by the request timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cohort_paxos::{Ballot, Change, Command, Failure, Outcome, PrepareAnswer, Proposer, Register, Step, wire};
use cohort_proto::internal::v1::{AcceptRequest, PrepareRequest};
use cohort_transport::{Liveness, PeerPool, ReplicaFailure, within};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use rand::Rng;

use crate::error::KvError;
use crate::metadata::Tenant;
use crate::topology::{ReplicaPlan, Topology};

/// Ballots an operation may lose before it gives up as contended.
const MAX_ATTEMPTS: u32 = 12;
/// The first back-off's ceiling; each further attempt doubles it.
const BACKOFF_BASE: Duration = Duration::from_millis(2);
/// The largest back-off ceiling.
const BACKOFF_MAX: Duration = Duration::from_millis(50);
/// How long (in node timeouts) a replica that did not answer stays suspected.
const SUSPECT_TIMEOUTS: u32 = 5;

/// Runs linearizable operations for a coordinator.
pub struct Registers {
    topology: Arc<Topology>,
    peers: Arc<PeerPool>,
    liveness: Arc<Liveness>,
    node_timeout: Duration,
    request_timeout: Duration,
    /// This coordinator's proposer id, drawn at start: ballots of two
    /// coordinators never tie.
    proposer: u64,
    /// Per key, the ballot a majority promised this coordinator with its
    /// last accepted proposal (and the register, and the ring version it
    /// was routed by): the next write of the key skips the prepare.
    promises: Mutex<Promises>,
    /// The last ballot round handed out.
    last_round: AtomicU64,
}

/// A promise a coordinator holds for a key: the ring version its proposal
/// was routed by, the promised ballot, and the register accepted with it.
type HeldPromise = (u64, Ballot, Register);

/// Keys whose promise a coordinator remembers at most, and the bytes of
/// their registers (then it forgets them all and starts over: a forgotten
/// promise costs one prepare).
const MAX_PROMISES: usize = 65_536;
const MAX_PROMISE_BYTES: usize = 64 * 1024 * 1024;

/// The promises a coordinator holds, bounded in count and bytes.
#[derive(Default)]
struct Promises {
    held: HashMap<(String, Bytes), HeldPromise>,
    bytes: usize,
}

fn promise_bytes(slot: &(String, Bytes), promise: &HeldPromise) -> usize {
    let register = &promise.2;
    slot.0.len()
        + slot.1.len()
        + register.value.as_ref().map_or(0, Bytes::len)
        + register.recent.iter().map(|w| w.id.len() + 8).sum::<usize>()
        + register.fences.iter().map(|f| f.lock.len() + 8).sum::<usize>()
        + 64
}

impl Promises {
    fn take(&mut self, slot: &(String, Bytes)) -> Option<HeldPromise> {
        let promise = self.held.remove(slot)?;
        self.bytes -= promise_bytes(slot, &promise);
        Some(promise)
    }

    fn hold(&mut self, slot: (String, Bytes), promise: HeldPromise) {
        self.take(&slot);
        let size = promise_bytes(&slot, &promise);
        if self.held.len() >= MAX_PROMISES || self.bytes + size > MAX_PROMISE_BYTES {
            self.held.clear();
            self.bytes = 0;
        }
        self.bytes += size;
        self.held.insert(slot, promise);
    }
}

/// One replica's answer to a peek, a prepare or an accept.
enum Answer {
    Peek(Result<PrepareAnswer, ReplicaFailure>),
    Prepare(Result<PrepareAnswer, ReplicaFailure>),
    Accept(Result<cohort_paxos::AcceptAnswer, ReplicaFailure>),
}

type Pending = FuturesUnordered<BoxFuture<'static, (String, Ballot, Answer)>>;

/// Whether an operation ended with a read that changed nothing (its peek or
/// its promise say nothing about what this coordinator holds).
fn outcome_is_peek(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Read(_))
}

/// Microseconds since the Unix epoch: the round of a new ballot.
fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// The back-off before attempt `attempt + 1`: uniform in zero to a ceiling
/// that doubles with every attempt, so that contenders spread out.
fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE.saturating_mul(1 << attempt.min(16)).min(BACKOFF_MAX);
    ceiling.mul_f64(rand::rng().random::<f64>())
}

impl Registers {
    /// The driver over the coordinator's topology and node clients.
    pub fn new(
        topology: Arc<Topology>,
        peers: Arc<PeerPool>,
        liveness: Arc<Liveness>,
        node_timeout: Duration,
        request_timeout: Duration,
    ) -> Self {
        Registers {
            topology,
            peers,
            liveness,
            node_timeout,
            request_timeout,
            proposer: rand::random(),
            promises: Mutex::default(),
            last_round: AtomicU64::new(0),
        }
    }

    /// The round of this coordinator's next ballot: its clock, but always at
    /// least two above the last round handed out, so that a new ballot never
    /// equals the successor of an earlier one (the ballot a held promise
    /// covers), even if the clock steps back.
    fn next_round(&self) -> u64 {
        let now = now_micros();
        let mut last = self.last_round.load(Ordering::Relaxed);
        loop {
            let round = now.max(last + 2);
            match self.last_round.compare_exchange_weak(last, round, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return round,
                Err(seen) => last = seen,
            }
        }
    }

    /// Applies `change` to `key` of `tenant`'s linearizable key space, with
    /// write id `write` (empty: none).
    pub async fn run(&self, tenant: &Tenant, key: Bytes, change: Change, write: Bytes) -> Result<Outcome, KvError> {
        let (outcome, stale_ring) = self.run_once(tenant, &key, change.clone(), write.clone(), false).await?;
        if !stale_ring || !matches!(outcome, Outcome::Unavailable | Outcome::Unknown) {
            return Ok(outcome);
        }
        // A replica refused a request routed by a retired ring: route the
        // operation again by the current one. Its write id and expected
        // version keep a write that applied the first time from applying
        // twice; a mismatch then may be the first attempt's own write.
        metrics::counter!("cohort_stale_ring_retries_total").increment(1);
        self.topology.refresh().await.map_err(|e| KvError::DependencyUnavailable(e.to_string()))?;
        let (again, _) = self.run_once(tenant, &key, change, write, false).await?;
        Ok(match (outcome, again) {
            (Outcome::Unknown, Outcome::Mismatch(_) | Outcome::Unavailable | Outcome::Contended) => Outcome::Unknown,
            (_, again) => again,
        })
    }

    /// Settles register `key` of `tenant` on a majority of every live
    /// replica set: a membership change runs this for every register whose
    /// replicas change, before the old ring retires, so that the new
    /// replicas hold what only old ones did.
    pub async fn settle(&self, tenant: &Tenant, key: Bytes) -> Result<Outcome, KvError> {
        let (outcome, stale_ring) = self.run_once(tenant, &key, Change::Read, Bytes::new(), true).await?;
        if stale_ring && outcome == Outcome::Unavailable {
            self.topology.refresh().await.map_err(|e| KvError::DependencyUnavailable(e.to_string()))?;
            return Ok(self.run_once(tenant, &key, Change::Read, Bytes::new(), true).await?.0);
        }
        Ok(outcome)
    }

    /// One run of the proposer (settling when `settle`); also says whether
    /// a replica refused a request as routed by a stale ring.
    async fn run_once(
        &self,
        tenant: &Tenant,
        key: &Bytes,
        change: Change,
        write: Bytes,
        settle: bool,
    ) -> Result<(Outcome, bool), KvError> {
        let plan = self.topology.current().replicas(&tenant.id, key, tenant.replication.n().into());
        if plan.sets.is_empty() || plan.smallest_set() == 0 {
            return Err(KvError::unavailable(
                "linearizable operation",
                0,
                1,
                &["no storage nodes are on the ring".into()],
            ));
        }
        let sets = plan.sets.iter().map(|set| (set.clone(), set.len() / 2 + 1)).collect();
        let slot = (tenant.id.clone(), key.clone());
        // A held promise is taken by one write only: two proposals under
        // one ballot could each be accepted somewhere.
        let held = if change.writes() && !settle {
            let mut promises = self.promises.lock().unwrap_or_else(|p| p.into_inner());
            promises.take(&slot).filter(|(ring, _, _)| *ring == plan.ring_version).map(|(_, b, r)| (b, r))
        } else {
            None
        };
        let mut proposer = Proposer::new(self.proposer, change, write, sets, MAX_ATTEMPTS);
        if settle {
            proposer = proposer.settling();
        } else if let Some((ballot, register)) = held {
            proposer = proposer.with_promise(ballot, register);
        }
        proposer.start(self.next_round());
        let deadline = tokio::time::sleep(self.request_timeout);
        tokio::pin!(deadline);
        let wait = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(wait);
        let mut waiting = false;
        let mut pending: Pending = FuturesUnordered::new();
        let mut stale_ring = false;
        loop {
            for command in proposer.take_commands() {
                match command {
                    Command::Peek { to } => {
                        for id in to {
                            pending.push(self.prepare(tenant, key, &plan, id, None));
                        }
                    }
                    Command::Prepare { ballot, to } => {
                        for id in to {
                            pending.push(self.prepare(tenant, key, &plan, id, Some(ballot)));
                        }
                    }
                    Command::Accept { ballot, register, to } => {
                        let register = wire::register_to_pb(&register);
                        for id in to {
                            pending.push(self.accept(tenant, key, &plan, id, ballot, register.clone()));
                        }
                    }
                    Command::Backoff { attempt } => {
                        metrics::counter!("cohort_cas_ballots_lost_total").increment(1);
                        wait.as_mut().reset(tokio::time::Instant::now() + backoff(attempt));
                        waiting = true;
                    }
                    Command::Finish(outcome) => {
                        let mut promises = self.promises.lock().unwrap_or_else(|p| p.into_inner());
                        match proposer.promise_held() {
                            Some((ballot, register)) => promises.hold(slot, (plan.ring_version, ballot, register)),
                            // A read that only peeked leaves what is held.
                            None if outcome_is_peek(&outcome) => {}
                            None => {
                                promises.take(&slot);
                            }
                        }
                        return Ok((outcome, stale_ring));
                    }
                }
            }
            tokio::select! {
                Some((from, ballot, answer)) = pending.next() => {
                    let (step, result) = match answer {
                        Answer::Peek(Ok(PrepareAnswer::Promised(accepted))) => { proposer.on_peek(&from, accepted); continue; }
                        Answer::Peek(Ok(PrepareAnswer::Refused(_))) => {
                            (Step::Peek, ReplicaFailure::Refused { code: tonic::Code::Internal, message: "a peek was refused".into() })
                        }
                        Answer::Peek(Err(failure)) => (Step::Peek, failure),
                        Answer::Prepare(Ok(answer)) => { proposer.on_prepare(&from, ballot, answer); continue; }
                        Answer::Accept(Ok(answer)) => { proposer.on_accept(&from, ballot, answer); continue; }
                        Answer::Prepare(Err(failure)) => (Step::Prepare, failure),
                        Answer::Accept(Err(failure)) => (Step::Accept, failure),
                    };
                    stale_ring |= matches!(result, ReplicaFailure::Refused { code: tonic::Code::Aborted, .. });
                    let failure = if result.may_have_acted() {
                        self.liveness.suspect(&from, self.node_timeout * SUSPECT_TIMEOUTS);
                        Failure::MayHaveActed
                    } else {
                        Failure::Refused
                    };
                    tracing::debug!(replica = %from, %result, "paxos request failed");
                    proposer.on_failure(&from, step, ballot, failure);
                }
                () = &mut wait, if waiting => {
                    waiting = false;
                    proposer.retry(self.next_round());
                }
                () = &mut deadline => proposer.deadline(),
            }
        }
    }

    /// A prepare for `ballot`, or a peek when `None`.
    fn prepare(
        &self,
        tenant: &Tenant,
        key: &Bytes,
        plan: &ReplicaPlan,
        id: String,
        ballot: Option<Ballot>,
    ) -> BoxFuture<'static, (String, Ballot, Answer)> {
        let request = PrepareRequest {
            tenant: tenant.id.clone(),
            key: key.clone(),
            ballot: ballot.map(wire::ballot_to_pb),
            ring_version: plan.ring_version,
            peek: ballot.is_none(),
        };
        let call = self.client(plan, &id).map(|client| client.prepare(request));
        let timeout = self.node_timeout;
        Box::pin(async move {
            let result = match call {
                Err(failure) => Err(failure),
                Ok(call) => within(timeout, call).await.map(wire::prepare_answer_from_pb),
            };
            match ballot {
                Some(ballot) => (id, ballot, Answer::Prepare(result)),
                None => (id, Ballot::ZERO, Answer::Peek(result)),
            }
        })
    }

    fn accept(
        &self,
        tenant: &Tenant,
        key: &Bytes,
        plan: &ReplicaPlan,
        id: String,
        ballot: Ballot,
        register: cohort_proto::internal::v1::Register,
    ) -> BoxFuture<'static, (String, Ballot, Answer)> {
        let request = AcceptRequest {
            tenant: tenant.id.clone(),
            key: key.clone(),
            ballot: Some(wire::ballot_to_pb(ballot)),
            register: Some(register),
            ring_version: plan.ring_version,
        };
        let call = self.client(plan, &id).map(|client| client.accept(request));
        let timeout = self.node_timeout;
        Box::pin(async move {
            let result = match call {
                Err(failure) => Err(failure),
                Ok(call) => within(timeout, call).await.map(wire::accept_answer_from_pb),
            };
            (id, ballot, Answer::Accept(result))
        })
    }

    fn client(&self, plan: &ReplicaPlan, id: &str) -> Result<cohort_transport::NodeClient, ReplicaFailure> {
        let replica = plan
            .replicas
            .iter()
            .find(|replica| replica.id == id)
            .ok_or_else(|| ReplicaFailure::NotSent(format!("no address for replica {id}")))?;
        self.peers.node(&replica.address).map_err(|status| ReplicaFailure::NotSent(status.message().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn promise(value_bytes: usize) -> HeldPromise {
        let register = Register { version: 1, value: Some(Bytes::from(vec![0u8; value_bytes])), ..Register::default() };
        (1, Ballot { round: 1, proposer: 1 }, register)
    }

    #[test]
    fn held_promises_stay_within_their_bytes_and_are_taken_once() {
        let mut promises = Promises::default();
        let slot = |i: usize| ("t".to_string(), Bytes::from(format!("k{i}")));
        promises.hold(slot(0), promise(10));
        assert!(promises.take(&slot(0)).is_some());
        assert!(promises.take(&slot(0)).is_none(), "a promise serves one write");
        assert_eq!(promises.bytes, 0);
        // Large registers: the holder forgets everything rather than grow.
        for i in 0..100 {
            promises.hold(slot(i), promise(1024 * 1024));
            assert!(promises.bytes <= MAX_PROMISE_BYTES);
        }
        assert!(promises.held.len() < 100);
        let total: usize = promises.held.iter().map(|(s, p)| promise_bytes(s, p)).sum();
        assert_eq!(total, promises.bytes);
    }
}
