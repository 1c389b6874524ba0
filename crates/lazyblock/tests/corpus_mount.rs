//! The real-image acceptance test of the agent: the corpus image `python3-numpy-pandas` (built
//! by `scripts/make-corpus.sh`) is built into a local store, mounted on demand with
//! `lazyblock mount`, and `python3 -c 'import numpy, pandas'` runs from it in a `chroot`.
//!
//! Ignored by default (it needs the corpus); run it in release with
//! `LAZYBLOCK_CORPUS=<the script's OUT_DIR> cargo test --release -p lazyblock --test corpus_mount
//! -- --ignored corpus_mount --nocapture`. Run with `--ignored` but without the variable, it
//! fails.
//!
//! One test, sequential steps, each mount with a fresh empty worker cache unless said otherwise:
//! cold without read-ahead (the agent fetches only what the guest reads), cold with read-ahead
//! while recording a start-up profile, cold replaying that profile, and warm (the cache of the
//! replay step). Each step prints one line `corpus_mount: step ...` with its figures on stderr.
//!
//! The test runs in its own temporary directory with `HOME` there, a local store at
//! `<tmp>/store`, a keyring at `<tmp>/keys` and mount state at `<tmp>/run`
//! (`LAZYBLOCK_RUN_DIR`); every other `LAZYBLOCK_*`, `XDG_*`, `AWS_*` and `RUST_LOG` variable is
//! removed. Every mount is owned by a [`MountGuard`] that runs `lazyblock umount`, falls back to
//! `umount -l` / `losetup -d` and kills a leftover agent; the [`World`] sweeps anything left
//! under its directory before removing it. Tools run with a bound, so a hang fails the test.
//!
//! Needs root, `/dev/fuse`, loop devices and `losetup`, `mount`, `umount`, `chroot`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::*;

const TAG: &str = "python3-numpy-pandas";
const IMAGE: &str = "np:v1";
const PYTHON: &str = "import numpy, pandas; print(numpy.__version__, pandas.__version__)";

/// Bound for a tool or a `lazyblock` command (a hang fails the test instead of stalling it).
const TOOL_LIMIT: Duration = Duration::from_secs(600);

// ---------------------------------------------------------------------------------------------
// Helpers: mount
// ---------------------------------------------------------------------------------------------

/// The agent pid and log path from `lazyblock: mounted ... (agent pid N, log PATH)`.
fn agent_pid_and_log(stderr: &str) -> (u32, PathBuf) {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("lazyblock: mounted "))
        .unwrap_or_else(|| panic!("no `lazyblock: mounted` line in {stderr:?}"));
    let pid = line
        .split("agent pid ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no agent pid in {line:?}"));
    let log = line
        .rsplit_once(", log ")
        .map(|(_, rest)| PathBuf::from(rest.trim_end().trim_end_matches(')')))
        .unwrap_or_else(|| panic!("no log path in {line:?}"));
    (pid, log)
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

/// The corpus directory from `LAZYBLOCK_CORPUS` (panics without it: run with --ignored means
/// "I have the corpus").
fn corpus() -> PathBuf {
    let dir = PathBuf::from(
        std::env::var_os("LAZYBLOCK_CORPUS")
            .expect("set LAZYBLOCK_CORPUS to the output directory of scripts/make-corpus.sh"),
    );
    assert!(
        dir.join("oci/index.json").is_file(),
        "LAZYBLOCK_CORPUS={} has no oci/index.json",
        dir.display()
    );
    dir
}

/// What one step observed.
struct Step {
    summary: Summary,
    /// The whole agent log (the profile line is there: `umount` relays the last line only).
    log: String,
    /// The worker cache's chunk files after umount.
    cached: usize,
}

/// Mounts the image at `<tmp>/<name>` with `--cache-dir cache` and `extra` flags, runs the
/// python import in a chroot, unmounts; checks the output, the clean-up and the summary; prints
/// the step's line. The agent must have fetched fewer than `chunks_distinct` (the image's
/// distinct stored chunks, so fewer than its total too): nothing is downloaded up front.
fn step(w: &World, name: &str, cache: &Path, extra: &[&str], chunks_distinct: u64) -> Step {
    let dir = w.path().join(name);
    let _guard = MountGuard {
        w,
        dir: dir.clone(),
    };
    let d = dir.to_str().expect("utf-8");
    let mut args = vec![
        "mount",
        IMAGE,
        d,
        "--cache-dir",
        cache.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    let t0 = Instant::now();
    let out = w.run(&args).ok();
    let mount_secs = t0.elapsed().as_secs_f64();
    assert!(is_mountpoint(&dir), "mount returned before {d} was mounted");
    let (pid, log_path) = agent_pid_and_log(&out.stderr);
    assert!(process_alive(pid), "the background agent is not running");

    let mut cmd = Command::new("chroot");
    cmd.args([d, "python3", "-c", PYTHON]);
    let t1 = Instant::now();
    let py = run_bounded(cmd, TOOL_LIMIT);
    let secs = t1.elapsed().as_secs_f64();
    let text = describe(&format!("chroot {d} python3 -c {PYTHON:?}"), &py);
    assert!(py.status.success(), "{text}");
    let versions = String::from_utf8_lossy(&py.stdout).trim().to_owned();
    let v: Vec<&str> = versions.split_whitespace().collect();
    assert!(
        v.len() == 2
            && v.iter()
                .all(|x| x.starts_with(|c: char| c.is_ascii_digit())),
        "expected `<numpy version> <pandas version>`\n{text}"
    );

    let um = w.run(&["umount", d]).ok();
    assert!(
        um.stderr
            .lines()
            .any(|l| l.starts_with("lazyblock: unmounted ")),
        "{}",
        um.describe()
    );
    assert!(!is_mountpoint(&dir), "{d} is still mounted");
    assert!(!process_alive(pid), "the agent {pid} is still running");
    assert_nothing_mounted(w);
    let s = parse_summary(&um.stderr, IMAGE);
    let log = std::fs::read_to_string(&log_path)
        .unwrap_or_else(|e| panic!("read the agent log {}: {e}", log_path.display()));
    assert_eq!(s.origin_errors, 0, "origin errors\n{log}");
    assert!(s.reads > 0, "{s:?}");
    assert!(
        s.origin_chunks < chunks_distinct,
        "the agent fetched {} of the image's {chunks_distinct} distinct stored chunks: not on demand\n{log}",
        s.origin_chunks
    );
    let cached = cache_chunk_files(cache).len();
    eprintln!(
        "corpus_mount: step {name}: {secs:.2} s (mount {mount_secs:.2} s), origin chunks {}, origin bytes {}, guest chunks {}, prefetched {} (on demand {}), disk hits {}, cached files {cached}; numpy pandas {versions}",
        s.origin_chunks,
        s.origin_bytes,
        s.guest_chunks,
        s.prefetched,
        s.origin_chunks - s.prefetched.min(s.origin_chunks),
        s.disk_hits
    );
    Step {
        summary: s,
        log,
        cached,
    }
}

#[test]
#[ignore = "needs the corpus: LAZYBLOCK_CORPUS=<dir> ... -- --ignored corpus_mount"]
fn corpus_mount_imports_numpy_and_pandas() {
    let corpus = corpus();
    let w = World::new("lazyblock-corpus-mount-", TOOL_LIMIT);
    let started = Instant::now();

    // 1. Build the image into a fresh local store.
    let source = format!("oci:{}:{TAG}", corpus.join("oci").display());
    let t0 = Instant::now();
    w.run(&["build", &source, "--name", IMAGE]).ok();
    let build_secs = t0.elapsed().as_secs_f64();
    let out = w.run(&["inspect", IMAGE, "--json"]).ok();
    let info: Value = serde_json::from_str(&out.stdout).expect("inspect JSON");
    let field = |k: &str| {
        info[k]
            .as_u64()
            .unwrap_or_else(|| panic!("no {k} in {info}"))
    };
    let (total, zero, distinct) = (
        field("chunks_total"),
        field("chunks_zero"),
        field("chunks_distinct"),
    );
    assert!(distinct + zero <= total && distinct > 0, "{info}");
    eprintln!(
        "corpus_mount: step build: {build_secs:.2} s, image {} bytes, chunks total {total}, zero {zero}, distinct {distinct}",
        field("image_size")
    );

    // 2. Cold, no read-ahead: the agent fetches exactly what the guest reads.
    let cache = w.path().join("cache-cold");
    let cold = step(
        &w,
        "cold-no-readahead",
        &cache,
        &["--read-only", "--no-readahead"],
        distinct,
    );
    let s = &cold.summary;
    assert_eq!(s.prefetched, 0, "prefetch without read-ahead: {s:?}");
    assert!(s.origin_chunks > 0, "{s:?}");
    // Identical chunks at two places of the image are fetched once: origin ≤ guest.
    assert!(
        s.origin_chunks <= s.guest_chunks,
        "fetched more chunks than the guest read: {s:?}\n{}",
        cold.log
    );
    assert_eq!(
        cold.cached as u64, s.origin_chunks,
        "every fetched chunk lands in the disk cache once"
    );

    // 3. Cold, read-ahead, recording a start-up profile.
    let cache = w.path().join("cache-record");
    let rec = step(
        &w,
        "cold-readahead-record",
        &cache,
        &["--read-only", "--record-profile"],
        distinct,
    );
    let s = &rec.summary;
    assert!(
        s.origin_chunks * 4 <= s.guest_chunks * 5,
        "read-ahead fetched more than 1.25 × the guest's chunks: {s:?}"
    );
    assert_eq!(rec.cached as u64, s.origin_chunks);
    let prefix = "lazyblock: recorded a start-up profile of ";
    let profile_lines: Vec<&str> = rec.log.lines().filter(|l| l.starts_with(prefix)).collect();
    assert_eq!(
        profile_lines.len(),
        1,
        "expected one profile line in the agent log:\n{}",
        rec.log
    );
    let profile_chunks: u64 = profile_lines[0][prefix.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no chunk count in {:?}", profile_lines[0]));
    assert!(
        profile_chunks > 0 && profile_chunks <= s.guest_chunks,
        "profile of {profile_chunks} chunks, guest read {}",
        s.guest_chunks
    );
    assert!(
        profile_lines[0].ends_with(&format!("chunks for {IMAGE}")),
        "{}",
        profile_lines[0]
    );
    eprintln!("corpus_mount: profile: {profile_chunks} chunks");

    // 4. Cold, replaying the profile (the default).
    let cache = w.path().join("cache-replay");
    let replay = step(&w, "cold-profile", &cache, &["--read-only"], distinct);
    let s = &replay.summary;
    assert!(
        s.prefetched > 0,
        "the profile replay prefetched nothing: {s:?}\n{}",
        replay.log
    );
    assert_eq!(replay.cached as u64, s.origin_chunks);

    // 5. Warm: the replay step's cache, a new agent.
    let warm = step(&w, "warm", &cache, &["--read-only"], distinct);
    let s = &warm.summary;
    // The guest's reads vary by a few chunks from run to run (the kernel's read-ahead depends on
    // timing: 292..302 distinct chunks seen), so a warm start may read a chunk the replay step
    // neither read nor prefetched, and the agent's read-ahead around it may fetch a few more
    // (0..7 origin chunks seen, at most 1 of them on demand).
    let demand = s.origin_chunks - s.prefetched.min(s.origin_chunks);
    assert!(
        demand <= 4,
        "a warm start fetched {demand} chunks on demand: {s:?}"
    );
    assert!(
        s.origin_chunks * 20 <= s.guest_chunks,
        "a warm start fetched {} chunks, more than 5% of the {} the guest read: {s:?}",
        s.origin_chunks,
        s.guest_chunks
    );
    assert_eq!(
        warm.cached as u64,
        replay.cached as u64 + s.origin_chunks,
        "the warm start's cache holds the replay step's chunks plus what it fetched"
    );

    eprintln!(
        "corpus_mount: total {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
