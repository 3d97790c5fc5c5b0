//! Measurements: latency percentiles and CPU time of processes and threads (Linux `/proc`).

use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Latencies in microseconds, 1 µs to 100 s at 3 significant digits.
#[derive(Clone, Debug)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Latencies(Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds"))
    }
}

impl Latencies {
    /// Records one latency (clamped to the histogram's range).
    pub fn record(&mut self, latency: Duration) {
        let micros = (latency.as_micros() as u64).clamp(1, 100_000_000);
        self.0.saturating_record(micros);
    }

    /// Adds `other`'s samples.
    pub fn merge(&mut self, other: &Latencies) {
        let _ = self.0.add(&other.0);
    }

    /// How many samples.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The `q` quantile (0..=1) in milliseconds; 0 without samples.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Linux reports process CPU time in clock ticks of 1/100 s (`USER_HZ`, fixed in the ABI).
const TICKS_PER_SECOND: u64 = 100;

/// The CPU time (user + system) of process `pid`, all threads included.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_cpu(&stat)
}

/// Parses utime + stime from a `/proc/.../stat` line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from its closing parenthesis.
fn stat_cpu(stat: &str) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) ... utime(14) stime(15), so indices 11 and 12 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis(
        (utime + stime) * 1000 / TICKS_PER_SECOND,
    ))
}

/// The CPU time of this process's live threads whose name starts with `prefix` (threads that
/// exited are not counted: name long-lived threads).
pub fn threads_cpu(prefix: &str) -> Duration {
    let mut total = Duration::ZERO;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return total;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let Ok(name) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if name.trim_end().starts_with(prefix) {
            total += thread_cpu(&dir).unwrap_or_default();
        }
    }
    total
}

/// A thread's on-CPU time in nanoseconds from its `schedstat` (first field).
fn thread_cpu(task_dir: &Path) -> Option<Duration> {
    let text = std::fs::read_to_string(task_dir.join("schedstat")).ok()?;
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// The CPU time of this whole process.
pub fn own_cpu() -> Duration {
    process_cpu(std::process::id()).unwrap_or_default()
}

/// The median time of appending 64 KiB to a file in `dir` and `fdatasync`ing it, over `rounds`
/// rounds: what one group commit costs on this disk at the moment (a shared host's disk varies
/// over minutes), to read the latencies against.
pub fn sync_latency(dir: &Path, rounds: usize) -> std::io::Result<Duration> {
    use std::io::Write;
    let path = dir.join("sync-probe");
    let mut file = std::fs::File::create(&path)?;
    let block = vec![0x5a; 64 << 10];
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds.max(1) {
        file.write_all(&block)?;
        let start = std::time::Instant::now();
        file.sync_data()?;
        samples.push(start.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path)?;
    samples.sort();
    Ok(samples[samples.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let line = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(stat_cpu(line), Some(Duration::from_secs(3)));
        assert_eq!(stat_cpu("garbage"), None);
    }

    #[test]
    fn a_busy_named_thread_shows_cpu_time() {
        // The thread spins until it has used 40 ms of CPU by its own account (however loaded
        // the machine is), then waits to be measured.
        let (spun, measured) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let (spun_tx, spun_rx) = spun;
        let (measured_tx, measured_rx) = measured;
        let worker = std::thread::Builder::new()
            .name("cpu-probe".into())
            .spawn(move || {
                let me = Path::new("/proc/thread-self");
                let mut x = 0u64;
                while thread_cpu(me).unwrap_or_default() < Duration::from_millis(40) {
                    for _ in 0..10_000 {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                }
                let _ = spun_tx.send(());
                let _ = measured_rx.recv();
            })
            .expect("spawns");
        spun_rx.recv().expect("the probe spins");
        let cpu = threads_cpu("cpu-probe");
        let _ = measured_tx.send(());
        worker.join().expect("joins");
        assert!(cpu >= Duration::from_millis(40), "{cpu:?}");
        assert_eq!(threads_cpu("no-such-thread"), Duration::ZERO);
    }

    #[test]
    fn quantiles_come_from_the_samples() {
        let mut l = Latencies::default();
        for ms in 1..=100 {
            l.record(Duration::from_millis(ms));
        }
        assert_eq!(l.count(), 100);
        assert!((l.quantile_ms(0.5) - 50.0).abs() < 0.5);
        assert!((l.quantile_ms(0.99) - 99.0).abs() < 0.5);
        assert_eq!(Latencies::default().quantile_ms(0.5), 0.0);
    }
}
