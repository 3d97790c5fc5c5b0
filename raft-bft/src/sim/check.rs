//! Checkers: agreement, validity, linearizability, and the incremental monitor of committed
//! hashes and state digests that runs during a simulation.
//!
//! The checkers are public and take plain data, so they can be tested on fabricated histories
//! (and reused by other harnesses).

use std::collections::{BTreeMap, BTreeSet};

use crate::crypto::BatchVerifier;
use crate::message::{entry_hash, Entry, Outcome};
use crate::state_machine::StateMachine;
use crate::types::{ClientId, Digest, Index, ReplicaId, Time};

use super::history::History;

/// Agreement: the committed logs, given as entry hashes from index 1 on, must be prefixes of one
/// another. Returns one violation per log that departs from the longest one.
pub fn check_agreement(logs: &[(ReplicaId, Vec<Digest>)]) -> Vec<String> {
    let Some((longest_id, longest)) = logs
        .iter()
        .max_by_key(|(id, log)| (log.len(), std::cmp::Reverse(*id)))
    else {
        return Vec::new();
    };
    let mut violations = Vec::new();
    for (id, log) in logs {
        if let Some(i) = log.iter().zip(longest).position(|(a, b)| a != b) {
            violations.push(format!(
                "agreement: {id} and {longest_id} committed different entries at index {} ({} vs {})",
                i + 1,
                log[i],
                longest[i]
            ));
        }
    }
    violations
}

/// Validity of one committed log: entries are consecutive from index 1 and hash-chained from
/// the genesis hash (`cluster_id`); every tx's signature verifies under its client's key; every
/// tx was submitted, with exactly these bytes, by a client of `history`. `who` names the log in
/// the violations (a replica, or the committed log as the replicas reported it).
pub fn check_validity(
    cluster_id: &Digest,
    who: impl std::fmt::Display,
    log: &[Entry],
    history: &History,
) -> Vec<String> {
    let submitted: BTreeMap<(ClientId, u64), &[u8]> = history
        .ops
        .iter()
        .map(|o| ((o.client, o.ts), o.op.as_slice()))
        .collect();
    let mut violations = Vec::new();
    let mut prev = *cluster_id;
    let mut batch = BatchVerifier::new();
    let mut where_ = Vec::new();
    for (i, entry) in log.iter().enumerate() {
        let index = Index(i as u64 + 1);
        if entry.index != index {
            violations.push(format!(
                "validity: {who} holds entry {} at position {index}",
                entry.index
            ));
        }
        if entry.prev_hash != prev {
            violations.push(format!(
                "validity: {who}'s entry {index} does not chain to the entry below"
            ));
        }
        let ids: Vec<Digest> = entry.txs.iter().map(|t| t.id(cluster_id)).collect();
        prev = entry_hash(cluster_id, entry.term, entry.index, &entry.prev_hash, &ids);
        for (tx, id) in entry.txs.iter().zip(ids) {
            batch.push(tx.client, id, tx.sig);
            where_.push((index, tx.client, tx.ts));
            match submitted.get(&(tx.client, tx.ts)) {
                None => violations.push(format!(
                    "validity: {who} committed tx (client {}, ts {}) at index {index} that no client submitted",
                    tx.client, tx.ts
                )),
                Some(op) if *op != tx.op.as_slice() => violations.push(format!(
                    "validity: {who} committed tx (client {}, ts {}) at index {index} with an op its client did not submit",
                    tx.client, tx.ts
                )),
                Some(_) => {}
            }
        }
    }
    // Deterministic coefficients: the verdict does not depend on them.
    let mut rng = crate::crypto::coefficient_rng([0; 32]);
    for (verdict, (index, client, ts)) in batch.verify(&mut rng).into_iter().zip(where_) {
        if verdict.is_err() {
            violations.push(format!(
                "validity: {who} committed tx (client {client}, ts {ts}) at index {index} whose signature does not verify"
            ));
        }
    }
    violations
}

/// Where a tx executed in the reference replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Executed {
    /// The entry.
    pub index: Index,
    /// Position among all executed txs (the linearization order).
    pub position: u64,
    /// The state machine's result.
    pub result: Vec<u8>,
}

/// The committed log replayed through a fresh state machine, exactly as replicas execute it: a
/// tx whose `ts` is not above its client's last executed one is skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replay {
    /// Every executed tx, by `(client, ts)`.
    pub executed: BTreeMap<(ClientId, u64), Executed>,
    /// Txs skipped (ordered again after they executed).
    pub skipped: u64,
}

impl Replay {
    /// Replays `log` through `app` (normally a fresh instance).
    pub fn run<S: StateMachine>(log: &[Entry], app: &mut S) -> Replay {
        let mut last: BTreeMap<ClientId, u64> = BTreeMap::new();
        let mut replay = Replay::default();
        let mut position = 0;
        for entry in log {
            for tx in &entry.txs {
                let floor = last.get(&tx.client).copied().unwrap_or(0);
                if tx.ts <= floor {
                    replay.skipped += 1;
                    continue;
                }
                last.insert(tx.client, tx.ts);
                let result = app.apply(&tx.client, &tx.op);
                replay.executed.insert(
                    (tx.client, tx.ts),
                    Executed {
                        index: entry.index,
                        position,
                        result,
                    },
                );
                position += 1;
            }
        }
        replay
    }
}

/// Client linearizability against the reference replay of the longest committed log:
///
/// - every result a client accepted is the reference result of its tx, at the same index;
/// - a tx whose refusal a client accepted was not executed;
/// - real-time order: if op A was accepted before op B was invoked, A precedes B in the log.
pub fn check_linearizability(history: &History, replay: &Replay) -> Vec<String> {
    let mut violations = Vec::new();
    for op in &history.ops {
        let Some((_, outcome)) = &op.accepted else {
            continue;
        };
        let reference = replay.executed.get(&(op.client, op.ts));
        match (outcome, reference) {
            (Outcome::Executed { index, result }, Some(r)) => {
                if *index != r.index || *result != r.result {
                    violations.push(format!(
                        "linearizability: client {} (ts {}) accepted result {:?} at index {index}, \
                         but the committed log gives {:?} at index {}",
                        op.client_index, op.ts, result, r.result, r.index
                    ));
                }
            }
            (Outcome::Executed { index, .. }, None) => violations.push(format!(
                "linearizability: client {} (ts {}) accepted a result at index {index}, \
                 but the tx is not executed in the committed log",
                op.client_index, op.ts
            )),
            (Outcome::Rejected(why), Some(r)) => violations.push(format!(
                "linearizability: client {} (ts {}) accepted the refusal {why:?}, but the tx \
                 executed at index {}",
                op.client_index, op.ts, r.index
            )),
            (Outcome::Rejected(_), None) => {}
        }
    }
    // Real time: walk the ops from the last log position down, keeping the earliest acceptance
    // among the ops ordered later. If it precedes this op's invocation, the order is wrong.
    let mut ordered: Vec<(u64, usize)> = history
        .ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| {
            replay
                .executed
                .get(&(op.client, op.ts))
                .map(|r| (r.position, i))
        })
        .collect();
    ordered.sort_unstable();
    let mut earliest_later: Option<(Time, usize)> = None;
    let mut reported = BTreeSet::new();
    for &(_, i) in ordered.iter().rev() {
        let b = &history.ops[i];
        if let Some((accepted_at, a)) = earliest_later {
            if accepted_at < b.invoked && reported.insert(a) {
                let a = &history.ops[a];
                violations.push(format!(
                    "linearizability: client {} (ts {}) was accepted at {} us, before client {} \
                     (ts {}) was invoked at {} us, yet it is ordered after it",
                    a.client_index, a.ts, accepted_at.0, b.client_index, b.ts, b.invoked.0
                ));
            }
        }
        if let Some((at, _)) = b.accepted {
            if earliest_later.is_none_or(|(t, _)| at < t) {
                earliest_later = Some((at, i));
            }
        }
    }
    violations
}

/// Remembers, for each index, the first committed entry hash and the first state digest any
/// replica reported, and flags every later report that differs. Catches transient forks too.
#[derive(Debug, Default)]
pub(crate) struct Monitor {
    committed: BTreeMap<Index, (Digest, ReplicaId)>,
    digests: BTreeMap<Index, (Digest, ReplicaId)>,
}

impl Monitor {
    pub(crate) fn committed(
        &mut self,
        who: ReplicaId,
        index: Index,
        hash: Digest,
    ) -> Option<String> {
        match self.committed.get(&index) {
            None => {
                self.committed.insert(index, (hash, who));
                None
            }
            Some((h, _)) if *h == hash => None,
            Some((h, first)) => Some(format!(
                "agreement: {who} committed {hash} at index {index}, but {first} committed {h} there"
            )),
        }
    }

    pub(crate) fn digest(
        &mut self,
        who: ReplicaId,
        index: Index,
        digest: Digest,
    ) -> Option<String> {
        match self.digests.get(&index) {
            None => {
                self.digests.insert(index, (digest, who));
                None
            }
            Some((d, _)) if *d == digest => None,
            Some((d, first)) => Some(format!(
                "state digest: {who} reached {digest} after index {index}, but {first} reached {d}"
            )),
        }
    }
}
