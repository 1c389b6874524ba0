//! Option variants (chunk sizes, many groups, bitmaps outside the head, many inodes, an
//! empty tree) all give images that `e2fsck -fn` accepts. Needs e2fsprogs, not root.

mod common;

use lazyblock_flatten::{write_image_file, Headroom, Options, RegionKind, Tree};

fn check(tree: &Tree, opts: &Options) -> lazyblock_flatten::Summary {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("v.ext4");
    let s = write_image_file(tree, opts, &mut common::Synth::default(), &img).expect("write");
    println!("{s}");
    common::e2fsck(&img);
    for r in &s.regions {
        if matches!(
            r.kind,
            RegionKind::LayerData(_) | RegionKind::LayerMeta(_) | RegionKind::InodeTable
        ) {
            assert_eq!(
                r.start_block * 4096 % opts.chunk_size,
                0,
                "{:?} not chunk aligned",
                r.kind
            );
        }
    }
    assert_eq!(s.size_bytes % opts.chunk_size, 0);
    s
}

#[test]
fn chunk_sizes() {
    let tree = common::full_tree().build();
    for cs in [4096, 64 << 10, 2 << 20] {
        let mut o = Options::new([5; 16]);
        o.chunk_size = cs;
        let s = check(&tree, &o);
        let l1 = s
            .layer_inodes
            .iter()
            .find(|l| l.layer == 1)
            .expect("layer 1 inodes");
        assert_eq!(
            u64::from(l1.first - 1) % (cs / 256),
            0,
            "layer 1 inodes not chunk aligned"
        );
    }
}

#[test]
fn many_groups_bitmaps_outside_head_many_inodes() {
    let tree = common::full_tree().build();
    let mut o = Options::new([6; 16]);
    o.chunk_size = 64 << 10;
    o.headroom = Headroom {
        percent: 0,
        min_bytes: 2 << 30,
    };
    o.min_free_inodes = 300_000;
    let s = check(&tree, &o);
    assert!(s.groups > 7, "{} groups", s.groups);
    assert!(
        s.regions.iter().any(|r| r.kind == RegionKind::Bitmaps),
        "bitmaps should not fit the head"
    );
    assert!(s.free_inodes >= 300_000);
    assert!(s.free_blocks * 4096 >= 2 << 30);
}

#[test]
fn empty_tree() {
    let tree = Tree::new(common::attrs(0o755), 0);
    let s = check(&tree, &Options::new([7; 16]));
    assert!(s.free_inodes >= 16384);
}
