//! The conformance suite on every store of this crate.

use raft_bft::types::Digest;
use raft_bft_storage::conformance::{self, Harness};
use raft_bft_storage::{FileOptions, FileStore, MemStore, StorageError, Store};
use tempfile::TempDir;

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

/// The file store, each in a temporary directory, with small segments so that the suite
/// crosses segment boundaries.
#[derive(Default)]
struct Files {
    dirs: Vec<TempDir>,
}

fn small_segments() -> FileOptions {
    FileOptions {
        segment_bytes: 4096,
    }
}

impl Harness for Files {
    type S = FileStore;

    fn create(&mut self, cluster_id: Digest) -> FileStore {
        let dir = TempDir::new().expect("temporary directory");
        let store =
            FileStore::create_with(dir.path(), cluster_id, small_segments()).expect("create");
        self.dirs.push(dir);
        store
    }

    /// The crash interrupts a sync of every unsynced batch: if all of them are to be kept the
    /// disk wrote the whole group, otherwise it wrote half of it (a torn group, which recovery
    /// drops: the file store keeps or loses a group commit as a whole).
    fn crash_and_reopen(
        &mut self,
        mut store: FileStore,
        cluster_id: Digest,
        keep: usize,
    ) -> Result<FileStore, StorageError> {
        let dir = store.dir().to_path_buf();
        let len = store.unsynced_len();
        let written = if keep == 0 {
            0
        } else if keep >= store.unsynced_batches() {
            len
        } else {
            len / 2
        };
        store.crash_during_sync(written)?;
        FileStore::open_with(dir, cluster_id, small_segments())
    }
}

#[test]
fn mem_store_passes_the_conformance_suite() {
    conformance::run_all(&mut Mem);
}

#[test]
fn file_store_passes_the_conformance_suite() {
    conformance::run_all(&mut Files::default());
}

/// `store` holds batch 1 and its next sync is armed to fail.
fn a_failed_sync_stops_the_store_for_good(mut store: impl Store) {
    assert!(store.sync().is_err());
    // No retry that then acknowledges: everything after the failure is refused.
    assert!(matches!(store.sync(), Err(StorageError::Stopped(_))));
    assert!(matches!(
        store.append(&conformance::sample_batch(2)),
        Err(StorageError::Stopped(_))
    ));
    assert!(matches!(store.load(), Err(StorageError::Stopped(_))));
}

#[test]
fn a_failed_sync_stops_the_mem_store_for_good() {
    let mut store = MemStore::new(Digest([1; 32]));
    store.append(&conformance::sample_batch(1)).expect("append");
    store.fail_next_sync();
    a_failed_sync_stops_the_store_for_good(store);
}

#[test]
fn a_failed_sync_stops_the_file_store_for_good() {
    let dir = TempDir::new().expect("temporary directory");
    let mut store = FileStore::create(dir.path(), Digest([1; 32])).expect("create");
    store.append(&conformance::sample_batch(1)).expect("append");
    store.fail_next_sync();
    a_failed_sync_stops_the_store_for_good(store);
}
