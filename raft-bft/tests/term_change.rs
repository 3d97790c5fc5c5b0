//! The term-change choice rule, the verification of TermChange / NewTerm messages, and, through
//! four real replicas, a Byzantine new leader that tries to drop committed entries.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;
use raft_bft::choice::{choose, ChoiceError};
use raft_bft::codec;
use raft_bft::config::Params;
use raft_bft::crypto::KeyPair;
use raft_bft::manifest::Cluster;
use raft_bft::merkle;
use raft_bft::message::{
    pre_append_digest, Certificate, Entry, EntryHeader, NewTerm, Phase, PreAppend, PreparedEntry,
    ReplicaMessage, SignedTx, TermChange, Vote, VoteSubject,
};
use raft_bft::persist::{DurableState, PersistBatch};
use raft_bft::replica::{Replica, Target};
use raft_bft::testing::Recorder;
use raft_bft::testing::TestCluster;
use raft_bft::types::{Digest, Index, ReplicaId, Signature, Term, Time};
use raft_bft::verify::{Verified, VerifiedMessage, Verifier, VerifyError};

fn cluster(n: usize) -> (Arc<Cluster>, Vec<KeyPair>) {
    let t = TestCluster::new("term-change", n, Params::default());
    (t.cluster, t.keys)
}

fn header(index: u64, term: u64, prev: Digest, salt: u8) -> EntryHeader {
    EntryHeader {
        term: Term(term),
        index: Index(index),
        prev_hash: prev,
        tx_root: Digest([salt; 32]),
    }
}

/// A certificate with placeholder signatures: `choose` works on verified messages and does not
/// look at signatures.
fn unsigned_pc(cid: &Digest, h: &EntryHeader, term: u64) -> PreparedEntry {
    PreparedEntry {
        certificate: Certificate {
            subject: VoteSubject {
                phase: Phase::PreAppend,
                term: Term(term),
                index: h.index,
                entry_hash: h.hash(cid),
                state_digest: None,
            },
            sigs: vec![],
        },
        header: *h,
    }
}

fn unsigned_ec(cid: &Digest, h: &EntryHeader) -> Certificate {
    Certificate {
        subject: VoteSubject {
            phase: Phase::Commit,
            term: h.term,
            index: h.index,
            entry_hash: h.hash(cid),
            state_digest: Some(Digest([7; 32])),
        },
        sigs: vec![],
    }
}

fn report(
    replica: u32,
    new_term: u64,
    stable: Option<Certificate>,
    mut prepared: Vec<PreparedEntry>,
) -> TermChange {
    prepared.sort_by_key(|p| p.certificate.subject.index);
    TermChange {
        new_term: Term(new_term),
        stable,
        prepared,
        replica: ReplicaId(replica),
        sig: Signature([0; 64]),
    }
}

const NEW_TERM: u64 = 10;

/// A history: a committed chain, and everything else that may have been prepared around it.
#[derive(Debug, Clone)]
struct Scenario {
    n: usize,
    committed: usize,
    committed_term: u64,
    stable_at: usize,
    seed: Vec<u8>,
    byzantine: usize,
    reporters: Vec<usize>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (prop_oneof![Just(4usize), Just(7)], 0usize..6, 1u64..8)
        .prop_flat_map(|(n, committed, committed_term)| {
            let f = (n - 1) / 3;
            (
                Just(n),
                Just(committed),
                Just(committed_term),
                0..=committed,
                prop::collection::vec(any::<u8>(), 256),
                0..=f,
                Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
            )
        })
        .prop_map(
            |(n, committed, committed_term, stable_at, seed, byzantine, reporters)| Scenario {
                n,
                committed,
                committed_term,
                stable_at,
                seed,
                byzantine,
                reporters,
            },
        )
}

/// Builds what each replica holds and reports, and checks that `choose` keeps the committed
/// chain for every quorum of reporters.
fn committed_entries_survive(s: &Scenario) -> Result<(), TestCaseError> {
    let cid = Digest([42; 32]);
    let f = (s.n - 1) / 3;
    let q = (s.n + f + 1).div_ceil(2);
    let mut bytes = s.seed.iter().copied().cycle();
    let mut next = move |m: usize| bytes.next().unwrap_or(0) as usize % m.max(1);

    // The committed chain, prepared in `committed_term` by a quorum at every index.
    let mut chain = Vec::new();
    let mut prev = cid;
    for i in 1..=s.committed as u64 {
        let h = header(i, 1 + next(s.committed_term as usize) as u64, prev, i as u8);
        prev = h.hash(&cid);
        chain.push(h);
    }
    // held[replica][index] = the PCs it holds there (it reports the highest-term one).
    let mut held: Vec<BTreeMap<u64, Vec<PreparedEntry>>> = vec![BTreeMap::new(); s.n];
    let mut universe: Vec<PreparedEntry> = Vec::new();
    for h in &chain {
        let pc = unsigned_pc(&cid, h, s.committed_term);
        let start = next(s.n);
        for k in 0..q {
            held[(start + k) % s.n]
                .entry(h.index.0)
                .or_default()
                .push(pc.clone());
        }
        universe.push(pc);
        // The same entry re-proposed and prepared again in a later term, by a few replicas.
        if next(3) == 0 && s.committed_term + 1 < NEW_TERM {
            let later =
                s.committed_term + 1 + next((NEW_TERM - s.committed_term - 1) as usize) as u64;
            let pc = unsigned_pc(&cid, h, later);
            held[next(s.n)]
                .entry(h.index.0)
                .or_default()
                .push(pc.clone());
            universe.push(pc);
        }
        // A conflicting entry prepared in an earlier term, then abandoned.
        if next(2) == 0 && s.committed_term > 1 {
            let fork = header(h.index.0, 1, h.prev_hash, 200 + h.index.0 as u8);
            let pc = unsigned_pc(
                &cid,
                &fork,
                1 + next((s.committed_term - 1) as usize) as u64,
            );
            for _ in 0..1 + next(s.n) {
                held[next(s.n)]
                    .entry(h.index.0)
                    .or_default()
                    .push(pc.clone());
            }
            universe.push(pc);
        }
    }
    // Uncommitted extensions above the chain, in terms at or after the committed one.
    let mut prev = chain.last().map_or(cid, |h| h.hash(&cid));
    for i in s.committed as u64 + 1..=s.committed as u64 + next(4) as u64 {
        let link = if next(4) == 0 { Digest([9; 32]) } else { prev };
        let h = header(i, s.committed_term, link, 100 + i as u8);
        prev = h.hash(&cid);
        let term = s.committed_term + next((NEW_TERM - s.committed_term) as usize) as u64;
        let pc = unsigned_pc(&cid, &h, term);
        for _ in 0..1 + next(s.n) {
            held[next(s.n)].entry(i).or_default().push(pc.clone());
        }
        universe.push(pc);
    }
    // Stable checkpoints exist only for committed indices.
    let ec = (s.stable_at > 0).then(|| unsigned_ec(&cid, &chain[s.stable_at - 1]));

    let byzantine: Vec<usize> = s.reporters[..s.byzantine].to_vec();
    let reports: Vec<TermChange> = s.reporters[..q]
        .iter()
        .map(|&r| {
            if byzantine.contains(&r) {
                // Any existing certificates, at any index, highest or not; any stable EC.
                let mut by_index: BTreeMap<u64, PreparedEntry> = BTreeMap::new();
                for _ in 0..next(universe.len() + 1) {
                    if let Some(pc) = universe.get(next(universe.len())) {
                        by_index.insert(pc.certificate.subject.index.0, pc.clone());
                    }
                }
                let stable = if chain.is_empty() || next(2) == 0 {
                    None
                } else {
                    Some(unsigned_ec(&cid, &chain[next(chain.len())]))
                };
                let above = stable.as_ref().map_or(0, |e| e.subject.index.0);
                let prepared = by_index
                    .into_values()
                    .filter(|p| p.certificate.subject.index.0 > above);
                report(r as u32, NEW_TERM, stable, prepared.collect())
            } else {
                let stable = if next(2) == 0 { ec.clone() } else { None };
                let above = stable.as_ref().map_or(0, |e| e.subject.index.0);
                let prepared =
                    held[r]
                        .iter()
                        .filter(|(i, _)| **i > above)
                        .filter_map(|(_, pcs)| {
                            pcs.iter()
                                .max_by_key(|p| p.certificate.subject.term)
                                .cloned()
                        });
                report(r as u32, NEW_TERM, stable, prepared.collect())
            }
        })
        .collect();

    let chosen = choose(&cid, q, Term(NEW_TERM), &reports)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let base = chosen.base_index().0 as usize;
    prop_assert!(base <= s.committed, "base {base} above the committed chain");
    for (i, h) in chain.iter().enumerate().skip(base) {
        let got = chosen.entries.get(i - base).map(|e| e.hash);
        prop_assert_eq!(got, Some(h.hash(&cid)), "committed index {} lost", i + 1);
    }
    // The choice does not depend on the order of the messages.
    let mut reversed = reports.clone();
    reversed.reverse();
    let again = choose(&cid, q, Term(NEW_TERM), &reversed)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(again.list(), chosen.list());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn committed_entries_survive_every_term_change(s in scenario()) {
        committed_entries_survive(&s)?;
    }
}

/// Ties that cannot happen with at most `f` faults (two prepared certificates of one term at one
/// index; two stable certificates at one index) still get one answer, whatever the order of
/// the messages: every replica recomputes the same choice.
#[test]
fn the_choice_does_not_depend_on_the_order_of_the_messages() {
    let cid = Digest([1; 32]);
    let ec = |fill: u8| Certificate {
        subject: VoteSubject {
            phase: Phase::Commit,
            term: Term(1),
            index: Index(1),
            entry_hash: Digest([fill; 32]),
            state_digest: Some(Digest([fill; 32])),
        },
        sigs: vec![],
    };
    // Two entries of one term at index 1 (no stable certificate: both chain to genesis).
    let a = header(1, 2, cid, 1);
    let b = header(1, 2, cid, 2);
    let tied_entries = vec![
        report(0, 3, None, vec![unsigned_pc(&cid, &a, 2)]),
        report(1, 3, None, vec![unsigned_pc(&cid, &b, 2)]),
        report(2, 3, None, vec![]),
    ];
    // Two stable certificates at index 1.
    let tied_bases = vec![
        report(0, 3, Some(ec(4)), vec![]),
        report(1, 3, Some(ec(5)), vec![]),
        report(2, 3, None, vec![]),
    ];
    for reports in [tied_entries, tied_bases] {
        let forward = choose(&cid, 3, Term(3), &reports).unwrap();
        for order in [[1, 0, 2], [2, 1, 0], [2, 0, 1], [0, 2, 1], [1, 2, 0]] {
            let shuffled: Vec<TermChange> = order.iter().map(|&i| reports[i].clone()).collect();
            let other = choose(&cid, 3, Term(3), &shuffled).unwrap();
            assert_eq!(other, forward, "order {order:?}");
        }
    }
}

#[test]
fn the_highest_term_wins_and_the_sequence_is_cut_at_gaps_and_breaks() {
    let cid = Digest([1; 32]);
    let h1 = header(1, 1, cid, 1);
    let h1b = header(1, 2, cid, 2);
    let h2 = header(2, 2, h1b.hash(&cid), 3);
    let h3_broken = header(3, 2, Digest([5; 32]), 4);
    let h5 = header(5, 2, Digest([6; 32]), 5);
    let reports = vec![
        report(0, 3, None, vec![unsigned_pc(&cid, &h1, 1)]),
        report(
            1,
            3,
            None,
            vec![unsigned_pc(&cid, &h1b, 2), unsigned_pc(&cid, &h2, 2)],
        ),
        report(
            2,
            3,
            None,
            vec![unsigned_pc(&cid, &h3_broken, 2), unsigned_pc(&cid, &h5, 2)],
        ),
    ];
    let chosen = choose(&cid, 3, Term(3), &reports).unwrap();
    assert_eq!(
        chosen.list(),
        vec![(Index(1), h1b.hash(&cid)), (Index(2), h2.hash(&cid))],
        "h1b (term 2) beats h1 (term 1); index 3 does not chain; 4 is a gap"
    );
}

#[test]
fn the_base_is_the_highest_stable_certificate() {
    let cid = Digest([1; 32]);
    let h1 = header(1, 1, cid, 1);
    let h2 = header(2, 1, h1.hash(&cid), 2);
    let h3 = header(3, 1, h2.hash(&cid), 3);
    let reports = vec![
        report(
            0,
            2,
            Some(unsigned_ec(&cid, &h1)),
            vec![unsigned_pc(&cid, &h2, 1)],
        ),
        report(
            1,
            2,
            Some(unsigned_ec(&cid, &h2)),
            vec![unsigned_pc(&cid, &h3, 1)],
        ),
        report(2, 2, None, vec![]),
    ];
    let chosen = choose(&cid, 3, Term(2), &reports).unwrap();
    assert_eq!(chosen.base_index(), Index(2));
    assert_eq!(chosen.list(), vec![(Index(3), h3.hash(&cid))]);
}

#[test]
fn a_choice_needs_a_quorum_of_distinct_senders_for_one_term() {
    let cid = Digest([1; 32]);
    let r = |i| report(i, 2, None, vec![]);
    assert_eq!(
        choose(&cid, 3, Term(2), &[r(0), r(1)]),
        Err(ChoiceError::TooFew { got: 2, quorum: 3 })
    );
    assert_eq!(
        choose(&cid, 3, Term(2), &[r(0), r(1), r(1)]),
        Err(ChoiceError::DuplicateSender(ReplicaId(1)))
    );
    let other = report(2, 5, None, vec![]);
    assert!(matches!(
        choose(&cid, 3, Term(2), &[r(0), r(1), other]),
        Err(ChoiceError::WrongTerm { .. })
    ));
}

// ----- verification, with real signatures -----

fn signed_pc(cluster: &Cluster, keys: &[KeyPair], h: &EntryHeader, term: u64) -> PreparedEntry {
    let cid = cluster.cluster_id();
    let subject = VoteSubject {
        phase: Phase::PreAppend,
        term: Term(term),
        index: h.index,
        entry_hash: h.hash(cid),
        state_digest: None,
    };
    PreparedEntry {
        certificate: Certificate {
            subject,
            sigs: (0..cluster.quorum())
                .map(|i| {
                    let v = Vote::sign(cid, &keys[i], ReplicaId(i as u32), subject);
                    (v.replica, v.sig)
                })
                .collect(),
        },
        header: *h,
    }
}

#[test]
fn term_changes_and_new_terms_are_verified() {
    let (c, keys) = cluster(4);
    let cid = *c.cluster_id();
    let mut v = Verifier::new(c.clone(), [3; 32]);
    let h1 = header(1, 1, cid, 1);
    let h2 = header(2, 1, h1.hash(&cid), 2);
    let tc = |r: usize, prepared| {
        TermChange::sign(&cid, &keys[r], ReplicaId(r as u32), Term(2), None, prepared)
    };
    let good = tc(
        1,
        vec![signed_pc(&c, &keys, &h1, 1), signed_pc(&c, &keys, &h2, 1)],
    );
    v.verify_term_change(ReplicaId(1), good.clone()).unwrap();

    // Relayed by someone else, or signed over something else: refused.
    assert!(matches!(
        v.verify_term_change(ReplicaId(2), good.clone()),
        Err(VerifyError::WrongSender { .. })
    ));
    let mut forged = good.clone();
    forged.prepared.pop();
    assert!(matches!(
        v.verify_term_change(ReplicaId(1), forged),
        Err(VerifyError::Signature { .. })
    ));
    // A certificate that does not match the header sent with it.
    let mut lying = good.prepared.clone();
    lying[1].header.tx_root = Digest([0xee; 32]);
    assert!(matches!(
        v.verify_term_change(ReplicaId(1), tc(1, lying)),
        Err(VerifyError::Malformed { .. })
    ));
    // Out of order.
    let mut reversed = good.prepared.clone();
    reversed.reverse();
    assert!(matches!(
        v.verify_term_change(ReplicaId(1), tc(1, reversed)),
        Err(VerifyError::Malformed { .. })
    ));
    // A prepared certificate from the new term itself (or later) cannot be in a TermChange.
    let too_new = tc(1, vec![signed_pc(&c, &keys, &h1, 2)]);
    assert!(matches!(
        v.verify_term_change(ReplicaId(1), too_new),
        Err(VerifyError::Malformed { .. })
    ));

    // NewTerm: leader of term 2 is replica 2.
    let changes = vec![
        good,
        tc(2, vec![signed_pc(&c, &keys, &h1, 1)]),
        tc(3, vec![]),
    ];
    let chosen = vec![(Index(1), h1.hash(&cid)), (Index(2), h2.hash(&cid))];
    let nt = NewTerm::sign(&cid, &keys[2], Term(2), changes.clone(), chosen.clone());
    let verified = v.verify_new_term(Arc::new(nt.clone())).unwrap();
    // Only the leader of the term may announce it, even with the same content.
    let by_another = NewTerm::sign(&cid, &keys[1], Term(2), changes.clone(), chosen.clone());
    assert!(matches!(
        v.verify_new_term(Arc::new(by_another)),
        Err(VerifyError::Signature { .. })
    ));
    assert_eq!(verified.1.list(), chosen);
    let mut wrong = nt.clone();
    wrong.chosen.pop();
    assert!(matches!(
        v.verify_new_term(Arc::new(wrong)),
        Err(VerifyError::Malformed { .. })
    ));
    let mut short = nt;
    short.term_changes.pop();
    assert!(matches!(
        v.verify_new_term(Arc::new(short)),
        Err(VerifyError::Choice(ChoiceError::TooFew { .. }))
    ));
}

// ----- through replicas: a Byzantine new leader cannot drop committed entries -----
//
// Four real replicas, every message through the codec and a `Verifier`. Term 0 (leader 0)
// commits entry 1 and its execution certificate (the base of later choices); term 1 (leader 1)
// commits entries 2 and 3 while replica 3 is cut off, so replica 3 holds only entry 1; no
// execution certificate forms above 1 (Commit votes above 1 are lost), so entries 2 and 3 are
// committed but must be carried by the choice. Leader 1 then falls silent and the cluster
// seeks term 2, whose leader, replica 2, is Byzantine: the test speaks for it. Each attack is a
// NewTerm that would drop or replace committed entries; each control is the same scenario with
// an honest NewTerm from the same material, which the replicas accept.

/// A step of simulated time: a fifth of a heartbeat interval.
const STEP_US: u64 = 10_000;
const HONEST: [usize; 3] = [0, 1, 3];
const BYZANTINE: usize = 2;

/// Four replicas on a perfect network the test can partition, silence or intercept.
struct Net {
    cluster: Arc<Cluster>,
    keys: Vec<KeyPair>,
    cid: Digest,
    verifiers: Vec<Verifier>,
    replicas: Vec<Replica<Recorder>>,
    disks: Vec<DurableState>,
    now: u64,
    /// Everything every replica sent, delivered or not: `(time, from, to, message)`.
    sent: Vec<(u64, usize, Target, ReplicaMessage)>,
    /// Replicas whose messages are dropped.
    silenced: BTreeSet<usize>,
    /// Replicas cut off in both directions.
    cut: BTreeSet<usize>,
    /// A Byzantine replica: the test speaks for it; what its `Replica` sends goes nowhere.
    byzantine: Option<usize>,
    /// Commit votes above this index are lost (no execution certificate forms above it).
    commit_votes_up_to: u64,
    client: KeyPair,
    client_ts: u64,
}

impl Net {
    fn new(params: Params) -> Net {
        let TestCluster { cluster, keys } = TestCluster::new("term-change", 4, params);
        let cid = *cluster.cluster_id();
        let replicas = (0..4)
            .map(|i| {
                Replica::new(
                    cluster.clone(),
                    ReplicaId(i as u32),
                    keys[i].clone(),
                    Recorder::default(),
                    DurableState::default(),
                    Time(0),
                )
                .unwrap()
            })
            .collect();
        let verifiers = (0..4)
            .map(|i| Verifier::new(cluster.clone(), [i as u8 + 10; 32]))
            .collect();
        Net {
            cluster,
            keys,
            cid,
            verifiers,
            replicas,
            disks: vec![DurableState::default(); 4],
            now: 1,
            sent: Vec::new(),
            silenced: BTreeSet::new(),
            cut: BTreeSet::new(),
            byzantine: None,
            commit_votes_up_to: u64::MAX,
            client: KeyPair::from_seed([99; 32]),
            client_ts: 0,
        }
    }

    /// Encodes, decodes and verifies a message as replica `to` would receive it from `from`.
    fn verify_at(
        &mut self,
        from: usize,
        to: usize,
        msg: &ReplicaMessage,
    ) -> Result<Verified<VerifiedMessage>, VerifyError> {
        let bytes = codec::encode(msg).unwrap();
        let msg = codec::decode(&bytes, 1 << 26).unwrap();
        self.verifiers[to].verify_message(ReplicaId(from as u32), msg)
    }

    /// Delivers a message from `from` to `to` (the Byzantine replica's, or an honest one's).
    fn deliver(&mut self, from: usize, to: usize, msg: &ReplicaMessage) -> Result<(), VerifyError> {
        let v = self.verify_at(from, to, msg)?;
        self.replicas[to].on_message(Time(self.now), ReplicaId(from as u32), v);
        Ok(())
    }

    fn lost(&self, from: usize, to: usize, msg: &ReplicaMessage) -> bool {
        if self.byzantine == Some(from) || self.silenced.contains(&from) {
            return true;
        }
        if self.cut.contains(&from) || self.cut.contains(&to) {
            return true;
        }
        matches!(msg, ReplicaMessage::Vote(v)
            if v.subject.phase == Phase::Commit && v.subject.index.0 > self.commit_votes_up_to)
    }

    /// Persists what each replica asks and delivers what it sends, until nothing moves.
    fn flush(&mut self) {
        for _ in 0..1000 {
            let mut out = Vec::new();
            for i in 0..4 {
                loop {
                    let ready = self.replicas[i].ready();
                    out.extend(ready.messages.into_iter().map(|m| (i, m)));
                    let Some(batch) = ready.persist else { break };
                    self.disks[i].apply_batch(PersistBatch {
                        id: batch.id,
                        ops: batch.ops.clone(),
                    });
                    self.replicas[i].on_persisted(Time(self.now), batch.id);
                }
            }
            if out.is_empty() {
                return;
            }
            for (from, m) in out {
                self.sent.push((self.now, from, m.to, m.message.clone()));
                let targets: Vec<usize> = match m.to {
                    Target::Replica(r) => vec![r.0 as usize],
                    Target::AllOthers => (0..4).filter(|r| *r != from).collect(),
                };
                for to in targets {
                    if !self.lost(from, to, &m.message) {
                        if let Err(e) = self.deliver(from, to, &m.message) {
                            panic!("replica {from}'s {} refused: {e}", m.message.kind());
                        }
                    }
                }
            }
        }
        panic!("the network does not settle");
    }

    fn step(&mut self) {
        self.now += STEP_US;
        for i in 0..4 {
            self.replicas[i].on_tick(Time(self.now));
        }
        self.flush();
    }

    fn run_until(&mut self, what: &str, max_steps: usize, done: impl Fn(&Net) -> bool) {
        for _ in 0..max_steps {
            if done(self) {
                return;
            }
            self.step();
        }
        assert!(
            done(self),
            "{what}: not reached in {max_steps} steps\n{}",
            self.describe()
        );
    }

    fn describe(&self) -> String {
        self.replicas
            .iter()
            .map(|r| {
                format!(
                    "{}: term {} seeking {} commit {} last {}\n",
                    r.id(),
                    r.term().0,
                    r.is_changing_term(),
                    r.commit_index().0,
                    r.last_index().0
                )
            })
            .collect()
    }

    fn submit(&mut self, to: usize) {
        self.client_ts += 1;
        let tx = SignedTx::sign(
            &self.cid,
            &self.client,
            self.client_ts,
            format!("op {}", self.client_ts).into_bytes(),
        );
        let tx = self.verifiers[to].verify_tx(tx).unwrap();
        self.replicas[to].on_client_tx(Time(self.now), tx);
        self.flush();
    }

    fn in_term(&self, r: usize, term: u64) -> bool {
        self.replicas[r].term() == Term(term) && !self.replicas[r].is_changing_term()
    }

    fn seeking(&self, r: usize, term: u64) -> bool {
        self.replicas[r].term() == Term(term) && self.replicas[r].is_changing_term()
    }

    /// The committed log of a replica, as entry hashes.
    fn committed(&self, r: usize) -> Vec<Digest> {
        let rep = &self.replicas[r];
        (1..=rep.commit_index().0)
            .map(|i| rep.entry_hash(Index(i)).unwrap())
            .collect()
    }

    /// The newest TermChange replica `r` sent for `term`.
    fn term_change_of(&self, r: usize, term: u64) -> TermChange {
        self.sent
            .iter()
            .rev()
            .find_map(|(_, from, _, m)| match m {
                ReplicaMessage::TermChange(tc) if *from == r && tc.new_term == Term(term) => {
                    Some(tc.clone())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("replica {r} sent no TermChange for term {term}"))
    }

    /// The prepared certificate the leader of `term` sent for `index`.
    fn prepared_certificate(&self, term: u64, index: u64) -> Certificate {
        self.sent
            .iter()
            .find_map(|(_, _, _, m)| match m {
                ReplicaMessage::Append(pc)
                    if pc.subject.term == Term(term) && pc.subject.index == Index(index) =>
                {
                    Some(pc.clone())
                }
                _ => None,
            })
            .unwrap()
    }

    /// PreAppend votes that replica `r` sent in `term`, by index.
    fn pre_append_votes(&self, r: usize, term: u64) -> Vec<u64> {
        self.sent
            .iter()
            .filter_map(|(_, from, _, m)| match m {
                ReplicaMessage::Vote(v)
                    if *from == r
                        && v.subject.phase == Phase::PreAppend
                        && v.subject.term == Term(term) =>
                {
                    Some(v.subject.index.0)
                }
                _ => None,
            })
            .collect()
    }

    /// The entries the leader of `term` proposed, in the order it first proposed them.
    fn proposals(&self, term: u64) -> Vec<(u64, Digest)> {
        let mut seen = Vec::new();
        for (_, _, _, m) in &self.sent {
            if let ReplicaMessage::PreAppend(p) = m {
                if p.term == Term(term) {
                    let item = (p.entry.index.0, self.hash_of(&p.entry));
                    if !seen.contains(&item) {
                        seen.push(item);
                    }
                }
            }
        }
        seen
    }

    fn header_of(&self, e: &Entry) -> EntryHeader {
        let ids: Vec<Digest> = e.txs.iter().map(|t| t.id(&self.cid)).collect();
        EntryHeader {
            term: e.term,
            index: e.index,
            prev_hash: e.prev_hash,
            tx_root: merkle::root(&self.cid, &ids),
        }
    }

    fn hash_of(&self, e: &Entry) -> Digest {
        self.header_of(e).hash(&self.cid)
    }

    /// A PreAppend signed by the leader of `term` (the Byzantine replica, for term 2).
    fn pre_append(&self, term: u64, entry: Arc<Entry>) -> ReplicaMessage {
        let leader = self.cluster.leader_of(Term(term)).0 as usize;
        let hash = self.hash_of(&entry);
        ReplicaMessage::PreAppend(PreAppend {
            term: Term(term),
            leader_sig: self.keys[leader].sign(&pre_append_digest(
                &self.cid,
                Term(term),
                entry.index,
                &hash,
            )),
            entry,
        })
    }
}

/// What the Byzantine leader of term 2 has to work with.
struct Material {
    /// The committed entries 1..=3 and their hashes.
    entries: Vec<Arc<Entry>>,
    hashes: Vec<Digest>,
    /// Honest TermChanges for term 2, and the same replicas' TermChanges for term 1.
    tc2: BTreeMap<usize, TermChange>,
    tc1: BTreeMap<usize, TermChange>,
    /// The Byzantine replica's own TermChange for term 2: no stable certificate, and only the
    /// (old, term 0) prepared certificate of entry 1.
    bogus: TermChange,
    /// Each honest replica's committed log before the attack.
    before: BTreeMap<usize, Vec<Digest>>,
    /// The cluster id, and the key of the (Byzantine) leader of term 2, which signs NewTerms.
    cid: Digest,
    leader_key: KeyPair,
}

/// Runs the history up to every honest replica seeking term 2 (leader: the Byzantine replica).
fn committed_then_byzantine_leader(params: Params) -> (Net, Material) {
    let mut net = Net::new(params);
    net.commit_votes_up_to = 1;

    // Term 0: entry 1 committed and executed everywhere, with its execution certificate.
    net.submit(0);
    net.run_until(
        "entry 1 committed with its execution certificate",
        50,
        |n| {
            (0..4).all(|r| {
                n.replicas[r].commit_index() == Index(1)
                    && n.replicas[r]
                        .latest_execution_certificate()
                        .is_some_and(|ec| ec.subject.index == Index(1))
            })
        },
    );

    // Leader 0 falls silent: the others suspect it and term 1 (leader 1) starts.
    net.silenced.insert(0);
    net.run_until("term 1 started everywhere", 200, |n| {
        (0..4).all(|r| n.in_term(r, 1))
    });
    net.silenced.clear();

    // Term 1: entries 2 and 3 are committed by replicas 0, 1 and 2 while replica 3 is cut off.
    net.cut.insert(3);
    net.submit(1);
    net.run_until("entry 2 committed", 50, |n| {
        [0, 1, 2]
            .iter()
            .all(|&r| n.replicas[r].commit_index() == Index(2))
    });
    net.submit(1);
    net.run_until("entry 3 committed", 50, |n| {
        [0, 1, 2]
            .iter()
            .all(|&r| n.replicas[r].commit_index() == Index(3))
    });
    assert_eq!(net.replicas[3].last_index(), Index(1));
    for r in 0..4 {
        let ec = net.replicas[r].latest_execution_certificate().unwrap();
        assert_eq!(
            ec.subject.index,
            Index(1),
            "no execution certificate above 1"
        );
    }

    // Replica 3 is back, leader 1 falls silent, replica 2 turns Byzantine: the honest replicas
    // seek term 2. Leader 1 joins on f + 1 TermChanges; then it may speak again.
    net.cut.clear();
    net.silenced.insert(1);
    net.byzantine = Some(BYZANTINE);
    net.run_until("leader 1 joins the term change", 200, |n| n.seeking(1, 2));
    net.silenced.clear();
    net.run_until("every honest replica seeks term 2 and said so", 50, |n| {
        HONEST.iter().all(|&r| {
            n.seeking(r, 2)
                && n.sent.iter().any(|(_, from, _, m)| {
                    *from == r
                        && matches!(m, ReplicaMessage::TermChange(tc) if tc.new_term == Term(2))
                })
        })
    });

    let entries: Vec<Arc<Entry>> = net.replicas[0]
        .committed_entries()
        .map(|e| Arc::new(e.clone()))
        .collect();
    assert_eq!(entries.len(), 3);
    let hashes: Vec<Digest> = entries.iter().map(|e| net.hash_of(e)).collect();
    let tc2: BTreeMap<usize, TermChange> = HONEST
        .iter()
        .map(|&r| (r, net.term_change_of(r, 2)))
        .collect();
    let tc1: BTreeMap<usize, TermChange> = HONEST
        .iter()
        .map(|&r| (r, net.term_change_of(r, 1)))
        .collect();
    // What the honest replicas report: replicas 0 and 1 the term-1 certificates of 2 and 3,
    // replica 3 nothing above the base; for term 1, nothing above the base either.
    for r in [0, 1] {
        let reported: Vec<u64> = tc2[&r]
            .prepared
            .iter()
            .map(|p| p.certificate.subject.index.0)
            .collect();
        assert_eq!(reported, vec![2, 3]);
    }
    assert!(tc2[&3].prepared.is_empty() && tc1.values().all(|tc| tc.prepared.is_empty()));

    let pc1 = net.prepared_certificate(0, 1);
    let bogus = TermChange::sign(
        &net.cid,
        &net.keys[BYZANTINE],
        ReplicaId(BYZANTINE as u32),
        Term(2),
        None,
        vec![PreparedEntry {
            certificate: pc1,
            header: net.header_of(&entries[0]),
        }],
    );
    let before = HONEST.iter().map(|&r| (r, net.committed(r))).collect();
    let material = Material {
        entries,
        hashes,
        tc2,
        tc1,
        bogus,
        before,
        cid: net.cid,
        leader_key: net.keys[2].clone(),
    };
    (net, material)
}

impl Material {
    /// The honest choice above the base: entries 2 and 3.
    fn honest_list(&self) -> Vec<(Index, Digest)> {
        vec![(Index(2), self.hashes[1]), (Index(3), self.hashes[2])]
    }

    /// A NewTerm for term 2, signed by its (Byzantine) leader.
    fn new_term(&self, term_changes: Vec<TermChange>, chosen: Vec<(Index, Digest)>) -> NewTerm {
        NewTerm::sign(&self.cid, &self.leader_key, Term(2), term_changes, chosen)
    }

    /// What `choose` makes of some TermChanges, whatever their number (for the attacks).
    fn list_of(&self, cid: &Digest, changes: &[TermChange]) -> Vec<(Index, Digest)> {
        choose(cid, 1, changes[0].new_term, changes).unwrap().list()
    }
}

/// The Byzantine leader's ways to lose committed entries, each caught by one check.
#[derive(Clone, Copy, Debug)]
enum Attack {
    /// (a) The chosen list leaves out committed entry 3.
    OmitsCommittedEntry,
    /// (b) The chosen list names another entry at index 2.
    ReplacesCommittedEntry,
    /// (c) Two TermChanges (its own and replica 3's, neither reporting 2 or 3).
    TooFewTermChanges,
    /// (c) Three TermChanges, two of them the same replica's.
    DuplicateTermChange,
    /// (d) Valid TermChanges of the same replicas, but for term 1 (before 2 and 3 committed).
    TermChangesForAnotherTerm,
    /// (e) Replica 0's and 1's TermChanges with their prepared certificates removed.
    TamperedTermChanges,
    /// (e) A TermChange in replica 0's name, signed by the Byzantine replica.
    ImpersonatedTermChange,
}

impl Attack {
    /// The attack's NewTerm, and its honest counterpart made from the same material.
    fn new_terms(self, net: &Net, m: &Material) -> (NewTerm, NewTerm) {
        let tc = |r: usize| m.tc2[&r].clone();
        let honest = m.new_term(vec![m.bogus.clone(), tc(0), tc(3)], m.honest_list());
        match self {
            Attack::OmitsCommittedEntry => {
                let mut list = m.honest_list();
                list.pop();
                (m.new_term(honest.term_changes.clone(), list), honest)
            }
            Attack::ReplacesCommittedEntry => {
                // Its own entry 2 (on entry 1, in term 2), with a tx the client never sent.
                let tx = SignedTx::sign(&net.cid, &net.keys[BYZANTINE], 1, b"forged".to_vec());
                let fake = Entry {
                    term: Term(2),
                    index: Index(2),
                    prev_hash: m.hashes[0],
                    txs: vec![tx],
                };
                let mut list = m.honest_list();
                list[0].1 = net.hash_of(&fake);
                (m.new_term(honest.term_changes.clone(), list), honest)
            }
            Attack::TooFewTermChanges => {
                let changes = vec![m.bogus.clone(), tc(3)];
                let list = m.list_of(&net.cid, &changes);
                assert!(list.is_empty(), "two TermChanges that would drop 2 and 3");
                (m.new_term(changes, list), honest)
            }
            Attack::DuplicateTermChange => {
                let changes = vec![m.bogus.clone(), tc(3), tc(3)];
                (m.new_term(changes, vec![]), honest)
            }
            Attack::TermChangesForAnotherTerm => {
                let changes: Vec<TermChange> = m.tc1.values().cloned().collect();
                let list = m.list_of(&net.cid, &changes);
                assert!(list.is_empty(), "term-1 TermChanges report neither 2 nor 3");
                let control = m.new_term(m.tc2.values().cloned().collect(), m.honest_list());
                (m.new_term(changes, list), control)
            }
            Attack::TamperedTermChanges => {
                let mut changes = vec![tc(0), tc(1), tc(3)];
                changes[0].prepared.clear();
                changes[1].prepared.clear();
                let list = m.list_of(&net.cid, &changes);
                assert!(list.is_empty());
                let control = m.new_term(vec![tc(0), tc(1), tc(3)], m.honest_list());
                (m.new_term(changes, list), control)
            }
            Attack::ImpersonatedTermChange => {
                let forged = TermChange::sign(
                    &net.cid,
                    &net.keys[BYZANTINE],
                    ReplicaId(0),
                    Term(2),
                    tc(0).stable,
                    vec![],
                );
                let changes = vec![forged, m.bogus.clone(), tc(3)];
                let list = m.list_of(&net.cid, &changes);
                assert!(list.is_empty());
                (m.new_term(changes, list), honest)
            }
        }
    }

    /// The refusal the attack must meet.
    fn refused(self, e: &VerifyError) -> bool {
        match self {
            Attack::OmitsCommittedEntry | Attack::ReplacesCommittedEntry => matches!(
                e,
                VerifyError::Malformed {
                    what: "new term",
                    ..
                }
            ),
            Attack::TooFewTermChanges => matches!(
                e,
                VerifyError::Choice(ChoiceError::TooFew { got: 2, quorum: 3 })
            ),
            Attack::DuplicateTermChange => matches!(
                e,
                VerifyError::Choice(ChoiceError::DuplicateSender(ReplicaId(3)))
            ),
            Attack::TermChangesForAnotherTerm => matches!(
                e,
                VerifyError::Choice(ChoiceError::WrongTerm {
                    expected: Term(2),
                    got: Term(1)
                })
            ),
            Attack::TamperedTermChanges | Attack::ImpersonatedTermChange => matches!(
                e,
                VerifyError::Signature {
                    what: "term change",
                    ..
                }
            ),
        }
    }
}

/// The Byzantine leader re-proposes committed entries 2 and 3 in term 2 (and, in an attack, a
/// conflicting entry 3 as well), signed with its key.
fn byzantine_pre_appends(net: &mut Net, m: &Material, conflicting: bool) {
    let mut messages = vec![
        net.pre_append(2, m.entries[1].clone()),
        net.pre_append(2, m.entries[2].clone()),
    ];
    if conflicting {
        let tx = SignedTx::sign(&net.cid, &net.keys[BYZANTINE], 1, b"other".to_vec());
        let other = Arc::new(Entry {
            term: Term(2),
            index: Index(3),
            prev_hash: m.hashes[1],
            txs: vec![tx],
        });
        messages.push(net.pre_append(2, other));
    }
    for msg in &messages {
        for r in HONEST {
            net.deliver(BYZANTINE, r, msg)
                .expect("a PreAppend signed by the leader of term 2 verifies");
        }
    }
    net.flush();
}

fn byzantine_new_term_is_refused(attack: Attack) {
    let (mut net, m) = committed_then_byzantine_leader(Params::default());
    let (bad, _) = attack.new_terms(&net, &m);
    let msg = ReplicaMessage::NewTerm(Arc::new(bad));
    for r in HONEST {
        match net.deliver(BYZANTINE, r, &msg) {
            Err(e) => assert!(
                attack.refused(&e),
                "{attack:?}: refused for another reason: {e}"
            ),
            Ok(()) => panic!("{attack:?}: replica {r} accepted the NewTerm"),
        }
    }
    net.flush();
    byzantine_pre_appends(&mut net, &m, true);
    for r in HONEST {
        assert!(net.seeking(r, 2), "{attack:?}: replica {r} entered term 2");
        assert!(
            net.pre_append_votes(r, 2).is_empty(),
            "{attack:?}: replica {r} voted in term 2"
        );
        assert!(net.replicas[r].metrics().refused["pre-append for another term"] >= 2);
        assert_eq!(
            net.committed(r),
            m.before[&r],
            "{attack:?}: replica {r}'s committed log"
        );
    }

    // Term 2 never starts; the honest replicas move on to term 3 (leader 3, honest, which lacks
    // entries 2 and 3). The Byzantine replica asks for term 3 too, reporting nothing.
    let bogus3 = TermChange::sign(
        &net.cid,
        &net.keys[BYZANTINE],
        ReplicaId(BYZANTINE as u32),
        Term(3),
        None,
        vec![],
    );
    for r in HONEST {
        net.deliver(BYZANTINE, r, &ReplicaMessage::TermChange(bogus3.clone()))
            .unwrap();
    }
    net.flush();
    net.run_until("term 3 started at every honest replica", 300, |n| {
        HONEST.iter().all(|&r| n.in_term(r, 3))
    });
    net.run_until("leader 3 re-proposed the chosen log", 100, |n| {
        n.proposals(3).len() >= 2
    });
    // It proposes the committed entries again, same entries, same order, and nothing else yet.
    let expected: Vec<(u64, Digest)> = vec![(2, m.hashes[1]), (3, m.hashes[2])];
    assert_eq!(
        net.proposals(3),
        expected,
        "{attack:?}: leader 3's re-proposals"
    );

    // A new tx commits on top of them, everywhere.
    net.submit(3);
    net.run_until("entry 4 committed at every honest replica", 100, |n| {
        HONEST
            .iter()
            .all(|&r| n.replicas[r].commit_index() >= Index(4))
    });
    let reference = net.committed(0);
    assert_eq!(
        &reference[..3],
        &m.before[&0][..],
        "{attack:?}: entries 1..=3 changed"
    );
    for r in HONEST {
        assert_eq!(
            net.committed(r),
            reference,
            "{attack:?}: replica {r}'s committed log"
        );
    }
    assert_eq!(net.proposals(3)[..2], expected[..]);
}

fn honest_new_term_is_accepted(attack: Attack) {
    let (mut net, m) = committed_then_byzantine_leader(Params::default());
    let (_, good) = attack.new_terms(&net, &m);
    let chosen = good.chosen.clone();
    let msg = ReplicaMessage::NewTerm(Arc::new(good));
    for r in HONEST {
        net.deliver(BYZANTINE, r, &msg)
            .unwrap_or_else(|e| panic!("{attack:?} control: replica {r} refused: {e}"));
        assert!(
            net.in_term(r, 2),
            "{attack:?} control: replica {r} is not in term 2"
        );
    }
    assert_eq!(chosen, m.honest_list());
    net.flush();
    byzantine_pre_appends(&mut net, &m, false);
    for r in HONEST {
        assert_eq!(
            net.pre_append_votes(r, 2),
            vec![2, 3],
            "{attack:?} control: replica {r}'s votes in term 2"
        );
        assert_eq!(net.committed(r), m.before[&r]);
        assert_eq!(net.replicas[r].entry_hash(Index(2)), Some(m.hashes[1]));
        assert_eq!(net.replicas[r].entry_hash(Index(3)), Some(m.hashes[2]));
    }
}

#[test]
fn a_new_term_omitting_a_committed_entry_is_refused() {
    byzantine_new_term_is_refused(Attack::OmitsCommittedEntry);
}

#[test]
fn control_a_new_term_with_every_committed_entry_is_accepted() {
    honest_new_term_is_accepted(Attack::OmitsCommittedEntry);
}

#[test]
fn a_new_term_replacing_a_committed_entry_is_refused() {
    byzantine_new_term_is_refused(Attack::ReplacesCommittedEntry);
}

#[test]
fn control_a_new_term_with_the_committed_hashes_is_accepted() {
    honest_new_term_is_accepted(Attack::ReplacesCommittedEntry);
}

#[test]
fn a_new_term_with_fewer_than_a_quorum_of_term_changes_is_refused() {
    byzantine_new_term_is_refused(Attack::TooFewTermChanges);
}

#[test]
fn control_a_new_term_with_a_quorum_including_a_lying_term_change_is_accepted() {
    honest_new_term_is_accepted(Attack::TooFewTermChanges);
}

#[test]
fn a_new_term_padding_its_quorum_with_a_duplicate_is_refused() {
    byzantine_new_term_is_refused(Attack::DuplicateTermChange);
}

#[test]
fn control_a_new_term_with_distinct_senders_is_accepted() {
    honest_new_term_is_accepted(Attack::DuplicateTermChange);
}

#[test]
fn a_new_term_carrying_term_changes_for_another_term_is_refused() {
    byzantine_new_term_is_refused(Attack::TermChangesForAnotherTerm);
}

#[test]
fn control_a_new_term_carrying_term_changes_for_its_term_is_accepted() {
    honest_new_term_is_accepted(Attack::TermChangesForAnotherTerm);
}

#[test]
fn a_new_term_carrying_tampered_term_changes_is_refused() {
    byzantine_new_term_is_refused(Attack::TamperedTermChanges);
}

#[test]
fn control_a_new_term_carrying_the_term_changes_as_signed_is_accepted() {
    honest_new_term_is_accepted(Attack::TamperedTermChanges);
}

#[test]
fn a_new_term_carrying_an_impersonated_term_change_is_refused() {
    byzantine_new_term_is_refused(Attack::ImpersonatedTermChange);
}

#[test]
fn control_a_new_term_carrying_only_genuine_term_changes_is_accepted() {
    honest_new_term_is_accepted(Attack::ImpersonatedTermChange);
}

// ----- liveness after the recovery above -----
//
// A new leader that lacks entries the others already committed (replica 3 here, which missed
// entries 2 and 3) re-proposes them (`repropose_chosen` starts at its own commit index). Replicas
// that committed them vote Append for them again in the new term (`on_prepared`), so the leader
// commits them too; before that fix it never did, and they clogged its pipeline.

/// The recovery of the attack tests above, up to the honest leader of term 3 having proposed the
/// chosen log again.
fn recovered_in_term_3(params: Params) -> (Net, Material) {
    let (mut net, m) = committed_then_byzantine_leader(params);
    net.run_until("term 3 started at every honest replica", 300, |n| {
        HONEST.iter().all(|&r| n.in_term(r, 3))
    });
    net.run_until("leader 3 re-proposed the chosen log", 100, |n| {
        n.proposals(3).len() >= 2
    });
    (net, m)
}

// Regression: a new leader behind the others' commit index re-proposes what they committed; it
// used to never commit (nor execute) those entries, since followers gave no Append vote at or
// below their commit index, and it retransmitted their Append messages every heartbeat forever.
#[test]
fn a_new_leader_behind_commits_what_the_others_committed() {
    let (mut net, _) = recovered_in_term_3(Params::default());
    for _ in 0..100 {
        net.step(); // one idle second
    }
    assert_eq!(
        net.replicas[3].commit_index(),
        Index(3),
        "leader 3 is stuck below entries 2 and 3, which replicas 0 and 1 committed\n{}",
        net.describe()
    );
}

// Regression: the stuck re-proposals above used to fill the pipeline (two of them with
// `pipeline_depth: 2`), so the leader proposed nothing new and a tx sent to it was never
// ordered, while no follower suspected it.
#[test]
fn re_proposals_of_committed_entries_do_not_stall_the_pipeline() {
    let (mut net, _) = recovered_in_term_3(Params {
        pipeline_depth: 2,
        ..Params::default()
    });
    net.submit(3);
    net.run_until("a new tx committed in term 3 (or later)", 300, |n| {
        HONEST
            .iter()
            .all(|&r| n.replicas[r].commit_index() >= Index(4))
    });
}
