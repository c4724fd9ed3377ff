//! Micro-benchmarks of the pure code on every request: placing a key on the
//! ring, merging sibling sets (DVV sync), and the causal context's encoding.
//!
//! `cargo bench -p cohort-ring`

#![allow(missing_docs)]

use std::hint::black_box;

use bytes::Bytes;
use cohort_ring::{Actor, CausalContext, NodeSpec, Ring, SiblingSet, token_for};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

/// 10 nodes × 150 vnodes, as a production ring might be.
fn ring() -> Ring {
    Ring::new((0..10).map(|i| NodeSpec::new(format!("node-{i}")).with_vnodes(150)).collect()).expect("valid ring")
}

fn keys() -> Vec<Vec<u8>> {
    (0..1024).map(|i| format!("user{i:012}").into_bytes()).collect()
}

fn ring_lookup(c: &mut Criterion) {
    let ring = ring();
    let keys = keys();
    let mut next = keys.iter().cycle();
    c.bench_function("ring/token_for (SHA-256 of tenant and key)", |b| {
        b.iter(|| token_for(black_box("default"), black_box(next.next().expect("cycle"))))
    });
    c.bench_function("ring/preference_list n=3 (10 nodes x 150 vnodes)", |b| {
        b.iter(|| {
            let token = token_for("default", next.next().expect("cycle"));
            black_box(ring.preference_list(token, 3).len())
        })
    });
}

/// A sibling set written `writes` times in turn by `actors` replicas, each
/// write replacing what the writer's replica had seen.
fn history(actors: usize, writes: usize, value: &Bytes) -> Vec<SiblingSet> {
    let names: Vec<Actor> = (0..actors).map(|i| Actor::new(format!("node-{i}.1"))).collect();
    let mut replicas = vec![SiblingSet::new(); actors];
    for w in 0..writes {
        let r = w % actors;
        let context = replicas[r].clock().clone();
        replicas[r].update(&context, &names[r], Some(value.clone())).unwrap();
    }
    replicas
}

fn dvv(c: &mut Criterion) {
    let value = Bytes::from(vec![b'x'; 100]);
    // Three replicas that each took writes without hearing of the others:
    // three concurrent siblings to merge.
    let replicas = history(3, 3, &value);
    c.bench_function("dvv/sync of 3 replicas with concurrent siblings", |b| {
        b.iter(|| {
            let mut merged = replicas[0].clone();
            merged.sync(black_box(&replicas[1]));
            merged.sync(black_box(&replicas[2]));
            black_box(merged)
        })
    });
    // The common case: a replica that is one write behind.
    let mut behind = SiblingSet::new();
    behind.update(&CausalContext::new(), &Actor::new("node-0.1"), Some(value.clone())).unwrap();
    let mut ahead = behind.clone();
    let context = ahead.clock().clone();
    ahead.update(&context, &Actor::new("node-0.1"), Some(value.clone())).unwrap();
    c.bench_function("dvv/sync of a replica one write behind", |b| {
        b.iter_batched(
            || behind.clone(),
            |mut state| {
                state.sync(black_box(&ahead));
                state
            },
            BatchSize::SmallInput,
        )
    });
    c.bench_function("dvv/update (new version with a context)", |b| {
        let actor = Actor::new("node-0.1");
        b.iter_batched(
            || ahead.clone(),
            |mut state| {
                let context = state.clock().clone();
                state.update(&context, &actor, Some(value.clone())).unwrap();
                state
            },
            BatchSize::SmallInput,
        )
    });
    let encoded = ahead.encode();
    c.bench_function("dvv/sibling set encode", |b| b.iter(|| black_box(black_box(&ahead).encode())));
    c.bench_function("dvv/sibling set decode", |b| {
        b.iter(|| SiblingSet::decode(black_box(&encoded)).expect("decodes"))
    });
}

fn context(c: &mut Criterion) {
    let value = Bytes::from_static(b"v");
    let mut merged = SiblingSet::new();
    for replica in history(3, 9, &value) {
        merged.sync(&replica);
    }
    let context = merged.clock().clone();
    let encoded = context.encode();
    c.bench_function("context/encode (3 actors)", |b| b.iter(|| black_box(black_box(&context).encode())));
    c.bench_function("context/decode (3 actors)", |b| {
        b.iter(|| CausalContext::decode(black_box(&encoded)).expect("decodes"))
    });
}

criterion_group!(benches, ring_lookup, dvv, context);
criterion_main!(benches);
