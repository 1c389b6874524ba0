//! End-to-end tests of the real `lazyblock` binary.
//!
//! Every test runs the binary in its own temporary directory with `HOME` pointing there, a
//! local store at `<tmp>/store` (`LAZYBLOCK_STORE`) and a keyring at `<tmp>/keys`
//! (`LAZYBLOCK_KEYS_DIR`); every other `LAZYBLOCK_*`, `XDG_*`, `AWS_*` and `RUST_LOG` variable of
//! the test process is removed (the S3 tests pass the `AWS_*` variables back explicitly).
//!
//! Error cases check the contract of the command line: a non-zero exit, exactly one line on
//! stderr starting with `error: ` that names the problem, and an unchanged store.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use serde_json::Value;

mod common;
use common::{Out, BIN};
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const CHUNK: u64 = 512 * KIB;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A private world for one test: a temporary HOME with a store and a keyring inside.
struct World {
    tmp: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        Self {
            tmp: tempfile::Builder::new()
                .prefix("lazyblock-cli-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }

    fn store(&self) -> PathBuf {
        self.path().join("store")
    }

    fn store_url(&self) -> String {
        format!("file://{}", self.store().display())
    }

    fn keys(&self) -> PathBuf {
        self.path().join("keys")
    }

    fn command(&self) -> Command {
        self.command_of(Command::new(BIN))
    }

    /// The binary run through `sh` with another umask (no `unsafe` pre-exec hook needed).
    fn command_with_umask(&self, umask: &str) -> Command {
        let mut sh = Command::new("sh");
        sh.args(["-c", &format!("umask {umask} && exec \"$0\" \"$@\""), BIN]);
        self.command_of(sh)
    }

    fn command_of(&self, mut cmd: Command) -> Command {
        for (key, _) in std::env::vars_os() {
            let Some(k) = key.to_str() else { continue };
            if k.starts_with("LAZYBLOCK_")
                || k.starts_with("XDG_")
                || k.starts_with("AWS_")
                || k == "RUST_LOG"
            {
                cmd.env_remove(&key);
            }
        }
        cmd.env("HOME", self.path())
            .env("LAZYBLOCK_STORE", self.store_url())
            .env("LAZYBLOCK_KEYS_DIR", self.keys())
            .current_dir(self.path());
        cmd
    }

    fn run(&self, args: &[&str]) -> Out {
        self.run_with(args, |_| {})
    }

    /// Runs with extra settings applied to the command (environment changes).
    fn run_with(&self, args: &[&str], adjust: impl FnOnce(&mut Command)) -> Out {
        let mut cmd = self.command();
        cmd.args(args);
        adjust(&mut cmd);
        let output = cmd.output().expect("run the lazyblock binary");
        Out {
            args: args.iter().map(|s| s.to_string()).collect(),
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// `build raw:<src> --name <name> --json [extra…]`, asserting success; returns the report.
    fn build(&self, src: &Path, name: &str, extra: &[&str]) -> Value {
        let source = format!("raw:{}", src.display());
        let mut args = vec!["build", source.as_str(), "--name", name, "--json"];
        args.extend_from_slice(extra);
        self.run(&args).ok().json()
    }

    /// `inspect <name> --json [extra…]`, asserting success.
    fn inspect(&self, name: &str, extra: &[&str]) -> Value {
        let mut args = vec!["inspect", name, "--json"];
        args.extend_from_slice(extra);
        self.run(&args).ok().json()
    }

    /// `export <name> -o <out> [extra…]`, asserting success.
    fn export(&self, name: &str, out: &Path, extra: &[&str]) {
        let out = out.to_str().expect("utf-8 path");
        let mut args = vec!["export", name, "-o", out];
        args.extend_from_slice(extra);
        self.run(&args).ok();
    }

    fn chunks_dir(&self) -> PathBuf {
        self.store().join("roots/r0/chunks")
    }

    fn chunk_files(&self) -> Vec<PathBuf> {
        files_in(&self.chunks_dir())
    }

    fn manifest_file(&self, id: &str) -> PathBuf {
        self.store().join("roots/r0/manifests").join(id)
    }

    /// Everything under the store and the keyring: path → (size, modification time).
    fn snapshot(&self) -> BTreeMap<PathBuf, (u64, i64, i64)> {
        let mut map = BTreeMap::new();
        for dir in [self.store(), self.keys()] {
            for f in walk(&dir) {
                let m = std::fs::metadata(&f).expect("stat");
                map.insert(f, (m.len(), m.mtime(), m.mtime_nsec()));
            }
        }
        map
    }

    /// Catalog entry files of every tenant.
    fn catalog_files(&self) -> Vec<PathBuf> {
        walk(&self.store().join("catalog"))
    }
}

/// Regular files directly in `dir`, sorted (none if `dir` does not exist).
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

/// Regular files under `dir`, recursively, sorted (none if `dir` does not exist).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Writes `size` seeded random bytes to `path`, streaming.
fn write_random_file(path: &Path, size: u64, seed: u64) {
    use std::io::Write;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut buf = vec![0u8; 4 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n]).expect("write");
        left -= n as u64;
    }
    f.into_inner().expect("flush").sync_all().expect("sync");
}

/// Asserts two files hold the same bytes, naming the first differing offset.
#[track_caller]
fn assert_same_file(a: &Path, b: &Path) {
    let (ma, mb) = (
        std::fs::metadata(a).expect("stat a"),
        std::fs::metadata(b).expect("stat b"),
    );
    assert_eq!(
        ma.len(),
        mb.len(),
        "{} and {} differ in size",
        a.display(),
        b.display()
    );
    let mut fa = std::io::BufReader::new(std::fs::File::open(a).expect("open a"));
    let mut fb = std::io::BufReader::new(std::fs::File::open(b).expect("open b"));
    let (mut ba, mut bb) = (vec![0u8; 4 << 20], vec![0u8; 4 << 20]);
    let mut offset = 0u64;
    let mut left = ma.len();
    while left > 0 {
        let n = left.min(ba.len() as u64) as usize;
        fa.read_exact(&mut ba[..n]).expect("read a");
        fb.read_exact(&mut bb[..n]).expect("read b");
        if ba[..n] != bb[..n] {
            let at = (0..n).find(|&i| ba[i] != bb[i]).expect("a difference");
            panic!(
                "{} and {} differ at byte {}",
                a.display(),
                b.display(),
                offset + at as u64
            );
        }
        offset += n as u64;
        left -= n as u64;
    }
}

fn flip_byte(path: &Path, at: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open for corruption");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).expect("read byte");
    b[0] ^= 0x5a;
    f.write_all_at(&b, at).expect("write byte");
}

/// Builds `data` as `name` and checks that export returns it bit for bit.
fn round_trip(w: &World, data_path: &Path, name: &str, extra: &[&str]) -> (Value, Value) {
    let report = w.build(data_path, name, extra);
    let info = w.inspect(name, &[]);
    let out = w
        .path()
        .join(format!("out-{}", name.replace([':', '/'], "_")));
    w.export(name, &out, &[]);
    assert_same_file(data_path, &out);
    (report, info)
}

fn as_u64(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

fn as_str<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {v}"))
}

// ---------------------------------------------------------------------------------------------
// 1. Round trips
// ---------------------------------------------------------------------------------------------

#[test]
fn round_trip_size_multiple_of_chunk_size() {
    let w = World::new();
    let src = w.path().join("src.img");
    std::fs::write(&src, random_bytes(1, (4 * CHUNK) as usize)).expect("write");
    let (report, info) = round_trip(&w, &src, "multi:v1", &[]);
    assert_eq!(as_u64(&report, "chunks_total"), 4);
    assert_eq!(as_u64(&report, "chunks_new"), 4);
    assert_eq!(as_u64(&report, "chunks_zero"), 0);
    assert_eq!(as_u64(&info, "image_size"), 4 * CHUNK);
    assert_eq!(as_u64(&info, "chunk_size"), CHUNK);
    assert_eq!(w.chunk_files().len(), 4);
}

#[test]
fn round_trip_size_not_multiple_of_chunk_size() {
    let w = World::new();
    let src = w.path().join("src.img");
    std::fs::write(&src, random_bytes(2, (3 * CHUNK + 1234) as usize)).expect("write");
    let (report, info) = round_trip(&w, &src, "partial:v1", &[]);
    assert_eq!(as_u64(&report, "chunks_total"), 4);
    assert_eq!(as_u64(&info, "image_size"), 3 * CHUNK + 1234);
    // The `images` listing shows it with its size.
    let listed = w.run(&["images", "--json"]).ok().json();
    assert_eq!(listed[0]["image"], "partial:v1");
    assert_eq!(listed[0]["image_size"], 3 * CHUNK + 1234);
}

#[test]
fn round_trip_zero_regions_export_sparse() {
    let w = World::new();
    let src = w.path().join("sparse.img");
    let size = 64 * MIB;
    let data_chunks = [0u64, 37, 127];
    {
        let f = std::fs::File::create(&src).expect("create");
        f.set_len(size).expect("set_len");
        for (i, &c) in data_chunks.iter().enumerate() {
            // Partly random chunks (the rest of each chunk is zero, but the chunk is not).
            f.write_all_at(&random_bytes(100 + i as u64, 4096), c * CHUNK + 1000)
                .expect("write");
        }
    }
    let (report, info) = round_trip(&w, &src, "sparse:v1", &[]);
    let total = size / CHUNK;
    assert_eq!(as_u64(&report, "chunks_zero"), total - 3);
    assert_eq!(as_u64(&info, "chunks_total"), total);
    assert_eq!(as_u64(&info, "chunks_zero"), total - 3);
    assert_eq!(as_u64(&info, "chunks_distinct"), 3);
    assert_eq!(w.chunk_files().len(), 3, "zero chunks are not stored");

    // Holes: only the data chunks are allocated (allow generous slack for metadata).
    let out = w.path().join("out-sparse_v1");
    let probe = w.path().join("hole-probe");
    std::fs::File::create(&probe)
        .expect("probe")
        .set_len(size)
        .expect("set_len");
    let probe_blocks = std::fs::metadata(&probe).expect("stat").blocks() * 512;
    if probe_blocks > MIB {
        panic!(
            "the temporary directory's filesystem does not support sparse files ({probe_blocks} bytes allocated for an empty {size}-byte file)"
        );
    }
    let allocated = std::fs::metadata(&out).expect("stat").blocks() * 512;
    assert!(
        allocated <= 3 * CHUNK + MIB,
        "exported file is not sparse: {allocated} bytes allocated for {size} bytes"
    );
}

#[test]
fn round_trip_all_zero_image() {
    let w = World::new();
    let src = w.path().join("zero.img");
    std::fs::File::create(&src)
        .expect("create")
        .set_len(5 * CHUNK + 7)
        .expect("set_len");
    let (report, info) = round_trip(&w, &src, "zero:v1", &[]);
    assert_eq!(as_u64(&report, "chunks_zero"), 6);
    assert_eq!(as_u64(&report, "bytes_uploaded"), 0);
    assert_eq!(as_u64(&info, "chunks_distinct"), 0);
    assert_eq!(w.chunk_files(), Vec::<PathBuf>::new());
    w.run(&["verify", "zero:v1"]).ok();
}

#[test]
fn round_trip_chunk_sizes_64kib_and_4mib() {
    let w = World::new();
    let src = w.path().join("src.img");
    std::fs::write(&src, random_bytes(3, (8 * MIB + 12345) as usize)).expect("write");
    let (report, info) = round_trip(&w, &src, "small:v1", &["--chunk-size", "64KiB"]);
    assert_eq!(as_u64(&info, "chunk_size"), 64 * KIB);
    assert_eq!(as_u64(&report, "chunks_total"), 8 * 16 + 1);
    assert_eq!(as_u64(&info, "chunks_total"), 8 * 16 + 1);
    let (report, info) = round_trip(&w, &src, "large:v1", &["--chunk-size", "4MiB"]);
    assert_eq!(as_u64(&info, "chunk_size"), 4 * MIB);
    assert_eq!(as_u64(&report, "chunks_total"), 3);
    assert_eq!(as_u64(&info, "chunks_total"), 3);
    w.run(&["verify", "small:v1"]).ok();
    w.run(&["verify", "large:v1"]).ok();
}

#[test]
fn round_trip_1gib_random() {
    let w = World::new();
    let src = w.path().join("big.img");
    let size = 1u64 << 30;
    let t = Instant::now();
    write_random_file(&src, size, 0x1ab);
    let t_gen = t.elapsed();
    let t = Instant::now();
    let report = w.build(&src, "big:v1", &[]);
    let t_build = t.elapsed();
    assert_eq!(as_u64(&report, "chunks_total"), size / CHUNK);
    assert_eq!(as_u64(&report, "chunks_new"), size / CHUNK);
    let info = w.inspect("big:v1", &[]);
    let manifest_bytes = as_u64(&info, "manifest_bytes");
    assert!(
        manifest_bytes * 10_000 <= size * 2,
        "manifest of {manifest_bytes} bytes is over 0.02% of 1 GiB"
    );
    assert_eq!(manifest_bytes, as_u64(&report, "manifest_bytes"));
    let out = w.path().join("big.out");
    let t = Instant::now();
    w.export("big:v1", &out, &[]);
    let t_export = t.elapsed();
    let t = Instant::now();
    assert_same_file(&src, &out);
    let t_cmp = t.elapsed();
    eprintln!(
        "1 GiB round trip: generate {t_gen:.1?}, build {t_build:.1?}, export {t_export:.1?}, compare {t_cmp:.1?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Dedup across tenants
// ---------------------------------------------------------------------------------------------

#[test]
fn dedup_across_tenants() {
    let w = World::new();
    let src = w.path().join("src.img");
    std::fs::write(&src, random_bytes(4, (5 * CHUNK + 99) as usize)).expect("write");
    let first = w.build(&src, "shared:v1", &["--tenant", "a"]);
    assert_eq!(as_u64(&first, "chunks_new"), 6);
    let before = w.chunk_files();
    assert_eq!(before.len(), 6);
    let second = w.build(&src, "shared:v1", &["--tenant", "b"]);
    assert_eq!(
        w.chunk_files(),
        before,
        "the second tenant stored new chunk objects"
    );
    assert_eq!(as_u64(&second, "chunks_new"), 0);
    assert_eq!(as_u64(&second, "chunks_dedup"), 6);
    assert_eq!(as_u64(&second, "bytes_uploaded"), 0);

    let ma = w.inspect("shared:v1", &["--tenant", "a"]);
    let mb = w.inspect("shared:v1", &["--tenant", "b"]);
    assert_ne!(as_str(&ma, "manifest"), as_str(&mb, "manifest"));
    assert_eq!(as_str(&ma, "tenant"), "a");
    assert_eq!(as_str(&mb, "tenant"), "b");

    let (ka, kb) = (w.keys().join("a.key"), w.keys().join("b.key"));
    let (ta, tb) = (
        std::fs::read(&ka).expect("a.key"),
        std::fs::read(&kb).expect("b.key"),
    );
    assert_ne!(ta, tb, "tenants share a key");
    for k in [&ka, &kb] {
        let mode = std::fs::metadata(k).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", k.display());
    }
    // Both tenants read their own image back.
    for t in ["a", "b"] {
        let out = w.path().join(format!("out-{t}"));
        w.export("shared:v1", &out, &["--tenant", t]);
        assert_same_file(&src, &out);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Bad input
// ---------------------------------------------------------------------------------------------

/// Runs a failing command and checks the full error contract, store unchanged included.
#[track_caller]
fn assert_rejected(w: &World, args: &[&str], needles: &[&str]) -> String {
    assert_rejected_with(w, args, needles, |_| {})
}

#[track_caller]
fn assert_rejected_with(
    w: &World,
    args: &[&str],
    needles: &[&str],
    adjust: impl FnOnce(&mut Command),
) -> String {
    let before = w.snapshot();
    let catalog_before = w.catalog_files();
    let line = w.run_with(args, adjust).fails_with(&[1], needles);
    assert_eq!(
        w.snapshot(),
        before,
        "the store or keyring changed: {args:?}"
    );
    assert_eq!(w.catalog_files(), catalog_before);
    line
}

#[test]
fn bad_source_missing() {
    let w = World::new();
    let missing = w.path().join("nope.img");
    let src = format!("raw:{}", missing.display());
    assert_rejected(
        &w,
        &["build", &src, "--name", "x:v1"],
        &["nope.img", "cannot open source"],
    );
}

#[test]
fn bad_source_directory() {
    let w = World::new();
    let dir = w.path().join("adir");
    std::fs::create_dir(&dir).expect("mkdir");
    let src = format!("raw:{}", dir.display());
    assert_rejected(
        &w,
        &["build", &src, "--name", "x:v1"],
        &["adir", "not a regular file"],
    );
}

#[test]
fn bad_source_empty() {
    let w = World::new();
    let empty = w.path().join("empty.img");
    std::fs::write(&empty, b"").expect("write");
    let src = format!("raw:{}", empty.display());
    assert_rejected(
        &w,
        &["build", &src, "--name", "x:v1"],
        &["empty.img", "empty"],
    );
}

#[test]
fn bad_name_without_tag() {
    let w = World::new();
    let src = w.path().join("src.img");
    std::fs::write(&src, random_bytes(5, 1000)).expect("write");
    let src = format!("raw:{}", src.display());
    assert_rejected(
        &w,
        &["build", &src, "--name", "notag"],
        &["notag", "no tag"],
    );
}

#[test]
fn bad_tenant_name() {
    let w = World::new();
    let src = w.path().join("src.img");
    std::fs::write(&src, random_bytes(6, 1000)).expect("write");
    let src = format!("raw:{}", src.display());
    assert_rejected(
        &w,
        &["build", &src, "--name", "x:v1", "--tenant", "Bad/Tenant"],
        &["invalid tenant name", "Bad/Tenant"],
    );
    assert_rejected(
        &w,
        &["images", "--tenant=-dash"],
        &["invalid tenant name", "-dash"],
    );
    // The same check applies to a tenant from the environment.
    assert_rejected_with(&w, &["images"], &["invalid tenant name", "UPPER"], |c| {
        c.env("LAZYBLOCK_TENANT", "UPPER");
    });
}

#[test]
fn bad_source_scheme() {
    let w = World::new();
    let src = w.path().join("src.img");
    std::fs::write(&src, random_bytes(7, 1000)).expect("write");
    assert_rejected(
        &w,
        &["build", "http://example.com/x.img", "--name", "x:v1"],
        &["http://example.com/x.img", "raw:"],
    );
    // A bare path is not a source either: the scheme is required.
    let bare = src.display().to_string();
    assert_rejected(&w, &["build", &bare, "--name", "x:v1"], &[&bare, "raw:"]);
}

#[test]
fn bad_store_url() {
    let w = World::new();
    let src = w.path().join("src.img");
    std::fs::write(&src, random_bytes(8, 1000)).expect("write");
    let src = format!("raw:{}", src.display());
    assert_rejected(
        &w,
        &["build", &src, "--name", "x:v1", "--store", "notaurl"],
        &["notaurl", "store URL"],
    );
    assert_rejected(&w, &["images", "--store", "notaurl"], &["notaurl"]);
    assert!(!w.path().join("notaurl").exists());
}

fn unreachable_s3(cmd: &mut Command) {
    cmd.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "dummy")
        .env("AWS_SECRET_ACCESS_KEY", "dummy-secret")
        .env("AWS_REGION", "us-east-1");
}

#[test]
fn bad_store_unreachable_s3() {
    let w = World::new();
    let src = w.path().join("src.img");
    std::fs::write(&src, random_bytes(9, 1000)).expect("write");
    let src = format!("raw:{}", src.display());
    let out = w.path().join("out.img");
    let out_s = out.display().to_string();
    let cases: [&[&str]; 3] = [
        &["build", &src, "--name", "x:v1", "--store", "s3://bucket/x"],
        &["images", "--store", "s3://bucket/x"],
        &["export", "x:v1", "-o", &out_s, "--store", "s3://bucket/x"],
    ];
    for args in cases {
        let started = Instant::now();
        assert_rejected_with(&w, args, &["s3://bucket/x"], unreachable_s3);
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(30),
            "{args:?} took {took:?} to fail"
        );
    }
    assert!(!out.exists());
    assert!(!w.keys().exists(), "a failed build created a key");
}

#[test]
fn missing_tenant_key() {
    let w = World::new();
    let src = w.path().join("src.img");
    std::fs::write(&src, random_bytes(10, (2 * CHUNK) as usize)).expect("write");
    let report = w.build(&src, "x:v1", &["--tenant", "a"]);
    let manifest = as_str(&report, "manifest").to_owned();
    std::fs::remove_file(w.keys().join("a.key")).expect("remove the key");
    let out = w.path().join("out.img");
    let out_s = out.display().to_string();
    // The error names the manifest (short id) and the missing key of tenant a.
    let short = &manifest[..12];
    let line = assert_rejected(
        &w,
        &["export", "x:v1", "-o", &out_s, "--tenant", "a"],
        &["no key for tenant a", short],
    );
    assert!(line.contains(&w.keys().display().to_string()), "{line}");
    assert!(!out.exists());
    assert_eq!(
        files_in(w.path()),
        vec![src.clone()],
        "export left files behind"
    );
    assert_rejected(
        &w,
        &["verify", "x:v1", "--tenant", "a"],
        &["no key for tenant a", short],
    );
    // Inspecting needs no key.
    w.inspect("x:v1", &["--tenant", "a"]);

    // A different key for the same tenant (e.g. a keyring restored from the wrong backup).
    std::fs::write(w.keys().join("a.key"), format!("{}\n", "ab".repeat(32))).expect("key");
    for args in [
        &["export", "x:v1", "-o", &out_s, "--tenant", "a"][..],
        &["verify", "x:v1", "--tenant", "a"][..],
    ] {
        assert_rejected(&w, args, &[short, "cannot open it"]);
    }
    assert!(!out.exists());
}

#[test]
fn export_not_in_catalog() {
    let w = World::new();
    let src = w.path().join("src.img");
    std::fs::write(&src, random_bytes(11, 1000)).expect("write");
    w.build(&src, "present:v1", &[]);
    let out = w.path().join("out.img");
    let out_s = out.display().to_string();
    assert_rejected(
        &w,
        &["export", "absent:v1", "-o", &out_s],
        &["absent:v1", "not in the catalog", "default"],
    );
    // Another tag of an existing name is just as absent.
    assert_rejected(
        &w,
        &["export", "present:v2", "-o", &out_s],
        &["present:v2", "not in the catalog"],
    );
    assert_rejected(
        &w,
        &["verify", "absent:v1"],
        &["absent:v1", "not in the catalog"],
    );
    assert_rejected(
        &w,
        &["inspect", "absent:v1"],
        &["absent:v1", "not in the catalog"],
    );
    assert!(!out.exists());
}

// ---------------------------------------------------------------------------------------------
// 4. Corruption
// ---------------------------------------------------------------------------------------------

#[test]
fn corrupt_chunk_is_reported_by_verify_and_fails_export() {
    let w = World::new();
    let src = w.path().join("src.img");
    std::fs::write(&src, random_bytes(12, (4 * CHUNK) as usize)).expect("write");
    w.build(&src, "x:v1", &[]);
    w.run(&["verify", "x:v1"]).ok();
    let chunks = w.chunk_files();
    let victim = &chunks[1];
    let victim_name = victim
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name")
        .to_owned();
    flip_byte(victim, 1000);

    // verify: exit 1, the bad chunk named on stdout, one error line on stderr.
    let before = w.snapshot();
    let v = w.run(&["verify", "x:v1"]);
    assert_eq!(v.status.code(), Some(1), "{}", v.describe());
    assert!(v.stdout.contains(&victim_name), "{}", v.describe());
    assert_eq!(v.stdout.lines().count(), 1, "{}", v.describe());
    v.fails_with(&[1], &["x:v1", "1 of 4"]);
    let vj = w.run(&["verify", "x:v1", "--json"]);
    assert_eq!(vj.status.code(), Some(1), "{}", vj.describe());
    let j = vj.json();
    assert_eq!(j["bad"].as_array().map(Vec::len), Some(1), "{j}");
    assert_eq!(j["bad"][0]["name"], victim_name.as_str());

    // export: fails naming the chunk; nothing in the output directory.
    let out_dir = w.path().join("out");
    std::fs::create_dir(&out_dir).expect("mkdir");
    let out = out_dir.join("x.img");
    let out_s = out.display().to_string();
    assert_rejected(&w, &["export", "x:v1", "-o", &out_s], &[&victim_name]);
    assert_eq!(
        walk(&out_dir),
        Vec::<PathBuf>::new(),
        "export left files behind"
    );
    assert_eq!(w.snapshot(), before);
}

#[test]
fn deleted_chunk_is_reported_missing() {
    let w = World::new();
    let src = w.path().join("src.img");
    std::fs::write(&src, random_bytes(13, (3 * CHUNK) as usize)).expect("write");
    w.build(&src, "x:v1", &[]);
    let chunks = w.chunk_files();
    let victim = &chunks[0];
    let victim_name = victim
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name")
        .to_owned();
    std::fs::remove_file(victim).expect("delete chunk");
    let v = w.run(&["verify", "x:v1"]);
    assert_eq!(v.status.code(), Some(1), "{}", v.describe());
    assert!(v.stdout.contains(&victim_name), "{}", v.describe());
    assert!(v.stdout.contains("missing"), "{}", v.describe());
    v.fails_with(&[1], &["1 of 3"]);
    // A truncated chunk is reported too, beside the missing one.
    let truncated = &chunks[2];
    let truncated_name = truncated
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name")
        .to_owned();
    std::fs::OpenOptions::new()
        .write(true)
        .open(truncated)
        .expect("open")
        .set_len(CHUNK - 1)
        .expect("truncate");
    let v = w.run(&["verify", "x:v1", "--json"]);
    assert_eq!(v.status.code(), Some(1), "{}", v.describe());
    let bad: Vec<String> = v.json()["bad"]
        .as_array()
        .expect("array")
        .iter()
        .map(|b| as_str(b, "name").to_owned())
        .collect();
    assert_eq!(bad.len(), 2, "{}", v.describe());
    assert!(bad.contains(&victim_name) && bad.contains(&truncated_name));
    let out_dir = w.path().join("out");
    std::fs::create_dir(&out_dir).expect("mkdir");
    let out_s = out_dir.join("x.img").display().to_string();
    assert_rejected(&w, &["export", "x:v1", "-o", &out_s], &[&victim_name]);
    assert_eq!(walk(&out_dir), Vec::<PathBuf>::new());
}

#[test]
fn corrupt_manifest_fails_every_reader() {
    let w = World::new();
    let src = w.path().join("src.img");
    std::fs::write(&src, random_bytes(14, (3 * CHUNK + 77) as usize)).expect("write");
    let report = w.build(&src, "x:v1", &[]);
    let id = as_str(&report, "manifest").to_owned();
    let path = w.manifest_file(&id);
    let pristine = std::fs::read(&path).expect("read manifest");
    let len = pristine.len() as u64;
    let out_dir = w.path().join("out");
    std::fs::create_dir(&out_dir).expect("mkdir");
    let out_s = out_dir.join("x.img").display().to_string();
    // Magic, version, flags, header, chunk table, key table, last body byte, trailer.
    for at in [0, 4, 6, 9, len / 2, len - 40, len - 33, len - 1] {
        flip_byte(&path, at);
        for args in [
            &["inspect", "x:v1"][..],
            &["verify", "x:v1"][..],
            &["export", "x:v1", "-o", &out_s][..],
        ] {
            let line = assert_rejected(&w, args, &["manifest", &id]);
            assert!(line.contains("x:v1"), "byte {at}: {line}");
        }
        assert_eq!(walk(&out_dir), Vec::<PathBuf>::new(), "byte {at}");
        std::fs::write(&path, &pristine).expect("restore manifest");
    }
    // Restored: everything works again (so the failures above came from the flips).
    w.run(&["verify", "x:v1"]).ok();
}

// ---------------------------------------------------------------------------------------------
// 5. Tenants
// ---------------------------------------------------------------------------------------------

#[test]
fn foreign_catalog_entry_is_refused() {
    let w = World::new();
    let src = w.path().join("src.img");
    std::fs::write(&src, random_bytes(15, (2 * CHUNK) as usize)).expect("write");
    w.build(&src, "x:v1", &["--tenant", "a"]);
    // Tenant b exists and has a key of its own.
    let other = w.path().join("other.img");
    std::fs::write(&other, random_bytes(16, 5000)).expect("write");
    w.build(&other, "mine:v1", &["--tenant", "b"]);

    let b_catalog = w.store().join("catalog/b");
    std::fs::copy(w.store().join("catalog/a/x:v1"), b_catalog.join("x:v1")).expect("copy");
    let out = w.path().join("stolen.img");
    let out_s = out.display().to_string();
    for args in [
        &["export", "x:v1", "-o", &out_s, "--tenant", "b"][..],
        &["verify", "x:v1", "--tenant", "b"][..],
    ] {
        assert_rejected(
            &w,
            args,
            &["belongs to tenant a", "tenant b", "cannot open it"],
        );
    }
    assert!(!out.exists());
}

#[test]
fn tenant_catalogs_are_separate() {
    let w = World::new();
    let src = w.path().join("src.img");
    std::fs::write(&src, random_bytes(17, 5000)).expect("write");
    // "a" is a prefix of "ab": listings must not mix them.
    w.build(&src, "only-a:v1", &["--tenant", "a"]);
    w.build(&src, "only-ab:v1", &["--tenant", "ab"]);
    let list = |t: &str| -> Vec<String> {
        w.run(&["images", "--json", "--tenant", t])
            .ok()
            .json()
            .as_array()
            .expect("array")
            .iter()
            .map(|e| as_str(e, "image").to_owned())
            .collect()
    };
    assert_eq!(list("a"), vec!["only-a:v1"]);
    assert_eq!(list("ab"), vec!["only-ab:v1"]);
    assert_eq!(list("c"), Vec::<String>::new());
    let out_s = w.path().join("out.img").display().to_string();
    assert_rejected(
        &w,
        &["export", "only-ab:v1", "-o", &out_s, "--tenant", "a"],
        &["only-ab:v1", "not in the catalog", "tenant a"],
    );
    assert_rejected(
        &w,
        &["inspect", "only-a:v1", "--tenant", "ab"],
        &["only-a:v1", "not in the catalog", "tenant ab"],
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Config precedence
// ---------------------------------------------------------------------------------------------

#[test]
fn config_precedence_flag_over_env_over_file() {
    let w = World::new();
    let src = w.path().join("src.img");
    std::fs::write(&src, random_bytes(18, 3000)).expect("write");
    let source = format!("raw:{}", src.display());
    let (s_file, s_env, s_flag) = (
        w.path().join("store-file"),
        w.path().join("store-env"),
        w.path().join("store-flag"),
    );
    let config = w.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "store = \"file://{}\"\ntenant = \"tfile\"\n",
            s_file.display()
        ),
    )
    .expect("write config");
    let config_s = config.display().to_string();
    let no_env = |c: &mut Command| {
        c.env_remove("LAZYBLOCK_STORE");
    };

    // File only.
    w.run_with(
        &["build", &source, "--name", "x:file", "--config", &config_s],
        no_env,
    )
    .ok();
    assert!(s_file.join("catalog/tfile/x:file").is_file());
    // LAZYBLOCK_CONFIG names the file as well as --config does.
    w.run_with(&["build", &source, "--name", "x:cfgenv"], |c| {
        c.env_remove("LAZYBLOCK_STORE")
            .env("LAZYBLOCK_CONFIG", &config);
    })
    .ok();
    assert!(s_file.join("catalog/tfile/x:cfgenv").is_file());

    // Environment over file.
    w.run_with(
        &["build", &source, "--name", "x:env", "--config", &config_s],
        |c| {
            c.env("LAZYBLOCK_STORE", format!("file://{}", s_env.display()))
                .env("LAZYBLOCK_TENANT", "tenv");
        },
    )
    .ok();
    assert!(s_env.join("catalog/tenv/x:env").is_file());
    assert!(!s_file.join("catalog/tfile/x:env").exists());
    assert!(!s_file.join("catalog/tenv").exists());

    // Flags over environment.
    let flag_store = format!("file://{}", s_flag.display());
    w.run_with(
        &[
            "build",
            &source,
            "--name",
            "x:flag",
            "--config",
            &config_s,
            "--store",
            &flag_store,
            "--tenant",
            "tflag",
        ],
        |c| {
            c.env("LAZYBLOCK_STORE", format!("file://{}", s_env.display()))
                .env("LAZYBLOCK_TENANT", "tenv");
        },
    )
    .ok();
    assert!(s_flag.join("catalog/tflag/x:flag").is_file());
    assert_eq!(
        walk(&s_env.join("catalog")),
        vec![s_env.join("catalog/tenv/x:env")]
    );
    assert_eq!(
        walk(&s_file.join("catalog")),
        vec![
            s_file.join("catalog/tfile/x:cfgenv"),
            s_file.join("catalog/tfile/x:file")
        ]
    );
    // Nothing went to the default store of the world.
    assert!(!w.store().exists());

    // chunk_size from the file; --chunk-size overrides it.
    std::fs::write(
        &config,
        format!(
            "store = \"file://{}\"\ntenant = \"tfile\"\nchunk_size = 65536\n",
            s_file.display()
        ),
    )
    .expect("write config");
    w.run_with(
        &["build", &source, "--name", "cs:file", "--config", &config_s],
        no_env,
    )
    .ok();
    w.run_with(
        &[
            "build",
            &source,
            "--name",
            "cs:flag",
            "--config",
            &config_s,
            "--chunk-size",
            "128KiB",
        ],
        no_env,
    )
    .ok();
    for (image, size) in [("cs:file", 64 * KIB), ("cs:flag", 128 * KIB)] {
        let info = w
            .run_with(&["inspect", image, "--json", "--config", &config_s], no_env)
            .ok()
            .json();
        assert_eq!(as_u64(&info, "chunk_size"), size, "{image}");
    }
}

#[test]
fn config_file_with_unknown_key() {
    let w = World::new();
    let config = w.path().join("config.toml");
    std::fs::write(&config, "stor = \"file:///tmp/x\"\ntenant = \"t\"\n").expect("write");
    let config_s = config.display().to_string();
    let line = assert_rejected(
        &w,
        &["images", "--config", &config_s],
        &["config.toml", "stor"],
    );
    assert!(line.contains("unknown field"), "{line}");
    // An explicitly named config file that does not exist is an error too.
    let missing = w.path().join("missing.toml").display().to_string();
    assert_rejected(&w, &["images", "--config", &missing], &["missing.toml"]);
}

// ---------------------------------------------------------------------------------------------
// 7. S3
// ---------------------------------------------------------------------------------------------

fn with_aws_env(cmd: &mut Command) {
    for (k, v) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env(k, v);
        }
    }
}

fn count_s3_chunks(config: &lazyblock_store::StoreConfig) -> usize {
    use futures::TryStreamExt;
    use lazyblock_store::ChunkStore;
    let store = lazyblock_store::ObjectChunkStore::open(config).expect("open S3 store");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        store
            .list_chunks(&lazyblock_format::RootId::initial())
            .try_collect::<Vec<_>>()
            .await
            .expect("list chunks")
            .len()
    })
}

#[test]
fn s3_round_trip_and_cross_tenant_dedup() {
    let unique = lazyblock_store::testing::unique_name("cli");
    let Some(config) = lazyblock_store::testing::s3_test_config(&unique) else {
        eprintln!("LAZYBLOCK_SKIP_S3_TESTS=1: skipping");
        return;
    };
    let url = config.location.url();
    assert!(url.ends_with(&unique), "{url}");
    let w = World::new();
    let src = w.path().join("src.img");
    {
        let mut data = random_bytes(19, (3 * CHUNK + 1234) as usize);
        data[CHUNK as usize..2 * CHUNK as usize].fill(0);
        std::fs::write(&src, data).expect("write");
    }
    let source = format!("raw:{}", src.display());
    let s3 = |args: &[&str]| -> Out {
        let mut a = args.to_vec();
        a.extend_from_slice(&["--store", url.as_str()]);
        w.run_with(&a, with_aws_env)
    };
    assert_eq!(count_s3_chunks(&config), 0);
    let first = s3(&[
        "build", &source, "--name", "x:v1", "--json", "--tenant", "a",
    ])
    .ok()
    .json();
    assert_eq!(as_u64(&first, "chunks_new"), 3);
    assert_eq!(as_u64(&first, "chunks_zero"), 1);
    assert_eq!(count_s3_chunks(&config), 3);
    let out = w.path().join("out-a.img");
    let out_s = out.display().to_string();
    s3(&["export", "x:v1", "-o", &out_s, "--tenant", "a"]).ok();
    assert_same_file(&src, &out);
    s3(&["verify", "x:v1", "--tenant", "a"]).ok();

    let second = s3(&[
        "build", &source, "--name", "x:v1", "--json", "--tenant", "b",
    ])
    .ok()
    .json();
    assert_eq!(as_u64(&second, "chunks_new"), 0);
    assert_eq!(count_s3_chunks(&config), 3, "tenant b stored new chunks");
    let out_b = w.path().join("out-b.img");
    let out_b_s = out_b.display().to_string();
    s3(&["export", "x:v1", "-o", &out_b_s, "--tenant", "b"]).ok();
    assert_same_file(&src, &out_b);
    let ia = s3(&["inspect", "x:v1", "--json", "--tenant", "a"])
        .ok()
        .json();
    let ib = s3(&["inspect", "x:v1", "--json", "--tenant", "b"])
        .ok()
        .json();
    assert_ne!(as_str(&ia, "manifest"), as_str(&ib, "manifest"));
    // Listings through S3, with a path-like name.
    s3(&["build", &source, "--name", "team/app:v2", "--tenant", "a"]).ok();
    let listed: Vec<String> = s3(&["images", "--json", "--tenant", "a"])
        .ok()
        .json()
        .as_array()
        .expect("array")
        .iter()
        .map(|e| as_str(e, "image").to_owned())
        .collect();
    assert_eq!(listed, vec!["team/app:v2", "x:v1"]);
    // Errors through S3 keep the contract too.
    s3(&["export", "absent:v1", "-o", &out_s, "--tenant", "a"])
        .fails_with(&[1], &["absent:v1", "not in the catalog"]);
    // Nothing was written to the local default store.
    assert!(!w.store().exists());
}

// ---------------------------------------------------------------------------------------------
// 8. Help
// ---------------------------------------------------------------------------------------------

#[test]
fn help_of_every_subcommand() {
    let w = World::new();
    let global = ["--store", "--tenant", "--keys-dir", "--config", "--verbose"];
    let cases: &[(&[&str], &[&str])] = &[
        (
            &[],
            &["build", "inspect", "export", "verify", "images", "bench"],
        ),
        (
            &["build"],
            &[
                "--name",
                "--chunk-size",
                "--upload-concurrency",
                "--json",
                "raw:",
            ],
        ),
        (&["inspect"], &["--json"]),
        (&["export"], &["--output", "-o", "--concurrency"]),
        (&["verify"], &["--concurrency", "--json"]),
        (&["images"], &["--json"]),
        (&["bench"], &["build"]),
        (
            &["bench", "build"],
            &["--size", "--dir", "--seed", "--json"],
        ),
    ];
    for (sub, flags) in cases {
        let mut args = sub.to_vec();
        args.push("--help");
        let out = w.run(&args).ok();
        // Every command but the top level and the `bench` group lists the global flags too.
        let inherited: &[&str] = if sub.is_empty() || *sub == ["bench"] {
            &[]
        } else {
            &global
        };
        for flag in flags.iter().chain(inherited) {
            assert!(
                out.stdout.contains(flag),
                "`{}` does not mention {flag}\n{}",
                args.join(" "),
                out.describe()
            );
        }
    }
    assert!(!w.store().exists(), "--help touched the store");
}

// ---------------------------------------------------------------------------------------------
// An interrupted export (SIGTERM, or Ctrl-C's SIGINT) leaves no partial file behind: the binary
// drops the command's future on the signal, which removes `.<name>.lazyblock-partial-<pid>`,
// and exits with 128 + 15.
// ---------------------------------------------------------------------------------------------

#[test]
fn interrupted_export_leaves_no_partial_file() {
    let w = World::new();
    let src = w.path().join("src.img");
    write_random_file(&src, 256 * MIB, 0x5157);
    w.build(&src, "x:v1", &[]);
    let out_dir = w.path().join("out");
    std::fs::create_dir(&out_dir).expect("mkdir");
    let out = out_dir.join("x.img");
    let mut child = w
        .command()
        .args(["export", "x:v1", "-o"])
        .arg(&out)
        .args(["--concurrency", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn export");
    // Wait until the export is writing its temporary file.
    let deadline = Instant::now() + Duration::from_secs(30);
    while files_in(&out_dir).is_empty() {
        assert!(Instant::now() < deadline, "export never started writing");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the export finished before it could be interrupted"
    );
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let status = child.wait().expect("wait");
    assert_eq!(
        status.code(),
        Some(143),
        "an interrupted export exits with 128 + SIGTERM"
    );
    assert!(!out.exists());
    assert_eq!(
        files_in(&out_dir),
        Vec::<PathBuf>::new(),
        "an interrupted export left a partial file behind"
    );
}

#[test]
fn usage_errors_are_one_line_with_status_2() {
    let w = World::new();
    for args in [
        &["build", "raw:/nonexistent"][..],
        &["build", "raw:/x", "--name", "a:b", "--chunk-size", "1XB"],
        &["frobnicate"],
    ] {
        let out = w.run(args);
        assert_eq!(out.status.code(), Some(2), "{}", out.describe());
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{}", out.describe());
        assert!(lines[0].starts_with("error: "), "{}", out.describe());
    }
    assert!(
        !w.store().exists(),
        "a usage error must not touch the store"
    );
}

#[test]
fn read_commands_do_not_create_a_mistyped_store() {
    let w = World::new();
    let typo = w.path().join("no-such-store");
    let url = format!("file://{}", typo.display());
    for args in [
        &["images", "--store", &url][..],
        &["inspect", "x:v1", "--store", &url],
        &["verify", "x:v1", "--store", &url],
    ] {
        w.run(args).fails_with(&[1], &["does not exist"]);
    }
    assert!(!typo.exists(), "a read command created the store directory");
}

// ---------------------------------------------------------------------------------------------
// OCI sources
// ---------------------------------------------------------------------------------------------

fn sha256_hex(data: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes a one-layer OCI layout (gzip layer) tagged `tag`; returns the layer blob's path.
fn write_oci_layout(dir: &Path, tag: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    let mut tar_bytes = Vec::new();
    {
        let mut t = tar::Builder::new(&mut tar_bytes);
        for (path, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_entry_type(tar::EntryType::Regular);
            t.append_data(&mut h, path, *data).expect("append");
        }
        t.finish().expect("finish");
    }
    let diff_id = sha256_hex(&tar_bytes);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar_bytes).expect("gzip");
    let layer = gz.finish().expect("gzip");
    let put = |data: &[u8]| {
        let d = sha256_hex(data);
        std::fs::write(blobs.join(&d), data).expect("write blob");
        (d, data.len())
    };
    let (layer_digest, layer_size) = put(&layer);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/usr/bin"],"Cmd":["/bin/true"],"WorkingDir":"/srv"}},"rootfs":{{"type":"layers","diff_ids":["sha256:{diff_id}"]}}}}"#
    );
    let (config_digest, config_size) = put(config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{config_digest}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{layer_digest}","size":{layer_size}}}]}}"#
    );
    let (manifest_digest, manifest_size) = put(manifest.as_bytes());
    std::fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{manifest_digest}","size":{manifest_size},"annotations":{{"org.opencontainers.image.ref.name":"{tag}"}}}}]}}"#
        ),
    )
    .expect("index");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
    blobs.join(layer_digest)
}

#[test]
fn oci_source_builds_a_clean_ext4_image() {
    let w = World::new();
    let layout = w.path().join("layout");
    let big = vec![0x5au8; 3 << 20];
    write_oci_layout(
        &layout,
        "v1",
        &[
            ("etc/motd", b"hello from an OCI layer\n"),
            ("srv/data.bin", &big),
        ],
    );
    let source = format!("oci:{}:v1", layout.display());
    let built = w
        .run(&["build", &source, "--name", "oci/app:v1", "--json"])
        .ok()
        .json();
    assert!(built["chunks_new"].as_u64().expect("chunks_new") > 0);
    // Deterministic: the same image from a copy of the layout in another directory, with another
    // time zone, umask, spool directory and thread counts, gives the same chunk list (so it
    // stores nothing new) and the same image bytes.
    let copy = w.path().join("elsewhere/layout-copy");
    std::fs::create_dir_all(&copy).expect("mkdir");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", layout.display()))
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(cp.success());
    let spool = w.path().join("spool");
    std::fs::create_dir(&spool).expect("mkdir");
    let output = w
        .command_with_umask("077")
        .env("TZ", "Pacific/Chatham")
        .env("LC_ALL", "C")
        .args(["build", &format!("oci:{}:v1", copy.display())])
        .args(["--name", "oci/app:v2", "--json", "--seal-threads", "1"])
        .args(["--upload-concurrency", "1", "--work-dir"])
        .arg(&spool)
        .output()
        .expect("run the rebuild");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let again: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(
        again["chunks_new"], 0,
        "a rebuild of the same image stored new chunks"
    );
    assert_eq!(again["chunks_total"], built["chunks_total"]);
    let (v1, v2) = (w.path().join("v1.ext4"), w.path().join("v2.ext4"));
    w.export("oci/app:v1", &v1, &[]);
    w.export("oci/app:v2", &v2, &[]);
    assert!(
        std::fs::read(&v1).expect("read") == std::fs::read(&v2).expect("read"),
        "the two builds gave different image bytes"
    );
    let info = w.inspect("oci/app:v1", &[]);
    assert_eq!(info["config"]["working_dir"], "/srv");
    assert!(info["source"].as_str().expect("source").starts_with("oci:"));
    let out = w.path().join("app.ext4");
    w.export("oci/app:v1", &out, &[]);
    let fsck = Command::new("e2fsck")
        .args(["-fn"])
        .arg(&out)
        .output()
        .expect("run e2fsck");
    assert!(
        fsck.status.success(),
        "e2fsck -fn failed:\n{}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    // The file is in the image: debugfs reads it back without mounting.
    let cat = Command::new("debugfs")
        .args(["-R", "cat /etc/motd"])
        .arg(&out)
        .output()
        .expect("run debugfs");
    assert_eq!(
        String::from_utf8_lossy(&cat.stdout),
        "hello from an OCI layer\n"
    );
}

#[test]
fn oci_source_with_a_corrupt_layer_publishes_nothing() {
    let w = World::new();
    let layout = w.path().join("layout");
    let layer = write_oci_layout(&layout, "v1", &[("a.txt", b"some bytes")]);
    let mut bytes = std::fs::read(&layer).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&layer, bytes).expect("write");
    let source = format!("oci:{}:v1", layout.display());
    w.run(&["build", &source, "--name", "bad:v1"])
        .fails_with(&[1], &["corrupt"]);
    // A well-formed blob with other content fails its digest check.
    let other = w.path().join("other");
    let other_layer = write_oci_layout(&other, "v1", &[("a.txt", b"other bytes")]);
    std::fs::copy(&other_layer, &layer).expect("swap the layer blob");
    let line = w
        .run(&["build", &source, "--name", "bad:v1"])
        .fails_with(&[1], &[]);
    assert!(
        line.contains("sha256") || line.contains("digest") || line.contains("size"),
        "{line}"
    );
    assert!(w.run(&["images"]).ok().stdout.is_empty());
    let missing_tag = format!("oci:{}:nope", layout.display());
    w.run(&["build", &missing_tag, "--name", "bad:v1"])
        .fails_with(&[1], &["nope"]);
    w.run(&["build", "oci:/nonexistent/layout", "--name", "bad:v1"])
        .fails_with(&[1], &["/nonexistent/layout"]);
}
