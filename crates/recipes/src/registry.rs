//! The service registry: instances of services, each bound to a lease its
//! heartbeats keep alive, kept in the journaled map `registry` of the
//! tenant (key `service/instance`), so every registration, health change
//! and removal takes a revision and can be watched like configuration.
//!
//! Heartbeats renew the lease only: they change no record and take no
//! revision. Health is judged elsewhere (the leader coordinator's health
//! worker, over [`evaluate`]): an instance whose lease lapsed, or whose
//! active check failed often enough, turns critical — one journal change
//! when it turns, none while it stays — and is removed once it has been
//! critical for its removal period.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;

use crate::journal::{Change, Journal, JournalLimits, Kind, Write, WriteError};
use crate::lease;
use crate::{Clock, Limits, RecipeError, Registers};

/// The journaled map instances live in.
pub const MAP: &str = "registry";

/// Where an instance is reached.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Endpoint {
    /// Host name or address.
    #[prost(string, tag = "1")]
    pub host: String,
    /// Port, 1..=65535.
    #[prost(uint32, tag = "2")]
    pub port: u32,
    /// Protocol, as the service names it (`http`, `grpc`, …).
    #[prost(string, tag = "3")]
    pub protocol: String,
    /// Whether it speaks TLS.
    #[prost(bool, tag = "4")]
    pub tls: bool,
    /// A path under the address, if any.
    #[prost(string, tag = "5")]
    pub path: String,
}

/// An instance's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Health {
    /// Not judged (never stored).
    Unspecified = 0,
    /// Live lease and passing check: discoverable.
    Passing = 1,
    /// Lapsed lease or failing check: hidden from discovery by default.
    Critical = 2,
}

impl Health {
    /// `passing` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Critical => "critical",
            Health::Unspecified => "unspecified",
        }
    }
}

/// A registered instance: the value of its registry entry.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Instance {
    /// The service's name.
    #[prost(string, tag = "1")]
    pub service: String,
    /// The instance's id, unique within the service.
    #[prost(string, tag = "2")]
    pub id: String,
    /// Where it is reached.
    #[prost(message, optional, tag = "3")]
    pub endpoint: Option<Endpoint>,
    /// What it can do.
    #[prost(string, repeated, tag = "4")]
    pub capabilities: Vec<String>,
    /// Free-form labels.
    #[prost(string, repeated, tag = "5")]
    pub tags: Vec<String>,
    /// Free-form key-value pairs.
    #[prost(btree_map = "string, string", tag = "6")]
    pub metadata: BTreeMap<String, String>,
    /// Services it depends on.
    #[prost(string, repeated, tag = "7")]
    pub dependencies: Vec<String>,
    /// The lease its heartbeats keep alive.
    #[prost(uint64, tag = "8")]
    pub lease: u64,
    /// The lease's TTL, in milliseconds.
    #[prost(uint64, tag = "9")]
    pub ttl_ms: u64,
    /// How long it may stay critical before it is removed, in milliseconds.
    #[prost(uint64, tag = "10")]
    pub deregister_after_ms: u64,
    /// Its active check (`http://…`, `tcp://host:port`, `grpc://host:port`),
    /// or empty for the lease alone.
    #[prost(string, tag = "11")]
    pub check: String,
    /// Its health, as last judged.
    #[prost(enumeration = "Health", tag = "12")]
    pub health: i32,
    /// What the judgement that set the health said.
    #[prost(string, tag = "13")]
    pub output: String,
    /// Since when it is critical, in milliseconds since the epoch (0 when
    /// passing).
    #[prost(uint64, tag = "14")]
    pub critical_since_ms: u64,
}

impl Instance {
    /// Its registry key.
    pub fn key(&self) -> Bytes {
        instance_key(&self.service, &self.id)
    }

    fn encode(&self) -> Bytes {
        Bytes::from(self.encode_to_vec())
    }

    /// Reads a registry entry's value.
    pub fn decode_value(bytes: &Bytes) -> Result<Instance, RecipeError> {
        Instance::decode(bytes.as_ref()).map_err(|e| RecipeError::Registers(format!("instance record unreadable: {e}")))
    }
}

/// The registry key of an instance.
pub fn instance_key(service: &str, id: &str) -> Bytes {
    Bytes::from(format!("{service}/{id}"))
}

/// What a registry change was, for watchers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A new instance.
    Registered,
    /// An instance removed (deregistered, or expired).
    Deregistered,
    /// Only its health changed.
    HealthChanged,
    /// It registered again with other details.
    Updated,
}

impl EventKind {
    /// `registered`, `deregistered`, `health_changed` or `updated`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Registered => "registered",
            EventKind::Deregistered => "deregistered",
            EventKind::HealthChanged => "health_changed",
            EventKind::Updated => "updated",
        }
    }
}

/// The kind of a registry change.
pub fn event_kind(change: &Change) -> EventKind {
    match change.kind() {
        Kind::Created => EventKind::Registered,
        Kind::Deleted => EventKind::Deregistered,
        Kind::Updated => {
            let decode = |v: &Option<Bytes>| v.as_ref().and_then(|b| Instance::decode_value(b).ok());
            match (decode(&change.previous), decode(&change.value)) {
                (Some(before), Some(after)) if same_but_health(&before, &after) => EventKind::HealthChanged,
                _ => EventKind::Updated,
            }
        }
    }
}

fn same_but_health(a: &Instance, b: &Instance) -> bool {
    let strip =
        |i: &Instance| Instance { health: 0, output: String::new(), critical_since_ms: 0, lease: 0, ..i.clone() };
    strip(a) == strip(b)
}

/// Bounds of registrations.
#[derive(Debug, Clone, Copy)]
pub struct RegistryLimits {
    /// The lease TTL when none is given.
    pub default_ttl: Duration,
    /// How long an instance may stay critical before removal, when not
    /// given: this many TTLs.
    pub deregister_after_ttls: u32,
    /// Most tags, capabilities, dependencies or metadata entries.
    pub max_labels: usize,
    /// Longest name, id, tag, capability or metadata key.
    pub max_name_bytes: usize,
    /// Longest metadata value.
    pub max_value_bytes: usize,
}

impl Default for RegistryLimits {
    fn default() -> Self {
        RegistryLimits {
            default_ttl: Duration::from_secs(30),
            deregister_after_ttls: 2,
            max_labels: 64,
            max_name_bytes: 128,
            max_value_bytes: 512,
        }
    }
}

fn invalid(message: String) -> RecipeError {
    RecipeError::InvalidArgument(message)
}

/// Checks a service name or instance id: 1..=max bytes of letters, digits,
/// `.`, `_` and `-`.
pub fn check_name(what: &str, name: &str, limits: &RegistryLimits) -> Result<(), RecipeError> {
    let ok = !name.is_empty()
        && name.len() <= limits.max_name_bytes
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(invalid(format!(
            "{what} {name:?} must be 1..={} bytes of letters, digits, '.', '_' and '-'",
            limits.max_name_bytes
        )));
    }
    Ok(())
}

/// Checks an active check's URL: its scheme must be one Cohort runs.
pub fn check_check(check: &str) -> Result<(), RecipeError> {
    if check.is_empty() {
        return Ok(());
    }
    let Some((scheme, rest)) = check.split_once("://") else {
        return Err(invalid(format!("check {check:?} is not a URL (http://…, tcp://host:port, grpc://host:port)")));
    };
    if !matches!(scheme, "http" | "tcp" | "grpc") {
        return Err(invalid(format!("unknown check scheme {scheme:?}: use http, tcp or grpc")));
    }
    if rest.is_empty() || check.len() > 1024 {
        return Err(invalid(format!("check {check:?} names no address")));
    }
    Ok(())
}

/// Checks what a registration carries.
pub fn check_instance(instance: &Instance, limits: &RegistryLimits) -> Result<(), RecipeError> {
    check_name("service name", &instance.service, limits)?;
    check_name("instance id", &instance.id, limits)?;
    let endpoint = instance.endpoint.as_ref().ok_or_else(|| invalid("an instance needs an endpoint".into()))?;
    if endpoint.host.is_empty() || endpoint.host.len() > 255 {
        return Err(invalid(format!("host must be 1..=255 bytes, not {}", endpoint.host.len())));
    }
    if !(1..=65535).contains(&endpoint.port) {
        return Err(invalid(format!("port {} is out of range 1..=65535", endpoint.port)));
    }
    if endpoint.protocol.len() > limits.max_name_bytes || endpoint.path.len() > 1024 {
        return Err(invalid("protocol or path too long".into()));
    }
    for (what, labels) in
        [("tag", &instance.tags), ("capability", &instance.capabilities), ("dependency", &instance.dependencies)]
    {
        if labels.len() > limits.max_labels {
            return Err(invalid(format!("at most {} of each label, not {} {what}s", limits.max_labels, labels.len())));
        }
        if let Some(bad) = labels.iter().find(|l| l.is_empty() || l.len() > limits.max_name_bytes) {
            return Err(invalid(format!("{what} {bad:?} must be 1..={} bytes", limits.max_name_bytes)));
        }
    }
    if instance.metadata.len() > limits.max_labels {
        return Err(invalid(format!("at most {} metadata entries", limits.max_labels)));
    }
    for (key, value) in &instance.metadata {
        if key.is_empty() || key.len() > limits.max_name_bytes || value.len() > limits.max_value_bytes {
            return Err(invalid(format!(
                "metadata {key:?}: keys are 1..={} bytes, values at most {}",
                limits.max_name_bytes, limits.max_value_bytes
            )));
        }
    }
    check_check(&instance.check)
}

/// The registry of one tenant.
pub struct Registry<'a> {
    registers: &'a dyn Registers,
    clock: &'a dyn Clock,
    tenant: &'a str,
    journal: JournalLimits,
    leases: Limits,
    limits: RegistryLimits,
}

fn write_error(error: WriteError) -> RecipeError {
    match error {
        WriteError::Recipe(error) => error,
        WriteError::NotFound => RecipeError::NotFound("no such instance".into()),
        WriteError::VersionMismatch { current } => {
            RecipeError::FailedPrecondition(format!("the instance changed meanwhile (version {current})"))
        }
        WriteError::TooManyKeys(count) => {
            RecipeError::ResourceExhausted(format!("the registry holds {count} instances, its limit"))
        }
    }
}

fn write_id() -> Bytes {
    Bytes::copy_from_slice(&rand::random::<[u8; 16]>())
}

impl<'a> Registry<'a> {
    /// The registry of `tenant`.
    pub fn new(
        registers: &'a dyn Registers,
        clock: &'a dyn Clock,
        tenant: &'a str,
        journal: JournalLimits,
        limits: RegistryLimits,
    ) -> Self {
        Registry { registers, clock, tenant, journal, leases: Limits::default(), limits }
    }

    /// The journaled map under the registry.
    pub fn journal(&self) -> Journal<'a> {
        Journal::new(self.registers, self.clock, self.tenant, MAP, self.journal)
    }

    /// Registers `instance` (again, if its id is taken: its details and
    /// lease are replaced) under a new lease of `ttl`. Returns the record
    /// and the change.
    pub async fn register(
        &self,
        mut instance: Instance,
        ttl: Option<Duration>,
    ) -> Result<(Instance, Change), RecipeError> {
        check_instance(&instance, &self.limits)?;
        let ttl = lease::check_ttl(Some(ttl.unwrap_or(self.limits.default_ttl)), &self.leases)?;
        if instance.deregister_after_ms == 0 {
            instance.deregister_after_ms = ttl.as_millis() as u64 * u64::from(self.limits.deregister_after_ttls);
        }
        let granted = lease::grant(self.registers, self.clock, self.tenant, Some(ttl), &self.leases).await?;
        instance.lease = granted.id;
        instance.ttl_ms = ttl.as_millis() as u64;
        // Without an active check the lease is the health; with one, the
        // instance waits for its first passing check.
        let (health, output) = match instance.check.is_empty() {
            true => (Health::Passing, "registered".to_string()),
            false => (Health::Critical, "waiting for the first check".to_string()),
        };
        instance.health = health as i32;
        instance.output = output;
        instance.critical_since_ms = if health == Health::Critical { self.clock.now_ms() } else { 0 };
        let (previous, _) = self.journal().get(&instance.key()).await?;
        let write = Write {
            key: instance.key(),
            value: Some(instance.encode()),
            expect_version: None,
            updated_by: format!("register {}", instance.id),
            id: write_id(),
        };
        let change = self.journal().write(write).await.map_err(write_error)?;
        if let Some(old) = previous.value().and_then(|v| Instance::decode_value(v).ok())
            && old.lease != instance.lease
        {
            let _ = lease::revoke(self.registers, self.clock, self.tenant, old.lease).await;
        }
        Ok((instance, change))
    }

    /// The instance's record, if registered.
    pub async fn get(&self, service: &str, id: &str) -> Result<Option<(Instance, u64)>, RecipeError> {
        let (snapshot, _) = self.journal().get(&instance_key(service, id)).await?;
        match snapshot.value() {
            Some(value) => Ok(Some((Instance::decode_value(value)?, snapshot.version()))),
            None => Ok(None),
        }
    }

    /// Renews the instance's lease. An instance whose lease lapsed but that
    /// is still registered gets a new one (its health is judged again on
    /// the next round). Changes no record while the lease lives.
    pub async fn heartbeat(&self, service: &str, id: &str) -> Result<Instance, RecipeError> {
        check_name("service name", service, &self.limits)?;
        check_name("instance id", id, &self.limits)?;
        loop {
            let Some((mut instance, version)) = self.get(service, id).await? else {
                return Err(RecipeError::NotFound(format!(
                    "instance {id:?} of service {service:?} is not registered (register it again)"
                )));
            };
            match lease::keep_alive(self.registers, self.clock, self.tenant, instance.lease).await {
                Ok(_) => return Ok(instance),
                Err(RecipeError::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
            let ttl = Duration::from_millis(instance.ttl_ms);
            let granted = lease::grant(self.registers, self.clock, self.tenant, Some(ttl), &self.leases).await?;
            instance.lease = granted.id;
            if instance.check.is_empty() {
                instance.health = Health::Passing as i32;
                instance.output = "heartbeat after the lease lapsed".into();
                instance.critical_since_ms = 0;
            }
            let write = Write {
                key: instance.key(),
                value: Some(instance.encode()),
                expect_version: Some(version),
                updated_by: format!("heartbeat {id}"),
                id: write_id(),
            };
            match self.journal().write(write).await {
                Ok(_) => return Ok(instance),
                // Judged or re-registered meanwhile: look again.
                Err(WriteError::VersionMismatch { .. }) => {
                    let _ = lease::revoke(self.registers, self.clock, self.tenant, granted.id).await;
                }
                Err(error) => return Err(write_error(error)),
            }
        }
    }

    /// Renews lease `lease` of the instance directly, without reading its
    /// record: its TTL when live; `None` when the lease lapsed (then
    /// [`Registry::heartbeat`] gives it a new one).
    pub async fn heartbeat_lease(&self, service: &str, id: &str, lease: u64) -> Result<Option<Duration>, RecipeError> {
        check_name("service name", service, &self.limits)?;
        check_name("instance id", id, &self.limits)?;
        match lease::keep_alive(self.registers, self.clock, self.tenant, lease).await {
            Ok(renewed) => Ok(Some(renewed.ttl)),
            Err(RecipeError::NotFound(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Removes the instance and revokes its lease.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<Change, RecipeError> {
        check_name("service name", service, &self.limits)?;
        check_name("instance id", id, &self.limits)?;
        let Some((instance, _)) = self.get(service, id).await? else {
            return Err(RecipeError::NotFound(format!("instance {id:?} of service {service:?} is not registered")));
        };
        let write = Write {
            key: instance_key(service, id),
            value: None,
            expect_version: None,
            updated_by: format!("deregister {id}"),
            id: write_id(),
        };
        let change = self.journal().write(write).await.map_err(write_error)?;
        let _ = lease::revoke(self.registers, self.clock, self.tenant, instance.lease).await;
        Ok(change)
    }

    /// Every instance of `service` (of every service when `None`), with the
    /// revision listed at.
    pub async fn list(&self, service: Option<&str>) -> Result<(Vec<Instance>, u64), RecipeError> {
        let prefix = match service {
            Some(service) => {
                check_name("service name", service, &self.limits)?;
                format!("{service}/")
            }
            None => String::new(),
        };
        let (changes, revision) = self.journal().list(prefix.as_bytes()).await?;
        let instances = changes
            .iter()
            .filter_map(|c| c.value.as_ref())
            .map(Instance::decode_value)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((instances, revision))
    }

    /// Writes a new judgement of `instance` (read at `version`); nothing if
    /// the instance changed meanwhile. Removes it instead when `remove`.
    pub async fn record(&self, instance: &Instance, version: u64, remove: bool) -> Result<bool, RecipeError> {
        let write = Write {
            key: instance.key(),
            value: (!remove).then(|| instance.encode()),
            expect_version: Some(version),
            updated_by: if remove { "expired".into() } else { "health check".into() },
            id: write_id(),
        };
        match self.journal().write(write).await {
            Ok(_) => {
                if remove {
                    let _ = lease::revoke(self.registers, self.clock, self.tenant, instance.lease).await;
                }
                Ok(true)
            }
            Err(WriteError::VersionMismatch { .. } | WriteError::NotFound) => Ok(false),
            Err(error) => Err(write_error(error)),
        }
    }

    /// Whether the instance's lease is live.
    pub async fn lease_live(&self, instance: &Instance) -> Result<bool, RecipeError> {
        Ok(lease::live(self.registers, self.clock, self.tenant, instance.lease).await?.is_some())
    }

    /// One round of judging every instance of the tenant: each whose
    /// health should change (see [`evaluate`]; `checks` holds the streaks
    /// and last outputs of active checks, by registry key) gets one journal
    /// change, and each critical for its whole removal period is removed.
    /// Instances that stay as they are change nothing. Returns what it did.
    pub async fn sweep(
        &self,
        checks: &BTreeMap<Bytes, (Streak, String)>,
        hysteresis: Hysteresis,
    ) -> Result<Vec<(Bytes, Action)>, RecipeError> {
        let (entries, _) = self.journal().list(b"").await?;
        self.sweep_listed(&entries, checks, hysteresis).await
    }

    /// [`Registry::sweep`] over `entries`, a listing of the registry the
    /// caller has just read (and ran its checks from).
    pub async fn sweep_listed(
        &self,
        entries: &[Change],
        checks: &BTreeMap<Bytes, (Streak, String)>,
        hysteresis: Hysteresis,
    ) -> Result<Vec<(Bytes, Action)>, RecipeError> {
        let mut done = Vec::new();
        for entry in entries {
            let Some(value) = &entry.value else { continue };
            let mut instance = Instance::decode_value(value)?;
            let live = self.lease_live(&instance).await?;
            let check = match instance.check.is_empty() {
                true => None,
                false => {
                    Some(checks.get(&entry.key).map_or((Streak::default(), instance.output.clone()), Clone::clone))
                }
            };
            let verdict = evaluate(instance.health(), live, check.as_ref().map(|(s, o)| (s, o.as_str())), hysteresis);
            let now = self.clock.now_ms();
            let action = if verdict.health == Health::Critical
                && instance.health() == Health::Critical
                && now.saturating_sub(instance.critical_since_ms) >= instance.deregister_after_ms
            {
                Action::Removed
            } else if verdict.health != instance.health() {
                Action::Turned(verdict.health)
            } else {
                continue;
            };
            if let Action::Turned(health) = action {
                instance.health = health as i32;
                instance.output = verdict.output;
                instance.critical_since_ms = if health == Health::Critical { now } else { 0 };
            }
            if self.record(&instance, entry.version, action == Action::Removed).await? {
                done.push((entry.key.clone(), action));
            }
        }
        Ok(done)
    }
}

/// What a sweep did to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Its health turned.
    Turned(Health),
    /// It was removed, critical for its whole removal period.
    Removed,
}

/// A judgement of an instance: its health and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The health it should have.
    pub health: Health,
    /// Why.
    pub output: String,
}

/// Counts of consecutive check results, kept by whoever runs the checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streak {
    /// Consecutive passing checks.
    pub passes: u32,
    /// Consecutive failing checks.
    pub failures: u32,
}

impl Streak {
    /// Counts one result.
    pub fn record(&mut self, passed: bool) {
        if passed {
            self.passes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.passes = 0;
        }
    }
}

/// Hysteresis of active checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    /// Consecutive passing checks that make a critical instance passing.
    pub passing_after: u32,
    /// Consecutive failing checks that make a passing instance critical.
    pub critical_after: u32,
}

impl Default for Hysteresis {
    fn default() -> Self {
        Hysteresis { passing_after: 2, critical_after: 3 }
    }
}

/// The health an instance should have now: critical while its lease is
/// lapsed; otherwise, with an active check, what the streak of results
/// says under `hysteresis` (unchanged until a streak is long enough);
/// without one, passing.
pub fn evaluate(current: Health, lease_live: bool, check: Option<(&Streak, &str)>, hysteresis: Hysteresis) -> Verdict {
    if !lease_live {
        return Verdict { health: Health::Critical, output: "lease lapsed: no heartbeat within its TTL".into() };
    }
    match check {
        None => Verdict { health: Health::Passing, output: "lease live".into() },
        Some((streak, output)) => {
            let health = if streak.passes >= hysteresis.passing_after.max(1) {
                Health::Passing
            } else if streak.failures >= hysteresis.critical_after.max(1) {
                Health::Critical
            } else {
                current
            };
            Verdict { health, output: output.to_string() }
        }
    }
}

#[cfg(test)]
mod tests;
