//! Identifiers: chunk and manifest names (content hashes), tenants, roots and image references.
//!
//! Every identifier that ends up in an object key or a file name is validated here, so nothing
//! downstream can build a path from unchecked text.

use std::fmt;
use std::str::FromStr;

use crate::error::FormatError;
use crate::Result;

macro_rules! digest_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Wraps 32 raw digest bytes.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }
            /// The raw digest bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
            /// Lower-case hex, 64 characters: the form used in object keys.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            /// Parses 64 hex characters.
            pub fn from_hex(text: &str) -> Result<Self> {
                let mut out = [0u8; 32];
                if text.len() != 64 || hex::decode_to_slice(text, &mut out).is_err() {
                    return Err(FormatError::invalid(format!(
                        "{} must be 64 hex characters, got {:?}",
                        $what,
                        truncate_for_message(text)
                    )));
                }
                Ok(Self(out))
            }
            /// The first 12 hex characters, for log lines.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..6])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.short())
            }
        }

        impl FromStr for $name {
            type Err = FormatError;
            fn from_str(s: &str) -> Result<Self> {
                Self::from_hex(s)
            }
        }
    };
}

digest_id!(
    /// The name of a stored chunk: `SHA-256(ciphertext)`.
    ChunkName,
    "a chunk name"
);
digest_id!(
    /// The id of a manifest: `SHA-256` of its bytes before the trailer (see `docs/format.md`).
    ManifestId,
    "a manifest id"
);

pub(crate) fn truncate_for_message(text: &str) -> String {
    text.chars().take(80).collect()
}

fn check_token(what: &str, text: &str, max_len: usize, extra: &[char]) -> Result<()> {
    let ok_first = text
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_rest = text
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(&c));
    if text.is_empty() || text.len() > max_len || !ok_first || !ok_rest {
        return Err(FormatError::invalid(format!(
            "invalid {what} {:?}: use 1 to {max_len} characters from a-z, 0-9 and {:?}, starting with a letter or digit",
            truncate_for_message(text),
            extra.iter().collect::<String>()
        )));
    }
    Ok(())
}

/// A tenant: the owner of images, catalog entries and one key.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct TenantId(String);

impl TenantId {
    /// Longest tenant name accepted.
    pub const MAX_LEN: usize = 63;

    /// Validates a tenant name: `[a-z0-9][a-z0-9_-]{0,62}`.
    pub fn new(text: &str) -> Result<Self> {
        check_token("tenant name", text, Self::MAX_LEN, &['-', '_'])?;
        Ok(Self(text.to_owned()))
    }
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TenantId {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

/// A GC root: a self-contained namespace of manifests and chunks. Part of every chunk's salt.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct RootId(String);

impl RootId {
    /// Longest root id accepted.
    pub const MAX_LEN: usize = 32;

    /// Validates a root id: `[a-z0-9][a-z0-9-]{0,31}`.
    pub fn new(text: &str) -> Result<Self> {
        check_token("root id", text, Self::MAX_LEN, &['-'])?;
        Ok(Self(text.to_owned()))
    }
    /// The root every store starts with, until GC rotates roots.
    pub fn initial() -> Self {
        Self("r0".to_owned())
    }
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RootId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RootId {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

/// An image reference `name:tag`, as published in a tenant's catalog.
///
/// Names are path-like (`team/app`), in lower case; tags follow the OCI tag grammar.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ImageRef {
    name: String,
    tag: String,
}

impl ImageRef {
    /// Longest name accepted (without the tag).
    pub const MAX_NAME_LEN: usize = 200;
    /// Longest tag accepted.
    pub const MAX_TAG_LEN: usize = 128;

    /// Parses `name:tag`.
    pub fn parse(text: &str) -> Result<Self> {
        let Some((name, tag)) = text.rsplit_once(':') else {
            return Err(FormatError::invalid(format!(
                "image reference {:?} has no tag: write it as {}:<tag>",
                truncate_for_message(text),
                truncate_for_message(text)
            )));
        };
        Self::new(name, tag)
    }

    /// Validates a name and a tag separately.
    pub fn new(name: &str, tag: &str) -> Result<Self> {
        let name_ok = !name.is_empty()
            && name.len() <= Self::MAX_NAME_LEN
            && name.split('/').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && part.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
                    })
            });
        if !name_ok {
            return Err(FormatError::invalid(format!(
                "invalid image name {:?}: use lower-case letters, digits, '.', '_', '-', and '/' between parts, each part starting with a letter or digit",
                truncate_for_message(name)
            )));
        }
        let tag_ok = !tag.is_empty()
            && tag.len() <= Self::MAX_TAG_LEN
            && tag
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !tag_ok {
            return Err(FormatError::invalid(format!(
                "invalid tag {:?}: use 1 to 128 characters from A-Z, a-z, 0-9, '.', '_', '-', not starting with '.' or '-'",
                truncate_for_message(tag)
            )));
        }
        Ok(Self {
            name: name.to_owned(),
            tag: tag.to_owned(),
        })
    }

    /// The name part.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The tag part.
    pub fn tag(&self) -> &str {
        &self.tag
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

impl FromStr for ImageRef {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_refs() {
        let r = ImageRef::parse("team/app-1:v1.2").expect("valid");
        assert_eq!((r.name(), r.tag()), ("team/app-1", "v1.2"));
        assert_eq!(r.to_string(), "team/app-1:v1.2");
        for bad in [
            "app", "app:", ":v1", "App:v1", "a//b:v", "a/:v", "../x:v", "a/.b:v", "a:.v", "a:-v",
            "a b:v", "a:v/1",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad} should be rejected");
        }
        let err = ImageRef::parse("ubuntu").expect_err("no tag");
        assert!(err.to_string().contains("has no tag"), "{err}");
    }

    #[test]
    fn tokens() {
        assert!(TenantId::new("acme_1-x").is_ok());
        for bad in ["", "-a", "A", "a/b", "a.b", &"a".repeat(64)] {
            assert!(TenantId::new(bad).is_err(), "{bad:?}");
        }
        assert!(RootId::new("r0").is_ok());
        assert!(RootId::new("r_0").is_err());
    }

    #[test]
    fn digest_hex_round_trip() {
        let n = ChunkName::from_bytes([0xab; 32]);
        assert_eq!(ChunkName::from_hex(&n.to_hex()).expect("hex"), n);
        assert!(ChunkName::from_hex("abc").is_err());
        assert!(ChunkName::from_hex(&"zz".repeat(32)).is_err());
    }
}
