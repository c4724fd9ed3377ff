//! Durable sibling sets on fjall, with group commit.
//!
//! Each key's sibling set is stored under `token | len(tenant) | tenant |
//! key` (the key's 8-byte big-endian ring token first), so the keys of one
//! token range are one contiguous scan ([`Store::scan`]), as
//! range streaming and hash-tree anti-entropy need. A data directory in the
//! first layout (`len(tenant) | tenant | key`) is converted when it opens.
//! Read-modify-write of one key happens under one of a fixed set of striped
//! locks (held only around the in-memory read and journal append, never across
//! an `.await`), so two writes to a key on this node always get distinct dots.
//!
//! Durability is separate from application: a write is appended to fjall's
//! journal, then [`Store::durable`] waits for the next group commit — one
//! `fdatasync` (or OS flush) covering every write appended before it began.
//!
//! # Actors
//!
//! Each time the store opens it issues dots as a new actor,
//! `"{node id}.{incarnation}.{nonce}"`: the incarnation is a durable counter
//! bumped at every open, the nonce 64 random bits drawn at every open. A
//! write appended but not yet durable when the process died may already have
//! reached other replicas, and a data directory may be wiped, restored from a
//! backup or a VM snapshot (rolling the incarnation back) or cloned: the
//! nonce makes the actor new in every one of those cases, so a dot is never
//! issued twice for different values. The directory also records the node id
//! it was created for and refuses to open under another.
//!
//! # Ring fence
//!
//! The store keeps a *ring fence*: the oldest ring version by which a write
//! may still be routed here. A membership change raises it on every node
//! before it copies data; a write routed by an older ring (a coordinator
//! that has not seen the change) is then refused, so it cannot land on
//! replicas the copy has already passed. The fence is checked under the
//! key's stripe lock, and raising it takes every stripe once after
//! recording it, so when [`Store::raise_fence`] returns no write admitted
//! under the old fence can still be staged. It is durable and never moves
//! back.
//!
//! # Hints
//!
//! A coordinated write stages one *hint* record naming the peers it is sent
//! to, in the write's own batch, so a write acknowledged to a client never
//! lacks the hint for a replica that missed it. When every peer has
//! answered, the record is removed, or rewritten to name only the peers
//! that failed. A record carries a sequence number that grows across
//! restarts; it is settled only by the write that staged it (a newer write
//! of the key has replaced it with a record of its own). Hints are delivered
//! by sending the key's *current* local state, which holds the hinted write
//! and everything after it (see `hints.rs`). An in-memory index names the
//! keys that have a record, with the sequence number staged last: sweeps
//! read the live records through it rather than iterating a keyspace that
//! is mostly removed records, and a write removes its own record without
//! reading it. It is rebuilt from the records at open.
//!
//! # Anti-entropy trees
//!
//! Every change of a key's state toggles the key's old hash out of its
//! tenant's hash tree and the new one in (see `trees.rs`), under the key's
//! stripe lock, once the change is appended. The trees live in memory and
//! are rebuilt from the data at every open. [`Store::digest`] answers a
//! token range's segment hashes from them, for an exchange between
//! replicas.
//!
//! # Write records
//!
//! A write that carries a *write id* (an idempotent request) leaves a record
//! `write id → dot` staged in the same atomic batch as the sibling set, on
//! the coordinating replica and on every replica that merges it. A retry of
//! the write finds the record and replicates the version already issued
//! instead of issuing a second one. Records expire after the TTL the request
//! names and are purged by [`Store::purge_write_records`].

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_paxos::AcceptorState;
use cohort_ring::merkle::{self, key_hash};
use cohort_ring::{
    Actor, CausalContext, DecodeError, Dot, Fence, SiblingSet, Token, TokenRange, UpdateError, token_for,
};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::commit::GroupCommit;
use crate::config::Durability;
use crate::trees::RepairTrees;

const STRIPES: usize = 1024;
const INCARNATION_KEY: &str = "incarnation";
const NODE_ID_KEY: &str = "node_id";
const RING_FENCE_KEY: &str = "ring_fence";
/// Sibling sets by token-ordered storage key.
const DATA_KEYSPACE: &str = "sibling_sets_by_token";
/// Sibling sets in the first layout, converted at open.
const LEGACY_DATA_KEYSPACE: &str = "sibling_sets";
/// Entries per batch while converting the first layout.
const CONVERT_BATCH: usize = 1024;
/// Hints for peers that have not acknowledged a write.
const HINTS_KEYSPACE: &str = "hints";
/// Keys that hold only tombstones, with the time they became so: the
/// candidates of garbage collection.
const TOMBSTONES_KEYSPACE: &str = "tombstones";
/// Hash-tree leaves whose hints were escalated to anti-entropy, until the
/// leader takes them.
const ESCALATIONS_KEYSPACE: &str = "escalations";
/// States this node holds as a fallback for replicas believed down (a
/// sloppy quorum), apart from its own data.
const HANDOFFS_KEYSPACE: &str = "handoffs";
/// Paxos acceptor state of linearizable keys (see cohort-paxos).
const ACCEPTORS_KEYSPACE: &str = "paxos_acceptors";
/// Format byte of a write record.
const WRITE_RECORD_FORMAT: u8 = 1;

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
    /// A stored acceptor record did not decode.
    #[error("stored acceptor state for a key is unreadable: {0}")]
    CorruptAcceptor(#[from] cohort_paxos::DecodeError),
    /// The data directory was created for another node.
    #[error(
        "data directory {dir} belongs to node {stored:?}, not {given:?}; start it with --id {stored}, or give node {given} a directory of its own"
    )]
    WrongNode {
        /// The directory.
        dir: String,
        /// The node id recorded in it.
        stored: String,
        /// The node id it was opened as.
        given: String,
    },
    /// The write would add a sibling to a key that has as many as allowed.
    #[error(
        "key has {count} siblings, the limit is {max}: read it and write back one value with its context to resolve them"
    )]
    TooManySiblings {
        /// Siblings the key would have.
        count: usize,
        /// The tenant's limit.
        max: u32,
    },
    /// The write would grow a key's state past the size limit.
    #[error(
        "key's state would take {bytes} bytes, the limit is {max}: read it and write back one value with its context to resolve its siblings"
    )]
    StateTooLarge {
        /// Encoded size the state would have.
        bytes: usize,
        /// The limit.
        max: u64,
    },
    /// This actor can issue no more dots for the key (a forged context).
    #[error(transparent)]
    DotsExhausted(#[from] cohort_ring::DotsExhausted),
    /// A fenced write whose token is below the key's for its lock.
    #[error(transparent)]
    Fenced(#[from] cohort_ring::Fenced),
    /// The request was routed by a ring older than the node's fence: the
    /// sender must refresh its ring and route again.
    #[error(
        "request routed by ring version {routed}, but this node takes only version {fence} or newer: refresh the ring"
    )]
    StaleRing {
        /// The version the request was routed by.
        routed: u64,
        /// The node's fence.
        fence: u64,
    },
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

/// Limits a new version must respect; zero means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteLimits {
    /// Most siblings (tombstones included) a key may have after a write
    /// that adds one.
    pub max_siblings: u32,
    /// Largest encoded state a write may grow a key to.
    pub max_state_bytes: u64,
}

/// An idempotent write's identity, recorded with the version it issued.
#[derive(Debug, Clone, Copy)]
pub struct WriteTag<'a> {
    /// The write id (1..=64 bytes).
    pub id: &'a [u8],
    /// Until when (seconds since the Unix epoch) the record is kept.
    pub expires_at: u64,
}

/// A fresh write that a merge replicates from its coordinating replica.
#[derive(Debug, Clone, Copy)]
pub struct Replicated<'a> {
    /// The dot the coordinating replica issued for it.
    pub dot: &'a Dot,
    /// Its idempotency tag, recorded with the dot, when it has one.
    pub tag: Option<WriteTag<'a>>,
}

impl From<cohort_ring::UpdateError> for StoreError {
    fn from(error: cohort_ring::UpdateError) -> Self {
        match error {
            cohort_ring::UpdateError::DotsExhausted(e) => StoreError::DotsExhausted(e),
            cohort_ring::UpdateError::Fenced(e) => StoreError::Fenced(e),
        }
    }
}

/// A version staged by [`Store::stage_update`].
#[derive(Debug, Clone)]
pub struct Staged {
    /// The key's state after the write, encoded once for disk and wire.
    pub encoded: Bytes,
    /// The write's dot.
    pub dot: Dot,
    /// Siblings (tombstones included) the key has after the write.
    pub siblings: usize,
    /// True when the write id was already recorded: nothing new was issued,
    /// and `dot` is the version the first attempt issued.
    pub replayed: bool,
    /// The sequence number of the hints staged with the write.
    pub hint_seq: u64,
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn encode_write_record(dot: &Dot, expires_at: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(17 + dot.actor.0.len());
    out.push(WRITE_RECORD_FORMAT);
    out.extend_from_slice(&expires_at.to_be_bytes());
    out.extend_from_slice(&dot.counter.to_be_bytes());
    out.extend_from_slice(dot.actor.0.as_bytes());
    out
}

/// The dot and expiry of a write record; `None` when unreadable.
fn decode_write_record(bytes: &[u8]) -> Option<(Dot, u64)> {
    if bytes.len() < 18 || bytes[0] != WRITE_RECORD_FORMAT {
        return None;
    }
    let expires_at = u64::from_be_bytes(bytes[1..9].try_into().ok()?);
    let counter = u64::from_be_bytes(bytes[9..17].try_into().ok()?);
    let actor = std::str::from_utf8(&bytes[17..]).ok()?;
    Some((Dot { actor: Actor::new(actor), counter }, expires_at))
}

/// The durable key → sibling-set store of one node.
pub struct Store {
    db: Database,
    data: Keyspace,
    writes: Keyspace,
    actor: Actor,
    incarnation: u64,
    stripes: Box<[Mutex<()>]>,
    meta: Keyspace,
    hints: Keyspace,
    /// The keys that may have a hint record: sweeps look records up by it
    /// instead of iterating the hints keyspace, whose removed records (every
    /// write stages one and settles it) would cost a sweep more the busier
    /// the node, and a write settling its own record needs no read. Changed
    /// under the key's stripe lock; rebuilt at open.
    hint_index: Mutex<BTreeMap<Vec<u8>, IndexedHint>>,
    /// The next hint's sequence number: the incarnation in the high bits, so
    /// it grows across restarts.
    hint_seq: AtomicU64,
    fence: AtomicU64,
    commit: GroupCommit,
    trees: RepairTrees,
    tombstones: Keyspace,
    escalations: Keyspace,
    handoffs: Keyspace,
    /// Paxos acceptor state of the linearizable key space, one record per
    /// key under the same storage key as the key's data would have (a
    /// different keyspace, so the two models never share a key).
    acceptors: Keyspace,
    /// The highest counter of this actor in any state purged since the
    /// store opened: new dots are issued above it (see
    /// [`SiblingSet::update_above`]). Dots of earlier actors are never
    /// issued again, so it need not survive a restart.
    purged_floor: AtomicU64,
}

/// A key's entry in the hint index.
#[derive(Debug, Clone, Copy)]
struct IndexedHint {
    /// When the key's record was first staged (kept while a newer write
    /// replaces the record): sweeps leave young records to their write.
    staged: Instant,
    /// The sequence number of the record staged last; 0 when unknown (read
    /// from disk at open).
    seq: u64,
}

/// Whether a state holds siblings, and every one is a tombstone.
/// Whether `state` holds nothing but tombstones, and so may one day be
/// purged. A state that remembers fencing tokens never is: purging it would
/// forget the highest token of its locks, and a holder paused past the
/// grace period could then write under an older one.
fn only_tombstones(state: &SiblingSet) -> bool {
    !state.siblings().is_empty() && !state.has_values() && state.fences().is_empty()
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
        let data = db.keyspace(DATA_KEYSPACE, deferred)?;
        if db.keyspace_exists(LEGACY_DATA_KEYSPACE) {
            let legacy = db.keyspace(LEGACY_DATA_KEYSPACE, deferred)?;
            let converted = convert_legacy_layout(&db, &legacy, &data)?;
            db.delete_keyspace(legacy)?;
            tracing::info!(converted, dir = %dir.display(), "converted the data directory to token-ordered keys");
        }
        let writes = db.keyspace("write_records", deferred)?;
        let hints = db.keyspace(HINTS_KEYSPACE, deferred)?;
        let tombstones = db.keyspace(TOMBSTONES_KEYSPACE, deferred)?;
        let escalations = db.keyspace(ESCALATIONS_KEYSPACE, deferred)?;
        let handoffs = db.keyspace(HANDOFFS_KEYSPACE, deferred)?;
        let meta = db.keyspace("node_meta", deferred)?;
        let acceptors = db.keyspace(ACCEPTORS_KEYSPACE, deferred)?;
        match meta.get(NODE_ID_KEY)? {
            Some(stored) if stored.as_ref() != node_id.as_bytes() => {
                return Err(StoreError::WrongNode {
                    dir: dir.display().to_string(),
                    stored: String::from_utf8_lossy(&stored).into_owned(),
                    given: node_id.to_string(),
                });
            }
            Some(_) => {}
            // A new directory, or one from a release that did not record
            // its node: it belongs to this node from now on.
            None => meta.insert(NODE_ID_KEY, node_id.as_bytes())?,
        }
        let previous = match meta.get(INCARNATION_KEY)? {
            Some(bytes) => u64::from_be_bytes(
                bytes.as_ref().try_into().map_err(|_| StoreError::Engine("incarnation record is corrupt".into()))?,
            ),
            None => 0,
        };
        let fence = match meta.get(RING_FENCE_KEY)? {
            Some(bytes) => u64::from_be_bytes(
                bytes.as_ref().try_into().map_err(|_| StoreError::Engine("ring fence record is corrupt".into()))?,
            ),
            None => 0,
        };
        let incarnation = previous + 1;
        meta.insert(INCARNATION_KEY, incarnation.to_be_bytes())?;
        db.persist(PersistMode::SyncAll)?;
        let nonce: u64 = rand::random();
        let trees = rebuild_trees(&data, &tombstones, dir)?;
        let opened = Instant::now();
        let mut hint_index = BTreeMap::new();
        for item in hints.iter() {
            hint_index.insert(item.key()?.to_vec(), IndexedHint { staged: opened, seq: 0 });
        }

        Ok(Store {
            commit: GroupCommit::new(db.clone(), durability),
            db,
            data,
            writes,
            actor: Actor::new(format!("{node_id}.{incarnation}.{nonce:016x}")),
            incarnation,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            meta,
            hints,
            hint_index: Mutex::new(hint_index),
            hint_seq: AtomicU64::new(incarnation << 40),
            fence: AtomicU64::new(fence),
            trees,
            tombstones,
            escalations,
            handoffs,
            acceptors,
            purged_floor: AtomicU64::new(0),
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
        self.commit.inject_disk_failure();
    }

    /// Whether a durability failure has poisoned the store.
    pub fn is_poisoned(&self) -> bool {
        self.commit.is_poisoned()
    }

    /// The local state of a key (empty if never written here). A poisoned
    /// store answers nothing: what it holds in memory may include writes
    /// whose sync failed, which it cannot vouch for.
    pub fn read(&self, tenant: &str, key: &[u8]) -> Result<SiblingSet, StoreError> {
        self.check_writable()?;
        self.read_encoded(&storage_key(tenant, key))
    }

    fn read_encoded(&self, storage_key: &[u8]) -> Result<SiblingSet, StoreError> {
        match self.data.get(storage_key)? {
            Some(bytes) => Ok(SiblingSet::decode(&bytes)?),
            None => Ok(SiblingSet::new()),
        }
    }

    /// The dot recorded for write id `id`, if the record is still kept.
    pub fn write_record(&self, id: &[u8]) -> Result<Option<Dot>, StoreError> {
        self.check_writable()?;
        self.live_write_record(id)
    }

    fn live_write_record(&self, id: &[u8]) -> Result<Option<Dot>, StoreError> {
        let Some(bytes) = self.writes.get(id)? else { return Ok(None) };
        match decode_write_record(&bytes) {
            Some((dot, expires_at)) if expires_at > now_secs() => Ok(Some(dot)),
            Some(_) => Ok(None),
            None => Err(StoreError::Engine("a write record is unreadable".into())),
        }
    }

    /// Deletes expired write records; returns how many. Each removal is
    /// appended like any write and made durable by the next group commit.
    pub fn purge_write_records(&self) -> Result<usize, StoreError> {
        self.check_writable()?;
        let now = now_secs();
        let mut purged = 0;
        for item in self.writes.iter() {
            let (id, record) = item.into_inner()?;
            if decode_write_record(&record).is_none_or(|(_, expires_at)| expires_at <= now) {
                self.writes.remove(id)?;
                purged += 1;
            }
        }
        metrics::counter!("cohort_node_write_records_purged_total").increment(purged as u64);
        Ok(purged)
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        if self.is_poisoned() { Err(StoreError::Poisoned) } else { Ok(()) }
    }

    /// Stages a hint record of `(tenant, key)` naming `peers` (`(id,
    /// address)`), to be made durable by the next group commit like the
    /// write it accompanies; returns its sequence number.
    pub fn stage_hints(&self, tenant: &str, key: &[u8], peers: &[(&str, &str)]) -> Result<u64, StoreError> {
        self.check_writable()?;
        let skey = storage_key(tenant, key);
        let _guard = self.stripe(&skey).lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = self.db.batch();
        let seq = self.add_hints(&mut batch, &skey, peers, 0);
        batch.commit()?;
        Ok(seq)
    }

    /// Adds a hint record of `skey` for `peers` to `batch`; returns its
    /// sequence number. The caller holds the key's stripe.
    fn add_hints(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        skey: &[u8],
        peers: &[(&str, &str)],
        ring_version: u64,
    ) -> u64 {
        let seq = self.hint_seq.fetch_add(1, Ordering::Relaxed) + 1;
        if !peers.is_empty() {
            batch.insert(&self.hints, skey, encode_hint(seq, peers, ring_version));
            // Indexed before the batch commits: the index may name a key
            // without a record (a failed commit), never the reverse.
            let mut index = self.hint_index.lock().unwrap_or_else(|p| p.into_inner());
            index.entry(skey.to_vec()).or_insert(IndexedHint { staged: Instant::now(), seq }).seq = seq;
            metrics::counter!("cohort_node_hints_stored_total").increment(peers.len() as u64);
        }
        seq
    }

    /// Settles the hint record `seq` of `(tenant, key)` once its peers have
    /// answered: removed when none of them is left in `failed`, otherwise
    /// rewritten to name only those. A newer record of the key is left
    /// alone. Not synced: a record that comes back after a crash is
    /// delivered again, which merges nothing new.
    pub fn settle_hints(&self, tenant: &str, key: &[u8], seq: u64, failed: &[(&str, &str)]) -> Result<(), StoreError> {
        let skey = storage_key(tenant, key);
        let _guard = self.stripe(&skey).lock().unwrap_or_else(|p| p.into_inner());
        let indexed = self.hint_index.lock().unwrap_or_else(|p| p.into_inner()).get(&skey).map(|entry| entry.seq);
        if indexed == Some(seq) && failed.is_empty() {
            // The record staged last is this write's (the index says so under
            // the stripe a newer write would hold): removed without a read.
            self.hints.remove(skey.clone())?;
            self.unindex_hint(&skey);
            return Ok(());
        }
        let Some(value) = self.hints.get(&skey)? else { return Ok(()) };
        if let Some((stored, _, ring_version)) = decode_hint(&value)
            && stored == seq
        {
            if failed.is_empty() {
                self.hints.remove(skey.clone())?;
                self.unindex_hint(&skey);
            } else {
                self.hints.insert(skey, encode_hint(seq, failed, ring_version))?;
            }
        }
        Ok(())
    }

    /// Drops the hints and handoffs for `removed` peers (nodes no longer on
    /// any live ring: the migration that removed them copied every range
    /// they held from every other old owner to their successors); returns
    /// how many.
    pub fn forget_hints_for(&self, removed: &[String]) -> Result<usize, StoreError> {
        self.check_writable()?;
        let mut dropped = 0;
        for item in self.handoffs.iter() {
            let record = item.key()?;
            if split_tenant(&record).is_some_and(|(owner, _)| removed.iter().any(|r| r == owner)) {
                self.handoffs.remove(record.to_vec())?;
                dropped += 1;
            }
        }
        for item in self.hints.iter() {
            let (skey, value) = item.into_inner()?;
            let Some((seq, peers, _)) = decode_hint(&value) else { continue };
            if !peers.iter().any(|(peer, _)| removed.contains(peer)) {
                continue;
            }
            let Some((_, tenant, key)) = parse_storage_key(&skey) else { continue };
            let kept: Vec<(&str, &str)> = peers
                .iter()
                .filter(|(peer, _)| !removed.contains(peer))
                .map(|(p, a)| (p.as_str(), a.as_str()))
                .collect();
            dropped += peers.len() - kept.len();
            self.settle_hints(tenant, key, seq, &kept)?;
        }
        if dropped > 0 {
            metrics::counter!("cohort_node_hints_dropped_total", "reason" => "peer_removed").increment(dropped as u64);
        }
        Ok(dropped)
    }

    /// How many hint records are pending (from the index: a key whose
    /// staging batch failed to commit counts until the next sweep).
    pub fn hints_pending(&self) -> Result<u64, StoreError> {
        self.check_writable()?;
        Ok(self.hint_index.lock().unwrap_or_else(|p| p.into_inner()).len() as u64)
    }

    /// Forgets `skey` in the hint index. The caller holds its stripe and has
    /// removed its record.
    fn unindex_hint(&self, skey: &[u8]) {
        self.hint_index.lock().unwrap_or_else(|p| p.into_inner()).remove(skey);
    }

    /// Gives up on delivering `hint` (its record, if no newer write has
    /// replaced it): the record is removed and, in the same batch, the
    /// hash-tree leaf of its key is recorded for the leader's anti-entropy
    /// to sync among all the key's replicas ([`Store::escalations`]).
    pub fn escalate_hint(&self, hint: &Hint) -> Result<bool, StoreError> {
        self.check_writable()?;
        let skey = storage_key(&hint.tenant, &hint.key);
        let _guard = self.stripe(&skey).lock().unwrap_or_else(|p| p.into_inner());
        let Some(value) = self.hints.get(&skey)? else { return Ok(false) };
        if decode_hint(&value).is_none_or(|(stored, _, _)| stored != hint.seq) {
            return Ok(false);
        }
        let mut batch = self.db.batch();
        batch.remove(&self.hints, skey.clone());
        batch.insert(&self.escalations, escalation_marker(&hint.tenant, &hint.key), []);
        batch.commit()?;
        self.unindex_hint(&skey);
        Ok(true)
    }

    /// Keeps `incoming` as a fallback for `owner` (at `address`): merged
    /// into what this node already holds for that owner and key, apart from
    /// its own data, until [`Store::settle_handoff`]. Not yet durable: call
    /// [`Store::durable`] before acknowledging.
    pub fn stage_handoff(
        &self,
        tenant: &str,
        key: &[u8],
        owner: (&str, &str),
        ring_version: u64,
        incoming: &SiblingSet,
    ) -> Result<(), StoreError> {
        self.check_writable()?;
        let skey = storage_key(tenant, key);
        let record = handoff_key(owner.0, &skey);
        let _guard = self.stripe(&skey).lock().unwrap_or_else(|p| p.into_inner());
        let (mut state, mut version) = (incoming.clone(), ring_version);
        if let Some(held) = self.handoffs.get(&record)? {
            let held =
                decode_handoff(&held).ok_or_else(|| StoreError::Engine("a handoff record is unreadable".into()))?;
            state.sync(&SiblingSet::decode(&held.state)?);
            // The ring of the oldest write it holds.
            version = version.min(held.ring_version);
        }
        self.handoffs.insert(record, encode_handoff(version, owner.1, &state.encode()))?;
        metrics::counter!("cohort_node_handoffs_stored_total").increment(1);
        Ok(())
    }

    /// Up to `limit` states held for other replicas.
    pub fn pending_handoffs(&self, limit: usize) -> Result<Vec<Handoff>, StoreError> {
        self.check_writable()?;
        let mut out = Vec::new();
        for item in self.handoffs.iter().take(limit) {
            let (record, value) = item.into_inner()?;
            let parsed = split_tenant(&record).and_then(|(owner, skey)| {
                let (_, tenant, key) = parse_storage_key(skey)?;
                let held = decode_handoff(&value)?;
                Some(Handoff {
                    tenant: tenant.to_string(),
                    key: key.to_vec(),
                    owner: owner.to_string(),
                    address: held.address,
                    ring_version: held.ring_version,
                    state: Bytes::from(held.state),
                    record: value.to_vec(),
                })
            });
            match parsed {
                Some(handoff) => out.push(handoff),
                None => drop_unreadable(&self.handoffs, &record, "handoff record")?,
            }
        }
        Ok(out)
    }

    /// Removes `handoff` once delivered, if no write has reached its record
    /// since it was read. Returns whether it was removed.
    pub fn settle_handoff(&self, handoff: &Handoff) -> Result<bool, StoreError> {
        let skey = storage_key(&handoff.tenant, &handoff.key);
        let record = handoff_key(&handoff.owner, &skey);
        let _guard = self.stripe(&skey).lock().unwrap_or_else(|p| p.into_inner());
        if self.handoffs.get(&record)?.is_none_or(|held| *held != handoff.record[..]) {
            return Ok(false);
        }
        self.handoffs.remove(record)?;
        Ok(true)
    }

    /// The tree leaves, per tenant, of the keys this node holds handoffs
    /// for: reaping must wait there, since a replica may still lack those
    /// writes.
    pub fn handoff_leaves(&self) -> Result<Vec<(String, TokenRange)>, StoreError> {
        self.check_writable()?;
        let mut out: Vec<(String, TokenRange)> = Vec::new();
        for item in self.handoffs.iter() {
            let record = item.key()?;
            let Some((_, tenant, key)) = split_tenant(&record).and_then(|(_, skey)| parse_storage_key(skey)) else {
                continue;
            };
            let leaf = (tenant.to_string(), merkle::leaf_range(merkle::leaf_of(token_for(tenant, key))));
            if !out.contains(&leaf) {
                out.push(leaf);
            }
        }
        Ok(out)
    }

    /// Up to `limit` escalated ranges: `(tenant, the token range of a
    /// hash-tree leaf)`. They stay until [`Store::clear_escalations`].
    pub fn escalations(&self, limit: usize) -> Result<Vec<(String, TokenRange)>, StoreError> {
        self.check_writable()?;
        let mut out = Vec::new();
        for item in self.escalations.iter().take(limit) {
            let marker = item.key()?;
            let Some((tenant, leaf)) = split_tenant(&marker) else { continue };
            let Ok(leaf) = <[u8; 2]>::try_from(leaf) else { continue };
            out.push((tenant.to_string(), merkle::leaf_range(usize::from(u16::from_be_bytes(leaf)))));
        }
        Ok(out)
    }

    /// Removes the markers of escalated ranges that have been synced.
    pub fn clear_escalations(&self, synced: &[(String, TokenRange)]) -> Result<(), StoreError> {
        self.check_writable()?;
        for (tenant, range) in synced {
            if range.start > range.end || tenant.len() > 255 {
                continue;
            }
            self.escalations.remove(leaf_marker(tenant, merkle::leaf_of(range.start)))?;
        }
        Ok(())
    }

    /// Up to `limit` pending hint records, in key order, of keys that have
    /// had one for at least `min_age` (a younger record belongs to a write
    /// whose own replication is still settling it).
    pub fn pending_hints(&self, limit: usize, min_age: Duration) -> Result<Vec<Hint>, StoreError> {
        self.check_writable()?;
        let cutoff = Instant::now().checked_sub(min_age);
        let keys: Vec<Vec<u8>> = {
            let index = self.hint_index.lock().unwrap_or_else(|p| p.into_inner());
            index
                .iter()
                .filter(|(_, entry)| cutoff.is_none_or(|cutoff| entry.staged <= cutoff))
                .take(limit)
                .map(|(skey, _)| skey.clone())
                .collect()
        };
        let mut out = Vec::with_capacity(keys.len());
        for skey in keys {
            let Some(value) = self.hints.get(&skey)? else {
                // Settled since, or never committed: checked again under the
                // stripe, which a staging write holds until it commits.
                let _guard = self.stripe(&skey).lock().unwrap_or_else(|p| p.into_inner());
                if self.hints.get(&skey)?.is_none() {
                    self.unindex_hint(&skey);
                }
                continue;
            };
            let parsed = parse_storage_key(&skey).and_then(|(_, tenant, key)| {
                let (seq, peers, ring_version) = decode_hint(&value)?;
                Some(Hint { tenant: tenant.to_string(), key: key.to_vec(), seq, peers, ring_version })
            });
            match parsed {
                Some(hint) => out.push(hint),
                None => {
                    let _guard = self.stripe(&skey).lock().unwrap_or_else(|p| p.into_inner());
                    drop_unreadable(&self.hints, &skey, "hint")?;
                    self.unindex_hint(&skey);
                }
            }
        }
        Ok(out)
    }

    /// The encoded local state of `(tenant, key)`, empty when never written.
    pub fn read_encoded_state(&self, tenant: &str, key: &[u8]) -> Result<Bytes, StoreError> {
        self.check_writable()?;
        Ok(self.data.get(storage_key(tenant, key))?.map_or_else(Bytes::new, |v| Bytes::from(v.to_vec())))
    }

    /// The oldest ring version requests may be routed by (0: any).
    pub fn fence(&self) -> u64 {
        self.fence.load(Ordering::Acquire)
    }

    /// Refuses a request routed by a ring older than the fence.
    pub fn check_ring(&self, routed: u64) -> Result<(), StoreError> {
        let fence = self.fence();
        if routed < fence { Err(StoreError::StaleRing { routed, fence }) } else { Ok(()) }
    }

    /// Raises the fence to `version` (never lowers it), durably; returns the
    /// fence. When it returns, every write admitted under the old fence has
    /// been staged, and every later one is checked against the new fence.
    pub async fn raise_fence(&self, version: u64) -> Result<u64, StoreError> {
        self.check_writable()?;
        if version <= self.fence() {
            return Ok(self.fence());
        }
        self.meta.insert(RING_FENCE_KEY, version.to_be_bytes())?;
        self.durable().await?;
        self.fence.fetch_max(version, Ordering::AcqRel);
        // A write that passed the old fence holds its stripe until it is
        // staged: taking each stripe once waits for all of them.
        for stripe in self.stripes.iter() {
            drop(stripe.lock().unwrap_or_else(|p| p.into_inner()));
        }
        Ok(self.fence())
    }

    /// A page of the keys stored in the token range `start..=end`, after the
    /// storage key `after` when given: at most `limit` entries `(tenant,
    /// key, encoded state)`, and the storage key to resume after when more
    /// remain.
    #[allow(clippy::type_complexity)]
    pub fn scan(
        &self,
        start: Token,
        end: Token,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<(String, Vec<u8>, Bytes)>, Option<Vec<u8>>), StoreError> {
        self.scan_tenant(start, end, after, limit, None)
    }

    /// [`Store::scan`], keeping only `tenant`'s keys when one is given.
    #[allow(clippy::type_complexity)]
    pub fn scan_tenant(
        &self,
        start: Token,
        end: Token,
        after: Option<&[u8]>,
        limit: usize,
        only: Option<&str>,
    ) -> Result<(Vec<(String, Vec<u8>, Bytes)>, Option<Vec<u8>>), StoreError> {
        self.scan_keyspace(&self.data, start, end, after, limit, only)
    }

    /// Like [`Store::scan_tenant`], over the Paxos acceptor records of the
    /// linearizable key space (the value is the encoded acceptor state):
    /// what a membership change settles on the new replicas.
    #[allow(clippy::type_complexity)]
    pub fn scan_acceptors(
        &self,
        start: Token,
        end: Token,
        after: Option<&[u8]>,
        limit: usize,
        only: Option<&str>,
    ) -> Result<(Vec<(String, Vec<u8>, Bytes)>, Option<Vec<u8>>), StoreError> {
        self.scan_keyspace(&self.acceptors, start, end, after, limit, only)
    }

    #[allow(clippy::type_complexity)]
    fn scan_keyspace(
        &self,
        keyspace: &Keyspace,
        start: Token,
        end: Token,
        after: Option<&[u8]>,
        limit: usize,
        only: Option<&str>,
    ) -> Result<(Vec<(String, Vec<u8>, Bytes)>, Option<Vec<u8>>), StoreError> {
        self.check_writable()?;
        let (lower, upper) = token_bounds(start, end, after);
        let mut out = Vec::new();
        for item in keyspace.range::<Vec<u8>, _>((lower, upper)) {
            let (skey, value) = item.into_inner()?;
            if out.len() == limit.max(1) {
                let last = storage_key_of(&out);
                return Ok((out, last));
            }
            let (_, tenant, key) =
                parse_storage_key(&skey).ok_or_else(|| StoreError::Engine("a storage key is malformed".into()))?;
            if only.is_some_and(|only| only != tenant) {
                continue;
            }
            out.push((tenant.to_string(), key.to_vec(), Bytes::from(value.to_vec())));
        }
        Ok((out, None))
    }

    /// The number of keys and encoded bytes stored in `start..=end`.
    pub fn count(&self, start: Token, end: Token) -> Result<(u64, u64), StoreError> {
        self.check_writable()?;
        let (lower, upper) = token_bounds(start, end, None);
        let (mut keys, mut bytes) = (0u64, 0u64);
        for item in self.data.range::<Vec<u8>, _>((lower, upper)) {
            let (_, value) = item.into_inner()?;
            keys += 1;
            bytes += value.len() as u64;
        }
        Ok((keys, bytes))
    }

    /// Deletes the keys of `tenants` in `start..=end` and waits until that is
    /// durable; returns how many were deleted.
    pub async fn drop_range(&self, start: Token, end: Token, tenants: &[String]) -> Result<u64, StoreError> {
        self.check_writable()?;
        let (lower, upper) = token_bounds(start, end, None);
        let mut doomed = Vec::new();
        for item in self.data.range::<Vec<u8>, _>((lower, upper)) {
            let skey = item.key()?;
            if parse_storage_key(&skey).is_some_and(|(_, tenant, _)| tenants.iter().any(|t| t == tenant)) {
                doomed.push(skey.to_vec());
            }
        }
        // Key by key under its stripe, as a write would: the tree follows
        // the state actually removed, even if a merge landed meanwhile.
        let mut dropped = 0u64;
        for skey in doomed {
            let Some((token, tenant, key)) = parse_storage_key(&skey) else { continue };
            let _guard = self.stripe(&skey).lock().unwrap_or_else(|p| p.into_inner());
            let Some(value) = self.data.get(&skey)? else { continue };
            let mut batch = self.db.batch();
            batch.remove(&self.tombstones, skey.clone());
            batch.remove(&self.data, skey.clone());
            batch.commit()?;
            if let Ok(state) = SiblingSet::decode(&value) {
                self.trees.toggle(tenant, token, key_hash(tenant, key, state.clock()));
            }
            dropped += 1;
        }
        // The range's Paxos acceptor records go too: the new replicas hold
        // every register, settled there before the old ring retired.
        let (lower, upper) = token_bounds(start, end, None);
        let mut batch = self.db.batch();
        for item in self.acceptors.range::<Vec<u8>, _>((lower, upper)) {
            let skey = item.key()?;
            if parse_storage_key(&skey).is_some_and(|(_, tenant, _)| tenants.iter().any(|t| t == tenant)) {
                batch.remove(&self.acceptors, skey.to_vec());
            }
        }
        batch.commit()?;
        self.durable().await?;
        metrics::counter!("cohort_node_keys_dropped_total").increment(dropped);
        Ok(dropped)
    }

    /// Moves `(tenant, key)` in its tree from the state whose clock hashed
    /// to `old` (none: the key was absent) to the state with clock `new`
    /// (none: removed). The caller holds the key's stripe.
    fn retree(&self, tenant: &str, key: &[u8], token: Token, old: Option<u64>, new: Option<&CausalContext>) {
        if let Some(hash) = old {
            self.trees.toggle(tenant, token, hash);
        }
        if let Some(clock) = new {
            self.trees.toggle(tenant, token, key_hash(tenant, key, clock));
        }
    }

    /// The hashes of `tenant`'s keys in `range`, one per digest segment
    /// ([`merkle::segments`]): from the tree for a whole leaf, from the
    /// keys themselves for a leaf the range covers in part.
    pub fn digest(&self, tenant: &str, range: TokenRange) -> Result<Vec<u64>, StoreError> {
        self.check_writable()?;
        merkle::segments(range)
            .into_iter()
            .map(|segment| {
                if merkle::is_whole_leaf(segment) {
                    Ok(self.trees.leaf(tenant, merkle::leaf_of(segment.start)))
                } else {
                    self.hash_keys(tenant, segment)
                }
            })
            .collect()
    }

    /// The XOR of the hashes of `tenant`'s keys in `segment`, read from data.
    fn hash_keys(&self, tenant: &str, segment: TokenRange) -> Result<u64, StoreError> {
        let (lower, upper) = token_bounds(segment.start, segment.end, None);
        let mut hash = 0;
        for item in self.data.range::<Vec<u8>, _>((lower, upper)) {
            let (skey, value) = item.into_inner()?;
            match parse_storage_key(&skey) {
                // An unreadable state is left out, as when the tree was built.
                Some((_, stored, key)) if stored == tenant => {
                    if let Ok(state) = SiblingSet::decode(&value) {
                        hash ^= key_hash(tenant, key, state.clock());
                    }
                }
                _ => {}
            }
        }
        Ok(hash)
    }

    /// Deletes `(tenant, key)`'s state outright, as if it had never been
    /// written here, and waits until that is durable. For operators' repair
    /// drills and fault tests: the replica then lacks the key until
    /// anti-entropy or a read brings it back.
    pub async fn remove_key(&self, tenant: &str, key: &[u8]) -> Result<bool, StoreError> {
        self.check_writable()?;
        let skey = storage_key(tenant, key);
        let token = skey_token(&skey);
        let removed = {
            let _guard = self.stripe(&skey).lock().unwrap_or_else(|p| p.into_inner());
            let Some(bytes) = self.data.get(&skey)? else { return Ok(false) };
            let clock = SiblingSet::decode(&bytes)?.clock().clone();
            // As a purge: no later dot of this actor may be one it had seen.
            self.purged_floor.fetch_max(clock.max_counter(&self.actor), Ordering::AcqRel);
            let mut batch = self.db.batch();
            batch.remove(&self.tombstones, skey.clone());
            batch.remove(&self.data, skey);
            batch.commit()?;
            self.retree(tenant, key, token, Some(key_hash(tenant, key, &clock)), None);
            true
        };
        self.durable().await?;
        Ok(removed)
    }

    /// Keeps the tombstone record of `skey` in step with a change of its
    /// state to `new` (from a state that held only tombstones or not): added
    /// when the key comes to hold only tombstones, removed when it holds a
    /// value again, left alone otherwise so its time stays the first one.
    fn track_tombstones(&self, batch: &mut fjall::OwnedWriteBatch, skey: &[u8], was: bool, new: &SiblingSet) {
        match (was, only_tombstones(new)) {
            (false, true) => batch.insert(&self.tombstones, skey, now_secs().to_be_bytes()),
            (true, false) => batch.remove(&self.tombstones, skey.to_vec()),
            _ => {}
        }
    }

    /// Up to `limit` keys of `tenant` in `range` that have held only
    /// tombstones for at least `grace_secs`, with their states.
    pub fn tombstones(
        &self,
        tenant: &str,
        range: TokenRange,
        grace_secs: u64,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>, StoreError> {
        self.check_writable()?;
        let cutoff = now_secs().saturating_sub(grace_secs);
        let (lower, upper) = token_bounds(range.start, range.end, None);
        let mut out = Vec::new();
        for item in self.tombstones.range::<Vec<u8>, _>((lower, upper)) {
            if out.len() >= limit {
                break;
            }
            let (skey, since) = item.into_inner()?;
            let Some((_, stored, key)) = parse_storage_key(&skey) else { continue };
            let since = since.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX);
            if stored != tenant || since > cutoff {
                continue;
            }
            // A record left behind by a change that raced it is skipped.
            if let Some(state) = self.data.get(&skey)?
                && SiblingSet::decode(&state).is_ok_and(|s| only_tombstones(&s))
            {
                out.push((key.to_vec(), Bytes::from(state.to_vec())));
            }
        }
        Ok(out)
    }

    /// Deletes `(tenant, key)` outright if its state is still `expected`
    /// and holds only tombstones, and no hint for it is pending; waits until
    /// that is durable. Returns whether it was deleted. Garbage collection
    /// calls it once every replica of the key is known to hold `expected`.
    pub async fn purge(
        &self,
        tenant: &str,
        key: &[u8],
        expected: &SiblingSet,
        ring_version: u64,
    ) -> Result<bool, StoreError> {
        self.check_writable()?;
        let skey = storage_key(tenant, key);
        let token = skey_token(&skey);
        {
            let _guard = self.stripe(&skey).lock().unwrap_or_else(|p| p.into_inner());
            self.check_ring(ring_version)?;
            let Some(bytes) = self.data.get(&skey)? else { return Ok(false) };
            let current = SiblingSet::decode(&bytes)?;
            if current != *expected || !only_tombstones(&current) || self.hints.get(&skey)?.is_some() {
                return Ok(false);
            }
            // Raised before the removal is visible: no dot this actor issues
            // from now on can be one the purged state had seen.
            self.purged_floor.fetch_max(current.clock().max_counter(&self.actor), Ordering::AcqRel);
            let mut batch = self.db.batch();
            batch.remove(&self.tombstones, skey.clone());
            batch.remove(&self.data, skey);
            batch.commit()?;
            self.retree(tenant, key, token, Some(key_hash(tenant, key, current.clock())), None);
        }
        self.durable().await?;
        metrics::counter!("cohort_node_tombstones_purged_total").increment(1);
        Ok(true)
    }

    fn stripe(&self, storage_key: &[u8]) -> &Mutex<()> {
        // The key's token leads it: already a uniform hash.
        &self.stripes[(skey_token(storage_key) % STRIPES as u64) as usize]
    }

    /// Issues a new version of the key at this node's actor and appends it to
    /// the journal. The result is **not yet durable**: call
    /// [`Store::durable`] before acknowledging it.
    ///
    /// With a `write` tag, the dot is recorded under the write id in the same
    /// batch; if the id is already recorded, nothing is issued and the
    /// current state is returned with the recorded dot (`replayed`).
    /// A write that would add a sibling past `limits` is refused and stores
    /// nothing; one that resolves siblings is always accepted.
    #[allow(clippy::too_many_arguments)]
    pub fn stage_update(
        &self,
        tenant: &str,
        key: &[u8],
        context: &CausalContext,
        value: Option<Bytes>,
        limits: WriteLimits,
        write: Option<WriteTag<'_>>,
        ring_version: u64,
    ) -> Result<Staged, StoreError> {
        self.stage_update_hinted(tenant, key, context, value, None, limits, write, ring_version, &[])
    }

    /// [`Store::stage_update`] under `fence` when given (refused when the
    /// key has seen a higher token of its lock), staging in the same batch a
    /// hint for every `(peer id, address)` of `hints` (see the module docs);
    /// the hints' sequence number is in [`Staged::hint_seq`].
    #[allow(clippy::too_many_arguments)]
    pub fn stage_update_hinted(
        &self,
        tenant: &str,
        key: &[u8],
        context: &CausalContext,
        value: Option<Bytes>,
        fence: Option<Fence>,
        limits: WriteLimits,
        write: Option<WriteTag<'_>>,
        ring_version: u64,
        hints: &[(&str, &str)],
    ) -> Result<Staged, StoreError> {
        self.check_writable()?;
        let skey = storage_key(tenant, key);
        let token = skey_token(&skey);
        let _guard = self.stripe(&skey).lock().unwrap_or_else(|p| p.into_inner());
        self.check_ring(ring_version)?;
        let current = self.data.get(&skey)?;
        let mut state = match &current {
            Some(bytes) => SiblingSet::decode(bytes)?,
            None => SiblingSet::new(),
        };
        if let Some(tag) = write
            && let Some(dot) = self.live_write_record(tag.id)?
        {
            // A retry of a fenced write the key has since seen a higher
            // token for: refused as the first attempt was (or would be).
            if let Some(fenced) = fence.as_ref().and_then(|f| state.fenced_by(f)) {
                return Err(fenced.into());
            }
            metrics::counter!("cohort_node_write_replays_total").increment(1);
            let encoded = current.map_or_else(|| Bytes::from(state.encode()), |bytes| Bytes::from(bytes.to_vec()));
            let mut batch = self.db.batch();
            let hint_seq = self.add_hints(&mut batch, &skey, hints, ring_version);
            batch.commit()?;
            return Ok(Staged { encoded, dot, siblings: state.siblings().len(), replayed: true, hint_seq });
        }
        // This actor issued every dot it ever had for this key, so a context
        // can only cover what the local clock covers; more is forged, and
        // honouring it would skip (or overflow) counters.
        // After a purge the key's own counters are gone; the floor bounds them.
        let floor = self.purged_floor.load(Ordering::Acquire);
        let (claimed, issued) = (context.max_counter(&self.actor), state.clock().max_counter(&self.actor).max(floor));
        if claimed > issued {
            return Err(StoreError::ForgedContext { actor: self.actor.to_string(), claimed, issued });
        }
        let before = state.siblings().len();
        let old_bytes = current.as_ref().map_or(0, |b| b.len());
        let old_hash = current.as_ref().map(|_| key_hash(tenant, key, state.clock()));
        let was_tombstones = only_tombstones(&state);
        let dot = state.update_above(context, &self.actor, value, floor, fence).inspect_err(|error| {
            if matches!(error, UpdateError::Fenced(_)) {
                metrics::counter!("cohort_node_writes_refused_total", "reason" => "fenced").increment(1);
            }
        })?;
        let siblings = state.siblings().len();
        if limits.max_siblings > 0 && siblings > before && siblings > limits.max_siblings as usize {
            metrics::counter!("cohort_node_writes_refused_total", "reason" => "siblings").increment(1);
            return Err(StoreError::TooManySiblings { count: siblings, max: limits.max_siblings });
        }
        let encoded = state.encode();
        if limits.max_state_bytes > 0 && encoded.len() > old_bytes && encoded.len() as u64 > limits.max_state_bytes {
            metrics::counter!("cohort_node_writes_refused_total", "reason" => "state_bytes").increment(1);
            return Err(StoreError::StateTooLarge { bytes: encoded.len(), max: limits.max_state_bytes });
        }
        if limits.max_siblings > 0 && siblings * 2 > limits.max_siblings as usize {
            metrics::counter!("cohort_node_sibling_warnings_total").increment(1);
        }
        metrics::histogram!("cohort_node_siblings").record(siblings as f64);
        let encoded = Bytes::from(encoded);
        let mut batch = self.db.batch();
        let hint_seq = self.add_hints(&mut batch, &skey, hints, ring_version);
        self.track_tombstones(&mut batch, &skey, was_tombstones, &state);
        batch.insert(&self.data, skey, &encoded[..]);
        if let Some(tag) = write {
            batch.insert(&self.writes, tag.id, encode_write_record(&dot, tag.expires_at));
        }
        batch.commit()?;
        self.retree(tenant, key, token, old_hash, Some(state.clock()));
        metrics::counter!("cohort_node_updates_total").increment(1);
        Ok(Staged { encoded, dot, siblings, replayed: false, hint_seq })
    }

    /// Merges `incoming` into the key's local state and appends the result if
    /// it changed, with a record of `write`'s id and dot when it has a tag.
    /// Not yet durable: call [`Store::durable`] before acknowledging.
    /// Returns whether the local state changed.
    ///
    /// A fenced `write` that the merge would drop, because this key has seen
    /// a higher token of its lock, is refused and nothing is staged: its
    /// coordinating replica must not count this replica as holding it.
    pub fn stage_merge(
        &self,
        tenant: &str,
        key: &[u8],
        incoming: &SiblingSet,
        write: Option<Replicated<'_>>,
        ring_version: u64,
    ) -> Result<bool, StoreError> {
        self.check_writable()?;
        let skey = storage_key(tenant, key);
        let token = skey_token(&skey);
        let _guard = self.stripe(&skey).lock().unwrap_or_else(|p| p.into_inner());
        self.check_ring(ring_version)?;
        let stored = self.data.get(&skey)?;
        let current = match &stored {
            Some(bytes) => SiblingSet::decode(bytes)?,
            None => SiblingSet::new(),
        };
        let merged = SiblingSet::merged(&current, incoming);
        if let Some(fence) = write
            .and_then(|w| incoming.siblings().iter().find(|s| s.dot == *w.dot))
            .and_then(|sibling| sibling.fence.as_ref())
            && let Some(fenced) = merged.fenced_by(fence)
        {
            metrics::counter!("cohort_node_writes_refused_total", "reason" => "fenced").increment(1);
            return Err(fenced.into());
        }
        let changed = merged != current;
        let mut batch = self.db.batch();
        if changed {
            self.track_tombstones(&mut batch, &skey, only_tombstones(&current), &merged);
            batch.insert(&self.data, skey, merged.encode());
        }
        if let Some(Replicated { dot, tag: Some(tag) }) = write {
            batch.insert(&self.writes, tag.id, encode_write_record(dot, tag.expires_at));
        }
        batch.commit()?;
        if changed {
            let old_hash = stored.map(|_| key_hash(tenant, key, current.clock()));
            self.retree(tenant, key, token, old_hash, Some(merged.clock()));
        }
        metrics::counter!("cohort_node_merges_total", "changed" => if changed { "true" } else { "false" }).increment(1);
        Ok(changed)
    }

    /// Runs one step of the Paxos acceptor of a linearizable key under the
    /// key's stripe lock: `step` changes the state and says whether it
    /// changed; a changed state is staged in the group commit. Not yet
    /// durable: call [`Store::durable`] before answering.
    pub fn acceptor_step<T>(
        &self,
        tenant: &str,
        key: &[u8],
        ring_version: u64,
        step: impl FnOnce(&mut AcceptorState) -> (T, bool),
    ) -> Result<T, StoreError> {
        self.check_writable()?;
        let skey = storage_key(tenant, key);
        let _guard = self.stripe(&skey).lock().unwrap_or_else(|p| p.into_inner());
        self.check_ring(ring_version)?;
        let mut state = match self.acceptors.get(&skey)? {
            Some(bytes) => AcceptorState::decode(&bytes)?,
            None => AcceptorState::default(),
        };
        let (answer, changed) = step(&mut state);
        if changed {
            self.acceptors.insert(skey, state.encode().to_vec())?;
        }
        Ok(answer)
    }

    /// Waits until every write staged before this call is durable (see
    /// [`crate::commit`]).
    pub async fn durable(&self) -> Result<(), StoreError> {
        self.commit.durable().await.map_err(StoreError::Engine)
    }

    /// Closes the store and releases the directory, so that it can be
    /// opened again (by a restarted node).
    pub async fn close(self) {
        drop(self);
    }

    /// Merges `incoming` (replicating `write` when given, see
    /// [`Store::stage_merge`]) and waits until the result is durable.
    pub async fn merge(
        &self,
        tenant: &str,
        key: &[u8],
        incoming: &SiblingSet,
        write: Option<Replicated<'_>>,
        ring_version: u64,
    ) -> Result<(), StoreError> {
        self.stage_merge(tenant, key, incoming, write, ring_version)?;
        self.durable().await
    }
}

/// The on-disk key of `(tenant, key)`: its ring token (8 bytes, big-endian,
/// so keys sort by token), then the length-prefixed tenant (tenant ids are
/// at most 63 bytes), then the key.
pub fn storage_key(tenant: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + tenant.len() + key.len());
    out.extend_from_slice(&token_for(tenant, key).to_be_bytes());
    out.push(tenant.len() as u8);
    out.extend_from_slice(tenant.as_bytes());
    out.extend_from_slice(key);
    out
}

/// Storage-key bounds of the token range `start..=end`, starting after
/// `after` when given.
fn token_bounds(start: Token, end: Token, after: Option<&[u8]>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let lower = match after {
        Some(after) => Bound::Excluded(after.to_vec()),
        None => Bound::Included(start.to_be_bytes().to_vec()),
    };
    let upper = match end.checked_add(1) {
        Some(next) => Bound::Excluded(next.to_be_bytes().to_vec()),
        None => Bound::Unbounded,
    };
    (lower, upper)
}

/// The storage key of the last entry of a scan page.
fn storage_key_of(page: &[(String, Vec<u8>, Bytes)]) -> Option<Vec<u8>> {
    page.last().map(|(tenant, key, _)| storage_key(tenant, key))
}

/// A hint record: a key some peers have not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    /// The key's tenant.
    pub tenant: String,
    /// The key.
    pub key: Vec<u8>,
    /// The record's sequence number.
    pub seq: u64,
    /// The peers (id, address) that have not acknowledged.
    pub peers: Vec<(String, String)>,
    /// The ring version the write was routed by (0: not recorded). A peer
    /// whose fence has passed it may no longer replicate the key, so the
    /// hint is not delivered to it but escalated to anti-entropy, which
    /// knows the current ring.
    pub ring_version: u64,
}

/// The ring token a storage key starts with.
fn skey_token(storage_key: &[u8]) -> Token {
    u64::from_be_bytes(storage_key[..8].try_into().expect("storage keys start with a token"))
}

/// Removes a record nothing could deliver, saying so.
fn drop_unreadable(keyspace: &Keyspace, key: &[u8], what: &str) -> Result<(), StoreError> {
    tracing::warn!("dropping an unreadable {what}");
    metrics::counter!("cohort_node_hints_dropped_total", "reason" => "unreadable").increment(1);
    keyspace.remove(key.to_vec())?;
    Ok(())
}

/// A state held for another replica (see [`Store::stage_handoff`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    /// The key's tenant.
    pub tenant: String,
    /// The key.
    pub key: Vec<u8>,
    /// The replica it is held for.
    pub owner: String,
    /// Where that replica listens.
    pub address: String,
    /// The ring version its writes were routed by.
    pub ring_version: u64,
    /// The encoded state.
    pub state: Bytes,
    /// The stored record, to settle it only if unchanged.
    record: Vec<u8>,
}

/// `len(owner) | owner | storage key`.
fn handoff_key(owner: &str, skey: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + owner.len() + skey.len());
    out.push(owner.len() as u8);
    out.extend_from_slice(owner.as_bytes());
    out.extend_from_slice(skey);
    out
}

/// `ring version (8 bytes BE) | len | address | encoded state`.
fn encode_handoff(ring_version: u64, address: &str, state: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + address.len() + state.len());
    out.extend_from_slice(&ring_version.to_be_bytes());
    out.push(address.len() as u8);
    out.extend_from_slice(address.as_bytes());
    out.extend_from_slice(state);
    out
}

/// A decoded handoff record.
struct HeldState {
    ring_version: u64,
    address: String,
    state: Vec<u8>,
}

fn decode_handoff(value: &[u8]) -> Option<HeldState> {
    let ring_version = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
    let (address, state) = split_tenant(&value[8..])?;
    Some(HeldState { ring_version, address: address.to_string(), state: state.to_vec() })
}

/// The escalation marker of `(tenant, key)`.
fn escalation_marker(tenant: &str, key: &[u8]) -> Vec<u8> {
    leaf_marker(tenant, merkle::leaf_of(token_for(tenant, key)))
}

/// The escalation marker of a tenant's tree leaf: `len(tenant) | tenant |
/// leaf (2 bytes BE)`.
fn leaf_marker(tenant: &str, leaf: usize) -> Vec<u8> {
    let mut marker = Vec::with_capacity(3 + tenant.len());
    marker.push(tenant.len() as u8);
    marker.extend_from_slice(tenant.as_bytes());
    marker.extend_from_slice(&(leaf as u16).to_be_bytes());
    marker
}

/// `seq (8 bytes BE) | count | (len | peer id | len | address)* | ring
/// version (8 bytes BE, when known)`.
fn encode_hint(seq: u64, peers: &[(&str, &str)], ring_version: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(17 + peers.iter().map(|(p, a)| 2 + p.len() + a.len()).sum::<usize>());
    out.extend_from_slice(&seq.to_be_bytes());
    out.push(peers.len() as u8);
    for (peer, address) in peers {
        out.push(peer.len() as u8);
        out.extend_from_slice(peer.as_bytes());
        out.push(address.len() as u8);
        out.extend_from_slice(address.as_bytes());
    }
    if ring_version > 0 {
        out.extend_from_slice(&ring_version.to_be_bytes());
    }
    out
}

/// Peers a hint names, `(id, address)`.
type Peers = Vec<(String, String)>;

/// `(sequence, peers, ring version)`; records written before the version
/// was kept read as version 0.
fn decode_hint(value: &[u8]) -> Option<(u64, Peers, u64)> {
    let seq = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
    let count = *value.get(8)?;
    let mut rest = &value[9..];
    let take = |rest: &mut &[u8]| -> Option<String> {
        let (&len, tail) = rest.split_first()?;
        let text = std::str::from_utf8(tail.get(..usize::from(len))?).ok()?.to_string();
        *rest = &tail[usize::from(len)..];
        Some(text)
    };
    let mut peers = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let peer = take(&mut rest)?;
        let address = take(&mut rest)?;
        peers.push((peer, address));
    }
    let ring_version = match rest.len() {
        0 => 0,
        8 => u64::from_be_bytes(rest.try_into().ok()?),
        _ => return None,
    };
    Some((seq, peers, ring_version))
}

/// The token, tenant and key of a storage key.
fn parse_storage_key(skey: &[u8]) -> Option<(Token, &str, &[u8])> {
    let token = u64::from_be_bytes(skey.get(..8)?.try_into().ok()?);
    let (tenant, key) = split_tenant(skey.get(8..)?)?;
    Some((token, tenant, key))
}

/// `len(tenant) | tenant | key` split in two.
fn split_tenant(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let (&len, rest) = bytes.split_first()?;
    let tenant = std::str::from_utf8(rest.get(..usize::from(len))?).ok()?;
    Some((tenant, &rest[usize::from(len)..]))
}

/// Builds every tenant's anti-entropy tree from the data (see `trees.rs`),
/// and records the keys that hold only tombstones but have no tombstone
/// record (written by a release that kept none) as of now.
fn rebuild_trees(data: &Keyspace, tombstones: &Keyspace, dir: &Path) -> Result<RepairTrees, StoreError> {
    let started = std::time::Instant::now();
    let trees = RepairTrees::default();
    let mut keys = 0u64;
    for item in data.iter() {
        let (skey, value) = item.into_inner()?;
        let (token, tenant, key) =
            parse_storage_key(&skey).ok_or_else(|| StoreError::Engine("a storage key is malformed".into()))?;
        match SiblingSet::decode(&value) {
            Ok(state) => {
                trees.toggle(tenant, token, key_hash(tenant, key, state.clock()));
                if only_tombstones(&state) && !tombstones.contains_key(&skey)? {
                    tombstones.insert(skey.to_vec(), now_secs().to_be_bytes())?;
                }
            }
            // Left out: the key then differs from every healthy replica,
            // and the exchange's merge reports the unreadable state.
            Err(error) => tracing::warn!(%error, "a stored state is unreadable; left out of its hash tree"),
        }
        keys += 1;
    }
    metrics::counter!("cohort_node_repair_tree_rebuilds_total").increment(1);
    tracing::info!(keys, took_ms = started.elapsed().as_millis() as u64, dir = %dir.display(), "built the anti-entropy trees");
    Ok(trees)
}

/// Copies every sibling set of the first layout into the token-ordered
/// keyspace and syncs; returns how many. Idempotent: a conversion cut short
/// by a crash runs again whole at the next open, before the old keyspace is
/// deleted.
fn convert_legacy_layout(db: &Database, legacy: &Keyspace, data: &Keyspace) -> Result<usize, StoreError> {
    let mut batch = db.batch();
    let mut converted = 0;
    for item in legacy.iter() {
        let (old, value) = item.into_inner()?;
        let (tenant, key) = split_tenant(&old)
            .ok_or_else(|| StoreError::Engine("a storage key of the first layout is malformed".into()))?;
        batch.insert(data, storage_key(tenant, key), value);
        converted += 1;
        if batch.len() >= CONVERT_BATCH {
            std::mem::replace(&mut batch, db.batch()).commit()?;
        }
    }
    batch.commit()?;
    db.persist(PersistMode::SyncAll)?;
    Ok(converted)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const NO_LIMITS: WriteLimits = WriteLimits { max_siblings: 0, max_state_bytes: 0 };

    fn put(store: &Store, key: &[u8], context: &CausalContext, value: &'static [u8]) -> Result<Staged, StoreError> {
        store.stage_update("t", key, context, Some(Bytes::from_static(value)), NO_LIMITS, None, 0)
    }

    fn fenced_put(store: &Store, key: &[u8], value: &'static [u8], token: u64) -> Result<Staged, StoreError> {
        let fence = Some(Fence { lock: "l".into(), token });
        let value = Some(Bytes::from_static(value));
        store.stage_update_hinted("t", key, &CausalContext::new(), value, fence, NO_LIMITS, None, 0, &[])
    }

    /// A fenced write below the key's token for its lock is refused and
    /// leaves the state as it was; the same token, or a higher one, writes.
    #[tokio::test]
    async fn a_write_under_a_lower_token_is_refused_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n1", Durability::Fsync).unwrap();
        fenced_put(&store, b"k", b"two", 2).unwrap();
        fenced_put(&store, b"k", b"two again", 2).unwrap();
        let before = store.read("t", b"k").unwrap();
        let refused = fenced_put(&store, b"k", b"one", 1).unwrap_err();
        assert!(matches!(&refused, StoreError::Fenced(f) if f.token == 1 && f.highest == 2), "{refused:?}");
        assert!(refused.to_string().starts_with("fenced: token 1 < 2"), "{refused}");
        assert_eq!(store.read("t", b"k").unwrap(), before, "a refused write changes nothing");
        // A higher token supersedes the siblings written under lower ones.
        fenced_put(&store, b"k", b"three", 3).unwrap();
        let after = store.read("t", b"k").unwrap();
        assert_eq!(after.values().collect::<Vec<_>>(), [&Bytes::from_static(b"three")]);
        // Unfenced writes are not affected by the key's fences.
        put(&store, b"k", &CausalContext::new(), b"free").unwrap();
        assert_eq!(store.read("t", b"k").unwrap().values().count(), 2);
    }

    /// A retry (same write id) of a fenced write, once the key has seen a
    /// higher token, is refused too, rather than replayed as a success.
    #[tokio::test]
    async fn a_retried_fenced_write_the_key_has_outgrown_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n1", Durability::Fsync).unwrap();
        let tag = || Some(WriteTag { id: b"retry-me", expires_at: u64::MAX });
        let write = |token| {
            let fence = Some(Fence { lock: "l".into(), token });
            let value = Some(Bytes::from_static(b"v"));
            store.stage_update_hinted("t", b"k", &CausalContext::new(), value, fence, NO_LIMITS, tag(), 0, &[])
        };
        write(3).unwrap();
        fenced_put(&store, b"k", b"newer", 4).unwrap();
        let retried = write(3).unwrap_err();
        assert!(matches!(&retried, StoreError::Fenced(f) if f.highest == 4), "{retried:?}");
    }

    /// A key that has seen fenced writes is never listed for purging, even
    /// once it holds only tombstones: its tokens must outlive any pause.
    #[tokio::test]
    async fn a_fenced_key_holding_only_tombstones_is_never_purged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n1", Durability::Fsync).unwrap();
        let written = fenced_put(&store, b"k", b"v", 2).unwrap();
        let context = SiblingSet::decode(&written.encoded).unwrap().clock().clone();
        let fence = Some(Fence { lock: "l".into(), token: 2 });
        store.stage_update_hinted("t", b"k", &context, None, fence, NO_LIMITS, None, 0, &[]).unwrap();
        store.durable().await.unwrap();
        assert!(!store.read("t", b"k").unwrap().has_values());
        assert!(store.tombstones("t", EVERYTHING, 0, 10).unwrap().is_empty(), "its tokens are kept");
    }

    /// A replica that has seen a higher token refuses a replicated fenced
    /// write, storing nothing, so its coordinating replica cannot count it;
    /// a repair that carries the same state merges with the stale sibling
    /// dropped.
    #[tokio::test]
    async fn a_replicated_write_under_a_lower_token_is_refused_and_a_repair_drops_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n1", Durability::Fsync).unwrap();
        fenced_put(&store, b"k", b"new holder", 5).unwrap();
        store.durable().await.unwrap();
        let before = store.read("t", b"k").unwrap();
        let mut stale = SiblingSet::new();
        let dot = stale
            .update_above(
                &CausalContext::new(),
                &Actor::new("n2.1.00"),
                Some(Bytes::from_static(b"old holder")),
                0,
                Some(Fence { lock: "l".into(), token: 4 }),
            )
            .unwrap();
        let replicated = Replicated { dot: &dot, tag: None };
        let refused = store.merge("t", b"k", &stale, Some(replicated), 0).await.unwrap_err();
        assert!(matches!(&refused, StoreError::Fenced(f) if f.token == 4 && f.highest == 5), "{refused:?}");
        assert_eq!(store.read("t", b"k").unwrap(), before, "a refused merge changes nothing");
        store.merge("t", b"k", &stale, None, 0).await.unwrap();
        let repaired = store.read("t", b"k").unwrap();
        assert_eq!(repaired.values().collect::<Vec<_>>(), [&Bytes::from_static(b"new holder")]);
        assert!(repaired.clock().covers(&dot), "the dropped write counts as seen");
    }

    #[tokio::test]
    async fn update_merge_read_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), "n1", Durability::Fsync).unwrap();
            assert!(store.actor().0.starts_with("n1.1."), "{}", store.actor());
            let staged = put(&store, b"k", &CausalContext::new(), b"v1").unwrap();
            store.durable().await.unwrap();
            assert_eq!(store.read("t", b"k").unwrap(), SiblingSet::decode(&staged.encoded).unwrap());
            assert_eq!(staged.dot, Dot { actor: store.actor().clone(), counter: 1 });
            let mut other = SiblingSet::new();
            other.update(&CausalContext::new(), &Actor::new("n2.1.00"), Some(Bytes::from_static(b"v2"))).unwrap();
            store.merge("t", b"k", &other, None, 0).await.unwrap();
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
        forged.update(&CausalContext::new(), store.actor(), None).unwrap();
        let err = put(&store, b"k", forged.clock(), b"v").unwrap_err();
        assert!(matches!(err, StoreError::ForgedContext { claimed: 1, issued: 0, .. }), "{err}");
        assert!(store.read("t", b"k").unwrap().is_empty(), "nothing stored");
        store.close().await;
    }

    /// F2: a wiped data directory, or one restored from a copy taken
    /// earlier, must never issue a dot it issued before.
    #[tokio::test]
    async fn a_wiped_or_restored_directory_issues_dots_as_a_new_actor() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("node");
        let snapshot = dir.path().join("snapshot");
        let store = Store::open(&data, "n1", Durability::Flush).unwrap();
        let first = store.actor().clone();
        store.close().await;
        copy_dir(&data, &snapshot);
        let store = Store::open(&data, "n1", Durability::Flush).unwrap();
        let second = store.actor().clone();
        store.close().await;
        std::fs::remove_dir_all(&data).unwrap();
        copy_dir(&snapshot, &data);
        let restored = Store::open(&data, "n1", Durability::Flush).unwrap();
        let third = restored.actor().clone();
        restored.close().await;
        std::fs::remove_dir_all(&data).unwrap();
        let wiped = Store::open(&data, "n1", Durability::Flush).unwrap();
        assert_eq!(wiped.incarnation(), 1, "a wiped directory starts over");
        let actors = [first, second, third, wiped.actor().clone()];
        for (i, a) in actors.iter().enumerate() {
            for b in &actors[i + 1..] {
                assert_ne!(a, b, "an actor was issued twice");
            }
        }
        wiped.close().await;
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    /// F13: node-2's directory started as node-1 would issue node-1's dots.
    #[tokio::test]
    async fn a_directory_refuses_to_open_as_another_node() {
        let dir = tempfile::tempdir().unwrap();
        Store::open(dir.path(), "node-2", Durability::Flush).unwrap().close().await;
        let err = Store::open(dir.path(), "node-1", Durability::Flush).err().expect("must be refused");
        assert!(matches!(&err, StoreError::WrongNode { stored, given, .. } if stored == "node-2" && given == "node-1"));
        assert!(err.to_string().contains("--id node-2"), "{err}");
        Store::open(dir.path(), "node-2", Durability::Flush).unwrap().close().await;
    }

    /// F6: past the cap a write that adds a sibling is refused and stores
    /// nothing, and one write with the read context still resolves the key.
    #[tokio::test]
    async fn the_sibling_cap_refuses_a_new_sibling_and_accepts_the_resolving_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n1", Durability::Flush).unwrap();
        let limits = WriteLimits { max_siblings: 3, max_state_bytes: 0 };
        for _ in 0..3 {
            store
                .stage_update("t", b"k", &CausalContext::new(), Some(Bytes::from_static(b"v")), limits, None, 0)
                .unwrap();
        }
        let before = store.read("t", b"k").unwrap();
        let refused =
            store.stage_update("t", b"k", &CausalContext::new(), Some(Bytes::from_static(b"x")), limits, None, 0);
        assert!(matches!(refused, Err(StoreError::TooManySiblings { count: 4, max: 3 })), "{refused:?}");
        assert_eq!(store.read("t", b"k").unwrap(), before, "nothing stored");
        let resolved = store
            .stage_update("t", b"k", before.clock(), Some(Bytes::from_static(b"one")), limits, None, 0)
            .expect("a resolving write is accepted");
        assert_eq!(resolved.siblings, 1);
        store.close().await;
    }

    #[tokio::test]
    async fn the_state_size_cap_refuses_growth_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n1", Durability::Flush).unwrap();
        let limits = WriteLimits { max_siblings: 0, max_state_bytes: 100 };
        let big = Bytes::from(vec![7u8; 60]);
        store.stage_update("t", b"k", &CausalContext::new(), Some(big.clone()), limits, None, 0).unwrap();
        let refused = store.stage_update("t", b"k", &CausalContext::new(), Some(big.clone()), limits, None, 0);
        assert!(matches!(refused, Err(StoreError::StateTooLarge { max: 100, .. })), "{refused:?}");
        let context = store.read("t", b"k").unwrap().clock().clone();
        store.stage_update("t", b"k", &context, Some(big), limits, None, 0).expect("a replacing write is accepted");
        store.close().await;
    }

    /// F3: a retried idempotent write replicates the dot its first attempt
    /// issued instead of issuing another.
    #[tokio::test]
    async fn a_recorded_write_id_replays_the_first_dot() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n1", Durability::Flush).unwrap();
        let tag = WriteTag { id: b"write-1", expires_at: now_secs() + 60 };
        let value = || Some(Bytes::from_static(b"v"));
        let first = store.stage_update("t", b"k", &CausalContext::new(), value(), NO_LIMITS, Some(tag), 0).unwrap();
        let retry = store.stage_update("t", b"k", &CausalContext::new(), value(), NO_LIMITS, Some(tag), 0).unwrap();
        assert!(retry.replayed && !first.replayed);
        assert_eq!(retry.dot, first.dot);
        assert_eq!(store.read("t", b"k").unwrap().siblings().len(), 1, "applied once");
        assert_eq!(store.write_record(b"write-1").unwrap(), Some(first.dot.clone()));

        // A replica that merges the version records the write too.
        let mut peer_state = SiblingSet::new();
        peer_state.update(&CausalContext::new(), &Actor::new("n2.1.00"), value()).unwrap();
        let peer_dot = Dot { actor: Actor::new("n2.1.00"), counter: 1 };
        let peer_tag = WriteTag { id: b"write-2", expires_at: now_secs() + 60 };
        store
            .merge("t", b"k2", &peer_state, Some(Replicated { dot: &peer_dot, tag: Some(peer_tag) }), 0)
            .await
            .unwrap();
        assert_eq!(store.write_record(b"write-2").unwrap(), Some(peer_dot));

        let expired = WriteTag { id: b"write-3", expires_at: now_secs().saturating_sub(1) };
        store.stage_update("t", b"k3", &CausalContext::new(), value(), NO_LIMITS, Some(expired), 0).unwrap();
        assert_eq!(store.write_record(b"write-3").unwrap(), None, "an expired record is not used");
        assert_eq!(store.purge_write_records().unwrap(), 1);
        assert!(store.write_record(b"write-1").unwrap().is_some(), "live records stay");
        store.close().await;
    }

    /// F11: after a failed sync the node refuses writes and reads alike; what
    /// it holds in memory includes the write whose sync failed.
    #[tokio::test]
    async fn a_failed_sync_is_never_acknowledged_and_poisons_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n1", Durability::Flush).unwrap();
        store.inject_disk_failure();
        put(&store, b"k", &CausalContext::new(), b"v").unwrap();
        assert!(store.durable().await.is_err(), "the write is not acknowledged");
        assert!(store.is_poisoned());
        let refused = store.stage_update("t", b"k2", &CausalContext::new(), None, NO_LIMITS, None, 0);
        assert!(matches!(refused, Err(StoreError::Poisoned)), "later writes are refused");
        assert!(matches!(store.read("t", b"k"), Err(StoreError::Poisoned)), "reads are refused");
        store.close().await;
    }

    #[test]
    fn storage_keys_are_unambiguous_and_parse_back() {
        assert_ne!(storage_key("ab", b"c"), storage_key("a", b"bc"));
        let skey = storage_key("tenant", b"key");
        assert_eq!(parse_storage_key(&skey), Some((token_for("tenant", b"key"), "tenant", &b"key"[..])));
    }

    /// Keys sort by token, so a token range is one scan, read in pages.
    #[tokio::test]
    async fn keys_are_stored_in_token_order_and_scanned_by_range() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n1", Durability::Flush).unwrap();
        let keys: Vec<Vec<u8>> = (0..50).map(|i| format!("k{i}").into_bytes()).collect();
        for key in &keys {
            store.stage_update("t", key, &CausalContext::new(), None, NO_LIMITS, None, 0).unwrap();
        }
        let scan_all = |start, end| {
            let (mut out, mut after) = (Vec::new(), None::<Vec<u8>>);
            loop {
                let (page, next) = store.scan(start, end, after.as_deref(), 7).unwrap();
                assert!(page.len() <= 7);
                out.extend(page);
                match next {
                    Some(next) => after = Some(next),
                    None => return out,
                }
            }
        };
        let all = scan_all(0, u64::MAX);
        assert_eq!(all.len(), 50, "the last token is included");
        let tokens: Vec<Token> = all.iter().map(|(t, k, _)| token_for(t, k)).collect();
        assert!(tokens.windows(2).all(|w| w[0] <= w[1]), "ordered by token");
        assert_eq!(store.count(0, u64::MAX).unwrap().0, 50);
        let half = u64::MAX / 2;
        let low = scan_all(0, half);
        let expected = keys.iter().filter(|k| token_for("t", k) <= half).count();
        assert_eq!(low.len(), expected);
        assert!(low.iter().all(|(tenant, key, _)| tenant == "t" && token_for("t", key) <= half));
        assert_eq!(scan_all(half + 1, u64::MAX).len(), 50 - expected, "the two halves split the keys");
        store.close().await;
    }

    /// A dropped range loses the named tenants' keys and keeps the others'.
    #[tokio::test]
    async fn dropping_a_range_deletes_only_the_named_tenants() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n1", Durability::Flush).unwrap();
        for tenant in ["a", "b"] {
            for i in 0..20 {
                let key = format!("k{i}");
                store.stage_update(tenant, key.as_bytes(), &CausalContext::new(), None, NO_LIMITS, None, 0).unwrap();
            }
        }
        assert_eq!(store.drop_range(0, u64::MAX, &["a".to_string()]).await.unwrap(), 20);
        let (left, _) = store.scan(0, u64::MAX, None, 100).unwrap();
        assert!(left.len() == 20 && left.iter().all(|(tenant, _, _)| tenant == "b"));
        store.close().await;
    }

    /// A hint record is settled only by the write that staged it: removed
    /// when every peer acknowledged, narrowed to the peers that failed; it
    /// survives a restart, and its sequence numbers keep growing.
    #[tokio::test]
    async fn a_hint_record_is_settled_only_by_its_own_write() {
        let dir = tempfile::tempdir().unwrap();
        let peers = [("n2", "127.0.0.1:2"), ("n3", "127.0.0.1:3")];
        {
            let store = Store::open(dir.path(), "n1", Durability::Fsync).unwrap();
            let older = store.stage_hints("t", b"k", &peers).unwrap();
            let newer = store.stage_hints("t", b"k", &peers).unwrap();
            assert!(newer > older);
            store.settle_hints("t", b"k", older, &[]).unwrap();
            assert_eq!(
                store.pending_hints(10, Duration::ZERO).unwrap().len(),
                1,
                "the older write leaves the newer record"
            );
            store.settle_hints("t", b"k", newer, &peers[1..]).unwrap();
            let other = store.stage_hints("t", b"gone", &peers).unwrap();
            store.settle_hints("t", b"gone", other, &[]).unwrap();
            store.durable().await.unwrap();
            store.close().await;
        }
        let store = Store::open(dir.path(), "n1", Durability::Fsync).unwrap();
        let pending = store.pending_hints(10, Duration::ZERO).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!((pending[0].tenant.as_str(), pending[0].key.as_slice()), ("t", &b"k"[..]));
        assert_eq!(pending[0].peers, [("n3".to_string(), "127.0.0.1:3".to_string())], "narrowed to the failed peer");
        let later = store.stage_hints("t", b"k", &peers).unwrap();
        assert!(later > pending[0].seq, "sequence numbers grow across restarts");
        store.close().await;
    }

    /// Sweeps find hint records through an in-memory index: a record
    /// younger than the sweep's minimum age is left to its own write, a
    /// settled one is gone from the index, and the index is rebuilt from
    /// the records at open.
    #[tokio::test]
    async fn hint_sweeps_skip_young_and_settled_records_and_the_index_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let peers = [("n2", "127.0.0.1:2")];
        {
            let store = Store::open(dir.path(), "n1", Durability::Fsync).unwrap();
            for i in 0..100 {
                let seq = store.stage_hints("t", format!("settled{i}").as_bytes(), &peers).unwrap();
                store.settle_hints("t", format!("settled{i}").as_bytes(), seq, &[]).unwrap();
            }
            store.stage_hints("t", b"kept", &peers).unwrap();
            assert_eq!(store.hints_pending().unwrap(), 1);
            assert!(store.pending_hints(10, Duration::from_secs(3600)).unwrap().is_empty(), "too young to sweep");
            let swept = store.pending_hints(10, Duration::ZERO).unwrap();
            assert_eq!(swept.iter().map(|h| h.key.as_slice()).collect::<Vec<_>>(), [&b"kept"[..]]);
            store.durable().await.unwrap();
            store.close().await;
        }
        let store = Store::open(dir.path(), "n1", Durability::Fsync).unwrap();
        assert_eq!(store.hints_pending().unwrap(), 1, "rebuilt from the records");
        let hint = store.pending_hints(10, Duration::ZERO).unwrap().remove(0);
        store.settle_hints("t", b"kept", hint.seq, &[]).unwrap();
        assert_eq!(store.hints_pending().unwrap(), 0);
        assert!(store.pending_hints(10, Duration::ZERO).unwrap().is_empty());
        store.close().await;
    }

    /// The whole token space, for digests.
    const EVERYTHING: TokenRange = TokenRange { start: 0, end: Token::MAX };

    /// A digest hashed from the keys themselves, segment by segment.
    fn digest_from_keys(store: &Store, tenant: &str) -> Vec<u64> {
        merkle::segments(EVERYTHING).into_iter().map(|segment| store.hash_keys(tenant, segment).unwrap()).collect()
    }

    /// The trees kept in step with updates, merges, removals and dropped
    /// ranges equal trees hashed from the data, per tenant, and a reopened
    /// store rebuilds the same ones.
    #[tokio::test]
    async fn hash_trees_follow_every_change_and_are_rebuilt_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n1", Durability::Flush).unwrap();
        let empty = store.digest("t", EVERYTHING).unwrap();
        assert!(empty.iter().all(|&h| h == 0), "no keys, nothing hashed");
        let mut contexts = Vec::new();
        for i in 0..200u32 {
            let key = format!("k{i}");
            let staged = store
                .stage_update("t", key.as_bytes(), &CausalContext::new(), Some(Bytes::from("v")), NO_LIMITS, None, 0)
                .unwrap();
            contexts.push((key, SiblingSet::decode(&staged.encoded).unwrap()));
            store
                .stage_update("u", b"other", &CausalContext::new(), Some(Bytes::from("x")), NO_LIMITS, None, 0)
                .unwrap();
        }
        // Replace some, delete some, merge foreign states into some.
        for (key, state) in contexts.iter().take(50) {
            store.stage_update("t", key.as_bytes(), state.clock(), None, NO_LIMITS, None, 0).unwrap();
        }
        let mut foreign = SiblingSet::new();
        foreign.update(&CausalContext::new(), &Actor::new("n2.1.0"), Some(Bytes::from("f"))).unwrap();
        for (key, _) in contexts.iter().skip(50).take(50) {
            store.stage_merge("t", key.as_bytes(), &foreign, None, 0).unwrap();
        }
        assert!(store.remove_key("t", b"k199").await.unwrap());
        assert!(!store.remove_key("t", b"k199").await.unwrap(), "already gone");
        let half = Token::MAX / 2;
        store.drop_range(0, half, &["t".to_string()]).await.unwrap();
        let kept = store.digest("t", EVERYTHING).unwrap();
        assert_eq!(kept, digest_from_keys(&store, "t"));
        assert!(kept.iter().any(|&h| h != 0));
        assert_eq!(store.digest("u", EVERYTHING).unwrap(), digest_from_keys(&store, "u"));
        // A range cut anywhere: whole leaves from the tree, the rest hashed.
        let part = TokenRange { start: half + 12_345, end: Token::MAX - 999 };
        let from_tree = store.digest("t", part).unwrap();
        let hashed: Vec<u64> =
            merkle::segments(part).into_iter().map(|segment| store.hash_keys("t", segment).unwrap()).collect();
        assert_eq!(from_tree, hashed);
        store.durable().await.unwrap();
        store.close().await;
        let store = Store::open(dir.path(), "n1", Durability::Flush).unwrap();
        assert_eq!(store.digest("t", EVERYTHING).unwrap(), kept, "rebuilt from the data");
        store.close().await;
    }

    /// Merges racing a range drop leave the tree describing exactly the
    /// data that remains.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_tree_matches_the_data_after_merges_race_a_range_drop() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), "n1", Durability::Flush).unwrap());
        let mut incoming = SiblingSet::new();
        incoming.update(&CausalContext::new(), &Actor::new("n2.1.0"), Some(Bytes::from("x"))).unwrap();
        for round in 0..5u32 {
            for i in 0..300u32 {
                store.stage_merge("t", format!("k{i}").as_bytes(), &incoming, None, 0).unwrap();
            }
            let merging = {
                let (store, incoming) = (store.clone(), incoming.clone());
                tokio::task::spawn_blocking(move || {
                    for i in 0..300u32 {
                        let mut state = incoming.clone();
                        let actor = Actor::new(format!("n3.{round}.{i}"));
                        state.update(&CausalContext::new(), &actor, Some(Bytes::from("y"))).unwrap();
                        store.stage_merge("t", format!("k{i}").as_bytes(), &state, None, 0).unwrap();
                    }
                })
            };
            store.drop_range(0, Token::MAX, &["t".to_string()]).await.unwrap();
            merging.await.unwrap();
            let (tree, data) = (store.digest("t", EVERYTHING).unwrap(), digest_from_keys(&store, "t"));
            let differing = tree.iter().zip(&data).filter(|(a, b)| a != b).count();
            assert_eq!(differing, 0, "round {round}: the tree differs from the data in {differing} segments");
        }
    }

    /// Replicas with the same keys and clocks have equal digests whatever
    /// order the writes reached them in.
    #[tokio::test]
    async fn replicas_that_saw_the_same_writes_have_equal_digests() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (one, two) = (
            Store::open(a.path(), "n1", Durability::Flush).unwrap(),
            Store::open(b.path(), "n2", Durability::Flush).unwrap(),
        );
        let mut states = Vec::new();
        for i in 0..50u32 {
            let key = format!("k{i}");
            let staged = one
                .stage_update("t", key.as_bytes(), &CausalContext::new(), Some(Bytes::from("v")), NO_LIMITS, None, 0)
                .unwrap();
            states.push((key, SiblingSet::decode(&staged.encoded).unwrap()));
        }
        for (key, state) in states.iter().rev() {
            two.stage_merge("t", key.as_bytes(), state, None, 0).unwrap();
        }
        assert_eq!(one.digest("t", EVERYTHING).unwrap(), two.digest("t", EVERYTHING).unwrap());
        two.remove_key("t", b"k7").await.unwrap();
        let (x, y) = (one.digest("t", EVERYTHING).unwrap(), two.digest("t", EVERYTHING).unwrap());
        assert_eq!(x.iter().zip(&y).filter(|(p, q)| p != q).count(), 1, "one key missing: one segment differs");
        one.close().await;
        two.close().await;
    }

    /// A key that holds only tombstones is listed once its grace has passed,
    /// is purged only while its state is exactly the one listed and no hint
    /// for it is pending, and a later write is issued a dot above every
    /// counter the purged state had seen.
    #[tokio::test]
    async fn a_purge_takes_only_the_listed_tombstones_and_later_dots_skip_past_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n1", Durability::Flush).unwrap();
        let written = put(&store, b"k", &CausalContext::new(), b"v").unwrap();
        let written = SiblingSet::decode(&written.encoded).unwrap();
        assert!(store.tombstones("t", EVERYTHING, 0, 10).unwrap().is_empty(), "a value is no tombstone");
        let deleted = store.stage_update("t", b"k", written.clock(), None, NO_LIMITS, None, 0).unwrap();
        let deleted_state = SiblingSet::decode(&deleted.encoded).unwrap();
        assert!(store.tombstones("t", EVERYTHING, 3600, 10).unwrap().is_empty(), "within its grace");
        let listed = store.tombstones("t", EVERYTHING, 0, 10).unwrap();
        assert_eq!(listed, vec![(b"k".to_vec(), deleted.encoded.clone())]);
        assert!(store.tombstones("other", EVERYTHING, 0, 10).unwrap().is_empty(), "only the tenant's keys");

        // Not the state listed: kept.
        assert!(!store.purge("t", b"k", &written, 0).await.unwrap());
        // A pending hint: kept.
        let seq = store.stage_hints("t", b"k", &[("n2", "127.0.0.1:2")]).unwrap();
        assert!(!store.purge("t", b"k", &deleted_state, 0).await.unwrap());
        store.settle_hints("t", b"k", seq, &[]).unwrap();
        assert!(store.purge("t", b"k", &deleted_state, 0).await.unwrap());
        assert!(store.read("t", b"k").unwrap().is_empty());
        assert!(store.tombstones("t", EVERYTHING, 0, 10).unwrap().is_empty());
        assert!(store.digest("t", EVERYTHING).unwrap().iter().all(|&h| h == 0), "gone from the tree too");

        // A blind write after the purge must not reuse the deleted value's
        // dot, which a replica that still holds the tombstone has seen.
        let again = put(&store, b"k", &CausalContext::new(), b"new").unwrap();
        assert!(again.dot.counter > deleted_state.clock().max_counter(store.actor()), "{:?}", again.dot);
        assert!(!deleted_state.clock().covers(&again.dot));
        // A context read before the purge is still accepted.
        put(&store, b"k", deleted_state.clock(), b"newer").unwrap();
        store.close().await;
    }

    /// An escalated hint leaves a marker of its key's leaf that is reported
    /// until the leader says the range was synced.
    #[tokio::test]
    async fn escalation_markers_stay_until_synced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n1", Durability::Flush).unwrap();
        store.stage_hints("t", b"k", &[("n2", "127.0.0.1:2")]).unwrap();
        let hint = store.pending_hints(10, Duration::ZERO).unwrap().remove(0);
        assert!(store.escalate_hint(&hint).unwrap());
        assert!(store.pending_hints(10, Duration::ZERO).unwrap().is_empty(), "the hint became a marker");
        let leaf = merkle::leaf_range(merkle::leaf_of(token_for("t", b"k")));
        let expected = vec![("t".to_string(), leaf)];
        assert_eq!(store.escalations(10).unwrap(), expected);
        assert_eq!(store.escalations(10).unwrap(), expected, "reported again until synced");
        store.clear_escalations(&[("u".to_string(), leaf)]).unwrap();
        assert_eq!(store.escalations(10).unwrap(), expected, "another tenant's range clears nothing");
        store.clear_escalations(&expected).unwrap();
        assert!(store.escalations(10).unwrap().is_empty());
        store.close().await;
    }

    /// The count of pending hints is exact: settled records (removals the
    /// engine still counts in its estimate) are not counted.
    #[tokio::test]
    async fn pending_hints_are_counted_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n1", Durability::Flush).unwrap();
        for i in 0..100u32 {
            let key = format!("k{i}");
            let seq = store.stage_hints("t", key.as_bytes(), &[("n2", "127.0.0.1:2")]).unwrap();
            if i >= 10 {
                store.settle_hints("t", key.as_bytes(), seq, &[]).unwrap();
            }
        }
        assert_eq!(store.hints_pending().unwrap(), 10);
        store.close().await;
    }

    /// Tombstones written by a release that kept no tombstone records are
    /// recorded when the store opens, so they can be reaped too.
    #[tokio::test]
    async fn tombstones_without_a_record_are_recorded_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), "n1", Durability::Flush).unwrap();
            let written = SiblingSet::decode(&put(&store, b"k", &CausalContext::new(), b"v").unwrap().encoded).unwrap();
            store.stage_update("t", b"k", written.clock(), None, NO_LIMITS, None, 0).unwrap();
            store.tombstones.remove(storage_key("t", b"k")).unwrap();
            assert!(store.tombstones("t", EVERYTHING, 0, 10).unwrap().is_empty());
            store.durable().await.unwrap();
            store.close().await;
        }
        let store = Store::open(dir.path(), "n1", Durability::Flush).unwrap();
        assert_eq!(store.tombstones("t", EVERYTHING, 0, 10).unwrap().len(), 1);
        store.close().await;
    }

    /// A fallback's copies for another replica merge into one record kept
    /// apart from the node's own data and reported by range; a record that
    /// changed since it was read is not settled.
    #[tokio::test]
    async fn handoffs_merge_apart_from_own_data_and_settle_only_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n4", Durability::Flush).unwrap();
        let mut first = SiblingSet::new();
        first.update(&CausalContext::new(), &Actor::new("n1.1.0"), Some(Bytes::from("a"))).unwrap();
        let mut second = SiblingSet::new();
        second.update(&CausalContext::new(), &Actor::new("n2.1.0"), Some(Bytes::from("b"))).unwrap();
        let owner = ("n3", "127.0.0.1:3");
        store.stage_handoff("t", b"k", owner, 2, &first).unwrap();
        assert!(store.read("t", b"k").unwrap().is_empty(), "apart from the node's own data");
        assert!(store.digest("t", EVERYTHING).unwrap().iter().all(|&h| h == 0), "and from its trees");
        let leaf = merkle::leaf_range(merkle::leaf_of(token_for("t", b"k")));
        assert_eq!(store.handoff_leaves().unwrap(), vec![("t".to_string(), leaf)]);
        let read = store.pending_handoffs(10).unwrap();
        store.stage_handoff("t", b"k", owner, 1, &second).unwrap();
        assert!(!store.settle_handoff(&read[0]).unwrap(), "a write reached it since: kept");
        let held = store.pending_handoffs(10).unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!((held[0].owner.as_str(), held[0].address.as_str(), held[0].ring_version), ("n3", "127.0.0.1:3", 1));
        let state = SiblingSet::decode(&held[0].state).unwrap();
        assert_eq!(state, SiblingSet::merged(&first, &second), "merged");
        assert!(store.settle_handoff(&held[0]).unwrap());
        assert!(store.pending_handoffs(10).unwrap().is_empty());
        assert!(store.handoff_leaves().unwrap().is_empty());
        // Held for a node that then left the ring for good: dropped with its
        // hints at the end of that migration.
        store.stage_handoff("t", b"k", owner, 1, &first).unwrap();
        assert_eq!(store.forget_hints_for(&["n3".to_string()]).unwrap(), 1);
        assert!(store.pending_handoffs(10).unwrap().is_empty());
        store.close().await;
    }

    /// The ring fence refuses writes and merges routed by an older ring,
    /// never moves back, and survives a restart.
    #[tokio::test]
    async fn the_ring_fence_refuses_older_rings_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), "n1", Durability::Fsync).unwrap();
            assert_eq!(store.fence(), 0);
            store.stage_update("t", b"k", &CausalContext::new(), None, NO_LIMITS, None, 0).unwrap();
            assert_eq!(store.raise_fence(5).await.unwrap(), 5);
            assert_eq!(store.raise_fence(3).await.unwrap(), 5, "a fence never moves back");
            let stale = store.stage_update("t", b"k", &CausalContext::new(), None, NO_LIMITS, None, 4);
            assert!(matches!(stale, Err(StoreError::StaleRing { routed: 4, fence: 5 })), "{stale:?}");
            let merged = store.merge("t", b"k", &SiblingSet::new(), None, 0).await;
            assert!(matches!(merged, Err(StoreError::StaleRing { routed: 0, fence: 5 })), "{merged:?}");
            assert!(store.check_ring(4).is_err());
            store.stage_update("t", b"k", &CausalContext::new(), None, NO_LIMITS, None, 5).unwrap();
            store.stage_update("t", b"k", &CausalContext::new(), None, NO_LIMITS, None, 6).unwrap();
            store.close().await;
        }
        let store = Store::open(dir.path(), "n1", Durability::Fsync).unwrap();
        assert_eq!(store.fence(), 5);
        assert!(store.check_ring(4).is_err());
        store.close().await;
    }

    /// A data directory written in the first layout (`len | tenant | key`)
    /// is converted when it opens, and every key reads as before.
    #[tokio::test]
    async fn a_directory_in_the_first_layout_is_converted_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = SiblingSet::new();
        state.update(&CausalContext::new(), &Actor::new("n1.1"), Some(Bytes::from_static(b"old"))).unwrap();
        {
            let db = Database::builder(dir.path()).open().unwrap();
            let legacy = db.keyspace(LEGACY_DATA_KEYSPACE, KeyspaceCreateOptions::default).unwrap();
            for key in ["a", "b", "c"] {
                let mut old = vec![1u8, b't'];
                old.extend_from_slice(key.as_bytes());
                legacy.insert(old, state.encode()).unwrap();
            }
            db.persist(PersistMode::SyncAll).unwrap();
        }
        let store = Store::open(dir.path(), "n1", Durability::Flush).unwrap();
        for key in ["a", "b", "c"] {
            assert_eq!(store.read("t", key.as_bytes()).unwrap(), state, "key {key}");
        }
        assert_eq!(store.count(0, u64::MAX).unwrap().0, 3);
        store.close().await;
        let store = Store::open(dir.path(), "n1", Durability::Flush).unwrap();
        assert_eq!(store.read("t", b"a").unwrap(), state, "converted once, and kept");
        store.close().await;
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_write_records_never_panic(raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let mut bytes = vec![WRITE_RECORD_FORMAT];
            bytes.extend_from_slice(&raw);
            let _ = decode_write_record(&raw);
            let _ = decode_write_record(&bytes);
        }
    }

    #[test]
    fn write_records_round_trip() {
        let dot = Dot { actor: Actor::new("n1.2.ff"), counter: 9 };
        assert_eq!(decode_write_record(&encode_write_record(&dot, 77)), Some((dot, 77)));
        assert_eq!(decode_write_record(b"\x01short"), None);
    }
}
