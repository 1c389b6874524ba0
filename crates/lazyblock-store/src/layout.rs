//! The object layout of a store, relative to its prefix.
//!
//! ```text
//! roots/<root>/chunks/<chunk name, 64 hex>
//! roots/<root>/manifests/<manifest id, 64 hex>
//! roots/<root>/profiles/<manifest id, 64 hex>
//! roots/<root>/state
//! catalog/<tenant>/<image name>:<tag>
//! gc/halts/<root>
//! ```

use lazyblock_format::{ChunkName, ImageRef, ManifestId, RootId, TenantId};

/// Builds object keys under a prefix.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    /// A layout under `prefix` (no leading or trailing slash; may be empty).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_matches('/').to_owned(),
        }
    }

    fn join(&self, rest: String) -> String {
        if self.prefix.is_empty() {
            rest
        } else {
            format!("{}/{rest}", self.prefix)
        }
    }

    /// The key of a chunk.
    pub fn chunk(&self, root: &RootId, name: &ChunkName) -> String {
        self.join(format!("roots/{root}/chunks/{name}"))
    }
    /// The directory-like prefix of a root's chunks.
    pub fn chunks_dir(&self, root: &RootId) -> String {
        self.join(format!("roots/{root}/chunks"))
    }
    /// The key of a manifest.
    pub fn manifest(&self, root: &RootId, id: &ManifestId) -> String {
        self.join(format!("roots/{root}/manifests/{id}"))
    }
    /// The key of the start-up profile of a manifest.
    pub fn profile(&self, root: &RootId, id: &ManifestId) -> String {
        self.join(format!("roots/{root}/profiles/{id}"))
    }
    /// The directory-like prefix of a root's manifests.
    pub fn manifests_dir(&self, root: &RootId) -> String {
        self.join(format!("roots/{root}/manifests"))
    }
    /// The prefix under which every root lives.
    pub fn roots_dir(&self) -> String {
        self.join("roots".to_owned())
    }
    /// The key of a root's lifecycle record.
    pub fn root_state(&self, root: &RootId) -> String {
        self.join(format!("roots/{root}/state"))
    }
    /// The prefix of the deletion halt markers.
    pub fn halts_dir(&self) -> String {
        self.join("gc/halts".to_owned())
    }
    /// The key of the deletion halt raised by a read from `root`.
    pub fn halt(&self, root: &RootId) -> String {
        self.join(format!("gc/halts/{root}"))
    }
    /// The prefix of every tenant's catalog.
    pub fn catalogs_dir(&self) -> String {
        self.join("catalog".to_owned())
    }
    /// The key of a catalog entry.
    pub fn catalog(&self, tenant: &TenantId, image: &ImageRef) -> String {
        self.join(format!("catalog/{tenant}/{image}"))
    }
    /// The prefix of a tenant's catalog.
    pub fn catalog_dir(&self, tenant: &TenantId) -> String {
        self.join(format!("catalog/{tenant}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let l = Layout::new("/pre/fix/");
        let root = RootId::initial();
        let name = ChunkName::from_bytes([0xaa; 32]);
        assert_eq!(
            l.chunk(&root, &name),
            format!("pre/fix/roots/r0/chunks/{}", "aa".repeat(32))
        );
        let img = ImageRef::parse("team/app:v1").expect("valid");
        let t = TenantId::new("acme").expect("valid");
        assert_eq!(
            Layout::new("").catalog(&t, &img),
            "catalog/acme/team/app:v1"
        );
    }
}
