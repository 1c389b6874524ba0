//! [`BlockSource`]: one image as a block device — manifest, chunk fetching, copy-on-write
//! overlay, read-ahead and start-up profile recording.
//!
//! Read path for `(offset, len)`: pages present in the overlay come from the overlay; the rest
//! maps to chunks: a zero chunk is zeros, any other chunk comes from the [`ChunkFetcher`]
//! (memory, disk, origin), and only the 16-byte-aligned span the read needs is decrypted.
//! Writes go to the overlay only (read-modify-write for partial pages); nothing the guest
//! writes reaches the cache or the store.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use lazyblock_format::{decrypt_chunk_range, ChunkName, Geometry, KeyTable, Manifest, RootId};
use tracing::{debug, warn};

use crate::device::{check_range, BlockDevice, DeviceError, DeviceErrorKind};
use crate::fetch::{ChunkFetcher, ChunkRequest, Priority};
use crate::metrics::{DeviceMetrics, Tier};
use crate::overlay::{Overlay, PAGE_SIZE};

/// How a [`BlockSource`] behaves.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Refuse writes and trims; no overlay is opened.
    pub read_only: bool,
    /// Where the overlay lives (required unless `read_only`).
    pub overlay_dir: Option<PathBuf>,
    /// Drop the overlay's earlier writes when opening it.
    pub discard_overlay: bool,
    /// Sequential read-ahead across chunk boundaries.
    pub readahead: bool,
    /// Longest read-ahead window, in chunks.
    pub readahead_max_chunks: u64,
    /// On the first read of a chunk whose predecessor was read too, prefetch this many chunks
    /// after it (0: off). Images laid out by the flattener keep a package's files together, so
    /// the next chunk is usually read soon too (measured on the corpus: 80–90% of the time).
    pub neighbor_chunks: u64,
    /// Record the order in which chunks are first read.
    pub record_profile: bool,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            read_only: true,
            overlay_dir: None,
            discard_overlay: false,
            readahead: true,
            readahead_max_chunks: 2,
            neighbor_chunks: 1,
            record_profile: false,
        }
    }
}

/// A sequential run must cover this much before read-ahead starts.
const READAHEAD_TRIGGER: u64 = 1 << 20;
/// Reads that start this close to where the last one ended continue a run (requests of one
/// stream arrive slightly out of order when a client keeps several in flight).
const READAHEAD_SLACK: u64 = 256 << 10;

#[derive(Debug, Default)]
struct ReadAhead {
    next: u64,
    run: u64,
    window: u64,
    /// Chunks below this index were already requested by read-ahead in this run.
    issued_to: u64,
}

#[derive(Debug, Default)]
struct Touched {
    /// Bit per chunk: read by the guest at least once.
    bits: Vec<u64>,
    /// Bit per chunk: prefetched because a neighbour was read.
    prefetched: Vec<u64>,
    count: u64,
    /// First-read order of data chunks, while recording.
    order: Vec<ChunkName>,
}

/// One served image. See the module docs.
pub struct BlockSource {
    manifest: Manifest,
    keys: KeyTable,
    root: RootId,
    geometry: Geometry,
    fetcher: Arc<ChunkFetcher>,
    overlay: Option<Overlay>,
    config: SourceConfig,
    metrics: Arc<DeviceMetrics>,
    readahead: Mutex<ReadAhead>,
    touched: Mutex<Touched>,
    recording: AtomicBool,
    last_new_chunk: Mutex<Instant>,
    page_locks: Vec<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for BlockSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockSource")
            .field("manifest", &self.manifest.id())
            .field("size", &self.geometry.image_size())
            .field("read_only", &self.config.read_only)
            .finish()
    }
}

fn io(message: String) -> DeviceError {
    DeviceError::new(DeviceErrorKind::Io, message)
}

impl BlockSource {
    /// Makes a device of an opened image. Opens (or creates) the overlay unless read-only.
    pub fn new(
        manifest: Manifest,
        keys: KeyTable,
        root: RootId,
        fetcher: Arc<ChunkFetcher>,
        config: SourceConfig,
    ) -> Result<Self, DeviceError> {
        let geometry = manifest.geometry();
        let overlay = if config.read_only {
            None
        } else {
            let dir = config.overlay_dir.as_ref().ok_or_else(|| {
                DeviceError::new(
                    DeviceErrorKind::InvalidInput,
                    "a writable device needs an overlay directory",
                )
            })?;
            Some(Overlay::open_with(
                dir,
                &manifest.id(),
                geometry.image_size(),
                config.discard_overlay,
            )?)
        };
        let chunks = geometry.chunk_count();
        let recording = config.record_profile;
        Ok(Self {
            manifest,
            keys,
            root,
            geometry,
            fetcher,
            overlay,
            config,
            metrics: Arc::new(DeviceMetrics::default()),
            readahead: Mutex::new(ReadAhead::default()),
            touched: Mutex::new(Touched {
                bits: vec![0; chunks.div_ceil(64) as usize],
                prefetched: vec![0; chunks.div_ceil(64) as usize],
                ..Touched::default()
            }),
            recording: AtomicBool::new(recording),
            last_new_chunk: Mutex::new(Instant::now()),
            page_locks: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
        })
    }

    /// The device's metrics.
    pub fn metrics(&self) -> &Arc<DeviceMetrics> {
        &self.metrics
    }

    /// The fetch path (worker cache, AZ tier, origin) this device reads through.
    pub fn fetcher(&self) -> &Arc<ChunkFetcher> {
        &self.fetcher
    }

    /// The root the chunks are read from (the catalog entry's root; after a GC migration it
    /// differs from the manifest header's root, which only salts the chunks).
    pub fn root(&self) -> &RootId {
        &self.root
    }

    /// The manifest served.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The overlay, when writable.
    pub fn overlay(&self) -> Option<&Overlay> {
        self.overlay.as_ref()
    }

    /// Distinct data chunks the guest has read so far.
    pub fn chunks_read(&self) -> u64 {
        self.lock_touched().count
    }

    /// Time since the guest last read a chunk it had not read before.
    pub fn idle_for(&self) -> Duration {
        self.last_new_chunk
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    /// Stops recording and returns the first-read order of data chunks (empty when the
    /// device was not recording).
    pub fn finish_recording(&self) -> Vec<ChunkName> {
        if !self.recording.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut self.lock_touched().order)
    }

    /// Starts fetching `names` (a recorded profile) at prefetch priority, in order, at most
    /// `parallel` at a time. Names that are not data chunks of this manifest are skipped.
    /// Returns the number of chunks queued.
    pub fn replay_profile(self: &Arc<Self>, names: &[ChunkName], parallel: usize) -> usize {
        let index: std::collections::HashMap<ChunkName, u64> =
            self.manifest.data_chunks().map(|(i, n)| (n, i)).collect();
        let reqs: Vec<ChunkRequest> = names
            .iter()
            .filter_map(|n| index.get(n).map(|&i| self.request(i, *n)))
            .collect();
        let queued = reqs.len();
        let this = Arc::clone(self);
        tokio::spawn(async move {
            use futures::StreamExt as _;
            let started = Instant::now();
            futures::stream::iter(reqs)
                .for_each_concurrent(parallel.max(1), |req| {
                    let this = Arc::clone(&this);
                    async move {
                        let _ = this
                            .fetcher
                            .get(&req, Priority::Prefetch, &this.metrics)
                            .await;
                    }
                })
                .await;
            debug!(
                chunks = queued,
                ms = started.elapsed().as_millis() as u64,
                "profile replay done"
            );
        });
        queued
    }

    fn lock_touched(&self) -> std::sync::MutexGuard<'_, Touched> {
        self.touched.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn request(&self, index: u64, name: ChunkName) -> ChunkRequest {
        ChunkRequest {
            root: self.root.clone(),
            name,
            len: self.geometry.chunk_len(index),
        }
    }

    /// Records a guest read of chunk `index`; on its first read, prefetches its neighbours.
    fn note_read(self: &Arc<Self>, index: u64, name: ChunkName) {
        let mut t = self.lock_touched();
        let (w, bit) = ((index / 64) as usize, 1u64 << (index % 64));
        let mut neighbours = Vec::new();
        let is_read = |bits: &[u64], i: u64| {
            bits.get((i / 64) as usize)
                .is_some_and(|x| x & (1 << (i % 64)) != 0)
        };
        // Neighbours only inside a run (the chunk before was read too): an isolated read
        // predicts little, and a wrong guess costs a whole chunk from the origin.
        let in_run = index.checked_sub(1).is_some_and(|p| is_read(&t.bits, p));
        if in_run && !is_read(&t.bits, index) {
            {
                let end =
                    (index + 1 + self.config.neighbor_chunks).min(self.geometry.chunk_count());
                for j in index + 1..end {
                    let (jw, jbit) = ((j / 64) as usize, 1u64 << (j % 64));
                    let seen = t.bits.get(jw).is_some_and(|x| x & jbit != 0)
                        || t.prefetched.get(jw).is_some_and(|x| x & jbit != 0);
                    if !seen {
                        if let Some(x) = t.prefetched.get_mut(jw) {
                            *x |= jbit;
                        }
                        neighbours.push(j);
                    }
                }
            }
        }
        if let Some(word) = t.bits.get_mut(w) {
            if *word & bit == 0 {
                *word |= bit;
                t.count += 1;
                if self.recording.load(Ordering::Relaxed) {
                    t.order.push(name);
                }
                *self
                    .last_new_chunk
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Instant::now();
            }
        }
        drop(t);
        for j in neighbours {
            self.prefetch(j);
        }
    }

    /// Starts fetching chunk `index` at prefetch priority unless it is a zero chunk or already
    /// in memory.
    fn prefetch(self: &Arc<Self>, index: u64) {
        let Some(name) = self.manifest.chunk(index) else {
            return;
        };
        if self.fetcher.in_memory(&name) {
            return;
        }
        let req = self.request(index, name);
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let _ = this
                .fetcher
                .get(&req, Priority::Prefetch, &this.metrics)
                .await;
        });
    }

    /// Reads image bytes (ignoring the overlay) at `offset` into `out`; returns the slowest
    /// tier used.
    async fn read_base(self: &Arc<Self>, offset: u64, out: &mut [u8]) -> Result<Tier, DeviceError> {
        let cs = u64::from(self.geometry.chunk_size().bytes());
        let end = offset + out.len() as u64;
        let first = offset / cs;
        let last = (end - 1) / cs;
        let mut fetches = Vec::new();
        for index in first..=last {
            if let Some(name) = self.manifest.chunk(index) {
                self.note_read(index, name);
                let req = self.request(index, name);
                fetches.push(async move {
                    let got = self
                        .fetcher
                        .get(&req, Priority::Demand, &self.metrics)
                        .await;
                    (index, got)
                });
            }
        }
        let results = futures::future::join_all(fetches).await;
        let mut slowest = Tier::Local;
        let mut fetched: std::collections::HashMap<u64, Bytes> = std::collections::HashMap::new();
        for (index, got) in results {
            match got {
                Ok((data, tier)) => {
                    self.metrics.hit(tier);
                    slowest = slowest.max(tier);
                    fetched.insert(index, data);
                }
                Err(e) => {
                    return Err(io(format!(
                        "read {offset}+{} needs chunk {index}: {e}",
                        out.len()
                    )))
                }
            }
        }
        for index in first..=last {
            let chunk_start = index * cs;
            let s = offset.max(chunk_start);
            let e = end.min(chunk_start + cs);
            let dst = &mut out[(s - offset) as usize..(e - offset) as usize];
            match fetched.get(&index) {
                None => dst.fill(0),
                Some(data) => {
                    let key = self
                        .keys
                        .key(index)
                        .ok_or_else(|| io(format!("no key for chunk {index}")))?;
                    let rel = s - chunk_start;
                    let aligned = rel & !15;
                    let span_end = (e - chunk_start) as usize;
                    let src = data.get(aligned as usize..span_end).ok_or_else(|| {
                        io(format!("chunk {index} is shorter than its manifest says"))
                    })?;
                    let mut span = src.to_vec();
                    decrypt_chunk_range(key, aligned, &mut span)
                        .map_err(|e| io(format!("chunk {index}: {e}")))?;
                    dst.copy_from_slice(&span[(rel - aligned) as usize..]);
                }
            }
        }
        Ok(slowest)
    }

    /// Reads at `offset` into `out`, overlay first. Returns the slowest tier used.
    async fn read_into(self: &Arc<Self>, offset: u64, out: &mut [u8]) -> Result<Tier, DeviceError> {
        let Some(overlay) = &self.overlay else {
            return self.read_base(offset, out).await;
        };
        let end = offset + out.len() as u64;
        let first_page = offset / PAGE_SIZE;
        let last_page = (end - 1) / PAGE_SIZE;
        let present = overlay.pages_present(first_page, last_page - first_page + 1);
        if present.iter().all(|p| !p) {
            return self.read_base(offset, out).await;
        }
        let mut slowest = Tier::Local;
        let mut i = 0usize;
        while i < present.len() {
            let run_present = present[i];
            let mut j = i;
            while j < present.len() && present[j] == run_present {
                j += 1;
            }
            let s = offset.max((first_page + i as u64) * PAGE_SIZE);
            let e = end.min((first_page + j as u64) * PAGE_SIZE);
            let dst = &mut out[(s - offset) as usize..(e - offset) as usize];
            if run_present {
                overlay.read_at(s, dst)?;
            } else {
                slowest = slowest.max(self.read_base(s, dst).await?);
            }
            i = j;
        }
        Ok(slowest)
    }

    fn readahead_after(self: &Arc<Self>, offset: u64, len: u64) {
        if !self.config.readahead {
            return;
        }
        let cs = u64::from(self.geometry.chunk_size().bytes());
        let end = offset + len;
        let (from, to) = {
            let mut ra = self.readahead.lock().unwrap_or_else(|e| e.into_inner());
            if offset + READAHEAD_SLACK >= ra.next && offset <= ra.next + READAHEAD_SLACK {
                ra.run += len;
            } else {
                *ra = ReadAhead {
                    run: len,
                    ..ReadAhead::default()
                };
            }
            ra.next = ra.next.max(end);
            if ra.run < READAHEAD_TRIGGER {
                return;
            }
            let current = (end - 1) / cs;
            if ra.issued_to <= current + 1 {
                ra.window = (ra.window * 2).clamp(1, self.config.readahead_max_chunks.max(1));
            }
            let to = (current + 1 + ra.window).min(self.geometry.chunk_count());
            let from = ra.issued_to.max(current + 1);
            if from >= to {
                return;
            }
            ra.issued_to = to;
            (from, to)
        };
        for index in from..to {
            self.prefetch(index);
        }
    }

    /// The async read behind [`BlockDevice::read`], with read-ahead (needs the `Arc`).
    #[tracing::instrument(level = "debug", name = "read", skip(self), fields(device = %self.manifest.id().short()))]
    pub async fn read_arc(
        self: &Arc<Self>,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, DeviceError> {
        check_range(self.geometry.image_size(), offset, len as u64)?;
        let started = Instant::now();
        let mut out = vec![0u8; len];
        let result = self.read_into(offset, &mut out).await;
        self.metrics.reads.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(tier) => {
                self.metrics.latency(tier).record(started.elapsed());
                self.metrics
                    .read_bytes
                    .fetch_add(len as u64, Ordering::Relaxed);
                self.readahead_after(offset, len as u64);
                Ok(out)
            }
            Err(e) => {
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                warn!("read {offset}+{len} failed: {e}");
                Err(e)
            }
        }
    }

    #[tracing::instrument(level = "debug", name = "write", skip(self, data), fields(len = data.len()))]
    async fn write_impl(self: &Arc<Self>, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        check_range(self.geometry.image_size(), offset, data.len() as u64)?;
        let Some(overlay) = &self.overlay else {
            return Err(DeviceError::new(
                DeviceErrorKind::ReadOnly,
                "the device is read-only",
            ));
        };
        let size = self.geometry.image_size();
        let end = offset + data.len() as u64;
        let first_page = offset / PAGE_SIZE;
        let last_page = (end - 1) / PAGE_SIZE;
        let span_start = first_page * PAGE_SIZE;
        let span_end = ((last_page + 1) * PAGE_SIZE).min(size);
        // Lock the stripes of the edge pages (in order) so partial-page read-modify-writes
        // of one page do not interleave.
        let (a, b) = ((first_page % 64) as usize, (last_page % 64) as usize);
        let (lo, hi) = (a.min(b), a.max(b));
        let _g1 = self.page_locks[lo].lock().await;
        let _g2 = if hi != lo {
            Some(self.page_locks[hi].lock().await)
        } else {
            None
        };
        let mut buf = vec![0u8; (span_end - span_start) as usize];
        if offset > span_start {
            let head = (span_start, (span_start + PAGE_SIZE).min(size));
            self.read_into(head.0, &mut buf[..(head.1 - head.0) as usize])
                .await?;
        }
        if end < span_end {
            let tail_start = last_page * PAGE_SIZE;
            if tail_start >= offset || last_page != first_page {
                let at = (tail_start - span_start) as usize;
                self.read_into(tail_start, &mut buf[at..]).await?;
            }
        }
        let at = (offset - span_start) as usize;
        buf[at..at + data.len()].copy_from_slice(data);
        overlay.write_pages(span_start, &buf)?;
        self.metrics.writes.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .write_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// The device a frontend serves: an `Arc<BlockSource>` (read-ahead spawns tasks that hold it).
#[derive(Debug, Clone)]
pub struct SourceDevice(pub Arc<BlockSource>);

#[async_trait]
impl BlockDevice for SourceDevice {
    fn size(&self) -> u64 {
        self.0.geometry.image_size()
    }

    fn read_only(&self) -> bool {
        self.0.overlay.is_none()
    }

    async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, DeviceError> {
        self.0.read_arc(offset, len).await
    }

    async fn write(&self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        let r = self.0.write_impl(offset, data).await;
        if let Err(e) = &r {
            self.0.metrics.errors.fetch_add(1, Ordering::Relaxed);
            if e.kind() != DeviceErrorKind::ReadOnly {
                warn!("write {offset}+{} failed: {e}", data.len());
            }
        }
        r
    }

    async fn flush(&self) -> Result<(), DeviceError> {
        self.0.metrics.flushes.fetch_add(1, Ordering::Relaxed);
        let Some(_) = &self.0.overlay else {
            return Ok(());
        };
        let this = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || match &this.overlay {
            Some(o) => o.sync(),
            None => Ok(()),
        })
        .await
        .map_err(|e| io(format!("flush task failed: {e}")))?
    }

    async fn trim(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        check_range(self.size(), offset, len)?;
        if self.0.overlay.is_none() {
            return Err(DeviceError::new(
                DeviceErrorKind::ReadOnly,
                "the device is read-only",
            ));
        }
        // Trim is advisory: the image's bytes stay readable and the overlay keeps its pages.
        Ok(())
    }
}
