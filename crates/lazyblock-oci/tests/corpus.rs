//! The realistic corpus built by `scripts/make-corpus.sh`: every image parses, every
//! digest verifies, layers apply. Ignored by default (it needs the corpus); run it with
//! `LAZYBLOCK_CORPUS=<the script's OUT_DIR> cargo test --release -p lazyblock-oci --test corpus
//! -- --ignored corpus_images`, as `.ci/run` does. Without the variable it fails.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Instant;

use lazyblock_oci::{Image, OpenOptions, Tree};

const TAGS: [&str; 5] = [
    "debian-minbase",
    "python3",
    "python3-numpy-pandas",
    "python3-numpy-pandas-flaskapp",
    "nodejs",
];

fn corpus() -> PathBuf {
    let dir = PathBuf::from(
        std::env::var_os("LAZYBLOCK_CORPUS")
            .expect("set LAZYBLOCK_CORPUS to the output directory of scripts/make-corpus.sh"),
    );
    assert!(
        dir.join("oci/index.json").is_file(),
        "LAZYBLOCK_CORPUS={} has no oci/index.json",
        dir.display()
    );
    dir
}

fn flatten(layout: PathBuf, tag: &str) -> (Image, Tree) {
    let t0 = Instant::now();
    let img = Image::open(&layout, &OpenOptions::tag(tag)).unwrap();
    let flat = img.flatten().unwrap();
    let s = flat.tree.stats();
    let tar: u64 = flat.layers.iter().map(|l| l.tar_bytes).sum();
    let blobs: u64 = img.layers.iter().map(|l| l.size).sum();
    println!(
        "{:<40} {} layers  {:>7} inodes ({:>6} files {:>5} dirs {:>5} symlinks {:>3} special, {:>4} extra hard links)  {:>11} file bytes  {:>4} hidden ({:>9} B)  tar {:>11} B  blobs {:>10} B  {:.1}s",
        format!("{}:{tag}", layout.file_name().unwrap().to_string_lossy()),
        img.layers.len(),
        flat.tree.inodes.len(),
        s.files,
        s.dirs,
        s.symlinks,
        s.specials,
        s.extra_hard_links,
        s.file_bytes,
        s.hidden_files,
        s.hidden_bytes,
        tar,
        blobs,
        t0.elapsed().as_secs_f64()
    );
    assert!(s.files > 1000);
    (img, flat.tree)
}

#[test]
#[ignore = "needs the corpus: LAZYBLOCK_CORPUS=<dir> ... -- --ignored corpus_images"]
fn corpus_images_parse_verify_and_apply() {
    let dir = corpus();
    let mut gz_trees = Vec::new();
    for tag in TAGS {
        let (img, tree) = flatten(dir.join("oci"), tag);
        assert!(img.layers.iter().all(|l| l.digest.is_some()));
        gz_trees.push(tree);
    }
    // the flask app image carries its config
    let img = Image::open(dir.join("oci"), &OpenOptions::tag(TAGS[3])).unwrap();
    assert_eq!(img.config.working_dir.as_deref(), Some("/app"));
    assert!(gz_trees[3].lookup(b"app/app.py").is_some());
    assert!(gz_trees[4].lookup(b"usr/bin/node").is_some());

    // same uncompressed layers, other compression: identical trees (offsets are in the
    // uncompressed tar)
    if dir.join("oci-zstd/index.json").is_file() {
        for (tag, gz) in TAGS.iter().zip(&gz_trees) {
            let (_, z) = flatten(dir.join("oci-zstd"), tag);
            assert!(&z == gz, "{tag}: zstd tree differs from gzip tree");
        }
    }
    // optional: the reference extractor over a real image, for comparison with another
    // unpacker (e.g. `umoci raw unpack`)
    if let Some(out) = std::env::var_os("LAZYBLOCK_EXTRACT_TO") {
        let img = Image::open(dir.join("oci"), &OpenOptions::tag(TAGS[3])).unwrap();
        let t0 = Instant::now();
        lazyblock_oci::extract_to_dir(&img, std::path::Path::new(&out)).unwrap();
        println!(
            "extracted {} in {:.1}s",
            TAGS[3],
            t0.elapsed().as_secs_f64()
        );
    }
    let docker = dir.join("docker/nodejs.tar");
    if docker.is_file() {
        let t0 = Instant::now();
        let img = Image::open(&docker, &OpenOptions::default()).unwrap();
        let tree = img.flatten().unwrap().tree;
        println!(
            "docker/nodejs.tar: {} inodes, {:.1}s",
            tree.inodes.len(),
            t0.elapsed().as_secs_f64()
        );
        assert!(
            tree == gz_trees[4],
            "docker-archive tree differs from the OCI one"
        );
    }
}
