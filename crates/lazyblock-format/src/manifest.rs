//! The manifest: one per built image, the map from chunk index to chunk name and key.
//!
//! The chunk table is plaintext so that garbage collection can read it without any key; the key
//! table is sealed with AES-256-GCM under a random per-manifest data key, which is itself wrapped
//! (AES-256-GCM) by the tenant key. Each GCM seal takes every byte of the manifest before the
//! sealed field as associated data, and a SHA-256 trailer over everything makes any changed byte
//! detectable without a key. The byte layout is pinned in `docs/format.md`.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::digest::{digest, SHA256};

use crate::crypto::{ChunkKey, TenantKey};
use crate::error::{FormatError, FormatErrorKind};
use crate::geometry::{ChunkSize, Geometry};
use crate::ids::{ChunkName, ManifestId, RootId, TenantId};
use crate::Result;

/// The four bytes every manifest starts with.
pub const MANIFEST_MAGIC: [u8; 4] = *b"LZBM";
/// The manifest format version this build writes and reads.
pub const MANIFEST_VERSION: u16 = 1;
/// Longest source description accepted, in bytes.
pub const MAX_SOURCE_LEN: usize = 4096;
/// Longest sealed image configuration accepted, in bytes.
pub const MAX_IMAGE_CONFIG_LEN: usize = 1 << 20;

const GCM_TAG_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const WRAPPED_KEY_LEN: usize = 32 + GCM_TAG_LEN;
const TRAILER_LEN: usize = 32;

/// The keyless description of a manifest's image.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ManifestHeader {
    /// The tenant whose key seals the key table.
    pub tenant: TenantId,
    /// The GC root holding the manifest and every chunk it names.
    pub root: RootId,
    /// Image size in bytes.
    pub image_size: u64,
    /// Chunk size.
    pub chunk_size: ChunkSize,
    /// Creation time, seconds since the Unix epoch (passed in, never read here).
    pub created_unix_secs: u64,
    /// Free text describing the source, e.g. `raw:disk.img`.
    pub source: String,
}

impl ManifestHeader {
    /// The chunk grid of the image.
    pub fn geometry(&self) -> Result<Geometry> {
        Geometry::new(self.image_size, self.chunk_size)
    }
}

/// One chunk of an image being encoded.
#[derive(Clone, Debug)]
pub enum ChunkEntry {
    /// All bytes zero: nothing stored.
    Zero,
    /// A stored chunk.
    Data {
        /// `SHA-256(ciphertext)`.
        name: ChunkName,
        /// Its convergent key.
        key: ChunkKey,
    },
}

/// The random inputs of one manifest encoding, drawn by the caller.
#[derive(Clone)]
pub struct ManifestRandom {
    /// The per-manifest data key that seals the key table.
    pub data_key: [u8; 32],
    /// The GCM nonce that wraps the data key under the tenant key.
    pub wrap_nonce: [u8; 12],
    /// The GCM nonce of the key table.
    pub table_nonce: [u8; 12],
}

fn gcm_key(bytes: &[u8; 32]) -> Result<LessSafeKey> {
    UnboundKey::new(&AES_256_GCM, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| FormatError::invalid("AES-256-GCM key setup failed"))
}

fn put_str_u8(out: &mut Vec<u8>, s: &str) {
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// Encodes and seals a manifest. Returns its id and bytes.
///
/// `image_config` is opaque to this crate (the OCI image configuration as JSON, or empty): it is
/// sealed together with the key table, since environment variables may hold secrets.
pub fn encode_manifest(
    header: &ManifestHeader,
    chunks: &[ChunkEntry],
    image_config: &[u8],
    tenant_key: &TenantKey,
    random: &ManifestRandom,
) -> Result<(ManifestId, Vec<u8>)> {
    if image_config.len() > MAX_IMAGE_CONFIG_LEN {
        return Err(FormatError::invalid(format!(
            "image configuration is {} bytes; at most {MAX_IMAGE_CONFIG_LEN} are allowed",
            image_config.len()
        )));
    }
    let geometry = header.geometry()?;
    if geometry.chunk_count() != chunks.len() as u64 {
        return Err(FormatError::invalid(format!(
            "an image of {} bytes has {} chunks of {} bytes, but {} were given",
            header.image_size,
            geometry.chunk_count(),
            header.chunk_size.bytes(),
            chunks.len()
        )));
    }
    if header.source.len() > MAX_SOURCE_LEN {
        return Err(FormatError::invalid(format!(
            "source description is {} bytes; at most {MAX_SOURCE_LEN} are allowed",
            header.source.len()
        )));
    }
    let data_count = chunks
        .iter()
        .filter(|c| matches!(c, ChunkEntry::Data { .. }))
        .count();
    let chunk_count = chunks.len();
    let mut out = Vec::with_capacity(
        128 + header.source.len() + chunk_count.div_ceil(8) + data_count * 64 + 160,
    );
    out.extend_from_slice(&MANIFEST_MAGIC);
    out.extend_from_slice(&MANIFEST_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    put_str_u8(&mut out, header.tenant.as_str());
    put_str_u8(&mut out, header.root.as_str());
    out.extend_from_slice(&header.image_size.to_le_bytes());
    out.push(header.chunk_size.log2());
    out.extend_from_slice(&header.created_unix_secs.to_le_bytes());
    out.extend_from_slice(&(header.source.len() as u16).to_le_bytes());
    out.extend_from_slice(header.source.as_bytes());
    out.extend_from_slice(&(chunk_count as u32).to_le_bytes());
    out.extend_from_slice(&(data_count as u32).to_le_bytes());
    let mut bitmap = vec![0u8; chunk_count.div_ceil(8)];
    for (i, c) in chunks.iter().enumerate() {
        if matches!(c, ChunkEntry::Zero) {
            bitmap[i / 8] |= 1 << (i % 8);
        }
    }
    out.extend_from_slice(&bitmap);
    let mut table = Vec::with_capacity(data_count * 32 + image_config.len() + GCM_TAG_LEN);
    for c in chunks {
        if let ChunkEntry::Data { name, key } = c {
            out.extend_from_slice(name.as_bytes());
            table.extend_from_slice(key.as_bytes());
        }
    }
    table.extend_from_slice(image_config);
    out.extend_from_slice(&(image_config.len() as u32).to_le_bytes());
    // Key section: the wrapped data key, then the sealed key table.
    out.extend_from_slice(&tenant_key.fingerprint());
    out.extend_from_slice(&random.wrap_nonce);
    let mut wrapped = random.data_key.to_vec();
    gcm_key(tenant_key.as_bytes())?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(random.wrap_nonce),
            Aad::from(&out[..]),
            &mut wrapped,
        )
        .map_err(|_| FormatError::invalid("wrapping the data key failed"))?;
    out.extend_from_slice(&wrapped);
    out.extend_from_slice(&random.table_nonce);
    gcm_key(&random.data_key)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(random.table_nonce),
            Aad::from(&out[..]),
            &mut table,
        )
        .map_err(|_| FormatError::invalid("sealing the key table failed"))?;
    out.extend_from_slice(&table);
    let id = ManifestId::from_bytes(sha256(&out));
    out.extend_from_slice(id.as_bytes());
    Ok((id, out))
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, data).as_ref());
    out
}

/// A bounds-checked cursor over untrusted bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| FormatError::corrupt(format!("manifest is truncated in {what}")))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn str_u8(&mut self, what: &str) -> Result<&'a str> {
        let len = self.u8(what)? as usize;
        std::str::from_utf8(self.take(len, what)?)
            .map_err(|_| FormatError::corrupt(format!("manifest {what} is not UTF-8")))
    }
}

/// A decoded manifest. Everything but the key table is readable without a key.
#[derive(Clone, Debug)]
pub struct Manifest {
    id: ManifestId,
    header: ManifestHeader,
    geometry: Geometry,
    /// Per chunk index: the slot in `names` and the key table, or `u32::MAX` for a zero chunk.
    slots: Vec<u32>,
    names: Vec<ChunkName>,
    fingerprint: [u8; 8],
    /// Offsets of the wrapped key and of the sealed key table in `bytes`.
    wrapped_at: usize,
    table_at: usize,
    bytes: Vec<u8>,
}

const ZERO_SLOT: u32 = u32::MAX;

impl Manifest {
    /// Decodes and checks a manifest: structure, limits and the SHA-256 trailer.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < 8 + TRAILER_LEN {
            return Err(FormatError::corrupt("manifest is truncated"));
        }
        let mut cur = Cursor { bytes, pos: 0 };
        if cur.array::<4>("magic")? != MANIFEST_MAGIC {
            return Err(FormatError::corrupt(
                "not a lazyblock manifest (bad magic number)",
            ));
        }
        let version = cur.u16("version")?;
        let body_len = bytes.len() - TRAILER_LEN;
        let trailer = &bytes[body_len..];
        let id = ManifestId::from_bytes(sha256(&bytes[..body_len]));
        if trailer != id.as_bytes() {
            return Err(FormatError::corrupt(
                "manifest is corrupt: its checksum does not match",
            ));
        }
        if version != MANIFEST_VERSION {
            return Err(FormatError::new(
                FormatErrorKind::Unsupported,
                format!("manifest format version {version} is not supported (this build reads version {MANIFEST_VERSION})"),
            ));
        }
        let flags = cur.u16("flags")?;
        if flags != 0 {
            return Err(FormatError::new(
                FormatErrorKind::Unsupported,
                format!("manifest uses unknown flags {flags:#x}"),
            ));
        }
        let bad = |e: FormatError| FormatError::corrupt(format!("manifest header: {e}"));
        let tenant = TenantId::new(cur.str_u8("tenant")?).map_err(bad)?;
        let root = RootId::new(cur.str_u8("root")?).map_err(bad)?;
        let image_size = cur.u64("image size")?;
        let chunk_size = ChunkSize::from_log2(cur.u8("chunk size")?)?;
        let created_unix_secs = cur.u64("creation time")?;
        let source_len = cur.u16("source")? as usize;
        if source_len > MAX_SOURCE_LEN {
            return Err(FormatError::corrupt(
                "manifest source description is too long",
            ));
        }
        let source = std::str::from_utf8(cur.take(source_len, "source")?)
            .map_err(|_| FormatError::corrupt("manifest source is not UTF-8"))?
            .to_owned();
        let geometry = Geometry::new(image_size, chunk_size).map_err(bad)?;
        let chunk_count = cur.u32("chunk count")? as u64;
        if chunk_count != geometry.chunk_count() {
            return Err(FormatError::corrupt(format!(
                "manifest says {chunk_count} chunks, but its image size needs {}",
                geometry.chunk_count()
            )));
        }
        let data_count = cur.u32("data chunk count")? as usize;
        let chunk_count = chunk_count as usize;
        // Slice the chunk table and check the exact remaining length before allocating
        // anything sized by the header (`take` bounds-checks and borrows; it allocates nothing).
        let bitmap_len = chunk_count.div_ceil(8);
        let names_len = data_count
            .checked_mul(32)
            .ok_or_else(|| FormatError::corrupt("manifest data chunk count is too large"))?;
        let bitmap = cur.take(bitmap_len, "zero bitmap")?;
        let names_raw = cur.take(names_len, "chunk names")?;
        let config_len = cur.u32("image configuration length")? as usize;
        if config_len > MAX_IMAGE_CONFIG_LEN {
            return Err(FormatError::corrupt(
                "manifest image configuration is too long",
            ));
        }
        let expected_rest =
            8 + NONCE_LEN + WRAPPED_KEY_LEN + NONCE_LEN + names_len + config_len + GCM_TAG_LEN;
        if body_len.checked_sub(cur.pos) != Some(expected_rest) {
            return Err(FormatError::corrupt(
                "manifest length does not match its chunk counts",
            ));
        }
        if chunk_count % 8 != 0 && bitmap[bitmap_len - 1] >> (chunk_count % 8) != 0 {
            return Err(FormatError::corrupt("manifest zero bitmap has stray bits"));
        }
        let mut slots = Vec::with_capacity(chunk_count);
        let mut next = 0u32;
        for i in 0..chunk_count {
            if bitmap[i / 8] & (1 << (i % 8)) != 0 {
                slots.push(ZERO_SLOT);
            } else {
                slots.push(next);
                next += 1;
            }
        }
        if next as usize != data_count {
            return Err(FormatError::corrupt(
                "manifest zero bitmap disagrees with its data chunk count",
            ));
        }
        let names = names_raw
            .chunks_exact(32)
            .map(|c| {
                let mut n = [0u8; 32];
                n.copy_from_slice(c);
                ChunkName::from_bytes(n)
            })
            .collect();
        let fingerprint = cur.array::<8>("key id")?;
        let wrapped_at = cur.pos + NONCE_LEN;
        let table_at = wrapped_at + WRAPPED_KEY_LEN + NONCE_LEN;
        Ok(Self {
            id,
            header: ManifestHeader {
                tenant,
                root,
                image_size,
                chunk_size,
                created_unix_secs,
                source,
            },
            geometry,
            slots,
            names,
            fingerprint,
            wrapped_at,
            table_at,
            bytes: bytes.to_vec(),
        })
    }

    /// The manifest's id: `SHA-256` of its bytes before the trailer.
    pub fn id(&self) -> ManifestId {
        self.id
    }
    /// The keyless header.
    pub fn header(&self) -> &ManifestHeader {
        &self.header
    }
    /// The chunk grid.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }
    /// Number of chunks, zero chunks included.
    pub fn chunk_count(&self) -> u64 {
        self.slots.len() as u64
    }
    /// Number of stored (non-zero) chunks, repeats included.
    pub fn data_chunk_count(&self) -> u64 {
        self.names.len() as u64
    }
    /// The name of chunk `index`, or `None` for a zero chunk or an index past the end.
    pub fn chunk(&self, index: u64) -> Option<ChunkName> {
        let slot = *self.slots.get(usize::try_from(index).ok()?)?;
        (slot != ZERO_SLOT).then(|| self.names[slot as usize])
    }
    /// Every stored chunk as `(index, name)`, in index order.
    pub fn data_chunks(&self) -> impl Iterator<Item = (u64, ChunkName)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, &s)| s != ZERO_SLOT)
            .map(|(i, &s)| (i as u64, self.names[s as usize]))
    }
    /// The distinct chunk names, sorted.
    pub fn distinct_chunks(&self) -> Vec<ChunkName> {
        let mut v = self.names.clone();
        v.sort_unstable();
        v.dedup();
        v
    }
    /// The fingerprint of the tenant key that sealed this manifest.
    pub fn key_fingerprint(&self) -> [u8; 8] {
        self.fingerprint
    }
    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Unwraps the data key with the tenant key and opens the key table.
    pub fn open_keys(&self, tenant_key: &TenantKey) -> Result<KeyTable> {
        if tenant_key.fingerprint() != self.fingerprint {
            return Err(FormatError::new(
                FormatErrorKind::WrongKey,
                format!(
                    "manifest {} of tenant {:?} is sealed with key id {}; the key given (key id {}) cannot open it",
                    self.id.short(),
                    self.header.tenant.as_str(),
                    hex::encode(self.fingerprint),
                    hex::encode(tenant_key.fingerprint())
                ),
            ));
        }
        let corrupt = || {
            FormatError::corrupt(format!(
                "manifest {} is corrupt: its key table fails authentication",
                self.id.short()
            ))
        };
        let wrap_nonce: [u8; NONCE_LEN] = self.bytes[self.wrapped_at - NONCE_LEN..self.wrapped_at]
            .try_into()
            .map_err(|_| corrupt())?;
        let mut wrapped = self.bytes[self.wrapped_at..self.wrapped_at + WRAPPED_KEY_LEN].to_vec();
        let data_key = gcm_key(tenant_key.as_bytes())?
            .open_in_place(
                Nonce::assume_unique_for_key(wrap_nonce),
                Aad::from(&self.bytes[..self.wrapped_at]),
                &mut wrapped,
            )
            .map_err(|_| corrupt())?;
        let mut dk = [0u8; 32];
        dk.copy_from_slice(data_key);
        let table_nonce: [u8; NONCE_LEN] = self.bytes[self.table_at - NONCE_LEN..self.table_at]
            .try_into()
            .map_err(|_| corrupt())?;
        let body_len = self.bytes.len() - TRAILER_LEN;
        let mut table = self.bytes[self.table_at..body_len].to_vec();
        let key = gcm_key(&dk);
        zeroize::Zeroize::zeroize(&mut dk);
        zeroize::Zeroize::zeroize(&mut wrapped);
        let plain = key?
            .open_in_place(
                Nonce::assume_unique_for_key(table_nonce),
                Aad::from(&self.bytes[..self.table_at]),
                &mut table,
            )
            .map_err(|_| corrupt())?;
        let keys_len = self.names.len() * 32;
        let image_config = plain[keys_len..].to_vec();
        let keys = plain[..keys_len]
            .chunks_exact(32)
            .map(|c| {
                let mut k = [0u8; 32];
                k.copy_from_slice(c);
                ChunkKey::from_bytes(k)
            })
            .collect();
        zeroize::Zeroize::zeroize(&mut table);
        Ok(KeyTable {
            slots: self.slots.clone(),
            keys,
            image_config,
        })
    }
}

/// The opened key table of a manifest.
pub struct KeyTable {
    slots: Vec<u32>,
    keys: Vec<ChunkKey>,
    image_config: Vec<u8>,
}

impl KeyTable {
    /// The key of chunk `index`, or `None` for a zero chunk or an index past the end.
    pub fn key(&self, index: u64) -> Option<&ChunkKey> {
        let slot = *self.slots.get(usize::try_from(index).ok()?)?;
        (slot != ZERO_SLOT).then(|| &self.keys[slot as usize])
    }
    /// The sealed image configuration (empty if the build had none).
    pub fn image_config(&self) -> &[u8] {
        &self.image_config
    }
}

impl Drop for KeyTable {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.image_config);
    }
}

impl std::fmt::Debug for KeyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyTable({} keys)", self.keys.len())
    }
}
