//! Unit tests of each message handler, driving replicas by hand.

use std::sync::Arc;

use super::*;
use crate::config::Params;
use crate::crypto::KeyPair;
use crate::message::{pre_append_digest, Heartbeat, PreAppend, Reply, SignedTx};
use crate::persist::PersistBatch;
use crate::testing::Recorder;
use crate::verify::Verifier;

/// Appends each op to a list; the result is the list's length after the op.
pub(super) struct Fixture {
    pub(super) cluster: Arc<Cluster>,
    pub(super) keys: Vec<KeyPair>,
    verifier: Verifier,
}

impl Fixture {
    pub(super) fn new(n: usize) -> Self {
        Self::with_params(n, Params::default())
    }

    pub(super) fn with_params(n: usize, params: Params) -> Self {
        let crate::testing::TestCluster { cluster, keys } =
            crate::testing::TestCluster::new("replica-tests", n, params);
        let verifier = Verifier::new(cluster.clone(), [7; 32]);
        Fixture {
            cluster,
            keys,
            verifier,
        }
    }

    pub(super) fn cid(&self) -> Digest {
        *self.cluster.cluster_id()
    }

    pub(super) fn replica(&self, id: u32, durable: DurableState) -> Replica<Recorder> {
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

    pub(super) fn signed(&self, client: u8, ts: u64, op: &[u8]) -> SignedTx {
        SignedTx::sign(
            &self.cid(),
            &crate::testing::client_key(client),
            ts,
            op.to_vec(),
        )
    }

    pub(super) fn tx(&mut self, client: u8, ts: u64, op: &[u8]) -> Verified<CheckedTx> {
        let tx = self.signed(client, ts, op);
        self.verifier.verify_tx(tx).unwrap()
    }

    /// Passes a message through the codec and the verifier, as the network would, and returns
    /// the verifier's verdict.
    pub(super) fn verify(
        &mut self,
        from: u32,
        msg: &ReplicaMessage,
    ) -> Result<Verified<VerifiedMessage>, crate::verify::VerifyError> {
        let bytes = crate::codec::encode(msg).unwrap();
        let msg = crate::codec::decode(&bytes, 1 << 24).unwrap();
        self.verifier.verify_message(ReplicaId(from), msg)
    }

    /// Passes a message through the codec and the verifier, as the network would.
    pub(super) fn wire(&mut self, from: u32, msg: &ReplicaMessage) -> Verified<VerifiedMessage> {
        let bytes = crate::codec::encode(msg).unwrap();
        let msg = crate::codec::decode(&bytes, 1 << 24).unwrap();
        self.verifier.verify_message(ReplicaId(from), msg).unwrap()
    }

    pub(super) fn pre_append(
        &self,
        term: Term,
        index: u64,
        prev: Digest,
        txs: Vec<SignedTx>,
    ) -> PreAppend {
        let entry = Entry {
            term,
            index: Index(index),
            prev_hash: prev,
            txs,
        };
        let ids: Vec<_> = entry.txs.iter().map(|t| t.id(&self.cid())).collect();
        let hash = crate::message::entry_hash(&self.cid(), term, Index(index), &prev, &ids);
        let leader = self.cluster.leader_of(term).as_usize();
        let leader_sig =
            self.keys[leader].sign(&pre_append_digest(&self.cid(), term, Index(index), &hash));
        PreAppend {
            term,
            entry: Arc::new(entry),
            leader_sig,
        }
    }

    pub(super) fn certificate(&self, subject: VoteSubject, signers: &[u32]) -> Certificate {
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
}

pub(super) fn subject(
    phase: Phase,
    index: u64,
    hash: Digest,
    digest: Option<Digest>,
) -> VoteSubject {
    VoteSubject {
        phase,
        term: Term(0),
        index: Index(index),
        entry_hash: hash,
        state_digest: digest,
    }
}

pub(super) fn votes_in(ready: &Ready) -> Vec<VoteSubject> {
    ready
        .messages
        .iter()
        .filter_map(|m| match &m.message {
            ReplicaMessage::Vote(v) => Some(v.subject),
            _ => None,
        })
        .collect()
}

/// Makes a batch durable in `state` and confirms it.
pub(super) fn persist_all<S: StateMachine>(
    r: &mut Replica<S>,
    ready: &Ready,
    state: &mut DurableState,
) {
    if let Some(batch) = &ready.persist {
        state.apply_batch(PersistBatch {
            id: batch.id,
            ops: batch.ops.clone(),
        });
        r.on_persisted(Time(0), batch.id);
    }
}

#[test]
fn leader_proposal_leaves_only_after_it_is_durable() {
    let mut fx = Fixture::new(4);
    let mut leader = fx.replica(0, DurableState::default());
    let tx = fx.tx(1, 1, b"a");
    leader.on_client_tx(Time(10), tx);
    let ready = leader.ready();
    let batch = ready.persist.clone().expect("entry and vote to persist");
    assert!(matches!(batch.ops[0], PersistOp::Entry(_)));
    assert!(matches!(batch.ops[1], PersistOp::Vote(_)));
    assert!(
        ready.messages.is_empty(),
        "nothing may leave before the entry is durable"
    );
    leader.on_persisted(Time(11), batch.id);
    let ready = leader.ready();
    assert_eq!(ready.messages.len(), 1);
    assert!(matches!(
        ready.messages[0].message,
        ReplicaMessage::PreAppend(_)
    ));
    assert_eq!(ready.messages[0].to, Target::AllOthers);
}

#[test]
fn follower_votes_after_persisting_and_refuses_bad_proposals() {
    let mut fx = Fixture::new(4);
    let mut f = fx.replica(1, DurableState::default());
    let mut disk = DurableState::default();
    let t1 = fx.signed(1, 1, b"a");
    let good = fx.pre_append(Term(0), 1, fx.cid(), vec![t1.clone()]);

    // Wrong prev_hash: refused.
    let bad_chain = fx.pre_append(Term(0), 1, Digest([9; 32]), vec![t1.clone()]);
    let m = fx.wire(0, &ReplicaMessage::PreAppend(bad_chain));
    f.on_message(Time(1), ReplicaId(0), m);
    assert!(f.ready().persist.is_none());
    assert_eq!(
        f.metrics()
            .refused
            .get("pre-append does not chain to the log's tip"),
        Some(&1)
    );

    // Good: entry + vote persisted, vote released only after confirmation.
    let m = fx.wire(0, &ReplicaMessage::PreAppend(good.clone()));
    f.on_message(Time(2), ReplicaId(0), m);
    let ready = f.ready();
    assert!(votes_in(&ready).is_empty());
    persist_all(&mut f, &ready, &mut disk);
    let ready = f.ready();
    let votes = votes_in(&ready);
    assert_eq!(votes.len(), 1);
    assert_eq!(votes[0].phase, Phase::PreAppend);
    assert_eq!(ready.messages[0].to, Target::Replica(ReplicaId(0)));

    // A retransmission of the same entry gets the same vote again.
    let m = fx.wire(0, &ReplicaMessage::PreAppend(good));
    f.on_message(Time(4), ReplicaId(0), m);
    assert_eq!(votes_in(&f.ready()), votes);

    // An entry that repeats an executed-or-pending tx is stale.
    let h1 = f.entry_hash(Index(1)).unwrap();
    let replay = fx.pre_append(Term(0), 2, h1, vec![t1]);
    let m = fx.wire(0, &ReplicaMessage::PreAppend(replay));
    f.on_message(Time(5), ReplicaId(0), m);
    assert!(f.ready().persist.is_none());
    assert_eq!(
        f.metrics()
            .refused
            .get("pre-append holds a stale or repeated tx"),
        Some(&1)
    );

    // A second, different entry at the same (term, index), signed by the leader: equivocation.
    // Refused, no vote; the two signed proposals become evidence naming the leader, and the
    // replica leaves the term at once.
    let t2 = fx.signed(2, 1, b"b");
    let other = fx.pre_append(Term(0), 1, fx.cid(), vec![t2]);
    let m = fx.wire(0, &ReplicaMessage::PreAppend(other));
    f.on_message(Time(6), ReplicaId(0), m);
    let ready = f.ready();
    assert!(votes_in(&ready).is_empty());
    // The proof states nothing about this replica: it is forwarded at once. Its TermChange
    // waits for the durable record that it left the term.
    let kinds: Vec<&str> = ready.messages.iter().map(|m| m.message.kind()).collect();
    assert_eq!(kinds, vec!["equivocation"]);
    assert_eq!(
        f.metrics()
            .refused
            .get("pre-append conflicts with the entry held at its index"),
        Some(&1)
    );
    assert_eq!(f.evidence().len(), 1);
    let proof = f.evidence()[0].clone();
    assert_eq!((proof.term, proof.index), (Term(0), Index(1)));
    fx.verifier.verify_equivocation(proof).unwrap();
    let batch = ready.persist.expect("the term change to persist");
    assert!(batch.ops.contains(&PersistOp::SeekTerm(Term(1))));
    f.on_persisted(Time(7), batch.id);
    let kinds: Vec<&str> = f
        .ready()
        .messages
        .iter()
        .map(|m| m.message.kind())
        .collect();
    assert_eq!(kinds, vec!["term-change"]);
    assert!(f.is_changing_term());
}

#[test]
fn proposals_from_a_non_leader_or_another_term_are_refused() {
    let mut fx = Fixture::new(4);
    let t1 = fx.signed(1, 1, b"a");
    let p = fx.pre_append(Term(0), 1, fx.cid(), vec![t1.clone()]);
    let bytes = crate::codec::encode(&ReplicaMessage::PreAppend(p)).unwrap();
    let msg = crate::codec::decode(&bytes, 1 << 20).unwrap();
    assert!(matches!(
        fx.verifier.verify_message(ReplicaId(2), msg),
        Err(crate::verify::VerifyError::WrongSender { .. })
    ));
    // A valid proposal of term 1 (leader 1) reaches a replica still in term 0.
    let mut f = fx.replica(2, DurableState::default());
    let p = fx.pre_append(Term(1), 1, fx.cid(), vec![t1]);
    let m = fx.wire(1, &ReplicaMessage::PreAppend(p));
    f.on_message(Time(1), ReplicaId(1), m);
    assert!(f.ready().persist.is_none());
    assert_eq!(
        f.metrics().refused.get("pre-append for another term"),
        Some(&1)
    );
}

#[test]
fn out_of_order_proposals_are_buffered_until_the_gap_fills() {
    let mut fx = Fixture::new(4);
    let mut f = fx.replica(1, DurableState::default());
    let p1 = fx.pre_append(Term(0), 1, fx.cid(), vec![fx.signed(1, 1, b"a")]);
    let ids: Vec<_> = p1.entry.txs.iter().map(|t| t.id(&fx.cid())).collect();
    let h1 = crate::message::entry_hash(&fx.cid(), Term(0), Index(1), &fx.cid(), &ids);
    let p2 = fx.pre_append(Term(0), 2, h1, vec![fx.signed(1, 2, b"b")]);
    let m = fx.wire(0, &ReplicaMessage::PreAppend(p2));
    f.on_message(Time(1), ReplicaId(0), m);
    assert_eq!(f.last_index(), Index(0));
    let m = fx.wire(0, &ReplicaMessage::PreAppend(p1));
    f.on_message(Time(2), ReplicaId(0), m);
    assert_eq!(f.last_index(), Index(2));
}

#[test]
fn append_votes_wait_for_every_lower_entry_to_be_prepared() {
    let mut fx = Fixture::new(4);
    let mut f = fx.replica(1, DurableState::default());
    let mut disk = DurableState::default();
    let p1 = fx.pre_append(Term(0), 1, fx.cid(), vec![fx.signed(1, 1, b"a")]);
    let m = fx.wire(0, &ReplicaMessage::PreAppend(p1));
    f.on_message(Time(1), ReplicaId(0), m);
    let h1 = f.entry_hash(Index(1)).unwrap();
    let p2 = fx.pre_append(Term(0), 2, h1, vec![fx.signed(1, 2, b"b")]);
    let m = fx.wire(0, &ReplicaMessage::PreAppend(p2));
    f.on_message(Time(2), ReplicaId(0), m);
    let h2 = f.entry_hash(Index(2)).unwrap();
    let r = f.ready();
    persist_all(&mut f, &r, &mut disk);
    f.ready();

    // PC for 2 first: stored, but no Append vote while 1 is unprepared.
    let pc2 = fx.certificate(subject(Phase::PreAppend, 2, h2, None), &[0, 2, 3]);
    let m = fx.wire(0, &ReplicaMessage::Append(pc2));
    f.on_message(Time(3), ReplicaId(0), m);
    let r = f.ready();
    persist_all(&mut f, &r, &mut disk);
    assert!(votes_in(&f.ready()).is_empty());

    // PC for 1: both Append votes, in order, after persistence.
    let pc1 = fx.certificate(subject(Phase::PreAppend, 1, h1, None), &[0, 2, 3]);
    let m = fx.wire(0, &ReplicaMessage::Append(pc1));
    f.on_message(Time(4), ReplicaId(0), m);
    let r = f.ready();
    assert!(votes_in(&r).is_empty());
    persist_all(&mut f, &r, &mut disk);
    let votes = votes_in(&f.ready());
    assert_eq!(
        votes
            .iter()
            .map(|v| (v.phase, v.index.0))
            .collect::<Vec<_>>(),
        vec![(Phase::Append, 1), (Phase::Append, 2)]
    );

    // A PC for another entry than the one held is refused.
    let bogus = fx.certificate(
        subject(Phase::PreAppend, 1, Digest([5; 32]), None),
        &[0, 2, 3],
    );
    let m = fx.wire(0, &ReplicaMessage::Append(bogus));
    f.on_message(Time(5), ReplicaId(0), m);
    assert_eq!(
        f.metrics()
            .refused
            .get("prepared certificate for another entry than the one held"),
        Some(&1)
    );
}

#[test]
fn commit_certificate_executes_replies_and_votes_with_the_digest() {
    let mut fx = Fixture::new(4);
    let mut f = fx.replica(1, DurableState::default());
    let mut disk = DurableState::default();
    let p1 = fx.pre_append(
        Term(0),
        1,
        fx.cid(),
        vec![fx.signed(1, 1, b"a"), fx.signed(2, 1, b"b")],
    );
    let m = fx.wire(0, &ReplicaMessage::PreAppend(p1));
    f.on_message(Time(1), ReplicaId(0), m);
    let h1 = f.entry_hash(Index(1)).unwrap();
    let r = f.ready();
    persist_all(&mut f, &r, &mut disk);
    let cc = fx.certificate(subject(Phase::Append, 1, h1, None), &[0, 2, 3]);
    let m = fx.wire(0, &ReplicaMessage::Commit(cc));
    f.on_message(Time(2), ReplicaId(0), m);
    assert_eq!(f.commit_index(), Index(1));
    assert_eq!(f.applied_index(), Index(1));
    let r = f.ready();
    assert!(
        r.replies.is_empty(),
        "replies wait for the commit certificate to be durable"
    );
    persist_all(&mut f, &r, &mut disk);
    let r = f.ready();
    assert_eq!(r.replies.len(), 2);
    for reply in &r.replies {
        fx.verifier.verify_reply(reply).unwrap();
    }
    let votes = votes_in(&r);
    assert_eq!(votes.len(), 1);
    assert_eq!(votes[0].phase, Phase::Commit);
    assert_eq!(votes[0].state_digest, Some(f.state_digest()));

    // A matching execution certificate is fine; a different digest is divergence.
    let ec = fx.certificate(
        subject(Phase::Commit, 1, h1, Some(f.state_digest())),
        &[0, 2, 3],
    );
    let m = fx.wire(0, &ReplicaMessage::Executed(ec));
    f.on_message(Time(3), ReplicaId(0), m);
    assert!(f.divergence().is_none());
    let bad = fx.certificate(
        subject(Phase::Commit, 1, h1, Some(Digest([1; 32]))),
        &[0, 2, 3],
    );
    let mut g = fx.replica(2, disk.clone());
    let m = fx.wire(0, &ReplicaMessage::Executed(bad));
    g.on_message(Time(3), ReplicaId(0), m);
    assert_eq!(g.divergence().map(|d| d.index), Some(Index(1)));
}

#[test]
fn a_restarted_replica_never_votes_twice_for_one_slot() {
    let mut fx = Fixture::new(4);
    let mut disk = DurableState::default();
    let mut f = fx.replica(1, DurableState::default());
    let a = fx.pre_append(Term(0), 1, fx.cid(), vec![fx.signed(1, 1, b"a")]);
    let m = fx.wire(0, &ReplicaMessage::PreAppend(a));
    f.on_message(Time(1), ReplicaId(0), m);
    let r = f.ready();
    persist_all(&mut f, &r, &mut disk);
    assert_eq!(votes_in(&f.ready()).len(), 1);

    // Restart from disk, but pretend the entry itself was lost (only the vote survived): the
    // replica must still refuse to vote for another entry at (term 0, index 1).
    let mut only_votes = disk.clone();
    only_votes.entries.clear();
    let mut f = fx.replica(1, only_votes);
    let b = fx.pre_append(Term(0), 1, fx.cid(), vec![fx.signed(2, 1, b"b")]);
    let m = fx.wire(0, &ReplicaMessage::PreAppend(b));
    f.on_message(Time(2), ReplicaId(0), m);
    let r = f.ready();
    persist_all(&mut f, &r, &mut disk);
    assert!(votes_in(&f.ready()).is_empty());
    assert_eq!(
        f.metrics()
            .refused
            .get("would vote twice for one (phase, term, index)"),
        Some(&1)
    );
}

#[test]
fn client_admission_refusals_and_cached_replies() {
    let mut fx = Fixture::new(4);
    let mut leader = fx.replica(0, DurableState::default());
    let tx = fx.tx(1, 1, b"forbidden");
    leader.on_client_tx(Time(1), tx);
    let r = leader.ready();
    assert!(r.persist.is_none());
    assert_eq!(r.replies.len(), 1);
    assert_eq!(
        r.replies[0].outcome,
        Outcome::Rejected(Rejection::Refused("forbidden op".into()))
    );
    fx.verifier.verify_reply(&r.replies[0]).unwrap();

    // A follower forwards a client's tx to the leader.
    let mut f = fx.replica(1, DurableState::default());
    let tx = fx.tx(1, 2, b"ok");
    f.on_client_tx(Time(1), tx);
    let r = f.ready();
    assert!(matches!(r.messages[0].message, ReplicaMessage::Forward(_)));
    assert_eq!(r.messages[0].to, Target::Replica(ReplicaId(0)));
}

/// Runs a whole cluster in memory with instant delivery and persistence.
fn run_cluster(
    fx: &mut Fixture,
    replicas: &mut [Replica<Recorder>],
    txs: Vec<Verified<CheckedTx>>,
) -> Vec<Reply> {
    let mut disks = vec![DurableState::default(); replicas.len()];
    let mut replies = Vec::new();
    let mut now = 0u64;
    for tx in txs {
        replicas[0].on_client_tx(Time(now), tx);
    }
    for _round in 0..10_000 {
        now += 100;
        let mut inflight = Vec::new();
        let mut idle = true;
        for (i, r) in replicas.iter_mut().enumerate() {
            r.on_tick(Time(now));
            let ready = r.ready();
            if !ready.is_empty() {
                idle = false;
            }
            persist_all(r, &ready, &mut disks[i]);
            let after = r.ready();
            for m in ready.messages.into_iter().chain(after.messages) {
                inflight.push((i as u32, m));
            }
            replies.extend(ready.replies.into_iter().chain(after.replies));
        }
        for (from, m) in inflight {
            let targets: Vec<u32> = match m.to {
                Target::Replica(r) => vec![r.0],
                Target::AllOthers => (0..replicas.len() as u32).filter(|r| *r != from).collect(),
            };
            let verified = fx.wire(from, &m.message);
            for t in targets {
                replicas[t as usize].on_message(Time(now), ReplicaId(from), verified.clone());
            }
        }
        if idle
            && replicas
                .iter()
                .all(|r| !r.persistence_outstanding() && r.held_messages() == 0)
            && now > 10_000
        {
            break;
        }
    }
    replies
}

#[test]
fn a_cluster_commits_executes_once_and_agrees() {
    let mut fx = Fixture::new(4);
    let mut replicas: Vec<_> = (0..4)
        .map(|i| fx.replica(i, DurableState::default()))
        .collect();
    let mut txs = Vec::new();
    for client in 0..10u8 {
        for ts in 1..=5u64 {
            txs.push(fx.tx(client, ts, &[client, ts as u8]));
        }
    }
    // The same tx twice: executed once.
    txs.push(fx.tx(3, 5, &[3, 5]));
    let replies = run_cluster(&mut fx, &mut replicas, txs);
    for r in &replicas {
        assert_eq!(
            r.app().0.len(),
            50,
            "replica {} executed {}",
            r.id(),
            r.app().0.len()
        );
        assert_eq!(r.state_digest(), replicas[0].state_digest());
        assert_eq!(r.commit_index(), replicas[0].commit_index());
        assert!(r.latest_execution_certificate().is_some());
    }
    // Every replica replied to every tx.
    assert_eq!(replies.len(), 50 * 4);
    for reply in &replies {
        fx.verifier.verify_reply(reply).unwrap();
    }
}

#[test]
fn an_idle_leader_heartbeats_and_a_follower_catches_up_from_it() {
    let mut fx = Fixture::new(4);
    let mut leader = fx.replica(0, DurableState::default());
    let mut disk = DurableState::default();
    let interval = fx.cluster.params().heartbeat_interval.as_micros() as u64;
    // Commit one entry with votes from replicas 1 and 2 (replica 3 misses everything).
    leader.on_client_tx(Time(1), fx.tx(1, 1, b"a"));
    let r = leader.ready();
    persist_all(&mut leader, &r, &mut disk);
    leader.ready();
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
            let r = leader.ready();
            persist_all(&mut leader, &r, &mut disk);
        }
    }
    assert_eq!(leader.commit_index(), Index(1));
    leader.ready();
    // Idle for a heartbeat interval: a signed heartbeat with the newest commit certificate.
    leader.on_tick(Time(2 + 2 * interval));
    let r = leader.ready();
    let hb = r
        .messages
        .iter()
        .find_map(|m| match &m.message {
            ReplicaMessage::Heartbeat(hb) => Some(hb.clone()),
            _ => None,
        })
        .expect("a heartbeat");
    assert_eq!(
        hb.commit.as_ref().map(|cc| cc.subject.index),
        Some(Index(1))
    );
    // Replica 3 never saw entry 1: the heartbeat makes it fetch, and the answer commits it.
    let mut lagging = fx.replica(3, DurableState::default());
    let m = fx.wire(0, &ReplicaMessage::Heartbeat(hb));
    lagging.on_message(Time(3 + 2 * interval), ReplicaId(0), m);
    assert_eq!(lagging.last_leader_contact(), Time(3 + 2 * interval));
    let fetch = lagging.ready().messages;
    assert!(matches!(
        fetch[0].message,
        ReplicaMessage::FetchEntries { .. }
    ));
    let m = fx.wire(3, &fetch[0].message);
    leader.on_message(Time(4 + 2 * interval), ReplicaId(3), m);
    let answer = leader.ready().messages;
    let m = fx.wire(0, &answer[0].message);
    lagging.on_message(Time(5 + 2 * interval), ReplicaId(0), m);
    assert_eq!(lagging.commit_index(), Index(1));
    // A heartbeat from a replica that does not lead the term is refused by the verifier.
    let forged = Heartbeat::sign(&fx.cid(), &fx.keys[2], Term(0), None);
    let bytes = crate::codec::encode(&ReplicaMessage::Heartbeat(forged)).unwrap();
    let msg = crate::codec::decode(&bytes, 1 << 20).unwrap();
    assert!(fx.verifier.verify_message(ReplicaId(2), msg).is_err());
}

#[test]
fn one_replica_alone_cannot_force_a_term_change_but_f_plus_one_can() {
    let mut fx = Fixture::new(4);
    let mut f = fx.replica(2, DurableState::default());
    let change = |fx: &Fixture, from: u32, term: u64| {
        crate::message::TermChange::sign(
            &fx.cid(),
            &fx.keys[from as usize],
            ReplicaId(from),
            Term(term),
            None,
            vec![],
        )
    };
    // One replica pushes a very high term: stored, but no move.
    let m = fx.wire(3, &ReplicaMessage::TermChange(change(&fx, 3, 7)));
    f.on_message(Time(1), ReplicaId(3), m);
    assert_eq!((f.term(), f.is_changing_term()), (Term(0), false));
    // A second one (f + 1 = 2 in n = 4) asks for term 5: join the smallest of them, 5.
    let m = fx.wire(1, &ReplicaMessage::TermChange(change(&fx, 1, 5)));
    f.on_message(Time(2), ReplicaId(1), m);
    assert_eq!((f.term(), f.is_changing_term()), (Term(5), true));
    // Its own TermChange for 5 leaves only once the move is durable.
    let ready = f.ready();
    assert!(ready.messages.is_empty());
    let batch = ready.persist.expect("SeekTerm to persist");
    assert!(batch.ops.contains(&PersistOp::SeekTerm(Term(5))));
    f.on_persisted(Time(3), batch.id);
    let sent = f.ready().messages;
    assert!(matches!(&sent[0].message, ReplicaMessage::TermChange(tc) if tc.new_term == Term(5)));
    // Term 5 does not start within term_change_timeout: the replica moves on to 6, and the
    // next timeout is twice as long.
    let timeout = fx.cluster.params().term_change_timeout.as_micros() as u64;
    f.on_tick(Time(3 + timeout));
    assert_eq!(f.term(), Term(6));
    f.on_tick(Time(3 + 2 * timeout));
    assert_eq!(f.term(), Term(6), "the second timeout is doubled");
    f.on_tick(Time(3 + 3 * timeout + 1));
    assert_eq!(f.term(), Term(7));
}

/// Replica 1 of four, after TermChanges for term 1 from replicas 2 and 3 (with its own, a
/// quorum), each batch persisted: it leads term 1. Returns it and its disk.
fn leader_of_term_one(fx: &mut Fixture) -> (Replica<Recorder>, DurableState) {
    let mut l = fx.replica(1, DurableState::default());
    let mut disk = DurableState::default();
    for from in [2u32, 3] {
        let tc = crate::message::TermChange::sign(
            &fx.cid(),
            &fx.keys[from as usize],
            ReplicaId(from),
            Term(1),
            None,
            vec![],
        );
        let m = fx.wire(from, &ReplicaMessage::TermChange(tc));
        l.on_message(Time(1), ReplicaId(from), m);
        let r = l.ready();
        persist_all(&mut l, &r, &mut disk);
    }
    (l, disk)
}

#[test]
fn a_quorum_of_term_changes_starts_the_term_at_its_leader() {
    let mut fx = Fixture::new(4);
    let (mut l, disk) = leader_of_term_one(&mut fx);
    // Two others ask (f + 1): it joins, and with its own TermChange that is a quorum of 3.
    assert_eq!(
        (l.term(), l.is_changing_term(), l.is_leader()),
        (Term(1), false, true)
    );
    let sent: Vec<&str> = l
        .ready()
        .messages
        .iter()
        .map(|m| m.message.kind())
        .collect();
    assert!(sent.contains(&"new-term"), "{sent:?}");
    assert_eq!(disk.term, Term(1));
    assert!(disk.new_term.is_some() && !disk.seeking);
}

#[test]
fn a_new_leader_announces_its_term_only_once_entering_it_is_durable() {
    // n = 7: f + 1 = 3 TermChanges make replica 1 join term 1; a quorum is 5.
    let mut fx = Fixture::new(7);
    let mut l = fx.replica(1, DurableState::default());
    let mut disk = DurableState::default();
    let tc = |fx: &Fixture, from: u32| {
        crate::message::TermChange::sign(
            &fx.cid(),
            &fx.keys[from as usize],
            ReplicaId(from),
            Term(1),
            None,
            vec![],
        )
    };
    for from in [2u32, 3, 4] {
        let m = fx.wire(from, &ReplicaMessage::TermChange(tc(&fx, from)));
        l.on_message(Time(1), ReplicaId(from), m);
    }
    assert!(l.is_changing_term());
    let r = l.ready();
    persist_all(&mut l, &r, &mut disk); // SeekTerm(1) is durable now
    l.ready();
    // The fifth TermChange (with its own) completes the quorum: it enters term 1.
    let m = fx.wire(5, &ReplicaMessage::TermChange(tc(&fx, 5)));
    l.on_message(Time(2), ReplicaId(5), m);
    assert!(l.is_leader() && !l.is_changing_term());
    let r = l.ready();
    let kinds: Vec<&str> = r.messages.iter().map(|m| m.message.kind()).collect();
    assert!(
        !kinds.contains(&"new-term"),
        "NewTerm left before EnterTerm was durable: {kinds:?}"
    );
    let batch = r.persist.clone().expect("EnterTerm to persist");
    assert!(batch
        .ops
        .iter()
        .any(|op| matches!(op, PersistOp::EnterTerm(_))));
    persist_all(&mut l, &r, &mut disk);
    let kinds: Vec<&str> = l
        .ready()
        .messages
        .iter()
        .map(|m| m.message.kind())
        .collect();
    assert!(kinds.contains(&"new-term"), "{kinds:?}");
}

#[test]
fn requests_for_entries_are_not_an_unthrottled_amplifier() {
    let mut fx = Fixture::new(4);
    let mut leader = fx.replica(0, DurableState::default());
    let mut disk = DurableState::default();
    leader.on_client_tx(Time(1), fx.tx(1, 1, b"a"));
    let r = leader.ready();
    persist_all(&mut leader, &r, &mut disk);
    leader.ready();
    let hash = leader.entry_hash(Index(1)).unwrap();
    let ask = ReplicaMessage::FetchChosen {
        index: Index(1),
        hash,
    };
    let mut answers = 0;
    for _ in 0..10 {
        let m = fx.wire(2, &ask);
        leader.on_message(Time(2), ReplicaId(2), m);
        answers += leader.ready().messages.len();
    }
    assert_eq!(answers, 1, "ten identical requests at once get one answer");
    // A heartbeat interval later, the same request is answered again.
    let later = Time(3 + fx.cluster.params().heartbeat_interval.as_micros() as u64);
    let m = fx.wire(2, &ask);
    leader.on_message(later, ReplicaId(2), m);
    assert!(leader
        .ready()
        .messages
        .iter()
        .any(|m| matches!(m.message, ReplicaMessage::ChosenEntry(_))));
}

#[test]
fn an_invalid_message_from_the_leader_is_an_immediate_reason_to_leave_its_term() {
    let fx = Fixture::new(4);
    // From a follower: nothing happens.
    let mut r = fx.replica(2, DurableState::default());
    r.on_invalid_message(Time(1), ReplicaId(1));
    assert!(!r.is_changing_term());
    // From the leader of the current term: leave it, durably, and say so.
    r.on_invalid_message(Time(2), ReplicaId(0));
    assert!(r.is_changing_term());
    assert_eq!(r.term(), Term(1));
    let ready = r.ready();
    let persist = ready.persist.expect("seeking a term is persisted first");
    assert!(persist
        .ops
        .iter()
        .any(|op| matches!(op, PersistOp::SeekTerm(Term(1)))));
    // The TermChange waits for that batch.
    assert!(ready.messages.is_empty());
    r.on_persisted(Time(3), persist.id);
    assert!(r
        .ready()
        .messages
        .iter()
        .any(|m| matches!(&m.message, ReplicaMessage::TermChange(tc) if tc.new_term == Term(1))));
}

#[test]
fn a_leader_that_breaks_its_own_chain_is_left_at_once() {
    let mut fx = Fixture::new(4);
    let mut r = fx.replica(1, DurableState::default());
    let p1 = fx.pre_append(Term(0), 1, fx.cid(), vec![fx.signed(1, 1, b"a")]);
    let m = fx.wire(0, &ReplicaMessage::PreAppend(p1));
    r.on_message(Time(1), ReplicaId(0), m);
    assert_eq!(r.last_index(), Index(1));
    // Index 2 signed by the same leader in the same term, chained to something else.
    let p2 = fx.pre_append(Term(0), 2, Digest([9; 32]), vec![fx.signed(1, 2, b"b")]);
    let m = fx.wire(0, &ReplicaMessage::PreAppend(p2));
    r.on_message(Time(2), ReplicaId(0), m);
    assert!(r.is_changing_term(), "the leader broke its chain");
    assert_eq!(r.term(), Term(1));
}

/// Regression (found in review): a TermChange reports at most `max_prepared_per_term_change`
/// entries above the stable certificate. A Byzantine leader that withheld execution
/// certificates could make correct replicas hold (and commit) more, and the report then left a
/// committed entry out of the next term's choice. Replicas now hold no entry beyond that limit.
#[test]
fn no_entry_is_held_beyond_what_a_term_change_can_report() {
    let params = Params {
        checkpoint_interval: 1,
        pipeline_depth: 1,
        ..Params::default()
    };
    let limit = params.max_prepared_per_term_change(); // 3
    let mut fx = Fixture::with_params(4, params);
    let mut r = fx.replica(1, DurableState::default());
    let mut disk = DurableState::default();
    let mut prev = fx.cid();
    let mut proposals = Vec::new();
    for i in 1..=limit + 1 {
        let p = fx.pre_append(Term(0), i, prev, vec![fx.signed(1, i, b"op")]);
        let ids: Vec<Digest> = p.entry.txs.iter().map(|t| t.id(&fx.cid())).collect();
        let hash = crate::message::entry_hash(&fx.cid(), Term(0), Index(i), &prev, &ids);
        let pc = fx.certificate(subject(Phase::PreAppend, i, hash, None), &[0, 1, 2]);
        for m in [
            ReplicaMessage::PreAppend(p.clone()),
            ReplicaMessage::Append(pc),
        ] {
            let m = fx.wire(0, &m);
            r.on_message(Time(1), ReplicaId(0), m);
            let ready = r.ready();
            persist_all(&mut r, &ready, &mut disk);
        }
        proposals.push((p, hash));
        prev = hash;
    }
    assert_eq!(
        r.last_index(),
        Index(limit),
        "the entry beyond the limit was refused"
    );
    assert_eq!(
        r.metrics()
            .refused
            .get("pre-append beyond what a TermChange can report above the stable certificate"),
        Some(&1)
    );
    // Entry 1 commits, and its execution certificate makes it a stable checkpoint (the
    // interval is 1): the log's base moves up, and the proposal is taken now.
    let (_, hash1) = proposals[0];
    let cc = fx.certificate(subject(Phase::Append, 1, hash1, None), &[0, 1, 2]);
    let m = fx.wire(0, &ReplicaMessage::Commit(cc));
    r.on_message(Time(2), ReplicaId(0), m);
    let ready = r.ready();
    persist_all(&mut r, &ready, &mut disk);
    let digest = r.state_digest_at(Index(1)).expect("entry 1 executed");
    let ec = fx.certificate(subject(Phase::Commit, 1, hash1, Some(digest)), &[0, 2, 3]);
    let m = fx.wire(0, &ReplicaMessage::Executed(ec));
    r.on_message(Time(2), ReplicaId(0), m);
    assert_eq!(r.checkpoint_index(), Index(1));
    assert_eq!(r.log_len() as u64, limit - 1, "entry 1 was compacted");
    let m = fx.wire(
        0,
        &ReplicaMessage::PreAppend(proposals[limit as usize].0.clone()),
    );
    r.on_message(Time(2), ReplicaId(0), m);
    let ready = r.ready();
    persist_all(&mut r, &ready, &mut disk);
    assert_eq!(r.last_index(), Index(limit + 1));
    // Its TermChange reports every prepared entry it holds above the stable certificate.
    r.on_invalid_message(Time(3), ReplicaId(0));
    let ready = r.ready();
    persist_all(&mut r, &ready, &mut disk);
    let tc = r
        .ready()
        .messages
        .into_iter()
        .find_map(|m| match m.message {
            ReplicaMessage::TermChange(tc) => Some(tc),
            _ => None,
        })
        .expect("a TermChange");
    assert_eq!(tc.stable.map(|ec| ec.subject.index), Some(Index(1)));
    let reported: Vec<u64> = tc
        .prepared
        .iter()
        .map(|p| p.certificate.subject.index.0)
        .collect();
    // (Entry 7's prepared certificate arrived while it was refused, and was kept for it.)
    assert_eq!(reported, (2..=limit + 1).collect::<Vec<_>>());
}

/// An equivocation proof about the current term is forwarded and makes the replica leave the
/// term; one about another term is kept as evidence but not echoed (a Byzantine replica can
/// sign any number of them for the terms it leads).
#[test]
fn only_proofs_about_the_current_term_are_forwarded() {
    let mut fx = Fixture::new(4);
    let mut r = fx.replica(1, DurableState::default());
    let mut disk = DurableState::default();
    let proof = |fx: &Fixture, term: Term| {
        let entries: Vec<(PreAppend, Digest)> = [b"a", b"b"]
            .iter()
            .map(|op| {
                let txs = vec![fx.signed(1, 1, &op[..])];
                let ids: Vec<Digest> = txs.iter().map(|t| t.id(&fx.cid())).collect();
                let hash = crate::message::entry_hash(&fx.cid(), term, Index(1), &fx.cid(), &ids);
                (fx.pre_append(term, 1, fx.cid(), txs), hash)
            })
            .collect();
        crate::message::EquivocationProof {
            term,
            index: Index(1),
            first: (entries[0].1, entries[0].0.leader_sig),
            second: (entries[1].1, entries[1].0.leader_sig),
        }
    };
    let forwarded = |ready: &Ready| {
        ready
            .messages
            .iter()
            .any(|m| matches!(m.message, ReplicaMessage::Equivocation(_)))
    };
    // Term 4 is led by replica 0 too, in the future.
    let p = proof(&fx, Term(4));
    let m = fx.wire(2, &ReplicaMessage::Equivocation(p));
    r.on_message(Time(1), ReplicaId(2), m);
    let ready = r.ready();
    assert!(!forwarded(&ready));
    assert_eq!(r.evidence().len(), 1);
    assert!(!r.is_changing_term());
    let p = proof(&fx, Term(0));
    let m = fx.wire(2, &ReplicaMessage::Equivocation(p));
    r.on_message(Time(2), ReplicaId(2), m);
    assert!(r.is_changing_term());
    assert_eq!(r.evidence().len(), 2);
    let ready = r.ready();
    let mut out = ready.messages.clone();
    persist_all(&mut r, &ready, &mut disk);
    out.extend(r.ready().messages);
    assert!(
        out.iter()
            .any(|m| matches!(m.message, ReplicaMessage::Equivocation(_))),
        "the proof about the current term is forwarded"
    );
}

/// Only what a leader sends as leader counts as a sign of life: a leader that sends nothing but
/// fetch requests is suspected once the election timeout passes.
#[test]
fn a_leader_that_only_asks_for_entries_is_still_suspected() {
    let mut fx = Fixture::new(4);
    let mut r = fx.replica(1, DurableState::default());
    let timeout = fx.cluster.params().election_timeout.as_micros() as u64;
    let mut now = 0;
    while now <= timeout + 100_000 {
        now += 20_000;
        let m = fx.wire(
            0,
            &ReplicaMessage::FetchEntries {
                from: Index(1),
                to: Index(1),
            },
        );
        r.on_message(Time(now), ReplicaId(0), m);
        r.on_tick(Time(now));
    }
    assert!(r.is_changing_term(), "the leader was never suspected");
}

#[test]
fn a_compacted_durable_state_is_refused_until_checkpoints_exist() {
    let f = Fixture::new(4);
    let mut durable = DurableState::default();
    durable.apply(PersistOp::CompactBelow(Index(10)));
    let refused = Replica::new(
        f.cluster.clone(),
        ReplicaId(1),
        f.keys[1].clone(),
        Recorder::default(),
        durable,
        Time(0),
    );
    assert!(matches!(
        refused,
        Err(ReplicaError::InconsistentLog {
            index: Index(10),
            ..
        })
    ));
}

#[test]
fn a_replica_that_missed_a_term_change_asks_the_new_leader_for_its_new_term() {
    // Replica 0 led term 0 and was down while the others moved to term 1 (led by replica 1).
    // Back, the cluster is idle: only heartbeats of term 1 reach it. It must still join.
    let mut fx = Fixture::new(4);
    let (mut l, _) = leader_of_term_one(&mut fx);
    assert!(l.is_leader() && l.term() == Term(1));
    l.ready();

    let mut old = fx.replica(0, DurableState::default());
    assert!(old.is_leader() && old.term() == Term(0));
    old.ready();
    let hb = crate::message::Heartbeat::sign(&fx.cid(), &fx.keys[1], Term(1), None);
    let m = fx.wire(1, &ReplicaMessage::Heartbeat(hb.clone()));
    old.on_message(Time(10), ReplicaId(1), m.clone());
    let asks: Vec<_> = old
        .ready()
        .messages
        .into_iter()
        .filter(|m| matches!(m.message, ReplicaMessage::FetchNewTerm))
        .collect();
    assert_eq!(asks.len(), 1, "the stale replica asks once");
    assert_eq!(asks[0].to, Target::Replica(ReplicaId(1)));
    // Asked again at once, it does not ask again (one ask per heartbeat interval).
    old.on_message(Time(11), ReplicaId(1), m);
    assert!(!old
        .ready()
        .messages
        .iter()
        .any(|m| matches!(m.message, ReplicaMessage::FetchNewTerm)));

    // The leader answers with its NewTerm; the stale replica enters term 1 as a follower.
    let ask = fx.wire(0, &ReplicaMessage::FetchNewTerm);
    l.on_message(Time(12), ReplicaId(0), ask);
    let answer = l
        .ready()
        .messages
        .into_iter()
        .find(|m| matches!(m.message, ReplicaMessage::NewTerm(_)))
        .expect("the leader answers with its NewTerm");
    assert_eq!(answer.to, Target::Replica(ReplicaId(0)));
    let nt = fx.wire(1, &answer.message);
    old.on_message(Time(13), ReplicaId(1), nt);
    assert_eq!((old.term(), old.is_leader()), (Term(1), false));
}

#[test]
fn a_slow_phase_is_resent_with_backoff_not_every_heartbeat() {
    let mut fx = Fixture::new(4);
    let mut leader = fx.replica(0, DurableState::default());
    let mut state = DurableState::default();
    leader.on_client_tx(Time(10), fx.tx(1, 1, b"a"));
    let ready = leader.ready();
    persist_all(&mut leader, &ready, &mut state);
    let _ = leader.ready(); // the first PreAppend, to all
    let interval = fx.cluster.params().heartbeat_interval.as_micros() as u64;
    // No follower answers for 20 heartbeat intervals.
    let mut resent_at = Vec::new();
    for step in 1..=200 {
        let now = Time(10 + step * interval / 10);
        leader.on_tick(now);
        let ready = leader.ready();
        persist_all(&mut leader, &ready, &mut state);
        let to_one = ready.messages.iter().any(|m| {
            m.to == Target::Replica(ReplicaId(1))
                && matches!(m.message, ReplicaMessage::PreAppend(_))
        });
        if to_one {
            resent_at.push(now.0 - 10);
        }
    }
    // Resent after 1, 3 and 7 intervals (gaps of 1, 2 and 4), then every 5 (a quarter of the
    // 1 s commit timeout): not every interval.
    let intervals: Vec<u64> = resent_at.iter().map(|t| t / interval).collect();
    assert_eq!(intervals, vec![1, 3, 7, 12, 17], "{resent_at:?}");
}

#[test]
fn a_resent_proposal_is_verified_once_and_a_changed_signature_is_still_caught() {
    let mut fx = Fixture::new(4);
    let entries = crate::verify::VerifiedEntries::default();
    fx.verifier.share_verified_entries(entries.clone());
    let txs = vec![fx.signed(1, 1, b"a"), fx.signed(2, 1, b"b")];
    let proposal = fx.pre_append(Term(0), 1, Digest::ZERO, txs);
    fx.wire(0, &ReplicaMessage::PreAppend(proposal.clone()));
    assert_eq!(entries.len(), 1);
    // The same proposal again passes on the remembered verification.
    fx.wire(0, &ReplicaMessage::PreAppend(proposal.clone()));
    assert_eq!(entries.len(), 1);
    // Same entry hash (signatures are not part of a tx's id), one signature altered: it is a
    // batch that never verified, and it fails.
    let mut forged = proposal.clone();
    let mut entry = (*forged.entry).clone();
    entry.txs[1].sig.0[0] ^= 1;
    forged.entry = Arc::new(entry);
    assert!(matches!(
        fx.verify(0, &ReplicaMessage::PreAppend(forged)),
        Err(crate::verify::VerifyError::EntryTx { position: 1, .. })
    ));
    assert_eq!(entries.len(), 1);
}
