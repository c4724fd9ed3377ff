//! Sloppy quorums (a tenant's opt-in): with replicas of a key believed
//! down, a write counts the acknowledgement of a fallback node that holds it
//! for one of them — apart from its own data — and hands it off when the
//! replica returns. Strict quorums stay the default.

use std::time::Duration;

use cohort_coordinator::ReadRepairMode;
use cohort_proto::v1 as pb;
use cohort_proto::v1::admin_client::AdminClient;
use cohort_tests::{TestCluster, eventually, node_index, test_config, values_of};

const SLOPPY: &str = "sloppy";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sloppy_write_counts_a_fallback_that_hands_it_off_when_the_replicas_return() {
    let mut cluster = TestCluster::start_with_config(4, test_config(ReadRepairMode::Background)).await;
    let mut admin = AdminClient::connect(cluster.endpoint()).await.expect("admin");
    let create =
        pb::CreateTenantRequest { id: SLOPPY.into(), replication: 3, sloppy_quorum: true, ..Default::default() };
    let tenant = admin.create_tenant(create).await.expect("create").into_inner();
    assert!(tenant.sloppy_quorum);

    let key = "k";
    let coordinator = cluster.coordinator.coordinator.clone();
    let placement = coordinator.topology.current();
    let preferred: Vec<usize> =
        placement.replicas(SLOPPY, key.as_bytes(), 3).replicas.iter().map(|r| node_index(&r.id)).collect();
    let fallback = (0..4).find(|i| !preferred.contains(i)).expect("a fourth node");
    let (up, down) = (preferred[0], [preferred[1], preferred[2]]);
    for index in down {
        cluster.stop_node(index).await;
    }
    // The leader's probe finds them down.
    for index in down {
        eventually(&format!("node {} is suspected", index + 1), Duration::from_secs(15), || {
            let coordinator = coordinator.clone();
            async move { coordinator.liveness.is_suspect(&format!("node-{}", index + 1)) }
        })
        .await;
    }

    let client = cluster.client().await;
    let written = client.put(SLOPPY, key.to_string(), "v".to_string()).await.expect("a sloppy quorum of 2");
    let receipt = written.receipt.expect("receipt");
    assert!(receipt.hint_stored, "{receipt:?}");
    let roles: Vec<(String, i32)> = receipt.replicas.iter().map(|r| (r.node_id.clone(), r.role)).collect();
    assert!(roles.contains(&(format!("node-{}", up + 1), pb::ReplicaRole::Primary as i32)), "{roles:?}");
    assert!(roles.contains(&(format!("node-{}", fallback + 1), pb::ReplicaRole::Fallback as i32)), "{roles:?}");
    // The fallback keeps it apart from its own data.
    assert!(cluster.replica_state_in(fallback, SLOPPY, key).await.is_empty());
    let store = cluster.node_store(fallback).expect("running");
    assert_eq!(store.pending_handoffs(10).expect("handoffs").len(), 1);
    // The leader learns where a handoff waits, and reaps nothing there.
    let token = cohort_ring::token_for(SLOPPY, key.as_bytes());
    let here = cohort_ring::TokenRange { start: token, end: token };
    let held = |expected: bool| {
        let coordinator = coordinator.clone();
        async move { coordinator.repair.holds_handoffs(SLOPPY, here) == expected }
    };
    eventually("the leader knows of the handoff", Duration::from_secs(15), || held(true)).await;

    for index in down {
        cluster.restart_node(index).await.expect("restart");
    }
    let cluster_ref = &cluster;
    for index in down {
        eventually(&format!("node {} holds the write", index + 1), Duration::from_secs(30), || async move {
            values_of(&cluster_ref.replica_state_in(index, SLOPPY, key).await) == ["v"]
        })
        .await;
    }
    eventually("the fallback handed it off", Duration::from_secs(30), || {
        let store = store.clone();
        async move { store.pending_handoffs(10).expect("handoffs").is_empty() }
    })
    .await;
    assert!(cluster.replica_state_in(fallback, SLOPPY, key).await.is_empty(), "nothing left on the fallback");
    eventually("the leader knows the handoff is done", Duration::from_secs(15), || held(false)).await;
    cluster.shutdown().await;
}

/// Strict by default: the same outage fails the write with the counts, and
/// no fallback holds anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_tenant_never_counts_a_fallback() {
    let mut cluster = TestCluster::start_with_config(4, test_config(ReadRepairMode::Background)).await;
    let key = "k";
    let coordinator = cluster.coordinator.coordinator.clone();
    let preferred: Vec<usize> = coordinator
        .topology
        .current()
        .replicas(cohort_tests::TENANT, key.as_bytes(), 3)
        .replicas
        .iter()
        .map(|r| node_index(&r.id))
        .collect();
    for &index in &preferred[1..] {
        cluster.stop_node(index).await;
        eventually(&format!("node {} is suspected", index + 1), Duration::from_secs(15), || {
            let coordinator = coordinator.clone();
            async move { coordinator.liveness.is_suspect(&format!("node-{}", index + 1)) }
        })
        .await;
    }
    let error = cluster.client().await.put(cohort_tests::TENANT, key, "v").await.expect_err("strict: 1 of 2");
    assert!(error.to_string().contains("got 1 of 2 replicas needed"), "{error}");
    let fallback = (0..4).find(|i| !preferred.contains(i)).expect("a fourth node");
    assert!(cluster.node_store(fallback).expect("running").pending_handoffs(10).expect("handoffs").is_empty());
    cluster.shutdown().await;
}
