//! The simulated network: delays, and during the fault phase drops, duplicates, corruption,
//! extra delays (reordering) and partitions.

use std::time::Duration;

use rand::RngExt as _;

use super::config::FaultConfig;
use super::SimRng;

/// One end of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Replica(usize),
    Client,
}

/// What happens to one message.
#[derive(Debug, Default)]
pub(crate) struct Transmission {
    /// One delay per copy delivered (empty: dropped), and whether that copy is corrupted.
    pub(crate) copies: Vec<(Duration, bool)>,
    /// Dropped because the link is cut by a partition.
    pub(crate) partitioned: bool,
    /// Dropped at random.
    pub(crate) dropped: bool,
    /// Delivered twice.
    pub(crate) duplicated: bool,
}

pub(crate) struct Network {
    faults: FaultConfig,
    /// True during the fault phase.
    faulty: bool,
    /// Replicas cut off from everyone else (replicas and clients) by the current partition.
    isolated: Vec<bool>,
    /// Replicas cut off from everyone else by a scripted isolation.
    scripted: Vec<bool>,
}

impl Network {
    pub(crate) fn new(faults: FaultConfig, replicas: usize) -> Self {
        Network {
            faults,
            faulty: true,
            isolated: vec![false; replicas],
            scripted: vec![false; replicas],
        }
    }

    /// Ends the fault phase: no more partitions or random faults.
    pub(crate) fn heal(&mut self) {
        self.faulty = false;
        self.end_partition();
        self.scripted.iter_mut().for_each(|i| *i = false);
    }

    /// Starts or ends a scripted isolation of one replica (only in the fault phase).
    pub(crate) fn script_isolation(&mut self, replica: usize, on: bool) {
        if let Some(s) = self.scripted.get_mut(replica) {
            *s = on && self.faulty;
        }
    }

    pub(crate) fn is_faulty(&self) -> bool {
        self.faulty
    }

    pub(crate) fn partition_active(&self) -> bool {
        self.isolated.iter().any(|i| *i)
    }

    /// Isolates a random non-empty proper subset of replicas; returns it.
    pub(crate) fn start_partition(&mut self, rng: &mut SimRng) -> Vec<usize> {
        let n = self.isolated.len();
        if n < 2 || !self.faulty {
            return Vec::new();
        }
        let size = rng.random_range(1..n);
        let mut ids: Vec<usize> = (0..n).collect();
        // Partial Fisher-Yates: the first `size` ids are a uniform random subset.
        for i in 0..size {
            let j = rng.random_range(i..n);
            ids.swap(i, j);
        }
        ids.truncate(size);
        ids.sort_unstable();
        for &i in &ids {
            self.isolated[i] = true;
        }
        ids
    }

    pub(crate) fn end_partition(&mut self) {
        self.isolated.iter_mut().for_each(|i| *i = false);
    }

    /// True if the current partition separates `a` and `b`. Clients are on the side of the
    /// replicas that are not isolated.
    pub(crate) fn cut(&self, a: Endpoint, b: Endpoint) -> bool {
        let side = |sides: &[bool], e: Endpoint| match e {
            Endpoint::Replica(i) => sides.get(i).copied().unwrap_or(false),
            Endpoint::Client => false,
        };
        side(&self.isolated, a) != side(&self.isolated, b)
            || side(&self.scripted, a) != side(&self.scripted, b)
    }

    /// Decides the fate of one message from `from` to `to`.
    pub(crate) fn transmit(&self, rng: &mut SimRng, from: Endpoint, to: Endpoint) -> Transmission {
        let mut t = Transmission::default();
        if self.cut(from, to) {
            t.partitioned = true;
            return t;
        }
        let f = &self.faults;
        if self.faulty && f.drop_prob > 0.0 && rng.random_bool(f.drop_prob) {
            t.dropped = true;
            return t;
        }
        let copies = if self.faulty && f.dup_prob > 0.0 && rng.random_bool(f.dup_prob) {
            t.duplicated = true;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = uniform(rng, f.min_delay, f.max_delay);
            if self.faulty && f.delay_prob > 0.0 && rng.random_bool(f.delay_prob) {
                delay += uniform(rng, Duration::ZERO, f.max_extra_delay);
            }
            let corrupt = self.faulty && f.corrupt_prob > 0.0 && rng.random_bool(f.corrupt_prob);
            t.copies.push((delay, corrupt));
        }
        t
    }
}

/// A duration drawn uniformly in `lo..=hi` (microsecond resolution).
pub(crate) fn uniform(rng: &mut SimRng, lo: Duration, hi: Duration) -> Duration {
    let lo = lo.as_micros() as u64;
    let hi = hi.as_micros() as u64;
    if hi <= lo {
        return Duration::from_micros(lo);
    }
    Duration::from_micros(rng.random_range(lo..=hi))
}

/// Flips one random bit of `bytes`.
pub(crate) fn corrupt(rng: &mut SimRng, bytes: &mut [u8]) {
    if bytes.is_empty() {
        return;
    }
    let i = rng.random_range(0..bytes.len());
    let bit = rng.random_range(0..8u32);
    bytes[i] ^= 1 << bit;
}
