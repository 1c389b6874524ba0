//! The FUSE frontend and the loop/ext4 plumbing against the real kernel: an ext4 image made by
//! `mke2fs -d` in a `MemDevice`, served as a FUSE file, attached to a loop device and mounted;
//! files read back, a file written and checked with `e2fsck -fn` and `debugfs`; a read-only
//! device that refuses writes; teardown from the mount directory alone; the FUSE file read and
//! written directly; device errors surfacing as errnos.
//!
//! Mounting needs root: these tests fail (they do not skip) when not run as root. Every mount
//! and loop device is held by a guard that undoes it on drop, also when a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use lazyblock_agent::device::MemDevice;
use lazyblock_agent::fuse::{mount_device, FuseErrorKind, FuseMount};
use lazyblock_agent::loopdev::{self, LoopDevice, LoopErrorKind};
use lazyblock_agent::{BlockDevice, DeviceError, DeviceErrorKind};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

// ---- helpers ---------------------------------------------------------------------------

const EROFS: i32 = 30;

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test mounts FUSE, loop devices and ext4: run it as root"
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} exited {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

/// The files of the test tree, by relative path.
fn tree_files() -> BTreeMap<&'static str, Vec<u8>> {
    BTreeMap::from([
        ("hello.txt", b"hello, lazyblock\n".to_vec()),
        ("empty", Vec::new()),
        (
            "sub/dir/notes.txt",
            b"a note\nin a nested directory\n".to_vec(),
        ),
        ("big.bin", random_bytes(42, 3 << 20)),
    ])
}

/// An ext4 image of `tree_files()` (32 MiB, `mke2fs -d`).
fn make_image(work: &Path) -> Vec<u8> {
    let tree = work.join("tree");
    for (rel, data) in tree_files() {
        let path = tree.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }
    let img = work.join("src.img");
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&tree)
        .arg(&img)
        .arg("32M"));
    let bytes = fs::read(&img).unwrap();
    fs::remove_file(&img).unwrap();
    bytes
}

/// `e2fsck -fn` and `debugfs -R "cat <file>"` on a copy of `bytes`.
fn e2fsck_and_cat(work: &Path, bytes: &[u8], file: &str) -> Vec<u8> {
    let img = work.join("check.img");
    fs::write(&img, bytes).unwrap();
    run(Command::new("e2fsck").arg("-fn").arg(&img));
    let out = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {file}"))
        .arg(&img));
    fs::remove_file(&img).unwrap();
    out.stdout
}

fn assert_tree(mnt: &Path) {
    for (rel, data) in tree_files() {
        let got = fs::read(mnt.join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"));
        assert!(
            got == data,
            "{rel}: content differs ({} bytes read)",
            got.len()
        );
    }
}

fn is_mountpoint(dir: &Path) -> bool {
    let dir = dir.canonicalize().unwrap();
    loopdev::mounts()
        .unwrap()
        .iter()
        .any(|m| m.mountpoint == dir)
}

/// Whether `losetup -a` lists a loop device backed by `file`.
fn loop_backed_by(file: &Path) -> bool {
    let out = run(Command::new("losetup").arg("-a"));
    let file = file.to_string_lossy().into_owned();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.contains(&format!("({file})")))
}

/// A loop device, detached on drop unless disarmed.
struct LoopGuard(Option<LoopDevice>);

impl Drop for LoopGuard {
    fn drop(&mut self) {
        if let Some(dev) = self.0.take() {
            let _ = dev.detach();
        }
    }
}

/// An ext4 mount, unmounted on drop (lazily if busy) unless disarmed.
struct MountGuard(Option<PathBuf>);

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            if loopdev::unmount(&dir).is_err() {
                let _ = Command::new("umount").arg("-l").arg(&dir).status();
            }
        }
    }
}

/// The whole stack over one device. Fields drop in order: ext4, loop, FUSE, then the
/// directories.
struct Stack {
    ext4: MountGuard,
    loop_dev: LoopGuard,
    fuse: FuseMount,
    mnt: PathBuf,
    _work: tempfile::TempDir,
}

impl Stack {
    fn new(device: Arc<dyn BlockDevice>, rt: &tokio::runtime::Runtime) -> Self {
        let read_only = device.read_only();
        let work = tempfile::tempdir().unwrap();
        let fuse_dir = work.path().join("fuse");
        let mnt = work.path().join("mnt");
        fs::create_dir(&fuse_dir).unwrap();
        fs::create_dir(&mnt).unwrap();
        let fuse = mount_device(device, &fuse_dir, "image", rt.handle().clone()).unwrap();
        let mut stack = Stack {
            ext4: MountGuard(None),
            loop_dev: LoopGuard(None),
            fuse,
            mnt: mnt.clone(),
            _work: work,
        };
        let dev = loopdev::attach(stack.fuse.file_path(), read_only).unwrap();
        stack.loop_dev.0 = Some(dev.clone());
        loopdev::mount_ext4(dev.path(), &mnt, read_only).unwrap();
        stack.ext4.0 = Some(mnt);
        stack
    }

    fn loop_device(&self) -> &LoopDevice {
        self.loop_dev.0.as_ref().unwrap()
    }
}

// ---- tests -----------------------------------------------------------------------------

#[test]
fn ext4_on_loop_on_fuse_reads_files_and_keeps_writes() {
    require_root();
    let rt = runtime();
    let scratch = tempfile::tempdir().unwrap();
    let image = make_image(scratch.path());
    let device = Arc::new(MemDevice::new(image.clone(), false));
    let mut stack = Stack::new(device.clone(), &rt);

    let meta = fs::metadata(stack.fuse.file_path()).unwrap();
    assert_eq!(meta.len(), image.len() as u64);
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    assert_tree(&stack.mnt);

    // Write a file in the mounted ext4 and make it durable.
    let new_data = random_bytes(7, (1 << 20) + 4321);
    {
        let mut f = fs::File::create(stack.mnt.join("new.bin")).unwrap();
        f.write_all(&new_data).unwrap();
        f.sync_all().unwrap();
    }

    // Busy mounts are reported as busy and left in place.
    {
        let _open = fs::File::open(stack.mnt.join("hello.txt")).unwrap();
        let err = loopdev::unmount(&stack.mnt).unwrap_err();
        assert_eq!(err.kind(), LoopErrorKind::Busy, "{err}");
        assert!(err.to_string().contains("umount"), "{err}");
    }
    let err = stack.fuse.unmount().unwrap_err();
    assert_eq!(err.kind(), FuseErrorKind::Busy, "{err}");
    assert!(is_mountpoint(stack.fuse.mountpoint()));
    assert_tree(&stack.mnt);

    // Tear down by hand, through the plumbing.
    let mnt = stack.ext4.0.take().unwrap();
    loopdev::unmount(&mnt).unwrap();
    let err = loopdev::unmount(&mnt).unwrap_err();
    assert_eq!(err.kind(), LoopErrorKind::NotMounted, "{err}");
    let dev = stack.loop_dev.0.take().unwrap();
    dev.detach().unwrap();
    stack.fuse.unmount().unwrap();
    assert!(!is_mountpoint(&stack.mnt));
    assert!(!is_mountpoint(stack.fuse.mountpoint()));
    assert!(!loop_backed_by(stack.fuse.file_path()));

    let after = device.contents();
    assert_eq!(after.len(), image.len());
    assert!(after != image, "the write did not reach the device");
    let read_back = e2fsck_and_cat(scratch.path(), &after, "/new.bin");
    assert!(read_back == new_data, "new.bin differs in the device image");
}

#[test]
fn read_only_device_mounts_read_only_and_refuses_writes() {
    require_root();
    let rt = runtime();
    let scratch = tempfile::tempdir().unwrap();
    let image = make_image(scratch.path());
    let device = Arc::new(MemDevice::new(image.clone(), true));
    let stack = Stack::new(device.clone(), &rt);

    let file = stack.fuse.file_path();
    assert_eq!(
        fs::metadata(file).unwrap().permissions().mode() & 0o777,
        0o444
    );
    let err = fs::OpenOptions::new().write(true).open(file).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(EROFS), "{err}");
    let ro = fs::read_to_string(format!(
        "/sys/block/{}/ro",
        stack
            .loop_device()
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
    ))
    .unwrap();
    assert_eq!(ro.trim(), "1", "the loop device is not read-only");

    assert_tree(&stack.mnt);
    let err = fs::write(stack.mnt.join("new.txt"), b"nope").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(EROFS), "{err}");
    drop(stack);
    assert!(device.contents() == image, "a read-only device changed");
}

#[test]
fn find_stack_and_teardown_from_the_directory_alone() {
    require_root();
    let rt = runtime();
    let scratch = tempfile::tempdir().unwrap();
    let image = make_image(scratch.path());
    let device = Arc::new(MemDevice::new(image, false));
    let mut stack = Stack::new(device.clone(), &rt);

    // Neither a plain directory nor the FUSE mount (not a loop device) is a stack.
    assert_eq!(loopdev::find_stack(scratch.path()).unwrap(), None);
    assert_eq!(loopdev::find_stack(stack.fuse.mountpoint()).unwrap(), None);

    let found = loopdev::find_stack(&stack.mnt).unwrap().expect("a stack");
    assert_eq!(found.dir, stack.mnt.canonicalize().unwrap());
    assert_eq!(&found.loop_device, stack.loop_device());
    assert_eq!(found.backing_file, stack.fuse.file_path());
    assert_eq!(
        found.fuse_mountpoint.as_deref(),
        Some(stack.fuse.mountpoint())
    );
    assert_eq!(found.fuse_fstype.as_deref(), Some("fuse.lazyblock"));

    found.teardown().unwrap();
    // Everything is gone: the guards have nothing left to do.
    stack.ext4.0 = None;
    stack.loop_dev.0 = None;
    assert!(!is_mountpoint(&stack.mnt));
    assert!(!is_mountpoint(stack.fuse.mountpoint()));
    assert!(!loop_backed_by(stack.fuse.file_path()));
    assert_eq!(loopdev::find_stack(&stack.mnt).unwrap(), None);
    // The FUSE session saw the unmount and ended.
    let Stack { fuse, .. } = stack;
    fuse.wait().unwrap();
}

#[test]
fn fuse_file_reads_and_writes_the_device_bytes() {
    require_root();
    let rt = runtime();
    // Not a multiple of the page size, to see the end of the file.
    let size = (5 << 20) + 123;
    let data = random_bytes(99, size);
    let device = Arc::new(MemDevice::new(data.clone(), false));
    let work = tempfile::tempdir().unwrap();
    let mut fuse =
        mount_device(device.clone(), work.path(), "disk.raw", rt.handle().clone()).unwrap();
    let file_path = fuse.file_path().to_owned();
    assert_eq!(
        file_path,
        work.path().canonicalize().unwrap().join("disk.raw")
    );

    let names: Vec<_> = fs::read_dir(fuse.mountpoint())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["disk.raw"]);
    assert!(
        fs::read(&file_path).unwrap() == data,
        "the file differs from the device"
    );

    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file_path)
        .unwrap();
    let mut buf = vec![0u8; 100];
    assert_eq!(f.read_at(&mut buf, size as u64 - 10).unwrap(), 10);
    assert_eq!(buf[..10], data[size - 10..]);
    assert_eq!(f.read_at(&mut buf, size as u64 + 5).unwrap(), 0);

    // Writes reach the device; the file cannot grow.
    f.write_all_at(b"written through FUSE", 4096 * 3 + 17)
        .unwrap();
    f.sync_all().unwrap();
    let contents = device.contents();
    assert_eq!(&contents[4096 * 3 + 17..][..20], b"written through FUSE");
    assert_eq!(f.write_at(&[1u8; 50], size as u64 - 20).unwrap(), 20);
    let err = f.write_at(b"x", size as u64).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(28), "{err}"); // ENOSPC
    assert_eq!(fs::metadata(&file_path).unwrap().len(), size as u64);
    let contents = device.contents();
    assert_eq!(contents.len(), size);
    assert!(contents[size - 20..].iter().all(|&b| b == 1));
    assert!(fs::read(&file_path).unwrap() == contents);
    drop(f);

    // The mount ends cleanly; unmounting again is a no-op.
    fuse.unmount().unwrap();
    assert!(fuse.is_finished());
    fuse.unmount().unwrap();
    assert!(!is_mountpoint(work.path()));
}

/// A `MemDevice` that records its largest read and write and counts its reads.
struct Recording {
    inner: MemDevice,
    reads: AtomicUsize,
    max_read: AtomicUsize,
    max_write: AtomicUsize,
}

#[async_trait]
impl BlockDevice for Recording {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_only(&self) -> bool {
        self.inner.read_only()
    }
    async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, DeviceError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.max_read.fetch_max(len, Ordering::SeqCst);
        self.inner.read(offset, len).await
    }
    async fn write(&self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.max_write.fetch_max(data.len(), Ordering::SeqCst);
        self.inner.write(offset, data).await
    }
    async fn flush(&self) -> Result<(), DeviceError> {
        self.inner.flush().await
    }
    async fn trim(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        self.inner.trim(offset, len).await
    }
}

#[test]
fn large_requests_and_a_page_cache_kept_across_opens() {
    require_root();
    let rt = runtime();
    let data = random_bytes(5, 32 << 20);
    let device = Arc::new(Recording {
        inner: MemDevice::new(data.clone(), false),
        reads: AtomicUsize::new(0),
        max_read: AtomicUsize::new(0),
        max_write: AtomicUsize::new(0),
    });
    let work = tempfile::tempdir().unwrap();
    let mut fuse = mount_device(device.clone(), work.path(), "image", rt.handle().clone()).unwrap();

    let mut buf = vec![0u8; 8 << 20];
    let f = fs::File::open(fuse.file_path()).unwrap();
    f.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == data[..8 << 20]);
    drop(f);
    // Larger than the kernel's default FUSE readahead (128 KiB).
    let max_read = device.max_read.load(Ordering::SeqCst);
    assert!(max_read > 128 << 10, "largest read {max_read} bytes");
    let reads = device.reads.load(Ordering::SeqCst);

    // A new open reads from the page cache, not from the device.
    let f = fs::File::open(fuse.file_path()).unwrap();
    f.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == data[..8 << 20]);
    assert_eq!(device.reads.load(Ordering::SeqCst), reads);
    drop(f);

    let f = fs::OpenOptions::new()
        .write(true)
        .open(fuse.file_path())
        .unwrap();
    f.write_all_at(&buf, 16 << 20).unwrap();
    drop(f);
    let max_write = device.max_write.load(Ordering::SeqCst);
    assert!(max_write > 128 << 10, "largest write {max_write} bytes");
    fuse.unmount().unwrap();
}

/// A device whose reads fail with `Io`.
struct BrokenDevice;

#[async_trait]
impl BlockDevice for BrokenDevice {
    fn size(&self) -> u64 {
        1 << 20
    }
    fn read_only(&self) -> bool {
        false
    }
    async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, DeviceError> {
        Err(DeviceError::new(
            DeviceErrorKind::Io,
            format!("cannot read {offset}+{len}: origin unreachable"),
        ))
    }
    async fn write(&self, _offset: u64, _data: &[u8]) -> Result<(), DeviceError> {
        Err(DeviceError::new(DeviceErrorKind::NoSpace, "overlay full"))
    }
    async fn flush(&self) -> Result<(), DeviceError> {
        Ok(())
    }
    async fn trim(&self, _offset: u64, _len: u64) -> Result<(), DeviceError> {
        Ok(())
    }
}

#[test]
fn device_errors_become_errnos() {
    require_root();
    let rt = runtime();
    let work = tempfile::tempdir().unwrap();
    let mut fuse = mount_device(
        Arc::new(BrokenDevice),
        work.path(),
        "image",
        rt.handle().clone(),
    )
    .unwrap();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(fuse.file_path())
        .unwrap();
    let err = f.read_at(&mut [0u8; 4096], 8192).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "{err}"); // EIO
    let err = f.write_at(&[0u8; 4096], 0).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(28), "{err}"); // ENOSPC
    drop(f);
    fuse.unmount().unwrap();
}

#[test]
fn handles_cross_threads() {
    fn assert_send<T: Send>() {}
    fn assert_send_sync_clone<T: Send + Sync + Clone>() {}
    assert_send::<FuseMount>();
    assert_send_sync_clone::<lazyblock_agent::FuseUnmounter>();
    assert_send_sync_clone::<lazyblock_agent::MountStack>();
}

#[test]
fn bad_arguments_are_invalid_input() {
    let rt = runtime();
    let work = tempfile::tempdir().unwrap();
    let device = || Arc::new(MemDevice::new(vec![0; 4096], false)) as Arc<dyn BlockDevice>;
    for name in ["", ".", "..", "a/b"] {
        let err = mount_device(device(), work.path(), name, rt.handle().clone()).unwrap_err();
        assert_eq!(err.kind(), FuseErrorKind::InvalidInput, "{name:?}: {err}");
    }
    let missing = work.path().join("missing");
    let err = mount_device(device(), &missing, "image", rt.handle().clone()).unwrap_err();
    assert_eq!(err.kind(), FuseErrorKind::InvalidInput, "{err}");
    let file = work.path().join("file");
    fs::write(&file, b"").unwrap();
    let err = mount_device(device(), &file, "image", rt.handle().clone()).unwrap_err();
    assert_eq!(err.kind(), FuseErrorKind::InvalidInput, "{err}");

    let err = loopdev::attach(&missing, true).unwrap_err();
    assert_eq!(err.kind(), LoopErrorKind::CommandFailed, "{err}");
    assert!(err.to_string().contains("losetup"), "{err}");
    assert!(!err.to_string().contains('\n'), "{err}");
}
