//! BlockSource against a real local store and a real disk cache: bytes, overlay, restart,
//! single flight, corruption, faults, read-ahead bounds and profile replay.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use lazyblock_agent::fetch::{ChunkFetcher, FetcherConfig};
use lazyblock_agent::{BlockDevice, BlockSource, DeviceErrorKind, SourceConfig, SourceDevice};
use lazyblock_format::{ChunkName, ChunkSize, ImageRef, RootId, TenantId};
use lazyblock_image::{build, open_image, BuildOptions, Context, NoProgress};
use lazyblock_keys::{KeyAccess, LocalKeyring};
use lazyblock_store::testing::CountingStore;
use lazyblock_store::{ChunkStore, ObjectChunkStore, StoreConfig, StoreLocation};
use rand::{Rng, SeedableRng};

const CHUNK: u64 = 64 << 10;

struct Fixture {
    tmp: tempfile::TempDir,
    store: Arc<CountingStore>,
    ctx: Context,
    image: Vec<u8>,
    image_ref: ImageRef,
}

/// An image of 40 chunks + 1234 bytes at 64 KiB chunks, with zero chunks and a repeated chunk.
async fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut cfg = StoreConfig::new(
        StoreLocation::parse(&format!("file://{}", tmp.path().join("store").display()))
            .expect("url"),
    );
    cfg.create_if_missing = true;
    let inner: Arc<dyn ChunkStore> = Arc::new(ObjectChunkStore::open(&cfg).expect("store"));
    let store = Arc::new(CountingStore::new(inner));
    let ctx = Context {
        store: store.clone(),
        keys: Arc::new(LocalKeyring::with_random(
            tmp.path().join("keys"),
            Box::new(|b: &mut [u8]| b.fill(3)),
        )),
        tenant: TenantId::new("t").expect("tenant"),
        root: RootId::initial(),
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let size = 40 * CHUNK + 1234;
    let mut image = vec![0u8; size as usize];
    rng.fill(&mut image[..]);
    for zero in [3u64, 4, 17] {
        image[(zero * CHUNK) as usize..((zero + 1) * CHUNK) as usize].fill(0);
    }
    let copy = image[..CHUNK as usize].to_vec();
    image[(9 * CHUNK) as usize..(10 * CHUNK) as usize].copy_from_slice(&copy);
    let image_ref = ImageRef::parse("img:v1").expect("ref");
    let mut opts = BuildOptions::new(image_ref.clone(), "test".into(), 1_700_000_000);
    opts.chunk_size = ChunkSize::new(CHUNK).expect("chunk size");
    build(
        &ctx,
        Box::new(std::io::Cursor::new(image.clone())),
        size,
        &opts,
        Arc::new(NoProgress),
        &|b: &mut [u8]| b.fill(9),
    )
    .await
    .expect("build");
    store.reset();
    Fixture {
        tmp,
        store,
        ctx,
        image,
        image_ref,
    }
}

impl Fixture {
    fn cache_dir(&self) -> PathBuf {
        self.tmp.path().join("cache")
    }

    fn fetcher(&self, disk: Option<&Path>) -> Arc<ChunkFetcher> {
        Arc::new(ChunkFetcher::new(
            self.store.clone(),
            FetcherConfig {
                disk: disk.map(|d| (d.to_path_buf(), 1 << 30)),
                ..FetcherConfig::default()
            },
        ))
    }

    async fn source(&self, fetcher: Arc<ChunkFetcher>, config: SourceConfig) -> Arc<BlockSource> {
        let opened = open_image(&self.ctx, &self.image_ref).await.expect("open");
        let key = self
            .ctx
            .keys
            .tenant_key(&self.ctx.tenant, KeyAccess::Existing)
            .expect("key");
        let keys = opened.manifest.open_keys(&key).expect("keys");
        Arc::new(
            BlockSource::new(opened.manifest, keys, opened.entry.root, fetcher, config)
                .expect("source"),
        )
    }

    fn distinct_data_chunks(&self) -> usize {
        // 41 chunks, 3 zero, chunk 9 repeats chunk 0.
        41 - 3 - 1
    }
}

fn ro() -> SourceConfig {
    SourceConfig {
        readahead: false,
        neighbor_chunks: 0,
        ..SourceConfig::default()
    }
}

fn rw(dir: &Path) -> SourceConfig {
    SourceConfig {
        read_only: false,
        overlay_dir: Some(dir.to_path_buf()),
        readahead: false,
        neighbor_chunks: 0,
        ..SourceConfig::default()
    }
}

async fn read_all(dev: &SourceDevice, piece: usize) -> Vec<u8> {
    let size = dev.size();
    let mut out = Vec::with_capacity(size as usize);
    let mut off = 0u64;
    while off < size {
        let n = (piece as u64).min(size - off) as usize;
        out.extend(dev.read(off, n).await.expect("read"));
        off += n as u64;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_equal_the_image_at_any_alignment() {
    let f = fixture().await;
    let dev = SourceDevice(f.source(f.fetcher(Some(&f.cache_dir())), ro()).await);
    for piece in [4096usize, 1000, 65_536, 200_000, 3 << 20] {
        assert!(read_all(&dev, piece).await == f.image, "piece {piece}");
    }
    // Every distinct data chunk came from the origin exactly once; zero chunks never.
    let gets = f.store.gets();
    assert_eq!(gets.len(), f.distinct_data_chunks(), "{gets:?}");
    // Out-of-range reads are refused, not served.
    let size = dev.size();
    let err = dev.read(size - 10, 11).await.expect_err("past the end");
    assert_eq!(err.kind(), DeviceErrorKind::InvalidInput);
    assert!(dev.read(u64::MAX - 5, 10).await.is_err());
    assert!(dev.read(0, 0).await.is_err());
    let m = dev.0.metrics();
    assert_eq!(
        m.origin_chunks.load(Ordering::Relaxed) as usize,
        f.distinct_data_chunks()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_go_to_the_overlay_only_and_survive_a_restart() {
    let f = fixture().await;
    let overlay = f.tmp.path().join("overlay");
    let cache = f.cache_dir();
    let chunks_before = std::fs::read_dir(f.tmp.path().join("store/roots/r0/chunks"))
        .expect("chunks")
        .count();
    let mut model = f.image.clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    {
        let dev = SourceDevice(f.source(f.fetcher(Some(&cache)), rw(&overlay)).await);
        assert!(!dev.read_only());
        for _ in 0..200 {
            let len = rng.random_range(1..20_000usize);
            let off = rng.random_range(0..model.len() - len) as u64;
            let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            dev.write(off, &data).await.expect("write");
            model[off as usize..off as usize + len].copy_from_slice(&data);
        }
        // The last, partial page.
        let tail = model.len() - 7;
        dev.write(tail as u64, &[0xAB; 7])
            .await
            .expect("tail write");
        model[tail..].fill(0xAB);
        assert!(dev.write(model.len() as u64 - 3, &[1; 4]).await.is_err());
        assert!(read_all(&dev, 12_345).await == model);
        dev.flush().await.expect("flush");
        dev.trim(0, 4096).await.expect("trim is accepted");
    }
    // A restarted agent (new fetcher, new source, same overlay) sees the writes.
    let dev = SourceDevice(f.source(f.fetcher(Some(&cache)), rw(&overlay)).await);
    assert!(read_all(&dev, 65_536).await == model);
    // Nothing written reached the store or the cache: the store holds the same chunks, and
    // every cache file is a chunk of the store, named by its hash.
    let store_chunks: HashSet<String> =
        std::fs::read_dir(f.tmp.path().join("store/roots/r0/chunks"))
            .expect("chunks")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
    assert_eq!(store_chunks.len(), chunks_before);
    let mut cached = 0;
    for sub in std::fs::read_dir(cache.join("chunks")).expect("cache chunks") {
        for file in std::fs::read_dir(sub.expect("sub").path()).expect("sub dir") {
            let name = file
                .expect("file")
                .file_name()
                .to_string_lossy()
                .into_owned();
            assert!(store_chunks.contains(&name), "cache holds {name}");
            cached += 1;
        }
    }
    assert_eq!(cached, f.distinct_data_chunks());
    // A read-only device refuses writes and trims.
    let ro_dev = SourceDevice(f.source(f.fetcher(None), ro()).await);
    assert_eq!(
        ro_dev.write(0, &[1]).await.expect_err("ro").kind(),
        DeviceErrorKind::ReadOnly
    );
    assert!(ro_dev.trim(0, 4096).await.is_err());
    // A second agent cannot take an overlay in use.
    let opened = open_image(&f.ctx, &f.image_ref).await.expect("open");
    let key = f
        .ctx
        .keys
        .tenant_key(&f.ctx.tenant, KeyAccess::Existing)
        .expect("key");
    let keys = opened.manifest.open_keys(&key).expect("keys");
    let err = BlockSource::new(
        opened.manifest,
        keys,
        opened.entry.root,
        f.fetcher(None),
        rw(&overlay),
    )
    .expect_err("overlay in use");
    assert!(err.to_string().contains("in use"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_readers_and_two_fetchers_fetch_each_chunk_once() {
    let f = fixture().await;
    let cache = f.cache_dir();
    // Two fetchers on one cache directory stand for two agent processes: their disk tiers
    // take the same per-chunk file locks.
    let a = SourceDevice(f.source(f.fetcher(Some(&cache)), ro()).await);
    let b = SourceDevice(f.source(f.fetcher(Some(&cache)), ro()).await);
    let mut tasks = Vec::new();
    for i in 0..8usize {
        let dev = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(
            async move { read_all(&dev, 4096 * (1 + i)).await },
        ));
    }
    for t in tasks {
        assert!(t.await.expect("task") == f.image);
    }
    let gets = f.store.gets();
    let distinct: HashSet<_> = gets.iter().collect();
    assert_eq!(distinct.len(), f.distinct_data_chunks());
    assert_eq!(gets.len(), distinct.len(), "some chunk was fetched twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_cache_file_is_dropped_and_refetched() {
    let f = fixture().await;
    let cache = f.cache_dir();
    let dev = SourceDevice(f.source(f.fetcher(Some(&cache)), ro()).await);
    assert!(read_all(&dev, 65_536).await == f.image);
    let first = f.store.gets()[0];
    let path = cache
        .join("chunks")
        .join(&first.to_hex()[..2])
        .join(first.to_hex());
    let mut bytes = std::fs::read(&path).expect("cached chunk");
    bytes[100] ^= 0xff;
    std::fs::write(&path, &bytes).expect("corrupt it");
    f.store.reset();
    // A new fetcher (empty memory tier) must not serve the corrupt file.
    let dev = SourceDevice(f.source(f.fetcher(Some(&cache)), ro()).await);
    assert!(read_all(&dev, 65_536).await == f.image);
    assert_eq!(
        f.store.gets(),
        vec![first],
        "only the corrupt chunk is refetched"
    );
    assert_ne!(std::fs::read(&path).expect("rewritten"), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_origin_chunk_is_never_served_or_cached() {
    let f = fixture().await;
    let cache = f.cache_dir();
    let dev = SourceDevice(f.source(f.fetcher(Some(&cache)), ro()).await);
    let opened = open_image(&f.ctx, &f.image_ref).await.expect("open");
    let name = opened.manifest.chunk(0).expect("chunk 0 holds data");
    let path = f
        .tmp
        .path()
        .join("store/roots/r0/chunks")
        .join(name.to_hex());
    let good = std::fs::read(&path).expect("stored chunk");
    let mut bad = good.clone();
    bad[7] ^= 0x40;
    std::fs::write(&path, &bad).expect("corrupt it at the origin");
    let err = dev.read(0, 4096).await.expect_err("corrupt at the origin");
    assert_eq!(err.kind(), DeviceErrorKind::Io);
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert!(
        !cache
            .join("chunks")
            .join(&name.to_hex()[..2])
            .join(name.to_hex())
            .exists(),
        "a corrupt chunk must not enter the disk cache"
    );
    // Repaired at the origin: the same device serves the right bytes.
    std::fs::write(&path, &good).expect("repair");
    assert_eq!(dev.read(0, 4096).await.expect("read"), f.image[..4096]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unusable_cache_directory_still_serves() {
    let f = fixture().await;
    let not_a_dir = f.tmp.path().join("file");
    std::fs::write(&not_a_dir, b"x").expect("file");
    let fetcher = f.fetcher(Some(&not_a_dir));
    assert!(!fetcher.has_disk_tier());
    let dev = SourceDevice(f.source(fetcher, ro()).await);
    assert!(read_all(&dev, 65_536).await == f.image);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn origin_failures_give_an_io_error_not_a_hang() {
    let f = fixture().await;
    f.store.set_failing(true);
    let dev = SourceDevice(f.source(f.fetcher(None), ro()).await);
    let err = tokio::time::timeout(Duration::from_secs(30), dev.read(0, 4096))
        .await
        .expect("no hang")
        .expect_err("origin down");
    assert_eq!(err.kind(), DeviceErrorKind::Io);
    assert!(err.to_string().contains("injected"), "{err}");
    // A zero chunk needs no origin.
    assert_eq!(
        dev.read(3 * CHUNK, 4096).await.expect("zero chunk"),
        vec![0; 4096]
    );
    // The origin comes back: the same device serves again.
    f.store.set_failing(false);
    assert_eq!(dev.read(0, 4096).await.expect("read"), f.image[..4096]);
    assert!(dev.0.metrics().origin_errors.load(Ordering::Relaxed) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readahead_runs_ahead_of_sequential_reads_only() {
    let f = fixture().await;
    let on = SourceConfig {
        readahead: true,
        readahead_max_chunks: 4,
        neighbor_chunks: 0,
        ..SourceConfig::default()
    };
    // Random 4 KiB reads: no read-ahead, nothing fetched that was not read.
    let dev = SourceDevice(f.source(f.fetcher(None), on.clone()).await);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for _ in 0..6 {
        let chunk = rng.random_range(0..40u64);
        dev.read(chunk * CHUNK + 8192, 4096).await.expect("read");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dev.0.metrics().prefetched_chunks.load(Ordering::Relaxed), 0);
    // A sequential stream over 20 chunks: read-ahead fetches ahead, at most the window beyond.
    f.store.reset();
    let dev = SourceDevice(f.source(f.fetcher(None), on).await);
    for off in (0..20 * CHUNK).step_by(32 << 10) {
        dev.read(off, 32 << 10).await.expect("read");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = dev.0.metrics();
    let prefetched = m.prefetched_chunks.load(Ordering::Relaxed);
    let fetched = m.origin_chunks.load(Ordering::Relaxed);
    assert!(prefetched > 0, "sequential reads must trigger read-ahead");
    let read = dev.0.chunks_read();
    assert!(fetched <= read + 4, "fetched {fetched}, read {read}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_first_read_of_a_chunk_prefetches_its_neighbour() {
    let f = fixture().await;
    let cfg = SourceConfig {
        readahead: false,
        neighbor_chunks: 2,
        ..SourceConfig::default()
    };
    let dev = SourceDevice(f.source(f.fetcher(None), cfg).await);
    let m = Arc::clone(dev.0.metrics());
    let settle = || tokio::time::sleep(Duration::from_millis(300));
    let origin = |m: &lazyblock_agent::metrics::DeviceMetrics| {
        (
            m.origin_chunks.load(Ordering::Relaxed),
            m.prefetched_chunks.load(Ordering::Relaxed),
        )
    };
    // An isolated read prefetches nothing.
    dev.read(10 * CHUNK + 5, 100).await.expect("read");
    dev.read(10 * CHUNK + 500, 100)
        .await
        .expect("same chunk again");
    settle().await;
    assert_eq!(origin(&m), (1, 0));
    // Chunk 11 continues a run: 12 and 13 are prefetched, once.
    dev.read(11 * CHUNK, 4096).await.expect("read");
    dev.read(11 * CHUNK + 8192, 4096).await.expect("read");
    settle().await;
    assert_eq!(origin(&m), (4, 2));
    // Reading 12 hits memory and prefetches only 14 (13 is already there).
    dev.read(12 * CHUNK, 4096).await.expect("read");
    settle().await;
    assert_eq!(origin(&m), (5, 3));
    assert_eq!(
        m.hits(lazyblock_agent::metrics::Tier::Memory),
        3,
        "10 again, 11 again, 12"
    );
    // Zero chunks (3, 4) are never fetched: the run 1, 2 prefetches nothing.
    dev.read(CHUNK, 4096).await.expect("read");
    dev.read(2 * CHUNK, 4096).await.expect("read");
    settle().await;
    assert_eq!(origin(&m), (7, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recorded_profile_replays_into_the_cache() {
    let f = fixture().await;
    let rec = SourceConfig {
        readahead: false,
        neighbor_chunks: 0,
        record_profile: true,
        ..SourceConfig::default()
    };
    let dev = SourceDevice(f.source(f.fetcher(None), rec).await);
    for chunk in [5u64, 1, 30, 5, 12] {
        dev.read(chunk * CHUNK + 100, 512).await.expect("read");
    }
    let order = dev.0.finish_recording();
    assert_eq!(order.len(), 4, "first reads only, in order");
    assert_eq!(order, f.store.gets(), "the order the guest read them in");
    // Replay on a cold agent: the chunks arrive before the guest asks.
    f.store.reset();
    let dev = SourceDevice(f.source(f.fetcher(None), ro()).await);
    assert_eq!(dev.0.replay_profile(&order, 4), 4);
    for _ in 0..100 {
        if dev.0.metrics().origin_chunks.load(Ordering::Relaxed) == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for chunk in [5u64, 1, 30, 12] {
        dev.read(chunk * CHUNK, 4096).await.expect("read");
    }
    let m = dev.0.metrics();
    assert_eq!(m.prefetched_chunks.load(Ordering::Relaxed), 4);
    assert_eq!(m.hits(lazyblock_agent::metrics::Tier::Memory), 4);
    assert_eq!(f.store.gets().len(), 4);
    // A stale profile (names not in this manifest) only costs nothing.
    assert_eq!(
        dev.0
            .replay_profile(&[ChunkName::from_bytes([0xEE; 32])], 4),
        0
    );
}
