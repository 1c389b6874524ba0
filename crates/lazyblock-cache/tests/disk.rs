//! The disk tier against a real file system (and real tmpfs mounts): round trips across reopen,
//! corruption, the capacity bound, scan resistance, cross-process and cross-thread fetch
//! deduplication with `flock`, a full and a read-only file system, stale temp files.
//!
//! The verifier is the agent's: `SHA-256(bytes) == id`.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use lazyblock_cache::{CacheErrorKind, ChunkId, DiskTier, Verifier};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

fn verifier() -> Verifier {
    Arc::new(|id: &ChunkId, bytes: &[u8]| Sha256::digest(bytes).as_slice() == id)
}

/// Chunk `n` of `len` bytes (distinct for distinct `n`) and its id.
fn chunk(n: u32, len: usize) -> (ChunkId, Vec<u8>) {
    let mut bytes: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).wrapping_add(n) as u8)
        .collect();
    bytes[..4].copy_from_slice(&n.to_be_bytes());
    (Sha256::digest(&bytes).into(), bytes)
}

/// Bytes of the regular files under `<dir>/chunks`.
fn chunk_dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for sub in fs::read_dir(dir.join("chunks")).unwrap() {
        for file in fs::read_dir(sub.unwrap().path()).unwrap() {
            total += file.unwrap().metadata().unwrap().len();
        }
    }
    total
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir).unwrap().count()
}

/// The agent's miss path: lock, re-check, fetch (counted), put, unlock.
fn fetch_once(tier: &DiskTier, n: u32, len: usize, fetched: &mut impl FnMut(u32)) {
    let (id, bytes) = chunk(n, len);
    if let Some(got) = tier.get(&id).unwrap() {
        assert_eq!(got, bytes);
        return;
    }
    let _lock = tier.lock(&id).unwrap();
    if let Some(got) = tier.get(&id).unwrap() {
        assert_eq!(got, bytes);
        return;
    }
    fetched(n);
    // Widen the window in which an unlocked competitor would fetch too.
    std::thread::sleep(Duration::from_millis(2));
    tier.put(&id, &bytes).unwrap();
}

/// A tmpfs mounted on a fresh temp dir, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount tmpfs (needs root): {status}");
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount_ro(&self) {
        let status = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(self.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "remount ro: {status}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        }
    }
}

// 1.
#[test]
fn round_trip_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let chunks: Vec<_> = (0..10).map(|n| chunk(n, 4096 + n as usize)).collect();
    {
        let tier = DiskTier::open(dir.path(), 1 << 20, verifier()).unwrap();
        for (id, bytes) in &chunks {
            assert_eq!(tier.get(id).unwrap(), None);
            tier.put(id, bytes).unwrap();
            tier.put(id, bytes).unwrap(); // present: a no-op
        }
        for (id, bytes) in &chunks {
            assert_eq!(tier.get(id).unwrap().as_ref(), Some(bytes));
            let on_disk = fs::read(tier.chunk_path(id)).unwrap();
            assert_eq!(&on_disk, bytes, "the file holds exactly the chunk bytes");
        }
        let stats = tier.stats();
        assert_eq!((stats.puts, stats.hits, stats.misses), (10, 10, 10));
        assert_eq!(count_files(&dir.path().join("tmp")), 0, "no temp left");
    }
    let tier = DiskTier::open(dir.path(), 1 << 20, verifier()).unwrap();
    let total: u64 = chunks.iter().map(|(_, b)| b.len() as u64).sum();
    assert_eq!(tier.stats().entries, 10);
    assert_eq!(tier.stats().bytes_resident, total);
    for (id, bytes) in &chunks {
        assert!(tier.contains(id));
        assert_eq!(tier.get(id).unwrap().as_ref(), Some(bytes));
    }
    assert_eq!(tier.stats().hits, 10);
}

// 2.
#[test]
fn corrupt_file_is_dropped_never_returned_then_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let tier = DiskTier::open(dir.path(), 1 << 20, verifier()).unwrap();
    let (id, bytes) = chunk(1, 8192);
    tier.put(&id, &bytes).unwrap();
    let path = tier.chunk_path(&id);
    {
        let mut file = File::options().write(true).open(&path).unwrap();
        file.seek(SeekFrom::Start(100)).unwrap();
        file.write_all(&[!bytes[100], !bytes[101]]).unwrap();
    }
    assert_eq!(tier.get(&id).unwrap(), None);
    assert!(!path.exists(), "the corrupt file is deleted");
    assert!(!tier.contains(&id));
    let stats = tier.stats();
    assert_eq!(
        (stats.corrupt_dropped, stats.hits, stats.bytes_resident),
        (1, 0, 0)
    );
    tier.put(&id, &bytes).unwrap();
    assert_eq!(tier.get(&id).unwrap(), Some(bytes.clone()));

    // A torn (truncated) file, as a power loss may leave, fails the same way.
    let (id2, bytes2) = chunk(2, 8192);
    tier.put(&id2, &bytes2).unwrap();
    File::options()
        .write(true)
        .open(tier.chunk_path(&id2))
        .unwrap()
        .set_len(4096)
        .unwrap();
    assert_eq!(tier.get(&id2).unwrap(), None);
    assert!(!tier.chunk_path(&id2).exists());
    assert_eq!(tier.stats().corrupt_dropped, 2);
}

// 3.
#[test]
fn capacity_bounds_the_index_and_the_directory() {
    const CHUNK: usize = 64 * 1024;
    const CAPACITY: u64 = 1 << 20; // 16 chunks
    let dir = tempfile::tempdir().unwrap();
    let tier = DiskTier::open(dir.path(), CAPACITY, verifier()).unwrap();
    for n in 0..48 {
        let (id, bytes) = chunk(n, CHUNK);
        tier.put(&id, &bytes).unwrap();
        assert!(tier.stats().bytes_resident <= CAPACITY);
        assert!(chunk_dir_bytes(dir.path()) <= CAPACITY);
    }
    let stats = tier.stats();
    assert_eq!(stats.bytes_resident, CAPACITY);
    assert_eq!(chunk_dir_bytes(dir.path()), CAPACITY);
    assert_eq!(stats.evictions, 32);
    let resident: Vec<u32> = (0..48)
        .filter(|&n| tier.contains(&chunk(n, CHUNK).0))
        .collect();
    for &n in &resident {
        assert!(
            tier.chunk_path(&chunk(n, CHUNK).0).is_file(),
            "{n} indexed, file gone"
        );
    }
    drop(tier);

    // Reopening with half the capacity evicts down to it, oldest mtime first.
    let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for (rank, &n) in resident.iter().enumerate() {
        let path = dir
            .path()
            .join("chunks")
            .join(&hex::encode(chunk(n, CHUNK).0)[..2]);
        let path = path.join(hex::encode(chunk(n, CHUNK).0));
        // The lowest ids get the newest mtimes: the order on disk, not the id order, decides.
        let age = Duration::from_secs(rank as u64);
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(base - age)
            .unwrap();
    }
    let tier = DiskTier::open(dir.path(), CAPACITY / 2, verifier()).unwrap();
    assert_eq!(tier.stats().bytes_resident, CAPACITY / 2);
    assert_eq!(chunk_dir_bytes(dir.path()), CAPACITY / 2);
    let kept: Vec<u32> = resident
        .iter()
        .copied()
        .filter(|&n| tier.contains(&chunk(n, CHUNK).0))
        .collect();
    assert_eq!(kept, resident[..8], "the 8 newest files stay");
}

/// A byte-weighted LRU, to show what the tier's policy avoids.
struct Lru {
    capacity: u64,
    order: VecDeque<(u32, u64)>,
}

impl Lru {
    fn request(&mut self, key: u32, size: u64) {
        if let Some(pos) = self.order.iter().position(|(k, _)| *k == key) {
            let entry = self.order.remove(pos).unwrap();
            self.order.push_back(entry);
            return;
        }
        while self.order.iter().map(|(_, s)| s).sum::<u64>() + size > self.capacity {
            self.order.pop_front();
        }
        self.order.push_back((key, size));
    }

    fn contains(&self, key: u32) -> bool {
        self.order.iter().any(|(k, _)| *k == key)
    }
}

// 4.
#[test]
fn hot_set_survives_a_scan_of_five_times_the_capacity() {
    const CHUNK: usize = 4096;
    const SLOTS: u64 = 64;
    const CAPACITY: u64 = SLOTS * CHUNK as u64;
    const HOT: u32 = 40; // 62% of the capacity
    let dir = tempfile::tempdir().unwrap();
    let tier = DiskTier::open(dir.path(), CAPACITY, verifier()).unwrap();
    let mut lru = Lru {
        capacity: CAPACITY,
        order: VecDeque::new(),
    };
    let mut request = |n: u32| {
        lru.request(n, CHUNK as u64);
        let (id, bytes) = chunk(n, CHUNK);
        if tier.get(&id).unwrap().is_none() {
            tier.put(&id, &bytes).unwrap();
        }
    };
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..2000 {
        request(rng.random_range(0..HOT));
    }
    let scan = 5 * SLOTS as u32;
    for n in 0..scan {
        request(1_000_000 + n); // each id once
    }
    let hot_lru = (0..HOT).filter(|&n| lru.contains(n)).count();
    assert_eq!(
        hot_lru, 0,
        "LRU lost the whole hot set: the scan is a real one"
    );
    for n in 0..HOT {
        let (id, bytes) = chunk(n, CHUNK);
        assert!(tier.contains(&id), "hot chunk {n} evicted by the scan");
        assert_eq!(tier.get(&id).unwrap(), Some(bytes), "hot chunk {n} served");
    }
    assert!(tier.stats().bytes_resident <= CAPACITY);
    assert!(chunk_dir_bytes(dir.path()) <= CAPACITY);
}

const CHILD_DIR: &str = "LAZYBLOCK_CACHE_TEST_CHILD_DIR";
const CHILD_OUT: &str = "LAZYBLOCK_CACHE_TEST_CHILD_OUT";
const CHILD_GO: &str = "LAZYBLOCK_CACHE_TEST_CHILD_GO";
const CHILD_REVERSE: &str = "LAZYBLOCK_CACHE_TEST_CHILD_REVERSE";
const IDS: u32 = 200;
const SHARED_CHUNK: usize = 4096;

/// Not a test on its own: the child half of
/// [`two_processes_fetch_each_chunk_once`], active only when its environment is set.
#[test]
fn child_fetcher() {
    let (Some(dir), Some(out), Some(go)) = (
        std::env::var_os(CHILD_DIR),
        std::env::var_os(CHILD_OUT),
        std::env::var_os(CHILD_GO),
    ) else {
        return;
    };
    let tier = DiskTier::open(&dir, 64 << 20, verifier()).unwrap();
    // Start together: wait for the parent's go file.
    while !Path::new(&go).exists() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut ids: Vec<u32> = (0..IDS).collect();
    if std::env::var_os(CHILD_REVERSE).is_some() {
        ids.reverse();
    }
    let mut fetched = Vec::new();
    for n in ids {
        fetch_once(&tier, n, SHARED_CHUNK, &mut |n| fetched.push(n));
    }
    let text: String = fetched.iter().map(|n| format!("{n}\n")).collect();
    fs::write(out, text).unwrap();
}

// 5.
#[test]
fn two_processes_fetch_each_chunk_once() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("cache");
    let go = work.path().join("go");
    let exe = std::env::current_exe().unwrap();
    let outs: Vec<PathBuf> = (0..3)
        .map(|i| work.path().join(format!("out{i}")))
        .collect();
    let mut children: Vec<_> = outs
        .iter()
        .enumerate()
        .map(|(i, out)| {
            let mut cmd = Command::new(&exe);
            cmd.args(["--exact", "child_fetcher", "--test-threads=1"])
                .stdout(Stdio::null())
                .env(CHILD_DIR, &dir)
                .env(CHILD_OUT, out)
                .env(CHILD_GO, &go);
            if i == 2 {
                cmd.env(CHILD_REVERSE, "1");
            }
            ChildGuard(Some(cmd.spawn().unwrap()))
        })
        .collect();
    fs::write(&go, b"").unwrap();
    for child in &mut children {
        let status = child.0.take().unwrap().wait().unwrap();
        assert!(status.success(), "child failed: {status}");
    }
    let mut counts: HashMap<u32, u32> = HashMap::new();
    for out in &outs {
        for line in fs::read_to_string(out).unwrap().lines() {
            *counts.entry(line.parse().unwrap()).or_default() += 1;
        }
    }
    for n in 0..IDS {
        assert_eq!(
            counts.get(&n),
            Some(&1),
            "chunk {n} fetched {:?} times",
            counts.get(&n)
        );
    }
    assert_eq!(counts.len(), IDS as usize);
    let tier = DiskTier::open(&dir, 64 << 20, verifier()).unwrap();
    for n in 0..IDS {
        let (id, bytes) = chunk(n, SHARED_CHUNK);
        assert_eq!(tier.get(&id).unwrap(), Some(bytes));
    }
}

/// Kills a child still running when the test fails.
struct ChildGuard(Option<std::process::Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn threads_fetch_each_chunk_once() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Arc::new(DiskTier::open(dir.path(), 64 << 20, verifier()).unwrap());
    let counts = Arc::new(Mutex::new(HashMap::<u32, u32>::new()));
    let threads: Vec<_> = (0..6)
        .map(|t| {
            // Half the threads share one tier, the others each open their own on the same dir.
            let tier = if t % 2 == 0 {
                Arc::clone(&shared)
            } else {
                Arc::new(DiskTier::open(dir.path(), 64 << 20, verifier()).unwrap())
            };
            let counts = Arc::clone(&counts);
            std::thread::spawn(move || {
                for i in 0..IDS {
                    let n = if t % 3 == 0 { IDS - 1 - i } else { i };
                    fetch_once(&tier, n, SHARED_CHUNK, &mut |n| {
                        *counts.lock().unwrap().entry(n).or_default() += 1;
                    });
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let counts = counts.lock().unwrap();
    assert_eq!(counts.len(), IDS as usize);
    assert!(counts.values().all(|&c| c == 1), "{counts:?}");
}

// 6.
#[test]
fn full_file_system_reports_no_space() {
    let fs_guard = Tmpfs::mount("1m");
    let dir = fs_guard.path().join("cache");
    let tier = DiskTier::open(&dir, 64 << 20, verifier()).unwrap();
    let mut stored = Vec::new();
    let mut error = None;
    for n in 0..64 {
        let (id, bytes) = chunk(n, 64 * 1024);
        match tier.put(&id, &bytes) {
            Ok(()) => stored.push((id, bytes)),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let error = error.expect("a 1 MiB tmpfs must fill up");
    assert_eq!(error.kind(), CacheErrorKind::NoSpace, "{error}");
    assert!(!stored.is_empty());
    assert_eq!(
        count_files(&dir.join("tmp")),
        0,
        "the failed temp file is removed"
    );
    // Still full: the next put fails the same way, reads still work.
    let (id, bytes) = chunk(999, 64 * 1024);
    assert_eq!(
        tier.put(&id, &bytes).unwrap_err().kind(),
        CacheErrorKind::NoSpace
    );
    assert_eq!(tier.stats().write_errors, 2);
    for (id, bytes) in &stored {
        assert_eq!(tier.get(id).unwrap().as_ref(), Some(bytes));
    }
    assert!(!tier.contains(&id));
}

#[test]
fn read_only_or_missing_directory_is_unwritable() {
    let fs_guard = Tmpfs::mount("4m");
    let dir = fs_guard.path().join("cache");
    let tier = DiskTier::open(&dir, 1 << 20, verifier()).unwrap();
    let (a, abytes) = chunk(1, 4096);
    tier.put(&a, &abytes).unwrap();
    drop(tier.lock(&a).unwrap()); // creates a's stripe file
    fs_guard.remount_ro();

    let (b, bbytes) = chunk(2, 4096);
    let err = tier.put(&b, &bbytes).unwrap_err();
    assert_eq!(err.kind(), CacheErrorKind::Unwritable, "{err}");
    assert_eq!(tier.get(&a).unwrap(), Some(abytes), "reads still served");
    assert_eq!(tier.get(&b).unwrap(), None);
    // An existing stripe still locks (fetches stay deduplicated); a new one cannot be created.
    let lock = tier.lock(&a).unwrap();
    assert_ne!(tier.lock_path(&a), tier.lock_path(&b));
    assert_eq!(
        tier.lock(&b).unwrap_err().kind(),
        CacheErrorKind::Unwritable
    );
    drop(lock);

    let err = DiskTier::open(&dir, 1 << 20, verifier()).unwrap_err();
    assert_eq!(err.kind(), CacheErrorKind::Unwritable, "reopen: {err}");
    let err = DiskTier::open(fs_guard.path().join("new"), 1 << 20, verifier()).unwrap_err();
    assert_eq!(err.kind(), CacheErrorKind::Unwritable, "create: {err}");

    // The directory removed under a running tier.
    let gone = tempfile::tempdir().unwrap();
    let tier = DiskTier::open(gone.path().join("cache"), 1 << 20, verifier()).unwrap();
    fs::remove_dir_all(gone.path().join("cache")).unwrap();
    let err = tier.put(&b, &bbytes).unwrap_err();
    assert_eq!(err.kind(), CacheErrorKind::Unwritable, "removed dir: {err}");
}

// 7.
#[test]
fn stale_temp_files_are_removed_on_open_young_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    drop(DiskTier::open(dir.path(), 1 << 20, verifier()).unwrap());
    let tmp = dir.path().join("tmp");
    let now = SystemTime::now();
    let make = |name: &str, age_secs: u64| {
        let path = tmp.join(name);
        let file = File::create(&path).unwrap();
        file.set_modified(now - Duration::from_secs(age_secs))
            .unwrap();
        path
    };
    let old = make(&format!("{}.1.1.tmp", "ab".repeat(32)), 20 * 60);
    let young = make(&format!("{}.1.2.tmp", "cd".repeat(32)), 60);
    let just_past = make("VERSION.1.3.tmp", 11 * 60);
    let tier = DiskTier::open(dir.path(), 1 << 20, verifier()).unwrap();
    assert!(!old.exists(), "20 min old temp removed");
    assert!(!just_past.exists(), "11 min old temp removed");
    assert!(
        young.exists(),
        "1 min old temp kept: it may be a live writer's"
    );
    assert_eq!(tier.stats().entries, 0, "temp files are not chunks");
    // Rescans clean up too.
    let older = make("probe.1.4.tmp", 3600);
    assert_eq!(tier.rescan().unwrap().stale_temps_removed, 1);
    assert!(!older.exists() && young.exists());
}
