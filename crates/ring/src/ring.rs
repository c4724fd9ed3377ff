//! The consistent-hash ring with virtual nodes.
//!
//! Every physical node places `vnodes` tokens on the ring, each derived from
//! `(node id, index)`. A key belongs to the first vnode at or clockwise after
//! its token. The *preference list* of a key is the first N distinct physical
//! nodes met walking clockwise from its token — with distinct zones preferred
//! when zones are configured — and the nodes after them are its *fallback
//! list*. The ring keeps, per token, the index of the node that owns it, so no
//! node id is ever parsed back out of a string.
//!
//! Identical membership gives an identical ring: construction sorts its input,
//! so the order in which nodes were listed does not matter.

use std::collections::{BTreeMap, HashSet};

use crate::token::{Token, vnode_token};

/// The stable identifier of a physical storage node.
pub type NodeId = String;

/// Default number of virtual nodes per physical node.
pub const DEFAULT_VNODES: u32 = 150;

/// Upper bound on vnodes per node; keeps ring construction cheap and bounded.
pub const MAX_VNODES: u32 = 4096;

/// A physical node as the ring sees it: identity, placement zone and weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Stable node identifier; vnode tokens derive from it.
    pub id: NodeId,
    /// Failure zone (rack, availability zone); `None` when zones are unused.
    pub zone: Option<String>,
    /// Number of virtual nodes, which scales the node's share of the ring.
    pub vnodes: u32,
}

impl NodeSpec {
    /// A node with the default vnode count and no zone.
    pub fn new(id: impl Into<NodeId>) -> Self {
        NodeSpec { id: id.into(), zone: None, vnodes: DEFAULT_VNODES }
    }

    /// Sets the zone.
    pub fn with_zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// Sets the vnode count.
    pub fn with_vnodes(mut self, vnodes: u32) -> Self {
        self.vnodes = vnodes;
        self
    }
}

/// Why a ring could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// Two nodes share an id.
    #[error("node id {0:?} appears more than once")]
    DuplicateNode(NodeId),
    /// A node asked for zero or too many vnodes.
    #[error("node {id:?} has {vnodes} vnodes; expected 1..={max}", max = MAX_VNODES)]
    BadVnodes {
        /// The offending node.
        id: NodeId,
        /// The vnode count it asked for.
        vnodes: u32,
    },
    /// A node id is empty.
    #[error("node id must not be empty")]
    EmptyId,
}

/// An immutable consistent-hash ring.
#[derive(Debug, Clone)]
pub struct Ring {
    /// Physical nodes, sorted by id.
    nodes: Vec<NodeSpec>,
    /// Vnode tokens sorted clockwise, each with the index of its node.
    tokens: Vec<(Token, u32)>,
    /// Whether any node has a zone, which switches on zone-aware placement.
    zoned: bool,
}

impl Ring {
    /// Builds the ring for `nodes`. The result does not depend on their order.
    pub fn new(mut nodes: Vec<NodeSpec>) -> Result<Ring, RingError> {
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        let mut seen = HashSet::new();
        for node in &nodes {
            if node.id.is_empty() {
                return Err(RingError::EmptyId);
            }
            if !seen.insert(node.id.as_str()) {
                return Err(RingError::DuplicateNode(node.id.clone()));
            }
            if node.vnodes == 0 || node.vnodes > MAX_VNODES {
                return Err(RingError::BadVnodes { id: node.id.clone(), vnodes: node.vnodes });
            }
        }
        let mut tokens = Vec::with_capacity(nodes.iter().map(|n| n.vnodes as usize).sum());
        for (index, node) in nodes.iter().enumerate() {
            for v in 0..node.vnodes {
                tokens.push((vnode_token(&node.id, v), index as u32));
            }
        }
        // Ties (astronomically unlikely) break by node id order, deterministically.
        tokens.sort_unstable();
        let zoned = nodes.iter().any(|n| n.zone.is_some());
        Ok(Ring { nodes, tokens, zoned })
    }

    /// The physical nodes, sorted by id.
    pub fn nodes(&self) -> &[NodeSpec] {
        &self.nodes
    }

    /// Whether the ring has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every vnode token, in ascending order.
    pub fn vnode_tokens(&self) -> impl Iterator<Item = Token> + '_ {
        self.tokens.iter().map(|(token, _)| *token)
    }

    /// Index into `tokens` of the vnode that owns `token`.
    fn owner_position(&self, token: Token) -> usize {
        let pos = self.tokens.partition_point(|(t, _)| *t < token);
        if pos == self.tokens.len() { 0 } else { pos }
    }

    /// Distinct physical nodes in clockwise order starting at `token`'s owner.
    pub fn walk(&self, token: Token) -> impl Iterator<Item = &NodeSpec> + '_ {
        let start = if self.tokens.is_empty() { 0 } else { self.owner_position(token) };
        let len = self.tokens.len();
        let mut seen = vec![false; self.nodes.len()];
        (0..len)
            .filter_map(move |i| {
                let (_, node) = self.tokens[(start + i) % len];
                let slot = &mut seen[node as usize];
                if *slot {
                    None
                } else {
                    *slot = true;
                    Some(&self.nodes[node as usize])
                }
            })
            // Every node once: no need to look at the rest of the ring.
            .take(self.nodes.len())
    }

    /// The `n` nodes that hold replicas of `token`, in clockwise order; fewer
    /// when the ring has fewer than `n` nodes. With zones configured, nodes in
    /// zones not yet used are preferred, so replicas spread over as many zones
    /// as there are.
    pub fn preference_list(&self, token: Token, n: usize) -> Vec<&NodeSpec> {
        if !self.zoned {
            return self.walk(token).take(n).collect();
        }
        let walk: Vec<&NodeSpec> = self.walk(token).collect();
        let mut chosen = vec![false; walk.len()];
        let mut zones_used: HashSet<Option<&str>> = HashSet::new();
        let mut count = 0;
        for (i, node) in walk.iter().enumerate() {
            if count == n {
                break;
            }
            if zones_used.insert(node.zone.as_deref()) {
                chosen[i] = true;
                count += 1;
            }
        }
        for slot in chosen.iter_mut() {
            if count == n {
                break;
            }
            if !*slot {
                *slot = true;
                count += 1;
            }
        }
        walk.into_iter().zip(chosen).filter(|(_, c)| *c).map(|(node, _)| node).collect()
    }

    /// The nodes after the preference list of `token`, in clockwise order:
    /// where a write goes (with a hint) when a preferred replica is down.
    pub fn fallback_list(&self, token: Token, n: usize) -> Vec<&NodeSpec> {
        let preferred: HashSet<&str> =
            self.preference_list(token, n).into_iter().map(|node| node.id.as_str()).collect();
        self.walk(token).filter(|node| !preferred.contains(node.id.as_str())).collect()
    }

    /// The fraction of the token space whose *first* replica each node is.
    pub fn owned_share(&self) -> BTreeMap<NodeId, f64> {
        let mut owned = vec![0u128; self.nodes.len()];
        let len = self.tokens.len();
        for i in 0..len {
            let (token, node) = self.tokens[i];
            let prev = if i == 0 { self.tokens[len - 1].0 } else { self.tokens[i - 1].0 };
            // The vnode at `token` owns (prev, token], wrapping at zero.
            let span = token.wrapping_sub(prev) as u128;
            let span = if len == 1 { 1u128 << 64 } else { span };
            owned[node as usize] += span;
        }
        let total = (1u128 << 64) as f64;
        self.nodes.iter().zip(owned).map(|(n, o)| (n.id.clone(), o as f64 / total)).collect()
    }
}

/// Whether `id` is a valid node id: 1-64 characters from `[A-Za-z0-9_.-]`.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::token_for;

    fn ring(ids: &[&str]) -> Ring {
        Ring::new(ids.iter().map(|id| NodeSpec::new(*id)).collect()).unwrap()
    }

    #[test]
    fn rejects_bad_membership() {
        assert_eq!(
            Ring::new(vec![NodeSpec::new("a"), NodeSpec::new("a")]).unwrap_err(),
            RingError::DuplicateNode("a".into())
        );
        assert!(matches!(Ring::new(vec![NodeSpec::new("a").with_vnodes(0)]), Err(RingError::BadVnodes { .. })));
        assert_eq!(Ring::new(vec![NodeSpec::new("")]).unwrap_err(), RingError::EmptyId);
    }

    #[test]
    fn preference_list_is_distinct_and_capped() {
        let r = ring(&["a", "b", "c"]);
        let t = token_for("t", b"k");
        let list: Vec<_> = r.preference_list(t, 5).into_iter().map(|n| n.id.clone()).collect();
        assert_eq!(list.len(), 3);
        let unique: HashSet<_> = list.iter().collect();
        assert_eq!(unique.len(), 3);
        assert!(r.fallback_list(t, 3).is_empty());
        assert_eq!(r.fallback_list(t, 2).len(), 1);
    }

    #[test]
    fn empty_ring_has_no_replicas() {
        let r = ring(&[]);
        assert!(r.preference_list(42, 3).is_empty());
        assert!(r.is_empty());
    }

    #[test]
    fn zones_spread_replicas() {
        let nodes = vec![
            NodeSpec::new("a1").with_zone("a"),
            NodeSpec::new("a2").with_zone("a"),
            NodeSpec::new("a3").with_zone("a"),
            NodeSpec::new("b1").with_zone("b"),
            NodeSpec::new("c1").with_zone("c"),
        ];
        let r = Ring::new(nodes).unwrap();
        for k in 0..200u32 {
            let list = r.preference_list(token_for("t", &k.to_be_bytes()), 3);
            let zones: HashSet<_> = list.iter().map(|n| n.zone.clone()).collect();
            assert_eq!(zones.len(), 3, "key {k} placed on {list:?}");
        }
    }
}
