//! The plain-Raft baseline of the comparison: an openraft (0.9) cluster in this process, over
//! an in-process transport, replicating the same ledger as raft-bft with the same durability.
//!
//! - **Nodes and CPU.** Each node has its own tokio runtime (one async worker, a small blocking
//!   pool) plus a log writer thread, all named `or{i}-…`, so [`System::cpu`] can attribute CPU
//!   time to nodes by thread name. Node `i` has openraft node id `i`.
//! - **Transport.** A node calls its peer's `Raft` handle directly ([`network`]); requests pass
//!   by value between the runtimes.
//! - **Clients.** A submitted tx goes to the current leader's [`proposer`], which batches txs
//!   like raft-bft's leader, verifies their signatures once (raft-bft's batch verification) and
//!   proposes each batch as one log entry. Followers do not verify: plain Raft trusts its leader.
//! - **State.** Every node applies the entries to raft-bft's ledger ([`state_machine`]) and
//!   keeps its log in a file with one `sync_data` per append ([`log_store`]), as raft-bft syncs
//!   once per batch. Openraft snapshots every `checkpoint_interval` entries (raft-bft's
//!   checkpoint interval, from the manifest) and then purges the log behind the snapshot.

mod log_store;
mod network;
mod proposer;
mod state_machine;
mod types;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, Config, ServerState, SnapshotPolicy};
use raft_bft::manifest::Cluster;
use raft_bft::message::SignedTx;
use tokio::sync::{mpsc, oneshot};

use crate::measure::threads_cpu;
use crate::system::{ClusterSpec, Submission, System};
use log_store::LogStore;
use network::{Network, Peers};
use proposer::{Pending, Proposer};
use state_machine::LedgerStore;
use types::Raft;

/// A leader sends heartbeats this often (ms). Openraft 0.9 also uses it as the timeout of an
/// append-entries RPC, whose reply waits for the follower's `sync_data` (several ms on this
/// kind of disk, more under load): 100 ms leaves room for that.
const HEARTBEAT_MS: u64 = 100;
/// Election timeouts (ms): far above the heartbeat, so that the cluster is stable under load.
const ELECTION_TIMEOUT_MS: (u64, u64) = (1000, 2000);
/// Most entries one append-entries RPC carries: generous, so that replication batches well.
const MAX_PAYLOAD_ENTRIES: u64 = 256;
/// How long `start` waits for a leader.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts an openraft cluster of `spec.nodes` nodes in this process, with their state under
/// `spec.dir/node-{i}/`, and returns once it has a leader.
pub fn start(spec: &ClusterSpec) -> Result<Box<dyn System>, String> {
    Ok(Box::new(OpenRaftCluster::start(spec)?))
}

/// One running node.
struct Node {
    raft: Raft,
    /// The input of the node's proposer.
    proposer: mpsc::UnboundedSender<Pending>,
    runtime: tokio::runtime::Runtime,
    log_writer: JoinHandle<()>,
}

/// A running openraft cluster.
pub struct OpenRaftCluster {
    nodes: Vec<Node>,
}

impl OpenRaftCluster {
    /// Starts the cluster (see [`start`]).
    pub fn start(spec: &ClusterSpec) -> Result<OpenRaftCluster, String> {
        let mut cluster = OpenRaftCluster { nodes: Vec::new() };
        match cluster.launch(spec) {
            Ok(()) => Ok(cluster),
            Err(e) => {
                // Best effort: the launch error is the one to report.
                let _ = cluster.stop();
                Err(e)
            }
        }
    }

    fn launch(&mut self, spec: &ClusterSpec) -> Result<(), String> {
        if spec.nodes == 0 {
            return Err("a cluster needs at least one node".into());
        }
        let manifest =
            Cluster::new(spec.manifest.clone()).map_err(|e| format!("invalid manifest: {e}"))?;
        let manifest = Arc::new(manifest);
        let config = Arc::new(config(spec)?);
        let peers = Peers::default();
        for i in 0..spec.nodes {
            let node = start_node(i, spec, &config, &manifest, &peers)
                .map_err(|e| format!("node {i}: {e}"))?;
            self.nodes.push(node);
        }
        let handles = self.nodes.iter().map(|n| n.raft.clone()).collect();
        peers
            .set(handles)
            .map_err(|_| "the peers were already set".to_string())?;

        // Node 0 proposes the membership of all nodes and (normally) becomes the first leader.
        let members: BTreeMap<u64, BasicNode> = (0..spec.nodes as u64)
            .map(|i| (i, BasicNode::default()))
            .collect();
        let first = &self.nodes[0];
        match first.runtime.block_on(first.raft.initialize(members)) {
            // Already initialised: the directory holds a cluster that ran before.
            Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
            Err(e) => return Err(format!("cannot initialise the cluster: {e}")),
        }
        let deadline = Instant::now() + START_TIMEOUT;
        while self.leader().is_none() {
            if Instant::now() > deadline {
                return Err(format!("no leader within {START_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Each node's Raft handle, in node order.
    #[cfg(test)]
    fn rafts(&self) -> impl Iterator<Item = &Raft> {
        self.nodes.iter().map(|n| &n.raft)
    }

    /// Stops every node: closes the proposers, shuts the Raft cores down, then the runtimes
    /// (which drops every task, and with them the log stores), and joins the log writers.
    fn stop(self) -> Result<(), String> {
        let mut errors = Vec::new();
        let nodes: Vec<(Raft, tokio::runtime::Runtime, JoinHandle<()>)> = self
            .nodes
            .into_iter()
            .map(|n| (n.raft, n.runtime, n.log_writer))
            .collect();
        for (i, (raft, runtime, _)) in nodes.iter().enumerate() {
            if let Err(e) = runtime.block_on(raft.shutdown()) {
                errors.push(format!("node {i}: {e}"));
            }
        }
        for (i, (raft, runtime, log_writer)) in nodes.into_iter().enumerate() {
            drop(raft);
            runtime.shutdown_timeout(Duration::from_secs(5));
            if log_writer.join().is_err() {
                errors.push(format!("node {i}: the log writer thread panicked"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!("shutting down openraft: {}", errors.join("; ")))
        }
    }
}

impl System for OpenRaftCluster {
    fn submit(&self, _client: usize, tx: SignedTx) -> Submission {
        let (reply, result) = oneshot::channel();
        let sent = match self.leader() {
            Some(leader) => self.nodes[leader]
                .proposer
                .send(Pending { tx, reply })
                .map_err(|_| format!("the proposer of node {leader} stopped")),
            None => Err("no leader".to_string()),
        };
        Box::pin(async move {
            sent?;
            result
                .await
                .map_err(|_| "the tx was dropped (its node stopped)".to_string())?
        })
    }

    fn cpu(&self) -> Vec<Duration> {
        (0..self.nodes.len())
            .map(|i| threads_cpu(&thread_prefix(i)))
            .collect()
    }

    fn leader(&self) -> Option<usize> {
        // The node that says it leads in the highest term (one that was deposed may not have
        // noticed yet).
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, node)| {
                let metrics = node.raft.metrics();
                let m = metrics.borrow();
                (m.state == ServerState::Leader).then_some((m.current_term, i))
            })
            .max()
            .map(|(_, i)| i)
    }

    fn committed_entries(&self) -> Option<u64> {
        let leader = self.nodes.get(self.leader()?)?;
        let metrics = leader.raft.metrics();
        let applied = metrics.borrow().last_applied;
        applied.map(|log_id| log_id.index)
    }

    fn shutdown(self: Box<Self>) -> Result<(), String> {
        self.stop()
    }
}

/// The name prefix of node `i`'s threads. The dash keeps `or1-` from matching `or10-…`.
fn thread_prefix(i: usize) -> String {
    format!("or{i}-")
}

/// Openraft's configuration for the run.
fn config(spec: &ClusterSpec) -> Result<Config, String> {
    // Snapshot (and then purge the log) as often as raft-bft checkpoints; keep one interval of
    // entries behind the snapshot for followers that lag a little.
    let interval = spec.manifest.params.checkpoint_interval.max(1);
    Config {
        cluster_name: "openraft-baseline".into(),
        heartbeat_interval: HEARTBEAT_MS,
        election_timeout_min: ELECTION_TIMEOUT_MS.0,
        election_timeout_max: ELECTION_TIMEOUT_MS.1,
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(interval),
        max_in_snapshot_log_to_keep: interval,
        install_snapshot_timeout: 2000,
        ..Config::default()
    }
    .validate()
    .map_err(|e| format!("invalid openraft config: {e}"))
}

/// Starts node `i`: its runtime, log, state machine, Raft core and proposer.
fn start_node(
    i: usize,
    spec: &ClusterSpec,
    config: &Arc<Config>,
    manifest: &Arc<Cluster>,
    peers: &Peers,
) -> Result<Node, String> {
    let dir = spec.dir.join(format!("node-{i}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let runtime = node_runtime(i)?;
    let (log_store, log_writer) = LogStore::open(&dir, format!("{}log", thread_prefix(i)))?;
    let state_machine = LedgerStore::open(&dir, spec.accounts.genesis())?;
    let network = Network::new(peers.clone());
    // Inside the node's runtime, so that openraft spawns the node's tasks there.
    let raft = runtime
        .block_on(Raft::new(
            i as u64,
            config.clone(),
            network,
            log_store,
            state_machine,
        ))
        .map_err(|e| format!("openraft did not start: {e}"))?;
    let (proposer, input) = mpsc::unbounded_channel();
    let batching = Proposer::new(raft.clone(), manifest.clone(), spec.batch, spec.batch_delay);
    runtime.spawn(batching.run(input));
    Ok(Node {
        raft,
        proposer,
        runtime,
        log_writer,
    })
}

/// Node `i`'s runtime: one async worker (openraft's core, replication, state machine and the
/// proposer) and a blocking pool (signature verification, snapshot files) of at most one thread
/// per core; every thread is named with the node's prefix. Idle blocking threads are kept for
/// the whole run, because the CPU time of a thread that exited is no longer counted.
fn node_runtime(i: usize) -> Result<tokio::runtime::Runtime, String> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let prefix = thread_prefix(i);
    let threads = AtomicUsize::new(0);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(cores)
        .thread_keep_alive(Duration::from_secs(24 * 3600))
        .thread_name_fn(move || format!("{prefix}{}", threads.fetch_add(1, Ordering::Relaxed)))
        .enable_time()
        .build()
        .map_err(|e| format!("cannot build the runtime: {e}"))
}
