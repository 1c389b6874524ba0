//! End-to-end tests of the agent's command line: `lazyblock serve`, `lazyblock mount` and
//! `lazyblock umount`, against real clients (`nbdcopy`, `qemu-img`, `qemu-io`, `chroot` into a
//! mounted image) and a real local store.
//!
//! Every test runs in its own temporary directory with `HOME` pointing there, a local store at
//! `<tmp>/store`, a keyring at `<tmp>/keys`, a worker cache at `<tmp>/cache`
//! (`LAZYBLOCK_CACHE_DIR`) and mount state at `<tmp>/run` (`LAZYBLOCK_RUN_DIR`); every other
//! `LAZYBLOCK_*`, `XDG_*`, `AWS_*` and `RUST_LOG` variable of the test process is removed.
//! The image is an ext4 file system made with `mke2fs -d` from a small tree (a marker file, a
//! shell script, 5 MB of seeded random data and a static busybox), built into the store.
//!
//! Every spawned `serve` is owned by a [`Server`] guard that sends SIGTERM, then SIGKILL after a
//! bound, when dropped; every `mount` is owned by a [`MountGuard`] that runs `lazyblock umount`
//! and falls back to `umount -l` / `losetup -d`; the [`World`] sweeps anything left under its
//! directory before removing it. External tools run with a bound too, so a hang fails the test
//! instead of stalling the suite.
//!
//! Needs root, `/dev/fuse`, loop devices and the tools `qemu-img`, `qemu-io` (qemu-utils),
//! `nbdcopy`, `nbdinfo` (libnbd-bin), `mke2fs` (e2fsprogs), `losetup`, `mount`, `umount`,
//! `chroot` and a static `/bin/busybox` (busybox-static).

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};
use serde_json::Value;

mod common;
use common::*;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const CHUNK: u64 = 512 * KIB;
const IMAGE: &str = "demo:v1";
const IMAGE_SIZE: u64 = 64 * MIB;
const RANDOM_LEN: usize = 5_000_000;
const MARKER: &str = "lazyblock agent test marker 7f3a";

// ---------------------------------------------------------------------------------------------
// Helpers: the world of one test
// ---------------------------------------------------------------------------------------------

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Asserts two byte slices are equal, naming the first differing offset.
#[track_caller]
fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: sizes differ");
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .expect("a difference");
        panic!(
            "{what}: differs at byte {at} (got {:#04x}, want {:#04x})",
            got[at], want[at]
        );
    }
}

#[track_caller]
fn assert_same_file(got: &Path, want: &[u8], what: &str) {
    let bytes = std::fs::read(got).unwrap_or_else(|e| panic!("read {}: {e}", got.display()));
    assert_same_bytes(&bytes, want, what);
}

// ---------------------------------------------------------------------------------------------
// Helpers: the test image
// ---------------------------------------------------------------------------------------------

/// A world with the test image built into its store.
struct Fixture {
    w: World,
    /// The ext4 image as built, byte for byte (what `lazyblock export` returns).
    image: Vec<u8>,
    /// The 5 MB random file inside the image.
    random: Vec<u8>,
}

/// Makes the tree, the ext4 image (`mke2fs -d`) and builds it into a fresh store as [`IMAGE`];
/// checks that `lazyblock export` returns the image file.
fn fixture(seed: u64) -> Fixture {
    let w = World::new("lazyblock-agent-", TOOL_LIMIT);
    let tree = w.path().join("tree");
    for d in ["etc", "bin", "data"] {
        std::fs::create_dir_all(tree.join(d)).expect("mkdir tree");
    }
    std::fs::write(tree.join("etc/marker"), format!("{MARKER}\n")).expect("write marker");
    let random = random_bytes(seed, RANDOM_LEN);
    std::fs::write(tree.join("data/random.bin"), &random).expect("write random");
    let script = tree.join("bin/hello.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"hello from the image: $(cat /etc/marker)\"\n",
    )
    .expect("write script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::copy("/bin/busybox", tree.join("bin/busybox"))
        .expect("copy /bin/busybox (install busybox-static)");
    for applet in ["sh", "cat", "echo", "touch"] {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet)).expect("symlink");
    }
    let img = w.path().join("image.ext4");
    tool_ok(
        "mke2fs",
        &[
            "-q",
            "-t",
            "ext4",
            "-d",
            tree.to_str().expect("utf-8"),
            img.to_str().expect("utf-8"),
            "64M",
        ],
    );
    let source = format!("raw:{}", img.display());
    w.run(&["build", &source, "--name", IMAGE]).ok();
    let image = std::fs::read(&img).expect("read image");
    assert_eq!(image.len() as u64, IMAGE_SIZE);
    let exported = w.path().join("export.raw");
    w.run(&["export", IMAGE, "-o", exported.to_str().expect("utf-8")])
        .ok();
    assert_same_file(&exported, &image, "lazyblock export of the image");
    Fixture { w, image, random }
}

/// `inspect --json` of [`IMAGE`].
fn inspect(w: &World) -> Value {
    let out = w.run(&["inspect", IMAGE, "--json"]).ok();
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("inspect JSON: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Helpers: `serve`
// ---------------------------------------------------------------------------------------------

fn unix_arg(sock: &Path) -> String {
    format!("unix:{}", sock.display())
}

// ---------------------------------------------------------------------------------------------
// 1. serve --read-only: nbdcopy and qemu-img convert return the image
// ---------------------------------------------------------------------------------------------

#[test]
fn nbd_export_equals_lazyblock_export() {
    let f = fixture(1);
    let w = &f.w;
    let sock = w.path().join("nbd.sock");
    let server = Server::start(
        w,
        "serve",
        &[IMAGE, "--read-only", "--nbd", &unix_arg(&sock)],
    );
    assert!(
        server.uri.starts_with("nbd+unix:///") && server.uri.contains("socket="),
        "{}",
        server.uri
    );
    let size = tool_ok("nbdinfo", &["--size", &server.uri]);
    assert_eq!(size.trim(), IMAGE_SIZE.to_string());
    let info = tool_ok("nbdinfo", &[&server.uri]);
    assert!(info.contains("is_read_only: true"), "{info}");

    let out1 = w.path().join("nbdcopy.raw");
    let copied = nbdcopy_all(&server.uri, &out1);
    assert_same_bytes(&copied, &f.image, "nbdcopy of the export");
    let out2 = w.path().join("convert.raw");
    tool_ok(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &server.uri,
            out2.to_str().expect("utf-8"),
        ],
    );
    assert_same_file(&out2, &f.image, "qemu-img convert of the export");

    let (status, stderr) = server.stop();
    assert_eq!(
        status.code(),
        Some(0),
        "serve exits 0 on SIGTERM:\n{stderr}"
    );
    let s = parse_summary(&stderr, IMAGE);
    assert!(s.origin_chunks > 0, "{s:?}\n{stderr}");
    assert!(s.reads > 0, "{s:?}\n{stderr}");
    assert_eq!(s.writes, 0, "{stderr}");
    assert_eq!(s.origin_errors, 0, "{stderr}");
    // The origin never served more chunks than the image has.
    let distinct = inspect(w)["chunks_distinct"]
        .as_u64()
        .expect("chunks_distinct");
    assert!(s.origin_chunks <= distinct, "{s:?} vs {distinct} distinct");
    assert!(!sock.exists(), "serve left its socket behind");
}

// ---------------------------------------------------------------------------------------------
// 2. Writes: overlay persistence, isolation from store and cache, --discard-overlay, locking
// ---------------------------------------------------------------------------------------------

/// One guest write: offset, length, pattern byte.
type Write3 = (u64, u64, u8);

/// Fixed writes that cross 4 KiB pages and a 512 KiB chunk boundary, then seeded random
/// unaligned ones, all disjoint (so each can be checked with `read -P`).
fn planned_writes(seed: u64) -> Vec<Write3> {
    let mut writes: Vec<Write3> = vec![
        (1000, 5000, 0x21),              // unaligned, crosses a 4 KiB page
        (CHUNK - 3000, 7000, 0x42),      // crosses the chunk 0 / chunk 1 boundary
        (3 * CHUNK - 1, 2, 0x5a),        // two bytes straddling chunk 2 / chunk 3
        (10 * MIB + 4095, 8193, 0x6b),   // unaligned start and end, three pages
        (IMAGE_SIZE - 777, 777, 0x7c),   // up to the very end
        (20 * MIB, 2 * CHUNK + 1, 0x13), // more than two chunks in one request
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while writes.len() < 14 {
        let len: u64 = rng.random_range(1..=70_000);
        let off: u64 = rng.random_range(0..IMAGE_SIZE - len);
        let pat: u8 = rng.random_range(1..=255);
        let overlaps = writes.iter().any(|&(o, l, _)| off < o + l && o < off + len);
        if !overlaps {
            writes.push((off, len, pat));
        }
    }
    writes
}

fn apply(model: &mut [u8], writes: &[Write3]) {
    for &(off, len, pat) in writes {
        model[off as usize..(off + len) as usize].fill(pat);
    }
}

fn read_checks(writes: &[Write3]) -> Vec<String> {
    writes
        .iter()
        .map(|&(off, len, pat)| format!("read -P {pat:#x} {off} {len}"))
        .collect()
}

#[test]
fn writes_persist_across_restart_and_never_reach_store_or_cache() {
    let f = fixture(2);
    let w = &f.w;
    let overlay = w.path().join("overlay");
    let ov = overlay.to_str().expect("utf-8");
    let store_before = w.store_chunks();
    assert!(!store_before.is_empty());
    let tcp = |port: u16| format!("tcp:127.0.0.1:{port}");

    let writes = planned_writes(0x2222);
    let mut model = f.image.clone();
    apply(&mut model, &writes);

    let server = Server::start(
        w,
        "rw1",
        &[IMAGE, "--nbd", &tcp(free_port()), "--overlay-dir", ov],
    );
    assert!(server.uri.starts_with("nbd://127.0.0.1:"), "{}", server.uri);
    let mut cmds: Vec<String> = writes
        .iter()
        .map(|&(off, len, pat)| format!("write -P {pat:#x} {off} {len}"))
        .collect();
    cmds.extend(read_checks(&writes));
    let stdout = qemu_io_ok(&server.uri, false, &cmds);
    assert_eq!(stdout.matches("wrote ").count(), writes.len(), "{stdout}");
    assert_eq!(stdout.matches("read ").count(), writes.len(), "{stdout}");
    // Negative control: a wrong pattern is detected by the same check.
    let (off, len, pat) = writes[1];
    let bad = qemu_io(
        &server.uri,
        true,
        &[format!("read -P {:#x} {off} {len}", pat ^ 0xff)],
    );
    assert!(
        !bad.status.success()
            && String::from_utf8_lossy(&bad.stdout).contains("Pattern verification failed"),
        "{}",
        describe("qemu-io with a wrong pattern", &bad)
    );
    let copied = nbdcopy_all(&server.uri, &w.path().join("rw1.raw"));
    assert_same_bytes(&copied, &model, "the device after the writes");

    // A second agent on the same overlay is refused while the first runs, and the
    // first keeps serving.
    let mut second = w.command();
    second.args([
        "serve",
        IMAGE,
        "--nbd",
        &tcp(free_port()),
        "--overlay-dir",
        ov,
    ]);
    let out = run_bounded(second, SERVER_LIMIT);
    let second = Out {
        args: vec!["serve (second, same overlay)".into()],
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    second.fails_with(&[1], &["in use"]);
    qemu_io_ok(&server.uri, true, &read_checks(&writes[..2]));

    let (status, stderr) = server.stop();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let s = parse_summary(&stderr, IMAGE);
    assert!(s.writes >= writes.len() as u64, "{s:?}\n{stderr}");

    // Nothing the guest wrote reached the store or the cache: the store holds the same chunk
    // files, and every cache file is a store chunk with the store's bytes.
    assert_eq!(w.store_chunks(), store_before, "the store's chunks changed");
    let cached = cache_chunk_files(&w.cache());
    assert!(
        !cached.is_empty(),
        "the partial-page writes needed base chunks, so the disk cache holds some"
    );
    for c in &cached {
        let name = c.file_name().expect("name").to_string_lossy().into_owned();
        assert!(
            store_before.contains(&name),
            "cache file {} is not a store chunk",
            c.display()
        );
        let a = std::fs::read(c).expect("read cache file");
        let b = std::fs::read(w.chunks_dir().join(&name)).expect("read store chunk");
        assert_same_bytes(&a, &b, &format!("cache file {name} vs the store's chunk"));
    }

    // Restart on the same overlay: the writes are still there.
    let server = Server::start(
        w,
        "rw2",
        &[IMAGE, "--nbd", &tcp(free_port()), "--overlay-dir", ov],
    );
    qemu_io_ok(&server.uri, true, &read_checks(&writes));
    let copied = nbdcopy_all(&server.uri, &w.path().join("rw2.raw"));
    assert_same_bytes(&copied, &model, "the device after a restart");
    let (status, stderr) = server.stop();
    assert_eq!(status.code(), Some(0), "{stderr}");

    // --discard-overlay: back to the image as built.
    let server = Server::start(
        w,
        "rw3",
        &[
            IMAGE,
            "--nbd",
            &tcp(free_port()),
            "--overlay-dir",
            ov,
            "--discard-overlay",
        ],
    );
    let copied = nbdcopy_all(&server.uri, &w.path().join("rw3.raw"));
    assert_same_bytes(&copied, &f.image, "the device after --discard-overlay");
    let (status, stderr) = server.stop();
    assert_eq!(status.code(), Some(0), "{stderr}");

    // --read-only: writes are refused, reads return the image.
    let server = Server::start(w, "ro", &[IMAGE, "--nbd", &tcp(free_port()), "--read-only"]);
    let write = qemu_io(&server.uri, false, &["write -P 0x77 0 4096".to_owned()]);
    let text = describe("qemu-io write to a read-only export", &write);
    assert!(
        !write.status.success() && !String::from_utf8_lossy(&write.stdout).contains("wrote "),
        "{text}"
    );
    let copied = nbdcopy_all(&server.uri, &w.path().join("ro.raw"));
    assert_same_bytes(&copied, &f.image, "the read-only device");
    let (status, stderr) = server.stop();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(w.store_chunks(), store_before, "the store's chunks changed");
}

/// `--discard-overlay` on an overlay another agent serves must be refused like any second
/// agent; instead it deletes the running agent's overlay directory.
#[test]
fn discard_overlay_of_a_running_agent_is_refused() {
    let f = fixture(8);
    let w = &f.w;
    let overlay = w.path().join("overlay");
    let ov = overlay.to_str().expect("utf-8");
    let first_sock = w.path().join("first.sock");
    let server = Server::start(
        w,
        "first",
        &[IMAGE, "--nbd", &unix_arg(&first_sock), "--overlay-dir", ov],
    );
    qemu_io_ok(
        &server.uri,
        false,
        &["write -P 0x99 8192 4096".to_owned(), "flush".to_owned()],
    );
    let second_sock = w.path().join("second.sock");
    // If the bug is present the second agent starts serving instead of exiting.
    let (child, log) = Server::spawn(
        w,
        "second",
        &[
            IMAGE,
            "--nbd",
            &unix_arg(&second_sock),
            "--overlay-dir",
            ov,
            "--discard-overlay",
        ],
    );
    let mut second = Server {
        child: Some(child),
        log,
        uri: String::new(),
    };
    let deadline = Instant::now() + SERVER_LIMIT;
    let status = loop {
        if let Some(status) = second.child_mut().try_wait().expect("try_wait") {
            break Some(status);
        }
        if second.stderr().contains("lazyblock: serving ") || Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = second.stderr();
    drop(second);
    assert!(
        status.is_some_and(|s| s.code() == Some(1)) && text.contains("in use"),
        "a second agent with --discard-overlay on an overlay in use was not refused ({status:?}):\n{text}"
    );
    assert!(
        overlay.join("data").exists() && overlay.join("bitmap").exists(),
        "the running agent's overlay files were deleted"
    );
    qemu_io_ok(&server.uri, true, &["read -P 0x99 8192 4096".to_owned()]);
    let (status, stderr) = server.stop();
    assert_eq!(status.code(), Some(0), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// 3. kill -9, then a restart on the same unix socket and overlay
// ---------------------------------------------------------------------------------------------

#[test]
fn kill_9_and_restart_on_the_same_socket() {
    let f = fixture(3);
    let w = &f.w;
    let sock = w.path().join("nbd.sock");
    let overlay = w.path().join("overlay");
    let ov = overlay.to_str().expect("utf-8");
    let writes: Vec<Write3> = vec![(70_000, 10_000, 0xa5), (3 * CHUNK - 100, 300, 0x3c)];
    let mut model = f.image.clone();
    apply(&mut model, &writes);

    let server = Server::start(
        w,
        "before",
        &[IMAGE, "--nbd", &unix_arg(&sock), "--overlay-dir", ov],
    );
    // No flush: an acknowledged write survives the agent's death (the kernel keeps the pages).
    let cmds: Vec<String> = writes
        .iter()
        .map(|&(off, len, pat)| format!("write -P {pat:#x} {off} {len}"))
        .collect();
    qemu_io_ok(&server.uri, false, &cmds);
    server.kill9();
    assert!(
        sock.exists(),
        "a killed agent cannot remove its socket; the test needs a stale one"
    );

    let server = Server::start(
        w,
        "after",
        &[IMAGE, "--nbd", &unix_arg(&sock), "--overlay-dir", ov],
    );
    qemu_io_ok(&server.uri, true, &read_checks(&writes));
    let copied = nbdcopy_all(&server.uri, &w.path().join("after.raw"));
    assert_same_bytes(&copied, &model, "the device after kill -9 and restart");
    // A live socket is not taken over: a third agent on it is refused, the second keeps going.
    let third = w.run(&["serve", IMAGE, "--read-only", "--nbd", &unix_arg(&sock)]);
    third.fails_with(&[1], &["in use"]);
    qemu_io_ok(&server.uri, true, &read_checks(&writes[..1]));
    let (status, stderr) = server.stop();
    assert_eq!(status.code(), Some(0), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// 4. Two agents sharing one cache directory fetch each chunk from the origin once
// ---------------------------------------------------------------------------------------------

#[test]
fn two_agents_sharing_a_cache_fetch_each_chunk_once() {
    let f = fixture(4);
    let w = &f.w;
    let info = inspect(w);
    let distinct = info["chunks_distinct"].as_u64().expect("chunks_distinct");
    assert_eq!(
        distinct,
        w.store_chunks().len() as u64,
        "the store holds only this image"
    );
    assert!(distinct > 10, "{info}");
    let shared = w.path().join("shared-cache");
    let cache = shared.to_str().expect("utf-8");
    let socks = [w.path().join("a.sock"), w.path().join("b.sock")];
    let servers: Vec<Server> = socks
        .iter()
        .enumerate()
        .map(|(i, sock)| {
            Server::start(
                w,
                &format!("agent{i}"),
                &[
                    IMAGE,
                    "--read-only",
                    "--no-readahead",
                    "--cache-dir",
                    cache,
                    "--nbd",
                    &unix_arg(sock),
                ],
            )
        })
        .collect();

    // 8 concurrent readers, 4 per agent, half nbdcopy and half qemu-img convert.
    let mut readers = Vec::new();
    for i in 0..8 {
        let uri = &servers[i % 2].uri;
        let out = w.path().join(format!("reader{i}.raw"));
        let mut cmd = if i < 4 {
            let mut c = Command::new("nbdcopy");
            c.arg(uri).arg(&out);
            c
        } else {
            let mut c = Command::new("qemu-img");
            c.args(["convert", "-f", "raw", "-O", "raw", uri]).arg(&out);
            c
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = cmd.spawn().expect("spawn reader");
        readers.push((ReaderGuard(child), out));
    }
    for (i, (mut guard, out)) in readers.into_iter().enumerate() {
        let status = wait_bounded(&mut guard.0, TOOL_LIMIT)
            .unwrap_or_else(|| panic!("reader {i} did not finish within {TOOL_LIMIT:?}"));
        let mut err = String::new();
        if let Some(mut e) = guard.0.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        assert!(status.success(), "reader {i} failed ({status}): {err}");
        assert_same_file(&out, &f.image, &format!("reader {i}'s copy"));
    }

    let mut total = Summary::default();
    for server in servers {
        let (status, stderr) = server.stop();
        assert_eq!(status.code(), Some(0), "{stderr}");
        let s = parse_summary(&stderr, IMAGE);
        assert_eq!(s.origin_errors, 0, "{stderr}");
        assert_eq!(s.prefetched, 0, "--no-readahead and no profile: {stderr}");
        assert!(s.reads > 0, "every agent served reads: {stderr}");
        total.origin_chunks += s.origin_chunks;
    }
    assert_eq!(
        total.origin_chunks, distinct,
        "the two agents together fetched each distinct chunk exactly once"
    );
    assert_eq!(
        cache_chunk_files(&shared).len() as u64,
        distinct,
        "the shared cache holds every chunk once"
    );
}

/// Kills a reader process if the test fails before it finished.
struct ReaderGuard(Child);

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5. The metrics endpoint
// ---------------------------------------------------------------------------------------------

#[test]
fn metrics_endpoint_serves_prometheus_text() {
    let f = fixture(5);
    let w = &f.w;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let sock = w.path().join("nbd.sock");
    let server = Server::start(
        w,
        "serve",
        &[
            IMAGE,
            "--read-only",
            "--nbd",
            &unix_arg(&sock),
            "--metrics-addr",
            &addr,
        ],
    );
    let dev = format!("{{device=\"{IMAGE}\"}}");
    // Before any read: the counters are there and zero.
    let (status, _, body) = http_get(port, "/metrics");
    assert!(status.contains(" 200"), "{status}");
    assert_eq!(sample(&body, &format!("lazyblock_reads_total{dev}")), 0.0);

    qemu_io_ok(&server.uri, true, &["read 0 65536".to_owned()]);
    let (status, headers, body) = http_get(port, "/metrics");
    assert!(
        status.starts_with("HTTP/1.") && status.contains(" 200"),
        "{status}"
    );
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{headers}"
    );
    let reads = sample(&body, &format!("lazyblock_reads_total{dev}"));
    assert!(reads > 0.0, "{body}");
    assert!(sample(&body, &format!("lazyblock_read_bytes_total{dev}")) >= 65536.0);
    assert!(sample(&body, &format!("lazyblock_origin_chunks_total{dev}")) > 0.0);
    assert_eq!(sample(&body, &format!("lazyblock_errors_total{dev}")), 0.0);
    assert!(
        body.lines()
            .any(|l| l.starts_with("lazyblock_read_seconds_bucket{")
                && l.contains(&format!("device=\"{IMAGE}\""))
                && l.contains("le=\"+Inf\"")),
        "{body}"
    );
    assert!(
        body.contains("# TYPE lazyblock_read_seconds histogram"),
        "{body}"
    );
    let inf_total: f64 = body
        .lines()
        .filter(|l| l.starts_with("lazyblock_read_seconds_bucket{") && l.contains("le=\"+Inf\""))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .expect("bucket value")
        })
        .sum();
    assert_eq!(inf_total, reads, "every read is in the latency histogram");

    let (status, _, _) = http_get(port, "/");
    assert!(status.contains(" 404"), "{status}");

    let (status, stderr) = server.stop();
    assert_eq!(status.code(), Some(0), "{stderr}");
    // The summary agrees with the endpoint (no reads happened in between).
    assert_eq!(
        parse_summary(&stderr, IMAGE).reads as f64,
        reads,
        "{stderr}"
    );
}

/// A request that arrives in two TCP segments is still one request.
#[test]
fn metrics_request_split_across_segments_is_answered() {
    let f = fixture(9);
    let w = &f.w;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let sock = w.path().join("nbd.sock");
    let server = Server::start(
        w,
        "serve",
        &[
            IMAGE,
            "--read-only",
            "--nbd",
            &unix_arg(&sock),
            "--metrics-addr",
            &addr,
        ],
    );
    let (status, _, body) = http_request(
        port,
        &[b"GET /met", b"rics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"],
    );
    assert!(status.contains(" 200"), "{status}\n{body}");
    assert!(body.contains("lazyblock_reads_total{"), "{body}");
    let (status, stderr) = server.stop();
    assert_eq!(status.code(), Some(0), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// 6. An unreachable origin: I/O errors, no hang, recovery
// ---------------------------------------------------------------------------------------------

/// Renames a directory away and back on drop (if still away).
struct MovedAway {
    from: PathBuf,
    to: PathBuf,
}

impl MovedAway {
    fn new(from: PathBuf) -> Self {
        let to = from.with_extension("away");
        std::fs::rename(&from, &to).expect("move the chunks away");
        Self { from, to }
    }

    fn restore(&self) {
        if self.to.exists() {
            std::fs::rename(&self.to, &self.from).expect("move the chunks back");
        }
    }
}

impl Drop for MovedAway {
    fn drop(&mut self) {
        if self.to.exists() {
            let _ = std::fs::rename(&self.to, &self.from);
        }
    }
}

#[test]
fn origin_unreachable_gives_io_errors_not_a_hang() {
    let f = fixture(6);
    let w = &f.w;
    let sock = w.path().join("nbd.sock");
    let mut server = Server::start(
        w,
        "serve",
        &[
            IMAGE,
            "--read-only",
            "--no-readahead",
            "--nbd",
            &unix_arg(&sock),
        ],
    );
    assert!(
        cache_chunk_files(&w.cache()).is_empty(),
        "the cache starts empty"
    );
    let away = MovedAway::new(w.chunks_dir());

    let mut cmd = Command::new("qemu-io");
    cmd.args(["-r", "-f", "raw", "-c", "read 0 4096", &server.uri]);
    // The bound is what "not a hang" means here.
    let out = run_bounded(cmd, Duration::from_secs(60));
    let text = describe("qemu-io read with the origin gone", &out);
    assert!(!out.status.success(), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Input/output error")
            || String::from_utf8_lossy(&out.stderr).contains("Input/output error"),
        "{text}"
    );
    assert!(server.running(), "the server died:\n{}", server.stderr());

    away.restore();
    let ok = qemu_io_ok(&server.uri, true, &["read 0 4096".to_owned()]);
    assert!(ok.contains("read 4096/4096"), "{ok}");
    // The read needed chunk 0 only (no read-ahead): the cache now names it.
    let cached = file_names(&cache_chunk_files(&w.cache()));
    assert!(!cached.is_empty(), "the successful read cached its chunk");
    let stderr = server.stderr();
    let warned = stderr.lines().any(|l| {
        l.contains("WARN")
            && l.contains("missing from the origin")
            && cached.iter().any(|name| l.contains(&name[..12]))
    });
    assert!(
        warned,
        "no warning naming the missing chunk (one of {cached:?}):\n{stderr}"
    );
    let (status, stderr) = server.stop();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let s = parse_summary(&stderr, IMAGE);
    assert!(s.origin_errors >= 1, "{s:?}\n{stderr}");
    assert!(s.origin_chunks >= 1, "{s:?}\n{stderr}");
}

// ---------------------------------------------------------------------------------------------
// 7. mount / umount
// ---------------------------------------------------------------------------------------------

fn mount_guard<'a>(w: &'a World, name: &str) -> (MountGuard<'a>, PathBuf) {
    let dir = w.path().join(name);
    (
        MountGuard {
            w,
            dir: dir.clone(),
        },
        dir,
    )
}

/// The agent pid from `lazyblock: mounted ... (agent pid N, log ...)`.
fn agent_pid(stderr: &str) -> u32 {
    stderr
        .split("agent pid ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no agent pid in {stderr:?}"))
}

/// `lazyblock umount <dir>`: succeeds, prints the summary and "unmounted", the agent is gone.
#[track_caller]
fn umount_ok(w: &World, dir: &Path, pid: u32) -> Summary {
    let out = w.run(&["umount", dir.to_str().expect("utf-8")]).ok();
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("lazyblock: unmounted ")),
        "{}",
        out.describe()
    );
    let s = parse_summary(&out.stderr, IMAGE);
    assert!(!is_mountpoint(dir), "{} is still mounted", dir.display());
    assert!(!process_alive(pid), "the agent {pid} is still running");
    s
}

#[test]
fn mount_runs_a_program_and_umount_cleans_up() {
    let f = fixture(7);
    let w = &f.w;
    let store_before = w.store_chunks();

    // Read-only: run programs from the image.
    let (_guard, dir) = mount_guard(w, "mnt");
    let d = dir.to_str().expect("utf-8");
    let out = w.run(&["mount", IMAGE, d, "--read-only"]).ok();
    assert!(is_mountpoint(&dir), "mount returned before {d} was mounted");
    let pid = agent_pid(&out.stderr);
    assert!(process_alive(pid), "the background agent is not running");
    let cat = tool_ok(
        "chroot",
        &[d, "/bin/busybox", "sh", "-c", "cat /etc/marker"],
    );
    assert_eq!(cat.trim(), MARKER);
    let hello = tool_ok("chroot", &[d, "/bin/hello.sh"]);
    assert_eq!(hello.trim(), format!("hello from the image: {MARKER}"));
    assert_same_file(
        &dir.join("data/random.bin"),
        &f.random,
        "data/random.bin read through the mount",
    );
    let touch = tool("chroot", &[d, "/bin/sh", "-c", "touch /nope"]);
    assert!(
        !touch.status.success(),
        "a read-only mount accepted a write"
    );
    let s = umount_ok(w, &dir, pid);
    assert!(s.reads > 0 && s.origin_chunks > 0, "{s:?}");
    assert_nothing_mounted(w);

    // Writable with an overlay: a file survives umount and mount.
    let overlay = w.path().join("overlay");
    let ov = overlay.to_str().expect("utf-8");
    let (_guard_rw, rw) = mount_guard(w, "mnt-rw");
    let r = rw.to_str().expect("utf-8");
    let out = w.run(&["mount", IMAGE, r, "--overlay-dir", ov]).ok();
    let pid = agent_pid(&out.stderr);
    tool_ok(
        "chroot",
        &[
            r,
            "/bin/busybox",
            "sh",
            "-c",
            "echo written-in-the-guest > /new.txt",
        ],
    );
    let s = umount_ok(w, &rw, pid);
    assert!(s.writes > 0, "{s:?}");
    assert_nothing_mounted(w);
    assert!(!rw.join("new.txt").exists());
    let out = w.run(&["mount", IMAGE, r, "--overlay-dir", ov]).ok();
    let pid = agent_pid(&out.stderr);
    assert_eq!(
        std::fs::read_to_string(rw.join("new.txt")).expect("new.txt after a remount"),
        "written-in-the-guest\n"
    );
    assert_eq!(
        std::fs::read_to_string(rw.join("etc/marker")).expect("marker"),
        format!("{MARKER}\n")
    );
    umount_ok(w, &rw, pid);
    assert_nothing_mounted(w);
    assert_eq!(w.store_chunks(), store_before, "the store's chunks changed");
    // An unknown image: one line, exit 1, nothing mounted.
    let (_guard_bad, bad) = mount_guard(w, "mnt-bad");
    let out = w.run(&[
        "mount",
        "absent:v1",
        bad.to_str().expect("utf-8"),
        "--read-only",
    ]);
    out.fails_with(&[1], &["absent:v1", "not in the catalog"]);
    assert!(!is_mountpoint(&bad));
    assert_nothing_mounted(w);

    // umount of a plain directory: one line.
    let plain = w.path().join("plain");
    std::fs::create_dir(&plain).expect("mkdir");
    let out = w.run(&["umount", plain.to_str().expect("utf-8")]);
    out.fails_with(&[1], &["not mounted"]);
}

// ---------------------------------------------------------------------------------------------
// 8. Bad arguments
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_arguments() {
    let w = World::new("lazyblock-agent-", TOOL_LIMIT);
    let src = w.path().join("small.raw");
    std::fs::write(&src, random_bytes(8, 100_000)).expect("write");
    let source = format!("raw:{}", src.display());
    w.run(&["build", &source, "--name", IMAGE]).ok();
    let sock = w.path().join("nbd.sock");

    for bad in ["bogus:x", "tcp:127.0.0.1", "unix:", "tcp::80", "nonsense"] {
        let out = w.run(&["serve", IMAGE, "--nbd", bad]);
        out.fails_with(&[1, 2], &["--nbd"]);
    }
    let out = w.run(&[
        "serve",
        "absent:v1",
        "--read-only",
        "--nbd",
        &unix_arg(&sock),
    ]);
    out.fails_with(&[1], &["absent:v1", "not in the catalog"]);
    assert!(!sock.exists(), "a failed serve left a socket");
    let out = w.run(&[
        "serve",
        IMAGE,
        "--read-only",
        "--nbd",
        &unix_arg(&sock),
        "--metrics-addr",
        "not-an-address",
    ]);
    out.fails_with(&[1], &["metrics", "not-an-address"]);
    assert!(!sock.exists(), "a failed serve left a socket");
}

/// A usage error for a missing required argument must name the argument in its one line.
#[test]
fn missing_required_argument_is_named() {
    let w = World::new("lazyblock-agent-", TOOL_LIMIT);
    let out = w.run(&["serve", IMAGE]);
    out.fails_with(&[2], &["--nbd"]);
    let out = w.run(&["mount", IMAGE]);
    out.fails_with(&[2], &["<DIR>"]);
}
