//! Runs the deterministic simulator over many seeds, in parallel on all cores.
//!
//! ```text
//! cargo run --release -p raft-bft --example simulate -- --seeds 500
//! cargo run --release -p raft-bft --example simulate -- --seed 42 --replicas 7
//! cargo run --release -p raft-bft --example simulate -- --seeds 500 --byzantine all
//! cargo run --release -p raft-bft --example simulate -- --seeds 200 --mutant quorum-2f
//! cargo run --release -p raft-bft --example simulate -- --seeds 200 --disk-faults
//! ```
//!
//! Each seed runs `n` replicas under network faults (drops, duplicates, corruption, reordering,
//! partitions) and crash/restart of up to `f` followers, then checks safety and liveness. The
//! protocol parameters vary with the seed (see `SimConfig::varied`). Failing seeds are printed
//! with their violations and the command that replays them. The last line sums everything up;
//! the exit code is non-zero if any seed failed.
//!
//! `--byzantine NAME` makes replicas Byzantine (see `raft_bft::sim::Strategy`); `all` deals the
//! strategies out over the seeds. Each seed also runs once without the adversary, for the
//! throughput comparison in the table. `--mutant NAME` breaks the protocol on purpose (with the
//! Byzantine behaviour that exploits it): the checkers must then report violations.
//!
//! `--disk-faults` gives every disk the faults of a real write-ahead log (see
//! `SimConfig::disk_faults`): a crash keeps a random prefix of the batches not yet confirmed
//! durable, may tear the next record mid-write (the restarted replica's recovery cuts it off by
//! length and checksum), and now and then a sync is 10 to 50 times slower than usual. A line
//! before the last one counts the kept batches, torn writes and slow syncs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Parser;
use raft_bft::mutant::Mutant;
use raft_bft::sim::{self, SimConfig, SimReport, Strategy};
use raft_bft::types::ReplicaId;

#[derive(Parser, Debug)]
#[command(about = "Deterministic simulation of a raft-bft cluster under faults")]
struct Args {
    /// Number of seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// Run only this seed (and print its full report).
    #[arg(long)]
    seed: Option<u64>,
    /// First seed of the range.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Number of replicas.
    #[arg(long, default_value_t = 4)]
    replicas: usize,
    /// Concurrent clients per run (default 8).
    #[arg(long)]
    clients: Option<usize>,
    /// Txs per client (default 25).
    #[arg(long)]
    txs: Option<u64>,
    /// Probability that a message is lost during the fault phase (default 0.05).
    #[arg(long)]
    drop_prob: Option<f64>,
    /// At most this many replicas down at once (default f). Above f, progress stops while they
    /// are down, but safety must hold.
    #[arg(long)]
    max_down: Option<usize>,
    /// Replicas that may crash, comma-separated (default: all but replica 0, the only leader
    /// until term changes exist).
    #[arg(long, value_delimiter = ',')]
    crashable: Option<Vec<u32>>,
    /// End of the fault phase in milliseconds of virtual time (default 2000).
    #[arg(long)]
    heal_ms: Option<u64>,
    /// Print every event of the run to standard error (with --seed).
    #[arg(long)]
    trace: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Byzantine behaviour: a strategy name, or `all` to deal every strategy out over the
    /// seeds.
    #[arg(long, value_parser = parse_byzantine)]
    byzantine: Option<Byzantine>,
    /// How many replicas are Byzantine (default 1; above f is beyond the fault model).
    #[arg(long, default_value_t = 1)]
    faulty: usize,
    /// Break the protocol on purpose: quorum-2f, skip-pc-check or forget-votes.
    #[arg(long, value_parser = parse_mutant)]
    mutant: Option<Mutant>,
    /// Disk faults: a crash keeps a random prefix of the unsynced batches and may tear the next
    /// record (recovery cuts it off); some syncs are 10 to 50 times slower.
    #[arg(long)]
    disk_faults: bool,
    /// More faults, comma-separated: `wipe` wipes the disk of a crashed replica before it
    /// restarts (one restart in four), and the replica rebuilds from its peers.
    #[arg(long, value_delimiter = ',', value_parser = ["wipe"])]
    faults: Vec<String>,
    /// With --byzantine: run the same configuration without the adversary (the comparison runs
    /// of the table; for replaying one that failed).
    #[arg(long)]
    without_adversary: bool,
}

#[derive(Clone, Copy, Debug)]
enum Byzantine {
    All,
    One(Strategy),
}

fn parse_byzantine(s: &str) -> Result<Byzantine, String> {
    if s == "all" {
        return Ok(Byzantine::All);
    }
    Strategy::from_name(s).map(Byzantine::One).ok_or_else(|| {
        let names: Vec<&str> = Strategy::ALL.iter().map(|s| s.name()).collect();
        format!("unknown strategy {s:?}; one of: all, {}", names.join(", "))
    })
}

fn parse_mutant(s: &str) -> Result<Mutant, String> {
    Mutant::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = Mutant::ALL.iter().map(|m| m.name()).collect();
        format!("unknown mutant {s:?}; one of: {}", names.join(", "))
    })
}

/// The adversary of one seed's run.
fn strategy_of(args: &Args, seed: u64) -> Option<Strategy> {
    match args.byzantine? {
        Byzantine::One(s) => Some(s),
        Byzantine::All => Some(Strategy::ALL[(seed % Strategy::ALL.len() as u64) as usize]),
    }
}

/// One seed's run; `baseline` leaves the adversary (not the mutant) out.
fn config(args: &Args, seed: u64, baseline: bool) -> SimConfig {
    let mut c = SimConfig::varied(seed, args.replicas);
    if let Some(m) = args.mutant {
        c = c.with_mutant(m);
    }
    if let Some(s) = strategy_of(args, seed) {
        c = c.with_byzantine(s, args.faulty);
        if baseline {
            // The same run (crash budget, scripted isolations) with correct replicas only.
            c.byzantine = None;
        }
    }
    if let Some(clients) = args.clients {
        c.clients = clients;
    }
    if let Some(txs) = args.txs {
        c.txs_per_client = txs;
    }
    if let Some(p) = args.drop_prob {
        c.faults.drop_prob = p;
    }
    if let Some(k) = args.max_down {
        c.crashes.max_down = Some(k);
    }
    if let Some(ids) = &args.crashable {
        c.crashes.crashable = Some(ids.iter().map(|&i| ReplicaId(i)).collect());
    }
    if let Some(ms) = args.heal_ms {
        c.heal_at = Duration::from_millis(ms);
    }
    c.disk_faults = args.disk_faults;
    if args.faults.iter().any(|f| f == "wipe") {
        // Only crashed replicas are wiped, within the crash budget: a wiped replica counts as
        // faulty until it has rebuilt (with `f` Byzantine replicas there is no budget left).
        c.wipe_prob = 0.25;
    }
    c.trace = args.trace && args.seed.is_some();
    c
}

fn replay_command(args: &Args, seed: u64, baseline: bool) -> String {
    let mut cmd = format!(
        "cargo run --release -p raft-bft --example simulate -- --seed {seed} --replicas {}",
        args.replicas
    );
    if let Some(c) = args.clients {
        cmd.push_str(&format!(" --clients {c}"));
    }
    if let Some(t) = args.txs {
        cmd.push_str(&format!(" --txs {t}"));
    }
    if let Some(p) = args.drop_prob {
        cmd.push_str(&format!(" --drop-prob {p}"));
    }
    if let Some(k) = args.max_down {
        cmd.push_str(&format!(" --max-down {k}"));
    }
    if let Some(ids) = &args.crashable {
        let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
        cmd.push_str(&format!(" --crashable {}", ids.join(",")));
    }
    if let Some(ms) = args.heal_ms {
        cmd.push_str(&format!(" --heal-ms {ms}"));
    }
    if args.disk_faults {
        cmd.push_str(" --disk-faults");
    }
    if !args.faults.is_empty() {
        cmd.push_str(&format!(" --faults {}", args.faults.join(",")));
    }
    if let Some(s) = strategy_of(args, seed) {
        cmd.push_str(&format!(" --byzantine {s}"));
        if args.faulty != 1 {
            cmd.push_str(&format!(" --faulty {}", args.faulty));
        }
    }
    if let Some(m) = args.mutant {
        cmd.push_str(&format!(" --mutant {m}"));
    }
    if baseline || args.without_adversary {
        cmd.push_str(" --without-adversary");
    }
    cmd
}

/// One finished run.
struct Run {
    report: SimReport,
    secs: f64,
    /// The same seed without the adversary (for the throughput comparison).
    baseline: bool,
}

/// Accepted txs per second of virtual time, up to the last acceptance.
fn goodput(r: &SimReport) -> f64 {
    let secs = r.last_acceptance.0 as f64 / 1e6;
    if secs > 0.0 {
        r.accepted_txs as f64 / secs
    } else {
        0.0
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One row per adversary: how the runs went, how many terms recovery took, and the goodput as
/// a share of the same seeds without the adversary.
fn print_table(runs: &[Run]) {
    let baseline: std::collections::BTreeMap<u64, f64> = runs
        .iter()
        .filter(|r| r.baseline)
        .map(|r| (r.report.seed, goodput(&r.report)))
        .collect();
    println!(
        "{:<22} {:>6} {:>8} {:>6} {:>11} {:>11} {:>12} {:>7}",
        "adversary",
        "seeds",
        "failed",
        "commits",
        "terms(med)",
        "terms(max)",
        "throughput",
        "share"
    );
    for strategy in Strategy::ALL {
        let rows: Vec<&SimReport> = runs
            .iter()
            .filter(|r| !r.baseline && r.report.byzantine == Some(strategy))
            .map(|r| &r.report)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let failed = rows.iter().filter(|r| !r.is_ok()).count();
        let commits: u64 = rows.iter().map(|r| r.committed_txs).sum();
        let terms: Vec<f64> = rows.iter().map(|r| r.max_term as f64).collect();
        let worst = rows.iter().map(|r| r.max_term).max().unwrap_or(0);
        let shares: Vec<f64> = rows
            .iter()
            .filter_map(|r| {
                let base = baseline.get(&r.seed)?;
                (*base > 0.0).then(|| goodput(r) / base)
            })
            .collect();
        let tput = median(rows.iter().map(|r| goodput(r)).collect());
        println!(
            "{:<22} {:>6} {:>8} {:>6} {:>11} {:>11} {:>10.1}/s {:>6.0}%",
            strategy.name(),
            rows.len(),
            failed,
            commits,
            median(terms),
            worst,
            tput,
            100.0 * median(shares)
        );
    }
    let base: Vec<f64> = baseline.values().copied().collect();
    if !base.is_empty() {
        println!(
            "(terms: the highest term a correct replica reached; throughput: median accepted \
             tx/s of virtual time; share: median per-seed ratio to the same seed without the \
             adversary, whose median is {:.1}/s)",
            median(base)
        );
    }
}

fn main() {
    let args = Args::parse();
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.first_seed..args.first_seed.saturating_add(args.seeds)).collect(),
    };
    if args.faulty > (args.replicas.saturating_sub(1)) / 3 && args.byzantine.is_some() {
        eprintln!(
            "note: {} Byzantine replicas of {} is beyond the fault model (f = {}): safety may break",
            args.faulty,
            args.replicas,
            (args.replicas.saturating_sub(1)) / 3
        );
    }
    // With an adversary, each seed also runs without it, for the throughput comparison.
    let with_baseline = args.byzantine.is_some() && args.seed.is_none() && !args.without_adversary;
    let jobs: Vec<(u64, bool)> = seeds
        .iter()
        .flat_map(|&s| std::iter::once((s, false)).chain(with_baseline.then_some((s, true))))
        .collect();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, jobs.len().max(1));
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let results: Mutex<Vec<Run>> = Mutex::new(Vec::with_capacity(jobs.len()));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&(seed, baseline)) = jobs.get(i) else {
                    break;
                };
                let t = Instant::now();
                let report = sim::run(config(&args, seed, baseline || args.without_adversary));
                let secs = t.elapsed().as_secs_f64();
                if !report.is_ok() {
                    let what = if baseline {
                        " (without the adversary)"
                    } else {
                        ""
                    };
                    eprintln!("seed {seed}{what} FAILED ({secs:.2} s)");
                }
                results.lock().unwrap_or_else(|e| e.into_inner()).push(Run {
                    report,
                    secs,
                    baseline,
                });
            });
        }
    });
    let mut runs = results.into_inner().unwrap_or_else(|e| e.into_inner());
    runs.sort_by_key(|r| (r.report.seed, r.baseline));

    let mut violations = 0u64;
    let mut liveness = 0u64;
    let mut lagging = 0u64;
    let mut committed = 0u64;
    let mut slowest = (0.0f64, 0u64);
    let mut disk = sim::Counters::default();
    // The run whose log came closest to its bound (`2 * checkpoint_interval + pipeline_depth`,
    // which varies with the seed's parameters): its peak and its bound.
    let (mut max_log, mut log_bound) = (0u64, 1u64);
    for run in &runs {
        let r = &run.report;
        // Runs without the adversary count too: a failure there is a failure.
        violations += r.violation_count;
        liveness += u64::from(r.liveness_failure.is_some());
        if run.baseline {
            continue;
        }
        disk.add(&r.counters);
        let bound = config(&args, r.seed, false).params.max_log_entries();
        if u128::from(r.counters.max_log_entries) * u128::from(log_bound)
            > u128::from(max_log) * u128::from(bound)
        {
            (max_log, log_bound) = (r.counters.max_log_entries, bound);
        }
        committed += r.committed_txs;
        lagging += u64::from(r.is_ok() && r.lagging_replicas > 0);
        if run.secs > slowest.0 {
            slowest = (run.secs, r.seed);
        }
        if args.seed.is_some() {
            let c = config(&args, r.seed, args.without_adversary);
            println!(
                "params: pipeline_depth={} max_batch_txs={} max_batch_delay={:?}",
                c.params.pipeline_depth, c.params.max_batch_txs, c.params.max_batch_delay
            );
            if let Some(b) = &c.byzantine {
                let ids: Vec<String> = b.replicas.iter().map(|r| r.to_string()).collect();
                println!("byzantine: {} on {}", b.strategy, ids.join(","));
            }
            print!("{r}");
        }
    }
    if args.seed.is_none() {
        for run in runs.iter().filter(|r| !r.report.is_ok()) {
            let r = &run.report;
            let what = if run.baseline {
                " (without the adversary)"
            } else {
                ""
            };
            println!("FAILED seed {}{what}:", r.seed);
            print!("{r}");
            if let Some(why) = &r.liveness_failure {
                println!("  LIVENESS: {why}");
            }
            println!("  replay: {}", replay_command(&args, r.seed, run.baseline));
        }
        if args.byzantine.is_some() && !args.without_adversary {
            print_table(&runs);
        }
        eprintln!(
            "{} runs on {threads} threads in {:.1} s (slowest: seed {} in {:.2} s); \
             {lagging} passing seeds ended with a replica behind",
            runs.len(),
            started.elapsed().as_secs_f64(),
            slowest.1,
            slowest.0
        );
    }
    if args.disk_faults {
        println!(
            "disk faults: crashes={} disk_kept_batches={} lost_batches={} torn_writes={} \
             slow_syncs={}",
            disk.crashes,
            disk.disk_kept_batches,
            disk.lost_batches,
            disk.torn_writes,
            disk.slow_syncs
        );
    }
    // Regression checks grep this line: keep its format (new fields go at the end).
    println!(
        "seeds={} safety_violations={violations} liveness_failures={liveness} \
         committed_txs={committed} checkpoints={} state_transfers={} wipes={} divergences={} \
         max_log_entries={} log_bound={} rebuilding_at_end={}",
        seeds.len(),
        disk.checkpoints,
        disk.state_transfers,
        disk.wipes,
        disk.divergences,
        max_log,
        log_bound,
        disk.rebuilding_at_end
    );
    if violations > 0 || liveness > 0 {
        std::process::exit(1);
    }
}
