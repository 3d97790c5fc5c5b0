//! Test support (feature `simulator`): a cluster with fixed, well-known keys, for tests of the
//! protocol and of code built on it.

use std::sync::Arc;

use crate::config::Params;
use crate::crypto::KeyPair;
use crate::manifest::{Cluster, Manifest};
use crate::types::Digest;

/// A cluster of `n` replicas whose keys everyone knows: replica `i` has the key of seed
/// `[i + 1; 32]`. Only for tests.
///
/// ```
/// use raft_bft::testing::TestCluster;
/// let t = TestCluster::new("doc", 4, Default::default());
/// assert_eq!((t.cluster.n(), t.cluster.f(), t.cluster.quorum()), (4, 1, 3));
/// ```
pub struct TestCluster {
    /// The validated cluster.
    pub cluster: Arc<Cluster>,
    /// Each replica's key, by id.
    pub keys: Vec<KeyPair>,
}

impl TestCluster {
    /// Builds the cluster `name` (the name changes the cluster id).
    ///
    /// # Panics
    /// If `n` is zero or `params` are invalid (a test set-up error).
    pub fn new(name: &str, n: usize, params: Params) -> Self {
        let keys: Vec<KeyPair> = (0..n)
            .map(|i| KeyPair::from_seed([i as u8 + 1; 32]))
            .collect();
        let manifest = Manifest::new(
            name,
            keys.iter()
                .enumerate()
                .map(|(i, k)| (k.public(), format!("test:{i}"))),
            params,
        );
        let cluster = Cluster::new(manifest).expect("a valid test cluster");
        TestCluster {
            cluster: Arc::new(cluster),
            keys,
        }
    }

    /// The cluster id.
    pub fn cluster_id(&self) -> Digest {
        *self.cluster.cluster_id()
    }
}

/// The key of test client `i` (seed `[100 + i; 32]`).
pub fn client_key(i: u8) -> KeyPair {
    KeyPair::from_seed([100u8.wrapping_add(i); 32])
}

/// A state machine for tests: it records every op, answers with the count so far, refuses the
/// op `b"forbidden"`, and digests the whole sequence of ops.
#[derive(Clone, Debug, Default)]
pub struct Recorder(pub Vec<Vec<u8>>);

impl crate::state_machine::StateMachine for Recorder {
    fn admit(&self, _client: &crate::types::ClientId, op: &[u8]) -> Result<(), String> {
        if op == b"forbidden" {
            return Err("forbidden op".into());
        }
        Ok(())
    }

    fn apply(&mut self, _client: &crate::types::ClientId, op: &[u8]) -> Vec<u8> {
        self.0.push(op.to_vec());
        (self.0.len() as u64).to_le_bytes().to_vec()
    }

    fn digest(&self) -> Digest {
        let mut hasher = blake3::Hasher::new();
        for op in &self.0 {
            hasher.update(&(op.len() as u64).to_le_bytes());
            hasher.update(op);
        }
        Digest(*hasher.finalize().as_bytes())
    }

    fn snapshot(&self) -> Vec<u8> {
        crate::codec::encode(&self.0).expect("a list of byte strings always encodes")
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.0 = crate::codec::decode(snapshot, snapshot.len()).map_err(|e| e.to_string())?;
        Ok(())
    }
}
