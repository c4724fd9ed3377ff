//! Guarantee 10 for versioned configuration: every change takes the next
//! revision of the tenant; a watch delivers every committed change after
//! its start revision exactly once and in order — under concurrent
//! writers, from any retained revision — or ends with an explicit error
//! (a compacted start, a watcher too slow to keep up); bad input changes
//! nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use cohort_client::Error;
use cohort_client::config::{ChangeKind, ConfigChange, ConfigWrite, WatchEvent};
use cohort_coordinator::ReadRepairMode;
use cohort_proto::coord::v1 as pb;
use cohort_proto::coord::v1::config_client::ConfigClient;
use cohort_tests::{TENANT, TestCluster, on_both_transports, test_config};
use tokio_stream::StreamExt;
use tonic::Code;

on_both_transports!(versions_history_and_bad_input, a_watch_delivers_every_change_once_in_order_under_racing_writers,);

fn code<T>(result: Result<T, Error>) -> Option<Code> {
    result.err().and_then(|e| e.code())
}

async fn versions_history_and_bad_input(cluster: TestCluster) {
    let client = cluster.client().await;
    let config = client.config();
    let first = config.put(TENANT, "app/timeout", "5s", ConfigWrite::by("alice")).await.unwrap();
    assert_eq!(first.version, 1, "a key's first value is version 1");
    let second = config.put(TENANT, "app/timeout", "7s", ConfigWrite::by("bob")).await.unwrap();
    assert_eq!((second.version, second.revision), (2, first.revision + 1));
    let now = config.get(TENANT, "app/timeout").await.unwrap().unwrap();
    assert_eq!((now.value, now.version, now.revision), (Some(Bytes::from("7s")), 2, second.revision));
    assert_eq!(now.updated_by, "bob");
    let old = config.get_version(TENANT, "app/timeout", 1).await.unwrap().unwrap();
    assert_eq!((old.value, old.updated_by.as_str()), (Some(Bytes::from("5s")), "alice"));
    let history = config.history(TENANT, "app/timeout").await.unwrap();
    assert_eq!(history.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2]);

    // A stale --expect-version changes nothing and names the version.
    let stale = ConfigWrite { expect_version: Some(1), ..ConfigWrite::by("carol") };
    let refused = config.put(TENANT, "app/timeout", "9s", stale).await.unwrap_err();
    assert_eq!(refused.code(), Some(Code::FailedPrecondition));
    assert!(refused.to_string().contains("version 2"), "{refused}");
    let right = ConfigWrite { expect_version: Some(2), ..ConfigWrite::by("carol") };
    assert_eq!(config.put(TENANT, "app/timeout", "9s", right).await.unwrap().version, 3);
    let create_only = ConfigWrite { expect_version: Some(0), ..ConfigWrite::default() };
    assert_eq!(code(config.put(TENANT, "app/timeout", "x", create_only.clone()).await), Some(Code::FailedPrecondition));
    assert_eq!(config.put(TENANT, "app/new", "x", create_only).await.unwrap().version, 1);

    // Deletes: a version of their own; nothing to delete is NotFound.
    let deleted = config.delete(TENANT, "app/new", ConfigWrite::default()).await.unwrap();
    assert_eq!(deleted.version, 2);
    assert!(config.get(TENANT, "app/new").await.unwrap().is_none());
    assert_eq!(code(config.delete(TENANT, "app/new", ConfigWrite::default()).await), Some(Code::NotFound));
    assert_eq!(code(config.get_version(TENANT, "app/timeout", 99).await), Some(Code::NotFound));
    let (listed, revision) = config.list(TENANT, "app/").await.unwrap();
    assert_eq!(listed.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), ["app/timeout"]);
    assert_eq!(revision, deleted.revision);

    // Bad input: a clear code, and no revision taken.
    let before = config.list(TENANT, "").await.unwrap().1;
    let long_key = "k".repeat(513);
    assert_eq!(code(config.put(TENANT, "", "v", ConfigWrite::default()).await), Some(Code::InvalidArgument));
    assert_eq!(code(config.put(TENANT, &long_key, "v", ConfigWrite::default()).await), Some(Code::InvalidArgument));
    let huge = Bytes::from(vec![b'x'; 128 * 1024 + 1]);
    assert_eq!(code(config.put(TENANT, "k", huge, ConfigWrite::default()).await), Some(Code::InvalidArgument));
    let author = ConfigWrite::by("a".repeat(257));
    assert_eq!(code(config.put(TENANT, "k", "v", author).await), Some(Code::InvalidArgument));
    assert_eq!(code(config.put("no tenant!", "k", "v", ConfigWrite::default()).await), Some(Code::InvalidArgument));
    assert_eq!(config.list(TENANT, "").await.unwrap().1, before, "refused writes take no revision");
    cluster.shutdown().await;
}

/// Collects the changes of `events` until one reaches `last`.
async fn changes_until(
    events: &mut (impl tokio_stream::Stream<Item = Result<WatchEvent, Error>> + Unpin),
    last: u64,
) -> Vec<ConfigChange> {
    let mut out = Vec::new();
    while out.last().is_none_or(|c: &ConfigChange| c.revision < last) {
        let event = tokio::time::timeout(Duration::from_secs(30), events.next())
            .await
            .expect("the watch delivers within 30s")
            .expect("the watch goes on")
            .expect("no error");
        if let WatchEvent::Change(change) = event {
            out.push(change);
        }
    }
    out
}

async fn a_watch_delivers_every_change_once_in_order_under_racing_writers(cluster: TestCluster) {
    let client = cluster.client().await;
    let config = client.config();
    let start = config.put(TENANT, "w/seed", "0", ConfigWrite::default()).await.unwrap().revision;
    let mut from_start = config.watch(TENANT, "w/", start + 1);
    let mut writers = Vec::new();
    for writer in 0..4 {
        let config = client.config();
        writers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..12 {
                let key = format!("w/{}", (writer + i) % 3);
                let value = format!("{writer}-{i}");
                let written =
                    config.put(TENANT, &key, value.clone(), ConfigWrite::by(format!("writer {writer}"))).await;
                mine.push((written.unwrap(), key, value));
            }
            mine
        }));
    }
    let mut committed = Vec::new();
    for writer in writers {
        committed.extend(writer.await.unwrap());
    }
    committed.sort_by_key(|(w, _, _)| w.revision);
    let last = committed.last().unwrap().0.revision;
    let revisions: Vec<u64> = committed.iter().map(|(w, _, _)| w.revision).collect();
    assert_eq!(revisions, (start + 1..=last).collect::<Vec<_>>(), "one revision each, no gap");

    let seen = changes_until(&mut from_start, last).await;
    let expected: Vec<(u64, String, Option<Bytes>)> =
        committed.iter().map(|(w, k, v)| (w.revision, k.clone(), Some(Bytes::from(v.clone())))).collect();
    let got: Vec<(u64, String, Option<Bytes>)> =
        seen.iter().map(|c| (c.revision, c.key.clone(), c.value.clone())).collect();
    assert_eq!(got, expected, "every change once, in order");
    // Previous values and kinds follow each key's own history.
    let mut values: BTreeMap<String, Bytes> = BTreeMap::from([("w/seed".to_string(), Bytes::from("0"))]);
    for change in &seen {
        let before = values.insert(change.key.clone(), change.value.clone().unwrap());
        assert_eq!(change.previous, before, "{change:?}");
        let kind = if change.previous.is_some() { ChangeKind::Updated } else { ChangeKind::Created };
        assert_eq!(change.kind, kind);
    }
    // A watch from the middle sees exactly the rest; one on another
    // prefix sees none of it.
    let middle = committed[20].0.revision;
    let mut from_middle = config.watch(TENANT, "w/", middle);
    assert_eq!(changes_until(&mut from_middle, last).await, seen[20..]);
    let marker = config.put(TENANT, "other/k", "v", ConfigWrite::default()).await.unwrap().revision;
    let mut elsewhere = config.watch(TENANT, "other/", start);
    let only = changes_until(&mut elsewhere, marker).await;
    assert_eq!(only.iter().map(|c| c.revision).collect::<Vec<_>>(), [marker]);
    cluster.shutdown().await;
}

/// A start older than the retained revisions is refused as compacted,
/// with the oldest retained revision; the SDK then lists the prefix and
/// carries on from the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_start_is_refused_and_the_sdk_lists_and_resumes() {
    let mut settings = test_config(ReadRepairMode::Background);
    settings.configuration.retained_revisions = 5;
    let cluster = TestCluster::start_with_config(3, settings).await;
    let client = cluster.client().await;
    let config = client.config();
    let mut last = 0;
    for i in 0..12 {
        last =
            config.put(TENANT, &format!("c/{}", i % 4), format!("{i}"), ConfigWrite::default()).await.unwrap().revision;
    }
    let mut raw = ConfigClient::new(client.channel());
    let request = pb::ConfigWatchRequest { tenant: TENANT.into(), prefix: "c/".into(), from_revision: 1 };
    let refused = raw.watch(request).await.unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange);
    assert!(refused.message().starts_with("compacted:"), "{}", refused.message());
    let oldest: u64 = refused.metadata().get("cohort-compacted-revision").unwrap().to_str().unwrap().parse().unwrap();
    assert_eq!(oldest, last - 4);

    let mut events = config.watch(TENANT, "c/", 1);
    let reset = loop {
        match events.next().await.unwrap().unwrap() {
            WatchEvent::Progress(_) => continue,
            other => break other,
        }
    };
    let WatchEvent::Reset { entries, revision } = reset else { panic!("a reset first, not {reset:?}") };
    assert_eq!(revision, last);
    assert_eq!(entries.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), ["c/0", "c/1", "c/2", "c/3"]);
    let next = config.put(TENANT, "c/0", "after", ConfigWrite::default()).await.unwrap().revision;
    let after = changes_until(&mut events, next).await;
    assert_eq!(after.iter().map(|c| c.revision).collect::<Vec<_>>(), [next]);
    cluster.shutdown().await;
}

/// A watcher that stops reading falls behind the coordinator's buffer and
/// is cancelled with ResourceExhausted: what it did receive is a prefix of
/// the history, with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_too_slow_to_keep_up_is_cancelled_not_skipped() {
    let mut settings = test_config(ReadRepairMode::Background);
    settings.configuration.watch_buffer = 4;
    let cluster = TestCluster::start_with_config(3, settings).await;
    let client = cluster.client().await;
    let config = client.config();
    let start = config.put(TENANT, "s/k", "0", ConfigWrite::default()).await.unwrap().revision;
    let mut raw = ConfigClient::new(client.channel());
    let request = pb::ConfigWatchRequest { tenant: TENANT.into(), prefix: String::new(), from_revision: start + 1 };
    // Opened, then not read while the writes go on.
    let mut stream = raw.watch(request).await.unwrap().into_inner();
    // Big values fill the stream's buffers quickly.
    let value = "v".repeat(64 * 1024);
    let mut last = start;
    for _ in 0..120 {
        last = config.put(TENANT, "s/k", value.clone(), ConfigWrite::default()).await.unwrap().revision;
    }
    let mut expected = start + 1;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await.expect("the watch answers") {
            Some(Ok(event)) if event.kind == pb::ConfigEventKind::Progress as i32 => continue,
            Some(Ok(event)) => {
                assert_eq!(event.revision, expected, "no gap, no duplicate");
                expected += 1;
            }
            Some(Err(status)) => break status,
            None => panic!("the stream ended without an error after revision {}", expected - 1),
        }
    };
    assert_eq!(ended.code(), Code::ResourceExhausted, "{ended:?}");
    assert!(expected <= last, "it was cancelled before the end: {expected} of {last}");
    cluster.shutdown().await;
}
