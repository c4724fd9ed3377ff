//! Convergence check: after faults heal and repair runs, every replica of a
//! key holds the same state.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::history::Value;

/// One replica's copy of one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaState {
    /// The replica (storage node) id.
    pub replica: String,
    /// The live values it holds.
    pub live: Vec<Value>,
    /// Its encoded state (siblings, tombstones and version vector), opaque
    /// to the checker and compared byte for byte.
    pub state: Vec<u8>,
}

impl From<(String, Vec<Value>, Vec<u8>)> for ReplicaState {
    fn from((replica, live, state): (String, Vec<Value>, Vec<u8>)) -> Self {
        ReplicaState { replica, live, state }
    }
}

/// For each key, one entry per replica. A replica that holds nothing for the
/// key should still be listed, with an empty state, or its divergence goes
/// unseen.
pub type ReplicaStates = BTreeMap<String, Vec<ReplicaState>>;

/// One replica's view in a [`DivergentKey`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaView {
    /// The replica id.
    pub replica: String,
    /// Its live values.
    pub live: Vec<Value>,
    /// Replicas with equal states share a group number (0, 1, …, in order of
    /// first appearance).
    pub state_group: usize,
}

/// A key whose replicas disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DivergentKey {
    /// The key.
    pub key: String,
    /// Every replica of the key.
    pub replicas: Vec<ReplicaView>,
}

impl fmt::Display for DivergentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "divergent key {:?}:", self.key)?;
        for view in &self.replicas {
            write!(f, " {} (state #{}) live {:?};", view.replica, view.state_group, view.live)?;
        }
        Ok(())
    }
}

/// What [`check_convergence`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConvergenceReport {
    /// Keys checked.
    pub keys_checked: usize,
    /// Keys whose replicas hold different states.
    pub divergent: Vec<DivergentKey>,
}

impl ConvergenceReport {
    /// Whether every key converged.
    pub fn is_ok(&self) -> bool {
        self.divergent.is_empty()
    }
}

/// Whether two snapshots hold the same keys with byte-equal replica states:
/// repeated snapshots that agree mean late writes have stopped landing.
pub fn same_replica_states(a: &ReplicaStates, b: &ReplicaStates) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((ka, va), (kb, vb))| {
            ka == kb && va.len() == vb.len() && va.iter().zip(vb).all(|(x, y)| x.state == y.state)
        })
}

/// Invariant 3 (replicas converge): for every key, all replicas' encoded
/// states are byte-equal. A key with zero or one replica listed passes
/// vacuously.
pub fn check_convergence(replica_states: &ReplicaStates) -> ConvergenceReport {
    let mut report = ConvergenceReport::default();
    for (key, replicas) in replica_states {
        report.keys_checked += 1;
        let mut groups: Vec<&[u8]> = Vec::new();
        let views: Vec<ReplicaView> = replicas
            .iter()
            .map(|replica| {
                let state_group = match groups.iter().position(|state| *state == replica.state.as_slice()) {
                    Some(group) => group,
                    None => {
                        groups.push(&replica.state);
                        groups.len() - 1
                    }
                };
                ReplicaView { replica: replica.replica.clone(), live: replica.live.clone(), state_group }
            })
            .collect();
        if groups.len() > 1 {
            report.divergent.push(DivergentKey { key: key.clone(), replicas: views });
        }
    }
    report
}
