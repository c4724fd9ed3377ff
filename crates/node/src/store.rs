//! Durable sibling sets on fjall, with group commit.
//!
//! Each key's sibling set is stored under `len(tenant) | tenant | key`.
//! Read-modify-write of one key happens under one of a fixed set of striped
//! locks (held only around the in-memory read and journal append, never across
//! an `.await`), so two writes to a key on this node always get distinct dots.
//!
//! Durability is separate from application: a write is appended to fjall's
//! journal, then [`Store::durable`] waits for the next group commit — one
//! `fdatasync` (or OS flush) covering every write appended before it began.
//!
//! Each time the store opens it increments a durable *incarnation* number and
//! issues dots as actor `"{node id}.{incarnation}"`. A write appended but not
//! yet durable when the process died may already have reached other replicas;
//! a fresh actor after restart guarantees its dot is never reused for a
//! different value.

use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use cohort_ring::{Actor, DecodeError, SiblingSet, VersionVector};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use tokio::sync::{mpsc, oneshot};

use crate::config::Durability;

const STRIPES: usize = 1024;
const INCARNATION_KEY: &str = "incarnation";
/// Under load, how many times the group commit lets ready tasks run to
/// gather more writes before it syncs (it stops early when a round brings
/// none).
const MAX_GATHER_ROUNDS: usize = 4;

/// Why the store could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed; the node must stop taking writes.
    #[error("storage engine failure: {0}")]
    Engine(String),
    /// A previous durability failure poisoned the store.
    #[error("storage is poisoned after a failed flush; restart the node")]
    Poisoned,
    /// Stored bytes did not decode: corruption or an unknown format.
    #[error("stored state for a key is unreadable: {0}")]
    Corrupt(#[from] DecodeError),
    /// The store is shutting down.
    #[error("store is shutting down")]
    Closed,
    /// The client's causal context claims writes this replica never issued.
    #[error("causal context claims {claimed} writes by {actor}, which has issued {issued}")]
    ForgedContext {
        /// This replica's actor.
        actor: String,
        /// The counter the context claims.
        claimed: u64,
        /// The counter this replica has issued.
        issued: u64,
    },
}

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        match e {
            fjall::Error::Poisoned => StoreError::Poisoned,
            other => StoreError::Engine(other.to_string()),
        }
    }
}

type Waiter = oneshot::Sender<Result<(), String>>;

/// The durable key → sibling-set store of one node.
pub struct Store {
    data: Keyspace,
    actor: Actor,
    incarnation: u64,
    stripes: Box<[Mutex<()>]>,
    commits: mpsc::UnboundedSender<Waiter>,
    committer: tokio::task::JoinHandle<()>,
    poisoned: Arc<AtomicBool>,
    failing_disk: Arc<AtomicBool>,
}

impl Store {
    /// Opens (or creates) the store in `dir` for node `node_id`, bumps the
    /// incarnation durably and starts the group-commit task. Must be called
    /// inside a tokio runtime.
    pub fn open(dir: &Path, node_id: &str, durability: Durability) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Engine(format!("create {}: {e}", dir.display())))?;
        let db = Database::builder(dir).manual_journal_persist(true).open().map_err(|e| match e {
            fjall::Error::Locked => {
                StoreError::Engine(format!("data directory {} is in use by another process", dir.display()))
            }
            other => other.into(),
        })?;
        // Writes stay in the journal's buffer until the group commit flushes
        // and syncs it: without this, fjall hands every single write to the
        // OS (a `write` system call per key).
        let deferred = || KeyspaceCreateOptions::default().manual_journal_persist(true);
        let data = db.keyspace("sibling_sets", deferred)?;
        let meta = db.keyspace("node_meta", deferred)?;
        let previous = match meta.get(INCARNATION_KEY)? {
            Some(bytes) => u64::from_be_bytes(
                bytes.as_ref().try_into().map_err(|_| StoreError::Engine("incarnation record is corrupt".into()))?,
            ),
            None => 0,
        };
        let incarnation = previous + 1;
        meta.insert(INCARNATION_KEY, incarnation.to_be_bytes())?;
        db.persist(PersistMode::SyncAll)?;

        let poisoned = Arc::new(AtomicBool::new(false));
        let failing_disk = Arc::new(AtomicBool::new(false));
        let (commits, queue) = mpsc::unbounded_channel();
        let committer = tokio::spawn(group_commit(db, durability, queue, poisoned.clone(), failing_disk.clone()));
        Ok(Store {
            data,
            actor: Actor::new(format!("{node_id}.{incarnation}")),
            incarnation,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            commits,
            committer,
            poisoned,
            failing_disk,
        })
    }

    /// The actor this incarnation issues dots as.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// How many times this store has been opened, this time included.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Fault injection: from now on every journal sync fails as a dying
    /// disk's would (an I/O error), which poisons the store. For fault tests.
    pub fn inject_disk_failure(&self) {
        self.failing_disk.store(true, Ordering::Release);
    }

    /// Whether a durability failure has poisoned the store.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// The local state of a key (empty if never written here).
    pub fn read(&self, tenant: &str, key: &[u8]) -> Result<SiblingSet, StoreError> {
        self.read_encoded(&storage_key(tenant, key))
    }

    fn read_encoded(&self, storage_key: &[u8]) -> Result<SiblingSet, StoreError> {
        match self.data.get(storage_key)? {
            Some(bytes) => Ok(SiblingSet::decode(&bytes)?),
            None => Ok(SiblingSet::new()),
        }
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        if self.is_poisoned() { Err(StoreError::Poisoned) } else { Ok(()) }
    }

    fn stripe(&self, storage_key: &[u8]) -> &Mutex<()> {
        // FNV-1a: cheap and good enough to spread keys over stripes.
        let hash =
            storage_key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
        &self.stripes[(hash % STRIPES as u64) as usize]
    }

    /// Issues a new version of the key at this node's actor and appends it to
    /// the journal. The result is **not yet durable**: call
    /// [`Store::durable`] before acknowledging it.
    pub fn stage_update(
        &self,
        tenant: &str,
        key: &[u8],
        context: &VersionVector,
        value: Option<Bytes>,
    ) -> Result<SiblingSet, StoreError> {
        self.check_writable()?;
        let skey = storage_key(tenant, key);
        let _guard = self.stripe(&skey).lock().unwrap_or_else(|p| p.into_inner());
        let mut state = self.read_encoded(&skey)?;
        // This actor issued every dot it ever had for this key, so a context
        // can only cover what the local clock covers; more is forged, and
        // honouring it would skip (or overflow) counters.
        let (claimed, issued) = (context.get(&self.actor), state.clock().get(&self.actor));
        if claimed > issued {
            return Err(StoreError::ForgedContext { actor: self.actor.to_string(), claimed, issued });
        }
        state.update(context, &self.actor, value);
        self.data.insert(skey, state.encode())?;
        metrics::counter!("cohort_node_updates_total").increment(1);
        Ok(state)
    }

    /// Merges `incoming` into the key's local state and appends the result if
    /// it changed. Not yet durable: call [`Store::durable`] before
    /// acknowledging. Returns whether the local state changed.
    pub fn stage_merge(&self, tenant: &str, key: &[u8], incoming: &SiblingSet) -> Result<bool, StoreError> {
        self.check_writable()?;
        let skey = storage_key(tenant, key);
        let _guard = self.stripe(&skey).lock().unwrap_or_else(|p| p.into_inner());
        let current = self.read_encoded(&skey)?;
        let merged = SiblingSet::merged(&current, incoming);
        let changed = merged != current;
        if changed {
            self.data.insert(skey, merged.encode())?;
        }
        metrics::counter!("cohort_node_merges_total", "changed" => if changed { "true" } else { "false" }).increment(1);
        Ok(changed)
    }

    /// Waits until every write staged before this call is durable.
    pub async fn durable(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.commits.send(tx).map_err(|_| StoreError::Closed)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(StoreError::Engine(reason)),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Closes the store: stops the group-commit task and releases the
    /// directory, so that it can be opened again (by a restarted node).
    pub async fn close(self) {
        let Store { data, commits, committer, .. } = self;
        drop(commits);
        drop(data);
        let _ = committer.await;
    }

    /// Merges `incoming` and waits until the result is durable.
    pub async fn merge(&self, tenant: &str, key: &[u8], incoming: &SiblingSet) -> Result<(), StoreError> {
        self.stage_merge(tenant, key, incoming)?;
        self.durable().await
    }
}

/// The on-disk key of `(tenant, key)`: unambiguous because the tenant is
/// length-prefixed (tenant ids are at most 63 bytes).
pub fn storage_key(tenant: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + tenant.len() + key.len());
    out.push(tenant.len() as u8);
    out.extend_from_slice(tenant.as_bytes());
    out.extend_from_slice(key);
    out
}

/// The group-commit loop: waits for a first waiter, takes every waiter that
/// queued meanwhile, persists the journal once, and answers them all.
async fn group_commit(
    db: Database,
    durability: Durability,
    mut queue: mpsc::UnboundedReceiver<Waiter>,
    poisoned: Arc<AtomicBool>,
    failing_disk: Arc<AtomicBool>,
) {
    let mode = match durability {
        Durability::Fsync => PersistMode::SyncData,
        Durability::Flush => PersistMode::Buffer,
    };
    let mut batch = Vec::new();
    let mut busy = false;
    while queue.recv_many(&mut batch, 4096).await > 0 {
        // Under load (the last sync covered several writes), let the tasks
        // that are ready run first: some of them are about to stage a
        // write, and one sync then covers theirs too. A lone writer does
        // not wait for that.
        if busy {
            for _ in 0..MAX_GATHER_ROUNDS {
                tokio::task::yield_now().await;
                let before = batch.len();
                while let Ok(waiter) = queue.try_recv() {
                    batch.push(waiter);
                }
                if batch.len() == before {
                    break;
                }
            }
        }
        busy = batch.len() > 1;
        let db2 = db.clone();
        let started = std::time::Instant::now();
        let failing = failing_disk.load(Ordering::Acquire);
        let result = tokio::task::spawn_blocking(move || {
            if failing {
                return Err(fjall::Error::Io(std::io::Error::other("injected disk failure")));
            }
            db2.persist(mode)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| format!("{e:?}")));
        metrics::histogram!("cohort_node_group_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("cohort_node_group_commit_batch").record(batch.len() as f64);
        if let Err(reason) = &result {
            tracing::error!(%reason, "journal persist failed; store is poisoned and refuses writes");
            poisoned.store(true, Ordering::Release);
        }
        for waiter in batch.drain(..) {
            let _ = waiter.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn update_merge_read_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), "n1", Durability::Fsync).unwrap();
            assert_eq!(store.actor().0, "n1.1");
            let s = store.stage_update("t", b"k", &VersionVector::new(), Some(Bytes::from_static(b"v1"))).unwrap();
            store.durable().await.unwrap();
            assert_eq!(store.read("t", b"k").unwrap(), s);
            let mut other = SiblingSet::new();
            other.update(&VersionVector::new(), &Actor::new("n2.1"), Some(Bytes::from_static(b"v2")));
            store.merge("t", b"k", &other).await.unwrap();
            assert_eq!(store.read("t", b"k").unwrap().values().count(), 2);
            assert!(store.read("t", b"other").unwrap().is_empty());
            store.close().await;
        }
        let store = Store::open(dir.path(), "n1", Durability::Fsync).unwrap();
        assert_eq!(store.incarnation(), 2);
        assert_eq!(store.read("t", b"k").unwrap().values().count(), 2);
    }

    #[tokio::test]
    async fn a_context_claiming_unissued_writes_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n1", Durability::Flush).unwrap();
        let mut forged = SiblingSet::new();
        forged.update(&VersionVector::new(), &Actor::new("n1.1"), None);
        let err = store.stage_update("t", b"k", forged.clock(), Some(Bytes::from_static(b"v"))).unwrap_err();
        assert!(matches!(err, StoreError::ForgedContext { claimed: 1, issued: 0, .. }), "{err}");
        assert!(store.read("t", b"k").unwrap().is_empty(), "nothing stored");
        store.close().await;
    }

    #[tokio::test]
    async fn a_failed_sync_is_never_acknowledged_and_poisons_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n1", Durability::Flush).unwrap();
        store.inject_disk_failure();
        store.stage_update("t", b"k", &VersionVector::new(), Some(Bytes::from_static(b"v"))).unwrap();
        assert!(store.durable().await.is_err(), "the write is not acknowledged");
        assert!(store.is_poisoned());
        let refused = store.stage_update("t", b"k2", &VersionVector::new(), None);
        assert!(matches!(refused, Err(StoreError::Poisoned)), "later writes are refused");
        store.close().await;
    }

    #[test]
    fn storage_keys_are_unambiguous() {
        assert_ne!(storage_key("ab", b"c"), storage_key("a", b"bc"));
    }
}
