//! Byzantine replicas in the world: their adversaries' hooks, their own timers, and the routing
//! of twins (two instances of one replica, each seeing one side of the cluster).

use super::*;

use crate::replica::Target;
use crate::sim::adversary::{Act, Ctx};
use crate::types::Term;

impl<W: Workload> Simulation<W> {
    /// Arms the adversaries' timers, the scripted isolations and the twin split.
    pub(super) fn start_byzantine(&mut self) {
        for i in 0..self.nodes.len() {
            let interval = self.nodes[i]
                .adversary
                .as_ref()
                .and_then(Adversary::tick_interval);
            if let Some(every) = interval {
                self.queue
                    .push(self.now.after(every), Event::AdversaryTick { node: i });
            }
        }
        for iso in self.config.isolations.clone() {
            let from = Time(0).after(iso.from);
            let until = Time(0).after(iso.until).min(self.heal_at);
            if from < until {
                let replica = iso.replica.as_usize();
                self.queue.push(from, Event::Isolate { replica, on: true });
                self.queue
                    .push(until, Event::Isolate { replica, on: false });
            }
        }
        if self.nodes.iter().any(|n| n.twin) {
            self.shuffle_twins();
        }
    }

    /// Puts every honest replica on a random side of the twin split; again and again during
    /// the fault phase, then for good.
    pub(super) fn shuffle_twins(&mut self) {
        for i in 0..self.nodes.len() {
            if !self.is_twinned(self.nodes[i].id) {
                self.nodes[i].side = self.rng.random_bool(0.5);
            }
        }
        let sides: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("#{i}(r{}):{}", n.id.0, u8::from(n.side)))
            .collect();
        self.trace(|| format!("twin split: {}", sides.join(" ")));
        let mean = self
            .config
            .faults
            .partition_interval
            .max(Duration::from_millis(100));
        let at = self
            .now
            .after(network::uniform(&mut self.rng, Duration::ZERO, mean * 2));
        if at < self.heal_at {
            self.queue.push(at, Event::TwinShuffle);
        }
    }

    /// True if replica `r` runs as twins.
    fn is_twinned(&self, r: ReplicaId) -> bool {
        self.nodes.iter().any(|n| n.twin && n.id == r)
    }

    /// Whether node `from` reaches node `to` across the twin split: honest replicas always reach
    /// each other; a twinned instance and anyone else only on the same side.
    fn across_twin_split(&self, from: usize, to: usize) -> bool {
        let (a, b) = (&self.nodes[from], &self.nodes[to]);
        (!self.is_twinned(a.id) && !self.is_twinned(b.id)) || a.side == b.side
    }

    /// The instances of replica `r` that node `from` sends to.
    pub(super) fn instances_seen_by(&self, from: usize, r: ReplicaId) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&t| self.nodes[t].id == r && t != from && self.across_twin_split(from, t))
            .collect()
    }

    /// The nodes a message from node `from` to `target` goes to.
    pub(super) fn nodes_for(&self, from: usize, target: Target) -> Vec<usize> {
        let me = self.nodes[from].id;
        match target {
            Target::Replica(r) => self.instances_seen_by(from, r),
            Target::AllOthers => self
                .cluster
                .replica_ids()
                .filter(|r| *r != me)
                .flat_map(|r| self.instances_seen_by(from, r))
                .collect(),
        }
    }

    /// Runs `act` with node `i`'s adversary, if it has one.
    pub(super) fn with_adversary<R>(
        &mut self,
        i: usize,
        act: impl FnOnce(&mut Adversary, &mut Ctx<'_>) -> R,
    ) -> Option<R> {
        let mut adversary = self.nodes[i].adversary.take()?;
        let mut rng = adversary.lend_rng();
        let node = &self.nodes[i];
        let (term, is_leader) = node
            .replica
            .as_ref()
            .map_or((Term(0), false), |r| (r.term(), r.is_leader()));
        let checkpoint = node
            .replica
            .as_ref()
            .and_then(|r| r.stable_checkpoint().cloned());
        let mut ctx = Ctx {
            checkpoint,
            cluster: &self.cluster,
            key: &node.key,
            me: node.id,
            term,
            is_leader,
            rng: &mut rng,
            clients: self.clients.len(),
        };
        let out = act(&mut adversary, &mut ctx);
        adversary.return_rng(rng);
        self.nodes[i].adversary = Some(adversary);
        Some(out)
    }

    /// Puts what an adversary decided on the network.
    pub(super) fn perform(&mut self, from: usize, acts: Vec<Act>) {
        for act in acts {
            match act {
                Act::Send { to, message, delay } => {
                    self.send_replica_message(from, to, &message, delay);
                }
                Act::Raw { to, bytes } => {
                    let bytes: Bytes = bytes.into();
                    for t in self.instances_seen_by(from, to) {
                        self.send_bytes_to_node(from, t, &bytes, Duration::ZERO);
                    }
                }
                Act::RawToClient { client, bytes } => {
                    self.send_bytes_to_client(from, client, &bytes.into());
                }
            }
        }
    }

    pub(super) fn adversary_tick(&mut self, i: usize) {
        let acts = self.with_adversary(i, |a, ctx| {
            let acts = a.tick(ctx);
            (acts, a.tick_interval())
        });
        if let Some((acts, every)) = acts {
            self.perform(i, acts);
            if let Some(every) = every {
                self.queue
                    .push(self.now.after(every), Event::AdversaryTick { node: i });
            }
        }
    }
}
