//! Errors of the cache tiers: [`CacheError`] and the small, stable [`CacheErrorKind`] callers
//! branch on.
//!
//! The agent treats every cache error as "carry on without this tier": it warns once per kind and
//! serves from memory and the origin. The kinds tell apart what an operator must fix (a full or
//! unwritable cache directory, a directory of another layout version) from a passing I/O error.

use std::io;
use std::path::PathBuf;

use rustix::io::Errno;

/// What went wrong, as a small stable enum (see [`CacheError::kind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheErrorKind {
    /// The cache directory (or a file in it) cannot be written or is gone: permission denied,
    /// read-only file system, missing directory.
    Unwritable,
    /// The file system holding the cache directory is full (or the quota is exhausted).
    NoSpace,
    /// The directory holds a cache of another layout version (its `VERSION` file differs).
    Version,
    /// Any other I/O error.
    Io,
    /// A setting is invalid (e.g. an L2 tier with `k > n` or no nodes).
    InvalidInput,
    /// The AZ cache tier could not take a chunk (fewer than `k` stripes stored); retryable.
    Unavailable,
}

/// An error of a cache tier.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The cache directory cannot be written (see [`CacheErrorKind::Unwritable`]).
    #[error("cache directory not writable: {op} {}: {source}", path.display())]
    Unwritable {
        /// The operation that failed, e.g. `"create"`.
        op: &'static str,
        /// The path it failed on.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file system of the cache directory is full.
    #[error("no space left for the cache: {op} {}: {source}", path.display())]
    NoSpace {
        /// The operation that failed, e.g. `"write"`.
        op: &'static str,
        /// The path it failed on.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The directory's `VERSION` file names another layout version.
    #[error(
        "{} holds a cache of layout version {found:?}, this build reads only {expected:?}; \
         remove the directory or point the cache elsewhere",
        path.display()
    )]
    Version {
        /// The `VERSION` file.
        path: PathBuf,
        /// Its first line (lossily decoded, trimmed).
        found: String,
        /// The line this build writes and accepts.
        expected: &'static str,
    },
    /// An invalid setting.
    #[error("{0}")]
    Invalid(String),
    /// The AZ cache tier stored fewer stripes of a chunk than it needs to rebuild it.
    #[error("AZ cache: {0}")]
    Unavailable(String),
    /// Another I/O error.
    #[error("cache I/O error: {op} {}: {source}", path.display())]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// The path it failed on.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

impl CacheError {
    /// An invalid setting, described in one line.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    /// The kind of this error.
    pub fn kind(&self) -> CacheErrorKind {
        match self {
            Self::Unwritable { .. } => CacheErrorKind::Unwritable,
            Self::NoSpace { .. } => CacheErrorKind::NoSpace,
            Self::Version { .. } => CacheErrorKind::Version,
            Self::Io { .. } => CacheErrorKind::Io,
            Self::Invalid(_) => CacheErrorKind::InvalidInput,
            Self::Unavailable(_) => CacheErrorKind::Unavailable,
        }
    }

    /// Classifies an I/O error of `op` on `path`: `ENOSPC`/`EDQUOT` → [`NoSpace`](Self::NoSpace);
    /// `EACCES`/`EPERM`/`EROFS`/`ENOENT`/`ENOTDIR` → [`Unwritable`](Self::Unwritable); the rest →
    /// [`Io`](Self::Io). Meant for errors of writes and of opening the layout, where a missing
    /// path means the directory went away.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        let errno = source.raw_os_error().map(Errno::from_raw_os_error);
        match errno {
            Some(e) if e == Errno::NOSPC || e == Errno::DQUOT => Self::NoSpace { op, path, source },
            Some(e)
                if e == Errno::ACCESS
                    || e == Errno::PERM
                    || e == Errno::ROFS
                    || e == Errno::NOENT
                    || e == Errno::NOTDIR =>
            {
                Self::Unwritable { op, path, source }
            }
            _ if source.kind() == io::ErrorKind::NotFound
                || source.kind() == io::ErrorKind::PermissionDenied =>
            {
                Self::Unwritable { op, path, source }
            }
            _ => Self::Io { op, path, source },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(errno: Errno) -> CacheErrorKind {
        CacheError::io(
            "write",
            "/x",
            io::Error::from_raw_os_error(errno.raw_os_error()),
        )
        .kind()
    }

    #[test]
    fn classifies_errnos() {
        assert_eq!(kind_of(Errno::NOSPC), CacheErrorKind::NoSpace);
        assert_eq!(kind_of(Errno::DQUOT), CacheErrorKind::NoSpace);
        for e in [
            Errno::ACCESS,
            Errno::PERM,
            Errno::ROFS,
            Errno::NOENT,
            Errno::NOTDIR,
        ] {
            assert_eq!(kind_of(e), CacheErrorKind::Unwritable, "{e:?}");
        }
        assert_eq!(kind_of(Errno::IO), CacheErrorKind::Io);
        assert_eq!(kind_of(Errno::ISDIR), CacheErrorKind::Io);
    }

    #[test]
    fn messages_name_the_path() {
        let e = CacheError::io(
            "rename",
            "/cache/chunks/ab",
            io::Error::from_raw_os_error(Errno::ROFS.raw_os_error()),
        );
        let text = e.to_string();
        assert!(
            text.contains("not writable") && text.contains("/cache/chunks/ab"),
            "{text}"
        );
    }
}
