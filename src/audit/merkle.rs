//! RFC 9162 Merkle trees: an incremental frontier for the writer and verifier (O(log n) memory),
//! and inclusion proofs computed from a list of leaf hashes.

use super::chain::{node_hash, Hash};
use sha2::{Digest, Sha256};

/// The roots of the perfect subtrees that make up a tree of `size` leaves: one per set bit of
/// `size`, largest first. Appending is a binary-counter carry.
#[derive(Debug, Clone, Default)]
pub struct Frontier {
    size: u64,
    /// `(height, root)`, heights strictly decreasing.
    peaks: Vec<(u32, Hash)>,
}

impl Frontier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// `(height, root)` of each perfect subtree, largest first.
    pub fn peaks(&self) -> &[(u32, Hash)] {
        &self.peaks
    }

    /// The frontier of a tree of `size` leaves from its peaks; `None` unless the heights are
    /// exactly the set bits of `size`, largest first.
    pub fn from_peaks(size: u64, peaks: Vec<(u32, Hash)>) -> Option<Frontier> {
        let bits: Vec<u32> = (0..64u32).rev().filter(|b| size & (1 << b) != 0).collect();
        let heights: Vec<u32> = peaks.iter().map(|(h, _)| *h).collect();
        (bits == heights).then_some(Frontier { size, peaks })
    }

    pub fn push(&mut self, leaf: Hash) {
        let mut node = (0u32, leaf);
        while let Some(&(h, left)) = self.peaks.last() {
            if h != node.0 {
                break;
            }
            self.peaks.pop();
            node = (h + 1, node_hash(&left, &node.1));
        }
        self.peaks.push(node);
        self.size += 1;
    }

    /// MTH of the leaves pushed so far; the empty tree's root is SHA-256 of nothing.
    pub fn root(&self) -> Hash {
        let mut it = self.peaks.iter().rev();
        let Some(&(_, mut acc)) = it.next() else {
            return Sha256::digest([]).into();
        };
        // The RFC splits at the largest power of two below n, so the smaller peaks nest
        // right-most: combine from the smallest upwards.
        for (_, left) in it {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

/// MTH(D[lo..hi]) computed directly (used by proofs; O(n)).
fn subtree_root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let k = largest_power_of_two_below(n as u64) as usize;
            node_hash(&subtree_root(&leaves[..k]), &subtree_root(&leaves[k..]))
        }
    }
}

fn largest_power_of_two_below(n: u64) -> u64 {
    // n >= 2
    let mut k = 1u64;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// RFC 9162 2.1.3.1 PATH(m, D[n]): the inclusion proof of leaf `m` in the tree of all `leaves`.
pub fn inclusion_proof(m: usize, leaves: &[Hash]) -> Option<Vec<Hash>> {
    if m >= leaves.len() {
        return None;
    }
    let mut out = Vec::new();
    let (mut lo, mut hi, mut idx) = (0usize, leaves.len(), m);
    // Iterative form of the recursion; siblings are collected top-down, then reversed so the
    // proof lists them leaf-upwards as the RFC does.
    while hi - lo > 1 {
        let k = largest_power_of_two_below((hi - lo) as u64) as usize;
        if idx < k {
            out.push(subtree_root(&leaves[lo + k..hi]));
            hi = lo + k;
        } else {
            out.push(subtree_root(&leaves[lo..lo + k]));
            lo += k;
            idx -= k;
        }
    }
    out.reverse();
    Some(out)
}

/// [`inclusion_proof`] for a tree whose first `prefix.size()` leaves are known only by their
/// frontier (retention removed them) and whose later leaves are `leaves`; `m` counts from the
/// tree's start and must be one of the later leaves. Every sibling such a proof needs is a
/// frontier peak, a subtree of later leaves, or one that straddles both and splits into those.
pub fn inclusion_proof_after(m: u64, prefix: &Frontier, leaves: &[Hash]) -> Option<Vec<Hash>> {
    let n = prefix.size();
    let size = n + leaves.len() as u64;
    if m < n || m >= size {
        return None;
    }
    let mut out = Vec::new();
    let (mut lo, mut hi) = (0u64, size);
    while hi - lo > 1 {
        let k = largest_power_of_two_below(hi - lo);
        if m - lo < k {
            out.push(sparse_root(lo + k, hi, prefix, leaves)?);
            hi = lo + k;
        } else {
            out.push(sparse_root(lo, lo + k, prefix, leaves)?);
            lo += k;
        }
    }
    out.reverse();
    Some(out)
}

/// MTH of leaves `lo..hi` of a tree known as `prefix` peaks followed by `leaves`.
fn sparse_root(lo: u64, hi: u64, prefix: &Frontier, leaves: &[Hash]) -> Option<Hash> {
    let n = prefix.size();
    if lo >= n {
        let a = usize::try_from(lo - n).ok()?;
        let b = usize::try_from(hi - n).ok()?;
        return Some(subtree_root(leaves.get(a..b)?));
    }
    // A peak covers exactly its aligned range.
    let mut start = 0u64;
    for (h, root) in prefix.peaks() {
        let end = start + (1u64 << h);
        if start == lo && end == hi {
            return Some(*root);
        }
        start = end;
    }
    if hi - lo < 2 {
        return None;
    }
    let k = largest_power_of_two_below(hi - lo);
    Some(node_hash(
        &sparse_root(lo, lo + k, prefix, leaves)?,
        &sparse_root(lo + k, hi, prefix, leaves)?,
    ))
}

/// RFC 9162 2.1.3.2: the root implied by an inclusion proof, or `None` if the proof is malformed.
pub fn root_from_inclusion(index: u64, size: u64, leaf: &Hash, path: &[Hash]) -> Option<Hash> {
    if index >= size {
        return None;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if snode == 0 {
            return None;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    (snode == 0).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::leaf_hash;

    #[test]
    fn proofs_after_a_removed_prefix_match_full_proofs() {
        let leaves: Vec<Hash> = (0..41u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for n in 1..leaves.len() {
            let mut prefix = Frontier::new();
            for l in &leaves[..n] {
                prefix.push(*l);
            }
            let copy = Frontier::from_peaks(prefix.size(), prefix.peaks().to_vec()).unwrap();
            for size in n + 1..=leaves.len() {
                for m in n..size {
                    assert_eq!(
                        inclusion_proof_after(m as u64, &copy, &leaves[n..size]),
                        inclusion_proof(m, &leaves[..size]),
                        "n={n} size={size} m={m}"
                    );
                }
            }
        }
        assert!(Frontier::from_peaks(6, vec![(2, [0; 32])]).is_none());
    }

    #[test]
    fn frontier_matches_recursive_definition_and_proofs_verify() {
        let leaves: Vec<Hash> = (0..37u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut f = Frontier::new();
        for n in 1..=leaves.len() {
            f.push(leaves[n - 1]);
            let root = subtree_root(&leaves[..n]);
            assert_eq!(f.root(), root, "size {n}");
            for m in 0..n {
                let p = inclusion_proof(m, &leaves[..n]).unwrap();
                assert_eq!(
                    root_from_inclusion(m as u64, n as u64, &leaves[m], &p),
                    Some(root),
                    "m={m} n={n}"
                );
                if n > 1 {
                    let other = leaves[(m + 1) % n];
                    assert_ne!(
                        root_from_inclusion(m as u64, n as u64, &other, &p),
                        Some(root)
                    );
                }
            }
        }
    }
}
