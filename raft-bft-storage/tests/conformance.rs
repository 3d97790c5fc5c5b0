//! The conformance suite on every store of this crate.

use raft_bft::types::Digest;
use raft_bft_storage::conformance::{self, Harness};
use raft_bft_storage::{MemStore, StorageError, Store};

/// The in-memory store.
struct Mem;

impl Harness for Mem {
    type S = MemStore;

    fn create(&mut self, cluster_id: Digest) -> MemStore {
        MemStore::new(cluster_id)
    }

    fn crash_and_reopen(
        &mut self,
        mut store: MemStore,
        cluster_id: Digest,
        keep: usize,
    ) -> Result<MemStore, StorageError> {
        store.crash(keep);
        store.reopen(cluster_id)
    }
}

#[test]
fn mem_store_passes_the_conformance_suite() {
    conformance::run_all(&mut Mem);
}

#[test]
fn a_failed_sync_stops_the_store_for_good() {
    let mut store = MemStore::new(Digest([1; 32]));
    store.append(&conformance::sample_batch(1)).expect("append");
    store.fail_next_sync();
    assert!(store.sync().is_err());
    // No retry that then acknowledges: everything after the failure is refused.
    assert!(matches!(store.sync(), Err(StorageError::Stopped(_))));
    assert!(matches!(
        store.append(&conformance::sample_batch(2)),
        Err(StorageError::Stopped(_))
    ));
}
