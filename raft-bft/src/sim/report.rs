//! The outcome of a simulation run.

use std::collections::BTreeMap;
use std::fmt;

use crate::mutant::Mutant;
use crate::types::Time;

use super::adversary::Strategy;

/// Counters of what happened during a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Events processed.
    pub events: u64,
    /// Messages handed to the network (replica to replica, client to replica, replies).
    pub messages_sent: u64,
    /// Message copies delivered to a live receiver.
    pub messages_delivered: u64,
    /// Messages lost at random.
    pub messages_dropped: u64,
    /// Messages lost to a partition.
    pub messages_partitioned: u64,
    /// Messages lost because the receiver was down (or restarted since they were sent).
    pub messages_to_crashed: u64,
    /// Messages delivered twice.
    pub messages_duplicated: u64,
    /// Message copies with a flipped bit.
    pub messages_corrupted: u64,
    /// Messages that did not decode, by error kind.
    pub decode_errors: BTreeMap<String, u64>,
    /// Messages and txs the verifier refused, by message kind and error kind.
    pub verify_errors: BTreeMap<String, u64>,
    /// Inputs the replicas' protocol logic refused, by reason (summed over replicas and
    /// incarnations).
    pub replica_refusals: BTreeMap<String, u64>,
    /// Replies the clients refused as invalid.
    pub invalid_replies: u64,
    /// Persist batches made durable.
    pub persisted_batches: u64,
    /// Persist batches lost in a crash before they were durable.
    pub lost_batches: u64,
    /// With disk faults: persist batches handed over but not confirmed durable that a crash
    /// kept (their records were whole; the restarted replica recovered them).
    pub disk_kept_batches: u64,
    /// With disk faults: torn records that recovery cut off the end of the log after a crash.
    pub torn_writes: u64,
    /// With disk faults: syncs that took 10 to 50 times the longest normal disk latency.
    pub slow_syncs: u64,
    /// Replica crashes.
    pub crashes: u64,
    /// Replica restarts.
    pub restarts: u64,
    /// Partitions started.
    pub partitions: u64,
    /// Messages the leader retransmitted.
    pub retransmissions: u64,
    /// Fetch requests replicas sent to catch up.
    pub fetches: u64,
    /// Client re-sends to all replicas after a timeout.
    pub client_retries: u64,
    /// Checkpoints that became stable at a correct replica (it compacted its log to them).
    pub checkpoints: u64,
    /// Checkpoints correct replicas installed from a peer.
    pub state_transfers: u64,
    /// Times a correct replica found its state digest differing from an execution certificate.
    pub divergences: u64,
    /// Disks wiped while their replica was down.
    pub wipes: u64,
    /// The most log entries a correct replica held in memory at once (a maximum, not a sum).
    pub max_log_entries: u64,
    /// Correct replicas still rebuilding (not yet voting) when the run ended.
    pub rebuilding_at_end: u64,
}

impl Counters {
    /// Adds another run's counters to these (for totals over many seeds).
    pub fn add(&mut self, other: &Counters) {
        // Destructured, so that a new counter cannot be forgotten here.
        let Counters {
            events,
            messages_sent,
            messages_delivered,
            messages_dropped,
            messages_partitioned,
            messages_to_crashed,
            messages_duplicated,
            messages_corrupted,
            invalid_replies,
            persisted_batches,
            lost_batches,
            disk_kept_batches,
            torn_writes,
            slow_syncs,
            crashes,
            restarts,
            partitions,
            retransmissions,
            fetches,
            client_retries,
            checkpoints,
            state_transfers,
            divergences,
            wipes,
            max_log_entries,
            rebuilding_at_end,
            decode_errors,
            verify_errors,
            replica_refusals,
        } = other;
        self.events += events;
        self.messages_sent += messages_sent;
        self.messages_delivered += messages_delivered;
        self.messages_dropped += messages_dropped;
        self.messages_partitioned += messages_partitioned;
        self.messages_to_crashed += messages_to_crashed;
        self.messages_duplicated += messages_duplicated;
        self.messages_corrupted += messages_corrupted;
        self.invalid_replies += invalid_replies;
        self.persisted_batches += persisted_batches;
        self.lost_batches += lost_batches;
        self.disk_kept_batches += disk_kept_batches;
        self.torn_writes += torn_writes;
        self.slow_syncs += slow_syncs;
        self.crashes += crashes;
        self.restarts += restarts;
        self.partitions += partitions;
        self.retransmissions += retransmissions;
        self.fetches += fetches;
        self.client_retries += client_retries;
        self.checkpoints += checkpoints;
        self.state_transfers += state_transfers;
        self.divergences += divergences;
        self.wipes += wipes;
        self.max_log_entries = self.max_log_entries.max(*max_log_entries);
        self.rebuilding_at_end += rebuilding_at_end;
        for (k, v) in decode_errors {
            *self.decode_errors.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in verify_errors {
            *self.verify_errors.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in replica_refusals {
            *self.replica_refusals.entry(k.clone()).or_insert(0) += v;
        }
    }
}

/// The outcome of one run. Same configuration, same report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimReport {
    /// The run's seed.
    pub seed: u64,
    /// Number of replicas.
    pub replicas: usize,
    /// Safety violations (at most a few dozen are listed; see `violation_count`).
    pub violations: Vec<String>,
    /// Total number of safety violations found.
    pub violation_count: u64,
    /// Why the run was not live, if it was not: a tx not accepted within the bound.
    pub liveness_failure: Option<String>,
    /// Txs executed in the longest committed log.
    pub committed_txs: u64,
    /// Entries in the longest committed log.
    pub committed_entries: u64,
    /// Txs the clients submitted.
    pub submitted_txs: u64,
    /// Txs whose result a client accepted.
    pub accepted_txs: u64,
    /// The virtual time at which the run ended.
    pub end_time: Time,
    /// Replicas whose committed log is shorter than the longest when the run ended (they are
    /// catching up through heartbeats and fetches; informational).
    pub lagging_replicas: usize,
    /// The highest term a correct replica reached (every term change is one step of recovery).
    pub max_term: u64,
    /// When the last accepted tx was accepted: `accepted_txs` over this is the run's goodput.
    pub last_acceptance: Time,
    /// The Byzantine strategy of the run, if any.
    pub byzantine: Option<Strategy>,
    /// The deliberately broken protocol of the run, if any.
    pub mutant: Option<Mutant>,
    /// Counters.
    pub counters: Counters,
}

impl SimReport {
    /// True if the run found no safety violation and no liveness failure.
    pub fn is_ok(&self) -> bool {
        self.violation_count == 0 && self.liveness_failure.is_none()
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counters;
        writeln!(
            f,
            "seed {} n={}{}{}: {} violations, liveness {}, committed {} txs in {} entries, \
             accepted {}/{} txs, {} replicas lagging at the end, term {}, ended at {:.3} s",
            self.seed,
            self.replicas,
            self.byzantine
                .map(|b| format!(" byzantine={b}"))
                .unwrap_or_default(),
            self.mutant
                .map(|m| format!(" mutant={m}"))
                .unwrap_or_default(),
            self.violation_count,
            self.liveness_failure.as_deref().unwrap_or("ok"),
            self.committed_txs,
            self.committed_entries,
            self.accepted_txs,
            self.submitted_txs,
            self.lagging_replicas,
            self.max_term,
            self.end_time.0 as f64 / 1e6
        )?;
        writeln!(
            f,
            "  events {} sent {} delivered {} dropped {} partitioned {} to-crashed {} dup {} \
             corrupted {} crashes {} restarts {} partitions {} lost-batches {} retransmissions {} \
             fetches {} client-retries {} invalid-replies {} disk-kept-batches {} torn-writes {} \
             slow-syncs {} checkpoints {} state-transfers {} divergences {} wipes {} \
             max-log-entries {} rebuilding-at-end {}",
            c.events,
            c.messages_sent,
            c.messages_delivered,
            c.messages_dropped,
            c.messages_partitioned,
            c.messages_to_crashed,
            c.messages_duplicated,
            c.messages_corrupted,
            c.crashes,
            c.restarts,
            c.partitions,
            c.lost_batches,
            c.retransmissions,
            c.fetches,
            c.client_retries,
            c.invalid_replies,
            c.disk_kept_batches,
            c.torn_writes,
            c.slow_syncs,
            c.checkpoints,
            c.state_transfers,
            c.divergences,
            c.wipes,
            c.max_log_entries,
            c.rebuilding_at_end
        )?;
        for (name, map) in [
            ("decode errors", &c.decode_errors),
            ("verify errors", &c.verify_errors),
            ("replica refusals", &c.replica_refusals),
        ] {
            if !map.is_empty() {
                writeln!(f, "  {name}:")?;
                for (k, v) in map {
                    writeln!(f, "    {v:>8}  {k}")?;
                }
            }
        }
        for v in &self.violations {
            writeln!(f, "  VIOLATION: {v}")?;
        }
        Ok(())
    }
}
