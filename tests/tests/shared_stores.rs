//! Several coordinators serving one cluster through PostgreSQL metadata and
//! Redis idempotency records (the production shape): writes through one are
//! read through another, tenant changes reach every coordinator, an
//! idempotent retry through another coordinator applies once (invariant 5),
//! and leadership fails over when the leader dies.
//!
//! These tests need the PostgreSQL and Redis of the machine (see
//! `COHORT_TEST_POSTGRES_URL`, `COHORT_TEST_REDIS_URL`) and fail loudly
//! without them.

use std::time::{Duration, Instant};

use cohort_client::WriteOptions;
use cohort_coordinator::ReadRepairMode;
use cohort_proto::v1 as pb;
use cohort_proto::v1::admin_client::AdminClient;
use cohort_tests::{TENANT, TestCluster, client_for, eventually, strings, test_config};

fn shared_config() -> cohort_coordinator::CoordinatorConfig {
    let mut config = test_config(ReadRepairMode::Background);
    config.leader.lease = std::time::Duration::from_secs(1);
    config.leader.node_probe = std::time::Duration::from_millis(200);
    config.metadata.tenant_cache_ttl = std::time::Duration::from_secs(2);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_one_coordinator_read_through_another() {
    let (cluster, stores) = TestCluster::start_shared(shared_config()).await;
    let second = cluster.add_coordinator().await.expect("second coordinator");
    let (a, b) = (cluster.client().await, client_for(&second.endpoint()).await);
    for i in 0..10 {
        a.put(TENANT, format!("k{i}"), format!("v{i}")).await.expect("write through coordinator 1");
    }
    for i in 0..10 {
        let read = b.get(TENANT, format!("k{i}")).await.expect("read through coordinator 2");
        assert_eq!(strings(&read.siblings), [format!("v{i}")]);
    }
    second.stop().await;
    cluster.shutdown().await;
    stores.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_change_reaches_the_other_coordinator_within_the_bound() {
    let (cluster, stores) = TestCluster::start_shared(shared_config()).await;
    let second = cluster.add_coordinator().await.expect("second coordinator");
    let b = client_for(&second.endpoint()).await;
    // Warm the second coordinator's cache with the old settings (W = 2).
    let receipt = b.put(TENANT, "k", "v").await.expect("write").receipt.expect("receipt");
    assert_eq!(receipt.required, 2);

    let mut admin = AdminClient::connect(cluster.endpoint()).await.expect("admin");
    let tenant = admin.get_tenant(pb::GetTenantRequest { id: TENANT.into() }).await.expect("get").into_inner();
    let changed = Instant::now();
    let update = pb::UpdateTenantRequest {
        id: TENANT.into(),
        expected_version: tenant.version,
        write_quorum: 3,
        ..Default::default()
    };
    admin.update_tenant(update).await.expect("update through coordinator 1");
    // The documented bound is the tenant cache TTL; change notices usually
    // make it much faster.
    let bound = shared_config().metadata.tenant_cache_ttl + Duration::from_secs(1);
    eventually("coordinator 2 uses W = 3", bound, || async {
        b.put(TENANT, "k", "v").await.ok().and_then(|w| w.receipt).is_some_and(|r| r.required == 3)
    })
    .await;
    println!("tenant change visible through the other coordinator after {:?}", changed.elapsed());
    second.stop().await;
    cluster.shutdown().await;
    stores.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_across_coordinators_apply_once() {
    let (cluster, stores) = TestCluster::start_shared(shared_config()).await;
    let second = cluster.add_coordinator().await.expect("second coordinator");
    let (a, b) = (cluster.client().await, client_for(&second.endpoint()).await);
    let with_key = |key: &str| WriteOptions { idempotency_key: Some(key.into()), ..Default::default() };

    let first = a.put_with(TENANT, "order", "paid", with_key("req-1")).await.expect("first attempt");
    let retry = b.put_with(TENANT, "order", "paid", with_key("req-1")).await.expect("retry elsewhere");
    assert!(!first.duplicate && retry.duplicate);
    assert_eq!(retry.context, first.context, "the stored answer is returned");
    let error = b.put_with(TENANT, "order", "refunded", with_key("req-1")).await.expect_err("other body");
    assert_eq!(error.code(), Some(tonic::Code::FailedPrecondition), "{error}");

    // Racing duplicates on both coordinators execute once.
    let attempts = (0..16).map(|i| {
        let client = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move { client.put_with(TENANT, "race", "v", with_key("race-1")).await }
    });
    let results = futures::future::join_all(attempts).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let executed = results.iter().filter(|r| r.as_ref().is_ok_and(|w| !w.duplicate)).count();
    assert_eq!(executed, 1, "exactly one of the racing duplicates executed");
    let states = cluster.replica_states("race").await;
    let merged = cohort_coordinator::kv::merge_answers(states.iter());
    assert_eq!(merged.clock().iter().map(|(_, c)| c).sum::<u64>(), 1, "one write reached the replicas");
    second.stop().await;
    cluster.shutdown().await;
    stores.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_fails_over_when_the_leader_dies() {
    let (mut cluster, stores) = TestCluster::start_shared(shared_config()).await;
    let leading = cluster.coordinator.coordinator.wait_for_leadership(|s| s.leader).await;
    let (second, third) = (
        cluster.add_coordinator().await.expect("second coordinator"),
        cluster.add_coordinator().await.expect("third coordinator"),
    );
    assert!(!second.coordinator.leadership().leader && !third.coordinator.leadership().leader, "one leader");

    let mut admin = AdminClient::connect(second.endpoint()).await.expect("admin");
    let status = admin.cluster_status(pb::ClusterStatusRequest {}).await.expect("status").into_inner();
    let leader = status.leader.expect("a leader");
    assert_eq!((leader.id.as_str(), leader.generation), ("coordinator-1", leading.generation));

    // Kill the leader (no graceful release: the lease must expire). The third
    // coordinator stands in as the cluster's first so the harness stays whole.
    let killed = std::mem::replace(&mut cluster.coordinator, third);
    let killed_at = Instant::now();
    killed.kill().await;
    let survivors = [second.coordinator.clone(), cluster.coordinator.coordinator.clone()];
    let took_over = tokio::time::timeout(shared_config().leader.lease * 3, async {
        tokio::select! {
            s = survivors[0].wait_for_leadership(|s| s.leader) => s,
            s = survivors[1].wait_for_leadership(|s| s.leader) => s,
        }
    })
    .await
    .expect("a surviving coordinator takes over within the lease time");
    println!("leader failover took {:?} (lease {:?})", killed_at.elapsed(), shared_config().leader.lease);
    assert!(took_over.generation > leading.generation, "a new generation fences the old leader");
    let leaders: Vec<_> = survivors.iter().filter(|c| c.leadership().leader).map(|c| c.config.id.clone()).collect();
    assert_eq!(leaders.len(), 1, "exactly one leader: {leaders:?}");
    let status = admin.cluster_status(pb::ClusterStatusRequest {}).await.expect("status").into_inner();
    let leader = status.leader.expect("a leader");
    assert_eq!((leader.id, leader.generation), (leaders[0].clone(), took_over.generation));
    second.stop().await;
    cluster.shutdown().await;
    stores.drop_schema().await;
}
