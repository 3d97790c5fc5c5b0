//! The file store on disks that fail for real (these tests need root: they mount a small
//! tmpfs, and a loop device with ext4): a write that fails, an fdatasync that fails, a
//! snapshot that does not fit.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use raft_bft::types::{Digest, Index};
use raft_bft_storage::conformance::sample_batch;
use raft_bft_storage::{FileStore, StorageError, Store};
use tempfile::TempDir;

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
        let batch = with_tx_bytes(sample_batch(id), 64 << 10);
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
        let batch = with_tx_bytes(sample_batch(id), 4096);
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

/// A snapshot save that fails for lack of space (a real ENOSPC on a small tmpfs) stops the
/// store and leaves the previous snapshot in place, whole. (Mutants: the file is written in
/// place instead of temp + rename; a failed save does not stop the store.) Needs root, like
/// the other tmpfs tests.
#[test]
fn a_snapshot_save_that_runs_out_of_space_keeps_the_previous_snapshot() {
    let disk = SmallDisk::mount(256 * 1024);
    let mut store = FileStore::create(disk.path(), CLUSTER).expect("create");
    let old = raft_bft_storage::Snapshot {
        index: Index(10),
        state_digest: Digest([1; 32]),
        data: vec![1; 100 * 1024],
    };
    store.save_snapshot(&old).expect("save");
    let too_big = raft_bft_storage::Snapshot {
        index: Index(20),
        state_digest: Digest([2; 32]),
        data: vec![2; 200 * 1024],
    };
    assert!(matches!(
        store.save_snapshot(&too_big),
        Err(StorageError::Io { .. })
    ));
    assert!(matches!(store.load(), Err(StorageError::Stopped(_))));
    drop(store);
    let store = FileStore::open(disk.path(), CLUSTER).expect("reopen");
    assert_eq!(store.load_snapshot().expect("the old snapshot"), Some(old));
}
