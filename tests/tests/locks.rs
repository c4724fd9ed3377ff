//! Guarantees 8 and 9 for locks, leases and election: fencing tokens
//! strictly increase per lock; a holder that lost its lease (paused past
//! its TTL) cannot write once a newer holder has — the store refuses it,
//! atomically with the write; election generations grow on failover and
//! observers see every leader in order; bad input changes nothing.

use std::time::Duration;

use bytes::Bytes;
use cohort_client::{CasWrite, Consistency, Error, Fence, LockOptions, ReadOptions, WriteOptions};
use cohort_loadtest::locking::{self, FencedStore, LockWorkload};
use cohort_tests::{TENANT, TestCluster, on_both_transports};
use tokio_stream::StreamExt;
use tonic::Code;

on_both_transports!(
    a_holder_paused_past_its_lease_cannot_write_after_the_next_holder,
    a_holder_paused_past_its_lease_cannot_write_a_kv_key_after_the_next_holder,
    election_failover_raises_the_generation_and_observers_see_each_leader,
    bad_lock_input_changes_nothing,
);

fn options(ttl_ms: u64, wait: Option<Duration>) -> LockOptions {
    LockOptions { ttl: Duration::from_millis(ttl_ms), wait }
}

async fn a_holder_paused_past_its_lease_cannot_write_after_the_next_holder(cluster: TestCluster) {
    let client = cluster.client().await;
    let (locks, cas) = (client.locks(), client.cas());
    // The first holder's lease is never kept alive: it is "paused" from
    // the moment it is granted.
    let first = locks.acquire_once(TENANT, "report", 0, options(500, None)).await.unwrap();
    let fence = |token| CasWrite { fence: Some(Fence { lock: "report".into(), token }), ..CasWrite::default() };
    assert_eq!(cas.put_with(TENANT, "out", "first-1", 0, fence(first.token)).await.unwrap(), 1);
    // The second waits for the lock: granted once the first lease lapses.
    let second = locks.acquire(TENANT, "report", options(10_000, Some(Duration::from_secs(10)))).await.unwrap();
    assert!(second.token() > first.token, "{} then {}", first.token, second.token());
    assert_eq!(cas.put_with(TENANT, "out", "second-1", 1, fence(second.token())).await.unwrap(), 2);
    // The first resumes: every write it tries is refused, at any version.
    for expect in [0, 1, 2, 3] {
        let refused = cas.put_with(TENANT, "out", "first-late", expect, fence(first.token)).await.unwrap_err();
        assert_eq!(refused.code(), Some(Code::FailedPrecondition), "{refused}");
        assert!(refused.to_string().contains("fenced") || expect != 2, "{refused}");
    }
    let refused = cas.delete_with(TENANT, "out", 2, fence(first.token)).await.unwrap_err();
    assert!(refused.to_string().contains("fenced"), "{refused}");
    // Nor can it renew or release what it lost.
    assert_eq!(locks.renew(TENANT, "report", first.lease).await.unwrap_err().code(), Some(Code::FailedPrecondition));
    assert_eq!(locks.release(TENANT, "report", first.lease).await.unwrap_err().code(), Some(Code::FailedPrecondition));
    let read = cas.get(TENANT, "out").await.unwrap();
    assert_eq!((read.value, read.version), (Some(Bytes::from("second-1")), 2));
    // The next grant's token is higher again, and its writes pass.
    second.release().await.unwrap();
    let third = locks.acquire(TENANT, "report", options(10_000, None)).await.unwrap();
    assert!(third.token() > first.token + 1);
    assert_eq!(cas.put_with(TENANT, "out", "third-1", 2, fence(third.token())).await.unwrap(), 3);
    third.release().await.unwrap();
    cluster.shutdown().await;
}

/// The same for a key-value key: every replica remembers the key's highest
/// token per lock and refuses lower ones; the older holder's value is
/// superseded by the newer holder's, even by a blind write.
async fn a_holder_paused_past_its_lease_cannot_write_a_kv_key_after_the_next_holder(cluster: TestCluster) {
    let client = cluster.client().await;
    let locks = client.locks();
    let fenced =
        |token| WriteOptions { fence: Some(Fence { lock: "report".into(), token }), ..WriteOptions::default() };
    let everywhere = ReadOptions { consistency: Some(Consistency::All) };
    let first = locks.acquire_once(TENANT, "report", 0, options(500, None)).await.unwrap();
    client.put_with(TENANT, "out", "first-1", fenced(first.token)).await.unwrap();
    let second = locks.acquire(TENANT, "report", options(10_000, Some(Duration::from_secs(10)))).await.unwrap();
    assert!(second.token() > first.token);
    // Blind: it never read the first holder's value, yet replaces it.
    client.put_with(TENANT, "out", "second-1", fenced(second.token())).await.unwrap();
    let read = client.get_with(TENANT, "out", everywhere.clone()).await.unwrap();
    assert_eq!(read.siblings, [Bytes::from("second-1")]);
    // The first resumes: its puts and deletes are refused, with or without
    // the context of a fresh read, and change nothing.
    for context in [cohort_client::Context::empty(), read.context.clone()] {
        let options = WriteOptions { context: context.clone(), ..fenced(first.token) };
        let refused = client.put_with(TENANT, "out", "first-late", options).await.unwrap_err();
        assert_eq!(refused.code(), Some(Code::FailedPrecondition), "{refused}");
        assert!(refused.to_string().contains("fenced: token"), "{refused}");
    }
    let options = WriteOptions { context: read.context.clone(), ..fenced(first.token) };
    let refused = client.delete_with(TENANT, "out", options).await.unwrap_err();
    assert!(refused.to_string().contains("fenced"), "{refused}");
    let after = client.get_with(TENANT, "out", everywhere).await.unwrap();
    assert_eq!(after.siblings, [Bytes::from("second-1")], "refused writes left nothing behind");
    // Unfenced writes are not the lock's business: they still pass.
    client.put_with(TENANT, "free", "v", WriteOptions::default()).await.unwrap();
    // Bad fences change nothing: an unknown lock, a token never issued.
    let unknown = WriteOptions { fence: Some(Fence { lock: "nope".into(), token: 1 }), ..WriteOptions::default() };
    assert_eq!(code(client.put_with(TENANT, "k", "v", unknown).await), Some(Code::NotFound));
    assert_eq!(code(client.put_with(TENANT, "k", "v", fenced(999)).await), Some(Code::InvalidArgument));
    assert!(!client.get(TENANT, "k").await.unwrap().found());
    second.release().await.unwrap();
    cluster.shutdown().await;
}

async fn election_failover_raises_the_generation_and_observers_see_each_leader(cluster: TestCluster) {
    let client = cluster.client().await;
    let locks = client.locks();
    let mut observed = locks.observe(TENANT, "primary").await.unwrap();
    assert_eq!(observed.next().await.unwrap().unwrap(), None, "nobody leads yet");
    let one = locks.campaign(TENANT, "primary", "node-a", options(400, None)).await.unwrap();
    // The leader may be seen before its value is proclaimed, never after
    // another leader.
    let seen = loop {
        let leader = observed.next().await.unwrap().unwrap().expect("a leader once there is one");
        assert_eq!(leader.generation, one.generation());
        if !leader.value.is_empty() {
            break leader;
        }
    };
    assert_eq!(seen.value, Bytes::from("node-a"));
    // A second candidate waits; the first stops keeping its lease alive.
    let candidate = {
        let locks = locks.clone();
        tokio::spawn(async move { locks.campaign(TENANT, "primary", "node-b", options(10_000, None)).await })
    };
    let first_generation = one.generation();
    drop(one);
    let two = candidate.await.unwrap().unwrap();
    assert!(two.generation() > first_generation);
    // The observer sees the change, in order: maybe a moment without a
    // leader, maybe the new one before its value, then its value.
    loop {
        match observed.next().await.unwrap().unwrap() {
            None => continue,
            Some(leader) => {
                assert_eq!(leader.generation, two.generation(), "no leader but the newest after the old one");
                if leader.value == "node-b" {
                    break;
                }
                assert!(leader.value.is_empty(), "{leader:?}");
            }
        }
    }
    two.proclaim("node-b:2").await.unwrap();
    assert_eq!(locks.leader(TENANT, "primary").await.unwrap().unwrap().value, Bytes::from("node-b:2"));
    two.resign().await.unwrap();
    assert_eq!(locks.leader(TENANT, "primary").await.unwrap(), None);
    cluster.shutdown().await;
}

fn code<T>(result: Result<T, Error>) -> Option<Code> {
    result.err().and_then(|e| e.code())
}

async fn bad_lock_input_changes_nothing(cluster: TestCluster) {
    let client = cluster.client().await;
    let (locks, cas) = (client.locks(), client.cas());
    assert_eq!(code(locks.acquire(TENANT, "", options(1000, None)).await), Some(Code::InvalidArgument));
    assert_eq!(code(locks.acquire(TENANT, &"n".repeat(300), options(1000, None)).await), Some(Code::InvalidArgument));
    assert_eq!(code(locks.acquire(TENANT, "l", options(0, None)).await), Some(Code::InvalidArgument));
    assert_eq!(code(locks.acquire(TENANT, "l", options(301_000, None)).await), Some(Code::InvalidArgument));
    let wait = Some(Duration::from_secs(3600));
    assert_eq!(code(locks.acquire(TENANT, "l", options(1000, wait)).await), Some(Code::InvalidArgument));
    assert_eq!(code(locks.grant_lease(TENANT, Duration::from_secs(301)).await), Some(Code::InvalidArgument));
    assert_eq!(code(locks.keep_alive(TENANT, 42).await), Some(Code::NotFound));
    assert_eq!(code(locks.revoke_lease(TENANT, 42).await), Some(Code::NotFound));
    assert_eq!(code(locks.acquire_once(TENANT, "l", 42, options(1000, None)).await), Some(Code::NotFound));
    assert_eq!(code(locks.release(TENANT, "never", 42).await), Some(Code::NotFound));
    let held = locks.acquire(TENANT, "l", options(60_000, None)).await.unwrap();
    assert_eq!(code(locks.release(TENANT, "l", 42).await), Some(Code::FailedPrecondition));
    assert_eq!(code(locks.renew(TENANT, "l", 42).await), Some(Code::FailedPrecondition));
    assert_eq!(code(locks.acquire(TENANT, "l", options(1000, None)).await), Some(Code::FailedPrecondition), "held");
    held.release().await.unwrap();
    assert_eq!(code(locks.leader("Bad Tenant", "l").await), Some(Code::InvalidArgument));
    // Fences naming a lock that does not exist, or a token never issued.
    let fenced =
        |lock: &str, token| CasWrite { fence: Some(Fence { lock: lock.into(), token }), ..CasWrite::default() };
    assert_eq!(code(cas.put_with(TENANT, "k", "v", 0, fenced("nope", 1)).await), Some(Code::NotFound));
    assert_eq!(code(cas.put_with(TENANT, "k", "v", 0, fenced("l", 999)).await), Some(Code::InvalidArgument));
    assert_eq!(code(cas.put_with(TENANT, "k", "v", 0, fenced("", 1)).await), Some(Code::InvalidArgument));
    assert_eq!(cas.get(TENANT, "k").await.unwrap().version, 0, "nothing was stored");
    cluster.shutdown().await;
}

/// Workers take turns under one lock, each writing the protected key (a
/// compare-and-set key, then a key-value key) with its token; some stall past their lease before writing (a pause), and
/// write anyway (`cohort_loadtest::locking`, as `verify --workload lock`
/// runs it). Tokens follow real time, and the fencing checker finds no
/// write accepted after a higher token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_write_is_accepted_with_a_stale_token_while_holders_stall() {
    let cluster = TestCluster::start().await;
    let clients = vec![cluster.client().await];
    for store in [FencedStore::Cas, FencedStore::Kv] {
        let workload = LockWorkload { clients: 4, rounds: 6, ttl: Duration::from_millis(300), stall_every: 3, store };
        let (lock, key) = (format!("shared-{store:?}"), format!("protected-{store:?}"));
        let verdict = locking::run(workload, TENANT, &lock, &key, &clients).await.expect("the workload runs");
        println!("{store:?}: {verdict}");
        assert!(verdict.is_ok(), "{store:?}: {verdict}");
        assert!(verdict.accepted > 0 && verdict.refused > 0, "both accepted and refused writes: {verdict}");
        assert_eq!(verdict.grants, 24);
    }
    cluster.shutdown().await;
}

/// Fencing across replicas: a replica that was down while the newer holder
/// wrote has not seen the newer token (until its hint arrives), yet the
/// stale holder's write is refused whichever replica coordinates it (the
/// others refuse to take it), and once the replicas sync, none keeps the
/// stale value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_token_is_refused_even_where_a_replica_missed_the_newer_one() {
    let mut cluster = TestCluster::start().await;
    let client = cluster.client().await;
    let locks = client.locks();
    let fenced = |token| WriteOptions { fence: Some(Fence { lock: "job".into(), token }), ..WriteOptions::default() };
    let first = locks.acquire_once(TENANT, "job", 0, options(60_000, None)).await.unwrap();
    client.put_with(TENANT, "result", "first", fenced(first.token)).await.unwrap();
    locks.release(TENANT, "job", first.lease).await.unwrap();
    // One replica is down while the next holder writes.
    let missed = cluster.replica_indices("result").await[0];
    cluster.stop_node(missed).await;
    let second = locks.acquire(TENANT, "job", options(60_000, None)).await.unwrap();
    client.put_with(TENANT, "result", "second", fenced(second.token())).await.unwrap();
    cluster.restart_node(missed).await.expect("restart");
    // Its hint arrives within a sweep (a second); until then it knows only
    // the older token. The outcome below must not depend on which it is.
    let state = cluster.replica_state(missed, "result").await;
    let behind = state.fences().get("job").is_some_and(|t| *t < second.token());
    println!("the restarted replica {} the newer token", if behind { "has not yet seen" } else { "already has" });
    // The stale holder tries again and again; every attempt is refused.
    for attempt in 0..6 {
        let refused =
            client.put_with(TENANT, "result", format!("stale-{attempt}"), fenced(first.token)).await.unwrap_err();
        assert_eq!(refused.code(), Some(Code::FailedPrecondition), "{refused}");
        assert!(refused.to_string().contains("fenced"), "{refused}");
    }
    // A read at all repairs every replica: the newer holder's value alone.
    let everywhere = ReadOptions { consistency: Some(Consistency::All) };
    let read = client.get_with(TENANT, "result", everywhere).await.unwrap();
    assert_eq!(read.siblings, [Bytes::from("second")]);
    // A replica that coordinated a refused write may hold it until the
    // replicas sync; then (repair running behind the read) every replica
    // holds the newer holder's value alone: a refused write never survives.
    cohort_tests::eventually("every replica holds the newer value alone", Duration::from_secs(30), || async {
        cluster.replica_states("result").await.iter().all(|state| {
            state.values().eq([&Bytes::from("second")]) && state.fences().get("job") == Some(&second.token())
        })
    })
    .await;
    second.release().await.unwrap();
    cluster.shutdown().await;
}
