//! `lazyblock bench …`: end-to-end benchmarks that report ratios against baselines measured in
//! the same run (the machines this runs on are shared and noisy).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use lazyblock_format::{seal_chunk, ImageRef, RootId, Salt, TenantId};
use lazyblock_image::{BuildOptions, Context, NoProgress};
use lazyblock_keys::LocalKeyring;
use rand::{RngCore, SeedableRng};

use crate::Resolved;

#[path = "bench_flatten.rs"]
mod bench_flatten;
#[path = "bench_l2.rs"]
mod bench_l2;
#[path = "bench_start.rs"]
mod bench_start;

#[derive(Subcommand, Debug)]
pub(crate) enum BenchCommand {
    /// Build a page-cached random image into a fresh local store; compare with a durable file
    /// copy (copy + fsync) and with sealing alone (no store), measured in the same run
    Build(BenchBuildArgs),
    /// Flatten the OCI corpus (scripts/make-corpus.sh) to ext4: dedup between parent and child
    /// images, throughput and peak RSS, against `mke2fs -d` measured in the same run
    Flatten(bench_flatten::BenchFlattenArgs),
    /// Container start from on-demand images (cold, cold with a profile, warm) against a full
    /// pull and the image as a local file, on corpus workloads; needs root and the corpus
    Start(bench_start::BenchStartArgs),
    /// The AZ cache tier against memcached nodes on loopback: codec GB/s (and a check that its
    /// SIMD path is in use), L2-hit fetch p50/p99/p99.9, and one slowed node: k-of-n erasure
    /// coding against a single copy, side by side
    L2(bench_l2::BenchL2Args),
}

#[derive(Args, Debug)]
pub(crate) struct BenchBuildArgs {
    /// Image size
    #[arg(long, default_value = "1GiB", value_parser = crate::settings::parse_size)]
    size: u64,
    /// Work directory (a fresh temporary directory under /var/tmp by default; removed after)
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seed of the random image
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(r: &Resolved, cmd: &BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Build(a) => bench_build(r, a).await,
        BenchCommand::Flatten(a) => bench_flatten::run(a).await,
        BenchCommand::Start(a) => bench_start::run(a.clone(), r.l2.clone()).await,
        BenchCommand::L2(a) => bench_l2::run(a, r.l2.clone()).await,
    }
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs.max(1e-9) / 1e6
}

/// The work directory of a benchmark: `dir` if given (created if needed), else a fresh
/// temporary directory under /var/tmp, removed when the returned guard drops.
pub(crate) fn work_dir(
    dir: Option<&std::path::Path>,
    prefix: &str,
) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    match dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            Ok((d.to_path_buf(), None))
        }
        None => {
            let tmp = tempfile::Builder::new()
                .prefix(prefix)
                .tempdir_in("/var/tmp")
                .context("cannot create a work directory in /var/tmp")?;
            Ok((tmp.path().to_path_buf(), Some(tmp)))
        }
    }
}

async fn bench_build(r: &Resolved, args: &BenchBuildArgs) -> Result<()> {
    let (dir, _tmp) = work_dir(args.dir.as_deref(), "lazyblock-bench-")?;
    let image_path = dir.join("random.img");
    eprintln!(
        "bench build: writing a {} MiB random image (seed {}) to {}",
        args.size >> 20,
        args.seed,
        image_path.display()
    );
    {
        let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
        let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&image_path)?);
        let mut buf = vec![0u8; 1 << 20];
        let mut left = args.size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rng.fill_bytes(&mut buf[..n]);
            f.write_all(&buf[..n])?;
            left -= n as u64;
        }
        f.flush()?;
    }

    // Baseline 2: sealing alone, both cores, no store.
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let t = Instant::now();
    {
        let salt = Salt::for_root(&RootId::initial());
        let chunk = r.chunk_size.as_usize();
        let path = image_path.clone();
        let size = args.size;
        let handles: Vec<_> = (0..threads)
            .map(|worker| {
                let salt = salt.clone();
                let path = path.clone();
                std::thread::spawn(move || -> std::io::Result<()> {
                    use std::os::unix::fs::FileExt;
                    let f = std::fs::File::open(path)?;
                    let mut buf = vec![0u8; chunk];
                    let mut index = worker as u64;
                    while index * (chunk as u64) < size {
                        let off = index * chunk as u64;
                        let n = (size - off).min(chunk as u64) as usize;
                        f.read_exact_at(&mut buf[..n], off)?;
                        let _ = seal_chunk(&salt, &mut buf[..n]);
                        index += threads as u64;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("seal thread panicked"))??;
        }
    }
    let seal_secs = t.elapsed().as_secs_f64();

    // The real thing: build into a fresh local store, then the same image as a second tenant.
    let store_url = format!("file://{}", dir.join("store").display());
    let store = crate::open_store(&store_url, true)?;
    let keys = Arc::new(LocalKeyring::new(dir.join("keys")));
    let mut results = Vec::new();
    for (tenant, label) in [
        ("bench-a", "build (new chunks)"),
        ("bench-b", "build (all deduplicated)"),
    ] {
        let ctx = Context {
            store: store.clone(),
            keys: keys.clone(),
            tenant: TenantId::new(tenant)?,
            root: RootId::initial(),
        };
        let mut opts = BuildOptions::new(
            ImageRef::parse("bench/random:v1")?,
            format!("raw:{}", image_path.display()),
            crate::now_unix_secs(),
        );
        opts.chunk_size = r.chunk_size;
        let file = std::fs::File::open(&image_path)?;
        let report = lazyblock_image::build(
            &ctx,
            Box::new(file),
            args.size,
            &opts,
            Arc::new(NoProgress),
            &crate::system_random,
        )
        .await?;
        results.push((label, report));
    }

    // Baseline 1 (measured after the builds, so that freeing its blocks cannot slow them): a
    // durable copy of the file on the store's filesystem (copy, then fsync), the floor for a
    // build that makes every chunk durable before it publishes.
    let t = Instant::now();
    std::fs::copy(&image_path, dir.join("copy.img"))?;
    std::fs::File::open(dir.join("copy.img"))?.sync_all()?;
    let copy_secs = t.elapsed().as_secs_f64();
    std::fs::remove_file(dir.join("copy.img"))?;

    let copy = mbps(args.size, copy_secs);
    let seal = mbps(args.size, seal_secs);
    if args.json {
        let builds: Vec<_> = results
            .iter()
            .map(|(label, rep)| {
                let m = mbps(rep.bytes_in, rep.elapsed.as_secs_f64());
                serde_json::json!({"case": label, "mb_per_s": m, "vs_copy": m / copy, "vs_seal_only": m / seal,
                    "chunks_new": rep.chunks_new, "chunks_dedup": rep.chunks_dedup,
                    "manifest_bytes": rep.manifest_bytes})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"size": args.size, "threads": threads, "copy_mb_per_s": copy, "seal_only_mb_per_s": seal, "builds": builds})
        );
    } else {
        println!(
            "bench build: {} MiB random image, page-cached, {} threads, chunk {} KiB",
            args.size >> 20,
            threads,
            r.chunk_size.bytes() >> 10
        );
        println!(
            "{:<28} {:>10} {:>9} {:>12}",
            "case", "MB/s", "vs copy", "vs seal-only"
        );
        println!(
            "{:<28} {:>10.1} {:>9.2} {:>12.2}",
            "baseline: durable file copy",
            copy,
            1.0,
            copy / seal
        );
        println!(
            "{:<28} {:>10.1} {:>9.2} {:>12.2}",
            "baseline: seal only",
            seal,
            seal / copy,
            1.0
        );
        for (label, rep) in &results {
            let m = mbps(rep.bytes_in, rep.elapsed.as_secs_f64());
            println!(
                "{:<28} {:>10.1} {:>9.2} {:>12.2}",
                label,
                m,
                m / copy,
                m / seal
            );
        }
        if let Some((_, rep)) = results.first() {
            println!(
                "manifest: {} bytes = {:.4}% of the image (budget 0.02%)",
                rep.manifest_bytes,
                rep.manifest_bytes as f64 * 100.0 / args.size as f64
            );
        }
    }
    Ok(())
}
