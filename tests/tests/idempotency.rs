//! Guarantee 5: an idempotent retry never applies a write
//! twice — not when retried through another coordinator, not when duplicates
//! race, not when the first attempt's outcome was unknown — and an
//! idempotency key reused for a different request is refused.

use cohort_client::{Client, WriteOptions};
use cohort_tests::{TENANT, TestCluster, client_for, strings};
use tonic::Code;

fn with_key(key: &str) -> WriteOptions {
    WriteOptions { idempotency_key: Some(key.into()), ..Default::default() }
}

/// How many writes the replicas have seen for `key`: the sum of the merged
/// clock's counters (each write is exactly one dot).
async fn writes_seen(cluster: &TestCluster, key: &str) -> u64 {
    let states = cluster.replica_states(key).await;
    let merged = cohort_coordinator::kv::merge_answers(states.iter());
    merged.clock().iter().map(|(_, counter)| counter).sum::<u64>() + merged.clock().cloud().count() as u64
}

/// Whether the server marked the failure as a write that may have applied.
fn outcome_unknown(error: &cohort_client::Error) -> bool {
    match error {
        cohort_client::Error::Status(status) => {
            status.metadata().get(cohort_coordinator::error::OUTCOME_HEADER).is_some_and(|v| v == "unknown")
        }
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_through_another_coordinator_returns_the_first_answer() {
    let cluster = TestCluster::start().await;
    let second = cluster.add_coordinator().await.expect("second coordinator");
    let (a, b) = (cluster.client().await, client_for(&second.endpoint()).await);

    let first = a.put_with(TENANT, "order", "paid", with_key("req-1")).await.expect("first attempt");
    assert!(!first.duplicate);
    let retry = b.put_with(TENANT, "order", "paid", with_key("req-1")).await.expect("retry");
    assert!(retry.duplicate, "the retry is marked as a replay");
    assert_eq!(retry.context, first.context, "the retry returns the stored answer");
    assert_eq!(writes_seen(&cluster, "order").await, 1, "applied once");
    assert_eq!(strings(&a.get(TENANT, "order").await.expect("read").siblings), ["paid"]);
    second.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_duplicates_execute_once() {
    let cluster = TestCluster::start().await;
    let second = cluster.add_coordinator().await.expect("second coordinator");
    let clients: Vec<Client> = vec![cluster.client().await, client_for(&second.endpoint()).await];
    let attempts = (0..16).map(|i| {
        let client = clients[i % 2].clone();
        async move { client.put_with(TENANT, "once", "v", with_key("race")).await }
    });
    let results: Vec<_> = futures::future::join_all(attempts).await;
    let originals = results.iter().filter(|r| r.as_ref().is_ok_and(|w| !w.duplicate)).count();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(originals, 1, "exactly one attempt executed");
    assert_eq!(writes_seen(&cluster, "once").await, 1);
    second.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_for_another_request_is_refused_and_changes_nothing() {
    let cluster = TestCluster::start().await;
    let client = cluster.client().await;
    client.put_with(TENANT, "k", "v1", with_key("req")).await.expect("first");
    let error = client.put_with(TENANT, "k", "v2", with_key("req")).await.expect_err("different body");
    assert_eq!(error.code(), Some(Code::FailedPrecondition), "{error}");
    let context = client.get(TENANT, "k").await.expect("read").context;
    let delete = WriteOptions { context, ..with_key("req") };
    let error = client.delete_with(TENANT, "k", delete).await.expect_err("different operation");
    assert_eq!(error.code(), Some(Code::FailedPrecondition), "{error}");
    assert_eq!(strings(&client.get(TENANT, "k").await.expect("read").siblings), ["v1"]);
    assert_eq!(writes_seen(&cluster, "k").await, 1);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_can_be_retried() {
    let mut cluster = TestCluster::start().await;
    let client = cluster.client().await;
    cluster.stop_node(1).await;
    cluster.stop_node(2).await;
    let error = client.put_with(TENANT, "k", "v", with_key("retry-me")).await.expect_err("no quorum");
    assert_eq!(error.code(), Some(Code::Unavailable));
    cluster.restart_node(1).await.expect("restart");
    cluster.restart_node(2).await.expect("restart");
    let retry = client.put_with(TENANT, "k", "v", with_key("retry-me")).await.expect("retry succeeds");
    assert!(!retry.duplicate, "a failed attempt recorded nothing to replay");
    assert_eq!(strings(&client.get(TENANT, "k").await.expect("read").siblings), ["v"]);
    cluster.shutdown().await;
}

/// F3, scenario A: a write reached only its coordinating replica; the claim
/// was released, the retry was issued anew by another replica, the client
/// replaced that copy, and the first copy came back as a revived sibling.
/// Now the claim is kept, a retry while that replica is away stays unknown,
/// and the retry after it returns replicates the first attempt's version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_unknown_write_retried_with_its_key_applies_once_and_stays_replaced() {
    let mut cluster = TestCluster::start().await;
    let client = cluster.client().await;
    cluster.stop_node(1).await;
    cluster.stop_node(2).await;
    let error = client.put_with(TENANT, "k", "v", with_key("req-a")).await.expect_err("no quorum");
    assert_eq!(error.code(), Some(Code::Unavailable), "{error}");
    assert!(outcome_unknown(&error), "node 1 issued the version, so the outcome is unknown: {error}");

    // The only replica that may hold it is away: the retry cannot know, and
    // issues nothing.
    cluster.restart_node(1).await.expect("restart");
    cluster.restart_node(2).await.expect("restart");
    cluster.stop_node(0).await;
    let error = client.put_with(TENANT, "k", "v", with_key("req-a")).await.expect_err("still unknown");
    assert!(outcome_unknown(&error), "{error}");
    assert_eq!(writes_seen(&cluster, "k").await, 0, "the replicas that answered issued nothing");

    cluster.restart_node(0).await.expect("restart");
    let settled = client.put_with(TENANT, "k", "v", with_key("req-a")).await.expect("settled");
    assert!(!settled.duplicate);
    assert_eq!(settled.receipt.as_ref().map(|r| r.replicas.len()), Some(3), "replicated to every replica");
    let read = client.get(TENANT, "k").await.expect("read");
    assert_eq!(strings(&read.siblings), ["v"]);
    assert_eq!(writes_seen(&cluster, "k").await, 1, "applied once");
    let replay = client.put_with(TENANT, "k", "v", with_key("req-a")).await.expect("replay");
    assert!(replay.duplicate, "the settled answer is recorded");

    let options = WriteOptions { context: read.context, ..Default::default() };
    client.put_with(TENANT, "k", "v2", options).await.expect("replace");
    let all = cohort_client::ReadOptions { consistency: Some(cohort_client::Consistency::All) };
    assert_eq!(strings(&client.get_with(TENANT, "k", all).await.expect("read all").siblings), ["v2"]);
    cluster.shutdown().await;
}

/// F3, scenario B: a coordinating replica whose sync failed, with peers out
/// of reach, acknowledged nothing — and the write was labelled "not
/// applied", so the SDK retried it by itself. It had been issued: the
/// outcome is unknown, and the SDK does not retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_issued_but_acknowledged_by_nobody_is_reported_unknown_and_not_retried() {
    let mut cluster = TestCluster::start().await;
    let retrying = Client::connect(cluster.endpoint()).await.expect("connect");
    cluster.stop_node(1).await;
    cluster.stop_node(2).await;
    cluster.node_store(0).expect("node 1 runs").inject_disk_failure();
    let error = retrying.put(TENANT, "k", "v").await.expect_err("nothing acknowledged");
    assert_eq!(error.code(), Some(Code::Unavailable), "{error}");
    assert!(error.to_string().contains("got 0 of 2"), "{error}");
    assert!(outcome_unknown(&error), "{error}");
    let store = cluster.node_store(0).expect("node 1 runs");
    assert!(store.is_poisoned());
    assert!(store.write_record(b"none").is_err(), "a poisoned node answers nothing");
    cluster.shutdown().await;
}
