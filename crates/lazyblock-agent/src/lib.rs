//! The lazyblock agent: the data plane that serves images on demand as block devices.
//!
//! Owns:
//! - [`device`]: the [`BlockDevice`] seam every frontend serves, and its errors.
//! - [`fuse`]: the FUSE frontend, a [`BlockDevice`] served as one regular file.
//! - [`loopdev`]: loop devices and ext4 mounts on that file, and their teardown from the
//!   mount directory alone.
//!
//! A frontend (NBD, FUSE) knows nothing of chunks, manifests or caches: it turns its protocol's
//! requests into [`BlockDevice`] calls and their errors into the protocol's errno.

pub mod device;
pub mod fuse;
pub mod loopdev;

pub use device::{BlockDevice, DeviceError, DeviceErrorKind};
pub use fuse::{mount_device, FuseError, FuseErrorKind, FuseMount, FuseUnmounter};
pub use loopdev::{LoopDevice, LoopError, LoopErrorKind, MountStack};
