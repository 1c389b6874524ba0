//! The error type of the writer.

use std::io;

/// A small, stable classification of [`Error`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The tree, a node or an option is not acceptable (bad name, missing parent, ...).
    InvalidInput,
    /// Reading file data from the [`crate::DataSource`] or writing the image failed.
    Io,
    /// Something exceeds an ext4 limit (file size, link count, inode count, ...).
    TooLarge,
}

/// An error of the ext4 writer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// See [`ErrorKind::InvalidInput`].
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// See [`ErrorKind::TooLarge`].
    #[error("too large: {0}")]
    TooLarge(String),
    /// See [`ErrorKind::Io`].
    #[error("i/o error while {context}: {source}")]
    Io {
        /// What the writer was doing.
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
            Error::InvalidInput(_) => ErrorKind::InvalidInput,
            Error::TooLarge(_) => ErrorKind::TooLarge,
            Error::Io { .. } => ErrorKind::Io,
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidInput(msg.into())
    }

    pub(crate) fn too_large(msg: impl Into<String>) -> Self {
        Error::TooLarge(msg.into())
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
