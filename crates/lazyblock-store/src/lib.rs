//! The origin store: where sealed chunks, manifests and catalog entries live.
//!
//! This crate owns the [`ChunkStore`] seam and its one implementation, [`ObjectChunkStore`],
//! over the `object_store` crate: a local directory (the embedded default) or an S3-compatible
//! bucket. It knows the object layout (`roots/<root>/chunks/<name>`,
//! `roots/<root>/manifests/<id>`, `roots/<root>/state`, `catalog/<tenant>/<name>:<tag>`,
//! `gc/halts/<root>`) and the put-if-absent rule,
//! and nothing about keys, plaintext or the CLI. Settings arrive as a typed [`StoreConfig`]; this
//! crate reads no environment variables.
//!
//! Put-if-absent is a `HEAD` followed by a conditional `PUT` (`If-None-Match: *`). Servers that
//! ignore the condition overwrite an existing chunk with the same bytes, which content addressing
//! makes harmless. HTTP requests are retried with exponential backoff by `object_store`'s client,
//! bounded in count and time (see [`StoreConfig`]).

mod delayed;
mod error;
mod hooked;
mod layout;
mod object;
pub mod testing;

pub use delayed::{Delay, DelayedStore};
pub use error::{StoreError, StoreErrorKind};
pub use hooked::{Access, HookedStore, StoreHook};
pub use layout::Layout;
pub use object::{s3_options_from_vars, ObjectChunkStore, StoreConfig, StoreLocation};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use lazyblock_format::{ChunkName, ImageRef, ManifestId, RootId, TenantId};

/// Result alias of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What a put-if-absent did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PutOutcome {
    /// The object was written.
    Stored,
    /// An object of that name was already there; nothing was written.
    AlreadyPresent,
}

/// How a put treats an object that already exists.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WriteMode {
    /// Write only if absent ([`PutOutcome::AlreadyPresent`] otherwise).
    Create,
    /// Replace whatever is there.
    Overwrite,
}

/// A small mutable record of the garbage collector (docs/format.md §13).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum MetaKey {
    /// `roots/<root>/state`: the root's lifecycle.
    RootState(RootId),
    /// `gc/halts/<root>`: deletion is halted because an expired root was read.
    Halt(RootId),
}

impl std::fmt::Display for MetaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::RootState(r) => write!(f, "state of root {r}"),
            Self::Halt(r) => write!(f, "deletion halt for root {r}"),
        }
    }
}

/// The origin store seam. Chunks and manifests are immutable and content-addressed; catalog
/// entries and start-up profiles are the only objects that are overwritten.
#[async_trait]
pub trait ChunkStore: Send + Sync + std::fmt::Debug {
    /// Where the store is, for messages (`file:///…`, `s3://…`).
    fn url(&self) -> &str;

    /// Checks that the store can be reached and listed.
    async fn check(&self) -> Result<()>;

    /// Makes every put that has returned durable: a barrier a writer calls before it publishes
    /// anything that refers to what it wrote (S3: a no-op, a successful PUT is durable; a local
    /// directory: `syncfs` of its filesystem).
    async fn sync(&self) -> Result<()>;

    /// Stores a sealed chunk unless one of that name exists.
    async fn put_chunk(&self, root: &RootId, name: &ChunkName, data: Bytes) -> Result<PutOutcome>;
    /// Fetches a sealed chunk (unverified: callers check the name).
    async fn get_chunk(&self, root: &RootId, name: &ChunkName) -> Result<Bytes>;
    /// Whether a chunk exists.
    async fn has_chunk(&self, root: &RootId, name: &ChunkName) -> Result<bool>;
    /// Deletes a chunk (for GC and tests). Deleting a missing chunk is not an error.
    async fn delete_chunk(&self, root: &RootId, name: &ChunkName) -> Result<()>;
    /// Every chunk in a root with its size in bytes, in no particular order.
    fn list_chunks(&self, root: &RootId) -> BoxStream<'_, Result<(ChunkName, u64)>>;

    /// Stores a manifest unless one of that id exists.
    async fn put_manifest(&self, root: &RootId, id: &ManifestId, data: Bytes)
        -> Result<PutOutcome>;
    /// Fetches a manifest's bytes.
    async fn get_manifest(&self, root: &RootId, id: &ManifestId) -> Result<Bytes>;
    /// Every manifest in a root with its size in bytes, sorted by id.
    async fn list_manifests(&self, root: &RootId) -> Result<Vec<(ManifestId, u64)>>;
    /// Deletes a manifest and its profile, for GC. Deleting a missing one is not an error.
    async fn delete_manifest(&self, root: &RootId, id: &ManifestId) -> Result<()>;

    /// Stores (or replaces) the start-up profile recorded for a manifest: a list of chunk
    /// names, kept beside the manifest (docs/format.md §7).
    async fn put_profile(&self, root: &RootId, id: &ManifestId, data: Bytes) -> Result<()>;
    /// Fetches the start-up profile of a manifest ([`StoreErrorKind::NotFound`] if none).
    async fn get_profile(&self, root: &RootId, id: &ManifestId) -> Result<Bytes>;

    /// Publishes (or re-points) a catalog entry.
    async fn put_catalog(&self, tenant: &TenantId, image: &ImageRef, entry: Bytes) -> Result<()>;
    /// Fetches a catalog entry.
    async fn get_catalog(&self, tenant: &TenantId, image: &ImageRef) -> Result<Bytes>;
    /// Removes a catalog entry.
    async fn delete_catalog(&self, tenant: &TenantId, image: &ImageRef) -> Result<()>;
    /// The images in a tenant's catalog, sorted.
    async fn list_catalog(&self, tenant: &TenantId) -> Result<Vec<ImageRef>>;
    /// Every tenant with a catalog, sorted.
    async fn list_tenants(&self) -> Result<Vec<TenantId>>;

    /// Every root holding at least one object (a state record counts), sorted.
    async fn list_roots(&self) -> Result<Vec<RootId>>;
    /// Writes a GC record.
    async fn put_meta(&self, key: &MetaKey, data: Bytes, mode: WriteMode) -> Result<PutOutcome>;
    /// Fetches a GC record ([`StoreErrorKind::NotFound`] if absent).
    async fn get_meta(&self, key: &MetaKey) -> Result<Bytes>;
    /// Deletes a GC record. Deleting a missing one is not an error.
    async fn delete_meta(&self, key: &MetaKey) -> Result<()>;
    /// The roots with a deletion halt, sorted.
    async fn list_halts(&self) -> Result<Vec<RootId>>;
}
