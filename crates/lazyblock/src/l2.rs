//! The AZ cache tier on the command line: the `--l2` settings (flags > environment > the
//! config file's `[l2]` table > defaults), opening an [`L2Tier`], and priming it from a build.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use clap::Args;
use futures::future::BoxFuture;
use lazyblock_cache::{L2Config, L2Tier};
use lazyblock_format::ChunkName;
use lazyblock_image::ChunkSink;
use tracing::warn;

use crate::settings::parse_duration;
use crate::settings::FileL2;

/// Flags of the AZ cache tier, accepted by every command.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct L2Args {
    /// AZ cache tier: memcached nodes, comma-separated host:port (none: no AZ tier).
    /// Config file: [l2] nodes = ["host:port", ...]
    #[arg(
        id = "l2",
        long = "l2",
        global = true,
        help_heading = "AZ cache (L2)",
        env = "LAZYBLOCK_L2",
        value_delimiter = ',',
        value_name = "HOST:PORT,..."
    )]
    pub(crate) nodes: Vec<String>,
    /// AZ cache: stripes needed to rebuild a chunk [default: 4]
    #[arg(
        id = "l2_k",
        long = "l2-k",
        global = true,
        help_heading = "AZ cache (L2)",
        value_name = "K"
    )]
    pub(crate) k: Option<usize>,
    /// AZ cache: stripes written per chunk, each on its own node; n - k may be lost [default: 5]
    #[arg(
        id = "l2_n",
        long = "l2-n",
        global = true,
        help_heading = "AZ cache (L2)",
        value_name = "N"
    )]
    pub(crate) n: Option<usize>,
    /// AZ cache: bound on each stripe request; requests are never retried [default: 50ms]
    #[arg(
        id = "l2_timeout",
        long = "l2-timeout",
        global = true,
        help_heading = "AZ cache (L2)",
        value_parser = parse_duration,
        value_name = "DURATION"
    )]
    pub(crate) timeout: Option<Duration>,
}

/// The AZ tier's settings, or `None` when no node is configured.
pub(crate) fn resolve(args: &L2Args, file: Option<&FileL2>) -> Result<Option<L2Config>> {
    let nodes: Vec<String> = if args.nodes.is_empty() {
        file.and_then(|f| f.nodes.clone()).unwrap_or_default()
    } else {
        args.nodes.clone()
    };
    let nodes: Vec<String> = nodes
        .into_iter()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect();
    if nodes.is_empty() {
        return Ok(None);
    }
    let defaults = L2Config::default();
    let timeout = crate::settings::duration_setting(
        args.timeout,
        file.and_then(|f| f.timeout.as_deref()),
        "[l2] timeout",
        defaults.timeout,
    )?;
    Ok(Some(L2Config {
        nodes,
        k: args.k.or(file.and_then(|f| f.k)).unwrap_or(defaults.k),
        n: args.n.or(file.and_then(|f| f.n)).unwrap_or(defaults.n),
        timeout,
        fill_backlog: file
            .and_then(|f| f.fill_backlog)
            .unwrap_or(defaults.fill_backlog),
        ..defaults
    }))
}

/// Opens the AZ tier: checks the settings (connections are made on first use).
pub(crate) fn open(config: L2Config) -> Result<Arc<L2Tier>> {
    let tier = L2Tier::new(config)?;
    if !tier.stripes_distinct() {
        let c = tier.config();
        warn!(
            nodes = c.nodes.len(),
            n = c.n,
            "fewer AZ cache nodes than stripes per chunk: losing one node can lose more than n - k stripes"
        );
    }
    Ok(Arc::new(tier))
}

/// What priming did.
#[derive(Debug, Default)]
pub(crate) struct PrimeStats {
    /// Chunks whose stripes were stored (at least `k` of `n`).
    primed: AtomicU64,
    /// Chunks the tier did not take.
    failed: AtomicU64,
    warned: AtomicBool,
}

impl PrimeStats {
    /// Chunks the tier did not take.
    pub(crate) fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// `primed the AZ cache with N chunks (M not taken)`.
    pub(crate) fn line(&self) -> String {
        format!(
            "primed the AZ cache with {} chunks ({} not taken)",
            self.primed.load(Ordering::Relaxed),
            self.failed()
        )
    }
}

/// A build's [`ChunkSink`] that writes every stored chunk's stripes to the AZ tier. A chunk the
/// tier does not take is counted and warned about once; it never fails the build (the origin
/// holds every chunk, the AZ tier is a cache).
#[derive(Debug)]
pub(crate) struct Primer {
    tier: Arc<L2Tier>,
    pub(crate) stats: Arc<PrimeStats>,
}

impl Primer {
    pub(crate) fn new(tier: Arc<L2Tier>) -> Self {
        Self {
            tier,
            stats: Arc::default(),
        }
    }
}

impl ChunkSink for Primer {
    fn stored(&self, name: ChunkName, ciphertext: Bytes) -> BoxFuture<'static, ()> {
        let tier = Arc::clone(&self.tier);
        let stats = Arc::clone(&self.stats);
        Box::pin(async move {
            match tier.put(name.as_bytes(), &ciphertext).await {
                Ok(_) => {
                    stats.primed.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    if !stats.warned.swap(true, Ordering::Relaxed) {
                        warn!(chunk = %name.short(), "AZ cache did not take a chunk (the build goes on): {e}");
                    }
                }
            }
        })
    }
}
