//! The simulation engine: the event loop that drives replicas, disks, the network and clients,
//! with the checks that run along the way and at the end.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng as _, RngExt as _, SeedableRng as _};

use crate::client::{Client, ClientConfig, ClientSend, Destination};
use crate::codec::{self, CodecError};
use crate::crypto::KeyPair;
use crate::manifest::{Cluster, Manifest};
use crate::message::{Entry, ReplicaMessage, Reply, SignedTx};
use crate::persist::DurableState;
use crate::replica::{Metrics, Replica, Target};
use crate::types::{ClientId, Index, ReplicaId, Time};
use crate::verify::Verifier;

use super::adversary::{Adversary, Strategy};
use super::check::{self, Monitor, Replay};
use super::config::SimConfig;
use super::driver::SimClient;
use super::history::History;
use super::network::{self, Endpoint, Network};
use super::node::{Disk, Node, Spoken};
use super::queue::{EventQueue, TimerSlot};
use super::report::{Counters, SimReport};
use super::shadow::{OpenShadowStore, ShadowStore};
use super::workload::Workload;
use super::SimRng;

mod byzantine;
mod checks;
mod io;

/// Violations listed in a report; more are only counted.
const MAX_LISTED_VIOLATIONS: usize = 40;

type Bytes = Rc<[u8]>;

enum Event {
    /// A replica message arrives at replica `to` (sent to incarnation `incarnation`);
    /// `intact` unless the network corrupted it.
    ReplicaMessage {
        to: usize,
        from: usize,
        incarnation: u64,
        bytes: Bytes,
        intact: bool,
    },
    /// A client tx arrives at replica `to`.
    ClientTx {
        to: usize,
        incarnation: u64,
        bytes: Bytes,
    },
    /// A reply from replica `from` arrives at client `client`.
    Reply {
        client: usize,
        from: usize,
        bytes: Bytes,
    },
    Persisted {
        node: usize,
        incarnation: u64,
        batch: u64,
    },
    ReplicaTick {
        node: usize,
        incarnation: u64,
        generation: u64,
    },
    ClientTick {
        client: usize,
        generation: u64,
    },
    Submit {
        client: usize,
    },
    /// A Byzantine replica's own mischief.
    AdversaryTick {
        node: usize,
    },
    /// A scripted isolation of one replica starts or ends.
    Isolate {
        replica: usize,
        on: bool,
    },
    /// Honest replicas change sides of the twin split.
    TwinShuffle,
    Crash,
    /// With disk faults: power fails at node `node` while its disk writes (see
    /// `crash_random`).
    CrashMidWrite {
        node: usize,
        incarnation: u64,
    },
    Restart {
        node: usize,
    },
    PartitionStart,
    PartitionEnd,
    Heal,
    Check,
    End,
}

/// Why the event loop stopped.
enum Stop {
    Finished,
    Liveness(String),
}

pub(crate) struct Simulation<W: Workload> {
    config: SimConfig,
    workload: W,
    rng: SimRng,
    now: Time,
    heal_at: Time,
    queue: EventQueue<Event>,
    cluster: Arc<Cluster>,
    nodes: Vec<Node<W::App>>,
    clients: Vec<SimClient>,
    client_by_key: BTreeMap<ClientId, usize>,
    net: Network,
    history: History,
    monitor: Monitor,
    /// Every committed entry, recorded when a correct replica first reported it committed.
    ledger: BTreeMap<Index, Entry>,
    counters: Counters,
    violations: Vec<String>,
    violation_count: u64,
    healed: bool,
    /// With disk faults: nodes that crash in the middle of their next write.
    crash_mid_write: Vec<bool>,
    end_scheduled: bool,
    stop: Option<Stop>,
    /// Real stores kept in step with each node's disk (empty unless the run has them).
    shadows: Vec<Option<Box<dyn ShadowStore>>>,
}

fn seed32(rng: &mut SimRng) -> [u8; 32] {
    let mut s = [0u8; 32];
    rng.fill_bytes(&mut s);
    s
}

impl<W: Workload> Simulation<W> {
    /// Keeps every node's durable state in a real store too (see [`ShadowStore`]).
    pub(crate) fn with_shadow_stores(mut self, open: &OpenShadowStore<'_>) -> Result<Self, String> {
        self.shadows = (0..self.nodes.len())
            .map(|i| {
                open(i)
                    .map(Some)
                    .map_err(|e| format!("opening the store of r{i}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(self)
    }

    /// Tells node `i`'s shadow store something; a failure is a violation.
    fn shadow(&mut self, i: usize, tell: impl FnOnce(&mut dyn ShadowStore) -> Result<(), String>) {
        if let Some(Some(store)) = self.shadows.get_mut(i) {
            if let Err(e) = tell(store.as_mut()) {
                self.violation(format!("storage: r{i}: {e}"));
            }
        }
    }

    pub(crate) fn new(config: SimConfig, workload: W) -> Result<Self, String> {
        config.validate()?;
        let mut rng = SimRng::seed_from_u64(config.seed);
        let keys: Vec<KeyPair> = (0..config.replicas)
            .map(|_| KeyPair::from_seed(seed32(&mut rng)))
            .collect();
        let manifest = Manifest::new(
            format!("sim-{}", config.seed),
            keys.iter()
                .enumerate()
                .map(|(i, k)| (k.public(), format!("sim:{i}"))),
            config.params.clone(),
        );
        let mut cluster = Cluster::new(manifest).map_err(|e| e.to_string())?;
        if let Some(m) = config.mutant {
            cluster = cluster.with_mutant(m);
        }
        let cluster = Arc::new(cluster);
        // Twins: a second instance of each Byzantine replica, after the primaries.
        let twinned: Vec<ReplicaId> = match &config.byzantine {
            Some(b) if b.strategy == Strategy::Twins => b.replicas.clone(),
            _ => Vec::new(),
        };
        let instances: Vec<(ReplicaId, bool)> = (0..config.replicas as u32)
            .map(|i| (ReplicaId(i), false))
            .chain(twinned.iter().map(|r| (*r, true)))
            .collect();
        let mut nodes = Vec::with_capacity(instances.len());
        for (id, twin) in instances {
            let key = keys[id.as_usize()].clone();
            let app = match config.nondeterministic_replica() {
                Some(victim) if victim == id => workload
                    .nondeterministic_app(config.seed)
                    .unwrap_or_else(|| workload.new_app()),
                _ => workload.new_app(),
            };
            let replica = Replica::new(
                Arc::clone(&cluster),
                id,
                key.clone(),
                app,
                DurableState::default(),
                Time(0),
            )
            .map_err(|e| e.to_string())?;
            nodes.push(Node {
                id,
                key,
                replica: Some(replica),
                verifier: Verifier::new(Arc::clone(&cluster), seed32(&mut rng)),
                disk: Disk::default(),
                incarnation: 0,
                tick: TimerSlot::default(),
                checked_commit: Index(0),
                checked_applied: Index(0),
                divergence_reported: false,
                spoken: Spoken::default(),
                adversary: None,
                side: twin,
                twin,
            });
        }
        let client_config = config
            .client_config
            .clone()
            .unwrap_or_else(|| ClientConfig::from_params(cluster.params()));
        let mut clients = Vec::with_capacity(config.clients);
        let mut client_by_key = BTreeMap::new();
        for i in 0..config.clients {
            let client = Client::new(
                Arc::clone(&cluster),
                KeyPair::from_seed(seed32(&mut rng)),
                client_config.clone(),
            )
            .map_err(|e| e.to_string())?;
            let c = SimClient::new(client, config.txs_per_client);
            client_by_key.insert(c.key, i);
            clients.push(c);
        }
        if let Some(b) = &config.byzantine {
            // A censoring leader drops the first client's txs.
            let censored = clients.first().map(|c| c.key);
            for (i, node) in nodes.iter_mut().enumerate() {
                if b.replicas.contains(&node.id) {
                    let seed = config.seed ^ (0xad5e_0000_0000 + i as u64);
                    node.adversary = Some(Adversary::new(b.strategy, censored, seed));
                }
            }
        }
        let heal_at = Time(0).after(config.heal_at);
        let node_count = nodes.len();
        Ok(Simulation {
            net: Network::new(config.faults.clone(), nodes.len()),
            workload,
            rng,
            now: Time(0),
            heal_at,
            queue: EventQueue::new(),
            cluster,
            nodes,
            clients,
            client_by_key,
            history: History::new(),
            monitor: Monitor::default(),
            ledger: BTreeMap::new(),
            counters: Counters::default(),
            violations: Vec::new(),
            violation_count: 0,
            healed: false,
            crash_mid_write: vec![false; node_count],
            end_scheduled: false,
            stop: None,
            shadows: Vec::new(),
            config,
        })
    }

    pub(crate) fn run(mut self) -> SimReport {
        self.start();
        let hard_stop = self
            .heal_at
            .after(self.config.liveness_bound * 3)
            .after(self.config.settle);
        while self.stop.is_none() {
            let Some((at, event)) = self.queue.pop() else {
                self.stop = Some(Stop::Liveness("the event queue ran dry".into()));
                break;
            };
            if at > hard_stop {
                self.stop = Some(Stop::Liveness(format!(
                    "the run reached its time limit ({} s) with clients still busy",
                    hard_stop.0 / 1_000_000
                )));
                break;
            }
            self.now = self.now.max(at);
            self.counters.events += 1;
            if self.counters.events > self.config.max_events {
                self.stop = Some(Stop::Liveness(format!(
                    "more than {} events: the simulation does not converge",
                    self.config.max_events
                )));
                break;
            }
            self.handle(event);
        }
        self.finish()
    }

    // ----- setup -----

    fn start(&mut self) {
        for i in 0..self.nodes.len() {
            self.drain(i);
        }
        for c in 0..self.clients.len() {
            let think = network::uniform(&mut self.rng, Duration::ZERO, self.config.max_think_time);
            self.queue
                .push(self.now.after(think), Event::Submit { client: c });
        }
        self.queue.push(self.heal_at, Event::Heal);
        self.queue
            .push(self.now.after(self.config.check_interval), Event::Check);
        if self.config.crashes.enabled && !self.config.crashable().is_empty() {
            self.schedule_crash();
        }
        if !self.config.faults.partition_interval.is_zero() && self.nodes.len() > 1 {
            self.schedule_partition();
        }
        self.start_byzantine();
        if self.clients.is_empty() {
            self.maybe_finish();
        }
    }

    fn schedule_crash(&mut self) {
        let wait = network::uniform(
            &mut self.rng,
            Duration::ZERO,
            self.config.crashes.mean_interval * 2,
        );
        let at = self.now.after(wait);
        if at < self.heal_at {
            self.queue.push(at, Event::Crash);
        }
    }

    fn schedule_partition(&mut self) {
        let wait = network::uniform(
            &mut self.rng,
            Duration::ZERO,
            self.config.faults.partition_interval * 2,
        );
        let at = self.now.after(wait);
        if at < self.heal_at {
            self.queue.push(at, Event::PartitionStart);
        }
    }

    // ----- events -----

    fn handle(&mut self, event: Event) {
        match event {
            Event::ReplicaMessage {
                to,
                from,
                incarnation,
                bytes,
                intact,
            } => self.deliver_replica_message(to, from, incarnation, &bytes, intact),
            Event::ClientTx {
                to,
                incarnation,
                bytes,
            } => self.deliver_client_tx(to, incarnation, &bytes),
            Event::Reply {
                client,
                from,
                bytes,
            } => self.deliver_reply(client, from, &bytes),
            Event::Persisted {
                node,
                incarnation,
                batch,
            } => self.persisted(node, incarnation, batch),
            Event::ReplicaTick {
                node,
                incarnation,
                generation,
            } => {
                let n = &mut self.nodes[node];
                if n.incarnation != incarnation || !n.tick.fire(generation) {
                    return;
                }
                if let Some(r) = n.replica.as_mut() {
                    r.on_tick(self.now);
                    self.drain(node);
                }
            }
            Event::ClientTick { client, generation } => {
                let c = &mut self.clients[client];
                if !c.tick.fire(generation) {
                    return;
                }
                let sends = c.client.on_tick(self.now);
                for s in sends {
                    self.send_client_tx(client, s);
                }
                self.arm_client_tick(client);
            }
            Event::Submit { client } => self.submit(client),
            Event::AdversaryTick { node } => self.adversary_tick(node),
            Event::Isolate { replica, on } => {
                self.trace(|| format!("r{replica} scripted isolation: {on}"));
                self.net.script_isolation(replica, on);
            }
            Event::TwinShuffle => self.shuffle_twins(),
            Event::Crash => {
                self.crash_random();
                self.schedule_crash();
            }
            Event::CrashMidWrite { node, incarnation } => {
                if self.nodes[node].incarnation == incarnation && self.may_crash(node) {
                    self.crash_now(node);
                }
            }
            Event::Restart { node } => self.restart(node),
            Event::PartitionStart => {
                if !self.net.is_faulty() {
                    return;
                }
                let isolated = self.net.start_partition(&mut self.rng);
                self.trace(|| format!("partition: isolated {isolated:?}"));
                self.counters.partitions += 1;
                let d = network::uniform(
                    &mut self.rng,
                    Duration::from_millis(1),
                    self.config.faults.max_partition_duration,
                );
                let end = self.now.after(d).min(self.heal_at);
                self.queue.push(end, Event::PartitionEnd);
            }
            Event::PartitionEnd => {
                if self.net.partition_active() {
                    self.trace(|| "partition ends".to_string());
                    self.net.end_partition();
                    self.schedule_partition();
                }
            }
            Event::Heal => {
                self.trace(|| "HEAL".to_string());
                self.net.heal();
                self.healed = true;
                for i in 0..self.nodes.len() {
                    self.restart(i);
                }
                self.maybe_finish();
            }
            Event::Check => {
                self.observe_all();
                self.check_liveness();
                self.queue
                    .push(self.now.after(self.config.check_interval), Event::Check);
            }
            Event::End => self.stop = Some(Stop::Finished),
        }
    }

    // ----- crashes -----

    fn crash_random(&mut self) {
        let candidates: Vec<usize> = self
            .config
            .crashable()
            .into_iter()
            .map(ReplicaId::as_usize)
            .filter(|&i| self.may_crash(i))
            .collect();
        if candidates.is_empty() {
            return;
        }
        let victim = candidates[self.rng.random_range(0..candidates.len())];
        if self.config.disk_faults && self.rng.random_bool(0.5) {
            // A disk has unsynced writes only for a short while after each batch, so crashes at
            // random times mostly miss them: half the crashes strike during the victim's next
            // write instead, so that kept batches and torn records really happen.
            self.crash_mid_write[victim] = true;
            self.trace(|| format!("r{victim} will crash during its next write"));
            return;
        }
        self.crash_now(victim);
    }

    /// True if replica `i` may crash now: it is up, the fault phase is on, and the crash budget
    /// allows one more replica down.
    fn may_crash(&self, i: usize) -> bool {
        if self.now >= self.heal_at || !self.nodes[i].is_up() {
            return false;
        }
        let max_down = self.config.crashes.max_down.unwrap_or(self.cluster.f());
        // A replica rebuilding after a wiped disk does not vote yet: it counts as down.
        let down = self
            .nodes
            .iter()
            .filter(|n| n.replica.as_ref().is_none_or(|r| r.is_rebuilding()))
            .count();
        down < max_down
    }

    /// Crashes replica `victim` and schedules its restart.
    fn crash_now(&mut self, victim: usize) {
        self.crash(victim);
        self.trace(|| format!("r{victim} CRASHED"));
        let downtime = network::uniform(
            &mut self.rng,
            self.config.crashes.min_downtime,
            self.config.crashes.max_downtime,
        );
        let at = self.now.after(downtime).min(self.heal_at);
        self.queue.push(at, Event::Restart { node: victim });
    }

    fn crash(&mut self, i: usize) {
        // Check the instance before it is gone.
        self.observe(i);
        let node = &mut self.nodes[i];
        let Some(replica) = node.replica.take() else {
            return;
        };
        node.incarnation += 1;
        node.tick.clear();
        self.crash_mid_write[i] = false;
        self.counters.crashes += 1;
        if self.config.disk_faults {
            match node.disk.crash_torn(self.now, &mut self.rng) {
                Ok(c) => {
                    self.shadow(i, |s| s.crash(&c.kept_batches, c.torn_batch.as_ref()));
                    self.counters.lost_batches += c.lost as u64;
                    self.counters.disk_kept_batches += c.kept as u64;
                    self.trace(|| {
                        format!(
                            "r{i} disk: kept {} unsynced batches whole, lost {}",
                            c.kept, c.lost
                        )
                    });
                }
                Err(e) => self.violation(format!("simulator: r{i} disk crash: {e}")),
            }
        } else {
            let lost = node.disk.crash(self.now);
            self.counters.lost_batches += lost as u64;
            self.shadow(i, |s| s.crash(&[], None));
        }
        self.retire(i, replica);
    }

    /// Accounts for a replica instance that goes away (crash, or end of the run).
    fn retire(&mut self, i: usize, replica: Replica<W::App>) {
        absorb_metrics(&mut self.counters, replica.metrics());
        if self.nodes[i].is_byzantine() {
            return;
        }
        let m = replica.metrics();
        self.counters.checkpoints += m.checkpoints;
        self.counters.state_transfers += m.state_transfers;
        self.counters.divergences += m.divergences;
        for v in self.workload.app_violations(replica.app()) {
            self.violation(format!("r{i}: {v}"));
        }
    }

    fn restart(&mut self, i: usize) {
        if self.nodes[i].is_up() {
            return;
        }
        let seed = seed32(&mut self.rng);
        let app = match self.config.nondeterministic_replica() {
            Some(victim) if victim == self.nodes[i].id => self
                .workload
                .nondeterministic_app(self.config.seed ^ self.nodes[i].incarnation)
                .unwrap_or_else(|| self.workload.new_app()),
            _ => self.workload.new_app(),
        };
        // The disk may be wiped while the replica is down (only drawn when wipes are on, so
        // that runs without them draw the same numbers as before).
        let wiped = self.config.wipe_prob > 0.0
            && !self.nodes[i].is_byzantine()
            && self.rng.random_bool(self.config.wipe_prob);
        if wiped {
            self.trace(|| format!("r{i} DISK WIPED"));
            self.counters.wipes += 1;
            self.nodes[i].disk = Disk::default();
            if let Some(Some(store)) = self.shadows.get_mut(i) {
                if let Err(e) = store.wipe() {
                    self.violation(format!("storage: r{i} cannot wipe: {e}"));
                }
            }
        }
        let forget_votes = self.cluster.has_mutant(crate::mutant::Mutant::ForgetVotes);
        // Read back what the crash left on the log before anything else uses the durable state.
        match self.nodes[i].disk.recover() {
            Ok(Some(r)) => {
                self.counters.torn_writes += u64::from(r.torn);
                self.trace(|| {
                    format!(
                        "r{i} disk recovery: {} whole batches, torn record cut: {}",
                        r.batches, r.torn
                    )
                });
            }
            Ok(None) => {}
            Err(e) => self.violation(format!("simulator: r{i} {e}")),
        }
        // With a real store, the replica starts from what the store loads; it must be exactly
        // what the simulated disk says was made durable.
        let mut durable = self.nodes[i].disk.durable.clone();
        if let Some(Some(store)) = self.shadows.get_mut(i) {
            match store.load() {
                Ok(loaded) => {
                    if let Some(why) = differences(&durable, &loaded) {
                        self.violation(format!(
                            "storage: r{i} loaded a state other than the one made durable: {why}"
                        ));
                    }
                    durable = loaded;
                }
                Err(e) => self.violation(format!("storage: r{i} cannot load: {e}")),
            }
        }
        let node = &mut self.nodes[i];
        node.verifier = Verifier::new(Arc::clone(&self.cluster), seed);
        if forget_votes {
            node.disk.durable.votes.clear();
            durable.votes.clear();
        }
        // A replica that ran before and finds its disk empty lost it (wiped now, or wiped
        // earlier and crashed again before the rebuild's vote floor was durable): it rebuilds.
        let rebuild = wiped || durable == DurableState::default();
        let started = if rebuild {
            Replica::rebuild(
                Arc::clone(&self.cluster),
                node.id,
                node.key.clone(),
                app,
                self.now,
            )
        } else {
            Replica::new(
                Arc::clone(&self.cluster),
                node.id,
                node.key.clone(),
                app,
                durable,
                self.now,
            )
        };
        match started {
            Ok(r) => {
                node.replica = Some(r);
                node.checked_commit = Index(0);
                node.checked_applied = Index(0);
                node.divergence_reported = false;
                self.counters.restarts += 1;
                self.trace(|| format!("r{i} restarted"));
                self.drain(i);
            }
            Err(e) => self.violation(format!("r{i} cannot restart from its durable state: {e}")),
        }
    }
}

/// What differs between the state made durable and the one a store loaded, if anything.
fn differences(durable: &DurableState, loaded: &DurableState) -> Option<String> {
    let mut why = Vec::new();
    let count = |name: &str, a: usize, b: usize, same: bool, why: &mut Vec<String>| {
        if !same {
            why.push(format!("{name} ({a} made durable, {b} loaded)"));
        }
    };
    count(
        "entries",
        durable.entries.len(),
        loaded.entries.len(),
        durable.entries == loaded.entries,
        &mut why,
    );
    count(
        "votes",
        durable.votes.len(),
        loaded.votes.len(),
        durable.votes == loaded.votes,
        &mut why,
    );
    count(
        "certificates",
        durable.certificates.len(),
        loaded.certificates.len(),
        durable.certificates == loaded.certificates,
        &mut why,
    );
    if (durable.term, durable.seeking) != (loaded.term, loaded.seeking)
        || durable.new_term != loaded.new_term
    {
        why.push(format!(
            "term ({} seeking {} made durable, {} seeking {} loaded)",
            durable.term.0, durable.seeking, loaded.term.0, loaded.seeking
        ));
    }
    if durable.compacted_below != loaded.compacted_below {
        why.push("compaction point".into());
    }
    if durable.checkpoint != loaded.checkpoint {
        why.push("checkpoint".into());
    }
    if durable.vote_floor != loaded.vote_floor {
        why.push("vote floor".into());
    }
    (!why.is_empty()).then(|| why.join(", "))
}

fn absorb_metrics(c: &mut Counters, m: &Metrics) {
    c.retransmissions += m.retransmissions;
    c.fetches += m.fetches_sent;
    for (reason, count) in &m.refused {
        *c.replica_refusals.entry((*reason).to_string()).or_insert(0) += count;
    }
}
