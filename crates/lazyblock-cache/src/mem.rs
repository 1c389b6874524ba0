//! The memory tier: a byte-bounded, thread-safe map from chunk id to chunk bytes, driven by
//! [`S3Fifo`].
//!
//! Every method takes `&self` and holds one internal mutex for a few map and policy operations
//! (no I/O, no copying of chunk bytes: [`Bytes`] clones are reference counts). Entries are
//! immutable and content-addressed, so a `put` of an id already resident is a no-op. The tier
//! does not verify bytes: callers put only verified chunks.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;

use crate::policy::S3Fifo;
use crate::ChunkId;

/// Counters of a [`MemTier`], as returned by [`MemTier::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemStats {
    /// Lookups that found the chunk.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Chunks admitted by [`MemTier::put`] (no-ops and rejected sizes not counted).
    pub puts: u64,
    /// Chunks evicted to make room.
    pub evictions: u64,
    /// Bytes of the resident chunks (at most the capacity).
    pub bytes_resident: u64,
    /// Resident chunks.
    pub entries: u64,
}

#[derive(Debug)]
struct Inner {
    policy: S3Fifo<ChunkId>,
    chunks: HashMap<ChunkId, Bytes>,
    stats: MemStats,
}

/// The in-memory chunk tier (see the [module docs](self)).
#[derive(Debug)]
pub struct MemTier {
    inner: Mutex<Inner>,
}

impl MemTier {
    /// A tier holding at most `capacity_bytes` of chunk bytes, remembering as many evicted ids
    /// (S3-FIFO ghosts) as `capacity_bytes / typical_chunk_bytes`.
    pub fn new(capacity_bytes: u64, typical_chunk_bytes: u64) -> Self {
        let ghosts = capacity_bytes / typical_chunk_bytes.max(1);
        Self {
            inner: Mutex::new(Inner {
                policy: S3Fifo::new(
                    capacity_bytes,
                    usize::try_from(ghosts).unwrap_or(usize::MAX),
                ),
                chunks: HashMap::new(),
                stats: MemStats::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the map and the policy consistent (every
        // operation updates them before anything can panic), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The chunk `id`, if resident; counts as an access for the eviction policy.
    pub fn get(&self, id: &ChunkId) -> Option<Bytes> {
        let mut inner = self.lock();
        if inner.policy.access(id) {
            let bytes = inner.chunks.get(id).cloned();
            if bytes.is_some() {
                inner.stats.hits += 1;
                return bytes;
            }
        }
        inner.stats.misses += 1;
        None
    }

    /// Stores the chunk `id` (already verified by the caller), evicting others to make room. A
    /// no-op if `id` is resident; a chunk that is empty or larger than the capacity is not stored.
    pub fn put(&self, id: ChunkId, bytes: Bytes) {
        let mut inner = self.lock();
        let size = bytes.len() as u64;
        if inner.policy.contains(&id) || !inner.policy.admits(size) {
            return;
        }
        let evicted = inner.policy.insert(id, size);
        for key in &evicted {
            inner.chunks.remove(key);
        }
        inner.stats.evictions += evicted.len() as u64;
        if inner.policy.contains(&id) {
            inner.chunks.insert(id, bytes);
            inner.stats.puts += 1;
        }
    }

    /// Whether `id` is resident. Does not count as an access.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.lock().policy.contains(id)
    }

    /// Drops `id` if resident; returns whether it was.
    pub fn remove(&self, id: &ChunkId) -> bool {
        let mut inner = self.lock();
        inner.chunks.remove(id);
        inner.policy.remove(id).is_some()
    }

    /// The capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.lock().policy.capacity_bytes()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MemStats {
        let inner = self.lock();
        MemStats {
            bytes_resident: inner.policy.used_bytes(),
            entries: inner.policy.len() as u64,
            ..inner.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn id(n: u32) -> ChunkId {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&n.to_be_bytes());
        id
    }

    fn chunk(n: u32, len: usize) -> Bytes {
        Bytes::from(vec![n as u8; len])
    }

    #[test]
    fn round_trip_and_no_op_put() {
        let tier = MemTier::new(1000, 100);
        assert_eq!(tier.get(&id(1)), None);
        tier.put(id(1), chunk(1, 100));
        assert_eq!(tier.get(&id(1)), Some(chunk(1, 100)));
        tier.put(id(1), chunk(9, 100)); // content-addressed: already there, ignored
        assert_eq!(tier.get(&id(1)), Some(chunk(1, 100)));
        let stats = tier.stats();
        assert_eq!((stats.hits, stats.misses, stats.puts), (2, 1, 1));
        assert_eq!((stats.bytes_resident, stats.entries), (100, 1));
        assert!(tier.remove(&id(1)) && !tier.contains(&id(1)));
        assert_eq!(tier.stats().bytes_resident, 0);
    }

    #[test]
    fn bounded_and_rejects_oversize_and_empty() {
        let tier = MemTier::new(1000, 100);
        for n in 0..50 {
            tier.put(id(n), chunk(n, 100));
            let stats = tier.stats();
            assert!(stats.bytes_resident <= 1000);
            let resident: u64 = (0..=n)
                .filter(|k| tier.contains(&id(*k)))
                .map(|_| 100)
                .sum();
            assert_eq!(resident, stats.bytes_resident);
        }
        assert_eq!(tier.stats().evictions, 40);
        tier.put(id(100), chunk(0, 1001));
        tier.put(id(101), Bytes::new());
        assert!(!tier.contains(&id(100)) && !tier.contains(&id(101)));
    }

    #[test]
    fn hot_set_survives_a_scan() {
        let tier = MemTier::new(100 * 10, 10);
        let request = |n: u32| {
            if tier.get(&id(n)).is_none() {
                tier.put(id(n), chunk(n, 10));
            }
        };
        for _ in 0..3 {
            (0..20).for_each(request);
        }
        (1000..1500).for_each(request); // 5× the capacity, each id once
        assert!((0..20).all(|n| tier.contains(&id(n))));
    }

    #[test]
    fn shared_between_threads() {
        let tier = Arc::new(MemTier::new(64 * 100, 100));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let tier = Arc::clone(&tier);
                std::thread::spawn(move || {
                    for n in 0..500 {
                        let k = (n * 7 + t) % 200;
                        match tier.get(&id(k)) {
                            Some(b) => assert_eq!(b, chunk(k, 100)),
                            None => tier.put(id(k), chunk(k, 100)),
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let stats = tier.stats();
        assert!(stats.bytes_resident <= 6400);
        assert_eq!(stats.hits + stats.misses, 2000);
    }
}
