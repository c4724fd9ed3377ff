//! Properties of the vnode ring ([`cohort_ring::Ring`]).
//!
//! These protect the placement invariants every node of a cluster relies on
//! to agree, without talking to each other, on where a key lives:
//!
//! - placement is a pure function of the *set* of nodes (not their order);
//! - a preference list is N distinct nodes, its fallback list is every other
//!   node, and both follow the clockwise walk from the key's token;
//! - with the default 150 vnodes, load is spread evenly between nodes;
//! - a join or a leave moves only the keys it has to (minimal movement);
//! - with zones configured, replicas spread over distinct zones.
#![allow(missing_docs)]

use std::collections::{BTreeMap, BTreeSet, HashSet};

use cohort_ring::token::vnode_token;
use cohort_ring::{NodeSpec, Ring, Token, token_for};
use proptest::collection::{btree_map, btree_set, vec};
use proptest::prelude::*;
use proptest::sample::Index;

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(64)
}

/// Node ids: short, varied, and unique within a set.
const ID: &str = "[a-z][a-z0-9-]{0,9}";

fn ids(list: &[&NodeSpec]) -> Vec<String> {
    list.iter().map(|n| n.id.clone()).collect()
}

/// A membership of `sizes` nodes, each with an optional zone (out of 4) and
/// 1..=64 vnodes (small, so the rings are cheap but still interleave).
fn memberships(sizes: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<NodeSpec>> {
    btree_map(ID, (proptest::option::of(0u8..4), 1u32..=64), sizes).prop_map(|nodes| {
        nodes
            .into_iter()
            .map(|(id, (zone, vnodes))| {
                let spec = NodeSpec::new(id).with_vnodes(vnodes);
                match zone {
                    Some(z) => spec.with_zone(format!("zone-{z}")),
                    None => spec,
                }
            })
            .collect()
    })
}

/// Tokens worth asking about: arbitrary ones, the ends of the token space, and
/// the vnode boundaries themselves (a key whose token equals a vnode's token
/// belongs to that vnode), plus the token just after each boundary.
fn probe_tokens(ring: &Ring, random: &[Token]) -> Vec<Token> {
    let mut tokens = random.to_vec();
    tokens.extend([0, 1, u64::MAX - 1, u64::MAX]);
    for node in ring.nodes() {
        for v in 0..node.vnodes.min(4) {
            let t = vnode_token(&node.id, v);
            tokens.extend([t.wrapping_sub(1), t, t.wrapping_add(1)]);
        }
    }
    tokens
}

/// Every `(vnode token, node id)` of `nodes`, sorted: the ring computed from
/// first principles, independently of `Ring`.
fn reference_vnodes(nodes: &[NodeSpec]) -> Vec<(Token, String)> {
    let mut vnodes: Vec<(Token, String)> =
        nodes.iter().flat_map(|n| (0..n.vnodes).map(move |v| (vnode_token(&n.id, v), n.id.clone()))).collect();
    vnodes.sort();
    vnodes
}

/// The reference clockwise walk: start at the first vnode token `>= token`
/// (wrapping to the smallest) and keep each node's first occurrence.
fn reference_walk(vnodes: &[(Token, String)], token: Token) -> Vec<String> {
    let start = vnodes.iter().position(|(t, _)| *t >= token).unwrap_or(0);
    let mut seen = HashSet::new();
    let mut walk = Vec::new();
    for i in 0..vnodes.len() {
        let id = &vnodes[(start + i) % vnodes.len()].1;
        if seen.insert(id) {
            walk.push(id.clone());
        }
    }
    walk
}

/// Whether `small` is `big` with some elements removed, order kept.
fn is_subsequence(small: &[String], big: &[String]) -> bool {
    let mut rest = big.iter();
    small.iter().all(|s| rest.any(|b| b == s))
}

proptest! {
    #![proptest_config(config())]

    /// The ring is a function of the *set* of nodes: the same specs listed in
    /// any order give the same nodes, walks, preference lists, fallback lists
    /// and shares, for every token and every N.
    #[test]
    fn membership_order_does_not_matter(
        (specs, shuffled) in memberships(1..=8).prop_flat_map(|s| (Just(s.clone()), Just(s).prop_shuffle())),
        random in vec(any::<u64>(), 1..16),
        n in 1usize..=5,
    ) {
        let a = Ring::new(specs.clone()).unwrap();
        let b = Ring::new(shuffled).unwrap();
        let mut reversed = specs;
        reversed.reverse();
        let c = Ring::new(reversed).unwrap();
        for other in [&b, &c] {
            prop_assert_eq!(a.nodes(), other.nodes());
            prop_assert_eq!(a.owned_share(), other.owned_share());
            for &t in &probe_tokens(&a, &random) {
                prop_assert_eq!(ids(&a.walk(t).collect::<Vec<_>>()), ids(&other.walk(t).collect::<Vec<_>>()));
                prop_assert_eq!(ids(&a.preference_list(t, n)), ids(&other.preference_list(t, n)));
                prop_assert_eq!(ids(&a.fallback_list(t, n)), ids(&other.fallback_list(t, n)));
            }
        }
    }

    /// For any token and any N (zones or not):
    /// - the walk visits every node exactly once, starting at the owner of the
    ///   token, and matches an independent reference computation;
    /// - the preference list holds `min(N, node count)` distinct nodes, in walk
    ///   order (and without zones it is exactly the first N of the walk);
    /// - the fallback list is the remaining nodes in walk order: disjoint from
    ///   the preference list, and together they are exactly the walk's nodes.
    #[test]
    fn preference_and_fallback_partition_the_walk(
        specs in memberships(1..=8),
        random in vec(any::<u64>(), 1..16),
        n in 0usize..=9,
    ) {
        let ring = Ring::new(specs.clone()).unwrap();
        let count = specs.len();
        let zoned = specs.iter().any(|s| s.zone.is_some());
        let reference = reference_vnodes(&specs);
        for &t in &probe_tokens(&ring, &random) {
            let walk = ids(&ring.walk(t).collect::<Vec<_>>());
            prop_assert_eq!(&walk, &reference_walk(&reference, t), "walk from token {:#x}", t);
            prop_assert_eq!(walk.iter().collect::<BTreeSet<_>>().len(), count);

            let pref = ids(&ring.preference_list(t, n));
            let fallback = ids(&ring.fallback_list(t, n));
            prop_assert_eq!(pref.len(), n.min(count));
            prop_assert_eq!(pref.iter().collect::<HashSet<_>>().len(), pref.len(), "duplicates in {:?}", pref);
            prop_assert!(is_subsequence(&pref, &walk), "{:?} is not in walk order {:?}", pref, walk);
            if !zoned {
                prop_assert_eq!(&pref[..], &walk[..pref.len()]);
            }

            let pref_set: BTreeSet<&String> = pref.iter().collect();
            let fallback_set: BTreeSet<&String> = fallback.iter().collect();
            prop_assert_eq!(fallback_set.len(), fallback.len(), "duplicates in {:?}", fallback);
            prop_assert!(pref_set.is_disjoint(&fallback_set));
            let union: BTreeSet<&String> = pref_set.union(&fallback_set).copied().collect();
            prop_assert_eq!(union, walk.iter().collect::<BTreeSet<_>>());
            let expected_fallback: Vec<String> = walk.iter().filter(|id| !pref_set.contains(id)).cloned().collect();
            prop_assert_eq!(fallback, expected_fallback);
        }
    }

    /// Balance with the default vnode count.
    ///
    /// With V vnodes per node and k nodes, the vnode tokens are (as SHA-256
    /// outputs) effectively kV independent uniform points, cutting the circle
    /// into kV arcs. A node owns the V arcs that end at its own tokens, so its
    /// share is a sum of V spacings of a uniform random partition. Each spacing
    /// has mean 1/(kV) and standard deviation ≈ 1/(kV), so the share has mean
    /// 1/k and standard deviation ≈ sqrt(V)/(kV): a *relative* standard
    /// deviation of ≈ 1/sqrt(V) ≈ 8.2% for V = 150. (Exactly, the share is
    /// Beta(V, (k-1)V), relative sd sqrt((k-1)/(kV+1)) < 1/sqrt(V).)
    ///
    /// We allow a relative deviation of 0.45, about 5.5 standard deviations:
    /// a tail probability around 1e-8 per node, so with at most 10 nodes per
    /// case and 64 cases a correct ring fails with probability ~1e-5, while a
    /// broken one (vnode tokens colliding or clustering, vnodes dropped) fails
    /// at once. The tokens are deterministic functions of the node ids, so the
    /// randomness comes from generating random id sets. (Arcs credited to the
    /// wrong node are statistically invisible here; `owned_share_matches_routing`
    /// catches those.)
    ///
    /// Independently of the statistics, the shares must sum to 1.
    #[test]
    fn default_vnodes_balance_load(ids in (3usize..=10).prop_flat_map(|k| btree_set(ID, k))) {
        let k = ids.len();
        let ring = Ring::new(ids.iter().map(NodeSpec::new).collect()).unwrap();
        prop_assert!(ring.nodes().iter().all(|n| n.vnodes == 150));
        let shares = ring.owned_share();
        prop_assert_eq!(shares.len(), k);
        let total: f64 = shares.values().sum();
        prop_assert!((total - 1.0).abs() < 1e-9, "shares sum to {}", total);
        for (id, share) in &shares {
            let relative = (share * k as f64 - 1.0).abs();
            prop_assert!(
                relative <= 0.45,
                "node {} owns {:.4} of {} nodes (relative deviation {:.3})",
                id,
                share,
                k,
                relative
            );
        }
    }

    /// `owned_share` agrees with routing: each node's share is exactly the
    /// total length of the arcs `(previous vnode token, vnode token]` whose
    /// keys the ring routes to that node as first replica. (Balance alone
    /// cannot catch arcs credited to the wrong node; this can.)
    #[test]
    fn owned_share_matches_routing(specs in memberships(1..=8)) {
        let ring = Ring::new(specs.clone()).unwrap();
        let vnodes = reference_vnodes(&specs);
        let mut expected: BTreeMap<String, u128> = specs.iter().map(|s| (s.id.clone(), 0)).collect();
        for (i, (token, _)) in vnodes.iter().enumerate() {
            let prev = vnodes[(i + vnodes.len() - 1) % vnodes.len()].0;
            let span = if vnodes.len() == 1 { 1u128 << 64 } else { u128::from(token.wrapping_sub(prev)) };
            let owner = &ring.preference_list(*token, 1)[0].id;
            *expected.get_mut(owner).unwrap() += span;
        }
        let shares = ring.owned_share();
        prop_assert_eq!(shares.len(), specs.len());
        for (id, share) in &shares {
            let want = expected[id] as f64 / (1u128 << 64) as f64;
            prop_assert!((share - want).abs() < 1e-12, "node {}: share {} but routes {}", id, share, want);
        }
    }

    /// Minimal movement on a join (ring without zones, N = 3).
    ///
    /// Let `before` be a ring and `after` the same ring plus node X. For every
    /// key:
    /// 1. `after.preference_list(key) \ {X}` is a prefix of
    ///    `before.preference_list(key)`, in the same order. Hence no key's
    ///    replica set gains any node other than X, the old replicas keep their
    ///    order, and if X is not a replica the list is unchanged;
    /// 2. the owner (first replica) is either unchanged or X: ownership never
    ///    moves between two old nodes.
    #[test]
    fn join_moves_keys_only_to_the_new_node(
        specs in btree_map(ID, 8u32..=150, 1..=8),
        joiner in (ID, 8u32..=150),
        tenant in "[a-z]{1,8}",
        random in vec(any::<u64>(), 0..32),
    ) {
        prop_assume!(!specs.contains_key(&joiner.0));
        let before_specs: Vec<NodeSpec> = specs.iter().map(|(id, v)| NodeSpec::new(id).with_vnodes(*v)).collect();
        let mut after_specs = before_specs.clone();
        after_specs.push(NodeSpec::new(joiner.0.clone()).with_vnodes(joiner.1));
        let before = Ring::new(before_specs).unwrap();
        let after = Ring::new(after_specs).unwrap();
        check_join(&before, &after, &joiner.0, &key_tokens(&tenant, &random, &after))?;
    }

    /// Minimal movement on a leave (ring without zones, N = 3).
    ///
    /// Let `before` be a ring and `after` the same ring without node Y. For
    /// every key:
    /// 1. `before.preference_list(key) \ {Y}` is a prefix of
    ///    `after.preference_list(key)`, in the same order. Hence no key loses a
    ///    replica other than Y, and the only node a key gains is the one that
    ///    takes Y's place at the end of the list (none if Y was not a replica);
    /// 2. the owner (first replica) is unchanged unless it was Y.
    ///
    /// (This is the join property read backwards: `before` is `after` plus Y.)
    #[test]
    fn leave_moves_only_the_leaving_nodes_keys(
        specs in btree_map(ID, 8u32..=150, 2..=9),
        leaver in any::<Index>(),
        tenant in "[a-z]{1,8}",
        random in vec(any::<u64>(), 0..32),
    ) {
        let before_specs: Vec<NodeSpec> = specs.iter().map(|(id, v)| NodeSpec::new(id).with_vnodes(*v)).collect();
        let gone = leaver.get(&before_specs).id.clone();
        let after_specs: Vec<NodeSpec> = before_specs.iter().filter(|s| s.id != gone).cloned().collect();
        let before = Ring::new(before_specs).unwrap();
        let after = Ring::new(after_specs).unwrap();
        check_join(&after, &before, &gone, &key_tokens(&tenant, &random, &before))?;
    }

    /// Minimal movement with zones (N = 3). A join may drop an old replica
    /// that is not the last one (X can take the slot of an old node of its own
    /// zone), so the prefix property above does not hold; but a join still
    /// never *adds* an old node:
    /// for every key, `after.preference_list(key) ⊆ before.preference_list(key) ∪ {X}`,
    /// and the owner is unchanged or X. Read backwards (`before` is `after`
    /// minus X), a leave of X never removes any replica other than X.
    #[test]
    fn zoned_join_adds_no_old_node(
        specs in btree_map(ID, (0u8..4, 8u32..=150), 1..=8),
        joiner in (ID, 0u8..5, 8u32..=150),
        tenant in "[a-z]{1,8}",
        random in vec(any::<u64>(), 0..32),
    ) {
        prop_assume!(!specs.contains_key(&joiner.0));
        let spec = |id: &str, zone: u8, vnodes: u32| {
            NodeSpec::new(id).with_zone(format!("zone-{zone}")).with_vnodes(vnodes)
        };
        let before_specs: Vec<NodeSpec> = specs.iter().map(|(id, (z, v))| spec(id, *z, *v)).collect();
        let mut after_specs = before_specs.clone();
        after_specs.push(spec(&joiner.0, joiner.1, joiner.2));
        let before = Ring::new(before_specs).unwrap();
        let after = Ring::new(after_specs).unwrap();
        for t in key_tokens(&tenant, &random, &after) {
            let old: BTreeSet<String> = ids(&before.preference_list(t, 3)).into_iter().collect();
            let new = ids(&after.preference_list(t, 3));
            for id in &new {
                prop_assert!(
                    *id == joiner.0 || old.contains(id),
                    "token {:#x}: {:?} -> {:?} gained {}",
                    t,
                    old,
                    new,
                    id
                );
            }
            let owner_before = &ids(&before.preference_list(t, 1))[0];
            let owner_after = &ids(&after.preference_list(t, 1))[0];
            prop_assert!(owner_after == owner_before || *owner_after == joiner.0);
        }
    }

    /// Zone-aware placement: with at least N zones every preference list
    /// covers N distinct zones; with fewer zones it covers all of them. And
    /// the choice is the documented greedy one (see [`reference_zoned`]), so
    /// replicas stay as close to the key's token as zone spreading allows.
    #[test]
    fn replicas_cover_distinct_zones(
        per_zone in vec(1usize..=3, 1..=6),
        salt in "[a-z]{0,4}",
        vnodes in 16u32..=150,
        n in 1usize..=5,
        tenant in "[a-z]{1,8}",
        random in vec(any::<u64>(), 0..32),
    ) {
        let zones = per_zone.len();
        let specs: Vec<NodeSpec> = per_zone
            .iter()
            .enumerate()
            .flat_map(|(z, &count)| {
                let salt = salt.clone();
                (0..count).map(move |i| {
                    NodeSpec::new(format!("{salt}z{z}n{i}")).with_zone(format!("zone-{z}")).with_vnodes(vnodes)
                })
            })
            .collect();
        let total = specs.len();
        let ring = Ring::new(specs).unwrap();
        for t in key_tokens(&tenant, &random, &ring) {
            let list = ring.preference_list(t, n);
            prop_assert_eq!(list.len(), n.min(total));
            let covered: BTreeSet<_> = list.iter().map(|s| s.zone.clone()).collect();
            prop_assert_eq!(covered.len(), n.min(zones), "token {:#x} placed on {:?}", t, ids(&list));
            let walk: Vec<&NodeSpec> = ring.walk(t).collect();
            prop_assert_eq!(ids(&list), reference_zoned(&walk, n), "token {:#x}", t);
        }
    }
}

/// Zone-aware placement as documented, from the clockwise `walk`: first the
/// first node met of each zone, until N zones are used; then, if N exceeds the
/// number of zones, the earliest remaining nodes met; listed in walk order.
fn reference_zoned(walk: &[&NodeSpec], n: usize) -> Vec<String> {
    let mut chosen = vec![false; walk.len()];
    let mut zones = HashSet::new();
    for (i, node) in walk.iter().enumerate() {
        if zones.len() < n && zones.insert(&node.zone) {
            chosen[i] = true;
        }
    }
    let mut fill = n.saturating_sub(zones.len());
    for slot in chosen.iter_mut() {
        if fill > 0 && !*slot {
            *slot = true;
            fill -= 1;
        }
    }
    walk.iter().zip(chosen).filter(|(_, c)| *c).map(|(node, _)| node.id.clone()).collect()
}

/// Tokens of many keys of `tenant`, plus the random and boundary tokens.
fn key_tokens(tenant: &str, random: &[Token], ring: &Ring) -> Vec<Token> {
    let mut tokens: Vec<Token> = (0u32..200).map(|k| token_for(tenant, format!("key-{k}").as_bytes())).collect();
    tokens.extend(probe_tokens(ring, random));
    tokens
}

/// Checks the join property for `small` + `joined` = `big` on every token:
/// `big.preference_list \ {joined}` is a prefix of `small.preference_list`
/// (N = 3), and the owner is unchanged or `joined`.
fn check_join(small: &Ring, big: &Ring, joined: &str, tokens: &[Token]) -> Result<(), TestCaseError> {
    for &t in tokens {
        let old = ids(&small.preference_list(t, 3));
        let new = ids(&big.preference_list(t, 3));
        let kept: Vec<String> = new.iter().filter(|id| *id != joined).cloned().collect();
        prop_assert!(
            old.starts_with(&kept),
            "token {:#x}: {:?} -> {:?} (node {} joined) moved a key between old nodes",
            t,
            old,
            new,
            joined
        );
        if !new.iter().any(|id| id == joined) {
            prop_assert_eq!(&new, &old, "token {:#x}: list changed without node {}", t, joined);
        }
        let owner_old = &old[0];
        let owner_new = &new[0];
        prop_assert!(
            owner_new == owner_old || owner_new == joined,
            "token {:#x}: owner {} -> {}",
            t,
            owner_old,
            owner_new
        );
    }
    Ok(())
}
