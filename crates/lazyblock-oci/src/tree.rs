//! The flattened file system tree: plain data, canonical order. See `MODEL.md`.

use std::collections::BTreeMap;

/// Index of an inode in [`Tree::inodes`]. The root directory is always [`ROOT`].
pub type InodeId = u32;

/// The root directory's inode id.
pub const ROOT: InodeId = 0;

/// A file name: one path component, raw bytes (not necessarily UTF-8), 1..=255 bytes,
/// no `/` and no NUL, never `.` or `..`.
pub type Name = Vec<u8>;

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Whole seconds (may be negative).
    pub secs: i64,
    /// Nanoseconds, `0..1_000_000_000`.
    pub nanos: u32,
}

/// Where the bytes of a regular file live: a byte range of one *uncompressed* layer tar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DataRef {
    /// Index of the layer (0 = bottom layer) in [`crate::Image::layers`].
    pub layer: u32,
    /// Offset of the first data byte inside the uncompressed layer tar.
    pub offset: u64,
    /// Number of bytes (the file size; 0 for empty files).
    pub len: u64,
}

/// Ownership, permissions, time and extended attributes of an inode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Permission bits including setuid (0o4000), setgid (0o2000) and sticky (0o1000);
    /// never the file type bits (mask 0o7777).
    pub mode: u16,
    /// Numeric owner (user names in the tar are ignored).
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Modification time; nanoseconds only when a PAX header gave them.
    pub mtime: Timestamp,
    /// Extended attributes from PAX `SCHILY.xattr.<name>` records, by full name
    /// (`user.foo`, `security.capability`, ...), in canonical byte order.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// What an inode is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory and its entries in canonical (byte-wise) name order. `.` and `..` are
    /// not stored.
    Directory {
        /// Entries by name.
        entries: BTreeMap<Name, InodeId>,
    },
    /// A regular file; its content is [`DataRef`] (not in memory).
    File {
        /// Where the content is.
        data: DataRef,
    },
    /// A symbolic link; the target is stored verbatim (1..=4095 bytes, not resolved).
    Symlink {
        /// Link target bytes.
        target: Vec<u8>,
    },
    /// A character device.
    CharDevice {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// A block device.
    BlockDevice {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
}

impl NodeKind {
    /// Short name of the kind, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Directory { .. } => "directory",
            Self::File { .. } => "file",
            Self::Symlink { .. } => "symlink",
            Self::CharDevice { .. } => "char device",
            Self::BlockDevice { .. } => "block device",
            Self::Fifo => "fifo",
        }
    }
}

/// One inode. Several directory entries refer to the same inode when the image has
/// hard links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    /// Type and type-specific payload.
    pub kind: NodeKind,
    /// Owner, mode, time, xattrs.
    pub meta: Metadata,
    /// Index of the layer this inode's content and metadata came from (the last layer
    /// that wrote it; for a directory, the last layer that had an entry for it or
    /// created it as a missing parent).
    pub layer: u32,
    /// The layer that created this inode (`<= layer`). A directory that upper layers
    /// only update keeps its `inode_layer`; anything an upper layer replaces is a new
    /// inode with `inode_layer == layer`.
    pub inode_layer: u32,
    /// Link count as a file system reports it: for directories 2 + number of
    /// subdirectories, otherwise the number of directory entries naming this inode.
    /// Valid after [`Tree::canonicalize`] (which [`crate::Image::flatten`] calls).
    pub nlink: u32,
}

impl Inode {
    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, NodeKind::Directory { .. })
    }
}

/// An inode of a lower layer that an upper layer hid (whiteout, opaque directory, or
/// replacement), so that no path reaches it any more. For regular files, `data` says
/// where the hidden bytes are: the ext4 writer keeps them in place but marks them free.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HiddenData {
    /// The layer its content came from ([`Inode::layer`] when it was hidden).
    pub layer: u32,
    /// The path the inode had when it was hidden (`/`-separated, no leading slash; for
    /// hard-linked inodes the first path that was removed). `(layer, path)` is unique
    /// within a tree.
    pub path: Vec<u8>,
    /// The layer that created the inode ([`Inode::inode_layer`]).
    pub inode_layer: u32,
    /// Its kind (`"file"`, `"directory"`, ... as [`NodeKind::name`]).
    pub kind: &'static str,
    /// Where its bytes are, for non-empty regular files.
    pub data: Option<DataRef>,
}

/// A flattened image file system.
///
/// After [`Tree::canonicalize`]: `inodes[0]` is the root directory, inodes are numbered
/// in depth-first pre-order over names in byte order (a hard-linked inode gets the
/// number of its first occurrence), every inode is reachable, `nlink` is set, and
/// `hidden` is sorted by (layer, offset). Two runs over the same input give equal trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    /// All inodes, indexed by [`InodeId`].
    pub inodes: Vec<Inode>,
    /// Data hidden by upper layers, sorted.
    pub hidden: Vec<HiddenData>,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

/// Counters over a tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Directories including the root.
    pub dirs: u64,
    /// Regular file inodes.
    pub files: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Devices and FIFOs.
    pub specials: u64,
    /// Directory entries naming a file inode already named elsewhere.
    pub extra_hard_links: u64,
    /// Total bytes of reachable regular files (each inode once).
    pub file_bytes: u64,
    /// Number of hidden non-empty files.
    pub hidden_files: u64,
    /// Total hidden bytes.
    pub hidden_bytes: u64,
}

impl Tree {
    /// A tree with just an empty root directory (mode 0755, owned by 0:0, layer 0).
    pub fn new() -> Self {
        Self {
            inodes: vec![Inode {
                kind: NodeKind::Directory {
                    entries: BTreeMap::new(),
                },
                meta: Metadata {
                    mode: 0o755,
                    ..Metadata::default()
                },
                layer: 0,
                inode_layer: 0,
                nlink: 2,
            }],
            hidden: Vec::new(),
        }
    }

    /// The inode with this id.
    ///
    /// # Panics
    /// Never for ids taken from this tree.
    pub fn inode(&self, id: InodeId) -> Option<&Inode> {
        self.inodes.get(id as usize)
    }

    /// Entries of a directory inode (`None` if `id` is not a directory).
    pub fn entries(&self, id: InodeId) -> Option<&BTreeMap<Name, InodeId>> {
        match &self.inode(id)?.kind {
            NodeKind::Directory { entries } => Some(entries),
            _ => None,
        }
    }

    /// Look a `/`-separated path up (no symlinks followed; empty path or `/` = root).
    pub fn lookup(&self, path: &[u8]) -> Option<InodeId> {
        let mut cur = ROOT;
        for comp in path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
        {
            cur = *self.entries(cur)?.get(comp)?;
        }
        Some(cur)
    }

    /// Visit every directory entry in canonical order (depth first, names in byte
    /// order) as `(path, inode id)`; the root itself is visited first with an empty
    /// path. Iterative, so arbitrarily deep trees are fine.
    pub fn walk(&self, mut f: impl FnMut(&[u8], InodeId)) {
        // stack of (path, id); children pushed in reverse so they pop in order
        let mut stack: Vec<(Vec<u8>, InodeId)> = vec![(Vec::new(), ROOT)];
        while let Some((path, id)) = stack.pop() {
            f(&path, id);
            if let Some(entries) = self.entries(id) {
                for (name, &child) in entries.iter().rev() {
                    let mut p = path.clone();
                    if !p.is_empty() {
                        p.push(b'/');
                    }
                    p.extend_from_slice(name);
                    stack.push((p, child));
                }
            }
        }
    }

    /// Counters over the reachable tree and the hidden data.
    pub fn stats(&self) -> TreeStats {
        let mut s = TreeStats::default();
        let mut seen = vec![false; self.inodes.len()];
        self.walk(|_, id| {
            let Some(node) = self.inode(id) else { return };
            let Some(seen_it) = seen.get_mut(id as usize) else {
                return;
            };
            if *seen_it {
                s.extra_hard_links += 1;
                return;
            }
            *seen_it = true;
            match &node.kind {
                NodeKind::Directory { .. } => s.dirs += 1,
                NodeKind::File { data } => {
                    s.files += 1;
                    s.file_bytes += data.len;
                }
                NodeKind::Symlink { .. } => s.symlinks += 1,
                _ => s.specials += 1,
            }
        });
        s.hidden_files = self.hidden.iter().filter(|h| h.data.is_some()).count() as u64;
        s.hidden_bytes = self
            .hidden
            .iter()
            .filter_map(|h| h.data)
            .map(|d| d.len)
            .sum();
        s
    }

    /// Renumber inodes canonically, drop unreachable ones (recording them in `hidden`),
    /// compute `nlink`, sort `hidden` (by layer, then path).
    /// Idempotent.
    pub fn canonicalize(&mut self) {
        self.canonicalize_with(&std::collections::HashMap::new());
    }

    /// [`Tree::canonicalize`], naming hidden data by the path hints given per old id.
    pub(crate) fn canonicalize_with(
        &mut self,
        hints: &std::collections::HashMap<InodeId, Vec<u8>>,
    ) {
        let n = self.inodes.len();
        let mut new_id: Vec<Option<InodeId>> = vec![None; n];
        let mut order: Vec<InodeId> = Vec::new();
        let mut links: Vec<u32> = vec![0; n];
        let mut subdirs: Vec<u32> = vec![0; n];
        // iterative pre-order over names in byte order
        let mut stack: Vec<InodeId> = vec![ROOT];
        while let Some(id) = stack.pop() {
            let idx = id as usize;
            if let Some(l) = links.get_mut(idx) {
                *l += 1;
            }
            let Some(slot) = new_id.get_mut(idx) else {
                continue;
            };
            if slot.is_some() {
                continue; // hard link to an inode already numbered
            }
            *slot = Some(order.len() as InodeId);
            order.push(id);
            if let Some(entries) = self.entries(id) {
                let mut dirs = 0;
                for &child in entries.values().rev() {
                    if self.inode(child).is_some_and(Inode::is_dir) {
                        dirs += 1;
                    }
                    stack.push(child);
                }
                if let Some(s) = subdirs.get_mut(idx) {
                    *s = dirs;
                }
            }
        }
        // unreachable inodes are hidden
        let mut old: Vec<Option<Inode>> = std::mem::take(&mut self.inodes)
            .into_iter()
            .map(Some)
            .collect();
        for (idx, node) in old.iter().enumerate() {
            let (Some(None), Some(node)) = (new_id.get(idx), node) else {
                continue;
            };
            let data = match &node.kind {
                NodeKind::File { data } if data.len > 0 => Some(*data),
                _ => None,
            };
            self.hidden.push(HiddenData {
                layer: node.layer,
                path: hints.get(&(idx as InodeId)).cloned().unwrap_or_default(),
                inode_layer: node.inode_layer,
                kind: node.kind.name(),
                data,
            });
        }
        let mut inodes = Vec::with_capacity(order.len());
        for &id in &order {
            let idx = id as usize;
            let Some(mut node) = old.get_mut(idx).and_then(Option::take) else {
                continue;
            };
            if let NodeKind::Directory { entries } = &mut node.kind {
                for child in entries.values_mut() {
                    if let Some(Some(nid)) = new_id.get(*child as usize) {
                        *child = *nid;
                    }
                }
                node.nlink = 2 + subdirs.get(idx).copied().unwrap_or(0);
            } else {
                node.nlink = links.get(idx).copied().unwrap_or(1);
            }
            inodes.push(node);
        }
        self.inodes = inodes;
        self.hidden.sort();
    }
}
