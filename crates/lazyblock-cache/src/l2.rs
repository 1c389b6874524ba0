//! The AZ cache tier (L2): erasure-coded chunk stripes on a fleet of memcached nodes.
//!
//! - [`stripe`]: pure. The stripe frame (`docs/format.md` §12) and the systematic
//!   Reed-Solomon codec that splits a chunk into `k` data and `n - k` parity stripes and
//!   rebuilds it from any `k`.
//! - [`placement`]: pure. Rendezvous hashing of `(chunk, stripe)` to distinct nodes.

pub mod placement;
pub mod stripe;
