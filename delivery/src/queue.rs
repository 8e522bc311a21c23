//! A lane's in-memory queue: ready deliveries in arrival order, and deliveries due later.
//!
//! The queue holds ids only (12 bytes ready, 24 bytes due later); the record stays in the
//! store and is read when the delivery is sent. It is bounded: past `cap` ids an id is not
//! kept in memory, the queue notes that it overflowed, and the lane refills it from the
//! store's outbox once it has drained. The outbox is the real queue; this is a window on it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use crate::record::DeliveryId;

/// What the queue has for a lane at some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A delivery is due now.
    Due,
    /// Nothing now; the first delivery is due at this time (ms).
    Later(u64),
    /// Nothing at all.
    Empty,
}

/// A bounded queue of delivery ids.
#[derive(Debug)]
pub struct LaneQueue {
    ready: VecDeque<DeliveryId>,
    later: BinaryHeap<Reverse<(u64, DeliveryId)>>,
    cap: usize,
    overflowed: bool,
}

impl LaneQueue {
    /// An empty queue holding at most `cap` ids.
    pub fn new(cap: usize) -> Self {
        LaneQueue {
            ready: VecDeque::new(),
            later: BinaryHeap::new(),
            cap,
            overflowed: false,
        }
    }

    /// Ids held.
    pub fn len(&self) -> usize {
        self.ready.len() + self.later.len()
    }

    /// Bytes the queue's buffers hold (their capacity, not just the ids in them).
    pub fn heap_bytes(&self) -> usize {
        let (ready, later) = Self::bytes_per_id();
        self.ready.capacity() * ready + self.later.capacity() * later
    }

    /// Whether nothing is queued to send as soon as possible (ids due later may be held).
    pub fn ready_is_empty(&self) -> bool {
        self.ready.is_empty()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues an id to send as soon as possible; `false` (and marked overflowed) when full.
    pub fn push(&mut self, id: DeliveryId) -> bool {
        if self.len() >= self.cap {
            self.overflowed = true;
            return false;
        }
        self.ready.push_back(id);
        true
    }

    /// Queues an id due at `at_ms`; `false` (and marked overflowed) when full.
    pub fn push_at(&mut self, at_ms: u64, id: DeliveryId) -> bool {
        if self.len() >= self.cap {
            self.overflowed = true;
            return false;
        }
        self.later.push(Reverse((at_ms, id)));
        true
    }

    /// What is due at `now_ms`.
    pub fn next(&self, now_ms: u64) -> Next {
        match self.later.peek() {
            Some(Reverse((at, _))) if *at <= now_ms => Next::Due,
            _ if !self.ready.is_empty() => Next::Due,
            Some(Reverse((at, _))) => Next::Later(*at),
            None => Next::Empty,
        }
    }

    /// The id [`pop`](Self::pop) would take at `now_ms`, left in the queue.
    pub fn peek(&self, now_ms: u64) -> Option<DeliveryId> {
        match self.later.peek() {
            Some(Reverse((at, id))) if *at <= now_ms => Some(*id),
            _ => self.ready.front().copied(),
        }
    }

    /// Takes the next due id: retries that came due first (they are older), then the ready ones.
    pub fn pop(&mut self, now_ms: u64) -> Option<DeliveryId> {
        match self.later.peek() {
            Some(Reverse((at, _))) if *at <= now_ms => self.later.pop().map(|Reverse((_, id))| id),
            _ => self.ready.pop_front(),
        }
    }

    /// Notes that the store holds ids this queue does not (e.g. at start-up).
    pub fn mark_overflowed(&mut self) {
        self.overflowed = true;
    }

    /// Whether the store holds ids this queue does not.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Whether ids were dropped for want of room since the last call; clears the mark.
    pub fn take_overflow(&mut self) -> bool {
        std::mem::take(&mut self.overflowed)
    }

    /// Bytes the held ids take (excluding spare capacity).
    pub fn bytes_per_id() -> (usize, usize) {
        (
            std::mem::size_of::<DeliveryId>(),
            std::mem::size_of::<Reverse<(u64, DeliveryId)>>(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> DeliveryId {
        DeliveryId([n; 12])
    }

    #[test]
    fn due_retries_go_before_ready_ones_and_later_ones_wait() {
        let mut q = LaneQueue::new(10);
        q.push(id(1));
        q.push_at(500, id(2));
        q.push_at(100, id(3));
        assert_eq!(q.pop(50), Some(id(1)));
        assert_eq!(q.next(50), Next::Later(100));
        assert_eq!(q.pop(50), None);
        assert_eq!(q.pop(100), Some(id(3)));
        assert_eq!(q.next(499), Next::Later(500));
        assert_eq!(q.pop(600), Some(id(2)));
        assert_eq!(q.next(600), Next::Empty);
    }

    #[test]
    fn peek_names_what_pop_takes() {
        let mut q = LaneQueue::new(10);
        q.push(id(1));
        q.push(id(2));
        q.push_at(100, id(3));
        q.push_at(300, id(4));
        for now in [50, 50, 150, 150, 400, 400] {
            let peeked = q.peek(now);
            assert_eq!(peeked.is_some(), q.next(now) == Next::Due);
            assert_eq!(q.pop(now), peeked, "at {now}");
        }
        assert_eq!(q.peek(1000), None);
    }

    #[test]
    fn a_full_queue_refuses_and_remembers_it() {
        let mut q = LaneQueue::new(2);
        assert!(q.push(id(1)));
        assert!(q.push_at(5, id(2)));
        assert!(!q.push(id(3)));
        assert!(q.take_overflow());
        assert!(!q.take_overflow());
        assert_eq!(q.len(), 2);
    }
}
