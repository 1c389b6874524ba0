//! OCI image → deterministic ext4 image, through `lazyblock-flatten`.
//!
//! [`ext4_image`] flattens an [`Image`] (every layer read and verified once), converts
//! the [`Tree`] into the writer's model ([`to_flatten_tree`]) and plans the layout; the
//! returned [`Ext4Image`] knows its size and layout before a byte is written. Its bytes
//! are produced by [`Ext4Image::write_to`] (synchronous) or [`Ext4Image::into_reader`]
//! (a background thread feeding a bounded channel).
//!
//! File bytes: the writer asks for them in *layout* order (layer by layer, ascending; by
//! path inside a layer), but a layer tar streams in *tar* order. When the writer first
//! asks for data of layer `k`, the layer is streamed once more from its blob (verified
//! again: blob digest, size and diff_id) and only the byte ranges the image needs (live
//! and hidden file data of layer `k`) are copied, in tar order, into one spool file in a
//! private directory under [`Ext4Options::work_dir`]; reads are then served from it. At
//! most one layer is spooled at a time (the next layer's spool replaces it), so disk use
//! is bounded by the largest layer's file bytes ([`Ext4Options::max_spool_bytes`]) and
//! memory by a few MiB. The whole layer is read to its end (and so verified) before any
//! of its bytes reach the image.
//!
//! Deterministic: the bytes depend only on the image content and the options (not on
//! the work directory, time zone, umask or locale). The filesystem UUID is derived from
//! the manifest digest (docker archives, which have none: the config digest).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;

use lazyblock_flatten as lf;
pub use lazyblock_flatten::{Headroom, Region, RegionKind, Summary};

use crate::apply::{Applier, LayerStats};
use crate::error::{invalid, too_large, unsupported, Error, Result};
use crate::image::{Image, ImageConfig};
use crate::tree::{DataRef, Inode, InodeId, Name, NodeKind, Tree, TreeStats, ROOT};

/// Size of one buffer handed from the writer thread to [`Ext4Reader`].
const CHANNEL_BUF: usize = 1 << 20;
/// Buffers in flight between the writer thread and the reader.
const CHANNEL_DEPTH: usize = 16;
/// Copy buffer of the spooler.
const COPY_BUF: usize = 1 << 20;

/// Options of [`ext4_image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Options {
    /// Dedup chunk size and region alignment (power of two, 4 KiB ..= 128 MiB).
    /// Default 512 KiB.
    pub chunk_size: u64,
    /// Free space left for guest writes (default 25%, at least 16 MiB).
    pub headroom: Headroom,
    /// At least this many free inodes (default 16384).
    pub min_free_inodes: u32,
    /// Volume label (at most 16 bytes; default empty).
    pub label: Vec<u8>,
    /// Where layer spool files go (a private subdirectory is created and removed);
    /// `None` = [`std::env::temp_dir`].
    pub work_dir: Option<PathBuf>,
    /// Largest spool of one layer (the bytes of its files the image needs); default
    /// 64 GiB. More is [`crate::ErrorKind::TooLarge`] (checked before spooling).
    pub max_spool_bytes: u64,
    /// Largest image (default 1 TiB); more is [`crate::ErrorKind::TooLarge`].
    pub max_image_bytes: u64,
}

impl Default for Ext4Options {
    fn default() -> Self {
        Self {
            chunk_size: lf::DEFAULT_CHUNK_SIZE,
            headroom: Headroom::default(),
            min_free_inodes: 16384,
            label: Vec::new(),
            work_dir: None,
            max_spool_bytes: 64 << 30,
            max_image_bytes: 1 << 40,
        }
    }
}

/// The runtime part of the image config, as stored next to the ext4 image
/// ([`Ext4Image::config_json`]): canonical JSON, keys in this order.
#[derive(Debug, serde::Serialize)]
struct RuntimeConfig<'a> {
    entrypoint: &'a Option<Vec<String>>,
    cmd: &'a Option<Vec<String>>,
    env: &'a [String],
    working_dir: &'a Option<String>,
    user: &'a Option<String>,
    labels: &'a BTreeMap<String, String>,
}

/// A planned ext4 image of an OCI image: size, layout and config are known; the bytes are
/// produced by [`Ext4Image::write_to`] or [`Ext4Image::into_reader`].
#[derive(Debug)]
pub struct Ext4Image {
    image: Image,
    plan: lf::Plan,
    sources: Arc<Vec<DataRef>>,
    config_json: Vec<u8>,
    uuid: [u8; 16],
    work_dir: PathBuf,
    max_spool_bytes: u64,
    layers: Vec<LayerStats>,
    stats: TreeStats,
}

/// Plan the ext4 image of `image`: applies its layers (reading and verifying each once, as
/// [`Image::flatten`] does, and noting after each layer which directory listings changed),
/// converts the tree and computes the layout. No file data is written yet.
pub fn ext4_image(image: &Image, opts: &Ext4Options) -> Result<Ext4Image> {
    let mut applier = Applier::new(*image.limits());
    let mut layers = Vec::with_capacity(image.layers.len());
    let mut history = DirHistory::default();
    for layer in &image.layers {
        let r = image.open_layer(layer.index as usize)?;
        layers.push(applier.apply_layer(layer.index, r)?);
        history.after_layer(applier.tree(), layer.index);
    }
    let tree = applier.finish();
    let (ftree, sources) = to_flatten_tree(&tree, &history)?;
    let uuid = image_uuid(image);
    if opts.label.len() > 16 {
        return Err(invalid("ext4 label longer than 16 bytes"));
    }
    let mut label = [0u8; 16];
    label[..opts.label.len()].copy_from_slice(&opts.label);
    let mut fopts = lf::Options::new(uuid);
    fopts.label = label;
    fopts.chunk_size = opts.chunk_size;
    fopts.headroom = opts.headroom;
    fopts.min_free_inodes = opts.min_free_inodes;
    let plan = lf::plan(&ftree, &fopts).map_err(from_flatten)?;
    let size = plan.summary().size_bytes;
    if size > opts.max_image_bytes {
        return Err(too_large(format!(
            "ext4 image of {size} bytes (limit {})",
            opts.max_image_bytes
        )));
    }
    Ok(Ext4Image {
        image: image.clone(),
        plan,
        sources: Arc::new(sources),
        config_json: runtime_config_json(&image.config)?,
        uuid,
        work_dir: opts.work_dir.clone().unwrap_or_else(std::env::temp_dir),
        max_spool_bytes: opts.max_spool_bytes,
        layers,
        stats: tree.stats(),
    })
}

/// The filesystem UUID of `image`: the first 16 bytes of its manifest digest (docker
/// archives: config digest) with RFC 9562 version 8 and variant bits.
pub fn image_uuid(image: &Image) -> [u8; 16] {
    let d = image.manifest_digest.unwrap_or(image.config_digest);
    let mut u = [0u8; 16];
    u.copy_from_slice(&d.0[..16]);
    u[6] = (u[6] & 0x0f) | 0x80;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

fn runtime_config_json(c: &ImageConfig) -> Result<Vec<u8>> {
    serde_json::to_vec(&RuntimeConfig {
        entrypoint: &c.entrypoint,
        cmd: &c.cmd,
        env: &c.env,
        working_dir: &c.working_dir,
        user: &c.user,
        labels: &c.labels,
    })
    .map_err(|e| invalid(format!("serializing the image config: {e}")))
}

impl Ext4Image {
    /// Image size in bytes (a multiple of the chunk size).
    pub fn size(&self) -> u64 {
        self.plan.summary().size_bytes
    }

    /// The layout: regions, inode ranges, counters.
    pub fn summary(&self) -> &Summary {
        self.plan.summary()
    }

    /// The filesystem UUID (see [`image_uuid`]).
    pub fn uuid(&self) -> [u8; 16] {
        self.uuid
    }

    /// The OCI config of the image.
    pub fn config(&self) -> &ImageConfig {
        &self.image.config
    }

    /// The runtime config as JSON: `{"entrypoint","cmd","env","working_dir","user",
    /// "labels"}` (absent values are `null`), deterministic bytes.
    pub fn config_json(&self) -> &[u8] {
        &self.config_json
    }

    /// The image this was planned from.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// What each layer held (as [`crate::Flattened::layers`]).
    pub fn layer_stats(&self) -> &[LayerStats] {
        &self.layers
    }

    /// Counters over the flattened tree (file bytes, inodes, hidden data).
    pub fn tree_stats(&self) -> TreeStats {
        self.stats
    }

    /// Write the whole image to `out`, sequentially (zeros included), on this thread.
    pub fn write_to(&self, out: impl Write) -> Result<Summary> {
        self.write_cancellable(out, &AtomicBool::new(false), &AtomicU64::new(0))
    }

    fn write_cancellable(
        &self,
        out: impl Write,
        cancel: &AtomicBool,
        spooled: &AtomicU64,
    ) -> Result<Summary> {
        let mut src = Spooler {
            image: &self.image,
            sources: &self.sources,
            parent: &self.work_dir,
            dir: None,
            cur: None,
            max_spool_bytes: self.max_spool_bytes,
            cancel,
            spooled,
        };
        self.plan.write_to(&mut src, out).map_err(from_flatten)
    }

    /// Stream the image: a background thread runs the writer into a bounded channel
    /// (16 buffers of 1 MiB); the returned reader drains it. Writer errors come out of
    /// `read` as an `io::Error` (the inner error is a [`crate::Error`]); a stream that
    /// ends early or at the wrong size is an error, never a short image. Dropping the
    /// reader stops the thread (at its next write or spool step) and removes the spool.
    pub fn into_reader(self) -> Ext4Reader {
        let size = self.size();
        let (tx, rx) = mpsc::sync_channel::<Msg>(CHANNEL_DEPTH);
        let (recycle_tx, recycle_rx) = mpsc::channel::<Vec<u8>>();
        let cancel = Arc::new(AtomicBool::new(false));
        let spooled = Arc::new(AtomicU64::new(0));
        let thread_cancel = Arc::clone(&cancel);
        let thread_spooled = Arc::clone(&spooled);
        let spawned = std::thread::Builder::new()
            .name("lazyblock-ext4".into())
            .spawn(move || {
                let mut w = ChanWriter {
                    tx: tx.clone(),
                    buf: Vec::with_capacity(CHANNEL_BUF),
                    recycle: recycle_rx,
                };
                let r = self
                    .write_cancellable(&mut w, &thread_cancel, &thread_spooled)
                    .and_then(|_| {
                        w.flush_buf()
                            .map_err(|e| Error::io("sending image bytes", e))
                    });
                let msg = match r {
                    Ok(()) => Msg::Done,
                    Err(e) => Msg::Err(e),
                };
                let _ = tx.send(msg);
            });
        let failed = spawned
            .err()
            .map(|e| format!("cannot start the ext4 writer thread: {e}"));
        Ext4Reader {
            rx,
            cur: Vec::new(),
            pos: 0,
            total: 0,
            size,
            state: match failed {
                Some(m) => State::Failed(io::ErrorKind::Other, m),
                None => State::Running,
            },
            cancel,
            recycle: recycle_tx,
            spooled,
        }
    }
}

// ---------------------------------------------------------------------------------------
// tree conversion

/// A directory as one layer left it (raw applier ids, which are stable across layers).
struct DirState {
    /// Content layer: the last layer that changed its listing (or created it).
    cl: u32,
    inode_layer: u32,
    path: Vec<u8>,
    parent: (u32, Vec<u8>),
    entries: BTreeMap<Name, InodeId>,
}

/// Per raw inode, as of one layer: inode layer, the path that numbers it (first name in
/// canonical order), type.
type InodeInfo = HashMap<InodeId, (u32, Vec<u8>, lf::FileType)>;

/// What applying the layers one at a time says about directories: in which layer each
/// listing last changed, and the earlier listings that upper layers changed or removed.
/// The image of layers `0..=j` puts a directory's blocks in the metadata region of the layer
/// that last changed its listing; an image with more layers keeps those listings there as
/// [`lf::DirVersion`]s (free blocks), so the lower regions stay byte-identical.
#[derive(Default)]
struct DirHistory {
    dirs: HashMap<InodeId, DirState>,
    info: InodeInfo,
    versions: Vec<(Vec<u8>, lf::DirVersion)>,
}

fn file_type(k: &NodeKind) -> lf::FileType {
    match k {
        NodeKind::Directory { .. } => lf::FileType::Dir,
        NodeKind::File { .. } => lf::FileType::File,
        NodeKind::Symlink { .. } => lf::FileType::Symlink,
        NodeKind::CharDevice { .. } => lf::FileType::CharDevice,
        NodeKind::BlockDevice { .. } => lf::FileType::BlockDevice,
        NodeKind::Fifo => lf::FileType::Fifo,
    }
}

impl DirHistory {
    /// Record the state after `layer` was applied to `tree` (the applier's raw tree).
    fn after_layer(&mut self, tree: &Tree, layer: u32) {
        let mut dirs: HashMap<InodeId, DirState> = HashMap::new();
        let mut info: InodeInfo = HashMap::new();
        // canonical pre-order over names: (id, path, parent id)
        let mut stack: Vec<(InodeId, Vec<u8>, InodeId)> = vec![(ROOT, Vec::new(), ROOT)];
        while let Some((id, path, parent)) = stack.pop() {
            let Some(n) = tree.inode(id) else { continue };
            if info.contains_key(&id) {
                continue; // another name of a hard-linked inode
            }
            info.insert(id, (n.inode_layer, path.clone(), file_type(&n.kind)));
            let NodeKind::Directory { entries } = &n.kind else {
                continue;
            };
            let cl = match self.dirs.get(&id) {
                Some(prev) if prev.entries == *entries => prev.cl,
                _ => layer,
            };
            let parent_key = info
                .get(&parent)
                .map(|p| (p.0, p.1.clone()))
                .unwrap_or_default();
            for (name, &c) in entries.iter().rev() {
                let mut p = path.clone();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(name);
                stack.push((c, p, id));
            }
            dirs.insert(
                id,
                DirState {
                    cl,
                    inode_layer: n.inode_layer,
                    path,
                    parent: parent_key,
                    entries: entries.clone(),
                },
            );
        }
        // listings that this layer changed or removed stay as versions in their region
        let mut gone: Vec<&DirState> = self
            .dirs
            .iter()
            .filter(|(id, prev)| dirs.get(id).is_none_or(|d| d.cl != prev.cl))
            .map(|(_, prev)| prev)
            .collect();
        gone.sort_by(|a, b| a.path.cmp(&b.path));
        for prev in gone {
            let entries = prev
                .entries
                .iter()
                .filter_map(|(name, c)| {
                    let (il, p, ft) = self.info.get(c)?;
                    Some(lf::VersionEntry {
                        name: name.clone(),
                        inode_layer: *il,
                        inode_path: p.clone(),
                        file_type: *ft,
                    })
                })
                .collect();
            self.versions.push((
                prev.path.clone(),
                lf::DirVersion {
                    layer: prev.cl,
                    inode_layer: prev.inode_layer,
                    parent: prev.parent.clone(),
                    entries,
                },
            ));
        }
        self.dirs = dirs;
        self.info = info;
    }

    /// Content layer of the live directory at `path` (after the last layer).
    fn content_layer(&self) -> HashMap<&[u8], u32> {
        self.dirs
            .values()
            .map(|d| (d.path.as_slice(), d.cl))
            .collect()
    }
}

/// Convert the OCI tree into the writer's tree. Returns it with the table of file data:
/// `FileId(i)` of the returned tree (live and hidden files) is `sources[i]`.
///
/// * every inode keeps its `inode_layer` (which inode range numbers it), so a directory
///   an upper layer only updates keeps its number;
/// * files, symlinks and devices keep their `layer`; a directory's content layer is the
///   last layer that changed its *listing* (from `history`), not just its metadata, and
///   the listings upper layers changed are kept as [`lf::DirVersion`]s;
/// * hard links become links to the first path (canonical order) of their inode;
/// * hidden data becomes [`lf::Hidden`] (bytes kept, blocks free; inode slot reserved).
fn to_flatten_tree(tree: &Tree, history: &DirHistory) -> Result<(lf::Tree, Vec<DataRef>)> {
    let inodes = &tree.inodes;
    let node = |id: u32| -> Result<&Inode> {
        inodes
            .get(id as usize)
            .ok_or_else(|| invalid(format!("tree: inode {id} does not exist")))
    };
    let by_path = history.content_layer();
    let dir_layer = |path: &[u8], n: &Inode| -> u32 {
        by_path
            .get(path)
            .copied()
            .unwrap_or(n.layer)
            .max(n.inode_layer)
    };

    let root = node(ROOT)?;
    let mut out = lf::Tree::new(attrs(b"/", root)?, dir_layer(b"", root));
    let mut sources: Vec<DataRef> = Vec::new();
    let mut first: Vec<Option<Vec<u8>>> = vec![None; inodes.len()];
    let mut failure: Option<Error> = None;
    tree.walk(|path, id| {
        if failure.is_some() || path.is_empty() {
            return;
        }
        let r = (|| -> Result<()> {
            let slot = first
                .get_mut(id as usize)
                .ok_or_else(|| invalid(format!("tree: inode {id} does not exist")))?;
            if let Some(target) = slot {
                return out.add_hard_link(path, &target[..]).map_err(from_flatten);
            }
            *slot = Some(path.to_vec());
            let n = node(id)?;
            let (kind, layer) = match &n.kind {
                NodeKind::Directory { .. } => (lf::Kind::Dir, dir_layer(path, n)),
                NodeKind::File { data } => {
                    let fid = lf::FileId(sources.len() as u64);
                    sources.push(*data);
                    (
                        lf::Kind::File(lf::FileContent::dense(fid, data.len)),
                        data.layer.max(n.layer),
                    )
                }
                NodeKind::Symlink { target } => (lf::Kind::Symlink(target.clone()), n.layer),
                NodeKind::CharDevice { major, minor } => (
                    lf::Kind::CharDevice {
                        major: *major,
                        minor: *minor,
                    },
                    n.layer,
                ),
                NodeKind::BlockDevice { major, minor } => (
                    lf::Kind::BlockDevice {
                        major: *major,
                        minor: *minor,
                    },
                    n.layer,
                ),
                NodeKind::Fifo => (lf::Kind::Fifo, n.layer),
            };
            let entry = lf::Entry::new(kind, attrs(path, n)?, layer)
                .with_inode_layer(n.inode_layer.min(layer));
            out.add(path, entry).map_err(from_flatten)
        })();
        if let Err(e) = r {
            failure = Some(e);
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    for (i, h) in tree.hidden.iter().enumerate() {
        let path = if h.path.is_empty() {
            // no name was recorded: give it a stable one of its own
            format!(".lazyblock-hidden/{i}").into_bytes()
        } else {
            h.path.clone()
        };
        let content = h.data.filter(|d| d.len > 0).map(|d| {
            let fid = lf::FileId(sources.len() as u64);
            sources.push(d);
            lf::FileContent::dense(fid, d.len)
        });
        let layer = h.data.map_or(h.layer, |d| d.layer.max(h.layer));
        out.add_hidden(
            &path,
            lf::Hidden {
                layer,
                inode_layer: Some(h.inode_layer.min(layer)),
                content,
            },
        )
        .map_err(from_flatten)?;
    }
    // (layer, path) is unique by construction; a duplicate would only cost dedup: skip it
    let mut seen = std::collections::HashSet::new();
    for (path, v) in &history.versions {
        if seen.insert((v.layer, path)) {
            out.add_dir_version(path, v.clone()).map_err(from_flatten)?;
        }
    }
    Ok((out, sources))
}

fn attrs(path: &[u8], n: &Inode) -> Result<lf::Attrs> {
    for name in n.meta.xattrs.keys() {
        let ok = [&b"user."[..], b"trusted.", b"security."]
            .iter()
            .any(|p| name.starts_with(p) && name.len() > p.len());
        if !ok {
            return Err(unsupported(format!(
                "xattr {:?} of /{}: the ext4 writer stores user.*, trusted.* and security.* only",
                String::from_utf8_lossy(name),
                String::from_utf8_lossy(path)
            )));
        }
    }
    Ok(lf::Attrs {
        mode: n.meta.mode & 0o7777,
        uid: n.meta.uid,
        gid: n.meta.gid,
        mtime: lf::Timestamp::new(n.meta.mtime.secs, n.meta.mtime.nanos),
        xattrs: n.meta.xattrs.clone(),
    })
}

/// Map a writer error to this crate's error (our own errors passed through a
/// [`lf::DataSource`] come back unchanged).
fn from_flatten(e: lf::Error) -> Error {
    match e {
        lf::Error::InvalidInput(m) => Error::InvalidInput(format!("ext4: {m}")),
        lf::Error::TooLarge(m) => Error::TooLarge(format!("ext4: {m}")),
        lf::Error::Io { context, source } => {
            if source.get_ref().is_some_and(|i| i.is::<Error>()) {
                if let Some(Ok(ours)) = source.into_inner().map(|i| i.downcast::<Error>()) {
                    return *ours;
                }
                return Error::io(context, io::Error::other("lost error"));
            }
            Error::io(format!("ext4: {context}"), source)
        }
    }
}

// ---------------------------------------------------------------------------------------
// spooling data source

/// The spooled bytes of one layer: `(tar offset, length, spool offset)` sorted by tar
/// offset, in `file`.
struct Spool {
    layer: u32,
    file: File,
    index: Vec<(u64, u64, u64)>,
}

struct Spooler<'a> {
    image: &'a Image,
    sources: &'a [DataRef],
    parent: &'a Path,
    /// Private directory holding the spool file (created on first use, removed on drop).
    dir: Option<PathBuf>,
    cur: Option<Spool>,
    max_spool_bytes: u64,
    cancel: &'a AtomicBool,
    spooled: &'a AtomicU64,
}

impl Drop for Spooler<'_> {
    fn drop(&mut self) {
        self.cur = None;
        if let Some(d) = &self.dir {
            let _ = fs::remove_dir_all(d);
        }
    }
}

fn cancelled() -> Error {
    Error::io(
        "writing the ext4 image",
        io::Error::new(io::ErrorKind::BrokenPipe, "reader dropped"),
    )
}

impl Spooler<'_> {
    fn work_dir(&mut self) -> Result<PathBuf> {
        if let Some(d) = &self.dir {
            return Ok(d.clone());
        }
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let pid = std::process::id();
        loop {
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            let d = self.parent.join(format!(".lazyblock-ext4-{pid}-{n}"));
            match fs::create_dir(&d) {
                Ok(()) => {
                    self.dir = Some(d.clone());
                    return Ok(d);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(format!("create {}", d.display()), e)),
            }
        }
    }

    /// Spool the ranges of `layer` the image needs (replacing the previous spool).
    fn spool(&mut self, layer: u32) -> Result<()> {
        self.cur = None;
        let mut ranges: Vec<(u64, u64)> = self
            .sources
            .iter()
            .filter(|d| d.layer == layer && d.len > 0)
            .map(|d| (d.offset, d.len))
            .collect();
        ranges.sort_unstable();
        ranges.dedup();
        let total: u64 = ranges.iter().map(|r| r.1).sum();
        if total > self.max_spool_bytes {
            return Err(too_large(format!(
                "layer {layer}: {total} bytes to spool (limit {})",
                self.max_spool_bytes
            )));
        }
        let dir = self.work_dir()?;
        let path = dir.join("layer.spool");
        let _ = fs::remove_file(&path);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
        let mut r = self.image.open_layer(layer as usize)?;
        let mut buf = vec![0u8; COPY_BUF];
        let mut pos = 0u64; // position in the tar
        let mut spool_pos = 0u64;
        let mut index = Vec::with_capacity(ranges.len());
        let what = format!("layer {layer}");
        let wio = |e: io::Error| Error::io(format!("writing {}", path.display()), e);
        for &(off, len) in &ranges {
            if off < pos {
                return Err(invalid(format!(
                    "layer {layer}: overlapping file data at tar offset {off}"
                )));
            }
            self.copy(&mut r, off - pos, None, &mut buf, &what)?;
            let mut w = FileAt {
                file: &file,
                pos: spool_pos,
            };
            self.copy(&mut r, len, Some(&mut w), &mut buf, &what)
                .map_err(|e| match e {
                    Error::Io { context, source } if context.is_empty() => wio(source),
                    e => e,
                })?;
            index.push((off, len, spool_pos));
            spool_pos += len;
            pos = off + len;
        }
        // read to the end: the layer is verified (digests, size) before it is used
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::from_content_io(&what, e)),
            }
        }
        self.spooled.fetch_add(spool_pos, Ordering::Relaxed);
        self.cur = Some(Spool { layer, file, index });
        Ok(())
    }

    /// Copy `n` bytes of `r` to `w` (or skip them when `w` is `None`). Write errors come
    /// back as `Error::Io` with an empty context.
    fn copy(
        &self,
        r: &mut impl Read,
        mut n: u64,
        mut w: Option<&mut FileAt<'_>>,
        buf: &mut [u8],
        what: &str,
    ) -> Result<()> {
        while n > 0 {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
            let k = (n.min(buf.len() as u64)) as usize;
            let got = match r.read(&mut buf[..k]) {
                Ok(0) => {
                    return Err(Error::Corrupt(format!(
                        "{what}: tar ends before the file data it declared"
                    )))
                }
                Ok(g) => g,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::from_content_io(what, e)),
            };
            if let Some(w) = w.as_mut() {
                w.write(&buf[..got]).map_err(|e| Error::io("", e))?;
            }
            n -= got as u64;
        }
        Ok(())
    }
}

struct FileAt<'f> {
    file: &'f File,
    pos: u64,
}

impl FileAt<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<()> {
        self.file.write_all_at(b, self.pos)?;
        self.pos += b.len() as u64;
        Ok(())
    }
}

impl lf::DataSource for Spooler<'_> {
    fn read_at(&mut self, file: lf::FileId, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let d = *usize::try_from(file.0)
            .ok()
            .and_then(|i| self.sources.get(i))
            .ok_or_else(|| invalid(format!("unknown file id {}", file.0)).into_io())?;
        if offset.saturating_add(buf.len() as u64) > d.len {
            return Err(
                invalid(format!("read beyond file {} of {} bytes", file.0, d.len)).into_io(),
            );
        }
        if self.cur.as_ref().map(|s| s.layer) != Some(d.layer) {
            self.spool(d.layer).map_err(Error::into_io)?;
        }
        let s = self
            .cur
            .as_ref()
            .ok_or_else(|| invalid("no spool").into_io())?;
        let i = s
            .index
            .binary_search_by(|e| e.0.cmp(&d.offset))
            .map_err(|_| invalid(format!("file data at {} not spooled", d.offset)).into_io())?;
        let (_, _, at) = s.index[i];
        s.file
            .read_exact_at(buf, at + offset)
            .map_err(|e| Error::io(format!("reading the spool of layer {}", d.layer), e).into_io())
    }
}

// ---------------------------------------------------------------------------------------
// channel reader

enum Msg {
    Data(Vec<u8>),
    Done,
    Err(Error),
}

struct ChanWriter {
    tx: SyncSender<Msg>,
    buf: Vec<u8>,
    recycle: Receiver<Vec<u8>>,
}

impl ChanWriter {
    fn flush_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = match self.recycle.try_recv() {
            Ok(mut b) => {
                b.clear();
                b
            }
            Err(_) => Vec::with_capacity(CHANNEL_BUF),
        };
        let full = std::mem::replace(&mut self.buf, next);
        self.tx
            .send(Msg::Data(full))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "reader dropped"))
    }
}

impl Write for ChanWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let room = CHANNEL_BUF - self.buf.len();
        let n = b.len().min(room);
        self.buf.extend_from_slice(&b[..n]);
        if self.buf.len() >= CHANNEL_BUF {
            self.flush_buf()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum State {
    Running,
    Done,
    Failed(io::ErrorKind, String),
}

/// The bytes of an [`Ext4Image`], produced by a background thread
/// ([`Ext4Image::into_reader`]). Exactly [`Ext4Reader::size`] bytes, then EOF; or an error.
#[derive(Debug)]
pub struct Ext4Reader {
    rx: Receiver<Msg>,
    cur: Vec<u8>,
    pos: usize,
    total: u64,
    size: u64,
    state: State,
    cancel: Arc<AtomicBool>,
    recycle: Sender<Vec<u8>>,
    spooled: Arc<AtomicU64>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Running => f.write_str("Running"),
            State::Done => f.write_str("Done"),
            State::Failed(_, m) => write!(f, "Failed({m})"),
        }
    }
}

impl Ext4Reader {
    /// Total size of the stream in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes of layer data spooled to disk so far (all layers together).
    pub fn spooled_bytes(&self) -> u64 {
        self.spooled.load(Ordering::Relaxed)
    }

    fn fail(&mut self, kind: io::ErrorKind, msg: String) -> io::Error {
        self.state = State::Failed(kind, msg.clone());
        io::Error::new(kind, msg)
    }
}

impl Read for Ext4Reader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pos < self.cur.len() {
                let n = out.len().min(self.cur.len() - self.pos);
                out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
                self.pos += n;
                self.total += n as u64;
                return Ok(n);
            }
            match &self.state {
                State::Done => return Ok(0),
                State::Failed(kind, m) => return Err(io::Error::new(*kind, m.clone())),
                State::Running => {}
            }
            match self.rx.recv() {
                Ok(Msg::Data(v)) => {
                    let old = std::mem::replace(&mut self.cur, v);
                    self.pos = 0;
                    if old.capacity() == CHANNEL_BUF {
                        let _ = self.recycle.send(old);
                    }
                    if self.total + self.cur.len() as u64 > self.size {
                        let m = format!("ext4 writer produced more than {} bytes", self.size);
                        return Err(self.fail(io::ErrorKind::InvalidData, m));
                    }
                }
                Ok(Msg::Done) => {
                    if self.total != self.size {
                        let m = format!(
                            "ext4 writer stopped after {} of {} bytes",
                            self.total, self.size
                        );
                        return Err(self.fail(io::ErrorKind::UnexpectedEof, m));
                    }
                    self.state = State::Done;
                    return Ok(0);
                }
                Ok(Msg::Err(e)) => {
                    let kind = match &e {
                        Error::Io { source, .. } => source.kind(),
                        _ => io::ErrorKind::InvalidData,
                    };
                    self.state = State::Failed(kind, e.to_string());
                    return Err(io::Error::new(kind, e));
                }
                Err(_) => {
                    let m = "ext4 writer thread ended without finishing (panic?)".to_string();
                    return Err(self.fail(io::ErrorKind::BrokenPipe, m));
                }
            }
        }
    }
}

impl Drop for Ext4Reader {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}
