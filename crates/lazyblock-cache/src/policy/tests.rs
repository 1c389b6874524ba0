#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::*;

/// Checks every invariant of the module docs against the internals.
fn check<K: Eq + Hash + Clone + std::fmt::Debug>(p: &S3Fifo<K>) {
    assert!(p.used_bytes() <= p.capacity_bytes(), "over capacity");
    let (mut small_bytes, mut main_bytes, mut small_len, mut main_len) = (0, 0, 0, 0);
    for entry in p.entries.values() {
        assert!(entry.size > 0 && entry.size <= p.capacity);
        assert!(entry.freq <= MAX_FREQUENCY);
        match entry.queue {
            Queue::Small => {
                small_bytes += entry.size;
                small_len += 1;
            }
            Queue::Main => {
                main_bytes += entry.size;
                main_len += 1;
            }
        }
    }
    assert_eq!((small_bytes, main_bytes), (p.small_bytes, p.main_bytes));
    assert_eq!((small_len, main_len), (p.small_len, p.main_len));
    for (queue, slots, live_len) in [
        (Queue::Small, &p.small, p.small_len),
        (Queue::Main, &p.main, p.main_len),
    ] {
        let mut live = HashSet::new();
        for (key, stamp) in slots {
            if let Some(entry) = p.entries.get(key) {
                if entry.stamp == *stamp {
                    assert_eq!(entry.queue, queue, "{key:?} in the wrong queue");
                    assert!(live.insert(key.clone()), "{key:?} twice");
                }
            }
        }
        assert_eq!(
            live.len(),
            live_len,
            "a resident key has no slot in {queue:?}"
        );
        assert!(
            slots.len() <= 2 * live_len + COMPACT_SLACK + 1,
            "tombstones unbounded"
        );
    }
    assert!(p.ghost_index.len() <= p.ghost_capacity);
    assert!(p.ghost.len() <= 2 * p.ghost_index.len() + COMPACT_SLACK + 1);
    for (key, stamp) in &p.ghost_index {
        assert!(
            !p.entries.contains_key(key),
            "{key:?} both resident and ghost"
        );
        assert!(p.ghost.contains(&(key.clone(), *stamp)));
    }
}

fn queue_of(p: &S3Fifo<u32>, key: u32) -> Option<Queue> {
    p.entries.get(&key).map(|e| e.queue)
}

/// Capacity 100 bytes: small target 10, main target 90.
fn filled(keys: std::ops::RangeInclusive<u32>) -> S3Fifo<u32> {
    let mut p = S3Fifo::new(100, 10);
    for key in keys {
        assert!(p.insert(key, 10).is_empty());
    }
    check(&p);
    p
}

#[test]
fn targets_split_capacity_ten_ninety() {
    let p = S3Fifo::<u32>::new(1000, 0);
    assert_eq!((p.small_target, p.main_target()), (100, 900));
    let p = S3Fifo::<u32>::new(u64::MAX, 0);
    assert_eq!(p.small_target, u64::MAX / 10);
}

#[test]
fn small_queue_evicts_in_fifo_order() {
    let mut p = filled(1..=10);
    let mut evicted = Vec::new();
    for key in 11..=15 {
        evicted.extend(p.insert(key, 10));
        check(&p);
    }
    assert_eq!(evicted, [1, 2, 3, 4, 5]);
    assert_eq!(p.len(), 10);
    assert_eq!(p.used_bytes(), 100);
    assert!((1..=5).all(|k| !p.contains(&k)));
    assert_eq!(p.ghost_len(), 5);
}

#[test]
fn accessed_small_key_is_promoted_to_main() {
    let mut p = filled(1..=10);
    assert!(p.access(&1));
    assert_eq!(p.insert(11, 10), [2]);
    check(&p);
    assert_eq!(queue_of(&p, 1), Some(Queue::Main));
    assert_eq!(p.entries[&1].freq, 0, "frequency resets on promotion");
    assert_eq!(queue_of(&p, 11), Some(Queue::Small));
    assert!(p.ghost_index.contains_key(&2));
    assert_eq!((p.small_bytes(), p.main_bytes()), (90, 10));
}

#[test]
fn ghost_hit_goes_straight_to_main() {
    let mut p = filled(1..=10);
    assert_eq!(p.insert(11, 10), [1]);
    assert_eq!(p.ghost_len(), 1);
    // 1 was evicted too early: it comes back into main, and small pays for it.
    assert_eq!(p.insert(1, 10), [2]);
    check(&p);
    assert_eq!(queue_of(&p, 1), Some(Queue::Main));
    assert!(!p.ghost_index.contains_key(&1));
    assert!(p.ghost_index.contains_key(&2));
    // Without the ghost, a returning key is a new key.
    let mut p = S3Fifo::new(100, 0);
    for key in 1..=11 {
        p.insert(key, 10);
    }
    assert_eq!(p.ghost_len(), 0);
    assert_eq!(p.insert(1, 10), [2]);
    assert_eq!(queue_of(&p, 1), Some(Queue::Small));
}

#[test]
fn main_gives_accessed_keys_a_second_chance_and_small_goes_first_when_over_target() {
    let mut p = filled(1..=10);
    for key in 1..=9 {
        assert!(p.access(&key));
    }
    // 1..=9 are promoted (main reaches its 90-byte target), 10 leaves into the ghost.
    assert_eq!(p.insert(11, 10), [10]);
    assert!((1..=9).all(|k| queue_of(&p, k) == Some(Queue::Main)));
    assert_eq!(p.remove(&11), Some(10));
    check(&p);
    // Small is empty (under target): main evicts, skipping 1 which was accessed.
    assert!(p.access(&1));
    assert_eq!(p.insert(12, 20), [2]);
    check(&p);
    assert!(p.contains(&1));
    assert_eq!(
        p.entries[&1].freq, 0,
        "the second chance costs one frequency"
    );
    // Small (20 bytes) is now over its 10-byte target: it evicts before main.
    assert_eq!(p.insert(13, 20), [12]);
    check(&p);
    assert_eq!(p.used_bytes(), 100);
}

#[test]
fn main_eviction_is_fifo_among_unaccessed_keys() {
    let mut p = filled(1..=10);
    for key in 1..=9 {
        p.access(&key);
    }
    p.insert(11, 10);
    p.remove(&11);
    let mut evicted = Vec::new();
    // Each insert needs one more 10-byte slot; removing it right away keeps small empty, so
    // main evicts.
    for (key, size) in [(100, 20), (101, 30), (102, 40)] {
        evicted.extend(p.insert(key, size));
        p.remove(&key);
    }
    assert_eq!(evicted, [1, 2, 3]);
    check(&p);
}

#[test]
fn frequency_saturates() {
    let mut p = filled(1..=1);
    for _ in 0..10 {
        assert!(p.access(&1));
    }
    assert_eq!(p.entries[&1].freq, MAX_FREQUENCY);
    assert!(!p.access(&2));
    assert!(!p.contains(&2));
}

#[test]
fn oversized_and_empty_entries_are_rejected() {
    let mut p = filled(1..=3);
    assert!(p.insert(50, 101).is_empty());
    assert!(p.insert(51, 0).is_empty());
    assert!(!p.contains(&50) && !p.contains(&51));
    assert!(!p.admits(101) && !p.admits(0) && p.admits(100));
    // An entry exactly the capacity evicts everything else.
    let mut evicted = p.insert(52, 100);
    evicted.sort_unstable();
    assert_eq!(evicted, [1, 2, 3]);
    assert!(p.contains(&52));
    check(&p);
    // A resident key re-inserted too large is dropped and reported.
    assert_eq!(p.insert(52, 101), [52]);
    assert!(p.is_empty());
    assert_eq!(p.used_bytes(), 0);
    check(&p);
}

#[test]
fn reinsert_updates_size_in_place() {
    let mut p = filled(1..=5);
    assert!(p.access(&1));
    assert!(p.insert(1, 30).is_empty());
    check(&p);
    assert_eq!(p.size_of(&1), Some(30));
    assert_eq!(p.used_bytes(), 70);
    assert_eq!(p.entries[&1].freq, 1, "frequency kept");
    // Growing past the capacity evicts others (FIFO from small; 1 was accessed, so promoted).
    assert_eq!(p.insert(1, 70), [2]);
    check(&p);
    assert_eq!(p.used_bytes(), 100);
    assert!(p.insert(1, 5).is_empty());
    assert_eq!(p.used_bytes(), 35);
    check(&p);
}

#[test]
fn remove_and_tombstones_stay_bounded() {
    let mut p = S3Fifo::new(1_000, 5);
    for round in 0..10_000u32 {
        p.insert(round % 7, 10);
        if round % 3 == 0 {
            p.remove(&(round % 7));
        }
        check(&p);
    }
    assert_eq!(p.remove(&12_345), None);
    // Ghost hits leave tombstones in the ghost queue too.
    let mut p = S3Fifo::new(100, 50);
    for round in 0..5_000u32 {
        p.insert(round % 40, 10);
        check(&p);
    }
}

#[test]
fn ghost_is_bounded_by_count() {
    let mut p = S3Fifo::new(100, 3);
    for key in 0..50u32 {
        p.insert(key, 10);
    }
    check(&p);
    assert_eq!(p.ghost_len(), 3);
    assert_eq!(
        p.ghost_index.keys().copied().collect::<HashSet<_>>(),
        HashSet::from([37, 38, 39])
    );
}

#[test]
fn borrowed_lookups() {
    let mut p = S3Fifo::new(100, 3);
    p.insert(String::from("chunk"), 10);
    assert!(p.contains("chunk"));
    assert!(p.access("chunk"));
    assert_eq!(p.remove("chunk"), Some(10));
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, u64),
    Access(u8),
    Remove(u8),
}

fn op(capacity: u64) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..48u8, 0..=capacity + 5).prop_map(|(k, s)| Op::Insert(k, s)),
        4 => (0..48u8).prop_map(Op::Access),
        1 => (0..48u8).prop_map(Op::Remove),
    ]
}

fn case() -> impl Strategy<Value = (u64, usize, Vec<Op>)> {
    (1..400u64, 0..24usize).prop_flat_map(|(capacity, ghost)| {
        (
            Just(capacity),
            Just(ghost),
            proptest::collection::vec(op(capacity), 0..300),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A shadow map that only forgets what the policy reports evicted (or what was removed)
    /// must always equal the resident set: nothing is dropped silently, nothing reported evicted
    /// stays resident, bytes add up, the capacity holds.
    #[test]
    fn random_operations_keep_invariants((capacity, ghost, ops) in case()) {
        let mut p = S3Fifo::new(capacity, ghost);
        let mut shadow: HashMap<u8, u64> = HashMap::new();
        for op in ops {
            match op {
                Op::Insert(key, size) => {
                    let evicted = p.insert(key, size);
                    let unique: HashSet<_> = evicted.iter().collect();
                    prop_assert_eq!(unique.len(), evicted.len(), "a key reported twice");
                    for k in &evicted {
                        prop_assert!(!p.contains(k), "evicted {} still resident", k);
                        prop_assert!(shadow.remove(k).is_some(), "evicted {} was not resident", k);
                    }
                    if p.contains(&key) {
                        prop_assert!(p.admits(size));
                        shadow.insert(key, size);
                    } else {
                        prop_assert!(!p.admits(size) || evicted.contains(&key));
                    }
                }
                Op::Access(key) => {
                    prop_assert_eq!(p.access(&key), shadow.contains_key(&key));
                }
                Op::Remove(key) => {
                    prop_assert_eq!(p.remove(&key), shadow.remove(&key));
                }
            }
            check(&p);
            prop_assert!(p.used_bytes() <= p.capacity_bytes());
            prop_assert_eq!(p.used_bytes(), shadow.values().sum::<u64>());
            prop_assert_eq!(p.len(), shadow.len());
            for key in 0..48u8 {
                prop_assert_eq!(p.contains(&key), shadow.contains_key(&key));
                prop_assert_eq!(p.size_of(&key), shadow.get(&key).copied());
            }
        }
    }
}
