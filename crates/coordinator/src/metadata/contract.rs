//! The behaviour every [`MetadataStore`] implementation must show.
//!
//! One suite, run unchanged against each implementation, so that the
//! embedded store used in development behaves like the production one.

use std::time::Duration;

use cohort_ring::ReplicationConfig;

use super::{MetadataError, MetadataStore, NodeHealth, NodeProbe, NodeRecord, NodeState};

/// Lease length used by the contract: long enough never to lapse mid-test.
const LONG: Duration = Duration::from_secs(60);

/// Runs the contract against an empty store; panics on the first violation.
pub async fn run(store: &dyn MetadataStore) {
    let three = ReplicationConfig::majority(3).unwrap();
    let created = store.create_tenant("alpha", three, 100).await.unwrap();
    assert_eq!((created.version, created.max_siblings), (1, 100));
    assert_eq!(store.create_tenant("alpha", three, 100).await, Err(MetadataError::TenantExists("alpha".into())));
    assert_eq!(store.get_tenant("alpha").await.unwrap(), created);
    assert_eq!(store.get_tenant("nope").await, Err(MetadataError::TenantNotFound("nope".into())));

    let five = ReplicationConfig::new(5, 2, 4).unwrap();
    let updated = store.update_tenant("alpha", 1, five, 7).await.unwrap();
    assert_eq!((updated.version, updated.replication, updated.max_siblings), (2, five, 7));
    assert_eq!(
        store.update_tenant("alpha", 1, three, 100).await,
        Err(MetadataError::VersionConflict { id: "alpha".into(), expected: 1, actual: 2 })
    );
    assert_eq!(store.get_tenant("alpha").await.unwrap(), updated, "a failed update changes nothing");
    assert!(matches!(store.update_tenant("nope", 1, three, 100).await, Err(MetadataError::TenantNotFound(_))));

    store.create_tenant("beta", three, 100).await.unwrap();
    let ids: Vec<_> = store.list_tenants().await.unwrap().into_iter().map(|t| t.id).collect();
    assert_eq!(ids, ["alpha", "beta"]);

    let v0 = store.ring_version().await.unwrap();
    let node = NodeRecord {
        id: "n2".into(),
        address: "127.0.0.1:1".into(),
        zone: None,
        vnodes: 150,
        state: NodeState::Active,
    };
    store.upsert_node(node.clone()).await.unwrap();
    let v1 = store.ring_version().await.unwrap();
    assert!(v1 > v0, "adding a node bumps the ring version");
    store.upsert_node(node.clone()).await.unwrap();
    assert_eq!(store.ring_version().await.unwrap(), v1, "an identical upsert is not a change");
    store.upsert_node(NodeRecord { address: "127.0.0.1:2".into(), ..node.clone() }).await.unwrap();
    assert!(store.ring_version().await.unwrap() > v1, "a moved node bumps the ring version");
    store.upsert_node(NodeRecord { id: "n1".into(), ..node }).await.unwrap();
    let nodes: Vec<_> = store.list_nodes().await.unwrap().into_iter().map(|n| (n.id, n.address)).collect();
    assert_eq!(nodes, [("n1".into(), "127.0.0.1:1".into()), ("n2".into(), "127.0.0.1:2".into())]);

    leases(store).await;
    fenced_writes(store).await;
    context_keys(store).await;
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
