//! The client: signs txs, sends them, and accepts a result once `f + 1` replicas agree.
//!
//! Sans-IO like the rest of the core: no sockets, clocks or threads. The caller feeds in the time
//! of every input ([`Time`]), delivers replies with [`Client::on_reply`], calls
//! [`Client::on_tick`] at [`Client::next_deadline`], and transmits the [`ClientSend`]s it gets
//! back.
//!
//! # Acceptance rule (PROTOCOL.md section 3, step 6)
//!
//! A result is accepted when `f + 1` distinct members sent verified replies with *equal*
//! [`Outcome`]s for this client's outstanding `ts`. At most `f` replicas are Byzantine, so one of
//! the `f + 1` is correct and the outcome is the one the replicated state machine produced. Each
//! replica has one vote per tx: its first verified answer. Another answer from the same replica
//! is a conflict (only a Byzantine replica changes its answer) and is dropped.
//! [`Rejection::Busy`] is not final ([`Rejection::is_final`]): it is counted as a hint and never
//! accepted nor recorded as a vote; the tx stays outstanding and is retried on timeout.
//!
//! # One outstanding tx per client
//!
//! Replicas order and execute a client's txs by strictly increasing `ts`, refuse any `ts` not
//! above the client's last executed one ([`Rejection::Stale`]), and keep only the *last* reply
//! per client for resending. With two txs in flight, a retry of the older one that reaches the
//! leader after the newer one executed would be refused as stale, and its reply could no longer be
//! resent: concurrency within one client turns into spurious refusals and lost replies. A
//! `Client` therefore has at most one tx outstanding; applications that want concurrency run
//! several clients, each with its own key.
//!
//! # Leader tracking and retries
//!
//! Replies do not say who leads, so the client keeps a simple guess: it starts with the leader of
//! term 0 and sends each new tx to the guessed replica (a follower that receives it forwards it to
//! the real leader). When a tx has waited `retry_timeout` without being accepted, the client
//! re-sends the *same* signed tx (same `ts`, same signature, so replicas deduplicate it) to **all**
//! replicas, which makes followers start their `request_timeout` and catch a censoring leader, and
//! doubles the timeout up to `max_retry_timeout`. The first retry of a tx also moves the guess to
//! the replica that leads the next term, since a timeout is what triggers a term change.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Params;
use crate::crypto::KeyPair;
use crate::manifest::Cluster;
use crate::message::{Outcome, Rejection, Reply, SignedTx};
use crate::types::{PublicKey, ReplicaId, Term, Time};
use crate::verify::{VerifiedReplyRoots, Verifier, VerifyError};

/// Client timing settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// How long an outstanding tx waits after a send before it is re-sent to all replicas.
    /// Defaults to the cluster's `request_timeout` (1 s).
    pub retry_timeout: Duration,
    /// The wait between retries doubles after each retry, up to this cap.
    pub max_retry_timeout: Duration,
    /// Stop re-sending after this many retries (`None`: retry for as long as the tx is
    /// outstanding). A tx whose retries ran out stays outstanding, since replies may still
    /// arrive; [`Client::abandon`] frees the client for the next tx.
    pub max_retries: Option<u32>,
}

impl ClientConfig {
    /// The configuration matching a cluster's parameters: `retry_timeout = request_timeout`,
    /// capped backoff at 16 times that, unlimited retries.
    pub fn from_params(params: &Params) -> Self {
        ClientConfig {
            retry_timeout: params.request_timeout,
            max_retry_timeout: params.request_timeout.saturating_mul(16),
            max_retries: None,
        }
    }

    fn validate(&self) -> Result<(), ClientError> {
        if self.retry_timeout.is_zero() {
            return Err(ClientError::InvalidConfig(
                "retry_timeout must be above zero",
            ));
        }
        if self.max_retry_timeout < self.retry_timeout {
            return Err(ClientError::InvalidConfig(
                "max_retry_timeout must be at least retry_timeout",
            ));
        }
        Ok(())
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self::from_params(&Params::default())
    }
}

/// Why the client refused to do something.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// A tx is still outstanding; a client has one at a time (see the module docs).
    #[error("the tx with ts {outstanding_ts} is still outstanding; a client has one tx at a time")]
    Busy {
        /// The `ts` of the outstanding tx.
        outstanding_ts: u64,
    },
    /// The op is larger than the cluster admits; replicas would refuse it.
    #[error("op of {size} bytes exceeds the cluster's max_op_bytes of {limit}")]
    OpTooLarge {
        /// The op's size.
        size: usize,
        /// The cluster's limit.
        limit: u32,
    },
    /// The last `ts` used is `u64::MAX`: no larger one exists.
    #[error("no timestamp left: the last ts used is u64::MAX")]
    TsExhausted,
    /// The configuration cannot work.
    #[error("invalid client config: {0}")]
    InvalidConfig(&'static str),
    /// [`Client::resubmit`] was given a tx of another client.
    #[error("the tx belongs to another client key")]
    ForeignTx,
}

/// Where a [`ClientSend`] goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Destination {
    /// One replica.
    Replica(ReplicaId),
    /// Every replica in the manifest.
    AllReplicas,
}

/// A signed tx for the caller to transmit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSend {
    /// Who to send it to.
    pub to: Destination,
    /// The tx.
    pub tx: SignedTx,
}

/// A result accepted on `f + 1` matching replies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The tx's `ts`.
    pub ts: u64,
    /// The outcome the replicas agree on.
    pub outcome: Outcome,
    /// The replicas whose replies matched, in id order (`f + 1` of them).
    pub replicas: Vec<ReplicaId>,
    /// Time from [`Client::submit`] to acceptance.
    pub latency: Duration,
}

/// Counters of what the client did and of every reply it dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Txs submitted.
    pub submitted: u64,
    /// Re-sends to all replicas after a timeout.
    pub retries: u64,
    /// Txs whose outcome was accepted.
    pub accepted: u64,
    /// Txs given up with [`Client::abandon`].
    pub abandoned: u64,
    /// Verified replies recorded as a replica's vote.
    pub votes: u64,
    /// Verified replies repeating a replica's recorded vote (counted once).
    pub duplicates: u64,
    /// Verified replies contradicting a replica's recorded vote (the first one is kept).
    pub conflicts: u64,
    /// Verified [`Rejection::Busy`] replies: retry hints, never accepted.
    pub busy_hints: u64,
    /// Replies for a `ts` this client used before but is not waiting for (normally the replicas
    /// that answer after `f + 1` others already did). Dropped unverified; not an error.
    pub late: u64,
    /// Refused: addressed to another client.
    pub wrong_client: u64,
    /// Refused: for a `ts` this client never reached.
    pub wrong_ts: u64,
    /// Refused: the replica is not in the manifest.
    pub non_member: u64,
    /// Refused: the inclusion proof does not fit its tree.
    pub malformed: u64,
    /// Refused: the signature does not verify (forged, or any signed field altered).
    pub bad_signature: u64,
}

impl ClientStats {
    /// All refused (invalid) replies; `late` ones are not counted.
    pub fn invalid(&self) -> u64 {
        self.wrong_client + self.wrong_ts + self.non_member + self.malformed + self.bad_signature
    }
}

/// The outstanding tx and the replies collected for it.
struct Pending {
    tx: SignedTx,
    submitted_at: Time,
    last_send: Time,
    timeout: Duration,
    retries: u32,
    /// The first verified, final answer of each replica.
    votes: BTreeMap<ReplicaId, Outcome>,
}

/// A client of one cluster. See the module docs.
pub struct Client {
    cluster: Arc<Cluster>,
    key: KeyPair,
    verifier: Verifier,
    config: ClientConfig,
    /// The largest `ts` ever signed (or learnt from `f + 1` stale refusals).
    last_ts: u64,
    believed_leader: ReplicaId,
    pending: Option<Pending>,
    stats: ClientStats,
    /// Reply-batch signatures verified by this client or others sharing the set.
    verified_roots: Option<VerifiedReplyRoots>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("key", &self.key.public())
            .field("last_ts", &self.last_ts)
            .field("believed_leader", &self.believed_leader)
            .field("outstanding_ts", &self.pending.as_ref().map(|p| p.tx.ts))
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of `cluster` signing with `key`.
    ///
    /// The reply verifier's seed is derived from the client's secret key, so it is deterministic
    /// for a given key yet unpredictable to others.
    pub fn new(
        cluster: Arc<Cluster>,
        key: KeyPair,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        config.validate()?;
        let seed = blake3::derive_key("raft-bft v1 client reply-verifier seed", &key.seed());
        let believed_leader = cluster.leader_of(Term(0));
        Ok(Client {
            verifier: Verifier::new(Arc::clone(&cluster), seed),
            cluster,
            key,
            config,
            last_ts: 0,
            believed_leader,
            pending: None,
            stats: ClientStats::default(),
            verified_roots: None,
        })
    }

    /// Shares `roots` with this client: reply-batch signatures that one client of the set
    /// verified are not verified again by the others. A replica signs one Merkle root per
    /// batch of replies, so clients in one process whose txs shared an entry check its
    /// signature once instead of once each.
    pub fn share_verified_roots(&mut self, roots: VerifiedReplyRoots) {
        self.verified_roots = Some(roots);
    }

    /// Signs `op` as a new tx and returns what to send: the tx, to the believed leader.
    ///
    /// Its `ts` is `max(last ts + 1, now)` (in microseconds), so it strictly increases across
    /// calls whatever `now` does, and a client restarted with a working clock still continues
    /// above its previous timestamps.
    pub fn submit(&mut self, now: Time, op: Vec<u8>) -> Result<Vec<ClientSend>, ClientError> {
        self.check_idle()?;
        let tx = self.sign_next(now, op)?;
        self.resubmit(now, tx)
    }

    fn check_idle(&self) -> Result<(), ClientError> {
        match &self.pending {
            Some(p) => Err(ClientError::Busy {
                outstanding_ts: p.tx.ts,
            }),
            None => Ok(()),
        }
    }

    /// Signs `op` as this client's next tx without sending it (to keep, and
    /// [`Client::resubmit`] later); later txs get larger timestamps.
    pub fn sign_next(&mut self, now: Time, op: Vec<u8>) -> Result<SignedTx, ClientError> {
        let limit = self.cluster.params().max_op_bytes;
        if op.len() > limit as usize {
            return Err(ClientError::OpTooLarge {
                size: op.len(),
                limit,
            });
        }
        let ts = self
            .last_ts
            .checked_add(1)
            .ok_or(ClientError::TsExhausted)?
            .max(now.0);
        self.last_ts = ts;
        Ok(SignedTx::sign(self.cluster.cluster_id(), &self.key, ts, op))
    }

    /// Sends a tx this client signed earlier (one saved, say) once more, and waits for its
    /// outcome like a new one's. Replicas never execute a `(client, ts)` twice: a tx already
    /// executed gets its cached reply again, or, if the client executed a later one since, a
    /// final [`Rejection::Stale`]. A tx of another client is refused.
    pub fn resubmit(&mut self, now: Time, tx: SignedTx) -> Result<Vec<ClientSend>, ClientError> {
        self.check_idle()?;
        if tx.client != self.key.public() {
            return Err(ClientError::ForeignTx);
        }
        self.last_ts = self.last_ts.max(tx.ts);
        self.pending = Some(Pending {
            tx: tx.clone(),
            submitted_at: now,
            last_send: now,
            timeout: self.config.retry_timeout,
            retries: 0,
            votes: BTreeMap::new(),
        });
        self.stats.submitted += 1;
        Ok(vec![ClientSend {
            to: Destination::Replica(self.believed_leader),
            tx,
        }])
    }

    /// Handles a reply. Returns the accepted outcome when this reply completes `f + 1` matching
    /// verified replies for the outstanding tx, which is then cleared.
    ///
    /// Invalid replies are counted in [`Client::stats`] and dropped.
    pub fn on_reply(&mut self, now: Time, reply: Reply) -> Option<Accepted> {
        let me = self.key.public();
        if reply.client != me {
            self.stats.wrong_client += 1;
            tracing::debug!(replica = %reply.replica, "reply for another client dropped");
            return None;
        }
        let waiting = self.pending.as_ref().map(|p| p.tx.ts);
        if waiting != Some(reply.ts) {
            if reply.ts > self.last_ts {
                self.stats.wrong_ts += 1;
                tracing::debug!(replica = %reply.replica, ts = reply.ts, "reply for an unused ts dropped");
            } else {
                self.stats.late += 1;
            }
            return None;
        }
        if let Err(e) = self
            .verifier
            .verify_reply_with(&reply, self.verified_roots.as_ref())
        {
            match e {
                VerifyError::NonMember(_) => self.stats.non_member += 1,
                VerifyError::Signature { .. } => self.stats.bad_signature += 1,
                _ => self.stats.malformed += 1,
            }
            tracing::debug!(replica = %reply.replica, error = %e, "invalid reply dropped");
            return None;
        }
        if let Outcome::Rejected(r) = &reply.outcome {
            if !r.is_final() {
                self.stats.busy_hints += 1;
                return None;
            }
        }
        let needed = self.cluster.f() + 1;
        let pending = self.pending.as_mut()?;
        if let Some(first) = pending.votes.get(&reply.replica) {
            if *first == reply.outcome {
                self.stats.duplicates += 1;
            } else {
                self.stats.conflicts += 1;
                tracing::warn!(replica = %reply.replica, ts = reply.ts, "replica changed its answer");
            }
            return None;
        }
        self.stats.votes += 1;
        pending.votes.insert(reply.replica, reply.outcome.clone());
        let replicas: Vec<ReplicaId> = pending
            .votes
            .iter()
            .filter(|(_, o)| **o == reply.outcome)
            .map(|(r, _)| *r)
            .collect();
        if replicas.len() < needed {
            return None;
        }
        let latency = now.since(pending.submitted_at);
        self.pending = None;
        self.stats.accepted += 1;
        if let Outcome::Rejected(Rejection::Stale { last_executed }) = &reply.outcome {
            // f + 1 replicas, so at least one correct one, say the cluster executed a larger ts
            // than ours (for example after a restart without a clock): continue above it.
            self.last_ts = self.last_ts.max(*last_executed);
        }
        Some(Accepted {
            ts: reply.ts,
            outcome: reply.outcome,
            replicas,
            latency,
        })
    }

    /// Advances time: once the outstanding tx has waited its timeout since the last send, returns
    /// the same signed tx addressed to all replicas and doubles the timeout (up to the cap).
    pub fn on_tick(&mut self, now: Time) -> Vec<ClientSend> {
        let Some(deadline) = self.next_deadline() else {
            return Vec::new();
        };
        if now < deadline {
            return Vec::new();
        }
        let cap = self.config.max_retry_timeout;
        let Some(p) = self.pending.as_mut() else {
            return Vec::new();
        };
        if p.retries == 0 {
            // The guessed leader did not get it committed in time: guess the next term's leader.
            let next = (u64::from(self.believed_leader.0) + 1) % self.cluster.n() as u64;
            self.believed_leader = self.cluster.leader_of(Term(next));
        }
        p.retries = p.retries.saturating_add(1);
        p.last_send = now;
        p.timeout = p.timeout.saturating_mul(2).min(cap);
        self.stats.retries += 1;
        vec![ClientSend {
            to: Destination::AllReplicas,
            tx: p.tx.clone(),
        }]
    }

    /// When [`Client::on_tick`] next has something to do: `None` when no tx is outstanding or
    /// its retries ran out.
    pub fn next_deadline(&self) -> Option<Time> {
        let p = self.pending.as_ref()?;
        if self.config.max_retries.is_some_and(|m| p.retries >= m) {
            return None;
        }
        Some(p.last_send.after(p.timeout))
    }

    /// Gives up waiting for the outstanding tx and returns it, so that a new one can be
    /// submitted. The tx may still be executed: its outcome is unknown.
    pub fn abandon(&mut self) -> Option<SignedTx> {
        let p = self.pending.take()?;
        self.stats.abandoned += 1;
        Some(p.tx)
    }

    /// The client's public key (its identity).
    pub fn public_key(&self) -> PublicKey {
        self.key.public()
    }

    /// The outstanding tx, if any.
    pub fn outstanding(&self) -> Option<&SignedTx> {
        self.pending.as_ref().map(|p| &p.tx)
    }

    /// True if the outstanding tx used up `max_retries` (it is no longer re-sent).
    pub fn retries_exhausted(&self) -> bool {
        self.pending.is_some() && self.next_deadline().is_none()
    }

    /// The replica new txs are sent to.
    pub fn believed_leader(&self) -> ReplicaId {
        self.believed_leader
    }

    /// The largest `ts` used so far (the next tx gets a larger one).
    pub fn last_ts(&self) -> u64 {
        self.last_ts
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::MerkleTree;
    use crate::message::{reply_batch_digest, reply_leaf};
    use crate::types::{Digest, Index};

    const SEC: u64 = 1_000_000;

    use crate::testing::TestCluster as Net;

    fn net(n: usize) -> Net {
        net_named(n, "client-test")
    }

    fn net_named(n: usize, name: &str) -> Net {
        Net::new(name, n, Params::default())
    }

    // Test helpers on the shared test cluster (an inherent impl: same crate).
    impl Net {
        fn client(&self, seed: u8) -> Client {
            Client::new(
                Arc::clone(&self.cluster),
                crate::testing::client_key(seed),
                ClientConfig::default(),
            )
            .unwrap()
        }

        /// The reply `replica` sends, built as a replica builds it: the client's leaf inside an
        /// entry's batch of replies, one signature over the batch root.
        fn reply(&self, replica: u32, client: PublicKey, ts: u64, outcome: &Outcome) -> Reply {
            self.reply_signed_by(replica, &self.keys[replica as usize], client, ts, outcome)
        }

        /// A reply naming `replica` but signed with `signer`.
        fn reply_signed_by(
            &self,
            replica: u32,
            signer: &KeyPair,
            client: PublicKey,
            ts: u64,
            outcome: &Outcome,
        ) -> Reply {
            let cid = self.cluster.cluster_id();
            // A batch of 1..=5 replies; ours at a position that depends on the replica.
            let count = 1 + replica as usize % 5;
            let position = (replica as usize * 3) % count;
            let mut leaves: Vec<Digest> = (0..count)
                .map(|i| {
                    let other = KeyPair::from_seed([200 + i as u8; 32]).public();
                    reply_leaf(cid, &other, 7, &executed(3, b"other"))
                })
                .collect();
            leaves[position] = reply_leaf(cid, &client, ts, outcome);
            let tree = MerkleTree::new(cid, &leaves);
            let root = tree.root(cid);
            let sig = signer.sign(&reply_batch_digest(cid, ReplicaId(replica), &root));
            Reply {
                client,
                ts,
                outcome: outcome.clone(),
                replica: ReplicaId(replica),
                proof: tree.proof(position).unwrap(),
                sig,
            }
        }
    }

    fn executed(index: u64, result: &[u8]) -> Outcome {
        Outcome::Executed {
            index: Index(index),
            result: result.to_vec(),
        }
    }

    fn submit(c: &mut Client, now: u64) -> SignedTx {
        let sends = c.submit(Time(now), b"op".to_vec()).unwrap();
        assert_eq!(sends.len(), 1);
        sends[0].tx.clone()
    }

    #[test]
    fn clients_sharing_verified_roots_check_a_batch_signature_once_and_nothing_else_passes() {
        let n = net(4);
        let roots = VerifiedReplyRoots::default();
        let (mut a, mut b) = (n.client(1), n.client(2));
        a.share_verified_roots(roots.clone());
        b.share_verified_roots(roots.clone());
        let (ta, tb) = (submit(&mut a, SEC), submit(&mut b, SEC));
        let cid = n.cluster.cluster_id();
        let outcome = executed(3, b"done");
        // Replica 0 answers both clients in one batch: one root, one signature.
        let leaves = [
            reply_leaf(cid, &a.public_key(), ta.ts, &outcome),
            reply_leaf(cid, &b.public_key(), tb.ts, &outcome),
        ];
        let tree = MerkleTree::new(cid, &leaves);
        let sig = n.keys[0].sign(&reply_batch_digest(cid, ReplicaId(0), &tree.root(cid)));
        let reply_to = |client: &Client, ts: u64, position: usize, outcome: &Outcome| Reply {
            client: client.public_key(),
            ts,
            outcome: outcome.clone(),
            replica: ReplicaId(0),
            proof: tree.proof(position).unwrap(),
            sig,
        };
        assert!(a
            .on_reply(Time(2 * SEC), reply_to(&a, ta.ts, 0, &outcome))
            .is_none());
        assert_eq!((a.stats().votes, roots.len()), (1, 1));
        // The same signed root is not checked again for b, and b's vote counts.
        assert!(b
            .on_reply(Time(2 * SEC), reply_to(&b, tb.ts, 1, &outcome))
            .is_none());
        assert_eq!((b.stats().votes, roots.len()), (1, 1));
        // A cached signature does not vouch for another outcome: the proof then leads to
        // another root, whose signature is checked and fails.
        let mut c = n.client(3);
        c.share_verified_roots(roots.clone());
        let tc = submit(&mut c, SEC);
        let forged = Reply {
            client: c.public_key(),
            ..reply_to(&b, tc.ts, 1, &executed(3, b"forged"))
        };
        assert!(c.on_reply(Time(2 * SEC), forged).is_none());
        assert_eq!((c.stats().bad_signature, c.stats().votes), (1, 0));
        assert_eq!(roots.len(), 1);
    }

    #[test]
    fn a_saved_tx_is_resubmitted_as_signed_and_only_its_owner_may_resubmit_it() {
        let n = net(4);
        let mut c = n.client(1);
        let tx = c.sign_next(Time(5 * SEC), b"op".to_vec()).unwrap();
        assert_eq!(tx.ts, 5 * SEC);
        assert!(c.outstanding().is_none(), "signing alone sends nothing");
        let sends = c.resubmit(Time(6 * SEC), tx.clone()).unwrap();
        assert_eq!(sends.len(), 1);
        assert_eq!(sends[0].tx, tx, "the saved tx goes out unchanged");
        let accepted = [0u32, 1]
            .into_iter()
            .filter_map(|r| {
                let reply = n.reply(r, c.public_key(), tx.ts, &executed(3, b"done"));
                c.on_reply(Time(7 * SEC), reply)
            })
            .last()
            .expect("f + 1 matching replies accept it");
        assert_eq!(accepted.ts, tx.ts);
        // The next tx gets a larger timestamp than the saved one.
        assert!(c.sign_next(Time(SEC), b"next".to_vec()).unwrap().ts > tx.ts);
        // Another client's tx is refused.
        let mut other = n.client(2);
        assert_eq!(
            other.resubmit(Time(8 * SEC), tx),
            Err(ClientError::ForeignTx)
        );
    }

    #[test]
    fn accepts_on_exactly_f_plus_one_matching() {
        for n in [4usize, 7] {
            let net = net(n);
            let f = net.cluster.f();
            let mut c = net.client(0);
            let tx = submit(&mut c, SEC);
            let out = executed(5, b"ok");
            for r in 0..f as u32 {
                assert_eq!(
                    c.on_reply(Time(SEC + 1), net.reply(r, c.public_key(), tx.ts, &out)),
                    None,
                    "n={n}: {} replies",
                    r + 1
                );
                assert!(c.outstanding().is_some());
            }
            let acc = c
                .on_reply(
                    Time(SEC + 10),
                    net.reply(f as u32, c.public_key(), tx.ts, &out),
                )
                .expect("f + 1 matching replies accept");
            assert_eq!(acc.ts, tx.ts);
            assert_eq!(acc.outcome, out);
            assert_eq!(
                acc.replicas,
                (0..=f as u32).map(ReplicaId).collect::<Vec<_>>()
            );
            assert_eq!(acc.latency, Duration::from_micros(10));
            assert!(c.outstanding().is_none());
            assert_eq!(c.stats().accepted, 1);
            assert_eq!(c.stats().votes, f as u64 + 1);
            // The remaining replicas' replies are late and change nothing.
            let late = net.reply(n as u32 - 1, c.public_key(), tx.ts, &out);
            assert_eq!(c.on_reply(Time(SEC + 11), late), None);
            assert_eq!(c.stats().late, 1);
            assert_eq!(c.stats().invalid(), 0);
            // The client is free for the next tx.
            assert!(c.submit(Time(SEC + 12), b"next".to_vec()).is_ok());
        }
    }

    #[test]
    fn mismatched_outcomes_do_not_combine() {
        let net = net(4);
        let mut c = net.client(0);
        let tx = submit(&mut c, SEC);
        let (a, b) = (executed(5, b"a"), executed(5, b"b"));
        let me = c.public_key();
        assert_eq!(c.on_reply(Time(SEC), net.reply(0, me, tx.ts, &a)), None);
        assert_eq!(c.on_reply(Time(SEC), net.reply(1, me, tx.ts, &b)), None);
        // Same result at another index is another outcome too.
        assert_eq!(
            c.on_reply(Time(SEC), net.reply(3, me, tx.ts, &executed(6, b"a"))),
            None
        );
        let acc = c.on_reply(Time(SEC), net.reply(2, me, tx.ts, &a)).unwrap();
        assert_eq!(acc.outcome, a);
        assert_eq!(acc.replicas, vec![ReplicaId(0), ReplicaId(2)]);
    }

    #[test]
    fn duplicate_replies_count_once() {
        let net = net(4);
        let mut c = net.client(0);
        let tx = submit(&mut c, SEC);
        let out = executed(1, b"x");
        let r0 = net.reply(0, c.public_key(), tx.ts, &out);
        for _ in 0..3 {
            assert_eq!(c.on_reply(Time(SEC), r0.clone()), None);
        }
        assert_eq!(c.stats().duplicates, 2);
        assert_eq!(c.stats().votes, 1);
        assert!(c
            .on_reply(Time(SEC), net.reply(1, c.public_key(), tx.ts, &out))
            .is_some());
    }

    #[test]
    fn a_replica_changing_its_answer_keeps_its_first() {
        let net = net(4);
        let mut c = net.client(0);
        let tx = submit(&mut c, SEC);
        let me = c.public_key();
        let (a, b) = (executed(5, b"a"), executed(5, b"b"));
        assert_eq!(c.on_reply(Time(SEC), net.reply(0, me, tx.ts, &a)), None);
        assert_eq!(c.on_reply(Time(SEC), net.reply(0, me, tx.ts, &b)), None);
        assert_eq!(c.stats().conflicts, 1);
        // r0's vote is still `a`: one more `b` is not enough, a second one is.
        assert_eq!(c.on_reply(Time(SEC), net.reply(1, me, tx.ts, &b)), None);
        let acc = c.on_reply(Time(SEC), net.reply(2, me, tx.ts, &b)).unwrap();
        assert_eq!(acc.replicas, vec![ReplicaId(1), ReplicaId(2)]);
    }

    #[test]
    fn invalid_replies_are_refused_and_counted() {
        let net = net(4);
        let mut c = net.client(0);
        let other = net.client(1).public_key();
        let tx = submit(&mut c, SEC);
        let me = c.public_key();
        let out = executed(2, b"r");
        let now = Time(SEC);

        // Forged: r1 signs a reply claiming to be r0 (twice as many forgeries as needed).
        for _ in 0..3 {
            assert_eq!(
                c.on_reply(now, net.reply_signed_by(0, &net.keys[1], me, tx.ts, &out)),
                None
            );
        }
        // A flipped signature bit.
        let mut flipped = net.reply(1, me, tx.ts, &out);
        flipped.sig.0[10] ^= 1;
        assert_eq!(c.on_reply(now, flipped), None);
        // The outcome altered after signing.
        let mut altered = net.reply(2, me, tx.ts, &out);
        altered.outcome = executed(2, b"forged");
        assert_eq!(c.on_reply(now, altered), None);
        // Signed for another cluster.
        let foreign = net_named(4, "another-cluster");
        assert_eq!(c.on_reply(now, foreign.reply(3, me, tx.ts, &out)), None);
        assert_eq!(c.stats().bad_signature, 6);

        // A proof that does not fit its tree.
        let mut bad_proof = net.reply(0, me, tx.ts, &out);
        bad_proof.proof.position = bad_proof.proof.leaf_count;
        assert_eq!(c.on_reply(now, bad_proof), None);
        assert_eq!(c.stats().malformed, 1);

        // Wrong client: a correctly signed reply, addressed to someone else.
        assert_eq!(c.on_reply(now, net.reply(0, other, tx.ts, &out)), None);
        assert_eq!(c.on_reply(now, net.reply(1, other, tx.ts, &out)), None);
        assert_eq!(c.stats().wrong_client, 2);

        // Wrong ts: correctly signed, for a ts this client never used.
        assert_eq!(c.on_reply(now, net.reply(0, me, tx.ts + 1, &out)), None);
        assert_eq!(c.on_reply(now, net.reply(1, me, tx.ts + 1, &out)), None);
        assert_eq!(c.stats().wrong_ts, 2);
        // An older ts (one the client skipped) is late, not accepted either.
        assert_eq!(c.on_reply(now, net.reply(0, me, tx.ts - 1, &out)), None);
        assert_eq!(c.on_reply(now, net.reply(1, me, tx.ts - 1, &out)), None);
        assert_eq!(c.stats().late, 2);

        // Non-member: "replica 4" of a 4-replica cluster, signing with a key of its own.
        let outsider = net.reply_signed_by(4, &KeyPair::from_seed([99; 32]), me, tx.ts, &out);
        assert_eq!(c.on_reply(now, outsider.clone()), None);
        assert_eq!(c.on_reply(now, outsider), None);
        assert_eq!(c.stats().non_member, 2);

        assert_eq!(c.stats().invalid(), 6 + 1 + 2 + 2 + 2);
        assert_eq!(c.stats().votes, 0);
        assert_eq!(c.outstanding(), Some(&tx));
        // Valid replies still work after all that: none of the invalid ones was recorded.
        assert_eq!(c.on_reply(now, net.reply(0, me, tx.ts, &out)), None);
        assert!(c.on_reply(now, net.reply(1, me, tx.ts, &out)).is_some());
    }

    #[test]
    fn busy_is_never_accepted() {
        let net = net(4);
        let mut c = net.client(0);
        let tx = submit(&mut c, SEC);
        let me = c.public_key();
        let busy = Outcome::Rejected(Rejection::Busy);
        for r in 0..4 {
            assert_eq!(c.on_reply(Time(SEC), net.reply(r, me, tx.ts, &busy)), None);
        }
        assert_eq!(c.stats().busy_hints, 4);
        assert_eq!(c.stats().votes, 0);
        assert!(c.outstanding().is_some());
        // A replica that said Busy may answer for real later: that is its vote, not a conflict.
        let out = executed(9, b"done");
        assert_eq!(c.on_reply(Time(SEC), net.reply(0, me, tx.ts, &out)), None);
        assert!(c
            .on_reply(Time(SEC), net.reply(1, me, tx.ts, &out))
            .is_some());
        assert_eq!(c.stats().conflicts, 0);
    }

    #[test]
    fn final_rejections_are_accepted_and_stale_moves_ts_up() {
        let net = net(4);
        let mut c = net.client(0);
        let tx = submit(&mut c, 5);
        let me = c.public_key();
        let stale = Outcome::Rejected(Rejection::Stale {
            last_executed: 1_000 * SEC,
        });
        assert_eq!(c.on_reply(Time(6), net.reply(2, me, tx.ts, &stale)), None);
        let acc = c
            .on_reply(Time(7), net.reply(3, me, tx.ts, &stale))
            .unwrap();
        assert_eq!(acc.outcome, stale);
        // The next tx is above what the cluster executed, even with an early clock.
        let next = submit(&mut c, 8);
        assert_eq!(next.ts, 1_000 * SEC + 1);
    }

    #[test]
    fn ts_strictly_increases_even_if_time_goes_back() {
        let net = net(4);
        let mut c = net.client(0);
        let mut last = 0;
        for (i, now) in [1_000u64, 10, 10, 5_000, 5_000, 4_999, 0, 9_000]
            .into_iter()
            .enumerate()
        {
            let tx = submit(&mut c, now);
            assert!(tx.ts > last, "step {i}: ts {} after {last}", tx.ts);
            assert_eq!(tx.ts, (last + 1).max(now), "step {i}");
            last = tx.ts;
            assert_eq!(c.last_ts(), last);
            c.abandon().unwrap();
        }
        assert_eq!(c.stats().abandoned, 8);
    }

    #[test]
    fn one_outstanding_tx_at_a_time() {
        let net = net(4);
        let mut c = net.client(0);
        let tx = submit(&mut c, SEC);
        assert_eq!(
            c.submit(Time(2 * SEC), b"second".to_vec()),
            Err(ClientError::Busy {
                outstanding_ts: tx.ts
            })
        );
        // The refused submit used no ts.
        assert_eq!(c.last_ts(), tx.ts);
        assert_eq!(c.outstanding(), Some(&tx));
    }

    #[test]
    fn oversized_ops_are_refused() {
        let net = net(4);
        let mut c = net.client(0);
        let limit = net.cluster.params().max_op_bytes;
        assert_eq!(
            c.submit(Time(1), vec![0; limit as usize + 1]),
            Err(ClientError::OpTooLarge {
                size: limit as usize + 1,
                limit
            })
        );
        assert!(c.outstanding().is_none());
        assert!(c.submit(Time(1), vec![0; limit as usize]).is_ok());
    }

    #[test]
    fn first_send_goes_to_term_zero_leader_and_verifies() {
        let net = net(4);
        let mut c = net.client(0);
        let sends = c.submit(Time(SEC), b"hello".to_vec()).unwrap();
        assert_eq!(
            sends[0].to,
            Destination::Replica(net.cluster.leader_of(Term(0)))
        );
        let mut v = Verifier::new(Arc::clone(&net.cluster), [0; 32]);
        assert!(v.verify_tx(sends[0].tx.clone()).is_ok());
        assert_eq!(sends[0].tx.client, c.public_key());
        assert_eq!(sends[0].tx.op, b"hello");
    }

    #[test]
    fn retries_broadcast_the_same_tx_with_backoff() {
        let net = net(4);
        let mut c = net.client(0);
        let t0 = 10 * SEC;
        let tx = submit(&mut c, t0);
        assert_eq!(c.next_deadline(), Some(Time(t0 + SEC)));
        assert!(c.on_tick(Time(t0 + SEC - 1)).is_empty());
        let mut at = t0;
        let mut wait = SEC;
        for i in 0..8u64 {
            at += wait;
            assert_eq!(c.next_deadline(), Some(Time(at)), "retry {i}");
            assert!(c.on_tick(Time(at - 1)).is_empty());
            let sends = c.on_tick(Time(at));
            assert_eq!(
                sends,
                vec![ClientSend {
                    to: Destination::AllReplicas,
                    tx: tx.clone()
                }],
                "retry {i} re-sends the identical signed tx to all"
            );
            // Nothing more until the next deadline.
            assert!(c.on_tick(Time(at)).is_empty());
            wait = (wait * 2).min(16 * SEC);
        }
        assert_eq!(c.stats().retries, 8);
        // The next tx goes to the next term's leader.
        assert_eq!(c.believed_leader(), net.cluster.leader_of(Term(1)));
        // Acceptance stops the retries.
        let me = c.public_key();
        let out = executed(1, b"");
        c.on_reply(Time(at), net.reply(0, me, tx.ts, &out));
        assert!(c
            .on_reply(Time(at), net.reply(1, me, tx.ts, &out))
            .is_some());
        assert_eq!(c.next_deadline(), None);
        assert!(c.on_tick(Time(at + 100 * SEC)).is_empty());
        let sends = c.submit(Time(at + 100 * SEC), b"next".to_vec()).unwrap();
        assert_eq!(sends[0].to, Destination::Replica(ReplicaId(1)));
    }

    #[test]
    fn max_retries_stops_resending() {
        let net = net(4);
        let config = ClientConfig {
            max_retries: Some(2),
            ..ClientConfig::default()
        };
        let mut c = Client::new(
            Arc::clone(&net.cluster),
            KeyPair::from_seed([42; 32]),
            config,
        )
        .unwrap();
        let tx = submit(&mut c, 0);
        assert_eq!(c.on_tick(Time(SEC)).len(), 1);
        assert_eq!(c.on_tick(Time(3 * SEC)).len(), 1);
        assert!(c.retries_exhausted());
        assert_eq!(c.next_deadline(), None);
        assert!(c.on_tick(Time(1_000 * SEC)).is_empty());
        // Still outstanding: a late majority is still accepted.
        let out = executed(1, b"");
        let me = c.public_key();
        c.on_reply(Time(0), net.reply(2, me, tx.ts, &out));
        assert!(c.on_reply(Time(0), net.reply(3, me, tx.ts, &out)).is_some());
    }

    #[test]
    fn invalid_configs_are_refused() {
        let net = net(4);
        let key = KeyPair::from_seed([1; 32]);
        let zero = ClientConfig {
            retry_timeout: Duration::ZERO,
            ..ClientConfig::default()
        };
        assert!(matches!(
            Client::new(Arc::clone(&net.cluster), key.clone(), zero),
            Err(ClientError::InvalidConfig(_))
        ));
        let inverted = ClientConfig {
            retry_timeout: Duration::from_secs(2),
            max_retry_timeout: Duration::from_secs(1),
            max_retries: None,
        };
        assert!(matches!(
            Client::new(Arc::clone(&net.cluster), key, inverted),
            Err(ClientError::InvalidConfig(_))
        ));
        assert_eq!(
            ClientConfig::default().retry_timeout,
            Duration::from_secs(1)
        );
    }
}
