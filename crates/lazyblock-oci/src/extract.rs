//! Reference extractor: writes a flattened image to a real directory (test tool).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, Timestamps, CWD};

use crate::error::{invalid, Error, Result};
use crate::image::Image;
use crate::tree::{InodeId, NodeKind, Tree};

fn io_at<'a>(what: &str, p: &'a Path) -> impl Fn(io::Error) -> Error + 'a {
    let what = what.to_string();
    move |e| Error::io(format!("{what} {}", p.display()), e)
}

fn os_at<'a>(what: &str, p: &'a Path) -> impl Fn(rustix::io::Errno) -> Error + 'a {
    let what = what.to_string();
    move |e| Error::io(format!("{what} {}", p.display()), io::Error::from(e))
}

/// Flatten `image` (verifying everything first) and write the result below `dest`, as
/// root would see the image: owners, modes including setuid/setgid/sticky, xattrs,
/// devices, FIFOs, hard links, symlinks and mtimes (with nanoseconds) are preserved.
///
/// `dest` must be an empty directory or not exist yet. Nothing is written outside it:
/// the tree has no path through a symlink, and every entry is created new (no
/// pre-existing file is followed). Owners, devices and `trusted.*`/`security.*`
/// xattrs need root. Returns the tree that was written.
pub fn extract_to_dir(image: &Image, dest: &Path) -> Result<Tree> {
    let flat = image.flatten()?;
    let tree = flat.tree;
    match fs::read_dir(dest) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(invalid(format!("{} is not empty", dest.display())));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dest).map_err(io_at("create", dest))?;
        }
        Err(e) => return Err(Error::io(format!("read {}", dest.display()), e)),
    }

    // 1. create every entry; remember the first path of each inode
    let mut first: Vec<Option<PathBuf>> = vec![None; tree.inodes.len()];
    let mut order: Vec<InodeId> = Vec::new();
    let mut failure: Option<Error> = None;
    tree.walk(|rel, id| {
        if failure.is_some() || rel.is_empty() {
            if rel.is_empty() {
                if let Some(slot) = first.get_mut(id as usize) {
                    *slot = Some(dest.to_path_buf());
                    order.push(id);
                }
            }
            return;
        }
        let path = dest.join(OsStr::from_bytes(rel));
        let r = create_entry(&tree, id, &path, &mut first, &mut order);
        if let Err(e) = r {
            failure = Some(e);
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }

    // 2. file data, streamed layer by layer in offset order
    let mut by_layer: BTreeMap<u32, Vec<(u64, u64, PathBuf)>> = BTreeMap::new();
    for (id, node) in tree.inodes.iter().enumerate() {
        if let (NodeKind::File { data }, Some(Some(p))) = (&node.kind, first.get(id)) {
            if data.len > 0 {
                by_layer
                    .entry(data.layer)
                    .or_default()
                    .push((data.offset, data.len, p.clone()));
            }
        }
    }
    for (layer, mut files) in by_layer {
        files.sort();
        let mut r = image.open_layer(layer as usize)?;
        let mut pos = 0u64;
        let content = |e: io::Error| Error::from_content_io("layer data", e);
        for (offset, len, path) in files {
            let skip = offset.saturating_sub(pos);
            io::copy(&mut (&mut r).take(skip), &mut io::sink()).map_err(content)?;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_at("open", &path))?;
            let n = io::copy(&mut (&mut r).take(len), &mut f).map_err(content)?;
            if n != len {
                return Err(Error::Corrupt(format!(
                    "layer {layer} ended inside file data"
                )));
            }
            f.flush().map_err(io_at("write", &path))?;
            pos = offset + len;
        }
        io::copy(&mut r, &mut io::sink()).map_err(content)?;
    }

    // 3. metadata, children before parents so directory mtimes stay
    for &id in order.iter().rev() {
        let (Some(node), Some(Some(path))) = (tree.inode(id), first.get(id as usize)) else {
            continue;
        };
        let m = &node.meta;
        lchown(path, Some(m.uid), Some(m.gid)).map_err(io_at("chown", path))?;
        let is_link = matches!(node.kind, NodeKind::Symlink { .. });
        if !is_link {
            // after chown, which clears setuid/setgid
            fs::set_permissions(path, fs::Permissions::from_mode(u32::from(m.mode)))
                .map_err(io_at("chmod", path))?;
        }
        for (k, v) in &m.xattrs {
            rustix::fs::lsetxattr(
                path.as_path(),
                OsStr::from_bytes(k),
                v,
                rustix::fs::XattrFlags::empty(),
            )
            .map_err(os_at("setxattr", path))?;
        }
        let t = rustix::fs::Timespec {
            tv_sec: m.mtime.secs,
            tv_nsec: i64::from(m.mtime.nanos),
        };
        let times = Timestamps {
            last_access: t,
            last_modification: t,
        };
        rustix::fs::utimensat(CWD, path.as_path(), &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(os_at("utimensat", path))?;
    }
    Ok(tree)
}

fn create_entry(
    tree: &Tree,
    id: InodeId,
    path: &Path,
    first: &mut [Option<PathBuf>],
    order: &mut Vec<InodeId>,
) -> Result<()> {
    let Some(slot) = first.get_mut(id as usize) else {
        return Err(Error::Corrupt("inode id out of range".into()));
    };
    if let Some(existing) = slot {
        return fs::hard_link(&*existing, path).map_err(io_at("link", path));
    }
    let node = tree
        .inode(id)
        .ok_or_else(|| Error::Corrupt("inode id out of range".into()))?;
    let private = Mode::from_raw_mode(0o600);
    match &node.kind {
        NodeKind::Directory { .. } => fs::create_dir(path).map_err(io_at("mkdir", path))?,
        NodeKind::File { .. } => {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(io_at("create", path))?;
        }
        NodeKind::Symlink { target } => {
            std::os::unix::fs::symlink(OsStr::from_bytes(target), path)
                .map_err(io_at("symlink", path))?;
        }
        NodeKind::CharDevice { major, minor } => rustix::fs::mknodat(
            CWD,
            path,
            FileType::CharacterDevice,
            private,
            rustix::fs::makedev(*major, *minor),
        )
        .map_err(os_at("mknod", path))?,
        NodeKind::BlockDevice { major, minor } => rustix::fs::mknodat(
            CWD,
            path,
            FileType::BlockDevice,
            private,
            rustix::fs::makedev(*major, *minor),
        )
        .map_err(os_at("mknod", path))?,
        NodeKind::Fifo => rustix::fs::mknodat(CWD, path, FileType::Fifo, private, 0)
            .map_err(os_at("mkfifo", path))?,
    }
    *slot = Some(path.to_path_buf());
    order.push(id);
    Ok(())
}
