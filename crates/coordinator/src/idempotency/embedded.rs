//! Idempotency records in-process: claims in memory, completed responses in
//! a fjall keyspace so that they survive a restart.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use tonic::async_trait;

use super::{Claim, Fingerprint, IdempotencyError, IdempotencyStore};

/// Format byte of a stored record.
const FORMAT: u8 = 1;

/// The embedded idempotency store.
pub struct EmbeddedIdempotency {
    db: Database,
    done: Keyspace,
    /// Claims in flight. A std mutex: never held across an await, and it
    /// makes check-and-claim one atomic step.
    in_flight: Mutex<HashMap<Vec<u8>, Fingerprint>>,
}

fn record_key(tenant: &str, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + tenant.len() + key.len());
    out.push(tenant.len() as u8);
    out.extend_from_slice(tenant.as_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn unavailable(e: impl std::fmt::Display) -> IdempotencyError {
    IdempotencyError::Unavailable(e.to_string())
}

impl EmbeddedIdempotency {
    /// Opens the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, IdempotencyError> {
        std::fs::create_dir_all(dir).map_err(unavailable)?;
        let db = Database::builder(dir).open().map_err(|e| match e {
            fjall::Error::Locked => {
                unavailable(format!("data directory {} is in use by another process", dir.display()))
            }
            other => unavailable(format!("{other:?}")),
        })?;
        let done =
            db.keyspace("idempotency", KeyspaceCreateOptions::default).map_err(|e| unavailable(format!("{e:?}")))?;
        Ok(EmbeddedIdempotency { db, done, in_flight: Mutex::new(HashMap::new()) })
    }

    /// The live record for `id`: fingerprint and response.
    fn load(&self, id: &[u8]) -> Result<Option<(Fingerprint, Vec<u8>)>, IdempotencyError> {
        let Some(bytes) = self.done.get(id).map_err(|e| unavailable(format!("{e:?}")))? else {
            return Ok(None);
        };
        if bytes.len() < 1 + 8 + 32 || bytes[0] != FORMAT {
            return Err(unavailable("stored idempotency record is unreadable"));
        }
        let expires = u64::from_be_bytes(bytes[1..9].try_into().expect("eight bytes"));
        if expires <= now_secs() {
            return Ok(None);
        }
        let fingerprint: Fingerprint = bytes[9..41].try_into().expect("32 bytes");
        Ok(Some((fingerprint, bytes[41..].to_vec())))
    }
}

#[async_trait]
impl IdempotencyStore for EmbeddedIdempotency {
    async fn claim(&self, tenant: &str, key: &str, fingerprint: &Fingerprint) -> Result<Claim, IdempotencyError> {
        let id = record_key(tenant, key);
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((stored, response)) = self.load(&id)? {
            return Ok(if stored == *fingerprint { Claim::Done(response) } else { Claim::Conflict });
        }
        match in_flight.get(&id) {
            Some(held) if held == fingerprint => Ok(Claim::InFlight),
            Some(_) => Ok(Claim::Conflict),
            None => {
                in_flight.insert(id, *fingerprint);
                Ok(Claim::Claimed)
            }
        }
    }

    async fn complete(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &Fingerprint,
        response: &[u8],
        ttl: Duration,
    ) -> Result<(), IdempotencyError> {
        let id = record_key(tenant, key);
        let mut record = Vec::with_capacity(41 + response.len());
        record.push(FORMAT);
        record.extend_from_slice(&(now_secs() + ttl.as_secs().max(1)).to_be_bytes());
        record.extend_from_slice(fingerprint);
        record.extend_from_slice(response);
        let db = self.db.clone();
        let done = self.done.clone();
        let key_for_write = id.clone();
        tokio::task::spawn_blocking(move || {
            done.insert(key_for_write, record)?;
            db.persist(PersistMode::SyncData)
        })
        .await
        .map_err(unavailable)?
        .map_err(|e| unavailable(format!("{e:?}")))?;
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        Ok(())
    }

    async fn release(&self, tenant: &str, key: &str, fingerprint: &Fingerprint) -> Result<(), IdempotencyError> {
        let id = record_key(tenant, key);
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if in_flight.get(&id) == Some(fingerprint) {
            in_flight.remove(&id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_contract_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedIdempotency::open(dir.path()).unwrap();
            super::super::contract::run(&store).await;
        }
        let store = EmbeddedIdempotency::open(dir.path()).unwrap();
        assert_eq!(store.claim("t", "done", &[1; 32]).await.unwrap(), Claim::Done(b"response".to_vec()));
    }
}
