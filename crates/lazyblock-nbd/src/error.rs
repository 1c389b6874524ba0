//! Errors of the codec.

/// A decoding failure the connection cannot recover from, except
/// [`NbdError::UnknownCommand`], which the server answers with `NBD_EINVAL` and goes on.
///
/// "Not enough bytes yet" is not an error: decoders return `Ok(None)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NbdError {
    /// A message did not start with its magic number.
    #[error("bad {what} magic {found:#x}")]
    BadMagic {
        /// Which message ("option", "request", ...).
        what: &'static str,
        /// The value found instead.
        found: u64,
    },
    /// A length field is larger than the codec accepts.
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Which length ("option data", ...).
        what: &'static str,
        /// The length announced.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The client flags are not acceptable (fixed newstyle missing, or unknown bits set).
    #[error("client flags {flags:#x} rejected: {reason}")]
    BadClientFlags {
        /// The flags received.
        flags: u32,
        /// Why they are rejected.
        reason: &'static str,
    },
    /// A well-framed request with an unknown command type. The header (28 bytes) is consumed;
    /// the server answers `NBD_EINVAL` to `cookie` and goes on.
    #[error("unknown command type {command} (cookie {cookie:#x})")]
    UnknownCommand {
        /// The cookie (handle) to answer.
        cookie: u64,
        /// The command type received.
        command: u16,
    },
}

/// The small, stable classification of [`NbdError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The peer broke the protocol (bad magic, bad flags): close the connection.
    Protocol,
    /// A length exceeded a limit: close the connection.
    TooLarge,
    /// An unknown command: answer `NBD_EINVAL` to the cookie and continue.
    UnknownCommand,
}

impl NbdError {
    /// The stable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::BadMagic { .. } | Self::BadClientFlags { .. } => ErrorKind::Protocol,
            Self::TooLarge { .. } => ErrorKind::TooLarge,
            Self::UnknownCommand { .. } => ErrorKind::UnknownCommand,
        }
    }

    /// The cookie to answer with an error reply, when the connection can go on.
    pub fn reply_cookie(&self) -> Option<u64> {
        match self {
            Self::UnknownCommand { cookie, .. } => Some(*cookie),
            _ => None,
        }
    }
}
