//! The shape of the anti-entropy hash trees: which leaf a key falls in, how a
//! token range splits into digest segments, and what a key contributes.
//!
//! Every storage node keeps, per tenant, [`LEAVES`] leaf hashes over the
//! token space (TicTac style): a leaf is the XOR of [`key_hash`] over the
//! keys of the tenant whose token falls in it. XOR makes the leaf
//! incremental — a write toggles out the key's old hash and toggles in the
//! new one, in any order — and independent of the order keys were written.
//!
//! Two replicas of a token range compare it segment by segment
//! ([`segments`]): the range cut at leaf boundaries. A segment that covers a
//! whole leaf is that leaf's hash; the (at most two) segments that cover a
//! leaf only in part are computed from the keys in them. Equal segments hold
//! the same states with overwhelming probability; only the keys of
//! differing segments are compared one by one.
//!
//! A key's hash covers its causal context, not its values: with unique
//! dots, the set of writes a replica has seen determines which siblings it
//! keeps, so two replicas with equal clocks hold equal states.

use sha2::{Digest, Sha256};

use crate::dvv::CausalContext;
use crate::movement::TokenRange;
use crate::token::Token;

/// Bits of a token that choose its leaf.
pub const LEAF_BITS: u32 = 14;
/// Leaves per tenant tree.
pub const LEAVES: usize = 1 << LEAF_BITS;

/// The leaf `token` falls in.
pub fn leaf_of(token: Token) -> usize {
    (token >> (64 - LEAF_BITS)) as usize
}

/// The tokens of leaf `leaf`.
pub fn leaf_range(leaf: usize) -> TokenRange {
    let shift = 64 - LEAF_BITS;
    let start = (leaf as u64) << shift;
    TokenRange { start, end: start | ((1u64 << shift) - 1) }
}

/// `range` cut at leaf boundaries, in token order: the segments two replicas
/// compare.
pub fn segments(range: TokenRange) -> Vec<TokenRange> {
    let mut out = Vec::with_capacity(leaf_of(range.end) - leaf_of(range.start) + 1);
    let mut start = range.start;
    loop {
        let end = leaf_range(leaf_of(start)).end.min(range.end);
        out.push(TokenRange { start, end });
        if end == range.end {
            return out;
        }
        start = end + 1;
    }
}

/// Whether `segment` covers its whole leaf (its hash is the stored one).
pub fn is_whole_leaf(segment: TokenRange) -> bool {
    leaf_range(leaf_of(segment.start)) == segment
}

/// What key `(tenant, key)` with causal context `clock` adds to its leaf.
pub fn key_hash(tenant: &str, key: &[u8], clock: &CausalContext) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update((tenant.len() as u32).to_be_bytes());
    hasher.update(tenant.as_bytes());
    hasher.update((key.len() as u32).to_be_bytes());
    hasher.update(key);
    hasher.update(clock.encode());
    let digest = hasher.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("a SHA-256 digest has 32 bytes"))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::dvv::{Actor, Dot};

    proptest! {
        #[test]
        fn segments_cover_the_range_once_in_order_within_single_leaves(a in any::<u64>(), b in any::<u64>()) {
            let range = TokenRange { start: a.min(b), end: a.max(b) };
            let parts = segments(range);
            prop_assert_eq!(parts.first().map(|s| s.start), Some(range.start));
            prop_assert_eq!(parts.last().map(|s| s.end), Some(range.end));
            for pair in parts.windows(2) {
                prop_assert_eq!(pair[0].end + 1, pair[1].start);
            }
            for part in &parts {
                prop_assert!(part.start <= part.end);
                prop_assert_eq!(leaf_of(part.start), leaf_of(part.end));
            }
            // Only the first and the last segment may cover a leaf in part.
            for part in parts.iter().skip(1).take(parts.len().saturating_sub(2)) {
                prop_assert!(is_whole_leaf(*part));
            }
        }
    }

    #[test]
    fn the_whole_token_space_is_every_leaf_whole() {
        let parts = segments(TokenRange { start: 0, end: Token::MAX });
        assert_eq!(parts.len(), LEAVES);
        assert!(parts.iter().all(|part| is_whole_leaf(*part)));
    }

    #[test]
    fn a_key_hash_depends_on_tenant_key_and_clock() {
        let mut clock = CausalContext::new();
        let base = key_hash("t", b"k", &clock);
        assert_ne!(base, key_hash("u", b"k", &clock));
        assert_ne!(base, key_hash("t", b"j", &clock));
        assert_ne!(key_hash("ab", b"c", &clock), key_hash("a", b"bc", &clock));
        clock.add(&Dot { actor: Actor::new("n1"), counter: 1 });
        assert_ne!(base, key_hash("t", b"k", &clock));
    }
}
