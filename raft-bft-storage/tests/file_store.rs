//! The file store on a real file system: torn tails, bit flips, locking, compaction (bounded
//! disk, and a crash at each of its steps), and a write that fails for real.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use raft_bft::persist::{DurableState, PersistBatch, PersistOp};
use raft_bft::types::{Digest, Index};
use raft_bft_storage::conformance::sample_batch;
use raft_bft_storage::{FileOptions, FileStore, StorageError, Store};
use tempfile::TempDir;

const CLUSTER: Digest = Digest([0x5a; 32]);

fn reference(batches: &[PersistBatch]) -> DurableState {
    let mut state = DurableState::default();
    for b in batches {
        state.apply_batch(b.clone());
    }
    state
}

fn options(segment_bytes: u64) -> FileOptions {
    FileOptions { segment_bytes }
}

/// Every file of a directory, by name.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .expect("list")
        .map(|e| {
            let e = e.expect("entry");
            let name = e.file_name().into_string().expect("utf-8 name");
            (name, fs::read(e.path()).expect("read"))
        })
        .collect()
}

fn write_files(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for (name, bytes) in files {
        fs::write(dir.join(name), bytes).expect("write");
    }
}

fn segments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = files(dir)
        .into_keys()
        .filter(|n| n.starts_with("wal-"))
        .collect();
    names.sort();
    names
}

/// Where each record of a segment starts and ends (`len: u32 LE | 36 bytes of checks | payload | marker`).
fn records(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        out.push((at, at + 41 + len));
        at += 41 + len;
    }
    out
}

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
    let dir = TempDir::new().expect("temporary directory");
    let mut store = FileStore::create(dir.path(), CLUSTER).expect("create");
    for id in 1..=3 {
        store.append(&sample_batch(id)).expect("append");
        store.sync().expect("sync");
    }
    drop(store);
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
    let dir = TempDir::new().expect("temporary directory");
    let mut store = FileStore::create_with(dir.path(), CLUSTER, options(600)).expect("create");
    for id in 1..=12 {
        store.append(&sample_batch(id)).expect("append");
        store.sync().expect("sync");
    }
    drop(store);
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

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    dir: TempDir,
}

impl SmallDisk {
    fn mount(bytes: u64) -> SmallDisk {
        let dir = TempDir::new().expect("temporary directory");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("running mount (this test needs util-linux's mount)");
        assert!(
            status.success(),
            "mounting a tmpfs failed: this test needs root (CAP_SYS_ADMIN) to give the store a \
             disk that fills up"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("store")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("running {program}: {e} (this test needs util-linux and e2fsprogs installed)")
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed (this test needs root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An ext4 file system on a loop device whose backing file lives on a tmpfs too small for it:
/// writes land in the page cache and succeed, and the `fdatasync` that pushes them to the
/// device fails, as a failing disk's would.
struct FailingDisk {
    backing: SmallDisk,
    device: String,
    mount: TempDir,
}

impl FailingDisk {
    fn new() -> FailingDisk {
        let backing = SmallDisk::mount(6 << 20);
        let image = backing.dir.path().join("disk.img");
        let image = image.to_str().expect("utf-8 path");
        run("truncate", &["-s", "64M", image]);
        let device = run("losetup", &["-f", "--show", image]);
        run("mkfs.ext4", &["-q", "-E", "nodiscard", &device]);
        let mount = TempDir::new().expect("temporary directory");
        run(
            "mount",
            &[&device, mount.path().to_str().expect("utf-8 path")],
        );
        FailingDisk {
            backing,
            device,
            mount,
        }
    }

    fn path(&self) -> PathBuf {
        self.mount.path().join("store")
    }
}

impl Drop for FailingDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mount.path()).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
        let _ = &self.backing; // unmounted after the loop device is gone
    }
}

#[test]
fn an_fdatasync_that_fails_for_real_stops_the_store_and_nothing_is_acknowledged() {
    let disk = FailingDisk::new();
    let mut store = FileStore::create(disk.path(), CLUSTER).expect("create");
    let mut acknowledged = Vec::new();
    let mut failure = None;
    for id in 1..=200u64 {
        // 64 KiB of tx bytes per batch: the device's backing store fills within a few MiB.
        let mut batch = sample_batch(id);
        if let PersistOp::Entry(e) = &mut batch.ops[0] {
            let mut entry = (**e).clone();
            entry.txs = vec![raft_bft::message::SignedTx {
                client: raft_bft::types::PublicKey([1; 32]),
                ts: id,
                op: vec![id as u8; 64 << 10],
                sig: raft_bft::types::Signature([0; 64]),
            }];
            *e = std::sync::Arc::new(entry);
        }
        store.append(&batch).expect("append (in memory)");
        match store.sync() {
            Ok(last) => {
                assert_eq!(last, Some(id));
                acknowledged.push(batch);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let failure = failure.expect("the device never failed a sync");
    assert!(
        matches!(
            &failure,
            StorageError::Io {
                what: "syncing",
                ..
            }
        ),
        "expected the fdatasync to fail, got: {failure}"
    );
    assert!(
        !acknowledged.is_empty(),
        "the disk failed before any sync succeeded"
    );
    // Never a retry that then acknowledges, even once the disk would take the write.
    for _ in 0..3 {
        assert!(matches!(store.sync(), Err(StorageError::Stopped(_))));
    }
    assert!(matches!(
        store.append(&sample_batch(1000)),
        Err(StorageError::Stopped(_))
    ));
    drop(store);
    // The failed group is still in the page cache, but the store cut it: a restart without a
    // reboot must not read back, as durable, what the disk never took.
    let store = FileStore::open(disk.path(), CLUSTER).expect("reopen after the failure");
    assert_eq!(store.load().expect("load"), reference(&acknowledged));
}

#[test]
fn a_write_that_fails_for_real_stops_the_store_and_leaves_nothing_unacknowledged() {
    let disk = SmallDisk::mount(256 * 1024);
    let mut store = FileStore::create(disk.path(), CLUSTER).expect("create");
    let mut acknowledged = Vec::new();
    let mut failed = None;
    for id in 1..=10_000u64 {
        // Entries with 4 KiB of tx bytes each fill the disk quickly.
        let mut batch = sample_batch(id);
        if let PersistOp::Entry(e) = &mut batch.ops[0] {
            let mut entry = (**e).clone();
            entry.txs = vec![raft_bft::message::SignedTx {
                client: raft_bft::types::PublicKey([1; 32]),
                ts: id,
                op: vec![id as u8; 4096],
                sig: raft_bft::types::Signature([0; 64]),
            }];
            *e = std::sync::Arc::new(entry);
        }
        store.append(&batch).expect("append");
        match store.sync() {
            Ok(last) => {
                assert_eq!(last, Some(id));
                acknowledged.push(batch);
            }
            Err(e) => {
                assert!(matches!(e, StorageError::Io { .. }), "{e}");
                failed = Some(batch);
                break;
            }
        }
    }
    failed.expect("the disk never filled up");
    // Never a retry that acknowledges.
    assert!(matches!(store.sync(), Err(StorageError::Stopped(_))));
    drop(store);
    // What the failed write left behind was cut: a restart (without a reboot, with the page
    // cache intact) reads back exactly what was acknowledged.
    let store = FileStore::open(disk.path(), CLUSTER).expect("reopen after the failure");
    assert_eq!(store.load().expect("load"), reference(&acknowledged));
}
