//! The register a linearizable key holds, and the operations on it.

use bytes::Bytes;

/// How many recent writes a register remembers.
pub const RECENT_WRITES: usize = 16;

/// A linearizable key's state. A key never written is version 0 with no
/// value. Every change, delete included, raises the version by one, so a
/// version names one state of the key for ever and a write conditioned on
/// it applies at most once.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Register {
    /// Changes applied so far.
    pub version: u64,
    /// The value; `None` when never written or deleted.
    pub value: Option<Bytes>,
    /// The ids of the last [`RECENT_WRITES`] writes that gave one, oldest
    /// first, with the version each made: a retry of one of them (whose
    /// first attempt's outcome was unknown) is answered as applied instead
    /// of failing its condition, even after a few more writes.
    pub recent: Vec<RecentWrite>,
    /// The highest fencing token a write of this key carried, per lock: a
    /// write with a lower token of the same lock is refused.
    pub fences: Vec<Fence>,
}

/// A lock's fencing token, as a write carries it and a register remembers
/// it: the same type the key-value store's sibling sets use.
pub use cohort_ring::Fence;

/// A write a register remembers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentWrite {
    /// The write's id.
    pub id: Bytes,
    /// The version it made.
    pub version: u64,
}

impl Register {
    /// Whether the key holds a value.
    pub fn exists(&self) -> bool {
        self.value.is_some()
    }

    /// The highest token of `lock` a write of this register carried.
    pub fn fence(&self, lock: &str) -> Option<u64> {
        self.fences.iter().find(|f| f.lock == lock).map(|f| f.token)
    }

    /// The version write `id` made, if it is one of the recent writes.
    pub fn applied(&self, id: &[u8]) -> Option<u64> {
        self.recent.iter().rev().find(|w| w.id == id).map(|w| w.version)
    }
}

/// An operation on a register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Read the register (changes nothing).
    Read,
    /// Set the value if the register is at version `expect` (0: never
    /// written; a deleted key keeps its version, which recreating it names).
    Put {
        /// The version the writer last saw.
        expect: u64,
        /// The new value.
        value: Bytes,
        /// The writer's fencing token, if it writes under a lock.
        fence: Option<Fence>,
    },
    /// Delete the value if the register holds one at version `expect`.
    Delete {
        /// The version the writer last saw.
        expect: u64,
        /// The writer's fencing token, if it writes under a lock.
        fence: Option<Fence>,
    },
}

/// What applying a change to the current register decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Nothing to write: a read, or a change whose condition failed, or a
    /// retry of the write that made the current state. The register must
    /// still be settled on a quorum before it is answered.
    Keep(Verdict),
    /// The register to propose.
    Replace(Register),
}

/// How an operation that changes nothing ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A read.
    Read,
    /// The write had already applied, making this version.
    AlreadyApplied(u64),
    /// The condition failed.
    Mismatch,
    /// The write's fencing token is below the highest this key has seen
    /// for its lock (that token).
    Fenced(u64),
}

impl Change {
    /// Applies the change with write id `write` (empty: none) to `current`.
    pub fn apply(&self, current: &Register, write: &Bytes) -> Effect {
        if matches!(self, Change::Read) {
            return Effect::Keep(Verdict::Read);
        }
        if let Some(version) = current.applied(write).filter(|_| !write.is_empty()) {
            return Effect::Keep(Verdict::AlreadyApplied(version));
        }
        let fence = match self {
            Change::Put { fence, .. } | Change::Delete { fence, .. } => fence.as_ref(),
            Change::Read => None,
        };
        // A stale holder is refused whatever else it asks.
        if let Some(fence) = fence
            && let Some(seen) = current.fence(&fence.lock).filter(|seen| fence.token < *seen)
        {
            return Effect::Keep(Verdict::Fenced(seen));
        }
        let next = |value| {
            let version = current.version + 1;
            let mut recent = current.recent.clone();
            if !write.is_empty() {
                if recent.len() >= RECENT_WRITES {
                    recent.remove(0);
                }
                recent.push(RecentWrite { id: write.clone(), version });
            }
            let mut fences = current.fences.clone();
            if let Some(fence) = fence {
                match fences.iter_mut().find(|f| f.lock == fence.lock) {
                    Some(seen) => seen.token = seen.token.max(fence.token),
                    None => fences.push(fence.clone()),
                }
            }
            Register { version, value, recent, fences }
        };
        match self {
            Change::Read => Effect::Keep(Verdict::Read),
            Change::Put { expect, value, .. } if *expect == current.version => {
                Effect::Replace(next(Some(value.clone())))
            }
            Change::Delete { expect, .. } if *expect == current.version && current.exists() => {
                Effect::Replace(next(None))
            }
            Change::Put { .. } | Change::Delete { .. } => Effect::Keep(Verdict::Mismatch),
        }
    }

    /// Whether the change may write (everything but a read).
    pub fn writes(&self) -> bool {
        !matches!(self, Change::Read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(version: u64, value: Option<&'static [u8]>, last: &'static [u8]) -> Register {
        let recent =
            if last.is_empty() { Vec::new() } else { vec![RecentWrite { id: Bytes::from_static(last), version }] };
        Register { version, value: value.map(Bytes::from_static), recent, fences: Vec::new() }
    }

    #[test]
    fn a_put_applies_only_at_the_expected_version() {
        let put = |expect| Change::Put { expect, value: Bytes::from_static(b"v"), fence: None };
        let w = Bytes::from_static(b"w1");
        assert_eq!(put(0).apply(&Register::default(), &w), Effect::Replace(reg(1, Some(b"v"), b"w1")));
        assert_eq!(put(1).apply(&Register::default(), &w), Effect::Keep(Verdict::Mismatch));
        assert_eq!(put(0).apply(&reg(3, Some(b"x"), b""), &w), Effect::Keep(Verdict::Mismatch));
        // A deleted key keeps its version: recreating it names that version.
        assert_eq!(put(0).apply(&reg(4, None, b""), &w), Effect::Keep(Verdict::Mismatch));
        assert_eq!(put(4).apply(&reg(4, None, b""), &w), Effect::Replace(reg(5, Some(b"v"), b"w1")));
    }

    #[test]
    fn a_delete_needs_a_value_at_the_expected_version() {
        let w = Bytes::new();
        assert_eq!(
            Change::Delete { expect: 2, fence: None }.apply(&reg(2, Some(b"x"), b""), &w),
            Effect::Replace(reg(3, None, b""))
        );
        assert_eq!(
            Change::Delete { expect: 2, fence: None }.apply(&reg(2, None, b""), &w),
            Effect::Keep(Verdict::Mismatch)
        );
        assert_eq!(
            Change::Delete { expect: 1, fence: None }.apply(&reg(2, Some(b"x"), b""), &w),
            Effect::Keep(Verdict::Mismatch)
        );
        assert_eq!(
            Change::Delete { expect: 0, fence: None }.apply(&Register::default(), &w),
            Effect::Keep(Verdict::Mismatch)
        );
    }

    #[test]
    fn a_retry_of_the_write_that_made_the_state_is_not_applied_again() {
        let current = reg(5, Some(b"v"), b"w1");
        let put = Change::Put { expect: 4, value: Bytes::from_static(b"v"), fence: None };
        assert_eq!(put.apply(&current, &Bytes::from_static(b"w1")), Effect::Keep(Verdict::AlreadyApplied(5)));
        assert_eq!(put.apply(&current, &Bytes::from_static(b"w2")), Effect::Keep(Verdict::Mismatch));
        // Without a write id nothing is recognised.
        assert_eq!(put.apply(&reg(5, Some(b"v"), b""), &Bytes::new()), Effect::Keep(Verdict::Mismatch));
    }

    #[test]
    fn a_retry_is_recognised_after_later_writes_within_the_window() {
        let mut current = Register::default();
        let ids: Vec<Bytes> = (0..RECENT_WRITES + 1).map(|i| Bytes::from(format!("w{i}"))).collect();
        for id in &ids {
            let put = Change::Put { expect: current.version, value: Bytes::from_static(b"v"), fence: None };
            let Effect::Replace(next) = put.apply(&current, id) else { panic!("applies") };
            current = next;
        }
        assert_eq!(current.recent.len(), RECENT_WRITES);
        let retry = Change::Put { expect: 1, value: Bytes::from_static(b"v"), fence: None };
        assert_eq!(retry.apply(&current, &ids[1]), Effect::Keep(Verdict::AlreadyApplied(2)));
        // The oldest has left the window: its retry just fails its condition.
        assert_eq!(retry.apply(&current, &ids[0]), Effect::Keep(Verdict::Mismatch));
    }

    #[test]
    fn a_write_with_a_token_below_the_highest_seen_for_its_lock_is_refused() {
        let fenced = |token, expect| Change::Put {
            expect,
            value: Bytes::from_static(b"v"),
            fence: Some(Fence { lock: "l".into(), token }),
        };
        let w = Bytes::new();
        let Effect::Replace(first) = fenced(7, 0).apply(&Register::default(), &w) else { panic!("applies") };
        assert_eq!(first.fence("l"), Some(7));
        // The same token and higher ones pass; a lower one never does, even
        // at the right version, and another lock's tokens are apart.
        let Effect::Replace(second) = fenced(7, 1).apply(&first, &w) else { panic!("applies") };
        assert_eq!(fenced(6, 2).apply(&second, &w), Effect::Keep(Verdict::Fenced(7)));
        let Effect::Replace(third) = fenced(9, 2).apply(&second, &w) else { panic!("applies") };
        assert_eq!(fenced(8, 3).apply(&third, &w), Effect::Keep(Verdict::Fenced(9)));
        let other = Change::Put { expect: 3, value: Bytes::new(), fence: Some(Fence { lock: "m".into(), token: 1 }) };
        assert!(matches!(other.apply(&third, &w), Effect::Replace(_)));
        // A write without a fence is not checked.
        let plain = Change::Put { expect: 3, value: Bytes::new(), fence: None };
        assert!(matches!(plain.apply(&third, &w), Effect::Replace(_)));
    }
}
