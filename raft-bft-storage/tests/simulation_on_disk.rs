//! The deterministic simulator runs the real protocol with every replica's durable state in a
//! real [`FileStore`]: batches are appended and synced as the simulated disk confirms them,
//! crashes leave on disk what the disk-fault model says (whole unsynced batches, and a torn
//! one), and restarted replicas start from what the file store loads. The simulator's checkers
//! (agreement, linearizability, one vote per `(phase, term, index)` across restarts, ...) then
//! judge the protocol running on the file store.
//!
//! The stores live on `/dev/shm` (tmpfs): `fdatasync` there is free, so a run costs what the
//! protocol costs. The file system semantics the store relies on are the same.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    /// Where the peaks of what the store holds are recorded, if anywhere.
    peaks: Option<Arc<Mutex<Peaks>>>,
    batches: u64,
}

/// The most a store held at once (sampled every few batches), and what was written to it.
#[derive(Debug, Default)]
struct Peaks {
    entries: usize,
    votes: usize,
    certificates: usize,
    dir_bytes: u64,
    written_bytes: u64,
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

impl FileShadow {
    fn open(dir: PathBuf, forget_votes: bool) -> Result<Box<dyn ShadowStore>, String> {
        Self::open_with_peaks(dir, forget_votes, None)
    }

    fn open_with_peaks(
        dir: PathBuf,
        forget_votes: bool,
        peaks: Option<Arc<Mutex<Peaks>>>,
    ) -> Result<Box<dyn ShadowStore>, String> {
        let store = FileStore::create_with(&dir, CLUSTER, options()).map_err(|e| e.to_string())?;
        Ok(Box::new(FileShadow {
            dir,
            store: Some(store),
            forget_votes,
            peaks,
            batches: 0,
        }))
    }

    fn sample(&mut self, batch: &PersistBatch) -> Result<(), String> {
        let Some(peaks) = self.peaks.clone() else {
            return Ok(());
        };
        self.batches += 1;
        let written = raft_bft::codec::encode(batch)
            .map_err(|e| e.to_string())?
            .len() as u64;
        let mut p = peaks.lock().map_err(|e| e.to_string())?;
        p.written_bytes += written;
        if self.batches.is_multiple_of(8) {
            let state = self.store()?.load().map_err(|e| e.to_string())?;
            p.entries = p.entries.max(state.entries.len());
            p.votes = p.votes.max(state.votes.len());
            p.certificates = p.certificates.max(state.certificates.len());
            p.dir_bytes = p.dir_bytes.max(dir_bytes(&self.dir));
        }
        Ok(())
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
        self.sample(batch)
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

    fn wipe(&mut self) -> Result<(), String> {
        drop(self.store.take());
        std::fs::remove_dir_all(&self.dir).map_err(|e| e.to_string())?;
        let store =
            FileStore::create_with(&self.dir, CLUSTER, options()).map_err(|e| e.to_string())?;
        self.store = Some(store);
        Ok(())
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

/// Memory and disk stay bounded in a long run: over more than 20 checkpoints per replica, no
/// replica holds more log entries than `2 * checkpoint_interval + pipeline_depth` (the simulator
/// checks it after every step), and each replica's store holds about as much: entries, votes
/// and certificates within a small multiple of that bound, and a directory a fraction of what
/// was written to it (compaction deletes the segments a checkpoint covers).
#[test]
fn memory_and_disk_stay_bounded_over_many_checkpoints() {
    let mut config = SimConfig::new(7, 4).without_faults();
    config.clients = 8;
    config.txs_per_client = 120;
    config.max_think_time = std::time::Duration::from_millis(2);
    config.params.checkpoint_interval = 8;
    config.params.pipeline_depth = 4;
    config.params.max_batch_txs = 3;
    let bound = config.params.max_log_entries() as usize;
    let base = TempDir::new_in("/dev/shm").expect("a temporary directory in /dev/shm (tmpfs)");
    let peaks: Vec<Arc<Mutex<Peaks>>> = (0..4).map(|_| Arc::default()).collect();
    let open = |node: usize| {
        FileShadow::open_with_peaks(
            base.path().join(format!("node{node}")),
            false,
            peaks.get(node).cloned(),
        )
    };
    let report = sim::run_with_stores(config, sim::KvWorkload::default(), &open);
    assert_passed(&report, 7);
    assert_eq!(report.max_term, 0, "a fault-free run stays in term 0");
    let per_replica = report.counters.checkpoints / 4;
    assert!(
        per_replica >= 20,
        "only {per_replica} checkpoints per replica\n{report}"
    );
    assert!(
        report.counters.max_log_entries as usize <= bound,
        "a replica held {} log entries, above {bound}",
        report.counters.max_log_entries
    );
    for (node, peaks) in peaks.iter().enumerate() {
        let p = peaks.lock().expect("not poisoned");
        println!("node {node}: {p:?} (log bound {bound})");
        assert!(p.entries <= bound, "node {node}: {p:?}");
        // One vote and one certificate per phase per index above the checkpoint (one term).
        assert!(p.votes <= 3 * (bound + 1), "node {node}: {p:?}");
        assert!(p.certificates <= 3 * (bound + 1), "node {node}: {p:?}");
        assert!(
            p.dir_bytes * 4 < p.written_bytes && p.dir_bytes < 1 << 20,
            "node {node}: the store keeps too much of what was written: {p:?}"
        );
    }
}

/// Replicas whose disks are wiped while they are down rebuild from their peers (a checkpoint
/// and the entries above it) on the file store, through crashes and network faults.
#[test]
fn wiped_replicas_rebuild_from_their_peers_on_the_file_store() {
    let (mut wipes, mut transfers) = (0, 0);
    for seed in 0..6 {
        let mut config = SimConfig::varied(seed, 4);
        config.wipe_prob = 0.5;
        let report = run_on_files(config, false);
        assert_passed(&report, seed);
        wipes += report.counters.wipes;
        transfers += report.counters.state_transfers;
        assert_eq!(
            report.counters.rebuilding_at_end, 0,
            "seed {seed}: {report}"
        );
    }
    assert!(
        wipes > 0 && transfers > 0,
        "wipes {wipes} transfers {transfers}"
    );
}
