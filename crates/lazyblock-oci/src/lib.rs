//! # lazyblock-oci: OCI image input and layer application
//!
//! This crate owns everything between "an image on disk" and "one flattened file
//! system tree" for lazyblock:
//!
//! * **Input**: OCI image layouts (`oci-layout`, `index.json`, nested indexes, tag
//!   selection by `org.opencontainers.image.ref.name`, platform selection) and
//!   docker-archive tarballs (`manifest.json` + config + layer tars). See [`Image`].
//! * **Verification**: every blob is checked against its descriptor's sha256 and size
//!   before its content is trusted; layers are verified while they stream (compressed
//!   digest and size, then the uncompressed digest against the config's `diff_ids`).
//!   A failed check fails the whole operation; nothing is returned or written.
//! * **Layer application** with OCI image-spec changeset semantics (whiteouts, opaque
//!   directories, hard links, replacement, devices, xattrs from PAX headers, mtimes
//!   with nanoseconds) into [`Tree`], a plain-data, canonical, deterministic model
//!   documented in `MODEL.md`. File bytes are never held in memory: each file records
//!   a [`DataRef`] (layer, offset in the uncompressed tar, length), and data that upper
//!   layers hid is listed in [`Tree::hidden`]. The ext4 writer consumes this model.
//! * **Bad input** becomes one [`Error`] with a stable [`ErrorKind`]; never a panic.
//!   Limits on untrusted input are in [`Limits`].
//! * A **reference extractor**, [`extract_to_dir`], that writes the flattened image to
//!   a real directory (a test oracle for the ext4 image), and the body of the
//!   `layer_apply` fuzz target, [`fuzz::fuzz_layer_apply`].
//!
//! * **ext4 output**: [`ext4_image`] plans a deterministic, dedup-friendly ext4 image of an
//!   [`Image`] with `lazyblock-flatten` (it applies the layers itself to learn in which layer
//!   each directory listing last changed, so lower layers' regions stay byte-identical) and
//!   streams it through [`Ext4Image::into_reader`], spooling one layer's file data at a time.
//!
//! It does not own registries or networking, compression of output, the ext4 on-disk
//! format (that is `lazyblock-flatten`), chunking or encryption.
//!
//! ```no_run
//! use lazyblock_oci::{Image, OpenOptions};
//! let image = Image::open("/path/to/oci", &OpenOptions::tag("latest"))?;
//! let flat = image.flatten()?;
//! println!("{} inodes, cmd {:?}", flat.tree.inodes.len(), image.config.cmd);
//! # Ok::<(), lazyblock_oci::Error>(())
//! ```

mod apply;
mod digest;
mod error;
mod ext4;
mod extract;
pub mod fuzz;
mod image;
mod spec;
mod tree;

pub use apply::{Applier, LayerStats, Limits, MAX_NAME, MAX_SYMLINK, MAX_XATTR_VALUE};
pub use digest::Digest;
pub use error::{Error, ErrorKind, Result};
pub use ext4::{
    ext4_image, image_uuid, Ext4Image, Ext4Options, Ext4Reader, Headroom, Region, RegionKind,
    Summary,
};
pub use extract::extract_to_dir;
pub use image::{
    Compression, Flattened, Image, ImageConfig, ImageFormat, Layer, LayerReader, OpenOptions,
};
pub use tree::{
    DataRef, HiddenData, Inode, InodeId, Metadata, Name, NodeKind, Timestamp, Tree, TreeStats, ROOT,
};
