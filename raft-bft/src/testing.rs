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
