//! The fencing checkers: no write carrying a lock's token is accepted after
//! a write of the same key carried a higher token of that lock
//! ([`check_fencing`] for versioned keys, [`check_fencing_in_time`] for
//! key-value keys), and a lock's tokens follow real time
//! ([`check_grant_order`]).
//!
//! Each accepted write of one compare-and-set key is recorded with the
//! version it made and the token it carried; in version order (the order
//! the key applied them), tokens must never go down. A write that goes
//! down is a write by a holder that had lost the lock, accepted anyway:
//! guarantee 9 broken.
//!
//! A key-value key has no version order, so its accepted writes are
//! checked against real time: none may have been invoked after a write
//! with a higher token was acknowledged.

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

/// An accepted fenced write of a key-value key, timed on the recorder's
/// clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedWrite {
    /// When the write was invoked, in nanoseconds.
    pub invoked_ns: u64,
    /// When its acknowledgement came back.
    pub completed_ns: u64,
    /// The fencing token it carried.
    pub token: u64,
}

/// The writes of `writes` (all of one key and one lock) accepted although a
/// write with a higher token had been acknowledged before they were
/// invoked, each with the earliest such write; empty when fencing held.
pub fn check_fencing_in_time(writes: &[TimedWrite]) -> Vec<(TimedWrite, TimedWrite)> {
    let mut by_completion = writes.to_vec();
    by_completion.sort_by_key(|w| w.completed_ns);
    writes
        .iter()
        .filter_map(|write| {
            by_completion
                .iter()
                .take_while(|earlier| earlier.completed_ns < write.invoked_ns)
                .find(|earlier| earlier.token > write.token)
                .map(|earlier| (*write, *earlier))
        })
        .collect()
}

/// A lock grant as a client saw it: when it asked, when the grant came
/// back, and the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// When the acquire was invoked, in nanoseconds on the recorder's clock.
    pub invoked_ns: u64,
    /// When the grant came back.
    pub completed_ns: u64,
    /// Its fencing token.
    pub token: u64,
}

/// Two grants of one lock whose tokens contradict real time: the same
/// token twice, or a grant that came back before another was asked for
/// yet carries a token no lower. Empty when tokens strictly increase in
/// every order real time fixes.
pub fn check_grant_order(grants: &[Grant]) -> Vec<(Grant, Grant)> {
    let mut by_token = grants.to_vec();
    by_token.sort_by_key(|g| (g.token, g.invoked_ns));
    let mut bad: Vec<(Grant, Grant)> =
        by_token.windows(2).filter(|w| w[0].token == w[1].token).map(|w| (w[0], w[1])).collect();
    // In token order, a grant must not have completed before an earlier
    // token's grant was even asked for: keep the latest invocation so far.
    let mut latest: Option<Grant> = None;
    for grant in &by_token {
        if let Some(earlier) = latest
            && grant.completed_ns < earlier.invoked_ns
            && grant.token > earlier.token
        {
            bad.push((*grant, earlier));
        }
        if latest.is_none_or(|l| grant.invoked_ns > l.invoked_ns) {
            latest = Some(*grant);
        }
    }
    bad
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
    fn grant_tokens_must_follow_real_time() {
        let g = |invoked_ns, completed_ns, token| Grant { invoked_ns, completed_ns, token };
        assert!(check_grant_order(&[g(0, 10, 1), g(20, 30, 2), g(25, 40, 3)]).is_empty());
        // Concurrent grants may take tokens in either order.
        assert!(check_grant_order(&[g(0, 30, 2), g(5, 20, 1)]).is_empty());
        // A grant that came back before another was asked holds the lower token.
        assert_eq!(check_grant_order(&[g(0, 10, 5), g(20, 30, 4)]).len(), 1);
        assert_eq!(check_grant_order(&[g(0, 10, 4), g(20, 30, 4)]).len(), 1, "a token twice");
    }

    #[test]
    fn a_key_value_write_invoked_after_a_higher_token_was_acknowledged_is_reported() {
        let t = |invoked_ns, completed_ns, token| TimedWrite { invoked_ns, completed_ns, token };
        // Overlapping writes may land in either order; later ones carry higher tokens.
        assert!(check_fencing_in_time(&[t(0, 10, 1), t(5, 20, 2), t(8, 9, 1), t(30, 40, 3)]).is_empty());
        let stale = check_fencing_in_time(&[t(0, 10, 1), t(20, 30, 4), t(40, 50, 3), t(25, 45, 2)]);
        assert_eq!(stale, vec![(t(40, 50, 3), t(20, 30, 4))]);
        assert!(check_fencing_in_time(&[]).is_empty());
    }

    #[test]
    fn a_write_after_a_higher_token_is_reported() {
        let stale = check_fencing(&[w(1, 2), w(2, 5), w(3, 4), w(4, 5)]);
        assert_eq!(stale, vec![StaleWrite { write: w(3, 4), after: 5 }]);
    }
}
