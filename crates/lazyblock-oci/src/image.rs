//! Reading images: OCI image layouts and docker-archive tarballs, with every blob
//! verified against its digest and size before its content is used.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::apply::{Applier, LayerStats, Limits};
use crate::digest::{Digest, Expect, VerifyingReader};
use crate::error::{corrupt, invalid, too_large, unsupported, Error, Result};
use crate::spec::{
    AnyManifest, ConfigJson, Descriptor, DockerArchiveEntry, IndexJson, ManifestJson,
    OciLayoutFile, CONTAINERD_NAME, DOCKER_CONFIG, DOCKER_LIST, DOCKER_MANIFEST, OCI_CONFIG,
    OCI_INDEX, OCI_MANIFEST, REF_NAME,
};
use crate::tree::Tree;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (one or more members).
    Gzip,
    /// zstd (one or more frames).
    Zstd,
}

impl Compression {
    /// From an OCI or Docker layer media type; `Unsupported` for anything else
    /// (encrypted layers, artifacts, ...).
    pub fn from_media_type(mt: &str) -> Result<Self> {
        let base = mt
            .strip_prefix("application/vnd.oci.image.layer.nondistributable.v1.")
            .or_else(|| mt.strip_prefix("application/vnd.oci.image.layer.v1."));
        match base {
            Some("tar") => return Ok(Self::None),
            Some("tar+gzip") => return Ok(Self::Gzip),
            Some("tar+zstd") => return Ok(Self::Zstd),
            _ => {}
        }
        match mt {
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Self::Gzip),
            "application/vnd.docker.image.rootfs.diff.tar" => Ok(Self::None),
            "application/vnd.docker.image.rootfs.diff.tar.zstd" => Ok(Self::Zstd),
            _ => Err(unsupported(format!("layer media type {mt:?}"))),
        }
    }

    /// Recognize gzip and zstd by their magic bytes; anything else is taken as plain.
    pub fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else {
            Self::None
        }
    }
}

/// Which container format an image was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// An OCI image layout directory.
    OciLayout,
    /// A `docker save` / `skopeo copy docker-archive:` tarball.
    DockerArchive,
}

/// Where the bytes of a blob are.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BlobLocation {
    /// A whole file (`blobs/sha256/<hex>` of a layout).
    File(PathBuf),
    /// A byte range of an (uncompressed) archive file.
    InArchive {
        archive: PathBuf,
        offset: u64,
        len: u64,
    },
}

impl BlobLocation {
    fn open(&self) -> Result<Box<dyn Read + Send>> {
        match self {
            Self::File(p) => {
                let f = File::open(p).map_err(|e| Error::io(format!("open {}", p.display()), e))?;
                Ok(Box::new(f))
            }
            Self::InArchive {
                archive,
                offset,
                len,
            } => {
                let mut f = File::open(archive)
                    .map_err(|e| Error::io(format!("open {}", archive.display()), e))?;
                f.seek(SeekFrom::Start(*offset))
                    .map_err(|e| Error::io(format!("seek {}", archive.display()), e))?;
                Ok(Box::new(f.take(*len)))
            }
        }
    }

    fn len(&self) -> Result<u64> {
        match self {
            Self::File(p) => std::fs::metadata(p)
                .map(|m| m.len())
                .map_err(|e| missing_or_io(p, e)),
            Self::InArchive { len, .. } => Ok(*len),
        }
    }
}

fn missing_or_io(p: &Path, e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::NotFound {
        invalid(format!("missing blob {}", p.display()))
    } else {
        Error::io(format!("stat {}", p.display()), e)
    }
}

/// One layer of an image, bottom first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Position in the image, 0 = bottom; the `layer` of [`crate::DataRef`].
    pub index: u32,
    /// The descriptor's media type (docker-archive: a synthesized one from the sniffed
    /// compression).
    pub media_type: String,
    /// How the blob is compressed.
    pub compression: Compression,
    /// Digest of the (compressed) blob, when the format states one (OCI: always;
    /// docker-archive: only for `blobs/sha256/<hex>` names).
    pub digest: Option<Digest>,
    /// Size of the (compressed) blob in bytes.
    pub size: u64,
    /// Digest of the uncompressed tar, from the config's `rootfs.diff_ids`.
    pub diff_id: Digest,
    location: BlobLocation,
}

/// The runtime parts of the image config (`config` object) plus platform and
/// layer diff_ids. Absent fields are `None` / empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `architecture`, e.g. `amd64`.
    pub architecture: String,
    /// `os`, e.g. `linux`.
    pub os: String,
    /// `User` (name, uid, `uid:gid`, ...), verbatim.
    pub user: Option<String>,
    /// `Env`, `NAME=value` strings in order.
    pub env: Vec<String>,
    /// `Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
    /// `StopSignal`.
    pub stop_signal: Option<String>,
    /// Keys of `ExposedPorts` (`80/tcp`, ...).
    pub exposed_ports: Vec<String>,
    /// Keys of `Volumes`.
    pub volumes: Vec<String>,
    /// `rootfs.diff_ids`, one per layer.
    pub diff_ids: Vec<Digest>,
}

/// Options for opening an image.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Select the image with this tag: an OCI layout's
    /// `org.opencontainers.image.ref.name` (or `io.containerd.image.name`); a docker
    /// archive's `RepoTags` entry (whole, or the part after a `/`). `None` works only
    /// when there is exactly one image.
    pub tag: Option<String>,
    /// `(os, architecture)` to choose in multi-platform indexes; default linux and the
    /// host's architecture in Go naming (`amd64`, `arm64`).
    pub platform: Option<(String, String)>,
    /// Resource limits.
    pub limits: Limits,
}

impl OpenOptions {
    /// Options selecting `tag`, default limits.
    pub fn tag(tag: impl Into<String>) -> Self {
        Self {
            tag: Some(tag.into()),
            ..Self::default()
        }
    }
}

/// A parsed and verified image: config and layer list. Layer blobs are verified
/// when they are read (see [`Image::open_layer`]).
#[derive(Debug, Clone)]
pub struct Image {
    /// Which format it came from.
    pub format: ImageFormat,
    /// Digest of the manifest (OCI layout only).
    pub manifest_digest: Option<Digest>,
    /// Digest of the config blob (the image id).
    pub config_digest: Digest,
    /// The config.
    pub config: ImageConfig,
    /// Layers, bottom first.
    pub layers: Vec<Layer>,
    limits: Limits,
}

/// The result of [`Image::flatten`].
#[derive(Debug, Clone)]
pub struct Flattened {
    /// The canonical tree.
    pub tree: Tree,
    /// What each layer held, bottom first.
    pub layers: Vec<LayerStats>,
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Read a small JSON file that has no descriptor (roots of trust: `index.json`,
/// `oci-layout`, docker `manifest.json`).
fn read_small(mut r: impl Read, what: &str, limit: u64) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    (&mut r)
        .take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::from_content_io(what, e))?;
    if buf.len() as u64 > limit {
        return Err(too_large(format!("{what} larger than {limit} bytes")));
    }
    Ok(buf)
}

fn parse_json<T: serde::de::DeserializeOwned>(data: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(data).map_err(|e| corrupt(format!("{what}: bad JSON: {e}")))
}

/// A decoder whose inner (compressed, verifying) reader is read to its end once the
/// decoder itself reports the end, so that trailing bytes are hashed and checked too.
/// A verified, buffered compressed layer stream.
type Verified = BufReader<VerifyingReader<Box<dyn Read + Send>>>;

enum Decoded {
    Plain(BufReader<VerifyingReader<Box<dyn Read + Send>>>),
    /// Boxed: the inflate state is large.
    Gzip(Box<flate2::bufread::MultiGzDecoder<Verified>>),
    Zstd(zstd::Decoder<'static, BufReader<VerifyingReader<Box<dyn Read + Send>>>>),
}

struct DrainingDecoder {
    dec: Decoded,
    drained: bool,
}

impl Read for DrainingDecoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &mut self.dec {
            Decoded::Plain(r) => r.read(buf)?,
            Decoded::Gzip(r) => r.read(buf)?,
            Decoded::Zstd(r) => r.read(buf)?,
        };
        if n == 0 && !buf.is_empty() && !self.drained {
            let inner = match &mut self.dec {
                Decoded::Plain(r) => r,
                Decoded::Gzip(r) => r.get_mut(),
                Decoded::Zstd(r) => r.get_mut(),
            };
            let extra = io::copy(inner, &mut io::sink())?;
            if extra > 0 && !matches!(self.dec, Decoded::Plain(_)) {
                return Err(corrupt(format!(
                    "{extra} bytes after the end of the compressed stream"
                ))
                .into_io());
            }
            self.drained = true;
        }
        Ok(n)
    }
}

/// A verified stream of one layer's uncompressed tar. It fails (with an `io::Error`
/// wrapping [`Error`]) if the compressed digest or size, or the diff_id, do not match,
/// at the latest when it reaches the end; consumers must read to the end before they
/// trust what they read.
pub struct LayerReader(VerifyingReader<DrainingDecoder>);

impl Read for LayerReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl std::fmt::Debug for LayerReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LayerReader")
    }
}

impl Image {
    /// Open an OCI layout directory or a docker-archive file, by what `path` is.
    pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Self> {
        let path = path.as_ref();
        let md = std::fs::metadata(path).map_err(|e| missing_or_io(path, e))?;
        if md.is_dir() {
            Self::open_oci_layout(path, opts)
        } else {
            Self::open_docker_archive(path, opts)
        }
    }

    /// Open an OCI image layout directory and select one image.
    pub fn open_oci_layout(dir: impl AsRef<Path>, opts: &OpenOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let limits = opts.limits;
        let layout_path = dir.join("oci-layout");
        let f = File::open(&layout_path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                invalid(format!(
                    "{} is not an OCI layout (no oci-layout file)",
                    dir.display()
                ))
            } else {
                Error::io(format!("open {}", layout_path.display()), e)
            }
        })?;
        let layout: OciLayoutFile = parse_json(&read_small(f, "oci-layout", 4096)?, "oci-layout")?;
        if !layout.image_layout_version.starts_with("1.") {
            return Err(unsupported(format!(
                "image layout version {:?}",
                layout.image_layout_version
            )));
        }
        let index_path = dir.join("index.json");
        let f = File::open(&index_path).map_err(|e| missing_or_io(&index_path, e))?;
        let index: IndexJson = parse_json(
            &read_small(f, "index.json", limits.max_json_bytes)?,
            "index.json",
        )?;
        if index.schema_version != 2 {
            return Err(unsupported(format!(
                "index schemaVersion {}",
                index.schema_version
            )));
        }
        if let Some(mt) = index.media_type.as_deref() {
            if mt != OCI_INDEX {
                return Err(unsupported(format!("index.json media type {mt:?}")));
            }
        }

        let chosen = match &opts.tag {
            Some(tag) => {
                let matches: Vec<&Descriptor> = index
                    .manifests
                    .iter()
                    .filter(|d| {
                        d.annotations.get(REF_NAME) == Some(tag)
                            || d.annotations.get(CONTAINERD_NAME) == Some(tag)
                    })
                    .collect();
                match matches.as_slice() {
                    [] => {
                        let mut have: Vec<&str> = index
                            .manifests
                            .iter()
                            .filter_map(|d| d.annotations.get(REF_NAME).map(String::as_str))
                            .collect();
                        have.sort_unstable();
                        return Err(invalid(format!(
                            "no image tagged {tag:?} in {} (tags: {})",
                            dir.display(),
                            have.join(", ")
                        )));
                    }
                    [one] => (*one).clone(),
                    many => Self::pick_platform(many, opts)?.clone(),
                }
            }
            None => match index.manifests.as_slice() {
                [one] => one.clone(),
                [] => return Err(invalid("index.json lists no images")),
                _ => return Err(invalid("index.json lists several images: give a tag")),
            },
        };

        let blob = |d: &Digest| dir.join("blobs").join("sha256").join(d.hex());
        let read_json_blob = |d: &Descriptor, what: &str| -> Result<Vec<u8>> {
            if d.size > limits.max_json_bytes {
                return Err(too_large(format!("{what} of {} bytes", d.size)));
            }
            let loc = BlobLocation::File(blob(&d.digest));
            Self::read_verified(&loc, d.digest, d.size, what)
        };

        // Follow (nested) indexes down to a manifest.
        let mut desc = chosen;
        let mut depth = 0;
        let manifest: ManifestJson = loop {
            depth += 1;
            if depth > 8 {
                return Err(invalid("indexes nested more than 8 deep"));
            }
            let mt = desc.media_type.clone();
            let data = match mt.as_str() {
                OCI_INDEX | DOCKER_LIST | OCI_MANIFEST | DOCKER_MANIFEST | "" => {
                    read_json_blob(&desc, "manifest")?
                }
                other => return Err(unsupported(format!("manifest media type {other:?}"))),
            };
            let is_index = match mt.as_str() {
                OCI_INDEX | DOCKER_LIST => true,
                OCI_MANIFEST | DOCKER_MANIFEST => false,
                _ => {
                    let any: AnyManifest = parse_json(&data, "manifest")?;
                    match any.media_type.as_deref() {
                        Some(OCI_INDEX | DOCKER_LIST) => true,
                        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
                        Some(other) => {
                            return Err(unsupported(format!("manifest media type {other:?}")))
                        }
                        None => any.manifests.is_some() && any.layers.is_none(),
                    }
                }
            };
            if is_index {
                let idx: IndexJson = parse_json(&data, "nested index")?;
                let all: Vec<&Descriptor> = idx.manifests.iter().collect();
                desc = match all.as_slice() {
                    [] => return Err(invalid("nested index lists no images")),
                    [one] => (*one).clone(),
                    many => Self::pick_platform(many, opts)?.clone(),
                };
            } else {
                let m: ManifestJson = parse_json(&data, "manifest")?;
                if m.schema_version != 2 {
                    return Err(unsupported(format!(
                        "manifest schemaVersion {}",
                        m.schema_version
                    )));
                }
                if let Some(inner) = m.media_type.as_deref() {
                    if !matches!(inner, OCI_MANIFEST | DOCKER_MANIFEST) {
                        return Err(unsupported(format!("manifest media type {inner:?}")));
                    }
                }
                break m;
            }
        };
        let manifest_digest = Some(desc.digest);

        if !matches!(
            manifest.config.media_type.as_str(),
            OCI_CONFIG | DOCKER_CONFIG
        ) {
            return Err(unsupported(format!(
                "config media type {:?} (not a container image)",
                manifest.config.media_type
            )));
        }
        let config_data = read_json_blob(&manifest.config, "config")?;
        let config = Self::parse_config(&config_data, manifest.layers.len())?;

        let mut layers = Vec::with_capacity(manifest.layers.len());
        for (i, (d, diff_id)) in manifest.layers.iter().zip(&config.diff_ids).enumerate() {
            let compression = Compression::from_media_type(&d.media_type)?;
            let index = u32::try_from(i).map_err(|_| too_large("too many layers"))?;
            let location = BlobLocation::File(blob(&d.digest));
            let actual = location.len()?;
            if actual != d.size {
                return Err(corrupt(format!(
                    "layer {i} blob {} is {actual} bytes, descriptor says {}",
                    d.digest, d.size
                )));
            }
            layers.push(Layer {
                index,
                media_type: d.media_type.clone(),
                compression,
                digest: Some(d.digest),
                size: d.size,
                diff_id: *diff_id,
                location,
            });
        }
        Ok(Self {
            format: ImageFormat::OciLayout,
            manifest_digest,
            config_digest: manifest.config.digest,
            config,
            layers,
            limits,
        })
    }

    fn pick_platform<'a>(cands: &[&'a Descriptor], opts: &OpenOptions) -> Result<&'a Descriptor> {
        let (os, arch) = match &opts.platform {
            Some((o, a)) => (o.as_str(), a.as_str()),
            None => ("linux", host_arch()),
        };
        let mut it = cands.iter().filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == os && p.architecture == arch)
        });
        match (it.next(), it.next()) {
            (Some(d), None) => Ok(d),
            (Some(_), Some(_)) => Err(invalid(format!("several images for platform {os}/{arch}"))),
            (None, _) => Err(invalid(format!(
                "{} candidate images but none for platform {os}/{arch}",
                cands.len()
            ))),
        }
    }

    fn read_verified(loc: &BlobLocation, digest: Digest, size: u64, what: &str) -> Result<Vec<u8>> {
        let actual = loc.len()?;
        if actual != size {
            return Err(corrupt(format!(
                "{what} blob {digest} is {actual} bytes, descriptor says {size}"
            )));
        }
        let mut r = VerifyingReader::new(
            loc.open()?,
            Expect {
                digest: Some(digest),
                size: Some(size),
                limit: None,
            },
            format!("{what} blob {digest}"),
        );
        let mut buf = Vec::new();
        r.read_to_end(&mut buf)
            .map_err(|e| Error::from_content_io(what, e))?;
        Ok(buf)
    }

    fn parse_config(data: &[u8], n_layers: usize) -> Result<ImageConfig> {
        let c: ConfigJson = parse_json(data, "config")?;
        if c.rootfs.kind != "layers" {
            return Err(unsupported(format!("rootfs type {:?}", c.rootfs.kind)));
        }
        if c.rootfs.diff_ids.len() != n_layers {
            return Err(corrupt(format!(
                "config has {} diff_ids for {n_layers} layers",
                c.rootfs.diff_ids.len()
            )));
        }
        let cc = c.config.unwrap_or_default();
        Ok(ImageConfig {
            architecture: c.architecture,
            os: c.os,
            user: cc.user.filter(|u| !u.is_empty()),
            env: cc.env.unwrap_or_default(),
            entrypoint: cc.entrypoint,
            cmd: cc.cmd,
            working_dir: cc.working_dir.filter(|w| !w.is_empty()),
            labels: cc.labels.unwrap_or_default(),
            stop_signal: cc.stop_signal,
            exposed_ports: cc
                .exposed_ports
                .map(|m| m.into_keys().collect())
                .unwrap_or_default(),
            volumes: cc
                .volumes
                .map(|m| m.into_keys().collect())
                .unwrap_or_default(),
            diff_ids: c.rootfs.diff_ids,
        })
    }

    /// Open a docker-archive tarball (`manifest.json`, `<config>.json`, layer tars) and
    /// select one image. The archive itself must be an uncompressed tar.
    pub fn open_docker_archive(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Self> {
        let path = path.as_ref();
        let limits = opts.limits;
        let mut f = File::open(path).map_err(|e| missing_or_io(path, e))?;
        let mut head = [0u8; 4];
        let n = f
            .read(&mut head)
            .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        if Compression::sniff(head.get(..n).unwrap_or_default()) != Compression::None {
            return Err(unsupported(
                "compressed docker archive: decompress it first",
            ));
        }
        f.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io(format!("seek {}", path.display()), e))?;

        // Index the archive: regular entries by name, links by target.
        enum Ent {
            Data(u64, u64),
            Link(String),
        }
        let mut ents: HashMap<String, Ent> = HashMap::new();
        let mut ar = tar::Archive::new(BufReader::new(f));
        let what = "docker archive";
        for e in ar.entries().map_err(|e| Error::from_content_io(what, e))? {
            let e = e.map_err(|e| Error::from_content_io(what, e))?;
            if ents.len() > 1_000_000 {
                return Err(too_large("docker archive with more than 10^6 entries"));
            }
            let name = norm_archive_path(&String::from_utf8_lossy(&e.path_bytes()));
            let t = e.header().entry_type();
            if t.is_file() {
                ents.insert(name, Ent::Data(e.raw_file_position(), e.size()));
            } else if t.is_symlink() || t.is_hard_link() {
                let target =
                    String::from_utf8_lossy(&e.link_name_bytes().unwrap_or_default()).into_owned();
                let resolved = if t.is_symlink() {
                    let base = name.rsplit_once('/').map_or("", |(d, _)| d);
                    norm_archive_path(&format!("{base}/{target}"))
                } else {
                    norm_archive_path(&target)
                };
                ents.insert(name, Ent::Link(resolved));
            }
        }
        let locate = |name: &str| -> Result<BlobLocation> {
            let mut cur = norm_archive_path(name);
            for _ in 0..16 {
                match ents.get(&cur) {
                    Some(Ent::Data(offset, len)) => {
                        return Ok(BlobLocation::InArchive {
                            archive: path.to_path_buf(),
                            offset: *offset,
                            len: *len,
                        })
                    }
                    Some(Ent::Link(t)) => cur = t.clone(),
                    None => return Err(invalid(format!("docker archive lacks {name:?}"))),
                }
            }
            Err(invalid(format!("docker archive: link loop at {name:?}")))
        };

        let mloc = locate("manifest.json")?;
        let mdata = read_small(mloc.open()?, "manifest.json", limits.max_json_bytes)?;
        let entries: Vec<DockerArchiveEntry> = parse_json(&mdata, "manifest.json")?;
        let chosen = match &opts.tag {
            Some(tag) => entries
                .iter()
                .find(|e| {
                    e.repo_tags.iter().flatten().any(|t| {
                        t == tag
                            || t.strip_suffix(tag.as_str())
                                .is_some_and(|p| p.ends_with('/'))
                    })
                })
                .ok_or_else(|| invalid(format!("no image tagged {tag:?} in the docker archive")))?,
            None => match entries.as_slice() {
                [one] => one,
                [] => return Err(invalid("docker archive manifest.json lists no images")),
                _ => return Err(invalid("docker archive lists several images: give a tag")),
            },
        };

        // The config's name carries its digest (the image id).
        let cloc = locate(&chosen.config)?;
        let config_len = cloc.len()?;
        if config_len > limits.max_json_bytes {
            return Err(too_large(format!("config of {config_len} bytes")));
        }
        let (config_data, config_digest) = match digest_from_name(&chosen.config) {
            Some(d) => (Self::read_verified(&cloc, d, config_len, "config")?, d),
            None => {
                let data = read_small(cloc.open()?, "config", limits.max_json_bytes)?;
                let d = Digest::of(&data);
                (data, d)
            }
        };
        let config = Self::parse_config(&config_data, chosen.layers.len())?;

        let mut layers = Vec::with_capacity(chosen.layers.len());
        for (i, (name, diff_id)) in chosen.layers.iter().zip(&config.diff_ids).enumerate() {
            let location = locate(name)?;
            let mut head = [0u8; 4];
            let mut r = location.open()?;
            let mut got = 0;
            while got < head.len() {
                let Some(rest) = head.get_mut(got..) else {
                    break;
                };
                let n = r
                    .read(rest)
                    .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            let compression = Compression::sniff(head.get(..got).unwrap_or_default());
            let media_type = match compression {
                Compression::None => "application/vnd.oci.image.layer.v1.tar",
                Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            };
            // Only `blobs/sha256/<hex>` names state the (compressed) blob digest;
            // `<hex>.tar` and `<id>/layer.tar` names are diff_ids or legacy ids.
            let digest = name
                .strip_prefix("blobs/sha256/")
                .and_then(|h| Digest::from_hex(h).ok());
            layers.push(Layer {
                index: u32::try_from(i).map_err(|_| too_large("too many layers"))?,
                media_type: media_type.to_string(),
                compression,
                digest,
                size: location.len()?,
                diff_id: *diff_id,
                location,
            });
        }
        Ok(Self {
            format: ImageFormat::DockerArchive,
            manifest_digest: None,
            config_digest,
            config,
            layers,
            limits,
        })
    }

    /// The limits this image was opened with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A verified stream of layer `index`'s uncompressed tar (see [`LayerReader`]).
    pub fn open_layer(&self, index: usize) -> Result<LayerReader> {
        let layer = self
            .layers
            .get(index)
            .ok_or_else(|| invalid(format!("no layer {index}")))?;
        let comp = VerifyingReader::new(
            layer.location.open()?,
            Expect {
                digest: layer.digest,
                size: Some(layer.size),
                limit: None,
            },
            format!("layer {index} blob"),
        );
        let buffered = BufReader::with_capacity(256 << 10, comp);
        let dec = match layer.compression {
            Compression::None => Decoded::Plain(buffered),
            Compression::Gzip => {
                Decoded::Gzip(Box::new(flate2::bufread::MultiGzDecoder::new(buffered)))
            }
            Compression::Zstd => Decoded::Zstd(
                zstd::Decoder::with_buffer(buffered)
                    .map_err(|e| Error::io("zstd decoder init", e))?,
            ),
        };
        Ok(LayerReader(VerifyingReader::new(
            DrainingDecoder {
                dec,
                drained: false,
            },
            Expect {
                digest: Some(layer.diff_id),
                size: None,
                limit: Some(self.limits.max_layer_bytes),
            },
            format!("layer {index} (diff_id)"),
        )))
    }

    /// Apply all layers, bottom first, into a canonical [`Tree`]. Every layer is read
    /// to its end and verified (blob digest and size, diff_id) as it streams; any
    /// mismatch fails the whole call and no tree is returned.
    pub fn flatten(&self) -> Result<Flattened> {
        let mut applier = Applier::new(self.limits);
        let mut stats = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let r = self.open_layer(layer.index as usize)?;
            stats.push(applier.apply_layer(layer.index, r)?);
        }
        Ok(Flattened {
            tree: applier.finish(),
            layers: stats,
        })
    }

    /// Read layer `index` to its end and verify it, without applying it.
    pub fn verify_layer(&self, index: usize) -> Result<u64> {
        let mut r = self.open_layer(index)?;
        io::copy(&mut r, &mut io::sink()).map_err(|e| Error::from_content_io("layer", e))
    }
}

/// `<hex>.json` or `blobs/sha256/<hex>` → the digest in the name.
fn digest_from_name(name: &str) -> Option<Digest> {
    let base = name.rsplit('/').next().unwrap_or(name);
    let stem = base.strip_suffix(".json").unwrap_or(base);
    Digest::from_hex(stem).ok()
}

/// Normalize a path inside a docker archive: no leading `./` or `/`, `.` and `..`
/// resolved lexically (never above the archive root).
fn norm_archive_path(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}
