//! sha256 digests and readers that verify them while streaming.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use aws_lc_rs::digest::{Context, SHA256};

use crate::error::{corrupt, invalid, too_large, unsupported, Error, Result};

/// A content digest, `sha256:<64 lowercase hex>`; the only algorithm accepted.
///
/// Parsing is strict (exact length, lowercase hex) so that a digest can be turned into a
/// blob path without any risk of path traversal.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Digest of a byte slice.
    pub fn of(data: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(data);
        h.finish()
    }

    /// The 64 lowercase hex characters, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parse a bare 64-character lowercase hex string.
    pub fn from_hex(s: &str) -> Result<Self> {
        if s.len() != 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(invalid(format!("bad sha256 hex {s:?}")));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| invalid(format!("bad hex {s:?}: {e}")))?;
        Ok(Self(out))
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.split_once(':') {
            Some(("sha256", hex)) => Self::from_hex(hex),
            Some((alg, _)) if !alg.is_empty() => Err(unsupported(format!(
                "digest algorithm {alg:?} (only sha256)"
            ))),
            _ => Err(invalid(format!("malformed digest {s:?}"))),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental sha256.
pub(crate) struct Sha256(Context);

impl Sha256 {
    pub(crate) fn new() -> Self {
        Self(Context::new(&SHA256))
    }
    pub(crate) fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    pub(crate) fn finish(self) -> Digest {
        let d = self.0.finish();
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Digest(out)
    }
}

/// What a [`VerifyingReader`] checks when its input ends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expect {
    pub(crate) digest: Option<Digest>,
    pub(crate) size: Option<u64>,
    /// Fail with `TooLarge` once more than this many bytes were read.
    pub(crate) limit: Option<u64>,
}

/// Hashes and counts everything read through it; at end of input, compares with the
/// expectation and turns a mismatch into an error (an `io::Error` wrapping our
/// [`Error`], recovered by `Error::from_content_io`). Bytes beyond an expected size
/// fail at once.
pub(crate) struct VerifyingReader<R> {
    inner: R,
    hash: Option<Sha256>,
    count: u64,
    expect: Expect,
    what: String,
    done: Option<Digest>,
}

impl<R: Read> VerifyingReader<R> {
    pub(crate) fn new(inner: R, expect: Expect, what: impl Into<String>) -> Self {
        Self {
            inner,
            hash: Some(Sha256::new()),
            count: 0,
            expect,
            what: what.into(),
            done: None,
        }
    }

    /// Read to the end (so the digest covers everything) and return digest and size.
    pub(crate) fn finish(mut self) -> Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())
            .map_err(|e| Error::from_content_io(&self.what.clone(), e))?;
        let d = self
            .done
            .ok_or_else(|| corrupt("verifier did not finish"))?;
        Ok((d, self.count))
    }

    fn check_end(&mut self) -> io::Result<()> {
        let Some(h) = self.hash.take() else {
            return Ok(());
        };
        let got = h.finish();
        if let Some(size) = self.expect.size {
            if size != self.count {
                return Err(corrupt(format!(
                    "{}: size {} but descriptor says {size}",
                    self.what, self.count
                ))
                .into_io());
            }
        }
        if let Some(want) = self.expect.digest {
            if want != got {
                return Err(
                    corrupt(format!("{}: digest {got} but expected {want}", self.what)).into_io(),
                );
            }
        }
        self.done = Some(got);
        Ok(())
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.hash.is_none() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            self.check_end()?;
            return Ok(0);
        }
        let chunk = buf
            .get(..n)
            .ok_or_else(|| io::Error::other("reader overrun"))?;
        if let Some(h) = self.hash.as_mut() {
            h.update(chunk);
        }
        self.count += n as u64;
        if let Some(size) = self.expect.size {
            if self.count > size {
                return Err(corrupt(format!(
                    "{}: longer than the descriptor size {size}",
                    self.what
                ))
                .into_io());
            }
        }
        if let Some(limit) = self.expect.limit {
            if self.count > limit {
                return Err(too_large(format!(
                    "{}: exceeds the limit of {limit} bytes",
                    self.what
                ))
                .into_io());
            }
        }
        Ok(n)
    }
}
