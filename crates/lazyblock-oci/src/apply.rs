//! Layer application: OCI image-spec changeset semantics onto a [`Tree`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read};

use tar::EntryType;

use crate::digest::{Digest, Expect, VerifyingReader};
use crate::error::{corrupt, invalid, too_large, unsupported, Error, Result};
use crate::tree::{DataRef, Inode, InodeId, Metadata, Name, NodeKind, Timestamp, Tree, ROOT};

/// Whiteout prefix of the OCI image spec.
const WHITEOUT: &[u8] = b".wh.";
/// Opaque-directory marker of the OCI image spec.
const OPAQUE: &[u8] = b".wh..wh..opq";
/// Longest name of one path component (ext4 and Linux limit).
pub const MAX_NAME: usize = 255;
/// Longest symlink target accepted (Linux `PATH_MAX` - 1).
pub const MAX_SYMLINK: usize = 4095;
/// Largest extended attribute value (Linux `XATTR_SIZE_MAX`).
pub const MAX_XATTR_VALUE: usize = 65536;

/// Resource limits applied while reading untrusted images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest uncompressed (expanded) size of one layer tar, in bytes.
    pub max_layer_bytes: u64,
    /// Most tar entries in one layer.
    pub max_entries: u64,
    /// Deepest path (number of components).
    pub max_depth: usize,
    /// Largest JSON blob (index, manifest, config) read into memory.
    pub max_json_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_layer_bytes: 64 << 30,
            max_entries: 4_000_000,
            max_depth: 2048,
            max_json_bytes: 8 << 20,
        }
    }
}

/// What applying one layer saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerStats {
    /// sha256 of the whole uncompressed tar (the layer's diff_id when it is right).
    pub diff_id: Digest,
    /// Uncompressed tar size in bytes.
    pub tar_bytes: u64,
    /// Tar entries (after PAX / GNU long-name processing).
    pub entries: u64,
    /// Regular files (including empty ones).
    pub files: u64,
    /// Bytes of regular file data.
    pub file_bytes: u64,
    /// Whiteout entries including opaque markers.
    pub whiteouts: u64,
    /// Hard link entries.
    pub hard_links: u64,
}

/// Applies layers, bottom first, onto a tree.
///
/// After an error the applier's state is unspecified: drop it.
#[derive(Debug)]
pub struct Applier {
    tree: Tree,
    limits: Limits,
    /// A path each removed inode had, to name hidden data.
    hints: HashMap<InodeId, Vec<u8>>,
}

/// Per-layer bookkeeping.
#[derive(Default)]
struct LayerState {
    /// Entries (parent, name) created or updated by this layer, explicitly or as
    /// missing parents: whiteouts and opaque markers of this layer do not touch them.
    placed: HashSet<(InodeId, Name)>,
    /// Entries named explicitly by this layer's tar: a second one is a duplicate.
    explicit: HashSet<(InodeId, Name)>,
}

/// Split and validate a tar path into components.
pub(crate) fn split_path(path: &[u8], limits: &Limits) -> Result<Vec<Name>> {
    if path.is_empty() {
        return Err(invalid("empty path"));
    }
    if path.first() == Some(&b'/') {
        return Err(invalid(format!("absolute path {}", show(path))));
    }
    let mut comps = Vec::new();
    for c in path.split(|&b| b == b'/') {
        if c.is_empty() || c == b"." {
            continue;
        }
        if c == b".." {
            return Err(invalid(format!("path traversal (..) in {}", show(path))));
        }
        check_name(c, path)?;
        comps.push(c.to_vec());
        if comps.len() > limits.max_depth {
            return Err(too_large(format!(
                "path deeper than {} components: {}",
                limits.max_depth,
                show(path)
            )));
        }
    }
    Ok(comps)
}

fn check_name(c: &[u8], path: &[u8]) -> Result<()> {
    if c.contains(&0) {
        return Err(invalid(format!("NUL byte in path {}", show(path))));
    }
    if c.len() > MAX_NAME {
        return Err(invalid(format!(
            "name of {} bytes (max {MAX_NAME}) in {}",
            c.len(),
            show(path)
        )));
    }
    Ok(())
}

/// A path for messages (lossy, bounded).
pub(crate) fn show(path: &[u8]) -> String {
    let s = String::from_utf8_lossy(path);
    if s.len() > 200 {
        let cut: String = s.chars().take(200).collect();
        format!("{cut:?}...")
    } else {
        format!("{s:?}")
    }
}

fn join(comps: &[Name]) -> Vec<u8> {
    comps.join(&b'/')
}

fn child_path(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = parent.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn content_err(what: &str) -> impl Fn(io::Error) -> Error + '_ {
    move |e| Error::from_content_io(what, e)
}

fn parse_pax_time(v: &[u8]) -> Option<Timestamp> {
    let s = std::str::from_utf8(v).ok()?;
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let neg = int.starts_with('-');
    let secs: i64 = int.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut nanos: u32 = 0;
    for i in 0..9 {
        let d = frac.as_bytes().get(i).map_or(0, |b| u32::from(b - b'0'));
        nanos = nanos * 10 + d;
    }
    if neg && nanos > 0 {
        // "-1.25" is 1.25 s before the epoch: secs -2, nanos 0.75e9
        Some(Timestamp {
            secs: secs.checked_sub(1)?,
            nanos: 1_000_000_000 - nanos,
        })
    } else {
        Some(Timestamp { secs, nanos })
    }
}

impl Applier {
    /// An applier over an empty tree (just a root directory).
    pub fn new(limits: Limits) -> Self {
        Self {
            tree: Tree::new(),
            limits,
            hints: HashMap::new(),
        }
    }

    /// The tree so far (not canonical; inode ids may change in [`Applier::finish`]).
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// Finish: canonicalize (see [`Tree::canonicalize`]) and return the tree.
    pub fn finish(mut self) -> Tree {
        self.tree.canonicalize_with(&self.hints);
        self.tree
    }

    /// Apply one *uncompressed* layer tar read from `reader`, as layer number `layer`
    /// (layers must be applied bottom first, with increasing numbers). Reads `reader`
    /// to its end, so that [`LayerStats::diff_id`] covers all of it.
    pub fn apply_layer<R: Read>(&mut self, layer: u32, reader: R) -> Result<LayerStats> {
        let what = format!("layer {layer} tar");
        let mut counted = VerifyingReader::new(
            reader,
            Expect {
                digest: None,
                size: None,
                limit: Some(self.limits.max_layer_bytes),
            },
            what.clone(),
        );
        let mut stats = LayerStats {
            diff_id: Digest([0; 32]),
            tar_bytes: 0,
            entries: 0,
            files: 0,
            file_bytes: 0,
            whiteouts: 0,
            hard_links: 0,
        };
        {
            let mut archive = tar::Archive::new(&mut counted);
            let mut st = LayerState::default();
            for entry in archive.entries().map_err(content_err(&what))? {
                let mut entry = entry.map_err(content_err(&what))?;
                stats.entries += 1;
                if stats.entries > self.limits.max_entries {
                    return Err(too_large(format!(
                        "{what}: more than {} entries",
                        self.limits.max_entries
                    )));
                }
                self.apply_entry(layer, &mut entry, &mut st, &mut stats)?;
            }
            // the rest (end blocks, record padding) still belongs to the digest
            io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(content_err(&what))?;
        }
        let (diff_id, n) = counted.finish()?;
        stats.diff_id = diff_id;
        stats.tar_bytes = n;
        Ok(stats)
    }

    fn metadata<R: Read>(entry: &mut tar::Entry<'_, R>, path: &[u8]) -> Result<Metadata> {
        let h = entry.header();
        let bad = |field: &str, e: io::Error| {
            corrupt(format!("bad {field} in tar header of {}: {e}", show(path)))
        };
        let mode = (h.mode().map_err(|e| bad("mode", e))? & 0o7777) as u16;
        let uid = h.uid().map_err(|e| bad("uid", e))?;
        let gid = h.gid().map_err(|e| bad("gid", e))?;
        let uid = u32::try_from(uid)
            .map_err(|_| invalid(format!("uid {uid} of {} too big", show(path))))?;
        let gid = u32::try_from(gid)
            .map_err(|_| invalid(format!("gid {gid} of {} too big", show(path))))?;
        let secs = h.mtime().map_err(|e| bad("mtime", e))?;
        let mut mtime = Timestamp {
            secs: i64::try_from(secs)
                .map_err(|_| invalid(format!("mtime of {} out of range", show(path))))?,
            nanos: 0,
        };
        let mut xattrs = BTreeMap::new();
        if let Some(pax) = entry
            .pax_extensions()
            .map_err(|e| corrupt(format!("bad PAX header of {}: {e}", show(path))))?
        {
            for ext in pax {
                let ext =
                    ext.map_err(|e| corrupt(format!("bad PAX record of {}: {e}", show(path))))?;
                let key = ext.key_bytes();
                if key == b"mtime" {
                    mtime = parse_pax_time(ext.value_bytes())
                        .ok_or_else(|| corrupt(format!("bad PAX mtime of {}", show(path))))?;
                } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    if name.is_empty() || name.len() > MAX_NAME || name.contains(&0) {
                        return Err(invalid(format!("bad xattr name on {}", show(path))));
                    }
                    let value = ext.value_bytes();
                    if value.len() > MAX_XATTR_VALUE {
                        return Err(invalid(format!(
                            "xattr value of {} bytes on {}",
                            value.len(),
                            show(path)
                        )));
                    }
                    xattrs.insert(name.to_vec(), value.to_vec());
                }
            }
        }
        Ok(Metadata {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    fn apply_entry<R: Read>(
        &mut self,
        layer: u32,
        entry: &mut tar::Entry<'_, R>,
        st: &mut LayerState,
        stats: &mut LayerStats,
    ) -> Result<()> {
        let etype = entry.header().entry_type();
        if matches!(etype, EntryType::XGlobalHeader) {
            return Ok(());
        }
        let raw_path = entry.path_bytes().into_owned();
        let comps = split_path(&raw_path, &self.limits)?;
        let meta = Self::metadata(entry, &raw_path)?;
        let is_dir = etype == EntryType::Directory
            || (etype == EntryType::Regular && raw_path.ends_with(b"/") && entry.size() == 0);

        let Some((name, parent_comps)) = comps.split_last() else {
            // the root itself
            if !is_dir {
                return Err(invalid(format!(
                    "root entry {} is not a directory",
                    show(&raw_path)
                )));
            }
            if !st.explicit.insert((ROOT, Vec::new())) {
                return Err(invalid("duplicate root entry in one layer"));
            }
            if let Some(root) = self.tree.inodes.get_mut(ROOT as usize) {
                root.meta = meta;
                root.layer = layer;
            }
            return Ok(());
        };
        let parent_path = join(parent_comps);
        let path = child_path(&parent_path, name);

        // ---- whiteouts -------------------------------------------------------------
        if name.as_slice() == OPAQUE {
            stats.whiteouts += 1;
            let dir = self
                .resolve_dir(parent_comps, layer, st, true)?
                .ok_or_else(|| invalid("opaque marker without parent"))?;
            if !st.explicit.insert((dir, name.clone())) {
                return Err(invalid(format!("duplicate entry {}", show(&path))));
            }
            self.make_opaque(dir, &parent_path, st);
            return Ok(());
        }
        if let Some(target) = name.strip_prefix(WHITEOUT) {
            stats.whiteouts += 1;
            if target.is_empty() || target == b"." || target == b".." {
                return Err(invalid(format!(
                    "whiteout of the root or a parent: {}",
                    show(&raw_path)
                )));
            }
            if target.starts_with(WHITEOUT) {
                return Err(unsupported(format!(
                    "unknown whiteout form {}",
                    show(&raw_path)
                )));
            }
            if let Some(dir) = self.resolve_dir(parent_comps, layer, st, false)? {
                if !st.explicit.insert((dir, name.clone())) {
                    return Err(invalid(format!("duplicate entry {}", show(&path))));
                }
                // a whiteout only hides what lower layers put there
                if !st.placed.contains(&(dir, target.to_vec())) {
                    self.remove_entry(dir, target, &child_path(&parent_path, target));
                }
            }
            return Ok(());
        }

        // ---- ordinary entries ------------------------------------------------------
        let parent = self
            .resolve_dir(parent_comps, layer, st, true)?
            .ok_or_else(|| invalid(format!("no parent for {}", show(&raw_path))))?;
        if !st.explicit.insert((parent, name.clone())) {
            return Err(invalid(format!(
                "duplicate entry {} in one layer",
                show(&path)
            )));
        }
        let existing = self.tree.entries(parent).and_then(|e| e.get(name)).copied();

        let kind = match etype {
            _ if is_dir => {
                if let Some(id) = existing {
                    if let Some(node) = self.tree.inodes.get_mut(id as usize) {
                        if node.is_dir() {
                            // directory over directory: merge, take the new metadata
                            node.meta = meta;
                            node.layer = layer;
                            st.placed.insert((parent, name.clone()));
                            return Ok(());
                        }
                    }
                }
                NodeKind::Directory {
                    entries: BTreeMap::new(),
                }
            }
            EntryType::Regular | EntryType::Continuous => {
                stats.files += 1;
                stats.file_bytes += entry.size();
                NodeKind::File {
                    data: DataRef {
                        layer,
                        offset: entry.raw_file_position(),
                        len: entry.size(),
                    },
                }
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .unwrap_or_default();
                if target.is_empty() {
                    return Err(invalid(format!(
                        "symlink {} with empty target",
                        show(&path)
                    )));
                }
                if target.len() > MAX_SYMLINK {
                    return Err(invalid(format!(
                        "symlink {} target of {} bytes (max {MAX_SYMLINK})",
                        show(&path),
                        target.len()
                    )));
                }
                if target.contains(&0) {
                    return Err(invalid(format!("NUL in symlink target of {}", show(&path))));
                }
                NodeKind::Symlink { target }
            }
            EntryType::Link => {
                stats.hard_links += 1;
                let target = entry
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .unwrap_or_default();
                let id = self.resolve_link_target(&target, &path)?;
                self.set_entry(parent, name, &path, id, st)?;
                return Ok(());
            }
            EntryType::Char | EntryType::Block => {
                let h = entry.header();
                let major = h
                    .device_major()
                    .map_err(|e| corrupt(format!("bad device major of {}: {e}", show(&path))))?
                    .unwrap_or(0);
                let minor = h
                    .device_minor()
                    .map_err(|e| corrupt(format!("bad device minor of {}: {e}", show(&path))))?
                    .unwrap_or(0);
                if etype == EntryType::Char {
                    NodeKind::CharDevice { major, minor }
                } else {
                    NodeKind::BlockDevice { major, minor }
                }
            }
            EntryType::Fifo => NodeKind::Fifo,
            EntryType::GNUSparse => {
                return Err(unsupported(format!("GNU sparse file {}", show(&path))));
            }
            other => {
                return Err(unsupported(format!(
                    "tar entry type {:?} for {}",
                    other.as_byte() as char,
                    show(&path)
                )));
            }
        };
        let id = self.alloc(Inode {
            kind,
            meta,
            layer,
            inode_layer: layer,
            nlink: 1,
        })?;
        self.set_entry(parent, name, &path, id, st)
    }

    fn alloc(&mut self, inode: Inode) -> Result<InodeId> {
        let id = InodeId::try_from(self.tree.inodes.len())
            .map_err(|_| too_large("more than 2^32 inodes"))?;
        self.tree.inodes.push(inode);
        Ok(id)
    }

    /// Point `parent/name` at `id`, replacing (and hiding) what a lower layer had there.
    fn set_entry(
        &mut self,
        parent: InodeId,
        name: &[u8],
        path: &[u8],
        id: InodeId,
        st: &mut LayerState,
    ) -> Result<()> {
        let key = (parent, name.to_vec());
        let exists = self
            .tree
            .entries(parent)
            .is_some_and(|e| e.contains_key(name));
        if exists {
            if st.placed.contains(&key) {
                return Err(invalid(format!(
                    "{} conflicts with an entry of the same layer",
                    show(path)
                )));
            }
            self.remove_entry(parent, name, path);
        }
        if let Some(Inode {
            kind: NodeKind::Directory { entries },
            ..
        }) = self.tree.inodes.get_mut(parent as usize)
        {
            entries.insert(name.to_vec(), id);
        }
        st.placed.insert(key);
        Ok(())
    }

    /// Unlink `parent/name` (if present); remember the paths of the inodes it hid.
    fn remove_entry(&mut self, parent: InodeId, name: &[u8], path: &[u8]) {
        let removed = match self.tree.inodes.get_mut(parent as usize) {
            Some(Inode {
                kind: NodeKind::Directory { entries },
                ..
            }) => entries.remove(name),
            _ => None,
        };
        let Some(id) = removed else { return };
        let mut stack = vec![(id, path.to_vec())];
        while let Some((id, p)) = stack.pop() {
            if let Some(NodeKind::Directory { entries }) = self.tree.inode(id).map(|n| &n.kind) {
                for (n, &c) in entries {
                    stack.push((c, child_path(&p, n)));
                }
            }
            self.hints.entry(id).or_insert(p);
        }
    }

    /// Remove from `dir` (recursively) everything not placed by the current layer.
    fn make_opaque(&mut self, dir: InodeId, dir_path: &[u8], st: &LayerState) {
        let mut stack = vec![(dir, dir_path.to_vec())];
        while let Some((d, p)) = stack.pop() {
            let children: Vec<(Name, InodeId)> = self
                .tree
                .entries(d)
                .map(|e| e.iter().map(|(n, &c)| (n.clone(), c)).collect())
                .unwrap_or_default();
            for (n, c) in children {
                let cp = child_path(&p, &n);
                if st.placed.contains(&(d, n.clone())) {
                    if self.tree.inode(c).is_some_and(Inode::is_dir) {
                        stack.push((c, cp));
                    }
                } else {
                    self.remove_entry(d, &n, &cp);
                }
            }
        }
    }

    /// Walk to the directory `comps`. Missing components are created (as placed by
    /// this layer, mode 0755, root owned) when `create`, else `None` is returned.
    /// A component that is a symlink or not a directory is an error.
    fn resolve_dir(
        &mut self,
        comps: &[Name],
        layer: u32,
        st: &mut LayerState,
        create: bool,
    ) -> Result<Option<InodeId>> {
        let mut cur = ROOT;
        for (i, c) in comps.iter().enumerate() {
            let next = self.tree.entries(cur).and_then(|e| e.get(c)).copied();
            cur = match next {
                Some(id) => match self.tree.inode(id).map(|n| &n.kind) {
                    Some(NodeKind::Directory { .. }) => id,
                    Some(NodeKind::Symlink { .. }) => {
                        return Err(invalid(format!(
                            "path goes through symlink {}",
                            show(&join(comps.get(..=i).unwrap_or_default()))
                        )));
                    }
                    Some(other) => {
                        return Err(invalid(format!(
                            "path goes through {} {}, not a directory",
                            other.name(),
                            show(&join(comps.get(..=i).unwrap_or_default()))
                        )));
                    }
                    None => return Err(corrupt("dangling inode id")),
                },
                None if create => {
                    let id = self.alloc(Inode {
                        kind: NodeKind::Directory {
                            entries: BTreeMap::new(),
                        },
                        meta: Metadata {
                            mode: 0o755,
                            ..Metadata::default()
                        },
                        layer,
                        inode_layer: layer,
                        nlink: 2,
                    })?;
                    if let Some(Inode {
                        kind: NodeKind::Directory { entries },
                        ..
                    }) = self.tree.inodes.get_mut(cur as usize)
                    {
                        entries.insert(c.clone(), id);
                    }
                    st.placed.insert((cur, c.clone()));
                    id
                }
                None => return Ok(None),
            };
        }
        Ok(Some(cur))
    }

    /// The inode a hard link names: must exist already, must not be a directory, and
    /// must be reached without symlinks or `..`.
    fn resolve_link_target(&mut self, target: &[u8], path: &[u8]) -> Result<InodeId> {
        if target.is_empty() {
            return Err(invalid(format!("hard link {} without target", show(path))));
        }
        let comps = split_path(target, &self.limits)
            .map_err(|e| invalid(format!("hard link {} to {}: {e}", show(path), show(target))))?;
        let Some((name, parent)) = comps.split_last() else {
            return Err(invalid(format!("hard link {} to the root", show(path))));
        };
        let mut dummy = LayerState::default();
        let dir = self.resolve_dir(parent, 0, &mut dummy, false)?;
        let id = dir
            .and_then(|d| self.tree.entries(d).and_then(|e| e.get(name)).copied())
            .ok_or_else(|| {
                invalid(format!(
                    "hard link {} to missing {}",
                    show(path),
                    show(target)
                ))
            })?;
        if self.tree.inode(id).is_some_and(Inode::is_dir) {
            return Err(invalid(format!(
                "hard link {} to directory {}",
                show(path),
                show(target)
            )));
        }
        Ok(id)
    }
}
