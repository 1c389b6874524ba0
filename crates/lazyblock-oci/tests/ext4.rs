//! OCI image → ext4 image (`ext4_image`), checked against the real world: `e2fsck -fn`,
//! a read-only loop mount compared with the reference extractor (`extract_to_dir`), a
//! read-write mount that the guest changes and `e2fsck` still accepts, byte-identical
//! output across work dirs, time zones and umasks, errors surfacing through the reader.
//!
//! Mounting needs root: these tests fail (they do not skip) when not run as root.
//! The corpus test is ignored by default; `.ci/run` runs it with `LAZYBLOCK_CORPUS` naming the
//! output of `scripts/make-corpus.sh` and `-- --ignored corpus_images` (it fails without it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{write_layout, Blob, Layer};
use lazyblock_oci::{
    ext4_image, extract_to_dir, ErrorKind, Ext4Options, Image, OpenOptions, RegionKind,
};
use tar::EntryType;

// ---- helpers ---------------------------------------------------------------------------

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test mounts loop devices and runs e2fsck on images: run it as root"
    );
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

/// Drain `r` into a sparse file at `path` (all-zero 4 KiB blocks become holes); returns
/// the SHA-256 of the whole stream and its length.
fn write_sparse(mut r: impl Read, path: &Path) -> io::Result<(String, u64)> {
    let mut f = File::create(path)?;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        for blk in buf[..n].chunks(4096) {
            if blk.iter().all(|&b| b == 0) {
                f.seek(SeekFrom::Current(blk.len() as i64))?;
            } else {
                f.write_all(blk)?;
            }
        }
        total += n as u64;
    }
    f.set_len(total)?;
    f.sync_all()?;
    Ok((hex::encode(ctx.finish().as_ref()), total))
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

fn e2fsck(img: &Path) {
    run(Command::new("e2fsck").arg("-fn").arg(img));
}

/// A loop mount, unmounted on drop (also when the test panics).
struct Mount {
    dir: PathBuf,
}

impl Mount {
    fn new(img: &Path, dir: &Path, rw: bool) -> Self {
        fs::create_dir_all(dir).unwrap();
        let opts = if rw { "loop,rw" } else { "loop,ro" };
        run(Command::new("mount")
            .args(["-t", "ext4", "-o", opts])
            .arg(img)
            .arg(dir));
        Self {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Everything observable about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snap {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    /// Regular files only (directory sizes depend on the file system).
    size: Option<u64>,
    rdev: Option<(u32, u32)>,
    target: Option<Vec<u8>>,
    sha: Option<String>,
    /// Link count of non-directories.
    nlink: Option<u64>,
    /// For hard-linked files: the first path (sorted) of the group.
    group: Option<Vec<u8>>,
}

/// Snapshot of the tree under `root`, keyed by relative path ("" = the root itself);
/// `lost+found` at the top is left out when `skip_lost_found`.
fn snapshot(root: &Path, skip_lost_found: bool) -> BTreeMap<Vec<u8>, Snap> {
    let mut out = BTreeMap::new();
    let mut inos: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
    while let Some(rel) = stack.pop() {
        let p = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(OsStr::from_bytes(&rel))
        };
        let md = fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "socket"
        };
        let mut s = Snap {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime: (md.mtime(), md.mtime_nsec()),
            size: None,
            rdev: None,
            target: None,
            sha: None,
            nlink: (!ft.is_dir()).then_some(md.nlink()),
            group: None,
        };
        match kind {
            "dir" => {
                for e in fs::read_dir(&p).unwrap() {
                    let name = e.unwrap().file_name();
                    if skip_lost_found && rel.is_empty() && name == "lost+found" {
                        continue;
                    }
                    let mut c = rel.clone();
                    if !c.is_empty() {
                        c.push(b'/');
                    }
                    c.extend_from_slice(name.as_bytes());
                    stack.push(c);
                }
            }
            "file" => {
                s.size = Some(md.len());
                let mut f = File::open(&p).unwrap();
                let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    ctx.update(&buf[..n]);
                }
                s.sha = Some(hex::encode(ctx.finish().as_ref()));
                if md.nlink() > 1 {
                    inos.entry(md.ino()).or_default();
                }
            }
            "symlink" => {
                s.target = Some(fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec())
            }
            "char" | "block" => {
                s.rdev = Some((rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev())));
            }
            _ => {}
        }
        if kind == "file" && md.nlink() > 1 {
            let g = inos.get_mut(&md.ino()).unwrap();
            if g.is_empty() || rel < *g {
                *g = rel.clone();
            }
        }
        out.insert(rel, (s, md.ino()));
    }
    out.into_iter()
        .map(|(k, (mut s, ino))| {
            if s.kind == "file" {
                s.group = inos.get(&ino).cloned();
            }
            (k, s)
        })
        .collect()
}

/// All xattrs under `root` (not following symlinks), by escaped relative path.
fn xattrs(root: &Path, skip_lost_found: bool) -> BTreeMap<String, BTreeMap<String, String>> {
    let out = Command::new("getfattr")
        .args([
            "-R",
            "-P",
            "-h",
            "-d",
            "-m",
            "-",
            "--absolute-names",
            "-e",
            "hex",
        ])
        .arg(root)
        .output()
        .expect("run getfattr (package `attr`)");
    assert!(
        out.status.success() || out.stdout.is_empty(),
        "getfattr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prefix = format!("{}", root.display());
    let mut m: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut cur: Option<String> = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(p) = line.strip_prefix("# file: ") {
            let rel = p.strip_prefix(&prefix).unwrap_or(p);
            cur = Some(rel.trim_start_matches('/').to_string());
        } else if let (Some((k, v)), Some(c)) = (line.split_once('='), &cur) {
            if skip_lost_found && c.starts_with("lost+found") {
                continue;
            }
            m.entry(c.clone())
                .or_default()
                .insert(k.to_string(), v.to_string());
        }
    }
    m
}

fn assert_same_tree(mounted: &Path, extracted: &Path) {
    let a = snapshot(mounted, true);
    let b = snapshot(extracted, false);
    let mut diffs = Vec::new();
    for (k, v) in &b {
        match a.get(k) {
            None => diffs.push(format!("missing in image: /{}", String::from_utf8_lossy(k))),
            Some(w) if w != v => diffs.push(format!(
                "/{}:\n  image     {w:?}\n  extracted {v:?}",
                String::from_utf8_lossy(k)
            )),
            _ => {}
        }
    }
    for k in a.keys().filter(|k| !b.contains_key(*k)) {
        diffs.push(format!("extra in image: /{}", String::from_utf8_lossy(k)));
    }
    assert!(
        diffs.is_empty(),
        "{} differences between the mounted image and extract_to_dir, first ones:\n{}",
        diffs.len(),
        diffs[..diffs.len().min(20)].join("\n")
    );
    let xa = xattrs(mounted, true);
    let xb = xattrs(extracted, false);
    assert_eq!(xa, xb, "xattrs differ (image vs extracted)");
    assert!(a.len() > 1);
}

struct Checked {
    hash: String,
    size: u64,
    secs: f64,
}

/// Flatten `img` to `dir/image.ext4` through `into_reader`, fsck it, mount it read-only
/// and compare with `extract_to_dir`; then change a read-write copy and fsck again.
fn check_image(img: &Image, dir: &Path, rw: bool) -> Checked {
    let t0 = Instant::now();
    let opts = Ext4Options {
        work_dir: Some(dir.to_path_buf()),
        ..Ext4Options::default()
    };
    let e = ext4_image(img, &opts).unwrap();
    let size = e.size();
    let path = dir.join("image.ext4");
    let (hash, n) = write_sparse(e.into_reader(), &path).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(n, size);
    assert_eq!(fs::metadata(&path).unwrap().len(), size);
    e2fsck(&path);

    let extracted = dir.join("extracted");
    extract_to_dir(img, &extracted).unwrap();
    {
        let m = Mount::new(&path, &dir.join("mnt"), false);
        assert_same_tree(&m.dir, &extracted);
    }
    fs::remove_dir_all(&extracted).unwrap();

    if rw {
        let copy = dir.join("rw.ext4");
        run(Command::new("cp")
            .arg("--sparse=always")
            .arg(&path)
            .arg(&copy));
        {
            let m = Mount::new(&copy, &dir.join("mnt-rw"), true);
            let root = &m.dir;
            fs::write(root.join("new-file"), vec![7u8; 5 << 20]).unwrap();
            fs::create_dir_all(root.join("new/dir/tree")).unwrap();
            for i in 0..200 {
                fs::write(root.join(format!("new/dir/tree/f{i}")), format!("{i}")).unwrap();
            }
            // delete and rewrite some of what the image had
            for e in fs::read_dir(root.join("bin")).unwrap().take(5) {
                let p = e.unwrap().path();
                if !p.symlink_metadata().unwrap().is_dir() {
                    fs::remove_file(&p).unwrap();
                }
            }
            fs::write(root.join("bin/replaced"), b"guest write").unwrap();
            run(&mut Command::new("sync"));
        }
        e2fsck(&copy);
        fs::remove_file(&copy).unwrap();
    }
    fs::remove_file(&path).unwrap();
    Checked { hash, size, secs }
}

// ---- the synthetic image ---------------------------------------------------------------

const CAP: &[u8] = &[
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Three layers exercising everything the model has.
fn synthetic_layers() -> Vec<Blob> {
    let long_name = "n".repeat(255);
    let deep: String = (0..120).map(|i| format!("d{}/", i % 10)).collect();
    let mut l0 = Layer::new()
        .dir("bin")
        .file_with("bin/su", b"su-binary", |h| h.set_mode(0o4755))
        .file_with("bin/sg", b"sg-binary", |h| h.set_mode(0o2711))
        .hardlink("bin/su2", "bin/su")
        .pax(&[
            ("SCHILY.xattr.security.capability", CAP),
            ("SCHILY.xattr.user.note", b"hi"),
            ("mtime", b"1600000000.987654321"),
        ])
        .file("bin/ping", b"ping")
        .symlink("bin/sh", "/usr/bin/dash")
        .symlink("bin/long", &"l".repeat(200))
        .symlink("bin/longest", &format!("/{}", "x/".repeat(2000)))
        .device("dev/null", EntryType::Char, 1, 3)
        .device("dev/loop0", EntryType::Block, 7, 0)
        .device("dev/big", EntryType::Char, 300, 70_000)
        .fifo("run/initctl")
        .dir_mode("tmp", 0o1777)
        .file_with("home/u/.profile", b"export X=1\n", |h| {
            h.set_uid(1000);
            h.set_gid(1000);
            h.set_mode(0o640);
        })
        .file("empty", b"")
        .file(&format!("names/{long_name}"), b"long name")
        .file(&format!("{deep}bottom"), b"deep")
        .file("gone", b"to be deleted by a whiteout")
        .file("opq/a", b"hidden by an opaque marker")
        .file("opq/sub/b", &pseudo_random(1, 9000))
        .file("d2f/child", b"a directory that becomes a file")
        .file("f2d", b"a file that becomes a directory")
        .file("usr/lib/replaced", &pseudo_random(2, 300_000))
        .file("usr/lib/kept", &pseudo_random(3, 1_000_000))
        .hardlink("usr/lib/kept-link", "usr/lib/kept")
        .file("usr/lib/linked-then-unlinked", b"two names")
        .hardlink("usr/lib/other-name", "usr/lib/linked-then-unlinked");
    for i in 0..300 {
        l0 = l0.file(
            &format!("usr/share/many/f{i:04}"),
            format!("{i}").as_bytes(),
        );
    }
    let l0 = l0.finish();
    let l1 = Layer::new()
        .whiteout("", "gone")
        .opaque("opq")
        .file("opq/c", b"new under the opaque dir")
        .hardlink("etc/su-link", "bin/su")
        .file("d2f", b"now a file")
        .dir("f2d")
        .file("f2d/x", b"under the new dir")
        .dir_mode("etc", 0o700)
        .pax(&[("SCHILY.xattr.user.dir", b"on a directory")])
        .dir("etc/withattr")
        .file("usr/lib/replaced", &pseudo_random(4, 200_000))
        .whiteout("usr/lib", "linked-then-unlinked")
        .file_with("srv/data", &pseudo_random(5, 5 << 20), |h| {
            h.set_uid(1000);
            h.set_gid(1000);
        })
        .finish();
    let l2 = Layer::new()
        .whiteout("usr/lib", "other-name")
        .whiteout("srv", "data")
        .file("srv/new", b"layer 2")
        .finish();
    vec![Blob::gzip(l0), Blob::zstd(l1), Blob::plain(l2)]
}

fn synthetic(dir: &Path) -> Image {
    let layout = dir.join("oci");
    write_layout(&layout, "t", &synthetic_layers());
    Image::open(&layout, &OpenOptions::tag("t")).unwrap()
}

// ---- tests ------------------------------------------------------------------------------

#[test]
fn synthetic_image_fscks_mounts_and_matches_extract() {
    require_root();
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let img = synthetic(tmp.path());
    let e = ext4_image(&img, &Ext4Options::default()).unwrap();
    // the layout has hidden data (whiteouts, replacement) and all three layers
    let s = e.summary().clone();
    assert!(s.hidden_blocks > 0, "{s}");
    for l in 0..3 {
        assert!(
            s.regions.iter().any(|r| r.kind == RegionKind::LayerMeta(l)),
            "no metadata region of layer {l}: {s}"
        );
    }
    // UUID from the manifest digest, config as JSON
    let md = img.manifest_digest.unwrap();
    assert_eq!(e.uuid()[..6], md.0[..6]);
    let cfg: serde_json::Value = serde_json::from_slice(e.config_json()).unwrap();
    assert_eq!(cfg["entrypoint"], serde_json::json!(["/bin/app"]));
    assert_eq!(cfg["cmd"], serde_json::json!(["--serve"]));
    assert_eq!(cfg["working_dir"], "/srv");
    assert_eq!(cfg["user"], "1000:1000");
    assert_eq!(cfg["env"][1], "LANG=C.UTF-8");
    assert_eq!(cfg["labels"]["org.example.name"], "demo");
    drop(e);

    let work = tmp.path().join("work");
    fs::create_dir(&work).unwrap();
    check_image(&img, &work, true);
    // nothing left behind in the work dir but what the test made
    let left: Vec<_> = fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.as_bytes().starts_with(b".lazyblock-ext4"))
        .collect();
    assert!(left.is_empty(), "spool left behind: {left:?}");
}

#[test]
fn image_through_reader_equals_write_to() {
    let tmp = tempfile::tempdir().unwrap();
    let img = synthetic(tmp.path());
    let e = ext4_image(&img, &Ext4Options::default()).unwrap();
    let mut direct = Vec::new();
    e.write_to(&mut direct).unwrap();
    assert_eq!(direct.len() as u64, e.size());
    let mut streamed = Vec::new();
    let mut r = e.into_reader();
    let size = r.size();
    // odd read sizes
    let mut buf = vec![0u8; 12_345];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        streamed.extend_from_slice(&buf[..n]);
    }
    assert_eq!(streamed.len() as u64, size);
    assert!(streamed == direct, "reader bytes differ from write_to");
    assert!(r.spooled_bytes() > 5 << 20);
    // reading after the end stays at the end
    assert_eq!(r.read(&mut buf).unwrap(), 0);
}

/// Child side of `deterministic_across_work_dirs_tz_and_umask` (does nothing unless the
/// parent set `LAZYBLOCK_EXT4_DET_CHILD=<layout>|<work dir>|<output file>`).
#[test]
fn determinism_child() {
    let Ok(spec) = std::env::var("LAZYBLOCK_EXT4_DET_CHILD") else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let img = Image::open(parts[0], &OpenOptions::tag("t")).unwrap();
    let hash = stream_hash(&img, Path::new(parts[1]));
    fs::write(parts[2], hash).unwrap();
}

fn stream_hash(img: &Image, work: &Path) -> String {
    let opts = Ext4Options {
        work_dir: Some(work.to_path_buf()),
        ..Ext4Options::default()
    };
    let mut r = ext4_image(img, &opts).unwrap().into_reader();
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    hex::encode(ctx.finish().as_ref())
}

#[test]
fn deterministic_across_work_dirs_tz_and_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let img = synthetic(tmp.path());
    let w0 = tmp.path().join("w0");
    fs::create_dir(&w0).unwrap();
    let here = stream_hash(&img, &w0);
    let exe = std::env::current_exe().unwrap();
    for (i, (tz, umask)) in [("Asia/Kolkata", "077"), ("America/St_Johns", "000")]
        .into_iter()
        .enumerate()
    {
        let work = tmp.path().join(format!("other-work-{i}"));
        fs::create_dir(&work).unwrap();
        let out = tmp.path().join(format!("hash-{i}"));
        let spec = format!(
            "{}|{}|{}",
            tmp.path().join("oci").display(),
            work.display(),
            out.display()
        );
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
            .arg(&exe)
            .args(["--exact", "determinism_child", "--test-threads", "1"])
            .env("LAZYBLOCK_EXT4_DET_CHILD", spec)
            .env("TZ", tz)
            .env("LC_ALL", "C")
            .status()
            .unwrap();
        assert!(status.success());
        let theirs = fs::read_to_string(&out).unwrap();
        assert_eq!(here, theirs, "TZ={tz} umask {umask} gave other bytes");
    }
    // and a different image gives different bytes (the hash is not trivially constant)
    let other = tmp.path().join("oci2");
    write_layout(
        &other,
        "t",
        &[Blob::plain(Layer::new().file("a", b"other").finish())],
    );
    let img2 = Image::open(&other, &OpenOptions::tag("t")).unwrap();
    assert_ne!(here, stream_hash(&img2, &w0));
    assert_eq!(sha256_hex(b"").len(), here.len());
}

#[test]
fn corrupt_layer_after_planning_is_a_read_error() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("oci");
    let data = pseudo_random(9, 3 << 20);
    let tar = Layer::new().file("big", &data).finish();
    let blob = Blob::plain(tar);
    write_layout(&layout, "t", std::slice::from_ref(&blob));
    let img = Image::open(&layout, &OpenOptions::tag("t")).unwrap();
    let e = ext4_image(&img, &Ext4Options::default()).unwrap();
    // flip a byte of the file data in the blob, after planning
    let p = common::blob_path(&layout, &common::digest(&blob.blob));
    let mut bytes = fs::read(&p).unwrap();
    bytes[2 << 20] ^= 0xff;
    fs::write(&p, &bytes).unwrap();
    let mut out = Vec::new();
    let err = e.into_reader().read_to_end(&mut out).unwrap_err();
    let inner = err
        .get_ref()
        .and_then(|i| i.downcast_ref::<lazyblock_oci::Error>())
        .unwrap_or_else(|| panic!("not an oci error: {err}"));
    assert_eq!(inner.kind(), ErrorKind::Corrupt, "{inner}");
    // no byte of the corrupt layer's data was handed out
    assert!(
        out.len() <= 512 << 10,
        "{} bytes before the error",
        out.len()
    );
}

#[test]
fn dropping_the_reader_stops_the_writer_and_removes_the_spool() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("oci");
    let mut l = Layer::new();
    for i in 0..8 {
        l = l.file(&format!("f{i}"), &pseudo_random(i, 8 << 20));
    }
    write_layout(&layout, "t", &[Blob::plain(l.finish())]);
    let img = Image::open(&layout, &OpenOptions::tag("t")).unwrap();
    let work = tmp.path().join("work");
    fs::create_dir(&work).unwrap();
    let opts = Ext4Options {
        work_dir: Some(work.clone()),
        ..Ext4Options::default()
    };
    let mut r = ext4_image(&img, &opts).unwrap().into_reader();
    let mut buf = vec![0u8; 1 << 20];
    r.read_exact(&mut buf).unwrap();
    assert_eq!(
        fs::read_dir(&work).unwrap().count(),
        1,
        "spool directory exists"
    );
    drop(r);
    let t0 = Instant::now();
    while fs::read_dir(&work).unwrap().count() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "writer thread still running / spool not removed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn unsupported_xattr_namespace_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("oci");
    let l = Layer::new()
        .pax(&[("SCHILY.xattr.system.posix_acl_access", b"\x02\0\0\0")])
        .file("acl", b"x")
        .finish();
    write_layout(&layout, "t", &[Blob::plain(l)]);
    let img = Image::open(&layout, &OpenOptions::tag("t")).unwrap();
    let err = ext4_image(&img, &Ext4Options::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
}

#[test]
fn spool_limit_is_enforced() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("oci");
    let l = Layer::new().file("f", &pseudo_random(1, 1 << 20)).finish();
    write_layout(&layout, "t", &[Blob::plain(l)]);
    let img = Image::open(&layout, &OpenOptions::tag("t")).unwrap();
    let opts = Ext4Options {
        max_spool_bytes: 1000,
        work_dir: Some(tmp.path().to_path_buf()),
        ..Ext4Options::default()
    };
    let mut out = Vec::new();
    let err = ext4_image(&img, &opts)
        .unwrap()
        .into_reader()
        .read_to_end(&mut out)
        .unwrap_err();
    let inner = err
        .get_ref()
        .and_then(|i| i.downcast_ref::<lazyblock_oci::Error>())
        .unwrap();
    assert_eq!(inner.kind(), ErrorKind::TooLarge);
}

/// A file above 4 GiB (dense: tar layers cannot be sparse here). Slow (writes, reads
/// and compares ~5 GiB several times): `cargo test --release -- --ignored huge`.
#[test]
#[ignore = "slow: > 4 GiB file"]
fn huge_file_over_4gib() {
    require_root();
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let layout = tmp.path().join("oci");
    let size: u64 = (4 << 30) + 12_345;
    // stream the tar to disk: header, mostly zeros with a marker every 256 MiB
    let tar_path = tmp.path().join("layer.tar");
    {
        let mut b = tar::Builder::new(io::BufWriter::new(File::create(&tar_path).unwrap()));
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(common::MTIME);
        h.set_size(size);
        struct Gen(u64, u64);
        impl Read for Gen {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = (buf.len() as u64).min(self.1 - self.0) as usize;
                for (i, b) in buf[..n].iter_mut().enumerate() {
                    let pos = self.0 + i as u64;
                    *b = if pos % (256 << 20) < 8 { 0xA5 } else { 0 };
                }
                self.0 += n as u64;
                Ok(n)
            }
        }
        b.append_data(&mut h, "big", Gen(0, size)).unwrap();
        b.into_inner().unwrap().flush().unwrap();
    }
    // the layout, digests by streaming
    let digest = |p: &Path| {
        let mut f = File::open(p).unwrap();
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
        }
        lazyblock_oci::Digest(ctx.finish().as_ref().try_into().unwrap())
    };
    let d = digest(&tar_path);
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    fs::rename(&tar_path, layout.join("blobs/sha256").join(d.hex())).unwrap();
    let config = common::config_json(&[d]);
    let cd = common::digest(&config);
    fs::write(layout.join("blobs/sha256").join(cd.hex()), &config).unwrap();
    let tar_len = fs::metadata(layout.join("blobs/sha256").join(d.hex()))
        .unwrap()
        .len();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": common::descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": tar_len}],
    }))
    .unwrap();
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    common::add_to_index(
        &layout,
        "t",
        "application/vnd.oci.image.manifest.v1+json",
        &manifest,
    );
    let img = Image::open(&layout, &OpenOptions::tag("t")).unwrap();
    let work = tmp.path().join("work");
    fs::create_dir(&work).unwrap();
    check_image(&img, &work, false);
}

#[test]
#[ignore = "needs the corpus: LAZYBLOCK_CORPUS=<dir> ... -- --ignored corpus_images"]
fn corpus_images_flatten_fsck_and_match_extract() {
    let dir = std::env::var_os("LAZYBLOCK_CORPUS")
        .map(PathBuf::from)
        .expect("set LAZYBLOCK_CORPUS to the output directory of scripts/make-corpus.sh");
    require_root();
    let layout = dir.join("oci");
    assert!(layout.join("index.json").is_file(), "{}", layout.display());
    for tag in [
        "debian-minbase",
        "python3",
        "python3-numpy-pandas",
        "python3-numpy-pandas-flaskapp",
        "nodejs",
    ] {
        let t0 = Instant::now();
        let img = Image::open(&layout, &OpenOptions::tag(tag)).unwrap();
        let work = tempfile::tempdir_in("/var/tmp").unwrap();
        let c = check_image(&img, work.path(), tag == "python3-numpy-pandas-flaskapp");
        println!(
            "{tag:<32} image {:>11} B  flatten+write {:>5.1}s  total (with fsck, extract, compare) {:>5.1}s  sha256 {}",
            c.size,
            c.secs,
            t0.elapsed().as_secs_f64(),
            &c.hash[..16]
        );
    }
}
