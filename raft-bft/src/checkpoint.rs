//! Checkpoints (PROTOCOL.md section 5): the replicated state at an index that an execution
//! certificate proves, in the form a replica keeps on disk and sends to a peer that fell behind.
//!
//! The state digest that Commit votes sign is a running hash over every executed entry. At a
//! checkpoint index (a multiple of `checkpoint_interval`) it also covers a hash of the whole
//! per-client table, so that a snapshot can be checked against an execution certificate without
//! the history: the receiver restores the application from the snapshot, hashes the client table
//! it carries, recomputes the digest and compares it with the certified one (see
//! `docs/protocol.md`, "Checkpoints").

use serde::{Deserialize, Serialize};

use crate::crypto::{Domain, Transcript};
use crate::message::{reply_leaf, Certificate, Outcome, Phase};
use crate::types::{ClientId, Digest, Index};

/// One row of the replicated per-client table: the client's last executed `ts` and its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRow {
    /// The client.
    pub client: ClientId,
    /// Its last executed `ts`.
    pub last_ts: u64,
    /// The outcome of that tx (resent to a client that asks again).
    pub outcome: Outcome,
}

/// The replicated state after executing every entry up to `index`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// The last entry executed.
    pub index: Index,
    /// Its hash (the base of the log above the checkpoint).
    pub entry_hash: Digest,
    /// The state digest after `index - 1`.
    pub prev_digest: Digest,
    /// The Merkle root of the results of the entry at `index`.
    pub results_root: Digest,
    /// The client table, sorted by client, each client once.
    pub clients: Vec<ClientRow>,
    /// The application's [`crate::state_machine::StateMachine::snapshot`].
    #[serde(with = "serde_bytes")]
    pub app: Vec<u8>,
}

/// A stable checkpoint: an execution certificate at a checkpoint index and the encoded
/// [`CheckpointState`] it proves. What a replica persists in place of the log below it, restarts
/// from, and serves to peers in chunks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The execution certificate (phase `Commit`) at the checkpoint index.
    pub certificate: Certificate,
    /// The encoded [`CheckpointState`] (the codec's encoding).
    #[serde(with = "serde_bytes")]
    pub state: Vec<u8>,
}

impl Checkpoint {
    /// The checkpoint index.
    pub fn index(&self) -> Index {
        self.certificate.subject.index
    }

    /// The hash of the entry at the checkpoint index.
    pub fn entry_hash(&self) -> Digest {
        self.certificate.subject.entry_hash
    }

    /// Checks everything about the checkpoint that does not need the application: the
    /// certificate's phase and index, the size, the encoding, and that the state names the
    /// certified entry and lists each client once, in order. The certificate's signatures are the
    /// verifier's (or, for a replica's own disk, were checked before it was written).
    pub fn decode(
        &self,
        interval: u64,
        max_bytes: u64,
    ) -> Result<CheckpointState, CheckpointError> {
        let subject = &self.certificate.subject;
        if subject.phase != Phase::Commit || subject.state_digest.is_none() {
            return Err(CheckpointError::NotAnExecutionCertificate);
        }
        if subject.index == Index(0) || !subject.index.0.is_multiple_of(interval) {
            return Err(CheckpointError::NotACheckpointIndex {
                index: subject.index,
                interval,
            });
        }
        if self.state.len() as u64 > max_bytes {
            return Err(CheckpointError::TooLarge {
                size: self.state.len() as u64,
                limit: max_bytes,
            });
        }
        let state: CheckpointState = crate::codec::decode(&self.state, self.state.len())
            .map_err(|e| CheckpointError::Decode(e.to_string()))?;
        if state.index != subject.index || state.entry_hash != subject.entry_hash {
            return Err(CheckpointError::WrongEntry);
        }
        if !state.clients.windows(2).all(|w| w[0].client < w[1].client) {
            return Err(CheckpointError::ClientsNotSorted);
        }
        Ok(state)
    }
}

/// Why a checkpoint was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The certificate is not an execution certificate.
    #[error("the checkpoint's certificate is not an execution certificate")]
    NotAnExecutionCertificate,
    /// The certificate's index is not a checkpoint index.
    #[error("index {index} is not a checkpoint index (a multiple of {interval})")]
    NotACheckpointIndex {
        /// The index.
        index: Index,
        /// The checkpoint interval.
        interval: u64,
    },
    /// The state exceeds `max_checkpoint_bytes`.
    #[error("checkpoint state of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The state does not decode.
    #[error("checkpoint state does not decode: {0}")]
    Decode(String),
    /// The state names another entry than the certificate.
    #[error("the checkpoint state names another entry than its certificate")]
    WrongEntry,
    /// The client table is not sorted with each client once.
    #[error("the checkpoint's client table is not sorted by client, each client once")]
    ClientsNotSorted,
    /// The application refused the snapshot.
    #[error("the state machine refused the snapshot: {0}")]
    Restore(String),
    /// A refused checkpoint overwrote the application, which then refused its own previous
    /// state: the replica's state is lost until a checkpoint installs.
    #[error("the state machine refused its own snapshot after a bad checkpoint: {0}")]
    StateLost(String),
    /// The restored state's digest is not the certified one.
    #[error("the restored state's digest {computed} is not the certified {certified}")]
    DigestMismatch {
        /// What the execution certificate proves.
        certified: Digest,
        /// What the restored state hashes to.
        computed: Digest,
    },
}

/// The hash of the client table (rows sorted by client): what the state digest covers at
/// checkpoint indices.
pub(crate) fn clients_hash<'a>(
    cluster_id: &Digest,
    rows: impl ExactSizeIterator<Item = (&'a ClientId, u64, &'a Outcome)>,
) -> Digest {
    let mut t = Transcript::new(Domain::ClientTable, cluster_id).u64(rows.len() as u64);
    for (client, ts, outcome) in rows {
        t = t.fixed32(&reply_leaf(cluster_id, client, ts, outcome).0);
    }
    t.finish()
}

/// The running state digest after the entry at `index`. `clients` (the client table's hash) is
/// present exactly at checkpoint indices.
pub(crate) fn state_digest(
    cluster_id: &Digest,
    prev: &Digest,
    index: Index,
    entry_hash: &Digest,
    results_root: &Digest,
    app_digest: &Digest,
    clients: Option<&Digest>,
) -> Digest {
    let t = Transcript::new(Domain::StateDigest, cluster_id)
        .fixed32(&prev.0)
        .u64(index.0)
        .fixed32(&entry_hash.0)
        .fixed32(&results_root.0)
        .fixed32(&app_digest.0);
    match clients {
        Some(c) => t.u64(1).fixed32(&c.0).finish(),
        None => t.finish(),
    }
}

/// Whether `index` is a checkpoint index.
pub(crate) fn is_checkpoint_index(index: Index, interval: u64) -> bool {
    index.0 > 0 && index.0.is_multiple_of(interval)
}
