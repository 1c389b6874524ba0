//! The error of the garbage collector.

use lazyblock_format::{FormatError, FormatErrorKind};
use lazyblock_store::{StoreError, StoreErrorKind};

/// A small, stable classification.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcErrorKind {
    /// Bad arguments (an unknown root, a transition a root's state does not allow).
    InvalidInput,
    /// A root, record or halt does not exist.
    NotFound,
    /// Stored data fails a check (a chunk whose bytes do not hash to its name, a bad record).
    Corrupt,
    /// Deletion is halted: an expired root was read. Nothing was deleted.
    Halted,
    /// The store could not be reached; the operation can be re-run, it resumes.
    Unavailable,
    /// Anything else.
    Other,
}

/// An error of the collector: one line naming what failed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct GcError {
    kind: GcErrorKind,
    message: String,
}

impl GcError {
    pub(crate) fn new(kind: GcErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    /// The stable kind.
    pub fn kind(&self) -> GcErrorKind {
        self.kind
    }
    /// Whether re-running later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind == GcErrorKind::Unavailable
    }
}

impl From<StoreError> for GcError {
    fn from(e: StoreError) -> Self {
        let kind = match e.kind() {
            StoreErrorKind::NotFound => GcErrorKind::NotFound,
            StoreErrorKind::Unavailable => GcErrorKind::Unavailable,
            StoreErrorKind::InvalidInput => GcErrorKind::InvalidInput,
            StoreErrorKind::Corrupt => GcErrorKind::Corrupt,
            _ => GcErrorKind::Other,
        };
        Self::new(kind, e.to_string())
    }
}

impl From<FormatError> for GcError {
    fn from(e: FormatError) -> Self {
        let kind = match e.kind() {
            FormatErrorKind::InvalidInput => GcErrorKind::InvalidInput,
            _ => GcErrorKind::Corrupt,
        };
        Self::new(kind, e.to_string())
    }
}
