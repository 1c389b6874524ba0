//! Writes a tree with every node type, checks it with `e2fsck -fn`, mounts it read-only
//! and compares it with the model, then mounts a copy read-write, changes it and checks
//! again. Needs root (loop devices), e2fsprogs and `getfattr` (package `attr`).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Mount, Op, Ops};
use lazyblock_flatten::{Entry, FileContent, Kind, Options};

fn makedev(major: u32, minor: u32) -> u64 {
    let (ma, mi) = (u64::from(major), u64::from(minor));
    ((ma & 0xffff_f000) << 32) | ((ma & 0xfff) << 8) | ((mi & 0xffff_ff00) << 12) | (mi & 0xff)
}

fn expected_bytes(c: &FileContent, off: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let end = off + len as u64;
    for s in &c.segments {
        let lo = s.offset.max(off);
        let hi = (s.offset + s.len).min(end);
        if lo < hi {
            common::fill(
                c.source.0,
                lo,
                &mut out[(lo - off) as usize..(hi - off) as usize],
            );
        }
    }
    out
}

fn check_file(p: &Path, c: &FileContent) {
    let f = fs::File::open(p).expect("open file");
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    if c.size <= 8 << 20 {
        ranges.push((0, c.size));
    } else {
        for s in &c.segments {
            // Each data segment with a margin of hole around it.
            let lo = s.offset.saturating_sub(5000);
            ranges.push((lo, (s.offset + s.len + 5000).min(c.size) - lo));
        }
        ranges.push((c.size / 2, 4096.min(c.size - c.size / 2)));
    }
    for (off, len) in ranges {
        let mut got = vec![0u8; len as usize];
        f.read_exact_at(&mut got, off).expect("read file");
        assert!(
            got == expected_bytes(c, off, len as usize),
            "{}: content differs at {off}+{len}",
            p.display()
        );
    }
}

fn check_entry(mnt: &Path, path: &str, e: &Entry, model: &Ops) {
    let p = mnt.join(path);
    let m = fs::symlink_metadata(&p).unwrap_or_else(|err| panic!("{path}: {err}"));
    let ft = m.file_type();
    let a = &e.attrs;
    assert_eq!(m.mode() & 0o7777, u32::from(a.mode), "{path}: mode");
    assert_eq!(m.uid(), a.uid, "{path}: uid");
    assert_eq!(m.gid(), a.gid, "{path}: gid");
    assert_eq!(
        (m.mtime(), m.mtime_nsec()),
        (a.mtime.secs, i64::from(a.mtime.nanos)),
        "{path}: mtime"
    );
    assert_eq!(
        (m.atime(), m.atime_nsec()),
        (a.mtime.secs, i64::from(a.mtime.nanos)),
        "{path}: atime"
    );
    assert_eq!(
        (m.ctime(), m.ctime_nsec()),
        (a.mtime.secs, i64::from(a.mtime.nanos)),
        "{path}: ctime"
    );
    match &e.kind {
        Kind::Dir => {
            assert!(ft.is_dir(), "{path}: not a dir");
            let prefix = if path.is_empty() {
                String::new()
            } else {
                format!("{path}/")
            };
            let subdirs = model
                .ops
                .iter()
                .filter(|o| matches!(o, Op::Add(p, e) if matches!(e.kind, Kind::Dir) && p.starts_with(&prefix) && !p[prefix.len()..].contains('/')))
                .count() as u64
                + u64::from(path.is_empty()); // lost+found
            assert_eq!(m.nlink(), 2 + subdirs, "{path}: dir nlink");
        }
        Kind::File(c) => {
            assert!(ft.is_file(), "{path}: not a file");
            assert_eq!(m.size(), c.size, "{path}: size");
            let links = model
                .ops
                .iter()
                .filter(|o| matches!(o, Op::Link(_, t) if t == path))
                .count() as u64;
            assert_eq!(m.nlink(), 1 + links, "{path}: nlink");
            let allocated: u64 = {
                let mut blocks = BTreeSet::new();
                for s in &c.segments {
                    for b in s.offset / 4096..(s.offset + s.len).div_ceil(4096) {
                        blocks.insert(b);
                    }
                }
                blocks.len() as u64
            };
            assert!(
                m.blocks() >= allocated * 8,
                "{path}: st_blocks {} < data blocks {allocated}",
                m.blocks()
            );
            check_file(&p, c);
        }
        Kind::Symlink(target) => {
            assert!(ft.is_symlink(), "{path}: not a symlink");
            assert_eq!(
                fs::read_link(&p).expect("readlink").as_os_str().as_bytes(),
                &target[..],
                "{path}: target"
            );
            assert_eq!(m.size(), target.len() as u64);
        }
        Kind::CharDevice { major, minor } => {
            assert!(ft.is_char_device(), "{path}");
            assert_eq!(m.rdev(), makedev(*major, *minor), "{path}: rdev");
        }
        Kind::BlockDevice { major, minor } => {
            assert!(ft.is_block_device(), "{path}");
            assert_eq!(m.rdev(), makedev(*major, *minor), "{path}: rdev");
        }
        Kind::Fifo => assert!(ft.is_fifo(), "{path}"),
        Kind::Socket => assert!(ft.is_socket(), "{path}"),
    }
    assert_eq!(common::getfattr(&p), a.xattrs, "{path}: xattrs");
}

fn walk(root: &Path, rel: &Path, out: &mut BTreeSet<String>) {
    for ent in fs::read_dir(root.join(rel)).expect("read_dir") {
        let ent = ent.expect("dirent");
        let r = rel.join(ent.file_name());
        out.insert(r.to_string_lossy().into_owned());
        if ent.file_type().expect("file type").is_dir() {
            walk(root, &r, out);
        }
    }
}

fn compare_with_model(mnt: &Path, model: &Ops) {
    check_entry(mnt, "", &model.root, model);
    let mut expected: BTreeSet<String> = BTreeSet::new();
    expected.insert("lost+found".into());
    for op in &model.ops {
        match op {
            Op::Add(p, e) => {
                check_entry(mnt, p, e, model);
                expected.insert(p.clone());
            }
            Op::Link(p, t) => {
                let a = fs::symlink_metadata(mnt.join(p)).expect("link");
                let b = fs::symlink_metadata(mnt.join(t)).expect("target");
                assert_eq!(
                    a.ino(),
                    b.ino(),
                    "hard link {p} -> {t}: inode numbers differ"
                );
                expected.insert(p.clone());
            }
            Op::Hide(p, _) => assert!(
                !mnt.join(p).exists() || expected.contains(p),
                "hidden {p} is visible"
            ),
        }
    }
    let mut found = BTreeSet::new();
    walk(mnt, Path::new(""), &mut found);
    assert_eq!(found, expected, "directory listing differs from the model");
}

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    assert!(st.success(), "{cmd} failed");
}

#[test]
fn full_tree_fsck_mount_compare_and_rw() {
    common::require_root();
    let model = common::full_tree();
    let tree = model.build();
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("full.ext4");
    let summary = lazyblock_flatten::write_image_file(
        &tree,
        &Options::new([9; 16]),
        &mut common::Synth::default(),
        &img,
    )
    .expect("write image");
    println!("{summary}");
    assert_eq!(fs::metadata(&img).expect("img").len(), summary.size_bytes);
    common::e2fsck(&img);

    // Read-only: compare everything with the model.
    {
        let m = Mount::new(&img, &dir.path().join("ro"), true);
        compare_with_model(&m.dir, &model);
        // The 255-byte name is really 255 bytes.
        let long = fs::read_dir(m.dir.join("usr"))
            .expect("usr")
            .map(|e| e.expect("ent").file_name())
            .find(|n| n.len() == 255);
        assert!(long.is_some(), "no 255-byte name in /usr");
        m.unmount();
    }

    // Read-write on a copy: write, delete, then e2fsck must still be clean.
    let rw = dir.path().join("rw.ext4");
    sh(&format!(
        "cp --sparse=always {} {}",
        img.display(),
        rw.display()
    ));
    let mnt: PathBuf = dir.path().join("rwmnt");
    {
        let m = Mount::new(&rw, &mnt, false);
        let d = &m.dir;
        fs::create_dir_all(d.join("new/sub")).expect("mkdir");
        let mut f = fs::File::create(d.join("new/sub/data.bin")).expect("create");
        let payload: Vec<u8> = (0..5_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
        f.write_all(&payload).expect("write");
        drop(f);
        for i in 0..500 {
            fs::write(d.join(format!("many/added-{i}")), format!("{i}")).expect("write small");
        }
        for i in (0..3000).step_by(7) {
            let name = format!("many/entry-{i:05}-{}", "x".repeat(i % 40));
            fs::remove_file(d.join(name)).expect("rm");
        }
        fs::remove_file(d.join("usr/lib/libbig.so")).expect("rm big");
        fs::remove_file(d.join("etc/hello-link")).expect("rm link");
        fs::remove_file(d.join("usr/lib/frag2000")).expect("rm frag");
        fs::remove_file(d.join("etc/bigxattr")).expect("rm xattr file");
        fs::OpenOptions::new()
            .append(true)
            .open(d.join("etc/hello"))
            .expect("open")
            .write_all(b"more")
            .expect("append");
        let mut deep = PathBuf::from("deep");
        for i in 0..80 {
            deep.push(format!("d{i}"));
        }
        fs::remove_dir_all(d.join(&deep).parent().expect("parent")).expect("rm deep");
        fs::write(d.join("usr/lib/sparse.img"), b"truncated").expect("truncate sparse");
        sh(&format!(
            "setfattr -n user.new -v hello {}",
            d.join("etc/hello").display()
        ));
        sh("sync");
        m.unmount();
    }
    common::e2fsck(&rw);
    {
        let m = Mount::new(&rw, &mnt, true);
        let got = fs::read(m.dir.join("new/sub/data.bin")).expect("read back");
        assert_eq!(got.len(), 5_000_000);
        assert_eq!(fs::read(m.dir.join("etc/hello")).expect("hello").len(), 17);
        assert!(!m.dir.join("usr/lib/libbig.so").exists());
        m.unmount();
    }
    // The original image was not touched by the rw test.
    common::e2fsck(&img);
}
