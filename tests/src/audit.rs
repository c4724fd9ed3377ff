//! The audit that ends a fault scenario: final reads that repair every
//! replica, direct reads of each replica, and the checkers' verdict. The
//! workload itself lives in `cohort_loadtest::workload`, shared with
//! `cohort-loadtest verify`.

use cohort_checker::{FinalState, History, ReplicaState, ReplicaStates, Verdict};
use cohort_client::{Client, Consistency, ReadOptions};
pub use cohort_loadtest::workload::{Recorder, Workload, start};

use crate::{TENANT, TestCluster, strings, values_of};

/// After faults healed: reads every key at `all` (the cluster must run with
/// synchronous read repair, so these reads repair every replica), reads every
/// replica of the key in the current ring directly, and audits the history. Writes abandoned by timeouts
/// may still land late, so the passes repeat until two in a row see the same
/// replica states (at most five).
pub async fn final_audit(cluster: &TestCluster, client: &Client, history: &History) -> Verdict {
    let all = ReadOptions { consistency: Some(Consistency::All) };
    let mut previous: Option<ReplicaStates> = None;
    let mut final_state = FinalState::new();
    let mut replicas = ReplicaStates::new();
    let keys: std::collections::BTreeSet<String> = history.ops().iter().map(|op| op.key.clone()).collect();
    for _pass in 0..5 {
        final_state = FinalState::new();
        replicas = ReplicaStates::new();
        for key in &keys {
            let key = key.clone();
            let read =
                client.get_with(TENANT, key.clone(), all.clone()).await.expect("final read at ALL after healing");
            final_state.insert(key.clone(), strings(&read.siblings));
            let mut states = Vec::new();
            for index in cluster.replica_indices(&key).await {
                let state = cluster.replica_state(index, &key).await;
                states.push(ReplicaState::from((format!("node-{}", index + 1), values_of(&state), state.encode())));
            }
            replicas.insert(key, states);
        }
        let settled = previous.as_ref().is_some_and(|p| cohort_checker::same_replica_states(p, &replicas));
        if settled {
            break;
        }
        previous = Some(replicas.clone());
    }
    cohort_checker::audit(history, &final_state, Some(&replicas))
}
