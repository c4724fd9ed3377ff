//! Dotted version vectors: how Cohort keeps concurrent writes.
//!
//! A key's state is a [`SiblingSet`]: a causal context (`clock`) summarising
//! every write the state has seen, and the siblings — writes none of the
//! others supersede — each tagged with its [`Dot`] (the actor that issued it
//! and that actor's counter). A sibling holds a value or a tombstone.
//!
//! A [`CausalContext`] is a version vector plus a *dot cloud*: single dots
//! seen beyond the vector. `{a: 3}` covers `a:1..=3`; a cloud dot `a:5`
//! covers `a:5` alone. The cloud is what lets the context a write returns
//! cover exactly the write and what its writer had seen: after blind writes
//! `a:1` and `a:2` by two clients, the second client's context is the cloud
//! `{a:2}`, which does not cover the first client's `a:1`.
//!
//! New versions are issued by a *replica* of the key with
//! [`SiblingSet::update`]: siblings covered by the writer's causal context are
//! replaced, the rest are kept as siblings of the new one. Replicas exchange
//! whole states and combine them with [`SiblingSet::sync`].
//!
//! # Laws
//!
//! For well-formed states (every sibling's dot covered by its own clock, and a
//! dot always naming the same value — which holds when only replicas issue
//! dots, each from its own durable state), `sync` is
//!
//! - commutative: `a.sync(b) == b.sync(a)`,
//! - associative: `(a.sync(b)).sync(c) == a.sync(b.sync(c))`,
//! - idempotent: `a.sync(a) == a`,
//!
//! so replicas converge whatever order states arrive in, however often.
//! These laws are property-tested in `tests/dvv_laws.rs`.
//!
//! # Formats
//!
//! Both the stored sibling set and the causal context start with a format
//! byte: `1` when the clock has no dot cloud (the first release's layout,
//! still written byte for byte in that case), `2` when it has one. A sibling
//! set that carries fencing tokens is format `4` (`3` is the sealed context
//! token's): the clock with its cloud count always written, the fence table
//! (per lock: name and highest token), then the siblings, each followed by
//! its lock's position in the table plus one (`0`: unfenced). A state
//! without fences is written as `1` or `2`, byte for byte as before.
//! Decoders reject formats they do not know.
//!
//! # Fencing
//!
//! A write may carry a [`Fence`]: the name of a lock and the token of the
//! grant its writer holds. The state remembers, per lock, the highest token
//! any write has carried ([`SiblingSet::fences`]). A replica refuses a write
//! whose token is below that ([`UpdateError::Fenced`]), and a sibling written
//! under a lower token than the state has since seen for its lock is
//! superseded: dropped like a sibling a later context covered (its dot stays
//! in the clock). `sync` joins the fence tables (highest token per lock) and
//! then drops what they supersede, so it stays commutative, associative and
//! idempotent: a sibling survives a sync exactly when plain DVV sync keeps it
//! and the joined table does not supersede it, whatever the order of syncs.
//! Consequence: every fenced sibling carries its lock's highest token, and a
//! write refused at one replica cannot survive at another once they sync.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use bytes::Bytes;

/// The identity that issues dots: a storage node incarnation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Actor(pub String);

impl Actor {
    /// The actor with this name.
    pub fn new(name: impl Into<String>) -> Self {
        Actor(name.into())
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One write event: the `counter`-th write issued by `actor` for a key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dot {
    /// Who issued the write.
    pub actor: Actor,
    /// The actor's counter for the key, starting at 1.
    pub counter: u64,
}

/// A version vector: for each actor, how many of its writes have been seen.
///
/// Counters are contiguous per actor, so `{a: 3}` means dots `a:1..=3`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct VersionVector(BTreeMap<Actor, u64>);

impl VersionVector {
    /// The empty vector: nothing seen (a blind write's context).
    pub fn new() -> Self {
        Self::default()
    }

    /// How many of `actor`'s writes are covered.
    pub fn get(&self, actor: &Actor) -> u64 {
        self.0.get(actor).copied().unwrap_or(0)
    }

    /// Records `dot` as seen: raises `dot.actor`'s counter to at least
    /// `dot.counter`.
    pub fn add(&mut self, dot: &Dot) {
        let entry = self.0.entry(dot.actor.clone()).or_insert(0);
        *entry = (*entry).max(dot.counter);
    }

    /// Whether `dot` is covered.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.get(&dot.actor) >= dot.counter
    }

    /// Raises each counter to the maximum of both vectors.
    pub fn merge(&mut self, other: &VersionVector) {
        for (actor, &counter) in &other.0 {
            let entry = self.0.entry(actor.clone()).or_insert(0);
            *entry = (*entry).max(counter);
        }
    }

    /// Whether `self` has seen everything `other` has (`self >= other`).
    pub fn descends(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(actor, &counter)| self.get(actor) >= counter)
    }

    /// Whether neither vector descends from the other.
    pub fn concurrent(&self, other: &VersionVector) -> bool {
        !self.descends(other) && !other.descends(self)
    }

    /// Whether nothing is covered.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `(actor, counter)` entries, ordered by actor.
    pub fn iter(&self) -> impl Iterator<Item = (&Actor, u64)> {
        self.0.iter().map(|(a, c)| (a, *c))
    }

    fn insert(&mut self, actor: Actor, counter: u64) {
        if counter > 0 {
            self.0.insert(actor, counter);
        }
    }
}

/// One surviving write: its dot and its value, or `None` for a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sibling {
    /// The write event that produced this sibling.
    pub dot: Dot,
    /// The value, or `None` when the write was a delete.
    pub value: Option<Bytes>,
    /// The lock grant the write was made under, when it was fenced.
    pub fence: Option<Fence>,
}

/// A lock's fencing token, as a write carries it and a state remembers it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fence {
    /// The lock's name.
    pub lock: String,
    /// The token of the grant: strictly increasing per lock.
    pub token: u64,
}

/// What a state or a writer has seen: a version vector, plus single dots
/// seen beyond it (the dot cloud).
///
/// Canonical: no cloud dot is covered by the vector, and a cloud dot that
/// extends the vector contiguously is folded into it, so equal histories
/// compare equal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CausalContext {
    vv: VersionVector,
    cloud: BTreeSet<Dot>,
}

impl From<VersionVector> for CausalContext {
    fn from(vv: VersionVector) -> Self {
        CausalContext { vv, cloud: BTreeSet::new() }
    }
}

impl CausalContext {
    /// The empty context: nothing seen (a blind write's context).
    pub fn new() -> Self {
        Self::default()
    }

    /// The version-vector part.
    pub fn vv(&self) -> &VersionVector {
        &self.vv
    }

    /// The dots seen beyond the vector, ordered.
    pub fn cloud(&self) -> impl Iterator<Item = &Dot> {
        self.cloud.iter()
    }

    /// How many of `actor`'s first writes are covered contiguously.
    pub fn get(&self, actor: &Actor) -> u64 {
        self.vv.get(actor)
    }

    /// The highest counter of `actor` this context covers, cloud included.
    pub fn max_counter(&self, actor: &Actor) -> u64 {
        let beyond = self.cloud.iter().filter(|d| d.actor == *actor).map(|d| d.counter).max().unwrap_or(0);
        self.vv.get(actor).max(beyond)
    }

    /// The version-vector entries, ordered by actor.
    pub fn iter(&self) -> impl Iterator<Item = (&Actor, u64)> {
        self.vv.iter()
    }

    /// Whether `dot` is covered.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.vv.covers(dot) || self.cloud.contains(dot)
    }

    /// Whether nothing is covered.
    pub fn is_empty(&self) -> bool {
        self.vv.is_empty() && self.cloud.is_empty()
    }

    /// Records `dot` as seen, and only it.
    pub fn add(&mut self, dot: &Dot) {
        if !self.covers(dot) {
            self.cloud.insert(dot.clone());
            self.compact();
        }
    }

    /// Everything either context covers.
    pub fn merge(&mut self, other: &CausalContext) {
        self.vv.merge(&other.vv);
        self.cloud.extend(other.cloud.iter().cloned());
        self.compact();
    }

    /// Whether `self` covers everything `other` covers.
    pub fn descends(&self, other: &CausalContext) -> bool {
        other.vv.iter().all(|(actor, counter)| {
            self.vv.get(actor) >= counter
                || (self.vv.get(actor) + 1..=counter)
                    .all(|c| self.cloud.contains(&Dot { actor: actor.clone(), counter: c }))
        }) && other.cloud.iter().all(|dot| self.covers(dot))
    }

    /// Folds cloud dots that extend the vector into it, and drops the ones
    /// it covers.
    fn compact(&mut self) {
        let mut cloud = std::mem::take(&mut self.cloud);
        // Ordered by actor, then counter: each actor's run extends in order.
        cloud.retain(|dot| {
            let seen = self.vv.get(&dot.actor);
            if dot.counter <= seen {
                false
            } else if dot.counter == seen + 1 {
                self.vv.insert(dot.actor.clone(), dot.counter);
                false
            } else {
                true
            }
        });
        // A later dot may have become contiguous only after an earlier one
        // of the same actor was folded in; the ordered pass above handles
        // runs, so what is left is not covered.
        self.cloud = cloud;
    }

    /// Encodes the context as bytes with a format byte, for the wire
    /// between coordinators and nodes. The empty context encodes to no bytes
    /// at all, so a blind write sends nothing.
    pub fn encode(&self) -> Vec<u8> {
        if self.is_empty() {
            return Vec::new();
        }
        let mut out = vec![if self.cloud.is_empty() { FORMAT_V1 } else { FORMAT_V2 }];
        encode_context(self, &mut out);
        out
    }

    /// Parses bytes made by [`CausalContext::encode`]; no bytes is the empty
    /// context.
    pub fn decode(bytes: &[u8]) -> Result<CausalContext, DecodeError> {
        if bytes.is_empty() {
            return Ok(CausalContext::default());
        }
        let mut reader = Reader::new(bytes);
        let format = reader.byte()?;
        let context = decode_context(&mut reader, format)?;
        reader.finish()?;
        Ok(context)
    }
}

/// The replicated state of one key: a clock and the concurrent siblings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiblingSet {
    clock: CausalContext,
    /// Sorted by dot; canonical so that equal states compare equal.
    siblings: Vec<Sibling>,
    /// The highest fencing token any write of this key carried, per lock.
    fences: BTreeMap<String, u64>,
}

impl SiblingSet {
    /// The state of a key never written.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything this state has seen; handed to clients as their context.
    pub fn clock(&self) -> &CausalContext {
        &self.clock
    }

    /// All siblings, tombstones included, ordered by dot.
    pub fn siblings(&self) -> &[Sibling] {
        &self.siblings
    }

    /// The values of the live (non-tombstone) siblings, ordered by dot.
    pub fn values(&self) -> impl Iterator<Item = &Bytes> {
        self.siblings.iter().filter_map(|s| s.value.as_ref())
    }

    /// Whether any sibling holds a value (the key reads as found).
    pub fn has_values(&self) -> bool {
        self.siblings.iter().any(|s| s.value.is_some())
    }

    /// Whether this is the state of a key never written.
    pub fn is_empty(&self) -> bool {
        self.clock.is_empty() && self.siblings.is_empty() && self.fences.is_empty()
    }

    /// The highest fencing token a write of this key carried, per lock.
    pub fn fences(&self) -> &BTreeMap<String, u64> {
        &self.fences
    }

    /// Whether a write under `fence` would be refused: this state has seen
    /// a higher token of its lock.
    pub fn fenced_by(&self, fence: &Fence) -> Option<Fenced> {
        let highest = self.fences.get(&fence.lock).copied().filter(|highest| *highest > fence.token)?;
        Some(Fenced { lock: fence.lock.clone(), token: fence.token, highest })
    }

    /// Drops the siblings a higher token of their lock supersedes.
    fn drop_fenced(&mut self) {
        if self.fences.is_empty() {
            return;
        }
        let fences = &self.fences;
        self.siblings
            .retain(|s| s.fence.as_ref().is_none_or(|f| fences.get(&f.lock).is_none_or(|highest| f.token >= *highest)));
    }

    /// Issues a new version at `actor`, which must be a replica of the key
    /// acting on its own durable state.
    ///
    /// Siblings covered by `context` (what the writer had read) are replaced;
    /// siblings the writer had not seen stay as siblings of the new version.
    /// `value` of `None` writes a tombstone. Returns the new dot.
    ///
    /// Fails, leaving the state untouched, when `actor`'s counter (in the
    /// state or in `context`) is already `u64::MAX`, so no new dot can be
    /// issued. Honest counting never gets there; only a forged context can.
    pub fn update(
        &mut self,
        context: &CausalContext,
        actor: &Actor,
        value: Option<Bytes>,
    ) -> Result<Dot, DotsExhausted> {
        self.update_above(context, actor, value, 0, None).map_err(|error| match error {
            UpdateError::DotsExhausted(exhausted) => exhausted,
            UpdateError::Fenced(_) => unreachable!("an unfenced write is never refused by a fence"),
        })
    }

    /// [`SiblingSet::update`], issuing a counter above `floor` as well, and
    /// under `fence` when given.
    ///
    /// A replica that purged a key's tombstone no longer knows which of
    /// its counters the key had used; other replicas (or a partitioned one)
    /// may still hold them. Issuing above the highest counter it ever purged
    /// never hands out a dot they have seen, so a new write can never be
    /// mistaken for the deleted one. The vector then covers the skipped
    /// counters too, which the key never had from this actor but for the
    /// purged, deleted writes.
    ///
    /// A fenced write is refused, leaving the state untouched, when the
    /// state has seen a higher token of its lock; otherwise it raises the
    /// lock's token to its own and supersedes the siblings written under
    /// lower ones.
    pub fn update_above(
        &mut self,
        context: &CausalContext,
        actor: &Actor,
        value: Option<Bytes>,
        floor: u64,
        fence: Option<Fence>,
    ) -> Result<Dot, UpdateError> {
        // Checked before anything changes: the counter must not wrap to 0,
        // which would store a state that `decode` rejects ("zero counter").
        if self.clock.max_counter(actor).max(context.max_counter(actor)).max(floor) == u64::MAX {
            return Err(UpdateError::DotsExhausted(DotsExhausted(actor.clone())));
        }
        if let Some(fence) = &fence {
            if let Some(fenced) = self.fenced_by(fence) {
                return Err(fenced.into());
            }
            self.fences.insert(fence.lock.clone(), fence.token);
            self.drop_fenced();
        }
        self.siblings.retain(|s| !context.covers(&s.dot));
        self.clock.merge(context);
        // Contiguous: the actor's own dots are always in the vector (it
        // issues them in order from this very clock).
        let counter = self.clock.max_counter(actor).max(floor) + 1;
        self.clock.vv.insert(actor.clone(), counter);
        self.clock.compact();
        let dot = Dot { actor: actor.clone(), counter };
        let position = self.siblings.partition_point(|s| s.dot < dot);
        self.siblings.insert(position, Sibling { dot: dot.clone(), value, fence });
        Ok(dot)
    }

    /// Merges `other` into `self` (DVV sync).
    ///
    /// A sibling survives if the other side also has it, or if the other side
    /// has not seen it; a sibling one side has seen but no longer holds was
    /// superseded there and is dropped. The fence tables join, and a sibling
    /// a higher token of its lock supersedes is dropped too.
    pub fn sync(&mut self, other: &SiblingSet) {
        let mut merged = Vec::with_capacity(self.siblings.len() + other.siblings.len());
        let (mut i, mut j) = (0, 0);
        let (a, b) = (&self.siblings, &other.siblings);
        while i < a.len() || j < b.len() {
            let order = match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) => x.dot.cmp(&y.dot),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, _) => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Equal => {
                    merged.push(a[i].clone());
                    i += 1;
                    j += 1;
                }
                std::cmp::Ordering::Less => {
                    if !other.clock.covers(&a[i].dot) {
                        merged.push(a[i].clone());
                    }
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    if !self.clock.covers(&b[j].dot) {
                        merged.push(b[j].clone());
                    }
                    j += 1;
                }
            }
        }
        self.siblings = merged;
        self.clock.merge(&other.clock);
        for (lock, token) in &other.fences {
            let highest = self.fences.entry(lock.clone()).or_insert(0);
            *highest = (*highest).max(*token);
        }
        self.drop_fenced();
    }

    /// `a` synced with `b`, leaving both untouched.
    pub fn merged(a: &SiblingSet, b: &SiblingSet) -> SiblingSet {
        let mut out = a.clone();
        out.sync(b);
        out
    }

    /// Serialises the state for disk and for the wire between nodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            16 + self.siblings.iter().map(|s| s.value.as_ref().map_or(0, |v| v.len()) + 8).sum::<usize>(),
        );
        let fenced = !self.fences.is_empty();
        let actors: Vec<&Actor> = self.clock.vv.0.keys().collect();
        if fenced {
            out.push(FORMAT_FENCED);
            encode_clock(&self.clock.vv, &mut out);
            encode_cloud(&self.clock.cloud, &mut out);
            put_varint(&mut out, self.fences.len() as u64);
            for (lock, token) in &self.fences {
                put_varint(&mut out, lock.len() as u64);
                out.extend_from_slice(lock.as_bytes());
                put_varint(&mut out, *token);
            }
        } else {
            out.push(if self.clock.cloud.is_empty() { FORMAT_V1 } else { FORMAT_V2 });
            encode_context(&self.clock, &mut out);
        }
        put_varint(&mut out, self.siblings.len() as u64);
        for sibling in &self.siblings {
            let index =
                actors.binary_search(&&sibling.dot.actor).expect("well-formed: every dot is covered by the clock");
            put_varint(&mut out, index as u64);
            put_varint(&mut out, sibling.dot.counter);
            match &sibling.value {
                None => out.push(0),
                Some(value) => {
                    out.push(1);
                    put_varint(&mut out, value.len() as u64);
                    out.extend_from_slice(value);
                }
            }
            if fenced {
                let position = sibling.fence.as_ref().map_or(0, |f| {
                    self.fences
                        .keys()
                        .position(|lock| *lock == f.lock)
                        .expect("well-formed: a sibling's lock is in the table")
                        + 1
                });
                put_varint(&mut out, position as u64);
            }
        }
        out
    }

    /// Parses a state written by [`SiblingSet::encode`], checking that it is
    /// well-formed.
    pub fn decode(bytes: &[u8]) -> Result<SiblingSet, DecodeError> {
        let mut reader = Reader::new(bytes);
        let format = reader.byte()?;
        let (clock, fences) = if format == FORMAT_FENCED {
            let vv = decode_clock(&mut reader)?;
            let cloud = decode_cloud(&mut reader, &vv)?;
            (CausalContext { vv, cloud }, decode_fences(&mut reader)?)
        } else {
            (decode_context(&mut reader, format)?, BTreeMap::new())
        };
        let locks: Vec<(&String, &u64)> = fences.iter().collect();
        let actors: Vec<&Actor> = clock.vv.0.keys().collect();
        let count = reader.varint()?;
        let mut siblings = Vec::with_capacity(count.min(1024) as usize);
        for _ in 0..count {
            let index = reader.varint()? as usize;
            let actor = actors.get(index).ok_or(DecodeError::Malformed("sibling actor index out of range"))?;
            let counter = reader.varint()?;
            let dot = Dot { actor: (*actor).clone(), counter };
            if counter == 0 || !clock.vv.covers(&dot) {
                return Err(DecodeError::Malformed("sibling dot not covered by the clock"));
            }
            let value = match reader.byte()? {
                0 => None,
                1 => {
                    let len = reader.varint()? as usize;
                    Some(Bytes::copy_from_slice(reader.take(len)?))
                }
                _ => return Err(DecodeError::Malformed("unknown sibling kind")),
            };
            let fence = match format {
                FORMAT_FENCED => match reader.varint()? as usize {
                    0 => None,
                    position => {
                        let (lock, token) =
                            locks.get(position - 1).ok_or(DecodeError::Malformed("sibling lock index out of range"))?;
                        Some(Fence { lock: (*lock).clone(), token: **token })
                    }
                },
                _ => None,
            };
            if siblings.last().is_some_and(|s: &Sibling| s.dot >= dot) {
                return Err(DecodeError::Malformed("siblings out of order"));
            }
            siblings.push(Sibling { dot, value, fence });
        }
        reader.finish()?;
        Ok(SiblingSet { clock, siblings, fences })
    }
}

/// Reads a format-4 fence table: at least one lock, names in order, tokens
/// above zero.
fn decode_fences(reader: &mut Reader<'_>) -> Result<BTreeMap<String, u64>, DecodeError> {
    let count = reader.varint()?;
    if count == 0 {
        return Err(DecodeError::Malformed("empty fence table in format 4"));
    }
    let mut fences = BTreeMap::new();
    let mut previous: Option<String> = None;
    for _ in 0..count {
        let len = reader.varint()? as usize;
        if len == 0 || len > MAX_LOCK_LEN {
            return Err(DecodeError::Malformed("lock name length"));
        }
        let lock = std::str::from_utf8(reader.take(len)?)
            .map_err(|_| DecodeError::Malformed("lock name is not UTF-8"))?
            .to_string();
        let token = reader.varint()?;
        if token == 0 {
            return Err(DecodeError::Malformed("zero fencing token"));
        }
        if previous.as_ref().is_some_and(|p| *p >= lock) {
            return Err(DecodeError::Malformed("fence table out of order"));
        }
        previous = Some(lock.clone());
        fences.insert(lock, token);
    }
    Ok(fences)
}

/// The first release's format: a clock without a dot cloud.
const FORMAT_V1: u8 = 1;
/// A clock with a dot cloud.
const FORMAT_V2: u8 = 2;
/// A sibling set with a fence table (`3` is the sealed context token's).
const FORMAT_FENCED: u8 = 4;
/// The longest lock name a stored state may hold.
pub const MAX_LOCK_LEN: usize = 1024;

/// No new dot can be issued for an actor whose counter is at `u64::MAX`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dot counter of actor {0} is exhausted")]
pub struct DotsExhausted(pub Actor);

/// Why a replica refused to issue a version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// No counter is left for the actor.
    #[error(transparent)]
    DotsExhausted(#[from] DotsExhausted),
    /// A newer holder of the write's lock has written.
    #[error(transparent)]
    Fenced(#[from] Fenced),
}

/// A fenced write refused: its token is below one the key has already seen
/// for its lock, so a newer holder of the lock has written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "fenced: token {token} < {highest}, the highest this key has seen for lock {lock:?}; a newer holder has written"
)]
pub struct Fenced {
    /// The lock the write named.
    pub lock: String,
    /// The token it carried.
    pub token: u64,
    /// The highest token the key has seen for that lock.
    pub highest: u64,
}

/// Why bytes could not be read back as a sibling set or context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The format byte names a format this build does not know.
    #[error("unknown format version {0}")]
    UnknownFormat(u8),
    /// The input ended early.
    #[error("truncated input")]
    Truncated,
    /// The input is structurally wrong.
    #[error("malformed input: {0}")]
    Malformed(&'static str),
}

const MAX_ACTOR_LEN: usize = 255;

/// Writes the vector, then (when there is one) the cloud: its dot count and
/// each dot as actor name and counter.
pub(crate) fn encode_context(context: &CausalContext, out: &mut Vec<u8>) {
    encode_clock(&context.vv, out);
    if !context.cloud.is_empty() {
        encode_cloud(&context.cloud, out);
    }
}

/// Writes the cloud's dot count, then each dot as actor name and counter.
fn encode_cloud(cloud: &BTreeSet<Dot>, out: &mut Vec<u8>) {
    put_varint(out, cloud.len() as u64);
    for dot in cloud {
        put_varint(out, dot.actor.0.len() as u64);
        out.extend_from_slice(dot.actor.0.as_bytes());
        put_varint(out, dot.counter);
    }
}

/// Reads what [`encode_context`] wrote in `format`, checking that it is
/// canonical.
pub(crate) fn decode_context(reader: &mut Reader<'_>, format: u8) -> Result<CausalContext, DecodeError> {
    if format != FORMAT_V1 && format != FORMAT_V2 {
        return Err(DecodeError::UnknownFormat(format));
    }
    let vv = decode_clock(reader)?;
    let cloud = match format {
        FORMAT_V1 => BTreeSet::new(),
        FORMAT_V2 => {
            let cloud = decode_cloud(reader, &vv)?;
            if cloud.is_empty() {
                return Err(DecodeError::Malformed("empty dot cloud in format 2"));
            }
            cloud
        }
        other => return Err(DecodeError::UnknownFormat(other)),
    };
    Ok(CausalContext { vv, cloud })
}

/// Reads what [`encode_cloud`] wrote, checking that it is canonical
/// against the vector `vv`.
fn decode_cloud(reader: &mut Reader<'_>, vv: &VersionVector) -> Result<BTreeSet<Dot>, DecodeError> {
    let count = reader.varint()?;
    let mut cloud = BTreeSet::new();
    let mut previous: Option<Dot> = None;
    for _ in 0..count {
        let actor = decode_actor(reader)?;
        let counter = reader.varint()?;
        let dot = Dot { actor, counter };
        if counter <= vv.get(&dot.actor).saturating_add(1) {
            return Err(DecodeError::Malformed("dot cloud not compact"));
        }
        if previous.as_ref().is_some_and(|p| *p >= dot) {
            return Err(DecodeError::Malformed("dot cloud out of order"));
        }
        previous = Some(dot.clone());
        cloud.insert(dot);
    }
    Ok(cloud)
}

fn decode_actor(reader: &mut Reader<'_>) -> Result<Actor, DecodeError> {
    let len = reader.varint()? as usize;
    if len == 0 || len > MAX_ACTOR_LEN {
        return Err(DecodeError::Malformed("actor name length"));
    }
    let name = std::str::from_utf8(reader.take(len)?).map_err(|_| DecodeError::Malformed("actor name is not UTF-8"))?;
    Ok(Actor::new(name))
}

pub(crate) fn encode_clock(clock: &VersionVector, out: &mut Vec<u8>) {
    put_varint(out, clock.0.len() as u64);
    for (actor, counter) in &clock.0 {
        put_varint(out, actor.0.len() as u64);
        out.extend_from_slice(actor.0.as_bytes());
        put_varint(out, *counter);
    }
}

pub(crate) fn decode_clock(reader: &mut Reader<'_>) -> Result<VersionVector, DecodeError> {
    let count = reader.varint()?;
    let mut clock = VersionVector::new();
    let mut previous: Option<Actor> = None;
    for _ in 0..count {
        let actor = decode_actor(reader)?;
        let counter = reader.varint()?;
        if counter == 0 {
            return Err(DecodeError::Malformed("zero counter"));
        }
        if previous.as_ref().is_some_and(|p| *p >= actor) {
            return Err(DecodeError::Malformed("clock actors out of order"));
        }
        previous = Some(actor.clone());
        clock.insert(actor, counter);
    }
    Ok(clock)
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    pub(crate) fn byte(&mut self) -> Result<u8, DecodeError> {
        let (&first, rest) = self.bytes.split_first().ok_or(DecodeError::Truncated)?;
        self.bytes = rest;
        Ok(first)
    }

    pub(crate) fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < len {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    pub(crate) fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::Malformed("varint too long"))
    }

    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() { Ok(()) } else { Err(DecodeError::Malformed("trailing bytes")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a() -> Actor {
        Actor::new("a")
    }
    fn b() -> Actor {
        Actor::new("b")
    }

    #[test]
    fn blind_writes_become_siblings() {
        let mut s = SiblingSet::new();
        s.update(&CausalContext::new(), &a(), Some(Bytes::from_static(b"1"))).unwrap();
        s.update(&CausalContext::new(), &a(), Some(Bytes::from_static(b"2"))).unwrap();
        assert_eq!(s.values().count(), 2);
    }

    #[test]
    fn write_with_context_replaces_what_was_read() {
        let mut s = SiblingSet::new();
        s.update(&CausalContext::new(), &a(), Some(Bytes::from_static(b"1"))).unwrap();
        s.update(&CausalContext::new(), &b(), Some(Bytes::from_static(b"2"))).unwrap();
        let read = s.clock().clone();
        s.update(&read, &a(), Some(Bytes::from_static(b"3"))).unwrap();
        assert_eq!(s.values().cloned().collect::<Vec<_>>(), vec![Bytes::from_static(b"3")]);
    }

    #[test]
    fn sync_drops_superseded_and_keeps_concurrent() {
        let mut base = SiblingSet::new();
        base.update(&CausalContext::new(), &a(), Some(Bytes::from_static(b"v1"))).unwrap();
        let mut left = base.clone();
        let mut right = base.clone();
        left.update(&base.clock().clone(), &a(), Some(Bytes::from_static(b"left"))).unwrap();
        right.update(&base.clock().clone(), &b(), Some(Bytes::from_static(b"right"))).unwrap();
        let merged = SiblingSet::merged(&left, &right);
        let values: Vec<_> = merged.values().cloned().collect();
        assert_eq!(values, vec![Bytes::from_static(b"left"), Bytes::from_static(b"right")]);
        assert_eq!(SiblingSet::merged(&merged, &base), merged);
    }

    #[test]
    fn tombstones_hide_values_but_keep_the_clock() {
        let mut s = SiblingSet::new();
        s.update(&CausalContext::new(), &a(), Some(Bytes::from_static(b"v"))).unwrap();
        let ctx = s.clock().clone();
        s.update(&ctx, &a(), None).unwrap();
        assert!(!s.has_values());
        assert_eq!(s.siblings().len(), 1);
        assert_eq!(s.clock().get(&a()), 2);
    }

    #[test]
    fn encoding_round_trips_and_rejects_garbage() {
        let mut s = SiblingSet::new();
        s.update(&CausalContext::new(), &a(), Some(Bytes::from_static(b"x"))).unwrap();
        s.update(&CausalContext::new(), &b(), None).unwrap();
        assert_eq!(SiblingSet::decode(&s.encode()), Ok(s.clone()));
        assert_eq!(SiblingSet::decode(&[]), Err(DecodeError::Truncated));
        assert_eq!(SiblingSet::decode(&[9]), Err(DecodeError::UnknownFormat(9)));
        let mut trailing = s.encode();
        trailing.push(0);
        assert!(SiblingSet::decode(&trailing).is_err());
        let ctx = s.clock().clone();
        assert_eq!(CausalContext::decode(&ctx.encode()), Ok(ctx));
        assert_eq!(CausalContext::decode(&[]), Ok(CausalContext::default()));
        assert!(CausalContext::decode(b"\x01\x05").is_err());
    }

    /// A context claiming the actor's last possible counter must not wrap the
    /// counter to 0 (which in release builds stored an undecodable state).
    #[test]
    fn exhausted_counter_is_refused_without_corrupting_the_state() {
        let mut ctx =
            CausalContext::decode(&[1, 1, 1, b'a', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])
                .unwrap();
        assert_eq!(ctx.get(&a()), u64::MAX);
        let mut s = SiblingSet::new();
        s.update(&CausalContext::new(), &b(), Some(Bytes::from_static(b"v"))).unwrap();
        let before = s.clone();
        assert_eq!(s.update(&ctx, &a(), None), Err(DotsExhausted(a())));
        assert_eq!(s, before);
        // One below the limit still works and round-trips.
        ctx = CausalContext::decode(&[1, 1, 1, b'a', 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])
            .unwrap();
        let dot = s.update(&ctx, &a(), None).unwrap();
        assert_eq!(dot.counter, u64::MAX);
        assert_eq!(SiblingSet::decode(&s.encode()), Ok(s));
    }

    /// Format 1 as written by the first release; must stay readable.
    #[test]
    fn format_1_fixture_still_decodes() {
        // clock {a: 2, b: 1}; siblings a:2 = "hi", b:1 = tombstone
        let fixture = [1, 2, 1, b'a', 2, 1, b'b', 1, 2, 0, 2, 1, 2, b'h', b'i', 1, 1, 0];
        let s = SiblingSet::decode(&fixture).unwrap();
        assert_eq!(s.clock().get(&a()), 2);
        assert_eq!(s.clock().get(&b()), 1);
        assert_eq!(s.values().cloned().collect::<Vec<_>>(), vec![Bytes::from_static(b"hi")]);
        assert_eq!(s.encode(), fixture);
    }

    /// The context a write returns covers the write and what its writer
    /// had seen: a blind write after another one does not cover it.
    #[test]
    fn a_dot_cloud_covers_one_write_alone() {
        let mut s = SiblingSet::new();
        s.update(&CausalContext::new(), &a(), Some(Bytes::from_static(b"first"))).unwrap();
        let second = s.update(&CausalContext::new(), &a(), Some(Bytes::from_static(b"second"))).unwrap();
        let mut returned = CausalContext::new();
        returned.add(&second);
        assert!(returned.covers(&second));
        assert!(!returned.covers(&Dot { actor: a(), counter: 1 }), "the other client's write is not covered");
        s.update(&returned, &a(), Some(Bytes::from_static(b"third"))).unwrap();
        let values: Vec<_> = s.values().cloned().collect();
        assert_eq!(values, vec![Bytes::from_static(b"first"), Bytes::from_static(b"third")]);

        // A replica that had not seen the covered write yet keeps it covered,
        // so it cannot come back when the write arrives later.
        let mut behind = SiblingSet::new();
        behind.update(&returned, &b(), Some(Bytes::from_static(b"elsewhere"))).unwrap();
        assert!(behind.clock().covers(&second) && !behind.clock().covers(&Dot { actor: a(), counter: 1 }));
        let encoded = behind.encode();
        assert_eq!(encoded[0], FORMAT_V2);
        assert_eq!(SiblingSet::decode(&encoded), Ok(behind.clone()));
        behind.sync(&s);
        let values: Vec<_> = behind.values().cloned().collect();
        let expected = [&b"first"[..], b"third", b"elsewhere"].map(Bytes::from_static);
        assert_eq!(values, expected, "ordered by dot: a:1, a:3, b:1");
        assert!(behind.clock().cloud().next().is_none(), "the cloud folds into the vector once contiguous");
    }

    #[test]
    fn contexts_with_a_cloud_round_trip_and_stay_canonical() {
        let mut ctx = CausalContext::new();
        ctx.add(&Dot { actor: a(), counter: 3 });
        ctx.add(&Dot { actor: b(), counter: 1 });
        assert_eq!(ctx.cloud().count(), 1);
        assert_eq!(CausalContext::decode(&ctx.encode()), Ok(ctx.clone()));
        ctx.add(&Dot { actor: a(), counter: 1 });
        ctx.add(&Dot { actor: a(), counter: 2 });
        assert_eq!((ctx.get(&a()), ctx.cloud().count()), (3, 0), "a contiguous run folds into the vector");
        assert_eq!(ctx.encode()[0], FORMAT_V1);
        // A cloud dot the vector covers, or one that extends it, is not canonical.
        let mut bad = vec![FORMAT_V2];
        encode_clock(&ctx.vv, &mut bad);
        bad.extend_from_slice(&[1, 1, b'a', 4]);
        assert_eq!(CausalContext::decode(&bad), Err(DecodeError::Malformed("dot cloud not compact")));
    }
}
