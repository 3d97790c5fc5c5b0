//! # raft-bft-net
//!
//! Runs a [`raft_bft`] replica for real: QUIC between replicas and to clients (quinn over
//! async-std), a write-ahead log on disk ([`raft_bft_storage::FileStore`]), timers, and
//! signature verification on every core.
//!
//! - [`Node`]: starts a replica from a manifest, a key, a data directory and a
//!   [`StateMachine`](raft_bft::state_machine::StateMachine), and serves peers and clients.
//! - [`Client`]: connects with the manifest and a client key, and returns a result once
//!   `f + 1` replicas agree (or a typed [`ClientError`]).
//!
//! Replica links use mutual TLS in which each certificate is bound to the replica's key in the
//! manifest; clients pin each replica's key. Every byte from the network is framed with a size
//! checked before allocation, decoded by the bounded codec and verified before the replica sees
//! it. Queues, maps and QUIC buffers are bounded by [`Limits`] (queues by count of items, each
//! item by the frame limit).
//!
//! # Example
//!
//! A 4-replica cluster on loopback, and a client:
//!
//! ```
//! use raft_bft::{config::Params, crypto::KeyPair, manifest::Manifest};
//! use raft_bft::state_machine::StateMachine;
//! use raft_bft::types::{ClientId, Digest, ReplicaId};
//! use raft_bft_net::{Client, ClientOptions, Node, NodeConfig};
//!
//! #[derive(Default)]
//! struct Counter(u64);
//! impl StateMachine for Counter {
//!     fn apply(&mut self, _: &ClientId, _: &[u8]) -> Vec<u8> {
//!         self.0 += 1;
//!         self.0.to_le_bytes().to_vec()
//!     }
//!     fn digest(&self) -> Digest {
//!         Digest(*blake3::hash(&self.0.to_le_bytes()).as_bytes())
//!     }
//!     fn snapshot(&self) -> Vec<u8> {
//!         self.0.to_le_bytes().to_vec()
//!     }
//!     fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
//!         self.0 = u64::from_le_bytes(bytes.try_into().map_err(|_| "8 bytes".to_string())?);
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # async_std::task::block_on(async {
//! let dir = tempfile::tempdir()?;
//! let keys: Vec<KeyPair> = (1..=4).map(|i| KeyPair::from_seed([i; 32])).collect();
//! let ports: Vec<u16> = (0..4).map(|_| raft_bft_net::free_udp_port()).collect::<Result<_, _>>()?;
//! let manifest = Manifest::new(
//!     "doc-example",
//!     keys.iter().zip(&ports).map(|(k, p)| (k.public(), format!("127.0.0.1:{p}"))),
//!     Params::default(),
//! );
//! let mut nodes = Vec::new();
//! for (i, key) in keys.iter().enumerate() {
//!     let config = NodeConfig::new(manifest.clone(), ReplicaId(i as u32), key.clone(), dir.path().join(i.to_string()));
//!     nodes.push(Node::start(config, Counter::default()).await?);
//! }
//! let mut client = Client::connect(manifest, KeyPair::from_seed([9; 32]), ClientOptions::default())?;
//! let committed = client.submit(b"increment".to_vec()).await?;
//! assert_eq!(committed.result, 1u64.to_le_bytes());
//! assert!(committed.replicas.len() >= 2); // f + 1 matching signed replies
//! for node in nodes {
//!     node.shutdown().await?;
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })
//! # }
//! ```

pub mod client;
mod error;
pub mod frame;
mod limits;
mod node;
mod stats;
pub mod testkit;
pub mod tls;
mod transport;
mod verify;
pub mod wire;

pub use client::{Client, ClientOptions, Committed, Connections};
pub use error::{ClientError, NetError};
pub use limits::Limits;
pub use node::{Node, NodeConfig, StartMode};
pub use stats::NetStats;
pub use transport::{close_code, Rewrite};

/// Returns once standard input closes (its writer exited or closed it): how a supervisor that
/// pipes a node's standard input asks it to stop gracefully. What is written is discarded
/// without being kept.
pub async fn stdin_closed() {
    let (tx, rx) = async_std::channel::bounded::<()>(1);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = tx.send_blocking(());
    });
    let _ = rx.recv().await;
}

/// A UDP port on 127.0.0.1 that was free a moment ago (for tests and local clusters).
pub fn free_udp_port() -> std::io::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
