//! The term-change choice rule and the verification of TermChange / NewTerm messages.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use raft_bft::choice::{choose, ChoiceError};
use raft_bft::config::Params;
use raft_bft::crypto::KeyPair;
use raft_bft::manifest::{Cluster, Manifest};
use raft_bft::message::{
    Certificate, EntryHeader, NewTerm, Phase, PreparedEntry, TermChange, Vote, VoteSubject,
};
use raft_bft::types::{Digest, Index, ReplicaId, Signature, Term};
use raft_bft::verify::{Verifier, VerifyError};

fn cluster(n: usize) -> (Arc<Cluster>, Vec<KeyPair>) {
    let keys: Vec<KeyPair> = (0..n)
        .map(|i| KeyPair::from_seed([i as u8 + 1; 32]))
        .collect();
    let manifest = Manifest::new(
        "term-change",
        keys.iter().map(|k| (k.public(), String::new())),
        Params::default(),
    );
    (Arc::new(Cluster::new(manifest).unwrap()), keys)
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
    let nt = NewTerm {
        new_term: Term(2),
        term_changes: changes.clone(),
        chosen: chosen.clone(),
    };
    let verified = v.verify_new_term(Arc::new(nt.clone())).unwrap();
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
