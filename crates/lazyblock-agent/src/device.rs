//! The [`BlockDevice`] seam: what the NBD and FUSE frontends serve.

use async_trait::async_trait;

/// The small, stable classification of [`DeviceError`]; frontends map it to an errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeviceErrorKind {
    /// A range outside the device, a zero or oversized length (`EINVAL`).
    InvalidInput,
    /// A write to a read-only device (`EPERM`).
    ReadOnly,
    /// The overlay could not grow (`ENOSPC`).
    NoSpace,
    /// The data could not be produced: origin unreachable after retries, corrupt everywhere,
    /// local disk error (`EIO`).
    Io,
}

impl DeviceErrorKind {
    /// The Linux errno for this kind (also the NBD error value, which uses the same numbers).
    pub fn errno(self) -> i32 {
        match self {
            Self::InvalidInput => 22, // EINVAL
            Self::ReadOnly => 1,      // EPERM
            Self::NoSpace => 28,      // ENOSPC
            Self::Io => 5,            // EIO
        }
    }
}

/// An error from a [`BlockDevice`] call: a kind and one line for the log.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DeviceError {
    kind: DeviceErrorKind,
    message: String,
}

impl DeviceError {
    /// Makes an error of `kind`.
    pub fn new(kind: DeviceErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The stable kind.
    pub fn kind(&self) -> DeviceErrorKind {
        self.kind
    }
}

/// A block device: a fixed-size array of bytes with reads, writes, flush and trim.
///
/// Calls may run concurrently. Frontends check ranges before calling (`offset + len <= size`,
/// `len > 0`), but implementations must check again and return
/// [`DeviceErrorKind::InvalidInput`] rather than panic.
#[async_trait]
pub trait BlockDevice: Send + Sync + 'static {
    /// Size in bytes.
    fn size(&self) -> u64;

    /// Whether writes and trims are refused.
    fn read_only(&self) -> bool;

    /// Reads `len` bytes at `offset`.
    async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, DeviceError>;

    /// Writes `data` at `offset`. Once it returns, a later read sees the data, also after the
    /// serving process is killed and restarted; it survives power loss only after [`flush`].
    ///
    /// [`flush`]: BlockDevice::flush
    async fn write(&self, offset: u64, data: &[u8]) -> Result<(), DeviceError>;

    /// Makes every completed write durable.
    async fn flush(&self) -> Result<(), DeviceError>;

    /// Hints that `len` bytes at `offset` are no longer needed. Later reads of the range return
    /// either the old bytes or zeros.
    async fn trim(&self, offset: u64, len: u64) -> Result<(), DeviceError>;
}

/// Checks that `[offset, offset + len)` is a non-empty range inside a device of `size` bytes.
pub fn check_range(size: u64, offset: u64, len: u64) -> Result<(), DeviceError> {
    match offset.checked_add(len) {
        Some(end) if len > 0 && end <= size => Ok(()),
        _ => Err(DeviceError::new(
            DeviceErrorKind::InvalidInput,
            format!("range {offset}+{len} is outside the device of {size} bytes"),
        )),
    }
}

/// An in-memory [`BlockDevice`] for frontend tests.
#[derive(Debug)]
pub struct MemDevice {
    data: std::sync::Mutex<Vec<u8>>,
    read_only: bool,
}

impl MemDevice {
    /// A device holding `data`.
    pub fn new(data: Vec<u8>, read_only: bool) -> Self {
        Self {
            data: std::sync::Mutex::new(data),
            read_only,
        }
    }

    /// A copy of the current contents.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.lock().len() as u64
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, DeviceError> {
        let data = self.lock();
        check_range(data.len() as u64, offset, len as u64)?;
        let start = offset as usize;
        Ok(data[start..start + len].to_vec())
    }

    async fn write(&self, offset: u64, bytes: &[u8]) -> Result<(), DeviceError> {
        if self.read_only {
            return Err(DeviceError::new(
                DeviceErrorKind::ReadOnly,
                "device is read-only",
            ));
        }
        let mut data = self.lock();
        check_range(data.len() as u64, offset, bytes.len() as u64)?;
        let start = offset as usize;
        data[start..start + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    async fn flush(&self) -> Result<(), DeviceError> {
        Ok(())
    }

    async fn trim(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        if self.read_only {
            return Err(DeviceError::new(
                DeviceErrorKind::ReadOnly,
                "device is read-only",
            ));
        }
        check_range(self.size(), offset, len)
    }
}
