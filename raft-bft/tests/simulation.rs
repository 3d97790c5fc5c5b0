//! The deterministic simulator: bounded runs over many seeds, determinism, and checks that the
//! checkers catch what they are meant to catch.

use std::cell::Cell;
use std::time::Duration;

use raft_bft::crypto::KeyPair;
use raft_bft::message::{entry_hash, Entry, Outcome, Rejection, SignedTx};
use raft_bft::sim::{
    self, check_agreement, check_linearizability, check_validity, History, KvOp, KvResult,
    KvWorkload, Replay, SimConfig, SimReport, SimRng, TestKv, Workload,
};
use raft_bft::state_machine::StateMachine;
use raft_bft::types::{ClientId, Digest, Index, ReplicaId, Term, Time};

/// Why a run failed (with the command that replays it), or `None`.
fn failure(report: &SimReport) -> Option<String> {
    if report.is_ok() && report.accepted_txs == report.submitted_txs && report.committed_txs > 0 {
        return None;
    }
    Some(format!(
        "seed {} failed; replay with `cargo run --release -p raft-bft --example simulate -- \
         --seed {} --replicas {}`\n{report}",
        report.seed, report.seed, report.replicas
    ))
}

fn assert_ok(report: &SimReport) {
    if let Some(why) = failure(report) {
        panic!("{why}");
    }
}

/// Runs `seeds` with the example's configuration (parameters vary with the seed) and reports
/// every failing seed.
fn sweep(replicas: usize, seeds: std::ops::Range<u64>) {
    let failures: Vec<String> = seeds
        .filter_map(|seed| failure(&sim::run(SimConfig::varied(seed, replicas))))
        .collect();
    assert!(
        failures.is_empty(),
        "{} failing seeds:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The leader crashes too: the followers suspect it, change terms, and the new leader carries
/// on from the chosen log (seeds 1, 16, 87 once exposed a new leader proposing below its base).
#[test]
fn leader_crashes_force_term_changes() {
    let failures: Vec<String> = [1u64, 5, 16, 19, 23, 87, 200, 201]
        .into_iter()
        .filter_map(|seed| {
            let mut config = SimConfig::varied(seed, 4);
            config.crashes.crashable = Some((0..4).map(raft_bft::types::ReplicaId).collect());
            failure(&sim::run(config))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn n4_seeds_0_to_11() {
    sweep(4, 0..12);
}

#[test]
fn n4_seeds_12_to_23() {
    sweep(4, 12..24);
}

#[test]
fn n4_seeds_24_to_35() {
    sweep(4, 24..36);
}

#[test]
fn n7_seeds_0_to_3() {
    sweep(7, 0..4);
}

#[test]
fn faults_and_crashes_really_happen() {
    // The default configuration exercises what it claims to.
    let mut total = raft_bft::sim::Counters::default();
    for seed in 100..104 {
        let r = sim::run(SimConfig::new(seed, 4));
        assert_ok(&r);
        let c = &r.counters;
        total.add(c);
        assert_eq!(
            c.crashes, c.restarts,
            "every crashed replica is back after heal"
        );
    }
    assert!(total.messages_dropped > 0, "{total:?}");
    assert!(total.messages_duplicated > 0, "{total:?}");
    assert!(total.messages_partitioned > 0, "{total:?}");
    assert!(total.messages_corrupted > 0, "{total:?}");
    assert!(total.crashes > 0, "{total:?}");
    assert!(total.retransmissions > 0, "{total:?}");
    assert!(total.client_retries > 0, "{total:?}");
}

/// The example's configuration with disk faults; on odd seeds the leader may crash too.
fn disk_fault_config(seed: u64) -> SimConfig {
    let mut config = SimConfig::varied(seed, 4);
    config.disk_faults = true;
    if seed % 2 == 1 {
        config.crashes.crashable = Some((0..4).map(ReplicaId).collect());
    }
    config
}

/// With disk faults, crashes keep some batches that were never confirmed durable and tear the
/// record after them; restarted replicas find votes and entries they never got a confirmation
/// for, and the protocol stays safe and live. The counters show the faults really happened.
#[test]
fn disk_faults_keep_and_tear_unsynced_writes_safely() {
    let mut total = raft_bft::sim::Counters::default();
    let failures: Vec<String> = (0..8)
        .filter_map(|seed| {
            let r = sim::run(disk_fault_config(seed));
            total.add(&r.counters);
            failure(&r).map(|why| format!("{why}(with --disk-faults)"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} failing seeds:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(total.disk_kept_batches > 0, "{total:?}");
    assert!(total.torn_writes > 0, "{total:?}");
    assert!(total.lost_batches > 0, "{total:?}");
    assert!(total.slow_syncs > 0, "{total:?}");
}

#[test]
fn disk_faults_replay_from_the_seed() {
    // The first seed that keeps unsynced batches and tears records.
    let (seed, a) = (0..16)
        .map(|seed| (seed, sim::run(disk_fault_config(seed))))
        .find(|(_, r)| r.counters.disk_kept_batches > 0 && r.counters.torn_writes > 0)
        .expect("a seed below 16 keeps unsynced batches and tears a record");
    let b = sim::run(disk_fault_config(seed));
    assert_eq!(a, b);
    let mut plain = disk_fault_config(seed);
    plain.disk_faults = false;
    let plain = sim::run(plain);
    assert_eq!(
        plain.counters.disk_kept_batches + plain.counters.torn_writes,
        0
    );
    assert_eq!(plain.counters.slow_syncs, 0);
    assert_ne!(a.counters, plain.counters, "disk faults change the run");
}

#[test]
fn a_reliable_network_commits_everything_quickly() {
    let mut config = SimConfig::new(5, 4).without_faults();
    config.heal_at = Duration::ZERO;
    let r = sim::run(config);
    assert_ok(&r);
    assert_eq!(
        r.counters.messages_dropped + r.counters.messages_partitioned,
        0
    );
    assert_eq!(r.counters.crashes, 0);
    assert_eq!(r.counters.client_retries, 0, "{r}");
    assert_eq!(r.committed_txs, 8 * 25);
}

#[test]
fn same_config_same_report() {
    let config = SimConfig::varied(3, 4);
    let a = sim::run(config.clone());
    let b = sim::run(config);
    assert_eq!(a, b);
    assert!(a.counters.events > 1000);
    let c = sim::run(SimConfig::varied(4, 4));
    assert_ne!(a.counters, c.counters, "another seed, another run");
}

#[test]
fn invalid_configurations_are_reported() {
    let mut config = SimConfig::new(1, 4);
    config.faults.drop_prob = 1.5;
    let r = sim::run(config);
    assert!(!r.is_ok());
    assert!(r.violations[0].contains("drop_prob"), "{r}");
}

// ----- the checkers have teeth -----

const CID: Digest = Digest([7; 32]);

struct Fabricated {
    keys: Vec<KeyPair>,
    history: History,
    log: Vec<Entry>,
}

impl Fabricated {
    fn new(clients: usize) -> Self {
        Fabricated {
            keys: (0..clients)
                .map(|i| KeyPair::from_seed([i as u8 + 40; 32]))
                .collect(),
            history: History::new(),
            log: Vec::new(),
        }
    }

    /// Client `c` submits op `id` writing `key` at time `at`; returns the tx.
    fn submit(&mut self, c: usize, ts: u64, id: u64, key: u16, at: u64) -> SignedTx {
        let op = KvOp { id, key, value: id }.encode();
        let tx = SignedTx::sign(&CID, &self.keys[c], ts, op.clone());
        self.history
            .invoke(c, self.keys[c].public(), ts, op, Time(at));
        tx
    }

    /// Appends an entry holding `txs` to the log.
    fn commit(&mut self, txs: Vec<SignedTx>) {
        let index = Index(self.log.len() as u64 + 1);
        let prev_hash = self.log.last().map_or(CID, hash_of);
        self.log.push(Entry {
            term: Term(0),
            index,
            prev_hash,
            txs,
        });
    }

    fn accept(&mut self, position: usize, at: u64, index: u64, result: KvResult) {
        self.history.accept(
            position,
            Time(at),
            Outcome::Executed {
                index: Index(index),
                result: result.encode(),
            },
        );
    }

    fn linearizability(&self) -> Vec<String> {
        let replay = Replay::run(&self.log, &mut TestKv::new());
        check_linearizability(&self.history, &replay)
    }
}

fn hash_of(e: &Entry) -> Digest {
    let ids: Vec<Digest> = e.txs.iter().map(|t| t.id(&CID)).collect();
    entry_hash(&CID, e.term, e.index, &e.prev_hash, &ids)
}

/// Two clients write key 1: A (op 1) then B (op 2). B's result is A's value.
fn honest_history() -> Fabricated {
    let mut h = Fabricated::new(2);
    let a = h.submit(0, 10, 1, 1, 100);
    let b = h.submit(1, 20, 2, 1, 150);
    h.commit(vec![a]);
    h.commit(vec![b]);
    h.accept(0, 300, 1, KvResult::Absent);
    h.accept(1, 400, 2, KvResult::Previous(1));
    h
}

#[test]
fn an_honest_history_passes_every_checker() {
    let h = honest_history();
    assert_eq!(h.linearizability(), Vec::<String>::new());
    assert_eq!(
        check_validity(&CID, ReplicaId(0), &h.log, &h.history),
        Vec::<String>::new()
    );
    let hashes: Vec<Digest> = h.log.iter().map(hash_of).collect();
    let logs = vec![
        (ReplicaId(0), hashes.clone()),
        (ReplicaId(1), hashes[..1].to_vec()),
        (ReplicaId(2), Vec::new()),
    ];
    assert_eq!(check_agreement(&logs), Vec::<String>::new());
}

#[test]
fn agreement_catches_a_forked_log() {
    let h = honest_history();
    let hashes: Vec<Digest> = h.log.iter().map(hash_of).collect();
    let mut forked = hashes.clone();
    forked[1] = Digest([9; 32]);
    let logs = vec![
        (ReplicaId(0), hashes.clone()),
        (ReplicaId(1), forked[..2].to_vec()),
        (ReplicaId(2), hashes[..1].to_vec()),
    ];
    let v = check_agreement(&logs);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("index 2"), "{v:?}");
    // A shorter log that forks below the longest one's tip is caught too.
    let mut longer = hashes.clone();
    longer.push(Digest([7; 32]));
    let logs = vec![(ReplicaId(0), longer), (ReplicaId(1), forked[..2].to_vec())];
    let v = check_agreement(&logs);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("index 2"), "{v:?}");
}

#[test]
fn linearizability_catches_a_result_that_does_not_match() {
    let mut h = honest_history();
    // B claims it saw nothing, but A's write precedes it in the log.
    h.accept(1, 400, 2, KvResult::Absent);
    let v = h.linearizability();
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("linearizability"), "{v:?}");
}

#[test]
fn linearizability_catches_a_wrong_index() {
    let mut h = honest_history();
    h.accept(1, 400, 5, KvResult::Previous(1));
    assert_eq!(h.linearizability().len(), 1);
}

#[test]
fn linearizability_catches_a_real_time_inversion() {
    // A is accepted at 300 before B is invoked at 350, but the log orders B first.
    let mut h = Fabricated::new(2);
    let a = h.submit(0, 10, 1, 1, 100);
    let b = h.submit(1, 20, 2, 2, 350);
    h.commit(vec![b]);
    h.commit(vec![a]);
    h.accept(0, 300, 2, KvResult::Absent);
    h.accept(1, 400, 1, KvResult::Absent);
    let v = h.linearizability();
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("ordered after"), "{v:?}");
    // Concurrent ops (B invoked before A was accepted) may be ordered either way.
    h.history.ops[1].invoked = Time(250);
    assert_eq!(h.linearizability(), Vec::<String>::new());
}

#[test]
fn linearizability_catches_an_accepted_op_missing_from_the_log() {
    let mut h = honest_history();
    h.log.pop();
    assert_eq!(h.linearizability().len(), 1);
}

#[test]
fn linearizability_catches_an_accepted_refusal_of_an_executed_tx() {
    let mut h = honest_history();
    h.history.accept(
        0,
        Time(300),
        Outcome::Rejected(Rejection::Stale { last_executed: 0 }),
    );
    assert_eq!(h.linearizability().len(), 1);
}

#[test]
fn a_tx_ordered_twice_executes_once_in_the_reference() {
    let mut h = honest_history();
    let again = h.log[0].txs[0].clone();
    h.commit(vec![again]);
    let replay = Replay::run(&h.log, &mut TestKv::new());
    assert_eq!(replay.executed.len(), 2);
    assert_eq!(replay.skipped, 1);
    assert_eq!(h.linearizability(), Vec::<String>::new());
}

#[test]
fn validity_catches_forged_unsubmitted_and_altered_txs() {
    let mut h = honest_history();
    // A tx no client submitted.
    let stranger = KeyPair::from_seed([99; 32]);
    let unsubmitted = SignedTx::sign(
        &CID,
        &stranger,
        1,
        KvOp {
            id: 9,
            key: 0,
            value: 9,
        }
        .encode(),
    );
    // A submitted tx whose signature is broken.
    let mut forged = h.log[0].txs[0].clone();
    forged.sig.0[5] ^= 1;
    // A submitted (client, ts) with another op, re-signed by the client.
    let altered = SignedTx::sign(
        &CID,
        &h.keys[1],
        20,
        KvOp {
            id: 2,
            key: 3,
            value: 2,
        }
        .encode(),
    );
    h.commit(vec![unsubmitted, forged, altered]);
    let v = check_validity(&CID, ReplicaId(3), &h.log, &h.history);
    assert_eq!(v.len(), 3, "{v:?}");
    assert!(v.iter().any(|s| s.contains("no client submitted")), "{v:?}");
    assert!(v.iter().any(|s| s.contains("does not verify")), "{v:?}");
    assert!(v.iter().any(|s| s.contains("did not submit")), "{v:?}");
    // A broken hash chain.
    let mut h = honest_history();
    h.log[1].prev_hash = Digest::ZERO;
    let v = check_validity(&CID, ReplicaId(3), &h.log, &h.history);
    assert!(v.iter().any(|s| s.contains("does not chain")), "{v:?}");
}

#[test]
fn testkv_reports_an_op_applied_twice() {
    let client: ClientId = KeyPair::from_seed([1; 32]).public();
    let op = KvOp {
        id: 5,
        key: 1,
        value: 5,
    }
    .encode();
    let mut kv = TestKv::new();
    kv.apply(&client, &op);
    assert!(KvWorkload::default().app_violations(&kv).is_empty());
    kv.apply(&client, &op);
    assert_eq!(KvWorkload::default().app_violations(&kv).len(), 1);
}

/// A state machine whose digest depends on which instance computes it: replicas disagree.
struct Skewed {
    kv: TestKv,
    instance: u64,
}

impl StateMachine for Skewed {
    fn apply(&mut self, client: &ClientId, op: &[u8]) -> Vec<u8> {
        self.kv.apply(client, op)
    }
    fn digest(&self) -> Digest {
        let mut d = self.kv.digest();
        if self.kv.applied() > 3 {
            d.0[0] ^= self.instance as u8;
        }
        d
    }
    fn snapshot(&self) -> Vec<u8> {
        self.kv.snapshot()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.kv.restore(snapshot)
    }
}

struct SkewedWorkload {
    instances: Cell<u64>,
}

impl Workload for SkewedWorkload {
    type App = Skewed;
    fn new_app(&self) -> Skewed {
        let instance = self.instances.get() + 1;
        self.instances.set(instance);
        Skewed {
            kv: TestKv::new(),
            instance,
        }
    }
    fn next_op(&mut self, rng: &mut SimRng, client: usize, op_id: u64) -> Vec<u8> {
        KvWorkload::default().next_op(rng, client, op_id)
    }
}

#[test]
fn the_simulator_catches_nondeterministic_state() {
    let mut config = SimConfig::new(11, 4).without_faults();
    config.clients = 2;
    config.txs_per_client = 4;
    config.heal_at = Duration::ZERO;
    let r = sim::run_with(
        config,
        SkewedWorkload {
            instances: Cell::new(0),
        },
    );
    assert!(r.violation_count > 0, "{r}");
    assert!(
        r.violations.iter().any(|v| v.contains("state digest")),
        "{r}"
    );
}

/// A state machine that executes every op twice on one replica.
struct Stutter {
    kv: TestKv,
    stutters: bool,
}

impl StateMachine for Stutter {
    fn apply(&mut self, client: &ClientId, op: &[u8]) -> Vec<u8> {
        if self.stutters {
            self.kv.apply(client, op);
        }
        self.kv.apply(client, op)
    }
    fn digest(&self) -> Digest {
        self.kv.digest()
    }
    fn snapshot(&self) -> Vec<u8> {
        self.kv.snapshot()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.kv.restore(snapshot)
    }
}

struct StutterWorkload {
    instances: Cell<u64>,
}

impl Workload for StutterWorkload {
    type App = Stutter;
    fn new_app(&self) -> Stutter {
        let i = self.instances.get();
        self.instances.set(i + 1);
        Stutter {
            kv: TestKv::new(),
            stutters: i == 2,
        }
    }
    fn next_op(&mut self, rng: &mut SimRng, client: usize, op_id: u64) -> Vec<u8> {
        KvWorkload::default().next_op(rng, client, op_id)
    }
    fn app_violations(&self, app: &Stutter) -> Vec<String> {
        app.kv.violations().to_vec()
    }
}

#[test]
fn the_simulator_catches_an_op_executed_twice() {
    let mut config = SimConfig::new(12, 4).without_faults();
    config.clients = 2;
    config.txs_per_client = 3;
    config.heal_at = Duration::ZERO;
    let r = sim::run_with(
        config,
        StutterWorkload {
            instances: Cell::new(0),
        },
    );
    assert!(
        r.violations.iter().any(|v| v.contains("applied twice")),
        "{r}"
    );
}

/// A state machine whose results depend on which instance computes them: clients never see
/// `f + 1` matching replies.
struct Split {
    kv: TestKv,
    instance: u8,
}

impl StateMachine for Split {
    fn apply(&mut self, client: &ClientId, op: &[u8]) -> Vec<u8> {
        let mut r = self.kv.apply(client, op);
        r.push(self.instance);
        r
    }
    fn digest(&self) -> Digest {
        self.kv.digest()
    }
    fn snapshot(&self) -> Vec<u8> {
        self.kv.snapshot()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.kv.restore(snapshot)
    }
}

struct SplitWorkload {
    instances: Cell<u8>,
}

impl Workload for SplitWorkload {
    type App = Split;
    fn new_app(&self) -> Split {
        let instance = self.instances.get().wrapping_add(1);
        self.instances.set(instance);
        Split {
            kv: TestKv::new(),
            instance,
        }
    }
    fn next_op(&mut self, rng: &mut SimRng, client: usize, op_id: u64) -> Vec<u8> {
        KvWorkload::default().next_op(rng, client, op_id)
    }
}

#[test]
fn the_simulator_reports_a_liveness_failure() {
    let mut config = SimConfig::new(13, 4).without_faults();
    config.clients = 1;
    config.txs_per_client = 2;
    config.heal_at = Duration::ZERO;
    config.liveness_bound = Duration::from_secs(2);
    let r = sim::run_with(
        config,
        SplitWorkload {
            instances: Cell::new(0),
        },
    );
    let why = r.liveness_failure.as_deref().unwrap_or_default();
    assert!(why.contains("was not accepted"), "{r}");
    assert_eq!(r.accepted_txs, 0, "{r}");
}

/// Replicas whose disks are wiped while they are down rebuild from their peers: they install a
/// peer's checkpoint, take no part in voting until they have passed everything they may have
/// voted on (the checkers would see a second vote), and vote again by the end of the run (an
/// idle leader fills the log for them). Every replica's log stays within its bound.
#[test]
fn wiped_replicas_rebuild_and_vote_again() {
    let mut total = raft_bft::sim::Counters::default();
    for seed in 0..6 {
        let mut config = SimConfig::varied(seed, 4);
        config.wipe_prob = 0.5;
        let bound = config.params.max_log_entries();
        let r = sim::run(config);
        assert_ok(&r);
        assert!(r.counters.max_log_entries <= bound, "{r}");
        assert_eq!(r.counters.rebuilding_at_end, 0, "{r}");
        total.add(&r.counters);
    }
    assert!(total.wipes > 0 && total.state_transfers > 0, "{total:?}");
}
