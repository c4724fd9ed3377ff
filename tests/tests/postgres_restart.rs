//! PostgreSQL lost while serving: coordinators keep serving key-value traffic
//! from cached tenants and the last ring, report degraded readiness, refuse
//! admin changes with Unavailable, and recover without a restart once
//! PostgreSQL is back.
//!
//! This test stops and starts the machine's PostgreSQL cluster with
//! `pg_ctlcluster`, so it lives alone in this test binary (cargo runs test
//! binaries one after another) and needs to run as a user allowed to do that.

use std::process::Command;
use std::time::Duration;

use cohort_coordinator::{ReadRepairMode, Readiness};
use cohort_proto::v1 as pb;
use cohort_proto::v1::admin_client::AdminClient;
use cohort_tests::{TENANT, TestCluster, eventually, strings, test_config};

/// Runs `pg_ctlcluster VERSION main ACTION` on the local cluster.
fn pg_ctl(action: &str) {
    let versions = std::fs::read_dir("/etc/postgresql")
        .expect("this test controls the local PostgreSQL cluster: /etc/postgresql must exist");
    let version = versions
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .max_by_key(|v| v.parse::<u32>().unwrap_or(0))
        .expect("a PostgreSQL cluster is installed");
    let mut command = Command::new("pg_ctlcluster");
    command.args(["--skip-systemctl-redirect", &version, "main", action]);
    if action == "stop" {
        command.args(["-m", "fast"]);
    }
    let status = command.status().expect("pg_ctlcluster runs");
    assert!(status.success(), "pg_ctlcluster {action} failed: {status}");
}

/// Starts PostgreSQL again even when an assertion fails mid-test, so the
/// rest of the suite (and the machine) is left as it was.
struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        let running = Command::new("pg_isready").args(["-h", "127.0.0.1", "-q"]).status().is_ok_and(|s| s.success());
        if !running {
            pg_ctl("start");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_continues_while_postgres_is_down_and_recovers_after() {
    let mut config = test_config(ReadRepairMode::Background);
    config.metadata.tenant_cache_ttl = std::time::Duration::from_millis(200);
    config.metadata.ring_refresh = std::time::Duration::from_millis(100);
    let (cluster, stores) = TestCluster::start_shared(config).await;
    let coordinator = cluster.coordinator.coordinator.clone();
    let client = cluster.client().await;
    client.put(TENANT, "before", "v1").await.expect("write with PostgreSQL up");
    assert_eq!(coordinator.readiness(), Readiness::Ready);

    let guard = RestartOnDrop;
    pg_ctl("stop");
    eventually("readiness turns degraded", Duration::from_secs(10), || async {
        matches!(coordinator.readiness(), Readiness::Degraded(_))
    })
    .await;
    // Key-value traffic keeps flowing from the cached tenant and the last
    // ring, well past the tenant cache TTL.
    for i in 0..20 {
        client.put(TENANT, format!("during-{i}"), "v").await.expect("write while PostgreSQL is down");
    }
    assert_eq!(strings(&client.get(TENANT, "before").await.expect("read").siblings), ["v1"]);
    let mut admin = AdminClient::connect(cluster.endpoint()).await.expect("admin");
    let create = pb::CreateTenantRequest { id: "later".into(), replication: 3, ..Default::default() };
    let status = admin.create_tenant(create.clone()).await.expect_err("metadata is down");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{}", status.message());

    pg_ctl("start");
    drop(guard);
    eventually("readiness recovers", Duration::from_secs(30), || async { coordinator.readiness() == Readiness::Ready })
        .await;
    eventually("admin changes work again", Duration::from_secs(30), || {
        let mut admin = admin.clone();
        let create = create.clone();
        async move { admin.create_tenant(create).await.is_ok() }
    })
    .await;
    for i in 0..20 {
        assert_eq!(strings(&client.get(TENANT, format!("during-{i}")).await.expect("read").siblings), ["v"]);
    }
    cluster.shutdown().await;
    stores.drop_schema().await;
}
