//! The leader's side: admission, batching, pipelining, vote collection, certificates and
//! retransmission.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::log::Log;
use super::HashMap;
use super::{Replica, Target};
use crate::manifest::Cluster;
use crate::message::{
    pre_append_digest, Certificate, Heartbeat, Phase, PreAppend, Rejection, ReplicaMessage, Vote,
};
use crate::state_machine::StateMachine;
use crate::types::{ClientId, Digest, Index, ReplicaId, Signature, Time};
use crate::verify::{CheckedEntry, CheckedTx};

/// An entry the leader proposed and is still driving.
#[derive(Debug)]
struct Inflight {
    hash: Digest,
    proposal: PreAppend,
    /// The phase whose votes are being collected (Commit once the entry is committed).
    phase: Phase,
    votes: BTreeMap<ReplicaId, Signature>,
    /// Replicas known to hold the entry (they voted for its PreAppend).
    holders: BTreeSet<ReplicaId>,
    /// The newest certificate formed for it (PC, then CC).
    certificate: Option<Certificate>,
    /// Replicas that sent a Commit vote (they executed it).
    executed_by: BTreeSet<ReplicaId>,
    last_sent: Time,
    /// How long after `last_sent` the phase's message goes again to those who did not answer:
    /// the heartbeat interval, doubled after each retransmission of the proposal itself (see
    /// `proposal_backoff_cap`).
    resend_after: Duration,
}

/// The longest wait between two retransmissions of one proposal: eight heartbeat intervals,
/// and at most a quarter of the commit timeout, so that a follower holding the entry sees it
/// retried several times before it suspects the leader.
///
/// Only the PreAppend backs off: it carries the whole entry, and a phase slower than one
/// interval (a busy disk) would otherwise get up to a thousand txs resent, and re-verified by
/// every follower, every interval, which slows the phase further. Certificates are small and
/// keep going every interval.
fn proposal_backoff_cap(cluster: &Cluster) -> Duration {
    let params = cluster.params();
    (params.heartbeat_interval * 8)
        .min(params.commit_timeout / 4)
        .max(params.heartbeat_interval)
}

impl Inflight {
    fn new(hash: Digest, proposal: PreAppend, sent: Time, resend_after: Duration) -> Self {
        Inflight {
            hash,
            proposal,
            phase: Phase::PreAppend,
            votes: BTreeMap::new(),
            holders: BTreeSet::new(),
            certificate: None,
            executed_by: BTreeSet::new(),
            last_sent: sent,
            resend_after,
        }
    }
}

#[derive(Debug)]
pub(crate) struct LeaderState {
    queue: VecDeque<(Time, CheckedTx)>,
    queued_bytes: usize,
    /// Per client: the highest queued `ts` and how many of its txs are queued.
    queued: HashMap<ClientId, (u64, u32)>,
    inflight: BTreeMap<Index, Inflight>,
    /// Commit votes by index: each replica's first vote (its digest and signature).
    exec_tally: BTreeMap<Index, BTreeMap<ReplicaId, (Digest, Signature)>>,
    last_ec: Index,
    /// The newest checkpoint index with an EC formed here: the EC of every checkpoint index is
    /// formed even when a later one formed first (a replica's checkpoint becomes stable only
    /// with the EC of its own index).
    last_checkpoint_ec: Index,
    /// While a peer rebuilds after a lost disk, an idle leader proposes empty entries up to
    /// here, so that the peer's stable checkpoint can pass its vote floor without waiting for
    /// client traffic (see `docs/protocol.md`).
    pub(crate) fill_to: Index,
    /// When the leader last sent all replicas something (a proposal or a heartbeat).
    last_broadcast: Time,
}

/// How far below the commit index the leader still collects Commit votes and drives entries
/// towards an execution certificate; older ones are dropped (a later certificate covers them).
fn execution_window(cluster: &Cluster) -> u64 {
    2 * cluster
        .params()
        .checkpoint_interval
        .max(u64::from(cluster.params().pipeline_depth))
}

impl LeaderState {
    pub(crate) fn new(log: &Log) -> Self {
        LeaderState {
            queue: VecDeque::new(),
            queued_bytes: 0,
            queued: HashMap::default(),
            inflight: BTreeMap::new(),
            exec_tally: BTreeMap::new(),
            last_ec: log.commit_index(),
            // Checkpoints above the stable one may still lack their EC (a term change can cut
            // the gathering of Commit votes short): this leader gathers them again.
            last_checkpoint_ec: log.base(),
            fill_to: Index(0),
            last_broadcast: Time(0),
        }
    }

    /// Stops driving the entries from `index` on (they left the log).
    pub(crate) fn forget_from(&mut self, index: Index) {
        self.inflight.split_off(&index);
    }

    /// Entries proposed and not yet committed.
    fn pipeline_len(&self) -> usize {
        self.inflight
            .values()
            .filter(|f| f.phase != Phase::Commit)
            .count()
    }

    pub(crate) fn next_deadline(&self, cluster: &Cluster) -> Option<Time> {
        let params = cluster.params();
        let batch = match self.queue.front() {
            Some((arrived, _)) if self.pipeline_len() < params.pipeline_depth as usize => {
                Some(arrived.after(params.max_batch_delay))
            }
            _ => None,
        };
        let retransmit = self
            .inflight
            .values()
            .map(|f| f.last_sent.after(f.resend_after))
            .min();
        let heartbeat = self.last_broadcast.after(params.heartbeat_interval);
        [batch, retransmit]
            .into_iter()
            .flatten()
            .fold(heartbeat, Time::min)
            .into()
    }
}

impl<S: StateMachine> Replica<S> {
    /// Admission of a client tx (`direct`: from the client itself; else forwarded by a replica).
    pub(super) fn client_tx(&mut self, tx: CheckedTx, direct: bool) {
        let client = tx.tx.client;
        let last = self.exec.last_executed_ts(&client);
        if tx.tx.ts == last {
            // Already executed: resend the reply (PROTOCOL.md 3.7).
            if direct {
                if let Some(record) = self.exec.client(&client) {
                    let outcome = record.outcome.clone();
                    self.reply_to_client(client, tx.tx.ts, outcome);
                }
            }
            return;
        }
        if tx.tx.ts < last {
            self.refuse_tx(
                &tx,
                Rejection::Stale {
                    last_executed: last,
                },
                direct,
            );
            return;
        }
        if let Err(reason) = self.exec.app.admit(&client, &tx.tx.op) {
            self.refuse_tx(&tx, Rejection::Refused(reason), direct);
            return;
        }
        let Some(leader) = self.leader.as_mut() else {
            if direct {
                // Forwarded, and watched: not executed within the request timeout means the
                // leader is censoring or slow (PROTOCOL.md section 4).
                let to = self.cluster.leader_of(self.term);
                if to != self.id {
                    self.terms.watch_forwarded(client, tx.tx.ts, self.now);
                    self.send(Target::Replica(to), ReplicaMessage::Forward(tx.tx));
                }
            }
            return;
        };
        let (queued_ts, queued_count) = leader.queued.get(&client).copied().unwrap_or((0, 0));
        if tx.tx.ts <= self.log.highest_ts(&client).max(queued_ts) {
            // Already ordered or queued (a retransmission, or an older tx overtaken by a newer
            // one from the same client): nothing to do, its reply will come with execution.
            return;
        }
        let params = self.cluster.params();
        let size = tx.tx.batch_bytes();
        if leader.queue.len() >= params.max_pending_txs as usize
            || queued_count >= params.max_pending_txs_per_client
            || (leader.queued_bytes + size) as u64 > params.max_pending_bytes
        {
            self.refuse_tx(&tx, Rejection::Busy, direct);
            return;
        }
        leader.queued.insert(client, (tx.tx.ts, queued_count + 1));
        leader.queued_bytes += size;
        leader.queue.push_back((self.now, tx));
    }

    /// Closes and proposes batches while the pipeline has room.
    pub(super) fn maybe_propose(&mut self) {
        let params = self.cluster.params().clone();
        loop {
            if self.log.tip() < self.terms.chosen_end() {
                return; // the chosen log is still being proposed again
            }
            if !self.within_report_limit(self.log.tip().next()) {
                return; // until an execution certificate moves the stable base up
            }
            let Some(leader) = self.leader.as_mut() else {
                return;
            };
            if self.diverged.is_some() || leader.pipeline_len() >= params.pipeline_depth as usize {
                return;
            }
            let Some((oldest, _)) = leader.queue.front() else {
                if leader.pipeline_len() == 0 && self.log.tip() < leader.fill_to {
                    self.propose(Vec::new());
                    continue;
                }
                return;
            };
            let full = leader.queue.len() >= params.max_batch_txs as usize
                || leader.queued_bytes as u64 >= params.max_batch_bytes;
            let expired = self.now >= oldest.after(params.max_batch_delay);
            let idle = leader.pipeline_len() == 0;
            if !(full || expired || idle) {
                return;
            }
            let mut txs = Vec::new();
            let mut bytes = 0u64;
            while let Some((_, tx)) = leader.queue.front() {
                let size = tx.tx.batch_bytes() as u64;
                if txs.len() >= params.max_batch_txs as usize
                    || (!txs.is_empty() && bytes + size > params.max_batch_bytes)
                {
                    break;
                }
                let Some((_, tx)) = leader.queue.pop_front() else {
                    break;
                };
                bytes += size;
                leader.queued_bytes -= tx.tx.batch_bytes();
                if let Some((_, count)) = leader.queued.get_mut(&tx.tx.client) {
                    *count -= 1;
                    if *count == 0 {
                        leader.queued.remove(&tx.tx.client);
                    }
                }
                txs.push(tx);
            }
            self.propose(txs);
        }
    }

    fn propose(&mut self, txs: Vec<CheckedTx>) {
        let index = self.log.tip().next();
        let entry = CheckedEntry::from_checked(
            &self.cluster_id,
            self.term,
            index,
            self.log.tip_hash(),
            txs,
        );
        self.propose_entry(entry);
    }

    /// Proposes `entry` at its index in the current term: a fresh batch, or an entry of the
    /// chosen log proposed again by a new leader.
    pub(super) fn propose_entry(&mut self, entry: CheckedEntry) {
        let index = entry.entry.index;
        let hash = entry.hash;
        tracing::trace!(replica = %self.id, term = %self.term, %index, txs = entry.entry.txs.len(), "pre-append: proposing");
        let leader_sig = self.key.sign(&pre_append_digest(
            &self.cluster_id,
            self.term,
            index,
            &hash,
        ));
        let proposal = PreAppend {
            term: self.term,
            entry: Arc::clone(&entry.entry),
            leader_sig,
        };
        // The leader accepts its own proposal through the follower path: same checks, and the
        // entry and its vote are persisted before the proposal leaves.
        if !self.on_pre_append(self.term, entry, leader_sig) {
            tracing::error!(replica = %self.id, %index, "leader refused its own proposal");
            return;
        }
        self.metrics.proposed_entries += 1;
        if let Some(leader) = self.leader.as_mut() {
            leader.last_broadcast = self.now;
        }
        self.send(
            Target::AllOthers,
            ReplicaMessage::PreAppend(proposal.clone()),
        );
        let resend_after = self.cluster.params().heartbeat_interval;
        if let Some(leader) = self.leader.as_mut() {
            leader
                .inflight
                .insert(index, Inflight::new(hash, proposal, self.now, resend_after));
        }
    }

    /// After a restart, drives again the entries this leader proposed in its term and that are
    /// not yet committed: same entries, same signatures (ed25519 signing is deterministic), so
    /// nothing new is said. Without this they would block the pipeline forever.
    pub(super) fn resume_proposals(&mut self) {
        let from = self.log.commit_index().next();
        for i in from.0..=self.log.tip().0 {
            let Some(slot) = self.log.get(Index(i)) else {
                break;
            };
            // Only what this leader proposed in its term (its own PreAppend vote says so).
            if !self
                .votes
                .contains_key(&(Phase::PreAppend, self.term, Index(i)))
            {
                continue;
            }
            let hash = slot.entry.hash;
            let proposal = PreAppend {
                term: self.term,
                entry: Arc::clone(&slot.entry.entry),
                leader_sig: self.key.sign(&pre_append_digest(
                    &self.cluster_id,
                    self.term,
                    Index(i),
                    &hash,
                )),
            };
            let subject = crate::message::VoteSubject {
                phase: Phase::PreAppend,
                term: self.term,
                index: Index(i),
                entry_hash: hash,
                state_digest: None,
            };
            let resend_after = self.cluster.params().heartbeat_interval;
            if let Some(leader) = self.leader.as_mut() {
                // Due for retransmission at the first tick.
                leader.inflight.insert(
                    Index(i),
                    Inflight::new(hash, proposal, Time(0), resend_after),
                );
            }
            // Its own vote again (idempotent; persisted if it was lost with a torn batch).
            self.vote(subject);
        }
    }

    /// Sends a heartbeat if the leader has sent all replicas nothing for a heartbeat interval.
    fn maybe_heartbeat(&mut self) {
        let interval = self.cluster.params().heartbeat_interval;
        let now = self.now;
        let Some(leader) = self.leader.as_mut() else {
            return;
        };
        if now < leader.last_broadcast.after(interval) {
            return;
        }
        leader.last_broadcast = now;
        let commit = self.log.commit_certificate().cloned();
        let hb = Heartbeat::sign(&self.cluster_id, &self.key, self.term, commit);
        self.metrics.heartbeats_sent += 1;
        self.send(Target::AllOthers, ReplicaMessage::Heartbeat(hb));
    }

    /// A vote arrived (from a follower, or from this replica itself once durable).
    pub(super) fn on_vote(&mut self, vote: Vote) {
        let quorum = self.cluster.quorum();
        let Some(leader) = self.leader.as_mut() else {
            self.refuse("vote sent to a replica that does not lead");
            return;
        };
        let s = vote.subject;
        if s.term != self.term {
            self.refuse("vote for another term");
            return;
        }
        if s.phase == Phase::Commit {
            self.on_commit_vote(vote);
            return;
        }
        let Some(flight) = leader.inflight.get_mut(&s.index) else {
            return; // late vote for an entry already certified
        };
        if flight.hash != s.entry_hash {
            self.refuse("vote for an entry the leader did not propose");
            return;
        }
        if s.phase == Phase::PreAppend {
            flight.holders.insert(vote.replica);
        }
        if flight.phase != s.phase {
            return; // late vote of a finished phase
        }
        flight.votes.insert(vote.replica, vote.sig);
        if flight.votes.len() < quorum {
            return;
        }
        let cert = Certificate {
            subject: s,
            sigs: std::mem::take(&mut flight.votes).into_iter().collect(),
        };
        flight.certificate = Some(cert.clone());
        flight.phase = match s.phase {
            Phase::PreAppend => Phase::Append,
            _ => Phase::Commit,
        };
        flight.last_sent = self.now;
        flight.resend_after = self.cluster.params().heartbeat_interval;
        self.metrics.certificates_formed += 1;
        tracing::trace!(replica = %self.id, term = %s.term, index = %s.index, phase = ?s.phase, "certificate formed");
        match s.phase {
            Phase::PreAppend => {
                self.send(Target::AllOthers, ReplicaMessage::Append(cert.clone()));
                self.on_prepared(cert);
            }
            _ => {
                self.send(Target::AllOthers, ReplicaMessage::Commit(cert.clone()));
                self.on_committed(cert);
            }
        }
    }

    fn on_commit_vote(&mut self, vote: Vote) {
        let quorum = self.cluster.quorum();
        let commit_index = self.log.commit_index();
        let oldest = Index(
            commit_index
                .0
                .saturating_sub(execution_window(&self.cluster)),
        );
        let Some(leader) = self.leader.as_mut() else {
            return;
        };
        let s = vote.subject;
        let Some(digest) = s.state_digest else { return };
        let interval = self.cluster.params().checkpoint_interval;
        let open_checkpoint = |leader: &LeaderState, i: Index| {
            crate::checkpoint::is_checkpoint_index(i, interval) && i > leader.last_checkpoint_ec
        };
        if (s.index <= leader.last_ec && !open_checkpoint(leader, s.index)) || s.index < oldest {
            return; // certified already, or too old to matter
        }
        if s.index > commit_index || self.log.hash_at(s.index) != Some(s.entry_hash) {
            self.refuse("commit vote for an entry not committed here");
            return;
        }
        if let Some(flight) = leader.inflight.get_mut(&s.index) {
            flight.executed_by.insert(vote.replica);
        }
        // Bounded memory: indices below the window are dropped, and each replica has one
        // vote per index (a second digest from the same replica is refused).
        leader.exec_tally = leader.exec_tally.split_off(&oldest);
        let voters = leader.exec_tally.entry(s.index).or_default();
        match voters.get(&vote.replica) {
            Some((d, _)) if *d != digest => {
                self.refuse("two commit votes with different digests from one replica");
                return;
            }
            Some(_) => return,
            None => {
                voters.insert(vote.replica, (digest, vote.sig));
            }
        }
        let matching: Vec<(ReplicaId, Signature)> = voters
            .iter()
            .filter(|(_, (d, _))| *d == digest)
            .map(|(r, (_, sig))| (*r, *sig))
            .collect();
        if matching.len() < quorum {
            return;
        }
        let ec = Certificate {
            subject: s,
            sigs: matching,
        };
        leader.last_ec = leader.last_ec.max(s.index);
        if crate::checkpoint::is_checkpoint_index(s.index, interval) {
            leader.last_checkpoint_ec = leader.last_checkpoint_ec.max(s.index);
        }
        // Checkpoint indices still without an EC keep gathering Commit votes.
        let (last_ec, last_checkpoint) = (leader.last_ec, leader.last_checkpoint_ec);
        let open = |i: &Index| {
            *i > last_ec
                || (crate::checkpoint::is_checkpoint_index(*i, interval) && *i > last_checkpoint)
        };
        leader.exec_tally.retain(|i, _| open(i));
        leader.inflight.retain(|i, _| open(i));
        self.metrics.certificates_formed += 1;
        self.send(Target::AllOthers, ReplicaMessage::Executed(ec.clone()));
        self.note_execution_certificate(ec);
        self.check_execution_certificate();
    }

    /// Retransmits each phase's message to the replicas that have not answered it.
    ///
    /// A replica that missed the proposal also gets the PreAppend again (a certificate alone
    /// does not give it the entry), and every replica that is behind gets the leader's newest
    /// commit certificate: it commits what it holds, or learns how far to fetch. Without both, a
    /// follower that missed a message of a finished phase could never vote again, and once more
    /// than `f` followers are in that state the pipeline stalls for good.
    pub(super) fn leader_tick(&mut self) {
        let cap = proposal_backoff_cap(&self.cluster);
        let n = self.cluster.n() as u32;
        let me = self.id;
        let now = self.now;
        let latest_cc = self.log.commit_certificate().cloned();
        let oldest = Index(
            self.log
                .commit_index()
                .0
                .saturating_sub(execution_window(&self.cluster)),
        );
        let Some(leader) = self.leader.as_mut() else {
            return;
        };
        // Committed entries too old to still gather an execution certificate are let go.
        leader.inflight = leader.inflight.split_off(&oldest);
        let mut resend = Vec::new();
        let mut behind = BTreeSet::new();
        for flight in leader.inflight.values_mut() {
            if now < flight.last_sent.after(flight.resend_after) {
                continue;
            }
            flight.last_sent = now;
            if flight.phase == Phase::PreAppend {
                flight.resend_after = (flight.resend_after * 2).min(cap);
            }
            let answered: BTreeSet<ReplicaId> = match flight.phase {
                Phase::Commit => flight.executed_by.clone(),
                _ => flight.votes.keys().copied().collect(),
            };
            let message = match (&flight.phase, &flight.certificate) {
                (Phase::PreAppend, _) => ReplicaMessage::PreAppend(flight.proposal.clone()),
                (Phase::Append, Some(pc)) => ReplicaMessage::Append(pc.clone()),
                (Phase::Commit, Some(cc)) => ReplicaMessage::Commit(cc.clone()),
                _ => continue,
            };
            for r in (0..n).map(ReplicaId) {
                if r == me || answered.contains(&r) {
                    continue;
                }
                behind.insert(r);
                if flight.phase == Phase::Append && !flight.holders.contains(&r) {
                    resend.push((r, ReplicaMessage::PreAppend(flight.proposal.clone())));
                }
                resend.push((r, message.clone()));
            }
        }
        if let Some(cc) = latest_cc {
            for r in behind {
                resend.insert(0, (r, ReplicaMessage::Commit(cc.clone())));
            }
        }
        self.metrics.retransmissions += resend.len() as u64;
        for (to, message) in resend {
            self.send(Target::Replica(to), message);
        }
        self.maybe_heartbeat();
        self.maybe_propose();
    }
}
