//! The runtime that drives one replica: storage, timers, the network, and the order they go in.
//!
//! One event loop owns the [`Replica`] and its [`FileStore`]. Inputs arrive already verified
//! (see the verification pool); the loop feeds them in, takes the replica's `Ready`, appends
//! what must persist, and starts a group commit on a blocking thread whenever none is running.
//! The replica releases messages and replies only after [`Replica::on_persisted`], which the
//! loop calls only when the sync covering the batch has returned: persist-before-speak is the
//! core's rule, and the runtime cannot break it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_std::channel::{self, Receiver, Sender};
use async_std::task;
use raft_bft::crypto::KeyPair;
use raft_bft::manifest::{Cluster, Manifest};
use raft_bft::replica::{Replica, Target};
use raft_bft::state_machine::StateMachine;
use raft_bft::types::{ClientId, ReplicaId, Time};
use raft_bft::verify::{CheckedTx, Verified, VerifiedMessage};
use raft_bft_storage::{FileStore, StorageError, Store, SyncDone};
use tracing::Instrument;

use crate::error::NetError;
use crate::limits::Limits;
use crate::stats::NetStats;
use crate::tls::{self, TlsIdentity};
use crate::transport::{self, close_code, Inbound, PeerLinks};
use crate::verify::{self, ConnId};
use crate::wire::{ClientResponse, StatusReport};

/// How a node treats its data directory when it starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartMode {
    /// Open the store in the directory, or create one if there is none (a new replica).
    ///
    /// A replica that ran before and lost its disk must not start this way: it would vote
    /// again where it may have voted before. Start it with [`StartMode::Rebuild`].
    #[default]
    OpenOrCreate,
    /// Open the store; fail if there is none.
    Open,
    /// The replica lost its durable state: create a new store and rebuild from the peers
    /// (it votes again only once it has caught up; it counts against `f` until then).
    Rebuild,
}

/// Everything a node needs to start.
#[derive(Clone)]
pub struct NodeConfig {
    /// The cluster's manifest (every replica must use the same one).
    pub manifest: Manifest,
    /// This replica's id.
    pub id: ReplicaId,
    /// This replica's key (the manifest lists its public half).
    pub key: KeyPair,
    /// Where the write-ahead log lives.
    pub data_dir: PathBuf,
    /// The UDP address to bind; defaults to this replica's manifest address.
    pub listen: Option<SocketAddr>,
    /// A UDP socket bound already (by a supervisor, or a test that must hold its ports from
    /// the moment it writes the manifest), used instead of binding `listen`.
    pub socket: Option<Arc<std::net::UdpSocket>>,
    /// How to treat the data directory.
    pub start: StartMode,
    /// Network limits.
    pub limits: Limits,
    /// Signature verification threads; defaults to the number of cores.
    pub verify_threads: Option<usize>,
    /// Makes this replica Byzantine: every message it sends passes through this rewrite
    /// first. Only for tests and demonstrations of the faults the protocol tolerates.
    pub byzantine: Option<crate::transport::Rewrite>,
}

impl NodeConfig {
    /// A configuration with default limits.
    pub fn new(
        manifest: Manifest,
        id: ReplicaId,
        key: KeyPair,
        data_dir: impl Into<PathBuf>,
    ) -> Self {
        NodeConfig {
            manifest,
            id,
            key,
            data_dir: data_dir.into(),
            listen: None,
            socket: None,
            start: StartMode::default(),
            limits: Limits::default(),
            verify_threads: None,
            byzantine: None,
        }
    }
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("id", &self.id)
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field("start", &self.start)
            .field("limits", &self.limits)
            .field("byzantine", &self.byzantine.is_some())
            .finish_non_exhaustive()
    }
}

/// A monotonic clock in microseconds, started at the wall-clock time the node started.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    start: Instant,
    base: u64,
}

impl Clock {
    pub(crate) fn new() -> Self {
        let base = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        Clock {
            start: Instant::now(),
            base,
        }
    }

    pub(crate) fn now(&self) -> Time {
        Time(self.base + self.start.elapsed().as_micros() as u64)
    }
}

type Inspect<S> = Box<dyn FnOnce(&Replica<S>) + Send>;

/// What reaches the event loop.
pub(crate) enum Event<S> {
    Peer(ReplicaId, Verified<VerifiedMessage>),
    PeerInvalid(ReplicaId),
    ClientTx {
        conn: ConnId,
        respond: Sender<ClientResponse>,
        tx: Verified<CheckedTx>,
    },
    /// A client subscribed (with a valid signature) to its replies on a connection.
    Subscribe {
        conn: ConnId,
        respond: Sender<ClientResponse>,
        client: ClientId,
    },
    ClientClosed(ConnId),
    Synced(SyncDone),
    /// The sync job panicked: what reached the disk is unknown.
    SyncLost,
    Status(Sender<StatusReport>),
    Inspect(Inspect<S>),
    Shutdown(Sender<()>),
}

/// A running replica. Dropping the handle does not stop it; call [`Node::shutdown`].
pub struct Node<S> {
    id: ReplicaId,
    events: Sender<Event<S>>,
    local_addr: SocketAddr,
    stats: Arc<NetStats>,
    main: task::JoinHandle<Result<(), NetError>>,
}

impl<S> std::fmt::Debug for Node<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl<S: StateMachine + Send + 'static> Node<S> {
    /// Opens the data directory, starts the replica on `app`, binds the endpoint and starts
    /// serving peers and clients.
    pub async fn start(config: NodeConfig, app: S) -> Result<Self, NetError> {
        let cluster = Arc::new(Cluster::new(config.manifest.clone())?);
        let id = config.id;
        let info = cluster
            .manifest()
            .replicas
            .get(id.as_usize())
            .ok_or_else(|| NetError::Config(format!("replica {id} is not in the manifest")))?;
        let listen = match config.listen {
            Some(a) => a,
            None => transport::resolve(&info.address)?,
        };
        let clock = Clock::new();
        let storage_err = |source| NetError::Storage {
            dir: config.data_dir.clone(),
            source,
        };
        let cid = *cluster.cluster_id();
        let (store, replica) = match config.start {
            StartMode::Rebuild => {
                let store = FileStore::create(&config.data_dir, cid).map_err(storage_err)?;
                let replica =
                    Replica::rebuild(cluster.clone(), id, config.key.clone(), app, clock.now())?;
                (store, replica)
            }
            mode => {
                let store = match FileStore::open(&config.data_dir, cid) {
                    Ok(store) => store,
                    Err(StorageError::NoStore { .. }) if mode == StartMode::OpenOrCreate => {
                        FileStore::create(&config.data_dir, cid).map_err(storage_err)?
                    }
                    Err(e) => return Err(storage_err(e)),
                };
                let durable = store.load().map_err(storage_err)?;
                let replica = Replica::new(
                    cluster.clone(),
                    id,
                    config.key.clone(),
                    app,
                    durable,
                    clock.now(),
                )?;
                (store, replica)
            }
        };
        let identity = TlsIdentity::new(&config.key)?;
        let server = tls::server_config(&cluster, &identity, &config.limits)?;
        let socket = match &config.socket {
            Some(s) => s.try_clone(),
            None => std::net::UdpSocket::bind(listen),
        }
        .map_err(|source| NetError::Bind {
            addr: listen,
            source,
        })?;
        let endpoint = tls::endpoint(&config.key, server, socket)?;
        let local_addr = endpoint.local_addr().map_err(|source| NetError::Bind {
            addr: listen,
            source,
        })?;
        let stats = Arc::new(NetStats::default());
        let (events_tx, events_rx) = channel::bounded(config.limits.event_queue);
        let (verify_peers, peers_rx) = channel::bounded(config.limits.verify_queue);
        let (verify_clients, clients_rx) = channel::bounded(config.limits.verify_queue);
        let verify_rx = verify::Queues {
            peers: peers_rx,
            clients: clients_rx,
        };
        let threads = config
            .verify_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        let workers = verify::start(
            &cluster,
            threads,
            verify_rx,
            events_tx.clone(),
            stats.clone(),
        )?;
        let links = PeerLinks::start(
            &cluster,
            id,
            &endpoint,
            &identity,
            &config.limits,
            stats.clone(),
            config.byzantine.clone(),
        )?;
        if config.byzantine.is_some() {
            tracing::warn!(replica = %id, "this replica rewrites what it sends: it is Byzantine");
        }
        let inbound = Inbound {
            cluster: cluster.clone(),
            me: id,
            limits: config.limits.clone(),
            verify_peers,
            verify_clients,
            events: events_tx.clone(),
            stats: stats.clone(),
            clients: Arc::new(AtomicUsize::new(0)),
            handshakes: Arc::new(AtomicUsize::new(0)),
            next_conn: Arc::new(AtomicU64::new(1)),
            peers: Arc::new(Mutex::new(HashMap::new())),
        };
        let span = tracing::info_span!("replica", id = %id);
        let accept =
            task::spawn(transport::accept_loop(endpoint.clone(), inbound).instrument(span.clone()));
        tracing::info!(parent: &span, addr = %local_addr, data = %config.data_dir.display(), "replica started");
        let event_loop = EventLoop {
            replica,
            store,
            data_dir: config.data_dir.clone(),
            clock,
            links,
            events: events_rx,
            self_events: events_tx.clone(),
            sync_running: false,
            routes: HashMap::new(),
            conn_clients: HashMap::new(),
            clients_per_connection: config.limits.clients_per_connection,
            stats: stats.clone(),
            last_view: None,
            next_tick: None,
            next_report: Time(0),
        };
        // The event loop runs on a thread of its own, so that no load on the executor's
        // threads (connections, handshakes) can delay the replica's timers.
        let main = task::spawn_blocking(move || {
            task::block_on(
                async move {
                    let result = event_loop.run().await;
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "replica stopped");
                    }
                    endpoint.close(close_code::SHUTDOWN.into(), b"shutdown");
                    let _ =
                        async_std::future::timeout(Duration::from_secs(1), endpoint.wait_idle())
                            .await;
                    accept.cancel().await;
                    drop(workers);
                    result
                }
                .instrument(span),
            )
        });
        Ok(Node {
            id,
            events: events_tx,
            local_addr,
            stats,
            main,
        })
    }

    /// The address the endpoint listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The replica's id.
    pub fn id(&self) -> ReplicaId {
        self.id
    }

    /// The node's network counters.
    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// The replica's view of the cluster.
    pub async fn status(&self) -> Result<StatusReport, NetError> {
        let (tx, rx) = channel::bounded(1);
        self.events
            .send(Event::Status(tx))
            .await
            .map_err(|_| NetError::Stopped("the event loop is gone".into()))?;
        rx.recv()
            .await
            .map_err(|_| NetError::Stopped("the event loop is gone".into()))
    }

    /// Runs `f` on the replica, between two events, and returns what it returns.
    pub async fn inspect<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Replica<S>) -> R + Send + 'static,
    ) -> Result<R, NetError> {
        let (tx, rx) = channel::bounded(1);
        let job: Inspect<S> = Box::new(move |r| {
            let _ = tx.try_send(f(r));
        });
        self.events
            .send(Event::Inspect(job))
            .await
            .map_err(|_| NetError::Stopped("the event loop is gone".into()))?;
        rx.recv()
            .await
            .map_err(|_| NetError::Stopped("the event loop is gone".into()))
    }

    /// Stops the node gracefully: everything the replica handed over is made durable and the
    /// messages it releases are sent (with a short grace period), then the endpoint closes.
    pub async fn shutdown(self) -> Result<(), NetError> {
        let (tx, rx) = channel::bounded(1);
        if self.events.send(Event::Shutdown(tx)).await.is_ok() {
            let _ = rx.recv().await;
        }
        self.main.await
    }

    /// Waits until the node stops on its own (a storage failure) and returns why.
    pub async fn wait(self) -> Result<(), NetError> {
        self.main.await
    }
}

struct EventLoop<S> {
    replica: Replica<S>,
    store: FileStore,
    data_dir: PathBuf,
    clock: Clock,
    links: PeerLinks,
    events: Receiver<Event<S>>,
    self_events: Sender<Event<S>>,
    sync_running: bool,
    /// Where each client's replies go: the connection that last sent a verified tx of it.
    routes: HashMap<ClientId, (ConnId, Sender<ClientResponse>)>,
    conn_clients: HashMap<ConnId, KeysInOrder>,
    clients_per_connection: usize,
    stats: Arc<NetStats>,
    last_view: Option<(raft_bft::types::Term, bool)>,
    next_tick: Option<Time>,
    next_report: Time,
}

/// Client keys in the order they were first routed to a connection.
#[derive(Default)]
struct KeysInOrder {
    set: HashSet<ClientId>,
    order: std::collections::VecDeque<ClientId>,
}

impl KeysInOrder {
    /// True if `client` is new here.
    fn insert(&mut self, client: ClientId) -> bool {
        let new = self.set.insert(client);
        if new {
            self.order.push_back(client);
        }
        new
    }

    fn len(&self) -> usize {
        self.set.len()
    }

    fn pop_oldest(&mut self) -> Option<ClientId> {
        while let Some(c) = self.order.pop_front() {
            if self.set.remove(&c) {
                return Some(c);
            }
        }
        None
    }

    fn remove(&mut self, client: &ClientId) {
        // Its place in `order` is skipped when it comes up.
        self.set.remove(client);
    }
}

/// Most events handled before the replica's work is taken (so one `Ready` covers many inputs).
const EVENTS_PER_ROUND: usize = 256;
/// How often the counters are logged (at debug level).
const REPORT_EVERY: Duration = Duration::from_secs(2);
/// The loop wakes at least this often even with no timer due.
const MAX_IDLE: Duration = Duration::from_millis(200);

impl<S: StateMachine + Send + 'static> EventLoop<S> {
    async fn run(mut self) -> Result<(), NetError> {
        loop {
            self.drain_ready()?;
            let wait = self.until_next_tick();
            let first = match async_std::future::timeout(wait, self.events.recv()).await {
                Ok(Ok(event)) => Some(event),
                Ok(Err(_)) => return self.finish(None).await,
                Err(_) => None,
            };
            let mut next = first;
            let mut handled = 0;
            while let Some(event) = next.take() {
                if let Event::Shutdown(done) = event {
                    return self.finish(Some(done)).await;
                }
                self.handle(event)?;
                handled += 1;
                if handled < EVENTS_PER_ROUND {
                    next = self.events.try_recv().ok();
                }
            }
            let now = self.clock.now();
            self.replica.on_tick(now);
            self.report(now);
        }
    }

    /// Logs the node's counters every few seconds (at debug level).
    fn report(&mut self, now: Time) {
        if now < self.next_report {
            return;
        }
        self.next_report = now.after(REPORT_EVERY);
        let s = &self.stats;
        tracing::debug!(
            term = %self.replica.term(),
            commit = %self.replica.commit_index(),
            applied = %self.replica.applied_index(),
            peer_messages = NetStats::get(&s.peer_messages),
            invalid_peer_messages = NetStats::get(&s.invalid_peer_messages),
            client_txs = NetStats::get(&s.client_txs),
            dropped_frames = NetStats::get(&s.dropped_frames),
            syncs = NetStats::get(&s.syncs),
            held = self.replica.held_messages(),
            "stats"
        );
    }

    fn until_next_tick(&mut self) -> Duration {
        // `ready()` was just drained; ask again for the deadline without taking work.
        let now = self.clock.now();
        match self.next_tick {
            Some(t) if t > now => t.since(now).min(MAX_IDLE),
            Some(_) => Duration::ZERO,
            None => MAX_IDLE,
        }
    }

    fn handle(&mut self, event: Event<S>) -> Result<(), NetError> {
        let now = self.clock.now();
        match event {
            Event::Peer(from, msg) => self.replica.on_message(now, from, msg),
            Event::PeerInvalid(from) => self.replica.on_invalid_message(now, from),
            Event::ClientTx { conn, respond, tx } => {
                // A signed tx can be replayed by anyone who saw it (a Byzantine replica sees
                // them all), so it never takes a live route away: only a subscription, bound
                // to its connection, does.
                let client = tx.tx.client;
                let live = self
                    .routes
                    .get(&client)
                    .is_some_and(|(_, r)| !r.is_closed());
                if !live {
                    self.route(client, conn, respond);
                }
                self.replica.on_client_tx(now, tx);
            }
            Event::Subscribe {
                conn,
                respond,
                client,
            } => self.route(client, conn, respond),
            Event::ClientClosed(conn) => {
                let keys = self.conn_clients.remove(&conn).unwrap_or_default();
                for client in keys.set {
                    if self.routes.get(&client).is_some_and(|(c, _)| *c == conn) {
                        self.routes.remove(&client);
                    }
                }
            }
            Event::Synced(done) => {
                self.sync_running = false;
                let durable = self
                    .store
                    .finish_sync(done)
                    .map_err(|source| NetError::Storage {
                        dir: self.data_dir.clone(),
                        source,
                    })?;
                self.stats.count(&self.stats.syncs);
                if let Some(id) = durable {
                    self.replica.on_persisted(now, id);
                }
            }
            Event::SyncLost => {
                let source = self.store.abandon_sync();
                return Err(NetError::Storage {
                    dir: self.data_dir.clone(),
                    source,
                });
            }
            Event::Status(reply) => {
                let _ = reply.try_send(self.status());
            }
            Event::Inspect(f) => f(&self.replica),
            Event::Shutdown(_) => {}
        }
        Ok(())
    }

    /// Sends `client`'s replies to `conn`. A connection holds routes for at most
    /// `clients_per_connection` keys (the oldest goes first), and a closed one gets none (an
    /// input can arrive after its connection closed).
    fn route(&mut self, client: ClientId, conn: ConnId, respond: Sender<ClientResponse>) {
        if respond.is_closed() {
            return;
        }
        if let Some((old, _)) = self.routes.insert(client, (conn, respond)) {
            if old != conn {
                if let Some(set) = self.conn_clients.get_mut(&old) {
                    set.remove(&client);
                }
            }
        }
        let keys = self.conn_clients.entry(conn).or_default();
        if keys.insert(client) {
            while keys.len() > self.clients_per_connection {
                let Some(oldest) = keys.pop_oldest() else {
                    break;
                };
                if self.routes.get(&oldest).is_some_and(|(c, _)| *c == conn) {
                    self.routes.remove(&oldest);
                }
            }
        }
    }

    fn status(&self) -> StatusReport {
        let r = &self.replica;
        StatusReport {
            replica: r.id(),
            term: r.term(),
            leader: r.leader(),
            changing_term: r.is_changing_term(),
            commit_index: r.commit_index(),
            applied_index: r.applied_index(),
            last_index: r.last_index(),
            checkpoint_index: r.checkpoint_index(),
            rebuilding: r.is_rebuilding(),
        }
    }

    /// Takes the replica's work: appends what must persist (and starts a sync if none runs),
    /// sends what was released, routes replies.
    fn drain_ready(&mut self) -> Result<(), NetError> {
        let ready = self.replica.ready();
        self.next_tick = ready.next_tick;
        if let Some(batch) = &ready.persist {
            self.store
                .append(batch)
                .map_err(|source| NetError::Storage {
                    dir: self.data_dir.clone(),
                    source,
                })?;
        }
        self.start_sync()?;
        for out in &ready.messages {
            let to = match out.to {
                Target::Replica(r) => Some(r),
                Target::AllOthers => None,
            };
            self.links.send(to, &out.message);
        }
        for reply in ready.replies {
            if let Some((_, respond)) = self.routes.get(&reply.client) {
                if respond.try_send(ClientResponse::Reply(reply)).is_err() {
                    self.stats.count(&self.stats.dropped_frames);
                }
            }
        }
        self.log_view_changes();
        Ok(())
    }

    fn log_view_changes(&mut self) {
        let view = (self.replica.term(), self.replica.is_changing_term());
        if self.last_view != Some(view) {
            self.last_view = Some(view);
            tracing::info!(
                term = %view.0,
                leader = %self.replica.leader(),
                changing = view.1,
                commit = %self.replica.commit_index(),
                "view"
            );
        }
    }

    /// Starts a group commit of everything appended, on a blocking thread, unless one runs.
    fn start_sync(&mut self) -> Result<(), NetError> {
        if self.sync_running {
            return Ok(());
        }
        let job = self
            .store
            .begin_sync()
            .map_err(|source| NetError::Storage {
                dir: self.data_dir.clone(),
                source,
            })?;
        if let Some(job) = job {
            self.sync_running = true;
            let events = self.self_events.clone();
            task::spawn(async move {
                let run =
                    move || std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run()));
                let event = match task::spawn_blocking(run).await {
                    Ok(done) => Event::Synced(done),
                    Err(_) => Event::SyncLost,
                };
                let _ = events.send(event).await;
            });
        }
        Ok(())
    }

    /// Graceful stop: make everything handed over durable, release and send what depends on
    /// it, close the links.
    async fn finish(mut self, done: Option<Sender<()>>) -> Result<(), NetError> {
        // Wait for syncs until nothing is left to persist.
        loop {
            self.drain_ready()?;
            if !self.sync_running {
                break;
            }
            match self.events.recv().await {
                Ok(Event::Synced(d)) => self.handle(Event::Synced(d))?,
                Ok(Event::SyncLost) => self.handle(Event::SyncLost)?,
                Ok(Event::Shutdown(more)) => drop(more),
                Ok(Event::Status(reply)) => {
                    let _ = reply.try_send(self.status());
                }
                Ok(_) => {} // no new input while stopping
                Err(_) => break,
            }
        }
        self.links.shutdown(Duration::from_secs(1)).await;
        tracing::info!(commit = %self.replica.commit_index(), "replica stopped gracefully");
        if let Some(done) = done {
            let _ = done.send(()).await;
        }
        Ok(())
    }
}
