//! Drives a system with the workload: closed loop (every client keeps one tx in flight) or open
//! loop (txs scheduled at a fixed rate, latency counted from the scheduled time), with a
//! warm-up, a measured window, and a progress line.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger::LedgerResult;
use raft_bft::message::SignedTx;

use crate::measure::Latencies;
use crate::system::System;

/// How txs are offered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// Every client submits its next tx as soon as the last one is acknowledged.
    Closed,
    /// Txs are scheduled at `tps` per second in total, spread evenly over the clients; a
    /// client that is still waiting sends its next tx late, and the wait counts as latency.
    Open {
        /// The offered rate.
        tps: f64,
    },
}

/// How long a run lasts.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Not measured: connections settle, batches fill, caches warm.
    pub warmup: Duration,
    /// The measured window.
    pub measure: Duration,
}

/// What a run measured.
#[derive(Debug)]
pub struct Measurement {
    /// Txs acknowledged within the window (with a successful transfer as their result).
    pub committed: u64,
    /// Txs that failed within the window.
    pub failed: u64,
    /// The window's actual length (shorter if the pre-signed txs ran out).
    pub seconds: f64,
    /// Latencies of the txs acknowledged within the window.
    pub latencies: Latencies,
    /// Each node's CPU time used during the window.
    pub cpu: Vec<Duration>,
    /// The leader at the end of the window.
    pub leader: Option<usize>,
    /// Log entries committed during the window, if the system tells.
    pub entries: Option<u64>,
    /// True if some client ran out of pre-signed txs before the window ended.
    pub exhausted: bool,
    /// The first failure seen, to report.
    pub first_error: Option<String>,
}

/// How long after the window an unanswered tx is waited for.
const GRACE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct ClientTally {
    committed: u64,
    failed: u64,
    latencies_us: Vec<u32>,
    exhausted: bool,
    first_error: Option<String>,
}

/// Runs `queues[i]` (client `i`'s pre-signed txs, in timestamp order) against `system`.
pub fn run(
    system: &dyn System,
    queues: Vec<VecDeque<SignedTx>>,
    load: Load,
    timing: Timing,
    label: &str,
) -> Measurement {
    let start = Instant::now();
    let window_start = start + timing.warmup;
    let window_end = window_start + timing.measure;
    let clients = queues.len().max(1);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let progress = progress_thread(label.to_string(), done.clone(), stop.clone(), timing);

    let client = |i: usize, mut queue: VecDeque<SignedTx>| {
        let done = done.clone();
        async move {
            let mut tally = ClientTally::default();
            let mut k = 0u64;
            loop {
                // Open loop: this client's k-th tx is due at start + (i + k * clients) / tps.
                let due = match load {
                    Load::Closed => Instant::now(),
                    Load::Open { tps } => {
                        let at = start
                            + Duration::from_secs_f64(
                                (i as f64 + (k * clients as u64) as f64) / tps,
                            );
                        let now = Instant::now();
                        if at > now {
                            async_std::task::sleep(at - now).await;
                        }
                        at
                    }
                };
                k += 1;
                if due >= window_end {
                    break;
                }
                let Some(tx) = queue.pop_front() else {
                    tally.exhausted = true;
                    break;
                };
                // A tx still unanswered well after the window is given up (and the client
                // stops), so that one lost tx cannot hold the run.
                let give_up = (window_end + GRACE).saturating_duration_since(Instant::now());
                let outcome = async_std::future::timeout(give_up, system.submit(i, tx))
                    .await
                    .unwrap_or_else(|_| Err("no answer by the end of the run".to_string()));
                let end = Instant::now();
                let gave_up = end >= window_end + GRACE;
                done.fetch_add(1, Ordering::Relaxed);
                if gave_up {
                    tally.failed += u64::from(due >= window_start);
                    break;
                }
                if end < window_start || end > window_end {
                    continue;
                }
                let transferred = match &outcome {
                    Ok(bytes) => matches!(
                        LedgerResult::decode(bytes),
                        Ok(LedgerResult::Transferred { .. })
                    ),
                    Err(_) => false,
                };
                if transferred {
                    tally.committed += 1;
                    tally
                        .latencies_us
                        .push(end.saturating_duration_since(due).as_micros() as u32);
                } else {
                    tally.failed += 1;
                    if tally.first_error.is_none() {
                        tally.first_error = Some(match outcome {
                            Ok(bytes) => format!("result {:?}", LedgerResult::decode(&bytes)),
                            Err(e) => e,
                        });
                    }
                }
            }
            tally
        }
    };
    let futures: Vec<_> = queues
        .into_iter()
        .enumerate()
        .map(|(i, q)| client(i, q))
        .collect();
    // CPU time and the commit index are sampled at the window's start by a thread of their
    // own, so that the sample does not wait for any client's tx.
    let (tallies, cpu_start) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            std::thread::sleep(window_start.saturating_duration_since(Instant::now()));
            (system.cpu(), system.committed_entries())
        });
        let tallies = async_std::task::block_on(futures_util::future::join_all(futures));
        (tallies, sampler.join().ok())
    });
    let finished = Instant::now();
    let cpu_end = system.cpu();
    let entries_end = system.committed_entries();
    let leader = system.leader();
    stop.store(true, Ordering::Relaxed);
    let _ = progress.join();

    let exhausted = tallies.iter().any(|t| t.exhausted);
    let window = if exhausted {
        finished
            .min(window_end)
            .saturating_duration_since(window_start)
    } else {
        timing.measure
    };
    let mut latencies = Latencies::default();
    let (mut committed, mut failed, mut first_error) = (0, 0, None);
    for t in tallies {
        committed += t.committed;
        failed += t.failed;
        first_error = first_error.or(t.first_error);
        for us in t.latencies_us {
            latencies.record(Duration::from_micros(u64::from(us)));
        }
    }
    let (cpu_start, entries_start) =
        cpu_start.unwrap_or_else(|| (vec![Duration::ZERO; cpu_end.len()], None));
    let entries = entries_end
        .zip(entries_start)
        .map(|(e, s)| e.saturating_sub(s));
    let cpu = cpu_end
        .iter()
        .zip(cpu_start.iter().chain(std::iter::repeat(&Duration::ZERO)))
        .map(|(e, s)| e.saturating_sub(*s))
        .collect();
    Measurement {
        committed,
        failed,
        seconds: window.as_secs_f64(),
        latencies,
        cpu,
        leader,
        entries,
        exhausted,
        first_error,
    }
}

/// Prints the run's progress to standard error: once a second on a terminal (rewriting one
/// line), every 5 seconds otherwise.
fn progress_thread(
    label: String,
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    timing: Timing,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let tty = std::io::stderr().is_terminal();
        let every = if tty { 1 } else { 5 };
        let start = Instant::now();
        let total = (timing.warmup + timing.measure).as_secs_f64();
        let mut last = 0u64;
        let mut ticks = 0u64;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            ticks += 1;
            if !ticks.is_multiple_of(10 * every) {
                continue;
            }
            let now = done.load(Ordering::Relaxed);
            let rate = (now - last) as f64 / every as f64;
            last = now;
            let phase = if start.elapsed() < timing.warmup {
                "warm-up"
            } else {
                "measuring"
            };
            let line = format!(
                "  {label}: {phase} {:.0}/{total:.0} s, {now} acknowledged, {rate:.0} tx/s",
                start.elapsed().as_secs_f64().min(total)
            );
            if tty {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
        }
        if tty {
            eprint!("\r\x1b[2K");
        }
    })
}
