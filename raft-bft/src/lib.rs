//! # raft-bft
//!
//! A replicated log that keeps working when up to `f` of `3f + 1` replicas lie, equivocate,
//! forge, replay, censor or crash: Raft made Byzantine-fault tolerant. A leader batches signed
//! client transactions into entries; each entry passes three phases (PreAppend, Append, Commit),
//! each closed by a quorum of signed votes; a client trusts a result once `f + 1` replicas sent
//! matching signed replies.
//!
//! This crate is the protocol core, and it is sans-IO: no sockets, files, clocks or threads.
//!
//! - [`manifest::Cluster`]: the validated cluster description (members, keys, parameters).
//! - [`verify::Verifier`]: turns untrusted wire messages into [`verify::Verified`] values.
//! - [`replica::Replica`]: consumes verified input and hands out a [`replica::Ready`] of work:
//!   state to persist, messages and replies that may be sent now, and when to tick next.
//! - [`client::Client`]: signs txs, retries, and accepts a result on `f + 1` matching replies.
//! - `sim` (feature `simulator`): a deterministic simulator to test the protocol, or your own
//!   [`state_machine::StateMachine`], under network faults and crashes.
//!
//! # Driving a replica
//!
//! The caller owns I/O. It feeds inputs, persists what a `Ready` asks, confirms it, and only
//! then is given the messages that depend on it:
//!
//! ```
//! use std::sync::Arc;
//! use raft_bft::{
//!     config::Params, crypto::KeyPair, manifest::{Cluster, Manifest, ReplicaInfo},
//!     message::SignedTx, persist::DurableState, replica::Replica,
//!     state_machine::StateMachine, types::{ClientId, Digest, ReplicaId, Time},
//!     verify::Verifier,
//! };
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
//!     fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
//!         let bytes: [u8; 8] = snapshot.try_into().map_err(|_| "expected 8 bytes".to_string())?;
//!         self.0 = u64::from_le_bytes(bytes);
//!         Ok(())
//!     }
//! }
//!
//! let keys: Vec<KeyPair> = (1..=4).map(|i| KeyPair::from_seed([i; 32])).collect();
//! let manifest = Manifest {
//!     name: "example".into(),
//!     replicas: keys.iter().enumerate().map(|(i, k)| ReplicaInfo {
//!         id: ReplicaId(i as u32),
//!         public_key: k.public(),
//!         address: format!("127.0.0.1:{}", 7000 + i),
//!     }).collect(),
//!     admin_keys: vec![],
//!     params: Params::default(),
//! };
//! let cluster = Arc::new(Cluster::new(manifest)?);
//! let mut verifier = Verifier::new(cluster.clone(), [0; 32]); // seed from the OS in production
//! let mut leader = Replica::new(
//!     cluster.clone(), ReplicaId(0), keys[0].clone(), Counter::default(),
//!     DurableState::default(), Time(0),
//! )?;
//!
//! // A client's tx arrives at the leader.
//! let client = KeyPair::from_seed([9; 32]);
//! let tx = SignedTx::sign(cluster.cluster_id(), &client, 1, b"increment".to_vec());
//! leader.on_client_tx(Time(10), verifier.verify_tx(tx)?);
//!
//! // The leader proposes it, but its proposal is not released before the entry is durable.
//! let ready = leader.ready();
//! let batch = ready.persist.expect("the entry and the leader's vote to persist");
//! assert!(ready.messages.is_empty());
//! // ... write `batch.ops` to stable storage, then:
//! leader.on_persisted(Time(11), batch.id);
//! let ready = leader.ready();
//! assert_eq!(ready.messages.len(), 1); // the PreAppend, for the other replicas
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
pub mod checkpoint;
pub mod choice;
pub mod client;
pub mod codec;
pub mod config;
pub mod crypto;
pub mod manifest;
pub mod merkle;
pub mod message;
#[cfg(feature = "simulator")]
pub mod mutant;
pub mod persist;
pub mod replica;
#[cfg(feature = "simulator")]
pub mod sim;
pub mod state_machine;
#[cfg(any(test, feature = "simulator"))]
pub mod testing;
pub mod types;
pub mod verify;
