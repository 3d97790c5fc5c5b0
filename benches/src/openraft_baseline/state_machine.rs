//! The replicated state machine: raft-bft's ledger, applied by every node to every committed
//! batch, with snapshots for openraft's log compaction.
//!
//! Every node starts from the same genesis ledger. A follower applies what the leader
//! replicated without checking signatures: plain Raft trusts its leader, and the leader checked
//! them before proposing. The state lives in memory; a snapshot is written to `snapshot` in the
//! node's directory (and synced) before openraft may purge the log entries it covers, so the
//! durable log plus the durable snapshot always hold the whole state.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ledger::{Ledger, LedgerOp, LedgerRejection, LedgerResult};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{AnyError, BasicNode, EntryPayload, StorageIOError, StoredMembership};
use raft_bft::message::SignedTx;
use raft_bft::state_machine::StateMachine;
use serde::{Deserialize, Serialize};

use super::types::{Batch, Entry, LogId, Results, StorageError, TypeConfig};

/// The snapshot file's name in the node's directory.
pub const SNAPSHOT_FILE: &str = "snapshot";

/// Most bytes of a snapshot file read back (the ledger's own limit, plus the metadata).
const MAX_SNAPSHOT_FILE_BYTES: u64 = ledger::MAX_SNAPSHOT_BYTES as u64 + (1 << 20);

type Meta = SnapshotMeta<u64, BasicNode>;
type Membership = StoredMembership<u64, BasicNode>;

/// A snapshot as stored: its metadata and the ledger's encoded state.
#[derive(Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: Meta,
    data: Vec<u8>,
}

/// The newest snapshot, shared with the snapshot builders (which run as their own tasks).
type Current = Arc<Mutex<Option<StoredSnapshot>>>;

/// One node's ledger and what openraft needs to know about it.
pub struct LedgerStore {
    ledger: Ledger,
    /// What a snapshot is restored onto (the genesis ledger knows the admin keys).
    genesis: Ledger,
    last_applied: Option<LogId>,
    membership: Membership,
    current: Current,
    dir: PathBuf,
    /// Snapshots built by this node, to make snapshot ids unique.
    built: u64,
}

/// A snapshot of the ledger taken when openraft asked for one, written out by
/// [`RaftSnapshotBuilder::build_snapshot`].
pub struct SnapshotBuilder {
    snapshot: StoredSnapshot,
    current: Current,
    dir: PathBuf,
}

/// Applies one tx to the ledger: its encoded result (an op that does not decode is refused as
/// malformed, as raft-bft's ledger does).
pub fn execute(ledger: &mut Ledger, tx: &SignedTx) -> Vec<u8> {
    let result = match LedgerOp::decode(&tx.op) {
        Ok(op) => ledger.execute(&tx.client, &op),
        Err(_) => LedgerResult::Rejected(LedgerRejection::Malformed),
    };
    result.encode()
}

impl LedgerStore {
    /// The state machine of the node whose directory is `dir`: `genesis`, or the snapshot
    /// stored there if there is one.
    pub fn open(dir: &Path, genesis: Ledger) -> Result<LedgerStore, String> {
        let mut store = LedgerStore {
            ledger: genesis.clone(),
            genesis,
            last_applied: None,
            membership: Membership::default(),
            current: Arc::new(Mutex::new(None)),
            dir: dir.to_path_buf(),
            built: 0,
        };
        let path = dir.join(SNAPSHOT_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(store),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        if bytes.len() as u64 > MAX_SNAPSHOT_FILE_BYTES {
            return Err(format!("{} is too large", path.display()));
        }
        let snapshot: StoredSnapshot = rmp_serde::from_slice(&bytes)
            .map_err(|e| format!("{} does not decode: {e}", path.display()))?;
        store.ledger = store.restore(&snapshot.data)?;
        store.last_applied = snapshot.meta.last_log_id;
        store.membership = snapshot.meta.last_membership.clone();
        *lock(&store.current) = Some(snapshot);
        Ok(store)
    }

    /// The ledger.
    #[cfg(test)]
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn restore(&self, data: &[u8]) -> Result<Ledger, String> {
        let mut ledger = self.genesis.clone();
        ledger.restore(data)?;
        Ok(ledger)
    }
}

impl RaftStateMachine<TypeConfig> for LedgerStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Results>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut results = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            results.push(match entry.payload {
                EntryPayload::Normal(Batch(txs)) => {
                    Results(txs.iter().map(|tx| execute(&mut self.ledger, tx)).collect())
                }
                EntryPayload::Membership(m) => {
                    self.membership = Membership::new(Some(entry.log_id), m);
                    Results::default()
                }
                EntryPayload::Blank => Results::default(),
            });
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        self.built += 1;
        let snapshot_id = match self.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, self.built),
            None => format!("0-0-{}", self.built),
        };
        SnapshotBuilder {
            snapshot: StoredSnapshot {
                meta: Meta {
                    last_log_id: self.last_applied,
                    last_membership: self.membership.clone(),
                    snapshot_id,
                },
                data: self.ledger.snapshot(),
            },
            current: self.current.clone(),
            dir: self.dir.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let ledger = self.restore(&data).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::error(e))
        })?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        persist(self.dir.clone(), self.current.clone(), stored).await?;
        self.ledger = ledger;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(lock(&self.current).as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let stored = self.snapshot.clone();
        persist(self.dir.clone(), self.current.clone(), stored).await?;
        Ok(Snapshot {
            meta: self.snapshot.meta.clone(),
            snapshot: Box::new(Cursor::new(self.snapshot.data.clone())),
        })
    }
}

/// Makes `snapshot` durable and the current one (unless a newer one already is), off the
/// async worker: on the node's blocking pool, so its CPU time counts for the node.
async fn persist(
    dir: PathBuf,
    current: Current,
    snapshot: StoredSnapshot,
) -> Result<(), StorageError> {
    let meta = snapshot.meta.clone();
    let written = tokio::task::spawn_blocking(move || persist_blocking(&dir, &current, snapshot))
        .await
        .map_err(|e| e.to_string())
        .and_then(|written| written);
    written.map_err(|e| {
        StorageIOError::write_snapshot(Some(meta.signature()), AnyError::error(e)).into()
    })
}

fn persist_blocking(dir: &Path, current: &Current, snapshot: StoredSnapshot) -> Result<(), String> {
    let bytes = rmp_serde::to_vec(&snapshot).map_err(|e| format!("cannot encode: {e}"))?;
    // A unique temporary name: a snapshot being built and one being installed may be written
    // at the same time.
    let tmp = dir.join(format!("{SNAPSHOT_FILE}-{}.tmp", snapshot.meta.snapshot_id));
    let mut file =
        std::fs::File::create(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_data())
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    drop(file);
    let mut current = lock(current);
    let newer_exists = current
        .as_ref()
        .is_some_and(|c| c.meta.last_log_id > snapshot.meta.last_log_id);
    if newer_exists {
        return std::fs::remove_file(&tmp)
            .map_err(|e| format!("cannot remove {}: {e}", tmp.display()));
    }
    let path = dir.join(SNAPSHOT_FILE);
    std::fs::rename(&tmp, &path)
        .map_err(|e| format!("cannot rename to {}: {e}", path.display()))?;
    *current = Some(snapshot);
    drop(current);
    // The rename itself must be durable before openraft purges the log behind the snapshot
    // (it does once this returns).
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", dir.display()))
}

/// Locks the current snapshot; it is replaced whole, so a poisoned lock is still consistent.
fn lock(current: &Mutex<Option<StoredSnapshot>>) -> MutexGuard<'_, Option<StoredSnapshot>> {
    current.lock().unwrap_or_else(PoisonError::into_inner)
}
