//! The behaviour every [`MetadataStore`] implementation must show.
//!
//! One suite, run unchanged against each implementation, so that the
//! embedded store used in development behaves like the production one.

use std::time::Duration;

use cohort_ring::{NodeSpec, ReplicationConfig};

use super::{
    Checkpoint, MetadataError, MetadataStore, Migration, MigrationKind, MigrationPhase, MigrationState, NodeHealth,
    NodeProbe, NodeRecord, NodeState, RingChange, RingHistory, RingStep, RingVersion, TenantSettings,
};

/// Lease length used by the contract: long enough never to lapse mid-test.
const LONG: Duration = Duration::from_secs(60);

/// Runs the contract against an empty store; panics on the first violation.
pub async fn run(store: &dyn MetadataStore) {
    let three = ReplicationConfig::majority(3).unwrap();
    let created = store.create_tenant("alpha", TenantSettings::new(three, 100)).await.unwrap();
    assert_eq!((created.version, created.max_siblings), (1, 100));
    assert_eq!(
        store.create_tenant("alpha", TenantSettings::new(three, 100)).await,
        Err(MetadataError::TenantExists("alpha".into()))
    );
    assert_eq!(store.get_tenant("alpha").await.unwrap(), created);
    assert_eq!(store.get_tenant("nope").await, Err(MetadataError::TenantNotFound("nope".into())));

    let five = ReplicationConfig::new(5, 2, 4).unwrap();
    let sloppy = TenantSettings { replication: five, max_siblings: 7, sloppy_quorum: true };
    let updated = store.update_tenant("alpha", 1, sloppy).await.unwrap();
    assert!(updated.sloppy_quorum && store.get_tenant("alpha").await.unwrap().sloppy_quorum);
    assert_eq!((updated.version, updated.replication, updated.max_siblings), (2, five, 7));
    assert_eq!(
        store.update_tenant("alpha", 1, TenantSettings::new(three, 100)).await,
        Err(MetadataError::VersionConflict { id: "alpha".into(), expected: 1, actual: 2 })
    );
    assert_eq!(store.get_tenant("alpha").await.unwrap(), updated, "a failed update changes nothing");
    assert!(matches!(
        store.update_tenant("nope", 1, TenantSettings::new(three, 100)).await,
        Err(MetadataError::TenantNotFound(_))
    ));

    store.create_tenant("beta", TenantSettings::new(three, 100)).await.unwrap();
    let ids: Vec<_> = store.list_tenants().await.unwrap().into_iter().map(|t| t.id).collect();
    assert_eq!(ids, ["alpha", "beta"]);

    // Node records: an upsert moves the topology stamp when it changes the
    // record, never a ring version (those change only by proposals).
    assert_eq!(store.ring_version().await.unwrap(), 0, "no ring version before the first proposal");
    let s0 = store.topology_stamp().await.unwrap();
    let node = NodeRecord {
        id: "n2".into(),
        address: "127.0.0.1:1".into(),
        zone: None,
        vnodes: 150,
        state: NodeState::Active,
    };
    store.upsert_node(node.clone()).await.unwrap();
    let s1 = store.topology_stamp().await.unwrap();
    assert!(s1 > s0, "adding a node bumps the topology stamp");
    store.upsert_node(node.clone()).await.unwrap();
    assert_eq!(store.topology_stamp().await.unwrap(), s1, "an identical upsert is not a change");
    store.upsert_node(NodeRecord { address: "127.0.0.1:2".into(), ..node.clone() }).await.unwrap();
    assert!(store.topology_stamp().await.unwrap() > s1, "a moved node bumps the topology stamp");
    store.upsert_node(NodeRecord { id: "n1".into(), ..node }).await.unwrap();
    let nodes: Vec<_> = store.list_nodes().await.unwrap().into_iter().map(|n| (n.id, n.address)).collect();
    assert_eq!(nodes, [("n1".into(), "127.0.0.1:1".into()), ("n2".into(), "127.0.0.1:2".into())]);
    assert_eq!(store.ring_version().await.unwrap(), 0, "upserts change no ring version");
    assert_eq!(store.ring_history().await.unwrap(), RingHistory::default());

    leases(store).await;
    fenced_writes(store).await;
    ring_changes(store).await;
    context_keys(store).await;
}

/// A ring version's node as the contract builds them.
fn spec(id: &str) -> NodeSpec {
    NodeSpec { id: id.into(), zone: None, vnodes: 150 }
}

/// The live versions as (version, node ids).
fn live(history: &RingHistory) -> Vec<(u64, Vec<String>)> {
    history.live.iter().map(|v| (v.version, v.nodes.iter().map(|n| n.id.clone()).collect())).collect()
}

/// Everything a refused ring change must leave as it was.
async fn ring_snapshot(store: &dyn MetadataStore) -> (RingHistory, u64, u64, Vec<NodeRecord>, Vec<Migration>) {
    (
        store.ring_history().await.unwrap(),
        store.ring_version().await.unwrap(),
        store.topology_stamp().await.unwrap(),
        store.list_nodes().await.unwrap(),
        store.migrations().await.unwrap(),
    )
}

/// Ring versions and membership migrations: optimistic proposals, one
/// migration at a time, fenced leader steps. Expects nodes `n1` and `n2`, no
/// ring version yet and a live lease, as [`fenced_writes`] leaves them.
async fn ring_changes(store: &dyn MetadataStore) {
    let lease = store.current_lease().await.unwrap().expect("held");
    assert!(lease.live);
    let generation = lease.generation;
    assert!(store.migrations().await.unwrap().is_empty(), "no migration yet");
    assert_eq!(store.migration(1).await, Err(MetadataError::MigrationNotFound(1)));

    // Bootstrap: the first nodes of an empty ring need no migration; the new
    // version is at once the only live one. Nodes are stored ordered by id.
    let s0 = store.topology_stamp().await.unwrap();
    let first =
        RingChange { expected_version: 0, nodes: vec![spec("n2"), spec("n1")], records: vec![], migration: None };
    assert_eq!(store.propose_ring_change(first.clone()).await.unwrap(), (1, None));
    assert_eq!(store.ring_version().await.unwrap(), 1);
    let v1 = RingVersion { version: 1, nodes: vec![spec("n1"), spec("n2")] };
    assert_eq!(store.ring_history().await.unwrap(), RingHistory { live: vec![v1.clone()] });
    assert!(store.topology_stamp().await.unwrap() > s0, "a new ring version moves the topology stamp");
    assert!(store.migrations().await.unwrap().is_empty(), "a bootstrap records no migration");

    // A proposal planned from a stale version is refused and changes nothing.
    let before = ring_snapshot(store).await;
    let ghost = NodeRecord {
        id: "ghost".into(),
        address: "127.0.0.1:9".into(),
        zone: None,
        vnodes: 150,
        state: NodeState::Joining,
    };
    let stale = RingChange { records: vec![ghost.clone()], ..first.clone() };
    assert_eq!(store.propose_ring_change(stale).await, Err(MetadataError::RingConflict { expected: 0, current: 1 }));
    let ahead = RingChange { expected_version: 5, records: vec![ghost], ..first.clone() };
    assert_eq!(store.propose_ring_change(ahead).await, Err(MetadataError::RingConflict { expected: 5, current: 1 }));
    assert_eq!(ring_snapshot(store).await, before, "a refused proposal changes nothing");

    // A join: the new version and the joining node's record, written with a
    // pending migration; both versions are live while it runs.
    let n3 = NodeRecord {
        id: "n3".into(),
        address: "127.0.0.1:3".into(),
        zone: None,
        vnodes: 150,
        state: NodeState::Joining,
    };
    let join = RingChange {
        expected_version: 1,
        nodes: vec![spec("n1"), spec("n2"), spec("n3")],
        records: vec![n3.clone()],
        migration: Some((MigrationKind::Join, "n3".into())),
    };
    let s1 = store.topology_stamp().await.unwrap();
    let (v2, joining) = store.propose_ring_change(join).await.unwrap();
    assert_eq!(v2, 2);
    let joining = joining.expect("a migration is recorded");
    let expected = Migration {
        id: 1,
        kind: MigrationKind::Join,
        node_id: "n3".into(),
        state: MigrationState::Pending,
        phase: MigrationPhase::DualWrite,
        from_version: 1,
        to_version: 2,
        ranges_total: 0,
        ranges_done: 0,
        keys_total: 0,
        keys_copied: 0,
        bytes_copied: 0,
        error: None,
        cancel_requested: false,
        created_at_ms: joining.created_at_ms,
        updated_at_ms: joining.updated_at_ms,
    };
    assert_eq!(joining, expected);
    assert!(joining.created_at_ms > 0 && joining.updated_at_ms >= joining.created_at_ms, "{joining:?}");
    assert_eq!(store.migration(1).await.unwrap(), joining);
    assert_eq!(store.migrations().await.unwrap(), std::slice::from_ref(&joining));
    assert_eq!(
        live(&store.ring_history().await.unwrap()),
        [(1, vec!["n1".into(), "n2".into()]), (2, vec!["n1".into(), "n2".into(), "n3".into()])],
        "both versions are live while the migration runs"
    );
    assert_eq!(store.ring_version().await.unwrap(), 2);
    assert!(store.topology_stamp().await.unwrap() > s1);
    assert!(store.list_nodes().await.unwrap().contains(&n3), "the joining node's record is written with it");

    // One migration at a time: any proposal is refused while it runs, also
    // one planned from a stale version, naming the running one.
    let before = ring_snapshot(store).await;
    let running = Err(MetadataError::MigrationRunning { id: 1, kind: "join", node: "n3".into(), state: "pending" });
    let leave = RingChange {
        expected_version: 2,
        nodes: vec![spec("n2"), spec("n3")],
        records: vec![],
        migration: Some((MigrationKind::Leave, "n1".into())),
    };
    assert_eq!(store.propose_ring_change(leave.clone()).await, running);
    assert_eq!(store.propose_ring_change(RingChange { migration: None, ..leave.clone() }).await, running);
    assert_eq!(store.propose_ring_change(RingChange { expected_version: 1, ..leave.clone() }).await, running);
    assert_eq!(ring_snapshot(store).await, before, "a refused proposal changes nothing");

    // The leader's progress: applied under the live generation, fenced
    // under any other.
    let progress = Migration {
        state: MigrationState::InProgress,
        phase: MigrationPhase::DataCopy,
        ranges_total: 4,
        ranges_done: 1,
        keys_total: 10,
        keys_copied: 3,
        bytes_copied: 300,
        error: Some("retrying n2".into()),
        ..joining.clone()
    };
    for wrong in [generation - 1, generation + 1] {
        assert_eq!(
            store.update_migration(wrong, &progress).await,
            Err(MetadataError::Fenced { generation: wrong, current: generation })
        );
    }
    assert_eq!(store.migration(1).await.unwrap(), joining, "a fenced write changes nothing");
    store.update_migration(generation, &progress).await.unwrap();
    let stored = store.migration(1).await.unwrap();
    assert_eq!(stored, Migration { updated_at_ms: stored.updated_at_ms, ..progress.clone() });
    assert!(stored.updated_at_ms >= joining.updated_at_ms);
    let unknown = Migration { id: 999, ..progress.clone() };
    assert_eq!(store.update_migration(generation, &unknown).await, Err(MetadataError::MigrationNotFound(999)));

    // Checkpoints: fenced, replaced by range start, listed by range start
    // (tokens are full u64s).
    assert_eq!(store.checkpoints(1).await.unwrap(), []);
    let high = Checkpoint { range_start: (1 << 63) + 5, range_end: u64::MAX, keys_copied: 2, done: false };
    let low = Checkpoint { range_start: 0, range_end: 99, keys_copied: 1, done: true };
    assert_eq!(
        store.save_checkpoints(generation + 1, 1, &[high.clone(), low.clone()]).await,
        Err(MetadataError::Fenced { generation: generation + 1, current: generation })
    );
    assert_eq!(store.checkpoints(1).await.unwrap(), [], "a fenced write changes nothing");
    store.save_checkpoints(generation, 1, &[high.clone(), low.clone()]).await.unwrap();
    assert_eq!(store.checkpoints(1).await.unwrap(), [low.clone(), high.clone()]);
    let high_done = Checkpoint { keys_copied: 7, done: true, ..high };
    store.save_checkpoints(generation, 1, std::slice::from_ref(&high_done)).await.unwrap();
    assert_eq!(store.checkpoints(1).await.unwrap(), [low.clone(), high_done.clone()], "replaced by range start");
    assert_eq!(
        store.save_checkpoints(generation, 999, std::slice::from_ref(&low)).await,
        Err(MetadataError::MigrationNotFound(999))
    );
    assert_eq!(store.checkpoints(999).await.unwrap(), []);

    // A cancel request: anyone may ask while it runs, and the leader's next
    // write (which did not see it) does not clear it.
    let cancelling = store.request_cancel(1).await.unwrap();
    assert!(cancelling.cancel_requested);
    assert_eq!(cancelling, Migration { cancel_requested: true, updated_at_ms: cancelling.updated_at_ms, ..stored });
    store.update_migration(generation, &Migration { keys_copied: 5, ..progress.clone() }).await.unwrap();
    let stored = store.migration(1).await.unwrap();
    assert!(stored.cancel_requested, "a leader's write keeps the cancel request");
    assert_eq!(stored.keys_copied, 5);

    // The leader's ring step: fenced, and refused for an oldest live version
    // outside the live range; neither changes anything.
    let completed =
        Migration { state: MigrationState::Completed, phase: MigrationPhase::Done, ranges_done: 4, ..progress };
    let retire = RingStep {
        append: None,
        oldest_live: 2,
        node_states: vec![("n3".into(), NodeState::Active), ("nobody".into(), NodeState::Active)],
    };
    let before = ring_snapshot(store).await;
    assert_eq!(
        store.step_ring(generation + 1, &completed, retire.clone()).await,
        Err(MetadataError::Fenced { generation: generation + 1, current: generation })
    );
    for oldest_live in [0, 3] {
        let out_of_range = RingStep { oldest_live, ..retire.clone() };
        assert!(
            matches!(store.step_ring(generation, &completed, out_of_range).await, Err(MetadataError::Unavailable(_))),
            "oldest live {oldest_live} is outside 1..=2"
        );
    }
    assert_eq!(ring_snapshot(store).await, before, "a refused step changes nothing");
    assert!(store.migration(1).await.unwrap().state.is_running());

    // Retiring the old version: one live version left, node states and the
    // migration written with it.
    store.step_ring(generation, &completed, retire).await.unwrap();
    assert_eq!(live(&store.ring_history().await.unwrap()), [(2, vec!["n1".into(), "n2".into(), "n3".into()])]);
    assert_eq!(store.ring_version().await.unwrap(), 2);
    assert!(store.topology_stamp().await.unwrap() > before.2, "a ring step moves the topology stamp");
    let states: Vec<_> = store.list_nodes().await.unwrap().into_iter().map(|n| (n.id, n.state)).collect();
    assert_eq!(
        states,
        [("n1".into(), NodeState::Active), ("n2".into(), NodeState::Active), ("n3".into(), NodeState::Active)],
        "node states set, unknown nodes ignored"
    );
    assert_eq!(store.ring_at(1).await.unwrap(), Some(v1.clone()), "a retired version can still be read");
    assert_eq!(store.ring_at(2).await.unwrap().map(|v| v.nodes.len()), Some(3));
    assert_eq!(store.ring_at(0).await.unwrap(), None);
    assert_eq!(store.ring_at(99).await.unwrap(), None);
    let done = store.migration(1).await.unwrap();
    assert_eq!(
        (done.state, done.phase, done.ranges_done, done.cancel_requested),
        (completed.state, completed.phase, 4, true)
    );

    // An ended migration cannot be cancelled; an unknown one is not found.
    assert_eq!(store.request_cancel(1).await, Err(MetadataError::MigrationEnded { id: 1, state: "completed" }));
    assert_eq!(store.request_cancel(999).await, Err(MetadataError::MigrationNotFound(999)));
    assert_eq!(store.migration(999).await, Err(MetadataError::MigrationNotFound(999)));

    // A cancelled leave: the leader appends the version it started from and
    // makes it the only live one.
    let (v3, leaving) = store.propose_ring_change(leave).await.unwrap();
    let leaving = leaving.expect("a migration is recorded");
    assert_eq!((v3, leaving.id, leaving.from_version, leaving.to_version), (3, 2, 2, 3));
    let ids: Vec<u64> = store.migrations().await.unwrap().iter().map(|m| m.id).collect();
    assert_eq!(ids, [2, 1], "newest first");
    store.request_cancel(2).await.unwrap();
    let v2_nodes = vec![spec("n1"), spec("n2"), spec("n3")];
    let back = RingStep { append: Some(v2_nodes.clone()), oldest_live: 4, node_states: vec![] };
    let cancelled = Migration { state: MigrationState::Cancelled, phase: MigrationPhase::Done, ..leaving };
    store.step_ring(generation, &cancelled, back).await.unwrap();
    assert_eq!(
        store.ring_history().await.unwrap(),
        RingHistory { live: vec![RingVersion { version: 4, nodes: v2_nodes }] }
    );
    assert_eq!(store.ring_version().await.unwrap(), 4);
    assert_eq!(store.request_cancel(2).await, Err(MetadataError::MigrationEnded { id: 2, state: "cancelled" }));

    // Two proposals planned from the same version race: exactly one applies,
    // the other is refused as planned from a stale version (or, when the
    // winner recorded a migration, as one arriving while it runs).
    let join4 = RingChange {
        expected_version: 4,
        nodes: vec![spec("n1"), spec("n2"), spec("n3"), spec("n4")],
        records: vec![],
        migration: Some((MigrationKind::Join, "n4".into())),
    };
    let shrink =
        RingChange { expected_version: 4, nodes: vec![spec("n1"), spec("n2")], records: vec![], migration: None };
    // Concurrent reads first, so that a pooled store has a connection ready
    // for each proposal and they really overlap.
    let (x, y) = tokio::join!(store.ring_history(), store.ring_history());
    assert_eq!(x.unwrap(), y.unwrap());
    let (a, b) = tokio::join!(store.propose_ring_change(join4.clone()), store.propose_ring_change(shrink.clone()));
    let refused = |result: &Result<(u64, Option<Migration>), MetadataError>| {
        matches!(
            result,
            Err(MetadataError::RingConflict { expected: 4, current: 5 }) | Err(MetadataError::MigrationRunning { .. })
        )
    };
    let winner = match (&a, &b) {
        (Ok((5, Some(_))), other) if refused(other) => join4,
        (other, Ok((5, None))) if refused(other) => shrink,
        _ => panic!("exactly one racing proposal applies: {a:?}, {b:?}"),
    };
    assert_eq!(store.ring_version().await.unwrap(), 5);
    let history = store.ring_history().await.unwrap();
    assert_eq!(history.live.last(), Some(&RingVersion { version: 5, nodes: winner.nodes.clone() }));
    assert_eq!(history.live.len(), if winner.migration.is_some() { 2 } else { 1 });
}

/// Context keys: one is made on first use, the same for every caller;
/// rotation adds a newer one and keeps the old.
async fn context_keys(store: &dyn MetadataStore) {
    let first = store.context_keys().await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].id, 1);
    assert_eq!(store.context_keys().await.unwrap(), first, "asking again creates nothing");
    let rotated = store.rotate_context_key().await.unwrap();
    assert_eq!(rotated.id, 2);
    assert_ne!(rotated.secret, first[0].secret);
    assert_eq!(store.context_keys().await.unwrap(), vec![first[0].clone(), rotated]);
}

/// The leader lease: one holder at a time, a generation that increases on
/// every change of hands, and renewals that keep it.
async fn leases(store: &dyn MetadataStore) {
    assert_eq!(store.current_lease().await.unwrap(), None, "nobody held the lease yet");
    let first = store.acquire_lease("c1", LONG).await.unwrap().expect("a free lease is taken");
    assert_eq!(store.acquire_lease("c2", LONG).await.unwrap(), None, "a live lease is not taken over");
    assert_eq!(store.acquire_lease("c1", LONG).await.unwrap(), Some(first), "a renewal keeps the generation");
    let lease = store.current_lease().await.unwrap().expect("held");
    assert_eq!((lease.holder.as_str(), lease.generation, lease.live), ("c1", first, true));

    store.release_lease("c2").await.unwrap();
    assert_eq!(store.acquire_lease("c2", LONG).await.unwrap(), None, "only the holder can release");
    store.release_lease("c1").await.unwrap();
    assert!(!store.current_lease().await.unwrap().expect("record kept").live);
    let second = store.acquire_lease("c2", LONG).await.unwrap().expect("a released lease is taken");
    assert!(second > first, "a new holder gets a new generation ({second} > {first})");

    // An expired lease is taken over, and its old holder cannot renew it.
    let short = store.acquire_lease("c2", Duration::from_millis(1)).await.unwrap();
    assert_eq!(short, Some(second));
    let expired = wait_until_expired(store).await;
    assert!(!expired.live);
    let third = store.acquire_lease("c3", LONG).await.unwrap().expect("an expired lease is taken");
    assert!(third > second);
    assert_eq!(store.acquire_lease("c2", LONG).await.unwrap(), None, "the old holder lost it");
}

/// Leader-only writes (node health): they apply under the current live
/// generation, and under any other generation, or once the lease lapsed,
/// they are refused and change nothing. Expects a live lease and nodes `n1`
/// and `n2`, as [`run`] leaves them.
async fn fenced_writes(store: &dyn MetadataStore) {
    let lease = store.current_lease().await.unwrap().expect("held");
    assert!(lease.live);
    let current = lease.generation;
    let probe = |node: &str, up| NodeProbe { node: node.into(), up };
    let summary = |health: &[NodeHealth]| -> Vec<(String, bool, u64)> {
        health.iter().map(|h| (h.node.clone(), h.up, h.generation)).collect()
    };
    assert_eq!(store.node_health().await.unwrap(), [], "no health recorded yet");

    store.record_node_health(current, &[probe("n2", false), probe("n1", true), probe("ghost", true)]).await.unwrap();
    let recorded = store.node_health().await.unwrap();
    assert_eq!(
        summary(&recorded),
        [("n1".into(), true, current), ("n2".into(), false, current)],
        "the current generation writes; unregistered nodes are ignored"
    );
    assert!(recorded.iter().all(|h| h.checked_at_ms > 0), "{recorded:?}");

    let stale = [probe("n1", false), probe("n2", true)];
    assert_eq!(
        store.record_node_health(current - 1, &stale).await,
        Err(MetadataError::Fenced { generation: current - 1, current }),
        "an older generation is fenced off"
    );
    assert_eq!(
        store.record_node_health(current + 1, &stale).await,
        Err(MetadataError::Fenced { generation: current + 1, current }),
        "so is a generation the lease never had"
    );
    assert_eq!(store.node_health().await.unwrap(), recorded, "a fenced write changes nothing");

    let holder = lease.holder;
    store.release_lease(&holder).await.unwrap();
    assert_eq!(
        store.record_node_health(current, &stale).await,
        Err(MetadataError::Fenced { generation: current, current }),
        "a lapsed lease fences its own generation"
    );
    assert_eq!(store.node_health().await.unwrap(), recorded, "a fenced write changes nothing");

    let next = store.acquire_lease("c1", LONG).await.unwrap().expect("a released lease is taken");
    assert!(next > current);
    store.record_node_health(next, &[probe("n1", false)]).await.unwrap();
    assert_eq!(
        summary(&store.node_health().await.unwrap()),
        [("n1".into(), false, next), ("n2".into(), false, current)],
        "the new leader's write replaces only what it probed"
    );
    assert!(matches!(
        store.record_node_health(current, &stale).await,
        Err(MetadataError::Fenced { current: c, .. }) if c == next
    ));
}

/// Polls until the stored lease has expired (it was taken for 1 ms).
async fn wait_until_expired(store: &dyn MetadataStore) -> super::Lease {
    let mut poll = tokio::time::interval(Duration::from_millis(5));
    for _ in 0..400 {
        poll.tick().await;
        let lease = store.current_lease().await.unwrap().expect("held");
        if !lease.live {
            return lease;
        }
    }
    panic!("a 1 ms lease did not expire within 2 s");
}
