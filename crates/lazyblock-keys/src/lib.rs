//! Tenant keys: the [`KeyProvider`] seam and the local keyring.
//!
//! A tenant key wraps the data key of every manifest the tenant builds. The local keyring keeps
//! one 256-bit key per tenant in a directory (mode 0700), one file per tenant (mode 0600), created
//! on first use by an atomic link so that concurrent first uses agree on one key. A KMS-backed
//! provider can implement the same trait later.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use lazyblock_format::{TenantId, TenantKey, TENANT_KEY_LEN};

/// What went wrong, in a small stable set.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyErrorKind {
    /// The tenant has no key and the caller did not ask to create one.
    NotFound,
    /// A key file exists but does not hold a key.
    Corrupt,
    /// The key directory could not be read or written.
    Io,
}

/// An error from a key provider.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct KeyError {
    kind: KeyErrorKind,
    message: String,
}

impl KeyError {
    fn new(kind: KeyErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    /// The stable kind.
    pub fn kind(&self) -> KeyErrorKind {
        self.kind
    }
}

/// Whether a missing key may be created.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum KeyAccess {
    /// Reading existing data: a missing key is an error.
    Existing,
    /// Building: a missing key is created.
    CreateIfMissing,
}

/// Supplies tenant keys.
pub trait KeyProvider: Send + Sync + std::fmt::Debug {
    /// The key of `tenant`.
    fn tenant_key(&self, tenant: &TenantId, access: KeyAccess) -> Result<TenantKey, KeyError>;
}

/// Source of fresh key material (injected so tests are deterministic).
pub type KeyRandom = Box<dyn Fn(&mut [u8]) + Send + Sync>;

/// Keys in a local directory: `<dir>/<tenant>.key`, 64 hex characters and a newline.
pub struct LocalKeyring {
    dir: PathBuf,
    random: KeyRandom,
}

impl std::fmt::Debug for LocalKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKeyring")
            .field("dir", &self.dir)
            .finish()
    }
}

impl LocalKeyring {
    /// A keyring in `dir`, drawing new keys from the system's secure random generator.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self::with_random(
            dir,
            Box::new(|buf| {
                aws_lc_rs::rand::fill(buf).expect("the system random generator failed");
            }),
        )
    }

    /// A keyring with an injected random source.
    pub fn with_random(dir: impl Into<PathBuf>, random: KeyRandom) -> Self {
        Self {
            dir: dir.into(),
            random,
        }
    }

    /// The directory holding the keys.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, tenant: &TenantId) -> PathBuf {
        self.dir.join(format!("{tenant}.key"))
    }

    fn read(&self, tenant: &TenantId, path: &Path) -> Result<Option<TenantKey>, KeyError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(KeyError::new(
                    KeyErrorKind::Io,
                    format!(
                        "cannot read the key of tenant {tenant} at {}: {e}",
                        path.display()
                    ),
                ))
            }
        };
        let mut bytes = [0u8; TENANT_KEY_LEN];
        let hex_text = text.trim_end_matches('\n');
        if hex_text.len() != TENANT_KEY_LEN * 2
            || hex::decode_to_slice(hex_text, &mut bytes).is_err()
        {
            return Err(KeyError::new(
                KeyErrorKind::Corrupt,
                format!(
                    "the key file of tenant {tenant} at {} is not 64 hex characters",
                    path.display()
                ),
            ));
        }
        let key = TenantKey::from_bytes(bytes);
        zeroize::Zeroize::zeroize(&mut bytes);
        Ok(Some(key))
    }

    fn create(&self, tenant: &TenantId, path: &Path) -> Result<(), KeyError> {
        let io = |what: &str, e: std::io::Error| {
            KeyError::new(
                KeyErrorKind::Io,
                format!("cannot {what} in {}: {e}", self.dir.display()),
            )
        };
        fs::create_dir_all(&self.dir).map_err(|e| io("create the key directory", e))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| io("restrict the key directory", e))?;
        let mut key = [0u8; TENANT_KEY_LEN];
        (self.random)(&mut key);
        let mut text = hex::encode(key);
        zeroize::Zeroize::zeroize(&mut key);
        text.push('\n');
        static NEXT_TMP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let tmp = self.dir.join(format!(
            ".{tenant}.key.tmp-{}-{}",
            std::process::id(),
            NEXT_TMP.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = fs::remove_file(&tmp);
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.sync_all()
            });
        zeroize::Zeroize::zeroize(&mut text);
        written.map_err(|e| io(&format!("write a new key for tenant {tenant}"), e))?;
        // link() fails if another process created the key first: then theirs wins.
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io(&format!("store the key of tenant {tenant}"), e)),
        }
    }
}

impl KeyProvider for LocalKeyring {
    fn tenant_key(&self, tenant: &TenantId, access: KeyAccess) -> Result<TenantKey, KeyError> {
        let path = self.path_of(tenant);
        if let Some(key) = self.read(tenant, &path)? {
            return Ok(key);
        }
        if access == KeyAccess::Existing {
            return Err(KeyError::new(
                KeyErrorKind::NotFound,
                format!(
                    "no key for tenant {tenant} in {} (keys are created by the tenant's first build; set LAZYBLOCK_KEYS_DIR to use another keyring)",
                    self.dir.display()
                ),
            ));
        }
        self.create(tenant, &path)?;
        self.read(tenant, &path)?.ok_or_else(|| {
            KeyError::new(
                KeyErrorKind::Io,
                format!("the key of tenant {tenant} vanished after creation"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn tenant(name: &str) -> TenantId {
        TenantId::new(name).expect("valid")
    }

    #[test]
    fn created_once_with_private_modes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("keys");
        let ring = LocalKeyring::new(&dir);
        let err = ring
            .tenant_key(&tenant("a"), KeyAccess::Existing)
            .expect_err("missing");
        assert_eq!(err.kind(), KeyErrorKind::NotFound);
        let k1 = ring
            .tenant_key(&tenant("a"), KeyAccess::CreateIfMissing)
            .expect("create");
        let k2 = ring
            .tenant_key(&tenant("a"), KeyAccess::Existing)
            .expect("read");
        assert_eq!(k1, k2);
        let kb = ring
            .tenant_key(&tenant("b"), KeyAccess::CreateIfMissing)
            .expect("create");
        assert_ne!(k1, kb);
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("a.key")), 0o600);
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn concurrent_first_use_agrees_on_one_key() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_owned();
        let counter = Arc::new(std::sync::atomic::AtomicU8::new(1));
        let keys: Vec<_> = (0..8)
            .map(|_| {
                let dir = dir.clone();
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let ring = LocalKeyring::with_random(
                        dir,
                        Box::new(move |b| {
                            b.fill(counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
                        }),
                    );
                    ring.tenant_key(&tenant("t"), KeyAccess::CreateIfMissing)
                        .expect("key")
                })
            })
            .map(|h| h.join().expect("thread"))
            .collect();
        assert!(keys.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn corrupt_key_file_is_reported() {
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::write(tmp.path().join("a.key"), "nothex\n").expect("write");
        let err = LocalKeyring::new(tmp.path())
            .tenant_key(&tenant("a"), KeyAccess::CreateIfMissing)
            .expect_err("corrupt");
        assert_eq!(err.kind(), KeyErrorKind::Corrupt);
    }
}
