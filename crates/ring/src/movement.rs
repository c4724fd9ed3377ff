//! Which token ranges change owners when the ring changes.
//!
//! Between two rings, the token space splits into *segments* at every vnode
//! token of either ring. Within a segment both rings walk the same nodes in
//! the same order from every token, so the preference list of any
//! replication factor is constant there. [`moving_ranges`] lists the
//! segments where some replication factor's list differs: the ranges a
//! membership change must copy. The planning is pure; the copy itself is
//! the coordinator's.

use std::collections::BTreeSet;

use crate::ring::{NodeId, Ring};
use crate::token::Token;

/// A contiguous range of tokens, both bounds included; never wraps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenRange {
    /// First token.
    pub start: Token,
    /// Last token (inclusive).
    pub end: Token,
}

impl TokenRange {
    /// Whether `token` lies in the range.
    pub fn contains(&self, token: Token) -> bool {
        self.start <= token && token <= self.end
    }

    /// The range's share of the whole token space.
    pub fn share(&self) -> f64 {
        (self.end - self.start) as f64 / u64::MAX as f64
    }
}

/// One range whose replicas differ between two rings, with, per replication
/// factor, who held it and who holds it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovingRange {
    /// The tokens.
    pub range: TokenRange,
    /// Per replication factor asked for (ascending): the old and the new
    /// preference list.
    pub owners: Vec<RangeOwners>,
}

/// The old and new preference lists of one range for one replication factor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeOwners {
    /// The replication factor.
    pub n: usize,
    /// The old ring's preference list.
    pub old: Vec<NodeId>,
    /// The new ring's preference list.
    pub new: Vec<NodeId>,
}

impl RangeOwners {
    /// New owners that were not old ones: they must receive the range.
    pub fn gaining(&self) -> Vec<NodeId> {
        self.new.iter().filter(|node| !self.old.contains(node)).cloned().collect()
    }

    /// Old owners that are not new ones: they may drop the range once the
    /// old ring is retired.
    pub fn losing(&self) -> Vec<NodeId> {
        self.old.iter().filter(|node| !self.new.contains(node)).cloned().collect()
    }
}

impl MovingRange {
    /// Every node that held the range for some replication factor: where
    /// its keys are copied from.
    pub fn sources(&self) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = Vec::new();
        for owners in &self.owners {
            for node in &owners.old {
                if !out.contains(node) {
                    out.push(node.clone());
                }
            }
        }
        out
    }

    /// The owners for replication factor `n`, if it was asked for.
    pub fn for_factor(&self, n: usize) -> Option<&RangeOwners> {
        self.owners.iter().find(|owners| owners.n == n)
    }
}

/// The segments of the token space between the vnode tokens of `a` and `b`:
/// sorted, disjoint, covering every token once.
pub fn segments(a: &Ring, b: &Ring) -> Vec<TokenRange> {
    let bounds: BTreeSet<Token> = a.vnode_tokens().chain(b.vnode_tokens()).collect();
    let bounds: Vec<Token> = bounds.into_iter().collect();
    let (Some(&first), Some(&last)) = (bounds.first(), bounds.last()) else {
        return vec![TokenRange { start: 0, end: Token::MAX }];
    };
    // The vnode at token t owns (previous token, t]; past the last token the
    // ring wraps to the first vnode, so [0, first] and (last, MAX] are one
    // owner's, listed as two ranges that do not wrap.
    let mut out = vec![TokenRange { start: 0, end: first }];
    for pair in bounds.windows(2) {
        out.push(TokenRange { start: pair[0] + 1, end: pair[1] });
    }
    if last < Token::MAX {
        out.push(TokenRange { start: last + 1, end: Token::MAX });
    }
    out
}

/// The ranges whose preference list, for some replication factor in
/// `factors`, differs between `old` and `new` (as sets: a reordering moves
/// no data). Sorted by start token.
pub fn moving_ranges(old: &Ring, new: &Ring, factors: &[usize]) -> Vec<MovingRange> {
    let mut factors: Vec<usize> = factors.to_vec();
    factors.sort_unstable();
    factors.dedup();
    let ids = |ring: &Ring, token: Token, n: usize| -> Vec<NodeId> {
        ring.preference_list(token, n).into_iter().map(|node| node.id.clone()).collect()
    };
    segments(old, new)
        .into_iter()
        .filter_map(|range| {
            let owners: Vec<RangeOwners> = factors
                .iter()
                .map(|&n| RangeOwners { n, old: ids(old, range.end, n), new: ids(new, range.end, n) })
                .collect();
            let moves = owners.iter().any(|o| {
                let (a, b): (BTreeSet<&NodeId>, BTreeSet<&NodeId>) = (o.old.iter().collect(), o.new.iter().collect());
                a != b
            });
            moves.then_some(MovingRange { range, owners })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::NodeSpec;
    use proptest::prelude::*;

    fn ring(ids: &[&str], vnodes: u32) -> Ring {
        Ring::new(ids.iter().map(|id| NodeSpec::new(*id).with_vnodes(vnodes)).collect()).unwrap()
    }

    #[test]
    fn segments_cover_the_token_space_once() {
        let a = ring(&["a", "b"], 8);
        let b = ring(&["a", "b", "c"], 8);
        let segs = segments(&a, &b);
        assert_eq!(segs[0].start, 0);
        assert_eq!(segs.last().unwrap().end, Token::MAX);
        for pair in segs.windows(2) {
            assert_eq!(pair[0].end + 1, pair[1].start, "contiguous and disjoint");
        }
        assert_eq!(segments(&ring(&[], 1), &ring(&[], 1)), [TokenRange { start: 0, end: Token::MAX }]);
    }

    #[test]
    fn the_same_ring_moves_nothing_and_a_joining_node_gains_what_moves() {
        let old = ring(&["a", "b", "c"], 16);
        assert!(moving_ranges(&old, &old, &[1, 3]).is_empty());
        let new = ring(&["a", "b", "c", "d"], 16);
        let moving = moving_ranges(&old, &new, &[3]);
        assert!(!moving.is_empty());
        for range in &moving {
            let owners = range.for_factor(3).unwrap();
            assert_eq!(owners.gaining(), ["d"], "only the new node gains");
            assert_eq!(owners.losing().len(), 1, "one old owner makes room");
            assert_eq!(range.sources(), owners.old);
        }
    }

    #[test]
    fn from_an_empty_ring_everything_moves_with_no_sources() {
        let moving = moving_ranges(&ring(&[], 1), &ring(&["a"], 4), &[3]);
        assert!(!moving.is_empty());
        assert!(moving.iter().all(|m| m.sources().is_empty()));
    }

    fn node_sets() -> impl Strategy<Value = (Vec<String>, Vec<String>)> {
        (proptest::collection::btree_set(0u8..8, 1..6), proptest::collection::btree_set(0u8..8, 1..6)).prop_map(
            |(a, b)| {
                let name = |i: &u8| format!("n{i}");
                (a.iter().map(name).collect(), b.iter().map(name).collect())
            },
        )
    }

    proptest! {
        /// Every token whose replicas differ between two rings, for some
        /// factor, lies in exactly one moving range, and that range lists
        /// the token's old and new preference lists; a token outside every
        /// moving range has the same replicas in both rings.
        #[test]
        fn a_token_moves_exactly_when_a_moving_range_holds_it(
            (a, b) in node_sets(),
            vnodes in 1u32..6,
            tokens in proptest::collection::vec(any::<u64>(), 1..64),
        ) {
            let build = |ids: &[String]| Ring::new(ids.iter().map(|id| NodeSpec::new(id.clone()).with_vnodes(vnodes)).collect()).unwrap();
            let (old, new) = (build(&a), build(&b));
            let factors = [1usize, 2, 3];
            let moving = moving_ranges(&old, &new, &factors);
            // Vnode tokens are the edges: check them and their neighbours too.
            let edges = old.vnode_tokens().chain(new.vnode_tokens()).flat_map(|t| [t.wrapping_sub(1), t, t.wrapping_add(1)]);
            for token in tokens.into_iter().chain(edges) {
                let holding: Vec<&MovingRange> = moving.iter().filter(|m| m.range.contains(token)).collect();
                prop_assert!(holding.len() <= 1);
                for &n in &factors {
                    let ids = |ring: &Ring| -> BTreeSet<NodeId> { ring.preference_list(token, n).into_iter().map(|x| x.id.clone()).collect() };
                    let differs = ids(&old) != ids(&new);
                    match holding.first() {
                        Some(range) => {
                            let owners = range.for_factor(n).unwrap();
                            prop_assert_eq!(owners.old.iter().cloned().collect::<BTreeSet<_>>(), ids(&old));
                            prop_assert_eq!(owners.new.iter().cloned().collect::<BTreeSet<_>>(), ids(&new));
                        }
                        None => prop_assert!(!differs, "token {} moved for n={} outside every moving range", token, n),
                    }
                }
            }
        }
    }
}
