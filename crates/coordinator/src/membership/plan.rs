//! Planning a ring change: the next version's nodes, and what it moves.
//!
//! Pure functions over ring versions; the admin service calls them to
//! propose a change (and to answer `--dry-run`), the mover to find what to
//! copy and what to drop.

use std::collections::{BTreeMap, BTreeSet};

use cohort_ring::{MovingRange, NodeSpec, Ring, TokenRange, moving_ranges};

/// A requested change of membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A node joins with this placement.
    Join(NodeSpec),
    /// A node leaves (drains), or is removed as dead.
    Remove {
        /// The node.
        id: String,
        /// Gone for good: its replicas are rebuilt from the others.
        dead: bool,
    },
}

/// Why a change cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The node is on the newest ring already.
    #[error("node {0:?} is already on the ring")]
    AlreadyOnRing(String),
    /// The node is not on the newest ring.
    #[error("node {0:?} is not on the ring")]
    NotOnRing(String),
    /// Removing the node would leave fewer nodes than a tenant replicates to.
    #[error(
        "removing node {node:?} would leave {left} nodes, fewer than tenant {tenant:?}'s replication factor {n}: add a node first"
    )]
    TooFewNodes {
        /// The node.
        node: String,
        /// Nodes left.
        left: usize,
        /// The tenant.
        tenant: String,
        /// Its replication factor.
        n: usize,
    },
    /// The nodes would not form a ring.
    #[error("the new nodes do not form a ring: {0}")]
    Ring(String),
}

/// The nodes of the ring version after `change`, from the newest version's
/// `nodes`. `replication` lists each tenant's id and replication factor.
pub fn next_nodes(
    nodes: &[NodeSpec],
    change: &Change,
    replication: &[(String, usize)],
) -> Result<Vec<NodeSpec>, PlanError> {
    let mut next = nodes.to_vec();
    match change {
        Change::Join(spec) => {
            if nodes.iter().any(|n| n.id == spec.id) {
                return Err(PlanError::AlreadyOnRing(spec.id.clone()));
            }
            next.push(spec.clone());
        }
        Change::Remove { id, .. } => {
            if !nodes.iter().any(|n| &n.id == id) {
                return Err(PlanError::NotOnRing(id.clone()));
            }
            next.retain(|n| &n.id != id);
            if let Some((tenant, n)) = replication.iter().max_by_key(|(_, n)| *n)
                && next.len() < *n
            {
                return Err(PlanError::TooFewNodes {
                    node: id.clone(),
                    left: next.len(),
                    tenant: tenant.clone(),
                    n: *n,
                });
            }
        }
    }
    next.sort_by(|a, b| a.id.cmp(&b.id));
    Ring::new(next.clone()).map_err(|e| PlanError::Ring(e.to_string()))?;
    Ok(next)
}

/// The distinct replication factors of the tenants.
pub fn factors(replication: &[(String, usize)]) -> Vec<usize> {
    let set: BTreeSet<usize> = replication.iter().map(|(_, n)| *n).collect();
    set.into_iter().collect()
}

/// What one node gains and loses in a change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeMoves {
    /// Ranges it receives (for some replication factor).
    pub ranges_gained: Vec<TokenRange>,
    /// Ranges it may drop once the old version is retired.
    pub ranges_lost: Vec<TokenRange>,
}

impl NodeMoves {
    /// Share of the token space gained.
    pub fn share_gained(&self) -> f64 {
        self.ranges_gained.iter().map(TokenRange::share).sum()
    }

    /// Share of the token space lost.
    pub fn share_lost(&self) -> f64 {
        self.ranges_lost.iter().map(TokenRange::share).sum()
    }
}

/// Per node, the ranges it gains and loses among `moving`.
pub fn moves_by_node(moving: &[MovingRange]) -> BTreeMap<String, NodeMoves> {
    let mut out: BTreeMap<String, NodeMoves> = BTreeMap::new();
    for range in moving {
        let mut gaining = BTreeSet::new();
        let mut losing = BTreeSet::new();
        for owners in &range.owners {
            gaining.extend(owners.gaining());
            losing.extend(owners.losing());
        }
        for node in gaining {
            out.entry(node).or_default().ranges_gained.push(range.range);
        }
        for node in losing {
            out.entry(node).or_default().ranges_lost.push(range.range);
        }
    }
    out
}

/// The ranges a change from `old` to `new` moves, for the tenants' factors.
pub fn moving(old: &Ring, new: &Ring, replication: &[(String, usize)]) -> Vec<MovingRange> {
    moving_ranges(old, new, &factors(replication))
}

/// The tenants whose keys node `node` no longer holds in `range`: those
/// whose replication factor's old list has it and new list does not.
pub fn tenants_lost_by(range: &MovingRange, node: &str, replication: &[(String, usize)]) -> Vec<String> {
    replication
        .iter()
        .filter(|(_, n)| range.for_factor(*n).is_some_and(|owners| owners.losing().iter().any(|lost| lost == node)))
        .map(|(tenant, _)| tenant.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(ids: &[&str]) -> Vec<NodeSpec> {
        ids.iter().map(|id| NodeSpec::new(*id).with_vnodes(16)).collect()
    }

    fn tenants(ns: &[usize]) -> Vec<(String, usize)> {
        ns.iter().enumerate().map(|(i, n)| (format!("t{i}"), *n)).collect()
    }

    #[test]
    fn a_join_adds_the_node_and_a_removal_takes_it_out() {
        let three = specs(&["a", "b", "c"]);
        let joined = next_nodes(&three, &Change::Join(NodeSpec::new("d").with_vnodes(16)), &tenants(&[3])).unwrap();
        assert_eq!(joined.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        assert_eq!(
            next_nodes(&three, &Change::Join(NodeSpec::new("a")), &[]),
            Err(PlanError::AlreadyOnRing("a".into()))
        );
        let left = next_nodes(&joined, &Change::Remove { id: "b".into(), dead: false }, &tenants(&[3])).unwrap();
        assert_eq!(left.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["a", "c", "d"]);
        assert_eq!(
            next_nodes(&three, &Change::Remove { id: "z".into(), dead: true }, &[]),
            Err(PlanError::NotOnRing("z".into()))
        );
    }

    #[test]
    fn a_removal_never_leaves_fewer_nodes_than_a_tenant_replicates_to() {
        let three = specs(&["a", "b", "c"]);
        let refused = next_nodes(&three, &Change::Remove { id: "a".into(), dead: false }, &tenants(&[1, 3]));
        assert!(matches!(refused, Err(PlanError::TooFewNodes { left: 2, n: 3, .. })), "{refused:?}");
        assert!(next_nodes(&three, &Change::Remove { id: "a".into(), dead: false }, &tenants(&[2])).is_ok());
    }

    #[test]
    fn a_joining_node_gains_what_an_old_owner_loses() {
        let old = Ring::new(specs(&["a", "b", "c"])).unwrap();
        let new = Ring::new(specs(&["a", "b", "c", "d"])).unwrap();
        let replication = tenants(&[2]);
        let moving = moving(&old, &new, &replication);
        let moves = moves_by_node(&moving);
        let d = &moves["d"];
        assert!(d.ranges_lost.is_empty());
        assert_eq!(d.ranges_gained.len(), moving.len());
        let lost: f64 = ["a", "b", "c"].iter().map(|n| moves.get(*n).map_or(0.0, NodeMoves::share_lost)).sum();
        assert!((lost - d.share_gained()).abs() < 1e-9, "every gained range was lost by someone");
        for range in &moving {
            let losers: Vec<&str> =
                ["a", "b", "c"].into_iter().filter(|n| !tenants_lost_by(range, n, &replication).is_empty()).collect();
            assert_eq!(losers.len(), 1, "one old owner per range makes room");
        }
    }
}
