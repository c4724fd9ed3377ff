//! Idempotency records in-process: claims in memory, completed and unknown
//! outcomes in a fjall keyspace so that they survive a restart.
//!
//! # Record format
//!
//! Key `len(tenant) | tenant | key`; value `2 | kind | expires (ms since the
//! Unix epoch, u64 BE) | fingerprint (32) | response`, where kind is `d`
//! (done, with the encoded response) or `u` (outcome unknown, no response).
//! Format 1 (`1 | expires (s, u64 BE) | fingerprint | response`, done records
//! only) is still read.
//!
//! Concurrent writes of records share one sync: each waits for a sync that
//! started after its own insert, and one sync covers every insert before it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::{Claim, Fingerprint, IdempotencyError, IdempotencyStore};

/// Format byte of records written now.
const FORMAT: u8 = 2;
/// Format byte of the first release's done records.
const FORMAT_V1: u8 = 1;

/// A durable record.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Record {
    Done { fingerprint: Fingerprint, response: Vec<u8> },
    Unknown { fingerprint: Fingerprint },
}

/// An attempt in flight.
struct InFlight {
    fingerprint: Fingerprint,
    owner: String,
    lapses: Instant,
    /// How long what the claim leaves behind is kept.
    ttl: Duration,
}

/// The embedded idempotency store.
pub struct EmbeddedIdempotency {
    db: Database,
    records: Keyspace,
    in_flight_ttl: Duration,
    /// Claims in flight. A std mutex: never held across an await, and it
    /// makes check-and-claim one atomic step.
    in_flight: Mutex<HashMap<Vec<u8>, InFlight>>,
    /// Record inserts so far; a sync that starts after an insert covers it.
    appended: AtomicU64,
    /// Inserts covered by the last completed sync. A tokio mutex: held
    /// across the sync, so concurrent writers wait for one sync.
    synced: tokio::sync::Mutex<u64>,
}

fn record_key(tenant: &str, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + tenant.len() + key.len());
    out.push(tenant.len() as u8);
    out.extend_from_slice(tenant.as_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn unavailable(e: impl std::fmt::Display) -> IdempotencyError {
    IdempotencyError::Unavailable(e.to_string())
}

fn encode(record: &Record, ttl: Duration) -> Vec<u8> {
    let expires = now_ms() + (ttl.as_millis() as u64).max(1);
    let (kind, fingerprint, response): (u8, &Fingerprint, &[u8]) = match record {
        Record::Done { fingerprint, response } => (b'd', fingerprint, response),
        Record::Unknown { fingerprint } => (b'u', fingerprint, &[]),
    };
    let mut out = Vec::with_capacity(42 + response.len());
    out.extend_from_slice(&[FORMAT, kind]);
    out.extend_from_slice(&expires.to_be_bytes());
    out.extend_from_slice(fingerprint);
    out.extend_from_slice(response);
    out
}

/// The record in `bytes` and when it expires (ms since the epoch).
fn decode(bytes: &[u8]) -> Option<(Record, u64)> {
    let fingerprint = |at: usize| -> Option<Fingerprint> { bytes.get(at..at + 32)?.try_into().ok() };
    let u64_at = |at: usize| -> Option<u64> { Some(u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?)) };
    match *bytes.first()? {
        FORMAT_V1 => {
            let expires = u64_at(1)?.saturating_mul(1000);
            Some((Record::Done { fingerprint: fingerprint(9)?, response: bytes[41..].to_vec() }, expires))
        }
        FORMAT => {
            let expires = u64_at(2)?;
            let fingerprint = fingerprint(10)?;
            match bytes[1] {
                b'd' => Some((Record::Done { fingerprint, response: bytes[42..].to_vec() }, expires)),
                b'u' if bytes.len() == 42 => Some((Record::Unknown { fingerprint }, expires)),
                _ => None,
            }
        }
        _ => None,
    }
}

impl EmbeddedIdempotency {
    /// Opens the store in `dir`; in-flight claims lapse after `in_flight_ttl`.
    pub fn open(dir: &Path, in_flight_ttl: Duration) -> Result<Self, IdempotencyError> {
        std::fs::create_dir_all(dir).map_err(unavailable)?;
        let db = Database::builder(dir).manual_journal_persist(true).open().map_err(|e| match e {
            fjall::Error::Locked => {
                unavailable(format!("data directory {} is in use by another process", dir.display()))
            }
            other => unavailable(format!("{other:?}")),
        })?;
        let records = db
            .keyspace("idempotency", || KeyspaceCreateOptions::default().manual_journal_persist(true))
            .map_err(|e| unavailable(format!("{e:?}")))?;
        Ok(EmbeddedIdempotency {
            db,
            records,
            in_flight_ttl,
            in_flight: Mutex::new(HashMap::new()),
            appended: AtomicU64::new(0),
            synced: tokio::sync::Mutex::new(0),
        })
    }

    /// The live durable record for `id`.
    fn load(&self, id: &[u8]) -> Result<Option<Record>, IdempotencyError> {
        let Some(bytes) = self.records.get(id).map_err(|e| unavailable(format!("{e:?}")))? else {
            return Ok(None);
        };
        let (record, expires) = decode(&bytes).ok_or_else(|| unavailable("stored idempotency record is unreadable"))?;
        Ok((expires > now_ms()).then_some(record))
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, InFlight>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets `owner`'s claim of `id`, if it still holds it.
    fn end_claim(&self, id: &[u8], owner: &str) {
        let mut in_flight = self.in_flight();
        if in_flight.get(id).is_some_and(|held| held.owner == owner) {
            in_flight.remove(id);
        }
    }

    /// Writes `record` and waits until it is durable.
    async fn store(&self, id: Vec<u8>, record: &Record, ttl: Duration) -> Result<(), IdempotencyError> {
        self.records.insert(id, encode(record, ttl)).map_err(|e| unavailable(format!("{e:?}")))?;
        self.sync().await
    }

    /// Deletes `id`'s record and waits until that is durable.
    async fn remove(&self, id: Vec<u8>) -> Result<(), IdempotencyError> {
        self.records.remove(id).map_err(|e| unavailable(format!("{e:?}")))?;
        self.sync().await
    }

    /// Waits for a sync covering every insert made before this call.
    async fn sync(&self) -> Result<(), IdempotencyError> {
        let mine = self.appended.fetch_add(1, Ordering::AcqRel) + 1;
        let mut synced = self.synced.lock().await;
        if *synced >= mine {
            return Ok(());
        }
        let upto = self.appended.load(Ordering::Acquire);
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.persist(PersistMode::SyncData))
            .await
            .map_err(unavailable)?
            .map_err(|e| unavailable(format!("{e:?}")))?;
        *synced = upto;
        Ok(())
    }
}

#[async_trait]
impl IdempotencyStore for EmbeddedIdempotency {
    async fn claim(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &Fingerprint,
        owner: &str,
        ttl: Duration,
    ) -> Result<Claim, IdempotencyError> {
        let id = record_key(tenant, key);
        let now = Instant::now();
        let mut in_flight = self.in_flight();
        let mine =
            InFlight { fingerprint: *fingerprint, owner: owner.to_string(), lapses: now + self.in_flight_ttl, ttl };
        if let Some(held) = in_flight.get_mut(&id) {
            if held.fingerprint != *fingerprint {
                return Ok(Claim::Conflict);
            }
            if held.lapses > now {
                return Ok(Claim::InFlight);
            }
            // Its owner may have died after its write reached a replica.
            *held = mine;
            return Ok(Claim::SETTLE);
        }
        let claim = match self.load(&id)? {
            Some(Record::Done { fingerprint: stored, response }) => {
                return Ok(if stored == *fingerprint { Claim::Done(response) } else { Claim::Conflict });
            }
            Some(Record::Unknown { fingerprint: stored }) if stored != *fingerprint => return Ok(Claim::Conflict),
            Some(Record::Unknown { .. }) => Claim::SETTLE,
            None => Claim::FRESH,
        };
        in_flight.insert(id, mine);
        Ok(claim)
    }

    async fn complete(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &Fingerprint,
        owner: &str,
        response: &[u8],
        ttl: Duration,
    ) -> Result<(), IdempotencyError> {
        let id = record_key(tenant, key);
        if self.in_flight().get(&id).is_some_and(|held| held.owner != owner) {
            tracing::warn!(tenant, key, "idempotency claim was taken over before completion; its new owner settles it");
            return Ok(());
        }
        let record = Record::Done { fingerprint: *fingerprint, response: response.to_vec() };
        self.store(id.clone(), &record, ttl).await?;
        self.end_claim(&id, owner);
        Ok(())
    }

    async fn release(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &Fingerprint,
        owner: &str,
    ) -> Result<(), IdempotencyError> {
        let id = record_key(tenant, key);
        {
            let in_flight = self.in_flight();
            match in_flight.get(&id) {
                Some(held) if held.owner == owner && held.fingerprint == *fingerprint => {}
                _ => return Ok(()),
            }
        }
        // A settled unknown outcome that certainly applied nowhere is gone.
        if matches!(self.load(&id)?, Some(Record::Unknown { .. })) {
            self.remove(id.clone()).await?;
        }
        self.end_claim(&id, owner);
        Ok(())
    }

    async fn mark_unknown(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &Fingerprint,
        owner: &str,
        ttl: Duration,
    ) -> Result<(), IdempotencyError> {
        let id = record_key(tenant, key);
        if !self.in_flight().get(&id).is_some_and(|held| held.owner == owner && held.fingerprint == *fingerprint) {
            return Ok(());
        }
        self.store(id.clone(), &Record::Unknown { fingerprint: *fingerprint }, ttl).await?;
        self.end_claim(&id, owner);
        Ok(())
    }

    async fn purge_expired(&self) -> Result<usize, IdempotencyError> {
        let now = now_ms();
        let mut purged = 0;
        for item in self.records.iter() {
            let (id, bytes) = item.into_inner().map_err(|e| unavailable(format!("{e:?}")))?;
            if decode(&bytes).is_none_or(|(_, expires)| expires <= now) {
                self.records.remove(id).map_err(|e| unavailable(format!("{e:?}")))?;
                purged += 1;
            }
        }
        // A claim whose owner never came back may have applied: it becomes
        // a durable unknown outcome, which the next claim settles (kept in
        // memory, it would be lost with a restart).
        let now = Instant::now();
        let lapsed: Vec<(Vec<u8>, Fingerprint, Duration)> = {
            let mut in_flight = self.in_flight();
            let ids: Vec<Vec<u8>> =
                in_flight.iter().filter(|(_, h)| h.lapses <= now).map(|(id, _)| id.clone()).collect();
            ids.into_iter()
                .filter_map(|id| in_flight.remove(&id).map(|held| (id, held.fingerprint, held.ttl)))
                .collect()
        };
        if !lapsed.is_empty() {
            for (id, fingerprint, ttl) in lapsed {
                let record = encode(&Record::Unknown { fingerprint }, ttl);
                self.records.insert(id, record).map_err(|e| unavailable(format!("{e:?}")))?;
            }
            self.sync().await?;
        }
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_contract_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedIdempotency::open(dir.path(), Duration::from_secs(60)).unwrap();
            crate::contract::run(&store).await;
        }
        let store = EmbeddedIdempotency::open(dir.path(), Duration::from_secs(60)).unwrap();
        let day = Duration::from_secs(86_400);
        assert_eq!(store.claim("t", "done", &[1; 32], "o", day).await.unwrap(), Claim::Done(b"response".to_vec()));
    }

    /// F9: a claim whose request was cancelled must not wedge its key until
    /// the coordinator restarts.
    #[tokio::test]
    async fn an_abandoned_claim_lapses_and_must_be_settled() {
        let dir = tempfile::tempdir().unwrap();
        let in_flight = Duration::from_millis(200);
        let store = EmbeddedIdempotency::open(dir.path(), in_flight).unwrap();
        crate::contract::lapse(&store, in_flight).await;
    }

    /// A lapsed claim outlives a restart once purged: it was turned into an
    /// unknown outcome on disk.
    #[tokio::test]
    async fn a_purged_lapsed_claim_is_still_settled_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let day = Duration::from_secs(86_400);
        {
            let store = EmbeddedIdempotency::open(dir.path(), Duration::ZERO).unwrap();
            assert_eq!(store.claim("t", "k", &[8; 32], "gone", day).await.unwrap(), Claim::FRESH);
            store.purge_expired().await.unwrap();
        }
        let store = EmbeddedIdempotency::open(dir.path(), Duration::from_secs(60)).unwrap();
        assert_eq!(store.claim("t", "k", &[8; 32], "next", day).await.unwrap(), Claim::SETTLE);
    }

    /// An unknown outcome survives a restart: the retry still settles it.
    #[tokio::test]
    async fn an_unknown_outcome_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let day = Duration::from_secs(86_400);
        {
            let store = EmbeddedIdempotency::open(dir.path(), Duration::from_secs(60)).unwrap();
            assert_eq!(store.claim("t", "k", &[7; 32], "o1", day).await.unwrap(), Claim::FRESH);
            store.mark_unknown("t", "k", &[7; 32], "o1", day).await.unwrap();
        }
        let store = EmbeddedIdempotency::open(dir.path(), Duration::from_secs(60)).unwrap();
        assert_eq!(store.claim("t", "k", &[7; 32], "o2", day).await.unwrap(), Claim::SETTLE);
    }

    proptest::proptest! {
        /// Whatever bytes a record holds, reading it is an answer or a
        /// clear refusal, never a panic.
        #[test]
        fn arbitrary_records_never_panic(raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..96), format in 0u8..4) {
            let mut bytes = vec![format];
            bytes.extend_from_slice(&raw);
            let _ = decode(&raw);
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn format_1_done_records_still_decode() {
        let mut v1 = vec![FORMAT_V1];
        v1.extend_from_slice(&4_000_000_000u64.to_be_bytes());
        v1.extend_from_slice(&[9; 32]);
        v1.extend_from_slice(b"resp");
        let (record, expires) = decode(&v1).unwrap();
        assert_eq!(record, Record::Done { fingerprint: [9; 32], response: b"resp".to_vec() });
        assert_eq!(expires, 4_000_000_000_000);
        assert_eq!(decode(&[FORMAT, b'x']), None);
    }
}
