//! Group commit: one journal sync makes every write staged before it
//! durable.
//!
//! A writer stages its batch in fjall's journal buffer, then calls
//! [`GroupCommit::durable`], which takes a ticket. The first writer to find
//! no sync running becomes the *leader* and runs one sync, which covers
//! every ticket issued before it began. Writers that arrive while a sync
//! runs wait for it to end; if it did not cover them, the first of them to
//! look leads the next one.
//!
//! Where the sync runs depends on load. A lone write (the last sync covered
//! one ticket) is synced by its leader on its own thread: waking a sleeping
//! thread costs tens of microseconds on a small virtual machine, and a
//! committer task or thread puts two such wake-ups (there and back) on the
//! critical path of every write. Under load, the leader hands the sync to
//! the blocking pool: the hand-off is shared by a whole batch, and the
//! runtime's workers serve requests meanwhile instead of waiting on the
//! disk. (Syncing on the worker under load too cost the one-process dev
//! cluster 9% of its YCSB A throughput, and `block_in_place` was slower
//! than either: `loadtest/results/hot-paths.md`.)
//!
//! A ticket is taken after the writer's batch is in the journal buffer, and
//! a sync records the last ticket issued before it starts, so "covered"
//! means "appended before the sync began". A failed sync poisons the store:
//! every writer it did not cover, then or later, gets its error.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use fjall::{Database, PersistMode};
use tokio::sync::Notify;

use crate::config::Durability;

/// Under load, how many times a leader lets ready tasks run before it
/// syncs, so that the writes they are about to stage share the sync (it
/// stops early when a round brings none).
const MAX_GATHER_ROUNDS: usize = 4;

/// The group commit of one store.
pub struct GroupCommit {
    db: Database,
    mode: PersistMode,
    /// The last ticket issued.
    tickets: AtomicU64,
    /// Syncs run so far.
    syncs: AtomicU64,
    state: Mutex<State>,
    /// Woken when a sync ends.
    synced: Notify,
    poisoned: AtomicBool,
    failing_disk: AtomicBool,
}

#[derive(Default)]
struct State {
    /// A leader is syncing.
    syncing: bool,
    /// Every ticket up to this one is durable.
    covered: u64,
    /// Why the store is poisoned, once a sync failed.
    failed: Option<String>,
    /// The last sync covered more than one ticket: the next leader gathers
    /// before it syncs.
    busy: bool,
}

impl GroupCommit {
    /// The group commit of `db`'s journal.
    pub fn new(db: Database, durability: Durability) -> Self {
        let mode = match durability {
            Durability::Fsync => PersistMode::SyncData,
            Durability::Flush => PersistMode::Buffer,
        };
        GroupCommit {
            db,
            mode,
            tickets: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            state: Mutex::new(State::default()),
            synced: Notify::new(),
            poisoned: AtomicBool::new(false),
            failing_disk: AtomicBool::new(false),
        }
    }

    /// Whether a failed sync has poisoned the store.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// How many syncs have run: fewer than the writes they covered when
    /// writers share them.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Acquire)
    }

    /// Makes every later sync fail, as a failing disk would (tests).
    pub fn inject_disk_failure(&self) {
        self.failing_disk.store(true, Ordering::Release);
    }

    /// Waits until everything staged in the journal before this call is
    /// durable; the error says why it never will be.
    pub async fn durable(&self) -> Result<(), String> {
        let ticket = self.tickets.fetch_add(1, Ordering::AcqRel) + 1;
        loop {
            // Registered before the state is read, so that a sync ending
            // in between still wakes this writer.
            let notified = self.synced.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let busy = {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if state.covered >= ticket {
                    return Ok(());
                }
                if let Some(reason) = &state.failed {
                    return Err(reason.clone());
                }
                if state.syncing {
                    None
                } else {
                    state.syncing = true;
                    Some(state.busy)
                }
            };
            match busy {
                Some(busy) => return self.lead(busy).await,
                None => notified.await,
            }
        }
    }

    /// Runs one sync as its leader and wakes everyone waiting.
    async fn lead(&self, busy: bool) -> Result<(), String> {
        // Should this future be dropped while gathering, the sync is left
        // to the next writer instead of never running.
        let mut leadership = Leadership { commit: self, done: false };
        // Let the tasks that are ready run first: the write that made this
        // leader has just queued its sends to other replicas, which should
        // leave before this thread holds still for the sync; and under load
        // some tasks are about to stage writes the sync can cover too.
        let rounds = if busy { MAX_GATHER_ROUNDS } else { 1 };
        for _ in 0..rounds {
            let before = self.tickets.load(Ordering::Acquire);
            tokio::task::yield_now().await;
            if self.tickets.load(Ordering::Acquire) == before {
                break;
            }
        }
        let covers = self.tickets.load(Ordering::Acquire);
        let started = std::time::Instant::now();
        let result = self.sync(busy).await;
        self.syncs.fetch_add(1, Ordering::AcqRel);
        metrics::histogram!("cohort_node_group_commit_seconds").record(started.elapsed().as_secs_f64());
        leadership.done = true;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.syncing = false;
        match &result {
            Ok(()) => {
                let batch = covers.saturating_sub(state.covered);
                metrics::histogram!("cohort_node_group_commit_batch").record(batch as f64);
                state.busy = batch > 1;
                state.covered = covers;
            }
            Err(reason) => {
                tracing::error!(%reason, "journal persist failed; store is poisoned and refuses writes");
                self.poisoned.store(true, Ordering::Release);
                state.failed = Some(reason.clone());
            }
        }
        drop(state);
        self.synced.notify_waiters();
        result
    }

    /// Persists the journal: on this thread when the store is quiet, so
    /// that a lone write pays no thread hand-off; on the blocking pool under
    /// load, where a hand-off is shared by a whole batch and the runtime's
    /// workers are worth more serving requests than waiting on the disk.
    async fn sync(&self, busy: bool) -> Result<(), String> {
        let (db, mode, failing) = (self.db.clone(), self.mode, self.failing_disk.load(Ordering::Acquire));
        let persist = move || match failing {
            true => Err("injected disk failure".to_string()),
            false => db.persist(mode).map_err(|e| format!("{e:?}")),
        };
        if !busy {
            return persist();
        }
        tokio::task::spawn_blocking(persist).await.unwrap_or_else(|e| Err(format!("journal sync task failed: {e}")))
    }
}

/// A leader that has not finished: dropped early, it hands the sync on.
struct Leadership<'a> {
    commit: &'a GroupCommit,
    done: bool,
}

impl Drop for Leadership<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.commit.state.lock().unwrap_or_else(|p| p.into_inner()).syncing = false;
            self.commit.synced.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::FutureExt;
    use futures::future::join_all;

    use super::*;

    fn open(dir: &std::path::Path) -> (Database, fjall::Keyspace) {
        let db = Database::builder(dir).manual_journal_persist(true).open().unwrap();
        let keyspace =
            db.keyspace("data", || fjall::KeyspaceCreateOptions::default().manual_journal_persist(true)).unwrap();
        (db, keyspace)
    }

    /// A flushing group commit over a fresh directory (kept alive by the
    /// returned guard) and a keyspace to stage writes in.
    fn flushing() -> (tempfile::TempDir, fjall::Keyspace, GroupCommit) {
        let dir = tempfile::tempdir().unwrap();
        let (db, keyspace) = open(dir.path());
        (dir, keyspace, GroupCommit::new(db, Durability::Flush))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_all_become_durable() {
        let dir = tempfile::tempdir().unwrap();
        let (db, keyspace) = open(dir.path());
        let commit = Arc::new(GroupCommit::new(db, Durability::Fsync));
        let writers = (0..64u32).map(|i| {
            let (commit, keyspace) = (commit.clone(), keyspace.clone());
            tokio::spawn(async move {
                keyspace.insert(i.to_be_bytes(), b"v").unwrap();
                commit.durable().await
            })
        });
        for result in join_all(writers).await {
            assert_eq!(result.unwrap(), Ok(()));
        }
        assert!((1..=64).contains(&commit.syncs()));
        assert!(!commit.is_poisoned());
    }

    #[tokio::test]
    async fn writers_that_arrive_while_the_leader_gathers_share_its_sync() {
        let (_dir, keyspace, commit) = flushing();
        keyspace.insert(b"a", b"v").unwrap();
        keyspace.insert(b"b", b"v").unwrap();
        keyspace.insert(b"c", b"v").unwrap();
        // The first becomes leader and yields before it syncs; the other two
        // take their tickets meanwhile and wait.
        let (a, b, c) = tokio::join!(commit.durable(), commit.durable(), commit.durable());
        assert_eq!((a, b, c), (Ok(()), Ok(()), Ok(())));
        assert_eq!(commit.syncs(), 1, "one sync covered all three");
    }

    #[tokio::test]
    async fn a_lone_writer_syncs_once_per_write() {
        let (_dir, keyspace, commit) = flushing();
        for i in 0..3u32 {
            keyspace.insert(i.to_be_bytes(), b"v").unwrap();
            commit.durable().await.unwrap();
        }
        assert_eq!(commit.syncs(), 3);
    }

    #[tokio::test]
    async fn a_leader_dropped_before_its_sync_hands_leadership_on() {
        let (_dir, keyspace, commit) = flushing();
        keyspace.insert(b"k", b"v").unwrap();
        // Polled once, the first writer becomes leader and yields to let
        // ready tasks run; dropped there, it never syncs.
        assert!(commit.durable().now_or_never().is_none());
        assert_eq!(commit.syncs(), 0);
        // The next writer is not left waiting on that sync: it leads one.
        let next = tokio::time::timeout(std::time::Duration::from_secs(30), commit.durable());
        assert_eq!(next.await.expect("the next writer leads a sync"), Ok(()));
        assert_eq!(commit.syncs(), 1);
    }

    #[tokio::test]
    async fn a_failed_sync_fails_every_writer_it_did_not_cover() {
        let (_dir, keyspace, commit) = flushing();
        keyspace.insert(b"a", b"v").unwrap();
        commit.durable().await.unwrap();
        commit.inject_disk_failure();
        keyspace.insert(b"b", b"v").unwrap();
        assert!(commit.durable().await.unwrap_err().contains("injected disk failure"));
        assert!(commit.is_poisoned());
        // Nothing written later is ever acknowledged.
        assert!(commit.durable().await.is_err());
    }
}
