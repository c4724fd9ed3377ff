//! The public `Config` service: versioned configuration as the journaled
//! map `config` of each tenant (`cohort_recipes::journal`), and its watch
//! (`coord::watch`).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use cohort_proto::coord::v1 as pb;
use cohort_proto::coord::v1::config_server;
use cohort_recipes::SystemClock;
use cohort_recipes::journal::{Change, Journal, JournalLimits, Kind, Write, WriteError};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::coord::cas::CURRENT_VERSION_HEADER;
use crate::coord::watch::{EventStream, Events, Feeds};
use crate::coord::{TenantRegisters, check_tenant, recipe_status};
use crate::server::Coordinator;

/// The journaled map configuration lives in.
const MAP: &str = "config";
/// Longest configuration key, in bytes.
const MAX_KEY_BYTES: usize = 512;
/// Largest configuration value, in bytes.
const MAX_VALUE_BYTES: usize = 128 * 1024;
/// Longest `updated_by`, in bytes.
const MAX_UPDATED_BY_BYTES: usize = 256;

/// The public configuration service.
#[derive(Clone)]
pub struct ConfigService {
    registers: Arc<TenantRegisters>,
    limits: JournalLimits,
    feeds: Arc<Feeds>,
    stopping: watch::Receiver<bool>,
}

impl ConfigService {
    /// The service over `coordinator`, with the bounds of its
    /// `[configuration]` settings; watches end when `stopping` turns true.
    pub fn new(coordinator: Arc<Coordinator>, stopping: watch::Receiver<bool>) -> Self {
        let settings = &coordinator.config.configuration;
        let (limits, buffer) = (settings.journal_limits(), settings.watch_buffer.max(1));
        let registers = Arc::new(TenantRegisters::new(coordinator));
        let feeds = Feeds::new(registers.clone(), MAP, limits, buffer);
        ConfigService { registers, limits, feeds, stopping }
    }

    fn journal<'a>(&'a self, tenant: &'a str) -> Journal<'a> {
        Journal::new(&*self.registers, &SystemClock, tenant, MAP, self.limits)
    }

    /// Commits `write`, wakes the watchers' feed and answers; applying the
    /// change to its entry finishes behind the answer (readers see it
    /// through the journal's window meanwhile).
    async fn write(&self, tenant: &str, write: Write) -> Result<pb::ConfigPutResponse, Status> {
        let committed = self.journal(tenant).commit(write).await.map_err(write_status)?;
        self.feeds.wake(tenant);
        let answer = pb::ConfigPutResponse { version: committed.change.version, revision: committed.change.revision };
        let (service, tenant) = (self.clone(), tenant.to_string());
        tokio::spawn(async move { service.journal(&tenant).finish(&committed).await });
        Ok(answer)
    }
}

fn check_key(key: &str) -> Result<(), Status> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(Status::invalid_argument(format!(
            "a configuration key is 1..={MAX_KEY_BYTES} bytes, not {}",
            key.len()
        )));
    }
    Ok(())
}

fn check_updated_by(updated_by: &str) -> Result<(), Status> {
    if updated_by.len() > MAX_UPDATED_BY_BYTES {
        return Err(Status::invalid_argument(format!(
            "updated_by is {} bytes; the limit is {MAX_UPDATED_BY_BYTES}",
            updated_by.len()
        )));
    }
    Ok(())
}

fn write_status(error: WriteError) -> Status {
    match error {
        WriteError::VersionMismatch { current } => {
            let mut status = Status::failed_precondition(format!("version mismatch: the key is at version {current}"));
            status.metadata_mut().insert(CURRENT_VERSION_HEADER, current.into());
            status
        }
        WriteError::NotFound => Status::not_found("the key has no value; nothing to delete"),
        WriteError::TooManyKeys(count) => Status::resource_exhausted(format!(
            "the tenant's configuration holds {count} keys, its limit; delete some first"
        )),
        WriteError::Recipe(error) => recipe_status(error),
    }
}

fn key_text(key: &Bytes) -> String {
    String::from_utf8_lossy(key).into_owned()
}

fn value_of(change: &Change) -> pb::ConfigValue {
    pb::ConfigValue {
        key: key_text(&change.key),
        value: change.value.clone(),
        version: change.version,
        revision: change.revision,
        updated_by: change.updated_by.clone(),
        updated_at_ms: change.at_ms,
    }
}

fn event_of(change: &Change) -> pb::ConfigEvent {
    let kind = match change.kind() {
        Kind::Created => pb::ConfigEventKind::Created,
        Kind::Updated => pb::ConfigEventKind::Updated,
        Kind::Deleted => pb::ConfigEventKind::Deleted,
    };
    pb::ConfigEvent {
        revision: change.revision,
        kind: kind.into(),
        key: key_text(&change.key),
        value: change.value.clone(),
        previous: change.previous.clone(),
        version: change.version,
        updated_by: change.updated_by.clone(),
        updated_at_ms: change.at_ms,
    }
}

fn progress(revision: u64) -> pb::ConfigEvent {
    pb::ConfigEvent { revision, kind: pb::ConfigEventKind::Progress.into(), ..pb::ConfigEvent::default() }
}

fn record<T>(op: &'static str, started: Instant, result: &Result<T, Status>) {
    let status = match result {
        Ok(_) => "ok".to_string(),
        Err(status) => format!("{:?}", status.code()),
    };
    metrics::counter!("cohort_config_requests_total", "op" => op, "status" => status).increment(1);
    metrics::histogram!("cohort_config_request_duration_seconds", "op" => op).record(started.elapsed().as_secs_f64());
}

fn write_id() -> Bytes {
    Bytes::copy_from_slice(&rand::random::<[u8; 16]>())
}

#[tonic::async_trait]
impl config_server::Config for ConfigService {
    async fn get(&self, request: Request<pb::ConfigGetRequest>) -> Result<Response<pb::ConfigGetResponse>, Status> {
        let (started, r) = (Instant::now(), request.into_inner());
        let result = async {
            check_tenant(&r.tenant)?;
            check_key(&r.key)?;
            let (snapshot, revision) = self.journal(&r.tenant).get(r.key.as_bytes()).await.map_err(recipe_status)?;
            let found = match r.version {
                0 => snapshot.current().filter(|c| c.value.is_some()),
                version => match snapshot.history.iter().find(|c| c.version == version) {
                    Some(change) => Some(change),
                    None if version > snapshot.version() => {
                        return Err(Status::not_found(format!(
                            "the key is at version {}; version {version} does not exist yet",
                            snapshot.version()
                        )));
                    }
                    None => {
                        let oldest = snapshot.history.first().map_or(0, |c| c.version);
                        return Err(Status::not_found(format!(
                            "version {version} is no longer retained (the oldest retained is {oldest})"
                        )));
                    }
                },
            };
            Ok(pb::ConfigGetResponse { found: found.is_some(), entry: found.map(value_of), revision })
        }
        .await;
        record("get", started, &result);
        result.map(Response::new)
    }

    async fn put(&self, request: Request<pb::ConfigPutRequest>) -> Result<Response<pb::ConfigPutResponse>, Status> {
        let (started, r) = (Instant::now(), request.into_inner());
        let result = async {
            check_tenant(&r.tenant)?;
            check_key(&r.key)?;
            check_updated_by(&r.updated_by)?;
            if r.value.len() > MAX_VALUE_BYTES {
                return Err(Status::invalid_argument(format!(
                    "a configuration value is at most {MAX_VALUE_BYTES} bytes, not {}",
                    r.value.len()
                )));
            }
            let write = Write {
                key: Bytes::from(r.key.into_bytes()),
                value: Some(r.value),
                expect_version: r.expect_version,
                updated_by: r.updated_by,
                id: write_id(),
            };
            self.write(&r.tenant, write).await
        }
        .await;
        record("put", started, &result);
        result.map(Response::new)
    }

    async fn delete(
        &self,
        request: Request<pb::ConfigDeleteRequest>,
    ) -> Result<Response<pb::ConfigPutResponse>, Status> {
        let (started, r) = (Instant::now(), request.into_inner());
        let result = async {
            check_tenant(&r.tenant)?;
            check_key(&r.key)?;
            check_updated_by(&r.updated_by)?;
            let write = Write {
                key: Bytes::from(r.key.into_bytes()),
                value: None,
                expect_version: r.expect_version,
                updated_by: r.updated_by,
                id: write_id(),
            };
            self.write(&r.tenant, write).await
        }
        .await;
        record("delete", started, &result);
        result.map(Response::new)
    }

    async fn history(
        &self,
        request: Request<pb::ConfigHistoryRequest>,
    ) -> Result<Response<pb::ConfigHistoryResponse>, Status> {
        let (started, r) = (Instant::now(), request.into_inner());
        let result = async {
            check_tenant(&r.tenant)?;
            check_key(&r.key)?;
            let (snapshot, _) = self.journal(&r.tenant).get(r.key.as_bytes()).await.map_err(recipe_status)?;
            if snapshot.history.is_empty() {
                return Err(Status::not_found("the key was never written"));
            }
            Ok(pb::ConfigHistoryResponse { versions: snapshot.history.iter().map(value_of).collect() })
        }
        .await;
        record("history", started, &result);
        result.map(Response::new)
    }

    async fn list(&self, request: Request<pb::ConfigListRequest>) -> Result<Response<pb::ConfigListResponse>, Status> {
        let (started, r) = (Instant::now(), request.into_inner());
        let result = async {
            check_tenant(&r.tenant)?;
            if r.prefix.len() > MAX_KEY_BYTES {
                return Err(Status::invalid_argument(format!("a prefix is at most {MAX_KEY_BYTES} bytes")));
            }
            let (entries, revision) = self.journal(&r.tenant).list(r.prefix.as_bytes()).await.map_err(recipe_status)?;
            Ok(pb::ConfigListResponse { entries: entries.iter().map(value_of).collect(), revision })
        }
        .await;
        record("list", started, &result);
        result.map(Response::new)
    }

    type WatchStream = EventStream<pb::ConfigEvent>;

    async fn watch(&self, request: Request<pb::ConfigWatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let r = request.into_inner();
        check_tenant(&r.tenant)?;
        if r.prefix.len() > MAX_KEY_BYTES {
            return Err(Status::invalid_argument(format!("a prefix is at most {MAX_KEY_BYTES} bytes")));
        }
        let events = Events { change: event_of, progress };
        let prefix = Bytes::from(r.prefix.into_bytes());
        let stream = self.feeds.watch(&r.tenant, prefix, r.from_revision, events, self.stopping.clone()).await?;
        metrics::counter!("cohort_config_watches_total").increment(1);
        Ok(Response::new(stream))
    }
}
