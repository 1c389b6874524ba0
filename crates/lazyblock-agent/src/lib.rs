//! The lazyblock agent: the data plane that serves images on demand as block devices.
//!
//! Owns:
//! - [`device`]: the [`BlockDevice`] seam every frontend serves, and its errors.
//!
//! A frontend (NBD, FUSE) knows nothing of chunks, manifests or caches: it turns its protocol's
//! requests into [`BlockDevice`] calls and their errors into the protocol's errno.

pub mod device;

pub use device::{BlockDevice, DeviceError, DeviceErrorKind};
