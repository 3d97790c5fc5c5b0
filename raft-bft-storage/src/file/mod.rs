//! The file store: a segmented write-ahead log, a base image rewritten at compaction, and
//! snapshot files.
//!
//! A data directory holds:
//!
//! - `wal-<seq>.log`: write-ahead log segments, `seq` zero-padded so that names sort in log
//!   order. Each starts with a header record (format version, cluster id, sequence number) and
//!   then holds one [`frame`](crate::frame) record per sync: the [`PersistBatch`]es of that
//!   group commit (split into records of [`GROUP_RECORD_BYTES`] when larger). Only the newest
//!   segment is written; a sync that would take it past [`FileOptions::segment_bytes`] starts
//!   the next one.
//! - `base`: the state at the start of segment `next_segment`, as the operations that rebuild
//!   it. Written at compaction (temp file, fsync, rename, fsync of the directory); segments
//!   before `next_segment` are then deleted.
//! - `snapshot-<index>.snap`: the newest state machine snapshot, written the same way.
//! - `LOCK`: held with an exclusive lock while a store has the directory open.
//!
//! Group commit: [`Store::append`] only encodes a batch into memory; [`Store::sync`] writes
//! every batch handed over since the last sync with one `write` and one `fdatasync`. One
//! checksum covers the whole group, which keeps hashing fast (blake3 is fastest on large
//! inputs) and makes the group the unit a crash keeps or loses. A caller that wants the disk
//! busy while it encodes the next group splits the sync in three:
//! [`FileStore::begin_sync`], [`SyncJob::run`] (on another thread) and
//! [`FileStore::finish_sync`].

mod group;
mod layout;
mod recovery;
mod sync;

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use raft_bft::persist::{DurableState, PersistBatch, PersistOp};
use raft_bft::types::{Digest, Index};
use serde::{Deserialize, Serialize};

use group::Group;
pub use group::{GROUP_RECORD_BYTES, MAX_BATCH_BYTES};
use layout::{corrupt, io, segment_name, snapshot_name, Kind, BASE, LOCK};
use recovery::Active;
pub use sync::{SyncDone, SyncJob};

use crate::frame;
use crate::{Snapshot, StorageError, Store};

/// Tuning of a [`FileStore`].
#[derive(Clone, Debug)]
pub struct FileOptions {
    /// A segment is not written past this size (at most one record larger): the next sync
    /// starts a new one.
    pub segment_bytes: u64,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions {
            segment_bytes: 64 << 20,
        }
    }
}

/// What [`FileStore::open`] found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segments read.
    pub segments: usize,
    /// Batches replayed from them.
    pub batches: u64,
    /// Bytes of a torn write cut from the end of the newest segment (never acknowledged).
    pub torn_bytes_cut: u64,
}

/// The body of a snapshot file (after its header, whose number is the snapshot's index).
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    state_digest: Digest,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// A durable store in a directory of its own: log segments `wal-<seq>.log` (a header, then one
/// checksummed record per group commit), a `base` image that compaction rewrites atomically,
/// the newest `snapshot-<index>.snap`, and a `LOCK` held while the store is open.
///
/// [`FileStore::create`] makes a new store in an empty (or missing) directory;
/// [`FileStore::open`] opens an existing one and refuses a directory that holds none (a
/// replica whose data went missing must not start as if new: it would have forgotten its
/// votes).
///
/// ```
/// use raft_bft::persist::{PersistBatch, PersistOp};
/// use raft_bft::types::{Digest, Term};
/// use raft_bft_storage::{FileStore, Store};
///
/// let dir = std::env::temp_dir().join(format!("raft-bft-doc-{}", std::process::id()));
/// let cluster = Digest([7; 32]);
/// let mut store = FileStore::create(&dir, cluster)?;
/// store.append(&PersistBatch { id: 1, ops: vec![PersistOp::SeekTerm(Term(3))] })?;
/// assert_eq!(store.sync()?, Some(1));
/// drop(store);
/// let store = FileStore::open(&dir, cluster)?;
/// assert_eq!(store.load()?.term, Term(3));
/// # drop(store); std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), raft_bft_storage::StorageError>(())
/// ```
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    cluster_id: Digest,
    options: FileOptions,
    /// Held for the life of the store: a second store on the same directory is refused.
    _lock: File,
    /// Everything durable, as a replica would load it.
    durable: DurableState,
    /// The segment being written (with the sync job while one is in flight).
    active: Option<Active>,
    /// The sync in flight, if any.
    in_flight: Option<InFlight>,
    /// This store instance (tells its sync jobs from another store's).
    instance: u64,
    /// Syncs begun so far.
    syncs_begun: u64,
    /// The oldest segment still on disk.
    oldest_seq: u64,
    /// The newest snapshot's index.
    snapshot: Option<Index>,
    unsynced: Group,
    compaction_due: bool,
    last_appended: Option<u64>,
    last_durable: Option<u64>,
    stopped: Option<String>,
    fail_next_sync: bool,
    /// Test hook: the next compaction fails after this many of its steps.
    interrupt_compaction_after: Option<u8>,
    recovery: Recovery,
}

/// A sync begun and not finished.
#[derive(Debug)]
struct InFlight {
    token: (u64, u64),
    batches: Vec<PersistBatch>,
    compaction_due: bool,
}

/// Numbers store instances, so that a sync job is only ever finished by its own store.
static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Segments larger than this are refused as an option (a file must stay readable, see
/// `layout::MAX_FILE_BYTES`).
const MAX_SEGMENT_BYTES: u64 = 1 << 30;

fn check_options(options: &FileOptions) -> Result<(), StorageError> {
    if options.segment_bytes < 512 || options.segment_bytes > MAX_SEGMENT_BYTES {
        return Err(StorageError::BadOptions(format!(
            "segment_bytes is {}; it must be in 512..={MAX_SEGMENT_BYTES}",
            options.segment_bytes
        )));
    }
    Ok(())
}

/// Takes the directory's lock. A lock held by a process that is exiting, or by a child
/// process between its fork and exec, goes away within moments: wait a little before
/// concluding that another store has the directory.
fn lock(dir: &Path) -> Result<File, StorageError> {
    let path = dir.join(LOCK);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io("opening", &path))?;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(fs::TryLockError::WouldBlock) => return Err(StorageError::Locked { path }),
            Err(fs::TryLockError::Error(source)) => {
                return Err(StorageError::Io {
                    what: "locking",
                    path,
                    source,
                })
            }
        }
    }
}

impl FileStore {
    /// Creates a new, empty store in `dir` for the cluster `cluster_id`, with default options.
    /// `dir` is created if missing; if it exists it must hold no store.
    pub fn create(dir: impl AsRef<Path>, cluster_id: Digest) -> Result<Self, StorageError> {
        Self::create_with(dir, cluster_id, FileOptions::default())
    }

    /// [`FileStore::create`] with explicit options.
    pub fn create_with(
        dir: impl AsRef<Path>,
        cluster_id: Digest,
        options: FileOptions,
    ) -> Result<Self, StorageError> {
        check_options(&options)?;
        let dir = dir.as_ref().to_path_buf();
        layout::create_dir_durably(&dir)?;
        let lock = lock(&dir)?;
        if recovery::holds_a_store(&dir)? {
            return Err(StorageError::AlreadyExists { path: dir });
        }
        let active = Active::create(&dir, cluster_id, 0, 0)?;
        Ok(Self::assemble(
            dir,
            cluster_id,
            options,
            lock,
            recovery::Opened {
                durable: DurableState::default(),
                active,
                oldest_seq: 0,
                snapshot: None,
                recovery: Recovery::default(),
            },
        ))
    }

    /// Opens the existing store in `dir` for the cluster `cluster_id`, with default options.
    ///
    /// Recovery replays every segment; a torn write at the end of the newest segment is cut
    /// off (it was never acknowledged). Any other damage is refused with
    /// [`StorageError::Corrupt`], naming the file and offset. Also refused: a directory with
    /// no store ([`StorageError::NoStore`]), a store of another cluster
    /// ([`StorageError::WrongCluster`]) or format ([`StorageError::UnsupportedFormat`]), and a
    /// directory another store has open ([`StorageError::Locked`]).
    pub fn open(dir: impl AsRef<Path>, cluster_id: Digest) -> Result<Self, StorageError> {
        Self::open_with(dir, cluster_id, FileOptions::default())
    }

    /// [`FileStore::open`] with explicit options.
    pub fn open_with(
        dir: impl AsRef<Path>,
        cluster_id: Digest,
        options: FileOptions,
    ) -> Result<Self, StorageError> {
        check_options(&options)?;
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(StorageError::NoStore { path: dir });
        }
        let lock = lock(&dir)?;
        let opened = recovery::open(&dir, cluster_id)?;
        Ok(Self::assemble(dir, cluster_id, options, lock, opened))
    }

    fn assemble(
        dir: PathBuf,
        cluster_id: Digest,
        options: FileOptions,
        lock: File,
        opened: recovery::Opened,
    ) -> Self {
        FileStore {
            dir,
            cluster_id,
            options,
            _lock: lock,
            durable: opened.durable,
            active: Some(opened.active),
            in_flight: None,
            instance: INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            syncs_begun: 0,
            oldest_seq: opened.oldest_seq,
            snapshot: opened.snapshot,
            unsynced: Group::default(),
            compaction_due: false,
            last_appended: None,
            last_durable: None,
            stopped: None,
            fail_next_sync: false,
            interrupt_compaction_after: None,
            recovery: opened.recovery,
        }
    }

    /// What opening the store found and repaired (for the operator's log).
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn check_running(&self) -> Result<(), StorageError> {
        match &self.stopped {
            Some(why) => Err(StorageError::Stopped(why.clone())),
            None => Ok(()),
        }
    }

    /// Records an I/O failure: the store refuses everything from now on.
    fn stop(&mut self, e: StorageError) -> StorageError {
        self.stopped = Some(e.to_string());
        e
    }

    /// The segment being written (not while a sync is in flight).
    fn active(&mut self) -> Result<&mut Active, StorageError> {
        self.active.as_mut().ok_or(StorageError::SyncInFlight)
    }

    /// Starts a sync of every batch appended so far: the returned job does the write and the
    /// `fdatasync` (on any thread, with [`SyncJob::run`]); [`FileStore::finish_sync`] then
    /// makes the batches count as durable. Meanwhile the store takes appends, which the next
    /// sync covers, but no other sync. `None` if there is nothing to sync.
    ///
    /// ```
    /// # use raft_bft::persist::{PersistBatch, PersistOp};
    /// # use raft_bft::types::{Digest, Term};
    /// # use raft_bft_storage::{FileStore, Store};
    /// # let dir = tempfile::TempDir::new().unwrap();
    /// let mut store = FileStore::create(dir.path(), Digest([7; 32]))?;
    /// store.append(&PersistBatch { id: 1, ops: vec![PersistOp::SeekTerm(Term(1))] })?;
    /// let job = store.begin_sync()?.expect("batch 1 to sync");
    /// let io = std::thread::spawn(move || job.run());
    /// store.append(&PersistBatch { id: 2, ops: vec![PersistOp::SeekTerm(Term(2))] })?;
    /// let done = io.join().expect("the sync thread");
    /// assert_eq!(store.finish_sync(done)?, Some(1)); // batch 2 waits for the next sync
    /// # Ok::<(), raft_bft_storage::StorageError>(())
    /// ```
    pub fn begin_sync(&mut self) -> Result<Option<SyncJob>, StorageError> {
        self.check_running()?;
        if self.in_flight.is_some() {
            return Err(StorageError::SyncInFlight);
        }
        if self.unsynced.is_empty() {
            return Ok(None);
        }
        let lock = self
            ._lock
            .try_clone()
            .map_err(io("sharing the lock", &self.dir));
        let lock = match lock {
            Ok(lock) => lock,
            Err(e) => return Err(self.stop(e)),
        };
        let active = self.active.take().ok_or(StorageError::SyncInFlight)?;
        let mut records = self.unsynced.take();
        self.syncs_begun += 1;
        let token = (self.instance, self.syncs_begun);
        self.in_flight = Some(InFlight {
            token,
            batches: std::mem::take(&mut records.batches),
            compaction_due: std::mem::take(&mut self.compaction_due),
        });
        Ok(Some(SyncJob {
            token,
            lock,
            active,
            records,
            dir: self.dir.clone(),
            cluster_id: self.cluster_id,
            segment_bytes: self.options.segment_bytes,
            fail: std::mem::take(&mut self.fail_next_sync),
        }))
    }

    /// Ends the sync `done` reports on (the one [`FileStore::begin_sync`] started): its
    /// batches are durable, and compaction runs if one of them asked for it. Returns the id of
    /// the last batch durable. A failed sync stops the store.
    pub fn finish_sync(&mut self, done: SyncDone) -> Result<Option<u64>, StorageError> {
        match &self.in_flight {
            None => return Err(StorageError::NoSyncInFlight),
            Some(f) if f.token != done.token => return Err(StorageError::ForeignSync),
            Some(_) => {}
        }
        let Some(in_flight) = self.in_flight.take() else {
            return Err(StorageError::NoSyncInFlight);
        };
        self.active = Some(done.active);
        self.unsynced.reuse(done.buffer);
        done.result.map_err(|e| self.stop(e))?;
        // Stopped meanwhile (a snapshot save failed): durable or not, acknowledge nothing.
        self.check_running()?;
        for batch in in_flight.batches {
            self.last_durable = Some(batch.id);
            self.durable.apply_batch(batch);
        }
        if in_flight.compaction_due {
            if let Err(e) = self.compact() {
                return Err(self.stop(e));
            }
        }
        Ok(self.last_durable)
    }

    /// Gives up on the sync in flight when its job was lost (dropped, or its thread panicked):
    /// what reached the disk is unknown, so the store stops. Returns the error it stopped with.
    pub fn abandon_sync(&mut self) -> StorageError {
        self.in_flight = None;
        self.stop(StorageError::Stopped(
            "a sync job was lost before it finished: what reached the disk is unknown; reopen \
             the store"
                .into(),
        ))
    }

    /// Writes the durable state as the new base image and deletes the segments it covers.
    ///
    /// A crash between any two steps leaves a directory that opens to the same state: before
    /// the rename of the base image, the old image and every segment since are in place; after
    /// it, the segments it covers are deleted when the store is next opened.
    fn compact(&mut self) -> Result<(), StorageError> {
        let interrupt = self.interrupt_compaction_after.take();
        let interrupted = |step: u8| match interrupt {
            Some(after) if after == step => Err(StorageError::Stopped(format!(
                "compaction interrupted after step {step} (injected)"
            ))),
            _ => Ok(()),
        };
        let previous = self.active()?;
        let (next, previous_len) = (previous.seq + 1, previous.len);
        // The new segment exists before the base image names it.
        self.active = Some(Active::create(
            &self.dir,
            self.cluster_id,
            next,
            previous_len,
        )?);
        interrupted(1)?;
        let image = layout::base_image(self.cluster_id, next, &self.durable)?;
        if image.len() as u64 > layout::MAX_FILE_BYTES {
            // Written, it could not be read back: refuse now, with the old image in place.
            return Err(StorageError::TooLarge {
                what: "base image",
                bytes: image.len(),
                limit: layout::MAX_FILE_BYTES as usize,
            });
        }
        layout::write_atomically(&self.dir, BASE, &image)?;
        interrupted(2)?;
        for seq in self.oldest_seq..next {
            let path = self.dir.join(segment_name(seq));
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io("removing compacted segment", &path)(e)),
            }
        }
        self.oldest_seq = next;
        layout::sync_dir(&self.dir)
    }

    /// Test hook: makes the next sync fail after its write, as a failing `fdatasync` would.
    #[doc(hidden)]
    pub fn fail_next_sync(&mut self) {
        self.fail_next_sync = true;
    }

    /// Test hook: the next compaction stops with an error after `step` of its steps (1: the
    /// new segment is created; 2: the base image is in place, old segments not yet deleted).
    #[doc(hidden)]
    pub fn interrupt_next_compaction(&mut self, step: u8) {
        self.interrupt_compaction_after = Some(step);
    }

    /// Test hook: how many batches the next sync would write.
    #[doc(hidden)]
    pub fn unsynced_batches(&self) -> usize {
        self.unsynced.batches()
    }

    /// Test hook: how many bytes the next sync would write.
    #[doc(hidden)]
    pub fn unsynced_len(&mut self) -> usize {
        self.unsynced.sealed().0.len()
    }

    /// Test hook: a crash during a sync, after the disk wrote the first `written` bytes of
    /// what the sync writes (possibly ending mid-record) and nothing else.
    #[doc(hidden)]
    pub fn crash_during_sync(mut self, written: usize) -> Result<(), StorageError> {
        let mut records = self.unsynced.take();
        records.seal();
        let bytes = records.bytes;
        let written = written.min(bytes.len());
        let active = self.active()?;
        active
            .file
            .write_all(&bytes[..written])
            .map_err(io("writing", &active.path))
    }
}

impl Store for FileStore {
    fn cluster_id(&self) -> Digest {
        self.cluster_id
    }

    fn append(&mut self, batch: &PersistBatch) -> Result<(), StorageError> {
        self.check_running()?;
        crate::check_order(self.last_appended, batch.id)?;
        self.unsynced.push(batch)?;
        self.compaction_due |= batch
            .ops
            .iter()
            .any(|op| matches!(op, PersistOp::CompactBelow(_) | PersistOp::Checkpoint(_)));
        self.last_appended = Some(batch.id);
        Ok(())
    }

    /// Also compacts, when a batch synced asks for it; if compaction fails, the batches are
    /// durable but the store stops and `sync` reports the failure.
    fn sync(&mut self) -> Result<Option<u64>, StorageError> {
        match self.begin_sync()? {
            Some(job) => self.finish_sync(job.run()),
            None => Ok(self.last_durable),
        }
    }

    fn load(&self) -> Result<DurableState, StorageError> {
        self.check_running()?;
        Ok(self.durable.clone())
    }

    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.check_running()?;
        if let Some(newest) = self.snapshot {
            if snapshot.index <= newest {
                return Err(StorageError::StaleSnapshot {
                    index: snapshot.index,
                    newest,
                });
            }
        }
        let mut bytes = Vec::new();
        layout::header(
            Kind::Snapshot,
            self.cluster_id,
            snapshot.index.0,
            0,
            &mut bytes,
        );
        let body = SnapshotBody {
            state_digest: snapshot.state_digest,
            data: snapshot.data.clone(),
        };
        // A snapshot too large to store is refused; the store goes on.
        layout::frame_value(&body, &mut bytes).map_err(|e| match e {
            StorageError::TooLarge { bytes, limit, .. } => StorageError::TooLarge {
                what: "snapshot",
                bytes,
                limit,
            },
            other => other,
        })?;
        let result = (|| {
            layout::write_atomically(&self.dir, &snapshot_name(snapshot.index), &bytes)?;
            if let Some(old) = self.snapshot {
                let old_path = self.dir.join(snapshot_name(old));
                fs::remove_file(&old_path).map_err(io("removing older snapshot", &old_path))?;
                layout::sync_dir(&self.dir)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            return Err(self.stop(e));
        }
        self.snapshot = Some(snapshot.index);
        Ok(())
    }

    fn load_snapshot(&self) -> Result<Option<Snapshot>, StorageError> {
        self.check_running()?;
        let Some(index) = self.snapshot else {
            return Ok(None);
        };
        let path = self.dir.join(snapshot_name(index));
        let bytes = layout::read_bounded(&path)?;
        let scan = frame::scan(&bytes, false, &path)?;
        let [(header_at, header), (body_at, body)] = &scan.records[..] else {
            return Err(corrupt(&path, 0, "a snapshot is a header and a body"));
        };
        let number =
            layout::check_header(Kind::Snapshot, header, *header_at, &path, self.cluster_id)?
                .number;
        if number != index.0 {
            return Err(corrupt(&path, 0, "the snapshot names another index"));
        }
        let body: SnapshotBody = layout::decode_record(body, *body_at, &path, "snapshot")?;
        Ok(Some(Snapshot {
            index,
            state_digest: body.state_digest,
            data: body.data,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::sample_batch;

    const CLUSTER: Digest = Digest([4; 32]);

    #[test]
    fn open_refuses_a_directory_without_a_store_and_create_refuses_one_with_a_store() {
        let dir = tempfile::TempDir::new().expect("temporary directory");
        let missing = dir.path().join("never-created");
        assert!(matches!(
            FileStore::open(&missing, CLUSTER),
            Err(StorageError::NoStore { .. })
        ));
        fs::create_dir(&missing).expect("mkdir");
        assert!(matches!(
            FileStore::open(&missing, CLUSTER),
            Err(StorageError::NoStore { .. })
        ));
        let mut store = FileStore::create(&missing, CLUSTER).expect("create");
        store.append(&sample_batch(1)).expect("append");
        store.sync().expect("sync");
        drop(store);
        assert!(matches!(
            FileStore::create(&missing, CLUSTER),
            Err(StorageError::AlreadyExists { .. })
        ));
        FileStore::open(&missing, CLUSTER).expect("open");
    }

    #[test]
    fn another_format_version_is_not_called_corruption() {
        let mut bytes = Vec::new();
        let header = FileHeaderForTest {
            magic: u64::from_le_bytes(*b"RBFT-WAL"),
            version: layout::FORMAT_VERSION + 1,
            cluster_id: CLUSTER,
            number: 0,
            previous_len: 0,
        };
        layout::frame_value(&header, &mut bytes).expect("frame");
        let dir = tempfile::TempDir::new().expect("temporary directory");
        fs::write(dir.path().join(segment_name(0)), &bytes).expect("write");
        assert!(matches!(
            FileStore::open(dir.path(), CLUSTER),
            Err(StorageError::UnsupportedFormat { found, .. }) if found == layout::FORMAT_VERSION + 1
        ));
    }

    #[derive(Serialize)]
    struct FileHeaderForTest {
        magic: u64,
        version: u32,
        cluster_id: Digest,
        number: u64,
        previous_len: u64,
    }

    #[test]
    fn huge_segment_numbers_are_refused_not_overflowed() {
        let dir = tempfile::TempDir::new().expect("temporary directory");
        for seq in [u64::MAX, u64::MAX / 2 + 1] {
            let mut bytes = Vec::new();
            layout::header(Kind::Segment, CLUSTER, seq, 0, &mut bytes);
            let path = dir.path().join(segment_name(seq));
            fs::write(&path, &bytes).expect("write");
            assert!(matches!(
                FileStore::open(dir.path(), CLUSTER),
                Err(StorageError::Corrupt { .. })
            ));
            fs::remove_file(&path).expect("remove");
        }
    }

    #[test]
    fn a_missing_base_image_is_named_as_such() {
        let dir = tempfile::TempDir::new().expect("temporary directory");
        let mut bytes = Vec::new();
        layout::header(Kind::Segment, CLUSTER, 3, 0, &mut bytes);
        fs::write(dir.path().join(segment_name(3)), &bytes).expect("write");
        match FileStore::open(dir.path(), CLUSTER) {
            Err(StorageError::Corrupt { path, why, .. }) => {
                assert_eq!(path, dir.path().join(BASE));
                assert!(why.contains("base image is missing"), "{why}");
            }
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn a_segment_never_grows_past_its_limit_by_more_than_one_record() {
        // A record is one group commit; here each group is one batch.
        let dir = tempfile::TempDir::new().expect("temporary directory");
        let options = FileOptions {
            segment_bytes: 2048,
        };
        let mut store = FileStore::create_with(dir.path(), CLUSTER, options).expect("create");
        let mut largest_batch = 0;
        for id in 1..=60 {
            let batch = sample_batch(id);
            largest_batch =
                largest_batch.max(raft_bft::codec::encode(&batch).expect("encode").len());
            store.append(&batch).expect("append");
            store.sync().expect("sync"); // one record per batch
        }
        let limit = 2048 + (largest_batch + 64) as u64;
        let mut segments = 0;
        for entry in fs::read_dir(dir.path()).expect("list") {
            let entry = entry.expect("entry");
            if entry.file_name().to_string_lossy().starts_with("wal-") {
                segments += 1;
                let len = entry.metadata().expect("metadata").len();
                assert!(len <= limit, "a segment of {len} bytes");
            }
        }
        assert!(segments > 2);
    }
}
