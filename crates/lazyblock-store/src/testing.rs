//! Test support shared by this crate's tests and the crates above it: the [`ChunkStore`]
//! conformance suite, a wrapper that behaves like an S3 server which ignores `If-None-Match`,
//! [`CountingStore`] (records chunk GETs, fails them on demand, crashes after n writes),
//! and the settings of the S3-compatible test server.
//!
//! Not for production use.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, TryStreamExt};
use lazyblock_format::{ChunkName, ImageRef, ManifestId, RootId, TenantId};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use crate::hooked::{Access, HookedStore, StoreHook};
use crate::{
    ChunkStore, MetaKey, PutOutcome, StoreConfig, StoreErrorKind, StoreLocation, WriteMode,
};

/// An `object_store` wrapper that turns every conditional create into a blind overwrite, as
/// S3-compatible servers that ignore `If-None-Match: *` do (Garage, for one).
#[derive(Debug)]
pub struct IgnoresConditionalPut(pub Arc<dyn ObjectStore>);

impl std::fmt::Display for IgnoresConditionalPut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IgnoresConditionalPut({})", self.0)
    }
}

#[async_trait]
impl ObjectStore for IgnoresConditionalPut {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if matches!(opts.mode, PutMode::Create) {
            opts.mode = PutMode::Overwrite;
        }
        self.0.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.0.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.0.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.0.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.0.copy_opts(from, to, options).await
    }
}

/// The S3-compatible test server, from the environment that `scripts/test.sh` sets:
/// `LAZYBLOCK_TEST_S3_URL` (`s3://bucket/prefix`) and the usual `AWS_*` variables.
///
/// Returns `None` only when `LAZYBLOCK_SKIP_S3_TESTS=1`; otherwise a missing server is a test
/// failure, so a suite that silently skipped S3 cannot pass.
pub fn s3_test_config(unique: &str) -> Option<StoreConfig> {
    if std::env::var("LAZYBLOCK_SKIP_S3_TESTS").as_deref() == Ok("1") {
        return None;
    }
    let url = std::env::var("LAZYBLOCK_TEST_S3_URL").unwrap_or_else(|_| {
        panic!(
            "LAZYBLOCK_TEST_S3_URL is not set: run the suite with scripts/test.sh, which starts an \
             S3-compatible server, or set LAZYBLOCK_SKIP_S3_TESTS=1 to skip S3 tests"
        )
    });
    let mut location = StoreLocation::parse(&url).expect("LAZYBLOCK_TEST_S3_URL must parse");
    if let StoreLocation::S3 { prefix, .. } = &mut location {
        *prefix = if prefix.is_empty() {
            unique.to_owned()
        } else {
            format!("{prefix}/{unique}")
        };
    }
    let mut config = StoreConfig::new(location);
    config.s3_options = crate::s3_options_from_vars(std::env::vars());
    Some(config)
}

/// A name unique to this process and call, for test prefixes.
pub fn unique_name(tag: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{tag}-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn name_of(data: &[u8]) -> ChunkName {
    lazyblock_format::chunk_name_of(data)
}

/// The conformance suite every [`ChunkStore`] must pass. `strict_create` says whether the backend
/// enforces conditional creates (then concurrent puts of one chunk store it exactly once).
pub async fn conformance(store: &dyn ChunkStore, strict_create: bool) {
    let root = RootId::new("conformance").expect("valid");
    let other_root = RootId::new("conformance-2").expect("valid");
    store.check().await.expect("check");

    // Chunks: put-if-absent, get, has, list, delete.
    let a = Bytes::from(vec![1u8; 4096]);
    let b = Bytes::from(
        (0..(4u32 << 20))
            .map(|i| (i % 253) as u8)
            .collect::<Vec<u8>>(),
    );
    let (na, nb) = (name_of(&a), name_of(&b));
    assert_eq!(
        store.put_chunk(&root, &na, a.clone()).await.expect("put"),
        PutOutcome::Stored
    );
    assert_eq!(
        store
            .put_chunk(&root, &na, a.clone())
            .await
            .expect("put again"),
        PutOutcome::AlreadyPresent
    );
    assert_eq!(
        store
            .put_chunk(&root, &nb, b.clone())
            .await
            .expect("put 4 MiB"),
        PutOutcome::Stored
    );
    assert_eq!(store.get_chunk(&root, &na).await.expect("get"), a);
    assert_eq!(store.get_chunk(&root, &nb).await.expect("get 4 MiB"), b);
    store.sync().await.expect("sync");
    assert!(store.has_chunk(&root, &na).await.expect("has"));
    let missing = ChunkName::from_bytes([0x5a; 32]);
    assert!(!store.has_chunk(&root, &missing).await.expect("has missing"));
    let err = store.get_chunk(&root, &missing).await.expect_err("missing");
    assert_eq!(err.kind(), StoreErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains(&missing.to_hex()), "{err}");
    // Roots are separate namespaces.
    assert!(!store
        .has_chunk(&other_root, &na)
        .await
        .expect("has other root"));
    let mut listed: Vec<(ChunkName, u64)> =
        store.list_chunks(&root).try_collect().await.expect("list");
    listed.sort();
    let mut expected = vec![(na, a.len() as u64), (nb, b.len() as u64)];
    expected.sort();
    assert_eq!(listed, expected, "names with sizes");
    store.delete_chunk(&root, &na).await.expect("delete");
    store
        .delete_chunk(&root, &na)
        .await
        .expect("delete missing is fine");
    assert!(!store.has_chunk(&root, &na).await.expect("has deleted"));

    // Concurrent puts of one new chunk all succeed; with enforced creates exactly one stores it.
    let c = Bytes::from(vec![3u8; 65536]);
    let nc = name_of(&c);
    let outcomes =
        futures::future::join_all((0..8).map(|_| store.put_chunk(&root, &nc, c.clone()))).await;
    let stored = outcomes
        .into_iter()
        .map(|o| o.expect("concurrent put"))
        .filter(|o| *o == PutOutcome::Stored)
        .count();
    assert!(stored >= 1);
    if strict_create {
        assert_eq!(
            stored, 1,
            "conditional create must let exactly one writer store"
        );
    }
    assert_eq!(store.get_chunk(&root, &nc).await.expect("get"), c);

    // An object larger than any valid chunk is refused (before its body is read).
    let huge = ChunkName::from_bytes([0x77; 32]);
    let largest = 1usize << lazyblock_format::ChunkSize::MAX_LOG2;
    store
        .put_chunk(&root, &huge, Bytes::from(vec![1u8; largest + 1]))
        .await
        .expect("put oversized");
    let err = store
        .get_chunk(&root, &huge)
        .await
        .expect_err("oversized chunk");
    assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("more than"), "{err}");
    store.delete_chunk(&root, &huge).await.expect("delete");

    // Manifests.
    let id = ManifestId::from_bytes([0x42; 32]);
    let m = Bytes::from_static(b"manifest bytes");
    assert_eq!(
        store
            .put_manifest(&root, &id, m.clone())
            .await
            .expect("put m"),
        PutOutcome::Stored
    );
    assert_eq!(
        store
            .put_manifest(&root, &id, m.clone())
            .await
            .expect("put m again"),
        PutOutcome::AlreadyPresent
    );
    assert_eq!(store.get_manifest(&root, &id).await.expect("get m"), m);
    let err = store
        .get_manifest(&root, &ManifestId::from_bytes([1; 32]))
        .await
        .expect_err("missing manifest");
    assert_eq!(err.kind(), StoreErrorKind::NotFound);

    // Profiles: absent, stored, replaced.
    let err = store
        .get_profile(&root, &id)
        .await
        .expect_err("no profile yet");
    assert_eq!(err.kind(), StoreErrorKind::NotFound);
    for body in [&b"profile one"[..], &b"profile two, longer"[..]] {
        store
            .put_profile(&root, &id, Bytes::copy_from_slice(body))
            .await
            .expect("put profile");
        assert_eq!(
            store.get_profile(&root, &id).await.expect("get profile"),
            body
        );
    }

    // Listing and deleting manifests (the profile goes with its manifest).
    assert_eq!(
        store.list_manifests(&root).await.expect("list m"),
        vec![(id, m.len() as u64)]
    );
    assert!(store
        .list_manifests(&other_root)
        .await
        .expect("list other")
        .is_empty());
    store.delete_manifest(&root, &id).await.expect("delete m");
    store
        .delete_manifest(&root, &id)
        .await
        .expect("delete missing m is fine");
    assert!(store.list_manifests(&root).await.expect("list").is_empty());
    for e in [
        store.get_manifest(&root, &id).await.expect_err("m gone"),
        store
            .get_profile(&root, &id)
            .await
            .expect_err("profile gone"),
    ] {
        assert_eq!(e.kind(), StoreErrorKind::NotFound, "{e}");
    }

    // GC records: roots are listed once they hold anything; create-only and overwrite puts.
    let roots = store.list_roots().await.expect("roots");
    assert!(roots.contains(&root), "{roots:?}");
    assert!(!roots.contains(&other_root), "{roots:?}");
    let state = MetaKey::RootState(other_root.clone());
    let err = store.get_meta(&state).await.expect_err("no state");
    assert_eq!(err.kind(), StoreErrorKind::NotFound);
    for (body, mode, outcome) in [
        (&b"one"[..], WriteMode::Create, PutOutcome::Stored),
        (&b"two"[..], WriteMode::Create, PutOutcome::AlreadyPresent),
        (&b"three"[..], WriteMode::Overwrite, PutOutcome::Stored),
    ] {
        assert_eq!(
            store
                .put_meta(&state, Bytes::copy_from_slice(body), mode)
                .await
                .expect("put meta"),
            outcome
        );
    }
    assert_eq!(
        store.get_meta(&state).await.expect("get meta"),
        &b"three"[..]
    );
    assert!(store
        .list_roots()
        .await
        .expect("roots")
        .contains(&other_root));
    assert!(store.list_halts().await.expect("halts").is_empty());
    let halt = MetaKey::Halt(other_root.clone());
    store
        .put_meta(&halt, Bytes::from_static(b"h"), WriteMode::Overwrite)
        .await
        .expect("halt");
    assert_eq!(
        store.list_halts().await.expect("halts"),
        vec![other_root.clone()]
    );
    store.delete_meta(&halt).await.expect("ack");
    store.delete_meta(&halt).await.expect("ack again is fine");
    assert!(store.list_halts().await.expect("halts").is_empty());
    store.delete_meta(&state).await.expect("delete state");

    // Catalog: publish, overwrite, list (sorted, per tenant), delete.
    let t1 = TenantId::new("tenant-one").expect("valid");
    let t2 = TenantId::new("tenant-two").expect("valid");
    let img = |s: &str| ImageRef::parse(s).expect("valid");
    assert!(store
        .list_catalog(&t1)
        .await
        .expect("empty list")
        .is_empty());
    store
        .put_catalog(&t1, &img("web/app:v2"), Bytes::from_static(b"1"))
        .await
        .expect("pub");
    store
        .put_catalog(&t1, &img("base:latest"), Bytes::from_static(b"2"))
        .await
        .expect("pub");
    store
        .put_catalog(&t2, &img("other:v1"), Bytes::from_static(b"3"))
        .await
        .expect("pub");
    store
        .put_catalog(&t1, &img("web/app:v2"), Bytes::from_static(b"4"))
        .await
        .expect("repub");
    assert_eq!(
        store.list_catalog(&t1).await.expect("list"),
        vec![img("base:latest"), img("web/app:v2")]
    );
    assert_eq!(
        store.list_catalog(&t2).await.expect("list"),
        vec![img("other:v1")]
    );
    assert_eq!(
        store
            .get_catalog(&t1, &img("web/app:v2"))
            .await
            .expect("get"),
        Bytes::from_static(b"4")
    );
    let err = store
        .get_catalog(&t2, &img("web/app:v2"))
        .await
        .expect_err("other tenant");
    assert_eq!(err.kind(), StoreErrorKind::NotFound);
    store
        .delete_catalog(&t1, &img("base:latest"))
        .await
        .expect("unpublish");
    let err = store
        .delete_catalog(&t1, &img("base:latest"))
        .await
        .expect_err("gone");
    assert_eq!(err.kind(), StoreErrorKind::NotFound);
    assert_eq!(
        store.list_catalog(&t1).await.expect("list"),
        vec![img("web/app:v2")]
    );
    assert_eq!(store.list_tenants().await.expect("tenants"), vec![t1, t2]);
}

/// The hook of [`CountingStore`]: records every chunk GET (the names, in order) and can fail
/// them all on demand, like an origin that went away; counts every write (put or delete) and can
/// fail every write after the n-th, like a writer that crashed there.
#[derive(Debug)]
pub struct Counter {
    gets: std::sync::Mutex<Vec<ChunkName>>,
    failing: std::sync::atomic::AtomicBool,
    writes: std::sync::atomic::AtomicU64,
    /// Writes allowed before every further one fails (`u64::MAX`: no limit).
    crash_after: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl StoreHook for Counter {
    async fn before(&self, access: Access<'_>) -> crate::Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        match access {
            Access::Chunk(_, name) => {
                if self.failing.load(SeqCst) {
                    return Err(crate::StoreError::new(
                        StoreErrorKind::Unavailable,
                        "injected: origin unreachable",
                    ));
                }
                self.gets
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(*name);
            }
            Access::Write => {
                let n = self.writes.fetch_add(1, SeqCst);
                if n >= self.crash_after.load(SeqCst) {
                    return Err(crate::StoreError::new(
                        StoreErrorKind::Unavailable,
                        format!("injected crash before write {}", n + 1),
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// A [`ChunkStore`] wrapper for tests of what reads and writes the origin (see [`Counter`]).
pub type CountingStore = HookedStore<Counter>;

impl HookedStore<Counter> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ChunkStore>) -> Self {
        Self::with_hook(
            inner,
            Counter {
                gets: std::sync::Mutex::new(Vec::new()),
                failing: std::sync::atomic::AtomicBool::new(false),
                writes: std::sync::atomic::AtomicU64::new(0),
                crash_after: std::sync::atomic::AtomicU64::new(u64::MAX),
            },
        )
    }

    /// The names of the chunk GETs that reached the inner store, in order.
    pub fn gets(&self) -> Vec<ChunkName> {
        self.hook()
            .gets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many GETs of `name` reached the inner store.
    pub fn gets_of(&self, name: &ChunkName) -> usize {
        self.gets().iter().filter(|n| *n == name).count()
    }

    /// Forgets the GETs recorded so far.
    pub fn reset(&self) {
        self.hook()
            .gets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// While `true`, every chunk GET fails with a retryable "unreachable" error (not recorded).
    pub fn set_failing(&self, failing: bool) {
        self.hook()
            .failing
            .store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    /// Lets `allowed` more writes through, then fails every further write with a retryable
    /// "injected crash" error; `None` lifts the limit. Resets the write count.
    pub fn crash_after_writes(&self, allowed: Option<u64>) {
        use std::sync::atomic::Ordering::SeqCst;
        self.hook().writes.store(0, SeqCst);
        self.hook()
            .crash_after
            .store(allowed.unwrap_or(u64::MAX), SeqCst);
    }

    /// Writes attempted since the last [`Self::crash_after_writes`] (refused ones included).
    pub fn writes(&self) -> u64 {
        self.hook().writes.load(std::sync::atomic::Ordering::SeqCst)
    }
}
