//! Protocol parameters (PROTOCOL.md section 8), carried in the manifest so all replicas agree.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Every tunable of the protocol. Defaults are PROTOCOL.md's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// A batch closes when it holds this many txs.
    pub max_batch_txs: u32,
    /// A batch closes when its txs' ops and signatures reach this many bytes.
    pub max_batch_bytes: u64,
    /// A batch closes when its oldest tx has waited this long.
    pub max_batch_delay: Duration,
    /// At most this many entries are proposed and not yet committed.
    pub pipeline_depth: u32,
    /// An idle leader sends a heartbeat this often; also the leader's retransmission period.
    pub heartbeat_interval: Duration,
    /// Followers suspect a leader silent for this long.
    pub election_timeout: Duration,
    /// A forwarded tx not committed within this is a reason to suspect the leader.
    pub request_timeout: Duration,
    /// A pre-appended entry not committed within this is a reason to suspect the leader.
    pub commit_timeout: Duration,
    /// A new term that does not start within this is skipped (the timeout then doubles).
    pub term_change_timeout: Duration,
    /// Every this many entries, the execution certificate is a stable checkpoint.
    pub checkpoint_interval: u64,
    /// No message above this size is decoded.
    pub max_message_bytes: u64,
    /// No client op above this size is admitted.
    pub max_op_bytes: u32,
    /// The leader queues at most this many admitted txs waiting for a batch.
    pub max_pending_txs: u32,
    /// ... and at most this many of them from one client, so that one client cannot take the
    /// whole queue.
    pub max_pending_txs_per_client: u32,
    /// ... and at most this many bytes of them (as counted against `max_batch_bytes`).
    pub max_pending_bytes: u64,
    /// A checkpoint's encoded state (application snapshot and client table) may be at most this
    /// large; a replica refuses to receive a larger one.
    pub max_checkpoint_bytes: u64,
    /// A checkpoint travels to a replica that fell behind in chunks of at most this many bytes
    /// (and at most half of `max_message_bytes`: see [`Params::checkpoint_chunk`]).
    pub checkpoint_chunk_bytes: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            max_batch_txs: 1024,
            max_batch_bytes: 1 << 20,
            max_batch_delay: Duration::from_millis(2),
            pipeline_depth: 8,
            heartbeat_interval: Duration::from_millis(50),
            election_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(1),
            commit_timeout: Duration::from_secs(1),
            term_change_timeout: Duration::from_secs(1),
            checkpoint_interval: 128,
            max_message_bytes: 16 << 20,
            max_op_bytes: 64 << 10,
            max_pending_txs: 100_000,
            max_pending_txs_per_client: 16,
            max_pending_bytes: 64 << 20,
            // Well under what one persist batch may hold (about 1 GiB in the file store).
            max_checkpoint_bytes: 256 << 20,
            checkpoint_chunk_bytes: 1 << 20,
        }
    }
}

impl Params {
    /// Checks that the parameters can work together.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_batch_txs == 0 {
            return Err("max_batch_txs must be at least 1".into());
        }
        if self.pipeline_depth == 0 {
            return Err("pipeline_depth must be at least 1".into());
        }
        if self.max_batch_bytes < u64::from(self.max_op_bytes) + 128 {
            return Err("max_batch_bytes must hold at least one tx of max_op_bytes".into());
        }
        // An entry of a full batch must fit in one message.
        let worst_entry = self.max_batch_bytes + u64::from(self.max_batch_txs) * 128 + 4096;
        if self.max_message_bytes < worst_entry {
            return Err(format!(
                "max_message_bytes ({}) cannot hold a full batch (up to {worst_entry} bytes)",
                self.max_message_bytes
            ));
        }
        if self.heartbeat_interval.is_zero() || self.election_timeout <= self.heartbeat_interval {
            return Err("election_timeout must exceed a non-zero heartbeat_interval".into());
        }
        if self.max_pending_txs == 0 || self.max_pending_txs_per_client == 0 {
            return Err("max_pending_txs and max_pending_txs_per_client must be at least 1".into());
        }
        if self.max_pending_bytes < self.max_batch_bytes {
            return Err("max_pending_bytes must hold at least one full batch".into());
        }
        if self.checkpoint_interval == 0 || self.checkpoint_interval > 1 << 20 {
            return Err("checkpoint_interval must be in 1..=2^20".into());
        }
        if self.pipeline_depth > 1 << 16 {
            return Err("pipeline_depth must be at most 2^16".into());
        }
        if self.checkpoint_chunk_bytes == 0 {
            return Err("checkpoint_chunk_bytes must be at least 1".into());
        }
        Ok(())
    }

    /// The most entries a replica holds above its stable execution certificate, and so the most
    /// prepared entries a TermChange reports. A replica refuses proposals beyond it (a leader
    /// that withholds execution certificates stalls and is replaced): everything a correct
    /// replica holds prepared must fit in its TermChange, or a committed entry could be left
    /// out of a new term's choice.
    pub fn max_prepared_per_term_change(&self) -> u64 {
        self.max_log_entries()
    }

    /// The size of a checkpoint chunk: `checkpoint_chunk_bytes`, but at most half a message
    /// (the rest is room for its certificate).
    pub fn checkpoint_chunk(&self) -> u64 {
        self.checkpoint_chunk_bytes
            .min(self.max_message_bytes / 2)
            .max(1)
    }

    /// The most entries a replica holds in its log above its stable checkpoint (it refuses
    /// proposals beyond): two checkpoint intervals, so that the next checkpoint can become
    /// stable while the leader goes on, plus a full pipeline.
    pub fn max_log_entries(&self) -> u64 {
        2 * self.checkpoint_interval + u64::from(self.pipeline_depth)
    }
}
