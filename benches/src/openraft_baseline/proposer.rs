//! The proposer of a node: it batches the txs submitted to it, verifies their client
//! signatures, and proposes each batch as one openraft log entry.
//!
//! Batching follows raft-bft's leader: a batch closes when it holds `max_batch` txs, when its
//! oldest tx has waited `max_delay`, or at once when no batch is in flight (an idle leader does
//! not make a lone tx wait). Each closed batch is verified with raft-bft's own batch
//! verification (`Verifier::verify_txs`) on the node's blocking pool, off the async worker, and
//! then proposed with `client_write`; batches are verified and proposed concurrently, so
//! several can be in flight at once. Invalid txs are answered with an error and left out. Each
//! valid tx is answered with its result once the entry is applied on this node.
//!
//! Every node runs a proposer, but only the leader's is given txs; a proposer whose node is no
//! longer leader gets openraft's refusal and answers the batch's txs with it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raft_bft::manifest::Cluster;
use raft_bft::message::SignedTx;
use raft_bft::verify::Verifier;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use super::types::{Batch, Raft};

/// Where a tx's outcome goes: its encoded ledger result, or why it was not committed.
pub type Reply = oneshot::Sender<Result<Vec<u8>, String>>;

/// A submitted tx and who waits for it.
pub struct Pending {
    /// The tx.
    pub tx: SignedTx,
    /// Its submitter.
    pub reply: Reply,
}

/// Batches in flight (closed and not yet applied), and a wake-up for when there are none.
#[derive(Default)]
struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// Counts one batch in flight for as long as it lives.
struct InFlightGuard(Arc<InFlight>);

impl InFlightGuard {
    fn new(in_flight: &Arc<InFlight>) -> Self {
        in_flight.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(in_flight.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            // `notify_one` keeps the wake-up if the proposer is not waiting right now.
            self.0.idle.notify_one();
        }
    }
}

/// One node's proposer.
pub struct Proposer {
    raft: Raft,
    cluster: Arc<Cluster>,
    max_batch: usize,
    max_delay: Duration,
    in_flight: Arc<InFlight>,
    /// Batches closed so far (each batch's verifier is seeded with its number).
    batches: u64,
}

impl Proposer {
    /// A proposer into `raft` that verifies txs for `cluster`.
    pub fn new(raft: Raft, cluster: Arc<Cluster>, max_batch: u32, max_delay: Duration) -> Self {
        Proposer {
            raft,
            cluster,
            max_batch: (max_batch as usize).max(1),
            max_delay,
            in_flight: Arc::default(),
            batches: 0,
        }
    }

    /// Takes txs from `input` until it closes. Must run on the node's runtime: the batches'
    /// verification and proposal are spawned there.
    pub async fn run(mut self, mut input: mpsc::UnboundedReceiver<Pending>) {
        let mut queue: VecDeque<(Instant, Pending)> = VecDeque::new();
        let in_flight = self.in_flight.clone();
        loop {
            // Everything that arrived meanwhile.
            loop {
                match input.try_recv() {
                    Ok(p) => queue.push_back((Instant::now(), p)),
                    Err(TryRecvError::Empty) => break,
                    // Shutting down: dropping the queue answers its txs with an error.
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            let Some((oldest, _)) = queue.front() else {
                match input.recv().await {
                    Some(p) => queue.push_back((Instant::now(), p)),
                    None => return,
                }
                continue;
            };
            let deadline = *oldest + self.max_delay;
            let full = queue.len() >= self.max_batch;
            let idle = in_flight.count.load(Ordering::Acquire) == 0;
            if full || idle || Instant::now() >= deadline {
                let take = queue.len().min(self.max_batch);
                let batch = queue.drain(..take).map(|(_, p)| p).collect();
                self.propose(batch);
                continue;
            }
            tokio::select! {
                p = input.recv() => match p {
                    Some(p) => queue.push_back((Instant::now(), p)),
                    None => return,
                },
                () = tokio::time::sleep_until(deadline) => {}
                () = in_flight.idle.notified() => {}
            }
        }
    }

    /// Verifies and proposes `batch` in a task of its own.
    fn propose(&mut self, batch: Vec<Pending>) {
        self.batches += 1;
        let mut seed = [0x5e; 32];
        seed[..8].copy_from_slice(&self.batches.to_le_bytes());
        let guard = InFlightGuard::new(&self.in_flight);
        let raft = self.raft.clone();
        let cluster = self.cluster.clone();
        tokio::spawn(async move {
            commit(raft, cluster, seed, batch).await;
            drop(guard);
        });
    }
}

/// Verifies the batch's signatures, answers the invalid txs, proposes the valid ones as one
/// entry and answers them with their results.
async fn commit(raft: Raft, cluster: Arc<Cluster>, seed: [u8; 32], batch: Vec<Pending>) {
    let (txs, replies): (Vec<SignedTx>, Vec<Reply>) =
        batch.into_iter().map(|p| (p.tx, p.reply)).unzip();
    let verify = move || Verifier::new(cluster, seed).verify_txs(txs);
    let verdicts = match tokio::task::spawn_blocking(verify).await {
        Ok(verdicts) => verdicts,
        Err(e) => return fail(replies, &format!("signature verification failed: {e}")),
    };
    let mut valid = Vec::with_capacity(verdicts.len());
    let mut valid_replies = Vec::with_capacity(verdicts.len());
    // A reply without a verdict (there is one per tx) is dropped, which its submitter sees.
    for (verdict, reply) in verdicts.into_iter().zip(replies) {
        match verdict {
            Ok(checked) => {
                valid.push(checked.into_inner().tx);
                valid_replies.push(reply);
            }
            Err(e) => drop(reply.send(Err(format!("invalid tx: {e}")))),
        }
    }
    if valid.is_empty() {
        return;
    }
    match raft.client_write(Batch(valid)).await {
        Ok(response) => {
            let mut results = response.data.0.into_iter();
            for reply in valid_replies {
                let result = results
                    .next()
                    .ok_or_else(|| "the entry was applied without this tx's result".to_string());
                // A submitter that stopped waiting needs no answer.
                drop(reply.send(result));
            }
        }
        Err(e) => fail(valid_replies, &format!("not committed: {e}")),
    }
}

fn fail(replies: Vec<Reply>, why: &str) {
    for reply in replies {
        drop(reply.send(Err(why.to_string())));
    }
}
