//! Property tests of `Verifier::verify_certificate`, for clusters of 4 and 7 replicas.
//!
//! A certificate of `q` or more correct votes on one well-formed subject is accepted, for every
//! phase. Every way of getting it wrong is refused with the precise `CertificateError`: a
//! duplicate signer (even next to `q` distinct valid ones), a non-member signer, fewer than `q`
//! signatures, the wrong expected phase, a state digest present on a non-Commit / absent on a
//! Commit subject, any single field of the subject changed after signing, any single signature
//! byte changed, and votes signed for another cluster.

use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use proptest::sample::Index as Pick;
use raft_bft::config::Params;
use raft_bft::crypto::KeyPair;
use raft_bft::manifest::Cluster;
use raft_bft::message::{Certificate, Phase, Vote, VoteSubject};
use raft_bft::testing::TestCluster;
use raft_bft::types::{Digest, Index, ReplicaId, Signature, Term};
use raft_bft::verify::{CertificateError, Verifier};

struct Fixture {
    cluster: Arc<Cluster>,
    keys: Vec<KeyPair>,
}

fn build(n: usize, name: &str) -> Fixture {
    let TestCluster { cluster, keys } = TestCluster::new(name, n, Params::default());
    Fixture { cluster, keys }
}

fn fixture(n: usize) -> &'static Fixture {
    static F4: OnceLock<Fixture> = OnceLock::new();
    static F7: OnceLock<Fixture> = OnceLock::new();
    match n {
        4 => F4.get_or_init(|| build(4, "certificates")),
        7 => F7.get_or_init(|| build(7, "certificates")),
        _ => unreachable!("n is 4 or 7"),
    }
}

impl Fixture {
    fn q(&self) -> usize {
        self.cluster.quorum()
    }

    fn n(&self) -> usize {
        self.cluster.n()
    }

    /// The votes of `signers` on `subject`, as correct replicas sign them.
    fn sigs(&self, subject: VoteSubject, signers: &[u32]) -> Vec<(ReplicaId, Signature)> {
        signers
            .iter()
            .map(|&r| {
                let v = Vote::sign(
                    self.cluster.cluster_id(),
                    &self.keys[r as usize],
                    ReplicaId(r),
                    subject,
                );
                (v.replica, v.sig)
            })
            .collect()
    }

    fn check(
        &self,
        cert: &Certificate,
        expected: Phase,
        seed: [u8; 32],
    ) -> Result<(), CertificateError> {
        Verifier::new(Arc::clone(&self.cluster), seed).verify_certificate(cert, expected)
    }
}

const PHASES: [Phase; 3] = [Phase::PreAppend, Phase::Append, Phase::Commit];

fn phase() -> impl Strategy<Value = Phase> {
    prop::sample::select(PHASES.to_vec())
}

/// A well-formed subject: a state digest exactly for Commit.
fn subject_of(phase: Phase) -> impl Strategy<Value = VoteSubject> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
    )
        .prop_map(move |(term, index, hash, digest)| VoteSubject {
            phase,
            term: Term(term),
            index: Index(index),
            entry_hash: Digest(hash),
            state_digest: (phase == Phase::Commit).then_some(Digest(digest)),
        })
}

fn subject() -> impl Strategy<Value = VoteSubject> {
    phase().prop_flat_map(subject_of)
}

/// The cluster size, and the replicas in a random order (the first `k` sign).
fn cluster_and_order() -> impl Strategy<Value = (usize, Vec<u32>)> {
    prop::sample::select(vec![4usize, 7]).prop_flat_map(|n| {
        (
            Just(n),
            Just((0..n as u32).collect::<Vec<_>>()).prop_shuffle(),
        )
    })
}

/// How many sign: `q..=n`.
fn signer_count(f: &Fixture, pick: &Pick) -> usize {
    f.q() + pick.index(f.n() - f.q() + 1)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

#[derive(Clone, Copy, Debug)]
enum Field {
    Term,
    Index,
    EntryHash,
    StateDigest,
    Phase,
}

fn flip(mut d: Digest, byte: &Pick, xor: u8) -> Digest {
    d.0[byte.index(32)] ^= xor;
    d
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_quorum_of_correct_votes_is_accepted(
        (n, order) in cluster_and_order(),
        subject in subject(),
        count in any::<Pick>(),
        seed in any::<[u8; 32]>(),
    ) {
        let f = fixture(n);
        let k = signer_count(f, &count);
        let cert = Certificate { subject, sigs: f.sigs(subject, &order[..k]) };
        prop_assert_eq!(f.check(&cert, subject.phase, seed), Ok(()));
    }

    #[test]
    fn a_duplicate_signer_is_refused_even_beside_a_quorum(
        (n, order) in cluster_and_order(),
        subject in subject(),
        count in any::<Pick>(),
        which in any::<Pick>(),
        at in any::<Pick>(),
        garbage_sig in any::<bool>(),
        seed in any::<[u8; 32]>(),
    ) {
        let f = fixture(n);
        let k = signer_count(f, &count);
        let mut sigs = f.sigs(subject, &order[..k]);
        let (dup, sig) = sigs[which.index(k)];
        // The same vote again, or the same replica with another signature.
        let sig = if garbage_sig { Signature([0x5a; 64]) } else { sig };
        sigs.insert(at.index(k + 1), (dup, sig));
        let cert = Certificate { subject, sigs };
        prop_assert_eq!(
            f.check(&cert, subject.phase, seed),
            Err(CertificateError::DuplicateSigner(dup))
        );
    }

    #[test]
    fn a_non_member_signer_is_refused_even_beside_a_quorum(
        (n, order) in cluster_and_order(),
        subject in subject(),
        count in any::<Pick>(),
        outsider in prop_oneof![7u32..20, Just(u32::MAX)],
        at in any::<Pick>(),
        seed in any::<[u8; 32]>(),
    ) {
        let f = fixture(n);
        let k = signer_count(f, &count);
        let outsider = ReplicaId(outsider.max(n as u32));
        let mut sigs = f.sigs(subject, &order[..k]);
        // Signed by a key outside the manifest, as a correct vote would be.
        let key = KeyPair::from_seed([0xee; 32]);
        let vote = Vote::sign(f.cluster.cluster_id(), &key, outsider, subject);
        sigs.insert(at.index(k + 1), (outsider, vote.sig));
        let cert = Certificate { subject, sigs };
        prop_assert_eq!(
            f.check(&cert, subject.phase, seed),
            Err(CertificateError::NonMember(outsider))
        );
    }

    #[test]
    fn fewer_than_a_quorum_is_refused(
        (n, order) in cluster_and_order(),
        subject in subject(),
        count in any::<Pick>(),
        seed in any::<[u8; 32]>(),
    ) {
        let f = fixture(n);
        let k = count.index(f.q());
        let cert = Certificate { subject, sigs: f.sigs(subject, &order[..k]) };
        prop_assert_eq!(
            f.check(&cert, subject.phase, seed),
            Err(CertificateError::TooFewSignatures { got: k, quorum: f.q() })
        );
    }

    #[test]
    fn the_wrong_phase_is_refused(
        (n, order) in cluster_and_order(),
        subject in subject(),
        other in any::<Pick>(),
        seed in any::<[u8; 32]>(),
    ) {
        let f = fixture(n);
        let cert = Certificate { subject, sigs: f.sigs(subject, &order[..f.q()]) };
        let others: Vec<Phase> = PHASES.into_iter().filter(|p| *p != subject.phase).collect();
        let expected = others[other.index(2)];
        prop_assert_eq!(
            f.check(&cert, expected, seed),
            Err(CertificateError::WrongPhase { expected, got: subject.phase })
        );
    }

    #[test]
    fn a_state_digest_against_the_phase_is_refused(
        (n, order) in cluster_and_order(),
        subject in subject(),
        digest in any::<[u8; 32]>(),
        count in any::<Pick>(),
        seed in any::<[u8; 32]>(),
    ) {
        let f = fixture(n);
        let mut subject = subject;
        // Present on PreAppend/Append, absent on Commit; correctly signed as malformed.
        subject.state_digest = match subject.state_digest {
            Some(_) => None,
            None => Some(Digest(digest)),
        };
        let k = signer_count(f, &count);
        let cert = Certificate { subject, sigs: f.sigs(subject, &order[..k]) };
        prop_assert_eq!(
            f.check(&cert, subject.phase, seed),
            Err(CertificateError::StateDigestMismatch)
        );
    }

    #[test]
    fn any_mutated_subject_field_is_refused(
        (n, order) in cluster_and_order(),
        subject in subject(),
        commit_subject in subject_of(Phase::Commit),
        field in prop::sample::select(vec![Field::Term, Field::Index, Field::EntryHash, Field::StateDigest, Field::Phase]),
        delta in 1..=u64::MAX,
        byte in any::<Pick>(),
        xor in 1..=u8::MAX,
        new_phase in any::<Pick>(),
        count in any::<Pick>(),
        seed in any::<[u8; 32]>(),
    ) {
        let f = fixture(n);
        // The state digest exists only on Commit subjects.
        let signed = if matches!(field, Field::StateDigest) { commit_subject } else { subject };
        let k = signer_count(f, &count);
        let sigs = f.sigs(signed, &order[..k]);
        let first = sigs[0].0;
        let mut s = signed;
        match field {
            Field::Term => s.term = Term(s.term.0 ^ delta),
            Field::Index => s.index = Index(s.index.0 ^ delta),
            Field::EntryHash => s.entry_hash = flip(s.entry_hash, &byte, xor),
            Field::StateDigest => s.state_digest = s.state_digest.map(|d| flip(d, &byte, xor)),
            Field::Phase => {
                let others: Vec<Phase> = PHASES.into_iter().filter(|p| *p != s.phase).collect();
                s.phase = others[new_phase.index(2)];
                // Keep it well formed, so that only the signatures can catch the change.
                s.state_digest =
                    (s.phase == Phase::Commit).then(|| flip(s.entry_hash, &byte, xor));
            }
        }
        prop_assert_ne!(s, signed);
        prop_assert!(s.well_formed());
        let cert = Certificate { subject: s, sigs };
        prop_assert_eq!(f.check(&cert, s.phase, seed), Err(CertificateError::BadSignature(first)));
    }

    #[test]
    fn any_mutated_signature_byte_is_refused(
        (n, order) in cluster_and_order(),
        subject in subject(),
        count in any::<Pick>(),
        which in any::<Pick>(),
        byte in 0usize..64,
        xor in 1..=u8::MAX,
        seed in any::<[u8; 32]>(),
    ) {
        let f = fixture(n);
        let k = signer_count(f, &count);
        let mut sigs = f.sigs(subject, &order[..k]);
        let i = which.index(k);
        sigs[i].1 .0[byte] ^= xor;
        let bad = sigs[i].0;
        let cert = Certificate { subject, sigs };
        // Refused even when the other signatures alone would still make a quorum.
        prop_assert_eq!(f.check(&cert, subject.phase, seed), Err(CertificateError::BadSignature(bad)));
    }

    #[test]
    fn a_signature_moved_to_another_signer_is_refused(
        (n, order) in cluster_and_order(),
        subject in subject(),
        seed in any::<[u8; 32]>(),
    ) {
        let f = fixture(n);
        let mut sigs = f.sigs(subject, &order[..f.q()]);
        // Two signers swap signatures: every signature is genuine, but not by its named signer.
        let (a, b) = (sigs[0].1, sigs[1].1);
        sigs[0].1 = b;
        sigs[1].1 = a;
        let first = sigs[0].0;
        let cert = Certificate { subject, sigs };
        prop_assert_eq!(f.check(&cert, subject.phase, seed), Err(CertificateError::BadSignature(first)));
    }
}

#[test]
fn every_phase_and_size_accepts_full_and_minimal_quorums() {
    for n in [4, 7] {
        let f = fixture(n);
        for phase in PHASES {
            let subject = VoteSubject {
                phase,
                term: Term(3),
                index: Index(17),
                entry_hash: Digest([9; 32]),
                state_digest: (phase == Phase::Commit).then_some(Digest([4; 32])),
            };
            let all: Vec<u32> = (0..n as u32).collect();
            for k in [f.q(), n] {
                let cert = Certificate {
                    subject,
                    sigs: f.sigs(subject, &all[n - k..]),
                };
                assert_eq!(
                    f.check(&cert, phase, [k as u8; 32]),
                    Ok(()),
                    "n={n} {phase:?} k={k}"
                );
            }
        }
    }
}

#[test]
fn votes_of_another_cluster_are_refused() {
    // Same keys, another manifest name: another cluster_id, so no vote carries over.
    let other = build(4, "another cluster");
    let f = fixture(4);
    let subject = VoteSubject {
        phase: Phase::Append,
        term: Term(1),
        index: Index(1),
        entry_hash: Digest([1; 32]),
        state_digest: None,
    };
    let cert = Certificate {
        subject,
        sigs: other.sigs(subject, &[0, 1, 2]),
    };
    assert_eq!(other.check(&cert, Phase::Append, [0; 32]), Ok(()));
    assert_eq!(
        f.check(&cert, Phase::Append, [0; 32]),
        Err(CertificateError::BadSignature(ReplicaId(0)))
    );
}
