//! The one error type of this crate.

use std::fmt;
use std::io;

/// Small, stable classification of every [`Error`].
///
/// Callers match on the kind, never on message text: messages may change, kinds do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The input is well-formed but not acceptable: path traversal, missing link target,
    /// duplicate entry, bad name, no matching tag, whiteout of `/`, ...
    InvalidInput,
    /// The input is damaged: digest or size mismatch, truncated or corrupt compression,
    /// unparsable tar or JSON.
    Corrupt,
    /// A feature or media type this crate does not handle.
    Unsupported,
    /// A configured limit was exceeded (see [`crate::Limits`]).
    TooLarge,
    /// An I/O error from the file system (not caused by the content).
    Io,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidInput => "invalid input",
            Self::Corrupt => "corrupt",
            Self::Unsupported => "unsupported",
            Self::TooLarge => "too large",
            Self::Io => "io",
        })
    }
}

/// Everything that can go wrong while reading an image or applying its layers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// See [`ErrorKind::InvalidInput`].
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// See [`ErrorKind::Corrupt`].
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// See [`ErrorKind::Unsupported`].
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// See [`ErrorKind::TooLarge`].
    #[error("too large: {0}")]
    TooLarge(String),
    /// See [`ErrorKind::Io`].
    #[error("io: {context}: {source}")]
    Io {
        /// What was being done (usually with a path).
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The stable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidInput(_) => ErrorKind::InvalidInput,
            Self::Corrupt(_) => ErrorKind::Corrupt,
            Self::Unsupported(_) => ErrorKind::Unsupported,
            Self::TooLarge(_) => ErrorKind::TooLarge,
            Self::Io { .. } => ErrorKind::Io,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// Errors while *reading content* (decompression, tar parsing) mean the content is
    /// bad, unless they carry one of our own errors (from a verifying reader) inside.
    pub(crate) fn from_content_io(context: &str, e: io::Error) -> Self {
        if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            match e.into_inner().map(|inner| inner.downcast::<Error>()) {
                Some(Ok(ours)) => return *ours,
                Some(Err(other)) => return Self::Corrupt(format!("{context}: {other}")),
                None => return Self::Corrupt(context.to_string()),
            }
        }
        match e.kind() {
            io::ErrorKind::UnexpectedEof => Self::Corrupt(format!("{context}: truncated ({e})")),
            io::ErrorKind::NotFound
            | io::ErrorKind::PermissionDenied
            | io::ErrorKind::OutOfMemory
            | io::ErrorKind::Interrupted
            | io::ErrorKind::StorageFull => Self::io(context, e),
            _ => Self::Corrupt(format!("{context}: {e}")),
        }
    }

    /// Wrap this error for passing through an `io::Read` implementation.
    pub(crate) fn into_io(self) -> io::Error {
        io::Error::other(self)
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand constructors used throughout the crate.
pub(crate) fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidInput(msg.into())
}
pub(crate) fn corrupt(msg: impl Into<String>) -> Error {
    Error::Corrupt(msg.into())
}
pub(crate) fn unsupported(msg: impl Into<String>) -> Error {
    Error::Unsupported(msg.into())
}
pub(crate) fn too_large(msg: impl Into<String>) -> Error {
    Error::TooLarge(msg.into())
}
