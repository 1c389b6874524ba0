//! The chunk fetch path shared by every device of an agent process: worker cache (memory, then
//! disk), the AZ cache tier (L2, when configured), single flight, bounded origin fetches with
//! two priorities, verification, background L2 fills.
//!
//! Invariants:
//! - Every tier holds ciphertext, and nothing leaves this module unverified: origin bytes are
//!   checked (`SHA-256(bytes) == name`, length) before they are cached or returned, disk-tier
//!   bytes are checked by the disk tier on every load, memory-tier bytes were checked on entry.
//! - Concurrent misses of one chunk in this process share one flight (a spawned task, so a
//!   caller that goes away does not strand the others). Across processes the flight holds the
//!   disk tier's lock for the chunk and re-checks the disk tier under it, so agents sharing a
//!   cache directory fetch a chunk from the origin once.
//! - At most `demand_fetches` demand and `prefetch_fetches` prefetch origin requests are in
//!   flight. Prefetches have their own permits, so they never hold a slot a demand read needs;
//!   a demand read that joins a queued prefetch promotes it to the demand pool.
//! - A broken disk tier (unwritable, full) costs speed, never a read: the fetcher warns and
//!   serves from memory and the origin.
//! - The AZ tier is asked before an origin slot is taken (an L2 hit costs well under a
//!   millisecond and no origin load). Its answers are verified by the tier itself; a miss or a
//!   corrupt answer goes to the origin, and the origin's verified bytes are written back to the
//!   AZ tier in the background (bounded, see `L2Tier::fill`). An AZ tier that is down costs
//!   one timeout-bounded round of requests per miss, never a read.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use lazyblock_cache::{CacheErrorKind, DiskTier, L2Get, L2Tier, MemTier};
use lazyblock_format::{chunk_name_of, ChunkName, RootId};
use lazyblock_store::{ChunkStore, StoreErrorKind};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use crate::metrics::{DeviceMetrics, Tier};

/// How the fetcher is set up.
#[derive(Debug, Clone)]
pub struct FetcherConfig {
    /// Bytes of chunks the memory tier holds.
    pub mem_bytes: u64,
    /// The disk tier's directory and size; `None` runs without one.
    pub disk: Option<(PathBuf, u64)>,
    /// Demand (guest) origin fetches in flight at most.
    pub demand_fetches: usize,
    /// Prefetch (read-ahead, profile) origin fetches in flight at most.
    pub prefetch_fetches: usize,
    /// An origin fetch that takes longer fails (the store's own retries happen inside it).
    pub origin_timeout: Duration,
    /// The AZ cache tier, asked after the worker cache and before the origin.
    pub l2: Option<Arc<L2Tier>>,
}

impl Default for FetcherConfig {
    fn default() -> Self {
        Self {
            mem_bytes: 256 << 20,
            disk: None,
            demand_fetches: 64,
            prefetch_fetches: 32,
            origin_timeout: Duration::from_secs(60),
            l2: None,
        }
    }
}

/// Who wants a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// A guest read is waiting.
    Demand,
    /// Read-ahead or profile replay.
    Prefetch,
}

/// Why a chunk could not be produced.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct FetchError {
    /// Whether the chunk was corrupt everywhere we looked (otherwise: unreachable, missing).
    pub corrupt: bool,
    /// One line for the log.
    pub message: String,
}

/// One chunk to fetch: where it lives and what it must look like.
#[derive(Debug, Clone)]
pub struct ChunkRequest {
    /// The root the chunk is stored under at the origin.
    pub root: RootId,
    /// Its name, `SHA-256` of its ciphertext.
    pub name: ChunkName,
    /// Its length in bytes.
    pub len: usize,
}

type FlightResult = Result<(Bytes, Tier), FetchError>;

struct Flight {
    result: Shared<BoxFuture<'static, FlightResult>>,
    urgent: Arc<Notify>,
}

/// The shared fetch path. Cheap to share: wrap it in an [`Arc`].
pub struct ChunkFetcher {
    origin: Arc<dyn ChunkStore>,
    mem: MemTier,
    disk: Option<DiskTier>,
    disk_disabled: AtomicBool,
    disk_full_warned: AtomicBool,
    inflight: Mutex<HashMap<ChunkName, Flight>>,
    demand: Arc<Semaphore>,
    prefetch: Arc<Semaphore>,
    config: FetcherConfig,
}

impl std::fmt::Debug for ChunkFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkFetcher")
            .field("origin", &self.origin.url())
            .field("config", &self.config)
            .finish()
    }
}

fn verify_chunk(id: &[u8; 32], data: &[u8]) -> bool {
    chunk_name_of(data).as_bytes() == id
}

impl ChunkFetcher {
    /// Sets up the tiers. A disk tier that cannot be opened is reported with one warning and
    /// left out: the agent still serves, from memory and the origin.
    pub fn new(origin: Arc<dyn ChunkStore>, config: FetcherConfig) -> Self {
        let disk = match &config.disk {
            None => None,
            Some((dir, bytes)) => match DiskTier::open(dir, *bytes, Arc::new(verify_chunk)) {
                Ok(d) => Some(d),
                Err(e) => {
                    warn!(dir = %dir.display(), "disk cache unusable, serving from memory and origin: {e}");
                    None
                }
            },
        };
        Self {
            origin,
            mem: MemTier::new(config.mem_bytes, 512 << 10),
            disk,
            disk_disabled: AtomicBool::new(false),
            disk_full_warned: AtomicBool::new(false),
            inflight: Mutex::new(HashMap::new()),
            demand: Arc::new(Semaphore::new(config.demand_fetches.max(1))),
            prefetch: Arc::new(Semaphore::new(config.prefetch_fetches.max(1))),
            config,
        }
    }

    /// Whether a usable disk tier is attached.
    pub fn has_disk_tier(&self) -> bool {
        self.disk.is_some() && !self.disk_disabled.load(Ordering::Relaxed)
    }

    /// The AZ cache tier, if configured.
    pub fn l2(&self) -> Option<&Arc<L2Tier>> {
        self.config.l2.as_ref()
    }

    /// Whether the worker cache (memory or disk tier index) holds the chunk; no access recorded,
    /// no file looked at.
    pub fn in_worker_cache(&self, name: &ChunkName) -> bool {
        self.mem.contains(name.as_bytes())
            || (self.has_disk_tier()
                && self
                    .disk
                    .as_ref()
                    .is_some_and(|d| d.contains(name.as_bytes())))
    }

    /// Whether the chunk is in the memory tier (no access recorded).
    pub fn in_memory(&self, name: &ChunkName) -> bool {
        self.mem.contains(name.as_bytes())
    }

    /// Returns the verified ciphertext of a chunk and the tier it came from. Origin fetches
    /// (and prefetches) are counted in `metrics`.
    pub async fn get(
        self: &Arc<Self>,
        req: &ChunkRequest,
        priority: Priority,
        metrics: &Arc<DeviceMetrics>,
    ) -> FlightResult {
        if let Some(data) = self.mem.get(req.name.as_bytes()) {
            return Ok((data, Tier::Memory));
        }
        let flight = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            match inflight.get(&req.name) {
                Some(f) => {
                    if priority == Priority::Demand {
                        f.urgent.notify_one();
                    }
                    f.result.clone()
                }
                None => {
                    let urgent = Arc::new(Notify::new());
                    let this = Arc::clone(self);
                    let task = tokio::spawn(this.fly(
                        req.clone(),
                        priority,
                        Arc::clone(&urgent),
                        Arc::clone(metrics),
                    ));
                    let result = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(FetchError {
                                corrupt: false,
                                message: format!("chunk fetch task failed: {e}"),
                            })
                        })
                    }
                    .boxed()
                    .shared();
                    inflight.insert(
                        req.name,
                        Flight {
                            result: result.clone(),
                            urgent,
                        },
                    );
                    result
                }
            }
        };
        flight.await
    }

    #[tracing::instrument(level = "debug", name = "chunk", skip_all, fields(chunk = %req.name.short(), ?priority))]
    async fn fly(
        self: Arc<Self>,
        req: ChunkRequest,
        priority: Priority,
        urgent: Arc<Notify>,
        metrics: Arc<DeviceMetrics>,
    ) -> FlightResult {
        let result = self.fly_inner(&req, priority, urgent, &metrics).await;
        if let Ok((data, _)) = &result {
            self.mem.put(*req.name.as_bytes(), data.clone());
        }
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&req.name);
        result
    }

    async fn fly_inner(
        self: &Arc<Self>,
        req: &ChunkRequest,
        priority: Priority,
        urgent: Arc<Notify>,
        metrics: &Arc<DeviceMetrics>,
    ) -> FlightResult {
        let id = *req.name.as_bytes();
        if self.has_disk_tier() {
            if let Some(data) = self.disk_get(id).await {
                return Ok((data, Tier::Disk));
            }
        }
        if let Some(data) = self.l2_get(req, metrics).await {
            return Ok((data, Tier::L2));
        }
        // An origin slot first, then the disk tier's cross-process lock and a second look under
        // it: a prefetch waiting for a slot never holds a lock stripe a demand fetch needs.
        let permit = self.permit(priority, &urgent).await;
        let mut lock = None;
        if self.has_disk_tier() {
            let this = Arc::clone(self);
            match tokio::task::spawn_blocking(move || this.disk.as_ref().map(|d| d.lock(&id))).await
            {
                Ok(Some(Ok(guard))) => {
                    lock = Some(guard);
                    if let Some(data) = self.disk_get(id).await {
                        return Ok((data, Tier::Disk));
                    }
                }
                Ok(Some(Err(e))) => self.disk_failed("lock", &e.to_string(), e.kind()),
                Ok(None) | Err(_) => {}
            }
        }
        let data = self.origin_fetch(req, priority, metrics).await;
        drop(permit);
        let data = data?;
        if let Some(l2) = &self.config.l2 {
            l2.fill(id, data.clone());
        }
        self.disk_put(id, &data).await;
        drop(lock);
        Ok((data, Tier::Origin))
    }

    async fn l2_get(
        self: &Arc<Self>,
        req: &ChunkRequest,
        metrics: &DeviceMetrics,
    ) -> Option<Bytes> {
        let l2 = self.config.l2.as_ref()?;
        let started = Instant::now();
        match l2.get(req.name.as_bytes(), req.len).await {
            L2Get::Hit { data, .. } => {
                metrics.l2_latency.record(started.elapsed());
                metrics.l2_chunks.fetch_add(1, Ordering::Relaxed);
                self.disk_put(*req.name.as_bytes(), &data).await;
                Some(data)
            }
            L2Get::Miss | L2Get::Corrupt => None,
        }
    }

    /// Stores a verified chunk in the disk tier, if there is one; a failure is only reported.
    async fn disk_put(self: &Arc<Self>, id: [u8; 32], data: &Bytes) {
        if !self.has_disk_tier() {
            return;
        }
        let this = Arc::clone(self);
        let bytes = data.clone();
        let put =
            tokio::task::spawn_blocking(move || this.disk.as_ref().map(|d| d.put(&id, &bytes)))
                .await;
        if let Ok(Some(Err(e))) = put {
            self.disk_failed("write", &e.to_string(), e.kind());
        }
    }

    async fn disk_get(self: &Arc<Self>, id: [u8; 32]) -> Option<Bytes> {
        let this = Arc::clone(self);
        match tokio::task::spawn_blocking(move || this.disk.as_ref().map(|d| d.get(&id))).await {
            Ok(Some(Ok(Some(data)))) => Some(Bytes::from(data)),
            Ok(Some(Err(e))) => {
                self.disk_failed("read", &e.to_string(), e.kind());
                None
            }
            _ => None,
        }
    }

    fn disk_failed(&self, what: &str, message: &str, kind: CacheErrorKind) {
        match kind {
            CacheErrorKind::NoSpace => {
                if !self.disk_full_warned.swap(true, Ordering::Relaxed) {
                    warn!("disk cache is full ({what}): serving from memory and origin: {message}");
                }
            }
            CacheErrorKind::Unwritable => {
                if !self.disk_disabled.swap(true, Ordering::Relaxed) {
                    warn!("disk cache {what} failed, disabling it for this agent: serving from memory and origin: {message}");
                }
            }
            _ => warn!("disk cache {what} failed: {message}"),
        }
    }

    async fn permit(&self, priority: Priority, urgent: &Notify) -> Option<OwnedSemaphorePermit> {
        match priority {
            Priority::Demand => Arc::clone(&self.demand).acquire_owned().await.ok(),
            Priority::Prefetch => {
                let prefetch = Arc::clone(&self.prefetch);
                tokio::select! {
                    p = prefetch.acquire_owned() => p.ok(),
                    () = urgent.notified() => Arc::clone(&self.demand).acquire_owned().await.ok(),
                }
            }
        }
    }

    async fn origin_fetch(
        &self,
        req: &ChunkRequest,
        priority: Priority,
        metrics: &DeviceMetrics,
    ) -> Result<Bytes, FetchError> {
        let started = Instant::now();
        let fetch = self.origin.get_chunk(&req.root, &req.name);
        let fail = |corrupt: bool, message: String| {
            metrics.origin_errors.fetch_add(1, Ordering::Relaxed);
            warn!(chunk = %req.name.short(), "{message}");
            FetchError { corrupt, message }
        };
        let data = match tokio::time::timeout(self.config.origin_timeout, fetch).await {
            Err(_) => {
                return Err(fail(
                    false,
                    format!(
                        "chunk {} from {}: no answer within {:?}",
                        req.name.short(),
                        self.origin.url(),
                        self.config.origin_timeout
                    ),
                ))
            }
            Ok(Err(e)) => {
                let what = if e.kind() == StoreErrorKind::NotFound {
                    "is missing from the origin"
                } else {
                    "could not be fetched"
                };
                return Err(fail(
                    false,
                    format!("chunk {} {what}: {e}", req.name.short()),
                ));
            }
            Ok(Ok(data)) => data,
        };
        let expected = req.name;
        let len = req.len;
        let check = data.clone();
        let ok = tokio::task::spawn_blocking(move || {
            check.len() == len && chunk_name_of(&check) == expected
        })
        .await
        .unwrap_or(false);
        if !ok {
            return Err(fail(
                true,
                format!(
                    "chunk {} from {} is corrupt ({} bytes, expected {len}, or its hash differs); not served",
                    req.name.short(),
                    self.origin.url(),
                    data.len()
                ),
            ));
        }
        metrics.origin_latency.record(started.elapsed());
        metrics.origin_chunks.fetch_add(1, Ordering::Relaxed);
        metrics
            .origin_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        if priority == Priority::Prefetch {
            metrics.prefetched_chunks.fetch_add(1, Ordering::Relaxed);
        }
        debug!(chunk = %req.name.short(), ms = started.elapsed().as_millis() as u64, "origin fetch");
        Ok(data)
    }
}
