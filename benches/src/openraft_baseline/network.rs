//! The in-process transport: a node reaches a peer by calling the peer's `Raft` handle.
//!
//! A call hands the request to the peer's Raft core over the core's own channel, by value (the
//! leader's replication task cloned the entries out of its log, as it would to send them over a
//! socket), and awaits the peer's reply; the peer does the work on its own runtime. Nothing is
//! shared between nodes but these handles.

use std::sync::{Arc, OnceLock};

use openraft::error::{
    Infallible, InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;

use super::types::{Raft, TypeConfig};

/// Every node's handle, by node id; set once all nodes are created (before any of them is
/// initialised, so before any RPC).
pub type Peers = Arc<OnceLock<Vec<Raft>>>;

/// One node's way to its peers.
pub struct Network {
    peers: Peers,
}

impl Network {
    /// A network over `peers`.
    pub fn new(peers: Peers) -> Self {
        Network { peers }
    }
}

/// A connection to one peer.
pub struct Connection {
    target: u64,
    peers: Peers,
}

type RpcResult<T, E = Infallible> = Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

impl Connection {
    /// The peer's handle; unreachable (the caller backs off) while the peers are not set.
    fn peer(&self) -> Result<Raft, Unreachable> {
        let raft = usize::try_from(self.target)
            .ok()
            .and_then(|i| self.peers.get()?.get(i));
        raft.cloned().ok_or_else(|| {
            Unreachable::new(&std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no node {}", self.target),
            ))
        })
    }

    /// The peer's error as the caller's RPC error: a stopped peer is unreachable (the caller
    /// backs off and retries), any other error is the peer's answer.
    fn error<E: std::error::Error>(
        &self,
        e: RaftError<u64, E>,
    ) -> RPCError<u64, BasicNode, RaftError<u64, E>> {
        match e {
            RaftError::Fatal(fatal) => RPCError::Unreachable(Unreachable::new(&fatal)),
            answer => RPCError::RemoteError(RemoteError::new(self.target, answer)),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Connection {
        Connection {
            target,
            peers: self.peers.clone(),
        }
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    // The RPC timeouts in `_option` are enforced by openraft around these calls.
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        let peer = self.peer()?;
        peer.append_entries(rpc).await.map_err(|e| self.error(e))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        let peer = self.peer()?;
        peer.install_snapshot(rpc).await.map_err(|e| self.error(e))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>> {
        let peer = self.peer()?;
        peer.vote(rpc).await.map_err(|e| self.error(e))
    }
}
