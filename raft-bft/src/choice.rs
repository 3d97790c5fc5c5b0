//! The log a new term starts from (PROTOCOL.md section 4): a pure function of a quorum of
//! TermChange messages, which the new leader computes and every replica recomputes.
//!
//! For every index above the highest stable execution certificate among the messages, take the
//! prepared certificate with the highest term; cut the sequence at the first index with none, or
//! whose entry does not chain to the one below. Why committed entries always survive: a committed
//! entry has a commit certificate, so a quorum holds its prepared certificate; any quorum of
//! TermChange messages includes a correct member of that quorum, which reports it (or a
//! higher-term certificate, which by induction over terms is for the same entry); and committed
//! entries chain to one another, so the cut never falls below them.

use std::collections::{BTreeMap, BTreeSet};

use crate::message::{Certificate, EntryHeader, TermChange};
use crate::types::{Digest, Index, ReplicaId, Term};

/// One chosen index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChosenEntry {
    /// The entry's header (its hash is `hash`).
    pub header: EntryHeader,
    /// The entry hash.
    pub hash: Digest,
    /// The term of the prepared certificate that chose it.
    pub prepared_term: Term,
}

/// The log a new term starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChosenLog {
    /// The term that starts.
    pub new_term: Term,
    /// The highest stable execution certificate among the messages (none: genesis).
    pub base: Option<Certificate>,
    /// The chosen entries, consecutive from the base's index + 1, each chaining to the one below.
    pub entries: Vec<ChosenEntry>,
}

impl ChosenLog {
    /// The index of the base (0 for genesis).
    pub fn base_index(&self) -> Index {
        self.base.as_ref().map_or(Index(0), |ec| ec.subject.index)
    }

    /// The `(index, hash)` list that a NewTerm message carries.
    pub fn list(&self) -> Vec<(Index, Digest)> {
        self.entries
            .iter()
            .map(|e| (e.header.index, e.hash))
            .collect()
    }
}

/// Why a set of TermChange messages cannot choose a log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChoiceError {
    /// Fewer messages than a quorum.
    #[error("{got} TermChange messages, a quorum is {quorum}")]
    TooFew {
        /// Distinct senders.
        got: usize,
        /// The quorum.
        quorum: usize,
    },
    /// One replica sent two of the messages.
    #[error("two TermChange messages from replica {0}")]
    DuplicateSender(ReplicaId),
    /// A message is for another term.
    #[error("a TermChange for term {got} in a choice for term {expected}")]
    WrongTerm {
        /// The term being chosen for.
        expected: Term,
        /// The message's term.
        got: Term,
    },
}

/// Chooses the log for `new_term` from TermChange messages that were each verified.
/// `genesis_hash` is the hash of index 0 (the cluster id).
pub fn choose(
    genesis_hash: &Digest,
    quorum: usize,
    new_term: Term,
    changes: &[TermChange],
) -> Result<ChosenLog, ChoiceError> {
    let mut senders = BTreeSet::new();
    for tc in changes {
        if tc.new_term != new_term {
            return Err(ChoiceError::WrongTerm {
                expected: new_term,
                got: tc.new_term,
            });
        }
        if !senders.insert(tc.replica) {
            return Err(ChoiceError::DuplicateSender(tc.replica));
        }
    }
    if senders.len() < quorum {
        return Err(ChoiceError::TooFew {
            got: senders.len(),
            quorum,
        });
    }
    // The highest stable certificate; equal indices are ordered by hash so the choice does not
    // depend on the order of the messages.
    let base = changes
        .iter()
        .filter_map(|tc| tc.stable.as_ref())
        .max_by_key(|ec| (ec.subject.index, ec.subject.entry_hash))
        .cloned();
    let base_index = base.as_ref().map_or(Index(0), |ec| ec.subject.index);
    let base_hash = base
        .as_ref()
        .map_or(*genesis_hash, |ec| ec.subject.entry_hash);

    // Per index above the base, the candidate with the highest (term, hash).
    let mut best: BTreeMap<Index, ChosenEntry> = BTreeMap::new();
    for p in changes.iter().flat_map(|tc| &tc.prepared) {
        let s = &p.certificate.subject;
        if s.index <= base_index {
            continue;
        }
        let candidate = ChosenEntry {
            header: p.header,
            hash: s.entry_hash,
            prepared_term: s.term,
        };
        match best.get(&s.index) {
            Some(b) if (b.prepared_term, b.hash) >= (candidate.prepared_term, candidate.hash) => {}
            _ => {
                best.insert(s.index, candidate);
            }
        }
    }

    let mut entries = Vec::new();
    let mut prev = base_hash;
    let mut index = base_index.next();
    while let Some(chosen) = best.remove(&index) {
        if chosen.header.prev_hash != prev || chosen.header.index != index {
            break;
        }
        prev = chosen.hash;
        entries.push(chosen);
        index = index.next();
    }
    Ok(ChosenLog {
        new_term,
        base,
        entries,
    })
}
