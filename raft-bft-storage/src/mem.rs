//! A store in memory, with the same contract as the file store.

use raft_bft::persist::{DurableState, PersistBatch};
use raft_bft::types::Digest;

use crate::{Snapshot, StorageError, Store};

/// Everything in memory. [`MemStore::crash`] loses what was not synced, as a real crash would.
#[derive(Clone, Debug)]
pub struct MemStore {
    cluster_id: Digest,
    durable: DurableState,
    last_durable: Option<u64>,
    /// Handed over, not synced yet.
    pending: Vec<PersistBatch>,
    last_appended: Option<u64>,
    /// Set by [`MemStore::fail_next_sync`]: the next sync fails and stops the store.
    fail_next_sync: bool,
    stopped: Option<String>,
    snapshot: Option<Snapshot>,
}

impl MemStore {
    /// An empty store for the cluster `cluster_id`.
    pub fn new(cluster_id: Digest) -> Self {
        MemStore {
            cluster_id,
            durable: DurableState::default(),
            last_durable: None,
            pending: Vec::new(),
            last_appended: None,
            fail_next_sync: false,
            stopped: None,
            snapshot: None,
        }
    }

    /// Opens this store for `cluster_id`: refuses a store of another cluster.
    pub fn reopen(mut self, cluster_id: Digest) -> Result<Self, StorageError> {
        if self.cluster_id != cluster_id {
            return Err(StorageError::WrongCluster {
                path: "(memory)".into(),
                expected: cluster_id,
                found: self.cluster_id,
            });
        }
        self.stopped = None;
        self.fail_next_sync = false;
        // Batch ids belong to the replica instance that appended them.
        self.last_appended = None;
        self.last_durable = None;
        Ok(self)
    }

    /// A crash: every batch not synced is lost; `keep` of them survive (a prefix, as a disk
    /// that wrote some of them before power went out).
    pub fn crash(&mut self, keep: usize) {
        let pending = std::mem::take(&mut self.pending);
        for batch in pending.into_iter().take(keep) {
            self.durable.apply_batch(batch);
        }
    }

    /// Makes the next sync fail, as a disk error would (for tests of the failure path).
    pub fn fail_next_sync(&mut self) {
        self.fail_next_sync = true;
    }

    fn check_running(&self) -> Result<(), StorageError> {
        match &self.stopped {
            Some(why) => Err(StorageError::Stopped(why.clone())),
            None => Ok(()),
        }
    }
}

impl Store for MemStore {
    fn cluster_id(&self) -> Digest {
        self.cluster_id
    }

    fn append(&mut self, batch: &PersistBatch) -> Result<(), StorageError> {
        self.check_running()?;
        crate::check_order(self.last_appended, batch.id)?;
        self.last_appended = Some(batch.id);
        self.pending.push(batch.clone());
        Ok(())
    }

    fn sync(&mut self) -> Result<Option<u64>, StorageError> {
        self.check_running()?;
        if self.fail_next_sync {
            let why = "sync failed (injected)".to_string();
            self.stopped = Some(why.clone());
            return Err(StorageError::Stopped(why));
        }
        for batch in self.pending.drain(..) {
            self.last_durable = Some(batch.id);
            self.durable.apply_batch(batch);
        }
        Ok(self.last_durable)
    }

    fn load(&self) -> Result<DurableState, StorageError> {
        self.check_running()?;
        Ok(self.durable.clone())
    }

    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.check_running()?;
        if let Some(old) = &self.snapshot {
            if snapshot.index <= old.index {
                return Err(StorageError::StaleSnapshot {
                    index: snapshot.index,
                    newest: old.index,
                });
            }
        }
        self.snapshot = Some(snapshot.clone());
        Ok(())
    }

    fn load_snapshot(&self) -> Result<Option<Snapshot>, StorageError> {
        self.check_running()?;
        Ok(self.snapshot.clone())
    }
}
