//! `cohort node` and `cohort coordinator` as separate processes, the way an
//! operator runs them (README.md, "Operating"):
//! the coordinator reports not-ready until a storage node is registered,
//! both roles serve health and metrics over HTTP, both exit with status 0 on
//! SIGTERM, and a coordinator restarted on its data directory still knows
//! its nodes and tenants.

#![allow(missing_docs)]

mod common;

use common::{Proc, http_get, run, start_coordinator};

fn cli(endpoint: &str, args: &[&str]) -> common::Output {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--endpoint", endpoint]);
    run(&all)
}

#[test]
fn readiness_follows_registration_and_sigterm_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let node_dir = dir.path().join("node-1");
    let args = ["node", "--id", "node-1", "--data-dir", node_dir.to_str().unwrap(), "--listen", "127.0.0.1:0"];
    let mut node = Proc::spawn("cohort node node-1", &[&args[..], &["--metrics-listen", "127.0.0.1:0"]].concat(), &[]);
    let address = node.wait_for_line("cohort node node-1 listening on ").trim().to_string();
    let node_metrics = node.wait_for_line("metrics on http://");
    let node_metrics = node_metrics.trim().strip_suffix("/metrics").expect("a /metrics URL").to_string();
    assert_eq!(http_get(&node_metrics, "/health/live"), (200, "ok".to_string()));
    assert_eq!(http_get(&node_metrics, "/health/ready").0, 200);
    assert_eq!(http_get(&node_metrics, "/metrics").0, 200);

    let coordinator_dir = dir.path().join("coordinator");
    let mut coordinator = start_coordinator(&coordinator_dir, &[]);
    let (status, body) = http_get(&coordinator.metrics, "/health/ready");
    assert_eq!(status, 503, "no storage node is registered yet: {body}");
    assert!(body.starts_with("not ready"), "{body}");
    assert_eq!(http_get(&coordinator.metrics, "/health/live"), (200, "ok".to_string()));

    let added =
        cli(&coordinator.endpoint, &["admin", "node", "add", "--id", "node-1", "--address", &address, "--json"]);
    let added = added.json();
    assert_eq!((added["id"].as_str(), added["address"].as_str()), (Some("node-1"), Some(address.as_str())));
    // `node add` refreshes the ring at once: ready without waiting.
    assert_eq!(http_get(&coordinator.metrics, "/health/ready"), (200, "ready".to_string()));

    let created = cli(&coordinator.endpoint, &["admin", "tenant", "create", "solo", "--replication", "1"]);
    assert!(created.success(), "{created:?}");
    let put = cli(&coordinator.endpoint, &["kv", "put", "--tenant", "solo", "k", "v"]);
    assert!(put.success(), "{put:?}");

    let status = coordinator.proc.terminate();
    assert!(status.success(), "coordinator exit on SIGTERM: {status}");

    // Embedded metadata survives: the new coordinator knows node-1 and the tenant.
    let mut coordinator = start_coordinator(&coordinator_dir, &[]);
    assert_eq!(http_get(&coordinator.metrics, "/health/ready"), (200, "ready".to_string()));
    let read = cli(&coordinator.endpoint, &["kv", "get", "--tenant", "solo", "k", "--json"]).json();
    assert_eq!(read["siblings"], serde_json::json!(["v"]), "{read}");

    let status = node.terminate();
    assert!(status.success(), "node exit on SIGTERM: {status}");
    let status = coordinator.proc.terminate();
    assert!(status.success(), "coordinator exit on SIGTERM: {status}");
}

#[test]
fn a_coordinator_names_its_stores_and_refuses_settings_it_does_not_know() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("coordinator");
    let base = ["coordinator", "--data-dir", data.to_str().unwrap(), "--listen", "127.0.0.1:0", "--metrics-listen", ""];
    // No store chosen: an empty URL no longer means "embedded".
    run(&base).one_line_error("choose a metadata store");
    let idempotency = run(&[&base[..], &["--metadata-backend", "embedded"]].concat());
    idempotency.one_line_error("choose an idempotency store");
    // A backend and a URL that disagree.
    let file = dir.path().join("coordinator.toml");
    std::fs::write(&file, "[metadata]\nbackend = \"embedded\"\nurl = \"postgres://db/cohort\"\n").unwrap();
    let stray = run(&[&base[..], &["--config", file.to_str().unwrap(), "--idempotency-backend", "embedded"]].concat());
    stray.one_line_error("metadata.url is set but metadata.backend is \"embedded\"");
    // A setting of the old, unsectioned layout.
    std::fs::write(&file, "request_timeout_ms = 5000\n").unwrap();
    run(&[&base[..], &["--config", file.to_str().unwrap()]].concat()).one_line_error("request_timeout_ms");
    assert!(!data.exists(), "a refused start creates nothing");
}

/// `cohort node --coordinator-listen`: three node processes, the first also
/// running the coordinator (which calls its own node in-process), serve keys
/// as the separate roles do, and stop together on SIGTERM.
#[test]
fn a_node_process_can_run_the_coordinator_beside_its_replica() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("node-1.toml");
    let coordinator_dir = dir.path().join("coordinator");
    std::fs::write(
        &settings,
        format!(
            "[coordinator]\ndata_dir = {:?}\nmetrics_listen = \"\"\n[coordinator.metadata]\nbackend = \"embedded\"\n\
             [coordinator.idempotency]\nbackend = \"embedded\"\n",
            coordinator_dir.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut nodes = Vec::new();
    let mut endpoint = String::new();
    for i in 1..=3 {
        let id = format!("node-{i}");
        let data = dir.path().join(&id);
        let mut args = vec!["node", "--id", &id, "--data-dir", data.to_str().unwrap(), "--listen", "127.0.0.1:0"];
        if i == 1 {
            args.extend_from_slice(&["--config", settings.to_str().unwrap(), "--coordinator-listen", "127.0.0.1:0"]);
        }
        let mut node = Proc::spawn(&format!("cohort node {id}"), &args, &[]);
        let address = node.wait_for_line(&format!("cohort node {id} listening on ")).trim().to_string();
        if i == 1 {
            let public = node.wait_for_line("cohort coordinator coordinator-1 listening on ").trim().to_string();
            endpoint = format!("http://{public}");
        }
        nodes.push((id, address, node));
    }
    for (id, address, _) in &nodes {
        let added = cli(&endpoint, &["admin", "node", "add", "--wait", "--id", id, "--address", address]);
        assert!(added.success(), "{added:?}");
    }
    let created = cli(&endpoint, &["admin", "tenant", "create", "app", "--replication", "3"]);
    assert!(created.success(), "{created:?}");
    let put = cli(&endpoint, &["kv", "put", "--tenant", "app", "k", "v", "--json"]).json();
    let acked = put["receipt"]["replicas"].as_array().map_or(0, Vec::len);
    assert!(acked >= 2, "a quorum of the three replicas holds the write: {put}");
    let read = cli(&endpoint, &["kv", "get", "--tenant", "app", "k", "--json"]).json();
    assert_eq!(read["siblings"], serde_json::json!(["v"]), "{read}");
    for (id, _, mut node) in nodes {
        let status = node.terminate();
        assert!(status.success(), "{id} exit on SIGTERM: {status}");
    }
}
