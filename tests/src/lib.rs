//! Shared harness for Cohort's cluster-level tests.
//!
//! Each test starts a [`TestCluster`]: real storage nodes and coordinators
//! serving gRPC on 127.0.0.1 ephemeral ports inside the test process, under a
//! temporary directory. Tests talk to it through the public SDK, and inspect
//! single replicas through the nodes' internal Storage API.
//!
//! Waiting is done by polling observable state with a deadline
//! ([`eventually`]), never by sleeping for a guessed duration.

pub mod audit;
pub mod proxy;

use std::future::Future;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_client::{Client, RetryPolicy};
use cohort_cluster::{LocalCluster, LocalClusterOptions};
use cohort_coordinator::metadata::postgres::{PostgresMetadata, testing};
use cohort_coordinator::{CoordinatorConfig, ReadRepairMode};
use cohort_idempotency::redis::RedisIdempotency;
use cohort_node::Durability;
use cohort_proto::internal::v1::ReadRequest;
use cohort_proto::internal::v1::storage_client::StorageClient;
use cohort_ring::SiblingSet;

/// Tenant every test cluster starts with (N=3, R=2, W=2).
pub const TENANT: &str = "default";

/// A local cluster that owns its temporary directory.
pub struct TestCluster {
    cluster: LocalCluster,
    _dir: tempfile::TempDir,
}

impl Deref for TestCluster {
    type Target = LocalCluster;
    fn deref(&self) -> &LocalCluster {
        &self.cluster
    }
}

impl DerefMut for TestCluster {
    fn deref_mut(&mut self) -> &mut LocalCluster {
        &mut self.cluster
    }
}

/// The PostgreSQL schema of a shared-store cluster, dropped by
/// [`SharedStores::drop_schema`] at the end of a test.
pub struct SharedStores {
    /// The schema holding this cluster's tables.
    pub schema: String,
    /// The PostgreSQL URL.
    pub postgres: String,
}

impl SharedStores {
    /// Drops the test schema.
    pub async fn drop_schema(self) {
        testing::drop_schema(&self.schema).await;
    }

    fn postgres_config(&self) -> tokio_postgres::Config {
        self.postgres.parse().expect("the test PostgreSQL URL parses")
    }

    /// The TCP address PostgreSQL listens on, to put a proxy in front of.
    pub async fn postgres_address(&self) -> SocketAddr {
        let config = self.postgres_config();
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            other => panic!("the test PostgreSQL must be reached over TCP, not {other:?}"),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        tokio::net::lookup_host((host.as_str(), port))
            .await
            .expect("resolve the PostgreSQL host")
            .next()
            .expect("the PostgreSQL host has an address")
    }

    /// Connection settings for the same database and user, reached through
    /// `proxy` instead.
    pub fn postgres_through(&self, proxy: SocketAddr) -> String {
        let config = self.postgres_config();
        let quote = |value: &str| format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"));
        let mut settings = vec![format!("host={}", proxy.ip()), format!("port={}", proxy.port())];
        if let Some(user) = config.get_user() {
            settings.push(format!("user={}", quote(user)));
        }
        if let Some(password) = config.get_password() {
            settings.push(format!("password={}", quote(&String::from_utf8_lossy(password))));
        }
        if let Some(dbname) = config.get_dbname() {
            settings.push(format!("dbname={}", quote(dbname)));
        }
        settings.join(" ")
    }

    /// A connection of the test's own, straight to PostgreSQL, for reading
    /// the cluster's tables as they are.
    pub async fn direct(&self) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.postgres, tokio_postgres::NoTls).await.expect("connect to PostgreSQL");
        tokio::spawn(connection);
        client
    }
}

/// Coordinator settings for tests: short timeouts so that a stopped node
/// fails requests quickly.
pub fn test_config(read_repair: ReadRepairMode) -> CoordinatorConfig {
    let mut config = CoordinatorConfig {
        node_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        read_repair,
        ..CoordinatorConfig::default()
    };
    config.metadata.ring_refresh = Duration::from_millis(200);
    // Background anti-entropy would repair the stale replicas many tests
    // look at; the tests of anti-entropy turn it on.
    config.repair.enabled = false;
    config
}

impl TestCluster {
    /// Three nodes, one coordinator, background read repair.
    pub async fn start() -> TestCluster {
        Self::start_with(3, ReadRepairMode::Background).await
    }

    /// `nodes` nodes and one coordinator with the given read-repair mode.
    pub async fn start_with(nodes: usize, read_repair: ReadRepairMode) -> TestCluster {
        Self::start_with_config(nodes, test_config(read_repair)).await
    }

    /// Like [`TestCluster::start`], but the coordinator and the nodes call
    /// each other in-process, as in `cohort dev`.
    pub async fn start_in_process() -> TestCluster {
        Self::start_cluster(3, test_config(ReadRepairMode::Background), true).await
    }

    /// `nodes` nodes and one coordinator with the given settings.
    pub async fn start_with_config(nodes: usize, config: CoordinatorConfig) -> TestCluster {
        Self::start_cluster(nodes, config, false).await
    }

    /// Three nodes keeping hints within `hints`, one coordinator with
    /// `config`.
    pub async fn start_with_hints(config: CoordinatorConfig, hints: cohort_node::HintsConfig) -> TestCluster {
        Self::start_cluster_with(3, config, false, hints).await
    }

    async fn start_cluster(nodes: usize, config: CoordinatorConfig, in_process: bool) -> TestCluster {
        Self::start_cluster_with(nodes, config, in_process, cohort_node::HintsConfig::default()).await
    }

    async fn start_cluster_with(
        nodes: usize,
        config: CoordinatorConfig,
        in_process: bool,
        hints: cohort_node::HintsConfig,
    ) -> TestCluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut options = LocalClusterOptions::new(dir.path());
        options.node_hints = hints;
        options.nodes = nodes;
        options.in_process = in_process;
        // Flush durability: these tests stop nodes gracefully; the fsync path
        // is exercised by the kill -9 tests of the real binary.
        options.durability = Durability::Flush;
        options.coordinator = config;
        let cluster = LocalCluster::start(options).await.expect("cluster starts");
        TestCluster { cluster, _dir: dir }
    }

    /// Stops every node and the coordinator, then removes the directory.
    pub async fn shutdown(self) {
        self.cluster.shutdown().await;
    }

    /// Three nodes and one coordinator over PostgreSQL metadata (a fresh
    /// schema) and Redis idempotency records (a fresh key prefix), the way
    /// a production cluster runs. Fails loudly when either is unreachable.
    pub async fn start_shared(config: CoordinatorConfig) -> (TestCluster, SharedStores) {
        let schema = testing::unique_schema("cluster");
        let postgres = testing::url();
        let metadata = PostgresMetadata::connect(&postgres, &schema, 4).await.unwrap_or_else(|e| {
            panic!("PostgreSQL for tests is unreachable at {postgres} (set COHORT_TEST_POSTGRES_URL): {e}")
        });
        let redis = std::env::var("COHORT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let prefix = format!("{schema}:");
        let idempotency = RedisIdempotency::connect(&redis, &prefix, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("Redis for tests is unreachable at {redis} (set COHORT_TEST_REDIS_URL): {e}"));
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut options = LocalClusterOptions::new(dir.path());
        options.durability = Durability::Flush;
        options.coordinator = config;
        let cluster = LocalCluster::start_with_stores(options, Arc::new(metadata), Arc::new(idempotency))
            .await
            .expect("cluster starts");
        (TestCluster { cluster, _dir: dir }, SharedStores { schema, postgres })
    }

    /// A client of the first coordinator that never retries, so every
    /// failure is visible to the test.
    pub async fn client(&self) -> Client {
        client_for(&self.endpoint()).await
    }

    /// The state node `index` holds for `key` of the default tenant, read
    /// through its Storage API.
    pub async fn replica_state(&self, index: usize, key: &str) -> SiblingSet {
        self.replica_state_in(index, TENANT, key).await
    }

    /// The state node `index` holds in its own data for `key` of `tenant`.
    pub async fn replica_state_in(&self, index: usize, tenant: &str, key: &str) -> SiblingSet {
        let address = self.node_address(index).expect("node is running");
        let mut client = StorageClient::connect(format!("http://{address}")).await.expect("connect to node");
        // Inspection, not routing: past any ring fence.
        let request = ReadRequest {
            tenant: tenant.into(),
            key: Bytes::copy_from_slice(key.as_bytes()),
            ring_version: u64::MAX,
            ..Default::default()
        };
        let state = client.read(request).await.expect("replica read").into_inner().state;
        if state.is_empty() { SiblingSet::new() } else { SiblingSet::decode(&state).expect("decodable state") }
    }

    /// The indices of the nodes that hold `key` of the default tenant in the
    /// live ring versions, as the first coordinator sees them.
    pub async fn replica_indices(&self, key: &str) -> Vec<usize> {
        let coordinator = &self.cluster.coordinator.coordinator;
        coordinator.topology.refresh().await.expect("ring refresh");
        let tenant = coordinator.metadata.get_tenant(TENANT).await.expect("default tenant");
        let plan = coordinator.topology.current().replicas(TENANT, key.as_bytes(), tenant.replication.n().into());
        let mut indices: Vec<usize> = plan.replicas.iter().map(|r| node_index(&r.id)).collect();
        indices.sort_unstable();
        indices
    }

    /// The states of every running node for `key`.
    pub async fn replica_states(&self, key: &str) -> Vec<SiblingSet> {
        let mut states = Vec::new();
        for index in 0..self.node_count() {
            if self.node_address(index).is_some() {
                states.push(self.replica_state(index, key).await);
            }
        }
        states
    }
}

/// The index of node `id` (`node-<index + 1>`) in a test cluster.
pub fn node_index(id: &str) -> usize {
    id.trim_start_matches("node-").parse::<usize>().expect("node ids are node-<n>") - 1
}

/// A client of `endpoint` without retries.
pub async fn client_for(endpoint: &str) -> Client {
    Client::connect(endpoint)
        .await
        .expect("connect to coordinator")
        .with_retry(RetryPolicy { max_attempts: 1, ..RetryPolicy::default() })
}

/// Values of the live siblings of `state`, as strings, sorted.
pub fn values_of(state: &SiblingSet) -> Vec<String> {
    let mut values: Vec<String> = state.values().map(|v| String::from_utf8_lossy(v).into_owned()).collect();
    values.sort();
    values
}

/// Sorted string values of a read.
pub fn strings(siblings: &[Bytes]) -> Vec<String> {
    let mut values: Vec<String> = siblings.iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect();
    values.sort();
    values
}

/// Polls `check` until it returns true, failing the test after `deadline`.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    loop {
        poll.tick().await;
        if check().await {
            return;
        }
        assert!(start.elapsed() < deadline, "timed out after {deadline:?} waiting for: {what}");
    }
}

/// Turns each named `async fn(TestCluster)` scenario into two tests: one on
/// a cluster whose coordinator and nodes talk gRPC (module `over_grpc`), one
/// on a cluster whose calls stay in-process as in `cohort dev` (module
/// `in_process`).
#[macro_export]
macro_rules! on_both_transports {
    ($($scenario:ident),* $(,)?) => {
        mod over_grpc {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario($crate::TestCluster::start().await).await
                }
            )*
        }
        mod in_process {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario($crate::TestCluster::start_in_process().await).await
                }
            )*
        }
    };
}
