//! Stable checkpoints, compaction and state transfer (PROTOCOL.md section 5).
//!
//! At each checkpoint index a replica takes the state it just reached. Once it holds the
//! execution certificate (EC) of that index and the digests agree, the checkpoint is stable: it
//! is persisted in place of the log below it, and the log, votes and certificates below are
//! dropped, in memory and on disk.
//!
//! A replica that is behind (its peers compacted the entries it lacks), diverged, or lost its
//! state fetches a peer's stable checkpoint in chunks. It keeps the chunks of one checkpoint
//! from one peer; once complete it restores the state and accepts it only if it hashes to the
//! digest the EC proves. A peer that serves bad data is skipped, one that stalls is left after a
//! timeout, and the next is tried.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{Replica, Target};
use crate::checkpoint::{self, Checkpoint, CheckpointState};
use crate::message::{Certificate, CheckpointChunk, Phase, ReplicaMessage};
use crate::persist::PersistOp;
use crate::state_machine::StateMachine;
use crate::types::{Digest, Index, ReplicaId, Time};

/// Most checkpoint states (or ECs) kept waiting for their counterpart.
const MAX_PENDING: usize = 2;

/// A checkpoint being received.
#[derive(Debug)]
struct Transfer {
    certificate: Certificate,
    peer: ReplicaId,
    total: u64,
    bytes: Vec<u8>,
    last_progress: Time,
    /// The whole transfer must be done by then (a peer that trickles chunks is left).
    deadline: Time,
}

/// What a replica keeps about checkpoints.
#[derive(Debug, Default)]
pub(crate) struct Checkpoints {
    /// The newest stable checkpoint: the log's base, served to peers.
    pub(crate) stable: Option<Arc<Checkpoint>>,
    /// The one before it, still served to a peer that was fetching it when it was replaced.
    previous: Option<Arc<Checkpoint>>,
    /// States taken at checkpoint indices above the stable one, waiting for their EC.
    pending: BTreeMap<Index, CheckpointState>,
    /// ECs at checkpoint indices above the stable one, waiting for the state.
    ecs: BTreeMap<Index, Certificate>,
    /// Execution is stopped until a checkpoint above this index installs (the state diverged
    /// from an EC, or a bad snapshot overwrote it).
    pub(crate) needed_above: Option<Index>,
    transfer: Option<Transfer>,
    /// When a checkpoint was last asked for, and from whom.
    asked: Option<(Time, ReplicaId)>,
    /// Peers whose checkpoint failed verification: skipped until every peer was tried.
    bad_peers: BTreeSet<ReplicaId>,
    /// Per peer, when it was last served a chunk, of which checkpoint, and the offset that
    /// continues it: bounds what it can make this replica send.
    served: BTreeMap<ReplicaId, (Time, Index, u64)>,
    /// Per peer, when its status request was last answered.
    status_served: BTreeMap<ReplicaId, Time>,
    /// Rebuild after a lost disk: the commit index each peer proved (see `Replica::rebuild`).
    pub(crate) statuses: BTreeMap<ReplicaId, Index>,
    /// When the status was last asked for.
    status_asked: Option<Time>,
    /// When this replica last voted again for its pending checkpoints.
    revoted: Time,
}

impl Checkpoints {
    /// The stable checkpoint's index (0: none, the log starts at genesis).
    pub(crate) fn stable_index(&self) -> Index {
        self.stable.as_ref().map_or(Index(0), |c| c.index())
    }

    pub(crate) fn next_deadline(&self, retry: std::time::Duration) -> Option<Time> {
        let transfer = self
            .transfer
            .as_ref()
            .map(|t| t.last_progress.after(retry).min(t.deadline));
        let asked = self.asked.map(|(at, _)| at.after(retry));
        let status = self.status_asked.map(|at| at.after(retry));
        let revote = (!self.pending.is_empty()).then(|| self.revoted.after(retry));
        [transfer, asked, status, revote]
            .into_iter()
            .flatten()
            .min()
    }
}

impl<S: StateMachine> Replica<S> {
    fn interval(&self) -> u64 {
        self.cluster.params().checkpoint_interval
    }

    /// How long a checkpoint request or transfer may go without progress before another peer
    /// is asked.
    fn transfer_timeout(&self) -> std::time::Duration {
        self.cluster.params().heartbeat_interval * 4
    }

    /// The state reached at a checkpoint index, just executed.
    pub(super) fn took_checkpoint(&mut self, state: CheckpointState) {
        let cps = &mut self.checkpoints;
        cps.pending.insert(state.index, state);
        while cps.pending.len() > MAX_PENDING {
            cps.pending.pop_first();
        }
        self.try_stabilize();
    }

    /// An EC (already verified) at a checkpoint index.
    pub(super) fn note_checkpoint_certificate(&mut self, ec: &Certificate) {
        let index = ec.subject.index;
        if !checkpoint::is_checkpoint_index(index, self.interval())
            || index <= self.checkpoints.stable_index()
        {
            return;
        }
        let cps = &mut self.checkpoints;
        cps.ecs.entry(index).or_insert_with(|| ec.clone());
        while cps.ecs.len() > MAX_PENDING {
            cps.ecs.pop_first();
        }
        self.try_stabilize();
    }

    /// Makes the newest checkpoint whose state and EC agree stable: persists it and compacts.
    fn try_stabilize(&mut self) {
        let ready = self.checkpoints.ecs.iter().rev().find_map(|(index, ec)| {
            let state = self.checkpoints.pending.get(index)?;
            let ours = self.exec.digest_at(*index);
            (ours.is_some()
                && ours == ec.subject.state_digest
                && state.entry_hash == ec.subject.entry_hash)
                .then_some(*index)
        });
        let Some(index) = ready else { return };
        let (Some(ec), Some(state)) = (
            self.checkpoints.ecs.remove(&index),
            self.checkpoints.pending.remove(&index),
        ) else {
            return;
        };
        let bytes = match crate::codec::encode(&state) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(replica = %self.id, %index, error = %e, "cannot encode a checkpoint");
                return;
            }
        };
        let limit = self.cluster.params().max_checkpoint_bytes;
        if bytes.len() as u64 > limit {
            // No replica could restart from it or receive it: keep the log (which then fills
            // up and stalls this replica) rather than persist what cannot be used.
            tracing::error!(
                replica = %self.id, %index, size = bytes.len(), limit,
                "the checkpoint exceeds max_checkpoint_bytes; raise the limit"
            );
            self.refuse("checkpoint above max_checkpoint_bytes");
            return;
        }
        let cp = Arc::new(Checkpoint {
            certificate: ec,
            state: bytes,
        });
        self.persist(PersistOp::Checkpoint(Arc::clone(&cp)));
        self.log.compact_to(index);
        self.set_stable_checkpoint(cp);
        self.metrics.checkpoints += 1;
    }

    /// Records `cp` as the stable checkpoint (persisted by the caller) and drops what it covers.
    fn set_stable_checkpoint(&mut self, cp: Arc<Checkpoint>) {
        let index = cp.index();
        let cps = &mut self.checkpoints;
        cps.pending = cps.pending.split_off(&index.next());
        cps.ecs = cps.ecs.split_off(&index.next());
        self.votes.retain(|(_, _, i), _| *i > index);
        self.terms.pre_appended_at = self.terms.pre_appended_at.split_off(&index.next());
        self.note_execution_certificate(cp.certificate.clone());
        self.checkpoints.previous = self.checkpoints.stable.replace(cp);
        self.refresh_stable();
        self.maybe_end_vote_floor();
    }

    // ----- serving -----

    /// Sends `peer` a chunk of checkpoint `index` (the stable one, or the one before it, so
    /// that a transfer survives the server moving on; `Index(0)` or an unknown index: the stable
    /// one from its start), if it is above `above`. A peer is served at once only when it asks
    /// for the exact continuation of the last chunk it was sent; any other request waits a
    /// heartbeat interval.
    pub(super) fn serve_checkpoint(
        &mut self,
        peer: ReplicaId,
        above: Index,
        index: Index,
        offset: u64,
    ) {
        let cps = &self.checkpoints;
        let (cp, offset) = match [&cps.stable, &cps.previous]
            .into_iter()
            .flatten()
            .find(|c| c.index() == index)
        {
            Some(cp) => (Arc::clone(cp), offset),
            None => match &cps.stable {
                Some(cp) => (Arc::clone(cp), 0),
                None => return,
            },
        };
        if peer == self.id || cp.index() <= above || offset >= cp.state.len() as u64 {
            return;
        }
        let interval = self.cluster.params().heartbeat_interval;
        if let Some((at, last_index, next)) = self.checkpoints.served.get(&peer) {
            let continuation = *last_index == cp.index() && offset == *next;
            if !continuation && self.now < at.after(interval) {
                self.refuse("checkpoint requested again within a heartbeat interval");
                return;
            }
        }
        let chunk = self.cluster.params().checkpoint_chunk();
        let start = offset as usize;
        let end = (offset.saturating_add(chunk) as usize).min(cp.state.len());
        self.checkpoints
            .served
            .insert(peer, (self.now, cp.index(), end as u64));
        self.send(
            Target::Replica(peer),
            ReplicaMessage::CheckpointChunk(CheckpointChunk {
                certificate: cp.certificate.clone(),
                total: cp.state.len() as u64,
                offset,
                data: cp.state[start..end].to_vec(),
            }),
        );
    }

    // ----- receiving -----

    /// Checkpoints at or below this index are of no use here.
    fn transfer_floor(&self) -> Index {
        match self.checkpoints.needed_above {
            Some(needed) => needed,
            None => self.exec.applied(),
        }
    }

    /// Asks a peer for a checkpoint above what this replica has, unless a request or transfer
    /// is under way.
    pub(super) fn request_checkpoint(&mut self) {
        if self.checkpoints.transfer.is_some() || self.checkpoints.asked.is_some() {
            return;
        }
        let Some(peer) = self.next_checkpoint_peer(None) else {
            return;
        };
        self.ask_checkpoint(peer, Index(0), 0);
    }

    fn ask_checkpoint(&mut self, peer: ReplicaId, index: Index, offset: u64) {
        self.checkpoints.asked = Some((self.now, peer));
        // Above the log's base, not only above the state: a checkpoint this replica reached
        // itself but whose EC it missed becomes stable with the EC of the first chunk.
        let above = match self.checkpoints.needed_above {
            Some(needed) => needed,
            None => self.log.base(),
        };
        self.send(
            Target::Replica(peer),
            ReplicaMessage::FetchCheckpoint {
                above,
                index,
                offset,
            },
        );
    }

    /// The peer after `after` (the leader first) that is not this replica and did not serve a
    /// bad checkpoint; once every peer did, they all get another chance.
    fn next_checkpoint_peer(&mut self, after: Option<ReplicaId>) -> Option<ReplicaId> {
        let n = self.cluster.n() as u32;
        if n < 2 {
            return None;
        }
        let start = after.map_or(self.cluster.leader_of(self.term).0, |p| p.0 + 1);
        for round in 0..2 {
            for k in 0..n {
                let peer = ReplicaId((start + k) % n);
                if peer != self.id && !self.checkpoints.bad_peers.contains(&peer) {
                    return Some(peer);
                }
            }
            if round == 0 {
                self.checkpoints.bad_peers.clear();
            }
        }
        None
    }

    /// A chunk of a peer's checkpoint (its certificate and sizes verified).
    pub(super) fn on_checkpoint_chunk(&mut self, from: ReplicaId, chunk: CheckpointChunk) {
        let index = chunk.certificate.subject.index;
        // An EC for a checkpoint this replica took itself completes it without a transfer.
        self.note_checkpoint_certificate(&chunk.certificate);
        if index <= self.log.base() {
            // Correct peers serve only checkpoints above the base they are asked for.
            self.refuse("stale checkpoint, at or below the log's base");
            return;
        }
        if index <= self.transfer_floor() {
            self.refuse("checkpoint no newer than this replica's state");
            return;
        }
        // Every chunk but the last is full: a peer cannot stretch a transfer with tiny ones.
        let full = chunk.data.len() as u64 == self.cluster.params().checkpoint_chunk()
            || chunk.offset + chunk.data.len() as u64 == chunk.total;
        let continues = self.checkpoints.transfer.as_ref().is_some_and(|t| {
            t.peer == from
                && t.certificate.subject == chunk.certificate.subject
                && t.total == chunk.total
                && t.bytes.len() as u64 == chunk.offset
        });
        // A transfer starts only with a peer this replica asked (for a checkpoint, or for the
        // entries it compacted), so that no peer can push itself in; a newer checkpoint from
        // the peer being asked replaces the one in progress.
        let asked = self.checkpoints.asked.is_some_and(|(_, p)| p == from)
            || self.follower_fetching_from(from);
        let starts = chunk.offset == 0
            && match &self.checkpoints.transfer {
                None => asked,
                Some(t) => t.peer == from && t.certificate.subject.index < index,
            };
        if !full || (!continues && !starts) {
            self.refuse("checkpoint chunk out of turn");
            return;
        }
        let data_len = chunk.data.len() as u64;
        if starts {
            let chunks = chunk
                .total
                .div_ceil(self.cluster.params().checkpoint_chunk());
            let per_chunk = self.cluster.params().heartbeat_interval * 2;
            let allowed = per_chunk.saturating_mul(u32::try_from(chunks).unwrap_or(u32::MAX));
            self.checkpoints.transfer = Some(Transfer {
                certificate: chunk.certificate,
                peer: from,
                total: chunk.total,
                bytes: chunk.data,
                last_progress: self.now,
                deadline: self.now.after(allowed + self.transfer_timeout()),
            });
        } else if let Some(t) = self.checkpoints.transfer.as_mut() {
            t.bytes.extend_from_slice(&chunk.data);
            t.last_progress = self.now;
        }
        self.checkpoints.asked = None;
        let Some(t) = self.checkpoints.transfer.as_ref() else {
            return;
        };
        if (t.bytes.len() as u64) < t.total {
            if data_len == 0 {
                return;
            }
            let (index, offset) = (t.certificate.subject.index, t.bytes.len() as u64);
            self.ask_checkpoint(from, index, offset);
            return;
        }
        if let Some(t) = self.checkpoints.transfer.take() {
            self.finish_transfer(t);
        }
    }

    fn finish_transfer(&mut self, t: Transfer) {
        let cp = Checkpoint {
            certificate: t.certificate,
            state: t.bytes,
        };
        let max = self.cluster.params().max_checkpoint_bytes;
        let state = match cp.decode(self.interval(), max) {
            Ok(state) => state,
            Err(e) => return self.bad_checkpoint(t.peer, e),
        };
        let certified = cp.certificate.subject.state_digest.unwrap_or(Digest::ZERO);
        if let Err(e) = self.exec.restore(&self.cluster_id, state, certified) {
            if matches!(e, checkpoint::CheckpointError::StateLost(_)) {
                // The application could not take its own state back: execution waits for a
                // verified checkpoint.
                let base = self.log.base();
                let needed = self.checkpoints.needed_above.unwrap_or(base).min(base);
                self.checkpoints.needed_above = Some(Index(needed.0.saturating_sub(1)));
            }
            return self.bad_checkpoint(t.peer, e);
        }
        self.install_checkpoint(Arc::new(cp));
    }

    fn bad_checkpoint(&mut self, peer: ReplicaId, error: checkpoint::CheckpointError) {
        tracing::warn!(replica = %self.id, %peer, %error, "refused a peer's checkpoint");
        self.refuse("a peer's checkpoint failed verification");
        self.checkpoints.bad_peers.insert(peer);
        self.checkpoints.asked = None;
        if let Some(next) = self.next_checkpoint_peer(Some(peer)) {
            self.ask_checkpoint(next, Index(0), 0);
        }
    }

    /// Installs a verified checkpoint whose state the execution already holds: the log starts
    /// over above it (keeping the entries that chain to it), and it becomes the stable one.
    fn install_checkpoint(&mut self, cp: Arc<Checkpoint>) {
        let index = cp.index();
        tracing::info!(replica = %self.id, %index, "installed a checkpoint from a peer");
        self.persist(PersistOp::Checkpoint(Arc::clone(&cp)));
        if self.log.restart_at(index, cp.entry_hash()) {
            self.persist(PersistOp::TruncateFrom(index.next()));
            if let Some(leader) = self.leader.as_mut() {
                leader.forget_from(index.next());
            }
        }
        self.metrics.state_transfers += 1;
        self.checkpoints.needed_above = None;
        self.checkpoints.bad_peers.clear();
        self.diverged = None;
        self.set_stable_checkpoint(cp);
        self.follower.catch_up_to(self.latest_commit_known());
        self.execute_committed();
        self.request_fetch();
    }

    /// The highest index this replica knows committed somewhere (its own, or an EC's).
    fn latest_commit_known(&self) -> Index {
        let ec = self
            .latest_ec
            .as_ref()
            .map_or(Index(0), |ec| ec.subject.index);
        ec.max(self.log.commit_index())
    }

    /// Retries requests and transfers that made no progress in time; keeps asking while a
    /// checkpoint is needed; and, while rebuilding, asks for the cluster's status.
    pub(super) fn checkpoint_tick(&mut self) {
        let timeout = self.transfer_timeout();
        if let Some(t) = &self.checkpoints.transfer {
            let overdue = self.now >= t.deadline;
            if overdue || self.now >= t.last_progress.after(timeout) {
                let peer = t.peer;
                self.checkpoints.transfer = None;
                if overdue {
                    // It kept the transfer alive without finishing it.
                    self.refuse("a peer's checkpoint transfer overran its deadline");
                    self.checkpoints.bad_peers.insert(peer);
                }
                let next = self.next_checkpoint_peer(Some(peer));
                if let Some(next) = next {
                    self.ask_checkpoint(next, Index(0), 0);
                }
            }
        }
        if let Some((at, peer)) = self.checkpoints.asked {
            if self.now >= at.after(timeout) {
                self.checkpoints.asked = None;
                if self.wants_checkpoint() {
                    if let Some(next) = self.next_checkpoint_peer(Some(peer)) {
                        self.ask_checkpoint(next, Index(0), 0);
                    }
                }
            }
        } else if self.wants_checkpoint() {
            self.request_checkpoint();
        }
        self.revote_pending_checkpoints();
        self.rebuild_tick();
    }

    /// Votes Commit again, in the current term, for the checkpoints this replica took that are
    /// not stable yet. The leader that gathered the first votes may have been replaced before
    /// their EC formed, and without an EC at each checkpoint index no replica could compact
    /// past it (the log would fill up and stall). The digest is the one this replica reached,
    /// so the vote says nothing new.
    fn revote_pending_checkpoints(&mut self) {
        if self.now < self.checkpoints.revoted.after(self.transfer_timeout()) {
            return;
        }
        self.checkpoints.revoted = self.now;
        let pending: Vec<(Index, Digest)> = self
            .checkpoints
            .pending
            .iter()
            .map(|(index, state)| (*index, state.entry_hash))
            .collect();
        for (index, entry_hash) in pending {
            let Some(digest) = self.exec.digest_at(index) else {
                continue;
            };
            self.vote(crate::message::VoteSubject {
                phase: Phase::Commit,
                term: self.term,
                index,
                entry_hash,
                state_digest: Some(digest),
            });
        }
    }

    /// Whether this replica should be asking for a checkpoint: its execution is stopped, or its
    /// log is full and the checkpoint that would free it is not stable here.
    fn wants_checkpoint(&self) -> bool {
        if self.checkpoints.transfer.is_some() {
            return false;
        }
        let limit = self.cluster.params().max_log_entries();
        let full = self.log.tip().0 >= self.log.base().0.saturating_add(limit);
        self.checkpoints.needed_above.is_some() || full
    }

    /// Stops execution after a divergence until a checkpoint at or above `index` installs.
    pub(super) fn need_checkpoint_from(&mut self, index: Index) {
        let above = Index(index.0.saturating_sub(1));
        let needed = self
            .checkpoints
            .needed_above
            .map_or(above, |n| n.max(above));
        self.checkpoints.needed_above = Some(needed);
        self.request_checkpoint();
    }

    // ----- rebuilding after a lost disk -----

    /// True while this replica may not vote, propose or report prepared entries: it lost its
    /// durable state, and its stable checkpoint has not yet passed everything it may have voted
    /// on before.
    pub(super) fn rebuilding(&self) -> bool {
        self.vote_floor > Index(0)
    }

    fn maybe_end_vote_floor(&mut self) {
        if self.rebuilding()
            && self.vote_floor != Index(u64::MAX)
            && self.checkpoints.stable_index() >= self.vote_floor
        {
            tracing::info!(replica = %self.id, floor = %self.vote_floor, "rebuilt: voting again");
            self.vote_floor = Index(0);
            self.persist(PersistOp::VoteFloor(Index(0)));
        }
    }

    /// While rebuilding, asks every peer for its status: every heartbeat interval until the
    /// floor is known, then every election timeout (which also keeps an idle leader filling the
    /// log up to the floor).
    fn rebuild_tick(&mut self) {
        if !self.rebuilding() {
            self.checkpoints.status_asked = None;
            return;
        }
        let params = self.cluster.params();
        let every = if self.vote_floor == Index(u64::MAX) {
            params.heartbeat_interval
        } else {
            params.election_timeout
        };
        let due = self
            .checkpoints
            .status_asked
            .is_none_or(|at| self.now >= at.after(every));
        if due {
            self.checkpoints.status_asked = Some(self.now);
            self.send(Target::AllOthers, ReplicaMessage::FetchStatus);
        }
    }

    /// Answers a rebuilding peer: how far this replica committed (proved), and its term.
    pub(super) fn serve_status(&mut self, peer: ReplicaId) {
        if peer == self.id {
            return;
        }
        let interval = self.cluster.params().heartbeat_interval;
        if let Some(at) = self.checkpoints.status_served.get(&peer) {
            if self.now < at.after(interval) {
                self.refuse("status requested again within a heartbeat interval");
                return;
            }
        }
        self.checkpoints.status_served.insert(peer, self.now);
        // The peer is rebuilding: as leader, fill the log far enough for its checkpoint to pass
        // any floor it can have computed from what is committed now.
        let params = self.cluster.params();
        let reach = self
            .log
            .commit_index()
            .0
            .saturating_add(params.max_log_entries() + params.checkpoint_interval);
        if let Some(leader) = self.leader.as_mut() {
            leader.fill_to = leader.fill_to.max(Index(reach));
        }
        let commit = self.log.commit_certificate().cloned().or_else(|| {
            self.checkpoints
                .stable
                .as_ref()
                .map(|c| c.certificate.clone())
        });
        if let Some(cert) = commit {
            self.send(Target::Replica(peer), ReplicaMessage::Status(cert));
        }
        self.send_new_term_to(peer);
    }

    /// A peer's proved commit index. Once `q` peers (or all others, in a cluster too small for
    /// that) answered, the vote floor is the highest of them plus the most a replica holds
    /// above its checkpoint: no replica can have voted beyond it (see `docs/protocol.md`).
    pub(super) fn on_status(&mut self, from: ReplicaId, cert: Certificate) {
        let index = cert.subject.index;
        match cert.subject.phase {
            Phase::Append => self.on_committed(cert),
            _ => self.note_execution_certificate(cert),
        }
        if self.vote_floor != Index(u64::MAX) || from == self.id {
            return;
        }
        let proved = self.checkpoints.statuses.entry(from).or_insert(index);
        *proved = (*proved).max(index);
        let needed = self.cluster.quorum().min(self.cluster.n() - 1);
        if self.checkpoints.statuses.len() >= needed {
            let highest = self
                .checkpoints
                .statuses
                .values()
                .copied()
                .max()
                .unwrap_or(Index(0));
            let floor = Index(
                highest
                    .0
                    .saturating_add(self.cluster.params().max_log_entries())
                    .max(1),
            );
            tracing::info!(replica = %self.id, %floor, "rebuild: votes resume above the floor");
            self.vote_floor = floor;
            self.persist(PersistOp::VoteFloor(floor));
            self.checkpoints.statuses.clear();
            self.follower.catch_up_to(highest);
            self.request_fetch();
            self.maybe_end_vote_floor();
        }
    }
}
