//! Runs the body of the `layer_apply` fuzz target over seed inputs, so its code path
//! is exercised by `cargo test` (the fuzzer itself lives in `/fuzz`).
#![allow(clippy::unwrap_used)]

mod common;

use common::Layer;
use lazyblock_oci::fuzz::fuzz_layer_apply;
use tar::EntryType;

pub fn seeds() -> Vec<Vec<u8>> {
    let ok = Layer::new()
        .dir("d")
        .file("d/f", b"data")
        .hardlink("d/h", "d/f")
        .symlink("d/s", "f")
        .whiteout("d", "f")
        .opaque("d")
        .device("c", EntryType::Char, 1, 3)
        .fifo("p")
        .pax(&[("SCHILY.xattr.user.a", b"b"), ("mtime", b"1.5")])
        .file("x", b"x")
        .finish();
    let mut flipped = ok.clone();
    flipped[700] ^= 0xff;
    vec![
        Vec::new(),
        vec![0; 1024],
        b"garbage that is not a tar".to_vec(),
        ok.clone(),
        ok[..ok.len() / 2].to_vec(),
        flipped,
        Layer::new()
            .raw(b"../x", EntryType::Regular, b"", b"")
            .finish(),
        Layer::new().symlink("s", "/").file("s/x", b"").finish(),
        Layer::new().file("a/b", b"").file("a", b"").finish(),
        Layer::new().hardlink("a", "a").finish(),
    ]
}

#[test]
fn fuzz_body_over_seeds() {
    for s in seeds() {
        fuzz_layer_apply(&s);
    }
}

/// Writes the seeds as a corpus for `cargo fuzz` when `LAZYBLOCK_WRITE_FUZZ_SEEDS` names
/// a directory (used once to fill `fuzz/corpus/layer_apply`).
#[test]
fn write_seed_corpus() {
    let Some(dir) = std::env::var_os("LAZYBLOCK_WRITE_FUZZ_SEEDS") else {
        return;
    };
    std::fs::create_dir_all(&dir).unwrap();
    for (i, s) in seeds().iter().enumerate() {
        std::fs::write(std::path::Path::new(&dir).join(format!("seed-{i:02}")), s).unwrap();
    }
}
