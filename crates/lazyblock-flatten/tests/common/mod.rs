//! Helpers shared by the integration tests: a synthetic data source, model builders,
//! e2fsck and mount helpers.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use lazyblock_flatten::{
    Attrs, DataSource, Entry, FileContent, FileId, Hidden, Kind, Segment, Timestamp, Tree,
};

pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Deterministic pseudo-random content: byte `off` of file `id`.
pub fn fill(id: u64, off: u64, buf: &mut [u8]) {
    let word = |w: u64| splitmix(id.wrapping_mul(0x1000_0000_01B3) ^ w).to_le_bytes();
    let mut i = 0usize;
    while i < buf.len() {
        let o = off + i as u64;
        let w = word(o / 8);
        let start = (o % 8) as usize;
        let n = (8 - start).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&w[start..start + n]);
        i += n;
    }
}

/// The synthetic [`DataSource`]; counts the bytes read.
#[derive(Default)]
pub struct Synth {
    pub bytes_read: u64,
}

impl DataSource for Synth {
    fn read_at(&mut self, file: FileId, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        fill(file.0, offset, buf);
        self.bytes_read += buf.len() as u64;
        Ok(())
    }
}

pub fn t(secs: i64, nanos: u32) -> Timestamp {
    Timestamp::new(secs, nanos)
}

pub fn attrs(mode: u16) -> Attrs {
    Attrs::new(mode, 0, 0, t(1_700_000_000, 123_456_789))
}

pub fn dir(layer: u32) -> Entry {
    Entry::new(Kind::Dir, attrs(0o755), layer)
}

pub fn file(id: u64, size: u64, layer: u32) -> Entry {
    Entry::new(
        Kind::File(FileContent::dense(FileId(id), size)),
        attrs(0o644),
        layer,
    )
}

/// One insertion into a [`Tree`]; a list of ops is also the model the tests compare with.
#[derive(Clone, Debug)]
pub enum Op {
    Add(String, Entry),
    Link(String, String),
    Hide(String, Hidden),
}

pub struct Ops {
    pub root: Entry,
    pub ops: Vec<Op>,
}

impl Ops {
    pub fn entry(&self, path: &str) -> Option<&Entry> {
        self.ops.iter().find_map(|o| match o {
            Op::Add(p, e) if p == path => Some(e),
            _ => None,
        })
    }

    /// Builds the tree applying the ops in the order given by `order` (a permutation).
    pub fn build_in(&self, order: &[usize]) -> Tree {
        let mut tr = Tree::new(self.root.attrs.clone(), self.root.layer);
        for &i in order {
            match &self.ops[i] {
                Op::Add(p, e) => tr.add(p, e.clone()).expect("add"),
                Op::Link(p, t) => tr.add_hard_link(p, t).expect("link"),
                Op::Hide(p, h) => tr.add_hidden(p, h.clone()).expect("hidden"),
            }
        }
        tr
    }

    pub fn build(&self) -> Tree {
        self.build_in(&(0..self.ops.len()).collect::<Vec<_>>())
    }
}

struct B(Vec<Op>);

impl B {
    fn add(&mut self, path: &str, e: Entry) {
        self.0.push(Op::Add(path.to_string(), e));
    }
    fn link(&mut self, path: &str, target: &str) {
        self.0.push(Op::Link(path.to_string(), target.to_string()));
    }
}

fn add(b: &mut B, path: &str, e: Entry) {
    b.add(path, e)
}

/// A tree with every node type the writer supports.
pub fn full_tree() -> Ops {
    let mut tr = B(Vec::new());
    add(&mut tr, "bin", dir(0));
    add(&mut tr, "etc", dir(1).with_inode_layer(0));
    add(&mut tr, "usr", dir(0));
    add(&mut tr, "usr/lib", dir(0));
    add(&mut tr, "dev", dir(0));
    let mut tmp = dir(0);
    tmp.attrs.mode = 0o1777;
    add(&mut tr, "tmp", tmp);
    let mut sg = dir(0);
    sg.attrs.mode = 0o2775;
    sg.attrs.gid = 50;
    add(&mut tr, "srv", sg);

    add(&mut tr, "etc/hello", file(1, 13, 0));
    tr.link("etc/hello-link", "etc/hello");
    tr.link("bin/hello2", "etc/hello");
    add(&mut tr, "etc/empty", file(2, 0, 0));
    add(&mut tr, "etc/new-in-layer1", file(3, 70_000, 1));
    let mut tool = file(4, 100_000, 0);
    tool.attrs.mode = 0o4755;
    tool.attrs.uid = 100_000;
    tool.attrs.gid = 200_000;
    tool.attrs = tool
        .attrs
        .with_xattr(
            "security.capability",
            vec![
                1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        )
        .with_xattr("user.small", "hi");
    add(&mut tr, "bin/tool", tool);
    let mut bigx = file(5, 5000, 0);
    bigx.attrs = bigx
        .attrs
        .with_xattr("user.big", vec![0xAB; 1500])
        .with_xattr("user.other", "value")
        .with_xattr("trusted.t", "trusted-value");
    add(&mut tr, "etc/bigxattr", bigx);
    add(
        &mut tr,
        "usr/lib/libbig.so",
        file(6, 3 * 1024 * 1024 + 17, 0),
    );

    // > 4 GiB sparse file with data at the start, past 4 GiB and at the very end.
    let size = 5 * (1u64 << 30) + 12345;
    let segs = vec![
        Segment {
            offset: 0,
            len: 10_000,
        },
        Segment {
            offset: (9 << 29) + 100,
            len: 8192,
        },
        Segment {
            offset: size - 100,
            len: 100,
        },
    ];
    add(
        &mut tr,
        "usr/lib/sparse.img",
        Entry::new(
            Kind::File(FileContent::sparse(FileId(7), size, segs)),
            attrs(0o600),
            0,
        ),
    );
    add(
        &mut tr,
        "usr/lib/hole-only",
        Entry::new(Kind::File(FileContent::hole(1 << 33)), attrs(0o600), 0),
    );
    // 6 extents (depth-1 tree) and 2000 extents (depth-2 tree).
    let segs6 = (0..6)
        .map(|i| Segment {
            offset: i * 65536,
            len: 5000,
        })
        .collect();
    add(
        &mut tr,
        "usr/lib/frag6",
        Entry::new(
            Kind::File(FileContent::sparse(FileId(8), 6 * 65536, segs6)),
            attrs(0o644),
            0,
        ),
    );
    let segs2k = (0..2000)
        .map(|i| Segment {
            offset: i * 16384 + 7,
            len: 100,
        })
        .collect();
    add(
        &mut tr,
        "usr/lib/frag2000",
        Entry::new(
            Kind::File(FileContent::sparse(FileId(9), 2000 * 16384, segs2k)),
            attrs(0o644),
            0,
        ),
    );

    let long_name = "n".repeat(254) + "X";
    add(&mut tr, &format!("usr/{long_name}"), file(10, 4096, 0));

    add(
        &mut tr,
        "bin/sh",
        Entry::new(Kind::Symlink(b"busybox".to_vec()), attrs(0o777), 0),
    );
    let long_target = format!("/{}/target", "long-component".repeat(25));
    add(
        &mut tr,
        "bin/longlink",
        Entry::new(Kind::Symlink(long_target.into_bytes()), attrs(0o777), 0),
    );
    add(
        &mut tr,
        "bin/link59",
        Entry::new(Kind::Symlink(vec![b'a'; 59]), attrs(0o777), 0),
    );
    add(
        &mut tr,
        "bin/link60",
        Entry::new(Kind::Symlink(vec![b'b'; 60]), attrs(0o777), 0),
    );

    add(
        &mut tr,
        "dev/null",
        Entry::new(Kind::CharDevice { major: 1, minor: 3 }, attrs(0o666), 0),
    );
    add(
        &mut tr,
        "dev/sda",
        Entry::new(Kind::BlockDevice { major: 8, minor: 0 }, attrs(0o660), 0),
    );
    add(
        &mut tr,
        "dev/bignum",
        Entry::new(
            Kind::CharDevice {
                major: 300,
                minor: 70_000,
            },
            attrs(0o600),
            0,
        ),
    );
    add(&mut tr, "dev/fifo", Entry::new(Kind::Fifo, attrs(0o644), 0));
    add(
        &mut tr,
        "dev/sock",
        Entry::new(Kind::Socket, attrs(0o755), 0),
    );

    // Times: negative, past 2038, nanoseconds.
    let mut old = file(11, 10, 0);
    old.attrs.mtime = t(-1_000_000, 5);
    add(&mut tr, "etc/old", old);
    let mut future = file(12, 10, 0);
    future.attrs.mtime = t((1 << 32) + 1000, 999_999_999);
    add(&mut tr, "etc/future", future);

    // A directory with thousands of entries.
    add(&mut tr, "many", dir(0));
    for i in 0..3000u64 {
        add(
            &mut tr,
            &format!("many/entry-{i:05}-{}", "x".repeat((i % 40) as usize)),
            file(1000 + i, i % 3 * 100, 0),
        );
    }
    // A deep tree.
    let mut p = String::from("deep");
    add(&mut tr, &p, dir(0));
    for i in 0..80 {
        p.push_str(&format!("/d{i}"));
        add(&mut tr, &p, dir(0));
    }
    add(&mut tr, &format!("{p}/leaf"), file(13, 4097, 0));
    // Hidden data of layer 0 (deleted by layer 1).
    tr.0.push(Op::Hide(
        "etc/deleted".into(),
        Hidden {
            layer: 0,
            inode_layer: None,
            content: Some(FileContent::dense(FileId(14), 200_000)),
        },
    ));
    Ops {
        root: Entry::new(Kind::Dir, attrs(0o755), 1),
        ops: tr.0,
    }
}

pub fn require_root() {
    let out = Command::new("id").arg("-u").output().expect("run id -u");
    let uid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        uid, "0",
        "this test mounts loop devices and must run as root (uid is {uid})"
    );
}

/// `e2fsck -fn`: panics with its output unless it exits 0.
pub fn e2fsck(img: &Path) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(img)
        .output()
        .expect("run e2fsck");
    if !out.status.success() {
        panic!(
            "e2fsck -fn {} exited {:?}\nstdout:\n{}\nstderr:\n{}",
            img.display(),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Unmounts on drop.
pub struct Mount {
    pub dir: PathBuf,
}

impl Mount {
    pub fn new(img: &Path, dir: &Path, ro: bool) -> Mount {
        std::fs::create_dir_all(dir).expect("mkdir mountpoint");
        let opts = if ro { "loop,ro" } else { "loop,rw" };
        let out = Command::new("mount")
            .args(["-t", "ext4", "-o", opts])
            .arg(img)
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -o {opts} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Mount {
            dir: dir.to_path_buf(),
        }
    }

    pub fn unmount(self) {
        drop(self)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// `getfattr -d -m - -e hex`, as a map name -> value.
pub fn getfattr(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let out = Command::new("getfattr")
        .args([
            "--absolute-names",
            "--no-dereference",
            "-d",
            "-m",
            "-",
            "-e",
            "hex",
        ])
        .arg(path)
        .output()
        .expect("run getfattr (install the `attr` package)");
    assert!(
        out.status.success(),
        "getfattr failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut m = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((k, v)) = line.split_once('=') {
            let hex = v.trim_start_matches("0x");
            let bytes = (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
                .collect();
            m.insert(k.as_bytes().to_vec(), bytes);
        }
    }
    m
}
