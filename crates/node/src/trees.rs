//! The node's anti-entropy hash trees, one per tenant, kept in memory.
//!
//! A tree is [`cohort_ring::merkle::LEAVES`] leaf hashes; each leaf is the
//! XOR of the key hashes ([`cohort_ring::merkle::key_hash`]) of the tenant's
//! keys whose token falls in it. The store toggles a key's old hash out and
//! its new one in whenever it changes the key's state, under the key's
//! stripe lock and right after the change is appended, so a tree always
//! describes what the store holds. XOR needs no ordering: leaves are atomics
//! updated without a lock.
//!
//! Trees are rebuilt from the data whenever the store opens: after a crash
//! (or a directory changed by hand while the node was stopped) nothing in
//! memory can be stale, and a clean shutdown costs nothing to record.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use cohort_ring::Token;
use cohort_ring::merkle::{LEAVES, leaf_of};

type Leaves = Arc<[AtomicU64]>;

/// Per-tenant leaf hashes.
#[derive(Default)]
pub struct RepairTrees {
    tenants: RwLock<HashMap<String, Leaves>>,
}

impl RepairTrees {
    /// Toggles `hash` in (or out of) the leaf of `token` in `tenant`'s tree.
    pub fn toggle(&self, tenant: &str, token: Token, hash: u64) {
        self.leaves(tenant)[leaf_of(token)].fetch_xor(hash, Ordering::Relaxed);
    }

    /// The hash of leaf `leaf` of `tenant`'s tree (0: no key there).
    pub fn leaf(&self, tenant: &str, leaf: usize) -> u64 {
        let tenants = self.tenants.read().unwrap_or_else(|p| p.into_inner());
        tenants.get(tenant).map_or(0, |leaves| leaves[leaf].load(Ordering::Relaxed))
    }

    fn leaves(&self, tenant: &str) -> Leaves {
        if let Some(leaves) = self.tenants.read().unwrap_or_else(|p| p.into_inner()).get(tenant) {
            return leaves.clone();
        }
        let mut tenants = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        tenants.entry(tenant.to_string()).or_insert_with(|| (0..LEAVES).map(|_| AtomicU64::new(0)).collect()).clone()
    }
}
