//! The error of the store crate.

/// A small, stable classification of store failures.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The object does not exist.
    NotFound,
    /// The store could not be reached or answered with a transient error, after retries.
    Unavailable,
    /// The request was refused (credentials, permissions).
    Denied,
    /// A store URL or setting is malformed.
    InvalidInput,
    /// Stored data is malformed.
    Corrupt,
    /// Anything else.
    Other,
}

/// An error from the origin store: one line naming the store, the operation and the object.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
}

impl StoreError {
    /// An error of `kind` (for other `ChunkStore` implementations and fault-injecting tests).
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The stable kind.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind == StoreErrorKind::Unavailable
    }

    pub(crate) fn from_object_store(url: &str, what: &str, err: object_store::Error) -> Self {
        use object_store::Error as E;
        let kind = match &err {
            E::NotFound { .. } => StoreErrorKind::NotFound,
            E::InvalidPath { .. } => StoreErrorKind::InvalidInput,
            E::Unauthenticated { .. } | E::PermissionDenied { .. } => StoreErrorKind::Denied,
            E::Generic { .. } => StoreErrorKind::Unavailable,
            _ => StoreErrorKind::Other,
        };
        let detail = one_line(&err);
        let message = match kind {
            StoreErrorKind::NotFound => format!("{what}: not found in store {url}"),
            _ => format!("store {url}: {what} failed: {detail}"),
        };
        Self::new(kind, message)
    }
}

/// Flattens an error and its sources into one line.
fn one_line(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    let mut line: String = out.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.len() > 400 {
        let mut end = 400;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push('…');
    }
    line
}
