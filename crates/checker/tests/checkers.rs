//! Hand-written good and bad histories for every check.

use cohort_checker::*;

/// Builds histories with sequential, non-overlapping timestamps: each op
/// takes 5 ns and the next starts 5 ns after it ends.
struct Rec {
    history: History,
    clock: u64,
}

impl Rec {
    fn new() -> Self {
        Rec { history: History::new(), clock: 0 }
    }

    fn op(&mut self, client: u32, key: &str, kind: OpKind, outcome: Outcome) -> u64 {
        let start = self.clock;
        self.clock += 10;
        let handle = self.history.invoke_at(client, key, kind, start);
        let id = handle.id();
        self.history.complete_at(handle, outcome, start + 5);
        id
    }

    fn put(&mut self, client: u32, key: &str, value: &str, replaces: &[&str]) -> u64 {
        self.op(client, key, OpKind::put(value, vals(replaces)), Outcome::ok())
    }

    fn put_outcome(&mut self, client: u32, key: &str, value: &str, replaces: &[&str], outcome: Outcome) -> u64 {
        self.op(client, key, OpKind::put(value, vals(replaces)), outcome)
    }

    fn delete(&mut self, client: u32, key: &str, replaces: &[&str]) -> u64 {
        self.op(client, key, OpKind::delete(vals(replaces)), Outcome::ok())
    }

    fn read(&mut self, client: u32, key: &str, values: &[&str]) -> u64 {
        self.op(client, key, OpKind::Read, Outcome::read(vals(values)))
    }
}

fn vals(values: &[&str]) -> Vec<Value> {
    values.iter().map(|value| value.to_string()).collect()
}

fn fin(entries: &[(&str, &[&str])]) -> FinalState {
    entries.iter().map(|(key, values)| (key.to_string(), vals(values))).collect()
}

// ---------------------------------------------------------------- lost writes

#[test]
fn lost_acknowledged_write_is_caught() {
    let mut r = Rec::new();
    let a = r.put(1, "k", "a", &[]);
    r.put(2, "k", "b", &[]);
    let report = check_no_lost_writes(&r.history, &fin(&[("k", &["b"])]));
    assert_eq!(report.acknowledged, 2);
    assert_eq!(report.present, 1);
    assert_eq!(report.lost.len(), 1);
    let lost = &report.lost[0];
    assert_eq!((lost.op_id, lost.client, lost.key.as_str(), lost.value.as_str()), (a, 1, "k", "a"));
    assert_eq!(lost.final_values, vals(&["b"]));
    assert!(lost.to_string().contains("\"a\""));
}

#[test]
fn concurrent_blind_writes_kept_as_siblings_are_not_lost() {
    let mut r = Rec::new();
    r.put(1, "k", "a", &[]);
    r.put(2, "k", "b", &[]);
    let report = check_no_lost_writes(&r.history, &fin(&[("k", &["a", "b"])]));
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.present, 2);
}

#[test]
fn write_superseded_by_acknowledged_rmw_is_not_lost() {
    let mut r = Rec::new();
    r.put(1, "k", "a", &[]);
    r.read(2, "k", &["a"]);
    r.put(2, "k", "b", &["a"]);
    let report = check_no_lost_writes(&r.history, &fin(&[("k", &["b"])]));
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.present, report.superseded), (1, 1));
}

#[test]
fn write_superseded_by_unknown_rmw_is_not_lost() {
    let mut r = Rec::new();
    r.put(1, "k", "a", &[]);
    r.read(2, "k", &["a"]);
    r.put_outcome(2, "k", "b", &["a"], Outcome::Unknown);
    let report = check_no_lost_writes(&r.history, &fin(&[("k", &["b"])]));
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.acknowledged, report.superseded, report.unknown, report.unknown_observed), (1, 1, 1, 1));
}

#[test]
fn write_superseded_only_by_failed_write_is_lost() {
    let mut r = Rec::new();
    let a = r.put(1, "k", "a", &[]);
    r.read(2, "k", &["a"]);
    r.put_outcome(2, "k", "b", &["a"], Outcome::Failed);
    let report = check_no_lost_writes(&r.history, &fin(&[("k", &[])]));
    assert_eq!(report.lost.iter().map(|lost| lost.op_id).collect::<Vec<_>>(), vec![a]);
    assert_eq!(report.failed, 1);
}

#[test]
fn write_replaced_on_another_key_is_still_lost() {
    let mut r = Rec::new();
    r.put(1, "k", "a", &[]);
    r.put(1, "other", "b", &["a"]);
    let report = check_no_lost_writes(&r.history, &fin(&[("other", &["b"])]));
    assert_eq!(report.lost.len(), 1, "{report:?}");
    assert!(report.lost[0].final_values.is_empty(), "a key missing from the final state counts as empty");
}

#[test]
fn deletes_and_unknown_or_failed_writes_are_never_lost() {
    let mut r = Rec::new();
    r.put(1, "k", "a", &[]);
    r.read(1, "k", &["a"]);
    r.delete(1, "k", &["a"]);
    r.put_outcome(1, "k", "never-seen", &[], Outcome::Unknown);
    r.put_outcome(1, "k", "refused", &[], Outcome::Failed);
    let report = check_no_lost_writes(&r.history, &fin(&[("k", &[])]));
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.acknowledged, report.acknowledged_deletes), (2, 1));
    assert_eq!((report.unknown, report.unknown_observed, report.failed), (1, 0, 1));
}

// ---------------------------------------------------------------- resurrection

#[test]
fn resurrected_delete_is_caught() {
    let mut r = Rec::new();
    let a = r.put(1, "k", "a", &[]);
    r.read(1, "k", &["a"]);
    let d = r.delete(1, "k", &["a"]);
    let report = check_no_resurrection(&r.history, &fin(&[("k", &["a"])]));
    assert_eq!(report.deletes_checked, 1);
    assert_eq!(
        report.resurrected,
        vec![Resurrection { replaced_by: d, key: "k".into(), value: "a".into(), written_by: vec![a] }]
    );
}

#[test]
fn concurrent_write_surviving_a_delete_is_fine() {
    let mut r = Rec::new();
    r.put(1, "k", "a", &[]);
    r.read(1, "k", &["a"]);
    r.put(2, "k", "c", &[]); // blind, concurrent with the delete
    r.delete(1, "k", &["a"]);
    let final_state = fin(&[("k", &["c"])]);
    assert!(check_no_resurrection(&r.history, &final_state).is_ok());
    assert!(check_no_lost_writes(&r.history, &final_state).is_ok());
    assert!(audit(&r.history, &final_state, None).is_ok());
}

#[test]
fn unknown_delete_is_not_judged() {
    let mut r = Rec::new();
    r.put(1, "k", "a", &[]);
    r.read(1, "k", &["a"]);
    r.op(1, "k", OpKind::delete(vals(&["a"])), Outcome::Unknown);
    let report = check_no_resurrection(&r.history, &fin(&[("k", &["a"])]));
    assert!(report.is_ok());
    assert_eq!(report.deletes_checked, 0);
}

#[test]
fn revived_sibling_is_caught() {
    let mut r = Rec::new();
    r.put(1, "k", "a", &[]);
    r.put(2, "k", "b", &[]);
    r.read(3, "k", &["a", "b"]);
    let c = r.put(3, "k", "c", &["a", "b"]);
    let report = check_no_revived_siblings(&r.history, &fin(&[("k", &["b", "c"])]));
    assert_eq!(report.writes_checked, 1);
    assert_eq!(report.revived.len(), 1);
    assert_eq!((report.revived[0].replaced_by, report.revived[0].value.as_str()), (c, "b"));
    assert!(check_no_revived_siblings(&r.history, &fin(&[("k", &["c"])])).is_ok());
}

// ---------------------------------------------------------------- phantoms

#[test]
fn phantom_read_of_a_value_never_written_is_caught() {
    let mut r = Rec::new();
    r.put(1, "k", "a", &[]);
    let read = r.read(2, "k", &["a", "ghost"]);
    let report = check_no_phantoms(&r.history, None);
    assert_eq!((report.reads_checked, report.values_checked), (1, 2));
    assert_eq!(
        report.phantoms,
        vec![Phantom {
            source: PhantomSource::Read { op_id: read, client: 2 },
            key: "k".into(),
            value: "ghost".into(),
            cause: PhantomCause::NeverWritten,
        }]
    );
}

#[test]
fn phantom_read_of_a_value_only_written_by_a_failed_write_is_caught() {
    let mut r = Rec::new();
    let w = r.put_outcome(1, "k", "refused", &[], Outcome::Failed);
    r.read(2, "k", &["refused"]);
    let report = check_no_phantoms(&r.history, None);
    assert_eq!(report.phantoms.len(), 1);
    assert_eq!(report.phantoms[0].cause, PhantomCause::OnlyFailedWrites { op_ids: vec![w] });
}

#[test]
fn reading_an_unknown_write_is_not_a_phantom() {
    let mut r = Rec::new();
    r.put_outcome(1, "k", "maybe", &[], Outcome::Unknown);
    r.read(2, "k", &["maybe"]);
    assert!(check_no_phantoms(&r.history, Some(&fin(&[("k", &["maybe"])]))).is_ok());
}

#[test]
fn phantoms_from_other_keys_the_future_duplicates_and_the_final_state_are_caught() {
    let mut r = Rec::new();
    let x = r.put(1, "other", "x", &[]);
    r.read(2, "k", &["x"]);
    r.read(2, "k", &["y"]); // completes before y's write is invoked
    let y = r.put(1, "k", "y", &[]);
    r.read(2, "k", &["y", "y"]); // y applied twice
    let report = check_no_phantoms(&r.history, Some(&fin(&[("k", &["y", "z"])])));
    let causes: Vec<_> = report.phantoms.iter().map(|p| (p.value.as_str(), p.cause.clone())).collect();
    assert_eq!(
        causes,
        vec![
            ("x", PhantomCause::WrittenToOtherKey { key: "other".into(), op_ids: vec![x] }),
            ("y", PhantomCause::ReadBeforeWrite { op_ids: vec![y] }),
            ("y", PhantomCause::DuplicateSibling { count: 2 }),
            ("z", PhantomCause::NeverWritten),
        ]
    );
    assert_eq!(report.phantoms[3].source, PhantomSource::FinalState);
}

#[test]
fn a_read_overlapping_its_write_is_not_a_phantom() {
    let mut history = History::new();
    let write = history.invoke_at(1, "k", OpKind::put("a", vec![]), 10);
    let read = history.invoke_at(2, "k", OpKind::Read, 5);
    history.complete_at(read, Outcome::read(vals(&["a"])), 12);
    history.complete_at(write, Outcome::ok(), 20);
    assert!(check_no_phantoms(&history, None).is_ok());
}

// ---------------------------------------------------------------- causal chains

/// One client: put a; read [a]; put b replacing [a]; read [b]; put c replacing [b].
fn chain() -> (Rec, u64) {
    let mut r = Rec::new();
    r.put(1, "k", "a", &[]);
    r.read(1, "k", &["a"]);
    r.put(1, "k", "b", &["a"]);
    r.read(1, "k", &["b"]);
    let c = r.put(1, "k", "c", &["b"]);
    (r, c)
}

#[test]
fn causal_chain_ending_with_one_value_is_fine() {
    let (r, _) = chain();
    let report = check_causal_chains(&r.history, &fin(&[("k", &["c"])]));
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.chains_checked, report.skipped.len()), (1, 0));
}

#[test]
fn causal_chain_ending_with_two_values_is_caught() {
    let (r, c) = chain();
    let report = check_causal_chains(&r.history, &fin(&[("k", &["b", "c"])]));
    assert_eq!(
        report.violations,
        vec![CausalViolation {
            key: "k".into(),
            kind: CausalViolationKind::FinalState,
            op_ids: vec![c],
            expected: vals(&["c"]),
            actual: vals(&["b", "c"]),
        }]
    );
    // The same final state breaks no other invariant on its own: only the chain sees it.
    let verdict = audit(&r.history, &fin(&[("k", &["b", "c"])]), None);
    let summary = verdict.summary();
    assert_eq!((summary.causality_violations, summary.revived, summary.lost), (1, 1, 0));
}

#[test]
fn causal_chain_ending_with_a_delete() {
    let (mut r, _) = chain();
    r.read(1, "k", &["c"]);
    r.delete(1, "k", &["c"]);
    r.read(1, "k", &[]);
    r.put(1, "k", "d", &[]);
    assert!(check_causal_chains(&r.history, &fin(&[("k", &["d"])])).is_ok());
    r.read(1, "k", &["d"]);
    let last = r.delete(1, "k", &["d"]);
    assert!(check_causal_chains(&r.history, &fin(&[("k", &[])])).is_ok());
    let report = check_causal_chains(&r.history, &fin(&[("k", &["d"])]));
    assert_eq!(report.violations.len(), 1);
    assert_eq!(report.violations[0].op_ids, vec![last]);
    assert!(report.violations[0].expected.is_empty());
}

#[test]
fn read_returning_replaced_siblings_inside_a_chain_is_caught() {
    let mut r = Rec::new();
    r.put(1, "k", "a", &[]);
    r.read(1, "k", &["a"]);
    let b = r.put(1, "k", "b", &["a"]);
    let bad = r.read(2, "k", &["a", "b"]); // another client's read sees b and the a it replaced
    r.read(1, "k", &["b"]);
    r.put(1, "k", "c", &["b"]);
    let report = check_causal_chains(&r.history, &fin(&[("k", &["c"])]));
    assert_eq!(report.violations.len(), 1, "{report:?}");
    let violation = &report.violations[0];
    assert_eq!((violation.kind, violation.op_ids.clone()), (CausalViolationKind::ReadAfterWrite, vec![b, bad]));
}

#[test]
fn keys_that_are_not_causal_chains_are_skipped() {
    let mut r = Rec::new();
    // Two writers.
    r.put(1, "multi", "m1", &[]);
    r.put(2, "multi", "m2", &[]);
    // An unknown write.
    let unknown = r.put_outcome(1, "unknown", "u1", &[], Outcome::Unknown);
    // A write without a read in between.
    r.put(1, "nolink", "n1", &[]);
    let n2 = r.put(1, "nolink", "n2", &["n1"]);
    // A write whose context is not the read's siblings.
    r.put(1, "mismatch", "x1", &[]);
    let x_read = r.read(1, "mismatch", &["x1"]);
    let x2 = r.put(1, "mismatch", "x2", &[]);
    // A stale linking read.
    r.put(1, "stale", "s1", &[]);
    r.read(1, "stale", &["s1"]);
    let s2 = r.put(1, "stale", "s2", &["s1"]);
    let s_read = r.read(1, "stale", &["s1"]);
    r.put(1, "stale", "s3", &["s1"]);
    // Overlapping operations of the writer.
    let first = r.history.invoke_at(1, "overlap", OpKind::put("o1", vec![]), 1_000);
    let second = r.history.invoke_at(1, "overlap", OpKind::Read, 1_001);
    let (first_id, second_id) = (first.id(), second.id());
    r.history.complete_at(first, Outcome::ok(), 1_002);
    r.history.complete_at(second, Outcome::read(vals(&["o1"])), 1_003);
    // Read only: not a chain, not skipped.
    r.read(3, "read-only", &[]);

    let final_state = fin(&[
        ("multi", &["m1", "m2"]),
        ("unknown", &[]),
        ("nolink", &["n1", "n2"]),
        ("mismatch", &["x1", "x2"]),
        ("stale", &["s2", "s3"]),
        ("overlap", &["o1"]),
    ]);
    let report = check_causal_chains(&r.history, &final_state);
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.chains_checked, 0);
    let skipped: Vec<_> = report.skipped.iter().map(|s| (s.key.as_str(), s.reason.clone())).collect();
    assert_eq!(
        skipped,
        vec![
            ("mismatch", SkipReason::ContextMismatch { write_op: x2, read_op: x_read }),
            ("multi", SkipReason::MultipleWriters { clients: vec![1, 2] }),
            ("nolink", SkipReason::NoLinkingRead { write_op: n2 }),
            ("overlap", SkipReason::NotSequential { first: first_id, second: second_id }),
            ("stale", SkipReason::StaleLink { read_op: s_read, previous_write: s2 }),
            ("unknown", SkipReason::UncertainWrite { op_id: unknown }),
        ]
    );
    assert_eq!(audit(&r.history, &final_state, None).summary().chains_skipped, 6);
}

// ---------------------------------------------------------------- convergence

fn replica(id: &str, live: &[&str], state: &[u8]) -> ReplicaState {
    ReplicaState::from((id.to_string(), vals(live), state.to_vec()))
}

#[test]
fn converged_replicas_pass() {
    let states: ReplicaStates = [
        ("k".to_string(), vec![replica("n1", &["a"], b"s"), replica("n2", &["a"], b"s"), replica("n3", &["a"], b"s")]),
        ("lonely".to_string(), vec![replica("n1", &[], b"")]),
    ]
    .into();
    let report = check_convergence(&states);
    assert!(report.is_ok());
    assert_eq!(report.keys_checked, 2);
}

#[test]
fn divergent_replicas_are_caught() {
    let states: ReplicaStates = [
        ("ok".to_string(), vec![replica("n1", &["a"], b"s"), replica("n2", &["a"], b"s")]),
        (
            "k".to_string(),
            vec![replica("n1", &["a"], b"s1"), replica("n2", &["a", "b"], b"s2"), replica("n3", &["a"], b"s1")],
        ),
    ]
    .into();
    let report = check_convergence(&states);
    assert_eq!(report.keys_checked, 2);
    assert_eq!(report.divergent.len(), 1);
    let divergent = &report.divergent[0];
    assert_eq!(divergent.key, "k");
    let views: Vec<_> = divergent.replicas.iter().map(|v| (v.replica.as_str(), v.live.len(), v.state_group)).collect();
    assert_eq!(views, vec![("n1", 1, 0), ("n2", 2, 1), ("n3", 1, 0)]);
    let verdict = audit(&History::new(), &FinalState::new(), Some(&states));
    assert!(!verdict.is_ok());
    assert_eq!(verdict.summary().divergent_keys, 1);
    assert!(verdict.to_string().contains("divergent key \"k\""), "{verdict}");
}

// ---------------------------------------------------------------- history

#[test]
fn duplicate_values_and_other_history_defects_are_reported() {
    let mut r = Rec::new();
    let first = r.put(1, "k", "dup", &[]);
    let second = r.put(2, "other", "dup", &[]);
    r.history.push(Op {
        id: first,
        client: 3,
        key: "k".into(),
        invoked_ns: 100,
        completed_ns: Some(50),
        kind: OpKind::Read,
        outcome: Outcome::read(vec![]),
    });
    r.history.push(Op {
        id: 77,
        client: 3,
        key: "k".into(),
        invoked_ns: 200,
        completed_ns: None,
        kind: OpKind::put("v", vec![]),
        outcome: Outcome::Ok { values: vals(&["oops"]) },
    });
    let report = check_history(&r.history);
    assert_eq!((report.ops, report.reads, report.puts, report.deletes), (4, 1, 3, 0));
    assert_eq!(
        report.errors,
        vec![
            HistoryError::CompletedBeforeInvoked { op_id: first, invoked_ns: 100, completed_ns: 50 },
            HistoryError::MissingCompletion { op_id: 77 },
            HistoryError::WriteReturnedValues { op_id: 77 },
            HistoryError::DuplicateOpId { id: first, count: 2 },
            HistoryError::DuplicateValue { value: "dup".into(), op_ids: vec![first, second] },
        ]
    );
    let verdict = audit(&r.history, &fin(&[("k", &["dup"]), ("other", &["dup"])]), None);
    assert!(!verdict.is_ok());
    assert_eq!(verdict.summary().history_errors, 5);
}

#[test]
fn recorder_assigns_ids_and_timestamps_and_round_trips_through_json_lines() {
    let mut history = History::new();
    let write = history.invoke(1, "k", OpKind::put("a", vec![]));
    let read = history.invoke(2, "k", OpKind::Read);
    let hung = history.invoke(3, "k", OpKind::delete(vals(&["a"])));
    assert_eq!((write.id(), read.id(), hung.id()), (0, 1, 2));
    history.complete(write, Outcome::ok());
    history.complete(read, Outcome::read(vals(&["a"])));
    // `hung` never completes: it stays Unknown with no completion time.
    let ops = history.ops();
    assert!(ops[0].completed_ns.unwrap() >= ops[0].invoked_ns);
    assert_eq!((ops[2].completed_ns, &ops[2].outcome), (None, &Outcome::Unknown));
    assert!(check_history(&history).is_ok());

    let text = history.to_json_lines();
    assert_eq!(text.lines().count(), 3);
    let mut back = History::from_json_lines(&format!("{text}\n\n")).unwrap();
    assert_eq!(back.ops(), history.ops());
    // The clock and the ids continue after the loaded ops.
    let latest = back.ops().iter().filter_map(|op| op.completed_ns).max().unwrap();
    assert!(back.now_ns() >= latest);
    let next = back.invoke(1, "k", OpKind::Read);
    assert_eq!(next.id(), 3);

    let error = History::from_json_lines("{\"id\":1}\n").unwrap_err();
    assert!(matches!(error, JsonLinesError::Json { line: 1, .. }), "{error}");
}

#[test]
fn json_lines_format_is_readable() {
    let mut r = Rec::new();
    r.put(1, "k", "a", &[]);
    r.op(1, "k", OpKind::delete(vals(&["a"])), Outcome::Failed);
    let text = r.history.to_json_lines();
    let first = text.lines().next().unwrap();
    assert_eq!(
        first,
        r#"{"id":0,"client":1,"key":"k","invoked_ns":0,"completed_ns":5,"kind":{"write":{"value":"a","replaces":[]}},"outcome":{"ok":{"values":[]}}}"#
    );
    assert!(text.lines().nth(1).unwrap().ends_with(r#""outcome":"failed"}"#));
}

// ---------------------------------------------------------------- verdict

#[test]
fn a_clean_run_passes_every_check() {
    let (mut r, _) = chain();
    r.put(2, "siblings", "s1", &[]);
    r.put(3, "siblings", "s2", &[]);
    r.read(4, "siblings", &["s1", "s2"]);
    r.put_outcome(2, "siblings", "s3", &[], Outcome::Unknown);
    let final_state = fin(&[("k", &["c"]), ("siblings", &["s1", "s2", "s3"])]);
    let states: ReplicaStates =
        [("k".to_string(), vec![replica("n1", &["c"], b"x"), replica("n2", &["c"], b"x")])].into();
    let verdict = audit(&r.history, &final_state, Some(&states));
    assert!(verdict.is_ok(), "{verdict}");
    let summary = verdict.summary();
    assert_eq!(
        (summary.acknowledged_writes, summary.unknown_writes, summary.unknown_observed, summary.chains_checked),
        (5, 1, 1, 1)
    );
    assert_eq!((summary.chains_skipped, summary.keys_compared), (1, 1));
    assert!(verdict.to_string().starts_with("OK:"), "{verdict}");
}

#[test]
fn a_bad_run_counts_every_kind_of_violation() {
    let mut r = Rec::new();
    r.put(1, "lost", "l1", &[]);
    r.put(1, "gone", "g1", &[]);
    r.read(1, "gone", &["g1"]);
    r.delete(1, "gone", &["g1"]);
    r.read(2, "phantom", &["boo"]);
    let final_state = fin(&[("lost", &[]), ("gone", &["g1"])]);
    let verdict = audit(&r.history, &final_state, None);
    let summary = verdict.summary();
    assert!(!summary.is_ok());
    assert_eq!((summary.lost, summary.resurrected, summary.phantoms), (1, 1, 1));
    // "lost" is a one-write chain ending empty; "gone" is a chain ending with its deleted value.
    assert_eq!(summary.causality_violations, 2);
    let text = verdict.to_string();
    assert!(text.starts_with("VIOLATIONS:"), "{text}");
    assert!(text.contains("lost write: op 0"), "{text}");
    assert!(text.contains("never written"), "{text}");
}
