//! The lazyblock agent: the data plane that serves images on demand as block devices.
//!
//! Owns:
//! - [`device`]: the [`BlockDevice`] seam every frontend serves, and its errors;
//! - [`nbd`]: the NBD frontend, an async server serving one [`BlockDevice`] as an NBD export.
//!
//! A frontend (NBD, FUSE) knows nothing of chunks, manifests or caches: it turns its protocol's
//! requests into [`BlockDevice`] calls and their errors into the protocol's errno.

pub mod device;
pub mod nbd;

pub use device::{BlockDevice, DeviceError, DeviceErrorKind};
pub use nbd::{
    serve, serve_with_options, NbdAddr, NbdExport, NbdListener, NbdServerError, NbdServerErrorKind,
    ServeOptions,
};
