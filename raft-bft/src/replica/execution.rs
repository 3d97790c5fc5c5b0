//! Execution of committed entries: exactly-once per `(client, ts)`, the per-client reply table,
//! the running state digest, and batched signed replies.

use std::collections::BTreeMap;

use super::HashMap;
use crate::checkpoint::{self, CheckpointError, CheckpointState, ClientRow};
use crate::crypto::KeyPair;
use crate::merkle::MerkleTree;
use crate::message::{reply_batch_digest, reply_leaf, Outcome, Reply};
use crate::state_machine::StateMachine;
use crate::types::{ClientId, Digest, Index, ReplicaId};
use crate::verify::CheckedEntry;

/// The replicated per-client record: the last executed `ts` and its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClientRecord {
    pub(crate) last_ts: u64,
    pub(crate) outcome: Outcome,
}

/// How many past state digests are kept to check late execution certificates.
const DIGEST_HISTORY: usize = 1024;

pub(crate) struct Execution<S> {
    pub(crate) app: S,
    /// Every this many entries, the digest covers the client table and a checkpoint is taken.
    interval: u64,
    applied: Index,
    digest: Digest,
    clients: HashMap<ClientId, ClientRecord>,
    history: BTreeMap<Index, Digest>,
}

/// The result of executing one entry.
pub(crate) struct Executed {
    pub(crate) digest: Digest,
    pub(crate) replies: Vec<Reply>,
    pub(crate) executed_txs: usize,
    pub(crate) skipped_txs: usize,
    /// The state after this entry, at a checkpoint index.
    pub(crate) checkpoint: Option<CheckpointState>,
}

impl<S: StateMachine> Execution<S> {
    pub(crate) fn new(app: S, cluster_id: &Digest, interval: u64) -> Self {
        Execution {
            app,
            interval: interval.max(1),
            applied: Index(0),
            digest: *cluster_id,
            clients: HashMap::default(),
            history: BTreeMap::new(),
        }
    }

    pub(crate) fn applied(&self) -> Index {
        self.applied
    }

    pub(crate) fn digest(&self) -> Digest {
        self.digest
    }

    pub(crate) fn digest_at(&self, index: Index) -> Option<Digest> {
        if index == self.applied {
            return Some(self.digest);
        }
        self.history.get(&index).copied()
    }

    pub(crate) fn client(&self, client: &ClientId) -> Option<&ClientRecord> {
        self.clients.get(client)
    }

    pub(crate) fn last_executed_ts(&self, client: &ClientId) -> u64 {
        self.clients.get(client).map_or(0, |r| r.last_ts)
    }

    /// Executes the next committed entry. A tx whose `ts` is not above its client's last executed
    /// one is skipped (it was executed already, or is stale): this is what makes execution
    /// exactly-once even if a faulty leader orders a tx twice.
    ///
    /// `signer` signs the entry's replies (None while replaying the log on restart: no replies
    /// are sent then).
    pub(crate) fn execute(
        &mut self,
        cluster_id: &Digest,
        entry: &CheckedEntry,
        signer: Option<(&KeyPair, ReplicaId)>,
    ) -> Executed {
        debug_assert_eq!(entry.entry.index, self.applied.next());
        let index = entry.entry.index;
        let mut leaves = Vec::with_capacity(entry.entry.txs.len());
        let mut answered = Vec::with_capacity(entry.entry.txs.len());
        let mut skipped_txs = 0;
        for tx in &entry.entry.txs {
            if tx.ts <= self.last_executed_ts(&tx.client) {
                skipped_txs += 1;
                continue;
            }
            let result = self.app.apply(&tx.client, &tx.op);
            let outcome = Outcome::Executed { index, result };
            leaves.push(reply_leaf(cluster_id, &tx.client, tx.ts, &outcome));
            self.clients.insert(
                tx.client,
                ClientRecord {
                    last_ts: tx.ts,
                    outcome: outcome.clone(),
                },
            );
            answered.push((tx.client, tx.ts, outcome));
        }
        let tree = MerkleTree::new(cluster_id, &leaves);
        let results_root = tree.root(cluster_id);
        let prev_digest = self.digest;
        let at_checkpoint = checkpoint::is_checkpoint_index(index, self.interval);
        let rows = at_checkpoint.then(|| self.client_rows());
        let clients = rows.as_ref().map(|rows| {
            checkpoint::clients_hash(
                cluster_id,
                rows.iter().map(|r| (&r.client, r.last_ts, &r.outcome)),
            )
        });
        self.digest = checkpoint::state_digest(
            cluster_id,
            &prev_digest,
            index,
            &entry.hash,
            &results_root,
            &self.app.digest(),
            clients.as_ref(),
        );
        let checkpoint = rows.map(|clients| CheckpointState {
            index,
            entry_hash: entry.hash,
            prev_digest,
            results_root,
            clients,
            app: self.app.snapshot(),
        });
        self.applied = index;
        self.history.insert(index, self.digest);
        while self.history.len() > DIGEST_HISTORY {
            self.history.pop_first();
        }
        let executed_txs = answered.len();
        let replies = match signer {
            Some((key, replica)) if !answered.is_empty() => {
                let sig = key.sign(&reply_batch_digest(cluster_id, replica, &results_root));
                answered
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, (client, ts, outcome))| {
                        Some(Reply {
                            client,
                            ts,
                            outcome,
                            replica,
                            proof: tree.proof(i)?,
                            sig,
                        })
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        Executed {
            digest: self.digest,
            replies,
            executed_txs,
            skipped_txs,
            checkpoint,
        }
    }

    /// The client table, sorted by client.
    fn client_rows(&self) -> Vec<ClientRow> {
        let mut rows: Vec<ClientRow> = self
            .clients
            .iter()
            .map(|(client, r)| ClientRow {
                client: *client,
                last_ts: r.last_ts,
                outcome: r.outcome.clone(),
            })
            .collect();
        rows.sort_unstable_by_key(|r| r.client);
        rows
    }

    /// Replaces the whole state with a checkpoint's, if it hashes to `certified`; otherwise
    /// leaves the state as it was.
    ///
    /// The application is restored before its digest can be computed, so the current state is
    /// snapshotted first and restored again if the checkpoint is refused. Only if the
    /// application cannot take its own snapshot back is the state lost
    /// ([`CheckpointError::StateLost`]): the caller must then not execute before a checkpoint
    /// installs.
    pub(crate) fn restore(
        &mut self,
        cluster_id: &Digest,
        state: CheckpointState,
        certified: Digest,
    ) -> Result<(), CheckpointError> {
        let clients = checkpoint::clients_hash(
            cluster_id,
            state
                .clients
                .iter()
                .map(|r| (&r.client, r.last_ts, &r.outcome)),
        );
        let backup = self.app.snapshot();
        let put_back = |app: &mut S, refused: CheckpointError| match app.restore(&backup) {
            Ok(()) => refused,
            Err(e) => CheckpointError::StateLost(format!("{refused}; then: {e}")),
        };
        if let Err(e) = self.app.restore(&state.app) {
            return Err(put_back(&mut self.app, CheckpointError::Restore(e)));
        }
        let computed = checkpoint::state_digest(
            cluster_id,
            &state.prev_digest,
            state.index,
            &state.entry_hash,
            &state.results_root,
            &self.app.digest(),
            Some(&clients),
        );
        if computed != certified {
            let refused = CheckpointError::DigestMismatch {
                certified,
                computed,
            };
            return Err(put_back(&mut self.app, refused));
        }
        self.applied = state.index;
        self.digest = computed;
        self.clients = state
            .clients
            .into_iter()
            .map(|r| {
                (
                    r.client,
                    ClientRecord {
                        last_ts: r.last_ts,
                        outcome: r.outcome,
                    },
                )
            })
            .collect();
        self.history.clear();
        self.history.insert(state.index, computed);
        Ok(())
    }
}

/// Signs a reply that stands alone (a refusal, or a cached reply sent again).
pub(crate) fn single_reply(
    cluster_id: &Digest,
    key: &KeyPair,
    replica: ReplicaId,
    client: ClientId,
    ts: u64,
    outcome: Outcome,
) -> Reply {
    let leaf = reply_leaf(cluster_id, &client, ts, &outcome);
    let tree = MerkleTree::new(cluster_id, &[leaf]);
    let root = tree.root(cluster_id);
    Reply {
        client,
        ts,
        outcome,
        replica,
        proof: tree.proof(0).unwrap_or(crate::merkle::MerkleProof {
            position: 0,
            leaf_count: 1,
            siblings: Vec::new(),
        }),
        sig: key.sign(&reply_batch_digest(cluster_id, replica, &root)),
    }
}
