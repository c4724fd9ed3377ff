//! Views: a coordinator's copy of a journaled map, kept current by the
//! map's feed (`coord::watch`), so that discovery reads no registers.
//!
//! A view is built by listing the map at some revision, then follows the
//! feed's changes in revision order (a gap, or falling behind the feed's
//! buffer, rebuilds it). A read first learns the journal's head revision
//! (one register read), then waits until the view has caught up to it —
//! waking the feed so that this takes one journal read, not a poll — and
//! answers from memory. So a read reflects every change committed before it
//! began, through any coordinator: the same freshness as reading the
//! registers, for one register read instead of one per key. A view nobody
//! read for [`IDLE`] stops, and its feed with it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cohort_recipes::RecipeError;
use cohort_recipes::journal::Change;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use crate::coord::watch::{Feeds, Item};

/// How long an unread view keeps following its feed.
const IDLE: Duration = Duration::from_secs(60);
/// How long a read waits for its view to catch up before it reads the
/// registers instead.
const CATCH_UP: Duration = Duration::from_secs(2);

/// The views of one journaled map on this coordinator, one per tenant read.
pub struct Views {
    feeds: Arc<Feeds>,
    views: Mutex<HashMap<String, Arc<View>>>,
}

/// One tenant's view: every key with a value, as of `revision`.
struct View {
    state: Mutex<State>,
    /// The revision the view has caught up to; `None` until built.
    revision: watch::Sender<Option<u64>>,
    last_read: Mutex<Instant>,
}

#[derive(Default)]
struct State {
    /// The current change of every key that ever had one since the view was
    /// built (deletes included, so that an older change is never applied
    /// over a newer one).
    entries: BTreeMap<Bytes, Arc<Change>>,
}

impl Views {
    /// Views over the maps `feeds` follow.
    pub fn new(feeds: Arc<Feeds>) -> Arc<Self> {
        Arc::new(Views { feeds, views: Mutex::default() })
    }

    /// Every key under `prefix` that has a value, at least as fresh as the
    /// journal's head when called, and the revision answered at.
    pub async fn list(self: &Arc<Self>, tenant: &str, prefix: &[u8]) -> Result<(Vec<Arc<Change>>, u64), RecipeError> {
        let head = self.feeds.journal(tenant).revision().await?;
        let view = self.view(tenant);
        *view.last_read.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        let mut caught = view.revision.subscribe();
        let fresh = |r: &Option<u64>| r.is_some_and(|r| r >= head);
        if !fresh(&caught.borrow()) {
            self.feeds.wake(tenant);
            let caught_up = tokio::time::timeout(CATCH_UP, caught.wait_for(fresh)).await.is_ok_and(|r| r.is_ok());
            if !caught_up {
                // Behind or still building: read the registers.
                let (changes, revision) = self.feeds.journal(tenant).list(prefix).await?;
                return Ok((changes.into_iter().map(Arc::new).collect(), revision));
            }
        }
        let revision = view.revision.borrow().unwrap_or(head);
        let state = view.state.lock().unwrap_or_else(|p| p.into_inner());
        let found = state
            .entries
            .range::<[u8], _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .filter(|(_, change)| change.value.is_some())
            .map(|(_, change)| change.clone())
            .collect();
        Ok((found, revision))
    }

    /// `tenant`'s view, starting it if none runs.
    fn view(self: &Arc<Self>, tenant: &str) -> Arc<View> {
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(view) = views.get(tenant) {
            return view.clone();
        }
        let view = Arc::new(View {
            state: Mutex::default(),
            revision: watch::channel(None).0,
            last_read: Mutex::new(Instant::now()),
        });
        views.insert(tenant.to_string(), view.clone());
        tokio::spawn(self.clone().follow(tenant.to_string(), view.clone()));
        view
    }

    /// Builds `view` and keeps it current until nobody reads it.
    async fn follow(self: Arc<Self>, tenant: String, view: Arc<View>) {
        // Subscribed before the listing, so no later change is missed.
        let mut feed = self.feeds.subscribe(&tenant);
        let mut built = false;
        loop {
            if !built {
                match self.feeds.journal(&tenant).list(b"").await {
                    Ok((changes, revision)) => {
                        let mut state = view.state.lock().unwrap_or_else(|p| p.into_inner());
                        state.entries = changes.into_iter().map(|c| (c.key.clone(), Arc::new(c))).collect();
                        drop(state);
                        view.revision.send_replace(Some(revision));
                        built = true;
                    }
                    Err(error) => {
                        tracing::debug!(%error, tenant, "view: listing failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
            let item = tokio::select! {
                item = feed.recv() => item,
                () = tokio::time::sleep(IDLE) => Ok(Item::Caught(0)),
            };
            let at = view.revision.borrow().unwrap_or(0);
            match item {
                Ok(Item::Change(change)) if change.revision <= at => {}
                Ok(Item::Change(change)) if change.revision == at + 1 => {
                    let mut state = view.state.lock().unwrap_or_else(|p| p.into_inner());
                    let newer = state.entries.get(&change.key).is_some_and(|c| c.revision >= change.revision);
                    if !newer {
                        state.entries.insert(change.key.clone(), change.clone());
                    }
                    drop(state);
                    view.revision.send_replace(Some(change.revision));
                }
                // A gap (the feed skipped compacted revisions): build again.
                Ok(Item::Change(_)) => built = false,
                Ok(Item::Caught(head)) => {
                    if head > at {
                        // Changes up to `head` were broadcast before this
                        // marker; one still missing means a gap.
                        built = false;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => built = false,
                Err(broadcast::error::RecvError::Closed) => {
                    feed = self.feeds.subscribe(&tenant);
                    built = false;
                }
            }
            let idle = view.last_read.lock().unwrap_or_else(|p| p.into_inner()).elapsed() >= IDLE;
            if idle {
                let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
                if view.last_read.lock().unwrap_or_else(|p| p.into_inner()).elapsed() >= IDLE {
                    views.remove(&tenant);
                    return;
                }
            }
        }
    }
}
