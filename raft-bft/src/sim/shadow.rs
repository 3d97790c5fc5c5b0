//! Real stores run in step with the simulated disks.
//!
//! The simulated [`Disk`](super::node) decides when batches become durable and what a crash
//! keeps; a [`ShadowStore`] is told the same story (every batch the disk confirmed, and at each
//! crash the unsynced batches the disk wrote whole plus the one it tore) and, on restart, the
//! replica starts from what the *store* loads. The simulator checks that this equals its own
//! model, and its checkers (agreement, one vote per slot across restarts, ...) then judge the
//! protocol running on the real store. `raft-bft-storage` runs the simulator this way on its
//! file store.

use crate::persist::{DurableState, PersistBatch};

/// A real store driven by the simulator for one replica instance.
pub trait ShadowStore: Send {
    /// The simulated disk made `batch` durable: append it and sync.
    fn persisted(&mut self, batch: &PersistBatch) -> Result<(), String>;

    /// The replica crashed. Of the batches not yet durable, the disk had written `kept` whole
    /// and was writing `torn` when the power went (it is lost). The store is closed as a crash
    /// would leave it and opened again.
    fn crash(&mut self, kept: &[PersistBatch], torn: Option<&PersistBatch>) -> Result<(), String>;

    /// Everything the store holds, as the restarted replica loads it.
    fn load(&mut self) -> Result<DurableState, String>;

    /// The disk was wiped while the replica was down: the store is replaced by a new, empty
    /// one (as an operator would create for a replica told to rebuild).
    fn wipe(&mut self) -> Result<(), String>;
}

/// Opens the shadow store of simulated node `node` (its index in the run; a Byzantine
/// replica's twin is a node of its own).
pub type OpenShadowStore<'a> = dyn Fn(usize) -> Result<Box<dyn ShadowStore>, String> + 'a;
