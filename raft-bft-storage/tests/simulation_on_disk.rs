//! The deterministic simulator runs the real protocol with every replica's durable state in a
//! real [`FileStore`]: batches are appended and synced as the simulated disk confirms them,
//! crashes leave on disk what the disk-fault model says (whole unsynced batches, and a torn
//! one), and restarted replicas start from what the file store loads. The simulator's checkers
//! (agreement, linearizability, one vote per `(phase, term, index)` across restarts, ...) then
//! judge the protocol running on the file store.
//!
//! The stores live on `/dev/shm` (tmpfs): `fdatasync` there is free, so a run costs what the
//! protocol costs. The file system semantics the store relies on are the same.

use std::path::PathBuf;

use raft_bft::persist::{DurableState, PersistBatch};
use raft_bft::sim::{self, ShadowStore, SimConfig, SimReport, Strategy};
use raft_bft::types::Digest;
use raft_bft_storage::{FileOptions, FileStore, Store};
use tempfile::TempDir;

const CLUSTER: Digest = Digest([0x51; 32]);

fn options() -> FileOptions {
    // Small segments: runs cross many segment boundaries.
    FileOptions {
        segment_bytes: 64 << 10,
    }
}

/// A file store driven by the simulator. `forget_votes` breaks it on purpose: its loads drop
/// every vote (what a store that did not keep votes would do).
struct FileShadow {
    dir: PathBuf,
    store: Option<FileStore>,
    forget_votes: bool,
}

impl FileShadow {
    fn open(dir: PathBuf, forget_votes: bool) -> Result<Box<dyn ShadowStore>, String> {
        let store = FileStore::create_with(&dir, CLUSTER, options()).map_err(|e| e.to_string())?;
        Ok(Box::new(FileShadow {
            dir,
            store: Some(store),
            forget_votes,
        }))
    }

    fn store(&mut self) -> Result<&mut FileStore, String> {
        self.store
            .as_mut()
            .ok_or_else(|| "the store is closed".to_string())
    }
}

impl ShadowStore for FileShadow {
    fn persisted(&mut self, batch: &PersistBatch) -> Result<(), String> {
        let store = self.store()?;
        store.append(batch).map_err(|e| e.to_string())?;
        store.sync().map_err(|e| e.to_string())?;
        Ok(())
    }

    fn crash(&mut self, kept: &[PersistBatch], torn: Option<&PersistBatch>) -> Result<(), String> {
        let mut store = self.store.take().ok_or("the store is closed")?;
        // What the disk wrote whole before the power went is on disk, synced or not.
        for batch in kept {
            store.append(batch).map_err(|e| e.to_string())?;
        }
        store.sync().map_err(|e| e.to_string())?;
        match torn {
            Some(batch) => {
                store.append(batch).map_err(|e| e.to_string())?;
                let len = store.unsynced_len();
                store
                    .crash_during_sync(len / 2)
                    .map_err(|e| e.to_string())?;
            }
            None => drop(store),
        }
        let reopened =
            FileStore::open_with(&self.dir, CLUSTER, options()).map_err(|e| e.to_string())?;
        self.store = Some(reopened);
        Ok(())
    }

    fn load(&mut self) -> Result<DurableState, String> {
        let forget_votes = self.forget_votes;
        let mut state = self.store()?.load().map_err(|e| e.to_string())?;
        if forget_votes {
            state.votes.clear();
        }
        Ok(state)
    }
}

/// One run, with the stores in a fresh directory on `/dev/shm`.
fn run_on_files(config: SimConfig, forget_votes: bool) -> SimReport {
    let base = TempDir::new_in("/dev/shm").expect("a temporary directory in /dev/shm (tmpfs)");
    let open =
        |node: usize| FileShadow::open(base.path().join(format!("node{node}")), forget_votes);
    sim::run_with_stores(config, sim::KvWorkload::default(), &open)
}

fn assert_passed(report: &SimReport, seed: u64) {
    assert!(
        report.is_ok(),
        "seed {seed}: {:?} {:?}",
        report.violations,
        report.liveness_failure
    );
}

#[test]
fn the_protocol_runs_on_the_file_store_through_crashes_and_torn_writes() {
    let (mut kept, mut torn, mut restarts) = (0, 0, 0);
    for seed in 0..8 {
        let mut config = SimConfig::varied(seed, 4);
        config.disk_faults = true;
        if seed % 2 == 1 {
            config.crashes.crashable = None; // the leader crashes too
        }
        let report = run_on_files(config, false);
        assert_passed(&report, seed);
        kept += report.counters.disk_kept_batches;
        torn += report.counters.torn_writes;
        restarts += report.counters.restarts;
    }
    assert!(
        restarts > 0 && kept > 0 && torn > 0,
        "restarts {restarts} kept {kept} torn {torn}"
    );
}

/// A revote-bait leader gets followers to vote for a version of an entry that then loses, and
/// offers the winning version at the same `(phase, term, index)` again after they crashed and
/// restarted from disk. One Byzantine and one crashed replica of four is beyond `f`: the
/// harshest setting, which the correct protocol passes (as in `raft-bft/tests/byzantine.rs`).
fn revote_bait(seed: u64) -> SimConfig {
    let mut config = SimConfig::new(seed, 4).with_byzantine(Strategy::RevoteBait, 1);
    config.crashes.enabled = true;
    config.crashes.max_down = Some(1);
    config.disk_faults = true;
    config.stop_on_violation = true;
    config
}

/// The same seeds on the file store and on a store that loses votes: on the file store no
/// replica ever votes twice and nothing is lost; on the broken store the simulator sees the
/// store load something else than what was made durable, and, in at least one seed, a
/// restarted replica votes twice for one slot (so these seeds do exercise the vote record).
#[test]
fn a_replica_restarted_from_the_file_store_never_votes_twice() {
    let (mut restarts, mut caught_at) = (0, None);
    for seed in 0..40 {
        let report = run_on_files(revote_bait(seed), false);
        assert_passed(&report, seed);
        restarts += report.counters.restarts;
        if caught_at.is_none() {
            // Run on past the storage violation, to see what the replica does with the loss.
            let mut config = revote_bait(seed);
            config.stop_on_violation = false;
            let report = run_on_files(config, true);
            let has = |what: &str| report.violations.iter().any(|v| v.contains(what));
            if has("] equivocation: ") {
                assert!(
                    has("voted twice") && has("] storage: "),
                    "{:?}",
                    report.violations
                );
                caught_at = Some(seed);
            }
        }
    }
    assert!(restarts > 0);
    assert!(
        caught_at.is_some(),
        "in 40 seeds no replica on a store that forgets votes voted twice: the runs do not \
         exercise the durable vote record"
    );
}
