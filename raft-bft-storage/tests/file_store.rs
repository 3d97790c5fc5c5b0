//! The file store on a real file system: torn tails, bit flips, locking, compaction (bounded
//! disk, and a crash at each of its steps), missing and misnamed files, snapshots.

mod common;

use std::fs;

use common::*;
use raft_bft::persist::{PersistBatch, PersistOp};
use raft_bft::types::{Digest, Index};
use raft_bft_storage::conformance::sample_batch;
use raft_bft_storage::{FileStore, StorageError, Store};
use tempfile::TempDir;

#[test]
fn a_torn_tail_cut_at_every_byte_of_the_last_record_recovers_a_valid_prefix() {
    let dir = TempDir::new().expect("temporary directory");
    let batches: Vec<PersistBatch> = (1..=6).map(sample_batch).collect();
    let mut store = FileStore::create(dir.path(), CLUSTER).expect("create");
    for b in &batches {
        store.append(b).expect("append");
        store.sync().expect("sync");
    }
    drop(store);
    let whole = files(dir.path());
    let segment = segments(dir.path()).pop().expect("a segment");
    let bytes = &whole[&segment];
    let (last_start, last_end) = *records(bytes).last().expect("records");
    assert_eq!(last_end, bytes.len());
    for cut in last_start..=last_end {
        for zero_filled in [false, true] {
            // Space allocated but never written reads as zeros, in whole sectors.
            if zero_filled && cut % 512 != 0 {
                continue;
            }
            // The crash left the record cut at `cut`; the file system may also have allocated
            // the rest of it without writing it (zeros).
            let mut torn = whole.clone();
            let mut cut_bytes = bytes[..cut].to_vec();
            if zero_filled {
                cut_bytes.resize(last_end, 0);
            }
            torn.insert(segment.clone(), cut_bytes);
            let copy = TempDir::new().expect("temporary directory");
            write_files(copy.path(), &torn);
            let store = FileStore::open(copy.path(), CLUSTER)
                .unwrap_or_else(|e| panic!("cut at {cut} (zero-filled {zero_filled}): {e}"));
            let kept = if cut == last_end { 6 } else { 5 };
            assert_eq!(
                store.load().expect("load"),
                reference(&batches[..kept]),
                "cut at {cut}"
            );
            let cut_off = if zero_filled { last_end } else { cut } - last_start;
            let expected_cut = if cut == last_end { 0 } else { cut_off as u64 };
            assert_eq!(
                store.recovery().torn_bytes_cut,
                expected_cut,
                "cut at {cut}"
            );
            // The store writes on after the cut, and what it writes is read back.
            let mut store = store;
            store.append(&batches[5]).expect("append after recovery");
            store.sync().expect("sync after recovery");
            drop(store);
            let store = FileStore::open(copy.path(), CLUSTER).expect("reopen");
            let mut expected = batches[..kept].to_vec();
            expected.push(batches[5].clone());
            assert_eq!(store.load().expect("load"), reference(&expected));
        }
    }
}

#[test]
fn bit_flips_in_committed_records_are_refused_with_the_file_and_offset() {
    let dir = TempDir::new().expect("temporary directory");
    let mut store = FileStore::create_with(dir.path(), CLUSTER, options(1500)).expect("create");
    for id in 1..=14 {
        let mut batch = sample_batch(id);
        if id == 8 {
            batch.ops.push(PersistOp::CompactBelow(Index(4))); // a base image exists
        }
        store.append(&batch).expect("append");
        store.sync().expect("sync");
    }
    drop(store);
    let whole = files(dir.path());
    assert!(whole.contains_key("base"));
    assert!(
        segments(dir.path()).len() >= 2,
        "the test needs a sealed segment"
    );
    let mut checked = 0;
    for (name, bytes) in whole.iter().filter(|(n, _)| n.as_str() != "LOCK") {
        for (start, end) in records(bytes) {
            for at in start..end {
                // Every bit of the record headers; one bit per byte of the payloads.
                let bits: Vec<u8> = if at < start + 40 {
                    (0..8).collect()
                } else {
                    vec![(at % 8) as u8]
                };
                for bit in bits {
                    let mut flipped = whole.clone();
                    let file = flipped.get_mut(name).expect("file");
                    file[at] ^= 1 << bit;
                    let copy = TempDir::new().expect("temporary directory");
                    write_files(copy.path(), &flipped);
                    match FileStore::open(copy.path(), CLUSTER) {
                        Err(StorageError::Corrupt { path, offset, .. }) => {
                            assert_eq!(path, copy.path().join(name), "flip at {name}:{at}");
                            assert_eq!(offset, start as u64, "flip at {name}:{at}.{bit}");
                        }
                        Err(e) => panic!("flip at {name}:{at}.{bit}: {e}"),
                        Ok(_) => panic!("flip at {name}:{at}.{bit} went unnoticed"),
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 5000, "only {checked} flips checked");
}

#[test]
fn the_corruption_error_tells_the_operator_what_to_do() {
    let dir = synced_store(64 << 20, 3);
    let segment = dir.path().join(segments(dir.path()).remove(0));
    let mut bytes = fs::read(&segment).expect("read");
    let (second, _) = records(&bytes)[2];
    bytes[second + 50] ^= 0x10;
    fs::write(&segment, bytes).expect("write");
    let err = FileStore::open(dir.path(), CLUSTER).expect_err("corrupt");
    let text = err.to_string();
    assert!(text.contains(&segment.display().to_string()), "{text}");
    assert!(text.contains(&format!("at byte {second}")), "{text}");
    assert!(
        text.contains("rebuild this replica from its peers"),
        "{text}"
    );
}

#[test]
fn a_second_store_on_the_same_directory_is_refused() {
    let dir = TempDir::new().expect("temporary directory");
    let store = FileStore::create(dir.path(), CLUSTER).expect("create");
    assert!(matches!(
        FileStore::open(dir.path(), CLUSTER),
        Err(StorageError::Locked { .. })
    ));
    drop(store);
    FileStore::open(dir.path(), CLUSTER).expect("open once the first is closed");
}

#[test]
fn compaction_keeps_the_files_on_disk_bounded() {
    let dir = TempDir::new().expect("temporary directory");
    let mut store = FileStore::create_with(dir.path(), CLUSTER, options(8192)).expect("create");
    let mut batches = Vec::new();
    let mut largest = 0u64;
    for id in 1..=2000u64 {
        let mut batch = sample_batch(id);
        if id % 100 == 0 {
            batch.ops.push(PersistOp::CompactBelow(Index(id - 50)));
        }
        store.append(&batch).expect("append");
        batches.push(batch);
        if id % 3 == 0 {
            store.sync().expect("sync");
        }
        if id % 100 == 50 {
            let size: u64 = files(dir.path()).values().map(|b| b.len() as u64).sum();
            largest = largest.max(size);
        }
    }
    store.sync().expect("sync");
    // 100 batches of a few hundred bytes between compactions, whatever the run's length.
    assert!(largest < 96 * 1024, "the directory grew to {largest} bytes");
    assert!(
        segments(dir.path()).len() <= 4,
        "{:?}",
        segments(dir.path())
    );
    drop(store);
    let store = FileStore::open(dir.path(), CLUSTER).expect("reopen");
    assert_eq!(store.load().expect("load"), reference(&batches));
}

#[test]
fn a_crash_at_any_step_of_a_compaction_opens_to_the_same_state() {
    for step in [1u8, 2] {
        let dir = TempDir::new().expect("temporary directory");
        let mut store = FileStore::create_with(dir.path(), CLUSTER, options(2048)).expect("create");
        let mut batches = Vec::new();
        for id in 1..=30u64 {
            let mut batch = sample_batch(id);
            if id == 20 || id == 30 {
                batch.ops.push(PersistOp::CompactBelow(Index(id - 5)));
            }
            store.append(&batch).expect("append");
            batches.push(batch);
            if id == 30 {
                store.interrupt_next_compaction(step);
                assert!(store.sync().is_err(), "step {step}");
            } else {
                store.sync().expect("sync");
            }
        }
        drop(store);
        // A temp file left by an interrupted atomic write is ignored and removed.
        fs::write(dir.path().join("base.tmp"), b"half a base image").expect("write");
        let store = FileStore::open(dir.path(), CLUSTER).expect("reopen");
        assert_eq!(
            store.load().expect("load"),
            reference(&batches),
            "step {step}"
        );
        assert!(!dir.path().join("base.tmp").exists());
    }
}

#[test]
fn a_missing_segment_is_corruption() {
    let dir = synced_store(600, 12);
    let names = segments(dir.path());
    assert!(names.len() >= 3);
    fs::remove_file(dir.path().join(&names[1])).expect("remove");
    match FileStore::open(dir.path(), CLUSTER) {
        Err(StorageError::Corrupt { path, .. }) => assert_eq!(path, dir.path().join(&names[1])),
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn a_damaged_snapshot_is_refused() {
    let dir = TempDir::new().expect("temporary directory");
    let mut store = FileStore::create(dir.path(), CLUSTER).expect("create");
    let snapshot = raft_bft_storage::Snapshot {
        index: Index(64),
        state_digest: Digest([3; 32]),
        data: vec![42; 5000],
    };
    store.save_snapshot(&snapshot).expect("save");
    drop(store);
    let name = files(dir.path())
        .into_keys()
        .find(|n| n.starts_with("snapshot-"))
        .expect("a snapshot file");
    let path = dir.path().join(name);
    let mut bytes = fs::read(&path).expect("read");
    bytes[3000] ^= 1;
    fs::write(&path, bytes).expect("write");
    let store = FileStore::open(dir.path(), CLUSTER).expect("open");
    assert!(matches!(
        store.load_snapshot(),
        Err(StorageError::Corrupt { path: p, .. }) if p == path
    ));
}

/// One sync of more than GROUP_RECORD_BYTES (16 MiB): split into several sealed records, all
/// read back. (Mutants: the full record is not sealed before the next is begun; no split.)
#[test]
fn a_group_commit_larger_than_one_record_is_split_and_read_back() {
    let dir = TempDir::new().expect("temporary directory");
    let mut store = FileStore::create(dir.path(), CLUSTER).expect("create");
    let batches: Vec<PersistBatch> = (1..=20)
        .map(|id| with_tx_bytes(sample_batch(id), 1 << 20))
        .collect();
    for b in &batches {
        store.append(b).expect("append");
    }
    assert_eq!(store.sync().expect("sync"), Some(20));
    drop(store);
    let names = segments(dir.path());
    assert_eq!(names.len(), 1);
    let bytes = fs::read(dir.path().join(&names[0])).expect("read");
    assert_eq!(records(&bytes).len(), 3, "the header and two group records");
    let store = FileStore::open(dir.path(), CLUSTER).expect("reopen");
    assert_eq!(store.load().expect("load"), reference(&batches));
}

/// A crash while a new segment was being created leaves it empty or with part of its header:
/// it held nothing, the store opens and writes on. (Mutant: treated as corruption.)
#[test]
fn a_newest_segment_without_a_complete_header_is_a_torn_creation() {
    let dir = TempDir::new().expect("temporary directory");
    let mut store = FileStore::create_with(dir.path(), CLUSTER, options(600)).expect("create");
    let batches: Vec<PersistBatch> = (1..=8).map(sample_batch).collect();
    for b in &batches {
        store.append(b).expect("append");
        store.sync().expect("sync");
    }
    drop(store);
    let names = segments(dir.path());
    let last: u64 = names.last().expect("a segment")[4..24]
        .parse()
        .expect("a number");
    for partial in [0usize, 20] {
        let copy = TempDir::new().expect("temporary directory");
        write_files(copy.path(), &files(dir.path()));
        let next = copy.path().join(format!("wal-{:020}.log", last + 1));
        fs::write(&next, vec![0u8; partial]).expect("write");
        let mut store = FileStore::open_with(copy.path(), CLUSTER, options(600))
            .unwrap_or_else(|e| panic!("{partial} bytes of header: {e}"));
        assert_eq!(store.load().expect("load"), reference(&batches));
        store.append(&sample_batch(9)).expect("append");
        store.sync().expect("sync");
        drop(store);
        let store = FileStore::open_with(copy.path(), CLUSTER, options(600)).expect("reopen");
        assert_eq!(
            store.load().expect("load"),
            reference(&(1..=9).map(sample_batch).collect::<Vec<_>>())
        );
    }
}

/// Segments swapped on disk are refused, not replayed out of order. (Mutant: the header's
/// sequence number is not checked against the file name.)
#[test]
fn a_segment_under_another_name_is_corruption() {
    let dir = synced_store(600, 12);
    let names = segments(dir.path());
    assert!(names.len() >= 3);
    let (a, b) = (dir.path().join(&names[0]), dir.path().join(&names[1]));
    let (bytes_a, bytes_b) = (fs::read(&a).expect("read"), fs::read(&b).expect("read"));
    fs::write(&a, bytes_b).expect("write");
    fs::write(&b, bytes_a).expect("write");
    match FileStore::open(dir.path(), CLUSTER) {
        Err(StorageError::Corrupt {
            path, offset: 0, ..
        }) => assert_eq!(path, a),
        other => panic!("expected corruption, got {other:?}"),
    }
}

/// After a compaction, the segment the base image names, or every segment, missing: refused.
/// (Mutants: the first-segment check and the no-segment check skipped.)
#[test]
fn a_segment_missing_after_the_base_image_is_corruption() {
    for remove_all in [false, true] {
        let dir = TempDir::new().expect("temporary directory");
        let mut store = FileStore::create_with(dir.path(), CLUSTER, options(600)).expect("create");
        for id in 1..=16 {
            let mut batch = sample_batch(id);
            if id == 6 {
                batch.ops.push(PersistOp::CompactBelow(Index(3)));
            }
            store.append(&batch).expect("append");
            store.sync().expect("sync");
        }
        drop(store);
        let names = segments(dir.path());
        assert!(names.len() >= 2, "{names:?}");
        let gone = if remove_all { &names[..] } else { &names[..1] };
        for name in gone {
            fs::remove_file(dir.path().join(name)).expect("remove");
        }
        match FileStore::open(dir.path(), CLUSTER) {
            Err(StorageError::Corrupt { path, .. }) => {
                assert_eq!(path, dir.path().join(&names[0]), "remove all: {remove_all}")
            }
            other => panic!("remove all {remove_all}: expected corruption, got {other:?}"),
        }
    }
}

/// A base image is checked for its cluster even when no segment header could tell (the newest
/// segment lost its header). (Mutant: the base image's cluster id is not checked.)
#[test]
fn a_base_image_of_another_cluster_is_refused() {
    let dir = TempDir::new().expect("temporary directory");
    let mut store = FileStore::create(dir.path(), CLUSTER).expect("create");
    let mut batch = sample_batch(6);
    batch.ops.push(PersistOp::CompactBelow(Index(3)));
    store.append(&batch).expect("append");
    store.sync().expect("sync");
    drop(store);
    let names = segments(dir.path());
    assert_eq!(
        names.len(),
        1,
        "compaction left only the segment the base names"
    );
    fs::write(dir.path().join(&names[0]), b"").expect("truncate");
    assert!(matches!(
        FileStore::open(dir.path(), Digest([0x5b; 32])),
        Err(StorageError::WrongCluster { .. })
    ));
}

/// A compaction whose base image cannot be put in place fails before any segment is deleted:
/// reopened, the store holds everything synced. (Mutant: old segments deleted before the base
/// image is written.) The rename fails because `base` is a directory.
#[test]
fn a_compaction_that_fails_to_write_the_base_image_loses_nothing() {
    let dir = TempDir::new().expect("temporary directory");
    let mut store = FileStore::create_with(dir.path(), CLUSTER, options(2048)).expect("create");
    let mut batches = Vec::new();
    for id in 1..=20u64 {
        let mut batch = sample_batch(id);
        if id == 20 {
            fs::create_dir_all(dir.path().join("base").join("in-the-way")).expect("mkdir");
            batch.ops.push(PersistOp::CompactBelow(Index(15)));
        }
        store.append(&batch).expect("append");
        batches.push(batch);
        if id == 20 {
            assert!(
                store.sync().is_err(),
                "the base image cannot be renamed over a directory"
            );
            // An I/O error is final (mutant: a failed compaction does not stop the store).
            assert!(matches!(
                store.append(&sample_batch(21)),
                Err(StorageError::Stopped(_))
            ));
        } else {
            store.sync().expect("sync");
        }
    }
    drop(store);
    fs::remove_dir_all(dir.path().join("base")).expect("rmdir");
    let store = FileStore::open_with(dir.path(), CLUSTER, options(2048)).expect("reopen");
    assert_eq!(store.load().expect("load"), reference(&batches));
}

/// A crash after the base image is in place: the reopened store deletes the segments it covers.
/// (Mutant: open leaves them, and they are never deleted.)
#[test]
fn segments_a_crashed_compaction_left_are_deleted_at_open() {
    let dir = TempDir::new().expect("temporary directory");
    let mut store = FileStore::create_with(dir.path(), CLUSTER, options(2048)).expect("create");
    for id in 1..=20u64 {
        let mut batch = sample_batch(id);
        if id == 20 {
            batch.ops.push(PersistOp::CompactBelow(Index(15)));
            store.interrupt_next_compaction(2);
        }
        store.append(&batch).expect("append");
        let _ = store.sync();
    }
    drop(store);
    assert!(segments(dir.path()).len() > 1);
    let store = FileStore::open_with(dir.path(), CLUSTER, options(2048)).expect("reopen");
    assert_eq!(segments(dir.path()).len(), 1, "{:?}", segments(dir.path()));
    drop(store);
}

/// A saved snapshot replaces the previous one on disk at once. (Mutant: the older file is left
/// until the next open.)
#[test]
fn saving_a_snapshot_removes_the_previous_one() {
    let dir = TempDir::new().expect("temporary directory");
    let mut store = FileStore::create(dir.path(), CLUSTER).expect("create");
    for index in [10u64, 20] {
        store
            .save_snapshot(&raft_bft_storage::Snapshot {
                index: Index(index),
                state_digest: Digest([1; 32]),
                data: vec![7; 100],
            })
            .expect("save");
    }
    let snaps: Vec<String> = files(dir.path())
        .into_keys()
        .filter(|n| n.starts_with("snapshot-"))
        .collect();
    assert_eq!(snaps, vec![format!("snapshot-{:020}.snap", 20)]);
}

/// A sync split in three (begin, run on another thread, finish): appends made while the job
/// runs wait for the next sync, and a crash before that keeps only what was finished.
#[test]
fn a_sync_run_on_another_thread_covers_exactly_the_batches_before_it() {
    let dir = TempDir::new().expect("temporary directory");
    let mut store = FileStore::create_with(dir.path(), CLUSTER, options(4096)).expect("create");
    let batches: Vec<PersistBatch> = (1..=48).map(sample_batch).collect();
    let mut appended = 0;
    while appended < batches.len() {
        for b in &batches[appended..(appended + 5).min(batches.len())] {
            store.append(b).expect("append");
            appended += 1;
        }
        let before = appended;
        let job = store
            .begin_sync()
            .expect("begin")
            .expect("something to sync");
        assert!(matches!(
            store.begin_sync(),
            Err(StorageError::SyncInFlight)
        ));
        let io = std::thread::spawn(move || job.run());
        // Appends go on while the disk works; the next sync covers them.
        if let Some(b) = batches.get(appended) {
            store.append(b).expect("append during the sync");
            appended += 1;
        }
        let done = io.join().expect("the sync thread");
        let durable = store.finish_sync(done).expect("finish").expect("an id");
        assert_eq!(durable, before as u64);
        assert_eq!(store.load().expect("load"), reference(&batches[..before]));
    }
    store.sync().expect("sync the rest");
    drop(store);
    let store = FileStore::open(dir.path(), CLUSTER).expect("reopen");
    assert_eq!(store.load().expect("load"), reference(&batches));
}

/// A job whose `fdatasync` fails stops the store when it is finished.
#[test]
fn a_sync_job_that_fails_stops_the_store() {
    let dir = TempDir::new().expect("temporary directory");
    let mut store = FileStore::create(dir.path(), CLUSTER).expect("create");
    store.append(&sample_batch(1)).expect("append");
    store.sync().expect("sync");
    store.append(&sample_batch(2)).expect("append");
    store.fail_next_sync();
    let job = store.begin_sync().expect("begin").expect("a job");
    let done = std::thread::spawn(move || job.run())
        .join()
        .expect("thread");
    assert!(matches!(
        store.finish_sync(done),
        Err(StorageError::Io { .. })
    ));
    assert!(matches!(store.sync(), Err(StorageError::Stopped(_))));
    drop(store);
    let store = FileStore::open(dir.path(), CLUSTER).expect("reopen");
    assert_eq!(store.load().expect("load"), reference(&[sample_batch(1)]));
}

/// A sync finished on a store that did not begin it is refused: nothing is acknowledged.
#[test]
fn a_sync_finished_on_another_store_is_refused() {
    let (da, db) = (
        TempDir::new().expect("temporary directory"),
        TempDir::new().expect("temporary directory"),
    );
    let mut a = FileStore::create(da.path(), CLUSTER).expect("create");
    let mut b = FileStore::create(db.path(), CLUSTER).expect("create");
    a.append(&sample_batch(1)).expect("append");
    b.append(&sample_batch(1)).expect("append");
    let _job_a = a.begin_sync().expect("begin").expect("a job");
    let done_b = b.begin_sync().expect("begin").expect("a job").run();
    assert!(matches!(
        a.finish_sync(done_b),
        Err(StorageError::ForeignSync)
    ));
    assert_eq!(a.load().expect("load"), reference(&[]));
}

/// While a sync job of a dropped store is still alive, the directory stays locked: no new
/// store can acknowledge batches that the old job would then write over.
#[test]
fn a_live_sync_job_keeps_the_directory_locked() {
    let dir = TempDir::new().expect("temporary directory");
    let mut store = FileStore::create(dir.path(), CLUSTER).expect("create");
    store.append(&sample_batch(1)).expect("append");
    store.sync().expect("sync");
    store.append(&sample_batch(2)).expect("append");
    let old_job = store.begin_sync().expect("begin").expect("a job");
    drop(store);
    assert!(matches!(
        FileStore::open(dir.path(), CLUSTER),
        Err(StorageError::Locked { .. })
    ));
    drop(old_job.run());
    let store = FileStore::open(dir.path(), CLUSTER).expect("open once the job is gone");
    let loaded = store.load().expect("load");
    // Batch 2 was written by the job (never acknowledged); either way batch 1 is there.
    assert!(
        loaded == reference(&[sample_batch(1)])
            || loaded == reference(&[sample_batch(1), sample_batch(2)])
    );
}

/// A lost sync job (its thread panicked) leaves the store refusing syncs until it is
/// abandoned, which stops the store: nothing unwritten is ever acknowledged.
#[test]
fn a_lost_sync_job_is_abandoned_and_stops_the_store() {
    let dir = TempDir::new().expect("temporary directory");
    let mut store = FileStore::create(dir.path(), CLUSTER).expect("create");
    store.append(&sample_batch(1)).expect("append");
    let job = store.begin_sync().expect("begin").expect("a job");
    let _ = std::thread::spawn(move || {
        let _job = job;
        panic!("the I/O thread dies");
    })
    .join();
    store.append(&sample_batch(2)).expect("appends go on");
    assert!(matches!(store.sync(), Err(StorageError::SyncInFlight)));
    store.abandon_sync();
    assert!(matches!(store.sync(), Err(StorageError::Stopped(_))));
}

/// A sealed segment emptied, or cut back at a record boundary, is corruption (each segment's
/// header records how long the one before it was when it was sealed).
#[test]
fn a_sealed_segment_cut_at_a_record_boundary_is_corruption() {
    for keep_header in [false, true] {
        let dir = synced_store(1024, 30);
        let names = segments(dir.path());
        assert!(names.len() >= 3, "{names:?}");
        let middle = dir.path().join(&names[1]);
        let bytes = fs::read(&middle).expect("read");
        let cut = if keep_header { records(&bytes)[0].1 } else { 0 };
        fs::write(&middle, &bytes[..cut]).expect("write");
        match FileStore::open(dir.path(), CLUSTER) {
            Err(StorageError::Corrupt { path, .. }) => assert_eq!(path, middle),
            other => panic!("keep header {keep_header}: expected corruption, got {other:?}"),
        }
    }
}
