//! The public `Admin` gRPC service: tenants, storage nodes and their
//! membership changes, cluster status.
//!
//! Like [`crate::service`], it converts between wire and domain types and
//! turns [`KvError`] into a status once, on the way out.

use std::sync::Arc;
use std::time::Instant;

use cohort_proto::internal::v1 as internal;
use cohort_proto::v1 as pb;
use cohort_proto::v1::admin_server::Admin;
use cohort_ring::{NodeSpec, ReplicationConfig, Ring, ring::MAX_VNODES, valid_node_id};
use cohort_transport::{ReplicaFailure, within};
use tonic::{Request, Response, Status};

use crate::error::KvError;
use crate::membership::{self, Change, PlanError, plan};
use crate::metadata::{
    DEFAULT_MAX_SIBLINGS, MAX_MAX_SIBLINGS, Migration, MigrationKind, MigrationPhase, NodeHealth, NodeRecord,
    NodeState, RingChange, RingHistory, Tenant, TenantSettings,
};
use crate::repair;
use crate::server::Coordinator;
use crate::service::{finish, metadata_error};
use crate::validate;

/// The admin service.
#[derive(Clone)]
pub struct AdminService {
    coordinator: Arc<Coordinator>,
}

impl AdminService {
    /// The service over `coordinator`.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        AdminService { coordinator }
    }
}

fn tenant_to_pb(tenant: &Tenant) -> pb::Tenant {
    pb::Tenant {
        id: tenant.id.clone(),
        replication: tenant.replication.n().into(),
        read_quorum: tenant.replication.r().into(),
        write_quorum: tenant.replication.w().into(),
        version: tenant.version,
        max_siblings: tenant.max_siblings,
        sloppy_quorum: tenant.sloppy_quorum,
    }
}

/// A sibling cap from a request; 0 means `default`.
fn max_siblings_from(requested: u32, default: u32) -> Result<u32, KvError> {
    match requested {
        0 => Ok(default),
        n if n <= MAX_MAX_SIBLINGS => Ok(n),
        n => Err(KvError::InvalidArgument(format!("max_siblings {n} is not 1..={MAX_MAX_SIBLINGS}"))),
    }
}

fn node_to_pb(node: &NodeRecord) -> pb::StorageNode {
    pb::StorageNode {
        id: node.id.clone(),
        address: node.address.clone(),
        zone: node.zone.clone().unwrap_or_default(),
        vnodes: node.vnodes,
        state: node.state.as_str().into(),
        health: None,
    }
}

fn health_to_pb(health: &NodeHealth) -> pb::NodeHealth {
    pb::NodeHealth { up: health.up, checked_at_ms: health.checked_at_ms, generation: health.generation }
}

fn worker_to_pb(status: cohort_worker::WorkerStatus) -> pb::Worker {
    pb::Worker {
        name: status.name,
        state: status.state.into(),
        steps: status.steps,
        errors: status.errors,
        last_error: status.last_error.unwrap_or_default(),
        last_step_at_ms: status.last_step_at_ms,
    }
}

/// Default replication factor of a new tenant.
pub const DEFAULT_REPLICATION: u32 = 3;

/// Builds a validated replication config; zero quorums mean a majority.
fn replication_from(n: u32, r: u32, w: u32) -> Result<ReplicationConfig, KvError> {
    let majority = n / 2 + 1;
    let pick = |q: u32| if q == 0 { majority } else { q };
    ReplicationConfig::new(n, pick(r), pick(w)).map_err(|e| KvError::InvalidArgument(e.to_string()))
}

/// Whether `address` looks like `host:port`.
fn valid_address(address: &str) -> bool {
    match address.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

impl AdminService {
    /// Asks the node at `address` who it is: registering an id at an
    /// address that serves another node would count one disk as two
    /// replicas.
    async fn check_node_identity(&self, id: &str, address: &str) -> Result<(), KvError> {
        let c = &self.coordinator;
        let client = c.peers.node(address).map_err(|s| KvError::InvalidArgument(s.message().to_string()))?;
        let timeout = c.config.node_timeout;
        let info = match within(timeout, client.info()).await {
            Ok(info) => info,
            Err(failure @ (ReplicaFailure::Refused { .. } | ReplicaFailure::NotSent(_) | ReplicaFailure::Lost(_))) => {
                return Err(KvError::FailedPrecondition(format!(
                    "cannot verify node {id:?}: the node at {address} answered {failure}; start it first"
                )));
            }
            Err(ReplicaFailure::TimedOut(_)) => {
                return Err(KvError::FailedPrecondition(format!(
                    "cannot verify node {id:?}: nothing at {address} answered within {} ms; start it first",
                    timeout.as_millis()
                )));
            }
        };
        if info.node_id != id {
            return Err(KvError::FailedPrecondition(format!(
                "the node at {address} is {:?}, not {id:?}; register it under its own id",
                info.node_id
            )));
        }
        Ok(())
    }

    /// Refuses a node that joins a ring holding keys already: data left from
    /// an earlier membership (a removal that never reached it, another
    /// cluster) may predate tombstones its new peers have since reaped, and
    /// the copy would not delete it, so deleted values could come back.
    async fn check_node_empty(&self, id: &str, address: &str) -> Result<(), KvError> {
        let c = &self.coordinator;
        let client = c.peers.node(address).map_err(|s| KvError::InvalidArgument(s.message().to_string()))?;
        let count = internal::ScanRequest { start: 0, end: u64::MAX, count_only: true, ..Default::default() };
        let held = within(c.config.node_timeout * 4, client.scan(count))
            .await
            .map_err(|f| KvError::FailedPrecondition(format!("cannot count the keys node {id:?} holds: {f}")))?;
        if held.keys > 0 {
            return Err(KvError::FailedPrecondition(format!(
                "node {id:?} holds {} keys from before: a joining node must start empty, or values deleted since could come back; stop it, move its data directory away and start it again",
                held.keys
            )));
        }
        Ok(())
    }

    async fn create_tenant(&self, r: pb::CreateTenantRequest) -> Result<pb::Tenant, KvError> {
        validate::tenant_id(&r.id)?;
        let n = if r.replication == 0 { DEFAULT_REPLICATION } else { r.replication };
        let replication = replication_from(n, r.read_quorum, r.write_quorum)?;
        let max_siblings = max_siblings_from(r.max_siblings, DEFAULT_MAX_SIBLINGS)?;
        let settings = TenantSettings { replication, max_siblings, sloppy_quorum: r.sloppy_quorum };
        let tenant = self.coordinator.metadata.create_tenant(&r.id, settings).await.map_err(metadata_error)?;
        tracing::info!(tenant = %tenant.id, n, "tenant created");
        Ok(tenant_to_pb(&tenant))
    }

    async fn update_tenant(&self, r: pb::UpdateTenantRequest) -> Result<pb::Tenant, KvError> {
        validate::tenant_id(&r.id)?;
        let c = &self.coordinator;
        let current = c.metadata.get_tenant(&r.id).await.map_err(metadata_error)?;
        if r.replication == 0
            && r.read_quorum == 0
            && r.write_quorum == 0
            && r.max_siblings == 0
            && r.sloppy_quorum.is_none()
        {
            return Err(KvError::InvalidArgument(
                "nothing to change: give a new read or write quorum, sibling cap or quorum kind".into(),
            ));
        }
        let n = current.replication.n();
        if r.replication != 0 && r.replication != u32::from(n) {
            // Existing keys live on the first N nodes of their preference
            // lists; a larger N would make quorums count replicas that hold
            // nothing yet, and hide acknowledged writes until repaired.
            return Err(KvError::FailedPrecondition(format!(
                "tenant {:?} has replication factor {n}; changing it needs a data migration, which is not supported",
                r.id
            )));
        }
        let keep = |new: u32, old: u8| if new == 0 { u32::from(old) } else { new };
        let (read, write) =
            (keep(r.read_quorum, current.replication.r()), keep(r.write_quorum, current.replication.w()));
        let replication = replication_from(n.into(), read, write)?;
        let max_siblings = max_siblings_from(r.max_siblings, current.max_siblings)?;
        let sloppy_quorum = r.sloppy_quorum.unwrap_or(current.sloppy_quorum);
        let settings = TenantSettings { replication, max_siblings, sloppy_quorum };
        let updated = c.metadata.update_tenant(&r.id, r.expected_version, settings).await.map_err(metadata_error)?;
        c.tenants.invalidate(&r.id);
        Ok(tenant_to_pb(&updated))
    }

    async fn add_node(&self, r: pb::AddNodeRequest) -> Result<pb::NodeChangeResponse, KvError> {
        if !valid_node_id(&r.id) {
            return Err(KvError::InvalidArgument(format!(
                "node id {:?} is invalid: expected 1-64 characters from [A-Za-z0-9_.-]",
                r.id
            )));
        }
        if !valid_address(&r.address) {
            return Err(KvError::InvalidArgument(format!("node address {:?} is not host:port", r.address)));
        }
        let c = &self.coordinator;
        let nodes = c.metadata.list_nodes().await.map_err(metadata_error)?;
        let holds_address = |n: &&NodeRecord| n.address == r.address && n.id != r.id && n.state != NodeState::Removed;
        if let Some(other) = nodes.iter().find(holds_address) {
            return Err(KvError::FailedPrecondition(format!(
                "node {:?} is already registered at {}; one address serves one node",
                other.id, r.address
            )));
        }
        self.check_node_identity(&r.id, &r.address).await?;
        let current = nodes.iter().find(|n| n.id == r.id);
        // What the request leaves out keeps its registered value: an upsert
        // that only moves a node must not re-place its data.
        let vnodes = match (r.vnodes, current) {
            (Some(0), _) => return Err(KvError::InvalidArgument("vnodes must be at least 1".into())),
            (Some(v), _) => v,
            (None, Some(node)) => node.vnodes,
            (None, None) => cohort_ring::ring::DEFAULT_VNODES,
        };
        if vnodes > MAX_VNODES {
            return Err(KvError::InvalidArgument(format!("vnodes {vnodes} exceeds the limit {MAX_VNODES}")));
        }
        let zone = match (r.zone, current) {
            (Some(zone), _) => Some(zone).filter(|z| !z.is_empty()),
            (None, Some(node)) => node.zone.clone(),
            (None, None) => None,
        };
        let history = c.metadata.ring_history().await.map_err(metadata_error)?;
        let newest: Vec<NodeSpec> = history.live.last().map(|v| v.nodes.clone()).unwrap_or_default();
        if let Some(spec) = newest.iter().find(|n| n.id == r.id) {
            // On the ring already: only its address may change here.
            if spec.zone != zone || spec.vnodes != vnodes {
                return Err(KvError::FailedPrecondition(format!(
                    "node {:?} is on the ring with zone {:?} and {} vnodes; changing the placement of a node on the ring is not supported: remove it (`cohort admin node remove`) and add it again",
                    r.id, spec.zone, spec.vnodes
                )));
            }
            let state = current.map_or(NodeState::Active, |n| n.state);
            let node = NodeRecord { id: r.id, address: r.address, zone, vnodes, state };
            if !r.dry_run {
                c.metadata.upsert_node(node.clone()).await.map_err(metadata_error)?;
                c.topology.refresh().await.map_err(metadata_error)?;
                tracing::info!(node = %node.id, address = %node.address, "storage node address updated");
            }
            return Ok(pb::NodeChangeResponse { node: Some(node_to_pb(&node)), migration: None, plan: None });
        }
        let spec = NodeSpec { id: r.id.clone(), zone: zone.clone(), vnodes };
        let bootstrap = newest.is_empty();
        if !bootstrap {
            self.check_node_empty(&r.id, &r.address).await?;
        }
        let state = if bootstrap { NodeState::Active } else { NodeState::Joining };
        let node = NodeRecord { id: r.id, address: r.address, zone, vnodes, state };
        self.change_ring(&history, &newest, Change::Join(spec), node, r.dry_run, bootstrap).await
    }

    async fn remove_node(&self, r: pb::RemoveNodeRequest) -> Result<pb::NodeChangeResponse, KvError> {
        let c = &self.coordinator;
        let nodes = c.metadata.list_nodes().await.map_err(metadata_error)?;
        let Some(current) = nodes.into_iter().find(|n| n.id == r.id) else {
            return Err(KvError::NotFound(format!("node {:?} is not registered", r.id)));
        };
        let history = c.metadata.ring_history().await.map_err(metadata_error)?;
        let newest: Vec<NodeSpec> = history.live.last().map(|v| v.nodes.clone()).unwrap_or_default();
        let node = NodeRecord { state: NodeState::Leaving, ..current };
        let change = Change::Remove { id: r.id, dead: r.dead };
        self.change_ring(&history, &newest, change, node, r.dry_run, false).await
    }

    /// Plans `change` from the newest ring version and, unless `dry_run`,
    /// proposes it: a new ring version and the migration that moves data
    /// to it (none for the first nodes of an empty ring).
    async fn change_ring(
        &self,
        history: &RingHistory,
        newest: &[NodeSpec],
        change: Change,
        node: NodeRecord,
        dry_run: bool,
        bootstrap: bool,
    ) -> Result<pb::NodeChangeResponse, KvError> {
        let c = &self.coordinator;
        let tenants = c.metadata.list_tenants().await.map_err(metadata_error)?;
        let replication: Vec<(String, usize)> =
            tenants.iter().map(|t| (t.id.clone(), usize::from(t.replication.n()))).collect();
        let next = plan::next_nodes(newest, &change, &replication)
            .map_err(|e: PlanError| KvError::FailedPrecondition(e.to_string()))?;
        let old = Ring::new(newest.to_vec()).map_err(|e| KvError::Internal(e.to_string()))?;
        let new = Ring::new(next.clone()).map_err(|e| KvError::Internal(e.to_string()))?;
        let from = history.current();
        let plan = self.plan(&old, &new, &replication, from, dry_run).await;
        if dry_run {
            return Ok(pb::NodeChangeResponse { node: Some(node_to_pb(&node)), migration: None, plan: Some(plan) });
        }
        let kind = match &change {
            Change::Join(_) => MigrationKind::Join,
            Change::Remove { dead: false, .. } => MigrationKind::Leave,
            Change::Remove { dead: true, .. } => MigrationKind::RemoveDead,
        };
        let proposal = RingChange {
            expected_version: from,
            nodes: next,
            records: vec![node.clone()],
            migration: (!bootstrap).then(|| (kind, node.id.clone())),
        };
        let (version, migration) = c.metadata.propose_ring_change(proposal).await.map_err(metadata_error)?;
        c.topology.refresh().await.map_err(metadata_error)?;
        c.membership_wake.notify_one();
        match &migration {
            Some(m) => {
                tracing::info!(migration = m.id, kind = kind.as_str(), node = %node.id, ring_version = version, "membership change started")
            }
            None => tracing::info!(node = %node.id, ring_version = version, "node joined the empty ring"),
        }
        Ok(pb::NodeChangeResponse {
            node: Some(node_to_pb(&node)),
            migration: migration.as_ref().map(migration_to_pb),
            plan: Some(plan),
        })
    }

    /// What a change from `old` to `new` moves, per node; with `count`, the
    /// keys and bytes too, counted on one replica of each moving range.
    async fn plan(&self, old: &Ring, new: &Ring, replication: &[(String, usize)], from: u64, count: bool) -> pb::Plan {
        let moving = plan::moving(old, new, replication);
        let mut counts: Vec<(u64, u64)> = vec![(0, 0); moving.len()];
        if count {
            let placement = self.coordinator.topology.current();
            for (range, slot) in moving.iter().zip(counts.iter_mut()) {
                for source in range.sources() {
                    let Some(address) = placement.address(&source) else { continue };
                    let Ok(client) = self.coordinator.peers.node(address) else { continue };
                    let request = internal::ScanRequest {
                        start: range.range.start,
                        end: range.range.end,
                        count_only: true,
                        ..Default::default()
                    };
                    if let Ok(answer) = within(self.coordinator.config.node_timeout, client.scan(request)).await {
                        *slot = (answer.keys, answer.bytes);
                        break;
                    }
                }
            }
        }
        let mut nodes: Vec<pb::NodePlan> = Vec::new();
        for (id, moves) in plan::moves_by_node(&moving) {
            let sum = |ranges: &[cohort_ring::TokenRange]| {
                ranges.iter().fold((0u64, 0u64), |(k, b), r| {
                    let i = moving.iter().position(|m| m.range == *r).unwrap_or(0);
                    (k + counts.get(i).map_or(0, |c| c.0), b + counts.get(i).map_or(0, |c| c.1))
                })
            };
            let (keys_gained, bytes_gained) = sum(&moves.ranges_gained);
            let (keys_lost, bytes_lost) = sum(&moves.ranges_lost);
            nodes.push(pb::NodePlan {
                id,
                ranges_gained: moves.ranges_gained.len() as u64,
                ranges_lost: moves.ranges_lost.len() as u64,
                share_gained: moves.share_gained(),
                share_lost: moves.share_lost(),
                keys_gained,
                bytes_gained,
                keys_lost,
                bytes_lost,
            });
        }
        pb::Plan { from_version: from, to_version: from + 1, ranges: moving.len() as u64, nodes }
    }
}

/// A migration as the admin API shows it.
pub fn migration_to_pb(m: &Migration) -> pb::Migration {
    pb::Migration {
        id: m.id,
        kind: m.kind.as_str().into(),
        node_id: m.node_id.clone(),
        state: m.state.as_str().into(),
        phase: m.phase.as_str().into(),
        from_version: m.from_version,
        to_version: m.to_version,
        ranges_total: m.ranges_total,
        ranges_done: m.ranges_done,
        keys_total: m.keys_total,
        keys_copied: m.keys_copied,
        bytes_copied: m.bytes_copied,
        percent: membership::percent(m),
        error: m.error.clone().unwrap_or_default(),
        cancel_requested: m.cancel_requested,
        created_at_ms: m.created_at_ms,
        updated_at_ms: m.updated_at_ms,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_tenant(&self, request: Request<pb::CreateTenantRequest>) -> Result<Response<pb::Tenant>, Status> {
        let started = Instant::now();
        finish("create_tenant", started, AdminService::create_tenant(self, request.into_inner()).await)
    }

    async fn get_tenant(&self, request: Request<pb::GetTenantRequest>) -> Result<Response<pb::Tenant>, Status> {
        let started = Instant::now();
        let id = request.into_inner().id;
        let result = match validate::tenant_id(&id) {
            Ok(()) => self.coordinator.metadata.get_tenant(&id).await.map(|t| tenant_to_pb(&t)).map_err(metadata_error),
            Err(e) => Err(e),
        };
        finish("get_tenant", started, result)
    }

    async fn list_tenants(
        &self,
        _request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let started = Instant::now();
        let result = self.coordinator.metadata.list_tenants().await.map_err(metadata_error);
        let result =
            result.map(|tenants| pb::ListTenantsResponse { tenants: tenants.iter().map(tenant_to_pb).collect() });
        finish("list_tenants", started, result)
    }

    async fn update_tenant(&self, request: Request<pb::UpdateTenantRequest>) -> Result<Response<pb::Tenant>, Status> {
        let started = Instant::now();
        finish("update_tenant", started, AdminService::update_tenant(self, request.into_inner()).await)
    }

    async fn add_node(&self, request: Request<pb::AddNodeRequest>) -> Result<Response<pb::NodeChangeResponse>, Status> {
        let started = Instant::now();
        finish("add_node", started, AdminService::add_node(self, request.into_inner()).await)
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::NodeChangeResponse>, Status> {
        let started = Instant::now();
        finish("remove_node", started, AdminService::remove_node(self, request.into_inner()).await)
    }

    async fn list_migrations(
        &self,
        _request: Request<pb::ListMigrationsRequest>,
    ) -> Result<Response<pb::ListMigrationsResponse>, Status> {
        let started = Instant::now();
        let result = self.coordinator.metadata.migrations().await.map_err(metadata_error);
        let result =
            result.map(|all| pb::ListMigrationsResponse { migrations: all.iter().map(migration_to_pb).collect() });
        finish("list_migrations", started, result)
    }

    async fn get_migration(
        &self,
        request: Request<pb::GetMigrationRequest>,
    ) -> Result<Response<pb::Migration>, Status> {
        let started = Instant::now();
        let id = request.into_inner().id;
        let result = self.coordinator.metadata.migration(id).await.map_err(metadata_error);
        finish("get_migration", started, result.map(|m| migration_to_pb(&m)))
    }

    async fn cancel_migration(
        &self,
        request: Request<pb::CancelMigrationRequest>,
    ) -> Result<Response<pb::Migration>, Status> {
        let started = Instant::now();
        let id = request.into_inner().id;
        let c = &self.coordinator;
        let result = async {
            let current = c.metadata.migration(id).await.map_err(metadata_error)?;
            if current.state.is_running() && current.phase >= MigrationPhase::Cleanup {
                return Err(KvError::FailedPrecondition(format!(
                    "migration {id} is past its cutover: the new ring is in force and the migration finishes; undo it with the opposite change once it has ended"
                )));
            }
            c.metadata.request_cancel(id).await.map_err(metadata_error)
        }
        .await;
        if result.is_ok() {
            tracing::info!(migration = id, "migration cancel requested");
            c.membership_wake.notify_one();
        }
        finish("cancel_migration", started, result.map(|m| migration_to_pb(&m)))
    }

    async fn list_nodes(
        &self,
        _request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let started = Instant::now();
        let result = self.coordinator.metadata.list_nodes().await.map_err(metadata_error);
        let result = result.map(|nodes| pb::ListNodesResponse { nodes: nodes.iter().map(node_to_pb).collect() });
        finish("list_nodes", started, result)
    }

    async fn rotate_context_key(
        &self,
        _request: Request<pb::RotateContextKeyRequest>,
    ) -> Result<Response<pb::RotateContextKeyResponse>, Status> {
        let started = Instant::now();
        let c = &self.coordinator;
        let result = async {
            let key = c.metadata.rotate_context_key().await.map_err(metadata_error)?;
            c.contexts.reload().await.map_err(metadata_error)?;
            tracing::info!(key_id = key.id, "context key rotated");
            Ok(pb::RotateContextKeyResponse { key_id: key.id })
        }
        .await;
        finish("rotate_context_key", started, result)
    }

    async fn cluster_status(
        &self,
        _request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let started = Instant::now();
        let c = &self.coordinator;
        let result = async {
            let nodes = c.metadata.list_nodes().await.map_err(metadata_error)?;
            let lease = c.metadata.current_lease().await.map_err(metadata_error)?;
            let health = c.metadata.node_health().await.map_err(metadata_error)?;
            let migrations = c.metadata.migrations().await.map_err(metadata_error)?;
            c.topology.refresh().await.map_err(metadata_error)?;
            let placement = c.topology.current();
            let nodes = nodes.iter().map(|node| pb::StorageNode {
                health: health.iter().find(|h| h.node == node.id).map(health_to_pb),
                ..node_to_pb(node)
            });
            Ok(pb::ClusterStatusResponse {
                // An expired lease names no leader, but keeps its generation.
                leader: lease.map(|l| pb::Leader {
                    id: if l.live { crate::leader::coordinator_of(&l.holder).to_string() } else { String::new() },
                    generation: l.generation,
                }),
                ring_version: placement.ring_version(),
                nodes: nodes.collect(),
                workers: c.workers.list().into_iter().map(worker_to_pb).collect(),
                ring_versions: placement
                    .live
                    .iter()
                    .map(|live| pb::RingVersionStatus {
                        version: live.version,
                        nodes: live
                            .ring
                            .owned_share()
                            .into_iter()
                            .map(|(id, share)| pb::NodeShare { id, share })
                            .collect(),
                    })
                    .collect(),
                migrations: migrations.iter().filter(|m| m.state.is_running()).map(migration_to_pb).collect(),
            })
        }
        .await;
        finish("cluster_status", started, result)
    }

    async fn repair_status(
        &self,
        _request: Request<pb::RepairStatusRequest>,
    ) -> Result<Response<pb::RepairStatusResponse>, Status> {
        let started = Instant::now();
        let c = &self.coordinator;
        let snapshot = c.repair.snapshot();
        // Every range of the current ring, or (while a change moves data)
        // the ranges exchanged so far.
        let universe: Vec<(String, u64, Vec<String>)> = match repair::current_targets(c).await {
            Ok((_, targets)) => targets
                .into_iter()
                .map(|t| (t.tenant, t.range.start, t.replicas.into_iter().map(|r| r.id).collect()))
                .collect(),
            Err(_) => snapshot.ranges.iter().map(|r| (r.tenant.clone(), r.range.start, r.replicas.clone())).collect(),
        };
        let records: std::collections::HashMap<(&str, u64), &repair::RangeRecord> =
            snapshot.ranges.iter().map(|r| ((r.tenant.as_str(), r.range.start), r)).collect();
        let mut nodes: std::collections::BTreeMap<String, pb::RepairNodeStatus> = std::collections::BTreeMap::new();
        for (tenant, start, replicas) in &universe {
            let record = records.get(&(tenant.as_str(), *start));
            for id in replicas {
                let node = nodes.entry(id.clone()).or_insert_with(|| pb::RepairNodeStatus {
                    id: id.clone(),
                    last_exchange_ms: u64::MAX,
                    ..Default::default()
                });
                node.ranges += 1;
                let last = record.map_or(0, |r| r.last_exchange_ms);
                node.last_exchange_ms = node.last_exchange_ms.min(last);
                node.keys_repaired += record.map_or(0, |r| r.keys_repaired);
                if last == 0 || last < snapshot.round_started_ms {
                    node.backlog += 1;
                }
            }
        }
        let response = pb::RepairStatusResponse {
            leader: c.leadership().leader,
            state: snapshot.state.clone(),
            round: snapshot.round,
            round_started_ms: snapshot.round_started_ms,
            round_total: snapshot.round_total,
            round_done: snapshot.round_done,
            nodes: nodes.into_values().collect(),
            ranges: snapshot
                .ranges
                .iter()
                .map(|r| pb::RepairRangeStatus {
                    tenant: r.tenant.clone(),
                    start: r.range.start,
                    end: r.range.end,
                    replicas: r.replicas.clone(),
                    last_exchange_ms: r.last_exchange_ms,
                    exchanges: r.exchanges,
                    last_keys_repaired: r.last_keys_repaired,
                    keys_repaired: r.keys_repaired,
                    differing_segments: r.differing_segments,
                    unreachable: r.unreachable.clone(),
                    tombstones_reaped: r.tombstones_reaped,
                    gc_blocked: r.gc_blocked,
                })
                .collect(),
        };
        finish("repair_status", started, Ok(response))
    }

    async fn repair(&self, request: Request<pb::RepairRequest>) -> Result<Response<pb::RepairResponse>, Status> {
        let started = Instant::now();
        let c = &self.coordinator;
        let r = request.into_inner();
        let result = async {
            if !r.tenant.is_empty() {
                c.metadata.get_tenant(&r.tenant).await.map_err(metadata_error)?;
            }
            let (ring_version, targets) = repair::current_targets(c).await.map_err(KvError::FailedPrecondition)?;
            let in_tenant = |t: &repair::Target| r.tenant.is_empty() || t.tenant == r.tenant;
            let chosen: Vec<repair::Target> = match &r.scope {
                Some(pb::repair_request::Scope::Node(node)) => {
                    if !c.topology.current().nodes().contains(&node.as_str()) {
                        return Err(KvError::NotFound(format!("node {node:?} is not on the ring")));
                    }
                    targets.into_iter().filter(|t| in_tenant(t) && t.replicas.iter().any(|x| &x.id == node)).collect()
                }
                Some(pb::repair_request::Scope::Range(span)) => {
                    if span.start > span.end {
                        return Err(KvError::InvalidArgument(format!(
                            "range start {} is past its end {}",
                            span.start, span.end
                        )));
                    }
                    targets
                        .into_iter()
                        .filter(|t| in_tenant(t) && t.range.start <= span.end && span.start <= t.range.end)
                        .collect()
                }
                None => return Err(KvError::InvalidArgument("name a node or a token range to repair".into())),
            };
            let ranges = chosen.len() as u64;
            let report = repair::run_now(c, ring_version, chosen).await;
            tracing::info!(ranges, keys_repaired = report.keys_repaired, "forced repair done");
            Ok(pb::RepairResponse {
                ranges,
                differing_segments: report.differing_segments,
                keys_compared: report.keys_compared,
                keys_repaired: report.keys_repaired,
                bytes: report.bytes,
                unreachable: report.unreachable,
                tombstones_reaped: report.tombstones_reaped,
            })
        }
        .await;
        finish("repair", started, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_replication() {
        assert!(valid_address("127.0.0.1:7001"));
        assert!(valid_address("node-1.cohort:7001"));
        assert!(!valid_address("127.0.0.1"));
        assert!(!valid_address(":7001"));
        assert!(!valid_address("h:0"));
        let r = replication_from(5, 0, 0).unwrap();
        assert_eq!((r.n(), r.r(), r.w()), (5, 3, 3));
        assert!(replication_from(8, 0, 0).is_err());
        assert!(replication_from(3, 4, 0).is_err());
    }
}
