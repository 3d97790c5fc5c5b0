//! What the simulated clients did: every op submitted, when, and what was accepted.

use crate::message::Outcome;
use crate::types::{ClientId, Time};

/// One op submitted by a simulated client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpRecord {
    /// The submitting client's index in the simulation.
    pub client_index: usize,
    /// The client's key.
    pub client: ClientId,
    /// The tx's `ts`.
    pub ts: u64,
    /// The op's bytes.
    pub op: Vec<u8>,
    /// When the client submitted it (the invocation).
    pub invoked: Time,
    /// When the client accepted a result, and which (the response); `None` if never.
    pub accepted: Option<(Time, Outcome)>,
}

/// Every op of a run, in submission order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// The ops.
    pub ops: Vec<OpRecord>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a submission; returns its position.
    pub fn invoke(
        &mut self,
        client_index: usize,
        client: ClientId,
        ts: u64,
        op: Vec<u8>,
        at: Time,
    ) -> usize {
        self.ops.push(OpRecord {
            client_index,
            client,
            ts,
            op,
            invoked: at,
            accepted: None,
        });
        self.ops.len() - 1
    }

    /// Records the accepted outcome of the op at `position`.
    pub fn accept(&mut self, position: usize, at: Time, outcome: Outcome) {
        if let Some(op) = self.ops.get_mut(position) {
            op.accepted = Some((at, outcome));
        }
    }

    /// Number of ops with an accepted outcome.
    pub fn accepted(&self) -> usize {
        self.ops.iter().filter(|o| o.accepted.is_some()).count()
    }

    /// When the last accepted op was accepted (time zero if none was).
    pub fn last_acceptance(&self) -> Time {
        self.ops
            .iter()
            .filter_map(|o| o.accepted.as_ref().map(|(t, _)| *t))
            .max()
            .unwrap_or_default()
    }
}
