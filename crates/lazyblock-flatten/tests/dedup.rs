//! Dedup across images that share a base layer: image A = [L0], image B = [L0, L1 small].
//! Every 512 KiB chunk of A's layer-0 data region must appear in B, and the share of B's
//! non-zero chunks that A lacks must stay within added-bytes/image-bytes + 3 points.

mod common;

use std::collections::HashSet;

use common::{attrs, dir, file, splitmix};
use lazyblock_flatten::{plan, FileContent, FileId, Hidden, Options, RegionKind, Summary, Tree};

const CHUNK: usize = 512 * 1024;

/// Layer 0: ~125 MiB in 1500 files over 100 directories (sizes skewed like a distro layer).
fn base(tr: &mut Tree, upper_changes: bool) {
    tr.add(
        "etc",
        if upper_changes {
            dir(1).with_inode_layer(0)
        } else {
            dir(0)
        },
    )
    .expect("etc");
    tr.add("usr", dir(0)).expect("usr");
    for d in 0..100u64 {
        let dpath = format!("usr/d{d:02}");
        tr.add(&dpath, dir(0)).expect("dir");
        for f in 0..15u64 {
            let id = d * 100 + f + 1_000_000;
            let r = splitmix(id);
            let size = match r % 10 {
                0 => 300_000 + r % 700_000,
                1..=3 => 20_000 + r % 80_000,
                _ => r % 8_000,
            };
            tr.add(format!("{dpath}/f{f:02}"), file(id, size, 0))
                .expect("file");
        }
    }
    for i in 0..20u64 {
        let path = format!("etc/conf{i:02}");
        if upper_changes && i == 5 {
            // deleted by layer 1
            tr.add_hidden(
                &path,
                Hidden {
                    layer: 0,
                    inode_layer: None,
                    content: Some(FileContent::dense(FileId(5000 + i), 3000)),
                },
            )
            .expect("hidden");
            continue;
        }
        if upper_changes && i == 7 {
            // replaced by layer 1 (keeps its inode number)
            tr.add_hidden(
                &path,
                Hidden {
                    layer: 0,
                    inode_layer: None,
                    content: Some(FileContent::dense(FileId(5000 + i), 3000)),
                },
            )
            .expect("hidden");
            tr.add(&path, file(9007, 5000, 1).with_inode_layer(0))
                .expect("replaced");
            continue;
        }
        tr.add(&path, file(5000 + i, 3000, 0)).expect("conf");
    }
}

fn build(with_l1: bool) -> (Tree, u64) {
    let mut tr = Tree::new(attrs(0o755), u32::from(with_l1));
    base(&mut tr, with_l1);
    let mut added = 0;
    if with_l1 {
        tr.add("app", dir(1)).expect("app");
        for i in 0..8u64 {
            let size = 100_000 + i * 17_000;
            tr.add(format!("app/mod{i}.py"), file(8000 + i, size, 1))
                .expect("app file");
            added += size;
        }
        tr.add("etc/app.conf", file(8100, 2000, 1)).expect("conf");
        added += 2000 + 5000;
    }
    (tr, added)
}

fn image(tree: &Tree, uuid: u8) -> (Vec<u8>, Summary) {
    let mut out = Vec::new();
    let s = plan(tree, &Options::new([uuid; 16]))
        .expect("plan")
        .write_to(&mut common::Synth::default(), &mut out)
        .expect("write");
    (out, s)
}

fn region_chunks<'a>(img: &'a [u8], s: &Summary, kind: RegionKind) -> Vec<&'a [u8]> {
    let r = s.regions.iter().find(|r| r.kind == kind).expect("region");
    let a = (r.start_block * 4096) as usize / CHUNK;
    let b = ((r.start_block + r.blocks) * 4096) as usize;
    (a..b.div_ceil(CHUNK))
        .map(|c| &img[c * CHUNK..(c + 1) * CHUNK])
        .collect()
}

#[test]
fn child_image_shares_the_base_layer() {
    let (ta, _) = build(false);
    let (tb, added) = build(true);
    let (a, sa) = image(&ta, 1);
    let (b, sb) = image(&tb, 2);
    println!("A: {sa}\nB: {sb}");
    let set_a: HashSet<&[u8]> = a.chunks(CHUNK).collect();
    let set_b: HashSet<&[u8]> = b.chunks(CHUNK).collect();

    let data_a = region_chunks(&a, &sa, RegionKind::LayerData(0));
    let missing = data_a.iter().filter(|c| !set_b.contains(*c)).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} layer-0 data chunks of A are not in B",
        data_a.len()
    );
    for (name, kind) in [
        ("layer-0 metadata", RegionKind::LayerMeta(0)),
        ("inode table", RegionKind::InodeTable),
    ] {
        let ch = region_chunks(&a, &sa, kind);
        let shared = ch
            .iter()
            .filter(|c| c.iter().any(|&x| x != 0) && set_b.contains(*c))
            .count();
        let nonzero = ch.iter().filter(|c| c.iter().any(|&x| x != 0)).count();
        println!("{name}: {shared} of {nonzero} non-zero chunks of A also in B");
    }

    let nonzero_b: Vec<&[u8]> = b
        .chunks(CHUNK)
        .filter(|c| c.iter().any(|&x| x != 0))
        .collect();
    let unique = nonzero_b.iter().filter(|c| !set_a.contains(*c)).count();
    let share = unique as f64 / nonzero_b.len() as f64;
    let image_bytes = (nonzero_b.len() * CHUNK) as f64;
    let target = added as f64 / image_bytes + 0.03;
    println!(
        "B: {} non-zero chunks, {unique} not in A = {:.2}% (added {added} bytes = {:.2}% of {image_bytes} stored bytes; target <= {:.2}%)",
        nonzero_b.len(),
        100.0 * share,
        100.0 * added as f64 / image_bytes,
        100.0 * target
    );
    assert!(
        share <= target,
        "unique share {share:.4} above target {target:.4}"
    );
}
