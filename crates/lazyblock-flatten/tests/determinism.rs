//! Same model, any insertion order -> the same bytes; the UUID only touches the superblock.

mod common;

use lazyblock_flatten::{plan, Options};

fn image(model: &common::Ops, order: &[usize], opts: &Options) -> Vec<u8> {
    let tree = model.build_in(order);
    let mut out = Vec::new();
    let s = plan(&tree, opts)
        .expect("plan")
        .write_to(&mut common::Synth::default(), &mut out)
        .expect("write");
    assert_eq!(out.len() as u64, s.size_bytes);
    out
}

#[test]
fn insertion_order_does_not_matter() {
    let model = common::full_tree();
    let n = model.ops.len();
    let forward: Vec<usize> = (0..n).collect();
    let reverse: Vec<usize> = (0..n).rev().collect();
    let mut shuffled = forward.clone();
    shuffled.sort_by_key(|&i| common::splitmix(i as u64 ^ 0xDEAD));
    let opts = Options::new([3; 16]);
    let a = image(&model, &forward, &opts);
    let b = image(&model, &reverse, &opts);
    let c = image(&model, &shuffled, &opts);
    assert!(a == b, "reverse insertion order changed the image");
    assert!(a == c, "shuffled insertion order changed the image");

    // The file-path writer gives the same bytes (holes read back as zeros).
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("x.ext4");
    lazyblock_flatten::write_image_file(&model.build(), &opts, &mut common::Synth::default(), &p)
        .expect("write file");
    assert!(
        std::fs::read(&p).expect("read") == a,
        "write_to_path differs from write_to"
    );
}

#[test]
fn uuid_changes_only_the_superblock() {
    let model = common::full_tree();
    let order: Vec<usize> = (0..model.ops.len()).collect();
    let a = image(&model, &order, &Options::new([3; 16]));
    let b = image(&model, &order, &Options::new([4; 16]));
    assert_eq!(a.len(), b.len());
    let differing: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
    assert!(!differing.is_empty());
    // UUID at 1024+0x68..0x78 and the superblock checksum at 1024+0x3FC..0x400.
    assert!(
        differing
            .iter()
            .all(|&i| (1024 + 0x68..1024 + 0x78).contains(&i) || (1024 + 0x3FC..2048).contains(&i)),
        "bytes outside the superblock depend on the UUID: first at {:?}",
        differing.iter().find(|&&i| !(1024..2048).contains(&i))
    );
}
