//! The local copy-on-write overlay: guest writes, kept in a directory so a restarted agent
//! resumes with them.
//!
//! Layout of an overlay directory (docs/format.md §8):
//! - `overlay.json`: `{"version":1,"manifest":"<64 hex>","size":N,"page_size":4096}`, written
//!   once (temp file + rename) when the overlay is created. An overlay only opens for the
//!   manifest and size it was made for.
//! - `data`: a sparse file of the image's size; page `p` of the guest's writes lives at
//!   `p * 4096`.
//! - `bitmap`: one bit per page, little-endian `u64` words, bit `p % 64` of word `p / 64` set
//!   when page `p` is in `data`.
//! - `lock`: held (`flock`, exclusive) by the agent serving the overlay, so two agents never
//!   serve one overlay.
//!
//! Ordering: a write goes to `data` first, then its bits to `bitmap`, both before the write is
//! acknowledged, so a killed agent loses nothing the guest was told is written (the kernel keeps
//! both files' pages). A flush `fsync`s `data`, then `bitmap`: after a flush the overlay also
//! survives power loss, as a disk with a volatile write cache does.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use lazyblock_format::ManifestId;

use crate::device::{DeviceError, DeviceErrorKind};

/// Overlay page size: the unit of copy-on-write.
pub const PAGE_SIZE: u64 = 4096;

const META: &str = "overlay.json";

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Eq, Debug)]
struct Meta {
    version: u32,
    manifest: String,
    size: u64,
    page_size: u64,
}

/// An open overlay.
#[derive(Debug)]
pub struct Overlay {
    dir: PathBuf,
    data: File,
    bitmap_file: File,
    bitmap: Mutex<Vec<u64>>,
    size: u64,
    _lock: File,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> DeviceError {
    let kind = if e.raw_os_error() == Some(28) {
        DeviceErrorKind::NoSpace
    } else {
        DeviceErrorKind::Io
    };
    DeviceError::new(kind, format!("overlay {what} {}: {e}", path.display()))
}

impl Overlay {
    /// Opens the overlay in `dir` for `manifest`, creating it if the directory is empty or
    /// missing. An overlay made for another manifest or size is refused with a message naming
    /// `--discard-overlay`; one in use by another agent is refused too.
    pub fn open(dir: &Path, manifest: &ManifestId, size: u64) -> Result<Self, DeviceError> {
        Self::open_with(dir, manifest, size, false)
    }

    /// Like [`open`](Self::open), but with `discard` first drops the writes the overlay holds
    /// (after taking its lock, so the overlay of a running agent is never touched).
    pub fn open_with(
        dir: &Path,
        manifest: &ManifestId,
        size: u64,
        discard: bool,
    ) -> Result<Self, DeviceError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err("create", dir, e))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err("open", &lock_path, e))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| {
                DeviceError::new(
                    DeviceErrorKind::InvalidInput,
                    format!(
                        "overlay {} is in use by another agent (its lock is held)",
                        dir.display()
                    ),
                )
            },
        )?;
        if discard {
            for name in [META, "data", "bitmap"] {
                let p = dir.join(name);
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("remove", &p, e)),
                }
            }
        }
        let want = Meta {
            version: 1,
            manifest: manifest.to_hex(),
            size,
            page_size: PAGE_SIZE,
        };
        let meta_path = dir.join(META);
        match std::fs::read(&meta_path) {
            Ok(bytes) => {
                let have: Meta = serde_json::from_slice(&bytes).map_err(|e| {
                    DeviceError::new(
                        DeviceErrorKind::InvalidInput,
                        format!("overlay {} is damaged ({META}: {e}); pass --discard-overlay to start a fresh one", dir.display()),
                    )
                })?;
                if have != want {
                    return Err(DeviceError::new(
                        DeviceErrorKind::InvalidInput,
                        format!(
                            "overlay {} holds writes made to manifest {} ({} bytes), not to {} ({size} bytes); pass --discard-overlay to drop them",
                            dir.display(),
                            &have.manifest[..have.manifest.len().min(12)],
                            have.size,
                            manifest.short()
                        ),
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Fresh overlay: empty data and bitmap first, the meta file last, so a crash
                // half-way leaves a directory that is again "fresh".
                for name in ["data", "bitmap"] {
                    let p = dir.join(name);
                    let f = File::create(&p).map_err(|e| io_err("create", &p, e))?;
                    f.set_len(0).map_err(|e| io_err("truncate", &p, e))?;
                }
                let tmp = dir.join(format!("{META}.tmp"));
                let mut f = File::create(&tmp).map_err(|e| io_err("create", &tmp, e))?;
                let body = serde_json::to_vec(&want).map_err(|e| {
                    DeviceError::new(DeviceErrorKind::Io, format!("overlay meta: {e}"))
                })?;
                f.write_all(&body)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| io_err("write", &tmp, e))?;
                std::fs::rename(&tmp, &meta_path).map_err(|e| io_err("rename", &tmp, e))?;
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| io_err("sync", dir, e))?;
            }
            Err(e) => return Err(io_err("read", &meta_path, e)),
        }
        let open_rw = |name: &str| {
            let p = dir.join(name);
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&p)
                .map_err(|e| io_err("open", &p, e))
        };
        let data = open_rw("data")?;
        data.set_len(size)
            .map_err(|e| io_err("size", &dir.join("data"), e))?;
        let bitmap_file = open_rw("bitmap")?;
        let pages = size.div_ceil(PAGE_SIZE);
        let words = pages.div_ceil(64) as usize;
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut &bitmap_file, &mut raw)
            .map_err(|e| io_err("read", &dir.join("bitmap"), e))?;
        let mut bitmap = vec![0u64; words];
        for (w, chunk) in bitmap.iter_mut().zip(raw.chunks(8)) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            *w = u64::from_le_bytes(b);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            data,
            bitmap_file,
            bitmap: Mutex::new(bitmap),
            size,
            _lock: lock,
        })
    }

    /// The overlay's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Pages held, for reports.
    pub fn pages(&self) -> u64 {
        self.lock_bitmap()
            .iter()
            .map(|w| u64::from(w.count_ones()))
            .sum()
    }

    fn lock_bitmap(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.bitmap.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// For pages `first..first + n`, which are in the overlay.
    pub fn pages_present(&self, first: u64, n: u64) -> Vec<bool> {
        let bm = self.lock_bitmap();
        (first..first + n)
            .map(|p| {
                bm.get((p / 64) as usize)
                    .is_some_and(|w| w & (1 << (p % 64)) != 0)
            })
            .collect()
    }

    /// Reads overlay bytes at `offset` (the caller knows the pages are present).
    pub fn read_at(&self, offset: u64, out: &mut [u8]) -> Result<(), DeviceError> {
        self.data
            .read_exact_at(out, offset)
            .map_err(|e| io_err("read", &self.dir.join("data"), e))
    }

    /// Writes whole pages starting at page-aligned `offset` and marks them present.
    pub fn write_pages(&self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        let end = offset + data.len() as u64;
        if offset % PAGE_SIZE != 0 || (data.len() as u64 % PAGE_SIZE != 0 && end != self.size) {
            return Err(DeviceError::new(
                DeviceErrorKind::InvalidInput,
                format!("overlay write {offset}+{} is not page-aligned", data.len()),
            ));
        }
        self.data
            .write_all_at(data, offset)
            .map_err(|e| io_err("write", &self.dir.join("data"), e))?;
        let first = offset / PAGE_SIZE;
        let last = (end - 1) / PAGE_SIZE;
        let mut bm = self.lock_bitmap();
        for p in first..=last {
            if let Some(w) = bm.get_mut((p / 64) as usize) {
                *w |= 1 << (p % 64);
            }
        }
        let (w0, w1) = ((first / 64) as usize, (last / 64) as usize);
        let mut bytes = Vec::with_capacity((w1 - w0 + 1) * 8);
        for w in &bm[w0..=w1] {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        self.bitmap_file
            .write_all_at(&bytes, (w0 * 8) as u64)
            .map_err(|e| io_err("write", &self.dir.join("bitmap"), e))
    }

    /// Makes every write so far durable: data first, then the bitmap.
    pub fn sync(&self) -> Result<(), DeviceError> {
        self.data
            .sync_data()
            .map_err(|e| io_err("sync", &self.dir.join("data"), e))?;
        self.bitmap_file
            .sync_data()
            .map_err(|e| io_err("sync", &self.dir.join("bitmap"), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> ManifestId {
        ManifestId::from_bytes([b; 32])
    }

    #[test]
    fn pages_persist_across_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let size = 10 * PAGE_SIZE + 100;
        {
            let o = Overlay::open(dir.path(), &id(1), size).expect("open");
            o.write_pages(PAGE_SIZE, &vec![7u8; 2 * PAGE_SIZE as usize])
                .expect("write");
            o.write_pages(10 * PAGE_SIZE, &[9u8; 100])
                .expect("tail page");
            assert_eq!(o.pages(), 3);
        }
        let o = Overlay::open(dir.path(), &id(1), size).expect("reopen");
        assert_eq!(o.pages_present(0, 4), vec![false, true, true, false]);
        assert_eq!(o.pages_present(10, 1), vec![true]);
        let mut buf = vec![0u8; 4096];
        o.read_at(2 * PAGE_SIZE, &mut buf).expect("read");
        assert!(buf.iter().all(|&b| b == 7));
    }

    #[test]
    fn refuses_other_manifest_and_second_agent() {
        let dir = tempfile::tempdir().expect("tmp");
        let o = Overlay::open(dir.path(), &id(1), 8192).expect("open");
        let err = Overlay::open(dir.path(), &id(1), 8192).expect_err("in use");
        assert!(err.to_string().contains("in use"), "{err}");
        drop(o);
        let err = Overlay::open(dir.path(), &id(2), 8192).expect_err("other manifest");
        assert!(err.to_string().contains("--discard-overlay"), "{err}");
        let o = Overlay::open(dir.path(), &id(1), 8192).expect("reopen");
        let err = Overlay::open_with(dir.path(), &id(2), 8192, true).expect_err("in use");
        assert!(err.to_string().contains("in use"), "{err}");
        assert!(
            dir.path().join("data").exists(),
            "a running agent's overlay is untouched"
        );
        drop(o);
        let o = Overlay::open_with(dir.path(), &id(2), 8192, true).expect("fresh after discard");
        assert_eq!(o.pages(), 0);
    }

    #[test]
    fn unaligned_page_write_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let o = Overlay::open(dir.path(), &id(1), 8 * PAGE_SIZE).expect("open");
        assert!(o.write_pages(100, &[1u8; 4096]).is_err());
        assert!(o.write_pages(0, &[1u8; 100]).is_err());
    }
}
