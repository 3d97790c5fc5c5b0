//! The suite every [`Store`] must pass: durability of synced batches, crash semantics (a prefix
//! of the unsynced batches, never part of one), group commit, ordering, and the cluster check.
//!
//! A store under test plugs in through a [`Harness`]; `tests/conformance.rs` runs the suite on
//! every store of this crate.

use std::sync::Arc;

use raft_bft::checkpoint::Checkpoint;
use raft_bft::message::{Certificate, Entry, NewTerm, Phase, VoteSubject};
use raft_bft::persist::{DurableState, PersistBatch, PersistOp};
use raft_bft::types::{Digest, Index, ReplicaId, Signature, Term};

use crate::{Snapshot, StorageError, Store};

/// How the suite makes and breaks stores of one kind.
pub trait Harness {
    /// The store under test.
    type S: Store;
    /// A fresh, empty store for `cluster_id`.
    fn create(&mut self, cluster_id: Digest) -> Self::S;
    /// Crashes the store and opens it again for the cluster `cluster_id`. Of the batches not
    /// synced, the crash keeps the first `keep` (or fewer, if the store cannot choose: a real
    /// disk keeps whatever it wrote).
    fn crash_and_reopen(
        &mut self,
        store: Self::S,
        cluster_id: Digest,
        keep: usize,
    ) -> Result<Self::S, StorageError>;
}

const CLUSTER: Digest = Digest([0xc1; 32]);

/// A varied batch: entries, votes, a term change, and now and then a truncation.
pub fn sample_batch(id: u64) -> PersistBatch {
    let index = Index(id);
    let term = Term(id / 4);
    let entry = Arc::new(Entry {
        term,
        index,
        prev_hash: Digest([id as u8; 32]),
        txs: Vec::new(),
    });
    let mut ops = vec![
        PersistOp::Entry(entry),
        PersistOp::Vote(VoteSubject {
            phase: Phase::PreAppend,
            term,
            index,
            entry_hash: Digest([(id * 7) as u8; 32]),
            state_digest: None,
        }),
    ];
    if id.is_multiple_of(4) {
        ops.push(PersistOp::SeekTerm(Term(id / 4 + 1)));
    }
    if id.is_multiple_of(5) && id > 1 {
        ops.push(PersistOp::TruncateFrom(Index(id)));
    }
    if id.is_multiple_of(3) {
        // A certificate, then one of a lower term for the same slot (the higher one is kept).
        let cert = |term: u64, fill: u8| Certificate {
            subject: VoteSubject {
                phase: Phase::Commit,
                term: Term(term),
                index: Index(id / 3),
                entry_hash: Digest([fill; 32]),
                state_digest: Some(Digest([fill ^ 0xff; 32])),
            },
            sigs: vec![(ReplicaId(1), Signature([fill; 64]))],
        };
        ops.push(PersistOp::Certificate(cert(id, 1)));
        ops.push(PersistOp::Certificate(cert(id / 2, 2)));
    }
    if id % 4 == 2 {
        ops.push(PersistOp::EnterTerm(Arc::new(NewTerm {
            new_term: Term(id / 4 + 1),
            term_changes: Vec::new(),
            chosen: vec![(Index(id), Digest([9; 32]))],
            leader_sig: Signature([id as u8; 64]),
        })));
    }
    PersistBatch { id, ops }
}

fn reference(batches: &[PersistBatch]) -> DurableState {
    let mut state = DurableState::default();
    for b in batches {
        state.apply_batch(b.clone());
    }
    state
}

/// Runs every check of the suite.
pub fn run_all<H: Harness>(h: &mut H) {
    synced_batches_survive_a_crash(h);
    a_crash_keeps_a_prefix_of_the_unsynced_batches(h);
    one_sync_covers_every_batch_handed_over(h);
    batch_ids_must_increase(h);
    a_store_of_another_cluster_is_refused(h);
    compaction_forgets_below_the_checkpoint_and_survives_a_crash(h);
    checkpoints_and_the_vote_floor_survive_a_crash(h);
    snapshots_are_durable_and_only_move_forward(h);
}

/// Everything synced is there after a crash, exactly as `DurableState::apply` defines it
/// (entries, votes, certificates with the higher term kept, truncations, terms).
pub fn synced_batches_survive_a_crash<H: Harness>(h: &mut H) {
    let mut store = h.create(CLUSTER);
    assert_eq!(store.cluster_id(), CLUSTER);
    let batches: Vec<PersistBatch> = (1..=20).map(sample_batch).collect();
    for b in &batches {
        store.append(b).expect("append");
        assert_eq!(store.sync().expect("sync"), Some(b.id));
    }
    let expected = reference(&batches);
    assert!(!expected.certificates.is_empty() && expected.new_term.is_some());
    assert_eq!(store.load().expect("load"), expected);
    let mut store = h.crash_and_reopen(store, CLUSTER, 0).expect("reopen");
    assert_eq!(store.load().expect("load after crash"), expected);
    // What a restarted replica writes lands after what was there (it numbers from 1 again).
    let more: Vec<PersistBatch> = (21..=25).map(sample_batch).collect();
    for (i, b) in more.iter().enumerate() {
        let renumbered = PersistBatch {
            id: i as u64 + 1,
            ops: b.ops.clone(),
        };
        store.append(&renumbered).expect("append after restart");
    }
    assert_eq!(store.sync().expect("sync"), Some(5));
    let store = h.crash_and_reopen(store, CLUSTER, 0).expect("reopen");
    let all: Vec<PersistBatch> = batches.iter().chain(&more).cloned().collect();
    assert_eq!(
        store.load().expect("load after a second crash"),
        reference(&all)
    );
}

/// After a crash, the unsynced batches are gone or kept as a prefix, never partly applied.
pub fn a_crash_keeps_a_prefix_of_the_unsynced_batches<H: Harness>(h: &mut H) {
    let batches: Vec<PersistBatch> = (1..=12).map(sample_batch).collect();
    for keep in 0..=6 {
        let mut store = h.create(CLUSTER);
        for b in &batches[..6] {
            store.append(b).expect("append");
        }
        store.sync().expect("sync");
        for b in &batches[6..] {
            store.append(b).expect("append");
        }
        let store = h.crash_and_reopen(store, CLUSTER, keep).expect("reopen");
        let loaded = store.load().expect("load");
        let prefix = (6..=batches.len()).find(|&k| reference(&batches[..k]) == loaded);
        assert!(
            prefix.is_some_and(|k| k <= 6 + keep),
            "after a crash keeping {keep} unsynced batches, the store holds something other \
             than the synced batches plus a prefix of the unsynced ones"
        );
    }
}

/// Many batches handed over, one sync: all durable, and the sync names the last.
pub fn one_sync_covers_every_batch_handed_over<H: Harness>(h: &mut H) {
    let mut store = h.create(CLUSTER);
    assert_eq!(store.sync().expect("sync of nothing"), None);
    let batches: Vec<PersistBatch> = (1..=50).map(sample_batch).collect();
    for b in &batches {
        store.append(b).expect("append");
    }
    assert_eq!(store.sync().expect("sync"), Some(50));
    let store = h.crash_and_reopen(store, CLUSTER, 0).expect("reopen");
    assert_eq!(store.load().expect("load"), reference(&batches));
}

/// A batch id at or below the last one is refused (the replica's ids only grow); a restarted
/// replica numbers from 1 again, and the reopened store names no id from before.
pub fn batch_ids_must_increase<H: Harness>(h: &mut H) {
    let mut store = h.create(CLUSTER);
    store.append(&sample_batch(5)).expect("append");
    assert!(matches!(
        store.append(&sample_batch(5)),
        Err(StorageError::OutOfOrder { last: 5, got: 5 })
    ));
    assert!(matches!(
        store.append(&sample_batch(4)),
        Err(StorageError::OutOfOrder { last: 5, got: 4 })
    ));
    assert_eq!(store.sync().expect("sync"), Some(5));
    let mut store = h.crash_and_reopen(store, CLUSTER, 0).expect("reopen");
    assert_eq!(store.sync().expect("sync after reopen"), None);
    store
        .append(&sample_batch(1))
        .expect("a restarted replica starts again at 1");
    assert_eq!(store.sync().expect("sync"), Some(1));
}

/// A store opened with another manifest's cluster id refuses to start.
pub fn a_store_of_another_cluster_is_refused<H: Harness>(h: &mut H) {
    let mut store = h.create(CLUSTER);
    store.append(&sample_batch(1)).expect("append");
    store.sync().expect("sync");
    let other = Digest([0xc2; 32]);
    assert!(matches!(
        h.crash_and_reopen(store, other, 0),
        Err(StorageError::WrongCluster { .. })
    ));
}

/// `CompactBelow` is durable like any other op: what it dropped stays dropped after a crash,
/// everything above it stays, and later batches apply on top.
pub fn compaction_forgets_below_the_checkpoint_and_survives_a_crash<H: Harness>(h: &mut H) {
    let mut store = h.create(CLUSTER);
    let mut batches: Vec<PersistBatch> = Vec::new();
    for id in 1..=60u64 {
        let mut batch = sample_batch(id);
        if id % 15 == 0 {
            batch.ops.push(PersistOp::CompactBelow(Index(id - 5)));
        }
        store.append(&batch).expect("append");
        batches.push(batch);
        if id.is_multiple_of(4) {
            store.sync().expect("sync");
        }
    }
    store.sync().expect("sync");
    let expected = reference(&batches);
    assert_eq!(expected.compacted_below, Index(55));
    assert!(expected.entries.keys().all(|i| *i >= Index(55)));
    // What compaction forgets is forgotten: votes and certificates below the point too (and
    // something above it is kept, so the reference is not trivially empty).
    assert!(expected.votes.keys().all(|(_, _, i)| *i >= Index(55)));
    assert!(expected.certificates.keys().all(|(_, i)| *i >= Index(55)));
    assert!(!expected.votes.is_empty());
    assert_eq!(store.load().expect("load"), expected);
    let mut store = h.crash_and_reopen(store, CLUSTER, 0).expect("reopen");
    assert_eq!(store.load().expect("load after crash"), expected);
    // A compaction that is not newer changes nothing.
    let stale = PersistBatch {
        id: 1,
        ops: vec![PersistOp::CompactBelow(Index(10))],
    };
    store.append(&stale).expect("append");
    store.sync().expect("sync");
    let store = h.crash_and_reopen(store, CLUSTER, 0).expect("reopen");
    assert_eq!(store.load().expect("load"), expected);
}

/// A checkpoint op keeps the newest checkpoint (with its state) in place of the log up to its
/// index, durably; an older one changes nothing; the vote floor of a rebuilt replica survives a
/// crash too, and so does lifting it.
pub fn checkpoints_and_the_vote_floor_survive_a_crash<H: Harness>(h: &mut H) {
    let checkpoint = |index: u64| {
        Arc::new(Checkpoint {
            certificate: Certificate {
                subject: VoteSubject {
                    phase: Phase::Commit,
                    term: Term(1),
                    index: Index(index),
                    entry_hash: Digest([index as u8; 32]),
                    state_digest: Some(Digest([0xd1; 32])),
                },
                sigs: vec![(ReplicaId(0), Signature([index as u8; 64]))],
            },
            // Larger than a group record of small batches, and not all zero.
            state: (0..40_000)
                .map(|i| (i * 13 + index as usize) as u8)
                .collect(),
        })
    };
    let mut store = h.create(CLUSTER);
    let mut batches: Vec<PersistBatch> = Vec::new();
    for id in 1..=50u64 {
        let mut batch = sample_batch(id);
        match id {
            10 => batch.ops.push(PersistOp::VoteFloor(Index(u64::MAX))),
            12 => batch.ops.push(PersistOp::VoteFloor(Index(40))),
            20 | 40 => batch.ops.push(PersistOp::Checkpoint(checkpoint(id - 2))),
            30 => batch.ops.push(PersistOp::Checkpoint(checkpoint(8))), // older: ignored
            _ => {}
        }
        store.append(&batch).expect("append");
        batches.push(batch);
        if id.is_multiple_of(3) {
            store.sync().expect("sync");
        }
    }
    store.sync().expect("sync");
    let expected = reference(&batches);
    assert_eq!(expected.checkpoint, Some(checkpoint(38)));
    assert_eq!(expected.compacted_below, Index(39));
    assert_eq!(expected.vote_floor, Index(40));
    assert!(expected.entries.keys().all(|i| *i >= Index(39)));
    assert_eq!(store.load().expect("load"), expected);
    let mut store = h.crash_and_reopen(store, CLUSTER, 0).expect("reopen");
    assert_eq!(store.load().expect("load after crash"), expected);
    let lift = PersistBatch {
        id: 1,
        ops: vec![PersistOp::VoteFloor(Index(0))],
    };
    store.append(&lift).expect("append");
    store.sync().expect("sync");
    let store = h.crash_and_reopen(store, CLUSTER, 0).expect("reopen");
    let loaded = store.load().expect("load");
    assert_eq!(loaded.vote_floor, Index(0));
    assert_eq!(loaded.checkpoint, Some(checkpoint(38)));
}

/// A saved snapshot is durable at once, replaces the previous one, and an older one is refused.
pub fn snapshots_are_durable_and_only_move_forward<H: Harness>(h: &mut H) {
    let mut store = h.create(CLUSTER);
    assert_eq!(store.load_snapshot().expect("no snapshot yet"), None);
    let snapshot = |index: u64, len: usize| Snapshot {
        index: Index(index),
        state_digest: Digest([index as u8; 32]),
        data: (0..len).map(|i| (i * 31 + index as usize) as u8).collect(),
    };
    store.save_snapshot(&snapshot(128, 10_000)).expect("save");
    let store = h.crash_and_reopen(store, CLUSTER, 0).expect("reopen");
    assert_eq!(
        store.load_snapshot().expect("load"),
        Some(snapshot(128, 10_000))
    );
    let mut store = store;
    store
        .save_snapshot(&snapshot(256, 0))
        .expect("save an empty state");
    assert!(matches!(
        store.save_snapshot(&snapshot(256, 5)),
        Err(StorageError::StaleSnapshot { .. })
    ));
    assert!(matches!(
        store.save_snapshot(&snapshot(100, 5)),
        Err(StorageError::StaleSnapshot { .. })
    ));
    // A refused snapshot changes nothing and does not stop the store.
    store
        .append(&sample_batch(1))
        .expect("append after a refused snapshot");
    assert_eq!(store.sync().expect("sync"), Some(1));
    assert_eq!(store.load_snapshot().expect("load"), Some(snapshot(256, 0)));
    let store = h.crash_and_reopen(store, CLUSTER, 0).expect("reopen");
    assert_eq!(store.load_snapshot().expect("load"), Some(snapshot(256, 0)));
    let mut store = store;
    store
        .save_snapshot(&snapshot(512, 70_000))
        .expect("save a newer one");
    let store = h.crash_and_reopen(store, CLUSTER, 0).expect("reopen");
    assert_eq!(
        store.load_snapshot().expect("load"),
        Some(snapshot(512, 70_000))
    );
}
