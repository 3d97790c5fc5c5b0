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

/// The adversaries do what they claim, measured against the same seeds without them: a silent
/// leader is replaced, a wrong NewTerm is refused, forgeries and garbage reach the decoder and
/// the verifier and are refused there, replayed old votes reach the term logic, double votes
/// reach the tallies, and the bait for a forgotten vote meets the durable vote record.
#[test]
fn adversaries_have_an_effect() {
    let mut effect = std::collections::BTreeMap::<&str, (u64, u64)>::new();
    let mut note = |name, with: u64, without: u64| {
        let e = effect.entry(name).or_default();
        e.0 += with;
        e.1 += without;
    };
    let mut reports = Vec::new();
    for seed in 0..3 {
        let mute = run(Strategy::MuteLeader, seed, 4, 1);
        assert!(
            mute.max_term >= 1,
            "the mute leader was never replaced\n{mute}"
        );
        let s = Strategy::WrongNewTerm;
        let (r, b) = (run(s, seed, 4, 1), baseline(s, seed));
        note(
            "new-term refused",
            count(&r.counters.verify_errors, "new-term:"),
            count(&b.counters.verify_errors, "new-term:"),
        );
        reports.push(r);
        let s = Strategy::ForgedCertificates;
        let (r, b) = (run(s, seed, 4, 1), baseline(s, seed));
        note(
            "bad certificates",
            count(&r.counters.verify_errors, "bad-certificate"),
            count(&b.counters.verify_errors, "bad-certificate"),
        );
        reports.push(r);
        let s = Strategy::Garbage;
        let (r, b) = (run(s, seed, 4, 1), baseline(s, seed));
        note(
            "oversized frames",
            count(&r.counters.decode_errors, "too-large"),
            count(&b.counters.decode_errors, "too-large"),
        );
        reports.push(r);
        let s = Strategy::Replay;
        let (r, b) = (run(s, seed, 4, 1), baseline(s, seed));
        note(
            "replayed old votes",
            count(&r.counters.replica_refusals, "vote for another term")
                + count(&r.counters.replica_refusals, "does not lead"),
            count(&b.counters.replica_refusals, "vote for another term")
                + count(&b.counters.replica_refusals, "does not lead"),
        );
        reports.push(r);
        let s = Strategy::DoubleVoting;
        let (r, b) = (run(s, seed, 4, 1), baseline(s, seed));
        note(
            "double commit votes",
            count(&r.counters.replica_refusals, "two commit votes"),
            count(&b.counters.replica_refusals, "two commit votes"),
        );
        reports.push(r);
        reports.push(mute);
    }
    // The bait fires in fewer seeds.
    for seed in 0..8 {
        let s = Strategy::RevoteBait;
        let (r, b) = (run(s, seed, 4, 1), baseline(s, seed));
        note(
            "bait refused by the vote record",
            count(&r.counters.replica_refusals, "would vote twice"),
            count(&b.counters.replica_refusals, "would vote twice"),
        );
        reports.push(r);
    }
    for (name, (with, without)) in &effect {
        assert!(
            *with > 2 * *without + 2,
            "{name}: {with} with the adversaries, {without} without them"
        );
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
