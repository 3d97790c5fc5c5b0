//! The cluster manifest (genesis): members, keys, admin keys and parameters.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::config::Params;
use crate::types::{Digest, PublicKey, ReplicaId};

/// One replica as the manifest lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaInfo {
    /// Its id: its position in the list.
    pub id: ReplicaId,
    /// The key that signs its votes and replies.
    pub public_key: PublicKey,
    /// Where peers reach it (`host:port`); opaque to the core.
    pub address: String,
}

/// The genesis description of a cluster. Its hash is the `cluster_id` that every signature binds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// A human-readable name; part of the hash, so two clusters of the same keys differ.
    pub name: String,
    /// Replicas `0..n`, in id order.
    pub replicas: Vec<ReplicaInfo>,
    /// Keys allowed to sign admin operations.
    pub admin_keys: Vec<PublicKey>,
    /// Protocol parameters.
    pub params: Params,
}

impl Manifest {
    /// A manifest whose replicas `0..n` have these keys and addresses, in order, and no admin
    /// keys.
    ///
    /// ```
    /// use raft_bft::{config::Params, crypto::KeyPair, manifest::{Cluster, Manifest}};
    /// let keys: Vec<KeyPair> = (1..=4).map(|i| KeyPair::from_seed([i; 32])).collect();
    /// let manifest = Manifest::new(
    ///     "demo",
    ///     keys.iter().enumerate().map(|(i, k)| (k.public(), format!("127.0.0.1:{}", 7000 + i))),
    ///     Params::default(),
    /// );
    /// let cluster = Cluster::new(manifest)?;
    /// assert_eq!((cluster.n(), cluster.f(), cluster.quorum()), (4, 1, 3));
    /// # Ok::<(), raft_bft::manifest::ManifestError>(())
    /// ```
    pub fn new(
        name: impl Into<String>,
        replicas: impl IntoIterator<Item = (PublicKey, String)>,
        params: Params,
    ) -> Manifest {
        Manifest {
            name: name.into(),
            replicas: replicas
                .into_iter()
                .enumerate()
                .map(|(i, (public_key, address))| ReplicaInfo {
                    id: ReplicaId(i as u32),
                    public_key,
                    address,
                })
                .collect(),
            admin_keys: Vec::new(),
            params,
        }
    }
}

/// Why a manifest cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// No replicas.
    #[error("the manifest lists no replicas")]
    Empty,
    /// Ids must be `0..n` in order.
    #[error("replica at position {position} has id {id}; ids must be 0..n in order")]
    IdOutOfOrder {
        /// Position in the list.
        position: usize,
        /// The id found there.
        id: ReplicaId,
    },
    /// Two replicas share a key.
    #[error("replicas {a} and {b} share a public key")]
    DuplicateKey {
        /// First holder.
        a: ReplicaId,
        /// Second holder.
        b: ReplicaId,
    },
    /// A replica's or admin's key is unusable.
    #[error("the key of {who} is unusable: {source}")]
    BadKey {
        /// Whose key.
        who: String,
        /// What is wrong with it.
        source: crate::crypto::KeyError,
    },
    /// Bad parameters.
    #[error("invalid parameters: {0}")]
    Params(String),
    /// Encoding failure.
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
}

/// A validated manifest with the values derived from it.
#[derive(Clone, Debug)]
pub struct Cluster {
    manifest: Manifest,
    cluster_id: Digest,
    f: usize,
    quorum: usize,
    /// A deliberately broken protocol variant (simulator only).
    #[cfg(feature = "simulator")]
    mutant: Option<crate::mutant::Mutant>,
}

impl Cluster {
    /// Validates the manifest and derives `cluster_id`, `f` and the quorum size.
    pub fn new(manifest: Manifest) -> Result<Self, ManifestError> {
        if manifest.replicas.is_empty() {
            return Err(ManifestError::Empty);
        }
        for (position, r) in manifest.replicas.iter().enumerate() {
            if r.id.as_usize() != position {
                return Err(ManifestError::IdOutOfOrder { position, id: r.id });
            }
        }
        for r in &manifest.replicas {
            crate::crypto::check_public_key(&r.public_key).map_err(|source| {
                ManifestError::BadKey {
                    who: format!("replica {}", r.id),
                    source,
                }
            })?;
        }
        for (i, k) in manifest.admin_keys.iter().enumerate() {
            crate::crypto::check_public_key(k).map_err(|source| ManifestError::BadKey {
                who: format!("admin key {i}"),
                source,
            })?;
        }
        for (i, a) in manifest.replicas.iter().enumerate() {
            if let Some(b) = manifest.replicas[i + 1..]
                .iter()
                .find(|b| b.public_key == a.public_key)
            {
                return Err(ManifestError::DuplicateKey { a: a.id, b: b.id });
            }
        }
        manifest.params.validate().map_err(ManifestError::Params)?;
        let bytes = codec::encode(&manifest)?;
        let cluster_id = Digest(*blake3::hash(&bytes).as_bytes());
        let n = manifest.replicas.len();
        let f = (n - 1) / 3;
        let quorum = (n + f + 1).div_ceil(2);
        let params = &manifest.params;
        let max_prepared = params.max_prepared_per_term_change();
        let new_term = crate::message::NewTerm::worst_case_bytes(quorum, max_prepared);
        if new_term > params.max_message_bytes {
            return Err(ManifestError::Params(format!(
                "with {n} replicas a NewTerm can reach {new_term} bytes ({quorum} TermChanges of \
                 up to {max_prepared} prepared entries with {quorum} signatures each), more than \
                 max_message_bytes ({}): raise max_message_bytes, or lower checkpoint_interval \
                 or pipeline_depth",
                params.max_message_bytes
            )));
        }
        Ok(Cluster {
            manifest,
            cluster_id,
            f,
            quorum,
            #[cfg(feature = "simulator")]
            mutant: None,
        })
    }

    /// Breaks the protocol on purpose for the whole cluster (simulator only): see
    /// [`Mutant`](crate::mutant::Mutant).
    #[cfg(feature = "simulator")]
    pub(crate) fn with_mutant(mut self, mutant: crate::mutant::Mutant) -> Self {
        if mutant == crate::mutant::Mutant::QuorumOneShort {
            self.quorum = self.quorum.saturating_sub(1).max(1);
        }
        self.mutant = Some(mutant);
        self
    }

    /// True if the cluster runs with this mutant (always false without the simulator).
    #[cfg(feature = "simulator")]
    pub(crate) fn has_mutant(&self, mutant: crate::mutant::Mutant) -> bool {
        self.mutant == Some(mutant)
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The protocol parameters.
    pub fn params(&self) -> &Params {
        &self.manifest.params
    }

    /// `blake3(manifest bytes)`.
    pub fn cluster_id(&self) -> &Digest {
        &self.cluster_id
    }

    /// Number of replicas.
    pub fn n(&self) -> usize {
        self.manifest.replicas.len()
    }

    /// Faults tolerated: `(n - 1) / 3`.
    pub fn f(&self) -> usize {
        self.f
    }

    /// Quorum size `ceil((n + f + 1) / 2)`; `2f + 1` for `n = 3f + 1`.
    pub fn quorum(&self) -> usize {
        self.quorum
    }

    /// The public key of a member, or `None` for a non-member.
    pub fn key_of(&self, id: ReplicaId) -> Option<&PublicKey> {
        self.manifest
            .replicas
            .get(id.as_usize())
            .map(|r| &r.public_key)
    }

    /// All replica ids.
    pub fn replica_ids(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        (0..self.n() as u32).map(ReplicaId)
    }

    /// The leader of `term`: `term mod n`.
    pub fn leader_of(&self, term: crate::types::Term) -> ReplicaId {
        ReplicaId((term.0 % self.n() as u64) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KeyPair;

    fn manifest(n: usize) -> Manifest {
        Manifest {
            name: "test".into(),
            replicas: (0..n)
                .map(|i| ReplicaInfo {
                    id: ReplicaId(i as u32),
                    public_key: KeyPair::from_seed([i as u8; 32]).public(),
                    address: format!("127.0.0.1:{}", 7000 + i),
                })
                .collect(),
            admin_keys: vec![],
            params: Params::default(),
        }
    }

    #[test]
    fn quorum_sizes() {
        for (n, f, q) in [(1, 0, 1), (4, 1, 3), (5, 1, 4), (7, 2, 5), (10, 3, 7)] {
            let c = Cluster::new(manifest(n)).unwrap();
            assert_eq!((c.f(), c.quorum()), (f, q), "n={n}");
        }
    }

    #[test]
    fn cluster_id_binds_every_field() {
        let a = Cluster::new(manifest(4)).unwrap();
        let mut m = manifest(4);
        m.name = "other".into();
        assert_ne!(a.cluster_id(), Cluster::new(m).unwrap().cluster_id());
        let mut m = manifest(4);
        m.params.pipeline_depth = 3;
        assert_ne!(a.cluster_id(), Cluster::new(m).unwrap().cluster_id());
    }

    #[test]
    fn refuses_bad_manifests() {
        let mut m = manifest(4);
        m.replicas[2].id = ReplicaId(7);
        assert!(matches!(
            Cluster::new(m),
            Err(ManifestError::IdOutOfOrder { .. })
        ));
        let mut m = manifest(4);
        m.replicas[3].public_key = m.replicas[0].public_key;
        assert!(matches!(
            Cluster::new(m),
            Err(ManifestError::DuplicateKey { .. })
        ));
        assert!(matches!(
            Cluster::new(manifest(0)),
            Err(ManifestError::Empty)
        ));
        // A small-order key (the identity point) would let anyone forge that replica's votes.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut m = manifest(4);
        m.replicas[1].public_key = crate::types::PublicKey(identity);
        assert!(matches!(
            Cluster::new(m),
            Err(ManifestError::BadKey {
                source: crate::crypto::KeyError::SmallOrder,
                ..
            })
        ));
        let mut m = manifest(4);
        m.admin_keys = vec![crate::types::PublicKey([0xff; 32])];
        assert!(matches!(Cluster::new(m), Err(ManifestError::BadKey { .. })));
    }

    /// A correct leader's largest NewTerm, built for real.
    fn largest_new_term(quorum: usize, max_prepared: u64) -> u64 {
        use crate::message::*;
        use crate::types::{Index, Signature, Term};
        let sigs: Vec<(ReplicaId, Signature)> = (0..quorum)
            .map(|i| (ReplicaId(i as u32 + 1_000_000), Signature([0xab; 64])))
            .collect();
        let prepared = |i: u64| PreparedEntry {
            certificate: Certificate {
                subject: VoteSubject {
                    phase: Phase::PreAppend,
                    term: Term(1 << 40),
                    index: Index((1 << 40) + i),
                    entry_hash: Digest([7; 32]),
                    state_digest: None,
                },
                sigs: sigs.clone(),
            },
            header: EntryHeader {
                term: Term(1 << 40),
                index: Index((1 << 40) + i),
                prev_hash: Digest([8; 32]),
                tx_root: Digest([9; 32]),
            },
        };
        let stable = Certificate {
            subject: VoteSubject {
                phase: Phase::Commit,
                term: Term(1 << 40),
                index: Index(1 << 40),
                entry_hash: Digest([1; 32]),
                state_digest: Some(Digest([2; 32])),
            },
            sigs: sigs.clone(),
        };
        let term_change = TermChange {
            new_term: Term((1 << 40) + 1),
            stable: Some(stable),
            prepared: (0..max_prepared).map(prepared).collect(),
            replica: ReplicaId(1_000_000),
            sig: Signature([1; 64]),
        };
        let new_term = NewTerm {
            new_term: Term((1 << 40) + 1),
            term_changes: vec![term_change; quorum],
            chosen: (0..max_prepared)
                .map(|i| (Index((1 << 40) + i), Digest([3; 32])))
                .collect(),
            leader_sig: Signature([2; 64]),
        };
        codec::encode(&crate::message::ReplicaMessage::NewTerm(
            std::sync::Arc::new(new_term),
        ))
        .expect("encode")
        .len() as u64
    }

    #[test]
    fn the_new_term_bound_holds_and_is_tight() {
        for (quorum, max_prepared) in [(3, 288), (5, 288), (7, 40), (21, 288)] {
            let real = largest_new_term(quorum, max_prepared);
            let bound = crate::message::NewTerm::worst_case_bytes(quorum, max_prepared);
            assert!(real <= bound, "quorum {quorum}: {real} > {bound}");
            assert!(
                bound <= real + real / 20,
                "quorum {quorum}: {bound} is loose for {real}"
            );
        }
    }

    #[test]
    fn parameters_under_which_a_new_term_cannot_be_sent_are_refused() {
        // n = 31 with the defaults fits in 16 MiB; n = 43 does not (its NewTerm is ~18 MB).
        Cluster::new(manifest(31)).expect("31 replicas with the defaults");
        assert!(matches!(
            Cluster::new(manifest(43)),
            Err(ManifestError::Params(_))
        ));
        let mut big_interval = manifest(4);
        big_interval.params.checkpoint_interval = 1 << 16;
        let refused = Cluster::new(big_interval).expect_err("a TermChange of ~47 MB");
        assert!(
            refused.to_string().contains("max_message_bytes"),
            "{refused}"
        );
    }
}
