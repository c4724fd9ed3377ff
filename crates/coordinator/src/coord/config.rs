//! The public `Config` service: versioned configuration as the journaled
//! map `config` of each tenant (`cohort_recipes::journal`), and its watch.
//!
//! Watchers of one tenant share a *feed*: one task that reads the journal
//! from where it stopped whenever a change is made through this
//! coordinator, and every [`POLL`] otherwise (changes made through other
//! coordinators), and broadcasts what it finds. A watcher first reads the
//! journal itself from its start revision up to the head, then follows the
//! feed, reading the journal again for any revisions it finds missing; so
//! what it sends is every change from its start, in order, once. A watcher
//! whose client does not keep up falls behind the feed's buffer and is
//! cancelled with `ResourceExhausted` — never skipped ahead.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_proto::coord::v1 as pb;
use cohort_proto::coord::v1::config_server;
use cohort_recipes::journal::{Change, Compacted, Journal, JournalLimits, Kind, Write, WriteError};
use cohort_recipes::{RecipeError, SystemClock};
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::coord::cas::CURRENT_VERSION_HEADER;
use crate::coord::recipes::stopped;
use crate::coord::{TenantRegisters, recipe_status};
use crate::server::Coordinator;
use crate::validate;

/// The journaled map configuration lives in.
const MAP: &str = "config";
/// How often a feed reads the journal when nothing woke it.
const POLL: Duration = Duration::from_millis(50);
/// How long an idle watch goes without a progress marker.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Changes read from the journal per call.
const BATCH: usize = 256;
/// Response metadata of a compacted start: the oldest retained revision.
pub const COMPACTED_HEADER: &str = "cohort-compacted-revision";
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
        let feeds = Arc::new(Feeds { registers: registers.clone(), limits, buffer, feeds: Mutex::default() });
        ConfigService { registers, limits, feeds, stopping }
    }

    fn journal<'a>(&'a self, tenant: &'a str) -> Journal<'a> {
        Journal::new(&*self.registers, &SystemClock, tenant, MAP, self.limits)
    }

    async fn write(&self, tenant: &str, write: Write) -> Result<pb::ConfigPutResponse, Status> {
        let change = self.journal(tenant).write(write).await.map_err(write_status)?;
        self.feeds.wake(tenant);
        Ok(pb::ConfigPutResponse { version: change.version, revision: change.revision })
    }
}

fn check_tenant(tenant: &str) -> Result<(), Status> {
    validate::tenant_id(tenant).map_err(Status::from)
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

fn compacted_status(compacted: Compacted) -> Status {
    let mut status = Status::out_of_range(format!("{compacted}; list the keys and watch from the listed revision + 1"));
    status.metadata_mut().insert(COMPACTED_HEADER, compacted.oldest.into());
    status
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

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::ConfigEvent, Status>> + Send>>;

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

    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<pb::ConfigWatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let r = request.into_inner();
        check_tenant(&r.tenant)?;
        if r.prefix.len() > MAX_KEY_BYTES {
            return Err(Status::invalid_argument(format!("a prefix is at most {MAX_KEY_BYTES} bytes")));
        }
        // Subscribed before the first read of the journal, so nothing
        // committed after that read can be missed.
        let feed = self.feeds.subscribe(&r.tenant);
        let next = match r.from_revision {
            0 => self.journal(&r.tenant).revision().await.map_err(recipe_status)? + 1,
            from => {
                // A compacted start is refused now, as the call's status.
                if let Err(compacted) = self.journal(&r.tenant).changes_from(from, 0).await.map_err(recipe_status)? {
                    return Err(compacted_status(compacted));
                }
                from
            }
        };
        let (sender, receiver) = mpsc::channel(64);
        let watcher = Watcher {
            service: self.clone(),
            tenant: r.tenant,
            prefix: Bytes::from(r.prefix.into_bytes()),
            next,
            sender,
        };
        tokio::spawn(watcher.run(feed));
        metrics::counter!("cohort_config_watches_total").increment(1);
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }
}

/// What a feed broadcasts.
#[derive(Debug, Clone)]
enum Item {
    /// A committed change.
    Change(Arc<Change>),
    /// The feed has read the journal up to this revision and found no more.
    Caught(u64),
}

/// The feeds of this coordinator, one per tenant with watchers.
struct Feeds {
    registers: Arc<TenantRegisters>,
    limits: JournalLimits,
    /// Changes buffered for the slowest watcher.
    buffer: usize,
    feeds: Mutex<HashMap<String, Arc<Feed>>>,
}

struct Feed {
    items: broadcast::Sender<Item>,
    wake: Notify,
}

impl Feeds {
    /// A receiver of `tenant`'s feed, starting the feed if none runs.
    fn subscribe(self: &Arc<Self>, tenant: &str) -> broadcast::Receiver<Item> {
        let mut feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(feed) = feeds.get(tenant) {
            return feed.items.subscribe();
        }
        let (items, receiver) = broadcast::channel(self.buffer);
        let feed = Arc::new(Feed { items, wake: Notify::new() });
        feeds.insert(tenant.to_string(), feed.clone());
        tokio::spawn(self.clone().run(tenant.to_string(), feed));
        receiver
    }

    /// Wakes `tenant`'s feed, if it has one: a change was just committed.
    fn wake(&self, tenant: &str) {
        if let Some(feed) = self.feeds.lock().unwrap_or_else(|p| p.into_inner()).get(tenant) {
            feed.wake.notify_one();
        }
    }

    /// Reads the journal and broadcasts, until no watcher is left.
    async fn run(self: Arc<Self>, tenant: String, feed: Arc<Feed>) {
        let journal = Journal::new(&*self.registers, &SystemClock, &tenant, MAP, self.limits);
        let mut next = None;
        loop {
            match read_feed(&journal, &mut next).await {
                Ok(items) => {
                    for item in items {
                        let _ = feed.items.send(item);
                    }
                }
                Err(error) => tracing::debug!(%error, tenant, "configuration feed: journal read failed"),
            }
            tokio::select! {
                () = feed.wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
            }
            let mut feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
            if feed.items.receiver_count() == 0 {
                feeds.remove(&tenant);
                return;
            }
        }
    }
}

/// The changes after `next` (all of them up to the head, in batches), then
/// a `Caught` marker; `next` starts at the head when unset. A feed that
/// finds its position compacted (it fell far behind) starts again from
/// the oldest retained revision; its watchers notice the gap and read it
/// from the journal, where they meet the compaction themselves.
async fn read_feed(journal: &Journal<'_>, next: &mut Option<u64>) -> Result<Vec<Item>, RecipeError> {
    let mut items = Vec::new();
    let mut from = match *next {
        Some(from) => from,
        None => journal.revision().await? + 1,
    };
    loop {
        match journal.changes_from(from, BATCH).await? {
            Ok((changes, head)) => {
                let last = changes.last().map(|c| c.revision);
                items.extend(changes.into_iter().map(|c| Item::Change(Arc::new(c))));
                match last {
                    Some(last) if last < head => from = last + 1,
                    _ => {
                        from = from.max(head + 1);
                        items.push(Item::Caught(head));
                        break;
                    }
                }
            }
            Err(compacted) => from = compacted.oldest,
        }
    }
    *next = Some(from);
    Ok(items)
}

/// One watch: its position and its client.
struct Watcher {
    service: ConfigService,
    tenant: String,
    prefix: Bytes,
    /// The next revision to deliver.
    next: u64,
    sender: mpsc::Sender<Result<pb::ConfigEvent, Status>>,
}

/// Why a watch ended.
enum End {
    /// The client went away.
    Gone,
    /// It ends with this status.
    Error(Status),
}

impl Watcher {
    async fn run(mut self, mut feed: broadcast::Receiver<Item>) {
        let mut stopping = self.service.stopping.clone();
        let ended: Result<(), End> = async {
            // Where the watch starts: every change up to here is not its.
            self.send(progress(self.next - 1)).await?;
            self.catch_up(u64::MAX).await?;
            let mut last_sent = Instant::now();
            loop {
                let item = tokio::select! {
                    item = feed.recv() => item,
                    () = self.sender.closed() => return Err(End::Gone),
                    () = stopped(&mut stopping) => {
                        return Err(End::Error(Status::unavailable(format!(
                            "the coordinator is shutting down; watch again from revision {}", self.next
                        ))));
                    }
                };
                match item {
                    Ok(Item::Change(change)) => {
                        if change.revision > self.next {
                            self.catch_up(change.revision).await?;
                        }
                        if change.revision == self.next {
                            self.deliver(&change).await?;
                            last_sent = Instant::now();
                        }
                    }
                    Ok(Item::Caught(head)) => {
                        if head >= self.next {
                            self.catch_up(head + 1).await?;
                        }
                        if last_sent.elapsed() >= PROGRESS_EVERY {
                            self.send(progress(self.next - 1)).await?;
                            last_sent = Instant::now();
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        metrics::counter!("cohort_config_watches_cancelled_total").increment(1);
                        return Err(End::Error(Status::resource_exhausted(format!(
                            "watcher too slow: {missed} changes behind the feed; cancelled at revision {} \
                             (watch again from it)",
                            self.next
                        ))));
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        feed = self.service.feeds.subscribe(&self.tenant);
                        self.catch_up(u64::MAX).await?;
                    }
                }
            }
        }
        .await;
        if let Err(End::Error(status)) = ended {
            let _ = self.sender.send(Err(status)).await;
        }
    }

    /// Delivers every change from `next` up to (not including) `until`
    /// from the journal, or up to its head.
    async fn catch_up(&mut self, until: u64) -> Result<(), End> {
        let (service, tenant) = (self.service.clone(), self.tenant.clone());
        let journal = service.journal(&tenant);
        while self.next < until {
            let (changes, head) = match journal.changes_from(self.next, BATCH).await {
                Ok(Ok(read)) => read,
                Ok(Err(compacted)) => return Err(End::Error(compacted_status(compacted))),
                Err(error) => return Err(End::Error(recipe_status(error))),
            };
            let mut progressed = false;
            for change in changes.iter().take_while(|c| c.revision < until) {
                self.deliver(change).await?;
                progressed = true;
            }
            if !progressed || self.next > head {
                break;
            }
        }
        Ok(())
    }

    /// Sends `change` if it is under the prefix, and moves past it.
    async fn deliver(&mut self, change: &Change) -> Result<(), End> {
        if change.key.starts_with(&self.prefix) {
            self.send(event_of(change)).await?;
        }
        self.next = change.revision + 1;
        Ok(())
    }

    async fn send(&self, event: pb::ConfigEvent) -> Result<(), End> {
        self.sender.send(Ok(event)).await.map_err(|_| End::Gone)
    }
}
