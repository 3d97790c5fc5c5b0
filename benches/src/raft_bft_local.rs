//! raft-bft over an in-process transport: `n` replicas in this process, each on a thread of its
//! own with durable storage (the same `FileStore` and group commit as the network runtime: one
//! sync in flight per replica, on a sync thread), exchanging encoded messages over channels.
//! Every message is decoded and verified by its receiver, as it would be off the network.
//!
//! It isolates the protocol's cost from the network's: the difference to `raft-bft/quic` is
//! QUIC, TLS, framing and the processes. Replies reach a client thread as values (each checked
//! by the core client logic, with its `f + 1` rule and shared reply-root verification).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ledger::Ledger;
use raft_bft::client::{ClientConfig, Destination};
use raft_bft::codec;
use raft_bft::manifest::Cluster;
use raft_bft::message::{Outcome, ReplicaMessage, Reply, SignedTx};
use raft_bft::replica::{Replica, Target};
use raft_bft::types::{ReplicaId, Time};
use raft_bft::verify::{VerifiedReplyRoots, Verifier};
use raft_bft_storage::{FileStore, Store, SyncDone, SyncJob};

use crate::measure;
use crate::system::{replica_key, ClusterSpec, Submission, System};

/// What reaches a replica's thread.
enum Input {
    Peer {
        from: ReplicaId,
        bytes: Arc<Vec<u8>>,
    },
    Tx(SignedTx),
    Synced(SyncDone),
    Stop,
}

/// What reaches the clients' thread.
enum ClientInput {
    Submit {
        client: usize,
        tx: SignedTx,
        done: async_std::channel::Sender<Result<Vec<u8>, String>>,
    },
    Reply(Reply),
    /// A replica found a client's tx invalid (its signature or size).
    Invalid {
        replica: ReplicaId,
        client: raft_bft::types::ClientId,
        ts: u64,
    },
    Stop,
}

/// The running cluster.
pub struct LocalCluster {
    inboxes: Vec<Sender<Input>>,
    clients: Sender<ClientInput>,
    threads: Vec<JoinHandle<Result<(), String>>>,
    leaders: Arc<Vec<AtomicUsize>>,
    commits: Arc<Vec<AtomicU64>>,
}

/// A monotonic clock in microseconds.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(&self) -> Time {
        // Starts at 1 s: time 0 means "never" to some timers.
        Time(1_000_000 + self.0.elapsed().as_micros() as u64)
    }
}

/// Starts the replicas and the clients' thread.
pub fn start(spec: &ClusterSpec) -> Result<Box<dyn System>, String> {
    let cluster = Arc::new(Cluster::new(spec.manifest.clone()).map_err(|e| e.to_string())?);
    let clock = Clock(Instant::now());
    let n = spec.nodes;
    let (inboxes, receivers): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::channel()).unzip();
    let (clients_tx, clients_rx) = mpsc::channel();
    let leaders: Arc<Vec<AtomicUsize>> = Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect());
    let commits: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let mut threads = Vec::new();
    for (i, inbox) in receivers.into_iter().enumerate() {
        let dir = spec.dir.join(format!("node-{i}"));
        let store = FileStore::create(&dir, *cluster.cluster_id()).map_err(|e| format!("{e}"))?;
        let durable = store.load().map_err(|e| format!("{e}"))?;
        let replica = Replica::new(
            cluster.clone(),
            ReplicaId(i as u32),
            replica_key(i),
            spec.accounts.genesis(),
            durable,
            clock.now(),
        )
        .map_err(|e| e.to_string())?;
        let (jobs_tx, jobs_rx) = mpsc::channel::<SyncJob>();
        let synced = inboxes[i].clone();
        spawn(&mut threads, format!("rb{i}-sync"), move || {
            while let Ok(job) = jobs_rx.recv() {
                if synced.send(Input::Synced(job.run())).is_err() {
                    break;
                }
            }
            Ok(())
        })?;
        let node = ReplicaThread {
            replica,
            store,
            verifier: Verifier::new(cluster.clone(), [i as u8 + 1; 32]),
            inbox,
            peers: inboxes.clone(),
            clients: clients_tx.clone(),
            jobs: jobs_tx,
            sync_running: false,
            clock,
            leaders: leaders.clone(),
            commits: commits.clone(),
            limit: cluster.params().max_message_bytes as usize,
        };
        spawn(&mut threads, format!("rb{i}-loop"), move || node.run())?;
    }
    let hub = ClientThread {
        cluster: cluster.clone(),
        accounts: spec.accounts.clone(),
        cores: HashMap::new(),
        waiting: HashMap::new(),
        invalid: HashMap::new(),
        roots: VerifiedReplyRoots::default(),
        replicas: inboxes.clone(),
        clock,
    };
    spawn(&mut threads, "rb-clients".to_string(), move || {
        hub.run(clients_rx)
    })?;
    Ok(Box::new(LocalCluster {
        inboxes,
        clients: clients_tx,
        threads,
        leaders,
        commits,
    }))
}

fn spawn(
    threads: &mut Vec<JoinHandle<Result<(), String>>>,
    name: String,
    f: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> Result<(), String> {
    let handle = std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map_err(|e| format!("cannot start thread {name}: {e}"))?;
    threads.push(handle);
    Ok(())
}

/// Inputs handled before the replica's work is taken (so one `Ready` covers many inputs).
const INPUTS_PER_ROUND: usize = 256;

struct ReplicaThread {
    replica: Replica<Ledger>,
    store: FileStore,
    verifier: Verifier,
    inbox: Receiver<Input>,
    peers: Vec<Sender<Input>>,
    clients: Sender<ClientInput>,
    jobs: Sender<SyncJob>,
    sync_running: bool,
    clock: Clock,
    leaders: Arc<Vec<AtomicUsize>>,
    commits: Arc<Vec<AtomicU64>>,
    limit: usize,
}

impl ReplicaThread {
    fn run(mut self) -> Result<(), String> {
        let me = self.replica.id();
        let mut stopping = false;
        loop {
            let next_tick = self.drain_ready()?;
            if stopping && !self.sync_running {
                tracing::debug!(replica = %me, metrics = ?self.replica.metrics(), "stopped");
                return Ok(());
            }
            let now = self.clock.now();
            let wait = next_tick
                .map_or(Duration::from_millis(50), |t| {
                    Duration::from_micros(t.0.saturating_sub(now.0))
                })
                .min(Duration::from_millis(50));
            let first = match self.inbox.recv_timeout(wait) {
                Ok(input) => Some(input),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            let mut txs = Vec::new();
            let mut messages = Vec::new();
            let mut next = first;
            let mut handled = 0;
            while let Some(input) = next.take() {
                match input {
                    Input::Peer { from, bytes } => messages.push((from, bytes)),
                    Input::Tx(tx) if !stopping => txs.push(tx),
                    Input::Tx(_) => {}
                    Input::Synced(done) => {
                        self.sync_running = false;
                        let durable = self.store.finish_sync(done).map_err(|e| e.to_string())?;
                        if let Some(id) = durable {
                            self.replica.on_persisted(self.clock.now(), id);
                        }
                    }
                    Input::Stop => stopping = true,
                }
                handled += 1;
                if handled < INPUTS_PER_ROUND {
                    next = self.inbox.try_recv().ok();
                }
            }
            let now = self.clock.now();
            for (from, bytes) in messages {
                if stopping {
                    break;
                }
                let verified = codec::decode::<ReplicaMessage>(&bytes, self.limit)
                    .map_err(|e| e.to_string())
                    .and_then(|m| {
                        self.verifier
                            .verify_message(from, m)
                            .map_err(|e| e.to_string())
                    });
                match verified {
                    Ok(m) => self.replica.on_message(now, from, m),
                    Err(_) => self.replica.on_invalid_message(now, from),
                }
            }
            if !txs.is_empty() {
                let senders: Vec<_> = txs.iter().map(|tx| (tx.client, tx.ts)).collect();
                for (checked, (client, ts)) in
                    self.verifier.verify_txs(txs).into_iter().zip(senders)
                {
                    match checked {
                        Ok(tx) => self.replica.on_client_tx(now, tx),
                        // As the network runtime does: an unsigned hint to the client.
                        Err(_) => {
                            let _ = self.clients.send(ClientInput::Invalid {
                                replica: me,
                                client,
                                ts,
                            });
                        }
                    }
                }
            }
            self.replica.on_tick(self.clock.now());
            self.leaders[me.as_usize()].store(self.replica.leader().as_usize(), Ordering::Relaxed);
            self.commits[me.as_usize()].store(self.replica.commit_index().0, Ordering::Relaxed);
        }
    }

    /// Takes the replica's work: appends what must persist and starts a group commit if none
    /// runs, sends the released messages and replies. Returns when to tick next.
    fn drain_ready(&mut self) -> Result<Option<Time>, String> {
        let me = self.replica.id();
        let ready = self.replica.ready();
        if let Some(batch) = &ready.persist {
            self.store.append(batch).map_err(|e| e.to_string())?;
        }
        if !self.sync_running {
            if let Some(job) = self.store.begin_sync().map_err(|e| e.to_string())? {
                self.sync_running = true;
                self.jobs
                    .send(job)
                    .map_err(|_| "the sync thread stopped".to_string())?;
            }
        }
        for out in ready.messages {
            let bytes = Arc::new(codec::encode(&out.message).map_err(|e| e.to_string())?);
            let send = |to: usize| {
                let _ = self.peers[to].send(Input::Peer {
                    from: me,
                    bytes: bytes.clone(),
                });
            };
            match out.to {
                Target::Replica(r) => send(r.as_usize()),
                Target::AllOthers => (0..self.peers.len())
                    .filter(|r| *r != me.as_usize())
                    .for_each(send),
            }
        }
        for reply in ready.replies {
            let _ = self.clients.send(ClientInput::Reply(reply));
        }
        Ok(ready.next_tick)
    }
}

/// Every client's core logic (retries, `f + 1` matching verified replies), on one thread.
struct ClientThread {
    cluster: Arc<Cluster>,
    accounts: Arc<crate::workload::Accounts>,
    cores: HashMap<usize, raft_bft::client::Client>,
    /// Clients with a tx outstanding, and whom to tell.
    waiting: HashMap<usize, async_std::channel::Sender<Result<Vec<u8>, String>>>,
    /// Replicas that found a client's outstanding tx invalid.
    invalid: HashMap<usize, std::collections::BTreeSet<ReplicaId>>,
    roots: VerifiedReplyRoots,
    replicas: Vec<Sender<Input>>,
    clock: Clock,
}

impl ClientThread {
    fn run(mut self, inputs: Receiver<ClientInput>) -> Result<(), String> {
        let index: HashMap<raft_bft::types::ClientId, usize> = (0..self.accounts.len())
            .map(|i| (self.accounts.key(i).public(), i))
            .collect();
        let mut last_tick = Instant::now();
        loop {
            match inputs.recv_timeout(Duration::from_millis(10)) {
                Ok(ClientInput::Submit { client, tx, done }) => {
                    let core = match self.cores.entry(client) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(e) => {
                            let mut core = raft_bft::client::Client::new(
                                self.cluster.clone(),
                                self.accounts.key(client).clone(),
                                ClientConfig::from_params(self.cluster.params()),
                            )
                            .map_err(|e| e.to_string())?;
                            core.share_verified_roots(self.roots.clone());
                            e.insert(core)
                        }
                    };
                    match core.resubmit(self.clock.now(), tx) {
                        Ok(sends) => {
                            self.waiting.insert(client, done);
                            self.invalid.remove(&client);
                            self.transmit(sends);
                        }
                        Err(e) => {
                            let _ = done.try_send(Err(e.to_string()));
                        }
                    }
                }
                Ok(ClientInput::Reply(reply)) => {
                    let Some(&client) = index.get(&reply.client) else {
                        continue;
                    };
                    let Some(core) = self.cores.get_mut(&client) else {
                        continue;
                    };
                    if let Some(accepted) = core.on_reply(self.clock.now(), reply) {
                        if let Some(done) = self.waiting.remove(&client) {
                            let _ = done.try_send(match accepted.outcome {
                                Outcome::Executed { result, .. } => Ok(result),
                                Outcome::Rejected(r) => Err(format!("rejected: {r:?}")),
                            });
                        }
                    }
                }
                Ok(ClientInput::Invalid {
                    replica,
                    client,
                    ts,
                }) => {
                    // f + 1 replicas include a correct one, and whether a signature verifies
                    // is the same for every correct replica: the tx can never execute.
                    let Some(&client) = index.get(&client) else {
                        continue;
                    };
                    let outstanding = self
                        .cores
                        .get(&client)
                        .and_then(|c| c.outstanding())
                        .map(|t| t.ts);
                    if outstanding != Some(ts) {
                        continue;
                    }
                    let refused = self.invalid.entry(client).or_default();
                    refused.insert(replica);
                    if refused.len() > self.cluster.f() {
                        if let Some(core) = self.cores.get_mut(&client) {
                            core.abandon();
                        }
                        if let Some(done) = self.waiting.remove(&client) {
                            let _ =
                                done.try_send(Err("f + 1 replicas found the tx invalid".into()));
                        }
                    }
                }
                Ok(ClientInput::Stop) | Err(RecvTimeoutError::Disconnected) => return Ok(()),
                Err(RecvTimeoutError::Timeout) => {}
            }
            // Retries of txs that waited too long.
            if last_tick.elapsed() >= Duration::from_millis(10) {
                last_tick = Instant::now();
                let now = self.clock.now();
                let mut sends = Vec::new();
                for client in self.waiting.keys() {
                    if let Some(core) = self.cores.get_mut(client) {
                        sends.extend(core.on_tick(now));
                    }
                }
                self.transmit(sends);
            }
        }
    }

    fn transmit(&self, sends: Vec<raft_bft::client::ClientSend>) {
        for send in sends {
            match send.to {
                Destination::Replica(r) => {
                    if let Some(inbox) = self.replicas.get(r.as_usize()) {
                        let _ = inbox.send(Input::Tx(send.tx));
                    }
                }
                Destination::AllReplicas => {
                    for inbox in &self.replicas {
                        let _ = inbox.send(Input::Tx(send.tx.clone()));
                    }
                }
            }
        }
    }
}

impl System for LocalCluster {
    fn submit(&self, client: usize, tx: SignedTx) -> Submission {
        let (done, result) = async_std::channel::bounded(1);
        let sent = self
            .clients
            .send(ClientInput::Submit { client, tx, done })
            .is_ok();
        Box::pin(async move {
            if !sent {
                return Err("the cluster stopped".to_string());
            }
            result
                .recv()
                .await
                .map_err(|_| "the cluster stopped".to_string())?
        })
    }

    fn cpu(&self) -> Vec<Duration> {
        (0..self.inboxes.len())
            .map(|i| measure::threads_cpu(&format!("rb{i}-")))
            .collect()
    }

    fn leader(&self) -> Option<usize> {
        let mut counts = HashMap::new();
        for l in self.leaders.iter() {
            *counts.entry(l.load(Ordering::Relaxed)).or_insert(0) += 1;
        }
        counts.into_iter().max_by_key(|(_, c)| *c).map(|(l, _)| l)
    }

    fn committed_entries(&self) -> Option<u64> {
        let leader = self.leader()?;
        Some(self.commits.get(leader)?.load(Ordering::Relaxed))
    }

    fn shutdown(self: Box<Self>) -> Result<(), String> {
        let _ = self.clients.send(ClientInput::Stop);
        for inbox in &self.inboxes {
            let _ = inbox.send(Input::Stop);
        }
        let LocalCluster {
            inboxes, threads, ..
        } = *self;
        // The sync threads end when their replica thread drops its job sender.
        drop(inboxes);
        let mut errors = Vec::new();
        for t in threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(_) => errors.push("a thread panicked".to_string()),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}
