//! The replica state machine, sans-IO.
//!
//! Inputs come in through `on_message`, `on_client_tx`, `on_tick` and `on_persisted`, each with
//! the current time; the work to do comes out of [`Replica::ready`]: state to persist, messages
//! and replies to send, and when to tick next. Messages that depend on state not yet durable are
//! held back until the caller confirms persistence, so a caller cannot break persist-before-speak
//! by sending what it is given.
//!
//! This covers the normal case: one term, its leader batching and pipelining entries through
//! PreAppend, Append and Commit, execution, replies and execution certificates.

#[cfg(test)]
mod checkpoint_tests;
mod checkpoints;
pub(crate) mod execution;
mod follower;
mod leader;
mod log;
mod outbox;
mod term;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use outbox::{OutMessage, Ready, Target};

use crate::crypto::KeyPair;
use crate::manifest::Cluster;
use crate::message::{
    Certificate, Entry, Outcome, Phase, Rejection, ReplicaMessage, Vote, VoteSubject,
};
use crate::persist::{DurableState, PersistOp};
use crate::state_machine::StateMachine;
use crate::types::{Digest, Index, ReplicaId, Term, Time};
use crate::verify::{CheckedEntry, CheckedTx, Verified, VerifiedMessage};

use execution::Execution;

/// The hash map of the per-tx hot path (keys are client keys, which clients choose, and
/// digests). `ahash` with per-process random keys resists hash flooding and is several times
/// faster than SipHash here. Its iteration order is random: never let it reach an output.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
use leader::LeaderState;
use log::Log;
use outbox::{Out, Outbox};

/// Why a replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The key does not belong to the replica id in the manifest.
    #[error("the key given for replica {id} is not its key in the manifest")]
    WrongKey {
        /// The replica id.
        id: ReplicaId,
    },
    /// The id is not in the manifest.
    #[error("replica {0} is not in the manifest")]
    NotAMember(ReplicaId),
    /// The durable checkpoint does not decode or does not match its certificate.
    #[error("durable checkpoint at index {index} is unusable: {error}")]
    BadCheckpoint {
        /// Its index.
        index: Index,
        /// What is wrong.
        error: crate::checkpoint::CheckpointError,
    },
    /// The durable log is not a hash chain from genesis.
    #[error("durable log is inconsistent at index {index}: {why}")]
    InconsistentLog {
        /// Where.
        index: Index,
        /// What is wrong.
        why: &'static str,
    },
}

/// Counters of what a replica did and refused. Refusals are keyed by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Entries this replica proposed as leader.
    pub proposed_entries: u64,
    /// Entries executed.
    pub executed_entries: u64,
    /// Txs executed.
    pub executed_txs: u64,
    /// Txs skipped at execution because their `(client, ts)` was not new.
    pub skipped_txs: u64,
    /// Votes sent.
    pub votes_sent: u64,
    /// Certificates formed as leader.
    pub certificates_formed: u64,
    /// Messages retransmitted by the leader.
    pub retransmissions: u64,
    /// Fetch requests sent.
    pub fetches_sent: u64,
    /// Term changes this replica started or joined.
    pub term_changes_started: u64,
    /// Terms this replica entered.
    pub terms_entered: u64,
    /// Heartbeats sent as leader.
    pub heartbeats_sent: u64,
    /// Checkpoints this replica took that became stable (its log was compacted to them).
    pub checkpoints: u64,
    /// Checkpoints installed from a peer (state transfers).
    pub state_transfers: u64,
    /// Times this replica found its state digest differing from an execution certificate.
    pub divergences: u64,
    /// Inputs refused by the protocol logic, by reason.
    pub refused: BTreeMap<&'static str, u64>,
}

/// A replica's view of whether its state matches the cluster's execution certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    /// The index whose execution certificate disagrees.
    pub index: Index,
    /// The digest the certificate proves.
    pub certified: Digest,
    /// The digest this replica computed.
    pub local: Digest,
}

/// One replica.
pub struct Replica<S> {
    cluster: Arc<Cluster>,
    cluster_id: Digest,
    id: ReplicaId,
    key: KeyPair,
    now: Time,
    term: Term,
    log: Log,
    exec: Execution<S>,
    /// Votes cast, by `(phase, term, index)`: never vote otherwise for the same key.
    votes: BTreeMap<(Phase, Term, Index), VoteSubject>,
    leader: Option<LeaderState>,
    follower: follower::FollowerState,
    terms: term::TermState,
    /// Proofs of leaders' equivocation, naming the culprits.
    evidence: Vec<crate::message::EquivocationProof>,
    /// The newest execution certificate seen.
    latest_ec: Option<Certificate>,
    /// The newest execution certificate whose entry this replica holds: the base of its
    /// TermChange, and of how far ahead it accepts proposals.
    stable_ec: Option<Certificate>,
    diverged: Option<Divergence>,
    checkpoints: checkpoints::Checkpoints,
    /// Set while rebuilding after a lost disk (see [`Replica::rebuild`]): no votes until the
    /// stable checkpoint reaches it (`Index(u64::MAX)`: not known yet). `Index(0)`: none.
    vote_floor: Index,
    outbox: Outbox,
    metrics: Metrics,
}

impl<S: StateMachine> Replica<S> {
    /// Starts (or restarts) replica `id` from what it made durable, with a fresh application
    /// state: the committed log is re-executed (without sending replies) to rebuild it.
    pub fn new(
        cluster: Arc<Cluster>,
        id: ReplicaId,
        key: KeyPair,
        app: S,
        durable: DurableState,
        now: Time,
    ) -> Result<Self, ReplicaError> {
        let expected = cluster.key_of(id).ok_or(ReplicaError::NotAMember(id))?;
        if *expected != key.public() {
            return Err(ReplicaError::WrongKey { id });
        }
        let cluster_id = *cluster.cluster_id();
        let interval = cluster.params().checkpoint_interval;
        let mut replica = Replica {
            cluster_id,
            id,
            key,
            now,
            term: Term(0),
            log: Log::new(cluster_id),
            exec: Execution::new(app, &cluster_id, interval),
            votes: durable.votes,
            leader: None,
            follower: follower::FollowerState::default(),
            terms: term::TermState::new(now, cluster.params().term_change_timeout),
            evidence: Vec::new(),
            latest_ec: None,
            stable_ec: None,
            diverged: None,
            checkpoints: checkpoints::Checkpoints::default(),
            vote_floor: durable.vote_floor,
            outbox: Outbox::new(),
            metrics: Metrics::default(),
            cluster,
        };
        replica.restore_checkpoint(durable.checkpoint, durable.compacted_below)?;
        replica.recover(durable.entries, durable.certificates)?;
        replica.term = durable.term;
        if let Some(nt) = durable.new_term {
            // Our own durable record of a NewTerm we verified when we entered its term.
            let cluster = &replica.cluster;
            if let Ok(chosen) = crate::choice::choose(
                cluster.cluster_id(),
                cluster.quorum(),
                nt.new_term,
                &nt.term_changes,
            ) {
                replica.terms.chosen = chosen
                    .entries
                    .iter()
                    .map(|e| (e.header.index, e.hash))
                    .collect();
                replica.terms.base = chosen.base_index();
            }
            replica.terms.new_term = Some(nt);
        }
        if durable.seeking {
            // Ask again for the term we were seeking when we stopped.
            replica.terms.seeking = true;
            if !replica.rebuilding() {
                let tc = replica.own_term_change_for_restart();
                replica.send(Target::AllOthers, ReplicaMessage::TermChange(tc));
            }
        } else if replica.cluster.leader_of(replica.term) == id && !replica.rebuilding() {
            replica.leader = Some(LeaderState::new(&replica.log));
            replica.resume_proposals();
            replica.repropose_chosen();
        }
        Ok(replica)
    }

    /// Starts a replica whose durable state was lost or found corrupt, from nothing: it
    /// rebuilds its state from its peers (a checkpoint and the entries above it).
    ///
    /// It no longer knows what it voted for, so it must not vote again where it may have voted
    /// before: it asks its peers how far they committed (each answer proved by a certificate),
    /// and casts no vote, proposes nothing and reports no prepared entry until its stable
    /// checkpoint passes the highest of `q` answers plus the most entries a replica holds above
    /// its checkpoint. Until then it counts against the `f` faulty replicas the cluster
    /// tolerates. The caller gives it a fresh, empty store; the restriction is the first thing
    /// it persists, so a crash while rebuilding does not end it. A crash before that first batch
    /// is durable leaves the store empty again: a replica that ran before and finds its store
    /// empty must always be started with `rebuild`, never with [`Replica::new`].
    pub fn rebuild(
        cluster: Arc<Cluster>,
        id: ReplicaId,
        key: KeyPair,
        app: S,
        now: Time,
    ) -> Result<Self, ReplicaError> {
        let floor = Index(u64::MAX);
        let durable = DurableState {
            vote_floor: floor,
            ..DurableState::default()
        };
        let mut replica = Replica::new(cluster, id, key, app, durable, now)?;
        tracing::warn!(replica = %id, "rebuilding from peers: no votes until caught up");
        replica.persist(PersistOp::VoteFloor(floor));
        Ok(replica)
    }

    /// Restores the durable checkpoint, if any: the state it holds, and the log's base.
    fn restore_checkpoint(
        &mut self,
        checkpoint: Option<Arc<crate::checkpoint::Checkpoint>>,
        compacted_below: Index,
    ) -> Result<(), ReplicaError> {
        let Some(cp) = checkpoint else {
            if compacted_below > Index(0) {
                return Err(ReplicaError::InconsistentLog {
                    index: compacted_below,
                    why: "the log was compacted, but no checkpoint was kept",
                });
            }
            return Ok(());
        };
        let index = cp.index();
        if compacted_below > index.next() {
            return Err(ReplicaError::InconsistentLog {
                index: compacted_below,
                why: "the log was compacted beyond the checkpoint kept",
            });
        }
        let params = self.cluster.params();
        let state = cp
            .decode(params.checkpoint_interval, params.max_checkpoint_bytes)
            .map_err(|e| ReplicaError::BadCheckpoint { index, error: e })?;
        let certified = cp.certificate.subject.state_digest.unwrap_or(Digest::ZERO);
        self.exec
            .restore(&self.cluster_id, state, certified)
            .map_err(|e| ReplicaError::BadCheckpoint { index, error: e })?;
        self.log.restart_at(index, cp.entry_hash());
        self.latest_ec = Some(cp.certificate.clone());
        self.stable_ec = Some(cp.certificate.clone());
        self.checkpoints.stable = Some(cp);
        Ok(())
    }

    fn recover(
        &mut self,
        entries: BTreeMap<Index, Arc<Entry>>,
        certificates: BTreeMap<(Phase, Index), Certificate>,
    ) -> Result<(), ReplicaError> {
        let base = self.log.base();
        for (index, entry) in entries.range(base.next()..) {
            let (index, entry) = (*index, Arc::clone(entry));
            if index != self.log.tip().next() || entry.index != index {
                return Err(ReplicaError::InconsistentLog {
                    index,
                    why: "entries are not contiguous from the checkpoint (or 1)",
                });
            }
            if entry.prev_hash != self.log.tip_hash() {
                return Err(ReplicaError::InconsistentLog {
                    index,
                    why: "prev_hash does not match the entry below",
                });
            }
            let tx_ids = entry
                .txs
                .iter()
                .map(|t| t.id(&self.cluster_id))
                .collect::<Vec<_>>();
            let hash = crate::message::entry_hash(
                &self.cluster_id,
                entry.term,
                entry.index,
                &entry.prev_hash,
                &tx_ids,
            );
            self.log.push(CheckedEntry {
                entry,
                hash,
                tx_ids,
            });
        }
        for ((phase, index), cert) in certificates {
            let matches = self.log.hash_at(index) == Some(cert.subject.entry_hash);
            match phase {
                Phase::PreAppend if matches => {
                    if let Some(slot) = self.log.get_mut(index) {
                        slot.prepared = Some(cert);
                    }
                }
                Phase::Append if matches => self.log.set_committed(cert),
                Phase::Commit => self.note_execution_certificate(cert),
                _ => {}
            }
        }
        // Replay the committed prefix: deterministic, so it rebuilds the same state and the
        // same client table. Replies were sent before the crash (or clients will retry).
        while self.exec.applied() < self.log.commit_index() {
            let next = self.exec.applied().next();
            let Some(slot) = self.log.get(next) else {
                break;
            };
            let done = self.exec.execute(&self.cluster_id, &slot.entry, None);
            self.metrics.executed_entries += 1;
            self.metrics.executed_txs += done.executed_txs as u64;
            if let Some(state) = done.checkpoint {
                self.took_checkpoint(state);
            }
        }
        self.check_execution_certificate();
        Ok(())
    }

    // ----- inputs -----

    /// Handles a verified message from replica `from`.
    pub fn on_message(&mut self, now: Time, from: ReplicaId, msg: Verified<VerifiedMessage>) {
        self.now = self.now.max(now);
        self.dispatch(from, msg.into_inner());
        self.after_input();
    }

    /// Reports that replica `from` sent bytes that did not decode or a message that failed
    /// verification. Over an authenticated, integrity-protected transport (QUIC with TLS) that is
    /// the sender's own doing: if the sender leads the current term, this replica leaves the
    /// term at once (PROTOCOL.md section 4). From anyone else it changes nothing; the caller
    /// drops the message either way.
    ///
    /// Call it only for bytes that arrived intact on the peer's authenticated connection, never
    /// for input whose origin the transport does not vouch for.
    pub fn on_invalid_message(&mut self, now: Time, from: ReplicaId) {
        self.now = self.now.max(now);
        if from == self.cluster.leader_of(self.term) && from != self.id && !self.terms.seeking {
            self.seek_term(self.term.next(), "the leader sent an invalid message");
        }
        self.after_input();
    }

    /// Handles a verified tx that a client sent to this replica.
    pub fn on_client_tx(&mut self, now: Time, tx: Verified<CheckedTx>) {
        self.now = self.now.max(now);
        self.client_tx(tx.into_inner(), true);
        self.after_input();
    }

    /// Advances time: closes batches whose delay expired, retransmits.
    pub fn on_tick(&mut self, now: Time) {
        self.now = self.now.max(now);
        self.leader_tick();
        self.follower_tick();
        self.term_tick();
        self.checkpoint_tick();
        self.after_input();
    }

    /// Confirms that the persist batch `batch_id` (and all before it) is durable; releases the
    /// messages that waited for it.
    pub fn on_persisted(&mut self, now: Time, batch_id: u64) {
        self.now = self.now.max(now);
        self.outbox.confirm(batch_id);
        self.after_input();
    }

    /// Takes the work produced so far.
    pub fn ready(&mut self) -> Ready {
        let next = self.next_tick();
        self.outbox.take_ready(next)
    }

    fn after_input(&mut self) {
        // Messages to ourselves (the leader's own votes) are handled once released.
        while let Some(vote) = self.outbox.next_loopback() {
            self.on_vote(vote);
        }
        if self.leader.is_some() && self.log.tip() < self.terms.chosen_end() {
            self.repropose_chosen();
        }
        self.maybe_propose();
    }

    fn dispatch(&mut self, from: ReplicaId, msg: VerifiedMessage) {
        // Only what a leader sends as leader shows it is alive (a leader that sends nothing but,
        // say, fetch requests must still be suspected).
        let leads = matches!(
            msg,
            VerifiedMessage::PreAppend { .. }
                | VerifiedMessage::Append(_)
                | VerifiedMessage::Commit(_)
                | VerifiedMessage::Executed(_)
                | VerifiedMessage::Heartbeat { .. }
        );
        if leads
            && from != self.id
            && !self.terms.seeking
            && from == self.cluster.leader_of(self.term)
        {
            self.terms.leader_contact = self.now;
        }
        match msg {
            VerifiedMessage::PreAppend {
                term,
                entry,
                leader_sig,
            } => {
                self.on_pre_append(term, entry, leader_sig);
            }
            VerifiedMessage::Vote(v) => self.on_vote(v),
            VerifiedMessage::Append(pc) => self.on_prepared(pc),
            VerifiedMessage::Commit(cc) => self.on_committed(cc),
            VerifiedMessage::Executed(ec) => {
                self.note_execution_certificate(ec);
                self.check_execution_certificate();
            }
            VerifiedMessage::Forward(tx) => self.client_tx(tx, false),
            VerifiedMessage::Heartbeat { term, commit } => self.on_heartbeat(term, commit),
            VerifiedMessage::TermChange(tc) => self.on_term_change(tc),
            VerifiedMessage::NewTerm(nt, chosen) => self.on_new_term(nt, chosen),
            VerifiedMessage::FetchChosen { index, hash } => self.serve_chosen(from, index, hash),
            VerifiedMessage::ChosenEntry(entry) => self.on_chosen_entry(entry),
            VerifiedMessage::Equivocation(proof) => self.on_equivocation(proof),
            VerifiedMessage::FetchEntries { from: lo, to: hi } => self.serve_fetch(from, lo, hi),
            VerifiedMessage::Entries {
                entries,
                certificate,
            } => self.on_entries(from, entries, certificate),
            VerifiedMessage::FetchCheckpoint {
                above,
                index,
                offset,
            } => self.serve_checkpoint(from, above, index, offset),
            VerifiedMessage::CheckpointChunk(chunk) => self.on_checkpoint_chunk(from, chunk),
            VerifiedMessage::FetchStatus => self.serve_status(from),
            VerifiedMessage::FetchNewTerm => self.send_new_term_to(from),
            VerifiedMessage::Status(cert) => self.on_status(from, cert),
        }
    }

    // ----- shared helpers -----

    fn refuse(&mut self, reason: &'static str) {
        *self.metrics.refused.entry(reason).or_insert(0) += 1;
        tracing::debug!(replica = %self.id, reason, "refused input");
    }

    fn send(&mut self, to: Target, message: ReplicaMessage) {
        match message {
            // The leader's own votes: handled locally once durable.
            ReplicaMessage::Vote(vote) if to == Target::Replica(self.id) => {
                self.outbox.push(Out::Loopback(vote));
            }
            _ if to == Target::Replica(self.id) => {
                debug_assert!(false, "replica sends itself a {}", message.kind());
            }
            _ => self.outbox.push(Out::Message(OutMessage { to, message })),
        }
    }

    fn persist(&mut self, op: PersistOp) {
        self.outbox.persist(op);
    }

    /// Drops the entries from `index` on (never committed): from disk, from the log, and from
    /// what the leader still drives or the commit timer watches.
    fn truncate_log(&mut self, index: Index) {
        self.persist(PersistOp::TruncateFrom(index));
        self.log.truncate_from(index);
        if let Some(leader) = self.leader.as_mut() {
            leader.forget_from(index);
        }
        self.terms.pre_appended_at.split_off(&index);
    }

    /// Casts a vote unless this replica already voted differently at `(phase, term, index)`.
    /// Persists the vote, and sends it to the leader once durable. Returns false if refused.
    fn vote(&mut self, subject: VoteSubject) -> bool {
        if self.terms.seeking || subject.term != self.term {
            return false; // no votes while changing terms, nor in any term but the current one
        }
        if self.rebuilding() {
            return false; // it may have voted otherwise before it lost its disk
        }
        let key = (subject.phase, subject.term, subject.index);
        match self.votes.get(&key) {
            Some(prev) if *prev != subject => {
                self.refuse("would vote twice for one (phase, term, index)");
                return false;
            }
            Some(_) => {}
            None => {
                self.votes.insert(key, subject);
                self.persist(PersistOp::Vote(subject));
            }
        }
        let vote = Vote::sign(&self.cluster_id, &self.key, self.id, subject);
        self.metrics.votes_sent += 1;
        let leader = self.cluster.leader_of(self.term);
        self.send(Target::Replica(leader), ReplicaMessage::Vote(vote));
        true
    }

    fn reply_to_client(&mut self, client: crate::types::ClientId, ts: u64, outcome: Outcome) {
        let reply =
            execution::single_reply(&self.cluster_id, &self.key, self.id, client, ts, outcome);
        self.outbox.push(Out::Replies(vec![reply]));
    }

    /// Applies committed entries in order, sending replies and Commit votes.
    fn execute_committed(&mut self) {
        while self.diverged.is_none()
            && self.checkpoints.needed_above.is_none()
            && self.exec.applied() < self.log.commit_index()
        {
            let index = self.exec.applied().next();
            let Some(slot) = self.log.get(index) else {
                break;
            };
            let hash = slot.entry.hash;
            let done = self
                .exec
                .execute(&self.cluster_id, &slot.entry, Some((&self.key, self.id)));
            self.metrics.executed_entries += 1;
            self.metrics.executed_txs += done.executed_txs as u64;
            tracing::trace!(replica = %self.id, %index, txs = done.executed_txs, "commit: executed");
            self.metrics.skipped_txs += done.skipped_txs as u64;
            if !done.replies.is_empty() {
                self.outbox.push(Out::Replies(done.replies));
            }
            let checkpoint = done.checkpoint;
            self.vote(VoteSubject {
                phase: Phase::Commit,
                term: self.term,
                index,
                entry_hash: hash,
                state_digest: Some(done.digest),
            });
            if let Some(state) = checkpoint {
                self.took_checkpoint(state);
            }
            self.check_execution_certificate();
        }
    }

    fn note_execution_certificate(&mut self, ec: Certificate) {
        self.note_checkpoint_certificate(&ec);
        if self
            .latest_ec
            .as_ref()
            .is_none_or(|old| old.subject.index < ec.subject.index)
        {
            self.latest_ec = Some(ec);
        }
        self.refresh_stable();
    }

    /// Promotes the newest execution certificate to the stable one once this replica holds its
    /// entry.
    fn refresh_stable(&mut self) {
        let Some(ec) = &self.latest_ec else { return };
        let newer = self
            .stable_ec
            .as_ref()
            .is_none_or(|s| s.subject.index < ec.subject.index);
        if newer && self.log.hash_at(ec.subject.index) == Some(ec.subject.entry_hash) {
            self.stable_ec = Some(ec.clone());
        }
    }

    /// True if this replica may hold an entry at `index`: within `max_log_entries` of its
    /// stable checkpoint (the log's base), and so within what its TermChange can report above
    /// its stable certificate (which is at or above the checkpoint).
    fn within_report_limit(&self, index: Index) -> bool {
        let limit = self.cluster.params().max_log_entries();
        index.0 <= self.log.base().0.saturating_add(limit)
    }

    /// Compares this replica's digest with the newest execution certificate it can check.
    fn check_execution_certificate(&mut self) {
        let Some(ec) = &self.latest_ec else { return };
        let index = ec.subject.index;
        let Some(certified) = ec.subject.state_digest else {
            return;
        };
        if index > self.exec.applied() || self.diverged.is_some() {
            return;
        }
        let certified_hash_matches = self.log.hash_at(index) == Some(ec.subject.entry_hash);
        match self.exec.digest_at(index) {
            Some(local) if local != certified || !certified_hash_matches => {
                tracing::error!(
                    replica = %self.id, %index, %certified, %local,
                    "state diverged from the execution certificate; execution stopped"
                );
                self.diverged = Some(Divergence {
                    index,
                    certified,
                    local,
                });
                self.metrics.divergences += 1;
                // Recovery: a peer's checkpoint at or above the index that disagrees.
                self.need_checkpoint_from(index);
            }
            _ => {}
        }
    }

    fn next_tick(&self) -> Option<Time> {
        let leader = self
            .leader
            .as_ref()
            .and_then(|l| l.next_deadline(&self.cluster));
        let follower = self.follower.next_deadline(&self.cluster);
        let term = self.term_deadline();
        let checkpoints = self
            .checkpoints
            .next_deadline(self.cluster.params().heartbeat_interval * 4)
            .or_else(|| {
                // Asking for a checkpoint (or the status, while rebuilding) starts on a tick.
                (self.checkpoints.needed_above.is_some() || self.rebuilding())
                    .then(|| self.now.after(self.cluster.params().heartbeat_interval))
            });
        [leader, follower, term, checkpoints]
            .into_iter()
            .flatten()
            .min()
    }

    // ----- inspection -----

    /// This replica's id.
    pub fn id(&self) -> ReplicaId {
        self.id
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The leader of the current term.
    pub fn leader(&self) -> ReplicaId {
        self.cluster.leader_of(self.term)
    }

    /// True if this replica leads the current term.
    pub fn is_leader(&self) -> bool {
        self.leader.is_some()
    }

    /// When this replica last heard a heartbeat from the leader of its term (`Time(0)`: never).
    pub fn last_leader_contact(&self) -> Time {
        self.terms.leader_contact
    }

    /// Proofs of equivocation this replica holds (each names a culprit: the leader of its term).
    pub fn evidence(&self) -> &[crate::message::EquivocationProof] {
        &self.evidence
    }

    /// True while this replica is changing terms (it has left its term and seeks the next).
    pub fn is_changing_term(&self) -> bool {
        self.terms.seeking
    }

    /// The highest committed index this replica knows.
    pub fn commit_index(&self) -> Index {
        self.log.commit_index()
    }

    /// The highest index in the log.
    pub fn last_index(&self) -> Index {
        self.log.tip()
    }

    /// The highest executed index.
    pub fn applied_index(&self) -> Index {
        self.exec.applied()
    }

    /// The state digest after the last executed entry.
    pub fn state_digest(&self) -> Digest {
        self.exec.digest()
    }

    /// The state digest after executing `index`, if still remembered.
    pub fn state_digest_at(&self, index: Index) -> Option<Digest> {
        self.exec.digest_at(index)
    }

    /// The committed entries, in order.
    pub fn committed_entries(&self) -> impl Iterator<Item = &Entry> {
        self.log.committed_entries().map(|e| &*e.entry)
    }

    /// The entry at `index`, if held (entries at and below the stable checkpoint are not).
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        self.log.get(index).map(|s| &*s.entry.entry)
    }

    /// The hash of the entry at `index`, if present.
    pub fn entry_hash(&self, index: Index) -> Option<Digest> {
        self.log.hash_at(index)
    }

    /// The application.
    pub fn app(&self) -> &S {
        &self.exec.app
    }

    /// Counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Set once this replica's state disagrees with an execution certificate.
    pub fn divergence(&self) -> Option<&Divergence> {
        self.diverged.as_ref()
    }

    /// The newest execution certificate this replica holds.
    pub fn latest_execution_certificate(&self) -> Option<&Certificate> {
        self.latest_ec.as_ref()
    }

    /// Number of entries held in memory (those above the stable checkpoint).
    pub fn log_len(&self) -> usize {
        self.log.len()
    }

    /// The stable checkpoint's index (`Index(0)`: none yet).
    pub fn checkpoint_index(&self) -> Index {
        self.checkpoints.stable_index()
    }

    /// The stable checkpoint, if any (what this replica restarts from and serves to peers).
    pub fn stable_checkpoint(&self) -> Option<&Arc<crate::checkpoint::Checkpoint>> {
        self.checkpoints.stable.as_ref()
    }

    /// Votes remembered (bounded: those below the stable checkpoint are dropped).
    pub fn votes_len(&self) -> usize {
        self.votes.len()
    }

    /// True while this replica rebuilds after a lost disk and does not vote yet.
    pub fn is_rebuilding(&self) -> bool {
        self.rebuilding()
    }

    /// Number of outgoing messages waiting for persistence.
    pub fn held_messages(&self) -> usize {
        self.outbox.held_len()
    }

    /// True if persistence work is outstanding.
    pub fn persistence_outstanding(&self) -> bool {
        self.outbox.persistence_outstanding()
    }

    /// Client txs refused at admission are answered with a signed refusal.
    fn refuse_tx(&mut self, tx: &CheckedTx, rejection: Rejection, reply: bool) {
        self.refuse(match &rejection {
            Rejection::Stale { .. } => "stale tx",
            Rejection::TooLarge { .. } => "oversized tx",
            Rejection::Refused(_) => "tx refused by the state machine",
            Rejection::Busy => "leader queue full",
        });
        if reply {
            self.reply_to_client(tx.tx.client, tx.tx.ts, Outcome::Rejected(rejection));
        }
    }
}
