//! `serve`, `mount` and `umount`: the agent's command line.
//!
//! `serve` runs in the foreground until SIGINT/SIGTERM. `mount` starts a background agent
//! (this binary, `mount --foreground`) that serves the image as a file on a private FUSE mount,
//! loop-mounts that file at the target directory, and returns once the directory is mounted;
//! `umount` tears the stack down from the directory alone and waits for the agent to save its
//! profile and print its summary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Args;
use lazyblock_agent::fetch::{ChunkFetcher, FetcherConfig};
use lazyblock_agent::metrics::{render_l2_prometheus, render_prometheus, DeviceMetrics};
use lazyblock_agent::source::{BlockSource, SourceConfig, SourceDevice};
use lazyblock_cache::{StartSlot, StartSlots};
use lazyblock_format::{ImageRef, Profile};
use lazyblock_image::open_image;
use lazyblock_keys::KeyAccess;
use lazyblock_store::StoreErrorKind;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing::{info, warn};

use crate::settings::parse_duration;
use crate::{context, settings, Resolved};

/// Options every agent command shares: cache, overlay, prefetch, metrics.
#[derive(Args, Debug, Clone)]
pub(crate) struct AgentArgs {
    /// Serve read-only: writes are refused and no overlay is kept
    #[arg(long)]
    pub(crate) read_only: bool,
    /// Where the guest's writes are kept, so a restarted agent resumes with them
    /// [default: $XDG_STATE_HOME/lazyblock/overlays/<tenant>/<name>/<tag>]
    #[arg(long)]
    pub(crate) overlay_dir: Option<PathBuf>,
    /// Drop the overlay's earlier writes and start from the image as built
    #[arg(long)]
    pub(crate) discard_overlay: bool,
    /// Worker cache directory, shared by every agent on the machine
    /// [default: $XDG_CACHE_HOME/lazyblock, i.e. ~/.cache/lazyblock]
    #[arg(long, env = "LAZYBLOCK_CACHE_DIR")]
    pub(crate) cache_dir: Option<PathBuf>,
    /// Memory tier size of the worker cache
    #[arg(long, default_value = "256MiB", value_parser = settings::parse_size)]
    pub(crate) cache_mem: u64,
    /// Disk tier size of the worker cache (0 disables the disk tier)
    #[arg(long, default_value = "10GiB", value_parser = settings::parse_size)]
    pub(crate) cache_disk: u64,
    /// Origin fetches in flight for guest reads
    #[arg(long, default_value_t = 64)]
    pub(crate) fetch_concurrency: usize,
    /// Origin fetches in flight for read-ahead and profile replay
    #[arg(long, default_value_t = 32)]
    pub(crate) prefetch_concurrency: usize,
    /// Fetch only chunks the guest reads: no sequential read-ahead, no neighbour prefetch
    #[arg(long)]
    pub(crate) no_readahead: bool,
    /// Do not replay the image's recorded start-up profile
    #[arg(long)]
    pub(crate) no_profile: bool,
    /// Record the order in which chunks are first read and store it beside the manifest,
    /// once the guest has read nothing new for --profile-idle or after --profile-limit
    #[arg(long)]
    pub(crate) record_profile: bool,
    /// Recording ends after this long without a newly read chunk
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub(crate) profile_idle: Duration,
    /// Recording ends after this long in any case
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub(crate) profile_limit: Duration,
    /// Cold starts this worker admits at once (counted across every agent sharing the cache
    /// directory); beyond it a start is refused with exit status 75 (try again later or
    /// elsewhere) rather than adding origin load. A start is cold when the worker cache lacks
    /// the image's first data chunk; it holds its slot until its start-up phase ends (no new
    /// chunk read for --profile-idle, at most --profile-limit). 0: no limit
    #[arg(long, default_value_t = 16)]
    pub(crate) max_cold_starts: usize,
    /// Serve Prometheus metrics on http://<addr>/metrics (e.g. 127.0.0.1:9100)
    #[arg(long)]
    pub(crate) metrics_addr: Option<String>,
    /// Added before every origin request (to model a remote origin in benchmarks)
    #[arg(long, hide = true, value_parser = parse_duration)]
    pub(crate) origin_latency: Option<Duration>,
}

pub(crate) fn default_cache_dir() -> PathBuf {
    settings::xdg_dir("XDG_CACHE_HOME", ".cache").join("lazyblock")
}

/// A running device: the source plus what the agent must do at the end.
pub(crate) struct Agent {
    pub(crate) image: ImageRef,
    pub(crate) source: Arc<BlockSource>,
    store: Arc<dyn lazyblock_store::ChunkStore>,
    record: Option<(Instant, Duration, Duration)>,
    profile_saved: std::sync::atomic::AtomicBool,
    /// The cold-start slot, held until the start-up phase ends.
    start_slot: std::sync::Mutex<Option<StartSlot>>,
    /// Reads from expired GC roots (for metrics).
    alarm: Arc<lazyblock_gc::AlarmStats>,
}

impl Agent {
    /// Opens the image and sets up cache, overlay and profile replay.
    pub(crate) async fn start(r: &Resolved, image: &str, a: &AgentArgs) -> Result<Arc<Self>> {
        let image = ImageRef::parse(image)?;
        let (mut ctx, alarm) = context(r, false)?;
        if let Some(delay) = a.origin_latency {
            ctx.store = Arc::new(lazyblock_store::DelayedStore::new(ctx.store, delay));
        }
        let opened = open_image(&ctx, &image).await?;
        let key = ctx
            .keys
            .tenant_key(&ctx.tenant, KeyAccess::Existing)
            .with_context(|| format!("cannot open {image}"))?;
        let keys = opened.manifest.open_keys(&key)?;
        let cache_dir = a.cache_dir.clone().unwrap_or_else(default_cache_dir);
        let fetcher = Arc::new(ChunkFetcher::new(
            Arc::clone(&ctx.store),
            FetcherConfig {
                mem_bytes: a.cache_mem,
                disk: (a.cache_disk > 0).then(|| (cache_dir.clone(), a.cache_disk)),
                demand_fetches: a.fetch_concurrency.max(1),
                prefetch_fetches: a.prefetch_concurrency.max(1),
                l2: r.l2.clone().map(crate::l2::open).transpose()?,
                ..FetcherConfig::default()
            },
        ));
        let overlay_dir = if a.read_only {
            None
        } else {
            let dir = a.overlay_dir.clone().unwrap_or_else(|| {
                settings::xdg_dir("XDG_STATE_HOME", ".local/state")
                    .join("lazyblock/overlays")
                    .join(r.tenant.as_str())
                    .join(image.name())
                    .join(image.tag())
            });
            Some(dir)
        };
        let root = opened.entry.root.clone();
        let manifest_id = opened.manifest.id();
        let start_slot = admit(&opened.manifest, &fetcher, &cache_dir, a, &image)?;
        let source = Arc::new(BlockSource::new(
            opened.manifest,
            keys,
            root.clone(),
            Arc::clone(&fetcher),
            SourceConfig {
                read_only: a.read_only,
                overlay_dir,
                discard_overlay: a.discard_overlay,
                readahead: !a.no_readahead,
                neighbor_chunks: if a.no_readahead { 0 } else { 1 },
                record_profile: a.record_profile,
                ..SourceConfig::default()
            },
        )?);
        if let Some(o) = source.overlay() {
            info!(
                dir = %o.dir().display(),
                pages = o.pages(),
                "overlay open"
            );
        }
        if !fetcher.has_disk_tier() && a.cache_disk > 0 {
            warn!(dir = %cache_dir.display(), "running without a disk cache");
        }
        if !a.record_profile && !a.no_profile {
            // In the background: a slow or missing profile must not delay serving.
            let (src, store, parallel) = (
                Arc::clone(&source),
                Arc::clone(&ctx.store),
                a.prefetch_concurrency,
            );
            tokio::spawn(async move {
                match store.get_profile(&root, &manifest_id).await {
                    Ok(bytes) => match Profile::decode(&bytes) {
                        Ok(p) if p.manifest == manifest_id => {
                            let n = src.replay_profile(&p.chunks, parallel);
                            info!(chunks = n, "replaying start-up profile");
                        }
                        Ok(_) => warn!("start-up profile belongs to another manifest; ignored"),
                        Err(e) => warn!("start-up profile ignored: {e}"),
                    },
                    Err(e) if e.kind() == StoreErrorKind::NotFound => {
                        info!("no start-up profile recorded for this image");
                    }
                    Err(e) => warn!("start-up profile not fetched: {e}"),
                }
            });
        }
        let agent = Arc::new(Self {
            image,
            source,
            store: Arc::clone(&ctx.store),
            record: a
                .record_profile
                .then(|| (Instant::now(), a.profile_idle, a.profile_limit)),
            profile_saved: std::sync::atomic::AtomicBool::new(false),
            start_slot: std::sync::Mutex::new(start_slot),
            alarm,
        });
        // The start-up phase: it ends once the guest has read nothing new for --profile-idle,
        // or after --profile-limit. Then the profile is saved and the cold-start slot freed.
        let in_phase = agent.record.is_some()
            || agent
                .start_slot
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some();
        if in_phase {
            let this = Arc::clone(&agent);
            let (started, idle, limit) = (Instant::now(), a.profile_idle, a.profile_limit);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let src = &this.source;
                    let idle_done = src.chunks_read() > 0 && src.idle_for() >= idle;
                    if idle_done || started.elapsed() >= limit {
                        if let Err(e) = this.save_profile().await {
                            warn!("{e:#}");
                        }
                        if let Some(slot) = this
                            .start_slot
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .take()
                        {
                            info!(
                                slot = slot.index(),
                                "start-up phase over: cold-start slot freed"
                            );
                        }
                        return;
                    }
                }
            });
        }
        if let Some(addr) = &a.metrics_addr {
            spawn_metrics(
                addr,
                Arc::clone(agent.source.metrics()),
                agent.image.to_string(),
                agent.source.fetcher().l2().cloned(),
                Arc::clone(&agent.alarm),
            )
            .await?;
        }
        Ok(agent)
    }

    /// Stores the recorded profile (once).
    pub(crate) async fn save_profile(&self) -> Result<()> {
        if self.record.is_none()
            || self
                .profile_saved
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return Ok(());
        }
        let chunks = self.source.finish_recording();
        if chunks.is_empty() {
            warn!("the guest read no chunk while recording: no start-up profile stored");
            return Ok(());
        }
        let m = self.source.manifest();
        let profile = Profile {
            manifest: m.id(),
            chunks,
        };
        let n = profile.chunks.len();
        self.store
            .put_profile(
                self.source.root(),
                &m.id(),
                bytes::Bytes::from(profile.encode()),
            )
            .await
            .context("cannot store the start-up profile")?;
        info!(chunks = n, "start-up profile stored");
        eprintln!(
            "lazyblock: recorded a start-up profile of {n} chunks for {}",
            self.image
        );
        Ok(())
    }

    /// Saves a pending profile and prints the summary line.
    pub(crate) async fn finish(&self) {
        if let Err(e) = self.save_profile().await {
            warn!("{e:#}");
        }
        eprintln!(
            "lazyblock: {}: {}, guest read {} distinct chunks",
            self.image,
            self.source.metrics().summary(),
            self.source.chunks_read()
        );
        if let Some(l2) = self.source.fetcher().l2() {
            // Background fills still in flight would be lost with the process: give them a
            // bounded moment (each stripe write is bounded by the AZ request timeout).
            l2.wait_for_fills(Duration::from_secs(2)).await;
            eprintln!("lazyblock: {}: {}", self.image, l2_summary(l2.stats()));
        }
    }

    pub(crate) fn device(&self) -> Arc<SourceDevice> {
        Arc::new(SourceDevice(Arc::clone(&self.source)))
    }
}

/// Admission of a cold start (see `--max-cold-starts`): `Ok(None)` for a warm start or no
/// limit, the slot for an admitted cold start, a [`Retryable`] error when all slots are taken.
fn admit(
    manifest: &lazyblock_format::Manifest,
    fetcher: &ChunkFetcher,
    cache_dir: &std::path::Path,
    a: &AgentArgs,
    image: &ImageRef,
) -> Result<Option<StartSlot>> {
    if a.max_cold_starts == 0 {
        return Ok(None);
    }
    let warm = manifest
        .data_chunks()
        .next()
        .is_some_and(|(_, name)| fetcher.in_worker_cache(&name));
    if warm {
        return Ok(None);
    }
    match StartSlots::new(cache_dir, a.max_cold_starts).try_acquire() {
        Ok(Some(slot)) => {
            info!(slot = slot.index(), "cold start admitted");
            Ok(Some(slot))
        }
        Ok(None) => Err(Retryable(format!(
            "{image}: this worker already runs {} cold starts (--max-cold-starts); not adding origin load: retry later or on another worker",
            a.max_cold_starts
        ))
        .into()),
        Err(e) => {
            warn!("cold-start admission unavailable, admitting: {e}");
            Ok(None)
        }
    }
}

/// The exit status of a [`Retryable`] error.
pub(crate) const EXIT_RETRYABLE: u8 = 75;

/// An error the caller should retry later (exit status 75, `EX_TEMPFAIL`).
#[derive(Debug)]
pub(crate) struct Retryable(pub(crate) String);

impl std::fmt::Display for Retryable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Retryable {}

/// One line of AZ cache counters for the end of `serve` / `mount`.
fn l2_summary(s: &lazyblock_cache::L2Stats) -> String {
    let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    format!(
        "az cache hits {} (rebuilt {}), misses {}, corrupt {}, stripes missing {} failed {} late {} invalid {}, fills {} ({} dropped, {} stripe errors)",
        get(&s.hits),
        get(&s.rebuilds),
        get(&s.misses),
        get(&s.corrupt),
        get(&s.stripes_missing),
        get(&s.stripes_failed),
        get(&s.stripes_late),
        get(&s.stripes_invalid),
        get(&s.fills),
        get(&s.fills_dropped),
        get(&s.fill_stripe_errors),
    )
}

/// Serves `GET /metrics` in the Prometheus text format on `addr`.
async fn spawn_metrics(
    addr: &str,
    metrics: Arc<DeviceMetrics>,
    device: String,
    l2: Option<Arc<lazyblock_cache::L2Tier>>,
    alarm: Arc<lazyblock_gc::AlarmStats>,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    info!(addr = %addr, "metrics on http://{addr}/metrics");
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let metrics = Arc::clone(&metrics);
            let device = device.clone();
            let l2 = l2.clone();
            let alarm = Arc::clone(&alarm);
            tokio::spawn(async move {
                // Read the request head (it may arrive in pieces), at most 8 KiB, for 5 s.
                let mut buf = Vec::with_capacity(1024);
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    let mut piece = [0u8; 1024];
                    while buf.len() < 8192 && !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut piece).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&piece[..n]),
                        }
                    }
                })
                .await;
                let req = String::from_utf8_lossy(&buf);
                let (status, body) = if req.starts_with("GET /metrics") {
                    let mut body = render_prometheus(&[(device, &metrics)]);
                    if let Some(l2) = &l2 {
                        body.push_str(&render_l2_prometheus(l2.stats()));
                    }
                    body.push_str(&alarm.render_prometheus());
                    ("200 OK", body)
                } else {
                    ("404 Not Found", "try /metrics\n".to_owned())
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body.as_bytes()).await;
            });
        }
    });
    Ok(())
}

/// `lazyblock serve`.
#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    /// Image reference, name:tag
    image: String,
    /// Where to serve NBD: unix:<socket path> or tcp:<host>:<port>
    #[arg(long)]
    nbd: String,
    #[command(flatten)]
    agent: AgentArgs,
}

pub(crate) async fn cmd_serve(r: &Resolved, a: &ServeArgs) -> Result<()> {
    let addr: lazyblock_agent::nbd::NbdAddr = a.nbd.parse().map_err(|e| anyhow!("--nbd: {e}"))?;
    // The address first: a busy one is refused before the image is opened and any background
    // work (profile fetch) is started, so the refusal is the only thing printed.
    let listener = lazyblock_agent::nbd::NbdListener::bind(&addr).await?;
    let agent = Agent::start(r, &a.image, &a.agent).await?;
    let export = lazyblock_agent::nbd::NbdExport {
        name: agent.image.to_string(),
        description: format!("lazyblock {}", agent.image),
        device: agent.device(),
    };
    eprintln!(
        "lazyblock: serving {} ({} bytes{}) at {}",
        agent.image,
        export.device.size(),
        if export.device.read_only() {
            ", read-only"
        } else {
            ""
        },
        listener.local_addr().uri()
    );
    lazyblock_agent::nbd::serve(listener, export, async {
        crate::interrupted().await;
    })
    .await;
    agent.finish().await;
    Ok(())
}

/// `lazyblock mount`.
#[derive(Args, Debug)]
pub(crate) struct MountArgs {
    /// Image reference, name:tag
    image: String,
    /// Directory to mount the image's ext4 filesystem at (created if missing)
    dir: PathBuf,
    /// Stay in the foreground and serve until unmounted (default: start a background agent
    /// and return once mounted)
    #[arg(long)]
    foreground: bool,
    #[command(flatten)]
    agent: AgentArgs,
}

/// `/run/lazyblock/mounts/<hash of the directory>`: the FUSE mount point, agent pid and log.
fn mount_state_dir(dir: &Path) -> PathBuf {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        dir.as_os_str().as_encoded_bytes(),
    );
    let base = std::env::var_os("LAZYBLOCK_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/lazyblock"));
    base.join("mounts").join(hex_prefix(digest.as_ref()))
}

fn hex_prefix(b: &[u8]) -> String {
    b.iter().take(8).map(|x| format!("{x:02x}")).collect()
}

fn is_mountpoint(dir: &Path) -> bool {
    lazyblock_agent::loopdev::mounts()
        .map(|all| all.iter().any(|m| m.mountpoint == dir))
        .unwrap_or(false)
}

pub(crate) async fn cmd_mount(r: &Resolved, a: &MountArgs, argv: &[String]) -> Result<()> {
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create mount directory {}", a.dir.display()))?;
    let dir = a
        .dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", a.dir.display()))?;
    if is_mountpoint(&dir) {
        bail!("{} is already a mount point", dir.display());
    }
    let state = mount_state_dir(&dir);
    if a.foreground {
        return mount_foreground(r, a, &dir, &state).await;
    }
    // Background agent: this binary with the same arguments plus --foreground, detached from
    // the terminal's process group, logging to the state directory.
    std::fs::create_dir_all(&state)
        .with_context(|| format!("cannot create {}", state.display()))?;
    let log_path = state.join("agent.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&argv[1..])
        .arg("--foreground")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().context("cannot start the background agent")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if is_mountpoint(&dir) {
            eprintln!(
                "lazyblock: mounted {} at {} (agent pid {}, log {})",
                a.image,
                dir.display(),
                child.id(),
                log_path.display()
            );
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last = text
                .lines()
                .rev()
                .find(|l| l.starts_with("error:"))
                .or_else(|| text.lines().last())
                .unwrap_or("no output");
            let message = format!(
                "the agent exited ({status}) before {} was mounted: {}",
                dir.display(),
                last.trim_start_matches("error: ")
            );
            if status.code() == Some(EXIT_RETRYABLE.into()) {
                return Err(Retryable(message).into());
            }
            bail!(message);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("{} was not mounted within 120 s", dir.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn mount_foreground(r: &Resolved, a: &MountArgs, dir: &Path, state: &Path) -> Result<()> {
    let agent = Agent::start(r, &a.image, &a.agent).await?;
    let fuse_dir = state.join("fuse");
    std::fs::create_dir_all(&fuse_dir)
        .with_context(|| format!("cannot create {}", fuse_dir.display()))?;
    std::fs::write(state.join("agent.pid"), std::process::id().to_string())?;
    let read_only = agent.source.overlay().is_none();
    let mut fuse = lazyblock_agent::fuse::mount_device(
        agent.device(),
        &fuse_dir,
        "image",
        tokio::runtime::Handle::current(),
    )?;
    let file = fuse.file_path().to_path_buf();
    let stacked = tokio::task::spawn_blocking({
        let dir = dir.to_path_buf();
        move || -> Result<lazyblock_agent::loopdev::LoopDevice> {
            let dev = lazyblock_agent::loopdev::attach_with(&file, read_only, true)?;
            if let Err(e) = lazyblock_agent::loopdev::mount_ext4(dev.path(), &dir, read_only) {
                let _ = dev.detach();
                return Err(e.into());
            }
            Ok(dev)
        }
    })
    .await?;
    let dev = match stacked {
        Ok(dev) => dev,
        Err(e) => {
            let _ = fuse.unmount();
            return Err(e);
        }
    };
    info!(dir = %dir.display(), loop_device = %dev.path().display(), "mounted");
    // Serve until someone unmounts the FUSE file system (lazyblock umount) or a signal.
    let unmounter = fuse.unmounter();
    let waiter = tokio::task::spawn_blocking(move || fuse.wait());
    tokio::select! {
        _ = waiter => {}
        _ = crate::interrupted() => {
            warn!("signal: tearing down {}", dir.display());
            let dir = dir.to_path_buf();
            let _ = tokio::task::spawn_blocking(move || teardown(&dir)).await;
            let _ = unmounter.unmount();
        }
    }
    agent.finish().await;
    let _ = std::fs::remove_file(state.join("agent.pid"));
    Ok(())
}

fn teardown(dir: &Path) -> Result<()> {
    match lazyblock_agent::loopdev::find_stack(dir)? {
        Some(stack) => {
            stack.teardown()?;
            Ok(())
        }
        None => bail!("{} is not mounted by lazyblock", dir.display()),
    }
}

/// Whether `pid` runs (a zombie nobody reaped counts as gone).
fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// `lazyblock umount`.
#[derive(Args, Debug)]
pub(crate) struct UmountArgs {
    /// The directory given to `lazyblock mount`
    dir: PathBuf,
}

pub(crate) async fn cmd_umount(a: &UmountArgs) -> Result<()> {
    let dir = a
        .dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", a.dir.display()))?;
    let state = mount_state_dir(&dir);
    let pid: Option<i32> = std::fs::read_to_string(state.join("agent.pid"))
        .ok()
        .and_then(|t| t.trim().parse().ok());
    let d2 = dir.clone();
    tokio::task::spawn_blocking(move || teardown(&d2)).await??;
    // Wait for the agent to save its profile and print its summary.
    if let Some(pid) = pid {
        let deadline = Instant::now() + Duration::from_secs(60);
        while process_alive(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Ok(log) = std::fs::read_to_string(state.join("agent.log")) {
            // The agent's own report lines: a recorded profile, the summary.
            for line in log.lines().filter(|l| l.starts_with("lazyblock: ")) {
                eprintln!("{line}");
            }
        }
    }
    eprintln!("lazyblock: unmounted {}", dir.display());
    Ok(())
}
