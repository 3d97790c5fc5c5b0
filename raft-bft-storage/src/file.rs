//! The file store: a segmented write-ahead log, a base image rewritten at compaction, and
//! snapshot files.
//!
//! A data directory holds:
//!
//! - `wal-<seq>.log`: write-ahead log segments, `seq` zero-padded so that names sort in log
//!   order. Each starts with a header record (cluster id, sequence number) and then holds one
//!   [`frame`](crate::frame) record per sync: the [`PersistBatch`]es of that group commit (a
//!   very large group is split into records of [`GROUP_RECORD_BYTES`]). Only the newest
//!   segment is written.
//! - `base`: the state at the start of segment `next_segment`, as the operations that rebuild
//!   it. Written at compaction (temp file, fsync, rename, fsync of the directory); segments
//!   before `next_segment` are then deleted.
//! - `snapshot-<index>.snap`: the newest state machine snapshot, written the same way.
//! - `LOCK`: held with an exclusive lock while a store has the directory open.
//!
//! Group commit: [`Store::append`] only encodes a batch into memory; [`Store::sync`] writes
//! every batch handed over since the last sync with one `write` and one `fdatasync`. One
//! checksum covers the whole group, which keeps hashing fast (blake3 is fastest on large
//! inputs) and makes the group the unit a crash keeps or loses.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use raft_bft::codec;
use raft_bft::persist::{DurableState, PersistBatch, PersistOp};
use raft_bft::types::{Digest, Index, Term};
use serde::{Deserialize, Serialize};

use crate::frame::{self, MAX_PAYLOAD};
use crate::{Snapshot, StorageError, Store};

const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"RBFT-WAL");
const BASE_MAGIC: u64 = u64::from_le_bytes(*b"RBFTBASE");
const SNAPSHOT_MAGIC: u64 = u64::from_le_bytes(*b"RBFTSNAP");
const FORMAT_VERSION: u32 = 1;
const BASE: &str = "base";
/// A group commit larger than this is split into several records (all in one write).
pub const GROUP_RECORD_BYTES: usize = 16 << 20;
/// MessagePack's `array 32` marker: a group record's payload is an array of batches whose
/// count is filled in when the record is sealed.
const ARRAY32: u8 = 0xdd;
const LOCK: &str = "LOCK";

/// Tuning of a [`FileStore`].
#[derive(Clone, Debug)]
pub struct FileOptions {
    /// A segment that reached this size is sealed and a new one started (at the next sync).
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

#[derive(Serialize, Deserialize)]
struct SegmentHeader {
    magic: u64,
    version: u32,
    cluster_id: Digest,
    seq: u64,
}

#[derive(Serialize, Deserialize)]
struct BaseImage {
    magic: u64,
    version: u32,
    cluster_id: Digest,
    next_segment: u64,
    ops: Vec<PersistOp>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    magic: u64,
    version: u32,
    cluster_id: Digest,
    index: Index,
    state_digest: Digest,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// The segment being written.
#[derive(Debug)]
struct Active {
    seq: u64,
    file: File,
    len: u64,
    path: PathBuf,
}

/// A durable store in a directory of its own. See the [module docs](self) for the layout.
///
/// ```
/// use raft_bft::persist::{PersistBatch, PersistOp};
/// use raft_bft::types::{Digest, Term};
/// use raft_bft_storage::{FileStore, Store};
///
/// let dir = std::env::temp_dir().join(format!("raft-bft-doc-{}", std::process::id()));
/// let cluster = Digest([7; 32]);
/// let mut store = FileStore::open(&dir, cluster)?;
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
    active: Active,
    /// The oldest segment still on disk.
    oldest_seq: u64,
    /// Group records handed over and not yet written (the last one still open).
    unsynced_bytes: Vec<u8>,
    /// The record batches are being added to: its offset in `unsynced_bytes` and batch count.
    open_record: Option<(usize, u32)>,
    unsynced: Vec<PersistBatch>,
    compaction_due: bool,
    last_appended: Option<u64>,
    last_durable: Option<u64>,
    stopped: Option<String>,
    fail_next_sync: bool,
    /// Test hook: the next compaction fails after this many of its steps.
    interrupt_compaction_after: Option<u8>,
    recovery: Recovery,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, offset: u64, why: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        path: path.to_path_buf(),
        offset,
        why: why.into(),
    }
}

fn segment_name(seq: u64) -> String {
    format!("wal-{seq:020}.log")
}

fn snapshot_name(index: Index) -> String {
    format!("snapshot-{:020}.snap", index.0)
}

/// Parses `prefix<number>suffix`.
fn numbered(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing directory", dir))
}

fn read_file(path: &Path) -> Result<Vec<u8>, StorageError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io("reading", path))?;
    Ok(bytes)
}

/// Writes `name` so that after a crash it holds either its old content or `bytes`, never a
/// mix: temp file, fsync, rename over, fsync of the directory.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut file = File::create(&tmp).map_err(io("creating", &tmp))?;
    file.write_all(bytes).map_err(io("writing", &tmp))?;
    file.sync_all().map_err(io("syncing", &tmp))?;
    fs::rename(&tmp, &path).map_err(io("renaming into place", &path))?;
    sync_dir(dir)
}

/// One framed record holding `value`, as the only content of a file.
fn framed<T: Serialize>(value: &T, path: &Path) -> Result<Vec<u8>, StorageError> {
    let payload = codec::encode(value).map_err(|e| StorageError::Encode {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    if payload.len() > MAX_PAYLOAD {
        return Err(StorageError::TooLarge {
            what: "file",
            bytes: payload.len(),
            limit: MAX_PAYLOAD,
        });
    }
    let mut out = Vec::with_capacity(frame::HEADER + payload.len());
    frame::encode_into(&payload, &mut out);
    Ok(out)
}

/// The value of a file written by [`framed`] (and atomically, so any damage is corruption).
fn unframed<T: serde::de::DeserializeOwned>(bytes: &[u8], path: &Path) -> Result<T, StorageError> {
    let scan = frame::scan(bytes, false, path)?;
    let [(offset, payload)] = scan.records[..] else {
        return Err(corrupt(path, 0, "expected exactly one record"));
    };
    codec::decode(payload, MAX_PAYLOAD).map_err(|e| corrupt(path, offset, e.to_string()))
}

/// The operations that rebuild `state` from nothing (what the base image stores).
pub(crate) fn rebuild_ops(state: &DurableState) -> Vec<PersistOp> {
    let mut ops = Vec::new();
    if state.compacted_below > Index(0) {
        ops.push(PersistOp::CompactBelow(state.compacted_below));
    }
    if let Some(nt) = &state.new_term {
        ops.push(PersistOp::EnterTerm(nt.clone()));
    }
    // Seeking a term above the last one entered (or above term 0, with none entered).
    if state.seeking && state.term > Term(0) {
        ops.push(PersistOp::SeekTerm(state.term));
    }
    ops.extend(state.entries.values().cloned().map(PersistOp::Entry));
    ops.extend(state.votes.values().copied().map(PersistOp::Vote));
    ops.extend(
        state
            .certificates
            .values()
            .cloned()
            .map(PersistOp::Certificate),
    );
    ops
}

impl FileStore {
    /// Opens (or creates) the store in `dir` for the cluster `cluster_id`, with default options.
    ///
    /// Recovery replays every segment; a torn write at the end of the newest segment is cut
    /// off (it was never acknowledged). Any other damage is refused with
    /// [`StorageError::Corrupt`], naming the file and offset. A store of another cluster is
    /// refused with [`StorageError::WrongCluster`], and a directory another store has open with
    /// [`StorageError::Locked`].
    pub fn open(dir: impl AsRef<Path>, cluster_id: Digest) -> Result<Self, StorageError> {
        Self::open_with(dir, cluster_id, FileOptions::default())
    }

    /// [`FileStore::open`] with explicit options.
    pub fn open_with(
        dir: impl AsRef<Path>,
        cluster_id: Digest,
        options: FileOptions,
    ) -> Result<Self, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(io("creating directory", &dir))?;
        let lock_path = dir.join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("opening", &lock_path))?;
        Self::lock(&lock, &lock_path)?;

        let mut segments = Vec::new();
        let mut snapshots = Vec::new();
        let entries = fs::read_dir(&dir).map_err(io("listing", &dir))?;
        for entry in entries {
            let entry = entry.map_err(io("listing", &dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                // An atomic write that a crash interrupted: the old file is still in place.
                let path = entry.path();
                fs::remove_file(&path).map_err(io("removing", &path))?;
            } else if let Some(seq) = numbered(name, "wal-", ".log") {
                segments.push(seq);
            } else if let Some(index) = numbered(name, "snapshot-", ".snap") {
                snapshots.push(index);
            }
        }
        segments.sort_unstable();
        snapshots.sort_unstable();

        let mut durable = DurableState::default();
        let base_path = dir.join(BASE);
        let next_segment = if base_path.exists() {
            let base: BaseImage = unframed(&read_file(&base_path)?, &base_path)?;
            if base.magic != BASE_MAGIC || base.version != FORMAT_VERSION {
                return Err(corrupt(&base_path, 0, "not a base image of this format"));
            }
            if base.cluster_id != cluster_id {
                return Err(StorageError::WrongCluster {
                    expected: cluster_id,
                    found: base.cluster_id,
                });
            }
            for op in base.ops {
                durable.apply(op);
            }
            base.next_segment
        } else {
            0
        };
        // Segments a finished compaction had yet to delete.
        for seq in segments.iter().filter(|s| **s < next_segment) {
            let path = dir.join(segment_name(*seq));
            fs::remove_file(&path).map_err(io("removing compacted segment", &path))?;
        }
        segments.retain(|s| *s >= next_segment);
        if let Some(first) = segments.first() {
            if *first != next_segment {
                let path = dir.join(segment_name(next_segment));
                return Err(corrupt(&path, 0, "this segment is missing"));
            }
        } else if next_segment > 0 {
            let path = dir.join(segment_name(next_segment));
            return Err(corrupt(
                &path,
                0,
                "the segment the base image names is missing",
            ));
        }
        for pair in segments.windows(2) {
            if pair[1] != pair[0] + 1 {
                let path = dir.join(segment_name(pair[0] + 1));
                return Err(corrupt(&path, 0, "this segment is missing"));
            }
        }

        let mut recovery = Recovery::default();
        let mut active = None;
        for (i, seq) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            let path = dir.join(segment_name(*seq));
            let bytes = read_file(&path)?;
            let scan = frame::scan(&bytes, last, &path)?;
            recovery.segments += 1;
            let mut records = scan.records.iter();
            match records.next() {
                Some((offset, payload)) => {
                    let header: SegmentHeader = codec::decode(payload, MAX_PAYLOAD)
                        .map_err(|e| corrupt(&path, *offset, format!("segment header: {e}")))?;
                    if header.magic != SEGMENT_MAGIC || header.version != FORMAT_VERSION {
                        return Err(corrupt(&path, 0, "not a log segment of this format"));
                    }
                    if header.cluster_id != cluster_id {
                        return Err(StorageError::WrongCluster {
                            expected: cluster_id,
                            found: header.cluster_id,
                        });
                    }
                    if header.seq != *seq {
                        return Err(corrupt(&path, 0, "the header names another segment"));
                    }
                }
                // Only the newest segment can lack a header (scan refuses it elsewhere): a
                // crash while it was being created. It holds nothing.
                None if last => {
                    recovery.torn_bytes_cut += bytes.len() as u64;
                    fs::remove_file(&path).map_err(io("removing", &path))?;
                    active = Some(Self::create_segment(&dir, cluster_id, *seq)?);
                    continue;
                }
                None => return Err(corrupt(&path, 0, "a sealed segment without a header")),
            }
            for (offset, payload) in records {
                let group: Vec<PersistBatch> = codec::decode(payload, MAX_PAYLOAD)
                    .map_err(|e| corrupt(&path, *offset, format!("group of batches: {e}")))?;
                for batch in group {
                    durable.apply_batch(batch);
                    recovery.batches += 1;
                }
            }
            if last {
                // Append mode: every write lands at the end, whatever was cut below.
                let file = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(io("opening", &path))?;
                if scan.torn {
                    // Never acknowledged: the sync that would have covered it did not finish.
                    recovery.torn_bytes_cut += bytes.len() as u64 - scan.valid_len;
                    file.set_len(scan.valid_len)
                        .map_err(io("cutting the torn tail of", &path))?;
                    file.sync_all().map_err(io("syncing", &path))?;
                }
                active = Some(Active {
                    seq: *seq,
                    file,
                    len: scan.valid_len,
                    path,
                });
            }
        }
        let active = match active {
            Some(active) => active,
            None => Self::create_segment(&dir, cluster_id, next_segment)?,
        };
        // Snapshots older than the newest are left over from a crash during a save.
        if let Some((_, older)) = snapshots.split_last() {
            for index in older {
                let path = dir.join(snapshot_name(Index(*index)));
                fs::remove_file(&path).map_err(io("removing older snapshot", &path))?;
            }
        }
        Ok(FileStore {
            dir,
            cluster_id,
            options,
            _lock: lock,
            durable,
            oldest_seq: next_segment,
            active,
            unsynced_bytes: Vec::new(),
            open_record: None,
            unsynced: Vec::new(),
            compaction_due: false,
            last_appended: None,
            last_durable: None,
            stopped: None,
            fail_next_sync: false,
            interrupt_compaction_after: None,
            recovery,
        })
    }

    /// Takes the directory's lock. A lock held by a process that is exiting, or by a child
    /// process between its fork and exec, goes away within moments: wait a little before
    /// concluding that another store has the directory.
    fn lock(lock: &File, path: &Path) -> Result<(), StorageError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match lock.try_lock() {
                Ok(()) => return Ok(()),
                Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(StorageError::Locked {
                        path: path.to_path_buf(),
                    })
                }
                Err(fs::TryLockError::Error(source)) => {
                    return Err(StorageError::Io {
                        what: "locking",
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
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

    /// A new, empty segment with its header, durable (file and directory entry).
    fn create_segment(dir: &Path, cluster_id: Digest, seq: u64) -> Result<Active, StorageError> {
        let path = dir.join(segment_name(seq));
        let header = SegmentHeader {
            magic: SEGMENT_MAGIC,
            version: FORMAT_VERSION,
            cluster_id,
            seq,
        };
        let bytes = framed(&header, &path)?;
        let mut file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(io("creating segment", &path))?;
        file.write_all(&bytes).map_err(io("writing", &path))?;
        file.sync_all().map_err(io("syncing", &path))?;
        sync_dir(dir)?;
        Ok(Active {
            seq,
            file,
            len: bytes.len() as u64,
            path,
        })
    }

    fn check_running(&self) -> Result<(), StorageError> {
        match &self.stopped {
            Some(why) => Err(StorageError::Stopped(why.clone())),
            None => Ok(()),
        }
    }

    /// Records the failure: the store refuses everything from now on.
    fn stop(&mut self, e: StorageError) -> StorageError {
        self.stopped = Some(e.to_string());
        e
    }

    /// Finishes the open group record: fills in its batch count and its frame.
    fn seal_open_record(&mut self) {
        if let Some((start, count)) = self.open_record.take() {
            let at = start + frame::HEADER;
            self.unsynced_bytes[at] = ARRAY32;
            self.unsynced_bytes[at + 1..at + 5].copy_from_slice(&count.to_be_bytes());
            frame::seal(&mut self.unsynced_bytes, start);
        }
    }

    /// Writes every unsynced record with one write and one `fdatasync`.
    fn write_unsynced(&mut self) -> Result<(), StorageError> {
        self.seal_open_record();
        if self.active.len >= self.options.segment_bytes {
            let next = self.active.seq + 1;
            self.active = Self::create_segment(&self.dir, self.cluster_id, next)?;
        }
        let path = &self.active.path;
        self.active
            .file
            .write_all(&self.unsynced_bytes)
            .map_err(io("writing", path))?;
        if std::mem::take(&mut self.fail_next_sync) {
            return Err(StorageError::Io {
                what: "syncing",
                path: path.clone(),
                source: std::io::Error::other("injected fdatasync failure"),
            });
        }
        self.active.file.sync_data().map_err(io("syncing", path))?;
        self.active.len += self.unsynced_bytes.len() as u64;
        Ok(())
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
        let next = self.active.seq + 1;
        // The new segment exists before the base image names it.
        self.active = Self::create_segment(&self.dir, self.cluster_id, next)?;
        interrupted(1)?;
        let base_path = self.dir.join(BASE);
        let image = BaseImage {
            magic: BASE_MAGIC,
            version: FORMAT_VERSION,
            cluster_id: self.cluster_id,
            next_segment: next,
            ops: rebuild_ops(&self.durable),
        };
        write_atomically(&self.dir, BASE, &framed(&image, &base_path)?)?;
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
        sync_dir(&self.dir)
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
        self.unsynced.len()
    }

    /// Test hook: how many bytes the next sync would write.
    #[doc(hidden)]
    pub fn unsynced_len(&mut self) -> usize {
        self.seal_open_record();
        self.unsynced_bytes.len()
    }

    /// Test hook: a crash during a sync, after the disk wrote the first `written` bytes of
    /// what the sync writes (possibly ending mid-record) and nothing else.
    #[doc(hidden)]
    pub fn crash_during_sync(mut self, written: usize) -> Result<(), StorageError> {
        self.seal_open_record();
        let written = written.min(self.unsynced_bytes.len());
        let path = self.active.path.clone();
        self.active
            .file
            .write_all(&self.unsynced_bytes[..written])
            .map_err(io("writing", &path))
    }
}

impl Store for FileStore {
    fn cluster_id(&self) -> Digest {
        self.cluster_id
    }

    fn append(&mut self, batch: &PersistBatch) -> Result<(), StorageError> {
        self.check_running()?;
        if let Some(last) = self.last_appended {
            if batch.id <= last {
                return Err(StorageError::OutOfOrder {
                    last,
                    got: batch.id,
                });
            }
        }
        let before = (self.unsynced_bytes.len(), self.open_record);
        let full = |(start, count): (usize, u32)| {
            self.unsynced_bytes.len() - start >= GROUP_RECORD_BYTES || count == u32::MAX
        };
        if self.open_record.is_none_or(full) {
            self.seal_open_record();
            let start = frame::begin(&mut self.unsynced_bytes);
            self.unsynced_bytes
                .extend_from_slice(&[ARRAY32, 0, 0, 0, 0]);
            self.open_record = Some((start, 0));
        }
        let encoded = codec::encode_into(batch, &mut self.unsynced_bytes);
        let Some((start, count)) = self.open_record else {
            unreachable!("a record was opened above");
        };
        let refused = match encoded {
            Err(e) => Some(StorageError::Encode {
                path: self.active.path.clone(),
                why: e.to_string(),
            }),
            Ok(()) if self.unsynced_bytes.len() - start - frame::HEADER > MAX_PAYLOAD => {
                Some(StorageError::TooLarge {
                    what: "batch",
                    bytes: self.unsynced_bytes.len() - before.0,
                    limit: MAX_PAYLOAD - GROUP_RECORD_BYTES,
                })
            }
            Ok(()) => None,
        };
        if let Some(e) = refused {
            // Nothing of the refused batch stays behind.
            if before.1 == self.open_record {
                self.unsynced_bytes.truncate(before.0);
            } else {
                self.unsynced_bytes.truncate(start);
                self.open_record = None;
            }
            return Err(e);
        }
        self.open_record = Some((start, count + 1));
        self.compaction_due |= batch
            .ops
            .iter()
            .any(|op| matches!(op, PersistOp::CompactBelow(_)));
        self.unsynced.push(batch.clone());
        self.last_appended = Some(batch.id);
        Ok(())
    }

    fn sync(&mut self) -> Result<Option<u64>, StorageError> {
        self.check_running()?;
        if self.unsynced.is_empty() {
            return Ok(self.last_durable);
        }
        if let Err(e) = self.write_unsynced() {
            return Err(self.stop(e));
        }
        self.unsynced_bytes.clear();
        for batch in self.unsynced.drain(..) {
            self.last_durable = Some(batch.id);
            self.durable.apply_batch(batch);
        }
        if std::mem::take(&mut self.compaction_due) {
            if let Err(e) = self.compact() {
                return Err(self.stop(e));
            }
        }
        Ok(self.last_durable)
    }

    fn load(&self) -> Result<DurableState, StorageError> {
        self.check_running()?;
        Ok(self.durable.clone())
    }

    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.check_running()?;
        let existing = self.newest_snapshot_index()?;
        if let Some(newest) = existing {
            if snapshot.index <= newest {
                return Err(StorageError::StaleSnapshot {
                    index: snapshot.index,
                    newest,
                });
            }
        }
        let name = snapshot_name(snapshot.index);
        let path = self.dir.join(&name);
        let file = SnapshotFile {
            magic: SNAPSHOT_MAGIC,
            version: FORMAT_VERSION,
            cluster_id: self.cluster_id,
            index: snapshot.index,
            state_digest: snapshot.state_digest,
            data: snapshot.data.clone(),
        };
        let result = framed(&file, &path).and_then(|bytes| {
            write_atomically(&self.dir, &name, &bytes)?;
            if let Some(old) = existing {
                let old_path = self.dir.join(snapshot_name(old));
                fs::remove_file(&old_path).map_err(io("removing older snapshot", &old_path))?;
                sync_dir(&self.dir)?;
            }
            Ok(())
        });
        result.map_err(|e| self.stop(e))
    }

    fn load_snapshot(&self) -> Result<Option<Snapshot>, StorageError> {
        self.check_running()?;
        let Some(index) = self.newest_snapshot_index()? else {
            return Ok(None);
        };
        let path = self.dir.join(snapshot_name(index));
        let file: SnapshotFile = unframed(&read_file(&path)?, &path)?;
        if file.magic != SNAPSHOT_MAGIC || file.version != FORMAT_VERSION {
            return Err(corrupt(&path, 0, "not a snapshot of this format"));
        }
        if file.cluster_id != self.cluster_id {
            return Err(StorageError::WrongCluster {
                expected: self.cluster_id,
                found: file.cluster_id,
            });
        }
        if file.index != index {
            return Err(corrupt(&path, 0, "the snapshot names another index"));
        }
        Ok(Some(Snapshot {
            index: file.index,
            state_digest: file.state_digest,
            data: file.data,
        }))
    }
}

impl FileStore {
    fn newest_snapshot_index(&self) -> Result<Option<Index>, StorageError> {
        let mut newest = None;
        for entry in fs::read_dir(&self.dir).map_err(io("listing", &self.dir))? {
            let entry = entry.map_err(io("listing", &self.dir))?;
            if let Some(index) = entry
                .file_name()
                .to_str()
                .and_then(|n| numbered(n, "snapshot-", ".snap"))
            {
                newest = newest.max(Some(Index(index)));
            }
        }
        Ok(newest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::sample_batch;

    #[test]
    fn the_base_image_rebuilds_every_state_exactly() {
        let mut state = DurableState::default();
        assert_eq!(rebuild(&state), state);
        for id in 1..=40 {
            state.apply_batch(sample_batch(id));
            if id % 7 == 0 {
                state.apply(PersistOp::CompactBelow(Index(id / 2)));
            }
            assert_eq!(rebuild(&state), state, "after batch {id}");
        }
    }

    fn rebuild(state: &DurableState) -> DurableState {
        let mut rebuilt = DurableState::default();
        for op in rebuild_ops(state) {
            rebuilt.apply(op);
        }
        rebuilt
    }

    #[test]
    fn names_sort_in_log_order_and_parse_back() {
        assert!(segment_name(9) < segment_name(10));
        assert_eq!(numbered(&segment_name(12345), "wal-", ".log"), Some(12345));
        assert_eq!(numbered("wal-12.log", "wal-", ".log"), None);
        assert_eq!(
            numbered(&segment_name(u64::MAX), "wal-", ".log"),
            Some(u64::MAX)
        );
    }
}
