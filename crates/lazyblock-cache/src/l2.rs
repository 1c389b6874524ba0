//! The AZ cache tier (L2): erasure-coded chunk stripes on a fleet of memcached nodes.
//!
//! - [`stripe`]: pure. The stripe frame (`docs/format.md` §12) and the systematic
//!   Reed-Solomon codec that splits a chunk into `k` data and `n - k` parity stripes and
//!   rebuilds it from any `k`.
//! - [`placement`]: pure. Rendezvous hashing of `(chunk, stripe)` to distinct nodes.
//! - [`memcache`]: a minimal memcached text-protocol client (`get`, `set`) with a pure,
//!   fuzzed response parser and per-node connection pools.
//! - [`tier`]: [`L2Tier`], the executor: read all `n` stripes at once, rebuild from the first
//!   `k`, verify; background fills, bounded.
//! - [`fleet`]: [`LocalFleet`], memcached processes on loopback for tests and benchmarks.
//!
//! The read of chunk `c` (`k` = 4, `n` = 5):
//!
//! ```text
//! nodes_for(c) ─► 5 × get(lbs1:4-5:<c>:<i>) at once ─► first 4 valid frames ─► rebuild
//!   ─► SHA-256 == c ? Hit (cancel the 5th) : wait for the 5th, try the other 4-subsets
//!   ─► none verifies: Corrupt (caller goes to the origin; its fill overwrites the stripes)
//! fewer than 4 valid frames: Miss
//! ```

pub mod fleet;
pub mod memcache;
pub mod placement;
pub mod stripe;
pub mod tier;

pub use fleet::{FleetOptions, LocalFleet};
pub use tier::{L2Config, L2Get, L2Stats, L2Tier};
