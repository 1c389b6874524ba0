//! Build, export, verify, inspect.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use lazyblock_format::{
    derive_chunk_key, encode_manifest, is_zero, open_chunk, seal_chunk, CatalogEntry, ChunkEntry,
    ChunkName, ChunkSize, Geometry, ImageRef, KeyTable, Manifest, ManifestHeader, ManifestId,
    ManifestRandom, RootId, Salt, TenantId,
};
use lazyblock_keys::{KeyAccess, KeyProvider};
use lazyblock_store::{ChunkStore, PutOutcome, StoreErrorKind};
use tracing::{debug, info, info_span, Instrument};

use crate::error::{ImageError, ImageErrorKind};
use crate::Result;

/// Who is acting, against which store, with which keys.
#[derive(Clone, Debug)]
pub struct Context {
    /// The origin store.
    pub store: Arc<dyn ChunkStore>,
    /// Tenant keys.
    pub keys: Arc<dyn KeyProvider>,
    /// The acting tenant.
    pub tenant: TenantId,
    /// The root new builds write into.
    pub root: RootId,
}

/// Progress callbacks for long operations (a progress bar in the CLI).
pub trait Progress: Send + Sync {
    /// The operation will process `bytes` in all (known once the manifest is open).
    fn set_total(&self, _bytes: u64) {}
    /// `bytes` more of the image were processed.
    fn advance(&self, bytes: u64);
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn advance(&self, _bytes: u64) {}
}

/// Told about every distinct chunk a build stored (new or already present), e.g. to prime the AZ
/// cache tier with it (`lazyblock build --prime-l2`). Called after the store accepted the chunk,
/// within the build's upload concurrency; the build waits for it, so it must bound its own time.
pub trait ChunkSink: Send + Sync + std::fmt::Debug {
    /// `ciphertext` is the sealed chunk named `name`.
    fn stored(&self, name: ChunkName, ciphertext: Bytes)
        -> futures::future::BoxFuture<'static, ()>;
}

/// Settings of one build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// The reference to publish.
    pub image: ImageRef,
    /// Chunk size.
    pub chunk_size: ChunkSize,
    /// Free text describing the source (`raw:/path/disk.img`).
    pub source: String,
    /// Build time to record (the caller's clock).
    pub created_unix_secs: u64,
    /// Chunks sealed at once (the CPU parallelism).
    pub seal_parallelism: usize,
    /// Chunk uploads in flight at once.
    pub upload_concurrency: usize,
    /// The image configuration to seal into the manifest (OCI config JSON), or empty.
    pub image_config: Vec<u8>,
    /// Told about every distinct chunk stored.
    pub chunk_sink: Option<Arc<dyn ChunkSink>>,
}

impl BuildOptions {
    /// Defaults: 512 KiB chunks, one sealer per CPU, 16 uploads in flight.
    pub fn new(image: ImageRef, source: String, created_unix_secs: u64) -> Self {
        Self {
            image,
            chunk_size: ChunkSize::DEFAULT,
            source,
            created_unix_secs,
            seal_parallelism: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            upload_concurrency: 16,
            image_config: Vec::new(),
            chunk_sink: None,
        }
    }
}

/// What a build did.
#[derive(Clone, Debug)]
pub struct BuildReport {
    /// The published reference.
    pub image: ImageRef,
    /// The root it was written into.
    pub root: RootId,
    /// The manifest id.
    pub manifest: ManifestId,
    /// Bytes read from the source.
    pub bytes_in: u64,
    /// Chunks in the image.
    pub chunks_total: u64,
    /// All-zero chunks (not stored).
    pub chunks_zero: u64,
    /// Chunks this build stored.
    pub chunks_new: u64,
    /// Non-zero chunks that were already in the store, or repeated within the image.
    pub chunks_dedup: u64,
    /// Bytes of chunk data uploaded.
    pub bytes_uploaded: u64,
    /// Size of the manifest.
    pub manifest_bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

enum Sealed {
    Zero,
    Data {
        name: ChunkName,
        key: lazyblock_format::ChunkKey,
        ciphertext: Bytes,
    },
}

/// Builds an image from `reader` (exactly `size` bytes) and publishes it as `opts.image`.
///
/// `random` fills the manifest's data key and nonces (the system RNG in production).
pub async fn build(
    ctx: &Context,
    reader: Box<dyn Read + Send>,
    size: u64,
    opts: &BuildOptions,
    progress: Arc<dyn Progress>,
    random: &(dyn Fn(&mut [u8]) + Sync),
) -> Result<BuildReport> {
    let span = info_span!("build", image = %opts.image, tenant = %ctx.tenant, root = %ctx.root);
    build_inner(ctx, reader, size, opts, progress, random)
        .instrument(span)
        .await
}

async fn build_inner(
    ctx: &Context,
    reader: Box<dyn Read + Send>,
    size: u64,
    opts: &BuildOptions,
    progress: Arc<dyn Progress>,
    random: &(dyn Fn(&mut [u8]) + Sync),
) -> Result<BuildReport> {
    let started = Instant::now();
    if size == 0 {
        return Err(ImageError::new(
            ImageErrorKind::InvalidInput,
            format!("source {} is empty", opts.source),
        ));
    }
    let geometry = Geometry::new(size, opts.chunk_size)?;
    // Fetch (or create) the tenant key first: a key problem must not cost a whole upload.
    let tenant_key = ctx
        .keys
        .tenant_key(&ctx.tenant, KeyAccess::CreateIfMissing)?;
    let seal_par = opts.seal_parallelism.clamp(1, 64);
    // Bound the chunk bytes held by uploads in flight to about 64 MiB.
    let upload_par = opts
        .upload_concurrency
        .clamp(1, 256)
        .min(((64 << 20) / opts.chunk_size.as_usize()).max(2));

    // A blocking reader thread feeds chunk buffers through a bounded channel.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<(u64, Vec<u8>)>>(seal_par);
    let source_name = opts.source.clone();
    let reader_task = tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        for index in 0..geometry.chunk_count() {
            let len = geometry.chunk_len(index);
            // read_to_end into reserved capacity: no zero-filling pass over every buffer.
            let mut buf = Vec::with_capacity(len);
            let item = (&mut reader)
                .take(len as u64)
                .read_to_end(&mut buf)
                .and_then(|n| {
                    if n == len {
                        Ok((index, buf))
                    } else {
                        Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("the source ended {} bytes early", len - n),
                        ))
                    }
                });
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    let chunks = stream::poll_fn(move |cx| rx.poll_recv(cx));

    let salt = Arc::new(Salt::for_root(&ctx.root));
    let sealed = chunks
        .map(|item| {
            let salt = salt.clone();
            let source = source_name.clone();
            let progress = progress.clone();
            async move {
                let (index, mut buf) = item.map_err(|e| {
                    ImageError::new(
                        ImageErrorKind::Io,
                        format!("cannot read source {source}: {e}"),
                    )
                })?;
                progress.advance(buf.len() as u64);
                if is_zero(&buf) {
                    return Ok((index, Sealed::Zero));
                }
                let sealed = tokio::task::spawn_blocking(move || {
                    seal_chunk(&salt, &mut buf).map(|(name, key)| Sealed::Data {
                        name,
                        key,
                        ciphertext: Bytes::from(buf),
                    })
                })
                .await
                .map_err(|e| {
                    ImageError::new(ImageErrorKind::Other, format!("sealing task failed: {e}"))
                })??;
                Ok::<_, ImageError>((index, sealed))
            }
        })
        .buffer_unordered(seal_par);

    let seen = Arc::new(std::sync::Mutex::new(HashSet::<ChunkName>::new()));
    let uploads = sealed
        .map(|item| {
            let seen = seen.clone();
            let sink = opts.chunk_sink.clone();
            async move {
                let (index, sealed) = item?;
                match sealed {
                    Sealed::Zero => Ok::<_, ImageError>((index, ChunkEntry::Zero, None)),
                    Sealed::Data {
                        name,
                        key,
                        ciphertext,
                    } => {
                        let first = seen
                            .lock()
                            .map_err(|_| {
                                ImageError::new(ImageErrorKind::Other, "dedup set poisoned")
                            })?
                            .insert(name);
                        let outcome = if first {
                            let len = ciphertext.len() as u64;
                            let sunk = sink.as_ref().map(|s| (Arc::clone(s), ciphertext.clone()));
                            let o = ctx.store.put_chunk(&ctx.root, &name, ciphertext).await?;
                            debug!(chunk = %name.short(), index, ?o, "chunk put");
                            if let Some((sink, data)) = sunk {
                                sink.stored(name, data).await;
                            }
                            Some((o, len))
                        } else {
                            None
                        };
                        Ok((index, ChunkEntry::Data { name, key }, outcome))
                    }
                }
            }
        })
        .buffer_unordered(upload_par);
    futures::pin_mut!(uploads);

    let mut entries: Vec<Option<ChunkEntry>> = vec![None; geometry.chunk_count() as usize];
    let (mut zero, mut new, mut dedup, mut uploaded) = (0u64, 0u64, 0u64, 0u64);
    // Early, overlapping flushes: every EARLY_SYNC_BYTES of new chunk data, one background
    // `sync` (at most one in flight) starts the disk writing while sealing goes on, so the
    // final barrier has little left to do. Their errors are only logged: the final barrier
    // below is the one that counts.
    const EARLY_SYNC_BYTES: u64 = 128 << 20;
    let mut early_sync: Option<tokio::task::JoinHandle<()>> = None;
    let mut unsynced = 0u64;
    while let Some(item) = uploads.next().await {
        let (index, entry, outcome) = item?;
        match (&entry, outcome) {
            (ChunkEntry::Zero, _) => zero += 1,
            (_, Some((PutOutcome::Stored, len))) => {
                new += 1;
                uploaded += len;
                unsynced += len;
            }
            _ => dedup += 1,
        }
        entries[index as usize] = Some(entry);
        let idle = early_sync.as_ref().is_none_or(|h| h.is_finished());
        if unsynced >= EARLY_SYNC_BYTES && idle {
            unsynced = 0;
            let store = ctx.store.clone();
            early_sync = Some(tokio::spawn(async move {
                if let Err(e) = store.sync().await {
                    tracing::warn!("early flush of the store failed (the final one decides): {e}");
                }
            }));
        }
    }
    if let Some(h) = early_sync {
        let _ = h.await;
    }
    reader_task
        .await
        .map_err(|e| ImageError::new(ImageErrorKind::Other, format!("reader task failed: {e}")))?;
    let entries: Vec<ChunkEntry> = entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            e.ok_or_else(|| {
                ImageError::new(
                    ImageErrorKind::Io,
                    format!("source {} ended before chunk {i}", opts.source),
                )
            })
        })
        .collect::<Result<_>>()?;

    let header = ManifestHeader {
        tenant: ctx.tenant.clone(),
        root: ctx.root.clone(),
        image_size: size,
        chunk_size: opts.chunk_size,
        created_unix_secs: opts.created_unix_secs,
        source: opts.source.clone(),
    };
    let mut rnd = [0u8; 56];
    random(&mut rnd);
    let mut manifest_random = ManifestRandom {
        data_key: [0; 32],
        wrap_nonce: [0; 12],
        table_nonce: [0; 12],
    };
    manifest_random.data_key.copy_from_slice(&rnd[..32]);
    manifest_random.wrap_nonce.copy_from_slice(&rnd[32..44]);
    manifest_random.table_nonce.copy_from_slice(&rnd[44..56]);
    let (manifest_id, manifest_bytes) = encode_manifest(
        &header,
        &entries,
        &opts.image_config,
        &tenant_key,
        &manifest_random,
    )?;
    let manifest_len = manifest_bytes.len() as u64;
    // Durability barriers: chunks before the manifest that names them, the manifest before the
    // catalog entry that names it, and the entry before we report success.
    ctx.store.sync().await?;
    ctx.store
        .put_manifest(&ctx.root, &manifest_id, Bytes::from(manifest_bytes))
        .await?;
    ctx.store.sync().await?;
    let entry = CatalogEntry {
        root: ctx.root.clone(),
        manifest: manifest_id,
        image_size: size,
        created_unix_secs: opts.created_unix_secs,
    };
    ctx.store
        .put_catalog(&ctx.tenant, &opts.image, Bytes::from(entry.encode()))
        .await?;
    ctx.store.sync().await?;
    let report = BuildReport {
        image: opts.image.clone(),
        root: ctx.root.clone(),
        manifest: manifest_id,
        bytes_in: size,
        chunks_total: geometry.chunk_count(),
        chunks_zero: zero,
        chunks_new: new,
        chunks_dedup: dedup,
        bytes_uploaded: uploaded,
        manifest_bytes: manifest_len,
        elapsed: started.elapsed(),
    };
    info!(
        manifest = %manifest_id.short(),
        chunks = report.chunks_total,
        zero,
        new,
        dedup,
        "published"
    );
    Ok(report)
}

/// A published image, opened: its catalog entry, manifest and (for reads) key table.
pub struct OpenedImage {
    /// The catalog entry.
    pub entry: CatalogEntry,
    /// The decoded manifest.
    pub manifest: Manifest,
}

impl std::fmt::Debug for OpenedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedImage")
            .field("entry", &self.entry)
            .field("manifest", &self.manifest.id())
            .finish()
    }
}

/// Looks up `image` in the tenant's catalog and fetches and checks its manifest (no key needed).
pub async fn open_image(ctx: &Context, image: &ImageRef) -> Result<OpenedImage> {
    let raw = ctx
        .store
        .get_catalog(&ctx.tenant, image)
        .await
        .map_err(|e| match e.kind() {
            StoreErrorKind::NotFound => ImageError::new(
                ImageErrorKind::NotFound,
                format!(
                    "image {image} is not in the catalog of tenant {} (store {})",
                    ctx.tenant,
                    ctx.store.url()
                ),
            ),
            _ => e.into(),
        })?;
    let entry = CatalogEntry::decode(&raw)
        .map_err(|e| ImageError::new(ImageErrorKind::Corrupt, format!("{image}: {e}")))?;
    let bytes = ctx.store.get_manifest(&entry.root, &entry.manifest).await?;
    let manifest = Manifest::decode(&bytes).map_err(|e| {
        ImageError::new(
            ImageErrorKind::Corrupt,
            format!("manifest {} of {image}: {e}", entry.manifest),
        )
    })?;
    if manifest.id() != entry.manifest {
        return Err(ImageError::new(
            ImageErrorKind::Corrupt,
            format!(
                "manifest {} of {image} is corrupt: its bytes hash to {}",
                entry.manifest,
                manifest.id().short()
            ),
        ));
    }
    if manifest.header().tenant != ctx.tenant {
        return Err(ImageError::new(
            ImageErrorKind::WrongKey,
            format!(
                "manifest {} of {image} belongs to tenant {}, not to tenant {}: the key of tenant {} cannot open it",
                entry.manifest.short(),
                manifest.header().tenant,
                ctx.tenant,
                ctx.tenant
            ),
        ));
    }
    Ok(OpenedImage { entry, manifest })
}

/// Opens an image and its key table: what every reader of chunk contents needs.
async fn open_for_read(ctx: &Context, image: &ImageRef) -> Result<(OpenedImage, KeyTable)> {
    let opened = open_image(ctx, image).await?;
    let keys = open_keys(ctx, &opened)?;
    Ok((opened, keys))
}

fn open_keys(ctx: &Context, opened: &OpenedImage) -> Result<KeyTable> {
    let key = ctx
        .keys
        .tenant_key(&ctx.tenant, KeyAccess::Existing)
        .map_err(|e| {
            ImageError::new(
                ImageErrorKind::NotFound,
                format!("cannot open manifest {}: {e}", opened.manifest.id().short()),
            )
        })?;
    Ok(opened.manifest.open_keys(&key)?)
}

/// Where an opened image's chunks are read from, and the salt they were sealed with. The two
/// differ once GC has migrated the image: chunks move to the root its catalog entry names, but
/// keep the salt of the root the manifest was built in (its header's root).
#[derive(Clone, Debug)]
struct ChunkPlace {
    location: RootId,
    sealed_in: RootId,
}

impl ChunkPlace {
    fn of(opened: &OpenedImage) -> Self {
        Self {
            location: opened.entry.root.clone(),
            sealed_in: opened.manifest.header().root.clone(),
        }
    }
}

/// Fetches, verifies and decrypts one chunk; then checks that the plaintext derives the key
/// (which also proves the key table right).
async fn fetch_plain(
    ctx: &Context,
    place: &ChunkPlace,
    index: u64,
    name: ChunkName,
    key: lazyblock_format::ChunkKey,
    expected_len: usize,
) -> Result<Vec<u8>> {
    let data = ctx.store.get_chunk(&place.location, &name).await?;
    let salt = Salt::for_root(&place.sealed_in);
    tokio::task::spawn_blocking(move || {
        // Takes the buffer over without a copy when the store handed us the only reference.
        let mut buf = Vec::<u8>::from(data);
        if buf.len() != expected_len {
            return Err(ImageError::new(
                ImageErrorKind::Corrupt,
                format!(
                    "chunk {name} (index {index}) is corrupt: {} bytes, expected {expected_len}",
                    buf.len()
                ),
            ));
        }
        open_chunk(&name, &key, &mut buf).map_err(|e| {
            ImageError::new(ImageErrorKind::Corrupt, format!("{e} (index {index})"))
        })?;
        if derive_chunk_key(&salt, &buf) != key {
            return Err(ImageError::new(
                ImageErrorKind::Corrupt,
                format!("chunk {name} (index {index}) does not decrypt to the content its key was derived from"),
            ));
        }
        Ok(buf)
    })
    .await
    .map_err(|e| ImageError::new(ImageErrorKind::Other, format!("chunk task failed: {e}")))?
}

/// What an export did.
#[derive(Clone, Debug)]
pub struct ExportReport {
    /// Bytes in the image.
    pub image_size: u64,
    /// Chunks fetched from the store.
    pub chunks_fetched: u64,
    /// Bytes of the chunks fetched.
    pub bytes_fetched: u64,
    /// Zero chunks left as holes.
    pub chunks_zero: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Writes the exact image bytes to `out` (zero chunks become holes). The file appears only when
/// complete: it is written under a temporary name beside `out` and renamed; on any error nothing
/// is left behind.
pub async fn export(
    ctx: &Context,
    image: &ImageRef,
    out: &Path,
    concurrency: usize,
    progress: Arc<dyn Progress>,
) -> Result<ExportReport> {
    let started = Instant::now();
    let (opened, keys) = open_for_read(ctx, image).await?;
    let geometry = opened.manifest.geometry();
    progress.set_total(geometry.image_size());
    let tmp = temp_path_beside(out)?;
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| {
            ImageError::new(
                ImageErrorKind::Io,
                format!("cannot create {}: {e}", tmp.display()),
            )
        })?;
    let guard = RemoveOnDrop(Some(tmp.clone()));
    let io_err = |e: std::io::Error| {
        ImageError::new(
            ImageErrorKind::Io,
            format!("cannot write {}: {e}", tmp.display()),
        )
    };
    file.set_len(geometry.image_size()).map_err(io_err)?;
    let file = Arc::new(file);
    let place = ChunkPlace::of(&opened);
    let data: Vec<(u64, ChunkName)> = opened.manifest.data_chunks().collect();
    let fetched = data.len() as u64;
    let zero = opened.manifest.chunk_count() - fetched;
    let zero_bytes: u64 = (0..opened.manifest.chunk_count())
        .filter(|&i| opened.manifest.chunk(i).is_none())
        .map(|i| geometry.chunk_len(i) as u64)
        .sum();
    progress.advance(zero_bytes);
    stream::iter(data)
        .map(|(index, name)| {
            let key = keys.key(index).cloned();
            let file = file.clone();
            let place = place.clone();
            let progress = progress.clone();
            async move {
                let key = key.ok_or_else(|| {
                    ImageError::new(ImageErrorKind::Corrupt, format!("no key for chunk {index}"))
                })?;
                let len = geometry.chunk_len(index);
                let plain = fetch_plain(ctx, &place, index, name, key, len).await?;
                let offset = geometry.chunk_range(index).start;
                tokio::task::spawn_blocking(move || file.write_all_at(&plain, offset))
                    .await
                    .map_err(|e| ImageError::new(ImageErrorKind::Other, e.to_string()))?
                    .map_err(io_err)?;
                progress.advance(len as u64);
                Ok::<_, ImageError>(())
            }
        })
        .buffer_unordered(concurrency.clamp(1, 256))
        .try_collect::<()>()
        .await?;
    file.sync_all().map_err(io_err)?;
    std::fs::rename(&tmp, out).map_err(|e| {
        ImageError::new(
            ImageErrorKind::Io,
            format!("cannot rename {} to {}: {e}", tmp.display(), out.display()),
        )
    })?;
    std::mem::forget(guard);
    Ok(ExportReport {
        image_size: geometry.image_size(),
        chunks_fetched: fetched,
        bytes_fetched: geometry.image_size() - zero_bytes,
        chunks_zero: zero,
        elapsed: started.elapsed(),
    })
}

struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn temp_path_beside(out: &Path) -> Result<PathBuf> {
    let name = out.file_name().ok_or_else(|| {
        ImageError::new(
            ImageErrorKind::InvalidInput,
            format!("output {} is not a file name", out.display()),
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".lazyblock-partial-{}", std::process::id()));
    Ok(out.with_file_name(tmp_name))
}

/// A chunk that failed verification.
#[derive(Clone, Debug)]
pub struct BadChunk {
    /// Every index at which the chunk appears.
    pub indexes: Vec<u64>,
    /// Its name.
    pub name: ChunkName,
    /// Why it is bad (missing, corrupt, wrong key).
    pub reason: String,
}

/// What a verify found.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    /// Distinct chunks checked.
    pub chunks_checked: u64,
    /// The bad ones.
    pub bad: Vec<BadChunk>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Fetches every distinct chunk of an image and checks name, decryption and key derivation.
/// Store outages are errors; missing or corrupt chunks are reported in [`VerifyReport::bad`].
pub async fn verify(
    ctx: &Context,
    image: &ImageRef,
    concurrency: usize,
    progress: Arc<dyn Progress>,
) -> Result<VerifyReport> {
    let started = Instant::now();
    let (opened, keys) = open_for_read(ctx, image).await?;
    let geometry = opened.manifest.geometry();
    progress.set_total(geometry.image_size());
    let mut by_name: std::collections::BTreeMap<ChunkName, Vec<u64>> = Default::default();
    for (index, name) in opened.manifest.data_chunks() {
        by_name.entry(name).or_default().push(index);
    }
    let place = ChunkPlace::of(&opened);
    let checked = by_name.len() as u64;
    let results: Vec<Option<BadChunk>> = stream::iter(by_name)
        .map(|(name, indexes)| {
            let place = place.clone();
            let key = keys.key(indexes[0]).cloned();
            let progress = progress.clone();
            async move {
                let index = indexes[0];
                let len = geometry.chunk_len(index);
                let outcome = match key {
                    None => Err(ImageError::new(ImageErrorKind::Corrupt, "no key")),
                    Some(key) => fetch_plain(ctx, &place, index, name, key, len)
                        .await
                        .map(|_| ()),
                };
                progress.advance((len * indexes.len()) as u64);
                match outcome {
                    Ok(()) => Ok(None),
                    Err(e) if e.kind() == ImageErrorKind::NotFound => Ok(Some(BadChunk {
                        indexes,
                        name,
                        reason: "missing from the store".into(),
                    })),
                    Err(e) if e.kind() == ImageErrorKind::Corrupt => Ok(Some(BadChunk {
                        indexes,
                        name,
                        reason: e.to_string(),
                    })),
                    Err(e) => Err(e),
                }
            }
        })
        .buffer_unordered(concurrency.clamp(1, 256))
        .try_collect()
        .await?;
    let mut bad: Vec<BadChunk> = results.into_iter().flatten().collect();
    bad.sort_by_key(|b| b.indexes[0]);
    Ok(VerifyReport {
        chunks_checked: checked,
        bad,
        elapsed: started.elapsed(),
    })
}

/// The keyless description of a published image.
#[derive(Clone, Debug)]
pub struct ImageInfo {
    /// The reference.
    pub image: ImageRef,
    /// Its catalog entry.
    pub entry: CatalogEntry,
    /// The manifest header.
    pub header: ManifestHeader,
    /// Chunks in the image.
    pub chunks_total: u64,
    /// Zero chunks.
    pub chunks_zero: u64,
    /// Distinct stored chunks.
    pub chunks_distinct: u64,
    /// Manifest size in bytes.
    pub manifest_bytes: u64,
    /// The sealed image configuration, when the tenant's key is at hand (else `None`).
    pub image_config: Option<Vec<u8>>,
}

/// Describes a published image. Needs no key; with the tenant's key at hand it also opens the
/// sealed image configuration.
pub async fn inspect(ctx: &Context, image: &ImageRef) -> Result<ImageInfo> {
    let opened = open_image(ctx, image).await?;
    let m = &opened.manifest;
    let image_config = ctx
        .keys
        .tenant_key(&ctx.tenant, KeyAccess::Existing)
        .ok()
        .and_then(|key| m.open_keys(&key).ok())
        .map(|keys| keys.image_config().to_vec());
    Ok(ImageInfo {
        image_config,
        image: image.clone(),
        header: m.header().clone(),
        chunks_total: m.chunk_count(),
        chunks_zero: m.chunk_count() - m.data_chunk_count(),
        chunks_distinct: m.distinct_chunks().len() as u64,
        manifest_bytes: m.as_bytes().len() as u64,
        entry: opened.entry,
    })
}

/// The tenant's catalog with each entry (unreadable entries are reported as errors).
pub async fn list_images(ctx: &Context) -> Result<Vec<(ImageRef, CatalogEntry)>> {
    let names = ctx.store.list_catalog(&ctx.tenant).await?;
    stream::iter(names)
        .map(|image| async move {
            let raw = ctx.store.get_catalog(&ctx.tenant, &image).await?;
            let entry = CatalogEntry::decode(&raw)
                .map_err(|e| ImageError::new(ImageErrorKind::Corrupt, format!("{image}: {e}")))?;
            Ok::<_, ImageError>((image, entry))
        })
        .buffered(16)
        .try_collect()
        .await
}
