//! Worker-wide admission of cold starts.
//!
//! An emptied cache turns every start into origin load (Lambda saw up to 500× normal load on
//! S3 after a cache was lost). So a worker admits at most `limit` cold starts at once and
//! rejects the next one with a retryable error, instead of piling more load on the origin; the
//! scheduler places it elsewhere or retries later.
//!
//! The slots are `limit` files `starts/<i>.lock` in the worker cache directory, each held by
//! an exclusive `flock` for as long as its [`StartSlot`] lives: every agent process of the
//! machine sees the same slots, and a crashed agent's slot is freed by the kernel.

use std::fs::File;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

use crate::error::CacheError;

/// The cold-start slots of a worker cache directory.
#[derive(Debug, Clone)]
pub struct StartSlots {
    dir: PathBuf,
    limit: usize,
}

/// A held slot; dropping it frees the slot.
#[derive(Debug)]
pub struct StartSlot {
    _file: File,
    index: usize,
}

impl StartSlot {
    /// Which slot this is (`0..limit`).
    pub fn index(&self) -> usize {
        self.index
    }
}

impl StartSlots {
    /// The slots of the cache directory `cache_dir` (created on first use).
    pub fn new(cache_dir: &Path, limit: usize) -> Self {
        Self {
            dir: cache_dir.join("starts"),
            limit,
        }
    }

    /// How many cold starts may run at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    fn open(&self, index: usize) -> Result<File, CacheError> {
        let path = self.dir.join(format!("{index}.lock"));
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| CacheError::io("open", &path, e))
    }

    /// Takes a free slot without waiting; `Ok(None)` when all `limit` are held.
    ///
    /// # Errors
    ///
    /// The slot directory or a slot file cannot be created, or `flock` fails.
    pub fn try_acquire(&self) -> Result<Option<StartSlot>, CacheError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| CacheError::io("create", &self.dir, e))?;
        for index in 0..self.limit {
            let file = self.open(index)?;
            loop {
                match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                    Ok(()) => return Ok(Some(StartSlot { _file: file, index })),
                    Err(Errno::INTR) => continue,
                    Err(Errno::WOULDBLOCK) => break,
                    Err(e) => {
                        return Err(CacheError::io(
                            "lock",
                            self.dir.join(format!("{index}.lock")),
                            e.into(),
                        ))
                    }
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_limited_and_freed_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let slots = StartSlots::new(dir.path(), 2);
        let a = slots.try_acquire().expect("acquire").expect("slot 0");
        let b = slots.try_acquire().expect("acquire").expect("slot 1");
        assert_ne!(a.index(), b.index());
        assert!(
            slots.try_acquire().expect("acquire").is_none(),
            "third start rejected"
        );
        drop(a);
        let c = slots.try_acquire().expect("acquire").expect("freed slot");
        assert_eq!(c.index(), 0);
        // Another "process" (another open file description) sees the same slots.
        let other = StartSlots::new(dir.path(), 2);
        assert!(other.try_acquire().expect("acquire").is_none());
        drop(b);
        assert!(other.try_acquire().expect("acquire").is_some());
    }

    #[test]
    fn zero_limit_admits_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(StartSlots::new(dir.path(), 0)
            .try_acquire()
            .expect("acquire")
            .is_none());
    }
}
