//! The strict reader shared by the line-oriented text records (catalog entry, root state, halt
//! record): a versioned first line, then `key value` lines in a fixed order, nothing else.

use crate::error::{FormatError, FormatErrorKind};
use crate::Result;

/// Longest record accepted.
const MAX_LEN: usize = 1024;

/// A strict reader of `key value` lines after a versioned first line.
pub(crate) struct Lines<'a> {
    what: &'static str,
    lines: std::str::Split<'a, char>,
}

impl<'a> Lines<'a> {
    pub(crate) fn new(bytes: &'a [u8], what: &'static str, first: &str) -> Result<Self> {
        let corrupt = |m: &str| FormatError::corrupt(format!("{what}: {m}"));
        if bytes.len() > MAX_LEN {
            return Err(corrupt("too long"));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| corrupt("not UTF-8"))?;
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| corrupt("no final newline"))?;
        let mut lines = body.split('\n');
        let magic = first.split(' ').next().unwrap_or(first);
        match lines.next() {
            Some(l) if l == first => {}
            Some(l) if l.starts_with(magic) && l.as_bytes().get(magic.len()) == Some(&b' ') => {
                return Err(FormatError::new(
                    FormatErrorKind::Unsupported,
                    format!(
                        "{what} version {:?} is not supported",
                        &l[magic.len() + 1..]
                    ),
                ))
            }
            _ => return Err(corrupt(&format!("not a lazyblock {what}"))),
        }
        Ok(Self { what, lines })
    }

    pub(crate) fn corrupt(&self, m: &str) -> FormatError {
        FormatError::corrupt(format!("{}: {m}", self.what))
    }

    pub(crate) fn field(&mut self, key: &str) -> Result<&'a str> {
        let what = self.what;
        self.lines
            .next()
            .and_then(|l| l.strip_prefix(key))
            .and_then(|l| l.strip_prefix(' '))
            .ok_or_else(|| FormatError::corrupt(format!("{what}: missing {key:?}")))
    }

    pub(crate) fn time(&mut self, key: &str) -> Result<Option<u64>> {
        match self.field(key)? {
            "-" => Ok(None),
            t => t
                .parse()
                .map(Some)
                .map_err(|_| self.corrupt(&format!("bad {key} time {t:?}"))),
        }
    }

    pub(crate) fn end(&mut self) -> Result<()> {
        match self.lines.next() {
            None => Ok(()),
            Some(_) => Err(self.corrupt("unexpected extra lines")),
        }
    }
}
