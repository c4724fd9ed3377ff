//! Causal contexts are bound to their key and cannot be forged (guarantees
//! 1, 2 and 7): a context read from one key, altered,
//! truncated, oversized or made up is refused with InvalidArgument, stores
//! nothing and leaves the key writable; the context a write returns covers
//! only what its writer saw and the write itself; contexts outlive a
//! rotation of the sealing secret.

use bytes::Bytes;
use cohort_client::{Context, WriteOptions};
use cohort_proto::v1 as pb;
use cohort_proto::v1::admin_client::AdminClient;
use cohort_ring::{CausalContext, ContextKey, Dot, VersionVector};
use cohort_tests::{TENANT, TestCluster, strings};
use tonic::Code;

fn with(context: Context) -> WriteOptions {
    WriteOptions { context, ..WriteOptions::default() }
}

/// F5: a context read from `cx`, used on `cy`, deleted `cy`'s value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_read_from_one_key_cannot_replace_another() {
    let cluster = TestCluster::start().await;
    let client = cluster.client().await;
    client.put(TENANT, "cx", "x").await.expect("write cx");
    client.put(TENANT, "cy", "y").await.expect("write cy");
    let from_cx = client.get(TENANT, "cx").await.expect("read cx").context;
    let error = client.put_with(TENANT, "cy", "y2", with(from_cx.clone())).await.expect_err("another key's context");
    assert_eq!(error.code(), Some(Code::InvalidArgument), "{error}");
    assert!(error.to_string().contains("does not belong to this key"), "{error}");
    let error = client.delete_with(TENANT, "cy", with(from_cx)).await.expect_err("another key's context");
    assert_eq!(error.code(), Some(Code::InvalidArgument), "{error}");
    assert_eq!(strings(&client.get(TENANT, "cy").await.expect("read cy").siblings), ["y"]);
    cluster.shutdown().await;
}

/// F4: blind `a`, blind `b`, then a write with the context `b`'s put
/// returned deleted `a`, which nobody had read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_returns_a_context_that_covers_only_what_its_writer_saw() {
    let cluster = TestCluster::start().await;
    let client = cluster.client().await;
    client.put(TENANT, "k", "a").await.expect("blind a");
    let b = client.put(TENANT, "k", "b").await.expect("blind b");
    client.put_with(TENANT, "k", "b2", with(b.context)).await.expect("b2 replaces b");
    let read = client.get(TENANT, "k").await.expect("read");
    assert_eq!(strings(&read.siblings), ["a", "b2"], "a was never seen by b's writer and must survive");

    // Chained on a read, the returned context still replaces exactly the
    // chain: the read's siblings and the write.
    let resolved = client.put_with(TENANT, "k", "one", with(read.context)).await.expect("resolve");
    client.put(TENANT, "k", "concurrent").await.expect("a concurrent blind write");
    client.put_with(TENANT, "k", "two", with(resolved.context)).await.expect("chained write");
    assert_eq!(strings(&client.get(TENANT, "k").await.expect("read").siblings), ["concurrent", "two"]);
    cluster.shutdown().await;
}

/// F5, F14: contexts claiming writes nobody issued — 1000 by every real
/// actor, or `u64::MAX` — were accepted (the latter reaching an assert on
/// another node). Every forgery is now refused before any replica sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_altered_truncated_and_oversized_contexts_are_refused_and_store_nothing() {
    let cluster = TestCluster::start().await;
    let client = cluster.client().await;
    client.put(TENANT, "k", "v").await.expect("write");
    let read = client.get(TENANT, "k").await.expect("read");
    let before = cluster.replica_states("k").await;
    let actors: Vec<_> = before[0].clock().iter().map(|(actor, _)| actor.clone()).collect();
    assert!(!actors.is_empty());

    let claim = |counter: u64| {
        let mut clock = VersionVector::new();
        for actor in &actors {
            clock.add(&Dot { actor: actor.clone(), counter });
        }
        CausalContext::from(clock)
    };
    let token = read.context.0.clone();
    let mut altered = token.to_vec();
    altered[3] ^= 0x40;
    let made_up = ContextKey { id: 1, secret: [7; 32] };
    let forgeries: Vec<(&str, Bytes)> = vec![
        ("1000 writes by every actor, unsealed", claim(1000).encode().into()),
        ("u64::MAX writes, unsealed", claim(u64::MAX).encode().into()),
        ("sealed with a made-up secret", cohort_ring::context::seal(&claim(1000), TENANT, b"k", &made_up).into()),
        ("one byte altered", altered.into()),
        ("truncated", token.slice(..token.len() - 1)),
        ("the format byte alone", token.slice(..1)),
        ("oversized", Bytes::from(vec![2u8; 70 * 1024])),
    ];
    for (what, context) in forgeries {
        let error = client.put_with(TENANT, "k", "forged", with(Context(context.clone()))).await.expect_err(what);
        assert_eq!(error.code(), Some(Code::InvalidArgument), "{what}: {error}");
        let error = client.delete_with(TENANT, "k", with(Context(context))).await.expect_err(what);
        assert_eq!(error.code(), Some(Code::InvalidArgument), "{what}: {error}");
    }
    assert_eq!(cluster.replica_states("k").await, before, "no forgery stored anything");
    client.put_with(TENANT, "k", "v2", with(read.context)).await.expect("the key stays writable");
    assert_eq!(strings(&client.get(TENANT, "k").await.expect("read").siblings), ["v2"]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contexts_sealed_before_a_key_rotation_still_open() {
    let cluster = TestCluster::start().await;
    let client = cluster.client().await;
    client.put(TENANT, "k", "v1").await.expect("write");
    let old = client.get(TENANT, "k").await.expect("read").context;
    assert_eq!(cohort_ring::context::key_id(&old.0), Some(1));
    let mut admin = AdminClient::connect(cluster.endpoint()).await.expect("admin");
    let rotated = admin.rotate_context_key(pb::RotateContextKeyRequest {}).await.expect("rotate").into_inner();
    assert_eq!(rotated.key_id, 2);
    let written = client.put_with(TENANT, "k", "v2", with(old)).await.expect("an older key's context opens");
    assert_eq!(cohort_ring::context::key_id(&written.context.0), Some(2), "new contexts use the new key");
    assert_eq!(strings(&client.get(TENANT, "k").await.expect("read").siblings), ["v2"]);
    cluster.shutdown().await;
}
