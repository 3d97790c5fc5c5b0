//! The replica's in-memory log: entries with their certificates, hash-chained from genesis.

use super::HashMap;
use crate::message::Certificate;
use crate::types::{ClientId, Digest, Index, Signature, Term};
use crate::verify::CheckedEntry;

/// One log position.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) entry: CheckedEntry,
    /// The highest-term prepared certificate for this entry, if any.
    pub(crate) prepared: Option<Certificate>,
    /// A commit certificate for this entry, if this replica holds one.
    pub(crate) committed: Option<Certificate>,
    /// The leader's PreAppend signature it was accepted with, and its term (kept as evidence
    /// should the leader propose another entry at this index in that term).
    pub(crate) proposal: Option<(Term, Signature)>,
}

/// Entries `1..=tip`, contiguous. Index 0 is genesis, whose hash is the cluster id.
#[derive(Debug)]
pub(crate) struct Log {
    genesis_hash: Digest,
    slots: Vec<Slot>,
    /// Highest index known committed (every entry up to it is present).
    commit_index: Index,
    /// Per client, the highest `ts` among the log's txs (executed or not).
    highest_ts: HashMap<ClientId, u64>,
}

impl Log {
    pub(crate) fn new(genesis_hash: Digest) -> Self {
        Log {
            genesis_hash,
            slots: Vec::new(),
            commit_index: Index(0),
            highest_ts: HashMap::default(),
        }
    }

    pub(crate) fn tip(&self) -> Index {
        Index(self.slots.len() as u64)
    }

    pub(crate) fn tip_hash(&self) -> Digest {
        self.slots
            .last()
            .map_or(self.genesis_hash, |s| s.entry.hash)
    }

    pub(crate) fn commit_index(&self) -> Index {
        self.commit_index
    }

    pub(crate) fn get(&self, index: Index) -> Option<&Slot> {
        let i = usize::try_from(index.0).ok()?.checked_sub(1)?;
        self.slots.get(i)
    }

    pub(crate) fn get_mut(&mut self, index: Index) -> Option<&mut Slot> {
        let i = usize::try_from(index.0).ok()?.checked_sub(1)?;
        self.slots.get_mut(i)
    }

    pub(crate) fn hash_at(&self, index: Index) -> Option<Digest> {
        if index == Index(0) {
            return Some(self.genesis_hash);
        }
        self.get(index).map(|s| s.entry.hash)
    }

    /// Appends an entry that extends the tip; the caller checked index and chain.
    pub(crate) fn push(&mut self, entry: CheckedEntry) {
        debug_assert_eq!(entry.entry.index, self.tip().next());
        debug_assert_eq!(entry.entry.prev_hash, self.tip_hash());
        for tx in &entry.entry.txs {
            let ts = self.highest_ts.entry(tx.client).or_insert(0);
            *ts = (*ts).max(tx.ts);
        }
        self.slots.push(Slot {
            entry,
            prepared: None,
            committed: None,
            proposal: None,
        });
    }

    /// Drops entries from `index` on; none of them may be committed.
    pub(crate) fn truncate_from(&mut self, index: Index) {
        debug_assert!(index > self.commit_index);
        let keep = index.0.saturating_sub(1) as usize;
        if keep < self.slots.len() {
            self.slots.truncate(keep);
            self.highest_ts.clear();
            for s in &self.slots {
                for tx in &s.entry.entry.txs {
                    let ts = self.highest_ts.entry(tx.client).or_insert(0);
                    *ts = (*ts).max(tx.ts);
                }
            }
        }
    }

    /// The highest `ts` of `client` among the log's txs.
    pub(crate) fn highest_ts(&self, client: &ClientId) -> u64 {
        self.highest_ts.get(client).copied().unwrap_or(0)
    }

    /// Records a commit certificate for the entry at its index (its hash was checked) and
    /// advances the commit index: a CC commits its entry and the whole chain below it.
    pub(crate) fn set_committed(&mut self, cc: Certificate) {
        let index = cc.subject.index;
        if let Some(slot) = self.get_mut(index) {
            slot.committed = Some(cc);
            if index > self.commit_index {
                self.commit_index = index;
            }
        }
    }

    /// Whether every entry in `(commit_index, index)` holds a prepared certificate of a term at
    /// least `term`, or is committed.
    pub(crate) fn prefix_prepared(&self, index: Index, term: Term) -> bool {
        let from = self.commit_index.0 + 1;
        (from..index.0).all(|i| {
            self.get(Index(i)).is_some_and(|s| {
                s.committed.is_some()
                    || s.prepared
                        .as_ref()
                        .is_some_and(|pc| pc.subject.term >= term)
            })
        })
    }

    /// The newest index at or below `limit` that holds a commit certificate.
    pub(crate) fn last_certified_at_or_below(&self, limit: Index) -> Option<Index> {
        let top = limit.min(self.commit_index);
        (1..=top.0)
            .rev()
            .map(Index)
            .find(|i| self.get(*i).is_some_and(|s| s.committed.is_some()))
    }

    /// A committed-entry map for checkers.
    pub(crate) fn committed_entries(&self) -> impl Iterator<Item = &CheckedEntry> {
        self.slots[..self.commit_index.0 as usize]
            .iter()
            .map(|s| &s.entry)
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }
}
