//! The fencing checker: no write carrying a lock's token is accepted after
//! a write of the same key carried a higher token of that lock.
//!
//! Each accepted write of one key is recorded with the version it made
//! and the token it carried; in version order (the order the key applied
//! them), tokens must never go down. A write that goes down is a write by
//! a holder that had lost the lock, accepted anyway: guarantee 9 broken.

/// An accepted fenced write of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FencedWrite {
    /// The version the write made.
    pub version: u64,
    /// The fencing token it carried.
    pub token: u64,
}

/// A write accepted with a stale token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleWrite {
    /// The stale write.
    pub write: FencedWrite,
    /// The higher token an earlier write of the key carried.
    pub after: u64,
}

/// The writes of `writes` (all of one key and one lock) accepted with a
/// token below one an earlier version carried; empty when fencing held.
pub fn check_fencing(writes: &[FencedWrite]) -> Vec<StaleWrite> {
    let mut writes = writes.to_vec();
    writes.sort_by_key(|w| w.version);
    let mut highest = 0;
    let mut stale = Vec::new();
    for write in writes {
        if write.token < highest {
            stale.push(StaleWrite { write, after: highest });
        }
        highest = highest.max(write.token);
    }
    stale
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(version: u64, token: u64) -> FencedWrite {
        FencedWrite { version, token }
    }

    #[test]
    fn tokens_that_never_go_down_pass_in_any_recording_order() {
        assert!(check_fencing(&[w(3, 5), w(1, 2), w(2, 2), w(4, 9)]).is_empty());
        assert!(check_fencing(&[]).is_empty());
    }

    #[test]
    fn a_write_after_a_higher_token_is_reported() {
        let stale = check_fencing(&[w(1, 2), w(2, 5), w(3, 4), w(4, 5)]);
        assert_eq!(stale, vec![StaleWrite { write: w(3, 4), after: 5 }]);
    }
}
