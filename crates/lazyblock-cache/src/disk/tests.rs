use std::sync::atomic::AtomicU64;

use sha2::{Digest, Sha256};

use super::*;
use crate::CacheErrorKind;

fn sha_verifier() -> Verifier {
    Arc::new(|id: &ChunkId, bytes: &[u8]| Sha256::digest(bytes).as_slice() == id)
}

fn chunk(n: u32, len: usize) -> (ChunkId, Vec<u8>) {
    let mut bytes: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(n) as u8)
        .collect();
    let tag = n.to_be_bytes();
    let k = len.min(4);
    bytes[..k].copy_from_slice(&tag[..k]);
    (Sha256::digest(&bytes).into(), bytes)
}

/// A clock the test moves by hand.
fn manual_clock() -> (Clock, Arc<AtomicU64>) {
    let base = Instant::now();
    let secs = Arc::new(AtomicU64::new(0));
    let s = Arc::clone(&secs);
    let clock: Clock = Arc::new(move || base + Duration::from_secs(s.load(Ordering::SeqCst)));
    (clock, secs)
}

#[test]
fn paths_follow_the_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = DiskTier::open(dir.path(), 1 << 20, sha_verifier()).expect("open");
    let mut id = [0u8; 32];
    id[0] = 0xab;
    id[1] = 0xcd;
    id[31] = 0x01;
    let name = hex::encode(id);
    assert_eq!(
        tier.chunk_path(&id),
        dir.path().join("chunks/ab").join(&name)
    );
    assert_eq!(tier.lock_path(&id), dir.path().join("locks/abc"));
    assert_eq!(stripe_of(&id), 0xabc);
    assert_eq!(stripe_of(&[0xff; 32]) as usize, LOCK_STRIPES - 1);
    assert_eq!(
        fs::read_to_string(dir.path().join("VERSION")).expect("VERSION"),
        "lazyblock-chunk-cache 1\n"
    );
    for sub in ["chunks", "tmp", "locks"] {
        assert!(dir.path().join(sub).is_dir(), "{sub}");
    }
    assert_eq!(parse_id(&name), Some(id));
    assert_eq!(parse_id(&name.to_uppercase()), None);
    assert_eq!(parse_id(&name[1..]), None);
}

#[test]
fn refuses_another_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("VERSION"), "lazyblock-chunk-cache 2\n").expect("write");
    let err = DiskTier::open(dir.path(), 1 << 20, sha_verifier()).expect_err("must refuse");
    assert_eq!(err.kind(), CacheErrorKind::Version);
    assert!(err.to_string().contains("lazyblock-chunk-cache 2"), "{err}");
    assert!(!dir.path().join("chunks").exists(), "nothing created");
}

#[test]
fn rescan_adopts_and_forgets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = DiskTier::open(dir.path(), 1 << 20, sha_verifier()).expect("open a");
    let b = DiskTier::open(dir.path(), 1 << 20, sha_verifier()).expect("open b");
    let (x, xb) = chunk(1, 1000);
    let (y, yb) = chunk(2, 1000);
    a.put(&x, &xb).expect("put x");
    a.put(&y, &yb).expect("put y");
    assert!(!b.contains(&x));
    let report = b.rescan().expect("rescan");
    assert_eq!((report.files, report.adopted, report.forgotten), (2, 2, 0));
    assert!(b.contains(&x) && b.contains(&y));
    assert_eq!(b.stats().bytes_resident, 2000);
    fs::remove_file(a.chunk_path(&x)).expect("rm");
    let report = b.rescan().expect("rescan");
    assert_eq!((report.files, report.adopted, report.forgotten), (1, 0, 1));
    assert!(!b.contains(&x));
    // A get of a file deleted behind the index's back forgets it too.
    assert_eq!(a.get(&x).expect("get"), None);
    assert!(!a.contains(&x));
    assert_eq!(a.stats().forgotten, 1);
    // A get of a file the index does not know adopts it.
    let (z, zb) = chunk(3, 1000);
    b.put(&z, &zb).expect("put z");
    assert_eq!(a.get(&z).expect("get"), Some(zb));
    assert!(a.contains(&z));
}

#[test]
fn rescan_drops_empty_and_oversize_files_and_ignores_strangers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = DiskTier::open(dir.path(), 4096, sha_verifier()).expect("open");
    let (e, _) = chunk(1, 10);
    let (big, bigb) = chunk(2, 5000);
    fs::create_dir_all(tier.chunk_path(&e).parent().expect("parent")).expect("mkdir");
    fs::write(tier.chunk_path(&e), b"").expect("write");
    fs::create_dir_all(tier.chunk_path(&big).parent().expect("parent")).expect("mkdir");
    fs::write(tier.chunk_path(&big), &bigb).expect("write");
    let stranger = dir.path().join("chunks/zz");
    fs::write(&stranger, b"not ours").expect("write");
    let report = tier.rescan().expect("rescan");
    assert_eq!(report.files, 2);
    assert!(!tier.chunk_path(&e).exists() && !tier.chunk_path(&big).exists());
    assert!(stranger.exists(), "unknown names are left alone");
    assert_eq!(tier.stats().bytes_resident, 0);
}

#[test]
fn put_rescans_every_n_puts_and_after_the_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (clock, secs) = manual_clock();
    let options = DiskOptions {
        rescan_every_puts: 3,
        rescan_interval: Duration::from_secs(100),
        clock,
        ..DiskOptions::new(1 << 20)
    };
    let tier = DiskTier::open_with(dir.path(), sha_verifier(), options).expect("open");
    assert_eq!(tier.stats().rescans, 1, "open scans");
    for n in 0..3 {
        let (id, bytes) = chunk(n, 100);
        tier.put(&id, &bytes).expect("put");
    }
    assert_eq!(tier.stats().rescans, 2, "third put rescans");
    let (id, bytes) = chunk(10, 100);
    tier.put(&id, &bytes).expect("put");
    assert_eq!(tier.stats().rescans, 2);
    secs.store(100, Ordering::SeqCst);
    let (id, bytes) = chunk(11, 100);
    tier.put(&id, &bytes).expect("put");
    assert_eq!(tier.stats().rescans, 3, "interval elapsed");
    let (id, bytes) = chunk(12, 100);
    tier.put(&id, &bytes).expect("put");
    assert_eq!(tier.stats().rescans, 3);
    // A no-op put (file present) does not count.
    tier.put(&id, &bytes).expect("put");
    tier.put(&id, &bytes).expect("put");
    assert_eq!(tier.stats().rescans, 3);
    assert_eq!(tier.stats().puts, 6);
}

#[test]
fn oversize_and_empty_puts_store_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = DiskTier::open(dir.path(), 1000, sha_verifier()).expect("open");
    let (big, bigb) = chunk(1, 1001);
    tier.put(&big, &bigb).expect("put");
    tier.put(&[7; 32], b"").expect("put");
    assert!(!tier.chunk_path(&big).exists() && !tier.chunk_path(&[7; 32]).exists());
    assert_eq!(tier.stats().puts, 0);
}

#[test]
fn try_lock_sees_a_held_stripe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = DiskTier::open(dir.path(), 1 << 20, sha_verifier()).expect("open");
    let mut a = [0u8; 32];
    a[0] = 0x12;
    a[1] = 0x30;
    let mut same_stripe = a;
    same_stripe[1] = 0x3f;
    same_stripe[5] = 9;
    let mut other = a;
    other[1] = 0x40;
    let held = tier.lock(&a).expect("lock");
    assert_eq!(held.stripe(), 0x123);
    assert!(tier.try_lock(&same_stripe).expect("try").is_none());
    assert!(tier.try_lock(&other).expect("try").is_some());
    drop(held);
    assert!(tier.try_lock(&same_stripe).expect("try").is_some());
}
