//! Quorum tallies: the pure accounting of which replicas answered one
//! operation, and whether that is enough.
//!
//! A [`QuorumTally`] counts answers against one or more *replica sets*, each
//! with how many of its members must succeed. One set is the ordinary case
//! (the key's N replicas, W or R of them needed); several are for a key whose
//! placement is changing, where a write must reach W replicas of the old
//! preference list *and* W of the new one. A node may belong to several sets
//! and counts in each.
//!
//! The tally decides nothing about time: the driver (the coordinator's read
//! and write paths, the coordinating replica) feeds it answers and failures
//! as they come and asks for the [`Verdict`] after each. A tally never
//! forgets: a success stays a success even if the same node later reports a
//! failure (a late duplicate), and vice versa the first word counts.

use std::collections::BTreeMap;

/// One replica set and how many of its members must succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ReplicaSet {
    members: Vec<String>,
    needed: usize,
}

/// What a node's answer was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Succeeded,
    Failed,
}

/// Where an operation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every set has as many successes as it needs.
    Reached,
    /// Some set can no longer get enough: too many of its members failed.
    Unreachable,
    /// Neither yet: answers are still due.
    Pending,
}

/// Successes and failures of one operation, counted per replica set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumTally {
    sets: Vec<ReplicaSet>,
    answers: BTreeMap<String, Answer>,
}

impl QuorumTally {
    /// A tally over one replica set, of which `needed` must succeed.
    pub fn new(members: impl IntoIterator<Item = String>, needed: usize) -> Self {
        Self::over_sets([(members.into_iter().collect(), needed)])
    }

    /// A tally that needs, in every set, its count of successful members.
    pub fn over_sets(sets: impl IntoIterator<Item = (Vec<String>, usize)>) -> Self {
        let sets = sets.into_iter().map(|(members, needed)| ReplicaSet { members, needed }).collect();
        QuorumTally { sets, answers: BTreeMap::new() }
    }

    /// Records that `node` succeeded (its first answer counts).
    pub fn succeeded(&mut self, node: &str) {
        self.answers.entry(node.to_string()).or_insert(Answer::Succeeded);
    }

    /// Records that `node` failed (its first answer counts).
    pub fn failed(&mut self, node: &str) {
        self.answers.entry(node.to_string()).or_insert(Answer::Failed);
    }

    fn count(&self, set: &ReplicaSet, answer: Answer) -> usize {
        set.members.iter().filter(|m| self.answers.get(*m) == Some(&answer)).count()
    }

    /// Where the operation stands now.
    pub fn verdict(&self) -> Verdict {
        let mut reached = true;
        for set in &self.sets {
            let succeeded = self.count(set, Answer::Succeeded);
            if set.members.len() - self.count(set, Answer::Failed) < set.needed {
                return Verdict::Unreachable;
            }
            reached &= succeeded >= set.needed;
        }
        if reached { Verdict::Reached } else { Verdict::Pending }
    }

    /// The nodes that succeeded, in the order of the sets and their members.
    pub fn successes(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for set in &self.sets {
            for member in &set.members {
                if self.answers.get(member) == Some(&Answer::Succeeded) && !out.contains(member) {
                    out.push(member.clone());
                }
            }
        }
        out
    }

    /// For a message: the successes and the need of the set furthest from
    /// its quorum ("got X of Y").
    pub fn shortfall(&self) -> (usize, usize) {
        self.sets
            .iter()
            .map(|set| (self.count(set, Answer::Succeeded), set.needed))
            .min_by_key(|(got, needed)| (*got as isize) - (*needed as isize))
            .unwrap_or((0, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn one_set_is_reached_at_its_count_and_unreachable_when_too_many_fail() {
        let mut tally = QuorumTally::new(nodes(&["a", "b", "c"]), 2);
        assert_eq!(tally.verdict(), Verdict::Pending);
        tally.succeeded("a");
        assert_eq!(tally.verdict(), Verdict::Pending);
        tally.failed("b");
        assert_eq!(tally.verdict(), Verdict::Pending, "c may still answer");
        tally.succeeded("c");
        assert_eq!(tally.verdict(), Verdict::Reached);
        assert_eq!(tally.successes(), ["a", "c"]);

        let mut doomed = QuorumTally::new(nodes(&["a", "b", "c"]), 2);
        doomed.failed("a");
        doomed.failed("c");
        assert_eq!(doomed.verdict(), Verdict::Unreachable, "at most one can succeed now");
        assert_eq!(doomed.shortfall(), (0, 2));
    }

    #[test]
    fn the_first_answer_of_a_node_counts_and_strangers_count_nowhere() {
        let mut tally = QuorumTally::new(nodes(&["a", "b"]), 2);
        tally.succeeded("a");
        tally.failed("a");
        tally.succeeded("x");
        assert_eq!(tally.verdict(), Verdict::Pending);
        assert_eq!(tally.successes(), ["a"]);
        tally.succeeded("b");
        assert_eq!(tally.verdict(), Verdict::Reached);
    }

    /// A write while placement changes needs W in the old list and W in the
    /// new one; a node in both counts in both.
    #[test]
    fn several_sets_each_need_their_quorum() {
        let old = nodes(&["a", "b", "c"]);
        let new = nodes(&["b", "c", "d"]);
        let mut tally = QuorumTally::over_sets([(old, 2), (new, 2)]);
        tally.succeeded("a");
        tally.succeeded("d");
        assert_eq!(tally.verdict(), Verdict::Pending, "one in each set");
        tally.succeeded("b");
        assert_eq!(tally.verdict(), Verdict::Reached);
        assert_eq!(tally.successes(), ["a", "b", "d"]);

        let mut split = QuorumTally::over_sets([(nodes(&["a", "b", "c"]), 2), (nodes(&["c", "d", "e"]), 2)]);
        split.succeeded("a");
        split.succeeded("b");
        split.failed("d");
        split.failed("e");
        assert_eq!(split.verdict(), Verdict::Unreachable, "the new set cannot reach 2");
        assert_eq!(split.shortfall(), (0, 2));
    }

    #[test]
    fn a_need_of_zero_is_reached_at_once() {
        assert_eq!(QuorumTally::new(Vec::new(), 0).verdict(), Verdict::Reached);
    }

    proptest::proptest! {
        /// Over one set, the verdict is the arithmetic: reached at `needed`
        /// successes, unreachable once fewer than `needed` can still succeed;
        /// and more answers never undo a reached or unreachable verdict.
        #[test]
        fn one_set_follows_the_arithmetic(
            n in 1usize..8,
            needed_at in 0usize..8,
            answers in proptest::collection::vec((0usize..8, proptest::bool::ANY), 0..16),
        ) {
            let members: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
            let needed = needed_at % (n + 1);
            let mut tally = QuorumTally::new(members.clone(), needed);
            let mut first: BTreeMap<usize, bool> = BTreeMap::new();
            let mut settled: Option<Verdict> = None;
            for (node, ok) in answers {
                let node = node % n;
                first.entry(node).or_insert(ok);
                if ok { tally.succeeded(&members[node]) } else { tally.failed(&members[node]) }
                let succeeded = first.values().filter(|ok| **ok).count();
                let failed = first.values().filter(|ok| !**ok).count();
                let expected = if n - failed < needed {
                    Verdict::Unreachable
                } else if succeeded >= needed {
                    Verdict::Reached
                } else {
                    Verdict::Pending
                };
                proptest::prop_assert_eq!(tally.verdict(), expected);
                if let Some(before) = settled {
                    proptest::prop_assert_eq!(tally.verdict(), before, "a settled verdict changed");
                }
                if expected != Verdict::Pending {
                    settled = Some(expected);
                }
            }
        }
    }
}
