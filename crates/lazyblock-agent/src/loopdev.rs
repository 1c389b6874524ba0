//! Loop devices and ext4 mounts on top of a served file, through util-linux commands.
//!
//! Owns the plumbing between the FUSE file ([`crate::fuse`]) and a mounted ext4: [`attach`]
//! (`losetup`), [`mount_ext4`] and [`unmount`] (`mount`, `umount`), and [`find_stack`], which
//! finds from the ext4 mount directory alone the loop device, its backing file and the FUSE
//! mount that file lives on, so that [`MountStack::teardown`] undoes everything. No ioctls:
//! every action is a command whose failure is reported with the command line and its stderr.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The small, stable classification of [`LoopError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LoopErrorKind {
    /// Nothing is mounted at the directory (or it is not a loop-device mount).
    NotMounted,
    /// The mount or device is in use.
    Busy,
    /// A command ran and failed (its stderr is in the message).
    CommandFailed,
    /// A command could not be started, or `/proc` or `/sys` could not be read.
    Io,
}

/// An error from the loop/mount plumbing: a kind and one line with the failing command and its
/// stderr.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct LoopError {
    kind: LoopErrorKind,
    message: String,
}

impl LoopError {
    fn new(kind: LoopErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The stable kind.
    pub fn kind(&self) -> LoopErrorKind {
        self.kind
    }
}

/// Runs `program args`, returning its stdout; a failure names the command line and carries its
/// stderr on one line. `classify` may turn a failure's stderr into a more precise kind.
fn run(
    program: &str,
    args: &[&OsStr],
    classify: fn(&str) -> Option<LoopErrorKind>,
) -> Result<String, LoopError> {
    let line = std::iter::once(program.to_owned())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let output = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| LoopError::new(LoopErrorKind::Io, format!("cannot run `{line}`: {e}")))?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stderr = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let kind = classify(&stderr).unwrap_or(LoopErrorKind::CommandFailed);
    Err(LoopError::new(
        kind,
        format!("`{line}` failed ({}): {stderr}", output.status),
    ))
}

fn classify_umount(stderr: &str) -> Option<LoopErrorKind> {
    if stderr.contains("busy") {
        Some(LoopErrorKind::Busy)
    } else if stderr.contains("not mounted") || stderr.contains("no mount point specified") {
        Some(LoopErrorKind::NotMounted)
    } else {
        None
    }
}

fn classify_busy(stderr: &str) -> Option<LoopErrorKind> {
    stderr.contains("busy").then_some(LoopErrorKind::Busy)
}

/// An attached loop device, e.g. `/dev/loop3`. Not detached on drop: see [`LoopDevice::detach`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopDevice {
    path: PathBuf,
}

impl LoopDevice {
    /// The loop device for `path` (e.g. `/dev/loop3`), without checking it.
    pub fn from_path(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The device node, e.g. `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file backing the device, from `/sys/block/loopN/loop/backing_file`.
    pub fn backing_file(&self) -> Result<PathBuf, LoopError> {
        let name = self.path.file_name().unwrap_or_default();
        let sys = Path::new("/sys/block").join(name).join("loop/backing_file");
        read_backing_file(&sys)
    }

    /// Detaches the device (`losetup --detach`). The kernel releases the backing file once the
    /// last opener closes the device.
    pub fn detach(&self) -> Result<(), LoopError> {
        detach(&self.path)
    }
}

fn read_backing_file(sys: &Path) -> Result<PathBuf, LoopError> {
    let text = std::fs::read(sys).map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::NotFound {
            LoopErrorKind::NotMounted
        } else {
            LoopErrorKind::Io
        };
        LoopError::new(kind, format!("cannot read {}: {e}", sys.display()))
    })?;
    let text = text.strip_suffix(b"\n").unwrap_or(&text);
    Ok(PathBuf::from(OsStr::from_bytes(text)))
}

/// Attaches `file` to the first free loop device (`losetup --find --show [--read-only]`).
pub fn attach(file: &Path, read_only: bool) -> Result<LoopDevice, LoopError> {
    attach_with(file, read_only, false)
}

/// Like [`attach`]; with `direct_io` the loop device reads and writes `file` with `O_DIRECT`
/// (`--direct-io=on`). For a file served through FUSE that is what `lazyblock mount` wants:
/// the filesystem above caches the pages once (no second copy in the FUSE file's page cache),
/// and the loop device asks for exactly the blocks the filesystem reads, without the FUSE
/// file's own read-ahead, so the agent fetches only the chunks the guest reads.
pub fn attach_with(file: &Path, read_only: bool, direct_io: bool) -> Result<LoopDevice, LoopError> {
    let mut args: Vec<&OsStr> = vec!["--find".as_ref(), "--show".as_ref()];
    if read_only {
        args.push("--read-only".as_ref());
    }
    if direct_io {
        args.push("--direct-io=on".as_ref());
    }
    args.push(file.as_os_str());
    let out = run("losetup", &args, classify_busy)?;
    let dev = out.trim();
    if !dev.starts_with("/dev/") {
        return Err(LoopError::new(
            LoopErrorKind::CommandFailed,
            format!(
                "`losetup --find --show {}` printed {dev:?}, not a device",
                file.display()
            ),
        ));
    }
    Ok(LoopDevice::from_path(dev))
}

/// Detaches the loop device `dev` (`losetup --detach`).
pub fn detach(dev: &Path) -> Result<(), LoopError> {
    run(
        "losetup",
        &["--detach".as_ref(), dev.as_os_str()],
        classify_busy,
    )
    .map(drop)
}

/// Mounts the ext4 on `dev` at `dir` (`mount -t ext4`); read-only as `-o ro,noload`, which
/// also skips journal replay so nothing at all is written to the device.
pub fn mount_ext4(dev: &Path, dir: &Path, read_only: bool) -> Result<(), LoopError> {
    let mut args: Vec<&OsStr> = vec!["-t".as_ref(), "ext4".as_ref()];
    if read_only {
        args.extend([OsStr::new("-o"), OsStr::new("ro,noload")]);
    }
    args.extend([dev.as_os_str(), dir.as_os_str()]);
    run("mount", &args, classify_busy).map(drop)
}

/// Unmounts whatever is mounted at `dir` (`umount`): [`LoopErrorKind::Busy`] while in use,
/// [`LoopErrorKind::NotMounted`] when nothing is.
pub fn unmount(dir: &Path) -> Result<(), LoopError> {
    run("umount", &[dir.as_os_str()], classify_umount).map(drop)
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Device number (major, minor) of the mounted filesystem.
    pub dev: (u32, u32),
    /// The mount point.
    pub mountpoint: PathBuf,
    /// The filesystem type, e.g. `ext4`, `fuse.lazyblock`.
    pub fstype: String,
    /// The mount source, e.g. `/dev/loop3`, `lazyblock`.
    pub source: String,
}

/// Undoes the `\040`-style octal escapes of mountinfo fields.
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = &b[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Parses `/proc/self/mountinfo` text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let _id = fields.next()?;
            let _parent = fields.next()?;
            let (major, minor) = fields.next()?.split_once(':')?;
            let dev = (major.parse().ok()?, minor.parse().ok()?);
            let _root = fields.next()?;
            let mountpoint = PathBuf::from(OsStr::from_bytes(&unescape(fields.next()?)));
            // Optional fields end with a lone "-".
            let mut fields = fields.skip_while(|f| *f != "-").skip(1);
            let fstype = String::from_utf8_lossy(&unescape(fields.next()?)).into_owned();
            let source = String::from_utf8_lossy(&unescape(fields.next()?)).into_owned();
            Some(MountInfo {
                dev,
                mountpoint,
                fstype,
                source,
            })
        })
        .collect()
}

/// The mounts of this process's mount namespace, in mount order.
pub fn mounts() -> Result<Vec<MountInfo>, LoopError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| {
        LoopError::new(
            LoopErrorKind::Io,
            format!("cannot read /proc/self/mountinfo: {e}"),
        )
    })?;
    Ok(parse_mountinfo(&text))
}

/// The mount that `path` lives on: the last-mounted among the deepest mount points that are
/// a prefix of `path` (path components, not bytes).
fn mount_containing<'a>(mounts: &'a [MountInfo], path: &Path) -> Option<&'a MountInfo> {
    mounts
        .iter()
        .filter(|m| path.starts_with(&m.mountpoint))
        .max_by_key(|m| m.mountpoint.components().count())
        .and_then(|deepest| {
            mounts
                .iter()
                .rev()
                .find(|m| m.mountpoint == deepest.mountpoint)
        })
}

/// What `lazyblock mount` stacked under a directory: ext4 on a loop device on a file on FUSE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountStack {
    /// The directory the ext4 is mounted at (canonical).
    pub dir: PathBuf,
    /// The loop device the ext4 is mounted from.
    pub loop_device: LoopDevice,
    /// The loop device's backing file.
    pub backing_file: PathBuf,
    /// The FUSE mount point the backing file lives on; `None` if it is not on a FUSE mount.
    pub fuse_mountpoint: Option<PathBuf>,
    /// The FUSE mount's filesystem type, e.g. `fuse.lazyblock`; `None` with `fuse_mountpoint`.
    pub fuse_fstype: Option<String>,
}

/// Finds the stack under `dir`: `None` if `dir` is not a mount point, or its top mount is not
/// from a loop device.
///
/// The loop device comes from the mount's device number in `/proc/self/mountinfo` (via
/// `/sys/dev/block/MAJ:MIN`), its backing file from `/sys/block/loopN/loop/backing_file`, and
/// the FUSE mount from the deepest mount point containing that file.
pub fn find_stack(dir: &Path) -> Result<Option<MountStack>, LoopError> {
    let dir = dir.canonicalize().map_err(|e| {
        LoopError::new(
            LoopErrorKind::NotMounted,
            format!("cannot resolve {}: {e}", dir.display()),
        )
    })?;
    let all = mounts()?;
    let Some(top) = all.iter().rev().find(|m| m.mountpoint == dir) else {
        return Ok(None);
    };
    let (major, minor) = top.dev;
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    let backing = sys.join("loop/backing_file");
    if !backing.exists() {
        return Ok(None);
    }
    // /sys/dev/block/7:3 -> ../../devices/virtual/block/loop3
    let name = std::fs::read_link(&sys)
        .ok()
        .and_then(|target| target.file_name().map(|n| n.to_owned()))
        .ok_or_else(|| {
            LoopError::new(
                LoopErrorKind::Io,
                format!("cannot resolve {} to a device name", sys.display()),
            )
        })?;
    let backing_file = read_backing_file(&backing)?;
    let fuse = mount_containing(&all, &backing_file).filter(|m| m.fstype.starts_with("fuse"));
    Ok(Some(MountStack {
        dir,
        loop_device: LoopDevice::from_path(Path::new("/dev").join(name)),
        fuse_mountpoint: fuse.map(|m| m.mountpoint.clone()),
        fuse_fstype: fuse.map(|m| m.fstype.clone()),
        backing_file,
    }))
}

impl MountStack {
    /// Unmounts the ext4 at [`dir`](MountStack::dir), detaches the loop device, and unmounts
    /// the FUSE mount (which ends the agent's FUSE session). Stops at the first failure; a
    /// busy ext4 ([`LoopErrorKind::Busy`]) leaves everything in place.
    ///
    /// Detaching is asynchronous in the kernel (the backing file is released when the last
    /// opener of the device closes it, e.g. a udev probe), so a busy FUSE unmount is retried
    /// for up to 5 s before it is reported.
    pub fn teardown(&self) -> Result<(), LoopError> {
        unmount(&self.dir)?;
        self.loop_device.detach()?;
        let Some(fuse) = &self.fuse_mountpoint else {
            return Ok(());
        };
        let mut delay = Duration::from_millis(10);
        let mut waited = Duration::ZERO;
        loop {
            match unmount(fuse) {
                Err(e) if e.kind() == LoopErrorKind::Busy && waited < Duration::from_secs(5) => {
                    std::thread::sleep(delay);
                    waited += delay;
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_escapes_and_optional_fields() {
        let text = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
36 22 7:3 / /mnt/my\\040dir rw,relatime shared:1 master:2 - ext4 /dev/loop3 rw
40 22 0:55 / /run/fuse rw,nosuid - fuse.lazyblock lazyblock rw,user_id=0
garbage line
";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].dev, (7, 3));
        assert_eq!(m[1].mountpoint, PathBuf::from("/mnt/my dir"));
        assert_eq!(m[1].fstype, "ext4");
        assert_eq!(m[1].source, "/dev/loop3");
        assert_eq!(m[2].fstype, "fuse.lazyblock");
        assert_eq!(m[2].source, "lazyblock");
    }

    #[test]
    fn unescape_leaves_non_octal_alone() {
        assert_eq!(unescape("a\\134b"), b"a\\b");
        assert_eq!(unescape("a\\9x"), b"a\\9x");
        assert_eq!(unescape("end\\04"), b"end\\04");
    }

    #[test]
    fn finds_the_deepest_last_mount_containing_a_path() {
        let m = parse_mountinfo(
            "\
1 0 0:1 / / rw - ext4 /dev/sda rw
2 1 0:2 / /run rw - tmpfs tmpfs rw
3 2 0:3 / /run/fuse rw - fuse.lazyblock lazyblock rw
4 2 0:4 / /run/fuse rw - fuse.lazyblock other rw
5 2 0:5 / /run/fusex rw - tmpfs tmpfs rw
",
        );
        let found = mount_containing(&m, Path::new("/run/fuse/image")).map(|m| m.dev);
        assert_eq!(found, Some((0, 4)));
        let found = mount_containing(&m, Path::new("/run/fusex/image")).map(|m| m.dev);
        assert_eq!(found, Some((0, 5)));
        let found = mount_containing(&m, Path::new("/etc/passwd")).map(|m| m.dev);
        assert_eq!(found, Some((0, 1)));
    }
}
