//! The lazyblock agent: the data plane that serves images on demand as block devices.
//!
//! Owns:
//! - [`device`]: the [`BlockDevice`] seam every frontend serves, and its errors.
//! - [`source`]: [`BlockSource`], one image as a device: manifest, chunk fetching, overlay,
//!   read-ahead, profile recording and replay.
//! - [`fetch`]: the process-wide chunk fetch path: worker cache tiers, single flight, bounded
//!   origin fetches with demand and prefetch priorities, verification.
//! - [`overlay`]: the copy-on-write overlay of guest writes, on local disk.
//! - [`metrics`]: per-device counters and histograms, Prometheus text.
//! - [`nbd`]: the NBD frontend, an async server serving one [`BlockDevice`] as an NBD export.
//! - [`fuse`]: the FUSE frontend, a [`BlockDevice`] served as one regular file.
//! - [`loopdev`]: loop devices and ext4 mounts on that file, and their teardown from the
//!   mount directory alone.
//!
//! A frontend (NBD, FUSE) knows nothing of chunks, manifests or caches: it turns its protocol's
//! requests into [`BlockDevice`] calls and their errors into the protocol's errno.

pub mod device;
pub mod fetch;
pub mod fuse;
pub mod loopdev;
pub mod metrics;
pub mod nbd;
pub mod overlay;
pub mod source;

pub use device::{BlockDevice, DeviceError, DeviceErrorKind};
pub use fuse::{mount_device, FuseError, FuseErrorKind, FuseMount, FuseUnmounter};
pub use loopdev::{LoopDevice, LoopError, LoopErrorKind, MountStack};
pub use nbd::{
    serve, serve_with_options, NbdAddr, NbdExport, NbdListener, NbdServerError, NbdServerErrorKind,
    ServeOptions,
};
pub use source::{BlockSource, SourceConfig, SourceDevice};
