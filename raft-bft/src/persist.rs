//! What a replica asks its storage to make durable, and the state it gets back on restart.
//!
//! The replica never writes anything itself: it hands a [`PersistBatch`] to its caller, and any
//! message that depends on that batch is held back until the caller confirms the batch durable
//! (see [`crate::replica::Replica::on_persisted`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::message::{Certificate, Entry, NewTerm, Phase, VoteSubject};
use crate::types::{Index, Term};

/// One thing to make durable (stores encode it with [`crate::codec`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PersistOp {
    /// Store the entry at `entry.index` (the log's tip + 1, after any truncation).
    Entry(Arc<Entry>),
    /// Remember that this replica voted for `subject` (it must never vote otherwise at the same
    /// `(phase, term, index)`, even after a restart).
    Vote(VoteSubject),
    /// Store a certificate (prepared, commit or execution).
    Certificate(Certificate),
    /// Drop every entry at `index` and above (they were never committed).
    TruncateFrom(Index),
    /// This replica left every term below `term` and is waiting for `term` to start (it votes in
    /// no term until it enters one).
    SeekTerm(Term),
    /// This replica entered the term this (verified) NewTerm starts.
    EnterTerm(Arc<NewTerm>),
    /// Forget entries, votes and certificates at indexes below `index`: a stable checkpoint
    /// covers them. Compaction only ever moves forward.
    CompactBelow(Index),
    /// Keep this stable checkpoint in place of the log up to its index: replaces an older
    /// checkpoint and compacts below `index + 1` (a newer one than any kept; older ones are
    /// ignored).
    Checkpoint(Arc<Checkpoint>),
    /// This replica lost its durable state and was rebuilt from its peers: it must not vote,
    /// propose or report prepared entries until its stable checkpoint reaches `Index` (an
    /// unknown floor is `Index(u64::MAX)`). `Index(0)` ends the restriction.
    VoteFloor(Index),
}

/// A group of operations to make durable together (one sync).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistBatch {
    /// Confirm with [`crate::replica::Replica::on_persisted`] once every op is durable.
    pub id: u64,
    /// The operations, to be applied in order.
    pub ops: Vec<PersistOp>,
}

/// Everything a replica made durable: what a store returns on restart.
///
/// [`DurableState::apply`] is the reference semantics of every [`PersistOp`]; stores and the
/// simulator use it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DurableState {
    /// Log entries by index (contiguous from `compacted_below`, or from 1 if nothing was
    /// compacted).
    pub entries: BTreeMap<Index, Arc<Entry>>,
    /// Votes cast, by `(phase, term, index)`.
    pub votes: BTreeMap<(Phase, Term, Index), VoteSubject>,
    /// Certificates by `(phase, index)`; the highest-term one is kept.
    pub certificates: BTreeMap<(Phase, Index), Certificate>,
    /// The term this replica is in, or seeks.
    pub term: Term,
    /// True while this replica seeks `term` (it has not entered it yet).
    pub seeking: bool,
    /// The NewTerm that started `term` (none for term 0).
    pub new_term: Option<Arc<NewTerm>>,
    /// Everything below this index was compacted away (`Index(0)` if nothing was).
    pub compacted_below: Index,
    /// The newest stable checkpoint kept (the log continues above its index).
    pub checkpoint: Option<Arc<Checkpoint>>,
    /// See [`PersistOp::VoteFloor`] (`Index(0)`: none).
    pub vote_floor: Index,
}

impl DurableState {
    /// Applies one operation.
    pub fn apply(&mut self, op: PersistOp) {
        match op {
            PersistOp::Entry(e) => {
                self.entries.insert(e.index, e);
            }
            PersistOp::Vote(v) => {
                self.votes.insert((v.phase, v.term, v.index), v);
            }
            PersistOp::Certificate(c) => {
                let key = (c.subject.phase, c.subject.index);
                match self.certificates.get(&key) {
                    Some(old) if old.subject.term > c.subject.term => {}
                    _ => {
                        self.certificates.insert(key, c);
                    }
                }
            }
            PersistOp::SeekTerm(term) => {
                if term > self.term {
                    self.term = term;
                    self.seeking = true;
                }
            }
            PersistOp::EnterTerm(nt) => {
                if nt.new_term > self.term || (nt.new_term == self.term && self.seeking) {
                    self.term = nt.new_term;
                    self.seeking = false;
                    self.new_term = Some(nt);
                }
            }
            PersistOp::TruncateFrom(index) => {
                self.entries.split_off(&index);
                // Certificates of lower phases above the cut refer to discarded entries.
                self.certificates
                    .retain(|(phase, i), _| *i < index || *phase != Phase::PreAppend);
            }
            PersistOp::CompactBelow(index) => self.compact_below(index),
            PersistOp::Checkpoint(cp) => {
                let index = cp.index();
                if self
                    .checkpoint
                    .as_ref()
                    .is_none_or(|old| old.index() < index)
                {
                    self.checkpoint = Some(cp);
                    self.compact_below(index.next());
                }
            }
            PersistOp::VoteFloor(index) => self.vote_floor = index,
        }
    }

    fn compact_below(&mut self, index: Index) {
        if index > self.compacted_below {
            self.compacted_below = index;
            self.entries = self.entries.split_off(&index);
            self.votes.retain(|(_, _, i), _| *i >= index);
            self.certificates.retain(|(_, i), _| *i >= index);
        }
    }

    /// Applies every operation of a batch, in order.
    pub fn apply_batch(&mut self, batch: PersistBatch) {
        for op in batch.ops {
            self.apply(op);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::VoteSubject;
    use crate::types::Digest;

    #[test]
    fn persist_batches_round_trip_through_the_codec() {
        let batch = PersistBatch {
            id: 9,
            ops: vec![
                PersistOp::Entry(Arc::new(Entry {
                    term: Term(1),
                    index: Index(3),
                    prev_hash: Digest([4; 32]),
                    txs: Vec::new(),
                })),
                PersistOp::Vote(VoteSubject {
                    phase: Phase::Commit,
                    term: Term(1),
                    index: Index(3),
                    entry_hash: Digest([5; 32]),
                    state_digest: Some(Digest([6; 32])),
                }),
                PersistOp::TruncateFrom(Index(2)),
                PersistOp::SeekTerm(Term(2)),
            ],
        };
        let bytes = crate::codec::encode(&batch).unwrap();
        let back: PersistBatch = crate::codec::decode(&bytes, 1 << 20).unwrap();
        assert_eq!(back, batch);
    }

    #[test]
    fn compaction_forgets_everything_below_its_index_and_only_moves_forward() {
        let mut state = DurableState::default();
        for i in 1..=6u64 {
            let subject = |phase| VoteSubject {
                phase,
                term: Term(1),
                index: Index(i),
                entry_hash: Digest([i as u8; 32]),
                state_digest: None,
            };
            state.apply(PersistOp::Entry(Arc::new(Entry {
                term: Term(1),
                index: Index(i),
                prev_hash: Digest([0; 32]),
                txs: Vec::new(),
            })));
            state.apply(PersistOp::Vote(subject(Phase::Append)));
            state.apply(PersistOp::Certificate(crate::message::Certificate {
                subject: subject(Phase::Commit),
                sigs: Vec::new(),
            }));
        }
        state.apply(PersistOp::CompactBelow(Index(4)));
        assert_eq!(state.compacted_below, Index(4));
        let kept = |keys: Vec<u64>| keys == vec![4, 5, 6];
        assert!(kept(state.entries.keys().map(|i| i.0).collect()));
        assert!(kept(state.votes.keys().map(|(_, _, i)| i.0).collect()));
        assert!(kept(state.certificates.keys().map(|(_, i)| i.0).collect()));
        let before = state.clone();
        state.apply(PersistOp::CompactBelow(Index(2)));
        assert_eq!(state, before, "compaction never moves back");
    }
}
