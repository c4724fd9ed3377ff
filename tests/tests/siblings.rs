//! Guarantee 2: concurrent writes (same or empty context) are
//! all kept as siblings; a write whose context covers the siblings it read
//! replaces exactly those.

use cohort_client::WriteOptions;
use cohort_proto::v1 as pb;
use cohort_proto::v1::admin_client::AdminClient;
use cohort_proto::v1::key_value_client::KeyValueClient;
use cohort_tests::{TENANT, TestCluster, client_for, strings, values_of};

async fn concurrent_writes_through_two_coordinators_become_siblings_then_resolve(cluster: TestCluster) {
    let second = cluster.add_coordinator().await.expect("second coordinator");
    let (a, b) = (cluster.client().await, client_for(&second.endpoint()).await);

    // Blind writes, concurrently, through different coordinators.
    let (left, right) = tokio::join!(a.put(TENANT, "cart", "apple"), b.put(TENANT, "cart", "pear"));
    left.expect("write through coordinator 1");
    right.expect("write through coordinator 2");
    let read = a.get(TENANT, "cart").await.expect("read");
    assert_eq!(strings(&read.siblings), ["apple", "pear"]);
    assert_eq!(read.receipt.as_ref().map(|r| r.siblings), Some(2));

    // Two writers that read the same state both write with its context:
    // neither saw the other, so both are kept, and the old siblings go.
    let (left, right) = tokio::join!(
        a.put_with(TENANT, "cart", "apple+pear", WriteOptions { context: read.context.clone(), ..Default::default() }),
        b.put_with(TENANT, "cart", "pear+apple", WriteOptions { context: read.context.clone(), ..Default::default() }),
    );
    left.expect("write 1");
    right.expect("write 2");
    let read = b.get(TENANT, "cart").await.expect("read");
    assert_eq!(strings(&read.siblings), ["apple+pear", "pear+apple"]);

    // One write with the merged context resolves them into one value.
    let options = WriteOptions { context: read.context, ..Default::default() };
    a.put_with(TENANT, "cart", "apple+pear", options).await.expect("resolving write");
    let read = b.get(TENANT, "cart").await.expect("read");
    assert_eq!(strings(&read.siblings), ["apple+pear"]);
    second.stop().await;
    cluster.shutdown().await;
}

async fn a_write_replaces_only_what_its_context_covers(cluster: TestCluster) {
    let client = cluster.client().await;
    client.put(TENANT, "k", "v1").await.expect("write");
    let seen = client.get(TENANT, "k").await.expect("read");
    // Someone else writes after our read.
    client.put(TENANT, "k", "other").await.expect("concurrent blind write");
    // Our write replaces v1 (which we saw) but not "other" (which we did not).
    let options = WriteOptions { context: seen.context, ..Default::default() };
    client.put_with(TENANT, "k", "v2", options).await.expect("write with context");
    let read = client.get(TENANT, "k").await.expect("read");
    assert_eq!(strings(&read.siblings), ["other", "v2"]);
    cluster.shutdown().await;
}

async fn many_concurrent_blind_writers_all_survive(cluster: TestCluster) {
    let client = cluster.client().await;
    let writes = (0..24).map(|i| {
        let client = client.clone();
        async move { client.put(TENANT, "hot", format!("w{i:02}")).await }
    });
    for result in futures::future::join_all(writes).await {
        result.expect("every write is acknowledged");
    }
    let read = client.get(TENANT, "hot").await.expect("read");
    let expected: Vec<String> = (0..24).map(|i| format!("w{i:02}")).collect();
    assert_eq!(strings(&read.siblings), expected);
    // After the read (and its repair), the replicas agree on the merged state.
    cohort_tests::eventually("replicas converge", std::time::Duration::from_secs(10), || async {
        let states = cluster.replica_states("hot").await;
        states.iter().all(|s| values_of(s) == expected)
    })
    .await;
    cluster.shutdown().await;
}

cohort_tests::on_both_transports!(
    concurrent_writes_through_two_coordinators_become_siblings_then_resolve,
    a_write_replaces_only_what_its_context_covers,
    many_concurrent_blind_writers_all_survive,
);

/// F6: 130 blind writes to one key were all accepted. Past the tenant's cap
/// a write that would add a sibling is refused, saying how to resolve;
/// nothing is stored, the key stays readable, and one write with the read's
/// context resolves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blind_writes_past_the_sibling_cap_are_refused_and_one_context_write_resolves_them() {
    let cluster = TestCluster::start().await;
    let mut admin = AdminClient::connect(cluster.endpoint()).await.expect("admin");
    let create = pb::CreateTenantRequest { id: "capped".into(), replication: 3, max_siblings: 5, ..Default::default() };
    assert_eq!(admin.create_tenant(create).await.expect("create").into_inner().max_siblings, 5);
    let client = cluster.client().await;
    for i in 0..5 {
        let written = client.put("capped", "k", "same").await.expect("under the cap");
        // Receipts count raw siblings: equal bytes are still separate writes.
        assert_eq!(written.receipt.expect("receipt").siblings, i + 1);
    }
    let error = client.put("capped", "k", "one more").await.expect_err("past the cap");
    assert_eq!(error.code(), Some(tonic::Code::FailedPrecondition), "{error}");
    assert!(error.to_string().contains("6 siblings, the limit is 5"), "{error}");
    assert!(error.to_string().contains("write back one value with its context"), "{error}");
    let read = client.get("capped", "k").await.expect("the key stays readable");
    assert_eq!(strings(&read.siblings), ["same"; 5], "nothing was stored past the cap");
    assert_eq!(read.receipt.as_ref().map(|r| r.siblings), Some(5));
    let options = WriteOptions { context: read.context, ..Default::default() };
    let resolved = client.put_with("capped", "k", "resolved", options).await.expect("one write resolves");
    assert_eq!(resolved.receipt.expect("receipt").siblings, 1);
    assert_eq!(strings(&client.get("capped", "k").await.expect("read").siblings), ["resolved"]);
    cluster.shutdown().await;
}

/// F8: `delete` without a context printed "deleted" and the value stayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_deletes_what_it_read_and_a_delete_without_a_context_is_refused() {
    let cluster = TestCluster::start().await;
    let client = cluster.client().await;
    client.put(TENANT, "k", "v").await.expect("write");
    client.put(TENANT, "k", "w").await.expect("a sibling");
    let mut kv = KeyValueClient::connect(cluster.endpoint()).await.expect("connect");
    let bare = pb::DeleteRequest { tenant: TENANT.into(), key: "k".into(), ..Default::default() };
    let status = kv.delete(bare).await.expect_err("a delete without a context");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{}", status.message());
    assert!(status.message().contains("needs the context of a read"), "{}", status.message());
    assert_eq!(strings(&client.get(TENANT, "k").await.expect("read").siblings), ["v", "w"], "nothing deleted");

    assert!(client.delete(TENANT, "k").await.expect("delete").is_some());
    let read = client.get(TENANT, "k").await.expect("read");
    assert!(!read.found(), "the key is gone: {:?}", read.siblings);
    assert!(client.delete(TENANT, "never-written").await.expect("delete").is_none(), "nothing to delete");
    cluster.shutdown().await;
}
