//! The leader's worker that carries a membership change through its phases.
//!
//! A migration moves the cluster from ring version `from` to `to`. Both are
//! live from the moment it is recorded, so coordinators that have seen it
//! write to both preference lists and read from both. The mover then:
//!
//! 1. **dual_write**: raises the ring fence of every node of either version
//!    to `to`. From then on a coordinator that still routes by an older ring
//!    is refused (and refreshes), so every write acknowledged after this
//!    point is in a quorum of *both* versions. It plans the copy: the token
//!    ranges whose replicas differ, one checkpoint each, and counts their
//!    keys.
//! 2. **data_copy**: one range per step, reads every old owner of the range
//!    (all of them: a write acknowledged at W = 1 may be on one only) page by
//!    page, and merges each key into its new owners; the range's checkpoint
//!    is then marked done, so a leader that takes over resumes at the next.
//! 3. **cutover**: retires `from` (one fenced metadata write that also sets
//!    the node states). Every acknowledged write is now on a quorum of `to`:
//!    the ones before the fence were copied from every old owner, the ones
//!    after were written to both versions.
//! 4. **cleanup**: nodes drop the ranges they no longer own.
//!
//! A cancel before cutover appends a version with `from`'s nodes, makes it
//! the only live one, and drops what the copy had put on nodes that gained.
//! Every metadata write is fenced by the leader generation; a deposed leader
//! stops at its next write.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cohort_proto::internal::v1::{DropRangeRequest, FenceRequest, MergeRequest, ScanRequest};
use cohort_ring::{MovingRange, Ring, SiblingSet, token_for};
use cohort_transport::{ReplicaFailure, within};
use cohort_worker::{Step, Worker};
use futures::StreamExt;
use tokio::sync::Notify;
use tonic::async_trait;

use super::plan;
use crate::metadata::{
    Checkpoint, MetadataError, Migration, MigrationKind, MigrationPhase, MigrationState, NodeState, RingStep,
};
use crate::server::Coordinator;

/// Why a step did not finish.
enum StepError {
    /// This coordinator no longer leads: stop.
    Fenced(MetadataError),
    /// Something to try again later (a node unreachable, metadata down).
    Retry(String),
}

impl From<MetadataError> for StepError {
    fn from(error: MetadataError) -> Self {
        match error {
            fenced @ MetadataError::Fenced { .. } => StepError::Fenced(fenced),
            other => StepError::Retry(other.to_string()),
        }
    }
}

type StepResult<T = ()> = Result<T, StepError>;

/// How long the mover waits for work when no migration runs; admin changes
/// made through this coordinator wake it at once.
const IDLE_POLL: Duration = Duration::from_secs(5);

/// One copy step ends after this many ranges, keys or this long, whichever
/// comes first; its ranges are checkpointed together. A leader that takes
/// over repeats at most one step.
const STEP_RANGES: usize = 64;
const STEP_KEYS: u64 = 4096;
const STEP_TIME: Duration = Duration::from_secs(2);

/// One old owner's scan of a range: where it stands and what it returned
/// that is not merged yet.
#[derive(Default)]
struct Cursor {
    source: String,
    after: bytes::Bytes,
    buffer: std::collections::VecDeque<cohort_proto::internal::v1::ScanEntry>,
    done: bool,
}

/// Merges of a range copy in flight at once.
const COPY_IN_FLIGHT: usize = 16;

/// What every range copy of one step needs.
struct CopyContext<'a> {
    migration: &'a Migration,
    from: &'a Ring,
    to: &'a Ring,
    replication: &'a [(String, usize)],
    addresses: &'a HashMap<String, String>,
}

/// The leader's membership worker.
pub struct Mover {
    coordinator: Arc<Coordinator>,
    generation: u64,
    wake: Arc<Notify>,
    /// Whether the last step failed (then the next waits `retry`).
    failed: bool,
}

impl Mover {
    /// A mover leading under `generation`, woken by `wake`.
    pub fn new(coordinator: Arc<Coordinator>, generation: u64, wake: Arc<Notify>) -> Self {
        Mover { coordinator, generation, wake, failed: false }
    }

    /// The oldest migration still running.
    async fn running(&self) -> StepResult<Option<Migration>> {
        let all = self.coordinator.metadata.migrations().await?;
        Ok(all.into_iter().rev().find(|m| m.state.is_running()))
    }

    async fn save(&self, migration: &Migration) -> StepResult {
        self.coordinator.metadata.update_migration(self.generation, migration).await?;
        report(migration);
        Ok(())
    }

    /// The ring of `version`.
    async fn ring_at(&self, version: u64) -> StepResult<Ring> {
        let stored = self
            .coordinator
            .metadata
            .ring_at(version)
            .await?
            .ok_or_else(|| StepError::Retry(format!("ring version {version} is not stored")))?;
        Ring::new(stored.nodes).map_err(|e| StepError::Retry(format!("ring version {version} is invalid: {e}")))
    }

    /// Each tenant's id and replication factor.
    async fn replication(&self) -> StepResult<Vec<(String, usize)>> {
        let tenants = self.coordinator.metadata.list_tenants().await?;
        Ok(tenants.into_iter().map(|t| (t.id, usize::from(t.replication.n()))).collect())
    }

    /// The address of every registered node.
    async fn addresses(&self) -> StepResult<HashMap<String, String>> {
        let nodes = self.coordinator.metadata.list_nodes().await?;
        Ok(nodes.into_iter().map(|n| (n.id, n.address)).collect())
    }

    fn skipped(&self, migration: &Migration, node: &str) -> bool {
        migration.kind == MigrationKind::RemoveDead && migration.node_id == node
    }

    /// Raises the fence of every node in `rings` (the dead one excepted) to
    /// `version`. With `best_effort`, unreachable nodes are skipped.
    async fn fence(&self, migration: &Migration, rings: &[&Ring], version: u64, best_effort: bool) -> StepResult {
        self.fence_dropping(migration, rings, version, best_effort, &[]).await
    }

    /// [`Mover::fence`], also telling the nodes that `removed` left the ring
    /// (their hints are dropped).
    async fn fence_dropping(
        &self,
        migration: &Migration,
        rings: &[&Ring],
        version: u64,
        best_effort: bool,
        removed: &[String],
    ) -> StepResult {
        let addresses = self.addresses().await?;
        let mut nodes: Vec<&str> = rings.iter().flat_map(|r| r.nodes().iter().map(|n| n.id.as_str())).collect();
        nodes.sort_unstable();
        nodes.dedup();
        let timeout = self.coordinator.config.node_timeout;
        for node in nodes.into_iter().filter(|n| !self.skipped(migration, n)) {
            let Some(address) = addresses.get(node) else { continue };
            let result = match self.coordinator.peers.node(address) {
                Ok(client) => {
                    let request = FenceRequest { ring_version: version, removed: removed.to_vec() };
                    within(timeout, client.fence(request)).await.map(drop)
                }
                Err(status) => Err(ReplicaFailure::NotSent(status.message().to_string())),
            };
            match result {
                Ok(()) => {}
                Err(failure) if best_effort => {
                    tracing::warn!(%node, %failure, "could not raise the ring fence of an unreachable node; skipped");
                }
                Err(failure) => {
                    return Err(StepError::Retry(format!(
                        "waiting for node {node} to take ring fence {version}: {failure}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// dual_write: fences, then the copy plan.
    async fn start_copy(&self, migration: &mut Migration) -> StepResult {
        self.coordinator.topology.refresh().await?;
        let (from, to) = (self.ring_at(migration.from_version).await?, self.ring_at(migration.to_version).await?);
        self.fence(migration, &[&from, &to], migration.to_version, false).await?;
        let replication = self.replication().await?;
        let moving = plan::moving(&from, &to, &replication);
        let addresses = self.addresses().await?;
        let mut checkpoints = Vec::with_capacity(moving.len());
        let mut keys_total = 0;
        for range in &moving {
            let sources: Vec<String> = range.sources().into_iter().filter(|s| !self.skipped(migration, s)).collect();
            if let Some(source) = sources.first() {
                keys_total += self.count(&addresses, source, range).await?.0;
            }
            checkpoints.push(Checkpoint {
                range_start: range.range.start,
                range_end: range.range.end,
                keys_copied: 0,
                done: false,
            });
        }
        self.coordinator.metadata.save_checkpoints(self.generation, migration.id, &checkpoints).await?;
        migration.ranges_total = checkpoints.len() as u64;
        migration.keys_total = keys_total;
        migration.phase = MigrationPhase::DataCopy;
        tracing::info!(
            migration = migration.id,
            ranges = migration.ranges_total,
            keys = keys_total,
            "every node refuses the old ring; copying"
        );
        self.save(migration).await
    }

    /// Keys and bytes `node` holds in `range`.
    async fn count(
        &self,
        addresses: &HashMap<String, String>,
        node: &str,
        range: &MovingRange,
    ) -> StepResult<(u64, u64)> {
        let request =
            ScanRequest { start: range.range.start, end: range.range.end, count_only: true, ..Default::default() };
        let answer = self.scan(addresses, node, request).await?;
        Ok((answer.keys, answer.bytes))
    }

    async fn scan(
        &self,
        addresses: &HashMap<String, String>,
        node: &str,
        request: ScanRequest,
    ) -> StepResult<cohort_proto::internal::v1::ScanResponse> {
        let address =
            addresses.get(node).ok_or_else(|| StepError::Retry(format!("node {node} has no registered address")))?;
        let client = self.coordinator.peers.node(address).map_err(|s| StepError::Retry(s.message().to_string()))?;
        // A scan page reads many keys: it gets several node timeouts.
        within(self.coordinator.config.node_timeout * 4, client.scan(request))
            .await
            .map_err(|failure| StepError::Retry(format!("scanning node {node}: {failure}")))
    }

    /// data_copy: copies the next ranges not yet done — as many as fit in
    /// one step's budget — and checkpoints them together.
    async fn copy_next(&self, migration: &mut Migration) -> StepResult {
        let checkpoints = self.coordinator.metadata.checkpoints(migration.id).await?;
        let pending: Vec<Checkpoint> = checkpoints.iter().filter(|c| !c.done).cloned().collect();
        if pending.is_empty() {
            migration.phase = MigrationPhase::Cutover;
            return self.save(migration).await;
        }
        let (from, to) = (self.ring_at(migration.from_version).await?, self.ring_at(migration.to_version).await?);
        let replication = self.replication().await?;
        let addresses = self.addresses().await?;
        let context = CopyContext { migration, from: &from, to: &to, replication: &replication, addresses: &addresses };
        let started = Instant::now();
        let mut copied = Vec::new();
        let (mut keys, mut bytes) = (0u64, 0u64);
        for mut range in pending {
            let (range_keys, range_bytes) = self.copy_range(&context, &range).await?;
            range.keys_copied = range_keys;
            range.done = true;
            copied.push(range);
            keys += range_keys;
            bytes += range_bytes;
            if copied.len() >= STEP_RANGES || keys >= STEP_KEYS || started.elapsed() >= STEP_TIME {
                break;
            }
        }
        self.coordinator.metadata.save_checkpoints(self.generation, migration.id, &copied).await?;
        migration.ranges_done = checkpoints.iter().filter(|c| c.done).count() as u64 + copied.len() as u64;
        migration.keys_copied += keys;
        migration.bytes_copied += bytes;
        metrics::counter!("cohort_migration_keys_copied_total").increment(keys);
        metrics::counter!("cohort_migration_bytes_copied_total").increment(bytes);
        metrics::counter!("cohort_migration_ranges_copied_total").increment(copied.len() as u64);
        self.save(migration).await
    }

    /// Copies one range from every old owner into its new owners; returns
    /// the distinct keys copied and the bytes merged. The old owners' scans
    /// advance together, merged by scan position, so a key held by several
    /// of them is merged once (DVV merge of their states) and sent once to
    /// each new owner.
    async fn copy_range(&self, cx: &CopyContext<'_>, range: &Checkpoint) -> StepResult<(u64, u64)> {
        let factor: HashMap<&str, usize> = cx.replication.iter().map(|(t, n)| (t.as_str(), *n)).collect();
        let mut cursors: Vec<Cursor> = Vec::new();
        for n in plan::factors(cx.replication) {
            for node in cx.from.preference_list(range.range_end, n) {
                if !cursors.iter().any(|c| c.source == node.id) && !self.skipped(cx.migration, &node.id) {
                    cursors.push(Cursor { source: node.id.clone(), ..Cursor::default() });
                }
            }
        }
        let page_keys = self.coordinator.config.membership.copy_page_keys;
        let (mut keys, mut bytes) = (0u64, 0u64);
        loop {
            let started = Instant::now();
            for cursor in cursors.iter_mut().filter(|c| c.buffer.is_empty() && !c.done) {
                let request = ScanRequest {
                    start: range.range_start,
                    end: range.range_end,
                    after: cursor.after.clone(),
                    limit: page_keys,
                    count_only: false,
                    tenant: String::new(),
                    acceptors: false,
                };
                let page = self.scan(cx.addresses, &cursor.source, request).await?;
                cursor.buffer.extend(page.entries);
                if page.next.is_empty() {
                    cursor.done = true;
                } else {
                    cursor.after = page.next;
                }
            }
            // Everything up to the smallest last position of a scan that
            // has more to give is complete on every source.
            let frontier =
                cursors.iter().filter(|c| !c.done).filter_map(|c| c.buffer.back()).map(|e| &e.position).min().cloned();
            let mut keys_here: BTreeMap<bytes::Bytes, (String, bytes::Bytes, SiblingSet)> = BTreeMap::new();
            for cursor in &mut cursors {
                while cursor.buffer.front().is_some_and(|e| frontier.as_ref().is_none_or(|f| e.position <= *f)) {
                    let entry = cursor.buffer.pop_front().expect("checked");
                    let Some(&n) = factor.get(entry.tenant.as_str()) else {
                        tracing::warn!(tenant = %entry.tenant, "a stored key's tenant is unknown; not copied");
                        continue;
                    };
                    let token = token_for(&entry.tenant, &entry.key);
                    if !cx.from.preference_list(token, n).iter().any(|s| s.id == cursor.source) {
                        // Not one of its replicas here: left over, not authoritative.
                        continue;
                    }
                    let state = SiblingSet::decode(&entry.state).map_err(|e| {
                        StepError::Retry(format!("node {} holds an unreadable state: {e}", cursor.source))
                    })?;
                    match keys_here.entry(entry.position) {
                        std::collections::btree_map::Entry::Occupied(mut held) => held.get_mut().2.sync(&state),
                        std::collections::btree_map::Entry::Vacant(slot) => {
                            slot.insert((entry.tenant, entry.key, state));
                        }
                    }
                }
            }
            let mut merges = Vec::new();
            let mut page_bytes = 0u64;
            for (tenant, key, state) in keys_here.values() {
                let n = factor[tenant.as_str()];
                let token = token_for(tenant, key);
                let old = cx.from.preference_list(token, n);
                let encoded = bytes::Bytes::from(state.encode());
                for target in cx.to.preference_list(token, n) {
                    if old.iter().any(|o| o.id == target.id) {
                        continue;
                    }
                    page_bytes += encoded.len() as u64;
                    let request = MergeRequest {
                        tenant: tenant.clone(),
                        key: key.clone(),
                        state: encoded.clone(),
                        ring_version: cx.migration.to_version,
                        ..Default::default()
                    };
                    merges.push(self.merge_into(cx.addresses, &target.id, request));
                }
            }
            // A bounded number in flight: the copy shares the new owners'
            // group commits with client writes.
            let mut sent = futures::stream::iter(merges).buffer_unordered(COPY_IN_FLIGHT);
            while let Some(result) = sent.next().await {
                result?;
            }
            keys += keys_here.len() as u64;
            bytes += page_bytes;
            self.throttle(page_bytes, started.elapsed()).await;
            if cursors.iter().all(|c| c.done && c.buffer.is_empty()) {
                let settled = self.settle_registers(cx, range, &cursors).await?;
                metrics::counter!("cohort_migration_registers_settled_total").increment(settled);
                return Ok((keys, bytes));
            }
        }
    }

    /// Settles, on a majority of their new replicas, the linearizable
    /// registers of one range whose replicas change: a register lives only
    /// on the acceptors that took part in its rounds, so copying records
    /// would not do (a minority's record could pass for chosen); each is
    /// read and accepted again by a Paxos round over both rings, which are
    /// both live while the copy runs. Returns how many were settled.
    async fn settle_registers(&self, cx: &CopyContext<'_>, range: &Checkpoint, sources: &[Cursor]) -> StepResult<u64> {
        let factor: HashMap<&str, usize> = cx.replication.iter().map(|(t, n)| (t.as_str(), *n)).collect();
        let page_keys = self.coordinator.config.membership.copy_page_keys;
        let mut registers: BTreeMap<(String, bytes::Bytes), ()> = BTreeMap::new();
        for source in sources {
            let mut after = bytes::Bytes::new();
            loop {
                let request = ScanRequest {
                    start: range.range_start,
                    end: range.range_end,
                    after: after.clone(),
                    limit: page_keys,
                    count_only: false,
                    tenant: String::new(),
                    acceptors: true,
                };
                let page = self.scan(cx.addresses, &source.source, request).await?;
                for entry in page.entries {
                    let Some(&n) = factor.get(entry.tenant.as_str()) else { continue };
                    let token = token_for(&entry.tenant, &entry.key);
                    let old: Vec<String> = cx.from.preference_list(token, n).iter().map(|s| s.id.clone()).collect();
                    let new: Vec<String> = cx.to.preference_list(token, n).iter().map(|s| s.id.clone()).collect();
                    if new.iter().all(|id| old.contains(id)) {
                        continue;
                    }
                    registers.insert((entry.tenant, entry.key), ());
                }
                if page.next.is_empty() {
                    break;
                }
                after = page.next;
            }
        }
        let settled = registers.len() as u64;
        let mut settles = futures::stream::iter(registers.into_keys().map(|(tenant, key)| async move {
            let found = self.coordinator.tenants.get(&tenant).await.map_err(|e| StepError::Retry(e.to_string()))?;
            match self.coordinator.registers.settle(&found, key).await {
                Ok(cohort_paxos::Outcome::Read(_)) => Ok(()),
                Ok(other) => Err(StepError::Retry(format!("settling a register of tenant {tenant}: {other:?}"))),
                Err(error) => Err(StepError::Retry(format!("settling a register of tenant {tenant}: {error}"))),
            }
        }))
        .buffer_unordered(COPY_IN_FLIGHT);
        while let Some(result) = settles.next().await {
            result?;
        }
        Ok(settled)
    }

    /// Sends one merged state to `target`.
    async fn merge_into(&self, addresses: &HashMap<String, String>, target: &str, request: MergeRequest) -> StepResult {
        let address = addresses
            .get(target)
            .ok_or_else(|| StepError::Retry(format!("node {target} has no registered address")))?;
        let client = self.coordinator.peers.node(address).map_err(|s| StepError::Retry(s.message().to_string()))?;
        within(self.coordinator.config.node_timeout, client.merge(request))
            .await
            .map(drop)
            .map_err(|failure| StepError::Retry(format!("copying to node {target}: {failure}")))
    }

    /// Keeps the copy under its byte budget.
    async fn throttle(&self, bytes: u64, took: Duration) {
        let rate = self.coordinator.config.membership.copy_bytes_per_sec;
        if rate == 0 || bytes == 0 {
            return;
        }
        let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(took) {
            tokio::time::sleep(wait).await;
        }
    }

    /// cutover: retires the old version and sets the node states.
    async fn cut_over(&self, migration: &mut Migration) -> StepResult {
        let state = match migration.kind {
            MigrationKind::Join => NodeState::Active,
            MigrationKind::Leave | MigrationKind::RemoveDead => NodeState::Removed,
        };
        migration.phase = MigrationPhase::Cleanup;
        let step = RingStep {
            append: None,
            oldest_live: migration.to_version,
            node_states: vec![(migration.node_id.clone(), state)],
        };
        self.coordinator.metadata.step_ring(self.generation, migration, step).await?;
        report(migration);
        self.coordinator.topology.refresh().await?;
        tracing::info!(
            migration = migration.id,
            ring_version = migration.to_version,
            "cut over: the old ring is retired"
        );
        Ok(())
    }

    /// A cancel before cutover: back to the nodes of `from`, as a new
    /// version that is at once the only live one.
    async fn cancel(&self, migration: &mut Migration) -> StepResult {
        let from = self.coordinator.metadata.ring_at(migration.from_version).await?;
        let nodes = from.map(|v| v.nodes).unwrap_or_default();
        let revert = self.coordinator.metadata.ring_version().await? + 1;
        let state = match migration.kind {
            MigrationKind::Join => NodeState::Removed,
            MigrationKind::Leave | MigrationKind::RemoveDead => NodeState::Active,
        };
        migration.phase = MigrationPhase::Cleanup;
        let step = RingStep {
            append: Some(nodes),
            oldest_live: revert,
            node_states: vec![(migration.node_id.clone(), state)],
        };
        self.coordinator.metadata.step_ring(self.generation, migration, step).await?;
        report(migration);
        self.coordinator.topology.refresh().await?;
        tracing::info!(migration = migration.id, ring_version = revert, "cancelled: the ring is back to its old nodes");
        Ok(())
    }

    /// cleanup: every node drops the ranges it no longer owns.
    async fn clean_up(&self, migration: &mut Migration) -> StepResult {
        // After a cancel (which appended a version past `to`) the copy's
        // targets drop what they got; otherwise — also when the cancel came
        // after the cutover, too late to undo — the old owners drop what
        // moved away.
        let newest = self.coordinator.metadata.ring_version().await?;
        let reverted = newest > migration.to_version;
        let (old, new, newest) = if reverted {
            (self.ring_at(migration.to_version).await?, self.ring_at(newest).await?, newest)
        } else {
            (
                self.ring_at(migration.from_version).await?,
                self.ring_at(migration.to_version).await?,
                migration.to_version,
            )
        };
        // Cleanup relies on the fence raised before the copy; raising it
        // to the newest version again only matters after a cancel, and a
        // node that cannot be reached then is skipped.
        let gone: Vec<String> = match (reverted, migration.kind) {
            (true, MigrationKind::Join) | (false, MigrationKind::Leave | MigrationKind::RemoveDead) => {
                vec![migration.node_id.clone()]
            }
            _ => Vec::new(),
        };
        self.fence_dropping(migration, &[&old, &new], newest, true, &gone).await?;
        let replication = self.replication().await?;
        let addresses = self.addresses().await?;
        let timeout = self.coordinator.config.node_timeout * 4;
        let mut dropped = 0u64;
        for range in plan::moving(&old, &new, &replication) {
            for node in range.sources() {
                let tenants = plan::tenants_lost_by(&range, &node, &replication);
                if tenants.is_empty() || self.skipped(migration, &node) {
                    continue;
                }
                let Some(address) = addresses.get(&node) else { continue };
                let request = DropRangeRequest { start: range.range.start, end: range.range.end, tenants };
                let result = match self.coordinator.peers.node(address) {
                    Ok(client) => within(timeout, client.drop_range(request)).await,
                    Err(status) => Err(ReplicaFailure::NotSent(status.message().to_string())),
                };
                match result {
                    Ok(answer) => dropped += answer.dropped,
                    // A node that left holds nothing the cluster needs.
                    Err(failure) if !new.nodes().iter().any(|n| n.id == node) => {
                        tracing::warn!(%node, %failure, "a node that left could not drop its old ranges");
                    }
                    Err(failure) => return Err(StepError::Retry(format!("node {node} dropping a range: {failure}"))),
                }
            }
        }
        metrics::counter!("cohort_migration_keys_dropped_total").increment(dropped);
        migration.phase = MigrationPhase::Done;
        migration.state = if reverted { MigrationState::Cancelled } else { MigrationState::Completed };
        migration.error = None;
        self.save(migration).await?;
        tracing::info!(migration = migration.id, state = migration.state.as_str(), dropped, "migration ended");
        Ok(())
    }

    async fn step(&self) -> StepResult<bool> {
        let Some(mut migration) = self.running().await? else { return Ok(false) };
        if migration.state == MigrationState::Pending {
            migration.state = MigrationState::InProgress;
            tracing::info!(migration = migration.id, kind = migration.kind.as_str(), node = %migration.node_id, "migration started");
            self.save(&migration).await?;
        }
        // What it last waited on is cleared by the next step that succeeds.
        migration.error = None;
        let result = if migration.cancel_requested && migration.phase < MigrationPhase::Cleanup {
            self.cancel(&mut migration).await
        } else {
            match migration.phase {
                MigrationPhase::DualWrite => self.start_copy(&mut migration).await,
                MigrationPhase::DataCopy => self.copy_next(&mut migration).await,
                MigrationPhase::Cutover => self.cut_over(&mut migration).await,
                MigrationPhase::Cleanup | MigrationPhase::Done => self.clean_up(&mut migration).await,
            }
        };
        if let Err(StepError::Retry(reason)) = &result {
            // Say what it waits on; the step runs again after `retry`.
            migration.error = Some(reason.clone());
            if let Err(StepError::Fenced(fenced)) = self.save(&migration).await {
                return Err(StepError::Fenced(fenced));
            }
        }
        result.map(|()| true)
    }
}

/// Publishes a migration's progress as metrics.
fn report(migration: &Migration) {
    let id = migration.id.to_string();
    metrics::gauge!("cohort_migration_ranges_total", "migration" => id.clone()).set(migration.ranges_total as f64);
    metrics::gauge!("cohort_migration_ranges_done", "migration" => id.clone()).set(migration.ranges_done as f64);
    metrics::gauge!("cohort_migration_keys_total", "migration" => id.clone()).set(migration.keys_total as f64);
    metrics::gauge!("cohort_migration_percent", "migration" => id).set(percent(migration));
}

/// How far a migration's copy has got, 0..=100: keys copied over keys to
/// copy, or ranges when there are no keys.
pub fn percent(migration: &Migration) -> f64 {
    if migration.state == MigrationState::Completed {
        return 100.0;
    }
    if migration.keys_total > 0 {
        return (100.0 * migration.keys_copied as f64 / migration.keys_total as f64).min(100.0);
    }
    if migration.ranges_total > 0 {
        return 100.0 * migration.ranges_done as f64 / migration.ranges_total as f64;
    }
    0.0
}

#[async_trait]
impl Worker for Mover {
    fn name(&self) -> &'static str {
        "membership"
    }

    async fn work(&mut self) -> Result<Step, String> {
        match self.step().await {
            Ok(busy) => {
                self.failed = false;
                Ok(if busy { Step::Busy } else { Step::Idle })
            }
            Err(StepError::Fenced(fenced)) => {
                tracing::warn!(%fenced, "migration step refused: this coordinator no longer leads; mover stopped");
                Ok(Step::Done)
            }
            Err(StepError::Retry(reason)) => {
                self.failed = true;
                Err(reason)
            }
        }
    }

    async fn wait_for_work(&mut self) {
        let wait = if self.failed { self.coordinator.config.membership.retry } else { IDLE_POLL };
        tokio::select! {
            _ = self.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
