//! The choice rule keeps committed entries across term changes, whoever leads.
//!
//! A model of whole histories: honest replicas follow the replica's own rules (which PreAppends
//! they vote for, when they store a prepared certificate and vote Append, how they commit, fetch,
//! execute, leave a term, report in a TermChange, and enter a term from a NewTerm); everything
//! else is the adversary's: the network (any message to any subset, in any order, or never), up
//! to `f` Byzantine replicas that sign anything (equivocating leaders, TermChanges reporting any
//! certificate that exists, omitting or downgrading entries), and NewTerms assembled from any
//! quorum of valid TermChanges (a Byzantine leader sends different ones to different replicas;
//! a Byzantine replica races an honest leader with its own). A certificate "exists" as soon as
//! enough honest replicas signed its subject that the Byzantine ones can complete the quorum.
//!
//! Every TermChange is built and signed for real and passes `Verifier::verify_term_change`
//! before `choose` sees it (invalid ones the adversary tries are asserted refused and left out).
//! At every choice, every committed entry (the chain below every commit certificate that exists)
//! must be in the chosen log at its index with its hash, or below its base; honest replicas never
//! commit two different entries at one index.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;
use raft_bft::choice::{choose, ChosenLog};
use raft_bft::config::Params;
use raft_bft::crypto::KeyPair;
use raft_bft::message::{
    Certificate, EntryHeader, Phase, PreparedEntry, TermChange, Vote, VoteSubject,
};
use raft_bft::testing::TestCluster;
use raft_bft::types::{Digest, Index, ReplicaId, Term};
use raft_bft::verify::Verifier;

/// Histories run up to this term.
const LAST_TERM: u64 = 7;

/// The adversary's (and the network's) choices: proptest shrinks them towards zero, which means
/// full delivery, honest TermChanges and no skipped terms.
struct Dice {
    rolls: Vec<u32>,
    at: usize,
}

impl Dice {
    fn roll(&mut self, m: usize) -> usize {
        let r = self.rolls.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        if m <= 1 {
            0
        } else {
            r as usize % m
        }
    }

    /// Rarely true (never once the rolls run out).
    fn chance(&mut self, one_in: usize) -> bool {
        self.roll(one_in) == one_in - 1
    }

    /// Usually true: a message is delivered.
    fn keep(&mut self) -> bool {
        self.roll(4) != 3
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            return None;
        }
        Some(items[self.roll(items.len())].clone())
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.roll(i + 1);
            items.swap(i, j);
        }
    }
}

#[derive(Clone, Debug)]
struct Slot {
    header: EntryHeader,
    hash: Digest,
    /// The term of the prepared certificate held for this entry (the highest one).
    pc_term: Option<u64>,
}

/// `(term, index, entry hash)` of a certificate.
type Subject = (u64, u64, Digest);

/// An honest replica, reduced to what decides its votes and its TermChange.
#[derive(Clone, Debug)]
struct Honest {
    term: u64,
    seeking: bool,
    log: Vec<Slot>,
    commit: u64,
    applied: u64,
    latest_ec: Option<Subject>,
    votes: BTreeMap<(Phase, u64, u64), Digest>,
    chosen: BTreeMap<u64, Digest>,
    base: u64,
}

impl Honest {
    fn tip(&self) -> u64 {
        self.log.len() as u64
    }

    fn hash_at(&self, genesis: Digest, index: u64) -> Option<Digest> {
        if index == 0 {
            return Some(genesis);
        }
        self.log.get(index as usize - 1).map(|s| s.hash)
    }

    fn chosen_end(&self) -> u64 {
        self.chosen
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(self.base)
    }

    fn truncate_from(&mut self, index: u64) {
        assert!(index > self.commit, "truncating a committed entry");
        self.log.truncate(index as usize - 1);
    }
}

struct World {
    n: usize,
    q: usize,
    byzantine: Vec<usize>,
    cid: Digest,
    keys: Vec<KeyPair>,
    verifier: Verifier,
    dice: Dice,
    replicas: Vec<Option<Honest>>,
    /// Every entry header anyone made, by hash.
    headers: HashMap<Digest, EntryHeader>,
    honest_votes: BTreeMap<(Phase, Subject), BTreeSet<usize>>,
    /// Certificates that exist (or that the adversary can complete at will), by phase.
    pcs: BTreeSet<Subject>,
    ccs: BTreeSet<Subject>,
    ecs: BTreeSet<Subject>,
    /// The committed chain: every entry at or below a commit certificate.
    committed: BTreeMap<u64, Digest>,
    certs: HashMap<(Phase, Subject), Certificate>,
    verified: BTreeSet<(u32, Digest)>,
    /// The term being run, and the NewTerms that started it.
    term: u64,
    new_terms: Vec<ChosenLog>,
    /// The honest leader's next index to propose, and its proposals so far.
    cursor: Option<u64>,
    proposals: Vec<EntryHeader>,
    fresh: u8,
    stats: Stats,
}

#[derive(Debug, Default, Clone)]
struct Stats {
    choices: usize,
    committed_at_choice: usize,
    byzantine_reports: usize,
    refused_reports: usize,
    terms_started: usize,
}

impl World {
    fn new(n: usize, byzantine: Vec<usize>, rolls: Vec<u32>) -> World {
        let TestCluster { cluster, keys } = TestCluster::new("choice-rule", n, Params::default());
        let cid = *cluster.cluster_id();
        let q = cluster.quorum();
        let honest = Honest {
            term: 0,
            seeking: false,
            log: Vec::new(),
            commit: 0,
            applied: 0,
            latest_ec: None,
            votes: BTreeMap::new(),
            chosen: BTreeMap::new(),
            base: 0,
        };
        let replicas = (0..n)
            .map(|i| (!byzantine.contains(&i)).then(|| honest.clone()))
            .collect();
        let mut w = World {
            n,
            q,
            byzantine,
            cid,
            keys,
            verifier: Verifier::new(cluster, [5; 32]),
            dice: Dice { rolls, at: 0 },
            replicas,
            headers: HashMap::new(),
            honest_votes: BTreeMap::new(),
            pcs: BTreeSet::new(),
            ccs: BTreeSet::new(),
            ecs: BTreeSet::new(),
            committed: BTreeMap::new(),
            certs: HashMap::new(),
            verified: BTreeSet::new(),
            term: 0,
            new_terms: Vec::new(),
            cursor: None,
            proposals: Vec::new(),
            fresh: 0,
            stats: Stats::default(),
        };
        if w.is_honest(0) {
            w.cursor = Some(1);
        }
        w
    }

    fn is_honest(&self, r: usize) -> bool {
        self.replicas[r].is_some()
    }

    fn honest_ids(&self) -> Vec<usize> {
        (0..self.n).filter(|r| self.is_honest(*r)).collect()
    }

    fn h(&mut self, r: usize) -> &mut Honest {
        self.replicas[r].as_mut().expect("an honest replica")
    }

    /// Honest signatures needed for a certificate: the Byzantine replicas sign the rest.
    fn threshold(&self) -> usize {
        self.q - self.byzantine.len()
    }

    fn leader_of(&self, term: u64) -> usize {
        (term % self.n as u64) as usize
    }

    fn state_digest(index: u64, hash: &Digest) -> Digest {
        let mut bytes = hash.0.to_vec();
        bytes.extend_from_slice(&index.to_le_bytes());
        Digest(*blake3::hash(&bytes).as_bytes())
    }

    fn register(&mut self, header: EntryHeader) -> Digest {
        let hash = header.hash(&self.cid);
        self.headers.insert(hash, header);
        hash
    }

    /// A real certificate (q signatures) for a subject that exists.
    fn cert(&mut self, phase: Phase, (term, index, hash): Subject) -> Certificate {
        let key = (phase, (term, index, hash));
        if let Some(c) = self.certs.get(&key) {
            return c.clone();
        }
        let subject = VoteSubject {
            phase,
            term: Term(term),
            index: Index(index),
            entry_hash: hash,
            state_digest: (phase == Phase::Commit).then(|| Self::state_digest(index, &hash)),
        };
        // The honest voters first, then the Byzantine ones.
        let mut signers: Vec<usize> = self
            .honest_votes
            .get(&key)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        signers.extend(self.byzantine.iter().copied());
        signers.truncate(self.q);
        assert_eq!(signers.len(), self.q, "a certificate that does not exist");
        let sigs = signers
            .iter()
            .map(|&i| {
                let v = Vote::sign(&self.cid, &self.keys[i], ReplicaId(i as u32), subject);
                (v.replica, v.sig)
            })
            .collect();
        let c = Certificate { subject, sigs };
        self.certs.insert(key, c.clone());
        c
    }

    fn prepared_entry(&mut self, pc: Subject) -> PreparedEntry {
        PreparedEntry {
            certificate: self.cert(Phase::PreAppend, pc),
            header: self.headers[&pc.2],
        }
    }

    // ----- the honest replica's rules (src/replica/) -----

    /// `Replica::vote`: never while seeking or outside the current term, never two subjects
    /// for one `(phase, term, index)`.
    fn vote(&mut self, r: usize, phase: Phase, s: Subject) -> bool {
        let h = self.h(r);
        if h.seeking || s.0 != h.term {
            return false;
        }
        match h.votes.get(&(phase, s.0, s.1)) {
            Some(prev) if *prev != s.2 => return false,
            Some(_) => {}
            None => {
                h.votes.insert((phase, s.0, s.1), s.2);
            }
        }
        let voters = self.honest_votes.entry((phase, s)).or_default();
        voters.insert(r);
        if voters.len() >= self.threshold() {
            match phase {
                Phase::PreAppend => {
                    self.pcs.insert(s);
                }
                Phase::Append => {
                    if self.ccs.insert(s) {
                        self.note_committed(s.1, s.2);
                    }
                }
                Phase::Commit => {
                    self.ecs.insert(s);
                }
            }
        }
        true
    }

    /// A commit certificate exists: its entry and the chain below it are committed. Two
    /// different committed entries at one index would be a safety violation.
    fn note_committed(&mut self, mut index: u64, mut hash: Digest) {
        while index > 0 {
            match self.committed.get(&index) {
                Some(h) if *h == hash => return,
                Some(h) => panic!(
                    "two committed entries at index {index}: {h:?} and {hash:?}\n{:#?}",
                    self.committed
                ),
                None => {
                    self.committed.insert(index, hash);
                }
            }
            let header = self.headers[&hash];
            hash = header.prev_hash;
            index -= 1;
        }
        assert_eq!(
            hash, self.cid,
            "a committed chain that does not start at genesis"
        );
    }

    /// `seek_term`.
    fn seek(&mut self, r: usize, term: u64) -> bool {
        let h = self.h(r);
        if term <= h.term && (h.seeking || term < h.term) {
            return false;
        }
        h.term = term;
        h.seeking = true;
        true
    }

    /// `on_pre_append` (with `fits_chosen_log`).
    fn on_pre_append(&mut self, r: usize, term: u64, header: EntryHeader) -> bool {
        let cid = self.cid;
        let hash = header.hash(&cid);
        let index = header.index.0;
        let h = self.h(r);
        if term != h.term || h.seeking {
            return false;
        }
        match h.chosen.get(&index) {
            Some(c) if *c == hash => {}
            Some(_) => return false,
            None if index <= h.chosen_end() => return false,
            None if header.term.0 == term => {}
            None => return false,
        }
        let s = (term, index, hash);
        if index <= h.tip() {
            if h.log[index as usize - 1].hash != hash {
                return false;
            }
            return self.vote(r, Phase::PreAppend, s);
        }
        if index > h.tip() + 1 || header.prev_hash != h.hash_at(cid, h.tip()).unwrap() {
            return false;
        }
        if h.votes
            .get(&(Phase::PreAppend, term, index))
            .is_some_and(|prev| *prev != hash)
        {
            return false;
        }
        h.log.push(Slot {
            header,
            hash,
            pc_term: None,
        });
        self.vote(r, Phase::PreAppend, s)
    }

    /// `on_prepared` (an Append message), with `vote_appends`.
    fn on_prepared(&mut self, r: usize, (term, index, hash): Subject) {
        if term > self.h(r).term {
            self.seek(r, term); // note_term_evidence
        }
        let h = self.h(r);
        if term != h.term || index <= h.commit || index > h.tip() {
            return;
        }
        let slot = &mut h.log[index as usize - 1];
        if slot.hash != hash {
            return;
        }
        if slot.pc_term.is_none_or(|t| t < term) {
            slot.pc_term = Some(term);
        }
        self.vote_appends(r);
    }

    fn vote_appends(&mut self, r: usize) {
        let h = self.h(r);
        let (term, from, tip) = (h.term, h.commit + 1, h.tip());
        for index in from..=tip {
            let slot = &self.h(r).log[index as usize - 1];
            if slot.pc_term != Some(term) {
                break;
            }
            let hash = slot.hash;
            self.vote(r, Phase::Append, (term, index, hash));
        }
    }

    /// `on_committed` (a Commit message, from anyone, of any term).
    fn on_committed(&mut self, r: usize, (term, index, hash): Subject) {
        if term > self.h(r).term {
            self.seek(r, term);
        }
        let cid = self.cid;
        let h = self.h(r);
        if index > h.tip() {
            self.fetch(r, index, hash);
            return;
        }
        if h.hash_at(cid, index) != Some(hash) {
            assert!(
                index > h.commit,
                "replica {r} committed another entry at {index} than a commit certificate"
            );
            h.truncate_from(index);
            self.fetch(r, index, hash);
            return;
        }
        if index <= h.commit {
            return;
        }
        h.commit = index;
        self.execute(r);
        self.vote_appends(r);
    }

    /// A fetch of the committed entries up to `(index, hash)` (`on_entries`), if the network
    /// lets it through: fetched entries come without prepared certificates.
    fn fetch(&mut self, r: usize, index: u64, hash: Digest) {
        if !self.dice.keep() {
            return;
        }
        let from = self.h(r).commit + 1;
        if index < from {
            return;
        }
        let mut chain = Vec::new();
        let mut h = hash;
        for _ in from..=index {
            let header = self.headers[&h];
            chain.push((header, h));
            h = header.prev_hash;
        }
        chain.reverse();
        let cid = self.cid;
        let rep = self.h(r);
        for (header, hash) in chain {
            let i = header.index.0;
            if rep.hash_at(cid, i) == Some(hash) {
                continue;
            }
            if i <= rep.tip() {
                rep.truncate_from(i);
            }
            assert_eq!(header.prev_hash, rep.hash_at(cid, i - 1).unwrap());
            rep.log.push(Slot {
                header,
                hash,
                pc_term: None,
            });
        }
        rep.commit = rep.commit.max(index);
        self.execute(r);
        self.vote_appends(r);
    }

    /// `execute_committed`: a Commit vote in the current term for each newly executed entry.
    fn execute(&mut self, r: usize) {
        loop {
            let h = self.h(r);
            if h.applied >= h.commit {
                return;
            }
            h.applied += 1;
            let (term, index) = (h.term, h.applied);
            let hash = h.log[index as usize - 1].hash;
            self.vote(r, Phase::Commit, (term, index, hash));
        }
    }

    fn note_ec(&mut self, r: usize, ec: Subject) {
        let h = self.h(r);
        if h.latest_ec.is_none_or(|old| old.1 < ec.1) {
            h.latest_ec = Some(ec);
        }
    }

    /// `own_term_change`: the newest execution certificate if it is for the entry held there,
    /// and every prepared certificate held above it.
    fn own_term_change(&mut self, r: usize, new_term: u64) -> TermChange {
        let cid = self.cid;
        let h = self.h(r).clone();
        let stable = h.latest_ec.filter(|ec| h.hash_at(cid, ec.1) == Some(ec.2));
        let above = stable.map_or(0, |ec| ec.1);
        let prepared: Vec<PreparedEntry> = h
            .log
            .iter()
            .skip(above as usize)
            .filter_map(|s| s.pc_term.map(|t| (t, s.header.index.0, s.hash)))
            .map(|pc| self.prepared_entry(pc))
            .collect();
        let stable = stable.map(|ec| self.cert(Phase::Commit, ec));
        TermChange::sign(
            &cid,
            &self.keys[r],
            ReplicaId(r as u32),
            Term(new_term),
            stable,
            prepared,
        )
    }

    /// `on_new_term` / `enter_term`: keeps the chosen prefix it holds, drops the rest, catches
    /// up to the base.
    fn enter(&mut self, r: usize, chosen: &ChosenLog) -> bool {
        let cid = self.cid;
        let term = chosen.new_term.0;
        let base = chosen.base.as_ref().map(|ec| {
            let s = &ec.subject;
            (s.term.0, s.index.0, s.entry_hash)
        });
        let h = self.h(r);
        if term < h.term || (term == h.term && !h.seeking) {
            return false;
        }
        // What it committed must agree with what the term starts from.
        for e in &chosen.entries {
            let i = e.header.index.0;
            if i <= h.commit {
                assert_eq!(
                    h.hash_at(cid, i),
                    Some(e.hash),
                    "replica {r} enters term {term} whose chosen log contradicts its committed \
                     entry {i}"
                );
            }
        }
        h.term = term;
        h.seeking = false;
        h.chosen = chosen
            .entries
            .iter()
            .map(|e| (e.header.index.0, e.hash))
            .collect();
        h.base = chosen.base_index().0;
        let mut keep = h.base.max(h.commit);
        for e in &chosen.entries {
            let i = e.header.index.0;
            if i <= keep {
                continue;
            }
            if h.hash_at(cid, i) == Some(e.hash) && i == keep + 1 {
                keep = i;
            } else {
                break;
            }
        }
        if h.tip() > keep {
            h.truncate_from(keep + 1);
        }
        if let Some(ec) = base {
            self.note_ec(r, ec);
            if ec.1 > self.h(r).commit {
                self.fetch(r, ec.1, ec.2);
            }
        }
        self.execute(r);
        true
    }

    // ----- the adversary -----

    /// A TermChange a Byzantine replica may send: any stable certificate and any prepared
    /// certificates that exist in earlier terms, at increasing indices above it; typically
    /// omitting entries or reporting older certificates than the honest ones hold.
    fn byzantine_term_change(&mut self, b: usize, new_term: u64) -> TermChange {
        let ecs: Vec<Subject> = self
            .ecs
            .iter()
            .filter(|e| e.0 < new_term)
            .copied()
            .collect();
        let stable = if self.dice.chance(3) {
            self.dice.pick(&ecs)
        } else {
            None
        };
        let above = stable.map_or(0, |ec| ec.1);
        let mut by_index: BTreeMap<u64, Vec<Subject>> = BTreeMap::new();
        for pc in self.pcs.iter().filter(|p| p.0 < new_term && p.1 > above) {
            by_index.entry(pc.1).or_default().push(*pc);
        }
        let style = self.dice.roll(3);
        let mut report = Vec::new();
        for (_, pcs) in by_index {
            let pick = match style {
                0 => None,                                     // reports nothing
                1 => pcs.iter().min().copied(),                // the oldest certificate everywhere
                _ if self.dice.keep() => self.dice.pick(&pcs), // any, with gaps
                _ => None,
            };
            if let Some(pc) = pick {
                report.push(self.prepared_entry(pc));
            }
        }
        let stable = stable.map(|ec| self.cert(Phase::Commit, ec));
        self.stats.byzantine_reports += 1;
        TermChange::sign(
            &self.cid,
            &self.keys[b],
            ReplicaId(b as u32),
            Term(new_term),
            stable,
            report,
        )
    }

    /// A TermChange the verifier must refuse (tampered after signing, a certificate that does
    /// not match its header, or a certificate short of a quorum).
    fn invalid_term_change(&mut self, b: usize, new_term: u64) -> TermChange {
        let mut tc = self.byzantine_term_change(b, new_term);
        match self.dice.roll(4) {
            0 => tc.new_term = Term(new_term + 1),
            1 if !tc.prepared.is_empty() => {
                let i = self.dice.roll(tc.prepared.len());
                tc.prepared[i].header.tx_root = Digest([0xee; 32]);
                tc.sig = self.keys[b].sign(&tc.signing_digest(&self.cid));
            }
            2 if !tc.prepared.is_empty() => {
                let i = self.dice.roll(tc.prepared.len());
                tc.prepared[i].certificate.sigs.pop();
                tc.sig = self.keys[b].sign(&tc.signing_digest(&self.cid));
            }
            _ => tc.sig.0[7] ^= 1,
        }
        tc
    }

    /// Checks a TermChange with the real verifier (once per distinct message).
    fn verify(&mut self, tc: &TermChange) {
        let key = (tc.replica.0, tc.signing_digest(&self.cid));
        if self.verified.contains(&key) {
            return;
        }
        if let Err(e) = self.verifier.verify_term_change(tc.replica, tc.clone()) {
            panic!("a TermChange the model considers valid is refused: {e}\n{tc:#?}");
        }
        self.verified.insert(key);
    }

    /// The property: every committed entry is in the chosen log at its index with its hash,
    /// or at or below its base (which is a committed entry itself).
    fn check_choice(&mut self, changes: &[TermChange]) -> ChosenLog {
        for tc in changes {
            self.verify(tc);
        }
        let term = changes[0].new_term;
        let chosen = choose(&self.cid, self.q, term, changes).expect("a quorum chooses");
        let base = chosen.base_index().0;
        // The chosen log is consecutive from the base and hash-chained to it.
        let mut prev = chosen
            .base
            .as_ref()
            .map_or(self.cid, |ec| ec.subject.entry_hash);
        for (k, e) in chosen.entries.iter().enumerate() {
            assert_eq!(e.header.index.0, base + 1 + k as u64);
            assert_eq!(e.header.prev_hash, prev, "the chosen log does not chain");
            assert_eq!(e.header.hash(&self.cid), e.hash);
            prev = e.hash;
        }
        if let Some(ec) = &chosen.base {
            assert_eq!(
                self.committed.get(&base),
                Some(&ec.subject.entry_hash),
                "the base of term {} is not a committed entry",
                term.0
            );
        }
        for (&index, &hash) in self.committed.range(base + 1..) {
            let got = chosen
                .entries
                .get((index - base - 1) as usize)
                .map(|e| e.hash);
            assert_eq!(
                got,
                Some(hash),
                "committed entry {index} lost in the choice for term {}: base {base}, chosen \
                 {:?}\ncommitted {:?}\nreports {:#?}",
                term.0,
                chosen.list(),
                self.committed,
                changes
                    .iter()
                    .map(|tc| (
                        tc.replica.0,
                        tc.stable.as_ref().map(|e| e.subject.index.0),
                        tc.prepared
                            .iter()
                            .map(|p| (p.certificate.subject.index.0, p.certificate.subject.term.0))
                            .collect::<Vec<_>>()
                    ))
                    .collect::<Vec<_>>()
            );
        }
        self.stats.choices += 1;
        self.stats.committed_at_choice += self.committed.len();
        chosen
    }

    /// Some of the honest replicas, chosen by the network.
    fn some_honest(&mut self) -> Vec<usize> {
        let ids = self.honest_ids();
        ids.into_iter().filter(|_| self.dice.keep()).collect()
    }

    // ----- a term -----

    fn run_term(&mut self) {
        let t = self.term;
        let leader = self.leader_of(t);
        let steps = 4 + self.dice.roll(24);
        for _ in 0..steps {
            match self.dice.roll(10) {
                0..=3 => {
                    if self.is_honest(leader) {
                        self.honest_proposal(leader);
                    } else {
                        self.byzantine_proposal();
                    }
                }
                4 => {
                    // A retransmission (or a late delivery) of an earlier proposal.
                    if let Some(header) = self.dice.pick(&self.proposals.clone()) {
                        for r in self.some_honest() {
                            self.on_pre_append(r, t, header);
                        }
                    }
                }
                5 | 6 => {
                    let pcs: Vec<Subject> = self.pcs.iter().filter(|p| p.0 == t).copied().collect();
                    if let Some(pc) = self.dice.pick(&pcs) {
                        for r in self.some_honest() {
                            self.on_prepared(r, pc);
                        }
                    }
                }
                7 => {
                    let ccs: Vec<Subject> = self.ccs.iter().copied().collect();
                    if let Some(cc) = self.dice.pick(&ccs) {
                        for r in self.some_honest() {
                            self.on_committed(r, cc);
                        }
                    }
                }
                8 => {
                    let ecs: Vec<Subject> = self.ecs.iter().copied().collect();
                    if let Some(ec) = self.dice.pick(&ecs) {
                        for r in self.some_honest() {
                            self.note_ec(r, ec);
                        }
                    }
                }
                _ => {
                    // NewTerm is self-certifying: anyone relays it to replicas behind.
                    if let Some(nt) = self.dice.pick(&self.new_terms.clone()) {
                        for r in self.some_honest() {
                            self.enter(r, &nt);
                        }
                    }
                }
            }
        }
    }

    /// The honest leader re-proposes its chosen log in order, then proposes fresh entries; the
    /// same entry to everyone.
    fn honest_proposal(&mut self, leader: usize) {
        let t = self.term;
        let Some(p) = self.cursor else { return };
        let cid = self.cid;
        let h = self.replicas[leader].as_ref().expect("an honest leader");
        if h.term != t || h.seeking {
            return;
        }
        let (tip, tip_hash) = (h.tip(), h.hash_at(cid, h.tip()).unwrap());
        let header = if p <= h.chosen_end() {
            match h.chosen.get(&p) {
                Some(hash) => self.headers[hash],
                None => return,
            }
        } else {
            if p != tip + 1 {
                return;
            }
            self.fresh = self.fresh.wrapping_add(1);
            let header = EntryHeader {
                term: Term(t),
                index: Index(p),
                prev_hash: tip_hash,
                tx_root: Digest([self.fresh; 32]),
            };
            self.register(header);
            header
        };
        if !self.on_pre_append(leader, t, header) {
            return;
        }
        self.cursor = Some(p + 1);
        self.proposals.push(header);
        for r in self.some_honest() {
            if r != leader {
                self.on_pre_append(r, t, header);
            }
        }
    }

    /// A Byzantine leader proposes anything it can sign, at any index, to anyone: fresh entries
    /// of its term on any chain, or any entry seen before.
    fn byzantine_proposal(&mut self) {
        let t = self.term;
        let cid = self.cid;
        let top = self
            .honest_ids()
            .iter()
            .map(|&r| self.replicas[r].as_ref().unwrap().tip())
            .max()
            .unwrap_or(0);
        let index = 1 + self.dice.roll(top as usize + 1) as u64;
        let known: Vec<EntryHeader> = self
            .headers
            .values()
            .filter(|h| h.index.0 == index && h.term.0 <= t)
            .copied()
            .collect();
        let header = match self.dice.pick(&known) {
            Some(h) if self.dice.roll(2) == 0 => h,
            _ => {
                let honest = self.honest_ids();
                let r = self.dice.pick(&honest).unwrap();
                let prev = self.replicas[r]
                    .as_ref()
                    .unwrap()
                    .hash_at(cid, index - 1)
                    .unwrap_or(cid);
                let header = EntryHeader {
                    term: Term(t),
                    index: Index(index),
                    prev_hash: prev,
                    tx_root: Digest([200 + self.dice.roll(3) as u8; 32]),
                };
                self.register(header);
                header
            }
        };
        self.proposals.push(header);
        for r in self.some_honest() {
            self.on_pre_append(r, t, header);
        }
    }

    // ----- a term change -----

    /// Honest replicas leave their terms and report; the new leader (or the adversary, with any
    /// quorum of valid TermChanges) starts the new term at some of them.
    fn change_term(&mut self, new_term: u64) {
        let leader = self.leader_of(new_term);
        let mut honest_reports: BTreeMap<usize, TermChange> = BTreeMap::new();
        for r in self.honest_ids() {
            // A replica not asked, or slow, stays behind (it may be relayed the NewTerm later).
            if (r == leader || self.dice.keep()) && self.seek(r, new_term) {
                let tc = self.own_term_change(r, new_term);
                honest_reports.insert(r, tc);
            }
        }
        // The adversary tries TermChanges the verifier must refuse.
        for b in self.byzantine.clone() {
            if self.dice.chance(3) {
                let bad = self.invalid_term_change(b, new_term);
                assert!(
                    self.verifier
                        .verify_term_change(bad.replica, bad.clone())
                        .is_err(),
                    "a tampered TermChange verifies: {bad:#?}"
                );
                self.stats.refused_reports += 1;
            }
        }
        let mut starts: Vec<(ChosenLog, Vec<usize>)> = Vec::new();
        let byzantine_leader = !self.is_honest(leader);
        let alternatives = if byzantine_leader {
            1 + self.dice.roll(3)
        } else if !self.byzantine.is_empty() && self.dice.chance(3) {
            1 // a Byzantine replica races the honest leader with a NewTerm of its own
        } else {
            0
        };
        for _ in 0..alternatives {
            let mut senders: Vec<usize> = honest_reports.keys().copied().collect();
            senders.extend(self.byzantine.iter().copied());
            if senders.len() < self.q {
                continue;
            }
            self.dice.shuffle(&mut senders);
            let size = self.q + self.dice.roll(senders.len() - self.q + 1);
            senders.truncate(size);
            let changes: Vec<TermChange> = senders
                .iter()
                .map(|&s| match honest_reports.get(&s) {
                    Some(tc) => tc.clone(),
                    None => self.byzantine_term_change(s, new_term),
                })
                .collect();
            let chosen = self.check_choice(&changes);
            let to = self.some_honest();
            starts.push((chosen, to));
        }
        self.cursor = None;
        if !byzantine_leader && honest_reports.contains_key(&leader) && self.dice.keep() {
            // The honest leader starts the term with the first quorum it hears from.
            let mut others: Vec<usize> = honest_reports
                .keys()
                .copied()
                .filter(|r| *r != leader)
                .collect();
            others.extend(self.byzantine.iter().copied());
            self.dice.shuffle(&mut others);
            if others.len() + 1 >= self.q {
                let mut changes = vec![honest_reports[&leader].clone()];
                for &s in &others[..self.q - 1] {
                    changes.push(match honest_reports.get(&s) {
                        Some(tc) => tc.clone(),
                        None => self.byzantine_term_change(s, new_term),
                    });
                }
                let chosen = self.check_choice(&changes);
                let mut to = vec![leader];
                to.extend(self.some_honest());
                starts.push((chosen, to));
            }
        }
        self.term = new_term;
        self.proposals.clear();
        self.new_terms.clear();
        let mut started = false;
        for (chosen, to) in starts {
            for r in to {
                if self.enter(r, &chosen) {
                    started = true;
                    if r == leader {
                        let h = self.h(r);
                        self.cursor = Some(h.commit.max(h.base) + 1);
                    }
                }
            }
            self.new_terms.push(chosen);
        }
        if started {
            self.stats.terms_started += 1;
        }
    }

    fn run(&mut self) {
        loop {
            self.run_term();
            let next = self.term + 1 + u64::from(self.dice.chance(4));
            if next > LAST_TERM {
                break;
            }
            self.change_term(next);
        }
        // A last term change, seen by many different quorums.
        let last = self.term + 1;
        for r in self.honest_ids() {
            self.seek(r, last);
        }
        let honest = self.honest_ids();
        for _ in 0..3 {
            let mut senders: Vec<usize> = (0..self.n).collect();
            self.dice.shuffle(&mut senders);
            senders.truncate(self.q);
            let changes: Vec<TermChange> = senders
                .iter()
                .map(|&s| {
                    if honest.contains(&s) {
                        self.own_term_change(s, last)
                    } else {
                        self.byzantine_term_change(s, last)
                    }
                })
                .collect();
            self.check_choice(&changes);
        }
    }
}

fn history() -> impl Strategy<Value = (usize, Vec<usize>, Vec<u32>)> {
    (prop_oneof![3 => Just(4usize), 1 => Just(7)], any::<u64>()).prop_flat_map(|(n, pick)| {
        let f = (n - 1) / 3;
        // Up to f Byzantine replicas, anywhere (leaders of some terms, or not).
        let mut ids: Vec<usize> = (0..n).collect();
        let mut seed = pick;
        for i in (1..n).rev() {
            let j = (seed % (i as u64 + 1)) as usize;
            seed /= i as u64 + 1;
            ids.swap(i, j);
        }
        (
            Just(n),
            (0..=f).prop_map(move |b| ids[..b].to_vec()),
            prop::collection::vec(any::<u32>(), 0..3000),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn committed_entries_survive_term_changes_under_byzantine_leaders(
        (n, byzantine, rolls) in history()
    ) {
        let mut w = World::new(n, byzantine, rolls);
        w.run();
    }
}

/// The model is not vacuous: over fixed histories, choices are made while entries are
/// committed, in many terms, with Byzantine TermChanges in the quorums and refused ones tried.
#[test]
fn the_model_commits_changes_terms_and_lies() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u32
    };
    let mut total = Stats::default();
    let mut most_committed = 0;
    for case in 0..24usize {
        let n = if case % 4 == 0 { 7 } else { 4 };
        let byzantine: Vec<usize> = (0..case % ((n - 1) / 3 + 1))
            .map(|i| (case + 3 * i) % n)
            .collect();
        let mut w = World::new(n, byzantine, (0..3000).map(|_| next()).collect());
        w.run();
        most_committed = most_committed.max(w.committed.len());
        total.choices += w.stats.choices;
        total.committed_at_choice += w.stats.committed_at_choice;
        total.byzantine_reports += w.stats.byzantine_reports;
        total.refused_reports += w.stats.refused_reports;
        total.terms_started += w.stats.terms_started;
    }
    assert!(most_committed >= 5, "{most_committed}");
    assert!(total.committed_at_choice >= total.choices, "{total:?}");
    assert!(total.terms_started >= 24 * 3, "{total:?}");
    assert!(
        total.byzantine_reports >= 100 && total.refused_reports >= 10,
        "{total:?}"
    );
}
