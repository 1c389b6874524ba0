//! The error of the image pipeline.

use lazyblock_format::{FormatError, FormatErrorKind};
use lazyblock_keys::{KeyError, KeyErrorKind};
use lazyblock_store::{StoreError, StoreErrorKind};

/// A small, stable classification.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageErrorKind {
    /// Bad arguments or source (missing, empty, not a file).
    InvalidInput,
    /// An image, manifest, chunk or key does not exist.
    NotFound,
    /// Stored bytes fail verification.
    Corrupt,
    /// The key at hand cannot open the data (another tenant's manifest).
    WrongKey,
    /// The store could not be reached; retrying later may help.
    Unavailable,
    /// Local I/O failed (reading the source, writing the output).
    Io,
    /// Anything else.
    Other,
}

/// An error of the pipeline: one line, naming the thing that failed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ImageError {
    kind: ImageErrorKind,
    message: String,
}

impl ImageError {
    pub(crate) fn new(kind: ImageErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    /// The stable kind.
    pub fn kind(&self) -> ImageErrorKind {
        self.kind
    }
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind == ImageErrorKind::Unavailable
    }
}

impl From<StoreError> for ImageError {
    fn from(e: StoreError) -> Self {
        let kind = match e.kind() {
            StoreErrorKind::NotFound => ImageErrorKind::NotFound,
            StoreErrorKind::Unavailable => ImageErrorKind::Unavailable,
            StoreErrorKind::InvalidInput => ImageErrorKind::InvalidInput,
            StoreErrorKind::Corrupt => ImageErrorKind::Corrupt,
            _ => ImageErrorKind::Other,
        };
        Self::new(kind, e.to_string())
    }
}

impl From<FormatError> for ImageError {
    fn from(e: FormatError) -> Self {
        let kind = match e.kind() {
            FormatErrorKind::InvalidInput => ImageErrorKind::InvalidInput,
            FormatErrorKind::Corrupt => ImageErrorKind::Corrupt,
            FormatErrorKind::WrongKey => ImageErrorKind::WrongKey,
            _ => ImageErrorKind::Other,
        };
        Self::new(kind, e.to_string())
    }
}

impl From<KeyError> for ImageError {
    fn from(e: KeyError) -> Self {
        let kind = match e.kind() {
            KeyErrorKind::NotFound => ImageErrorKind::NotFound,
            KeyErrorKind::Corrupt => ImageErrorKind::Corrupt,
            _ => ImageErrorKind::Io,
        };
        Self::new(kind, e.to_string())
    }
}
