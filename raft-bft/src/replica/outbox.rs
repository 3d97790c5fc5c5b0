//! Persist-before-speak: outgoing messages are held until the state they depend on is durable.
//!
//! Every message produced while persistence work is outstanding is tagged with the batch that
//! must be durable first. The caller receives such a message only after it confirmed that batch
//! with [`super::Replica::on_persisted`]. The rule is deliberately coarse (a message waits for
//! every batch issued before it), so no handler can forget to declare a dependency.

use std::collections::VecDeque;

use crate::message::{ReplicaMessage, Reply, Vote};
use crate::persist::{PersistBatch, PersistOp};
use crate::types::{ReplicaId, Time};

/// Where a replica message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// One replica.
    Replica(ReplicaId),
    /// Every replica but the sender.
    AllOthers,
}

/// A message for other replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutMessage {
    /// Destination.
    pub to: Target,
    /// The message.
    pub message: ReplicaMessage,
}

/// The work a replica hands to its caller.
///
/// The caller must make `persist` durable and then call `on_persisted(persist.id)`. It may send
/// `messages` and `replies` at once: they depend only on state already confirmed durable.
#[derive(Debug, Default)]
pub struct Ready {
    /// State to make durable (in order, before confirming).
    pub persist: Option<PersistBatch>,
    /// Messages to other replicas.
    pub messages: Vec<OutMessage>,
    /// Signed replies to clients (each names its client).
    pub replies: Vec<Reply>,
    /// Call `on_tick` at this time (or earlier) even if nothing else happens.
    pub next_tick: Option<Time>,
}

impl Ready {
    /// True if there is nothing to do but wait for `next_tick`.
    pub fn is_empty(&self) -> bool {
        self.persist.is_none() && self.messages.is_empty() && self.replies.is_empty()
    }
}

/// Something to release: a message to others, a reply, or a message to this replica itself.
#[derive(Debug)]
pub(crate) enum Out {
    Message(OutMessage),
    Replies(Vec<Reply>),
    Loopback(Vote),
}

#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pending_ops: Vec<PersistOp>,
    issued: u64,
    confirmed: u64,
    held: VecDeque<(u64, Out)>,
    released: Vec<OutMessage>,
    replies: Vec<Reply>,
    loopback: VecDeque<Vote>,
}

impl Outbox {
    /// Starts with the given batch id as already confirmed (ids keep increasing across restarts
    /// only within one process; a restarted replica starts again at 0).
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn persist(&mut self, op: PersistOp) {
        self.pending_ops.push(op);
    }

    /// Queues an outgoing item; it is released once everything persisted so far is durable.
    pub(crate) fn push(&mut self, out: Out) {
        let requires = if self.pending_ops.is_empty() {
            self.issued
        } else {
            self.issued + 1
        };
        if requires <= self.confirmed {
            self.release(out);
        } else {
            self.held.push_back((requires, out));
        }
    }

    fn release(&mut self, out: Out) {
        match out {
            Out::Message(m) => self.released.push(m),
            Out::Replies(mut r) => self.replies.append(&mut r),
            Out::Loopback(m) => self.loopback.push_back(m),
        }
    }

    pub(crate) fn confirm(&mut self, id: u64) {
        if id > self.issued || id <= self.confirmed {
            return;
        }
        self.confirmed = id;
        while self
            .held
            .front()
            .is_some_and(|(req, _)| *req <= self.confirmed)
        {
            if let Some((_, out)) = self.held.pop_front() {
                self.release(out);
            }
        }
    }

    pub(crate) fn next_loopback(&mut self) -> Option<Vote> {
        self.loopback.pop_front()
    }

    /// True if a persist batch is issued but not yet confirmed, or ops wait to be issued.
    pub(crate) fn persistence_outstanding(&self) -> bool {
        !self.pending_ops.is_empty() || self.confirmed < self.issued
    }

    pub(crate) fn take_ready(&mut self, next_tick: Option<Time>) -> Ready {
        let persist = if self.pending_ops.is_empty() {
            None
        } else {
            self.issued += 1;
            Some(PersistBatch {
                id: self.issued,
                ops: std::mem::take(&mut self.pending_ops),
            })
        };
        Ready {
            persist,
            messages: std::mem::take(&mut self.released),
            replies: std::mem::take(&mut self.replies),
            next_tick,
        }
    }

    pub(crate) fn held_len(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Phase, VoteSubject};
    use crate::types::{Digest, Index, Term};

    fn msg(i: u64) -> Out {
        Out::Message(OutMessage {
            to: Target::AllOthers,
            message: ReplicaMessage::FetchEntries {
                from: Index(i),
                to: Index(i),
            },
        })
    }

    fn op() -> PersistOp {
        PersistOp::Vote(VoteSubject {
            phase: Phase::PreAppend,
            term: Term(1),
            index: Index(1),
            entry_hash: Digest::ZERO,
            state_digest: None,
        })
    }

    #[test]
    fn messages_wait_for_the_batch_they_follow() {
        let mut o = Outbox::new();
        o.push(msg(1)); // nothing outstanding: released at once
        o.persist(op());
        o.push(msg(2)); // depends on the op above
        let r = o.take_ready(None);
        assert_eq!(r.messages.len(), 1);
        let batch = r.persist.expect("a batch");
        o.push(msg(3)); // produced while batch 1 is in flight: waits for it too
        assert!(o.take_ready(None).messages.is_empty());
        o.confirm(batch.id);
        assert_eq!(o.take_ready(None).messages.len(), 2);
    }

    #[test]
    fn confirming_an_unknown_batch_releases_nothing() {
        let mut o = Outbox::new();
        o.persist(op());
        o.push(msg(1));
        o.confirm(1); // not issued yet
        let r = o.take_ready(None);
        assert!(r.messages.is_empty());
        o.confirm(r.persist.unwrap().id);
        assert_eq!(o.take_ready(None).messages.len(), 1);
    }
}
