//! Ballots: the order in which proposals compete.

use std::fmt;

/// A proposal's number. Ballots compare by round, then by proposer, so two
/// proposers never hold the same ballot as long as their ids differ (each
/// coordinator draws a random 64-bit id when it starts). Rounds are the
/// proposer's clock in microseconds, raised above any ballot it has seen
/// refused, so a proposer that lost to a higher ballot overtakes it on its
/// next try and clocks need not agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Ballot {
    /// Microseconds since the Unix epoch, or more.
    pub round: u64,
    /// The proposer's id.
    pub proposer: u64,
}

impl Ballot {
    /// The ballot below every proposal: what a fresh acceptor has promised.
    pub const ZERO: Ballot = Ballot { round: 0, proposer: 0 };

    /// The same proposer's next round: what an acceptor promises when it
    /// accepts this ballot, so that the proposer may send its next proposal
    /// for the key straight to the accept phase.
    pub fn successor(self) -> Ballot {
        Ballot { round: self.round.saturating_add(1), proposer: self.proposer }
    }

    /// The next ballot of `proposer` at time `now` (microseconds), above
    /// `seen`, the highest ballot it has been refused by.
    pub fn next(proposer: u64, now: u64, seen: Ballot) -> Ballot {
        Ballot { round: now.max(seen.round.saturating_add(1)), proposer }
    }
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:016x}", self.round, self.proposer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_next_ballot_is_above_what_was_seen_even_with_a_clock_behind() {
        let seen = Ballot { round: 1_000, proposer: 9 };
        assert_eq!(Ballot::next(1, 10, seen), Ballot { round: 1_001, proposer: 1 });
        assert!(Ballot::next(1, 10, seen) > seen);
        assert_eq!(Ballot::next(1, 5_000, seen), Ballot { round: 5_000, proposer: 1 });
        assert!(Ballot { round: 5, proposer: 2 } > Ballot { round: 5, proposer: 1 });
    }
}
