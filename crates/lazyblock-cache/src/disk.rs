//! The disk tier: a directory of chunk files shared by the agent processes of one machine,
//! surviving restarts, bounded in bytes by [`S3Fifo`] and verified on every read.
//!
//! # Layout
//!
//! ```text
//! <dir>/VERSION                   one line: "lazyblock-chunk-cache 1" and a newline
//! <dir>/chunks/<aa>/<aabbcc…>     one immutable file per chunk: exactly the chunk bytes;
//!                                 the name is the 64 lowercase hex digits of the chunk id,
//!                                 the directory <aa> its first 2
//! <dir>/tmp/<64 hex>.<pid>.<n>.tmp   a chunk being written (then renamed into chunks/)
//! <dir>/tmp/*.<pid>.<n>.tmp          other temp files (VERSION, the writability probe)
//! <dir>/locks/<abc>               lock stripe files, empty; <abc> is the first 3 lowercase
//!                                 hex digits of a chunk id (4096 stripes)
//! ```
//!
//! - A process that finds `VERSION` with another line refuses the directory
//!   ([`CacheErrorKind::Version`](crate::CacheErrorKind::Version)). The first process to open an
//!   empty directory creates it (temp file + `link`, so concurrent openers agree).
//! - A chunk file is written in `tmp/` and `rename`d into `chunks/`, so a reader sees the whole
//!   file or none. Nothing is fsynced: a file torn by a power loss fails verification on its next
//!   read and is deleted. Every read is verified by the injected verifier (the agent checks
//!   `SHA-256(bytes) == id`); a file that fails is deleted and reported as a miss, never
//!   returned.
//! - Files in `tmp/` older than [`TEMP_MAX_AGE`] (by mtime, against the system clock) are
//!   removed on [`DiskTier::open`] and on every [`DiskTier::rescan`]; younger ones may belong to a
//!   live writer and are kept.
//! - [`DiskTier::lock`] takes an exclusive `flock` on the id's stripe file; the agent holds it
//!   around "re-check the tier, fetch from the origin, put", so concurrent misses of one chunk in
//!   several processes (or threads) fetch it once.
//! - Anything else under `chunks/` (names that are not 64 hex digits in the right `<aa>`
//!   directory, non-regular files) is ignored and never deleted.
//!
//! # Capacity with several processes
//!
//! Each process keeps its own index (an [`S3Fifo`] over the files it knows) bounded by the
//! capacity, and deletes the files its index evicts. It knows its own puts and the files it
//! adopts: a file another process wrote is adopted when this process reads it, and by
//! [`DiskTier::rescan`], which reconciles the index with the directory (adopts unknown files,
//! oldest mtime first; forgets deleted ones; evicts to capacity). A process rescans from
//! [`DiskTier::put`] once it has made [`DiskOptions::rescan_every_puts`] puts since its last scan,
//! or when its last scan is older than [`DiskOptions::rescan_interval`].
//!
//! Right after a rescan completes, the chunk files total at most the capacity, except files
//! written during the scan. Between rescans, a process `p` adds fewer than `N` =
//! `rescan_every_puts` chunks before its own next rescan, so with `P` processes sharing the
//! directory and chunks of at most `C` bytes:
//!
//! ```text
//! bytes of chunks/  ≤  capacity + P × N × C        (plus one temp file per put in flight,
//!                                                    and temp files of crashed writers < 10 min)
//! ```
//!
//! (after any process's most recent rescan, every process has put fewer than `N` chunks since its
//! own last rescan, which is not later). The defaults (`N` = 1024, `C` = 512 KiB) give 512 MiB of
//! slack per process. Eviction is per process: a process may delete a chunk another process uses
//! often; that process fetches it again. An index may still count files another process deleted
//! until its next read of them or its next rescan, which only makes it evict earlier.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

use crate::error::CacheError;
use crate::policy::S3Fifo;
use crate::ChunkId;

/// The line of `<dir>/VERSION` this build writes and accepts.
pub const LAYOUT_VERSION: &str = "lazyblock-chunk-cache 1";

/// Temp files older than this are left over by a dead writer and removed.
pub const TEMP_MAX_AGE: Duration = Duration::from_secs(10 * 60);

/// The number of lock stripes (`<dir>/locks/000` … `fff`).
pub const LOCK_STRIPES: usize = 4096;

/// Checks that `bytes` are the chunk `id` (the agent passes `SHA-256(bytes) == id`).
pub type Verifier = Arc<dyn Fn(&ChunkId, &[u8]) -> bool + Send + Sync>;

/// A monotonic clock, injected so tests drive the rescan interval.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Settings of a [`DiskTier`]; [`DiskOptions::new`] gives the defaults.
#[derive(Clone)]
pub struct DiskOptions {
    /// The bound on the bytes of chunk files this process's index holds.
    pub capacity_bytes: u64,
    /// The usual chunk size; the policy remembers `capacity_bytes / typical_chunk_bytes` evicted
    /// ids (S3-FIFO ghosts).
    pub typical_chunk_bytes: u64,
    /// [`DiskTier::put`] rescans after this many puts since the last scan (at least 1).
    pub rescan_every_puts: u64,
    /// [`DiskTier::put`] rescans when the last scan is older than this.
    pub rescan_interval: Duration,
    /// Temp files older than this are removed by open and rescan.
    pub temp_max_age: Duration,
    /// The clock of the rescan interval.
    pub clock: Clock,
}

impl DiskOptions {
    /// The defaults for `capacity_bytes`: 512 KiB chunks, a rescan every 1024 puts or 60 s, temp
    /// files removed after [`TEMP_MAX_AGE`], the system's monotonic clock.
    pub fn new(capacity_bytes: u64) -> Self {
        Self {
            capacity_bytes,
            typical_chunk_bytes: 512 * 1024,
            rescan_every_puts: 1024,
            rescan_interval: Duration::from_secs(60),
            temp_max_age: TEMP_MAX_AGE,
            clock: Arc::new(Instant::now),
        }
    }
}

impl std::fmt::Debug for DiskOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskOptions")
            .field("capacity_bytes", &self.capacity_bytes)
            .field("typical_chunk_bytes", &self.typical_chunk_bytes)
            .field("rescan_every_puts", &self.rescan_every_puts)
            .field("rescan_interval", &self.rescan_interval)
            .field("temp_max_age", &self.temp_max_age)
            .finish_non_exhaustive()
    }
}

/// Counters of a [`DiskTier`] (this process's view), as returned by [`DiskTier::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Reads that returned verified bytes.
    pub hits: u64,
    /// Reads that found no file, or a corrupt one.
    pub misses: u64,
    /// Files that failed verification and were deleted.
    pub corrupt_dropped: u64,
    /// Chunks written by [`DiskTier::put`] (no-ops not counted).
    pub puts: u64,
    /// Files deleted by eviction.
    pub evictions: u64,
    /// Bytes of the files this process's index holds (at most the capacity).
    pub bytes_resident: u64,
    /// Files this process's index holds.
    pub entries: u64,
    /// Puts that failed.
    pub write_errors: u64,
    /// Files written by another process (or before a restart) taken into the index.
    pub adopted: u64,
    /// Index entries dropped because their file was gone.
    pub forgotten: u64,
    /// Completed scans of the directory (the one of `open` included).
    pub rescans: u64,
}

/// What one [`DiskTier::rescan`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RescanReport {
    /// Chunk files found.
    pub files: u64,
    /// Files taken into the index.
    pub adopted: u64,
    /// Index entries whose file was gone.
    pub forgotten: u64,
    /// Files deleted by eviction (or, empty or over the capacity, never admitted).
    pub evicted: u64,
    /// Stale temp files removed.
    pub stale_temps_removed: u64,
}

#[derive(Debug)]
struct Inner {
    policy: S3Fifo<ChunkId>,
    stats: DiskStats,
    puts_since_scan: u64,
    last_scan: Instant,
}

/// The on-disk chunk tier (see the [module docs](self)).
pub struct DiskTier {
    dir: PathBuf,
    verify: Verifier,
    options: DiskOptions,
    seq: AtomicU64,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for DiskTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskTier")
            .field("dir", &self.dir)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// An exclusive, cross-process lock on one stripe of chunk ids, released on drop (see
/// [`DiskTier::lock`]).
#[derive(Debug)]
pub struct ChunkLock {
    _file: File,
    stripe: u16,
}

impl ChunkLock {
    /// The stripe locked (`0..LOCK_STRIPES`; the file `locks/<3 hex>`).
    pub fn stripe(&self) -> u16 {
        self.stripe
    }
}

/// One chunk file found by a scan.
struct Listed {
    id: ChunkId,
    size: u64,
    mtime: SystemTime,
}

impl DiskTier {
    /// Opens (creating if needed) the cache directory `dir` with the default [`DiskOptions`] for
    /// `capacity_bytes`. See [`open_with`](Self::open_with).
    pub fn open(
        dir: impl AsRef<Path>,
        capacity_bytes: u64,
        verify: Verifier,
    ) -> Result<Self, CacheError> {
        Self::open_with(dir, verify, DiskOptions::new(capacity_bytes))
    }

    /// Opens (creating if needed) the cache directory `dir`: creates the layout and `VERSION`
    /// (refusing another version), checks that the directory is writable, removes stale temp
    /// files, takes the existing chunk files into the index, oldest mtime first, and evicts down
    /// to the capacity.
    ///
    /// # Errors
    ///
    /// [`Unwritable`](crate::CacheErrorKind::Unwritable) if the layout cannot be created or
    /// written, [`Version`](crate::CacheErrorKind::Version) for another layout version,
    /// [`NoSpace`](crate::CacheErrorKind::NoSpace) or [`Io`](crate::CacheErrorKind::Io)
    /// otherwise.
    pub fn open_with(
        dir: impl AsRef<Path>,
        verify: Verifier,
        options: DiskOptions,
    ) -> Result<Self, CacheError> {
        let dir = dir.as_ref().to_path_buf();
        let ghosts = options.capacity_bytes / options.typical_chunk_bytes.max(1);
        let now = (options.clock)();
        let tier = Self {
            verify,
            seq: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                policy: S3Fifo::new(
                    options.capacity_bytes,
                    usize::try_from(ghosts).unwrap_or(usize::MAX),
                ),
                stats: DiskStats::default(),
                puts_since_scan: 0,
                last_scan: now,
            }),
            options,
            dir,
        };
        tier.create_layout()?;
        tier.rescan()?;
        Ok(tier)
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.options.capacity_bytes
    }

    /// The path of the chunk file of `id`: `<dir>/chunks/<first 2 hex>/<64 hex>`.
    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        let name = hex::encode(id);
        self.dir.join("chunks").join(&name[..2]).join(name)
    }

    /// The path of the lock stripe file of `id`: `<dir>/locks/<first 3 hex>`.
    pub fn lock_path(&self, id: &ChunkId) -> PathBuf {
        self.dir.join("locks").join(&hex::encode(&id[..2])[..3])
    }

    fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    fn chunks_dir(&self) -> PathBuf {
        self.dir.join("chunks")
    }

    fn temp_path(&self, stem: &str) -> PathBuf {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        self.tmp_dir()
            .join(format!("{stem}.{}.{seq}.tmp", std::process::id()))
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the index consistent with what it deleted or renamed
        // before anything can panic, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn create_layout(&self) -> Result<(), CacheError> {
        fs::create_dir_all(&self.dir).map_err(|e| CacheError::io("create", &self.dir, e))?;
        let version = self.dir.join("VERSION");
        let existing = read_version(&version)?;
        if let Some(found) = &existing {
            check_version(&version, found)?;
        }
        for sub in ["tmp", "chunks", "locks"] {
            let path = self.dir.join(sub);
            fs::create_dir_all(&path).map_err(|e| CacheError::io("create", &path, e))?;
        }
        if existing.is_none() {
            let temp = self.temp_path("VERSION");
            write_new(&temp, format!("{LAYOUT_VERSION}\n").as_bytes())?;
            let linked = fs::hard_link(&temp, &version);
            let _ = fs::remove_file(&temp);
            match linked {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(CacheError::io("create", &version, e)),
            }
            match read_version(&version)? {
                Some(found) => check_version(&version, &found)?,
                None => {
                    return Err(CacheError::io(
                        "create",
                        &version,
                        io::Error::from(io::ErrorKind::NotFound),
                    ))
                }
            }
        }
        // The layout may exist on a file system that is now read-only: probe.
        let probe = self.temp_path("probe");
        File::options()
            .write(true)
            .create_new(true)
            .open(&probe)
            .map_err(|e| CacheError::io("create", &probe, e))?;
        fs::remove_file(&probe).map_err(|e| CacheError::io("remove", &probe, e))?;
        Ok(())
    }

    /// Reads the chunk `id`: `Ok(None)` if absent, or if its file failed verification (the file
    /// is then deleted, counted and logged). Counts as an access; a file this process's index
    /// does not know yet (written by another process) is adopted.
    ///
    /// # Errors
    ///
    /// An I/O error other than "not found" reading the file.
    pub fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, CacheError> {
        let path = self.chunk_path(id);
        let bytes = match self.read_chunk(&path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                let mut inner = self.inner();
                if inner.policy.remove(id).is_some() {
                    inner.stats.forgotten += 1;
                }
                inner.stats.misses += 1;
                return Ok(None);
            }
            Err(e) => {
                self.inner().stats.misses += 1;
                return Err(e);
            }
        };
        if bytes.is_empty()
            || bytes.len() as u64 > self.options.capacity_bytes
            || !(self.verify)(id, &bytes)
        {
            tracing::warn!(
                chunk = %hex::encode(id),
                path = %path.display(),
                len = bytes.len(),
                "disk cache: chunk file failed verification, deleting it"
            );
            let mut inner = self.inner();
            remove_quietly(&path);
            inner.policy.remove(id);
            inner.stats.corrupt_dropped += 1;
            inner.stats.misses += 1;
            return Ok(None);
        }
        let mut inner = self.inner();
        inner.stats.hits += 1;
        if !inner.policy.access(id) {
            inner.stats.adopted += 1;
            self.admit(&mut inner, *id, bytes.len() as u64);
        }
        Ok(Some(bytes))
    }

    /// Reads a chunk file: `None` if absent; the whole file, unless it is larger than the
    /// capacity, in which case only the first `capacity + 1` bytes (enough to fail the checks).
    fn read_chunk(&self, path: &Path) -> Result<Option<Vec<u8>>, CacheError> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CacheError::io("open", path, e)),
        };
        let hint = file.metadata().map(|m| m.len()).unwrap_or(0);
        let limit = self.options.capacity_bytes.saturating_add(1);
        let mut bytes = Vec::with_capacity(usize::try_from(hint.min(limit)).unwrap_or(0));
        file.take(limit)
            .read_to_end(&mut bytes)
            .map_err(|e| CacheError::io("read", path, e))?;
        Ok(Some(bytes))
    }

    /// Stores the chunk `id` (already verified by the caller): a no-op if its file exists (it is
    /// adopted if unknown) or if it is empty or larger than the capacity; otherwise writes a temp
    /// file, renames it into place, inserts it into the index and deletes the files evicted to
    /// make room. May run a [`rescan`](Self::rescan) (see the [module docs](self)); a failed
    /// rescan is logged, not returned.
    ///
    /// # Errors
    ///
    /// [`NoSpace`](crate::CacheErrorKind::NoSpace) when the file system is full,
    /// [`Unwritable`](crate::CacheErrorKind::Unwritable) when the directory cannot be written or
    /// is gone, [`Io`](crate::CacheErrorKind::Io) otherwise. No temp file is left behind.
    pub fn put(&self, id: &ChunkId, bytes: &[u8]) -> Result<(), CacheError> {
        let size = bytes.len() as u64;
        if size == 0 || size > self.options.capacity_bytes {
            return Ok(());
        }
        let path = self.chunk_path(id);
        if path.is_file() {
            let mut inner = self.inner();
            if !inner.policy.contains(id) {
                inner.stats.adopted += 1;
                self.admit(&mut inner, *id, size);
            }
            return Ok(());
        }
        let result = self.write_chunk(id, &path, bytes);
        let rescan_due = {
            let mut inner = self.inner();
            if let Err(e) = result {
                inner.stats.write_errors += 1;
                return Err(e);
            }
            inner.stats.puts += 1;
            inner.puts_since_scan += 1;
            let now = (self.options.clock)();
            let due = inner.puts_since_scan >= self.options.rescan_every_puts.max(1)
                || now.saturating_duration_since(inner.last_scan) >= self.options.rescan_interval;
            if due {
                // Claim this rescan so that concurrent puts do not start another.
                inner.puts_since_scan = 0;
                inner.last_scan = now;
            }
            due
        };
        if rescan_due {
            if let Err(e) = self.rescan() {
                tracing::warn!(dir = %self.dir.display(), error = %e, "disk cache: rescan failed");
            }
        }
        Ok(())
    }

    /// Writes a temp file and renames it to `path`, then indexes it, under the index lock so
    /// that this process's threads see files and index change together.
    fn write_chunk(&self, id: &ChunkId, path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
        let temp = self.temp_path(&hex::encode(id));
        if let Err(e) = write_new(&temp, bytes) {
            remove_quietly(&temp);
            return Err(e);
        }
        let mut inner = self.inner();
        let mut renamed = fs::rename(&temp, path);
        if matches!(&renamed, Err(e) if e.kind() == io::ErrorKind::NotFound) {
            if let Some(parent) = path.parent() {
                match fs::create_dir(parent) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        remove_quietly(&temp);
                        return Err(CacheError::io("create", parent, e));
                    }
                }
            }
            renamed = fs::rename(&temp, path);
        }
        if let Err(e) = renamed {
            remove_quietly(&temp);
            return Err(CacheError::io("rename", path, e));
        }
        if !inner.policy.contains(id) {
            self.admit(&mut inner, *id, bytes.len() as u64);
        }
        Ok(())
    }

    /// Inserts `id` into the index and deletes the files it evicts (and `id`'s own file if it is
    /// not admitted).
    fn admit(&self, inner: &mut Inner, id: ChunkId, size: u64) -> u64 {
        let evicted = inner.policy.insert(id, size);
        for key in &evicted {
            remove_quietly(&self.chunk_path(key));
        }
        let mut count = evicted.len() as u64;
        if !inner.policy.contains(&id) {
            remove_quietly(&self.chunk_path(&id));
            count += 1;
        }
        inner.stats.evictions += count;
        count
    }

    /// Whether this process's index holds `id`. Does not count as an access, does not look at the
    /// file.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.inner().policy.contains(id)
    }

    /// Reconciles the index with the directory: removes stale temp files, adopts chunk files the
    /// index does not know (oldest mtime first), forgets entries whose file is gone, and evicts
    /// down to the capacity. The directory is listed without holding the index lock.
    ///
    /// # Errors
    ///
    /// An I/O error listing `chunks/` or `tmp/`.
    pub fn rescan(&self) -> Result<RescanReport, CacheError> {
        let mut report = RescanReport {
            stale_temps_removed: self.remove_stale_temps()?,
            ..RescanReport::default()
        };
        let mut listed = self.list_chunks()?;
        listed.sort_by_key(|l| (l.mtime, l.id));
        report.files = listed.len() as u64;
        let present: HashSet<ChunkId> = listed.iter().map(|l| l.id).collect();
        let mut inner = self.inner();
        let missing: Vec<ChunkId> = inner
            .policy
            .keys()
            .filter(|id| !present.contains(*id))
            .copied()
            .collect();
        for id in missing {
            // Written after the listing passed its directory, or really gone?
            if !self.chunk_path(&id).is_file() {
                inner.policy.remove(&id);
                report.forgotten += 1;
            }
        }
        for l in listed {
            if !inner.policy.contains(&l.id) {
                report.adopted += 1;
                report.evicted += self.admit(&mut inner, l.id, l.size);
            }
        }
        inner.stats.adopted += report.adopted;
        inner.stats.forgotten += report.forgotten;
        inner.stats.rescans += 1;
        inner.puts_since_scan = 0;
        inner.last_scan = (self.options.clock)();
        tracing::debug!(dir = %self.dir.display(), ?report, "disk cache: rescanned");
        Ok(report)
    }

    fn remove_stale_temps(&self) -> Result<u64, CacheError> {
        let tmp = self.tmp_dir();
        let entries = fs::read_dir(&tmp).map_err(|e| CacheError::io("list", &tmp, e))?;
        let now = SystemTime::now();
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(|e| CacheError::io("list", &tmp, e))?;
            let Ok(meta) = entry.metadata() else { continue };
            let Ok(mtime) = meta.modified() else { continue };
            let stale = now
                .duration_since(mtime)
                .is_ok_and(|age| age > self.options.temp_max_age);
            if stale && meta.is_file() && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn list_chunks(&self) -> Result<Vec<Listed>, CacheError> {
        let chunks = self.chunks_dir();
        let mut listed = Vec::new();
        let subdirs = fs::read_dir(&chunks).map_err(|e| CacheError::io("list", &chunks, e))?;
        for subdir in subdirs {
            let subdir = subdir.map_err(|e| CacheError::io("list", &chunks, e))?;
            let prefix = subdir.file_name();
            let Some(prefix) = prefix.to_str().filter(|p| is_lower_hex(p, 2)) else {
                continue;
            };
            let files = match fs::read_dir(subdir.path()) {
                Ok(files) => files,
                Err(e) if e.raw_os_error() == Some(Errno::NOTDIR.raw_os_error()) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(CacheError::io("list", subdir.path(), e)),
            };
            for file in files {
                let file = file.map_err(|e| CacheError::io("list", subdir.path(), e))?;
                let name = file.file_name();
                let Some(id) = name
                    .to_str()
                    .filter(|n| n.starts_with(prefix))
                    .and_then(parse_id)
                else {
                    continue;
                };
                let Ok(meta) = file.metadata() else { continue };
                if !meta.is_file() {
                    continue;
                }
                listed.push(Listed {
                    id,
                    size: meta.len(),
                    mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        Ok(listed)
    }

    /// Takes the exclusive, cross-process lock of `id`'s stripe (`locks/<3 hex>`), blocking until
    /// it is free; released when the [`ChunkLock`] drops. Threads of one process exclude each
    /// other too. A thread must not hold two locks at once (two ids may share a stripe).
    ///
    /// # Errors
    ///
    /// The stripe file cannot be opened or created, or `flock` fails.
    pub fn lock(&self, id: &ChunkId) -> Result<ChunkLock, CacheError> {
        let (file, path) = self.open_stripe(id)?;
        loop {
            match flock(&file, FlockOperation::LockExclusive) {
                Ok(()) => break,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(CacheError::io("lock", &path, e.into())),
            }
        }
        Ok(ChunkLock {
            _file: file,
            stripe: stripe_of(id),
        })
    }

    /// Like [`lock`](Self::lock) but does not block: `Ok(None)` if another holder has the stripe.
    ///
    /// # Errors
    ///
    /// The stripe file cannot be opened or created, or `flock` fails otherwise.
    pub fn try_lock(&self, id: &ChunkId) -> Result<Option<ChunkLock>, CacheError> {
        let (file, path) = self.open_stripe(id)?;
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {
                    return Ok(Some(ChunkLock {
                        _file: file,
                        stripe: stripe_of(id),
                    }))
                }
                Err(Errno::INTR) => continue,
                Err(Errno::WOULDBLOCK) => return Ok(None),
                Err(e) => return Err(CacheError::io("lock", &path, e.into())),
            }
        }
    }

    fn open_stripe(&self, id: &ChunkId) -> Result<(File, PathBuf), CacheError> {
        let path = self.lock_path(id);
        let opened = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path);
        let file = match opened {
            Ok(file) => file,
            // A read-only cache directory still serialises fetches if the stripe exists.
            Err(e) => File::open(&path).map_err(|_| CacheError::io("open", &path, e))?,
        };
        Ok((file, path))
    }

    /// A snapshot of this process's counters.
    pub fn stats(&self) -> DiskStats {
        let inner = self.inner();
        DiskStats {
            bytes_resident: inner.policy.used_bytes(),
            entries: inner.policy.len() as u64,
            ..inner.stats
        }
    }
}

fn stripe_of(id: &ChunkId) -> u16 {
    u16::from_be_bytes([id[0], id[1]]) >> 4
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn parse_id(name: &str) -> Option<ChunkId> {
    if !is_lower_hex(name, 64) {
        return None;
    }
    let mut id = [0u8; 32];
    hex::decode_to_slice(name, &mut id).ok()?;
    Some(id)
}

fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::debug!(path = %path.display(), error = %e, "disk cache: cannot remove file");
        }
    }
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| CacheError::io("create", path, e))?;
    file.write_all(bytes)
        .map_err(|e| CacheError::io("write", path, e))
}

fn read_version(path: &Path) -> Result<Option<String>, CacheError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CacheError::io("open", path, e)),
    };
    let mut bytes = Vec::new();
    file.take(256)
        .read_to_end(&mut bytes)
        .map_err(|e| CacheError::io("read", path, e))?;
    let text = String::from_utf8_lossy(&bytes);
    Ok(Some(text.lines().next().unwrap_or("").trim().to_owned()))
}

fn check_version(path: &Path, found: &str) -> Result<(), CacheError> {
    if found == LAYOUT_VERSION {
        Ok(())
    } else {
        Err(CacheError::Version {
            path: path.to_path_buf(),
            found: found.to_owned(),
            expected: LAYOUT_VERSION,
        })
    }
}

#[cfg(test)]
mod tests;
