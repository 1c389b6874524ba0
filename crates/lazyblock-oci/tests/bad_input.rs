//! Every kind of bad input gives one clear error of a stable kind, never a panic.
#![allow(clippy::unwrap_used)]

mod common;

use common::{apply, blob_path, write_layout, write_layout_with, Blob, Layer};
use lazyblock_oci::{Applier, ErrorKind, Image, Limits, OpenOptions};
use tar::EntryType;

fn apply_err(layers: &[Vec<u8>]) -> lazyblock_oci::Error {
    match apply(layers) {
        Ok(t) => panic!("expected an error, got a tree with {:?}", common::paths(&t)),
        Err(e) => e,
    }
}

fn assert_kind(layers: &[Vec<u8>], kind: ErrorKind, needle: &str) {
    let e = apply_err(layers);
    assert_eq!(e.kind(), kind, "{e}");
    assert!(
        e.to_string().contains(needle),
        "{e:?} should mention {needle:?}"
    );
}

#[test]
fn dotdot_path() {
    let l = Layer::new()
        .raw(b"a/../../etc/passwd", EntryType::Regular, b"", b"x")
        .finish();
    assert_kind(&[l], ErrorKind::InvalidInput, "traversal");
}

#[test]
fn absolute_path() {
    let l = Layer::new()
        .raw(b"/etc/passwd", EntryType::Regular, b"", b"x")
        .finish();
    assert_kind(&[l], ErrorKind::InvalidInput, "absolute");
}

#[test]
fn path_through_symlink_same_layer() {
    let l = Layer::new()
        .symlink("etc", "/tmp")
        .file("etc/evil", b"x")
        .finish();
    assert_kind(&[l], ErrorKind::InvalidInput, "symlink");
}

#[test]
fn path_through_symlink_of_lower_layer() {
    let l0 = Layer::new().symlink("lib", "../../../outside").finish();
    let l1 = Layer::new().file("lib/evil.so", b"x").finish();
    assert_kind(&[l0, l1], ErrorKind::InvalidInput, "symlink");
}

#[test]
fn whiteout_through_symlink() {
    let l0 = Layer::new().symlink("s", "/").finish();
    let l1 = Layer::new().whiteout("s", "etc").finish();
    assert_kind(&[l0, l1], ErrorKind::InvalidInput, "symlink");
}

#[test]
fn hard_link_through_symlink() {
    let l = Layer::new()
        .symlink("s", "/etc")
        .hardlink("x", "s/passwd")
        .finish();
    assert_kind(&[l], ErrorKind::InvalidInput, "symlink");
}

#[test]
fn hard_link_to_missing_target() {
    let l = Layer::new().hardlink("x", "nowhere").finish();
    assert_kind(&[l], ErrorKind::InvalidInput, "missing");
}

#[test]
fn hard_link_outside() {
    let l = Layer::new()
        .raw(b"x", EntryType::Link, b"../etc/passwd", b"")
        .finish();
    assert_kind(&[l], ErrorKind::InvalidInput, "traversal");
    let l = Layer::new()
        .raw(b"x", EntryType::Link, b"/etc/passwd", b"")
        .finish();
    assert_kind(&[l], ErrorKind::InvalidInput, "absolute");
}

#[test]
fn hard_link_to_directory() {
    let l = Layer::new().dir("d").hardlink("x", "d").finish();
    assert_kind(&[l], ErrorKind::InvalidInput, "directory");
}

#[test]
fn whiteout_of_root() {
    for name in [&b".wh."[..], b".wh..", b"./.wh..", b"a/.wh.."] {
        let l = Layer::new()
            .raw(name, EntryType::Regular, b"", b"")
            .finish();
        assert_kind(&[l], ErrorKind::InvalidInput, "whiteout");
    }
}

#[test]
fn duplicate_entries_in_one_layer() {
    let l = Layer::new().file("a", b"1").file("a", b"2").finish();
    assert_kind(&[l], ErrorKind::InvalidInput, "duplicate");
    let l = Layer::new().dir("d").dir("d").finish();
    assert_kind(&[l], ErrorKind::InvalidInput, "duplicate");
    // a file and then a directory of the same name (implicitly, as a parent)
    let l = Layer::new().file("d", b"1").file("d/x", b"2").finish();
    assert_eq!(apply_err(&[l]).kind(), ErrorKind::InvalidInput);
    // a parent created implicitly, then replaced by a file
    let l = Layer::new().file("d/x", b"1").file("d", b"2").finish();
    assert_kind(&[l], ErrorKind::InvalidInput, "conflicts");
    // the same across layers is fine
    let l0 = Layer::new().file("a", b"1").finish();
    let l1 = Layer::new().file("a", b"2").finish();
    assert!(apply(&[l0, l1]).is_ok());
}

#[test]
fn nul_in_name() {
    let l = Layer::new()
        .pax(&[("path", b"a\0b")])
        .file("placeholder", b"")
        .finish();
    assert_kind(&[l], ErrorKind::InvalidInput, "NUL");
}

#[test]
fn name_over_255_bytes() {
    let l = Layer::new()
        .file(&format!("d/{}", "x".repeat(256)), b"")
        .finish();
    assert_kind(&[l], ErrorKind::InvalidInput, "256 bytes");
    let l = Layer::new().symlink(&"y".repeat(300), "t").finish();
    assert_kind(&[l], ErrorKind::InvalidInput, "300 bytes");
}

#[test]
fn symlink_target_too_long_or_empty() {
    let l = Layer::new().symlink("s", &"t".repeat(4096)).finish();
    assert_kind(&[l], ErrorKind::InvalidInput, "4096");
    let l = Layer::new()
        .raw(b"s", EntryType::Symlink, b"", b"")
        .finish();
    assert_kind(&[l], ErrorKind::InvalidInput, "empty target");
}

#[test]
fn truncated_and_garbage_tar() {
    let l = Layer::new().file("a", &[7u8; 5000]).finish();
    let cut = l[..2000].to_vec();
    assert_eq!(apply_err(&[cut]).kind(), ErrorKind::Corrupt);
    let mut bad = l.clone();
    bad[10] ^= 0xff; // header checksum no longer matches
    assert_kind(&[bad], ErrorKind::Corrupt, "checksum");
    // a lone PAX header with no entry after it
    let l = Layer::new().pax(&[("mtime", b"1")]).finish();
    assert_eq!(apply_err(&[l]).kind(), ErrorKind::Corrupt);
}

#[test]
fn sparse_and_unknown_entry_types_are_unsupported() {
    let l = Layer::new()
        .raw(b"x", EntryType::new(b'Z'), b"", b"")
        .finish();
    assert_eq!(apply_err(&[l]).kind(), ErrorKind::Unsupported);
}

#[test]
fn layer_over_size_limit() {
    let l = Layer::new().file("big", &vec![1u8; 100_000]).finish();
    let mut a = Applier::new(Limits {
        max_layer_bytes: 50_000,
        ..Limits::default()
    });
    let e = a.apply_layer(0, &l[..]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
}

#[test]
fn too_many_entries() {
    let mut l = Layer::new();
    for i in 0..20 {
        l = l.file(&format!("f{i}"), b"");
    }
    let mut a = Applier::new(Limits {
        max_entries: 10,
        ..Limits::default()
    });
    assert_eq!(
        a.apply_layer(0, &l.finish()[..]).unwrap_err().kind(),
        ErrorKind::TooLarge
    );
}

// ---- image level ----------------------------------------------------------------------

fn layer_tar() -> Vec<u8> {
    Layer::new()
        .dir("etc")
        .file("etc/os-release", &[b'x'; 3000])
        .finish()
}

fn open_err(dir: &std::path::Path, tag: &str) -> lazyblock_oci::Error {
    match Image::open(dir, &OpenOptions::tag(tag)).and_then(|i| i.flatten()) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

#[test]
fn truncated_and_corrupt_gzip() {
    let tmp = tempfile::tempdir().unwrap();
    let b = Blob::gzip(layer_tar());
    let mut cut = b.clone();
    cut.blob.truncate(b.blob.len() - 20);
    let mut flipped = b.clone();
    let mid = flipped.blob.len() / 2;
    flipped.blob[mid] ^= 0x55;
    for (i, bad) in [cut, flipped].into_iter().enumerate() {
        let dir = tmp.path().join(format!("l{i}"));
        let m = write_layout(&dir, "t", std::slice::from_ref(&b));
        // keep the descriptor, swap the blob content (so the digest check must catch it
        // or decompression fails first: either way Corrupt)
        let good: serde_json::Value = serde_json::from_slice(&m).unwrap();
        let d: lazyblock_oci::Digest = good["layers"][0]["digest"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        std::fs::write(blob_path(&dir, &d), &bad.blob).unwrap();
        let e = open_err(&dir, "t");
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    }
}

#[test]
fn truncated_and_corrupt_zstd_with_matching_descriptor() {
    // descriptors describe the broken blob, so only decompression can notice
    let tmp = tempfile::tempdir().unwrap();
    let b = Blob::zstd(layer_tar());
    let mut cut = b.clone();
    cut.blob.truncate(b.blob.len() - 7);
    let mut flipped = b.clone();
    let n = flipped.blob.len();
    flipped.blob[n - 10] ^= 0xff;
    let mut gz_cut = Blob::gzip(layer_tar());
    let n = gz_cut.blob.len();
    gz_cut.blob.truncate(n - 4);
    for (i, bad) in [cut, flipped, gz_cut].into_iter().enumerate() {
        let dir = tmp.path().join(format!("z{i}"));
        write_layout(&dir, "t", &[bad]);
        let e = open_err(&dir, "t");
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    }
}

#[test]
fn blob_digest_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("l");
    let b = Blob::plain(layer_tar());
    let m = write_layout(&dir, "t", std::slice::from_ref(&b));
    let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
    let d: lazyblock_oci::Digest = v["layers"][0]["digest"].as_str().unwrap().parse().unwrap();
    let mut changed = b.blob.clone();
    let n = changed.len();
    changed[n - 2000] ^= 1; // inside file data: the tar still parses
    std::fs::write(blob_path(&dir, &d), &changed).unwrap();
    let e = open_err(&dir, "t");
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(e.to_string().contains("digest"), "{e}");
}

#[test]
fn blob_size_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("l");
    let b = Blob::gzip(layer_tar());
    let m = write_layout(&dir, "t", std::slice::from_ref(&b));
    let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
    let d: lazyblock_oci::Digest = v["layers"][0]["digest"].as_str().unwrap().parse().unwrap();
    let mut longer = b.blob.clone();
    longer.extend_from_slice(b"junk");
    std::fs::write(blob_path(&dir, &d), &longer).unwrap();
    let e = Image::open(&dir, &OpenOptions::tag("t")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
}

#[test]
fn diff_id_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("l");
    let b = Blob::gzip(layer_tar());
    let wrong = lazyblock_oci::Digest::of(b"not the tar");
    write_layout_with(&dir, "t", &[b], &common::config_json(&[wrong]));
    let e = open_err(&dir, "t");
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(e.to_string().contains("diff_id"), "{e}");
}

#[test]
fn config_and_manifest_digest_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("l");
    let m = write_layout(&dir, "t", &[Blob::plain(layer_tar())]);
    let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
    let cd: lazyblock_oci::Digest = v["config"]["digest"].as_str().unwrap().parse().unwrap();
    let p = blob_path(&dir, &cd);
    let mut c = std::fs::read(&p).unwrap();
    c[5] ^= 0x20; // same size, different bytes
    std::fs::write(&p, &c).unwrap();
    let e = Image::open(&dir, &OpenOptions::tag("t")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");

    let dir = tmp.path().join("m");
    let m = write_layout(&dir, "t", &[Blob::plain(layer_tar())]);
    let md = lazyblock_oci::Digest::of(&m);
    let mut m2 = m.clone();
    m2[3] = b' ';
    std::fs::write(blob_path(&dir, &md), &m2).unwrap();
    let e = Image::open(&dir, &OpenOptions::tag("t")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
}

#[test]
fn expanded_size_over_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("l");
    // compresses to almost nothing, expands to 10 MB
    let tar = Layer::new().file("zeros", &vec![0u8; 10 << 20]).finish();
    write_layout(&dir, "t", &[Blob::gzip(tar)]);
    let opts = OpenOptions {
        tag: Some("t".into()),
        limits: Limits {
            max_layer_bytes: 1 << 20,
            ..Limits::default()
        },
        ..OpenOptions::default()
    };
    let e = Image::open(&dir, &opts).unwrap().flatten().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
}

#[test]
fn no_matching_tag() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("l");
    write_layout(&dir, "v1", &[Blob::plain(layer_tar())]);
    let e = Image::open(&dir, &OpenOptions::tag("v2")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(
        e.to_string().contains("v1"),
        "lists the tags there are: {e}"
    );
}

#[test]
fn unsupported_media_types() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("l");
    let mut b = Blob::plain(layer_tar());
    b.media_type = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted".into();
    write_layout(&dir, "t", &[b]);
    let e = Image::open(&dir, &OpenOptions::tag("t")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");

    // an artifact manifest whose config is not an image config
    let dir = tmp.path().join("a");
    let cfg = b"{}".to_vec();
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(blob_path(&dir, &lazyblock_oci::Digest::of(&cfg)), &cfg).unwrap();
    let m = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": common::descriptor("application/vnd.cncf.helm.config.v1+json", &cfg),
        "layers": []
    }))
    .unwrap();
    common::add_to_index(&dir, "t", "application/vnd.oci.image.manifest.v1+json", &m);
    let e = Image::open(&dir, &OpenOptions::tag("t")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");

    // digest algorithm
    let dir = tmp.path().join("s");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha512:{}","size":1}}]}}"#,
            "ab".repeat(64)
        ),
    )
    .unwrap();
    let e = Image::open(&dir, &OpenOptions::default()).unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::Corrupt,
        "bad JSON wraps the unsupported digest: {e}"
    );
}

#[test]
fn digest_that_could_escape_the_blob_dir_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("l");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        r#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:../../../../etc/passwd","size":1}]}"#,
    )
    .unwrap();
    let e = Image::open(&dir, &OpenOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
}

#[test]
fn missing_layout_and_blob() {
    let tmp = tempfile::tempdir().unwrap();
    let e = Image::open(tmp.path(), &OpenOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let dir = tmp.path().join("l");
    let m = write_layout(&dir, "t", &[Blob::plain(layer_tar())]);
    let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
    let d: lazyblock_oci::Digest = v["layers"][0]["digest"].as_str().unwrap().parse().unwrap();
    std::fs::remove_file(blob_path(&dir, &d)).unwrap();
    let e = Image::open(&dir, &OpenOptions::tag("t")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
}
