//! Watches of journaled maps (`cohort_recipes::journal`): configuration
//! and the service registry.
//!
//! Watchers of one map of one tenant share a *feed*: one task that reads
//! the journal from where it stopped whenever a change is made through
//! this coordinator ([`Feeds::wake`]), and every [`POLL`] otherwise
//! (changes made through other coordinators), and broadcasts what it
//! finds. A watcher first sends a progress marker at the revision before
//! its start, reads the journal itself from its start up to the head, then
//! follows the feed, reading the journal again for any revisions it finds
//! missing; so what it sends is every change from its start, in order,
//! once. A start older than the retained revisions is refused
//! (`OutOfRange`, "compacted:"), and a watcher whose client does not keep
//! up falls behind the feed's buffer and is cancelled with
//! `ResourceExhausted` — never skipped ahead.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_recipes::journal::{Change, Compacted, Journal, JournalLimits};
use cohort_recipes::{RecipeError, SystemClock};
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio_stream::Stream;
use tonic::Status;

use crate::coord::recipes::stopped;
use crate::coord::{TenantRegisters, recipe_status};

/// How often a feed reads the journal when nothing woke it.
const POLL: Duration = Duration::from_millis(50);
/// How long an idle watch goes without a progress marker.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Changes read from the journal per call.
const BATCH: usize = 256;
/// How often an idle feed says it is still caught up.
const CAUGHT_EVERY: Duration = Duration::from_secs(1);
/// Response metadata of a compacted start: the oldest retained revision.
pub const COMPACTED_HEADER: &str = "cohort-compacted-revision";

/// A stream of watch events, as a service returns it.
pub type EventStream<E> = Pin<Box<dyn Stream<Item = Result<E, Status>> + Send>>;

/// How a map's changes become the events its watchers receive.
pub struct Events<E> {
    /// A change under the watched prefix.
    pub change: fn(&Change) -> E,
    /// A progress marker: every change up to this revision was delivered.
    pub progress: fn(u64) -> E,
}

impl<E> Clone for Events<E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E> Copy for Events<E> {}

/// The refusal of a compacted start.
pub fn compacted_status(compacted: Compacted) -> Status {
    let mut status = Status::out_of_range(format!("{compacted}; list, then watch from the listed revision + 1"));
    status.metadata_mut().insert(COMPACTED_HEADER, compacted.oldest.into());
    status
}

/// What a feed broadcasts.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// A committed change.
    Change(Arc<Change>),
    /// The feed has read the journal up to this revision and found no more.
    Caught(u64),
}

/// The feeds of one journaled map on this coordinator, one per tenant with
/// watchers.
pub struct Feeds {
    registers: Arc<TenantRegisters>,
    map: &'static str,
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
    /// Feeds of `map`, buffering `buffer` changes for the slowest watcher.
    pub fn new(registers: Arc<TenantRegisters>, map: &'static str, limits: JournalLimits, buffer: usize) -> Arc<Self> {
        Arc::new(Feeds { registers, map, limits, buffer: buffer.max(1), feeds: Mutex::default() })
    }

    pub(crate) fn journal<'a>(&'a self, tenant: &'a str) -> Journal<'a> {
        Journal::new(&*self.registers, &SystemClock, tenant, self.map, self.limits)
    }

    /// A watch of `tenant`'s changes under `prefix` from revision `from`
    /// (0: those after the watch starts), ending when `stopping` turns
    /// true. A compacted start is refused here, as the call's status.
    pub async fn watch<E: Send + 'static>(
        self: &Arc<Self>,
        tenant: &str,
        prefix: Bytes,
        from: u64,
        events: Events<E>,
        stopping: watch::Receiver<bool>,
    ) -> Result<EventStream<E>, Status> {
        // Subscribed before the first read of the journal, so nothing
        // committed after that read can be missed.
        let feed = self.subscribe(tenant);
        let next = match from {
            0 => self.journal(tenant).revision().await.map_err(recipe_status)? + 1,
            from => {
                if let Err(compacted) = self.journal(tenant).changes_from(from, 0).await.map_err(recipe_status)? {
                    return Err(compacted_status(compacted));
                }
                from
            }
        };
        let (sender, receiver) = mpsc::channel(64);
        let watcher =
            Watcher { feeds: self.clone(), tenant: tenant.to_string(), prefix, next, events, sender, stopping };
        tokio::spawn(watcher.run(feed));
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver)))
    }

    /// A receiver of `tenant`'s feed, starting the feed if none runs.
    pub(crate) fn subscribe(self: &Arc<Self>, tenant: &str) -> broadcast::Receiver<Item> {
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
    pub fn wake(&self, tenant: &str) {
        if let Some(feed) = self.feeds.lock().unwrap_or_else(|p| p.into_inner()).get(tenant) {
            feed.wake.notify_one();
        }
    }

    /// Reads the journal and broadcasts, until no watcher is left. A
    /// "caught up" marker goes out when the head moved, and otherwise at
    /// most every [`CAUGHT_EVERY`], so idle polls do not fill the buffer.
    async fn run(self: Arc<Self>, tenant: String, feed: Arc<Feed>) {
        let journal = self.journal(&tenant);
        let mut next = None;
        let mut last_caught: Option<(u64, Instant)> = None;
        loop {
            match read_feed(&journal, &mut next).await {
                Ok(items) => {
                    for item in items {
                        if let Item::Caught(head) = item {
                            let quiet = last_caught.is_some_and(|(h, at)| h == head && at.elapsed() < CAUGHT_EVERY);
                            if quiet {
                                continue;
                            }
                            last_caught = Some((head, Instant::now()));
                        }
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
struct Watcher<E> {
    feeds: Arc<Feeds>,
    tenant: String,
    prefix: Bytes,
    /// The next revision to deliver.
    next: u64,
    events: Events<E>,
    sender: mpsc::Sender<Result<E, Status>>,
    stopping: watch::Receiver<bool>,
}

/// Why a watch ended.
enum End {
    /// The client went away.
    Gone,
    /// It ends with this status.
    Error(Status),
}

impl<E: Send + 'static> Watcher<E> {
    async fn run(mut self, mut feed: broadcast::Receiver<Item>) {
        let mut stopping = self.stopping.clone();
        let ended: Result<(), End> = async {
            // Where the watch starts: every change up to here is not its.
            self.send((self.events.progress)(self.next - 1)).await?;
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
                            self.send((self.events.progress)(self.next - 1)).await?;
                            last_sent = Instant::now();
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        metrics::counter!("cohort_watches_cancelled_total", "map" => self.feeds.map).increment(1);
                        return Err(End::Error(Status::resource_exhausted(format!(
                            "watcher too slow: {missed} changes behind the feed; cancelled at revision {} \
                             (watch again from it)",
                            self.next
                        ))));
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        feed = self.feeds.subscribe(&self.tenant);
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
        let (feeds, tenant) = (self.feeds.clone(), self.tenant.clone());
        let journal = feeds.journal(&tenant);
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
            self.send((self.events.change)(change)).await?;
        }
        self.next = change.revision + 1;
        Ok(())
    }

    async fn send(&self, event: E) -> Result<(), End> {
        self.sender.send(Ok(event)).await.map_err(|_| End::Gone)
    }
}
