//! The openraft type configuration of the baseline: what one log entry carries (a batch of signed
//! txs) and what applying it returns (one encoded ledger result per tx).

use std::io::Cursor;

use openraft::{BasicNode, TokioRuntime};
use raft_bft::message::SignedTx;
use serde::{Deserialize, Serialize};

/// The txs of one log entry, in the order the state machine applies them. The leader verified
/// their signatures before proposing them; followers apply them as they are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch(pub Vec<SignedTx>);

/// What applying one entry returns: `ledger::LedgerResult::encode()` of each tx, in order
/// (empty for openraft's own blank and membership entries).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Results(pub Vec<Vec<u8>>);

openraft::declare_raft_types!(
    /// The baseline's openraft types: node ids are the node indexes of the cluster.
    pub TypeConfig:
        D = Batch,
        R = Results,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = TokioRuntime,
);

/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id (term, leader and index).
pub type LogId = openraft::LogId<u64>;
/// A vote.
pub type Vote = openraft::Vote<u64>;
/// A storage error, as openraft wants it.
pub type StorageError = openraft::StorageError<u64>;
/// A running node's handle.
pub type Raft = openraft::Raft<TypeConfig>;
