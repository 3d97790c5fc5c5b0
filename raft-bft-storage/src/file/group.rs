//! The batches handed over since the last sync, already framed as the records the next sync
//! writes (group commit: one record per group, split when it grows past
//! [`GROUP_RECORD_BYTES`]).

use raft_bft::codec;
use raft_bft::persist::PersistBatch;

use crate::frame::{self, MAX_PAYLOAD};
use crate::StorageError;

/// A group larger than this is split into several records (all written by the same sync).
pub const GROUP_RECORD_BYTES: usize = 16 << 20;

/// The largest batch a store takes (it must fit in one record).
pub const MAX_BATCH_BYTES: usize = MAX_PAYLOAD - 5;

/// MessagePack's `array 32` marker: a group record's payload is an array of batches whose
/// count is filled in when the record is sealed.
const ARRAY32: u8 = 0xdd;

/// Finishes the group record at `start` holding `count` batches: fills in the count and the
/// frame. `bytes` must end with that record.
pub(super) fn seal_group_record(bytes: &mut Vec<u8>, start: usize, count: u32) {
    let at = start + frame::HEADER;
    bytes[at] = ARRAY32;
    bytes[at + 1..at + 5].copy_from_slice(&count.to_be_bytes());
    frame::seal(bytes, start);
}

/// What [`Group::take`] moved out.
#[derive(Debug)]
pub(super) struct Taken {
    pub(super) bytes: Vec<u8>,
    /// Where each record starts in `bytes`.
    pub(super) starts: Vec<usize>,
    pub(super) batches: Vec<PersistBatch>,
    /// The last record, still open: its start and batch count.
    pub(super) open: Option<(usize, u32)>,
}

impl Taken {
    /// Seals the last record (checksum and whitening).
    pub(super) fn seal(&mut self) {
        if let Some((start, count)) = self.open.take() {
            seal_group_record(&mut self.bytes, start, count);
        }
    }
}

/// Framed records waiting for a sync.
#[derive(Debug, Default)]
pub(super) struct Group {
    bytes: Vec<u8>,
    /// Where each record starts in `bytes`.
    starts: Vec<usize>,
    /// The record batches are being added to, and how many it holds.
    open: Option<u32>,
    batches: Vec<PersistBatch>,
}

impl Group {
    pub(super) fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    pub(super) fn batches(&self) -> usize {
        self.batches.len()
    }

    /// Encodes `batch` into the open record (opening one if needed). A refused batch leaves
    /// nothing behind.
    pub(super) fn push(&mut self, batch: &PersistBatch) -> Result<(), StorageError> {
        let before = self.bytes.len();
        let open_start = self.starts.last().copied().filter(|_| self.open.is_some());
        let (start, count) = match (open_start, self.open) {
            (Some(start), Some(count))
                if before - start < GROUP_RECORD_BYTES && count < u32::MAX =>
            {
                (start, count)
            }
            _ => {
                self.seal();
                let start = frame::begin(&mut self.bytes);
                self.bytes.extend_from_slice(&[ARRAY32, 0, 0, 0, 0]);
                self.starts.push(start);
                (start, 0)
            }
        };
        let encoded = codec::encode_into(batch, &mut self.bytes);
        let refused = match encoded {
            Err(e) => Some(StorageError::Encode {
                what: "a persist batch",
                why: e.to_string(),
            }),
            Ok(()) if self.bytes.len() - start - frame::HEADER > MAX_PAYLOAD => {
                Some(StorageError::TooLarge {
                    what: "persist batch",
                    bytes: self.bytes.len() - before,
                    limit: MAX_BATCH_BYTES,
                })
            }
            Ok(()) => None,
        };
        if let Some(e) = refused {
            if count == 0 {
                // The record was opened for this batch: drop it whole.
                self.bytes.truncate(start);
                self.starts.pop();
                self.open = None;
            } else {
                self.bytes.truncate(before);
                self.open = Some(count);
            }
            return Err(e);
        }
        self.open = Some(count + 1);
        self.batches.push(batch.clone());
        Ok(())
    }

    /// Finishes the open record: fills in its batch count and its frame.
    pub(super) fn seal(&mut self) {
        if let (Some(count), Some(start)) = (self.open.take(), self.starts.last().copied()) {
            seal_group_record(&mut self.bytes, start, count);
        }
    }

    /// The sealed bytes, and where each record starts.
    pub(super) fn sealed(&mut self) -> (&[u8], &[usize]) {
        self.seal();
        (&self.bytes, &self.starts)
    }

    /// Moves everything out, leaving the group empty for the next appends. The last record
    /// stays open: whoever writes the bytes seals it ([`Taken::seal`]), on its own thread.
    pub(super) fn take(&mut self) -> Taken {
        let open = match (self.open.take(), self.starts.last().copied()) {
            (Some(count), Some(start)) => Some((start, count)),
            _ => None,
        };
        Taken {
            bytes: std::mem::take(&mut self.bytes),
            starts: std::mem::take(&mut self.starts),
            batches: std::mem::take(&mut self.batches),
            open,
        }
    }

    /// Gives a written buffer back for reuse (its capacity), if the group has none yet.
    pub(super) fn reuse(&mut self, mut buffer: Vec<u8>) {
        if self.bytes.is_empty() && self.bytes.capacity() < buffer.capacity() {
            buffer.clear();
            self.bytes = buffer;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::sample_batch;
    use std::path::Path;

    #[test]
    fn a_group_reads_back_as_its_batches() {
        let mut group = Group::default();
        let batches: Vec<PersistBatch> = (1..=9).map(sample_batch).collect();
        for b in &batches {
            group.push(b).expect("push");
        }
        let (bytes, starts) = group.sealed();
        assert_eq!(starts, &[0]);
        let scan = frame::scan(bytes, false, Path::new("group")).expect("scan");
        let read: Vec<PersistBatch> =
            codec::decode(&scan.records[0].1, MAX_PAYLOAD).expect("decode");
        assert_eq!(read, batches);
        assert_eq!(group.take().batches, batches);
        assert!(group.is_empty());
    }
}
