//! Merkle trees over 32-byte leaves.
//!
//! Used for the root of an entry's tx ids and for batched replies (one signature per entry binds
//! every client's reply through its inclusion proof).
//!
//! Leaves must themselves be domain-separated digests (tx ids, reply leaves): they are used as
//! they are, and inner nodes are hashed under their own domain, so no inner node can pass for a
//! leaf or the other way round without a hash collision across domains.

use serde::{Deserialize, Serialize};

use crate::crypto::{Domain, Transcript};
use crate::types::Digest;

fn node_hash(cluster_id: &Digest, left: &Digest, right: &Digest) -> Digest {
    Transcript::hash_pair(Domain::MerkleNode, cluster_id, left, right)
}

/// The Merkle root of `leaves`. An odd node at the end of a level is carried up unchanged.
/// The root of no leaves is the hash of an empty node pair marker (`node(0, 0)`).
pub fn root(cluster_id: &Digest, leaves: &[Digest]) -> Digest {
    if leaves.is_empty() {
        return node_hash(cluster_id, &Digest::ZERO, &Digest::ZERO);
    }
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = parent_level(cluster_id, &level);
    }
    level[0]
}

/// The level above `level`: pairs hashed, an odd last node carried up unchanged.
fn parent_level(cluster_id: &Digest, level: &[Digest]) -> Vec<Digest> {
    level
        .chunks(2)
        .map(|pair| match pair {
            [l, r] => node_hash(cluster_id, l, r),
            [one] => *one,
            _ => unreachable!("chunks(2) yields one or two items"),
        })
        .collect()
}

/// An inclusion proof: the sibling hashes from the leaf up, and the leaf's position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleProof {
    /// The leaf's position among the leaves.
    pub position: u32,
    /// The number of leaves in the tree.
    pub leaf_count: u32,
    /// Sibling hashes, bottom-up; levels where the node has no sibling are skipped.
    #[serde(with = "packed_digests")]
    pub siblings: Vec<Digest>,
}

/// Most siblings a proof can need: a tree of at most `u32::MAX` leaves has 32 levels.
pub const MAX_PROOF_SIBLINGS: usize = 32;

/// Sibling hashes travel as one byte string (32 bytes each): one length header instead of one
/// per hash, which makes replies smaller and cheaper to encode.
mod packed_digests {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    use super::MAX_PROOF_SIBLINGS;
    use crate::types::Digest;

    pub(super) fn serialize<S: Serializer>(digests: &[Digest], s: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(digests.len() * 32);
        for d in digests {
            bytes.extend_from_slice(&d.0);
        }
        s.serialize_bytes(&bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Digest>, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        if bytes.len() % 32 != 0 || bytes.len() > MAX_PROOF_SIBLINGS * 32 {
            return Err(D::Error::custom(format!(
                "a proof's siblings take a multiple of 32 bytes, at most {}; got {}",
                MAX_PROOF_SIBLINGS * 32,
                bytes.len()
            )));
        }
        Ok(bytes
            .chunks_exact(32)
            .map(|c| {
                let mut d = [0u8; 32];
                d.copy_from_slice(c);
                Digest(d)
            })
            .collect())
    }
}

/// Builds the tree once and hands out proofs for each leaf.
pub struct MerkleTree {
    levels: Vec<Vec<Digest>>,
}

impl MerkleTree {
    /// Builds the tree over `leaves` (at least one).
    pub fn new(cluster_id: &Digest, leaves: &[Digest]) -> Self {
        let mut levels = vec![leaves.to_vec()];
        while let Some(below) = levels.last().filter(|l| l.len() > 1) {
            let above = parent_level(cluster_id, below);
            levels.push(above);
        }
        MerkleTree { levels }
    }

    /// The root; equal to [`root`] over the same leaves.
    pub fn root(&self, cluster_id: &Digest) -> Digest {
        match self.levels.last().and_then(|l| l.first()) {
            Some(r) => *r,
            None => node_hash(cluster_id, &Digest::ZERO, &Digest::ZERO),
        }
    }

    /// The inclusion proof of leaf `position`, or `None` if out of range.
    pub fn proof(&self, position: usize) -> Option<MerkleProof> {
        let leaf_count = self.levels.first()?.len();
        if position >= leaf_count {
            return None;
        }
        let mut siblings = Vec::new();
        let mut pos = position;
        for level in &self.levels[..self.levels.len() - 1] {
            let sib = pos ^ 1;
            if sib < level.len() {
                siblings.push(level[sib]);
            }
            pos /= 2;
        }
        Some(MerkleProof {
            position: position as u32,
            leaf_count: leaf_count as u32,
            siblings,
        })
    }
}

/// Recomputes the root from a leaf and its proof; `None` if the proof is malformed.
pub fn root_from_proof(cluster_id: &Digest, leaf: &Digest, proof: &MerkleProof) -> Option<Digest> {
    let mut count = proof.leaf_count as usize;
    let mut pos = proof.position as usize;
    if pos >= count {
        return None;
    }
    let mut hash = *leaf;
    let mut siblings = proof.siblings.iter();
    while count > 1 {
        let sib = pos ^ 1;
        if sib < count {
            let s = siblings.next()?;
            hash = if pos.is_multiple_of(2) {
                node_hash(cluster_id, &hash, s)
            } else {
                node_hash(cluster_id, s, &hash)
            };
        }
        pos /= 2;
        count = count.div_ceil(2);
    }
    if siblings.next().is_some() {
        return None;
    }
    Some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<Digest> {
        (0..n).map(|i| Digest([i as u8; 32])).collect()
    }

    proptest! {
        #[test]
        fn every_proof_verifies_and_binds_its_leaf(n in 1usize..70, pick in 0usize..70) {
            let cid = Digest([9; 32]);
            let ls = leaves(n);
            let tree = MerkleTree::new(&cid, &ls);
            let r = root(&cid, &ls);
            prop_assert_eq!(tree.root(&cid), r);
            let i = pick % n;
            let proof = tree.proof(i).unwrap();
            prop_assert_eq!(root_from_proof(&cid, &ls[i], &proof), Some(r));
            // Another leaf under the same proof does not reach the root.
            let other = Digest([200; 32]);
            prop_assert_ne!(root_from_proof(&cid, &other, &proof), Some(r));
        }
    }

    #[test]
    fn root_depends_on_order_and_cluster() {
        let a = leaves(3);
        let mut b = a.clone();
        b.swap(0, 1);
        let cid = Digest([1; 32]);
        assert_ne!(root(&cid, &a), root(&cid, &b));
        assert_ne!(root(&cid, &a), root(&Digest([2; 32]), &a));
    }

    #[test]
    fn proofs_encode_compactly_and_refuse_bad_sibling_bytes() {
        let cid = Digest([1; 32]);
        let ls = leaves(1024);
        let proof = MerkleTree::new(&cid, &ls).proof(5).unwrap();
        let bytes = crate::codec::encode(&proof).unwrap();
        assert!(bytes.len() < 10 * 32 + 16, "{} bytes", bytes.len());
        assert_eq!(
            crate::codec::decode::<MerkleProof>(&bytes, 1024).unwrap(),
            proof
        );
        // 33 bytes of siblings is not a whole number of hashes.
        let bad =
            crate::codec::encode(&(1u32, 2u32, serde_bytes::ByteBuf::from(vec![0u8; 33]))).unwrap();
        assert!(crate::codec::decode::<MerkleProof>(&bad, 1024).is_err());
    }

    #[test]
    fn malformed_proofs_are_refused() {
        let cid = Digest([1; 32]);
        let ls = leaves(5);
        let tree = MerkleTree::new(&cid, &ls);
        let mut p = tree.proof(4).unwrap();
        p.siblings.push(Digest::ZERO);
        assert_eq!(root_from_proof(&cid, &ls[4], &p), None);
        let p = MerkleProof {
            position: 9,
            leaf_count: 5,
            siblings: vec![],
        };
        assert_eq!(root_from_proof(&cid, &ls[0], &p), None);
    }
}
