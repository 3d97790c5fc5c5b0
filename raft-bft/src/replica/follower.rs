//! Every replica's side of the three phases (the leader runs it too, for its own proposals):
//! PreAppend, Append and Commit checks, buffering of out-of-order messages, and catch-up by
//! fetching committed entries.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::HashMap;
use super::{Replica, Target};
use crate::manifest::Cluster;
use crate::message::{Certificate, EquivocationProof, Phase, ReplicaMessage, VoteSubject};
use crate::persist::PersistOp;
use crate::state_machine::StateMachine;
use crate::types::{Index, ReplicaId, Signature, Term, Time};
use crate::verify::{CheckedEntry, MAX_ENTRIES_PER_MESSAGE};

/// Out-of-order input kept until the log catches up, and the fetch in progress.
#[derive(Debug, Default)]
pub(crate) struct FollowerState {
    /// PreAppends above the tip + 1, by index.
    early_proposals: BTreeMap<Index, (Term, CheckedEntry, Signature)>,
    /// Certificates for entries above the tip, by (index, phase).
    early_certificates: BTreeMap<(Index, Phase), Certificate>,
    /// When the outstanding fetch was sent, and to whom.
    fetch: Option<(Time, ReplicaId)>,
    /// Whom to ask next: the leader at first, then the next replica after each timeout. Only a
    /// peer that answered a fetch with progress is asked again at once, so a peer that sends
    /// useless or unsolicited answers cannot hold the fetch.
    fetch_peer: Option<ReplicaId>,
    /// Per peer, when this replica last served it and the range's first index: bounds what a
    /// peer can make this replica send.
    served: BTreeMap<ReplicaId, (Time, Index)>,
    /// Catch up at least to this index (set when a new term's base is above our log).
    goal: Index,
}

impl FollowerState {
    pub(crate) fn next_deadline(&self, cluster: &Cluster) -> Option<Time> {
        self.fetch
            .map(|(at, _)| at.after(cluster.params().heartbeat_interval))
    }

    pub(crate) fn catch_up_to(&mut self, index: Index) {
        self.goal = self.goal.max(index);
    }

    /// How far ahead of the tip out-of-order messages are kept.
    fn window(cluster: &Cluster) -> u64 {
        2 * u64::from(cluster.params().pipeline_depth)
    }
}

impl<S: StateMachine> Replica<S> {
    /// Handles a proposal. Returns true if the entry is (now) in the log with this replica's
    /// PreAppend vote.
    pub(super) fn on_pre_append(
        &mut self,
        term: Term,
        entry: CheckedEntry,
        leader_sig: Signature,
    ) -> bool {
        if term != self.term || self.terms.seeking {
            self.refuse("pre-append for another term");
            self.ask_for_new_term(term);
            return false;
        }
        if let Err(why) = self.fits_chosen_log(&entry) {
            self.refuse(why);
            return false;
        }
        let index = entry.entry.index;
        let subject = VoteSubject {
            phase: Phase::PreAppend,
            term,
            index,
            entry_hash: entry.hash,
            state_digest: None,
        };
        if index <= self.log.base() {
            // Compacted here: committed, so the chosen log (which this entry matches) holds the
            // committed entry at this index, and the vote changes nothing (see
            // `docs/protocol.md`, "Checkpoints").
            return self.terms.chosen.get(&index) == Some(&entry.hash) && self.vote(subject);
        }
        if index <= self.log.tip() {
            let Some(slot) = self.log.get_mut(index) else {
                return false;
            };
            if slot.entry.hash != entry.hash {
                let evidence =
                    slot.proposal
                        .filter(|(t, _)| *t == term)
                        .map(|(_, sig)| EquivocationProof {
                            term,
                            index,
                            first: (slot.entry.hash, sig),
                            second: (entry.hash, leader_sig),
                        });
                self.refuse("pre-append conflicts with the entry held at its index");
                if let Some(proof) = evidence {
                    self.on_equivocation(proof);
                }
                return false;
            }
            if slot.proposal.is_none_or(|(t, _)| t < term) {
                slot.proposal = Some((term, leader_sig));
            }
            // A retransmission: answer again (voting is idempotent for the same subject).
            return self.vote(subject);
        }
        if index > self.log.tip().next() {
            if index.0 <= self.log.tip().0 + FollowerState::window(&self.cluster) {
                self.follower
                    .early_proposals
                    .insert(index, (term, entry, leader_sig));
            } else {
                self.refuse("pre-append too far ahead of the log");
            }
            return false;
        }
        if entry.entry.prev_hash != self.log.tip_hash() {
            self.refuse("pre-append does not chain to the log's tip");
            let own_tip = self
                .log
                .get(self.log.tip())
                .and_then(|slot| slot.proposal)
                .is_some_and(|(t, _)| t == term);
            if own_tip {
                // The tip is this leader's own proposal of this term, and it signed an entry
                // that does not chain to it: it broke its own chain (or equivocated below).
                self.seek_term(term.next(), "the leader broke its own hash chain");
            }
            return false;
        }
        if !self.txs_fresh(&entry) {
            self.refuse("pre-append holds a stale or repeated tx");
            return false;
        }
        if !self.within_report_limit(index) {
            self.refuse(
                "pre-append beyond what a TermChange can report above the stable certificate",
            );
            return false;
        }
        if self
            .votes
            .get(&(Phase::PreAppend, term, index))
            .is_some_and(|prev| *prev != subject)
        {
            // Checked before anything is kept: an entry this replica may not vote for must not
            // enter its log either.
            self.refuse("would vote twice for one (phase, term, index)");
            return false;
        }
        self.persist(PersistOp::Entry(Arc::clone(&entry.entry)));
        self.log.push(entry);
        if let Some(slot) = self.log.get_mut(index) {
            slot.proposal = Some((term, leader_sig));
        }
        if !self.vote(subject) {
            return false;
        }
        self.terms.pre_appended_at.insert(index, self.now);
        self.after_log_grew();
        if self.skips_pc_check() {
            self.vote_appends(None);
        }
        true
    }

    /// Every tx's `ts` is above its client's last executed and pending ones, and increases
    /// within the entry.
    fn txs_fresh(&self, entry: &CheckedEntry) -> bool {
        let mut seen: HashMap<_, u64> =
            HashMap::with_capacity_and_hasher(entry.entry.txs.len(), Default::default());
        entry.entry.txs.iter().all(|tx| {
            let floor = seen.get(&tx.client).copied().unwrap_or_else(|| {
                self.exec
                    .last_executed_ts(&tx.client)
                    .max(self.log.highest_ts(&tx.client))
            });
            seen.insert(tx.client, tx.ts);
            tx.ts > floor
        })
    }

    /// After entries were appended: apply buffered proposals and certificates that now fit.
    fn after_log_grew(&mut self) {
        self.refresh_stable();
        let tip = self.log.tip();
        // Certificates for entries that just arrived.
        let ready: Vec<_> = self
            .follower
            .early_certificates
            .range(..=(tip, Phase::Commit))
            .map(|(k, _)| *k)
            .collect();
        for key in ready {
            if let Some(cert) = self.follower.early_certificates.remove(&key) {
                match key.1 {
                    Phase::PreAppend => self.on_prepared(cert),
                    Phase::Append => self.on_committed(cert),
                    Phase::Commit => {}
                }
            }
        }
        self.follower.early_proposals = self.follower.early_proposals.split_off(&tip.next());
        if let Some((term, entry, sig)) = self.follower.early_proposals.remove(&tip.next()) {
            self.on_pre_append(term, entry, sig);
        }
    }

    /// Handles the leader's heartbeat: a follower that missed commits catches up from its
    /// certificate (committing what it holds, fetching what it lacks).
    pub(super) fn on_heartbeat(&mut self, term: Term, commit: Option<Certificate>) {
        if term != self.term || self.terms.seeking {
            self.refuse("heartbeat for another term");
            self.ask_for_new_term(term);
            return;
        }
        if let Some(cc) = commit.filter(|cc| cc.subject.index > self.log.commit_index()) {
            self.on_committed(cc);
        }
    }

    /// Handles a prepared certificate (an Append message).
    pub(super) fn on_prepared(&mut self, pc: Certificate) {
        let s = pc.subject;
        self.note_term_evidence(s.term);
        if s.term != self.term {
            self.refuse("prepared certificate of another term");
            return;
        }
        if s.index <= self.log.commit_index() {
            // Committed here already. A new leader that was behind re-proposes it in its term
            // and can only commit it with our Append vote: give it (the same entry, already
            // committed, so the vote changes nothing here).
            let held = self.log.hash_at(s.index).or_else(|| {
                // Compacted here: the chosen log holds the committed entry (see above).
                (s.index < self.log.base())
                    .then(|| self.terms.chosen.get(&s.index).copied())
                    .flatten()
            });
            if held == Some(s.entry_hash) {
                self.vote(VoteSubject {
                    phase: Phase::Append,
                    ..s
                });
            }
            return;
        }
        if s.index > self.log.tip() {
            self.keep_early_certificate(pc);
            self.request_fetch();
            return;
        }
        let Some(slot) = self.log.get_mut(s.index) else {
            return;
        };
        if slot.entry.hash != s.entry_hash {
            self.refuse("prepared certificate for another entry than the one held");
            return;
        }
        if slot
            .prepared
            .as_ref()
            .is_none_or(|old| old.subject.term < s.term)
        {
            slot.prepared = Some(pc.clone());
            self.persist(PersistOp::Certificate(pc));
        }
        self.vote_appends(Some(s.index));
    }

    /// Casts Append votes, in index order, for prepared entries whose lower entries are all
    /// prepared or committed. `resend` also answers again for that index if already voted.
    fn vote_appends(&mut self, resend: Option<Index>) {
        let mut index = self.log.commit_index().next();
        while index <= self.log.tip() {
            let Some(slot) = self.log.get(index) else {
                break;
            };
            let prepared = slot
                .prepared
                .as_ref()
                .filter(|pc| pc.subject.term == self.term)
                .map(|pc| pc.subject);
            let Some(prepared) = prepared.or_else(|| self.mutant_unprepared_subject(index)) else {
                break;
            };
            let subject = VoteSubject {
                phase: Phase::Append,
                ..prepared
            };
            debug_assert!(
                self.log.prefix_prepared(index, self.term) || self.skips_pc_check(),
                "Append vote at {index} without a prepared prefix"
            );
            let voted = self.votes.contains_key(&(Phase::Append, self.term, index));
            if !voted || resend == Some(index) {
                self.vote(subject);
            }
            index = index.next();
        }
    }

    /// The `skip-pc-check` mutant: votes Append for an entry this replica merely pre-appended.
    #[cfg(feature = "simulator")]
    fn mutant_unprepared_subject(&self, index: Index) -> Option<VoteSubject> {
        if !self.skips_pc_check() {
            return None;
        }
        let held = self.log.hash_at(index)?;
        self.votes
            .get(&(Phase::PreAppend, self.term, index))
            .copied()
            .filter(|v| v.entry_hash == held)
    }

    #[cfg(not(feature = "simulator"))]
    fn mutant_unprepared_subject(&self, _index: Index) -> Option<VoteSubject> {
        None
    }

    #[cfg(feature = "simulator")]
    fn skips_pc_check(&self) -> bool {
        self.cluster.has_mutant(crate::mutant::Mutant::SkipPcCheck)
    }

    #[cfg(not(feature = "simulator"))]
    fn skips_pc_check(&self) -> bool {
        false
    }

    /// Handles a commit certificate (a Commit message, or the leader's own).
    pub(super) fn on_committed(&mut self, cc: Certificate) {
        let s = cc.subject;
        self.note_term_evidence(s.term);
        if s.index > self.log.tip() {
            self.keep_early_certificate(cc);
            self.request_fetch();
            return;
        }
        if s.index < self.log.base() {
            return; // covered by the stable checkpoint
        }
        match self.log.hash_at(s.index) {
            Some(h) if h == s.entry_hash => {}
            _ if s.index <= self.log.commit_index() => {
                self.refuse("commit certificate conflicts with a committed entry");
                return;
            }
            _ => {
                // The entry held here was never committed (the CC proves another one): drop it
                // and everything after it, then fetch the committed one.
                self.refuse("commit certificate for another entry; replacing the suffix");
                self.truncate_log(s.index);
                self.keep_early_certificate(cc);
                self.request_fetch();
                return;
            }
        }
        if s.index <= self.log.commit_index() {
            // Already committed: the leader retransmits because it lacks our Commit vote.
            if let Some(vote) = self
                .votes
                .get(&(Phase::Commit, self.term, s.index))
                .copied()
            {
                self.vote(vote);
            }
            return;
        }
        self.persist(PersistOp::Certificate(cc.clone()));
        self.log.set_committed(cc);
        let commit = self.log.commit_index();
        self.terms.pre_appended_at = self.terms.pre_appended_at.split_off(&commit.next());
        self.execute_committed();
        self.vote_appends(None);
    }

    fn keep_early_certificate(&mut self, cert: Certificate) {
        let s = cert.subject;
        let limit = self.log.tip().0 + FollowerState::window(&self.cluster);
        if s.index.0 > limit && s.phase != Phase::Append {
            self.refuse("certificate too far ahead of the log");
            return;
        }
        // A CC far ahead is still worth one slot: it tells how far to fetch.
        if s.index.0 > limit {
            let far: Vec<_> = self
                .follower
                .early_certificates
                .range((Index(limit + 1), Phase::PreAppend)..)
                .map(|(k, _)| *k)
                .collect();
            for k in far {
                self.follower.early_certificates.remove(&k);
            }
        }
        self.follower
            .early_certificates
            .insert((s.index, s.phase), cert);
    }

    /// Asks a peer for the committed entries this replica lacks, unless a fetch is in progress.
    pub(super) fn request_fetch(&mut self) {
        if self.follower.fetch.is_some() {
            return; // answered, or timed out in `follower_tick`
        }
        let early = self
            .follower
            .early_certificates
            .keys()
            .filter(|(_, phase)| *phase == Phase::Append)
            .map(|(i, _)| *i)
            .next_back()
            .unwrap_or(Index(0));
        let target = early.max(self.follower.goal);
        if target == Index(0) {
            return;
        }
        let from = self.log.commit_index().next();
        // No further than the log may hold above its checkpoint; the rest once it moved up.
        let limit = self.cluster.params().max_log_entries();
        let target = target.min(Index(self.log.base().0.saturating_add(limit)));
        if target < from {
            return;
        }
        let peer = match self.follower.fetch_peer {
            Some(p) => p,
            None => {
                let leader = self.cluster.leader_of(self.term);
                if leader == self.id {
                    self.next_replica(leader)
                } else {
                    leader
                }
            }
        };
        if peer == self.id {
            return;
        }
        self.follower.fetch = Some((self.now, peer));
        self.metrics.fetches_sent += 1;
        self.send(
            Target::Replica(peer),
            ReplicaMessage::FetchEntries { from, to: target },
        );
    }

    /// The replica after `r` that is not this one.
    fn next_replica(&self, r: ReplicaId) -> ReplicaId {
        let n = self.cluster.n() as u32;
        let next = ReplicaId((r.0 + 1) % n);
        if next == self.id {
            ReplicaId((next.0 + 1) % n)
        } else {
            next
        }
    }

    /// True if this replica asked `peer` for entries and awaits the answer (which may be the
    /// first chunk of a checkpoint, if the peer compacted them).
    pub(super) fn follower_fetching_from(&self, peer: ReplicaId) -> bool {
        self.follower.fetch.is_some_and(|(_, p)| p == peer)
    }

    /// Gives up on a fetch that got no useful answer in time and asks the next peer: the one
    /// asked may be down, slow or lying.
    pub(super) fn follower_tick(&mut self) {
        if let Some((at, peer)) = self.follower.fetch {
            if self.now >= at.after(self.cluster.params().heartbeat_interval) {
                self.follower.fetch = None;
                self.follower.fetch_peer = Some(self.next_replica(peer));
                self.request_fetch();
            }
        }
    }

    /// Serves committed entries `from..=to` (as many as fit in one message), proved by the CC of
    /// the last one sent.
    ///
    /// A peer is served again at once only when it asks for the continuation of what it was last
    /// sent; any other request waits a heartbeat interval. A catching-up replica proceeds at full
    /// speed, while a peer cannot make this replica send the same entries over and over.
    pub(super) fn serve_fetch(&mut self, peer: ReplicaId, from: Index, to: Index) {
        if peer == self.id || from > self.log.commit_index() {
            return;
        }
        if from <= self.log.base() {
            // Compacted away here: the peer needs the checkpoint instead.
            self.serve_checkpoint(peer, Index(from.0.saturating_sub(1)), Index(0), 0);
            return;
        }
        if !self.may_serve(peer, from) {
            return;
        }
        let max = self.cluster.params().max_message_bytes / 2;
        let mut last = to
            .min(self.log.commit_index())
            .min(Index(from.0 + MAX_ENTRIES_PER_MESSAGE as u64 - 1));
        let mut bytes = 0u64;
        for i in from.0..=last.0 {
            let size: u64 = self.log.get(Index(i)).map_or(0, |s| {
                s.entry
                    .entry
                    .txs
                    .iter()
                    .map(|t| t.batch_bytes() as u64)
                    .sum()
            });
            if bytes + size > max && i > from.0 {
                last = Index(i - 1);
                break;
            }
            bytes += size;
        }
        let Some(proved) = self
            .log
            .last_certified_at_or_below(last)
            .filter(|i| *i >= from)
        else {
            return;
        };
        let Some(certificate) = self.log.get(proved).and_then(|s| s.committed.clone()) else {
            return;
        };
        let entries = (from.0..=proved.0)
            .filter_map(|i| self.log.get(Index(i)).map(|s| Arc::clone(&s.entry.entry)))
            .collect();
        self.send(
            Target::Replica(peer),
            ReplicaMessage::Entries {
                entries,
                certificate,
            },
        );
    }

    /// Whether `peer` may be sent entries starting at `from` now: at once if it asks for the
    /// continuation of what it was last sent, otherwise once per heartbeat interval. Records the
    /// answer. Shared by every path that sends entries on request, so no request is an
    /// unthrottled amplifier.
    pub(super) fn may_serve(&mut self, peer: ReplicaId, from: Index) -> bool {
        if let Some((at, last_from)) = self.follower.served.get(&peer) {
            let continuation = from > *last_from;
            if !continuation && self.now < at.after(self.cluster.params().heartbeat_interval) {
                self.refuse("entries requested again within a heartbeat interval");
                return false;
            }
        }
        self.follower.served.insert(peer, (self.now, from));
        true
    }

    /// Accepts committed entries fetched from a peer (the verifier checked the chain and the CC).
    pub(super) fn on_entries(
        &mut self,
        from: ReplicaId,
        entries: Vec<CheckedEntry>,
        certificate: Certificate,
    ) {
        let commit_before = self.log.commit_index();
        if !self.within_report_limit(certificate.subject.index) {
            self.refuse("fetched entries beyond what the log may hold above its checkpoint");
            return;
        }
        for entry in entries {
            let index = entry.entry.index;
            if index <= self.log.base() {
                continue; // covered by the stable checkpoint
            }
            if index <= self.log.tip() {
                if self.log.hash_at(index) == Some(entry.hash) {
                    continue;
                }
                if index <= self.log.commit_index() {
                    self.refuse("fetched entry conflicts with a committed entry");
                    return;
                }
                self.truncate_log(index);
            }
            if index != self.log.tip().next() || entry.entry.prev_hash != self.log.tip_hash() {
                self.refuse("fetched entries do not extend the log");
                return;
            }
            self.persist(PersistOp::Entry(Arc::clone(&entry.entry)));
            self.log.push(entry);
        }
        self.on_committed(certificate);
        self.after_log_grew();
        // Only an answer that made progress, from the peer asked, ends the fetch; anything else
        // (unsolicited, stale, useless) leaves it to time out and move on to another peer.
        let progressed = self.log.commit_index() > commit_before;
        if progressed && self.follower.fetch.is_some_and(|(_, p)| p == from) {
            self.follower.fetch = None;
            self.follower.fetch_peer = Some(from);
            self.request_fetch(); // the next range, if still behind
        }
    }
}
