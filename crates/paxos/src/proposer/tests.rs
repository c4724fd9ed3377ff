//! Exact command sequences for the proposer, and a randomised simulation
//! of several proposers over lossy, reordering links.

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use cohort_checker::{RegisterCall, RegisterOp, RegisterReturn, RegisterState, check_register};

use super::*;
use crate::acceptor::AcceptorState;

fn abc() -> Vec<(Vec<String>, usize)> {
    vec![(vec!["a".into(), "b".into(), "c".into()], 2)]
}

fn to() -> Vec<String> {
    vec!["a".into(), "b".into(), "c".into()]
}

fn reg(version: u64, value: Option<&'static [u8]>, last: &'static [u8]) -> Register {
    let recent =
        if last.is_empty() { Vec::new() } else { vec![crate::RecentWrite { id: Bytes::from_static(last), version }] };
    Register { version, value: value.map(Bytes::from_static), recent, fences: Vec::new() }
}

fn put(expect: u64, value: &'static [u8]) -> Change {
    Change::Put { expect, value: Bytes::from_static(value), fence: None }
}

const B1: Ballot = Ballot { round: 100, proposer: 7 };

#[test]
fn an_uncontended_put_takes_two_round_trips() {
    let mut p = Proposer::new(7, put(0, b"v"), Bytes::from_static(b"w"), abc(), 5);
    p.start(100);
    assert_eq!(p.take_commands(), vec![Command::Prepare { ballot: B1, to: to() }]);
    p.on_prepare("a", B1, PrepareAnswer::Promised(None));
    assert_eq!(p.take_commands(), vec![]);
    p.on_prepare("b", B1, PrepareAnswer::Promised(None));
    let v1 = reg(1, Some(b"v"), b"w");
    assert_eq!(p.take_commands(), vec![Command::Accept { ballot: B1, register: v1.clone(), to: to() }]);
    p.on_accept("c", B1, AcceptAnswer::Accepted);
    assert_eq!(p.take_commands(), vec![]);
    p.on_accept("a", B1, AcceptAnswer::Accepted);
    assert_eq!(p.take_commands(), vec![Command::Finish(Outcome::Applied(1))]);
    assert!(p.is_done());
    // Late answers change nothing.
    p.on_accept("b", B1, AcceptAnswer::Accepted);
    p.on_prepare("c", B1, PrepareAnswer::Promised(None));
    assert_eq!(p.take_commands(), vec![]);
}

#[test]
fn a_read_of_a_settled_register_takes_one_peek_and_promises_nothing() {
    let old = Ballot { round: 50, proposer: 3 };
    let mut p = Proposer::new(7, Change::Read, Bytes::new(), abc(), 5);
    p.start(100);
    assert_eq!(p.take_commands(), vec![Command::Peek { to: to() }]);
    p.on_peek("a", Some((old, reg(4, Some(b"x"), b""))));
    assert_eq!(p.take_commands(), vec![]);
    p.on_peek("c", Some((old, reg(4, Some(b"x"), b""))));
    assert_eq!(p.take_commands(), vec![Command::Finish(Outcome::Read(reg(4, Some(b"x"), b"")))]);
}

#[test]
fn a_read_that_sees_an_unsettled_register_settles_it_before_answering() {
    let old = Ballot { round: 50, proposer: 3 };
    let newer = Ballot { round: 60, proposer: 4 };
    let mut p = Proposer::new(7, Change::Read, Bytes::new(), abc(), 5);
    p.start(100);
    p.take_commands();
    // The peek finds two registers: Paxos settles the newer.
    p.on_peek("a", Some((old, reg(4, Some(b"x"), b""))));
    p.on_peek("b", Some((newer, reg(5, Some(b"y"), b""))));
    assert_eq!(p.take_commands(), vec![Command::Prepare { ballot: B1, to: to() }]);
    p.on_prepare("a", B1, PrepareAnswer::Promised(Some((old, reg(4, Some(b"x"), b"")))));
    p.on_prepare("b", B1, PrepareAnswer::Promised(Some((newer, reg(5, Some(b"y"), b"")))));
    assert_eq!(p.take_commands(), vec![Command::Accept { ballot: B1, register: reg(5, Some(b"y"), b""), to: to() }]);
    p.on_accept("a", B1, AcceptAnswer::Accepted);
    p.on_accept("b", B1, AcceptAnswer::Accepted);
    assert_eq!(p.take_commands(), vec![Command::Finish(Outcome::Read(reg(5, Some(b"y"), b"")))]);
}

#[test]
fn a_register_seen_on_one_replica_only_is_not_chosen_by_a_read_of_empty_ones() {
    // b accepted v1 alone; a and c never did. A read promised by a and c
    // finds them agreeing on "nothing accepted": never written is chosen.
    let mut p = Proposer::new(7, Change::Read, Bytes::new(), abc(), 5);
    p.start(100);
    p.take_commands();
    p.on_peek("a", None);
    p.on_peek("c", None);
    assert_eq!(p.take_commands(), vec![Command::Finish(Outcome::Read(Register::default()))]);
}

#[test]
fn a_peek_short_of_a_quorum_falls_back_to_paxos_and_stale_peeks_are_ignored() {
    let mut p = Proposer::new(7, Change::Read, Bytes::new(), abc(), 5);
    p.start(100);
    p.take_commands();
    p.on_peek("a", None);
    p.on_failure("b", Step::Peek, Ballot::ZERO, Failure::MayHaveActed);
    assert_eq!(p.take_commands(), vec![]);
    p.on_failure("c", Step::Peek, Ballot::ZERO, Failure::Refused);
    assert_eq!(p.take_commands(), vec![Command::Prepare { ballot: B1, to: to() }]);
    // A late peek answer changes nothing now.
    p.on_peek("c", Some((Ballot { round: 1, proposer: 1 }, reg(1, Some(b"x"), b""))));
    assert_eq!(p.take_commands(), vec![]);
    p.on_prepare("a", B1, PrepareAnswer::Promised(None));
    p.on_prepare("c", B1, PrepareAnswer::Promised(None));
    assert_eq!(p.take_commands(), vec![Command::Finish(Outcome::Read(Register::default()))]);
}

#[test]
fn a_mismatch_is_answered_with_the_current_register() {
    let old = Ballot { round: 50, proposer: 3 };
    let mut p = Proposer::new(7, put(3, b"v"), Bytes::from_static(b"w"), abc(), 5);
    p.start(100);
    p.take_commands();
    p.on_prepare("a", B1, PrepareAnswer::Promised(Some((old, reg(4, Some(b"x"), b"")))));
    p.on_prepare("b", B1, PrepareAnswer::Promised(Some((old, reg(4, Some(b"x"), b"")))));
    assert_eq!(p.take_commands(), vec![Command::Finish(Outcome::Mismatch(reg(4, Some(b"x"), b"")))]);
}

#[test]
fn refused_by_a_higher_ballot_it_backs_off_and_retries_above_it() {
    let high = Ballot { round: 500, proposer: 9 };
    let mut p = Proposer::new(7, put(0, b"v"), Bytes::new(), abc(), 5);
    p.start(100);
    p.take_commands();
    p.on_prepare("a", B1, PrepareAnswer::Refused(high));
    assert_eq!(p.take_commands(), vec![]);
    p.on_prepare("b", B1, PrepareAnswer::Refused(high));
    assert_eq!(p.take_commands(), vec![Command::Backoff { attempt: 1 }]);
    // The clock is behind the ballot that won: the next one is above it.
    p.retry(120);
    let b2 = Ballot { round: 501, proposer: 7 };
    assert_eq!(p.take_commands(), vec![Command::Prepare { ballot: b2, to: to() }]);
    // Answers to the first attempt are ignored now.
    p.on_prepare("c", B1, PrepareAnswer::Promised(None));
    assert_eq!(p.take_commands(), vec![]);
}

#[test]
fn after_the_last_attempt_a_contended_write_gives_up_having_applied_nothing() {
    let high = Ballot { round: 500, proposer: 9 };
    let mut p = Proposer::new(7, put(0, b"v"), Bytes::new(), abc(), 1);
    p.start(100);
    p.take_commands();
    p.on_prepare("a", B1, PrepareAnswer::Refused(high));
    p.on_prepare("b", B1, PrepareAnswer::Refused(high));
    assert_eq!(p.take_commands(), vec![Command::Finish(Outcome::Contended)]);
}

#[test]
fn an_accept_lost_on_the_way_makes_the_outcome_unknown() {
    let mut p = Proposer::new(7, put(0, b"v"), Bytes::new(), abc(), 5);
    p.start(100);
    p.take_commands();
    p.on_prepare("a", B1, PrepareAnswer::Promised(None));
    p.on_prepare("b", B1, PrepareAnswer::Promised(None));
    p.take_commands();
    p.on_accept("a", B1, AcceptAnswer::Accepted);
    p.on_failure("b", Step::Accept, B1, Failure::MayHaveActed);
    assert_eq!(p.take_commands(), vec![]);
    p.on_failure("c", Step::Accept, B1, Failure::Refused);
    assert_eq!(p.take_commands(), vec![Command::Finish(Outcome::Unknown)]);
}

/// Found by the simulation (seed 4871315502619832747): two replicas
/// refused an accept while the third had not answered; the write gave up as
/// contended, "nothing applied", but the third had accepted it, and a later
/// read chose it.
#[test]
fn an_accept_still_unanswered_when_the_quorum_fails_may_have_applied() {
    let high = Ballot { round: 500, proposer: 9 };
    let mut p = Proposer::new(7, put(0, b"v"), Bytes::new(), abc(), 1);
    p.start(100);
    p.on_prepare("a", B1, PrepareAnswer::Promised(None));
    p.on_prepare("b", B1, PrepareAnswer::Promised(None));
    p.take_commands();
    p.on_accept("b", B1, AcceptAnswer::Refused(high));
    p.on_accept("c", B1, AcceptAnswer::Refused(high));
    // a has not answered: it may accept yet, so the outcome waits for it.
    assert_eq!(p.take_commands(), vec![]);
    p.on_accept("a", B1, AcceptAnswer::Accepted);
    assert_eq!(p.take_commands(), vec![Command::Finish(Outcome::Unknown)]);

    // Every member refusing leaves nothing applied.
    let mut p = Proposer::new(7, put(0, b"v"), Bytes::new(), abc(), 1);
    p.start(100);
    p.on_prepare("a", B1, PrepareAnswer::Promised(None));
    p.on_prepare("b", B1, PrepareAnswer::Promised(None));
    p.take_commands();
    p.on_failure("c", Step::Accept, B1, Failure::Refused);
    p.on_accept("a", B1, AcceptAnswer::Refused(high));
    assert_eq!(p.take_commands(), vec![]);
    p.on_accept("b", B1, AcceptAnswer::Refused(high));
    assert_eq!(p.take_commands(), vec![Command::Finish(Outcome::Contended)]);
}

#[test]
fn prepares_that_fail_leave_nothing_applied() {
    let mut p = Proposer::new(7, put(0, b"v"), Bytes::new(), abc(), 5);
    p.start(100);
    p.take_commands();
    p.on_failure("a", Step::Prepare, B1, Failure::MayHaveActed);
    p.on_failure("b", Step::Prepare, B1, Failure::Refused);
    assert_eq!(p.take_commands(), vec![Command::Finish(Outcome::Unavailable)]);
}

#[test]
fn a_deadline_during_the_accept_of_a_write_makes_it_unknown_and_during_a_prepare_not() {
    let mut p = Proposer::new(7, put(0, b"v"), Bytes::new(), abc(), 5);
    p.start(100);
    p.take_commands();
    p.deadline();
    assert_eq!(p.take_commands(), vec![Command::Finish(Outcome::Unavailable)]);

    let mut p = Proposer::new(7, put(0, b"v"), Bytes::new(), abc(), 5);
    p.start(100);
    p.on_prepare("a", B1, PrepareAnswer::Promised(None));
    p.on_prepare("b", B1, PrepareAnswer::Promised(None));
    p.take_commands();
    p.deadline();
    assert_eq!(p.take_commands(), vec![Command::Finish(Outcome::Unknown)]);
}

#[test]
fn a_retry_after_a_partial_accept_recognises_its_own_write() {
    let high = Ballot { round: 500, proposer: 9 };
    let mut p = Proposer::new(7, put(0, b"v"), Bytes::from_static(b"w"), abc(), 5);
    p.start(100);
    p.on_prepare("a", B1, PrepareAnswer::Promised(None));
    p.on_prepare("b", B1, PrepareAnswer::Promised(None));
    p.take_commands();
    // a took it; b and c had promised a higher ballot meanwhile.
    p.on_accept("a", B1, AcceptAnswer::Accepted);
    p.on_accept("b", B1, AcceptAnswer::Refused(high));
    p.on_accept("c", B1, AcceptAnswer::Refused(high));
    assert_eq!(p.take_commands(), vec![Command::Backoff { attempt: 1 }]);
    p.retry(200);
    let b2 = Ballot { round: 501, proposer: 7 };
    p.take_commands();
    let mine = reg(1, Some(b"v"), b"w");
    p.on_prepare("a", b2, PrepareAnswer::Promised(Some((B1, mine.clone()))));
    p.on_prepare("b", b2, PrepareAnswer::Promised(None));
    assert_eq!(p.take_commands(), vec![Command::Accept { ballot: b2, register: mine.clone(), to: to() }]);
    p.on_accept("a", b2, AcceptAnswer::Accepted);
    p.on_accept("b", b2, AcceptAnswer::Accepted);
    assert_eq!(p.take_commands(), vec![Command::Finish(Outcome::Applied(1))]);
}

#[test]
fn a_mismatch_after_a_partial_accept_is_unknown_not_a_mismatch() {
    let high = Ballot { round: 500, proposer: 9 };
    let mut p = Proposer::new(7, put(0, b"v"), Bytes::from_static(b"w"), abc(), 5);
    p.start(100);
    p.on_prepare("a", B1, PrepareAnswer::Promised(None));
    p.on_prepare("b", B1, PrepareAnswer::Promised(None));
    p.on_accept("a", B1, AcceptAnswer::Accepted);
    p.on_accept("b", B1, AcceptAnswer::Refused(high));
    p.on_accept("c", B1, AcceptAnswer::Refused(high));
    p.retry(200);
    p.take_commands();
    let b2 = Ballot { round: 501, proposer: 7 };
    // Someone else's write is there now, and ours is not visible.
    let theirs = reg(2, Some(b"x"), b"other");
    p.on_prepare("b", b2, PrepareAnswer::Promised(Some((high, theirs.clone()))));
    p.on_prepare("c", b2, PrepareAnswer::Promised(Some((high, theirs))));
    assert_eq!(p.take_commands(), vec![Command::Finish(Outcome::Unknown)]);
}

#[test]
fn a_mismatch_after_a_partial_accept_is_definite_when_another_write_made_our_version() {
    let high = Ballot { round: 500, proposer: 9 };
    let mut p = Proposer::new(7, put(0, b"v"), Bytes::from_static(b"w"), abc(), 5);
    p.start(100);
    p.on_prepare("a", B1, PrepareAnswer::Promised(None));
    p.on_prepare("b", B1, PrepareAnswer::Promised(None));
    p.on_accept("a", B1, AcceptAnswer::Accepted);
    p.on_accept("b", B1, AcceptAnswer::Refused(high));
    p.on_accept("c", B1, AcceptAnswer::Refused(high));
    p.retry(200);
    p.take_commands();
    let b2 = Ballot { round: 501, proposer: 7 };
    // Version 1, the one ours would have made, was made by another write.
    let recent = vec![crate::RecentWrite { id: Bytes::from_static(b"other"), version: 1 }];
    let theirs = Register { version: 1, value: Some(Bytes::from_static(b"x")), recent, fences: Vec::new() };
    p.on_prepare("b", b2, PrepareAnswer::Promised(Some((high, theirs.clone()))));
    p.on_prepare("c", b2, PrepareAnswer::Promised(Some((high, theirs.clone()))));
    assert_eq!(p.take_commands(), vec![Command::Finish(Outcome::Mismatch(theirs))]);
}

#[test]
fn a_retry_after_a_partial_accept_finds_its_write_under_a_later_one() {
    let high = Ballot { round: 500, proposer: 9 };
    let mut p = Proposer::new(7, put(0, b"v"), Bytes::from_static(b"w"), abc(), 5);
    p.start(100);
    p.on_prepare("a", B1, PrepareAnswer::Promised(None));
    p.on_prepare("b", B1, PrepareAnswer::Promised(None));
    p.on_accept("a", B1, AcceptAnswer::Accepted);
    p.on_accept("b", B1, AcceptAnswer::Refused(high));
    p.on_accept("c", B1, AcceptAnswer::Refused(high));
    p.retry(200);
    p.take_commands();
    let b2 = Ballot { round: 501, proposer: 7 };
    // Ours applied as version 1 and another write followed it.
    let recent = vec![
        crate::RecentWrite { id: Bytes::from_static(b"w"), version: 1 },
        crate::RecentWrite { id: Bytes::from_static(b"other"), version: 2 },
    ];
    let now = Register { version: 2, value: Some(Bytes::from_static(b"x")), recent, fences: Vec::new() };
    p.on_prepare("b", b2, PrepareAnswer::Promised(Some((high, now.clone()))));
    p.on_prepare("c", b2, PrepareAnswer::Promised(Some((high, now))));
    assert_eq!(p.take_commands(), vec![Command::Finish(Outcome::Applied(1))]);
}

#[test]
fn settling_accepts_a_register_a_quorum_already_agrees_on_and_leaves_an_empty_one() {
    let old = Ballot { round: 50, proposer: 3 };
    let all: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
    let sets = || vec![(vec!["a".into(), "b".into(), "c".into()], 2), (vec!["b".into(), "c".into(), "d".into()], 2)];
    let mut p = Proposer::new(7, Change::Read, Bytes::new(), sets(), 5).settling();
    p.start(100);
    assert_eq!(p.take_commands(), vec![Command::Prepare { ballot: B1, to: all.clone() }]);
    for node in ["b", "c"] {
        p.on_prepare(node, B1, PrepareAnswer::Promised(Some((old, reg(4, Some(b"x"), b"")))));
    }
    // Agreed, yet accepted again, by both sets (d is new to the key).
    assert_eq!(p.take_commands(), vec![Command::Accept { ballot: B1, register: reg(4, Some(b"x"), b""), to: all }]);
    p.on_accept("c", B1, AcceptAnswer::Accepted);
    p.on_accept("d", B1, AcceptAnswer::Accepted);
    assert_eq!(p.take_commands(), vec![]);
    p.on_accept("b", B1, AcceptAnswer::Accepted);
    assert_eq!(p.take_commands(), vec![Command::Finish(Outcome::Read(reg(4, Some(b"x"), b"")))]);

    let mut p = Proposer::new(7, Change::Read, Bytes::new(), sets(), 5).settling();
    p.start(100);
    p.take_commands();
    for node in ["b", "c"] {
        p.on_prepare(node, B1, PrepareAnswer::Promised(None));
    }
    assert_eq!(p.take_commands(), vec![Command::Finish(Outcome::Read(Register::default()))]);
}

#[test]
fn during_a_ring_change_a_quorum_is_needed_in_every_replica_set() {
    let sets = vec![(vec!["a".into(), "b".into(), "c".into()], 2), (vec!["b".into(), "c".into(), "d".into()], 2)];
    let mut p = Proposer::new(7, put(0, b"v"), Bytes::new(), sets, 5);
    p.start(100);
    let all: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
    assert_eq!(p.take_commands(), vec![Command::Prepare { ballot: B1, to: all.clone() }]);
    p.on_prepare("a", B1, PrepareAnswer::Promised(None));
    p.on_prepare("b", B1, PrepareAnswer::Promised(None));
    // Two of the old set, one of the new: not yet.
    assert_eq!(p.take_commands(), vec![]);
    p.on_prepare("d", B1, PrepareAnswer::Promised(None));
    let v1 = reg(1, Some(b"v"), b"");
    assert_eq!(p.take_commands(), vec![Command::Accept { ballot: B1, register: v1, to: all }]);
    p.on_accept("a", B1, AcceptAnswer::Accepted);
    p.on_accept("d", B1, AcceptAnswer::Accepted);
    assert_eq!(p.take_commands(), vec![], "a and d: one of each set is not a quorum of either");
    p.on_accept("c", B1, AcceptAnswer::Accepted);
    assert_eq!(p.take_commands(), vec![Command::Finish(Outcome::Applied(1))]);
}

/// Several proposers over three acceptors; messages are delivered in a
/// random order and some are dropped (a dropped accept counts as a failure
/// that may have acted). Safety: no two operations ever report different
/// registers for one version, and every write reported applied is at a
/// version no other applied write has.
fn simulate(seed: u64, proposers: usize, drop_percent: u32) {
    #[derive(Debug)]
    enum Msg {
        Peek(usize, String),
        Peeked(usize, String, Option<(Ballot, Register)>),
        Prepare(usize, String, Ballot),
        Accept(usize, String, Ballot, Register),
        Promise(usize, String, Ballot, PrepareAnswer),
        Accepted(usize, String, Ballot, AcceptAnswer),
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut acceptors: BTreeMap<String, AcceptorState> =
        ["a", "b", "c"].iter().map(|n| (n.to_string(), AcceptorState::default())).collect();
    // `proposers` clients run three operations each, one after another; a
    // client's next operation starts from the promise its last one earned
    // (one round trip), if any.
    let clients = proposers;
    let total = clients * 3;
    let proposer = |i: usize, rng: &mut StdRng| {
        let change = match (i + i / clients) % 3 {
            0 => Change::Read,
            1 => Change::Put { expect: rng.random_range(0..2), value: Bytes::from(format!("v{i}")), fence: None },
            _ => Change::Put { expect: rng.random_range(0..5), value: Bytes::from(format!("v{i}")), fence: None },
        };
        Proposer::new((i % clients) as u64 + 1, change, Bytes::from(format!("w{i}")), abc(), 4)
    };
    let mut engines: Vec<Proposer> = (0..total).map(|i| proposer(i, &mut rng)).collect();
    let proposers = total;
    let mut inflight: Vec<Msg> = Vec::new();
    let mut clock = 1u64;
    let mut outcomes = Vec::new();
    // Operations start at random steps, some after others finished, so
    // that real time orders some of them.
    let mut next_start = 0;
    let mut invoked = vec![0u64; proposers];
    let mut completed = vec![None; proposers];
    let mut steps = 0u64;
    loop {
        steps += 1;
        assert!(steps < 100_000, "simulation did not end");
        let ready = next_start < clients || (next_start < proposers && completed[next_start - clients].is_some());
        if ready && (inflight.is_empty() || rng.random_range(0..100) < 15) {
            invoked[next_start] = steps;
            if next_start >= clients
                && let Some((ballot, register)) = engines[next_start - clients].promise_held()
            {
                let fresh = proposer(next_start, &mut rng);
                let change = std::mem::replace(&mut engines[next_start], fresh).change;
                let id = Bytes::from(format!("w{next_start}"));
                engines[next_start] = Proposer::new((next_start % clients) as u64 + 1, change, id, abc(), 4)
                    .with_promise(ballot, register);
            }
            engines[next_start].start(clock);
            next_start += 1;
        }
        // Carry out commands (a retry after a back-off emits more).
        let mut pending: Vec<(usize, Command)> = Vec::new();
        loop {
            for (i, engine) in engines.iter_mut().enumerate() {
                pending.extend(engine.take_commands().into_iter().map(|c| (i, c)));
            }
            if pending.is_empty() {
                break;
            }
            for (i, command) in pending.drain(..) {
                let engine = &mut engines[i];
                match command {
                    Command::Peek { to } => to.into_iter().for_each(|n| inflight.push(Msg::Peek(i, n))),
                    Command::Prepare { ballot, to } => {
                        to.into_iter().for_each(|n| inflight.push(Msg::Prepare(i, n, ballot)));
                    }
                    Command::Accept { ballot, register, to } => {
                        to.into_iter().for_each(|n| inflight.push(Msg::Accept(i, n, ballot, register.clone())));
                    }
                    Command::Backoff { .. } => {
                        clock += rng.random_range(1..20);
                        engine.retry(clock);
                    }
                    Command::Finish(outcome) => {
                        completed[i] = Some(steps);
                        outcomes.push((i, outcome));
                    }
                }
            }
        }
        if inflight.is_empty() && next_start == proposers {
            break;
        }
        if inflight.is_empty() {
            continue;
        }
        let msg = inflight.swap_remove(rng.random_range(0..inflight.len()));
        let dropped = rng.random_range(0..100) < drop_percent;
        match msg {
            Msg::Peek(i, node) => {
                if dropped {
                    engines[i].on_failure(&node, Step::Peek, Ballot::ZERO, Failure::Refused);
                } else {
                    inflight.push(Msg::Peeked(i, node.clone(), acceptors[&node].accepted.clone()));
                }
            }
            Msg::Peeked(i, node, accepted) => engines[i].on_peek(&node, accepted),
            Msg::Prepare(i, node, ballot) => {
                if dropped {
                    engines[i].on_failure(&node, Step::Prepare, ballot, Failure::Refused);
                } else {
                    let (answer, _) = acceptors.get_mut(&node).unwrap().prepare(ballot);
                    inflight.push(Msg::Promise(i, node, ballot, answer));
                }
            }
            Msg::Accept(i, node, ballot, register) => {
                let (answer, _) = acceptors.get_mut(&node).unwrap().accept(ballot, register);
                if dropped {
                    // Acted on, answer lost.
                    engines[i].on_failure(&node, Step::Accept, ballot, Failure::MayHaveActed);
                } else {
                    inflight.push(Msg::Accepted(i, node, ballot, answer));
                }
            }
            Msg::Promise(i, node, ballot, answer) => engines[i].on_prepare(&node, ballot, answer),
            Msg::Accepted(i, node, ballot, answer) => engines[i].on_accept(&node, ballot, answer),
        }
    }
    assert!(engines.iter().all(Proposer::is_done), "every operation finishes");
    let mut by_version: BTreeMap<u64, Register> = BTreeMap::new();
    let mut applied_versions = Vec::new();
    for (i, outcome) in &outcomes {
        let register = match outcome {
            Outcome::Read(r) | Outcome::Mismatch(r) => r,
            Outcome::Applied(version) => {
                applied_versions.push((*version, *i));
                continue;
            }
            _ => continue,
        };
        if let Some(earlier) = by_version.insert(register.version, register.clone()) {
            assert_eq!(&earlier, register, "two registers reported for version {}", register.version);
        }
    }
    applied_versions.sort();
    applied_versions.dedup();
    for pair in applied_versions.windows(2) {
        assert_ne!(pair[0].0, pair[1].0, "two writes applied at one version: {applied_versions:?}");
    }
    // And the whole history is linearizable.
    let history: Vec<RegisterOp> = outcomes
        .iter()
        .filter_map(|(i, outcome)| {
            let call = match &engines[*i].change {
                Change::Read => RegisterCall::Read,
                Change::Put { expect, value, .. } => {
                    RegisterCall::Put { expect: *expect, value: String::from_utf8_lossy(value).into_owned() }
                }
                Change::Delete { expect, .. } => RegisterCall::Delete { expect: *expect },
            };
            let state = |r: &Register| RegisterState {
                version: r.version,
                value: r.value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
            };
            let ret = match outcome {
                Outcome::Read(r) => RegisterReturn::Read(state(r)),
                Outcome::Applied(version) => RegisterReturn::Written { version: *version },
                Outcome::Mismatch(r) => RegisterReturn::Mismatch { current: r.version },
                Outcome::Unknown => RegisterReturn::Unknown,
                // Nothing applied: not part of the history.
                Outcome::Contended | Outcome::Unavailable | Outcome::Fenced(_) => return None,
            };
            let completed_ns = (ret != RegisterReturn::Unknown).then(|| completed[*i].expect("finished"));
            Some(RegisterOp { client: *i as u32, invoked_ns: invoked[*i], completed_ns, call, ret })
        })
        .collect();
    if let Err(violation) = check_register(&history) {
        panic!("{violation}\nhistory:\n{}", history.iter().map(|o| format!("{o:?}")).collect::<Vec<_>>().join("\n"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn concurrent_proposers_are_linearizable_and_never_report_two_registers_for_one_version(
        seed in any::<u64>(), proposers in 2usize..7, drop_percent in 0u32..30,
    ) {
        simulate(seed, proposers, drop_percent);
    }
}
