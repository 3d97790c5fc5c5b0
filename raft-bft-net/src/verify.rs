//! Signature verification off the event loop, on every core.
//!
//! Connection readers push decoded input into two bounded queues, one for peers and one for
//! clients; worker threads take what is queued (up to a batch, peers' messages first, so that a
//! flood of client txs cannot delay the protocol's own traffic), verify client txs together in one batch verification and peer
//! messages one by one (each message's own signatures are batched by the core's verifier), and
//! hand the verified values to the event loop. Each worker has its own [`Verifier`] seeded from
//! the operating system, so batch coefficients are unpredictable.

use std::sync::Arc;

use async_std::channel::{Receiver, Sender};
use raft_bft::manifest::Cluster;
use raft_bft::message::{ReplicaMessage, SignedTx};
use raft_bft::state_machine::StateMachine;
use raft_bft::types::ReplicaId;
use raft_bft::verify::Verifier;

use crate::error::NetError;
use crate::node::Event;
use crate::stats::NetStats;
use crate::wire::{ClientResponse, Refusal};

/// A client connection's id, unique within a node.
pub(crate) type ConnId = u64;

/// Untrusted input waiting for verification.
pub(crate) enum Input {
    /// A message from a peer (the transport authenticated `from`).
    Peer {
        from: ReplicaId,
        msg: ReplicaMessage,
    },
    /// A tx from a client connection; `respond` reaches that connection.
    Client {
        conn: ConnId,
        respond: Sender<ClientResponse>,
        tx: SignedTx,
    },
}

/// Most inputs one worker takes at once (client txs among them share one batch verification).
const BATCH: usize = 512;

/// A seed from the operating system's CSPRNG.
pub(crate) fn os_seed() -> Result<[u8; 32], NetError> {
    let mut seed = [0u8; 32];
    // No OS randomness means no safe batch coefficients: refuse to start.
    getrandom::fill(&mut seed).map_err(|e| {
        NetError::Config(format!(
            "the operating system's random number generator failed: {e}"
        ))
    })?;
    Ok(seed)
}

/// The two input queues, as the workers see them.
#[derive(Clone)]
pub(crate) struct Queues {
    pub(crate) peers: Receiver<Input>,
    pub(crate) clients: Receiver<Input>,
}

impl Queues {
    /// The next input (a peer's first), waiting for one; `None` once both queues closed.
    fn next(&self) -> Option<Input> {
        if let Ok(input) = self.peers.try_recv() {
            return Some(input);
        }
        let either = futures_lite::future::or(self.peers.recv(), self.clients.recv());
        match futures_lite::future::block_on(either) {
            Ok(input) => Some(input),
            Err(_) if self.peers.is_closed() && self.clients.is_closed() => None,
            // One queue closed: wait on the other alone.
            Err(_) if self.peers.is_closed() => self.clients.recv_blocking().ok(),
            Err(_) => self.peers.recv_blocking().ok(),
        }
    }

    /// What else is queued, up to `limit` inputs in `batch`: peers' first.
    fn fill(&self, batch: &mut Vec<Input>, limit: usize) {
        for queue in [&self.peers, &self.clients] {
            while batch.len() < limit {
                match queue.try_recv() {
                    Ok(input) => batch.push(input),
                    Err(_) => break,
                }
            }
        }
    }
}

/// Starts `threads` workers; they stop when every sender of both queues is gone.
pub(crate) fn start<S: StateMachine + Send + 'static>(
    cluster: &Arc<Cluster>,
    threads: usize,
    input: Queues,
    events: Sender<Event<S>>,
    stats: Arc<NetStats>,
) -> Result<Vec<std::thread::JoinHandle<()>>, NetError> {
    // A retransmitted proposal may reach another worker than the first copy did: the workers
    // share what they verified.
    let entries = raft_bft::verify::VerifiedEntries::default();
    (0..threads.max(1))
        .map(|i| {
            let mut verifier = Verifier::new(cluster.clone(), os_seed()?);
            verifier.share_verified_entries(entries.clone());
            let (input, events, stats) = (input.clone(), events.clone(), stats.clone());
            std::thread::Builder::new()
                .name(format!("raft-bft-verify-{i}"))
                .spawn(move || worker(verifier, input, events, stats))
                .map_err(|e| NetError::Config(format!("cannot start a verification thread: {e}")))
        })
        .collect()
}

fn worker<S: StateMachine + Send + 'static>(
    mut verifier: Verifier,
    input: Queues,
    events: Sender<Event<S>>,
    stats: Arc<NetStats>,
) {
    while let Some(first) = input.next() {
        let mut batch = vec![first];
        input.fill(&mut batch, BATCH);
        let mut txs = Vec::new();
        let mut routes = Vec::new();
        for item in batch {
            match item {
                Input::Peer { from, msg } => {
                    let event = match verifier.verify_message(from, msg) {
                        Ok(verified) => Event::Peer(from, verified),
                        Err(e) => {
                            stats.count(&stats.invalid_peer_messages);
                            tracing::debug!(peer = %from, error = %e, kind = e.kind(), "invalid message from a peer");
                            Event::PeerInvalid(from)
                        }
                    };
                    if events.send_blocking(event).is_err() {
                        return;
                    }
                }
                Input::Client { conn, respond, tx } => {
                    routes.push((conn, respond, tx.client, tx.ts));
                    txs.push(tx);
                }
            }
        }
        if txs.is_empty() {
            continue;
        }
        for ((conn, respond, client, ts), verdict) in
            routes.into_iter().zip(verifier.verify_txs(txs))
        {
            match verdict {
                Ok(tx) => {
                    if events
                        .send_blocking(Event::ClientTx { conn, respond, tx })
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    stats.count(&stats.invalid_client_txs);
                    tracing::debug!(%conn, error = %e, "invalid client tx");
                    let _ = respond.try_send(ClientResponse::Refused {
                        client,
                        ts,
                        reason: Refusal::Invalid,
                    });
                }
            }
        }
    }
}
