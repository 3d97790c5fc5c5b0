//! A state machine and helpers for tests, examples and the test node binary.
//!
//! [`OpCounter`] counts how often each distinct op was applied, so a test can check that every
//! acknowledged op is in the committed state exactly once.

use std::collections::BTreeMap;

use raft_bft::config::Params;
use raft_bft::crypto::KeyPair;
use raft_bft::manifest::Manifest;
use raft_bft::state_machine::StateMachine;
use raft_bft::types::{ClientId, Digest};
use serde::{Deserialize, Serialize};

/// Counts applications of each distinct op. The result of an op is its new count (u32, little
/// endian) followed by the total number of ops applied (u64, little endian). The digest chains
/// every applied op, so replicas that applied different ops (or orders) disagree.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpCounter {
    applied: u64,
    chain: [u8; 32],
    counts: BTreeMap<Vec<u8>, u32>,
}

/// Most bytes an [`OpCounter`] snapshot is decoded from.
const MAX_SNAPSHOT: usize = 1 << 30;

impl OpCounter {
    /// How often `op` was applied.
    pub fn count(&self, op: &[u8]) -> u32 {
        self.counts.get(op).copied().unwrap_or(0)
    }

    /// Ops applied in all.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Every op and its count.
    pub fn counts(&self) -> &BTreeMap<Vec<u8>, u32> {
        &self.counts
    }
}

impl StateMachine for OpCounter {
    fn apply(&mut self, client: &ClientId, op: &[u8]) -> Vec<u8> {
        let count = self.counts.entry(op.to_vec()).or_insert(0);
        *count += 1;
        self.applied += 1;
        let mut h = blake3::Hasher::new();
        h.update(&self.chain);
        h.update(&client.0);
        h.update(&(op.len() as u64).to_le_bytes());
        h.update(op);
        self.chain = *h.finalize().as_bytes();
        let mut result = count.to_le_bytes().to_vec();
        result.extend_from_slice(&self.applied.to_le_bytes());
        result
    }

    fn digest(&self) -> Digest {
        let mut h = blake3::Hasher::new();
        h.update(&self.chain);
        h.update(&self.applied.to_le_bytes());
        Digest(*h.finalize().as_bytes())
    }

    fn snapshot(&self) -> Vec<u8> {
        raft_bft::codec::encode(self).unwrap_or_default()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        *self = raft_bft::codec::decode(snapshot, MAX_SNAPSHOT).map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// A Byzantine stand-in for [`crate::NodeConfig::byzantine`]: the replica forges every
/// signature it sends (its proposals' when it leads, its votes' otherwise), as one that passes
/// off votes it never cast. Correct replicas refuse them, and replace such a leader.
pub fn forged_signatures() -> crate::Rewrite {
    std::sync::Arc::new(|_to, msg| {
        use raft_bft::message::ReplicaMessage;
        Some(match msg {
            ReplicaMessage::Vote(mut v) => {
                v.sig.0[0] ^= 1;
                ReplicaMessage::Vote(v)
            }
            ReplicaMessage::PreAppend(mut p) => {
                p.leader_sig.0[0] ^= 1;
                ReplicaMessage::PreAppend(p)
            }
            other => other,
        })
    })
}

/// Parameters that suit tests on one machine: the defaults, with checkpoints every 32 entries
/// so that compaction and state transfer happen in short runs.
pub fn test_params() -> Params {
    Params {
        checkpoint_interval: 32,
        ..Params::default()
    }
}

/// A manifest for `n` replicas on 127.0.0.1, their keys (from fixed seeds), and the UDP
/// sockets bound at their addresses: hand them to the nodes (`NodeConfig::socket`) so that no
/// other program takes a port between now and then (drop them just before starting replica
/// processes).
pub fn local_manifest(
    name: &str,
    n: usize,
    params: Params,
) -> std::io::Result<(
    Manifest,
    Vec<KeyPair>,
    Vec<std::sync::Arc<std::net::UdpSocket>>,
)> {
    let keys: Vec<KeyPair> = (0..n)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            seed[8..8 + name.len().min(24)].copy_from_slice(&name.as_bytes()[..name.len().min(24)]);
            KeyPair::from_seed(seed)
        })
        .collect();
    let mut replicas = Vec::new();
    let mut sockets = Vec::new();
    for k in &keys {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        replicas.push((k.public(), socket.local_addr()?.to_string()));
        sockets.push(std::sync::Arc::new(socket));
    }
    Ok((Manifest::new(name, replicas, params), keys, sockets))
}

/// Writes `manifest` (MessagePack) and one key file per replica (the hex of its seed) into
/// `dir`, for [the test node binary](https://docs.rs/raft-bft-net): returns the manifest's path
/// and the key files' paths.
pub fn write_cluster_files(
    dir: &std::path::Path,
    manifest: &Manifest,
    keys: &[KeyPair],
) -> std::io::Result<(std::path::PathBuf, Vec<std::path::PathBuf>)> {
    std::fs::create_dir_all(dir)?;
    let manifest_path = dir.join("manifest.mpk");
    let bytes =
        raft_bft::codec::encode(manifest).map_err(|e| std::io::Error::other(e.to_string()))?;
    std::fs::write(&manifest_path, bytes)?;
    let mut key_paths = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let path = dir.join(format!("replica-{i}.key"));
        std::fs::write(&path, hex(&key.seed()))?;
        key_paths.push(path);
    }
    Ok((manifest_path, key_paths))
}

/// Reads a manifest written by [`write_cluster_files`].
pub fn read_manifest(path: &std::path::Path) -> Result<Manifest, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    raft_bft::codec::decode(&bytes, 16 << 20).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads a key file written by [`write_cluster_files`].
pub fn read_key(path: &std::path::Path) -> Result<KeyPair, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = text.trim();
    let bytes: Vec<u8> = (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<_>>()
        .ok_or_else(|| format!("{}: not hex", path.display()))?;
    let seed: [u8; 32] = bytes
        .try_into()
        .map_err(|_| format!("{}: expected 32 bytes of hex", path.display()))?;
    Ok(KeyPair::from_seed(seed))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
