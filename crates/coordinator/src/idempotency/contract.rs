//! The behaviour every [`IdempotencyStore`] implementation must show.

use std::time::Duration;

use super::{Claim, IdempotencyStore};

/// Runs the contract against an empty store; panics on the first violation.
/// Leaves `("t", "done")` completed with fingerprint `[1; 32]` and response
/// `b"response"`, so a caller can check that it survives a reopen.
pub async fn run(store: &dyn IdempotencyStore) {
    let day = Duration::from_secs(86_400);
    let (a, b) = ([1u8; 32], [2u8; 32]);

    assert_eq!(store.claim("t", "done", &a).await.unwrap(), Claim::Claimed);
    assert_eq!(store.claim("t", "done", &a).await.unwrap(), Claim::InFlight, "a racing retry must not run");
    assert_eq!(store.claim("t", "done", &b).await.unwrap(), Claim::Conflict, "another request must be refused");
    store.complete("t", "done", &a, b"response", day).await.unwrap();
    assert_eq!(store.claim("t", "done", &a).await.unwrap(), Claim::Done(b"response".to_vec()));
    assert_eq!(store.claim("t", "done", &b).await.unwrap(), Claim::Conflict);

    assert_eq!(store.claim("other", "done", &b).await.unwrap(), Claim::Claimed, "keys are scoped by tenant");

    assert_eq!(store.claim("t", "failed", &a).await.unwrap(), Claim::Claimed);
    store.release("t", "failed", &b).await.unwrap();
    assert_eq!(store.claim("t", "failed", &a).await.unwrap(), Claim::InFlight, "only the holder can release");
    store.release("t", "failed", &a).await.unwrap();
    assert_eq!(store.claim("t", "failed", &a).await.unwrap(), Claim::Claimed, "a released key can be claimed again");
}
