//! Leases and locks over in-memory registers, with tokio's paused clock.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::memory::MemoryRegisters;

/// A wall clock that follows tokio's (paused) time.
struct TestClock(tokio::time::Instant);

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        1_000_000 + self.0.elapsed().as_millis() as u64
    }
}

struct Env {
    registers: Arc<MemoryRegisters>,
    clock: Arc<TestClock>,
    limits: Limits,
}

impl Env {
    fn new() -> Env {
        Env {
            registers: Arc::default(),
            clock: Arc::new(TestClock(tokio::time::Instant::now())),
            limits: Limits { max_waiters: 2, ..Limits::default() },
        }
    }

    async fn lease(&self, ttl_secs: u64) -> u64 {
        lease::grant(&*self.registers, &*self.clock, "t", Some(Duration::from_secs(ttl_secs)), &self.limits)
            .await
            .unwrap()
            .id
    }

    async fn acquire(&self, name: &str, lease: u64, wait: Option<Duration>) -> Result<Grant, RecipeError> {
        acquire(&*self.registers, &*self.clock, "t", name, lease, wait, &self.limits).await
    }

    async fn release(&self, name: &str, lease: u64) -> Result<(), RecipeError> {
        release(&*self.registers, &*self.clock, "t", name, lease, &self.limits).await
    }
}

#[tokio::test(start_paused = true)]
async fn tokens_strictly_increase_with_every_grant() {
    let env = Env::new();
    let (a, b) = (env.lease(10).await, env.lease(10).await);
    let first = env.acquire("l", a, None).await.unwrap();
    assert!(matches!(env.acquire("l", b, None).await, Err(RecipeError::FailedPrecondition(_))));
    // Acquiring again under the holding lease returns the same grant.
    assert_eq!(env.acquire("l", a, None).await.unwrap(), first);
    env.release("l", a).await.unwrap();
    let second = env.acquire("l", b, None).await.unwrap();
    assert!(second.token > first.token, "{second:?} after {first:?}");
    env.release("l", b).await.unwrap();
    let third = env.acquire("l", a, None).await.unwrap();
    assert!(third.token > second.token);
}

#[tokio::test(start_paused = true)]
async fn an_expired_holder_holds_nothing_and_is_never_renewed_by_the_cluster() {
    let env = Env::new();
    let (a, b) = (env.lease(1).await, env.lease(10).await);
    let first = env.acquire("l", a, None).await.unwrap();
    tokio::time::advance(Duration::from_millis(1_001)).await;
    let second = env.acquire("l", b, None).await.unwrap();
    assert!(second.token > first.token);
    // The old holder can neither renew nor release.
    let renewed = renew(&*env.registers, &*env.clock, "t", "l", a, &env.limits).await;
    assert!(matches!(renewed, Err(RecipeError::FailedPrecondition(_))), "{renewed:?}");
    assert!(matches!(env.release("l", a).await, Err(RecipeError::FailedPrecondition(_))));
    assert!(matches!(lease::keep_alive(&*env.registers, &*env.clock, "t", a).await, Err(RecipeError::NotFound(_))));
}

#[tokio::test(start_paused = true)]
async fn waiters_are_granted_first_come_first_served_on_release() {
    let env = Arc::new(Env::new());
    let (holder, w1, w2) = (env.lease(60).await, env.lease(60).await, env.lease(60).await);
    env.acquire("l", holder, None).await.unwrap();
    let e1 = env.clone();
    let first = tokio::spawn(async move { e1.acquire("l", w1, Some(Duration::from_secs(30))).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e2 = env.clone();
    let second = tokio::spawn(async move { e2.acquire("l", w2, Some(Duration::from_secs(30))).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The queue is full (the limit is 2 here).
    let w3 = env.lease(60).await;
    assert!(matches!(env.acquire("l", w3, Some(Duration::from_secs(1))).await, Err(RecipeError::ResourceExhausted(_))));
    env.release("l", holder).await.unwrap();
    let granted = first.await.unwrap().unwrap();
    assert_eq!(granted.lease, w1);
    assert!(!second.is_finished());
    env.release("l", w1).await.unwrap();
    assert_eq!(second.await.unwrap().unwrap().lease, w2);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_whose_wait_ended_is_never_granted() {
    let env = Env::new();
    let (holder, waiter) = (env.lease(60).await, env.lease(60).await);
    env.acquire("l", holder, None).await.unwrap();
    let waited = env.acquire("l", waiter, Some(Duration::from_secs(1))).await;
    assert!(matches!(waited, Err(RecipeError::DeadlineExceeded(_))), "{waited:?}");
    // Released later: nobody is waiting any more.
    env.release("l", holder).await.unwrap();
    let leader = leader(&*env.registers, &*env.clock, "t", "l", &env.limits).await.unwrap();
    assert_eq!(leader, None);
}

#[tokio::test(start_paused = true)]
async fn a_lease_is_checked_at_the_moment_of_the_grant() {
    let env = Env::new();
    let gone = env.lease(1).await;
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(matches!(env.acquire("l", gone, None).await, Err(RecipeError::NotFound(_))));
    assert!(matches!(env.acquire("l", 12345, None).await, Err(RecipeError::NotFound(_))));
    assert_eq!(issued_bound(&*env.registers, "t", "l").await.unwrap(), 0, "nothing was written");
}

#[tokio::test(start_paused = true)]
async fn bad_input_is_refused() {
    let env = Env::new();
    let a = env.lease(10).await;
    assert!(matches!(env.acquire("", a, None).await, Err(RecipeError::InvalidArgument(_))));
    assert!(matches!(env.acquire(&"x".repeat(300), a, None).await, Err(RecipeError::InvalidArgument(_))));
    assert!(matches!(env.acquire("l", a, Some(Duration::from_secs(3600))).await, Err(RecipeError::InvalidArgument(_))));
    for ttl in [Duration::ZERO, Duration::from_secs(301)] {
        let granted = lease::grant(&*env.registers, &*env.clock, "t", Some(ttl), &env.limits).await;
        assert!(matches!(granted, Err(RecipeError::InvalidArgument(_))), "{ttl:?}");
    }
    assert!(matches!(env.release("never", a).await, Err(RecipeError::NotFound(_))));
}

#[tokio::test(start_paused = true)]
async fn an_election_leader_proclaims_and_its_generation_grows_on_failover() {
    let env = Env::new();
    let (one, two) = (env.lease(1).await, env.lease(10).await);
    let g1 = env.acquire("e", one, None).await.unwrap().token;
    proclaim(&*env.registers, &*env.clock, "t", "e", one, b"addr-1".to_vec(), &env.limits).await.unwrap();
    let led = leader(&*env.registers, &*env.clock, "t", "e", &env.limits).await.unwrap().unwrap();
    assert_eq!((led.holder.token, led.value), (g1, Some(b"addr-1".to_vec())));
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(leader(&*env.registers, &*env.clock, "t", "e", &env.limits).await.unwrap(), None);
    let g2 = env.acquire("e", two, None).await.unwrap().token;
    assert!(g2 > g1);
    let stale = proclaim(&*env.registers, &*env.clock, "t", "e", one, b"x".to_vec(), &env.limits).await;
    assert!(matches!(stale, Err(RecipeError::FailedPrecondition(_))));
}
