//! S3-FIFO eviction over byte-weighted entries (Yang et al., "FIFO queues are all you need for
//! cache eviction", SOSP'23).
//!
//! The policy only tracks keys, sizes and frequencies; the caller (a cache tier) stores the bytes.
//! Every call that may make room returns the keys it evicted, and the caller deletes them from its
//! storage. Nothing here does I/O, reads a clock or draws randomness.
//!
//! # Algorithm
//!
//! Three FIFO queues:
//!
//! - **small** (`S`, ~10% of the capacity in bytes): every new key enters here with frequency 0.
//!   Most keys of a scan or of a one-hit-wonder workload are seen once and leave from here, without
//!   ever disturbing the main queue: this is what makes the policy scan-resistant.
//! - **main** (`M`, the other ~90%): keys that proved themselves. Each resident key carries a
//!   frequency counter in `0..=3`, bumped by [`S3Fifo::access`] (saturating). When `M` evicts, it
//!   looks at its oldest key: a key with frequency > 0 is reinserted at the head with its frequency
//!   decremented (a CLOCK-like second chance), a key with frequency 0 is evicted.
//! - **ghost** (`G`, bounded by a count of keys, no bytes): keys recently evicted from `S`. A key
//!   inserted while it is in `G` was evicted too early: it goes straight to `M`.
//!
//! Making room (one eviction step): if `S` holds at least its byte target (or `M` is empty), `S`
//! evicts: its oldest key is promoted to `M` (frequency reset to 0) if it was accessed at least
//! once while in `S`, and `M` evicts while it is over its target; otherwise it is evicted into `G`.
//! `S` goes on until one key has left into `G` or `S` is empty. Otherwise `M` evicts (as above).
//! [`S3Fifo::insert`] makes room, step by step, until the new entry fits, then inserts it.
//!
//! # Invariants
//!
//! - `used_bytes() == small_bytes() + main_bytes() <= capacity_bytes()` after every call, and
//!   `used_bytes()` is the sum of the sizes of the resident keys.
//! - Every resident key is in exactly one of `S` and `M`; `G` holds only non-resident keys and at
//!   most `ghost_entries` of them.
//! - A key reported evicted is no longer resident when the call returns (until it is inserted
//!   again).
//! - Entries of 0 bytes or of more than the capacity are never admitted, so at most
//!   `capacity_bytes` keys are resident.
//! - Bounded memory: queues are `VecDeque`s of `(key, stamp)`; an entry's current stamp (unique,
//!   from a counter) lives in the index, so a slot whose stamp differs is a tombstone, skipped when
//!   popped. A queue is compacted when its tombstones outnumber its live slots (plus a small
//!   slack), so every queue holds at most `2 × live + 32` slots and each operation is O(1)
//!   amortised: a promotion from `S` happens at most once per insertion, and every reinsertion
//!   in `M` spends one unit of frequency, which only an access can earn.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// The highest frequency a key can reach; accesses beyond it are not counted.
pub const MAX_FREQUENCY: u8 = 3;

/// The share of the capacity, in percent, that the small queue targets.
pub const SMALL_PERCENT: u64 = 10;

/// Tombstones tolerated in a queue on top of one per live slot before it is compacted.
const COMPACT_SLACK: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
}

#[derive(Debug)]
struct Entry {
    size: u64,
    freq: u8,
    queue: Queue,
    /// The stamp of this entry's live slot in its queue.
    stamp: u64,
}

/// A byte-weighted S3-FIFO eviction policy over keys `K` (see the [module docs](self)).
///
/// ```
/// use lazyblock_cache::S3Fifo;
///
/// let mut policy = S3Fifo::new(100, 10); // 100 bytes, remember 10 ghosts
/// for key in 0..10u32 {
///     assert!(!policy.access(&key)); // miss: the tier fetches the bytes, then
///     assert!(policy.insert(key, 10).is_empty()); // admits them
/// }
/// assert!(policy.access(&0)); // hit
/// // Full: making room promotes 0 (accessed) and evicts 1 (never accessed again).
/// assert_eq!(policy.insert(10, 10), [1]);
/// assert!(policy.contains(&0) && !policy.contains(&1));
/// assert_eq!(policy.used_bytes(), 100);
/// ```
#[derive(Debug)]
pub struct S3Fifo<K> {
    capacity: u64,
    small_target: u64,
    ghost_capacity: usize,
    entries: HashMap<K, Entry>,
    small: VecDeque<(K, u64)>,
    main: VecDeque<(K, u64)>,
    small_bytes: u64,
    main_bytes: u64,
    small_len: usize,
    main_len: usize,
    ghost: VecDeque<(K, u64)>,
    ghost_index: HashMap<K, u64>,
    next_stamp: u64,
}

impl<K: Eq + Hash + Clone> S3Fifo<K> {
    /// A policy for `capacity_bytes` bytes of entries, remembering up to `ghost_entries` keys
    /// evicted from the small queue. The paper sizes the ghost like the main queue in entries:
    /// for fixed-size chunks, `capacity_bytes / chunk_size` is a good value.
    pub fn new(capacity_bytes: u64, ghost_entries: usize) -> Self {
        Self {
            capacity: capacity_bytes,
            small_target: capacity_bytes / 100 * SMALL_PERCENT
                + capacity_bytes % 100 * SMALL_PERCENT / 100,
            ghost_capacity: ghost_entries,
            entries: HashMap::new(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            small_bytes: 0,
            main_bytes: 0,
            small_len: 0,
            main_len: 0,
            ghost: VecDeque::new(),
            ghost_index: HashMap::new(),
            next_stamp: 0,
        }
    }

    /// The capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity
    }

    /// The bytes of all resident entries (never more than [`capacity_bytes`](Self::capacity_bytes)).
    pub fn used_bytes(&self) -> u64 {
        self.small_bytes + self.main_bytes
    }

    /// The bytes of the entries in the small (probationary) queue.
    pub fn small_bytes(&self) -> u64 {
        self.small_bytes
    }

    /// The bytes of the entries in the main queue.
    pub fn main_bytes(&self) -> u64 {
        self.main_bytes
    }

    /// The number of resident entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is resident.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The number of keys in the ghost queue (evicted from the small queue, remembered).
    pub fn ghost_len(&self) -> usize {
        self.ghost_index.len()
    }

    /// Whether an entry of `size` bytes can be admitted: more than 0 and at most the capacity.
    pub fn admits(&self, size: u64) -> bool {
        size > 0 && size <= self.capacity
    }

    /// Whether `key` is resident. Does not count as an access.
    pub fn contains<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.contains_key(key)
    }

    /// The size of the resident entry `key`, if any. Does not count as an access.
    pub fn size_of<Q>(&self, key: &Q) -> Option<u64>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(key).map(|e| e.size)
    }

    /// The resident keys, in no particular order. Does not count as an access.
    pub fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        self.entries.keys()
    }

    /// Records a lookup of `key`: on a hit, bumps its frequency (saturating at
    /// [`MAX_FREQUENCY`]) and returns `true`; on a miss returns `false` and changes nothing (the
    /// caller fetches the bytes and calls [`insert`](Self::insert)).
    pub fn access<Q>(&mut self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.entries.get_mut(key) {
            Some(entry) => {
                entry.freq = (entry.freq + 1).min(MAX_FREQUENCY);
                true
            }
            None => false,
        }
    }

    /// Inserts `key` with `size` bytes and returns the keys evicted to make room; the caller
    /// deletes them from its storage. After the call, `contains(&key)` tells whether it was
    /// admitted.
    ///
    /// - A new key enters the small queue, or the main queue if it is in the ghost queue.
    /// - An existing key keeps its place and frequency and takes the new size; if it grew, other
    ///   entries (possibly, at worst, itself) are evicted until everything fits.
    /// - A size of 0 or above the capacity is rejected: the key is not inserted and, if it was
    ///   resident, it is removed and reported in the returned keys.
    pub fn insert(&mut self, key: K, size: u64) -> Vec<K> {
        let mut evicted = Vec::new();
        if !self.admits(size) {
            if self.remove(&key).is_some() {
                evicted.push(key);
            }
            return evicted;
        }
        if let Some(entry) = self.entries.get_mut(&key) {
            let old = entry.size;
            entry.size = size;
            match entry.queue {
                Queue::Small => self.small_bytes = self.small_bytes - old + size,
                Queue::Main => self.main_bytes = self.main_bytes - old + size,
            }
            while self.used_bytes() > self.capacity {
                if !self.evict_one(&mut evicted) {
                    break;
                }
            }
            return evicted;
        }
        while self.used_bytes() + size > self.capacity {
            if !self.evict_one(&mut evicted) {
                break;
            }
        }
        let queue = if self.ghost_index.remove(&key).is_some() {
            self.compact();
            Queue::Main
        } else {
            Queue::Small
        };
        let stamp = self.stamp();
        match queue {
            Queue::Small => {
                self.small_bytes += size;
                self.small_len += 1;
                self.small.push_back((key.clone(), stamp));
            }
            Queue::Main => {
                self.main_bytes += size;
                self.main_len += 1;
                self.main.push_back((key.clone(), stamp));
            }
        }
        self.entries.insert(
            key,
            Entry {
                size,
                freq: 0,
                queue,
                stamp,
            },
        );
        evicted
    }

    /// Removes `key` (e.g. its bytes were found corrupt or deleted by the tier) and returns its
    /// size, or `None` if it was not resident. The ghost queue is left alone.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<u64>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entry = self.entries.remove(key)?;
        self.forget(&entry);
        self.compact();
        Some(entry.size)
    }

    fn stamp(&mut self) -> u64 {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        stamp
    }

    fn main_target(&self) -> u64 {
        self.capacity - self.small_target
    }

    /// Takes a removed entry out of its queue's accounting (its slot becomes a tombstone).
    fn forget(&mut self, entry: &Entry) {
        match entry.queue {
            Queue::Small => {
                self.small_bytes -= entry.size;
                self.small_len -= 1;
            }
            Queue::Main => {
                self.main_bytes -= entry.size;
                self.main_len -= 1;
            }
        }
    }

    /// One eviction step; returns whether at least one key was evicted (always, when an entry is
    /// resident).
    fn evict_one(&mut self, out: &mut Vec<K>) -> bool {
        let before = out.len();
        if self.small_len > 0 && (self.small_bytes >= self.small_target || self.main_len == 0) {
            self.evict_small(out);
        }
        if out.len() == before && self.main_len > 0 {
            self.evict_main(out);
        }
        out.len() > before
    }

    /// Evicts from the small queue until one key has left into the ghost queue (promoting
    /// accessed keys to main on the way) or the small queue is empty.
    fn evict_small(&mut self, out: &mut Vec<K>) {
        while let Some(key) = pop_live(&mut self.small, &self.entries) {
            let new_stamp = self.stamp();
            let entry = self
                .entries
                .get_mut(&key)
                .expect("pop_live returns resident keys");
            if entry.freq > 0 {
                entry.freq = 0;
                entry.queue = Queue::Main;
                entry.stamp = new_stamp;
                let size = entry.size;
                self.small_bytes -= size;
                self.small_len -= 1;
                self.main_bytes += size;
                self.main_len += 1;
                self.main.push_back((key, new_stamp));
                while self.main_bytes > self.main_target() && self.main_len > 0 {
                    self.evict_main(out);
                }
                continue;
            }
            if let Some(entry) = self.entries.remove(&key) {
                self.forget(&entry);
            }
            self.ghost_push(key.clone());
            out.push(key);
            return;
        }
    }

    /// Evicts one key from the main queue, giving keys with a frequency > 0 another lap.
    fn evict_main(&mut self, out: &mut Vec<K>) {
        while let Some(key) = pop_live(&mut self.main, &self.entries) {
            let new_stamp = self.stamp();
            let entry = self
                .entries
                .get_mut(&key)
                .expect("pop_live returns resident keys");
            if entry.freq > 0 {
                entry.freq -= 1;
                entry.stamp = new_stamp;
                self.main.push_back((key, new_stamp));
                continue;
            }
            if let Some(entry) = self.entries.remove(&key) {
                self.forget(&entry);
            }
            out.push(key);
            return;
        }
    }

    fn ghost_push(&mut self, key: K) {
        if self.ghost_capacity == 0 {
            return;
        }
        let stamp = self.stamp();
        self.ghost_index.insert(key.clone(), stamp);
        self.ghost.push_back((key, stamp));
        while self.ghost_index.len() > self.ghost_capacity {
            let Some((old, old_stamp)) = self.ghost.pop_front() else {
                break;
            };
            if self.ghost_index.get(&old) == Some(&old_stamp) {
                self.ghost_index.remove(&old);
            }
        }
        self.compact();
    }

    /// Drops the tombstones of any queue that holds more of them than live slots (plus slack).
    fn compact(&mut self) {
        let entries = &self.entries;
        let live = |(key, stamp): &(K, u64)| entries.get(key).is_some_and(|e| e.stamp == *stamp);
        if self.small.len() > 2 * self.small_len + COMPACT_SLACK {
            self.small.retain(live);
        }
        if self.main.len() > 2 * self.main_len + COMPACT_SLACK {
            self.main.retain(live);
        }
        if self.ghost.len() > 2 * self.ghost_index.len() + COMPACT_SLACK {
            let index = &self.ghost_index;
            self.ghost
                .retain(|(key, stamp)| index.get(key).is_some_and(|s| s == stamp));
        }
    }
}

/// Pops the oldest live slot of `queue` (its stamp matches the resident entry), dropping
/// tombstones on the way.
fn pop_live<K: Eq + Hash>(
    queue: &mut VecDeque<(K, u64)>,
    entries: &HashMap<K, Entry>,
) -> Option<K> {
    while let Some((key, stamp)) = queue.pop_front() {
        if entries.get(&key).is_some_and(|e| e.stamp == stamp) {
            return Some(key);
        }
    }
    None
}

#[cfg(test)]
mod tests;
