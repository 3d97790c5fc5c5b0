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

/// Entries `base + 1..=tip`, contiguous and chained to the base: genesis (index 0, whose hash
/// is the cluster id) or the stable checkpoint the log was compacted to.
#[derive(Debug)]
pub(crate) struct Log {
    base: Index,
    base_hash: Digest,
    /// The commit certificate of the base entry, if this replica held one when it compacted.
    base_committed: Option<Certificate>,
    slots: std::collections::VecDeque<Slot>,
    /// Highest index known committed (every entry up to it is present).
    commit_index: Index,
    /// Per client, the highest `ts` among the log's txs (executed or not).
    highest_ts: HashMap<ClientId, u64>,
}

impl Log {
    pub(crate) fn new(genesis_hash: Digest) -> Self {
        Log {
            base: Index(0),
            base_hash: genesis_hash,
            base_committed: None,
            slots: std::collections::VecDeque::new(),
            commit_index: Index(0),
            highest_ts: HashMap::default(),
        }
    }

    pub(crate) fn tip(&self) -> Index {
        Index(self.base.0 + self.slots.len() as u64)
    }

    /// The index the log starts above (0, or the checkpoint it was compacted to).
    pub(crate) fn base(&self) -> Index {
        self.base
    }

    pub(crate) fn tip_hash(&self) -> Digest {
        self.slots.back().map_or(self.base_hash, |s| s.entry.hash)
    }

    pub(crate) fn commit_index(&self) -> Index {
        self.commit_index
    }

    fn position(&self, index: Index) -> Option<usize> {
        let above = index.0.checked_sub(self.base.0)?.checked_sub(1)?;
        usize::try_from(above).ok()
    }

    pub(crate) fn get(&self, index: Index) -> Option<&Slot> {
        self.slots.get(self.position(index)?)
    }

    pub(crate) fn get_mut(&mut self, index: Index) -> Option<&mut Slot> {
        let i = self.position(index)?;
        self.slots.get_mut(i)
    }

    /// The hash of the entry at `index`: held, or the base's (unknown below the base).
    pub(crate) fn hash_at(&self, index: Index) -> Option<Digest> {
        if index == self.base {
            return Some(self.base_hash);
        }
        self.get(index).map(|s| s.entry.hash)
    }

    /// Forgets the entries up to `index` (committed and covered by a stable checkpoint whose
    /// entry is the one held at `index`): the log then starts above it.
    pub(crate) fn compact_to(&mut self, index: Index) {
        let Some(hash) = self.hash_at(index) else {
            debug_assert!(false, "compaction to {index}, which the log does not hold");
            return;
        };
        if index <= self.base {
            return;
        }
        debug_assert!(index <= self.commit_index);
        let drop = (index.0 - self.base.0) as usize;
        let committed = self.get(index).and_then(|s| s.committed.clone());
        self.slots.drain(..drop.min(self.slots.len()));
        self.base = index;
        self.base_hash = hash;
        self.base_committed = committed;
    }

    /// The commit certificate at the commit index, if held (it proves how far this replica
    /// committed).
    pub(crate) fn commit_certificate(&self) -> Option<&Certificate> {
        match self.get(self.commit_index) {
            Some(slot) => slot.committed.as_ref(),
            None if self.commit_index == self.base => self.base_committed.as_ref(),
            None => None,
        }
    }

    /// Starts the log over above a checkpoint at `index` whose entry has `hash`: keeps the
    /// entries above it if they chain to it, drops everything else. Returns true if entries
    /// above were dropped.
    pub(crate) fn restart_at(&mut self, index: Index, hash: Digest) -> bool {
        if self.hash_at(index) == Some(hash) {
            self.commit_index = self.commit_index.max(index);
            self.compact_to(index);
            return false;
        }
        let dropped = self.tip() > index;
        self.slots.clear();
        self.base = index;
        self.base_hash = hash;
        self.base_committed = None;
        self.commit_index = index;
        self.recount_highest_ts();
        dropped
    }

    /// Appends an entry that extends the tip; the caller checked index and chain.
    pub(crate) fn push(&mut self, entry: CheckedEntry) {
        debug_assert_eq!(entry.entry.index, self.tip().next());
        debug_assert_eq!(entry.entry.prev_hash, self.tip_hash());
        for tx in &entry.entry.txs {
            let ts = self.highest_ts.entry(tx.client).or_insert(0);
            *ts = (*ts).max(tx.ts);
        }
        self.slots.push_back(Slot {
            entry,
            prepared: None,
            committed: None,
            proposal: None,
        });
    }

    /// Drops entries from `index` on; none of them may be committed.
    pub(crate) fn truncate_from(&mut self, index: Index) {
        debug_assert!(index > self.commit_index);
        let keep = index.0.saturating_sub(1).saturating_sub(self.base.0) as usize;
        if keep < self.slots.len() {
            self.slots.truncate(keep);
            self.recount_highest_ts();
        }
    }

    /// Recomputes the per-client highest `ts` from the entries held. Txs of compacted entries
    /// were executed, so the execution's client table covers them.
    fn recount_highest_ts(&mut self) {
        self.highest_ts.clear();
        for s in &self.slots {
            for tx in &s.entry.entry.txs {
                let ts = self.highest_ts.entry(tx.client).or_insert(0);
                *ts = (*ts).max(tx.ts);
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
        (self.base.0 + 1..=top.0)
            .rev()
            .map(Index)
            .find(|i| self.get(*i).is_some_and(|s| s.committed.is_some()))
    }

    /// A committed-entry map for checkers.
    /// The committed entries held (those above the base).
    pub(crate) fn committed_entries(&self) -> impl Iterator<Item = &CheckedEntry> {
        let count = self.commit_index.0.saturating_sub(self.base.0) as usize;
        self.slots.iter().take(count).map(|s| &s.entry)
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }
}
