//! Final-state checks: acknowledged writes survive unless superseded, and
//! values an acknowledged write replaced stay gone.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

use crate::history::{FinalState, History, Op, Outcome, Value};

/// The live values of `key` in the final state (empty when absent).
pub(crate) fn final_values<'a>(final_state: &'a FinalState, key: &str) -> &'a [Value] {
    final_state.get(key).map(Vec::as_slice).unwrap_or(&[])
}

/// An acknowledged write whose value is neither in the final state nor
/// replaced by any write that may have applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostWrite {
    /// The acknowledged write.
    pub op_id: u64,
    /// The client that issued it.
    pub client: u32,
    /// Its key.
    pub key: String,
    /// The value that disappeared.
    pub value: Value,
    /// What the key held in the final state instead.
    pub final_values: Vec<Value>,
}

impl fmt::Display for LostWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lost write: op {} (client {}) wrote {:?} to key {:?}, acknowledged, never replaced; final state {:?}",
            self.op_id, self.client, self.value, self.key, self.final_values
        )
    }
}

/// What [`check_no_lost_writes`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LostWritesReport {
    /// Acknowledged writes, puts and deletes.
    pub acknowledged: usize,
    /// Of which deletes (which cannot be lost: they have no value).
    pub acknowledged_deletes: usize,
    /// Acknowledged puts whose value is in the final state.
    pub present: usize,
    /// Acknowledged puts absent from the final state but replaced by another
    /// write (acknowledged or unknown) that carried them in its context.
    pub superseded: usize,
    /// Writes whose outcome is unknown.
    pub unknown: usize,
    /// Unknown puts observed to have applied: their value was returned by a
    /// read, is in the final state, or was replaced by another write.
    pub unknown_observed: usize,
    /// Writes that definitely failed.
    pub failed: usize,
    /// Acknowledged puts that are gone.
    pub lost: Vec<LostWrite>,
}

impl LostWritesReport {
    /// Whether no acknowledged write was lost.
    pub fn is_ok(&self) -> bool {
        self.lost.is_empty()
    }
}

/// Invariant 1 (no acknowledged write is lost), checked against the final
/// state: every acknowledged put of a value `v` on key `k` must have `v` in
/// the final state of `k`, unless another write on `k` that is acknowledged
/// or unknown (an unknown write may have applied) lists `v` in its
/// `replaces`. Acknowledged deletes have no value and cannot be lost.
pub fn check_no_lost_writes(history: &History, final_state: &FinalState) -> LostWritesReport {
    // (key, replaced value) -> the writes that may have replaced it.
    let mut replaced_by: HashMap<(&str, &str), Vec<u64>> = HashMap::new();
    // (key, value) returned by some successful read.
    let mut read: HashSet<(&str, &str)> = HashSet::new();
    for op in history.ops() {
        if op.is_write() && op.may_have_applied() {
            for value in op.replaces() {
                replaced_by.entry((op.key.as_str(), value.as_str())).or_default().push(op.id);
            }
        }
        for value in op.read_values().unwrap_or(&[]) {
            read.insert((op.key.as_str(), value.as_str()));
        }
    }
    let superseded = |op: &Op, value: &str| {
        replaced_by.get(&(op.key.as_str(), value)).is_some_and(|ids| ids.iter().any(|&id| id != op.id))
    };

    let mut report = LostWritesReport::default();
    for op in history.ops().iter().filter(|op| op.is_write()) {
        let present = |value: &Value| final_values(final_state, &op.key).contains(value);
        match &op.outcome {
            Outcome::Failed => report.failed += 1,
            Outcome::Unknown => {
                report.unknown += 1;
                if let Some(value) = op.written_value()
                    && (present(value) || superseded(op, value) || read.contains(&(op.key.as_str(), value.as_str())))
                {
                    report.unknown_observed += 1;
                }
            }
            Outcome::Ok { .. } => {
                report.acknowledged += 1;
                match op.written_value() {
                    None => report.acknowledged_deletes += 1,
                    Some(value) if present(value) => report.present += 1,
                    Some(value) if superseded(op, value) => report.superseded += 1,
                    Some(value) => report.lost.push(LostWrite {
                        op_id: op.id,
                        client: op.client,
                        key: op.key.clone(),
                        value: value.clone(),
                        final_values: final_values(final_state, &op.key).to_vec(),
                    }),
                }
            }
        }
    }
    report
}

/// A value that an acknowledged write replaced (through its causal context)
/// but that is still live in the final state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resurrection {
    /// The acknowledged write (a delete, or a put for revived siblings) that
    /// replaced the value.
    pub replaced_by: u64,
    /// The key.
    pub key: String,
    /// The value that came back.
    pub value: Value,
    /// The write(s) that originally wrote the value, if any is recorded.
    pub written_by: Vec<u64>,
}

impl fmt::Display for Resurrection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key {:?}: value {:?} (written by op {:?}) was replaced by acknowledged op {} but is live in the final state",
            self.key, self.value, self.written_by, self.replaced_by
        )
    }
}

/// What [`check_no_resurrection`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResurrectionReport {
    /// Acknowledged deletes checked.
    pub deletes_checked: usize,
    /// Values deleted by an acknowledged delete that are live again.
    pub resurrected: Vec<Resurrection>,
}

impl ResurrectionReport {
    /// Whether no deleted value came back.
    pub fn is_ok(&self) -> bool {
        self.resurrected.is_empty()
    }
}

/// What [`check_no_revived_siblings`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevivedReport {
    /// Acknowledged puts with a non-empty `replaces` that were checked.
    pub writes_checked: usize,
    /// Values replaced by an acknowledged put that are live again.
    pub revived: Vec<Resurrection>,
}

impl RevivedReport {
    /// Whether no replaced sibling came back.
    pub fn is_ok(&self) -> bool {
        self.revived.is_empty()
    }
}

/// Invariant 4 (a deleted key stays deleted): for every acknowledged delete
/// `D` on key `k`, no value in `D`'s `replaces` is live in the final state of
/// `k`. A value written concurrently with the delete (not in its `replaces`)
/// may legitimately survive it as a sibling.
pub fn check_no_resurrection(history: &History, final_state: &FinalState) -> ResurrectionReport {
    let (deletes_checked, resurrected) = surviving_replaced(history, final_state, true);
    ResurrectionReport { deletes_checked, resurrected }
}

/// The put counterpart of [`check_no_resurrection`] (invariant 2, "a write
/// whose context covers the siblings it read replaces exactly those"): for
/// every acknowledged put `P` on key `k`, no value in `P`'s `replaces` is live
/// in the final state of `k`.
pub fn check_no_revived_siblings(history: &History, final_state: &FinalState) -> RevivedReport {
    let (writes_checked, revived) = surviving_replaced(history, final_state, false);
    RevivedReport { writes_checked, revived }
}

fn surviving_replaced(history: &History, final_state: &FinalState, deletes: bool) -> (usize, Vec<Resurrection>) {
    let mut writers: HashMap<(&str, &str), Vec<u64>> = HashMap::new();
    for op in history.ops() {
        if let Some(value) = op.written_value() {
            writers.entry((op.key.as_str(), value.as_str())).or_default().push(op.id);
        }
    }
    let mut checked = 0;
    let mut found = Vec::new();
    let relevant = history.ops().iter().filter(|op| {
        op.is_write() && op.is_ok() && op.is_delete() == deletes && (deletes || !op.replaces().is_empty())
    });
    for op in relevant {
        checked += 1;
        let live = final_values(final_state, &op.key);
        let replaced: BTreeSet<&Value> = op.replaces().iter().collect();
        for value in replaced.into_iter().filter(|value| live.contains(value)) {
            found.push(Resurrection {
                replaced_by: op.id,
                key: op.key.clone(),
                value: value.clone(),
                written_by: writers.get(&(op.key.as_str(), value.as_str())).cloned().unwrap_or_default(),
            });
        }
    }
    (checked, found)
}
