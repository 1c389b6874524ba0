//! The input model: an in-memory description of the filesystem tree to write.
//!
//! A [`Tree`] maps paths (byte strings, components separated by `/`, relative to the root)
//! to [`Entry`]s. Every entry carries the **layer** its content came from (`0` = lowest) and
//! the **inode layer**, the lowest layer from which the path has existed with this identity;
//! inode numbers are allocated from the inode layer's range, so a directory that an upper
//! layer merely changes keeps its inode number (and its children's `..` entries stay put).
//!
//! File contents are not held in memory: a [`FileContent`] names a [`FileId`] and the byte
//! ranges that hold data; the writer pulls those bytes from a caller-supplied
//! [`DataSource`] while it streams the image. Everything outside the ranges is a hole.
//!
//! [`Tree::add_hidden`] declares data of a lower layer that an upper layer deleted or
//! replaced: the writer still lays it out (and writes its bytes) in the lower layer's data
//! region, so that region stays byte-identical to the image built from the lower layers
//! alone, but marks its blocks free.

use std::collections::BTreeMap;
use std::io;

use crate::error::{Error, Result};

/// Largest name of one directory entry, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Largest symlink target, in bytes (it must fit in one 4 KiB block with a NUL).
pub const MAX_SYMLINK_LEN: usize = 4095;

/// A caller-chosen handle for the bytes of one file, passed back to [`DataSource::read_at`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId(pub u64);

/// Supplies file bytes while the image is written.
///
/// The writer asks only for bytes inside the [`Segment`]s of a [`FileContent`], in layout
/// order (layer by layer, files in canonical path order, offsets ascending).
pub trait DataSource {
    /// Fill all of `buf` with the bytes of `file` starting at `offset`.
    fn read_at(&mut self, file: FileId, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// A byte range of a file that holds data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// The content of a regular file: a size and the ranges that hold data (the rest are holes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileContent {
    /// Apparent size in bytes (64 bit).
    pub size: u64,
    /// Handle for the [`DataSource`].
    pub source: FileId,
    /// Ranges with data, non-overlapping, inside `0..size`. Bytes of a 4 KiB block that
    /// holds data but lie outside every segment read as zero.
    pub segments: Vec<Segment>,
}

impl FileContent {
    /// A file whose bytes `0..size` all come from `source`.
    pub fn dense(source: FileId, size: u64) -> Self {
        let segments = if size == 0 {
            Vec::new()
        } else {
            vec![Segment {
                offset: 0,
                len: size,
            }]
        };
        FileContent {
            size,
            source,
            segments,
        }
    }

    /// A sparse file: data only in `segments`.
    pub fn sparse(source: FileId, size: u64, segments: Vec<Segment>) -> Self {
        FileContent {
            size,
            source,
            segments,
        }
    }

    /// A file of `size` bytes that is one hole (reads as zeros, allocates nothing).
    pub fn hole(size: u64) -> Self {
        FileContent {
            size,
            source: FileId(0),
            segments: Vec::new(),
        }
    }
}

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    /// Seconds (may be negative). ext4 with 256-byte inodes stores `-2^31 ..= 2^33+2^31-1`.
    pub secs: i64,
    /// Nanoseconds, `< 1_000_000_000`.
    pub nanos: u32,
}

impl Timestamp {
    /// A timestamp.
    pub fn new(secs: i64, nanos: u32) -> Self {
        Timestamp { secs, nanos }
    }
}

/// Ownership, permissions, time and extended attributes of a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Attrs {
    /// Permission bits including setuid (0o4000), setgid (0o2000) and sticky (0o1000);
    /// only `0o7777` may be set, the file type comes from [`Kind`].
    pub mode: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time; atime, ctime and crtime are set to the same value.
    pub mtime: Timestamp,
    /// Extended attributes by full name (`user.*`, `trusted.*`, `security.*`).
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Attrs {
    /// Attributes with the given mode, owner and time and no xattrs.
    pub fn new(mode: u16, uid: u32, gid: u32, mtime: Timestamp) -> Self {
        Attrs {
            mode,
            uid,
            gid,
            mtime,
            xattrs: BTreeMap::new(),
        }
    }

    /// Adds an extended attribute (builder style).
    pub fn with_xattr(mut self, name: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        self.xattrs.insert(name.into(), value.into());
        self
    }
}

/// What a node is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A directory; its children are the entries whose path extends it.
    Dir,
    /// A regular file.
    File(FileContent),
    /// A symbolic link with this target (1..=4095 bytes, no NUL). Targets shorter than 60
    /// bytes live in the inode, longer ones in a block.
    Symlink(Vec<u8>),
    /// A character device.
    CharDevice {
        /// Major number (< 4096).
        major: u32,
        /// Minor number (< 2^20).
        minor: u32,
    },
    /// A block device.
    BlockDevice {
        /// Major number (< 4096).
        major: u32,
        /// Minor number (< 2^20).
        minor: u32,
    },
    /// A named pipe.
    Fifo,
    /// A unix socket.
    Socket,
}

/// One node of the tree.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    /// What it is.
    pub kind: Kind,
    /// Ownership, mode, time, xattrs.
    pub attrs: Attrs,
    /// The layer its content (file data, directory listing, xattrs) came from.
    pub layer: u32,
    /// The layer whose inode range holds its inode number; `None` means `layer`. Must be
    /// `<= layer`.
    pub inode_layer: Option<u32>,
}

impl Entry {
    /// An entry whose content and inode both belong to `layer`.
    pub fn new(kind: Kind, attrs: Attrs, layer: u32) -> Self {
        Entry {
            kind,
            attrs,
            layer,
            inode_layer: None,
        }
    }

    /// Sets the inode layer (builder style).
    pub fn with_inode_layer(mut self, inode_layer: u32) -> Self {
        self.inode_layer = Some(inode_layer);
        self
    }

    pub(crate) fn ino_layer(&self) -> u32 {
        self.inode_layer.unwrap_or(self.layer)
    }
}

/// Data of a lower layer that is no longer visible (deleted or replaced by an upper layer).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Hidden {
    /// The layer whose data region held it.
    pub layer: u32,
    /// The inode layer it had (its inode slot stays reserved and free); `None` = `layer`.
    pub inode_layer: Option<u32>,
    /// Its data, if it was a regular file.
    pub content: Option<FileContent>,
}

/// The type of the node a directory entry names (see [`DirVersion`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A named pipe.
    Fifo,
    /// A unix socket.
    Socket,
}

/// One entry of an earlier version of a directory ([`DirVersion`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VersionEntry {
    /// The entry's name.
    pub name: Vec<u8>,
    /// The inode layer of the node it named.
    pub inode_layer: u32,
    /// The path that gives that node its inode slot: its own path, or for a hard-linked
    /// node the path of its first name (the one added as a node, not as a link).
    pub inode_path: Vec<u8>,
    /// The node's type.
    pub file_type: FileType,
}

/// An earlier version of a directory: the listing it had in the image of the layers up to
/// `layer`, before an upper layer changed (or removed) it. The writer lays its blocks out,
/// byte for byte as that image had them, in `layer`'s metadata region but marks them free,
/// so the region stays identical to the one of the image without the upper layers (like
/// [`Hidden`] file data). Only dedup depends on it: any content is a valid image.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DirVersion {
    /// The layer whose metadata region held this version.
    pub layer: u32,
    /// The directory's inode layer (gives `.` its number).
    pub inode_layer: u32,
    /// The parent directory's inode layer and path (`..`); ignored for the root.
    pub parent: (u32, Vec<u8>),
    /// The entries (without `.` and `..`), in any order.
    pub entries: Vec<VersionEntry>,
}

/// A path split into components; ordering is component-wise (a depth-first pre-order).
pub(crate) type PathKey = Vec<Vec<u8>>;

#[derive(Debug, Clone)]
pub(crate) enum Slot {
    Node(Entry),
    Link(PathKey),
}

/// The filesystem tree to write. Insertion order never matters.
#[derive(Debug, Clone)]
pub struct Tree {
    pub(crate) root: Entry,
    pub(crate) entries: BTreeMap<PathKey, Slot>,
    pub(crate) hidden: BTreeMap<(u32, PathKey), Hidden>,
    pub(crate) versions: BTreeMap<(u32, PathKey), DirVersion>,
}

pub(crate) fn split_path(path: &[u8]) -> Result<PathKey> {
    let trimmed = path.strip_prefix(b"/").unwrap_or(path);
    if trimmed.is_empty() {
        return Err(Error::invalid(
            "empty path (the root is set with Tree::new)",
        ));
    }
    let mut out = Vec::new();
    for comp in trimmed.split(|&b| b == b'/') {
        validate_name(comp).map_err(|e| {
            Error::invalid(format!("path {:?}: {e}", String::from_utf8_lossy(path)))
        })?;
        out.push(comp.to_vec());
    }
    Ok(out)
}

fn validate_name(name: &[u8]) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("empty path component".into());
    }
    if name == b"." || name == b".." {
        return Err("'.' and '..' are not allowed as names".into());
    }
    if name.contains(&0) {
        return Err("NUL byte in name".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("name of {} bytes (max {MAX_NAME_LEN})", name.len()));
    }
    Ok(())
}

pub(crate) fn display_path(key: &[Vec<u8>]) -> String {
    let mut s = String::from("/");
    for (i, c) in key.iter().enumerate() {
        if i > 0 {
            s.push('/');
        }
        s.push_str(&String::from_utf8_lossy(c));
    }
    s
}

impl Tree {
    /// A tree with only a root directory with these attributes and layers.
    pub fn new(root_attrs: Attrs, root_layer: u32) -> Self {
        Tree {
            root: Entry {
                kind: Kind::Dir,
                attrs: root_attrs,
                layer: root_layer,
                inode_layer: Some(0),
            },
            entries: BTreeMap::new(),
            hidden: BTreeMap::new(),
            versions: BTreeMap::new(),
        }
    }

    /// Adds a node at `path` (e.g. `b"usr/bin/sh"`; a leading `/` is ignored). Parents may be
    /// added later; they are checked when the image is planned.
    pub fn add(&mut self, path: impl AsRef<[u8]>, entry: Entry) -> Result<()> {
        let key = split_path(path.as_ref())?;
        self.insert(key, Slot::Node(entry))
    }

    /// Adds a hard link: `path` becomes another name of the (non-directory) node at `target`.
    pub fn add_hard_link(
        &mut self,
        path: impl AsRef<[u8]>,
        target: impl AsRef<[u8]>,
    ) -> Result<()> {
        let key = split_path(path.as_ref())?;
        let target = split_path(target.as_ref())?;
        self.insert(key, Slot::Link(target))
    }

    /// Declares hidden data of a lower layer at `path` (see the module docs).
    pub fn add_hidden(&mut self, path: impl AsRef<[u8]>, hidden: Hidden) -> Result<()> {
        let key = split_path(path.as_ref())?;
        let id = (hidden.layer, key);
        if self.hidden.contains_key(&id) {
            return Err(Error::invalid(format!(
                "hidden entry {} declared twice for layer {}",
                display_path(&id.1),
                id.0
            )));
        }
        self.hidden.insert(id, hidden);
        Ok(())
    }

    /// Declares an earlier version of the directory at `path` (`""` or `"/"`: the root);
    /// see [`DirVersion`]. At most one per `(layer, path)`.
    pub fn add_dir_version(&mut self, path: impl AsRef<[u8]>, version: DirVersion) -> Result<()> {
        let p = path.as_ref();
        let key = if p.iter().all(|&b| b == b'/') {
            Vec::new()
        } else {
            split_path(p)?
        };
        let id = (version.layer, key);
        if self.versions.contains_key(&id) {
            return Err(Error::invalid(format!(
                "directory version {} declared twice for layer {}",
                display_path(&id.1),
                id.0
            )));
        }
        self.versions.insert(id, version);
        Ok(())
    }

    fn insert(&mut self, key: PathKey, slot: Slot) -> Result<()> {
        if self.entries.contains_key(&key) {
            return Err(Error::invalid(format!(
                "duplicate path {}",
                display_path(&key)
            )));
        }
        self.entries.insert(key, slot);
        Ok(())
    }

    /// Number of names in the tree, without the root.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if the tree has only the root.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
