//! Journaled maps over in-memory registers.

use std::collections::BTreeMap;

use super::*;
use crate::SystemClock;
use crate::memory::MemoryRegisters;

fn put(key: &str, value: &str) -> Write {
    Write {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        expect_version: None,
        updated_by: "test".into(),
        id: Bytes::copy_from_slice(&rand::random::<[u8; 16]>()),
    }
}

fn delete(key: &str) -> Write {
    Write { value: None, ..put(key, "") }
}

fn small() -> JournalLimits {
    JournalLimits { window_changes: 4, retained_revisions: 10, history_per_key: 3, ..JournalLimits::default() }
}

#[tokio::test]
async fn every_change_takes_the_next_revision_and_each_key_counts_its_versions() {
    let registers = MemoryRegisters::default();
    let journal = Journal::new(&registers, &SystemClock, "t", "config", small());
    assert_eq!(journal.revision().await.unwrap(), 0);
    let a1 = journal.write(put("a", "1")).await.unwrap();
    let b1 = journal.write(put("b", "1")).await.unwrap();
    let a2 = journal.write(put("a", "2")).await.unwrap();
    assert_eq!((a1.revision, b1.revision, a2.revision), (1, 2, 3));
    assert_eq!((a1.version, b1.version, a2.version), (1, 1, 2));
    assert_eq!((a1.kind(), a2.kind()), (Kind::Created, Kind::Updated));
    assert_eq!(a2.previous.as_deref(), Some(&b"1"[..]));
    let (a, revision) = journal.get(b"a").await.unwrap();
    assert_eq!((a.value().map(|v| &v[..]), a.version(), revision), (Some(&b"2"[..]), 2, 3));
    assert_eq!(a.history.iter().map(|c| c.version).collect::<Vec<_>>(), [1, 2]);
    let (never, _) = journal.get(b"zz").await.unwrap();
    assert_eq!((never.version(), never.value()), (0, None));
}

#[tokio::test]
async fn a_failed_condition_or_a_delete_of_nothing_changes_nothing() {
    let registers = MemoryRegisters::default();
    let journal = Journal::new(&registers, &SystemClock, "t", "config", small());
    journal.write(put("a", "1")).await.unwrap();
    let stale = Write { expect_version: Some(0), ..put("a", "x") };
    assert_eq!(journal.write(stale).await.unwrap_err(), WriteError::VersionMismatch { current: 1 });
    assert_eq!(journal.write(delete("b")).await.unwrap_err(), WriteError::NotFound);
    assert_eq!(journal.revision().await.unwrap(), 1);
    let right = Write { expect_version: Some(1), ..put("a", "2") };
    assert_eq!(journal.write(right).await.unwrap().version, 2);
    let gone = journal.write(Write { expect_version: Some(2), ..delete("a") }).await.unwrap();
    assert_eq!((gone.kind(), gone.version, gone.revision), (Kind::Deleted, 3, 3));
    let (a, _) = journal.get(b"a").await.unwrap();
    assert_eq!((a.value(), a.version()), (None, 3), "a deleted key keeps counting its versions");
    // Recreated: version 4, a creation again.
    let again = journal.write(put("a", "3")).await.unwrap();
    assert_eq!((again.kind(), again.version), (Kind::Created, 4));
}

#[tokio::test]
async fn a_retried_write_is_committed_once() {
    let registers = MemoryRegisters::default();
    let journal = Journal::new(&registers, &SystemClock, "t", "config", small());
    let write = put("a", "1");
    let first = journal.write(write.clone()).await.unwrap();
    let retry = journal.write(write).await.unwrap();
    assert_eq!(first, retry);
    assert_eq!(journal.revision().await.unwrap(), 1);
}

/// Changes leave the window into the archive: reading from revision 1
/// gives every change in order, with no gap and no duplicate, until the
/// retention compacts the oldest; a compacted start is an explicit error.
#[tokio::test]
async fn changes_read_from_any_retained_revision_in_order_and_compacted_ones_are_refused() {
    let registers = MemoryRegisters::default();
    let limits = JournalLimits { retained_revisions: 1000, ..small() };
    let journal = Journal::new(&registers, &SystemClock, "t", "config", limits);
    let mut committed = Vec::new();
    for i in 0..20 {
        committed.push(journal.write(put(&format!("k{}", i % 3), &format!("v{i}"))).await.unwrap());
    }
    let (changes, revision) = journal.changes_from(1, 100).await.unwrap().unwrap();
    assert_eq!((changes.clone(), revision), (committed.clone(), 20));
    let (tail, _) = journal.changes_from(7, 5).await.unwrap().unwrap();
    assert_eq!(tail, committed[6..11]);
    let (none, _) = journal.changes_from(21, 5).await.unwrap().unwrap();
    assert!(none.is_empty());

    let compacting = Journal::new(&registers, &SystemClock, "t", "config", small());
    for i in 20..30 {
        committed.push(compacting.write(put("k", &format!("v{i}"))).await.unwrap());
    }
    // 30 revisions, 10 retained: 21..=30.
    assert_eq!(compacting.changes_from(5, 100).await.unwrap(), Err(Compacted { asked: 5, oldest: 21 }));
    let (kept, _) = compacting.changes_from(21, 100).await.unwrap().unwrap();
    assert_eq!(kept, committed[20..]);
}

/// A change committed by a writer that stopped before applying it is seen
/// by every reader and applied by the next write of the key: the key's
/// history holds both.
#[tokio::test]
async fn a_committed_change_its_writer_never_applied_is_seen_and_kept() {
    let registers = MemoryRegisters::default();
    let journal = Journal::new(&registers, &SystemClock, "t", "config", small());
    journal.write(put("a", "1")).await.unwrap();
    // Commit revision 2 by hand, as a writer that crashed after the head.
    let (mut head, version) = journal.head().await.unwrap();
    let orphan = Change {
        revision: 2,
        key: Bytes::from_static(b"a"),
        value: Some(Bytes::from_static(b"2")),
        previous: Some(Bytes::from_static(b"1")),
        version: 2,
        updated_by: "crashed".into(),
        at_ms: 0,
        id: Bytes::from_static(b"orphan"),
    };
    head.revision = 2;
    head.window.push(orphan.clone());
    let written = write_register(&registers, "t", &journal.head_key(), version, encode(&head)).await.unwrap();
    assert!(matches!(written, Written::Applied(_)));
    let (a, _) = journal.get(b"a").await.unwrap();
    assert_eq!(a.current(), Some(&orphan), "readers lay the window over the entry");
    let next = journal.write(put("a", "3")).await.unwrap();
    assert_eq!((next.revision, next.version, next.previous.as_deref()), (3, 3, Some(&b"2"[..])));
    let (entry, _) = journal.entry(b"a").await.unwrap();
    assert_eq!(entry.history.iter().map(|c| c.revision).collect::<Vec<_>>(), [1, 2, 3]);
}

/// A change applied to its entry by a writer that stopped before the index
/// is indexed by whoever applies it next (here: its eviction), so it is
/// listed once it leaves the window.
#[tokio::test]
async fn a_change_applied_without_its_index_is_indexed_when_evicted() {
    let registers = MemoryRegisters::default();
    let journal = Journal::new(&registers, &SystemClock, "t", "config", small());
    let (mut head, version) = journal.head().await.unwrap();
    let change = Change {
        revision: 1,
        key: Bytes::from_static(b"x"),
        value: Some(Bytes::from_static(b"1")),
        previous: None,
        version: 1,
        updated_by: "stopped".into(),
        at_ms: 0,
        id: Bytes::from_static(b"stopped"),
    };
    head.revision = 1;
    head.window.push(change.clone());
    write_register(&registers, "t", &journal.head_key(), version, encode(&head)).await.unwrap();
    // Its entry written, its index not.
    let entry = Entry { applied: 1, history: vec![change] };
    write_register(&registers, "t", &journal.entry_key(b"x"), 0, encode(&entry)).await.unwrap();
    for i in 0..6 {
        journal.write(put(&format!("other{i}"), "v")).await.unwrap();
    }
    let (listed, _) = journal.list(b"x").await.unwrap();
    assert_eq!(listed.iter().map(|c| &c.key[..]).collect::<Vec<_>>(), [&b"x"[..]]);
}

#[tokio::test]
async fn listing_gives_the_keys_with_values_under_a_prefix() {
    let registers = MemoryRegisters::default();
    let journal = Journal::new(&registers, &SystemClock, "t", "config", small());
    for key in ["app/a", "app/b", "app/c", "db/x"] {
        journal.write(put(key, key)).await.unwrap();
    }
    journal.write(delete("app/b")).await.unwrap();
    for i in 0..6 {
        journal.write(put("db/x", &format!("{i}"))).await.unwrap();
    }
    let (listed, revision) = journal.list(b"app/").await.unwrap();
    let keys: Vec<&[u8]> = listed.iter().map(|c| &c.key[..]).collect();
    assert_eq!((keys, revision), (vec![&b"app/a"[..], b"app/c"], 11));
    let limited = Journal::new(&registers, &SystemClock, "t", "config", JournalLimits { max_keys: 3, ..small() });
    assert_eq!(limited.write(put("new", "v")).await.unwrap_err(), WriteError::TooManyKeys(3));
    limited.write(put("app/a", "replaced")).await.unwrap();
}

/// Writers racing on one map: every committed change has its own
/// revision, revisions run 1..=N with no gap, the journal from 1 is exactly
/// the committed changes, and each key's version counts its changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_get_consecutive_revisions_and_the_journal_holds_exactly_their_changes() {
    let registers = std::sync::Arc::new(MemoryRegisters::default());
    let mut tasks = Vec::new();
    for writer in 0..6 {
        let registers = registers.clone();
        tasks.push(tokio::spawn(async move {
            let limits = JournalLimits { retained_revisions: 1000, ..small() };
            let journal = Journal::new(&*registers, &SystemClock, "t", "config", limits);
            let mut mine = Vec::new();
            for i in 0..15 {
                mine.push(
                    journal.write(put(&format!("k{}", (writer + i) % 4), &format!("w{writer}-{i}"))).await.unwrap(),
                );
            }
            mine
        }));
    }
    let mut committed = Vec::new();
    for task in tasks {
        committed.extend(task.await.unwrap());
    }
    committed.sort_by_key(|c| c.revision);
    assert_eq!(committed.iter().map(|c| c.revision).collect::<Vec<_>>(), (1..=90).collect::<Vec<_>>());
    let journal =
        Journal::new(&*registers, &SystemClock, "t", "config", JournalLimits { retained_revisions: 1000, ..small() });
    let (changes, _) = journal.changes_from(1, 1000).await.unwrap().unwrap();
    assert_eq!(changes, committed);
    let mut versions: BTreeMap<Bytes, u64> = BTreeMap::new();
    for change in &committed {
        let version = versions.entry(change.key.clone()).or_default();
        *version += 1;
        assert_eq!(change.version, *version, "{change:?}");
    }
}
