//! Runs the deterministic simulator over many seeds, in parallel on all cores.
//!
//! ```text
//! cargo run --release -p raft-bft --example simulate -- --seeds 500
//! cargo run --release -p raft-bft --example simulate -- --seed 42 --replicas 7
//! ```
//!
//! Each seed runs `n` replicas under network faults (drops, duplicates, corruption, reordering,
//! partitions) and crash/restart of up to `f` followers, then checks safety and liveness. The
//! protocol parameters vary with the seed (see `SimConfig::varied`). Failing seeds are printed
//! with their violations and the command that replays them. The last line sums everything up;
//! the exit code is non-zero if any seed failed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Parser;
use raft_bft::sim::{self, SimConfig, SimReport};
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
}

fn config(args: &Args, seed: u64) -> SimConfig {
    let mut c = SimConfig::varied(seed, args.replicas);
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
    c.trace = args.trace && args.seed.is_some();
    c
}

fn replay_command(args: &Args, seed: u64) -> String {
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
    cmd
}

fn main() {
    let args = Args::parse();
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.first_seed..args.first_seed.saturating_add(args.seeds)).collect(),
    };
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, seeds.len().max(1));
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let results: Mutex<Vec<(SimReport, f64)>> = Mutex::new(Vec::with_capacity(seeds.len()));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&seed) = seeds.get(i) else { break };
                let t = Instant::now();
                let report = sim::run(config(&args, seed));
                let secs = t.elapsed().as_secs_f64();
                if !report.is_ok() {
                    eprintln!("seed {seed} FAILED ({secs:.2} s)");
                }
                results
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((report, secs));
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|(r, _)| r.seed);

    let mut violations = 0u64;
    let mut liveness = 0u64;
    let mut lagging = 0u64;
    let mut committed = 0u64;
    let mut slowest = (0.0f64, 0u64);
    for (r, secs) in &results {
        violations += r.violation_count;
        liveness += u64::from(r.liveness_failure.is_some());
        committed += r.committed_txs;
        lagging += u64::from(r.is_ok() && r.lagging_replicas > 0);
        if *secs > slowest.0 {
            slowest = (*secs, r.seed);
        }
        if args.seed.is_some() {
            let c = config(&args, r.seed);
            println!(
                "params: pipeline_depth={} max_batch_txs={} max_batch_delay={:?}",
                c.params.pipeline_depth, c.params.max_batch_txs, c.params.max_batch_delay
            );
            print!("{r}");
        } else if !r.is_ok() {
            println!("FAILED seed {}:", r.seed);
            print!("{r}");
            if let Some(why) = &r.liveness_failure {
                println!("  LIVENESS: {why}");
            }
            println!("  replay: {}", replay_command(&args, r.seed));
        }
    }
    if args.seed.is_none() {
        eprintln!(
            "{} seeds on {threads} threads in {:.1} s (slowest: seed {} in {:.2} s); \
             {lagging} passing seeds ended with a replica behind",
            results.len(),
            started.elapsed().as_secs_f64(),
            slowest.1,
            slowest.0
        );
    }
    println!(
        "seeds={} safety_violations={violations} liveness_failures={liveness} committed_txs={committed}",
        results.len()
    );
    if violations > 0 || liveness > 0 {
        std::process::exit(1);
    }
}
