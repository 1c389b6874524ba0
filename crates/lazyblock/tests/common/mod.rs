//! Helpers shared by the binary's end-to-end tests (`tests/cli.rs`, `tests/agent.rs`,
//! `tests/corpus_mount.rs`, `tests/l2.rs`): bounded runs of tools and of `lazyblock`, a private [`World`]
//! (temporary HOME, store, keyring, worker cache, mount state) that sweeps leftover mounts and
//! loop devices when dropped, [`MountGuard`], [`Server`] (a running `lazyblock serve`), and the parser of the agent's summary line.
//!
//! Each test crate uses a part of it.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{Read, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_lazyblock");

/// Bound for one run of an external tool (qemu-io, nbdcopy, …) or of `lazyblock`: a hang fails
/// the test instead of stalling it.
pub(crate) const TOOL_LIMIT: Duration = Duration::from_secs(300);

/// Bound for a `serve` to start listening, or to exit after SIGTERM.
pub(crate) const SERVER_LIMIT: Duration = Duration::from_secs(120);

/// Runs a command to completion with a bound; kills it and panics when the bound passes.
pub(crate) fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
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

pub(crate) fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Sends a signal with kill(1) (the crate forbids `unsafe`, so no libc here).
pub(crate) fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Waits for `child` to exit within `limit`.
pub(crate) fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
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
pub(crate) fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// What one run of the binary did.
pub(crate) struct Out {
    pub(crate) args: Vec<String>,
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Out {
    pub(crate) fn describe(&self) -> String {
        format!(
            "lazyblock {:?}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args, self.status, self.stdout, self.stderr
        )
    }

    #[track_caller]
    pub(crate) fn ok(self) -> Self {
        assert!(
            self.status.success(),
            "expected success\n{}",
            self.describe()
        );
        self
    }

    /// Asserts a failure with exit status in `codes` and exactly one `error: ` line on stderr
    /// containing every needle; returns the line.
    #[track_caller]
    pub(crate) fn fails_with(&self, codes: &[i32], needles: &[&str]) -> String {
        assert!(
            !self.status.success(),
            "expected failure\n{}",
            self.describe()
        );
        assert!(
            self.status.code().is_some_and(|c| codes.contains(&c)),
            "exit status should be one of {codes:?}\n{}",
            self.describe()
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "stderr must be exactly one line\n{}",
            self.describe()
        );
        let line = lines[0];
        assert!(
            line.starts_with("error: "),
            "stderr must start with `error: `\n{}",
            self.describe()
        );
        for needle in needles {
            assert!(
                line.contains(needle),
                "the error line does not mention {needle:?}\n{}",
                self.describe()
            );
        }
        line.to_owned()
    }

    /// Stdout parsed as JSON.
    #[track_caller]
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{}", self.describe()))
    }
}

/// A private world for one test: a temporary HOME with store, keyring, cache and run dir.
/// Dropping it first sweeps any mount or loop device left under its directory.
pub(crate) struct World {
    tmp: tempfile::TempDir,
    limit: Duration,
}

impl World {
    /// A fresh world in a temporary directory named `<prefix>…`; every `lazyblock` run is
    /// bounded by `limit`.
    pub(crate) fn new(prefix: &str, limit: Duration) -> Self {
        Self {
            tmp: tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .expect("tempdir"),
            limit,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub(crate) fn store(&self) -> PathBuf {
        self.path().join("store")
    }

    pub(crate) fn chunks_dir(&self) -> PathBuf {
        self.store().join("roots/r0/chunks")
    }

    pub(crate) fn cache(&self) -> PathBuf {
        self.path().join("cache")
    }

    pub(crate) fn run_dir(&self) -> PathBuf {
        self.path().join("run")
    }

    pub(crate) fn command(&self) -> Command {
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
            .env("LAZYBLOCK_CACHE_DIR", self.cache())
            .env("LAZYBLOCK_RUN_DIR", self.run_dir())
            .current_dir(self.path());
        cmd
    }

    pub(crate) fn run(&self, args: &[&str]) -> Out {
        let mut cmd = self.command();
        cmd.args(args);
        let out = run_bounded(cmd, self.limit);
        Out {
            args: args.iter().map(|s| s.to_string()).collect(),
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Names of the chunk files in the store.
    pub(crate) fn store_chunks(&self) -> BTreeSet<String> {
        file_names(&files_in(&self.chunks_dir()))
    }
}

impl Drop for World {
    fn drop(&mut self) {
        sweep_mounts_under(self.path());
    }
}

/// Unmounts (lazily) every mount under `root`, deepest first, and detaches every loop device
/// backed by a file under `root`. The last line of defence before the temp dir is removed.
pub(crate) fn sweep_mounts_under(root: &Path) {
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
pub(crate) fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(root))
        .collect()
}

/// Loop devices (from `losetup -a`) whose backing file is under `root`.
pub(crate) fn loops_backed_under(root: &Path) -> Vec<String> {
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

pub(crate) fn is_mountpoint(dir: &Path) -> bool {
    mounts_under(dir).iter().any(|m| m == dir)
}

/// Regular files directly in `dir`, sorted (none if `dir` does not exist).
pub(crate) fn files_in(dir: &Path) -> Vec<PathBuf> {
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

/// Files in `<cache>/chunks/*/*`.
pub(crate) fn cache_chunk_files(cache: &Path) -> Vec<PathBuf> {
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

pub(crate) fn file_names(files: &[PathBuf]) -> BTreeSet<String> {
    files
        .iter()
        .map(|p| {
            p.file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Undoes a `lazyblock mount` of `dir`: `lazyblock umount`, then `umount -l` and `losetup -d`,
/// and kills a background agent that is still running.
pub(crate) struct MountGuard<'a> {
    pub(crate) w: &'a World,
    pub(crate) dir: PathBuf,
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
pub(crate) fn assert_nothing_mounted(w: &World) {
    let left = mounts_under(w.path());
    assert!(left.is_empty(), "mounts left under the test dir: {left:?}");
    let loops = loops_backed_under(&w.run_dir());
    assert!(
        loops.is_empty(),
        "loop devices backed by files under the run dir: {loops:?}"
    );
}

/// What the summary line of an agent reports.
#[derive(Debug, Default, Clone)]
pub(crate) struct Summary {
    pub(crate) reads: u64,
    pub(crate) writes: u64,
    pub(crate) disk_hits: u64,
    pub(crate) origin_chunks: u64,
    /// As printed, e.g. `95.0 MiB`.
    pub(crate) origin_bytes: String,
    pub(crate) prefetched: u64,
    pub(crate) origin_errors: u64,
    pub(crate) guest_chunks: u64,
}

/// Finds and parses the one summary line of `image` in `stderr`: `lazyblock: <image>: reads N
/// (..), writes N (..), chunk hits memory N disk N origin N, origin N chunks X (N prefetched,
/// N errors)..., guest read N distinct chunks`.
#[track_caller]
pub(crate) fn parse_summary(stderr: &str, image: &str) -> Summary {
    let prefix = format!("lazyblock: {image}: reads ");
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
    // `origin N chunks <number> <unit>`
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
        writes: after("writes"),
        disk_hits: after("disk"),
        origin_chunks,
        origin_bytes,
        prefetched: before("prefetched,"),
        origin_errors: before("errors)"),
        guest_chunks,
    }
}

/// SIGTERM, then SIGKILL after a bound; reaps the child.
pub(crate) fn terminate(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    send_signal(child.id(), "TERM");
    if wait_bounded(child, Duration::from_secs(20)).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A running `lazyblock serve`: SIGTERM (then SIGKILL) when dropped.
pub(crate) struct Server {
    pub(crate) child: Option<Child>,
    pub(crate) log: PathBuf,
    /// The NBD URI it printed.
    pub(crate) uri: String,
}

impl Server {
    /// Spawns `lazyblock serve <args>` with stderr to `<tmp>/<tag>.stderr` (not waiting).
    pub(crate) fn spawn(w: &World, tag: &str, args: &[&str]) -> (Child, PathBuf) {
        let log = w.path().join(format!("{tag}.stderr"));
        let file = std::fs::File::create(&log).expect("create server log");
        let mut cmd = w.command();
        cmd.arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        let child = cmd.spawn().expect("spawn lazyblock serve");
        (child, log)
    }

    /// Starts `lazyblock serve <args>` and waits until it listens.
    pub(crate) fn start(w: &World, tag: &str, args: &[&str]) -> Self {
        let (child, log) = Self::spawn(w, tag, args);
        let mut server = Self {
            child: Some(child),
            log,
            uri: String::new(),
        };
        let deadline = Instant::now() + SERVER_LIMIT;
        loop {
            let text = server.stderr();
            if let Some(line) = text.lines().find(|l| l.starts_with("lazyblock: serving ")) {
                let (_, uri) = line
                    .rsplit_once(" at ")
                    .unwrap_or_else(|| panic!("no URI in {line:?}"));
                server.uri = uri.trim().to_owned();
                return server;
            }
            if let Some(status) = server.child_mut().try_wait().expect("try_wait") {
                panic!("lazyblock serve {args:?} exited ({status}) before listening:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "lazyblock serve {args:?} did not listen within {SERVER_LIMIT:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("server child")
    }

    /// Everything the server printed on stderr so far.
    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn running(&mut self) -> bool {
        matches!(self.child_mut().try_wait(), Ok(None))
    }

    /// SIGTERM and wait (bounded); returns the exit status and the whole stderr.
    pub(crate) fn stop(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("server child");
        send_signal(child.id(), "TERM");
        let status = wait_bounded(&mut child, SERVER_LIMIT);
        let text = self.stderr();
        match status {
            Some(s) => (s, text),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("lazyblock serve did not exit within {SERVER_LIMIT:?} of SIGTERM:\n{text}");
            }
        }
    }

    /// SIGKILL, no clean-up by the server.
    pub(crate) fn kill9(mut self) {
        let mut child = self.child.take().expect("server child");
        send_signal(child.id(), "KILL");
        let status = wait_bounded(&mut child, SERVER_LIMIT).expect("exit after SIGKILL");
        assert!(!status.success());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            terminate(child);
        }
    }
}

// Tools and clients shared by the tests that serve images.

pub(crate) fn tool(prog: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(prog);
    cmd.args(args);
    run_bounded(cmd, TOOL_LIMIT)
}

/// Runs a tool, asserts success, returns its stdout.
#[track_caller]
pub(crate) fn tool_ok(prog: &str, args: &[&str]) -> String {
    let out = tool(prog, args);
    assert!(
        out.status.success(),
        "{}",
        describe(&format!("{prog} {args:?}"), &out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TCP port nobody listens on right now (the kernel's pick for an ephemeral bind).
pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// `qemu-io -f raw [-r] -c <cmd>... <uri>` (bounded).
pub(crate) fn qemu_io(uri: &str, read_only: bool, cmds: &[String]) -> Output {
    let mut args: Vec<&str> = vec!["-f", "raw"];
    if read_only {
        args.push("-r");
    }
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(uri);
    tool("qemu-io", &args)
}

/// `qemu-io` that must succeed with no failed command; returns stdout.
#[track_caller]
pub(crate) fn qemu_io_ok(uri: &str, read_only: bool, cmds: &[String]) -> String {
    let out = qemu_io(uri, read_only, cmds);
    let text = describe(&format!("qemu-io {cmds:?} {uri}"), &out);
    assert!(out.status.success(), "{text}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !stdout.contains("failed") && !stdout.contains("error"),
        "{text}"
    );
    stdout
}

/// Copies the whole export with `nbdcopy` and returns its bytes.
pub(crate) fn nbdcopy_all(uri: &str, out: &Path) -> Vec<u8> {
    tool_ok("nbdcopy", &[uri, out.to_str().expect("utf-8")]);
    std::fs::read(out).expect("read nbdcopy output")
}

/// `GET <path>` over HTTP/1.0; returns (status line, headers, body).
pub(crate) fn http_get(port: u16, path: &str) -> (String, String, String) {
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    http_request(port, &[request.as_bytes()])
}

/// Sends a request in the given pieces (one `write` each, a pause between them) and returns
/// (status line, headers, body).
pub(crate) fn http_request(port: u16, pieces: &[&[u8]]) -> (String, String, String) {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    conn.set_nodelay(true).expect("nodelay");
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(300));
        }
        conn.write_all(piece).expect("send request");
    }
    let mut raw = String::new();
    conn.read_to_string(&mut raw).expect("read response");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {raw:?}"));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_owned(), headers.to_owned(), body.to_owned())
}

/// The value of the sample `name{labels}` in Prometheus text.
#[track_caller]
pub(crate) fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {series} in\n{body}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("sample {series}: {e}"))
}
