//! The one error type of the format crate.

/// What went wrong, in a small stable set callers can match on.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatErrorKind {
    /// Caller-provided input is malformed (a bad name, an out-of-range size).
    InvalidInput,
    /// Stored bytes fail a structural, hash or authentication check.
    Corrupt,
    /// The key given is not the key the data was sealed with.
    WrongKey,
    /// A format version or feature this build does not know.
    Unsupported,
}

/// An error from encoding, decoding, sealing or opening.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct FormatError {
    kind: FormatErrorKind,
    message: String,
}

impl FormatError {
    pub(crate) fn new(kind: FormatErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(FormatErrorKind::InvalidInput, message)
    }
    pub(crate) fn corrupt(message: impl Into<String>) -> Self {
        Self::new(FormatErrorKind::Corrupt, message)
    }

    /// The stable kind of this error.
    pub fn kind(&self) -> FormatErrorKind {
        self.kind
    }
}
