//! The `cohort cas`, `cohort lock`, `cohort election`, `cohort config` and
//! `cohort service` command-line contract against a real `cohort dev` process — the JSON scripts parse,
//! exit codes and one-line errors — and a lock holder paused with SIGSTOP
//! past its lease (guarantee 9): the next holder writes with its token, the
//! paused holder's token is refused by the store, and the paused `lock run`
//! is told when it resumes.

#![allow(missing_docs)]

mod common;

use std::collections::BTreeSet;

use common::{Dev, Output, Proc, cohort_bin, run, start_dev};
use serde_json::Value;

fn with_endpoint(dev: &Dev, args: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend_from_slice(&["--endpoint", dev.endpoint.as_str()]);
    run(&all)
}

fn fields(value: &Value) -> BTreeSet<&str> {
    value.as_object().unwrap_or_else(|| panic!("not a JSON object: {value}")).keys().map(String::as_str).collect()
}

#[test]
fn cas_lock_and_election_print_the_documented_json_and_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev(&dir.path().join("data"));

    let absent = with_endpoint(&dev, &["cas", "get", "k", "--json"]).json();
    assert_eq!(fields(&absent), BTreeSet::from(["found", "value", "version"]));
    assert_eq!((absent["found"].as_bool(), absent["version"].as_u64()), (Some(false), Some(0)));
    let put = with_endpoint(&dev, &["cas", "put", "k", "v1", "--expect-version", "0", "--json"]).json();
    assert_eq!(put, serde_json::json!({"version": 1}));
    let stale = with_endpoint(&dev, &["cas", "put", "k", "v2", "--expect-version", "0"]);
    assert_eq!(stale.code, Some(1), "{stale:?}");
    let line = stale.one_line_error("FailedPrecondition");
    assert!(line.contains("at version 1"), "the current version is in the message: {line}");
    let read = with_endpoint(&dev, &["cas", "get", "k", "--json"]).json();
    assert_eq!(read, serde_json::json!({"found": true, "value": "v1", "version": 1}));
    let deleted = with_endpoint(&dev, &["cas", "delete", "k", "--expect-version", "1", "--json"]).json();
    assert_eq!(deleted, serde_json::json!({"version": 2}));

    let granted = with_endpoint(&dev, &["lock", "acquire", "jobs", "--ttl", "30s", "--json"]).json();
    assert!(fields(&granted).is_superset(&BTreeSet::from(["token", "lease"])), "{granted}");
    let (token, lease) = (granted["token"].as_u64().unwrap(), granted["lease"].as_u64().unwrap().to_string());
    let held = with_endpoint(&dev, &["lock", "acquire", "jobs", "--ttl", "30s"]);
    assert_eq!(held.code, Some(1));
    held.one_line_error("FailedPrecondition");
    let renewed = with_endpoint(&dev, &["lock", "renew", "jobs", "--lease", &lease, "--json"]).json();
    assert_eq!(renewed["ttl_ms"].as_u64(), Some(30_000));
    let fence = format!("jobs:{token}");
    let fenced = with_endpoint(&dev, &["cas", "put", "out", "a", "--expect-version", "0", "--fence", &fence, "--json"]);
    assert_eq!(fenced.json(), serde_json::json!({"version": 1}));
    let released = with_endpoint(&dev, &["lock", "release", "jobs", "--lease", &lease, "--json"]).json();
    assert_eq!(released, serde_json::json!({"released": true}));
    // Bad input: refused, one line, nothing held.
    let zero = with_endpoint(&dev, &["lock", "acquire", "jobs", "--ttl", "0s"]);
    assert_eq!(zero.code, Some(2), "a TTL of 0 is refused before anything is sent: {zero:?}");
    let long = with_endpoint(&dev, &["lock", "acquire", "jobs", "--ttl", "10m"]);
    long.one_line_error("InvalidArgument");
    let unknown = with_endpoint(&dev, &["cas", "put", "out", "b", "--expect-version", "1", "--fence", "nope:1"]);
    unknown.one_line_error("NotFound");

    let nobody = with_endpoint(&dev, &["election", "leader", "primary", "--json"]).json();
    assert_eq!(nobody, serde_json::json!({"found": false, "value": null, "generation": 0}));
}

#[test]
fn config_commands_print_the_documented_json_and_watch_prints_a_line_per_change() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev(&dir.path().join("data"));
    let put = with_endpoint(&dev, &["config", "put", "app/mode", "blue", "--updated-by", "ci", "--json"]).json();
    assert_eq!(fields(&put), BTreeSet::from(["version", "revision"]));
    assert_eq!(put["version"].as_u64(), Some(1), "a key's first value is version 1");
    let first = put["revision"].as_u64().unwrap();
    // Watch from the first revision: it prints what is already committed,
    // then what comes.
    let from = first.to_string();
    let watch_args =
        ["config", "watch", "app/", "--from-revision", from.as_str(), "--json", "--endpoint", dev.endpoint.as_str()];
    let mut watcher = Proc::spawn("cohort config watch", &watch_args, &[]);
    let second = with_endpoint(&dev, &["config", "put", "app/mode", "green", "--expect-version", "1", "--json"]).json();
    assert_eq!(second, serde_json::json!({"version": 2, "revision": first + 1}));
    let got = with_endpoint(&dev, &["config", "get", "app/mode", "--json"]).json();
    assert!(fields(&got).is_superset(&BTreeSet::from(["key", "value", "version", "revision"])), "{got}");
    assert_eq!((got["value"].as_str(), got["version"].as_u64()), (Some("green"), Some(2)));
    let old = with_endpoint(&dev, &["config", "get", "app/mode", "--version", "1", "--json"]).json();
    assert_eq!((old["value"].as_str(), old["updated_by"].as_str()), (Some("blue"), Some("ci")));
    let history = with_endpoint(&dev, &["config", "history", "app/mode", "--json"]).json();
    assert_eq!(history.as_array().map(Vec::len), Some(2));
    let stale = with_endpoint(&dev, &["config", "put", "app/mode", "red", "--expect-version", "1"]);
    assert_eq!(stale.code, Some(1));
    assert!(stale.one_line_error("FailedPrecondition").contains("version 2"));
    let deleted = with_endpoint(&dev, &["config", "delete", "app/mode", "--json"]).json();
    assert_eq!(deleted, serde_json::json!({"version": 3, "revision": first + 2}));
    with_endpoint(&dev, &["config", "get", "app/mode"]).one_line_error("NotFound");
    with_endpoint(&dev, &["config", "put", "", "v"]).one_line_error("InvalidArgument");

    let lines: Vec<Value> = (0..3)
        .map(|_| serde_json::from_str(&format!("{{{}", watcher.wait_for_line("{"))).expect("JSON lines"))
        .collect();
    let summary: Vec<(u64, &str, Option<&str>, Option<&str>)> = lines
        .iter()
        .map(|l| {
            (l["revision"].as_u64().unwrap(), l["kind"].as_str().unwrap(), l["value"].as_str(), l["previous"].as_str())
        })
        .collect();
    assert_eq!(
        summary,
        [
            (first, "created", Some("blue"), None),
            (first + 1, "updated", Some("green"), Some("blue")),
            (first + 2, "deleted", None, Some("green"))
        ]
    );
    for line in &lines {
        assert!(fields(line).is_superset(&BTreeSet::from(["revision", "kind", "key", "value", "previous"])), "{line}");
        assert_eq!(line["key"].as_str(), Some("app/mode"));
    }
    watcher.kill();
}

#[test]
fn service_commands_print_the_documented_json_and_refuse_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev(&dir.path().join("data"));
    let registered = with_endpoint(
        &dev,
        &[
            "service",
            "register",
            "api",
            "--id",
            "a1",
            "--address",
            "10.0.0.1:8080",
            "--tag",
            "blue",
            "--meta",
            "zone=eu",
            "--json",
        ],
    )
    .json();
    assert_eq!((registered["id"].as_str(), registered["health"].as_str()), (Some("a1"), Some("passing")));
    let listed = with_endpoint(&dev, &["service", "list", "api", "--json"]).json();
    let instances = listed.as_array().expect("a JSON list");
    assert_eq!(instances.len(), 1);
    assert!(fields(&instances[0]).is_superset(&BTreeSet::from(["id", "endpoint", "health"])), "{listed}");
    assert_eq!(
        instances[0]["endpoint"],
        serde_json::json!({"host": "10.0.0.1", "port": 8080, "protocol": "", "tls": false, "path": ""})
    );
    let none = with_endpoint(&dev, &["service", "list", "api", "--tag", "green", "--json"]).json();
    assert_eq!(none, serde_json::json!([]));
    let beat = with_endpoint(&dev, &["service", "heartbeat", "api", "--id", "a1", "--json"]).json();
    assert_eq!(beat, serde_json::json!({"health": "passing"}));
    let health = with_endpoint(&dev, &["service", "health", "api", "--json"]).json();
    assert_eq!((health["passing"].as_u64(), health["critical"].as_u64()), (Some(1), Some(0)));
    let port = with_endpoint(&dev, &["service", "register", "api", "--id", "a2", "--address", "h:70000"]);
    assert!(port.one_line_error("InvalidArgument").contains("port"));
    let scheme =
        with_endpoint(&dev, &["service", "register", "api", "--id", "a2", "--address", "h:80", "--check", "ftp://h"]);
    assert!(scheme.one_line_error("InvalidArgument").contains("scheme"));
    with_endpoint(&dev, &["service", "heartbeat", "api", "--id", "nope"]).one_line_error("NotFound");
    let gone = with_endpoint(&dev, &["service", "deregister", "api", "--id", "a1", "--json"]).json();
    assert!(gone["revision"].as_u64().is_some(), "{gone}");
    assert_eq!(with_endpoint(&dev, &["service", "list", "--all", "--json"]).json(), serde_json::json!([]));
}

#[test]
fn a_lock_holder_stopped_past_its_lease_is_fenced_and_told_when_it_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev(&dir.path().join("data"));
    // The holder writes once with its token, says so, and idles.
    let script = format!(
        "{bin} cas put report first --expect-version 0 --fence reports:$COHORT_FENCE_TOKEN --endpoint {endpoint} \
         >/dev/null && {bin} kv put report first --fence reports:$COHORT_FENCE_TOKEN --endpoint {endpoint} \
         >/dev/null && echo \"written $COHORT_FENCE_TOKEN\" && exec sleep 60",
        bin = cohort_bin(),
        endpoint = dev.endpoint
    );
    let args =
        ["lock", "run", "reports", "--ttl", "1s", "--endpoint", dev.endpoint.as_str(), "--", "sh", "-c", &script];
    let mut holder = Proc::spawn("cohort lock run", &args, &[]);
    let first: u64 = holder.wait_for_line("written ").trim().parse().expect("the holder's token");
    // Paused: its lease is not kept alive any more.
    holder.signal("STOP");
    let next = with_endpoint(&dev, &["lock", "acquire", "reports", "--ttl", "30s", "--wait", "20s", "--json"]).json();
    let second = next["token"].as_u64().expect("a token");
    assert!(second > first, "tokens grow: {first} then {second}");
    let fence = format!("reports:{second}");
    let written = with_endpoint(&dev, &["cas", "put", "report", "second", "--expect-version", "1", "--fence", &fence]);
    assert!(written.success(), "{written:?}");
    let written = with_endpoint(&dev, &["kv", "put", "report", "second", "--fence", &fence]);
    assert!(written.success(), "{written:?}");
    // Whatever the paused holder writes with its token is refused.
    let stale_fence = format!("reports:{first}");
    for expect in ["1", "2"] {
        let stale =
            with_endpoint(&dev, &["cas", "put", "report", "late", "--expect-version", expect, "--fence", &stale_fence]);
        let line = stale.one_line_error("FailedPrecondition");
        assert!(line.contains("fenced"), "{line}");
    }
    for command in [&["kv", "put", "report", "late"][..], &["kv", "delete", "report"][..]] {
        let stale = with_endpoint(&dev, &[command, &["--fence", &stale_fence]].concat());
        let line = stale.one_line_error("FailedPrecondition");
        assert!(line.contains("fenced: token"), "{line}");
    }
    // Resumed, it learns that its lease is gone, stops its command and
    // exits non-zero.
    holder.signal("CONT");
    let ended = holder.try_wait_for_line("never printed").expect_err("lock run ends");
    assert!(ended.contains("exited"), "{ended}");
    assert!(!ended.contains("exit status: 0"), "lock run must fail once the lock is lost: {ended}");
    let said = holder.final_stderr();
    assert!(said.contains("lost lock"), "lock run says it lost the lock: {said}");
    let read = with_endpoint(&dev, &["cas", "get", "report", "--json"]).json();
    assert_eq!(read, serde_json::json!({"found": true, "value": "second", "version": 2}));
    let read = with_endpoint(&dev, &["kv", "get", "report", "--consistency", "all", "--json"]).json();
    assert_eq!(read["siblings"], serde_json::json!(["second"]), "the newer holder's value alone: {read}");
}
