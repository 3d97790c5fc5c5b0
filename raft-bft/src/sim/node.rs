//! A simulated replica: the sans-IO `Replica`, its own verifier, and a simulated disk.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::crypto::KeyPair;
use crate::message::{Outcome, Phase, ReplicaMessage, Reply, VoteSubject};
use crate::persist::{DurableState, PersistBatch};
use crate::replica::Replica;
use crate::types::{Digest, Index, ReplicaId, Term, Time};
use crate::verify::Verifier;

use rand::{Rng as _, RngExt as _};

use super::queue::TimerSlot;
use super::SimRng;

/// A disk that completes syncs in order. What it confirmed survives a crash. Of the batches
/// handed over but not yet durable, a plain crash ([`Disk::crash`]) loses every one; a crash
/// with disk faults ([`Disk::crash_torn`]) keeps whatever whole records of them the disk wrote
/// before power went, which the next incarnation reads back ([`Disk::recover`]).
#[derive(Debug, Default)]
pub(crate) struct Disk {
    /// Everything confirmed durable (by a completed sync, or read back by recovery). The
    /// persist-before-speak checks look only at this.
    pub(crate) durable: DurableState,
    /// Handed over, not yet durable, in order.
    unsynced: VecDeque<PersistBatch>,
    /// When the disk finishes the last batch handed over.
    free_at: Time,
    /// Left by a crash with disk faults, until the restart reads it back.
    crashed_tail: Option<CrashedTail>,
}

/// The write-ahead log past the durable state, as a crash with disk faults left it.
#[derive(Debug)]
struct CrashedTail {
    /// Framed records of the unsynced batches, cut where the power went.
    bytes: Vec<u8>,
    /// The batches whose records the cut left whole: what recovery must read back, no more and
    /// no less.
    whole: Vec<PersistBatch>,
}

/// What a crash with disk faults did to the batches that were not yet durable.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TornCrash {
    /// Batches whose records the disk wrote whole (recovery will find them).
    pub(crate) kept: usize,
    /// Batches lost, the torn one included.
    pub(crate) lost: usize,
    /// The batches written whole (for a shadow store).
    pub(crate) kept_batches: Vec<PersistBatch>,
    /// The batch being written when the power went, if any.
    pub(crate) torn_batch: Option<PersistBatch>,
}

/// What recovery read back from the log after a crash.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// Whole batches applied to the durable state.
    pub(crate) batches: usize,
    /// A torn record at the end was cut off.
    pub(crate) torn: bool,
}

impl Disk {
    /// Queues a batch; returns when it becomes durable.
    pub(crate) fn submit(&mut self, batch: PersistBatch, now: Time, latency: Duration) -> Time {
        self.free_at = self.free_at.max(now).after(latency);
        self.unsynced.push_back(batch);
        self.free_at
    }

    /// Makes the oldest batch durable; it must be batch `id`.
    #[cfg(test)]
    pub(crate) fn complete(&mut self, id: u64) -> Result<(), String> {
        self.complete_copy(id, false).map(|_| ())
    }

    /// Makes the oldest batch durable (it must be batch `id`), handing back a copy of it if
    /// `copy` (for a shadow store; a plain run does not pay for the clone).
    pub(crate) fn complete_copy(
        &mut self,
        id: u64,
        copy: bool,
    ) -> Result<Option<PersistBatch>, String> {
        match self.unsynced.pop_front() {
            Some(batch) if batch.id == id => {
                let copied = copy.then(|| batch.clone());
                self.durable.apply_batch(batch);
                Ok(copied)
            }
            Some(batch) => Err(format!(
                "disk completed batch {} while batch {id} was expected",
                batch.id
            )),
            None => Err(format!(
                "disk completed batch {id} that was never submitted"
            )),
        }
    }

    /// Loses every batch not yet durable; returns how many.
    pub(crate) fn crash(&mut self, now: Time) -> usize {
        let lost = self.unsynced.len();
        self.unsynced.clear();
        self.free_at = now;
        lost
    }

    /// A crash on a real disk: the unsynced batches were being written to the log in order, and
    /// the power went at a random point. A random prefix of them (none to all) made it whole;
    /// unless all did, the next record may be torn at any byte, and half the time the rest of
    /// its space holds stale bytes rather than ending the file (so recovery must rely on the
    /// checksum, not only on the length). The kept prefix is drawn first, uniformly, so that
    /// keeping everything is as likely as keeping nothing whatever the record sizes.
    pub(crate) fn crash_torn(&mut self, now: Time, rng: &mut SimRng) -> Result<TornCrash, String> {
        // A crashed replica is down until its restart recovers, so it cannot crash again in
        // between; an unrecovered tail must never be silently replaced.
        if self.crashed_tail.is_some() {
            return Err("crashed again before the previous crash was recovered".into());
        }
        let unsynced: Vec<PersistBatch> = self.unsynced.drain(..).collect();
        self.free_at = now;
        let count = unsynced.len();
        let mut records = Vec::with_capacity(count);
        for batch in &unsynced {
            records.push(frame_record(batch)?);
        }
        let kept = rng.random_range(0..=count);
        let mut bytes: Vec<u8> = records[..kept].concat();
        if let Some(torn) = records.get(kept) {
            // Nothing of the record (0) up to all but its last byte.
            let written = rng.random_range(0..torn.len());
            bytes.extend_from_slice(&torn[..written]);
            if written > 0 && rng.random_bool(0.5) {
                let mut stale = vec![0u8; torn.len() - written];
                rng.fill_bytes(&mut stale);
                bytes.extend_from_slice(&stale);
            }
        }
        let torn_batch = unsynced.get(kept).cloned();
        let whole: Vec<PersistBatch> = unsynced.into_iter().take(kept).collect();
        self.crashed_tail = Some(CrashedTail {
            bytes,
            whole: whole.clone(),
        });
        Ok(TornCrash {
            kept,
            lost: count - kept,
            kept_batches: whole,
            torn_batch,
        })
    }

    /// On restart after [`Disk::crash_torn`]: reads the log's tail back and applies the whole
    /// batches found to the durable state. `Ok(None)` if there is nothing to recover. An error
    /// is a simulator bug: a complete record that passes its checksum but does not decode, or a
    /// recovery that disagrees with what the crash left whole.
    pub(crate) fn recover(&mut self) -> Result<Option<Recovered>, String> {
        let Some(tail) = self.crashed_tail.take() else {
            return Ok(None);
        };
        let read = read_records(&tail.bytes)?;
        if read.batches != tail.whole {
            let ids = |b: &[PersistBatch]| b.iter().map(|b| b.id).collect::<Vec<_>>();
            return Err(format!(
                "disk recovery read back batches {:?} where the crash left {:?} whole",
                ids(&read.batches),
                ids(&tail.whole)
            ));
        }
        let recovered = Recovered {
            batches: read.batches.len(),
            torn: read.torn_bytes > 0,
        };
        for batch in read.batches {
            self.durable.apply_batch(batch);
        }
        Ok(Some(recovered))
    }

    /// Persist-before-speak: why `msg` must not leave the replica yet, if it must not.
    pub(crate) fn unjustified(&self, msg: &ReplicaMessage) -> Option<String> {
        match msg {
            ReplicaMessage::Vote(v) => {
                let s = &v.subject;
                let checkpoint = self
                    .durable
                    .checkpoint
                    .as_ref()
                    .map_or(Index(0), |c| c.index());
                if s.index <= checkpoint {
                    // Made durable, then compacted away with the log below the checkpoint (its
                    // entry is committed and executed by a quorum); `Spoken` still checks that
                    // it is the only vote for its slot.
                    return None;
                }
                match self.durable.votes.get(&(s.phase, s.term, s.index)) {
                    Some(d) if d == s => None,
                    Some(d) => Some(format!(
                        "sent a {:?} vote at index {} for {} while its durable vote there is for {}",
                        s.phase, s.index, s.entry_hash, d.entry_hash
                    )),
                    None => Some(format!(
                        "sent a {:?} vote at (term {}, index {}) before the vote was durable",
                        s.phase, s.term, s.index
                    )),
                }
            }
            ReplicaMessage::PreAppend(p)
                if self
                    .durable
                    .checkpoint
                    .as_ref()
                    .is_some_and(|c| c.index() >= p.entry.index) =>
            {
                None
            }
            ReplicaMessage::PreAppend(p) => match self.durable.entries.get(&p.entry.index) {
                Some(e) if *e == p.entry => None,
                _ => Some(format!(
                    "sent a PreAppend for index {} before its entry was durable",
                    p.entry.index
                )),
            },
            _ => None,
        }
    }

    /// Persist-before-speak for replies: a result at index `i` needs a durable commit
    /// certificate at `i` or above.
    pub(crate) fn unjustified_reply(&self, reply: &Reply) -> Option<String> {
        let Outcome::Executed { index, .. } = &reply.outcome else {
            return None;
        };
        // A durable checkpoint at or above the index proves it committed (and executed) too.
        let committed = self
            .durable
            .certificates
            .range((Phase::Append, *index)..=(Phase::Append, Index(u64::MAX)))
            .next()
            .is_some()
            || self
                .durable
                .checkpoint
                .as_ref()
                .is_some_and(|cp| cp.index() >= *index);
        (!committed).then(|| {
            format!(
                "replied to a client with a result at index {index} before a commit certificate \
                 covering it was durable"
            )
        })
    }
}

/// A record of the simulated write-ahead log: payload length (u32, little endian), blake3 of
/// the length and payload (so stale bytes under a torn length fail too), then the payload (a
/// [`PersistBatch`] through [`crate::codec`]).
const RECORD_HEADER: usize = 4 + 32;

fn record_checksum(len: &[u8; 4], payload: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(len);
    hasher.update(payload);
    *hasher.finalize().as_bytes()
}

/// Frames one batch as a log record.
fn frame_record(batch: &PersistBatch) -> Result<Vec<u8>, String> {
    let payload = crate::codec::encode(batch)
        .map_err(|e| format!("persist batch {} does not encode: {e}", batch.id))?;
    let len = u32::try_from(payload.len())
        .map_err(|_| format!("persist batch {} is too large for a record", batch.id))?
        .to_le_bytes();
    let mut record = Vec::with_capacity(RECORD_HEADER + payload.len());
    record.extend_from_slice(&len);
    record.extend_from_slice(&record_checksum(&len, &payload));
    record.extend_from_slice(&payload);
    Ok(record)
}

/// Whole records read from the start of a log tail.
#[derive(Debug)]
struct ReadRecords {
    batches: Vec<PersistBatch>,
    /// Bytes after the last whole record: a torn write, dropped.
    torn_bytes: usize,
}

/// Reads whole, valid records from the start of `log`. The first record that is incomplete or
/// fails its checksum is where the write was torn: it and everything after it are dropped. A
/// record that passes its checksum but does not decode is an error (the framing is broken).
fn read_records(log: &[u8]) -> Result<ReadRecords, String> {
    let mut batches = Vec::new();
    let mut rest = log;
    while let Some((len, after_len)) = rest.split_first_chunk::<4>() {
        let Some((checksum, after_header)) = after_len.split_first_chunk::<32>() else {
            break;
        };
        let Some((payload, next)) = usize::try_from(u32::from_le_bytes(*len))
            .ok()
            .and_then(|n| after_header.split_at_checked(n))
        else {
            break;
        };
        if record_checksum(len, payload) != *checksum {
            break;
        }
        let batch = crate::codec::decode::<PersistBatch>(payload, payload.len()).map_err(|e| {
            format!(
                "disk recovery: record {} at byte {} passes its checksum but does not decode: {e}",
                batches.len(),
                log.len() - rest.len()
            )
        })?;
        batches.push(batch);
        rest = next;
    }
    Ok(ReadRecords {
        batches,
        torn_bytes: rest.len(),
    })
}

/// One simulated replica.
pub(crate) struct Node<S> {
    pub(crate) id: ReplicaId,
    pub(crate) key: KeyPair,
    /// `None` while crashed.
    pub(crate) replica: Option<Replica<S>>,
    pub(crate) verifier: Verifier,
    pub(crate) disk: Disk,
    /// Bumped at each crash: messages, ticks and syncs of an earlier incarnation are void.
    pub(crate) incarnation: u64,
    pub(crate) tick: TimerSlot,
    /// The monitor checked committed hashes and state digests up to these indices.
    pub(crate) checked_commit: Index,
    pub(crate) checked_applied: Index,
    /// A divergence was reported for this incarnation.
    pub(crate) divergence_reported: bool,
    /// What it said, over all its incarnations.
    pub(crate) spoken: Spoken,
    /// `Some` for a Byzantine replica: what stands between it and the network.
    pub(crate) adversary: Option<super::adversary::Adversary>,
    /// Which side of a twin split this instance is on (see `world::byzantine`).
    pub(crate) side: bool,
    /// True for a twin: a second instance of a replica that also has a primary instance.
    pub(crate) twin: bool,
}

/// Every vote a replica sent and every entry it proposed, over all its incarnations: a correct
/// replica never votes twice for one `(phase, term, index)` nor proposes two entries for one
/// `(term, index)`, even across restarts.
#[derive(Debug, Default)]
pub(crate) struct Spoken {
    votes: BTreeMap<(Phase, Term, Index), VoteSubject>,
    proposals: BTreeMap<(Term, Index), Digest>,
}

impl<S> Node<S> {
    pub(crate) fn is_up(&self) -> bool {
        self.replica.is_some()
    }

    pub(crate) fn is_byzantine(&self) -> bool {
        self.adversary.is_some()
    }
}

impl Spoken {
    /// Records a message this replica sends; returns why it equivocates, if it does: a second
    /// vote for one `(phase, term, index)`, or a second proposal for one `(term, index)`.
    pub(crate) fn record(&mut self, msg: &ReplicaMessage) -> Option<String> {
        match msg {
            ReplicaMessage::Vote(v) => {
                let s = v.subject;
                let prev = *self.votes.entry((s.phase, s.term, s.index)).or_insert(s);
                (prev != s).then(|| {
                    format!(
                        "voted twice for ({:?}, term {}, index {}): {:?} then {:?}",
                        s.phase, s.term, s.index, prev, s
                    )
                })
            }
            ReplicaMessage::PreAppend(p) => {
                let fingerprint = entry_fingerprint(&p.entry);
                let key = (p.term, p.entry.index);
                let prev = *self.proposals.entry(key).or_insert(fingerprint);
                (prev != fingerprint).then(|| {
                    format!(
                        "proposed two different entries for (term {}, index {})",
                        p.term, p.entry.index
                    )
                })
            }
            _ => None,
        }
    }
}

/// A fingerprint of an entry's content (the simulator compares proposals by it).
fn entry_fingerprint(entry: &crate::message::Entry) -> Digest {
    let bytes = crate::codec::encode(entry).unwrap_or_default();
    Digest(*blake3::hash(&bytes).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Entry, PreAppend, Vote};
    use crate::persist::PersistOp;
    use crate::types::Signature;

    fn subject(phase: Phase, index: u64, hash: u8) -> VoteSubject {
        VoteSubject {
            phase,
            term: Term(0),
            index: Index(index),
            entry_hash: Digest([hash; 32]),
            state_digest: (phase == Phase::Commit).then_some(Digest::ZERO),
        }
    }

    fn vote(s: VoteSubject) -> ReplicaMessage {
        ReplicaMessage::Vote(Vote {
            subject: s,
            replica: ReplicaId(1),
            sig: Signature([0; 64]),
        })
    }

    #[test]
    fn votes_and_proposals_must_be_durable_before_they_leave() {
        let mut disk = Disk::default();
        let s = subject(Phase::PreAppend, 1, 1);
        let entry = std::sync::Arc::new(Entry {
            term: Term(0),
            index: Index(1),
            prev_hash: Digest::ZERO,
            txs: vec![],
        });
        let proposal = ReplicaMessage::PreAppend(PreAppend {
            term: Term(0),
            entry: entry.clone(),
            leader_sig: Signature([0; 64]),
        });
        assert!(disk.unjustified(&vote(s)).is_some());
        assert!(disk.unjustified(&proposal).is_some());
        let at = disk.submit(
            PersistBatch {
                id: 1,
                ops: vec![PersistOp::Vote(s), PersistOp::Entry(entry)],
            },
            Time(10),
            Duration::from_micros(5),
        );
        assert_eq!(at, Time(15));
        // Handed over is not durable yet.
        assert!(disk.unjustified(&vote(s)).is_some());
        disk.complete(1).unwrap();
        assert_eq!(disk.unjustified(&vote(s)), None);
        assert_eq!(disk.unjustified(&proposal), None);
        // Another subject at the same slot is not justified by the durable one.
        assert!(disk
            .unjustified(&vote(subject(Phase::PreAppend, 1, 2)))
            .is_some());
    }

    #[test]
    fn a_reply_needs_a_durable_commit_certificate_at_or_above_its_index() {
        let mut disk = Disk::default();
        let tree = crate::merkle::MerkleTree::new(&Digest::ZERO, &[Digest([1; 32])]);
        let reply = |index: u64| Reply {
            client: crate::types::PublicKey([1; 32]),
            ts: 1,
            outcome: Outcome::Executed {
                index: Index(index),
                result: vec![],
            },
            replica: ReplicaId(1),
            proof: tree.proof(0).expect("a proof"),
            sig: Signature([0; 64]),
        };
        assert!(disk.unjustified_reply(&reply(3)).is_some());
        let cc = crate::message::Certificate {
            subject: subject(Phase::Append, 4, 1),
            sigs: vec![],
        };
        disk.submit(
            PersistBatch {
                id: 1,
                ops: vec![PersistOp::Certificate(cc)],
            },
            Time(0),
            Duration::from_micros(5),
        );
        assert!(
            disk.unjustified_reply(&reply(3)).is_some(),
            "handed over is not durable yet"
        );
        disk.complete(1).unwrap();
        assert_eq!(
            disk.unjustified_reply(&reply(3)),
            None,
            "covered by the CC at 4"
        );
        assert_eq!(disk.unjustified_reply(&reply(4)), None);
        assert!(disk.unjustified_reply(&reply(5)).is_some());
    }

    #[test]
    fn equivocation_is_caught_across_incarnations() {
        let mut spoken = Spoken::default();
        let s = subject(Phase::Append, 2, 1);
        assert_eq!(spoken.record(&vote(s)), None);
        assert_eq!(spoken.record(&vote(s)), None, "the same vote again is fine");
        assert!(spoken.record(&vote(subject(Phase::Append, 2, 9))).is_some());
        assert_eq!(spoken.record(&vote(subject(Phase::Commit, 2, 9))), None);
        let proposal = |txs: usize| {
            ReplicaMessage::PreAppend(PreAppend {
                term: Term(0),
                entry: std::sync::Arc::new(Entry {
                    term: Term(0),
                    index: Index(4),
                    prev_hash: Digest::ZERO,
                    txs: vec![
                        crate::message::SignedTx {
                            client: crate::types::PublicKey([1; 32]),
                            ts: 1,
                            op: vec![],
                            sig: Signature([0; 64]),
                        };
                        txs
                    ],
                }),
                leader_sig: Signature([0; 64]),
            })
        };
        assert_eq!(spoken.record(&proposal(0)), None);
        assert_eq!(spoken.record(&proposal(0)), None);
        assert!(spoken.record(&proposal(1)).is_some());
    }

    #[test]
    fn a_crash_loses_what_is_not_durable() {
        let mut disk = Disk::default();
        let s = subject(Phase::Append, 3, 1);
        disk.submit(
            PersistBatch {
                id: 1,
                ops: vec![PersistOp::Vote(s)],
            },
            Time(0),
            Duration::from_micros(5),
        );
        assert_eq!(disk.crash(Time(2)), 1);
        assert!(disk.durable.votes.is_empty());
        assert!(disk.complete(1).is_err());
    }

    /// Four batches of different sizes, as a replica would hand them over.
    fn sample_batches() -> Vec<PersistBatch> {
        let entry = |index: u64, txs: usize| {
            PersistOp::Entry(std::sync::Arc::new(Entry {
                term: Term(1),
                index: Index(index),
                prev_hash: Digest([index as u8; 32]),
                txs: vec![
                    crate::message::SignedTx {
                        client: crate::types::PublicKey([3; 32]),
                        ts: index,
                        op: vec![7; 40],
                        sig: Signature([1; 64]),
                    };
                    txs
                ],
            }))
        };
        vec![
            PersistBatch {
                id: 1,
                ops: vec![PersistOp::SeekTerm(Term(1))],
            },
            PersistBatch {
                id: 2,
                ops: vec![
                    entry(1, 3),
                    PersistOp::Vote(subject(Phase::PreAppend, 1, 1)),
                ],
            },
            PersistBatch {
                id: 3,
                ops: vec![PersistOp::Certificate(crate::message::Certificate {
                    subject: subject(Phase::Append, 1, 1),
                    sigs: vec![(ReplicaId(2), Signature([2; 64])); 3],
                })],
            },
            PersistBatch {
                id: 4,
                ops: vec![entry(2, 0), PersistOp::TruncateFrom(Index(3))],
            },
        ]
    }

    #[test]
    fn torn_write_recovery_reads_exactly_the_whole_records_before_the_cut() {
        let batches = sample_batches();
        let records: Vec<Vec<u8>> = batches
            .iter()
            .map(|b| frame_record(b).expect("a batch frames"))
            .collect();
        let log = records.concat();
        // Where each record ends.
        let ends: Vec<usize> = records
            .iter()
            .scan(0, |end, r| {
                *end += r.len();
                Some(*end)
            })
            .collect();
        for cut in 0..=log.len() {
            let whole = ends.iter().filter(|&&end| end <= cut).count();
            let boundary = if whole == 0 { 0 } else { ends[whole - 1] };
            // The file ends at the cut.
            let read = read_records(&log[..cut]).expect("recovery of a cut log");
            assert_eq!(read.batches, batches[..whole], "cut at byte {cut}");
            assert_eq!(read.torn_bytes, cut - boundary, "cut at byte {cut}");
            // The rest of the torn record holds stale bytes, and later records follow intact:
            // the checksum stops recovery at the tear, and nothing after it comes back.
            if whole < records.len() && cut > boundary {
                let mut stale = log.clone();
                for (k, byte) in stale[cut..ends[whole]].iter_mut().enumerate() {
                    *byte = (k as u8).wrapping_mul(31) ^ 0xa5;
                }
                let read = read_records(&stale).expect("recovery of a torn log");
                assert_eq!(
                    read.batches,
                    batches[..whole],
                    "stale bytes from byte {cut}"
                );
                assert_eq!(read.torn_bytes, log.len() - boundary);
            }
        }
    }

    #[test]
    fn a_record_that_passes_its_checksum_but_does_not_decode_is_an_error() {
        let payload = [0xc1u8; 5]; // 0xc1 is never valid MessagePack
        let len = (payload.len() as u32).to_le_bytes();
        let mut log = frame_record(&sample_batches()[0]).expect("a batch frames");
        log.extend_from_slice(&len);
        log.extend_from_slice(&record_checksum(&len, &payload));
        log.extend_from_slice(&payload);
        let err = read_records(&log).expect_err("an undecodable valid record");
        assert!(err.contains("record 1"), "{err}");
    }

    #[test]
    fn a_crash_with_disk_faults_keeps_a_prefix_that_recovery_reads_back() {
        use rand::SeedableRng as _;
        let batches = sample_batches();
        let vote = vote(subject(Phase::PreAppend, 1, 1)); // in batch 2
        let mut kept_counts = std::collections::BTreeSet::new();
        let mut torn = 0;
        for seed in 0..200 {
            let mut rng = SimRng::seed_from_u64(seed);
            let mut disk = Disk::default();
            for b in &batches {
                disk.submit(b.clone(), Time(0), Duration::from_micros(5));
            }
            let crash = disk.crash_torn(Time(3), &mut rng).expect("a crash");
            assert_eq!(crash.kept + crash.lost, batches.len());
            assert!(disk.crash_torn(Time(4), &mut rng).is_err(), "crashed twice");
            // Nothing unconfirmed counts as durable until the next incarnation reads it back.
            assert_eq!(disk.durable, DurableState::default());
            assert!(disk.unjustified(&vote).is_some());
            let recovered = disk.recover().expect("recovery").expect("a crashed tail");
            assert_eq!(recovered.batches, crash.kept);
            torn += usize::from(recovered.torn);
            let mut expected = DurableState::default();
            for b in &batches[..crash.kept] {
                expected.apply_batch(b.clone());
            }
            assert_eq!(disk.durable, expected, "seed {seed}");
            assert_eq!(disk.unjustified(&vote).is_none(), crash.kept >= 2);
            assert_eq!(disk.recover(), Ok(None), "recovered once");
            assert!(
                disk.complete(1).is_err(),
                "the crash took the batches off the queue"
            );
            kept_counts.insert(crash.kept);
        }
        assert_eq!(kept_counts.len(), batches.len() + 1, "{kept_counts:?}");
        assert!(torn > 0);
    }
}
