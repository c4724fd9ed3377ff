//! The behaviour every [`IdempotencyStore`] implementation must show.

use std::time::Duration;

use crate::{Claim, IdempotencyStore};

const DAY: Duration = Duration::from_secs(86_400);

/// Runs the contract against an empty store whose in-flight claims last
/// longer than the contract takes; panics on the first violation. Leaves
/// `("t", "done")` completed with fingerprint `[1; 32]` and response
/// `b"response"`, so a caller can check that it survives a reopen.
pub async fn run(store: &dyn IdempotencyStore) {
    let (a, b) = ([1u8; 32], [2u8; 32]);

    assert_eq!(store.claim("t", "done", &a, "o1", DAY).await.unwrap(), Claim::FRESH);
    assert_eq!(store.claim("t", "done", &a, "o2", DAY).await.unwrap(), Claim::InFlight, "a racing retry must wait");
    assert_eq!(store.claim("t", "done", &b, "o2", DAY).await.unwrap(), Claim::Conflict, "another request is refused");
    store.complete("t", "done", &a, "o1", b"response", DAY).await.unwrap();
    assert_eq!(store.claim("t", "done", &a, "o3", DAY).await.unwrap(), Claim::Done(b"response".to_vec()));
    assert_eq!(store.claim("t", "done", &b, "o3", DAY).await.unwrap(), Claim::Conflict);

    assert_eq!(store.claim("other", "done", &b, "o4", DAY).await.unwrap(), Claim::FRESH, "keys are scoped by tenant");

    // Release: only the owner's claim, and the key is then free.
    assert_eq!(store.claim("t", "failed", &a, "o5", DAY).await.unwrap(), Claim::FRESH);
    store.release("t", "failed", &a, "intruder").await.unwrap();
    assert_eq!(store.claim("t", "failed", &a, "o6", DAY).await.unwrap(), Claim::InFlight, "only the owner releases");
    store.release("t", "failed", &a, "o5").await.unwrap();
    assert_eq!(store.claim("t", "failed", &a, "o6", DAY).await.unwrap(), Claim::FRESH, "a released key is free");
    store.release("t", "failed", &a, "o6").await.unwrap();

    // An unknown outcome is kept: the next claim must settle it, and once
    // settled the record completes as usual.
    assert_eq!(store.claim("t", "unknown", &a, "o7", DAY).await.unwrap(), Claim::FRESH);
    store.mark_unknown("t", "unknown", &a, "intruder", DAY).await.unwrap();
    assert_eq!(store.claim("t", "unknown", &a, "o8", DAY).await.unwrap(), Claim::InFlight, "only the owner marks");
    store.mark_unknown("t", "unknown", &a, "o7", DAY).await.unwrap();
    assert_eq!(store.claim("t", "unknown", &b, "o8", DAY).await.unwrap(), Claim::Conflict);
    assert_eq!(store.claim("t", "unknown", &a, "o8", DAY).await.unwrap(), Claim::SETTLE);
    assert_eq!(store.claim("t", "unknown", &a, "o9", DAY).await.unwrap(), Claim::InFlight, "the settler holds it");
    store.complete("t", "unknown", &a, "o7", b"stale owner", DAY).await.unwrap();
    assert_eq!(
        store.claim("t", "unknown", &a, "o9", DAY).await.unwrap(),
        Claim::InFlight,
        "a former owner cannot complete a claim taken over"
    );
    store.complete("t", "unknown", &a, "o8", b"settled", DAY).await.unwrap();
    assert_eq!(store.claim("t", "unknown", &a, "o9", DAY).await.unwrap(), Claim::Done(b"settled".to_vec()));

    // Completing after the claim is gone records the response anyway, so a
    // later retry replays it instead of applying again.
    store.complete("t", "never-claimed", &a, "o10", b"late", DAY).await.unwrap();
    assert_eq!(store.claim("t", "never-claimed", &a, "o11", DAY).await.unwrap(), Claim::Done(b"late".to_vec()));

    // Expired records are gone.
    assert_eq!(store.claim("t", "short", &a, "o12", DAY).await.unwrap(), Claim::FRESH);
    store.complete("t", "short", &a, "o12", b"r", Duration::from_millis(1)).await.unwrap();
    expire(store, "short", &a).await;
}

/// Waits until the record of `("t", key)` has expired: a claim is then
/// fresh. Polls, with a deadline.
pub async fn expire(store: &dyn IdempotencyStore, key: &str, fingerprint: &[u8; 32]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        store.purge_expired().await.unwrap();
        match store.claim("t", key, fingerprint, "expiry-check", DAY).await.unwrap() {
            Claim::Claimed { settle: false } => return,
            Claim::Done(_) => assert!(tokio::time::Instant::now() < deadline, "a record did not expire in 10 s"),
            other => panic!("unexpected claim while waiting for expiry: {other:?}"),
        }
    }
}

/// An in-flight claim lapses after the store's in-flight timeout
/// (`in_flight`), and the next claim must then settle it. Polls, with a
/// deadline.
pub async fn lapse(store: &dyn IdempotencyStore, in_flight: Duration) {
    let fp = [4; 32];
    let start = tokio::time::Instant::now();
    assert_eq!(store.claim("t", "lapses", &fp, "stalled", DAY).await.unwrap(), Claim::FRESH);
    let mut tick = tokio::time::interval(Duration::from_millis(25));
    loop {
        tick.tick().await;
        match store.claim("t", "lapses", &fp, "next", DAY).await.unwrap() {
            Claim::Claimed { settle: true } => break,
            Claim::InFlight => assert!(start.elapsed() < Duration::from_secs(10), "the claim did not lapse in 10 s"),
            other => panic!("unexpected claim while waiting for the claim to lapse: {other:?}"),
        }
    }
    assert!(start.elapsed() >= in_flight, "the claim lapsed after {:?}, before {in_flight:?}", start.elapsed());
    store.release("t", "lapses", &fp, "stalled").await.unwrap();
    assert_eq!(
        store.claim("t", "lapses", &fp, "third", DAY).await.unwrap(),
        Claim::InFlight,
        "the stalled owner cannot release a claim taken over"
    );
}
