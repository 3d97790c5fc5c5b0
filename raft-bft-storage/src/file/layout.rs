//! What the files of a data directory are called and how each starts, and the file system
//! steps that make them durable.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use raft_bft::codec;
use raft_bft::persist::{DurableState, PersistOp};
use raft_bft::types::{Digest, Index, Term};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::frame::{self, MAX_PAYLOAD};
use crate::StorageError;

/// The on-disk format this build writes and reads.
pub(super) const FORMAT_VERSION: u32 = 1;

/// No file this store writes is larger (a segment holds at most its size limit plus one
/// record); anything larger is refused before it is read.
pub(super) const MAX_FILE_BYTES: u64 = 4 << 30;

/// The base image's name.
pub(super) const BASE: &str = "base";

/// The lock file's name.
pub(super) const LOCK: &str = "LOCK";

/// The kinds of file, each with its own magic number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Segment,
    Base,
    Snapshot,
}

impl Kind {
    fn magic(self) -> u64 {
        u64::from_le_bytes(*match self {
            Kind::Segment => b"RBFT-WAL",
            Kind::Base => b"RBFTBASE",
            Kind::Snapshot => b"RBFTSNAP",
        })
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Segment => "log segment",
            Kind::Base => "base image",
            Kind::Snapshot => "snapshot",
        }
    }
}

/// The first record of every file. `number` is the segment's sequence number, the base image's
/// first segment to replay, or the snapshot's index. `previous_len` chains a segment to the one
/// before it: that segment's length when it was sealed (0 if none), so that a sealed segment
/// cut at a record boundary is noticed.
#[derive(Serialize, Deserialize)]
struct FileHeader {
    magic: u64,
    version: u32,
    cluster_id: Digest,
    number: u64,
    previous_len: u64,
}

/// What a file's header says.
pub(super) struct HeaderFields {
    pub(super) number: u64,
    pub(super) previous_len: u64,
}

/// A header record for a file of `kind`.
pub(super) fn header(
    kind: Kind,
    cluster_id: Digest,
    number: u64,
    previous_len: u64,
    out: &mut Vec<u8>,
) {
    let header = FileHeader {
        magic: kind.magic(),
        version: FORMAT_VERSION,
        cluster_id,
        number,
        previous_len,
    };
    frame_value(&header, out).expect("a file header always encodes and fits a record");
}

/// Checks a file's header record: the kind, the format version, the cluster. Returns its
/// number.
pub(super) fn check_header(
    kind: Kind,
    payload: &[u8],
    offset: u64,
    path: &Path,
    cluster_id: Digest,
) -> Result<HeaderFields, StorageError> {
    let header: FileHeader = codec::decode(payload, MAX_PAYLOAD)
        .map_err(|e| corrupt(path, offset, format!("{} header: {e}", kind.name())))?;
    if header.magic != kind.magic() {
        return Err(corrupt(path, offset, format!("not a {}", kind.name())));
    }
    if header.version != FORMAT_VERSION {
        return Err(StorageError::UnsupportedFormat {
            path: path.to_path_buf(),
            found: header.version,
            supported: FORMAT_VERSION,
        });
    }
    if header.cluster_id != cluster_id {
        return Err(StorageError::WrongCluster {
            path: path.to_path_buf(),
            expected: cluster_id,
            found: header.cluster_id,
        });
    }
    Ok(HeaderFields {
        number: header.number,
        previous_len: header.previous_len,
    })
}

/// Appends one record holding `value`.
pub(super) fn frame_value<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), StorageError> {
    let start = frame::begin(out);
    let encoded = codec::encode_into(value, out).map_err(|e| StorageError::Encode {
        what: "a record",
        why: e.to_string(),
    });
    let too_large = out.len() - start - frame::HEADER > MAX_PAYLOAD;
    if encoded.is_err() || too_large {
        let bytes = out.len() - start - frame::HEADER;
        out.truncate(start);
        encoded?;
        return Err(StorageError::TooLarge {
            what: "record",
            bytes,
            limit: MAX_PAYLOAD,
        });
    }
    frame::seal(out, start);
    Ok(())
}

/// Decodes a record's payload, as corruption if it does not decode (it passed its checksum).
pub(super) fn decode_record<T: DeserializeOwned>(
    payload: &[u8],
    offset: u64,
    path: &Path,
    what: &str,
) -> Result<T, StorageError> {
    codec::decode(payload, MAX_PAYLOAD).map_err(|e| corrupt(path, offset, format!("{what}: {e}")))
}

pub(super) fn corrupt(path: &Path, offset: u64, why: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        path: path.to_path_buf(),
        offset,
        why: why.into(),
    }
}

pub(super) fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn segment_name(seq: u64) -> String {
    format!("wal-{seq:020}.log")
}

pub(super) fn snapshot_name(index: Index) -> String {
    format!("snapshot-{:020}.snap", index.0)
}

/// Parses `prefix<20 digits>suffix`.
pub(super) fn numbered(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Makes the directory's entries (files created, renamed or removed in it) durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing directory", dir))
}

/// Creates `dir` and any missing parents, each durably: the directory holding each new entry
/// is synced, and so is `dir`'s parent even if `dir` existed (it may have been created by a run
/// that crashed before syncing it).
pub(super) fn create_dir_durably(dir: &Path) -> Result<(), StorageError> {
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        at = d.parent();
    }
    for d in missing.iter().rev() {
        fs::create_dir(d).map_err(io("creating directory", d))?;
        sync_dir(&parent_of(d))?;
    }
    sync_dir(&parent_of(dir))
}

/// The directory holding `path` (`.` for a relative path of one component).
fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Reads a whole file, refusing one larger than any this store writes.
pub(super) fn read_bounded(path: &Path) -> Result<Vec<u8>, StorageError> {
    let file = File::open(path).map_err(io("opening", path))?;
    let len = file
        .metadata()
        .map_err(io("reading the size of", path))?
        .len();
    if len > MAX_FILE_BYTES {
        return Err(corrupt(
            path,
            MAX_FILE_BYTES,
            format!("{len} bytes: larger than any file this store writes"),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // The file may grow while it is read; never read past the bound.
    file.take(MAX_FILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(io("reading", path))?;
    Ok(bytes)
}

/// Writes `name` so that after a crash it holds either its old content or `bytes`, never a
/// mix: temp file, fsync, rename over, fsync of the directory.
pub(super) fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut file = File::create(&tmp).map_err(io("creating", &tmp))?;
    file.write_all(bytes).map_err(io("writing", &tmp))?;
    file.sync_all().map_err(io("syncing", &tmp))?;
    fs::rename(&tmp, &path).map_err(io("renaming into place", &path))?;
    sync_dir(dir)
}

/// Whether `name` is a temp file this store's atomic writes leave behind after a crash.
pub(super) fn is_our_temp_file(name: &str) -> bool {
    name == format!("{BASE}.tmp")
        || name
            .strip_suffix(".tmp")
            .is_some_and(|n| numbered(n, "snapshot-", ".snap").is_some())
}

/// The operations that rebuild `state` from nothing (what the base image stores).
pub(super) fn rebuild_ops(state: &DurableState) -> Vec<PersistOp> {
    let mut ops = Vec::new();
    if let Some(cp) = &state.checkpoint {
        ops.push(PersistOp::Checkpoint(cp.clone()));
    }
    if state.compacted_below > Index(0) {
        ops.push(PersistOp::CompactBelow(state.compacted_below));
    }
    if state.vote_floor > Index(0) {
        ops.push(PersistOp::VoteFloor(state.vote_floor));
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

/// The base image file: its header, then the operations in records of bounded size.
pub(super) fn base_image(
    cluster_id: Digest,
    next_segment: u64,
    state: &DurableState,
) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::new();
    header(Kind::Base, cluster_id, next_segment, 0, &mut out);
    let ops = rebuild_ops(state);
    let mut chunk: Vec<&PersistOp> = Vec::new();
    let mut chunk_bytes = 0usize;
    for op in &ops {
        let size = op_size(op);
        if !chunk.is_empty() && chunk_bytes + size > super::group::GROUP_RECORD_BYTES {
            frame_value(&chunk, &mut out)?;
            chunk.clear();
            chunk_bytes = 0;
        }
        chunk.push(op);
        chunk_bytes += size;
    }
    if !chunk.is_empty() {
        frame_value(&chunk, &mut out)?;
    }
    Ok(out)
}

/// Roughly how many bytes an op encodes to (entries dominate).
fn op_size(op: &PersistOp) -> usize {
    match op {
        PersistOp::Entry(e) => 128 + e.txs.iter().map(|t| t.op.len() + 128).sum::<usize>(),
        PersistOp::Certificate(c) => 160 + 72 * c.sigs.len(),
        PersistOp::EnterTerm(_) => 64 << 10,
        _ => 160,
    }
}

/// Reads a base image back: the first segment to replay and the state.
pub(super) fn read_base_image(
    bytes: &[u8],
    path: &Path,
    cluster_id: Digest,
) -> Result<(u64, DurableState), StorageError> {
    let scan = frame::scan(bytes, false, path)?;
    let mut records = scan.records.iter();
    let Some((offset, payload)) = records.next() else {
        return Err(corrupt(path, 0, "an empty base image"));
    };
    let next_segment = check_header(Kind::Base, payload, *offset, path, cluster_id)?.number;
    let mut state = DurableState::default();
    for (offset, payload) in records {
        let ops: Vec<PersistOp> = decode_record(payload, *offset, path, "base image operations")?;
        for op in ops {
            state.apply(op);
        }
    }
    Ok((next_segment, state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::sample_batch;

    fn rebuild(state: &DurableState) -> DurableState {
        let mut rebuilt = DurableState::default();
        for op in rebuild_ops(state) {
            rebuilt.apply(op);
        }
        rebuilt
    }

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
            let cluster = Digest([1; 32]);
            let image = base_image(cluster, id, &state).expect("image");
            let (next, read) =
                read_base_image(&image, Path::new("base"), cluster).expect("read back");
            assert_eq!((next, read), (id, state.clone()));
        }
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
        assert_eq!(
            numbered("wal-99999999999999999999.log", "wal-", ".log"),
            None
        );
        assert!(is_our_temp_file("base.tmp"));
        assert!(is_our_temp_file(&format!(
            "{}.tmp",
            snapshot_name(Index(3))
        )));
        assert!(!is_our_temp_file("notes.tmp"));
    }
}
