//! Layout planning: inode numbers, block positions, and all metadata bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::error::{Error, Result};
use crate::model::{
    display_path, split_path, Attrs, DirVersion, Entry, FileContent, FileType, Kind, PathKey,
    Segment, Slot, Tree, MAX_SYMLINK_LEN,
};
use crate::raw::{self, DirEnt, Extent, InodeFields, XattrEnt, BLOCK, BLOCKS_PER_GROUP, BLOCK_U64};

/// Default dedup chunk size and region alignment: 512 KiB.
pub const DEFAULT_CHUNK_SIZE: u64 = 512 * 1024;

/// Free space left for guest writes: `max(used * percent / 100, min_bytes)`, rounded up so the
/// image ends on a chunk boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headroom {
    /// Percentage of the used blocks (metadata + live data).
    pub percent: u32,
    /// Lower bound in bytes.
    pub min_bytes: u64,
}

impl Default for Headroom {
    fn default() -> Self {
        Headroom {
            percent: 25,
            min_bytes: 16 << 20,
        }
    }
}

/// Parameters of one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Filesystem UUID (callers derive it from the image digest). Nothing else depends on it.
    pub uuid: [u8; 16],
    /// Volume label (NUL padded).
    pub label: [u8; 16],
    /// Dedup chunk size = alignment of every region, a power of two from 4 KiB to 128 MiB.
    pub chunk_size: u64,
    /// Free blocks for guest writes.
    pub headroom: Headroom,
    /// At least this many free inodes.
    pub min_free_inodes: u32,
    /// At least this percentage of the used inodes free.
    pub free_inode_percent: u32,
    /// Create `/lost+found` (layer 0, 16 KiB, mode 0700, root's time) unless the tree has one.
    pub lost_and_found: bool,
}

impl Options {
    /// Defaults (512 KiB chunks, 25% / 16 MiB headroom, ≥ 16384 and ≥ 25% free inodes,
    /// lost+found) with this UUID.
    pub fn new(uuid: [u8; 16]) -> Self {
        Options {
            uuid,
            label: [0; 16],
            chunk_size: DEFAULT_CHUNK_SIZE,
            headroom: Headroom::default(),
            min_free_inodes: 16384,
            free_inode_percent: 25,
            lost_and_found: true,
        }
    }
}

/// What a region of the image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RegionKind {
    /// Superblock and group descriptors (and the bitmaps when they fit).
    Head,
    /// File data of one layer (live and hidden), chunk aligned.
    LayerData(u32),
    /// Directory, extent-index, xattr and long-symlink blocks of one layer, chunk aligned.
    LayerMeta(u32),
    /// Block and inode bitmaps (when they do not fit in the head).
    Bitmaps,
    /// All inode tables, contiguous.
    InodeTable,
    /// Free headroom up to the end.
    Headroom,
}

/// One region: `blocks` 4 KiB blocks from `start_block` (the used part; padding to the next
/// chunk boundary is free and zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// What it holds.
    pub kind: RegionKind,
    /// First block.
    pub start_block: u64,
    /// Length in blocks.
    pub blocks: u64,
}

/// The inode numbers of one layer: `first..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerInodes {
    /// Layer index.
    pub layer: u32,
    /// First inode number of the range (chunk aligned in the inode table, except layer 0
    /// whose range starts at 1 with the reserved inodes).
    pub first: u32,
    /// One past the last allocated number.
    pub end: u32,
}

/// What the writer laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Image size in bytes.
    pub size_bytes: u64,
    /// Blocks of 4 KiB.
    pub blocks: u64,
    /// Free blocks (headroom, alignment padding, hidden data).
    pub free_blocks: u64,
    /// Block groups.
    pub groups: u32,
    /// Inodes per group.
    pub inodes_per_group: u32,
    /// Inodes in total.
    pub inodes: u32,
    /// Free inodes.
    pub free_inodes: u32,
    /// Blocks of live file data.
    pub data_blocks: u64,
    /// Blocks of hidden (free but written) lower-layer data and earlier directory versions
    /// ([`crate::DirVersion`]).
    pub hidden_blocks: u64,
    /// Blocks of metadata (head, bitmaps, inode tables, layer metadata).
    pub metadata_blocks: u64,
    /// The chunk size everything is aligned to.
    pub chunk_size: u64,
    /// Regions in block order.
    pub regions: Vec<Region>,
    /// Inode ranges per inode layer.
    pub layer_inodes: Vec<LayerInodes>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ext4 image: {} bytes, {} blocks ({} free), {} groups x {} inodes ({} free), chunk {} KiB",
            self.size_bytes,
            self.blocks,
            self.free_blocks,
            self.groups,
            self.inodes_per_group,
            self.free_inodes,
            self.chunk_size / 1024
        )?;
        writeln!(
            f,
            "  data {} blocks, hidden {} blocks, metadata {} blocks",
            self.data_blocks, self.hidden_blocks, self.metadata_blocks
        )?;
        for r in &self.regions {
            writeln!(
                f,
                "  {:?}: blocks {}..{}",
                r.kind,
                r.start_block,
                r.start_block + r.blocks
            )?;
        }
        for l in &self.layer_inodes {
            writeln!(f, "  layer {} inodes {}..{}", l.layer, l.first, l.end)?;
        }
        Ok(())
    }
}

/// A file whose bytes are streamed: runs of (logical block, count, physical block).
#[derive(Debug, Clone)]
pub(crate) struct PlacedFile {
    pub(crate) content: FileContent,
    pub(crate) runs: Vec<(u64, u64, u64)>,
}

/// A fully computed image, ready to stream.
#[derive(Debug, Clone)]
pub struct Plan {
    pub(crate) summary: Summary,
    /// Bytes from block 0 (superblock, descriptors, maybe bitmaps), whole blocks.
    pub(crate) head: Vec<u8>,
    pub(crate) bitmaps: Option<(u64, Vec<u8>)>,
    pub(crate) meta: BTreeMap<u64, Vec<u8>>,
    pub(crate) inodes: BTreeMap<u32, [u8; raw::INODE_SIZE]>,
    pub(crate) itable_start: u64,
    pub(crate) itable_blocks: u64,
    pub(crate) files: Vec<PlacedFile>,
}

impl Plan {
    /// The layout summary.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }
}

// ---------------------------------------------------------------------------------------------

const MAX_LINKS: u32 = 65000;
const MIN_SECS: i64 = -(1 << 31);
const MAX_SECS: i64 = (1 << 33) + (1 << 31) - 1;
const MAX_FILE_BLOCKS: u64 = (1 << 32) - 1;

struct Node<'a> {
    key: PathKey,
    entry: &'a Entry,
    ino: u32,
    links: u32,
    subdirs: u32,
    children: Vec<(&'a [u8], usize)>,
    parent: usize,
    runs: Vec<(u64, u64)>,
    data_start: u64,
    xattrs: Vec<XattrEnt>,
    ibody: Option<Vec<u8>>,
    min_dir_blocks: u64,
    /// Blocks in the layer's metadata region: (dir/extent-tree/symlink blocks, xattr block).
    meta_main: u64,
    meta_xattr: u64,
    meta_start: u64,
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Records the region `[start, pos)` if it is not empty and returns where the next region
/// starts: `pos` aligned up to a chunk boundary.
fn close_region(
    regions: &mut Vec<Region>,
    kind: RegionKind,
    start: u64,
    pos: u64,
    align: u64,
) -> u64 {
    if pos == start {
        return pos;
    }
    regions.push(Region {
        kind,
        start_block: start,
        blocks: pos - start,
    });
    align_up(pos, align)
}

fn validate_attrs(path: &str, a: &Attrs) -> Result<Vec<XattrEnt>> {
    if a.mode & !0o7777 != 0 {
        return Err(Error::invalid(format!(
            "{path}: mode {:o} has bits outside 0o7777",
            a.mode
        )));
    }
    if a.mtime.nanos >= 1_000_000_000 {
        return Err(Error::invalid(format!("{path}: nanoseconds out of range")));
    }
    if a.mtime.secs < MIN_SECS || a.mtime.secs > MAX_SECS {
        return Err(Error::invalid(format!(
            "{path}: time {} outside the ext4 range {MIN_SECS}..={MAX_SECS}",
            a.mtime.secs
        )));
    }
    let mut out = Vec::with_capacity(a.xattrs.len());
    for (name, value) in &a.xattrs {
        let (index, suffix) = raw::xattr_index(name).ok_or_else(|| {
            Error::invalid(format!(
                "{path}: unsupported xattr namespace in {:?} (user., trusted., security. only)",
                String::from_utf8_lossy(name)
            ))
        })?;
        if suffix.is_empty() || suffix.len() > 255 || suffix.contains(&0) {
            return Err(Error::invalid(format!(
                "{path}: bad xattr name {:?}",
                String::from_utf8_lossy(name)
            )));
        }
        out.push(XattrEnt {
            index,
            name: suffix.to_vec(),
            value: value.clone(),
        });
    }
    raw::sort_xattrs(&mut out);
    if !out.is_empty() && raw::ibody_xattrs(&out).is_none() && !raw::fits_xattr_block(&out) {
        return Err(Error::too_large(format!(
            "{path}: extended attributes do not fit in one 4 KiB block"
        )));
    }
    Ok(out)
}

/// Allocated logical block runs of a file, after validating its segments.
/// Logical block runs `(first block, count)` of a file's allocated blocks.
type Runs = Vec<(u64, u64)>;

fn file_runs(path: &str, c: &FileContent) -> Result<Runs> {
    if c.size.div_ceil(BLOCK_U64) > MAX_FILE_BLOCKS {
        return Err(Error::too_large(format!(
            "{path}: file size {} exceeds ext4's 16 TiB",
            c.size
        )));
    }
    let mut segs: Vec<Segment> = c.segments.iter().copied().filter(|s| s.len > 0).collect();
    segs.sort();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut prev_end = 0u64;
    for s in &segs {
        let end = s
            .offset
            .checked_add(s.len)
            .filter(|&e| e <= c.size)
            .ok_or_else(|| Error::invalid(format!("{path}: segment beyond the file size")))?;
        if s.offset < prev_end {
            return Err(Error::invalid(format!("{path}: overlapping segments")));
        }
        prev_end = end;
        let b0 = s.offset / BLOCK_U64;
        let b1 = end.div_ceil(BLOCK_U64);
        match runs.last_mut() {
            Some((start, n)) if *start + *n >= b0 => *n = (*n).max(b1 - *start),
            _ => runs.push((b0, b1 - b0)),
        }
    }
    Ok(runs)
}

fn extents_of(runs: &[(u64, u64)], phys_start: u64) -> Vec<Extent> {
    let mut out = Vec::new();
    let mut phys = phys_start;
    for &(l, n) in runs {
        let mut off = 0;
        while off < n {
            let len = (n - off).min(raw::MAX_EXTENT_LEN);
            out.push(Extent {
                logical: (l + off) as u32,
                len: len as u16,
                phys: phys + off,
            });
            off += len;
        }
        phys += n;
    }
    out
}

fn run_blocks(runs: &[(u64, u64)]) -> u64 {
    runs.iter().map(|r| r.1).sum()
}

fn file_type(kind: &Kind) -> (u16, u8) {
    match kind {
        Kind::Dir => (raw::S_IFDIR, raw::FT_DIR),
        Kind::File(_) => (raw::S_IFREG, raw::FT_REG),
        Kind::Symlink(_) => (raw::S_IFLNK, raw::FT_SYMLINK),
        Kind::CharDevice { .. } => (raw::S_IFCHR, raw::FT_CHR),
        Kind::BlockDevice { .. } => (raw::S_IFBLK, raw::FT_BLK),
        Kind::Fifo => (raw::S_IFIFO, raw::FT_FIFO),
        Kind::Socket => (raw::S_IFSOCK, raw::FT_SOCK),
    }
}

/// Computes the complete layout of `tree`.
pub fn plan(tree: &Tree, opts: &Options) -> Result<Plan> {
    let cs = opts.chunk_size;
    if !cs.is_power_of_two() || !(BLOCK_U64..=BLOCKS_PER_GROUP * BLOCK_U64).contains(&cs) {
        return Err(Error::invalid(format!(
            "chunk size {cs} must be a power of two from 4 KiB to 128 MiB"
        )));
    }
    let align = cs / BLOCK_U64; // blocks
    let inodes_per_chunk = (cs / raw::INODE_SIZE as u64).max(1);

    // ---- collect nodes -----------------------------------------------------------------------
    let lf_entry = Entry::new(Kind::Dir, Attrs::new(0o700, 0, 0, tree.root.attrs.mtime), 0);
    let lf_key: PathKey = vec![b"lost+found".to_vec()];
    let add_lf = opts.lost_and_found && !tree.entries.contains_key(&lf_key);

    let mut nodes: Vec<Node<'_>> = Vec::with_capacity(tree.entries.len() + 2);
    let mk = |key: PathKey, entry| Node {
        key,
        entry,
        ino: 0,
        links: 1,
        subdirs: 0,
        children: Vec::new(),
        parent: 0,
        runs: Vec::new(),
        data_start: 0,
        xattrs: Vec::new(),
        ibody: None,
        min_dir_blocks: 1,
        meta_main: 0,
        meta_xattr: 0,
        meta_start: 0,
    };
    nodes.push(mk(Vec::new(), &tree.root));
    let mut index: BTreeMap<&PathKey, usize> = BTreeMap::new();
    // Merge the auto lost+found into the ordered walk.
    let mut ordered: Vec<(&PathKey, &Slot)> = tree.entries.iter().collect();
    let lf_slot = Slot::Node(lf_entry);
    if add_lf {
        let pos = ordered.partition_point(|(k, _)| **k < lf_key);
        ordered.insert(pos, (&lf_key, &lf_slot));
    }
    let mut links: Vec<(usize, usize)> = Vec::new(); // (parent node, target node) per link name
    for (key, slot) in &ordered {
        let path = display_path(key);
        let parent_key = key[..key.len() - 1].to_vec();
        let parent = if parent_key.is_empty() {
            0
        } else {
            *index
                .get(&parent_key)
                .ok_or_else(|| Error::invalid(format!("{path}: parent directory is missing")))?
        };
        if !matches!(nodes[parent].entry.kind, Kind::Dir) {
            return Err(Error::invalid(format!("{path}: parent is not a directory")));
        }
        let name: &[u8] = key.last().map(|v| v.as_slice()).unwrap_or_default();
        match slot {
            Slot::Node(e) => {
                let i = nodes.len();
                let mut n = mk((*key).clone(), e);
                n.parent = parent;
                if add_lf && **key == lf_key {
                    n.min_dir_blocks = 4;
                }
                nodes.push(n);
                index.insert(key, i);
                nodes[parent].children.push((name, i));
                if matches!(e.kind, Kind::Dir) {
                    nodes[parent].subdirs += 1;
                }
            }
            Slot::Link(_) => links.push((parent, usize::MAX)),
        }
    }
    // Resolve hard links (targets may sort after the link name).
    let mut li = 0;
    for (key, slot) in &ordered {
        if let Slot::Link(target) = slot {
            let path = display_path(key);
            let t = *index.get(target).ok_or_else(|| {
                Error::invalid(format!(
                    "{path}: hard link target {} is missing",
                    display_path(target)
                ))
            })?;
            if matches!(nodes[t].entry.kind, Kind::Dir) {
                return Err(Error::invalid(format!("{path}: hard link to a directory")));
            }
            nodes[t].links += 1;
            if nodes[t].links > MAX_LINKS {
                return Err(Error::too_large(format!(
                    "{}: more than {MAX_LINKS} links",
                    display_path(target)
                )));
            }
            let parent = links[li].0;
            let name: &[u8] = key.last().map(|v| v.as_slice()).unwrap_or_default();
            nodes[parent].children.push((name, t));
            li += 1;
        }
    }
    for n in &mut nodes {
        n.children.sort_by(|a, b| a.0.cmp(b.0));
    }

    // ---- validate entries ----------------------------------------------------------------------
    for n in &mut nodes {
        let path = display_path(&n.key);
        let e = n.entry;
        if e.ino_layer() > e.layer {
            return Err(Error::invalid(format!(
                "{path}: inode layer above content layer"
            )));
        }
        n.xattrs = validate_attrs(&path, &e.attrs)?;
        match &e.kind {
            Kind::File(c) => n.runs = file_runs(&path, c)?,
            Kind::Symlink(t) => {
                if t.is_empty() || t.len() > MAX_SYMLINK_LEN || t.contains(&0) {
                    return Err(Error::invalid(format!(
                        "{path}: symlink target must be 1..={MAX_SYMLINK_LEN} bytes without NUL"
                    )));
                }
            }
            Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                if *major >= 1 << 12 || *minor >= 1 << 20 {
                    return Err(Error::invalid(format!(
                        "{path}: device number out of range"
                    )));
                }
            }
            Kind::Dir | Kind::Fifo | Kind::Socket => {}
        }
    }
    let mut hidden_runs: BTreeMap<(u32, &PathKey), (Runs, &FileContent)> = BTreeMap::new();
    for ((layer, key), h) in &tree.hidden {
        let path = display_path(key);
        if h.inode_layer.unwrap_or(*layer) > *layer {
            return Err(Error::invalid(format!(
                "{path}: hidden inode layer above its layer"
            )));
        }
        if let Some(c) = &h.content {
            let runs = file_runs(&path, c)?;
            if !runs.is_empty() {
                hidden_runs.insert((*layer, key), (runs, c));
            }
        }
    }

    // ---- inode numbers ---------------------------------------------------------------------------
    let mut slots: BTreeMap<(u32, PathKey), Option<usize>> = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate().skip(1) {
        slots.insert((n.entry.ino_layer(), n.key.clone()), Some(i));
    }
    for ((layer, key), h) in &tree.hidden {
        slots
            .entry((h.inode_layer.unwrap_or(*layer), key.clone()))
            .or_insert(None);
    }
    nodes[0].ino = raw::ROOT_INO;
    let mut slot_ino: BTreeMap<(u32, PathKey), u32> = BTreeMap::new();
    let mut layer_inodes: Vec<LayerInodes> = Vec::new();
    let mut next: u64 = u64::from(raw::FIRST_INO);
    let mut cur_layer: Option<u32> = None;
    for ((layer, key), node) in &slots {
        if cur_layer != Some(*layer) {
            let first = if cur_layer.is_none() && *layer == 0 {
                1
            } else {
                next = align_up(next - 1, inodes_per_chunk) + 1;
                next
            };
            layer_inodes.push(LayerInodes {
                layer: *layer,
                first: first as u32,
                end: next as u32,
            });
            cur_layer = Some(*layer);
        }
        if next > u64::from(u32::MAX) {
            return Err(Error::too_large("more than 2^32 inodes"));
        }
        if let Some(i) = node {
            nodes[*i].ino = next as u32;
        }
        if !tree.versions.is_empty() {
            slot_ino.insert((*layer, key.clone()), next as u32);
        }
        next += 1;
        if let Some(l) = layer_inodes.last_mut() {
            l.end = next as u32;
        }
    }
    let used_ino_end = next; // one past the highest allocated number
    let live_inodes = nodes.len() as u64 + u64::from(raw::FIRST_INO) - 2; // + reserved 1..=10 except root counted in nodes
    let free_wanted =
        u64::from(opts.min_free_inodes).max(live_inodes * u64::from(opts.free_inode_percent) / 100);
    let inodes_needed = used_ino_end - 1 + free_wanted;

    // ---- per-node metadata sizes ---------------------------------------------------------------
    for n in &mut nodes {
        if !n.xattrs.is_empty() {
            n.ibody = raw::ibody_xattrs(&n.xattrs);
            n.meta_xattr = u64::from(n.ibody.is_none());
        }
        n.meta_main = match &n.entry.kind {
            Kind::Dir => {
                let names = [1usize, 2]
                    .into_iter()
                    .chain(n.children.iter().map(|c| c.0.len()));
                let b = raw::dir_block_count(names, n.min_dir_blocks);
                if b > 4 * raw::MAX_EXTENT_LEN {
                    return Err(Error::too_large(format!(
                        "{}: directory too large",
                        display_path(&n.key)
                    )));
                }
                b
            }
            Kind::File(_) => raw::extent_tree_blocks(extents_of(&n.runs, 0).len()),
            Kind::Symlink(t) if t.len() >= 60 => 1,
            _ => 0,
        };
    }

    // ---- block layout ----------------------------------------------------------------------------
    let mut content_layers: BTreeSet<u32> = nodes.iter().map(|n| n.entry.layer).collect();
    content_layers.extend(hidden_runs.keys().map(|k| k.0));
    content_layers.extend(tree.versions.keys().map(|k| k.0));
    // Data items per layer, in canonical order: (layer, key, hidden?) -> node or hidden
    #[derive(Clone, Copy)]
    enum Item<'b> {
        Live(usize),
        Hidden(&'b FileContent, &'b [(u64, u64)]),
    }
    let mut data_items: BTreeMap<(u32, PathKey, bool), Item<'_>> = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        if matches!(n.entry.kind, Kind::File(_)) && !n.runs.is_empty() {
            data_items.insert((n.entry.layer, n.key.clone(), false), Item::Live(i));
        }
    }
    for ((layer, key), (runs, c)) in &hidden_runs {
        data_items.insert((*layer, (*key).clone(), true), Item::Hidden(c, runs));
    }
    // Metadata items per layer in canonical order: live nodes, then (for the same path, which
    // does not happen in practice) earlier directory versions.
    #[derive(Clone, Copy)]
    enum MetaItem {
        Node(usize),
        Version(usize),
    }
    let mut meta_order: BTreeMap<(u32, PathKey, bool), MetaItem> = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        if n.meta_main + n.meta_xattr > 0 {
            meta_order.insert((n.entry.layer, n.key.clone(), false), MetaItem::Node(i));
        }
    }
    // Earlier directory versions: (layer, path, version, names incl. an auto lost+found, blocks)
    struct VersionPlan<'v> {
        key: &'v PathKey,
        v: &'v DirVersion,
        lost_found: bool,
        blocks: u64,
        start: u64,
    }
    let mut versions: Vec<VersionPlan<'_>> = Vec::with_capacity(tree.versions.len());
    for ((layer, key), v) in &tree.versions {
        if v.inode_layer > *layer {
            return Err(Error::invalid(format!(
                "{}: directory version with inode layer above its layer",
                display_path(key)
            )));
        }
        let lost_found =
            add_lf && key.is_empty() && !v.entries.iter().any(|e| e.name == b"lost+found");
        let names = [1usize, 2]
            .into_iter()
            .chain(v.entries.iter().map(|e| e.name.len()))
            .chain(lost_found.then_some(10));
        let min = if add_lf && *key == lf_key { 4 } else { 1 };
        let blocks = raw::dir_block_count(names, min);
        if blocks > 4 * raw::MAX_EXTENT_LEN {
            return Err(Error::too_large(format!(
                "{}: directory version too large",
                display_path(key)
            )));
        }
        meta_order.insert(
            (*layer, key.clone(), true),
            MetaItem::Version(versions.len()),
        );
        versions.push(VersionPlan {
            key,
            v,
            lost_found,
            blocks,
            start: 0,
        });
    }

    let mut groups: u64 = 1;
    let (head_blocks, gdt_blocks, bitmaps_in_head, ipg, total, regions, itable_start, bitmap_start) = loop {
        let gdt_blocks = (groups * raw::DESC_SIZE as u64).div_ceil(BLOCK_U64);
        let head_blocks = align_up(1 + gdt_blocks, align);
        let bitmaps_in_head = 1 + gdt_blocks + 2 * groups <= head_blocks;
        let ipg = align_up(inodes_needed.div_ceil(groups), raw::INODES_PER_BLOCK);
        if ipg > raw::MAX_INODES_PER_GROUP {
            groups = inodes_needed.div_ceil(raw::MAX_INODES_PER_GROUP);
            continue;
        }
        let mut regions = vec![Region {
            kind: RegionKind::Head,
            start_block: 0,
            blocks: 1 + gdt_blocks + if bitmaps_in_head { 2 * groups } else { 0 },
        }];
        let mut pos = head_blocks;
        let mut used = regions[0].blocks;
        for &layer in &content_layers {
            let start = pos;
            for (_, item) in data_items
                .range((layer, Vec::new(), false)..)
                .take_while(|(k, _)| k.0 == layer)
            {
                match item {
                    Item::Live(i) => {
                        nodes[*i].data_start = pos;
                        let b = run_blocks(&nodes[*i].runs);
                        pos += b;
                        used += b;
                    }
                    Item::Hidden(_, runs) => pos += run_blocks(runs),
                }
            }
            pos = close_region(
                &mut regions,
                RegionKind::LayerData(layer),
                start,
                pos,
                align,
            );
            let start = pos;
            for (_, item) in meta_order
                .range((layer, Vec::new(), false)..)
                .take_while(|(k, _)| k.0 == layer)
            {
                match *item {
                    MetaItem::Node(i) => {
                        nodes[i].meta_start = pos;
                        let b = nodes[i].meta_main + nodes[i].meta_xattr;
                        pos += b;
                        used += b;
                    }
                    MetaItem::Version(vi) => {
                        versions[vi].start = pos;
                        pos += versions[vi].blocks;
                    }
                }
            }
            pos = close_region(
                &mut regions,
                RegionKind::LayerMeta(layer),
                start,
                pos,
                align,
            );
        }
        let mut bitmap_start = 1 + gdt_blocks;
        if !bitmaps_in_head {
            bitmap_start = pos;
            regions.push(Region {
                kind: RegionKind::Bitmaps,
                start_block: pos,
                blocks: 2 * groups,
            });
            pos = align_up(pos + 2 * groups, align);
            used += 2 * groups;
        }
        let itable_start = pos;
        let itable_blocks = groups * ipg / raw::INODES_PER_BLOCK;
        regions.push(Region {
            kind: RegionKind::InodeTable,
            start_block: pos,
            blocks: itable_blocks,
        });
        pos += itable_blocks;
        used += itable_blocks;
        let headroom = (used * u64::from(opts.headroom.percent) / 100)
            .max(opts.headroom.min_bytes.div_ceil(BLOCK_U64));
        let mut total = align_up(pos + headroom, align);
        let need = total.div_ceil(BLOCKS_PER_GROUP);
        if need > groups {
            groups = need;
            continue;
        }
        if need < groups {
            total = align_up((groups - 1) * BLOCKS_PER_GROUP + 1, align);
        }
        if pos < total {
            regions.push(Region {
                kind: RegionKind::Headroom,
                start_block: pos,
                blocks: total - pos,
            });
        }
        break (
            head_blocks,
            gdt_blocks,
            bitmaps_in_head,
            ipg,
            total,
            regions,
            itable_start,
            bitmap_start,
        );
    };
    let _ = head_blocks;
    if total >= 1 << 48 {
        return Err(Error::too_large("image larger than 2^48 blocks"));
    }
    let inodes_count = groups * ipg;
    if inodes_count > u64::from(u32::MAX) {
        return Err(Error::too_large("more than 2^32 inodes"));
    }

    // ---- metadata content --------------------------------------------------------------------------
    let mut bbm = vec![0u8; (groups * BLOCKS_PER_GROUP / 8) as usize];
    raw::set_bits(&mut bbm, 0, 1 + gdt_blocks);
    raw::set_bits(&mut bbm, bitmap_start, bitmap_start + 2 * groups);
    let itable_blocks = groups * ipg / raw::INODES_PER_BLOCK;
    raw::set_bits(&mut bbm, itable_start, itable_start + itable_blocks);
    raw::set_bits(&mut bbm, total, groups * BLOCKS_PER_GROUP);
    let mut ibm = vec![0u8; (inodes_count / 8) as usize];
    raw::set_bits(&mut ibm, 0, u64::from(raw::FIRST_INO) - 1);

    let mut meta: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut inodes: BTreeMap<u32, [u8; raw::INODE_SIZE]> = BTreeMap::new();
    let mut files: Vec<PlacedFile> = Vec::new();
    let mut data_blocks = 0u64;
    let mut dirs_per_group = vec![0u32; groups as usize];
    for i in 0..nodes.len() {
        let n = &nodes[i];
        let e = n.entry;
        let ino = n.ino;
        let (ifmt, _) = file_type(&e.kind);
        let mut f = InodeFields {
            mode: ifmt | e.attrs.mode,
            uid: e.attrs.uid,
            gid: e.attrs.gid,
            size: 0,
            links: n.links as u16,
            sectors: 0,
            flags: 0,
            i_block: [0; 60],
            file_acl: 0,
            time: e.attrs.mtime,
            ibody_xattr: n.ibody.clone(),
        };
        let mut own_blocks = 0u64;
        match &e.kind {
            Kind::Dir => {
                let parent_ino = nodes[n.parent].ino;
                let mut ents = vec![
                    DirEnt {
                        ino,
                        ftype: raw::FT_DIR,
                        name: b".",
                    },
                    DirEnt {
                        ino: parent_ino,
                        ftype: raw::FT_DIR,
                        name: b"..",
                    },
                ];
                for &(name, c) in &n.children {
                    ents.push(DirEnt {
                        ino: nodes[c].ino,
                        ftype: file_type(&nodes[c].entry.kind).1,
                        name,
                    });
                }
                let blocks = raw::build_dir_blocks(ino, &ents, n.min_dir_blocks);
                debug_assert_eq!(blocks.len() as u64, n.meta_main);
                let nb = blocks.len() as u64;
                for (k, b) in blocks.into_iter().enumerate() {
                    meta.insert(n.meta_start + k as u64, b);
                }
                let (root, _) =
                    raw::build_extent_tree(ino, &extents_of(&[(0, nb)], n.meta_start), 0);
                f.i_block = root;
                f.flags = raw::EXTENTS_FL;
                f.size = nb * BLOCK_U64;
                own_blocks = nb;
                let links = 2 + n.subdirs;
                f.links = if links > MAX_LINKS { 1 } else { links as u16 };
                dirs_per_group[((ino - 1) as u64 / ipg) as usize] += 1;
            }
            Kind::File(c) => {
                let ext = extents_of(&n.runs, n.data_start);
                let (root, tree_blocks) = raw::build_extent_tree(ino, &ext, n.meta_start);
                for (k, b) in tree_blocks.into_iter().enumerate() {
                    meta.insert(n.meta_start + k as u64, b);
                }
                f.i_block = root;
                f.flags = raw::EXTENTS_FL;
                f.size = c.size;
                let nb = run_blocks(&n.runs);
                own_blocks = nb + n.meta_main;
                data_blocks += nb;
                raw::set_bits(&mut bbm, n.data_start, n.data_start + nb);
            }
            Kind::Symlink(t) => {
                f.size = t.len() as u64;
                if t.len() < 60 {
                    f.i_block[..t.len()].copy_from_slice(t);
                } else {
                    let mut b = vec![0u8; BLOCK];
                    b[..t.len()].copy_from_slice(t);
                    meta.insert(n.meta_start, b);
                    let (root, _) =
                        raw::build_extent_tree(ino, &extents_of(&[(0, 1)], n.meta_start), 0);
                    f.i_block = root;
                    f.flags = raw::EXTENTS_FL;
                    own_blocks = 1;
                }
            }
            Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                f.i_block = raw::device_block(*major, *minor);
            }
            Kind::Fifo | Kind::Socket => {}
        }
        if n.meta_xattr == 1 {
            let blk = n.meta_start + n.meta_main;
            meta.insert(blk, raw::xattr_block(&n.xattrs, blk));
            f.file_acl = blk;
            own_blocks += 1;
        }
        raw::set_bits(
            &mut bbm,
            n.meta_start,
            n.meta_start + n.meta_main + n.meta_xattr,
        );
        f.sectors = own_blocks * (BLOCK_U64 / 512);
        inodes.insert(ino, raw::encode_inode(ino, &f));
        raw::set_bits(&mut ibm, u64::from(ino) - 1, u64::from(ino));
    }
    // Reserved inodes 1, 3..=10: zeroed with a valid checksum, in use.
    for ino in (1..raw::FIRST_INO).filter(|&i| i != raw::ROOT_INO) {
        let f = InodeFields {
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            links: 0,
            sectors: 0,
            flags: 0,
            i_block: [0; 60],
            file_acl: 0,
            time: Default::default(),
            ibody_xattr: None,
        };
        inodes.insert(ino, raw::encode_inode(ino, &f));
    }
    // Earlier directory versions: written, left free.
    let mut hidden_blocks = 0u64;
    let lf_ino = index.get(&lf_key).map(|&i| nodes[i].ino);
    let slot_of = |layer: u32, path: &[u8]| -> Option<u32> {
        if path.iter().all(|&b| b == b'/') {
            return Some(raw::ROOT_INO);
        }
        let key = split_path(path).ok()?;
        slot_ino.get(&(layer, key)).copied()
    };
    for vp in &versions {
        let ino = if vp.key.is_empty() {
            Some(raw::ROOT_INO)
        } else {
            slot_ino.get(&(vp.v.inode_layer, vp.key.clone())).copied()
        };
        hidden_blocks += vp.blocks;
        let Some(ino) = ino else {
            continue; // no slot: leave the blocks zero (dedup only)
        };
        let parent = if vp.key.is_empty() {
            raw::ROOT_INO
        } else {
            slot_of(vp.v.parent.0, &vp.v.parent.1).unwrap_or(0)
        };
        let mut ents = vec![
            DirEnt {
                ino,
                ftype: raw::FT_DIR,
                name: b".",
            },
            DirEnt {
                ino: parent,
                ftype: raw::FT_DIR,
                name: b"..",
            },
        ];
        let mut children: Vec<DirEnt<'_>> =
            vp.v.entries
                .iter()
                .map(|e| DirEnt {
                    ino: slot_of(e.inode_layer, &e.inode_path).unwrap_or(0),
                    ftype: match e.file_type {
                        FileType::Dir => raw::FT_DIR,
                        FileType::File => raw::FT_REG,
                        FileType::Symlink => raw::FT_SYMLINK,
                        FileType::CharDevice => raw::FT_CHR,
                        FileType::BlockDevice => raw::FT_BLK,
                        FileType::Fifo => raw::FT_FIFO,
                        FileType::Socket => raw::FT_SOCK,
                    },
                    name: &e.name,
                })
                .collect();
        if vp.lost_found {
            children.push(DirEnt {
                ino: lf_ino.unwrap_or(0),
                ftype: raw::FT_DIR,
                name: b"lost+found",
            });
        }
        children.sort_by(|a, b| a.name.cmp(b.name));
        ents.extend(children);
        let min = if add_lf && *vp.key == lf_key { 4 } else { 1 };
        let blocks = raw::build_dir_blocks(ino, &ents, min);
        debug_assert_eq!(blocks.len() as u64, vp.blocks);
        for (k, b) in blocks.into_iter().enumerate() {
            meta.insert(vp.start + k as u64, b);
        }
    }
    // Streamed data (live and hidden) in block order.
    {
        let mut cur_layer = None;
        let mut pos = 0u64;
        for ((layer, _, _), item) in &data_items {
            if cur_layer != Some(*layer) {
                cur_layer = Some(*layer);
                pos = regions
                    .iter()
                    .find(|r| r.kind == RegionKind::LayerData(*layer))
                    .map(|r| r.start_block)
                    .unwrap_or(0);
            }
            match item {
                Item::Live(i) => {
                    let n = &nodes[*i];
                    debug_assert_eq!(n.data_start, pos);
                    if let Kind::File(c) = &n.entry.kind {
                        files.push(placed(c, &n.runs, pos));
                    }
                    pos += run_blocks(&n.runs);
                }
                Item::Hidden(c, runs) => {
                    files.push(placed(c, runs, pos));
                    let b = run_blocks(runs);
                    hidden_blocks += b;
                    pos += b;
                }
            }
        }
    }

    // ---- group descriptors, bitmaps, superblock -------------------------------------------------------
    let mut descs = Vec::with_capacity((gdt_blocks * BLOCK_U64) as usize);
    let mut bitmap_bytes = vec![0u8; (2 * groups * BLOCK_U64) as usize];
    let mut free_blocks_total = 0u64;
    let mut free_inodes_total = 0u64;
    for g in 0..groups {
        let b0 = g * BLOCKS_PER_GROUP;
        let bslice = &bbm[(b0 / 8) as usize..((b0 + BLOCKS_PER_GROUP) / 8) as usize];
        let free_blocks = raw::count_zero_bits(&bbm, b0, (b0 + BLOCKS_PER_GROUP).min(total));
        let i0 = g * ipg;
        let islice = &ibm[(i0 / 8) as usize..((i0 + ipg) / 8) as usize];
        let free_inodes = raw::count_zero_bits(&ibm, i0, i0 + ipg);
        let mut last_used = 0u64;
        for k in (0..ipg).rev() {
            if ibm[((i0 + k) / 8) as usize] >> ((i0 + k) % 8) & 1 == 1 {
                last_used = k + 1;
                break;
            }
        }
        let boff = (g * BLOCK_U64) as usize;
        bitmap_bytes[boff..boff + BLOCK].copy_from_slice(bslice);
        let ioff = ((groups + g) * BLOCK_U64) as usize;
        bitmap_bytes[ioff..ioff + islice.len()].copy_from_slice(islice);
        raw::set_bits(&mut bitmap_bytes[ioff..ioff + BLOCK], ipg, 8 * BLOCK_U64);
        let d = raw::GroupDesc {
            block_bitmap: bitmap_start + g,
            inode_bitmap: bitmap_start + groups + g,
            inode_table: itable_start + g * ipg / raw::INODES_PER_BLOCK,
            free_blocks: free_blocks as u32,
            free_inodes: free_inodes as u32,
            used_dirs: dirs_per_group[g as usize],
            itable_unused: (ipg - last_used) as u32,
            block_bitmap_csum: crate::crc::crc32c_raw(raw::CSUM_SEED, bslice),
            inode_bitmap_csum: crate::crc::crc32c_raw(raw::CSUM_SEED, islice),
        };
        descs.extend_from_slice(&raw::encode_group_desc(g as u32, &d));
        free_blocks_total += free_blocks;
        free_inodes_total += free_inodes;
    }
    let sp = raw::SuperParams {
        inodes_count: inodes_count as u32,
        blocks_count: total,
        free_blocks: free_blocks_total,
        free_inodes: free_inodes_total as u32,
        inodes_per_group: ipg as u32,
        log_groups_per_flex: (64 - (groups - 1).leading_zeros()).clamp(4, 31) as u8,
        uuid: opts.uuid,
        label: opts.label,
    };
    let mut head = vec![0u8; ((1 + gdt_blocks) * BLOCK_U64) as usize];
    head[1024..2048].copy_from_slice(&raw::encode_superblock(&sp));
    head[BLOCK..BLOCK + descs.len()].copy_from_slice(&descs);
    let bitmaps = if bitmaps_in_head {
        head.extend_from_slice(&bitmap_bytes);
        None
    } else {
        Some((bitmap_start, bitmap_bytes))
    };

    let used_blocks = total - free_blocks_total;
    let summary = Summary {
        size_bytes: total * BLOCK_U64,
        blocks: total,
        free_blocks: free_blocks_total,
        groups: groups as u32,
        inodes_per_group: ipg as u32,
        inodes: inodes_count as u32,
        free_inodes: free_inodes_total as u32,
        data_blocks,
        hidden_blocks,
        metadata_blocks: used_blocks - data_blocks,
        chunk_size: cs,
        regions,
        layer_inodes,
    };
    Ok(Plan {
        summary,
        head,
        bitmaps,
        meta,
        inodes,
        itable_start,
        itable_blocks,
        files,
    })
}

fn placed(c: &FileContent, runs: &[(u64, u64)], start: u64) -> PlacedFile {
    let mut segs: Vec<Segment> = c.segments.iter().copied().filter(|s| s.len > 0).collect();
    segs.sort();
    let mut phys = start;
    let mut out = Vec::with_capacity(runs.len());
    for &(l, n) in runs {
        out.push((l, n, phys));
        phys += n;
    }
    PlacedFile {
        content: FileContent {
            size: c.size,
            source: c.source,
            segments: segs,
        },
        runs: out,
    }
}
