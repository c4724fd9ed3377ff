//! Leader election among coordinators, over the metadata store's lease.
//!
//! Every coordinator runs an [`Election`] worker: it tries to take or renew
//! the lease every third of its length. The holder is the leader and runs the cluster-wide
//! jobs ([`Jobs`]).
//!
//! **What the lease guarantees.** A leader's deadline is 0.9 × the lease's
//! length after it *sent* its last successful renewal, on its monotonic
//! clock; the store counts the lease from when it *received* that renewal, on
//! its own clock. Every renewal attempt is bounded by the time left until
//! the deadline, so a leader stops its jobs and publishes that it no longer
//! leads by its deadline — when it is refused a renewal, when the store
//! fails, and also while an attempt hangs on a stalled store. The lease
//! passes to another coordinator only after the store's expiry, so two
//! coordinators never both believe they lead unless a clock runs more than
//! a tenth slower than the other over one lease.
//!
//! **What the generation fences.** Belief is not enough for writes: a
//! process paused past its deadline acts before it can notice. The lease's
//! generation grows with every change of hands; every job is started with
//! the generation it leads under and passes it to each of its metadata
//! writes (e.g. [`MetadataStore::record_node_health`]), which the store
//! applies, atomically with the check, only while the lease is live at that
//! generation, and refuses otherwise with
//! [`MetadataError::Fenced`](crate::metadata::MetadataError::Fenced). A
//! deposed leader cannot change metadata once another coordinator may lead.
//!
//! **Who holds it.** The holder is `{coordinator id}/{instance}`, the
//! instance drawn at every start ([`holder_for`]): a coordinator restarted
//! under the same id is a new holder and leads under a new generation. (With
//! the bare id, a restarted process renewed its predecessor's lease under
//! the same generation, so a paused predecessor that resumed would have
//! passed the fence too.)
//!
//! With embedded metadata there is one coordinator, which always wins.

use std::sync::Arc;
use std::time::Duration;

use cohort_worker::{Step, Worker, WorkerStatuses, Workers};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::async_trait;

use crate::metadata::MetadataStore;

/// The part of the lease's length after which a leader that could not renew
/// steps down, counted from when it sent its last successful renewal. The
/// store counts the lease from when it received that renewal, later.
const DEADLINE_FRACTION: f64 = 0.9;

/// This coordinator's view of leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaderState {
    /// Whether this coordinator leads.
    pub leader: bool,
    /// The lease generation it leads under (0 when it never led).
    pub generation: u64,
}

/// Starts the leader-only jobs for a generation, which each job passes to
/// its metadata writes so that the store fences them; the jobs are aborted
/// when leadership is lost.
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

/// The election for one coordinator, a [`Worker`]: each step is one attempt
/// to take or renew the lease (and to step down when the deadline passed);
/// it waits a third of the lease between attempts, and wakes at the
/// deadline at the latest. Stopped, it gives the lease up if it holds it.
pub struct Election {
    metadata: Arc<dyn MetadataStore>,
    holder: String,
    ttl: Duration,
    state: watch::Sender<LeaderState>,
    jobs: Jobs,
    running: Option<Running>,
    /// When this coordinator must consider itself deposed, if it leads.
    deadline: Instant,
}

/// The lease holder of coordinator `id` for this process: the id and an
/// instance drawn now.
pub fn holder_for(id: &str) -> String {
    format!("{id}/{:08x}", rand::random::<u32>())
}

/// The coordinator id of lease holder `holder`.
pub fn coordinator_of(holder: &str) -> &str {
    holder.rsplit_once('/').map_or(holder, |(id, _)| id)
}

impl Election {
    /// The election for `holder` over leases of `ttl`, publishing into
    /// `state` and starting `jobs` for every generation it wins.
    pub fn new(
        metadata: Arc<dyn MetadataStore>,
        holder: String,
        ttl: Duration,
        state: watch::Sender<LeaderState>,
        jobs: Jobs,
    ) -> Self {
        Election { metadata, holder, ttl, state, jobs, running: None, deadline: Instant::now() }
    }

    fn renew_every(&self) -> Duration {
        self.ttl / 3
    }
}

#[async_trait]
impl Worker for Election {
    fn name(&self) -> &'static str {
        "leader-election"
    }

    async fn work(&mut self) -> Result<Step, String> {
        let (holder, state) = (&self.holder, &self.state);
        let current = *state.borrow();
        if current.leader && Instant::now() >= self.deadline {
            tracing::warn!(%holder, generation = current.generation, "could not renew the leader lease in time; stepping down");
            self.running = None;
            publish(state, LeaderState { leader: false, ..current });
        }
        let leading = state.borrow().leader;
        let sent = Instant::now();
        // A leader's attempt may not outlast its own deadline: a stalled
        // store must not keep it believing it leads.
        let renew_every = self.renew_every();
        let budget = if leading { renew_every.min(self.deadline.saturating_duration_since(sent)) } else { renew_every };
        let attempt = tokio::time::timeout(budget, self.metadata.acquire_lease(holder, self.ttl)).await;
        let current = *state.borrow();
        match attempt {
            Ok(Ok(Some(generation))) => {
                self.deadline = sent + self.ttl.mul_f64(DEADLINE_FRACTION);
                if !current.leader || current.generation != generation {
                    drop(self.running.take());
                    tracing::info!(%holder, generation, "became leader");
                    self.running = Some(Running((self.jobs)(generation)));
                    publish(state, LeaderState { leader: true, generation });
                }
                Ok(Step::Idle)
            }
            Ok(Ok(None)) => {
                if current.leader {
                    tracing::warn!(%holder, generation = current.generation, "lost the leader lease; stopping leader jobs");
                    self.running = None;
                    publish(state, LeaderState { leader: false, ..current });
                }
                Ok(Step::Idle)
            }
            Ok(Err(error)) => Err(format!("leader lease renewal failed: {error}")),
            Err(_) => Err(format!("leader lease renewal timed out after {} ms", budget.as_millis())),
        }
    }

    /// Wakes at the deadline at the latest; the next step then steps down.
    async fn wait_for_work(&mut self) {
        let wake = if self.state.borrow().leader {
            self.renew_every().min(self.deadline.saturating_duration_since(Instant::now()))
        } else {
            self.renew_every()
        };
        tokio::time::sleep(wake).await;
    }

    /// Stops the jobs and gives the lease up, so another coordinator leads
    /// at once.
    async fn finish(&mut self) {
        drop(self.running.take());
        if self.state.borrow().leader {
            // Bounded like a renewal: a stalled store must not hold up shutdown.
            match tokio::time::timeout(self.renew_every(), self.metadata.release_lease(&self.holder)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "could not release the leader lease; it will expire"),
                Err(_) => tracing::warn!("releasing the leader lease timed out; it will expire"),
            }
            let current = *self.state.borrow();
            publish(&self.state, LeaderState { leader: false, ..current });
        }
    }
}

/// Runs the election for `holder` on a runner of its own until `stop`
/// turns true (also in the middle of an attempt), then gives the lease up
/// if it holds it.
pub async fn run(
    metadata: Arc<dyn MetadataStore>,
    holder: String,
    ttl: Duration,
    state: watch::Sender<LeaderState>,
    jobs: Jobs,
    mut stop: watch::Receiver<bool>,
) {
    let mut workers = Workers::new(WorkerStatuses::default());
    workers.spawn(Election::new(metadata, holder, ttl, state, jobs));
    let _ = stop.wait_for(|stopped| *stopped).await;
    workers.shutdown(ttl).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tonic::async_trait;

    use super::*;

    /// A coordinator restarted under the same id is another holder: it
    /// cannot renew its predecessor's lease under the same generation.
    #[test]
    fn every_start_is_a_new_holder_of_the_same_coordinator() {
        let (first, second) = (holder_for("c1"), holder_for("c1"));
        assert_ne!(first, second);
        assert_eq!((coordinator_of(&first), coordinator_of(&second)), ("c1", "c1"));
        assert_eq!(coordinator_of("plain"), "plain");
    }
    use crate::metadata::{
        Checkpoint, Lease, MetadataError, Migration, NodeHealth, NodeProbe, NodeRecord, RingChange, RingHistory,
        RingStep, Tenant, TenantSettings,
    };

    const TTL: Duration = Duration::from_secs(3);
    const GENERATION: u64 = 7;

    /// What the scripted store does with one lease attempt.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// Grants it, answering after this long.
        Grant(Duration),
        /// Fails it at once, as on a dropped connection.
        Fail,
    }

    /// A lease store that plays a script of answers and then stalls: every
    /// later call hangs forever, as on a blackholed connection.
    struct ScriptedLease {
        script: Mutex<std::collections::VecDeque<Step>>,
        /// When each granted attempt was sent.
        granted: Mutex<Vec<Instant>>,
    }

    impl ScriptedLease {
        fn new(script: &[Step]) -> Arc<Self> {
            Arc::new(ScriptedLease { script: Mutex::new(script.iter().copied().collect()), granted: Mutex::default() })
        }

        fn last_granted(&self) -> Instant {
            *self.granted.lock().unwrap().last().expect("a renewal was granted")
        }
    }

    #[async_trait]
    impl MetadataStore for ScriptedLease {
        async fn acquire_lease(&self, _holder: &str, _ttl: Duration) -> Result<Option<u64>, MetadataError> {
            let sent = Instant::now();
            let step = self.script.lock().unwrap().pop_front();
            match step {
                Some(Step::Grant(latency)) => {
                    tokio::time::sleep(latency).await;
                    self.granted.lock().unwrap().push(sent);
                    Ok(Some(GENERATION))
                }
                Some(Step::Fail) => Err(MetadataError::Unavailable("connection closed".into())),
                None => std::future::pending().await,
            }
        }

        async fn release_lease(&self, _holder: &str) -> Result<(), MetadataError> {
            std::future::pending().await
        }

        async fn create_tenant(&self, _: &str, _: TenantSettings) -> Result<Tenant, MetadataError> {
            unreachable!("the election uses only the lease")
        }
        async fn get_tenant(&self, _: &str) -> Result<Tenant, MetadataError> {
            unreachable!("the election uses only the lease")
        }
        async fn list_tenants(&self) -> Result<Vec<Tenant>, MetadataError> {
            unreachable!("the election uses only the lease")
        }
        async fn update_tenant(&self, _: &str, _: u64, _: TenantSettings) -> Result<Tenant, MetadataError> {
            unreachable!("the election uses only the lease")
        }
        async fn upsert_node(&self, _: NodeRecord) -> Result<NodeRecord, MetadataError> {
            unreachable!("the election uses only the lease")
        }
        async fn list_nodes(&self) -> Result<Vec<NodeRecord>, MetadataError> {
            unreachable!("the election uses only the lease")
        }
        async fn ring_version(&self) -> Result<u64, MetadataError> {
            unreachable!("the election uses only the lease")
        }
        async fn topology_stamp(&self) -> Result<u64, MetadataError> {
            unreachable!("the election uses only the lease")
        }
        async fn ring_history(&self) -> Result<RingHistory, MetadataError> {
            unreachable!("the election uses only the lease")
        }
        async fn propose_ring_change(&self, _: RingChange) -> Result<(u64, Option<Migration>), MetadataError> {
            unreachable!("the election uses only the lease")
        }
        async fn migrations(&self) -> Result<Vec<Migration>, MetadataError> {
            unreachable!("the election uses only the lease")
        }
        async fn migration(&self, _: u64) -> Result<Migration, MetadataError> {
            unreachable!("the election uses only the lease")
        }
        async fn request_cancel(&self, _: u64) -> Result<Migration, MetadataError> {
            unreachable!("the election uses only the lease")
        }
        async fn update_migration(&self, _: u64, _: &Migration) -> Result<(), MetadataError> {
            unreachable!("the election uses only the lease")
        }
        async fn step_ring(&self, _: u64, _: &Migration, _: RingStep) -> Result<(), MetadataError> {
            unreachable!("the election uses only the lease")
        }
        async fn checkpoints(&self, _: u64) -> Result<Vec<Checkpoint>, MetadataError> {
            unreachable!("the election uses only the lease")
        }
        async fn save_checkpoints(&self, _: u64, _: u64, _: &[Checkpoint]) -> Result<(), MetadataError> {
            unreachable!("the election uses only the lease")
        }
        async fn current_lease(&self) -> Result<Option<Lease>, MetadataError> {
            unreachable!("the election uses only the lease")
        }
        async fn record_node_health(&self, _: u64, _: &[NodeProbe]) -> Result<(), MetadataError> {
            unreachable!("the election uses only the lease")
        }
        async fn node_health(&self) -> Result<Vec<NodeHealth>, MetadataError> {
            unreachable!("the election uses only the lease")
        }
        async fn context_keys(&self) -> Result<Vec<cohort_ring::ContextKey>, MetadataError> {
            unreachable!("the election uses only the lease")
        }
        async fn rotate_context_key(&self) -> Result<cohort_ring::ContextKey, MetadataError> {
            unreachable!("the election uses only the lease")
        }
    }

    /// Sends `()` when dropped: tells the test that a job was stopped.
    struct Stopped(Option<tokio::sync::oneshot::Sender<()>>);

    impl Drop for Stopped {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }

    /// Leader jobs that run until aborted; `stopped` answers once the job
    /// is gone.
    fn one_job() -> (Jobs, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = Mutex::new(Some(tx));
        let jobs: Jobs = Arc::new(move |generation| {
            assert_eq!(generation, GENERATION, "jobs get the generation they lead under");
            let guard = Stopped(tx.lock().unwrap().take());
            vec![tokio::spawn(async move {
                let _guard = guard;
                std::future::pending::<()>().await
            })]
        });
        (jobs, rx)
    }

    /// Runs the election over `script` (then a stall) and checks that the
    /// leader steps down, its job stopped, at its deadline: 0.9 × the lease
    /// after it sent its last granted renewal, before the store's lease
    /// (counted from later) expires.
    async fn steps_down_by_the_deadline(script: &[Step]) {
        let store = ScriptedLease::new(script);
        let (state, mut watch) = watch::channel(LeaderState::default());
        let (jobs, mut job_stopped) = one_job();
        let (_stop, stopped) = watch::channel(false);
        let election = tokio::spawn(run(store.clone(), "c1".into(), TTL, state, jobs, stopped));

        let led = *watch.wait_for(|s| s.leader).await.unwrap();
        assert_eq!(led.generation, GENERATION);
        watch.wait_for(|s| !s.leader).await.unwrap();
        let stepped_down = Instant::now();
        let after = stepped_down - store.last_granted();
        let deadline = TTL.mul_f64(DEADLINE_FRACTION);
        assert!(
            after >= deadline && after <= deadline + Duration::from_millis(2),
            "stepped down {after:?} after the last granted renewal was sent; the deadline is {deadline:?}, \
             the store's lease lasts {TTL:?} from later"
        );
        tokio::select! {
            _ = &mut job_stopped => {}
            _ = tokio::time::sleep(Duration::from_millis(1)) => panic!("the leader job outlived the step-down"),
        }
        assert_eq!(*watch.borrow(), LeaderState { leader: false, generation: GENERATION });
        election.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_renewal_stalls_steps_down_by_its_deadline() {
        // Granted when sent at 0 s, 1 s and 2 s; the attempt sent at 3 s
        // hangs.
        steps_down_by_the_deadline(&[Step::Grant(Duration::ZERO); 3]).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_store_fails_then_stalls_steps_down_by_its_deadline() {
        // Granted at 0 s and 1 s (deadline 3.7 s); the attempt at 2 s fails,
        // the one at 3 s hangs with 0.7 s left: it must not get a full
        // renewal period.
        steps_down_by_the_deadline(&[Step::Grant(Duration::ZERO), Step::Grant(Duration::ZERO), Step::Fail]).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_slow_renewal_is_followed_by_a_stall_steps_down_by_its_deadline() {
        // The renewal sent at 1 s answers at 1.9 s (deadline 3.7 s); the
        // next, sent at 2.9 s, hangs with 0.8 s left.
        steps_down_by_the_deadline(&[Step::Grant(Duration::ZERO), Step::Grant(Duration::from_millis(900))]).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_stopped_while_its_store_stalls_stops_within_a_renewal_period() {
        let store = ScriptedLease::new(&[Step::Grant(Duration::ZERO)]);
        let (state, mut watch) = watch::channel(LeaderState::default());
        let (jobs, job_stopped) = one_job();
        let (stop, stopped) = watch::channel(false);
        let election = tokio::spawn(run(store.clone(), "c1".into(), TTL, state, jobs, stopped));
        watch.wait_for(|s| s.leader).await.unwrap();

        let asked = Instant::now();
        stop.send_replace(true);
        election.await.unwrap();
        assert!(asked.elapsed() <= TTL / 3, "stopping took {:?} with the lease release hanging", asked.elapsed());
        assert!(!watch.borrow().leader);
        job_stopped.await.expect("the job was stopped");
    }
}
