//! Byzantine replicas in the simulator: every strategy of the catalogue is survived, every
//! mutant of the protocol is caught (and the same attack without the mutant is survived), and
//! `f + 1` twins fork the log, which the checkers see.

use raft_bft::mutant::Mutant;
use raft_bft::sim::{self, SimConfig, SimReport, Strategy};

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

/// The adversaries do what they claim: a silent leader is replaced, a wrong NewTerm is refused
/// (the term after it starts), forgeries and garbage reach the verifier and are refused there.
#[test]
fn adversaries_have_an_effect() {
    for seed in 0..3 {
        let mute = run(Strategy::MuteLeader, seed, 4, 1);
        assert!(
            mute.max_term >= 1,
            "the mute leader was never replaced\n{mute}"
        );
        let wrong = run(Strategy::WrongNewTerm, seed, 4, 1);
        assert!(
            wrong.max_term >= 2,
            "the Byzantine leader of term 1 was followed\n{wrong}"
        );
        let forged = run(Strategy::ForgedCertificates, seed, 4, 1);
        assert!(
            forged
                .counters
                .verify_errors
                .keys()
                .any(|k| k.ends_with("bad-certificate")),
            "no forged certificate was refused\n{forged}"
        );
        let garbage = run(Strategy::Garbage, seed, 4, 1);
        assert!(
            garbage
                .counters
                .decode_errors
                .keys()
                .any(|k| k.contains("too-large"))
                && garbage
                    .counters
                    .decode_errors
                    .keys()
                    .any(|k| k.contains("malformed")),
            "garbage did not reach the decoder\n{garbage}"
        );
        assert_all_ok([mute, wrong, forged, garbage]);
    }
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
