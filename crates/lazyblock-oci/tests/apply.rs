//! Layer application semantics.
#![allow(clippy::unwrap_used)]

mod common;

use common::{apply, paths, Layer, MTIME};
use lazyblock_oci::{NodeKind, Timestamp, Tree};
use tar::EntryType;

fn kind<'a>(t: &'a Tree, p: &str) -> &'a NodeKind {
    &t.inode(
        t.lookup(p.as_bytes())
            .unwrap_or_else(|| panic!("{p} missing")),
    )
    .unwrap()
    .kind
}

#[test]
fn basic_tree_and_data_refs() {
    let l0 = Layer::new()
        .dir("etc")
        .file("etc/hosts", b"127.0.0.1 localhost\n")
        .file("etc/empty", b"")
        .symlink("etc/short", "hosts")
        .symlink("etc/long", &"x/".repeat(300))
        .finish();
    let t = apply(std::slice::from_ref(&l0)).unwrap();
    assert_eq!(
        paths(&t),
        ["", "etc", "etc/empty", "etc/hosts", "etc/long", "etc/short"]
    );
    let NodeKind::File { data } = kind(&t, "etc/hosts") else {
        panic!()
    };
    let off = data.offset as usize;
    assert_eq!(&l0[off..off + data.len as usize], b"127.0.0.1 localhost\n");
    assert_eq!(data.layer, 0);
    let NodeKind::Symlink { target } = kind(&t, "etc/long") else {
        panic!()
    };
    assert_eq!(target.len(), 600);
    let NodeKind::File { data } = kind(&t, "etc/empty") else {
        panic!()
    };
    assert_eq!(data.len, 0);
    // canonical numbering: pre-order
    assert_eq!(t.lookup(b"etc"), Some(1));
    assert_eq!(t.inode(0).unwrap().nlink, 3);
    assert_eq!(t.stats().files, 2);
}

#[test]
fn missing_parents_are_created() {
    let t = apply(&[Layer::new().file("a/b/c", b"x").finish()]).unwrap();
    assert_eq!(paths(&t), ["", "a", "a/b", "a/b/c"]);
    assert_eq!(t.inode(t.lookup(b"a").unwrap()).unwrap().meta.mode, 0o755);
}

#[test]
fn whiteouts_and_hidden_data() {
    let l0 = Layer::new()
        .dir("d")
        .file("d/keep", b"keep")
        .file("d/gone", b"gone-data")
        .dir("d/sub")
        .file("d/sub/deep", b"deep-data")
        .finish();
    let l1 = Layer::new()
        .whiteout("d", "gone")
        .whiteout("d", "sub")
        .finish();
    let t = apply(&[l0, l1]).unwrap();
    assert_eq!(paths(&t), ["", "d", "d/keep"]);
    let hidden: Vec<(u32, String, &str, Option<u64>)> = t
        .hidden
        .iter()
        .map(|h| {
            (
                h.layer,
                String::from_utf8_lossy(&h.path).into_owned(),
                h.kind,
                h.data.map(|d| d.len),
            )
        })
        .collect();
    assert_eq!(
        hidden,
        [
            (0, "d/gone".into(), "file", Some(9)),
            (0, "d/sub".into(), "directory", None),
            (0, "d/sub/deep".into(), "file", Some(9)),
        ]
    );
    assert_eq!(t.stats().hidden_bytes, 18);
}

#[test]
fn whiteout_in_same_layer_does_not_hide_that_layer() {
    let l0 = Layer::new().file("a", b"1").whiteout("", "a").finish();
    let t = apply(&[l0]).unwrap();
    assert_eq!(paths(&t), ["", "a"]);
}

#[test]
fn whiteout_of_missing_entry_is_a_no_op() {
    let t = apply(&[
        Layer::new().file("x", b"").finish(),
        Layer::new()
            .whiteout("nodir", "y")
            .whiteout("", "z")
            .finish(),
    ])
    .unwrap();
    assert_eq!(paths(&t), ["", "x"]);
}

#[test]
fn opaque_directory() {
    let l0 = Layer::new()
        .dir("d")
        .file("d/old", b"old")
        .dir("d/sub")
        .file("d/sub/old2", b"old2")
        .file("other", b"o")
        .finish();
    // the new layer's entries may come before or after the marker
    let l1 = Layer::new()
        .dir("d")
        .file("d/new", b"new")
        .dir("d/sub")
        .opaque("d")
        .file("d/sub/new2", b"n")
        .finish();
    let t = apply(&[l0, l1]).unwrap();
    assert_eq!(
        paths(&t),
        ["", "d", "d/new", "d/sub", "d/sub/new2", "other"]
    );
    assert_eq!(t.stats().hidden_files, 2);
}

#[test]
fn root_opaque_hides_everything_below() {
    let l0 = Layer::new().file("a", b"a").dir("b").finish();
    let l1 = Layer::new()
        .file(".wh..wh..opq", b"")
        .file("c", b"c")
        .finish();
    let t = apply(&[l0, l1]).unwrap();
    assert_eq!(paths(&t), ["", "c"]);
}

#[test]
fn replacement_dir_by_file_and_file_by_dir() {
    let l0 = Layer::new()
        .dir("a")
        .file("a/x", b"xx")
        .file("b", b"bbb")
        .finish();
    let l1 = Layer::new()
        .file("a", b"now a file")
        .dir("b")
        .file("b/y", b"y")
        .finish();
    let t = apply(&[l0, l1]).unwrap();
    assert_eq!(paths(&t), ["", "a", "b", "b/y"]);
    assert!(matches!(kind(&t, "a"), NodeKind::File { .. }));
    assert!(t.inode(t.lookup(b"b").unwrap()).unwrap().is_dir());
    let hidden: Vec<&[u8]> = t.hidden.iter().map(|h| h.path.as_slice()).collect();
    assert_eq!(hidden, [&b"a"[..], b"a/x", b"b"]);
}

#[test]
fn directory_merge_keeps_inode_layer_and_children() {
    let l0 = Layer::new().dir_mode("d", 0o700).file("d/x", b"x").finish();
    let l1 = Layer::new()
        .dir_mode("d", 0o1777)
        .file("d/y", b"y")
        .finish();
    let t = apply(&[l0, l1]).unwrap();
    assert_eq!(paths(&t), ["", "d", "d/x", "d/y"]);
    let d = t.inode(t.lookup(b"d").unwrap()).unwrap();
    assert_eq!((d.meta.mode, d.layer, d.inode_layer), (0o1777, 1, 0));
    let x = t.inode(t.lookup(b"d/x").unwrap()).unwrap();
    assert_eq!((x.layer, x.inode_layer), (0, 0));
}

#[test]
fn hard_links_within_and_across_layers() {
    let l0 = Layer::new()
        .file("bin/tool", b"#!tool")
        .hardlink("bin/alias", "bin/tool")
        .finish();
    let l1 = Layer::new()
        .hardlink("usr/alias2", "bin/tool")
        .whiteout("bin", "tool")
        .finish();
    let t = apply(&[l0, l1]).unwrap();
    let a = t.lookup(b"bin/alias").unwrap();
    assert_eq!(Some(a), t.lookup(b"usr/alias2"));
    assert!(t.lookup(b"bin/tool").is_none());
    assert_eq!(t.inode(a).unwrap().nlink, 2);
    // still reachable: not hidden
    assert!(t.hidden.is_empty());
    assert_eq!(t.stats().extra_hard_links, 1);
}

#[test]
fn hard_link_then_replace_one_name() {
    let l0 = Layer::new().file("a", b"data").hardlink("b", "a").finish();
    let l1 = Layer::new().file("a", b"new").finish();
    let t = apply(&[l0, l1]).unwrap();
    let a = t.inode(t.lookup(b"a").unwrap()).unwrap();
    let b = t.inode(t.lookup(b"b").unwrap()).unwrap();
    assert_eq!((a.nlink, b.nlink, a.layer, b.layer), (1, 1, 1, 0));
    assert!(t.hidden.is_empty(), "old data still reachable through b");
}

#[test]
fn devices_fifos_modes_owners() {
    let l0 = Layer::new()
        .device("dev/null", EntryType::Char, 1, 3)
        .device("dev/sda", EntryType::Block, 8, 0)
        .fifo("run/fifo")
        .file_with("bin/su", b"su", |h| {
            h.set_mode(0o4755);
            h.set_uid(0);
        })
        .file_with("bin/wall", b"w", |h| {
            h.set_mode(0o2755);
            h.set_gid(5);
        })
        .file_with("home/u/f", b"f", |h| {
            h.set_uid(1000);
            h.set_gid(1001);
            h.set_mode(0o600);
        })
        .dir_mode("tmp", 0o1777)
        .finish();
    let t = apply(&[l0]).unwrap();
    assert_eq!(
        kind(&t, "dev/null"),
        &NodeKind::CharDevice { major: 1, minor: 3 }
    );
    assert_eq!(
        kind(&t, "dev/sda"),
        &NodeKind::BlockDevice { major: 8, minor: 0 }
    );
    assert_eq!(kind(&t, "run/fifo"), &NodeKind::Fifo);
    let m = |p: &str| {
        t.inode(t.lookup(p.as_bytes()).unwrap())
            .unwrap()
            .meta
            .clone()
    };
    assert_eq!(m("bin/su").mode, 0o4755);
    assert_eq!(m("bin/wall").mode, 0o2755);
    assert_eq!(m("bin/wall").gid, 5);
    assert_eq!(
        (m("home/u/f").uid, m("home/u/f").gid, m("home/u/f").mode),
        (1000, 1001, 0o600)
    );
    assert_eq!(m("tmp").mode, 0o1777);
    assert_eq!(
        m("bin/su").mtime,
        Timestamp {
            secs: MTIME as i64,
            nanos: 0
        }
    );
}

#[test]
fn pax_xattrs_mtime_ids_and_long_names() {
    let long = "n".repeat(255);
    let cap: &[u8] = &[
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let l0 = Layer::new()
        .pax(&[
            ("SCHILY.xattr.security.capability", cap),
            ("SCHILY.xattr.user.comment", b"hello\0world"),
            ("mtime", b"1700000000.123456789"),
            ("uid", b"3000000000"),
            ("gid", b"70000"),
        ])
        .file("bin/ping", b"ping")
        .pax(&[("mtime", b"-1.25")])
        .file(&format!("{long}/{long}"), b"deep")
        .finish();
    let t = apply(&[l0]).unwrap();
    let ping = t.inode(t.lookup(b"bin/ping").unwrap()).unwrap();
    assert_eq!(
        ping.meta
            .xattrs
            .get(&b"security.capability"[..])
            .map(Vec::as_slice),
        Some(cap)
    );
    assert_eq!(
        ping.meta
            .xattrs
            .get(&b"user.comment"[..])
            .map(Vec::as_slice),
        Some(&b"hello\0world"[..])
    );
    assert_eq!(
        ping.meta.mtime,
        Timestamp {
            secs: 1_700_000_000,
            nanos: 123_456_789
        }
    );
    assert_eq!((ping.meta.uid, ping.meta.gid), (3_000_000_000, 70000));
    let deep = t
        .inode(t.lookup(format!("{long}/{long}").as_bytes()).unwrap())
        .unwrap();
    assert_eq!(
        deep.meta.mtime,
        Timestamp {
            secs: -2,
            nanos: 750_000_000
        }
    );
}

#[test]
fn deep_tree() {
    let path = vec!["d"; 1000].join("/") + "/leaf";
    let t = apply(&[Layer::new().file(&path, b"x").finish()]).unwrap();
    assert_eq!(t.inodes.len(), 1002);
    assert!(t.lookup(path.as_bytes()).is_some());
}

#[test]
fn names_are_raw_bytes_in_byte_order() {
    let l0 = Layer::new()
        .raw(b"b", EntryType::Regular, b"", b"")
        .raw(b"\xff\xfe", EntryType::Regular, b"", b"")
        .raw(b"A", EntryType::Regular, b"", b"")
        .raw(b"a", EntryType::Regular, b"", b"")
        .finish();
    let t = apply(&[l0]).unwrap();
    let names: Vec<Vec<u8>> = t.entries(0).unwrap().keys().cloned().collect();
    assert_eq!(
        names,
        [
            b"A".to_vec(),
            b"a".to_vec(),
            b"b".to_vec(),
            b"\xff\xfe".to_vec()
        ]
    );
}

#[test]
fn deterministic_regardless_of_entry_order() {
    let a = Layer::new()
        .dir("x")
        .file("x/1", b"1")
        .file("y", b"2")
        .hardlink("z", "y")
        .finish();
    let b = Layer::new()
        .file("y", b"2")
        .hardlink("z", "y")
        .file("x/1", b"1")
        .dir("x")
        .finish();
    let ta = apply(std::slice::from_ref(&a)).unwrap();
    let tb = apply(&[b]).unwrap();
    assert_eq!(paths(&ta), paths(&tb));
    // identical input gives identical trees
    assert_eq!(ta, apply(&[a]).unwrap());
}

/// A > 4 GiB file: the size comes from the GNU base-256 size field and the data is
/// streamed (never held in memory).
#[test]
fn large_file_over_4gib() {
    use std::io::Read;
    let size: u64 = (4 << 30) + 12345;
    let mut h = tar::Header::new_gnu();
    h.set_path("big").unwrap();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    let pad = (512 - (size % 512)) % 512;
    let reader = std::io::Cursor::new(h.as_bytes().to_vec())
        .chain(std::io::repeat(0).take(size + pad))
        .chain(std::io::Cursor::new(vec![0u8; 1024]));
    let mut a = lazyblock_oci::Applier::new(lazyblock_oci::Limits::default());
    let stats = a.apply_layer(0, reader).unwrap();
    assert_eq!(stats.file_bytes, size);
    let t = a.finish();
    let NodeKind::File { data } = kind(&t, "big") else {
        panic!()
    };
    assert_eq!((data.offset, data.len), (512, size));
}
