//! Linearizability of compare-and-set registers: the search of Wing and
//! Gong with Lowe's memoisation, as Knossos and Porcupine do it.
//!
//! A history is a set of operations on one register, each with the time it
//! was invoked and the time its answer came back (none when it never
//! did, or when the answer said the outcome is unknown). It is
//! linearizable if the operations can be put in one order that respects
//! real time (an operation that completed before another was invoked comes
//! first) and in which each operation, applied to the register in turn,
//! returns what the client saw. An operation of unknown outcome may take
//! effect at any point after its invocation, or never.
//!
//! The register is Cohort's: a version (0 until first written, one more
//! per change, a delete included) and a value. Histories of several keys
//! are checked key by key (linearizability is compositional).

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The register's state in the model.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct RegisterState {
    /// Changes applied so far.
    pub version: u64,
    /// The value, `None` when never written or deleted.
    pub value: Option<String>,
}

/// What a client asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterCall {
    /// A linearizable read.
    Read,
    /// Write `value` if the register is at version `expect`.
    Put {
        /// The version the client expected.
        expect: u64,
        /// The value written (unique per write, to name it).
        value: String,
    },
    /// Delete the value if the register holds one at version `expect`.
    Delete {
        /// The version the client expected.
        expect: u64,
    },
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterReturn {
    /// A read's answer.
    Read(RegisterState),
    /// A write applied; the register's version after it.
    Written {
        /// The new version.
        version: u64,
    },
    /// The condition failed; the register's version then.
    Mismatch {
        /// The current version the server named.
        current: u64,
    },
    /// No definite answer: the write may or may not have applied.
    Unknown,
}

/// One operation on the register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterOp {
    /// The client that issued it (for reports).
    pub client: u32,
    /// When it was invoked, in nanoseconds on the recorder's clock.
    pub invoked_ns: u64,
    /// When its answer came back; `None` for an unknown outcome.
    pub completed_ns: Option<u64>,
    /// What was asked.
    pub call: RegisterCall,
    /// What came back.
    pub ret: RegisterReturn,
}

/// A history with no linearization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotLinearizable {
    /// Operations in the longest order found that explains them.
    pub explained: usize,
    /// Operations that had to be explained.
    pub required: usize,
    /// The register after that longest order.
    pub state: RegisterState,
    /// The operations that could be next there, none of which fits.
    pub stuck_on: Vec<RegisterOp>,
}

impl fmt::Display for NotLinearizable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not linearizable: at most {} of {} completed operations can be ordered; then the register is at version {} ({:?}) and none of these fits: {:?}",
            self.explained, self.required, self.state.version, self.state.value, self.stuck_on
        )
    }
}

/// Applies `op` to `state`: the next state if the operation, taking effect
/// there, returns what it returned.
pub fn step(state: &RegisterState, op: &RegisterOp) -> Option<RegisterState> {
    let unknown = op.ret == RegisterReturn::Unknown;
    let applies = match &op.call {
        RegisterCall::Read => {
            return match &op.ret {
                RegisterReturn::Read(seen) if seen == state => Some(state.clone()),
                _ => None,
            };
        }
        RegisterCall::Put { expect, .. } => *expect == state.version,
        RegisterCall::Delete { expect } => *expect == state.version && state.value.is_some(),
    };
    if !applies {
        return match op.ret {
            RegisterReturn::Mismatch { current } if current == state.version => Some(state.clone()),
            // An unknown write that did not apply here is never placed: it
            // would change nothing, it need not be explained, and it bounds
            // no other operation (it has no completion), so leaving it out
            // is the same history. Placing it as a no-op would only double
            // the search space for every such write.
            _ => None,
        };
    }
    let next = RegisterState {
        version: state.version + 1,
        value: match &op.call {
            RegisterCall::Put { value, .. } => Some(value.clone()),
            _ => None,
        },
    };
    match op.ret {
        RegisterReturn::Written { version } if version == next.version => Some(next),
        _ if unknown => Some(next),
        _ => None,
    }
}

/// Checks that `ops`, all on one register that starts never written, are
/// linearizable.
pub fn check_register(ops: &[RegisterOp]) -> Result<(), NotLinearizable> {
    let mut ops: Vec<RegisterOp> = ops.to_vec();
    ops.sort_by_key(|op| op.invoked_ns);
    let n = ops.len();
    let completed: Vec<u64> = ops.iter().map(|op| op.completed_ns.unwrap_or(u64::MAX)).collect();
    let required = ops.iter().filter(|op| op.completed_ns.is_some()).count();
    let words = n.div_ceil(64);
    let mut done = vec![0u64; words];
    let is_done = |done: &[u64], i: usize| done[i / 64] & (1 << (i % 64)) != 0;
    let mut state = RegisterState::default();
    let mut stack: Vec<(usize, RegisterState)> = Vec::new();
    let mut seen: HashSet<(Vec<u64>, RegisterState)> = HashSet::new();
    let mut explained = 0usize;
    let mut deepest: Option<(usize, RegisterState, Vec<u64>)> = None;
    let mut next_try = 0usize;
    loop {
        if explained == required {
            return Ok(());
        }
        // The earliest completion among the operations not yet placed: an
        // operation invoked after it cannot come before that one.
        let frontier = (0..n).filter(|&i| !is_done(&done, i)).map(|i| completed[i]).min().unwrap_or(u64::MAX);
        let mut found = None;
        for i in next_try..n {
            if ops[i].invoked_ns > frontier {
                break;
            }
            if is_done(&done, i) {
                continue;
            }
            if let Some(next) = step(&state, &ops[i]) {
                let mut marked = done.clone();
                marked[i / 64] |= 1 << (i % 64);
                if seen.insert((marked, next.clone())) {
                    found = Some((i, next));
                    break;
                }
            }
        }
        match found {
            Some((i, next)) => {
                stack.push((i, std::mem::replace(&mut state, next)));
                done[i / 64] |= 1 << (i % 64);
                if ops[i].completed_ns.is_some() {
                    explained += 1;
                }
                next_try = 0;
            }
            None => {
                if deepest.as_ref().is_none_or(|(depth, _, _)| explained > *depth) {
                    deepest = Some((explained, state.clone(), done.clone()));
                }
                let Some((i, previous)) = stack.pop() else {
                    let (explained, state, done) = deepest.unwrap_or_default();
                    let stuck_on = (0..n)
                        .filter(|&i| !is_done(&done, i))
                        .filter(|&i| ops[i].invoked_ns <= frontier_of(&done, &completed, n))
                        .map(|i| ops[i].clone())
                        .take(8)
                        .collect();
                    return Err(NotLinearizable { explained, required, state, stuck_on });
                };
                done[i / 64] &= !(1 << (i % 64));
                if ops[i].completed_ns.is_some() {
                    explained -= 1;
                }
                state = previous;
                next_try = i + 1;
            }
        }
    }
}

fn frontier_of(done: &[u64], completed: &[u64], n: usize) -> u64 {
    (0..n).filter(|&i| done[i / 64] & (1 << (i % 64)) == 0).map(|i| completed[i]).min().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u32, start: u64, end: Option<u64>, call: RegisterCall, ret: RegisterReturn) -> RegisterOp {
        RegisterOp { client, invoked_ns: start, completed_ns: end, call, ret }
    }

    fn put(expect: u64, value: &str) -> RegisterCall {
        RegisterCall::Put { expect, value: value.into() }
    }

    fn read(version: u64, value: Option<&str>) -> RegisterReturn {
        RegisterReturn::Read(RegisterState { version, value: value.map(String::from) })
    }

    /// Many writes of unknown outcome that cannot have applied (their
    /// expected version went by) are left out rather than tried as no-ops
    /// everywhere: a search over 2^60 subsets would not end.
    #[test]
    fn unknown_writes_that_never_applied_do_not_blow_up_the_search() {
        let mut ops = vec![op(1, 0, Some(1), put(0, "a"), RegisterReturn::Written { version: 1 })];
        for i in 0..60 {
            ops.push(op(2 + i, 2, None, put(0, &format!("lost{i}")), RegisterReturn::Unknown));
        }
        for i in 0..40u64 {
            let t = 10 + 2 * i;
            ops.push(op(100, t, Some(t + 1), RegisterCall::Read, read(1, Some("a"))));
        }
        ops.push(op(100, 200, Some(201), put(1, "b"), RegisterReturn::Written { version: 2 }));
        assert_eq!(check_register(&ops), Ok(()));
        // One of them applying is still found.
        ops.push(op(101, 300, Some(301), RegisterCall::Read, read(2, Some("b"))));
        ops.push(op(102, 3, None, put(2, "late"), RegisterReturn::Unknown));
        ops.push(op(101, 302, Some(303), RegisterCall::Read, read(3, Some("late"))));
        assert_eq!(check_register(&ops), Ok(()));
    }

    #[test]
    fn a_sequential_history_that_follows_the_model_is_linearizable() {
        let ops = [
            op(1, 0, Some(1), put(0, "a"), RegisterReturn::Written { version: 1 }),
            op(1, 2, Some(3), RegisterCall::Read, read(1, Some("a"))),
            op(1, 4, Some(5), put(0, "b"), RegisterReturn::Mismatch { current: 1 }),
            op(1, 6, Some(7), RegisterCall::Delete { expect: 1 }, RegisterReturn::Written { version: 2 }),
            op(1, 8, Some(9), RegisterCall::Read, read(2, None)),
        ];
        assert_eq!(check_register(&ops), Ok(()));
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_not_linearizable() {
        let ops = [
            op(1, 0, Some(1), put(0, "a"), RegisterReturn::Written { version: 1 }),
            op(2, 2, Some(3), RegisterCall::Read, read(0, None)),
        ];
        let error = check_register(&ops).unwrap_err();
        assert_eq!(error.explained, 1);
        assert!(error.to_string().contains("not linearizable"), "{error}");
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // The read overlaps the write: it may see before or after.
        for seen in [read(0, None), read(1, Some("a"))] {
            let ops = [
                op(1, 0, Some(10), put(0, "a"), RegisterReturn::Written { version: 1 }),
                op(2, 1, Some(5), RegisterCall::Read, seen),
            ];
            assert_eq!(check_register(&ops), Ok(()));
        }
    }

    #[test]
    fn two_writes_at_one_version_cannot_both_apply() {
        let ops = [
            op(1, 0, Some(10), put(0, "a"), RegisterReturn::Written { version: 1 }),
            op(2, 0, Some(10), put(0, "b"), RegisterReturn::Written { version: 1 }),
        ];
        assert!(check_register(&ops).is_err());
    }

    #[test]
    fn an_unknown_write_may_have_applied_or_not() {
        let unknown = op(1, 0, None, put(0, "a"), RegisterReturn::Unknown);
        let applied = [unknown.clone(), op(2, 5, Some(6), RegisterCall::Read, read(1, Some("a")))];
        assert_eq!(check_register(&applied), Ok(()));
        let not = [unknown.clone(), op(2, 5, Some(6), RegisterCall::Read, read(0, None))];
        assert_eq!(check_register(&not), Ok(()));
        // But not both: once seen applied, it stays applied.
        let flip = [
            unknown,
            op(2, 5, Some(6), RegisterCall::Read, read(1, Some("a"))),
            op(2, 7, Some(8), RegisterCall::Read, read(0, None)),
        ];
        assert!(check_register(&flip).is_err());
    }

    #[test]
    fn a_mismatch_must_name_the_version_of_its_moment() {
        let ops = [
            op(1, 0, Some(1), put(0, "a"), RegisterReturn::Written { version: 1 }),
            op(2, 2, Some(3), put(0, "b"), RegisterReturn::Mismatch { current: 0 }),
        ];
        assert!(check_register(&ops).is_err());
    }

    #[test]
    fn many_concurrent_increments_are_checked_quickly() {
        // 12 clients each write once at versions 0..12, all overlapping,
        // with a read at the end: one order must exist.
        let mut ops: Vec<RegisterOp> = (0..12)
            .map(|i| {
                op(
                    i,
                    0,
                    Some(100),
                    put(u64::from(i), &format!("v{i}")),
                    RegisterReturn::Written { version: u64::from(i) + 1 },
                )
            })
            .collect();
        ops.push(op(99, 101, Some(102), RegisterCall::Read, read(12, Some("v11"))));
        assert_eq!(check_register(&ops), Ok(()));
    }
}
