//! One node's durable Raft log: openraft's `RaftLogStorage` over an append-only file.
//!
//! Every change is a record appended to `raft.log` in the node's directory: a batch of entries,
//! a vote, a truncation (entries from an index on are gone) or a purge (entries up to a log id
//! are gone). A record is a 4-byte little-endian length and its rmp-serde encoding. Reopening
//! the file replays the records in order, which rebuilds exactly the in-memory state that the
//! writes produced. The file is never compacted: a benchmark run is short, and purged entries
//! only cost disk space.
//!
//! The entries live in memory too (a `BTreeMap` by index), which is what reads are served from.
//! Writes go, in order, to one writer thread per node that writes each record and calls
//! `sync_data` once for it: an append call of openraft (a batch of entries) costs one sync, like
//! raft-bft's one sync per batch. Openraft is told the entries are flushed only after that
//! sync; votes, truncations and purges return only once synced too. The writer thread is named
//! with the node's thread prefix, so its CPU time counts for the node.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// The log file's name in the node's directory.
pub const LOG_FILE: &str = "raft.log";

/// One durable change of the log.
#[derive(Serialize, Deserialize)]
enum Record<'a> {
    /// Entries appended (borrowed when written, owned when read back).
    Entries(Cow<'a, [Entry]>),
    /// The vote saved.
    Vote(Vote),
    /// Entries from this index on were deleted (they conflicted with a leader's).
    Truncate(u64),
    /// Entries up to and including this log id were deleted (a snapshot covers them).
    Purge(LogId),
}

/// The entries held, and what was purged: shared by the store and its readers.
#[derive(Default)]
struct Entries {
    by_index: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
}

impl Entries {
    fn append(&mut self, entries: impl IntoIterator<Item = Entry>) {
        for entry in entries {
            self.by_index.insert(entry.log_id.index, entry);
        }
    }

    fn truncate(&mut self, since: u64) {
        self.by_index.split_off(&since);
    }

    fn purge(&mut self, upto: LogId) {
        self.by_index = self.by_index.split_off(&(upto.index + 1));
        self.last_purged = Some(upto);
    }

    fn state(&self) -> LogState<TypeConfig> {
        let last = self.by_index.values().next_back().map(|e| e.log_id);
        LogState {
            last_purged_log_id: self.last_purged,
            last_log_id: last.or(self.last_purged),
        }
    }

    fn range(&self, range: impl RangeBounds<u64>) -> Vec<Entry> {
        self.by_index.range(range).map(|(_, e)| e.clone()).collect()
    }
}

/// Who waits for a write to be durable.
enum Done {
    /// Openraft, for appended entries.
    Flushed(LogFlushed<TypeConfig>),
    /// The store itself, for a vote, truncation or purge.
    Synced(oneshot::Sender<io::Result<()>>),
}

/// One framed record for the writer thread.
struct WriteReq {
    frame: Vec<u8>,
    done: Done,
}

/// The log of one node. Openraft owns it (and calls it from the node's Raft core task).
pub struct LogStore {
    entries: Arc<Mutex<Entries>>,
    vote: Option<Vote>,
    writer: mpsc::Sender<WriteReq>,
}

/// A reader of the log, for openraft's replication tasks.
pub struct LogReader {
    entries: Arc<Mutex<Entries>>,
}

impl LogStore {
    /// Opens (or creates) the log in `dir` and starts its writer thread, named `thread_name`.
    /// The thread ends once the store is dropped; join it with the returned handle.
    pub fn open(dir: &Path, thread_name: String) -> Result<(LogStore, JoinHandle<()>), String> {
        let path = dir.join(LOG_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let (entries, vote, valid) =
            replay(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        if valid < bytes.len() {
            // A torn last record (the process died while writing it, so it was never
            // acknowledged): drop it, so that new records follow a complete one.
            file.set_len(valid as u64)
                .and_then(|()| file.sync_data())
                .map_err(|e| format!("cannot cut the torn tail of {}: {e}", path.display()))?;
        }
        let (writer, requests) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || write_loop(file, requests))
            .map_err(|e| format!("cannot start the log writer thread: {e}"))?;
        let store = LogStore {
            entries: Arc::new(Mutex::new(entries)),
            vote,
            writer,
        };
        Ok((store, thread))
    }

    fn entries(&self) -> MutexGuard<'_, Entries> {
        lock(&self.entries)
    }

    /// Queues `record` for the writer thread; `done` learns when it is durable.
    fn send(&self, record: &Record<'_>, done: Done) -> Result<(), String> {
        let frame = frame(record)?;
        self.writer
            .send(WriteReq { frame, done })
            .map_err(|_| "the log writer thread stopped".to_string())
    }

    /// Writes `record` and waits until it is durable.
    async fn write_synced(&self, record: &Record<'_>) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        self.send(record, Done::Synced(tx)).map_err(write_error)?;
        rx.await
            .map_err(|_| write_error("the log writer thread stopped"))?
            .map_err(|e| write_error(&e))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self.entries().range(range))
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(lock(&self.entries).range(range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        Ok(self.entries().state())
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            entries: self.entries.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_synced(&Record::Vote(*vote)).await?;
        self.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        self.send(
            &Record::Entries(Cow::Borrowed(&entries)),
            Done::Flushed(callback),
        )
        .map_err(write_error)?;
        // Readable at once (replication may send them before they are durable here, which Raft
        // allows); openraft counts them as this node's only once the callback fires.
        self.entries().append(entries);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Forget them first: nothing may read a deleted entry once this returns.
        self.entries().truncate(log_id.index);
        self.write_synced(&Record::Truncate(log_id.index)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.entries().purge(log_id);
        self.write_synced(&Record::Purge(log_id)).await
    }
}

/// Writes each record in arrival order, syncing after each, until the store is dropped.
fn write_loop(mut file: File, requests: mpsc::Receiver<WriteReq>) {
    for WriteReq { frame, done } in requests {
        let result = file.write_all(&frame).and_then(|()| file.sync_data());
        match done {
            Done::Flushed(callback) => callback.log_io_completed(result),
            // The store stopped waiting (its node shut down): nothing to tell.
            Done::Synced(tx) => drop(tx.send(result)),
        }
    }
}

/// A record's bytes in the file: its length (u32, little endian), then its encoding.
fn frame(record: &Record<'_>) -> Result<Vec<u8>, String> {
    let mut frame = vec![0u8; 4];
    rmp_serde::encode::write(&mut frame, record)
        .map_err(|e| format!("cannot encode a log record: {e}"))?;
    let len = u32::try_from(frame.len() - 4)
        .map_err(|_| format!("a log record of {} bytes is too large", frame.len()))?;
    frame[..4].copy_from_slice(&len.to_le_bytes());
    Ok(frame)
}

/// Rebuilds the log from the file's bytes. Returns the entries, the vote, and how many bytes
/// hold complete records: a last record that is cut short or does not decode is a write that
/// never completed (and so was never acknowledged); any other bad record is an error.
fn replay(bytes: &[u8]) -> Result<(Entries, Option<Vote>, usize), String> {
    let mut entries = Entries::default();
    let mut vote = None;
    let mut pos = 0;
    while pos < bytes.len() {
        let Some(len) = bytes.get(pos..pos + 4) else {
            break;
        };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let end = pos + 4 + len;
        let Some(body) = bytes.get(pos + 4..end) else {
            break;
        };
        let record: Record<'static> = match rmp_serde::from_slice(body) {
            Ok(record) => record,
            Err(_) if end == bytes.len() => break,
            Err(e) => return Err(format!("the log record at byte {pos} does not decode: {e}")),
        };
        match record {
            Record::Entries(list) => entries.append(list.into_owned()),
            Record::Vote(v) => vote = Some(v),
            Record::Truncate(since) => entries.truncate(since),
            Record::Purge(upto) => entries.purge(upto),
        }
        pos = end;
    }
    Ok((entries, vote, pos))
}

/// Locks the shared entries. A panic while holding the lock cannot leave them half-changed
/// (each change is one map operation), so a poisoned lock is still usable.
fn lock(entries: &Mutex<Entries>) -> MutexGuard<'_, Entries> {
    entries.lock().unwrap_or_else(PoisonError::into_inner)
}

fn write_error(e: impl ToString) -> StorageError {
    StorageIOError::write_logs(AnyError::error(e)).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};
    use raft_bft::crypto::KeyPair;
    use raft_bft::message::SignedTx;
    use raft_bft::types::Digest;

    use super::super::types::Batch;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 0), index)
    }

    fn entry(term: u64, index: u64) -> Entry {
        let key = KeyPair::from_seed([index as u8; 32]);
        let tx = SignedTx::sign(&Digest([1; 32]), &key, index, vec![index as u8; 10]);
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(Batch(vec![tx])),
        }
    }

    fn indexes(entries: &[Entry]) -> Vec<(u64, u64)> {
        entries
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect()
    }

    fn open(dir: &Path) -> (LogStore, JoinHandle<()>) {
        LogStore::open(dir, "log-test".into()).expect("opens")
    }

    fn close((store, thread): (LogStore, JoinHandle<()>)) {
        drop(store);
        thread.join().expect("the writer thread ends");
    }

    #[test]
    fn the_log_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (mut store, thread) = open(dir.path());
            store
                .blocking_append((1..=10).map(|i| entry(1, i)))
                .await
                .expect("appends");
            store.save_vote(&Vote::new(2, 1)).await.expect("votes");
            // A new leader overwrote the tail from index 8 on.
            store.truncate(log_id(1, 8)).await.expect("truncates");
            store
                .blocking_append((8..=12).map(|i| entry(2, i)))
                .await
                .expect("appends");
            store.purge(log_id(1, 3)).await.expect("purges");
            close((store, thread));

            let (mut store, thread) = open(dir.path());
            let got = store.try_get_log_entries(0..100).await.expect("reads");
            let want: Vec<(u64, u64)> = (4..=7)
                .map(|i| (1, i))
                .chain((8..=12).map(|i| (2, i)))
                .collect();
            assert_eq!(indexes(&got), want);
            assert_eq!(got[0], entry(1, 4), "entries come back whole");
            let state = store.get_log_state().await.expect("state");
            assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
            assert_eq!(state.last_log_id, Some(log_id(2, 12)));
            assert_eq!(
                store.read_vote().await.expect("vote"),
                Some(Vote::new(2, 1))
            );
            close((store, thread));
        });
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_the_log_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (mut store, thread) = open(dir.path());
            store
                .blocking_append((1..=3).map(|i| entry(1, i)))
                .await
                .expect("appends");
            store.blocking_append([entry(1, 4)]).await.expect("appends");
            close((store, thread));

            // Cut the last record short, as a crash in the middle of its write would.
            let path = dir.path().join(LOG_FILE);
            let len = std::fs::metadata(&path).expect("metadata").len();
            let file = OpenOptions::new().write(true).open(&path).expect("opens");
            file.set_len(len - 5).expect("cuts");
            drop(file);

            let (mut store, thread) = open(dir.path());
            let got = store.try_get_log_entries(0..100).await.expect("reads");
            assert_eq!(indexes(&got), vec![(1, 1), (1, 2), (1, 3)]);
            store
                .blocking_append([entry(1, 4)])
                .await
                .expect("appends after the cut");
            close((store, thread));

            let (mut store, thread) = open(dir.path());
            let got = store.try_get_log_entries(0..100).await.expect("reads");
            assert_eq!(indexes(&got), vec![(1, 1), (1, 2), (1, 3), (1, 4)]);
            close((store, thread));
        });
    }

    #[test]
    fn a_corrupt_record_before_the_tail_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (mut store, thread) = open(dir.path());
            store.blocking_append([entry(1, 1)]).await.expect("appends");
            store.blocking_append([entry(1, 2)]).await.expect("appends");
            close((store, thread));
        });
        let path = dir.path().join(LOG_FILE);
        let mut bytes = std::fs::read(&path).expect("reads");
        bytes[4] = 0xc1; // never used by MessagePack
        std::fs::write(&path, bytes).expect("writes");
        let err = LogStore::open(dir.path(), "log-test".into()).err();
        assert!(err.is_some_and(|e| e.contains("does not decode")));
    }
}
