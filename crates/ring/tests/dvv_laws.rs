//! Laws of dotted version vectors ([`cohort_ring::SiblingSet`]).
//!
//! These protect what makes replication safe: `sync` is commutative,
//! associative and idempotent, so replicas converge whatever order states
//! arrive in; a write replaces exactly the siblings its context covers; no
//! write is ever lost unless a later write's context superseded it or a
//! later holder of its lock wrote under a higher fencing token; a fenced
//! write below the key's token is refused and changes nothing; and the
//! stored and client-facing encodings round-trip and never panic on garbage.
//!
//! The laws only hold for *well-formed* states (every sibling's dot covered by
//! its clock, a dot always naming the same value), so states are not generated
//! directly: they come from simulating replicas that issue writes on their own
//! state and sync with each other, which is how real states arise.
#![allow(missing_docs)]

use std::collections::BTreeSet;

use bytes::Bytes;
use cohort_ring::{Actor, CausalContext, Dot, Fence, SiblingSet, UpdateError};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(128)
}

/// Where a write's causal context comes from.
#[derive(Debug, Clone)]
enum Context {
    /// A blind write: the empty context.
    Blind,
    /// The client reads replica `i` (modulo the replica count) just before.
    Fresh(usize),
    /// A context an earlier `Read` remembered (blind if there is none yet):
    /// the client read, then other writes and syncs happened before it wrote.
    Stale(Index),
    /// The context an earlier write returned (its own context plus its dot;
    /// blind if there is none yet): the client chains writes on it.
    Returned(Index),
}

/// One step of the simulation. Replica indices are taken modulo the number of
/// replicas.
#[derive(Debug, Clone)]
enum Op {
    /// A client reads replica `i` and remembers its clock as a context.
    Read(usize),
    /// Replica `replica` issues a write (a tombstone when `tombstone`) with
    /// the given context, fenced by `(lock, token)` when given.
    Write { replica: usize, context: Context, tombstone: bool, fence: Option<(usize, u64)> },
    /// Replica `into` syncs the state of replica `from` into its own.
    Sync { into: usize, from: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let context = prop_oneof![
        1 => Just(Context::Blind),
        2 => (0usize..4).prop_map(Context::Fresh),
        2 => any::<Index>().prop_map(Context::Stale),
        2 => any::<Index>().prop_map(Context::Returned),
    ];
    prop_oneof![
        1 => (0usize..4).prop_map(Op::Read),
        3 => (0usize..4, context, proptest::bool::weighted(0.2), proptest::option::weighted(0.4, (0usize..2, 1u64..5)))
            .prop_map(|(replica, context, tombstone, fence)| Op::Write { replica, context, tombstone, fence }),
        3 => (0usize..4, 0usize..4).prop_map(|(into, from)| Op::Sync { into, from }),
    ]
}

/// A write as it happened at its replica.
#[derive(Debug, Clone)]
struct Write {
    /// The replica's state just before the write.
    before: SiblingSet,
    /// The context the client sent.
    context: CausalContext,
    /// The value written; `None` for a tombstone.
    value: Option<Bytes>,
    /// The lock grant it was written under.
    fence: Option<Fence>,
    /// The dot `update` returned.
    dot: Dot,
    /// The replica's state just after the write.
    after: SiblingSet,
}

impl Write {
    /// The context the write returns to its client: its own plus its dot.
    fn returned(&self) -> CausalContext {
        let mut context = self.context.clone();
        context.add(&self.dot);
        context
    }
}

/// The outcome of a simulation.
#[derive(Debug, Clone)]
struct History {
    /// Every replica's final state.
    replicas: Vec<SiblingSet>,
    /// Every state any replica or client held along the way, finals included.
    pool: Vec<SiblingSet>,
    /// Every write, in order.
    writes: Vec<Write>,
    /// Fenced writes a replica refused: the state it refused in, and the
    /// write's fence.
    refused: Vec<(SiblingSet, Fence)>,
}

fn actor(i: usize) -> Actor {
    Actor::new(format!("r{i}"))
}

/// Runs `ops` on `count` replicas. Values are unique per write.
fn simulate(count: usize, ops: &[Op]) -> History {
    let mut replicas = vec![SiblingSet::new(); count];
    let mut remembered: Vec<CausalContext> = Vec::new();
    let mut pool = Vec::new();
    let mut writes: Vec<Write> = Vec::new();
    let mut refused = Vec::new();
    for op in ops {
        match op {
            Op::Read(i) => {
                let state = &replicas[i % count];
                remembered.push(state.clock().clone());
                pool.push(state.clone());
            }
            Op::Write { replica, context, tombstone, fence } => {
                let context = match context {
                    Context::Blind => CausalContext::new(),
                    Context::Fresh(i) => replicas[i % count].clock().clone(),
                    Context::Stale(index) if !remembered.is_empty() => index.get(&remembered).clone(),
                    Context::Returned(index) if !writes.is_empty() => index.get(&writes).returned(),
                    Context::Stale(_) | Context::Returned(_) => CausalContext::new(),
                };
                let value = (!tombstone).then(|| Bytes::from(format!("v{}", writes.len() + refused.len())));
                let fence = fence.map(|(lock, token)| Fence { lock: format!("lock{lock}"), token });
                let state = &mut replicas[replica % count];
                let before = state.clone();
                match state.update_above(&context, &actor(replica % count), value.clone(), 0, fence.clone()) {
                    Ok(dot) => {
                        pool.push(state.clone());
                        writes.push(Write { before, context, value, fence, dot, after: state.clone() });
                    }
                    Err(UpdateError::Fenced(_)) => {
                        refused.push((before, fence.expect("only fenced writes are refused")))
                    }
                    Err(error) => panic!("honest counting never exhausts dots: {error}"),
                }
            }
            Op::Sync { into, from } => {
                let other = replicas[from % count].clone();
                replicas[into % count].sync(&other);
                pool.push(replicas[into % count].clone());
            }
        }
    }
    pool.extend(replicas.iter().cloned());
    History { replicas, pool, writes, refused }
}

fn histories() -> impl Strategy<Value = History> {
    (2usize..=4, vec(op(), 0..48)).prop_map(|(count, ops)| simulate(count, &ops))
}

/// Syncs every replica from every other, `rounds` times.
fn sync_all(replicas: &mut [SiblingSet], rounds: usize) {
    for _ in 0..rounds {
        for i in 0..replicas.len() {
            for j in 0..replicas.len() {
                let other = replicas[j].clone();
                replicas[i].sync(&other);
            }
        }
    }
}

fn values(state: &SiblingSet) -> BTreeSet<Bytes> {
    state.values().cloned().collect()
}

fn dots(state: &SiblingSet) -> BTreeSet<Dot> {
    state.siblings().iter().map(|s| s.dot.clone()).collect()
}

/// Three states of one history's pool (states of different simulations may
/// give the same dot different values, so they must not be mixed).
fn triples(history: &History, picks: &[(Index, Index, Index)]) -> Vec<(SiblingSet, SiblingSet, SiblingSet)> {
    let pool = &history.pool;
    let mut out: Vec<_> =
        picks.iter().map(|(a, b, c)| (a.get(pool).clone(), b.get(pool).clone(), c.get(pool).clone())).collect();
    // Every combination of final replica states, too.
    let finals = &history.replicas;
    for a in finals {
        for b in finals {
            for c in finals {
                out.push((a.clone(), b.clone(), c.clone()));
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(config())]

    /// Every state the simulation produces is well-formed: siblings sorted by
    /// dot, every dot covered by the clock, and no two siblings with one dot.
    #[test]
    fn simulated_states_are_well_formed(history in histories()) {
        for state in &history.pool {
            let siblings = state.siblings();
            prop_assert!(siblings.windows(2).all(|w| w[0].dot < w[1].dot), "unsorted: {:?}", state);
            prop_assert!(siblings.iter().all(|s| state.clock().covers(&s.dot)), "uncovered dot: {:?}", state);
        }
    }

    /// `a.sync(b) == b.sync(a)`.
    #[test]
    fn sync_is_commutative(history in histories(), picks in vec(any::<(Index, Index, Index)>(), 16)) {
        for (a, b, _) in triples(&history, &picks) {
            prop_assert_eq!(SiblingSet::merged(&a, &b), SiblingSet::merged(&b, &a));
        }
    }

    /// `(a.sync(b)).sync(c) == a.sync(b.sync(c))`.
    #[test]
    fn sync_is_associative(history in histories(), picks in vec(any::<(Index, Index, Index)>(), 16)) {
        for (a, b, c) in triples(&history, &picks) {
            let left = SiblingSet::merged(&SiblingSet::merged(&a, &b), &c);
            let right = SiblingSet::merged(&a, &SiblingSet::merged(&b, &c));
            prop_assert_eq!(left, right);
        }
    }

    /// `a.sync(a) == a`, and syncing what is already merged changes nothing:
    /// `(a.sync(b)).sync(b) == a.sync(b)`.
    #[test]
    fn sync_is_idempotent(history in histories(), picks in vec(any::<(Index, Index, Index)>(), 16)) {
        for (a, b, _) in triples(&history, &picks) {
            prop_assert_eq!(&SiblingSet::merged(&a, &a), &a);
            let ab = SiblingSet::merged(&a, &b);
            prop_assert_eq!(&SiblingSet::merged(&ab, &b), &ab);
            prop_assert_eq!(&SiblingSet::merged(&ab, &a), &ab);
        }
    }

    /// After every replica has synced from every other (two rounds of all
    /// pairs), all replicas hold the same state: the merge of all of them.
    #[test]
    fn replicas_converge(history in histories()) {
        let mut replicas = history.replicas.clone();
        sync_all(&mut replicas, 2);
        let join = history.replicas.iter().fold(SiblingSet::new(), |acc, s| SiblingSet::merged(&acc, s));
        for replica in &replicas {
            prop_assert_eq!(replica, &join);
        }
        // Converged means stable: more rounds change nothing.
        let mut again = replicas.clone();
        sync_all(&mut again, 1);
        prop_assert_eq!(again, replicas);
    }

    /// A write whose context covers the siblings it read replaces exactly
    /// those: after `update(ctx, actor, v)` at a replica whose state is `S`
    /// (which may have received other writes after the client read `ctx`),
    /// the siblings are `{v's dot} ∪ {siblings of S not covered by ctx}`, the
    /// live values are `{v} ∪ {values of S not covered by ctx}`, the new dot
    /// is the actor's next counter and the clock is `S.clock ⊔ ctx` plus it.
    /// A fenced write also replaces the siblings of its lock written under
    /// lower tokens.
    #[test]
    fn write_replaces_exactly_what_its_context_covers(history in histories()) {
        for (n, w) in history.writes.iter().enumerate() {
            let superseded_by_fence = |s: &&cohort_ring::Sibling| match (&s.fence, &w.fence) {
                (Some(old), Some(new)) => old.lock == new.lock && old.token < new.token,
                _ => false,
            };
            let kept: Vec<_> = w
                .before
                .siblings()
                .iter()
                .filter(|s| !w.context.covers(&s.dot))
                .filter(|s| !superseded_by_fence(s))
                .collect();
            let mut expected_values: BTreeSet<Bytes> = kept.iter().filter_map(|s| s.value.clone()).collect();
            expected_values.extend(w.value.clone());
            prop_assert_eq!(values(&w.after), expected_values, "write #{}", n);

            let mut expected_dots: BTreeSet<Dot> = kept.iter().map(|s| s.dot.clone()).collect();
            expected_dots.insert(w.dot.clone());
            prop_assert_eq!(dots(&w.after), expected_dots, "write #{}", n);
            let new = w.after.siblings().iter().find(|s| s.dot == w.dot).unwrap();
            prop_assert_eq!(&new.value, &w.value);
            prop_assert_eq!(&new.fence, &w.fence);
            if let Some(fence) = &w.fence {
                prop_assert_eq!(w.after.fences().get(&fence.lock), Some(&fence.token), "write #{}", n);
            }

            let mut clock = w.before.clock().clone();
            clock.merge(&w.context);
            prop_assert_eq!(w.dot.counter, clock.max_counter(&w.dot.actor) + 1, "write #{}", n);
            prop_assert!(!w.context.covers(&w.dot) && !w.before.clock().covers(&w.dot), "dot reused: {:?}", w.dot);
            // after.clock == before.clock ⊔ ctx ⊔ {the new dot}.
            let mut expected_clock = clock.clone();
            expected_clock.add(&w.dot);
            prop_assert_eq!(w.after.clock(), &expected_clock, "write #{}", n);
            prop_assert!(w.after.clock().descends(&clock), "write #{}", n);
        }
    }

    /// The context a write returns covers what its own context covered plus
    /// the write, and no other sibling of the state it produced: a client
    /// that chains writes on it never replaces a write it did not see.
    #[test]
    fn a_returned_context_covers_only_the_write_and_what_its_writer_saw(history in histories()) {
        for (n, w) in history.writes.iter().enumerate() {
            let returned = w.returned();
            prop_assert!(returned.covers(&w.dot) && returned.descends(&w.context), "write #{}", n);
            for sibling in w.after.siblings() {
                prop_assert_eq!(
                    returned.covers(&sibling.dot),
                    sibling.dot == w.dot,
                    "write #{}: sibling {:?} the writer never saw is covered by {:?}",
                    n,
                    sibling.dot,
                    returned
                );
            }
        }
    }

    /// No write is lost: once replicas have converged, a write's dot is among
    /// the siblings if and only if no write's context covered it and no
    /// write of its lock carried a higher token. (A value may disappear only
    /// because some later write's context — what that client had read —
    /// included it, or a newer holder of its lock wrote; and a superseded
    /// write never resurfaces.)
    #[test]
    fn no_write_is_lost(history in histories()) {
        let mut replicas = history.replicas.clone();
        sync_all(&mut replicas, 2);
        let converged = &replicas[0];
        let present = dots(converged);
        let mut issued = BTreeSet::new();
        for w in &history.writes {
            prop_assert!(issued.insert(w.dot.clone()), "dot {:?} issued twice", w.dot);
            let fenced = |later: &Write| match (&w.fence, &later.fence) {
                (Some(mine), Some(theirs)) => mine.lock == theirs.lock && mine.token < theirs.token,
                _ => false,
            };
            let superseded = history.writes.iter().any(|later| later.context.covers(&w.dot) || fenced(later));
            prop_assert_eq!(
                present.contains(&w.dot),
                !superseded,
                "dot {:?} (value {:?}): superseded {}, converged state {:?}",
                w.dot,
                w.value,
                superseded,
                converged
            );
            prop_assert!(converged.clock().covers(&w.dot));
        }
        // Nothing is present that was never written.
        prop_assert!(present.is_subset(&issued));
        // Each surviving dot still names the value written with it.
        for sibling in converged.siblings() {
            let w = history.writes.iter().find(|w| w.dot == sibling.dot).unwrap();
            prop_assert_eq!(&sibling.value, &w.value);
            prop_assert_eq!(&sibling.fence, &w.fence);
        }
    }

    /// A fenced write is refused exactly when the replica had seen a higher
    /// token of its lock, and the converged fence table holds, per lock, the
    /// highest token any accepted write carried.
    #[test]
    fn a_write_below_its_locks_token_is_refused_and_tokens_join(history in histories()) {
        for (before, fence) in &history.refused {
            prop_assert!(before.fenced_by(fence).is_some(), "refused without a higher token: {:?} {:?}", fence, before);
        }
        for w in &history.writes {
            if let Some(fence) = &w.fence {
                prop_assert!(w.before.fenced_by(fence).is_none(), "accepted below the key's token: {:?}", fence);
            }
        }
        let mut replicas = history.replicas.clone();
        sync_all(&mut replicas, 2);
        let mut highest = std::collections::BTreeMap::new();
        for fence in history.writes.iter().filter_map(|w| w.fence.as_ref()) {
            let token = highest.entry(fence.lock.clone()).or_insert(0);
            *token = (*token).max(fence.token);
        }
        for replica in &replicas {
            prop_assert_eq!(replica.fences(), &highest);
        }
    }

    /// Encoding round-trips: `decode(encode(s)) == s` for sibling sets, and the
    /// same for their clocks as causal contexts.
    #[test]
    fn encodings_round_trip(history in histories()) {
        for state in &history.pool {
            prop_assert_eq!(SiblingSet::decode(&state.encode()), Ok(state.clone()));
            let context = state.clock().clone();
            prop_assert_eq!(CausalContext::decode(&context.encode()), Ok(context));
        }
    }

    /// Decoding arbitrary bytes never panics, and whatever decodes is
    /// well-formed enough to encode again and decode to the same thing.
    #[test]
    fn decoding_garbage_never_panics(bytes in vec(any::<u8>(), 0..64)) {
        check_decode(&bytes)?;
        // Also behind each valid format byte, to get past the first check
        // (3 is the sealed token's, 4 a fenced sibling set's).
        for format in [1u8, 2, 3, 4] {
            let mut prefixed = vec![format];
            prefixed.extend_from_slice(&bytes);
            check_decode(&prefixed)?;
        }
    }

    /// Decoding corrupted valid encodings (bytes flipped, truncated or
    /// extended) never panics either; these reach deeper into the decoder
    /// than random bytes do.
    #[test]
    fn decoding_corrupted_encodings_never_panics(
        history in histories(),
        pick in any::<Index>(),
        flips in vec((any::<Index>(), any::<u8>()), 1..4),
        cut in any::<Index>(),
        tail in vec(any::<u8>(), 0..4),
    ) {
        let state = pick.get(&history.pool);
        for valid in [state.encode(), state.clock().encode()] {
            let mut flipped = valid.clone();
            if !flipped.is_empty() {
                for (at, byte) in &flips {
                    let i = at.index(flipped.len());
                    flipped[i] ^= byte;
                }
            }
            check_decode(&flipped)?;
            let mut truncated = valid.clone();
            truncated.truncate(cut.index(valid.len() + 1));
            check_decode(&truncated)?;
            let mut extended = valid.clone();
            extended.extend_from_slice(&tail);
            check_decode(&extended)?;
        }
    }
}

/// Decodes `bytes` both ways; anything accepted must re-encode and decode to
/// itself (so a decoded state is one `encode` can handle).
fn check_decode(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(state) = SiblingSet::decode(bytes) {
        prop_assert_eq!(SiblingSet::decode(&state.encode()), Ok(state));
    }
    if let Ok(context) = CausalContext::decode(bytes) {
        prop_assert_eq!(CausalContext::decode(&context.encode()), Ok(context));
    }
    // A token the cluster never sealed never opens, whatever its key id.
    let _ = cohort_ring::context::key_id(bytes);
    if !bytes.is_empty() {
        let any_key = |id| Some(cohort_ring::ContextKey { id, secret: [9; 32] });
        let opened = cohort_ring::context::open(bytes, "t", b"k", any_key);
        prop_assert!(opened.is_err(), "an unsealed token opened: {:?}", opened);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// A sealed token opens for its own key to the context sealed in it,
    /// and a corrupted one never opens.
    #[test]
    fn sealed_tokens_open_only_intact(history in histories(), pick in any::<Index>(), at in any::<Index>(), flip in 1u8..) {
        let key = cohort_ring::ContextKey { id: 7, secret: [3; 32] };
        let context = pick.get(&history.pool).clock().clone();
        let token = cohort_ring::context::seal(&context, "t", b"k", &key);
        let opened = cohort_ring::context::open(&token, "t", b"k", |_| Some(key.clone()));
        prop_assert_eq!(opened, Ok(context));
        if !token.is_empty() {
            let mut bad = token.clone();
            let i = at.index(bad.len());
            bad[i] ^= flip;
            prop_assert!(cohort_ring::context::open(&bad, "t", b"k", |_| Some(key.clone())).is_err());
        }
    }
}
