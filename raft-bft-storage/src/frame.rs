//! Record framing for the write-ahead log, and the scan that tells a torn tail from corruption.
//!
//! A record is `len: u32 LE | len_check: [u8; 4] | check: [u8; 32] | whitened payload | 0xA5`:
//!
//! - `len_check` is the first four bytes of `blake3(len)`, so that a flipped length is not
//!   mistaken for a record cut short by a crash;
//! - `check` is `blake3(payload)`;
//! - the payload is stored XORed with a pad derived from `check` (4 KiB of blake3 output,
//!   repeated).
//!   Stored bytes are therefore never all zero over a disk sector, whatever the payload (a
//!   client can put zeros in a transaction, but cannot make its payload equal a pad derived
//!   from the payload's own hash). An all-zero sector in a record is then proof that the sector
//!   was never written;
//! - the final marker byte is non-zero, so a record's last sector is never all zero.
//!
//! Recovery rule. Only the end of the *last* segment can be torn: a crash interrupts at most the
//! write after the last sync, which the replica never acknowledged. At the first record that
//! fails a check, the tail from there is a torn write when both hold:
//!
//! - nothing after it is a valid record (a valid record after a damaged one means the damaged
//!   one was written, and synced, before it);
//! - the damaged record itself shows space that was never written: it is cut short by the end
//!   of the file, or a disk sector overlapping it reads all zero (its length field, for a
//!   record whose length is unreadable), or its length field or everything after it reads
//!   zero. Writes reach the disk in whole sectors, in any order when interrupted, and space
//!   never written reads as zeros; a sector of written record bytes is never all zero
//!   (whitening), and a bit flip cannot zero a sector.
//!
//! The torn tail is cut. Anything else is corruption, reported with the file and offset: a
//! single bit flip anywhere, the last record included, is always corruption. In a sealed
//! segment every failed check is corruption.

use std::path::Path;

use crate::StorageError;

/// Bytes before the payload.
pub(crate) const HEADER: usize = 40;

/// Bytes after the payload (the end marker).
pub(crate) const TRAILER: usize = 1;

/// The last byte of every record.
const MARKER: u8 = 0xA5;

/// The unit a disk writes atomically, at the least (and the unit of holes a torn write leaves).
const SECTOR: usize = 512;

/// The largest payload a record may carry.
pub(crate) const MAX_PAYLOAD: usize = 1 << 30;

fn len_check(len: u32) -> [u8; 4] {
    let h = blake3::hash(&len.to_le_bytes());
    let mut c = [0u8; 4];
    c.copy_from_slice(&h.as_bytes()[..4]);
    c
}

/// Domain separation of the whitening pad.
const WHITENING_KEY: [u8; 32] = *b"raft-bft-storage record whitener";

/// The whitening pad repeats with this period.
const PAD: usize = 4096;

/// XORs `data` with the pad of a record whose payload checksum is `check`: 4 KiB of blake3
/// output keyed by the checksum, repeated. No payload can match its own pad over a sector
/// (that would take knowing the payload's hash before choosing the payload), and a repeated
/// pad costs one small hash per record and a XOR that vectorizes.
fn whiten(check: &[u8; 32], data: &mut [u8]) {
    let mut pad = [0u8; PAD];
    let pad = &mut pad[..data.len().min(PAD)];
    blake3::Hasher::new_keyed(&WHITENING_KEY)
        .update(check)
        .finalize_xof()
        .fill(pad);
    for chunk in data.chunks_mut(PAD) {
        chunk.iter_mut().zip(pad.iter()).for_each(|(d, k)| *d ^= k);
    }
}

/// Starts a record at the end of `out`: reserves its header. Append the payload, then
/// [`seal`] it with the offset this returns.
pub(crate) fn begin(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.resize(start + HEADER, 0);
    start
}

/// Finishes the record begun at `start` (everything after its header is its payload, which is
/// never empty and at most [`MAX_PAYLOAD`] bytes).
pub(crate) fn seal(out: &mut Vec<u8>, start: usize) {
    let payload = &mut out[start + HEADER..];
    let len = payload.len() as u32;
    let check = *blake3::hash(payload).as_bytes();
    whiten(&check, payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&len_check(len));
    out[start + 8..start + HEADER].copy_from_slice(&check);
    out.push(MARKER);
}

/// Appends one framed record holding `payload` to `out`.
#[cfg(test)]
pub(crate) fn encode_into(payload: &[u8], out: &mut Vec<u8>) {
    let start = begin(out);
    out.extend_from_slice(payload);
    seal(out, start);
}

/// What a scan found in one segment.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Each record's offset and payload, in order.
    pub(crate) records: Vec<(u64, Vec<u8>)>,
    /// The length of the valid prefix (the file is cut here if a torn tail follows).
    pub(crate) valid_len: u64,
    /// True if a torn tail followed the valid prefix.
    pub(crate) torn: bool,
}

/// The record at the start of `rest`, if it is whole and passes every check (its payload,
/// unwhitened), or why not.
enum Parsed {
    Valid {
        payload: Vec<u8>,
        size: usize,
    },
    /// Fewer bytes than a header.
    HeaderCutShort,
    /// The length fails its check, or is out of range.
    BadLength(&'static str),
    /// The length is good but the file ends before the record does.
    CutShort,
    /// Whole (`size` bytes), but the checksum or the marker is wrong.
    Damaged {
        size: usize,
    },
}

/// The length a record header at the start of `rest` claims, if its check passes.
fn checked_len(rest: &[u8]) -> Option<u32> {
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
    (rest.get(4..8)? == len_check(len)).then_some(len)
}

fn parse(rest: &[u8]) -> Parsed {
    if rest.len() < 8 {
        return Parsed::HeaderCutShort;
    }
    let Some(len) = checked_len(rest) else {
        return Parsed::BadLength("a record's length fails its check");
    };
    let len = len as usize;
    if len == 0 || len > MAX_PAYLOAD {
        return Parsed::BadLength("a record's length is out of range");
    }
    let size = HEADER + len + TRAILER;
    if rest.len() < size {
        return Parsed::CutShort;
    }
    let mut check = [0u8; 32];
    check.copy_from_slice(&rest[8..HEADER]);
    if rest[size - 1] != MARKER {
        return Parsed::Damaged { size };
    }
    let mut payload = rest[HEADER..HEADER + len].to_vec();
    whiten(&check, &mut payload);
    if *blake3::hash(&payload).as_bytes() != check {
        return Parsed::Damaged { size };
    }
    Parsed::Valid { payload, size }
}

/// At most this many bytes are checksummed looking for a valid record after damage (a crafted
/// tail could otherwise make the search quadratic); past it the search answers "maybe", and
/// the damage is treated as corruption.
const SEARCH_BUDGET: usize = 256 << 20;

/// Whether a valid record (maybe) starts anywhere in `bytes` after offset `from`.
fn valid_record_after(bytes: &[u8], from: usize) -> bool {
    let mut budget = SEARCH_BUDGET;
    (from + 1..bytes.len()).any(|at| {
        let rest = &bytes[at..];
        // Cheap filters first: a plausible length whose marker is in place.
        let Some(len) = rest
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        else {
            return false;
        };
        let len = len as usize;
        let end = HEADER + len + TRAILER;
        if len == 0 || len > MAX_PAYLOAD || rest.len() < end || rest[end - 1] != MARKER {
            return false;
        }
        if checked_len(rest).is_none() {
            return false;
        }
        if budget < len {
            return true;
        }
        budget -= len;
        matches!(parse(rest), Parsed::Valid { .. })
    })
}

/// Whether a disk sector overlapping `bytes[from..to]` reads all zero (up to the end of the
/// file, for the last one): a sector that was never written. Sectors are aligned to file
/// offsets; one that starts before `from` holds earlier bytes, which are never all zero.
fn zero_sector_overlapping(bytes: &[u8], from: usize, to: usize) -> bool {
    let first = from / SECTOR * SECTOR;
    (first..to.min(bytes.len())).step_by(SECTOR).any(|s| {
        let sector = &bytes[s..(s + SECTOR).min(bytes.len())];
        sector.iter().all(|b| *b == 0)
    })
}

/// Whether the damaged record at `at` shows space that was never written (see the module
/// docs). Only evidence inside the damaged record counts: zeros elsewhere in the tail say
/// nothing about it.
fn shows_unwritten(bytes: &[u8], at: usize, parsed: &Parsed) -> bool {
    let rest = &bytes[at..];
    match parsed {
        Parsed::Valid { .. } => false,
        Parsed::HeaderCutShort | Parsed::CutShort => true,
        Parsed::BadLength(_) => {
            rest.get(..8).is_some_and(|l| l.iter().all(|b| *b == 0))
                || rest.get(8..).is_some_and(|r| r.iter().all(|b| *b == 0))
                || zero_sector_overlapping(bytes, at, at + 8)
        }
        Parsed::Damaged { size } => zero_sector_overlapping(bytes, at, at + size),
    }
}

/// Scans the records of one segment (or single-record file). `last` says whether this is the
/// newest segment (the only one whose tail may be torn).
pub(crate) fn scan(bytes: &[u8], last: bool, path: &Path) -> Result<Scan, StorageError> {
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let parsed = parse(rest);
        let why = match &parsed {
            Parsed::Valid { .. } => {
                let Parsed::Valid { payload, size } = parsed else {
                    unreachable!("matched above")
                };
                records.push((at as u64, payload));
                at += size;
                continue;
            }
            Parsed::HeaderCutShort => "a record header is cut short",
            Parsed::CutShort => "a record is cut short",
            Parsed::BadLength(why) => why,
            Parsed::Damaged { .. } => "a record fails its checksum or end marker",
        };
        let unwritten = shows_unwritten(bytes, at, &parsed);
        if last && unwritten && !valid_record_after(bytes, at) {
            return Ok(Scan {
                records,
                valid_len: at as u64,
                torn: true,
            });
        }
        return Err(StorageError::Corrupt {
            path: path.to_path_buf(),
            offset: at as u64,
            why: why.to_string(),
        });
    }
    Ok(Scan {
        records,
        valid_len: at as u64,
        torn: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(payloads: &[&[u8]]) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        let mut starts = Vec::new();
        for p in payloads {
            starts.push(out.len());
            encode_into(p, &mut out);
        }
        (out, starts)
    }

    fn path() -> &'static Path {
        Path::new("wal-1.log")
    }

    fn is_corrupt_at(result: Result<Scan, StorageError>, at: usize) -> bool {
        matches!(result, Err(StorageError::Corrupt { offset, .. }) if offset == at as u64)
    }

    #[test]
    fn records_round_trip() {
        let (bytes, starts) = segment(&[b"one", b"two two", &[0u8; 5000]]);
        let scan = scan(&bytes, true, path()).unwrap();
        assert!(!scan.torn);
        assert_eq!(scan.valid_len, bytes.len() as u64);
        assert_eq!(scan.records.len(), 3);
        assert_eq!(scan.records[1], (starts[1] as u64, b"two two".to_vec()));
        assert_eq!(scan.records[2].1, vec![0u8; 5000]);
    }

    #[test]
    fn stored_payloads_are_whitened() {
        // A payload of zeros is not stored as zeros: an all-zero sector is never written.
        let (bytes, _) = segment(&[&[0u8; 8192]]);
        assert!(!zero_sector_overlapping(&bytes, 0, bytes.len()));
    }

    #[test]
    fn a_tail_cut_at_every_offset_of_the_last_record_recovers_the_prefix() {
        let (bytes, starts) = segment(&[b"first", b"second", b"the last record"]);
        let last = starts[2];
        for cut in last..bytes.len() {
            let scan = scan(&bytes[..cut], true, path()).unwrap();
            assert_eq!(scan.records.len(), 2, "cut at {cut}");
            assert_eq!(scan.valid_len, last as u64, "cut at {cut}");
            assert_eq!(scan.torn, cut > last, "cut at {cut}");
        }
        // In a sealed segment every such cut is corruption.
        for cut in last + 1..bytes.len() {
            assert!(
                is_corrupt_at(scan(&bytes[..cut], false, path()), last),
                "sealed segment cut at {cut}"
            );
        }
    }

    #[test]
    fn a_record_written_up_to_any_sector_then_zeros_is_torn() {
        let (bytes, starts) = segment(&[b"kept", &[7u8; 3000]]);
        let last = starts[1];
        // The write's first sector lost (the previous record's tail stays), or its sectors
        // written up to some boundary and the rest not; the file system allocated the space.
        let boundaries = (last / SECTOR + 1..=bytes.len() / SECTOR).map(|k| k * SECTOR);
        for written in std::iter::once(last).chain(boundaries) {
            let mut torn = bytes.clone();
            let from = if written == last { last } else { written };
            let to = if written == last {
                (last / SECTOR + 1) * SECTOR
            } else {
                torn.len()
            };
            torn[from..to].iter_mut().for_each(|b| *b = 0);
            torn.extend_from_slice(&[0; 700]);
            let scan = scan(&torn, true, path()).unwrap();
            assert!(scan.torn, "written up to {written}");
            assert_eq!(scan.records.len(), 1, "written up to {written}");
            assert_eq!(scan.valid_len, last as u64);
        }
    }

    #[test]
    fn zeros_outside_the_damaged_record_are_no_evidence() {
        // A bit flip in the last acknowledged record, then a crash that left a zero sector in
        // the next (never acknowledged) write: the flip is corruption all the same.
        let (mut bytes, starts) = segment(&[b"kept", &[5u8; 1000], &[6u8; 3000]]);
        bytes[starts[1] + 100] ^= 1;
        let third = starts[2];
        let sector = (third / SECTOR + 1) * SECTOR;
        bytes[sector..sector + SECTOR]
            .iter_mut()
            .for_each(|b| *b = 0);
        assert!(is_corrupt_at(scan(&bytes, true, path()), starts[1]));
        // A sector of garbage over the end of the last record, with a zero where the marker
        // was: not all zero, so not unwritten.
        let (mut bytes, starts) = segment(&[b"kept", &[5u8; 3000]]);
        let end = bytes.len();
        let sector = (end - 1) / SECTOR * SECTOR;
        for (i, b) in bytes[sector..end].iter_mut().enumerate() {
            *b = (i % 251) as u8 + 1;
        }
        bytes[end - 1] = 0;
        assert!(is_corrupt_at(scan(&bytes, true, path()), starts[1]));
    }

    #[test]
    fn a_record_with_an_unwritten_hole_is_torn() {
        // Pages of one write reached the disk out of order: a hole of zero sectors in the
        // middle of the last record, or where its header is, with later bytes written.
        let (bytes, starts) = segment(&[b"kept", &[9u8; 6000]]);
        let last = starts[1];
        let first_sector = last.div_ceil(SECTOR) * SECTOR;
        for hole in [
            first_sector,
            first_sector + 2 * SECTOR,
            first_sector + 8 * SECTOR,
        ] {
            let mut holed = bytes.clone();
            holed[hole..hole + SECTOR].iter_mut().for_each(|b| *b = 0);
            let scan = scan(&holed, true, path()).unwrap();
            assert!(scan.torn, "hole at {hole}");
            assert_eq!(scan.records.len(), 1);
        }
        // The header itself unwritten (here the whole record starts on a sector).
        let mut padded = vec![0u8; 0];
        encode_into(&[1u8; SECTOR - HEADER - TRAILER], &mut padded); // exactly one sector
        let start = padded.len();
        encode_into(&[2u8; 3000], &mut padded);
        padded[start..start + SECTOR]
            .iter_mut()
            .for_each(|b| *b = 0);
        let scan = scan(&padded, true, path()).unwrap();
        assert!(scan.torn);
        assert_eq!(scan.records.len(), 1);
    }

    #[test]
    fn damage_followed_by_a_valid_record_is_corruption() {
        let (bytes, starts) = segment(&[b"kept", &[9u8; 3000], b"acknowledged later"]);
        let mut holed = bytes.clone();
        let sector = starts[1].div_ceil(SECTOR) * SECTOR;
        holed[sector..sector + SECTOR]
            .iter_mut()
            .for_each(|b| *b = 0);
        assert!(is_corrupt_at(scan(&holed, true, path()), starts[1]));
        // Zeros, then data that is not a record: torn (stale or out-of-order bytes).
        let mut then_junk = bytes[..starts[2]].to_vec();
        then_junk[starts[1]..].iter_mut().for_each(|b| *b = 0);
        then_junk.extend_from_slice(&[1; 100]);
        assert!(scan(&then_junk, true, path()).unwrap().torn);
    }

    #[test]
    fn unwritten_space_in_a_sealed_segment_is_corruption() {
        let (bytes, starts) = segment(&[b"kept", b"lost in the crash"]);
        let mut zeroed = bytes.clone();
        zeroed[starts[1]..].iter_mut().for_each(|b| *b = 0);
        assert!(is_corrupt_at(scan(&zeroed, false, path()), starts[1]));
    }

    #[test]
    fn lengths_out_of_range_are_refused_even_at_the_tail() {
        for len in [0u32, MAX_PAYLOAD as u32 + 1] {
            let mut bytes = Vec::new();
            encode_into(b"kept", &mut bytes);
            let at = bytes.len();
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(&len_check(len));
            bytes.extend_from_slice(&[1; 41]);
            assert!(
                is_corrupt_at(scan(&bytes, true, path()), at),
                "length {len}"
            );
        }
    }

    #[test]
    fn a_bit_flip_anywhere_in_a_complete_record_is_corruption() {
        let (bytes, starts) = segment(&[b"alpha", b"beta", &[0u8; 1500]]);
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[i] ^= 1 << bit;
                let record = starts.iter().rposition(|s| *s <= i).unwrap_or(0);
                assert!(
                    is_corrupt_at(scan(&flipped, true, path()), starts[record]),
                    "byte {i} bit {bit}: not refused"
                );
            }
        }
    }
}
