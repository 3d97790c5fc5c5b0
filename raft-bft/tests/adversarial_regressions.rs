//! Regressions from an adversarial review of the normal case. Each test marked `// FINDING n`
//! reproduces an attack or failure that the code once allowed (a Byzantine peer pinning a lagging
//! follower's fetch, fetch amplification, an unbounded Commit-vote tally, one client filling the
//! leader's queue, an entry kept without a vote, a restarted leader abandoning its proposals),
//! and fails if it comes back. The `control_*` tests run the same scenarios without the fault.
//! Public API only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use raft_bft::codec;
use raft_bft::config::Params;
use raft_bft::crypto::KeyPair;
use raft_bft::manifest::Cluster;
use raft_bft::message::{
    entry_hash, pre_append_digest, Certificate, Entry, Outcome, Phase, PreAppend, Rejection,
    ReplicaMessage, SignedTx, Vote, VoteSubject,
};
use raft_bft::persist::{DurableState, PersistBatch, PersistOp};
use raft_bft::replica::{Ready, Replica, Target};
use raft_bft::testing::Recorder;
use raft_bft::testing::{client_key, TestCluster};
use raft_bft::types::{Digest, Index, ReplicaId, Term, Time};
use raft_bft::verify::{CheckedTx, Verified, VerifiedMessage, Verifier};

// ----- a per-thread heap counter (tests run on their own threads) -----

struct Counting;

thread_local! {
    static LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    let _ = LIVE_BYTES.try_with(|c| c.set(c.get() + delta));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            note(l.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(l);
        if !p.is_null() {
            note(l.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        note(-(l.size() as isize));
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = System.realloc(p, l, new);
        if !q.is_null() {
            note(new as isize - l.size() as isize);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live_bytes() -> isize {
    LIVE_BYTES.with(|c| c.get())
}

// ----- fixture -----

struct Fixture {
    cluster: Arc<Cluster>,
    keys: Vec<KeyPair>,
    verifier: Verifier,
}

impl Fixture {
    fn new(params: Params) -> Self {
        let TestCluster { cluster, keys } = TestCluster::new("review-findings", 4, params);
        let verifier = Verifier::new(cluster.clone(), [7; 32]);
        Fixture {
            cluster,
            keys,
            verifier,
        }
    }

    fn cid(&self) -> Digest {
        *self.cluster.cluster_id()
    }

    fn replica(&self, id: u32, durable: DurableState) -> Replica<Recorder> {
        Replica::new(
            self.cluster.clone(),
            ReplicaId(id),
            self.keys[id as usize].clone(),
            Recorder::default(),
            durable,
            Time(0),
        )
        .unwrap()
    }

    fn signed(&self, client: u8, ts: u64, op: &[u8]) -> SignedTx {
        SignedTx::sign(&self.cid(), &client_key(client), ts, op.to_vec())
    }

    fn tx(&mut self, client: u8, ts: u64, op: &[u8]) -> Verified<CheckedTx> {
        let tx = self.signed(client, ts, op);
        self.verifier.verify_tx(tx).unwrap()
    }

    /// Through the codec and the verifier, as the network would.
    fn wire(&mut self, from: u32, msg: &ReplicaMessage) -> Verified<VerifiedMessage> {
        let bytes = codec::encode(msg).unwrap();
        let msg = codec::decode(&bytes, 1 << 26).unwrap();
        self.verifier.verify_message(ReplicaId(from), msg).unwrap()
    }

    fn entry(&self, index: u64, prev: Digest, txs: Vec<SignedTx>) -> (Arc<Entry>, Digest) {
        let ids: Vec<_> = txs.iter().map(|t| t.id(&self.cid())).collect();
        let hash = entry_hash(&self.cid(), Term(0), Index(index), &prev, &ids);
        (
            Arc::new(Entry {
                term: Term(0),
                index: Index(index),
                prev_hash: prev,
                txs,
            }),
            hash,
        )
    }

    fn pre_append(&self, entry: &Arc<Entry>, hash: Digest) -> PreAppend {
        PreAppend {
            term: Term(0),
            entry: entry.clone(),
            leader_sig: self.keys[0].sign(&pre_append_digest(
                &self.cid(),
                Term(0),
                entry.index,
                &hash,
            )),
        }
    }

    fn certificate(&self, subject: VoteSubject, signers: &[u32]) -> Certificate {
        Certificate {
            subject,
            sigs: signers
                .iter()
                .map(|i| {
                    let v =
                        Vote::sign(&self.cid(), &self.keys[*i as usize], ReplicaId(*i), subject);
                    (v.replica, v.sig)
                })
                .collect(),
        }
    }

    /// A committed chain `1..=len` (one tx per entry, `op_bytes` each) with a CC for every index.
    fn committed_chain(&self, len: u64, op_bytes: usize) -> Chain {
        let mut entries = Vec::new();
        let mut ccs = Vec::new();
        let mut prev = self.cid();
        for i in 1..=len {
            let mut op = vec![0u8; op_bytes.max(8)];
            op[..8].copy_from_slice(&i.to_le_bytes());
            let (e, h) = self.entry(i, prev, vec![self.signed(1, i, &op)]);
            ccs.push(self.certificate(subject(Phase::Append, i, h, None), &[0, 1, 3]));
            entries.push(e);
            prev = h;
        }
        Chain { entries, ccs }
    }
}

struct Chain {
    entries: Vec<Arc<Entry>>,
    ccs: Vec<Certificate>,
}

impl Chain {
    fn cc(&self, index: u64) -> Certificate {
        self.ccs[index as usize - 1].clone()
    }
    /// What an honest peer answers to `FetchEntries { from, to }`.
    fn answer(&self, from: Index, to: Index) -> ReplicaMessage {
        let last = to.0.min(from.0 + 63).min(self.entries.len() as u64);
        ReplicaMessage::Entries {
            entries: self.entries[from.0 as usize - 1..last as usize].to_vec(),
            certificate: self.cc(last),
        }
    }
    fn durable(&self) -> DurableState {
        let mut d = DurableState::default();
        for e in &self.entries {
            d.apply(PersistOp::Entry(e.clone()));
        }
        for c in &self.ccs {
            d.apply(PersistOp::Certificate(c.clone()));
        }
        d
    }
}

fn subject(phase: Phase, index: u64, hash: Digest, digest: Option<Digest>) -> VoteSubject {
    VoteSubject {
        phase,
        term: Term(0),
        index: Index(index),
        entry_hash: hash,
        state_digest: digest,
    }
}

/// Makes a batch durable in `disk` and confirms it.
fn persist_all(r: &mut Replica<Recorder>, ready: &Ready, disk: &mut DurableState, now: Time) {
    if let Some(batch) = &ready.persist {
        disk.apply_batch(PersistBatch {
            id: batch.id,
            ops: batch.ops.clone(),
        });
        r.on_persisted(now, batch.id);
    }
}

/// Persists everything outstanding and returns all released output.
fn drain(r: &mut Replica<Recorder>, disk: &mut DurableState, now: Time) -> Ready {
    let mut out = Ready::default();
    loop {
        let ready = r.ready();
        let done = ready.persist.is_none();
        persist_all(r, &ready, disk, now);
        out.messages.extend(ready.messages);
        out.replies.extend(ready.replies);
        if done {
            return out;
        }
    }
}

fn heartbeat_us(fx: &Fixture) -> u64 {
    fx.cluster.params().heartbeat_interval.as_micros() as u64
}

// ------------------------------------------------------------------------------------------------

// FINDING 1: a single Byzantine replica can keep a lagging correct follower fetching from it
// forever. `on_entries` accepts unsolicited `Entries`, clears the outstanding fetch and asks the
// *sender* again (`request_fetch(from)`); the outstanding fetch then also suppresses the fetch
// that the leader's commit certificate would trigger, and its timeout is re-armed each time.
#[test]
fn finding_1_byzantine_peer_pins_a_lagging_follower_fetch_forever() {
    let mut fx = Fixture::new(Params::default());
    let chain = fx.committed_chain(40, 8); // 40 > the 16-entry window: only fetching helps
    let mut f = fx.replica(2, DurableState::default());
    let mut disk = DurableState::default();
    let step = heartbeat_us(&fx) / 2;
    let mut now = 1;

    // The Byzantine replica 3 forwards the newest CC first (it gets it when everyone does).
    let m = fx.wire(3, &ReplicaMessage::Commit(chain.cc(40)));
    f.on_message(Time(now), ReplicaId(3), m);

    let mut asked = Vec::new();
    for _ in 0..80 {
        // 40 heartbeat intervals
        now += step;
        // The correct leader keeps telling the follower how far it is behind (leader_tick).
        let m = fx.wire(0, &ReplicaMessage::Commit(chain.cc(40)));
        f.on_message(Time(now), ReplicaId(0), m);
        // Replica 3 never answers a fetch, but sends a valid, unsolicited, useless `Entries`.
        let m = fx.wire(
            3,
            &ReplicaMessage::Entries {
                entries: vec![chain.entries[0].clone()],
                certificate: chain.cc(1),
            },
        );
        f.on_message(Time(now), ReplicaId(3), m);
        f.on_tick(Time(now));
        let out = drain(&mut f, &mut disk, Time(now));
        for m in out.messages {
            if let (Target::Replica(p), ReplicaMessage::FetchEntries { from, to }) =
                (m.to, &m.message)
            {
                asked.push(p.0);
                if p.0 != 3 {
                    // Honest peers answer.
                    let answer = chain.answer(*from, *to);
                    let v = fx.wire(p.0, &answer);
                    f.on_message(Time(now), p, v);
                    drain(&mut f, &mut disk, Time(now));
                }
            }
        }
    }
    asked.dedup();
    assert_eq!(
        f.commit_index(),
        Index(40),
        "after 40 heartbeat intervals the follower is still at {} and only ever asked {:?}",
        f.commit_index(),
        asked
    );
}

// FINDING 2: `serve_fetch` answers every `FetchEntries` in full, with no check that the asker is
// behind and no limit per peer: a ~10-byte request buys up to `max_message_bytes / 2` of reply.
#[test]
fn finding_2_fetch_requests_are_an_unthrottled_bandwidth_amplifier() {
    let mut fx = Fixture::new(Params::default());
    let chain = fx.committed_chain(64, 32 << 10);
    let mut r = fx.replica(1, chain.durable());
    assert_eq!(r.commit_index(), Index(64));
    let request = ReplicaMessage::FetchEntries {
        from: Index(1),
        to: Index(64),
    };
    let request_bytes = codec::encode(&request).unwrap().len();
    let mut entries_sent = 0usize;
    let mut reply_bytes = 0usize;
    for _ in 0..100 {
        let m = fx.wire(3, &request);
        r.on_message(Time(1), ReplicaId(3), m);
        for m in r.ready().messages {
            if let ReplicaMessage::Entries { entries, .. } = &m.message {
                if reply_bytes == 0 {
                    reply_bytes = codec::encode(&m.message).unwrap().len();
                }
                entries_sent += entries.len();
            }
        }
    }
    assert!(
        entries_sent <= 2 * 64,
        "100 identical {request_bytes}-byte requests within one instant got {entries_sent} \
         entries back ({} MiB; {reply_bytes} bytes per reply)",
        (reply_bytes * entries_sent / 64) >> 20
    );
}

// FINDING 3: the leader tallies Commit votes by (index, digest) with no one-vote-per-replica
// rule, so one Byzantine replica can add an entry per distinct digest it signs, for every index
// in (last EC, commit index]. Memory grows linearly with the number of votes it sends.
#[test]
fn finding_3_one_replica_grows_the_commit_vote_tally_without_bound() {
    let mut fx = Fixture::new(Params::default());
    let mut leader = fx.replica(0, DurableState::default());
    let mut disk = DurableState::default();
    let tx = fx.tx(1, 1, b"a");
    leader.on_client_tx(Time(1), tx);
    drain(&mut leader, &mut disk, Time(1));
    let h1 = leader.entry_hash(Index(1)).unwrap();
    for phase in [Phase::PreAppend, Phase::Append] {
        for id in [1u32, 2] {
            let v = Vote::sign(
                &fx.cid(),
                &fx.keys[id as usize],
                ReplicaId(id),
                subject(phase, 1, h1, None),
            );
            let m = fx.wire(id, &ReplicaMessage::Vote(v));
            leader.on_message(Time(2), ReplicaId(id), m);
            drain(&mut leader, &mut disk, Time(2));
        }
    }
    assert_eq!(leader.commit_index(), Index(1));
    assert!(leader.latest_execution_certificate().is_none());

    let send = |fx: &mut Fixture, leader: &mut Replica<Recorder>, k: u32| {
        let mut d = [0u8; 32];
        d[..4].copy_from_slice(&k.to_le_bytes());
        let v = Vote::sign(
            &fx.cid(),
            &fx.keys[3],
            ReplicaId(3),
            subject(Phase::Commit, 1, h1, Some(Digest(d))),
        );
        let m = fx.wire(3, &ReplicaMessage::Vote(v));
        leader.on_message(Time(3), ReplicaId(3), m);
    };
    for k in 0..100 {
        send(&mut fx, &mut leader, k);
    }
    let base = live_bytes();
    for k in 100..3000 {
        send(&mut fx, &mut leader, k);
    }
    let grown = live_bytes() - base;
    assert!(
        grown < 16 << 10,
        "2900 Commit votes from one replica for one index left {grown} more bytes on the leader"
    );
}

// FINDING 4: the leader queue is bounded only by count (`max_pending_txs`), shared by all clients:
// one client (or one Byzantine replica via `Forward`, with keys it makes up) fills it and every
// other client gets `Busy`. Bytes are not bounded either (100_000 x 64 KiB ops = 6.5 GB).
#[test]
fn finding_4_one_client_fills_the_leader_queue_and_starves_the_others() {
    let mut fx = Fixture::new(Params {
        max_pending_txs: 64,
        pipeline_depth: 1,
        max_batch_txs: 1,
        ..Params::default()
    });
    let mut leader = fx.replica(0, DurableState::default());
    let mut disk = DurableState::default();
    for ts in 1..=70 {
        let tx = fx.tx(1, ts, b"flood");
        leader.on_client_tx(Time(1), tx);
    }
    drain(&mut leader, &mut disk, Time(1));
    let tx = fx.tx(2, 1, b"honest");
    leader.on_client_tx(Time(2), tx);
    let out = drain(&mut leader, &mut disk, Time(2));
    let busy = out
        .replies
        .iter()
        .any(|r| r.outcome == Outcome::Rejected(Rejection::Busy));
    assert!(
        !busy,
        "client 2's first tx is refused Busy because client 1 holds the whole queue"
    );
}

// FINDING 5: `on_pre_append` persists and appends the entry *before* `vote` may refuse, so a
// replica keeps (durably) an entry it refused to vote for, skips `after_log_grew`, and later
// chains PreAppend votes on top of it. Reachable after a CC-driven truncation (a Byzantine
// leader equivocated): the replica still holds its vote for the truncated entry.
#[test]
fn finding_5_an_entry_whose_vote_is_refused_is_still_appended_and_persisted() {
    let mut fx = Fixture::new(Params::default());
    let mut f = fx.replica(1, DurableState::default());
    let mut disk = DurableState::default();
    let cid = fx.cid();
    // The (Byzantine) leader sends B to replica 1 and A to the others.
    let (b, hb) = fx.entry(1, cid, vec![fx.signed(1, 1, b"B")]);
    let (_a, ha) = fx.entry(1, cid, vec![fx.signed(2, 1, b"A")]);
    let (c, hc) = fx.entry(1, cid, vec![fx.signed(3, 1, b"C")]);
    let m = fx.wire(0, &ReplicaMessage::PreAppend(fx.pre_append(&b, hb)));
    f.on_message(Time(1), ReplicaId(0), m);
    drain(&mut f, &mut disk, Time(1));
    // A is committed (PC and CC from 0, 2, 3): replica 1 drops B.
    let cc = fx.certificate(subject(Phase::Append, 1, ha, None), &[0, 2, 3]);
    let m = fx.wire(2, &ReplicaMessage::Commit(cc));
    f.on_message(Time(2), ReplicaId(2), m);
    drain(&mut f, &mut disk, Time(2));
    assert_eq!(f.last_index(), Index(0));
    // The leader now proposes yet another entry C at index 1.
    let m = fx.wire(0, &ReplicaMessage::PreAppend(fx.pre_append(&c, hc)));
    f.on_message(Time(3), ReplicaId(0), m);
    let ready = f.ready();
    let persisted_c = ready
        .persist
        .iter()
        .flat_map(|b| &b.ops)
        .any(|op| matches!(op, PersistOp::Entry(e) if Arc::ptr_eq(e, &c) || **e == *c));
    assert!(
        f.metrics()
            .refused
            .contains_key("would vote twice for one (phase, term, index)"),
        "the vote for C is refused"
    );
    assert!(
        f.last_index() == Index(0) && !persisted_c,
        "C, refused a vote, is in the log (tip {}) and persisted: {persisted_c}",
        f.last_index()
    );
}

// FINDING 6 (leader crash-restart inside a term): `Replica::new` recreates `LeaderState` with an
// empty `inflight`, so entries the leader proposed before the crash but that never got a PC are
// never driven again; followers then can never cast Append votes above them and the term stalls.
#[test]
fn finding_6_a_restarted_leader_never_finishes_its_earlier_proposals() {
    let mut fx = Fixture::new(Params::default());
    let mut disks = vec![DurableState::default(); 4];
    let mut rs: Vec<_> = (0..4)
        .map(|i| fx.replica(i, DurableState::default()))
        .collect();
    // Entry 1 reaches every follower; their votes are lost; the leader crashes.
    let tx = fx.tx(1, 1, b"a");
    rs[0].on_client_tx(Time(1), tx);
    let out = drain(&mut rs[0], &mut disks[0], Time(1));
    for m in out.messages {
        let v = fx.wire(0, &m.message);
        for i in 1..4 {
            rs[i].on_message(Time(2), ReplicaId(0), v.clone());
            drain(&mut rs[i], &mut disks[i], Time(2));
        }
    }
    rs[0] = fx.replica(0, disks[0].clone());
    assert_eq!(rs[0].last_index(), Index(1));
    // Normal operation resumes with a new tx; run for a simulated second with perfect delivery.
    let tx = fx.tx(1, 2, b"b");
    rs[0].on_client_tx(Time(3), tx);
    let mut now = 3;
    for _ in 0..200 {
        now += 5_000;
        let mut inflight = Vec::new();
        for (i, r) in rs.iter_mut().enumerate() {
            r.on_tick(Time(now));
            let out = drain(r, &mut disks[i], Time(now));
            inflight.extend(out.messages.into_iter().map(|m| (i as u32, m)));
        }
        for (from, m) in inflight {
            let v = fx.wire(from, &m.message);
            let targets: Vec<u32> = match m.to {
                Target::Replica(r) => vec![r.0],
                Target::AllOthers => (0..4).filter(|r| *r != from).collect(),
            };
            for t in targets {
                rs[t as usize].on_message(Time(now), ReplicaId(from), v.clone());
            }
        }
    }
    assert_eq!(
        rs[0].commit_index(),
        Index(2),
        "the restarted leader never commits (last index {})",
        rs[0].last_index()
    );
}

// ----- controls: the same scenarios without the fault pass, so the failures above are the bug -----

/// FINDING 1 without the refreshing `Entries`: the fetch to replica 3 times out, the follower
/// rotates to an honest peer and catches up.
#[test]
fn control_1_without_unsolicited_entries_the_follower_catches_up() {
    let mut fx = Fixture::new(Params::default());
    let chain = fx.committed_chain(40, 8);
    let mut f = fx.replica(2, DurableState::default());
    let mut disk = DurableState::default();
    let step = heartbeat_us(&fx) / 2;
    let mut now = 1;
    let m = fx.wire(3, &ReplicaMessage::Commit(chain.cc(40)));
    f.on_message(Time(now), ReplicaId(3), m);
    for _ in 0..80 {
        now += step;
        let m = fx.wire(0, &ReplicaMessage::Commit(chain.cc(40)));
        f.on_message(Time(now), ReplicaId(0), m);
        f.on_tick(Time(now));
        let out = drain(&mut f, &mut disk, Time(now));
        for m in out.messages {
            if let (Target::Replica(p), ReplicaMessage::FetchEntries { from, to }) =
                (m.to, &m.message)
            {
                if p.0 != 3 {
                    let v = fx.wire(p.0, &chain.answer(*from, *to));
                    f.on_message(Time(now), p, v);
                    drain(&mut f, &mut disk, Time(now));
                }
            }
        }
    }
    assert_eq!(f.commit_index(), Index(40));
}

/// FINDING 6 without the restart: the same lost votes are recovered by retransmission.
#[test]
fn control_6_without_the_restart_the_leader_commits() {
    let mut fx = Fixture::new(Params::default());
    let mut disks = vec![DurableState::default(); 4];
    let mut rs: Vec<_> = (0..4)
        .map(|i| fx.replica(i, DurableState::default()))
        .collect();
    let tx = fx.tx(1, 1, b"a");
    rs[0].on_client_tx(Time(1), tx);
    let out = drain(&mut rs[0], &mut disks[0], Time(1));
    for m in out.messages {
        let v = fx.wire(0, &m.message);
        for i in 1..4 {
            rs[i].on_message(Time(2), ReplicaId(0), v.clone());
            drain(&mut rs[i], &mut disks[i], Time(2));
        }
    }
    let tx = fx.tx(1, 2, b"b");
    rs[0].on_client_tx(Time(3), tx);
    let mut now = 3;
    for _ in 0..200 {
        now += 5_000;
        let mut inflight = Vec::new();
        for (i, r) in rs.iter_mut().enumerate() {
            r.on_tick(Time(now));
            let out = drain(r, &mut disks[i], Time(now));
            inflight.extend(out.messages.into_iter().map(|m| (i as u32, m)));
        }
        for (from, m) in inflight {
            let v = fx.wire(from, &m.message);
            let targets: Vec<u32> = match m.to {
                Target::Replica(r) => vec![r.0],
                Target::AllOthers => (0..4).filter(|r| *r != from).collect(),
            };
            for t in targets {
                rs[t as usize].on_message(Time(now), ReplicaId(from), v.clone());
            }
        }
    }
    assert_eq!(rs[0].commit_index(), Index(2));
}
