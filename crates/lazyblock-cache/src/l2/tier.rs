//! [`L2Tier`]: the executor of the AZ cache tier. It places a chunk's `n` stripes on memcached
//! nodes, reads them all at once and rebuilds from the first `k`, and fills the tier in the
//! background after origin fetches.
//!
//! Invariants:
//! - Nothing leaves [`L2Tier::get`] unverified: a rebuilt chunk must hash to its id
//!   (`SHA-256(chunk) == id`, the definition of [`ChunkId`]); if it does not, every other
//!   `k`-subset of the stripes that arrived is tried, and if none verifies the answer is
//!   [`L2Get::Corrupt`] (the caller goes to the origin, whose fill then overwrites the bad
//!   stripes). A subset that does verify is served and the chunk rewritten in the background.
//! - Hashing is the largest single cost of a hit: SHA-256 of 512 KiB takes about 300 µs on the
//!   development machine (sha2 and aws-lc alike, with SHA-NI), as much as the five GETs on
//!   loopback. It runs inline on the reading task: splitting it off would add a hand-off to
//!   every read and save nothing, since one chunk's hash cannot be parallelised.
//! - No retries: each stripe is one request with one timeout. The read completes when `k` good
//!   stripes are in, without waiting for a slow or dead node; the requests still out are
//!   cancelled (their connections closed).
//! - Bounded: at most `fill_backlog` chunk fills are in flight; beyond that a fill is dropped and
//!   counted, never queued without bound.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use super::memcache::Node;
use super::placement::Placement;
use super::stripe::{decode_frame, shard_len, Codec, HEADER_LEN};
use crate::error::CacheError;
use crate::ChunkId;

/// How the AZ cache tier is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L2Config {
    /// The memcached nodes, `host:port`. A node's identity for placement is this string.
    pub nodes: Vec<String>,
    /// Stripes needed to rebuild a chunk.
    pub k: usize,
    /// Stripes written per chunk (`n - k` may be lost or late).
    pub n: usize,
    /// Bound on each stripe request (connect included). No request is retried.
    pub timeout: Duration,
    /// Chunk fills (background writes after an origin fetch) in flight at most; more are dropped.
    pub fill_backlog: usize,
    /// Expiry of stored stripes in seconds (0: kept until memcached evicts them).
    pub ttl_secs: u32,
    /// Idle connections kept per node.
    pub max_idle_per_node: usize,
}

impl Default for L2Config {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            k: 4,
            n: 5,
            timeout: Duration::from_millis(50),
            fill_backlog: 64,
            ttl_secs: 0,
            max_idle_per_node: 64,
        }
    }
}

/// The answer of [`L2Tier::get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L2Get {
    /// The verified chunk, and whether a parity stripe was needed to rebuild it.
    Hit {
        /// The chunk's bytes.
        data: Bytes,
        /// Whether a parity stripe stood in for a missing, late or bad data stripe.
        rebuilt: bool,
    },
    /// Fewer than `k` stripes were found (evicted, never written, nodes down).
    Miss,
    /// At least `k` stripes arrived but no `k` of them rebuild a chunk with the right hash.
    Corrupt,
}

/// Counters of an [`L2Tier`], for metrics. All are totals since start except `fill_backlog`.
#[derive(Debug, Default)]
pub struct L2Stats {
    /// Reads answered with a verified chunk.
    pub hits: AtomicU64,
    /// Reads that found fewer than `k` stripes.
    pub misses: AtomicU64,
    /// Reads whose first `k` stripes did not rebuild the chunk (a bad stripe). Served from another
    /// `k`-subset (and the chunk rewritten) or, failing that, not at all; never the bad bytes.
    pub corrupt: AtomicU64,
    /// Hits rebuilt with a parity stripe, because a data stripe was lost, bad, or only later
    /// than the parity (a read takes the first `k` valid stripes, whichever they are).
    pub rebuilds: AtomicU64,
    /// Stripes a node answered "not found" for.
    pub stripes_missing: AtomicU64,
    /// Stripe requests that failed (connection refused or broken, timeout, refusal).
    pub stripes_failed: AtomicU64,
    /// Stripe requests cancelled before they answered: `k` good stripes had already arrived,
    /// or too many had failed for `k` to be reached.
    pub stripes_late: AtomicU64,
    /// Stripes whose frame was malformed or described another chunk or layout.
    pub stripes_invalid: AtomicU64,
    /// Chunk fills started.
    pub fills: AtomicU64,
    /// Chunk fills dropped because `fill_backlog` fills were in flight.
    pub fills_dropped: AtomicU64,
    /// Stripe writes that failed.
    pub fill_stripe_errors: AtomicU64,
    /// Chunk fills in flight now.
    pub fill_backlog: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The AZ cache tier. Share it in an [`Arc`]; [`fill`](Self::fill) needs one.
pub struct L2Tier {
    config: L2Config,
    nodes: Vec<Node>,
    placement: Placement,
    codec: Codec,
    stats: L2Stats,
}

impl std::fmt::Debug for L2Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L2Tier")
            .field("config", &self.config)
            .finish()
    }
}

/// The most `k`-subsets tried after the first rebuild fails to verify.
const MAX_SUBSETS: usize = 64;

impl L2Tier {
    /// Checks the settings and sets up the nodes (connections are made on first use).
    pub fn new(config: L2Config) -> Result<Self, CacheError> {
        if config.nodes.is_empty() {
            return Err(CacheError::invalid("AZ cache: no memcached nodes given"));
        }
        let mut seen = std::collections::HashSet::new();
        for node in &config.nodes {
            if node.is_empty() || node.contains(char::is_whitespace) || !node.contains(':') {
                return Err(CacheError::invalid(format!(
                    "AZ cache: node {node:?} is not host:port"
                )));
            }
            if !seen.insert(node) {
                return Err(CacheError::invalid(format!(
                    "AZ cache: node {node} is listed twice"
                )));
            }
        }
        if config.timeout.is_zero() {
            return Err(CacheError::invalid(
                "AZ cache: the request timeout must be above zero",
            ));
        }
        let codec = Codec::new(config.k, config.n).map_err(|e| {
            CacheError::invalid(format!("AZ cache: k={} n={}: {e}", config.k, config.n))
        })?;
        let placement = Placement::new(&config.nodes)
            .map_err(|e| CacheError::invalid(format!("AZ cache: {e}")))?;
        let nodes = config
            .nodes
            .iter()
            .map(|a| Node::new(a.clone(), config.max_idle_per_node, config.timeout))
            .collect();
        Ok(Self {
            config,
            nodes,
            placement,
            codec,
            stats: L2Stats::default(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &L2Config {
        &self.config
    }

    /// Whether every stripe of a chunk lands on its own node (`nodes >= n`). If not, one node
    /// loss can cost more than one stripe.
    pub fn stripes_distinct(&self) -> bool {
        self.placement.distinct(self.config.n)
    }

    /// The counters.
    pub fn stats(&self) -> &L2Stats {
        &self.stats
    }

    /// The node (`host:port`) each stripe of chunk `id` goes to, in stripe order.
    pub fn placement_of(&self, id: &ChunkId) -> Vec<&str> {
        self.placement
            .nodes_for(id, self.config.n)
            .into_iter()
            .map(|i| self.nodes[i].addr())
            .collect()
    }

    /// The memcached key of stripe `index` of chunk `id`.
    pub fn key_of(&self, id: &ChunkId, index: usize) -> String {
        self.codec.key(id, index)
    }

    /// Reads chunk `id` of `len` bytes: all `n` stripe requests at once, rebuilt from the first
    /// `k` good ones, verified.
    #[tracing::instrument(level = "debug", name = "l2_get", skip_all, fields(chunk = %hex::encode(&id[..6])))]
    pub async fn get(self: &Arc<Self>, id: &ChunkId, len: usize) -> L2Get {
        let k = self.config.k;
        let max_value = HEADER_LEN + shard_len(len, k);
        let mut pending: FuturesUnordered<_> = self
            .placement
            .nodes_for(id, self.config.n)
            .into_iter()
            .enumerate()
            .map(|(index, node)| {
                let key = self.codec.key(id, index);
                let node = &self.nodes[node];
                async move {
                    let result = node.get(&key, max_value, self.config.timeout).await;
                    (index, node, result)
                }
            })
            .collect();
        let mut good: Vec<(usize, Bytes)> = Vec::with_capacity(self.config.n);
        let mut tried_first = false;
        while let Some((index, node, result)) = pending.next().await {
            match result {
                Ok(Some(frame)) => {
                    if self.frame_matches(&frame, id, len, index) {
                        good.push((index, frame));
                    } else {
                        bump(&self.stats.stripes_invalid);
                    }
                }
                Ok(None) => bump(&self.stats.stripes_missing),
                Err(e) => {
                    bump(&self.stats.stripes_failed);
                    debug!(
                        node = node.addr(),
                        stripe = index,
                        "stripe read failed: {e}"
                    );
                }
            }
            if good.len() == k && !tried_first {
                tried_first = true;
                if let Some(hit) = self.try_rebuild(id, len, &good) {
                    self.stats
                        .stripes_late
                        .fetch_add(pending.len() as u64, Ordering::Relaxed);
                    return hit;
                }
            }
            if good.len() + pending.len() < k {
                self.stats
                    .stripes_late
                    .fetch_add(pending.len() as u64, Ordering::Relaxed);
                break;
            }
        }
        if !tried_first {
            bump(&self.stats.misses);
            return L2Get::Miss;
        }
        // The first k did not verify: try the other k-subsets of what arrived.
        for (tried, subset) in subsets(good.len(), k).enumerate() {
            if tried >= MAX_SUBSETS {
                break;
            }
            if subset.iter().copied().eq(0..k) {
                continue;
            }
            let pick: Vec<(usize, Bytes)> = subset.iter().map(|&i| good[i].clone()).collect();
            if let Some(hit) = self.try_rebuild(id, len, &pick) {
                warn!(chunk = %hex::encode(&id[..6]), "AZ cache: a bad stripe was left out of the rebuild; rewriting the chunk");
                bump(&self.stats.corrupt);
                // Rewrite every stripe, or each later read pays the failed rebuild again.
                if let L2Get::Hit { data, .. } = &hit {
                    self.fill(*id, data.clone());
                }
                return hit;
            }
        }
        warn!(chunk = %hex::encode(&id[..6]), stripes = good.len(), "AZ cache: stripes do not rebuild the chunk; not served");
        bump(&self.stats.corrupt);
        L2Get::Corrupt
    }

    fn frame_matches(&self, frame: &[u8], id: &ChunkId, len: usize, index: usize) -> bool {
        match decode_frame(frame) {
            Ok((h, _)) => {
                usize::from(h.k) == self.config.k
                    && usize::from(h.n) == self.config.n
                    && usize::from(h.index) == index
                    && h.chunk_len as usize == len
                    && &h.id == id
            }
            Err(_) => false,
        }
    }

    /// Rebuilds from `stripes`; the chunk if it hashes to `id`.
    fn try_rebuild(&self, id: &ChunkId, len: usize, stripes: &[(usize, Bytes)]) -> Option<L2Get> {
        let payloads: Vec<(usize, &[u8])> = stripes
            .iter()
            .map(|(i, frame)| (*i, &frame[HEADER_LEN..]))
            .collect();
        let rebuilt = self.codec.rebuild(id, len, &payloads).ok()?;
        if Sha256::digest(&rebuilt.data).as_slice() != id {
            return None;
        }
        bump(&self.stats.hits);
        if rebuilt.used_parity {
            bump(&self.stats.rebuilds);
        }
        Some(L2Get::Hit {
            data: Bytes::from(rebuilt.data),
            rebuilt: rebuilt.used_parity,
        })
    }

    /// Writes the `n` stripes of a verified chunk and waits for the answers. Returns how many
    /// were stored; fewer than `k` is an [`Unavailable`](crate::CacheErrorKind::Unavailable)
    /// error (the chunk would not be readable).
    pub async fn put(&self, id: &ChunkId, data: &[u8]) -> Result<usize, CacheError> {
        let stripes = self
            .codec
            .encode(id, data)
            .map_err(|e| CacheError::invalid(format!("AZ cache: cannot encode chunk: {e}")))?;
        let placement = self.placement.nodes_for(id, self.config.n);
        let writes = stripes.iter().enumerate().map(|(index, frame)| {
            let node = &self.nodes[placement[index]];
            let key = self.codec.key(id, index);
            async move {
                let r = node
                    .set(&key, frame, self.config.ttl_secs, self.config.timeout)
                    .await;
                (node, r)
            }
        });
        let mut stored = 0;
        let mut last_error = None;
        for (node, result) in futures::future::join_all(writes).await {
            match result {
                Ok(()) => stored += 1,
                Err(e) => {
                    bump(&self.stats.fill_stripe_errors);
                    last_error = Some(format!("{}: {e}", node.addr()));
                }
            }
        }
        if stored < self.config.k {
            return Err(CacheError::Unavailable(format!(
                "stored {stored} of {} stripes (need {}); last error: {}",
                self.config.n,
                self.config.k,
                last_error.unwrap_or_default()
            )));
        }
        Ok(stored)
    }

    /// Writes a chunk's stripes in the background (after an origin fetch). Dropped, and
    /// counted, if `fill_backlog` fills are already in flight. Must be called inside a tokio
    /// runtime.
    pub fn fill(self: &Arc<Self>, id: ChunkId, data: Bytes) {
        let backlog = self.stats.fill_backlog.fetch_add(1, Ordering::AcqRel);
        if backlog >= self.config.fill_backlog as u64 {
            self.stats.fill_backlog.fetch_sub(1, Ordering::AcqRel);
            bump(&self.stats.fills_dropped);
            return;
        }
        bump(&self.stats.fills);
        let this = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = this.put(&id, &data).await {
                debug!(chunk = %hex::encode(&id[..6]), "AZ cache fill incomplete: {e}");
            }
            this.stats.fill_backlog.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

impl L2Tier {
    /// Waits until no fill is in flight, or `limit` passed; returns whether they all finished.
    /// For an agent that stops (fills still running die with the process) and for tests.
    pub async fn wait_for_fills(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.stats.fill_backlog.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Every `k`-subset of `0..m`, in lexicographic order.
fn subsets(m: usize, k: usize) -> impl Iterator<Item = Vec<usize>> {
    let mut current: Option<Vec<usize>> = (k <= m).then(|| (0..k).collect());
    std::iter::from_fn(move || {
        let out = current.clone()?;
        // Advance: find the rightmost position that can move right.
        let mut next = out.clone();
        let mut i = k;
        loop {
            if i == 0 {
                current = None;
                break;
            }
            i -= 1;
            if next[i] < m - k + i {
                next[i] += 1;
                for j in i + 1..k {
                    next[j] = next[j - 1] + 1;
                }
                current = Some(next);
                break;
            }
        }
        Some(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_enumerate_all() {
        let all: Vec<Vec<usize>> = subsets(5, 4).collect();
        assert_eq!(all.len(), 5);
        assert_eq!(all[0], vec![0, 1, 2, 3]);
        assert_eq!(all[4], vec![1, 2, 3, 4]);
        assert_eq!(subsets(6, 3).count(), 20);
        assert_eq!(subsets(3, 3).count(), 1);
        assert_eq!(subsets(2, 3).count(), 0);
    }

    #[test]
    fn config_is_checked() {
        let ok = L2Config {
            nodes: vec!["127.0.0.1:1".into()],
            ..L2Config::default()
        };
        assert!(L2Tier::new(ok.clone()).is_ok());
        for bad in [
            L2Config {
                nodes: vec![],
                ..ok.clone()
            },
            L2Config {
                nodes: vec!["a:1".into(), "a:1".into()],
                ..ok.clone()
            },
            L2Config {
                nodes: vec!["nocolon".into()],
                ..ok.clone()
            },
            L2Config {
                k: 6,
                n: 5,
                ..ok.clone()
            },
            L2Config { k: 0, ..ok.clone() },
            L2Config {
                timeout: Duration::ZERO,
                ..ok.clone()
            },
        ] {
            let err = L2Tier::new(bad.clone()).expect_err("invalid");
            assert_eq!(
                err.kind(),
                crate::CacheErrorKind::InvalidInput,
                "{bad:?}: {err}"
            );
        }
    }
}
