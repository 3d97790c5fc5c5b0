//! Building the lies: re-signed proposals, forged certificates, conflicting votes, messages for
//! another cluster. Everything a Byzantine replica signs is signed with its own real key.

use std::sync::Arc;

use rand::{Rng as _, RngExt as _};

use crate::crypto::KeyPair;
use crate::manifest::Cluster;
use crate::message::{
    entry_hash, pre_append_digest, Certificate, Entry, Heartbeat, Phase, PreAppend, TermChange,
    Vote, VoteSubject,
};
use crate::types::{Digest, Index, ReplicaId, Signature, Term};

use super::super::SimRng;

pub(super) fn random_digest(rng: &mut SimRng) -> Digest {
    let mut d = [0u8; 32];
    rng.fill_bytes(&mut d);
    Digest(d)
}

/// The hash of `entry` as every replica computes it.
pub(super) fn hash_of(cluster_id: &Digest, entry: &Entry) -> Digest {
    let ids: Vec<Digest> = entry.txs.iter().map(|tx| tx.id(cluster_id)).collect();
    entry_hash(cluster_id, entry.term, entry.index, &entry.prev_hash, &ids)
}

/// A PreAppend for `entry` in `term`, signed by `key`.
pub(super) fn sign_pre_append(
    cluster_id: &Digest,
    key: &KeyPair,
    term: Term,
    entry: Entry,
) -> PreAppend {
    let hash = hash_of(cluster_id, &entry);
    PreAppend {
        term,
        leader_sig: key.sign(&pre_append_digest(cluster_id, term, entry.index, &hash)),
        entry: Arc::new(entry),
    }
}

/// Another valid-looking entry for the same index (a different batch): `None` for an empty one.
pub(super) fn conflicting_entry(entry: &Entry) -> Option<Entry> {
    if entry.txs.is_empty() {
        return None;
    }
    let mut other = entry.clone();
    if other.txs.len() >= 2 {
        // Same txs, another order... unless that breaks a client's increasing `ts`: then drop one.
        other.txs.reverse();
        if other.txs == entry.txs || other.txs.windows(2).any(|w| w[0].client == w[1].client) {
            other.txs = entry.txs[..entry.txs.len() - 1].to_vec();
        }
    } else {
        other.txs.clear();
    }
    Some(other)
}

/// An entry that no correct replica may accept: a tx with a bad signature, or a broken chain.
pub(super) fn invalid_entry(entry: &Entry, rng: &mut SimRng) -> Entry {
    let mut bad = entry.clone();
    if !bad.txs.is_empty() && rng.random_bool(0.5) {
        let i = rng.random_range(0..bad.txs.len());
        let sig = &mut bad.txs[i].sig.0;
        sig[rng.random_range(0..32)] ^= 1;
    } else {
        bad.prev_hash = random_digest(rng);
    }
    bad
}

/// The ways a certificate is forged.
#[derive(Clone, Copy, Debug)]
enum CertificateForgery {
    DuplicateSigner,
    NonMember,
    TooFewSignatures,
    WrongPhase,
    WrongTerm,
    WrongIndex,
    WrongHash,
    SelfSigned,
}

const FORGERIES: [CertificateForgery; 8] = [
    CertificateForgery::DuplicateSigner,
    CertificateForgery::NonMember,
    CertificateForgery::TooFewSignatures,
    CertificateForgery::WrongPhase,
    CertificateForgery::WrongTerm,
    CertificateForgery::WrongIndex,
    CertificateForgery::WrongHash,
    CertificateForgery::SelfSigned,
];

/// A forged variant of `cert`: it must fail verification everywhere.
pub(super) fn forge_certificate(
    cluster: &Cluster,
    key: &KeyPair,
    me: ReplicaId,
    cert: &Certificate,
    rng: &mut SimRng,
) -> Certificate {
    let mut forged = cert.clone();
    let q = cluster.quorum();
    match FORGERIES[rng.random_range(0..FORGERIES.len())] {
        CertificateForgery::DuplicateSigner => {
            // Keeps the count at q by repeating one real signer.
            forged.sigs.truncate(q.saturating_sub(1).max(1));
            if let Some(first) = forged.sigs.first().cloned() {
                forged.sigs.push(first);
            }
        }
        CertificateForgery::NonMember => {
            if let Some(last) = forged.sigs.last_mut() {
                last.0 = ReplicaId(cluster.n() as u32 + rng.random_range(0..100));
            }
        }
        CertificateForgery::TooFewSignatures => forged.sigs.truncate(q.saturating_sub(1)),
        CertificateForgery::WrongPhase => {
            forged.subject.phase = match cert.subject.phase {
                Phase::PreAppend => Phase::Append,
                Phase::Append => Phase::PreAppend,
                Phase::Commit => Phase::Append,
            };
            forged.subject.state_digest = None;
        }
        CertificateForgery::WrongTerm => forged.subject.term = Term(cert.subject.term.0 + 1),
        CertificateForgery::WrongIndex => forged.subject.index = Index(cert.subject.index.0 + 1),
        CertificateForgery::WrongHash => forged.subject.entry_hash = random_digest(rng),
        CertificateForgery::SelfSigned => {
            // Its own signature under every member's name: q signers, one real.
            let sig = key.sign(&forged.subject.signing_digest(cluster.cluster_id()));
            forged.sigs = cluster
                .replica_ids()
                .take(q)
                .map(|id| {
                    if id == me {
                        (id, sig)
                    } else {
                        (id, Signature(sig.0.map(|b| b ^ 0x5a)))
                    }
                })
                .collect();
        }
    }
    forged
}

/// A vote for another subject at the same `(phase, term, index)`, validly signed.
pub(super) fn conflicting_vote(
    cluster_id: &Digest,
    key: &KeyPair,
    me: ReplicaId,
    subject: VoteSubject,
    rng: &mut SimRng,
) -> Vote {
    let mut other = subject;
    match subject.phase {
        Phase::Commit => other.state_digest = Some(random_digest(rng)),
        _ => other.entry_hash = random_digest(rng),
    }
    Vote::sign(cluster_id, key, me, other)
}

/// A cluster id that is not this cluster's: what another deployment with the same keys uses.
pub(super) fn foreign_cluster_id(cluster_id: &Digest) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(b"another cluster with the same keys");
    h.update(&cluster_id.0);
    Digest(*h.finalize().as_bytes())
}

/// A heartbeat and a vote that are valid, but for another cluster.
pub(super) fn foreign_messages(
    foreign: &Digest,
    key: &KeyPair,
    me: ReplicaId,
    term: Term,
    index: Index,
) -> (Heartbeat, Vote, TermChange) {
    let hb = Heartbeat::sign(foreign, key, term, None);
    let vote = Vote::sign(
        foreign,
        key,
        me,
        VoteSubject {
            phase: Phase::PreAppend,
            term,
            index,
            entry_hash: Digest([7; 32]),
            state_digest: None,
        },
    );
    let tc = TermChange::sign(foreign, key, me, Term(term.0 + 1), None, Vec::new());
    (hb, vote, tc)
}

/// The chunk of `cp` at `offset`, as a correct replica would serve it.
pub(crate) fn checkpoint_chunk(
    ctx: &super::Ctx<'_>,
    cp: &crate::checkpoint::Checkpoint,
    offset: u64,
) -> crate::message::ReplicaMessage {
    let size = ctx.cluster.params().checkpoint_chunk();
    let start = (offset as usize).min(cp.state.len());
    let end = (offset.saturating_add(size) as usize).min(cp.state.len());
    crate::message::ReplicaMessage::CheckpointChunk(crate::message::CheckpointChunk {
        certificate: cp.certificate.clone(),
        total: cp.state.len() as u64,
        offset: start as u64,
        data: cp.state[start..end].to_vec(),
    })
}
