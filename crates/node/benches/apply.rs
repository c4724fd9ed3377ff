//! Micro-benchmarks of a storage node applying writes on fjall: staging a
//! new version, and making a batch of them durable with one group commit.
//!
//! `cargo bench -p cohort-node`

#![allow(missing_docs)]

use std::sync::Arc;

use bytes::Bytes;
use cohort_node::store::WriteLimits;
use cohort_node::{Durability, Store};
use cohort_ring::CausalContext;
use criterion::{Criterion, criterion_group, criterion_main};

const KEYS: u64 = 10_000;

fn key(i: u64) -> Vec<u8> {
    format!("user{:012}", i % KEYS).into_bytes()
}

/// Overwrites of 10,000 keys, each carrying the context of the key's
/// previous version (as an application's update does), so every key keeps
/// one sibling.
struct Writer {
    store: Arc<Store>,
    contexts: Vec<CausalContext>,
    next: u64,
    value: Bytes,
}

impl Writer {
    fn stage(&mut self) {
        let i = self.next;
        self.next += 1;
        let slot = (i % KEYS) as usize;
        let staged = self
            .store
            .stage_update(
                "bench",
                &key(i),
                &self.contexts[slot],
                Some(self.value.clone()),
                WriteLimits::default(),
                None,
                0,
            )
            .expect("staged");
        self.contexts[slot].add(&staged.dot);
    }
}

fn apply(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let value = Bytes::from(vec![b'x'; 100]);
    for (name, durability) in [("flush", Durability::Flush), ("fsync", Durability::Fsync)] {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store =
            Arc::new(runtime.block_on(async { Store::open(dir.path(), "n1", durability) }).expect("store opens"));
        let mut writer = Writer {
            store: store.clone(),
            contexts: vec![CausalContext::new(); KEYS as usize],
            next: 0,
            value: value.clone(),
        };
        c.bench_function(&format!("store/stage_update ({name} store, not yet durable)"), |b| b.iter(|| writer.stage()));
        for batch in [1u64, 16] {
            c.bench_function(&format!("store/{batch} writes + group commit ({name})"), |b| {
                b.iter(|| {
                    runtime.block_on(async {
                        for _ in 0..batch {
                            writer.stage();
                        }
                        let waits = (0..batch).map(|_| store.durable());
                        for result in futures::future::join_all(waits).await {
                            result.expect("durable");
                        }
                    })
                })
            });
        }
        drop(writer);
        let store = Arc::into_inner(store).expect("last handle");
        runtime.block_on(store.close());
    }
}

criterion_group!(benches, apply);
criterion_main!(benches);
