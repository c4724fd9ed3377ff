//! One runner for background work.
//!
//! A [`Worker`] has a name, does one step of work at a time, says whether
//! more is waiting, and otherwise waits until there may be work again. The
//! [`Workers`] runner drives each on its own task, records how each is doing
//! in a [`WorkerStatuses`] registry that the admin API shows (`cohort admin
//! cluster status`), and stops them all with one exit deadline. Dropping the
//! runner aborts whatever still runs, so background work never outlives the
//! server that started it.
//!
//! Every background loop of a Cohort process is a worker: the coordinator's
//! ring refresh, change follower, idempotency purge, leader election and
//! the leader's node probe, membership mover, anti-entropy (which also
//! reaps tombstones) and registry health checks; the storage node's health watch, write-record purge
//! and hint delivery (which also hands off a fallback's writes).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a step of work found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// More work is waiting: step again at once.
    Busy,
    /// Nothing to do until [`Worker::wait_for_work`] returns.
    Idle,
    /// The worker is finished for good.
    Done,
}

/// A piece of background work, driven by [`Workers`].
#[async_trait]
pub trait Worker: Send + 'static {
    /// A stable name, shown to operators.
    fn name(&self) -> &'static str;
    /// Does one step of work. An error is recorded and the worker waits for
    /// work before trying again.
    async fn work(&mut self) -> Result<Step, String>;
    /// Waits until there may be work again (a tick, a notice).
    async fn wait_for_work(&mut self);
    /// Called once when the runner stops the worker (not when it finished
    /// by itself), within the runner's exit deadline: the place to give back
    /// what it holds, such as a lease. Nothing by default.
    async fn finish(&mut self) {}
}

/// How a worker is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStatus {
    /// The worker's name.
    pub name: String,
    /// `busy`, `idle`, `failing` (its last step failed), `done` or
    /// `stopped`.
    pub state: &'static str,
    /// Steps taken.
    pub steps: u64,
    /// Steps that failed.
    pub errors: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// When the last step ended, in milliseconds since the Unix epoch.
    pub last_step_at_ms: u64,
}

/// The statuses of every worker of a process, by name. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct WorkerStatuses(Arc<Mutex<BTreeMap<String, WorkerStatus>>>);

impl WorkerStatuses {
    /// Every worker's status, ordered by name.
    pub fn list(&self) -> Vec<WorkerStatus> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    fn update(&self, name: &str, change: impl FnOnce(&mut WorkerStatus)) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let status = all.entry(name.to_string()).or_insert_with(|| WorkerStatus {
            name: name.to_string(),
            state: "idle",
            steps: 0,
            errors: 0,
            last_error: None,
            last_step_at_ms: 0,
        });
        change(status);
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Runs workers until stopped.
pub struct Workers {
    statuses: WorkerStatuses,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Workers {
    /// A runner that records into `statuses`.
    pub fn new(statuses: WorkerStatuses) -> Self {
        Workers { statuses, stop: watch::channel(false).0, tasks: Vec::new() }
    }

    /// Starts `worker` on a task of its own.
    pub fn spawn(&mut self, mut worker: impl Worker) {
        let statuses = self.statuses.clone();
        let mut stop = self.stop.subscribe();
        let name = worker.name();
        statuses.update(name, |status| status.state = "idle");
        self.tasks.push(tokio::spawn(async move {
            // However the task ends — finished, stopped or aborted — the
            // status says it no longer runs.
            let _stopped = MarkStopped { statuses: statuses.clone(), name };
            loop {
                let step = tokio::select! {
                    step = worker.work() => step,
                    _ = stop.wait_for(|stop| *stop) => break,
                };
                statuses.update(name, |status| {
                    status.steps += 1;
                    status.last_step_at_ms = now_ms();
                    match &step {
                        Ok(Step::Busy) => status.state = "busy",
                        Ok(Step::Idle) => status.state = "idle",
                        Ok(Step::Done) => status.state = "done",
                        Err(error) => {
                            tracing::warn!(worker = name, %error, "background step failed");
                            status.state = "failing";
                            status.errors += 1;
                            status.last_error = Some(error.clone());
                        }
                    }
                });
                match step {
                    Ok(Step::Busy) => tokio::task::yield_now().await,
                    Ok(Step::Done) => return,
                    Ok(Step::Idle) | Err(_) => tokio::select! {
                        _ = worker.wait_for_work() => {}
                        _ = stop.wait_for(|stop| *stop) => break,
                    },
                }
            }
            worker.finish().await;
        }));
    }

    /// Waits until every worker has finished (or was aborted).
    pub async fn join(&mut self) {
        for task in &mut self.tasks {
            let _ = task.await;
        }
    }

    /// Asks every worker to stop (between steps, or while it waits) and waits
    /// for them up to `deadline`; whatever still runs then is aborted.
    pub async fn shutdown(mut self, deadline: Duration) {
        let _ = self.stop.send(true);
        let mut tasks = std::mem::take(&mut self.tasks);
        let all = futures::future::join_all(tasks.iter_mut().map(|t| async move {
            let _ = t.await;
        }));
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!(?deadline, "background workers did not stop in time; aborting them");
            for task in &tasks {
                task.abort();
            }
        }
    }
}

/// Marks a worker `stopped` (unless it finished as `done`) when its task
/// ends.
struct MarkStopped {
    statuses: WorkerStatuses,
    name: &'static str,
}

impl Drop for MarkStopped {
    fn drop(&mut self) {
        self.statuses.update(self.name, |status| {
            if status.state != "done" {
                status.state = "stopped";
            }
        });
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A worker that runs `step` every `period` (the first time at once).
pub struct Periodic<F> {
    name: &'static str,
    tick: tokio::time::Interval,
    step: F,
}

impl<F, Fut> Periodic<F>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    /// `step` under `name`, every `period`.
    pub fn new(name: &'static str, period: Duration, step: F) -> Self {
        // The first step runs at once, at spawn; the next one a period later.
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Periodic { name, tick, step }
    }
}

#[async_trait]
impl<F, Fut> Worker for Periodic<F>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    fn name(&self) -> &'static str {
        self.name
    }

    async fn work(&mut self) -> Result<Step, String> {
        (self.step)().await.map(|()| Step::Idle)
    }

    async fn wait_for_work(&mut self) {
        self.tick.tick().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts down, failing once, then finishes.
    struct Countdown {
        left: u32,
        failed: bool,
        woken: Arc<tokio::sync::Notify>,
    }

    #[async_trait]
    impl Worker for Countdown {
        fn name(&self) -> &'static str {
            "countdown"
        }
        async fn work(&mut self) -> Result<Step, String> {
            if self.left == 2 && !self.failed {
                self.failed = true;
                return Err("disk said no".into());
            }
            match self.left {
                0 => Ok(Step::Done),
                _ => {
                    self.left -= 1;
                    Ok(if self.left.is_multiple_of(2) { Step::Idle } else { Step::Busy })
                }
            }
        }
        async fn wait_for_work(&mut self) {
            self.woken.notified().await;
        }
    }

    #[tokio::test]
    async fn a_worker_steps_waits_records_failures_and_finishes() {
        let statuses = WorkerStatuses::default();
        let mut workers = Workers::new(statuses.clone());
        let woken = Arc::new(tokio::sync::Notify::new());
        workers.spawn(Countdown { left: 4, failed: false, woken: woken.clone() });
        let mut poll = tokio::time::interval(Duration::from_millis(5));
        for _ in 0..2000 {
            poll.tick().await;
            let status = statuses.list().remove(0);
            if status.state == "done" {
                assert_eq!((status.steps, status.errors), (6, 1), "{status:?}");
                assert_eq!(status.last_error.as_deref(), Some("disk said no"));
                workers.shutdown(Duration::from_secs(1)).await;
                return;
            }
            woken.notify_one();
        }
        panic!("the worker never finished: {:?}", statuses.list());
    }

    #[tokio::test]
    async fn shutdown_stops_a_waiting_worker() {
        let statuses = WorkerStatuses::default();
        let mut workers = Workers::new(statuses.clone());
        workers.spawn(Periodic::new("ticker", Duration::from_secs(3600), || async { Ok(()) }));
        let mut poll = tokio::time::interval(Duration::from_millis(5));
        while statuses.list()[0].steps == 0 {
            poll.tick().await;
        }
        // Waiting an hour for its next tick, it still stops at once.
        tokio::time::timeout(Duration::from_secs(5), workers.shutdown(Duration::from_secs(5)))
            .await
            .expect("stopped within the deadline");
        assert_eq!(statuses.list()[0].state, "stopped");
    }

    /// Holds something until finished; counts its finishes.
    struct Holder {
        done_after: Option<u32>,
        finished: Arc<std::sync::atomic::AtomicU32>,
    }

    #[async_trait]
    impl Worker for Holder {
        fn name(&self) -> &'static str {
            "holder"
        }
        async fn work(&mut self) -> Result<Step, String> {
            match &mut self.done_after {
                Some(0) => Ok(Step::Done),
                Some(left) => {
                    *left -= 1;
                    Ok(Step::Busy)
                }
                None => Ok(Step::Idle),
            }
        }
        async fn wait_for_work(&mut self) {
            std::future::pending::<()>().await;
        }
        async fn finish(&mut self) {
            self.finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_stopped_worker_finishes_once_and_one_that_is_done_does_not() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let statuses = WorkerStatuses::default();
        let (stopped, done) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let mut workers = Workers::new(statuses.clone());
        workers.spawn(Holder { done_after: Some(3), finished: done.clone() });
        workers.join().await;
        assert_eq!(statuses.list()[0].state, "done");
        let statuses = WorkerStatuses::default();
        let mut workers = Workers::new(statuses.clone());
        workers.spawn(Holder { done_after: None, finished: stopped.clone() });
        let mut poll = tokio::time::interval(Duration::from_millis(5));
        while statuses.list()[0].steps == 0 {
            poll.tick().await;
        }
        workers.shutdown(Duration::from_secs(5)).await;
        assert_eq!(stopped.load(Ordering::SeqCst), 1, "stopped while waiting, it finished once");
        assert_eq!(done.load(Ordering::SeqCst), 0, "a worker that is done is not finished again");
    }
}
