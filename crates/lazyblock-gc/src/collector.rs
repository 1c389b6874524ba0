//! The executor: reads the store, asks [`crate::plan`] what to do, and does it in an order that
//! keeps the invariant at every step, so a crash anywhere leaves a store the next run resumes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use futures::{stream, StreamExt, TryStreamExt};
use lazyblock_format::{
    chunk_name_of, CatalogEntry, ChunkName, HaltRecord, ImageRef, Lifecycle, Manifest, ManifestId,
    RootId, RootState, TenantId,
};
use lazyblock_store::{ChunkStore, MetaKey, PutOutcome, StoreErrorKind, WriteMode};
use tracing::{info, info_span, warn, Instrument};

use crate::clock::Clock;
use crate::error::{GcError, GcErrorKind};
use crate::plan::{self, RootInfo};
use crate::Result;

/// Deletions between two checks of the halt markers: a halt raised while a root is being
/// deleted stops the deletion within this many objects.
const HALT_CHECK_EVERY: usize = 64;

/// A published image: a catalog entry and where it is.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LiveEntry {
    /// The tenant whose catalog holds it.
    pub tenant: TenantId,
    /// The reference.
    pub image: ImageRef,
    /// The entry.
    pub entry: CatalogEntry,
}

/// Progress of long GC work (a progress bar in the CLI).
pub trait GcProgress: Send + Sync {
    /// A new phase with `total` steps (chunks to copy or objects to delete).
    fn start(&self, _what: &str, _total: u64) {}
    /// `n` more steps done.
    fn advance(&self, _n: u64) {}
}

/// A [`GcProgress`] that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoGcProgress;

impl GcProgress for NoGcProgress {}

/// What a rotation did (or, dry, would do).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotateReport {
    /// The group rotated.
    pub group: RootId,
    /// The new active root.
    pub created: RootId,
    /// The roots retired.
    pub retired: Vec<RootId>,
}

/// Migration of one retired root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigratedRoot {
    /// The retired root copied out of.
    pub root: RootId,
    /// The active root copied into.
    pub target: RootId,
    /// Live manifests in the root.
    pub manifests: u64,
    /// Chunks copied (dry: to copy).
    pub chunks_copied: u64,
    /// Chunks the target already had.
    pub chunks_present: u64,
    /// Bytes copied (dry: chunks to copy, bytes unknown: 0).
    pub bytes_copied: u64,
    /// Catalog entries re-pointed at the target (dry: to re-point).
    pub entries_repointed: u64,
    /// Whether nothing live was left in the root afterwards (it is then marked migrated).
    pub done: bool,
}

/// What a migration did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrateReport {
    /// One per retired root.
    pub roots: Vec<MigratedRoot>,
}

/// What a deletion did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteReport {
    /// The roots deleted (dry: to delete).
    pub roots: Vec<RootId>,
    /// Chunks deleted (dry: to delete).
    pub chunks: u64,
    /// Manifests deleted (dry: to delete).
    pub manifests: u64,
    /// Bytes of the chunks and manifests.
    pub bytes: u64,
}

/// The ages that drive `gc run`, in seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSettings {
    /// Rotate a group whose active root is at least this old.
    pub rotate_after: u64,
    /// Expire a retired root this long after its migration finished.
    pub expire_after: u64,
    /// Delete an expired root this long after it expired.
    pub delete_after: u64,
}

/// What one `gc run` cycle did.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    /// Rotations (one per group that was due).
    pub rotated: Vec<RotateReport>,
    /// The migration.
    pub migrated: MigrateReport,
    /// Roots expired.
    pub expired: Vec<RootId>,
    /// The deletion (default when halted).
    pub deleted: DeleteReport,
    /// Why deletion did not run: the halt in force.
    pub halted: Option<String>,
}

/// One root's usage, for `lazyblock roots`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootUsage {
    /// The root and its record.
    pub info: RootInfo,
    /// Manifests stored.
    pub manifests: u64,
    /// Chunks stored.
    pub chunks: u64,
    /// Bytes of chunks and manifests stored.
    pub bytes: u64,
    /// Catalog entries naming the root.
    pub live_images: u64,
    /// Bytes of the live manifests and of the distinct chunks they reference.
    pub live_bytes: u64,
    /// Whether a deletion halt names the root.
    pub halted: bool,
}

/// The garbage collector over one store. One collector at a time per store (a `gc` timer on one
/// host): state records are overwritten, not compared-and-swapped.
#[derive(Clone, Debug)]
pub struct Collector {
    store: Arc<dyn ChunkStore>,
    clock: Arc<dyn Clock>,
    concurrency: usize,
}

fn state_of<'a>(roots: &'a [RootInfo], id: &RootId) -> Option<&'a RootState> {
    roots.iter().find(|r| &r.id == id)?.state.as_ref()
}

fn not_found(what: String) -> GcError {
    GcError::new(GcErrorKind::NotFound, what)
}

impl Collector {
    /// A collector with `concurrency` object requests in flight (at least 1).
    pub fn new(store: Arc<dyn ChunkStore>, clock: Arc<dyn Clock>, concurrency: usize) -> Self {
        Self {
            store,
            clock,
            concurrency: concurrency.max(1),
        }
    }

    fn now(&self) -> u64 {
        self.clock.now_unix_secs()
    }

    /// Every root with its record, sorted by id.
    pub async fn roots(&self) -> Result<Vec<RootInfo>> {
        let ids = self.store.list_roots().await?;
        stream::iter(ids)
            .map(|id| async move {
                let state = self.read_state(&id).await?;
                Ok::<_, GcError>(RootInfo { id, state })
            })
            .buffered(self.concurrency)
            .try_collect()
            .await
    }

    async fn read_state(&self, id: &RootId) -> Result<Option<RootState>> {
        match self.store.get_meta(&MetaKey::RootState(id.clone())).await {
            Ok(bytes) => RootState::decode(&bytes)
                .map(Some)
                .map_err(|e| GcError::new(GcErrorKind::Corrupt, format!("root {id}: {e}"))),
            Err(e) if e.kind() == StoreErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a GC record and makes it durable before anything that depends on it.
    async fn put_record(&self, key: MetaKey, data: Vec<u8>, mode: WriteMode) -> Result<PutOutcome> {
        let outcome = self.store.put_meta(&key, Bytes::from(data), mode).await?;
        self.store.sync().await?;
        Ok(outcome)
    }

    async fn write_state(&self, id: &RootId, s: &RootState) -> Result<()> {
        self.put_record(
            MetaKey::RootState(id.clone()),
            s.encode(),
            WriteMode::Overwrite,
        )
        .await?;
        Ok(())
    }

    /// Every catalog entry of every tenant. An unreadable entry is an error: GC must not decide
    /// what is live from a partial view.
    pub async fn live(&self) -> Result<Vec<LiveEntry>> {
        let mut names = Vec::new();
        for tenant in self.store.list_tenants().await? {
            for image in self.store.list_catalog(&tenant).await? {
                names.push((tenant.clone(), image));
            }
        }
        stream::iter(names)
            .map(|(tenant, image)| async move {
                match self.store.get_catalog(&tenant, &image).await {
                    Ok(raw) => {
                        let entry = CatalogEntry::decode(&raw).map_err(|e| {
                            GcError::new(
                                GcErrorKind::Corrupt,
                                format!("catalog entry {image} of tenant {tenant}: {e}"),
                            )
                        })?;
                        Ok(Some(LiveEntry {
                            tenant,
                            image,
                            entry,
                        }))
                    }
                    // Unpublished between the listing and the read.
                    Err(e) if e.kind() == StoreErrorKind::NotFound => Ok(None),
                    Err(e) => Err(GcError::from(e)),
                }
            })
            .buffered(self.concurrency)
            .try_filter_map(|e| async move { Ok(e) })
            .try_collect()
            .await
    }

    fn live_roots(live: &[LiveEntry]) -> BTreeSet<RootId> {
        live.iter().map(|e| e.entry.root.clone()).collect()
    }

    /// Gives every root without a record one: active, in the default group. Such roots were
    /// written before GC existed; adopting them is what lets them ever be collected.
    async fn adopt(&self, roots: &mut [RootInfo], dry_run: bool) -> Result<()> {
        let now = self.now();
        for r in roots.iter_mut().filter(|r| r.state.is_none()) {
            let s = RootState::new_active(plan::default_group(), now);
            if !dry_run {
                self.put_record(
                    MetaKey::RootState(r.id.clone()),
                    s.encode(),
                    WriteMode::Create,
                )
                .await?;
                info!(root = %r.id, "adopted a root without a state record as active");
            }
            r.state = Some(s);
        }
        Ok(())
    }

    /// Creates a new active root of `group` under a fresh id (create-only: two collectors
    /// racing for an id cannot both get it).
    async fn create_root(&self, roots: &mut Vec<RootInfo>, group: &RootId) -> Result<RootId> {
        let now = self.now();
        for _ in 0..64 {
            let id = plan::next_root_id(roots);
            let s = RootState::new_active(group.clone(), now);
            let outcome = self
                .put_record(
                    MetaKey::RootState(id.clone()),
                    s.encode(),
                    WriteMode::Create,
                )
                .await?;
            let state = match outcome {
                PutOutcome::Stored => Some(s),
                PutOutcome::AlreadyPresent => self.read_state(&id).await?,
            };
            roots.push(RootInfo {
                id: id.clone(),
                state,
            });
            if outcome == PutOutcome::Stored {
                info!(root = %id, group = %group, "created an active root");
                return Ok(id);
            }
        }
        Err(GcError::new(
            GcErrorKind::Other,
            "could not claim a new root id after 64 attempts",
        ))
    }

    /// The root a build of `group` writes into, creating the group's first root if it has none.
    /// A store written before GC existed has its roots adopted first, so it keeps writing `r0`.
    pub async fn build_root(&self, group: &RootId) -> Result<RootId> {
        let mut roots = self.roots().await?;
        if let Some(id) = plan::build_root(&roots, group) {
            return Ok(id);
        }
        self.adopt(&mut roots, false).await?;
        if let Some(id) = plan::build_root(&roots, group) {
            return Ok(id);
        }
        self.create_root(&mut roots, group).await
    }

    /// Makes a new active root for `group` and retires the group's other active roots. The new
    /// root exists before the old ones retire, so a build always finds an active root.
    pub async fn rotate(&self, group: &RootId, dry_run: bool) -> Result<RotateReport> {
        let mut roots = self.roots().await?;
        self.adopt(&mut roots, dry_run).await?;
        let created = if dry_run {
            plan::next_root_id(&roots)
        } else {
            self.create_root(&mut roots, group).await?
        };
        let retired = self.retire_others(&roots, group, &created, dry_run).await?;
        Ok(RotateReport {
            group: group.clone(),
            created,
            retired,
        })
    }

    /// Retires the active roots of `group` other than `keep`.
    async fn retire_others(
        &self,
        roots: &[RootInfo],
        group: &RootId,
        keep: &RootId,
        dry_run: bool,
    ) -> Result<Vec<RootId>> {
        let retired = plan::retired_by_rotation(roots, group, keep);
        if !dry_run {
            let now = self.now();
            for id in &retired {
                if let Some(s) = state_of(roots, id) {
                    self.write_state(id, &plan::retire(id, s, now)?).await?;
                    info!(root = %id, "retired");
                }
            }
        }
        Ok(retired)
    }

    /// Copies every live manifest of every retired root, with every chunk it references, into
    /// the active root of the same group, then re-points the catalog entries at the copies.
    /// Needs no tenant key. Each step is idempotent (puts are create-only, a catalog entry is
    /// re-pointed only while it still names the retired root), so re-running after a crash
    /// resumes. A retired root left with nothing live is marked migrated.
    pub async fn migrate(&self, dry_run: bool, progress: &dyn GcProgress) -> Result<MigrateReport> {
        let mut roots = self.roots().await?;
        self.adopt(&mut roots, dry_run).await?;
        let mut report = MigrateReport::default();
        let sources = plan::migration_sources(&roots);
        if sources.is_empty() {
            return Ok(report);
        }
        // One catalog scan before and one after, however many roots are retired.
        let live = self.live().await?;
        for (source, group) in sources {
            let target = match plan::build_root(&roots, &group) {
                Some(t) => t,
                None if dry_run => plan::next_root_id(&roots),
                None => self.create_root(&mut roots, &group).await?,
            };
            let span = info_span!("migrate", root = %source, target = %target);
            let one = self
                .migrate_root(&source, &target, &live, dry_run, progress)
                .instrument(span)
                .await?;
            report.roots.push(one);
        }
        if dry_run {
            return Ok(report);
        }
        // Something may have been published into a retired root meanwhile (a build that picked
        // it before the rotation): only a root with nothing live is marked migrated.
        let live_now = Self::live_roots(&self.live().await?);
        let now = self.now();
        for one in &mut report.roots {
            let source = one.root.clone();
            if live_now.contains(&source) {
                warn!(root = %source, "images were published into the retired root during the migration: run gc migrate again");
                continue;
            }
            if let Some(s) = self.read_state(&source).await? {
                // The expiry clock starts when the root last held something live: a re-run
                // that found nothing to move leaves it alone.
                if s.migrated.is_none() || one.entries_repointed > 0 {
                    self.write_state(&source, &plan::mark_migrated(&source, &s, now)?)
                        .await?;
                }
                one.done = true;
                info!(
                    root = %source,
                    manifests = one.manifests,
                    copied = one.chunks_copied,
                    present = one.chunks_present,
                    "migrated"
                );
            }
        }
        Ok(report)
    }

    async fn migrate_root(
        &self,
        source: &RootId,
        target: &RootId,
        live: &[LiveEntry],
        dry_run: bool,
        progress: &dyn GcProgress,
    ) -> Result<MigratedRoot> {
        let mut by_manifest: BTreeMap<ManifestId, Vec<&LiveEntry>> = BTreeMap::new();
        for e in live.iter().filter(|e| &e.entry.root == source) {
            by_manifest.entry(e.entry.manifest).or_default().push(e);
        }
        let mut out = MigratedRoot {
            root: source.clone(),
            target: target.clone(),
            manifests: by_manifest.len() as u64,
            chunks_copied: 0,
            chunks_present: 0,
            bytes_copied: 0,
            entries_repointed: 0,
            done: false,
        };
        for (id, entries) in &by_manifest {
            let bytes = self.store.get_manifest(source, id).await?;
            let manifest = Manifest::decode(&bytes).map_err(|e| {
                GcError::new(
                    GcErrorKind::Corrupt,
                    format!("manifest {id} in root {source}: {e}"),
                )
            })?;
            if manifest.id() != *id {
                return Err(GcError::new(
                    GcErrorKind::Corrupt,
                    format!("manifest {id} in root {source} hashes to {}", manifest.id()),
                ));
            }
            let chunks = manifest.distinct_chunks();
            progress.start(&format!("{source} → {target}"), chunks.len() as u64);
            let copied: Vec<Option<u64>> = stream::iter(chunks)
                .map(|name| async move {
                    let r = self.copy_chunk(source, target, name, dry_run).await;
                    progress.advance(1);
                    r
                })
                .buffer_unordered(self.concurrency)
                .try_collect()
                .await?;
            for c in copied {
                match c {
                    Some(bytes) => {
                        out.chunks_copied += 1;
                        out.bytes_copied += bytes;
                    }
                    None => out.chunks_present += 1,
                }
            }
            if dry_run {
                out.entries_repointed += entries.len() as u64;
                continue;
            }
            // Chunks durable before the manifest that names them; the manifest before the
            // catalog entries that name it.
            self.store.sync().await?;
            match self.store.get_profile(source, id).await {
                Ok(p) => self.store.put_profile(target, id, p).await?,
                Err(e) if e.kind() == StoreErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            self.store.put_manifest(target, id, bytes).await?;
            self.store.sync().await?;
            for e in entries {
                if self.repoint(e, source, target).await? {
                    out.entries_repointed += 1;
                }
            }
            self.store.sync().await?;
        }
        out.done = dry_run;
        Ok(out)
    }

    /// Copies one chunk unless the target has it; `Some(bytes)` when it was (dry: would be)
    /// copied. The bytes are checked against the name, so corruption is never copied.
    async fn copy_chunk(
        &self,
        source: &RootId,
        target: &RootId,
        name: ChunkName,
        dry_run: bool,
    ) -> Result<Option<u64>> {
        if self.store.has_chunk(target, &name).await? {
            return Ok(None);
        }
        if dry_run {
            return Ok(Some(0));
        }
        let data = self.store.get_chunk(source, &name).await?;
        if chunk_name_of(&data) != name {
            return Err(GcError::new(
                GcErrorKind::Corrupt,
                format!("chunk {name} in root {source} does not hash to its name: not copied; the images using it stay in {source}"),
            ));
        }
        let len = data.len() as u64;
        self.store.put_chunk(target, &name, data).await?;
        Ok(Some(len))
    }

    /// Re-points one catalog entry from `source` to `target` if it still names the same
    /// manifest in `source` (an image re-published meanwhile is left alone).
    async fn repoint(&self, e: &LiveEntry, source: &RootId, target: &RootId) -> Result<bool> {
        let current = match self.store.get_catalog(&e.tenant, &e.image).await {
            Ok(raw) => CatalogEntry::decode(&raw)?,
            Err(err) if err.kind() == StoreErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(err.into()),
        };
        if &current.root != source || current.manifest != e.entry.manifest {
            return Ok(false);
        }
        let moved = CatalogEntry {
            root: target.clone(),
            ..current
        };
        self.store
            .put_catalog(&e.tenant, &e.image, Bytes::from(moved.encode()))
            .await?;
        Ok(true)
    }

    /// Expires the retired roots whose migration finished at least `after` seconds ago and that
    /// hold nothing live.
    pub async fn expire(&self, after: u64, dry_run: bool) -> Result<Vec<RootId>> {
        let roots = self.roots().await?;
        let live = Self::live_roots(&self.live().await?);
        let now = self.now();
        let due = plan::expirable(&roots, &live, now, after);
        if !dry_run {
            for id in &due {
                if let Some(s) = state_of(&roots, id) {
                    self.write_state(id, &plan::expire(id, s, now)?).await?;
                    info!(root = %id, "expired");
                }
            }
        }
        Ok(due)
    }

    /// The deletion halts in force.
    pub async fn halts(&self) -> Result<Vec<HaltRecord>> {
        let mut out = Vec::new();
        for root in self.store.list_halts().await? {
            match self.store.get_meta(&MetaKey::Halt(root.clone())).await {
                Ok(raw) => out.push(HaltRecord::decode(&raw).unwrap_or(HaltRecord {
                    root,
                    raised: 0,
                    reason: "(unreadable halt record)".into(),
                })),
                Err(e) if e.kind() == StoreErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    async fn ensure_not_halted(&self) -> Result<()> {
        let halts = self.halts().await?;
        if halts.is_empty() {
            return Ok(());
        }
        let now = self.now();
        let list: Vec<String> = halts
            .iter()
            .map(|h| {
                format!(
                    "root {} ({}s ago: {})",
                    h.root,
                    now.saturating_sub(h.raised),
                    h.reason
                )
            })
            .collect();
        Err(GcError::new(
            GcErrorKind::Halted,
            format!(
                "deletion is halted by a read from an expired root: {}; check the readers, then run `lazyblock gc resume --ack <root>`",
                list.join("; ")
            ),
        ))
    }

    /// Raises a halt: something live was found where deletion was about to happen.
    async fn raise_halt(&self, root: &RootId, reason: String) -> Result<()> {
        let record = HaltRecord {
            root: root.clone(),
            raised: self.now(),
            reason,
        };
        self.put_record(
            MetaKey::Halt(root.clone()),
            record.encode(),
            WriteMode::Create,
        )
        .await?;
        Ok(())
    }

    /// Deletes the roots expired at least `after` seconds ago (and finishes deletions that
    /// stopped part way), unless a halt is in force: then nothing is deleted and the error says
    /// why. A root is marked deleted first, then its manifests, then its chunks go; the halts
    /// are re-checked every [`HALT_CHECK_EVERY`] objects.
    pub async fn delete(
        &self,
        after: u64,
        dry_run: bool,
        progress: &dyn GcProgress,
    ) -> Result<DeleteReport> {
        self.ensure_not_halted().await?;
        let roots = self.roots().await?;
        let live = self.live().await?;
        let live_roots = Self::live_roots(&live);
        let now = self.now();
        // A catalog entry naming an expired root: published after the root was migrated. Halt,
        // so an operator looks before anything is deleted.
        for e in &live {
            let expired =
                state_of(&roots, &e.entry.root).is_some_and(|s| s.state >= Lifecycle::Expired);
            if expired && !dry_run {
                let reason = format!(
                    "catalog entry {} of tenant {} names expired root {}",
                    e.image, e.tenant, e.entry.root
                );
                self.raise_halt(&e.entry.root, reason).await?;
                self.ensure_not_halted().await?;
            }
        }
        let mut report = DeleteReport::default();
        for id in plan::deletable(&roots, &live_roots, now, after) {
            let Some(s) = state_of(&roots, &id) else {
                continue;
            };
            let manifests = self.store.list_manifests(&id).await?;
            let chunks: Vec<(ChunkName, u64)> = self.store.list_chunks(&id).try_collect().await?;
            if s.state == Lifecycle::Deleted && manifests.is_empty() && chunks.is_empty() {
                continue;
            }
            report.roots.push(id.clone());
            report.manifests += manifests.len() as u64;
            report.chunks += chunks.len() as u64;
            report.bytes += manifests.iter().map(|m| m.1).sum::<u64>()
                + chunks.iter().map(|c| c.1).sum::<u64>();
            if dry_run {
                continue;
            }
            self.ensure_not_halted().await?;
            let next = plan::delete(&id, s, now)?;
            if &next != s {
                self.write_state(&id, &next).await?;
            }
            progress.start(
                &format!("delete {id}"),
                (manifests.len() + chunks.len()) as u64,
            );
            for batch in manifests.chunks(HALT_CHECK_EVERY) {
                self.ensure_not_halted().await?;
                stream::iter(batch)
                    .map(|(m, _)| self.store.delete_manifest(&id, m))
                    .buffer_unordered(self.concurrency)
                    .try_collect::<()>()
                    .await?;
                progress.advance(batch.len() as u64);
            }
            for batch in chunks.chunks(HALT_CHECK_EVERY) {
                self.ensure_not_halted().await?;
                stream::iter(batch)
                    .map(|(c, _)| self.store.delete_chunk(&id, c))
                    .buffer_unordered(self.concurrency)
                    .try_collect::<()>()
                    .await?;
                progress.advance(batch.len() as u64);
            }
            info!(root = %id, manifests = manifests.len(), chunks = chunks.len(), "deleted");
        }
        Ok(report)
    }

    /// Acknowledges the halt raised for `root`, letting deletion resume once no halt remains.
    pub async fn resume(&self, root: &RootId, dry_run: bool) -> Result<HaltRecord> {
        let halt = MetaKey::Halt(root.clone());
        let raw = self
            .store
            .get_meta(&halt)
            .await
            .map_err(|e| match e.kind() {
                StoreErrorKind::NotFound => not_found(format!("no deletion halt for root {root}")),
                _ => e.into(),
            })?;
        let record = HaltRecord::decode(&raw)?;
        if !dry_run {
            self.store.delete_meta(&halt).await?;
            self.store.sync().await?;
            info!(root = %root, "halt acknowledged");
        }
        Ok(record)
    }

    /// One full cycle: rotate every group whose active root is old enough, migrate, expire,
    /// delete. A halt stops only the deletion; its reason is in the report.
    pub async fn run(
        &self,
        settings: &RunSettings,
        dry_run: bool,
        progress: &dyn GcProgress,
    ) -> Result<RunReport> {
        let mut report = RunReport::default();
        let mut roots = self.roots().await?;
        self.adopt(&mut roots, dry_run).await?;
        let now = self.now();
        for group in plan::active_groups(&roots) {
            if plan::needs_rotation(&roots, &group, now, Some(settings.rotate_after)) {
                report.rotated.push(self.rotate(&group, dry_run).await?);
            } else if let Some(newest) = plan::build_root(&roots, &group) {
                // A rotation cut short between creating the new root and retiring the old one
                // left two active roots: finish it.
                let retired = self.retire_others(&roots, &group, &newest, dry_run).await?;
                if !retired.is_empty() {
                    report.rotated.push(RotateReport {
                        group: group.clone(),
                        created: newest,
                        retired,
                    });
                }
            }
        }
        report.migrated = self.migrate(dry_run, progress).await?;
        report.expired = self.expire(settings.expire_after, dry_run).await?;
        match self.delete(settings.delete_after, dry_run, progress).await {
            Ok(d) => report.deleted = d,
            Err(e) if e.kind() == GcErrorKind::Halted => report.halted = Some(e.to_string()),
            Err(e) => return Err(e),
        }
        Ok(report)
    }

    /// Every root's usage: what it stores and what of it is live.
    pub async fn usage(&self) -> Result<Vec<RootUsage>> {
        let roots = self.roots().await?;
        let live = self.live().await?;
        let halted: BTreeSet<RootId> = self.store.list_halts().await?.into_iter().collect();
        let mut out = Vec::new();
        for info in roots {
            let id = info.id.clone();
            let manifests = self.store.list_manifests(&id).await?;
            let chunks: HashMap<ChunkName, u64> = self.store.list_chunks(&id).try_collect().await?;
            let live_ids: BTreeSet<ManifestId> = live
                .iter()
                .filter(|e| e.entry.root == id)
                .map(|e| e.entry.manifest)
                .collect();
            let mut live_bytes = 0;
            let mut referenced: BTreeSet<ChunkName> = BTreeSet::new();
            for (m, size) in manifests.iter().filter(|(m, _)| live_ids.contains(m)) {
                live_bytes += size;
                let bytes = self.store.get_manifest(&id, m).await?;
                let manifest = Manifest::decode(&bytes)?;
                referenced.extend(manifest.distinct_chunks());
            }
            live_bytes += referenced.iter().filter_map(|c| chunks.get(c)).sum::<u64>();
            out.push(RootUsage {
                halted: halted.contains(&id),
                manifests: manifests.len() as u64,
                chunks: chunks.len() as u64,
                bytes: manifests.iter().map(|m| m.1).sum::<u64>() + chunks.values().sum::<u64>(),
                live_images: live.iter().filter(|e| e.entry.root == id).count() as u64,
                live_bytes,
                info,
            });
        }
        Ok(out)
    }
}
