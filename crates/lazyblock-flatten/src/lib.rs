//! `lazyblock-flatten` owns the **deterministic, dedup-friendly ext4 writer** of lazyblock.
//!
//! It turns an in-memory description of a filesystem tree ([`Tree`]) into an ext4 image,
//! written sequentially to any [`std::io::Write`] (or to a sparse file), pulling file bytes
//! from a caller-supplied [`DataSource`] so file data is never held in memory. It does no
//! network I/O, reads no clock and uses no threads: the same tree and [`Options`] always give
//! the same bytes.
//!
//! The layout is chosen for block-level dedup across images that share base layers (see
//! section 6 of `docs/format.md` for the exact bytes):
//! - superblock and group descriptors (and the bitmaps when they fit) in a head region,
//! - per layer (lowest first): the layer's file data, then the layer's metadata (directory,
//!   extent-index, xattr and long-symlink blocks), each starting on a chunk boundary,
//! - then the inode tables (chunk aligned; inode numbers are allocated per layer, each
//!   layer's range starting on an inode-table chunk boundary), then free headroom.
//!
//! A directory that an upper layer changes moves to that layer's metadata region; its earlier
//! listing can be declared with [`Tree::add_dir_version`] so its blocks stay (free) where the
//! image of the lower layers had them, and that region does not shift.
//!
//! All metadata checksums use a fixed seed (`metadata_csum_seed`), so only the superblock
//! depends on the UUID.
//!
//! ```no_run
//! use lazyblock_flatten::{Attrs, Entry, FileContent, FileId, Kind, Options, Timestamp, Tree};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let t = Timestamp::new(1_700_000_000, 0);
//! let mut tree = Tree::new(Attrs::new(0o755, 0, 0, t), 0);
//! tree.add("etc", Entry::new(Kind::Dir, Attrs::new(0o755, 0, 0, t), 0))?;
//! tree.add("etc/motd", Entry::new(Kind::File(FileContent::dense(FileId(1), 5)), Attrs::new(0o644, 0, 0, t), 0))?;
//! let mut src = |_: FileId, _off: u64, buf: &mut [u8]| { buf.copy_from_slice(&b"hello"[..buf.len()]); Ok(()) };
//! let summary = lazyblock_flatten::write_image_file(&tree, &Options::new([7; 16]), &mut src, "out.ext4")?;
//! println!("{summary}");
//! # Ok(()) }
//! ```

mod crc;
mod error;
mod model;
mod plan;
mod raw;
mod write;

use std::io::{self, Write};
use std::path::Path;

pub use error::{Error, ErrorKind, Result};
pub use model::{
    Attrs, DataSource, DirVersion, Entry, FileContent, FileId, FileType, Hidden, Kind, Segment,
    Timestamp, Tree, VersionEntry, MAX_NAME_LEN, MAX_SYMLINK_LEN,
};
pub use plan::{
    plan, Headroom, LayerInodes, Options, Plan, Region, RegionKind, Summary, DEFAULT_CHUNK_SIZE,
};

/// Any closure `(file, offset, buf) -> io::Result<()>` is a [`DataSource`].
impl<F> DataSource for F
where
    F: FnMut(FileId, u64, &mut [u8]) -> io::Result<()>,
{
    fn read_at(&mut self, file: FileId, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self(file, offset, buf)
    }
}

/// Plans and streams the image of `tree` to `out`.
pub fn write_image<W: Write, S: DataSource + ?Sized>(
    tree: &Tree,
    opts: &Options,
    src: &mut S,
    out: W,
) -> Result<Summary> {
    plan(tree, opts)?.write_to(src, out)
}

/// Plans and writes the image of `tree` to a sparse file at `path`.
pub fn write_image_file<S: DataSource + ?Sized>(
    tree: &Tree,
    opts: &Options,
    src: &mut S,
    path: impl AsRef<Path>,
) -> Result<Summary> {
    plan(tree, opts)?.write_to_path(src, path.as_ref())
}
