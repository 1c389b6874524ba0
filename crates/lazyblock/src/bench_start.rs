//! `lazyblock bench start`: container start time from on-demand images, against a full pull
//! and a local file measured in the same run.
//!
//! For each workload (an image of the corpus and a command), in one run:
//! - (d) the raw image as a local file, loop-mounted: the floor;
//! - (c) full pull: fetch every chunk from the origin into a local file, then mount and run;
//! - cold, no read-ahead: lazyblock with an empty worker cache, read-ahead off (shows it fetches
//!   only what the guest reads);
//! - (a) cold: empty worker cache, read-ahead on, no profile; this run records the profile;
//! - (a') cold + profile: empty worker cache, the recorded profile replayed;
//! - (b) warm: the worker cache's disk tier hot from the run before, a fresh agent.
//! - L1 cold, L2 warm (with and without the profile): an empty worker cache in front of an AZ
//!   cache tier that holds every chunk of the image (primed by the build, as
//!   `lazyblock build --prime-l2` does). The AZ tier is `--l2` if given, else `--l2-nodes`
//!   memcached processes this benchmark starts on loopback. Only these scenarios use it.
//!
//! Every lazyblock scenario also reports the share of chunk lookups each tier answered.
//!
//! Every lazyblock run is a fresh agent in this process: the image is opened (catalog and
//! manifest from the origin), served as a file through FUSE, loop-mounted read-only, and the
//! command runs in a chroot of the mount. The origin is the store given by `--origin` (an
//! S3-compatible server) or a fresh local store, with `--latency` added to every read request.
//! The time of a run is from opening the image (or starting the pull) to the command's exit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use lazyblock_agent::fetch::{ChunkFetcher, FetcherConfig};
use lazyblock_agent::loopdev;
use lazyblock_agent::metrics::{human_bytes, Histogram, Tier};
use lazyblock_agent::source::{BlockSource, SourceConfig, SourceDevice};
use lazyblock_cache::l2::{FleetOptions, LocalFleet};
use lazyblock_cache::{L2Config, L2Tier};
use lazyblock_format::{ImageRef, Profile, TenantId};
use lazyblock_image::{open_image, BuildOptions, Context, NoProgress};
use lazyblock_keys::{KeyAccess, LocalKeyring};
use lazyblock_store::{ChunkStore, DelayedStore};

use crate::settings::parse_duration;

#[derive(Args, Debug, Clone)]
pub(crate) struct BenchStartArgs {
    /// Corpus directory made by scripts/make-corpus.sh (it holds the OCI layout `oci/`)
    #[arg(long, default_value = "/var/tmp/lazyblock-corpus")]
    corpus: PathBuf,
    /// Workloads to run, comma separated: numpy (`python3 -c 'import numpy'`), node
    /// (`node -e 1`), flask (the flask app's import)
    #[arg(long, default_value = "numpy,node,flask", value_delimiter = ',')]
    workloads: Vec<String>,
    /// Latency added to every origin read request
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    latency: Duration,
    /// Origin store URL, e.g. s3://bucket/prefix on an S3-compatible server (AWS_* variables
    /// configure it) [default: a fresh local store in the work directory]
    #[arg(long)]
    origin: Option<String>,
    /// Repetitions of each scenario; the median is reported
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Origin fetches in flight, for lazyblock's demand fetches and for the full pull
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Chunks prefetched after a chunk's first read (neighbour prefetch; 0 turns it off)
    #[arg(long, default_value_t = SourceConfig::default().neighbor_chunks)]
    neighbors: u64,
    /// Longest sequential read-ahead window in chunks (0 turns sequential read-ahead off)
    #[arg(long, default_value_t = SourceConfig::default().readahead_max_chunks)]
    readahead_max: u64,
    /// Where to write the eCDF plot of read latency per tier (SVG)
    #[arg(long, default_value = "bench-start-ecdf.svg")]
    plot: PathBuf,
    /// Work directory [default: a fresh temporary directory under /var/tmp, removed after]
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the results as JSON on stdout
    #[arg(long)]
    json: bool,
    /// memcached nodes to start on loopback for the "L1 cold, L2 warm" scenarios when no --l2
    /// is given (0 skips those scenarios)
    #[arg(long, default_value_t = 5)]
    l2_nodes: usize,
}

struct Workload {
    key: &'static str,
    tag: &'static str,
    command: &'static str,
}

const WORKLOADS: [Workload; 3] = [
    Workload {
        key: "numpy",
        tag: "python3-numpy-pandas",
        command: "python3 -c 'import numpy'",
    },
    Workload {
        key: "node",
        tag: "nodejs",
        command: "node -e 1",
    },
    Workload {
        key: "flask",
        tag: "python3-numpy-pandas-flaskapp",
        command: "cd /app && python3 -c 'import app; print(app.index())'",
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Raw,
    FullPull,
    ColdNoReadahead,
    Cold,
    ColdProfile,
    Warm,
    WarmNewProcess,
    L2Warm,
    L2WarmProfile,
}

impl Scenario {
    const ALL: [Scenario; 9] = [
        Scenario::Raw,
        Scenario::FullPull,
        Scenario::ColdNoReadahead,
        Scenario::Cold,
        Scenario::ColdProfile,
        Scenario::Warm,
        Scenario::WarmNewProcess,
        Scenario::L2Warm,
        Scenario::L2WarmProfile,
    ];

    fn label(self) -> &'static str {
        match self {
            Scenario::Raw => "(d) local file",
            Scenario::FullPull => "(c) full pull",
            Scenario::ColdNoReadahead => "cold, no read-ahead",
            Scenario::Cold => "(a) cold",
            Scenario::ColdProfile => "(a) cold + profile",
            Scenario::Warm => "(b) warm",
            Scenario::WarmNewProcess => "warm, new agent",
            Scenario::L2Warm => "L1 cold, L2 warm",
            Scenario::L2WarmProfile => "L1 cold, L2 warm + prof",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Scenario::Raw => "raw",
            Scenario::FullPull => "full_pull",
            Scenario::ColdNoReadahead => "cold_no_readahead",
            Scenario::Cold => "cold",
            Scenario::ColdProfile => "cold_profile",
            Scenario::Warm => "warm",
            Scenario::WarmNewProcess => "warm_new_agent",
            Scenario::L2Warm => "l1_cold_l2_warm",
            Scenario::L2WarmProfile => "l1_cold_l2_warm_profile",
        }
    }
}

#[derive(Debug, Clone, Default)]
struct RunResult {
    seconds: f64,
    origin_chunks: u64,
    origin_bytes: u64,
    guest_chunks: u64,
    prefetched: u64,
    l2_chunks: u64,
    tier_hits: [u64; 5],
}

/// Latency histograms merged over every lazyblock run, by tier.
#[derive(Default)]
struct Latencies {
    tiers: [Histogram; 5],
}

struct Bench {
    args: BenchStartArgs,
    work: PathBuf,
    ctx: Context,
    slow_store: Arc<dyn ChunkStore>,
    latencies: Latencies,
    /// The agent's fetcher (its worker cache) of the last lazyblock run.
    fetcher: Option<Arc<ChunkFetcher>>,
    /// The AZ cache tier of the L2 scenarios.
    l2: Option<Arc<L2Tier>>,
}

pub(crate) async fn run(args: BenchStartArgs, l2: Option<L2Config>) -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("bench start needs root: it mounts FUSE and loop devices");
    }
    let oci = args.corpus.join("oci");
    if !oci.join("index.json").exists() {
        bail!(
            "{} is not a corpus: build one with `sudo scripts/make-corpus.sh {}`",
            args.corpus.display(),
            args.corpus.display()
        );
    }
    let workloads: Vec<&Workload> = args
        .workloads
        .iter()
        .map(|k| {
            WORKLOADS
                .iter()
                .find(|w| w.key == k.as_str())
                .with_context(|| format!("unknown workload {k:?}: use numpy, node or flask"))
        })
        .collect::<Result<_>>()?;
    let (work, _guard) = crate::bench::work_dir(args.dir.as_deref(), "lazyblock-bench-start-")?;
    let store_url = args
        .origin
        .clone()
        .unwrap_or_else(|| format!("file://{}", work.join("store").display()));
    let store = crate::open_store(&store_url, true)?;
    store.check().await?;
    let ctx = Context {
        store: Arc::clone(&store),
        keys: Arc::new(LocalKeyring::new(work.join("keys"))),
        tenant: TenantId::new("bench")?,
        root: lazyblock_format::RootId::initial(),
    };
    let slow_store: Arc<dyn ChunkStore> = Arc::new(DelayedStore::new(store, args.latency));
    let (l2, _fleet) = match l2 {
        Some(config) => (Some(crate::l2::open(config)?), None),
        None if args.l2_nodes == 0 => (None, None),
        None => {
            let fleet = LocalFleet::start(
                args.l2_nodes,
                FleetOptions {
                    mem_mib: 768,
                    ..FleetOptions::default()
                },
            )
            .context(
                "cannot start the AZ cache nodes (or pass --l2-nodes 0 to skip the L2 scenarios)",
            )?;
            let config = L2Config {
                nodes: fleet.addrs(),
                ..L2Config::default()
            };
            (Some(crate::l2::open(config)?), Some(fleet))
        }
    };
    let mut bench = Bench {
        l2,
        args,
        work,
        ctx,
        slow_store,
        latencies: Latencies::default(),
        fetcher: None,
    };
    eprintln!(
        "bench start: origin {} with {:?} per read request, {} fetches in flight, {} run(s) per scenario",
        store_url, bench.args.latency, bench.args.concurrency, bench.args.runs
    );
    let mut all = Vec::new();
    for w in workloads {
        let results = bench.workload(w).await?;
        all.push((w, results));
    }
    bench.report(&all)?;
    Ok(())
}

fn median(mut v: Vec<RunResult>) -> RunResult {
    v.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    v.get(v.len() / 2).cloned().unwrap_or_default()
}

impl Bench {
    fn image_ref(&self, w: &Workload) -> Result<ImageRef> {
        Ok(ImageRef::parse(&format!("{}:bench", w.tag))?)
    }

    fn slow_ctx(&self) -> Context {
        Context {
            store: Arc::clone(&self.slow_store),
            ..self.ctx.clone()
        }
    }

    async fn workload(&mut self, w: &Workload) -> Result<Vec<(Scenario, RunResult)>> {
        let image = self.image_ref(w)?;
        // Build the image from the corpus (not timed).
        let spec = format!("oci:{}:{}", self.args.corpus.join("oci").display(), w.tag);
        let chunk_size = lazyblock_format::ChunkSize::DEFAULT;
        let source = crate::open_source(&spec, chunk_size, Some(self.work.clone())).await?;
        let mut opts = BuildOptions::new(image.clone(), source.description, crate::now_unix_secs());
        opts.image_config = source.image_config;
        let primer = self
            .l2
            .as_ref()
            .map(|t| Arc::new(crate::l2::Primer::new(Arc::clone(t))));
        if let Some(p) = &primer {
            opts.chunk_sink = Some(Arc::clone(p) as Arc<dyn lazyblock_image::ChunkSink>);
        }
        let t = Instant::now();
        let report = lazyblock_image::build(
            &self.ctx,
            source.reader,
            source.size,
            &opts,
            Arc::new(NoProgress),
            &crate::system_random,
        )
        .await?;
        eprintln!(
            "bench start: {}: built {image} ({} MiB, {} chunks, {} zero) in {:.1} s",
            w.key,
            report.bytes_in >> 20,
            report.chunks_total,
            report.chunks_zero,
            t.elapsed().as_secs_f64()
        );
        if let Some(p) = &primer {
            eprintln!("bench start: {}: {}", w.key, p.stats.line());
        }
        let raw = self.work.join(format!("{}.raw", w.key));
        lazyblock_image::export(&self.ctx, &image, &raw, 16, Arc::new(NoProgress)).await?;
        let mut results = Vec::new();
        for scenario in Scenario::ALL {
            if matches!(scenario, Scenario::L2Warm | Scenario::L2WarmProfile) && self.l2.is_none() {
                continue;
            }
            let mut runs = Vec::new();
            for run in 0..self.args.runs.max(1) {
                let r = self.run_one(w, &image, &raw, scenario, run).await?;
                eprintln!(
                    "bench start: {:<6} {:<23} {:>7.3} s  origin {:>4} chunks {:>10}  az {:>4} chunks  guest read {:>4} chunks",
                    w.key,
                    scenario.label(),
                    r.seconds,
                    r.origin_chunks,
                    human_bytes(r.origin_bytes),
                    r.l2_chunks,
                    r.guest_chunks
                );
                runs.push(r);
            }
            results.push((scenario, median(runs)));
        }
        let _ = std::fs::remove_file(&raw);
        Ok(results)
    }

    async fn run_one(
        &mut self,
        w: &Workload,
        image: &ImageRef,
        raw: &Path,
        scenario: Scenario,
        run: usize,
    ) -> Result<RunResult> {
        let mnt = self.work.join("mnt");
        std::fs::create_dir_all(&mnt)?;
        let cache = self.work.join(format!("cache-{}-{run}", w.key));
        match scenario {
            Scenario::Raw => {
                let t = Instant::now();
                let stack = mount_file(raw, &mnt, false).await?;
                let outcome = run_command(&mnt, w.command).await;
                let seconds = t.elapsed().as_secs_f64();
                stack.teardown().await?;
                outcome?;
                Ok(RunResult {
                    seconds,
                    ..RunResult::default()
                })
            }
            Scenario::FullPull => {
                let file = self.work.join(format!("{}.pulled", w.key));
                let t = Instant::now();
                let report = lazyblock_image::export(
                    &self.slow_ctx(),
                    image,
                    &file,
                    self.args.concurrency,
                    Arc::new(NoProgress),
                )
                .await?;
                let stack = mount_file(&file, &mnt, false).await?;
                let outcome = run_command(&mnt, w.command).await;
                let seconds = t.elapsed().as_secs_f64();
                stack.teardown().await?;
                let _ = std::fs::remove_file(&file);
                outcome?;
                Ok(RunResult {
                    seconds,
                    origin_chunks: report.chunks_fetched,
                    origin_bytes: report.bytes_fetched,
                    ..RunResult::default()
                })
            }
            Scenario::ColdNoReadahead
            | Scenario::Cold
            | Scenario::ColdProfile
            | Scenario::Warm
            | Scenario::WarmNewProcess
            | Scenario::L2Warm
            | Scenario::L2WarmProfile => {
                let warm = matches!(scenario, Scenario::Warm | Scenario::WarmNewProcess);
                if !warm {
                    // Cold: an empty worker cache. Warm reuses the one the run before filled:
                    // (b) in the same agent process (memory and disk tiers hot, as for the next
                    // start of an image on a worker), then in a fresh agent (disk tier only).
                    let _ = std::fs::remove_dir_all(&cache);
                    self.fetcher = None;
                }
                if scenario == Scenario::WarmNewProcess {
                    self.fetcher = None;
                }
                let lazy = LazyRun {
                    readahead: scenario != Scenario::ColdNoReadahead && self.args.readahead_max > 0,
                    neighbors: if scenario == Scenario::ColdNoReadahead {
                        0
                    } else {
                        self.args.neighbors
                    },
                    record: scenario == Scenario::Cold,
                    replay: matches!(scenario, Scenario::ColdProfile | Scenario::L2WarmProfile)
                        || warm,
                    l2: matches!(scenario, Scenario::L2Warm | Scenario::L2WarmProfile),
                };
                self.run_lazy(w, image, &cache, &mnt, lazy).await
            }
        }
    }

    async fn run_lazy(
        &mut self,
        w: &Workload,
        image: &ImageRef,
        cache: &Path,
        mnt: &Path,
        lazy: LazyRun,
    ) -> Result<RunResult> {
        let ctx = self.slow_ctx();
        let t = Instant::now();
        let opened = open_image(&ctx, image).await?;
        let key = ctx.keys.tenant_key(&ctx.tenant, KeyAccess::Existing)?;
        let keys = opened.manifest.open_keys(&key)?;
        let root = opened.entry.root.clone();
        let manifest_id = opened.manifest.id();
        let fetcher = match &self.fetcher {
            Some(f) => Arc::clone(f),
            None => Arc::new(ChunkFetcher::new(
                Arc::clone(&ctx.store),
                FetcherConfig {
                    disk: Some((cache.to_path_buf(), 10 << 30)),
                    demand_fetches: self.args.concurrency.max(1),
                    l2: if lazy.l2 { self.l2.clone() } else { None },
                    ..FetcherConfig::default()
                },
            )),
        };
        self.fetcher = Some(Arc::clone(&fetcher));
        let source = Arc::new(BlockSource::new(
            opened.manifest,
            keys,
            root.clone(),
            fetcher,
            SourceConfig {
                read_only: true,
                readahead: lazy.readahead,
                readahead_max_chunks: self.args.readahead_max.max(1),
                neighbor_chunks: lazy.neighbors,
                record_profile: lazy.record,
                ..SourceConfig::default()
            },
        )?);
        if lazy.replay {
            // In the background, as the agent does: the profile GET must not delay the start.
            let src = Arc::clone(&source);
            let store = Arc::clone(&ctx.store);
            tokio::spawn(async move {
                if let Ok(bytes) = store.get_profile(&root, &manifest_id).await {
                    if let Ok(p) = Profile::decode(&bytes) {
                        if p.manifest == manifest_id {
                            src.replay_profile(&p.chunks, 32);
                        }
                    }
                }
            });
        }
        let t_open = t.elapsed();
        let fuse_dir = self.work.join("fuse");
        std::fs::create_dir_all(&fuse_dir)?;
        let device = Arc::new(SourceDevice(Arc::clone(&source)));
        let fuse = lazyblock_agent::fuse::mount_device(
            device,
            &fuse_dir,
            "image",
            tokio::runtime::Handle::current(),
        )?;
        let t_fuse = t.elapsed();
        let stack = match mount_file(fuse.file_path(), mnt, true).await {
            Ok(s) => s,
            Err(e) => {
                drop(fuse);
                return Err(e);
            }
        };
        let t_mount = t.elapsed();
        let outcome = run_command(mnt, w.command).await;
        let seconds = t.elapsed().as_secs_f64();
        if std::env::var_os("LAZYBLOCK_BENCH_PHASES").is_some() {
            eprintln!(
                "phases: open {t_open:?} fuse {t_fuse:?} mounted {t_mount:?} done {seconds:.3}"
            );
        }
        stack.teardown().await?;
        let mut fuse = fuse;
        tokio::task::spawn_blocking(move || fuse.unmount()).await??;
        outcome?;
        if lazy.record {
            let chunks = source.finish_recording();
            let m = source.manifest();
            let profile = Profile {
                manifest: m.id(),
                chunks,
            };
            self.ctx
                .store
                .put_profile(source.root(), &m.id(), bytes::Bytes::from(profile.encode()))
                .await?;
        }
        let m = source.metrics();
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        for tier in Tier::ALL {
            self.latencies.tiers[tier as usize].merge_from(m.latency(tier));
        }
        Ok(RunResult {
            seconds,
            origin_chunks: get(&m.origin_chunks),
            origin_bytes: get(&m.origin_bytes),
            guest_chunks: source.chunks_read(),
            prefetched: get(&m.prefetched_chunks),
            l2_chunks: get(&m.l2_chunks),
            tier_hits: Tier::ALL.map(|t| m.hits(t)),
        })
    }

    fn report(&self, all: &[(&Workload, Vec<(Scenario, RunResult)>)]) -> Result<()> {
        let find = |rs: &[(Scenario, RunResult)], s: Scenario| {
            rs.iter()
                .find(|(x, _)| *x == s)
                .map(|(_, r)| r.clone())
                .unwrap_or_default()
        };
        println!(
            "\n{:<7} {:<23} {:>8} {:>9} {:>9} {:>11} {:>8} {:>6} {:>9}  guest chunk lookups served: memory/disk/az/origin",
            "image",
            "scenario",
            "seconds",
            "vs pull",
            "vs local",
            "origin",
            "chunks",
            "az",
            "read",
        );
        let mut json_rows = Vec::new();
        for (w, rs) in all {
            let pull = find(rs, Scenario::FullPull).seconds;
            let local = find(rs, Scenario::Raw).seconds;
            for (s, r) in rs {
                let served: u64 = r.tier_hits[1..].iter().sum();
                let share = |i: usize| 100.0 * r.tier_hits[i] as f64 / served.max(1) as f64;
                let shares = if served > 0 {
                    format!(
                        "{:.0}% / {:.0}% / {:.0}% / {:.0}%",
                        share(1),
                        share(2),
                        share(3),
                        share(4)
                    )
                } else {
                    "-".into()
                };
                println!(
                    "{:<7} {:<23} {:>8.3} {:>8.2}× {:>8.2}× {:>11} {:>8} {:>6} {:>9}  {shares}",
                    w.key,
                    s.label(),
                    r.seconds,
                    pull / r.seconds.max(1e-9),
                    r.seconds / local.max(1e-9),
                    human_bytes(r.origin_bytes),
                    r.origin_chunks,
                    r.l2_chunks,
                    if r.guest_chunks > 0 {
                        r.guest_chunks.to_string()
                    } else {
                        "-".into()
                    }
                );
                json_rows.push(serde_json::json!({
                    "workload": w.key,
                    "command": w.command,
                    "scenario": s.key(),
                    "seconds": r.seconds,
                    "speedup_vs_full_pull": pull / r.seconds.max(1e-9),
                    "ratio_vs_local": r.seconds / local.max(1e-9),
                    "origin_chunks": r.origin_chunks,
                    "origin_bytes": r.origin_bytes,
                    "guest_chunks_read": r.guest_chunks,
                    "prefetched_chunks": r.prefetched,
                    "az_chunks": r.l2_chunks,
                    "chunk_hits": {"memory": r.tier_hits[1], "disk": r.tier_hits[2], "az": r.tier_hits[3], "origin": r.tier_hits[4]},
                }));
            }
        }
        println!("\ntargets:");
        for (w, rs) in all {
            let pull = find(rs, Scenario::FullPull).seconds;
            let local = find(rs, Scenario::Raw).seconds;
            let cold = find(rs, Scenario::Cold);
            let prof = find(rs, Scenario::ColdProfile).seconds;
            let warm = find(rs, Scenario::Warm).seconds;
            let nora = find(rs, Scenario::ColdNoReadahead);
            if rs.iter().any(|(s, _)| *s == Scenario::L2Warm) {
                let l2 = find(rs, Scenario::L2Warm).seconds;
                let l2p = find(rs, Scenario::L2WarmProfile).seconds;
                println!(
                    "  {:<6} L1 cold, L2 warm: {:.2}× faster than full pull, {:.2}× faster than (a) cold; with the profile {:.2}× faster than full pull, {:.2}× local",
                    w.key,
                    pull / l2.max(1e-9),
                    cold.seconds / l2.max(1e-9),
                    pull / l2p.max(1e-9),
                    l2p / local.max(1e-9),
                );
            }
            println!(
                "  {:<6} cold+profile {:.2}× faster than full pull (target ≥ 5), cold {:.2}× (≥ 2.5), warm {:.2}× local (≤ 1.3); origin/guest chunks: no read-ahead {:.2} (≤ 1), read-ahead {:.2} (≤ 1.25)",
                w.key,
                pull / prof.max(1e-9),
                pull / cold.seconds.max(1e-9),
                warm / local.max(1e-9),
                nora.origin_chunks as f64 / nora.guest_chunks.max(1) as f64,
                cold.origin_chunks as f64 / cold.guest_chunks.max(1) as f64,
            );
        }
        let l1 = Histogram::default();
        l1.merge_from(&self.latencies.tiers[Tier::Memory as usize]);
        l1.merge_from(&self.latencies.tiers[Tier::Disk as usize]);
        println!("\nblock read latency, all lazyblock runs (by the slowest tier a read needed):");
        let mut json_lat = serde_json::Map::new();
        let mut rows: Vec<(&str, &Histogram)> = Tier::ALL
            .iter()
            .map(|t| (t.label(), &self.latencies.tiers[*t as usize]))
            .collect();
        rows.push(("L1 (memory+disk)", &l1));
        for (label, h) in &rows {
            let q = |p: f64| h.quantile(p).map(|d| d.as_secs_f64() * 1e6);
            let fmt = |v: Option<f64>| v.map(|x| format!("{x:.0} µs")).unwrap_or("-".into());
            println!(
                "  {:<17} n {:>7}  p50 {:>10}  p90 {:>10}  p99 {:>10}  p99.9 {:>10}",
                label,
                h.count(),
                fmt(q(0.5)),
                fmt(q(0.9)),
                fmt(q(0.99)),
                fmt(q(0.999))
            );
            json_lat.insert(
                (*label).to_owned(),
                serde_json::json!({"count": h.count(), "p50_us": q(0.5), "p90_us": q(0.9), "p99_us": q(0.99), "p999_us": q(0.999)}),
            );
        }
        let l1p50 = l1.quantile(0.5).map(|d| d.as_secs_f64() * 1e6);
        println!(
            "  L1-hit reads p50 {} (target ≤ 100 µs)",
            l1p50.map(|x| format!("{x:.0} µs")).unwrap_or("-".into())
        );
        let svg = ecdf_svg(&rows);
        std::fs::write(&self.args.plot, svg)
            .with_context(|| format!("cannot write {}", self.args.plot.display()))?;
        println!("eCDF plot: {}", self.args.plot.display());
        if self.args.json {
            println!(
                "{}",
                serde_json::json!({"latency_seconds_per_request": self.args.latency.as_secs_f64(), "runs": json_rows, "read_latency": json_lat})
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct LazyRun {
    readahead: bool,
    neighbors: u64,
    record: bool,
    replay: bool,
    l2: bool,
}

/// ext4 on a loop device on `file`, mounted read-only at `dir`.
struct Stack {
    dir: PathBuf,
    dev: loopdev::LoopDevice,
}

async fn mount_file(file: &Path, dir: &Path, direct_io: bool) -> Result<Stack> {
    let (file, dir) = (file.to_path_buf(), dir.to_path_buf());
    tokio::task::spawn_blocking(move || -> Result<Stack> {
        let dev = loopdev::attach_with(&file, true, direct_io)?;
        if let Err(e) = loopdev::mount_ext4(dev.path(), &dir, true) {
            let _ = dev.detach();
            return Err(e.into());
        }
        Ok(Stack { dir, dev })
    })
    .await?
}

impl Stack {
    async fn teardown(self) -> Result<()> {
        tokio::task::spawn_blocking(move || -> Result<()> {
            loopdev::unmount(&self.dir)?;
            self.dev.detach()?;
            Ok(())
        })
        .await?
    }
}

async fn run_command(root: &Path, command: &str) -> Result<()> {
    let out = tokio::process::Command::new("chroot")
        .arg(root)
        .args(["/bin/sh", "-c", command])
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("cannot run chroot")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "`{command}` failed ({}): {}",
            out.status,
            err.lines().last().unwrap_or("")
        );
    }
    Ok(())
}

/// An eCDF of read latency per tier, log-scale x axis from 1 µs to 1 s.
fn ecdf_svg(rows: &[(&str, &Histogram)]) -> String {
    use std::fmt::Write as _;
    let (w, h, left, bottom, top, right) = (820.0, 420.0, 60.0, 50.0, 20.0, 230.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let x_of = |ns: f64| left + pw * ((ns.max(1e3).log10() - 3.0) / 6.0).clamp(0.0, 1.0);
    let y_of = |f: f64| top + ph * (1.0 - f);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    for (i, label) in ["1µs", "10µs", "100µs", "1ms", "10ms", "100ms", "1s"]
        .iter()
        .enumerate()
    {
        let x = left + pw * i as f64 / 6.0;
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{top}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">{label}</text>"##,
            top + ph,
            top + ph + 16.0
        );
    }
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let y = y_of(f);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{f:.2}</text>"##,
            left + pw,
            left - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">block read latency (log scale)</text><text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">fraction of reads ≤ x</text>"#,
        left + pw / 2.0,
        h - 10.0,
        top + ph / 2.0,
        top + ph / 2.0
    );
    let colors = [
        "#888888", "#1b9e77", "#7570b3", "#e6ab02", "#d95f02", "#e7298a",
    ];
    for (i, (label, hist)) in rows.iter().enumerate() {
        let total = hist.count();
        if total == 0 {
            continue;
        }
        let color = colors[i % colors.len()];
        let mut pts = String::new();
        let mut seen = 0u64;
        let mut last_y = y_of(0.0);
        for (upper, count) in hist.buckets() {
            let x = x_of(upper as f64);
            let _ = write!(pts, "{x:.1},{last_y:.1} ");
            seen += count;
            last_y = y_of(seen as f64 / total as f64);
            let _ = write!(pts, "{x:.1},{last_y:.1} ");
        }
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>"#
        );
        let ly = top + 14.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{label} (n={total})</text>"#,
            w - right + 10.0,
            w - right + 30.0,
            w - right + 36.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}
