//! Invariant 5 (DESIGN.md §5): an idempotent retry never applies a write
//! twice — not when retried through another coordinator, not when duplicates
//! race — and an idempotency key reused for a different request is refused.

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
    merged.clock().iter().map(|(_, counter)| counter).sum()
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
    let error = client.delete(TENANT, "k", with_key("req")).await.expect_err("different operation");
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
