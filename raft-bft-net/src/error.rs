//! What can go wrong in the runtime, with what a user needs to act on it.

use std::net::SocketAddr;
use std::path::PathBuf;

use raft_bft::message::Rejection;

/// A failure to start or run a node.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The manifest is unusable.
    #[error("invalid manifest: {0}")]
    Manifest(#[from] raft_bft::manifest::ManifestError),
    /// TLS could not be set up.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// An address in the manifest or configuration does not resolve.
    #[error("cannot resolve address {address:?}: {why}")]
    Address {
        /// The address as written.
        address: String,
        /// Why.
        why: String,
    },
    /// Storage failed; the replica stopped rather than speak without durable state.
    #[error("storage in {dir}: {source}")]
    Storage {
        /// The data directory.
        dir: PathBuf,
        /// The store's error.
        source: raft_bft_storage::StorageError,
    },
    /// The replica refused its durable state.
    #[error("replica: {0}")]
    Replica(#[from] raft_bft::replica::ReplicaError),
    /// The node's event loop has stopped.
    #[error("the node has stopped: {0}")]
    Stopped(String),
}

/// Why a client request did not produce an accepted result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// No `f + 1` matching replies arrived in time. The tx may still execute: its outcome is
    /// unknown.
    #[error("no result for ts {ts} within {waited_ms} ms (outcome unknown)")]
    Timeout {
        /// The tx's timestamp.
        ts: u64,
        /// How long the client waited.
        waited_ms: u64,
    },
    /// `f + 1` replicas agree the tx was refused (a final answer).
    #[error("tx ts {ts} was rejected: {rejection:?}")]
    Rejected {
        /// The tx's timestamp.
        ts: u64,
        /// Why, as the replicas signed it.
        rejection: Rejection,
    },
    /// The request is invalid and was not sent (too large, bad configuration).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The client could not be set up (manifest, TLS, socket).
    #[error("client setup: {0}")]
    Setup(String),
    /// The replica did not answer a status request in time.
    #[error("replica {replica} did not answer: {why}")]
    Unreachable {
        /// Which replica.
        replica: raft_bft::types::ReplicaId,
        /// Why.
        why: String,
    },
}
