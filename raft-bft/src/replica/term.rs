//! Term changes (PROTOCOL.md section 4): suspecting the leader, leaving a term, the `f + 1` join
//! rule, the new leader's NewTerm, entering a term and re-proposing its chosen log.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::leader::LeaderState;
use super::{Replica, Target};
use crate::choice::{self, ChosenLog};
use crate::merkle;
use crate::message::{
    EntryHeader, EquivocationProof, NewTerm, PreparedEntry, ReplicaMessage, TermChange,
};
use crate::persist::PersistOp;
use crate::state_machine::StateMachine;
use crate::types::{ClientId, Digest, Index, ReplicaId, Term, Time};
use crate::verify::CheckedEntry;

/// Most forwarded txs a follower watches for the request timer.
const MAX_WATCHED_REQUESTS: usize = 4096;

/// Most equivocation proofs kept (one per term, the newest).
const MAX_EVIDENCE: usize = 64;

/// What a replica tracks about terms.
#[derive(Debug)]
pub(crate) struct TermState {
    /// True while the replica seeks its `term` (it left every term below and has not entered).
    pub(crate) seeking: bool,
    seek_started: Time,
    seek_timeout: Duration,
    /// The newest TermChange received from each replica.
    changes: BTreeMap<ReplicaId, TermChange>,
    /// The NewTerm that started the current term (none for term 0).
    pub(crate) new_term: Option<Arc<NewTerm>>,
    /// The current term's chosen log, by index (re-proposals must match it).
    pub(crate) chosen: BTreeMap<Index, Digest>,
    /// The index of the current term's base (its highest stable execution certificate).
    pub(crate) base: Index,
    /// Entries fetched for re-proposal, waiting for their turn (new leader only).
    fetched: BTreeMap<Index, CheckedEntry>,
    /// When this replica last heard from the leader of its term.
    pub(crate) leader_contact: Time,
    /// When each uncommitted entry was pre-appended (commit timer).
    pub(crate) pre_appended_at: BTreeMap<Index, Time>,
    /// Client txs forwarded to the leader and when (request timer).
    forwarded: BTreeMap<(ClientId, u64), Time>,
    /// When this replica last sent its NewTerm to a replica behind.
    new_term_sent: BTreeMap<ReplicaId, Time>,
    /// When this replica last asked a later term's leader for its NewTerm.
    pub(super) new_term_asked: Option<Time>,
    /// When this replica last broadcast its TermChange.
    last_term_change_sent: Time,
    /// When the new leader last asked for a chosen entry it lacks.
    fetch_chosen_sent: Time,
}

impl TermState {
    pub(crate) fn new(now: Time, timeout: Duration) -> Self {
        TermState {
            seeking: false,
            seek_started: now,
            seek_timeout: timeout,
            changes: BTreeMap::new(),
            new_term: None,
            chosen: BTreeMap::new(),
            base: Index(0),
            fetched: BTreeMap::new(),
            leader_contact: now,
            pre_appended_at: BTreeMap::new(),
            forwarded: BTreeMap::new(),
            new_term_sent: BTreeMap::new(),
            new_term_asked: None,
            last_term_change_sent: now,
            fetch_chosen_sent: Time(0),
        }
    }

    /// The last index the term starts from: its base, or the end of its chosen list. No fresh
    /// entry may be proposed at or below it.
    pub(crate) fn chosen_end(&self) -> Index {
        self.chosen
            .keys()
            .next_back()
            .copied()
            .unwrap_or(Index(0))
            .max(self.base)
    }

    pub(crate) fn watch_forwarded(&mut self, client: ClientId, ts: u64, now: Time) {
        if self.forwarded.len() < MAX_WATCHED_REQUESTS {
            self.forwarded.entry((client, ts)).or_insert(now);
        }
    }
}

impl<S: StateMachine> Replica<S> {
    /// The follower's timers: a silent leader, an entry not committed in time, a forwarded tx
    /// not executed in time; and, while seeking a term, a term that does not start in time.
    pub(super) fn term_tick(&mut self) {
        let params = self.cluster.params().clone();
        if self.rebuilding() {
            // It says nothing about terms until rebuilt (its TermChange would not report what
            // it held before): it only follows the terms its peers show it.
            return;
        }
        if self.terms.seeking {
            if self.now >= self.terms.seek_started.after(self.terms.seek_timeout) {
                let next = self.term.next();
                self.terms.seek_timeout = self.terms.seek_timeout.saturating_mul(2);
                self.seek_term(next, "the sought term did not start in time");
            } else {
                self.repeat_term_change();
            }
            return;
        }
        if self.leader.is_some() {
            return;
        }
        let exec = &self.exec;
        self.terms
            .forwarded
            .retain(|(client, ts), _| exec.last_executed_ts(client) < *ts);
        let silent = self.now >= self.terms.leader_contact.after(params.election_timeout);
        let slow_commit = self
            .terms
            .pre_appended_at
            .values()
            .next()
            .is_some_and(|at| self.now >= at.after(params.commit_timeout));
        let censored = self
            .terms
            .forwarded
            .values()
            .min()
            .is_some_and(|at| self.now >= at.after(params.request_timeout));
        let reason = if silent {
            "no message from the leader within the election timeout"
        } else if slow_commit {
            "a pre-appended entry was not committed within the commit timeout"
        } else if censored {
            "a forwarded tx was not executed within the request timeout"
        } else {
            return;
        };
        let next = self.term.next();
        self.seek_term(next, reason);
    }

    /// A certificate of `term` proves that a quorum voted in it, so it started: a replica in an
    /// earlier term seeks it, and the replicas in it answer with their NewTerm.
    pub(super) fn note_term_evidence(&mut self, term: Term) {
        if term > self.term {
            self.seek_term(term, "a certificate shows a later term started");
        }
    }

    /// While seeking a term, says so again every heartbeat interval: a replica already in that
    /// term answers with its NewTerm, which this replica may have missed.
    fn repeat_term_change(&mut self) {
        let interval = self.cluster.params().heartbeat_interval;
        if self.now < self.terms.last_term_change_sent.after(interval) {
            return;
        }
        if let Some(tc) = self.terms.changes.get(&self.id).cloned() {
            self.terms.last_term_change_sent = self.now;
            self.send(Target::AllOthers, ReplicaMessage::TermChange(tc));
        }
    }

    /// When the term timers next need a tick.
    pub(super) fn term_deadline(&self) -> Option<Time> {
        if self.rebuilding() {
            return None; // no term timers while rebuilding (see `term_tick`)
        }
        let params = self.cluster.params();
        if self.terms.seeking {
            let repeat = self
                .terms
                .last_term_change_sent
                .after(params.heartbeat_interval);
            return Some(
                self.terms
                    .seek_started
                    .after(self.terms.seek_timeout)
                    .min(repeat),
            );
        }
        if self.leader.is_some() {
            return None;
        }
        let mut at = self.terms.leader_contact.after(params.election_timeout);
        if let Some(t) = self.terms.pre_appended_at.values().next() {
            at = at.min(t.after(params.commit_timeout));
        }
        if let Some(t) = self.terms.forwarded.values().min() {
            at = at.min(t.after(params.request_timeout));
        }
        Some(at)
    }

    /// Leaves every term below `term` and asks for `term`: persists that first, then broadcasts
    /// a TermChange reporting what this replica holds.
    pub(super) fn seek_term(&mut self, term: Term, reason: &'static str) {
        if term <= self.term && (self.terms.seeking || term < self.term) {
            return;
        }
        tracing::info!(replica = %self.id, from = %self.term, to = %term, reason, "seeking a new term");
        self.metrics.term_changes_started += 1;
        self.term = term;
        self.leader = None;
        self.terms.seeking = true;
        self.terms.seek_started = self.now;
        self.terms.fetched.clear();
        self.persist(PersistOp::SeekTerm(term));
        self.terms.last_term_change_sent = self.now;
        if self.rebuilding() {
            return;
        }
        let tc = self.own_term_change(term);
        self.send(Target::AllOthers, ReplicaMessage::TermChange(tc.clone()));
        self.terms.changes.insert(self.id, tc);
        self.maybe_start_term(term);
    }

    /// The TermChange a restarted replica sends again for the term it was seeking.
    pub(super) fn own_term_change_for_restart(&mut self) -> TermChange {
        let tc = self.own_term_change(self.term);
        self.terms.changes.insert(self.id, tc.clone());
        tc
    }

    fn own_term_change(&self, term: Term) -> TermChange {
        let stable = self.stable_ec.clone();
        let above = stable.as_ref().map_or(0, |ec| ec.subject.index.0);
        let limit = self.cluster.params().max_prepared_per_term_change() as usize;
        let mut prepared: Vec<PreparedEntry> = (above + 1..=self.log.tip().0)
            .filter_map(|i| {
                let slot = self.log.get(Index(i))?;
                let certificate = slot.prepared.clone()?;
                let e = &slot.entry;
                Some(PreparedEntry {
                    certificate,
                    header: EntryHeader {
                        term: e.entry.term,
                        index: e.entry.index,
                        prev_hash: e.entry.prev_hash,
                        tx_root: merkle::root(&self.cluster_id, &e.tx_ids),
                    },
                })
            })
            .take(limit + 1)
            .collect();
        // The replica never holds more than the report limit (`within_report_limit`); should a
        // path ever break that, dropping the highest prepared entries here would silently lose
        // a possibly committed entry from the next term's choice.
        debug_assert!(
            prepared.len() <= limit,
            "replica {} holds more prepared entries than a TermChange reports",
            self.id
        );
        prepared.truncate(limit);
        TermChange::sign(&self.cluster_id, &self.key, self.id, term, stable, prepared)
    }

    /// A verified TermChange from its signer.
    pub(super) fn on_term_change(&mut self, tc: TermChange) {
        let from = tc.replica;
        if tc.new_term <= self.term && !self.terms.seeking {
            // The sender is behind: show it the term we are in.
            self.send_new_term_to(from);
            return;
        }
        if self
            .terms
            .changes
            .get(&from)
            .is_some_and(|old| old.new_term >= tc.new_term)
        {
            return;
        }
        let wanted = tc.new_term;
        self.terms.changes.insert(from, tc);
        // Join rule: f + 1 replicas ask for terms above ours, so at least one correct replica
        // does; join the smallest of them. One Byzantine replica alone can never force this.
        let above: Vec<Term> = self
            .terms
            .changes
            .values()
            .map(|c| c.new_term)
            .filter(|t| *t > self.term)
            .collect();
        if above.len() > self.cluster.f() {
            if let Some(smallest) = above.iter().min().copied() {
                self.seek_term(smallest, "f + 1 replicas ask for a later term");
            }
        }
        self.maybe_start_term(wanted);
    }

    /// The leader of `term` (whose signature the verifier checked) spoke in a term later than
    /// ours: we missed its start. Its word alone does not move us (a Byzantine leader of a
    /// future term could say anything), so ask it for the NewTerm, which proves the term
    /// started; at most once per heartbeat interval.
    pub(super) fn ask_for_new_term(&mut self, term: Term) {
        if term <= self.term {
            return;
        }
        let interval = self.cluster.params().heartbeat_interval;
        if self
            .terms
            .new_term_asked
            .is_some_and(|at| self.now < at.after(interval))
        {
            return;
        }
        self.terms.new_term_asked = Some(self.now);
        let leader = self.cluster.leader_of(term);
        self.send(Target::Replica(leader), ReplicaMessage::FetchNewTerm);
    }

    pub(super) fn send_new_term_to(&mut self, peer: ReplicaId) {
        let Some(nt) = self.terms.new_term.clone() else {
            return;
        };
        let interval = self.cluster.params().heartbeat_interval;
        if self
            .terms
            .new_term_sent
            .get(&peer)
            .is_some_and(|at| self.now < at.after(interval))
        {
            return;
        }
        self.terms.new_term_sent.insert(peer, self.now);
        self.send(Target::Replica(peer), ReplicaMessage::NewTerm(nt));
    }

    /// As the leader of the sought `term`, starts it once a quorum asked for it.
    fn maybe_start_term(&mut self, term: Term) {
        if !self.terms.seeking
            || term != self.term
            || self.cluster.leader_of(term) != self.id
            || self.rebuilding()
        {
            return;
        }
        let changes: Vec<TermChange> = self
            .terms
            .changes
            .values()
            .filter(|c| c.new_term == term)
            .cloned()
            .collect();
        if changes.len() < self.cluster.quorum() {
            return;
        }
        let chosen = match choice::choose(&self.cluster_id, self.cluster.quorum(), term, &changes) {
            Ok(chosen) => chosen,
            Err(e) => {
                tracing::error!(replica = %self.id, error = %e, "cannot choose a log");
                return;
            }
        };
        let nt = Arc::new(NewTerm::sign(
            &self.cluster_id,
            &self.key,
            term,
            changes,
            chosen.list(),
        ));
        // Entering persists the term first, so the NewTerm (queued after it) leaves only once
        // this leader's choice is durable: after a crash it cannot announce another one.
        self.enter_term(Arc::clone(&nt), chosen);
        self.send(Target::AllOthers, ReplicaMessage::NewTerm(nt));
    }

    /// Proof that the leader of `proof.term` equivocated: kept as evidence naming it and, for
    /// the current term, forwarded to every replica once and a reason to leave the term at once.
    /// Proofs about other terms are not forwarded: a Byzantine replica can sign any number of
    /// them for the terms it leads, and correct replicas must not echo them to each other.
    pub(super) fn on_equivocation(&mut self, proof: EquivocationProof) {
        if self.evidence.iter().any(|p| p.term == proof.term) {
            return;
        }
        let culprit = self.cluster.leader_of(proof.term);
        tracing::warn!(replica = %self.id, term = %proof.term, %culprit, "leader equivocated");
        let term = proof.term;
        if term == self.term {
            self.send(
                Target::AllOthers,
                ReplicaMessage::Equivocation(proof.clone()),
            );
        }
        self.evidence.push(proof);
        if self.evidence.len() > MAX_EVIDENCE {
            self.evidence.remove(0);
        }
        if term == self.term && !self.terms.seeking {
            self.seek_term(term.next(), "the leader equivocated");
        }
    }

    /// A verified NewTerm (from anyone).
    pub(super) fn on_new_term(&mut self, nt: Arc<NewTerm>, chosen: ChosenLog) {
        if nt.new_term < self.term || (nt.new_term == self.term && !self.terms.seeking) {
            return;
        }
        self.enter_term(nt, chosen);
    }

    /// Enters the term `nt` starts: keeps the chosen prefix it holds, drops the rest (never
    /// committed), and, as its leader, re-proposes the chosen entries.
    fn enter_term(&mut self, nt: Arc<NewTerm>, chosen: ChosenLog) {
        let term = nt.new_term;
        tracing::info!(replica = %self.id, %term, chosen = chosen.entries.len(), "entering a term");
        self.metrics.terms_entered += 1;
        self.term = term;
        self.terms.seeking = false;
        self.terms.seek_timeout = self.cluster.params().term_change_timeout;
        self.terms.leader_contact = self.now;
        self.terms.pre_appended_at.clear();
        self.terms.forwarded.clear();
        self.terms.fetched.clear();
        self.terms.changes.retain(|_, c| c.new_term > term);
        self.persist(PersistOp::EnterTerm(Arc::clone(&nt)));
        self.terms.new_term = Some(nt);
        self.terms.chosen = chosen
            .entries
            .iter()
            .map(|e| (e.header.index, e.hash))
            .collect();
        self.terms.base = chosen.base_index();
        if let Some(ec) = chosen.base.clone() {
            self.follower.catch_up_to(ec.subject.index);
            self.note_execution_certificate(ec);
        }
        // The log keeps what agrees with the choice; anything else above was never committed.
        let mut keep = chosen.base_index().max(self.log.commit_index());
        for e in &chosen.entries {
            if e.header.index <= keep {
                continue;
            }
            if self.log.hash_at(e.header.index) == Some(e.hash) && e.header.index == keep.next() {
                keep = e.header.index;
            } else {
                break;
            }
        }
        if self.log.tip() > keep {
            self.truncate_log(keep.next());
        }
        self.leader = None;
        if self.cluster.leader_of(term) == self.id && !self.rebuilding() {
            self.leader = Some(LeaderState::new(&self.log));
            self.repropose_chosen();
        }
        self.execute_committed();
        self.request_fetch();
    }

    /// The new leader proposes again, in its term, each chosen entry above its commit index, in
    /// order; it fetches any it lacks.
    pub(super) fn repropose_chosen(&mut self) {
        let term = self.term;
        let end = self.terms.chosen_end();
        // Entries up to the base are committed: they come by fetching, not by re-proposal.
        let mut index = self.log.commit_index().max(self.terms.base).next();
        while index <= end {
            let Some(hash) = self.terms.chosen.get(&index).copied() else {
                break;
            };
            let voted = self
                .votes
                .contains_key(&(crate::message::Phase::PreAppend, term, index));
            if let Some(slot) = self.log.get(index) {
                if slot.entry.hash == hash {
                    if !voted {
                        let entry = slot.entry.clone();
                        self.propose_entry(entry);
                    }
                    index = index.next();
                    continue;
                }
            }
            if index == self.log.tip().next() {
                if let Some(entry) = self.terms.fetched.remove(&index) {
                    self.propose_entry(entry);
                    index = index.next();
                    continue;
                }
                let interval = self.cluster.params().heartbeat_interval;
                if self.now >= self.terms.fetch_chosen_sent.after(interval)
                    || self.terms.fetch_chosen_sent == Time(0)
                {
                    self.terms.fetch_chosen_sent = self.now;
                    self.send(
                        Target::AllOthers,
                        ReplicaMessage::FetchChosen { index, hash },
                    );
                }
            }
            break;
        }
    }

    /// Someone asks for an entry of a chosen log.
    pub(super) fn serve_chosen(&mut self, peer: ReplicaId, index: Index, hash: Digest) {
        let Some(entry) = self
            .log
            .get(index)
            .filter(|s| s.entry.hash == hash)
            .map(|s| Arc::clone(&s.entry.entry))
        else {
            return;
        };
        if peer == self.id || !self.may_serve(peer, index) {
            return;
        }
        self.send(Target::Replica(peer), ReplicaMessage::ChosenEntry(entry));
    }

    /// An entry fetched for re-proposal.
    pub(super) fn on_chosen_entry(&mut self, entry: CheckedEntry) {
        let index = entry.entry.index;
        if self.leader.is_none() || self.terms.chosen.get(&index) != Some(&entry.hash) {
            return;
        }
        if index > self.log.tip() {
            self.terms.fetched.insert(index, entry);
            self.repropose_chosen();
        }
    }

    /// Whether `entry` may be proposed in the current term at its index: fresh entries carry the
    /// term; older ones only as the chosen entry at their index.
    pub(super) fn fits_chosen_log(&self, entry: &CheckedEntry) -> Result<(), &'static str> {
        let index = entry.entry.index;
        match self.terms.chosen.get(&index) {
            Some(hash) if *hash == entry.hash => Ok(()),
            Some(_) => Err("pre-append contradicts the chosen log"),
            None if index <= self.terms.chosen_end() => {
                Err("pre-append contradicts the chosen log")
            }
            None if entry.entry.term == self.term => Ok(()),
            None => Err("pre-append of an entry from another term"),
        }
    }
}
