//! What the comparison needs from a system under test: submit a signed tx for a client and learn
//! when it committed, and read each node's CPU time.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use raft_bft::manifest::Manifest;
use raft_bft::message::SignedTx;

use crate::workload::Accounts;

/// A submitted tx's outcome: the state machine's result bytes (an encoded
/// `ledger::LedgerResult`) once the system acknowledges the tx as committed, or why not.
pub type Submission = Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + 'static>>;

/// One cluster of a system under test, running.
pub trait System: Send + Sync {
    /// Submits client `client`'s tx (signed by that client's key) and completes when the system
    /// acknowledges it committed. A client has at most one tx outstanding.
    fn submit(&self, client: usize, tx: SignedTx) -> Submission;

    /// Each node's CPU time since it started (process or threads), in node order.
    fn cpu(&self) -> Vec<Duration>;

    /// The node that leads now, if one is known.
    fn leader(&self) -> Option<usize>;

    /// Stops every node and releases its resources.
    fn shutdown(self: Box<Self>) -> Result<(), String>;
}

/// What a system is started with.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// How many nodes.
    pub nodes: usize,
    /// Most txs per log entry (raft-bft's `max_batch_txs`; plain Raft proposes batches of up to
    /// this many txs as one entry).
    pub batch: u32,
    /// The raft-bft manifest for these nodes (its cluster id is what the txs are signed for;
    /// plain Raft verifies the client signatures against it too).
    pub manifest: Manifest,
    /// The client accounts (and the genesis ledger every node starts from).
    pub accounts: Arc<Accounts>,
    /// A fresh directory for the nodes' durable state.
    pub dir: PathBuf,
    /// How long a batch may wait to fill (raft-bft's `max_batch_delay`).
    pub batch_delay: Duration,
}
