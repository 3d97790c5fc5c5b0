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

    /// Log entries committed so far (the leader's commit index), if known: with the txs
    /// committed, it tells how full the batches were.
    fn committed_entries(&self) -> Option<u64> {
        None
    }

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

/// Replica `i`'s key in every benchmark cluster (derived from `i`, so that a node process
/// re-derives it).
pub fn replica_key(i: usize) -> raft_bft::crypto::KeyPair {
    let mut seed = [0xee; 32];
    seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
    raft_bft::crypto::KeyPair::from_seed(seed)
}

/// The manifest of an `addresses.len()`-replica benchmark cluster with batches of up to `batch`
/// txs closed after at most `batch_delay`. Everything else is the protocol's defaults.
pub fn bench_manifest(addresses: &[String], batch: u32, batch_delay: Duration) -> Manifest {
    let params = raft_bft::config::Params {
        max_batch_txs: batch,
        max_batch_delay: batch_delay,
        ..raft_bft::config::Params::default()
    };
    let mut manifest = Manifest::new(
        format!("bench-{}x{batch}", addresses.len()),
        addresses
            .iter()
            .enumerate()
            .map(|(i, a)| (replica_key(i).public(), a.clone())),
        params,
    );
    manifest.admin_keys = vec![crate::workload::Accounts::admin().public()];
    manifest
}
