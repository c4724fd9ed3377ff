//! Key and operation generators of the YCSB core workloads, as `cohort-loadtest
//! run` uses them.
//!
//! - [`Zipfian`]: the generator of Gray et al., "Quickly Generating
//!   Billion-Record Synthetic Databases" (SIGMOD 1994), as in YCSB's
//!   `ZipfianGenerator`: rank 0 is the most popular, and the item count can
//!   grow, extending ζ(n) incrementally.
//! - [`ScrambledZipfian`]: YCSB's `ScrambledZipfianGenerator`: a Zipfian over
//!   10¹⁰ items (with ζ precomputed for the constant 0.99), hashed with
//!   FNV-1a and taken modulo the record count, so the hot keys are spread
//!   over the key space instead of being the first few.
//! - [`SkewedLatest`]: YCSB's `SkewedLatestGenerator`: Zipfian distance back
//!   from the most recently inserted record.
//! - [`KeySpace`]: the records inserted so far, advanced only over
//!   contiguously acknowledged inserts (YCSB's `AcknowledgedCounterGenerator`),
//!   so reads do not chase keys whose insert is still in flight.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;

/// YCSB's Zipfian constant.
pub const ZIPFIAN_CONSTANT: f64 = 0.99;

/// Items of the Zipfian behind [`ScrambledZipfian`] (YCSB's `ITEM_COUNT`).
const SCRAMBLED_ITEMS: u64 = 10_000_000_000;

/// ζ(10¹⁰, 0.99), as YCSB precomputes it (`ScrambledZipfianGenerator.ZETAN`).
const SCRAMBLED_ZETAN: f64 = 26.469_028_201_783_02;

/// FNV-1a over the eight bytes of `value`, low byte first (YCSB's
/// `Utils.fnvhash64`, without its final `Math.abs`).
pub fn fnv_hash64(mut value: u64) -> u64 {
    let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
    for _ in 0..8 {
        hash ^= value & 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
        value >>= 8;
    }
    hash
}

/// Σ_{i=from}^{to-1} 1/(i+1)^θ, added to `initial`.
fn zeta(from: u64, to: u64, theta: f64, initial: f64) -> f64 {
    (from..to).fold(initial, |sum, i| sum + 1.0 / ((i + 1) as f64).powf(theta))
}

/// Zipfian ranks over `0..items`: rank 0 is the most frequent, with
/// probability 1/ζ(items, θ), rank `k` with probability 1/((k+1)^θ ζ).
#[derive(Debug, Clone)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    alpha: f64,
    zeta2: f64,
    zetan: f64,
    eta: f64,
}

impl Zipfian {
    /// A Zipfian over `items` (at least 1) with constant `theta` (0 < θ < 1);
    /// computes ζ(items, θ), which takes O(items).
    pub fn new(items: u64, theta: f64) -> Self {
        let items = items.max(1);
        Self::with_zeta(items, theta, zeta(0, items, theta, 0.0))
    }

    fn with_zeta(items: u64, theta: f64, zetan: f64) -> Self {
        let zeta2 = zeta(0, 2, theta, 0.0);
        let mut zipfian = Zipfian { items, theta, alpha: 1.0 / (1.0 - theta), zeta2, zetan, eta: 0.0 };
        zipfian.eta = zipfian.eta_for(items);
        zipfian
    }

    fn eta_for(&self, items: u64) -> f64 {
        (1.0 - (2.0 / items as f64).powf(1.0 - self.theta)) / (1.0 - self.zeta2 / self.zetan)
    }

    /// The current item count.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// Grows the item count to `items`, extending ζ incrementally; a smaller
    /// count is ignored.
    pub fn grow_to(&mut self, items: u64) {
        if items > self.items {
            self.zetan = zeta(self.items, items, self.theta, self.zetan);
            self.items = items;
            self.eta = self.eta_for(items);
        }
    }

    /// The next rank, in `0..items`.
    pub fn sample(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.random();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.items - 1);
        }
        let rank = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(self.items - 1)
    }
}

/// YCSB's scrambled Zipfian: popular items scattered over the key space.
#[derive(Debug, Clone)]
pub struct ScrambledZipfian {
    inner: Zipfian,
}

impl Default for ScrambledZipfian {
    fn default() -> Self {
        ScrambledZipfian { inner: Zipfian::with_zeta(SCRAMBLED_ITEMS, ZIPFIAN_CONSTANT, SCRAMBLED_ZETAN) }
    }
}

impl ScrambledZipfian {
    /// The next item in `0..items` (`items` at least 1).
    pub fn sample(&self, rng: &mut impl Rng, items: u64) -> u64 {
        fnv_hash64(self.inner.sample(rng)) % items.max(1)
    }
}

/// YCSB's skewed-latest: item `items - 1` (the newest) is the most popular.
#[derive(Debug, Clone)]
pub struct SkewedLatest {
    zipfian: Zipfian,
}

impl SkewedLatest {
    /// A generator for an initial `items` records (ζ costs O(items) once).
    pub fn new(items: u64) -> Self {
        SkewedLatest { zipfian: Zipfian::new(items, ZIPFIAN_CONSTANT) }
    }

    /// The next item in `0..items`, skewed toward `items - 1`.
    pub fn sample(&mut self, rng: &mut impl Rng, items: u64) -> u64 {
        let items = items.max(1);
        self.zipfian.grow_to(items);
        // When `items` is below the generator's count (it never shrinks),
        // redraw: the rank must fall within the records that exist.
        loop {
            let back = self.zipfian.sample(rng);
            if back < items {
                return items - 1 - back;
            }
        }
    }
}

/// How operations pick keys.
#[derive(Debug, Clone)]
pub enum KeyChooser {
    /// Every record equally likely.
    Uniform,
    /// YCSB's scrambled Zipfian (constant 0.99).
    Zipfian(ScrambledZipfian),
    /// Skewed toward the most recently inserted records.
    Latest(SkewedLatest),
}

impl KeyChooser {
    /// The next record index in `0..items`.
    pub fn sample(&mut self, rng: &mut impl Rng, items: u64) -> u64 {
        match self {
            KeyChooser::Uniform => rng.random_range(0..items.max(1)),
            KeyChooser::Zipfian(zipfian) => zipfian.sample(rng, items),
            KeyChooser::Latest(latest) => latest.sample(rng, items),
        }
    }
}

/// What one operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    /// Read a record.
    Read,
    /// Overwrite an existing record.
    Update,
    /// Write a new record past the last one.
    Insert,
    /// Read a record, then write it back replacing what was read.
    ReadModifyWrite,
}

impl OpKind {
    /// The name reports use: `read`, `update`, `insert`, `rmw`.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Update => "update",
            OpKind::Insert => "insert",
            OpKind::ReadModifyWrite => "rmw",
        }
    }
}

/// Proportions of each operation kind (any non-negative weights; they are
/// normalised).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpMix {
    /// Weight of reads.
    pub read: f64,
    /// Weight of updates.
    pub update: f64,
    /// Weight of inserts.
    pub insert: f64,
    /// Weight of read-modify-writes.
    pub rmw: f64,
}

impl OpMix {
    /// Checks the weights: finite, non-negative, not all zero.
    pub fn validate(&self) -> Result<(), String> {
        let weights = [self.read, self.update, self.insert, self.rmw];
        if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
            return Err("proportions must be non-negative numbers".into());
        }
        if weights.iter().sum::<f64>() <= 0.0 {
            return Err("at least one proportion must be positive".into());
        }
        Ok(())
    }

    /// The next kind, drawn with the mix's weights.
    pub fn choose(&self, rng: &mut impl Rng) -> OpKind {
        let total = self.read + self.update + self.insert + self.rmw;
        let mut roll = rng.random::<f64>() * total;
        for (weight, kind) in [
            (self.read, OpKind::Read),
            (self.update, OpKind::Update),
            (self.insert, OpKind::Insert),
            (self.rmw, OpKind::ReadModifyWrite),
        ] {
            if roll < weight {
                return kind;
            }
            roll -= weight;
        }
        // Rounding at the very top of the range: the last positive weight.
        [(self.rmw, OpKind::ReadModifyWrite), (self.insert, OpKind::Insert), (self.update, OpKind::Update)]
            .into_iter()
            .find(|(weight, _)| *weight > 0.0)
            .map_or(OpKind::Read, |(_, kind)| kind)
    }
}

/// The records that exist: `0..limit()` are inserted (load phase and
/// acknowledged inserts); inserts take fresh indices with
/// [`KeySpace::allocate`].
#[derive(Debug)]
pub struct KeySpace {
    next: AtomicU64,
    limit: AtomicU64,
    acknowledged: Mutex<BTreeSet<u64>>,
}

impl KeySpace {
    /// A key space whose first `records` records are loaded.
    pub fn new(records: u64) -> Self {
        KeySpace { next: AtomicU64::new(records), limit: AtomicU64::new(records), acknowledged: Mutex::default() }
    }

    /// Records `0..limit()` exist.
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Acquire)
    }

    /// A fresh index for an insert.
    pub fn allocate(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Marks the insert of `index` done (successful or not, as YCSB does, so
    /// one failure does not freeze the key space); the limit advances over
    /// every contiguously acknowledged index.
    pub fn acknowledge(&self, index: u64) {
        let mut acknowledged = self.acknowledged.lock().expect("key space lock");
        acknowledged.insert(index);
        let mut limit = self.limit.load(Ordering::Acquire);
        while acknowledged.remove(&limit) {
            limit += 1;
        }
        self.limit.store(limit, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn frequencies(mut draw: impl FnMut() -> u64, items: u64, samples: usize) -> Vec<u64> {
        let mut counts = vec![0u64; items as usize];
        for _ in 0..samples {
            let item = draw();
            assert!(item < items, "{item} out of 0..{items}");
            counts[item as usize] += 1;
        }
        counts
    }

    fn median(counts: &[u64]) -> u64 {
        let mut sorted = counts.to_vec();
        sorted.sort_unstable();
        sorted[sorted.len() / 2]
    }

    #[test]
    fn zipfian_rank_zero_dominates_and_stays_in_range() {
        let mut rng = SmallRng::seed_from_u64(7);
        let zipfian = Zipfian::new(1000, ZIPFIAN_CONSTANT);
        let counts = frequencies(|| zipfian.sample(&mut rng), 1000, 200_000);
        // P(rank 0) = 1/ζ(1000, 0.99) ≈ 13%.
        let share = counts[0] as f64 / 200_000.0;
        assert!((0.10..0.17).contains(&share), "rank 0 share {share}");
        assert!(counts[0] > 20 * median(&counts).max(1), "{} vs median {}", counts[0], median(&counts));
        assert!(counts[0] > counts[1] && counts[1] > counts[10] && counts[10] > counts[500]);
    }

    #[test]
    fn zipfian_grows_like_a_fresh_one() {
        let mut grown = Zipfian::new(10, ZIPFIAN_CONSTANT);
        grown.grow_to(5000);
        grown.grow_to(100);
        let fresh = Zipfian::new(5000, ZIPFIAN_CONSTANT);
        assert_eq!(grown.items(), 5000);
        assert!((grown.zetan - fresh.zetan).abs() < 1e-9);
        assert!((grown.eta - fresh.eta).abs() < 1e-9);
    }

    #[test]
    fn scrambled_zipfian_has_scattered_hot_keys() {
        let mut rng = SmallRng::seed_from_u64(11);
        let zipfian = ScrambledZipfian::default();
        let counts = frequencies(|| zipfian.sample(&mut rng, 1000), 1000, 200_000);
        let (hottest, &top) = counts.iter().enumerate().max_by_key(|(_, c)| **c).expect("counts");
        // Rank 0 of the 10¹⁰-item Zipfian alone is 1/26.47 ≈ 3.8% of draws.
        assert!(top as f64 / 200_000.0 > 0.03, "hottest share {top}");
        assert!(top > 5 * median(&counts), "{top} vs median {}", median(&counts));
        assert_eq!(hottest as u64, fnv_hash64(0) % 1000, "the hottest key is rank 0, hashed");
        assert!(hottest != 0, "hashing moved rank 0 away from index 0");
    }

    #[test]
    fn latest_prefers_the_newest_records() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut latest = SkewedLatest::new(100);
        let counts = frequencies(|| latest.sample(&mut rng, 100), 100, 50_000);
        assert!(counts[99] > counts[98] && counts[98] > counts[50] && counts[99] > 10 * median(&counts));
        // As records are inserted the newest one takes over.
        let counts = frequencies(|| latest.sample(&mut rng, 200), 200, 50_000);
        assert!(counts[199] > 10 * counts[99].max(1), "{} vs {}", counts[199], counts[99]);
        // A smaller count than the generator has seen still stays in range.
        let _ = frequencies(|| latest.sample(&mut rng, 3), 3, 1000);
    }

    #[test]
    fn mixes_follow_their_weights() {
        let mut rng = SmallRng::seed_from_u64(5);
        let mix = OpMix { read: 0.95, update: 0.0, insert: 0.05, rmw: 0.0 };
        let kinds: Vec<OpKind> = (0..20_000).map(|_| mix.choose(&mut rng)).collect();
        let inserts = kinds.iter().filter(|k| **k == OpKind::Insert).count();
        assert!((700..1300).contains(&inserts), "{inserts} inserts");
        assert!(kinds.iter().all(|k| matches!(k, OpKind::Read | OpKind::Insert)));
        assert!(OpMix { read: 0.0, update: 0.0, insert: 0.0, rmw: 0.0 }.validate().is_err());
        assert!(OpMix { read: -1.0, update: 2.0, insert: 0.0, rmw: 0.0 }.validate().is_err());
    }

    #[test]
    fn key_space_advances_over_contiguous_acknowledgements() {
        let space = KeySpace::new(10);
        let (a, b, c) = (space.allocate(), space.allocate(), space.allocate());
        assert_eq!((a, b, c), (10, 11, 12));
        space.acknowledge(b);
        assert_eq!(space.limit(), 10, "11 is done but 10 is not");
        space.acknowledge(a);
        assert_eq!(space.limit(), 12);
        space.acknowledge(c);
        assert_eq!(space.limit(), 13);
    }

    #[test]
    fn fnv_matches_ycsb() {
        // YCSB: Math.abs(fnvhash64(0)) for the 8 zero bytes.
        let expected = {
            let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
            for _ in 0..8 {
                hash = hash.wrapping_mul(1_099_511_628_211);
            }
            hash
        };
        assert_eq!(fnv_hash64(0), expected);
        assert_ne!(fnv_hash64(1), fnv_hash64(256));
    }
}
