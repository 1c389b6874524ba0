//! [`DelayedStore`]: a store that waits a fixed time before every read request, to model a
//! remote origin (S3 answers a GET in about 20 ms) on a local one. Used by `lazyblock bench
//! start` and by `serve --origin-latency`; writes and listings are not delayed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use lazyblock_format::{ChunkName, ImageRef, ManifestId, RootId, TenantId};

use crate::{ChunkStore, MetaKey, PutOutcome, Result, WriteMode};

/// Wraps a store and sleeps `delay` before every GET (chunks, manifests, profiles, catalog).
#[derive(Debug)]
pub struct DelayedStore {
    inner: Arc<dyn ChunkStore>,
    delay: Duration,
}

impl DelayedStore {
    /// Delays every read of `inner` by `delay`.
    pub fn new(inner: Arc<dyn ChunkStore>, delay: Duration) -> Self {
        Self { inner, delay }
    }

    async fn wait(&self) {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
    }
}

#[async_trait]
impl ChunkStore for DelayedStore {
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
        self.inner.put_chunk(root, name, data).await
    }
    async fn get_chunk(&self, root: &RootId, name: &ChunkName) -> Result<Bytes> {
        self.wait().await;
        self.inner.get_chunk(root, name).await
    }
    async fn has_chunk(&self, root: &RootId, name: &ChunkName) -> Result<bool> {
        self.inner.has_chunk(root, name).await
    }
    async fn delete_chunk(&self, root: &RootId, name: &ChunkName) -> Result<()> {
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
        self.inner.put_manifest(root, id, data).await
    }
    async fn get_manifest(&self, root: &RootId, id: &ManifestId) -> Result<Bytes> {
        self.wait().await;
        self.inner.get_manifest(root, id).await
    }
    async fn put_profile(&self, root: &RootId, id: &ManifestId, data: Bytes) -> Result<()> {
        self.inner.put_profile(root, id, data).await
    }
    async fn get_profile(&self, root: &RootId, id: &ManifestId) -> Result<Bytes> {
        self.wait().await;
        self.inner.get_profile(root, id).await
    }
    async fn put_catalog(&self, tenant: &TenantId, image: &ImageRef, entry: Bytes) -> Result<()> {
        self.inner.put_catalog(tenant, image, entry).await
    }
    async fn get_catalog(&self, tenant: &TenantId, image: &ImageRef) -> Result<Bytes> {
        self.wait().await;
        self.inner.get_catalog(tenant, image).await
    }
    async fn delete_catalog(&self, tenant: &TenantId, image: &ImageRef) -> Result<()> {
        self.inner.delete_catalog(tenant, image).await
    }
    async fn list_catalog(&self, tenant: &TenantId) -> Result<Vec<ImageRef>> {
        self.inner.list_catalog(tenant).await
    }
    async fn list_manifests(&self, root: &RootId) -> Result<Vec<(ManifestId, u64)>> {
        self.inner.list_manifests(root).await
    }
    async fn delete_manifest(&self, root: &RootId, id: &ManifestId) -> Result<()> {
        self.inner.delete_manifest(root, id).await
    }
    async fn list_tenants(&self) -> Result<Vec<TenantId>> {
        self.inner.list_tenants().await
    }
    async fn list_roots(&self) -> Result<Vec<RootId>> {
        self.inner.list_roots().await
    }
    async fn put_meta(&self, key: &MetaKey, data: Bytes, mode: WriteMode) -> Result<PutOutcome> {
        self.inner.put_meta(key, data, mode).await
    }
    async fn get_meta(&self, key: &MetaKey) -> Result<Bytes> {
        self.inner.get_meta(key).await
    }
    async fn delete_meta(&self, key: &MetaKey) -> Result<()> {
        self.inner.delete_meta(key).await
    }
    async fn list_halts(&self) -> Result<Vec<RootId>> {
        self.inner.list_halts().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ObjectChunkStore, StoreConfig, StoreLocation};

    // On tokio's paused clock a sleep advances time by exactly its length and nothing else
    // does, so the delays are measured exactly, not against the wall clock.
    #[tokio::test(start_paused = true)]
    async fn reads_wait_writes_do_not() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut cfg = StoreConfig::new(
            StoreLocation::parse(&format!("file://{}", dir.path().display())).expect("url"),
        );
        cfg.create_if_missing = true;
        let inner: Arc<dyn ChunkStore> = Arc::new(ObjectChunkStore::open(&cfg).expect("open"));
        let delay = Duration::from_millis(60);
        let store = DelayedStore::new(inner, delay);
        let root = RootId::initial();
        let name = ChunkName::from_bytes([1; 32]);
        let t = tokio::time::Instant::now();
        store
            .put_chunk(&root, &name, Bytes::from_static(b"x"))
            .await
            .expect("put");
        assert_eq!(t.elapsed(), Duration::ZERO, "a put is not delayed");
        let t = tokio::time::Instant::now();
        assert_eq!(store.get_chunk(&root, &name).await.expect("get"), "x");
        assert_eq!(t.elapsed(), delay, "a get waits the delay once");
    }
}
