//! QEMU guest tests: a real Linux guest (and a real qemu NBD client) reading images that
//! `lazyblock serve` exports over NBD.
//!
//! - `qemu_guest_boots_from_nbd_served_image`: builds a small ext4 image (busybox and a marker
//!   file with a random token) into a fresh local store, serves it read-only over an NBD unix
//!   socket and boots a TCG guest (kernel and initrd from `scripts/vm-assets.sh`) whose disk is
//!   that export; the guest's init mounts it and runs `chroot /mnt /bin/busybox sh -c 'cat
//!   /etc/marker'`. The console must show the token and `LAZYBLOCK-VM-EXIT=0`.
//! - `nbd_client_survives_agent_kill_9`: serves a patterned image read-write with an overlay
//!   directory; a `qemu-io` client (`reconnect-delay`) writes and flushes one block, then reads
//!   the whole image pass after pass with pattern checks while the server is killed with
//!   SIGKILL and restarted on the same socket and overlay. Every read must succeed with the
//!   right bytes, including the write made before the kill.
//!
//! Environment:
//! - `LAZYBLOCK_SKIP_VM_TESTS=1` skips both tests; otherwise they need the assets and the host
//!   tools, which they get by running `scripts/vm-assets.sh` (idempotent, fast when done; needs
//!   root the first time, for apt).
//! - `LAZYBLOCK_VM_DIR`: the assets directory (default `/var/tmp/lazyblock-vm`).
//! - `LAZYBLOCK_VM_TEST_SERVER=qemu-nbd` serves with `qemu-nbd` (from `lazyblock export`)
//!   instead of `lazyblock serve`, to validate the rig itself. Default: `lazyblock`.
//! - `LAZYBLOCK_VM_TIMEOUT_SECS`: hard limit of one guest run (default 120); a guest still
//!   running then is killed and the test fails with its console log.
//!
//! Every process a test starts is owned by a guard that kills it on drop, also on failure.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_lazyblock");
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// How long the NBD client waits for the server to come back (qemu's `reconnect-delay`).
/// Generous on purpose: it bounds the restart of the server, not a performance figure.
const RECONNECT_DELAY_SECS: u32 = 30;
/// Hang guard for waits on a server or a client (not a performance assertion).
const HANG_GUARD: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Setup: skip switch, assets
// ---------------------------------------------------------------------------------------------

/// True (after saying so) when `LAZYBLOCK_SKIP_VM_TESTS=1`.
fn skipped(test: &str) -> bool {
    if std::env::var("LAZYBLOCK_SKIP_VM_TESTS").as_deref() == Ok("1") {
        eprintln!("LAZYBLOCK_SKIP_VM_TESTS=1: skipping {test}");
        return true;
    }
    false
}

/// The assets directory, complete: runs `scripts/vm-assets.sh` once per test process.
fn assets() -> &'static Path {
    static ASSETS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let result = ASSETS.get_or_init(|| {
        let dir = std::env::var_os("LAZYBLOCK_VM_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/lazyblock-vm"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/vm-assets.sh");
        let out = Command::new(&script)
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} {} failed ({}): {}{}\nRun `scripts/vm-assets.sh {}` as root to install the \
                 VM test assets, or set LAZYBLOCK_SKIP_VM_TESTS=1 to skip these tests.",
                script.display(),
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                dir.display(),
            ));
        }
        for f in ["vmlinux", "initrd.img"] {
            if !dir.join(f).is_file() {
                return Err(format!("{} has no {f} after vm-assets.sh", dir.display()));
            }
        }
        Ok(dir)
    });
    match result {
        Ok(dir) => dir,
        Err(e) => panic!("{e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// A private store, and the lazyblock binary run against it
// ---------------------------------------------------------------------------------------------

/// A temporary directory with a local store, a keyring and the test's sockets and logs.
struct World {
    tmp: tempfile::TempDir,
    tenant: &'static str,
}

impl World {
    fn new() -> Self {
        Self {
            // Short path: unix socket paths are limited to 107 bytes.
            tmp: tempfile::Builder::new()
                .prefix("lazyblock-vm-")
                .tempdir_in("/tmp")
                .expect("tempdir"),
            tenant: "vmtest",
        }
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// The binary with a clean environment: HOME, store, keyring and tenant of this world.
    fn lazyblock(&self) -> Command {
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
                format!("file://{}", self.path().join("store").display()),
            )
            .env("LAZYBLOCK_KEYS_DIR", self.path().join("keys"))
            .env("LAZYBLOCK_TENANT", self.tenant)
            .current_dir(self.path())
            .stdin(Stdio::null());
        cmd
    }

    /// Runs the binary to completion, asserting success.
    #[track_caller]
    fn run_ok(&self, args: &[&str]) {
        let out = self.lazyblock().args(args).output().expect("run lazyblock");
        assert!(
            out.status.success(),
            "lazyblock {args:?}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `lazyblock build raw:<file> --name <image>`.
    fn build(&self, file: &Path, image: &str) {
        self.run_ok(&["build", &format!("raw:{}", file.display()), "--name", image]);
    }

    /// A new, unused path in the world for a log file.
    fn log(&self, what: &str) -> PathBuf {
        for n in 1.. {
            let p = self.path().join(format!("{what}-{n}.log"));
            if !p.exists() {
                return p;
            }
        }
        unreachable!()
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}

// ---------------------------------------------------------------------------------------------
// The NBD server under test
// ---------------------------------------------------------------------------------------------

/// Which program serves the image (`LAZYBLOCK_VM_TEST_SERVER`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum ServerKind {
    /// `lazyblock serve` (the default): what these tests are for.
    Lazyblock,
    /// `qemu-nbd` on a `lazyblock export` of the image: validates the rig itself.
    QemuNbd,
}

impl ServerKind {
    fn from_env() -> Self {
        match std::env::var("LAZYBLOCK_VM_TEST_SERVER").as_deref() {
            Err(_) | Ok("") | Ok("lazyblock") => Self::Lazyblock,
            Ok("qemu-nbd") => Self::QemuNbd,
            Ok(other) => {
                panic!("LAZYBLOCK_VM_TEST_SERVER={other:?}: expected lazyblock or qemu-nbd")
            }
        }
    }
}

/// How the image is exported.
enum Access<'a> {
    /// `--read-only`.
    ReadOnly,
    /// Writable, guest writes kept in this overlay directory (`--overlay-dir`).
    Overlay(&'a Path),
}

/// One server to start: the published image, where to listen, how.
struct Serve<'a> {
    image: &'a str,
    socket: &'a Path,
    cache_dir: &'a Path,
    access: Access<'a>,
}

/// A running NBD server; killed (SIGKILL) and reaped on drop.
struct ServerGuard {
    child: Child,
    log: PathBuf,
    describe: String,
}

impl ServerGuard {
    /// `kill -9` the server and reap it.
    fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL the server");
        let status = self.child.wait().expect("reap the server");
        assert!(!status.success(), "the server was killed: {status}");
    }

    fn log(&self) -> String {
        format!(
            "{}\n--- server log ---\n{}",
            self.describe,
            read_log(&self.log)
        )
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the server of `LAZYBLOCK_VM_TEST_SERVER` and waits until it answers NBD on the
/// socket (a stale socket file of a killed server does not count).
///
/// lazyblock: `lazyblock serve <image> --nbd unix:<socket> --cache-dir <dir>` plus
/// `--read-only` or `--overlay-dir <dir>`.
/// qemu-nbd: `qemu-nbd -t -k <socket>` on a `lazyblock export` of the image (raw, `-r`) or on a
/// qcow2 overlay of it in the overlay directory (created once, reused on restart).
fn start_server(world: &World, spec: &Serve<'_>) -> ServerGuard {
    let log = world.log("server");
    let mut cmd = match ServerKind::from_env() {
        ServerKind::Lazyblock => {
            let mut cmd = world.lazyblock();
            cmd.arg("serve")
                .arg(spec.image)
                .arg("--nbd")
                .arg(format!("unix:{}", spec.socket.display()))
                .arg("--cache-dir")
                .arg(spec.cache_dir);
            match spec.access {
                Access::ReadOnly => cmd.arg("--read-only"),
                Access::Overlay(dir) => cmd.arg("--overlay-dir").arg(dir),
            };
            cmd
        }
        ServerKind::QemuNbd => {
            let raw = world.path().join(format!(
                "export-{}.raw",
                spec.image.replace(['/', ':'], "_")
            ));
            if !raw.exists() {
                world.run_ok(&["export", spec.image, "-o", raw.to_str().expect("utf-8")]);
            }
            let mut cmd = Command::new("qemu-nbd");
            cmd.args(["-t", "-e", "4", "-k"]).arg(spec.socket);
            match spec.access {
                Access::ReadOnly => {
                    cmd.args(["-r", "-f", "raw"]).arg(&raw);
                }
                Access::Overlay(dir) => {
                    let overlay = dir.join("overlay.qcow2");
                    if !overlay.exists() {
                        run_tool(
                            Command::new("qemu-img")
                                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                                .arg(&raw)
                                .arg(&overlay),
                        );
                    }
                    cmd.args(["-f", "qcow2"]).arg(&overlay);
                }
            }
            cmd
        }
    };
    let describe = format!("{cmd:?}");
    let log_file = std::fs::File::create(&log).expect("create the server log");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("dup log"))
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {describe}: {e}"));
    let mut guard = ServerGuard {
        child,
        log,
        describe,
    };
    let start = Instant::now();
    loop {
        if let Some(status) = guard.child.try_wait().expect("poll the server") {
            panic!(
                "the NBD server exited before serving ({status})\n{}",
                guard.log()
            );
        }
        if nbd_greets(spec.socket) {
            return guard;
        }
        assert!(
            start.elapsed() < HANG_GUARD,
            "the NBD server does not answer on {}\n{}",
            spec.socket.display(),
            guard.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True if something listening on `socket` sends the NBD greeting (`NBDMAGIC`).
fn nbd_greets(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut magic = [0u8; 8];
    s.read_exact(&mut magic).is_ok() && &magic == b"NBDMAGIC"
}

/// Runs a helper tool to completion, asserting success.
#[track_caller]
fn run_tool(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A child process (qemu, qemu-io) killed and reaped on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Test 1: a guest boots from the served image
// ---------------------------------------------------------------------------------------------

/// Boots the test kernel with the NBD export on `socket` as a read-only virtio-blk disk, runs
/// `command` in the guest and returns (qemu's exit status, console output). Fails if the guest
/// is still running after `LAZYBLOCK_VM_TIMEOUT_SECS`.
fn boot_guest(world: &World, assets: &Path, socket: &Path, command: &str) -> (ExitStatus, String) {
    let limit = std::env::var("LAZYBLOCK_VM_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120u64);
    let console = world.log("console");
    let console_file = std::fs::File::create(&console).expect("create the console log");
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-m", "512", "-smp", "1"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(assets.join("vmlinux"))
        .arg("-initrd")
        .arg(assets.join("initrd.img"))
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 quiet lazyblock.cmd={}",
            base64(command.as_bytes())
        ))
        .arg("-blockdev")
        .arg(format!(
            "driver=nbd,server.type=unix,server.path={},node-name=d0,read-only=on",
            socket.display()
        ))
        .args(["-device", "virtio-blk-pci,drive=d0"])
        .stdin(Stdio::null())
        .stdout(console_file.try_clone().expect("dup console"))
        .stderr(console_file);
    let mut qemu = ChildGuard(
        cmd.spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}")),
    );
    let start = Instant::now();
    loop {
        if let Some(status) = qemu.0.try_wait().expect("poll qemu") {
            return (status, read_log(&console));
        }
        if start.elapsed() > Duration::from_secs(limit) {
            let _ = qemu.0.kill();
            let _ = qemu.0.wait();
            panic!(
                "the guest did not power off within {limit} s (LAZYBLOCK_VM_TIMEOUT_SECS); \
                 killed it\n{cmd:?}\n--- console ---\n{}",
                read_log(&console)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Standard base64 with padding (the guest decodes it with busybox `base64 -d`).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for group in data.chunks(3) {
        let b = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_the_standard_encoding() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foob"), "Zm9vYg==");
    assert_eq!(base64(b"sh -c 'x'"), "c2ggLWMgJ3gn");
}

#[test]
fn qemu_guest_boots_from_nbd_served_image() {
    if skipped("qemu_guest_boots_from_nbd_served_image") {
        return;
    }
    let assets = assets();
    let world = World::new();

    // The image: ext4 holding a static busybox (with sh and cat links) and a random token.
    let token = format!("lazyblock-token-{:032x}", rand::random::<u128>());
    let tree = world.path().join("tree");
    std::fs::create_dir_all(tree.join("bin")).expect("mkdir bin");
    std::fs::create_dir_all(tree.join("etc")).expect("mkdir etc");
    std::fs::copy("/bin/busybox", tree.join("bin/busybox"))
        .expect("copy /bin/busybox (busybox-static)");
    for link in ["sh", "cat"] {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(link)).expect("symlink");
    }
    std::fs::write(tree.join("etc/marker"), format!("{token}\n")).expect("write the marker");
    let disk = world.path().join("disk.ext4");
    run_tool(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-d"])
            .arg(&tree)
            .arg(&disk)
            .arg("16M"),
    );
    let image = "vmtest/marker:v1";
    world.build(&disk, image);

    let socket = world.path().join("nbd.sock");
    let cache = world.path().join("cache");
    std::fs::create_dir_all(&cache).expect("mkdir cache");
    let server = start_server(
        &world,
        &Serve {
            image,
            socket: &socket,
            cache_dir: &cache,
            access: Access::ReadOnly,
        },
    );

    let (status, console) = boot_guest(
        &world,
        assets,
        &socket,
        "chroot /mnt /bin/busybox sh -c 'cat /etc/marker'",
    );
    let context = format!("--- console ---\n{console}\n{}", server.log());
    assert!(
        !console.contains("LAZYBLOCK-VM-ERROR="),
        "the guest init failed\n{context}"
    );
    assert!(
        console.contains(&token),
        "the guest did not print the marker token {token}\n{context}"
    );
    assert!(
        console.contains("LAZYBLOCK-VM-EXIT=0"),
        "the guest command did not exit with 0\n{context}"
    );
    assert!(status.success(), "qemu exited with {status}\n{context}");
    drop(server);
}

// ---------------------------------------------------------------------------------------------
// Test 2: a qemu NBD client rides through kill -9 and restart of the server
// ---------------------------------------------------------------------------------------------

/// The patterned image: 64 KiB regions, region i filled with `region_byte(i)`; the last MiB is
/// zero (zero chunks). Neighbouring regions differ, so misplaced data fails the checks.
const PATTERN_SIZE: u64 = 16 * MIB;
const REGION: u64 = 64 * KIB;
const ZERO_FROM: u64 = PATTERN_SIZE - MIB;

fn region_byte(i: u64) -> u8 {
    if i * REGION >= ZERO_FROM {
        0
    } else {
        ((i * 37 + 1) % 256) as u8
    }
}

/// The write made before the kill: 4 KiB of 0xa5 at an offset that is not chunk aligned.
const WRITE_AT: u64 = 100 * REGION + 8 * KIB;
const WRITE_LEN: u64 = 4 * KIB;
const WRITE_BYTE: u8 = 0xa5;

/// qemu-io commands reading the whole image once, each checked against its expected pattern
/// (the region holding the write is read in three pieces).
fn read_pass() -> Vec<String> {
    let mut cmds = Vec::new();
    for i in 0..PATTERN_SIZE / REGION {
        let (start, end) = (i * REGION, (i + 1) * REGION);
        let b = region_byte(i);
        if (start..end).contains(&WRITE_AT) {
            cmds.push(format!("read -P {b} {start} {}", WRITE_AT - start));
            cmds.push(format!("read -P {WRITE_BYTE} {WRITE_AT} {WRITE_LEN}"));
            let after = WRITE_AT + WRITE_LEN;
            cmds.push(format!("read -P {b} {after} {}", end - after));
        } else {
            cmds.push(format!("read -P {b} {start} {REGION}"));
        }
    }
    cmds
}

/// What qemu-io's stdout says: its prompt (printed, and flushed, when it is ready for the next
/// command) or a line of output.
enum IoEvent {
    Prompt,
    Line(String),
}

/// An interactive qemu-io client driven one command at a time on stdin.
///
/// qemu-io reads stdin with `fgets` after a readiness poll of the descriptor, so a second
/// command written before the first one finished can sit in its stdio buffer unseen: at most
/// one command is ever outstanding.
struct QemuIo {
    child: ChildGuard,
    stdin: Option<ChildStdin>,
    events: mpsc::Receiver<IoEvent>,
    transcript: Vec<String>,
    stderr: PathBuf,
}

const PROMPT: &[u8] = b"qemu-io> ";

impl QemuIo {
    /// Starts the client on the NBD socket and waits for its first prompt.
    fn start(world: &World, socket: &Path) -> Self {
        let stderr = world.log("qemu-io-stderr");
        let mut child = Command::new("qemu-io")
            .arg("--image-opts")
            .arg(format!(
                "driver=nbd,server.type=unix,server.path={},reconnect-delay={RECONNECT_DELAY_SECS}",
                socket.display()
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("create the qemu-io log"))
            .spawn()
            .expect("start qemu-io");
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().expect("qemu-io stdout");
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut block = [0u8; 4096];
            loop {
                // Emit every complete token at the front of the buffer.
                loop {
                    if buf.starts_with(PROMPT) {
                        buf.drain(..PROMPT.len());
                        if tx.send(IoEvent::Prompt).is_err() {
                            return;
                        }
                    } else if let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                        let line = String::from_utf8_lossy(&buf[..nl]).into_owned();
                        buf.drain(..=nl);
                        if tx.send(IoEvent::Line(line)).is_err() {
                            return;
                        }
                    } else {
                        break;
                    }
                }
                match stdout.read(&mut block) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&block[..n]),
                }
            }
        });
        let mut io = Self {
            child: ChildGuard(child),
            stdin,
            events,
            transcript: Vec::new(),
            stderr,
        };
        io.wait_prompt("the first prompt");
        io
    }

    /// Writes one command without waiting for it.
    fn send(&mut self, cmd: &str) {
        self.transcript.push(format!("> {cmd}"));
        let stdin = self.stdin.as_mut().expect("qemu-io stdin open");
        writeln!(stdin, "{cmd}").expect("write to qemu-io");
        stdin.flush().expect("flush qemu-io stdin");
    }

    /// Waits for the next prompt; returns the output lines before it.
    fn wait_prompt(&mut self, why: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            match self.events.recv_timeout(HANG_GUARD) {
                Ok(IoEvent::Prompt) => return lines,
                Ok(IoEvent::Line(line)) => {
                    self.transcript.push(line.clone());
                    lines.push(line);
                }
                Err(e) => panic!("qemu-io gave no prompt ({why}): {e}\n{}", self.describe()),
            }
        }
    }

    /// Runs one command to completion; returns its output lines.
    fn run(&mut self, cmd: &str) -> Vec<String> {
        self.send(cmd);
        self.wait_prompt(cmd)
    }

    /// Sends `quit` and waits for the exit.
    fn quit(&mut self) -> ExitStatus {
        self.send("quit");
        drop(self.stdin.take());
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.0.try_wait().expect("poll qemu-io") {
                return status;
            }
            assert!(
                start.elapsed() < HANG_GUARD,
                "qemu-io does not quit\n{}",
                self.describe()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn describe(&self) -> String {
        let tail: Vec<&str> = self
            .transcript
            .iter()
            .rev()
            .take(40)
            .rev()
            .map(|s| s.as_str())
            .collect();
        format!(
            "--- qemu-io transcript (last 40 of {} lines) ---\n{}\n--- qemu-io stderr ---\n{}",
            self.transcript.len(),
            tail.join("\n"),
            read_log(&self.stderr)
        )
    }
}

/// Checks the output of one `read`/`write` command: exactly the success line for `len` bytes
/// at `offset` and no failure. Returns a description of what is wrong, if anything.
fn io_problem(cmd: &str, out: &[String], verb: &str, len: u64, offset: u64) -> Option<String> {
    let ok = format!("{verb} {len}/{len} bytes at offset {offset}");
    let bad = out
        .iter()
        .any(|l| l.contains("failed") || l.contains("error"));
    let done = out.iter().filter(|l| l.trim() == ok).count();
    (bad || done != 1).then(|| format!("`{cmd}` -> {out:?}"))
}

/// Runs a `read -P <byte> <offset> <len>` (or `write -P ...`) and records any problem.
fn checked(io: &mut QemuIo, problems: &mut Vec<String>, cmd: &str) {
    let parts: Vec<&str> = cmd.split_whitespace().collect();
    let (verb, offset, len) = match parts.as_slice() {
        ["read", "-P", _, off, len] => ("read", off, len),
        ["write", "-P", _, off, len] => ("wrote", off, len),
        _ => panic!("not a checked command: {cmd}"),
    };
    let offset: u64 = offset.parse().expect("offset");
    let len: u64 = len.parse().expect("length");
    let out = io.run(cmd);
    if let Some(p) = io_problem(cmd, &out, verb, len, offset) {
        problems.push(p);
    }
}

#[test]
fn nbd_client_survives_agent_kill_9() {
    if skipped("nbd_client_survives_agent_kill_9") {
        return;
    }
    assets(); // qemu-io, qemu-img, qemu-nbd of the matching qemu version
    let world = World::new();

    let mut data = vec![0u8; PATTERN_SIZE as usize];
    for (i, region) in data.chunks_mut(REGION as usize).enumerate() {
        region.fill(region_byte(i as u64));
    }
    let disk = world.path().join("pattern.raw");
    std::fs::write(&disk, &data).expect("write the pattern image");
    let image = "vmtest/pattern:v1";
    world.build(&disk, image);

    let socket = world.path().join("nbd.sock");
    let overlay = world.path().join("overlay");
    let cache = world.path().join("cache");
    std::fs::create_dir_all(&overlay).expect("mkdir overlay");
    std::fs::create_dir_all(&cache).expect("mkdir cache");
    let spec = Serve {
        image,
        socket: &socket,
        cache_dir: &cache,
        access: Access::Overlay(&overlay),
    };
    let server = start_server(&world, &spec);
    let first_log = server.log();

    let pass = read_pass();
    let mut problems = Vec::new();
    let mut io = QemuIo::start(&world, &socket);

    // One write, flushed (only flushed writes must survive the kill), read back.
    checked(
        &mut io,
        &mut problems,
        &format!("write -P {WRITE_BYTE} {WRITE_AT} {WRITE_LEN}"),
    );
    let flush = io.run("flush");
    if !flush.is_empty() {
        problems.push(format!("`flush` -> {flush:?}"));
    }
    checked(
        &mut io,
        &mut problems,
        &format!("read -P {WRITE_BYTE} {WRITE_AT} {WRITE_LEN}"),
    );
    // A full pass, then half of one.
    for cmd in pass.iter().chain(&pass[..pass.len() / 2]) {
        checked(&mut io, &mut problems, cmd);
    }
    // Kill the server with a whole-image read in flight (or just done), restart it on the same
    // socket and overlay; the read must complete through the reconnect.
    let big = format!("read 0 {PATTERN_SIZE}");
    io.send(&big);
    server.kill_9();
    let server = start_server(&world, &spec);
    let out = io.wait_prompt(&big);
    if let Some(p) = io_problem(&big, &out, "read", PATTERN_SIZE, 0) {
        problems.push(p);
    }
    // The rest of that pass and two more: every byte as built, plus the write.
    for cmd in pass[pass.len() / 2..].iter().chain(&pass).chain(&pass) {
        checked(&mut io, &mut problems, cmd);
    }
    let status = io.quit();

    let context = format!(
        "{}\n--- first server ---\n{first_log}\n--- restarted server ---\n{}",
        io.describe(),
        server.log()
    );
    assert!(
        problems.is_empty(),
        "{} failed commands, first ones:\n{}\n{context}",
        problems.len(),
        problems[..problems.len().min(5)].join("\n")
    );
    assert!(
        read_log(&io.stderr).trim().is_empty(),
        "qemu-io reported errors\n{context}"
    );
    assert!(status.success(), "qemu-io exited with {status}\n{context}");
    drop(server);
}
