//! `compare`: raft-bft against plain Raft (openraft) on one workload, side by side in one run.
//!
//! ```text
//! cargo run --release -p raft-bft-benches --bin compare -- --quick
//! ```
//!
//! See BENCHMARKS.md for the method. The last line sums the headline up:
//! `compare: raft_bft_tps=.. openraft_tps=.. ratio=.. ceiling_fraction=.. p50_ms=..`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use raft_bft::manifest::Cluster;
use raft_bft_benches::ceiling::Ceiling;
use raft_bft_benches::driver::{self, Load, Timing};
use raft_bft_benches::results::RunResult;
use raft_bft_benches::system::{bench_manifest, ClusterSpec, System};
use raft_bft_benches::workload::Accounts;
use raft_bft_benches::{openraft_baseline, raft_bft_local, raft_bft_quic, report};

#[derive(Parser)]
#[command(about = "raft-bft against plain Raft (openraft), side by side")]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// A short run (under a minute): the headline figures and the latency at half load, no
    /// sweep.
    #[arg(long)]
    quick: bool,
    /// Seconds measured per run (default 8, or 3 with --quick).
    #[arg(long)]
    seconds: Option<f64>,
    /// Seconds of warm-up per run before measuring (default 2, or 1 with --quick).
    #[arg(long)]
    warmup: Option<f64>,
    /// Closed-loop clients, each with one tx in flight (at most 32 per tx of a batch: enough to
    /// fill a pipeline of 8 batches four times).
    #[arg(long, default_value_t = 1024)]
    clients: usize,
    /// Memo bytes in each transfer (the op is about 50 bytes more).
    #[arg(long, default_value_t = 32)]
    memo_bytes: usize,
    /// How long a batch may wait to fill, in milliseconds (raft-bft's `max_batch_delay`; plain
    /// Raft's proposer uses the same).
    #[arg(long, default_value_t = 2.0)]
    batch_delay_ms: f64,
    /// Batch sizes to sweep (default 1,16,128,1024; with --quick only 1024).
    #[arg(long, value_delimiter = ',')]
    batches: Option<Vec<u32>>,
    /// raft-bft cluster sizes to sweep (default 4,7,10; with --quick 4).
    #[arg(long, value_delimiter = ',')]
    nodes: Option<Vec<usize>>,
    /// Offered loads of the open-loop runs, as fractions of the closed-loop peak.
    #[arg(long, value_delimiter = ',')]
    loads: Option<Vec<f64>>,
    /// Only these systems (quic, local, openraft); the summary line needs quic and openraft.
    #[arg(long, value_delimiter = ',')]
    systems: Option<Vec<String>>,
    /// Where the CSV and the charts go.
    #[arg(long, default_value = "target/compare")]
    out: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs one raft-bft replica process (started by this program).
    #[command(hide = true)]
    Node {
        #[arg(long)]
        spec: PathBuf,
    },
}

/// The systems under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Quic,
    Local,
    OpenRaft,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Quic => "raft-bft/quic",
            Kind::Local => "raft-bft/local",
            Kind::OpenRaft => "openraft",
        }
    }

    /// Replicas that verify every client signature.
    fn verifying(self, nodes: usize) -> usize {
        match self {
            Kind::Quic | Kind::Local => nodes,
            Kind::OpenRaft => 1,
        }
    }

    /// A generous guess of the peak, to pre-sign enough txs (a run that exhausts them ends its
    /// window early, and says so).
    fn expected_peak(self) -> f64 {
        match self {
            Kind::Quic | Kind::Local => 25_000.0,
            Kind::OpenRaft => 80_000.0,
        }
    }
}

struct Bench {
    args: Args,
    timing: Timing,
    ceiling: Ceiling,
    scratch: tempfile::TempDir,
    results: Vec<RunResult>,
    runs: usize,
}

impl Bench {
    fn run(
        &mut self,
        kind: Kind,
        nodes: usize,
        batch: u32,
        load: Load,
    ) -> Result<Option<RunResult>, String> {
        if let Some(only) = &self.args.systems {
            if !only.iter().any(|s| kind.name().ends_with(s.as_str())) {
                return Ok(None);
            }
        }
        self.runs += 1;
        // Enough txs in flight to fill the pipeline of batches (the protocol's default depth
        // of 8, four times over), and no more: with batches of one, a thousand clients would
        // only queue at the leader past their retry timeout.
        let pipeline = raft_bft::config::Params::default().pipeline_depth as usize;
        let clients = self.args.clients.min(batch as usize * pipeline * 4).max(1);
        let accounts = Arc::new(Accounts::new(clients, self.args.memo_bytes));
        let addresses = (0..nodes)
            .map(|_| raft_bft_net::free_udp_port().map(|p| format!("127.0.0.1:{p}")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("no free port: {e}"))?;
        let batch_delay = Duration::from_secs_f64(self.args.batch_delay_ms / 1000.0);
        let manifest = bench_manifest(&addresses, batch, batch_delay);
        let cluster_id = *Cluster::new(manifest.clone())
            .map_err(|e| e.to_string())?
            .cluster_id();
        let total = (self.timing.warmup + self.timing.measure).as_secs_f64();
        let rate = match load {
            Load::Closed => kind.expected_peak(),
            Load::Open { tps } => tps * 1.05,
        };
        let per_client = ((rate * total) / clients as f64).ceil().max(1.0) as usize;
        let label = format!(
            "[{}] {} n={nodes} batch={batch} {}",
            self.runs,
            kind.name(),
            match load {
                Load::Closed => format!("closed loop, {clients} clients"),
                Load::Open { tps } => format!("open loop at {tps:.0} tx/s"),
            }
        );
        eprintln!("{label}: signing {} txs", per_client * clients);
        let queues = accounts.presign(&cluster_id, per_client);
        let dir = self.scratch.path().join(format!("run-{}", self.runs));
        let spec = ClusterSpec {
            nodes,
            batch,
            manifest,
            accounts: accounts.clone(),
            dir: dir.clone(),
            batch_delay,
        };
        let system: Box<dyn System> = match kind {
            Kind::Quic => raft_bft_quic::start(&spec)?,
            Kind::Local => raft_bft_local::start(&spec)?,
            Kind::OpenRaft => openraft_baseline::start(&spec)?,
        };
        let m = driver::run(system.as_ref(), queues, load, self.timing, &label);
        let stopped = system.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
        stopped.map_err(|e| format!("{label}: stopping: {e}"))?;
        if m.exhausted {
            eprintln!(
                "{label}: the pre-signed txs ran out; the window was {:.1} s",
                m.seconds
            );
        }
        if let Some(e) = &m.first_error {
            eprintln!("{label}: {} failed, the first: {e}", m.failed);
        }
        let tps = m.committed as f64 / m.seconds.max(1e-9);
        let per_tx = |d: Duration| d.as_secs_f64() * 1e6 / m.committed.max(1) as f64;
        let leader = m.leader.unwrap_or(0).min(m.cpu.len().saturating_sub(1));
        let followers: Vec<Duration> = m
            .cpu
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != leader)
            .map(|(_, c)| *c)
            .collect();
        let follower_cpu = followers.iter().sum::<Duration>() / followers.len().max(1) as u32;
        let verifying = kind.verifying(nodes);
        let ceiling_tps = self.ceiling.tps(verifying);
        let result = RunResult {
            system: kind.name().to_string(),
            nodes,
            batch,
            clients,
            offered_tps: match load {
                Load::Closed => None,
                Load::Open { tps } => Some(tps),
            },
            op_bytes: accounts.op_bytes(),
            seconds: m.seconds,
            committed: m.committed,
            failed: m.failed,
            tps,
            txs_per_entry: m
                .entries
                .filter(|e| *e > 0)
                .map(|e| m.committed as f64 / e as f64),
            p50_ms: m.latencies.quantile_ms(0.5),
            p99_ms: m.latencies.quantile_ms(0.99),
            p999_ms: m.latencies.quantile_ms(0.999),
            leader_cpu_us_per_tx: per_tx(m.cpu.get(leader).copied().unwrap_or_default()),
            follower_cpu_us_per_tx: per_tx(follower_cpu),
            verifying_replicas: verifying,
            ceiling_tps,
            ceiling_fraction: tps / ceiling_tps,
        };
        eprintln!("{}", row(&result));
        self.results.push(result.clone());
        Ok(Some(result))
    }
}

fn header() -> String {
    format!(
        "{:<15} {:>3} {:>5} {:>9} {:>9} {:>7} {:>8} {:>8} {:>8} {:>11} {:>11} {:>8}",
        "system",
        "n",
        "batch",
        "offered",
        "tx/s",
        "tx/ent",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "leader us",
        "follower us",
        "ceiling"
    )
}

fn row(r: &RunResult) -> String {
    format!(
        "{:<15} {:>3} {:>5} {:>9} {:>9.0} {:>7} {:>8.2} {:>8.2} {:>8.2} {:>11.1} {:>11.1} {:>7.0}%",
        r.system,
        r.nodes,
        r.batch,
        r.offered_tps
            .map_or("closed".to_string(), |t| format!("{t:.0}")),
        r.tps,
        r.txs_per_entry
            .map_or("-".to_string(), |t| format!("{t:.0}")),
        r.p50_ms,
        r.p99_ms,
        r.p999_ms,
        r.leader_cpu_us_per_tx,
        r.follower_cpu_us_per_tx,
        100.0 * r.ceiling_fraction
    )
}

fn main() -> ExitCode {
    let args = Args::parse();
    // RUST_LOG=raft_bft=trace shows each entry's phases (node processes log to their
    // directory's node.log).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,openraft=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Some(Cmd::Node { spec }) = &args.command {
        return match raft_bft_quic::run_node(spec) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("node: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match compare(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare: {e}");
            ExitCode::FAILURE
        }
    }
}

fn compare(args: Args) -> Result<(), String> {
    let quick = args.quick;
    let timing = Timing {
        warmup: Duration::from_secs_f64(args.warmup.unwrap_or(if quick { 1.0 } else { 2.0 })),
        measure: Duration::from_secs_f64(args.seconds.unwrap_or(if quick { 3.0 } else { 8.0 })),
    };
    let batches = args.batches.clone().unwrap_or_else(|| {
        if quick {
            vec![1024]
        } else {
            vec![1, 16, 128, 1024]
        }
    });
    let node_counts =
        args.nodes
            .clone()
            .unwrap_or_else(|| if quick { vec![4] } else { vec![4, 7, 10] });
    let loads = args.loads.clone().unwrap_or_else(|| {
        if quick {
            vec![0.5]
        } else {
            vec![0.1, 0.25, 0.5, 0.75, 0.9]
        }
    });
    let out = args.out.clone();
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    eprintln!("measuring the crypto ceiling...");
    let ceiling = Ceiling::measure(1024, args.memo_bytes, Duration::from_millis(500))?;
    eprintln!(
        "crypto ceiling: {} cores, {:.2} us per signature batch-verified (batches of {}; \
         {:.2} us with every core verifying at once): {:.0} tx/s with 4 verifying replicas, \
         {:.0} with 1",
        ceiling.cores,
        ceiling.per_signature.as_secs_f64() * 1e6,
        ceiling.batch,
        ceiling.per_signature_all_busy.as_secs_f64() * 1e6,
        ceiling.tps(4),
        ceiling.tps(1)
    );
    let scratch = tempfile::Builder::new()
        .prefix("raft-bft-compare")
        .tempdir_in(std::env::temp_dir())
        .map_err(|e| format!("no scratch directory: {e}"))?;
    let sync = raft_bft_benches::measure::sync_latency(scratch.path(), 50)
        .map_err(|e| format!("cannot time a sync in {}: {e}", scratch.path().display()))?;
    eprintln!(
        "disk: one 64 KiB append and fdatasync takes {:.2} ms (median of 50) in {}",
        sync.as_secs_f64() * 1e3,
        scratch.path().display()
    );
    let mut bench = Bench {
        args,
        timing,
        ceiling,
        scratch,
        results: Vec::new(),
        runs: 0,
    };
    eprintln!("{}", header());

    // The headline: n = 4 (and plain Raft at 3 and 4), the largest batch, closed loop.
    let top = *batches.iter().max().unwrap_or(&1024);
    let quic = bench.run(Kind::Quic, 4, top, Load::Closed)?;
    bench.run(Kind::Local, 4, top, Load::Closed)?;
    let openraft = bench.run(Kind::OpenRaft, 3, top, Load::Closed)?;
    let openraft4 = bench.run(Kind::OpenRaft, 4, top, Load::Closed)?;

    // Latency against load: open loop at fractions of each system's peak.
    let mut half_peak_p50 = None;
    for &fraction in &loads {
        if let Some(peak) = &quic {
            let tps = peak.tps * fraction;
            if let Some(r) = bench.run(Kind::Quic, 4, top, Load::Open { tps })? {
                if (fraction - 0.5).abs() < 1e-9 {
                    half_peak_p50 = Some(r.p50_ms);
                }
            }
        }
        if let Some(peak) = &openraft4 {
            let tps = peak.tps * fraction;
            bench.run(Kind::OpenRaft, 4, top, Load::Open { tps })?;
        }
    }
    if let (Some(peak), None) = (&quic, half_peak_p50) {
        let tps = peak.tps * 0.5;
        half_peak_p50 = bench
            .run(Kind::Quic, 4, top, Load::Open { tps })?
            .map(|r| r.p50_ms);
    }

    // Throughput against batch size and cluster size.
    for &batch in batches.iter().filter(|b| **b != top) {
        bench.run(Kind::OpenRaft, 3, batch, Load::Closed)?;
        bench.run(Kind::OpenRaft, 4, batch, Load::Closed)?;
    }
    for &nodes in &node_counts {
        for &batch in &batches {
            if nodes == 4 && batch == top {
                continue; // measured above
            }
            bench.run(Kind::Quic, nodes, batch, Load::Closed)?;
            if !quick {
                bench.run(Kind::Local, nodes, batch, Load::Closed)?;
            }
        }
    }

    write_outputs(&out, &bench.results)?;
    println!("{}", header());
    for r in &bench.results {
        println!("{}", row(r));
    }
    println!(
        "(tx/s: committed txs per second; latency from submission, or from the scheduled time \
         in open loop; leader/follower us: CPU time per committed tx; ceiling: tx/s as a \
         fraction of cores / (verifying replicas x {:.2} us per batch-verified signature))",
        ceiling.per_signature.as_secs_f64() * 1e6
    );
    println!(
        "(disk: {:.2} ms per 64 KiB append and fdatasync at the start; crypto ceiling measured \
         with every core busy: {:.2} us per signature)",
        sync.as_secs_f64() * 1e3,
        ceiling.per_signature_all_busy.as_secs_f64() * 1e6
    );
    println!("results: {}", out.display());
    if let (Some(quic), Some(openraft), Some(p50)) = (&quic, &openraft, half_peak_p50) {
        println!(
            "compare: raft_bft_tps={:.0} openraft_tps={:.0} ratio={:.3} ceiling_fraction={:.3} p50_ms={:.2}",
            quic.tps,
            openraft.tps,
            quic.tps / openraft.tps.max(1e-9),
            quic.ceiling_fraction,
            p50
        );
    }
    Ok(())
}

fn write_outputs(out: &Path, results: &[RunResult]) -> Result<(), String> {
    report::write_csv(&out.join("results.csv"), results).map_err(|e| e.to_string())?;
    report::throughput_chart(&out.join("throughput.png"), results).map_err(|e| e.to_string())?;
    report::latency_chart(&out.join("latency.png"), results).map_err(|e| e.to_string())?;
    Ok(())
}
