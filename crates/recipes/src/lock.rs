//! Locks held under a lease, with FIFO waiters and fencing tokens; an
//! election is a lock whose holder proclaims a value.
//!
//! A lock is one register: its holder (a lease and the token it was granted
//! with), the waiters in arrival order (each with its lease and the moment
//! its wait ends) and the holder's proclaimed value. Every change is a
//! compare-and-set on the version read, so two grants can never both
//! succeed. The **fencing token** of a grant is the version the grant
//! wrote: versions only grow, so tokens strictly increase per lock, across
//! coordinator restarts and failovers, with nothing to keep in step.
//!
//! A holder whose lease has expired holds nothing: the next acquirer (or
//! a waiter looking again) grants the lock to the first waiter whose lease
//! is live and whose wait has not ended — a waiter whose wait ended is
//! never granted — or takes it itself.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::lease::{self, Lease};
use crate::{Clock, Limits, RecipeError, Registers, Written, keys, read, write};

/// How often a waiter looks at the lock again.
const POLL: Duration = Duration::from_millis(20);

/// A lock's holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The lease it holds the lock under.
    pub lease: u64,
    /// Its fencing token (the election's generation).
    pub token: u64,
}

/// A waiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    /// The lease it waits under.
    pub lease: u64,
    /// When its wait ends, in milliseconds since the epoch.
    pub until_ms: u64,
}

/// A lock's register value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockState {
    /// The holder, if any (its lease may have expired since).
    pub holder: Option<Holder>,
    /// Waiters, first come first.
    pub waiters: Vec<Waiter>,
    /// The holder's proclaimed value (elections).
    #[serde(default)]
    pub value: Option<Vec<u8>>,
}

impl LockState {
    fn decode(register: &cohort_paxos::Register) -> Result<Self, RecipeError> {
        match &register.value {
            None => Ok(LockState::default()),
            Some(bytes) => serde_json::from_slice(bytes)
                .map_err(|e| RecipeError::Registers(format!("lock record unreadable: {e}"))),
        }
    }

    fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("a lock encodes"))
    }
}

/// A granted lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The fencing token.
    pub token: u64,
    /// The lease it is held under.
    pub lease: u64,
}

/// The lock's live holder and its value, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// The holder.
    pub holder: Holder,
    /// What it proclaimed.
    pub value: Option<Vec<u8>>,
}

/// Checks a lock or election name.
pub fn check_name(name: &str, limits: &Limits) -> Result<(), RecipeError> {
    if name.is_empty() || name.len() > limits.max_name_bytes {
        return Err(RecipeError::InvalidArgument(format!(
            "a lock or election name is 1..={} bytes, not {}",
            limits.max_name_bytes,
            name.len()
        )));
    }
    Ok(())
}

/// Whether lease `id` is live now.
async fn lease_live(registers: &dyn Registers, clock: &dyn Clock, tenant: &str, id: u64) -> Result<bool, RecipeError> {
    Ok(lease::live(registers, clock, tenant, id).await?.is_some())
}

/// The lock's register, decoded.
async fn load(registers: &dyn Registers, tenant: &str, name: &str) -> Result<(LockState, u64), RecipeError> {
    let register = read(registers, tenant, &keys::lock(name)).await?;
    Ok((LockState::decode(&register)?, register.version))
}

/// Drops, from the front of the queue, waiters whose wait has ended or
/// whose lease is gone; returns the first one left (not removed).
async fn first_live_waiter(
    registers: &dyn Registers,
    clock: &dyn Clock,
    tenant: &str,
    state: &mut LockState,
) -> Result<Option<Waiter>, RecipeError> {
    while let Some(first) = state.waiters.first().copied() {
        if first.until_ms > clock.now_ms() && lease_live(registers, clock, tenant, first.lease).await? {
            return Ok(Some(first));
        }
        state.waiters.remove(0);
    }
    Ok(None)
}

/// Acquires lock `name` under `lease`. Without `wait`, fails at once with
/// `FailedPrecondition` if a live lease holds it; with one, queues (FIFO)
/// and waits that long at most. Acquiring a lock the lease already holds
/// returns its grant again.
pub async fn acquire(
    registers: &dyn Registers,
    clock: &dyn Clock,
    tenant: &str,
    name: &str,
    lease: u64,
    wait: Option<Duration>,
    limits: &Limits,
) -> Result<Grant, RecipeError> {
    check_name(name, limits)?;
    if let Some(wait) = wait
        && wait > limits.max_wait
    {
        return Err(RecipeError::InvalidArgument(format!(
            "a wait is at most {}s, not {}s",
            limits.max_wait.as_secs(),
            wait.as_secs()
        )));
    }
    let until_ms = wait.map(|w| clock.now_ms() + w.as_millis() as u64);
    let key = keys::lock(name);
    loop {
        let (mut state, version) = load(registers, tenant, name).await?;
        let now = clock.now_ms();
        let expired = until_ms.is_some_and(|until| now >= until);
        if let Some(holder) = state.holder {
            if holder.lease == lease {
                if !lease_live(registers, clock, tenant, lease).await? {
                    return Err(lease_gone(lease));
                }
                return Ok(Grant { token: holder.token, lease });
            }
            if lease_live(registers, clock, tenant, holder.lease).await? {
                // Held. Queue, or wait on, or give up.
                let Some(until) = until_ms else {
                    return Err(RecipeError::FailedPrecondition(format!(
                        "lock {name:?} is held (token {}); pass a wait to queue for it",
                        holder.token
                    )));
                };
                let queued = state.waiters.iter().any(|w| w.lease == lease);
                if expired {
                    if !queued {
                        return Err(waited_out(name, wait));
                    }
                    state.waiters.retain(|w| w.lease != lease);
                    write(registers, tenant, &key, version, Some(state.encode())).await?;
                    continue;
                }
                if !queued {
                    if state.waiters.len() >= limits.max_waiters {
                        return Err(RecipeError::ResourceExhausted(format!(
                            "lock {name:?} already has {} waiters, the most it takes",
                            limits.max_waiters
                        )));
                    }
                    if !lease_live(registers, clock, tenant, lease).await? {
                        return Err(lease_gone(lease));
                    }
                    state.waiters.push(Waiter { lease, until_ms: until });
                    write(registers, tenant, &key, version, Some(state.encode())).await?;
                    continue;
                }
                let left = Duration::from_millis(until.saturating_sub(now));
                tokio::time::sleep(POLL.min(left)).await;
                continue;
            }
        }
        // Free: its holder's lease is gone, or it never had one.
        let next = first_live_waiter(registers, clock, tenant, &mut state).await?;
        let granted = match next {
            Some(waiter) if waiter.lease != lease => waiter.lease,
            _ if expired => {
                state.waiters.retain(|w| w.lease != lease);
                write(registers, tenant, &key, version, Some(state.encode())).await?;
                return Err(waited_out(name, wait));
            }
            _ => {
                // Re-validated at the moment of the grant.
                if !lease_live(registers, clock, tenant, lease).await? {
                    return Err(lease_gone(lease));
                }
                lease
            }
        };
        state.waiters.retain(|w| w.lease != granted);
        state.holder = Some(Holder { lease: granted, token: version + 1 });
        state.value = None;
        if let Written::Applied(token) = write(registers, tenant, &key, version, Some(state.encode())).await?
            && granted == lease
        {
            return Ok(Grant { token, lease });
        }
        // Lost the race, or handed the lock to the waiter ahead: look again.
    }
}

fn lease_gone(lease: u64) -> RecipeError {
    RecipeError::NotFound(format!("lease {lease} not found: it expired, was revoked or never existed"))
}

fn waited_out(name: &str, wait: Option<Duration>) -> RecipeError {
    RecipeError::DeadlineExceeded(format!(
        "waited {}ms for lock {name:?} without a grant; not queued any more",
        wait.unwrap_or_default().as_millis()
    ))
}

/// Releases lock `name` held under `lease`, handing it to the first live
/// waiter.
pub async fn release(
    registers: &dyn Registers,
    clock: &dyn Clock,
    tenant: &str,
    name: &str,
    lease: u64,
    limits: &Limits,
) -> Result<(), RecipeError> {
    check_name(name, limits)?;
    let key = keys::lock(name);
    // A release whose write's outcome was unknown: if the lease no longer
    // holds the lock when read again, that release did it.
    let mut maybe_released = false;
    loop {
        let (mut state, version) = load(registers, tenant, name).await?;
        if version == 0 {
            return Err(RecipeError::NotFound(format!("lock {name:?} does not exist")));
        }
        match state.holder {
            Some(holder) if holder.lease == lease => {}
            _ if maybe_released => return Ok(()),
            _ => {
                return Err(RecipeError::FailedPrecondition(format!("lease {lease} does not hold lock {name:?}")));
            }
        }
        state.value = None;
        state.holder = first_live_waiter(registers, clock, tenant, &mut state)
            .await?
            .map(|waiter| Holder { lease: waiter.lease, token: version + 1 });
        if let Some(holder) = state.holder {
            state.waiters.retain(|w| w.lease != holder.lease);
        }
        match write(registers, tenant, &key, version, Some(state.encode())).await? {
            Written::Applied(_) => return Ok(()),
            Written::Unknown => maybe_released = true,
            Written::Lost => {}
        }
    }
}

/// Keeps the lease of lock `name`'s holder alive; fails unless `lease`
/// holds it.
pub async fn renew(
    registers: &dyn Registers,
    clock: &dyn Clock,
    tenant: &str,
    name: &str,
    lease: u64,
    limits: &Limits,
) -> Result<Lease, RecipeError> {
    check_name(name, limits)?;
    let (state, version) = load(registers, tenant, name).await?;
    if version == 0 {
        return Err(RecipeError::NotFound(format!("lock {name:?} does not exist")));
    }
    if state.holder.is_none_or(|holder| holder.lease != lease) {
        return Err(RecipeError::FailedPrecondition(format!("lease {lease} does not hold lock {name:?}")));
    }
    lease::keep_alive(registers, clock, tenant, lease).await
}

/// The lock's holder, if its lease is live, and what it proclaimed.
pub async fn leader(
    registers: &dyn Registers,
    clock: &dyn Clock,
    tenant: &str,
    name: &str,
    limits: &Limits,
) -> Result<Option<Leader>, RecipeError> {
    check_name(name, limits)?;
    let (state, _) = load(registers, tenant, name).await?;
    match state.holder {
        Some(holder) if lease_live(registers, clock, tenant, holder.lease).await? => {
            Ok(Some(Leader { holder, value: state.value }))
        }
        _ => Ok(None),
    }
}

/// The holder (under `lease`) proclaims `value`.
pub async fn proclaim(
    registers: &dyn Registers,
    clock: &dyn Clock,
    tenant: &str,
    name: &str,
    lease: u64,
    value: Vec<u8>,
    limits: &Limits,
) -> Result<u64, RecipeError> {
    check_name(name, limits)?;
    if value.len() > limits.max_value_bytes {
        return Err(RecipeError::InvalidArgument(format!(
            "a proclaimed value is at most {} bytes",
            limits.max_value_bytes
        )));
    }
    let key = keys::lock(name);
    loop {
        let (mut state, version) = load(registers, tenant, name).await?;
        let holder = match state.holder {
            Some(holder) if holder.lease == lease && lease_live(registers, clock, tenant, lease).await? => holder,
            _ => {
                return Err(RecipeError::FailedPrecondition(format!("lease {lease} does not lead {name:?}")));
            }
        };
        state.value = Some(value.clone());
        if let Written::Applied(_) = write(registers, tenant, &key, version, Some(state.encode())).await? {
            return Ok(holder.token);
        }
    }
}

/// A bound on the tokens lock `name` has issued: every grant's token is
/// the version it wrote, and versions only grow, so no token above the
/// lock's version was ever issued. 0: the lock never existed.
pub async fn issued_bound(registers: &dyn Registers, tenant: &str, name: &str) -> Result<u64, RecipeError> {
    Ok(load(registers, tenant, name).await?.1)
}

#[cfg(test)]
mod tests;
