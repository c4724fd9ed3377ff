//! Causal-chain check: a single client's sequential read-modify-write chain
//! on a key ends with exactly that client's last write.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::history::{FinalState, History, Op, Value};
use crate::lost::final_values;

/// Why a key was not checked as a causal chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// More than one client wrote the key.
    MultipleWriters {
        /// The clients that wrote it.
        clients: Vec<u32>,
    },
    /// A write did not succeed (failed or unknown), so the chain's end is
    /// uncertain.
    UncertainWrite {
        /// The write.
        op_id: u64,
    },
    /// The writing client's operations on the key overlap in time: the
    /// second was invoked before the first completed (or the first never did).
    NotSequential {
        /// The earlier operation.
        first: u64,
        /// The operation invoked before `first` completed.
        second: u64,
    },
    /// A write after the first has no successful read by its client between
    /// the previous write and itself.
    NoLinkingRead {
        /// The write.
        write_op: u64,
    },
    /// A write's `replaces` is not the sibling list of the read just before it.
    ContextMismatch {
        /// The write.
        write_op: u64,
        /// The read it should have taken its context from.
        read_op: u64,
    },
    /// The read linking two writes did not return the earlier write's value
    /// (or, after a delete, returned values): a stale read, after which the
    /// next write is legitimately concurrent with the earlier one.
    StaleLink {
        /// The read.
        read_op: u64,
        /// The write it should have seen.
        previous_write: u64,
    },
}

/// A key that did not qualify as a causal chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    /// The key.
    pub key: String,
    /// Why it was skipped.
    pub reason: SkipReason,
}

/// What went wrong on a qualifying chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CausalViolationKind {
    /// The final state is not exactly the last write's value (or empty after
    /// a final delete).
    FinalState,
    /// A read between two writes of the chain (or after the last) returned
    /// the preceding write's value together with other values, which that
    /// write's context covered.
    ReadAfterWrite,
}

/// A causal chain whose outcome contradicts its causality.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CausalViolation {
    /// The key.
    pub key: String,
    /// What went wrong.
    pub kind: CausalViolationKind,
    /// The operations involved: the chain's last write for
    /// [`FinalState`](CausalViolationKind::FinalState); the preceding write
    /// and the read for [`ReadAfterWrite`](CausalViolationKind::ReadAfterWrite).
    pub op_ids: Vec<u64>,
    /// The live values expected.
    pub expected: Vec<Value>,
    /// The live values found.
    pub actual: Vec<Value>,
}

impl fmt::Display for CausalViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            CausalViolationKind::FinalState => "final state",
            CausalViolationKind::ReadAfterWrite => "read after write",
        };
        write!(
            f,
            "causal chain on key {:?}: {what} (ops {:?}) expected {:?}, found {:?}",
            self.key, self.op_ids, self.expected, self.actual
        )
    }
}

/// What [`check_causal_chains`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CausalReport {
    /// Keys that qualified as causal chains and were checked.
    pub chains_checked: usize,
    /// Written keys that did not qualify.
    pub skipped: Vec<SkippedKey>,
    /// Violations found on qualifying chains.
    pub violations: Vec<CausalViolation>,
}

impl CausalReport {
    /// Whether every qualifying chain ended as its causality demands.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Invariant 2 on single-writer keys. A key qualifies as a causal chain when
/// it was written by one client only; that client's operations on it are
/// sequential (each invoked after the previous one completed); every write is
/// acknowledged; and every write after the first carries `replaces` equal (as
/// a set) to the sibling list of the last successful read by that client
/// since the previous write, and that read returned the previous write's
/// value (or nothing after a delete). Keys written by nobody are ignored;
/// written keys that do not qualify are counted in
/// [`CausalReport::skipped`].
///
/// On a qualifying key, each write's context covers everything before it, so:
/// the final state holds exactly the last write's value (nothing if it was a
/// delete); and any successful read, by any client, that lies wholly between
/// two writes (or after the last) and returns the earlier write's value
/// returns only that value. A read that misses the earlier write is stale,
/// which this check does not judge.
pub fn check_causal_chains(history: &History, final_state: &FinalState) -> CausalReport {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history.ops() {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut report = CausalReport::default();
    for (key, ops) in by_key {
        let Some(chain) = qualify(&ops).transpose() else { continue };
        match chain {
            Err(reason) => report.skipped.push(SkippedKey { key: key.to_owned(), reason }),
            Ok(writes) => {
                report.chains_checked += 1;
                check_chain(&mut report, key, &ops, &writes, final_values(final_state, key));
            }
        }
    }
    report
}

/// The chain's writes in order, `Ok(None)` if the key was never written, or
/// why the key does not qualify.
fn qualify<'a>(ops: &[&'a Op]) -> Result<Option<Vec<&'a Op>>, SkipReason> {
    let writers: BTreeSet<u32> = ops.iter().filter(|op| op.is_write()).map(|op| op.client).collect();
    let client = match writers.len() {
        0 => return Ok(None),
        1 => *writers.first().expect("one writer"),
        _ => return Err(SkipReason::MultipleWriters { clients: writers.into_iter().collect() }),
    };
    if let Some(op) = ops.iter().find(|op| op.is_write() && !op.is_ok()) {
        return Err(SkipReason::UncertainWrite { op_id: op.id });
    }
    let mut mine: Vec<&Op> = ops.iter().copied().filter(|op| op.client == client).collect();
    mine.sort_by_key(|op| (op.invoked_ns, op.completed_ns.unwrap_or(u64::MAX), op.id));
    for pair in mine.windows(2) {
        if pair[0].completed_ns.is_none_or(|completed| pair[1].invoked_ns < completed) {
            return Err(SkipReason::NotSequential { first: pair[0].id, second: pair[1].id });
        }
    }
    let mut writes = Vec::new();
    let mut previous: Option<&Op> = None;
    let mut link: Option<&Op> = None;
    for &op in &mine {
        if !op.is_write() {
            if op.read_values().is_some() {
                link = Some(op);
            }
            continue;
        }
        if let Some(previous) = previous {
            let read = link.ok_or(SkipReason::NoLinkingRead { write_op: op.id })?;
            let read_values = read.read_values().expect("links are successful reads");
            if as_set(op.replaces()) != as_set(read_values) {
                return Err(SkipReason::ContextMismatch { write_op: op.id, read_op: read.id });
            }
            let saw_previous = match previous.written_value() {
                Some(value) => read_values.contains(value),
                None => read_values.is_empty(),
            };
            if !saw_previous {
                return Err(SkipReason::StaleLink { read_op: read.id, previous_write: previous.id });
            }
        }
        writes.push(op);
        previous = Some(op);
        link = None;
    }
    Ok(Some(writes))
}

fn check_chain(report: &mut CausalReport, key: &str, ops: &[&Op], writes: &[&Op], final_live: &[Value]) {
    let live = |write: &Op| write.written_value().cloned().into_iter().collect::<Vec<_>>();
    for (index, write) in writes.iter().enumerate() {
        let (Some(value), Some(after)) = (write.written_value(), write.completed_ns) else { continue };
        let before = writes.get(index + 1).map(|next| next.invoked_ns);
        let reads = ops.iter().filter(|op| {
            op.invoked_ns >= after && before.is_none_or(|before| op.completed_ns.is_some_and(|done| done <= before))
        });
        for read in reads {
            let Some(values) = read.read_values() else { continue };
            if values.contains(value) && values.iter().any(|other| other != value) {
                report.violations.push(CausalViolation {
                    key: key.to_owned(),
                    kind: CausalViolationKind::ReadAfterWrite,
                    op_ids: vec![write.id, read.id],
                    expected: vec![value.clone()],
                    actual: values.to_vec(),
                });
            }
        }
    }
    let last = writes.last().expect("a chain has at least one write");
    let expected = live(last);
    if as_set(final_live) != as_set(&expected) || final_live.len() != expected.len() {
        report.violations.push(CausalViolation {
            key: key.to_owned(),
            kind: CausalViolationKind::FinalState,
            op_ids: vec![last.id],
            expected,
            actual: final_live.to_vec(),
        });
    }
}

fn as_set(values: &[Value]) -> BTreeSet<&Value> {
    values.iter().collect()
}
