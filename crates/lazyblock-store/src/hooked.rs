//! [`HookedStore`]: a [`ChunkStore`] that forwards every call to another store, after asking a
//! [`StoreHook`] about each object read and each write. One forwarding implementation serves
//! every wrapper that only needs to look at (or delay, or refuse) calls: the simulated remote
//! origin ([`DelayedStore`](crate::DelayedStore)), the test origin that counts and crashes
//! ([`CountingStore`](crate::testing::CountingStore)), and the GC expiry alarm.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use lazyblock_format::{ChunkName, ImageRef, ManifestId, RootId, TenantId};

use crate::{ChunkStore, MetaKey, PutOutcome, Result, WriteMode};

/// A call a [`HookedStore`] is about to forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access<'a> {
    /// `get_chunk`.
    Chunk(&'a RootId, &'a ChunkName),
    /// `get_manifest`.
    Manifest(&'a RootId, &'a ManifestId),
    /// `get_profile`.
    Profile(&'a RootId, &'a ManifestId),
    /// `get_catalog`.
    Catalog(&'a TenantId, &'a ImageRef),
    /// Any put or delete.
    Write,
}

/// Asked before each object read and each write a [`HookedStore`] forwards (not before
/// listings, `has_chunk`, GC record reads, `check` or `sync`).
#[async_trait]
pub trait StoreHook: Send + Sync + std::fmt::Debug {
    /// An error is returned instead of forwarding the call.
    async fn before(&self, access: Access<'_>) -> Result<()>;

    /// Whether the hook may run alongside the read it is about (a read then takes the longer
    /// of the two, not their sum), because it never changes what the read returns. Writes are
    /// always asked first.
    fn alongside_reads(&self) -> bool {
        false
    }
}

/// A store wrapped with a [`StoreHook`].
#[derive(Debug)]
pub struct HookedStore<H> {
    inner: Arc<dyn ChunkStore>,
    hook: H,
}

impl<H: StoreHook> HookedStore<H> {
    /// Wraps `inner`.
    pub fn with_hook(inner: Arc<dyn ChunkStore>, hook: H) -> Self {
        Self { inner, hook }
    }

    /// The hook.
    pub fn hook(&self) -> &H {
        &self.hook
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn ChunkStore> {
        &self.inner
    }

    /// Asks the hook about a read, then (or meanwhile, see [`StoreHook::alongside_reads`]) reads.
    async fn read<T>(
        &self,
        access: Access<'_>,
        get: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        if self.hook.alongside_reads() {
            let (asked, got) = futures::join!(self.hook.before(access), get);
            asked?;
            got
        } else {
            self.hook.before(access).await?;
            get.await
        }
    }
}

#[async_trait]
impl<H: StoreHook> ChunkStore for HookedStore<H> {
    fn url(&self) -> &str {
        self.inner.url()
    }
    async fn check(&self) -> Result<()> {
        self.inner.check().await
    }
    async fn sync(&self) -> Result<()> {
        self.inner.sync().await
    }
    async fn put_chunk(&self, root: &RootId, name: &ChunkName, data: Bytes) -> Result<PutOutcome> {
        self.hook.before(Access::Write).await?;
        self.inner.put_chunk(root, name, data).await
    }
    async fn get_chunk(&self, root: &RootId, name: &ChunkName) -> Result<Bytes> {
        self.read(Access::Chunk(root, name), self.inner.get_chunk(root, name))
            .await
    }
    async fn has_chunk(&self, root: &RootId, name: &ChunkName) -> Result<bool> {
        self.inner.has_chunk(root, name).await
    }
    async fn delete_chunk(&self, root: &RootId, name: &ChunkName) -> Result<()> {
        self.hook.before(Access::Write).await?;
        self.inner.delete_chunk(root, name).await
    }
    fn list_chunks(&self, root: &RootId) -> BoxStream<'_, Result<(ChunkName, u64)>> {
        self.inner.list_chunks(root)
    }
    async fn put_manifest(
        &self,
        root: &RootId,
        id: &ManifestId,
        data: Bytes,
    ) -> Result<PutOutcome> {
        self.hook.before(Access::Write).await?;
        self.inner.put_manifest(root, id, data).await
    }
    async fn get_manifest(&self, root: &RootId, id: &ManifestId) -> Result<Bytes> {
        self.read(
            Access::Manifest(root, id),
            self.inner.get_manifest(root, id),
        )
        .await
    }
    async fn list_manifests(&self, root: &RootId) -> Result<Vec<(ManifestId, u64)>> {
        self.inner.list_manifests(root).await
    }
    async fn delete_manifest(&self, root: &RootId, id: &ManifestId) -> Result<()> {
        self.hook.before(Access::Write).await?;
        self.inner.delete_manifest(root, id).await
    }
    async fn put_profile(&self, root: &RootId, id: &ManifestId, data: Bytes) -> Result<()> {
        self.hook.before(Access::Write).await?;
        self.inner.put_profile(root, id, data).await
    }
    async fn get_profile(&self, root: &RootId, id: &ManifestId) -> Result<Bytes> {
        self.read(Access::Profile(root, id), self.inner.get_profile(root, id))
            .await
    }
    async fn put_catalog(&self, tenant: &TenantId, image: &ImageRef, entry: Bytes) -> Result<()> {
        self.hook.before(Access::Write).await?;
        self.inner.put_catalog(tenant, image, entry).await
    }
    async fn get_catalog(&self, tenant: &TenantId, image: &ImageRef) -> Result<Bytes> {
        self.read(
            Access::Catalog(tenant, image),
            self.inner.get_catalog(tenant, image),
        )
        .await
    }
    async fn delete_catalog(&self, tenant: &TenantId, image: &ImageRef) -> Result<()> {
        self.hook.before(Access::Write).await?;
        self.inner.delete_catalog(tenant, image).await
    }
    async fn list_catalog(&self, tenant: &TenantId) -> Result<Vec<ImageRef>> {
        self.inner.list_catalog(tenant).await
    }
    async fn list_tenants(&self) -> Result<Vec<TenantId>> {
        self.inner.list_tenants().await
    }
    async fn list_roots(&self) -> Result<Vec<RootId>> {
        self.inner.list_roots().await
    }
    async fn put_meta(&self, key: &MetaKey, data: Bytes, mode: WriteMode) -> Result<PutOutcome> {
        self.hook.before(Access::Write).await?;
        self.inner.put_meta(key, data, mode).await
    }
    async fn get_meta(&self, key: &MetaKey) -> Result<Bytes> {
        self.inner.get_meta(key).await
    }
    async fn delete_meta(&self, key: &MetaKey) -> Result<()> {
        self.hook.before(Access::Write).await?;
        self.inner.delete_meta(key).await
    }
    async fn list_halts(&self) -> Result<Vec<RootId>> {
        self.inner.list_halts().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DelayedStore, ObjectChunkStore, StoreConfig, StoreLocation};
    use std::time::Duration;

    /// Sleeps before every call; optionally alongside reads.
    #[derive(Debug)]
    struct Slow {
        alongside: bool,
    }

    #[async_trait]
    impl StoreHook for Slow {
        async fn before(&self, _access: Access<'_>) -> Result<()> {
            tokio::time::sleep(Duration::from_millis(40)).await;
            Ok(())
        }
        fn alongside_reads(&self) -> bool {
            self.alongside
        }
    }

    // On tokio's paused clock only sleeps move time, so the elapsed times are exact: a hook
    // asked alongside a 60 ms read adds nothing, one asked first adds its 40 ms; writes are
    // always asked first.
    #[tokio::test(start_paused = true)]
    async fn a_hook_runs_before_or_alongside_reads() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut cfg = StoreConfig::new(StoreLocation::Local(dir.path().to_path_buf()));
        cfg.create_if_missing = true;
        let local: Arc<dyn ChunkStore> = Arc::new(ObjectChunkStore::open(&cfg).expect("open"));
        let remote: Arc<dyn ChunkStore> =
            Arc::new(DelayedStore::new(local, Duration::from_millis(60)));
        let root = RootId::initial();
        let name = ChunkName::from_bytes([3; 32]);
        for (alongside, read_ms) in [(false, 100), (true, 60)] {
            let store = HookedStore::with_hook(Arc::clone(&remote), Slow { alongside });
            let t = tokio::time::Instant::now();
            store
                .put_chunk(&root, &name, Bytes::from_static(b"x"))
                .await
                .expect("put");
            assert_eq!(
                t.elapsed(),
                Duration::from_millis(40),
                "alongside {alongside}"
            );
            let t = tokio::time::Instant::now();
            assert_eq!(store.get_chunk(&root, &name).await.expect("get"), "x");
            assert_eq!(
                t.elapsed(),
                Duration::from_millis(read_ms),
                "alongside {alongside}"
            );
        }
    }
}
