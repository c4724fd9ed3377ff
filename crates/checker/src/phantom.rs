//! Phantom check: every value anybody saw was written by a write that may
//! have applied, to that key, before it was seen.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::history::{FinalState, History, Op, Value};

/// Where a phantom value was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhantomSource {
    /// Returned by a successful read.
    Read {
        /// The read.
        op_id: u64,
        /// The client that issued it.
        client: u32,
    },
    /// Present in the final state.
    FinalState,
}

/// Why a value seen is a phantom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhantomCause {
    /// No write in the history wrote it.
    NeverWritten,
    /// Only writes that definitely failed (were never applied) wrote it.
    OnlyFailedWrites {
        /// The failed writes.
        op_ids: Vec<u64>,
    },
    /// It was written, but to another key.
    WrittenToOtherKey {
        /// The key it was written to.
        key: String,
        /// The writes.
        op_ids: Vec<u64>,
    },
    /// The read completed before any write of the value was invoked.
    ReadBeforeWrite {
        /// The writes, all invoked after the read completed.
        op_ids: Vec<u64>,
    },
    /// The value appears more than once in one answer: one write applied
    /// twice under two versions (for example a retry that was not
    /// deduplicated), so all but one copy were never written.
    DuplicateSibling {
        /// How many times it appears.
        count: usize,
    },
}

/// A value seen that no applied write accounts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phantom {
    /// Where it was seen.
    pub source: PhantomSource,
    /// The key.
    pub key: String,
    /// The value.
    pub value: Value,
    /// Why it is a phantom.
    pub cause: PhantomCause,
}

impl fmt::Display for Phantom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            PhantomSource::Read { op_id, client } => write!(
                f,
                "phantom: read op {op_id} (client {client}) on key {:?} returned {:?}: ",
                self.key, self.value
            )?,
            PhantomSource::FinalState => {
                write!(f, "phantom: final state of key {:?} holds {:?}: ", self.key, self.value)?
            }
        }
        match &self.cause {
            PhantomCause::NeverWritten => write!(f, "never written"),
            PhantomCause::OnlyFailedWrites { op_ids } => write!(f, "written only by failed ops {op_ids:?}"),
            PhantomCause::WrittenToOtherKey { key, op_ids } => write!(f, "written to key {key:?} by ops {op_ids:?}"),
            PhantomCause::ReadBeforeWrite { op_ids } => {
                write!(f, "read completed before its writes {op_ids:?} were invoked")
            }
            PhantomCause::DuplicateSibling { count } => write!(f, "appears {count} times in one answer"),
        }
    }
}

/// What [`check_no_phantoms`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PhantomReport {
    /// Successful reads checked.
    pub reads_checked: usize,
    /// Values checked, in reads and in the final state.
    pub values_checked: usize,
    /// Values no applied write accounts for.
    pub phantoms: Vec<Phantom>,
}

impl PhantomReport {
    /// Whether every value seen was written.
    pub fn is_ok(&self) -> bool {
        self.phantoms.is_empty()
    }
}

/// Every value returned by a successful read, and every value of the final
/// state when given, must have been written to the same key by a write that
/// is acknowledged or unknown (a failed write was never applied, so seeing
/// its value is a phantom), and a read cannot return a value whose every
/// write was invoked after the read completed. A value listed twice in one
/// answer is a phantom copy.
pub fn check_no_phantoms(history: &History, final_state: Option<&FinalState>) -> PhantomReport {
    let mut writes: HashMap<&str, Vec<&Op>> = HashMap::new();
    for op in history.ops() {
        if let Some(value) = op.written_value() {
            writes.entry(value.as_str()).or_default().push(op);
        }
    }
    let mut report = PhantomReport::default();
    for op in history.ops() {
        if let Some(values) = op.read_values() {
            report.reads_checked += 1;
            let source = PhantomSource::Read { op_id: op.id, client: op.client };
            check_answer(&mut report, &writes, source, &op.key, values, op.completed_ns);
        }
    }
    for (key, values) in final_state.into_iter().flatten() {
        check_answer(&mut report, &writes, PhantomSource::FinalState, key, values, None);
    }
    report
}

fn check_answer(
    report: &mut PhantomReport,
    writes: &HashMap<&str, Vec<&Op>>,
    source: PhantomSource,
    key: &str,
    values: &[Value],
    completed_ns: Option<u64>,
) {
    let mut counts: BTreeMap<&Value, usize> = BTreeMap::new();
    for value in values {
        *counts.entry(value).or_default() += 1;
    }
    for (value, count) in counts {
        report.values_checked += 1;
        let cause = if count > 1 {
            Some(PhantomCause::DuplicateSibling { count })
        } else {
            phantom_cause(writes.get(value.as_str()).map(Vec::as_slice).unwrap_or(&[]), key, completed_ns)
        };
        if let Some(cause) = cause {
            report.phantoms.push(Phantom { source: source.clone(), key: key.to_owned(), value: value.clone(), cause });
        }
    }
}

fn phantom_cause(writes: &[&Op], key: &str, read_completed_ns: Option<u64>) -> Option<PhantomCause> {
    let ids = |filter: &dyn Fn(&Op) -> bool| writes.iter().filter(|op| filter(op)).map(|op| op.id).collect::<Vec<_>>();
    let applied = ids(&|op| op.key == key && op.may_have_applied());
    if !applied.is_empty() {
        let before_read = |op: &Op| read_completed_ns.is_none_or(|completed| op.invoked_ns <= completed);
        if ids(&|op| op.key == key && op.may_have_applied() && before_read(op)).is_empty() {
            return Some(PhantomCause::ReadBeforeWrite { op_ids: applied });
        }
        return None;
    }
    let failed = ids(&|op| op.key == key);
    if !failed.is_empty() {
        return Some(PhantomCause::OnlyFailedWrites { op_ids: failed });
    }
    match writes.first() {
        Some(first) => {
            let other = first.key.clone();
            let op_ids = ids(&|op| op.key == other);
            Some(PhantomCause::WrittenToOtherKey { key: other, op_ids })
        }
        None => Some(PhantomCause::NeverWritten),
    }
}
