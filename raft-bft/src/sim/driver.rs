//! A simulated client: the real [`Client`] driven closed-loop (submit, wait for acceptance,
//! think, submit again).

use crate::client::Client;
use crate::types::{ClientId, Time};

use super::queue::TimerSlot;

pub(crate) struct SimClient {
    pub(crate) client: Client,
    pub(crate) key: ClientId,
    /// Txs still to submit.
    pub(crate) remaining: u64,
    /// Txs submitted so far.
    pub(crate) submitted: u64,
    /// The history position of the outstanding tx.
    pub(crate) outstanding: Option<usize>,
    pub(crate) tick: TimerSlot,
}

impl SimClient {
    pub(crate) fn new(client: Client, txs: u64) -> Self {
        SimClient {
            key: client.public_key(),
            client,
            remaining: txs,
            submitted: 0,
            outstanding: None,
            tick: TimerSlot::default(),
        }
    }

    /// True once every tx was submitted and accepted.
    pub(crate) fn done(&self) -> bool {
        self.remaining == 0 && self.outstanding.is_none()
    }

    /// When the outstanding tx must be accepted by, for the liveness check.
    pub(crate) fn deadline(invoked: Time, heal_at: Time, bound: std::time::Duration) -> Time {
        invoked.max(heal_at).after(bound)
    }
}
