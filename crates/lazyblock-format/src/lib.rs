//! Pure formats of lazyblock: everything whose bytes are pinned in `docs/format.md`.
//!
//! This crate owns
//! - the identifiers ([`ChunkName`], [`ManifestId`], [`TenantId`], [`RootId`], [`ImageRef`]),
//! - chunk geometry ([`ChunkSize`], [`Geometry`]): offsets to chunk indexes and back,
//! - convergent chunk encryption ([`seal_chunk`], [`open_chunk`]): `key = SHA-256(tag ‖ salt ‖
//!   plaintext)`, AES-256-CTR with a zero IV, `name = SHA-256(ciphertext)`,
//! - the manifest codec ([`Manifest`], [`encode_manifest`]): a keyless chunk table plus a key table
//!   sealed with AES-256-GCM under a per-manifest data key wrapped by the tenant key,
//! - the catalog entry codec ([`CatalogEntry`]).
//!
//! It does no I/O, reads no clock and draws no randomness: times and random bytes are passed in,
//! so every encoding is reproducible in tests.

mod catalog;
mod crypto;
mod error;
mod geometry;
mod ids;
mod manifest;

pub use catalog::CatalogEntry;
pub use crypto::{
    chunk_name_of, derive_chunk_key, open_chunk, seal_chunk, ChunkKey, Salt, TenantKey,
    TENANT_KEY_LEN,
};
pub use error::{FormatError, FormatErrorKind};
pub use geometry::{is_zero, ChunkSize, Geometry};
pub use ids::{ChunkName, ImageRef, ManifestId, RootId, TenantId};
pub use manifest::{
    encode_manifest, ChunkEntry, KeyTable, Manifest, ManifestHeader, ManifestRandom,
    MANIFEST_MAGIC, MANIFEST_VERSION, MAX_SOURCE_LEN,
};

/// Result alias of this crate.
pub type Result<T, E = FormatError> = std::result::Result<T, E>;
