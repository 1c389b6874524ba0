//! Reading OCI layouts and docker archives.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;

use common::{add_to_index, paths, write_docker_archive, write_layout, Blob, Layer};
use lazyblock_oci::{Compression, Image, ImageFormat, NodeKind, OpenOptions};

fn layers() -> Vec<Vec<u8>> {
    vec![
        Layer::new()
            .dir("etc")
            .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
            .dir("bin")
            .file("bin/sh", &[0x7f; 10_000])
            .hardlink("bin/ash", "bin/sh")
            .finish(),
        Layer::new()
            .dir("etc")
            .file("etc/passwd", b"root:x:0:0::/root:/bin/bash\n")
            .whiteout("bin", "ash")
            .finish(),
        Layer::new().dir("srv").file("srv/app", b"app").finish(),
    ]
}

fn blobs() -> Vec<Blob> {
    let l = layers();
    vec![
        Blob::gzip(l[0].clone()),
        Blob::zstd(l[1].clone()),
        Blob::plain(l[2].clone()),
    ]
}

#[test]
fn oci_layout_gzip_zstd_plain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("oci");
    let manifest = write_layout(&dir, "latest", &blobs());
    let img = Image::open(&dir, &OpenOptions::tag("latest")).unwrap();
    assert_eq!(img.format, ImageFormat::OciLayout);
    assert_eq!(
        img.manifest_digest,
        Some(lazyblock_oci::Digest::of(&manifest))
    );
    let comps: Vec<Compression> = img.layers.iter().map(|l| l.compression).collect();
    assert_eq!(
        comps,
        [Compression::Gzip, Compression::Zstd, Compression::None]
    );
    let c = &img.config;
    assert_eq!(c.entrypoint.as_deref(), Some(&["/bin/app".to_string()][..]));
    assert_eq!(c.cmd.as_deref(), Some(&["--serve".to_string()][..]));
    assert_eq!(c.working_dir.as_deref(), Some("/srv"));
    assert_eq!(c.user.as_deref(), Some("1000:1000"));
    assert_eq!(c.env, ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"]);
    assert_eq!(
        c.labels.get("org.example.name").map(String::as_str),
        Some("demo")
    );
    assert_eq!(c.exposed_ports, ["8080/tcp"]);
    assert_eq!(c.diff_ids.len(), 3);

    // open_layer yields exactly the uncompressed tar
    for (i, tar) in layers().iter().enumerate() {
        let mut got = Vec::new();
        img.open_layer(i).unwrap().read_to_end(&mut got).unwrap();
        assert_eq!(&got, tar);
    }

    let flat = img.flatten().unwrap();
    let t = &flat.tree;
    assert_eq!(
        paths(t),
        ["", "bin", "bin/sh", "etc", "etc/passwd", "srv", "srv/app"]
    );
    let passwd = t.inode(t.lookup(b"etc/passwd").unwrap()).unwrap();
    let NodeKind::File { data } = &passwd.kind else {
        panic!()
    };
    assert_eq!(data.layer, 1);
    let tar = &layers()[1];
    assert_eq!(
        &tar[data.offset as usize..][..data.len as usize],
        b"root:x:0:0::/root:/bin/bash\n"
    );
    // the old passwd is hidden; bin/sh lost a link but is still reachable
    assert_eq!(t.hidden.len(), 1);
    assert_eq!(t.hidden[0].path, b"etc/passwd");
    assert_eq!(t.inode(t.lookup(b"bin/sh").unwrap()).unwrap().nlink, 1);
    assert_eq!(flat.layers.len(), 3);
    assert_eq!(flat.layers[0].hard_links, 1);
    assert_eq!(flat.layers[1].whiteouts, 1);
    for (s, d) in flat.layers.iter().zip(&img.config.diff_ids) {
        assert_eq!(&s.diff_id, d);
    }
}

#[test]
fn docker_archive_gives_the_same_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("oci");
    write_layout(&dir, "latest", &blobs());
    let oci = Image::open(&dir, &OpenOptions::tag("latest"))
        .unwrap()
        .flatten()
        .unwrap();

    let archive = tmp.path().join("image.tar");
    write_docker_archive(&archive, "docker.io/library/demo:1.0", &blobs());
    for tag in [None, Some("docker.io/library/demo:1.0"), Some("demo:1.0")] {
        let opts = OpenOptions {
            tag: tag.map(String::from),
            ..OpenOptions::default()
        };
        let img = Image::open(&archive, &opts).unwrap();
        assert_eq!(img.format, ImageFormat::DockerArchive);
        assert_eq!(
            img.config.cmd.as_deref(),
            Some(&["--serve".to_string()][..])
        );
        let flat = img.flatten().unwrap();
        assert_eq!(flat.tree, oci.tree);
    }
    let e = Image::open(&archive, &OpenOptions::tag("other:1")).unwrap_err();
    assert_eq!(e.kind(), lazyblock_oci::ErrorKind::InvalidInput);
}

#[test]
fn docker_archive_layer_digest_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("image.tar");
    let mut b = blobs();
    // diff_ids are computed from `tar`, so a different blob must be caught
    b[2].blob = b[0].tar.clone();
    write_docker_archive(&archive, "x:1", &b);
    let e = Image::open(&archive, &OpenOptions::default())
        .unwrap()
        .flatten()
        .unwrap_err();
    assert_eq!(e.kind(), lazyblock_oci::ErrorKind::Corrupt, "{e}");
}

#[test]
fn compressed_docker_archive_is_unsupported() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("image.tar");
    write_docker_archive(&archive, "x:1", &blobs());
    let gz = tmp.path().join("image.tar.gz");
    std::fs::write(&gz, common::gzip(&std::fs::read(&archive).unwrap())).unwrap();
    let e = Image::open(&gz, &OpenOptions::default()).unwrap_err();
    assert_eq!(e.kind(), lazyblock_oci::ErrorKind::Unsupported);
}

#[test]
fn nested_index_with_platforms() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("oci");
    // two images, then move their manifests into a nested index
    let m_amd = write_layout(&dir, "amd", &blobs()[..1]);
    let m_arm = write_layout(&dir, "arm", &blobs()[2..]);
    std::fs::remove_file(dir.join("index.json")).unwrap();
    let mt = "application/vnd.oci.image.manifest.v1+json";
    let mut d_amd = common::descriptor(mt, &m_amd);
    d_amd["platform"] = serde_json::json!({"os": "linux", "architecture": "amd64"});
    let mut d_arm = common::descriptor(mt, &m_arm);
    d_arm["platform"] = serde_json::json!({"os": "linux", "architecture": "arm64"});
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [d_amd, d_arm],
    }))
    .unwrap();
    add_to_index(
        &dir,
        "multi",
        "application/vnd.oci.image.index.v1+json",
        &nested,
    );
    for (arch, want) in [("amd64", "etc"), ("arm64", "srv")] {
        let opts = OpenOptions {
            tag: Some("multi".into()),
            platform: Some(("linux".into(), arch.into())),
            ..OpenOptions::default()
        };
        let img = Image::open(&dir, &opts).unwrap();
        let t = img.flatten().unwrap().tree;
        assert!(t.lookup(want.as_bytes()).is_some(), "{arch}");
    }
    let opts = OpenOptions {
        tag: Some("multi".into()),
        platform: Some(("linux".into(), "s390x".into())),
        ..OpenOptions::default()
    };
    assert_eq!(
        Image::open(&dir, &opts).unwrap_err().kind(),
        lazyblock_oci::ErrorKind::InvalidInput
    );
}

#[test]
fn single_image_needs_no_tag_but_several_do() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("oci");
    write_layout(&dir, "a", &blobs()[..1]);
    assert!(Image::open(&dir, &OpenOptions::default()).is_ok());
    write_layout(&dir, "b", &blobs()[..2]);
    assert_eq!(
        Image::open(&dir, &OpenOptions::default())
            .unwrap_err()
            .kind(),
        lazyblock_oci::ErrorKind::InvalidInput
    );
    assert_eq!(
        Image::open(&dir, &OpenOptions::tag("b"))
            .unwrap()
            .layers
            .len(),
        2
    );
}

#[test]
fn flatten_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("oci");
    write_layout(&dir, "t", &blobs());
    let img = Image::open(&dir, &OpenOptions::tag("t")).unwrap();
    assert_eq!(img.flatten().unwrap().tree, img.flatten().unwrap().tree);
}
