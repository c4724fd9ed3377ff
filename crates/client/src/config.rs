//! Versioned configuration and its watch: the SDK side of
//! `cohort.coord.v1.Config`.
//!
//! ```no_run
//! # async fn demo(client: cohort_client::Client) -> Result<(), cohort_client::Error> {
//! use cohort_client::config::{ConfigWrite, WatchEvent};
//! use tokio_stream::StreamExt;
//! let config = client.config();
//! let written = config.put("default", "app/timeout", "5s", ConfigWrite::by("deploy-42")).await?;
//! // Every change under app/ from that revision on, in order, once — across
//! // reconnects; after a compaction, a fresh listing first.
//! let mut changes = config.watch("default", "app/", written.revision);
//! while let Some(event) = changes.next().await {
//!     match event? {
//!         WatchEvent::Change(change) => println!("{} {} -> {:?}", change.revision, change.key, change.value),
//!         WatchEvent::Reset { entries, revision } => println!("{} keys as of {revision}", entries.len()),
//!         WatchEvent::Progress(_) => {}
//!     }
//! }
//! # Ok(()) }
//! ```

use bytes::Bytes;
use cohort_proto::coord::v1 as pb;
use cohort_proto::coord::v1::config_client::ConfigClient;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::Error;

/// One version of a configuration key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    /// The key.
    pub key: String,
    /// The value; `None` when this version is a delete.
    pub value: Option<Bytes>,
    /// The key's version (its first value is 1).
    pub version: u64,
    /// The tenant's configuration revision that made it.
    pub revision: u64,
    /// Who made it.
    pub updated_by: String,
    /// When, in milliseconds since the epoch.
    pub updated_at_ms: u64,
}

impl From<pb::ConfigValue> for ConfigEntry {
    fn from(v: pb::ConfigValue) -> Self {
        ConfigEntry {
            key: v.key,
            value: v.value,
            version: v.version,
            revision: v.revision,
            updated_by: v.updated_by,
            updated_at_ms: v.updated_at_ms,
        }
    }
}

/// Options of a configuration write.
#[derive(Debug, Clone, Default)]
pub struct ConfigWrite {
    /// The version the key must be at (0: never written).
    pub expect_version: Option<u64>,
    /// Who makes the change.
    pub updated_by: String,
}

impl ConfigWrite {
    /// A write recorded as made by `who`.
    pub fn by(who: impl Into<String>) -> Self {
        ConfigWrite { updated_by: who.into(), ..ConfigWrite::default() }
    }
}

/// What a write made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigWritten {
    /// The key's version after it.
    pub version: u64,
    /// The revision it made.
    pub revision: u64,
}

/// A change delivered by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigChange {
    /// The revision it made.
    pub revision: u64,
    /// Created, updated or deleted.
    pub kind: ChangeKind,
    /// The key.
    pub key: String,
    /// The value after it (`None` for a delete).
    pub value: Option<Bytes>,
    /// The value before it.
    pub previous: Option<Bytes>,
    /// The key's version after it.
    pub version: u64,
    /// Who made it.
    pub updated_by: String,
    /// When, in milliseconds since the epoch.
    pub updated_at_ms: u64,
}

/// What kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// The key had no value and now has one.
    Created,
    /// Its value was replaced.
    Updated,
    /// Its value was removed.
    Deleted,
}

impl ChangeKind {
    /// `created`, `updated` or `deleted`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Created => "created",
            ChangeKind::Updated => "updated",
            ChangeKind::Deleted => "deleted",
        }
    }
}

/// What a watch yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A change, in revision order, each once.
    Change(ConfigChange),
    /// Every change up to this revision has been delivered (sent while idle).
    Progress(u64),
    /// The watch's position was compacted away: every key under the prefix
    /// as of `revision`, after which changes continue from `revision + 1`.
    /// Replace whatever state was built from earlier events with this.
    Reset {
        /// The keys with a value.
        entries: Vec<ConfigEntry>,
        /// The revision they were listed at.
        revision: u64,
    },
}

/// The configuration API of a [`crate::Client`].
#[derive(Debug, Clone)]
pub struct Config {
    config: ConfigClient<Channel>,
}

impl Config {
    pub(crate) fn new(channel: Channel) -> Self {
        Config { config: ConfigClient::new(channel) }
    }

    /// The key's current value; `None` when it has none.
    pub async fn get(&self, tenant: &str, key: &str) -> Result<Option<ConfigEntry>, Error> {
        self.get_version(tenant, key, 0).await
    }

    /// Version `version` of the key (0: the latest), while retained.
    pub async fn get_version(&self, tenant: &str, key: &str, version: u64) -> Result<Option<ConfigEntry>, Error> {
        let request = pb::ConfigGetRequest { tenant: tenant.into(), key: key.into(), version };
        let response = self.config.clone().get(request).await?.into_inner();
        Ok(response.entry.filter(|_| response.found).map(ConfigEntry::from))
    }

    /// Writes `value` under `key`.
    pub async fn put(
        &self,
        tenant: &str,
        key: &str,
        value: impl Into<Bytes>,
        options: ConfigWrite,
    ) -> Result<ConfigWritten, Error> {
        let request = pb::ConfigPutRequest {
            tenant: tenant.into(),
            key: key.into(),
            value: value.into(),
            expect_version: options.expect_version,
            updated_by: options.updated_by,
        };
        let response = self.config.clone().put(request).await?.into_inner();
        Ok(ConfigWritten { version: response.version, revision: response.revision })
    }

    /// Removes the key's value (`NotFound` when it has none).
    pub async fn delete(&self, tenant: &str, key: &str, options: ConfigWrite) -> Result<ConfigWritten, Error> {
        let request = pb::ConfigDeleteRequest {
            tenant: tenant.into(),
            key: key.into(),
            expect_version: options.expect_version,
            updated_by: options.updated_by,
        };
        let response = self.config.clone().delete(request).await?.into_inner();
        Ok(ConfigWritten { version: response.version, revision: response.revision })
    }

    /// The key's retained versions, oldest first.
    pub async fn history(&self, tenant: &str, key: &str) -> Result<Vec<ConfigEntry>, Error> {
        let request = pb::ConfigHistoryRequest { tenant: tenant.into(), key: key.into() };
        let response = self.config.clone().history(request).await?.into_inner();
        Ok(response.versions.into_iter().map(ConfigEntry::from).collect())
    }

    /// Every key under `prefix` with a value, and the revision listed at.
    pub async fn list(&self, tenant: &str, prefix: &str) -> Result<(Vec<ConfigEntry>, u64), Error> {
        let request = pb::ConfigListRequest { tenant: tenant.into(), prefix: prefix.into() };
        let response = self.config.clone().list(request).await?.into_inner();
        Ok((response.entries.into_iter().map(ConfigEntry::from).collect(), response.revision))
    }

    /// Every change under `prefix` from revision `from` on (0: from when the
    /// watch is first established),
    /// in order and once each. The stream reconnects by itself when the
    /// connection breaks or the coordinator restarts (resuming after the
    /// last revision it delivered), and answers a compacted position with
    /// a [`WatchEvent::Reset`]. It ends with an error for anything else —
    /// among them `ResourceExhausted` when this reader fell too far behind.
    pub fn watch(
        &self,
        tenant: &str,
        prefix: &str,
        from: u64,
    ) -> tokio_stream::wrappers::ReceiverStream<Result<WatchEvent, Error>> {
        let (sender, receiver) = mpsc::channel(64);
        let (client, tenant, prefix) = (self.clone(), tenant.to_string(), prefix.to_string());
        tokio::spawn(async move {
            let open = |from_revision| {
                let request = pb::ConfigWatchRequest { tenant: tenant.clone(), prefix: prefix.clone(), from_revision };
                let mut config = client.config.clone();
                async move { config.watch(request).await.map(tonic::Response::into_inner) }
            };
            let reset = || async {
                let (entries, revision) = client.list(&tenant, &prefix).await?;
                Ok((WatchEvent::Reset { entries, revision }, revision))
            };
            crate::resume::follow(from, open, watch_event, reset, sender).await;
        });
        tokio_stream::wrappers::ReceiverStream::new(receiver)
    }
}

/// A server event as the SDK's, with its revision.
fn watch_event(event: pb::ConfigEvent) -> (WatchEvent, u64) {
    let revision = event.revision;
    let kind = match pb::ConfigEventKind::try_from(event.kind).unwrap_or(pb::ConfigEventKind::Unspecified) {
        pb::ConfigEventKind::Progress | pb::ConfigEventKind::Unspecified => {
            return (WatchEvent::Progress(revision), revision);
        }
        pb::ConfigEventKind::Created => ChangeKind::Created,
        pb::ConfigEventKind::Updated => ChangeKind::Updated,
        pb::ConfigEventKind::Deleted => ChangeKind::Deleted,
    };
    let change = WatchEvent::Change(ConfigChange {
        revision: event.revision,
        kind,
        key: event.key,
        value: event.value,
        previous: event.previous,
        version: event.version,
        updated_by: event.updated_by,
        updated_at_ms: event.updated_at_ms,
    });
    (change, revision)
}
