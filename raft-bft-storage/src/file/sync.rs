//! A sync as a job of its own: the write and `fdatasync` of one group commit, which may run on
//! another thread while the store takes the next appends (so that encoding and checksumming
//! the next group overlaps the disk's work on this one).

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

use raft_bft::types::Digest;

use super::group::Taken;
use super::layout::io;
use super::recovery::Active;
use crate::StorageError;

/// The write and `fdatasync` of the records appended before [`FileStore::begin_sync`]. Run it
/// (on any thread) with [`SyncJob::run`], and hand what it returns to
/// [`FileStore::finish_sync`].
///
/// [`FileStore::begin_sync`]: super::FileStore::begin_sync
/// [`FileStore::finish_sync`]: super::FileStore::finish_sync
#[derive(Debug)]
pub struct SyncJob {
    /// Which store and which of its syncs this is.
    pub(super) token: (u64, u64),
    /// A handle on the directory's lock: while the job (or what it returns) exists, no other
    /// store can open the directory and write where the job writes.
    pub(super) lock: File,
    pub(super) active: Active,
    pub(super) records: Taken,
    pub(super) dir: PathBuf,
    pub(super) cluster_id: Digest,
    pub(super) segment_bytes: u64,
    /// Test hook: the `fdatasync` fails.
    pub(super) fail: bool,
}

/// What a [`SyncJob`] did, for [`FileStore::finish_sync`](super::FileStore::finish_sync).
#[derive(Debug)]
pub struct SyncDone {
    pub(super) token: (u64, u64),
    /// Held until the store takes the result back.
    pub(super) _lock: File,
    pub(super) active: Active,
    pub(super) buffer: Vec<u8>,
    pub(super) result: Result<(), StorageError>,
}

impl SyncJob {
    /// Writes the records and syncs them: one write and one `fdatasync` per segment they land
    /// in (one, unless the group crosses the segment size).
    pub fn run(mut self) -> SyncDone {
        // The checksum of the last record is computed here, off the caller's thread.
        self.records.seal();
        let result = self.write_records();
        if result.is_err() {
            // What the failed write left in the page cache was never made durable and may
            // never be: cut it, so that a restart without a reboot cannot read it back as if
            // it were. (Best effort: the store stops either way, and a tail the cut misses is
            // a torn write to recovery.)
            let _ = self.active.file.set_len(self.active.len);
            let _ = self.active.file.sync_all();
        }
        SyncDone {
            token: self.token,
            _lock: self.lock,
            active: self.active,
            buffer: self.records.bytes,
            result,
        }
    }

    /// One write and one `fdatasync` per record: normally a group is one record; a group
    /// split into several is synced record by record, so that a crash can tear only the last
    /// one written (recovery takes damage followed by a valid record for corruption).
    fn write_records(&mut self) -> Result<(), StorageError> {
        let Taken { bytes, starts, .. } = &self.records;
        for (i, start) in starts.iter().enumerate() {
            let end = starts.get(i + 1).copied().unwrap_or(bytes.len());
            let has_data = self.active.len > self.active.header_len;
            if has_data && self.active.len + (end - start) as u64 > self.segment_bytes {
                let previous_len = self.active.len;
                self.active = Active::create(
                    &self.dir,
                    self.cluster_id,
                    self.active.seq + 1,
                    previous_len,
                )?;
            }
            let fail = self.fail && i + 1 == starts.len();
            write_and_sync(&mut self.active, &bytes[*start..end], fail)?;
        }
        Ok(())
    }
}

/// Writes `bytes` at the end of the segment and syncs it.
fn write_and_sync(active: &mut Active, bytes: &[u8], fail: bool) -> Result<(), StorageError> {
    if bytes.is_empty() {
        return Ok(());
    }
    let path = &active.path;
    active.file.write_all(bytes).map_err(io("writing", path))?;
    if fail {
        return Err(StorageError::Io {
            what: "syncing",
            path: path.clone(),
            source: std::io::Error::other("injected fdatasync failure"),
        });
    }
    active.file.sync_data().map_err(io("syncing", path))?;
    active.len += bytes.len() as u64;
    Ok(())
}
