//! What flows in and out: deliveries to replicas and clients, replica output (persist,
//! messages, replies, ticks) and the network.

use super::*;

/// With disk faults: the probability that a sync is slow (see `sync_latency`).
const SLOW_SYNC_PROB: f64 = 0.01;

/// A one-line summary of a replica message, for traces.
fn describe(msg: &ReplicaMessage) -> String {
    match msg {
        ReplicaMessage::PreAppend(p) => format!(
            "PreAppend(t{} i{} {} txs)",
            p.term,
            p.entry.index,
            p.entry.txs.len()
        ),
        ReplicaMessage::Vote(v) => format!(
            "Vote({:?} t{} i{} by {})",
            v.subject.phase, v.subject.term, v.subject.index, v.replica
        ),
        ReplicaMessage::Append(c) => format!("Append(PC i{})", c.subject.index),
        ReplicaMessage::Commit(c) => format!("Commit(CC i{})", c.subject.index),
        ReplicaMessage::Executed(c) => format!("Executed(EC i{})", c.subject.index),
        ReplicaMessage::Forward(tx) => format!("Forward(ts {})", tx.ts),
        ReplicaMessage::TermChange(tc) => format!(
            "TermChange(t{} from r{}, {} prepared)",
            tc.new_term,
            tc.replica.0,
            tc.prepared.len()
        ),
        ReplicaMessage::NewTerm(nt) => {
            format!("NewTerm(t{}, {} chosen)", nt.new_term, nt.chosen.len())
        }
        ReplicaMessage::FetchChosen { index, .. } => format!("FetchChosen(i{index})"),
        ReplicaMessage::ChosenEntry(e) => format!("ChosenEntry(i{})", e.index),
        ReplicaMessage::Equivocation(p) => format!("Equivocation(t{} i{})", p.term, p.index),
        ReplicaMessage::Heartbeat(hb) => format!(
            "Heartbeat(t{} commit {})",
            hb.term,
            hb.commit.as_ref().map_or(0, |cc| cc.subject.index.0)
        ),
        ReplicaMessage::FetchEntries { from, to } => format!("FetchEntries({from}..={to})"),
        ReplicaMessage::Entries {
            entries,
            certificate,
        } => format!(
            "Entries({} up to i{})",
            entries.len(),
            certificate.subject.index
        ),
        ReplicaMessage::FetchCheckpoint {
            above,
            index,
            offset,
        } => format!("FetchCheckpoint(above i{above}, i{index} at {offset})"),
        ReplicaMessage::CheckpointChunk(c) => format!(
            "CheckpointChunk(i{}, {}+{} of {})",
            c.certificate.subject.index,
            c.offset,
            c.data.len(),
            c.total
        ),
        ReplicaMessage::FetchStatus => "FetchStatus".to_string(),
        ReplicaMessage::FetchNewTerm => "FetchNewTerm".to_string(),
        ReplicaMessage::Status(c) => format!("Status({:?} i{})", c.subject.phase, c.subject.index),
    }
}

impl<W: Workload> Simulation<W> {
    pub(super) fn deliver_replica_message(
        &mut self,
        to: usize,
        from: usize,
        incarnation: u64,
        bytes: &Bytes,
        intact: bool,
    ) {
        if self.nodes[to].incarnation != incarnation || !self.nodes[to].is_up() {
            self.counters.messages_to_crashed += 1;
            return;
        }
        if self.net.cut(Endpoint::Replica(from), Endpoint::Replica(to)) {
            self.counters.messages_partitioned += 1;
            return;
        }
        let limit = self.cluster.params().max_message_bytes as usize;
        let msg = match codec::decode::<ReplicaMessage>(bytes, limit) {
            Ok(m) => m,
            Err(e) => {
                self.count_decode_error("replica message", &e);
                self.report_invalid(to, from, intact);
                return;
            }
        };
        self.counters.messages_delivered += 1;
        let sender = self.nodes[from].id;
        self.trace(|| format!("#{from}(r{}) -> #{to} {}", sender.0, describe(&msg)));
        if let Some((deliver, acts)) =
            self.with_adversary(to, |a, ctx| a.incoming(ctx, sender, &msg, bytes))
        {
            self.perform(to, acts);
            if !deliver {
                return;
            }
        }
        let kind = msg.kind();
        let node = &mut self.nodes[to];
        match node.verifier.verify_message(sender, msg) {
            Ok(verified) => {
                if let Some(r) = node.replica.as_mut() {
                    r.on_message(self.now, sender, verified);
                }
                self.drain(to);
            }
            Err(e) => {
                self.trace(|| format!("r{to} refused it: {e}"));
                let key = format!("{kind}: {}", e.kind());
                *self.counters.verify_errors.entry(key).or_insert(0) += 1;
                self.report_invalid(to, from, intact);
            }
        }
    }

    /// Tells replica `to` that node `from` sent it something invalid, if the bytes arrived
    /// intact (what an authenticated, integrity-protected connection guarantees).
    fn report_invalid(&mut self, to: usize, from: usize, intact: bool) {
        if !intact {
            return;
        }
        let sender = self.nodes[from].id;
        if let Some(r) = self.nodes[to].replica.as_mut() {
            r.on_invalid_message(self.now, sender);
            self.drain(to);
        }
    }

    pub(super) fn deliver_client_tx(&mut self, to: usize, incarnation: u64, bytes: &[u8]) {
        if self.nodes[to].incarnation != incarnation || !self.nodes[to].is_up() {
            self.counters.messages_to_crashed += 1;
            return;
        }
        if self.net.cut(Endpoint::Client, Endpoint::Replica(to)) {
            self.counters.messages_partitioned += 1;
            return;
        }
        let limit = self.cluster.params().max_message_bytes as usize;
        let tx = match codec::decode::<SignedTx>(bytes, limit) {
            Ok(t) => t,
            Err(e) => {
                self.count_decode_error("client tx", &e);
                return;
            }
        };
        self.counters.messages_delivered += 1;
        self.trace(|| format!("client -> #{to} tx (client {}, ts {})", tx.client, tx.ts));
        if let Some(false) = self.nodes[to]
            .adversary
            .as_ref()
            .map(|a| a.accepts_client_tx(&tx))
        {
            return;
        }
        let node = &mut self.nodes[to];
        match node.verifier.verify_tx(tx) {
            Ok(verified) => {
                if let Some(r) = node.replica.as_mut() {
                    r.on_client_tx(self.now, verified);
                }
                self.drain(to);
            }
            Err(e) => {
                let key = format!("client tx: {}", e.kind());
                *self.counters.verify_errors.entry(key).or_insert(0) += 1;
            }
        }
    }

    pub(super) fn deliver_reply(&mut self, client: usize, from: usize, bytes: &[u8]) {
        if self.net.cut(Endpoint::Replica(from), Endpoint::Client) {
            self.counters.messages_partitioned += 1;
            return;
        }
        let limit = self.cluster.params().max_message_bytes as usize;
        let reply = match codec::decode::<Reply>(bytes, limit) {
            Ok(r) => r,
            Err(e) => {
                self.count_decode_error("reply", &e);
                return;
            }
        };
        self.counters.messages_delivered += 1;
        let now = self.now;
        let c = &mut self.clients[client];
        let Some(accepted) = c.client.on_reply(now, reply) else {
            return;
        };
        if self.config.trace {
            eprintln!(
                "{:>10} client {client} accepted ts {}: {:?}",
                now.0, accepted.ts, accepted.outcome
            );
        }
        match c.outstanding.take() {
            Some(position) => self.history.accept(position, now, accepted.outcome),
            None => {
                self.violation(format!(
                    "client {client} accepted ts {} while the simulator knew of no outstanding tx",
                    accepted.ts
                ));
            }
        }
        let c = &mut self.clients[client];
        c.tick.clear();
        if c.remaining > 0 {
            let think = network::uniform(&mut self.rng, Duration::ZERO, self.config.max_think_time);
            self.queue.push(now.after(think), Event::Submit { client });
        } else {
            self.maybe_finish();
        }
    }

    pub(super) fn persisted(&mut self, node: usize, incarnation: u64, batch: u64) {
        let n = &mut self.nodes[node];
        if n.incarnation != incarnation || !n.is_up() {
            return; // the batch was lost in a crash
        }
        let shadowed = self.shadows.get(node).is_some_and(Option::is_some);
        let copy = match n.disk.complete_copy(batch, shadowed) {
            Ok(copy) => copy,
            Err(e) => {
                self.violation(format!("simulator: replica {node}: {e}"));
                return;
            }
        };
        if let Some(copy) = copy {
            self.shadow(node, |s| s.persisted(&copy));
        }
        let n = &mut self.nodes[node];
        self.counters.persisted_batches += 1;
        if let Some(r) = n.replica.as_mut() {
            r.on_persisted(self.now, batch);
        }
        self.drain(node);
    }

    pub(super) fn submit(&mut self, client: usize) {
        let c = &mut self.clients[client];
        if c.remaining == 0 || c.outstanding.is_some() {
            return;
        }
        let op_id = ((client as u64) << 32) | c.submitted;
        let op = self.workload.next_op(&mut self.rng, client, op_id);
        let c = &mut self.clients[client];
        match c.client.submit(self.now, op.clone()) {
            Ok(sends) => {
                let ts = c.client.last_ts();
                let position = self.history.invoke(client, c.key, ts, op, self.now);
                c.outstanding = Some(position);
                c.remaining -= 1;
                c.submitted += 1;
                for s in sends {
                    self.send_client_tx(client, s);
                }
                self.arm_client_tick(client);
            }
            Err(e) => self.violation(format!("client {client} refused to submit: {e}")),
        }
    }

    pub(super) fn arm_client_tick(&mut self, client: usize) {
        let c = &mut self.clients[client];
        let Some(at) = c.client.next_deadline() else {
            return;
        };
        let at = at.max(self.now);
        if let Some(generation) = c.tick.arm(at) {
            self.queue
                .push(at, Event::ClientTick { client, generation });
        }
    }

    // ----- output -----

    /// Takes the replica's output: persist batch to the disk, messages and replies to the
    /// network (after the persist-before-speak check), next tick to the queue.
    pub(super) fn drain(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let Some(replica) = node.replica.as_mut() else {
            return;
        };
        let ready = replica.ready();
        let incarnation = node.incarnation;
        if let Some(batch) = ready.persist {
            let latency = self.sync_latency();
            let id = batch.id;
            let at = self.nodes[i].disk.submit(batch, self.now, latency);
            self.queue.push(
                at,
                Event::Persisted {
                    node: i,
                    incarnation,
                    batch: id,
                },
            );
            if std::mem::take(&mut self.crash_mid_write[i]) {
                // Strictly before the sync completes, so that the batch is still unsynced.
                let before = Duration::from_micros(at.0.saturating_sub(self.now.0 + 1));
                let strike = network::uniform(&mut self.rng, Duration::ZERO, before);
                self.queue.push(
                    self.now.after(strike),
                    Event::CrashMidWrite {
                        node: i,
                        incarnation,
                    },
                );
            }
        }
        let byzantine = self.nodes[i].is_byzantine();
        for m in ready.messages {
            if byzantine {
                // Its adversary decides what actually goes out; its words are not checked.
                if let Some(acts) = self.with_adversary(i, |a, ctx| a.outgoing(ctx, m)) {
                    self.perform(i, acts);
                }
                continue;
            }
            if let Some(why) = self.nodes[i].disk.unjustified(&m.message) {
                self.violation(format!("persist-before-speak: r{i} {why}"));
            }
            if let Some(why) = self.nodes[i].spoken.record(&m.message) {
                self.violation(format!("equivocation: r{i} {why}"));
            }
            self.send_replica_message(i, m.to, &m.message, Duration::ZERO);
        }
        for r in ready.replies {
            if byzantine {
                if let Some(Some(r)) = self.with_adversary(i, |a, ctx| a.reply(ctx, r)) {
                    self.send_reply(i, &r);
                }
                continue;
            }
            if let Some(why) = self.nodes[i].disk.unjustified_reply(&r) {
                self.violation(format!("persist-before-speak: r{i} {why}"));
            }
            self.send_reply(i, &r);
        }
        if let Some(at) = ready.next_tick {
            // Never in the past, and strictly after now: a tick due now runs after this input.
            let at = at.max(Time(self.now.0 + 1));
            if let Some(generation) = self.nodes[i].tick.arm(at) {
                self.queue.push(
                    at,
                    Event::ReplicaTick {
                        node: i,
                        incarnation,
                        generation,
                    },
                );
            }
        }
        // After every step: a checkpoint may compact what was committed in this very step's
        // predecessors, and the monitor must see each committed entry while it is held.
        self.observe(i);
    }

    /// How long the next sync takes. With disk faults, now and then one takes 10 to 50 times
    /// the longest normal latency (a slow disk); as the disk completes in order, the batches
    /// behind it wait too.
    fn sync_latency(&mut self) -> Duration {
        let (min, max) = (self.config.min_disk_latency, self.config.max_disk_latency);
        if self.config.disk_faults && self.rng.random_bool(SLOW_SYNC_PROB) {
            self.counters.slow_syncs += 1;
            return network::uniform(&mut self.rng, max * 10, max * 50);
        }
        network::uniform(&mut self.rng, min, max)
    }

    /// Sends a message from node `from` to the nodes `to` stands for, after an extra delay.
    pub(super) fn send_replica_message(
        &mut self,
        from: usize,
        to: Target,
        message: &ReplicaMessage,
        delay: Duration,
    ) {
        let bytes: Bytes = match codec::encode(message) {
            Ok(b) => b.into(),
            Err(e) => {
                self.violation(format!(
                    "r{from} produced a message that does not encode: {e}"
                ));
                return;
            }
        };
        if let Target::Replica(r) = to {
            if r.as_usize() >= self.cluster.n() || r == self.nodes[from].id {
                self.violation(format!("r{from} sent a {} to r{r}", message.kind()));
                return;
            }
        }
        for t in self.nodes_for(from, to) {
            self.send_bytes_to_node(from, t, &bytes, delay);
        }
    }

    /// Puts bytes on the wire from node `from` to node `to`.
    pub(super) fn send_bytes_to_node(
        &mut self,
        from: usize,
        to: usize,
        bytes: &Bytes,
        delay: Duration,
    ) {
        let incarnation = self.nodes[to].incarnation;
        self.transmit(
            Endpoint::Replica(from),
            Endpoint::Replica(to),
            bytes,
            delay,
            |bytes, intact| Event::ReplicaMessage {
                to,
                from,
                incarnation,
                bytes,
                intact,
            },
        );
    }

    pub(super) fn send_reply(&mut self, from: usize, reply: &Reply) {
        let Some(&client) = self.client_by_key.get(&reply.client) else {
            self.violation(format!("r{from} replied to a client that does not exist"));
            return;
        };
        let bytes: Bytes = match codec::encode(reply) {
            Ok(b) => b.into(),
            Err(e) => {
                self.violation(format!(
                    "r{from} produced a reply that does not encode: {e}"
                ));
                return;
            }
        };
        self.send_bytes_to_client(from, client, &bytes);
    }

    /// Puts bytes on the wire from node `from` to client `client`.
    pub(super) fn send_bytes_to_client(&mut self, from: usize, client: usize, bytes: &Bytes) {
        self.transmit(
            Endpoint::Replica(from),
            Endpoint::Client,
            bytes,
            Duration::ZERO,
            |bytes, _| Event::Reply {
                client,
                from,
                bytes,
            },
        );
    }

    pub(super) fn send_client_tx(&mut self, client: usize, send: ClientSend) {
        let bytes: Bytes = match codec::encode(&send.tx) {
            Ok(b) => b.into(),
            Err(e) => {
                self.violation(format!(
                    "client {client} produced a tx that does not encode: {e}"
                ));
                return;
            }
        };
        // Clients reach every instance of a replica (both twins).
        let targets: Vec<usize> = match send.to {
            Destination::Replica(r) => {
                if r.as_usize() >= self.cluster.n() {
                    self.violation(format!("client {client} sent a tx to non-member {r}"));
                    return;
                }
                (0..self.nodes.len())
                    .filter(|&t| self.nodes[t].id == r)
                    .collect()
            }
            Destination::AllReplicas => (0..self.nodes.len()).collect(),
        };
        for to in targets {
            let incarnation = self.nodes[to].incarnation;
            self.transmit(
                Endpoint::Client,
                Endpoint::Replica(to),
                &bytes,
                Duration::ZERO,
                |bytes, _| Event::ClientTx {
                    to,
                    incarnation,
                    bytes,
                },
            );
        }
    }

    /// Puts one message on the network: zero, one or two copies, each with its delay.
    pub(super) fn transmit(
        &mut self,
        from: Endpoint,
        to: Endpoint,
        bytes: &Bytes,
        extra_delay: Duration,
        event: impl Fn(Bytes, bool) -> Event,
    ) {
        self.counters.messages_sent += 1;
        if let Endpoint::Replica(t) = to {
            if !self.nodes[t].is_up() {
                self.counters.messages_to_crashed += 1;
                return;
            }
        }
        let t = self.net.transmit(&mut self.rng, from, to);
        if self.config.trace && t.copies.is_empty() {
            self.trace(|| format!("{from:?} -> {to:?} lost (partitioned: {})", t.partitioned));
        }
        if t.partitioned {
            self.counters.messages_partitioned += 1;
        }
        if t.dropped {
            self.counters.messages_dropped += 1;
        }
        if t.duplicated {
            self.counters.messages_duplicated += 1;
        }
        for (delay, corrupt) in t.copies {
            let copy = if corrupt {
                self.counters.messages_corrupted += 1;
                let mut owned = bytes.to_vec();
                network::corrupt(&mut self.rng, &mut owned);
                owned.into()
            } else {
                Rc::clone(bytes)
            };
            // The second argument: the copy arrives intact (a real transport's integrity check
            // would have dropped a corrupted one).
            self.queue
                .push(self.now.after(delay + extra_delay), event(copy, !corrupt));
        }
    }
}
