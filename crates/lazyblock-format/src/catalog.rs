//! The catalog entry: what `catalog/<tenant>/<name>:<tag>` holds.
//!
//! A small, line-oriented text record, so an operator can read it with `cat`:
//! ```text
//! lazyblock-catalog 1
//! root r0
//! manifest <64 hex>
//! image-size <bytes>
//! created <unix seconds>
//! ```

use crate::ids::{ManifestId, RootId};
use crate::lines::Lines;
use crate::Result;

/// A published image: where its manifest lives.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CatalogEntry {
    /// The root holding the manifest.
    pub root: RootId,
    /// The manifest's id.
    pub manifest: ManifestId,
    /// The image size in bytes (a copy of the manifest's, for listings).
    pub image_size: u64,
    /// Build time, seconds since the Unix epoch.
    pub created_unix_secs: u64,
}

const FIRST_LINE: &str = "lazyblock-catalog 1";

impl CatalogEntry {
    /// Encodes the entry.
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{FIRST_LINE}\nroot {}\nmanifest {}\nimage-size {}\ncreated {}\n",
            self.root, self.manifest, self.image_size, self.created_unix_secs
        )
        .into_bytes()
    }

    /// Decodes an entry, strictly.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut lines = Lines::new(bytes, "catalog entry", FIRST_LINE)?;
        let root = RootId::new(lines.field("root")?).map_err(|e| lines.corrupt(&e.to_string()))?;
        let manifest = ManifestId::from_hex(lines.field("manifest")?)
            .map_err(|e| lines.corrupt(&e.to_string()))?;
        let image_size = lines
            .field("image-size")?
            .parse()
            .map_err(|_| lines.corrupt("bad image-size"))?;
        let created_unix_secs = lines
            .field("created")?
            .parse()
            .map_err(|_| lines.corrupt("bad created"))?;
        lines.end()?;
        Ok(Self {
            root,
            manifest,
            image_size,
            created_unix_secs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_strictness() {
        let e = CatalogEntry {
            root: RootId::initial(),
            manifest: ManifestId::from_bytes([7; 32]),
            image_size: 12345,
            created_unix_secs: 1_700_000_000,
        };
        let bytes = e.encode();
        assert_eq!(CatalogEntry::decode(&bytes).expect("decode"), e);
        let text = String::from_utf8(bytes).expect("utf8");
        for bad in [
            text.replace("root r0", "root R0"),
            text.replace("created", "createdx"),
            text.trim_end().to_owned(),
            format!("{text}extra\n"),
            text.replace("lazyblock-catalog 1", "lazyblock-catalog 2"),
        ] {
            assert!(CatalogEntry::decode(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
