//! The FUSE frontend: one [`BlockDevice`] served as one regular file in a FUSE filesystem.
//!
//! Owns the FUSE session: [`mount_device`] mounts a filesystem at a directory whose only entry
//! is a regular file (mode 0644, or 0444 and a read-only mount when the device is read-only)
//! holding the device's bytes; [`FuseMount`] unmounts it, waits for it to end, and unmounts
//! on drop. A loop device on that file (see [`crate::loopdev`]) then gives the kernel a block
//! device to mount ext4 from.
//!
//! The FUSE thread never waits on the device: every read, write and flush is a task on the
//! tokio runtime given to [`mount_device`], and the task replies (fuser's replies are `Send`).
//! Device errors become their kind's errno ([`DeviceErrorKind::errno`](crate::DeviceErrorKind::errno)).
//!
//! # Choices for a loop device on top
//!
//! - **Page cache kept** (`FOPEN_KEEP_CACHE`): the file changes only through this filesystem,
//!   so pages the kernel cached stay valid across opens; a re-read of a hot block does not
//!   come back to userspace (and for a lazy image, not back to the origin).
//! - **Write-through, no writeback cache** (`FUSE_WRITEBACK_CACHE` not requested): a loop
//!   device writing into a FUSE writeback cache can deadlock under memory pressure (reclaim
//!   waits for writeback that waits for this process), and write-through means a write the
//!   loop device completed has reached [`BlockDevice::write`].
//! - **Long attribute and entry TTL** (one year): the size, mode and times never change, so
//!   the kernel need not ask again.
//! - **Large requests**: fuser's largest `max_write` (16 MiB); `max_read` left unset, which
//!   the kernel takes as unlimited; the kernel caps each request at `fs.fuse.max_pages_limit`
//!   pages (1 MiB by default). The kernel offers FUSE only 128 KiB of readahead at `INIT`, so
//!   after mounting, the mount's `/sys/class/bdi/<dev>/read_ahead_kb` is raised to 1 MiB (best
//!   effort, needs root): sequential reads then reach the device 1 MiB at a time instead of
//!   128 KiB, and ahead of the loop device's own smaller requests. `max_background` is raised
//!   to 64 so that readahead of a lazy image keeps many fetches in flight.
//! - **`fallocate` is refused** (`EOPNOTSUPP`): the loop device maps discard and write-zeroes
//!   to `FALLOC_FL_PUNCH_HOLE`, after which the kernel expects zeros, but
//!   [`BlockDevice::trim`] may leave the old bytes. The loop device then reports discard
//!   unsupported and the block layer writes zero pages instead.
//! - `nodev,nosuid,noexec,noatime`, `default_permissions`, fsname and subtype `lazyblock`
//!   (the mount shows as `fuse.lazyblock`). Only the mounting user may access it (no
//!   `allow_other`); the loop device opens the file as that user.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};

use crate::device::{BlockDevice, DeviceError};

/// How long the kernel may cache the file's attributes and directory entry.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// The inode of the one file.
const FILE_INO: INodeNo = INodeNo(2);

/// The block size reported by `stat` and `statfs`.
const BLOCK_SIZE: u32 = 4096;

/// The readahead of the mount, in KiB: one request of the kernel's default largest size
/// (`fs.fuse.max_pages_limit`, 256 pages).
const READ_AHEAD_KB: u32 = 1024;

/// The mount's fsname and subtype: it shows as `lazyblock` on `fuse.lazyblock`.
pub const FUSE_SUBTYPE: &str = "lazyblock";

/// The small, stable classification of [`FuseError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FuseErrorKind {
    /// A bad file name or mount point.
    InvalidInput,
    /// The kernel refused the mount or the session could not start.
    Mount,
    /// The file is still in use (a loop device is still attached): not unmounted.
    Busy,
    /// Nothing (any more) is mounted there.
    NotMounted,
    /// Another system error, or the session ended with an error.
    Io,
}

/// An error from the FUSE frontend: a kind and one line naming the mount point.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct FuseError {
    kind: FuseErrorKind,
    message: String,
}

impl FuseError {
    fn new(kind: FuseErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The stable kind.
    pub fn kind(&self) -> FuseErrorKind {
        self.kind
    }
}

/// Mounts a FUSE filesystem at `mountpoint` (an existing directory) whose only entry is the
/// regular file `file_name`, holding `device`'s bytes.
///
/// Requests are served by a background thread that hands every read, write and flush to a
/// task on `rt`; do not block `rt`'s worker threads on I/O to the file. The filesystem stays
/// mounted until [`FuseMount::unmount`], someone runs `umount` on `mountpoint`, or the
/// [`FuseMount`] is dropped. Needs root (or a `fusermount3` on `PATH`).
pub fn mount_device(
    device: Arc<dyn BlockDevice>,
    mountpoint: &Path,
    file_name: &str,
    rt: tokio::runtime::Handle,
) -> Result<FuseMount, FuseError> {
    if file_name.is_empty()
        || file_name == "."
        || file_name == ".."
        || file_name.contains(['/', '\0'])
    {
        return Err(FuseError::new(
            FuseErrorKind::InvalidInput,
            format!("invalid file name {file_name:?}: must be one non-empty path component"),
        ));
    }
    let invalid_dir = |e: io::Error| {
        FuseError::new(
            FuseErrorKind::InvalidInput,
            format!("mount point {}: {e}", mountpoint.display()),
        )
    };
    let mountpoint = mountpoint.canonicalize().map_err(invalid_dir)?;
    let meta = std::fs::metadata(&mountpoint).map_err(invalid_dir)?;
    if !meta.is_dir() {
        return Err(FuseError::new(
            FuseErrorKind::InvalidInput,
            format!("mount point {} is not a directory", mountpoint.display()),
        ));
    }

    let read_only = device.read_only();
    let fs = BlockFile {
        size: device.size(),
        device,
        rt,
        name: OsString::from(file_name),
        read_only,
        mtime: SystemTime::now(),
        uid: meta.uid(),
        gid: meta.gid(),
    };

    let mut config = fuser::Config::default();
    // Two reader threads, each with its own /dev/fuse descriptor: a request is picked up while
    // the other thread is busy handing one to the runtime or writing a reply.
    config.n_threads = Some(2);
    config.clone_fd = true;
    config.mount_options = vec![
        MountOption::FSName(FUSE_SUBTYPE.to_owned()),
        // The kernel's own option: fuser's `Subtype` only reaches `fusermount`, not mount(2).
        MountOption::CUSTOM(format!("subtype={FUSE_SUBTYPE}")),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoExec,
        MountOption::NoAtime,
        if read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];

    let session = fuser::Session::new(fs, &mountpoint, &config).map_err(|e| {
        FuseError::new(
            FuseErrorKind::Mount,
            format!("cannot mount FUSE at {}: {e}", mountpoint.display()),
        )
    })?;
    // If the thread cannot start, the session is dropped with the closure, which unmounts.
    let thread = std::thread::Builder::new()
        .name("lazyblock-fuse".to_owned())
        .spawn(move || session.run())
        .map_err(|e| {
            FuseError::new(
                FuseErrorKind::Io,
                format!("cannot start the FUSE thread: {e}"),
            )
        })?;
    tracing::debug!(mountpoint = %mountpoint.display(), file_name, read_only, "FUSE mounted");
    raise_readahead(&mountpoint);
    Ok(FuseMount {
        file_path: mountpoint.join(file_name),
        mountpoint,
        thread: Some(thread),
    })
}

/// Raises the mount's readahead to [`READ_AHEAD_KB`] through sysfs, best effort: the kernel
/// offers FUSE only its default (128 KiB) at `INIT`, and without this, reads reach the device
/// in pieces no larger than that.
fn raise_readahead(mountpoint: &Path) {
    // The mount's root is served by now: stat answers from the FUSE thread.
    let dev = match std::fs::metadata(mountpoint) {
        Ok(meta) => meta.dev(),
        Err(e) => {
            tracing::debug!("cannot stat {}: {e}", mountpoint.display());
            return;
        }
    };
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        rustix::fs::major(dev),
        rustix::fs::minor(dev)
    );
    if let Err(e) = std::fs::write(&knob, READ_AHEAD_KB.to_string()) {
        tracing::debug!("cannot raise the FUSE readahead ({knob}): {e}");
    }
}

/// A mounted FUSE filesystem serving one device as one file.
///
/// Dropping it unmounts; if the file is still in use (a loop device attached), the drop
/// detaches the mount lazily instead and leaves the serving thread running until the last
/// user lets go (or the process exits, after which the user sees `ENOTCONN`).
#[derive(Debug)]
pub struct FuseMount {
    mountpoint: PathBuf,
    file_path: PathBuf,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl FuseMount {
    /// The mount point (canonical).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The path of the file that holds the device's bytes: `<mountpoint>/<file_name>`.
    pub fn file_path(&self) -> &Path {
        &self.file_path
    }

    /// A handle that unmounts from another thread or task, e.g. on a signal while another
    /// thread is in [`FuseMount::wait`].
    pub fn unmounter(&self) -> FuseUnmounter {
        FuseUnmounter {
            mountpoint: self.mountpoint.clone(),
        }
    }

    /// Whether the session has ended (the filesystem was unmounted).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Unmounts and waits for the session to end. Fails with [`FuseErrorKind::Busy`] while
    /// the file is in use (a loop device attached), leaving everything mounted; calling it
    /// again after the session ended is a no-op.
    pub fn unmount(&mut self) -> Result<(), FuseError> {
        if self.thread.is_none() {
            return Ok(());
        }
        if !self.is_finished() {
            match self.unmounter().unmount() {
                Ok(()) => {}
                // Unmounted by someone else meanwhile: the session is ending.
                Err(e) if e.kind() == FuseErrorKind::NotMounted => {}
                Err(e) => return Err(e),
            }
        }
        self.join()
    }

    /// Blocks until the session ends: someone ran `umount` on the mount point, or a
    /// [`FuseUnmounter`] unmounted it. Returns the session's error, if it ended with one.
    pub fn wait(mut self) -> Result<(), FuseError> {
        self.join()
    }

    fn join(&mut self) -> Result<(), FuseError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let mp = self.mountpoint.display();
        match thread.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(FuseError::new(
                FuseErrorKind::Io,
                format!("FUSE session at {mp} ended with an error: {e}"),
            )),
            Err(_) => Err(FuseError::new(
                FuseErrorKind::Io,
                format!("FUSE session thread at {mp} panicked"),
            )),
        }
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if self.thread.is_none() {
            return;
        }
        match self.unmount() {
            Ok(()) => {}
            Err(e) if e.kind() == FuseErrorKind::Busy => {
                tracing::warn!("{e}; detaching it lazily");
                if let Err(e) =
                    rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::DETACH)
                {
                    tracing::warn!(
                        "cannot detach FUSE mount {}: {e}",
                        self.mountpoint.display()
                    );
                }
                // The thread keeps serving until the last user lets go; do not wait for it.
                self.thread = None;
            }
            Err(e) => tracing::warn!("{e}"),
        }
    }
}

/// Unmounts a [`FuseMount`] from anywhere (it is `Send`, `Sync` and `Clone`).
#[derive(Debug, Clone)]
pub struct FuseUnmounter {
    mountpoint: PathBuf,
}

impl FuseUnmounter {
    /// Unmounts (`umount(2)`, not lazy); the session then ends and [`FuseMount::wait`]
    /// returns. Fails with [`FuseErrorKind::Busy`] while the file is in use and with
    /// [`FuseErrorKind::NotMounted`] when nothing is mounted there any more.
    pub fn unmount(&self) -> Result<(), FuseError> {
        let mp = self.mountpoint.display();
        rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::empty()).map_err(
            |e| {
                let kind = match e {
                    rustix::io::Errno::BUSY => FuseErrorKind::Busy,
                    rustix::io::Errno::INVAL | rustix::io::Errno::NOENT => {
                        FuseErrorKind::NotMounted
                    }
                    _ => FuseErrorKind::Io,
                };
                FuseError::new(kind, format!("cannot unmount FUSE mount {mp}: {e}"))
            },
        )
    }
}

/// The filesystem: a root directory holding one file.
struct BlockFile {
    device: Arc<dyn BlockDevice>,
    rt: tokio::runtime::Handle,
    name: OsString,
    size: u64,
    read_only: bool,
    mtime: SystemTime,
    uid: u32,
    gid: u32,
}

impl BlockFile {
    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        let (kind, perm, nlink, size) = if ino == INodeNo::ROOT {
            let perm = if self.read_only { 0o555 } else { 0o755 };
            (FileType::Directory, perm, 2, 0)
        } else if ino == FILE_INO {
            let perm = if self.read_only { 0o444 } else { 0o644 };
            (FileType::RegularFile, perm, 1, self.size)
        } else {
            return None;
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.mtime,
            mtime: self.mtime,
            ctime: self.mtime,
            crtime: self.mtime,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            flags: 0,
            blksize: BLOCK_SIZE,
        })
    }
}

fn errno(e: &DeviceError) -> Errno {
    Errno::from_i32(e.kind().errno())
}

impl Filesystem for BlockFile {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Readahead requests are background requests; let many be in flight.
        if let Err(nearest) = config.set_max_background(64) {
            let _ = config.set_max_background(nearest);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.attr(FILE_INO) {
            Some(attr) if parent == INodeNo::ROOT && name == self.name => {
                reply.entry(&TTL, &attr, Generation(0));
            }
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some(attr) = self.attr(ino) else {
            return reply.error(Errno::ENOENT);
        };
        // The size is the device's and fixed; ownership and mode are fixed. Time changes are
        // accepted and ignored (the times are the mount's).
        if self.read_only && (size.is_some() || mode.is_some() || uid.is_some() || gid.is_some()) {
            return reply.error(Errno::EROFS);
        }
        if size.is_some_and(|s| s != attr.size) || mode.is_some() || uid.is_some() || gid.is_some()
        {
            return reply.error(Errno::EPERM);
        }
        reply.attr(&TTL, &attr);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        if self.read_only && flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        // Like a regular file: short at the end, empty past it.
        let len = u64::from(size).min(self.size.saturating_sub(offset));
        if len == 0 {
            return reply.data(&[]);
        }
        let device = Arc::clone(&self.device);
        self.rt.spawn(async move {
            // `len` <= `size`, a u32.
            match device.read(offset, len as usize).await {
                Ok(data) => reply.data(&data),
                Err(e) => {
                    tracing::warn!(offset, len, "FUSE read failed: {e}");
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        if self.read_only {
            return reply.error(Errno::EROFS);
        }
        if data.is_empty() {
            return reply.written(0);
        }
        // The file cannot grow: a write at or past the end has no space, one across the end
        // is short.
        let room = self.size.saturating_sub(offset);
        if room == 0 {
            return reply.error(Errno::ENOSPC);
        }
        let len = (data.len() as u64).min(room) as usize;
        let data = data[..len].to_vec();
        let device = Arc::clone(&self.device);
        self.rt.spawn(async move {
            match device.write(offset, &data).await {
                // `len` <= the request's length, a u32.
                Ok(()) => reply.written(len as u32),
                Err(e) => {
                    tracing::warn!(offset, len, "FUSE write failed: {e}");
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.flush_device(reply);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.flush_device(reply);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, OsStr::new(".")),
            (INodeNo::ROOT, FileType::Directory, OsStr::new("..")),
            (FILE_INO, FileType::RegularFile, self.name.as_os_str()),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            // The offset of an entry is that of the next one.
            if reply.add(*ino, i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.size.div_ceil(u64::from(BLOCK_SIZE));
        reply.statfs(blocks, 0, 0, 2, 0, BLOCK_SIZE, 255, BLOCK_SIZE);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        // See the module docs: a punched hole must read back as zeros, which trim does not
        // promise.
        reply.error(Errno::EOPNOTSUPP);
    }
}

impl BlockFile {
    fn flush_device(&self, reply: ReplyEmpty) {
        if self.read_only {
            return reply.ok();
        }
        let device = Arc::clone(&self.device);
        self.rt.spawn(async move {
            match device.flush().await {
                Ok(()) => reply.ok(),
                Err(e) => {
                    tracing::warn!("FUSE flush failed: {e}");
                    reply.error(errno(&e));
                }
            }
        });
    }
}
