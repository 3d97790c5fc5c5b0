//! What a simulation run does: cluster size, workload, faults, crashes, time limits.

use std::time::Duration;

use rand::{RngExt as _, SeedableRng as _};

use crate::client::ClientConfig;
use crate::config::Params;
use crate::mutant::Mutant;
use crate::types::ReplicaId;

use super::adversary::{ByzantineConfig, Strategy};
use super::SimRng;

/// A scripted network fault: `replica` is cut off from everyone from `from` to `until`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Isolation {
    /// Who is cut off.
    pub replica: ReplicaId,
    /// When the isolation starts.
    pub from: Duration,
    /// When it ends (at the latest at heal time).
    pub until: Duration,
}

/// Network faults, active only during the fault phase (before [`SimConfig::heal_at`]).
///
/// Delays (`min_delay..=max_delay`) apply to every message, in and after the fault phase.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultConfig {
    /// Probability that a message is lost.
    pub drop_prob: f64,
    /// Probability that a message is delivered twice (each copy with its own delay).
    pub dup_prob: f64,
    /// Probability that one bit of a message is flipped in transit (exercises the decoder and
    /// the verifier; every signed field is covered by a signature).
    pub corrupt_prob: f64,
    /// Probability that a message gets an extra delay of up to `max_extra_delay` (reordering).
    pub delay_prob: f64,
    /// The largest extra delay.
    pub max_extra_delay: Duration,
    /// The smallest normal one-way delay.
    pub min_delay: Duration,
    /// The largest normal one-way delay.
    pub max_delay: Duration,
    /// Mean time between the end of one partition and the start of the next (uniform in
    /// `0..2 * mean`); zero disables partitions.
    pub partition_interval: Duration,
    /// The longest a partition lasts (uniform in `1 ms..=max`, cut short at heal time).
    pub max_partition_duration: Duration,
}

impl FaultConfig {
    /// No faults at all: every message arrives once, intact, with a normal delay.
    pub fn none() -> Self {
        FaultConfig {
            drop_prob: 0.0,
            dup_prob: 0.0,
            corrupt_prob: 0.0,
            delay_prob: 0.0,
            partition_interval: Duration::ZERO,
            ..FaultConfig::default()
        }
    }
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            drop_prob: 0.05,
            dup_prob: 0.02,
            corrupt_prob: 0.002,
            delay_prob: 0.1,
            max_extra_delay: Duration::from_millis(30),
            min_delay: Duration::from_micros(100),
            max_delay: Duration::from_millis(2),
            partition_interval: Duration::from_millis(400),
            max_partition_duration: Duration::from_millis(300),
        }
    }
}

/// Crashes and restarts of replicas during the fault phase.
///
/// A crash drops the replica's in-memory state and every persist batch it handed over that was
/// not yet durable (with [`SimConfig::disk_faults`], it may keep some of them and tear the
/// next); messages in flight to it are lost. It restarts from its durable state with a
/// fresh application. Every replica is up again at heal time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrashConfig {
    /// Whether replicas crash at all.
    pub enabled: bool,
    /// The replicas that may crash. `None`: every replica but replica 0, the leader of term 0
    /// (so that most runs keep one leader; `crashable` with replica 0 exercises term changes).
    pub crashable: Option<Vec<ReplicaId>>,
    /// At most this many replicas are down at once. `None`: `f`.
    pub max_down: Option<usize>,
    /// Mean time between crash attempts (uniform in `0..2 * mean`).
    pub mean_interval: Duration,
    /// Shortest downtime.
    pub min_downtime: Duration,
    /// Longest downtime (cut short at heal time).
    pub max_downtime: Duration,
}

impl Default for CrashConfig {
    fn default() -> Self {
        CrashConfig {
            enabled: true,
            crashable: None,
            max_down: None,
            mean_interval: Duration::from_millis(400),
            min_downtime: Duration::from_millis(10),
            max_downtime: Duration::from_millis(600),
        }
    }
}

/// A whole simulation run. Same configuration, same run: every random choice comes from
/// [`SimConfig::seed`].
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Seeds every random choice of the run (keys, delays, faults, workload).
    pub seed: u64,
    /// Number of replicas.
    pub replicas: usize,
    /// Number of concurrent clients (each with one outstanding tx at a time).
    pub clients: usize,
    /// Txs each client submits, one after the other (closed loop).
    pub txs_per_client: u64,
    /// A client waits a random time in `0..=max_think_time` before each submission.
    pub max_think_time: Duration,
    /// Network faults of the fault phase.
    pub faults: FaultConfig,
    /// Crashes of the fault phase.
    pub crashes: CrashConfig,
    /// End of the fault phase: partitions end, crashed replicas restart, the network becomes
    /// reliable.
    pub heal_at: Duration,
    /// Liveness bound: a tx must be accepted by its client within this long after
    /// `max(its submission, heal_at)`.
    pub liveness_bound: Duration,
    /// Once every client is done (and the fault phase is over), the run goes on this long
    /// before the final checks, so that replicas settle.
    pub settle: Duration,
    /// How often agreement and state digests are checked during the run.
    pub check_interval: Duration,
    /// Disk sync latency range (each replica's disk completes its batches in order).
    pub min_disk_latency: Duration,
    /// See `min_disk_latency`.
    pub max_disk_latency: Duration,
    /// Disk faults, as a real write-ahead log on a real disk has them: a crash keeps a random
    /// prefix (none to all) of the batches handed over but not yet confirmed durable, and the
    /// record after that prefix may be torn mid-write (the restarted replica's recovery drops
    /// it by its length and checksum); and a sync occasionally takes 10 to 50 times
    /// `max_disk_latency` (a slow disk). Persist-before-speak is still judged only by what was
    /// durable when a message left. Off by default.
    pub disk_faults: bool,
    /// The probability that a crashed replica's disk is wiped (everything it made durable is
    /// lost) before it restarts. A wiped replica starts with [`Replica::rebuild`]: it rebuilds
    /// from its peers and does not vote until it has passed everything it may have voted on.
    /// `0.0` (the default): never.
    ///
    /// [`Replica::rebuild`]: crate::replica::Replica::rebuild
    pub wipe_prob: f64,
    /// Protocol parameters of the simulated cluster.
    pub params: Params,
    /// Client timing; `None`: [`ClientConfig::from_params`].
    pub client_config: Option<ClientConfig>,
    /// Safety net against a livelock of the simulator itself: the run stops (as a liveness
    /// failure) after this many events.
    pub max_events: u64,
    /// Prints one line per event to standard error (for replaying a failing seed).
    pub trace: bool,
    /// Byzantine replicas, if any.
    pub byzantine: Option<ByzantineConfig>,
    /// A deliberately broken protocol, to show that the checkers catch it.
    pub mutant: Option<Mutant>,
    /// Scripted isolations of single replicas (on top of random partitions).
    pub isolations: Vec<Isolation>,
    /// Ends the run at the first safety violation (for mutants: once the protocol is shown
    /// broken, the rest of a forked run only costs time).
    pub stop_on_violation: bool,
}

impl SimConfig {
    /// The default run for `seed` on `replicas` replicas: 8 clients, faults and crashes for the
    /// first 2 s of virtual time, then a reliable network.
    pub fn new(seed: u64, replicas: usize) -> Self {
        SimConfig {
            seed,
            replicas,
            clients: 8,
            txs_per_client: 25,
            max_think_time: Duration::from_millis(60),
            faults: FaultConfig::default(),
            crashes: CrashConfig::default(),
            heal_at: Duration::from_secs(2),
            liveness_bound: Duration::from_secs(30),
            settle: Duration::from_millis(500),
            check_interval: Duration::from_millis(100),
            min_disk_latency: Duration::from_micros(50),
            max_disk_latency: Duration::from_micros(1500),
            disk_faults: false,
            wipe_prob: 0.0,
            params: Params::default(),
            client_config: None,
            max_events: 20_000_000,
            trace: false,
            byzantine: None,
            mutant: None,
            isolations: Vec::new(),
            stop_on_violation: false,
        }
    }

    /// Like [`SimConfig::new`], with protocol parameters that vary with the seed (pipeline
    /// depth, batch size and delay), so that many seeds cover many configurations. The choice
    /// depends only on the seed: replaying a seed replays its parameters.
    pub fn varied(seed: u64, replicas: usize) -> Self {
        let mut config = Self::new(seed, replicas);
        // A stream of its own, so the run's other random choices do not depend on these draws.
        let mut rng = SimRng::seed_from_u64(seed ^ 0x005e_ed0f_9a5a_3e7e);
        config.params.pipeline_depth = [1, 2, 4, 8][rng.random_range(0..4usize)];
        config.params.max_batch_txs = [1, 3, 16, 1024][rng.random_range(0..4usize)];
        config.params.max_batch_delay =
            Duration::from_micros([0, 500, 2_000, 10_000][rng.random_range(0..4usize)]);
        // Short checkpoint intervals and small chunks, so that runs of a few hundred txs take
        // many checkpoints and transfer checkpoints in several chunks.
        config.params.checkpoint_interval = [4, 8, 16, 32][rng.random_range(0..4usize)];
        config.params.checkpoint_chunk_bytes = [256, 1024, 8192][rng.random_range(0..3usize)];
        config
    }

    /// Disables every fault and crash.
    pub fn without_faults(mut self) -> Self {
        self.faults = FaultConfig::none();
        self.crashes.enabled = false;
        self
    }

    /// Makes `count` replicas Byzantine with `strategy` (see [`Strategy::byzantine_replicas`]
    /// for which). Only the others crash, and only while Byzantine and crashed replicas together
    /// stay within `f`. `wrong-new-term` also isolates replica 0 early in the run for twice the
    /// election timeout, so that a term change makes the Byzantine replica 1 the new leader.
    ///
    /// `count` above `f` is beyond the fault model: safety may break (that is what `twins` with
    /// `f + 1` replicas shows).
    pub fn with_byzantine(mut self, strategy: Strategy, count: usize) -> Self {
        let n = self.replicas;
        let replicas = strategy.byzantine_replicas(n, count, self.seed);
        let f = n.saturating_sub(1) / 3;
        let honest: Vec<ReplicaId> = (0..n as u32)
            .map(ReplicaId)
            .filter(|r| !replicas.contains(r))
            .collect();
        self.crashes.crashable = Some(honest);
        let budget = f.saturating_sub(replicas.len());
        if budget == 0 {
            self.crashes.enabled = false;
        } else {
            self.crashes.max_down = Some(budget);
        }
        if strategy == Strategy::WrongNewTerm && n > 1 {
            let start = Duration::from_millis(100);
            self.isolations.push(Isolation {
                replica: ReplicaId(0),
                from: start,
                until: start + 2 * self.params.election_timeout,
            });
        }
        self.byzantine = Some(ByzantineConfig { strategy, replicas });
        self
    }

    /// Runs the cluster with a deliberately broken protocol, together with the Byzantine
    /// behaviour that exploits it:
    ///
    /// - `quorum-2f`: twins of the leader of term 0 (each twin gathers a short quorum on its
    ///   side);
    /// - `skip-pc-check`: a `withhold-pc` leader (followers vote Append without a prepared
    ///   certificate, so a committed entry can be missing from every TermChange);
    /// - `forget-votes`: a `revote-bait` leader, with crashes of the other replicas (a restarted
    ///   replica that forgot its vote votes again, for the other version);
    /// - `nondeterministic`: no Byzantine replica; the last replica's state machine is not
    ///   deterministic (see [`SimConfig::nondeterministic_replica`]).
    pub fn with_mutant(self, mutant: Mutant) -> Self {
        let f = self.replicas.saturating_sub(1) / 3;
        let mut config = match mutant {
            Mutant::QuorumOneShort => self.with_byzantine(Strategy::Twins, 1),
            Mutant::SkipPcCheck => self.with_byzantine(Strategy::WithholdPc, 1),
            Mutant::ForgetVotes => self.with_byzantine(Strategy::RevoteBait, 1),
            Mutant::Nondeterministic => self,
        };
        if mutant == Mutant::ForgetVotes {
            config.crashes.enabled = true;
            config.crashes.max_down = Some(f.max(1));
        }
        config.mutant = Some(mutant);
        // The nondeterministic replica is run to the end: the point is that it detects its
        // divergence and recovers (the digest monitor reports the first wrong digest at once).
        config.stop_on_violation = mutant != Mutant::Nondeterministic;
        config
    }

    /// The replica whose state machine the `nondeterministic` mutant breaks: the last one (a
    /// correct follower in term 0).
    pub fn nondeterministic_replica(&self) -> Option<ReplicaId> {
        (self.mutant == Some(Mutant::Nondeterministic) && self.replicas > 1)
            .then(|| ReplicaId(self.replicas as u32 - 1))
    }

    /// The Byzantine replicas.
    pub(crate) fn byzantine_replicas(&self) -> &[ReplicaId] {
        self.byzantine.as_ref().map_or(&[], |b| &b.replicas)
    }

    /// Checks that the configuration can be run.
    pub fn validate(&self) -> Result<(), String> {
        if self.replicas == 0 {
            return Err("at least one replica is needed".into());
        }
        if self.replicas > 255 {
            return Err("at most 255 replicas".into());
        }
        let f = &self.faults;
        for (name, p) in [
            ("drop_prob", f.drop_prob),
            ("dup_prob", f.dup_prob),
            ("corrupt_prob", f.corrupt_prob),
            ("delay_prob", f.delay_prob),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} must be a probability, not {p}"));
            }
        }
        if f.min_delay > f.max_delay {
            return Err("min_delay must not exceed max_delay".into());
        }
        if self.min_disk_latency > self.max_disk_latency {
            return Err("min_disk_latency must not exceed max_disk_latency".into());
        }
        if self.crashes.min_downtime > self.crashes.max_downtime {
            return Err("min_downtime must not exceed max_downtime".into());
        }
        if let Some(ids) = &self.crashes.crashable {
            if let Some(bad) = ids.iter().find(|r| r.as_usize() >= self.replicas) {
                return Err(format!("crashable replica {bad} is not in the cluster"));
            }
        }
        for r in self
            .byzantine_replicas()
            .iter()
            .chain(self.isolations.iter().map(|i| &i.replica))
        {
            if r.as_usize() >= self.replicas {
                return Err(format!("replica {r} is not in the cluster"));
            }
        }
        if !(0.0..=1.0).contains(&self.wipe_prob) {
            return Err(format!(
                "wipe_prob must be a probability, not {}",
                self.wipe_prob
            ));
        }
        if self.check_interval.is_zero() {
            return Err("check_interval must be above zero".into());
        }
        self.params.validate()
    }

    /// The replicas that may crash (never a Byzantine one).
    pub(crate) fn crashable(&self) -> Vec<ReplicaId> {
        let ids = match &self.crashes.crashable {
            Some(ids) => ids.clone(),
            None => (1..self.replicas as u32).map(ReplicaId).collect(),
        };
        let byzantine = self.byzantine_replicas();
        ids.into_iter().filter(|r| !byzantine.contains(r)).collect()
    }
}
