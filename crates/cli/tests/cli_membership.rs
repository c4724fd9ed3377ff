//! `cohort admin node add|remove` and `cohort admin migration`, as an
//! operator runs them: the plan of a dry run, a join followed to its end,
//! the documented JSON fields, and the exit codes of `wait` and `cancel`.

#![allow(missing_docs)]

mod common;

use std::collections::BTreeSet;

use common::{run, start_dev, start_node};

fn keys(value: &serde_json::Value) -> BTreeSet<&str> {
    value.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default()
}

#[test]
fn a_join_is_planned_followed_and_listed_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev(&dir.path().join("data"));
    let endpoint = dev.endpoint.as_str();
    for i in 0..50 {
        let put = run(&["kv", "put", "--endpoint", endpoint, &format!("k{i}"), "v"]);
        assert!(put.success(), "{put:?}");
    }
    let (_node, address) = start_node("node-4", &dir.path().join("node-4"));
    let add = |extra: &[&str]| {
        let mut args = vec!["admin", "node", "add", "--endpoint", endpoint, "--id", "node-4", "--address", &address];
        args.extend_from_slice(extra);
        run(&args)
    };

    let plan = add(&["--dry-run", "--json"]).json();
    assert!(plan["migration"].is_null(), "a dry run starts nothing: {plan}");
    let plan = &plan["plan"];
    assert_eq!(keys(plan), BTreeSet::from(["from_version", "to_version", "ranges", "nodes"]), "{plan}");
    let gains = plan["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "node-4").expect("node-4 gains");
    assert!(gains["keys_gained"].as_u64().is_some_and(|k| k > 0), "{plan}");
    let text = add(&["--dry-run"]);
    assert!(text.success() && text.stdout.contains("dry run: nothing changed"), "{text:?}");
    let none = run(&["admin", "migration", "list", "--endpoint", endpoint, "--json"]).json();
    assert_eq!(none, serde_json::json!([]), "the dry runs changed nothing");

    let joined = add(&["--wait", "--json"]).json();
    let migration = &joined["migration"];
    assert_eq!(
        (migration["kind"].as_str(), migration["state"].as_str()),
        (Some("join"), Some("completed")),
        "{joined}"
    );
    let fields = [
        "id",
        "kind",
        "node_id",
        "state",
        "phase",
        "from_version",
        "to_version",
        "ranges_total",
        "ranges_done",
        "migrated",
        "total",
        "percent",
        "bytes_copied",
        "error",
        "cancel_requested",
        "created_at_ms",
        "updated_at_ms",
    ];
    assert_eq!(keys(migration), BTreeSet::from(fields), "{migration}");
    assert_eq!(migration["percent"], 100.0, "{migration}");
    assert!(migration["migrated"].as_u64().is_some_and(|m| m > 0), "{migration}");

    let id = migration["id"].as_u64().unwrap().to_string();
    let listed = run(&["admin", "migration", "list", "--endpoint", endpoint, "--json"]).json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    let got = run(&["admin", "migration", "get", &id, "--endpoint", endpoint, "--json"]).json();
    assert_eq!(got["state"], "completed");
    let waited = run(&["admin", "migration", "wait", &id, "--endpoint", endpoint]);
    assert!(waited.success(), "waiting for a completed migration succeeds: {waited:?}");
    let idle = run(&["admin", "migration", "wait", "--endpoint", endpoint]);
    assert!(idle.success() && idle.stdout.contains("no migration is running"), "{idle:?}");
    run(&["admin", "migration", "cancel", &id, "--endpoint", endpoint]).one_line_error("already ended");
    run(&["admin", "migration", "get", "99", "--endpoint", endpoint]).one_line_error("not found");

    let status = run(&["admin", "cluster", "status", "--endpoint", endpoint, "--json"]).json();
    let nodes = status["nodes"].as_array().unwrap();
    assert!(nodes.iter().all(|n| n["state"] == "active"), "{status}");
    assert_eq!(status["ring_versions"][0]["nodes"].as_array().map(Vec::len), Some(4), "{status}");

    let removal = run(&["admin", "node", "remove", "--endpoint", endpoint, "--id", "node-4", "--dry-run", "--json"]);
    let removal = removal.json();
    let loses = removal["plan"]["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "node-4").expect("loses");
    assert!(loses["ranges_lost"].as_u64().is_some_and(|r| r > 0), "{removal}");
    run(&["admin", "node", "remove", "--endpoint", endpoint, "--id", "nobody"]).one_line_error("not registered");
    for i in 0..50 {
        let get = run(&["kv", "get", "--endpoint", endpoint, &format!("k{i}"), "--json"]).json();
        assert_eq!(get["siblings"], serde_json::json!(["v"]), "{get}");
    }
}
