//! Record framing for the write-ahead log, and the scan that tells a torn tail from corruption.
//!
//! A record is `len: u32 LE | len_check: [u8; 4] | payload_check: [u8; 32] | payload | 0xA5`,
//! where `len_check` is the first four bytes of `blake3(len)` and `payload_check` is
//! `blake3(payload)`. The length has a check of its own so that a flipped length is not
//! mistaken for a record cut short by a crash. The final marker byte is the last byte written:
//! space a file system allocated but never wrote reads as zeros, so a record whose marker is
//! zero was never completely written, while a bit flip cannot turn the marker into a zero.
//!
//! Recovery rule (only the end of the *last* segment can be torn; a crash interrupts at most
//! the writes after the last sync, which the replica never acknowledged):
//!
//! - a header cut short, or a record whose valid header says it runs past the end of the
//!   file: torn, the file is cut there;
//! - a record written in part and then zeros up to the end of the file (a length whose check
//!   fails followed only by zeros, or a complete-length record that fails its checks, whose
//!   marker is zero and after which there are only zeros): torn;
//! - any other failed check: corruption, reported with the file and offset. A single bit flip
//!   anywhere, the last record included, is always corruption.

use std::path::Path;

use crate::StorageError;

/// Bytes before the payload.
pub(crate) const HEADER: usize = 40;

/// Bytes after the payload (the end marker).
pub(crate) const TRAILER: usize = 1;

/// The last byte of every record.
const MARKER: u8 = 0xA5;

/// The largest payload a record may carry (a batch larger than this is refused on append).
pub(crate) const MAX_PAYLOAD: usize = 1 << 30;

fn len_check(len: u32) -> [u8; 4] {
    let h = blake3::hash(&len.to_le_bytes());
    let mut c = [0u8; 4];
    c.copy_from_slice(&h.as_bytes()[..4]);
    c
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
    let payload = &out[start + HEADER..];
    let len = payload.len() as u32;
    let check = blake3::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&len_check(len));
    out[start + 8..start + HEADER].copy_from_slice(check.as_bytes());
    out.push(MARKER);
}

/// Appends one framed record holding `payload` to `out`.
pub(crate) fn encode_into(payload: &[u8], out: &mut Vec<u8>) {
    let start = begin(out);
    out.extend_from_slice(payload);
    seal(out, start);
}

/// What a scan found in one segment.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Scan<'a> {
    /// Each record's offset and payload, in order.
    pub(crate) records: Vec<(u64, &'a [u8])>,
    /// The length of the valid prefix (the file is cut here if a torn tail follows).
    pub(crate) valid_len: u64,
    /// True if a torn tail followed the valid prefix.
    pub(crate) torn: bool,
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
}

/// Scans the records of one segment. `last` says whether this is the newest segment (the only
/// one whose tail may be torn).
pub(crate) fn scan<'a>(bytes: &'a [u8], last: bool, path: &Path) -> Result<Scan<'a>, StorageError> {
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let torn = |records| {
            Ok(Scan {
                records,
                valid_len: at as u64,
                torn: true,
            })
        };
        let refuse = |why: &str| -> Result<Scan<'a>, StorageError> {
            Err(StorageError::Corrupt {
                path: path.to_path_buf(),
                offset: at as u64,
                why: why.to_string(),
            })
        };
        if rest.len() < 8 {
            if last {
                return torn(records);
            }
            return refuse("a record header is cut short in a sealed segment");
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        if rest[4..8] != len_check(len) {
            if last && all_zero(&rest[8..]) {
                return torn(records);
            }
            return refuse("a record's length fails its check");
        }
        let len = len as usize;
        if len == 0 || len > MAX_PAYLOAD {
            return refuse("a record's length is out of range");
        }
        let size = HEADER + len + TRAILER;
        if rest.len() < size {
            if last {
                return torn(records);
            }
            return refuse("a record is cut short in a sealed segment");
        }
        let payload = &rest[HEADER..HEADER + len];
        let marker = rest[size - 1];
        if blake3::hash(payload).as_bytes()[..] != rest[8..HEADER] || marker != MARKER {
            if last && marker == 0 && all_zero(&rest[size..]) {
                return torn(records);
            }
            return refuse("a record fails its checksum or end marker");
        }
        records.push((at as u64, payload));
        at += size;
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

    #[test]
    fn records_round_trip() {
        let (bytes, starts) = segment(&[b"one", b"two two", &[7u8; 1000]]);
        let scan = scan(&bytes, true, path()).unwrap();
        assert!(!scan.torn);
        assert_eq!(scan.valid_len, bytes.len() as u64);
        let got: Vec<(u64, &[u8])> = scan.records;
        assert_eq!(got.len(), 3);
        assert_eq!(got[1], (starts[1] as u64, &b"two two"[..]));
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
                matches!(
                    scan(&bytes[..cut], false, path()),
                    Err(StorageError::Corrupt { offset, .. }) if offset == last as u64
                ),
                "sealed segment cut at {cut}"
            );
        }
    }

    #[test]
    fn unwritten_space_is_torn_only_at_the_end_of_the_last_segment() {
        let (bytes, starts) = segment(&[b"kept", b"lost in the crash"]);
        // A valid header whose payload and everything after it were never written.
        let mut unwritten = bytes.clone();
        unwritten[starts[1] + HEADER..]
            .iter_mut()
            .for_each(|b| *b = 0);
        unwritten.extend_from_slice(&[0; 64]);
        let scan_last = scan(&unwritten, true, path()).unwrap();
        assert!(scan_last.torn);
        assert_eq!(scan_last.records.len(), 1);
        // Not in a sealed segment, and not with written bytes after it.
        assert!(matches!(
            scan(&unwritten, false, path()),
            Err(StorageError::Corrupt { .. })
        ));
        let mut then_data = unwritten.clone();
        then_data.push(1);
        assert!(matches!(
            scan(&then_data, true, path()),
            Err(StorageError::Corrupt { .. })
        ));
        // A zeroed header in a sealed segment is corruption too.
        let mut zero_header = bytes.clone();
        zero_header[starts[1]..].iter_mut().for_each(|b| *b = 0);
        assert!(matches!(
            scan(&zero_header, false, path()),
            Err(StorageError::Corrupt { .. })
        ));
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
                matches!(
                    scan(&bytes, true, path()),
                    Err(StorageError::Corrupt { offset, .. }) if offset == at as u64
                ),
                "length {len}"
            );
        }
    }

    #[test]
    fn a_zero_filled_tail_is_torn() {
        let (mut bytes, starts) = segment(&[b"kept", b"lost"]);
        let len = bytes.len();
        bytes[starts[1]..].iter_mut().for_each(|b| *b = 0);
        bytes.extend_from_slice(&[0; 100]);
        let scan = scan(&bytes, true, path()).unwrap();
        assert!(scan.torn);
        assert_eq!(scan.records.len(), 1);
        assert_eq!(scan.valid_len, starts[1] as u64);
        assert!(len > starts[1]);
    }

    #[test]
    fn a_bit_flip_anywhere_in_a_complete_record_is_corruption() {
        let (bytes, starts) = segment(&[b"alpha", b"beta", b"gamma: acknowledged"]);
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[i] ^= 1 << bit;
                let record = starts.iter().rposition(|s| *s <= i).unwrap_or(0);
                match scan(&flipped, true, path()) {
                    Err(StorageError::Corrupt { offset, .. }) => {
                        assert_eq!(offset, starts[record] as u64, "byte {i} bit {bit}");
                    }
                    other => panic!("byte {i} bit {bit}: not refused: {other:?}"),
                }
            }
        }
    }
}
