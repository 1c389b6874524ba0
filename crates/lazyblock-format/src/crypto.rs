//! Convergent chunk encryption and the tenant key.
//!
//! A chunk is sealed as
//! ```text
//! key  = SHA-256("lazyblock/chunk-key/v1\0" ‖ salt ‖ plaintext)
//! ct   = AES-256-CTR(key, IV = 0^16, plaintext)
//! name = SHA-256(ct)
//! ```
//! so the same plaintext under the same salt always gives the same name (dedup across tenants)
//! while a new salt (a new GC root) gives new keys and names. A key is used for exactly one
//! plaintext, which is what makes the fixed IV safe. Opening verifies `SHA-256(ct) == name`
//! before it decrypts anything.

use aws_lc_rs::cipher::{EncryptingKey, EncryptionContext, UnboundCipherKey, AES_256};
use aws_lc_rs::digest::{Context, SHA256};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{FormatError, FormatErrorKind};
use crate::ids::{ChunkName, RootId};
use crate::Result;

/// Domain tag that opens every chunk-key derivation.
pub(crate) const CHUNK_KEY_TAG: &[u8] = b"lazyblock/chunk-key/v1\0";
/// Domain tag of the tenant key fingerprint.
const TENANT_KEY_ID_TAG: &[u8] = b"lazyblock/tenant-key-id/v1\0";

/// Length of a tenant key in bytes.
pub const TENANT_KEY_LEN: usize = 32;

/// The salt mixed into every chunk key: for now the GC root id, length-prefixed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Salt(Vec<u8>);

impl Salt {
    /// The salt of chunks written into `root`: `u8 len ‖ root id`.
    pub fn for_root(root: &RootId) -> Self {
        let id = root.as_str().as_bytes();
        let mut bytes = Vec::with_capacity(1 + id.len());
        bytes.push(id.len() as u8);
        bytes.extend_from_slice(id);
        Self(bytes)
    }
    /// The salt bytes as they enter the key derivation.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A chunk's AES-256 key. Wiped on drop.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct ChunkKey([u8; 32]);

impl ChunkKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for ChunkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChunkKey(..)")
    }
}

/// A tenant's 256-bit key: it wraps the data key of every manifest the tenant builds.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct TenantKey([u8; TENANT_KEY_LEN]);

impl TenantKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; TENANT_KEY_LEN]) -> Self {
        Self(bytes)
    }
    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; TENANT_KEY_LEN] {
        &self.0
    }
    /// A public 8-byte fingerprint, stored in manifests so a wrong key is told apart from a
    /// corrupt manifest: the first 8 bytes of `SHA-256("lazyblock/tenant-key-id/v1\0" ‖ key)`.
    pub fn fingerprint(&self) -> [u8; 8] {
        let mut ctx = Context::new(&SHA256);
        ctx.update(TENANT_KEY_ID_TAG);
        ctx.update(&self.0);
        let digest = ctx.finish();
        let mut out = [0u8; 8];
        out.copy_from_slice(&digest.as_ref()[..8]);
        out
    }
}

impl std::fmt::Debug for TenantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TenantKey(id {})", hex::encode(self.fingerprint()))
    }
}

/// Derives the convergent key of a plaintext chunk under `salt`.
pub fn derive_chunk_key(salt: &Salt, plaintext: &[u8]) -> ChunkKey {
    let mut ctx = Context::new(&SHA256);
    ctx.update(CHUNK_KEY_TAG);
    ctx.update(salt.as_bytes());
    ctx.update(plaintext);
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    ChunkKey(key)
}

/// `SHA-256(ciphertext)`: the name a sealed chunk is stored under.
pub fn chunk_name_of(ciphertext: &[u8]) -> ChunkName {
    let mut name = [0u8; 32];
    name.copy_from_slice(aws_lc_rs::digest::digest(&SHA256, ciphertext).as_ref());
    ChunkName::from_bytes(name)
}

fn ctr_in_place(key: &ChunkKey, data: &mut [u8]) -> Result<()> {
    ctr_at(key, 0, data)
}

/// AES-256-CTR over `data`, which sits at byte `offset` of its chunk (`offset` a multiple of 16):
/// the counter block starts at `offset / 16`, big-endian, as in docs/format.md §1.
fn ctr_at(key: &ChunkKey, offset: u64, data: &mut [u8]) -> Result<()> {
    if offset % 16 != 0 {
        return Err(FormatError::invalid(format!(
            "chunk range offset {offset} is not a multiple of the AES block size"
        )));
    }
    let counter = u128::from(offset / 16).to_be_bytes();
    let cipher = UnboundCipherKey::new(&AES_256, key.as_bytes())
        .and_then(EncryptingKey::ctr)
        .map_err(|_| FormatError::invalid("AES-256-CTR key setup failed"))?;
    cipher
        .less_safe_encrypt(data, EncryptionContext::Iv128(counter.into()))
        .map_err(|_| FormatError::invalid("AES-256-CTR failed"))?;
    Ok(())
}

/// Seals a plaintext chunk in place: on return `data` holds the ciphertext.
/// Returns the chunk's name and key.
pub fn seal_chunk(salt: &Salt, data: &mut [u8]) -> Result<(ChunkName, ChunkKey)> {
    let key = derive_chunk_key(salt, data);
    ctr_in_place(&key, data)?;
    Ok((chunk_name_of(data), key))
}

/// Opens a sealed chunk in place: checks `SHA-256(data) == name`, then decrypts.
/// On a mismatch nothing is decrypted and a [`FormatErrorKind::Corrupt`] error names the chunk.
pub fn open_chunk(name: &ChunkName, key: &ChunkKey, data: &mut [u8]) -> Result<()> {
    let actual = chunk_name_of(data);
    if actual != *name {
        return Err(FormatError::new(
            FormatErrorKind::Corrupt,
            format!(
                "chunk {name} is corrupt: its bytes hash to {}",
                actual.short()
            ),
        ));
    }
    ctr_in_place(key, data)
}

/// Decrypts, in place, the bytes `data` of an already verified chunk that start at byte `offset`
/// of its ciphertext. `offset` must be a multiple of 16. This is how a cache that holds verified
/// ciphertext serves a small read without decrypting the whole chunk; it does not verify.
pub fn decrypt_chunk_range(key: &ChunkKey, offset: u64, data: &mut [u8]) -> Result<()> {
    ctr_at(key, offset, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn salt() -> Salt {
        Salt::for_root(&RootId::initial())
    }

    #[test]
    fn seal_open_round_trip() {
        let plain: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut buf = plain.clone();
        let (name, key) = seal_chunk(&salt(), &mut buf).expect("seal");
        assert_ne!(buf, plain);
        open_chunk(&name, &key, &mut buf).expect("open");
        assert_eq!(buf, plain);
    }

    #[test]
    fn range_decrypt_matches_whole_chunk() {
        let plain: Vec<u8> = (0..70_000u32).map(|i| (i * 13 % 251) as u8).collect();
        let mut sealed = plain.clone();
        let (_, key) = seal_chunk(&salt(), &mut sealed).expect("seal");
        for (start, len) in [
            (0usize, 1usize),
            (16, 4096),
            (4096, 65_536),
            (69_984, 16),
            (1024, 0),
        ] {
            let mut part = sealed[start..start + len].to_vec();
            decrypt_chunk_range(&key, start as u64, &mut part).expect("decrypt");
            assert_eq!(part, plain[start..start + len], "range {start}+{len}");
        }
        let mut odd = sealed[3..10].to_vec();
        assert!(decrypt_chunk_range(&key, 3, &mut odd).is_err());
    }

    #[test]
    fn convergent_and_salted() {
        let mut a = vec![5u8; 4096];
        let mut b = vec![5u8; 4096];
        let mut c = vec![5u8; 4096];
        let (na, _) = seal_chunk(&salt(), &mut a).expect("seal");
        let (nb, _) = seal_chunk(&salt(), &mut b).expect("seal");
        let other = Salt::for_root(&RootId::new("r1").expect("valid"));
        let (nc, _) = seal_chunk(&other, &mut c).expect("seal");
        assert_eq!(na, nb);
        assert_ne!(na, nc);
    }

    #[test]
    fn corrupt_chunk_is_rejected_before_decrypting() {
        let mut buf = vec![9u8; 4096];
        let (name, key) = seal_chunk(&salt(), &mut buf).expect("seal");
        buf[100] ^= 1;
        let copy = buf.clone();
        let err = open_chunk(&name, &key, &mut buf).expect_err("corrupt");
        assert_eq!(err.kind(), FormatErrorKind::Corrupt);
        assert!(err.to_string().contains(&name.to_hex()));
        assert_eq!(buf, copy, "nothing decrypted");
    }
}
