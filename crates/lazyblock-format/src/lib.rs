//! Pure formats of lazyblock: everything whose bytes are pinned in `docs/format.md`.
//!
//! This crate owns
//! - the identifiers ([`ChunkName`], [`ManifestId`], [`TenantId`], [`RootId`], [`ImageRef`]),
//! - chunk geometry ([`ChunkSize`], [`Geometry`]): offsets to chunk indexes and back,
//! - convergent chunk encryption ([`seal_chunk`], [`open_chunk`]): `key = SHA-256(tag ‖ salt ‖
//!   plaintext)`, AES-256-CTR with a zero IV, `name = SHA-256(ciphertext)`,
//! - the manifest codec ([`Manifest`], [`encode_manifest`]): a keyless chunk table plus a key table
//!   sealed with AES-256-GCM under a per-manifest data key wrapped by the tenant key,
//! - the catalog entry codec ([`CatalogEntry`]),
//! - the start-up profile codec ([`Profile`]): first-read order of an image's chunks,
//! - the GC records ([`RootState`], [`HaltRecord`]): a root's lifecycle and the deletion halt.
//!
//! It does no I/O, reads no clock and draws no randomness: times and random bytes are passed in,
//! so every encoding is reproducible in tests.

mod catalog;
mod crypto;
mod error;
mod geometry;
mod ids;
mod lines;
mod manifest;
mod profile;
mod root_state;

pub use catalog::CatalogEntry;
pub use crypto::{
    chunk_name_of, decrypt_chunk_range, derive_chunk_key, open_chunk, seal_chunk, ChunkKey, Salt,
    TenantKey, TENANT_KEY_LEN,
};
pub use error::{FormatError, FormatErrorKind};
pub use geometry::{is_zero, ChunkSize, Geometry};
pub use ids::{ChunkName, ImageRef, ManifestId, RootId, TenantId};
pub use manifest::{
    encode_manifest, ChunkEntry, KeyTable, Manifest, ManifestHeader, ManifestRandom,
    MANIFEST_MAGIC, MANIFEST_VERSION, MAX_IMAGE_CONFIG_LEN, MAX_SOURCE_LEN,
};
pub use profile::{fuzz_profile_decode, Profile, MAX_PROFILE_CHUNKS};
pub use root_state::{fuzz_root_state_decode, HaltRecord, Lifecycle, RootState};

/// Result alias of this crate.
pub type Result<T, E = FormatError> = std::result::Result<T, E>;

/// The body of the `manifest_decode` fuzz target, also run by the unit tests over seed inputs:
/// decoding arbitrary bytes never panics, and an accepted manifest answers every accessor and
/// rejects a wrong key cleanly.
#[doc(hidden)]
pub fn fuzz_manifest_decode(data: &[u8]) {
    // The SHA-256 trailer stops almost every mutation at the door; also try the input with a
    // valid trailer appended so the structural parser is explored too.
    let mut sealed = data.to_vec();
    sealed.extend_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref());
    for candidate in [data, &sealed[..]] {
        fuzz_one_manifest(candidate);
    }
    let _ = CatalogEntry::decode(data);
}

fn fuzz_one_manifest(data: &[u8]) {
    if let Ok(m) = Manifest::decode(data) {
        let count = m.chunk_count();
        assert!(m.data_chunk_count() <= count);
        assert_eq!(m.data_chunks().count() as u64, m.data_chunk_count());
        for i in 0..count.min(4096) {
            let _ = m.chunk(i);
        }
        assert!(m.chunk(count).is_none());
        let _ = m.distinct_chunks();
        let _ = m.geometry().chunk_range(count.saturating_sub(1));
        // Any key: an error or a table, never a panic.
        let _ = m.open_keys(&TenantKey::from_bytes([0; 32]));
    }
}
