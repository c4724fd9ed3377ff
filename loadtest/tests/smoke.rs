//! Smoke runs of the `cohort-loadtest` binary against an in-process cluster:
//! every operation succeeds, the JSON parses, and a verification run audits
//! clean. Correctness only — no timing is asserted.

#![allow(missing_docs)]

use std::process::Command;

use cohort_coordinator::local::{LocalCluster, LocalClusterOptions};

async fn cluster() -> (LocalCluster, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut options = LocalClusterOptions::new(dir.path());
    options.durability = cohort_node::Durability::Flush;
    (LocalCluster::start(options).await.expect("cluster starts"), dir)
}

fn loadtest(args: &[&str]) -> std::process::Output {
    let output = Command::new(env!("CARGO_BIN_EXE_cohort-loadtest")).args(args).output().expect("run cohort-loadtest");
    assert!(
        output.status.success(),
        "cohort-loadtest {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reports_every_operation_as_json() {
    let (cluster, _dir) = cluster().await;
    let endpoint = cluster.endpoint();
    let output = tokio::task::spawn_blocking(move || {
        loadtest(&[
            "run",
            "--endpoint",
            &endpoint,
            "--records",
            "50",
            "--operations",
            "300",
            "--concurrency",
            "4",
            "--json",
        ])
    })
    .await
    .expect("join");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(report["errors"], 0, "{report}");
    let reads = report["operations"]["read"]["count"].as_u64().expect("read count");
    let updates = report["operations"]["update"]["count"].as_u64().expect("update count");
    assert_eq!(reads + updates, 300, "{report}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_audits_a_healthy_cluster_clean() {
    let (cluster, _dir) = cluster().await;
    let endpoint = cluster.endpoint();
    let history = _dir.path().join("history.jsonl");
    let history_arg = history.to_string_lossy().into_owned();
    let output = tokio::task::spawn_blocking(move || {
        loadtest(&[
            "verify",
            "--endpoint",
            &endpoint,
            "--duration",
            "30s",
            "--operations",
            "50",
            "--clients",
            "4",
            "--keys",
            "5",
            "--history",
            &history_arg,
        ])
    })
    .await
    .expect("join");
    let verdict = String::from_utf8_lossy(&output.stdout);
    assert!(verdict.starts_with("OK"), "{verdict}");
    assert!(verdict.contains("lost 0, phantom 0, resurrected 0"), "{verdict}");
    let recorded = cohort_checker::History::read_json_lines(std::io::BufReader::new(
        std::fs::File::open(&history).expect("history file"),
    ))
    .expect("history parses");
    assert_eq!(recorded.len(), 200, "4 clients × 50 operations");
    cluster.shutdown().await;
}
