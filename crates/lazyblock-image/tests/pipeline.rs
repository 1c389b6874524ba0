//! Library-level fault tests of the image pipeline: a `ChunkStore` wrapper injects failures and
//! corruption, custom readers fail mid-stream, and concurrent builds race on the same chunks.
//!
//! The rule under test (see the crate docs): a catalog entry is written only after its manifest,
//! a manifest only after every chunk it names is stored, and a failed export leaves no file.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use lazyblock_format::{ChunkName, ChunkSize, ImageRef, ManifestId, RootId, TenantId};
use lazyblock_image::{
    build, export, inspect, verify, BuildOptions, Context, ImageErrorKind, NoProgress,
};
use lazyblock_keys::LocalKeyring;
use lazyblock_store::{
    ChunkStore, MetaKey, ObjectChunkStore, PutOutcome, StoreConfig, StoreError, StoreErrorKind,
    StoreLocation, WriteMode,
};
use rand::{RngCore, SeedableRng};

const CHUNK: usize = 64 << 10;

/// A `ChunkStore` that delegates to a local `ObjectChunkStore` and injects faults on demand.
#[derive(Debug)]
struct FaultyStore {
    inner: ObjectChunkStore,
    /// 1-based number of the `put_chunk` call that fails (0: none).
    fail_put_chunk_at: AtomicUsize,
    put_chunk_calls: AtomicUsize,
    fail_put_manifest: AtomicBool,
    put_manifest_calls: AtomicUsize,
    put_catalog_calls: AtomicUsize,
    /// `get_chunk` of this chunk returns its bytes with one byte flipped.
    corrupt_on_get: Mutex<Option<ChunkName>>,
    /// The order of the writes and barriers: "chunk", "sync", "manifest", "catalog".
    events: Mutex<Vec<&'static str>>,
}

impl FaultyStore {
    fn event(&self, what: &'static str) {
        self.events.lock().expect("lock").push(what);
    }
}

fn injected(what: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::Unavailable,
        format!("injected fault: {what}"),
    )
}

impl FaultyStore {
    fn new(dir: &Path) -> Arc<Self> {
        let config = StoreConfig::new(StoreLocation::Local(dir.to_path_buf()));
        Arc::new(Self {
            inner: ObjectChunkStore::open(&config).expect("open local store"),
            fail_put_chunk_at: AtomicUsize::new(0),
            put_chunk_calls: AtomicUsize::new(0),
            fail_put_manifest: AtomicBool::new(false),
            put_manifest_calls: AtomicUsize::new(0),
            put_catalog_calls: AtomicUsize::new(0),
            corrupt_on_get: Mutex::new(None),
            events: Mutex::new(Vec::new()),
        })
    }
}

#[async_trait]
impl ChunkStore for FaultyStore {
    fn url(&self) -> &str {
        self.inner.url()
    }
    async fn check(&self) -> lazyblock_store::Result<()> {
        self.inner.check().await
    }
    async fn sync(&self) -> lazyblock_store::Result<()> {
        self.inner.sync().await?;
        self.event("sync");
        Ok(())
    }
    async fn put_chunk(
        &self,
        root: &RootId,
        name: &ChunkName,
        data: Bytes,
    ) -> lazyblock_store::Result<PutOutcome> {
        let n = self.put_chunk_calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.fail_put_chunk_at.load(Ordering::SeqCst) {
            return Err(injected(&format!("put_chunk #{n}")));
        }
        let outcome = self.inner.put_chunk(root, name, data).await?;
        self.event("chunk");
        Ok(outcome)
    }
    async fn get_chunk(&self, root: &RootId, name: &ChunkName) -> lazyblock_store::Result<Bytes> {
        let data = self.inner.get_chunk(root, name).await?;
        let corrupt = *self.corrupt_on_get.lock().expect("lock") == Some(*name);
        if corrupt {
            let mut v = data.to_vec();
            let at = v.len() / 2;
            v[at] ^= 0x01;
            return Ok(Bytes::from(v));
        }
        Ok(data)
    }
    async fn has_chunk(&self, root: &RootId, name: &ChunkName) -> lazyblock_store::Result<bool> {
        self.inner.has_chunk(root, name).await
    }
    async fn delete_chunk(&self, root: &RootId, name: &ChunkName) -> lazyblock_store::Result<()> {
        self.inner.delete_chunk(root, name).await
    }
    fn list_chunks(
        &self,
        root: &RootId,
    ) -> BoxStream<'_, lazyblock_store::Result<(ChunkName, u64)>> {
        self.inner.list_chunks(root)
    }
    async fn put_manifest(
        &self,
        root: &RootId,
        id: &ManifestId,
        data: Bytes,
    ) -> lazyblock_store::Result<PutOutcome> {
        self.put_manifest_calls.fetch_add(1, Ordering::SeqCst);
        if self.fail_put_manifest.load(Ordering::SeqCst) {
            return Err(injected(&format!("put_manifest {id}")));
        }
        let outcome = self.inner.put_manifest(root, id, data).await?;
        self.event("manifest");
        Ok(outcome)
    }
    async fn get_manifest(&self, root: &RootId, id: &ManifestId) -> lazyblock_store::Result<Bytes> {
        self.inner.get_manifest(root, id).await
    }

    async fn put_profile(
        &self,
        root: &RootId,
        id: &ManifestId,
        data: Bytes,
    ) -> lazyblock_store::Result<()> {
        self.inner.put_profile(root, id, data).await
    }

    async fn get_profile(&self, root: &RootId, id: &ManifestId) -> lazyblock_store::Result<Bytes> {
        self.inner.get_profile(root, id).await
    }
    async fn put_catalog(
        &self,
        tenant: &TenantId,
        image: &ImageRef,
        entry: Bytes,
    ) -> lazyblock_store::Result<()> {
        self.put_catalog_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.put_catalog(tenant, image, entry).await?;
        self.event("catalog");
        Ok(())
    }
    async fn get_catalog(
        &self,
        tenant: &TenantId,
        image: &ImageRef,
    ) -> lazyblock_store::Result<Bytes> {
        self.inner.get_catalog(tenant, image).await
    }
    async fn delete_catalog(
        &self,
        tenant: &TenantId,
        image: &ImageRef,
    ) -> lazyblock_store::Result<()> {
        self.inner.delete_catalog(tenant, image).await
    }
    async fn list_catalog(&self, tenant: &TenantId) -> lazyblock_store::Result<Vec<ImageRef>> {
        self.inner.list_catalog(tenant).await
    }
    async fn list_manifests(
        &self,
        root: &RootId,
    ) -> lazyblock_store::Result<Vec<(ManifestId, u64)>> {
        self.inner.list_manifests(root).await
    }
    async fn delete_manifest(&self, root: &RootId, id: &ManifestId) -> lazyblock_store::Result<()> {
        self.inner.delete_manifest(root, id).await
    }
    async fn list_tenants(&self) -> lazyblock_store::Result<Vec<TenantId>> {
        self.inner.list_tenants().await
    }
    async fn list_roots(&self) -> lazyblock_store::Result<Vec<RootId>> {
        self.inner.list_roots().await
    }
    async fn put_meta(
        &self,
        key: &MetaKey,
        data: Bytes,
        mode: WriteMode,
    ) -> lazyblock_store::Result<PutOutcome> {
        self.inner.put_meta(key, data, mode).await
    }
    async fn get_meta(&self, key: &MetaKey) -> lazyblock_store::Result<Bytes> {
        self.inner.get_meta(key).await
    }
    async fn delete_meta(&self, key: &MetaKey) -> lazyblock_store::Result<()> {
        self.inner.delete_meta(key).await
    }
    async fn list_halts(&self) -> lazyblock_store::Result<Vec<RootId>> {
        self.inner.list_halts().await
    }
}

/// A temporary directory with a faulty store and a keyring.
struct Fixture {
    tmp: tempfile::TempDir,
    store: Arc<FaultyStore>,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = FaultyStore::new(&tmp.path().join("store"));
        Self { tmp, store }
    }

    fn ctx(&self, tenant: &str) -> Context {
        let seed = tenant
            .bytes()
            .fold(7u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
        Context {
            store: self.store.clone(),
            keys: Arc::new(LocalKeyring::with_random(
                self.tmp.path().join("keys"),
                Box::new(move |b: &mut [u8]| b.fill(seed)),
            )),
            tenant: TenantId::new(tenant).expect("tenant"),
            root: RootId::initial(),
        }
    }

    fn manifests(&self) -> Vec<PathBuf> {
        files_in(&self.tmp.path().join("store/roots/r0/manifests"))
    }

    fn chunk_count(&self) -> usize {
        files_in(&self.tmp.path().join("store/roots/r0/chunks")).len()
    }

    fn out_dir(&self) -> PathBuf {
        let d = self.tmp.path().join("out");
        std::fs::create_dir_all(&d).expect("mkdir out");
        d
    }

    /// Asserts that nothing was published: no manifest, no catalog entry of `tenant`.
    async fn assert_nothing_published(&self, ctx: &Context) {
        assert_eq!(self.manifests(), Vec::<PathBuf>::new(), "a manifest exists");
        assert_eq!(
            self.store
                .list_catalog(&ctx.tenant)
                .await
                .expect("list catalog"),
            Vec::<ImageRef>::new(),
            "a catalog entry exists"
        );
        assert_eq!(
            files_in_recursive(&self.tmp.path().join("store/catalog")),
            Vec::<PathBuf>::new()
        );
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd.map(|e| e.expect("entry").path()).collect();
    v.sort();
    v
}

fn files_in_recursive(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in files_in(dir) {
        if p.is_dir() {
            out.extend(files_in_recursive(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn options(image: &str) -> BuildOptions {
    let mut o = BuildOptions::new(
        ImageRef::parse(image).expect("image ref"),
        "test:source".into(),
        1_700_000_000,
    );
    o.chunk_size = ChunkSize::new(CHUNK as u64).expect("chunk size");
    o.upload_concurrency = 4;
    o
}

fn manifest_random(buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = i as u8;
    }
}

async fn build_bytes(
    ctx: &Context,
    data: Vec<u8>,
    image: &str,
) -> lazyblock_image::Result<lazyblock_image::BuildReport> {
    let size = data.len() as u64;
    build(
        ctx,
        Box::new(std::io::Cursor::new(data)),
        size,
        &options(image),
        Arc::new(NoProgress),
        &manifest_random,
    )
    .await
}

/// A reader that yields `ok_bytes` bytes of `data` and then fails.
struct FailingReader {
    data: std::io::Cursor<Vec<u8>>,
    ok_bytes: u64,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let pos = self.data.position();
        if pos >= self.ok_bytes {
            return Err(std::io::Error::other("disk on fire"));
        }
        let n = buf.len().min((self.ok_bytes - pos) as usize);
        self.data.read(&mut buf[..n])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrapper_passes_the_store_conformance_suite() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = FaultyStore::new(tmp.path());
    lazyblock_store::testing::conformance(store.as_ref(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_put_chunk_publishes_nothing() {
    let f = Fixture::new();
    let ctx = f.ctx("a");
    let data = random_bytes(1, 8 * CHUNK + 100);
    f.store.fail_put_chunk_at.store(3, Ordering::SeqCst);
    let err = build_bytes(&ctx, data.clone(), "x:v1")
        .await
        .expect_err("the third chunk upload fails");
    assert!(err.to_string().contains("put_chunk #3"), "{err}");
    assert_eq!(f.store.put_manifest_calls.load(Ordering::SeqCst), 0);
    assert_eq!(f.store.put_catalog_calls.load(Ordering::SeqCst), 0);
    f.assert_nothing_published(&ctx).await;

    // The same build succeeds once the store behaves.
    f.store.fail_put_chunk_at.store(0, Ordering::SeqCst);
    let report = build_bytes(&ctx, data, "x:v1").await.expect("build");
    assert_eq!(report.chunks_total, 9);
    assert_eq!(report.chunks_new + report.chunks_dedup, 9);
    assert_eq!(f.chunk_count(), 9);
    assert_eq!(f.manifests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_put_manifest_publishes_nothing() {
    let f = Fixture::new();
    let ctx = f.ctx("a");
    f.store.fail_put_manifest.store(true, Ordering::SeqCst);
    let err = build_bytes(&ctx, random_bytes(2, 3 * CHUNK), "x:v1")
        .await
        .expect_err("the manifest upload fails");
    assert!(err.to_string().contains("put_manifest"), "{err}");
    assert_eq!(f.store.put_manifest_calls.load(Ordering::SeqCst), 1);
    assert_eq!(f.store.put_catalog_calls.load(Ordering::SeqCst), 0);
    f.assert_nothing_published(&ctx).await;
}

/// The publish order with its durability barriers: every chunk, a sync, the manifest, a sync,
/// the catalog entry, a sync; only then does the build report success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_order_has_a_barrier_before_each_step() {
    let f = Fixture::new();
    let ctx = f.ctx("a");
    build_bytes(&ctx, random_bytes(9, 4 * CHUNK), "x:v1")
        .await
        .expect("build");
    let events = f.store.events.lock().expect("lock").clone();
    // Early background syncs may interleave with the chunk puts; the tail is fixed.
    let tail: Vec<&str> = events
        .iter()
        .skip_while(|e| **e != "manifest")
        .copied()
        .collect();
    assert_eq!(tail, ["manifest", "sync", "catalog", "sync"], "{events:?}");
    let before_manifest = &events[..events.len() - tail.len()];
    assert_eq!(before_manifest.iter().filter(|e| **e == "chunk").count(), 4);
    assert_eq!(before_manifest.last(), Some(&"sync"), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_chunk_from_store_fails_export_and_verify() {
    let f = Fixture::new();
    let ctx = f.ctx("a");
    let mut data = random_bytes(3, 5 * CHUNK);
    // Chunk 3 repeats chunk 0: the bad chunk is reported at both indexes.
    let (head, tail) = data.split_at_mut(3 * CHUNK);
    tail[..CHUNK].copy_from_slice(&head[..CHUNK]);
    build_bytes(&ctx, data, "x:v1").await.expect("build");
    let image = ImageRef::parse("x:v1").expect("ref");
    let opened = lazyblock_image::open_image(&ctx, &image)
        .await
        .expect("open");
    let victim = opened.manifest.chunk(0).expect("chunk 0 is data");
    assert_eq!(opened.manifest.chunk(3), Some(victim));
    *f.store.corrupt_on_get.lock().expect("lock") = Some(victim);

    let out_dir = f.out_dir();
    let out = out_dir.join("x.img");
    let err = export(&ctx, &image, &out, 4, Arc::new(NoProgress))
        .await
        .expect_err("corrupt chunk");
    assert_eq!(err.kind(), ImageErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains(&victim.to_hex()), "{err}");
    assert!(!out.exists());
    assert_eq!(
        files_in(&out_dir),
        Vec::<PathBuf>::new(),
        "temporary file left"
    );

    let report = verify(&ctx, &image, 4, Arc::new(NoProgress))
        .await
        .expect("verify reports, it does not fail");
    assert_eq!(report.chunks_checked, 4);
    assert_eq!(report.bad.len(), 1, "{:?}", report.bad);
    assert_eq!(report.bad[0].name, victim);
    assert_eq!(report.bad[0].indexes, vec![0, 3]);
    assert!(report.bad[0].reason.contains("corrupt"), "{:?}", report.bad);

    // Once the store serves good bytes again, both succeed.
    *f.store.corrupt_on_get.lock().expect("lock") = None;
    export(&ctx, &image, &out, 4, Arc::new(NoProgress))
        .await
        .expect("export");
    assert!(verify(&ctx, &image, 4, Arc::new(NoProgress))
        .await
        .expect("verify")
        .bad
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_error_mid_stream_publishes_nothing() {
    let f = Fixture::new();
    let ctx = f.ctx("a");
    let data = random_bytes(4, 6 * CHUNK);
    let size = data.len() as u64;
    let reader = FailingReader {
        data: std::io::Cursor::new(data),
        ok_bytes: (2 * CHUNK + 1000) as u64,
    };
    let err = build(
        &ctx,
        Box::new(reader),
        size,
        &options("x:v1"),
        Arc::new(NoProgress),
        &manifest_random,
    )
    .await
    .expect_err("the reader fails");
    assert_eq!(err.kind(), ImageErrorKind::Io, "{err}");
    let msg = err.to_string();
    assert!(msg.contains("test:source"), "{msg}");
    assert!(msg.contains("disk on fire"), "{msg}");
    assert_eq!(f.store.put_catalog_calls.load(Ordering::SeqCst), 0);
    f.assert_nothing_published(&ctx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_shorter_than_declared_size_fails() {
    let f = Fixture::new();
    let ctx = f.ctx("a");
    let data = random_bytes(5, 3 * CHUNK + 500);
    let err = build(
        &ctx,
        Box::new(std::io::Cursor::new(data)),
        (4 * CHUNK) as u64,
        &options("x:v1"),
        Arc::new(NoProgress),
        &manifest_random,
    )
    .await
    .expect_err("the source is short");
    assert!(err.to_string().contains("test:source"), "{err}");
    f.assert_nothing_published(&ctx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_builds_by_two_tenants() {
    let f = Fixture::new();
    let data = random_bytes(6, 24 * CHUNK + 4321);
    let (ca, cb) = (f.ctx("a"), f.ctx("b"));
    let spawn = |ctx: Context, data: Vec<u8>| {
        tokio::spawn(async move { build_bytes(&ctx, data, "x:v1").await })
    };
    let (ra, rb) = tokio::join!(
        spawn(ca.clone(), data.clone()),
        spawn(cb.clone(), data.clone())
    );
    let ra = ra.expect("join").expect("build a");
    let rb = rb.expect("join").expect("build b");
    assert_ne!(ra.manifest, rb.manifest);
    // The local store enforces create-if-absent: every chunk is stored exactly once.
    assert_eq!(ra.chunks_new + rb.chunks_new, 25, "{ra:?} {rb:?}");
    assert_eq!(f.chunk_count(), 25);
    let image = ImageRef::parse("x:v1").expect("ref");
    let out_dir = f.out_dir();
    for (t, ctx) in [("a", &ca), ("b", &cb)] {
        let info = inspect(ctx, &image).await.expect("inspect");
        assert_eq!(info.header.tenant.as_str(), t);
        let out = out_dir.join(format!("{t}.img"));
        export(ctx, &image, &out, 8, Arc::new(NoProgress))
            .await
            .expect("export");
        assert!(std::fs::read(&out).expect("read") == data, "tenant {t}");
        assert!(verify(ctx, &image, 8, Arc::new(NoProgress))
            .await
            .expect("verify")
            .bad
            .is_empty());
    }
}
