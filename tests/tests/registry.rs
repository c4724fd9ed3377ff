//! The service registry on a cluster: registration, discovery filters and
//! health; an instance that stops heartbeating turns critical after its TTL
//! and is removed after its removal period; an HTTP check flipping between
//! 200 and 500 moves health only after its hysteresis, and a check that
//! stays green changes nothing; client-side selection follows the
//! registry; every bad input is refused and changes nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cohort_client::registry::{Filter, Health, Registration, RegistryEvent, Strategy};
use cohort_client::{Client, Error};
use cohort_coordinator::ReadRepairMode;
use cohort_tests::{TENANT, TestCluster, eventually, on_both_transports, test_config};
use tokio_stream::StreamExt;
use tonic::Code;

on_both_transports!(registration_discovery_health_and_bad_input,);

fn code<T>(result: Result<T, Error>) -> Option<Code> {
    result.err().and_then(|e| e.code())
}

const TTL: Duration = Duration::from_secs(30);

async fn registration_discovery_health_and_bad_input(cluster: TestCluster) {
    let client = cluster.client().await;
    let registry = client.registry();
    let a = Registration::new("api", "a1", "10.0.0.1", 8080).tag("blue").capability("search").meta("zone", "eu");
    let b = Registration::new("api", "a2", "10.0.0.2", 8080).tag("green").capability("search").meta("zone", "us");
    let c = Registration::new("api", "a3", "10.0.0.3", 8080).tag("blue").meta("zone", "us");
    let other = Registration::new("db", "d1", "10.0.1.1", 5432);
    for registration in [a, b, c, other] {
        let instance = registry.register(TENANT, registration, TTL).await.unwrap();
        assert_eq!(instance.health, Health::Passing, "without a check, a live lease is passing");
    }
    let ids = |instances: Vec<cohort_client::registry::ServiceInstance>| {
        instances.into_iter().map(|i| i.id).collect::<Vec<_>>()
    };
    let (all, revision) = registry.list(TENANT, "api", Filter::default()).await.unwrap();
    assert_eq!(ids(all), ["a1", "a2", "a3"]);
    let blue = Filter { tags: vec!["blue".into()], ..Filter::default() };
    assert_eq!(ids(registry.list(TENANT, "api", blue).await.unwrap().0), ["a1", "a3"]);
    let search = Filter { capabilities: vec!["search".into()], ..Filter::default() };
    assert_eq!(ids(registry.list(TENANT, "api", search).await.unwrap().0), ["a1", "a2"]);
    let us = Filter { metadata: [("zone".to_string(), "us".to_string())].into(), ..Filter::default() };
    assert_eq!(ids(registry.list(TENANT, "api", us).await.unwrap().0), ["a2", "a3"]);
    assert_eq!(registry.list(TENANT, "", Filter::default()).await.unwrap().0.len(), 4, "every service");
    let health = registry.health(TENANT, "api").await.unwrap();
    assert_eq!((health.passing, health.critical, health.instances.len()), (3, 0, 3));

    // Heartbeats take no revision, by name or by lease; a deregistration does.
    assert_eq!(registry.heartbeat(TENANT, "api", "a1").await.unwrap(), Health::Passing);
    let a1 = registry.list(TENANT, "api", Filter::default()).await.unwrap().0.remove(0);
    assert_eq!(registry.heartbeat_lease(TENANT, "api", "a1", a1.lease).await.unwrap(), a1.lease);
    assert_eq!(registry.list(TENANT, "api", Filter::default()).await.unwrap().1, revision);
    let removed = registry.deregister(TENANT, "api", "a3").await.unwrap();
    assert_eq!(removed, revision + 1);
    assert_eq!(ids(registry.list(TENANT, "api", Filter::default()).await.unwrap().0), ["a1", "a2"]);

    // Bad input: a clear code, nothing stored.
    let bad = [
        Registration::new("", "x", "h", 80),
        Registration::new("api", "", "h", 80),
        Registration::new("a/b", "x", "h", 80),
        Registration::new("api", "x", "h", 0),
        Registration::new("api", "x", "h", 70_000),
        Registration::new("api", "x", "", 80),
        Registration::new("api", "x", "h", 80).check("ftp://h/health"),
        Registration::new("api", "x", "h", 80).tag(""),
    ];
    for registration in bad {
        assert_eq!(
            code(registry.register(TENANT, registration.clone(), TTL).await),
            Some(Code::InvalidArgument),
            "{registration:?}"
        );
    }
    let zero_ttl = registry.register(TENANT, Registration::new("api", "x", "h", 80), Duration::ZERO).await;
    let long_ttl = registry.register(TENANT, Registration::new("api", "x", "h", 80), Duration::from_secs(3600)).await;
    // A zero TTL means the default; one above the maximum is refused.
    assert!(zero_ttl.is_ok());
    registry.deregister(TENANT, "api", "x").await.unwrap();
    assert_eq!(code(long_ttl), Some(Code::InvalidArgument));
    assert_eq!(code(registry.heartbeat(TENANT, "api", "nope").await), Some(Code::NotFound));
    assert_eq!(code(registry.deregister(TENANT, "api", "nope").await), Some(Code::NotFound));
    assert_eq!(code(registry.health(TENANT, "a b").await), Some(Code::InvalidArgument));
    let (after, _) =
        registry.list(TENANT, "api", Filter { include_critical: true, ..Filter::default() }).await.unwrap();
    assert_eq!(ids(after), ["a1", "a2"]);
    cluster.shutdown().await;
}

/// A cluster whose leader judges the registry often and checks quickly.
async fn fast_registry() -> TestCluster {
    let mut settings = test_config(ReadRepairMode::Background);
    settings.registry.sweep_interval = Duration::from_millis(50);
    settings.registry.check_interval = Duration::from_millis(50);
    settings.registry.check_timeout = Duration::from_millis(500);
    settings.registry.passing_after = 2;
    settings.registry.critical_after = 3;
    TestCluster::start_with_config(3, settings).await
}

/// The next change of a registry watch: (kind, health after).
async fn next_change(
    events: &mut (impl tokio_stream::Stream<Item = Result<RegistryEvent, Error>> + Unpin),
) -> (&'static str, Option<Health>, u64) {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), events.next())
            .await
            .expect("a registry change within 30s")
            .expect("the watch goes on")
            .expect("no error");
        if let RegistryEvent::Change { kind, instance, revision, .. } = event {
            return (kind, instance.map(|i| i.health), revision);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_stops_heartbeating_turns_critical_then_is_removed() {
    let cluster = fast_registry().await;
    let client = cluster.client().await;
    let registry = client.registry();
    let mut registration = Registration::new("worker", "w1", "10.0.0.9", 9000);
    registration.deregister_after = Some(Duration::from_millis(1500));
    let ttl = Duration::from_millis(1000);
    let started = Instant::now();
    registry.register(TENANT, registration, ttl).await.unwrap();
    let mut events = registry.watch(TENANT, "worker", 1);
    assert_eq!(next_change(&mut events).await.0, "registered");
    // No heartbeat: critical once the TTL has passed, hidden from discovery.
    let (kind, health, _) = next_change(&mut events).await;
    assert_eq!((kind, health), ("health_changed", Some(Health::Critical)));
    let turned = started.elapsed();
    assert!(turned >= ttl, "critical after {turned:?}, before its TTL");
    assert!(registry.list(TENANT, "worker", Filter::default()).await.unwrap().0.is_empty());
    let all = Filter { include_critical: true, ..Filter::default() };
    let (critical, _) = registry.list(TENANT, "worker", all).await.unwrap();
    assert!(critical[0].output.contains("lease lapsed"), "{}", critical[0].output);
    // Removed once critical for its removal period.
    assert_eq!(next_change(&mut events).await.0, "deregistered");
    let removed = started.elapsed();
    assert!(removed >= ttl + Duration::from_millis(1500), "removed after {removed:?}");
    assert_eq!(code(registry.heartbeat(TENANT, "worker", "w1").await), Some(Code::NotFound));
    cluster.shutdown().await;
}

/// A tiny HTTP server answering its current status code and counting hits.
async fn flipping_server() -> (String, Arc<AtomicU16>, Arc<AtomicUsize>) {
    let status = Arc::new(AtomicU16::new(500));
    let hits = Arc::new(AtomicUsize::new(0));
    let (s, h) = (status.clone(), hits.clone());
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(move || {
            let (s, h) = (s.clone(), h.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                axum::http::StatusCode::from_u16(s.load(Ordering::SeqCst)).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}/health"), status, hits)
}

async fn hits_reach(hits: &AtomicUsize, target: usize) {
    eventually("the check server is hit again", Duration::from_secs(30), || async {
        hits.load(Ordering::SeqCst) >= target
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_check_moves_health_only_after_its_hysteresis() {
    let cluster = fast_registry().await;
    let client = cluster.client().await;
    let registry = client.registry();
    let (url, status, hits) = flipping_server().await;
    let registration = Registration::new("web", "h1", "127.0.0.1", 80).check(&url);
    let instance = registry.register(TENANT, registration, TTL).await.unwrap();
    assert_eq!(instance.health, Health::Critical, "waits for its first passing checks");
    let mut events = registry.watch(TENANT, "web", 1);
    assert_eq!(next_change(&mut events).await.0, "registered");
    status.store(200, Ordering::SeqCst);
    let since = hits.load(Ordering::SeqCst);
    let (kind, health, turned_at) = next_change(&mut events).await;
    assert_eq!((kind, health), ("health_changed", Some(Health::Passing)));
    assert!(hits.load(Ordering::SeqCst) >= since + 2, "passing only after two passing checks in a row");
    // Staying green: more checks, no change, no revision.
    let now = hits.load(Ordering::SeqCst);
    hits_reach(&hits, now + 5).await;
    let (listed, revision) = registry.list(TENANT, "web", Filter::default()).await.unwrap();
    assert_eq!((listed.len(), revision), (1, turned_at), "a green check changes nothing");
    assert!(listed[0].output.contains("200"), "{}", listed[0].output);
    // Failing: critical only after three failures in a row.
    status.store(500, Ordering::SeqCst);
    let since = hits.load(Ordering::SeqCst);
    let (kind, health, _) = next_change(&mut events).await;
    assert_eq!((kind, health), ("health_changed", Some(Health::Critical)));
    assert!(hits.load(Ordering::SeqCst) >= since + 3, "critical only after three failing checks");
    let health = registry.health(TENANT, "web").await.unwrap();
    assert_eq!((health.passing, health.critical), (0, 1));
    assert!(health.instances[0].output.contains("500"), "{}", health.instances[0].output);
    cluster.shutdown().await;
}

async fn pick_ids(selector: &cohort_client::registry::Selector, count: usize) -> Vec<String> {
    (0..count).map(|_| selector.pick().unwrap().instance().id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selection_follows_the_registry() {
    let cluster = TestCluster::start().await;
    let client: Client = cluster.client().await;
    let registry = client.registry();
    for id in ["s1", "s2", "s3"] {
        registry.register(TENANT, Registration::new("svc", id, "10.0.0.1", 80), TTL).await.unwrap();
    }
    let round_robin = registry.selector(TENANT, "svc", Strategy::RoundRobin).await.unwrap();
    assert_eq!(pick_ids(&round_robin, 6).await, ["s1", "s2", "s3", "s1", "s2", "s3"]);
    let least = registry.selector(TENANT, "svc", Strategy::LeastConnections).await.unwrap();
    let held: Vec<_> = (0..3).map(|_| least.pick().unwrap()).collect();
    let mut ids: Vec<String> = held.iter().map(|p| p.instance().id.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["s1", "s2", "s3"], "each holds one before any holds two");
    drop(held);
    let random = registry.selector(TENANT, "svc", Strategy::Random).await.unwrap();
    assert!(pick_ids(&random, 30).await.iter().all(|id| ["s1", "s2", "s3"].contains(&id.as_str())));
    // A deregistered instance leaves every selector; a new one joins.
    registry.deregister(TENANT, "svc", "s2").await.unwrap();
    registry.register(TENANT, Registration::new("svc", "s4", "10.0.0.4", 80), TTL).await.unwrap();
    for selector in [&round_robin, &least, &random] {
        eventually("the selector follows the registry", Duration::from_secs(30), || async {
            selector.instances().iter().map(|i| i.id.as_str()).collect::<Vec<_>>() == ["s1", "s3", "s4"]
        })
        .await;
    }
    assert!(pick_ids(&round_robin, 6).await.iter().all(|id| id != "s2"));
    cluster.shutdown().await;
}

/// TCP and gRPC-health checks: a listening port passes and a closed one
/// fails (after the hysteresis); a gRPC server answering SERVING passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_grpc_health_checks_judge_their_targets() {
    let cluster = fast_registry().await;
    let client = cluster.client().await;
    let registry = client.registry();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = format!("tcp://{}", listener.local_addr().unwrap());
    let accepting = tokio::spawn(async move {
        loop {
            let _ = listener.accept().await;
        }
    });
    registry.register(TENANT, Registration::new("tcp", "t1", "127.0.0.1", 80).check(&tcp), TTL).await.unwrap();
    // The coordinator itself serves the gRPC health service.
    let grpc = format!("grpc://{}", cluster.endpoint().trim_start_matches("http://"));
    registry.register(TENANT, Registration::new("grpc", "g1", "127.0.0.1", 80).check(&grpc), TTL).await.unwrap();
    let mut tcp_events = registry.watch(TENANT, "tcp", 1);
    let mut grpc_events = registry.watch(TENANT, "grpc", 1);
    assert_eq!(next_change(&mut tcp_events).await.0, "registered");
    assert_eq!(next_change(&mut tcp_events).await.1, Some(Health::Passing), "a listening port passes");
    assert_eq!(next_change(&mut grpc_events).await.0, "registered");
    assert_eq!(next_change(&mut grpc_events).await.1, Some(Health::Passing), "SERVING passes");
    accepting.abort();
    let _ = accepting.await;
    assert_eq!(next_change(&mut tcp_events).await.1, Some(Health::Critical), "a closed port fails");
    let health = registry.health(TENANT, "tcp").await.unwrap();
    assert!(health.instances[0].output.contains("TCP connect"), "{}", health.instances[0].output);
    cluster.shutdown().await;
}

/// Discovery through one coordinator sees every registration committed
/// through another before the call (its view catches up to the head it
/// reads first), and a configuration watch through one follows writes made
/// through the other, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_and_watches_follow_writes_made_through_another_coordinator() {
    let (cluster, stores) = TestCluster::start_shared(test_config(ReadRepairMode::Background)).await;
    let second = cluster.add_coordinator().await.expect("second coordinator");
    let (a, b) = (cluster.client().await, cohort_tests::client_for(&second.endpoint()).await);
    // Warm the second coordinator's view, so it is followed, not rebuilt.
    assert!(b.registry().list(TENANT, "mesh", Filter::default()).await.unwrap().0.is_empty());
    let mut watch = b.config().watch(TENANT, "mesh/", 0);
    assert!(matches!(watch.next().await, Some(Ok(cohort_client::config::WatchEvent::Progress(_)))));
    for i in 0..8 {
        let id = format!("m{i}");
        a.registry().register(TENANT, Registration::new("mesh", &id, "10.0.0.1", 80), TTL).await.unwrap();
        let (seen, _) = b.registry().list(TENANT, "mesh", Filter::default()).await.unwrap();
        assert!(
            seen.iter().any(|s| s.id == id),
            "{id} registered through the first coordinator is listed by the second"
        );
        if i % 2 == 1 {
            a.registry().deregister(TENANT, "mesh", &id).await.unwrap();
            let (seen, _) = b.registry().list(TENANT, "mesh", Filter::default()).await.unwrap();
            assert!(!seen.iter().any(|s| s.id == id), "{id} deregistered is gone from the second's listing");
        }
        a.config().put(TENANT, &format!("mesh/{i}"), id.clone(), Default::default()).await.unwrap();
    }
    let mut keys = Vec::new();
    while keys.len() < 8 {
        match tokio::time::timeout(Duration::from_secs(30), watch.next()).await.expect("within 30s") {
            Some(Ok(cohort_client::config::WatchEvent::Change(change))) => keys.push(change.key),
            Some(Ok(_)) => {}
            other => panic!("the watch ended: {other:?}"),
        }
    }
    assert_eq!(keys, (0..8).map(|i| format!("mesh/{i}")).collect::<Vec<_>>());
    second.stop().await;
    cluster.shutdown().await;
    stores.drop_schema().await;
}
