//! `lazyblock bench flatten --corpus <dir>`: OCI image → ext4 over the realistic corpus of
//! `scripts/make-corpus.sh`, against `mke2fs -d` measured in the same run.
//!
//! * **Dedup**: for each child image and its parent (python3 / debian-minbase, numpy-pandas /
//!   python3, flaskapp / numpy-pandas, nodejs / debian-minbase), the non-zero chunks of the
//!   child and how many of them are not in the parent, against the target
//!   `added layer bytes / child layer bytes + 3 points` (layer bytes = uncompressed tar), for
//!   our writer and for `mke2fs -d` on the extracted tree (times pinned, fake time, fixed UUID
//!   and hash seed, same image size; ENVIRONMENT.md §5). Our unique chunks are attributed to
//!   the layout regions, so a miss says where it comes from.
//! * **Throughput**: ours = open the OCI layout, flatten (reads every layer), plan, stream the
//!   image (re-reads and spools the layers) into a sink that SHA-256s every non-zero chunk;
//!   `mke2fs -d` = only the `mke2fs` run, with the extracted tree and the output on a `noatime`
//!   tmpfs (extraction not timed). MB/s of image bytes and of file bytes, and the ratio.
//! * **Peak RSS** of our flatten of the largest image: this command re-runs itself
//!   (`bench flatten --rss-probe <tag>`) in a fresh process that flattens one image the same
//!   way and reports its own `VmHWM` from `/proc/self/status` just before it exits, so the
//!   number is that of one flatten, not of the whole benchmark.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use lazyblock_oci::{ext4_image, extract_to_dir, Ext4Options, Image, OpenOptions, RegionKind};

const TAGS: [&str; 5] = [
    "debian-minbase",
    "python3",
    "python3-numpy-pandas",
    "python3-numpy-pandas-flaskapp",
    "nodejs",
];
/// (child, parent)
const PAIRS: [(&str, &str); 4] = [
    ("python3", "debian-minbase"),
    ("python3-numpy-pandas", "python3"),
    ("python3-numpy-pandas-flaskapp", "python3-numpy-pandas"),
    ("nodejs", "debian-minbase"),
];
const FAKE_TIME: &str = "1700000000";
const MKE2FS_UUID: &str = "11111111-2222-3333-4444-555555555555";
const MKE2FS_HASH_SEED: &str = "66666666-7777-8888-9999-aaaaaaaaaaaa";

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct BenchFlattenArgs {
    /// Corpus directory made by scripts/make-corpus.sh (its `oci/` layout is used)
    #[arg(long)]
    corpus: PathBuf,
    /// Work directory (a fresh temporary directory under /var/tmp by default; removed after)
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Dedup chunk size (also the writer's region alignment)
    #[arg(long, default_value = "512KiB", value_parser = crate::settings::parse_size)]
    chunk_size: u64,
    /// Skip the `mke2fs -d` baseline (it needs root: extraction keeps owners and devices)
    #[arg(long)]
    no_baseline: bool,
    /// Print JSON
    #[arg(long)]
    json: bool,
    /// Internal: flatten this one image and print its peak RSS as JSON
    #[arg(long, hide = true)]
    rss_probe: Option<String>,
}

pub(crate) async fn run(args: &BenchFlattenArgs) -> Result<()> {
    let args = args.clone();
    tokio::task::spawn_blocking(move || run_blocking(&args))
        .await
        .context("benchmark thread")?
}

/// Chunks of one image: position order, `None` for all-zero chunks.
struct Chunks {
    hashes: Vec<Option<[u8; 32]>>,
}

impl Chunks {
    fn nonzero(&self) -> usize {
        self.hashes.iter().flatten().count()
    }
    fn set(&self) -> HashSet<[u8; 32]> {
        self.hashes.iter().flatten().copied().collect()
    }
}

/// Reads `r` in `chunk` pieces, hashing the non-zero ones.
fn hash_chunks(mut r: impl Read, chunk: usize) -> Result<(Chunks, u64)> {
    let zero = vec![0u8; chunk];
    let mut buf = vec![0u8; chunk];
    let mut hashes = Vec::new();
    let mut total = 0u64;
    loop {
        let mut got = 0;
        while got < chunk {
            let n = r.read(&mut buf[got..]).context("reading the image")?;
            if n == 0 {
                break;
            }
            got += n;
        }
        if got == 0 {
            break;
        }
        total += got as u64;
        let c = &buf[..got];
        if c == &zero[..got] {
            hashes.push(None);
        } else {
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, c);
            let mut h = [0u8; 32];
            h.copy_from_slice(d.as_ref());
            hashes.push(Some(h));
        }
        if got < chunk {
            break;
        }
    }
    Ok((Chunks { hashes }, total))
}

struct Ours {
    chunks: Chunks,
    /// Region label of every chunk.
    region_of: Vec<String>,
    size: u64,
    file_bytes: u64,
    tar_bytes: Vec<(String, u64)>,
    secs: f64,
}

fn region_label(k: RegionKind) -> String {
    match k {
        RegionKind::Head => "head".into(),
        RegionKind::LayerData(l) => format!("data{l}"),
        RegionKind::LayerMeta(l) => format!("meta{l}"),
        RegionKind::Bitmaps => "bitmaps".into(),
        RegionKind::InodeTable => "itable".into(),
        RegionKind::Headroom => "headroom".into(),
    }
}

fn flatten_ours(layout: &Path, tag: &str, work: &Path, chunk: u64) -> Result<Ours> {
    let t0 = Instant::now();
    let img = Image::open(layout, &OpenOptions::tag(tag)).with_context(|| format!("open {tag}"))?;
    let opts = Ext4Options {
        chunk_size: chunk,
        work_dir: Some(work.to_path_buf()),
        ..Ext4Options::default()
    };
    let e = ext4_image(&img, &opts).with_context(|| format!("flatten {tag}"))?;
    let summary = e.summary().clone();
    let file_bytes = e.tree_stats().file_bytes;
    let tar_bytes = img
        .layers
        .iter()
        .zip(e.layer_stats())
        .map(|(l, s)| (l.diff_id.to_string(), s.tar_bytes))
        .collect();
    let size = e.size();
    let (chunks, total) = hash_chunks(e.into_reader(), chunk as usize)?;
    let secs = t0.elapsed().as_secs_f64();
    if total != size {
        bail!("{tag}: stream of {total} bytes, planned {size}");
    }
    let blocks_per_chunk = chunk / 4096;
    let region_of = (0..chunks.hashes.len() as u64)
        .map(|i| {
            let b = i * blocks_per_chunk;
            summary
                .regions
                .iter()
                .find(|r| r.start_block <= b && b < r.start_block + r.blocks.max(1))
                .map_or_else(|| "padding".to_string(), |r| region_label(r.kind))
        })
        .collect();
    Ok(Ours {
        chunks,
        region_of,
        size,
        file_bytes,
        tar_bytes,
        secs,
    })
}

struct Baseline {
    chunks: Chunks,
    secs: f64,
    /// `extract_to_dir` + pinning the times (context only: not in `secs`).
    extract_secs: f64,
}

/// A tmpfs mounted `noatime` (so reading the tree cannot change atimes), unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "noatime,size=16g,mode=0755", "tmpfs"])
            .arg(dir)
            .status()
            .context("run mount")?;
        if !st.success() {
            bail!("mount -t tmpfs on {} failed", dir.display());
        }
        Ok(Self(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

fn baseline_mke2fs(
    layout: &Path,
    tag: &str,
    tmpfs: &Path,
    size: u64,
    chunk: u64,
) -> Result<Baseline> {
    let img = Image::open(layout, &OpenOptions::tag(tag))?;
    let src = tmpfs.join("src");
    let out = tmpfs.join("out.img");
    let _ = std::fs::remove_dir_all(&src);
    let _ = std::fs::remove_file(&out);
    let t_extract = Instant::now();
    extract_to_dir(&img, &src).with_context(|| format!("extract {tag}"))?;
    let st = Command::new("find")
        .arg(&src)
        .args([
            "-exec",
            "touch",
            "-h",
            "-d",
            &format!("@{FAKE_TIME}"),
            "{}",
            "+",
        ])
        .status()?;
    if !st.success() {
        bail!("pinning times under {} failed", src.display());
    }
    let extract_secs = t_extract.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let o = Command::new("mke2fs")
        .env("E2FSPROGS_FAKE_TIME", FAKE_TIME)
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-U",
            MKE2FS_UUID,
            "-E",
        ])
        .arg(format!("hash_seed={MKE2FS_HASH_SEED}"))
        .arg("-d")
        .arg(&src)
        .arg(&out)
        .arg(format!("{}k", size / 1024))
        .output()
        .context("run mke2fs")?;
    let secs = t0.elapsed().as_secs_f64();
    if !o.status.success() {
        bail!(
            "mke2fs -d for {tag} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let (chunks, total) = hash_chunks(std::fs::File::open(&out)?, chunk as usize)?;
    if total != size {
        bail!("mke2fs image of {total} bytes, asked for {size}");
    }
    std::fs::remove_dir_all(&src)?;
    std::fs::remove_file(&out)?;
    Ok(Baseline {
        chunks,
        secs,
        extract_secs,
    })
}

fn vm_hwm_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs.max(1e-9) / 1e6
}

fn pct(a: usize, b: usize) -> f64 {
    100.0 * a as f64 / (b.max(1)) as f64
}

fn run_blocking(args: &BenchFlattenArgs) -> Result<()> {
    let layout = args.corpus.join("oci");
    if !layout.join("index.json").is_file() {
        bail!(
            "{} has no oci/index.json (make it with scripts/make-corpus.sh)",
            args.corpus.display()
        );
    }
    let (dir, _tmp) = super::work_dir(args.dir.as_deref(), "lazyblock-bench-flatten-")?;

    if let Some(tag) = &args.rss_probe {
        let o = flatten_ours(&layout, tag, &dir, args.chunk_size)?;
        println!(
            "{}",
            serde_json::json!({"tag": tag, "vm_hwm_kib": vm_hwm_kib(), "size": o.size, "secs": o.secs})
        );
        return Ok(());
    }

    let root = is_root();
    let baseline = !args.no_baseline;
    if baseline && !root {
        bail!("the mke2fs -d baseline needs root (extraction keeps owners, devices and xattrs; the tree sits on a tmpfs); run as root or pass --no-baseline");
    }
    let tmpfs = if baseline {
        Some(Tmpfs::mount(&dir.join("tmpfs"))?)
    } else {
        None
    };

    let mut ours: BTreeMap<&str, Ours> = BTreeMap::new();
    let mut base: BTreeMap<&str, Baseline> = BTreeMap::new();
    for tag in TAGS {
        let o = flatten_ours(&layout, tag, &dir, args.chunk_size)?;
        eprintln!(
            "bench flatten: {tag}: ours {:.2}s ({} MB image, {} MB files)",
            o.secs,
            o.size / 1_000_000,
            o.file_bytes / 1_000_000
        );
        if let Some(t) = &tmpfs {
            let b = baseline_mke2fs(&layout, tag, &t.0, o.size, args.chunk_size)?;
            eprintln!("bench flatten: {tag}: mke2fs -d {:.2}s", b.secs);
            base.insert(tag, b);
        }
        ours.insert(tag, o);
    }
    drop(tmpfs);

    // peak RSS of one flatten of the largest image, in a fresh process
    let largest = TAGS
        .iter()
        .copied()
        .max_by_key(|t| ours.get(t).map_or(0, |o| o.size))
        .unwrap_or(TAGS[0]);
    let exe = std::env::current_exe().context("current exe")?;
    let probe = Command::new(exe)
        .args(["bench", "flatten", "--corpus"])
        .arg(&args.corpus)
        .arg("--dir")
        .arg(&dir)
        .arg("--chunk-size")
        .arg(args.chunk_size.to_string())
        .args(["--rss-probe", largest])
        .output()
        .context("run the rss probe")?;
    if !probe.status.success() {
        bail!(
            "rss probe failed: {}",
            String::from_utf8_lossy(&probe.stderr)
        );
    }
    let probe: serde_json::Value =
        serde_json::from_slice(&probe.stdout).context("rss probe output")?;
    let rss_kib = probe["vm_hwm_kib"].as_u64().unwrap_or(0);

    // ---- dedup ----
    let mut dedup = Vec::new();
    for (child, parent) in PAIRS {
        let (Some(c), Some(p)) = (ours.get(child), ours.get(parent)) else {
            continue;
        };
        let parent_layers: HashSet<&String> = p.tar_bytes.iter().map(|l| &l.0).collect();
        let child_tar: u64 = c.tar_bytes.iter().map(|l| l.1).sum();
        let added: u64 = c
            .tar_bytes
            .iter()
            .filter(|l| !parent_layers.contains(&l.0))
            .map(|l| l.1)
            .sum();
        let added_pct = 100.0 * added as f64 / child_tar.max(1) as f64;
        let target = added_pct + 3.0;
        let pset = p.chunks.set();
        let nonzero = c.chunks.nonzero();
        let mut by_region: BTreeMap<String, usize> = BTreeMap::new();
        let mut unique = 0;
        for (i, h) in c.chunks.hashes.iter().enumerate() {
            if let Some(h) = h {
                if !pset.contains(h) {
                    unique += 1;
                    *by_region.entry(c.region_of[i].clone()).or_default() += 1;
                }
            }
        }
        let ours_pct = pct(unique, nonzero);
        let mut row = serde_json::json!({
            "child": child, "parent": parent,
            "added_layer_bytes": added, "child_layer_bytes": child_tar,
            "added_pct": added_pct, "target_pct": target,
            "ours": {"nonzero_chunks": nonzero, "unique_chunks": unique, "unique_pct": ours_pct,
                     "meets_target": ours_pct <= target, "unique_by_region": by_region},
        });
        if let (Some(bc), Some(bp)) = (base.get(child), base.get(parent)) {
            let bset = bp.chunks.set();
            let bn = bc.chunks.nonzero();
            let bu = bc
                .chunks
                .hashes
                .iter()
                .flatten()
                .filter(|h| !bset.contains(*h))
                .count();
            row["mke2fs"] = serde_json::json!({"nonzero_chunks": bn, "unique_chunks": bu,
                "unique_pct": pct(bu, bn), "meets_target": pct(bu, bn) <= target});
        }
        dedup.push(row);
    }

    // ---- throughput ----
    let mut tput = Vec::new();
    let (mut o_img, mut o_files, mut o_secs, mut b_secs, mut x_secs) =
        (0u64, 0u64, 0f64, 0f64, 0f64);
    for tag in TAGS {
        let Some(o) = ours.get(tag) else { continue };
        o_img += o.size;
        o_files += o.file_bytes;
        o_secs += o.secs;
        let mut row = serde_json::json!({
            "tag": tag, "image_bytes": o.size, "file_bytes": o.file_bytes,
            "ours_secs": o.secs, "ours_image_mb_per_s": mbps(o.size, o.secs),
            "ours_file_mb_per_s": mbps(o.file_bytes, o.secs),
        });
        if let Some(b) = base.get(tag) {
            b_secs += b.secs;
            x_secs += b.extract_secs;
            row["mke2fs_secs"] = b.secs.into();
            row["mke2fs_image_mb_per_s"] = mbps(o.size, b.secs).into();
            row["mke2fs_file_mb_per_s"] = mbps(o.file_bytes, b.secs).into();
            row["ours_vs_mke2fs"] = (b.secs / o.secs.max(1e-9)).into();
            row["extract_secs"] = b.extract_secs.into();
            row["ours_vs_extract_and_mke2fs"] =
                ((b.secs + b.extract_secs) / o.secs.max(1e-9)).into();
        }
        tput.push(row);
    }
    let total = serde_json::json!({
        "image_bytes": o_img, "file_bytes": o_files, "ours_secs": o_secs,
        "ours_image_mb_per_s": mbps(o_img, o_secs), "ours_file_mb_per_s": mbps(o_files, o_secs),
        "mke2fs_secs": if base.is_empty() { serde_json::Value::Null } else { b_secs.into() },
        "ours_vs_mke2fs": if base.is_empty() { serde_json::Value::Null } else { (b_secs / o_secs.max(1e-9)).into() },
        "extract_secs": if base.is_empty() { serde_json::Value::Null } else { x_secs.into() },
        "ours_vs_extract_and_mke2fs": if base.is_empty() { serde_json::Value::Null } else { ((b_secs + x_secs) / o_secs.max(1e-9)).into() },
    });

    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "chunk_size": args.chunk_size,
                "dedup": dedup,
                "throughput": tput,
                "throughput_total": total,
                "peak_rss": {"tag": largest, "vm_hwm_kib": rss_kib},
            }))?
        );
        return Ok(());
    }

    println!(
        "dedup ({} KiB chunks): non-zero chunks of the child not in the parent; target = added layer bytes / child layer bytes + 3 pp",
        args.chunk_size / 1024
    );
    println!(
        "{:<44} {:>7} {:>8} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} | ours' unique chunks by region",
        "child vs parent", "added", "target", "ours nz", "unique", "%", "mke2fs", "unique", "%"
    );
    for r in &dedup {
        let o = &r["ours"];
        let m = &r["mke2fs"];
        let fmt_u = |v: &serde_json::Value| v.as_u64().map_or("-".to_string(), |x| x.to_string());
        let fmt_p =
            |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.2}%"));
        let regions: Vec<String> = o["unique_by_region"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k}:{v}")).collect())
            .unwrap_or_default();
        println!(
            "{:<44} {:>6.2}% {:>7.2}% | {:>8} {:>8} {:>8}{} | {:>8} {:>8} {:>8}{} | {}",
            format!(
                "{} vs {}",
                r["child"].as_str().unwrap_or(""),
                r["parent"].as_str().unwrap_or("")
            ),
            r["added_pct"].as_f64().unwrap_or(0.0),
            r["target_pct"].as_f64().unwrap_or(0.0),
            fmt_u(&o["nonzero_chunks"]),
            fmt_u(&o["unique_chunks"]),
            fmt_p(&o["unique_pct"]),
            if o["meets_target"].as_bool() == Some(true) {
                " "
            } else {
                "!"
            },
            fmt_u(&m["nonzero_chunks"]),
            fmt_u(&m["unique_chunks"]),
            fmt_p(&m["unique_pct"]),
            match m["meets_target"].as_bool() {
                Some(true) => " ",
                Some(false) => "!",
                None => " ",
            },
            regions.join(" ")
        );
    }
    println!();
    println!("throughput (ours: OCI layout -> ext4 bytes, hashed; mke2fs: only `mke2fs -d` on the extracted tree, tmpfs)");
    println!("ratio = mke2fs time / our time (>= 1: we are at least as fast); +extract: the same with extract_to_dir + touch added to mke2fs (context)");
    println!(
        "{:<32} {:>10} {:>10} | {:>7} {:>9} {:>9} | {:>7} {:>9} {:>9} | {:>7} | {:>7} {:>8}",
        "image",
        "image MB",
        "files MB",
        "ours s",
        "img MB/s",
        "file MB/s",
        "mke2fs",
        "img MB/s",
        "file MB/s",
        "ratio",
        "extract",
        "+extract"
    );
    for r in tput.iter().chain(std::iter::once(&total)) {
        let f = |k: &str| r[k].as_f64().map_or("-".to_string(), |x| format!("{x:.1}"));
        let f2 = |k: &str| r[k].as_f64().map_or("-".to_string(), |x| format!("{x:.2}"));
        println!(
            "{:<32} {:>10} {:>10} | {:>7} {:>9} {:>9} | {:>7} {:>9} {:>9} | {:>7} | {:>7} {:>8}",
            r["tag"].as_str().unwrap_or("total"),
            r["image_bytes"].as_u64().unwrap_or(0) / 1_000_000,
            r["file_bytes"].as_u64().unwrap_or(0) / 1_000_000,
            f2("ours_secs"),
            f("ours_image_mb_per_s"),
            f("ours_file_mb_per_s"),
            f2("mke2fs_secs"),
            f("mke2fs_image_mb_per_s"),
            f("mke2fs_file_mb_per_s"),
            f2("ours_vs_mke2fs"),
            f2("extract_secs"),
            f2("ours_vs_extract_and_mke2fs"),
        );
    }
    println!();
    println!(
        "peak RSS of one flatten of {largest} (fresh process, VmHWM): {:.1} MiB",
        rss_kib as f64 / 1024.0
    );
    Ok(())
}

fn is_root() -> bool {
    // no libc/rustix dependency here: ask the kernel through /proc
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}
