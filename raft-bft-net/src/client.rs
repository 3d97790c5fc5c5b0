//! The client library: connect with the manifest and a key, submit ops, get results that
//! `f + 1` replicas agree on.
//!
//! [`Connections`] holds one QUIC connection per replica (server-authenticated: each replica's
//! key is pinned from the manifest), reconnecting with backoff, and is shared by any number of
//! [`Client`]s, one per client key. A `Client` runs the core's client logic
//! ([`raft_bft::client::Client`]): one tx outstanding, retries to all replicas on timeout, and
//! acceptance on `f + 1` matching signed replies. The clients of one `Connections` share the
//! reply-batch signatures they verified, so a batch's signature is checked once, not once per
//! client in it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_std::channel::{self, Receiver, Sender};
use async_std::task;
use raft_bft::client::{ClientConfig, ClientSend, Destination};
use raft_bft::crypto::KeyPair;
use raft_bft::manifest::{Cluster, Manifest};
use raft_bft::message::{Outcome, Reply};
use raft_bft::types::{ClientId, Index, ReplicaId};
use raft_bft::verify::VerifiedReplyRoots;

use crate::error::ClientError;
use crate::frame::{self, FrameDecoder};
use crate::limits::Limits;
use crate::node::Clock;
use crate::tls;
use crate::transport::{resolve, Backoff};
use crate::wire::{self, ClientRequest, ClientResponse, Refusal, StatusReport};

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Retry timing (see [`ClientConfig`]); defaults from the manifest's parameters.
    pub retry: Option<ClientConfig>,
    /// A submitted op that has no accepted result after this long fails with
    /// [`ClientError::Timeout`].
    pub timeout: Duration,
    /// Requests queued per replica connection; beyond it, sends are dropped (and retried).
    pub queue: usize,
    /// Idle timeout of the connections (keep-alives keep them open).
    pub idle_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            retry: None,
            timeout: Duration::from_secs(30),
            queue: 4096,
            idle_timeout: Duration::from_secs(15),
        }
    }
}

/// What a waiting client is told.
enum Delivery {
    Reply(Reply),
    Refused(ReplicaId, u64, Refusal),
}

struct Shared {
    cluster: Arc<Cluster>,
    links: Vec<Sender<Vec<u8>>>,
    /// Each link's current connection (to subscribe new clients on it).
    connected: Mutex<Vec<Option<quinn::Connection>>>,
    /// The clients' keys, to subscribe them on every (re)connection.
    keys: Mutex<HashMap<ClientId, KeyPair>>,
    waiters: Mutex<HashMap<ClientId, Sender<Delivery>>>,
    statuses: Mutex<HashMap<u64, Sender<StatusReport>>>,
    next_status: AtomicU64,
    clock: Clock,
    options: ClientOptions,
    /// Reply-batch signatures verified by any client of these connections.
    verified_roots: VerifiedReplyRoots,
}

/// Connections to every replica of a cluster, shared by many [`Client`]s.
#[derive(Clone)]
pub struct Connections {
    shared: Arc<Shared>,
    _tasks: Arc<Vec<task::JoinHandle<()>>>,
    endpoint: quinn::Endpoint,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("replicas", &self.shared.links.len())
            .finish()
    }
}

impl Connections {
    /// Opens a client endpoint and starts connecting to every replica of `manifest`.
    pub fn connect(manifest: Manifest, options: ClientOptions) -> Result<Self, ClientError> {
        let cluster = Arc::new(
            Cluster::new(manifest).map_err(|e| ClientError::Setup(format!("manifest: {e}")))?,
        );
        let addrs: Vec<SocketAddr> = cluster
            .manifest()
            .replicas
            .iter()
            .map(|r| resolve(&r.address).map_err(|e| ClientError::Setup(e.to_string())))
            .collect::<Result<_, _>>()?;
        let bind: SocketAddr = if addrs.first().is_some_and(|a| a.is_ipv6()) {
            "[::]:0".parse()
        } else {
            "0.0.0.0:0".parse()
        }
        .map_err(|e| ClientError::Setup(format!("{e}")))?;
        let endpoint = quinn::Endpoint::client(bind)
            .map_err(|e| ClientError::Setup(format!("cannot open a UDP socket: {e}")))?;
        let limits = Limits {
            idle_timeout: options.idle_timeout,
            ..Limits::default()
        };
        let mut links = Vec::new();
        let mut receivers = Vec::new();
        for _ in &addrs {
            let (tx, rx) = channel::bounded(options.queue);
            links.push(tx);
            receivers.push(rx);
        }
        let shared = Arc::new(Shared {
            cluster: cluster.clone(),
            connected: Mutex::new(vec![None; links.len()]),
            keys: Mutex::new(HashMap::new()),
            links,
            waiters: Mutex::new(HashMap::new()),
            statuses: Mutex::new(HashMap::new()),
            next_status: AtomicU64::new(1),
            clock: Clock::new(),
            options,
            verified_roots: VerifiedReplyRoots::default(),
        });
        let mut tasks = Vec::new();
        for ((info, addr), rx) in cluster.manifest().replicas.iter().zip(addrs).zip(receivers) {
            let config = tls::client_config(info.public_key, None, &limits)
                .map_err(|e| ClientError::Setup(e.to_string()))?;
            let link = Link {
                endpoint: endpoint.clone(),
                config,
                addr,
                replica: info.id,
                shared: Arc::downgrade(&shared),
            };
            tasks.push(task::spawn(link.run(rx)));
        }
        Ok(Connections {
            shared,
            _tasks: Arc::new(tasks),
            endpoint,
        })
    }

    /// The cluster these connections reach.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.shared.cluster
    }

    /// Asks one replica for its status (an unsigned hint, not evidence).
    pub async fn status(
        &self,
        replica: ReplicaId,
        wait: Duration,
    ) -> Result<StatusReport, ClientError> {
        let unreachable = |why: &str| ClientError::Unreachable {
            replica,
            why: why.to_string(),
        };
        let link = self
            .shared
            .links
            .get(replica.as_usize())
            .ok_or_else(|| unreachable("not in the manifest"))?;
        let id = self.shared.next_status.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = channel::bounded(1);
        if let Ok(mut s) = self.shared.statuses.lock() {
            s.insert(id, tx);
        }
        let bytes = raft_bft::codec::encode(&ClientRequest::Status { id })
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        let _ = link.try_send(frame::frame(&bytes));
        let answer = async_std::future::timeout(wait, rx.recv()).await;
        if let Ok(mut s) = self.shared.statuses.lock() {
            s.remove(&id);
        }
        match answer {
            Ok(Ok(report)) => Ok(report),
            _ => Err(unreachable("no answer in time")),
        }
    }

    /// Closes the endpoint (every client of these connections stops working).
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"client closed");
    }
}

/// A signed subscription of `key` on `conn`, framed.
fn subscription(conn: &quinn::Connection, key: &KeyPair) -> Option<Vec<u8>> {
    let client = key.public();
    let digest = wire::subscription_digest(conn, &client)?;
    let request = ClientRequest::Subscribe {
        client,
        sig: key.sign(&digest),
    };
    raft_bft::codec::encode(&request)
        .ok()
        .map(|b| frame::frame(&b))
}

impl Shared {
    /// Subscribes `key` on every link that is connected now (links subscribe every key when
    /// they connect).
    fn subscribe_everywhere(&self, key: &KeyPair) {
        let connected = self.connected.lock().map(|c| c.clone()).unwrap_or_default();
        for (link, conn) in self.links.iter().zip(connected) {
            if let Some(frame) = conn.and_then(|c| subscription(&c, key)) {
                let _ = link.try_send(frame);
            }
        }
    }

    fn transmit(&self, sends: Vec<ClientSend>) {
        for send in sends {
            let Ok(bytes) = raft_bft::codec::encode(&ClientRequest::Submit(send.tx)) else {
                continue;
            };
            let framed = frame::frame(&bytes);
            match send.to {
                Destination::Replica(r) => {
                    if let Some(link) = self.links.get(r.as_usize()) {
                        let _ = link.try_send(framed);
                    }
                }
                Destination::AllReplicas => {
                    for link in &self.links {
                        let _ = link.try_send(framed.clone());
                    }
                }
            }
        }
    }

    fn deliver(&self, from: ReplicaId, response: ClientResponse) {
        match response {
            ClientResponse::Reply(reply) => {
                let waiter = self
                    .waiters
                    .lock()
                    .ok()
                    .and_then(|w| w.get(&reply.client).cloned());
                if let Some(w) = waiter {
                    let _ = w.try_send(Delivery::Reply(reply));
                }
            }
            ClientResponse::Refused { client, ts, reason } => {
                let waiter = self
                    .waiters
                    .lock()
                    .ok()
                    .and_then(|w| w.get(&client).cloned());
                if let Some(w) = waiter {
                    let _ = w.try_send(Delivery::Refused(from, ts, reason));
                }
            }
            ClientResponse::Status { id, report } => {
                let waiter = self.statuses.lock().ok().and_then(|mut s| s.remove(&id));
                if let Some(w) = waiter {
                    let _ = w.try_send(report);
                }
            }
        }
    }
}

/// The connection to one replica: reconnects with backoff, writes queued requests, hands
/// responses to the waiting clients.
struct Link {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    replica: ReplicaId,
    shared: std::sync::Weak<Shared>,
}

impl Link {
    async fn run(self, queue: Receiver<Vec<u8>>) {
        let mut backoff = Backoff::new();
        let mut pending: Option<Vec<u8>> = None;
        loop {
            let Ok(connecting) =
                self.endpoint
                    .connect_with(self.config.clone(), self.addr, tls::SERVER_NAME)
            else {
                return;
            };
            let conn = match async_std::future::timeout(backoff.dial_timeout(), connecting).await {
                Ok(Ok(conn)) => conn,
                failed => {
                    if queue.is_closed() || self.shared.strong_count() == 0 {
                        return;
                    }
                    if failed.is_err() {
                        backoff.dial_failed();
                    }
                    backoff.wait().await;
                    continue;
                }
            };
            let Ok((mut send, recv)) = conn.open_bi().await else {
                backoff.wait().await;
                continue;
            };
            backoff.connected();
            tracing::debug!(replica = %self.replica, "client connected");
            // Subscribe every client on the new connection before anything else goes out.
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            if let Ok(mut c) = shared.connected.lock() {
                c[self.replica.as_usize()] = Some(conn.clone());
            }
            let keys: Vec<KeyPair> = shared
                .keys
                .lock()
                .map(|k| k.values().cloned().collect())
                .unwrap_or_default();
            drop(shared);
            let mut subscribed = true;
            for key in keys {
                if let Some(frame) = subscription(&conn, &key) {
                    if send.write_all(&frame).await.is_err() {
                        subscribed = false;
                        break;
                    }
                }
            }
            if !subscribed {
                backoff.wait().await;
                continue;
            }
            // The reader closes the connection when it stops (a bad response, or the stream
            // ended), so that the writer below notices and reconnects even when idle.
            let reader_conn = conn.clone();
            let shared = self.shared.clone();
            let replica = self.replica;
            let reader = task::spawn(async move {
                read_responses(recv, shared, replica).await;
                reader_conn.close(0u32.into(), b"response stream ended");
            });
            loop {
                let bytes = match pending.take() {
                    Some(b) => b,
                    None => {
                        let next = async { Some(queue.recv().await) };
                        let closed = async {
                            conn.closed().await;
                            None
                        };
                        match futures_lite::future::race(next, closed).await {
                            Some(Ok(b)) => b,
                            Some(Err(_)) => {
                                conn.close(0u32.into(), b"client closed");
                                return;
                            }
                            None => break, // the connection closed: reconnect
                        }
                    }
                };
                if send.write_all(&bytes).await.is_err() {
                    pending = Some(bytes);
                    break;
                }
            }
            reader.cancel().await;
            if self.shared.strong_count() == 0 {
                return;
            }
            backoff.wait().await;
        }
    }
}

async fn read_responses(
    mut recv: quinn::RecvStream,
    shared: std::sync::Weak<Shared>,
    from: ReplicaId,
) {
    let Some(params) = shared.upgrade().map(|s| s.cluster.params().clone()) else {
        return;
    };
    let mut decoder = FrameDecoder::new(wire::max_response_bytes(&params));
    let mut frames = Vec::new();
    while let Ok(true) = frame::read_frames(&mut recv, &mut decoder, &mut frames).await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        for bytes in frames.drain(..) {
            match wire::decode_client_response(&bytes, &params) {
                Ok(response) => shared.deliver(from, response),
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable response from a replica");
                    return;
                }
            }
        }
    }
}

/// An op executed by the cluster, as `f + 1` replicas agree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The tx's timestamp.
    pub ts: u64,
    /// The log index it executed at.
    pub index: Index,
    /// The state machine's result.
    pub result: Vec<u8>,
    /// The replicas whose signed replies matched.
    pub replicas: Vec<ReplicaId>,
    /// Time from submission to acceptance.
    pub latency: Duration,
}

/// A client of the cluster with one key. One op at a time (see [`raft_bft::client`]); run
/// several clients, each with its own key, for concurrency.
pub struct Client {
    connections: Connections,
    core: raft_bft::client::Client,
    replies: Receiver<Delivery>,
    refusals: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("core", &self.core).finish()
    }
}

impl Client {
    /// Connects to the cluster of `manifest` with client key `key`.
    pub fn connect(
        manifest: Manifest,
        key: KeyPair,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        Client::new(Connections::connect(manifest, options)?, key)
    }

    /// A client with key `key` over shared connections. Two live clients must not share a key.
    pub fn new(connections: Connections, key: KeyPair) -> Result<Self, ClientError> {
        let shared = &connections.shared;
        let config = shared
            .options
            .retry
            .clone()
            .unwrap_or_else(|| ClientConfig::from_params(shared.cluster.params()));
        let key_copy = key.clone();
        let mut core = raft_bft::client::Client::new(shared.cluster.clone(), key, config)
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        core.share_verified_roots(shared.verified_roots.clone());
        let (tx, rx) = channel::bounded(64);
        if let Ok(mut w) = shared.waiters.lock() {
            w.insert(core.public_key(), tx);
        }
        if let Ok(mut k) = shared.keys.lock() {
            k.insert(core.public_key(), key_copy.clone());
        }
        shared.subscribe_everywhere(&key_copy);
        Ok(Client {
            connections,
            core,
            replies: rx,
            refusals: 0,
        })
    }

    /// Submits `op` and waits for the result `f + 1` replicas agree on.
    ///
    /// A tx still outstanding from an earlier call that timed out is abandoned first.
    pub async fn submit(&mut self, op: Vec<u8>) -> Result<Committed, ClientError> {
        let shared = self.connections.shared.clone();
        self.core.abandon();
        let start = shared.clock.now();
        let sends = self
            .core
            .submit(start, op)
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        self.wait(start, sends).await
    }

    /// Sends a tx this client signed earlier once more (see
    /// [`raft_bft::client::Client::resubmit`]): the replicas never execute it twice.
    pub async fn resubmit(
        &mut self,
        tx: raft_bft::message::SignedTx,
    ) -> Result<Committed, ClientError> {
        let shared = self.connections.shared.clone();
        self.core.abandon();
        let start = shared.clock.now();
        let sends = self
            .core
            .resubmit(start, tx)
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        self.wait(start, sends).await
    }

    /// Signs `op` as this client's next tx without sending it (to keep, and resubmit later).
    pub fn sign(&mut self, op: Vec<u8>) -> Result<raft_bft::message::SignedTx, ClientError> {
        let now = self.connections.shared.clock.now();
        self.core
            .sign_next(now, op)
            .map_err(|e| ClientError::Invalid(e.to_string()))
    }

    /// Sends `sends` and waits for the outstanding tx's outcome.
    async fn wait(
        &mut self,
        start: raft_bft::types::Time,
        sends: Vec<ClientSend>,
    ) -> Result<Committed, ClientError> {
        let shared = self.connections.shared.clone();
        let mut invalid = std::collections::BTreeSet::new();
        let ts = self.core.outstanding().map_or(0, |t| t.ts);
        shared.transmit(sends);
        let deadline = start.after(shared.options.timeout);
        loop {
            let now = shared.clock.now();
            if now >= deadline {
                self.core.abandon();
                return Err(ClientError::Timeout {
                    ts,
                    waited_ms: now.since(start).as_millis() as u64,
                });
            }
            let wake = self
                .core
                .next_deadline()
                .map_or(deadline, |d| d.min(deadline));
            let wait = if wake > now {
                wake.since(now)
            } else {
                Duration::ZERO
            };
            match async_std::future::timeout(wait, self.replies.recv()).await {
                Ok(Ok(Delivery::Reply(reply))) => {
                    let now = shared.clock.now();
                    if let Some(accepted) = self.core.on_reply(now, reply) {
                        return match accepted.outcome {
                            Outcome::Executed { index, result } => Ok(Committed {
                                ts: accepted.ts,
                                index,
                                result,
                                replicas: accepted.replicas,
                                latency: accepted.latency,
                            }),
                            Outcome::Rejected(rejection) => Err(ClientError::Rejected {
                                ts: accepted.ts,
                                rejection,
                            }),
                        };
                    }
                }
                Ok(Ok(Delivery::Refused(replica, refused_ts, reason))) => {
                    // Unsigned: a hint only; the retry timer resends. But whether a signature
                    // verifies is the same for every correct replica: f + 1 replicas finding
                    // it invalid include a correct one, so the tx can never execute.
                    self.refusals += 1;
                    if reason == Refusal::Invalid && refused_ts == ts {
                        invalid.insert(replica);
                        if invalid.len() > shared.cluster.f() {
                            self.core.abandon();
                            return Err(ClientError::Invalid(
                                "f + 1 replicas found the tx's signature or size invalid".into(),
                            ));
                        }
                    }
                    tracing::debug!(
                        ts = refused_ts,
                        ?reason,
                        "a replica's connection refused the tx"
                    );
                }
                Ok(Err(_)) => {
                    return Err(ClientError::Setup("the connections were closed".into()));
                }
                Err(_) => {
                    let sends = self.core.on_tick(shared.clock.now());
                    shared.transmit(sends);
                }
            }
        }
    }

    /// The client's key (its identity to the cluster).
    pub fn public_key(&self) -> raft_bft::types::PublicKey {
        self.core.public_key()
    }

    /// The core client's counters (retries, invalid replies dropped, ...).
    pub fn stats(&self) -> &raft_bft::client::ClientStats {
        self.core.stats()
    }

    /// Unsigned refusals received from replica connections (rate or in-flight limits).
    pub fn refusals(&self) -> u64 {
        self.refusals
    }

    /// The shared connections.
    pub fn connections(&self) -> &Connections {
        &self.connections
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let me = self.core.public_key();
        if let Ok(mut w) = self.connections.shared.waiters.lock() {
            w.remove(&me);
        }
        if let Ok(mut k) = self.connections.shared.keys.lock() {
            k.remove(&me);
        }
    }
}
