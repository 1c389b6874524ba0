//! `lazyblock rm`, `lazyblock roots` and `lazyblock gc …`: the command-line face of
//! `lazyblock-gc` (docs/gc.md).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use lazyblock_format::{CatalogEntry, ImageRef, RootId};
use lazyblock_gc::{
    Collector, GcProgress, MigrateReport, RootUsage, RotateReport, RunSettings, SystemClock,
};

use crate::settings::{duration_setting, parse_duration, FileGc};
use crate::{Bar, Resolved};

/// Object requests in flight for GC work.
const GC_CONCURRENCY: usize = 16;

/// GC ages and the readers' root-state check, resolved from flags, config file and defaults.
#[derive(Clone, Debug)]
pub(crate) struct GcSettings {
    pub(crate) rotate_after: Duration,
    pub(crate) expire_after: Duration,
    pub(crate) delete_after: Duration,
    pub(crate) root_check_interval: Duration,
}

impl GcSettings {
    pub(crate) fn resolve(check_flag: Option<Duration>, file: Option<&FileGc>) -> Result<Self> {
        let get = |flag, text: Option<&String>, key: &str, default_secs: u64| {
            duration_setting(
                flag,
                text.map(String::as_str),
                &format!("[gc] {key}"),
                Duration::from_secs(default_secs),
            )
        };
        Ok(Self {
            rotate_after: get(
                None,
                file.and_then(|f| f.rotate_after.as_ref()),
                "rotate_after",
                7 * 86_400,
            )?,
            expire_after: get(
                None,
                file.and_then(|f| f.expire_after.as_ref()),
                "expire_after",
                86_400,
            )?,
            delete_after: get(
                None,
                file.and_then(|f| f.delete_after.as_ref()),
                "delete_after",
                3 * 86_400,
            )?,
            root_check_interval: get(
                check_flag,
                file.and_then(|f| f.root_check_interval.as_ref()),
                "root_check_interval",
                30,
            )?,
        })
    }
}

#[derive(Args, Debug)]
pub(crate) struct RmArgs {
    /// Image reference, name:tag
    image: String,
}

#[derive(Args, Debug)]
pub(crate) struct RootsArgs {
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// Garbage collection of whole roots (docs/gc.md). Run one collector per store at a time.
#[derive(Subcommand, Debug)]
pub(crate) enum GcCommand {
    /// Make a new active root for a group; the group's old active root becomes retired
    /// (read-only: builds write into the new one)
    Rotate(RotateArgs),
    /// Copy every published image of retired roots (manifest and chunks, no tenant key needed)
    /// into its group's active root and re-point the catalog; idempotent, re-run to resume
    Migrate(DryRun),
    /// Mark retired roots expired once fully migrated for --after; reads from an expired root
    /// still work but raise the alarm that halts deletion
    Expire(AgeArgs),
    /// Delete roots expired for at least --after, unless deletion is halted
    Delete(AgeArgs),
    /// One full cycle for a timer: rotate groups whose active root is older than
    /// --rotate-after, migrate, expire, delete (exit 1 while deletion is halted)
    Run(RunArgs),
    /// Acknowledge the alarm raised by a read from an expired root, so deletion can resume
    Resume(ResumeArgs),
}

#[derive(Args, Debug)]
#[command(next_help_heading = "GC options")]
pub(crate) struct DryRun {
    /// Print what would happen; change nothing
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "GC options")]
pub(crate) struct RotateArgs {
    /// Group to rotate [default: the configured root group]
    #[arg(long)]
    group: Option<String>,
    #[command(flatten)]
    dry: DryRun,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "GC options")]
pub(crate) struct AgeArgs {
    /// Minimum age, e.g. 90m, 36h, 2d [default: [gc] expire_after = 1d for expire, delete_after
    /// = 3d for delete]
    #[arg(long, value_parser = parse_duration)]
    after: Option<Duration>,
    #[command(flatten)]
    dry: DryRun,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "GC options")]
pub(crate) struct RunArgs {
    /// Rotate a group whose active root is at least this old [default: [gc] rotate_after = 7d]
    #[arg(long, value_parser = parse_duration)]
    rotate_after: Option<Duration>,
    /// Expire retired roots migrated at least this long ago [default: [gc] expire_after = 1d]
    #[arg(long, value_parser = parse_duration)]
    expire_after: Option<Duration>,
    /// Delete roots expired at least this long ago [default: [gc] delete_after = 3d]
    #[arg(long, value_parser = parse_duration)]
    delete_after: Option<Duration>,
    #[command(flatten)]
    dry: DryRun,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "GC options")]
pub(crate) struct ResumeArgs {
    /// The root whose alarm is acknowledged
    #[arg(long, value_name = "ROOT")]
    ack: String,
    #[command(flatten)]
    dry: DryRun,
}

/// GC progress on the CLI's progress bar: objects, not bytes.
impl GcProgress for Bar {
    fn start(&self, what: &str, total: u64) {
        self.0.set_message(what.to_owned());
        self.0.set_length(total);
        self.0.set_position(0);
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
}

fn object_bar() -> Bar {
    Bar::on_terminal(|| {
        ProgressBar::new(0).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} objects eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        )
    })
}

fn collector(r: &Resolved) -> Result<Collector> {
    let store = crate::open_store(&r.store_url, false)?;
    Ok(Collector::new(store, Arc::new(SystemClock), GC_CONCURRENCY))
}

fn would(dry: bool, done: &str, planned: &str) -> String {
    if dry {
        format!("would {planned}")
    } else {
        done.to_owned()
    }
}

/// Bytes for people: 1.5 MB, 3.2 GB.
fn human(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{:.1} kB", b / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", b / 1e6),
        _ => format!("{:.2} GB", b / 1e9),
    }
}

/// `lazyblock rm`: unpublishes an image. Its data stays until its root is collected.
pub(crate) async fn cmd_rm(r: &Resolved, args: &RmArgs) -> Result<()> {
    let image = ImageRef::parse(&args.image)?;
    let store = crate::open_store(&r.store_url, false)?;
    let raw = store
        .get_catalog(&r.tenant, &image)
        .await
        .with_context(|| format!("cannot unpublish {image}"))?;
    let entry = CatalogEntry::decode(&raw).ok();
    store
        .delete_catalog(&r.tenant, &image)
        .await
        .with_context(|| format!("cannot unpublish {image}"))?;
    store.sync().await?;
    match entry {
        Some(e) => eprintln!(
            "unpublished {image} of tenant {} (manifest {} in root {}); its data is reclaimed when gc retires, migrates and deletes root {}",
            r.tenant,
            e.manifest.short(),
            e.root,
            e.root
        ),
        None => eprintln!("unpublished {image} of tenant {}", r.tenant),
    }
    Ok(())
}

fn usage_json(u: &RootUsage) -> serde_json::Value {
    let s = u.info.state.as_ref();
    serde_json::json!({
        "root": u.info.id.to_string(),
        "group": s.map(|s| s.group.to_string()),
        "state": s.map(|s| s.state.as_str()),
        "created": s.map(|s| s.created),
        "retired": s.and_then(|s| s.retired),
        "migrated": s.and_then(|s| s.migrated),
        "expired": s.and_then(|s| s.expired),
        "deleted": s.and_then(|s| s.deleted),
        "manifests": u.manifests,
        "chunks": u.chunks,
        "bytes": u.bytes,
        "live_images": u.live_images,
        "live_bytes": u.live_bytes,
        "halted": u.halted,
    })
}

/// `lazyblock roots`: every root with its state and usage.
pub(crate) async fn cmd_roots(r: &Resolved, args: &RootsArgs) -> Result<()> {
    let gc = collector(r)?;
    let usage = gc.usage().await?;
    if args.json {
        let list: Vec<_> = usage.iter().map(usage_json).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if usage.is_empty() {
        eprintln!("store {} has no roots yet", r.store_url);
        return Ok(());
    }
    println!(
        "{:<8} {:<10} {:<9} {:>10} {:>9} {:>8} {:>10} {:>6} {:>10}",
        "ROOT", "GROUP", "STATE", "SINCE", "MANIFESTS", "CHUNKS", "BYTES", "LIVE", "LIVE BYTES"
    );
    let now = crate::now_unix_secs();
    for u in &usage {
        let (group, state, since) = match &u.info.state {
            Some(s) => (
                s.group.to_string(),
                s.state.as_str().to_owned(),
                format!("{} ago", age(now.saturating_sub(s.since()))),
            ),
            None => ("-".into(), "(none)".into(), "-".into()),
        };
        println!(
            "{:<8} {:<10} {:<9} {:>10} {:>9} {:>8} {:>10} {:>6} {:>10}{}",
            u.info.id.to_string(),
            group,
            state,
            since,
            u.manifests,
            u.chunks,
            human(u.bytes),
            u.live_images,
            human(u.live_bytes),
            if u.halted { "  HALTED" } else { "" }
        );
    }
    let total: u64 = usage.iter().map(|u| u.bytes).sum();
    let live: u64 = usage.iter().map(|u| u.live_bytes).sum();
    eprintln!(
        "{} roots, {} stored, {} live",
        usage.len(),
        human(total),
        human(live)
    );
    Ok(())
}

/// A duration for people: 45s, 12m, 5h, 3d.
fn age(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        7200..172_800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

fn print_rotate(r: &RotateReport, dry: bool) {
    let retired: Vec<String> = r.retired.iter().map(ToString::to_string).collect();
    eprintln!(
        "{} group {}: new active root {}, retired {}",
        would(dry, "rotated", "rotate"),
        r.group,
        r.created,
        if retired.is_empty() {
            "none".to_owned()
        } else {
            retired.join(", ")
        }
    );
}

fn print_migrate(m: &MigrateReport, dry: bool) {
    if m.roots.is_empty() {
        eprintln!("no retired roots to migrate");
    }
    for one in &m.roots {
        let (root, target) = (&one.root, &one.target);
        if dry {
            eprintln!(
                "would migrate {root} → {target}: {} live manifests, {} chunks to copy, {} already there, {} catalog entries to re-point",
                one.manifests, one.chunks_copied, one.chunks_present, one.entries_repointed
            );
        } else {
            eprintln!(
                "migrated {root} → {target}: {} live manifests, {} chunks copied ({}), {} already there, {} catalog entries re-pointed{}",
                one.manifests,
                one.chunks_copied,
                human(one.bytes_copied),
                one.chunks_present,
                one.entries_repointed,
                if one.done {
                    ""
                } else {
                    "; images were published into it meanwhile: run gc migrate again"
                }
            );
        }
    }
}

fn print_list(what: &str, roots: &[RootId], dry: bool) {
    let list: Vec<String> = roots.iter().map(ToString::to_string).collect();
    if list.is_empty() {
        eprintln!("nothing to {what}");
    } else {
        eprintln!(
            "{} {}",
            would(dry, &format!("{what}d"), what),
            list.join(", ")
        );
    }
}

fn print_delete(d: &lazyblock_gc::DeleteReport, dry: bool) {
    if d.roots.is_empty() {
        eprintln!("nothing to delete");
        return;
    }
    let list: Vec<String> = d.roots.iter().map(ToString::to_string).collect();
    eprintln!(
        "{} {}: {} manifests, {} chunks, {} reclaimed",
        would(dry, "deleted", "delete"),
        list.join(", "),
        d.manifests,
        d.chunks,
        human(d.bytes)
    );
}

/// `lazyblock gc …`. Returns false (exit 1) when deletion is halted.
pub(crate) async fn cmd_gc(r: &Resolved, cmd: &GcCommand) -> Result<bool> {
    let gc = collector(r)?;
    let bar = object_bar();
    match cmd {
        GcCommand::Rotate(a) => {
            let group = match &a.group {
                Some(g) => RootId::new(g).context("--group")?,
                None => r.root_group.clone(),
            };
            print_rotate(&gc.rotate(&group, a.dry.dry_run).await?, a.dry.dry_run);
        }
        GcCommand::Migrate(a) => {
            let report = gc.migrate(a.dry_run, &bar).await?;
            drop(bar);
            print_migrate(&report, a.dry_run);
        }
        GcCommand::Expire(a) => {
            let after = a.after.unwrap_or(r.gc.expire_after).as_secs();
            print_list(
                "expire",
                &gc.expire(after, a.dry.dry_run).await?,
                a.dry.dry_run,
            );
        }
        GcCommand::Delete(a) => {
            let after = a.after.unwrap_or(r.gc.delete_after).as_secs();
            match gc.delete(after, a.dry.dry_run, &bar).await {
                Ok(d) => {
                    drop(bar);
                    print_delete(&d, a.dry.dry_run);
                }
                Err(e) => return Err(e.into()),
            }
        }
        GcCommand::Run(a) => {
            let settings = RunSettings {
                rotate_after: a.rotate_after.unwrap_or(r.gc.rotate_after).as_secs(),
                expire_after: a.expire_after.unwrap_or(r.gc.expire_after).as_secs(),
                delete_after: a.delete_after.unwrap_or(r.gc.delete_after).as_secs(),
            };
            let dry = a.dry.dry_run;
            let report = gc.run(&settings, dry, &bar).await?;
            drop(bar);
            if report.rotated.is_empty() {
                eprintln!("no group due for rotation");
            }
            for rot in &report.rotated {
                print_rotate(rot, dry);
            }
            print_migrate(&report.migrated, dry);
            print_list("expire", &report.expired, dry);
            match &report.halted {
                None => print_delete(&report.deleted, dry),
                Some(why) => {
                    eprintln!("error: {why}");
                    return Ok(false);
                }
            }
        }
        GcCommand::Resume(a) => {
            let root = RootId::new(&a.ack).context("--ack")?;
            let halt = gc.resume(&root, a.dry.dry_run).await?;
            eprintln!(
                "{} the alarm on root {root} (raised {} ago: {})",
                would(a.dry.dry_run, "acknowledged", "acknowledge"),
                age(crate::now_unix_secs().saturating_sub(halt.raised)),
                halt.reason
            );
            let left = gc.halts().await?;
            if left.is_empty() {
                eprintln!("deletion is no longer halted");
            } else {
                let list: Vec<String> = left.iter().map(|h| h.root.to_string()).collect();
                eprintln!("deletion is still halted by: {}", list.join(", "));
            }
        }
    }
    Ok(true)
}
