//! `cohort dev` as an operator sees it: it serves `/metrics` and health over
//! plain HTTP, shuts down gracefully on SIGTERM (exit status 0), and a restart
//! on the same `--data-dir` keeps every key and tenant (guarantee 1
//! across a whole-cluster restart, and the dev cluster's embedded metadata
//! survives a restart).

#![allow(missing_docs)]

mod common;

use common::{Dev, http_get, run, start_dev};

fn cli(dev: &Dev, args: &[&str]) -> common::Output {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--endpoint", dev.endpoint.as_str()]);
    run(&all)
}

#[test]
fn serves_metrics_and_health_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev(&dir.path().join("data"));

    let put = cli(&dev, &["kv", "put", "greeting", "hello"]);
    assert!(put.success(), "{put:?}");

    let (status, body) = http_get(&dev.metrics, "/health/ready");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "ready");
    let (status, body) = http_get(&dev.metrics, "/health/live");
    assert_eq!((status, body.as_str()), (200, "ok"));

    let (status, metrics) = http_get(&dev.metrics, "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("cohort_requests_total"), "no request counter in:\n{metrics}");
    assert!(
        metrics.lines().any(|l| l.starts_with("cohort_requests_total{") && l.contains("op=\"put\"")),
        "the put is counted by operation:\n{metrics}"
    );

    let (status, _) = http_get(&dev.metrics, "/no-such-page");
    assert_eq!(status, 404);
}

#[test]
fn sigterm_is_a_graceful_exit_and_a_restart_keeps_keys_and_tenants() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut dev = start_dev(&data);

    let created =
        cli(&dev, &["admin", "tenant", "create", "keep", "--replication", "2", "--read", "2", "--write", "1"]);
    assert!(created.success(), "{created:?}");
    let tenant_before = cli(&dev, &["admin", "tenant", "get", "keep", "--json"]).json();
    for i in 0..5 {
        let (key, value) = (format!("key-{i}"), format!("value-{i}"));
        let put = cli(&dev, &["kv", "put", &key, &value]);
        assert!(put.success(), "{put:?}");
        let put = cli(&dev, &["kv", "put", "--tenant", "keep", &key, &format!("kept-{i}")]);
        assert!(put.success(), "{put:?}");
    }
    // A deleted key must stay deleted across the restart.
    let deleted = cli(&dev, &["kv", "delete", "key-0", "--context", &read_context(&dev, "key-0")]);
    assert!(deleted.success(), "{deleted:?}");

    let status = dev.proc.terminate();
    assert!(status.success(), "SIGTERM must end `cohort dev` gracefully, got {status}");

    let dev = start_dev(&data);
    let tenant_after = cli(&dev, &["admin", "tenant", "get", "keep", "--json"]).json();
    assert_eq!(tenant_after, tenant_before, "the tenant survives a restart unchanged");
    let tenants = cli(&dev, &["admin", "tenant", "list", "--json"]).json();
    assert_eq!(tenants.as_array().map(Vec::len), Some(2), "default and keep, nothing else: {tenants}");

    let get = |tenant: &str, key: &str| cli(&dev, &["kv", "get", "--tenant", tenant, key, "--json"]).json();
    let gone = get("default", "key-0");
    assert_eq!(gone["found"], false, "a deleted key stays deleted: {gone}");
    for i in 1..5 {
        let read = get("default", &format!("key-{i}"));
        assert_eq!(read["siblings"], serde_json::json!([format!("value-{i}")]), "{read}");
    }
    for i in 0..5 {
        let read = get("keep", &format!("key-{i}"));
        assert_eq!(read["siblings"], serde_json::json!([format!("kept-{i}")]), "{read}");
    }

    // The restarted cluster registered its nodes at their new addresses.
    let status = cli(&dev, &["admin", "cluster", "status", "--json"]).json();
    assert_eq!(status["nodes"].as_array().map(Vec::len), Some(3), "{status}");
}

fn read_context(dev: &Dev, key: &str) -> String {
    let read = cli(dev, &["kv", "get", key, "--json"]).json();
    read["context"].as_str().expect("context is a string").to_string()
}
