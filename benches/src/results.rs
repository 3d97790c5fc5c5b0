//! One measured run of one system: what the CSV rows and the charts are made of.

use serde::Serialize;

/// The figures of one run (one system, one configuration, one load).
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// `raft-bft/quic` (processes over QUIC, durable), `raft-bft/local` (in-process
    /// transport, durable) or `openraft` (in-process, durable).
    pub system: String,
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Most txs per log entry.
    pub batch: u32,
    /// Closed-loop clients (each with one tx in flight), or the client pool of an open-loop run.
    pub clients: usize,
    /// The offered load in tx/s of an open-loop run; `None` for a closed-loop run.
    pub offered_tps: Option<f64>,
    /// Bytes of each tx's op.
    pub op_bytes: usize,
    /// Length of the measured window in seconds.
    pub seconds: f64,
    /// Txs acknowledged as committed in the window.
    pub committed: u64,
    /// Txs that failed (timed out, refused, or a result other than a successful transfer).
    pub failed: u64,
    /// Committed txs per second.
    pub tps: f64,
    /// Txs per committed log entry in the window (how full the batches were), if the system
    /// reports its commit index.
    pub txs_per_entry: Option<f64>,
    /// Latency percentiles in milliseconds (open loop: from the tx's scheduled send time).
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// CPU time of the leader per committed tx, in microseconds.
    pub leader_cpu_us_per_tx: f64,
    /// Mean CPU time of a follower per committed tx, in microseconds.
    pub follower_cpu_us_per_tx: f64,
    /// Replicas that verify every client signature (n for raft-bft, 1 for plain Raft).
    pub verifying_replicas: usize,
    /// The machine's crypto ceiling for this system: cores / (verifying replicas x measured
    /// batch-verify time per signature), in tx/s.
    pub ceiling_tps: f64,
    /// `tps / ceiling_tps`.
    pub ceiling_fraction: f64,
}
