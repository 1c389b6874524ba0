//! The reference extractor writes what the tree says to a real directory.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use common::{write_layout, Blob, Layer};
use lazyblock_oci::{extract_to_dir, ErrorKind, Image, OpenOptions};
use tar::EntryType;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn getxattr(p: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    let n = rustix::fs::lgetxattr(p, name, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

#[test]
fn extract_preserves_everything() {
    assert!(
        is_root(),
        "extract_to_dir tests need root (owners, devices): run the suite as root"
    );
    let cap: &[u8] = &[
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let l0 = Layer::new()
        .dir_mode("bin", 0o755)
        .file_with("bin/su", b"su-binary", |h| h.set_mode(0o4755))
        .hardlink("bin/su2", "bin/su")
        .pax(&[
            ("SCHILY.xattr.security.capability", cap),
            ("SCHILY.xattr.user.note", b"hi"),
            ("mtime", b"1600000000.987654321"),
        ])
        .file("bin/ping", b"ping")
        .symlink("bin/sh", "/usr/bin/dash")
        .symlink("bin/long", &"l".repeat(200))
        .device("dev/null", EntryType::Char, 1, 3)
        .device("dev/loop0", EntryType::Block, 7, 0)
        .fifo("run/initctl")
        .dir_mode("tmp", 0o1777)
        .file_with("home/u/.profile", b"export X=1\n", |h| {
            h.set_uid(1000);
            h.set_gid(1000);
            h.set_mode(0o640);
        })
        .file("gone", b"to be deleted")
        .finish();
    let l1 = Layer::new()
        .whiteout("", "gone")
        .file("etc/new", &vec![b'z'; 70_000])
        .finish();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("oci");
    write_layout(&dir, "t", &[Blob::gzip(l0), Blob::zstd(l1)]);
    let img = Image::open(&dir, &OpenOptions::tag("t")).unwrap();
    let out = tmp.path().join("rootfs");
    let tree = extract_to_dir(&img, &out).unwrap();
    assert_eq!(tree, img.flatten().unwrap().tree);

    let md = |p: &str| std::fs::symlink_metadata(out.join(p)).unwrap();
    assert_eq!(std::fs::read(out.join("bin/su")).unwrap(), b"su-binary");
    assert_eq!(md("bin/su").mode() & 0o7777, 0o4755);
    assert_eq!(md("bin/su").ino(), md("bin/su2").ino());
    assert_eq!(md("bin/su").nlink(), 2);
    assert_eq!(
        getxattr(&out.join("bin/ping"), "security.capability").as_deref(),
        Some(cap)
    );
    assert_eq!(
        getxattr(&out.join("bin/ping"), "user.note").as_deref(),
        Some(&b"hi"[..])
    );
    assert_eq!(
        (md("bin/ping").mtime(), md("bin/ping").mtime_nsec()),
        (1_600_000_000, 987_654_321)
    );
    assert_eq!(
        std::fs::read_link(out.join("bin/sh")).unwrap().to_str(),
        Some("/usr/bin/dash")
    );
    assert_eq!(
        std::fs::read_link(out.join("bin/long"))
            .unwrap()
            .as_os_str()
            .len(),
        200
    );
    assert!(md("dev/null").file_type().is_char_device());
    assert_eq!(md("dev/null").rdev(), rustix::fs::makedev(1, 3));
    assert!(md("dev/loop0").file_type().is_block_device());
    assert!(md("run/initctl").file_type().is_fifo());
    assert_eq!(md("tmp").mode() & 0o7777, 0o1777);
    let p = md("home/u/.profile");
    assert_eq!((p.uid(), p.gid(), p.mode() & 0o7777), (1000, 1000, 0o640));
    assert!(!out.join("gone").exists());
    assert_eq!(std::fs::read(out.join("etc/new")).unwrap().len(), 70_000);
    assert_eq!(
        md("bin").mtime(),
        common::MTIME as i64,
        "dir mtimes survive their children"
    );
}

#[test]
fn corrupt_image_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("oci");
    let good = Layer::new().file("a", b"aaaa").finish();
    let mut b = Blob::plain(good);
    let wrong = lazyblock_oci::Digest::of(b"x");
    let cfg = common::config_json(&[wrong]);
    b.media_type = "application/vnd.oci.image.layer.v1.tar".into();
    common::write_layout_with(&dir, "t", &[b], &cfg);
    let img = Image::open(&dir, &OpenOptions::tag("t")).unwrap();
    let out = tmp.path().join("rootfs");
    let e = extract_to_dir(&img, &out).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(!out.exists(), "nothing was created");
}

#[test]
fn refuses_non_empty_destination() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("oci");
    write_layout(
        &dir,
        "t",
        &[Blob::plain(Layer::new().file("a", b"a").finish())],
    );
    let img = Image::open(&dir, &OpenOptions::tag("t")).unwrap();
    let out = tmp.path().join("rootfs");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("x"), b"").unwrap();
    assert_eq!(
        extract_to_dir(&img, &out).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}
