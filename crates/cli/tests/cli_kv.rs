//! The `cohort kv` and `cohort admin` command-line contract, run against a
//! real `cohort dev` process: the JSON that scripts parse, where a value comes
//! from (argument, stdin, base64), siblings and contexts (guarantee
//! 2), deletes, idempotent retries (guarantee 5), and failures that
//! exit non-zero with one `error: <gRPC code>: …` line on stderr.

#![allow(missing_docs)]

mod common;

use std::collections::BTreeSet;

use common::{Dev, Output, run, run_with_stdin, start_dev};
use serde_json::Value;

/// Runs `cohort kv <command> --endpoint … <args>`.
fn kv(dev: &Dev, command: &str, args: &[&str]) -> Output {
    let mut all = vec!["kv", command, "--endpoint", dev.endpoint.as_str()];
    all.extend_from_slice(args);
    run(&all)
}

/// Runs `cohort admin <group> <command> --endpoint … <args>`.
fn admin(dev: &Dev, group: &str, command: &str, args: &[&str]) -> Output {
    let mut all = vec!["admin", group, command, "--endpoint", dev.endpoint.as_str()];
    all.extend_from_slice(args);
    run(&all)
}

/// The keys of a JSON object.
fn keys(value: &Value) -> BTreeSet<&str> {
    value.as_object().unwrap_or_else(|| panic!("not a JSON object: {value}")).keys().map(String::as_str).collect()
}

/// Parses `kv get --json` output, checking its shape: exactly `found`,
/// `siblings` and `context` (plus the optional `receipt`), typed as promised.
fn get_json(output: &Output) -> (bool, Vec<String>, String) {
    assert_eq!(output.stdout.lines().count(), 1, "get --json prints one line: {output:?}");
    let value = output.json();
    let mut fields = keys(&value);
    fields.remove("receipt");
    assert_eq!(fields, BTreeSet::from(["found", "siblings", "context"]), "get --json fields: {value}");
    let found = value["found"].as_bool().unwrap_or_else(|| panic!("found is not a bool: {value}"));
    let siblings = value["siblings"]
        .as_array()
        .unwrap_or_else(|| panic!("siblings is not an array: {value}"))
        .iter()
        .map(|s| s.as_str().unwrap_or_else(|| panic!("a sibling is not a string: {value}")).to_string())
        .collect::<Vec<_>>();
    let context = value["context"].as_str().unwrap_or_else(|| panic!("context is not a string: {value}")).to_string();
    assert_eq!(found, !siblings.is_empty(), "found must say whether there are siblings: {value}");
    (found, siblings, context)
}

/// Parses `kv put --json` / `kv delete --json` output: `(context, duplicate)`.
fn write_json(output: &Output) -> (String, bool) {
    assert_eq!(output.stdout.lines().count(), 1, "--json prints one line: {output:?}");
    let value = output.json();
    let context = value["context"].as_str().unwrap_or_else(|| panic!("context is not a string: {value}")).to_string();
    let duplicate = value["duplicate"].as_bool().unwrap_or_else(|| panic!("duplicate is not a bool: {value}"));
    (context, duplicate)
}

fn sorted(mut values: Vec<String>) -> Vec<String> {
    values.sort();
    values
}

#[test]
fn put_and_get_print_the_documented_json_and_take_values_from_args_stdin_and_base64() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev(&dir.path().join("data"));

    let missing = kv(&dev, "get", &["never-written", "--json"]);
    let (found, siblings, _) = get_json(&missing);
    assert!(!found && siblings.is_empty(), "{missing:?}");

    let put = kv(&dev, "put", &["greeting", "hello", "--json"]);
    let (context, duplicate) = write_json(&put);
    assert!(!context.is_empty() && !duplicate, "{put:?}");
    let (found, siblings, read_context) = get_json(&kv(&dev, "get", &["greeting", "--json"]));
    assert!(found);
    assert_eq!(siblings, ["hello"]);
    assert_eq!(read_context, context, "a read after one write sees exactly that write's context");

    // The plain output is the value itself on stdout.
    let plain = kv(&dev, "get", &["greeting"]);
    assert!(plain.success(), "{plain:?}");
    assert_eq!(plain.stdout, "hello\n");

    // VALUE `-` reads the value from standard input, byte for byte.
    let piped = run_with_stdin(
        &["kv", "put", "--endpoint", &dev.endpoint, "from-stdin", "-", "--json"],
        Some(b"line one\nline two"),
    );
    write_json(&piped);
    let (_, siblings, _) = get_json(&kv(&dev, "get", &["from-stdin", "--json"]));
    assert_eq!(siblings, ["line one\nline two"]);

    // --base64 carries bytes that are not UTF-8, both ways.
    let binary = "AP+AAQL+/w=="; // 00 ff 80 01 02 fe ff
    write_json(&kv(&dev, "put", &["binary", binary, "--base64", "--json"]));
    let (_, siblings, _) = get_json(&kv(&dev, "get", &["binary", "--base64", "--json"]));
    assert_eq!(siblings, [binary]);
    // Without --base64 such a value cannot be printed: a clear failure.
    kv(&dev, "get", &["binary", "--json"]).one_line_error("--base64");
    kv(&dev, "put", &["bad-base64", "not base64!", "--base64"]).one_line_error("base64");
}

#[test]
fn blind_puts_become_siblings_and_a_put_or_delete_with_context_replaces_them() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev(&dir.path().join("data"));

    write_json(&kv(&dev, "put", &["cart", "apple", "--json"]));
    write_json(&kv(&dev, "put", &["cart", "pear", "--json"]));
    let (found, siblings, context) = get_json(&kv(&dev, "get", &["cart", "--json"]));
    assert!(found);
    assert_eq!(sorted(siblings), ["apple", "pear"], "two blind writes are both kept");

    // The plain output lists every sibling on stdout.
    let plain = kv(&dev, "get", &["cart"]);
    assert!(plain.success(), "{plain:?}");
    assert_eq!(sorted(plain.stdout.lines().map(String::from).collect()), ["apple", "pear"]);

    // Writing back with the read's context replaces exactly what was read.
    let (merged_context, _) = write_json(&kv(&dev, "put", &["cart", "apple+pear", "--context", &context, "--json"]));
    let (_, siblings, context) = get_json(&kv(&dev, "get", &["cart", "--json"]));
    assert_eq!(siblings, ["apple+pear"]);
    assert_eq!(context, merged_context);

    // A delete with the read's context removes the key.
    write_json(&kv(&dev, "delete", &["cart", "--context", &context, "--json"]));
    let (found, siblings, _) = get_json(&kv(&dev, "get", &["cart", "--json"]));
    assert!(!found && siblings.is_empty(), "deleted key is not found");

    // A context that is not base64url is refused before anything is sent.
    kv(&dev, "put", &["cart", "x", "--context", "!!!"]).one_line_error("context");
    let (found, _, _) = get_json(&kv(&dev, "get", &["cart", "--json"]));
    assert!(!found, "a refused write stores nothing");
}

/// F8: `cohort kv delete k` without a context printed "deleted" and the
/// value stayed. It now reads the key and deletes what it read.
#[test]
fn delete_without_a_context_deletes_what_it_reads() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev(&dir.path().join("data"));
    write_json(&kv(&dev, "put", &["gone", "a", "--json"]));
    write_json(&kv(&dev, "put", &["gone", "b", "--json"]));
    let deleted = kv(&dev, "delete", &["gone"]);
    assert!(deleted.success() && deleted.stdout.starts_with("deleted"), "{deleted:?}");
    let (found, siblings, _) = get_json(&kv(&dev, "get", &["gone", "--json"]));
    assert!(!found && siblings.is_empty(), "both siblings are deleted: {siblings:?}");

    let nothing = kv(&dev, "delete", &["never-written"]);
    assert!(nothing.success() && nothing.stdout.contains("nothing to delete"), "{nothing:?}");
    let json = kv(&dev, "delete", &["never-written", "--json"]).json();
    assert_eq!(json["deleted"], serde_json::json!(false), "{json}");
}

#[test]
fn an_idempotency_key_replays_the_first_answer_and_refuses_a_different_request() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev(&dir.path().join("data"));

    let first = kv(&dev, "put", &["counter", "1", "--idempotency-key", "req-1", "--json"]);
    let (first_context, duplicate) = write_json(&first);
    assert!(!duplicate, "{first:?}");
    let again = kv(&dev, "put", &["counter", "1", "--idempotency-key", "req-1", "--json"]);
    let (again_context, duplicate) = write_json(&again);
    assert!(duplicate, "the retry is reported as a replay: {again:?}");
    assert_eq!(again_context, first_context, "the replay returns the first answer");

    // The value is there once, and the key's clock shows a single write.
    let (_, siblings, context) = get_json(&kv(&dev, "get", &["counter", "--json"]));
    assert_eq!(siblings, ["1"]);
    assert_eq!(context, first_context, "the replay issued no new version");

    // The plain output says it was a replay.
    let plain = kv(&dev, "put", &["counter", "1", "--idempotency-key", "req-1"]);
    assert!(plain.success() && plain.stdout.contains("replayed"), "{plain:?}");

    // The same idempotency key with another request is refused, and nothing changes.
    kv(&dev, "put", &["counter", "2", "--idempotency-key", "req-1"]).one_line_error("FailedPrecondition");
    let (_, siblings, context) = get_json(&kv(&dev, "get", &["counter", "--json"]));
    assert_eq!(siblings, ["1"]);
    assert_eq!(context, first_context);
}

#[test]
fn request_errors_exit_non_zero_with_one_line_naming_the_status() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev(&dir.path().join("data"));

    kv(&dev, "get", &["k", "--tenant", "Not_Valid"]).one_line_error("InvalidArgument");
    kv(&dev, "put", &["k", "v", "--tenant", "Not_Valid"]).one_line_error("InvalidArgument");
    kv(&dev, "get", &["k", "--tenant", "nosuch"]).one_line_error("NotFound");
    kv(&dev, "put", &["k", "v", "--tenant", "nosuch"]).one_line_error("NotFound");
    kv(&dev, "delete", &["k", "--tenant", "nosuch"]).one_line_error("NotFound");
    kv(&dev, "put", &["", "v"]).one_line_error("InvalidArgument");
    let too_long = "k".repeat(2000);
    kv(&dev, "put", &[&too_long, "v"]).one_line_error("InvalidArgument");
    // Consistency above N is a bad request, not an outage.
    kv(&dev, "get", &["k", "--consistency", "5"]).one_line_error("InvalidArgument");

    // Nothing was stored by any of them.
    let (found, _, _) = get_json(&kv(&dev, "get", &["k", "--json"]));
    assert!(!found);

    // A coordinator that is not there: a one-line connection error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let output = run(&["kv", "get", "--endpoint", &nobody, "k"]);
    output.one_line_error("cannot connect");
}

#[test]
fn admin_tenant_commands_create_show_list_and_update_with_optimistic_versions() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev(&dir.path().join("data"));

    let created = admin(&dev, "tenant", "create", &["app", "--replication", "3", "--json"]).json();
    assert_eq!(
        created,
        serde_json::json!({
            "id": "app", "replication": 3, "read": 2, "write": 2, "max_siblings": 100, "sloppy_quorum": false,
            "version": 1
        })
    );
    assert_eq!(admin(&dev, "tenant", "get", &["app", "--json"]).json(), created);

    let listed = admin(&dev, "tenant", "list", &["--json"]).json();
    let ids: BTreeSet<&str> =
        listed.as_array().expect("list --json is an array").iter().filter_map(|t| t["id"].as_str()).collect();
    assert_eq!(ids, BTreeSet::from(["app", "default"]));

    let updated = admin(&dev, "tenant", "update", &["app", "--expected-version", "1", "--read", "3", "--json"]).json();
    assert_eq!(
        updated,
        serde_json::json!({
            "id": "app", "replication": 3, "read": 3, "write": 2, "max_siblings": 100, "sloppy_quorum": false,
            "version": 2
        })
    );
    let sloppy = ["app", "--expected-version", "2", "--sloppy-quorum", "true", "--json"];
    let updated = admin(&dev, "tenant", "update", &sloppy).json();
    assert_eq!(
        (&updated["sloppy_quorum"], &updated["read"], &updated["version"]),
        (&serde_json::json!(true), &serde_json::json!(3), &serde_json::json!(3))
    );
    // A stale version is refused and changes nothing.
    admin(&dev, "tenant", "update", &["app", "--expected-version", "1", "--write", "3"])
        .one_line_error("FailedPrecondition");
    assert_eq!(admin(&dev, "tenant", "get", &["app", "--json"]).json(), updated);

    admin(&dev, "tenant", "create", &["app"]).one_line_error("AlreadyExists");
    admin(&dev, "tenant", "create", &["Bad_Name"]).one_line_error("InvalidArgument");
    admin(&dev, "tenant", "create", &["big", "--replication", "9"]).one_line_error("InvalidArgument");
    admin(&dev, "tenant", "get", &["nosuch"]).one_line_error("NotFound");

    // The new tenant serves keys with its own quorums (R=3 now).
    write_json(&kv(&dev, "put", &["k", "v", "--tenant", "app", "--json"]));
    let output = kv(&dev, "get", &["k", "--tenant", "app", "--json"]);
    let (_, siblings, _) = get_json(&output);
    assert_eq!(siblings, ["v"]);
    assert_eq!(output.json()["receipt"]["required"], 3, "reads use the updated R: {output:?}");
}

#[test]
fn admin_cluster_status_json_has_the_documented_shape() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev(&dir.path().join("data"));

    // The leader records each node's health (`null` until then) as it
    // probes; poll until its first round is recorded.
    let polling = std::time::Instant::now();
    let status = loop {
        let status = admin(&dev, "cluster", "status", &["--json"]).json();
        if status["nodes"].as_array().is_some_and(|nodes| nodes.iter().all(|n| !n["health"].is_null())) {
            break status;
        }
        // Each status call is a process start: the poll paces itself.
        assert!(polling.elapsed() < std::time::Duration::from_secs(10), "no health recorded in 10 s: {status}");
    };
    let top = ["leader", "ring_version", "nodes", "workers", "ring_versions", "migrations"];
    assert_eq!(keys(&status), BTreeSet::from(top), "{status}");
    let workers: Vec<&str> =
        status["workers"].as_array().expect("workers is an array").iter().filter_map(|w| w["name"].as_str()).collect();
    let names = [
        "anti-entropy",
        "idempotency-purge",
        "leader-election",
        "membership",
        "node-probe",
        "registry-health",
        "ring-refresh",
    ];
    assert_eq!(workers, names, "{status}");
    let live = status["ring_versions"].as_array().expect("ring_versions is an array");
    assert_eq!(live.len(), 1, "one live ring version when nothing moves: {status}");
    assert_eq!(live[0]["version"], status["ring_version"], "{status}");
    let shares: f64 = live[0]["nodes"].as_array().unwrap().iter().filter_map(|n| n["share"].as_f64()).sum();
    assert!((shares - 1.0).abs() < 1e-6, "the shares cover the ring: {status}");
    assert_eq!(status["migrations"], serde_json::json!([]), "{status}");
    for worker in status["workers"].as_array().unwrap() {
        let fields = BTreeSet::from(["name", "state", "steps", "errors", "last_error", "last_step_at_ms"]);
        assert_eq!(keys(worker), fields, "{worker}");
    }
    assert_eq!(keys(&status["leader"]), BTreeSet::from(["id", "generation"]), "{status}");
    assert_eq!(status["leader"]["id"], "coordinator-1", "the dev coordinator leads: {status}");
    assert!(status["leader"]["generation"].as_u64().is_some_and(|g| g >= 1), "{status}");
    assert!(status["ring_version"].as_u64().is_some(), "{status}");
    let nodes = status["nodes"].as_array().expect("nodes is an array");
    let ids: Vec<&str> = nodes.iter().filter_map(|n| n["id"].as_str()).collect();
    assert_eq!(ids, ["node-1", "node-2", "node-3"], "{status}");
    for node in nodes {
        assert!(keys(node).is_superset(&BTreeSet::from(["id", "address", "state", "health"])), "{node}");
        assert_eq!(node["state"], "active", "{node}");
        let address = node["address"].as_str().expect("address is a string");
        assert!(address.starts_with("127.0.0.1:"), "{node}");
        let health = &node["health"];
        assert_eq!(keys(health), BTreeSet::from(["up", "checked_at_ms", "generation"]), "{node}");
        assert_eq!(health["up"], true, "the dev nodes answer: {node}");
        assert!(health["checked_at_ms"].as_u64().is_some_and(|t| t > 0), "{node}");
        assert_eq!(health["generation"], status["leader"]["generation"], "recorded by the leader: {node}");
    }

    // `admin node list --json` agrees with the status, which adds health.
    let listed = admin(&dev, "node", "list", &["--json"]).json();
    let mut registered = status["nodes"].clone();
    registered.as_array_mut().expect("nodes is an array").iter_mut().for_each(|node| {
        node.as_object_mut().expect("a node is an object").remove("health");
    });
    assert_eq!(listed, registered);
}

#[test]
fn admin_repair_commands_repair_a_node_and_report_per_node_and_range() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev(&dir.path().join("data"));
    write_json(&kv(&dev, "put", &["k", "v", "--json"]));

    let repaired = admin(&dev, "repair", "node", &["node-1", "--json"]).json();
    let fields =
        ["ranges", "differing_segments", "keys_compared", "keys_repaired", "bytes", "unreachable", "tombstones_reaped"];
    assert_eq!(keys(&repaired), BTreeSet::from(fields), "{repaired}");
    assert!(repaired["ranges"].as_u64().is_some_and(|r| r > 0), "{repaired}");
    assert_eq!(repaired["unreachable"], serde_json::json!([]), "{repaired}");
    let one = admin(&dev, "repair", "range", &["0", "1000", "--tenant", "default", "--json"]).json();
    assert!(one["ranges"].as_u64().is_some_and(|r| r >= 1), "{one}");

    let status = admin(&dev, "repair", "status", &["--json"]).json();
    let top = ["leader", "state", "round", "round_started_ms", "round_total", "round_done", "nodes", "ranges"];
    assert_eq!(keys(&status), BTreeSet::from(top), "{status}");
    assert_eq!(status["leader"], true, "the dev coordinator leads: {status}");
    let nodes = status["nodes"].as_array().expect("nodes is an array");
    assert_eq!(nodes.len(), 3, "{status}");
    for node in nodes {
        let fields = ["id", "ranges", "last_exchange_ms", "keys_repaired", "backlog"];
        assert_eq!(keys(node), BTreeSet::from(fields), "{node}");
    }
    let node_1 = nodes.iter().find(|n| n["id"] == "node-1").expect("node-1");
    assert!(node_1["last_exchange_ms"].as_u64().is_some(), "every range of node-1 was just exchanged: {node_1}");
    let range = &status["ranges"].as_array().expect("ranges is an array")[0];
    let fields = [
        "tenant",
        "start",
        "end",
        "replicas",
        "last_exchange_ms",
        "exchanges",
        "last_keys_repaired",
        "keys_repaired",
        "differing_segments",
        "unreachable",
        "tombstones_reaped",
        "gc_blocked",
    ];
    assert_eq!(keys(range), BTreeSet::from(fields), "{range}");

    admin(&dev, "repair", "node", &["nobody"]).one_line_error("NotFound");
    admin(&dev, "repair", "range", &["9", "1"]).one_line_error("InvalidArgument");
    admin(&dev, "repair", "node", &["node-1", "--tenant", "nosuch"]).one_line_error("NotFound");
}
