//! A TTL cache of tenants in front of the metadata store.
//!
//! A fresh entry is served from memory; a stale one is re-read. When the
//! metadata store cannot be reached, the last known tenant keeps serving (a
//! degraded but available coordinator beats an outage). Changes made through
//! this coordinator invalidate the entry *after* the metadata write succeeds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::KvError;
use crate::metadata::{MetadataError, MetadataStore, Tenant};

/// Cached tenants.
pub struct TenantCache {
    metadata: Arc<dyn MetadataStore>,
    ttl: Duration,
    /// A std mutex: only held to look up or insert.
    entries: Mutex<HashMap<String, (Tenant, Instant)>>,
}

impl TenantCache {
    /// A cache whose entries are fresh for `ttl`.
    pub fn new(metadata: Arc<dyn MetadataStore>, ttl: Duration) -> Self {
        TenantCache { metadata, ttl, entries: Mutex::new(HashMap::new()) }
    }

    /// The tenant `id`, from cache when fresh.
    pub async fn get(&self, id: &str) -> Result<Tenant, KvError> {
        let cached = self.entries.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned();
        if let Some((tenant, loaded)) = &cached
            && loaded.elapsed() < self.ttl
        {
            metrics::counter!("cohort_tenant_cache_total", "result" => "hit").increment(1);
            return Ok(tenant.clone());
        }
        metrics::counter!("cohort_tenant_cache_total", "result" => "miss").increment(1);
        match self.metadata.get_tenant(id).await {
            Ok(tenant) => {
                self.entries
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.to_string(), (tenant.clone(), Instant::now()));
                Ok(tenant)
            }
            Err(MetadataError::TenantNotFound(_)) => {
                self.invalidate(id);
                Err(KvError::TenantNotFound(id.to_string()))
            }
            Err(error) => match cached {
                Some((tenant, _)) => {
                    tracing::warn!(%error, tenant = id, "metadata unreachable; serving cached tenant");
                    Ok(tenant)
                }
                None => Err(KvError::DependencyUnavailable(error.to_string())),
            },
        }
    }

    /// Forgets every tenant (after missed change notices).
    pub fn clear(&self) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Forgets `id`, so the next request reads it again.
    pub fn invalidate(&self, id: &str) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}
