//! Worker chunk cache of lazyblock.
//!
//! This crate owns the cache that sits between the agent's read path and the origin (and AZ)
//! stores:
//!
//! - [`policy`]: the pure, byte-weighted, scan-resistant S3-FIFO ([`S3Fifo`]) that decides which
//!   chunks stay resident. It does no I/O, reads no clock and draws no randomness.
//! - [`mem`]: [`MemTier`], chunks in memory, byte-bounded, thread-safe.
//! - [`disk`]: [`DiskTier`], chunk files in a directory shared by the agent processes of a
//!   machine, verified on every read, with cross-process per-chunk locks ([`ChunkLock`]) so that
//!   concurrent misses fetch a chunk from the origin once.
//! - [`error`]: [`CacheError`] and its stable [`CacheErrorKind`].
//!
//! Both tiers are synchronous (the agent calls the disk tier from `spawn_blocking`), drive the
//! policy, and delete from their storage the keys it reports evicted. Chunks are immutable and
//! content-addressed by [`ChunkId`], so a put of a resident id is a no-op.
//!
//! The agent's fetch path, for a chunk `id`:
//!
//! ```text
//! mem.get(id) ─hit─► done
//!   └─miss─► disk.get(id) ─hit─► mem.put ─► done
//!              └─miss─► lock = disk.lock(id); disk.get(id) again (another process may have
//!                       fetched it) ─miss─► fetch from origin, verify ─► disk.put ─► mem.put
//!                       drop(lock)
//! ```

pub mod admission;
pub mod disk;
pub mod error;
pub mod l2;
pub mod mem;
pub mod policy;

pub use admission::{StartSlot, StartSlots};
pub use disk::{ChunkLock, Clock, DiskOptions, DiskStats, DiskTier, RescanReport, Verifier};
pub use error::{CacheError, CacheErrorKind};
pub use l2::{L2Config, L2Get, L2Stats, L2Tier};
pub use mem::{MemStats, MemTier};
pub use policy::S3Fifo;

/// A chunk's id: the SHA-256 of its (ciphertext) bytes, as the store names it.
pub type ChunkId = [u8; 32];
