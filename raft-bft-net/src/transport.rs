//! Replica links and the accept loop: who may connect, what they may send, and where it goes.
//!
//! Each replica dials every peer and sends on one unidirectional stream of that connection; it
//! receives on the connections its peers dialled. Outgoing frames wait in a bounded queue per
//! peer and are dropped when it is full (the protocol retransmits what matters). Incoming bytes
//! are framed, decoded and queued for verification; a frame above the limit or one that does
//! not decode closes the connection that sent it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_std::channel::{self, Receiver, Sender, TrySendError};
use async_std::task;
use raft_bft::manifest::Cluster;
use raft_bft::message::ReplicaMessage;
use raft_bft::types::{ClientId, ReplicaId};

use crate::frame::{self, FrameDecoder, StreamError};
use crate::limits::{Limits, TokenBucket};
use crate::node::Event;
use crate::stats::NetStats;
use crate::tls;
use crate::verify::{ConnId, Input};
use crate::wire::{self, ClientRequest, ClientResponse, Refusal};

/// QUIC application error codes a replica closes connections with.
pub mod close_code {
    /// Orderly shutdown.
    pub const SHUTDOWN: u32 = 0;
    /// A frame above the limit.
    pub const FRAME_TOO_LARGE: u32 = 1;
    /// A frame that did not decode.
    pub const UNDECODABLE: u32 = 2;
    /// The peer used the connection for something it may not.
    pub const PROTOCOL: u32 = 3;
    /// Replaced by a newer connection from the same peer.
    pub const REPLACED: u32 = 4;
    /// The replica serves as many client connections as it may.
    pub const BUSY: u32 = 5;
}

fn close(conn: &quinn::Connection, code: u32, why: &str) {
    conn.close(code.into(), why.as_bytes());
}

/// Resolves a `host:port` address.
pub(crate) fn resolve(address: &str) -> Result<SocketAddr, crate::NetError> {
    use std::net::ToSocketAddrs;
    let err = |why: String| crate::NetError::Address {
        address: address.to_string(),
        why,
    };
    address
        .to_socket_addrs()
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("no address".into()))
}

/// Backoff between reconnection attempts: the wait doubles from `MIN` to `MAX`, and so does the
/// time a dial may take (from `DIAL_TIMEOUT` to `HANDSHAKE_TIMEOUT`).
pub(crate) struct Backoff {
    next: Duration,
    dial: Duration,
    connected_at: Option<Instant>,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(20);
    const MAX: Duration = Duration::from_secs(2);
    /// A connection must stay up this long before the backoff starts over (a peer that
    /// closes at once is not redialled in a tight loop).
    const STABLE: Duration = Duration::from_secs(1);

    pub(crate) fn new() -> Self {
        Backoff {
            next: Self::MIN,
            dial: tls::DIAL_TIMEOUT,
            connected_at: None,
        }
    }

    /// How long the next dial may take.
    pub(crate) fn dial_timeout(&self) -> Duration {
        self.dial
    }

    /// A connection is up.
    pub(crate) fn connected(&mut self) {
        self.connected_at = Some(Instant::now());
        self.dial = tls::DIAL_TIMEOUT;
    }

    /// Waits before the next attempt.
    pub(crate) async fn wait(&mut self) {
        if self
            .connected_at
            .take()
            .is_some_and(|at| at.elapsed() >= Self::STABLE)
        {
            self.next = Self::MIN;
        }
        task::sleep(self.next).await;
        self.next = (self.next * 2).min(Self::MAX);
    }

    /// A dial timed out: the next one may take longer.
    pub(crate) fn dial_failed(&mut self) {
        self.dial = (self.dial * 2).min(tls::HANDSHAKE_TIMEOUT);
    }
}

/// An encoded, framed message, shared by the queues of every peer it goes to.
type Frame = Arc<Vec<u8>>;

fn encode(msg: &ReplicaMessage) -> Option<Frame> {
    match raft_bft::codec::encode(msg) {
        Ok(bytes) => Some(Arc::new(frame::frame(&bytes))),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a protocol message");
            None
        }
    }
}

/// Rewrites (or, returning `None`, drops) each message a replica sends, per destination. It
/// makes a replica Byzantine, for tests and demonstrations of what the protocol tolerates; a
/// correct replica never has one. See [`crate::NodeConfig::byzantine`].
pub type Rewrite = Arc<dyn Fn(ReplicaId, ReplicaMessage) -> Option<ReplicaMessage> + Send + Sync>;

/// The outgoing side: one queue and one sending task per peer.
pub(crate) struct PeerLinks {
    me: ReplicaId,
    /// Each peer's queue; the receiver half is kept to drop the oldest frame when full.
    queues: Vec<Option<(Sender<Frame>, Receiver<Frame>)>>,
    tasks: Vec<task::JoinHandle<()>>,
    stats: Arc<NetStats>,
    rewrite: Option<Rewrite>,
}

impl PeerLinks {
    pub(crate) fn start(
        cluster: &Cluster,
        me: ReplicaId,
        endpoint: &quinn::Endpoint,
        identity: &tls::TlsIdentity,
        limits: &Limits,
        stats: Arc<NetStats>,
        rewrite: Option<Rewrite>,
    ) -> Result<Self, crate::NetError> {
        let mut queues = Vec::new();
        let mut tasks = Vec::new();
        for info in &cluster.manifest().replicas {
            if info.id == me {
                queues.push(None);
                continue;
            }
            let addr = resolve(&info.address)?;
            let config = tls::client_config(info.public_key, Some(identity), limits)?;
            let (tx, rx) = channel::bounded(limits.send_queue);
            let endpoint = endpoint.clone();
            let peer = info.id;
            let oldest = rx.clone();
            tasks.push(task::spawn(async move {
                send_to_peer(endpoint, config, addr, peer, rx).await
            }));
            queues.push(Some((tx, oldest)));
        }
        Ok(PeerLinks {
            me,
            queues,
            tasks,
            stats,
            rewrite,
        })
    }

    /// Queues `msg` for `to` (`None`: every peer). Encodes it once.
    pub(crate) fn send(&self, to: Option<ReplicaId>, msg: &ReplicaMessage) {
        let Some(bytes) = encode(msg) else { return };
        for (i, queue) in self.queues.iter().enumerate() {
            let Some((queue, oldest)) = queue else {
                continue;
            };
            if to.is_some_and(|t| t.as_usize() != i) {
                continue;
            }
            let bytes = match &self.rewrite {
                // A Byzantine stand-in (tests and demos only): each peer gets its own version.
                Some(rewrite) => {
                    match rewrite(ReplicaId(i as u32), msg.clone()).and_then(|m| encode(&m)) {
                        Some(b) => b,
                        None => continue,
                    }
                }
                None => bytes.clone(),
            };
            if let Err(TrySendError::Full(frame)) = queue.try_send(bytes) {
                // A full queue holds what a slow or absent peer did not take: drop the oldest
                // frame, not the newest (the protocol retransmits what still matters).
                self.stats.count(&self.stats.dropped_frames);
                let _ = oldest.try_recv();
                let _ = queue.try_send(frame);
            }
        }
        if to == Some(self.me) {
            tracing::warn!("a message addressed to this replica itself was dropped");
        }
    }

    /// Closes the queues and waits (at most `grace`) for what they hold to be written.
    pub(crate) async fn shutdown(mut self, grace: Duration) {
        self.queues.clear();
        let tasks = std::mem::take(&mut self.tasks);
        let all = async {
            for t in tasks {
                t.await;
            }
        };
        let _ = async_std::future::timeout(grace, all).await;
    }
}

async fn send_to_peer(
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    peer: ReplicaId,
    queue: Receiver<Arc<Vec<u8>>>,
) {
    let mut backoff = Backoff::new();
    let mut pending: Option<Arc<Vec<u8>>> = None;
    loop {
        let conn = match endpoint.connect_with(config.clone(), addr, tls::SERVER_NAME) {
            Ok(connecting) => async_std::future::timeout(backoff.dial_timeout(), connecting).await,
            Err(quinn::ConnectError::EndpointStopping) => return,
            Err(e) => {
                tracing::error!(%peer, error = %e, "cannot dial peer");
                return;
            }
        };
        let conn = match conn {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "peer unreachable");
                if queue.is_closed() && queue.is_empty() {
                    return;
                }
                backoff.wait().await;
                continue;
            }
            Err(_) => {
                backoff.dial_failed();
                backoff.wait().await;
                continue;
            }
        };
        let mut stream = match conn.open_uni().await {
            Ok(s) => s,
            Err(_) => {
                backoff.wait().await;
                continue;
            }
        };
        tracing::debug!(%peer, "connected to peer");
        backoff.connected();
        loop {
            let bytes = match pending.take() {
                Some(b) => b,
                None => match queue.recv().await {
                    Ok(b) => b,
                    Err(_) => {
                        // Shutting down: flush and close.
                        let _ = stream.finish();
                        let _ =
                            async_std::future::timeout(Duration::from_secs(1), stream.stopped())
                                .await;
                        conn.close(close_code::SHUTDOWN.into(), b"shutdown");
                        return;
                    }
                },
            };
            if stream.write_all(&bytes).await.is_err() {
                // The connection broke: this frame goes on the next one.
                pending = Some(bytes);
                break;
            }
        }
        backoff.wait().await;
    }
}

/// What the accept loop needs to hand input on.
pub(crate) struct Inbound<S: raft_bft::state_machine::StateMachine + Send + 'static> {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) me: ReplicaId,
    pub(crate) limits: Limits,
    /// Peers' messages waiting for verification.
    pub(crate) verify_peers: Sender<Input>,
    /// Clients' txs waiting for verification (taken after peers' messages).
    pub(crate) verify_clients: Sender<Input>,
    pub(crate) events: Sender<Event<S>>,
    pub(crate) stats: Arc<NetStats>,
    pub(crate) clients: Arc<AtomicUsize>,
    /// Handshakes in progress.
    pub(crate) handshakes: Arc<AtomicUsize>,
    pub(crate) next_conn: Arc<std::sync::atomic::AtomicU64>,
    /// The newest connection of each peer; an older one is closed when a newer one arrives.
    pub(crate) peers: Arc<Mutex<HashMap<ReplicaId, quinn::Connection>>>,
}

impl<S: raft_bft::state_machine::StateMachine + Send + 'static> Clone for Inbound<S> {
    fn clone(&self) -> Self {
        Inbound {
            cluster: self.cluster.clone(),
            me: self.me,
            limits: self.limits.clone(),
            verify_peers: self.verify_peers.clone(),
            verify_clients: self.verify_clients.clone(),
            events: self.events.clone(),
            stats: self.stats.clone(),
            clients: self.clients.clone(),
            handshakes: self.handshakes.clone(),
            next_conn: self.next_conn.clone(),
            peers: self.peers.clone(),
        }
    }
}

/// Accepts connections until the endpoint closes.
pub(crate) async fn accept_loop<S: raft_bft::state_machine::StateMachine + Send + 'static>(
    endpoint: quinn::Endpoint,
    inbound: Inbound<S>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let inbound = inbound.clone();
        // Handshakes cost the replica a signature each: count them before they start.
        let pending = inbound.handshakes.fetch_add(1, Ordering::Relaxed);
        if pending >= inbound.limits.max_handshakes {
            inbound.handshakes.fetch_sub(1, Ordering::Relaxed);
            inbound.stats.count(&inbound.stats.refused_connections);
            incoming.refuse();
            continue;
        }
        if pending >= inbound.limits.max_handshakes / 4 && !incoming.remote_address_validated() {
            // Under load, a stateless retry first makes a sender prove its address (a
            // spoofed flood gets no handshake work out of the replica).
            inbound.handshakes.fetch_sub(1, Ordering::Relaxed);
            let _ = incoming.retry();
            continue;
        }
        task::spawn(async move {
            let handshake = handshake(incoming, &inbound).await;
            inbound.handshakes.fetch_sub(1, Ordering::Relaxed);
            let Some(conn) = handshake else { return };
            match tls::alpn(&conn).as_deref() {
                Some(tls::ALPN_REPLICA) => {
                    // A replica link carries one unidirectional stream.
                    conn.set_max_concurrent_bi_streams(0u32.into());
                    serve_peer(conn, inbound).await
                }
                Some(tls::ALPN_CLIENT) => {
                    // Client slots are counted apart from replica links, which a flood of
                    // clients must never crowd out.
                    let clients = inbound.clients.fetch_add(1, Ordering::Relaxed);
                    if clients >= inbound.limits.max_connections {
                        inbound.clients.fetch_sub(1, Ordering::Relaxed);
                        inbound.stats.count(&inbound.stats.refused_connections);
                        close(&conn, close_code::BUSY, "too many client connections");
                        return;
                    }
                    conn.set_max_concurrent_uni_streams(0u32.into());
                    serve_client(conn, inbound.clone()).await;
                    inbound.clients.fetch_sub(1, Ordering::Relaxed);
                }
                _ => {
                    inbound.stats.count(&inbound.stats.failed_handshakes);
                    close(&conn, close_code::PROTOCOL, "unknown protocol");
                }
            }
        });
    }
}

/// Completes a handshake within the time limit.
async fn handshake<S: raft_bft::state_machine::StateMachine + Send + 'static>(
    incoming: quinn::Incoming,
    inbound: &Inbound<S>,
) -> Option<quinn::Connection> {
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            inbound.stats.count(&inbound.stats.failed_handshakes);
            tracing::debug!(error = %e, "connection attempt failed");
            return None;
        }
    };
    match async_std::future::timeout(tls::HANDSHAKE_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => Some(conn),
        Ok(Err(e)) => {
            inbound.stats.count(&inbound.stats.failed_handshakes);
            tracing::debug!(error = %e, "handshake failed");
            None
        }
        Err(_) => {
            inbound.stats.count(&inbound.stats.failed_handshakes);
            None
        }
    }
}

/// A peer's connection: every unidirectional stream it opens carries its messages.
async fn serve_peer<S: raft_bft::state_machine::StateMachine + Send + 'static>(
    conn: quinn::Connection,
    inbound: Inbound<S>,
) {
    let from = tls::peer_key(&conn).and_then(|k| tls::member_of(&inbound.cluster, &k));
    let Some(from) = from.filter(|f| *f != inbound.me) else {
        // The verifier admits only member keys; a replica link without one is refused here.
        inbound.stats.count(&inbound.stats.failed_handshakes);
        close(
            &conn,
            close_code::PROTOCOL,
            "replica links need a member certificate",
        );
        return;
    };
    inbound.stats.count(&inbound.stats.peer_connections);
    if let Ok(mut peers) = inbound.peers.lock() {
        if let Some(old) = peers.insert(from, conn.clone()) {
            close(&old, close_code::REPLACED, "replaced by a newer connection");
        }
    }
    tracing::debug!(peer = %from, "peer connected");
    while let Ok(mut recv) = conn.accept_uni().await {
        let (conn, inbound) = (conn.clone(), inbound.clone());
        task::spawn(async move {
            let limit = inbound.cluster.params().max_message_bytes as usize;
            let mut decoder = FrameDecoder::new(limit);
            let mut frames = Vec::new();
            loop {
                match frame::read_frames(&mut recv, &mut decoder, &mut frames).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::debug!(peer = %from, "peer stream finished");
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(peer = %from, error = %e, "peer stream failed");
                        stream_failed(&conn, &inbound, Some(from), &e);
                        return;
                    }
                }
                for bytes in frames.drain(..) {
                    inbound.stats.count(&inbound.stats.peer_messages);
                    match wire::decode_replica_message(&bytes, inbound.cluster.params()) {
                        Ok(msg) => {
                            if inbound
                                .verify_peers
                                .send(Input::Peer { from, msg })
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        Err(e) => {
                            inbound.stats.count(&inbound.stats.undecodable_frames);
                            tracing::warn!(peer = %from, error = %e, "undecodable message; closing the connection");
                            let _ = inbound.events.send(Event::PeerInvalid(from)).await;
                            close(&conn, close_code::UNDECODABLE, "undecodable message");
                            return;
                        }
                    }
                }
            }
        });
    }
}

fn stream_failed<S: raft_bft::state_machine::StateMachine + Send + 'static>(
    conn: &quinn::Connection,
    inbound: &Inbound<S>,
    peer: Option<ReplicaId>,
    e: &StreamError,
) {
    match e {
        StreamError::Frame(frame::FrameError::TooLarge { .. }) => {
            inbound.stats.count(&inbound.stats.oversized_frames);
            tracing::warn!(?peer, error = %e, "oversized frame; closing the connection");
            close(conn, close_code::FRAME_TOO_LARGE, "frame too large");
        }
        StreamError::Frame(_) => {
            close(conn, close_code::UNDECODABLE, "truncated frame");
        }
        StreamError::Read(_) => {}
    }
}

/// What a client connection has outstanding, shared by its reader and writer.
struct ClientConnState {
    bucket: TokenBucket,
    in_flight: HashMap<(ClientId, u64), Instant>,
    keys: HashMap<ClientId, Instant>,
    /// Keys whose subscription on this connection verified (a repeat costs nothing).
    subscribed: std::collections::HashSet<ClientId>,
    /// When expired entries were last swept (at most once a second, so that a full map does
    /// not cost a sweep per request).
    swept: Instant,
}

impl ClientConnState {
    fn new(limits: &Limits) -> Self {
        ClientConnState {
            bucket: TokenBucket::new(limits.client_rate, limits.client_burst),
            in_flight: HashMap::new(),
            keys: HashMap::new(),
            subscribed: std::collections::HashSet::new(),
            swept: Instant::now(),
        }
    }

    /// Drops expired entries, at most once a second.
    fn sweep(&mut self, limits: &Limits, now: Instant) {
        if now.duration_since(self.swept) < Duration::from_secs(1) {
            return;
        }
        self.swept = now;
        let expiry = limits.in_flight_expiry;
        self.in_flight
            .retain(|_, t| now.duration_since(*t) < expiry);
        self.keys.retain(|_, t| now.duration_since(*t) < expiry);
        let keys = &self.keys;
        self.subscribed.retain(|k| keys.contains_key(k));
    }

    /// Admits a tx or says why not.
    fn admit(&mut self, limits: &Limits, client: ClientId, ts: u64) -> Result<(), Refusal> {
        let now = Instant::now();
        if !self.bucket.take(now) {
            return Err(Refusal::RateLimited);
        }
        self.sweep(limits, now);
        if self.in_flight.len() >= limits.client_in_flight {
            return Err(Refusal::TooManyInFlight);
        }
        self.admit_key(limits, client, now)?;
        self.in_flight.insert((client, ts), now);
        Ok(())
    }

    /// Admits one more client key on this connection (or refreshes a known one).
    fn admit_key(
        &mut self,
        limits: &Limits,
        client: ClientId,
        now: Instant,
    ) -> Result<(), Refusal> {
        if !self.keys.contains_key(&client) && self.keys.len() >= limits.clients_per_connection {
            return Err(Refusal::TooManyClients);
        }
        self.keys.insert(client, now);
        Ok(())
    }

    /// The tx is answered (or refused): its in-flight slot is free.
    fn answered(&mut self, client: &ClientId, ts: u64) {
        self.in_flight.remove(&(*client, ts));
    }
}

/// A client's connection: one bidirectional stream of requests up and responses down.
async fn serve_client<S: raft_bft::state_machine::StateMachine + Send + 'static>(
    conn: quinn::Connection,
    inbound: Inbound<S>,
) {
    inbound.stats.count(&inbound.stats.client_connections);
    let conn_id = inbound.next_conn.fetch_add(1, Ordering::Relaxed);
    let state = Arc::new(Mutex::new(ClientConnState::new(&inbound.limits)));
    if let Ok((send, recv)) = conn.accept_bi().await {
        let (respond, responses) = channel::bounded(inbound.limits.send_queue);
        let writer = task::spawn(write_client(send, responses, state.clone()));
        read_client(&conn, recv, conn_id, respond, &state, &inbound).await;
        writer.cancel().await;
    }
    let _ = inbound.events.send(Event::ClientClosed(conn_id)).await;
}

async fn read_client<S: raft_bft::state_machine::StateMachine + Send + 'static>(
    conn: &quinn::Connection,
    mut recv: quinn::RecvStream,
    conn_id: ConnId,
    respond: Sender<ClientResponse>,
    state: &Mutex<ClientConnState>,
    inbound: &Inbound<S>,
) {
    let params = inbound.cluster.params();
    let mut decoder = FrameDecoder::new(wire::max_request_bytes(params));
    let mut frames = Vec::new();
    loop {
        match frame::read_frames(&mut recv, &mut decoder, &mut frames).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                stream_failed(conn, inbound, None, &e);
                return;
            }
        }
        for bytes in frames.drain(..) {
            let request = match wire::decode_client_request(&bytes, params) {
                Ok(r) => r,
                Err(e) => {
                    inbound.stats.count(&inbound.stats.undecodable_frames);
                    tracing::debug!(conn = conn_id, error = %e, "undecodable client request; closing");
                    close(conn, close_code::UNDECODABLE, "undecodable request");
                    return;
                }
            };
            match request {
                ClientRequest::Submit(tx) => {
                    inbound.stats.count(&inbound.stats.client_txs);
                    let verdict = match state.lock() {
                        Ok(mut s) => s.admit(&inbound.limits, tx.client, tx.ts),
                        Err(_) => Err(Refusal::Overloaded),
                    };
                    if let Err(reason) = verdict {
                        let counter = match reason {
                            Refusal::RateLimited => &inbound.stats.rate_limited,
                            _ => &inbound.stats.in_flight_refused,
                        };
                        inbound.stats.count(counter);
                        let refusal = ClientResponse::Refused {
                            client: tx.client,
                            ts: tx.ts,
                            reason,
                        };
                        let _ = respond.try_send(refusal);
                        continue;
                    }
                    let input = Input::Client {
                        conn: conn_id,
                        respond: respond.clone(),
                        tx,
                    };
                    if inbound.verify_clients.send(input).await.is_err() {
                        return;
                    }
                }
                ClientRequest::Subscribe { client, sig } => {
                    // A repeat costs nothing; a new key is rate-limited like a tx (each costs a
                    // signature check) and counts against the connection's keys.
                    let admitted = match state.lock() {
                        Ok(s) if s.subscribed.contains(&client) => continue,
                        Ok(mut s) => {
                            let now = Instant::now();
                            s.sweep(&inbound.limits, now);
                            if s.bucket.take(now) {
                                s.admit_key(&inbound.limits, client, now)
                            } else {
                                Err(Refusal::RateLimited)
                            }
                        }
                        Err(_) => Err(Refusal::Overloaded),
                    };
                    if let Err(reason) = admitted {
                        let counter = match reason {
                            Refusal::RateLimited => &inbound.stats.rate_limited,
                            _ => &inbound.stats.in_flight_refused,
                        };
                        inbound.stats.count(counter);
                        continue;
                    }
                    let valid = wire::subscription_digest(conn, &client)
                        .is_some_and(|d| raft_bft::crypto::verify(&client, &d, &sig).is_ok());
                    if !valid {
                        inbound.stats.count(&inbound.stats.invalid_client_txs);
                        tracing::debug!(conn = conn_id, "bad subscription signature; closing");
                        close(conn, close_code::PROTOCOL, "bad subscription signature");
                        return;
                    }
                    if let Ok(mut s) = state.lock() {
                        s.subscribed.insert(client);
                    }
                    let event = Event::Subscribe {
                        conn: conn_id,
                        respond: respond.clone(),
                        client,
                    };
                    if inbound.events.send(event).await.is_err() {
                        return;
                    }
                }
                ClientRequest::Status { id } => {
                    // Each status costs the event loop a turn: rate-limited like txs.
                    let allowed = state
                        .lock()
                        .is_ok_and(|mut s| s.bucket.take(Instant::now()));
                    if !allowed {
                        inbound.stats.count(&inbound.stats.rate_limited);
                        continue;
                    }
                    let (tx, rx) = channel::bounded(1);
                    if inbound.events.send(Event::Status(tx)).await.is_err() {
                        return;
                    }
                    if let Ok(report) = rx.recv().await {
                        let _ = respond.try_send(ClientResponse::Status { id, report });
                    }
                }
            }
        }
    }
}

async fn write_client(
    mut send: quinn::SendStream,
    responses: Receiver<ClientResponse>,
    state: Arc<Mutex<ClientConnState>>,
) {
    while let Ok(response) = responses.recv().await {
        let answered = match &response {
            ClientResponse::Reply(r) => Some((r.client, r.ts)),
            ClientResponse::Refused { client, ts, .. } => Some((*client, *ts)),
            ClientResponse::Status { .. } => None,
        };
        if let Some((client, ts)) = answered {
            if let Ok(mut s) = state.lock() {
                s.answered(&client, ts);
            }
        }
        let Ok(bytes) = raft_bft::codec::encode(&response) else {
            continue;
        };
        if send.write_all(&frame::frame(&bytes)).await.is_err() {
            return;
        }
    }
}
