//! Start-up profile codec (docs/format.md §7): the order in which a start of an image first
//! read its chunks, as ciphertext chunk names only, bound to one manifest.
//!
//! ```text
//! magic      8 bytes  "LBPROF01"
//! manifest  32 bytes  the manifest id the profile was recorded against
//! count      4 bytes  u32 LE, number of names
//! names     32 × count chunk names, in first-read order, no repeats
//! checksum  32 bytes  SHA-256 of every byte before it
//! ```
//!
//! A profile comes from the origin, so decoding is strict: exact length, checksum, no
//! repeated names, at most [`MAX_PROFILE_CHUNKS`] names.

use aws_lc_rs::digest::{digest, SHA256};

use crate::error::{FormatError, FormatErrorKind};
use crate::ids::{ChunkName, ManifestId};
use crate::Result;

const MAGIC: &[u8; 8] = b"LBPROF01";
const HEADER: usize = 8 + 32 + 4;
/// Most names a profile may hold (2^22: a 2 TiB image of 512 KiB chunks).
pub const MAX_PROFILE_CHUNKS: usize = 1 << 22;

/// A decoded start-up profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The manifest it was recorded against.
    pub manifest: ManifestId,
    /// Chunk names in first-read order.
    pub chunks: Vec<ChunkName>,
}

fn corrupt(msg: impl Into<String>) -> FormatError {
    FormatError::new(FormatErrorKind::Corrupt, msg.into())
}

impl Profile {
    /// Encodes the profile. Repeated names keep their first place.
    pub fn encode(&self) -> Vec<u8> {
        let mut seen = std::collections::HashSet::new();
        let names: Vec<&ChunkName> = self
            .chunks
            .iter()
            .filter(|n| seen.insert(**n))
            .take(MAX_PROFILE_CHUNKS)
            .collect();
        let mut out = Vec::with_capacity(HEADER + 32 * names.len() + 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(self.manifest.as_bytes());
        out.extend_from_slice(&(names.len() as u32).to_le_bytes());
        for n in names {
            out.extend_from_slice(n.as_bytes());
        }
        let sum = digest(&SHA256, &out);
        out.extend_from_slice(sum.as_ref());
        out
    }

    /// Decodes and checks a profile.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < HEADER + 32 {
            return Err(corrupt(format!(
                "profile of {} bytes is shorter than its {}-byte frame",
                bytes.len(),
                HEADER + 32
            )));
        }
        if &bytes[..8] != MAGIC {
            return Err(corrupt("not a lazyblock profile (bad magic)"));
        }
        let mut count = [0u8; 4];
        count.copy_from_slice(&bytes[40..44]);
        let count = u32::from_le_bytes(count) as usize;
        if count > MAX_PROFILE_CHUNKS {
            return Err(corrupt(format!(
                "profile claims {count} chunks, more than {MAX_PROFILE_CHUNKS}"
            )));
        }
        let want = HEADER + 32 * count + 32;
        if bytes.len() != want {
            return Err(corrupt(format!(
                "profile of {count} chunks must be {want} bytes, got {}",
                bytes.len()
            )));
        }
        let (body, sum) = bytes.split_at(want - 32);
        if digest(&SHA256, body).as_ref() != sum {
            return Err(corrupt("profile checksum mismatch"));
        }
        let mut manifest = [0u8; 32];
        manifest.copy_from_slice(&bytes[8..40]);
        let mut seen = std::collections::HashSet::with_capacity(count);
        let mut chunks = Vec::with_capacity(count);
        for raw in body[HEADER..].chunks_exact(32) {
            let mut n = [0u8; 32];
            n.copy_from_slice(raw);
            let name = ChunkName::from_bytes(n);
            if !seen.insert(name) {
                return Err(corrupt(format!(
                    "profile lists chunk {} twice",
                    name.short()
                )));
            }
            chunks.push(name);
        }
        Ok(Self {
            manifest: ManifestId::from_bytes(manifest),
            chunks,
        })
    }
}

/// Fuzz entry point: decoding arbitrary bytes never panics, and whatever decodes re-encodes to
/// the same bytes.
pub fn fuzz_profile_decode(data: &[u8]) {
    if let Ok(p) = Profile::decode(data) {
        assert_eq!(p.encode(), data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(n: usize) -> Profile {
        Profile {
            manifest: ManifestId::from_bytes([7; 32]),
            chunks: (0..n)
                .map(|i| {
                    let mut b = [0u8; 32];
                    b[..8].copy_from_slice(&(i as u64).to_le_bytes());
                    ChunkName::from_bytes(b)
                })
                .collect(),
        }
    }

    #[test]
    fn round_trip_and_layout() {
        let p = sample(3);
        let bytes = p.encode();
        assert_eq!(bytes.len(), 44 + 96 + 32);
        assert_eq!(&bytes[..8], b"LBPROF01");
        assert_eq!(&bytes[40..44], &3u32.to_le_bytes());
        assert_eq!(Profile::decode(&bytes).expect("decode"), p);
    }

    #[test]
    fn encode_drops_repeats() {
        let mut p = sample(2);
        p.chunks.push(p.chunks[0]);
        let back = Profile::decode(&p.encode()).expect("decode");
        assert_eq!(back.chunks.len(), 2);
    }

    #[test]
    fn every_byte_flip_and_truncation_is_rejected() {
        let bytes = sample(4).encode();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(Profile::decode(&b).is_err(), "flip at {i}");
            assert!(Profile::decode(&bytes[..i]).is_err(), "truncated to {i}");
        }
    }

    proptest! {
        #[test]
        fn any_profile_round_trips(n in 0usize..200, m in any::<[u8; 32]>()) {
            let mut p = sample(n);
            p.manifest = ManifestId::from_bytes(m);
            prop_assert_eq!(Profile::decode(&p.encode()).expect("decode"), p);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            fuzz_profile_decode(&data);
        }
    }
}
