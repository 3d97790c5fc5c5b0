//! The event queue: events ordered by virtual time, ties broken by insertion order.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::types::Time;

struct Scheduled<E> {
    at: Time,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Scheduled<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<E> Eq for Scheduled<E> {}

impl<E> PartialOrd for Scheduled<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<E> Ord for Scheduled<E> {
    /// Reversed, so that the max-heap pops the earliest `(time, sequence number)` first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// A deterministic priority queue of events: the earliest first, and among events at the same
/// time, the one scheduled first.
pub(crate) struct EventQueue<E> {
    heap: BinaryHeap<Scheduled<E>>,
    seq: u64,
}

impl<E> EventQueue<E> {
    pub(crate) fn new() -> Self {
        EventQueue {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }

    /// Schedules `event` at `at`.
    pub(crate) fn push(&mut self, at: Time, event: E) {
        self.seq += 1;
        self.heap.push(Scheduled {
            at,
            seq: self.seq,
            event,
        });
    }

    /// The earliest event.
    pub(crate) fn pop(&mut self) -> Option<(Time, E)> {
        self.heap.pop().map(|s| (s.at, s.event))
    }
}

/// At most one pending timer event per owner: arming a later time while one is pending does
/// nothing, arming an earlier time supersedes the pending event (which is ignored when it fires).
#[derive(Debug, Default)]
pub(crate) struct TimerSlot {
    at: Option<Time>,
    generation: u64,
}

impl TimerSlot {
    /// Arms the timer for `at`. Returns the generation to put in a new event, or `None` if the
    /// pending event is early enough.
    pub(crate) fn arm(&mut self, at: Time) -> Option<u64> {
        if self.at.is_some_and(|t| t <= at) {
            return None;
        }
        self.generation += 1;
        self.at = Some(at);
        Some(self.generation)
    }

    /// True if the event of `generation` is the pending one; it is then no longer pending.
    pub(crate) fn fire(&mut self, generation: u64) -> bool {
        if self.at.is_some() && generation == self.generation {
            self.at = None;
            true
        } else {
            false
        }
    }

    /// Forgets the pending event.
    pub(crate) fn clear(&mut self) {
        self.at = None;
        self.generation += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_then_fifo() {
        let mut q = EventQueue::new();
        q.push(Time(5), "c");
        q.push(Time(1), "a");
        q.push(Time(5), "d");
        q.push(Time(1), "b");
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).map(|(_, e)| e).collect();
        assert_eq!(order, ["a", "b", "c", "d"]);
    }

    #[test]
    fn one_pending_timer() {
        let mut t = TimerSlot::default();
        let g1 = t.arm(Time(10)).unwrap();
        assert_eq!(t.arm(Time(20)), None);
        let g2 = t.arm(Time(5)).unwrap();
        assert!(!t.fire(g1));
        assert!(t.fire(g2));
        assert!(!t.fire(g2));
        assert!(t.arm(Time(30)).is_some());
    }
}
