//! Domain-separated hashing (blake3) and signatures (ed25519 with ZIP-215 validity rules).
//!
//! Every signature is over `blake3(domain_tag || cluster_id || fields)`, with one tag per message
//! kind, so that no signature can be replayed across kinds or clusters.
//!
//! # One verdict for every signature
//!
//! Correct replicas must agree on whether a signature is valid, whichever path checks it. Plain
//! ed25519 verification is *cofactorless* in most libraries while batch verification is usually
//! *cofactored*; a signature crafted with a small-order (torsion) component then passes one check
//! and fails the other, which would let a Byzantine client split correct replicas. We use the
//! ZIP-215 rules (implemented by `ed25519-zebra`) on every path: single and batch verification are
//! both cofactored and accept exactly the same set of signatures. Non-canonical `s` is rejected;
//! points are decoded as ZIP-215 prescribes. Signing uses `ed25519-dalek`, whose signatures are
//! standard and therefore valid under ZIP-215.

use ed25519_dalek::Signer as _;
use ed25519_zebra::{batch, VerificationKey, VerificationKeyBytes};
use rand_core::CryptoRng;

use crate::types::{Digest, PublicKey, Signature};

/// The kinds of value that are hashed or signed, each with its own domain tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    /// The cluster manifest (its hash is the `cluster_id`).
    Manifest,
    /// A client transaction id.
    Tx,
    /// An entry hash.
    Entry,
    /// An inner Merkle node.
    MerkleNode,
    /// A leader's signature on a PreAppend.
    PreAppend,
    /// A replica's vote (all three phases; the phase is a field).
    Vote,
    /// One client's reply inside an entry's reply batch (a Merkle leaf).
    ReplyLeaf,
    /// A replica's signature over the root of an entry's reply batch.
    ReplyBatch,
    /// The running state digest after an entry.
    StateDigest,
    /// A replica's TermChange message.
    TermChange,
    /// An idle leader's heartbeat.
    Heartbeat,
    /// A new leader's NewTerm.
    NewTerm,
    /// The replicated per-client table, hashed into the state digest at checkpoints.
    ClientTable,
}

impl Domain {
    fn tag(self) -> &'static [u8] {
        match self {
            Domain::Manifest => b"raft-bft/v1/manifest",
            Domain::Tx => b"raft-bft/v1/tx",
            Domain::Entry => b"raft-bft/v1/entry",
            Domain::MerkleNode => b"raft-bft/v1/merkle-node",
            Domain::PreAppend => b"raft-bft/v1/pre-append",
            Domain::Vote => b"raft-bft/v1/vote",
            Domain::ReplyLeaf => b"raft-bft/v1/reply-leaf",
            Domain::ReplyBatch => b"raft-bft/v1/reply-batch",
            Domain::StateDigest => b"raft-bft/v1/state-digest",
            Domain::TermChange => b"raft-bft/v1/term-change",
            Domain::Heartbeat => b"raft-bft/v1/heartbeat",
            Domain::ClientTable => b"raft-bft/v1/client-table",
            Domain::NewTerm => b"raft-bft/v1/new-term",
        }
    }
}

/// Builds a domain-separated hash of `domain_tag || cluster_id || fields` with unambiguous
/// field framing: fixed-size fields are written as they are, variable-size ones with a length
/// prefix.
///
/// The tag and cluster id select a blake3 *key* (`blake3::derive_key` of the tag, keyed again
/// with the cluster id), and the fields are hashed in keyed mode: this is blake3's own domain
/// separation, and it keeps the 70-byte prefix out of every hashed message (a Merkle node then
/// fits in one compression). Fields are gathered in a small buffer and hashed once: a
/// `blake3::Hasher` is about 2 KB, too large to carry through a builder on the hot path.
pub struct Transcript {
    key: [u8; 32],
    /// Inline for the common small transcripts (votes, tx ids of small ops, reply leaves).
    buf: smallvec::SmallVec<[u8; 128]>,
}

const DOMAINS: [Domain; 13] = [
    Domain::Manifest,
    Domain::Tx,
    Domain::Entry,
    Domain::MerkleNode,
    Domain::PreAppend,
    Domain::Vote,
    Domain::ReplyLeaf,
    Domain::ReplyBatch,
    Domain::StateDigest,
    Domain::TermChange,
    Domain::Heartbeat,
    Domain::NewTerm,
    Domain::ClientTable,
];

fn domain_key(domain: Domain, cluster_id: &Digest) -> [u8; 32] {
    let context = std::str::from_utf8(domain.tag()).unwrap_or("raft-bft/v1/invalid");
    let tag_key = blake3::derive_key(context, b"raft-bft domain");
    *blake3::keyed_hash(&tag_key, &cluster_id.0).as_bytes()
}

thread_local! {
    /// Keys of the last cluster seen by this thread: deriving them costs two hashes.
    static KEYS: std::cell::RefCell<Option<(Digest, [[u8; 32]; DOMAINS.len()])>> =
        const { std::cell::RefCell::new(None) };
}

fn slot(domain: Domain) -> usize {
    // Exhaustive: a new domain must get its own slot here (and in `DOMAINS`).
    match domain {
        Domain::Manifest => 0,
        Domain::Tx => 1,
        Domain::Entry => 2,
        Domain::MerkleNode => 3,
        Domain::PreAppend => 4,
        Domain::Vote => 5,
        Domain::ReplyLeaf => 6,
        Domain::ReplyBatch => 7,
        Domain::StateDigest => 8,
        Domain::TermChange => 9,
        Domain::Heartbeat => 10,
        Domain::NewTerm => 11,
        Domain::ClientTable => 12,
    }
}

fn cached_key(domain: Domain, cluster_id: &Digest) -> [u8; 32] {
    let slot = slot(domain);
    KEYS.with(|keys| {
        let mut keys = keys.borrow_mut();
        match &*keys {
            Some((cid, table)) if cid == cluster_id => table[slot],
            _ => {
                let table = DOMAINS.map(|d| domain_key(d, cluster_id));
                let key = table[slot];
                *keys = Some((*cluster_id, table));
                key
            }
        }
    })
}

impl Transcript {
    /// Starts a transcript for `domain` in the cluster `cluster_id`.
    pub fn new(domain: Domain, cluster_id: &Digest) -> Self {
        Transcript {
            key: cached_key(domain, cluster_id),
            buf: smallvec::SmallVec::new(),
        }
    }

    /// Starts a transcript with no cluster (only for the manifest itself).
    pub fn unbound(domain: Domain) -> Self {
        Self::new(domain, &Digest::ZERO)
    }

    /// Appends a `u64` (little-endian).
    pub fn u64(mut self, v: u64) -> Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a 32-byte value.
    pub fn fixed32(mut self, v: &[u8; 32]) -> Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// Appends a variable-length byte string, prefixed by its length.
    pub fn bytes(mut self, v: &[u8]) -> Self {
        self.buf.extend_from_slice(&(v.len() as u64).to_le_bytes());
        self.buf.extend_from_slice(v);
        self
    }

    /// Appends an optional 32-byte value (a presence byte, then the value).
    pub fn opt32(mut self, v: Option<&[u8; 32]>) -> Self {
        match v {
            None => self.buf.push(0),
            Some(v) => {
                self.buf.push(1);
                self.buf.extend_from_slice(v);
            }
        }
        self
    }

    /// `H(domain, cluster_id, left || right)` for two 32-byte values, without allocating: the
    /// same digest as `Transcript::new(domain, cluster_id).fixed32(left).fixed32(right)`.
    pub fn hash_pair(domain: Domain, cluster_id: &Digest, left: &Digest, right: &Digest) -> Digest {
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(&left.0);
        block[32..].copy_from_slice(&right.0);
        Digest(*blake3::keyed_hash(&cached_key(domain, cluster_id), &block).as_bytes())
    }

    /// The digest of everything appended.
    pub fn finish(self) -> Digest {
        Digest(*blake3::keyed_hash(&self.key, &self.buf).as_bytes())
    }
}

#[cfg(test)]
mod transcript_tests {
    use super::*;

    #[test]
    fn domains_and_clusters_separate() {
        let a = Digest([1; 32]);
        let b = Digest([2; 32]);
        let h = |d, c: &Digest| Transcript::new(d, c).u64(7).finish();
        assert_ne!(h(Domain::Tx, &a), h(Domain::Entry, &a));
        assert_ne!(h(Domain::Tx, &a), h(Domain::Tx, &b));
        // Alternating clusters on one thread must not reuse the other's keys.
        assert_eq!(h(Domain::Tx, &a), h(Domain::Tx, &a));
        let keys: std::collections::HashSet<_> =
            DOMAINS.iter().map(|d| domain_key(*d, &a)).collect();
        assert_eq!(keys.len(), DOMAINS.len());
        for (i, d) in DOMAINS.iter().enumerate() {
            assert_eq!(slot(*d), i);
        }
    }

    #[test]
    fn hash_pair_matches_the_builder() {
        let c = Digest([1; 32]);
        let (l, r) = (Digest([2; 32]), Digest([3; 32]));
        assert_eq!(
            Transcript::hash_pair(Domain::MerkleNode, &c, &l, &r),
            Transcript::new(Domain::MerkleNode, &c)
                .fixed32(&l.0)
                .fixed32(&r.0)
                .finish()
        );
    }

    #[test]
    fn framing_is_unambiguous() {
        let c = Digest([1; 32]);
        let x = Transcript::new(Domain::Tx, &c)
            .bytes(b"ab")
            .bytes(b"c")
            .finish();
        let y = Transcript::new(Domain::Tx, &c)
            .bytes(b"a")
            .bytes(b"bc")
            .finish();
        assert_ne!(x, y);
    }
}

/// A replica's or client's signing key.
#[derive(Clone)]
pub struct KeyPair {
    secret: ed25519_dalek::SigningKey,
    public: PublicKey,
}

impl KeyPair {
    /// The key pair for a 32-byte secret seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let secret = ed25519_dalek::SigningKey::from_bytes(&seed);
        let public = PublicKey(secret.verifying_key().to_bytes());
        KeyPair { secret, public }
    }

    /// A fresh key pair drawn from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        Self::from_seed(seed)
    }

    /// The 32-byte secret seed (for writing a key file).
    pub fn seed(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// Signs a transcript digest.
    pub fn sign(&self, digest: &Digest) -> Signature {
        Signature(self.secret.sign(&digest.0).to_bytes())
    }
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair({:?})", self.public)
    }
}

/// Why a public key cannot serve as a replica or admin key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The bytes are not a point on the curve.
    #[error("not a curve point")]
    NotAPoint,
    /// The encoding is not the canonical one of its point (two encodings of one key).
    #[error("non-canonical encoding")]
    NonCanonical,
    /// The point has small order: anyone can forge signatures that verify under it.
    #[error("small-order (weak) key")]
    SmallOrder,
}

/// Checks that a key is a canonical encoding of a point of large order. Under ZIP-215 a
/// small-order key accepts forged signatures, so no such key may be a member's.
pub fn check_public_key(key: &PublicKey) -> Result<(), KeyError> {
    let compressed = curve25519_dalek::edwards::CompressedEdwardsY(key.0);
    let point = compressed.decompress().ok_or(KeyError::NotAPoint)?;
    if point.compress() != compressed {
        return Err(KeyError::NonCanonical);
    }
    if point.is_small_order() {
        return Err(KeyError::SmallOrder);
    }
    Ok(())
}

/// Why a signature was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The public key bytes do not decode to a curve point.
    #[error("malformed public key")]
    MalformedKey,
    /// The signature does not verify under ZIP-215 rules.
    #[error("invalid signature")]
    Invalid,
}

/// Verifies one signature over a transcript digest under ZIP-215 rules.
pub fn verify(key: &PublicKey, digest: &Digest, sig: &Signature) -> Result<(), SignatureError> {
    let vk = VerificationKey::try_from(key.0).map_err(|_| SignatureError::MalformedKey)?;
    vk.verify(&ed25519_zebra::Signature::from_bytes(&sig.0), &digest.0)
        .map_err(|_| SignatureError::Invalid)
}

/// Verifies many signatures at once. The verdict for every item is exactly the verdict that
/// [`verify`] gives it: if the batch fails, each item is checked alone to find the bad ones.
#[derive(Default)]
pub struct BatchVerifier {
    items: Vec<(PublicKey, Digest, Signature)>,
}

impl BatchVerifier {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `n` items.
    pub fn with_capacity(n: usize) -> Self {
        BatchVerifier {
            items: Vec::with_capacity(n),
        }
    }

    /// Adds one item; its position is its index in the result of [`BatchVerifier::verify`].
    pub fn push(&mut self, key: PublicKey, digest: Digest, sig: Signature) {
        self.items.push((key, digest, sig));
    }

    /// Number of queued items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True if nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Checks every item. Returns one verdict per item, in order.
    ///
    /// `rng` draws the batch's random coefficients. They must be unpredictable to signers: a
    /// signer who knows them can craft two invalid signatures whose errors cancel in the batch
    /// equation, which single verification would refuse. With secret coefficients the verdict
    /// equals [`verify`]'s up to a negligible probability.
    pub fn verify<R: CryptoRng>(self, rng: &mut R) -> Vec<Result<(), SignatureError>> {
        if self.items.len() <= 1 {
            return self.items.iter().map(|(k, d, s)| verify(k, d, s)).collect();
        }
        let mut batch = batch::Verifier::new();
        for (k, d, s) in &self.items {
            batch.queue((
                VerificationKeyBytes::from(k.0),
                ed25519_zebra::Signature::from_bytes(&s.0),
                &d.0,
            ));
        }
        if batch.verify(&mut *rng).is_ok() {
            return vec![Ok(()); self.items.len()];
        }
        self.items.iter().map(|(k, d, s)| verify(k, d, s)).collect()
    }

    /// True if every item verifies.
    pub fn verify_all<R: CryptoRng>(self, rng: &mut R) -> bool {
        self.verify(rng).iter().all(Result::is_ok)
    }
}

/// A deterministic CSPRNG for batch coefficients, seeded by the caller.
pub type CoefficientRng = chacha20::ChaCha20Rng;

/// Creates the coefficient RNG from a seed supplied by the caller (the OS in production, the
/// simulator's seed in tests), so that the core stays deterministic given its inputs.
pub fn coefficient_rng(seed: [u8; 32]) -> CoefficientRng {
    use rand_core::SeedableRng;
    chacha20::ChaCha20Rng::from_seed(seed)
}
