//! Opening an existing data directory: the base image, every segment replayed in order, a torn
//! tail cut, leftovers of interrupted writes and compactions removed, and anything else
//! refused.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use raft_bft::persist::{DurableState, PersistBatch};
use raft_bft::types::{Digest, Index};

use super::layout::{
    self, check_header, corrupt, decode_record, io, numbered, segment_name, snapshot_name, Kind,
    BASE,
};
use super::Recovery;
use crate::frame;
use crate::StorageError;

/// Segment numbers stay far from overflow (a damaged name or header cannot wrap them).
const MAX_SEQ: u64 = u64::MAX / 2;

/// The segment being written.
#[derive(Debug)]
pub(super) struct Active {
    pub(super) seq: u64,
    pub(super) file: File,
    /// Bytes durable in it (everything written and synced).
    pub(super) len: u64,
    /// Bytes of its header record.
    pub(super) header_len: u64,
    pub(super) path: std::path::PathBuf,
}

impl Active {
    /// A new, empty segment with its header, durable (file and directory entry). An existing
    /// file of that name (a segment whose creation a crash interrupted) is overwritten.
    pub(super) fn create(
        dir: &Path,
        cluster_id: Digest,
        seq: u64,
        previous_len: u64,
    ) -> Result<Active, StorageError> {
        if seq > MAX_SEQ {
            return Err(corrupt(
                &dir.join(segment_name(seq)),
                0,
                "segment number out of range",
            ));
        }
        let path = dir.join(segment_name(seq));
        let mut header = Vec::new();
        layout::header(Kind::Segment, cluster_id, seq, previous_len, &mut header);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io("creating segment", &path))?;
        file.write_all(&header).map_err(io("writing", &path))?;
        file.sync_all().map_err(io("syncing", &path))?;
        layout::sync_dir(dir)?;
        Ok(Active {
            seq,
            file,
            len: header.len() as u64,
            header_len: header.len() as u64,
            path,
        })
    }
}

/// What is in a data directory, by name.
#[derive(Default)]
struct Listing {
    segments: Vec<u64>,
    snapshots: Vec<u64>,
    has_base: bool,
}

fn list(dir: &Path) -> Result<Listing, StorageError> {
    let mut listing = Listing::default();
    for entry in fs::read_dir(dir).map_err(io("listing", dir))? {
        let entry = entry.map_err(io("listing", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if layout::is_our_temp_file(name) {
            // An atomic write a crash interrupted: the file it was replacing is still there.
            let path = entry.path();
            fs::remove_file(&path).map_err(io("removing", &path))?;
        } else if let Some(seq) = numbered(name, "wal-", ".log") {
            listing.segments.push(seq);
        } else if let Some(index) = numbered(name, "snapshot-", ".snap") {
            listing.snapshots.push(index);
        } else if name == BASE {
            listing.has_base = true;
        }
    }
    listing.segments.sort_unstable();
    listing.snapshots.sort_unstable();
    Ok(listing)
}

/// Whether `dir` holds anything of a store.
pub(super) fn holds_a_store(dir: &Path) -> Result<bool, StorageError> {
    let listing = list(dir)?;
    Ok(listing.has_base || !listing.segments.is_empty() || !listing.snapshots.is_empty())
}

/// Everything [`open`] recovered.
pub(super) struct Opened {
    pub(super) durable: DurableState,
    pub(super) active: Active,
    pub(super) oldest_seq: u64,
    pub(super) snapshot: Option<Index>,
    pub(super) recovery: Recovery,
}

/// Recovers the store in `dir` (which the caller has locked).
pub(super) fn open(dir: &Path, cluster_id: Digest) -> Result<Opened, StorageError> {
    let listing = list(dir)?;
    if !listing.has_base && listing.segments.is_empty() {
        return Err(StorageError::NoStore {
            path: dir.to_path_buf(),
        });
    }
    let base_path = dir.join(BASE);
    let (next_segment, mut durable) = if listing.has_base {
        layout::read_base_image(&layout::read_bounded(&base_path)?, &base_path, cluster_id)?
    } else {
        (0, DurableState::default())
    };
    if next_segment > MAX_SEQ {
        return Err(corrupt(&base_path, 0, "segment number out of range"));
    }
    if let Some(seq) = listing.segments.last().filter(|s| **s > MAX_SEQ) {
        return Err(corrupt(
            &dir.join(segment_name(*seq)),
            0,
            "segment number out of range",
        ));
    }
    // Segments a finished compaction had yet to delete (deleted once the rest checks out).
    let (stale, live): (Vec<u64>, Vec<u64>) =
        listing.segments.iter().partition(|s| **s < next_segment);
    match live.first() {
        Some(first) if *first != next_segment && !listing.has_base => {
            return Err(corrupt(
                &base_path,
                0,
                format!("the base image is missing (the log starts at segment {first})"),
            ));
        }
        Some(first) if *first != next_segment => {
            let path = dir.join(segment_name(next_segment));
            return Err(corrupt(&path, 0, "this segment is missing"));
        }
        None => {
            let path = dir.join(segment_name(next_segment));
            return Err(corrupt(
                &path,
                0,
                "the segment the base image names is missing",
            ));
        }
        Some(_) => {}
    }
    for pair in live.windows(2) {
        if pair[1] != pair[0] + 1 {
            let path = dir.join(segment_name(pair[0] + 1));
            return Err(corrupt(&path, 0, "this segment is missing"));
        }
    }
    for seq in stale {
        let path = dir.join(segment_name(seq));
        fs::remove_file(&path).map_err(io("removing compacted segment", &path))?;
    }

    let mut recovery = Recovery::default();
    let mut active = None;
    // The previous segment read, and its length (checked against the next one's header).
    let mut previous: Option<(std::path::PathBuf, u64)> = None;
    for (i, seq) in live.iter().enumerate() {
        let last = i + 1 == live.len();
        let path = dir.join(segment_name(*seq));
        let bytes = layout::read_bounded(&path)?;
        let scan = frame::scan(&bytes, last, &path)?;
        recovery.segments += 1;
        let mut records = scan.records.iter();
        match records.next() {
            Some((offset, payload)) => {
                let header = check_header(Kind::Segment, payload, *offset, &path, cluster_id)?;
                if header.number != *seq {
                    return Err(corrupt(&path, 0, "the header names another segment"));
                }
                if let Some((previous_path, previous_len)) = &previous {
                    if header.previous_len != *previous_len {
                        return Err(corrupt(
                            previous_path,
                            (*previous_len).min(header.previous_len),
                            format!(
                                "the segment is {previous_len} bytes long, but it was {} when \
                                 it was sealed",
                                header.previous_len
                            ),
                        ));
                    }
                }
            }
            // Only the newest segment can lack a header: a crash while it was being created.
            // It holds nothing; it is written again in place.
            None if last => {
                recovery.torn_bytes_cut += bytes.len() as u64;
                let previous_len = previous.as_ref().map_or(0, |(_, len)| *len);
                active = Some(Active::create(dir, cluster_id, *seq, previous_len)?);
                continue;
            }
            None => return Err(corrupt(&path, 0, "a sealed segment without a header")),
        }
        let header_len = scan.records[0].1.len() as u64 + (frame::HEADER + frame::TRAILER) as u64;
        for (offset, payload) in records {
            let group: Vec<PersistBatch> =
                decode_record(payload, *offset, &path, "group of batches")?;
            for batch in group {
                durable.apply_batch(batch);
                recovery.batches += 1;
            }
        }
        if !last {
            previous = Some((path.clone(), bytes.len() as u64));
        }
        if last {
            let mut file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io("opening", &path))?;
            if scan.torn {
                // Never acknowledged: the sync that would have covered it did not finish.
                recovery.torn_bytes_cut += bytes.len() as u64 - scan.valid_len;
                file.set_len(scan.valid_len)
                    .map_err(io("cutting the torn tail of", &path))?;
            }
            // What a crashed process wrote but never synced may still be in the page cache and
            // was read as if durable: make it so before anyone acts on it.
            file.sync_all().map_err(io("syncing", &path))?;
            layout::sync_dir(dir)?;
            file.seek(SeekFrom::Start(scan.valid_len))
                .map_err(io("seeking in", &path))?;
            active = Some(Active {
                seq: *seq,
                file,
                len: scan.valid_len,
                header_len,
                path,
            });
        }
    }
    // The loop ran over at least one segment (checked above) and the last one set it.
    let active = active.ok_or_else(|| corrupt(dir, 0, "no segment to write to"))?;
    // Snapshots older than the newest are left over from a crash during a save.
    let snapshot = listing.snapshots.last().map(|i| Index(*i));
    if let Some((_, older)) = listing.snapshots.split_last() {
        for index in older {
            let path = dir.join(snapshot_name(Index(*index)));
            fs::remove_file(&path).map_err(io("removing older snapshot", &path))?;
        }
    }
    Ok(Opened {
        durable,
        active,
        oldest_seq: next_segment,
        snapshot,
        recovery,
    })
}
