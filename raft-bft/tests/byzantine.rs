//! Byzantine replicas in the simulator: every strategy of the catalogue is survived, every
//! mutant of the protocol is caught (and the same attack without the mutant is survived), and
//! `f + 1` twins fork the log, which the checkers see.

use raft_bft::mutant::Mutant;
use raft_bft::sim::{self, Counters, SimConfig, SimReport, Strategy};

/// Why a run with a Byzantine replica failed, or `None`.
fn failure(report: &SimReport) -> Option<String> {
    if report.is_ok() && report.accepted_txs == report.submitted_txs && report.committed_txs > 0 {
        return None;
    }
    let strategy = report.byzantine.map_or("none", |s| s.name());
    Some(format!(
        "seed {} with {strategy} failed; replay with `cargo run --release -p raft-bft --example \
         simulate -- --seed {} --replicas {} --byzantine {strategy}`\n{report}",
        report.seed, report.seed, report.replicas
    ))
}

fn run(strategy: Strategy, seed: u64, replicas: usize, faulty: usize) -> SimReport {
    sim::run(SimConfig::varied(seed, replicas).with_byzantine(strategy, faulty))
}

fn assert_all_ok(reports: impl IntoIterator<Item = SimReport>) {
    let failures: Vec<String> = reports.into_iter().filter_map(|r| failure(&r)).collect();
    assert!(
        failures.is_empty(),
        "{} failing runs:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_strategy_is_survived_with_one_byzantine_replica_of_four() {
    assert_all_ok(Strategy::ALL.into_iter().map(|s| run(s, 1000, 4, 1)));
}

/// n = 7 tolerates two Byzantine replicas acting together (or one plus a crash).
#[test]
fn two_byzantine_replicas_of_seven() {
    assert_all_ok(
        [
            Strategy::EquivocatingLeader,
            Strategy::Twins,
            Strategy::DoubleVoting,
            Strategy::WithholdPc,
        ]
        .into_iter()
        .map(|s| run(s, 7, 7, 2))
        .chain([run(Strategy::MuteLeader, 8, 7, 1)]),
    );
}

/// The same run without the adversary (same crash budget and scripted isolations).
fn baseline(strategy: Strategy, seed: u64) -> SimReport {
    let mut config = SimConfig::varied(seed, 4).with_byzantine(strategy, 1);
    config.byzantine = None;
    sim::run(config)
}

fn count(map: &std::collections::BTreeMap<String, u64>, pattern: &str) -> u64 {
    map.iter()
        .filter(|(k, _)| k.contains(pattern))
        .map(|(_, v)| v)
        .sum()
}

/// What an adversary should cause, and how to count it in a report.
struct Effect {
    name: &'static str,
    strategy: Strategy,
    seeds: u64,
    count: fn(&Counters) -> u64,
}

const EFFECTS: [Effect; 6] = [
    Effect {
        name: "new-term refused",
        strategy: Strategy::WrongNewTerm,
        seeds: 3,
        count: |c| count(&c.verify_errors, "new-term:"),
    },
    Effect {
        name: "bad certificates",
        strategy: Strategy::ForgedCertificates,
        seeds: 3,
        count: |c| count(&c.verify_errors, "bad-certificate"),
    },
    Effect {
        name: "oversized frames",
        strategy: Strategy::Garbage,
        seeds: 3,
        count: |c| count(&c.decode_errors, "too-large"),
    },
    Effect {
        name: "replayed old votes",
        strategy: Strategy::Replay,
        seeds: 3,
        count: |c| {
            count(&c.replica_refusals, "vote for another term")
                + count(&c.replica_refusals, "does not lead")
        },
    },
    Effect {
        name: "double commit votes",
        strategy: Strategy::DoubleVoting,
        seeds: 3,
        count: |c| count(&c.replica_refusals, "two commit votes"),
    },
    // The bait fires in fewer seeds.
    Effect {
        name: "bait refused by the vote record",
        strategy: Strategy::RevoteBait,
        seeds: 8,
        count: |c| count(&c.replica_refusals, "would vote twice"),
    },
];

/// Runs `effect`'s seeds with and without the adversary (`run(strategy, seed, adversary)`) and
/// asserts that the adversary causes its effect well above what the same seeds show without it.
/// Returns the runs with the adversary (for `assert_all_ok`).
fn assert_effect(
    effect: &Effect,
    run: impl Fn(Strategy, u64, bool) -> SimReport,
) -> Vec<SimReport> {
    let (mut with, mut without, mut reports) = (0, 0, Vec::new());
    for seed in 0..effect.seeds {
        let r = run(effect.strategy, seed, true);
        with += (effect.count)(&r.counters);
        without += (effect.count)(&run(effect.strategy, seed, false).counters);
        reports.push(r);
    }
    // A failing run first: it explains a missing effect better than the count does.
    assert_all_ok(reports.iter().cloned());
    assert!(
        with > 2 * without + 2,
        "{}: {with} with the adversary, {without} without it",
        effect.name
    );
    reports
}

/// The adversaries do what they claim, measured against the same seeds without them: a silent
/// leader is replaced, a wrong NewTerm is refused, forgeries and garbage reach the decoder and
/// the verifier and are refused there, replayed old votes reach the term logic, double votes
/// reach the tallies, and the bait for a forgotten vote meets the durable vote record.
#[test]
fn adversaries_have_an_effect() {
    let mut reports = Vec::new();
    for seed in 0..3 {
        let mute = run(Strategy::MuteLeader, seed, 4, 1);
        assert!(
            mute.max_term >= 1,
            "the mute leader was never replaced\n{mute}"
        );
        reports.push(mute);
    }
    for effect in &EFFECTS {
        reports.extend(assert_effect(effect, |strategy, seed, adversary| {
            if adversary {
                run(strategy, seed, 4, 1)
            } else {
                baseline(strategy, seed)
            }
        }));
    }
    assert_all_ok(reports);
}

/// Replicas catching up through a Byzantine peer: a damaged snapshot fails verification, entries
/// that are not the certified ones are refused by the verifier, and a stale checkpoint is
/// refused as stale; each time the replica turns to another peer, and every run passes. Seven
/// replicas, so that one correct replica at a time can crash and lose its disk (the catching up
/// these adversaries prey on).
#[test]
fn replicas_catching_up_refuse_bad_state_from_a_byzantine_peer() {
    let config = |strategy, seed, adversary: bool| {
        let mut c = SimConfig::varied(seed, 7).with_byzantine(strategy, 1);
        c.wipe_prob = 0.5;
        if !adversary {
            c.byzantine = None;
        }
        c
    };
    let effects = [
        Effect {
            name: "damaged snapshots refused",
            strategy: Strategy::BadSnapshot,
            seeds: 6,
            count: |c| count(&c.replica_refusals, "checkpoint failed verification"),
        },
        Effect {
            name: "bad entries refused",
            strategy: Strategy::BadEntries,
            seeds: 6,
            count: |c| count(&c.verify_errors, "entries:"),
        },
        Effect {
            name: "stale checkpoints refused",
            strategy: Strategy::StaleCheckpoint,
            seeds: 6,
            count: |c| count(&c.replica_refusals, "stale checkpoint"),
        },
    ];
    let mut reports = Vec::new();
    for effect in &effects {
        reports.extend(assert_effect(effect, |strategy, seed, adversary| {
            sim::run(config(strategy, seed, adversary))
        }));
    }
    assert_all_ok(reports);
}

#[test]
fn byzantine_runs_are_deterministic() {
    for s in [
        Strategy::Twins,
        Strategy::Garbage,
        Strategy::EquivocatingLeader,
    ] {
        assert_eq!(run(s, 3, 4, 1), run(s, 3, 4, 1), "{s}");
    }
}

/// The first seed (below `bound`) at which the mutant is caught, with its report.
fn first_catch(mutant: Mutant, bound: u64) -> Option<(u64, SimReport)> {
    (0..bound).find_map(|seed| {
        let report = sim::run(SimConfig::varied(seed, 4).with_mutant(mutant));
        (report.violation_count > 0).then_some((seed, report))
    })
}

/// Each mutant gives safety violations within a bounded number of seeds; the same attack on the
/// correct protocol (same seed, same adversary, same crashes) gives none.
fn mutant_is_caught(mutant: Mutant, bound: u64, expect: &str) {
    let Some((seed, report)) = first_catch(mutant, bound) else {
        panic!("mutant {mutant} was not caught in {bound} seeds");
    };
    assert!(
        report.violations.iter().any(|v| v.contains(expect)),
        "mutant {mutant} at seed {seed}: expected a violation mentioning {expect:?}\n{report}"
    );
    let mut control = SimConfig::varied(seed, 4).with_mutant(mutant);
    control.mutant = None;
    let report = sim::run(control);
    assert!(
        failure(&report).is_none(),
        "without mutant {mutant}, seed {seed} must pass\n{report}"
    );
}

#[test]
fn mutant_quorum_2f_is_caught() {
    mutant_is_caught(Mutant::QuorumOneShort, 10, "agreement");
}

#[test]
fn mutant_skip_pc_check_is_caught() {
    mutant_is_caught(Mutant::SkipPcCheck, 10, "agreement");
}

#[test]
fn mutant_forget_votes_is_caught() {
    mutant_is_caught(Mutant::ForgetVotes, 40, "voted twice");
}

/// A replica whose state machine is not deterministic is caught by the digest monitor, and the
/// replica itself detects the divergence from the execution certificates, stops executing, and
/// recovers by state transfer; the cluster stays live.
#[test]
fn mutant_nondeterministic_is_detected_as_divergence() {
    mutant_is_caught(Mutant::Nondeterministic, 10, "diverged");
    let (seed, report) = first_catch(Mutant::Nondeterministic, 10).expect("caught above");
    let c = &report.counters;
    assert!(
        c.divergences > 0 && c.state_transfers > 0,
        "seed {seed}: the replica must detect the divergence and recover by state transfer\n{report}"
    );
    assert!(report.liveness_failure.is_none(), "{report}");
}

/// Beyond the fault model: `f + 1` twins (two keys, each run by two instances) hold a quorum on
/// each side of the split, and the log forks. The checkers must see it.
#[test]
fn f_plus_one_twins_fork_and_the_fork_is_detected() {
    let caught = (0..10u64).find(|&seed| {
        let report = run(Strategy::Twins, seed, 4, 2);
        report.violations.iter().any(|v| v.contains("agreement"))
    });
    assert!(
        caught.is_some(),
        "f + 1 twins never forked the log in 10 seeds"
    );
}
