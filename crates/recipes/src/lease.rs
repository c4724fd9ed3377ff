//! Leases: a TTL judged by the serving coordinator's clock, renewed only by
//! its holder's keep-alive, never by the cluster on its own. A lease lives
//! in one register; an expired lease is as good as gone (locks held under
//! it are free), and is deleted by whoever notices.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{Clock, Limits, RecipeError, Registers, Written, keys, read, write};

/// A lease's register value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseState {
    /// Its TTL, in milliseconds.
    pub ttl_ms: u64,
    /// When it expires, in milliseconds since the epoch.
    pub expires_at_ms: u64,
}

impl LeaseState {
    /// Whether the lease is live at `now_ms`.
    pub fn live_at(&self, now_ms: u64) -> bool {
        now_ms < self.expires_at_ms
    }

    fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("a lease encodes"))
    }

    fn decode(bytes: &[u8]) -> Result<Self, RecipeError> {
        serde_json::from_slice(bytes).map_err(|e| RecipeError::Registers(format!("lease record unreadable: {e}")))
    }
}

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Its id.
    pub id: u64,
    /// Its TTL.
    pub ttl: Duration,
}

/// Checks a TTL (`None`: the default).
pub fn check_ttl(ttl: Option<Duration>, limits: &Limits) -> Result<Duration, RecipeError> {
    let ttl = ttl.unwrap_or(limits.default_ttl);
    if ttl.is_zero() || ttl > limits.max_ttl {
        return Err(RecipeError::InvalidArgument(format!(
            "a lease's TTL must be above 0 and at most {}s, not {}ms",
            limits.max_ttl.as_secs(),
            ttl.as_millis()
        )));
    }
    Ok(ttl)
}

/// Grants a new lease of `ttl` (the default when `None`).
pub async fn grant(
    registers: &dyn Registers,
    clock: &dyn Clock,
    tenant: &str,
    ttl: Option<Duration>,
    limits: &Limits,
) -> Result<Lease, RecipeError> {
    let ttl = check_ttl(ttl, limits)?;
    loop {
        // Nonzero, and below 2^53 so that JSON clients read it exactly.
        let id = rand::random::<u64>() % ((1 << 53) - 1) + 1;
        let state =
            LeaseState { ttl_ms: ttl.as_millis() as u64, expires_at_ms: clock.now_ms() + ttl.as_millis() as u64 };
        if let Written::Applied(_) = write(registers, tenant, &keys::lease(id), 0, Some(state.encode())).await? {
            return Ok(Lease { id, ttl });
        }
        // That id was taken (it never is in practice): draw another.
    }
}

/// The lease's state and its register version, if it exists and is live.
pub async fn live(
    registers: &dyn Registers,
    clock: &dyn Clock,
    tenant: &str,
    id: u64,
) -> Result<Option<(LeaseState, u64)>, RecipeError> {
    let register = read(registers, tenant, &keys::lease(id)).await?;
    let Some(value) = &register.value else { return Ok(None) };
    let state = LeaseState::decode(value)?;
    Ok(state.live_at(clock.now_ms()).then_some((state, register.version)))
}

fn not_found(id: u64) -> RecipeError {
    RecipeError::NotFound(format!("lease {id} not found: it expired, was revoked or never existed"))
}

/// Renews lease `id` for another TTL from now; fails if it has expired.
pub async fn keep_alive(
    registers: &dyn Registers,
    clock: &dyn Clock,
    tenant: &str,
    id: u64,
) -> Result<Lease, RecipeError> {
    loop {
        let Some((state, version)) = live(registers, clock, tenant, id).await? else { return Err(not_found(id)) };
        let renewed = LeaseState { ttl_ms: state.ttl_ms, expires_at_ms: clock.now_ms() + state.ttl_ms };
        if let Written::Applied(_) = write(registers, tenant, &keys::lease(id), version, Some(renewed.encode())).await?
        {
            return Ok(Lease { id, ttl: Duration::from_millis(state.ttl_ms) });
        }
    }
}

/// Revokes lease `id` at once: every lock held under it is free.
pub async fn revoke(registers: &dyn Registers, clock: &dyn Clock, tenant: &str, id: u64) -> Result<(), RecipeError> {
    // A revoke whose write's outcome was unknown: if the lease is gone when
    // read again, that revoke did it.
    let mut maybe_revoked = false;
    loop {
        let Some((_, version)) = live(registers, clock, tenant, id).await? else {
            return if maybe_revoked { Ok(()) } else { Err(not_found(id)) };
        };
        match write(registers, tenant, &keys::lease(id), version, None).await? {
            Written::Applied(_) => return Ok(()),
            Written::Unknown => maybe_revoked = true,
            Written::Lost => {}
        }
    }
}
