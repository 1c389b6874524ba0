//! The L2 stripe frame and the systematic erasure codec (pure: no I/O, no clock, no randomness).
//!
//! The AZ cache tier stores every chunk (ciphertext, named by its SHA-256, 1 byte to
//! [`MAX_CHUNK_LEN`]) as `n` stripes on `n` memcached nodes, `k` of which suffice to rebuild it.
//! This module owns the byte layout of one stripe ([`StripeHeader`], [`decode_frame`]) and the
//! [`Codec`] that turns a chunk into `n` framed stripes and any `k` stripe payloads back into the
//! chunk. It does not hash: the caller verifies the rebuilt bytes against the chunk id, which is
//! how a corrupt stripe is detected (a garbage payload rebuilds to different bytes, never a panic).
//!
//! # Frame
//!
//! All integers little-endian; a 44-byte header ([`HEADER_LEN`]), then the payload.
//!
//! ```text
//! off len field
//!  0   4  magic b"LBS1"
//!  4   1  version = 1
//!  5   1  k          1..=32 (data stripes)
//!  6   1  n          k..=64 (all stripes; n - k parity stripes, 0 allowed)
//!  7   1  index      < n
//!  8   4  chunk_len  1..=4 MiB (u32)
//! 12  32  chunk id   SHA-256 of the whole chunk
//! 44   .. payload    exactly shard_len(chunk_len, k) bytes
//! ```
//!
//! [`shard_len`]`(len, k)` is `ceil(len / k)` rounded up to a multiple of 64 (reed-solomon-simd
//! needs even shard sizes; 64 keeps its SIMD loads aligned). Data stripe `i < k` holds chunk bytes
//! `[i*s, (i+1)*s)` zero-padded; parity stripe `i >= k` is reed-solomon-simd recovery shard `i - k`
//! of the `k` data payloads. Every `k`/`n` accepted here is supported by reed-solomon-simd
//! (it takes up to 32768 original and recovery shards); `n == k` means no parity.
//!
//! # Engines and performance
//!
//! [`Codec::new`] uses reed-solomon-simd's `DefaultEngine`, which picks AVX2, SSSE3, NEON or the
//! portable `NoSimd` at run time ([`simd_engine`] reports which, by the same rule).
//! [`Codec::new_scalar`] forces `NoSimd`, so a benchmark can compare both paths in one run
//! (`cargo bench -p lazyblock-cache --bench codec`).
//!
//! Measured on the development machine (AMD EPYC, AVX2, 2 shared cores, criterion steady state,
//! 512 KiB chunk, k = 4; throughput in chunk bytes per second; rebuild with data stripe 0 missing):
//!
//! | path                                   | encode     | rebuild    |
//! |----------------------------------------|------------|------------|
//! | 4 of 5, reed-solomon-simd avx2         | 12.5 GiB/s | 1.36 GiB/s |
//! | 4 of 5, reed-solomon-simd NoSimd       | 12.8 GiB/s | 0.31 GiB/s |
//! | 4 of 5, XOR over u64 words (`new`)     | 15.5 GiB/s | 13.7 GiB/s |
//! | 4 of 5, XOR byte at a time (`new_scalar`) | 1.70 GiB/s | 1.46 GiB/s |
//! | raw reed-solomon-simd avx2, 4+1 / 4+2  | 22 / 14 GiB/s (no framing) | |
//!
//! With one recovery shard reed-solomon-simd does no multiplications (its parity *is* the XOR
//! of the data shards, test `xor_parity_is_reed_solomon_recovery_shard`), so encoding is fast
//! either way; but every decode pays a fixed ~0.3 ms (its erasure-locator transform over the whole
//! field), which makes rebuilding a 512 KiB chunk 10x slower than XOR. Hence for `n == k + 1`
//! the codec computes and decodes parity itself by XOR over u64 words (same bytes, so either path
//! reads the other's stripes) and uses reed-solomon-simd for `n >= k + 2` only. Encoding is
//! above 4 GB/s either way; the decision rests on rebuild, the read path.
//!
//! Allocation dominates when the heap is cold: each encode allocates `n` frames of
//! `HEADER_LEN + s` bytes, and glibc may trim and page-fault them in again on every call
//! (measured 1.3 GB/s for both paths when the benchmark's `fast_path` check runs first).
//!
//! Encoders and decoders are kept in the [`Codec`] (one of each, taken out of a mutex for the
//! duration of a call and put back; a concurrent call that finds it taken builds its own), so a
//! call does not re-allocate reed-solomon-simd's working space.

use std::fmt;
use std::sync::Mutex;

use reed_solomon_simd::engine::{DefaultEngine, Engine, NoSimd};
use reed_solomon_simd::rate::{
    DefaultRate, DefaultRateDecoder, DefaultRateEncoder, Rate, RateDecoder, RateEncoder,
};

/// Length of the stripe header in bytes; the payload starts at this offset.
pub const HEADER_LEN: usize = 44;
/// Largest chunk a stripe set may carry: 4 MiB.
pub const MAX_CHUNK_LEN: usize = 4 << 20;
/// The frame magic, the first four bytes of every stripe.
pub const MAGIC: [u8; 4] = *b"LBS1";
/// The frame version this build writes and reads.
pub const VERSION: u8 = 1;
/// Largest number of data stripes `k`.
pub const MAX_K: usize = 32;
/// Largest number of stripes `n`.
pub const MAX_N: usize = 64;

/// What went wrong, as a small stable enum (see [`StripeError::kind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StripeErrorKind {
    /// A stripe frame is malformed: truncated, wrong magic or version, a field out of range, or
    /// a payload of the wrong length. The stripe must be treated as missing.
    Malformed,
    /// A `k`/`n` combination (or chunk length) this codec does not support.
    Unsupported,
    /// The stripes given to [`Codec::rebuild`] cannot rebuild the chunk (too few, duplicated,
    /// not of this codec's geometry).
    Insufficient,
    /// reed-solomon-simd reported an error (a bug: inputs are validated before).
    Codec,
}

/// An error of the stripe frame or the codec; each variant's message says in one line what is
/// wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StripeError {
    /// The frame is shorter than its header.
    #[error("stripe frame of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    Truncated {
        /// The frame's length.
        len: usize,
    },
    /// The frame does not start with [`MAGIC`].
    #[error("stripe frame magic {found:02x?} is not \"LBS1\"")]
    Magic {
        /// The first four bytes found.
        found: [u8; 4],
    },
    /// The frame has another version than [`VERSION`].
    #[error("stripe frame version {found} is not {VERSION}")]
    Version {
        /// The version byte found.
        found: u8,
    },
    /// `k` or `n` out of range (`1 <= k <= 32`, `k <= n <= 64`) or not supported by
    /// reed-solomon-simd.
    #[error("stripe geometry k={k} n={n} unsupported (need 1 <= k <= {MAX_K}, k <= n <= {MAX_N})")]
    Geometry {
        /// Data stripes.
        k: usize,
        /// All stripes.
        n: usize,
    },
    /// A stripe index not below `n`.
    #[error("stripe index {index} out of range for n={n}")]
    Index {
        /// The index found.
        index: usize,
        /// All stripes.
        n: usize,
    },
    /// A chunk length of 0 or above [`MAX_CHUNK_LEN`].
    #[error("chunk length {len} out of range 1..={MAX_CHUNK_LEN}")]
    ChunkLen {
        /// The length found.
        len: usize,
    },
    /// A payload whose length is not `shard_len(chunk_len, k)`.
    #[error("stripe payload of {found} bytes, expected {expected}")]
    PayloadLen {
        /// `shard_len(chunk_len, k)`.
        expected: usize,
        /// The payload's length.
        found: usize,
    },
    /// Fewer than `k` stripes given to [`Codec::rebuild`].
    #[error("chunk {chunk}: {found} stripes, need {k} to rebuild")]
    TooFew {
        /// The chunk id, hex.
        chunk: String,
        /// Stripes given.
        found: usize,
        /// Stripes needed.
        k: usize,
    },
    /// The same stripe index twice among the first `k` stripes given to [`Codec::rebuild`].
    #[error("chunk {chunk}: stripe {index} given twice")]
    Duplicate {
        /// The chunk id, hex.
        chunk: String,
        /// The repeated index.
        index: usize,
    },
    /// reed-solomon-simd refused (a bug: inputs are validated before it is called).
    #[error("reed-solomon-simd: {0}")]
    Rs(#[from] reed_solomon_simd::Error),
}

impl StripeError {
    /// The stable kind of this error.
    pub fn kind(&self) -> StripeErrorKind {
        match self {
            Self::Truncated { .. }
            | Self::Magic { .. }
            | Self::Version { .. }
            | Self::Index { .. }
            | Self::PayloadLen { .. } => StripeErrorKind::Malformed,
            Self::Geometry { .. } | Self::ChunkLen { .. } => StripeErrorKind::Unsupported,
            Self::TooFew { .. } | Self::Duplicate { .. } => StripeErrorKind::Insufficient,
            Self::Rs(_) => StripeErrorKind::Codec,
        }
    }
}

/// Payload length of every stripe of a `chunk_len`-byte chunk cut into `k` data stripes:
/// `ceil(chunk_len / k)` rounded up to a multiple of 64. `k == 0` is treated as 1.
pub fn shard_len(chunk_len: usize, k: usize) -> usize {
    chunk_len.div_ceil(k.max(1)).next_multiple_of(64)
}

/// Checks a stripe geometry: `1 <= k <= 32`, `k <= n <= 64`, and reed-solomon-simd supports
/// `k` original and `n - k` recovery shards (when `n > k`).
fn check_geometry(k: usize, n: usize) -> Result<(), StripeError> {
    let ok = (1..=MAX_K).contains(&k)
        && (k..=MAX_N).contains(&n)
        && (n == k || DefaultRate::<NoSimd>::supports(k, n - k));
    if ok {
        Ok(())
    } else {
        Err(StripeError::Geometry { k, n })
    }
}

fn check_chunk_len(len: usize) -> Result<(), StripeError> {
    if (1..=MAX_CHUNK_LEN).contains(&len) {
        Ok(())
    } else {
        Err(StripeError::ChunkLen { len })
    }
}

/// The decoded header of one stripe frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StripeHeader {
    /// Data stripes of the chunk's stripe set.
    pub k: u8,
    /// All stripes of the chunk's stripe set.
    pub n: u8,
    /// This stripe's index, `< n`; `< k` is a data stripe, else a parity stripe.
    pub index: u8,
    /// Length of the whole chunk in bytes.
    pub chunk_len: u32,
    /// The chunk id: SHA-256 of the whole chunk.
    pub id: [u8; 32],
}

impl StripeHeader {
    /// The 44 header bytes of this header (not validated: [`decode_frame`] validates).
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self.k;
        b[6] = self.n;
        b[7] = self.index;
        b[8..12].copy_from_slice(&self.chunk_len.to_le_bytes());
        b[12..44].copy_from_slice(&self.id);
        b
    }

    /// The payload length this header requires: `shard_len(chunk_len, k)`.
    pub fn payload_len(&self) -> usize {
        shard_len(self.chunk_len as usize, usize::from(self.k))
    }
}

/// Parses and validates one stripe frame: magic, version, `k`/`n`/`index` ranges, `chunk_len`
/// range and a payload of exactly `shard_len(chunk_len, k)` bytes. Returns the header and the
/// payload. Never panics.
pub fn decode_frame(bytes: &[u8]) -> Result<(StripeHeader, &[u8]), StripeError> {
    let (head, payload) = match bytes.split_first_chunk::<HEADER_LEN>() {
        Some(split) => split,
        None => return Err(StripeError::Truncated { len: bytes.len() }),
    };
    let magic = [head[0], head[1], head[2], head[3]];
    if magic != MAGIC {
        return Err(StripeError::Magic { found: magic });
    }
    if head[4] != VERSION {
        return Err(StripeError::Version { found: head[4] });
    }
    let (k, n, index) = (head[5], head[6], head[7]);
    check_geometry(usize::from(k), usize::from(n))?;
    if index >= n {
        return Err(StripeError::Index {
            index: usize::from(index),
            n: usize::from(n),
        });
    }
    let chunk_len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    check_chunk_len(chunk_len as usize)?;
    let mut id = [0u8; 32];
    id.copy_from_slice(&head[12..44]);
    let header = StripeHeader {
        k,
        n,
        index,
        chunk_len,
        id,
    };
    let expected = header.payload_len();
    if payload.len() != expected {
        return Err(StripeError::PayloadLen {
            expected,
            found: payload.len(),
        });
    }
    Ok((header, payload))
}

/// A chunk rebuilt by [`Codec::rebuild`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rebuilt {
    /// The chunk bytes, exactly `chunk_len` of them (unverified: the caller checks the hash).
    pub data: Vec<u8>,
    /// Whether a parity stripe was used (a data stripe was missing among the first `k`).
    pub used_parity: bool,
}

/// Which engine reed-solomon-simd's `DefaultEngine` picks on this CPU: `"avx2"`, `"ssse3"`,
/// `"neon"` or `"scalar"` (its `NoSimd`), decided by the same rule (AVX2, then SSSE3 on x86;
/// NEON on AArch64; else scalar).
pub fn simd_engine() -> &'static str {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        if std::is_x86_feature_detected!("avx2") {
            return "avx2";
        }
        if std::is_x86_feature_detected!("ssse3") {
            return "ssse3";
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            return "neon";
        }
    }
    "scalar"
}

/// One reed-solomon-simd encoder and decoder of engine `E`, reused across calls.
struct Rs<E: Engine> {
    enc: Mutex<Option<DefaultRateEncoder<E>>>,
    dec: Mutex<Option<DefaultRateDecoder<E>>>,
    engine: fn() -> E,
}

/// Takes the cached value out of `slot` (`None` if another call has it); poisoning is harmless
/// here (the slot holds a whole value or nothing).
fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).take()
}

fn put<T>(slot: &Mutex<Option<T>>, value: T) {
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
}

impl<E: Engine> Rs<E> {
    fn new(engine: fn() -> E) -> Self {
        Self {
            enc: Mutex::new(None),
            dec: Mutex::new(None),
            engine,
        }
    }

    /// Computes the `parity.len()` recovery shards of `data` and appends recovery shard `j` to
    /// `parity[j]`.
    fn encode(&self, data: &[&[u8]], parity: &mut [&mut Vec<u8>]) -> Result<(), StripeError> {
        let (k, r) = (data.len(), parity.len());
        let s = data.first().map_or(0, |d| d.len());
        let mut enc = match take(&self.enc) {
            Some(mut enc) => {
                enc.reset(k, r, s)?;
                enc
            }
            None => DefaultRateEncoder::new(k, r, s, (self.engine)(), None)?,
        };
        let result = (|| {
            for d in data {
                enc.add_original_shard(d)?;
            }
            let out = enc.encode()?;
            for (dst, src) in parity.iter_mut().zip(out.recovery_iter()) {
                dst.extend_from_slice(src);
            }
            Ok(())
        })();
        put(&self.enc, enc);
        result
    }

    /// Restores the missing data shards of a `k`-of-`n` set from `given` (exactly `k` distinct
    /// `(index, payload)`, at least one parity) into `out`, which holds the present data shards
    /// at their offsets already.
    fn decode(
        &self,
        k: usize,
        n: usize,
        s: usize,
        given: &[(usize, &[u8])],
        out: &mut [u8],
        chunk_len: usize,
    ) -> Result<(), StripeError> {
        let mut dec = match take(&self.dec) {
            Some(mut dec) => {
                dec.reset(k, n - k, s)?;
                dec
            }
            None => DefaultRateDecoder::new(k, n - k, s, (self.engine)(), None)?,
        };
        let result = (|| {
            for &(i, p) in given {
                if i < k {
                    dec.add_original_shard(i, p)?;
                } else {
                    dec.add_recovery_shard(i - k, p)?;
                }
            }
            let restored = dec.decode()?;
            for (i, shard) in restored.restored_original_iter() {
                copy_shard(out, i, s, shard, chunk_len);
            }
            Ok(())
        })();
        put(&self.dec, dec);
        result
    }
}

/// Copies data shard `i` (of payload length `s`) into its place in the `chunk_len`-byte chunk,
/// dropping the zero padding past the end.
fn copy_shard(out: &mut [u8], i: usize, s: usize, shard: &[u8], chunk_len: usize) {
    let start = (i * s).min(chunk_len);
    let end = ((i + 1) * s).min(chunk_len);
    if let (Some(dst), Some(src)) = (out.get_mut(start..end), shard.get(..end - start)) {
        dst.copy_from_slice(src);
    }
}

/// XORs `src` into `dst` (`dst.len() <= src.len()`), eight bytes at a time (LLVM vectorises
/// the word loop).
fn xor_words(dst: &mut [u8], src: &[u8]) {
    let src = &src[..dst.len().min(src.len())];
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (dw, sw) in (&mut d).zip(&mut s) {
        let x = u64::from_ne_bytes(dw.try_into().unwrap_or([0; 8]))
            ^ u64::from_ne_bytes(sw.try_into().unwrap_or([0; 8]));
        dw.copy_from_slice(&x.to_ne_bytes());
    }
    for (db, sb) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *db ^= *sb;
    }
}

/// XORs `src` into `dst` one byte per iteration, kept from auto-vectorisation by
/// [`std::hint::black_box`]: the deliberately scalar reference of [`xor_words`], used only by
/// [`Codec::new_scalar`].
fn xor_bytes(dst: &mut [u8], src: &[u8]) {
    for (db, sb) in dst.iter_mut().zip(src) {
        *db ^= std::hint::black_box(*sb);
    }
}

/// The parity backend of a [`Codec`].
enum Backend {
    /// `n == k`: no parity.
    None,
    /// `n == k + 1`: the parity stripe is the XOR of the data stripes (which is what
    /// reed-solomon-simd computes for one recovery shard, so the stripes are the same).
    /// `scalar` selects [`xor_bytes`] over [`xor_words`].
    Xor {
        /// Byte-at-a-time reference path.
        scalar: bool,
    },
    /// reed-solomon-simd with its run-time selected engine.
    Simd(Rs<DefaultEngine>),
    /// reed-solomon-simd with the portable scalar engine.
    Scalar(Rs<NoSimd>),
}

/// A `k`-of-`n` stripe codec: cuts a chunk into `k` data and `n - k` parity stripes
/// ([`encode`](Self::encode)) and rebuilds it from any `k` ([`rebuild`](Self::rebuild)).
/// `Send + Sync`; share one per geometry.
pub struct Codec {
    k: usize,
    n: usize,
    backend: Backend,
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Codec")
            .field("k", &self.k)
            .field("n", &self.n)
            .field("engine", &self.engine())
            .finish()
    }
}

impl Codec {
    /// A codec of `k` data stripes out of `n` (`1 <= k <= 32`, `k <= n <= 64`; `n == k` means
    /// no parity, `k == n == 1` a single copy), using the fastest engine of this CPU.
    pub fn new(k: usize, n: usize) -> Result<Codec, StripeError> {
        Self::build(k, n, false)
    }

    /// Like [`new`](Self::new) but always computes parity with reed-solomon-simd's portable
    /// scalar engine (`NoSimd`), for benchmarks that compare it with the fast path.
    pub fn new_scalar(k: usize, n: usize) -> Result<Codec, StripeError> {
        Self::build(k, n, true)
    }

    fn build(k: usize, n: usize, scalar: bool) -> Result<Codec, StripeError> {
        check_geometry(k, n)?;
        let backend = if n == k {
            Backend::None
        } else if n == k + 1 {
            Backend::Xor { scalar }
        } else if scalar {
            Backend::Scalar(Rs::new(NoSimd::new))
        } else {
            Backend::Simd(Rs::new(DefaultEngine::new))
        };
        Ok(Codec { k, n, backend })
    }

    /// Data stripes per chunk.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Stripes per chunk.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The parity path this codec uses: [`simd_engine`] for [`new`](Self::new), `"scalar"` for
    /// [`new_scalar`](Self::new_scalar), `"none"` when `n == k`.
    pub fn engine(&self) -> &'static str {
        match self.backend {
            Backend::None => "none",
            Backend::Xor { scalar: false } => "xor-u64",
            Backend::Xor { scalar: true } => "xor-bytes",
            Backend::Simd(_) => simd_engine(),
            Backend::Scalar(_) => "scalar",
        }
    }

    /// The memcached key of stripe `index` of chunk `id`: `lbs1:{k}-{n}:{hex id}:{index}`.
    pub fn key(&self, id: &[u8; 32], index: usize) -> String {
        format!("lbs1:{}-{}:{}:{index}", self.k, self.n, hex::encode(id))
    }

    /// Cuts `chunk` (1 byte to [`MAX_CHUNK_LEN`]) of id `id` into the `n` framed stripes,
    /// index order: `k` data stripes, then `n - k` parity stripes.
    pub fn encode(&self, id: &[u8; 32], chunk: &[u8]) -> Result<Vec<Vec<u8>>, StripeError> {
        check_chunk_len(chunk.len())?;
        let (k, n) = (self.k, self.n);
        let s = shard_len(chunk.len(), k);
        let mut header = StripeHeader {
            k: k as u8,
            n: n as u8,
            index: 0,
            // Fits: checked against MAX_CHUNK_LEN above.
            chunk_len: chunk.len() as u32,
            id: *id,
        };
        let mut frames = Vec::with_capacity(n);
        for i in 0..n {
            header.index = i as u8;
            let mut f = Vec::with_capacity(HEADER_LEN + s);
            f.extend_from_slice(&header.to_bytes());
            if i < k {
                let start = (i * s).min(chunk.len());
                let end = ((i + 1) * s).min(chunk.len());
                f.extend_from_slice(&chunk[start..end]);
                f.resize(HEADER_LEN + s, 0);
            }
            frames.push(f);
        }
        let (data, parity) = frames.split_at_mut(k);
        let data: Vec<&[u8]> = data.iter().map(|f| &f[HEADER_LEN..]).collect();
        let mut parity: Vec<&mut Vec<u8>> = parity.iter_mut().collect();
        match &self.backend {
            Backend::None => {}
            Backend::Xor { scalar } => {
                let xor = if *scalar { xor_bytes } else { xor_words };
                for p in parity {
                    p.extend_from_slice(data[0]);
                    for d in &data[1..] {
                        xor(&mut p[HEADER_LEN..], d);
                    }
                }
            }
            Backend::Simd(rs) => rs.encode(&data, &mut parity)?,
            Backend::Scalar(rs) => rs.encode(&data, &mut parity)?,
        }
        Ok(frames)
    }

    /// Rebuilds the `chunk_len`-byte chunk `id` from stripe payloads `(index, payload)` whose
    /// frames the caller has decoded already. Uses the first `k` entries (the rest are
    /// ignored); they must be distinct, of index `< n` and of length `shard_len(chunk_len, k)`.
    /// If they are the `k` data stripes the chunk is their concatenation (no decoding);
    /// otherwise the missing data stripes are decoded from the parity ones. The result is not
    /// verified: a corrupt payload yields wrong bytes, which the caller detects by hashing.
    pub fn rebuild(
        &self,
        id: &[u8; 32],
        chunk_len: usize,
        stripes: &[(usize, &[u8])],
    ) -> Result<Rebuilt, StripeError> {
        check_chunk_len(chunk_len)?;
        let (k, n) = (self.k, self.n);
        let s = shard_len(chunk_len, k);
        let Some(given) = stripes.get(..k) else {
            return Err(StripeError::TooFew {
                chunk: hex::encode(id),
                found: stripes.len(),
                k,
            });
        };
        let mut seen = [false; MAX_N];
        let mut data_present = 0;
        for &(index, payload) in given {
            if index >= n {
                return Err(StripeError::Index { index, n });
            }
            if payload.len() != s {
                return Err(StripeError::PayloadLen {
                    expected: s,
                    found: payload.len(),
                });
            }
            if std::mem::replace(&mut seen[index], true) {
                return Err(StripeError::Duplicate {
                    chunk: hex::encode(id),
                    index,
                });
            }
            if index < k {
                data_present += 1;
            }
        }
        let mut data = vec![0u8; chunk_len];
        for &(index, payload) in given {
            if index < k {
                copy_shard(&mut data, index, s, payload, chunk_len);
            }
        }
        let used_parity = data_present < k;
        if used_parity {
            match &self.backend {
                // Unreachable: with n == k every distinct index is a data stripe.
                Backend::None => {}
                Backend::Xor { scalar } => {
                    // Exactly one data stripe is missing: it is the XOR of the k given ones.
                    let xor = if *scalar { xor_bytes } else { xor_words };
                    if let Some(m) = (0..k).find(|&i| !seen[i]) {
                        let start = (m * s).min(chunk_len);
                        let end = ((m + 1) * s).min(chunk_len);
                        for &(_, payload) in given {
                            xor(&mut data[start..end], payload);
                        }
                    }
                }
                Backend::Simd(rs) => rs.decode(k, n, s, given, &mut data, chunk_len)?,
                Backend::Scalar(rs) => rs.decode(k, n, s, given, &mut data, chunk_len)?,
            }
        }
        Ok(Rebuilt { data, used_parity })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::seq::SliceRandom;
    use rand::{Rng, RngCore, SeedableRng};

    const GEOMETRIES: [(usize, usize); 5] = [(4, 5), (4, 6), (1, 1), (2, 2), (3, 5)];
    const LENGTHS: [usize; 7] = [1, 63, 64, 65, 512 << 10, (512 << 10) + 1, MAX_CHUNK_LEN];

    fn chunk(len: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
        v
    }

    fn id_of(seed: u8) -> [u8; 32] {
        [seed; 32]
    }

    /// Every `k`-subset of `0..n`, as index lists.
    fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
        let mut out = Vec::new();
        for mask in 0u64..(1 << n) {
            if mask.count_ones() as usize == k {
                out.push((0..n).filter(|i| mask & (1 << i) != 0).collect());
            }
        }
        out
    }

    fn decoded(frames: &[Vec<u8>]) -> Vec<(StripeHeader, &[u8])> {
        frames
            .iter()
            .map(|f| decode_frame(f).expect("valid frame"))
            .collect()
    }

    /// Encodes, checks every frame's header, and rebuilds from every k-subset in shuffled order.
    fn round_trip_all_subsets(codec: &Codec, data: &[u8], rng: &mut impl Rng) {
        let (k, n) = (codec.k(), codec.n());
        let id = id_of(9);
        let frames = codec.encode(&id, data).expect("encode");
        assert_eq!(frames.len(), n);
        let parts = decoded(&frames);
        for (i, (h, p)) in parts.iter().enumerate() {
            assert_eq!(
                (h.k, h.n, h.index, h.chunk_len, h.id),
                (k as u8, n as u8, i as u8, data.len() as u32, id)
            );
            assert_eq!(p.len(), shard_len(data.len(), k));
        }
        for subset in subsets(n, k) {
            let mut given: Vec<(usize, &[u8])> = subset.iter().map(|&i| (i, parts[i].1)).collect();
            given.shuffle(rng);
            let r = codec.rebuild(&id, data.len(), &given).expect("rebuild");
            assert!(
                r.data == data,
                "k={k} n={n} len={} subset {subset:?}",
                data.len()
            );
            assert_eq!(r.used_parity, subset.iter().any(|&i| i >= k));
        }
    }

    #[test]
    fn round_trip_every_subset_all_geometries_and_lengths() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for (k, n) in GEOMETRIES {
            for scalar in [false, true] {
                let codec = if scalar {
                    Codec::new_scalar(k, n)
                } else {
                    Codec::new(k, n)
                }
                .expect("codec");
                for len in LENGTHS {
                    // The scalar reference paths are slow: the big lengths only on the fast one.
                    if scalar && len > (512 << 10) + 1 {
                        continue;
                    }
                    round_trip_all_subsets(&codec, &chunk(len, len as u64), &mut rng);
                }
            }
        }
    }

    #[test]
    fn data_stripes_are_the_zero_padded_chunk_slices() {
        let codec = Codec::new(3, 5).expect("codec");
        let data = chunk(1000, 3);
        let frames = codec.encode(&id_of(1), &data).expect("encode");
        let s = shard_len(1000, 3);
        assert_eq!(s, 384);
        let mut joined: Vec<u8> = frames[..3]
            .iter()
            .flat_map(|f| f[HEADER_LEN..].to_vec())
            .collect();
        assert!(joined[1000..].iter().all(|&b| b == 0));
        joined.truncate(1000);
        assert_eq!(joined, data);
    }

    #[test]
    fn xor_parity_is_reed_solomon_recovery_shard() {
        // The XOR fast path for n == k + 1 writes the same parity reed-solomon-simd would, so
        // stripe sets stay readable whichever path wrote them.
        for k in [1usize, 2, 3, 4, 7, 32] {
            let data = chunk(k * 4096 + 5, k as u64);
            let s = shard_len(data.len(), k);
            for codec in [Codec::new(k, k + 1), Codec::new_scalar(k, k + 1)] {
                let codec = codec.expect("codec");
                assert!(codec.engine().starts_with("xor"));
                let frames = codec.encode(&id_of(2), &data).expect("encode");
                let mut enc = reed_solomon_simd::ReedSolomonEncoder::new(k, 1, s).expect("rs");
                for f in &frames[..k] {
                    enc.add_original_shard(&f[HEADER_LEN..]).expect("shard");
                }
                let rs = enc.encode().expect("rs encode");
                assert_eq!(rs.recovery(0), Some(&frames[k][HEADER_LEN..]), "k={k}");
            }
        }
    }

    #[test]
    fn rebuild_uses_only_the_first_k_and_concatenates_data() {
        let codec = Codec::new(4, 6).expect("codec");
        let data = chunk(70_000, 5);
        let frames = codec.encode(&id_of(3), &data).expect("encode");
        let parts = decoded(&frames);
        let garbage = vec![0xa5u8; parts[0].1.len()];
        // Four data stripes first, then a garbage parity stripe that must be ignored.
        let mut given: Vec<(usize, &[u8])> = (0..4).rev().map(|i| (i, parts[i].1)).collect();
        given.push((5, &garbage));
        let r = codec
            .rebuild(&id_of(3), data.len(), &given)
            .expect("rebuild");
        assert!(!r.used_parity);
        assert!(r.data == data);
    }

    #[test]
    fn rebuild_rejects_too_few_duplicates_bad_index_and_length() {
        let codec = Codec::new(4, 5).expect("codec");
        let data = chunk(5000, 6);
        let id = id_of(4);
        let frames = codec.encode(&id, &data).expect("encode");
        let parts = decoded(&frames);
        let p = |i: usize| (i, parts[i].1);
        let kind = |r: Result<Rebuilt, StripeError>| r.expect_err("must fail").kind();
        assert_eq!(
            kind(codec.rebuild(&id, 5000, &[p(0), p(1), p(2)])),
            StripeErrorKind::Insufficient
        );
        assert_eq!(
            kind(codec.rebuild(&id, 5000, &[p(0), p(1), p(1), p(2), p(3)])),
            StripeErrorKind::Insufficient
        );
        assert_eq!(
            kind(codec.rebuild(&id, 5000, &[p(0), p(1), p(2), (5, parts[3].1)])),
            StripeErrorKind::Malformed
        );
        assert_eq!(
            kind(codec.rebuild(&id, 5000, &[p(0), p(1), p(2), (3, &parts[3].1[1..])])),
            StripeErrorKind::Malformed
        );
        assert_eq!(
            kind(codec.rebuild(&id, 0, &[p(0), p(1), p(2), p(3)])),
            StripeErrorKind::Unsupported
        );
        // A chunk length of another shard size is a payload-length mismatch.
        assert_eq!(
            kind(codec.rebuild(&id, 50_000, &[p(0), p(1), p(2), p(3)])),
            StripeErrorKind::Malformed
        );
    }

    #[test]
    fn codec_rejects_unsupported_geometry_and_lengths() {
        for (k, n) in [(0, 0), (0, 1), (3, 2), (33, 33), (32, 65), (1, 65)] {
            assert!(
                matches!(Codec::new(k, n), Err(StripeError::Geometry { .. })),
                "k={k} n={n}"
            );
        }
        for (k, n) in [(1, 1), (32, 32), (32, 64), (1, 33), (1, 64), (16, 48)] {
            let codec = Codec::new(k, n).expect("supported");
            let data = chunk(3000, 7);
            let frames = codec.encode(&id_of(5), &data).expect("encode");
            let parts = decoded(&frames);
            // The last k stripes: as much parity as there is.
            let given: Vec<(usize, &[u8])> = (n - k..n).map(|i| (i, parts[i].1)).collect();
            let r = codec.rebuild(&id_of(5), 3000, &given).expect("rebuild");
            assert!(r.data == data, "k={k} n={n}");
        }
        let codec = Codec::new(4, 5).expect("codec");
        assert!(matches!(
            codec.encode(&id_of(0), &[]),
            Err(StripeError::ChunkLen { len: 0 })
        ));
        let too_big = vec![0u8; MAX_CHUNK_LEN + 1];
        assert!(matches!(
            codec.encode(&id_of(0), &too_big),
            Err(StripeError::ChunkLen { .. })
        ));
    }

    #[test]
    fn key_names_geometry_id_and_index() {
        let codec = Codec::new(4, 5).expect("codec");
        let mut id = [0u8; 32];
        id[0] = 0xab;
        id[31] = 0x01;
        assert_eq!(
            codec.key(&id, 3),
            format!("lbs1:4-5:ab{}01:3", "00".repeat(30))
        );
    }

    #[test]
    fn simd_engine_names_a_known_engine() {
        assert!(["avx2", "ssse3", "neon", "scalar"].contains(&simd_engine()));
        assert_eq!(Codec::new(4, 6).expect("codec").engine(), simd_engine());
        assert_eq!(Codec::new_scalar(4, 6).expect("codec").engine(), "scalar");
        assert_eq!(Codec::new(4, 5).expect("codec").engine(), "xor-u64");
        assert_eq!(
            Codec::new_scalar(4, 5).expect("codec").engine(),
            "xor-bytes"
        );
        assert_eq!(Codec::new(2, 2).expect("codec").engine(), "none");
    }

    fn valid_frame() -> Vec<u8> {
        let codec = Codec::new(4, 5).expect("codec");
        let mut frames = codec.encode(&id_of(6), &chunk(1000, 8)).expect("encode");
        frames.swap_remove(4)
    }

    fn with_byte(frame: &[u8], at: usize, value: u8) -> Vec<u8> {
        let mut f = frame.to_vec();
        f[at] = value;
        f
    }

    #[test]
    fn decode_frame_rejects_each_field_out_of_range() {
        let f = valid_frame();
        let (h, p) = decode_frame(&f).expect("valid");
        assert_eq!((h.k, h.n, h.index, h.chunk_len), (4, 5, 4, 1000));
        assert_eq!(p, &f[HEADER_LEN..]);
        let err = |bytes: &[u8]| decode_frame(bytes).expect_err("must fail");
        assert!(matches!(
            err(&with_byte(&f, 0, b'X')),
            StripeError::Magic { .. }
        ));
        assert!(matches!(
            err(&with_byte(&f, 3, b'2')),
            StripeError::Magic { .. }
        ));
        assert!(matches!(
            err(&with_byte(&f, 4, 0)),
            StripeError::Version { found: 0 }
        ));
        assert!(matches!(
            err(&with_byte(&f, 4, 2)),
            StripeError::Version { found: 2 }
        ));
        assert!(matches!(
            err(&with_byte(&f, 5, 0)),
            StripeError::Geometry { k: 0, .. }
        ));
        assert!(matches!(
            err(&with_byte(&f, 5, 33)),
            StripeError::Geometry { k: 33, .. }
        ));
        assert!(matches!(
            err(&with_byte(&f, 5, 6)),
            StripeError::Geometry { k: 6, n: 5 }
        ));
        assert!(matches!(
            err(&with_byte(&f, 6, 3)),
            StripeError::Geometry { n: 3, .. }
        ));
        assert!(matches!(
            err(&with_byte(&f, 6, 65)),
            StripeError::Geometry { n: 65, .. }
        ));
        assert!(matches!(
            err(&with_byte(&f, 7, 5)),
            StripeError::Index { index: 5, n: 5 }
        ));
        assert!(matches!(
            err(&with_byte(&f, 7, 255)),
            StripeError::Index { .. }
        ));
        let mut zero_len = f.clone();
        zero_len[8..12].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(err(&zero_len), StripeError::ChunkLen { len: 0 }));
        let mut big = f.clone();
        big[8..12].copy_from_slice(&(MAX_CHUNK_LEN as u32 + 1).to_le_bytes());
        assert!(matches!(err(&big), StripeError::ChunkLen { .. }));
        let mut other_len = f.clone();
        other_len[8..12].copy_from_slice(&5000u32.to_le_bytes());
        assert!(matches!(err(&other_len), StripeError::PayloadLen { .. }));
        assert!(matches!(
            err(&f[..f.len() - 1]),
            StripeError::PayloadLen { .. }
        ));
        let mut extra = f.clone();
        extra.push(0);
        assert!(matches!(err(&extra), StripeError::PayloadLen { .. }));
        assert!(matches!(
            err(&f[..HEADER_LEN]),
            StripeError::PayloadLen { found: 0, .. }
        ));
        assert!(matches!(
            err(&f[..HEADER_LEN - 1]),
            StripeError::Truncated { .. }
        ));
        assert!(matches!(err(&[]), StripeError::Truncated { len: 0 }));
    }

    #[test]
    fn every_header_byte_flip_errors_or_changes_the_header() {
        let f = valid_frame();
        let (h, _) = decode_frame(&f).expect("valid");
        for at in 0..HEADER_LEN {
            for bit in 0..8 {
                let g = with_byte(&f, at, f[at] ^ (1 << bit));
                if let Ok((h2, _)) = decode_frame(&g) {
                    assert_ne!(h2, h, "flip of byte {at} bit {bit} went unnoticed");
                }
            }
            for value in 0..=255u8 {
                if value == f[at] {
                    continue;
                }
                if let Ok((h2, _)) = decode_frame(&with_byte(&f, at, value)) {
                    assert_ne!(h2, h, "byte {at} = {value} went unnoticed");
                }
            }
        }
    }

    #[test]
    fn garbage_payload_rebuilds_to_different_bytes_without_panicking() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for (k, n) in [(4, 5), (4, 6), (3, 5), (2, 2)] {
            let codec = Codec::new(k, n).expect("codec");
            let data = chunk(100_000, 12);
            let id = id_of(7);
            let frames = codec.encode(&id, &data).expect("encode");
            let parts = decoded(&frames);
            for subset in subsets(n, k) {
                for &bad in &subset {
                    let mut garbage = vec![0u8; parts[bad].1.len()];
                    rng.fill_bytes(&mut garbage);
                    let given: Vec<(usize, &[u8])> = subset
                        .iter()
                        .map(|&i| (i, if i == bad { &garbage[..] } else { parts[i].1 }))
                        .collect();
                    let r = codec.rebuild(&id, data.len(), &given).expect("rebuild");
                    assert_eq!(r.data.len(), data.len());
                    assert!(r.data != data, "k={k} n={n} {subset:?} bad {bad}");
                }
            }
        }
    }

    #[test]
    fn codec_is_shareable_across_threads() {
        let codec = Codec::new(4, 6).expect("codec");
        std::thread::scope(|scope| {
            for t in 0..4u64 {
                let codec = &codec;
                scope.spawn(move || {
                    for round in 0..20 {
                        let data = chunk(10_000 + round * 77, t * 100 + round as u64);
                        let frames = codec.encode(&id_of(8), &data).expect("encode");
                        let parts = decoded(&frames);
                        let given: Vec<(usize, &[u8])> = (2..6).map(|i| (i, parts[i].1)).collect();
                        let r = codec
                            .rebuild(&id_of(8), data.len(), &given)
                            .expect("rebuild");
                        assert!(r.data == data);
                    }
                });
            }
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn prop_round_trip_random_subset(
            len in 1usize..=64 << 10,
            k in 1usize..=6,
            extra in 0usize..=3,
            seed in any::<u64>(),
        ) {
            let n = k + extra;
            let codec = Codec::new(k, n).expect("codec");
            let data = chunk(len, seed);
            let id = id_of(seed as u8);
            let frames = codec.encode(&id, &data).expect("encode");
            let mut idx: Vec<usize> = (0..n).collect();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            idx.shuffle(&mut rng);
            // A random k-subset plus possibly some extra stripes after it (ignored).
            let take = k + rng.random_range(0..=extra);
            let parts = decoded(&frames);
            let given: Vec<(usize, &[u8])> = idx[..take].iter().map(|&i| (i, parts[i].1)).collect();
            let r = codec.rebuild(&id, len, &given).expect("rebuild");
            prop_assert!(r.data == data);
            prop_assert_eq!(r.used_parity, idx[..k].iter().any(|&i| i >= k));
        }
    }
}
