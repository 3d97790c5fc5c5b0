//! The verifier: the only way to turn untrusted wire messages into [`Verified`] values.
//!
//! It checks everything that does not depend on a replica's state: signatures (batched), sizes,
//! certificate validity, hash chains. The replica state machine consumes only `Verified` values
//! and performs the checks that need its state. Keeping the two apart lets a runtime verify on
//! many cores, off the event loop.

use std::collections::HashSet;
use std::sync::Arc;

use crate::choice::{self, ChoiceError, ChosenLog};
use crate::crypto::{self, BatchVerifier, CoefficientRng, SignatureError};
use crate::manifest::Cluster;
use crate::merkle;
use crate::message::{
    entry_hash, pre_append_digest, reply_batch_digest, reply_leaf, Certificate, CheckpointChunk,
    Entry, EquivocationProof, NewTerm, Phase, PreAppend, ReplicaMessage, Reply, SignedTx,
    TermChange, Vote, VoteSubject,
};
use crate::types::{Digest, Index, ReplicaId, Signature, Term, TxId};

/// A value that passed verification. Only this crate's verifier (and the replica, for values it
/// creates and signs itself) can build one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified<T>(T);

impl<T> Verified<T> {
    /// Unwraps the value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// A client tx whose signature verified, with its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedTx {
    /// The tx.
    pub tx: SignedTx,
    /// Its id (what the signature covers).
    pub id: TxId,
}

/// An entry whose txs all verified, with its hash and tx ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedEntry {
    /// The entry.
    pub entry: Arc<Entry>,
    /// Its hash.
    pub hash: Digest,
    /// The ids of its txs, in order.
    pub tx_ids: Vec<TxId>,
}

impl CheckedEntry {
    /// Builds an entry from txs that were already verified (the leader's own proposals).
    pub(crate) fn from_checked(
        cluster_id: &Digest,
        term: Term,
        index: Index,
        prev_hash: Digest,
        txs: Vec<CheckedTx>,
    ) -> Self {
        let tx_ids: Vec<TxId> = txs.iter().map(|t| t.id).collect();
        let hash = entry_hash(cluster_id, term, index, &prev_hash, &tx_ids);
        CheckedEntry {
            entry: Arc::new(Entry {
                term,
                index,
                prev_hash,
                txs: txs.into_iter().map(|t| t.tx).collect(),
            }),
            hash,
            tx_ids,
        }
    }
}

/// A replica message after verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifiedMessage {
    /// A proposal whose leader signature and txs verified.
    PreAppend {
        /// The proposing term (the sender is its leader).
        term: Term,
        /// The entry.
        entry: CheckedEntry,
        /// The leader's signature (kept as equivocation evidence).
        leader_sig: Signature,
    },
    /// A vote whose signature verified.
    Vote(Vote),
    /// A valid prepared certificate.
    Append(Certificate),
    /// A valid commit certificate.
    Commit(Certificate),
    /// A valid execution certificate.
    Executed(Certificate),
    /// A client tx forwarded by a follower.
    Forward(CheckedTx),
    /// A valid TermChange from its signer.
    TermChange(TermChange),
    /// A valid NewTerm and the log it chooses.
    NewTerm(Arc<NewTerm>, ChosenLog),
    /// A request for a chosen entry.
    FetchChosen {
        /// The index.
        index: Index,
        /// The hash.
        hash: Digest,
    },
    /// An entry whose txs verified (its place in the log is the replica's to check).
    ChosenEntry(CheckedEntry),
    /// A valid equivocation proof.
    Equivocation(EquivocationProof),
    /// A heartbeat signed by the leader of `term`, with a valid commit certificate if any.
    Heartbeat {
        /// The leader's term.
        term: Term,
        /// The leader's newest commit certificate.
        commit: Option<Certificate>,
    },
    /// A request for committed entries.
    FetchEntries {
        /// First index.
        from: Index,
        /// Last index.
        to: Index,
    },
    /// Committed entries proved by the CC of the last one.
    Entries {
        /// The entries, consecutive, chained and verified.
        entries: Vec<CheckedEntry>,
        /// The CC of the last entry.
        certificate: Certificate,
    },
    /// A request for a chunk of checkpoint `index` (`Index(0)`: the newest) above `above`,
    /// from byte `offset` of its state.
    FetchCheckpoint {
        /// Only a checkpoint above this index is wanted.
        above: Index,
        /// The checkpoint being fetched.
        index: Index,
        /// Where to start.
        offset: u64,
    },
    /// A chunk of a checkpoint whose execution certificate is valid, at a checkpoint index, and
    /// whose sizes are within the limits (the bytes themselves are checked once complete).
    CheckpointChunk(CheckpointChunk),
    /// A request for the sender's commit status.
    FetchStatus,
    /// A request for the NewTerm of the sender's current term.
    FetchNewTerm,
    /// A valid commit certificate (phase `Append`) or execution certificate (phase `Commit`).
    Status(Certificate),
}

/// Why a message was refused. Each refusal is counted by the caller.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A signature or key was bad.
    #[error("{what}: {source}")]
    Signature {
        /// What carried the signature.
        what: &'static str,
        /// The signature error.
        source: SignatureError,
    },
    /// The named replica is not in the manifest.
    #[error("replica {0} is not a member of the cluster")]
    NonMember(ReplicaId),
    /// The message came from a replica that cannot have produced it.
    #[error("{what} from {from}, but only {expected} may send it")]
    WrongSender {
        /// What the message is.
        what: &'static str,
        /// Who sent it.
        from: ReplicaId,
        /// Who may.
        expected: ReplicaId,
    },
    /// A certificate is not valid.
    #[error("invalid certificate: {0}")]
    Certificate(#[from] CertificateError),
    /// Something exceeds a limit.
    #[error("{what} of {size} exceeds the limit of {limit}")]
    TooLarge {
        /// What.
        what: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The message is structurally wrong.
    #[error("malformed {what}: {why}")]
    Malformed {
        /// What.
        what: &'static str,
        /// Why.
        why: &'static str,
    },
    /// A set of TermChange messages does not determine a log.
    #[error("cannot choose a log: {0}")]
    Choice(#[from] ChoiceError),
    /// A tx in an entry failed verification.
    #[error("tx {position} of entry {index}: {source}")]
    EntryTx {
        /// The entry's index.
        index: Index,
        /// The tx's position.
        position: usize,
        /// The signature error.
        source: SignatureError,
    },
}

impl VerifyError {
    /// A short, stable label for counting refusals by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            VerifyError::Signature { .. } => "bad-signature",
            VerifyError::NonMember(_) => "non-member",
            VerifyError::WrongSender { .. } => "wrong-sender",
            VerifyError::Certificate(_) => "bad-certificate",
            VerifyError::TooLarge { .. } => "too-large",
            VerifyError::Malformed { .. } => "malformed",
            VerifyError::EntryTx { .. } => "bad-tx-in-entry",
            VerifyError::Choice(_) => "bad-choice",
        }
    }
}

/// Why a certificate is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// A different phase was expected.
    #[error("expected a {expected:?} certificate, got {got:?}")]
    WrongPhase {
        /// Expected phase.
        expected: Phase,
        /// Phase found.
        got: Phase,
    },
    /// `state_digest` present on a non-Commit certificate or missing on a Commit one.
    #[error("state digest present/absent against the phase")]
    StateDigestMismatch,
    /// One replica signed twice.
    #[error("replica {0} signs twice")]
    DuplicateSigner(ReplicaId),
    /// A signer is not a member.
    #[error("signer {0} is not a member")]
    NonMember(ReplicaId),
    /// Fewer signatures than the quorum.
    #[error("{got} signatures, quorum is {quorum}")]
    TooFewSignatures {
        /// Signatures present.
        got: usize,
        /// Quorum.
        quorum: usize,
    },
    /// A signature does not verify (so some field differs from what the signer signed).
    #[error("signature of replica {0} does not verify")]
    BadSignature(ReplicaId),
}

/// Verifies messages for one cluster.
///
/// Holds a CSPRNG for batch-verification coefficients; seed it from the OS (or the simulator's
/// seed) so verification stays deterministic given inputs.
pub struct Verifier {
    cluster: Arc<Cluster>,
    rng: CoefficientRng,
    verified_entries: VerifiedEntries,
}

/// Most committed entries one `Entries` message may carry.
pub const MAX_ENTRIES_PER_MESSAGE: usize = 64;

impl Verifier {
    /// A verifier for `cluster`, with batch coefficients drawn from a CSPRNG seeded by `seed`.
    ///
    /// In production `seed` must come from the operating system's CSPRNG and stay secret:
    /// anyone who can predict the coefficients can craft signatures that pass a batch but fail
    /// alone (see [`BatchVerifier::verify`]). Fixed seeds are for tests and the simulator.
    pub fn new(cluster: Arc<Cluster>, seed: [u8; 32]) -> Self {
        Verifier {
            cluster,
            rng: crypto::coefficient_rng(seed),
            verified_entries: VerifiedEntries::default(),
        }
    }

    /// Shares `entries` with this verifier: an entry whose signatures one verifier of the set
    /// checked is not batch-verified again by the others (see [`VerifiedEntries`]).
    pub fn share_verified_entries(&mut self, entries: VerifiedEntries) {
        self.verified_entries = entries;
    }

    /// The cluster this verifier checks against.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Verifies one client tx.
    pub fn verify_tx(&mut self, tx: SignedTx) -> Result<Verified<CheckedTx>, VerifyError> {
        self.verify_txs(vec![tx])
            .pop()
            .unwrap_or(Err(VerifyError::Malformed {
                what: "tx",
                why: "no verdict",
            }))
    }

    /// Verifies many client txs with one batch verification; one result per tx, in order.
    pub fn verify_txs(
        &mut self,
        txs: Vec<SignedTx>,
    ) -> Vec<Result<Verified<CheckedTx>, VerifyError>> {
        let cid = *self.cluster.cluster_id();
        let limit = self.cluster.params().max_op_bytes;
        // Size first: an oversized op is refused before any hashing or signature work.
        let mut results: Vec<Result<Option<TxId>, VerifyError>> = Vec::with_capacity(txs.len());
        let mut batch = BatchVerifier::with_capacity(txs.len());
        for tx in &txs {
            if tx.op.len() > limit as usize {
                results.push(Err(VerifyError::TooLarge {
                    what: "op",
                    size: tx.op.len() as u64,
                    limit: u64::from(limit),
                }));
                continue;
            }
            let id = tx.id(&cid);
            batch.push(tx.client, id, tx.sig);
            results.push(Ok(Some(id)));
        }
        let mut verdicts = batch.verify(&mut self.rng).into_iter();
        txs.into_iter()
            .zip(results)
            .map(|(tx, checked)| {
                let id = checked?.ok_or(VerifyError::Malformed {
                    what: "tx",
                    why: "no id",
                })?;
                let verdict = verdicts.next().unwrap_or(Err(SignatureError::Invalid));
                verdict.map_err(|source| VerifyError::Signature { what: "tx", source })?;
                Ok(Verified(CheckedTx { tx, id }))
            })
            .collect()
    }

    /// Verifies an entry: sizes, and every tx signature in one batch.
    pub fn verify_entry(
        &mut self,
        entry: impl Into<Arc<Entry>>,
    ) -> Result<CheckedEntry, VerifyError> {
        let unsigned = self.check_entry_shape(entry.into())?;
        self.verify_entry_signatures(unsigned)
    }

    /// The cheap checks of an entry (sizes, index, distinct txs), its tx ids and its hash: all
    /// but the signatures.
    fn check_entry_shape(&self, entry: Arc<Entry>) -> Result<CheckedEntry, VerifyError> {
        let params = self.cluster.params();
        if entry.txs.len() > params.max_batch_txs as usize {
            return Err(VerifyError::TooLarge {
                what: "batch tx count",
                size: entry.txs.len() as u64,
                limit: u64::from(params.max_batch_txs),
            });
        }
        let bytes: u64 = entry.txs.iter().map(|t| t.batch_bytes() as u64).sum();
        if bytes > params.max_batch_bytes {
            return Err(VerifyError::TooLarge {
                what: "batch bytes",
                size: bytes,
                limit: params.max_batch_bytes,
            });
        }
        if entry.index == Index(0) {
            return Err(VerifyError::Malformed {
                what: "entry",
                why: "index 0 is the genesis entry",
            });
        }
        let limit = params.max_op_bytes as usize;
        if let Some(tx) = entry.txs.iter().find(|tx| tx.op.len() > limit) {
            return Err(VerifyError::TooLarge {
                what: "op",
                size: tx.op.len() as u64,
                limit: limit as u64,
            });
        }
        let cid = *self.cluster.cluster_id();
        let tx_ids: Vec<TxId> = entry.txs.iter().map(|tx| tx.id(&cid)).collect();
        let mut distinct = HashSet::with_capacity(tx_ids.len());
        if !tx_ids.iter().all(|id| distinct.insert(*id)) {
            return Err(VerifyError::Malformed {
                what: "entry",
                why: "the same tx appears twice",
            });
        }
        let hash = entry_hash(&cid, entry.term, entry.index, &entry.prev_hash, &tx_ids);
        Ok(CheckedEntry {
            entry,
            hash,
            tx_ids,
        })
    }

    /// Batch-verifies the client signatures of an entry whose shape was checked.
    fn verify_entry_signatures(
        &mut self,
        entry: CheckedEntry,
    ) -> Result<CheckedEntry, VerifyError> {
        let key = VerifiedEntries::key(&entry);
        if self.verified_entries.0.contains(&key) {
            return Ok(entry);
        }
        let mut batch = BatchVerifier::with_capacity(entry.tx_ids.len());
        for (tx, id) in entry.entry.txs.iter().zip(&entry.tx_ids) {
            batch.push(tx.client, *id, tx.sig);
        }
        for (position, verdict) in batch.verify(&mut self.rng).into_iter().enumerate() {
            if let Err(source) = verdict {
                return Err(VerifyError::EntryTx {
                    index: entry.entry.index,
                    position,
                    source,
                });
            }
        }
        self.verified_entries.0.insert(key);
        Ok(entry)
    }

    /// Checks a certificate of the `expected` phase: at least `q` valid signatures of distinct
    /// members on exactly its subject.
    pub fn verify_certificate(
        &mut self,
        cert: &Certificate,
        expected: Phase,
    ) -> Result<(), CertificateError> {
        check_certificate(&self.cluster, cert, expected, &mut self.rng)
    }

    /// Verifies a message from replica `from` (as authenticated by the transport).
    pub fn verify_message(
        &mut self,
        from: ReplicaId,
        msg: ReplicaMessage,
    ) -> Result<Verified<VerifiedMessage>, VerifyError> {
        if self.cluster.key_of(from).is_none() {
            return Err(VerifyError::NonMember(from));
        }
        let verified = match msg {
            ReplicaMessage::PreAppend(p) => self.verify_pre_append(from, p)?,
            ReplicaMessage::Vote(v) => {
                self.verify_vote(&v)?;
                if v.replica != from {
                    return Err(VerifyError::WrongSender {
                        what: "vote",
                        from,
                        expected: v.replica,
                    });
                }
                VerifiedMessage::Vote(v)
            }
            ReplicaMessage::Append(c) => {
                self.verify_certificate(&c, Phase::PreAppend)?;
                VerifiedMessage::Append(c)
            }
            ReplicaMessage::Commit(c) => {
                self.verify_certificate(&c, Phase::Append)?;
                VerifiedMessage::Commit(c)
            }
            ReplicaMessage::Executed(c) => {
                self.verify_certificate(&c, Phase::Commit)?;
                VerifiedMessage::Executed(c)
            }
            ReplicaMessage::TermChange(tc) => {
                VerifiedMessage::TermChange(self.verify_term_change(from, tc)?.into_inner())
            }
            ReplicaMessage::NewTerm(nt) => {
                let (nt, chosen) = self.verify_new_term(nt)?.into_inner();
                VerifiedMessage::NewTerm(nt, chosen)
            }
            ReplicaMessage::FetchChosen { index, hash } => {
                if index == Index(0) {
                    return Err(VerifyError::Malformed {
                        what: "fetch chosen",
                        why: "index 0 is the genesis entry",
                    });
                }
                VerifiedMessage::FetchChosen { index, hash }
            }
            ReplicaMessage::Equivocation(proof) => {
                VerifiedMessage::Equivocation(self.verify_equivocation(proof)?.into_inner())
            }
            ReplicaMessage::ChosenEntry(entry) => {
                VerifiedMessage::ChosenEntry(self.verify_entry(entry)?)
            }
            ReplicaMessage::Heartbeat(hb) => {
                let leader = self.cluster.leader_of(hb.term);
                if from != leader {
                    return Err(VerifyError::WrongSender {
                        what: "heartbeat",
                        from,
                        expected: leader,
                    });
                }
                let key = *self
                    .cluster
                    .key_of(leader)
                    .ok_or(VerifyError::NonMember(leader))?;
                let digest = hb.signing_digest(self.cluster.cluster_id());
                crypto::verify(&key, &digest, &hb.leader_sig).map_err(|source| {
                    VerifyError::Signature {
                        what: "heartbeat",
                        source,
                    }
                })?;
                if let Some(cc) = &hb.commit {
                    self.verify_certificate(cc, Phase::Append)?;
                }
                VerifiedMessage::Heartbeat {
                    term: hb.term,
                    commit: hb.commit,
                }
            }
            ReplicaMessage::Forward(tx) => {
                VerifiedMessage::Forward(self.verify_tx(tx)?.into_inner())
            }
            ReplicaMessage::FetchEntries { from: lo, to: hi } => {
                if lo.0 == 0 || hi < lo {
                    return Err(VerifyError::Malformed {
                        what: "fetch request",
                        why: "empty or genesis range",
                    });
                }
                VerifiedMessage::FetchEntries { from: lo, to: hi }
            }
            ReplicaMessage::Entries {
                entries,
                certificate,
            } => self.verify_entries(entries, certificate)?,
            ReplicaMessage::FetchCheckpoint {
                above,
                index,
                offset,
            } => {
                if offset >= self.cluster.params().max_checkpoint_bytes {
                    return Err(VerifyError::TooLarge {
                        what: "checkpoint offset",
                        size: offset,
                        limit: self.cluster.params().max_checkpoint_bytes,
                    });
                }
                VerifiedMessage::FetchCheckpoint {
                    above,
                    index,
                    offset,
                }
            }
            ReplicaMessage::CheckpointChunk(chunk) => {
                VerifiedMessage::CheckpointChunk(self.verify_checkpoint_chunk(chunk)?)
            }
            ReplicaMessage::FetchStatus => VerifiedMessage::FetchStatus,
            ReplicaMessage::FetchNewTerm => VerifiedMessage::FetchNewTerm,
            ReplicaMessage::Status(cert) => {
                let phase = cert.subject.phase;
                if phase == Phase::PreAppend {
                    return Err(VerifyError::Malformed {
                        what: "status",
                        why: "a prepared certificate proves no commit",
                    });
                }
                self.verify_certificate(&cert, phase)?;
                VerifiedMessage::Status(cert)
            }
        };
        Ok(Verified(verified))
    }

    fn verify_pre_append(
        &mut self,
        from: ReplicaId,
        p: PreAppend,
    ) -> Result<VerifiedMessage, VerifyError> {
        let leader = self.cluster.leader_of(p.term);
        if from != leader {
            return Err(VerifyError::WrongSender {
                what: "pre-append",
                from,
                expected: leader,
            });
        }
        if p.entry.term > p.term {
            return Err(VerifyError::Malformed {
                what: "pre-append",
                why: "entry term above the proposing term",
            });
        }
        let key = *self
            .cluster
            .key_of(leader)
            .ok_or(VerifyError::NonMember(leader))?;
        let (term, leader_sig) = (p.term, p.leader_sig);
        // The leader's one signature is checked before the batch of client signatures, so a
        // message that is not the leader's costs one verification, not a thousand.
        let entry = self.check_entry_shape(p.entry)?;
        let digest = pre_append_digest(
            self.cluster.cluster_id(),
            term,
            entry.entry.index,
            &entry.hash,
        );
        crypto::verify(&key, &digest, &leader_sig).map_err(|source| VerifyError::Signature {
            what: "leader signature",
            source,
        })?;
        let entry = self.verify_entry_signatures(entry)?;
        Ok(VerifiedMessage::PreAppend {
            term,
            entry,
            leader_sig,
        })
    }

    fn verify_vote(&mut self, v: &Vote) -> Result<(), VerifyError> {
        if !v.subject.well_formed() {
            return Err(VerifyError::Malformed {
                what: "vote",
                why: "state digest present/absent against the phase",
            });
        }
        let key = self
            .cluster
            .key_of(v.replica)
            .ok_or(VerifyError::NonMember(v.replica))?;
        let digest = v.subject.signing_digest(self.cluster.cluster_id());
        crypto::verify(key, &digest, &v.sig).map_err(|source| VerifyError::Signature {
            what: "vote",
            source,
        })
    }

    fn verify_entries(
        &mut self,
        entries: Vec<Arc<Entry>>,
        certificate: Certificate,
    ) -> Result<VerifiedMessage, VerifyError> {
        if entries.is_empty() || entries.len() > MAX_ENTRIES_PER_MESSAGE {
            return Err(VerifyError::TooLarge {
                what: "entries per message",
                size: entries.len() as u64,
                limit: MAX_ENTRIES_PER_MESSAGE as u64,
            });
        }
        self.verify_certificate(&certificate, Phase::Append)?;
        // Shapes, chain and certificate first (hashing only); client signatures last.
        let mut shaped: Vec<CheckedEntry> = Vec::with_capacity(entries.len());
        for e in entries {
            let e = self.check_entry_shape(e)?;
            if let Some(prev) = shaped.last() {
                if e.entry.index != prev.entry.index.next() || e.entry.prev_hash != prev.hash {
                    return Err(VerifyError::Malformed {
                        what: "entries",
                        why: "not consecutive and hash-chained",
                    });
                }
            }
            shaped.push(e);
        }
        let proves_last = shaped.last().is_some_and(|last| {
            last.entry.index == certificate.subject.index
                && last.hash == certificate.subject.entry_hash
        });
        if !proves_last {
            return Err(VerifyError::Malformed {
                what: "entries",
                why: "the certificate does not prove the last entry",
            });
        }
        let entries = shaped
            .into_iter()
            .map(|e| self.verify_entry_signatures(e))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VerifiedMessage::Entries {
            entries,
            certificate,
        })
    }

    /// Checks a checkpoint chunk's certificate (an execution certificate at a checkpoint index)
    /// and its sizes: the state is at most `max_checkpoint_bytes`, a chunk at most
    /// `checkpoint_chunk_bytes`, and the chunk lies within the state.
    fn verify_checkpoint_chunk(
        &mut self,
        chunk: CheckpointChunk,
    ) -> Result<CheckpointChunk, VerifyError> {
        let params = self.cluster.params();
        let (max_state, max_chunk) = (params.max_checkpoint_bytes, params.checkpoint_chunk());
        let interval = params.checkpoint_interval;
        if chunk.total > max_state {
            return Err(VerifyError::TooLarge {
                what: "checkpoint state",
                size: chunk.total,
                limit: max_state,
            });
        }
        if chunk.data.len() as u64 > max_chunk {
            return Err(VerifyError::TooLarge {
                what: "checkpoint chunk",
                size: chunk.data.len() as u64,
                limit: max_chunk,
            });
        }
        let end = chunk.offset.checked_add(chunk.data.len() as u64);
        if end.is_none_or(|end| end > chunk.total) || (chunk.data.is_empty() && chunk.total > 0) {
            return Err(VerifyError::Malformed {
                what: "checkpoint chunk",
                why: "the chunk is empty or lies outside the state",
            });
        }
        if !crate::checkpoint::is_checkpoint_index(chunk.certificate.subject.index, interval) {
            return Err(VerifyError::Malformed {
                what: "checkpoint chunk",
                why: "the certificate is not at a checkpoint index",
            });
        }
        self.verify_certificate(&chunk.certificate, Phase::Commit)?;
        Ok(chunk)
    }

    /// Verifies an equivocation proof: two different entry hashes at one `(term, index)`, both
    /// signed by the leader of `term`.
    pub fn verify_equivocation(
        &mut self,
        proof: EquivocationProof,
    ) -> Result<Verified<EquivocationProof>, VerifyError> {
        if proof.first.0 == proof.second.0 {
            return Err(VerifyError::Malformed {
                what: "equivocation proof",
                why: "the two entries are the same",
            });
        }
        let leader = self.cluster.leader_of(proof.term);
        let key = *self
            .cluster
            .key_of(leader)
            .ok_or(VerifyError::NonMember(leader))?;
        let cid = *self.cluster.cluster_id();
        for (hash, sig) in [&proof.first, &proof.second] {
            let digest = pre_append_digest(&cid, proof.term, proof.index, hash);
            crypto::verify(&key, &digest, sig).map_err(|source| VerifyError::Signature {
                what: "equivocation proof",
                source,
            })?;
        }
        Ok(Verified(proof))
    }

    /// The most prepared entries a TermChange may report: everything a replica can hold above
    /// its stable checkpoint.
    pub fn max_prepared_per_term_change(&self) -> usize {
        self.cluster.params().max_prepared_per_term_change() as usize
    }

    /// Verifies a TermChange sent by `from` itself.
    pub fn verify_term_change(
        &mut self,
        from: ReplicaId,
        tc: TermChange,
    ) -> Result<Verified<TermChange>, VerifyError> {
        if tc.replica != from {
            return Err(VerifyError::WrongSender {
                what: "term change",
                from,
                expected: tc.replica,
            });
        }
        self.check_term_change(&tc)?;
        Ok(Verified(tc))
    }

    /// Everything about a TermChange but who relayed it: a member's signature, a valid stable
    /// execution certificate, and prepared certificates in increasing index order above it, each
    /// for the header it comes with, all of terms below the new one.
    fn check_term_change(&mut self, tc: &TermChange) -> Result<(), VerifyError> {
        let key = *self
            .cluster
            .key_of(tc.replica)
            .ok_or(VerifyError::NonMember(tc.replica))?;
        let limit = self.max_prepared_per_term_change();
        if tc.prepared.len() > limit {
            return Err(VerifyError::TooLarge {
                what: "prepared entries in a term change",
                size: tc.prepared.len() as u64,
                limit: limit as u64,
            });
        }
        let cid = *self.cluster.cluster_id();
        let malformed = |why| VerifyError::Malformed {
            what: "term change",
            why,
        };
        let mut above = tc.stable.as_ref().map_or(Index(0), |ec| ec.subject.index);
        for p in &tc.prepared {
            let s = &p.certificate.subject;
            if s.index <= above {
                return Err(malformed(
                    "prepared entries not above the stable checkpoint and increasing",
                ));
            }
            above = s.index;
            if p.header.index != s.index || p.header.hash(&cid) != s.entry_hash {
                return Err(malformed(
                    "a prepared certificate is not for the header sent with it",
                ));
            }
            if p.header.term > s.term || s.term >= tc.new_term {
                return Err(malformed("a prepared certificate's term does not fit"));
            }
        }
        crypto::verify(&key, &tc.signing_digest(&cid), &tc.sig).map_err(|source| {
            VerifyError::Signature {
                what: "term change",
                source,
            }
        })?;
        if let Some(ec) = &tc.stable {
            self.verify_certificate(ec, Phase::Commit)?;
            if ec.subject.term >= tc.new_term {
                return Err(malformed("the stable certificate's term does not fit"));
            }
        }
        for p in &tc.prepared {
            self.verify_certificate(&p.certificate, Phase::PreAppend)?;
        }
        Ok(())
    }

    /// Verifies a NewTerm: its TermChange messages are a valid quorum, its chosen list is
    /// exactly the one they determine, and the leader of its term signed it. It proves itself,
    /// so it may come from any replica.
    pub fn verify_new_term(
        &mut self,
        nt: Arc<NewTerm>,
    ) -> Result<Verified<(Arc<NewTerm>, ChosenLog)>, VerifyError> {
        if nt.term_changes.len() > self.cluster.n() {
            return Err(VerifyError::TooLarge {
                what: "term changes in a new term",
                size: nt.term_changes.len() as u64,
                limit: self.cluster.n() as u64,
            });
        }
        // Structure first (senders, terms, quorum), signatures after.
        let chosen = choice::choose(
            self.cluster.cluster_id(),
            self.cluster.quorum(),
            nt.new_term,
            &nt.term_changes,
        )?;
        if chosen.list() != nt.chosen {
            return Err(VerifyError::Malformed {
                what: "new term",
                why: "the chosen log differs from the one its term changes determine",
            });
        }
        let leader = self.cluster.leader_of(nt.new_term);
        let key = self
            .cluster
            .key_of(leader)
            .ok_or(VerifyError::NonMember(leader))?;
        crate::crypto::verify(
            key,
            &nt.signing_digest(self.cluster.cluster_id()),
            &nt.leader_sig,
        )
        .map_err(|source| VerifyError::Signature {
            what: "new term (leader's signature)",
            source,
        })?;
        for tc in &nt.term_changes {
            self.check_term_change(tc)?;
        }
        Ok(Verified((nt, chosen)))
    }

    /// Verifies a reply (for clients): the replica is a member, its proof leads from the reply's
    /// leaf to the signed root, and the signature verifies.
    pub fn verify_reply(&self, reply: &Reply) -> Result<(), VerifyError> {
        self.verify_reply_with(reply, None)
    }

    /// [`Verifier::verify_reply`], skipping the signature check when `roots` holds the same
    /// signature of the same root by the same replica, verified before (a replica signs one
    /// root for a whole batch of replies, so the clients of one batch check it once).
    pub fn verify_reply_with(
        &self,
        reply: &Reply,
        roots: Option<&VerifiedReplyRoots>,
    ) -> Result<(), VerifyError> {
        let key = self
            .cluster
            .key_of(reply.replica)
            .ok_or(VerifyError::NonMember(reply.replica))?;
        let cid = self.cluster.cluster_id();
        let leaf = reply_leaf(cid, &reply.client, reply.ts, &reply.outcome);
        let root =
            merkle::root_from_proof(cid, &leaf, &reply.proof).ok_or(VerifyError::Malformed {
                what: "reply",
                why: "inclusion proof does not fit its tree",
            })?;
        let signed = (reply.replica, root, reply.sig);
        if roots.is_some_and(|r| r.contains(&signed)) {
            return Ok(());
        }
        crypto::verify(
            key,
            &reply_batch_digest(cid, reply.replica, &root),
            &reply.sig,
        )
        .map_err(|source| VerifyError::Signature {
            what: "reply",
            source,
        })?;
        if let Some(roots) = roots {
            roots.insert(signed);
        }
        Ok(())
    }
}

/// A bounded set of recently verified items, shared by its clones: the oldest is forgotten
/// first. Only ever holds items whose verification succeeded.
#[derive(Debug)]
struct Recent<T> {
    inner: Arc<std::sync::Mutex<RecentInner<T>>>,
    capacity: usize,
}

#[derive(Debug)]
struct RecentInner<T> {
    set: HashSet<T>,
    order: std::collections::VecDeque<T>,
}

impl<T> Clone for Recent<T> {
    fn clone(&self) -> Self {
        Recent {
            inner: Arc::clone(&self.inner),
            capacity: self.capacity,
        }
    }
}

impl<T: Copy + Eq + std::hash::Hash> Recent<T> {
    fn new(capacity: usize) -> Self {
        Recent {
            inner: Arc::new(std::sync::Mutex::new(RecentInner {
                set: HashSet::new(),
                order: std::collections::VecDeque::new(),
            })),
            capacity,
        }
    }

    fn contains(&self, item: &T) -> bool {
        self.inner.lock().is_ok_and(|s| s.set.contains(item))
    }

    fn insert(&self, item: T) {
        let Ok(mut s) = self.inner.lock() else {
            return;
        };
        if s.set.insert(item) {
            s.order.push_back(item);
            while s.order.len() > self.capacity {
                if let Some(old) = s.order.pop_front() {
                    s.set.remove(&old);
                }
            }
        }
    }

    fn len(&self) -> usize {
        self.inner.lock().map_or(0, |s| s.set.len())
    }
}

/// Reply-batch signatures that verified, shared by the clients of one process (cloning shares
/// the set). Bounded: the oldest entries are forgotten first.
///
/// Sound because an entry is only added after its signature verified: a hit means this exact
/// signature by this replica over this root was checked.
#[derive(Clone, Debug)]
pub struct VerifiedReplyRoots(Recent<SignedRoot>);

type SignedRoot = (ReplicaId, Digest, Signature);

impl Default for VerifiedReplyRoots {
    fn default() -> Self {
        VerifiedReplyRoots(Recent::new(Self::CAPACITY))
    }
}

impl VerifiedReplyRoots {
    /// Most signed roots remembered.
    pub const CAPACITY: usize = 4096;

    fn contains(&self, signed: &SignedRoot) -> bool {
        self.0.contains(signed)
    }

    fn insert(&self, signed: SignedRoot) {
        self.0.insert(signed)
    }

    /// How many signed roots are remembered.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Entries whose client signatures all verified, by a digest of the entry's hash and every
/// signature in it, shared by the verifiers of one replica (cloning shares the set).
///
/// A leader retransmits a proposal that a follower was slow to answer, and a replica catching up
/// may fetch an entry it was proposed before: the same entry, with the same signatures, is then
/// not batch-verified again (a thousand signatures). The entry hash binds every tx's client,
/// timestamp and op, and the digest adds the signature bytes, so a hit is exactly a batch that
/// verified before.
#[derive(Clone, Debug)]
pub struct VerifiedEntries(Recent<Digest>);

impl Default for VerifiedEntries {
    fn default() -> Self {
        VerifiedEntries(Recent::new(Self::CAPACITY))
    }
}

impl VerifiedEntries {
    /// Most entries remembered.
    pub const CAPACITY: usize = 1024;

    fn key(entry: &CheckedEntry) -> Digest {
        let mut h = blake3::Hasher::new_derive_key("raft-bft v1 verified entry signatures");
        h.update(&entry.hash.0);
        for tx in &entry.entry.txs {
            h.update(&tx.sig.0);
        }
        Digest(*h.finalize().as_bytes())
    }

    /// How many entries are remembered.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Certificate validity, shared by every path that checks one.
pub(crate) fn check_certificate<R: rand_core::CryptoRng>(
    cluster: &Cluster,
    cert: &Certificate,
    expected: Phase,
    rng: &mut R,
) -> Result<(), CertificateError> {
    let subject: &VoteSubject = &cert.subject;
    if subject.phase != expected {
        return Err(CertificateError::WrongPhase {
            expected,
            got: subject.phase,
        });
    }
    if !subject.well_formed() {
        return Err(CertificateError::StateDigestMismatch);
    }
    // Bounded work: a certificate never needs more than n signatures; more means duplicates or
    // non-members, both refused below before any signature is checked.
    let mut seen = HashSet::with_capacity(cert.sigs.len().min(cluster.n()));
    let mut keys = Vec::with_capacity(cert.sigs.len().min(cluster.n()));
    for (replica, _) in &cert.sigs {
        let key = cluster
            .key_of(*replica)
            .ok_or(CertificateError::NonMember(*replica))?;
        if !seen.insert(*replica) {
            return Err(CertificateError::DuplicateSigner(*replica));
        }
        keys.push(*key);
    }
    if cert.sigs.len() < cluster.quorum() {
        return Err(CertificateError::TooFewSignatures {
            got: cert.sigs.len(),
            quorum: cluster.quorum(),
        });
    }
    let digest = subject.signing_digest(cluster.cluster_id());
    let mut batch = BatchVerifier::with_capacity(keys.len());
    for (key, (_, sig)) in keys.iter().zip(&cert.sigs) {
        batch.push(*key, digest, *sig);
    }
    for (verdict, (replica, _)) in batch.verify(rng).into_iter().zip(&cert.sigs) {
        if verdict.is_err() {
            return Err(CertificateError::BadSignature(*replica));
        }
    }
    Ok(())
}
