//! The service registry: the SDK side of `cohort.coord.v1.Registry`, with
//! client-side selection that follows the registry's changes.
//!
//! ```no_run
//! # async fn demo(client: cohort_client::Client) -> Result<(), cohort_client::Error> {
//! use cohort_client::registry::{Registration, Strategy};
//! use std::time::Duration;
//! let registry = client.registry();
//! // Register, and keep the lease alive until the guard is dropped.
//! let me = Registration::new("api", "api-1", "10.0.0.7", 8080).tag("blue");
//! let _alive = registry.register_and_keep_alive("default", me, Duration::from_secs(30)).await?;
//! // Pick healthy instances of a service, following its changes.
//! let selector = registry.selector("default", "api", Strategy::LeastConnections).await?;
//! if let Some(pick) = selector.pick() {
//!     println!("calling {}:{}", pick.instance().host, pick.instance().port);
//! } // dropping the pick ends its connection for least-connections
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cohort_proto::coord::v1 as pb;
use cohort_proto::coord::v1::registry_client::RegistryClient;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::Error;

/// An instance's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Live lease and passing check: discoverable.
    Passing,
    /// Lapsed lease or failing check.
    Critical,
}

impl Health {
    fn from_pb(health: i32) -> Health {
        match pb::InstanceHealth::try_from(health) {
            Ok(pb::InstanceHealth::Passing) => Health::Passing,
            _ => Health::Critical,
        }
    }

    /// `passing` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Critical => "critical",
        }
    }
}

/// A registered instance, as the registry shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInstance {
    /// The service.
    pub service: String,
    /// The instance's id.
    pub id: String,
    /// Host or address.
    pub host: String,
    /// Port.
    pub port: u32,
    /// Protocol, as the service names it.
    pub protocol: String,
    /// Whether it speaks TLS.
    pub tls: bool,
    /// A path under the address.
    pub path: String,
    /// What it can do.
    pub capabilities: Vec<String>,
    /// Labels.
    pub tags: Vec<String>,
    /// Key-value pairs.
    pub metadata: BTreeMap<String, String>,
    /// Services it depends on.
    pub dependencies: Vec<String>,
    /// Its active check, if any.
    pub check: String,
    /// Its lease.
    pub lease: u64,
    /// The lease's TTL, in milliseconds.
    pub ttl_ms: u64,
    /// Its health.
    pub health: Health,
    /// What judged it.
    pub output: String,
}

impl From<pb::ServiceInstance> for ServiceInstance {
    fn from(i: pb::ServiceInstance) -> Self {
        let endpoint = i.endpoint.unwrap_or_default();
        ServiceInstance {
            service: i.service,
            id: i.id,
            host: endpoint.host,
            port: endpoint.port,
            protocol: endpoint.protocol,
            tls: endpoint.tls,
            path: endpoint.path,
            capabilities: i.capabilities,
            tags: i.tags,
            metadata: i.metadata.into_iter().collect(),
            dependencies: i.dependencies,
            check: i.check,
            lease: i.lease,
            ttl_ms: i.ttl_ms,
            health: Health::from_pb(i.health),
            output: i.output,
        }
    }
}

/// What a registration says about an instance.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    instance: pb::ServiceInstance,
    /// How long it may stay critical before removal (default: two TTLs).
    pub deregister_after: Option<Duration>,
}

impl Registration {
    /// Instance `id` of `service`, reached at `host:port`.
    pub fn new(service: &str, id: &str, host: &str, port: u32) -> Self {
        let endpoint = pb::ServiceEndpoint { host: host.into(), port, ..pb::ServiceEndpoint::default() };
        Registration {
            instance: pb::ServiceInstance {
                service: service.into(),
                id: id.into(),
                endpoint: Some(endpoint),
                ..pb::ServiceInstance::default()
            },
            deregister_after: None,
        }
    }

    /// Adds a tag.
    pub fn tag(mut self, tag: &str) -> Self {
        self.instance.tags.push(tag.into());
        self
    }

    /// Adds a capability.
    pub fn capability(mut self, capability: &str) -> Self {
        self.instance.capabilities.push(capability.into());
        self
    }

    /// Adds a dependency.
    pub fn dependency(mut self, service: &str) -> Self {
        self.instance.dependencies.push(service.into());
        self
    }

    /// Sets a metadata pair.
    pub fn meta(mut self, key: &str, value: &str) -> Self {
        self.instance.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets the protocol, TLS and path of the endpoint.
    pub fn endpoint_details(mut self, protocol: &str, tls: bool, path: &str) -> Self {
        if let Some(endpoint) = &mut self.instance.endpoint {
            endpoint.protocol = protocol.into();
            endpoint.tls = tls;
            endpoint.path = path.into();
        }
        self
    }

    /// Adds an active check run by the cluster: `http://…` (2xx passes),
    /// `tcp://host:port` (a connection passes) or `grpc://host:port` (the
    /// gRPC health service answering SERVING passes).
    pub fn check(mut self, url: &str) -> Self {
        self.instance.check = url.into();
        self
    }
}

/// A filter of [`Registry::list`].
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Every one of these tags.
    pub tags: Vec<String>,
    /// Every one of these capabilities.
    pub capabilities: Vec<String>,
    /// Every one of these metadata pairs.
    pub metadata: BTreeMap<String, String>,
    /// Critical instances too.
    pub include_critical: bool,
}

/// A service's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceHealth {
    /// Passing instances.
    pub passing: u32,
    /// Critical instances.
    pub critical: u32,
    /// Every instance, with what judged it.
    pub instances: Vec<ServiceInstance>,
}

/// A registry change delivered by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryEvent {
    /// A change, in revision order, each once.
    Change {
        /// Its revision.
        revision: u64,
        /// `registered`, `deregistered`, `health_changed` or `updated`.
        kind: &'static str,
        /// The service.
        service: String,
        /// The instance's id.
        id: String,
        /// The instance after it (none when deregistered).
        instance: Option<Box<ServiceInstance>>,
    },
    /// Every change up to this revision was delivered.
    Progress(u64),
    /// The position was compacted away: every instance of the watched
    /// service(s) as of `revision`; changes continue after it.
    Reset {
        /// Every instance, critical ones included.
        instances: Vec<ServiceInstance>,
        /// The revision they were listed at.
        revision: u64,
    },
}

/// The registry API of a [`crate::Client`].
#[derive(Debug, Clone)]
pub struct Registry {
    registry: RegistryClient<Channel>,
}

impl Registry {
    pub(crate) fn new(channel: Channel) -> Self {
        Registry { registry: RegistryClient::new(channel) }
    }

    /// Registers an instance under a new lease of `ttl` (its heartbeats
    /// must come within it); returns the record.
    pub async fn register(
        &self,
        tenant: &str,
        registration: Registration,
        ttl: Duration,
    ) -> Result<ServiceInstance, Error> {
        let request = pb::RegisterRequest {
            tenant: tenant.into(),
            instance: Some(registration.instance),
            ttl_ms: ttl.as_millis() as u64,
            deregister_after_ms: registration.deregister_after.map_or(0, |d| d.as_millis() as u64),
        };
        let response = self.registry.clone().register(request).await?.into_inner();
        Ok(response.instance.unwrap_or_default().into())
    }

    /// Registers and heartbeats every third of `ttl` until the returned
    /// guard is dropped or [`KeepAlive::deregister`] is called.
    pub async fn register_and_keep_alive(
        &self,
        tenant: &str,
        registration: Registration,
        ttl: Duration,
    ) -> Result<KeepAlive, Error> {
        let instance = self.register(tenant, registration, ttl).await?;
        let (registry, tenant_id) = (self.clone(), tenant.to_string());
        let (service, id, mut lease) = (instance.service.clone(), instance.id.clone(), instance.lease);
        let beating = tokio::spawn(async move {
            let mut tick = tokio::time::interval((ttl / 3).max(Duration::from_millis(10)));
            tick.tick().await;
            loop {
                tick.tick().await;
                match registry.heartbeat_lease(&tenant_id, &service, &id, lease).await {
                    Ok(renewed) => lease = renewed,
                    Err(error) => tracing::warn!(%error, service, id, "registry heartbeat failed"),
                }
            }
        });
        Ok(KeepAlive { registry: self.clone(), tenant: tenant.into(), instance, beating })
    }

    /// Renews the instance's lease; returns its health.
    pub async fn heartbeat(&self, tenant: &str, service: &str, id: &str) -> Result<Health, Error> {
        let request = pb::HeartbeatRequest { tenant: tenant.into(), service: service.into(), id: id.into(), lease: 0 };
        Ok(Health::from_pb(self.registry.clone().heartbeat(request).await?.into_inner().health))
    }

    /// Renews the instance's lease by its id (as [`Registry::register`]
    /// returned it), without the registry reading the instance's record:
    /// the cheap heartbeat. A lapsed lease is replaced as by
    /// [`Registry::heartbeat`]. Returns the instance's lease from now on.
    pub async fn heartbeat_lease(&self, tenant: &str, service: &str, id: &str, lease: u64) -> Result<u64, Error> {
        let request = pb::HeartbeatRequest { tenant: tenant.into(), service: service.into(), id: id.into(), lease };
        Ok(self.registry.clone().heartbeat(request).await?.into_inner().lease)
    }

    /// Removes the instance; returns the revision of the change.
    pub async fn deregister(&self, tenant: &str, service: &str, id: &str) -> Result<u64, Error> {
        let request = pb::DeregisterRequest { tenant: tenant.into(), service: service.into(), id: id.into() };
        Ok(self.registry.clone().deregister(request).await?.into_inner().revision)
    }

    /// Instances of `service` (every service when empty) matching `filter`,
    /// and the revision listed at.
    pub async fn list(
        &self,
        tenant: &str,
        service: &str,
        filter: Filter,
    ) -> Result<(Vec<ServiceInstance>, u64), Error> {
        let request = pb::ListInstancesRequest {
            tenant: tenant.into(),
            service: service.into(),
            tags: filter.tags,
            capabilities: filter.capabilities,
            metadata: filter.metadata.into_iter().collect(),
            include_critical: filter.include_critical,
        };
        let response = self.registry.clone().list(request).await?.into_inner();
        Ok((response.instances.into_iter().map(ServiceInstance::from).collect(), response.revision))
    }

    /// A service's health: counts by state and every instance.
    pub async fn health(&self, tenant: &str, service: &str) -> Result<ServiceHealth, Error> {
        let request = pb::ServiceHealthRequest { tenant: tenant.into(), service: service.into() };
        let response = self.registry.clone().health(request).await?.into_inner();
        Ok(ServiceHealth {
            passing: response.passing,
            critical: response.critical,
            instances: response.instances.into_iter().map(ServiceInstance::from).collect(),
        })
    }

    /// Every registry change of `service` (all services when empty) from
    /// revision `from` (0: from now), in order and once each; reconnects by
    /// itself and answers a compacted position with a
    /// [`RegistryEvent::Reset`], like the configuration watch.
    pub fn watch(
        &self,
        tenant: &str,
        service: &str,
        from: u64,
    ) -> tokio_stream::wrappers::ReceiverStream<Result<RegistryEvent, Error>> {
        let (sender, receiver) = mpsc::channel(64);
        let (client, tenant, service) = (self.clone(), tenant.to_string(), service.to_string());
        tokio::spawn(async move {
            let open = |from_revision| {
                let request =
                    pb::RegistryWatchRequest { tenant: tenant.clone(), service: service.clone(), from_revision };
                let mut registry = client.registry.clone();
                async move { registry.watch(request).await.map(tonic::Response::into_inner) }
            };
            let reset = || async {
                let filter = Filter { include_critical: true, ..Filter::default() };
                let (instances, revision) = client.list(&tenant, &service, filter).await?;
                Ok((RegistryEvent::Reset { instances, revision }, revision))
            };
            crate::resume::follow(from, open, event_from, reset, sender).await;
        });
        tokio_stream::wrappers::ReceiverStream::new(receiver)
    }

    /// A selector of `service`'s passing instances by `strategy`, kept up to
    /// date by a watch of the service until it is dropped.
    pub async fn selector(&self, tenant: &str, service: &str, strategy: Strategy) -> Result<Selector, Error> {
        let (instances, revision) = self.list(tenant, service, Filter::default()).await?;
        let state = Arc::new(Mutex::new(Pool::default()));
        state.lock().unwrap_or_else(|p| p.into_inner()).replace(instances);
        let changes = self.watch(tenant, service, revision + 1);
        let following = {
            let (state, registry) = (state.clone(), self.clone());
            let (tenant, service) = (tenant.to_string(), service.to_string());
            tokio::spawn(async move {
                let mut changes = changes;
                loop {
                    while let Some(event) = changes.next().await {
                        let event = match event {
                            Ok(event) => event,
                            Err(error) => {
                                tracing::warn!(%error, service, "selector: the registry watch ended; listing again");
                                break;
                            }
                        };
                        let mut pool = state.lock().unwrap_or_else(|p| p.into_inner());
                        match event {
                            RegistryEvent::Change { id, instance, .. } => pool.apply(&id, instance.map(|i| *i)),
                            RegistryEvent::Reset { instances, .. } => pool.replace(instances),
                            RegistryEvent::Progress(_) => {}
                        }
                    }
                    // The watch ended (an error, or it gave up reconnecting):
                    // list afresh and follow again, so the pool never freezes.
                    loop {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        if let Ok((instances, revision)) = registry.list(&tenant, &service, Filter::default()).await {
                            state.lock().unwrap_or_else(|p| p.into_inner()).replace(instances);
                            changes = registry.watch(&tenant, &service, revision + 1);
                            break;
                        }
                    }
                }
            })
        };
        Ok(Selector { state, strategy, next: AtomicUsize::new(0), following })
    }
}

/// A server event as the SDK's, with its revision.
fn event_from(event: pb::RegistryEvent) -> (RegistryEvent, u64) {
    let revision = event.revision;
    let kind = match pb::RegistryEventKind::try_from(event.kind).unwrap_or(pb::RegistryEventKind::Unspecified) {
        pb::RegistryEventKind::Registered => "registered",
        pb::RegistryEventKind::Deregistered => "deregistered",
        pb::RegistryEventKind::HealthChanged => "health_changed",
        pb::RegistryEventKind::Updated => "updated",
        pb::RegistryEventKind::Progress | pb::RegistryEventKind::Unspecified => {
            return (RegistryEvent::Progress(revision), revision);
        }
    };
    let change = RegistryEvent::Change {
        revision: event.revision,
        kind,
        service: event.service,
        id: event.id,
        instance: event.instance.map(|i| Box::new(ServiceInstance::from(i))),
    };
    (change, revision)
}

/// A registration kept alive by heartbeats.
#[derive(Debug)]
pub struct KeepAlive {
    registry: Registry,
    tenant: String,
    instance: ServiceInstance,
    beating: tokio::task::JoinHandle<()>,
}

impl KeepAlive {
    /// The instance as registered.
    pub fn instance(&self) -> &ServiceInstance {
        &self.instance
    }

    /// Stops heartbeating and removes the instance.
    pub async fn deregister(self) -> Result<u64, Error> {
        self.beating.abort();
        self.registry.deregister(&self.tenant, &self.instance.service, &self.instance.id).await
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.beating.abort();
    }
}

/// How a [`Selector`] picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Each in turn.
    RoundRobin,
    /// The one with the fewest picks still held.
    LeastConnections,
    /// Any, uniformly.
    Random,
}

/// The passing instances a selector picks from, and their picks in use.
#[derive(Debug, Default)]
struct Pool {
    instances: Vec<ServiceInstance>,
    in_use: HashMap<String, Arc<AtomicUsize>>,
}

impl Pool {
    fn replace(&mut self, instances: Vec<ServiceInstance>) {
        self.instances = instances.into_iter().filter(|i| i.health == Health::Passing).collect();
        self.instances.sort_by(|a, b| a.id.cmp(&b.id));
    }

    fn apply(&mut self, id: &str, instance: Option<ServiceInstance>) {
        self.instances.retain(|i| i.id != id);
        if let Some(instance) = instance.filter(|i| i.health == Health::Passing) {
            let at = self.instances.partition_point(|i| i.id < instance.id);
            self.instances.insert(at, instance);
        }
    }

    fn counter(&mut self, id: &str) -> Arc<AtomicUsize> {
        self.in_use.entry(id.to_string()).or_default().clone()
    }
}

/// Client-side selection among a service's passing instances, following
/// the registry's changes.
#[derive(Debug)]
pub struct Selector {
    state: Arc<Mutex<Pool>>,
    strategy: Strategy,
    next: AtomicUsize,
    following: tokio::task::JoinHandle<()>,
}

impl Selector {
    /// The passing instances now, by id.
    pub fn instances(&self) -> Vec<ServiceInstance> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).instances.clone()
    }

    /// An instance to call, or `None` when none is passing. For
    /// least-connections, hold the pick while the call runs.
    pub fn pick(&self) -> Option<Pick> {
        let mut pool = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if pool.instances.is_empty() {
            return None;
        }
        let index = match self.strategy {
            Strategy::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % pool.instances.len(),
            Strategy::Random => rand::random_range(0..pool.instances.len()),
            Strategy::LeastConnections => {
                let ids: Vec<String> = pool.instances.iter().map(|i| i.id.clone()).collect();
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                // Ties go round in turn, so equal loads spread.
                (0..ids.len())
                    .map(|k| (start + k) % ids.len())
                    .min_by_key(|&i| pool.counter(&ids[i]).load(Ordering::Relaxed))
                    .unwrap_or(0)
            }
        };
        let instance = pool.instances[index].clone();
        let counter = pool.counter(&instance.id);
        counter.fetch_add(1, Ordering::Relaxed);
        Some(Pick { instance, counter })
    }
}

impl Drop for Selector {
    fn drop(&mut self) {
        self.following.abort();
    }
}

/// A picked instance; dropping it ends its use.
#[derive(Debug)]
pub struct Pick {
    instance: ServiceInstance,
    counter: Arc<AtomicUsize>,
}

impl Pick {
    /// The instance.
    pub fn instance(&self) -> &ServiceInstance {
        &self.instance
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}
