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

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_lazyblock");
const TAG: &str = "python3-numpy-pandas";
const IMAGE: &str = "np:v1";
const PYTHON: &str = "import numpy, pandas; print(numpy.__version__, pandas.__version__)";

/// Bound for a tool or a `lazyblock` command (a hang fails the test instead of stalling it).
const TOOL_LIMIT: Duration = Duration::from_secs(600);

// ---------------------------------------------------------------------------------------------
// Helpers: processes (as in tests/agent.rs)
// ---------------------------------------------------------------------------------------------

/// Runs a command to completion with a bound; kills it and panics when the bound passes.
fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let mut out_pipe = child.stdout.take().expect("stdout pipe");
    let mut err_pipe = child.stderr.take().expect("stderr pipe");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = out_reader.join().unwrap_or_default();
            let stderr = err_reader.join().unwrap_or_default();
            panic!(
                "{what} did not finish within {limit:?} (killed)\n--- stdout ---\n{}\n--- stderr ---\n{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Sends a signal with kill(1) (the crate forbids `unsafe`, so no libc here).
fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Waits for `child` to exit within `limit`.
fn wait_bounded(child: &mut std::process::Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a process runs (a zombie counts as gone).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers: the world of the test (as in tests/agent.rs)
// ---------------------------------------------------------------------------------------------

/// What one run of the binary did.
struct Out {
    args: Vec<String>,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Out {
    fn describe(&self) -> String {
        format!(
            "lazyblock {:?}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args, self.status, self.stdout, self.stderr
        )
    }

    #[track_caller]
    fn ok(self) -> Self {
        assert!(
            self.status.success(),
            "expected success\n{}",
            self.describe()
        );
        self
    }
}

/// A private world: a temporary HOME with store, keyring, cache and run dir. Dropping it first
/// sweeps any mount or loop device left under its directory.
struct World {
    tmp: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        Self {
            tmp: tempfile::Builder::new()
                .prefix("lazyblock-corpus-mount-")
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

    fn run_dir(&self) -> PathBuf {
        self.path().join("run")
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
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
            .env(
                "LAZYBLOCK_STORE",
                format!("file://{}", self.store().display()),
            )
            .env("LAZYBLOCK_KEYS_DIR", self.path().join("keys"))
            .env("LAZYBLOCK_CACHE_DIR", self.path().join("cache"))
            .env("LAZYBLOCK_RUN_DIR", self.run_dir())
            .current_dir(self.path());
        cmd
    }

    fn run(&self, args: &[&str]) -> Out {
        let mut cmd = self.command();
        cmd.args(args);
        let out = run_bounded(cmd, TOOL_LIMIT);
        Out {
            args: args.iter().map(|s| s.to_string()).collect(),
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        sweep_mounts_under(self.path());
    }
}

/// Unmounts (lazily) every mount under `root`, deepest first, and detaches every loop device
/// backed by a file under `root`. The last line of defence before the temp dir is removed.
fn sweep_mounts_under(root: &Path) {
    let mut under: Vec<PathBuf> = mounts_under(root);
    under.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for m in under {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&m)
            .stderr(Stdio::null())
            .status();
    }
    for dev in loops_backed_under(root) {
        let _ = Command::new("losetup")
            .args(["-d", &dev])
            .stderr(Stdio::null())
            .status();
    }
}

/// Mount points (from /proc/self/mountinfo) at or under `root`.
fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(root))
        .collect()
}

/// Loop devices (from `losetup -a`) whose backing file is under `root`.
fn loops_backed_under(root: &Path) -> Vec<String> {
    let Ok(out) = Command::new("losetup").arg("-a").output() else {
        return Vec::new();
    };
    let root = root.to_string_lossy().into_owned();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&root))
        .filter_map(|l| l.split(':').next().map(str::to_owned))
        .collect()
}

fn is_mountpoint(dir: &Path) -> bool {
    mounts_under(dir).iter().any(|m| m == dir)
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

/// Files in `<cache>/chunks/*/*`: the chunks in a worker cache's disk tier.
fn cache_chunk_files(cache: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(cache.join("chunks")) else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for e in rd {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            v.extend(files_in(&p));
        }
    }
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// Helpers: mount / umount (as in tests/agent.rs)
// ---------------------------------------------------------------------------------------------

/// Undoes a `lazyblock mount` of `dir`: `lazyblock umount`, then `umount -l` and `losetup -d`,
/// and kills a background agent that is still running.
struct MountGuard<'a> {
    w: &'a World,
    dir: PathBuf,
}

impl Drop for MountGuard<'_> {
    fn drop(&mut self) {
        if is_mountpoint(&self.dir) {
            let mut cmd = self.w.command();
            cmd.arg("umount").arg(&self.dir);
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Ok(mut child) = cmd.spawn() {
                if wait_bounded(&mut child, Duration::from_secs(90)).is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        if is_mountpoint(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        // Agents of this world still running (their pid files are under the run dir).
        let states = std::fs::read_dir(self.w.run_dir().join("mounts"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path().join("agent.pid")));
        for pid_file in states {
            let Ok(text) = std::fs::read_to_string(&pid_file) else {
                continue;
            };
            let Ok(pid) = text.trim().parse::<u32>() else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if process_alive(pid) && String::from_utf8_lossy(&cmdline).contains(BIN) {
                send_signal(pid, "KILL");
            }
        }
        sweep_mounts_under(&self.w.run_dir());
    }
}

/// Asserts nothing of this world is mounted or attached to a loop device.
#[track_caller]
fn assert_nothing_mounted(w: &World) {
    let left = mounts_under(w.path());
    assert!(left.is_empty(), "mounts left under the test dir: {left:?}");
    let loops = loops_backed_under(&w.run_dir());
    assert!(
        loops.is_empty(),
        "loop devices backed by files under the run dir: {loops:?}"
    );
}

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
// Helpers: the summary line
// ---------------------------------------------------------------------------------------------

/// What the agent's summary line reports.
#[derive(Debug, Default, Clone)]
struct Summary {
    reads: u64,
    disk_hits: u64,
    origin_chunks: u64,
    /// As printed, e.g. `95.0 MiB`.
    origin_bytes: String,
    prefetched: u64,
    origin_errors: u64,
    guest_chunks: u64,
}

/// Finds and parses `lazyblock: <image>: reads N (..), writes N (..), chunk hits memory N disk N
/// origin N, origin N chunks X in N requests (N prefetched, N errors)..., guest read N distinct
/// chunks` in `stderr`.
#[track_caller]
fn parse_summary(stderr: &str) -> Summary {
    let prefix = format!("lazyblock: {IMAGE}: reads ");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&prefix)).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one summary line `{prefix}...`:\n{stderr}"
    );
    let line = lines[0];
    let t: Vec<&str> = line.split_whitespace().collect();
    let num = |s: &str| -> Option<u64> {
        s.trim_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .ok()
            .filter(|_| s.starts_with(|c: char| c.is_ascii_digit() || c == '('))
    };
    let after = |key: &str| -> u64 {
        t.windows(2)
            .find(|w| w[0] == key && num(w[1]).is_some())
            .and_then(|w| num(w[1]))
            .unwrap_or_else(|| panic!("no `{key} N` in summary {line:?}"))
    };
    let before = |key: &str| -> u64 {
        t.windows(2)
            .find(|w| w[1].starts_with(key))
            .and_then(|w| num(w[0]))
            .unwrap_or_else(|| panic!("no `N {key}` in summary {line:?}"))
    };
    // `origin N chunks <number> <unit> in`
    let (origin_chunks, origin_bytes) = t
        .windows(5)
        .find(|w| w[0] == "origin" && w[2] == "chunks" && num(w[1]).is_some())
        .map(|w| (num(w[1]).unwrap_or_default(), format!("{} {}", w[3], w[4])))
        .unwrap_or_else(|| panic!("no `origin N chunks X U` in summary {line:?}"));
    let guest_chunks = t
        .windows(4)
        .find(|w| w[0] == "guest" && w[1] == "read" && w[3] == "distinct")
        .and_then(|w| num(w[2]))
        .unwrap_or_else(|| panic!("no `guest read N distinct chunks` in summary {line:?}"));
    Summary {
        reads: after("reads"),
        disk_hits: after("disk"),
        origin_chunks,
        origin_bytes,
        prefetched: before("prefetched,"),
        origin_errors: before("errors)"),
        guest_chunks,
    }
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
    let s = parse_summary(&um.stderr);
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
    let w = World::new();
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
