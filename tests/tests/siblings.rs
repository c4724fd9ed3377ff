//! Invariant 2 (DESIGN.md §5): concurrent writes (same or empty context) are
//! all kept as siblings; a write whose context covers the siblings it read
//! replaces exactly those.

use cohort_client::WriteOptions;
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
