//! Worker chunk cache of lazyblock.
//!
//! This crate owns the cache that sits between the agent's read path and the origin (and AZ)
//! stores. Today it holds only the eviction [`policy`]: a pure, byte-weighted, scan-resistant
//! S3-FIFO ([`S3Fifo`]) that decides which chunks stay resident. It does no I/O, reads no clock
//! and draws no randomness; the memory and disk tiers (next) drive it: they ask it what to admit
//! and delete from their storage the keys it reports evicted.

pub mod policy;

pub use policy::S3Fifo;
