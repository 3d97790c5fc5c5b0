//! What a Byzantine replica does with what its real replica says and hears.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng as _, RngExt as _, SeedableRng as _};

use crate::crypto::KeyPair;
use crate::manifest::Cluster;
use crate::message::{
    Certificate, Heartbeat, NewTerm, Outcome, Phase, PreAppend, Rejection, ReplicaMessage, Reply,
    SignedTx, TermChange, Vote, VoteSubject,
};
use crate::replica::{OutMessage, Target};
use crate::types::{ClientId, Digest, Index, ReplicaId, Term};

use super::super::SimRng;
use super::forge;
use super::Strategy;

/// What the adversary sees of its replica and the world when it acts.
pub(crate) struct Ctx<'a> {
    pub(crate) cluster: &'a Cluster,
    pub(crate) key: &'a KeyPair,
    pub(crate) me: ReplicaId,
    /// Its replica's term, and whether it leads it.
    pub(crate) term: Term,
    pub(crate) is_leader: bool,
    pub(crate) rng: &'a mut SimRng,
    /// Number of simulated clients.
    pub(crate) clients: usize,
    /// Its replica's stable checkpoint.
    pub(crate) checkpoint: Option<Arc<crate::checkpoint::Checkpoint>>,
}

/// One thing the adversary puts on the network.
pub(crate) enum Act {
    /// A message, sent after an extra delay.
    Send {
        to: Target,
        message: Box<ReplicaMessage>,
        delay: Duration,
    },
    /// Bytes that need not decode, to a replica.
    Raw { to: ReplicaId, bytes: Vec<u8> },
    /// Bytes that need not decode, to a client.
    RawToClient { client: usize, bytes: Vec<u8> },
}

impl Act {
    fn send(to: Target, message: ReplicaMessage) -> Act {
        Act::Send {
            to,
            message: Box::new(message),
            delay: Duration::ZERO,
        }
    }
}

/// Where a `withhold-pc` leader is in its attack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Withhold {
    /// Leading its first term: proposes, withholds prepared certificates.
    Leading,
    /// Sent one commit certificate to one follower; silent until its term is over.
    Silent(Term),
    /// From then on: its replica is silenced, and it votes for anything proposed.
    YesVoter,
}

/// Two proposals for one `(term, index)`.
struct Lie {
    real: PreAppend,
    alternative: PreAppend,
    /// The followers that got the alternative.
    fooled: BTreeSet<ReplicaId>,
}

/// How many received messages a replaying or garbage-sending adversary keeps.
const RECORDED: usize = 512;

/// One Byzantine replica's behaviour.
pub(crate) struct Adversary {
    strategy: Strategy,
    /// The client a censoring leader drops.
    censored: Option<ClientId>,
    /// Messages it received, as bytes (for replay and mangling).
    recorded: VecDeque<Rc<[u8]>>,
    /// Equivocation and invalid proposals: per `(term, index)`, the real proposal, the
    /// alternative, and the followers that got the alternative.
    alternatives: BTreeMap<(Term, Index), Lie>,
    /// Equivocation: the followers fooled in each term.
    fooled: BTreeMap<Term, BTreeSet<ReplicaId>>,
    /// `revote-bait`: committed indices whose real proposal is sent again, for the rest of their
    /// term, to the followers that voted for the alternative.
    bait: BTreeSet<(Term, Index)>,
    /// `revote-bait`: followers fooled at an index get nothing above it until they committed it
    /// (so that they never see a proposal that does not chain to what they hold).
    paused: BTreeMap<ReplicaId, Index>,
    /// Recent certificates seen (forgery material).
    certificates: VecDeque<Certificate>,
    /// The highest term it has seen anywhere.
    highest_term: Term,
    /// `term-storm`: the highest term it pushed so far (each storm message goes higher).
    storm_term: Term,
    /// `replay`: its own signed messages, a few per term, for the later terms.
    own_messages: BTreeMap<Term, Vec<ReplicaMessage>>,
    /// Its own random stream (seeded from the run's seed), so that its choices do not shift the
    /// network's and the crashes' draws.
    rng: SimRng,
    withhold: Withhold,
    ticks: u64,
    /// `stale-checkpoint`: the first stable checkpoint its replica had.
    stale: Option<Arc<crate::checkpoint::Checkpoint>>,
}

impl Adversary {
    pub(crate) fn new(strategy: Strategy, censored: Option<ClientId>, seed: u64) -> Self {
        Adversary {
            storm_term: Term(0),
            own_messages: BTreeMap::new(),
            rng: SimRng::seed_from_u64(seed),
            strategy,
            censored,
            recorded: VecDeque::new(),
            alternatives: BTreeMap::new(),
            fooled: BTreeMap::new(),
            bait: BTreeSet::new(),
            paused: BTreeMap::new(),
            certificates: VecDeque::new(),
            highest_term: Term(0),
            withhold: Withhold::Leading,
            ticks: 0,
            stale: None,
        }
    }

    /// Lends out its random stream (for a [`Ctx`]); give it back with `return_rng`.
    pub(crate) fn lend_rng(&mut self) -> SimRng {
        std::mem::replace(&mut self.rng, SimRng::seed_from_u64(0))
    }

    pub(crate) fn return_rng(&mut self, rng: SimRng) {
        self.rng = rng;
    }

    /// How often `tick` runs.
    pub(crate) fn tick_interval(&self) -> Option<Duration> {
        match self.strategy {
            Strategy::Replay
            | Strategy::Garbage
            | Strategy::TermStorm
            | Strategy::ForgedCertificates => Some(Duration::from_millis(20)),
            Strategy::RevoteBait => Some(Duration::from_millis(100)),
            _ => None,
        }
    }

    // ----- what its replica sends -----

    /// Turns one message of its replica into what actually goes out.
    pub(crate) fn outgoing(&mut self, ctx: &mut Ctx<'_>, out: OutMessage) -> Vec<Act> {
        let OutMessage { to, message } = out;
        self.note_term(&message);
        match self.strategy {
            Strategy::MuteLeader if ctx.is_leader => Vec::new(),
            Strategy::SlowLeader if ctx.is_leader => {
                let p = ctx.cluster.params();
                let delay =
                    (p.commit_timeout.min(p.request_timeout) / 4).min(p.election_timeout / 2);
                vec![Act::Send {
                    to,
                    message: Box::new(message),
                    delay,
                }]
            }
            Strategy::EquivocatingLeader | Strategy::InvalidProposals | Strategy::RevoteBait => {
                match (&message, ctx.is_leader) {
                    (ReplicaMessage::PreAppend(p), true) => self.lie_about_proposal(ctx, to, p),
                    (ReplicaMessage::Commit(cc), true) if self.strategy == Strategy::RevoteBait => {
                        let key = (cc.subject.term, cc.subject.index);
                        if self.alternatives.contains_key(&key) {
                            self.bait.insert(key);
                            while self.bait.len() > 16 {
                                self.bait.pop_first();
                            }
                        }
                        vec![Act::send(to, message)]
                    }
                    _ => vec![Act::send(to, message)],
                }
            }
            Strategy::ForgedCertificates => vec![Act::send(to, self.forge_in(ctx, message))],
            Strategy::DoubleVoting => match &message {
                ReplicaMessage::TermChange(tc) if tc.replica == ctx.me => {
                    // A second, different TermChange for the same term (claiming nothing).
                    let other = TermChange::sign(
                        ctx.cluster.cluster_id(),
                        ctx.key,
                        ctx.me,
                        tc.new_term,
                        None,
                        Vec::new(),
                    );
                    vec![
                        Act::send(to, message.clone()),
                        Act::send(to, ReplicaMessage::TermChange(other)),
                    ]
                }
                ReplicaMessage::Vote(v) => {
                    let other = forge::conflicting_vote(
                        ctx.cluster.cluster_id(),
                        ctx.key,
                        ctx.me,
                        v.subject,
                        ctx.rng,
                    );
                    let mut acts = vec![
                        Act::send(to, message.clone()),
                        Act::send(to, ReplicaMessage::Vote(other)),
                    ];
                    if ctx.rng.random_bool(0.5) {
                        acts.reverse();
                    }
                    acts
                }
                _ => vec![Act::send(to, message)],
            },
            Strategy::WrongNewTerm => match &message {
                ReplicaMessage::NewTerm(nt) => {
                    vec![Act::send(
                        to,
                        ReplicaMessage::NewTerm(Arc::new(wrong_new_term(ctx, nt))),
                    )]
                }
                _ => vec![Act::send(to, message)],
            },
            Strategy::WithholdPc => self.withhold_outgoing(ctx, to, message),
            Strategy::Replay => {
                self.keep_own(&message);
                vec![Act::send(to, message)]
            }
            Strategy::BadSnapshot | Strategy::BadEntries | Strategy::StaleCheckpoint => {
                vec![Act::send(to, self.lie_about_state(ctx, message))]
            }
            _ => vec![Act::send(to, message)],
        }
    }

    /// `bad-snapshot`, `bad-entries`, `stale-checkpoint`: what it serves a replica that is
    /// catching up.
    fn lie_about_state(&mut self, ctx: &mut Ctx<'_>, message: ReplicaMessage) -> ReplicaMessage {
        match (self.strategy, message) {
            (Strategy::BadSnapshot, ReplicaMessage::CheckpointChunk(mut chunk)) => {
                if chunk.data.is_empty() {
                    return ReplicaMessage::CheckpointChunk(chunk);
                }
                if ctx.rng.random_bool(0.25)
                    && chunk.offset + (chunk.data.len() as u64) < chunk.total
                {
                    // Claims the state ends here: it will not decode.
                    chunk.total = chunk.offset + chunk.data.len() as u64;
                } else {
                    let i = ctx.rng.random_range(0..chunk.data.len());
                    chunk.data[i] ^= 1 << ctx.rng.random_range(0..8u32);
                }
                ReplicaMessage::CheckpointChunk(chunk)
            }
            (
                Strategy::BadEntries,
                ReplicaMessage::Entries {
                    mut entries,
                    certificate,
                },
            ) => {
                match ctx.rng.random_range(0..3u32) {
                    0 if entries.len() > 2 => {
                        entries.remove(entries.len() / 2); // breaks the chain
                    }
                    1 => {
                        // Another tx in the last entry: its hash no longer matches the CC.
                        if let Some(last) = entries.last_mut() {
                            let mut e = (**last).clone();
                            if let Some(tx) = e.txs.first_mut() {
                                tx.op.push(0xbd);
                            } else {
                                e.prev_hash = Digest([0xbd; 32]);
                            }
                            *last = Arc::new(e);
                        }
                    }
                    _ => {
                        // Only the first entries, still with the last one's certificate.
                        entries.truncate(entries.len().div_ceil(2).max(1));
                        if entries.len() > 1 {
                            entries.pop();
                        }
                    }
                }
                ReplicaMessage::Entries {
                    entries,
                    certificate,
                }
            }
            (_, message) => message,
        }
    }

    /// What happens to one of its replica's replies to a client.
    pub(crate) fn reply(&mut self, ctx: &mut Ctx<'_>, reply: Reply) -> Option<Reply> {
        match self.strategy {
            Strategy::MuteLeader if ctx.is_leader => None,
            Strategy::WithholdPc if self.withhold != Withhold::Leading => None,
            Strategy::WrongReplies => {
                let outcome = match reply.outcome {
                    Outcome::Executed { index, mut result } => {
                        if ctx.rng.random_bool(0.5) {
                            result.push(0xee);
                            Outcome::Executed { index, result }
                        } else {
                            Outcome::Rejected(Rejection::Refused("not today".into()))
                        }
                    }
                    Outcome::Rejected(_) => Outcome::Executed {
                        index: Index(1),
                        result: vec![0xee],
                    },
                };
                Some(crate::replica::execution::single_reply(
                    ctx.cluster.cluster_id(),
                    ctx.key,
                    ctx.me,
                    reply.client,
                    reply.ts,
                    outcome,
                ))
            }
            _ => Some(reply),
        }
    }

    // ----- what its replica hears -----

    /// Sees a message before its replica does. Returns whether the replica gets it, and what the
    /// adversary sends in answer.
    pub(crate) fn incoming(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: ReplicaId,
        msg: &ReplicaMessage,
        bytes: &Rc<[u8]>,
    ) -> (bool, Vec<Act>) {
        self.note_term(msg);
        if matches!(self.strategy, Strategy::Replay | Strategy::Garbage) {
            if self.recorded.len() == RECORDED {
                self.recorded.pop_front();
            }
            self.recorded.push_back(Rc::clone(bytes));
        }
        match (self.strategy, msg) {
            (Strategy::CensoringLeader, ReplicaMessage::Forward(tx)) => {
                (!self.censors(tx), Vec::new())
            }
            (Strategy::ForgedCertificates, _) => {
                if let Some(c) = certificate_in(msg) {
                    if self.certificates.len() == 16 {
                        self.certificates.pop_front();
                    }
                    self.certificates.push_back(c.clone());
                }
                (true, Vec::new())
            }
            (Strategy::RevoteBait, ReplicaMessage::Vote(v)) => {
                if v.subject.phase == Phase::Commit
                    && self
                        .paused
                        .get(&from)
                        .is_some_and(|i| v.subject.index >= *i)
                {
                    self.paused.remove(&from);
                }
                (true, Vec::new())
            }
            (Strategy::WithholdPc, _) if self.withhold == Withhold::YesVoter => {
                (false, yes_votes(ctx, from, msg))
            }
            (
                Strategy::BadSnapshot | Strategy::StaleCheckpoint,
                ReplicaMessage::FetchEntries { .. }
                | ReplicaMessage::FetchCheckpoint { .. }
                | ReplicaMessage::FetchStatus,
            ) => {
                // Answers anyone catching up at once, in place of its replica, unasked for the
                // first chunk: with a damaged copy of its checkpoint, or with its first one.
                let (above, offset) = match msg {
                    ReplicaMessage::FetchCheckpoint { above, offset, .. } => (*above, *offset),
                    ReplicaMessage::FetchEntries { from, .. } => {
                        (Index(from.0.saturating_sub(1)), 0)
                    }
                    _ => (Index(0), 0),
                };
                if self.stale.is_none() {
                    self.stale = ctx.checkpoint.clone();
                }
                let source = match self.strategy {
                    Strategy::StaleCheckpoint => self.stale.clone(),
                    _ => ctx.checkpoint.clone(),
                };
                let Some(cp) = source else {
                    return (true, Vec::new());
                };
                if self.strategy == Strategy::BadSnapshot && cp.index() <= above {
                    return (true, Vec::new()); // nothing the asker would take
                }
                let chunk = forge::checkpoint_chunk(ctx, &cp, offset);
                let lie = match self.strategy {
                    Strategy::BadSnapshot => self.lie_about_state(ctx, chunk),
                    _ => chunk,
                };
                // A rebuilding replica's status request still reaches its replica (which
                // answers it truthfully); fetches are answered by the lie alone.
                let deliver = matches!(msg, ReplicaMessage::FetchStatus);
                (deliver, vec![Act::send(Target::Replica(from), lie)])
            }
            _ => (true, Vec::new()),
        }
    }

    /// Whether its replica gets this client tx.
    pub(crate) fn accepts_client_tx(&self, tx: &SignedTx) -> bool {
        !(self.strategy == Strategy::CensoringLeader && self.censors(tx))
    }

    fn censors(&self, tx: &SignedTx) -> bool {
        self.censored == Some(tx.client)
    }

    // ----- on its own -----

    /// Periodic mischief of its own.
    pub(crate) fn tick(&mut self, ctx: &mut Ctx<'_>) -> Vec<Act> {
        self.ticks += 1;
        let n = ctx.cluster.n();
        let peer = |rng: &mut SimRng| loop {
            let r = ReplicaId(rng.random_range(0..n) as u32);
            if r != ctx.me || n == 1 {
                break r;
            }
        };
        let mut acts = Vec::new();
        match self.strategy {
            Strategy::Replay => {
                for _ in 0..3 {
                    if self.recorded.is_empty() {
                        break;
                    }
                    let i = ctx.rng.random_range(0..self.recorded.len());
                    let to = peer(ctx.rng);
                    acts.push(Act::Raw {
                        to,
                        bytes: self.recorded[i].to_vec(),
                    });
                }
                // Its own signed messages of an older term.
                let older: Vec<&ReplicaMessage> = self
                    .own_messages
                    .range(..ctx.term)
                    .flat_map(|(_, m)| m.iter())
                    .collect();
                if !older.is_empty() {
                    let m = older[ctx.rng.random_range(0..older.len())].clone();
                    acts.push(Act::send(Target::Replica(peer(ctx.rng)), m));
                }
                if self.ticks.is_multiple_of(5) {
                    let foreign = forge::foreign_cluster_id(ctx.cluster.cluster_id());
                    let (hb, vote, tc) =
                        forge::foreign_messages(&foreign, ctx.key, ctx.me, ctx.term, Index(1));
                    acts.push(Act::send(Target::AllOthers, ReplicaMessage::Heartbeat(hb)));
                    acts.push(Act::send(Target::AllOthers, ReplicaMessage::Vote(vote)));
                    acts.push(Act::send(Target::AllOthers, ReplicaMessage::TermChange(tc)));
                }
            }
            Strategy::Garbage => {
                let to = peer(ctx.rng);
                let len = ctx.rng.random_range(0..2048);
                let mut junk = vec![0u8; len];
                ctx.rng.fill_bytes(&mut junk);
                acts.push(Act::Raw { to, bytes: junk });
                if let Some(m) = self.pick_recorded(ctx.rng) {
                    let cut = ctx.rng.random_range(0..m.len().max(1));
                    acts.push(Act::Raw {
                        to: peer(ctx.rng),
                        bytes: m[..cut].to_vec(),
                    });
                    let mut flipped = m.to_vec();
                    if !flipped.is_empty() {
                        let i = ctx.rng.random_range(0..flipped.len());
                        flipped[i] ^= 1 << ctx.rng.random_range(0..8u32);
                    }
                    acts.push(Act::Raw {
                        to: peer(ctx.rng),
                        bytes: flipped,
                    });
                }
                // Deeply nested arrays: a decoder without a depth limit recurses off the stack.
                let depth = 100_000;
                let mut nested = vec![0x91u8; depth];
                nested.push(0xc0);
                acts.push(Act::Raw {
                    to: peer(ctx.rng),
                    bytes: nested,
                });
                acts.push(Act::send(
                    Target::Replica(peer(ctx.rng)),
                    ReplicaMessage::FetchEntries {
                        from: Index(1),
                        to: Index(u64::MAX),
                    },
                ));
                if self.ticks % 100 == 1 {
                    let limit = ctx.cluster.params().max_message_bytes as usize;
                    acts.push(Act::Raw {
                        to: peer(ctx.rng),
                        bytes: vec![0x92; limit + 1],
                    });
                }
                if ctx.clients > 0 {
                    let mut junk = vec![0u8; ctx.rng.random_range(0..512)];
                    ctx.rng.fill_bytes(&mut junk);
                    acts.push(Act::RawToClient {
                        client: ctx.rng.random_range(0..ctx.clients),
                        bytes: junk,
                    });
                }
            }
            Strategy::TermStorm => {
                // Ever higher (a receiver keeps only a sender's highest TermChange), now by a
                // little, now by a lot.
                let jump = match ctx.rng.random_range(0..3u32) {
                    0 => ctx.rng.random_range(1..4),
                    1 => ctx.rng.random_range(4..1_000),
                    _ => ctx.rng.random_range(1_000..1_000_000),
                };
                let term = Term(
                    self.storm_term
                        .max(self.highest_term)
                        .0
                        .saturating_add(jump),
                );
                self.storm_term = term;
                let tc = TermChange::sign(
                    ctx.cluster.cluster_id(),
                    ctx.key,
                    ctx.me,
                    term,
                    None,
                    Vec::new(),
                );
                acts.push(Act::send(Target::AllOthers, ReplicaMessage::TermChange(tc)));
            }
            Strategy::RevoteBait => {
                // The real, committed proposal again, to those who voted for the other one: a
                // correct replica refuses (it remembers its vote), even after a restart.
                self.bait.retain(|key| key.0 == ctx.term);
                for key in &self.bait {
                    if let Some(lie) = self.alternatives.get(key) {
                        for r in &lie.fooled {
                            acts.push(Act::send(
                                Target::Replica(*r),
                                ReplicaMessage::PreAppend(lie.real.clone()),
                            ));
                        }
                    }
                }
            }
            Strategy::ForgedCertificates if !self.certificates.is_empty() => {
                let i = ctx.rng.random_range(0..self.certificates.len());
                let forged = forge::forge_certificate(
                    ctx.cluster,
                    ctx.key,
                    ctx.me,
                    &self.certificates[i],
                    ctx.rng,
                );
                let message = match forged.subject.phase {
                    Phase::PreAppend => ReplicaMessage::Append(forged),
                    Phase::Append => ReplicaMessage::Commit(forged),
                    Phase::Commit => ReplicaMessage::Executed(forged),
                };
                acts.push(Act::send(Target::Replica(peer(ctx.rng)), message));
            }
            _ => {}
        }
        acts
    }

    /// `replay`: keeps a few of its own signed messages per term.
    fn keep_own(&mut self, message: &ReplicaMessage) {
        let term = match message {
            ReplicaMessage::PreAppend(p) => p.term,
            ReplicaMessage::Vote(v) => v.subject.term,
            ReplicaMessage::Heartbeat(h) => h.term,
            ReplicaMessage::TermChange(tc) => tc.new_term,
            ReplicaMessage::NewTerm(nt) => nt.new_term,
            _ => return,
        };
        let kept = self.own_messages.entry(term).or_default();
        if kept.len() < 8 {
            kept.push(message.clone());
        }
        while self.own_messages.len() > 16 {
            self.own_messages.pop_first();
        }
    }

    fn pick_recorded(&self, rng: &mut SimRng) -> Option<Rc<[u8]>> {
        if self.recorded.is_empty() {
            return None;
        }
        Some(Rc::clone(
            &self.recorded[rng.random_range(0..self.recorded.len())],
        ))
    }

    fn note_term(&mut self, msg: &ReplicaMessage) {
        let term = match msg {
            ReplicaMessage::PreAppend(p) => p.term,
            ReplicaMessage::Vote(v) => v.subject.term,
            ReplicaMessage::Heartbeat(h) => h.term,
            ReplicaMessage::NewTerm(nt) => nt.new_term,
            _ => return,
        };
        self.highest_term = self.highest_term.max(term);
    }

    // ----- the lies -----

    /// Equivocation (a different entry to some followers) or an invalid proposal (to all).
    fn lie_about_proposal(&mut self, ctx: &mut Ctx<'_>, to: Target, p: &PreAppend) -> Vec<Act> {
        let cluster_id = *ctx.cluster.cluster_id();
        let key = (p.term, p.entry.index);
        if !self.alternatives.contains_key(&key) {
            let alternative = match self.strategy {
                Strategy::InvalidProposals => Some(forge::invalid_entry(&p.entry, ctx.rng)),
                _ => forge::conflicting_entry(&p.entry),
            };
            let Some(mut alternative) = alternative else {
                return vec![Act::send(to, ReplicaMessage::PreAppend(p.clone()))];
            };
            let others: Vec<ReplicaId> =
                ctx.cluster.replica_ids().filter(|r| *r != ctx.me).collect();
            let group: BTreeSet<ReplicaId> = match self.strategy {
                Strategy::InvalidProposals => others.into_iter().collect(),
                Strategy::RevoteBait => {
                    // Fresh victims for each index, among the followers not waiting to commit
                    // an earlier one.
                    let free: Vec<ReplicaId> = others
                        .into_iter()
                        .filter(|r| !self.paused.contains_key(r))
                        .collect();
                    let group = random_proper_subset(&free, ctx.rng);
                    if free.len() < 2 {
                        return vec![Act::send(to, ReplicaMessage::PreAppend(p.clone()))];
                    }
                    for r in &group {
                        self.paused.insert(*r, p.entry.index);
                    }
                    group
                }
                _ => {
                    // The same followers are fooled for the whole term, and their version
                    // chains on the alternative below it: they hold a consistent, different
                    // branch.
                    let below = self.alternatives.get(&(p.term, Index(p.entry.index.0 - 1)));
                    if let Some(below) = below {
                        alternative.prev_hash =
                            forge::hash_of(&cluster_id, &below.alternative.entry);
                    }
                    let group = self
                        .fooled
                        .entry(p.term)
                        .or_insert_with(|| random_proper_subset(&others, ctx.rng))
                        .clone();
                    while self.fooled.len() > 8 {
                        self.fooled.pop_first();
                    }
                    group
                }
            };
            let alternative = forge::sign_pre_append(&cluster_id, ctx.key, p.term, alternative);
            self.alternatives.insert(
                key,
                Lie {
                    real: p.clone(),
                    alternative,
                    fooled: group,
                },
            );
            // Bounded memory: forget old indices.
            while self.alternatives.len() > 256 {
                self.alternatives.pop_first();
            }
        }
        let Some(lie) = self.alternatives.get(&key) else {
            return Vec::new();
        };
        let recipients: Vec<ReplicaId> = match to {
            Target::Replica(r) => vec![r],
            Target::AllOthers => ctx.cluster.replica_ids().filter(|r| *r != ctx.me).collect(),
        };
        let mut acts = Vec::new();
        for r in recipients {
            if !lie.fooled.contains(&r) && self.paused.get(&r).is_some_and(|i| *i < p.entry.index) {
                continue; // fooled below: nothing above until it committed that index
            }
            if lie.fooled.contains(&r) {
                acts.push(Act::send(
                    Target::Replica(r),
                    ReplicaMessage::PreAppend(lie.alternative.clone()),
                ));
                // Now and then, one follower also gets the original: it holds the proof.
                if self.strategy == Strategy::EquivocatingLeader && ctx.rng.random_bool(0.2) {
                    acts.push(Act::send(
                        Target::Replica(r),
                        ReplicaMessage::PreAppend(p.clone()),
                    ));
                }
            } else {
                acts.push(Act::send(
                    Target::Replica(r),
                    ReplicaMessage::PreAppend(p.clone()),
                ));
            }
        }
        acts
    }

    /// Forges the certificate a message carries, half of the time.
    fn forge_in(&mut self, ctx: &mut Ctx<'_>, message: ReplicaMessage) -> ReplicaMessage {
        if !ctx.rng.random_bool(0.5) {
            return message;
        }
        let (cluster, key, me) = (ctx.cluster, ctx.key, ctx.me);
        let forge =
            |c: &Certificate, rng: &mut SimRng| forge::forge_certificate(cluster, key, me, c, rng);
        match message {
            ReplicaMessage::Append(c) => ReplicaMessage::Append(forge(&c, ctx.rng)),
            ReplicaMessage::Commit(c) => ReplicaMessage::Commit(forge(&c, ctx.rng)),
            ReplicaMessage::Executed(c) => ReplicaMessage::Executed(forge(&c, ctx.rng)),
            ReplicaMessage::Heartbeat(hb) => match &hb.commit {
                Some(cc) => {
                    let forged = forge(cc, ctx.rng);
                    ReplicaMessage::Heartbeat(Heartbeat::sign(
                        cluster.cluster_id(),
                        key,
                        hb.term,
                        Some(forged),
                    ))
                }
                None => ReplicaMessage::Heartbeat(hb),
            },
            ReplicaMessage::Entries {
                entries,
                certificate,
            } => ReplicaMessage::Entries {
                entries,
                certificate: forge(&certificate, ctx.rng),
            },
            other => other,
        }
    }

    /// `withhold-pc`: see [`Strategy::WithholdPc`].
    fn withhold_outgoing(
        &mut self,
        ctx: &mut Ctx<'_>,
        to: Target,
        message: ReplicaMessage,
    ) -> Vec<Act> {
        match self.withhold {
            Withhold::Leading if ctx.is_leader => match message {
                ReplicaMessage::Append(_) | ReplicaMessage::Executed(_) => Vec::new(),
                ReplicaMessage::Commit(cc) => {
                    // The last replica alone learns of the commit.
                    self.withhold = Withhold::Silent(ctx.term);
                    let target = ReplicaId(ctx.cluster.n() as u32 - 1);
                    vec![Act::send(
                        Target::Replica(target),
                        ReplicaMessage::Commit(cc),
                    )]
                }
                other => vec![Act::send(to, other)],
            },
            Withhold::Leading => {
                if ctx.term > Term(0) {
                    // Its term went by without a commit: vote for anything from now on.
                    self.withhold = Withhold::YesVoter;
                    return Vec::new();
                }
                vec![Act::send(to, message)]
            }
            Withhold::Silent(term) => {
                if ctx.term > term {
                    self.withhold = Withhold::YesVoter;
                }
                Vec::new()
            }
            Withhold::YesVoter => Vec::new(),
        }
    }
}

/// A random non-empty proper subset of `ids` (all of a single id).
fn random_proper_subset(ids: &[ReplicaId], rng: &mut SimRng) -> BTreeSet<ReplicaId> {
    let mut group: BTreeSet<ReplicaId> = ids
        .iter()
        .copied()
        .filter(|_| rng.random_bool(0.5))
        .collect();
    if group.is_empty() && !ids.is_empty() {
        group.insert(ids[rng.random_range(0..ids.len())]);
    }
    if group.len() == ids.len() && ids.len() > 1 {
        group.remove(&ids[rng.random_range(0..ids.len())]);
    }
    group
}

/// The certificate a message carries, if any.
fn certificate_in(msg: &ReplicaMessage) -> Option<&Certificate> {
    match msg {
        ReplicaMessage::Append(c) | ReplicaMessage::Commit(c) | ReplicaMessage::Executed(c) => {
            Some(c)
        }
        ReplicaMessage::Entries { certificate, .. } => Some(certificate),
        ReplicaMessage::Heartbeat(hb) => hb.commit.as_ref(),
        _ => None,
    }
}

/// A yes-voter's votes: for any proposal and any prepared certificate it hears of, without
/// checking anything.
fn yes_votes(ctx: &mut Ctx<'_>, from: ReplicaId, msg: &ReplicaMessage) -> Vec<Act> {
    let cluster_id = *ctx.cluster.cluster_id();
    let subject = match msg {
        ReplicaMessage::PreAppend(p) => VoteSubject {
            phase: Phase::PreAppend,
            term: p.term,
            index: p.entry.index,
            entry_hash: forge::hash_of(&cluster_id, &p.entry),
            state_digest: None,
        },
        ReplicaMessage::Append(pc) if pc.subject.phase == Phase::PreAppend => VoteSubject {
            phase: Phase::Append,
            ..pc.subject
        },
        _ => return Vec::new(),
    };
    let vote = Vote::sign(&cluster_id, ctx.key, ctx.me, subject);
    vec![Act::send(Target::Replica(from), ReplicaMessage::Vote(vote))]
}

/// A NewTerm that correct replicas must refuse: a chosen log that drops, alters or adds an entry,
/// or fewer TermChanges than a quorum.
fn wrong_new_term(ctx: &mut Ctx<'_>, nt: &NewTerm) -> NewTerm {
    let mut wrong = nt.clone();
    match ctx.rng.random_range(0..4u32) {
        0 if !wrong.chosen.is_empty() => {
            wrong.chosen.pop();
        }
        1 if !wrong.chosen.is_empty() => {
            let i = ctx.rng.random_range(0..wrong.chosen.len());
            wrong.chosen[i].1 = forge::random_digest(ctx.rng);
        }
        2 => {
            let q = ctx.cluster.quorum();
            wrong.term_changes.truncate(q.saturating_sub(1));
        }
        _ => {
            let next = wrong.chosen.last().map_or(Index(1), |(i, _)| i.next());
            wrong.chosen.push((next, Digest(ctx.rng.random())));
        }
    }
    // Signed by the Byzantine leader itself: only the content is wrong.
    NewTerm::sign(
        ctx.cluster.cluster_id(),
        ctx.key,
        wrong.new_term,
        wrong.term_changes,
        wrong.chosen,
    )
}
