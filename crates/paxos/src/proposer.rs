//! The proposer: one linearizable operation on one key, as a sans-I/O
//! engine.
//!
//! The driver (the coordinator) creates a [`Proposer`], calls
//! [`Proposer::start`], then feeds it every answer and failure with the
//! ballot and [`Step`] of the request it answers, and after each call
//! carries out the [`Command`]s in [`Proposer::take_commands`]: send a
//! prepare or an accept to the named replicas, wait before the next
//! attempt, or finish. The engine keeps no time; `start` and `retry` take
//! the driver's clock (microseconds) for the ballot, and `deadline` tells it
//! that the driver gave up waiting.
//!
//! ```text
//!  start ─► Prepare ─► quorum promised ─┬─ same accepted ballot everywhere and
//!                │                      │  nothing to write ─► Finish (one round trip)
//!                │                      └─ otherwise ─► Accept ─► quorum ─► Finish
//!                └─ refused by a higher ballot ─► Backoff ─► retry ─► Prepare …
//!
//!  a read: start ─► Peek ─► quorum answered ─┬─ same accepted ballot everywhere ─► Finish
//!                                            └─ otherwise ─► Prepare … (as above)
//! ```
//!
//! A **peek** asks each replica what it accepted last without promising
//! anything, so it changes no state and costs no sync. When a majority of
//! every replica set reports the same ballot, that register was accepted by
//! a majority, so it is chosen; and every write that completed before the
//! read began was chosen before, so one of that majority reports it or a
//! later register built on it. The read is therefore linearizable without
//! the promise a prepare would make; only when the answers differ does it
//! fall back to Paxos to settle what it saw.

use bytes::Bytes;
use cohort_ring::tally::{QuorumTally, Verdict as Tally};

use crate::acceptor::{AcceptAnswer, PrepareAnswer};
use crate::ballot::Ballot;
use crate::register::{Change, Effect, Register, Verdict};

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send a prepare for `ballot` to each of `to`.
    Prepare {
        /// The ballot to promise.
        ballot: Ballot,
        /// Replica ids.
        to: Vec<String>,
    },
    /// Ask each of `to` what it accepted last, promising nothing (a read's
    /// first step); answer with [`Proposer::on_peek`].
    Peek {
        /// Replica ids.
        to: Vec<String>,
    },
    /// Ask each of `to` to accept `register` under `ballot`.
    Accept {
        /// The ballot promised by a quorum.
        ballot: Ballot,
        /// The register to accept.
        register: Register,
        /// Replica ids.
        to: Vec<String>,
    },
    /// Wait (the driver picks a jittered delay that grows with `attempt`),
    /// then call [`Proposer::retry`].
    Backoff {
        /// Attempts made so far.
        attempt: u32,
    },
    /// The operation is over.
    Finish(Outcome),
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The register, settled on a quorum (a read).
    Read(Register),
    /// The write applied (now, or by an earlier attempt with the same
    /// write id); the version it made.
    Applied(u64),
    /// The condition failed; the current register, settled on a quorum.
    Mismatch(Register),
    /// The write's fencing token is below the highest the key has seen
    /// for its lock (that token); nothing was applied.
    Fenced(u64),
    /// A write may or may not have applied: some replica may have accepted
    /// it and the operation could not settle which.
    Unknown,
    /// Every attempt lost to a higher ballot; nothing was applied.
    Contended,
    /// No quorum answered; nothing was applied.
    Unavailable,
}

/// Which request a failure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A peek (its ballot is [`Ballot::ZERO`]).
    Peek,
    /// A prepare.
    Prepare,
    /// An accept.
    Accept,
}

/// Why a replica gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The request never reached the replica, or the replica refused it
    /// before acting (a stale ring, a poisoned disk).
    Refused,
    /// The request may have been acted on (connection lost, timed out).
    MayHaveActed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Idle,
    Peeking,
    Preparing,
    Accepting { register: Register, verdict: Option<Verdict> },
    Waiting,
    Done,
}

/// One linearizable operation on one key.
#[derive(Debug)]
pub struct Proposer {
    id: u64,
    change: Change,
    write: Bytes,
    sets: Vec<(Vec<String>, usize)>,
    members: Vec<String>,
    max_attempts: u32,
    attempt: u32,
    ballot: Ballot,
    /// The highest ballot a replica refused ours for.
    seen: Ballot,
    phase: Phase,
    tally: QuorumTally,
    promises: Vec<Option<(Ballot, Register)>>,
    refused: bool,
    /// Members that certainly did not take this phase's request (refused
    /// it, or it never reached them).
    declined: usize,
    /// Members that answered this phase's request, or failed it.
    answered: usize,
    /// An accept of a changed register may have been taken by a replica
    /// in an attempt that did not finish: a later mismatch or give-up can
    /// then not say "not applied".
    maybe_applied: bool,
    /// Accept the current register even when a quorum already agrees on it
    /// (settling registers on new replicas during a membership change).
    settle: bool,
    /// The clock the operation started at, for a prepare after a peek.
    started: u64,
    /// A ballot a majority of every set promised this proposer when it last
    /// got a register of this key chosen, and that register: a write may
    /// go straight to the accept phase with them.
    promised: Option<(Ballot, Register)>,
    /// Once a majority of every set accepted this operation's proposal:
    /// the ballot they promised with it, and the register.
    chosen: Option<(Ballot, Register)>,
    output: Vec<Command>,
}

impl Proposer {
    /// An operation by proposer `id` applying `change` with write id `write`
    /// (empty: none), needing a quorum in each of `sets` (one replica set
    /// per live ring version, with how many of it must answer), giving up
    /// after `max_attempts` lost ballots.
    pub fn new(id: u64, change: Change, write: Bytes, sets: Vec<(Vec<String>, usize)>, max_attempts: u32) -> Self {
        let mut members: Vec<String> = Vec::new();
        for (set, _) in &sets {
            for member in set {
                if !members.contains(member) {
                    members.push(member.clone());
                }
            }
        }
        let tally = QuorumTally::over_sets(sets.clone());
        Proposer {
            id,
            change,
            write,
            sets,
            members,
            max_attempts: max_attempts.max(1),
            attempt: 0,
            ballot: Ballot::ZERO,
            seen: Ballot::ZERO,
            phase: Phase::Idle,
            tally,
            promises: Vec::new(),
            refused: false,
            declined: 0,
            answered: 0,
            maybe_applied: false,
            settle: false,
            started: 0,
            promised: None,
            chosen: None,
            output: Vec::new(),
        }
    }

    /// Starts from a promise this proposer holds for the key (see
    /// [`Proposer::promise_held`]): a write then sends its accept at once —
    /// one round trip — and falls back to a full round if a replica has
    /// promised a higher ballot since. Reads ignore it.
    pub fn with_promise(mut self, ballot: Ballot, register: Register) -> Self {
        self.promised = Some((ballot, register));
        self
    }

    /// After a proposal of this operation was accepted by a majority of
    /// every set: the ballot they promised this proposer with it, and the
    /// register — for the next operation on the key.
    pub fn promise_held(&self) -> Option<(Ballot, Register)> {
        self.chosen.clone()
    }

    /// Settles the register instead of only reading it: whatever a quorum
    /// reports is accepted again under this proposer's ballot by a majority
    /// of every replica set — so that replicas a membership change adds
    /// hold it before the old ones leave. A register nobody accepted is
    /// left alone.
    pub fn settling(mut self) -> Self {
        self.change = Change::Read;
        self.settle = true;
        self
    }

    /// The commands emitted since the last call.
    pub fn take_commands(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.output)
    }

    /// The ballot of the current attempt.
    pub fn ballot(&self) -> Ballot {
        self.ballot
    }

    /// Whether the operation has finished.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Starts the first attempt at time `now` (microseconds): a read peeks
    /// first, everything else prepares.
    pub fn start(&mut self, now: u64) {
        if self.phase != Phase::Idle {
            return;
        }
        self.started = now;
        if let Some((ballot, current)) = self.promised.take()
            && self.change.writes()
            && let Effect::Replace(next) = self.change.apply(&current, &self.write)
        {
            // The majority that promised `ballot` has accepted nothing
            // since, or it refuses this accept: `current` is the register.
            self.attempt = 1;
            self.ballot = ballot;
            self.phase = Phase::Accepting { register: next.clone(), verdict: None };
            self.begin_tally();
            self.output.push(Command::Accept { ballot, register: next, to: self.members.clone() });
            return;
        }
        if self.change == Change::Read && !self.settle {
            self.phase = Phase::Peeking;
            self.begin_tally();
            self.promises.clear();
            self.output.push(Command::Peek { to: self.members.clone() });
        } else {
            self.prepare(now);
        }
    }

    /// `from`'s answer to the peek: what it accepted last.
    pub fn on_peek(&mut self, from: &str, accepted: Option<(Ballot, Register)>) {
        if self.phase != Phase::Peeking {
            return;
        }
        self.promises.push(accepted);
        self.tally.succeeded(from);
        self.after_peek_answer();
    }

    fn after_peek_answer(&mut self) {
        match self.tally.verdict() {
            Tally::Pending => {}
            Tally::Reached => {
                let first = self.promises[0].as_ref().map(|(ballot, _)| *ballot);
                if self.promises.iter().all(|accepted| accepted.as_ref().map(|(ballot, _)| *ballot) == first) {
                    let current = self.promises[0].as_ref().map(|(_, register)| register.clone()).unwrap_or_default();
                    return self.finish(Outcome::Read(current));
                }
                // They differ: settle what they saw through Paxos.
                self.prepare(self.started);
            }
            // Too few answered: Paxos will say whether a quorum can be had.
            Tally::Unreachable => self.prepare(self.started),
        }
    }

    /// Starts the next attempt after a [`Command::Backoff`].
    pub fn retry(&mut self, now: u64) {
        if self.phase == Phase::Waiting {
            self.prepare(now);
        }
    }

    fn prepare(&mut self, now: u64) {
        self.attempt += 1;
        self.ballot = Ballot::next(self.id, now, self.seen.max(self.ballot));
        self.phase = Phase::Preparing;
        self.begin_tally();
        self.promises.clear();
        self.output.push(Command::Prepare { ballot: self.ballot, to: self.members.clone() });
    }

    fn begin_tally(&mut self) {
        self.tally = QuorumTally::over_sets(self.sets.clone());
        self.refused = false;
        self.declined = 0;
        self.answered = 0;
    }

    /// `from`'s answer to the prepare for `ballot`.
    pub fn on_prepare(&mut self, from: &str, ballot: Ballot, answer: PrepareAnswer) {
        if ballot != self.ballot || self.phase != Phase::Preparing {
            return;
        }
        match answer {
            PrepareAnswer::Promised(accepted) => {
                self.promises.push(accepted);
                self.tally.succeeded(from);
            }
            PrepareAnswer::Refused(promised) => self.refused_by(from, promised),
        }
        self.after_prepare_answer();
    }

    /// `from`'s answer to the accept for `ballot`.
    pub fn on_accept(&mut self, from: &str, ballot: Ballot, answer: AcceptAnswer) {
        if ballot != self.ballot || !matches!(self.phase, Phase::Accepting { .. }) {
            return;
        }
        match answer {
            AcceptAnswer::Accepted => self.tally.succeeded(from),
            AcceptAnswer::Refused(promised) => self.refused_by(from, promised),
        }
        self.after_accept_answer();
    }

    /// `from` gave no answer to the `step` request for `ballot`.
    pub fn on_failure(&mut self, from: &str, step: Step, ballot: Ballot, failure: Failure) {
        if ballot != self.ballot {
            return;
        }
        match (step, &self.phase) {
            (Step::Peek, Phase::Peeking) => {
                self.tally.failed(from);
                self.after_peek_answer();
            }
            (Step::Prepare, Phase::Preparing) => {
                self.tally.failed(from);
                self.after_prepare_answer();
            }
            (Step::Accept, Phase::Accepting { verdict, .. }) => {
                if failure == Failure::MayHaveActed && verdict.is_none() {
                    self.maybe_applied = true;
                }
                if failure == Failure::Refused {
                    self.declined += 1;
                }
                self.tally.failed(from);
                self.after_accept_answer();
            }
            _ => {}
        }
    }

    /// The driver stopped waiting: finish with what is known.
    pub fn deadline(&mut self) {
        if self.phase == Phase::Done {
            return;
        }
        if matches!(&self.phase, Phase::Accepting { verdict: None, .. }) {
            self.maybe_applied = true;
        }
        self.give_up(Outcome::Unavailable);
    }

    fn refused_by(&mut self, from: &str, promised: Ballot) {
        self.seen = self.seen.max(promised);
        self.refused = true;
        self.declined += 1;
        self.tally.failed(from);
    }

    fn after_prepare_answer(&mut self) {
        match self.tally.verdict() {
            Tally::Pending => {}
            Tally::Unreachable => self.lost(),
            Tally::Reached => self.decide(),
        }
    }

    /// A quorum promised: pick the register accepted under the highest
    /// ballot, apply the change to it, and settle the result.
    fn decide(&mut self) {
        let highest = self.promises.iter().flatten().max_by_key(|(ballot, _)| *ballot);
        let current = highest.map(|(_, register)| register.clone()).unwrap_or_default();
        let first = self.promises.first().map(|accepted| accepted.as_ref().map(|(ballot, _)| *ballot));
        let settled = self.promises.iter().all(|accepted| Some(accepted.as_ref().map(|(ballot, _)| *ballot)) == first);
        let (register, verdict) = match self.change.apply(&current, &self.write) {
            // Every member of a quorum accepted this register under one
            // ballot: it is chosen, and no lower ballot can change that.
            Effect::Keep(verdict) if settled && !(self.settle && highest.is_some()) => {
                return self.finish_kept(verdict, current);
            }
            Effect::Keep(verdict) => (current, Some(verdict)),
            Effect::Replace(next) => (next, None),
        };
        self.phase = Phase::Accepting { register: register.clone(), verdict };
        self.begin_tally();
        self.output.push(Command::Accept { ballot: self.ballot, register, to: self.members.clone() });
    }

    fn after_accept_answer(&mut self) {
        self.answered += 1;
        match self.tally.verdict() {
            Tally::Pending => {}
            Tally::Reached => {
                let Phase::Accepting { register, verdict } = std::mem::replace(&mut self.phase, Phase::Done) else {
                    return;
                };
                self.chosen = Some((self.ballot.successor(), register.clone()));
                match verdict {
                    None => self.finish(Outcome::Applied(register.version)),
                    Some(verdict) => self.finish_kept(verdict, register),
                }
            }
            Tally::Unreachable => {
                let changing = matches!(&self.phase, Phase::Accepting { verdict: None, .. });
                // A change may still be taken by a member that has not
                // answered: wait for every member (each is bounded by the
                // driver's timeout), so that "nothing applied" is certain.
                if changing && self.answered < self.members.len() {
                    return;
                }
                // Any member that did not decline may hold the change.
                if changing && self.declined < self.members.len() {
                    self.maybe_applied = true;
                }
                self.lost();
            }
        }
    }

    /// No quorum this attempt: retry after a back-off when a higher ballot
    /// was the cause, give up otherwise.
    fn lost(&mut self) {
        if !self.refused {
            return self.give_up(Outcome::Unavailable);
        }
        if self.attempt >= self.max_attempts {
            return self.give_up(Outcome::Contended);
        }
        self.phase = Phase::Waiting;
        self.output.push(Command::Backoff { attempt: self.attempt });
    }

    fn give_up(&mut self, outcome: Outcome) {
        self.finish(if self.maybe_applied { Outcome::Unknown } else { outcome });
    }

    fn finish_kept(&mut self, verdict: Verdict, register: Register) {
        let outcome = match verdict {
            Verdict::Read => Outcome::Read(register),
            Verdict::AlreadyApplied(version) => Outcome::Applied(version),
            // An earlier attempt may have applied, unless the register
            // remembers that another write made the version ours would have.
            Verdict::Mismatch if self.maybe_applied && !self.another_made_our_version(&register) => Outcome::Unknown,
            Verdict::Mismatch => Outcome::Mismatch(register),
            Verdict::Fenced(_) if self.maybe_applied => Outcome::Unknown,
            Verdict::Fenced(seen) => Outcome::Fenced(seen),
        };
        self.finish(outcome);
    }

    /// Whether `register` shows that a write other than this one made the
    /// version this write would have made: then this write never applied.
    fn another_made_our_version(&self, register: &Register) -> bool {
        let expect = match &self.change {
            Change::Put { expect, .. } | Change::Delete { expect, .. } => *expect,
            Change::Read => return false,
        };
        register.recent.iter().any(|w| w.version == expect + 1 && w.id != self.write)
    }

    fn finish(&mut self, outcome: Outcome) {
        self.phase = Phase::Done;
        self.output.push(Command::Finish(outcome));
    }
}

#[cfg(test)]
mod tests;
