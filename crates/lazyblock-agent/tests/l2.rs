//! The agent's fetch path ([`ChunkFetcher`]) with the AZ cache tier on 5 real memcached nodes
//! (k = 4, n = 5) in front of a real local origin store that counts its chunk GETs: cold fills,
//! dead nodes, garbage stripes repaired by the fill after the origin fetch, a tier that is all
//! down. Every fetch must return exactly the stored bytes, and the origin must be asked exactly
//! for the chunks the AZ tier could not serve.
//!
//! Each phase uses a new fetcher (an empty memory tier, no disk tier), so every fetch reaches
//! the AZ tier. Needs the `memcached` binary (Debian package `memcached`).
#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lazyblock_agent::fetch::{ChunkFetcher, ChunkRequest, FetcherConfig, Priority};
use lazyblock_agent::metrics::{DeviceMetrics, Tier};
use lazyblock_cache::l2::memcache::Node;
use lazyblock_cache::l2::stripe::HEADER_LEN;
use lazyblock_cache::l2::{FleetOptions, L2Config, L2Tier, LocalFleet};
use lazyblock_format::{chunk_name_of, ChunkName, RootId};
use lazyblock_store::testing::CountingStore;
use lazyblock_store::{ChunkStore, ObjectChunkStore, StoreConfig, StoreLocation};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NODES: usize = 5;
const K: usize = 4;
const N: usize = 5;
const CHUNKS: usize = 16;
const CHUNK: usize = 512 << 10;

struct Fixture {
    // Dropped in order: the tier, then the fleet (which kills its nodes), then the store.
    l2: Arc<L2Tier>,
    fleet: LocalFleet,
    origin: Arc<CountingStore>,
    root: RootId,
    chunks: Vec<(ChunkName, Bytes)>,
    metrics: Arc<DeviceMetrics>,
    _tmp: tempfile::TempDir,
}

/// [`CHUNKS`] random 512 KiB chunks (and two of odd lengths) at a local origin, and an empty
/// AZ tier of [`NODES`] memcached nodes.
async fn fixture(seed: u64) -> Fixture {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut cfg = StoreConfig::new(
        StoreLocation::parse(&format!("file://{}", tmp.path().join("store").display()))
            .expect("url"),
    );
    cfg.create_if_missing = true;
    let origin = Arc::new(CountingStore::new(Arc::new(
        ObjectChunkStore::open(&cfg).expect("store"),
    )));
    let root = RootId::initial();
    // Windows of a random pool with a fresh random head each: distinct, and cheap to make in a
    // debug build.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut pool = vec![0u8; CHUNK + (1 << 20)];
    rng.fill(&mut pool[..]);
    let mut chunks = Vec::new();
    for i in 0..CHUNKS {
        let len = match i {
            0 => 777,
            1 => CHUNK - 3,
            _ => CHUNK,
        };
        let at = rng.random_range(0..=pool.len() - len);
        let mut bytes = pool[at..at + len].to_vec();
        rng.fill(&mut bytes[..32]);
        let name = chunk_name_of(&bytes);
        let bytes = Bytes::from(bytes);
        origin
            .put_chunk(&root, &name, bytes.clone())
            .await
            .expect("put chunk");
        chunks.push((name, bytes));
    }
    let fleet = LocalFleet::start(NODES, FleetOptions::default())
        .expect("start memcached (apt-get install memcached)");
    let config = L2Config {
        nodes: fleet.addrs(),
        k: K,
        n: N,
        timeout: Duration::from_secs(2),
        ..L2Config::default()
    };
    let l2 = Arc::new(L2Tier::new(config).expect("tier"));
    assert!(l2.stripes_distinct());
    Fixture {
        l2,
        fleet,
        origin,
        root,
        chunks,
        metrics: Arc::new(DeviceMetrics::default()),
        _tmp: tmp,
    }
}

impl Fixture {
    /// A fresh fetcher: empty memory tier, no disk tier, this AZ tier.
    fn fetcher(&self) -> Arc<ChunkFetcher> {
        Arc::new(ChunkFetcher::new(
            self.origin.clone(),
            FetcherConfig {
                mem_bytes: 64 << 20,
                disk: None,
                l2: Some(Arc::clone(&self.l2)),
                ..FetcherConfig::default()
            },
        ))
    }

    /// Fetches chunks `which` (indices) with `fetcher`, asserts their bytes, returns the tiers.
    async fn fetch(&self, fetcher: &Arc<ChunkFetcher>, which: &[usize]) -> Vec<Tier> {
        let mut tiers = Vec::new();
        for &i in which {
            let (name, bytes) = &self.chunks[i];
            let req = ChunkRequest {
                root: self.root.clone(),
                name: *name,
                len: bytes.len(),
            };
            let (data, tier) = fetcher
                .get(&req, Priority::Demand, &self.metrics)
                .await
                .unwrap_or_else(|e| panic!("chunk {i}: {e}"));
            assert!(data == *bytes, "chunk {i} from {tier:?}: WRONG BYTES");
            tiers.push(tier);
        }
        tiers
    }

    /// GETs the origin served, per chunk index.
    fn origin_gets(&self) -> Vec<usize> {
        self.chunks
            .iter()
            .map(|(name, _)| self.origin.gets_of(name))
            .collect()
    }

    /// Waits (at most 20 s) until no AZ fill is in flight.
    async fn drain_fills(&self) {
        assert!(
            self.l2.wait_for_fills(Duration::from_secs(20)).await,
            "fills did not drain within 20 s"
        );
    }

    /// Writes every chunk to the AZ tier directly.
    async fn warm(&self) {
        for (name, bytes) in &self.chunks {
            assert_eq!(self.l2.put(name.as_bytes(), bytes).await.expect("put"), N);
        }
    }

    /// The fleet index of the node holding each stripe of chunk `i`.
    fn nodes_of(&self, i: usize) -> Vec<usize> {
        self.l2
            .placement_of(self.chunks[i].0.as_bytes())
            .into_iter()
            .map(|addr| self.fleet.index_of(addr).expect("a fleet node"))
            .collect()
    }

    /// Keeps the header of stripe `stripe` of chunk `i` and turns its payload into garbage.
    async fn garble(&self, i: usize, stripe: usize) {
        let id = self.chunks[i].0.as_bytes();
        let node = Node::new(
            self.fleet.addrs()[self.nodes_of(i)[stripe]].clone(),
            1,
            Duration::from_secs(5),
        );
        let key = self.l2.key_of(id, stripe);
        let timeout = Duration::from_secs(5);
        let mut frame = node
            .get(&key, 8 << 20, timeout)
            .await
            .expect("get")
            .expect("stripe stored")
            .to_vec();
        for b in &mut frame[HEADER_LEN..] {
            *b = !*b;
        }
        node.set(&key, &frame, 0, timeout).await.expect("set");
    }
}

fn all() -> Vec<usize> {
    (0..CHUNKS).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cold_az_tier_is_filled_and_then_spares_the_origin() {
    let f = fixture(1).await;
    let tiers = f.fetch(&f.fetcher(), &all()).await;
    assert!(tiers.iter().all(|&t| t == Tier::Origin), "{tiers:?}");
    assert_eq!(f.origin_gets(), vec![1; CHUNKS]);
    f.drain_fills().await;
    let stats = f.l2.stats();
    assert_eq!(stats.fills.load(Ordering::Relaxed), CHUNKS as u64);
    assert_eq!(stats.fills_dropped.load(Ordering::Relaxed), 0);
    assert_eq!(stats.fill_stripe_errors.load(Ordering::Relaxed), 0);
    assert_eq!(stats.misses.load(Ordering::Relaxed), CHUNKS as u64);
    // A new agent (empty memory) gets everything from the AZ tier.
    let tiers = f.fetch(&f.fetcher(), &all()).await;
    assert!(tiers.iter().all(|&t| t == Tier::L2), "{tiers:?}");
    assert_eq!(f.origin_gets(), vec![1; CHUNKS], "no extra origin fetch");
    assert_eq!(stats.hits.load(Ordering::Relaxed), CHUNKS as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_dead_node_costs_no_origin_fetch() {
    let mut f = fixture(2).await;
    f.warm().await;
    let fetcher = f.fetcher();
    let (first, second): (Vec<usize>, Vec<usize>) = all().into_iter().partition(|i| i % 2 == 0);
    let tiers = f.fetch(&fetcher, &first).await;
    assert!(tiers.iter().all(|&t| t == Tier::L2), "{tiers:?}");
    f.fleet.kill(4).expect("kill");
    let tiers = f.fetch(&fetcher, &second).await;
    assert!(tiers.iter().all(|&t| t == Tier::L2), "{tiers:?}");
    // And all of them again, on a new agent.
    let tiers = f.fetch(&f.fetcher(), &all()).await;
    assert!(tiers.iter().all(|&t| t == Tier::L2), "{tiers:?}");
    assert_eq!(f.origin_gets(), vec![0; CHUNKS], "no origin fetch");
    let stats = f.l2.stats();
    assert_eq!(stats.misses.load(Ordering::Relaxed), 0);
    assert!(stats.rebuilds.load(Ordering::Relaxed) > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_dead_nodes_fall_back_to_the_origin() {
    let mut f = fixture(3).await;
    f.warm().await;
    f.fleet.kill(1).expect("kill");
    f.fleet.kill(2).expect("kill");
    let affected: Vec<bool> = (0..CHUNKS)
        .map(|i| f.nodes_of(i).iter().filter(|&&n| n == 1 || n == 2).count() > N - K)
        .collect();
    assert!(affected.iter().any(|&a| a));
    let tiers = f.fetch(&f.fetcher(), &all()).await;
    for (i, tier) in tiers.iter().enumerate() {
        let want = if affected[i] { Tier::Origin } else { Tier::L2 };
        assert_eq!(*tier, want, "chunk {i}");
    }
    let want: Vec<usize> = affected.iter().map(|&a| usize::from(a)).collect();
    assert_eq!(f.origin_gets(), want);
    // The fills after those origin fetches cannot store k stripes; they fail quietly.
    f.drain_fills().await;
    let stats = f.l2.stats();
    assert_eq!(stats.corrupt.load(Ordering::Relaxed), 0);
    assert!(stats.fill_stripe_errors.load(Ordering::Relaxed) > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_stripes_go_to_the_origin_and_the_fill_repairs_them() {
    let f = fixture(4).await;
    f.warm().await;
    let bad = 5;
    f.garble(bad, 0).await;
    f.garble(bad, 3).await;
    let tiers = f.fetch(&f.fetcher(), &all()).await;
    for (i, tier) in tiers.iter().enumerate() {
        let want = if i == bad { Tier::Origin } else { Tier::L2 };
        assert_eq!(*tier, want, "chunk {i}");
    }
    let mut want = vec![0; CHUNKS];
    want[bad] = 1;
    assert_eq!(f.origin_gets(), want);
    let stats = f.l2.stats();
    assert_eq!(stats.corrupt.load(Ordering::Relaxed), 1);
    // The background fill after the origin fetch overwrote the garbage.
    f.drain_fills().await;
    assert_eq!(stats.fills.load(Ordering::Relaxed), 1);
    let tiers = f.fetch(&f.fetcher(), &[bad]).await;
    assert_eq!(tiers, vec![Tier::L2], "repaired by the fill");
    assert_eq!(f.origin_gets(), want, "no second origin fetch");
    assert_eq!(stats.corrupt.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_az_tier_all_down_serves_from_the_origin() {
    let mut f = fixture(5).await;
    f.warm().await;
    for node in 0..NODES {
        f.fleet.kill(node).expect("kill");
    }
    let tiers = f.fetch(&f.fetcher(), &all()).await;
    assert!(tiers.iter().all(|&t| t == Tier::Origin), "{tiers:?}");
    assert_eq!(f.origin_gets(), vec![1; CHUNKS]);
    assert_eq!(f.metrics.origin_errors.load(Ordering::Relaxed), 0);
    assert_eq!(f.l2.stats().misses.load(Ordering::Relaxed), CHUNKS as u64);
    f.drain_fills().await;
}
