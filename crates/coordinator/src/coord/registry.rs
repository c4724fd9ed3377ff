//! The public `Registry` service over `cohort_recipes::registry`, and the
//! leader's health worker that runs active checks and sweeps every
//! tenant's registry.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_proto::coord::v1 as pb;
use cohort_proto::coord::v1::registry_server;
use cohort_recipes::SystemClock;
use cohort_recipes::journal::{Change, JournalLimits};
use cohort_recipes::registry::{
    self, Action, EventKind, Health, Hysteresis, Instance, Registry, RegistryLimits, Streak,
};
use cohort_worker::{Step, Worker};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::watch;
use tonic::async_trait;
use tonic::{Request, Response, Status};

use crate::coord::view::Views;
use crate::coord::watch::{EventStream, Events, Feeds};
use crate::coord::{TenantRegisters, check_tenant, recipe_status};
use crate::server::Coordinator;

/// The public service registry.
#[derive(Clone)]
pub struct RegistryService {
    registers: Arc<TenantRegisters>,
    journal: JournalLimits,
    limits: RegistryLimits,
    feeds: Arc<Feeds>,
    /// Discovery from memory, kept by the feeds.
    views: Arc<Views>,
    stopping: watch::Receiver<bool>,
}

impl RegistryService {
    /// The service over `coordinator`, with its `[registry]` and
    /// `[configuration]` bounds; watches end when `stopping` turns true.
    pub fn new(coordinator: Arc<Coordinator>, stopping: watch::Receiver<bool>) -> Self {
        let journal = coordinator.config.configuration.journal_limits();
        let limits = coordinator.config.registry.limits();
        let buffer = coordinator.config.configuration.watch_buffer;
        let registers = Arc::new(TenantRegisters::new(coordinator));
        let feeds = Feeds::new(registers.clone(), registry::MAP, journal, buffer);
        let views = Views::new(feeds.clone());
        RegistryService { registers, journal, limits, feeds, views, stopping }
    }

    fn registry<'a>(&'a self, tenant: &'a str) -> Registry<'a> {
        Registry::new(&*self.registers, &SystemClock, tenant, self.journal, self.limits)
    }
}

/// A registration's instance as the registry keeps it.
fn instance_from(i: pb::ServiceInstance) -> Instance {
    Instance {
        service: i.service,
        id: i.id,
        endpoint: i.endpoint.map(|e| registry::Endpoint {
            host: e.host,
            port: e.port,
            protocol: e.protocol,
            tls: e.tls,
            path: e.path,
        }),
        capabilities: i.capabilities,
        tags: i.tags,
        metadata: i.metadata.into_iter().collect(),
        dependencies: i.dependencies,
        check: i.check,
        ..Instance::default()
    }
}

fn health_to_pb(health: Health) -> pb::InstanceHealth {
    match health {
        Health::Passing => pb::InstanceHealth::Passing,
        Health::Critical => pb::InstanceHealth::Critical,
        Health::Unspecified => pb::InstanceHealth::Unspecified,
    }
}

/// An instance as answers show it.
pub fn instance_to_pb(i: &Instance) -> pb::ServiceInstance {
    pb::ServiceInstance {
        service: i.service.clone(),
        id: i.id.clone(),
        endpoint: i.endpoint.as_ref().map(|e| pb::ServiceEndpoint {
            host: e.host.clone(),
            port: e.port,
            protocol: e.protocol.clone(),
            tls: e.tls,
            path: e.path.clone(),
        }),
        capabilities: i.capabilities.clone(),
        tags: i.tags.clone(),
        metadata: i.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        dependencies: i.dependencies.clone(),
        check: i.check.clone(),
        lease: i.lease,
        ttl_ms: i.ttl_ms,
        deregister_after_ms: i.deregister_after_ms,
        health: health_to_pb(i.health()).into(),
        output: i.output.clone(),
    }
}

fn decode(value: &Option<Bytes>) -> Option<pb::ServiceInstance> {
    value.as_ref().and_then(|v| Instance::decode_value(v).ok()).map(|i| instance_to_pb(&i))
}

fn event_of(change: &Change) -> pb::RegistryEvent {
    let kind = match registry::event_kind(change) {
        EventKind::Registered => pb::RegistryEventKind::Registered,
        EventKind::Deregistered => pb::RegistryEventKind::Deregistered,
        EventKind::HealthChanged => pb::RegistryEventKind::HealthChanged,
        EventKind::Updated => pb::RegistryEventKind::Updated,
    };
    let key = String::from_utf8_lossy(&change.key).into_owned();
    let (service, id) = key.split_once('/').map_or((key.clone(), String::new()), |(s, i)| (s.into(), i.into()));
    pb::RegistryEvent {
        revision: change.revision,
        kind: kind.into(),
        service,
        id,
        instance: decode(&change.value),
        previous: decode(&change.previous),
    }
}

fn progress(revision: u64) -> pb::RegistryEvent {
    pb::RegistryEvent { revision, kind: pb::RegistryEventKind::Progress.into(), ..pb::RegistryEvent::default() }
}

fn record<T>(op: &'static str, started: Instant, result: &Result<T, Status>) {
    let status = match result {
        Ok(_) => "ok".to_string(),
        Err(status) => format!("{:?}", status.code()),
    };
    metrics::counter!("cohort_registry_requests_total", "op" => op, "status" => status).increment(1);
    metrics::histogram!("cohort_registry_request_duration_seconds", "op" => op).record(started.elapsed().as_secs_f64());
}

/// Whether `instance` matches the filters of `r`.
fn matches(instance: &Instance, r: &pb::ListInstancesRequest) -> bool {
    (r.include_critical || instance.health() == Health::Passing)
        && r.tags.iter().all(|t| instance.tags.contains(t))
        && r.capabilities.iter().all(|c| instance.capabilities.contains(c))
        && r.metadata.iter().all(|(k, v)| instance.metadata.get(k) == Some(v))
}

#[tonic::async_trait]
impl registry_server::Registry for RegistryService {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let (started, r) = (Instant::now(), request.into_inner());
        let result = async {
            check_tenant(&r.tenant)?;
            let mut instance = instance_from(r.instance.ok_or_else(|| Status::invalid_argument("no instance given"))?);
            instance.deregister_after_ms = r.deregister_after_ms;
            let ttl = (r.ttl_ms > 0).then(|| Duration::from_millis(r.ttl_ms));
            let (instance, change) = self.registry(&r.tenant).register(instance, ttl).await.map_err(recipe_status)?;
            self.feeds.wake(&r.tenant);
            Ok(pb::RegisterResponse { instance: Some(instance_to_pb(&instance)), revision: change.revision })
        }
        .await;
        record("register", started, &result);
        result.map(Response::new)
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let (started, r) = (Instant::now(), request.into_inner());
        let result = async {
            check_tenant(&r.tenant)?;
            let registry = self.registry(&r.tenant);
            if r.lease != 0
                && let Some(ttl) = registry.heartbeat_lease(&r.service, &r.id, r.lease).await.map_err(recipe_status)?
            {
                let health = pb::InstanceHealth::Unspecified.into();
                return Ok(pb::HeartbeatResponse { health, ttl_ms: ttl.as_millis() as u64, lease: r.lease });
            }
            let instance = registry.heartbeat(&r.service, &r.id).await.map_err(recipe_status)?;
            self.feeds.wake(&r.tenant);
            let health = health_to_pb(instance.health()).into();
            Ok(pb::HeartbeatResponse { health, ttl_ms: instance.ttl_ms, lease: instance.lease })
        }
        .await;
        record("heartbeat", started, &result);
        result.map(Response::new)
    }

    async fn deregister(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let (started, r) = (Instant::now(), request.into_inner());
        let result = async {
            check_tenant(&r.tenant)?;
            let change = self.registry(&r.tenant).deregister(&r.service, &r.id).await.map_err(recipe_status)?;
            self.feeds.wake(&r.tenant);
            Ok(pb::DeregisterResponse { revision: change.revision })
        }
        .await;
        record("deregister", started, &result);
        result.map(Response::new)
    }

    async fn list(
        &self,
        request: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let (started, r) = (Instant::now(), request.into_inner());
        let result = async {
            check_tenant(&r.tenant)?;
            let prefix = match r.service.is_empty() {
                true => String::new(),
                false => {
                    registry::check_name("service name", &r.service, &self.limits).map_err(recipe_status)?;
                    format!("{}/", r.service)
                }
            };
            let (changes, revision) = self.views.list(&r.tenant, prefix.as_bytes()).await.map_err(recipe_status)?;
            let mut instances = Vec::with_capacity(changes.len());
            for value in changes.iter().filter_map(|c| c.value.as_ref()) {
                let instance = Instance::decode_value(value).map_err(recipe_status)?;
                if matches(&instance, &r) {
                    instances.push(instance_to_pb(&instance));
                }
            }
            Ok(pb::ListInstancesResponse { instances, revision })
        }
        .await;
        record("list", started, &result);
        result.map(Response::new)
    }

    async fn health(
        &self,
        request: Request<pb::ServiceHealthRequest>,
    ) -> Result<Response<pb::ServiceHealthResponse>, Status> {
        let (started, r) = (Instant::now(), request.into_inner());
        let result = async {
            check_tenant(&r.tenant)?;
            let (instances, _) =
                self.registry(&r.tenant).list(Some(r.service.as_str())).await.map_err(recipe_status)?;
            let count = |health| instances.iter().filter(|i| i.health() == health).count() as u32;
            Ok(pb::ServiceHealthResponse {
                passing: count(Health::Passing),
                critical: count(Health::Critical),
                instances: instances.iter().map(instance_to_pb).collect(),
            })
        }
        .await;
        record("health", started, &result);
        result.map(Response::new)
    }

    type WatchStream = EventStream<pb::RegistryEvent>;

    async fn watch(&self, request: Request<pb::RegistryWatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let r = request.into_inner();
        check_tenant(&r.tenant)?;
        let prefix = match r.service.is_empty() {
            true => Bytes::new(),
            false => {
                registry::check_name("service name", &r.service, &self.limits).map_err(recipe_status)?;
                Bytes::from(format!("{}/", r.service))
            }
        };
        let events = Events { change: event_of, progress };
        let stream = self.feeds.watch(&r.tenant, prefix, r.from_revision, events, self.stopping.clone()).await?;
        metrics::counter!("cohort_registry_watches_total").increment(1);
        Ok(Response::new(stream))
    }
}

/// The leader's registry health worker: every `[registry] sweep_interval`,
/// runs the active checks that are due and sweeps every tenant's registry
/// (`Registry::sweep`). Check streaks live in this worker only: a new
/// leader starts counting afresh, which can only delay a change of health.
pub struct HealthWorker {
    coordinator: Arc<Coordinator>,
    /// By tenant, registry key, lease and check: a new registration (or a
    /// new lease after a lapse, or another check) starts counting afresh.
    streaks: HashMap<(String, Bytes, u64, String), CheckState>,
    http: HttpClient,
}

/// The client of HTTP checks.
type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<Bytes>,
>;

struct CheckState {
    streak: Streak,
    output: String,
    last_run: Option<Instant>,
}

impl HealthWorker {
    /// The worker of `coordinator`, for the leader's jobs.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        HealthWorker { coordinator, streaks: HashMap::new(), http }
    }

    async fn round(&mut self) -> Result<(), String> {
        let c = self.coordinator.clone();
        let settings = &c.config.registry;
        let hysteresis = Hysteresis { passing_after: settings.passing_after, critical_after: settings.critical_after };
        let registers = TenantRegisters::new(c.clone());
        let tenants = c.metadata.list_tenants().await.map_err(|e| e.to_string())?;
        let journal = c.config.configuration.journal_limits();
        let mut live = std::collections::HashSet::new();
        for tenant in tenants {
            let registry = Registry::new(&registers, &SystemClock, &tenant.id, journal, settings.limits());
            // One listing serves both the checks and the sweep.
            let (entries, _) = registry.journal().list(b"").await.map_err(|e| e.to_string())?;
            let instances = entries
                .iter()
                .filter_map(|c| c.value.as_ref())
                .map(Instance::decode_value)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            if instances.is_empty() {
                continue;
            }
            // Run the checks that are due, at once.
            let mut running = FuturesUnordered::new();
            for instance in instances.iter().filter(|i| !i.check.is_empty()) {
                let key = (tenant.id.clone(), instance.key(), instance.lease, instance.check.clone());
                live.insert(key.clone());
                let due = self
                    .streaks
                    .get(&key)
                    .and_then(|s| s.last_run)
                    .is_none_or(|t| t.elapsed() >= settings.check_interval);
                if due {
                    let (check, http, timeout) = (instance.check.clone(), self.http.clone(), settings.check_timeout);
                    running.push(async move { (key, run_check(&http, &check, timeout).await) });
                }
            }
            while let Some((key, (passed, output))) = running.next().await {
                let state = self.streaks.entry(key).or_insert(CheckState {
                    streak: Streak::default(),
                    output: String::new(),
                    last_run: None,
                });
                state.streak.record(passed);
                state.output = output;
                state.last_run = Some(Instant::now());
            }
            let current: HashMap<Bytes, (u64, &str)> =
                instances.iter().map(|i| (i.key(), (i.lease, i.check.as_str()))).collect();
            let checks: BTreeMap<Bytes, (Streak, String)> = self
                .streaks
                .iter()
                .filter(|((t, key, lease, check), _)| {
                    *t == tenant.id && current.get(key) == Some(&(*lease, check.as_str()))
                })
                .map(|((_, key, _, _), state)| (key.clone(), (state.streak, state.output.clone())))
                .collect();
            match registry.sweep_listed(&entries, &checks, hysteresis).await {
                Ok(done) => {
                    for (key, action) in done {
                        let what = match action {
                            Action::Turned(health) => health.as_str(),
                            Action::Removed => "removed",
                        };
                        metrics::counter!("cohort_registry_health_changes_total", "to" => what).increment(1);
                        tracing::info!(tenant = %tenant.id, instance = %String::from_utf8_lossy(&key), what, "registry");
                    }
                }
                Err(error) => return Err(format!("sweeping tenant {}: {error}", tenant.id)),
            }
        }
        self.streaks.retain(|key, _| live.contains(key));
        Ok(())
    }
}

/// Runs one active check: whether it passed, and what it said.
async fn run_check(http: &HttpClient, check: &str, timeout: Duration) -> (bool, String) {
    let Some((scheme, address)) = check.split_once("://") else { return (false, format!("bad check {check:?}")) };
    let attempt = async {
        match scheme {
            "tcp" => match tokio::net::TcpStream::connect(address).await {
                Ok(_) => (true, format!("TCP connect to {address}: ok")),
                Err(e) => (false, format!("TCP connect to {address}: {e}")),
            },
            "http" => {
                let uri: hyper::Uri = match check.parse() {
                    Ok(uri) => uri,
                    Err(e) => return (false, format!("bad URL {check:?}: {e}")),
                };
                match http.get(uri).await {
                    Ok(response) if response.status().is_success() => (true, format!("HTTP {}", response.status())),
                    Ok(response) => (false, format!("HTTP {}", response.status())),
                    Err(e) => (false, format!("HTTP GET {check}: {e}")),
                }
            }
            "grpc" => {
                let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{address}")) {
                    Ok(endpoint) => endpoint,
                    Err(e) => return (false, format!("bad address {address:?}: {e}")),
                };
                match endpoint.connect().await {
                    Ok(channel) => {
                        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
                        let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
                        match client.check(request).await {
                            Ok(answer) => {
                                let status = answer.into_inner().status();
                                let serving = status == tonic_health::pb::health_check_response::ServingStatus::Serving;
                                (serving, format!("gRPC health: {}", status.as_str_name()))
                            }
                            Err(e) => (false, format!("gRPC health: {}", e.message())),
                        }
                    }
                    Err(e) => (false, format!("gRPC connect to {address}: {e}")),
                }
            }
            other => (false, format!("unknown check scheme {other:?}")),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => (false, format!("no answer within {}ms", timeout.as_millis())),
    }
}

#[async_trait]
impl Worker for HealthWorker {
    fn name(&self) -> &'static str {
        "registry-health"
    }

    async fn work(&mut self) -> Result<Step, String> {
        self.round().await?;
        Ok(Step::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.coordinator.config.registry.sweep_interval).await;
    }
}
