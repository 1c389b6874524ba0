//! Builders for test inputs: layer tars (including malformed ones), gzip/zstd,
//! OCI layouts and docker archives, all written programmatically.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};

use lazyblock_oci::Digest;
use tar::{EntryType, Header};

pub const MTIME: u64 = 1_700_000_000;

/// A layer tar under construction.
pub struct Layer {
    b: tar::Builder<Vec<u8>>,
}

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_size(size);
    h
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Self {
        Self {
            b: tar::Builder::new(Vec::new()),
        }
    }

    pub fn dir(self, path: &str) -> Self {
        self.dir_mode(path, 0o755)
    }

    pub fn dir_mode(mut self, path: &str, mode: u32) -> Self {
        let mut h = header(EntryType::Directory, mode, 0);
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    pub fn file(self, path: &str, data: &[u8]) -> Self {
        self.file_with(path, data, |_| {})
    }

    pub fn file_with(mut self, path: &str, data: &[u8], f: impl FnOnce(&mut Header)) -> Self {
        let mut h = header(EntryType::Regular, 0o644, data.len() as u64);
        f(&mut h);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = header(EntryType::Symlink, 0o777, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = header(EntryType::Link, 0o644, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn whiteout(self, dir: &str, name: &str) -> Self {
        let p = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&p, b"")
    }

    pub fn opaque(self, dir: &str) -> Self {
        self.file(&format!("{dir}/.wh..wh..opq"), b"")
    }

    pub fn device(mut self, path: &str, kind: EntryType, major: u32, minor: u32) -> Self {
        let mut h = header(kind, 0o600, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    pub fn fifo(mut self, path: &str) -> Self {
        let mut h = header(EntryType::Fifo, 0o644, 0);
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    /// PAX records applying to the next entry.
    pub fn pax(mut self, records: &[(&str, &[u8])]) -> Self {
        self.b
            .append_pax_extensions(records.iter().map(|(k, v)| (*k, *v)))
            .unwrap();
        self
    }

    /// An entry whose name (and link name) bytes go into the header verbatim,
    /// bypassing every check of the tar crate (for malicious inputs).
    pub fn raw(mut self, name: &[u8], kind: EntryType, link: &[u8], data: &[u8]) -> Self {
        let mut h = header(kind, 0o644, data.len() as u64);
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name = [0; 100];
            gnu.name[..name.len()].copy_from_slice(name);
            gnu.linkname = [0; 100];
            gnu.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

pub fn digest(data: &[u8]) -> Digest {
    Digest::of(data)
}

/// A layer as it goes into an image: uncompressed tar, blob and media type.
#[derive(Clone)]
pub struct Blob {
    pub tar: Vec<u8>,
    pub blob: Vec<u8>,
    pub media_type: String,
}

impl Blob {
    pub fn plain(tar: Vec<u8>) -> Self {
        Self {
            blob: tar.clone(),
            tar,
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        }
    }
    pub fn gzip(tar: Vec<u8>) -> Self {
        Self {
            blob: gzip(&tar),
            tar,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        }
    }
    pub fn zstd(tar: Vec<u8>) -> Self {
        Self {
            blob: zstd(&tar),
            tar,
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
        }
    }
}

pub fn config_json(diff_ids: &[Digest]) -> Vec<u8> {
    let ids: Vec<String> = diff_ids.iter().map(|d| d.to_string()).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": "1000:1000",
            "Env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"],
            "Entrypoint": ["/bin/app"],
            "Cmd": ["--serve"],
            "WorkingDir": "/srv",
            "Labels": {"org.example.name": "demo"},
            "ExposedPorts": {"8080/tcp": {}}
        },
        "rootfs": {"type": "layers", "diff_ids": ids}
    }))
    .unwrap()
}

fn write_blob(dir: &Path, data: &[u8]) -> Digest {
    let d = digest(data);
    let p = dir.join("blobs/sha256");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join(d.hex()), data).unwrap();
    d
}

pub fn blob_path(dir: &Path, d: &Digest) -> PathBuf {
    dir.join("blobs/sha256").join(d.hex())
}

pub fn descriptor(media_type: &str, data: &[u8]) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": digest(data).to_string(), "size": data.len()})
}

/// Write an OCI layout with one image tagged `tag`; returns the manifest bytes.
pub fn write_layout(dir: &Path, tag: &str, layers: &[Blob]) -> Vec<u8> {
    let diff_ids: Vec<Digest> = layers.iter().map(|l| digest(&l.tar)).collect();
    let config = config_json(&diff_ids);
    write_layout_with(dir, tag, layers, &config)
}

pub fn write_layout_with(dir: &Path, tag: &str, layers: &[Blob], config: &[u8]) -> Vec<u8> {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    write_blob(dir, config);
    let mut descs = Vec::new();
    for l in layers {
        write_blob(dir, &l.blob);
        descs.push(descriptor(&l.media_type, &l.blob));
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": descs,
    }))
    .unwrap();
    write_blob(dir, &manifest);
    add_to_index(
        dir,
        tag,
        "application/vnd.oci.image.manifest.v1+json",
        &manifest,
    );
    manifest
}

/// Append a descriptor of `data` (already or newly written as a blob) to index.json.
pub fn add_to_index(dir: &Path, tag: &str, media_type: &str, data: &[u8]) {
    write_blob(dir, data);
    let path = dir.join("index.json");
    let mut index: serde_json::Value = match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).unwrap(),
        Err(_) => {
            serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []})
        }
    };
    let mut d = descriptor(media_type, data);
    d["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
    index["manifests"].as_array_mut().unwrap().push(d);
    std::fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// Write a docker-archive tarball the way skopeo does: `<diffid>.tar` layers,
/// `<configdigest>.json`, `manifest.json` (layers plain; compressed ones also work).
pub fn write_docker_archive(path: &Path, repo_tag: &str, layers: &[Blob]) {
    let diff_ids: Vec<Digest> = layers.iter().map(|l| digest(&l.tar)).collect();
    let config = config_json(&diff_ids);
    let config_name = format!("{}.json", digest(&config).hex());
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut names = Vec::new();
    for (l, d) in layers.iter().zip(&diff_ids) {
        let name = format!("{}.tar", d.hex());
        let mut h = header(EntryType::Regular, 0o444, l.blob.len() as u64);
        b.append_data(&mut h, &name, &l.blob[..]).unwrap();
        // and a legacy `<id>/layer.tar` symlink, as skopeo writes
        let mut h = header(EntryType::Symlink, 0o777, 0);
        b.append_link(
            &mut h,
            format!("{}/layer.tar", &d.hex()[..12]),
            format!("../{name}"),
        )
        .unwrap();
        names.push(name);
    }
    let mut h = header(EntryType::Regular, 0o444, config.len() as u64);
    b.append_data(&mut h, &config_name, &config[..]).unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name, "RepoTags": [repo_tag], "Layers": names
    }]))
    .unwrap();
    let mut h = header(EntryType::Regular, 0o444, manifest.len() as u64);
    b.append_data(&mut h, "manifest.json", &manifest[..])
        .unwrap();
    b.finish().unwrap();
}

/// Apply plain layer tars with default limits.
pub fn apply(layers: &[Vec<u8>]) -> lazyblock_oci::Result<lazyblock_oci::Tree> {
    let mut a = lazyblock_oci::Applier::new(lazyblock_oci::Limits::default());
    for (i, l) in layers.iter().enumerate() {
        a.apply_layer(i as u32, &l[..])?;
    }
    Ok(a.finish())
}

/// Paths of the tree, in canonical order (root is "").
pub fn paths(t: &lazyblock_oci::Tree) -> Vec<String> {
    let mut v = Vec::new();
    t.walk(|p, _| v.push(String::from_utf8_lossy(p).into_owned()));
    v
}
