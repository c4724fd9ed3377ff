//! Smoke runs of the `cohort-loadtest` binary against an in-process cluster
//! and the no-op server: every operation succeeds, the JSON parses with the
//! documented fields, workload E is refused, and a verification run audits
//! clean. Correctness only — no timing is asserted.

#![allow(missing_docs)]

use std::process::Command;

use cohort_cluster::{LocalCluster, LocalClusterOptions};

async fn cluster() -> (LocalCluster, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut options = LocalClusterOptions::new(dir.path());
    options.durability = cohort_node::Durability::Flush;
    (LocalCluster::start(options).await.expect("cluster starts"), dir)
}

fn loadtest_output(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cohort-loadtest")).args(args).output().expect("run cohort-loadtest")
}

fn loadtest(args: &[&str]) -> std::process::Output {
    let output = loadtest_output(args);
    assert!(
        output.status.success(),
        "cohort-loadtest {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `cohort://HOST:PORT` for the cluster's coordinator.
fn cohort_target(cluster: &LocalCluster) -> String {
    format!("cohort://{}", cluster.endpoint().trim_start_matches("http://"))
}

/// Runs `run` with `args` plus `--json FILE` and returns the parsed report,
/// after checking the fields every report has and that no operation failed.
async fn run_json(args: Vec<String>, operations: u64) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("temporary directory");
    let json = dir.path().join("report.json");
    let mut args = args;
    args.extend(["--json".to_string(), json.to_string_lossy().into_owned()]);
    let output = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        loadtest(&args)
    })
    .await
    .expect("join");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("JSON file written")).expect("JSON report parses");
    for field in ["target", "workload", "concurrency", "rate", "ops_per_sec", "duration_s", "operations"] {
        assert!(report.get(field).is_some(), "no {field:?} in {report}");
    }
    assert!(report["ops_per_sec"].as_f64().is_some_and(|r| r > 0.0), "{report}");
    assert!(report["duration_s"].as_f64().is_some_and(|d| d > 0.0), "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    let mut total = 0;
    for (name, op) in report["operations"].as_object().expect("operations object") {
        for field in ["count", "errors", "p50_us", "p95_us", "p99_us", "p999_us", "max_us"] {
            assert!(op[field].is_u64(), "no {field:?} for {name} in {report}");
        }
        assert_eq!(op["errors"], 0, "{name} failed: {report}");
        assert!(op["p50_us"].as_u64() <= op["max_us"].as_u64(), "{report}");
        total += op["count"].as_u64().expect("count");
    }
    assert_eq!(total, operations, "every measured operation succeeded: {report}");
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(summary.contains(&format!("{operations} operations")), "{summary}");
    report
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

fn count(report: &serde_json::Value, op: &str) -> u64 {
    report["operations"][op]["count"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_workload_a_reports_every_operation_as_json() {
    let (cluster, dir) = cluster().await;
    let plot = dir.path().join("latency.svg");
    let mut args = strings(&["run", "--target", &cohort_target(&cluster), "--workload", "a"]);
    args.extend(strings(&["--records", "50", "--value-size", "64", "--distribution", "zipfian", "--concurrency", "4"]));
    args.extend(strings(&["--operations", "300", "--plot", &plot.to_string_lossy()]));
    let report = run_json(args, 300).await;
    assert_eq!(report["workload"], "a");
    assert_eq!(report["concurrency"], 4);
    assert_eq!(report["rate"], serde_json::Value::Null);
    assert!(report["target"].as_str().is_some_and(|t| t.starts_with("cohort://")), "{report}");
    assert!(count(&report, "read") > 0 && count(&report, "update") > 0, "{report}");
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.starts_with("<svg") && svg.contains("99.99"), "{svg}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_workload_f_in_an_open_loop_with_warmup() {
    let (cluster, _dir) = cluster().await;
    let mut args = strings(&["run", "--target", &cohort_target(&cluster), "--workload", "f", "--records", "40"]);
    args.extend(strings(&["--concurrency", "4", "--rate", "400", "--warmup", "250ms", "--operations", "200"]));
    let report = run_json(args, 200).await;
    assert_eq!(report["rate"], 400.0);
    assert!(count(&report, "read") > 0 && count(&report, "rmw") > 0, "{report}");
    assert!(report["start_delay"]["max_us"].is_u64(), "{report}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_custom_mix_with_inserts_and_latest_keys() {
    let (cluster, _dir) = cluster().await;
    let mut args = strings(&["run", "--target", &cohort_target(&cluster), "--workload", "custom"]);
    args.extend(strings(&["--read-proportion", "0.4", "--update-proportion", "0.2", "--insert-proportion", "0.2"]));
    args.extend(strings(&["--rmw-proportion", "0.2", "--distribution", "latest", "--records", "30"]));
    args.extend(strings(&["--concurrency", "3", "--operations", "250", "--consistency", "quorum"]));
    let report = run_json(args, 250).await;
    for op in ["read", "update", "insert", "rmw"] {
        assert!(count(&report, op) > 0, "no {op}: {report}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_against_the_noop_server() {
    use std::io::BufRead;
    let mut server = Command::new(env!("CARGO_BIN_EXE_cohort-loadtest"))
        .args(["noop-server", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start noop-server");
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().expect("stdout")).read_line(&mut line).expect("first line");
    let address = line.trim().strip_prefix("noop server listening on ").expect("listening line").to_string();
    let args = strings(&["run", "--target", &format!("noop://{address}"), "--workload", "b", "--concurrency", "2"]);
    let report = run_json([args, strings(&["--operations", "300"])].concat(), 300).await;
    assert_eq!(count(&report, "noop"), 300, "every operation is the no-op call: {report}");
    server.kill().expect("stop noop-server");
    server.wait().expect("reap noop-server");
}

#[test]
fn workload_e_is_refused_for_want_of_range_scans() {
    let output = loadtest_output(&["run", "--target", "noop://127.0.0.1:1", "--workload", "e", "--operations", "1"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("range scans") && stderr.contains("hash-partitions"), "{stderr}");
    let help = loadtest(&["run", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("Workload e (short range scans) is not offered"));
}

#[cfg(not(feature = "etcd"))]
#[test]
fn etcd_needs_the_feature() {
    let output = loadtest_output(&["run", "--target", "etcd://127.0.0.1:1", "--workload", "a", "--operations", "1"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--features etcd") && stderr.contains("protobuf-compiler"), "{stderr}");
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

/// Against a real etcd when `COHORT_LOADTEST_ETCD=HOST:PORT` names one (and
/// the crate is built with `--features etcd`); skipped otherwise.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_against_etcd_when_one_is_named() {
    let Ok(endpoint) = std::env::var("COHORT_LOADTEST_ETCD") else {
        eprintln!("COHORT_LOADTEST_ETCD is not set: skipped");
        return;
    };
    let mut args = strings(&["run", "--target", &format!("etcd://{endpoint}"), "--workload", "custom"]);
    args.extend(strings(&["--read-proportion", "1", "--update-proportion", "1", "--insert-proportion", "1"]));
    args.extend(strings(&["--rmw-proportion", "1", "--records", "50", "--concurrency", "4", "--operations", "300"]));
    let report = run_json(args, 300).await;
    for op in ["read", "update", "insert", "rmw"] {
        assert!(count(&report, op) > 0, "no {op}: {report}");
    }
}
