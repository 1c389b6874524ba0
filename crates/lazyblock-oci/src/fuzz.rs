//! The body of the `layer_apply` fuzz target, callable from ordinary tests.

use std::collections::HashSet;

use crate::apply::{Applier, Limits};
use crate::tree::{NodeKind, ROOT};

/// Limits small enough that arbitrary input cannot exhaust memory or time.
pub fn fuzz_limits() -> Limits {
    Limits {
        max_layer_bytes: 64 << 20,
        max_entries: 10_000,
        max_depth: 256,
        max_json_bytes: 1 << 20,
    }
}

/// Feed `data` as an uncompressed layer tar to the applier, twice (the second time as
/// an upper layer over the first, which exercises whiteouts, replacement and hard links
/// to lower layers). Errors are fine; panics and broken invariants are bugs: on success
/// the canonical tree must have its root at 0, every inode reachable, data ranges inside
/// the input, link counts consistent, and canonicalization must be idempotent.
///
/// # Panics
/// When an invariant is broken (that is what the fuzzer looks for).
pub fn fuzz_layer_apply(data: &[u8]) {
    let mut applier = Applier::new(fuzz_limits());
    if applier.apply_layer(0, data).is_err() {
        return;
    }
    let _ = applier.apply_layer(1, data).is_ok();
    let tree = applier.finish();
    assert!(
        tree.inode(ROOT).is_some_and(|r| r.is_dir()),
        "root is a directory"
    );
    let mut seen = HashSet::new();
    let mut entries = 0u64;
    tree.walk(|_, id| {
        entries += 1;
        seen.insert(id);
    });
    assert_eq!(seen.len(), tree.inodes.len(), "every inode reachable");
    let len = data.len() as u64;
    for node in &tree.inodes {
        if let NodeKind::File { data } = &node.kind {
            assert!(
                data.offset.saturating_add(data.len) <= len,
                "data range inside input"
            );
            assert!(data.layer <= 1);
        }
        assert!(node.nlink >= 1);
        assert!(node.meta.mode <= 0o7777);
    }
    for h in &tree.hidden {
        if let Some(d) = h.data {
            assert!(d.offset.saturating_add(d.len) <= len);
        }
        assert!(h.inode_layer <= h.layer);
    }
    let mut again = tree.clone();
    again.canonicalize();
    assert_eq!(again, tree, "canonicalize is idempotent");
}
