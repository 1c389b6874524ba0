//! S3-FIFO against a reference LRU on seeded traces: the scan a guest's `dd`/`find`/`tar` makes
//! through an image must not flush the working set, and on skewed traffic S3-FIFO must hit at
//! least as often as LRU.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};

use lazyblock_cache::S3Fifo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A byte-weighted LRU, the baseline.
struct Lru {
    capacity: u64,
    used: u64,
    tick: u64,
    entries: HashMap<u64, (u64, u64)>,
    order: BTreeMap<u64, u64>,
}

impl Lru {
    fn new(capacity: u64) -> Self {
        Self {
            capacity,
            used: 0,
            tick: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
        }
    }
}

/// What a tier does with its policy on every read: hit, or fetch and insert.
trait Policy {
    /// Returns whether `key` was a hit; on a miss, inserts it.
    fn request(&mut self, key: u64, size: u64) -> bool;
    fn contains(&self, key: u64) -> bool;
}

impl Policy for Lru {
    fn request(&mut self, key: u64, size: u64) -> bool {
        self.tick += 1;
        if let Some((_, tick)) = self.entries.get_mut(&key) {
            self.order.remove(tick);
            *tick = self.tick;
            self.order.insert(self.tick, key);
            return true;
        }
        if size > self.capacity {
            return false;
        }
        while self.used + size > self.capacity {
            let (_, victim) = self.order.pop_first().unwrap();
            let (victim_size, _) = self.entries.remove(&victim).unwrap();
            self.used -= victim_size;
        }
        self.used += size;
        self.entries.insert(key, (size, self.tick));
        self.order.insert(self.tick, key);
        false
    }

    fn contains(&self, key: u64) -> bool {
        self.entries.contains_key(&key)
    }
}

impl Policy for S3Fifo<u64> {
    fn request(&mut self, key: u64, size: u64) -> bool {
        if self.access(&key) {
            return true;
        }
        let evicted = self.insert(key, size);
        assert!(!evicted.contains(&key));
        assert!(self.used_bytes() <= self.capacity_bytes());
        false
    }

    fn contains(&self, key: u64) -> bool {
        S3Fifo::contains(self, &key)
    }
}

/// Byte-weighted entries: 512..1536 bytes, a fixed function of the key.
fn size_of(key: u64) -> u64 {
    512 + key.wrapping_mul(2_654_435_761) % 1024
}

const AVERAGE_SIZE: u64 = 1024;

fn s3fifo(capacity: u64) -> S3Fifo<u64> {
    S3Fifo::new(capacity, (capacity / AVERAGE_SIZE) as usize)
}

/// Replays `trace` and returns the hit ratio.
fn replay(policy: &mut impl Policy, trace: &[u64]) -> f64 {
    let hits = trace
        .iter()
        .filter(|&&key| policy.request(key, size_of(key)))
        .count();
    hits as f64 / trace.len() as f64
}

/// `requests` draws from a Zipf(`alpha`) popularity over `keys` keys, ranks shuffled over the key
/// space so that popularity is not correlated with size.
fn zipf_trace(seed: u64, keys: u64, alpha: f64, requests: usize) -> Vec<u64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cdf = Vec::with_capacity(keys as usize);
    let mut total = 0.0;
    for rank in 1..=keys {
        total += 1.0 / (rank as f64).powf(alpha);
        cdf.push(total);
    }
    let mut ids: Vec<u64> = (0..keys).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.random_range(0..=i));
    }
    (0..requests)
        .map(|_| {
            let u = rng.random::<f64>() * total;
            let rank = cdf.partition_point(|&c| c < u).min(keys as usize - 1);
            ids[rank]
        })
        .collect()
}

const HOT_KEYS: u64 = 200;
const COLD_BASE: u64 = 1 << 40;

/// Warms a hot set of 200 keys (uniform, seeded), then scans 10× the capacity of cold,
/// never-reused keys; returns the fractions of the hot set resident before and after the scan.
fn hot_set_then_scan(policy: &mut impl Policy, capacity: u64) -> (f64, f64) {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..20_000 {
        let key = rng.random_range(0..HOT_KEYS);
        policy.request(key, size_of(key));
    }
    let resident =
        |p: &dyn Fn(u64) -> bool| (0..HOT_KEYS).filter(|&k| p(k)).count() as f64 / HOT_KEYS as f64;
    let before = resident(&|k| policy.contains(k));
    let mut scanned = 0;
    let mut key = COLD_BASE;
    while scanned < 10 * capacity {
        policy.request(key, size_of(key));
        scanned += size_of(key);
        key += 1;
    }
    (before, resident(&|k| policy.contains(k)))
}

#[test]
fn hot_set_survives_a_scan_of_ten_times_the_capacity() {
    let hot_bytes: u64 = (0..HOT_KEYS).map(size_of).sum();
    // The hot set fills 80% of the cache (main's target is 90%).
    let capacity = hot_bytes * 5 / 4;
    let (s3_before, s3_after) = hot_set_then_scan(&mut s3fifo(capacity), capacity);
    let (lru_before, lru_after) = hot_set_then_scan(&mut Lru::new(capacity), capacity);
    println!(
        "hot set {HOT_KEYS} keys / {hot_bytes} B, capacity {capacity} B, scan {} B",
        10 * capacity
    );
    println!("S3-FIFO: hot set resident {s3_before:.3} before the scan, {s3_after:.3} after");
    println!("LRU:     hot set resident {lru_before:.3} before the scan, {lru_after:.3} after");
    assert!(
        lru_before >= 0.99,
        "the hot set fits: LRU holds it before the scan"
    );
    assert!(
        s3_after >= 0.90,
        "S3-FIFO kept only {s3_after:.3} of the hot set"
    );
    assert!(
        lru_after < 0.10,
        "LRU kept {lru_after:.3} of the hot set: the test shows nothing"
    );
}

#[test]
fn zipf_hit_ratio_is_at_least_lru() {
    let keys = 20_000;
    let universe: u64 = (0..keys).map(size_of).sum();
    let trace = zipf_trace(42, keys, 0.9, 300_000);
    for percent in [1, 5, 10, 25] {
        let capacity = universe * percent / 100;
        let s3 = replay(&mut s3fifo(capacity), &trace);
        let lru = replay(&mut Lru::new(capacity), &trace);
        println!(
            "zipf(0.9) over {keys} keys, {} requests, cache {percent:>2}% of the bytes: \
             S3-FIFO hit ratio {s3:.4}, LRU {lru:.4}",
            trace.len()
        );
        assert!(s3 >= lru, "S3-FIFO {s3:.4} < LRU {lru:.4} at {percent}%");
    }
}

#[test]
fn zipf_with_periodic_scans_hit_ratio_is_above_lru() {
    let keys = 20_000;
    let universe: u64 = (0..keys).map(size_of).sum();
    let capacity = universe / 10;
    let zipf = zipf_trace(43, keys, 0.9, 200_000);
    // Every 20,000 requests, a scan of the cache's size in cold keys.
    let mut trace = Vec::new();
    let mut cold = COLD_BASE;
    for chunk in zipf.chunks(20_000) {
        trace.extend_from_slice(chunk);
        let mut scanned = 0;
        while scanned < capacity {
            trace.push(cold);
            scanned += size_of(cold);
            cold += 1;
        }
    }
    let s3 = replay(&mut s3fifo(capacity), &trace);
    let lru = replay(&mut Lru::new(capacity), &trace);
    println!(
        "zipf(0.9) + scans, {} requests, cache 10%: S3-FIFO hit ratio {s3:.4}, LRU {lru:.4}",
        trace.len()
    );
    assert!(s3 > lru, "S3-FIFO {s3:.4} <= LRU {lru:.4}");
}
