//! What a replica asks its storage to make durable, and the state it gets back on restart.
//!
//! The replica never writes anything itself: it hands a [`PersistBatch`] to its caller, and any
//! message that depends on that batch is held back until the caller confirms the batch durable
//! (see [`crate::replica::Replica::on_persisted`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::message::{Certificate, Entry, Phase, VoteSubject};
use crate::types::{Index, Term};

/// One thing to make durable.
#[derive(Clone, Debug, PartialEq, Eq)]
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
}

/// A group of operations to make durable together (one sync).
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// Log entries by index (contiguous from 1).
    pub entries: BTreeMap<Index, Arc<Entry>>,
    /// Votes cast, by `(phase, term, index)`.
    pub votes: BTreeMap<(Phase, Term, Index), VoteSubject>,
    /// Certificates by `(phase, index)`; the highest-term one is kept.
    pub certificates: BTreeMap<(Phase, Index), Certificate>,
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
            PersistOp::TruncateFrom(index) => {
                self.entries.split_off(&index);
                // Certificates of lower phases above the cut refer to discarded entries.
                self.certificates
                    .retain(|(phase, i), _| *i < index || *phase != Phase::PreAppend);
            }
        }
    }

    /// Applies every operation of a batch, in order.
    pub fn apply_batch(&mut self, batch: PersistBatch) {
        for op in batch.ops {
            self.apply(op);
        }
    }
}
