//! A lane's in-memory queue: ready deliveries in arrival order, and deliveries due later.
//!
//! The queue holds ids only (12 bytes ready, 24 bytes due later); the record stays in the
//! store and is read when the delivery is sent. It is bounded: past `cap` ids an id is not
//! kept in memory, the queue notes that it overflowed, and the lane refills it from the
//! store's outbox ([`LaneQueue::refill`]). The outbox is the real queue; this is a window on
//! it: after a refill, the `cap` earliest-due of the open deliveries, each id once.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use rustc_hash::FxHashSet;

use crate::record::{DeliveryId, NOT_SCHEDULED};

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
    /// The store holds open ids this queue does not.
    overflowed: bool,
    /// A push was refused since the last refill: the store got an id that may be due before
    /// everything held.
    refused: bool,
}

impl LaneQueue {
    /// An empty queue holding at most `cap` ids.
    pub fn new(cap: usize) -> Self {
        LaneQueue {
            ready: VecDeque::new(),
            later: BinaryHeap::new(),
            cap,
            overflowed: false,
            refused: false,
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

    /// Whether it holds as many ids as it may.
    pub fn is_full(&self) -> bool {
        self.len() >= self.cap
    }

    /// Whether at least half of it is free: a refill then brings in at least half a queue of
    /// ids (or all the store holds), which pays for reading the outbox.
    pub fn is_half_free(&self) -> bool {
        self.len() <= self.cap / 2
    }

    /// Queues an id to send as soon as possible; `false` (and marked overflowed) when full.
    pub fn push(&mut self, id: DeliveryId) -> bool {
        if self.is_full() {
            self.overflowed = true;
            self.refused = true;
            return false;
        }
        self.ready.push_back(id);
        true
    }

    /// Queues an id due at `at_ms`; `false` (and marked overflowed) when full.
    pub fn push_at(&mut self, at_ms: u64, id: DeliveryId) -> bool {
        if self.is_full() {
            self.overflowed = true;
            self.refused = true;
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

    /// Whether reading the outbox again could change what the queue holds: the store holds
    /// ids it does not, and either it has room or a push was refused since the last refill (a
    /// new id may be due before everything held). A full queue of ids due later, with nothing
    /// new in the store, keeps what it holds: those ids come due first.
    pub fn wants_refill(&self) -> bool {
        self.overflowed && (!self.is_full() || self.refused)
    }

    /// Starts a refill, before the store's outbox is read: clears the refused mark, so a push
    /// refused while the outbox is read (an id the read may have missed) marks the queue again
    /// and [`refill`](Self::refill) keeps that mark.
    pub fn begin_refill(&mut self) {
        self.refused = false;
    }

    /// A refill begun with [`begin_refill`](Self::begin_refill) could not read the outbox:
    /// the queue asks for another, as a refused push does (it still overflowed).
    pub fn refill_failed(&mut self) {
        self.refused = true;
    }

    /// Rebuilds the queue from what it holds and the store's `outbox` (read just before, so
    /// what the queue holds is newer for an id in both): the `cap` earliest-due ids, each
    /// once, ready ones in their order; ids for which `skip` is true (being sent) and ids not
    /// scheduled are left out. Notes whether the outbox held more than fitted.
    pub fn refill(&mut self, outbox: Vec<(DeliveryId, u64)>, skip: impl Fn(&DeliveryId) -> bool) {
        let mut held = FxHashSet::default();
        let mut all: Vec<(u64, DeliveryId)> = Vec::with_capacity(self.len() + outbox.len());
        let mut later: Vec<(u64, DeliveryId)> = self.later.drain().map(|Reverse(e)| e).collect();
        // Of two copies of a held id, the earlier one is kept.
        later.sort_unstable();
        let queued = self.ready.drain(..).map(|id| (0, id)).chain(later);
        for (due, id) in queued.chain(outbox.into_iter().map(|(id, due)| (due, id))) {
            if due != NOT_SCHEDULED && !skip(&id) && held.insert(id) {
                all.push((due, id));
            }
        }
        // Stable: ready ids keep their order.
        all.sort_by_key(|&(due, _)| due);
        self.overflowed = self.refused || all.len() > self.cap;
        all.truncate(self.cap);
        for (due, id) in all {
            if due == 0 {
                self.ready.push_back(id);
            } else {
                self.later.push(Reverse((due, id)));
            }
        }
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
        assert!(q.overflowed());
        assert!(
            q.wants_refill(),
            "a refused id may be due before the held ones"
        );
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn a_refill_keeps_the_earliest_due_each_once() {
        let mut q = LaneQueue::new(4);
        q.push(id(1));
        q.push_at(900, id(2));
        q.push_at(800, id(3));
        q.mark_overflowed();
        // The outbox repeats what the queue holds, and holds more, some due earlier.
        let outbox = vec![
            (id(1), 0),
            (id(2), 500), // older than the queue's copy: the queue's wins
            (id(3), 800),
            (id(4), 0),
            (id(5), 100),
            (id(6), 2000),
            (id(7), NOT_SCHEDULED),
            (id(8), 0), // being sent
        ];
        q.begin_refill();
        q.refill(outbox, |i| *i == id(8));
        assert_eq!(q.len(), 4);
        assert!(q.overflowed(), "ids 2 and 6 did not fit");
        assert!(!q.wants_refill(), "full, and nothing new since");
        let mut popped = Vec::new();
        while let Some(i) = q.pop(u64::MAX - 1) {
            popped.push(i);
        }
        popped.sort_unstable();
        assert_eq!(popped, vec![id(1), id(3), id(4), id(5)]);
        assert!(q.wants_refill(), "room again, and the store holds more");
        // A second refill adds nothing twice.
        q.push(id(1));
        q.begin_refill();
        q.refill(vec![(id(1), 0), (id(2), 900)], |_| false);
        assert_eq!(q.len(), 2);
        assert!(!q.overflowed());
    }

    #[test]
    fn a_push_refused_while_the_outbox_is_read_asks_for_another_refill() {
        let mut q = LaneQueue::new(2);
        q.push(id(1));
        q.push(id(2));
        q.begin_refill();
        // While the outbox is read, a new id is refused (the queue is full); the read may have
        // been taken before that id was stored.
        assert!(!q.push(id(3)));
        q.refill(vec![(id(1), 0), (id(2), 0)], |_| false);
        assert_eq!(q.len(), 2);
        q.pop(0);
        assert!(q.wants_refill(), "id 3 is only in the store");
    }

    #[test]
    fn a_refill_that_could_not_read_the_outbox_keeps_asking() {
        // Full of ids due later; a new id, due now, is refused and left in the store.
        let mut q = LaneQueue::new(2);
        q.push_at(10_000, id(1));
        q.push_at(10_000, id(2));
        assert!(!q.push(id(3)));
        assert!(q.wants_refill());
        q.begin_refill();
        q.refill_failed();
        assert!(q.wants_refill(), "id 3 is still only in the store");
    }
}
