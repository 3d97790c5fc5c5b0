//! raft-bft as deployed: `n` replica processes on 127.0.0.1, each a [`raft_bft_net::Node`]
//! with durable storage (this binary re-executed as `compare node`), and the clients in this
//! process, connected over QUIC with [`raft_bft_net::Client`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_std::sync::Mutex;
use raft_bft::manifest::Manifest;
use raft_bft::message::SignedTx;
use raft_bft::types::ReplicaId;
use raft_bft_net::wire::StatusReport;
use raft_bft_net::{Client, ClientOptions, Connections, Node, NodeConfig};
use serde::{Deserialize, Serialize};

use crate::measure;
use crate::system::{replica_key, ClusterSpec, Submission, System};
use crate::workload::Accounts;

/// Clients sharing one set of connections: a replica admits at most `client_in_flight` (1024)
/// txs in flight per connection, so a large client population spreads over several.
const CLIENTS_PER_CONNECTIONS: usize = 512;

/// What a node process is started with (written to a file it reads).
#[derive(Serialize, Deserialize)]
pub struct NodeSpec {
    /// The cluster's manifest.
    pub manifest: Manifest,
    /// This replica.
    pub id: usize,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// The workload's client count and memo size (to build the same genesis ledger).
    pub clients: usize,
    /// See [`Accounts::new`].
    pub memo_bytes: usize,
}

/// Runs one replica until its standard input closes (the body of `compare node`).
pub fn run_node(spec_file: &Path) -> Result<(), String> {
    let bytes = std::fs::read(spec_file).map_err(|e| format!("{}: {e}", spec_file.display()))?;
    let spec: NodeSpec =
        rmp_serde::from_slice(&bytes).map_err(|e| format!("{}: {e}", spec_file.display()))?;
    let ledger = Accounts::new(spec.clients, spec.memo_bytes).genesis();
    let config = NodeConfig::new(
        spec.manifest,
        ReplicaId(spec.id as u32),
        replica_key(spec.id),
        &spec.data_dir,
    );
    async_std::task::block_on(async {
        let node = Node::start(config, ledger)
            .await
            .map_err(|e| e.to_string())?;
        raft_bft_net::stdin_closed().await;
        node.shutdown().await.map_err(|e| e.to_string())
    })
}

/// A running cluster of node processes and its clients.
pub struct QuicCluster {
    children: Vec<Child>,
    connections: Vec<Connections>,
    clients: Vec<Arc<Mutex<Client>>>,
}

/// Starts `spec.nodes` node processes running this program as `compare node` (see
/// [`start_with`]).
pub fn start(spec: &ClusterSpec) -> Result<Box<dyn System>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    start_with(spec, &exe)
}

/// Starts `spec.nodes` node processes of `program` (the `compare` binary, run as
/// `program node --spec FILE`) on the manifest's addresses and connects
/// `spec.accounts.len()` clients; returns once every replica agrees on a leader.
pub fn start_with(spec: &ClusterSpec, exe: &Path) -> Result<Box<dyn System>, String> {
    let mut cluster = QuicCluster {
        children: Vec::new(),
        connections: Vec::new(),
        clients: Vec::new(),
    };
    for id in 0..spec.nodes {
        let dir = spec.dir.join(format!("node-{id}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let node = NodeSpec {
            manifest: spec.manifest.clone(),
            id,
            data_dir: dir.join("data"),
            clients: spec.accounts.len(),
            memo_bytes: spec.accounts.memo_bytes(),
        };
        let file = dir.join("node.spec");
        let bytes = rmp_serde::to_vec(&node).map_err(|e| e.to_string())?;
        std::fs::write(&file, bytes).map_err(|e| format!("{}: {e}", file.display()))?;
        let log = std::fs::File::create(dir.join("node.log"))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let child = Command::new(exe)
            .arg("node")
            .arg("--spec")
            .arg(&file)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start node {id}: {e}"))?;
        cluster.children.push(child);
    }
    let options = ClientOptions::default();
    for chunk in 0..spec.accounts.len().div_ceil(CLIENTS_PER_CONNECTIONS) {
        let connections = Connections::connect(spec.manifest.clone(), options.clone())
            .map_err(|e| e.to_string())?;
        let first = chunk * CLIENTS_PER_CONNECTIONS;
        let last = (first + CLIENTS_PER_CONNECTIONS).min(spec.accounts.len());
        for c in first..last {
            let client = Client::new(connections.clone(), spec.accounts.key(c).clone())
                .map_err(|e| e.to_string())?;
            cluster.clients.push(Arc::new(Mutex::new(client)));
        }
        cluster.connections.push(connections);
    }
    cluster.wait_for_leader(Duration::from_secs(20))?;
    Ok(Box::new(cluster))
}

impl QuicCluster {
    fn wait_for_leader(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            for (id, child) in self.children.iter_mut().enumerate() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("node {id} exited at start: {status}"));
                }
            }
            if self.agreed_leader().is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("no leader within {within:?}"))
    }

    /// The leader every replica reports, if they all report the same one.
    fn agreed_leader(&self) -> Option<usize> {
        self.agreed_status().map(|(leader, _)| leader)
    }

    /// The leader every replica reports, and its commit index.
    fn agreed_status(&self) -> Option<(usize, u64)> {
        let connections = self.connections.first()?;
        let n = self.children.len();
        async_std::task::block_on(async {
            let mut reports: Vec<StatusReport> = Vec::with_capacity(n);
            for r in 0..n {
                let report = connections
                    .status(ReplicaId(r as u32), Duration::from_millis(500))
                    .await
                    .ok()?;
                if report.changing_term
                    || reports
                        .first()
                        .is_some_and(|first| first.leader != report.leader)
                {
                    return None;
                }
                reports.push(report);
            }
            let leader = reports.first()?.leader.as_usize();
            Some((leader, reports.get(leader)?.commit_index.0))
        })
    }
}

impl System for QuicCluster {
    fn submit(&self, client: usize, tx: SignedTx) -> Submission {
        let client = self.clients[client].clone();
        Box::pin(async move {
            let mut client = client.lock().await;
            client
                .resubmit(tx)
                .await
                .map(|committed| committed.result)
                .map_err(|e| e.to_string())
        })
    }

    fn cpu(&self) -> Vec<Duration> {
        self.children
            .iter()
            .map(|c| measure::process_cpu(c.id()).unwrap_or_default())
            .collect()
    }

    fn leader(&self) -> Option<usize> {
        self.agreed_leader()
    }

    fn committed_entries(&self) -> Option<u64> {
        self.agreed_status().map(|(_, commit)| commit)
    }

    fn shutdown(mut self: Box<Self>) -> Result<(), String> {
        self.clients.clear();
        for c in self.connections.drain(..) {
            c.close();
        }
        // Closing a node's standard input asks it to stop gracefully.
        for child in &mut self.children {
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.flush();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut failures = Vec::new();
        for (id, child) in self.children.iter_mut().enumerate() {
            loop {
                match child.try_wait() {
                    Ok(Some(status)) if status.success() => break,
                    Ok(Some(status)) => {
                        failures.push(format!("node {id} exited with {status}"));
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        failures.push(format!("node {id} did not stop within 10 s"));
                        break;
                    }
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }
}

impl Drop for QuicCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
