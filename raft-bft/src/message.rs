//! Wire messages and the exact bytes each signature covers.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::crypto::{Domain, KeyPair, Transcript};
use crate::merkle::{self, MerkleProof};
use crate::types::{ClientId, Digest, Index, ReplicaId, Signature, Term, TxId};

/// A client's signed transaction. `ts` strictly increases per client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTx {
    /// The client's public key.
    pub client: ClientId,
    /// The client's timestamp: strictly increasing per client.
    pub ts: u64,
    /// The operation, opaque to the protocol.
    #[serde(with = "serde_bytes")]
    pub op: Vec<u8>,
    /// The client's signature over the tx id.
    pub sig: Signature,
}

/// Bytes a tx occupies in a batch beyond its op (client, ts, sig, framing).
pub const TX_OVERHEAD_BYTES: usize = 32 + 8 + 64 + 16;

impl SignedTx {
    /// Creates and signs a tx.
    pub fn sign(cluster_id: &Digest, key: &KeyPair, ts: u64, op: Vec<u8>) -> SignedTx {
        let client = key.public();
        let id = tx_id(cluster_id, &client, ts, &op);
        SignedTx {
            client,
            ts,
            op,
            sig: key.sign(&id),
        }
    }

    /// `blake3(TX || cluster_id || client || ts || op)`: what the signature covers.
    pub fn id(&self, cluster_id: &Digest) -> TxId {
        tx_id(cluster_id, &self.client, self.ts, &self.op)
    }

    /// The tx's size as counted against `max_batch_bytes`.
    pub fn batch_bytes(&self) -> usize {
        self.op.len() + TX_OVERHEAD_BYTES
    }
}

fn tx_id(cluster_id: &Digest, client: &ClientId, ts: u64, op: &[u8]) -> TxId {
    Transcript::new(Domain::Tx, cluster_id)
        .fixed32(&client.0)
        .u64(ts)
        .bytes(op)
        .finish()
}

/// One log entry: a batch of txs, chained to its predecessor by hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The term in which the entry was first proposed; never changes.
    pub term: Term,
    /// Its position in the log.
    pub index: Index,
    /// The hash of the entry at `index - 1` (the `cluster_id` for index 1).
    pub prev_hash: Digest,
    /// The batch.
    pub txs: Vec<SignedTx>,
}

/// `blake3(ENTRY || cluster_id || term || index || prev_hash || merkle_root(tx_ids))`.
pub fn entry_hash(
    cluster_id: &Digest,
    term: Term,
    index: Index,
    prev_hash: &Digest,
    tx_ids: &[TxId],
) -> Digest {
    EntryHeader {
        term,
        index,
        prev_hash: *prev_hash,
        tx_root: merkle::root(cluster_id, tx_ids),
    }
    .hash(cluster_id)
}

/// What an entry's hash covers, without its txs: enough to check a hash and a chain link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EntryHeader {
    /// The term in which the entry was first proposed.
    pub term: Term,
    /// Its index.
    pub index: Index,
    /// The hash of the entry below it.
    pub prev_hash: Digest,
    /// The Merkle root of its tx ids.
    pub tx_root: Digest,
}

impl EntryHeader {
    /// The entry hash.
    pub fn hash(&self, cluster_id: &Digest) -> Digest {
        Transcript::new(Domain::Entry, cluster_id)
            .u64(self.term.0)
            .u64(self.index.0)
            .fixed32(&self.prev_hash.0)
            .fixed32(&self.tx_root.0)
            .finish()
    }
}

/// The three phases an entry passes, each closed by a quorum of votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Votes that the entry is the one at `(term, index)`; a quorum is a prepared certificate.
    PreAppend,
    /// Votes that the entry is prepared; a quorum is a commit certificate.
    Append,
    /// Votes that the log up to the entry was executed to `state_digest`; a quorum is an
    /// execution certificate.
    Commit,
}

/// What a vote and a certificate are about; the signed part of a vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VoteSubject {
    /// The phase.
    pub phase: Phase,
    /// The term of the vote (the entry's term or a later one when re-proposed).
    pub term: Term,
    /// The entry's index.
    pub index: Index,
    /// The entry's hash.
    pub entry_hash: Digest,
    /// The state digest after executing the entry; present exactly for `Commit`.
    pub state_digest: Option<Digest>,
}

impl VoteSubject {
    /// The digest each voter signs.
    pub fn signing_digest(&self, cluster_id: &Digest) -> Digest {
        Transcript::new(Domain::Vote, cluster_id)
            .u64(self.phase as u64)
            .u64(self.term.0)
            .u64(self.index.0)
            .fixed32(&self.entry_hash.0)
            .opt32(self.state_digest.as_ref().map(|d| &d.0))
            .finish()
    }

    /// True if `state_digest` is present exactly when the phase needs it.
    pub fn well_formed(&self) -> bool {
        self.state_digest.is_some() == (self.phase == Phase::Commit)
    }
}

/// One replica's signed vote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// What is voted for.
    pub subject: VoteSubject,
    /// The voter.
    pub replica: ReplicaId,
    /// The voter's signature over `subject`.
    pub sig: Signature,
}

impl Vote {
    /// Creates and signs a vote.
    pub fn sign(
        cluster_id: &Digest,
        key: &KeyPair,
        replica: ReplicaId,
        subject: VoteSubject,
    ) -> Vote {
        Vote {
            sig: key.sign(&subject.signing_digest(cluster_id)),
            subject,
            replica,
        }
    }
}

/// A quorum of votes on one subject. Valid iff it holds at least `q` valid signatures of
/// distinct members (checked by [`crate::verify::Verifier`]).
///
/// A PreAppend certificate is a *prepared certificate* (PC), an Append certificate a *commit
/// certificate* (CC), a Commit certificate an *execution certificate* (EC).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// What the signers voted for.
    pub subject: VoteSubject,
    /// The signers and their signatures.
    pub sigs: Vec<(ReplicaId, Signature)>,
}

/// A leader's proposal of an entry in its term.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreAppend {
    /// The leader's term.
    pub term: Term,
    /// The proposed entry (shared: a large batch is not copied to send or persist it).
    pub entry: Arc<Entry>,
    /// The leader's signature over `(term, index, entry hash)`.
    pub leader_sig: Signature,
}

/// The digest a leader signs to propose the entry `entry_hash` at `index` in `term`.
pub fn pre_append_digest(
    cluster_id: &Digest,
    term: Term,
    index: Index,
    entry_hash: &Digest,
) -> Digest {
    Transcript::new(Domain::PreAppend, cluster_id)
        .u64(term.0)
        .u64(index.0)
        .fixed32(&entry_hash.0)
        .finish()
}

/// One index as a replica reports it when leaving a term: the highest-term prepared certificate
/// it holds there, and the entry's header (so that anyone can check the certificate's hash and
/// the chain without the txs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedEntry {
    /// The prepared certificate (PreAppend phase) with the highest term this replica holds.
    pub certificate: Certificate,
    /// The header of the certified entry.
    pub header: EntryHeader,
}

/// A replica's signed statement that it left its term and what it holds: the start of a term
/// change (PROTOCOL.md section 4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermChange {
    /// The term it wants to move to.
    pub new_term: Term,
    /// Its newest stable execution certificate (none: genesis).
    pub stable: Option<Certificate>,
    /// For each index above `stable` that it holds a prepared certificate for, in index order.
    pub prepared: Vec<PreparedEntry>,
    /// The sender.
    pub replica: ReplicaId,
    /// The sender's signature over all of the above.
    pub sig: Signature,
}

impl TermChange {
    /// Builds and signs a TermChange.
    pub fn sign(
        cluster_id: &Digest,
        key: &KeyPair,
        replica: ReplicaId,
        new_term: Term,
        stable: Option<Certificate>,
        prepared: Vec<PreparedEntry>,
    ) -> TermChange {
        let mut tc = TermChange {
            new_term,
            stable,
            prepared,
            replica,
            sig: Signature([0; 64]),
        };
        tc.sig = key.sign(&tc.signing_digest(cluster_id));
        tc
    }

    /// What the sender signs: the new term, the stable certificate's subject, and every
    /// reported certificate's subject and entry header.
    pub fn signing_digest(&self, cluster_id: &Digest) -> Digest {
        let stable = self
            .stable
            .as_ref()
            .map(|ec| ec.subject.signing_digest(cluster_id));
        let mut t = Transcript::new(Domain::TermChange, cluster_id)
            .u64(self.new_term.0)
            .u64(u64::from(self.replica.0))
            .opt32(stable.as_ref().map(|d| &d.0))
            .u64(self.prepared.len() as u64);
        for p in &self.prepared {
            let h = &p.header;
            t = t
                .fixed32(&p.certificate.subject.signing_digest(cluster_id).0)
                .u64(h.term.0)
                .u64(h.index.0)
                .fixed32(&h.prev_hash.0)
                .fixed32(&h.tx_root.0);
        }
        t.finish()
    }
}

/// The new leader's announcement of a term: the quorum of TermChange messages it collected and
/// the log it chose from them, which every replica recomputes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTerm {
    /// The term that starts.
    pub new_term: Term,
    /// At least a quorum of TermChange messages for `new_term`, from distinct members.
    pub term_changes: Vec<TermChange>,
    /// The chosen `(index, entry hash)` list above the highest stable certificate.
    pub chosen: Vec<(Index, Digest)>,
    /// The signature of the leader of `new_term` over all of the above. Without it, any replica
    /// holding another quorum of TermChanges could announce a different (valid) choice for an
    /// honest leader's term and make replicas refuse that leader's proposals.
    pub leader_sig: Signature,
}

impl NewTerm {
    /// An upper bound on the encoded size of a correct leader's NewTerm (as a
    /// [`ReplicaMessage`]): `quorum` TermChanges, each with a stable execution certificate and
    /// `max_prepared` prepared entries, every certificate carrying `quorum` signatures, and every
    /// number at its widest. [`crate::manifest::Cluster::new`] refuses parameters under which
    /// it exceeds `max_message_bytes`: such a NewTerm could not be sent, and no term after a
    /// full TermChange could ever start.
    pub fn worst_case_bytes(quorum: usize, max_prepared: u64) -> u64 {
        let wide = |b: u8| Digest([b; 32]);
        let sigs: Vec<(ReplicaId, Signature)> = (0..quorum)
            .map(|_| (ReplicaId(u32::MAX), Signature([0xff; 64])))
            .collect();
        let certificate = |phase, state_digest| Certificate {
            subject: VoteSubject {
                phase,
                term: Term(u64::MAX),
                index: Index(u64::MAX),
                entry_hash: wide(0xff),
                state_digest,
            },
            sigs: sigs.clone(),
        };
        let len = |bytes: Result<Vec<u8>, crate::codec::CodecError>| {
            bytes.map_or(u64::MAX, |b| b.len() as u64)
        };
        let prepared = len(crate::codec::encode(&PreparedEntry {
            certificate: certificate(Phase::PreAppend, None),
            header: EntryHeader {
                term: Term(u64::MAX),
                index: Index(u64::MAX),
                prev_hash: wide(0xfe),
                tx_root: wide(0xfd),
            },
        }));
        let term_change = len(crate::codec::encode(&TermChange {
            new_term: Term(u64::MAX),
            stable: Some(certificate(Phase::Commit, Some(wide(0xfc)))),
            prepared: Vec::new(),
            replica: ReplicaId(u32::MAX),
            sig: Signature([0xff; 64]),
        }));
        let chosen = len(crate::codec::encode(&(Index(u64::MAX), wide(0xfb))));
        let empty = len(crate::codec::encode(&ReplicaMessage::NewTerm(Arc::new(
            NewTerm {
                new_term: Term(u64::MAX),
                term_changes: Vec::new(),
                chosen: Vec::new(),
                leader_sig: Signature([0xff; 64]),
            },
        ))));
        // Each list that grows from empty gains at most a 5-byte length header.
        let per_term_change = term_change
            .saturating_add(5)
            .saturating_add(max_prepared.saturating_mul(prepared));
        empty
            .saturating_add(10)
            .saturating_add((quorum as u64).saturating_mul(per_term_change))
            .saturating_add(max_prepared.saturating_mul(chosen))
    }

    /// Builds and signs a NewTerm (by the leader of `new_term`).
    pub fn sign(
        cluster_id: &Digest,
        key: &KeyPair,
        new_term: Term,
        term_changes: Vec<TermChange>,
        chosen: Vec<(Index, Digest)>,
    ) -> NewTerm {
        let mut nt = NewTerm {
            new_term,
            term_changes,
            chosen,
            leader_sig: Signature([0; 64]),
        };
        nt.leader_sig = key.sign(&nt.signing_digest(cluster_id));
        nt
    }

    /// What the leader signs: the term, every TermChange's signed content and signer, and the
    /// chosen list.
    pub fn signing_digest(&self, cluster_id: &Digest) -> Digest {
        let mut t = Transcript::new(Domain::NewTerm, cluster_id)
            .u64(self.new_term.0)
            .u64(self.term_changes.len() as u64);
        for tc in &self.term_changes {
            t = t.fixed32(&tc.signing_digest(cluster_id).0);
        }
        t = t.u64(self.chosen.len() as u64);
        for (index, hash) in &self.chosen {
            t = t.u64(index.0).fixed32(&hash.0);
        }
        t.finish()
    }
}

/// An idle leader's signed sign of life, with its newest commit certificate: followers that
/// missed commits learn how far to catch up, and (with term changes) a silent leader is told
/// from an idle one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The leader's term.
    pub term: Term,
    /// The commit certificate of the leader's commit index (none before the first commit).
    pub commit: Option<Certificate>,
    /// The leader's signature over the term and the certificate's subject.
    pub leader_sig: Signature,
}

impl Heartbeat {
    /// Builds and signs a heartbeat.
    pub fn sign(
        cluster_id: &Digest,
        key: &KeyPair,
        term: Term,
        commit: Option<Certificate>,
    ) -> Self {
        let mut hb = Heartbeat {
            term,
            commit,
            leader_sig: Signature([0; 64]),
        };
        hb.leader_sig = key.sign(&hb.signing_digest(cluster_id));
        hb
    }

    /// What the leader signs.
    pub fn signing_digest(&self, cluster_id: &Digest) -> Digest {
        let commit = self
            .commit
            .as_ref()
            .map(|cc| cc.subject.signing_digest(cluster_id));
        Transcript::new(Domain::Heartbeat, cluster_id)
            .u64(self.term.0)
            .opt32(commit.as_ref().map(|d| &d.0))
            .finish()
    }
}

/// Two PreAppends signed by the leader of `term` for different entries at one index: proof
/// that the leader equivocated, naming it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EquivocationProof {
    /// The term (its leader is the culprit).
    pub term: Term,
    /// The index.
    pub index: Index,
    /// One entry hash and the leader's signature on it.
    pub first: (Digest, Signature),
    /// Another entry hash and the leader's signature on it.
    pub second: (Digest, Signature),
}

/// Messages between replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaMessage {
    /// Leader to all: proposal.
    PreAppend(PreAppend),
    /// Any phase's vote, to the leader.
    Vote(Vote),
    /// Leader to all: the entry is prepared (carries the PC).
    Append(Certificate),
    /// Leader to all: the entry is committed (carries the CC).
    Commit(Certificate),
    /// Leader to all: the execution certificate (EC) for an index.
    Executed(Certificate),
    /// Follower to leader: a client tx that reached the follower.
    Forward(SignedTx),
    /// Leader to all, when it has sent nothing else for a heartbeat interval.
    Heartbeat(Heartbeat),
    /// A replica leaves its term and asks for `new_term`.
    TermChange(TermChange),
    /// The start of a term (self-certifying: anyone may relay it).
    NewTerm(Arc<NewTerm>),
    /// A new leader asks for an entry of its chosen log that it lacks.
    FetchChosen {
        /// The index.
        index: Index,
        /// The chosen hash at that index.
        hash: Digest,
    },
    /// An entry, answering `FetchChosen` (the asker checks it against its chosen hash).
    ChosenEntry(Arc<Entry>),
    /// Proof that a leader equivocated, forwarded to all.
    Equivocation(EquivocationProof),
    /// Ask a peer for committed entries `from..=to`.
    FetchEntries {
        /// First index wanted.
        from: Index,
        /// Last index wanted.
        to: Index,
    },
    /// Committed entries, consecutive and hash-chained; `certificate` is the CC of the last one.
    Entries {
        /// The entries, in index order.
        entries: Vec<Arc<Entry>>,
        /// The commit certificate of the last entry.
        certificate: Certificate,
    },
    /// Ask a peer for a chunk of its stable checkpoint, if its index is above `above`: of
    /// checkpoint `index` from byte `offset` (`Index(0)`: the newest, from its start).
    FetchCheckpoint {
        /// Only a checkpoint above this index is wanted.
        above: Index,
        /// The checkpoint being fetched (`Index(0)`: the newest).
        index: Index,
        /// Where in the checkpoint's state to start.
        offset: u64,
    },
    /// A chunk of a stable checkpoint's state (answers `FetchCheckpoint`, and `FetchEntries`
    /// for entries the sender compacted away).
    CheckpointChunk(CheckpointChunk),
    /// A replica that lost its disk asks how far the cluster has committed.
    FetchStatus,
    /// A replica that saw a later term's leader speak asks for the NewTerm that started it
    /// (a replica that missed the term change, for example while it was down).
    FetchNewTerm,
    /// How far the sender has committed: the commit certificate at its commit index, or the
    /// execution certificate of its stable checkpoint.
    Status(Certificate),
}

/// A chunk of a stable checkpoint's encoded state, with the certificate that proves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointChunk {
    /// The checkpoint's execution certificate.
    pub certificate: Certificate,
    /// The size of the whole encoded state.
    pub total: u64,
    /// Where this chunk starts.
    pub offset: u64,
    /// The bytes `offset..offset + data.len()` of the state.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl ReplicaMessage {
    /// A short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            ReplicaMessage::PreAppend(_) => "pre-append",
            ReplicaMessage::Vote(_) => "vote",
            ReplicaMessage::Append(_) => "append",
            ReplicaMessage::Commit(_) => "commit",
            ReplicaMessage::Executed(_) => "executed",
            ReplicaMessage::Forward(_) => "forward",
            ReplicaMessage::Heartbeat(_) => "heartbeat",
            ReplicaMessage::TermChange(_) => "term-change",
            ReplicaMessage::NewTerm(_) => "new-term",
            ReplicaMessage::FetchChosen { .. } => "fetch-chosen",
            ReplicaMessage::ChosenEntry(_) => "chosen-entry",
            ReplicaMessage::Equivocation(_) => "equivocation",
            ReplicaMessage::FetchEntries { .. } => "fetch-entries",
            ReplicaMessage::Entries { .. } => "entries",
            ReplicaMessage::FetchCheckpoint { .. } => "fetch-checkpoint",
            ReplicaMessage::CheckpointChunk(_) => "checkpoint-chunk",
            ReplicaMessage::FetchStatus => "fetch-status",
            ReplicaMessage::FetchNewTerm => "fetch-new-term",
            ReplicaMessage::Status(_) => "status",
        }
    }
}

/// Why a replica refused a tx. Final outcomes are trusted by a client on `f + 1` matching replies.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Rejection {
    /// `ts` is not above the client's last executed one (and is not that one, whose reply is
    /// resent instead).
    Stale {
        /// The client's last executed `ts`.
        last_executed: u64,
    },
    /// The op exceeds `max_op_bytes`.
    TooLarge {
        /// The op's size.
        size: u32,
        /// The limit.
        limit: u32,
    },
    /// The state machine's admission rule refused the op.
    Refused(String),
    /// The leader's queue is full; not final, retry later.
    Busy,
}

impl Rejection {
    /// True if the refusal will not change on retry.
    pub fn is_final(&self) -> bool {
        !matches!(self, Rejection::Busy)
    }
}

/// What happened to a tx.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// Executed at `index` with the state machine's `result`.
    Executed {
        /// The entry that held the tx.
        index: Index,
        /// The state machine's result.
        #[serde(with = "serde_bytes")]
        result: Vec<u8>,
    },
    /// Refused before ordering.
    Rejected(Rejection),
}

/// A replica's signed answer to a client.
///
/// Replicas sign one Merkle root per executed entry over all of its replies (one signature per
/// entry instead of one per tx); each reply carries its inclusion proof. A refusal is a tree of
/// one leaf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The client that sent the tx.
    pub client: ClientId,
    /// The tx's `ts`.
    pub ts: u64,
    /// What happened.
    pub outcome: Outcome,
    /// The replying replica.
    pub replica: ReplicaId,
    /// Inclusion of this reply's leaf under the signed root.
    pub proof: MerkleProof,
    /// The replica's signature over the root.
    pub sig: Signature,
}

/// The leaf that stands for one reply in a reply batch.
pub fn reply_leaf(cluster_id: &Digest, client: &ClientId, ts: u64, outcome: &Outcome) -> Digest {
    let t = Transcript::new(Domain::ReplyLeaf, cluster_id)
        .fixed32(&client.0)
        .u64(ts);
    match outcome {
        Outcome::Executed { index, result } => t.u64(0).u64(index.0).bytes(result).finish(),
        Outcome::Rejected(r) => {
            let encoded = crate::codec::encode(r).unwrap_or_default();
            t.u64(1).bytes(&encoded).finish()
        }
    }
}

/// The digest a replica signs for a batch of replies with the given Merkle root.
pub fn reply_batch_digest(cluster_id: &Digest, replica: ReplicaId, root: &Digest) -> Digest {
    Transcript::new(Domain::ReplyBatch, cluster_id)
        .u64(u64::from(replica.0))
        .fixed32(&root.0)
        .finish()
}
