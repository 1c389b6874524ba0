//! Placement of a chunk's stripes on the memcached nodes: rendezvous (highest-random-weight)
//! hashing (pure: no I/O, no clock, no randomness).
//!
//! A node is identified by its name (e.g. `"10.0.0.7:11211"`), never by its position in the
//! list, so every worker that knows the same set of nodes places every stripe on the same node.
//! Its seed is the first 8 bytes (little-endian) of SHA-256 of the name.
//!
//! Stripe `i` of chunk `id` goes to the node with the highest
//! `score(node, id, i) = mix(seed(node) ^ key(id, i))`, where `key` folds the four 64-bit words of
//! the id and `i` through the splitmix64 finaliser `mix`, over the nodes not already taken by
//! stripes `0..i`. With `m` nodes and `n > m` stripes the exclusion starts over every `m`
//! stripes: stripes `0..m` get `m` distinct nodes, stripes `m..2m` again distinct among
//! themselves, and so on ([`Placement::distinct`] says whether all `n` are distinct). Ties
//! (equal 64-bit scores) go to the smaller name.
//!
//! Movement when the node set changes: a stripe moves when the changed node wins or loses it,
//! and, because later stripes exclude earlier stripes' nodes, a displaced node can then win a
//! later stripe of the same chunk. Measured over 20 000 chunks × 5 stripes, 10 ↔ 11 nodes
//! (test `adding_or_removing_a_node_moves_little`): adding an 11th node moves 1.264× the
//! stripes the new node receives (11 431 / 9 041); removing one of 10 moves 1.297× the stripes
//! it held (12 965 / 9 995). The test bounds both at 1.35×. Over one chunk the node *set* of its
//! `n` stripes changes only where the changed node enters or leaves it; the extra ~30 % are
//! stripes that swap nodes inside that set.

use sha2::{Digest, Sha256};

/// An error building a [`Placement`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlacementError {
    /// No nodes.
    #[error("no cache nodes to place stripes on")]
    Empty,
    /// The same node name twice.
    #[error("cache node {0:?} listed twice")]
    Duplicate(String),
}

/// The splitmix64 finaliser: a bijective 64-bit mix with full avalanche.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The per-(chunk, stripe) half of the score: the id's four words and the stripe index, folded
/// through [`mix`].
fn key(id: &[u8; 32], stripe: usize) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64;
    for word in id.chunks_exact(8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        h = mix(h ^ u64::from_le_bytes(w));
    }
    mix(h ^ (stripe as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Rendezvous placement of stripes over a fixed set of named nodes.
#[derive(Clone, Debug)]
pub struct Placement {
    /// Per node, in the order given: (seed, name).
    nodes: Vec<(u64, String)>,
}

impl Placement {
    /// Places over `nodes` (names, e.g. `"10.0.0.7:11211"`); indexes returned by
    /// [`nodes_for`](Self::nodes_for) refer to this list. The list's order does not change
    /// which node (by name) a stripe goes to. Fails on an empty list or a repeated name.
    pub fn new(nodes: &[String]) -> Result<Placement, PlacementError> {
        if nodes.is_empty() {
            return Err(PlacementError::Empty);
        }
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(nodes.len());
        for name in nodes {
            if !seen.insert(name.as_str()) {
                return Err(PlacementError::Duplicate(name.clone()));
            }
            let digest = Sha256::digest(name.as_bytes());
            let mut seed = [0u8; 8];
            seed.copy_from_slice(&digest[..8]);
            out.push((u64::from_le_bytes(seed), name.clone()));
        }
        Ok(Placement { nodes: out })
    }

    /// The name of node `index`.
    pub fn name(&self, index: usize) -> Option<&str> {
        self.nodes.get(index).map(|(_, name)| name.as_str())
    }

    /// The node (index into the list given to [`new`](Self::new)) of each of the `n` stripes of
    /// chunk `id`: stripe `i` goes to the highest-scoring node not taken by the stripes before
    /// it in its round of `len()` stripes (see the module docs).
    pub fn nodes_for(&self, id: &[u8; 32], n: usize) -> Vec<usize> {
        let m = self.nodes.len();
        let mut taken = vec![false; m];
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            if m > 0 && i % m == 0 {
                taken.fill(false);
            }
            let k = key(id, i);
            let mut best: Option<(u64, usize)> = None;
            for (j, (seed, name)) in self.nodes.iter().enumerate() {
                if taken[j] {
                    continue;
                }
                let score = mix(seed ^ k);
                let better = match best {
                    None => true,
                    Some((s, b)) => score > s || (score == s && name < &self.nodes[b].1),
                };
                if better {
                    best = Some((score, j));
                }
            }
            if let Some((_, j)) = best {
                taken[j] = true;
                out.push(j);
            }
        }
        out
    }

    /// Whether `n` stripes of a chunk land on `n` distinct nodes (`n <= len()`).
    pub fn distinct(&self, n: usize) -> bool {
        n <= self.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};

    fn names(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("10.0.0.{i}:11211")).collect()
    }

    fn ids(count: usize, seed: u64) -> Vec<[u8; 32]> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..count)
            .map(|_| {
                let mut id = [0u8; 32];
                rng.fill_bytes(&mut id);
                id
            })
            .collect()
    }

    /// Stripe -> node name, for all `n` stripes of every id.
    fn assignment(p: &Placement, ids: &[[u8; 32]], n: usize) -> Vec<String> {
        ids.iter()
            .flat_map(|id| p.nodes_for(id, n))
            .map(|j| p.name(j).expect("index in range").to_owned())
            .collect()
    }

    #[test]
    fn distinct_nodes_when_enough() {
        for m in [5, 6, 10, 64] {
            let p = Placement::new(&names(m)).expect("placement");
            for id in ids(500, 1) {
                for n in 1..=5 {
                    let mut v = p.nodes_for(&id, n);
                    assert_eq!(v.len(), n);
                    v.sort_unstable();
                    v.dedup();
                    assert_eq!(v.len(), n, "m={m} n={n}");
                }
            }
            assert!(p.distinct(5));
        }
    }

    #[test]
    fn fewer_nodes_than_stripes_start_over() {
        let p = Placement::new(&names(3)).expect("placement");
        assert!(!p.distinct(5));
        assert!(p.distinct(3));
        for id in ids(200, 2) {
            let v = p.nodes_for(&id, 7);
            assert_eq!(v.len(), 7);
            let round = |r: &[usize]| {
                let mut r = r.to_vec();
                r.sort_unstable();
                r
            };
            assert_eq!(round(&v[0..3]), vec![0, 1, 2]);
            assert_eq!(round(&v[3..6]), vec![0, 1, 2]);
            // The first stripes of a round are the same as without wrapping.
            assert_eq!(&v[..3], &p.nodes_for(&id, 3)[..]);
        }
        let one = Placement::new(&names(1)).expect("placement");
        assert_eq!(one.nodes_for(&[0; 32], 4), vec![0, 0, 0, 0]);
    }

    #[test]
    fn rejects_empty_and_duplicate_lists() {
        assert_eq!(Placement::new(&[]).err(), Some(PlacementError::Empty));
        let mut dup = names(3);
        dup.push(dup[1].clone());
        assert!(matches!(
            Placement::new(&dup),
            Err(PlacementError::Duplicate(_))
        ));
    }

    #[test]
    fn list_order_does_not_matter() {
        let a = names(10);
        let mut b = a.clone();
        b.reverse();
        b.swap(2, 7);
        let (pa, pb) = (
            Placement::new(&a).expect("placement"),
            Placement::new(&b).expect("placement"),
        );
        let ids = ids(2000, 3);
        assert_eq!(assignment(&pa, &ids, 5), assignment(&pb, &ids, 5));
    }

    #[test]
    fn balanced_within_ten_percent() {
        let p = Placement::new(&names(10)).expect("placement");
        let mut count = [0usize; 10];
        for id in ids(20_000, 4) {
            for j in p.nodes_for(&id, 5) {
                count[j] += 1;
            }
        }
        let mean = 20_000 * 5 / 10;
        for (j, &c) in count.iter().enumerate() {
            assert!(
                c.abs_diff(mean) * 10 <= mean,
                "node {j} got {c} stripes, mean {mean}: {count:?}"
            );
        }
    }

    /// Stripes that change node between two node sets.
    fn moved(a: &Placement, b: &Placement, ids: &[[u8; 32]]) -> (usize, Vec<String>, Vec<String>) {
        let (x, y) = (assignment(a, ids, 5), assignment(b, ids, 5));
        let moved = x.iter().zip(&y).filter(|(u, v)| u != v).count();
        (moved, x, y)
    }

    #[test]
    fn adding_or_removing_a_node_moves_little() {
        let ids = ids(20_000, 5);
        let ten = Placement::new(&names(10)).expect("placement");
        let eleven = Placement::new(&names(11)).expect("placement");
        let new = "10.0.0.10:11211";
        // Adding an 11th node: stripes that move vs stripes the new node receives.
        let (moved_add, _, after) = moved(&ten, &eleven, &ids);
        let gained = after.iter().filter(|s| *s == new).count();
        // Removing node 3 of 10: stripes that move vs stripes node 3 held.
        let mut nine_names = names(10);
        let gone = nine_names.remove(3);
        let nine = Placement::new(&nine_names).expect("placement");
        let (moved_del, before, _) = moved(&ten, &nine, &ids);
        let lost = before.iter().filter(|s| **s == gone).count();
        let add_factor = moved_add as f64 / gained as f64;
        let del_factor = moved_del as f64 / lost as f64;
        eprintln!("movement: add {moved_add}/{gained} = {add_factor:.3}, remove {moved_del}/{lost} = {del_factor:.3}");
        // The moved node's own stripes always move; cascades add the rest.
        assert!(moved_add >= gained && moved_del >= lost);
        assert!(
            add_factor <= BOUND && del_factor <= BOUND,
            "add {add_factor:.3} del {del_factor:.3}"
        );
    }

    /// Bound on the movement factor (measured: 1.264 adding, 1.297 removing; module docs).
    const BOUND: f64 = 1.35;

    #[test]
    fn deterministic_across_runs() {
        let p = Placement::new(&names(10)).expect("placement");
        let mut id = [0u8; 32];
        for (i, b) in id.iter_mut().enumerate() {
            *b = i as u8;
        }
        assert_eq!(p.nodes_for(&id, 5), EXPECTED);
        assert_eq!(p.nodes_for(&[0xff; 32], 12), EXPECTED_WRAP);
    }

    const EXPECTED: [usize; 5] = [4, 6, 8, 3, 2];
    const EXPECTED_WRAP: [usize; 12] = [1, 4, 0, 9, 3, 7, 2, 5, 8, 6, 8, 9];
}
