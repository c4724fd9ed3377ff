//! Journaled maps: keys with versions, every change numbered by a revision
//! that grows by one per change of the map, and a journal of the changes
//! a watcher can read from any retained revision, with no gap and no
//! duplicate. Configuration is one journaled map per tenant.
//!
//! A map is a few kinds of register (`keys::Space::Journal`, `Entry`,
//! `Archive`, `Index`):
//!
//! - the **head**: the last revision, the oldest revision still readable
//!   (`compacted`), and a *window* of the latest changes in full;
//! - one **entry** per key: its value, version and recent history, as of
//!   the last change applied to it (`applied`);
//! - **archived** changes, one register per revision, for changes that left
//!   the window and are still retained;
//! - the **index**: every key that currently has a value, for listing.
//!
//! A change is *committed* by one compare-and-set of the head that appends
//! it to the window: that is the only step that decides, so revisions have
//! no gaps and two changes never share one. Everything else follows it and
//! may be done by anyone, any number of times: applying a change to its
//! entry (skipped when the entry has it already), archiving it, updating the
//! index. A change leaves the window only after it has been archived and
//! applied, by whoever appends the change that pushes it out, *before* that
//! append commits. So the state of a key is always its entry with the
//! window's later changes of that key laid over it ([`Snapshot`]), and a
//! change that committed but was never applied (its writer crashed) is
//! still seen by every reader and applied by the next writer of the key or
//! the next eviction.
//!
//! Every read of the map is two linearizable register reads (head, then the
//! entry); whichever of them the answer reflects, it was the state at some
//! moment between them.

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use prost::Message;

use crate::keys::{self, Space};
use crate::{Clock, RecipeError, Registers, Written, read, write as write_register};

/// A change of a journaled map.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Change {
    /// The map's revision this change made.
    #[prost(uint64, tag = "1")]
    pub revision: u64,
    /// The key changed.
    #[prost(bytes = "bytes", tag = "2")]
    pub key: Bytes,
    /// The value after the change; `None` for a delete.
    #[prost(bytes = "bytes", optional, tag = "3")]
    pub value: Option<Bytes>,
    /// The value before; `None` when the key had none.
    #[prost(bytes = "bytes", optional, tag = "4")]
    pub previous: Option<Bytes>,
    /// The key's version after the change (its first value is version 1;
    /// every change, a delete included, adds one; never reused).
    #[prost(uint64, tag = "5")]
    pub version: u64,
    /// Who made the change, as its writer said.
    #[prost(string, tag = "6")]
    pub updated_by: String,
    /// When it committed, in milliseconds since the epoch (the serving
    /// coordinator's clock).
    #[prost(uint64, tag = "7")]
    pub at_ms: u64,
    /// The write's id: a retry of a write whose outcome was unknown finds
    /// its own change by it.
    #[prost(bytes = "bytes", tag = "8")]
    pub id: Bytes,
}

/// What kind of change a [`Change`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The key had no value and now has one.
    Created,
    /// The key's value was replaced.
    Updated,
    /// The key's value was removed.
    Deleted,
}

impl Change {
    /// Created, updated or deleted.
    pub fn kind(&self) -> Kind {
        match (&self.previous, &self.value) {
            (_, None) => Kind::Deleted,
            (None, Some(_)) => Kind::Created,
            (Some(_), Some(_)) => Kind::Updated,
        }
    }
}

/// The head register's value.
#[derive(Clone, PartialEq, Eq, prost::Message)]
struct Head {
    /// The last revision committed (0: none yet).
    #[prost(uint64, tag = "1")]
    revision: u64,
    /// The oldest revision still readable (0 or 1: all of them).
    #[prost(uint64, tag = "2")]
    compacted: u64,
    /// The latest changes, oldest first, consecutive revisions ending at
    /// `revision`.
    #[prost(message, repeated, tag = "3")]
    window: Vec<Change>,
}

/// A key's entry register value.
#[derive(Clone, PartialEq, Eq, prost::Message)]
struct Entry {
    /// The revision of the last change applied to it.
    #[prost(uint64, tag = "1")]
    applied: u64,
    /// The retained changes of the key, oldest first; the last is current.
    #[prost(message, repeated, tag = "2")]
    history: Vec<Change>,
}

/// The index register's value: the keys that have a value, sorted.
#[derive(Clone, PartialEq, Eq, prost::Message)]
struct Index {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    keys: Vec<Bytes>,
}

/// Bounds of a journaled map.
#[derive(Debug, Clone, Copy)]
pub struct JournalLimits {
    /// Most changes kept in full in the head.
    pub window_changes: usize,
    /// Most bytes of changes (values included) kept in the head.
    pub window_bytes: usize,
    /// How many revisions stay readable by watchers; older ones are
    /// compacted.
    pub retained_revisions: u64,
    /// How many versions of each key its history keeps.
    pub history_per_key: usize,
    /// Most keys with a value.
    pub max_keys: usize,
}

impl Default for JournalLimits {
    fn default() -> Self {
        JournalLimits {
            window_changes: 64,
            window_bytes: 256 * 1024,
            retained_revisions: 10_000,
            history_per_key: 16,
            max_keys: 10_000,
        }
    }
}

/// A change asked of a map.
#[derive(Debug, Clone)]
pub struct Write {
    /// The key.
    pub key: Bytes,
    /// The new value; `None` deletes.
    pub value: Option<Bytes>,
    /// The version the key must be at (0: never written), if any.
    pub expect_version: Option<u64>,
    /// Who makes the change.
    pub updated_by: String,
    /// Identifies the write across retries.
    pub id: Bytes,
}

/// A committed change, and what [`Journal::finish`] has left to do.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The change.
    pub change: Change,
    /// The window's changes of its key, to apply to the entry.
    pending: Vec<Change>,
    /// Revisions whose archives compaction passed.
    compacted: std::ops::Range<u64>,
}

/// Why a write did not commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The key is not at the expected version; nothing changed.
    #[error("version mismatch: the key is at version {current}")]
    VersionMismatch {
        /// The key's version now.
        current: u64,
    },
    /// A delete of a key without a value; nothing changed.
    #[error("the key has no value")]
    NotFound,
    /// A new key would pass the map's key limit; nothing changed.
    #[error("the map holds {0} keys, its limit")]
    TooManyKeys(usize),
    /// The registers failed, or the outcome is unknown.
    #[error(transparent)]
    Recipe(#[from] RecipeError),
}

/// Reading from a revision no longer retained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("compacted: revision {asked} is older than the oldest retained, {oldest}")]
pub struct Compacted {
    /// The revision asked for.
    pub asked: u64,
    /// The oldest revision still readable.
    pub oldest: u64,
}

/// A key's state as of one read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The key's retained changes, oldest first; the last is current.
    pub history: Vec<Change>,
}

impl Snapshot {
    /// The key's current change, if it ever had one.
    pub fn current(&self) -> Option<&Change> {
        self.history.last()
    }

    /// The key's version (0: never written).
    pub fn version(&self) -> u64 {
        self.current().map_or(0, |c| c.version)
    }

    /// The key's value, if it has one.
    pub fn value(&self) -> Option<&Bytes> {
        self.current().and_then(|c| c.value.as_ref())
    }
}

/// One journaled map of a tenant.
pub struct Journal<'a> {
    registers: &'a dyn Registers,
    clock: &'a dyn Clock,
    tenant: &'a str,
    map: &'a str,
    limits: JournalLimits,
}

/// How many times a write retries after losing the head to another.
const MAX_ATTEMPTS: usize = 64;
/// Entries a listing reads at once.
const LIST_CONCURRENCY: usize = 32;

impl<'a> Journal<'a> {
    /// Map `map` of `tenant`.
    pub fn new(
        registers: &'a dyn Registers,
        clock: &'a dyn Clock,
        tenant: &'a str,
        map: &'a str,
        limits: JournalLimits,
    ) -> Self {
        Journal { registers, clock, tenant, map, limits }
    }

    fn key(&self, space: Space, suffix: &[u8]) -> Bytes {
        let mut name = BytesMut::with_capacity(1 + self.map.len() + suffix.len());
        name.put_u8(self.map.len() as u8);
        name.put_slice(self.map.as_bytes());
        name.put_slice(suffix);
        keys::key(space, &name)
    }

    fn head_key(&self) -> Bytes {
        self.key(Space::Journal, b"")
    }

    fn entry_key(&self, key: &[u8]) -> Bytes {
        self.key(Space::Entry, key)
    }

    fn archive_key(&self, revision: u64) -> Bytes {
        self.key(Space::Archive, &revision.to_be_bytes())
    }

    fn index_key(&self) -> Bytes {
        self.key(Space::Index, b"")
    }

    async fn head(&self) -> Result<(Head, u64), RecipeError> {
        let register = read(self.registers, self.tenant, &self.head_key()).await?;
        Ok((decode(&register.value, "journal head")?, register.version))
    }

    async fn entry(&self, key: &[u8]) -> Result<(Entry, u64), RecipeError> {
        let register = read(self.registers, self.tenant, &self.entry_key(key)).await?;
        Ok((decode(&register.value, "journal entry")?, register.version))
    }

    /// The revision of the last committed change (0: none).
    pub async fn revision(&self) -> Result<u64, RecipeError> {
        Ok(self.head().await?.0.revision)
    }

    /// Key `key` now, with the revision the read saw.
    pub async fn get(&self, key: &[u8]) -> Result<(Snapshot, u64), RecipeError> {
        let (head, _) = self.head().await?;
        let (entry, _) = self.entry(key).await?;
        Ok((snapshot(entry, &head.window, key, self.limits.history_per_key), head.revision))
    }

    /// Every key under `prefix` that has a value, in key order, with the
    /// revision of the read: a watch from one past it sees every later
    /// change (and perhaps some the list already reflects, with revisions
    /// no newer than each key's).
    pub async fn list(&self, prefix: &[u8]) -> Result<(Vec<Change>, u64), RecipeError> {
        let (head, _) = self.head().await?;
        let index: Index = decode(&read(self.registers, self.tenant, &self.index_key()).await?.value, "index")?;
        let mut keys: Vec<Bytes> = index.keys.into_iter().filter(|k| k.starts_with(prefix)).collect();
        // Keys created in the window may not be in the index yet.
        for change in head.window.iter().filter(|c| c.key.starts_with(prefix)) {
            if let Err(at) = keys.binary_search(&change.key) {
                keys.insert(at, change.key.clone());
            }
        }
        // The entries are read concurrently, a bounded number at a time.
        let mut entries = futures::stream::iter(keys.into_iter().map(|key| async move {
            let (entry, _) = self.entry(&key).await?;
            Ok::<_, RecipeError>((key, entry))
        }))
        .buffered(LIST_CONCURRENCY);
        let mut out = Vec::new();
        while let Some(read) = entries.next().await {
            let (key, entry) = read?;
            let snapshot = snapshot(entry, &head.window, &key, 1);
            if let Some(current) = snapshot.current().filter(|c| c.value.is_some()) {
                out.push(current.clone());
            }
        }
        Ok((out, head.revision))
    }

    /// The committed changes from revision `from` on (at most `limit`), in
    /// revision order, and the last revision committed when read.
    pub async fn changes_from(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Result<(Vec<Change>, u64), Compacted>, RecipeError> {
        let (head, _) = self.head().await?;
        let from = from.max(1);
        if from < head.compacted {
            return Ok(Err(Compacted { asked: from, oldest: head.compacted }));
        }
        let window_start = head.window.first().map_or(head.revision + 1, |c| c.revision);
        let mut out = Vec::new();
        let mut revision = from;
        while revision < window_start && out.len() < limit {
            let register = read(self.registers, self.tenant, &self.archive_key(revision)).await?;
            match register.value {
                Some(bytes) => out.push(decode_change(&bytes)?),
                // Compacted since the head was read.
                None => return Ok(Err(Compacted { asked: revision, oldest: revision + 1 })),
            }
            revision += 1;
        }
        out.extend(head.window.iter().filter(|c| c.revision >= revision).take(limit - out.len()).cloned());
        Ok(Ok((out, head.revision)))
    }

    /// Commits `write`: the change it made.
    pub async fn write(&self, write: Write) -> Result<Change, WriteError> {
        let committed = self.commit(write).await?;
        self.finish(&committed).await;
        Ok(committed.change)
    }

    /// Applies a committed change to its entry (and the index) and removes
    /// archives compaction passed: best effort, both — readers lay the
    /// window over the entry, and the next writer of the key or the
    /// eviction of the change applies it if this does not; an archive left
    /// behind is only space. [`Journal::write`] is `commit` then `finish`;
    /// a caller that answers before `finish` answers sooner.
    pub async fn finish(&self, committed: &Committed) {
        let _ = self.apply(&committed.change.key, &committed.pending).await;
        for revision in committed.compacted.clone() {
            let _ = write_register(self.registers, self.tenant, &self.archive_key(revision), 1, None).await;
        }
    }

    /// Commits `write` (one compare-and-set of the head, after the
    /// evictions it needs): the change it made, and what
    /// [`Journal::finish`] has left to do.
    pub async fn commit(&self, write: Write) -> Result<Committed, WriteError> {
        let done = |change: &Change| Committed { change: change.clone(), pending: Vec::new(), compacted: 0..0 };
        for _ in 0..MAX_ATTEMPTS {
            let (head, head_version) = self.head().await?;
            if let Some(committed) = head.window.iter().find(|c| !write.id.is_empty() && c.id == write.id) {
                // A retry of a write that committed.
                return Ok(done(committed));
            }
            let (entry, _) = self.entry(&write.key).await?;
            let current = snapshot(entry, &head.window, &write.key, 1);
            let version = current.version();
            if let Some(expect) = write.expect_version
                && expect != version
            {
                return Err(WriteError::VersionMismatch { current: version });
            }
            let previous = current.value().cloned();
            if write.value.is_none() && previous.is_none() {
                return Err(WriteError::NotFound);
            }
            if previous.is_none() && write.value.is_some() {
                let index: Index = decode(&read(self.registers, self.tenant, &self.index_key()).await?.value, "index")?;
                if index.keys.len() >= self.limits.max_keys && index.keys.binary_search(&write.key).is_err() {
                    return Err(WriteError::TooManyKeys(index.keys.len()));
                }
            }
            let change = Change {
                revision: head.revision + 1,
                key: write.key.clone(),
                value: write.value.clone(),
                previous,
                version: version + 1,
                updated_by: write.updated_by.clone(),
                at_ms: self.clock.now_ms(),
                id: write.id.clone(),
            };
            let mut next = head.clone();
            next.revision = change.revision;
            next.window.push(change.clone());
            next.compacted =
                next.compacted.max(1).max((change.revision + 1).saturating_sub(self.limits.retained_revisions));
            // Changes leave the window only archived and applied. A full
            // window is halved at once, so the archiving and applying is
            // done in one batch every half window, not one at every write.
            if next.window.len() > self.limits.window_changes || window_bytes(&next.window) > self.limits.window_bytes {
                let (changes, bytes) = (self.limits.window_changes / 2, self.limits.window_bytes / 2);
                let mut evicted = Vec::new();
                while next.window.len() > 1 && (next.window.len() > changes || window_bytes(&next.window) > bytes) {
                    evicted.push(next.window.remove(0));
                }
                self.evict(&evicted, next.compacted).await?;
            }
            match write_register(self.registers, self.tenant, &self.head_key(), head_version, encode(&next)).await? {
                Written::Applied(_) => {
                    let pending = next.window.iter().filter(|c| c.key == change.key).cloned().collect();
                    let compacted = head.compacted.max(1)..next.compacted;
                    return Ok(Committed { change, pending, compacted });
                }
                Written::Lost => continue,
                Written::Unknown => {
                    let (head, _) = self.head().await?;
                    return match head.window.iter().find(|c| c.id == change.id) {
                        Some(committed) => Ok(done(committed)),
                        None if head.revision < change.revision => continue,
                        None => Err(RecipeError::OutcomeUnknown(format!(
                            "the change of revision {} may or may not have committed",
                            change.revision
                        ))
                        .into()),
                    };
                }
            }
        }
        Err(RecipeError::Registers(format!("a write lost the journal head {MAX_ATTEMPTS} times to others")).into())
    }

    /// Archives (when still retained, at or after `compacted`) and applies
    /// `evicted`, oldest first: archives concurrently (at most half a
    /// window of them), and each key's changes in one apply, keys
    /// concurrently.
    async fn evict(&self, evicted: &[Change], compacted: u64) -> Result<(), RecipeError> {
        let mut archived = futures::stream::FuturesUnordered::new();
        for change in evicted {
            if change.revision >= compacted {
                archived.push(self.archive(change));
            }
        }
        while let Some(result) = archived.next().await {
            result?;
        }
        let mut by_key: Vec<(Bytes, Vec<Change>)> = Vec::new();
        for change in evicted {
            match by_key.iter_mut().find(|(key, _)| *key == change.key) {
                Some((_, changes)) => changes.push(change.clone()),
                None => by_key.push((change.key.clone(), vec![change.clone()])),
            }
        }
        let mut applied = futures::stream::FuturesUnordered::new();
        for (key, changes) in &by_key {
            applied.push(self.apply(key, changes));
        }
        while let Some(result) = applied.next().await {
            result?;
        }
        Ok(())
    }

    /// Writes `change` to its archive register (once; a second time finds
    /// it there).
    async fn archive(&self, change: &Change) -> Result<(), RecipeError> {
        let key = self.archive_key(change.revision);
        match write_register(self.registers, self.tenant, &key, 0, Some(Bytes::from(change.encode_to_vec()))).await? {
            Written::Applied(_) | Written::Lost => Ok(()),
            Written::Unknown => match read(self.registers, self.tenant, &key).await?.value {
                Some(_) => Ok(()),
                None => Err(RecipeError::OutcomeUnknown(format!("archiving revision {}", change.revision))),
            },
        }
    }

    /// Applies `changes` (of `key`, in revision order) to its entry, then
    /// makes the index agree with the entry; changes the entry has already
    /// are skipped. The index is checked even when nothing was left to
    /// apply: whoever applied the change may have stopped before the index.
    async fn apply(&self, key: &Bytes, changes: &[Change]) -> Result<(), RecipeError> {
        let has_value = loop {
            let (entry, version) = self.entry(key).await?;
            let new: Vec<&Change> = changes.iter().filter(|c| c.revision > entry.applied).collect();
            let Some(last) = new.last() else {
                break entry.history.last().is_some_and(|c| c.value.is_some());
            };
            let mut next = entry.clone();
            next.applied = last.revision;
            next.history.extend(new.iter().map(|c| (*c).clone()));
            trim(&mut next.history, self.limits.history_per_key);
            match write_register(self.registers, self.tenant, &self.entry_key(key), version, encode(&next)).await? {
                Written::Applied(_) => break last.value.is_some(),
                Written::Lost | Written::Unknown => continue,
            }
        };
        self.index(key, has_value).await
    }

    /// Adds `key` to the index, or removes it.
    async fn index(&self, key: &Bytes, present: bool) -> Result<(), RecipeError> {
        loop {
            let register = read(self.registers, self.tenant, &self.index_key()).await?;
            let mut index: Index = decode(&register.value, "index")?;
            match (index.keys.binary_search(key), present) {
                (Ok(_), true) | (Err(_), false) => return Ok(()),
                (Err(at), true) => index.keys.insert(at, key.clone()),
                (Ok(at), false) => {
                    index.keys.remove(at);
                }
            }
            if let Written::Applied(_) =
                write_register(self.registers, self.tenant, &self.index_key(), register.version, encode(&index)).await?
            {
                return Ok(());
            }
        }
    }
}

/// `entry` with the window's later changes of `key` laid over it, keeping
/// the last `keep` changes.
fn snapshot(entry: Entry, window: &[Change], key: &[u8], keep: usize) -> Snapshot {
    let mut history = entry.history;
    history.extend(window.iter().filter(|c| c.key == key && c.revision > entry.applied).cloned());
    trim(&mut history, keep);
    Snapshot { history }
}

fn trim(history: &mut Vec<Change>, keep: usize) {
    let excess = history.len().saturating_sub(keep.max(1));
    history.drain(..excess);
}

fn window_bytes(window: &[Change]) -> usize {
    window.iter().map(|c| c.encoded_len()).sum()
}

fn encode(message: &impl Message) -> Option<Bytes> {
    Some(Bytes::from(message.encode_to_vec()))
}

fn decode<M: Message + Default>(value: &Option<Bytes>, what: &str) -> Result<M, RecipeError> {
    match value {
        None => Ok(M::default()),
        Some(bytes) => M::decode(bytes.as_ref()).map_err(|e| RecipeError::Registers(format!("{what} unreadable: {e}"))),
    }
}

fn decode_change(bytes: &Bytes) -> Result<Change, RecipeError> {
    Change::decode(bytes.as_ref()).map_err(|e| RecipeError::Registers(format!("archived change unreadable: {e}")))
}

#[cfg(test)]
mod tests;
