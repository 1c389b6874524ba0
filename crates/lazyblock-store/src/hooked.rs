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
        self.hook.before(Access::Chunk(root, name)).await?;
        self.inner.get_chunk(root, name).await
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
        self.hook.before(Access::Manifest(root, id)).await?;
        self.inner.get_manifest(root, id).await
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
        self.hook.before(Access::Profile(root, id)).await?;
        self.inner.get_profile(root, id).await
    }
    async fn put_catalog(&self, tenant: &TenantId, image: &ImageRef, entry: Bytes) -> Result<()> {
        self.hook.before(Access::Write).await?;
        self.inner.put_catalog(tenant, image, entry).await
    }
    async fn get_catalog(&self, tenant: &TenantId, image: &ImageRef) -> Result<Bytes> {
        self.hook.before(Access::Catalog(tenant, image)).await?;
        self.inner.get_catalog(tenant, image).await
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
