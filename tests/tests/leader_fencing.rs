//! The leader lease and its fencing token, in the production shape
//! (PostgreSQL metadata, several coordinators): a leader cut off from
//! PostgreSQL steps down before its lease can pass to another coordinator,
//! and once deposed, its leader-only writes under the old generation are
//! refused.
//!
//! The leader under test reaches PostgreSQL through its own connection pool
//! behind a [`FaultProxy`]; the other coordinators and the test connect
//! directly. These tests need the PostgreSQL and Redis of the machine (see
//! `COHORT_TEST_POSTGRES_URL`, `COHORT_TEST_REDIS_URL`) and fail loudly
//! without them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cohort_cluster::LocalCoordinator;
use cohort_coordinator::leader::LeaderState;
use cohort_coordinator::metadata::postgres::PostgresMetadata;
use cohort_coordinator::metadata::{MetadataError, NodeHealth, NodeProbe};
use cohort_coordinator::{CoordinatorConfig, ReadRepairMode};
use cohort_proto::v1 as pb;
use cohort_proto::v1::admin_client::AdminClient;
use cohort_tests::proxy::{Fault, FaultProxy};
use cohort_tests::{SharedStores, TestCluster, eventually, test_config};

/// Lease length: its last tenth (300 ms) is the margin between a leader's
/// step-down and the lease's expiry in PostgreSQL, wide enough for a loaded
/// machine.
const LEASE_MS: u64 = 3_000;

fn config(node_probe_ms: u64) -> CoordinatorConfig {
    let mut config = test_config(ReadRepairMode::Background);
    config.leader.lease = Duration::from_millis(LEASE_MS);
    config.leader.node_probe = Duration::from_millis(node_probe_ms);
    config
}

/// Long enough for any change of leadership: a lease, a renewal period, and
/// room for a slow machine.
const TAKEOVER: Duration = Duration::from_millis(LEASE_MS * 3);

async fn leads(coordinator: &LocalCoordinator) -> LeaderState {
    tokio::time::timeout(TAKEOVER, coordinator.coordinator.wait_for_leadership(|s| s.leader))
        .await
        .unwrap_or_else(|_| panic!("{} did not become leader within {TAKEOVER:?}", coordinator.coordinator.config.id))
}

/// A cluster whose leader reaches PostgreSQL through `proxy`, and a second
/// coordinator, connected directly, standing by.
struct Setup {
    cluster: TestCluster,
    stores: SharedStores,
    proxy: FaultProxy,
    /// The leader behind the proxy; the cluster's first coordinator until
    /// the test swaps it out.
    leading: LeaderState,
    standby: LocalCoordinator,
}

impl Setup {
    async fn start(config: CoordinatorConfig) -> Setup {
        let (mut cluster, stores) = TestCluster::start_shared(config).await;
        leads(&cluster.coordinator).await;
        let proxy = FaultProxy::start(stores.postgres_address().await).await;
        let through_proxy = PostgresMetadata::connect(&stores.postgres_through(proxy.address()), &stores.schema, 4)
            .await
            .expect("connect to PostgreSQL through the proxy");
        let proxied = cluster.add_coordinator_over(Arc::new(through_proxy)).await.expect("proxied coordinator");
        // The first coordinator hands the lease over as it stops; the proxied
        // one is the only other candidate.
        let first = std::mem::replace(&mut cluster.coordinator, proxied);
        first.stop().await;
        let leading = leads(&cluster.coordinator).await;
        let standby = cluster.add_coordinator().await.expect("standby coordinator");
        assert!(!standby.coordinator.leadership().leader, "the lease is held");
        Setup { cluster, stores, proxy, leading, standby }
    }

    fn leader_id(&self) -> String {
        self.cluster.coordinator.coordinator.config.id.clone()
    }

    /// Waits until every node's health was recorded under `generation`.
    async fn health_recorded_by(&self, generation: u64) -> Vec<NodeHealth> {
        let metadata = &self.cluster.metadata;
        let nodes = self.cluster.node_count();
        eventually(&format!("every node's health recorded by generation {generation}"), TAKEOVER, || async {
            metadata.node_health().await.is_ok_and(|h| h.len() == nodes && h.iter().all(|h| h.generation == generation))
        })
        .await;
        metadata.node_health().await.expect("read node health")
    }

    /// Stops the standby (now leading) and the deposed leader, then the
    /// cluster.
    async fn finish(mut self) {
        let deposed = std::mem::replace(&mut self.cluster.coordinator, self.standby);
        deposed.kill().await;
        drop(self.proxy);
        self.cluster.shutdown().await;
        self.stores.drop_schema().await;
    }
}

/// The lease row as PostgreSQL has it now: the holder's coordinator id,
/// the generation, and the milliseconds it has left (negative once expired).
async fn lease_row(client: &tokio_postgres::Client, schema: &str) -> (String, u64, i64) {
    let row = client
        .query_one(
            &format!(
                "SELECT holder, generation, (extract(epoch FROM expires_at - now()) * 1000)::bigint
                 FROM {schema}.leader_lease"
            ),
            &[],
        )
        .await
        .expect("read the lease row");
    let holder: String = row.get(0);
    (cohort_coordinator::leader::coordinator_of(&holder).to_string(), row.get::<_, i64>(1) as u64, row.get(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_postgres_stalls_steps_down_before_its_lease_expires() {
    let setup = Setup::start(config(200)).await;
    let leader = setup.cluster.coordinator.coordinator.clone();
    let old = setup.leading;
    // Its probe job writes under its generation.
    setup.health_recorded_by(old.generation).await;
    let direct = setup.stores.direct().await;
    assert_eq!(lease_row(&direct, &setup.stores.schema).await.0, setup.leader_id());

    setup.proxy.set(Fault::Blackhole);
    let stalled = Instant::now();
    let stepped_down = tokio::time::timeout(TAKEOVER, leader.wait_for_leadership(|s| !s.leader))
        .await
        .expect("the stalled leader steps down");
    // At the moment it says it no longer leads, PostgreSQL still gives it
    // the lease: nobody else can lead yet.
    let (holder, generation, left_ms) = lease_row(&direct, &setup.stores.schema).await;
    println!(
        "stepped down {:?} after PostgreSQL stalled, {left_ms} ms before its lease expired (lease {LEASE_MS} ms)",
        stalled.elapsed()
    );
    assert_eq!(stepped_down, LeaderState { leader: false, generation: old.generation });
    assert_eq!(
        (holder.as_str(), generation),
        (setup.leader_id().as_str(), old.generation),
        "the lease passed on while the stalled coordinator still said it led"
    );
    assert!(left_ms > 0, "the lease had expired {} ms before the leader stepped down", -left_ms);
    assert!(!setup.standby.coordinator.leadership().leader, "two leaders");

    // Then the lease expires and the standby takes over with a new
    // generation, while the stalled coordinator still cannot reach PostgreSQL.
    let took_over = leads(&setup.standby).await;
    assert!(took_over.generation > old.generation, "{took_over:?} after {old:?}");
    let (holder, generation, _) = lease_row(&direct, &setup.stores.schema).await;
    assert_eq!((holder.as_str(), generation), (setup.standby.coordinator.config.id.as_str(), took_over.generation));
    assert!(!leader.leadership().leader, "the stalled coordinator stays deposed");
    setup.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_write_with_its_old_generation_is_refused() {
    // Each leader probes once when it takes over, then not for a minute: the
    // recorded health stays as its last writer left it.
    let setup = Setup::start(config(60_000)).await;
    let deposed = setup.cluster.coordinator.coordinator.clone();
    let old = setup.leading;
    setup.health_recorded_by(old.generation).await;

    // Cut the leader off until the standby has taken over, then let its
    // traffic through again: it is back, holding its old generation.
    setup.proxy.set(Fault::Blackhole);
    let new = leads(&setup.standby).await;
    assert!(new.generation > old.generation);
    let recorded = setup.health_recorded_by(new.generation).await;
    assert!(recorded.iter().all(|h| h.up), "{recorded:?}");
    setup.proxy.set(Fault::None);

    // A leader-only write under the old generation, as a job of the deposed
    // leader that had not noticed yet would make it: refused, nothing changed.
    let stale: Vec<NodeProbe> = recorded.iter().map(|h| NodeProbe { node: h.node.clone(), up: false }).collect();
    let refused = deposed.metadata.record_node_health(old.generation, &stale).await;
    assert_eq!(refused, Err(MetadataError::Fenced { generation: old.generation, current: new.generation }));
    assert_eq!(setup.cluster.metadata.node_health().await.expect("read node health"), recorded);
    // The deposed coordinator learns it lost the lease and stays a follower.
    assert!(!deposed.leadership().leader);

    // Cluster status, through either coordinator, shows the new leader and
    // the health it recorded.
    for endpoint in [setup.standby.endpoint(), setup.cluster.endpoint()] {
        let mut admin = AdminClient::connect(endpoint).await.expect("admin");
        let status = admin.cluster_status(pb::ClusterStatusRequest {}).await.expect("status").into_inner();
        let leader = status.leader.clone().expect("a leader");
        assert_eq!(
            (leader.id.as_str(), leader.generation),
            (setup.standby.coordinator.config.id.as_str(), new.generation)
        );
        let health: Vec<_> = status.nodes.iter().map(|n| n.health.as_ref().map(|h| (h.up, h.generation))).collect();
        assert_eq!(health, vec![Some((true, new.generation)); recorded.len()], "{status:?}");
    }
    setup.finish().await;
}
