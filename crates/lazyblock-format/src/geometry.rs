//! Chunk geometry: the fixed-size chunk grid laid over an image.

use std::ops::Range;

use crate::error::FormatError;
use crate::Result;

/// A chunk size: a power of two from 64 KiB to 4 MiB.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ChunkSize(u32);

impl ChunkSize {
    /// Smallest chunk size accepted (64 KiB).
    pub const MIN_LOG2: u8 = 16;
    /// Largest chunk size accepted (4 MiB).
    pub const MAX_LOG2: u8 = 22;
    /// The default, 512 KiB, as in the paper.
    pub const DEFAULT: ChunkSize = ChunkSize(512 * 1024);

    /// Validates a size in bytes.
    pub fn new(bytes: u64) -> Result<Self> {
        let ok =
            bytes.is_power_of_two() && (1 << Self::MIN_LOG2..=1 << Self::MAX_LOG2).contains(&bytes);
        if !ok {
            return Err(FormatError::invalid(format!(
                "chunk size {bytes} must be a power of two from 64 KiB (65536) to 4 MiB (4194304)"
            )));
        }
        Ok(Self(bytes as u32))
    }

    /// From the log2 stored in a manifest.
    pub fn from_log2(log2: u8) -> Result<Self> {
        if !(Self::MIN_LOG2..=Self::MAX_LOG2).contains(&log2) {
            return Err(FormatError::corrupt(format!(
                "chunk size 2^{log2} is out of range"
            )));
        }
        Ok(Self(1 << log2))
    }

    /// Size in bytes.
    pub const fn bytes(self) -> u32 {
        self.0
    }
    /// Size in bytes, as `usize` for buffers.
    pub const fn as_usize(self) -> usize {
        self.0 as usize
    }
    /// log2 of the size.
    pub const fn log2(self) -> u8 {
        self.0.trailing_zeros() as u8
    }
}

impl Default for ChunkSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// An image's size cut into chunks; the last chunk may be short.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Geometry {
    image_size: u64,
    chunk_size: ChunkSize,
}

impl Geometry {
    /// Largest image accepted: 16 TiB.
    pub const MAX_IMAGE_SIZE: u64 = 1 << 44;

    /// A geometry for an image of `image_size` bytes (at least one byte).
    pub fn new(image_size: u64, chunk_size: ChunkSize) -> Result<Self> {
        if image_size == 0 || image_size > Self::MAX_IMAGE_SIZE {
            return Err(FormatError::invalid(format!(
                "image size {image_size} must be from 1 byte to 16 TiB"
            )));
        }
        Ok(Self {
            image_size,
            chunk_size,
        })
    }

    /// Image size in bytes.
    pub const fn image_size(&self) -> u64 {
        self.image_size
    }
    /// Chunk size.
    pub const fn chunk_size(&self) -> ChunkSize {
        self.chunk_size
    }
    /// How many chunks cover the image.
    pub const fn chunk_count(&self) -> u64 {
        self.image_size.div_ceil(self.chunk_size.0 as u64)
    }
    /// The byte range of chunk `index` (clipped at the image end).
    pub fn chunk_range(&self, index: u64) -> Range<u64> {
        let start = index.saturating_mul(self.chunk_size.0 as u64);
        let end = start
            .saturating_add(self.chunk_size.0 as u64)
            .min(self.image_size);
        start.min(self.image_size)..end
    }
    /// Length in bytes of chunk `index`.
    pub fn chunk_len(&self, index: u64) -> usize {
        let r = self.chunk_range(index);
        (r.end - r.start) as usize
    }
    /// The chunk holding byte `offset` and the offset within it.
    pub const fn locate(&self, offset: u64) -> (u64, usize) {
        let log2 = self.chunk_size.0.trailing_zeros();
        (
            offset >> log2,
            (offset & (self.chunk_size.0 as u64 - 1)) as usize,
        )
    }
}

/// Whether every byte of `data` is zero.
pub fn is_zero(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(64);
    for block in blocks.by_ref() {
        if block.iter().fold(0u8, |acc, b| acc | b) != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes() {
        assert!(ChunkSize::new(65536).is_ok());
        assert!(ChunkSize::new(4 << 20).is_ok());
        for bad in [0, 1, 32768, 8 << 20, 65537, 3 << 16] {
            assert!(ChunkSize::new(bad).is_err(), "{bad}");
        }
        assert_eq!(ChunkSize::DEFAULT.log2(), 19);
        assert_eq!(ChunkSize::from_log2(19).expect("valid"), ChunkSize::DEFAULT);
        assert!(ChunkSize::from_log2(15).is_err());
    }

    #[test]
    fn geometry_edges() {
        let cs = ChunkSize::new(65536).expect("valid");
        let g = Geometry::new(65536 * 2 + 10, cs).expect("valid");
        assert_eq!(g.chunk_count(), 3);
        assert_eq!(g.chunk_range(2), 131072..131082);
        assert_eq!(g.chunk_len(2), 10);
        assert_eq!(g.chunk_len(1), 65536);
        assert_eq!(g.locate(65537), (1, 1));
        assert!(Geometry::new(0, cs).is_err());
        let exact = Geometry::new(65536 * 4, cs).expect("valid");
        assert_eq!(exact.chunk_count(), 4);
        assert_eq!(exact.chunk_len(3), 65536);
    }

    #[test]
    fn zero_detection() {
        let mut v = vec![0u8; 1000];
        assert!(is_zero(&v));
        v[999] = 1;
        assert!(!is_zero(&v));
        v[999] = 0;
        v[3] = 1;
        assert!(!is_zero(&v));
        assert!(is_zero(&[]));
    }
}
