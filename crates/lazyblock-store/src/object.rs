//! [`ObjectChunkStore`]: the [`ChunkStore`] over `object_store`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use lazyblock_format::{ChunkName, ImageRef, ManifestId, RootId, TenantId};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
};

use crate::error::{StoreError, StoreErrorKind};
use crate::layout::Layout;
use crate::{ChunkStore, MetaKey, PutOutcome, Result, WriteMode};

/// Where a store lives.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum StoreLocation {
    /// A local directory (`file:///abs/path`, or an absolute path).
    Local(PathBuf),
    /// An S3-compatible bucket and key prefix (`s3://bucket/prefix`).
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix inside the bucket, without slashes at either end (may be empty).
        prefix: String,
    },
}

impl StoreLocation {
    /// Parses `file:///abs/path`, `/abs/path` or `s3://bucket[/prefix]`.
    pub fn parse(url: &str) -> Result<Self> {
        let invalid = |why: &str| {
            StoreError::new(
                StoreErrorKind::InvalidInput,
                format!("store URL {url:?} {why}: use file:///absolute/path or s3://bucket/prefix"),
            )
        };
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(invalid("is not an absolute file URL"));
            }
            return Ok(Self::Local(PathBuf::from(path)));
        }
        if url.starts_with('/') {
            return Ok(Self::Local(PathBuf::from(url)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
            if !bucket_ok {
                return Err(invalid("has no valid bucket name"));
            }
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|p| p == "." || p == "..")
                || prefix.contains("//")
                || Path::parse(prefix).is_err()
            {
                return Err(invalid("has an invalid key prefix"));
            }
            return Ok(Self::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.to_owned(),
            });
        }
        Err(invalid("has an unknown scheme"))
    }

    /// The canonical URL.
    pub fn url(&self) -> String {
        match self {
            Self::Local(p) => format!("file://{}", p.display()),
            Self::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}"),
            Self::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        }
    }
}

/// Picks the S3 options out of environment-style variables: every `AWS_*` name that
/// `object_store` knows, lower-cased (`AWS_ENDPOINT_URL` → `aws_endpoint_url`), sorted. The
/// caller passes the variables (this crate reads no environment).
pub fn s3_options_from_vars(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    let mut options: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with("AWS_"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .filter(|(k, _)| k.parse::<AmazonS3ConfigKey>().is_ok())
        .collect();
    options.sort();
    options
}

/// Settings of an [`ObjectChunkStore`].
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Where the store is.
    pub location: StoreLocation,
    /// `object_store` S3 options (`aws_endpoint`, `aws_access_key_id`, `aws_region`,
    /// `aws_allow_http`, …), usually gathered from `AWS_*` variables by the binary.
    pub s3_options: Vec<(String, String)>,
    /// Retries of a failed HTTP request (transient errors only).
    pub max_retries: usize,
    /// Longest time spent retrying one request.
    pub retry_timeout: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// Create a missing local store directory (writers); readers set `false` so a mistyped
    /// path is an error rather than a new empty store.
    pub create_if_missing: bool,
}

impl StoreConfig {
    /// Defaults for a location: 4 retries within 15 s, 3 s connect and 60 s request timeouts.
    pub fn new(location: StoreLocation) -> Self {
        Self {
            location,
            s3_options: Vec::new(),
            max_retries: 4,
            retry_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(60),
            create_if_missing: true,
        }
    }
}

/// The [`ChunkStore`] over any `object_store` backend.
#[derive(Debug, Clone)]
pub struct ObjectChunkStore {
    store: Arc<dyn ObjectStore>,
    layout: Layout,
    url: String,
    /// For a local directory: the directory, so [`ChunkStore::sync`] can `syncfs` it.
    local_dir: Option<PathBuf>,
}

impl ObjectChunkStore {
    /// Opens a store (creating a local directory if needed). Makes no request.
    pub fn open(config: &StoreConfig) -> Result<Self> {
        let url = config.location.url();
        match &config.location {
            StoreLocation::Local(dir) if !config.create_if_missing && !dir.is_dir() => {
                Err(StoreError::new(
                    StoreErrorKind::NotFound,
                    format!("store {url}: directory {} does not exist", dir.display()),
                ))
            }
            StoreLocation::Local(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::new(
                        StoreErrorKind::Unavailable,
                        format!(
                            "store {url}: cannot create directory {}: {e}",
                            dir.display()
                        ),
                    )
                })?;
                let fs = LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| StoreError::from_object_store(&url, "open", e))?
                    .with_automatic_cleanup(true);
                let mut store = Self::with_object_store(Arc::new(fs), "", url);
                store.local_dir = Some(dir.clone());
                Ok(store)
            }
            StoreLocation::S3 { bucket, prefix } => {
                let mut builder = AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_virtual_hosted_style_request(false)
                    .with_retry(RetryConfig {
                        backoff: BackoffConfig {
                            init_backoff: Duration::from_millis(100),
                            max_backoff: Duration::from_secs(2),
                            base: 2.0,
                        },
                        max_retries: config.max_retries,
                        retry_timeout: config.retry_timeout,
                    });
                for (key, value) in &config.s3_options {
                    let key: AmazonS3ConfigKey = key.parse().map_err(|_| {
                        StoreError::new(
                            StoreErrorKind::InvalidInput,
                            format!("unknown S3 option {key:?}"),
                        )
                    })?;
                    builder = builder.with_config(key, value);
                }
                for (key, value) in [
                    ("connect_timeout", config.connect_timeout),
                    ("timeout", config.request_timeout),
                ] {
                    let key: AmazonS3ConfigKey = key.parse().map_err(|_| {
                        StoreError::new(StoreErrorKind::Other, format!("S3 option {key}"))
                    })?;
                    builder = builder.with_config(key, format!("{}ms", value.as_millis()));
                }
                let s3 = builder.build().map_err(|e| {
                    StoreError::new(
                        StoreErrorKind::InvalidInput,
                        format!("store {url}: invalid S3 configuration: {e}"),
                    )
                })?;
                Ok(Self::with_object_store(Arc::new(s3), prefix, url))
            }
        }
    }

    /// Wraps an existing `object_store` (tests, wrappers, other backends).
    pub fn with_object_store(store: Arc<dyn ObjectStore>, prefix: &str, url: String) -> Self {
        Self {
            store,
            layout: Layout::new(prefix),
            url,
            local_dir: None,
        }
    }

    fn err(&self, what: &str, e: object_store::Error) -> StoreError {
        StoreError::from_object_store(&self.url, what, e)
    }

    /// Deletes an object; a missing one is not an error.
    async fn delete_quietly(&self, key: &str, what: &str) -> Result<()> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(&format!("delete {what}"), e)),
        }
    }

    /// The names one level below `dir` (object names and directory-like prefixes alike).
    async fn children(&self, dir: &str, what: &str) -> Result<Vec<String>> {
        let listing = self
            .store
            .list_with_delimiter(Some(&Path::from(dir)))
            .await
            .map_err(|e| self.err(&format!("list {what}"), e))?;
        let mut names: Vec<String> = listing
            .common_prefixes
            .iter()
            .chain(listing.objects.iter().map(|m| &m.location))
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn meta_path(&self, key: &MetaKey) -> String {
        match key {
            MetaKey::RootState(r) => self.layout.root_state(r),
            MetaKey::Halt(r) => self.layout.halt(r),
        }
    }

    async fn put_if_absent(&self, key: &str, what: &str, data: Bytes) -> Result<PutOutcome> {
        let path = Path::from(key);
        // Check first: cheaper than a PUT, and correct on servers that ignore If-None-Match.
        match self.store.head(&path).await {
            Ok(_) => return Ok(PutOutcome::AlreadyPresent),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.err(&format!("check {what}"), e)),
        }
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from_bytes(data), opts)
            .await
        {
            Ok(_) => Ok(PutOutcome::Stored),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(PutOutcome::AlreadyPresent),
            Err(e) => Err(self.err(&format!("upload {what}"), e)),
        }
    }

    /// Fetches a whole object of at most `max` bytes. The size comes with the response head,
    /// so an oversized object (a broken or hostile origin) is refused before its body is read:
    /// readers never hold more than the largest valid object of the kind in memory.
    async fn get_bytes(&self, key: &str, what: &str, max: u64) -> Result<Bytes> {
        let path = Path::from(key);
        let result = self.store.get(&path).await.map_err(|e| self.err(what, e))?;
        if result.meta.size > max {
            return Err(StoreError::new(
                StoreErrorKind::Corrupt,
                format!(
                    "{what} in {} is {} bytes, more than the {max} bytes such an object can have",
                    self.url, result.meta.size
                ),
            ));
        }
        result.bytes().await.map_err(|e| self.err(what, e))
    }
}

/// The largest chunk: the largest chunk size.
const MAX_CHUNK_BYTES: u64 = 1 << lazyblock_format::ChunkSize::MAX_LOG2;
/// The largest manifest accepted (about a 1.5 TiB image of 512 KiB chunks).
const MAX_MANIFEST_BYTES: u64 = 256 << 20;
/// The largest profile: the frame plus `MAX_PROFILE_CHUNKS` names.
const MAX_PROFILE_BYTES: u64 = 76 + 32 * lazyblock_format::MAX_PROFILE_CHUNKS as u64;
/// The largest catalog entry.
const MAX_CATALOG_BYTES: u64 = 64 << 10;
/// The largest GC record.
const MAX_META_BYTES: u64 = 64 << 10;

#[async_trait]
impl ChunkStore for ObjectChunkStore {
    fn url(&self) -> &str {
        &self.url
    }

    async fn check(&self) -> Result<()> {
        let probe = Path::from(self.layout.catalog_dir(&probe_tenant()));
        self.store
            .list_with_delimiter(Some(&probe))
            .await
            .map(|_| ())
            .map_err(|e| self.err("list", e))
    }

    async fn sync(&self) -> Result<()> {
        let Some(dir) = self.local_dir.clone() else {
            return Ok(());
        };
        let url = self.url.clone();
        tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&dir)?;
            rustix::fs::syncfs(&f)?;
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(|e| {
            StoreError::new(
                StoreErrorKind::Other,
                format!("store {url}: sync task: {e}"),
            )
        })?
        .map_err(|e| {
            StoreError::new(
                StoreErrorKind::Unavailable,
                format!("store {}: cannot flush writes to disk: {e}", self.url),
            )
        })
    }

    async fn put_chunk(&self, root: &RootId, name: &ChunkName, data: Bytes) -> Result<PutOutcome> {
        self.put_if_absent(
            &self.layout.chunk(root, name),
            &format!("chunk {name}"),
            data,
        )
        .await
    }

    async fn get_chunk(&self, root: &RootId, name: &ChunkName) -> Result<Bytes> {
        self.get_bytes(
            &self.layout.chunk(root, name),
            &format!("chunk {name}"),
            MAX_CHUNK_BYTES,
        )
        .await
    }

    async fn has_chunk(&self, root: &RootId, name: &ChunkName) -> Result<bool> {
        match self
            .store
            .head(&Path::from(self.layout.chunk(root, name)))
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err(&format!("check chunk {name}"), e)),
        }
    }

    async fn delete_chunk(&self, root: &RootId, name: &ChunkName) -> Result<()> {
        self.delete_quietly(&self.layout.chunk(root, name), &format!("chunk {name}"))
            .await
    }

    fn list_chunks(&self, root: &RootId) -> BoxStream<'_, Result<(ChunkName, u64)>> {
        let dir = Path::from(self.layout.chunks_dir(root));
        self.store
            .list(Some(&dir))
            .map_err(|e| self.err("list chunks", e))
            .try_filter_map(|meta| async move {
                // Skip anything that is not a chunk (e.g. a stray temporary file).
                Ok(meta
                    .location
                    .filename()
                    .and_then(|f| ChunkName::from_hex(f).ok())
                    .map(|name| (name, meta.size)))
            })
            .boxed()
    }

    async fn put_manifest(
        &self,
        root: &RootId,
        id: &ManifestId,
        data: Bytes,
    ) -> Result<PutOutcome> {
        self.put_if_absent(
            &self.layout.manifest(root, id),
            &format!("manifest {id}"),
            data,
        )
        .await
    }

    async fn get_manifest(&self, root: &RootId, id: &ManifestId) -> Result<Bytes> {
        self.get_bytes(
            &self.layout.manifest(root, id),
            &format!("manifest {id}"),
            MAX_MANIFEST_BYTES,
        )
        .await
    }

    async fn list_manifests(&self, root: &RootId) -> Result<Vec<(ManifestId, u64)>> {
        let dir = Path::from(self.layout.manifests_dir(root));
        let metas: Vec<_> = self
            .store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| self.err(&format!("list the manifests of root {root}"), e))?;
        let mut out: Vec<(ManifestId, u64)> = metas
            .iter()
            .filter_map(|m| {
                let id = ManifestId::from_hex(m.location.filename()?).ok()?;
                Some((id, m.size))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    async fn delete_manifest(&self, root: &RootId, id: &ManifestId) -> Result<()> {
        // The profile first: a manifest never loses its profile while it is still listed.
        self.delete_quietly(
            &self.layout.profile(root, id),
            &format!("profile of manifest {id}"),
        )
        .await?;
        self.delete_quietly(&self.layout.manifest(root, id), &format!("manifest {id}"))
            .await
    }

    async fn put_profile(&self, root: &RootId, id: &ManifestId, data: Bytes) -> Result<()> {
        let path = Path::from(self.layout.profile(root, id));
        self.store
            .put(&path, PutPayload::from_bytes(data))
            .await
            .map(|_| ())
            .map_err(|e| self.err(&format!("store the profile of manifest {id}"), e))
    }

    async fn get_profile(&self, root: &RootId, id: &ManifestId) -> Result<Bytes> {
        self.get_bytes(
            &self.layout.profile(root, id),
            &format!("profile of manifest {id}"),
            MAX_PROFILE_BYTES,
        )
        .await
    }

    async fn put_catalog(&self, tenant: &TenantId, image: &ImageRef, entry: Bytes) -> Result<()> {
        let path = Path::from(self.layout.catalog(tenant, image));
        self.store
            .put(&path, PutPayload::from_bytes(entry))
            .await
            .map(|_| ())
            .map_err(|e| self.err(&format!("publish {image}"), e))
    }

    async fn get_catalog(&self, tenant: &TenantId, image: &ImageRef) -> Result<Bytes> {
        self.get_bytes(
            &self.layout.catalog(tenant, image),
            &format!("image {image} of tenant {tenant}"),
            MAX_CATALOG_BYTES,
        )
        .await
    }

    async fn delete_catalog(&self, tenant: &TenantId, image: &ImageRef) -> Result<()> {
        let path = Path::from(self.layout.catalog(tenant, image));
        match self.store.head(&path).await {
            Err(object_store::Error::NotFound { .. }) => {
                return Err(StoreError::new(
                    StoreErrorKind::NotFound,
                    format!(
                        "image {image} of tenant {tenant}: not found in store {}",
                        self.url
                    ),
                ))
            }
            Err(e) => return Err(self.err(&format!("check {image}"), e)),
            Ok(_) => {}
        }
        self.store
            .delete(&path)
            .await
            .map_err(|e| self.err(&format!("unpublish {image}"), e))
    }

    async fn list_tenants(&self) -> Result<Vec<TenantId>> {
        let names = self
            .children(&self.layout.catalogs_dir(), "the catalogs")
            .await?;
        Ok(names
            .iter()
            .filter_map(|n| TenantId::new(n).ok())
            .filter(|t| *t != probe_tenant())
            .collect())
    }

    async fn list_roots(&self) -> Result<Vec<RootId>> {
        let names = self.children(&self.layout.roots_dir(), "the roots").await?;
        Ok(names.iter().filter_map(|n| RootId::new(n).ok()).collect())
    }

    async fn put_meta(&self, key: &MetaKey, data: Bytes, mode: WriteMode) -> Result<PutOutcome> {
        let path = self.meta_path(key);
        match mode {
            WriteMode::Create => self.put_if_absent(&path, &key.to_string(), data).await,
            WriteMode::Overwrite => self
                .store
                .put(&Path::from(path), PutPayload::from_bytes(data))
                .await
                .map(|_| PutOutcome::Stored)
                .map_err(|e| self.err(&format!("write the {key}"), e)),
        }
    }

    async fn get_meta(&self, key: &MetaKey) -> Result<Bytes> {
        self.get_bytes(&self.meta_path(key), &format!("the {key}"), MAX_META_BYTES)
            .await
    }

    async fn delete_meta(&self, key: &MetaKey) -> Result<()> {
        self.delete_quietly(&self.meta_path(key), &format!("the {key}"))
            .await
    }

    async fn list_halts(&self) -> Result<Vec<RootId>> {
        let names = self
            .children(&self.layout.halts_dir(), "the deletion halts")
            .await?;
        Ok(names.iter().filter_map(|n| RootId::new(n).ok()).collect())
    }

    async fn list_catalog(&self, tenant: &TenantId) -> Result<Vec<ImageRef>> {
        let dir = self.layout.catalog_dir(tenant);
        let metas: Vec<_> = self
            .store
            .list(Some(&Path::from(dir.as_str())))
            .try_collect()
            .await
            .map_err(|e| self.err(&format!("list the catalog of tenant {tenant}"), e))?;
        let mut images: Vec<ImageRef> = metas
            .iter()
            .filter_map(|m| {
                let key = m.location.as_ref();
                let rel = key.strip_prefix(dir.as_str())?.strip_prefix('/')?;
                ImageRef::parse(rel).ok()
            })
            .collect();
        images.sort();
        Ok(images)
    }
}

fn probe_tenant() -> TenantId {
    TenantId::new("probe").expect("a valid constant")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_options_keep_known_aws_names_only() {
        let vars = [
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ("AWS_NOT_AN_OPTION", "x"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(
            s3_options_from_vars(vars),
            vec![
                (
                    "aws_endpoint_url".to_owned(),
                    "http://127.0.0.1:9000".to_owned()
                ),
                ("aws_region".to_owned(), "us-east-1".to_owned()),
            ]
        );
    }

    #[test]
    fn parse_locations() {
        assert_eq!(
            StoreLocation::parse("file:///var/lib/x").expect("ok"),
            StoreLocation::Local("/var/lib/x".into())
        );
        assert_eq!(
            StoreLocation::parse("s3://bucket/a/b/").expect("ok"),
            StoreLocation::S3 {
                bucket: "bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            StoreLocation::parse("s3://bucket").expect("ok").url(),
            "s3://bucket"
        );
        for bad in [
            "file://rel",
            "rel/dir",
            "s3://",
            "s3://B",
            "s3://bucket/../x",
            "http://x",
            "",
        ] {
            let e = StoreLocation::parse(bad).expect_err(bad);
            assert_eq!(e.kind(), StoreErrorKind::InvalidInput);
        }
    }
}
