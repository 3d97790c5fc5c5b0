//! Durable storage for raft-bft replicas.
//!
//! A replica never writes anything itself: it hands its caller a
//! [`PersistBatch`] and holds back every message that depends
//! on it until the caller confirms the batch durable. A [`Store`] is what the caller hands the
//! batches to. It takes any number of them ([`Store::append`]) and makes all of them durable at
//! once ([`Store::sync`], group commit). On start, [`Store::load`] gives back exactly what was
//! synced, as a [`DurableState`] for
//! [`Replica::new`](raft_bft::replica::Replica::new).
//!
//! [`FileStore`] keeps a segmented write-ahead log on disk and tells a torn write from
//! corruption when it opens; [`MemStore`] keeps everything in memory (for tests and
//! simulations) and can lose what was not synced, as a crash would. [`conformance`] is the
//! suite every store must pass.
//!
//! ```
//! use raft_bft::persist::{PersistBatch, PersistOp};
//! use raft_bft::types::{Digest, Term};
//! use raft_bft_storage::{MemStore, Store};
//!
//! let mut store = MemStore::new(Digest([1; 32]));
//! store.append(&PersistBatch { id: 1, ops: vec![PersistOp::SeekTerm(Term(1))] })?;
//! assert_eq!(store.sync()?, Some(1)); // batch 1 is durable: release what waited for it
//! let state = store.load()?;
//! assert_eq!(state.term, Term(1));
//! # Ok::<(), raft_bft_storage::StorageError>(())
//! ```

pub mod conformance;
mod error;
mod file;
mod frame;
mod mem;

pub use error::StorageError;
pub use file::{
    FileOptions, FileStore, Recovery, SyncDone, SyncJob, GROUP_RECORD_BYTES, MAX_BATCH_BYTES,
};
pub use mem::MemStore;

use raft_bft::persist::{DurableState, PersistBatch};
use raft_bft::types::{Digest, Index};

/// A state machine snapshot: the state after executing every entry up to `index`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The last entry the snapshot includes.
    pub index: Index,
    /// The state machine's digest of this state (what execution certificates sign).
    pub state_digest: Digest,
    /// The state machine's own encoding of its state.
    pub data: Vec<u8>,
}

/// The storage contract that the replica's persist-before-speak API needs.
///
/// Batches are applied in the order they are appended, with the semantics of
/// [`DurableState::apply`]. A batch counts as durable only once a [`Store::sync`] that followed
/// its `append` returned `Ok`: after a crash, a store holds every synced batch and, of the
/// batches appended after the last successful sync, at most a prefix (never a part of one
/// batch, never a later batch without an earlier one).
///
/// Batch ids are the replica's, and a restarted replica numbers its batches from 1 again: ids
/// must increase from one `append` to the next *within one opening of the store*, and `sync`
/// only ever names ids appended since the store was opened (never one from before a crash,
/// which the new replica instance would take for one of its own).
///
/// An I/O error is final for the store instance: it refuses everything after it (the replica
/// must stop; it may not retry a sync and then acknowledge, because the failed write may be
/// lost). A refused argument ([`StorageError::OutOfOrder`], [`StorageError::TooLarge`],
/// [`StorageError::StaleSnapshot`]) changes nothing and does not stop the store.
///
/// Compaction is an operation of its own, durable like any other: the replica persists each
/// stable checkpoint (`PersistOp::Checkpoint`, which carries the checkpoint's state and
/// compacts the log below it); a store may reclaim the space it frees at the sync that covers
/// it. The [`FileStore`] keeps the newest checkpoint in its base image, rewritten at each
/// compaction.
///
/// [`Store::save_snapshot`] keeps a snapshot file apart from the log; the replica does not use
/// it (its checkpoints travel in the log, so that a checkpoint and the compaction it allows are
/// durable together).
pub trait Store {
    /// The cluster this store belongs to (checked when the store is opened).
    fn cluster_id(&self) -> Digest;

    /// Hands a batch over. It is not durable yet.
    fn append(&mut self, batch: &PersistBatch) -> Result<(), StorageError>;

    /// Makes every batch handed over so far durable, with one sync. Returns the id of the last
    /// batch now durable (`None` if none was ever appended).
    fn sync(&mut self) -> Result<Option<u64>, StorageError>;

    /// Everything made durable so far.
    fn load(&self) -> Result<DurableState, StorageError>;

    /// Saves a snapshot, durably before it returns, in place of the previous one. Snapshot
    /// indexes must increase.
    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError>;

    /// The newest snapshot saved, checked against its digest.
    fn load_snapshot(&self) -> Result<Option<Snapshot>, StorageError>;
}

/// Refuses a batch id at or below the last one appended.
pub(crate) fn check_order(last: Option<u64>, id: u64) -> Result<(), StorageError> {
    match last {
        Some(last) if id <= last => Err(StorageError::OutOfOrder { last, got: id }),
        _ => Ok(()),
    }
}
