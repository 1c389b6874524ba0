//! The image pipeline: turn a block image into sealed chunks plus a manifest in the origin
//! store, and turn it back.
//!
//! This crate owns the orchestration of [`build`] (read → cut into chunks → elide zero chunks →
//! seal in parallel → put-if-absent with bounded concurrency → encode and store the manifest →
//! publish the catalog entry, strictly in that order), [`export`], [`verify`], [`inspect`] and
//! [`list_images`]. It reads from any `std::io::Read` (a raw file today, the ext4 flattener
//! tomorrow), so no temporary full-size image is ever needed.
//!
//! Order is the safety rule: a catalog entry is written only after its manifest, and a manifest
//! only after every chunk it names is confirmed in the store. A failed build may leave orphan
//! chunks (harmless, collected with their root) but never a published image that cannot be read.

mod error;
mod pipeline;

pub use error::{ImageError, ImageErrorKind};
pub use pipeline::{
    build, export, inspect, list_images, open_image, verify, BadChunk, BuildOptions, BuildReport,
    ChunkSink, Context, ExportReport, ImageInfo, NoProgress, OpenedImage, Progress, VerifyReport,
};

/// Result alias of this crate.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;
