//! Leader election among coordinators, over the metadata store's lease.
//!
//! Every coordinator runs [`run`]: it tries to take or renew the lease every
//! third of its length. The holder is the leader and runs the cluster-wide
//! jobs; the lease's generation is their fencing token. A leader steps down —
//! stopping its jobs — as soon as it is refused a renewal, or when it could
//! not renew before its own conservative view of the lease's expiry (measured
//! on its monotonic clock from the moment it *sent* the last successful
//! renewal), so two coordinators never both believe they lead for longer
//! than clock drift within one lease.
//!
//! With embedded metadata there is one coordinator, which always wins.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metadata::MetadataStore;

/// This coordinator's view of leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaderState {
    /// Whether this coordinator leads.
    pub leader: bool,
    /// The lease generation it leads under (0 when it never led).
    pub generation: u64,
}

/// Starts the leader-only jobs for a generation; they are aborted when
/// leadership is lost.
pub type Jobs = Arc<dyn Fn(u64) -> Vec<JoinHandle<()>> + Send + Sync>;

/// Aborts the jobs it holds when dropped.
struct Running(Vec<JoinHandle<()>>);

impl Drop for Running {
    fn drop(&mut self) {
        for job in &self.0 {
            job.abort();
        }
    }
}

fn publish(state: &watch::Sender<LeaderState>, next: LeaderState) {
    metrics::gauge!("cohort_leader").set(if next.leader { 1.0 } else { 0.0 });
    metrics::gauge!("cohort_leader_generation").set(next.generation as f64);
    state.send_replace(next);
}

/// Runs the election for `holder` until `stop` turns true, then gives the
/// lease up if it holds it.
pub async fn run(
    metadata: Arc<dyn MetadataStore>,
    holder: String,
    ttl: Duration,
    state: watch::Sender<LeaderState>,
    jobs: Jobs,
    mut stop: watch::Receiver<bool>,
) {
    let renew_every = ttl / 3;
    let mut running: Option<Running> = None;
    let mut deadline = Instant::now();
    loop {
        let sent = Instant::now();
        let attempt = tokio::time::timeout(renew_every, metadata.acquire_lease(&holder, ttl)).await;
        let current = *state.borrow();
        match attempt {
            Ok(Ok(Some(generation))) => {
                deadline = sent + ttl.mul_f64(0.9);
                if !current.leader || current.generation != generation {
                    drop(running.take());
                    tracing::info!(%holder, generation, "became leader");
                    running = Some(Running(jobs(generation)));
                    publish(&state, LeaderState { leader: true, generation });
                }
            }
            Ok(Ok(None)) => {
                if current.leader {
                    tracing::warn!(%holder, generation = current.generation, "lost the leader lease; stopping leader jobs");
                    running = None;
                    publish(&state, LeaderState { leader: false, ..current });
                }
            }
            Ok(Err(error)) => tracing::warn!(%error, "leader lease renewal failed"),
            Err(_) => tracing::warn!("leader lease renewal timed out"),
        }
        let current = *state.borrow();
        if current.leader && Instant::now() >= deadline {
            tracing::warn!(%holder, generation = current.generation, "could not renew the leader lease in time; stepping down");
            running = None;
            publish(&state, LeaderState { leader: false, ..current });
        }
        let wake = if current.leader {
            renew_every.min(deadline.saturating_duration_since(Instant::now()))
        } else {
            renew_every
        };
        tokio::select! {
            _ = tokio::time::sleep(wake) => {}
            _ = stop.wait_for(|stopped| *stopped) => break,
        }
    }
    drop(running);
    if state.borrow().leader {
        if let Err(error) = metadata.release_lease(&holder).await {
            tracing::warn!(%error, "could not release the leader lease; it will expire");
        }
        let current = *state.borrow();
        publish(&state, LeaderState { leader: false, ..current });
    }
}
