//! The AZ cache tier ([`L2Tier`]) against real memcached processes ([`LocalFleet`], 5 nodes,
//! k = 4, n = 5): round trips, dead, frozen (SIGSTOP) and all-down nodes, garbage stripes,
//! eviction under memory pressure, and bounded background fills.
//!
//! Chunks are content-addressed (`id = SHA-256(bytes)`), as the tier checks, so a wrong answer
//! can only be a bug of the tier. Which node holds which stripe is asked of the
//! tier ([`L2Tier::placement_of`]), never assumed, so the tests hold for any placement and any
//! codec with the same API. Needs the `memcached` binary (Debian package `memcached`).
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lazyblock_cache::l2::memcache::Node;
use lazyblock_cache::l2::stripe::HEADER_LEN;
use lazyblock_cache::l2::{FleetOptions, L2Config, L2Get, L2Tier, LocalFleet};
use lazyblock_cache::{CacheErrorKind, ChunkId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

const K: usize = 4;
const N: usize = 5;
const NODES: usize = 5;
const CHUNK: usize = 512 << 10;

/// `count` random chunks (seeded) of the given lengths, cycling through `lens`: each a window
/// at a random offset of a 2 MiB random pool, its first 32 bytes drawn afresh, so chunks are
/// distinct and their stripes random (ChaCha over 100 MiB is slow in a debug build).
fn chunks(seed: u64, count: usize, lens: &[usize]) -> Vec<(ChunkId, Vec<u8>)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let longest = lens.iter().copied().max().unwrap_or(0);
    let mut pool = vec![0u8; longest + (1 << 20)];
    rng.fill(&mut pool[..]);
    (0..count)
        .map(|i| {
            let len = lens[i % lens.len()];
            let at = rng.random_range(0..=pool.len() - len);
            let mut bytes = pool[at..at + len].to_vec();
            let head = len.min(32);
            rng.fill(&mut bytes[..head]);
            (Sha256::digest(&bytes).into(), bytes)
        })
        .collect()
}

/// A fleet of [`NODES`] memcached processes and a tier over it.
struct Setup {
    // The tier is dropped before the fleet (field order), the fleet kills its nodes on drop.
    tier: Arc<L2Tier>,
    fleet: LocalFleet,
}

fn setup(options: FleetOptions, config: L2Config) -> Setup {
    let fleet =
        LocalFleet::start(NODES, options).expect("start memcached (apt-get install memcached)");
    let config = L2Config {
        nodes: fleet.addrs(),
        k: K,
        n: N,
        ..config
    };
    let tier = Arc::new(L2Tier::new(config).expect("tier"));
    assert!(tier.stripes_distinct());
    Setup { tier, fleet }
}

fn default_setup() -> Setup {
    setup(
        FleetOptions::default(),
        L2Config {
            timeout: Duration::from_secs(5),
            ..L2Config::default()
        },
    )
}

impl Setup {
    /// The fleet index of the node holding each stripe of `id`, in stripe order.
    fn nodes_of(&self, id: &ChunkId) -> Vec<usize> {
        let nodes: Vec<usize> = self
            .tier
            .placement_of(id)
            .into_iter()
            .map(|addr| self.fleet.index_of(addr).expect("placed on a fleet node"))
            .collect();
        assert_eq!(nodes.len(), N);
        nodes
    }

    /// The stripe of `id` that node `node` holds (`None`: it holds none).
    fn stripe_on(&self, id: &ChunkId, node: usize) -> Option<usize> {
        self.nodes_of(id).iter().position(|&n| n == node)
    }

    /// A direct client of node `node`.
    fn client(&self, node: usize) -> Node {
        Node::new(self.fleet.addrs()[node].clone(), 2, Duration::from_secs(5))
    }

    /// The stored frame of stripe `index` of `id`.
    async fn read_stripe(&self, id: &ChunkId, index: usize) -> Vec<u8> {
        let node = self.nodes_of(id)[index];
        self.client(node)
            .get(
                &self.tier.key_of(id, index),
                8 << 20,
                Duration::from_secs(5),
            )
            .await
            .expect("get stripe")
            .expect("stripe is stored")
            .to_vec()
    }

    /// Replaces stripe `index` of `id` with `value`.
    async fn write_stripe(&self, id: &ChunkId, index: usize, value: &[u8]) {
        let node = self.nodes_of(id)[index];
        self.client(node)
            .set(
                &self.tier.key_of(id, index),
                value,
                0,
                Duration::from_secs(5),
            )
            .await
            .expect("set stripe");
    }

    /// Keeps the frame header of stripe `index` of `id` and flips bytes of its payload.
    async fn garble_payload(&self, id: &ChunkId, index: usize) {
        let mut frame = self.read_stripe(id, index).await;
        assert!(frame.len() > HEADER_LEN + 64);
        for b in &mut frame[HEADER_LEN..HEADER_LEN + 64] {
            *b ^= 0xA5;
        }
        self.write_stripe(id, index, &frame).await;
    }

    async fn put_all(&self, chunks: &[(ChunkId, Vec<u8>)]) {
        for (id, bytes) in chunks {
            assert_eq!(self.tier.put(id, bytes).await.expect("put"), N);
        }
    }

    /// Freezes node `node` (SIGSTOP) and waits until it no longer answers: the signal is
    /// asynchronous, a request arriving right after it may still be served.
    async fn freeze(&self, node: usize) -> Frozen<'_> {
        let frozen = Frozen::new(&self.fleet, node);
        for attempt in 0.. {
            let probe = self
                .client(node)
                .get("probe", 64, Duration::from_millis(200))
                .await;
            if probe.is_err() {
                break;
            }
            eprintln!("node {node} still answers {attempt} after SIGSTOP");
            assert!(attempt < 100, "node {node} does not stop");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        frozen
    }

    /// `get` of `id` while node `node` is frozen: the node is resumed one second after the
    /// read started, so its stripe is the last to arrive and the other four are in first.
    async fn get_with_late_node(&self, id: &ChunkId, len: usize, node: usize) -> L2Get {
        let _resume = self.freeze(node).await;
        let tier = Arc::clone(&self.tier);
        let id = *id;
        let read = tokio::spawn(async move { tier.get(&id, len).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(_resume);
        read.await.expect("get task")
    }
}

/// A node frozen with SIGSTOP, resumed on drop (also when the test fails).
struct Frozen<'a> {
    fleet: &'a LocalFleet,
    node: usize,
}

impl<'a> Frozen<'a> {
    fn new(fleet: &'a LocalFleet, node: usize) -> Self {
        fleet.stop(node).expect("SIGSTOP");
        Self { fleet, node }
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let _ = self.fleet.resume(self.node);
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// A snapshot of the counters, to assert on the differences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Counts {
    hits: u64,
    misses: u64,
    corrupt: u64,
    rebuilds: u64,
    missing: u64,
    failed: u64,
    late: u64,
    invalid: u64,
}

impl Counts {
    fn of(tier: &L2Tier) -> Self {
        let s = tier.stats();
        Self {
            hits: load(&s.hits),
            misses: load(&s.misses),
            corrupt: load(&s.corrupt),
            rebuilds: load(&s.rebuilds),
            missing: load(&s.stripes_missing),
            failed: load(&s.stripes_failed),
            late: load(&s.stripes_late),
            invalid: load(&s.stripes_invalid),
        }
    }

    fn since(self, before: Self) -> Self {
        Self {
            hits: self.hits - before.hits,
            misses: self.misses - before.misses,
            corrupt: self.corrupt - before.corrupt,
            rebuilds: self.rebuilds - before.rebuilds,
            missing: self.missing - before.missing,
            failed: self.failed - before.failed,
            late: self.late - before.late,
            invalid: self.invalid - before.invalid,
        }
    }
}

/// Asserts a hit with exactly `want`; returns whether a parity stripe was used.
fn assert_hit(got: L2Get, want: &[u8], what: &str) -> bool {
    match got {
        L2Get::Hit { data, rebuilt } => {
            assert!(
                data.as_ref() == want,
                "{what}: WRONG BYTES served ({} bytes, want {})",
                data.len(),
                want.len()
            );
            rebuilt
        }
        other => panic!("{what}: expected a hit, got {other:?}"),
    }
}

/// Waits (at most 20 s) until no fill is in flight.
async fn drain_fills(tier: &L2Tier) {
    assert!(
        tier.wait_for_fills(Duration::from_secs(20)).await,
        "fills did not drain within 20 s"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn put_then_get_round_trips() {
    let s = default_setup();
    // Odd lengths first (one byte, not a multiple of k or 64, just over a stripe, just over
    // 512 KiB), then 512 KiB chunks.
    let mut set = chunks(1, 4, &[1, 4097, 131_073, CHUNK + 1]);
    set.extend(chunks(2, 60, &[CHUNK]));
    s.put_all(&set).await;
    let mut rebuilt = 0;
    for (i, (id, bytes)) in set.iter().enumerate() {
        rebuilt += u64::from(assert_hit(
            s.tier.get(id, bytes.len()).await,
            bytes,
            &format!("chunk {i}"),
        ));
    }
    let c = Counts::of(&s.tier);
    assert_eq!(c.hits, 64, "{c:?}");
    // All data stripes are present, but the read rebuilds from the first k to arrive: when
    // the parity stripe overtakes a data stripe it is used (and counted as a rebuild), so the
    // count is whatever the arrival order made it; it must agree with the answers.
    assert_eq!(c.rebuilds, rebuilt, "{c:?}");
    assert_eq!(
        (c.misses, c.corrupt, c.failed, c.invalid, c.missing),
        (0, 0, 0, 0, 0)
    );
    // Each read completes on the first k stripes and cancels the n-th.
    assert_eq!(c.late, 64 * (N - K) as u64, "{c:?}");
    // A chunk never written, and a known chunk asked with the wrong length, are misses.
    let (never, _) = &chunks(3, 1, &[CHUNK])[0];
    assert_eq!(s.tier.get(never, CHUNK).await, L2Get::Miss);
    assert_eq!(s.tier.get(&set[10].0, CHUNK - 64).await, L2Get::Miss);
    let c = Counts::of(&s.tier);
    assert_eq!(c.misses, 2, "{c:?}");
    // Each gives up after n - k + 1 unusable stripes (not found; frames of another length).
    assert_eq!(c.missing, (N - K + 1) as u64, "{c:?}");
    assert_eq!(c.invalid, (N - K + 1) as u64, "{c:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_dead_node_costs_rebuilds_not_hits() {
    let mut s = default_setup();
    let set = chunks(4, 64, &[CHUNK]);
    s.put_all(&set).await;
    let (first, second) = set.split_at(32);
    for (id, bytes) in first {
        assert_hit(s.tier.get(id, bytes.len()).await, bytes, "before the kill");
    }
    let dead = 2;
    s.fleet.kill(dead).expect("kill");
    let before = Counts::of(&s.tier);
    let mut expected_rebuilds = 0;
    // The second half, then the first again: every chunk read after the kill.
    for (i, (id, bytes)) in second.iter().chain(first).enumerate() {
        let rebuilt = assert_hit(
            s.tier.get(id, bytes.len()).await,
            bytes,
            &format!("after the kill, chunk {i}"),
        );
        let lost = s.stripe_on(id, dead);
        let needs_parity = lost.is_some_and(|stripe| stripe < K);
        assert_eq!(rebuilt, needs_parity, "chunk {i}: lost stripe {lost:?}");
        expected_rebuilds += u64::from(needs_parity);
    }
    let c = Counts::of(&s.tier).since(before);
    assert!(
        expected_rebuilds > 0,
        "some chunk had a data stripe on the dead node"
    );
    assert_eq!(c.hits, 64, "{c:?}");
    assert_eq!(c.rebuilds, expected_rebuilds, "{c:?}");
    assert_eq!(
        (c.misses, c.corrupt, c.invalid, c.missing),
        (0, 0, 0, 0),
        "{c:?}"
    );
    // One request per read went to the dead node; it failed, or was cancelled if the other
    // four were in first.
    let on_dead = (second.iter().chain(first))
        .filter(|(id, _)| s.stripe_on(id, dead).is_some())
        .count() as u64;
    assert_eq!(c.failed + c.late, on_dead, "{c:?}");
    assert!(c.failed > 0, "{c:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_dead_nodes_are_misses_never_wrong_bytes() {
    let mut s = default_setup();
    let set = chunks(5, 32, &[CHUNK]);
    s.put_all(&set).await;
    s.fleet.kill(0).expect("kill");
    s.fleet.kill(3).expect("kill");
    let mut expected_misses = 0;
    for (i, (id, bytes)) in set.iter().enumerate() {
        let lost = s.nodes_of(id).iter().filter(|&&n| n == 0 || n == 3).count();
        let got = s.tier.get(id, bytes.len()).await;
        if lost > N - K {
            assert_eq!(got, L2Get::Miss, "chunk {i} lost {lost} stripes");
            expected_misses += 1;
        } else {
            assert_hit(got, bytes, &format!("chunk {i}"));
        }
    }
    let c = Counts::of(&s.tier);
    assert!(expected_misses > 0);
    assert_eq!(c.misses, expected_misses, "{c:?}");
    assert_eq!(c.hits + c.misses, 32, "{c:?}");
    assert_eq!(c.corrupt, 0, "{c:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_node_is_not_waited_for() {
    let s = default_setup();
    let timeout = s.tier.config().timeout;
    let set = chunks(6, 32, &[CHUNK]);
    s.put_all(&set).await;
    let frozen = 1;
    let on_frozen: Vec<_> = set
        .iter()
        .filter(|(id, _)| s.stripe_on(id, frozen).is_some())
        .collect();
    assert!(!on_frozen.is_empty());
    let before = Counts::of(&s.tier);
    let guard = s.freeze(frozen).await;
    let started = Instant::now();
    let mut expected_rebuilds = 0;
    for (i, (id, bytes)) in on_frozen.iter().enumerate() {
        let rebuilt = assert_hit(
            s.tier.get(id, bytes.len()).await,
            bytes,
            &format!("chunk {i}"),
        );
        let parity_needed = s.stripe_on(id, frozen).is_some_and(|stripe| stripe < K);
        assert_eq!(rebuilt, parity_needed, "chunk {i}");
        expected_rebuilds += u64::from(parity_needed);
    }
    let elapsed = started.elapsed();
    drop(guard);
    // Behavioural bound: waiting for the frozen node even once would take a whole timeout.
    assert!(
        elapsed < timeout,
        "{} reads took {elapsed:?}: the frozen node was waited for",
        on_frozen.len()
    );
    let c = Counts::of(&s.tier).since(before);
    assert_eq!(c.hits, on_frozen.len() as u64, "{c:?}");
    assert_eq!(c.rebuilds, expected_rebuilds, "{c:?}");
    // Exactly the frozen node's request of each read was cancelled; none failed.
    assert_eq!(c.late, on_frozen.len() as u64, "{c:?}");
    assert_eq!((c.failed, c.misses, c.corrupt), (0, 0, 0), "{c:?}");
    // Resumed, the node serves again: a read that waits for all five is complete.
    let (id, bytes) = on_frozen[0];
    assert_hit(s.tier.get(id, bytes.len()).await, bytes, "after resume");
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_stripes_are_never_served() {
    let s = default_setup();
    let set = chunks(7, 4, &[CHUNK]);
    s.put_all(&set).await;

    // (a) A data stripe with a valid header and a garbage payload. The node of another
    // stripe is frozen for a second so the garbage is among the first four to arrive: their
    // rebuild fails verification, the fifth is waited for, another subset verifies.
    let (id, bytes) = &set[0];
    s.garble_payload(id, 0).await;
    let late_node = s.nodes_of(id)[1];
    let before = Counts::of(&s.tier);
    let rebuilt = assert_hit(
        s.get_with_late_node(id, bytes.len(), late_node).await,
        bytes,
        "one garbage data stripe",
    );
    assert!(rebuilt, "the garbage data stripe was replaced by parity");
    let c = Counts::of(&s.tier).since(before);
    assert_eq!((c.hits, c.corrupt, c.rebuilds), (1, 1, 1), "{c:?}");
    assert_eq!(
        (c.late, c.invalid, c.failed, c.misses),
        (0, 0, 0, 0),
        "{c:?}"
    );
    // The recovered hit rewrote the chunk in the background: once that fill is done, the same
    // read (the same node late) finds no bad stripe.
    drain_fills(&s.tier).await;
    let before = Counts::of(&s.tier);
    assert_hit(
        s.get_with_late_node(id, bytes.len(), late_node).await,
        bytes,
        "after the repair",
    );
    let c = Counts::of(&s.tier).since(before);
    assert_eq!(
        (c.hits, c.corrupt),
        (1, 0),
        "the bad stripe was rewritten: {c:?}"
    );

    // (b) Two garbage stripes: no four stripes rebuild the chunk.
    let (id, bytes) = &set[1];
    s.garble_payload(id, 0).await;
    s.garble_payload(id, N - 1).await;
    let before = Counts::of(&s.tier);
    assert_eq!(s.tier.get(id, bytes.len()).await, L2Get::Corrupt);
    let c = Counts::of(&s.tier).since(before);
    assert_eq!((c.corrupt, c.hits, c.misses), (1, 0, 0), "{c:?}");
    assert_eq!(c.late, 0, "all five stripes were needed: {c:?}");
    // A fresh put (the origin's fill) repairs it.
    assert_eq!(s.tier.put(id, bytes).await.expect("put"), N);
    assert_hit(s.tier.get(id, bytes.len()).await, bytes, "after the repair");

    // (c) A stripe replaced by short random bytes: a malformed frame, treated as missing.
    let (id, bytes) = &set[2];
    let mut rng = StdRng::seed_from_u64(8);
    let short: Vec<u8> = (0..37).map(|_| rng.random()).collect();
    s.write_stripe(id, 2, &short).await;
    let late_node = s.nodes_of(id)[0];
    let before = Counts::of(&s.tier);
    let rebuilt = assert_hit(
        s.get_with_late_node(id, bytes.len(), late_node).await,
        bytes,
        "one malformed stripe",
    );
    assert!(rebuilt, "data stripe 2 was rebuilt from parity");
    let c = Counts::of(&s.tier).since(before);
    assert_eq!((c.hits, c.invalid, c.rebuilds), (1, 1, 1), "{c:?}");
    assert_eq!((c.corrupt, c.late, c.misses), (0, 0, 0), "{c:?}");

    // (c') A malformed stripe and a garbage one: four valid frames, no subset verifies.
    let (id, bytes) = &set[3];
    s.write_stripe(id, 1, &short).await;
    s.garble_payload(id, 3).await;
    let before = Counts::of(&s.tier);
    let got = s.tier.get(id, bytes.len()).await;
    let c = Counts::of(&s.tier).since(before);
    assert_eq!(got, L2Get::Corrupt, "{c:?}");
    assert_eq!(c.invalid, 1, "{c:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn evictions_are_misses_never_wrong_bytes() {
    let s = setup(
        FleetOptions {
            mem_mib: 8,
            ..FleetOptions::default()
        },
        L2Config {
            timeout: Duration::from_secs(5),
            ..L2Config::default()
        },
    );
    // 200 x 512 KiB = 100 MiB of chunks, 125 MiB of stripes, on 5 x 8 MiB of memcached.
    let set = chunks(9, 200, &[CHUNK]);
    let mut put_errors = 0;
    for (id, bytes) in &set {
        match s.tier.put(id, bytes).await {
            Ok(stored) => assert!(stored >= K),
            Err(e) => {
                assert_eq!(e.kind(), CacheErrorKind::Unavailable, "{e}");
                put_errors += 1;
            }
        }
    }
    let (mut hits, mut misses) = (0u64, 0u64);
    for (i, (id, bytes)) in set.iter().enumerate() {
        match s.tier.get(id, bytes.len()).await {
            L2Get::Miss => misses += 1,
            got => {
                assert_hit(got, bytes, &format!("chunk {i}"));
                hits += 1;
            }
        }
    }
    let c = Counts::of(&s.tier);
    eprintln!("eviction: {hits} hits, {misses} misses, {put_errors} failed puts, {c:?}");
    assert!(misses > 0, "evictions happened: {c:?}");
    assert!(hits > 0, "recent chunks survive: {c:?}");
    assert_eq!((c.hits, c.misses, c.corrupt), (hits, misses, 0), "{c:?}");
    assert_eq!(put_errors, 0, "memcached evicts, it does not refuse");
}

#[tokio::test(flavor = "multi_thread")]
async fn all_nodes_down_is_a_quick_miss_and_an_unavailable_put() {
    let mut s = default_setup();
    let timeout = s.tier.config().timeout;
    let set = chunks(10, 16, &[CHUNK]);
    s.put_all(&set).await;
    for node in 0..NODES {
        s.fleet.kill(node).expect("kill");
    }
    let started = Instant::now();
    for (id, bytes) in &set {
        assert_eq!(s.tier.get(id, bytes.len()).await, L2Get::Miss);
    }
    let elapsed = started.elapsed();
    // Behavioural bound: refused connections (and pooled connections to dead processes) fail
    // at once; a single request waiting for its timeout would take the whole bound.
    assert!(elapsed < timeout, "16 reads took {elapsed:?}");
    let c = Counts::of(&s.tier);
    assert_eq!(c.misses, 16, "{c:?}");
    // A read gives up as soon as fewer than k stripes can still arrive: after n - k + 1
    // failures; the rest are dropped uncounted.
    assert_eq!(c.failed, 16 * (N - K + 1) as u64, "{c:?}");
    assert_eq!((c.hits, c.corrupt), (0, 0), "{c:?}");
    let err = s
        .tier
        .put(&set[0].0, &set[0].1)
        .await
        .expect_err("no node to write to");
    assert_eq!(err.kind(), CacheErrorKind::Unavailable, "{err}");
    assert_eq!(load(&s.tier.stats().fill_stripe_errors), N as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn fills_land_and_are_bounded() {
    let s = default_setup();
    let set = chunks(11, 17, &[CHUNK]);
    let (id, bytes) = &set[0];
    assert_eq!(s.tier.get(id, bytes.len()).await, L2Get::Miss);
    s.tier.fill(*id, bytes.clone().into());
    drain_fills(&s.tier).await;
    assert_hit(s.tier.get(id, bytes.len()).await, bytes, "after the fill");
    assert_eq!(load(&s.tier.stats().fills), 1);
    assert_eq!(load(&s.tier.stats().fills_dropped), 0);

    // A backlog of one: a burst of 16 fills starts one (or a few, if one completes during the
    // burst), drops the rest, and exactly the started ones land.
    let small = setup(
        FleetOptions::default(),
        L2Config {
            timeout: Duration::from_secs(5),
            fill_backlog: 1,
            ..L2Config::default()
        },
    );
    for (id, bytes) in &set[1..] {
        small.tier.fill(*id, bytes.clone().into());
    }
    drain_fills(&small.tier).await;
    let stats = small.tier.stats();
    let (fills, dropped) = (load(&stats.fills), load(&stats.fills_dropped));
    assert!(dropped > 0, "fills {fills}, dropped {dropped}");
    assert_eq!(fills + dropped, 16);
    assert_eq!(load(&stats.fill_stripe_errors), 0);
    let mut hits = 0;
    for (id, bytes) in &set[1..] {
        match small.tier.get(id, bytes.len()).await {
            L2Get::Miss => {}
            got => {
                assert_hit(got, bytes, "filled");
                hits += 1;
            }
        }
    }
    assert_eq!(hits, fills, "every started fill landed, no dropped one did");
}
