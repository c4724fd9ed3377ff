//! Sealing and opening the causal contexts that clients hold.
//!
//! Every context a coordinator hands out is bound to its `(tenant, key)` and
//! sealed with the cluster's newest context key (see
//! [`cohort_ring::context`]); every context a write carries is opened with
//! the key it names. The keys live in the metadata store, shared by every
//! coordinator: a token sealed by one opens at all of them. A token naming a
//! key this coordinator has not seen yet (just rotated elsewhere) makes it
//! reload the keys, at most once a second.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_ring::context::{self, TokenError};
use cohort_ring::{CausalContext, ContextKey};

use crate::metadata::{MetadataError, MetadataStore};

/// Least time between two reloads caused by unknown key ids.
const RELOAD_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// The context keys of the cluster, cached.
pub struct ContextSeals {
    metadata: Arc<dyn MetadataStore>,
    /// Oldest first, never empty. A std lock: never held across an await.
    keys: RwLock<Vec<ContextKey>>,
    /// When a token last made this coordinator reload the keys.
    last_reload: Mutex<Option<Instant>>,
}

impl ContextSeals {
    /// Loads the keys (creating the first one if the cluster has none).
    pub async fn load(metadata: Arc<dyn MetadataStore>) -> Result<Self, MetadataError> {
        let keys = fetch(metadata.as_ref()).await?;
        Ok(ContextSeals { metadata, keys: RwLock::new(keys), last_reload: Mutex::new(None) })
    }

    /// Reads the keys again, to learn of a rotation.
    pub async fn reload(&self) -> Result<(), MetadataError> {
        let keys = fetch(self.metadata.as_ref()).await?;
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
        Ok(())
    }

    /// The id of the key that seals new tokens.
    pub fn current_key_id(&self) -> u32 {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).last().map_or(0, |k| k.id)
    }

    /// The token for `clock` on `(tenant, key)`.
    pub fn seal(&self, clock: &CausalContext, tenant: &str, key: &[u8]) -> Bytes {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let newest = keys.last().expect("loaded with at least one key");
        Bytes::from(context::seal(clock, tenant, key, newest))
    }

    /// The clock inside `token`, if it was sealed by this cluster for
    /// `(tenant, key)`.
    pub async fn open(&self, token: &[u8], tenant: &str, key: &[u8]) -> Result<CausalContext, TokenError> {
        match self.open_with_cached(token, tenant, key) {
            Err(TokenError::UnknownKey(id)) if id > self.current_key_id() && self.may_reload() => {
                if let Err(error) = self.reload().await {
                    tracing::warn!(%error, "could not reload context keys");
                }
                self.open_with_cached(token, tenant, key)
            }
            other => other,
        }
    }

    fn open_with_cached(&self, token: &[u8], tenant: &str, key: &[u8]) -> Result<CausalContext, TokenError> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        context::open(token, tenant, key, |id| keys.iter().find(|k| k.id == id).cloned())
    }

    fn may_reload(&self) -> bool {
        let mut last = self.last_reload.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < RELOAD_AT_MOST_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }
}

async fn fetch(metadata: &dyn MetadataStore) -> Result<Vec<ContextKey>, MetadataError> {
    let keys = metadata.context_keys().await?;
    if keys.is_empty() {
        return Err(MetadataError::Unavailable("the metadata store returned no context keys".into()));
    }
    Ok(keys)
}
