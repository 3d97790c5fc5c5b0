//! A simulated replica: the sans-IO `Replica`, its own verifier, and a simulated disk.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::crypto::KeyPair;
use crate::message::{Outcome, Phase, ReplicaMessage, Reply, VoteSubject};
use crate::persist::{DurableState, PersistBatch};
use crate::replica::Replica;
use crate::types::{Digest, Index, ReplicaId, Term, Time};
use crate::verify::Verifier;

use super::queue::TimerSlot;

/// A disk that completes syncs in order. What it confirmed survives a crash; batches handed over
/// but not yet durable are lost.
#[derive(Debug, Default)]
pub(crate) struct Disk {
    /// Everything confirmed durable.
    pub(crate) durable: DurableState,
    /// Handed over, not yet durable, in order.
    unsynced: VecDeque<PersistBatch>,
    /// When the disk finishes the last batch handed over.
    free_at: Time,
}

impl Disk {
    /// Queues a batch; returns when it becomes durable.
    pub(crate) fn submit(&mut self, batch: PersistBatch, now: Time, latency: Duration) -> Time {
        self.free_at = self.free_at.max(now).after(latency);
        self.unsynced.push_back(batch);
        self.free_at
    }

    /// Makes the oldest batch durable; it must be batch `id`.
    pub(crate) fn complete(&mut self, id: u64) -> Result<(), String> {
        match self.unsynced.pop_front() {
            Some(batch) if batch.id == id => {
                self.durable.apply_batch(batch);
                Ok(())
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

    /// Persist-before-speak: why `msg` must not leave the replica yet, if it must not.
    pub(crate) fn unjustified(&self, msg: &ReplicaMessage) -> Option<String> {
        match msg {
            ReplicaMessage::Vote(v) => {
                let s = &v.subject;
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
        let committed = self
            .durable
            .certificates
            .range((Phase::Append, *index)..=(Phase::Append, Index(u64::MAX)))
            .next()
            .is_some();
        (!committed).then(|| {
            format!(
                "replied to a client with a result at index {index} before a commit certificate \
                 covering it was durable"
            )
        })
    }
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
}
