//! The registry over in-memory registers, with tokio's paused clock.

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

fn instance(service: &str, id: &str) -> Instance {
    Instance {
        service: service.into(),
        id: id.into(),
        endpoint: Some(Endpoint {
            host: "10.0.0.1".into(),
            port: 8080,
            protocol: "http".into(),
            ..Endpoint::default()
        }),
        tags: vec!["blue".into()],
        ..Instance::default()
    }
}

struct Env {
    registers: MemoryRegisters,
    clock: TestClock,
}

impl Env {
    fn new() -> Env {
        Env { registers: MemoryRegisters::default(), clock: TestClock(tokio::time::Instant::now()) }
    }

    fn registry(&self) -> Registry<'_> {
        Registry::new(&self.registers, &self.clock, "t", JournalLimits::default(), RegistryLimits::default())
    }
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_an_instance_passing_and_take_no_revision() {
    let env = Env::new();
    let registry = env.registry();
    let (registered, change) = registry.register(instance("api", "a1"), Some(Duration::from_secs(3))).await.unwrap();
    assert_eq!((registered.health(), event_kind(&change)), (Health::Passing, EventKind::Registered));
    let revision = registry.journal().revision().await.unwrap();
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(2)).await;
        registry.heartbeat("api", "a1").await.unwrap();
        assert!(registry.sweep(&BTreeMap::new(), Hysteresis::default()).await.unwrap().is_empty());
    }
    assert_eq!(registry.journal().revision().await.unwrap(), revision, "heartbeats and green sweeps change nothing");
}

/// An instance that stops heartbeating turns critical once its TTL has
/// passed (one change), stays so without further changes, and is removed
/// once critical for its removal period (two TTLs by default).
#[tokio::test(start_paused = true)]
async fn a_silent_instance_turns_critical_after_its_ttl_and_is_removed_after_its_removal_period() {
    let env = Env::new();
    let registry = env.registry();
    registry.register(instance("api", "a1"), Some(Duration::from_secs(3))).await.unwrap();
    let none = BTreeMap::new();
    tokio::time::advance(Duration::from_millis(2_900)).await;
    assert!(registry.sweep(&none, Hysteresis::default()).await.unwrap().is_empty(), "within its TTL");
    tokio::time::advance(Duration::from_millis(200)).await;
    let turned = registry.sweep(&none, Hysteresis::default()).await.unwrap();
    assert_eq!(turned, [(instance_key("api", "a1"), Action::Turned(Health::Critical))]);
    let (record, _) = registry.get("api", "a1").await.unwrap().unwrap();
    assert!(record.output.contains("lease lapsed"), "{}", record.output);
    let after_turn = registry.journal().revision().await.unwrap();
    tokio::time::advance(Duration::from_millis(5_900)).await;
    assert!(registry.sweep(&none, Hysteresis::default()).await.unwrap().is_empty(), "critical, not yet removed");
    assert_eq!(registry.journal().revision().await.unwrap(), after_turn);
    tokio::time::advance(Duration::from_millis(200)).await;
    let removed = registry.sweep(&none, Hysteresis::default()).await.unwrap();
    assert_eq!(removed, [(instance_key("api", "a1"), Action::Removed)]);
    assert!(registry.get("api", "a1").await.unwrap().is_none());
    let (changes, _) = registry.journal().changes_from(1, 10).await.unwrap().unwrap();
    let kinds: Vec<EventKind> = changes.iter().map(event_kind).collect();
    assert_eq!(kinds, [EventKind::Registered, EventKind::HealthChanged, EventKind::Deregistered]);
    assert!(matches!(registry.heartbeat("api", "a1").await, Err(RecipeError::NotFound(_))));
}

/// A critical instance that heartbeats again gets a new lease and turns
/// passing.
#[tokio::test(start_paused = true)]
async fn a_heartbeat_after_the_lease_lapsed_brings_the_instance_back() {
    let env = Env::new();
    let registry = env.registry();
    registry.register(instance("api", "a1"), Some(Duration::from_secs(1))).await.unwrap();
    tokio::time::advance(Duration::from_millis(1_100)).await;
    registry.sweep(&BTreeMap::new(), Hysteresis::default()).await.unwrap();
    assert_eq!(registry.get("api", "a1").await.unwrap().unwrap().0.health(), Health::Critical);
    let lapsed = registry.get("api", "a1").await.unwrap().unwrap().0.lease;
    assert_eq!(registry.heartbeat_lease("api", "a1", lapsed).await.unwrap(), None, "a lapsed lease is not renewed");
    let back = registry.heartbeat("api", "a1").await.unwrap();
    assert_ne!(back.lease, lapsed, "a new lease");
    assert_eq!(back.health(), Health::Passing);
    assert!(registry.sweep(&BTreeMap::new(), Hysteresis::default()).await.unwrap().is_empty());
}

/// An active check turns an instance passing only after `passing_after`
/// passes in a row and critical only after `critical_after` failures in a
/// row: a flapping check moves nothing.
#[tokio::test(start_paused = true)]
async fn active_checks_change_health_only_after_a_long_enough_streak() {
    let env = Env::new();
    let registry = env.registry();
    let checked = Instance { check: "http://10.0.0.1:8080/health".into(), ..instance("api", "a1") };
    let (registered, _) = registry.register(checked, Some(Duration::from_secs(60))).await.unwrap();
    assert_eq!(registered.health(), Health::Critical, "waits for its first checks");
    let key = instance_key("api", "a1");
    let hysteresis = Hysteresis { passing_after: 2, critical_after: 3 };
    let mut streak = Streak::default();
    let sweep = |streak: Streak| {
        let checks = BTreeMap::from([(key.clone(), (streak, "status 200".to_string()))]);
        let registry = &registry;
        async move { registry.sweep(&checks, hysteresis).await.unwrap() }
    };
    let mut turns = Vec::new();
    for passed in [true, false, true, false, true, true, false, false, true, false, false, false] {
        streak.record(passed);
        turns.extend(sweep(streak).await.into_iter().map(|(_, action)| action));
    }
    assert_eq!(turns, [Action::Turned(Health::Passing), Action::Turned(Health::Critical)]);
}

#[tokio::test(start_paused = true)]
async fn bad_registrations_are_refused_and_change_nothing() {
    let env = Env::new();
    let registry = env.registry();
    let ttl = Some(Duration::from_secs(10));
    let bad = [
        Instance { service: String::new(), ..instance("x", "1") },
        Instance { id: "a/b".into(), ..instance("x", "1") },
        Instance { service: "s".repeat(129), ..instance("x", "1") },
        Instance { endpoint: None, ..instance("x", "1") },
        Instance {
            endpoint: Some(Endpoint { port: 0, host: "h".into(), ..Endpoint::default() }),
            ..instance("x", "1")
        },
        Instance {
            endpoint: Some(Endpoint { port: 70_000, host: "h".into(), ..Endpoint::default() }),
            ..instance("x", "1")
        },
        Instance { check: "ftp://h/x".into(), ..instance("x", "1") },
        Instance { check: "https://h/x".into(), ..instance("x", "1") },
        Instance { check: "nonsense".into(), ..instance("x", "1") },
        Instance { tags: vec![String::new()], ..instance("x", "1") },
    ];
    for instance in bad {
        let refused = registry.register(instance.clone(), ttl).await;
        assert!(matches!(refused, Err(RecipeError::InvalidArgument(_))), "{instance:?}: {refused:?}");
    }
    let zero_ttl = registry.register(instance("x", "1"), Some(Duration::ZERO)).await;
    assert!(matches!(zero_ttl, Err(RecipeError::InvalidArgument(_))));
    assert!(matches!(registry.heartbeat("x", "nope").await, Err(RecipeError::NotFound(_))));
    assert!(matches!(registry.deregister("x", "nope").await, Err(RecipeError::NotFound(_))));
    assert_eq!(registry.journal().revision().await.unwrap(), 0, "nothing was stored");
}

#[tokio::test(start_paused = true)]
async fn registering_again_with_other_details_is_an_update() {
    let env = Env::new();
    let registry = env.registry();
    registry.register(instance("api", "a1"), None).await.unwrap();
    let moved = Instance { tags: vec!["green".into()], ..instance("api", "a1") };
    let (_, change) = registry.register(moved, None).await.unwrap();
    assert_eq!(event_kind(&change), EventKind::Updated);
    let (listed, _) = registry.list(Some("api")).await.unwrap();
    assert_eq!(listed.iter().map(|i| i.tags.clone()).collect::<Vec<_>>(), [vec!["green".to_string()]]);
}
