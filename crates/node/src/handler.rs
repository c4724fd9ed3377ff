//! What a storage node does with each internal operation: the
//! [`StorageHandler`] the transport calls, however the request arrived
//! (unary gRPC, a pipelined stream, or in-process).
//!
//! The write path for a new version runs here, on the *coordinating replica*
//! (the first reachable node of the key's preference list): the node issues
//! the dot from its own state, appends it, and in parallel makes it durable
//! locally and sends the resulting sibling set to the other replicas. It
//! answers as soon as `write_quorum` replicas (itself included) hold the
//! version durably; the remaining sends finish in the background.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cohort_proto::internal::v1::tombstones_response::Entry as TombstoneEntry;
use cohort_proto::internal::v1::{
    AcceptRequest, AcceptResponse, CoordinateRequest, CoordinateResponse, DigestRequest, DigestResponse, Dot as PbDot,
    DropRangeRequest, DropRangeResponse, EscalatedRange, FenceRequest, FenceResponse, Handoff, InfoRequest,
    InfoResponse, MergeRequest, MergeResponse, PrepareRequest, PrepareResponse, PurgeRequest, PurgeResponse,
    ReadRequest, ReadResponse, ScanEntry, ScanRequest, ScanResponse, TombstonesRequest, TombstonesResponse,
    WriteTag as PbWriteTag,
};
use cohort_ring::{Actor, CausalContext, Dot, Fence, QuorumTally, SiblingSet, TokenRange, Verdict};
use cohort_transport::{PeerPool, ReplicaFailure, StorageHandler, within};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tonic::Status;

use crate::store::{Replicated, Store, StoreError, WriteLimits, WriteTag};

/// A replica's acknowledgement of a coordinated write: its id, and whether
/// it holds the version durably (or why not).
type Ack = (String, Result<(), ReplicaFailure>);

/// The local sync and peer sends of one coordinated write. Dropped with
/// some still running, it hands them to a background task.
#[derive(Default)]
struct Replication(FuturesUnordered<BoxFuture<'static, Ack>>);

impl Drop for Replication {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let mut rest = std::mem::take(&mut self.0);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { while rest.next().await.is_some() {} });
            }
            // Only when the runtime itself is gone (process shutdown): the
            // peers that missed the version are healed by repair.
            Err(_) => tracing::warn!(pending = rest.len(), "replication abandoned at shutdown"),
        }
    }
}

/// The hint record of one coordinated write, settled when the last of its
/// peers has answered (wherever that happens: in the request, or in the
/// background task that finishes its replication).
struct HintSettlement {
    store: Arc<Store>,
    tenant: String,
    key: Bytes,
    seq: u64,
    outstanding: std::sync::atomic::AtomicUsize,
    failed: std::sync::Mutex<Vec<(String, String)>>,
}

impl HintSettlement {
    fn answered(&self, peer: &cohort_proto::internal::v1::Peer, ok: bool) {
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if !ok {
            let (id, address) = hint_target(peer);
            failed.push((id.to_string(), address.to_string()));
        }
        if self.outstanding.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            let left: Vec<(&str, &str)> = failed.iter().map(|(p, a)| (p.as_str(), a.as_str())).collect();
            if let Err(error) = self.store.settle_hints(&self.tenant, &self.key, self.seq, &left) {
                tracing::debug!(%error, "could not settle a hint record; it is delivered again");
            }
        }
    }
}

/// Whom the hint for `peer` names: the replica it stands in for when it is
/// a fallback (a fallback that failed leaves that replica without the
/// write), otherwise the peer itself.
fn hint_target(peer: &cohort_proto::internal::v1::Peer) -> (&str, &str) {
    match peer.hinted_for.is_empty() {
        true => (&peer.id, &peer.address),
        false => (&peer.hinted_for, &peer.hinted_for_address),
    }
}

/// Longest tenant id, which the storage key encoding relies on.
const MAX_TENANT_BYTES: usize = 63;

/// A storage node's handling of the internal operations.
pub struct StorageNode {
    node_id: Arc<str>,
    store: Arc<Store>,
    peers: Arc<PeerPool>,
    peer_timeout: Duration,
}

impl StorageNode {
    /// A node over `store`, reaching other replicas through `peers`.
    pub fn new(node_id: &str, store: Arc<Store>, peers: Arc<PeerPool>, peer_timeout: Duration) -> Self {
        StorageNode { node_id: node_id.into(), store, peers, peer_timeout }
    }
}

fn status_from(error: StoreError) -> Status {
    match error {
        StoreError::Corrupt(e) => Status::data_loss(format!("stored state unreadable: {e}")),
        StoreError::CorruptAcceptor(e) => Status::data_loss(format!("stored acceptor state unreadable: {e}")),
        StoreError::ForgedContext { .. } | StoreError::DotsExhausted(_) => Status::invalid_argument(error.to_string()),
        StoreError::Fenced(_) => Status::failed_precondition(error.to_string()),
        StoreError::TooManySiblings { .. } | StoreError::StateTooLarge { .. } => {
            Status::failed_precondition(error.to_string())
        }
        StoreError::StaleRing { .. } => Status::aborted(error.to_string()),
        StoreError::Poisoned | StoreError::Engine(_) | StoreError::WrongNode { .. } => {
            Status::unavailable(error.to_string())
        }
    }
}

fn dot_to_pb(dot: &Dot) -> PbDot {
    PbDot { actor: dot.actor.0.clone(), counter: dot.counter }
}

/// A dot from the wire; `None` when absent or not a real dot.
pub(crate) fn dot_from_pb(dot: Option<&PbDot>) -> Option<Dot> {
    dot.filter(|d| !d.actor.is_empty() && d.counter > 0)
        .map(|d| Dot { actor: Actor::new(d.actor.clone()), counter: d.counter })
}

/// A write tag from the wire; `None` when absent.
fn tag_from_pb(tag: &Option<PbWriteTag>) -> Result<Option<WriteTag<'_>>, Status> {
    match tag {
        None => Ok(None),
        Some(tag) if tag.id.is_empty() || tag.id.len() > 64 => {
            Err(Status::invalid_argument("write id must be 1..=64 bytes"))
        }
        Some(tag) => Ok(Some(WriteTag { id: &tag.id, expires_at: tag.expires_at })),
    }
}

fn check_target(tenant: &str, key: &[u8]) -> Result<(), Status> {
    if tenant.is_empty() || tenant.len() > MAX_TENANT_BYTES {
        return Err(Status::invalid_argument(format!("tenant id must be 1..={MAX_TENANT_BYTES} bytes")));
    }
    if key.is_empty() {
        return Err(Status::invalid_argument("key must not be empty"));
    }
    Ok(())
}

#[tonic::async_trait]
impl StorageHandler for StorageNode {
    async fn prepare(&self, request: PrepareRequest) -> Result<PrepareResponse, Status> {
        check_target(&request.tenant, &request.key)?;
        crate::acceptor::prepare(&self.store, request).await.map_err(status_from)
    }

    async fn accept(&self, request: AcceptRequest) -> Result<AcceptResponse, Status> {
        check_target(&request.tenant, &request.key)?;
        crate::acceptor::check_accept(&request)?;
        crate::acceptor::accept(&self.store, request).await.map_err(status_from)
    }

    async fn coordinate(&self, request: CoordinateRequest) -> Result<CoordinateResponse, Status> {
        check_target(&request.tenant, &request.key)?;
        let context = CausalContext::decode(&request.context)
            .map_err(|e| Status::invalid_argument(format!("causal context is invalid: {e}")))?;
        let needed = (request.write_quorum.max(1) as usize).min(request.peers.len() + 1);
        let timeout = match request.timeout_ms {
            0 => self.peer_timeout,
            ms => Duration::from_millis(ms.into()),
        };

        let limits = WriteLimits { max_siblings: request.max_siblings, max_state_bytes: request.max_state_bytes };
        let tag = tag_from_pb(&request.write)?;
        // A hint for every peer, in the write's own batch; each peer's
        // acknowledgement clears its own.
        let targets: Vec<(&str, &str)> = request.peers.iter().map(hint_target).collect();
        let fence = match request.fence {
            Some(fence)
                if fence.lock.is_empty() || fence.lock.len() > cohort_ring::dvv::MAX_LOCK_LEN || fence.token == 0 =>
            {
                return Err(Status::invalid_argument(format!(
                    "a fence names a lock of 1..={} bytes and a token above 0",
                    cohort_ring::dvv::MAX_LOCK_LEN
                )));
            }
            fence => fence.map(|f| Fence { lock: f.lock, token: f.token }),
        };
        let staged = self
            .store
            .stage_update_hinted(
                &request.tenant,
                &request.key,
                &context,
                request.value,
                fence,
                limits,
                tag,
                request.ring_version,
                &targets,
            )
            .map_err(status_from)?;
        let hint_seq = staged.hint_seq;
        let write_dot = dot_to_pb(&staged.dot);

        // The local sync and the sends to the peers run concurrently in one
        // future set. Whatever is still running when this call ends — the
        // quorum answered, or the caller gave up — finishes in a background
        // task: a replication once started always runs to its end.
        let replicas: Vec<String> =
            std::iter::once(self.node_id.to_string()).chain(request.peers.iter().map(|p| p.id.clone())).collect();
        let hints = Arc::new(HintSettlement {
            store: self.store.clone(),
            tenant: request.tenant.clone(),
            key: request.key.clone(),
            seq: hint_seq,
            outstanding: std::sync::atomic::AtomicUsize::new(request.peers.len()),
            failed: std::sync::Mutex::new(Vec::new()),
        });
        let mut pending = Replication::default();
        for peer in request.peers {
            let merge = MergeRequest {
                tenant: request.tenant.clone(),
                key: request.key.clone(),
                state: staged.encoded.clone(),
                write: request.write.clone(),
                write_dot: Some(write_dot.clone()),
                ring_version: request.ring_version,
                handoff: (!peer.hinted_for.is_empty())
                    .then(|| Handoff { node_id: peer.hinted_for.clone(), address: peer.hinted_for_address.clone() }),
            };
            // Sent now, before the local sync below may hold this thread.
            let call = self.peers.node(&peer.address).map(|client| within(timeout, client.merge(merge)));
            let hints = hints.clone();
            pending.0.push(Box::pin(async move {
                let result = match call {
                    Err(status) => Err(ReplicaFailure::NotSent(status.message().to_string())),
                    Ok(call) => call.await.map(drop),
                };
                hints.answered(&peer, result.is_ok());
                (peer.id, result)
            }));
        }
        {
            let store = self.store.clone();
            let id = self.node_id.to_string();
            pending.0.push(Box::pin(async move {
                let durable = store.durable().await.map_err(|e| {
                    let status = status_from(e);
                    ReplicaFailure::Refused { code: status.code(), message: status.message().to_string() }
                });
                (id, durable)
            }));
        }

        // Answer once the quorum is reached. A write that cannot reach it
        // still waits for every replica (each bounded by the timeout), so
        // that the answer says exactly which ones hold it.
        let mut tally = if request.sets.is_empty() {
            QuorumTally::new(replicas, needed)
        } else {
            QuorumTally::over_sets(request.sets.iter().map(|set| (set.members.clone(), set.needed as usize)))
        };
        let mut failures = Vec::new();
        while let Some((node_id, result)) = pending.0.next().await {
            match result {
                Ok(()) => tally.succeeded(&node_id),
                Err(failure) => {
                    tally.failed(&node_id);
                    failures.push(failure.to_pb(&node_id));
                }
            }
            if tally.verdict() == Verdict::Reached {
                break;
            }
        }
        Ok(CoordinateResponse {
            acked: tally.successes(),
            failures,
            dot: Some(write_dot),
            siblings: staged.siblings as u32,
            replayed: staged.replayed,
        })
    }

    async fn merge(&self, request: MergeRequest) -> Result<MergeResponse, Status> {
        check_target(&request.tenant, &request.key)?;
        let incoming = SiblingSet::decode(&request.state)
            .map_err(|e| Status::invalid_argument(format!("sibling set is invalid: {e}")))?;
        if let Some(handoff) = &request.handoff {
            // A fallback's copy for a replica believed down: kept apart from
            // this node's own data until handed off.
            if !cohort_ring::valid_node_id(&handoff.node_id)
                || handoff.address.is_empty()
                || handoff.address.len() > 255
            {
                return Err(Status::invalid_argument(
                    "a handoff names a valid replica id and an address of 1..=255 bytes",
                ));
            }
            self.store.check_ring(request.ring_version).map_err(status_from)?;
            let owner = (handoff.node_id.as_str(), handoff.address.as_str());
            self.store
                .stage_handoff(&request.tenant, &request.key, owner, request.ring_version, &incoming)
                .map_err(status_from)?;
            self.store.durable().await.map_err(status_from)?;
            return Ok(MergeResponse {});
        }
        let tag = tag_from_pb(&request.write)?;
        let dot = dot_from_pb(request.write_dot.as_ref());
        let write = match (tag, &dot) {
            (tag, Some(dot)) => Some(Replicated { dot, tag }),
            (None, None) => None,
            (Some(_), None) => return Err(Status::invalid_argument("a write tag needs the write's dot")),
        };
        self.store
            .merge(&request.tenant, &request.key, &incoming, write, request.ring_version)
            .await
            .map_err(status_from)?;
        Ok(MergeResponse {})
    }

    async fn read(&self, request: ReadRequest) -> Result<ReadResponse, Status> {
        check_target(&request.tenant, &request.key)?;
        self.store.check_ring(request.ring_version).map_err(status_from)?;
        // The stored encoding as it is: the coordinator decodes it (and
        // refuses it as data loss if it is unreadable).
        let state = self.store.read_encoded_state(&request.tenant, &request.key).map_err(status_from)?;
        let write_dot = match request.write_id.is_empty() {
            true => None,
            false => self.store.write_record(&request.write_id).map_err(status_from)?.as_ref().map(dot_to_pb),
        };
        Ok(ReadResponse { state, write_dot })
    }

    async fn info(&self, request: InfoRequest) -> Result<InfoResponse, Status> {
        // Markers stay until the leader says it synced them.
        let synced: Vec<(String, TokenRange)> =
            request.synced.into_iter().map(|r| (r.tenant, TokenRange { start: r.start, end: r.end })).collect();
        self.store.clear_escalations(&synced).map_err(status_from)?;
        let escalations = match request.report {
            true => self.store.escalations(MAX_ESCALATIONS_PER_INFO).map_err(status_from)?,
            false => Vec::new(),
        };
        let handoffs = match request.report {
            true => self.store.handoff_leaves().map_err(status_from)?,
            false => Vec::new(),
        };
        let ranges = |list: Vec<(String, TokenRange)>| {
            list.into_iter()
                .map(|(tenant, range)| EscalatedRange { tenant, start: range.start, end: range.end })
                .collect()
        };
        Ok(InfoResponse {
            node_id: self.node_id.to_string(),
            actor: self.store.actor().to_string(),
            incarnation: self.store.incarnation(),
            escalations: ranges(escalations),
            handoffs: ranges(handoffs),
        })
    }

    async fn fence(&self, request: FenceRequest) -> Result<FenceResponse, Status> {
        let fence = self.store.raise_fence(request.ring_version).await.map_err(status_from)?;
        if !request.removed.is_empty() {
            let store = self.store.clone();
            let removed = request.removed.clone();
            let dropped = tokio::task::spawn_blocking(move || store.forget_hints_for(&removed))
                .await
                .map_err(|e| Status::internal(format!("hint cleanup task failed: {e}")))?
                .map_err(status_from)?;
            if dropped > 0 {
                tracing::info!(dropped, removed = ?request.removed, "dropped hints and handoffs for nodes that left the ring");
            }
        }
        if fence == request.ring_version {
            tracing::info!(ring_version = fence, "ring fence raised: requests routed by older rings are refused");
        }
        metrics::gauge!("cohort_node_ring_fence").set(fence as f64);
        Ok(FenceResponse { ring_version: fence })
    }

    async fn scan(&self, request: ScanRequest) -> Result<ScanResponse, Status> {
        if request.start > request.end {
            return Err(Status::invalid_argument("scan range start is past its end"));
        }
        let store = self.store.clone();
        // A scan reads many keys: off the runtime's threads.
        tokio::task::spawn_blocking(move || {
            if request.count_only {
                let (keys, bytes) = store.count(request.start, request.end).map_err(status_from)?;
                return Ok(ScanResponse { keys, bytes, ..Default::default() });
            }
            let after = (!request.after.is_empty()).then_some(&request.after[..]);
            let limit = (request.limit as usize).clamp(1, MAX_SCAN_PAGE);
            let only = (!request.tenant.is_empty()).then_some(request.tenant.as_str());
            let (page, next) = if request.acceptors {
                store.scan_acceptors(request.start, request.end, after, limit, only)
            } else {
                store.scan_tenant(request.start, request.end, after, limit, only)
            }
            .map_err(status_from)?;
            let mut answer = ScanResponse { next: next.map(Bytes::from).unwrap_or_default(), ..Default::default() };
            for (tenant, key, state) in page {
                answer.keys += 1;
                answer.bytes += state.len() as u64;
                let position = Bytes::from(crate::store::storage_key(&tenant, &key));
                answer.entries.push(ScanEntry { tenant, key: Bytes::from(key), state, position });
            }
            Ok(answer)
        })
        .await
        .map_err(|e| Status::internal(format!("scan task failed: {e}")))?
    }

    async fn drop_range(&self, request: DropRangeRequest) -> Result<DropRangeResponse, Status> {
        if request.start > request.end {
            return Err(Status::invalid_argument("drop range start is past its end"));
        }
        let dropped = self.store.drop_range(request.start, request.end, &request.tenants).await.map_err(status_from)?;
        if dropped > 0 {
            tracing::info!(
                dropped,
                start = request.start,
                end = request.end,
                "dropped keys of a range no longer owned"
            );
        }
        Ok(DropRangeResponse { dropped })
    }

    async fn digest(&self, request: DigestRequest) -> Result<DigestResponse, Status> {
        if request.start > request.end {
            return Err(Status::invalid_argument("digest range start is past its end"));
        }
        self.store.check_ring(request.ring_version).map_err(status_from)?;
        let store = self.store.clone();
        // Partly covered leaves are hashed from their keys: off the runtime.
        tokio::task::spawn_blocking(move || {
            let range = TokenRange { start: request.start, end: request.end };
            let segments = store.digest(&request.tenant, range).map_err(status_from)?;
            Ok(DigestResponse { segments })
        })
        .await
        .map_err(|e| Status::internal(format!("digest task failed: {e}")))?
    }

    async fn tombstones(&self, request: TombstonesRequest) -> Result<TombstonesResponse, Status> {
        if request.start > request.end {
            return Err(Status::invalid_argument("tombstone range start is past its end"));
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let range = TokenRange { start: request.start, end: request.end };
            let limit = (request.limit as usize).clamp(1, MAX_SCAN_PAGE);
            let found = store.tombstones(&request.tenant, range, request.grace_secs, limit).map_err(status_from)?;
            let entries =
                found.into_iter().map(|(key, state)| TombstoneEntry { key: Bytes::from(key), state }).collect();
            Ok(TombstonesResponse { entries })
        })
        .await
        .map_err(|e| Status::internal(format!("tombstone listing task failed: {e}")))?
    }

    async fn purge(&self, request: PurgeRequest) -> Result<PurgeResponse, Status> {
        check_target(&request.tenant, &request.key)?;
        let expected = SiblingSet::decode(&request.state)
            .map_err(|e| Status::invalid_argument(format!("sibling set is invalid: {e}")))?;
        let purged = self
            .store
            .purge(&request.tenant, &request.key, &expected, request.ring_version)
            .await
            .map_err(status_from)?;
        Ok(PurgeResponse { purged })
    }
}

/// Most escalated ranges one info answer hands over.
const MAX_ESCALATIONS_PER_INFO: usize = 1024;

/// Most entries one scan page returns.
const MAX_SCAN_PAGE: usize = 1024;
