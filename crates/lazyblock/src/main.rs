//! `lazyblock`: the command line of lazyblock.
//!
//! Owns argument parsing (clap), settings resolution (flags > environment > config file >
//! defaults), logging, progress bars and exit codes. Everything it does is delegated to the
//! library crates; this is the only crate that uses `anyhow`, reads the environment or the clock.

mod agent;
mod bench;
mod gc;
mod l2;
mod settings;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use lazyblock_format::{ChunkSize, ImageRef, RootId, TenantId};
use lazyblock_image::{BuildOptions, Context, Progress};
use lazyblock_keys::LocalKeyring;
use lazyblock_store::{ChunkStore, ObjectChunkStore, StoreConfig, StoreLocation};

const LONG_ABOUT: &str = "\
lazyblock stores block images (e.g. ext4 root filesystems) as convergently encrypted, \
deduplicated 512 KiB chunks plus a sealed manifest, so they can later be served on demand.

With no configuration it uses a local store under ~/.local/share/lazyblock/store, keys under \
~/.config/lazyblock/keys and the tenant \"default\".

Settings, highest precedence first: flags, environment (LAZYBLOCK_STORE, LAZYBLOCK_TENANT, \
LAZYBLOCK_KEYS_DIR, LAZYBLOCK_CONFIG, LAZYBLOCK_ROOT_GROUP), the config file \
(~/.config/lazyblock/config.toml, keys: store, tenant, keys_dir, chunk_size, upload_concurrency, \
fetch_concurrency, root_group, [l2], [gc]), defaults.

Published images (the catalog) are what garbage collection keeps: `lazyblock rm` unpublishes, \
`lazyblock gc run` reclaims whole roots (docs/gc.md).
S3 stores (s3://bucket/prefix) are configured the usual way: AWS_ENDPOINT_URL, \
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP.";

#[derive(Parser, Debug)]
#[command(name = "lazyblock", version, about = "Build, serve on demand and garbage-collect block images in a deduplicating, encrypted chunk store", long_about = LONG_ABOUT)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct GlobalArgs {
    /// Origin store: file:///abs/path, /abs/path or s3://bucket/prefix [default: file://~/.local/share/lazyblock/store]
    #[arg(long, global = true, env = "LAZYBLOCK_STORE")]
    store: Option<String>,
    /// Tenant acting [default: default]
    #[arg(long, global = true, env = "LAZYBLOCK_TENANT")]
    tenant: Option<String>,
    /// Directory of the local keyring (one key per tenant, mode 0600) [default: ~/.config/lazyblock/keys]
    #[arg(long, global = true, env = "LAZYBLOCK_KEYS_DIR")]
    keys_dir: Option<PathBuf>,
    /// Config file (TOML) [default: ~/.config/lazyblock/config.toml if present]
    #[arg(long, global = true, env = "LAZYBLOCK_CONFIG")]
    config: Option<PathBuf>,
    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(flatten)]
    l2: l2::L2Args,
    /// Root group new builds write into: its newest active root (docs/gc.md) [default: default]
    #[arg(
        long,
        global = true,
        env = "LAZYBLOCK_ROOT_GROUP",
        help_heading = "Garbage collection"
    )]
    root_group: Option<String>,
    /// How long a reader trusts a root's state before reading it again; a read from an expired
    /// root raises the alarm at most this late [default: 30s]
    #[arg(long, global = true, env = "LAZYBLOCK_ROOT_CHECK_INTERVAL", value_parser = settings::parse_duration, help_heading = "Garbage collection")]
    root_check_interval: Option<std::time::Duration>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Chunk, encrypt and upload an image, then publish it in the tenant's catalog
    Build(BuildArgs),
    /// Describe a published image (no key needed)
    Inspect(InspectArgs),
    /// Write the exact bytes of a published image to a file (zero chunks become holes)
    Export(ExportArgs),
    /// Fetch and check every chunk of a published image; exit 1 and list the bad ones if any
    Verify(VerifyArgs),
    /// List the tenant's catalog (the published images: what garbage collection keeps)
    Images(ImagesArgs),
    /// Unpublish an image from the tenant's catalog; its data is reclaimed by `gc`
    Rm(gc::RmArgs),
    /// List the GC roots: state, manifests, chunks, bytes stored and bytes live
    Roots(gc::RootsArgs),
    /// Garbage collection of whole roots: rotate, migrate, expire, delete (docs/gc.md)
    #[command(subcommand)]
    Gc(gc::GcCommand),
    /// Serve a published image on demand as an NBD block device (foreground, until SIGINT/SIGTERM)
    Serve(agent::ServeArgs),
    /// Serve a published image through FUSE and loop-mount its ext4 filesystem at a directory
    /// (starts a background agent)
    Mount(agent::MountArgs),
    /// Unmount a directory mounted by `lazyblock mount` and stop its agent
    Umount(agent::UmountArgs),
    /// End-to-end benchmarks
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(Args, Debug)]
struct BuildArgs {
    /// Source: raw:<file> (a disk image file or block device), oci:<layout dir>[:<tag>] or
    /// docker-archive:<file.tar>[:<tag>] (flattened into a deterministic ext4 image on the fly)
    source: String,
    /// Reference to publish, as name:tag
    #[arg(long)]
    name: String,
    /// Chunk size: a power of two from 64KiB to 4MiB [default: 512KiB]
    #[arg(long, value_parser = settings::parse_size)]
    chunk_size: Option<u64>,
    /// Chunk uploads in flight [default: 16]
    #[arg(long)]
    upload_concurrency: Option<usize>,
    /// Threads sealing chunks [default: one per CPU]
    #[arg(long)]
    seal_threads: Option<usize>,
    /// Directory for the layer spool of OCI sources (one layer at a time) [default: $TMPDIR]
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Print the build report as JSON on stdout
    #[arg(long)]
    json: bool,
    /// Also write every chunk of the image to the AZ cache tier (--l2), so the first cold start
    /// of the new image is served from it
    #[arg(long)]
    prime_l2: bool,
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// Image reference, name:tag
    image: String,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ExportArgs {
    /// Image reference, name:tag
    image: String,
    /// Output file (written under a temporary name and renamed when complete)
    #[arg(short, long)]
    output: PathBuf,
    /// Chunk fetches in flight [default: 16]
    #[arg(long)]
    concurrency: Option<usize>,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// Image reference, name:tag
    image: String,
    /// Chunk fetches in flight [default: 16]
    #[arg(long)]
    concurrency: Option<usize>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ImagesArgs {
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// Everything resolved from flags, environment, config file and defaults.
pub(crate) struct Resolved {
    pub(crate) store_url: String,
    pub(crate) tenant: TenantId,
    pub(crate) keys_dir: PathBuf,
    pub(crate) chunk_size: ChunkSize,
    pub(crate) upload_concurrency: usize,
    pub(crate) fetch_concurrency: usize,
    /// The AZ cache tier, if configured.
    pub(crate) l2: Option<lazyblock_cache::L2Config>,
    /// The root group builds write into.
    pub(crate) root_group: RootId,
    /// GC ages and the readers' root-state check.
    pub(crate) gc: gc::GcSettings,
}

fn resolve(global: &GlobalArgs) -> Result<Resolved> {
    let file = settings::load_file_config(global.config.as_deref())?;
    let store_url = global
        .store
        .clone()
        .or(file.store)
        .unwrap_or_else(|| format!("file://{}", settings::data_dir().join("store").display()));
    let tenant_text = global
        .tenant
        .clone()
        .or(file.tenant)
        .unwrap_or_else(|| "default".into());
    let tenant = TenantId::new(&tenant_text)?;
    let keys_dir = global
        .keys_dir
        .clone()
        .or(file.keys_dir)
        .unwrap_or_else(|| settings::config_dir().join("keys"));
    let chunk_size = ChunkSize::new(file.chunk_size.unwrap_or(ChunkSize::DEFAULT.bytes() as u64))
        .context("config file: chunk_size")?;
    let l2 = l2::resolve(&global.l2, file.l2.as_ref())?;
    let root_group = match global.root_group.clone().or(file.root_group) {
        Some(g) => RootId::new(&g).context("root group")?,
        None => lazyblock_gc::plan::default_group(),
    };
    Ok(Resolved {
        gc: gc::GcSettings::resolve(global.root_check_interval, file.gc.as_ref())?,
        root_group,
        l2,
        store_url,
        tenant,
        keys_dir,
        chunk_size,
        upload_concurrency: file.upload_concurrency.unwrap_or(16),
        fetch_concurrency: file.fetch_concurrency.unwrap_or(16),
    })
}

pub(crate) fn open_store(url: &str, create_if_missing: bool) -> Result<Arc<dyn ChunkStore>> {
    let mut config = StoreConfig::new(StoreLocation::parse(url)?);
    config.create_if_missing = create_if_missing;
    if matches!(config.location, StoreLocation::S3 { .. }) {
        config.s3_options = lazyblock_store::s3_options_from_vars(std::env::vars());
    }
    Ok(Arc::new(ObjectChunkStore::open(&config)?))
}

/// The context of a command: every read goes through the expiry alarm (docs/gc.md), whose
/// counters come back for metrics. `root` is the group's active root only for builds.
pub(crate) fn context(
    r: &Resolved,
    writes: bool,
) -> Result<(Context, Arc<lazyblock_gc::AlarmStats>)> {
    let alarm = lazyblock_gc::ExpiryAlarm::wrap(
        open_store(&r.store_url, writes)?,
        Arc::new(lazyblock_gc::SystemClock),
        r.gc.root_check_interval.as_secs(),
        format!(
            "{} pid {}",
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "unknown host".into()),
            std::process::id()
        ),
    );
    let stats = Arc::clone(alarm.hook().stats());
    Ok((
        Context {
            store: Arc::new(alarm),
            keys: Arc::new(LocalKeyring::new(&r.keys_dir)),
            tenant: r.tenant.clone(),
            root: RootId::initial(),
        },
        stats,
    ))
}

pub(crate) fn now_unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn system_random(buf: &mut [u8]) {
    aws_lc_rs::rand::fill(buf).expect("the system random generator failed");
}

/// A progress bar or spinner on stderr when it is a terminal; nothing otherwise. Cleared when
/// dropped.
struct Bar(ProgressBar);

impl Bar {
    fn on_terminal(make: impl FnOnce() -> ProgressBar) -> Self {
        Self(if std::io::stderr().is_terminal() {
            make()
        } else {
            ProgressBar::hidden()
        })
    }

    /// A byte progress bar (the total may be set later through [`Progress::set_total`]).
    fn new(total: u64, what: &str) -> Arc<Self> {
        Arc::new(Self::on_terminal(|| {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_message(what.to_owned());
            b
        }))
    }

    /// A spinner for work of unknown length.
    fn spinner(what: &str) -> Self {
        Self::on_terminal(|| {
            let b = ProgressBar::new_spinner();
            b.set_message(what.to_owned());
            b.enable_steady_tick(std::time::Duration::from_millis(120));
            b
        })
    }
}

impl Progress for Bar {
    fn set_total(&self, bytes: u64) {
        self.0.set_length(bytes);
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// An image source ready to stream into a build.
pub(crate) struct Source {
    pub(crate) reader: Box<dyn std::io::Read + Send>,
    pub(crate) size: u64,
    pub(crate) description: String,
    pub(crate) image_config: Vec<u8>,
}

/// Splits `<path>[:<tag>]`: a path that exists as given has no tag.
fn split_tag(rest: &str) -> (String, Option<String>) {
    if std::path::Path::new(rest).exists() {
        return (rest.to_owned(), None);
    }
    match rest.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') && !tag.is_empty() => {
            (path.to_owned(), Some(tag.to_owned()))
        }
        _ => (rest.to_owned(), None),
    }
}

/// Opens a source: `raw:<file>` (a regular file or block device), `oci:<layout dir>[:<tag>]`
/// or `docker-archive:<file.tar>[:<tag>]` (flattened into ext4 on the fly, no temporary image).
pub(crate) async fn open_source(
    spec: &str,
    chunk_size: ChunkSize,
    work_dir: Option<PathBuf>,
) -> Result<Source> {
    let (kind, rest) = spec.split_once(':').unwrap_or(("", spec));
    match kind {
        "raw" => {
            let (file, size, description) = open_raw_source(rest)?;
            Ok(Source {
                // Reads are whole chunks (≥ 64 KiB): no buffering layer, no extra copy.
                reader: Box::new(file),
                size,
                description,
                image_config: Vec::new(),
            })
        }
        "oci" | "docker-archive" => {
            if rest.is_empty() {
                bail!("source {spec:?} names no image: use {kind}:<path>[:<tag>]");
            }
            let (path, tag) = split_tag(rest);
            let path = PathBuf::from(path);
            let is_dir = path.is_dir();
            if kind == "oci" && !is_dir {
                bail!("source {spec:?}: {} is not an OCI layout directory", path.display());
            }
            if kind == "docker-archive" && !path.is_file() {
                bail!("source {spec:?}: {} is not a docker-archive file", path.display());
            }
            let spinner = Bar::spinner("flattening layers");
            let planning = std::time::Instant::now();
            let planned = tokio::task::spawn_blocking(move || -> Result<_> {
                let options = lazyblock_oci::OpenOptions {
                    tag: tag.clone(),
                    ..Default::default()
                };
                let image = lazyblock_oci::Image::open(&path, &options)?;
                let ext4 = lazyblock_oci::ext4_image(
                    &image,
                    &lazyblock_oci::Ext4Options {
                        chunk_size: chunk_size.bytes() as u64,
                        work_dir,
                        ..Default::default()
                    },
                )?;
                let abs = std::fs::canonicalize(&path).unwrap_or(path);
                let description = format!(
                    "{}:{}{} ({})",
                    if is_dir { "oci" } else { "docker-archive" },
                    abs.display(),
                    tag.map(|t| format!(":{t}")).unwrap_or_default(),
                    match &image.manifest_digest {
                        Some(d) => format!("manifest {d}"),
                        None => format!("config {}", image.config_digest),
                    }
                );
                Ok((ext4, description))
            })
            .await
            .map_err(|e| anyhow!("flattening task failed: {e}"))??;
            drop(spinner);
            let (ext4, description) = planned;
            tracing::info!(
                seconds = planning.elapsed().as_secs_f64(),
                image_bytes = ext4.size(),
                "layers verified and applied, ext4 layout planned"
            );
            let size = ext4.size();
            let image_config = ext4.config_json().to_vec();
            Ok(Source {
                reader: Box::new(ext4.into_reader()),
                size,
                description,
                image_config,
            })
        }
        _ => bail!(
            "source {spec:?} has no known type: use raw:<file>, oci:<layout dir>[:<tag>] or docker-archive:<file.tar>[:<tag>]"
        ),
    }
}

/// Opens a raw source path: a regular file or a block device, non-empty.
pub(crate) fn open_raw_source(path: &str) -> Result<(std::fs::File, u64, String)> {
    if path.is_empty() {
        bail!("source \"raw:\" names no file: use raw:<file>");
    }
    let file = std::fs::File::open(path).map_err(|e| anyhow!("cannot open source {path}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| anyhow!("cannot stat source {path}: {e}"))?;
    use std::os::unix::fs::FileTypeExt;
    let size = if meta.is_file() {
        meta.len()
    } else if meta.file_type().is_block_device() {
        use std::io::Seek;
        let mut f = &file;
        f.seek(std::io::SeekFrom::End(0))
            .map_err(|e| anyhow!("cannot size block device {path}: {e}"))?
    } else {
        bail!("source {path} is not a regular file or block device");
    };
    if size == 0 {
        bail!("source {path} is empty");
    }
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path));
    Ok((file, size, format!("raw:{}", abs.display())))
}

async fn cmd_build(r: &Resolved, args: &BuildArgs) -> Result<()> {
    let image = ImageRef::parse(&args.name)?;
    let chunk_size = match args.chunk_size {
        Some(n) => ChunkSize::new(n)?,
        None => r.chunk_size,
    };
    let (mut ctx, _) = context(r, true)?;
    ctx.store.check().await?;
    let source = open_source(&args.source, chunk_size, args.work_dir.clone()).await?;
    // The newest active root of the build's group (created on a fresh store, adopted on a
    // store written before GC existed), once the source is known good: bad input changes
    // nothing in the store.
    ctx.root = lazyblock_gc::Collector::new(
        Arc::clone(&ctx.store),
        Arc::new(lazyblock_gc::SystemClock),
        16,
    )
    .build_root(&r.root_group)
    .await?;
    let size = source.size;
    let mut opts = BuildOptions::new(image, source.description, now_unix_secs());
    opts.chunk_size = chunk_size;
    opts.upload_concurrency = args.upload_concurrency.unwrap_or(r.upload_concurrency);
    if let Some(n) = args.seal_threads {
        opts.seal_parallelism = n;
    }
    opts.image_config = source.image_config;
    let primer = if args.prime_l2 {
        let config = r.l2.clone().ok_or_else(|| {
            anyhow!("--prime-l2 needs the AZ cache nodes: --l2 host:port,... (or [l2] nodes in the config file)")
        })?;
        let primer = Arc::new(l2::Primer::new(l2::open(config)?));
        opts.chunk_sink = Some(Arc::clone(&primer) as Arc<dyn lazyblock_image::ChunkSink>);
        Some(primer)
    } else {
        None
    };
    let bar = Bar::new(size, "build");
    let report = lazyblock_image::build(
        &ctx,
        source.reader,
        size,
        &opts,
        bar.clone(),
        &system_random,
    )
    .await?;
    drop(bar);
    let secs = report.elapsed.as_secs_f64().max(1e-9);
    let mbps = report.bytes_in as f64 / secs / 1e6;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "image": report.image.to_string(),
                "tenant": ctx.tenant.to_string(),
                "root": report.root.to_string(),
                "manifest": report.manifest.to_string(),
                "bytes_in": report.bytes_in,
                "chunks_total": report.chunks_total,
                "chunks_zero": report.chunks_zero,
                "chunks_new": report.chunks_new,
                "chunks_dedup": report.chunks_dedup,
                "bytes_uploaded": report.bytes_uploaded,
                "manifest_bytes": report.manifest_bytes,
                "seconds": secs,
                "mb_per_s": mbps,
            })
        );
    } else {
        println!("{}", report.image);
    }
    eprintln!(
        "built {}: {} bytes in, {} chunks total / {} zero / {} new / {} deduplicated, {} bytes uploaded, manifest {} bytes, {:.2} s, {:.1} MB/s",
        report.image,
        report.bytes_in,
        report.chunks_total,
        report.chunks_zero,
        report.chunks_new,
        report.chunks_dedup,
        report.bytes_uploaded,
        report.manifest_bytes,
        secs,
        mbps
    );
    if let Some(p) = primer {
        eprintln!("{}", p.stats.line());
        let failed = p.stats.failed();
        if failed > 0 {
            tracing::warn!("the AZ cache did not take {failed} chunks: the image is built and published, and its cold starts read those chunks from the origin");
        }
    }
    Ok(())
}

async fn cmd_inspect(r: &Resolved, args: &InspectArgs) -> Result<()> {
    let image = ImageRef::parse(&args.image)?;
    let (ctx, _) = context(r, false)?;
    let info = lazyblock_image::inspect(&ctx, &image).await?;
    let h = &info.header;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "image": info.image.to_string(),
                "tenant": h.tenant.to_string(),
                "root": h.root.to_string(),
                "manifest": info.entry.manifest.to_string(),
                "image_size": h.image_size,
                "chunk_size": h.chunk_size.bytes(),
                "chunks_total": info.chunks_total,
                "chunks_zero": info.chunks_zero,
                "chunks_distinct": info.chunks_distinct,
                "manifest_bytes": info.manifest_bytes,
                "created_unix_secs": h.created_unix_secs,
                "source": h.source,
                "config": info.image_config.as_deref().filter(|c| !c.is_empty()).map(|c| {
                    serde_json::from_slice::<serde_json::Value>(c)
                        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(c).into_owned()))
                }),
            }))?
        );
    } else {
        println!("image:           {}", info.image);
        println!("tenant:          {}", h.tenant);
        println!("root:            {}", h.root);
        println!("manifest:        {}", info.entry.manifest);
        println!("image size:      {} bytes", h.image_size);
        println!("chunk size:      {} bytes", h.chunk_size.bytes());
        println!(
            "chunks:          {} total / {} zero / {} distinct",
            info.chunks_total, info.chunks_zero, info.chunks_distinct
        );
        println!("manifest bytes:  {}", info.manifest_bytes);
        println!("created:         {} (unix seconds)", h.created_unix_secs);
        println!("source:          {}", h.source);
        match info.image_config.as_deref() {
            Some([]) => {}
            Some(c) => println!("config:          {}", String::from_utf8_lossy(c)),
            None => println!(
                "config:          (sealed; the key of tenant {} is not here)",
                h.tenant
            ),
        }
    }
    Ok(())
}

async fn cmd_export(r: &Resolved, args: &ExportArgs) -> Result<()> {
    let image = ImageRef::parse(&args.image)?;
    if args.output.is_dir() {
        bail!("output {} is a directory", args.output.display());
    }
    let (ctx, _) = context(r, false)?;
    let bar = Bar::new(0, "export");
    let report = lazyblock_image::export(
        &ctx,
        &image,
        &args.output,
        args.concurrency.unwrap_or(r.fetch_concurrency),
        bar.clone(),
    )
    .await?;
    drop(bar);
    let secs = report.elapsed.as_secs_f64().max(1e-9);
    eprintln!(
        "exported {image} to {}: {} bytes, {} chunks fetched, {} zero chunks as holes, {:.2} s, {:.1} MB/s",
        args.output.display(),
        report.image_size,
        report.chunks_fetched,
        report.chunks_zero,
        secs,
        report.image_size as f64 / secs / 1e6
    );
    Ok(())
}

async fn cmd_verify(r: &Resolved, args: &VerifyArgs) -> Result<bool> {
    let image = ImageRef::parse(&args.image)?;
    let (ctx, _) = context(r, false)?;
    let bar = Bar::new(0, "verify");
    let report = lazyblock_image::verify(
        &ctx,
        &image,
        args.concurrency.unwrap_or(r.fetch_concurrency),
        bar.clone(),
    )
    .await?;
    drop(bar);
    if args.json {
        let bad: Vec<_> = report
            .bad
            .iter()
            .map(|b| serde_json::json!({"name": b.name.to_string(), "indexes": b.indexes, "reason": b.reason}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"image": image.to_string(), "chunks_checked": report.chunks_checked, "bad": bad})
        );
    } else {
        for b in &report.bad {
            println!(
                "bad chunk {} at index {}: {}",
                b.name,
                b.indexes
                    .iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                b.reason
            );
        }
    }
    if report.bad.is_empty() {
        eprintln!(
            "verified {image}: {} distinct chunks, all good ({:.2} s)",
            report.chunks_checked,
            report.elapsed.as_secs_f64()
        );
        Ok(true)
    } else {
        eprintln!(
            "error: {image}: {} of {} distinct chunks are bad",
            report.bad.len(),
            report.chunks_checked
        );
        Ok(false)
    }
}

async fn cmd_images(r: &Resolved, args: &ImagesArgs) -> Result<()> {
    let (ctx, _) = context(r, false)?;
    let images = lazyblock_image::list_images(&ctx).await?;
    if args.json {
        let list: Vec<_> = images
            .iter()
            .map(|(i, e)| serde_json::json!({"image": i.to_string(), "root": e.root.to_string(), "manifest": e.manifest.to_string(), "image_size": e.image_size, "created_unix_secs": e.created_unix_secs}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        for (image, e) in &images {
            println!(
                "{image}\t{} bytes\troot {}\tmanifest {}",
                e.image_size,
                e.root,
                e.manifest.short()
            );
        }
        if images.is_empty() {
            eprintln!("tenant {} has no images in {}", ctx.tenant, ctx.store.url());
        }
    }
    Ok(())
}

fn init_logging(verbose: u8) {
    // fuser warns when its own unmount on drop finds the mount already gone, which is how
    // every FUSE mount of ours ends (umount tears it down first): keep it to errors.
    let default = match verbose {
        0 => "warn,fuser=error",
        1 => "info,fuser=error",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

async fn run(cli: Cli) -> Result<bool> {
    let r = resolve(&cli.global)?;
    match &cli.command {
        Command::Build(a) => cmd_build(&r, a).await.map(|()| true),
        Command::Inspect(a) => cmd_inspect(&r, a).await.map(|()| true),
        Command::Export(a) => cmd_export(&r, a).await.map(|()| true),
        Command::Verify(a) => cmd_verify(&r, a).await,
        Command::Images(a) => cmd_images(&r, a).await.map(|()| true),
        Command::Rm(a) => gc::cmd_rm(&r, a).await.map(|()| true),
        Command::Roots(a) => gc::cmd_roots(&r, a).await.map(|()| true),
        Command::Gc(c) => gc::cmd_gc(&r, c).await,
        Command::Serve(a) => agent::cmd_serve(&r, a).await.map(|()| true),
        Command::Mount(a) => {
            let argv: Vec<String> = std::env::args().collect();
            agent::cmd_mount(&r, a, &argv).await.map(|()| true)
        }
        Command::Umount(a) => agent::cmd_umount(a).await.map(|()| true),
        Command::Bench(b) => bench::run(&r, b).await.map(|()| true),
    }
}

/// Waits for SIGINT or SIGTERM; returns the exit status that reports it (130 or 143).
async fn interrupted() -> u8 {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // No signal handling available: never report an interruption.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => 130,
        _ = term.recv() => 143,
    }
}

fn main() -> std::process::ExitCode {
    use std::process::ExitCode;
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // Usage errors: one line, exit status 2.
            // clap lists missing arguments on the lines after the first: keep them.
            let text = e.render().to_string();
            let head: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let first = if head.is_empty() {
                "invalid arguments".to_owned()
            } else {
                head.join(" ")
            };
            let first = first.strip_prefix("error: ").unwrap_or(&first);
            eprintln!("error: {first} (see --help)");
            return ExitCode::from(2);
        }
    };
    init_logging(cli.global.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On SIGINT/SIGTERM the command's future is dropped, which runs its clean-up (an export
    // removes its partial output), then the process exits with 128 + signal. Agents handle
    // the signals themselves: they stop serving, save their profile and print a summary.
    let handles_signals = matches!(cli.command, Command::Serve(_) | Command::Mount(_));
    let outcome = runtime.block_on(async {
        if handles_signals {
            return Ok(run(cli).await);
        }
        tokio::select! {
            r = run(cli) => Ok(r),
            code = interrupted() => Err(code),
        }
    });
    match outcome {
        Err(code) => {
            eprintln!("error: interrupted");
            ExitCode::from(code)
        }
        Ok(Ok(true)) => ExitCode::SUCCESS,
        Ok(Ok(false)) => ExitCode::FAILURE,
        Ok(Err(e)) => {
            // One line: the error and its causes.
            let mut line = e.to_string();
            for cause in e.chain().skip(1) {
                line.push_str(": ");
                line.push_str(&cause.to_string());
            }
            eprintln!("error: {}", line.replace('\n', " "));
            if e.downcast_ref::<agent::Retryable>().is_some() {
                return ExitCode::from(agent::EXIT_RETRYABLE);
            }
            ExitCode::FAILURE
        }
    }
}
